//! Helpers for unit tests: locating `../shared/fixtures` (read in place, never copied).

use std::path::PathBuf;

/// The shared fixtures directory (`<repo>/../shared/fixtures`). `None` (with a printed reason) when it is absent,
/// unless `AZPROV_REQUIRE_SHARED=1`, in which case a missing directory fails the test.
pub fn shared_fixtures() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("AZPROV_REQUIRE_SHARED=1 but {} does not exist", dir.display());
    }
    eprintln!("skipping: {} is absent (set AZPROV_REQUIRE_SHARED=1 to make this fatal)", dir.display());
    None
}

/// Read one fixture file, e.g. `fixture("ovf/walinuxagent-ovf-env.xml")`; `None` when the fixtures are absent.
pub fn fixture(rel: &str) -> Option<Vec<u8>> {
    let dir = shared_fixtures()?;
    Some(std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}")))
}

/// Everything logged (any level, no colours) while `f` runs on this thread, to check what reaches the journal.
pub fn capture_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    use std::sync::{Arc, Mutex};
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || w.clone())
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (out, text)
}

/// A recording system over a fresh sandbox root holding `files` (target path, text).
pub fn sandbox(files: &[(&str, &str)]) -> (tempfile::TempDir, crate::system::record::RecordingSystem) {
    let d = tempfile::tempdir().expect("tempdir");
    for (p, text) in files {
        let host = d.path().join(p.trim_start_matches('/'));
        std::fs::create_dir_all(host.parent().expect("parent")).expect("mkdir");
        std::fs::write(host, text).expect("write");
    }
    let sys = crate::system::record::RecordingSystem::new(d.path());
    (d, sys)
}

/// Run a command (argv) and assert it succeeded: network namespace set-up in the live tests.
pub fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0]).args(&args[1..]).output().expect("spawn");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A DHCP server for the live tests: dnsmasq in the network namespace `netns` on `iface`, leasing
/// 10.99.0.50–60/24, logging every DHCP message to `dir/dnsmasq.log`, killed when dropped.
pub struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    pub fn start(netns: &str, iface: &str, dir: &std::path::Path) -> Dnsmasq {
        let f = |n: &str| dir.join(n).display().to_string();
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
            .arg(format!("--interface={iface}"))
            .args(["--bind-interfaces", "--dhcp-range=10.99.0.50,10.99.0.60,255.255.255.0,1h"])
            .args(["--log-dhcp", "--user=root"])
            .arg(format!("--log-facility={}", f("dnsmasq.log")))
            .arg(format!("--dhcp-leasefile={}", f("dnsmasq.leases")))
            .arg(format!("--pid-file={}", f("dnsmasq.pid")))
            .spawn()
            .expect("dnsmasq");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This process's `net mnt uts pid` namespace ids, to prove a child runs in fresh ones.
pub fn namespace_ids() -> String {
    ["net", "mnt", "uts", "pid"]
        .iter()
        .map(|n| std::fs::read_link(format!("/proc/self/ns/{n}")).map(|p| p.display().to_string()).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Re-run the unit test `test_path` (e.g. `duties::pps_network::tests::x`) inside `unshare --pid --net --mount
/// --uts`: links, namespaces, `/run` (a tmpfs) and every process started (they die with the pid namespace) stay
/// there. `child_env` tells the child it is the child (and carries our namespace ids); the child prints
/// `ok_marker` when its checks ran. `None` (with a printed reason) when skipped: not root, a tool missing, or no
/// namespaces to be had; with `AZPROV_REQUIRE_SHARED=1` a missing `tools` entry fails instead.
pub fn rerun_in_namespaces(
    test_path: &str,
    child_env: &str,
    tools: &[&str],
    env: &[(&str, String)],
    ok_marker: &str,
) -> Option<String> {
    use crate::system::System as _;
    let name = test_path.rsplit("::").next().unwrap_or(test_path);
    let required = std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1");
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping {name}: needs root for namespaces");
        return None;
    }
    let host = crate::system::RealSystem::new("/");
    for prog in ["unshare", "ip", "mount"].iter().chain(tools) {
        if !host.has_program(prog) {
            // .ci/run installs the tools (dnsmasq-base, isc-dhcp-client)
            assert!(!required || !tools.contains(prog), "{name}: {prog} is not installed (AZPROV_REQUIRE_SHARED=1)");
            eprintln!("skipping {name}: {prog} is not installed");
            return None;
        }
    }
    let exe = std::env::current_exe().expect("test executable");
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--net", "--mount", "--uts", "--kill-child", "--"])
        .arg(exe)
        .args(["--exact", test_path, "--nocapture", "--test-threads=1"])
        .env(child_env, namespace_ids());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("unshare");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && text.contains("azprov-netns-unavailable") && !required {
        eprintln!("skipping {name}: {text}");
        return None;
    }
    assert!(out.status.success(), "{text}\n--- the child's failure, in short ---\n{}", panic_summary(&text));
    assert!(text.contains(ok_marker), "the child did not run the checks:\n{text}");
    Some(text)
}

/// The child's panic lines with the message after each (up to its backtrace), so that the end of a long failure
/// output (all a CI log may keep) still says what failed.
fn panic_summary(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.contains("panicked at") {
            out.push(line);
            out.extend(
                lines.by_ref().take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note:")).take(12),
            );
        }
    }
    if out.is_empty() {
        text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        out.join("\n")
    }
}

/// In the child of [`rerun_in_namespaces`]: refuse unless in namespaces other than the parent's, make every mount
/// private, mount a tmpfs on `/run` and bring `lo` up. False (after printing why) when that cannot be had.
pub fn enter_child_namespaces(child_env: &str) -> bool {
    let parent = std::env::var(child_env).unwrap_or_default();
    let own = namespace_ids();
    assert!(!parent.is_empty(), "no parent namespaces; refusing");
    assert!(own.split(' ').zip(parent.split(' ')).all(|(a, b)| a != b), "not in fresh namespaces: {own} vs {parent}");
    let private = std::process::Command::new("mount").args(["--make-rprivate", "/"]).status();
    let run = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs", "/run"]).status();
    if !matches!(private, Ok(s) if s.success()) || !matches!(run, Ok(s) if s.success()) {
        println!("azprov-netns-unavailable: cannot mount a private /run");
        return false;
    }
    sh(&["ip", "link", "set", "lo", "up"]);
    true
}
