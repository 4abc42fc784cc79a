//! Publishing the host name to the platform DNS (platform.md §9.7) when the network is already up, without
//! restarting the network stack: Azure DNS registers the name carried in the DHCP request's host-name option, so
//! the running DHCP client must send a new request with the new name.
//!
//! The method follows what is running: systemd-networkd (`networkctl reconfigure`), NetworkManager (`nmcli
//! connection modify … ipv4.dhcp-hostname` + `nmcli device reapply`), a running `dhclient` (`send host-name =
//! gethostname();`, then `dhclient -x` and the same `dhclient` command again: no DHCPRELEASE), or wicked
//! (`DHCLIENT_HOSTNAME_OPTION`, `ifup`). A failure is `failure to publish hostname`, which the caller treats as a
//! warning.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use super::dhcp_client::{
    detect, dhclient_cmd, networkd_lease, networkd_reconfigure, run_ok, wait_for_daemon, wait_for_lease, without_mode,
    DhclientProc, Relet, Stack, DAEMON_PID_WAIT, ROUTE_SETTLE, WICKED_DHCP,
};
use super::{excerpt, hostname, Outcome};
use crate::report::Failure;
use crate::system::{Command, System};

/// The public reason of every publishing failure.
pub const FAILURE: &str = "failure to publish hostname";

const DHCLIENT_CONF: &str = "/etc/dhcp/dhclient.conf";
const SEND_HOST_NAME: &str = "send host-name = gethostname();";
/// How long networkd gets to take its new lease after `networkctl reconfigure`.
const RELET_WAIT: Duration = Duration::from_secs(10);

/// `dhclient.conf` text that sends the current host name: an explicit `send host-name …;` becomes
/// `send host-name = gethostname();`, and the line is added when there is none. Idempotent.
pub fn dhclient_conf_with_hostname(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut found = false;
    for l in text.lines() {
        let t = l.trim_start();
        if t.starts_with("send host-name") && t.trim_end().ends_with(';') {
            let indent = &l[..l.len() - t.len()];
            out.push(format!("{indent}{SEND_HOST_NAME}"));
            found = true;
        } else {
            out.push(l.to_string());
        }
    }
    if !found {
        out.push(SEND_HOST_NAME.to_string());
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// Set `KEY="value"` in a sysconfig file (replacing the first assignment, else appending). Idempotent.
fn sysconfig_with(text: &str, key: &str, value: &str) -> String {
    let line = format!("{key}=\"{value}\"");
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for l in text.lines() {
        if l.trim_start().starts_with(&format!("{key}=")) {
            if !placed {
                out.push(line.clone());
                placed = true;
            }
            continue;
        }
        out.push(l.to_string());
    }
    if !placed {
        out.push(line);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// The unquoted value of `KEY=` in a sysconfig file.
fn sysconfig_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim_start().strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

fn failed(method: &str, what: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(Failure::new(FAILURE).with("method", method).with("exception", what))
}

/// Make the platform DNS learn `name` through the running DHCP client, without restarting the network stack.
/// Live only. Call it after `hostname::apply` set the kernel host name (the DHCP clients send `gethostname()`).
/// `reach`: the platform address (the wireserver) whose route a renewed lease should bring back before this answers.
pub fn publish(sys: &dyn System, name: &str, reach: Option<Ipv4Addr>) -> Outcome {
    if !sys.is_live() {
        return Outcome::Skipped("not the running system".into());
    }
    let Some(name) = hostname::normalize(name) else {
        return Outcome::Failed(Failure::new(FAILURE).with("hostname", name).with("exception", "invalid host name"));
    };
    match detect(sys) {
        None => Outcome::Skipped(
            "no running DHCP client found (systemd-networkd, NetworkManager, dhclient, wicked): nothing to publish through"
                .into(),
        ),
        Some(Stack::Networkd) => networkd(sys, &name, reach),
        Some(Stack::NetworkManager) => network_manager(sys, &name, reach),
        Some(Stack::Dhclient(procs)) => dhclient(sys, &name, &procs, reach),
        Some(Stack::Wicked) => wicked(sys, &name),
        Some(Stack::Dhcpcd(_)) => {
            Outcome::Skipped("dhcpcd runs: azprov does not publish the host name through dhcpcd".into())
        }
    }
}

/// `(index, name)` of the ethernet links networkd manages, from `networkctl list --no-legend`.
pub fn networkd_links(list: &str) -> Vec<(u32, String)> {
    list.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let idx = f.first()?.parse().ok()?;
            let (name, kind, setup) = (f.get(1)?, f.get(2)?, f.get(4).copied().unwrap_or(""));
            (*kind == "ether" && setup != "unmanaged" && !setup.is_empty()).then(|| (idx, name.to_string()))
        })
        .collect()
}

fn networkd(sys: &dyn System, name: &str, reach: Option<Ipv4Addr>) -> Outcome {
    const M: &str = "systemd-networkd";
    let list = match sys.run(&Command::new("networkctl", &["list", "--no-legend", "--no-pager"])) {
        Ok(o) if o.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return failed(M, format!("networkctl list exited {:?}: {}", o.status, excerpt(&o.stderr))),
        Err(e) => return failed(M, format!("networkctl list: {e}")),
    };
    let links = networkd_links(&list);
    let lease = |idx: u32| networkd_lease(sys, idx);
    let with_lease: Vec<&(u32, String)> = links.iter().filter(|(i, _)| lease(*i).is_some()).collect();
    let (targets, note) = if with_lease.is_empty() {
        (links.iter().collect::<Vec<_>>(), "no DHCP lease file; every managed ethernet link")
    } else {
        (with_lease, "links with a DHCP lease")
    };
    if targets.is_empty() {
        return Outcome::Skipped("systemd-networkd manages no ethernet link".into());
    }
    let mut done = Vec::new();
    for (idx, ifname) in targets {
        // networkd drops the lease a moment after the command returns and asks again: wait for the new lease (and
        // the route to the platform through it), so that what follows (routes, the Ready report) finds the network
        // back. A link without a lease is not waited for.
        let had_lease = lease(*idx).is_some();
        let deadline = Instant::now() + if had_lease { RELET_WAIT } else { Duration::ZERO };
        let relet = match networkd_reconfigure(sys, ifname, *idx, deadline) {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed(
                    Failure::new(FAILURE).with("method", M).with("interface", ifname).with("exception", e),
                )
            }
        };
        // the lease shows a HOSTNAME= only when the server echoes the name back: a confirmation when present
        let echoed =
            lease(*idx).and_then(|l| l.lines().find_map(|x| x.strip_prefix("HOSTNAME=").map(|v| v.trim().to_string())));
        let mut confirm = match (relet, echoed) {
            (Relet::NoLease, _) if had_lease => format!("no new lease within {}s", RELET_WAIT.as_secs()),
            (Relet::NoLease, _) => "requested (no lease to renew)".to_string(),
            (Relet::Kept, _) => "requested (networkd kept its lease: renewal pending)".to_string(),
            (Relet::Renewed, Some(h)) if h == name => "new lease; it confirms the name".to_string(),
            (Relet::Renewed, Some(h)) => format!("new lease; it still shows {h}"),
            (Relet::Renewed, None) => "new lease (it does not show sent names)".to_string(),
        };
        if relet == Relet::Renewed {
            if let (Some(r), (_, false)) = (reach, wait_for_lease(sys, *idx, reach, Instant::now() + ROUTE_SETTLE)) {
                confirm.push_str(&format!("; no route to {r} through it yet"));
            }
        }
        done.push(format!("networkctl reconfigure {ifname}: {confirm}"));
    }
    Outcome::Done(format!("published {name} through {M} ({note}): {}", done.join("; ")))
}

/// Unescape one field of `nmcli -t` output (`\:` and `\\`).
fn nm_unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Split a `nmcli -t` line at unescaped `:`.
fn nm_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in line.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ':' {
            fields.push(nm_unescape(&cur));
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    fields.push(nm_unescape(&cur));
    fields
}

/// `(device, connection)` of connected ethernet devices from `nmcli -t -f DEVICE,TYPE,STATE,CONNECTION device status`.
pub fn nm_devices(status: &str) -> Vec<(String, String)> {
    status
        .lines()
        .filter_map(|l| {
            let f = nm_fields(l);
            (f.len() >= 4 && f[1] == "ethernet" && f[2] == "connected" && !f[3].is_empty())
                .then(|| (f[0].clone(), f[3].clone()))
        })
        .collect()
}

fn network_manager(sys: &dyn System, name: &str, reach: Option<Ipv4Addr>) -> Outcome {
    const M: &str = "NetworkManager";
    let status =
        match sys.run(&Command::new("nmcli", &["-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", "status"])) {
            Ok(o) if o.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => return failed(M, format!("nmcli device status exited {:?}: {}", o.status, excerpt(&o.stderr))),
            Err(e) => return failed(M, format!("nmcli device status: {e}")),
        };
    let devices = nm_devices(&status);
    if devices.is_empty() {
        return Outcome::Skipped("NetworkManager has no connected ethernet device".into());
    }
    let links = sys.links().ok();
    let mut done = Vec::new();
    for (dev, con) in &devices {
        let modify = Command::new(
            "nmcli",
            &["connection", "modify", con, "ipv4.dhcp-send-hostname", "yes", "ipv4.dhcp-hostname", name],
        );
        let reapply = Command::new("nmcli", &["device", "reapply", dev]);
        for cmd in [modify, reapply] {
            if let Err(e) = run_ok(sys, &cmd) {
                return Outcome::Failed(
                    Failure::new(FAILURE).with("method", M).with("interface", dev).with("exception", e),
                );
            }
        }
        // the reapply restarts the DHCP transaction (a moment without a lease): what follows (routes, the Ready
        // report) needs the address and the platform route back
        let index = links.iter().flatten().find(|l| &l.name == dev).map(|l| l.index);
        let settled = match index {
            Some(i) => match wait_for_lease(sys, i, reach, Instant::now() + RELET_WAIT) {
                (a, _) if a.is_empty() => format!("; no address within {}s", RELET_WAIT.as_secs()),
                (_, false) => {
                    format!("; no route to {} through it yet", reach.map(|r| r.to_string()).unwrap_or_default())
                }
                _ => String::new(),
            },
            None => String::new(),
        };
        done.push(format!("{dev} ({con}) reapplied{settled}"));
    }
    Outcome::Done(format!("published {name} through {M}: {}", done.join("; ")))
}

fn dhclient(sys: &dyn System, name: &str, procs: &[DhclientProc], reach: Option<Ipv4Addr>) -> Outcome {
    const M: &str = "dhclient";
    let mut done = Vec::new();
    // the kernel's links, when they can be read: a client whose interfaces are all gone is not restarted
    let links = sys.links().ok();
    let present: Option<Vec<String>> = links.as_ref().map(|l| l.iter().map(|l| l.name.clone()).collect());
    for p in procs {
        let ifs = p.interfaces();
        if let Some(present) = &present {
            if !ifs.is_empty() && !ifs.iter().any(|i| present.contains(i)) {
                // e.g. a pre-provisioned (Savable) VM's pool NIC, detached; its client outlived it
                done.push(format!("pid {} serves {} (no longer present): not restarted", p.pid, ifs.join(",")));
                continue;
            }
        }
        if p.is_foreground() {
            // a foreground dhclient belongs to a service manager: restarting it here would take it from its manager
            done.push(format!("pid {} runs in the foreground (-d) under a service manager: not restarted", p.pid));
            continue;
        }
        // the configuration it reads: send the (new) kernel host name
        let conf = p.option("-cf").unwrap_or(DHCLIENT_CONF).to_string();
        let text = sys.read_to_string(Path::new(&conf)).unwrap_or_default();
        let new = dhclient_conf_with_hostname(&text);
        if new != text {
            let dir = Path::new(&conf).parent().unwrap_or(Path::new("/"));
            if let Err(e) = sys
                .create_dir_all(dir, 0o755, None)
                .and_then(|_| sys.write_file(Path::new(&conf), new.as_bytes(), 0o644, None))
            {
                return failed(M, format!("{conf}: {e}"));
            }
            done.push(format!("{conf} sends the host name"));
        }
        // RHEL ifcfg: DHCP_HOSTNAME is what ifup passes as -H
        for i in &ifs {
            let ifcfg = format!("/etc/sysconfig/network-scripts/ifcfg-{i}");
            if let Ok(t) = sys.read_to_string(Path::new(&ifcfg)) {
                if sysconfig_value(&t, "DHCP_HOSTNAME").is_some_and(|v| v != name) {
                    let new = sysconfig_with(&t, "DHCP_HOSTNAME", name);
                    if let Err(e) = sys.write_file(Path::new(&ifcfg), new.as_bytes(), 0o644, None) {
                        return failed(M, format!("{ifcfg}: {e}"));
                    }
                    done.push(format!("{ifcfg} DHCP_HOSTNAME"));
                }
            }
        }
        // stop without a DHCPRELEASE (-x), then the same command again: it asks for its lease back with the name
        let args = p.restart_args(name);
        let stop = dhclient_cmd("-x", &without_mode(&args));
        // without `-1`: should the server not answer in time, the client goes on in the background (and keeps its
        // lease) instead of exiting and leaving the interface without a DHCP client
        let start: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "-1").collect();
        for cmd in [stop, Command::new("dhclient", &start)] {
            if let Err(e) = run_ok(sys, &cmd) {
                return Outcome::Failed(
                    Failure::new(FAILURE).with("method", M).with("interface", ifs.join(",")).with("exception", e),
                );
            }
        }
        // confirmation: a new live dhclient under the same pid file (the daemon writes it just after forking)
        let alive = wait_for_daemon(sys, &p.pid_file, "dhclient", Some(p.pid), Instant::now() + DAEMON_PID_WAIT);
        // dhclient-script's STOP flushed the address; a background (-nw) client gets it back after returning: what
        // follows (routes, the Ready report) needs the lease and the platform route back
        if args.iter().any(|a| a == "-nw") {
            for ifname in &ifs {
                if let Some(l) = links.iter().flatten().find(|l| &l.name == ifname) {
                    let _ = wait_for_lease(sys, l.index, reach, Instant::now() + RELET_WAIT);
                }
            }
        }
        match alive {
            Some(pid) => done.push(format!("dhclient {} restarted without release (pid {pid})", ifs.join(","))),
            None => done.push(format!(
                "dhclient {} restarted without release (no live pid in {})",
                ifs.join(","),
                p.pid_file
            )),
        }
    }
    Outcome::Done(format!("published {name} through {M}: {}", done.join("; ")))
}

fn wicked(sys: &dyn System, name: &str) -> Outcome {
    const M: &str = "wicked";
    let path = Path::new(WICKED_DHCP);
    let text = match sys.read_to_string(path) {
        Ok(t) => t,
        Err(e) => return failed(M, format!("{WICKED_DHCP}: {e}")),
    };
    let mut done = Vec::new();
    if sysconfig_value(&text, "DHCLIENT_HOSTNAME_OPTION").as_deref() == Some("AUTO") {
        done.push("DHCLIENT_HOSTNAME_OPTION=AUTO kept".to_string());
    } else {
        let new = sysconfig_with(&text, "DHCLIENT_HOSTNAME_OPTION", name);
        if new != text {
            if let Err(e) = sys.write_file(path, new.as_bytes(), 0o644, None) {
                return failed(M, format!("{WICKED_DHCP}: {e}"));
            }
            done.push(format!("DHCLIENT_HOSTNAME_OPTION={name}"));
        }
    }
    // interfaces configured for DHCP
    let dir = Path::new("/etc/sysconfig/network");
    let ifs: Vec<String> = sys
        .read_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| n.strip_prefix("ifcfg-").map(str::to_string))
        .filter(|i| i != "lo")
        .filter(|i| {
            sys.read_to_string(&dir.join(format!("ifcfg-{i}")))
                .ok()
                .and_then(|t| sysconfig_value(&t, "BOOTPROTO"))
                .is_some_and(|b| b.starts_with("dhcp"))
        })
        .collect();
    if ifs.is_empty() {
        return Outcome::Skipped("wicked: no interface configured for DHCP".into());
    }
    for i in &ifs {
        if let Err(e) = run_ok(sys, &Command::new("ifup", &[i])) {
            return Outcome::Failed(Failure::new(FAILURE).with("method", M).with("interface", i).with("exception", e));
        }
        done.push(format!("ifup {i}"));
    }
    Outcome::Done(format!("published {name} through {M}: {}", done.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duties::dhcp_client::{running_dhclients, NETWORKD_STATE};
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    fn sandbox(files: &[(&str, &str)]) -> (tempfile::TempDir, RecordingSystem) {
        let (d, sys) = crate::testutil::sandbox(files);
        sys.pretend_live();
        (d, sys)
    }

    fn ok(stdout: &str) -> CommandOutput {
        CommandOutput { status: Some(0), stdout: stdout.as_bytes().to_vec(), ..Default::default() }
    }

    fn argvs(sys: &RecordingSystem) -> Vec<String> {
        sys.commands().iter().map(|c| c.display()).collect()
    }

    fn read(d: &tempfile::TempDir, p: &str) -> String {
        std::fs::read_to_string(d.path().join(p.trim_start_matches('/'))).unwrap()
    }

    #[test]
    fn skips_under_a_root_and_when_nothing_runs() {
        let d = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(d.path());
        match publish(&sys, "vm1", None) {
            Outcome::Skipped(r) => assert_eq!(r, "not the running system"),
            other => panic!("{other:?}"),
        }
        sys.pretend_live();
        match publish(&sys, "vm1", None) {
            Outcome::Skipped(r) => assert!(r.contains("no running DHCP client"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(sys.commands().is_empty());
        match publish(&sys, "bad_name", None) {
            Outcome::Failed(f) => assert_eq!(f.reason, FAILURE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dhcpcd_is_not_published_through() {
        let (_d, sys) = sandbox(&[("/run/dhcpcd/pid", "10\n"), ("/proc/10/cmdline", "dhcpcd: [manager] [ip4]\0")]);
        sys.script("dhcpcd", ok(""));
        sys.uninstall("dhclient");
        match publish(&sys, "vm1", None) {
            Outcome::Skipped(r) => assert!(r.contains("dhcpcd"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(sys.commands().is_empty());
    }

    const NETWORKCTL_LIST: &str = "  1 lo   loopback carrier    unmanaged\n  2 eth0 ether    routable   configured\n  \
                                   3 eth1 ether    routable   configured\n  4 docker0 bridge no-carrier unmanaged\n";

    #[test]
    fn networkd_reconfigures_links_with_a_lease() {
        let lease = "/run/systemd/netif/leases/2";
        let (d, sys) =
            sandbox(&[(NETWORKD_STATE, "OPER_STATE=routable\n"), (lease, "ADDRESS=10.0.0.4\nHOSTNAME=vm0\n")]);
        sys.script("networkctl", ok(NETWORKCTL_LIST));
        sys.set_ipv4_addresses(vec![crate::system::Ipv4Address {
            index: 2,
            address: Ipv4Addr::new(10, 0, 0, 4),
            prefix_len: 24,
        }]);
        // networkd drops the lease a moment after the command, then writes the new one (the server echoed the name)
        let file = d.path().join(lease.trim_start_matches('/'));
        let networkd = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(80));
            std::fs::remove_file(&file).unwrap();
            std::thread::sleep(Duration::from_millis(120));
            std::fs::write(&file, "ADDRESS=10.0.0.4\nHOSTNAME=web-01\n").unwrap();
        });
        let t = Instant::now();
        match publish(&sys, "web-01.example.internal", None) {
            Outcome::Done(d) => assert_eq!(
                d,
                "published web-01 through systemd-networkd (links with a DHCP lease): networkctl reconfigure eth0: \
                 new lease; it confirms the name"
            ),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() >= Duration::from_millis(200), "waited for the new lease: {:?}", t.elapsed());
        networkd.join().unwrap();
        assert_eq!(argvs(&sys), ["networkctl list --no-legend --no-pager", "networkctl reconfigure eth0"]);
        // a networkd that keeps the lease: said so after the settle time
        let (_d, sys) = sandbox(&[(NETWORKD_STATE, "x\n"), (lease, "ADDRESS=10.0.0.4\n")]);
        sys.script("networkctl", ok(NETWORKCTL_LIST));
        match publish(&sys, "web-01", Some(Ipv4Addr::new(168, 63, 129, 16))) {
            Outcome::Done(d) => {
                assert!(d.ends_with("eth0: requested (networkd kept its lease: renewal pending)"), "{d}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn networkd_without_leases_reconfigures_every_managed_ether_link_and_reports_failure() {
        let (_d, sys) = sandbox(&[(NETWORKD_STATE, "OPER_STATE=routable\n")]);
        sys.script("networkctl", ok(NETWORKCTL_LIST));
        assert!(matches!(publish(&sys, "vm1", None), Outcome::Done(_)));
        assert_eq!(
            argvs(&sys),
            ["networkctl list --no-legend --no-pager", "networkctl reconfigure eth0", "networkctl reconfigure eth1"]
        );
        let (_d, sys) = sandbox(&[(NETWORKD_STATE, "x\n")]);
        sys.script("networkctl", CommandOutput { status: Some(1), stderr: b"boom".to_vec(), ..Default::default() });
        match publish(&sys, "vm1", None) {
            Outcome::Failed(f) => {
                assert_eq!(f.reason, FAILURE);
                assert!(f.to_string().contains("method=systemd-networkd"), "{f}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn network_manager_sets_the_dhcp_host_name_and_reapplies() {
        let (_d, sys) = sandbox(&[("/run/NetworkManager/NetworkManager.pid", "77\n")]);
        sys.script(
            "nmcli",
            ok("eth0:ethernet:connected:Wired connection 1\neth1:ethernet:connected:a\\:b\nlo:loopback:connected (externally):lo\n\
                eth2:ethernet:disconnected:\n"),
        );
        match publish(&sys, "vm1", None) {
            Outcome::Done(d) => assert!(d.contains("eth0 (Wired connection 1) reapplied"), "{d}"),
            other => panic!("{other:?}"),
        }
        let cmds = sys.commands();
        let args: Vec<Vec<String>> = cmds.iter().map(|c| c.args.clone()).collect();
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            args,
            vec![
                v(&["-t", "-f", "DEVICE,TYPE,STATE,CONNECTION", "device", "status"]),
                v(&[
                    "connection",
                    "modify",
                    "Wired connection 1",
                    "ipv4.dhcp-send-hostname",
                    "yes",
                    "ipv4.dhcp-hostname",
                    "vm1"
                ]),
                v(&["device", "reapply", "eth0"]),
                v(&["connection", "modify", "a:b", "ipv4.dhcp-send-hostname", "yes", "ipv4.dhcp-hostname", "vm1"]),
                v(&["device", "reapply", "eth1"]),
            ]
        );
        assert!(cmds.iter().all(|c| c.program == "nmcli"));
    }

    const CMDLINE: &str = "/sbin/dhclient\0-1\0-4\0-v\0-i\0-pf\0/run/dhclient.eth0.pid\0-lf\0\
                           /var/lib/dhcp/dhclient.eth0.leases\0-I\0-df\0/var/lib/dhcp/dhclient6.eth0.leases\0eth0\0";

    #[test]
    fn dhclient_sends_the_host_name_and_restarts_without_release() {
        let (d, sys) = sandbox(&[
            ("/run/dhclient.eth0.pid", "4242\n"),
            ("/proc/4242/cmdline", CMDLINE),
            ("/etc/dhcp/dhclient.conf", "# conf\nsend host-name \"old-name\";\nrequest subnet-mask;\n"),
        ]);
        sys.script("dhclient", ok(""));
        // the restarted client writes its own pid into the same file
        sys.script_effect("dhclient", &[("/run/dhclient.eth0.pid", "4243\n"), ("/proc/4243/cmdline", CMDLINE)]);
        match publish(&sys, "vm1", None) {
            Outcome::Done(d) => {
                assert!(d.contains("/etc/dhcp/dhclient.conf sends the host name"), "{d}");
                assert!(d.contains("restarted without release (pid 4243)"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&d, "/etc/dhcp/dhclient.conf"), format!("# conf\n{SEND_HOST_NAME}\nrequest subnet-mask;\n"));
        assert_eq!(
            argvs(&sys),
            [
                "dhclient -x -4 -v -i -pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases -I -df \
                 /var/lib/dhcp/dhclient6.eth0.leases eth0",
                "dhclient -4 -v -i -pf /run/dhclient.eth0.pid -lf /var/lib/dhcp/dhclient.eth0.leases -I -df \
                 /var/lib/dhcp/dhclient6.eth0.leases eth0",
            ]
        );
        // again: the configuration is not rewritten
        sys.script_effect("dhclient", &[("/run/dhclient.eth0.pid", "4244\n"), ("/proc/4244/cmdline", CMDLINE)]);
        let before = std::fs::metadata(d.path().join("etc/dhcp/dhclient.conf")).unwrap().modified().unwrap();
        match publish(&sys, "vm1", None) {
            Outcome::Done(r) => assert!(!r.contains("sends the host name"), "{r}"),
            other => panic!("{other:?}"),
        }
        let after = std::fs::metadata(d.path().join("etc/dhcp/dhclient.conf")).unwrap().modified().unwrap();
        assert_eq!(before, after);
        assert_eq!(sys.commands().len(), 4);
    }

    #[test]
    fn dhclient_rhel_ifcfg_and_own_config() {
        let (d, sys) = sandbox(&[
            ("/var/run/dhclient-eth0.pid", "99\n"),
            (
                "/proc/99/cmdline",
                "dhclient\0-H\0old\0-1\0-q\0-cf\0/etc/dhcp/dhclient-eth0.conf\0-lf\0/var/lib/dhclient/l\0-pf\0\
                 /var/run/dhclient-eth0.pid\0eth0\0",
            ),
            ("/etc/sysconfig/network-scripts/ifcfg-eth0", "DEVICE=eth0\nBOOTPROTO=dhcp\nDHCP_HOSTNAME=old\n"),
        ]);
        sys.script("dhclient", ok(""));
        sys.script_effect(
            "dhclient",
            &[("/var/run/dhclient-eth0.pid", "100\n"), ("/proc/100/cmdline", "dhclient\0eth0\0")],
        );
        assert!(matches!(publish(&sys, "vm1", None), Outcome::Done(_)));
        assert_eq!(read(&d, "/etc/dhcp/dhclient-eth0.conf"), format!("{SEND_HOST_NAME}\n"));
        assert_eq!(
            read(&d, "/etc/sysconfig/network-scripts/ifcfg-eth0"),
            "DEVICE=eth0\nBOOTPROTO=dhcp\nDHCP_HOSTNAME=\"vm1\"\n"
        );
        assert_eq!(
            argvs(&sys),
            [
                "dhclient -x -H vm1 -q -cf /etc/dhcp/dhclient-eth0.conf -lf /var/lib/dhclient/l -pf /var/run/dhclient-eth0.pid eth0",
                "dhclient -H vm1 -q -cf /etc/dhcp/dhclient-eth0.conf -lf /var/lib/dhclient/l -pf /var/run/dhclient-eth0.pid eth0",
            ]
        );
    }

    #[test]
    fn dhclient_stale_pid_files_and_failures() {
        // a pid file whose process is gone, or is not dhclient: nothing detected
        let (_d, sys) = sandbox(&[
            ("/run/dhclient.eth0.pid", "4242\n"),
            ("/run/dhclient.eth1.pid", "5\n"),
            ("/proc/5/cmdline", "/usr/bin/sleep\0x\0"),
        ]);
        sys.script("dhclient", ok(""));
        assert!(matches!(publish(&sys, "vm1", None), Outcome::Skipped(_)));
        assert!(sys.commands().is_empty());
        // a failing dhclient: failure to publish hostname
        let (_d, sys) = sandbox(&[("/run/dhclient.eth0.pid", "4242\n"), ("/proc/4242/cmdline", CMDLINE)]);
        sys.script("dhclient", CommandOutput { status: Some(2), stderr: b"no".to_vec(), ..Default::default() });
        match publish(&sys, "vm1", None) {
            Outcome::Failed(f) => {
                assert_eq!(f.reason, FAILURE);
                assert!(f.to_string().contains("interface=eth0"), "{f}");
            }
            other => panic!("{other:?}"),
        }
        // a foreground (service-managed) dhclient is left alone
        let (_d, sys) = sandbox(&[
            ("/run/dhclient.pid", "7\n"),
            ("/proc/7/cmdline", "/sbin/dhclient\0-d\0-pf\0/run/dhclient.pid\0eth0\0"),
        ]);
        sys.script("dhclient", ok(""));
        match publish(&sys, "vm1", None) {
            Outcome::Done(d) => assert!(d.contains("not restarted"), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn dhclient_of_a_vanished_interface_is_not_restarted() {
        // a Savable pool VM: the pool NIC's client outlived its NIC; the hot-attached NIC has its own client
        let (_d, sys) = sandbox(&[
            ("/run/dhclient.eth0.pid", "4242\n"),
            ("/proc/4242/cmdline", CMDLINE),
            ("/run/dhclient.eth1.pid", "4343\n"),
            ("/proc/4343/cmdline", "dhclient\0-1\0-4\0-pf\0/run/dhclient.eth1.pid\0eth1\0"),
        ]);
        let link = |index: u32, name: &str| crate::system::Link { index, name: name.into(), ..Default::default() };
        sys.set_links(vec![link(1, "lo"), link(3, "eth1")]);
        sys.script("dhclient", ok(""));
        sys.script_effect(
            "dhclient",
            &[("/run/dhclient.eth1.pid", "4344\n"), ("/proc/4344/cmdline", "dhclient\0eth1\0")],
        );
        match publish(&sys, "vm1", None) {
            Outcome::Done(d) => {
                assert!(d.contains("pid 4242 serves eth0 (no longer present): not restarted"), "{d}");
                assert!(d.contains("dhclient eth1 restarted without release (pid 4344)"), "{d}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            argvs(&sys),
            ["dhclient -x -4 -pf /run/dhclient.eth1.pid eth1", "dhclient -4 -pf /run/dhclient.eth1.pid eth1"]
        );
    }

    #[test]
    fn wicked_sets_the_option_unless_auto_and_runs_ifup() {
        let (d, sys) = sandbox(&[
            ("/run/wicked/nanny/x", ""),
            (WICKED_DHCP, "DHCLIENT_SET_HOSTNAME=\"no\"\nDHCLIENT_HOSTNAME_OPTION=\"\"\n"),
            ("/etc/sysconfig/network/ifcfg-eth0", "BOOTPROTO='dhcp'\n"),
            ("/etc/sysconfig/network/ifcfg-eth1", "BOOTPROTO='static'\n"),
            ("/etc/sysconfig/network/ifcfg-lo", "BOOTPROTO='static'\n"),
        ]);
        sys.script("ifup", ok(""));
        assert!(matches!(publish(&sys, "vm1", None), Outcome::Done(_)));
        assert_eq!(read(&d, WICKED_DHCP), "DHCLIENT_SET_HOSTNAME=\"no\"\nDHCLIENT_HOSTNAME_OPTION=\"vm1\"\n");
        assert_eq!(argvs(&sys), ["ifup eth0"]);
        std::fs::write(d.path().join(WICKED_DHCP.trim_start_matches('/')), "DHCLIENT_HOSTNAME_OPTION=\"AUTO\"\n")
            .unwrap();
        match publish(&sys, "vm1", None) {
            Outcome::Done(r) => assert!(r.contains("AUTO kept"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(read(&d, WICKED_DHCP), "DHCLIENT_HOSTNAME_OPTION=\"AUTO\"\n");
    }

    #[test]
    fn dhclient_conf_edit_is_idempotent() {
        let once = dhclient_conf_with_hostname("");
        assert_eq!(once, format!("{SEND_HOST_NAME}\n"));
        assert_eq!(dhclient_conf_with_hostname(&once), once);
        let debian = "option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;\n\n\
                      send host-name = gethostname();\nrequest subnet-mask;\n";
        assert_eq!(dhclient_conf_with_hostname(debian), debian);
        let commented = "#send host-name \"andare.fugue.com\";\n";
        assert_eq!(dhclient_conf_with_hostname(commented), format!("{commented}{SEND_HOST_NAME}\n"));
        let block = "interface \"eth0\" {\n  send host-name \"old\";\n}\n";
        assert_eq!(dhclient_conf_with_hostname(block), format!("interface \"eth0\" {{\n  {SEND_HOST_NAME}\n}}\n"));
    }

    // --- a real DHCP exchange: dhclient and dnsmasq on a veth pair, in private namespaces ----------------------

    const CHILD_ENV: &str = "AZPROV_PUBLISH_NETNS_CHILD";
    const NEW_NAME: &str = "azp-new-name";

    /// Re-run this test inside `unshare --pid --net --mount --uts`: the veth pair, the server's namespace, the
    /// host name, `/run` (a tmpfs) and every process started (pid namespace: all die with it) stay there.
    #[test]
    fn root_netns_publish_dhclient() {
        if std::env::var_os(CHILD_ENV).is_some() {
            publish_child();
            return;
        }
        crate::testutil::rerun_in_namespaces(
            "duties::hostname_publish::tests::root_netns_publish_dhclient",
            CHILD_ENV,
            &["dnsmasq", "dhclient"],
            &[],
            "azprov-publish-child-ok",
        );
    }

    use crate::testutil::sh;

    /// Stops the DHCP server, then removes its namespace, whatever happens.
    struct Guard(Option<crate::testutil::Dnsmasq>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.take();
            let _ = std::process::Command::new("ip").args(["netns", "del", "azpsrv"]).status();
        }
    }

    fn names_sent(log: &Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("client provides name: ").nth(1).map(|n| n.trim().to_string()))
            .collect()
    }

    fn publish_child() {
        // only ever inside the namespaces unshare made: the parent passed its own namespace ids
        if !crate::testutil::enter_child_namespaces(CHILD_ENV) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let tp = |n: &str| t.path().join(n).display().to_string();
        sh(&["ip", "netns", "add", "azpsrv"]);
        let mut guard = Guard(None);
        sh(&["ip", "link", "add", "azp1", "type", "veth", "peer", "name", "azp0"]);
        sh(&["ip", "link", "set", "azp0", "netns", "azpsrv"]);
        sh(&["ip", "netns", "exec", "azpsrv", "ip", "addr", "add", "10.99.0.1/24", "dev", "azp0"]);
        sh(&["ip", "netns", "exec", "azpsrv", "ip", "link", "set", "azp0", "up"]);
        sh(&["ip", "link", "set", "azp1", "up"]);
        let log = t.path().join("dnsmasq.log");
        guard.0 = Some(crate::testutil::Dnsmasq::start("azpsrv", "azp0", t.path()));
        let sys = crate::system::RealSystem::new("/");
        assert!(sys.set_kernel_hostname("azp-old-name").unwrap());
        // the image's client: no `send host-name` yet, no script (nothing configured), files in the temp dir
        let conf = tp("dhclient.conf");
        std::fs::write(&conf, "timeout 15;\ninitial-interval 1;\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        sh(&[
            "dhclient",
            "-1",
            "-4",
            "-sf",
            "/bin/true",
            "-cf",
            &conf,
            "-pf",
            "/run/dhclient.azp1.pid",
            "-lf",
            &tp("azp1.leases"),
            "azp1",
        ]);
        assert!(names_sent(&log).is_empty(), "{:?}", std::fs::read_to_string(&log));

        // the new name: kernel host name first (as hostname::apply does), then publish
        assert!(sys.set_kernel_hostname(NEW_NAME).unwrap());
        // the daemon writes its pid file after forking
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while running_dhclients(&sys).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let outcome = publish(&sys, NEW_NAME, None);
        println!("outcome: {outcome:?}");
        match &outcome {
            Outcome::Done(d) => assert!(d.contains("dhclient azp1 restarted without release (pid "), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(std::fs::read_to_string(&conf).unwrap().contains(SEND_HOST_NAME));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !names_sent(&log).iter().any(|n| n == NEW_NAME) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let sent = names_sent(&log);
        assert!(sent.iter().any(|n| n == NEW_NAME), "{sent:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        assert!(sent.iter().all(|n| n == NEW_NAME), "{sent:?}");
        // exactly one client afterwards, the one the pid file names
        assert_eq!(running_dhclients(&sys).len(), 1);
        drop(guard);
        println!("azprov-publish-child-ok");
    }
}
