//! Other agents on the image (platform.md §12), with the real binary on a sandbox root against the simulator:
//! cloud-init's Azure datasource makes azprov refuse, WALinuxAgent is told not to provision and finds its markers.

mod common;

use azprov_sim::faults::Faults;
use azprov_sim::vm::VmDefinition;
use common::*;

fn put(env: &Env, rel: &str, text: &str) {
    let p = env.path(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// cloud-init installed with `cloud-init-local.service` enabled and the default datasource list (Azure included).
fn cloud_init_active(env: &Env) {
    put(env, "/etc/cloud/cloud.cfg", "users:\n  - default\n");
    put(env, "/usr/lib/systemd/system/cloud-init-local.service", "[Unit]\nDescription=cloud-init local\n");
    let wants = env.path("/etc/systemd/system/cloud-init.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    std::os::unix::fs::symlink(
        "/usr/lib/systemd/system/cloud-init-local.service",
        wants.join("cloud-init-local.service"),
    )
    .unwrap();
}

#[test]
fn cloud_init_azure_datasource_makes_azprov_refuse() {
    let vm = VmDefinition::default();
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    cloud_init_active(&env);
    let out = env.provision(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 2, "{err}");
    assert!(err.contains("cloud-init") && err.contains("cloud_init"), "says why and how to override: {err}");
    assert!(env.sim.health_reports().is_empty(), "nothing reported: cloud-init reports");
    assert!(!env.read("/etc/passwd").contains(&vm.username), "nothing changed");

    // the image says cloud-init must not use the Azure datasource: azprov provisions
    put(&env, "/etc/cloud/cloud.cfg.d/99-azprov.cfg", "datasource_list: [ None ]\n");
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.sim.ready_reported());

    // cloud-init's Azure datasource turned on later, on the VM we provisioned: no failure (WALinuxAgent requires
    // our unit), nothing done, nothing reported again
    std::fs::remove_file(env.path("/etc/cloud/cloud.cfg.d/99-azprov.cfg")).unwrap();
    let out = env.provision(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 0, "{err}");
    assert!(err.contains("left to cloud-init"), "{err}");
    assert_eq!(env.sim.health_reports().len(), 1);
}

#[test]
fn cloud_init_ignored_when_configured() {
    let vm = VmDefinition::default();
    let env = setup_with(vm, Faults::none(), Dvd::Udf102, "[coexistence]\ncloud_init = \"ignore\"\n", true);
    cloud_init_active(&env);
    let out = env.provision(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(exit_code(&out), 0, "{err}");
    assert!(err.contains("cloud-init"), "warned: {err}");
    assert!(env.sim.ready_reported());
}

#[test]
fn waagent_told_not_to_provision_and_given_its_markers() {
    let vm = VmDefinition { provision_guest_agent: false, ..VmDefinition::default() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    put(
        &env,
        "/etc/waagent.conf",
        "# WALinuxAgent\nProvisioning.Agent=auto\nResourceDisk.Format=y\nResourceDisk.EnableSwap=y\nLogs.Verbose=n\n",
    );
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.sim.ready_reported());
    let conf = env.read("/etc/waagent.conf");
    for line in [
        "Provisioning.Agent=disabled",
        "ResourceDisk.Format=n",
        "ResourceDisk.EnableSwap=n",
        "Provisioning.MonitorHostName=n",
        "Provisioning.RegenerateSshHostKeyPair=n",
        "Logs.Verbose=n",
        "# WALinuxAgent",
    ] {
        assert!(conf.lines().any(|l| l == line), "{line} missing:\n{conf}");
    }
    // after Ready: WALinuxAgent's own marker (its instance id) and an OVF copy without secrets, root-only
    assert_eq!(env.read("/var/lib/waagent/provisioned").trim(), vm.vm_id.to_ascii_lowercase());
    let copy = env.read("/var/lib/waagent/ovf-env.xml");
    assert!(copy.contains(&vm.username), "{copy}");
    assert!(!copy.contains(vm.password.as_deref().unwrap()), "password in the copy");
    use base64::Engine as _;
    let custom = base64::engine::general_purpose::STANDARD.encode(vm.custom_data.as_deref().unwrap());
    assert!(!copy.contains(&custom), "customData in the copy");
    assert_eq!(env.mode("/var/lib/waagent/ovf-env.xml"), 0o600);
    assert_eq!(env.mode("/var/lib/waagent/provisioned"), 0o600);
    // provisionVMAgent=false: WALinuxAgent must not run extensions
    assert!(env.path("/var/lib/waagent/disable_agent").exists());
}
