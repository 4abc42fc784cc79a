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
use std::path::Path;
use std::time::{Duration, Instant};

use super::dhcp_client::{detect, run_ok, DhclientProc, Stack};
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

/// How often an address is looked for while DHCP runs.
const ADDRESS_POLL: Duration = Duration::from_millis(250);
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
}

impl Default for ReattachOptions {
    fn default() -> Self {
        ReattachOptions {
            timeout: None,
            dhcp_timeout: DHCP_TIMEOUT,
            link_up_tries: LINK_UP_TRIES,
            link_up_interval: LINK_UP_INTERVAL,
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
            let (now, from_state) = match input {
                Input::Event(LinkEvent::New(l)) => {
                    // the NIC came back under a new index: the same MAC, not enslaved
                    let same = l.index == target.index
                        || (gone && !target.mac.is_empty() && l.mac == target.mac && l.master.is_none());
                    if !same {
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
                Input::State(links) => match links.iter().find(|l| l.index == target.index) {
                    Some(l) => (l.clone(), true),
                    None => {
                        gone = true;
                        down.get_or_insert_with(|| "absent when the links were read again".into());
                        return Ok(None);
                    }
                },
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
        Ok(bring_up(self.sys, link, tries, interval))
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
        let mut done = Reattached { detached, nics: Vec::new(), skipped: Vec::new() };
        loop {
            let attached = self.wait_attach(left(), opts.link_up_tries, opts.link_up_interval).map_err(|f| {
                f.with("nic", nic).with("with_lease", done.nics.len()).with("without_lease", done.skipped.join("; "))
            })?;
            let name = attached.link.name.clone();
            let dhcp_for = left().map_or(opts.dhcp_timeout, |l| l.min(opts.dhcp_timeout));
            match dhcp_link(self.sys, &name, dhcp_for) {
                Ok(addresses) => {
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

/// Bring a new link up (see [`Watcher::wait_attach`]); answers it with its current state and name.
fn bring_up(sys: &dyn System, mut link: Link, tries: u32, interval: Duration) -> Attached {
    let udev = sys.is_live() && sys.exists(Path::new(UDEV_DATA));
    let udev_entry = format!("{UDEV_DATA}/n{}", link.index);
    for attempt in 0..tries.max(1) {
        if let Some(now) = sys.links().ok().and_then(|all| all.into_iter().find(|l| l.index == link.index)) {
            link = now;
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
fn addresses_of(sys: &dyn System, index: u32) -> Vec<Ipv4Address> {
    sys.ipv4_addresses()
        .unwrap_or_default()
        .into_iter()
        .filter(|a| a.index == index && !a.address.is_link_local() && !a.address.is_unspecified())
        .collect()
}

/// Wait until link `index` has an address, until `deadline`.
fn wait_for_address(sys: &dyn System, index: u32, deadline: Instant) -> Vec<Ipv4Address> {
    loop {
        let a = addresses_of(sys, index);
        if !a.is_empty() || Instant::now() >= deadline {
            return a;
        }
        std::thread::sleep(ADDRESS_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

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

fn with_first(first: &str, args: &[String]) -> Command {
    let mut argv: Vec<&str> = vec![first];
    argv.extend(args.iter().map(String::as_str));
    Command::new("dhclient", &argv)
}

/// One `dhclient -1` attempt bounded by `left`.
fn dhclient_once(sys: &dyn System, args: &[String], left: Duration) -> Result<(), String> {
    let mut cmd = with_first("-1", args);
    cmd.timeout = left.min(DHCLIENT_ATTEMPT) + Duration::from_secs(5);
    run_ok(sys, &cmd)
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
pub fn renew_dhcp(sys: &dyn System, ifname: &str) -> Outcome {
    renew_dhcp_within(sys, ifname, RENEW_WAIT)
}

/// [`renew_dhcp`] with its wait for an address bounded by `wait`. The method follows the running stack:
/// systemd-networkd `networkctl reconfigure IF` (else `networkctl renew IF`), NetworkManager `nmcli device connect
/// IF`, a `dhclient` for IF `dhclient -r <its args>` then `dhclient -1 <its args>` (should that get no lease, it is
/// started again in the background so the interface keeps a client), a `dhclient` for other interfaces only (or
/// none at all) a new `dhclient -1` for IF with their configuration, wicked `ifup IF`, dhcpcd `dhcpcd -n IF`.
/// Skipped under a root and when no DHCP client is found.
pub fn renew_dhcp_within(sys: &dyn System, ifname: &str, wait: Duration) -> Outcome {
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
    let (method, did) =
        match detect(sys) {
            Some(Stack::Networkd) => {
                let reconfigure = run_ok(sys, &Command::new("networkctl", &["reconfigure", ifname]));
                match reconfigure {
                    Ok(()) => ("systemd-networkd", format!("networkctl reconfigure {ifname}")),
                    Err(e) => match run_ok(sys, &Command::new("networkctl", &["renew", ifname])) {
                        Ok(()) => ("systemd-networkd", format!("networkctl renew {ifname} (reconfigure failed: {e})")),
                        Err(e2) => return failed("systemd-networkd", format!("{e}; {e2}")),
                    },
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
            None => return Outcome::Skipped(
                "no DHCP client found (systemd-networkd, NetworkManager, dhclient, wicked, dhcpcd): lease not renewed"
                    .into(),
            ),
        };
    let a = wait_for_address(sys, index, Instant::now() + wait);
    if a.is_empty() {
        return failed(method, format!("{did}: no IPv4 address within {} s", wait.as_secs()));
    }
    let shown: Vec<String> = a.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect();
    Outcome::Done(format!("renewed the lease of {ifname} through {method} ({did}): {}", shown.join(" ")))
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
                let _ = run_ok(sys, &with_first("-nw", &args));
                Err(RenewError::Fail(e))
            }
        };
    };
    if p.args.iter().any(|a| a == "-d") {
        return Err(RenewError::Skip(format!(
            "dhclient pid {} runs in the foreground (-d) under a service manager: not restarted",
            p.pid
        )));
    }
    let args: Vec<String> = p.args.iter().filter(|a| *a != "-1" && *a != "-nw").cloned().collect();
    // release (DHCPRELEASE, stops the running client through its pid file), then ask again
    run_ok(sys, &with_first("-r", &args)).map_err(RenewError::Fail)?;
    match dhclient_once(sys, &args, wait) {
        Ok(()) => Ok(format!("dhclient -r then -1 (pid {} replaced)", p.pid)),
        Err(e) => {
            // never leave the interface without a client: it goes on in the background
            let _ = run_ok(sys, &with_first("-nw", &args));
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
