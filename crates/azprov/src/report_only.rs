//! Minimal mode (platform.md §12): only the platform handshake — `azprov report-ready` / `azprov report-failure`.
//! Fixes the published no-agent recipe: a fresh goal state per attempt (no hard-coded incarnation), bounded retries
//! with timeouts (the configured wireserver deadline), no DVD, the host name from IMDS `osProfile.computerName` only
//! on request, once per VM id only on request, and a VM id that cannot be read is reported as `unknown`.

use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::duties::{self, Outcome};
use crate::platform::endpoint;
use crate::platform::http::HttpClient;
use crate::platform::identity;
use crate::platform::imds::{self, ImdsConfig};
use crate::platform::kvp;
use crate::platform::wireserver::{self, Health, HealthProtocol, WireConfig, WireError};
use crate::report::{self, Failure, ReportContext};
use crate::state::State;
use crate::system::System;
use crate::timeutil::{self, Clock};

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Skip when this VM id's provisioned marker exists; write it after Ready was accepted.
    pub once: bool,
    /// Set the host name from IMDS `compute.osProfile.computerName` before reporting.
    pub set_hostname: bool,
}

/// What to report.
#[derive(Debug, Clone)]
pub enum What {
    Ready,
    /// `NotReady`/`ProvisioningFailed` with this public reason.
    Failure(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The platform accepted the report (HTTP status, attempts).
    Reported { status: u16, attempts: u32 },
    /// `--once` and the marker exists: nothing sent.
    AlreadyReported,
    /// The report could not be delivered.
    Unreported(String),
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub vm_id: String,
    pub result: Delivery,
    /// Host name step and other findings.
    pub notes: Vec<String>,
}

/// The VM id from DMI (`unknown` when it cannot be read).
pub fn vm_id(sys: &dyn System) -> String {
    let gen2 = sys.exists(Path::new("/sys/firmware/efi"));
    sys.read_to_string(Path::new("/sys/class/dmi/id/product_uuid"))
        .ok()
        .and_then(|u| identity::vm_id_from_product_uuid(&u, gen2))
        .unwrap_or_else(|| "unknown".into())
}

fn wire_config(sys: &dyn System, cfg: &Config, clock: &dyn Clock) -> WireConfig {
    let url = if cfg.platform.wireserver_url == "auto" {
        endpoint::discover(sys, timeutil::now_us() / 1_000_000).url()
    } else {
        cfg.platform.wireserver_url.clone()
    };
    let mut w = WireConfig::new(
        url,
        cfg.platform.health_protocol,
        clock.now() + Duration::from_secs(cfg.platform.wireserver_deadline_secs),
    );
    w.connect_timeout = Duration::from_secs(cfg.platform.connect_timeout_secs);
    w.read_timeout = Duration::from_secs(cfg.platform.wireserver_read_timeout_secs);
    w
}

/// Host name from IMDS `osProfile.computerName` (not `compute.name`).
fn set_hostname(sys: &dyn System, cfg: &Config, clock: &dyn Clock) -> String {
    let client = HttpClient::new(
        Duration::from_secs(cfg.platform.connect_timeout_secs),
        Duration::from_secs(cfg.platform.imds_read_timeout_secs),
    );
    let mut icfg = ImdsConfig::new(cfg.platform.imds_url.clone());
    icfg.deadline = Duration::from_secs(cfg.platform.imds_deadline_secs);
    match imds::fetch_instance(&client, &icfg, clock) {
        Err(e) => format!("host name not set: {}", e.failure()),
        Ok(i) => match i.computer_name {
            None => "host name not set: IMDS has no osProfile.computerName".into(),
            Some(name) => match duties::hostname::apply(sys, &name, cfg.duties.hostname.manage_etc_hosts) {
                Outcome::Done(d) | Outcome::Skipped(d) => d,
                Outcome::Failed(f) => format!("host name not set: {f}"),
            },
        },
    }
}

/// KVP `PROVISIONING_REPORT` first, then the health report (XML with a fresh goal state per attempt, or JSON per
/// configuration; an XML path that fails with an HTTP or parse error falls back to JSON once).
pub fn run(sys: &dyn System, cfg: &Config, what: &What, opts: &Options, clock: &dyn Clock) -> RunReport {
    let vm_id = vm_id(sys);
    let mut notes = Vec::new();
    let state = State::new(sys, &cfg.state.dir);
    let known = vm_id != "unknown";
    let once = opts.once && known && matches!(what, What::Ready);
    if opts.once && !known {
        notes.push("--once: no VM id could be read, so no marker is checked or written".into());
    }
    let _lock = if once {
        match state.lock() {
            Ok(l) => Some(l),
            Err(e) => {
                notes.push(format!("state lock not taken: {e}"));
                None
            }
        }
    } else {
        None
    };
    if once && state.is_provisioned(&vm_id) {
        return RunReport { vm_id, result: Delivery::AlreadyReported, notes };
    }
    if opts.set_hostname {
        notes.push(set_hostname(sys, cfg, clock));
    }
    let ctx = ReportContext { vm_id: vm_id.clone(), pps_type: "None".into(), timestamp_us: timeutil::now_us() };
    let (kvp_value, health) = match what {
        What::Ready => (report::encode_success(&ctx), Health::Ready),
        What::Failure(reason) => {
            let f = Failure::new(reason.clone());
            let description = report::encode_failure(&f, &ctx);
            (
                report::encode_failure_capped(&f, &ctx, kvp::MAX_VALUE),
                Health::NotReady { sub_status: "ProvisioningFailed".into(), description },
            )
        }
    };
    if cfg.kvp.enabled {
        if let Err(e) = sys.kvp_append(&cfg.kvp.pool_path, &kvp::record("PROVISIONING_REPORT", &kvp_value)) {
            notes.push(format!("cannot write KVP {}: {e}", cfg.kvp.pool_path.display()));
        }
    }
    let mut w = wire_config(sys, cfg, clock);
    let mut res = wireserver::report_health(&w.client(), &w, clock, &health);
    if w.protocol == HealthProtocol::Xml && matches!(res, Err(WireError::Http { .. }) | Err(WireError::Parse(_))) {
        notes.push(format!(
            "XML health report failed ({}): trying the JSON health endpoint",
            res.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
        ));
        w.protocol = HealthProtocol::Json;
        res = wireserver::report_health(&w.client(), &w, clock, &health);
    }
    let result = match res {
        Ok(o) => {
            if once {
                let ts = timeutil::iso8601_utc(ctx.timestamp_us);
                if let Err(e) = state.mark_provisioned(&vm_id, &ts) {
                    notes.push(format!("Ready accepted but the marker could not be written: {e}"));
                }
            }
            Delivery::Reported { status: o.status, attempts: o.attempts }
        }
        Err(e) => Delivery::Unreported(e.to_string()),
    };
    RunReport { vm_id, result, notes }
}
