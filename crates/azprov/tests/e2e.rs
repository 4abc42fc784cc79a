//! The `azprov` binary against the platform simulator on a sandbox root: the happy paths and the fault matrix,
//! each asserting the exact final report the platform received.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::vm::VmDefinition;
use common::*;

fn vm() -> VmDefinition {
    VmDefinition::default()
}

fn assert_provisioned(env: &Env, vm: &VmDefinition) {
    // the platform saw exactly one Ready
    let reports = env.sim.health_reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].state, "Ready");
    // user, keys, sudo, sshd, host name
    let passwd = env.read("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with(&format!("{}:", vm.username))).expect("user in passwd");
    let fields: Vec<&str> = line.split(':').collect();
    let (uid, home) = (fields[2].parse::<u32>().unwrap(), fields[5]);
    let ak = format!("{home}/.ssh/authorized_keys");
    let keys = env.read(&ak);
    for k in &vm.ssh_keys {
        assert!(keys.contains(k.split_whitespace().nth(1).unwrap()), "key missing: {keys}");
    }
    assert_eq!(env.mode(&ak), 0o600);
    assert_eq!(env.mode(&format!("{home}/.ssh")), 0o700);
    assert_eq!(std::fs::metadata(env.path(&ak)).unwrap().uid(), uid);
    assert_eq!(env.read("/etc/hostname"), format!("{}\n", vm.hostname));
    assert!(env.read("/etc/hosts").contains(&vm.hostname));
    let pw_auth = if vm.password.is_some() && !vm.disable_password_authentication { "yes" } else { "no" };
    let dropin = env.read("/etc/ssh/sshd_config.d/01-azprov.conf");
    assert!(dropin.contains(&format!("PasswordAuthentication {pw_auth}\n")), "{dropin}");
    let sudo = env.read("/etc/sudoers.d/90-azprov");
    assert_eq!(env.mode("/etc/sudoers.d/90-azprov"), 0o440);
    if vm.password.is_some() {
        assert_eq!(sudo, format!("{} ALL=(ALL) ALL\n", vm.username));
    } else {
        assert_eq!(sudo, format!("{} ALL=(ALL) NOPASSWD: ALL\n", vm.username));
    }
    let shadow = env.read("/etc/shadow");
    let sh = shadow.lines().find(|l| l.starts_with(&format!("{}:", vm.username))).expect("shadow line");
    if vm.password.is_some() {
        assert!(sh.split(':').nth(1).unwrap().starts_with("$6$"), "sha512-crypt hash expected");
    } else {
        assert!(sh.split(':').nth(1).unwrap().starts_with('!'), "locked account expected: {sh}");
    }
    // marker, KVP, state
    assert!(file_exists(&env.path(&format!("/var/lib/azprov/provisioned/{}", vm.vm_id))));
    let kvp = env.kvp_reports();
    assert_eq!(kvp.len(), 1);
    assert!(kvp[0].starts_with("result=success|agent=azprov/"), "{}", kvp[0]);
    assert!(kvp[0].contains(&format!("|vm_id={}|", vm.vm_id)));
    // one record per duty: key `azprov|<boot epoch>|step|<name>|<vm id>|<uuid>`, value with outcome, start, end
    // and duration; every key unique
    let pool = azprov::platform::kvp::parse_pool(&std::fs::read(env.path("/var/lib/hyperv/.kvp_pool_1")).unwrap());
    let user = pool.iter().find(|(k, _)| k.contains("|step|user|")).expect("a KVP record for the user duty");
    assert!(user.0.starts_with("azprov|") && user.0.contains(&vm.vm_id), "{}", user.0);
    let v: serde_json::Value = serde_json::from_str(&user.1).unwrap();
    assert_eq!(v["outcome"], "done", "{v}");
    assert!(
        v["start"].as_str().unwrap().ends_with("+00:00") && v["end"].as_str().unwrap() >= v["start"].as_str().unwrap()
    );
    assert!(v["duration_ms"].is_u64());
    let keys: std::collections::BTreeSet<_> = pool.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys.len(), pool.len(), "unique keys");
    let status = env.status_json();
    assert_eq!(status["result"], "success");
    assert_eq!(status["reported"], true);
    assert_eq!(status["vm_id"], vm.vm_id.as_str());
}

#[test]
fn root_provisions_from_udf102_dvd() {
    if !can_run_as_root("root_provisions_from_udf102_dvd") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert_provisioned(&env, &vm);
    // the redacted OVF copy: root-only, no password
    let ovf = env.read("/var/lib/azprov/ovf-env.xml");
    assert_eq!(env.mode("/var/lib/azprov/ovf-env.xml"), 0o600);
    assert!(ovf.contains("REDACTED"));
    assert!(!ovf.contains(vm.password.as_deref().unwrap()));
    // the unredacted per-boot copy is gone after Ready
    assert!(!file_exists(&env.path("/run/azprov/ovf-env.xml")));
    // secrets never on the agent's output
    assert!(!String::from_utf8_lossy(&out.stderr).contains(vm.password.as_deref().unwrap()));
}

#[test]
fn root_provisions_from_udf250_dvd_gen1() {
    if !can_run_as_root("root_provisions_from_udf250_dvd_gen1") {
        return;
    }
    let vm = VmDefinition { gen2: false, password: None, ..vm() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf250);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert_provisioned(&env, &vm);
}

#[test]
fn root_provisions_from_genisoimage_udf_and_iso9660() {
    if !can_run_as_root("root_provisions_from_genisoimage_udf_and_iso9660") {
        return;
    }
    for dvd in [Dvd::Genisoimage, Dvd::Iso] {
        let vm = vm();
        let env = setup(vm.clone(), Faults::none(), dvd);
        assert_eq!(exit_code(&env.provision(&[])), 0);
        assert_provisioned(&env, &vm);
    }
}

#[test]
fn root_reboot_same_vm_does_nothing_new_vm_provisions_again() {
    if !can_run_as_root("root_reboot_same_vm_does_nothing_new_vm_provisions_again") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    assert_eq!(exit_code(&env.provision(&[])), 0);
    // same VM id: nothing once-per-VM, no second report
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.sim.health_reports().len(), 1);
    // a clone: new VM id (product_uuid changes) → provisioned again
    let clone = VmDefinition { vm_id: "0f2b1c9e-8d7a-4e6f-9a1b-2c3d4e5f6a7b".into(), ..vm.clone() };
    std::fs::write(env.path("/sys/class/dmi/id/product_uuid"), format!("{}\n", clone.product_uuid())).unwrap();
    let sim2 = azprov_sim::server::Simulator::start(clone.clone(), Faults::none()).unwrap();
    let out = env.provision_with(&sim2.url(), &sim2.url());
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(sim2.ready_reported());
    assert!(file_exists(&env.path(&format!("/var/lib/azprov/provisioned/{}", clone.vm_id))));
}

#[test]
fn root_later_boot_follows_a_platform_rename_only_when_configured() {
    if !can_run_as_root("root_later_boot_follows_a_platform_rename_only_when_configured") {
        return;
    }
    let vm = vm();
    let step = |env: &common::Env| {
        let status = env.status_json();
        let steps = status["steps"].as_array().cloned().unwrap_or_default();
        steps.into_iter().find(|s| s["name"] == "hostname_follow").unwrap_or_default()
    };
    // the platform renames the VM: same VM id, IMDS gives another computerName
    let renamed = VmDefinition { imds_hostname: Some("renamed-by-platform".into()), ..vm.clone() };
    let sim2 = azprov_sim::server::Simulator::start(renamed, Faults::none()).unwrap();

    let follow = "[duties.hostname]\nfollow_platform_renames = true\n";
    let env = setup_with(vm.clone(), Faults::none(), Dvd::Udf102, follow, true);
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.read("/etc/hostname").trim(), vm.hostname);
    // a later boot, name unchanged on the platform
    assert_eq!(exit_code(&env.provision(&[])), 0);
    let s = step(&env);
    assert_eq!(s["outcome"], "skipped", "{s}");
    assert!(s["detail"].as_str().unwrap_or("").contains("is the one applied"), "{s}");
    // the admin names the VM by hand: kept while the platform's name is unchanged
    std::fs::write(env.path("/etc/hostname"), "admin-choice\n").unwrap();
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.read("/etc/hostname").trim(), "admin-choice");
    // renamed on the platform: applied, once, with no second report
    let out = env.provision_with(&sim2.url(), &sim2.url());
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(env.read("/etc/hostname").trim(), "renamed-by-platform");
    let s = step(&env);
    assert_eq!(s["outcome"], "done", "{s}");
    assert!(s["detail"].as_str().unwrap_or("").contains("the platform renamed the VM to renamed-by-platform"), "{s}");
    assert!(sim2.health_reports().is_empty(), "a later boot reports nothing");
    assert!(env.read("/etc/hosts").contains("renamed-by-platform"));
    std::fs::write(env.path("/etc/hostname"), "admin-again\n").unwrap();
    assert_eq!(exit_code(&env.provision_with(&sim2.url(), &sim2.url())), 0);
    assert_eq!(env.read("/etc/hostname").trim(), "admin-again", "the rename is applied once");

    // the default: a later boot never asks IMDS for the name
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    assert_eq!(exit_code(&env.provision(&[])), 0);
    let before = sim2.requests().len();
    assert_eq!(exit_code(&env.provision_with(&sim2.url(), &sim2.url())), 0);
    assert_eq!(env.read("/etc/hostname").trim(), vm.hostname);
    assert_eq!(sim2.requests().len(), before, "no IMDS request on a later boot");
    assert!(step(&env).is_null());
}

#[test]
fn root_lost_ready_repeats_only_the_report() {
    if !can_run_as_root("root_lost_ready_repeats_only_the_report") {
        return;
    }
    let vm = vm();
    let faults = Faults { health: vec![FaultStep::StatusFor { code: 500, ms: 60_000 }], ..Faults::none() };
    let env = setup_with(vm.clone(), faults, Dvd::Udf102, "[platform]\nwireserver_deadline_secs = 2\n", true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 3, "report undeliverable");
    assert!(!env.sim.ready_reported());
    assert!(!file_exists(&env.path(&format!("/var/lib/azprov/provisioned/{}", vm.vm_id))), "no marker without Ready");
    // the platform recovers; the agent runs again (e.g. after the platform's reboot)
    env.sim.set_faults(Faults::none());
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    let status = env.status_json();
    let steps = status["steps"].as_array().unwrap();
    for s in steps {
        let name = s["name"].as_str().unwrap();
        if ["hostname", "user", "password", "ssh_keys", "sudo", "sshd"].contains(&name) {
            assert_eq!(s["outcome"], "skipped", "{name} must not be redone: {s}");
        }
    }
}

#[test]
fn root_imds_faults_are_retried() {
    if !can_run_as_root("root_imds_faults_are_retried") {
        return;
    }
    let cases: Vec<(&str, Vec<FaultStep>)> = vec![
        ("410 for 2 s", vec![FaultStep::StatusFor { code: 410, ms: 2000 }]),
        ("429", vec![FaultStep::Status { code: 429, body: None, retry_after: None }]),
        ("500 twice", vec![FaultStep::Status { code: 500, body: None, retry_after: None }; 2]),
        ("503 with Retry-After", vec![FaultStep::Status { code: 503, body: None, retry_after: Some(1) }]),
        ("read timeout", vec![FaultStep::Delay { ms: 1500 }]),
        ("reset", vec![FaultStep::Drop]),
        ("malformed JSON", vec![FaultStep::Malformed]),
    ];
    for (name, steps) in cases {
        let vm = vm();
        let env = setup(vm.clone(), Faults { imds: steps, ..Faults::none() }, Dvd::Udf102);
        let out = env.provision(&[]);
        assert_eq!(exit_code(&out), 0, "case {name}");
        assert!(env.sim.ready_reported(), "case {name}");
    }
}

#[test]
fn root_imds_410_past_the_deadline_fails_with_http_error() {
    if !can_run_as_root("root_imds_410_past_the_deadline_fails_with_http_error") {
        return;
    }
    let faults = Faults { imds: vec![FaultStep::StatusFor { code: 410, ms: 120_000 }], ..Faults::none() };
    let env = setup_with(vm(), faults, Dvd::Udf102, "[platform]\nimds_deadline_secs = 2\n", true);
    let out = env.provision(&[]);
    assert_failed_with(&env, &out, "http error 410 querying IMDS");
    let d = env.last_report().description.unwrap();
    assert!(d.contains("|http_code=410|"), "{d}");
}

#[test]
fn root_imds_410_for_over_a_minute_still_provisions() {
    if !can_run_as_root("root_imds_410_for_over_a_minute_still_provisions") {
        return;
    }
    let faults = Faults { imds: vec![FaultStep::StatusFor { code: 410, ms: 61_000 }], ..Faults::none() };
    let env = setup_with(
        vm(),
        faults,
        Dvd::Udf102,
        "[platform]\nimds_deadline_secs = 90\nwireserver_deadline_secs = 120\n",
        true,
    );
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    // never faster than 5 requests per second
    let imds: Vec<_> = env.sim.requests().into_iter().filter(|r| r.endpoint == "imds").collect();
    assert!(imds.len() >= 2);
    let rate = imds.len() as f64 / 61.0;
    assert!(rate <= 5.0, "{} requests in 61 s", imds.len());
}

#[test]
fn root_imds_unreachable_fails_with_connection_reason() {
    if !can_run_as_root("root_imds_unreachable_fails_with_connection_reason") {
        return;
    }
    let env = setup_with(vm(), Faults::none(), Dvd::Udf102, "[platform]\nimds_deadline_secs = 2\n", true);
    // IMDS at a closed loopback port, wireserver at the simulator
    let out = env.provision_with(&closed_port_url(), &env.sim.url());
    assert_failed_with(&env, &out, "connection error querying IMDS");
}

#[test]
fn root_imds_timeouts_until_deadline_fail_with_read_timeout() {
    if !can_run_as_root("root_imds_timeouts_until_deadline_fail_with_read_timeout") {
        return;
    }
    let faults = Faults { imds: vec![FaultStep::Hang { ms: 1500 }; 20], ..Faults::none() };
    let env = setup_with(vm(), faults, Dvd::Udf102, "[platform]\nimds_deadline_secs = 3\n", true);
    let out = env.provision(&[]);
    assert_failed_with(&env, &out, "read timeout querying IMDS");
}

#[test]
fn root_wireserver_faults_are_retried() {
    if !can_run_as_root("root_wireserver_faults_are_retried") {
        return;
    }
    let cases: Vec<(&str, Faults)> = vec![
        (
            "health 503 x3",
            Faults {
                health: vec![FaultStep::Status { code: 503, body: None, retry_after: None }; 3],
                ..Faults::none()
            },
        ),
        (
            "goal state 500 then reset",
            Faults {
                goalstate: vec![FaultStep::Status { code: 500, body: None, retry_after: None }, FaultStep::Drop],
                ..Faults::none()
            },
        ),
        ("health timeout", Faults { health: vec![FaultStep::Hang { ms: 1500 }], ..Faults::none() }),
        (
            "health 410",
            Faults { health: vec![FaultStep::Status { code: 410, body: None, retry_after: None }], ..Faults::none() },
        ),
    ];
    for (name, faults) in cases {
        let env = setup(vm(), faults, Dvd::Udf102);
        let out = env.provision(&[]);
        assert_eq!(exit_code(&out), 0, "case {name}");
        assert!(env.sim.ready_reported(), "case {name}");
        assert_eq!(env.sim.health_reports().len(), 1, "case {name}: one accepted report");
    }
}

#[test]
fn root_stale_incarnation_gets_a_fresh_goal_state() {
    if !can_run_as_root("root_stale_incarnation_gets_a_fresh_goal_state") {
        return;
    }
    // the incarnation changes between the goal state and the report: the platform answers 410
    let faults =
        Faults { health: vec![FaultStep::Status { code: 410, body: None, retry_after: None }], ..Faults::none() };
    let env = setup(vm(), faults, Dvd::Udf102);
    env.sim.set_incarnation(7);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.last_report().incarnation, Some(7));
    let gs = env.sim.requests().iter().filter(|r| r.endpoint == "goalstate").count();
    assert!(gs >= 2, "goal state fetched again after 410 ({gs})");
}

#[test]
fn root_no_dvd_provisions_from_imds_alone() {
    if !can_run_as_root("root_no_dvd_provisions_from_imds_alone") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password and customData are unavailable"), "{err}");
    // no password from IMDS: account locked, password login off
    let expected = VmDefinition { password: None, ..vm };
    assert_provisioned(&env, &expected);
}

#[test]
fn root_empty_drive_waits_for_a_late_dvd() {
    if !can_run_as_root("root_empty_drive_waits_for_a_late_dvd") {
        return;
    }
    let vm = vm();
    let env = setup_with(vm.clone(), Faults::none(), Dvd::EmptyDrive, "[media]\nwait_secs = 10\n", true);
    let img = dvd_bytes(&vm, &Dvd::Udf102).unwrap();
    let dev = env.path("/dev/sr0");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let tmp = dev.with_extension("tmp");
        std::fs::write(&tmp, img).unwrap();
        std::fs::rename(tmp, dev).unwrap();
    });
    let out = env.provision(&[]);
    writer.join().unwrap();
    assert_eq!(exit_code(&out), 0);
    assert_provisioned(&env, &vm);
}

#[test]
fn root_corrupt_dvd_fails_with_parse_reason() {
    if !can_run_as_root("root_corrupt_dvd_fails_with_parse_reason") {
        return;
    }
    let vm = vm();
    let mut img = dvd_bytes(&vm, &Dvd::Udf102).unwrap();
    // keep the anchor, break both volume descriptor sequences (main and reserve) it points to
    let avdp = 256 * 2048;
    for at in [avdp + 20, avdp + 28] {
        let vds = u32::from_le_bytes(img[at..at + 4].try_into().unwrap()) as usize;
        for b in &mut img[vds * 2048..vds * 2048 + 16 * 2048] {
            *b ^= 0x5a;
        }
    }
    let env = setup(vm, Faults::none(), Dvd::Bytes(img));
    let out = env.provision(&[]);
    assert_failed_with(&env, &out, "error parsing ovf-env.xml");
}

#[test]
fn root_invalid_ovf_fails_with_exact_reasons() {
    if !can_run_as_root("root_invalid_ovf_fails_with_exact_reasons") {
        return;
    }
    let vm = vm();
    let good = ovf_xml(&vm);
    let cases: Vec<(String, &str)> = vec![
        (good.replace("</ns0:Environment>", ""), "error parsing ovf-env.xml: "),
        (
            good.replace(&format!("<HostName>{}</HostName>", vm.hostname), ""),
            "unexpected metadata parsing ovf-env.xml: missing configuration for 'HostName'",
        ),
        (good.replace(vm.password.as_deref().unwrap(), &"p".repeat(73)), "unsupported password length=73 max=72"),
    ];
    for (xml, reason) in cases {
        assert_ne!(xml, good, "test case must change the document");
        let files: [(&str, &[u8]); 1] = [("ovf-env.xml", xml.as_bytes())];
        let img = azprov_sim::dvd::udf_image(&files, "rd_rdfe_stable.x", azprov_sim::dvd::UdfLayout::V102);
        let env = setup(vm.clone(), Faults::none(), Dvd::Bytes(img));
        let out = env.provision(&[]);
        assert_failed_with(&env, &out, reason);
        // nothing was changed on the failed VM
        assert!(!env.read("/etc/passwd").contains(&vm.username));
    }
}

#[test]
fn root_specialized_disk_reports_only() {
    if !can_run_as_root("root_specialized_disk_reports_only") {
        return;
    }
    let vm = VmDefinition { specialized: true, ..vm() };
    let env = setup(vm.clone(), Faults::none(), Dvd::None);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    assert!(!env.read("/etc/passwd").contains(&vm.username), "no identity duties on a specialized disk");
    assert_eq!(env.read("/etc/hostname"), "localhost\n");
}

#[test]
fn not_on_azure_changes_nothing() {
    // no root needed: nothing is changed
    let env = setup_with(vm(), Faults::none(), Dvd::Udf102, "", false);
    let closed = closed_port_url();
    let out = env.provision_with(&closed, &closed);
    assert_eq!(exit_code(&out), 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running on Azure"));
    assert!(!file_exists(&env.path("/var/lib/azprov/ovf-env.xml")));
    assert_eq!(env.read("/etc/hostname"), "localhost\n");
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let before = env.read("/etc/passwd");
    let out = env.provision(&["--dry-run"]);
    assert_eq!(exit_code(&out), 0);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    let duties: Vec<&str> =
        plan["steps"].as_array().unwrap().iter().map(|s| s["action"]["duty"].as_str().unwrap()).collect();
    assert_eq!(duties, ["hostname", "user", "password", "ssh_keys", "sudo", "sshd"]);
    assert_eq!(plan["identity"]["username"], vm.username.as_str());
    assert!(!out.stdout.windows(8).any(|w| w == b"Passw0rd"), "no password in the plan");
    assert_eq!(env.read("/etc/passwd"), before);
    assert!(!file_exists(&env.path("/var/lib/azprov")));
    assert!(env.sim.health_reports().is_empty());
}

#[test]
fn root_phases_run_separately() {
    if !can_run_as_root("root_phases_run_separately") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let out = env.provision(&["--phase", "local"]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.read("/etc/passwd").contains(&vm.username), "local phase creates the user");
    assert!(env.sim.requests().is_empty(), "local phase does not touch the network");
    assert_eq!(env.status_json()["result"], "in-progress");
    // the DVD is gone before the network phase: it reads the per-boot copy
    std::fs::remove_file(env.path("/dev/sr0")).unwrap();
    let out = env.provision(&["--phase", "network"]);
    assert_eq!(exit_code(&out), 0);
    assert_provisioned(&env, &vm);
    let out = env.provision(&["--phase", "after-ready"]);
    assert_eq!(exit_code(&out), 0);
}

#[test]
fn root_json_health_protocol() {
    if !can_run_as_root("root_json_health_protocol") {
        return;
    }
    let env = setup_with(vm(), Faults::none(), Dvd::Udf102, "[platform]\nhealth_protocol = \"json\"\n", true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.last_report().protocol, "json");
    assert!(env.sim.requests().iter().all(|r| r.endpoint != "goalstate"));
}

#[test]
fn root_existing_user_and_keys_are_kept() {
    if !can_run_as_root("root_existing_user_and_keys_are_kept") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    // the image already has the user with a key of its own
    let mut passwd = env.read("/etc/passwd");
    passwd.push_str(&format!("{0}:x:1500:1500::/home/{0}:/bin/sh\n", vm.username));
    std::fs::write(env.path("/etc/passwd"), passwd).unwrap();
    let mut shadow = env.read("/etc/shadow");
    shadow.push_str(&format!("{}:!:20000:0:99999:7:::\n", vm.username));
    std::fs::write(env.path("/etc/shadow"), shadow).unwrap();
    let ssh = env.path(&format!("/home/{}/.ssh", vm.username));
    std::fs::create_dir_all(&ssh).unwrap();
    let old = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBwW7zdCNp6VZ4Q6gGXlmN2nQ/AD8hvKbi/UP8wXpC2L old@image\n";
    std::fs::write(ssh.join("authorized_keys"), old).unwrap();
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    let keys = std::fs::read_to_string(ssh.join("authorized_keys")).unwrap();
    assert!(keys.starts_with(old), "existing key kept first: {keys}");
    assert_eq!(keys.lines().count(), 2);
    assert_eq!(std::fs::metadata(ssh.join("authorized_keys")).unwrap().uid(), 1500);
    let entries = env.read("/etc/passwd").lines().filter(|l| l.starts_with(&format!("{}:", vm.username))).count();
    assert_eq!(entries, 1, "not recreated");
}

#[test]
fn root_goal_state_rejected_falls_back_to_json_health() {
    if !can_run_as_root("root_goal_state_rejected_falls_back_to_json_health") {
        return;
    }
    let faults = Faults { goalstate: vec![FaultStep::StatusFor { code: 400, ms: 600_000 }], ..Faults::none() };
    let env = setup(vm(), faults, Dvd::Udf102);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert_eq!(env.last_report().protocol, "json");
    assert!(String::from_utf8_lossy(&out.stderr).contains("trying the JSON health endpoint"));
}

#[test]
fn root_wireserver_down_ends_unreported_with_versions_diagnostic() {
    if !can_run_as_root("root_wireserver_down_ends_unreported_with_versions_diagnostic") {
        return;
    }
    let faults = Faults { goalstate: vec![FaultStep::StatusFor { code: 503, ms: 600_000 }], ..Faults::none() };
    let env = setup_with(vm(), faults, Dvd::Udf102, "[platform]\nwireserver_deadline_secs = 2\n", true);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 3);
    assert!(env.sim.health_reports().is_empty());
    assert!(env.sim.requests().iter().any(|r| r.endpoint == "versions"), "versions asked for diagnostics");
    assert!(String::from_utf8_lossy(&out.stderr).contains("2012-11-30"));
    let status = env.status_json();
    assert_eq!(status["result"], "error");
    assert_eq!(status["reported"], false);
}

#[test]
fn root_host_keys_regenerated_once_and_thumbprint_reported() {
    if !can_run_as_root("root_host_keys_regenerated_once_and_thumbprint_reported") {
        return;
    }
    let vm = vm();
    let env = setup_with(vm.clone(), Faults::none(), Dvd::Udf102, "[duties.host_keys]\nenabled = true\n", true);
    // a stale key from the generalized image
    std::fs::write(env.path("/etc/ssh/ssh_host_rsa_key"), "stale").unwrap();
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    let rsa = env.read("/etc/ssh/ssh_host_rsa_key");
    assert!(rsa.contains("PRIVATE KEY"), "regenerated");
    assert_eq!(env.mode("/etc/ssh/ssh_host_rsa_key"), 0o600);
    assert_eq!(env.mode("/etc/ssh/ssh_host_ed25519_key.pub"), 0o644);
    // the thumbprint went to the platform after Ready, matching ssh-keygen's own fingerprint
    let props = env.sim.role_properties();
    assert_eq!(props.len(), 1, "{props:?}");
    assert_eq!(props[0].0, "CertificateThumbprint");
    let fp = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(env.path("/etc/ssh/ssh_host_rsa_key.pub"))
        .output()
        .unwrap();
    let fp = String::from_utf8_lossy(&fp.stdout).split_whitespace().nth(1).unwrap().replace(':', "");
    assert_eq!(props[0].1, fp);
    let kvp = std::fs::read(env.path("/var/lib/hyperv/.kvp_pool_1")).unwrap();
    assert!(azprov::platform::kvp::parse_pool(&kvp)
        .iter()
        .any(|(k, v)| k.contains("|host_keys|fingerprints|") && v.contains("SHA256:")));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSH HOST KEY FINGERPRINTS"));
    let status = env.status_json();
    assert!(status["steps"].as_array().unwrap().iter().any(|s| s["name"] == "host_keys" && s["outcome"] == "done"));
    // a later boot of the same VM: the keys stay
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.read("/etc/ssh/ssh_host_rsa_key"), rsa);
}

#[test]
fn root_host_keys_in_their_own_phase_do_not_delay_ready() {
    if !can_run_as_root("root_host_keys_in_their_own_phase_do_not_delay_ready") {
        return;
    }
    let env = setup_with(vm(), Faults::none(), Dvd::Udf102, "[duties.host_keys]\nenabled = true\n", true);
    std::fs::write(env.path("/etc/ssh/ssh_host_rsa_key"), "stale").unwrap();
    // the local phase only asks for keys: the request names the VM id, nothing is generated yet
    let local = env.provision(&["--phase", "local"]);
    assert_eq!(exit_code(&local), 0, "{}", String::from_utf8_lossy(&local.stderr));
    assert_eq!(env.read("/etc/ssh/ssh_host_rsa_key"), "stale");
    let request = env.read("/run/azprov/host-keys");
    assert!(request.trim().eq_ignore_ascii_case(&vm().vm_id), "{request}");
    // the network phase reports Ready without waiting for them and leaves the thumbprint for later
    let net = env.provision(&["--phase", "network"]);
    assert_eq!(exit_code(&net), 0, "{}", String::from_utf8_lossy(&net.stderr));
    assert!(env.sim.ready_reported());
    assert_eq!(env.read("/etc/ssh/ssh_host_rsa_key"), "stale", "not generated by the network phase");
    assert!(env.sim.role_properties().is_empty());
    // the host-key phase (before sshd) makes them once, records it and clears the request
    let hk = env.provision(&["--phase", "host-keys"]);
    assert_eq!(exit_code(&hk), 0, "{}", String::from_utf8_lossy(&hk.stderr));
    let rsa = env.read("/etc/ssh/ssh_host_rsa_key");
    assert!(rsa.contains("PRIVATE KEY"), "regenerated");
    assert!(!env.path("/run/azprov/host-keys").exists());
    assert!(String::from_utf8_lossy(&hk.stderr).contains("SSH HOST KEY FINGERPRINTS"));
    // the after-Ready phase sends the thumbprint once
    assert_eq!(exit_code(&env.provision(&["--phase", "after-ready"])), 0);
    assert_eq!(env.sim.role_properties().len(), 1);
    assert_eq!(exit_code(&env.provision(&["--phase", "after-ready"])), 0);
    assert_eq!(env.sim.role_properties().len(), 1, "once per VM id");
    // the next boot: the local phase asks for nothing, the host-key phase does nothing
    assert_eq!(exit_code(&env.provision(&["--phase", "local"])), 0);
    assert!(!env.path("/run/azprov/host-keys").exists());
    assert_eq!(exit_code(&env.provision(&["--phase", "host-keys"])), 0);
    assert_eq!(env.read("/etc/ssh/ssh_host_rsa_key"), rsa);
}

#[test]
fn root_certificate_keys_installed_from_the_wireserver() {
    if !can_run_as_root("root_certificate_keys_installed_from_the_wireserver") {
        return;
    }
    let pair = azprov_sim::certs::SimCert::generate_rsa("keypair").unwrap().key_pair();
    let public = azprov_sim::certs::SimCert::generate_rsa("pubkey").unwrap().public_key();
    let vm = VmDefinition { certificates: vec![pair.clone(), public.clone()], ..vm() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    assert!(env.sim.ready_reported());
    let home = format!("/home/{}", vm.username);
    assert_eq!(env.read(&format!("{home}/.ssh/id_rsa")), pair.key_pem.clone().unwrap());
    assert_eq!(env.mode(&format!("{home}/.ssh/id_rsa")), 0o600);
    assert_eq!(env.mode(&format!("{home}/.ssh/id_rsa.pub")), 0o644);
    let keys = env.read(&format!("{home}/.ssh/authorized_keys"));
    let want = public.ssh_public_key().unwrap().unwrap();
    assert!(keys.contains(want.split_whitespace().nth(1).unwrap()), "{keys}");
    // the transport key is gone after Ready
    assert!(!file_exists(&env.path("/var/lib/azprov/transport.key")));
    assert!(env.sim.requests().iter().any(|r| r.endpoint == "certificates"));
}

#[test]
fn root_custom_data_saved_root_only_and_not_executed_by_default() {
    if !can_run_as_root("root_custom_data_saved_root_only_and_not_executed_by_default") {
        return;
    }
    let vm = vm();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    assert_eq!(exit_code(&env.provision(&[])), 0);
    assert_eq!(env.read("/var/lib/azprov/custom_data"), vm.custom_data.clone().unwrap());
    assert_eq!(env.mode("/var/lib/azprov/custom_data"), 0o600);
    let status = env.status_json();
    let steps = status["steps"].as_array().unwrap();
    assert!(steps.iter().any(|s| s["name"] == "custom_data" && s["outcome"] == "done"));
    assert!(steps.iter().any(|s| s["name"] == "custom_data_exec" && s["outcome"] == "skipped"));
    // never in KVP
    let kvp = std::fs::read(env.path("/var/lib/hyperv/.kvp_pool_1")).unwrap();
    assert!(!String::from_utf8_lossy(&kvp).contains("echo hello"));
}
