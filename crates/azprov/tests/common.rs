//! Harness for end-to-end tests: a sandbox root that looks like a fresh Azure VM, the platform simulator on
//! loopback, and the real `azprov` binary run with `--root`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use azprov_sim::dvd::{self, UdfLayout};
use azprov_sim::faults::Faults;
use azprov_sim::sandbox::{self, SandboxSpec};
use azprov_sim::server::{HealthReport, Simulator};
use azprov_sim::vm::VmDefinition;

/// How the provisioning DVD is made.
#[derive(Clone)]
pub enum Dvd {
    Udf102,
    Udf250,
    Iso,
    /// `genisoimage -udf` (another tool's UDF writer).
    Genisoimage,
    /// This exact image.
    Bytes(Vec<u8>),
    /// A drive without a disc.
    EmptyDrive,
    /// No CD-ROM drive at all.
    None,
}

pub const TEST_CONFIG: &str = r#"
[platform]
imds_deadline_secs = 5
wireserver_deadline_secs = 8
connect_timeout_secs = 1
imds_read_timeout_secs = 1
wireserver_read_timeout_secs = 1
detect_timeout_ms = 300

[media]
wait_secs = 1

# ssh-keygen -A costs about a second of CPU per run: enabled only by the tests about host keys
[duties.host_keys]
enabled = false
"#;

/// True when the tests can create users in a sandbox (useradd --root chroots: root only).
pub fn can_run_as_root(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (useradd --root chroots into the sandbox)");
    false
}

pub fn ovf_xml(vm: &VmDefinition) -> String {
    azprov_sim::ovf::ovf_env_xml(vm)
}

pub fn dvd_bytes(vm: &VmDefinition, kind: &Dvd) -> Option<Vec<u8>> {
    let xml = ovf_xml(vm);
    let files: [(&str, &[u8]); 1] = [("ovf-env.xml", xml.as_bytes())];
    match kind {
        Dvd::Udf102 => Some(dvd::udf_image(&files, "rd_rdfe_stable.test", UdfLayout::V102)),
        Dvd::Udf250 => Some(dvd::udf_image(&files, "rd_rdfe_stable.test", UdfLayout::V250)),
        Dvd::Iso => Some(dvd::iso9660_image(&files, "rd_rdfe_stable", true)),
        Dvd::Genisoimage => Some(genisoimage_udf(xml.as_bytes())),
        Dvd::Bytes(b) => Some(b.clone()),
        Dvd::EmptyDrive | Dvd::None => None,
    }
}

/// A UDF image made by genisoimage (the tool the peers' tests use).
pub fn genisoimage_udf(ovf: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    std::fs::write(src.join("ovf-env.xml"), ovf).expect("write");
    let img = dir.path().join("dvd.iso");
    let st = Command::new("genisoimage")
        .args(["-quiet", "-udf", "-J", "-R", "-V", "rd_rdfe_stable.genisoimage", "-o"])
        .arg(&img)
        .arg(&src)
        .status()
        .expect("genisoimage must be installed (.ci/run installs it)");
    assert!(st.success());
    std::fs::read(img).expect("read image")
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    pub config: PathBuf,
}

impl Env {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel.trim_start_matches('/'))
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
    pub fn mode(&self, rel: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(self.path(rel))
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
    /// `azprov provision --root <root> --config <test config> <extra…>` against the simulator.
    pub fn provision(&self, extra: &[&str]) -> Output {
        self.azprov(&["provision"], extra)
    }
    pub fn azprov(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let url = self.sim.url();
        self.azprov_with(cmd, extra, &url, &url)
    }
    /// `azprov provision` with explicit endpoint URLs (another simulator, or a closed port).
    pub fn provision_with(&self, imds_url: &str, wireserver_url: &str) -> Output {
        self.azprov_with(&["provision"], &[], imds_url, wireserver_url)
    }
    fn azprov_with(&self, cmd: &[&str], extra: &[&str], imds_url: &str, wireserver_url: &str) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_azprov"))
            .args(cmd)
            .arg("--root")
            .arg(self.root())
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AZPROV_IMDS_URL", imds_url)
            .env("AZPROV_WIRESERVER_URL", wireserver_url)
            .env("AZPROV_LOG", "debug")
            .output()
            .expect("run azprov");
        eprintln!("--- azprov {cmd:?} exit {:?}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
        out
    }
    pub fn last_report(&self) -> HealthReport {
        self.sim.health_reports().last().cloned().expect("a health report")
    }
    /// `PROVISIONING_REPORT` values written to the KVP pool.
    pub fn kvp_reports(&self) -> Vec<String> {
        let pool = std::fs::read(self.path("/var/lib/hyperv/.kvp_pool_1")).unwrap_or_default();
        azprov::platform::kvp::parse_pool(&pool)
            .into_iter()
            .filter(|(k, _)| k == "PROVISIONING_REPORT")
            .map(|(_, v)| v)
            .collect()
    }
    pub fn status_json(&self) -> serde_json::Value {
        let out = self.azprov(&["status", "--json"], &[]);
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

pub fn setup(vm: VmDefinition, faults: Faults, dvd: Dvd) -> Env {
    setup_with(vm, faults, dvd, "", true)
}

pub fn setup_with(vm: VmDefinition, faults: Faults, dvd: Dvd, extra_config: &str, azure: bool) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dvd_bytes(&vm, &dvd);
    let uuid = vm.product_uuid();
    let spec = SandboxSpec {
        product_uuid: &uuid,
        gen2: vm.gen2,
        azure,
        dvd: image.as_deref(),
        empty_drive: matches!(dvd, Dvd::EmptyDrive),
    };
    sandbox::prepare(&dir.path().join("root"), &spec).expect("sandbox");
    // base test settings in the image's main file, the case's overrides as a drop-in (read later, so they win),
    // and a host --config file read last
    let etc = dir.path().join("root/etc/azprov");
    std::fs::create_dir_all(etc.join("azprov.toml.d")).expect("config dir");
    std::fs::write(etc.join("azprov.toml"), TEST_CONFIG).expect("config");
    if !extra_config.is_empty() {
        std::fs::write(etc.join("azprov.toml.d/50-test.toml"), extra_config).expect("drop-in");
    }
    let config = dir.path().join("host.toml");
    std::fs::write(&config, "# host-side --config file: read after the image's files\n").expect("config");
    let sim = Simulator::start(vm, faults).expect("simulator");
    Env { dir, sim, config }
}

pub fn exit_code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn assert_failed_with(env: &Env, out: &Output, reason: &str) {
    assert_eq!(exit_code(out), 1, "exit code");
    let r = env.last_report();
    assert_eq!(r.state, "NotReady");
    assert_eq!(r.sub_status.as_deref(), Some("ProvisioningFailed"));
    let d = r.description.unwrap_or_default();
    // the reason field as the encoded description quotes it (`'` doubled, field quoted)
    let field = format!("reason={reason}");
    let field = if field.contains(['|', '\'', '\r', '\n']) { format!("'{}", field.replace('\'', "''")) } else { field };
    assert!(d.starts_with(&format!("result=error|{field}")), "description: {d}");
    assert!(d.ends_with("|documentation_url=https://aka.ms/linuxprovisioningerror"), "{d}");
    assert!(!env.sim.ready_reported(), "never Ready after a failure");
    let kvp = env.kvp_reports();
    assert!(kvp.last().is_some_and(|v| v.contains(&field)), "kvp: {kvp:?}");
}

pub fn file_exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A file under `../shared/fixtures` (read in place). `None` with a printed reason when absent, unless
/// `AZPROV_REQUIRE_SHARED=1`, which makes a missing directory fatal.
pub fn fixture(rel: &str) -> Option<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    if !dir.is_dir() {
        if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
            panic!("AZPROV_REQUIRE_SHARED=1 but {} does not exist", dir.display());
        }
        eprintln!("skipping: {} is absent", dir.display());
        return None;
    }
    Some(std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("fixture {rel}: {e}")))
}

/// `http://127.0.0.1:<port>` where nothing listens.
pub fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}
