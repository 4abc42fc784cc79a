//! `azprov-sim pps-live`: a LIVE pre-provisioned VM (platform.md §10) — the real agent, root `/`, real netlink
//! signals — inside a throwaway namespace sandbox.
//!
//! The outer process re-executes an inner one (`azprov-sim __pps-live`, or a test binary) under
//! `unshare --mount --uts --net --pid --fork --mount-proc --propagation private`, with its options in the environment
//! ([`OPTIONS_ENV`]). The inner process
//! 1. refuses to go on unless its mount, UTS, network and PID namespaces all differ from the outer process's,
//! 2. isolates itself as `bench --live` does ([`crate::live`]): private mounts, `lo` up, tmpfs scratch, fake DMI
//!    sysfs — plus a sysfs of its own network namespace, so `/sys/class/net` shows the namespace's links —, fresh
//!    overlays over `/etc`, `/home`, `/var` and a tmpfs on `/run`; the UTS host name becomes the pool's,
//! 3. makes the pool VM's NIC ([`crate::links::PoolNic`]): `eth0`, carrying the MAC IMDS reports, a veth whose peer
//!    is a port of a bridge in a host-side namespace of its own (named in the private `/run`), where `dnsmasq`
//!    serves DHCP on 10.99.0.0/24 (when dnsmasq and dhclient are installed; Savable needs them),
//! 4. gives `eth0` its pool lease with `dhclient`, as the image's DHCP client would, through a `dhclient` wrapper
//!    first on the agent's `PATH` that only ever runs the real one with this sandbox's script (`ip addr` on the
//!    interface, nothing else: none of the image's hooks) and configuration; without DHCP (`--no-dhcp`, or dnsmasq
//!    missing: Running only) the image's `dhclient` is hidden under a `/dev/null` bind mount instead (`dhcpcd`
//!    always),
//! 5. starts the simulator on 127.0.0.1 with a pool VM (`Running` or `Savable`) whose customer is `web-01`/`alice`,
//!    assigned 300 ms after the intermediate Ready; the assign hook makes the signal: Running takes the host side
//!    of the link down and up, Savable deletes `eth0` and hot-attaches `eth1` (the customer's MAC),
//! 6. runs `azprov provision` live with bounded `[pps]` waits (a drop-in in the `/etc` overlay) and the simulator's
//!    URLs, then checks the run ([`Summary::checks`]) and prints the [`Summary`] as one JSON line after
//!    [`SUMMARY_MARK`].
//!
//! Nothing of the real machine changes: writes land in tmpfs-backed layers, the links, addresses and the DHCP
//! server exist only in the new network namespaces (no address outside them but the loopback's), the host name only
//! in the new UTS namespace, and every process started inside dies with the PID namespace.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent::{self, Sandbox};
use crate::faults::Faults;
use crate::links::{self, NicSpec, PoolNic, SignalOptions};
use crate::live::{self, SAFE_PATH};
use crate::server::Simulator;
use crate::vm::VmDefinition;

/// The hidden subcommand the outer process re-executes `azprov-sim` with.
pub const INNER_SUBCOMMAND: &str = "__pps-live";
/// The inner process's options, JSON ([`InnerOptions`]).
pub const OPTIONS_ENV: &str = "AZPROV_SIM_PPS_LIVE";
/// Prefix of the inner process's summary line on its stdout.
pub const SUMMARY_MARK: &str = "azprov-sim-pps-live-summary: ";

const NAMESPACES: [&str; 4] = ["mnt", "uts", "net", "pid"];
const HOST_NS: &str = "azpps-host";
const BRIDGE: &str = "br0";
const SERVER_ADDR: &str = "10.99.0.1/24";
const DHCP_RANGE: &str = "10.99.0.50,10.99.0.99,255.255.255.0,1h";
const POOL_IF: &str = "eth0";
const NEW_IF: &str = "eth1";
const POOL_MAC: &str = "6045BDA1B2C3";
const CUSTOMER_MAC: &str = "6045BDA1B2C4";
const POOL_HOST: &str = "pool-0042";
const CUSTOMER_HOST: &str = "web-01";
const POOL_USER: &str = "pooladmin";
const CUSTOMER_USER: &str = "alice";
/// The agent's `[pps]` waits: bounded, so a regression fails instead of hanging.
const AGENT_CONFIG: &str =
    "[pps]\nassignment_wait_secs = 30\nreprovision_wait_secs = 30\ndhcp_wait_secs = 20\nos_disk_wait_secs = 1\n";
/// The agent run is killed after this long.
const AGENT_LIMIT: Duration = Duration::from_secs(120);

/// Which pre-provisioning flow to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flow {
    Running,
    Savable,
}

impl Flow {
    pub fn pps_type(self) -> &'static str {
        match self {
            Flow::Running => "Running",
            Flow::Savable => "Savable",
        }
    }
}

/// What the outer process is asked for.
pub struct PpsLiveOptions {
    pub flow: Flow,
    /// The azprov binary; default: next to azprov-sim, then `PATH`.
    pub agent: Option<PathBuf>,
    /// No DHCP server nor client even when installed (Running only): the renewal after the bounce is skipped.
    pub no_dhcp: bool,
}

/// What the inner process gets (JSON in [`OPTIONS_ENV`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InnerOptions {
    pub flow: Flow,
    pub agent: PathBuf,
    /// A host directory (empty) the inner process mounts a tmpfs over.
    pub scratch: PathBuf,
    /// The outer process's namespace ids, `mnt:[…],uts:[…],net:[…],pid:[…]`.
    pub host_ns: String,
    /// Whether a DHCP server and client run (dnsmasq and dhclient are installed).
    pub dhcp: bool,
}

/// One check of the run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One step of the agent's status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepSeen {
    pub outcome: String,
    pub detail: String,
}

/// What the inner process saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// `success` when every check passed, else `failure`.
    pub result: String,
    pub pps_type: String,
    pub dhcp: bool,
    pub agent_exit_code: Option<i32>,
    /// Agent start → exit.
    pub agent_ms: u64,
    /// Inner process start → end (sandbox set-up included).
    pub total_ms: u64,
    /// Simulator milliseconds of the first pooled Ready and of the assignment.
    pub first_ready_ms: Option<u64>,
    pub assigned_ms: Option<u64>,
    pub intermediate_ready: bool,
    pub final_ready: bool,
    pub reprovision_served: u32,
    pub hook_error: Option<String>,
    /// The agent's `azprov status --json` (live) result and the PPS steps.
    pub status_result: String,
    pub pps_ready: Option<StepSeen>,
    pub pps_assignment: Option<StepSeen>,
    pub pps_dhcp: Option<StepSeen>,
    pub reprovision_data: Option<StepSeen>,
    /// The UTS host name after the run.
    pub hostname: String,
    pub customer_in_passwd: bool,
    pub pool_user_in_passwd: bool,
    /// `ip -o -4 addr` of the agent's namespace after the run.
    pub addresses: Vec<String>,
    /// DHCPACKs the server sent.
    pub dhcp_acks: usize,
    /// Steps of the agent's status that failed (`name: detail`); side steps fail without failing the run.
    pub failed_steps: Vec<String>,
    pub checks: Vec<Check>,
    /// The end of the agent's log, when a check failed.
    pub log_tail: Vec<String>,
}

impl Summary {
    pub fn success(&self) -> bool {
        self.result == "success"
    }

    /// A few human lines.
    pub fn human(&self) -> String {
        let mut s = format!(
            "azprov pps-live ({}, DHCP {}): {} — agent exit {:?} after {} ms (sandbox included: {} ms)\n",
            self.pps_type,
            if self.dhcp { "dnsmasq + dhclient" } else { "none" },
            self.result,
            self.agent_exit_code,
            self.agent_ms,
            self.total_ms
        );
        for c in &self.checks {
            s.push_str(&format!("  [{}] {}: {}\n", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail));
        }
        for l in &self.log_tail {
            s.push_str(&format!("  | {l}\n"));
        }
        s
    }
}

/// How the outer process ended.
#[derive(Debug)]
pub enum Launch {
    Ran(Box<Summary>),
    Skipped(String),
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| SAFE_PATH.into());
    std::env::split_paths(&path).chain(std::env::split_paths(SAFE_PATH)).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Outer side: checks the prerequisites (root, `unshare`, `ip`; `dnsmasq` and `dhclient` for Savable), then runs
/// `inner` — a command that ends in [`inner_from_env`] — under `unshare` and reads its summary.
pub fn run(opts: &PpsLiveOptions, mut inner: Command) -> Result<Launch, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Launch::Skipped("needs root (mount, UTS, network and PID namespaces, overlay mounts)".into()));
    }
    for tool in ["unshare", "ip"] {
        if on_path(tool).is_none() {
            return Ok(Launch::Skipped(format!("`{tool}` is not installed")));
        }
    }
    if opts.flow == Flow::Savable && opts.no_dhcp {
        return Err("Savable cannot run without DHCP: the hot-attached NIC needs its lease".into());
    }
    let dhcp = !opts.no_dhcp && on_path("dnsmasq").is_some() && on_path("dhclient").is_some();
    if opts.flow == Flow::Savable && !dhcp {
        return Ok(Launch::Skipped("Savable needs dnsmasq and dhclient (the hot-attached NIC's lease)".into()));
    }
    let agent = agent::find_agent(opts.agent.as_deref())?;
    let agent = agent.canonicalize().map_err(|e| format!("{}: {e}", agent.display()))?;
    let host_ns = live::namespace_ids_of(&NAMESPACES)?;
    let scratch = agent::fresh_dir("azprov-pps-live").map_err(|e| e.to_string())?;
    let _guard = Sandbox { root: scratch.clone(), keep: false };
    let io = InnerOptions { flow: opts.flow, agent, scratch, host_ns, dhcp };
    let json = serde_json::to_string(&io).map_err(|e| e.to_string())?;
    let program = inner.get_program().to_owned();
    let args: Vec<_> = inner.get_args().map(|a| a.to_owned()).collect();
    inner = Command::new("unshare");
    let res = inner
        .args(["--mount", "--uts", "--net", "--pid", "--fork", "--mount-proc", "--propagation", "private", "--"])
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env(OPTIONS_ENV, json)
        .current_dir("/")
        .stdin(Stdio::null())
        .output();
    let output = res.map_err(|e| format!("cannot run unshare: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().find_map(|l| l.split_once(SUMMARY_MARK).map(|(_, j)| j.to_string()));
    match summary {
        Some(j) => {
            let s: Summary = serde_json::from_str(&j).map_err(|e| format!("bad summary ({e}): {j}"))?;
            Ok(Launch::Ran(Box::new(s)))
        }
        None => Err(format!(
            "the namespace run gave no summary ({}):\n{}\n{}",
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// Inner side, from [`OPTIONS_ENV`]: runs the flow and prints the summary line. `Ok(None)` when the variable is not
/// set (not the inner process).
pub fn inner_from_env() -> Result<Option<Summary>, String> {
    let Ok(json) = std::env::var(OPTIONS_ENV) else { return Ok(None) };
    let opts: InnerOptions = serde_json::from_str(&json).map_err(|e| format!("{OPTIONS_ENV}: {e}"))?;
    let s = inner(&opts)?;
    let line = serde_json::to_string(&s).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{SUMMARY_MARK}{line}");
    let _ = out.flush();
    Ok(Some(s))
}

/// The pool VM and its customer.
pub fn pool_vm(flow: Flow) -> VmDefinition {
    let pool = VmDefinition {
        pps_type: flow.pps_type().into(),
        hostname: POOL_HOST.into(),
        username: POOL_USER.into(),
        mac_address: POOL_MAC.into(),
        assign_after_ready_ms: Some(300),
        ..Default::default()
    };
    // Running: the same NIC moves to the customer's network; Savable: the customer's NIC is a new one
    let customer_mac = if flow == Flow::Savable { CUSTOMER_MAC } else { POOL_MAC };
    pool.clone().with_customer(VmDefinition {
        hostname: CUSTOMER_HOST.into(),
        username: CUSTOMER_USER.into(),
        password: None,
        disable_password_authentication: true,
        mac_address: customer_mac.into(),
        assign_after_ready_ms: None,
        ..pool
    })
}

fn sh(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The DHCP side of the sandbox: dnsmasq in the host namespace, dhclient's script, configuration and wrapper.
struct Dhcp {
    server: Child,
    log: PathBuf,
    /// The directory put first on the agent's `PATH` (the `dhclient` wrapper).
    bin: PathBuf,
}

impl Drop for Dhcp {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// dhclient-script stand-in: sets and drops the address of `$interface`, nothing else (no resolv.conf, no hooks).
const DHCLIENT_SCRIPT: &str = "#!/bin/sh\ncase \"$reason\" in\n\
  BOUND|RENEW|REBIND|REBOOT) ip -4 addr flush dev \"$interface\"; ip addr add \"$new_ip_address/24\" dev \"$interface\" ;;\n\
  EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev \"$interface\" ;;\nesac\nexit 0\n";

/// The `dhclient` first on the agent's `PATH`: every dhclient runs with the sandbox's `script` (one with another
/// script is refused) and, unless it names one, the sandbox's configuration `conf`.
fn dhclient_wrapper(script: &Path, conf: &Path, real: &Path) -> String {
    format!(
        "#!/bin/sh\n# azprov-sim pps-live: dhclient only with the sandbox's script\n\
         case \" $* \" in\n  *\" -sf {s} \"*) ;;\n  *\" -sf \"*) echo \"refusing dhclient with another script: $*\" >&2; exit 99 ;;\n\
         \x20 *) set -- -sf '{s}' \"$@\" ;;\nesac\n\
         case \" $* \" in\n  *\" -cf \"*) ;;\n  *) set -- -cf '{c}' \"$@\" ;;\nesac\n\
         exec '{real}' \"$@\"\n",
        s = script.display(),
        c = conf.display(),
        real = real.display()
    )
}

fn start_dhcp(dir: &Path) -> Result<Dhcp, String> {
    live::mkdir(dir, 0o700)?;
    let real = on_path("dhclient").ok_or("dhclient is not installed")?;
    let script = dir.join("dhclient-script");
    let conf = dir.join("dhclient.conf");
    live::write(&script, DHCLIENT_SCRIPT.as_bytes(), 0o755)?;
    live::write(&conf, b"timeout 15;\ninitial-interval 1;\n", 0o644)?;
    let bin = dir.join("bin");
    live::mkdir(&bin, 0o755)?;
    let wrapper = dhclient_wrapper(&script, &conf, &real);
    live::write(&bin.join("dhclient"), wrapper.as_bytes(), 0o755)?;
    sh("ip", &["-n", HOST_NS, "addr", "add", SERVER_ADDR, "dev", BRIDGE])?;
    let log = dir.join("dnsmasq.log");
    let p = |n: &str| dir.join(n).display().to_string();
    let server = Command::new("ip")
        .args(["netns", "exec", HOST_NS, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0"])
        .arg(format!("--interface={BRIDGE}"))
        .args(["--bind-interfaces", "--log-dhcp", "--user=root", "--no-ping", "--dhcp-authoritative"])
        .arg(format!("--dhcp-range={DHCP_RANGE}"))
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!("--dhcp-leasefile={}", p("dnsmasq.leases")))
        .arg(format!("--pid-file={}", p("dnsmasq.pid")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("dnsmasq: {e}"))?;
    let mut dhcp = Dhcp { server, log, bin };
    // ready when it logs its range
    let until = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&dhcp.log).unwrap_or_default().contains("DHCP, IP range") {
        if let Ok(Some(st)) = dhcp.server.try_wait() {
            return Err(format!("dnsmasq exited ({st}): {}", fs::read_to_string(&dhcp.log).unwrap_or_default()));
        }
        if Instant::now() >= until {
            return Err("dnsmasq did not start within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(dhcp)
}

/// dhclient processes of this sandbox (their pid files are on its `/run`), with their pids.
fn sandbox_dhclients() -> Vec<u32> {
    let Ok(rd) = fs::read_dir("/run") else { return Vec::new() };
    rd.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dhclient"))
        .filter_map(|e| fs::read_to_string(e.path()).ok()?.trim().parse::<u32>().ok())
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.windows(8).any(|w| w == b"dhclient")))
        .collect()
}

fn check(checks: &mut Vec<Check>, name: &str, ok: bool, detail: impl Into<String>) {
    checks.push(Check { name: name.into(), ok, detail: detail.into() });
}

fn step(status: &serde_json::Value, name: &str) -> Option<StepSeen> {
    let steps = status.get("steps")?.as_array()?;
    steps.iter().rev().find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name)).map(|s| StepSeen {
        outcome: s.get("outcome").and_then(|o| o.as_str()).unwrap_or("").to_string(),
        detail: s.get("detail").and_then(|o| o.as_str()).unwrap_or("").to_string(),
    })
}

/// Inner side (module documentation). Errors are set-up failures; the agent's own failures are in the summary.
pub fn inner(opts: &InnerOptions) -> Result<Summary, String> {
    let started = Instant::now();
    live::check_namespaces_of(&opts.host_ns, &NAMESPACES)?;
    let vm = pool_vm(opts.flow);
    live::isolate(&opts.scratch, &vm, true)?;
    let original_hostname = live::hostname()?;
    let mounts = live::mount_run(&opts.scratch, 0)?;
    let res = run_flow(opts, &vm, &mounts.dir, started);
    live::set_hostname(&original_hostname)?;
    drop(mounts);
    res
}

fn run_flow(opts: &InnerOptions, vm: &VmDefinition, dir: &Path, started: Instant) -> Result<Summary, String> {
    live::set_hostname(POOL_HOST.as_bytes())?;
    live::write(Path::new("/etc/azprov/azprov.toml.d/99-pps-live.toml"), AGENT_CONFIG.as_bytes(), 0o644)?;
    let spec = NicSpec {
        agent_if: POOL_IF.into(),
        peer_if: format!("{POOL_IF}h"),
        host_ns: HOST_NS.into(),
        mac: POOL_MAC.into(),
        bridge: opts.dhcp.then(|| BRIDGE.to_string()),
    };
    let nic = Arc::new(Mutex::new(PoolNic::create(&opts.host_ns, spec)?));
    let dhcp = if opts.dhcp { Some(start_dhcp(&dir.join("dhcp"))?) } else { None };
    // the image's DHCP clients the sandbox does not drive are hidden (no longer regular files: the agent finds none
    // and none of the image's hook scripts ever runs): dhcpcd always, dhclient without DHCP (with DHCP the wrapper
    // first on the agent's PATH runs it with the sandbox's script)
    let hidden: &[&str] = if dhcp.is_some() { &["dhcpcd"] } else { &["dhclient", "dhcpcd"] };
    for d in std::env::split_paths(SAFE_PATH) {
        for client in hidden {
            let p = d.join(client);
            if p.is_file() {
                live::mount("/dev/null", &p, None, libc::MS_BIND, None)?;
            }
        }
    }
    let path = match &dhcp {
        Some(d) => format!("{}:{SAFE_PATH}", d.bin.display()),
        None => SAFE_PATH.to_string(),
    };
    if dhcp.is_some() {
        // the pool's lease, from the image's DHCP client (the agent renews it, or follows its configuration)
        live::mkdir(Path::new("/var/lib/dhcp"), 0o755)?;
        let pf = format!("/run/dhclient.{POOL_IF}.pid");
        let lf = format!("/var/lib/dhcp/dhclient.{POOL_IF}.leases");
        let wrapper = dhcp.as_ref().map(|d| d.bin.join("dhclient")).unwrap_or_default();
        let out = Command::new(wrapper)
            .args(["-1", "-4", "-pf", &pf, "-lf", &lf, POOL_IF])
            .env_clear()
            .env("PATH", &path)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("dhclient: {e}"))?;
        if !out.status.success() {
            return Err(format!("the pool lease: dhclient failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        // the client forked into the background and writes its pid file a moment later: the image's client is
        // running (and found by the agent through that file) only then
        let until = Instant::now() + Duration::from_secs(5);
        while sandbox_dhclients().is_empty() {
            if Instant::now() >= until {
                return Err(format!("the pool lease: no live dhclient in {pf} within 5 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let result = run_agent(opts, vm, &nic, dhcp.as_ref(), &path, dir, started);
    for pid in sandbox_dhclients() {
        // SAFETY: kill has no memory preconditions; the pid is a dhclient of this PID namespace.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    drop(dhcp);
    drop(nic);
    result
}

fn run_agent(
    opts: &InnerOptions,
    vm: &VmDefinition,
    nic: &Arc<Mutex<PoolNic>>,
    dhcp: Option<&Dhcp>,
    path: &str,
    dir: &Path,
    started: Instant,
) -> Result<Summary, String> {
    let sim = Simulator::start(vm.clone(), Faults::none()).map_err(|e| format!("simulator: {e}"))?;
    let signal = SignalOptions {
        down_for: Duration::from_millis(200),
        new_if: NEW_IF.into(),
        new_mac: CUSTOMER_MAC.into(),
        gap: Duration::from_millis(200),
    };
    sim.set_assign_hook(links::assign_hook(Arc::clone(nic), signal));
    let log = dir.join("agent.log");
    let err = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let t = Instant::now();
    let mut child = Command::new(&opts.agent)
        .arg("provision")
        .env_clear()
        .env("PATH", path)
        .env("AZPROV_IMDS_URL", sim.url())
        .env("AZPROV_WIRESERVER_URL", sim.url())
        .env("AZPROV_LOG", "info")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{}: {e}", opts.agent.display()))?;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if t.elapsed() > AGENT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let agent_ms = t.elapsed().as_millis() as u64;
    let pps = sim.pps_status();
    let out = Command::new(&opts.agent)
        .args(["status", "--json"])
        .env_clear()
        .env("PATH", path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("azprov status: {e}"))?;
    let status_json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let user = |n: &str| passwd.lines().any(|l| l.split(':').next() == Some(n));
    let hostname = String::from_utf8_lossy(&live::hostname()?).into_owned();
    let addresses: Vec<String> = sh("ip", &["-o", "-4", "addr", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{} {}", w.get(1)?, w.get(3)?))
        })
        .collect();
    let dhcp_acks = dhcp
        .map(|d| fs::read_to_string(&d.log).unwrap_or_default().lines().filter(|l| l.contains("DHCPACK(")).count())
        .unwrap_or(0);

    let mut s = Summary {
        pps_type: opts.flow.pps_type().into(),
        dhcp: dhcp.is_some(),
        agent_exit_code: status.and_then(|s| s.code()),
        agent_ms,
        first_ready_ms: pps.first_ready_ms,
        assigned_ms: pps.assignment.as_ref().map(|a| a.ms),
        intermediate_ready: pps.intermediate_ready(),
        final_ready: pps.final_ready(),
        reprovision_served: pps.reprovision_served,
        hook_error: pps.hook_error.clone(),
        status_result: status_json.get("result").and_then(|r| r.as_str()).unwrap_or("").to_string(),
        pps_ready: step(&status_json, "pps_ready"),
        pps_assignment: step(&status_json, "pps_assignment"),
        pps_dhcp: step(&status_json, "pps_dhcp"),
        reprovision_data: step(&status_json, "reprovision_data"),
        hostname,
        customer_in_passwd: user(CUSTOMER_USER),
        pool_user_in_passwd: user(POOL_USER),
        addresses,
        dhcp_acks,
        ..Default::default()
    };
    let mut c = Vec::new();
    check(&mut c, "agent_exit", s.agent_exit_code == Some(0), format!("{:?} after {agent_ms} ms", s.agent_exit_code));
    check(
        &mut c,
        "intermediate_ready",
        s.intermediate_ready && pps.pool_health.iter().any(|h| h.state == "Ready"),
        format!("pool phase health: {:?}", pps.pool_health.iter().map(|h| &h.state).collect::<Vec<_>>()),
    );
    check(
        &mut c,
        "assigned_after_ready",
        matches!((s.first_ready_ms, s.assigned_ms), (Some(r), Some(a)) if r <= a) && s.hook_error.is_none(),
        format!(
            "first pooled Ready at {:?} ms, assigned at {:?} ms, hook error {:?}",
            s.first_ready_ms, s.assigned_ms, s.hook_error
        ),
    );
    check(
        &mut c,
        "final_ready",
        s.final_ready,
        format!("customer phase health: {:?}", pps.customer_health.iter().map(|h| &h.state).collect::<Vec<_>>()),
    );
    check(&mut c, "reprovision_served", s.reprovision_served == 1, s.reprovision_served.to_string());
    check(&mut c, "status_result", s.status_result == "success", s.status_result.clone());
    let assignment = s.pps_assignment.clone().unwrap_or(StepSeen { outcome: "absent".into(), detail: String::new() });
    let signal_ok = assignment.outcome == "done"
        && match opts.flow {
            Flow::Running => {
                assignment.detail.starts_with(&format!("{POOL_IF} went down ("))
                    && assignment.detail.contains("came up")
            }
            Flow::Savable => {
                assignment.detail.starts_with(&format!("{POOL_IF} detached; hot-attached: {NEW_IF} (10.99.0."))
            }
        };
    check(&mut c, "pps_assignment", signal_ok, format!("{}: {}", assignment.outcome, assignment.detail));
    if opts.flow == Flow::Running && s.dhcp {
        let d = s.pps_dhcp.clone().unwrap_or(StepSeen { outcome: "absent".into(), detail: String::new() });
        let ok = d.outcome == "done" && d.detail.contains("through dhclient") && d.detail.contains("10.99.0.");
        check(&mut c, "pps_dhcp", ok, format!("{}: {}", d.outcome, d.detail));
    }
    if s.dhcp {
        // pool lease + renewal (Running) or the hot-attached NIC's lease (Savable)
        check(&mut c, "dhcp_acks", s.dhcp_acks >= 2, format!("{} DHCPACK(s) from dnsmasq", s.dhcp_acks));
    }
    s.failed_steps = status_json
        .get("steps")
        .and_then(|v| v.as_array())
        .map(|steps| {
            steps
                .iter()
                .filter(|st| st.get("outcome").and_then(|o| o.as_str()) == Some("failed"))
                .map(|st| {
                    let f = |k: &str| st.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                    format!("{}: {}", f("name"), f("detail"))
                })
                .collect()
        })
        .unwrap_or_default();
    check(&mut c, "no_failed_steps", s.failed_steps.is_empty(), s.failed_steps.join("; "));
    let customer_if = if opts.flow == Flow::Savable { NEW_IF } else { POOL_IF };
    if s.dhcp {
        let ok = s.addresses.iter().any(|a| a.starts_with(&format!("{customer_if} 10.99.0.")));
        check(&mut c, "customer_nic_address", ok, s.addresses.join(", "));
    }
    check(
        &mut c,
        "customer_user",
        s.customer_in_passwd && !s.pool_user_in_passwd,
        format!("{CUSTOMER_USER} in /etc/passwd: {}, {POOL_USER}: {}", s.customer_in_passwd, s.pool_user_in_passwd),
    );
    check(&mut c, "hostname", s.hostname == CUSTOMER_HOST, format!("UTS host name {:?}", s.hostname));
    let ok = c.iter().all(|c| c.ok);
    s.result = if ok { "success" } else { "failure" }.into();
    if !ok {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<String> = text.lines().rev().take(30).map(str::to_string).collect();
        s.log_tail = tail.into_iter().rev().collect();
    }
    s.checks = c;
    s.total_ms = started.elapsed().as_millis() as u64;
    drop(sim);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_host_namespaces() {
        let here = live::namespace_ids_of(&NAMESPACES).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let opts = InnerOptions {
            flow: Flow::Running,
            agent: PathBuf::from("/nonexistent/azprov"),
            scratch: scratch.path().to_path_buf(),
            host_ns: here,
            dhcp: false,
        };
        let e = inner(&opts).unwrap_err();
        assert!(e.contains("refusing"), "{e}");
        assert!(live::check_namespaces_of("mnt:[1]", &NAMESPACES).is_err());
    }

    #[test]
    fn the_pool_vm_and_its_customer() {
        let vm = pool_vm(Flow::Savable);
        vm.validate().unwrap();
        assert_eq!((vm.pps_type.as_str(), vm.mac_address.as_str()), ("Savable", POOL_MAC));
        let c = vm.customer_definition().unwrap();
        assert_eq!(
            (c.hostname.as_str(), c.username.as_str(), c.mac_address.as_str()),
            (CUSTOMER_HOST, CUSTOMER_USER, CUSTOMER_MAC)
        );
        let c = pool_vm(Flow::Running).customer_definition().unwrap();
        assert_eq!(c.mac_address, POOL_MAC, "Running keeps the NIC");
    }

    #[test]
    fn the_dhclient_wrapper_forces_the_sandbox_script() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        fs::write(&real, "#!/bin/sh\necho \"$@\"\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
        let w = t.path().join("dhclient");
        fs::write(&w, dhclient_wrapper(Path::new("/s/script"), Path::new("/s/conf"), &real)).unwrap();
        fs::set_permissions(&w, fs::Permissions::from_mode(0o755)).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(&w).args(args).output().unwrap();
            (o.status.code(), String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        assert_eq!(run(&["-1", "eth0"]), (Some(0), "-cf /s/conf -sf /s/script -1 eth0".into()));
        assert_eq!(
            run(&["-x", "-cf", "/c", "-sf", "/s/script", "eth0"]),
            (Some(0), "-x -cf /c -sf /s/script eth0".into())
        );
        assert_eq!(run(&["-sf", "/sbin/dhclient-script", "eth0"]).0, Some(99));
    }

    #[test]
    fn summary_round_trips_and_reads_as_text() {
        let s = Summary {
            result: "failure".into(),
            pps_type: "Running".into(),
            checks: vec![Check { name: "hostname".into(), ok: false, detail: "x".into() }],
            log_tail: vec!["boom".into()],
            ..Default::default()
        };
        let back: Summary = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(!back.success());
        let h = back.human();
        assert!(h.contains("[FAIL] hostname: x") && h.contains("| boom"), "{h}");
    }
}
