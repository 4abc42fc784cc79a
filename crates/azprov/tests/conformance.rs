//! Conformance with the peers' fault scripts: azure-init's testing-server response sequences
//! (`../shared/fixtures/fault-scripts/azure-init`), replayed by the simulator against the real agent.

mod common;

use azprov_sim::faults::{self, Faults};
use azprov_sim::vm::VmDefinition;
use common::*;

fn imds_script(name: &str) -> Option<Faults> {
    let text = fixture(&format!("fault-scripts/azure-init/imds/{name}"))?;
    Some(Faults { imds: faults::from_azure_init_imds(&text).expect("script"), ..Faults::none() })
}

fn wireserver_script(name: &str) -> Option<Faults> {
    let text = fixture(&format!("fault-scripts/azure-init/wireserver/{name}"))?;
    // azure-init reports through the JSON health endpoint only: apply its scripts there
    Some(Faults { health: faults::from_azure_init_wireserver(&text).expect("script"), ..Faults::none() })
}

#[test]
fn root_azure_init_imds_scripts() {
    if !can_run_as_root("root_azure_init_imds_scripts") {
        return;
    }
    for (script, reason) in [
        ("bad-request-400.json", "http error 400 querying IMDS"),
        ("internal-error-500.json", "http error 500 querying IMDS"),
        ("timeout-408.json", "http error 408 querying IMDS"),
    ] {
        let Some(f) = imds_script(script) else { return };
        let env = setup_with(VmDefinition::default(), f, Dvd::Udf102, "[platform]\nimds_deadline_secs = 2\n", true);
        let out = env.provision(&[]);
        assert_failed_with(&env, &out, reason);
    }
}

#[test]
fn root_azure_init_imds_two_bad_then_success() {
    if !can_run_as_root("root_azure_init_imds_two_bad_then_success") {
        return;
    }
    let Some(f) = imds_script("two-bad-then-success.json") else { return };
    // the script's success answer comes after 15 s: the read timeout must outlast it (the default 30 s does)
    let cfg = "[platform]\nimds_deadline_secs = 60\nimds_read_timeout_secs = 30\nwireserver_deadline_secs = 90\n";
    let env = setup_with(VmDefinition::default(), f, Dvd::Udf102, cfg, true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    // the script's document wins over the OVF (IMDS overrides): its computerName is temp-vm
    assert_eq!(env.read("/etc/hostname"), "temp-vm\n");
    let keys = env.read("/home/azureuser/.ssh/authorized_keys");
    // keys are merged, never overwritten: the OVF key installed by the local phase stays, the IMDS key is added
    assert!(keys.lines().any(|l| l.starts_with("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAACAQDDzWg4")), "{keys}");
}

#[test]
fn root_azure_init_wireserver_scripts() {
    if !can_run_as_root("root_azure_init_wireserver_scripts") {
        return;
    }
    let json =
        "[platform]\nhealth_protocol = \"json\"\nwireserver_deadline_secs = 3\nwireserver_read_timeout_secs = 10\n";
    for (script, ready) in [
        ("internal-error-500.xml", false),
        ("not-found-404.xml", false),
        ("one-bad-then-success.xml", true),
        ("success-200.xml", true),
    ] {
        let Some(f) = wireserver_script(script) else { return };
        let cfg = if script == "one-bad-then-success.xml" {
            json.replace("deadline_secs = 3", "deadline_secs = 30")
        } else {
            json.to_string()
        };
        let env = setup_with(VmDefinition::default(), f, Dvd::Udf102, &cfg, true);
        let out = env.provision(&[]);
        if ready {
            assert_eq!(exit_code(&out), 0, "{script}");
            assert!(env.sim.ready_reported(), "{script}");
            assert_eq!(env.last_report().protocol, "json");
        } else {
            assert_eq!(exit_code(&out), 3, "{script}: Ready could not be delivered");
            assert!(env.sim.health_reports().is_empty(), "{script}");
            let status = env.status_json();
            assert_eq!(status["reported"], false);
            assert_eq!(status["result"], "error");
        }
    }
}
