//! Pre-provisioned (pool) VMs LIVE: the real binary with root `/` inside a namespace sandbox (private mount, UTS,
//! network and PID namespaces, overlays over /etc, /home, /var), real netlink link signals from the simulator's
//! assign hook and real DHCP (dnsmasq in a host-side namespace, dhclient restricted to a sandbox script) — see
//! `azprov_sim::pps_live`. Each test re-runs itself under `unshare` (the inner side is the same test with the options
//! in the environment); without root, `unshare` or `ip` (Savable: `dnsmasq`, `dhclient`) it is skipped with a reason.

use std::path::PathBuf;
use std::process::Command;

use azprov_sim::pps_live::{self, Flow, Launch, PpsLiveOptions, Summary};

/// The outer side runs the flow in new namespaces and answers its summary; the inner side (this test re-executed
/// under unshare) runs it and answers `None`. `None` too when skipped.
fn live(flow: Flow, test_name: &str, no_dhcp: bool) -> Option<Summary> {
    if std::env::var_os(pps_live::OPTIONS_ENV).is_some() {
        if let Err(e) = pps_live::inner_from_env() {
            panic!("inner side of {test_name}: {e}");
        }
        return None;
    }
    let mut inner = Command::new(std::env::current_exe().expect("test executable"));
    inner.args(["--exact", test_name, "--nocapture", "--test-threads=1"]);
    let opts = PpsLiveOptions { flow, agent: Some(PathBuf::from(env!("CARGO_BIN_EXE_azprov"))), no_dhcp };
    match pps_live::run(&opts, inner) {
        Ok(Launch::Skipped(why)) => {
            eprintln!("skipping {test_name}: {why}");
            None
        }
        Ok(Launch::Ran(s)) => {
            eprintln!("{}", s.human());
            Some(*s)
        }
        Err(e) => panic!("{test_name}: {e}"),
    }
}

fn assert_common(s: &Summary) {
    assert!(s.success(), "{}", s.human());
    assert_eq!(s.agent_exit_code, Some(0));
    assert!(s.intermediate_ready, "the intermediate Ready (pool phase)");
    assert!(s.final_ready, "the final Ready (customer phase)");
    assert!(matches!((s.first_ready_ms, s.assigned_ms), (Some(r), Some(a)) if r <= a), "{s:?}");
    assert_eq!(s.reprovision_served, 1);
    assert_eq!(s.status_result, "success");
    assert!(s.customer_in_passwd && !s.pool_user_in_passwd, "{s:?}");
    assert_eq!(s.hostname, "web-01", "the UTS host name is the customer's");
    assert!(s.failed_steps.is_empty(), "{:?}", s.failed_steps);
}

#[test]
fn running_pool_vm_live() {
    let Some(s) = live(Flow::Running, "running_pool_vm_live", false) else { return };
    assert_common(&s);
    let a = s.pps_assignment.as_ref().expect("a pps_assignment step");
    assert_eq!(a.outcome, "done");
    assert!(a.detail.starts_with("eth0 went down (event") && a.detail.contains("came up again"), "{}", a.detail);
    if s.dhcp {
        let d = s.pps_dhcp.as_ref().expect("a pps_dhcp step");
        assert_eq!(d.outcome, "done", "{}", d.detail);
        assert!(
            d.detail.contains("through dhclient (dhclient -r then -1") && d.detail.contains("10.99.0."),
            "{}",
            d.detail
        );
    }
}

#[test]
fn savable_pool_vm_live() {
    let Some(s) = live(Flow::Savable, "savable_pool_vm_live", false) else { return };
    assert_common(&s);
    let a = s.pps_assignment.as_ref().expect("a pps_assignment step");
    assert_eq!(a.outcome, "done");
    assert!(a.detail.starts_with("eth0 detached; hot-attached: eth1 (10.99.0."), "{}", a.detail);
    // the pool NIC's dhclient (daemonized after the pool lease) is not left retrying on the vanished interface
    assert!(
        a.detail.contains("; stopped dhclient pid ") && a.detail.contains(" of the detached eth0 (dhclient -x)"),
        "{}",
        a.detail
    );
    assert!(s.addresses.iter().any(|l| l.starts_with("eth1 10.99.0.")), "{:?}", s.addresses);
    assert!(s.dhcp_acks >= 2, "the pool's lease and the hot-attached NIC's");
}

#[test]
fn running_pool_vm_live_without_dhcp() {
    let Some(s) = live(Flow::Running, "running_pool_vm_live_without_dhcp", true) else { return };
    assert_common(&s);
    assert!(!s.dhcp);
    let a = s.pps_assignment.as_ref().expect("a pps_assignment step");
    assert!(a.outcome == "done" && a.detail.starts_with("eth0 went down (event"), "{a:?}");
    // no DHCP client in this sandbox: nothing renewed, nothing failed
    let d = s.pps_dhcp.as_ref().expect("a pps_dhcp step");
    assert_eq!(d.outcome, "skipped", "{}", d.detail);
    assert!(d.detail.contains("no DHCP client found"), "{}", d.detail);
}
