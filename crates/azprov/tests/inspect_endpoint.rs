//! `azprov inspect endpoint --lease FILE…`: the real binary on the shared DHCP fixtures and generated leases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A shared fixture path (`../shared/fixtures/<rel>`), or `None` (with a reason) when the directory is absent,
/// unless `AZPROV_REQUIRE_SHARED=1`.
fn fixture(rel: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir.join(rel));
    }
    if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("AZPROV_REQUIRE_SHARED=1 but {} does not exist", dir.display());
    }
    eprintln!("skipping: {} is absent", dir.display());
    None
}

fn inspect(files: &[&Path]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_azprov"));
    cmd.args(["inspect", "endpoint"]);
    for f in files {
        cmd.arg("--lease").arg(f);
    }
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn each_fixture_prints_its_address() {
    for (rel, want) in [
        ("dhcp/walinuxagent-dhclient.leases", "168.63.129.16"),
        ("dhcp/walinuxagent-networkd-lease-option245", "168.63.129.16"),
        ("dhcp/walinuxagent-dhcp-offer-raw.bin", "10.62.144.140"),
        ("dhcp/cloud-init-dhcpcd-raw-lease-azure-eth0.bin", "168.63.129.16"),
    ] {
        let Some(path) = fixture(rel) else { return };
        let out = inspect(&[&path]);
        assert!(out.status.success(), "{rel}: {}", stderr(&out));
        assert_eq!(stdout(&out), format!("{want}\n"), "{rel}");
    }
}

#[test]
fn lease_without_option_245_exits_1_with_a_message() {
    let Some(path) = fixture("dhcp/cloud-init-dhcpcd-raw-lease-non-azure-no-option245.bin") else { return };
    let out = inspect(&[&path]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("option 245"), "{}", stderr(&out));
}

#[test]
fn several_leases_first_file_with_option_245_wins() {
    let (Some(none), Some(offer), Some(azure)) = (
        fixture("dhcp/cloud-init-dhcpcd-raw-lease-non-azure-no-option245.bin"),
        fixture("dhcp/walinuxagent-dhcp-offer-raw.bin"),
        fixture("dhcp/cloud-init-dhcpcd-raw-lease-azure-eth0.bin"),
    ) else {
        return;
    };
    let out = inspect(&[&none, &offer, &azure]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "10.62.144.140\n");
    let out = inspect(&[&none, &azure, &offer]);
    assert_eq!(stdout(&out), "168.63.129.16\n");
}

#[test]
fn generated_leases() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // Quoted form (cloud-init vector) in a lease that never expires, after an expired one.
    let dh = write(
        "dhclient.eth0.leases",
        "lease {\n  option unknown-245 a8:3f:81:10;\n  expire 2 2020/01/01 00:00:00;\n}\n\
         lease {\n  option unknown-245 \"dH\\\"l\";\n  expire never;\n}\n",
    );
    let out = inspect(&[&dh]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "100.72.34.108\n");

    // Only expired leases: nothing.
    let expired = write("dhclient.old.leases", "lease {\n  option unknown-245 4:3:2:1;\n  expire epoch 1;\n}\n");
    let out = inspect(&[&expired]);
    assert_eq!(out.status.code(), Some(1));

    // networkd lease after the expired one.
    let nd = write("2", "# This is private data. Do not parse.\nADDRESS=10.0.0.4\nOPTION_245=0a3e908c\n");
    let out = inspect(&[&expired, &nd]);
    assert_eq!(stdout(&out), "10.62.144.140\n");

    // Garbage and an empty file are not errors, just no address.
    let junk = write("junk", "\u{0}\u{1}lease { { ; \"unterminated");
    let empty = write("empty", "");
    let out = inspect(&[&junk, &empty]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("option 245"));
}

#[test]
fn missing_file_and_missing_argument() {
    let out = inspect(&[Path::new("/nonexistent/azprov-test/lease")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/azprov-test/lease"), "{}", stderr(&out));

    let out = inspect(&[]);
    assert_eq!(out.status.code(), Some(2), "clap rejects a missing --lease");
    assert!(stderr(&out).contains("--lease"), "{}", stderr(&out));
}
