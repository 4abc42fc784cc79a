//! The `azprov-sim` binary's non-serving subcommands, and `serve`'s refusal of non-loopback addresses.

use std::process::Command;

use azprov_sim::vm::VmDefinition;

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_azprov-sim"))
}

#[test]
fn example_vm_round_trips_and_ovf_prints() {
    let out = sim().arg("example-vm").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(VmDefinition::from_toml(&text).unwrap(), VmDefinition::default());

    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm.toml");
    std::fs::write(&vm, text.replace("azprov-demo\"", "web-<01>\"")).unwrap();
    let out = sim().args(["ovf", "--vm"]).arg(&vm).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains("<HostName>web-&lt;01&gt;</HostName>"), "{xml}");
}

#[test]
fn bad_vm_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm.toml");
    std::fs::write(&vm, "hostnme = \"x\"\n").unwrap();
    let out = sim().args(["ovf", "--vm"]).arg(&vm).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostnme"));
}

#[test]
fn media_writes_an_image_or_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("vm.toml");
    std::fs::write(&vm, "").unwrap();
    let img = dir.path().join("dvd.img");
    let out = sim().args(["media", "--layout", "udf250", "--vm"]).arg(&vm).arg("--out").arg(&img).output().unwrap();
    if out.status.success() {
        assert!(std::fs::metadata(&img).unwrap().len() > 0);
    } else {
        // Until the UDF writer lands it produces nothing, and the command must say so rather than write an empty file.
        assert!(String::from_utf8_lossy(&out.stderr).contains("no image"));
        assert!(!img.exists());
    }
    std::fs::write(&vm, "specialized = true\n").unwrap();
    let out = sim().args(["media", "--vm"]).arg(&vm).arg("--out").arg(&img).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn serve_refuses_non_loopback() {
    let out = sim().args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("non-loopback"));
}
