//! The network waits of a pre-provisioned (pool) VM (platform.md §10): how the VM learns that the platform handed
//! it to a customer.
//!
//! - **Running**: the NIC stays, the host moves it to the customer's VNet; the guest sees its link go down and
//!   come up again ([`Watcher::wait_bounce`]), then drops its lease and asks again ([`renew_dhcp`]).
//! - **Savable**: the pool NIC is detached (`RTM_DELLINK`, [`Watcher::wait_detach`]), then the customer's NICs
//!   are hot-attached (`RTM_NEWLINK`, [`Watcher::wait_attach`]): each is brought up and gets a DHCP lease
//!   ([`dhcp_link`]) until the primary one is found ([`Watcher::wait_reattach`]).
//!
//! The subscription to link events ([`Watcher::start`]) must be opened BEFORE the intermediate Ready is reported:
//! the platform may act on the VM as soon as it sees Ready, and events before the subscription are lost. Waits
//! read events with a bounded poll ([`POLL_INTERVAL`]) and, after each quiet interval or a lost-events overrun,
//! re-read the links' state, so a missed notification only delays the answer.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dhcp_client::{
    addresses_of, detect, dhclient_cmd, dhclient_pid_file, networkd_lease, networkd_reconfigure, networkd_wait_lease,
    run_ok, running_dhclients, wait_for_address, wait_for_daemon, wait_for_lease, without_mode, DhclientProc, Relet,
    Stack, ADDRESS_POLL, DAEMON_PID_WAIT,
};
use super::{nics, Outcome};
use crate::report::Failure;

use crate::system::{Command, Ipv4Address, Link, LinkEvent, LinkWatch, System, ARPHRD_ETHER, IFF_UP};

/// One bounded wait for link events; the state is read again after each (platform.md §10: 60 s per loop).
pub const POLL_INTERVAL: Duration = Duration::from_secs(60);
/// A hot-attached link is given this many checks…
pub const LINK_UP_TRIES: u32 = 100;
/// …this far apart to come up (cloud-init: 100 × 0.1 s).
pub const LINK_UP_INTERVAL: Duration = Duration::from_millis(100);
/// How long a hot-attached NIC may take to get a DHCP lease (cloud-init: 20 min).
pub const DHCP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// How long [`renew_dhcp`] waits for the link to have an address again.
pub const RENEW_WAIT: Duration = Duration::from_secs(60);

/// No NIC to watch or to run DHCP on (platform.md §6.2).
pub const NO_INTERFACE: &str = "failure to find DHCP interface";
/// No lease within the deadline (platform.md §6.2).
pub const NO_LEASE: &str = "failure to obtain DHCP lease";
/// The kernel's link state could not be read or watched.
pub const WATCH_FAILED: &str = "failure to watch network links";
/// Running: the NIC never went down and up again.
pub const BOUNCE_TIMEOUT: &str = "timeout waiting for the pre-provisioned NIC to reconnect";
/// Savable: the pool NIC was never detached.
pub const DETACH_TIMEOUT: &str = "timeout waiting for the pre-provisioned NIC to be detached";
/// Savable: no (primary) NIC was hot-attached.
pub const ATTACH_TIMEOUT: &str = "timeout waiting for a hot-attached primary NIC";

/// After a link bounce, how long networkd gets to take a new lease by itself before it is asked to.
const CARRIER_LEASE_WAIT: Duration = Duration::from_secs(10);
/// Pause before asking a stack again whose command failed (NetworkManager refusing a device not ready yet).
const RETRY_PAUSE: Duration = Duration::from_secs(5);
/// The most one `dhclient -1` attempt may take (its own `timeout`, 60 s by default, decides first).
const DHCLIENT_ATTEMPT: Duration = Duration::from_secs(120);
/// Where udev keeps a database entry per processed network link (`n<ifindex>`).
const UDEV_DATA: &str = "/run/udev/data";

/// What the wait loop was given: one event, or the links read again (quiet interval, or events were lost).
enum Input {
    Event(LinkEvent),
    State(Vec<Link>),
}

/// Why a wait loop ended without an answer.
enum Stop {
    Timeout,
    Failed(Failure),
}

fn watch_failed(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(WATCH_FAILED).with("operation", what).with("exception", e)
}

/// The link that `nic` names in `links`: an interface name, else a MAC (`00:0d:3a:04:75:98` or `000D3A047598`).
/// Among links sharing a MAC (an Accelerated Networking VF carries its synthetic NIC's), the one not enslaved and
/// not a VF wins, then the lowest index.
pub fn resolve(nic: &str, links: &[Link], vfs: &BTreeSet<String>) -> Option<Link> {
    if let Some(l) = links.iter().find(|l| l.name == nic) {
        return Some(l.clone());
    }
    let t = nic.trim();
    let mac = nics::normalize_sysfs_mac(t)
        .or_else(|| (t.len() == 12 && t.bytes().all(|b| b.is_ascii_hexdigit())).then(|| t.to_ascii_uppercase()))?;
    let mut carrying: Vec<&Link> = links.iter().filter(|l| l.mac == mac).collect();
    carrying.sort_by_key(|l| (l.master.is_some() || vfs.contains(&l.name), l.index));
    carrying.first().map(|l| (*l).clone())
}

/// Names of the SR-IOV VFs sysfs shows (empty when sysfs cannot be read).
fn vf_names(sys: &dyn System) -> BTreeSet<String> {
    nics::read_nics(sys).unwrap_or_default().into_iter().filter(|n| n.is_vf()).map(|n| n.name).collect()
}

fn link_names(links: &[Link]) -> String {
    links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(",")
}

/// A link that may be a customer NIC: Ethernet, not the loopback, not enslaved, not an SR-IOV VF.
fn is_candidate(l: &Link, vfs: &BTreeSet<String>) -> bool {
    !l.is_loopback() && l.link_type == ARPHRD_ETHER && l.master.is_none() && !vfs.contains(&l.name)
}

/// Running: the NIC went down and came up again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounced {
    /// The link as it is now (up).
    pub link: Link,
    /// How the down phase was seen (an event, a re-read of the state, the carrier-loss counter).
    pub how: String,
    pub waited: Duration,
}

impl Bounced {
    pub fn describe(&self) -> String {
        format!("{} went down ({}) and came up again after {} s", self.link.name, self.how, self.waited.as_secs())
    }
}

/// Savable: one hot-attached NIC, brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The link after it came up (its current name: udev may have renamed it).
    pub link: Link,
    /// Whether it came up (with carrier) within the tries.
    pub up: bool,
}

/// Savable: a hot-attached NIC with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedNic {
    pub link: Link,
    pub addresses: Vec<Ipv4Address>,
}

/// Savable: what happened between the detach and the primary NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reattached {
    /// The pool NIC as it was before it went away.
    pub detached: Link,
    /// Every hot-attached NIC that got a lease, in order; the last one is the primary.
    pub nics: Vec<AttachedNic>,
    /// Hot-attached NICs that got no lease, with the reason.
    pub skipped: Vec<String>,
    /// What became of DHCP clients left serving the detached NIC (see [`stop_detached_dhclients`]).
    pub stopped: Vec<String>,
}

impl Reattached {
    pub fn primary(&self) -> Option<&AttachedNic> {
        self.nics.last()
    }
    pub fn describe(&self) -> String {
        let nics: Vec<String> = self
            .nics
            .iter()
            .map(|n| {
                let a: Vec<String> = n.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
                format!("{} ({})", n.link.name, a.join(" "))
            })
            .collect();
        let mut s = format!("{} detached; hot-attached: {}", self.detached.name, nics.join(", "));
        if !self.skipped.is_empty() {
            s.push_str(&format!("; without lease: {}", self.skipped.join("; ")));
        }
        if !self.stopped.is_empty() {
            s.push_str(&format!("; {}", self.stopped.join("; ")));
        }
        s
    }
}

/// Bounds of the Savable wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReattachOptions {
    /// The whole wait (detach, attach, DHCP); `None` = as long as it takes.
    pub timeout: Option<Duration>,
    /// DHCP on one hot-attached NIC ([`DHCP_TIMEOUT`]).
    pub dhcp_timeout: Duration,
    pub link_up_tries: u32,
    pub link_up_interval: Duration,
    /// The platform address (IMDS) whose route through a NIC that got its lease is waited for (briefly).
    pub reach: Option<Ipv4Addr>,
}

impl Default for ReattachOptions {
    fn default() -> Self {
        ReattachOptions {
            timeout: None,
            dhcp_timeout: DHCP_TIMEOUT,
            link_up_tries: LINK_UP_TRIES,
            link_up_interval: LINK_UP_INTERVAL,
            reach: None,
        }
    }
}

/// An open subscription to link events, with the links as they were when it was opened.
pub struct Watcher<'a> {
    sys: &'a dyn System,
    watch: Box<dyn LinkWatch + 'a>,
    baseline: Vec<Link>,
    /// Link indices not (or no longer) candidates for a hot attach: present at the start or already handed out.
    known: BTreeSet<u32>,
    poll: Duration,
}

impl<'a> Watcher<'a> {
    /// Subscribe to link events and read the current links. Call it BEFORE reporting the intermediate Ready.
    /// Fails (`failure to watch network links`) when the kernel's links cannot be watched (not the running system).
    pub fn start(sys: &'a dyn System) -> Result<Self, Failure> {
        let watch = sys.link_watch().map_err(|e| watch_failed("subscribe", e))?;
        let baseline = sys.links().map_err(|e| watch_failed("read links", e))?;
        let known = baseline.iter().map(|l| l.index).collect();
        Ok(Watcher { sys, watch, baseline, known, poll: POLL_INTERVAL })
    }

    /// Re-read the state after this long without events (default [`POLL_INTERVAL`]).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// The links when the watch was opened.
    pub fn baseline(&self) -> &[Link] {
        &self.baseline
    }

    /// Feed events (or a fresh read of the links) to `step` until it answers, fails, or `timeout` passes.
    fn wait<T>(
        &mut self,
        deadline: Option<Instant>,
        step: &mut dyn FnMut(Input) -> Result<Option<T>, Failure>,
    ) -> Result<T, Stop> {
        loop {
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Stop::Timeout);
                    }
                    left.min(self.poll)
                }
                None => self.poll,
            };
            let input = match self.watch.next_event(wait) {
                Ok(Some(LinkEvent::Overrun)) | Ok(None) => {
                    Input::State(self.sys.links().map_err(|e| Stop::Failed(watch_failed("read links", e)))?)
                }
                Ok(Some(e)) => Input::Event(e),
                Err(e) => return Err(Stop::Failed(watch_failed("read events", e))),
            };
            if let Some(answer) = step(input).map_err(Stop::Failed)? {
                return Ok(answer);
            }
        }
    }

    fn target(&self, nic: &str) -> Result<Link, Failure> {
        resolve(nic, &self.baseline, &vf_names(self.sys))
            .ok_or_else(|| Failure::new(NO_INTERFACE).with("nic", nic).with("links", link_names(&self.baseline)))
    }

    /// Running: wait until `nic` (a name or MAC present when the watch was opened) goes down — an `RTM_NEWLINK`
    /// without carrier / not running / oper state down, its removal, or a higher carrier-loss counter — and then
    /// shows up with carrier. `timeout` `None` waits as long as it takes.
    pub fn wait_bounce(&mut self, nic: &str, timeout: Option<Duration>) -> Result<Bounced, Failure> {
        let mut target = self.target(nic)?;
        let started = Instant::now();
        let base_up = target.is_up();
        let base_count = target.carrier_down_count;
        let mut gone = false;
        let mut down: Option<String> = None;
        let mut events = 0u32;
        let mut step = |input: Input| -> Result<Option<Link>, Failure> {
            // once removed, the NIC may come back under a new index: the same MAC, not enslaved
            let same = |l: &Link, target: &Link, gone: bool| {
                l.index == target.index || (gone && !target.mac.is_empty() && l.mac == target.mac && l.master.is_none())
            };
            let (now, from_state) = match input {
                Input::Event(LinkEvent::New(l)) => {
                    if !same(&l, &target, gone) {
                        return Ok(None);
                    }
                    events += 1;
                    (l, false)
                }
                Input::Event(LinkEvent::Del(l)) if l.index == target.index => {
                    events += 1;
                    gone = true;
                    down.get_or_insert_with(|| "removed".into());
                    return Ok(None);
                }
                Input::Event(_) => return Ok(None),
                Input::State(links) => {
                    let again = links.iter().find(|l| l.index == target.index);
                    if again.is_none() {
                        gone = true;
                        down.get_or_insert_with(|| "absent when the links were read again".into());
                    }
                    match again.or_else(|| links.iter().find(|l| same(l, &target, gone))) {
                        Some(l) => (l.clone(), true),
                        None => return Ok(None),
                    }
                }
            };
            let replaced = now.index != target.index;
            if replaced {
                gone = false;
                target = now.clone();
            }
            let counter = match (base_count, now.carrier_down_count) {
                (Some(a), Some(b)) if b > a && !replaced => Some(b - a),
                _ => None,
            };
            if !now.is_up() && (!from_state || base_up) {
                down.get_or_insert_with(|| {
                    if from_state {
                        "seen down when the links were read again".into()
                    } else {
                        format!("event: flags {:#x}, oper state {}", now.flags, now.oper_state)
                    }
                });
            } else if let Some(n) = counter {
                down.get_or_insert_with(|| format!("carrier lost {n} time(s) by the kernel's counter"));
            }
            Ok((now.is_up() && down.is_some()).then_some(now))
        };
        let deadline = timeout.map(|t| started + t);
        match self.wait(deadline, &mut step) {
            Ok(link) => Ok(Bounced { link, how: down.unwrap_or_default(), waited: started.elapsed() }),
            Err(Stop::Failed(f)) => Err(f.with("nic", nic)),
            Err(Stop::Timeout) => Err(Failure::new(BOUNCE_TIMEOUT)
                .with("nic", nic)
                .with("waited_s", started.elapsed().as_secs())
                .with("events", events)
                .with("seen_down", down.as_deref().unwrap_or("no"))),
        }
    }

    /// Savable: wait until `nic` (a name or MAC present when the watch was opened) is removed (`RTM_DELLINK`, or
    /// absent when the links are read again). Answers the link as it was.
    pub fn wait_detach(&mut self, nic: &str, timeout: Option<Duration>) -> Result<Link, Failure> {
        let target = self.target(nic)?;
        let started = Instant::now();
        let index = target.index;
        let mut step = |input: Input| -> Result<Option<()>, Failure> {
            Ok(match input {
                Input::Event(LinkEvent::Del(l)) if l.index == index => Some(()),
                Input::State(links) if !links.iter().any(|l| l.index == index) => Some(()),
                _ => None,
            })
        };
        match self.wait(timeout.map(|t| started + t), &mut step) {
            Ok(()) => Ok(target),
            Err(Stop::Failed(f)) => Err(f.with("nic", nic)),
            Err(Stop::Timeout) => {
                Err(Failure::new(DETACH_TIMEOUT).with("nic", nic).with("waited_s", started.elapsed().as_secs()))
            }
        }
    }

    /// Savable: wait for the next hot-attached NIC (an Ethernet link not present before, not enslaved, not a VF),
    /// then bring it up: after udev has seen it (it may rename it), `IFF_UP`, then up to `tries` checks
    /// `interval` apart for carrier. Each link is answered once.
    pub fn wait_attach(
        &mut self,
        timeout: Option<Duration>,
        tries: u32,
        interval: Duration,
    ) -> Result<Attached, Failure> {
        let started = Instant::now();
        let vfs = vf_names(self.sys);
        loop {
            let known = self.known.clone();
            let mut step = |input: Input| -> Result<Option<Link>, Failure> {
                let fresh = |l: &Link| !known.contains(&l.index) && is_candidate(l, &vfs);
                Ok(match input {
                    Input::Event(LinkEvent::New(l)) if fresh(&l) => Some(l),
                    Input::State(links) => links.into_iter().find(|l| fresh(l)),
                    _ => None,
                })
            };
            let link = match self.wait(timeout.map(|t| started + t), &mut step) {
                Ok(l) => l,
                Err(Stop::Failed(f)) => return Err(f),
                Err(Stop::Timeout) => {
                    return Err(Failure::new(ATTACH_TIMEOUT).with("waited_s", started.elapsed().as_secs()));
                }
            };
            self.known.insert(link.index);
            let index = link.index;
            let attached = bring_up(self.sys, link, tries, interval);
            // a link that went away meanwhile (moved to another namespace, renamed into a bond…) is not a NIC
            if attached.up || self.sys.links().map_or(true, |all| all.iter().any(|l| l.index == index)) {
                return Ok(attached);
            }
        }
    }

    /// Savable, the whole wait: `nic` is detached, then every hot-attached NIC is brought up and gets a DHCP lease
    /// ([`dhcp_link`]) until `is_primary` says one is the primary NIC (on Azure: its MAC is IMDS's first
    /// interface, asked over the new lease). A NIC without a lease is noted and the wait goes on.
    pub fn wait_reattach(
        &mut self,
        nic: &str,
        opts: &ReattachOptions,
        is_primary: &mut dyn FnMut(&AttachedNic) -> bool,
    ) -> Result<Reattached, Failure> {
        let started = Instant::now();
        let deadline = opts.timeout.map(|t| started + t);
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let detached = self.wait_detach(nic, left())?;
        let stopped = stop_detached_dhclients(self.sys, &detached.name);
        let mut done = Reattached { detached, nics: Vec::new(), skipped: Vec::new(), stopped };
        loop {
            let attached = self.wait_attach(left(), opts.link_up_tries, opts.link_up_interval).map_err(|f| {
                f.with("nic", nic).with("with_lease", done.nics.len()).with("without_lease", done.skipped.join("; "))
            })?;
            let name = attached.link.name.clone();
            let dhcp_for = left().map_or(opts.dhcp_timeout, |l| l.min(opts.dhcp_timeout));
            match dhcp_link(self.sys, &name, dhcp_for) {
                Ok(addresses) => {
                    // the stack adds the lease's routes after its address
                    let _ = wait_for_lease(self.sys, attached.link.index, opts.reach, Instant::now() + dhcp_for);
                    let nic = AttachedNic { link: attached.link, addresses };
                    let primary = is_primary(&nic);
                    done.nics.push(nic);
                    if primary {
                        return Ok(done);
                    }
                }
                Err(f) => {
                    let up = if attached.up { "" } else { ", never came up" };
                    done.skipped.push(format!("{name}{up}: {f}"));
                }
            }
        }
    }
}

/// Savable, after the pool NIC `ifname` went away: stop each `dhclient` that served only it. ISC dhclient keeps
/// retrying on a vanished interface, and a hot-attached NIC may be given the same name. `dhclient -x <its
/// arguments>` stops it without a release (the NIC is gone); dhclient then exits non-zero for the missing interface,
/// so what counts is that the process is gone afterwards. A foreground client (`-d`) belongs to a service manager
/// and is left to it. Answers one line per client found; nothing when none runs (or not on the running system).
pub fn stop_detached_dhclients(sys: &dyn System, ifname: &str) -> Vec<String> {
    if !sys.is_live() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in running_dhclients(sys).into_iter().filter(|p| p.interfaces() == [ifname]) {
        if p.is_foreground() {
            out.push(format!("dhclient pid {} of {ifname} runs in the foreground (-d): left to its service", p.pid));
            continue;
        }
        let mut cmd = dhclient_cmd("-x", &without_mode(&p.args));
        cmd.timeout = Duration::from_secs(15);
        let ran = sys.run(&cmd);
        let alive = running_dhclients(sys).iter().any(|q| q.pid == p.pid);
        out.push(match (alive, ran) {
            (false, _) => format!("stopped dhclient pid {} of the detached {ifname} (dhclient -x)", p.pid),
            (true, Ok(o)) => format!("dhclient pid {} of the detached {ifname} still runs: {}", p.pid, o.stderr_text()),
            (true, Err(e)) => format!("dhclient pid {} of the detached {ifname} still runs: {e}", p.pid),
        });
    }
    out
}

/// Bring a new link up (see [`Watcher::wait_attach`]); answers it with its current state and name.
fn bring_up(sys: &dyn System, mut link: Link, tries: u32, interval: Duration) -> Attached {
    let udev = sys.is_live() && sys.exists(Path::new(UDEV_DATA));
    let udev_entry = format!("{UDEV_DATA}/n{}", link.index);
    for attempt in 0..tries.max(1) {
        match sys.links() {
            Ok(all) => match all.into_iter().find(|l| l.index == link.index) {
                Some(now) => link = now,
                // gone (moved to another namespace, detached again)
                None => return Attached { link, up: false },
            },
            Err(e) => tracing::warn!("cannot read the links: {e}"),
        }
        if link.is_up() {
            return Attached { link, up: true };
        }
        // udev renames a new link while it is down: bring it up once udev is done with it (or after half the tries)
        let udev_done = !udev || sys.exists(Path::new(&udev_entry)) || attempt >= tries / 2;
        if udev_done && link.flags & IFF_UP == 0 {
            if let Err(e) = sys.set_link_up(link.index) {
                tracing::warn!("cannot set {} up: {e}", link.name);
            }
        }
        std::thread::sleep(interval);
    }
    if let Some(now) = sys.links().ok().and_then(|all| all.into_iter().find(|l| l.index == link.index)) {
        link = now;
    }
    let up = link.is_up();
    Attached { link, up }
}

/// Usable (not link-local) IPv4 addresses of link `index`.
fn index_of(sys: &dyn System, ifname: &str) -> Result<u32, Failure> {
    let links = sys.links().map_err(|e| watch_failed("read links", e))?;
    links
        .iter()
        .find(|l| l.name == ifname)
        .map(|l| l.index)
        .ok_or_else(|| Failure::new(NO_INTERFACE).with("interface", ifname).with("links", link_names(&links)))
}

fn dhclient_value<'p>(procs: &'p [DhclientProc], opt: &str) -> Option<&'p str> {
    procs.iter().find_map(|p| p.option(opt))
}

/// Arguments of a new `dhclient` for `ifname` (after `-1`/`-nw`): IPv4, the configuration and script the image's
/// running clients use, and per-interface pid and lease files next to theirs.
fn dhclient_fresh_args(sys: &dyn System, procs: &[DhclientProc], ifname: &str) -> Vec<String> {
    let dir_of =
        |opt: &str| dhclient_value(procs, opt).and_then(|f| Path::new(f).parent().map(|p| p.display().to_string()));
    let lease_dir = dir_of("-lf").unwrap_or_else(|| {
        ["/var/lib/dhcp", "/var/lib/dhclient"]
            .into_iter()
            .find(|d| sys.exists(Path::new(d)))
            .unwrap_or("/run")
            .to_string()
    });
    let pid_dir = dir_of("-pf").unwrap_or_else(|| "/run".to_string());
    let mut args = vec!["-4".to_string()];
    for opt in ["-cf", "-sf"] {
        if let Some(v) = dhclient_value(procs, opt) {
            args.extend([opt.to_string(), v.to_string()]);
        }
    }
    args.extend([
        "-pf".into(),
        format!("{pid_dir}/dhclient.{ifname}.pid"),
        "-lf".into(),
        format!("{lease_dir}/dhclient.{ifname}.leases"),
        ifname.into(),
    ]);
    args
}

/// One `dhclient -1` attempt bounded by `left`.
fn dhclient_once(sys: &dyn System, args: &[String], left: Duration) -> Result<(), String> {
    let deadline = Instant::now() + left;
    let mut cmd = dhclient_cmd("-1", args);
    cmd.timeout = left.min(DHCLIENT_ATTEMPT) + Duration::from_secs(5);
    run_ok(sys, &cmd)?;
    // with its lease, the client forked into the background and writes its pid file a moment later: what looks for
    // the running clients next (a renewal, the Savable stop, host-name publishing) finds it only through that file
    let pid_file = dhclient_pid_file(args);
    if wait_for_daemon(sys, &pid_file, "dhclient", None, (Instant::now() + DAEMON_PID_WAIT).min(deadline)).is_none() {
        tracing::debug!("dhclient -1 returned but {pid_file} names no live dhclient yet");
    }
    Ok(())
}

/// Get a lease on a newly attached link `ifname` within `timeout`, through the DHCP client stack that runs
/// (systemd-networkd `networkctl reconfigure`, NetworkManager `nmcli device connect`, wicked `ifup`, dhcpcd
/// `dhcpcd -n`) or, when only `dhclient` runs or none does, new `dhclient -1` attempts. A link the stack already
/// configured is answered at once. Answers its usable IPv4 addresses.
pub fn dhcp_link(sys: &dyn System, ifname: &str, timeout: Duration) -> Result<Vec<Ipv4Address>, Failure> {
    let deadline = Instant::now() + timeout;
    let index = index_of(sys, ifname)?;
    let have = addresses_of(sys, index);
    if !have.is_empty() {
        return Ok(have);
    }
    let no_lease = |method: &str, e: &str| {
        Failure::new(NO_LEASE)
            .with("interface", ifname)
            .with("method", method)
            .with("waited_s", timeout.as_secs())
            .with("exception", e)
    };
    let stack = detect(sys);
    let (method, cmd): (&str, Option<Command>) = match &stack {
        Some(Stack::Networkd) => ("systemd-networkd", Some(Command::new("networkctl", &["reconfigure", ifname]))),
        Some(Stack::NetworkManager) => ("NetworkManager", Some(nm_connect(ifname, timeout))),
        Some(Stack::Wicked) => ("wicked", Some(Command::new("ifup", &[ifname]))),
        Some(Stack::Dhcpcd(_)) => ("dhcpcd", Some(Command::new("dhcpcd", &["-n", ifname]))),
        Some(Stack::Dhclient(_)) | None if sys.has_program("dhclient") => ("dhclient", None),
        None if sys.has_program("dhcpcd") => {
            let secs = timeout.as_secs().max(1).to_string();
            let mut c = Command::new("dhcpcd", &["-4", "-w", "-t", &secs, ifname]);
            c.timeout = timeout + Duration::from_secs(5);
            ("dhcpcd", Some(c))
        }
        Some(Stack::Dhclient(_)) | None => {
            return Err(no_lease(
                "none",
                "no DHCP client found (systemd-networkd, NetworkManager, wicked, dhcpcd, dhclient)",
            ));
        }
    };
    let mut last_error = String::from("no address");
    match cmd {
        // the stack keeps trying by itself once asked: ask again only when the request failed
        Some(cmd) => loop {
            match run_ok(sys, &cmd) {
                Ok(()) => {
                    let a = wait_for_address(sys, index, deadline);
                    return if a.is_empty() { Err(no_lease(method, "no address in time")) } else { Ok(a) };
                }
                Err(e) => last_error = e,
            }
            let a = wait_for_address(sys, index, (Instant::now() + RETRY_PAUSE).min(deadline));
            if !a.is_empty() {
                return Ok(a);
            }
            if Instant::now() >= deadline {
                return Err(no_lease(method, &last_error));
            }
        },
        None => {
            let procs = match &stack {
                Some(Stack::Dhclient(p)) => p.clone(),
                _ => Vec::new(),
            };
            let args = dhclient_fresh_args(sys, &procs, ifname);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Err(e) = dhclient_once(sys, &args, left) {
                    last_error = e;
                }
                let a = wait_for_address(sys, index, (Instant::now() + ADDRESS_POLL).min(deadline));
                if !a.is_empty() {
                    return Ok(a);
                }
                if Instant::now() >= deadline {
                    return Err(no_lease(method, &last_error));
                }
                std::thread::sleep(Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())));
            }
        }
    }
}

/// `nmcli --wait N device connect IF`: (re)activate the device's connection, which starts a new DHCP exchange.
fn nm_connect(ifname: &str, wait: Duration) -> Command {
    let secs = wait.as_secs().clamp(1, 600).to_string();
    let mut c = Command::new("nmcli", &["--wait", &secs, "device", "connect", ifname]);
    c.timeout = Duration::from_secs(wait.as_secs().clamp(1, 600) + 10);
    c
}

/// After the Running bounce: drop the lease of `ifname` and ask again, through what runs, and wait (up to
/// [`RENEW_WAIT`]) for it to have an address. See [`renew_dhcp_within`].
pub fn renew_dhcp(sys: &dyn System, ifname: &str, reach: Option<Ipv4Addr>) -> Outcome {
    renew_dhcp_within(sys, ifname, reach, RENEW_WAIT)
}

/// [`renew_dhcp`] with its wait for an address bounded by `wait`. The method follows the running stack:
/// systemd-networkd `networkctl reconfigure IF` (else `networkctl renew IF`), NetworkManager `nmcli device connect
/// IF`, a `dhclient` for IF `dhclient -r <its args>` then `dhclient -1 <its args>` (should that get no lease, it is
/// started again in the background so the interface keeps a client), a `dhclient` for other interfaces only (or
/// none at all) a new `dhclient -1` for IF with their configuration, wicked `ifup IF`, dhcpcd `dhcpcd -n IF`.
/// Skipped under a root and when no DHCP client is found. With `reach`, the renewal also waits (a little, see
/// [`ROUTE_SETTLE`]) for the route to that address to go through the link: the stack adds routes after the address.
pub fn renew_dhcp_within(sys: &dyn System, ifname: &str, reach: Option<Ipv4Addr>, wait: Duration) -> Outcome {
    if !sys.is_live() {
        return Outcome::Skipped("not the running system".into());
    }
    let index = match index_of(sys, ifname) {
        Ok(i) => i,
        Err(f) => return Outcome::Failed(f),
    };
    let failed = |method: &str, e: String| {
        Outcome::Failed(Failure::new(NO_LEASE).with("interface", ifname).with("method", method).with("exception", e))
    };
    let (method, did) = match detect(sys) {
        Some(Stack::Networkd) => {
            let deadline = Instant::now() + wait;
            // networkd drops its lease when the carrier goes and asks again by itself when it comes back
            if networkd_lease(sys, index).is_none()
                && networkd_wait_lease(sys, index, (Instant::now() + CARRIER_LEASE_WAIT.min(wait / 2)).min(deadline))
            {
                ("systemd-networkd", "its own new lease after the carrier came back".to_string())
            } else {
                match networkd_reconfigure(sys, ifname, index, deadline) {
                    Ok(Relet::Renewed) => ("systemd-networkd", format!("networkctl reconfigure {ifname}")),
                    Ok(Relet::Kept) => {
                        ("systemd-networkd", format!("networkctl reconfigure {ifname}; the old lease stayed in place"))
                    }
                    Ok(Relet::NoLease) => {
                        ("systemd-networkd", format!("networkctl reconfigure {ifname}; no lease file since"))
                    }
                    Err(e) => match run_ok(sys, &Command::new("networkctl", &["renew", ifname])) {
                        Ok(()) => ("systemd-networkd", format!("networkctl renew {ifname} (reconfigure failed: {e})")),
                        Err(e2) => return failed("systemd-networkd", format!("{e}; {e2}")),
                    },
                }
            }
        }
        Some(Stack::NetworkManager) => match run_ok(sys, &nm_connect(ifname, wait)) {
            Ok(()) => ("NetworkManager", format!("nmcli device connect {ifname}")),
            Err(e) => return failed("NetworkManager", e),
        },
        Some(Stack::Wicked) => match run_ok(sys, &Command::new("ifup", &[ifname])) {
            Ok(()) => ("wicked", format!("ifup {ifname}")),
            Err(e) => return failed("wicked", e),
        },
        Some(Stack::Dhcpcd(_)) => match run_ok(sys, &Command::new("dhcpcd", &["-n", ifname])) {
            Ok(()) => ("dhcpcd", format!("dhcpcd -n {ifname}")),
            Err(e) => return failed("dhcpcd", e),
        },
        Some(Stack::Dhclient(procs)) => match renew_dhclient(sys, &procs, ifname, wait) {
            Ok(d) => ("dhclient", d),
            Err(RenewError::Skip(r)) => return Outcome::Skipped(r),
            Err(RenewError::Fail(e)) => return failed("dhclient", e),
        },
        None if sys.has_program("dhclient") => match renew_dhclient(sys, &[], ifname, wait) {
            Ok(d) => ("dhclient", d),
            Err(RenewError::Skip(r)) => return Outcome::Skipped(r),
            Err(RenewError::Fail(e)) => return failed("dhclient", e),
        },
        None => {
            return Outcome::Skipped(
                "no DHCP client found (systemd-networkd, NetworkManager, dhclient, wicked, dhcpcd): lease not renewed"
                    .into(),
            )
        }
    };
    let (a, routed) = wait_for_lease(sys, index, reach, Instant::now() + wait);
    if a.is_empty() {
        return failed(method, format!("{did}: no IPv4 address within {wait:?}"));
    }
    let shown: Vec<String> = a.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
    let routes = match reach {
        Some(t) if !routed => format!(" (no route to {t} through it yet)"),
        _ => String::new(),
    };
    Outcome::Done(format!("renewed the lease of {ifname} through {method} ({did}): {}{routes}", shown.join(" ")))
}

enum RenewError {
    Skip(String),
    Fail(String),
}

fn renew_dhclient(
    sys: &dyn System,
    procs: &[DhclientProc],
    ifname: &str,
    wait: Duration,
) -> Result<String, RenewError> {
    let Some(p) = procs.iter().find(|p| p.interfaces().iter().any(|i| i == ifname)) else {
        // no client for this interface: a new one, configured like the others
        let args = dhclient_fresh_args(sys, procs, ifname);
        return match dhclient_once(sys, &args, wait) {
            Ok(()) => Ok(format!("new dhclient for {ifname}")),
            Err(e) => {
                let _ = run_ok(sys, &dhclient_cmd("-nw", &args));
                Err(RenewError::Fail(e))
            }
        };
    };
    if p.is_foreground() {
        return Err(RenewError::Skip(format!(
            "dhclient pid {} runs in the foreground (-d) under a service manager: not restarted",
            p.pid
        )));
    }
    let args = without_mode(&p.args);
    // release (DHCPRELEASE, stops the running client through its pid file), then ask again
    run_ok(sys, &dhclient_cmd("-r", &args)).map_err(RenewError::Fail)?;
    match dhclient_once(sys, &args, wait) {
        Ok(()) => Ok(format!("dhclient -r then -1 (pid {} replaced)", p.pid)),
        Err(e) => {
            // never leave the interface without a client: it goes on in the background
            let _ = run_ok(sys, &dhclient_cmd("-nw", &args));
            Err(RenewError::Fail(e))
        }
    }
}

/// The NIC to watch in the pool: the link carrying `imds_mac` (IMDS's first interface) when given, else the one
/// the lowest-metric IPv4 default route leaves through, else the only candidate Ethernet link that is up.
pub fn pool_nic(sys: &dyn System, imds_mac: Option<&str>) -> Result<Link, Failure> {
    let links = sys.links().map_err(|e| watch_failed("read links", e))?;
    let vfs = vf_names(sys);
    if let Some(mac) = imds_mac {
        if let Some(l) = resolve(mac, &links, &vfs) {
            return Ok(l);
        }
    }
    if let Ok(routes) = sys.ipv4_routes() {
        let default = routes
            .iter()
            .filter(|r| r.prefix_len == 0 && r.table == crate::system::RT_TABLE_MAIN)
            .filter_map(|r| r.hops.first().map(|h| (r.metric, h.oif)))
            .min();
        if let Some(l) = default.and_then(|(_, oif)| links.iter().find(|l| l.index == oif)) {
            return Ok(l.clone());
        }
    }
    let up: Vec<&Link> = links.iter().filter(|l| is_candidate(l, &vfs) && l.is_up()).collect();
    match up.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(Failure::new(NO_INTERFACE).with("imds_mac", imds_mac.unwrap_or("")).with("links", link_names(&links))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duties::dhcp_client::{running_dhclients, NETWORKD_STATE, NM_RUN};
    use crate::system::record::{LinkStep, RecordingSystem};
    use crate::system::{
        CommandOutput, RealSystem, IFF_LOOPBACK, IFF_LOWER_UP, IFF_RUNNING, IF_OPER_LOWERLAYERDOWN, IF_OPER_UP,
    };
    use std::net::Ipv4Addr;

    const MAC0: &str = "000D3A047598";
    /// Every program a DHCP method may run: the ones a test does not script are "not installed", so a unit test
    /// never runs a real DHCP client on this machine.
    const TOOLS: &[&str] = &["networkctl", "nmcli", "dhclient", "dhcpcd", "ifup"];

    fn link(index: u32, name: &str, mac: &str, up: bool) -> Link {
        Link {
            index,
            name: name.into(),
            mac: mac.into(),
            link_type: ARPHRD_ETHER,
            flags: if up { IFF_UP | IFF_RUNNING | IFF_LOWER_UP | 0x1000 } else { IFF_UP | 0x1000 },
            oper_state: if up { IF_OPER_UP } else { IF_OPER_LOWERLAYERDOWN },
            carrier_down_count: Some(1),
            master: None,
        }
    }

    fn admin_down(index: u32, name: &str, mac: &str) -> Link {
        Link { flags: 0x1000, oper_state: 2, ..link(index, name, mac, false) }
    }

    fn lo() -> Link {
        Link {
            index: 1,
            name: "lo".into(),
            link_type: 772,
            flags: IFF_UP | IFF_LOOPBACK | IFF_RUNNING | IFF_LOWER_UP,
            ..Default::default()
        }
    }

    fn addr(index: u32, a: &str) -> Ipv4Address {
        Ipv4Address { index, address: a.parse().unwrap(), prefix_len: 24 }
    }

    /// A live-looking recording system with `links`, the DHCP tools in `scripted` answering `ok`, the others absent.
    fn sandbox(links: Vec<Link>, scripted: &[&str], files: &[(&str, &str)]) -> (tempfile::TempDir, RecordingSystem) {
        let (d, sys) = crate::testutil::sandbox(files);
        sys.pretend_live();
        sys.set_links(links);
        sys.set_ipv4_addresses(Vec::new());
        for t in TOOLS {
            if scripted.contains(t) {
                sys.script(t, CommandOutput { status: Some(0), ..Default::default() });
            } else {
                sys.uninstall(t);
            }
        }
        (d, sys)
    }

    fn argvs(sys: &RecordingSystem) -> Vec<String> {
        sys.commands().iter().map(|c| c.display()).collect()
    }

    const SHORT: Option<Duration> = Some(Duration::from_millis(150));
    const LONG: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn resolve_by_name_or_mac_prefers_the_synthetic_nic() {
        let vf = Link { master: Some(2), ..link(4, "enP1s1", MAC0, true) };
        let links = vec![lo(), vf.clone(), link(2, "eth0", MAC0, true), link(3, "eth1", "000D3A047599", true)];
        let none = BTreeSet::new();
        assert_eq!(resolve("eth1", &links, &none).unwrap().index, 3);
        assert_eq!(resolve("00:0d:3a:04:75:98", &links, &none).unwrap().name, "eth0");
        assert_eq!(resolve("000d3a047598", &links, &none).unwrap().name, "eth0");
        assert!(resolve("eth9", &links, &none).is_none());
        assert!(resolve("00:0d:3a:04:75:9a", &links, &none).is_none());
        // a VF not (yet) enslaved: sysfs's driver tells
        let free_vf = Link { master: None, index: 1, ..vf };
        let links = vec![free_vf, link(2, "eth0", MAC0, true)];
        let vfs: BTreeSet<String> = ["enP1s1".to_string()].into();
        assert_eq!(resolve(MAC0, &links, &vfs).unwrap().name, "eth0");
        assert_eq!(resolve(MAC0, &links, &none).unwrap().name, "enP1s1", "lowest index without sysfs facts");
    }

    #[test]
    fn start_fails_where_links_cannot_be_watched() {
        let d = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(d.path());
        match Watcher::start(&sys) {
            Err(f) => {
                assert_eq!(f.reason, WATCH_FAILED);
                assert!(f.to_string().contains("subscribe"), "{f}");
            }
            Ok(_) => panic!("a sandbox root has no links to watch"),
        }
        let real = RealSystem::new(d.path());
        assert!(Watcher::start(&real).is_err());
        assert!(matches!(renew_dhcp(&real, "eth0", None), Outcome::Skipped(r) if r == "not the running system"));
    }

    #[test]
    fn bounce_is_down_then_up_on_the_same_link() {
        let (_d, sys) =
            sandbox(vec![lo(), link(2, "eth0", MAC0, true), link(3, "eth1", "000D3A047599", true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            // an up notification (a change of something else) is not the bounce
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, true))),
            // another link's bounce is not ours
            LinkStep::Event(LinkEvent::New(link(3, "eth1", "000D3A047599", false))),
            LinkStep::Event(LinkEvent::New(link(3, "eth1", "000D3A047599", true))),
            LinkStep::Quiet,
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, false))),
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, false))),
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, true))),
            LinkStep::Event(LinkEvent::New(link(3, "eth1", "000D3A047599", false))),
        ]);
        let b = w.wait_bounce("eth0", LONG).unwrap();
        assert_eq!(b.link.name, "eth0");
        assert!(b.link.is_up());
        assert!(b.how.starts_with("event: flags 0x1001, oper state 3"), "{}", b.how);
        assert!(b.describe().starts_with("eth0 went down (event"), "{}", b.describe());
        // the rest of the script is still there for the next wait; nothing happens to eth0 any more
        match w.wait_bounce(MAC0, SHORT) {
            Err(f) => {
                assert_eq!(f.reason, BOUNCE_TIMEOUT);
                let t = f.to_string();
                assert!(t.contains("nic=000D3A047598") && t.contains("seen_down=no"), "{t}");
            }
            Ok(b) => panic!("{b:?}"),
        }
    }

    #[test]
    fn bounce_up_without_down_is_not_enough() {
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, true))),
            LinkStep::Event(LinkEvent::Overrun),
        ]);
        let f = w.wait_bounce("00:0d:3a:04:75:98", SHORT).unwrap_err();
        assert_eq!(f.reason, BOUNCE_TIMEOUT);
        assert!(f.to_string().contains("events=1"), "{f}");
        // an unknown NIC is not waited for
        let f = w.wait_bounce("eth7", None).unwrap_err();
        assert_eq!(f.reason, NO_INTERFACE);
        assert!(f.to_string().contains("links=lo,eth0"), "{f}");
    }

    #[test]
    fn bounce_seen_when_the_links_are_read_again() {
        // the notifications were lost: a quiet interval shows eth0 down, a later one up
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            LinkStep::Silently(vec![lo(), link(2, "eth0", MAC0, false)]),
            LinkStep::Quiet,
            LinkStep::Silently(vec![lo(), link(2, "eth0", MAC0, true)]),
            LinkStep::Quiet,
        ]);
        let b = w.wait_bounce("eth0", LONG).unwrap();
        assert_eq!(b.how, "seen down when the links were read again");
        // the whole bounce between two reads: the kernel's carrier-loss counter tells (after an overrun)
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        let again = Link { carrier_down_count: Some(2), ..link(2, "eth0", MAC0, true) };
        sys.script_link_events(vec![LinkStep::Silently(vec![lo(), again]), LinkStep::Event(LinkEvent::Overrun)]);
        let b = w.wait_bounce("eth0", LONG).unwrap();
        assert_eq!(b.how, "carrier lost 1 time(s) by the kernel's counter");
    }

    #[test]
    fn bounce_from_a_down_start_needs_an_event() {
        // down when the watch opened, still down when read again: not yet the bounce's down
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, false)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap().with_poll_interval(Duration::from_millis(10));
        sys.script_link_events(vec![LinkStep::Quiet, LinkStep::Silently(vec![lo(), link(2, "eth0", MAC0, true)])]);
        assert_eq!(w.wait_bounce("eth0", SHORT).unwrap_err().reason, BOUNCE_TIMEOUT);
    }

    #[test]
    fn a_vf_coming_and_going_is_no_bounce_but_a_recreated_nic_is() {
        let vf = Link { master: Some(2), ..link(4, "enP1s1", MAC0, true) };
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true), vf.clone()], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            LinkStep::Event(LinkEvent::New(Link { master: None, ..vf.clone() })),
            LinkStep::Event(LinkEvent::Del(Link { master: None, ..vf.clone() })),
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, true))),
            LinkStep::Event(LinkEvent::New(Link { index: 5, master: None, ..vf.clone() })),
        ]);
        assert_eq!(w.wait_bounce("eth0", SHORT).unwrap_err().reason, BOUNCE_TIMEOUT);
        // the NIC itself removed and added again (new index, same MAC)
        sys.script_link_events(vec![
            LinkStep::Event(LinkEvent::Del(link(2, "eth0", MAC0, true))),
            LinkStep::Event(LinkEvent::New(Link { master: Some(7), ..link(6, "enP2s2", MAC0, true) })),
            LinkStep::Event(LinkEvent::New(admin_down(7, "eth0", MAC0))),
            LinkStep::Event(LinkEvent::New(link(7, "eth0", MAC0, true))),
        ]);
        let b = w.wait_bounce("eth0", LONG).unwrap();
        assert_eq!((b.link.index, b.how.as_str()), (7, "removed"));
        // the same, every notification lost
        sys.script_link_events(vec![LinkStep::Silently(vec![lo(), link(8, "eth0", MAC0, true)]), LinkStep::Quiet]);
        let b = w.wait_bounce("eth0", LONG).unwrap();
        assert_eq!((b.link.index, b.how.as_str()), (8, "absent when the links were read again"));
    }

    #[test]
    fn detach_then_attach_brings_the_new_link_up() {
        let (_d, sys) =
            sandbox(vec![lo(), link(2, "eth0", MAC0, true), link(3, "docker0", "0242AC110002", true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        let vf = Link { master: Some(9), ..link(8, "enP1s1", "000D3A0475AA", false) };
        let bridge_port = Link { master: Some(3), ..link(10, "veth1", "AA0D3A0475AA", false) };
        let tun = Link { link_type: 65534, ..link(11, "tun0", "", false) };
        sys.script_link_events(vec![
            LinkStep::Event(LinkEvent::New(link(2, "eth0", MAC0, false))),
            LinkStep::Event(LinkEvent::Del(link(3, "docker0", "0242AC110002", true))),
            LinkStep::Event(LinkEvent::Del(link(2, "eth0", MAC0, false))),
            // not candidates: a VF, an enslaved port, a non-Ethernet link, the loopback
            LinkStep::Event(LinkEvent::New(vf)),
            LinkStep::Event(LinkEvent::New(bridge_port)),
            LinkStep::Event(LinkEvent::New(tun)),
            LinkStep::Event(LinkEvent::New(lo())),
            LinkStep::Event(LinkEvent::New(admin_down(9, "eth1", "000D3A0475AA"))),
        ]);
        let d = w.wait_detach("eth0", LONG).unwrap();
        assert_eq!((d.index, d.name.as_str()), (2, "eth0"));
        let a = w.wait_attach(LONG, 10, Duration::from_millis(1)).unwrap();
        assert_eq!((a.link.name.as_str(), a.up), ("eth1", true));
        assert!(a.link.is_up());
        assert_eq!(sys.links_set_up(), [9]);
        // each link is handed out once
        assert_eq!(w.wait_attach(SHORT, 10, Duration::from_millis(1)).unwrap_err().reason, ATTACH_TIMEOUT);
    }

    #[test]
    fn detach_and_attach_seen_when_the_links_are_read_again() {
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            LinkStep::Silently(vec![lo()]),
            LinkStep::Quiet,
            LinkStep::Silently(vec![lo(), link(5, "eth0", "000D3A0475AB", true)]),
            LinkStep::Event(LinkEvent::Overrun),
        ]);
        assert_eq!(w.wait_detach("eth0", LONG).unwrap().index, 2);
        let a = w.wait_attach(LONG, 10, Duration::from_millis(1)).unwrap();
        assert_eq!((a.link.index, a.up), (5, true));
        assert!(sys.links_set_up().is_empty(), "already up: not touched");
        // a link that never gets carrier
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![LinkStep::Event(LinkEvent::New(link(3, "eth1", "000D3A0475AB", false)))]);
        let a = w.wait_attach(LONG, 3, Duration::from_millis(1)).unwrap();
        assert!(!a.up);
        assert!(sys.links_set_up().is_empty(), "administratively up already");
        assert_eq!(w.wait_detach("eth0", SHORT).unwrap_err().reason, DETACH_TIMEOUT);
    }

    #[test]
    fn reattach_gets_leases_until_the_primary() {
        let (_d, sys) = sandbox(
            vec![lo(), link(2, "eth0", MAC0, true)],
            &["dhclient"],
            &[("/run/dhclient.eth0.pid", "4242\n"), ("/proc/4242/cmdline", CMDLINE)],
        );
        let mut w = Watcher::start(&sys).unwrap();
        sys.script_link_events(vec![
            LinkStep::Event(LinkEvent::Del(link(2, "eth0", MAC0, true))),
            LinkStep::Event(LinkEvent::New(admin_down(3, "eth1", "000D3A0475A1"))),
            LinkStep::Event(LinkEvent::New(admin_down(4, "eth2", "000D3A0475A2"))),
            LinkStep::Event(LinkEvent::New(admin_down(5, "eth3", "000D3A0475A3"))),
        ]);
        // eth1 gets no lease, eth2 one but is not the primary, eth3 is
        sys.set_ipv4_addresses(vec![addr(4, "10.1.0.4"), addr(5, "10.0.0.5"), addr(5, "169.254.3.3")]);
        let opts = ReattachOptions {
            timeout: LONG,
            dhcp_timeout: Duration::from_millis(300),
            link_up_tries: 5,
            link_up_interval: Duration::from_millis(1),
            reach: None,
        };
        let mut asked = Vec::new();
        let r = w
            .wait_reattach("eth0", &opts, &mut |n| {
                asked.push(n.link.name.clone());
                n.link.mac == "000D3A0475A3"
            })
            .unwrap();
        assert_eq!(asked, ["eth2", "eth3"]);
        assert_eq!(r.detached.name, "eth0");
        assert_eq!(r.primary().unwrap().link.name, "eth3");
        assert_eq!(r.primary().unwrap().addresses, vec![addr(5, "10.0.0.5")]);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].starts_with("eth1: failure to obtain DHCP lease"), "{:?}", r.skipped);
        let text = r.describe();
        assert!(text.contains("eth0 detached; hot-attached: eth2 (10.1.0.4/24), eth3 (10.0.0.5/24)"), "{text}");
        assert_eq!(sys.links_set_up(), [3, 4, 5]);
        // a new client with the running one's lease directory, per interface, until the deadline; eth2 and eth3
        // had their addresses at once (configured by the stack)
        // — after the detached eth0's own client was asked to stop (its fake process stays: reported as running)
        let cmds = argvs(&sys);
        assert!(cmds.len() > 1);
        assert!(cmds[0].starts_with("dhclient -x -4 -v -i -pf /run/dhclient.eth0.pid "), "{cmds:?}");
        assert!(text.contains("; dhclient pid 4242 of the detached eth0 still runs"), "{text}");
        for c in &cmds[1..] {
            assert_eq!(c, "dhclient -1 -4 -pf /run/dhclient.eth1.pid -lf /var/lib/dhcp/dhclient.eth1.leases eth1");
        }
    }

    #[test]
    fn reattach_times_out() {
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        let mut w = Watcher::start(&sys).unwrap();
        let opts = ReattachOptions { timeout: SHORT, ..Default::default() };
        assert_eq!(w.wait_reattach("eth0", &opts, &mut |_| true).unwrap_err().reason, DETACH_TIMEOUT);
        sys.script_link_events(vec![LinkStep::Event(LinkEvent::Del(link(2, "eth0", MAC0, true)))]);
        let f = w.wait_reattach("eth0", &opts, &mut |_| true).unwrap_err();
        assert_eq!(f.reason, ATTACH_TIMEOUT);
        assert!(f.to_string().contains("with_lease=0"), "{f}");
    }

    #[test]
    fn dhcp_on_a_new_link_follows_the_stack() {
        // already configured by the stack: nothing run
        let (_d, sys) =
            sandbox(vec![lo(), link(3, "eth1", "000D3A0475A1", true)], &["networkctl"], &[(NETWORKD_STATE, "x\n")]);
        sys.set_ipv4_addresses(vec![addr(3, "10.0.0.9")]);
        assert_eq!(dhcp_link(&sys, "eth1", Duration::from_secs(1)).unwrap(), vec![addr(3, "10.0.0.9")]);
        assert!(sys.commands().is_empty());
        // networkd asked once, then waited for
        sys.set_ipv4_addresses(vec![]);
        let f = dhcp_link(&sys, "eth1", Duration::from_millis(300)).unwrap_err();
        assert_eq!(f.reason, NO_LEASE);
        assert!(f.to_string().contains("method=systemd-networkd"), "{f}");
        assert_eq!(argvs(&sys), ["networkctl reconfigure eth1"]);
        // NetworkManager
        let (_d, sys) = sandbox(vec![lo(), link(3, "eth1", "000D3A0475A1", true)], &["nmcli"], &[(NM_RUN, "")]);
        sys.set_ipv4_addresses(vec![addr(1, "127.0.0.1")]);
        let _ = dhcp_link(&sys, "eth1", Duration::from_millis(100));
        assert_eq!(argvs(&sys), ["nmcli --wait 1 device connect eth1"]);
        // nothing installed
        let (_d, sys) = sandbox(vec![lo(), link(3, "eth1", "000D3A0475A1", true)], &[], &[]);
        let f = dhcp_link(&sys, "eth1", Duration::from_secs(60)).unwrap_err();
        assert!(f.to_string().contains("no DHCP client found"), "{f}");
        // dhcpcd installed but not running: one waiting run
        let (_d, sys) = sandbox(vec![lo(), link(3, "eth1", "000D3A0475A1", true)], &["dhcpcd"], &[]);
        let _ = dhcp_link(&sys, "eth1", Duration::from_millis(100));
        assert_eq!(argvs(&sys), ["dhcpcd -4 -w -t 1 eth1"]);
        // no such link
        assert_eq!(dhcp_link(&sys, "eth9", Duration::from_secs(1)).unwrap_err().reason, NO_INTERFACE);
    }

    const CMDLINE: &str = "/sbin/dhclient\0-1\0-4\0-v\0-i\0-pf\0/run/dhclient.eth0.pid\0-lf\0\
                           /var/lib/dhcp/dhclient.eth0.leases\0-I\0-df\0/var/lib/dhcp/dhclient6.eth0.leases\0eth0\0";

    #[test]
    fn renew_through_networkd_and_network_manager() {
        let lease = "/run/systemd/netif/leases/2";
        let (_d, sys) = sandbox(
            vec![lo(), link(2, "eth0", MAC0, true)],
            &["networkctl"],
            &[(NETWORKD_STATE, "x\n"), (lease, "ADDRESS=10.0.0.4\n")],
        );
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        // the lease never drops here (a networkd that kept it): the settle time (bounded by the wait), then done
        let t = Instant::now();
        let imds = Some(Ipv4Addr::new(169, 254, 169, 254));
        match renew_dhcp_within(&sys, "eth0", imds, Duration::from_millis(400)) {
            Outcome::Done(d) => assert_eq!(
                d,
                "renewed the lease of eth0 through systemd-networkd (networkctl reconfigure eth0; the old lease \
                 stayed in place): 10.0.0.4/24 (no route to 169.254.169.254 through it yet)"
            ),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(400), "{:?}", t.elapsed());
        assert_eq!(argvs(&sys), ["networkctl reconfigure eth0"]);
        // the target reached through the link (here on-link, no gateway): the lease is in place; no target, no wait
        let route = |dest: [u8; 4], prefix_len: u8, oif: u32| crate::system::Ipv4Route {
            destination: Ipv4Addr::from(dest),
            prefix_len,
            kind: crate::system::RTN_UNICAST,
            table: crate::system::RT_TABLE_MAIN,
            protocol: 16,
            metric: 100,
            hops: vec![crate::system::NextHop { oif, gateway: None }],
        };
        sys.set_routes(vec![route([168, 0, 0, 0], 7, 2)]);
        for reach in [imds, None, Some(Ipv4Addr::LOCALHOST)] {
            match renew_dhcp_within(&sys, "eth0", reach, Duration::from_millis(400)) {
                Outcome::Done(d) => assert!(d.ends_with("in place): 10.0.0.4/24"), "{d}"),
                other => panic!("{other:?}"),
            }
        }
        // through another link only: not yet
        sys.set_routes(vec![route([0, 0, 0, 0], 0, 3)]);
        assert!(matches!(renew_dhcp_within(&sys, "eth0", imds, Duration::from_millis(400)),
            Outcome::Done(d) if d.ends_with("(no route to 169.254.169.254 through it yet)")));
        sys.set_routes(vec![]);
        // reconfigure and renew both refused
        sys.script(
            "networkctl",
            CommandOutput { status: Some(1), stderr: b"Unknown command".to_vec(), ..Default::default() },
        );
        match renew_dhcp(&sys, "eth0", None) {
            Outcome::Failed(f) => {
                assert_eq!(f.reason, NO_LEASE);
                assert!(f.to_string().contains("Unknown command"), "{f}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(argvs(&sys)[5..], ["networkctl reconfigure eth0", "networkctl renew eth0"]);

        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["nmcli"], &[("/run/NetworkManager/x", "")]);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        assert!(matches!(renew_dhcp_within(&sys, "eth0", None, Duration::from_secs(30)), Outcome::Done(_)));
        assert_eq!(argvs(&sys), ["nmcli --wait 30 device connect eth0"]);
        assert_eq!(sys.commands()[0].timeout, Duration::from_secs(40));
        // no address in time
        sys.set_ipv4_addresses(vec![addr(2, "169.254.1.1")]);
        match renew_dhcp_within(&sys, "eth0", None, Duration::from_millis(100)) {
            Outcome::Failed(f) => assert!(f.to_string().contains("no IPv4 address within 100ms"), "{f}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_detached_nics_dhclient_is_stopped() {
        let files = [("/run/dhclient.eth0.pid", "4242\n"), ("/proc/4242/cmdline", CMDLINE)];
        let (_d, sys) = sandbox(vec![lo()], &["dhclient"], &files);
        // the fake process never goes away: reported as still running, after one `dhclient -x` with its arguments
        let out = stop_detached_dhclients(&sys, "eth0");
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("dhclient pid 4242 of the detached eth0 still runs"), "{out:?}");
        let rest = "-4 -v -i -pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases -I -df \
                    /var/lib/dhcp/dhclient6.eth0.leases eth0";
        assert_eq!(argvs(&sys), [format!("dhclient -x {rest}")]);
        // a client of another interface, or none at all: nothing run
        assert!(stop_detached_dhclients(&sys, "eth1").is_empty());
        // a foreground client is its service's
        let (_d, sys) = sandbox(
            vec![lo()],
            &["dhclient"],
            &[("/run/dhclient.pid", "7\n"), ("/proc/7/cmdline", "/sbin/dhclient\0-d\0-pf\0/run/dhclient.pid\0eth0\0")],
        );
        assert!(stop_detached_dhclients(&sys, "eth0")[0].contains("foreground"));
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn renew_through_networkd_follows_its_lease_file() {
        let lease = "/run/systemd/netif/leases/2";
        let eth0 = || vec![lo(), link(2, "eth0", MAC0, true)];
        // networkd at work: the lease file goes, then comes back
        let later = |root: &Path, steps: Vec<(u64, bool)>| {
            let file = root.join(lease.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::thread::spawn(move || {
                for (ms, present) in steps {
                    std::thread::sleep(Duration::from_millis(ms));
                    if present {
                        std::fs::write(&file, "ADDRESS=10.0.0.4\n").unwrap();
                    } else {
                        std::fs::remove_file(&file).unwrap();
                    }
                }
            })
        };
        // no lease after the bounce: networkd takes a new one by itself, nothing is run
        let (d, sys) = sandbox(eth0(), &["networkctl"], &[(NETWORKD_STATE, "x\n")]);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        let h = later(d.path(), vec![(100, true)]);
        match renew_dhcp_within(&sys, "eth0", None, Duration::from_secs(20)) {
            Outcome::Done(d) => assert!(d.contains("(its own new lease after the carrier came back)"), "{d}"),
            other => panic!("{other:?}"),
        }
        h.join().unwrap();
        assert!(sys.commands().is_empty());
        // a lease networkd held through the bounce: reconfigured, dropped a moment later, then a new one
        let (d, sys) = sandbox(eth0(), &["networkctl"], &[(NETWORKD_STATE, "x\n"), (lease, "ADDRESS=10.0.0.4\n")]);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        let h = later(d.path(), vec![(60, false), (150, true)]);
        let t = Instant::now();
        match renew_dhcp_within(&sys, "eth0", None, Duration::from_secs(20)) {
            Outcome::Done(d) => assert!(d.contains("(networkctl reconfigure eth0): 10.0.0.4/24"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(200), "{:?}", t.elapsed());
        h.join().unwrap();
        assert_eq!(argvs(&sys), ["networkctl reconfigure eth0"]);
        // no lease, ever: asked after half the wait, and said so
        let (_d, sys) = sandbox(eth0(), &["networkctl"], &[(NETWORKD_STATE, "x\n")]);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        match renew_dhcp_within(&sys, "eth0", None, Duration::from_millis(300)) {
            Outcome::Done(d) => assert!(d.contains("(networkctl reconfigure eth0; no lease file since)"), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renew_restarts_the_interfaces_dhclient_with_its_own_arguments() {
        let files = [("/run/dhclient.eth0.pid", "4242\n"), ("/proc/4242/cmdline", CMDLINE)];
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["dhclient"], &files);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        match renew_dhcp(&sys, "eth0", None) {
            Outcome::Done(d) => {
                assert!(d.contains("through dhclient (dhclient -r then -1 (pid 4242 replaced))"), "{d}")
            }
            other => panic!("{other:?}"),
        }
        let rest = "-4 -v -i -pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases -I -df \
                    /var/lib/dhcp/dhclient6.eth0.leases eth0";
        assert_eq!(argvs(&sys), [format!("dhclient -r {rest}"), format!("dhclient -1 {rest}")]);
        // a failing release: nothing else is run
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["dhclient"], &files);
        sys.script("dhclient", CommandOutput { status: Some(2), stderr: b"no lease".to_vec(), ..Default::default() });
        match renew_dhcp(&sys, "eth0", None) {
            Outcome::Failed(f) => {
                assert_eq!(f.reason, NO_LEASE);
                assert!(f.to_string().contains("method=dhclient"), "{f}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(argvs(&sys), [format!("dhclient -r {rest}")]);
        // a foreground client belongs to its service manager
        let (_d, sys) = sandbox(
            vec![lo(), link(2, "eth0", MAC0, true)],
            &["dhclient"],
            &[("/run/dhclient.pid", "7\n"), ("/proc/7/cmdline", "/sbin/dhclient\0-d\0-pf\0/run/dhclient.pid\0eth0\0")],
        );
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Skipped(r) if r.contains("foreground")));
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn renew_starts_a_client_like_the_others_when_none_serves_the_interface() {
        let files = [
            ("/run/dhclient.eth1.pid", "51\n"),
            (
                "/proc/51/cmdline",
                "dhclient\0-nw\0-cf\0/etc/dhcp/x.conf\0-sf\0/usr/libexec/s\0-pf\0/run/dhclient.eth1.pid\0-lf\0\
                 /var/lib/dhclient/dhclient.eth1.leases\0eth1\0",
            ),
            ("/var/lib/dhcp/keep", ""),
        ];
        // the new client writes its pid file once in the background
        let new_client = [("/run/dhclient.eth0.pid", "52\n"), ("/proc/52/cmdline", "dhclient\0-4\0eth0\0")];
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["dhclient"], &files);
        sys.script_effect("dhclient", &new_client);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Done(d) if d.contains("new dhclient for eth0")));
        assert_eq!(running_dhclients(&sys).len(), 2, "the new client is found by the next look");
        assert_eq!(
            argvs(&sys),
            ["dhclient -1 -4 -cf /etc/dhcp/x.conf -sf /usr/libexec/s -pf /run/dhclient.eth0.pid -lf \
              /var/lib/dhclient/dhclient.eth0.leases eth0"]
        );
        // no client runs at all, dhclient installed: the distribution's lease directory
        let (d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["dhclient"], &[("/var/lib/dhclient/x", "")]);
        sys.script_effect("dhclient", &new_client);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Done(_)));
        std::fs::remove_file(d.path().join("run/dhclient.eth0.pid")).unwrap();
        assert_eq!(
            argvs(&sys),
            ["dhclient -1 -4 -pf /run/dhclient.eth0.pid -lf /var/lib/dhclient/dhclient.eth0.leases eth0"]
        );
        // and when it fails, it goes on in the background
        sys.script("dhclient", CommandOutput { status: Some(2), ..Default::default() });
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Failed(_)));
        assert_eq!(
            argvs(&sys)[1..],
            [
                "dhclient -1 -4 -pf /run/dhclient.eth0.pid -lf /var/lib/dhclient/dhclient.eth0.leases eth0",
                "dhclient -nw -4 -pf /run/dhclient.eth0.pid -lf /var/lib/dhclient/dhclient.eth0.leases eth0"
            ]
        );
    }

    #[test]
    fn renew_through_dhcpcd_wicked_or_nothing() {
        let files = [("/run/dhcpcd/pid", "88\n"), ("/proc/88/cmdline", "dhcpcd: [manager] [ip4] [ip6]\0")];
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["dhcpcd"], &files);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Done(d) if d.contains("dhcpcd -n eth0")));
        assert_eq!(argvs(&sys), ["dhcpcd -n eth0"]);

        let files = [("/run/wicked/nanny/x", ""), ("/etc/sysconfig/network/dhcp", "")];
        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &["ifup"], &files);
        sys.set_ipv4_addresses(vec![addr(2, "10.0.0.4")]);
        assert!(matches!(renew_dhcp(&sys, "eth0", None), Outcome::Done(_)));
        assert_eq!(argvs(&sys), ["ifup eth0"]);

        let (_d, sys) = sandbox(vec![lo(), link(2, "eth0", MAC0, true)], &[], &[]);
        match renew_dhcp(&sys, "eth0", None) {
            Outcome::Skipped(r) => assert!(r.starts_with("no DHCP client found"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(renew_dhcp(&sys, "eth9", None), Outcome::Failed(f) if f.reason == NO_INTERFACE));
    }

    #[test]
    fn pool_nic_by_mac_default_route_or_the_only_one() {
        use crate::system::{Ipv4Route, NextHop, RTN_UNICAST, RT_TABLE_MAIN};
        let (_d, sys) =
            sandbox(vec![lo(), link(2, "eth0", MAC0, true), link(3, "eth1", "000D3A047599", true)], &[], &[]);
        assert_eq!(pool_nic(&sys, Some("00:0d:3a:04:75:99")).unwrap().name, "eth1");
        let f = pool_nic(&sys, None).unwrap_err();
        assert_eq!(f.reason, NO_INTERFACE);
        let default = |oif: u32, metric: u32| Ipv4Route {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            kind: RTN_UNICAST,
            table: RT_TABLE_MAIN,
            protocol: 16,
            metric,
            hops: vec![NextHop { oif, gateway: Some(Ipv4Addr::new(10, 0, 0, 1)) }],
        };
        sys.set_routes(vec![default(3, 200), default(2, 100)]);
        assert_eq!(pool_nic(&sys, None).unwrap().name, "eth0");
        assert_eq!(pool_nic(&sys, Some("000D3A0475FF")).unwrap().name, "eth0", "unknown MAC: the default route");
        let (_d, sys) =
            sandbox(vec![lo(), link(2, "eth0", MAC0, true), link(3, "eth1", "000D3A047599", false)], &[], &[]);
        assert_eq!(pool_nic(&sys, None).unwrap().name, "eth0");
    }

    // --- real netlink in private namespaces: veth pairs, a DHCP server (dnsmasq) and dhclient ------------------

    const CHILD_ENV: &str = "AZPROV_PPS_NETNS_CHILD";
    /// The script every test dhclient runs (the image's dhclient-script could touch this machine's resolver).
    const SCRIPT_ENV: &str = "AZPROV_PPS_DHCLIENT_SCRIPT";

    /// Re-run test `name` in fresh namespaces (see [`crate::testutil::rerun_in_namespaces`]). `None` when skipped.
    fn in_namespaces(name: &str, tools: &[&str], env: &[(&str, String)]) -> Option<String> {
        let path = format!("duties::pps_network::tests::{name}");
        let text = crate::testutil::rerun_in_namespaces(&path, CHILD_ENV, tools, env, "azprov-pps-child-ok")?;
        println!("{text}");
        Some(text)
    }

    /// In the child: fresh namespaces, a private `/run`, and the DHCP server's namespace.
    fn child_setup() -> bool {
        if !crate::testutil::enter_child_namespaces(CHILD_ENV) {
            return false;
        }
        sh(&["ip", "netns", "add", "azpsrv"]);
        true
    }

    use crate::testutil::sh;

    fn wait_up(sys: &RealSystem, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sys.links().unwrap().iter().any(|l| l.name == name && l.is_up()) {
            assert!(Instant::now() < deadline, "{name} never came up: {:?}", sys.links());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Run `steps` in a thread after `delay`, while the caller waits.
    fn later(delay_ms: u64, steps: Vec<Vec<&'static str>>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            for s in steps {
                sh(&s);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    }

    /// Running and Savable signals over real netlink: a veth pair whose other end lives in another namespace
    /// (the "host" side taking the link down and up), deleted and replaced by a new pair.
    #[test]
    fn root_netns_link_waits() {
        if std::env::var_os(CHILD_ENV).is_some() {
            if child_setup() {
                link_waits_child();
            }
            return;
        }
        in_namespaces("root_netns_link_waits", &[], &[]);
    }

    fn link_waits_child() {
        let sys = RealSystem::new("/");
        sh(&["ip", "link", "add", "azp0", "address", "00:0d:3a:00:00:01", "type", "veth", "peer", "name", "azp9"]);
        sh(&["ip", "link", "set", "azp9", "netns", "azpsrv"]);
        sh(&["ip", "-n", "azpsrv", "link", "set", "azp9", "up"]);
        sh(&["ip", "link", "set", "azp0", "up"]);
        wait_up(&sys, "azp0");

        // Running, the bounce queued before the wait (subscribed first, as before the intermediate Ready)
        let mut w = Watcher::start(&sys).unwrap();
        sh(&["ip", "-n", "azpsrv", "link", "set", "azp9", "down"]);
        sh(&["ip", "-n", "azpsrv", "link", "set", "azp9", "up"]);
        let b = w.wait_bounce("azp0", LONG).unwrap();
        println!("bounce: {}", b.describe());
        assert_eq!(b.link.name, "azp0");
        assert!(b.how.starts_with("event"), "{}", b.how);
        // nothing more: a bounded wait ends
        let mut w = Watcher::start(&sys).unwrap().with_poll_interval(Duration::from_millis(50));
        assert_eq!(w.wait_bounce("azp0", Some(Duration::from_millis(300))).unwrap_err().reason, BOUNCE_TIMEOUT);
        // by MAC, while waiting
        let t = later(
            200,
            vec![
                vec!["ip", "-n", "azpsrv", "link", "set", "azp9", "down"],
                vec!["ip", "-n", "azpsrv", "link", "set", "azp9", "up"],
            ],
        );
        let b = w.wait_bounce("00:0d:3a:00:00:01", LONG).unwrap();
        t.join().unwrap();
        assert_eq!(b.link.name, "azp0");
        // an administrative down/up of the NIC itself counts too
        let mut w = Watcher::start(&sys).unwrap();
        sh(&["ip", "link", "set", "azp0", "down"]);
        sh(&["ip", "link", "set", "azp0", "up"]);
        assert_eq!(w.wait_bounce("azp0", LONG).unwrap().link.name, "azp0");

        // Savable: the pool NIC goes away, another one is hot-attached (down: the watcher brings it up)
        let mut w = Watcher::start(&sys).unwrap();
        let t = later(
            200,
            vec![
                vec!["ip", "link", "del", "azp0"],
                vec![
                    "ip",
                    "link",
                    "add",
                    "azp1",
                    "address",
                    "00:0d:3a:00:00:02",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "azp8",
                    "netns",
                    "azpsrv",
                ],
                vec!["ip", "-n", "azpsrv", "link", "set", "azp8", "up"],
            ],
        );
        let d = w.wait_detach("00:0d:3a:00:00:01", LONG).unwrap();
        assert_eq!(d.name, "azp0");
        let a = w.wait_attach(LONG, LINK_UP_TRIES, LINK_UP_INTERVAL).unwrap();
        t.join().unwrap();
        println!("attached: {a:?}");
        assert_eq!((a.link.name.as_str(), a.link.mac.as_str(), a.up), ("azp1", "000D3A000002", true));
        let shown = std::process::Command::new("ip").args(["-o", "link", "show", "azp1"]).output().unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(shown.contains("state UP") && shown.contains("LOWER_UP"), "{shown}");
        // nothing else attached
        assert_eq!(
            w.wait_attach(Some(Duration::from_millis(300)), 10, LINK_UP_INTERVAL).unwrap_err().reason,
            ATTACH_TIMEOUT
        );
        // the pool NIC's name is unknown now
        assert_eq!(Watcher::start(&sys).unwrap().wait_detach("azp0", None).unwrap_err().reason, NO_INTERFACE);
        println!("azprov-pps-child-ok");
    }

    /// Running with a real DHCP exchange: after the bounce, the interface's dhclient is replaced and gets a new
    /// lease; Savable: the NIC is replaced by a new one, which gets a lease from a new dhclient configured like
    /// the running ones.
    #[test]
    fn root_netns_dhcp_after_bounce_and_reattach() {
        if std::env::var_os(CHILD_ENV).is_some() {
            if child_setup() {
                dhcp_child();
            }
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // dhclient-script stand-in: sets and drops the address, nothing else
        let script = t.path().join("dhclient-script");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$reason\" in\n  BOUND|RENEW|REBIND|REBOOT) ip -4 addr flush dev \"$interface\"; \
             ip addr add \"$new_ip_address/24\" dev \"$interface\" ;;\n  EXPIRE|FAIL|RELEASE|STOP) ip -4 addr flush dev \
             \"$interface\" ;;\nesac\nexit 0\n",
        )
        .unwrap();
        // a `dhclient` first on PATH that refuses to run without that script
        let real =
            ["/usr/sbin/dhclient", "/sbin/dhclient", "/usr/bin/dhclient"].into_iter().find(|p| Path::new(p).exists());
        let Some(real) = real else {
            assert!(std::env::var("AZPROV_REQUIRE_SHARED").as_deref() != Ok("1"), "dhclient is not installed");
            eprintln!("skipping root_netns_dhcp_after_bounce_and_reattach: dhclient is not installed");
            return;
        };
        let bin = t.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let wrapper = bin.join("dhclient");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\ncase \" $* \" in *\" -sf {s} \"*) exec {real} \"$@\" ;; esac\n\
                 echo \"refusing dhclient without the test script: $*\" >&2\nexit 99\n",
                s = script.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [&script, &wrapper] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        let env =
            [("PATH", path), (SCRIPT_ENV, script.display().to_string()), ("TMPDIR", t.path().display().to_string())];
        in_namespaces("root_netns_dhcp_after_bounce_and_reattach", &["dnsmasq", "dhclient"], &env);
    }

    fn dhcp_child() {
        let script = std::env::var(SCRIPT_ENV).unwrap();
        let t = tempfile::tempdir().unwrap();
        let tp = |n: &str| t.path().join(n).display().to_string();
        // the server: a bridge in its own namespace, each client link's peer a port of it
        for c in [
            vec!["ip", "-n", "azpsrv", "link", "add", "br0", "type", "bridge", "forward_delay", "0"],
            vec!["ip", "-n", "azpsrv", "addr", "add", "10.99.0.1/24", "dev", "br0"],
            vec!["ip", "-n", "azpsrv", "link", "set", "br0", "up"],
            vec!["ip", "link", "add", "azp1", "type", "veth", "peer", "name", "azp0"],
            vec!["ip", "link", "set", "azp0", "netns", "azpsrv"],
            vec!["ip", "-n", "azpsrv", "link", "set", "azp0", "master", "br0", "up"],
            vec!["ip", "link", "set", "azp1", "up"],
            // a second client link without a server: its dhclient keeps running, as on a multi-NIC VM
            vec!["ip", "link", "add", "azp7", "type", "veth", "peer", "name", "azp6", "netns", "azpsrv"],
            vec!["ip", "-n", "azpsrv", "link", "set", "azp6", "up"],
            vec!["ip", "link", "set", "azp7", "up"],
        ] {
            sh(&c);
        }
        let log = t.path().join("dnsmasq.log");
        let _server = crate::testutil::Dnsmasq::start("azpsrv", "br0", t.path());
        let conf = tp("dhclient.conf");
        std::fs::write(&conf, "timeout 15;\ninitial-interval 1;\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let dhclient = |mode: &str, ifname: &str| {
            let (pf, lf) = (format!("/run/dhclient.{ifname}.pid"), tp(&format!("dhclient.{ifname}.leases")));
            sh(&["dhclient", mode, "-4", "-sf", &script, "-cf", &conf, "-pf", &pf, "-lf", &lf, ifname]);
        };
        dhclient("-nw", "azp7");
        let started = Instant::now();
        dhclient("-1", "azp1");
        println!("first lease in {:?}", started.elapsed());
        let sys = RealSystem::new("/");
        // the image's clients run (they write their pid files just after forking, a moment after `sh` returned)
        for ifname in ["azp1", "azp7"] {
            let pid_file = format!("/run/dhclient.{ifname}.pid");
            let deadline = Instant::now() + Duration::from_secs(10);
            assert!(wait_for_daemon(&sys, &pid_file, "dhclient", None, deadline).is_some(), "{pid_file}");
        }
        let index = |n: &str| sys.links().unwrap().iter().find(|l| l.name == n).map(|l| l.index).unwrap();
        let first = addresses_of(&sys, index("azp1"));
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].address.octets()[..3], [10, 99, 0]);
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        // ACKs the server sent to a MAC (upper-case hex without colons, as `Link::mac`). A lost ACK or OFFER while a
        // bridge port comes up makes the client retransmit and the server answer again, so counts are lower bounds.
        let acks_to = |text: &str, mac: &str| {
            text.lines()
                .filter(|l| l.contains("DHCPACK(br0)"))
                .filter(|l| l.split_whitespace().any(|w| w.replace(':', "").eq_ignore_ascii_case(mac)))
                .count()
        };
        let mac1 = sys.links().unwrap().into_iter().find(|l| l.name == "azp1").unwrap().mac;
        let acks_before_bounce = acks_to(&log_text(), &mac1);
        assert!(acks_before_bounce >= 1, "{}", log_text());

        // Running: the host takes the link down and up (here: the bridge port), the lease is dropped and renewed
        let mut w = Watcher::start(&sys).unwrap();
        sh(&["ip", "-n", "azpsrv", "link", "set", "azp0", "down"]);
        sh(&["ip", "-n", "azpsrv", "link", "set", "azp0", "up"]);
        let b = w.wait_bounce("azp1", LONG).unwrap();
        println!("bounce: {}", b.describe());
        let started = Instant::now();
        // the server's address is reached on-link through azp1 once the lease is back (real netlink route dump)
        let server = Some(Ipv4Addr::new(10, 99, 0, 1));
        let outcome = renew_dhcp_within(&sys, "azp1", server, Duration::from_secs(30));
        println!("renew: {outcome:?} in {:?}", started.elapsed());
        match &outcome {
            Outcome::Done(d) => {
                assert!(d.contains("through dhclient (dhclient -r then -1 (pid ") && d.contains("10.99.0."), "{d}");
                assert!(!d.contains("no route"), "{d}");
            }
            other => panic!("{other:?}\n{}", log_text()),
        }
        // the lease was dropped, not renewed: a new DISCOVER after the first ACK (the DHCPRELEASE itself may be lost
        // while the server's port is still coming up, as on the platform while the NIC moves)
        let text = log_text();
        let exchange: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("DHCP") && w.ends_with("(br0)")))
            .collect();
        let first_ack = exchange.iter().position(|m| *m == "DHCPACK(br0)").unwrap();
        assert!(exchange[first_ack..].contains(&"DHCPDISCOVER(br0)"), "{exchange:?}");
        println!("release seen by the server: {}", exchange.contains(&"DHCPRELEASE(br0)"));
        assert!(acks_to(&text, &mac1) > acks_before_bounce, "a new ACK after the bounce:\n{text}");
        let serving =
            |n: &str| running_dhclients(&sys).iter().filter(|p| p.interfaces().iter().any(|i| i == n)).count();
        assert_eq!(serving("azp1"), 1, "one client for the interface afterwards");
        assert_eq!(serving("azp7"), 1);

        // Savable: the NIC is detached, a new one hot-attached (down, the watcher brings it up) on the same server
        let mut w = Watcher::start(&sys).unwrap();
        let t2 = later(
            200,
            vec![
                vec!["ip", "link", "del", "azp1"],
                vec!["ip", "link", "add", "azp2", "type", "veth", "peer", "name", "azp3", "netns", "azpsrv"],
                vec!["ip", "-n", "azpsrv", "link", "set", "azp3", "master", "br0", "up"],
            ],
        );
        let opts = ReattachOptions {
            timeout: Some(Duration::from_secs(60)),
            dhcp_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let started = Instant::now();
        let r = w.wait_reattach("azp1", &opts, &mut |_| true);
        t2.join().unwrap();
        println!("reattach: {r:?} in {:?}", started.elapsed());
        let r = r.unwrap_or_else(|f| panic!("{f}\n{}", log_text()));
        let p = r.primary().unwrap();
        assert_eq!(p.link.name, "azp2");
        let mac2 = p.link.mac.clone();
        assert_eq!(p.addresses[0].address.octets()[..3], [10, 99, 0]);
        assert!(r.describe().starts_with("azp1 detached; hot-attached: azp2 (10.99.0."), "{}", r.describe());
        assert_eq!(serving("azp2"), 1, "a client for the new NIC, with the running ones' script");
        let p = running_dhclients(&sys).into_iter().find(|p| p.interfaces().iter().any(|i| i == "azp2")).unwrap();
        assert_eq!(p.option("-sf"), Some(script.as_str()));
        assert_eq!(p.pid_file, "/run/dhclient.azp2.pid");
        assert!(acks_to(&log_text(), &mac2) >= 1, "{}", log_text());
        println!("azprov-pps-child-ok");
    }
}
