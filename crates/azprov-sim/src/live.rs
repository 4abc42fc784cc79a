//! `azprov-sim bench --live`: measure a LIVE agent run (root `/`) inside a throwaway namespace sandbox.
//!
//! The outer process re-executes `azprov-sim __live-bench …` under
//! `unshare --mount --uts --net --fork --propagation private`. The inner process
//! 1. refuses to go on unless its mount, UTS and network namespaces all differ from the outer process's,
//! 2. makes every mount private (nothing propagates back to the host), brings up `lo` (the only interface),
//! 3. mounts a tmpfs over the scratch directory and replaces `/sys/class` and `/sys/firmware` by bind mounts of
//!    fake trees (DMI identity with the Azure asset tag, no CD-ROM drive: the agent goes on with IMDS alone),
//!    and `/proc/sys/dev/cdrom/info` (when present) by `/dev/null`,
//! 4. per run: fresh overlays over `/etc`, `/home` and `/var` (upper/work dirs on the scratch tmpfs; image files
//!    the host lacks — `sshd_config`, `sudoers` — seeded into the upper layer only), a fresh tmpfs on `/run`,
//!    the original host name restored (UTS namespace), the simulator started in this network namespace on
//!    127.0.0.1, then `azprov provision` with a clean environment; everything is unmounted afterwards.
//!
//! Nothing of the real machine changes: all writes land in tmpfs-backed overlay layers that vanish with the
//! namespace, and `sethostname` only affects the private UTS namespace.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::agent::{self, Sandbox};
use crate::bench::{self, Samples};
use crate::sandbox::{self, SandboxSpec};
use crate::vm::VmDefinition;

/// The hidden subcommand the outer process re-executes itself with.
pub const INNER_SUBCOMMAND: &str = "__live-bench";

pub const MODE_LABEL: &str = "live (namespace sandbox)";

pub(crate) const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const NAMESPACES: [&str; 3] = ["mnt", "uts", "net"];
/// The directories the agent writes to, each covered by an overlay.
const OVERLAID: [&str; 3] = ["/etc", "/home", "/var"];

pub struct LiveOptions {
    pub agent: Option<PathBuf>,
    pub runs: usize,
    pub warmup: usize,
    /// The azprov-sim executable to re-execute (normally `std::env::current_exe()`).
    pub sim_exe: PathBuf,
}

/// What the inner process gets from the outer one.
pub struct InnerOptions {
    pub agent: PathBuf,
    pub runs: usize,
    pub warmup: usize,
    /// A host directory (empty) the inner process mounts a tmpfs over.
    pub scratch: PathBuf,
    /// The outer process's namespace ids, `mnt:[…],uts:[…],net:[…]`.
    pub host_ns: String,
}

/// `mnt:[4026531840],uts:[…],net:[…]` of this process.
pub fn namespace_ids() -> Result<String, String> {
    namespace_ids_of(&NAMESPACES)
}

/// The ids of the namespaces `names` (`mnt`, `uts`, `net`, `pid`…) of this process, `mnt:[…],uts:[…]`.
pub fn namespace_ids_of(names: &[&str]) -> Result<String, String> {
    let mut v = Vec::new();
    for ns in names {
        let link = fs::read_link(format!("/proc/self/ns/{ns}")).map_err(|e| format!("/proc/self/ns/{ns}: {e}"))?;
        v.push(link.display().to_string());
    }
    Ok(v.join(","))
}

/// Outer side: re-execute under `unshare`, relay the inner report. Not root, or no `unshare`: a clear skip message.
pub fn run(opts: LiveOptions, out: &mut dyn Write) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let _ = writeln!(
            out,
            "live benchmark skipped: it needs root (mount, UTS and network namespaces, overlay mounts); \
             run `sudo azprov-sim bench --live` or use the sandbox benchmark"
        );
        return Ok(());
    }
    let agent = agent::find_agent(opts.agent.as_deref())?;
    let agent = agent.canonicalize().map_err(|e| format!("{}: {e}", agent.display()))?;
    let host_ns = namespace_ids()?;
    let scratch = agent::fresh_dir("azprov-live").map_err(|e| e.to_string())?;
    let _guard = Sandbox { root: scratch.clone(), keep: false };
    let res = Command::new("unshare")
        .args(["--mount", "--uts", "--net", "--fork", "--propagation", "private", "--"])
        .arg(&opts.sim_exe)
        .arg(INNER_SUBCOMMAND)
        .arg("--agent")
        .arg(&agent)
        .arg("--runs")
        .arg(opts.runs.to_string())
        .arg("--warmup")
        .arg(opts.warmup.to_string())
        .arg("--scratch")
        .arg(&scratch)
        .arg("--host-ns")
        .arg(&host_ns)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir("/")
        .stdin(Stdio::null())
        .output();
    let output = match res {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = writeln!(out, "live benchmark skipped: util-linux `unshare` is not installed");
            return Ok(());
        }
        Err(e) => return Err(format!("cannot run unshare: {e}")),
    };
    let _ = out.write_all(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the live namespace benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("NUL in {s:?}"))
}

pub(crate) fn mount(
    src: &str,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), String> {
    let src_c = cstr(src)?;
    let target_c = cstr(&target.display().to_string())?;
    let fs_c = fstype.map(cstr).transpose()?;
    let data_c = data.map(cstr).transpose()?;
    // SAFETY: every pointer is a valid NUL-terminated string or null, alive for the call.
    let r = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fs_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            flags,
            data_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr() as *const libc::c_void),
        )
    };
    if r != 0 {
        return Err(format!(
            "mount {src} on {} ({}): {}",
            target.display(),
            fstype.unwrap_or("bind"),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

pub(crate) fn umount(target: &Path) -> Result<(), String> {
    let c = cstr(&target.display().to_string())?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    // still busy (a straggling child): detach; it is private to this namespace either way
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    Err(format!("umount {}: {}", target.display(), std::io::Error::last_os_error()))
}

pub(crate) fn hostname() -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } != 0 {
        return Err(format!("gethostname: {}", std::io::Error::last_os_error()));
    }
    let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(buf[..n].to_vec())
}

pub(crate) fn set_hostname(name: &[u8]) -> Result<(), String> {
    // SAFETY: pointer and length describe `name`.
    if unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) } != 0 {
        return Err(format!("sethostname: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Refuse to touch anything unless all three namespaces are new.
fn check_namespaces(host_ns: &str) -> Result<(), String> {
    check_namespaces_of(host_ns, &NAMESPACES)
}

/// Refuse to touch anything unless every namespace of `names` differs from the outer process's (`host_ns`, from
/// [`namespace_ids_of`] with the same names).
pub(crate) fn check_namespaces_of(host_ns: &str, names: &[&str]) -> Result<(), String> {
    let here = namespace_ids_of(names)?;
    let host: Vec<&str> = host_ns.split(',').collect();
    if host.len() != names.len() {
        return Err(format!("bad --host-ns {host_ns:?}"));
    }
    for (h, o) in here.split(',').zip(host) {
        if h == o {
            return Err(format!("refusing to mount anything: still in the host's {h} namespace"));
        }
    }
    Ok(())
}

pub(crate) fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let e = |e: std::io::Error| format!("{}: {e}", path.display());
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(e)?;
    }
    fs::write(path, data).map_err(e)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(e)
}

pub(crate) fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    let e = |e: std::io::Error| format!("{}: {e}", path.display());
    fs::create_dir_all(path).map_err(e)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(e)
}

/// One run's mounts; unmounted (reverse order) and their layers removed on drop.
pub(crate) struct RunMounts {
    pub(crate) dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Drop for RunMounts {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            if let Err(e) = umount(m) {
                eprintln!("azprov-sim: {e}");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Image files a fresh Azure image has and this host may lack: seeded into the `/etc` upper layer (only).
fn seed_etc(upper: &Path) -> Result<(), String> {
    if !Path::new("/etc/ssh/sshd_config").exists() {
        write(&upper.join("ssh/sshd_config"), sandbox::SSHD_CONFIG.as_bytes(), 0o644)?;
    }
    if !Path::new("/etc/ssh/sshd_config.d").exists() {
        mkdir(&upper.join("ssh/sshd_config.d"), 0o755)?;
    }
    if !Path::new("/etc/sudoers").exists() {
        write(&upper.join("sudoers"), sandbox::SUDOERS.as_bytes(), 0o440)?;
    }
    if !Path::new("/etc/sudoers.d").exists() {
        mkdir(&upper.join("sudoers.d"), 0o750)?;
    }
    if !Path::new("/etc/login.defs").exists() {
        write(&upper.join("login.defs"), sandbox::LOGIN_DEFS.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Fresh overlays over /etc, /home, /var and a tmpfs on /run.
pub(crate) fn mount_run(scratch: &Path, i: usize) -> Result<RunMounts, String> {
    let dir = scratch.join(format!("run-{i}"));
    let mut m = RunMounts { dir: dir.clone(), mounted: Vec::new() };
    for target in OVERLAID {
        let name = target.trim_start_matches('/');
        let (upper, work) = (dir.join(name).join("upper"), dir.join(name).join("work"));
        mkdir(&upper, 0o755)?;
        mkdir(&work, 0o755)?;
        if target == "/etc" {
            seed_etc(&upper)?;
        }
        let opts = format!("lowerdir={target},upperdir={},workdir={}", upper.display(), work.display());
        mount("overlay", Path::new(target), Some("overlay"), 0, Some(&opts))?;
        m.mounted.push(PathBuf::from(target));
    }
    mount("tmpfs", Path::new("/run"), Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0755"))?;
    m.mounted.push(PathBuf::from("/run"));
    Ok(m)
}

/// Inside checked private namespaces: makes every mount private, brings `lo` up, mounts a tmpfs on `scratch` and
/// gives the machine `vm`'s identity: fake `/sys/class` (DMI + a non-CD-ROM disk, no drive) and `/sys/firmware`
/// (efi when gen2), `/proc/sys/dev/cdrom/info` hidden. `net_class`: first a fresh sysfs of this network namespace
/// on `/sys`, its `class/net` kept visible in the fake `/sys/class` (the namespace's own links, as on a VM).
pub(crate) fn isolate(scratch: &Path, vm: &VmDefinition, net_class: bool) -> Result<(), String> {
    // nothing mounted from here on may propagate to the host, whatever unshare did
    mount("none", Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let lo = Command::new("ip").args(["link", "set", "lo", "up"]).output().map_err(|e| format!("ip: {e}"))?;
    if !lo.status.success() {
        return Err(format!("ip link set lo up: {}", String::from_utf8_lossy(&lo.stderr).trim()));
    }
    mount("tmpfs", scratch, Some("tmpfs"), libc::MS_NOSUID | libc::MS_NODEV, Some("mode=0700"))?;

    let ident = scratch.join("identity");
    let uuid = vm.product_uuid();
    let spec = SandboxSpec { product_uuid: &uuid, gen2: vm.gen2, azure: true, dvd: None, empty_drive: false };
    sandbox::prepare(&ident, &spec).map_err(|e| format!("{}: {e}", ident.display()))?;
    mkdir(&ident.join("sys/firmware"), 0o755)?;
    if net_class {
        // a sysfs mounted in this network namespace shows its links (class/net and devices/virtual/net)
        mount("sysfs", Path::new("/sys"), Some("sysfs"), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, None)?;
        let net = scratch.join("sysfs-net");
        mkdir(&net, 0o755)?;
        mount("/sys/class/net", &net, None, libc::MS_BIND, None)?;
        mkdir(&ident.join("sys/class/net"), 0o755)?;
        mount(&net.display().to_string(), &ident.join("sys/class/net"), None, libc::MS_BIND, None)?;
    }
    let rec = if net_class { libc::MS_REC } else { 0 };
    mount(&ident.join("sys/class").display().to_string(), Path::new("/sys/class"), None, libc::MS_BIND | rec, None)?;
    mount(&ident.join("sys/firmware").display().to_string(), Path::new("/sys/firmware"), None, libc::MS_BIND, None)?;
    if Path::new("/proc/sys/dev/cdrom/info").exists() {
        mount("/dev/null", Path::new("/proc/sys/dev/cdrom/info"), None, libc::MS_BIND, None)?;
    }
    Ok(())
}

/// Inner side: runs inside the new namespaces (see the module comment).
pub fn inner(opts: InnerOptions, out: &mut dyn Write) -> Result<(), String> {
    check_namespaces(&opts.host_ns)?;
    let vm = VmDefinition::default();
    isolate(&opts.scratch, &vm, false)?;
    let scratch = &opts.scratch;

    let original_hostname = hostname()?;
    let mut samples = Samples::default();
    let mut steps = String::new();
    for i in 0..opts.warmup + opts.runs {
        set_hostname(&original_hostname)?;
        let mounts = mount_run(scratch, i)?;
        let sim = agent::start_simulator(&vm).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&opts.agent);
        cmd.arg("provision")
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("AZPROV_IMDS_URL", sim.url())
            .env("AZPROV_WIRESERVER_URL", sim.url())
            .env("AZPROV_LOG", "warn")
            .current_dir("/")
            .stdin(Stdio::null());
        let (ready, u) = bench::measured_run(i, cmd, &sim, &mounts.dir.join("agent.log"))?;
        // proof that the run was live: the admin user went into the overlay's /etc/passwd
        let passwd = fs::read_to_string(mounts.dir.join("etc/upper/passwd")).unwrap_or_default();
        if !passwd.lines().any(|l| l.starts_with(&format!("{}:", vm.username))) {
            return Err(format!("run {i}: Ready, but {} is not in the overlay's /etc/passwd", vm.username));
        }
        if i + 1 == opts.warmup + opts.runs {
            steps = bench::last_run_steps(&opts.agent, None);
        }
        drop(sim);
        drop(mounts);
        if i >= opts.warmup {
            samples.push(ready, &u);
        }
    }
    set_hostname(&original_hostname)?;
    bench::print_report(out, MODE_LABEL, &opts.agent, opts.runs, opts.warmup, &mut samples, &steps);
    Ok(())
}
