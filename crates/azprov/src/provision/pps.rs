//! Pre-provisioned (pool) VMs (platform.md §10): the platform boots VMs ahead of demand, they report an
//! intermediate Ready, wait to be assigned to a customer, fetch the customer's `ovf-env.xml` from IMDS
//! `reprovisiondata`, and then provision like any new VM and report Ready again.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::{exit, Run, RUN_OVF};
use crate::duties::{self, Outcome};
use crate::plan::{self, Phase, PpsKind};
use crate::platform::http::TransportError;
use crate::platform::imds::{self, Instance, ReprovisionConfig};
use crate::platform::ovf::{self, Environment};
use crate::platform::wireserver::{self, Health};
use crate::report::Failure;
use crate::state::{RunResult, StepOutcome};

/// What the wait in the pool produced: the customer's OVF and instance document.
pub(super) struct Customer {
    pub env: Environment,
    pub instance: Instance,
}

/// systemd's start timeout while the VM waits in the pool (it may wait for days): ten years, in microseconds.
const POOL_TIMEOUT_USEC: u64 = 10 * 365 * 24 * 3600 * 1_000_000;

/// A connection error this soon after a DHCP renewal is the new lease settling (routes follow the address): the
/// poll retries without renewing again (each renewal drops the address for a moment).
const RENEWAL_GRACE: Duration = Duration::from_secs(10);

fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

impl Run<'_> {
    /// The pool part of a pre-provisioned VM's boot, up to the customer's OVF and instance document. `Err` ends
    /// the run with that outcome (a failure report, or an undelivered intermediate report).
    pub(super) fn pool(&mut self, kind: PpsKind, pool_instance: &Instance) -> Result<Customer, Box<super::RunOutcome>> {
        self.pps_type = kind.name().into();
        let t = self.clock.now();
        tracing::info!("pre-provisioned VM ({}): waiting in the pool for a customer", kind.name());
        // no platform deadline applies in the pool: keep systemd's start timeout from ending the wait
        let _ = self.sys.sd_notify(&format!("EXTEND_TIMEOUT_USEC={POOL_TIMEOUT_USEC}"));
        let _ = self.sys.sd_notify(&format!("STATUS=pre-provisioned VM ({}): waiting for a customer", kind.name()));
        self.progress.primary_mac = pool_instance.interfaces.first().map(|i| i.mac.clone());
        let primary_mac = self.progress.primary_mac.clone();
        // the intermediate Ready goes to the wireserver like any report: through the pool NIC
        self.routes();

        // the NIC watch starts before the intermediate Ready: the assignment may follow it at once
        let mut watch = None;
        if matches!(kind, PpsKind::Running | PpsKind::Savable) && self.sys.is_live() {
            let started = duties::pps_network::pool_nic(self.sys, primary_mac.as_deref())
                .and_then(|nic| duties::pps_network::Watcher::start(self.sys).map(|w| (nic, w)));
            match started {
                Ok(w) => watch = Some(w),
                Err(f) => return Err(Box::new(self.fail(f))),
            }
        }

        match kind {
            PpsKind::Unknown => {
                self.record("pps_pool", StepOutcome::Skipped, t, "rebooted in the pool: Ready was reported".into());
            }
            PpsKind::OsDisk => {
                // Ready, no marker; the host then shuts the VM down and reuses its disk
                self.pool_ready(false)?;
                tracing::info!("PreprovisionedOSDisk: waiting for the host to shut this VM down");
                let bound = secs(self.cfg.pps.os_disk_wait_secs);
                let until = bound.map(|b| self.clock.now() + b);
                loop {
                    let left = until.map(|u| u.saturating_duration_since(self.clock.now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        break;
                    }
                    self.clock.sleep(left.unwrap_or(Duration::from_secs(3600)).min(Duration::from_secs(3600)));
                }
                return Err(Box::new(self.fail(Failure::new("error waiting for host shutdown"))));
            }
            PpsKind::Running | PpsKind::Savable => {
                self.pool_ready(kind == PpsKind::Savable)?;
                let t = self.clock.now();
                let timeout = secs(self.cfg.pps.assignment_wait_secs);
                let Some((nic, mut w)) = watch else {
                    self.record("pps_assignment", StepOutcome::Skipped, t, "not the running system: no NIC".into());
                    return self.pool_customer(None);
                };
                let renewed_at = if kind == PpsKind::Running {
                    match w.wait_bounce(&nic.mac, timeout) {
                        Ok(b) => {
                            tracing::info!("pps_assignment: {}", b.describe());
                            self.record("pps_assignment", StepOutcome::Done, t, b.describe());
                            let name = b.link.name.clone();
                            let imds = self.imds_addr();
                            self.side_step("pps_dhcp", false, |sys, _| {
                                duties::pps_network::renew_dhcp(sys, &name, imds)
                            });
                            Some(self.clock.now())
                        }
                        Err(f) => return Err(Box::new(self.fail(f))),
                    }
                } else {
                    let opts = duties::pps_network::ReattachOptions {
                        timeout,
                        dhcp_timeout: Duration::from_secs(self.cfg.pps.dhcp_wait_secs),
                        reach: self.imds_addr(),
                        ..Default::default()
                    };
                    // the first NIC with a lease: IMDS (asked next) names the customer's primary NIC, and the
                    // network phase's routes follow its MAC
                    match w.wait_reattach(&nic.mac, &opts, &mut |_| true) {
                        Ok(r) => {
                            tracing::info!("pps_assignment: {}", r.describe());
                            self.record("pps_assignment", StepOutcome::Done, t, r.describe());
                            Some(self.clock.now())
                        }
                        Err(f) => return Err(Box::new(self.fail(f))),
                    }
                };
                return self.pool_customer(renewed_at);
            }
            PpsKind::None => {}
        }
        self.pool_customer(None)
    }

    /// After the assignment: the customer's OVF from `reprovisiondata` and the customer's instance document.
    /// `renewed_at`: when the assignment's own DHCP step ended.
    fn pool_customer(&mut self, mut renewed_at: Option<Instant>) -> Result<Customer, Box<super::RunOutcome>> {
        // the customer's OVF
        let t = self.clock.now();
        let client = super::imds_client(self.cfg);
        let mut rcfg = ReprovisionConfig::new(self.cfg.platform.imds_url.clone());
        rcfg.deadline = secs(self.cfg.pps.reprovision_wait_secs);
        let (sys, clock) = (self.sys, self.clock);
        let mut renewals = 0u32;
        let mac = self.progress.primary_mac.clone();
        let imds = self.imds_addr();
        let mut on_conn_error = |e: &TransportError| {
            if renewed_at.is_some_and(|r| clock.now().saturating_duration_since(r) < RENEWAL_GRACE) {
                tracing::info!(
                    "IMDS unreachable while polling reprovisiondata ({e}), just after a DHCP renewal: retrying"
                );
                return ControlFlow::Continue(());
            }
            // the network changed under us (a NIC moved): get a lease on it again and keep polling
            renewals += 1;
            tracing::info!("IMDS unreachable while polling reprovisiondata ({e}): renewing DHCP");
            match duties::pps_network::pool_nic(sys, mac.as_deref()) {
                Ok(nic) => {
                    if let Outcome::Failed(f) = duties::pps_network::renew_dhcp(sys, &nic.name, imds) {
                        tracing::warn!("DHCP renewal failed: {f}");
                    }
                }
                Err(f) => tracing::warn!("no NIC to renew DHCP on: {f}"),
            }
            renewed_at = Some(clock.now());
            ControlFlow::Continue(())
        };
        let bytes = match imds::fetch_reprovision_data(&client, &rcfg, self.clock, &mut on_conn_error) {
            Ok(b) => b,
            Err(e) => return Err(Box::new(self.fail(e.failure()))),
        };
        let env = match ovf::parse(&bytes) {
            Ok(env) => env,
            Err(e) => return Err(Box::new(self.fail(e.failure()))),
        };
        for w in &env.warnings {
            self.warn(&format!("customer ovf-env.xml: {w}"));
        }
        if let Err(e) = self.state.save_redacted_ovf(&ovf::redact(&bytes)) {
            self.warn(&format!("cannot save the redacted ovf-env.xml: {e}"));
        }
        // a restarted network phase reads this copy instead of the pool's DVD
        let _ = self.sys.create_dir_all(&self.cfg.state.run_dir, 0o700, None);
        let _ = self.sys.write_file_unsynced(&self.cfg.state.run_dir.join(RUN_OVF), &bytes, 0o600, None);
        let detail = format!("customer ovf-env.xml received ({} bytes, {renewals} DHCP renewal(s))", bytes.len());
        tracing::info!("reprovision_data: {detail}");
        self.record("reprovision_data", StepOutcome::Done, t, detail);

        // IMDS again: the customer's instance document, no longer a pool VM
        let t = self.clock.now();
        let icfg = super::imds_config(self.cfg, Duration::from_secs(self.cfg.platform.imds_deadline_secs));
        let instance = match imds::fetch_instance(&client, &icfg, self.clock) {
            Ok(i) => i,
            Err(e) => return Err(Box::new(self.fail(e.failure()))),
        };
        if let Some(p) = instance.pps_type.as_deref().filter(|p| !p.eq_ignore_ascii_case("None")) {
            let f = Failure::new("invalid IMDS metadata for key=extended.compute.ppsType").with("ppsType", p);
            return Err(Box::new(self.fail(f)));
        }
        self.record("imds_customer", StepOutcome::Done, t, "the customer's instance document".into());
        // the customer's provisioning window starts now: the wireserver deadline counts from here
        self.started = self.clock.now();
        let _ = self.sys.sd_notify(&format!(
            "EXTEND_TIMEOUT_USEC={}",
            (self.cfg.platform.wireserver_deadline_secs + 60) * 1_000_000
        ));
        let _ = self.sys.sd_notify("STATUS=provisioning for the customer");
        Ok(Customer { env, instance })
    }

    /// The intermediate Ready of a pool VM; the marker only after it was accepted (cloud-init PR #590). Savable:
    /// the host suspends the VM once it has the report, so the answer may never come: one attempt, an error is
    /// expected and ignored (a retry after the resume would tell the customer's VM it is ready).
    fn pool_ready(&mut self, savable: bool) -> Result<(), Box<super::RunOutcome>> {
        let t = self.clock.now();
        let mut w = self.wire_config();
        w.deadline = if savable { self.clock.now() } else { self.clock.now() + w.read_timeout * 10 };
        match wireserver::report_health(&w.client(), &w, self.clock, &Health::Ready) {
            Ok(o) => {
                let d = format!("intermediate Ready: HTTP {} after {} attempt(s)", o.status, o.attempts);
                tracing::info!("pps_ready: {d}");
                self.record("pps_ready", StepOutcome::Done, t, d);
            }
            Err(e) if savable => {
                let d = format!("intermediate Ready: {e} (expected: the VM is being suspended)");
                self.record("pps_ready", StepOutcome::Done, t, d);
            }
            Err(e) => {
                self.record("pps_ready", StepOutcome::Failed, t, e.to_string());
                let msg = format!("pre-provisioned VM: the intermediate Ready could not be delivered: {e}");
                return Err(Box::new(self.finish(exit::UNREPORTED, RunResult::Error, Some(msg.clone()), false, msg)));
            }
        }
        if self.pps_type != PpsKind::OsDisk.name() {
            if let Err(e) = self.state.mark_pool_reported(&self.vm_id) {
                self.warn(&format!("cannot record the intermediate Ready: {e}"));
            }
        }
        Ok(())
    }

    /// The customer's VM: the local duties with the customer's OVF (the pool skipped them), then the usual network
    /// phase and the final Ready.
    pub(super) fn customer_local(&mut self, env: &Environment) -> Result<(), Failure> {
        let id = plan::identity(Some(env), None);
        let p = plan::plan(&self.vm_id, &id, self.cfg, &self.progress.done, Phase::Local);
        self.execute(&p, Some(env))?;
        self.local_side_steps(env)?;
        // the pool's DHCP lease carried the pool's name: tell the platform DNS the customer's
        if let (true, Some(name)) = (self.sys.is_live(), id.hostname) {
            let wire = self.wire_addr();
            self.side_step("hostname_publish", false, |sys, _| {
                duties::hostname_publish::publish(sys, &name, Some(wire))
            });
        }
        Ok(())
    }
}
