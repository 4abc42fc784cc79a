//! Running the `azprov` agent binary against a simulator on a fresh sandbox root — shared by `demo` and `bench`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::dvd::{self, UdfLayout};
use crate::faults::Faults;
use crate::sandbox::{self, SandboxSpec};
use crate::server::Simulator;
use crate::vm::VmDefinition;

/// The DVD label the platform uses (prefix `rd_rdfe_stable`).
pub const MEDIA_LABEL: &str = "rd_rdfe_stable.240701-1523";

/// Find the agent: an explicit path, else `azprov` next to this executable, else on `PATH`.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(format!("{} does not exist", p.display())) };
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let sibling = dir.join("azprov");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join("azprov")).find(|p| p.is_file()).ok_or_else(|| {
        "the azprov binary was not found: build the workspace (cargo build --release) or pass --agent".into()
    })
}

/// A sandbox directory that is removed on drop unless `keep` is set.
pub struct Sandbox {
    pub root: PathBuf,
    pub keep: bool,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// A fresh directory under the system temp dir.
pub fn fresh_dir(prefix: &str) -> std::io::Result<PathBuf> {
    let mut b = [0u8; 6];
    getrandom::getrandom(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("{prefix}-{name}"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Build the VM's DVD and a sandbox root around it.
pub fn prepare_sandbox(vm: &VmDefinition, root: &Path, layout: UdfLayout) -> std::io::Result<()> {
    let xml = crate::ovf::ovf_env_xml(vm);
    let image = (!vm.specialized).then(|| dvd::udf_image(&[("ovf-env.xml", xml.as_bytes())], MEDIA_LABEL, layout));
    let uuid = vm.product_uuid();
    let spec =
        SandboxSpec { product_uuid: &uuid, gen2: vm.gen2, azure: true, dvd: image.as_deref(), empty_drive: false };
    sandbox::prepare(root, &spec)
}

/// `azprov provision --root <root>` with the simulator's URLs in a clean environment.
pub fn agent_command(agent: &Path, root: &Path, sim: &Simulator, log_level: &str) -> Command {
    let mut cmd = Command::new(agent);
    cmd.args(["provision", "--root"])
        .arg(root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
        .env("AZPROV_IMDS_URL", sim.url())
        .env("AZPROV_WIRESERVER_URL", sim.url())
        .env("AZPROV_LOG", log_level)
        .stdin(Stdio::null());
    cmd
}

/// Resource use of one finished child process.
#[derive(Debug, Clone, Copy)]
pub struct ChildUsage {
    pub exit_code: Option<i32>,
    pub wall: Duration,
    /// user + system CPU of the child and the children it waited for.
    pub cpu: Duration,
    /// `ru_maxrss` of the child's process tree (largest process), KiB.
    pub tree_maxrss_kib: u64,
    /// The agent process's own VmHWM, sampled from /proc until it exited, KiB.
    pub agent_hwm_kib: u64,
}

fn hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Spawn `cmd` and wait for it with `wait4`, sampling its VmHWM meanwhile.
pub fn run_measured(mut cmd: Command) -> std::io::Result<(ChildUsage, Instant)> {
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut hwm = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(v) = hwm_kib(pid) {
                    hwm = hwm.max(v);
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            hwm
        })
    };
    let mut status: libc::c_int = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let agent_hwm_kib = sampler.join().unwrap_or(0);
    drop(child);
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let exit_code = if libc::WIFEXITED(status) { Some(libc::WEXITSTATUS(status)) } else { None };
    Ok((
        ChildUsage {
            exit_code,
            wall,
            cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
            tree_maxrss_kib: ru.ru_maxrss as u64,
            agent_hwm_kib,
        },
        start,
    ))
}

/// Faults-free simulator for a VM.
pub fn start_simulator(vm: &VmDefinition) -> std::io::Result<Simulator> {
    Simulator::start(vm.clone(), Faults::none())
}
