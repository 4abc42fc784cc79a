//! Pre-provisioned (pool) VMs (platform.md §10), with the real binary on a sandbox root against the simulator: the
//! intermediate Ready, the wait for the customer, `reprovisiondata`, the customer's provisioning and the final Ready.
//! (On a sandbox root there is no NIC to watch: the link signals are tested live in `system::netlink`'s namespace
//! tests and in `duties::pps_network`.)

mod common;

use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::vm::VmDefinition;
use common::*;

/// Bounds every pool wait, so that a regression fails instead of hanging.
const PPS_CONFIG: &str = "[pps]\nassignment_wait_secs = 20\nreprovision_wait_secs = 20\nos_disk_wait_secs = 1\n";

fn pool(pps_type: &str) -> VmDefinition {
    let pool = VmDefinition {
        pps_type: pps_type.into(),
        hostname: "pool-0042".into(),
        username: "pooladmin".into(),
        assign_after_ready_ms: Some(300),
        ..Default::default()
    };
    pool.clone().with_customer(VmDefinition {
        hostname: "web-01".into(),
        username: "alice".into(),
        password: Some("Customer-Passw0rd!".into()),
        assign_after_ready_ms: None,
        ..pool
    })
}

fn user_exists(env: &Env, name: &str) -> bool {
    env.read("/etc/passwd").lines().any(|l| l.split(':').next() == Some(name))
}

fn pool_marker(env: &Env) -> bool {
    file_exists(&env.path("/var/lib/azprov/pps-ready"))
}

fn assert_customer_provisioned(env: &Env) {
    assert!(user_exists(env, "alice"), "the customer's user");
    assert!(!user_exists(env, "pooladmin"), "the pool's user was never created");
    assert_eq!(env.read("/etc/hostname").trim(), "web-01");
    assert!(!pool_marker(env), "the pool marker goes with the final Ready");
    let status = env.status_json();
    assert_eq!(status["result"], "success", "{status}");
    assert_eq!(status["reported"], true);
}

#[test]
fn running_pool_vm_reports_twice_and_provisions_the_customer() {
    let env = setup_with(pool("Running"), Faults::none(), Dvd::Udf102, PPS_CONFIG, true);
    let out = env.provision(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 0, "{err}");
    let pps = env.sim.pps_status();
    assert!(pps.intermediate_ready(), "{pps:?}");
    assert!(pps.final_ready(), "{pps:?}");
    assert_eq!(pps.reprovision_served, 1);
    assert!(pps.reprovision_polls >= 1);
    assert_customer_provisioned(&env);
    // one final report in KVP, naming the pool type
    let kvp = env.kvp_reports();
    assert_eq!(kvp.len(), 1, "{kvp:?}");
    assert!(kvp[0].starts_with("result=success") && kvp[0].contains("pps_type=Running"), "{}", kvp[0]);
    let steps = env.status_json()["steps"].clone();
    for name in ["pps_ready", "reprovision_data", "imds_customer", "report_ready"] {
        assert!(steps.as_array().unwrap().iter().any(|s| s["name"] == name), "{name}: {steps}");
    }
    // the customer's OVF, not the pool's, is the redacted copy; no password in it
    let copy = env.read("/var/lib/azprov/ovf-env.xml");
    assert!(copy.contains("alice") && !copy.contains("Customer-Passw0rd!"), "{copy}");
    // a reboot: nothing more
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.sim.health_reports().len(), 2);
}

#[test]
fn savable_pool_vm_goes_on_when_its_ready_gets_no_answer() {
    // the host suspends the VM as soon as it has the report: the answer never comes
    let faults = Faults { health: vec![FaultStep::Drop], ..Faults::none() };
    let env = setup_with(pool("Savable"), faults, Dvd::Udf102, PPS_CONFIG, true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let pps = env.sim.pps_status();
    assert_eq!(pps.pool_ready_posts, 1, "one attempt only: a retry after the resume would be the customer's Ready");
    assert!(!pps.intermediate_ready());
    assert!(pps.final_ready(), "{pps:?}");
    assert_customer_provisioned(&env);
}

#[test]
fn split_phases_local_skips_the_pool_identity() {
    let env = setup_with(pool("Running"), Faults::none(), Dvd::Udf102, PPS_CONFIG, true);
    let local = env.provision(&["--phase", "local"]);
    assert_eq!(exit_code(&local), 0, "{}", String::from_utf8_lossy(&local.stderr));
    assert!(!user_exists(&env, "pooladmin"), "the pool's identity is never applied");
    assert!(env.sim.health_reports().is_empty());
    let net = env.provision(&["--phase", "network"]);
    assert_eq!(exit_code(&net), 0, "{}", String::from_utf8_lossy(&net.stderr));
    assert!(env.sim.pps_status().final_ready());
    assert_customer_provisioned(&env);
}

#[test]
fn rebooted_in_the_pool_only_waits_for_the_customer() {
    let vm = VmDefinition { assign_after_ready_ms: None, ..pool("Running") };
    let env = setup_with(vm.clone(), Faults::none(), Dvd::Udf102, PPS_CONFIG, true);
    // the intermediate Ready was accepted before the reboot
    std::fs::create_dir_all(env.path("/var/lib/azprov")).unwrap();
    std::fs::write(env.path("/var/lib/azprov/pps-ready"), format!("{}\n", vm.vm_id)).unwrap();
    env.sim.assign().unwrap();
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let pps = env.sim.pps_status();
    assert_eq!(pps.pool_ready_posts, 0, "no second intermediate Ready");
    assert!(pps.final_ready());
    assert_customer_provisioned(&env);
}

#[test]
fn os_disk_pool_vm_waits_for_the_shutdown() {
    let vm = VmDefinition { assign_after_ready_ms: None, ..pool("PreprovisionedOSDisk") };
    let env = setup_with(vm, Faults::none(), Dvd::Udf102, PPS_CONFIG, true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 1, "{}", String::from_utf8_lossy(&out.stderr));
    let reports = env.sim.health_reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert_eq!(reports[0].state, "Ready");
    assert_eq!(reports[1].state, "NotReady");
    assert!(reports[1].description.as_deref().unwrap_or("").contains("error waiting for host shutdown"));
    assert!(!pool_marker(&env), "no marker for the OS-disk type");
    assert!(!user_exists(&env, "pooladmin"));
}

#[test]
fn reprovision_data_polled_patiently_through_errors() {
    let faults = Faults {
        reprovisiondata: vec![
            FaultStep::Status { code: 429, body: None, retry_after: None },
            FaultStep::Status { code: 500, body: None, retry_after: None },
        ],
        ..Faults::none()
    };
    let vm = VmDefinition { assign_after_ready_ms: Some(0), ..pool("Running") };
    let env = setup_with(vm, faults, Dvd::Udf102, PPS_CONFIG, true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let pps = env.sim.pps_status();
    assert!(pps.reprovision_polls >= 3, "{pps:?}");
    assert!(pps.final_ready());
    assert_customer_provisioned(&env);
}

#[test]
fn root_pool_vm_gets_its_host_keys_before_sshd_and_keeps_them() {
    if !can_run_as_root("root_pool_vm_gets_its_host_keys_before_sshd_and_keeps_them") {
        return;
    }
    let config = format!("{PPS_CONFIG}[duties.host_keys]\nenabled = true\n");
    let env = setup_with(pool("Running"), Faults::none(), Dvd::Udf102, &config, true);
    // the pool's boot: the local phase asks for host keys (sshd can start in the pool), the host-key unit makes them
    assert_eq!(exit_code(&env.provision(&["--phase", "local"])), 0);
    assert!(file_exists(&env.path("/run/azprov/host-keys")));
    assert_eq!(exit_code(&env.provision(&["--phase", "host-keys"])), 0);
    let rsa = env.read("/etc/ssh/ssh_host_rsa_key");
    assert!(rsa.contains("PRIVATE KEY"));
    // the network phase waits in the pool, provisions the customer: same VM id, same keys, thumbprint sent once
    let net = env.provision(&["--phase", "network"]);
    assert_eq!(exit_code(&net), 0, "{}", String::from_utf8_lossy(&net.stderr));
    assert!(env.sim.pps_status().final_ready());
    assert_eq!(env.read("/etc/ssh/ssh_host_rsa_key"), rsa, "not regenerated after the assignment");
    assert_eq!(env.sim.role_properties().len(), 1);
    assert_customer_provisioned(&env);
}
