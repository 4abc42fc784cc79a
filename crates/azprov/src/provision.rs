//! One boot's provisioning run: identity → media/OVF → local duties → IMDS → re-applied duties → KVP → health
//! report → marker → eject. Every path ends in a report (Ready, or NotReady/ProvisioningFailed with a public
//! reason), except "not on Azure" and "another azprov is running", which change nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::duties::{self, Outcome, Passwd};
use crate::plan::{self, Action, Phase, Plan, PpsKind};
use crate::platform::cdrom::{self, Found};
use crate::platform::certificates;
use crate::platform::endpoint;
use crate::platform::http::HttpClient;
use crate::platform::identity;
use crate::platform::imds::{self, ImdsConfig, Instance};
use crate::platform::kvp;
use crate::platform::media::MediaError;
use crate::platform::ovf::{self, Environment};
use crate::platform::wireserver::{self, Health, HealthProtocol, WireConfig, WireError};
use crate::report::{self, Failure, ReportContext};
use crate::secret::Secret;
use crate::state::{RunResult, RunSummary, State, StepOutcome, StepRecord, VmProgress};
use crate::system::System;
use crate::timeutil::{self, Clock};

mod pps;

/// Which part of the boot to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseSel {
    Local,
    Network,
    AfterReady,
    /// SSH host keys for a new VM id, when the local phase asked for them (azprov-host-keys.service).
    HostKeys,
    All,
}

impl PhaseSel {
    fn local(self) -> bool {
        matches!(self, PhaseSel::Local | PhaseSel::All)
    }
    fn network(self) -> bool {
        matches!(self, PhaseSel::Network | PhaseSel::All)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub phase: PhaseSel,
    /// Host path of an image file or device to read the OVF from instead of scanning.
    pub media: Option<PathBuf>,
    pub dry_run: bool,
}

/// Process exit codes.
pub mod exit {
    /// Ready accepted, or nothing to do for this VM id.
    pub const OK: i32 = 0;
    /// Provisioning failed and the failure was reported.
    pub const FAILED: i32 = 1;
    /// Not an Azure VM, or bad configuration: nothing changed.
    pub const NOT_APPLICABLE: i32 = 2;
    /// The final report could not be delivered.
    pub const UNREPORTED: i32 = 3;
    /// Another azprov process holds the lock.
    pub const BUSY: i32 = 4;
}

/// The run's result, for the CLI.
#[derive(Debug)]
pub struct RunOutcome {
    pub exit_code: i32,
    pub summary: RunSummary,
    /// One line for humans.
    pub message: String,
    /// `--dry-run`: the plan.
    pub plan: Option<serde_json::Value>,
}

const RUN_OVF: &str = "ovf-env.xml";
/// The drive the OVF came from, for the phase that ejects it.
const RUN_DEVICE: &str = "device";

struct Run<'a> {
    sys: &'a dyn System,
    cfg: &'a Config,
    clock: &'a dyn Clock,
    opts: &'a Options,
    state: State<'a>,
    started: Instant,
    vm_id: String,
    steps: Vec<StepRecord>,
    progress: VmProgress,
    pps_type: String,
    kvp_events: Vec<u8>,
    boot_epoch: i64,
    /// Drive the OVF came from (ejected after Ready).
    device: Option<PathBuf>,
    warnings: Vec<String>,
    /// Host-key generation running off the path to Ready: its result arrives here.
    host_keys: Option<mpsc::Receiver<(Outcome, u64)>>,
    /// This run had Ready accepted (role properties follow it).
    ready_now: bool,
    /// The wireserver base URL, resolved once (configured, or discovered: route, DHCP option 245, default).
    wire_url: Option<String>,
}

/// The transport certificate and its key while provisioning needs them (removed after Ready).
const TRANSPORT_KEY: &str = "transport.key";
const TRANSPORT_CERT: &str = "transport.crt";

/// Step name of the host-key step (once per VM id; done-ness is the state's host-keys marker).
const HOST_KEYS: &str = "host_keys";
/// The local phase's request to the host-key phase (in the run directory): the VM id that needs new host keys.
const HOST_KEYS_REQUEST: &str = "host-keys";
/// Progress key: the host key thumbprint went to the platform (or was tried) for this VM id.
const ROLE_PROPERTIES: &str = "role_properties";

/// How long a later boot asks IMDS for a renamed computerName (`duties.hostname.follow_platform_renames`).
const FOLLOW_IMDS_DEADLINE: Duration = Duration::from_secs(30);

/// IMDS at its configured URL, asked until `deadline` from the first request.
fn imds_config(cfg: &Config, deadline: Duration) -> ImdsConfig {
    let mut icfg = ImdsConfig::new(cfg.platform.imds_url.clone());
    icfg.deadline = deadline;
    icfg
}

fn imds_client(cfg: &Config) -> HttpClient {
    HttpClient::new(
        Duration::from_secs(cfg.platform.connect_timeout_secs),
        Duration::from_secs(cfg.platform.imds_read_timeout_secs),
    )
}

/// Entry point for `azprov provision`.
pub fn provision(sys: &dyn System, cfg: &Config, opts: &Options, clock: &dyn Clock) -> RunOutcome {
    if opts.phase == PhaseSel::HostKeys {
        return host_keys_phase(sys, cfg, opts, clock);
    }
    let started = clock.now();
    let state = State::new(sys, &cfg.state.dir);
    let _lock = if opts.dry_run {
        None
    } else {
        match state.lock() {
            Ok(l) => Some(l),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return early(exit::BUSY, "another azprov process is running (state lock held)");
            }
            Err(e) => return early(exit::FAILED, &format!("cannot lock the state directory: {e}")),
        }
    };
    let mut run = Run {
        sys,
        cfg,
        clock,
        opts,
        state,
        started,
        vm_id: String::new(),
        steps: Vec::new(),
        progress: VmProgress::default(),
        pps_type: "None".into(),
        kvp_events: Vec::new(),
        boot_epoch: sys.boot_time().unwrap_or(0),
        device: None,
        warnings: Vec::new(),
        host_keys: None,
        ready_now: false,
        wire_url: None,
    };
    run.go()
}

fn early(code: i32, msg: &str) -> RunOutcome {
    quick(code, RunResult::Error, msg)
}

fn quick(code: i32, result: RunResult, msg: &str) -> RunOutcome {
    RunOutcome {
        exit_code: code,
        summary: RunSummary { vm_id: None, result, reason: Some(msg.into()), reported: false, steps: vec![] },
        message: msg.into(),
        plan: None,
    }
}

/// The VM id from DMI, and whether the chassis says Azure.
fn read_identity(sys: &dyn System) -> (Result<String, Failure>, bool) {
    let tag = sys.read_to_string(Path::new("/sys/class/dmi/id/chassis_asset_tag")).unwrap_or_default();
    let azure = tag.trim() == identity::AZURE_ASSET_TAG;
    let gen2 = sys.exists(Path::new("/sys/firmware/efi"));
    let id = match sys.read_to_string(Path::new("/sys/class/dmi/id/product_uuid")) {
        Ok(u) => identity::vm_id_from_product_uuid(&u, gen2)
            .ok_or_else(|| Failure::new("failure to identify Azure VM ID").with("product_uuid", u.trim())),
        Err(e) => Err(Failure::new("failure to identify Azure VM ID").with("exception", e)),
    };
    (id, azure)
}

impl<'a> Run<'a> {
    fn go(&mut self) -> RunOutcome {
        let (vm_id, azure) = read_identity(self.sys);
        if !azure && self.cfg.platform.require_azure && !self.platform_answers() {
            return early(
                exit::NOT_APPLICABLE,
                &format!(
                    "not running on Azure: no Azure chassis asset tag and no answer from IMDS at {} within {} ms; nothing changed",
                    self.cfg.platform.imds_url, self.cfg.platform.detect_timeout_ms
                ),
            );
        }
        let vm_id = match vm_id {
            Ok(id) => id,
            Err(f) => {
                self.vm_id = "unknown".into();
                return self.fail(f);
            }
        };
        self.vm_id = vm_id.clone();
        // cloud-init's Azure datasource would provision (and report) too: two agents must not race
        match duties::coexistence::check_cloud_init(self.sys, &self.cfg.coexistence) {
            Ok(None) => {}
            Ok(Some(w)) => self.warn(&w),
            Err(msg) if self.opts.dry_run => self.warn(&msg),
            Err(msg) if self.state.is_provisioned(&vm_id) => {
                // cloud-init came later to a VM we provisioned: leave the every-boot duties to it, and do not fail
                // the unit (WALinuxAgent's drop-in requires it)
                let msg = format!("{msg}; VM {vm_id} was provisioned by azprov: every-boot duties left to cloud-init");
                tracing::warn!("{msg}");
                return quick(exit::OK, RunResult::Success, &msg);
            }
            Err(msg) => return early(exit::NOT_APPLICABLE, &msg),
        }
        if !self.opts.dry_run && self.cfg.kvp.enabled && self.boot_epoch > 0 {
            let _ = self.sys.kvp_truncate_if_older(&self.cfg.kvp.pool_path, self.boot_epoch);
        }
        if !self.opts.dry_run && self.opts.phase.local() {
            // every boot: the Hyper-V seed helps whatever needs randomness next (host keys, TLS, …)
            self.side_step("entropy", false, |sys, cfg| duties::entropy::feed(sys, &cfg.duties.entropy));
            self.side_step("scsi_timeouts", false, |sys, cfg| {
                duties::scsi_timeouts::apply(sys, &cfg.duties.scsi_timeouts)
            });
            // WALinuxAgent stays for extensions but must not provision, format or rename (every boot: an image
            // update may bring its default configuration back)
            self.side_step("waagent_conf", false, |sys, cfg| {
                duties::coexistence::configure_waagent(sys, &cfg.coexistence)
            });
        }
        if self.state.is_provisioned(&vm_id) {
            self.progress = self.state.progress(&vm_id);
            if !self.opts.dry_run {
                self.every_boot_provisioned();
            }
            let msg = format!("VM {vm_id} is already provisioned: no once-per-VM duty to run");
            return self.finish(exit::OK, RunResult::Success, None, true, msg);
        }
        self.progress = self.state.progress(&vm_id);
        if self.opts.phase == PhaseSel::AfterReady {
            let msg = format!("VM {vm_id}: Ready not yet accepted; after-ready work waits for it");
            return self.finish(exit::OK, RunResult::InProgress, None, false, msg);
        }

        let network = self.opts.phase.network();
        let client = imds_client(self.cfg);
        let icfg = imds_config(
            self.cfg,
            if self.opts.dry_run {
                Duration::from_millis(self.cfg.platform.detect_timeout_ms)
            } else {
                Duration::from_secs(self.cfg.platform.imds_deadline_secs)
            },
        );
        let clock = self.clock;
        std::thread::scope(|s| {
            // IMDS runs while the DVD is read and the local duties run. Only an image with the guest proxy agent
            // reads the OVF first: it may ask for that agent, which must be up before anything goes to IMDS or the
            // wireserver (without the program, such an OVF fails anyway: `azure-proxy-agent not found`)
            let proxy_installed = self.sys.has_program("azure-proxy-agent");
            let mut imds_thread =
                (network && !proxy_installed).then(|| s.spawn(|| imds::fetch_instance(&client, &icfg, clock)));
            let ovf = self.read_ovf();
            let env = match ovf {
                Ok(env) => env,
                Err(f) => return self.fail(f),
            };
            if network && !self.opts.dry_run && env.as_ref().is_some_and(|e| e.provision_guest_proxy_agent) {
                // the proxy agent guards IMDS and the wireserver: nothing goes out before it is up
                let t = self.clock.now();
                match duties::coexistence::wait_proxy_agent(self.sys, self.cfg.coexistence.proxy_agent_wait_secs) {
                    Ok(d) => self.record("proxy_agent", StepOutcome::Done, t, d),
                    Err(f) => {
                        self.record("proxy_agent", StepOutcome::Failed, t, f.reason.clone());
                        return self.fail(f);
                    }
                }
            }
            if network && imds_thread.is_none() {
                imds_thread = Some(s.spawn(|| imds::fetch_instance(&client, &icfg, clock)));
            }
            if self.opts.dry_run {
                let imds = imds_thread.and_then(|h| h.join().ok()).and_then(|r| r.ok());
                return self.dry_run(env.as_ref(), imds.as_ref());
            }
            // a pre-provisioned VM's DVD holds the pool's OVF: nothing of it is applied, the customer's comes later
            let pooled = self.state.pool_reported(&self.vm_id)
                || env.as_ref().is_some_and(|e| plan::pps_kind(Some(e), None, false) != PpsKind::None);
            if self.opts.phase.local() && pooled {
                let t = self.clock.now();
                let why = "pre-provisioned (pool) VM: the customer's provisioning follows the assignment";
                self.record("identity", StepOutcome::Skipped, t, why.into());
                // its own host keys already (the VM id stays the customer's): sshd can start in the pool and
                // needs no restart after the assignment
                self.local_host_keys(s);
            } else if self.opts.phase.local() {
                let id = plan::identity(env.as_ref(), None);
                let p = plan::plan(&self.vm_id, &id, self.cfg, &self.progress.done, Phase::Local);
                let identity = self.execute(&p, env.as_ref());
                if env.is_some() {
                    // a new VM from a generalized image needs fresh host keys: generated (about a second of CPU)
                    // while the network round trips go on, after useradd & co so they do not compete for the CPU;
                    // also when a duty failed, so that sshd can start for diagnostics. With the phase units, the
                    // host-key unit (ordered only before sshd) does it and this phase does not wait for it.
                    self.local_host_keys(s);
                }
                if let Err(f) = identity {
                    return self.fail(f);
                }
                if let Some(e) = env.as_ref() {
                    if let Err(f) = self.local_side_steps(e) {
                        return self.fail(f);
                    }
                }
            }
            if !network {
                let msg = format!("local phase done for VM {}", self.vm_id);
                return self.finish(exit::OK, RunResult::InProgress, None, false, msg);
            }
            let instance = match imds_thread.map(|h| h.join()) {
                Some(Ok(Ok(i))) => i,
                Some(Ok(Err(e))) => return self.fail(e.failure()),
                _ => {
                    return self
                        .fail(Failure::new("unexpected error querying IMDS").with("exception", "IMDS thread failed"))
                }
            };
            let kind =
                plan::pps_kind(env.as_ref(), instance.pps_type.as_deref(), self.state.pool_reported(&self.vm_id));
            if kind != PpsKind::None {
                let customer = match self.pool(kind, &instance) {
                    Ok(c) => c,
                    Err(out) => return *out,
                };
                let local = self.customer_local(&customer.env);
                // the customer's VM needs its own host keys (sshd may be running with the image's: reloaded after)
                self.start_host_keys(s);
                if let Err(f) = local {
                    return self.fail(f);
                }
                return self.network_phase(Some(&customer.env), &customer.instance);
            }
            if env.is_some() || instance.has_os_profile {
                // not a specialized disk: a new VM needs its own host keys; normally the local phase made them
                // (then this is a no-op), but it may have run without the DVD or without host keys enabled
                self.start_host_keys(s);
            }
            self.network_phase(env.as_ref(), &instance)
        })
    }

    /// Regenerate host keys on a thread (about a second of CPU for RSA): once per VM id, joined in `finish`.
    fn start_host_keys<'scope>(&mut self, s: &'scope std::thread::Scope<'scope, '_>)
    where
        'a: 'scope,
    {
        if !self.cfg.duties.host_keys.enabled || self.host_keys.is_some() || self.host_keys_pending() {
            return;
        }
        if self.state.host_keys_done(&self.vm_id) {
            return;
        }
        let (tx, rx) = mpsc::channel();
        let (sys, clock) = (self.sys, self.clock);
        s.spawn(move || {
            let t = clock.now();
            let outcome = duties::host_keys::regenerate(sys);
            let _ = tx.send((outcome, clock.now().duration_since(t).as_millis() as u64));
        });
        self.host_keys = Some(rx);
    }

    /// New host keys from the local phase: asked from the host-key unit with the phase units, else on a thread.
    fn local_host_keys<'scope>(&mut self, s: &'scope std::thread::Scope<'scope, '_>)
    where
        'a: 'scope,
    {
        if self.opts.phase == PhaseSel::Local && self.cfg.duties.host_keys.own_unit {
            self.request_host_keys();
        } else {
            self.start_host_keys(s);
        }
    }

    /// The local phase of the split units: ask the host-key phase for new keys (the request names the VM id).
    fn request_host_keys(&mut self) {
        if !self.cfg.duties.host_keys.enabled || self.state.host_keys_done(&self.vm_id) {
            return;
        }
        let t = self.clock.now();
        let path = self.cfg.state.run_dir.join(HOST_KEYS_REQUEST);
        let written = self
            .sys
            .create_dir_all(&self.cfg.state.run_dir, 0o700, None)
            .and_then(|_| self.sys.write_file_unsynced(&path, format!("{}\n", self.vm_id).as_bytes(), 0o600, None));
        match written {
            Ok(()) => self.record(
                HOST_KEYS,
                StepOutcome::Skipped,
                t,
                "left to the host-key phase (azprov-host-keys.service, before sshd)".into(),
            ),
            Err(e) => {
                self.warn(&format!("cannot ask the host-key phase for new keys ({e}): generating them here"));
            }
        }
    }

    /// The host-key phase owns this VM id's keys: the local phase asked and the host-key phase has not finished.
    /// (The host-key phase writes its marker before it removes the request, so "no request" then "no marker" means
    /// nobody generated them.)
    fn host_keys_pending(&self) -> bool {
        host_keys_requested(self.sys, self.cfg, &self.vm_id)
    }

    /// Wait for host keys (if generating), report their fingerprints, and send them to the platform after Ready.
    fn finish_host_keys(&mut self) {
        let Some(rx) = self.host_keys.take() else {
            if self.ready_now {
                if self.host_keys_pending() {
                    let t = self.clock.now();
                    let why = "host keys are being generated by the host-key phase: the after-Ready phase reports them";
                    self.record("role_properties", StepOutcome::Skipped, t, why.into());
                } else {
                    self.role_properties();
                }
            }
            return;
        };
        let Ok((outcome, ms)) = rx.recv() else { return };
        let (so, detail) = match outcome {
            Outcome::Done(d) => (StepOutcome::Done, d),
            Outcome::Skipped(d) => (StepOutcome::Skipped, d),
            Outcome::Failed(f) => {
                self.warn(&format!("SSH host keys: {f}"));
                (StepOutcome::Failed, f.to_string())
            }
        };
        tracing::info!("host_keys: {detail}");
        if so == StepOutcome::Done && self.pps_type != "None" && self.sys.is_live() {
            // a pool VM's sshd started with the image's keys (reloaded: it must serve the customer's), or could not
            // start without any (started now)
            let note = duties::sshd::serve_new_host_keys(self.sys);
            if !note.is_empty() {
                tracing::info!("sshd{note}");
            }
        }
        if so != StepOutcome::Failed {
            if let Err(e) = self.state.mark_host_keys(&self.vm_id, &host_keys_record(so, ms)) {
                self.warn(&format!("cannot record the new host keys: {e}"));
            }
        }
        self.steps.push(StepRecord { name: HOST_KEYS.into(), outcome: so, duration_ms: ms, detail });
        publish_fingerprints(self.sys, self.cfg, self.boot_epoch, &self.vm_id);
        if self.ready_now {
            self.role_properties();
        }
    }

    /// The host key thumbprint to the platform (role properties, HTTP 202); logged on failure, never fatal.
    /// Tried once per VM id.
    fn role_properties(&mut self) {
        let format = self.cfg.duties.host_keys.report_fingerprint;
        let t = self.clock.now();
        if format == crate::config::FingerprintReport::Off || !self.cfg.duties.host_keys.enabled {
            return;
        }
        if !self.progress.done.iter().any(|d| d == ROLE_PROPERTIES) {
            self.progress.done.push(ROLE_PROPERTIES.into());
            self.save_progress();
        }
        let fps = duties::host_keys::fingerprints(self.sys);
        let Some(thumb) = duties::host_keys::thumbprint(&fps, format) else {
            self.record("role_properties", StepOutcome::Skipped, t, "no SSH host key to report".into());
            return;
        };
        let mut w = self.wire_config();
        w.deadline = self.clock.now() + Duration::from_secs(60);
        match wireserver::report_role_properties(&w.client(), &w, self.clock, &thumb) {
            Ok(()) => {
                self.record("role_properties", StepOutcome::Done, t, format!("host key thumbprint {thumb} reported"))
            }
            Err(e) => {
                self.warn(&format!("host key thumbprint not reported: {e}"));
                self.record("role_properties", StepOutcome::Failed, t, e.to_string());
            }
        }
    }

    /// A single short IMDS request: does anything answer like a platform?
    fn platform_answers(&self) -> bool {
        let t = Duration::from_millis(self.cfg.platform.detect_timeout_ms);
        let client = HttpClient::new(t, t);
        let url = format!("{}/metadata/instance?api-version=2021-08-01", self.cfg.platform.imds_url);
        client.get(&url, &[("Metadata", "true")]).is_ok()
    }

    /// The OVF: `--media`, else the per-boot copy a previous phase kept, else the DVD. `Ok(None)`: no media.
    fn read_ovf(&mut self) -> Result<Option<Environment>, Failure> {
        let run_copy = self.cfg.state.run_dir.join(RUN_OVF);
        let bytes = if let Some(path) = &self.opts.media {
            let reader = self.sys.open_host_read(path).map_err(|e| {
                Failure::new("error reading provisioning media").with("path", path.display()).with("exception", e)
            })?;
            match crate::platform::media::read_ovf(reader.as_ref()) {
                Ok(m) => Some(m.bytes),
                Err(e) => return Err(media_failure(e)),
            }
        } else if let Some(b) = self.sys.read(&run_copy).ok().filter(|_| !self.opts.phase.local()) {
            let dev = self.sys.read_to_string(&self.cfg.state.run_dir.join(RUN_DEVICE)).ok();
            self.device = dev.map(|d| PathBuf::from(d.trim())).filter(|d| d.is_absolute());
            Some(b)
        } else {
            let wait = Duration::from_secs(self.cfg.media.wait_secs);
            match cdrom::find_provisioning_media(self.sys, wait, self.clock) {
                Found::Ovf { device, media } => {
                    // a later phase reads the per-boot copy: it needs to know which drive to eject
                    let _ = self.sys.write_file_unsynced(
                        &self.cfg.state.run_dir.join(RUN_DEVICE),
                        device.display().to_string().as_bytes(),
                        0o600,
                        None,
                    );
                    tracing::info!(
                        "read ovf-env.xml from {} ({:?}, label {})",
                        device.display(),
                        media.fs,
                        media.label.as_deref().unwrap_or("-")
                    );
                    self.device = Some(device);
                    Some(media.bytes)
                }
                Found::Corrupt { device, error } => {
                    return Err(media_failure(error).with("device", device.display()));
                }
                Found::NoDrive => {
                    self.warn("no CD-ROM drive: continuing with IMDS only; password and customData are unavailable");
                    None
                }
                Found::NoMedia { notes, .. } => {
                    self.warn(&format!(
                        "no provisioning media ({}): continuing with IMDS only; password and customData are unavailable",
                        notes.join("; ")
                    ));
                    None
                }
            }
        };
        let Some(bytes) = bytes else { return Ok(None) };
        let env = ovf::parse(&bytes).map_err(|e| e.failure())?;
        for w in &env.warnings {
            self.warn(&format!("ovf-env.xml: {w}"));
        }
        if !self.opts.dry_run {
            let redacted = ovf::redact(&bytes);
            if let Err(e) = self.state.save_redacted_ovf(&redacted) {
                self.warn(&format!("cannot save the redacted ovf-env.xml: {e}"));
            }
            // the unredacted copy lives only until Ready (lets a restarted/next phase run without the DVD); a per-boot
            // file (tmpfs /run): no fsync
            let keep = self
                .sys
                .create_dir_all(&self.cfg.state.run_dir, 0o700, None)
                .and_then(|_| self.sys.write_file_unsynced(&run_copy, &bytes, 0o600, None));
            if let Err(e) = keep {
                self.warn(&format!("cannot keep ovf-env.xml in {}: {e}", self.cfg.state.run_dir.display()));
            }
        }
        if let Some(t) = &env.preprovisioned_vm_type {
            self.pps_type = t.clone();
        } else if env.preprovisioned_vm {
            self.pps_type = "Running".into();
        }
        Ok(Some(env))
    }

    fn warn(&mut self, msg: &str) {
        tracing::warn!("{msg}");
        self.warnings.push(msg.to_string());
    }

    fn dry_run(&mut self, env: Option<&Environment>, imds: Option<&Instance>) -> RunOutcome {
        let id = plan::identity(env, imds);
        let p = plan::plan(&self.vm_id, &id, self.cfg, &self.progress.done, Phase::Local);
        let mut v = serde_json::to_value(&p).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("ovf".into(), serde_json::json!(env.map(|e| e.inspect_json())));
            obj.insert("imds_answered".into(), serde_json::json!(imds.is_some()));
            obj.insert("warnings".into(), serde_json::json!(self.warnings));
            obj.insert(
                "then".into(),
                serde_json::json!([
                    "host keys (in the background, once per VM id)",
                    "kvp PROVISIONING_REPORT",
                    "health Ready",
                    "provisioned marker",
                    "eject DVD",
                    "host key thumbprint (role properties)"
                ]),
            );
        }
        RunOutcome {
            exit_code: exit::OK,
            summary: RunSummary {
                vm_id: Some(self.vm_id.clone()),
                result: RunResult::InProgress,
                reason: None,
                reported: false,
                steps: vec![],
            },
            message: "dry run: nothing changed".into(),
            plan: Some(v),
        }
    }

    /// Run the plan's steps in order; the first failure stops the run.
    fn execute(&mut self, p: &Plan, env: Option<&Environment>) -> Result<(), Failure> {
        let mut user: Option<Passwd> = None;
        let mut user_created = false;
        // the password hash (milliseconds of CPU) is computed on a helper thread while hostname/useradd run
        let mut prehash = p
            .steps
            .iter()
            .find_map(|s| match (&s.action, &s.skip) {
                (Action::Password { set: true, .. }, None) => env.and_then(|e| e.password.as_ref()),
                _ => None,
            })
            .and_then(duties::password::Prehash::start);
        for step in &p.steps {
            let name = step.action.name();
            let t = self.clock.now();
            if let Some(why) = &step.skip {
                self.record(name, StepOutcome::Skipped, t, why.clone());
                if matches!(step.action, Action::User { .. }) {
                    if let Action::User { name: u, .. } = &step.action {
                        user = duties::user::lookup(self.sys, u);
                    }
                }
                continue;
            }
            let outcome = match &step.action {
                Action::Hostname { name } => {
                    duties::hostname::apply(self.sys, name, self.cfg.duties.hostname.manage_etc_hosts)
                }
                Action::User { name, groups } => {
                    let existed = duties::user::lookup(self.sys, name).is_some();
                    let _ = groups; // carried in the plan for --dry-run; the duty reads the same list from config
                    let (pw, o) = duties::user::ensure_with(self.sys, name, &self.cfg.duties.user);
                    if pw.is_some() {
                        // deprovision --user removes the account it finds recorded here
                        if let Err(e) = self.state.save_admin_user(name) {
                            tracing::warn!("cannot record the admin user: {e}");
                        }
                    }
                    user_created = !existed && pw.is_some();
                    user = pw;
                    o
                }
                Action::Password { user: u, set } => {
                    let secret = if *set { env.and_then(|e| e.password.as_ref()) } else { None };
                    duties::password::apply_prehashed(self.sys, u, secret, user_created, prehash.take())
                }
                Action::SshKeys { user: u, keys } => match &user {
                    Some(pw) => duties::ssh_keys::install(self.sys, pw, keys),
                    None => match duties::user::lookup(self.sys, u) {
                        Some(pw) => duties::ssh_keys::install(self.sys, &pw, keys),
                        None => Outcome::Failed(
                            Failure::new("failure to write authorized_keys")
                                .with("username", u)
                                .with("detail", "user does not exist"),
                        ),
                    },
                },
                Action::Sshd { password_authentication } => duties::sshd::configure_for(
                    self.sys,
                    &self.cfg.duties.sshd,
                    *password_authentication,
                    p.identity.username.as_deref(),
                ),
                Action::Sudo { user: u, password_set } => {
                    duties::sudo::configure(self.sys, &self.cfg.duties.sudo, u, *password_set)
                }
            };
            match outcome {
                Outcome::Done(d) => {
                    tracing::info!("{name}: {d}");
                    self.record(name, StepOutcome::Done, t, d);
                    self.progress.done.push(step.action.key());
                }
                Outcome::Skipped(why) => {
                    tracing::info!("{name}: skipped: {why}");
                    self.record(name, StepOutcome::Skipped, t, why);
                    self.progress.done.push(step.action.key());
                }
                Outcome::Failed(f) => {
                    tracing::error!("{name}: failed: {f}");
                    self.record(name, StepOutcome::Failed, t, f.reason.clone());
                    self.save_progress();
                    return Err(f);
                }
            }
        }
        self.save_progress();
        Ok(())
    }

    fn save_progress(&mut self) {
        self.progress.vm_id = self.vm_id.clone();
        if let Err(e) = self.state.save_progress(&self.progress) {
            tracing::warn!("cannot save progress: {e}");
        }
    }

    fn record(&mut self, name: &str, outcome: StepOutcome, since: Instant, detail: String) {
        let duration_ms = self.clock.now().duration_since(since).as_millis() as u64;
        self.kvp_events.extend(step_kvp(self.boot_epoch, &self.vm_id, name, outcome, duration_ms, &detail));
        self.steps.push(StepRecord { name: name.to_string(), outcome, duration_ms, detail });
    }

    fn network_phase(&mut self, env: Option<&Environment>, instance: &Instance) -> RunOutcome {
        let t = self.clock.now();
        if let Some(id) = &instance.vm_id {
            if !identity::same_vm_id(id, &self.vm_id) {
                self.warn(&format!("IMDS vmId {id} differs from the DMI VM id {}", self.vm_id));
            }
        }
        if let Some(p) = &instance.pps_type {
            if p != "None" {
                self.pps_type = p.clone();
            }
        }
        for w in &instance.warnings {
            self.warn(&format!("IMDS: {w}"));
        }
        let api = format!("IMDS answered (api-version {})", instance.api_version);
        self.record("imds", StepOutcome::Done, t, api);
        if env.is_none() && instance.has_os_profile {
            // the DVD is the only channel for customData: say so when IMDS knows there was some
            let has = instance.has_custom_data;
            if let Some(f) =
                self.side_step("custom_data", true, |sys, cfg| duties::custom_data::persist(sys, cfg, None, has))
            {
                return self.fail(f);
            }
        }
        if instance.has_os_profile {
            let ud = instance.user_data.clone();
            self.side_step("user_data", true, |sys, cfg| {
                duties::custom_data::persist_user_data(sys, cfg, ud.as_deref())
            });
        }
        self.progress.primary_mac = instance.interfaces.first().map(|i| i.mac.clone());
        self.routes();
        self.save_progress();
        if env.is_none() && !instance.has_os_profile {
            // specialized disk: nothing to provision, only the report
            let t = self.clock.now();
            self.record(
                "identity",
                StepOutcome::Skipped,
                t,
                "specialized disk (no media, no osProfile): report only".into(),
            );
        } else {
            let id = plan::identity(env, Some(instance));
            let p = plan::plan(&self.vm_id, &id, self.cfg, &self.progress.done, Phase::Network);
            let pending: Vec<_> = p.steps.iter().filter(|s| s.skip.is_none()).map(|s| s.action.name()).collect();
            if !pending.is_empty() {
                tracing::info!("applying IMDS values: {}", pending.join(", "));
                if let Err(f) =
                    self.execute(&Plan { steps: p.steps.into_iter().filter(|s| s.skip.is_none()).collect(), ..p }, env)
                {
                    return self.fail(f);
                }
                // a host name set now (IMDS differs from the OVF, or the network came up first) was not in the DHCP
                // request: tell the platform DNS through the running DHCP client, without restarting the network
                if let (true, Some(name)) = (pending.contains(&"hostname") && self.sys.is_live(), id.hostname.clone()) {
                    let wire = self.wire_addr();
                    self.side_step("hostname_publish", false, |sys, _| {
                        duties::hostname_publish::publish(sys, &name, Some(wire))
                    });
                }
            }
        }
        if let Some(e) = env {
            let user = plan::identity(env, Some(instance)).username;
            if let Err(f) = self.certificate_keys(e, user.as_deref()) {
                return self.fail(f);
            }
        }
        self.report_ready()
    }

    /// OVF keys that exist only as certificates (fingerprint-only public keys, key pairs): fetched from the
    /// wireserver with a transport certificate and decrypted in process (platform.md §5.8). Only when asked for.
    fn certificate_keys(&mut self, env: &Environment, username: Option<&str>) -> Result<(), Failure> {
        const STEP: &str = "certificate_keys";
        let fingerprints: Vec<String> = env
            .public_keys
            .iter()
            .filter(|k| k.value.as_deref().is_none_or(|v| v.trim().is_empty()))
            .filter_map(|k| k.fingerprint.clone())
            .collect();
        if fingerprints.is_empty() && env.key_pairs.is_empty() {
            return Ok(());
        }
        if self.progress.done.iter().any(|d| d == STEP) {
            let t = self.clock.now();
            self.record(STEP, StepOutcome::Skipped, t, "already done for this VM id".into());
            return Ok(());
        }
        let t = self.clock.now();
        let Some(user) = username.and_then(|u| duties::user::lookup(self.sys, u)) else {
            self.record(STEP, StepOutcome::Skipped, t, "no admin user to install certificate keys for".into());
            return Ok(());
        };
        let transport = self.transport_cert()?;
        let wcfg = self.wire_config();
        let client = wcfg.client();
        let goal = wireserver::fetch_goal_state(&client, &wcfg, self.clock).map_err(|e| e.failure())?;
        let certs =
            certificates::certificates_for(&client, &wcfg, self.clock, &goal, &transport).map_err(|e| e.failure())?;
        match duties::key_pairs::install(self.sys, &user, &certs, &fingerprints, &env.key_pairs) {
            Outcome::Done(d) => {
                tracing::info!("{STEP}: {d}");
                self.record(STEP, StepOutcome::Done, t, d);
                self.progress.done.push(STEP.into());
                self.save_progress();
                Ok(())
            }
            Outcome::Skipped(d) => {
                self.record(STEP, StepOutcome::Skipped, t, d);
                Ok(())
            }
            Outcome::Failed(f) => {
                self.record(STEP, StepOutcome::Failed, t, f.reason.clone());
                Err(f)
            }
        }
    }

    /// The transport certificate: reused from the state directory (0600) if an earlier attempt made one.
    fn transport_cert(&mut self) -> Result<certificates::TransportCert, Failure> {
        let key_path = self.cfg.state.dir.join(TRANSPORT_KEY);
        let cert_path = self.cfg.state.dir.join(TRANSPORT_CERT);
        if let (Ok(k), Ok(c)) = (self.sys.read(&key_path), self.sys.read_to_string(&cert_path)) {
            if let Ok(t) = certificates::TransportCert::from_pem(&c, &Secret::new(k)) {
                return Ok(t);
            }
        }
        let t = certificates::TransportCert::generate().map_err(|e| e.failure())?;
        let key = t.private_key_pem().map_err(|e| e.failure())?;
        let saved = self
            .sys
            .write_file(&key_path, key.expose(), 0o600, None)
            .and_then(|_| self.sys.write_file(&cert_path, t.cert_pem().as_bytes(), 0o600, None));
        if let Err(e) = saved {
            self.warn(&format!("cannot keep the transport certificate: {e}"));
        }
        Ok(t)
    }

    /// Run a duty that is not part of the identity plan: recorded as a step; with `once`, marked done for this VM
    /// id (and skipped when it already is). A failure is returned for the caller to decide; most callers only log.
    fn side_step(
        &mut self,
        name: &str,
        once: bool,
        f: impl FnOnce(&dyn System, &Config) -> Outcome,
    ) -> Option<Failure> {
        if once && self.progress.done.iter().any(|d| d == name) {
            return None;
        }
        let t = self.clock.now();
        match f(self.sys, self.cfg) {
            Outcome::Done(d) => {
                tracing::info!("{name}: {d}");
                self.record(name, StepOutcome::Done, t, d);
            }
            Outcome::Skipped(d) => {
                tracing::info!("{name}: skipped: {d}");
                self.record(name, StepOutcome::Skipped, t, d);
            }
            Outcome::Failed(fail) => {
                self.warn(&format!("{name}: {fail}"));
                self.record(name, StepOutcome::Failed, t, fail.reason.clone());
                return Some(fail);
            }
        }
        if once {
            self.progress.done.push(name.to_string());
        }
        None
    }

    /// Once per VM id, before the network: customData saved root-only, NIC names pinned, boot-loader checks.
    fn local_side_steps(&mut self, env: &Environment) -> Result<(), Failure> {
        let custom = env.custom_data.clone();
        if let Some(f) = self
            .side_step("custom_data", true, |sys, cfg| duties::custom_data::persist(sys, cfg, custom.as_ref(), None))
        {
            return Err(f);
        }
        if self.cfg.duties.nic_names.enabled {
            self.side_step("nic_names", true, |sys, _| duties::nic_names::pin(sys));
        }
        self.side_step("numa", true, |sys, cfg| duties::numa::apply(sys, &cfg.duties.numa));
        if !env.provision_guest_agent {
            // VM created with provisionVMAgent=false: WALinuxAgent (if the image has it) must not run extensions
            self.side_step("disable_guest_agent", true, |sys, _| duties::coexistence::disable_guest_agent(sys));
        }
        self.side_step("serial_console", true, |sys, cfg| {
            duties::serial_console::apply(sys, &cfg.duties.serial_console)
        });
        self.save_progress();
        Ok(())
    }

    /// Host routes to the wireserver and IMDS through the primary NIC (live systems; every boot).
    fn routes(&mut self) {
        if !self.cfg.duties.routes.enabled {
            return;
        }
        let mac = self.progress.primary_mac.clone();
        let addr = self.wire_addr();
        let add_default = self.cfg.duties.routes.add_default_route;
        let wait = Duration::from_secs(self.cfg.duties.routes.wait_secs);
        self.side_step("routes", false, |sys, _| {
            duties::routes::ensure_after_lease(sys, mac.as_deref(), addr, add_default, wait)
        });
    }

    /// A later boot with `duties.hostname.follow_platform_renames`: IMDS's computerName is applied (and published)
    /// when it is not the name applied for this VM id before, i.e. the platform renamed the VM. A name the admin set
    /// by hand stays as long as the platform's is unchanged.
    fn follow_platform_hostname(&mut self) {
        const STEP: &str = "hostname_follow";
        let d = &self.cfg.duties.hostname;
        if !d.enabled || !d.follow_platform_renames {
            return;
        }
        let manage_hosts = d.manage_etc_hosts;
        let t = self.clock.now();
        let client = imds_client(self.cfg);
        let deadline = Duration::from_secs(self.cfg.platform.imds_deadline_secs).min(FOLLOW_IMDS_DEADLINE);
        let icfg = imds_config(self.cfg, deadline);
        let instance = match imds::fetch_instance(&client, &icfg, self.clock) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!("{STEP}: IMDS: {e}");
                return self.record(STEP, StepOutcome::Skipped, t, format!("IMDS did not answer: {e}"));
            }
        };
        let Some(name) = plan::identity(None, Some(&instance)).hostname else {
            return self.record(STEP, StepOutcome::Skipped, t, "IMDS gives no computerName".into());
        };
        let key = Action::Hostname { name: name.clone() }.key();
        if self.progress.done.contains(&key) {
            let why = format!("the platform's name {name} is the one applied for this VM id");
            return self.record(STEP, StepOutcome::Skipped, t, why);
        }
        let failed = self.side_step(STEP, false, |sys, _| match duties::hostname::apply(sys, &name, manage_hosts) {
            Outcome::Done(d) => Outcome::Done(format!("the platform renamed the VM to {name}: {d}")),
            other => other,
        });
        if failed.is_none() {
            self.progress.done.push(key);
            self.save_progress();
            if self.sys.is_live() {
                let wire = self.wire_addr();
                self.side_step("hostname_publish", false, |sys, _| {
                    duties::hostname_publish::publish(sys, &name, Some(wire))
                });
            }
        }
    }

    /// A later boot of a provisioned VM: only the every-boot duties.
    fn every_boot_provisioned(&mut self) {
        if self.opts.phase.network() {
            self.routes();
        }
        if matches!(self.opts.phase, PhaseSel::AfterReady | PhaseSel::All) {
            // nothing waits for a rename: off the network phase, which WALinuxAgent is ordered after
            self.follow_platform_hostname();
            // the split units: the host-key phase finished (this unit is ordered after it) and the network phase
            // left the thumbprint to us
            let sent = self.progress.done.iter().any(|d| d == ROLE_PROPERTIES);
            if !sent && self.state.host_keys_done(&self.vm_id) && !self.host_keys_pending() {
                self.role_properties();
            }
            self.after_ready();
        }
    }

    /// After Ready was accepted: customData / userData execution when configured (each runs once by itself).
    fn after_ready(&mut self) {
        // every boot; formatting a large disk must never delay Ready, so it runs only now
        self.side_step("resource_disk", false, |sys, cfg| {
            duties::resource_disk::run_every_boot(sys, &cfg.duties.resource_disk, &Default::default())
        });
        self.side_step("custom_data_exec", false, duties::custom_data::execute_after_ready);
    }

    fn ctx(&self) -> ReportContext {
        ReportContext { vm_id: self.vm_id.clone(), pps_type: self.pps_type.clone(), timestamp_us: timeutil::now_us() }
    }

    /// The configured wireserver URL, or the discovered one when configured as `auto`.
    fn wire_url(&mut self) -> String {
        if let Some(u) = &self.wire_url {
            return u.clone();
        }
        let url = if self.cfg.platform.wireserver_url == "auto" {
            let d = endpoint::discover(self.sys, timeutil::now_us() / 1_000_000);
            tracing::info!("wireserver {} ({})", d.address, d.source);
            d.url()
        } else {
            self.cfg.platform.wireserver_url.clone()
        };
        self.wire_url = Some(url.clone());
        url
    }

    /// IMDS's address, when its configured URL names one.
    fn imds_addr(&self) -> Option<std::net::Ipv4Addr> {
        endpoint::url_ipv4(&self.cfg.platform.imds_url)
    }

    /// The wireserver's address (its URL's host; the platform's default when that is a name).
    fn wire_addr(&mut self) -> std::net::Ipv4Addr {
        endpoint::url_ipv4(&self.wire_url()).unwrap_or(endpoint::DEFAULT_WIRESERVER)
    }

    fn wire_config(&mut self) -> WireConfig {
        let mut w = WireConfig::new(
            self.wire_url(),
            self.cfg.platform.health_protocol,
            self.started + Duration::from_secs(self.cfg.platform.wireserver_deadline_secs),
        );
        w.connect_timeout = Duration::from_secs(self.cfg.platform.connect_timeout_secs);
        w.read_timeout = Duration::from_secs(self.cfg.platform.wireserver_read_timeout_secs);
        w
    }

    fn write_kvp(&mut self, report_value: &str) {
        if !self.cfg.kvp.enabled {
            return;
        }
        let mut buf = std::mem::take(&mut self.kvp_events);
        buf.extend(kvp::record("PROVISIONING_REPORT", report_value));
        if let Err(e) = self.sys.kvp_append(&self.cfg.kvp.pool_path, &buf) {
            tracing::warn!("cannot write KVP {}: {e}", self.cfg.kvp.pool_path.display());
        }
    }

    fn post(&mut self, health: &Health) -> Result<(), String> {
        let mut wcfg = self.wire_config();
        let t = self.clock.now();
        let mut res = wireserver::report_health(&wcfg.client(), &wcfg, self.clock, health);
        // The XML path needs the goal state; when that keeps failing with a non-retryable answer (not a timeout),
        // the JSON endpoint needs none (platform.md §5.6).
        if wcfg.protocol == HealthProtocol::Xml && matches!(res, Err(WireError::Http { .. }) | Err(WireError::Parse(_)))
        {
            let why = res.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            self.warn(&format!("XML health report failed ({why}): trying the JSON health endpoint"));
            wcfg.protocol = HealthProtocol::Json;
            res = wireserver::report_health(&wcfg.client(), &wcfg, self.clock, health);
        }
        let name = if matches!(health, Health::Ready) { "report_ready" } else { "report_failure" };
        match res {
            Ok(o) => {
                self.record(name, StepOutcome::Done, t, format!("HTTP {} after {} attempt(s)", o.status, o.attempts));
                Ok(())
            }
            Err(e) => {
                self.record(name, StepOutcome::Failed, t, e.to_string());
                // one diagnostic request: does the endpoint answer at all, and with which protocol versions?
                let client = HttpClient::new(Duration::from_secs(2), Duration::from_secs(5));
                match wireserver::fetch_versions(&client, &wcfg.base_url) {
                    Ok(v) => tracing::warn!(
                        "wireserver lists protocol versions {v:?} (azprov speaks {})",
                        wireserver::X_MS_VERSION
                    ),
                    Err(d) => tracing::warn!("wireserver versions not available: {d}"),
                }
                Err(e.to_string())
            }
        }
    }

    fn report_ready(&mut self) -> RunOutcome {
        let ctx = self.ctx();
        self.write_kvp(&report::encode_success(&ctx));
        if let Err(e) = self.post(&Health::Ready) {
            let msg = format!("could not report Ready: {e}");
            return self.finish(exit::UNREPORTED, RunResult::Error, Some(msg.clone()), false, msg);
        }
        self.ready_now = true;
        // only now: the marker, then the DVD and the unredacted copy go away
        let ts = timeutil::iso8601_utc(ctx.timestamp_us);
        if let Err(e) = self.state.mark_provisioned(&self.vm_id, &ts) {
            self.warn(&format!("Ready accepted but the provisioned marker could not be written: {e}"));
        }
        if let Err(e) = self.state.clear_pool_reported() {
            self.warn(&format!("cannot remove the pre-provisioning marker: {e}"));
        }
        // WALinuxAgent starts after this unit: it finds its own marker and an OVF copy without secrets
        let ovf_bytes = self
            .sys
            .read(&self.cfg.state.run_dir.join(RUN_OVF))
            .or_else(|_| self.sys.read(&self.cfg.state.dir.join("ovf-env.xml")))
            .ok();
        let vm_id = self.vm_id.clone();
        self.side_step("waagent_markers", false, |sys, _| {
            duties::coexistence::waagent_after_ready(sys, &vm_id, ovf_bytes.as_deref())
        });
        let _ = self.sys.remove_file(&self.cfg.state.run_dir.join(RUN_OVF));
        let _ = self.sys.remove_file(&self.cfg.state.run_dir.join(RUN_DEVICE));
        let _ = self.sys.remove_file(&self.cfg.state.dir.join(TRANSPORT_KEY));
        let _ = self.sys.remove_file(&self.cfg.state.dir.join(TRANSPORT_CERT));
        if let (true, Some(dev)) = (self.cfg.media.eject, self.device.clone()) {
            let t = self.clock.now();
            match self.sys.eject(&dev) {
                Ok(true) => self.record("eject", StepOutcome::Done, t, format!("ejected {}", dev.display())),
                Ok(false) => {
                    self.record("eject", StepOutcome::Skipped, t, format!("{} is an image file", dev.display()))
                }
                Err(e) => {
                    self.warn(&format!("eject {} failed: {e}", dev.display()));
                    self.record("eject", StepOutcome::Failed, t, e.to_string());
                }
            }
        }
        let ms = self.clock.now().duration_since(self.started).as_secs_f64() * 1000.0;
        let msg = format!("provisioned VM {}: Ready accepted after {ms:.1} ms", self.vm_id);
        if self.opts.phase == PhaseSel::All {
            self.after_ready();
        }
        self.finish(exit::OK, RunResult::Success, None, true, msg)
    }

    /// Report a failure: KVP first, then NotReady/ProvisioningFailed.
    fn fail(&mut self, f: Failure) -> RunOutcome {
        tracing::error!("provisioning failed: {f}");
        let ctx = self.ctx();
        self.write_kvp(&report::encode_failure_capped(&f, &ctx, kvp::MAX_VALUE));
        let description = report::encode_failure(&f, &ctx);
        let health = Health::NotReady { sub_status: "ProvisioningFailed".into(), description };
        if !self.opts.phase.network() || self.opts.dry_run {
            // the network phase (a later unit) reports it; the failed step is not marked done
            let msg = format!("{}: {}", self.vm_id, f.reason);
            return self.finish(exit::FAILED, RunResult::Error, Some(f.reason.clone()), false, msg);
        }
        match self.post(&health) {
            Ok(()) => {
                let msg = format!("provisioning failed and was reported: {f}");
                self.finish(exit::FAILED, RunResult::Error, Some(f.reason.clone()), true, msg)
            }
            Err(e) => {
                let msg = format!("provisioning failed ({f}) and the report could not be delivered: {e}");
                self.finish(exit::UNREPORTED, RunResult::Error, Some(f.reason.clone()), false, msg)
            }
        }
    }

    fn finish(
        &mut self,
        code: i32,
        result: RunResult,
        reason: Option<String>,
        reported: bool,
        message: String,
    ) -> RunOutcome {
        self.finish_host_keys();
        if self.cfg.kvp.enabled && !self.kvp_events.is_empty() && !self.opts.dry_run {
            // step events recorded after the report (after-Ready work) go out too
            let events = std::mem::take(&mut self.kvp_events);
            if let Err(e) = self.sys.kvp_append(&self.cfg.kvp.pool_path, &events) {
                tracing::warn!("cannot write KVP: {e}");
            }
        }
        if self.cfg.duties.serial_console.mirror && !self.opts.dry_run {
            // boot diagnostics shows the console: the outcome must be readable there when nothing reached Azure
            duties::serial_console::mirror(self.sys, &message);
        }
        let summary = RunSummary {
            vm_id: Some(self.vm_id.clone()).filter(|v| !v.is_empty()),
            result,
            reason,
            reported,
            steps: std::mem::take(&mut self.steps),
        };
        if !self.opts.dry_run {
            if let Err(e) = self.state.save_summary(&summary) {
                tracing::warn!("cannot save the run summary: {e}");
            }
        }
        RunOutcome { exit_code: code, summary, message, plan: None }
    }
}

/// The KVP records of one step: key `azprov|<boot epoch>|step|<name>|<vm id>|<uuid4>`, value the outcome, start,
/// end, duration and detail (compact JSON, split under the host's value limit).
fn step_kvp(boot_epoch: i64, vm_id: &str, name: &str, outcome: StepOutcome, duration_ms: u64, detail: &str) -> Vec<u8> {
    let key = format!("azprov|{boot_epoch}|step|{name}|{vm_id}|{}", timeutil::uuid4());
    let end_us = timeutil::now_us();
    let start_us = end_us - (duration_ms as i64) * 1000;
    let value = serde_json::json!({
        "outcome": outcome,
        "start": timeutil::iso8601_utc(start_us),
        "end": timeutil::iso8601_utc(end_us),
        "duration_ms": duration_ms,
        "detail": detail,
    });
    kvp::records(&key, &value.to_string())
}

/// The host-key marker's line: outcome, duration and when.
fn host_keys_record(outcome: StepOutcome, duration_ms: u64) -> String {
    let at = timeutil::iso8601_utc(timeutil::now_us());
    serde_json::json!({"outcome": outcome, "duration_ms": duration_ms, "at": at}).to_string()
}

/// Did the local phase ask the host-key phase for new keys for this VM id (and is the request still open)?
fn host_keys_requested(sys: &dyn System, cfg: &Config, vm_id: &str) -> bool {
    sys.read_to_string(&cfg.state.run_dir.join(HOST_KEYS_REQUEST))
        .map(|r| identity::same_vm_id(r.trim(), vm_id))
        .unwrap_or(false)
}

/// The host keys' fingerprints to the log, the serial console and KVP: users compare them at their first login, and
/// boot diagnostics shows the console.
fn publish_fingerprints(sys: &dyn System, cfg: &Config, boot_epoch: i64, vm_id: &str) {
    let fps = duties::host_keys::fingerprints(sys);
    if fps.is_empty() {
        return;
    }
    let block = duties::host_keys::console_block(&fps);
    tracing::info!("\n{block}");
    if cfg.duties.serial_console.mirror {
        for line in block.lines() {
            duties::serial_console::mirror(sys, line);
        }
    }
    if cfg.kvp.enabled {
        let key = format!("azprov|{boot_epoch}|host_keys|fingerprints|{vm_id}|{}", timeutil::uuid4());
        let rec = kvp::records(&key, &duties::host_keys::kvp_value(&fps));
        if let Err(e) = sys.kvp_append(&cfg.kvp.pool_path, &rec) {
            tracing::warn!("cannot write KVP: {e}");
        }
    }
}

/// `--phase host-keys` (azprov-host-keys.service, after the local phase, before sshd): new SSH host keys when the
/// local phase asked for them for this VM id. Its own lock, beside the network phase; it touches neither the
/// progress record nor the last-run summary (the network phase owns those).
fn host_keys_phase(sys: &dyn System, cfg: &Config, opts: &Options, clock: &dyn Clock) -> RunOutcome {
    let state = State::new(sys, &cfg.state.dir);
    if opts.dry_run {
        return quick(exit::OK, RunResult::Success, "host-key phase: a dry run changes nothing");
    }
    let _lock = match state.lock_host_keys() {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return early(exit::BUSY, "another azprov host-key phase is running");
        }
        Err(e) => return early(exit::FAILED, &format!("cannot lock the state directory: {e}")),
    };
    let request = cfg.state.run_dir.join(HOST_KEYS_REQUEST);
    let vm_id = match read_identity(sys).0 {
        Ok(id) => id,
        Err(f) => return early(exit::FAILED, &f.to_string()),
    };
    if !host_keys_requested(sys, cfg, &vm_id) {
        let _ = sys.remove_file(&request);
        return quick(exit::OK, RunResult::Success, &format!("VM {vm_id}: no new host keys were asked for"));
    }
    if state.host_keys_done(&vm_id) || !cfg.duties.host_keys.enabled {
        let _ = sys.remove_file(&request);
        return quick(exit::OK, RunResult::Success, &format!("VM {vm_id}: host keys already made for this VM id"));
    }
    let t = clock.now();
    let outcome = duties::host_keys::regenerate(sys);
    let ms = clock.now().duration_since(t).as_millis() as u64;
    let (so, detail, code) = match outcome {
        Outcome::Done(d) => (StepOutcome::Done, d, exit::OK),
        Outcome::Skipped(d) => (StepOutcome::Skipped, d, exit::OK),
        Outcome::Failed(f) => (StepOutcome::Failed, f.to_string(), exit::FAILED),
    };
    if so != StepOutcome::Failed {
        if let Err(e) = state.mark_host_keys(&vm_id, &host_keys_record(so, ms)) {
            tracing::warn!("cannot record the new host keys: {e}");
        }
    }
    // the marker first, then the request goes: the network phase never sees neither
    let _ = sys.remove_file(&request);
    let boot_epoch = sys.boot_time().unwrap_or(0);
    if cfg.kvp.enabled {
        if let Err(e) = sys.kvp_append(&cfg.kvp.pool_path, &step_kvp(boot_epoch, &vm_id, HOST_KEYS, so, ms, &detail)) {
            tracing::warn!("cannot write KVP: {e}");
        }
    }
    publish_fingerprints(sys, cfg, boot_epoch, &vm_id);
    let result = if code == exit::OK { RunResult::Success } else { RunResult::Error };
    let mut out = quick(code, result, &format!("VM {vm_id}: host keys: {detail} ({ms} ms)"));
    out.summary.vm_id = Some(vm_id);
    out.summary.steps.push(StepRecord { name: HOST_KEYS.into(), outcome: so, duration_ms: ms, detail });
    out
}

fn media_failure(e: MediaError) -> Failure {
    match e {
        MediaError::NoOvf => Failure::new("error parsing ovf-env.xml: no ovf-env.xml on the provisioning media"),
        other => Failure::new(format!("error parsing ovf-env.xml: {other}")),
    }
}
