//! The DHCP client stack of the running system, shared by the duties that make it send a new DHCP request:
//! host-name publishing (`hostname_publish`) and the network waits of pre-provisioned VMs (`pps_network`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::excerpt;
use crate::system::{Command, Ipv4Address, System};
use crate::timeutil::poll_until;

/// systemd-networkd runs (its state file).
pub const NETWORKD_STATE: &str = "/run/systemd/netif/state";
/// systemd-networkd's lease files, one per link index: present exactly while the link holds a DHCPv4 lease.
pub const NETWORKD_LEASES: &str = "/run/systemd/netif/leases";
/// How long `networkctl reconfigure` gets to drop the link's lease (it acts a moment after the command returned).
pub const RECONFIGURE_SETTLE: Duration = Duration::from_secs(2);
/// How often the lease file is looked at while waiting for the drop: the gap lasts one DHCP exchange (70 ms and up).
const DROP_POLL: Duration = Duration::from_millis(20);
/// How often the lease file is looked for while waiting for a new lease.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// How often an address is looked for while DHCP runs.
pub(crate) const ADDRESS_POLL: Duration = Duration::from_millis(250);
/// How long a new lease's address may precede its gateway route (networkd adds the address, then the routes; a
/// request in between meets "Network is unreachable").
pub(crate) const ROUTE_SETTLE: Duration = Duration::from_secs(5);
/// NetworkManager runs.
pub const NM_RUN: &str = "/run/NetworkManager";
/// wicked's DHCP settings (SUSE).
pub const WICKED_DHCP: &str = "/etc/sysconfig/network/dhcp";

/// The DHCP client stack found running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack {
    Networkd,
    NetworkManager,
    /// Running `dhclient` processes (ifupdown, RHEL ifcfg).
    Dhclient(Vec<DhclientProc>),
    Wicked,
    /// Running `dhcpcd` processes (manager or per interface).
    Dhcpcd(Vec<DhclientProc>),
}

/// One running DHCP client process (`dhclient`, `dhcpcd`), from its pid file and `/proc/<pid>/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhclientProc {
    pub pid: u32,
    pub pid_file: String,
    /// Its arguments (without `argv[0]`).
    pub args: Vec<String>,
}

/// The value that follows option `opt` in `args`.
fn option_value<'a>(args: &'a [String], opt: &str) -> Option<&'a str> {
    args.iter().position(|a| a == opt).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// dhclient options that take a value (dhclient(8), ISC 4.4).
const DHCLIENT_VALUE_OPTS: &[&str] = &[
    "-4o6",
    "-D",
    "-p",
    "-lf",
    "-pf",
    "-cf",
    "-sf",
    "-df",
    "-s",
    "-g",
    "-e",
    "-H",
    "-F",
    "-V",
    "-C",
    "--request-options",
    "--timeout",
    "--decline-wait-time",
    "--address-prefix-len",
    "--dad-wait-time",
    "--prefix-len-hint",
];

impl DhclientProc {
    /// Started in the foreground (`-d`): it belongs to a service manager.
    pub fn is_foreground(&self) -> bool {
        self.args.iter().any(|a| a == "-d")
    }
    /// The value of option `opt` (`-cf FILE`).
    pub fn option(&self, opt: &str) -> Option<&str> {
        option_value(&self.args, opt)
    }
    /// The interface names (the non-option arguments).
    pub fn interfaces(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.args.len() {
            let a = &self.args[i];
            if DHCLIENT_VALUE_OPTS.contains(&a.as_str()) {
                i += 2;
                continue;
            }
            if !a.starts_with('-') {
                out.push(a.clone());
            }
            i += 1;
        }
        out
    }
    /// Its arguments with the new name in place of an explicit `-H <name>` (RHEL ifcfg's `DHCP_HOSTNAME`).
    pub fn restart_args(&self, name: &str) -> Vec<String> {
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "-H") {
            if let Some(v) = args.get_mut(i + 1) {
                *v = name.to_string();
            }
        }
        args
    }
}

/// What is running, in order of preference (NetworkManager may run dhclient itself: it wins over a bare dhclient).
pub fn detect(sys: &dyn System) -> Option<Stack> {
    if sys.exists(Path::new(NETWORKD_STATE)) && sys.has_program("networkctl") {
        return Some(Stack::Networkd);
    }
    if sys.exists(Path::new(NM_RUN)) && sys.has_program("nmcli") {
        return Some(Stack::NetworkManager);
    }
    let procs = running_dhclients(sys);
    if !procs.is_empty() && sys.has_program("dhclient") {
        return Some(Stack::Dhclient(procs));
    }
    if sys.exists(Path::new("/run/wicked")) && sys.exists(Path::new(WICKED_DHCP)) && sys.has_program("ifup") {
        return Some(Stack::Wicked);
    }
    let procs = running_clients(sys, "dhcpcd");
    if !procs.is_empty() && sys.has_program("dhcpcd") {
        return Some(Stack::Dhcpcd(procs));
    }
    None
}

/// The text of networkd's lease of link `index`, when it holds one.
pub fn networkd_lease(sys: &dyn System, index: u32) -> Option<String> {
    sys.read_to_string(&PathBuf::from(format!("{NETWORKD_LEASES}/{index}"))).ok()
}

/// What networkd did after `networkctl reconfigure` ([`networkd_reconfigure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relet {
    /// The lease was dropped (or there was none) and a new one is in place.
    Renewed,
    /// The old lease was still there after [`RECONFIGURE_SETTLE`]: networkd kept it (or the drop was missed).
    Kept,
    /// Dropped, and no new lease by the deadline.
    NoLease,
}

/// Wait until `deadline` for networkd to hold a lease on link `index`.
pub fn networkd_wait_lease(sys: &dyn System, index: u32, deadline: Instant) -> bool {
    poll_until(deadline, LEASE_POLL, || networkd_lease(sys, index).is_some())
}

/// `networkctl reconfigure IF` (link `index`), then what networkd does with it: the command returns before networkd
/// acts, so the lease it held is still there for a moment. Waits up to [`RECONFIGURE_SETTLE`] for that lease to go
/// (its lease file is removed), then until `deadline` for the new one. `Err` when the command failed.
pub fn networkd_reconfigure(sys: &dyn System, ifname: &str, index: u32, deadline: Instant) -> Result<Relet, String> {
    let had = networkd_lease(sys, index).is_some();
    run_ok(sys, &Command::new("networkctl", &["reconfigure", ifname]))?;
    let settle = (Instant::now() + RECONFIGURE_SETTLE).min(deadline);
    if had && !poll_until(settle, DROP_POLL, || networkd_lease(sys, index).is_none()) {
        return Ok(Relet::Kept);
    }
    Ok(if networkd_wait_lease(sys, index, deadline) { Relet::Renewed } else { Relet::NoLease })
}

/// `dhclient <first> <args>`.
pub(crate) fn dhclient_cmd(first: &str, args: &[String]) -> Command {
    let mut argv: Vec<&str> = vec![first];
    argv.extend(args.iter().map(String::as_str));
    Command::new("dhclient", &argv)
}

/// dhclient arguments without its mode (`-1` once, `-nw` background), for another mode (`-x`, `-r`, `-1`).
pub(crate) fn without_mode(args: &[String]) -> Vec<String> {
    args.iter().filter(|a| *a != "-1" && *a != "-nw").cloned().collect()
}

/// `dhclient` processes named by `/run/dhclient*.pid` or `/var/run/dhclient*.pid` that are alive.
pub fn running_dhclients(sys: &dyn System) -> Vec<DhclientProc> {
    running_clients(sys, "dhclient")
}

/// Live processes of `program` named by a pid file: `/run/<program>*.pid`, `/run/<program>/pid` or
/// `/run/<program>/*.pid` (and the same under `/var/run`). The process's `argv[0]` must name `program` (dhcpcd
/// retitles itself `dhcpcd: [manager] [ip4]`).
pub fn running_clients(sys: &dyn System, program: &str) -> Vec<DhclientProc> {
    let mut out: Vec<DhclientProc> = Vec::new();
    let own_dir = |d: &str| format!("{d}/{program}");
    let dirs = ["/run".to_string(), "/var/run".to_string(), own_dir("/run"), own_dir("/var/run")];
    for (i, dir) in dirs.iter().enumerate() {
        let Ok(names) = sys.read_dir(Path::new(dir)) else { continue };
        let wanted = |n: &str| match i {
            0 | 1 => n.starts_with(program) && n.ends_with(".pid"),
            _ => n == "pid" || n.ends_with(".pid"),
        };
        for n in names.iter().filter(|n| wanted(n)) {
            let pid_file = format!("{dir}/{n}");
            if let Some((pid, args)) = live_process_in(sys, &pid_file, program) {
                if !out.iter().any(|p| p.pid == pid) {
                    out.push(DhclientProc { pid, pid_file, args });
                }
            }
        }
    }
    out
}

/// The live `program` process that `pid_file` names, with its arguments (without `argv[0]`): its
/// `/proc/<pid>/cmdline` must name the program, which rules out a zombie (empty command line) and a reused pid.
pub fn live_process_in(sys: &dyn System, pid_file: &str, program: &str) -> Option<(u32, Vec<String>)> {
    let pid = sys.read_to_string(Path::new(pid_file)).ok()?.trim().parse::<u32>().ok()?;
    let cmdline = sys.read(Path::new(&format!("/proc/{pid}/cmdline"))).ok()?;
    let mut argv =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
    let named = argv.next().is_some_and(|a0| {
        let cmd = a0.split(|c: char| c.is_whitespace() || c == ':').next().unwrap_or("");
        cmd.rsplit('/').next() == Some(program)
    });
    named.then(|| (pid, argv.collect()))
}

/// How long a daemonizing DHCP client gets to write its pid file: it does so just after forking, a moment after
/// the command that started it returned.
pub const DAEMON_PID_WAIT: Duration = Duration::from_secs(3);

/// The pid file `dhclient` with arguments `args` writes (`-pf`, else ISC dhclient's built-in `/var/run/dhclient.pid`).
pub fn dhclient_pid_file(args: &[String]) -> String {
    option_value(args, "-pf").unwrap_or("/var/run/dhclient.pid").to_string()
}

/// Wait until `pid_file` names a live `program` process other than `old` (the one it replaces), until
/// `deadline`; answers its pid. Whoever looks for the running clients next (a later renewal, the Savable stop,
/// host-name publishing) finds it only through that file.
pub fn wait_for_daemon(
    sys: &dyn System,
    pid_file: &str,
    program: &str,
    old: Option<u32>,
    deadline: Instant,
) -> Option<u32> {
    let mut found = None;
    poll_until(deadline, LEASE_POLL, || {
        found = live_process_in(sys, pid_file, program).map(|(pid, _)| pid).filter(|pid| Some(*pid) != old);
        found.is_some()
    });
    found
}

/// Run `cmd`; `Err(description)` unless it exits 0.
pub(crate) fn run_ok(sys: &dyn System, cmd: &Command) -> Result<(), String> {
    match sys.run(cmd) {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!("{} exited {:?}: {}", cmd.display(), o.status, excerpt(&o.stderr))),
        Err(e) => Err(format!("{}: {e}", cmd.display())),
    }
}

pub(crate) fn addresses_of(sys: &dyn System, index: u32) -> Vec<Ipv4Address> {
    sys.ipv4_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.index == index && !a.address.is_link_local() && !a.address.is_unspecified())
        .collect()
}

/// Whether the route the kernel would pick for `target` leaves through link `index`.
pub(crate) fn routed_through(sys: &dyn System, index: u32, target: Ipv4Addr) -> bool {
    let routes = sys.ipv4_routes().unwrap_or_default();
    super::routes::best_route(&routes, target)
        .is_some_and(|r| r.kind == crate::system::RTN_UNICAST && r.hops.iter().any(|h| h.oif == index))
}

/// After a DHCP client was asked for a lease on link `index`: its addresses once it has one (empty when none came
/// by `deadline`), and, when `reach` names a (non-loopback) address, whether a route to it through the link
/// followed within [`ROUTE_SETTLE`] (bounded by `deadline`).
pub(crate) fn wait_for_lease(
    sys: &dyn System,
    index: u32,
    reach: Option<Ipv4Addr>,
    deadline: Instant,
) -> (Vec<Ipv4Address>, bool) {
    let a = wait_for_address(sys, index, deadline);
    let Some(target) = reach.filter(|t| !a.is_empty() && !t.is_loopback()) else { return (a, true) };
    let until = (Instant::now() + ROUTE_SETTLE).min(deadline);
    let routed = poll_until(until, Duration::from_millis(50), || routed_through(sys, index, target));
    (a, routed)
}

/// Wait until link `index` has an address, until `deadline`.
pub(crate) fn wait_for_address(sys: &dyn System, index: u32, deadline: Instant) -> Vec<Ipv4Address> {
    let mut a = Vec::new();
    poll_until(deadline, ADDRESS_POLL, || {
        a = addresses_of(sys, index);
        !a.is_empty()
    });
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;

    fn sandbox(files: &[(&str, &str)], installed: &[&str]) -> (tempfile::TempDir, RecordingSystem) {
        let (d, sys) = crate::testutil::sandbox(files);
        for t in ["networkctl", "nmcli", "dhclient", "dhcpcd", "ifup"] {
            if installed.contains(&t) {
                sys.script(t, Default::default());
            } else {
                sys.uninstall(t);
            }
        }
        (d, sys)
    }

    #[test]
    fn a_daemon_is_live_only_by_its_command_line_and_new_when_asked() {
        let (_d, sys) = sandbox(
            &[
                ("/run/dhclient.eth0.pid", "20\n"),
                ("/proc/20/cmdline", "/sbin/dhclient\0-4\0eth0\0"),
                // a zombie: /proc/<pid> exists, its command line is empty
                ("/run/dhclient.eth1.pid", "21\n"),
                ("/proc/21/cmdline", ""),
            ],
            &[],
        );
        let live = live_process_in(&sys, "/run/dhclient.eth0.pid", "dhclient");
        assert_eq!(live, Some((20, vec!["-4".to_string(), "eth0".to_string()])));
        assert_eq!(live_process_in(&sys, "/run/dhclient.eth1.pid", "dhclient"), None);
        assert_eq!(live_process_in(&sys, "/run/dhclient.eth0.pid", "dhcpcd"), None);
        let soon = Instant::now() + Duration::from_millis(120);
        assert_eq!(wait_for_daemon(&sys, "/run/dhclient.eth0.pid", "dhclient", None, soon), Some(20));
        let t = Instant::now();
        assert_eq!(wait_for_daemon(&sys, "/run/dhclient.eth0.pid", "dhclient", Some(20), soon), None, "the old one");
        assert!(t.elapsed() >= Duration::from_millis(50));
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(dhclient_pid_file(&args(&["-4", "-pf", "/run/x.pid", "eth0"])), "/run/x.pid");
        assert_eq!(dhclient_pid_file(&args(&["-4", "eth0"])), "/var/run/dhclient.pid");
    }

    #[test]
    fn dhcpcd_pid_files_of_every_version() {
        let (_d, sys) = sandbox(
            &[
                // dhcpcd 9: the manager, retitled
                ("/run/dhcpcd/pid", "10\n"),
                ("/proc/10/cmdline", "dhcpcd: [manager] [ip4] [ip6]\0"),
                // dhcpcd 7/8: per interface
                ("/var/run/dhcpcd-eth1-4.pid", "11\n"),
                ("/proc/11/cmdline", "/sbin/dhcpcd\0-4\0eth1\0"),
                // a stale file, and a pid reused by something else
                ("/run/dhcpcd-eth2.pid", "12\n"),
                ("/run/dhcpcd/eth3.pid", "13\n"),
                ("/proc/13/cmdline", "/usr/bin/dhcpcd-ui\0"),
                ("/run/dhclient.pid", "14\n"),
                ("/proc/14/cmdline", "/sbin/dhcpcd\0"),
            ],
            &["dhcpcd"],
        );
        let found = running_clients(&sys, "dhcpcd");
        let pids: Vec<u32> = found.iter().map(|p| p.pid).collect();
        assert_eq!(pids, [11, 10]);
        assert_eq!(found[0].args, ["-4", "eth1"]);
        assert!(running_dhclients(&sys).is_empty());
        assert!(matches!(detect(&sys), Some(Stack::Dhcpcd(p)) if p.len() == 2));
        // not installed: not the stack
        sys.uninstall("dhcpcd");
        assert_eq!(detect(&sys), None);
    }

    #[test]
    fn detection_prefers_the_network_managers() {
        let files = [
            (NETWORKD_STATE, "x"),
            ("/run/NetworkManager/x", ""),
            ("/run/dhclient.pid", "14\n"),
            ("/proc/14/cmdline", "/sbin/dhclient\0eth0\0"),
        ];
        let (_d, sys) = sandbox(&files, &["networkctl", "nmcli", "dhclient"]);
        assert_eq!(detect(&sys), Some(Stack::Networkd));
        let (_d, sys) = sandbox(&files, &["nmcli", "dhclient"]);
        assert_eq!(detect(&sys), Some(Stack::NetworkManager));
        let (_d, sys) = sandbox(&files, &["dhclient"]);
        assert!(matches!(detect(&sys), Some(Stack::Dhclient(p)) if p[0].interfaces() == ["eth0"]));
    }
}
