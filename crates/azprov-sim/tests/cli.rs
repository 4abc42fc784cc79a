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

/// What `bench --live` must leave untouched on this machine.
fn host_fingerprint() -> String {
    let mut s = String::new();
    for f in ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/hostname", "/etc/hosts"] {
        // contents stand in for checksums: any change shows up in the comparison
        s.push_str(&format!("{f}: {:?}\n", std::fs::read(f).ok()));
    }
    for d in ["/home", "/etc", "/etc/ssh", "/var/lib", "/run"] {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .map(|r| r.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        s.push_str(&format!("{d}: {names:?}\n"));
    }
    let host = Command::new("hostname").output().map(|o| o.stdout).unwrap_or_default();
    s.push_str(&format!("hostname: {}\n", String::from_utf8_lossy(&host)));
    s
}

#[test]
fn live_bench_runs_in_a_namespace_and_changes_nothing() {
    let sim_exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_azprov-sim"));
    let agent = sim_exe.with_file_name("azprov");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !agent.is_file() {
        // not root: the command itself must say it skips
        if !root {
            let out = sim().args(["bench", "--live", "--runs", "1"]).output().unwrap();
            assert!(out.status.success());
            assert!(String::from_utf8_lossy(&out.stdout).contains("live benchmark skipped"));
        }
        eprintln!("skipping the live benchmark test: needs root and {} (cargo test --workspace)", agent.display());
        return;
    }
    let before = host_fingerprint();
    let scratch_dirs = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("azprov-live-"))
            .collect();
        v.sort();
        v
    };
    let scratch_before = scratch_dirs();
    let out = sim().args(["bench", "--live", "--runs", "2", "--warmup", "0", "--agent"]).arg(&agent).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("live (namespace sandbox)"), "{stdout}");
    assert!(stdout.contains("start → Ready"), "{stdout}");
    assert!(stdout.contains("Success, reported"), "{stdout}");
    assert!(stdout.contains("created user azureuser"), "{stdout}");
    assert!(stdout.contains("kernel"), "the live run sets the (namespaced) kernel host name: {stdout}");
    assert_eq!(host_fingerprint(), before, "the live benchmark changed the host");
    assert_eq!(scratch_dirs(), scratch_before, "scratch directory left in the temp dir");
}

/// Kills the `serve` child whatever happens.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http(addr: &str, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn pool_vm_served_from_toml_and_assigned_by_the_control_endpoint() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let vm = dir.path().join("pool.toml");
    std::fs::write(&vm, "pps_type = \"Running\"\nhostname = \"pool-1\"\n\n[customer]\nhostname = \"web-01\"\n")
        .unwrap();

    // the customer's documents, printed and written ahead
    let out = sim().args(["ovf", "--customer", "--vm"]).arg(&vm).output().unwrap();
    let xml = String::from_utf8(out.stdout).unwrap();
    assert!(xml.contains("<HostName>web-01</HostName>") && xml.contains("PreprovisionedVm>false<"), "{xml}");
    let out = sim().args(["ovf", "--vm"]).arg(&vm).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("<ns1:PreprovisionedVm>true</ns1:PreprovisionedVm>"));
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "hostname = \"x\"\n").unwrap();
    let out = sim().args(["ovf", "--customer", "--vm"]).arg(&plain).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [customer] table"));

    let mut child = Child(
        sim()
            .args(["serve", "--vm"])
            .arg(&vm)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().trim_start_matches("http://").to_string();
    let reprovision = "GET /metadata/reprovisiondata?api-version=2019-06-01 HTTP/1.1\r\nMetadata: true\r\n\r\n";
    assert!(http(&addr, reprovision).starts_with("HTTP/1.1 404"));
    let assigned = http(&addr, "POST /azprov-sim/assign HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(assigned.starts_with("HTTP/1.1 200") && assigned.contains("\"trigger\":\"control\""), "{assigned}");
    let ovf = http(&addr, reprovision);
    assert!(ovf.starts_with("HTTP/1.1 200") && ovf.contains("<HostName>web-01</HostName>"), "{ovf}");
    let status = http(&addr, "GET /azprov-sim/pps HTTP/1.1\r\n\r\n");
    assert!(status.contains("\"reprovision_served\":1"), "{status}");
}
