//! The lifecycle commands around provisioning, run as the real binary on a sandbox root against the simulator:
//! minimal mode (`report-ready`, `report-failure`), `kvp dump` and `deprovision`.

mod common;

use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::vm::VmDefinition;
use common::*;

#[test]
fn report_ready_every_run_without_once() {
    let vm = VmDefinition::default();
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    env.sim.set_incarnation(7); // a fresh goal state, not a hard-coded incarnation
    for _ in 0..2 {
        let out = env.azprov(&["report-ready"], &[]);
        assert_eq!(exit_code(&out), 0);
    }
    let reports = env.sim.health_reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(reports.iter().all(|r| r.state == "Ready" && r.incarnation == Some(7)), "{reports:?}");
    // KVP first; nothing else touched: no marker, no host name
    let kvp = env.kvp_reports();
    assert_eq!(kvp.len(), 2);
    assert!(kvp[0].starts_with("result=success|agent=azprov/"), "{}", kvp[0]);
    assert!(kvp[0].contains(&format!("|vm_id={}|", vm.vm_id)), "{}", kvp[0]);
    assert!(!file_exists(&env.path(&format!("/var/lib/azprov/provisioned/{}", vm.vm_id))));
    assert_ne!(std::fs::read_to_string(env.path("/etc/hostname")).unwrap_or_default().trim(), vm.hostname);
}

#[test]
fn report_ready_once_sends_nothing_the_second_time() {
    let vm = VmDefinition::default();
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    let out = env.azprov(&["report-ready"], &["--once"]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    assert!(file_exists(&env.path(&format!("/var/lib/azprov/provisioned/{}", vm.vm_id))));
    let out = env.azprov(&["report-ready"], &["--once"]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.sim.health_reports().len(), 1, "the second run sent nothing");
    assert_eq!(env.kvp_reports().len(), 1);
}

#[test]
fn report_ready_sets_the_host_name_from_computer_name() {
    // compute.name ("resource-name") differs from osProfile.computerName: the latter is the host name
    let vm = VmDefinition {
        hostname: "computer-01".into(),
        role_instance_id: "103efdde-3061-45f3-9800-8e2e6d8cf845.resource-name".into(),
        ..Default::default()
    };
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    let out = env.azprov(&["report-ready"], &["--set-hostname"]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.read("/etc/hostname"), "computer-01\n");
    assert!(env.sim.ready_reported());
}

#[test]
fn report_ready_without_a_vm_id() {
    let vm = VmDefinition::default();
    let env = setup(vm, Faults::none(), Dvd::None);
    std::fs::remove_file(env.path("/sys/class/dmi/id/product_uuid")).unwrap();
    let out = env.azprov(&["report-ready"], &["--once"]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    let kvp = env.kvp_reports();
    assert!(kvp[0].contains("|vm_id=unknown|"), "{}", kvp[0]);
}

#[test]
fn report_failure_sends_not_ready_with_the_reason() {
    let vm = VmDefinition::default();
    let env = setup(vm, Faults::none(), Dvd::None);
    let out = env.azprov(&["report-failure"], &["--reason", "image setup failed: disk|full"]);
    assert_eq!(exit_code(&out), 0);
    let r = env.last_report();
    assert_eq!(r.state, "NotReady");
    assert_eq!(r.sub_status.as_deref(), Some("ProvisioningFailed"));
    let d = r.description.unwrap_or_default();
    assert!(d.starts_with("result=error|'reason=image setup failed: disk|full'|agent=azprov/"), "{d}");
    assert!(!env.sim.ready_reported());
    let kvp = env.kvp_reports();
    assert!(kvp[0].starts_with("result=error|'reason=image setup failed: disk|full'"), "{}", kvp[0]);
}

#[test]
fn report_ready_gives_up_within_the_deadline() {
    let vm = VmDefinition::default();
    let env = setup_with(vm, Faults::none(), Dvd::None, "[platform]\nwireserver_deadline_secs = 2\n", true);
    env.sim.set_faults(Faults { health: vec![FaultStep::StatusFor { code: 503, ms: 60_000 }], ..Faults::none() });
    let t = std::time::Instant::now();
    let out = env.azprov(&["report-ready"], &[]);
    assert_eq!(exit_code(&out), 3, "unreported");
    assert!(t.elapsed() < std::time::Duration::from_secs(10), "bounded: {:?}", t.elapsed());
}

#[test]
fn kvp_dump_prints_records() {
    let vm = VmDefinition::default();
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    assert_eq!(exit_code(&env.azprov(&["report-ready"], &[])), 0);
    let out = env.azprov(&["kvp", "dump"], &[]);
    assert_eq!(exit_code(&out), 0);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| l.starts_with("PROVISIONING_REPORT = ")).expect(&text);
    assert!(line.contains(&format!("vm_id={}", vm.vm_id)), "{line}");
    // an explicit file
    let pool = env.path("/var/lib/hyperv/.kvp_pool_1");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_azprov")).args(["kvp", "dump"]).arg(&pool).output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text);
}

#[test]
fn deprovision_after_provisioning() {
    if !can_run_as_root("deprovision_after_provisioning") {
        return;
    }
    let vm = VmDefinition::default();
    let env = setup_with(vm.clone(), Faults::none(), Dvd::Udf102, "[deprovision]\nlock_root_password = true\n", true);
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert!(env.read("/etc/passwd").contains(&format!("{}:", vm.username)));
    let marker = format!("/var/lib/azprov/provisioned/{}", vm.vm_id);
    assert!(file_exists(&env.path(&marker)));

    // dry run: lists full target paths, changes nothing
    let out = env.azprov(&["deprovision"], &["--user", "--dry-run"]);
    assert_eq!(exit_code(&out), 0);
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    assert!(text.contains(&format!("would remove {marker}\n")), "{text}");
    assert!(text.contains("would run userdel --root"), "{text}");
    assert!(file_exists(&env.path(&marker)));

    let out = env.azprov(&["deprovision"], &["--user"]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(!file_exists(&env.path(&marker)));
    assert!(!env.read("/etc/passwd").contains(&format!("{}:", vm.username)));
    assert!(!file_exists(&env.path(&format!("/home/{}", vm.username))));
    assert_eq!(env.read("/etc/hostname"), "localhost.localdomain\n");
    assert!(!env.read("/etc/hosts").contains("127.0.1.1"));
    let sudo = std::fs::read_to_string(env.path("/etc/sudoers.d/90-azprov")).unwrap_or_default();
    assert!(!sudo.contains(&vm.username), "{sudo}");
    assert!(!file_exists(&env.path("/etc/ssh/sshd_config.d/01-azprov.conf")));
    let shadow = env.read("/etc/shadow");
    assert!(shadow.lines().any(|l| l.starts_with("root:*LOCK*:")), "{shadow}");
    // nothing left to do the second time
    let out = env.azprov(&["deprovision"], &["--user", "--dry-run"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("would remove"), "{text}");
}
