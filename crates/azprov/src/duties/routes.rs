//! Routes to the wireserver and IMDS through the primary NIC (platform.md §9.11).
//!
//! In a VNet, DHCP option 121 installs host routes to both via the subnet gateway. When they are missing (static
//! configuration, multi-NIC setups where the default route leaves through a secondary NIC), add
//! `<target>/32 via <primary gateway> dev <primary>` over netlink, protocol `boot`. The primary NIC is the one
//! with the MAC of IMDS `network.interface[0]`, never chosen by name, never an SR-IOV VF sharing that MAC.
//! Never deletes or changes a route; a route that already carries a target's traffic (through the primary NIC,
//! or deliberately elsewhere) is left as it is. Best effort: what cannot be decided is a recorded skip.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::dhcp_client::wait_for_lease;
use super::nics::{self, Nic};
use super::Outcome;
use crate::report::Failure;
use crate::system::{Ipv4Route, NewIpv4Route, System, RTN_UNICAST, RT_TABLE_MAIN};

/// The IMDS address.
pub const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// `RT_TABLE_LOCAL`.
const RT_TABLE_LOCAL: u32 = 255;

/// How the main table reaches a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The best matching route leaves through the primary NIC (description of the route).
    Primary(String),
    /// The target is an address of this machine (local table), or not routable by a host route (loopback…).
    Local(String),
    /// The best matching route is a specific route that leaves another way (another NIC, blackhole…): somebody
    /// put it there on purpose, so it is left alone.
    Elsewhere(String),
    /// No route, or only a default route that leaves through another interface: a host route is needed.
    Missing(String),
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// Whether `route`'s destination prefix contains `target`.
pub fn route_contains(route: &Ipv4Route, target: Ipv4Addr) -> bool {
    route.prefix_len <= 32
        && u32::from(route.destination) & mask(route.prefix_len) == u32::from(target) & mask(route.prefix_len)
}

/// `168.63.129.16/32 via 10.0.0.1 dev eth0 metric 100` (names from `names`, else `if#N`).
pub fn describe(route: &Ipv4Route, names: &HashMap<u32, String>) -> String {
    let dest = if route.prefix_len == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", route.destination, route.prefix_len)
    };
    let mut s = match route.kind {
        RTN_UNICAST => dest,
        6 => format!("blackhole {dest}"),
        7 => format!("unreachable {dest}"),
        8 => format!("prohibit {dest}"),
        9 => format!("throw {dest}"),
        k => format!("type {k} {dest}"),
    };
    for hop in &route.hops {
        if let Some(gw) = hop.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        match names.get(&hop.oif) {
            Some(n) => s.push_str(&format!(" dev {n}")),
            None => s.push_str(&format!(" dev if#{}", hop.oif)),
        }
    }
    if route.metric != 0 {
        s.push_str(&format!(" metric {}", route.metric));
    }
    s
}

/// The main-table route the kernel would pick for `target` (longest prefix, then lowest metric) when no policy
/// rule sends the traffic elsewhere.
pub fn best_route(routes: &[Ipv4Route], target: Ipv4Addr) -> Option<&Ipv4Route> {
    routes
        .iter()
        .filter(|r| r.table == RT_TABLE_MAIN && route_contains(r, target))
        .min_by_key(|r| (std::cmp::Reverse(r.prefix_len), r.metric))
}

/// How `target` is reached (see [`Reach`]); `primary` is the primary NIC's ifindex.
pub fn reach(routes: &[Ipv4Route], target: Ipv4Addr, primary: u32, names: &HashMap<u32, String>) -> Reach {
    if target.is_loopback() || target.is_unspecified() || target.is_multicast() || target.is_broadcast() {
        return Reach::Local(format!("{target} is not reached through a gateway"));
    }
    if routes.iter().any(|r| r.table == RT_TABLE_LOCAL && r.prefix_len == 32 && r.destination == target) {
        return Reach::Local(format!("{target} is an address of this machine"));
    }
    let Some(best) = best_route(routes, target) else { return Reach::Missing("no route".into()) };
    let text = describe(best, names);
    let all_primary = !best.hops.is_empty() && best.hops.iter().all(|h| h.oif == primary);
    if best.kind == RTN_UNICAST && all_primary {
        Reach::Primary(text)
    } else if best.prefix_len == 0 && best.kind == RTN_UNICAST {
        Reach::Missing(format!("only the default route {text}"))
    } else {
        Reach::Elsewhere(text)
    }
}

/// The primary NIC's gateway: its default route's gateway (lowest metric), else the gateway of an existing host
/// route to one of `targets` through it (an option-121 route to the other target).
pub fn primary_gateway(routes: &[Ipv4Route], primary: u32, targets: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    let via_primary = |r: &&Ipv4Route| r.table == RT_TABLE_MAIN && r.kind == RTN_UNICAST;
    let gateway = |r: &Ipv4Route| r.hops.iter().find(|h| h.oif == primary).and_then(|h| h.gateway);
    let mut defaults: Vec<&Ipv4Route> =
        routes.iter().filter(via_primary).filter(|r| r.prefix_len == 0 && gateway(r).is_some()).collect();
    defaults.sort_by_key(|r| r.metric);
    if let Some(gw) = defaults.first().and_then(|r| gateway(r)) {
        return Some(gw);
    }
    routes
        .iter()
        .filter(via_primary)
        .filter(|r| r.prefix_len == 32 && targets.contains(&r.destination))
        .find_map(gateway)
}

/// What to add, with a note per target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutePlan {
    pub add: Vec<NewIpv4Route>,
    pub notes: Vec<String>,
}

/// Decide the routes to add so that each of `targets` (label, address) is reached through `primary`, and a
/// default route when the main table has none and `add_default` is set. `Err` = why nothing can be decided
/// (a target needs a route but the primary NIC has no known gateway).
pub fn plan(
    routes: &[Ipv4Route],
    primary: &Nic,
    nics: &[Nic],
    targets: &[(&str, Ipv4Addr)],
    add_default: bool,
) -> Result<RoutePlan, String> {
    let names: HashMap<u32, String> = nics.iter().map(|n| (n.index, n.name.clone())).collect();
    let addrs: Vec<Ipv4Addr> = targets.iter().map(|t| t.1).collect();
    let gateway = primary_gateway(routes, primary.index, &addrs);
    let mut out = RoutePlan::default();
    let mut seen = Vec::new();
    for (label, target) in targets {
        if seen.contains(target) {
            continue;
        }
        seen.push(*target);
        match reach(routes, *target, primary.index, &names) {
            Reach::Primary(r) => out.notes.push(format!("{label} {target}: through {} ({r})", primary.name)),
            Reach::Local(why) => out.notes.push(format!("{label}: {why}")),
            Reach::Elsewhere(r) => out.notes.push(format!("{label} {target}: left alone ({r})")),
            Reach::Missing(why) => {
                let Some(gw) = gateway else {
                    return Err(format!(
                        "{label} {target} needs a route ({why}) but the primary NIC {} has no known gateway \
                         (no default route through it)",
                        primary.name
                    ));
                };
                out.add.push(NewIpv4Route { destination: *target, prefix_len: 32, gateway: gw, oif: primary.index });
                out.notes.push(format!("{label} {target}: {why}"));
            }
        }
    }
    let has_default = routes.iter().any(|r| r.table == RT_TABLE_MAIN && r.prefix_len == 0);
    if add_default && !has_default {
        if let Some(gw) = gateway {
            out.add.push(NewIpv4Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: gw,
                oif: primary.index,
            });
            out.notes.push("no default route".into());
        }
    }
    Ok(out)
}

fn show(r: &NewIpv4Route, dev: &str) -> String {
    let dest = if r.prefix_len == 0 { "default".to_string() } else { format!("{}/{}", r.destination, r.prefix_len) };
    format!("{dest} via {} dev {dev}", r.gateway)
}

/// Make sure the wireserver and IMDS are reached through the primary NIC (the interface with `primary_mac`,
/// IMDS `network.interface[0].macAddress`). Live only: under `--root` the routing table is not the target's.
/// [`ensure`], once the primary NIC has its lease: an address within `wait`, then (briefly, see
/// [`ROUTE_SETTLE`](super::dhcp_client::ROUTE_SETTLE)) a route to the wireserver through it. A wait that took time is
/// noted in the outcome. Without a known primary NIC, or on a sandbox root, no wait.
pub fn ensure_after_lease(
    sys: &dyn System,
    primary_mac: Option<&str>,
    wireserver: Ipv4Addr,
    add_default: bool,
    wait: Duration,
) -> Outcome {
    let started = Instant::now();
    let primary = primary_mac
        .filter(|m| sys.is_live() && !wait.is_zero() && !m.trim().is_empty())
        .and_then(|mac| nics::read_nics(sys).ok().and_then(|n| nics::primary(&n, mac).ok().cloned()))
        .filter(|p| p.index != 0);
    let waited = match primary {
        Some(p) => {
            let (addresses, routed) = wait_for_lease(sys, p.index, Some(wireserver), started + wait);
            let took = started.elapsed();
            match (addresses.is_empty(), routed) {
                (true, _) => Some(format!("{} had no IPv4 address after {:.1} s", p.name, took.as_secs_f64())),
                _ if took < Duration::from_millis(100) => None,
                (false, true) => Some(format!("waited {:.1} s for the lease of {}", took.as_secs_f64(), p.name)),
                (false, false) => Some(format!(
                    "waited {:.1} s for the lease of {} (no route to {wireserver} through it came)",
                    took.as_secs_f64(),
                    p.name
                )),
            }
        }
        None => None,
    };
    match (ensure(sys, primary_mac, wireserver, add_default), waited) {
        (Outcome::Done(d), Some(w)) => Outcome::Done(format!("{d} ({w})")),
        (Outcome::Skipped(r), Some(w)) => Outcome::Skipped(format!("{r} ({w})")),
        (o, _) => o,
    }
}

pub fn ensure(sys: &dyn System, primary_mac: Option<&str>, wireserver: Ipv4Addr, add_default: bool) -> Outcome {
    let routes = match sys.ipv4_routes() {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            return Outcome::Skipped("not the running system (routes are kernel state)".into())
        }
        Err(e) => return Outcome::Skipped(format!("cannot read the routing table: {e}")),
    };
    let Some(mac) = primary_mac.filter(|m| !m.trim().is_empty()) else {
        return Outcome::Skipped("primary NIC unknown: IMDS listed no network interface".into());
    };
    let nics = match nics::read_nics(sys) {
        Ok(n) => n,
        Err(e) => return Outcome::Skipped(format!("primary NIC unknown: cannot list {}: {e}", nics::SYS_CLASS_NET)),
    };
    let primary = match nics::primary(&nics, mac) {
        Ok(p) => p,
        Err(why) => return Outcome::Skipped(format!("primary NIC unknown: {why}")),
    };
    if primary.index == 0 {
        return Outcome::Skipped(format!("primary NIC {}: no ifindex in sysfs", primary.name));
    }
    let targets = [("wireserver", wireserver), ("IMDS", IMDS)];
    let plan = match plan(&routes, primary, &nics, &targets, add_default) {
        Ok(p) => p,
        Err(why) => return Outcome::Skipped(why),
    };
    let mut added = Vec::new();
    for r in &plan.add {
        match sys.add_ipv4_route(r) {
            Ok(()) => added.push(show(r, &primary.name)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Outcome::Failed(
                    Failure::new("failure to add a route to the wireserver or IMDS")
                        .with("route", show(r, &primary.name))
                        .with("exception", e),
                )
            }
        }
    }
    let notes = plan.notes.join("; ");
    if added.is_empty() {
        Outcome::Done(format!("no change: {notes}"))
    } else {
        Outcome::Done(format!("added {} (protocol boot); {notes}", added.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duties::nics::tests::fake_nic;
    use crate::system::record::RecordingSystem;
    use crate::system::{NextHop, RealSystem};

    const WS: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);
    const MAC0: &str = "000D3A047598";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn route(dest: &str, gw: Option<&str>, oif: u32, metric: u32) -> Ipv4Route {
        let (d, p) = dest.split_once('/').unwrap_or((dest, "32"));
        let (d, p) = if dest == "default" { ("0.0.0.0", "0") } else { (d, p) };
        Ipv4Route {
            destination: ip(d),
            prefix_len: p.parse().unwrap(),
            kind: RTN_UNICAST,
            table: RT_TABLE_MAIN,
            protocol: 16,
            metric,
            hops: vec![NextHop { oif, gateway: gw.map(ip) }],
        }
    }

    fn nic(name: &str, index: u32, mac: &str) -> Nic {
        Nic { name: name.into(), index, mac: mac.into(), flags: 0x1003, driver: Some("hv_netvsc".into()) }
    }

    fn names() -> HashMap<u32, String> {
        [(2, "eth0".to_string()), (3, "eth1".to_string())].into_iter().collect()
    }

    fn connected() -> Vec<Ipv4Route> {
        vec![route("10.0.0.0/24", None, 2, 0), route("10.0.1.0/24", None, 3, 0)]
    }

    #[test]
    fn coverage_decisions() {
        let n = names();
        // nothing at all
        assert!(matches!(reach(&connected(), WS, 2, &n), Reach::Missing(_)));
        // default through the primary covers both
        let mut t = connected();
        t.push(route("default", Some("10.0.0.1"), 2, 100));
        assert!(matches!(reach(&t, WS, 2, &n), Reach::Primary(_)));
        assert!(matches!(reach(&t, IMDS, 2, &n), Reach::Primary(_)));
        // a lower-metric default through a secondary NIC wins: not through the primary
        t.push(route("default", Some("10.0.1.1"), 3, 50));
        match reach(&t, WS, 2, &n) {
            Reach::Missing(why) => assert!(why.contains("default via 10.0.1.1 dev eth1 metric 50"), "{why}"),
            other => panic!("{other:?}"),
        }
        // an option-121 host route through the primary covers its target even then
        t.push(route("168.63.129.16/32", Some("10.0.0.1"), 2, 100));
        assert!(matches!(reach(&t, WS, 2, &n), Reach::Primary(_)));
        assert!(matches!(reach(&t, IMDS, 2, &n), Reach::Missing(_)));
        // a specific route elsewhere is deliberate
        t.push(route("169.254.0.0/16", None, 3, 0));
        assert!(matches!(reach(&t, IMDS, 2, &n), Reach::Elsewhere(_)));
        let mut bh = route("169.254.169.254/32", None, 0, 0);
        bh.kind = 6;
        bh.hops.clear();
        t.push(bh);
        match reach(&t, IMDS, 2, &n) {
            Reach::Elsewhere(r) => assert_eq!(r, "blackhole 169.254.169.254/32"),
            other => panic!("{other:?}"),
        }
        // routes in other tables (policy routing) and local addresses
        let mut other_table = route("168.63.129.16/32", Some("10.0.0.1"), 2, 0);
        other_table.table = 100;
        assert!(matches!(reach(&[other_table], WS, 2, &n), Reach::Missing(_)));
        let mut local = route("127.0.0.1/32", None, 1, 0);
        local.table = RT_TABLE_LOCAL;
        assert!(matches!(reach(&[], ip("127.0.0.1"), 2, &n), Reach::Local(_)));
        local.destination = ip("10.0.0.4");
        assert!(matches!(reach(&[local], ip("10.0.0.4"), 2, &n), Reach::Local(_)));
        // multipath default across both NICs is not "through the primary"
        let mut mp = route("default", Some("10.0.0.1"), 2, 0);
        mp.hops.push(NextHop { oif: 3, gateway: Some(ip("10.0.1.1")) });
        assert!(matches!(reach(&[mp.clone()], WS, 2, &n), Reach::Missing(_)));
        assert_eq!(primary_gateway(&[mp], 2, &[WS]), Some(ip("10.0.0.1")));
    }

    #[test]
    fn prefix_matching() {
        assert!(route_contains(&route("default", None, 2, 0), WS));
        assert!(route_contains(&route("168.63.0.0/16", None, 2, 0), WS));
        assert!(!route_contains(&route("168.62.0.0/16", None, 2, 0), WS));
        assert!(route_contains(&route("168.63.129.16/32", None, 2, 0), WS));
        assert!(!route_contains(&route("168.63.129.17/32", None, 2, 0), WS));
        let mut bad = route("168.63.129.16/32", None, 2, 0);
        bad.prefix_len = 33;
        assert!(!route_contains(&bad, WS));
        let t = [route("default", Some("10.0.0.1"), 2, 10), route("168.63.0.0/16", Some("10.0.0.9"), 2, 500)];
        assert_eq!(best_route(&t, WS).unwrap().prefix_len, 16, "longest prefix before metric");
    }

    #[test]
    fn gateway_choice() {
        let mut t = connected();
        assert_eq!(primary_gateway(&t, 2, &[WS, IMDS]), None);
        t.push(route("169.254.169.254/32", Some("10.0.0.1"), 2, 0));
        assert_eq!(primary_gateway(&t, 2, &[WS, IMDS]), Some(ip("10.0.0.1")), "from a target's host route");
        t.push(route("default", Some("10.0.1.1"), 3, 0));
        t.push(route("default", Some("10.0.0.65"), 2, 300));
        t.push(route("default", Some("10.0.0.33"), 2, 200));
        assert_eq!(primary_gateway(&t, 2, &[WS, IMDS]), Some(ip("10.0.0.33")), "primary default, lowest metric");
        assert_eq!(primary_gateway(&t, 3, &[WS, IMDS]), Some(ip("10.0.1.1")));
    }

    #[test]
    fn plans() {
        let nics = [nic("eth0", 2, MAC0), nic("eth1", 3, "000D3A047599")];
        let targets = [("wireserver", WS), ("IMDS", IMDS)];
        // multi-NIC: default through eth1 wins → host routes through eth0's gateway
        let mut t = connected();
        t.push(route("default", Some("10.0.1.1"), 3, 100));
        t.push(route("default", Some("10.0.0.1"), 2, 200));
        let p = plan(&t, &nics[0], &nics, &targets, true).unwrap();
        let host = |d| NewIpv4Route { destination: d, prefix_len: 32, gateway: ip("10.0.0.1"), oif: 2 };
        assert_eq!(p.add, vec![host(WS), host(IMDS)]);
        // the default through the primary: nothing to add
        let mut t2 = connected();
        t2.push(route("default", Some("10.0.0.1"), 2, 100));
        let p = plan(&t2, &nics[0], &nics, &targets, true).unwrap();
        assert!(p.add.is_empty(), "{p:?}");
        assert!(p.notes[0].contains("through eth0"), "{:?}", p.notes);
        // only the IMDS host route is there: the wireserver gets one via its gateway; no default added when off
        let mut t3 = connected();
        t3.push(route("169.254.169.254/32", Some("10.0.0.1"), 2, 0));
        let p = plan(&t3, &nics[0], &nics, &targets, false).unwrap();
        assert_eq!(p.add, vec![host(WS)]);
        let p = plan(&t3, &nics[0], &nics, &targets, true).unwrap();
        assert_eq!(p.add.len(), 2);
        assert_eq!((p.add[1].prefix_len, p.add[1].gateway), (0, ip("10.0.0.1")), "default added when none");
        // no gateway known
        let e = plan(&connected(), &nics[0], &nics, &targets, true).unwrap_err();
        assert!(e.contains("no known gateway") && e.contains("eth0"), "{e}");
        // the same address twice is handled once
        let p = plan(&t, &nics[0], &nics, &[("wireserver", IMDS), ("IMDS", IMDS)], false).unwrap();
        assert_eq!(p.add, vec![host(IMDS)]);
    }

    fn sandbox() -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        fake_nic(dir.path(), "eth0", 2, "00:0d:3a:04:75:98", 0x1003, Some("hv_netvsc"));
        fake_nic(dir.path(), "eth1", 3, "00:0d:3a:04:75:99", 0x1003, Some("hv_netvsc"));
        fake_nic(dir.path(), "enP1s1", 4, "00:0d:3a:04:75:98", 0x1803, Some("mlx5_core"));
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    #[test]
    fn duty_adds_once_then_changes_nothing() {
        let (_d, sys) = sandbox();
        let mut t = connected();
        t.push(route("default", Some("10.0.1.1"), 3, 100));
        t.push(route("default", Some("10.0.0.1"), 2, 200));
        sys.set_routes(t);
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Done(d) => assert!(d.contains("added 168.63.129.16/32 via 10.0.0.1 dev eth0"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(sys.added_routes().len(), 2);
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Done(d) => assert!(d.starts_with("no change"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(sys.added_routes().len(), 2, "second run adds nothing");
    }

    #[test]
    fn duty_waits_for_the_primary_nics_lease() {
        let (_d, sys) = sandbox();
        sys.pretend_live();
        let mut t = connected();
        t.push(route("default", Some("10.0.0.1"), 2, 200));
        sys.set_routes(t);
        // no address on eth0 yet: the whole wait, then the table as it is (noted)
        let started = std::time::Instant::now();
        match ensure_after_lease(&sys, Some(MAC0), WS, true, Duration::from_millis(300)) {
            Outcome::Done(d) => assert!(d.ends_with("(eth0 had no IPv4 address after 0.3 s)"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(300));
        // the lease is there (address, default route through eth0): no wait, nothing noted
        sys.set_ipv4_addresses(vec![crate::system::Ipv4Address {
            index: 2,
            address: Ipv4Addr::new(10, 0, 0, 4),
            prefix_len: 24,
        }]);
        let started = std::time::Instant::now();
        match ensure_after_lease(&sys, Some(MAC0), WS, true, Duration::from_secs(30)) {
            Outcome::Done(d) => assert!(d.starts_with("no change") && !d.contains("wait"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // no wait configured, or an unknown primary NIC: straight to the table
        assert!(matches!(ensure_after_lease(&sys, None, WS, true, Duration::from_secs(30)), Outcome::Skipped(_)));
    }

    #[test]
    fn duty_skips_with_reasons() {
        let (_d, sys) = sandbox();
        // no scripted table: the sandbox root is not the running system
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Skipped(r) => assert!(r.contains("not the running system"), "{r}"),
            other => panic!("{other:?}"),
        }
        let dir = tempfile::tempdir().unwrap();
        match ensure(&RealSystem::new(dir.path()), Some(MAC0), WS, true) {
            Outcome::Skipped(r) => assert!(r.contains("not the running system"), "{r}"),
            other => panic!("{other:?}"),
        }
        sys.set_routes(connected());
        for (mac, want) in [
            (None, "IMDS listed no network interface"),
            (Some("000D3A0475AA"), "no network interface has the primary MAC"),
            (Some(MAC0), "no known gateway"),
        ] {
            match ensure(&sys, mac, WS, true) {
                Outcome::Skipped(r) => assert!(r.contains(want), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(sys.added_routes().is_empty());
    }

    // --- real netlink, inside a private network namespace -----------------------------------------------------

    const CHILD_ENV: &str = "AZPROV_NETNS_CHILD";

    /// Re-run this very test inside `unshare --net --mount`: a fresh network namespace (veths and routes live
    /// and die there) with a private mount namespace so a fresh sysfs shows that namespace's interfaces.
    #[test]
    fn root_netns_routes() {
        if std::env::var_os(CHILD_ENV).is_some() {
            netns_child();
            return;
        }
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipping root_netns_routes: needs root for network namespaces");
            return;
        }
        let host = RealSystem::new("/");
        for prog in ["unshare", "ip", "mount"] {
            if !host.has_program(prog) {
                eprintln!("skipping root_netns_routes: {prog} is not installed");
                return;
            }
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--net", "--mount", "--fork", "--"])
            .arg(exe)
            .args(["--exact", "duties::routes::tests::root_netns_routes", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, namespaces())
            .output()
            .unwrap();
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() && text.contains("azprov-netns-unavailable") {
            eprintln!("skipping root_netns_routes: {text}");
            return;
        }
        assert!(out.status.success(), "{text}");
        assert!(text.contains("azprov-netns-child-ok"), "the child did not run the checks:\n{text}");
    }

    /// `net:[…] mnt:[…]` of this process.
    fn namespaces() -> String {
        ["net", "mnt"]
            .iter()
            .map(|n| {
                std::fs::read_link(format!("/proc/self/ns/{n}")).map(|p| p.display().to_string()).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn sh(args: &[&str]) {
        let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn ip_routes() -> String {
        ip_show(&[])
    }

    /// The routes with protocol `boot` (which `ip route` does not print as such).
    fn boot_routes() -> String {
        ip_show(&["proto", "boot"])
    }

    fn ip_show(extra: &[&str]) -> String {
        let out = std::process::Command::new("ip")
            .args(["-4", "route", "show", "table", "main"])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn netns_child() {
        // only ever inside the namespaces unshare made: the parent passed its own namespace ids
        let parent = std::env::var(CHILD_ENV).unwrap();
        let own = namespaces();
        assert!(!parent.is_empty() && own != parent, "not in fresh namespaces ({own} vs {parent}); refusing");
        assert!(own.split(' ').zip(parent.split(' ')).all(|(a, b)| a != b), "{own} vs {parent}");
        let private = std::process::Command::new("mount").args(["--make-rprivate", "/"]).status();
        let sysfs = std::process::Command::new("mount").args(["-t", "sysfs", "sysfs", "/sys"]).status();
        if !matches!(private, Ok(s) if s.success()) || !matches!(sysfs, Ok(s) if s.success()) {
            println!("azprov-netns-unavailable: cannot mount a private sysfs");
            return;
        }
        sh(&["ip", "link", "set", "lo", "up"]);
        sh(&["ip", "link", "add", "azp0", "address", "00:0d:3a:04:75:98", "type", "veth", "peer", "name", "azp1"]);
        sh(&["ip", "link", "add", "azp2", "address", "00:0d:3a:04:75:99", "type", "veth", "peer", "name", "azp3"]);
        for l in ["azp0", "azp1", "azp2", "azp3"] {
            sh(&["ip", "link", "set", l, "up"]);
        }
        sh(&["ip", "addr", "add", "10.77.0.4/24", "dev", "azp0"]);
        sh(&["ip", "addr", "add", "10.88.0.4/24", "dev", "azp2"]);
        // multi-NIC: the secondary's default wins
        sh(&["ip", "route", "add", "default", "via", "10.88.0.1", "dev", "azp2", "metric", "100", "proto", "static"]);
        sh(&["ip", "route", "add", "default", "via", "10.77.0.1", "dev", "azp0", "metric", "200", "proto", "static"]);
        let sys = RealSystem::new("/");

        // no primary NIC: skipped, nothing changed
        let before = ip_routes();
        match ensure(&sys, Some("000D3A0475AA"), WS, true) {
            Outcome::Skipped(r) => assert!(r.contains("no network interface has the primary MAC"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ip_routes(), before);

        // missing host routes are added via the primary NIC's gateway, protocol boot
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Done(d) => assert!(d.contains("added 168.63.129.16/32 via 10.77.0.1 dev azp0"), "{d}"),
            other => panic!("{other:?}"),
        }
        let after = ip_routes();
        let boot = boot_routes();
        assert!(boot.contains("168.63.129.16 via 10.77.0.1 dev azp0"), "{after}");
        assert!(boot.contains("169.254.169.254 via 10.77.0.1 dev azp0"), "{after}");
        assert_eq!(boot.lines().count(), 2, "{boot}");
        assert!(after.contains("default via 10.88.0.1 dev azp2 proto static metric 100"), "{after}");
        let ours: Vec<Ipv4Route> =
            sys.ipv4_routes().unwrap().into_iter().filter(|r| r.protocol == 3 && r.prefix_len == 32).collect();
        assert_eq!(ours.len(), 2, "{ours:?}");

        // second run: nothing changes
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Done(d) => assert!(d.starts_with("no change"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ip_routes(), after);

        // an existing covering route (DHCP option 121) is left as it is; only IMDS is added
        sh(&["ip", "route", "del", "168.63.129.16/32"]);
        sh(&["ip", "route", "del", "169.254.169.254/32"]);
        sh(&[
            "ip",
            "route",
            "add",
            "168.63.129.16/32",
            "via",
            "10.77.0.1",
            "dev",
            "azp0",
            "proto",
            "dhcp",
            "metric",
            "100",
        ]);
        match ensure(&sys, Some(MAC0), WS, false) {
            Outcome::Done(d) => {
                assert!(d.contains("added 169.254.169.254/32") && !d.contains("added 168.63.129.16"), "{d}")
            }
            other => panic!("{other:?}"),
        }
        let now = ip_routes();
        assert!(now.contains("168.63.129.16 via 10.77.0.1 dev azp0 proto dhcp metric 100"), "{now}");
        assert!(!boot_routes().contains("168.63.129.16"), "{now}");
        assert!(boot_routes().contains("169.254.169.254 via 10.77.0.1 dev azp0"), "{now}");

        // no gateway on the primary NIC: skipped with the reason, nothing added
        sh(&["ip", "route", "del", "default", "via", "10.77.0.1", "dev", "azp0"]);
        sh(&["ip", "route", "del", "168.63.129.16/32"]);
        sh(&["ip", "route", "del", "169.254.169.254/32"]);
        let before = ip_routes();
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Skipped(r) => assert!(r.contains("no known gateway"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ip_routes(), before);

        // no default route at all: host routes and a default via the gateway of a remaining option-121 route
        sh(&["ip", "route", "del", "default"]);
        sh(&["ip", "route", "add", "169.254.169.254/32", "via", "10.77.0.1", "dev", "azp0", "proto", "dhcp"]);
        match ensure(&sys, Some(MAC0), WS, true) {
            Outcome::Done(d) => assert!(d.contains("default via 10.77.0.1 dev azp0"), "{d}"),
            other => panic!("{other:?}"),
        }
        let boot = boot_routes();
        assert!(boot.contains("default via 10.77.0.1 dev azp0"), "{boot}");
        assert!(boot.contains("168.63.129.16 via 10.77.0.1 dev azp0"), "{boot}");
        assert!(!boot.contains("169.254.169.254"), "the dhcp route stays: {boot}");
        println!("azprov-netns-child-ok");
    }
}
