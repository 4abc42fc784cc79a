//! The network signals of the pre-provisioning flows (platform.md §10), for LIVE tests that run the agent inside a
//! private network namespace (as `bench --live` does, see [`crate::live`]).
//!
//! [`PoolNic`] is the pool VM's NIC: a veth pair whose agent end lives in the current (private) network namespace and
//! whose peer end — the "host side" — lives in a named namespace of its own (`ip netns add`; with a private mount
//! namespace and a tmpfs on `/run`, even that name stays private). No address is configured on either end and no
//! traffic crosses it: the simulator stays on 127.0.0.1, the pair only produces link events.
//! * **Running** ([`PoolNic::carrier_cycle`]): the host side goes down, then up again: the agent's NIC loses its
//!   carrier (`RTM_NEWLINK`, oper state down, `NO-CARRIER`) and regains it (oper state up, `LOWER_UP`).
//! * **Savable** ([`PoolNic::hot_swap`]): the agent's NIC is deleted (`RTM_DELLINK`), then a new veth pair is created
//!   in the host namespace and one end moved into the agent's namespace (`RTM_NEWLINK` for a new interface, down,
//!   as a hot-attached NIC appears; the agent brings it up).
//!
//! Every function refuses to run unless the current network namespace differs from the one given as the host's
//! (`/proc/self/ns/net` of the outer process, e.g. from [`crate::live::namespace_ids`]). [`assign_hook`] wires a NIC
//! to [`crate::server::Simulator::set_assign_hook`], so the signal comes at assignment time.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::Assignment;

/// Names and MAC of a pool NIC.
#[derive(Clone, Debug)]
pub struct NicSpec {
    /// The agent's interface, e.g. `eth0`.
    pub agent_if: String,
    /// Its peer in the host namespace.
    pub peer_if: String,
    /// The named network namespace of the host side.
    pub host_ns: String,
    /// The agent interface's MAC, `00:0d:3a:…` or 12 hex digits (the VM definition's `mac_address`).
    pub mac: String,
    /// A bridge in the host namespace (made by [`PoolNic::create`]) that every host-side end joins, e.g. for a DHCP
    /// server on it; `None`: the host-side ends stay unconnected.
    pub bridge: Option<String>,
}

impl Default for NicSpec {
    fn default() -> Self {
        NicSpec {
            agent_if: "azpps0".into(),
            peer_if: "azpps0h".into(),
            host_ns: "azpps-host".into(),
            mac: "60:45:bd:a1:b2:c3".into(),
            bridge: None,
        }
    }
}

/// The pool VM's NIC (module documentation). Dropping it deletes the agent's interface and the host namespace.
#[derive(Debug)]
pub struct PoolNic {
    spec: NicSpec,
    host_net_ns: String,
}

/// `net:[4026531840]` of this process.
pub fn current_net_namespace() -> Result<String, String> {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .map_err(|e| format!("/proc/self/ns/net: {e}"))
}

/// Err unless this process is in a network namespace other than `host_net_ns`. Accepts the `net:[…]` link itself or
/// [`crate::live::namespace_ids`]' `mnt:[…],uts:[…],net:[…]`.
pub fn check_private_netns(host_net_ns: &str) -> Result<(), String> {
    let host = host_net_ns.split(',').find(|p| p.starts_with("net:")).unwrap_or("");
    if host.is_empty() {
        return Err(format!("no host network namespace id in {host_net_ns:?}; refusing to touch links"));
    }
    let here = current_net_namespace()?;
    if here == host {
        return Err(format!("refusing to touch links: still in the host's network namespace {here}"));
    }
    Ok(())
}

/// `aa:bb:…` from 12 hex digits (or as given when it already has separators).
fn mac_with_colons(mac: &str) -> String {
    if mac.len() == 12 && mac.bytes().all(|b| b.is_ascii_hexdigit()) {
        let pairs: Vec<&str> = (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect();
        pairs.join(":").to_ascii_lowercase()
    } else {
        mac.to_ascii_lowercase()
    }
}

/// Runs `ip ARGS…`; Err with its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl PoolNic {
    /// Creates the host namespace and the pair: the agent end (`spec.agent_if`, `spec.mac`) here, up, with carrier.
    pub fn create(host_net_ns: &str, spec: NicSpec) -> Result<PoolNic, String> {
        check_private_netns(host_net_ns)?;
        ip(&["netns", "add", &spec.host_ns])?;
        let nic = PoolNic { spec, host_net_ns: host_net_ns.to_string() };
        let s = &nic.spec;
        let mac = mac_with_colons(&s.mac);
        ip(&["link", "add", &s.agent_if, "address", &mac, "type", "veth", "peer", "name", &s.peer_if])?;
        ip(&["link", "set", &s.peer_if, "netns", &s.host_ns])?;
        if let Some(br) = &s.bridge {
            ip(&["-n", &s.host_ns, "link", "add", br, "type", "bridge", "forward_delay", "0"])?;
            ip(&["-n", &s.host_ns, "link", "set", br, "up"])?;
            ip(&["-n", &s.host_ns, "link", "set", &s.peer_if, "master", br])?;
        }
        ip(&["-n", &s.host_ns, "link", "set", &s.peer_if, "up"])?;
        ip(&["link", "set", &s.agent_if, "up"])?;
        Ok(nic)
    }

    pub fn spec(&self) -> &NicSpec {
        &self.spec
    }

    /// The agent's interface name (changes with [`PoolNic::hot_swap`]).
    pub fn agent_if(&self) -> &str {
        &self.spec.agent_if
    }

    /// Running: the host side down for `down_for`, then up — the agent's NIC loses and regains its carrier.
    pub fn carrier_cycle(&self, down_for: Duration) -> Result<(), String> {
        check_private_netns(&self.host_net_ns)?;
        ip(&["-n", &self.spec.host_ns, "link", "set", &self.spec.peer_if, "down"])?;
        std::thread::sleep(down_for);
        ip(&["-n", &self.spec.host_ns, "link", "set", &self.spec.peer_if, "up"])?;
        Ok(())
    }

    /// Savable: deletes the agent's NIC (its peer goes with it), waits `gap`, then hot-attaches a new one: a veth
    /// pair made in the host namespace whose end `new_if` (MAC `new_mac`) moves into this namespace, down. The host
    /// side (a port of the bridge, when there is one) stays up, so the NIC has a carrier as soon as the agent brings
    /// it up.
    pub fn hot_swap(&mut self, new_if: &str, new_mac: &str, gap: Duration) -> Result<(), String> {
        check_private_netns(&self.host_net_ns)?;
        ip(&["link", "del", &self.spec.agent_if])?;
        std::thread::sleep(gap);
        let ns = self.spec.host_ns.clone();
        let peer = format!("{}h", new_if.chars().take(13).collect::<String>());
        let mac = mac_with_colons(new_mac);
        ip(&["-n", &ns, "link", "add", new_if, "address", &mac, "type", "veth", "peer", "name", &peer])?;
        if let Some(br) = &self.spec.bridge {
            ip(&["-n", &ns, "link", "set", &peer, "master", br])?;
        }
        ip(&["-n", &ns, "link", "set", &peer, "up"])?;
        // `ip -n NS` runs in NS; the pid names this process's (the agent's) namespace
        let pid = std::process::id().to_string();
        ip(&["-n", &ns, "link", "set", new_if, "netns", &pid])?;
        self.spec.agent_if = new_if.to_string();
        self.spec.peer_if = peer;
        self.spec.mac = new_mac.to_string();
        Ok(())
    }

    /// The agent NIC's `ip -o link show` line (flags and `state …`).
    pub fn link_line(&self) -> Result<String, String> {
        Ok(ip(&["-o", "link", "show", "dev", &self.spec.agent_if])?.trim().to_string())
    }
}

impl Drop for PoolNic {
    fn drop(&mut self) {
        if check_private_netns(&self.host_net_ns).is_err() {
            return;
        }
        let _ = ip(&["link", "del", &self.spec.agent_if]);
        let _ = ip(&["netns", "del", &self.spec.host_ns]);
    }
}

/// How [`assign_hook`] signals each PPS type.
#[derive(Clone, Debug)]
pub struct SignalOptions {
    /// Running: how long the carrier stays off.
    pub down_for: Duration,
    /// Savable: the new NIC's name and MAC, and the pause between removal and hot attach.
    pub new_if: String,
    pub new_mac: String,
    pub gap: Duration,
}

impl Default for SignalOptions {
    fn default() -> Self {
        SignalOptions {
            down_for: Duration::from_millis(200),
            new_if: "azpps1".into(),
            new_mac: "60:45:bd:a1:b2:c4".into(),
            gap: Duration::from_millis(200),
        }
    }
}

/// An assign hook for [`crate::server::Simulator::set_assign_hook`]: Running → [`PoolNic::carrier_cycle`], Savable →
/// [`PoolNic::hot_swap`]; `PreprovisionedOSDisk` (the test restarts the VM itself) and others → nothing.
pub fn assign_hook(
    nic: Arc<Mutex<PoolNic>>,
    opts: SignalOptions,
) -> impl FnMut(&Assignment) -> Result<(), String> + Send + 'static {
    move |a: &Assignment| {
        let mut nic = nic.lock().unwrap_or_else(|e| e.into_inner());
        match a.pps_type.as_str() {
            "Running" => nic.carrier_cycle(opts.down_for),
            "Savable" => nic.hot_swap(&opts.new_if, &opts.new_mac, opts.gap),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::Faults;
    use crate::server::Simulator;
    use crate::vm::VmDefinition;
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;

    const CHILD_ENV: &str = "AZPROV_SIM_LINKS_CHILD";

    #[test]
    fn macs_get_colons() {
        assert_eq!(mac_with_colons("6045BDA1B2C3"), "60:45:bd:a1:b2:c3");
        assert_eq!(mac_with_colons("60:45:BD:A1:B2:C3"), "60:45:bd:a1:b2:c3");
    }

    #[test]
    fn refuses_the_host_namespace() {
        let here = current_net_namespace().unwrap();
        assert!(check_private_netns(&here).unwrap_err().contains("refusing"));
        assert!(check_private_netns(&format!("mnt:[1],uts:[2],{here}")).unwrap_err().contains("refusing"));
        assert!(check_private_netns("").is_err());
        assert!(check_private_netns("mnt:[1]").is_err());
        assert!(PoolNic::create(&here, NicSpec::default()).unwrap_err().contains("refusing"));
    }

    /// Re-run this test inside `unshare --net --mount`: the veth pairs, the host namespace and `/run` stay there.
    #[test]
    fn root_netns_pps_signals() {
        if let Ok(host) = std::env::var(CHILD_ENV) {
            child(&host);
            return;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping root_netns_pps_signals: needs root for network namespaces");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .args(["--net", "--mount", "--"])
            .arg(exe)
            .args(["--exact", "links::tests::root_netns_pps_signals", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, current_net_namespace().unwrap())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("skipping root_netns_pps_signals: cannot run unshare: {e}");
                return;
            }
        };
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() && text.contains("azprov-links-unavailable") {
            eprintln!("skipping root_netns_pps_signals: {text}");
            return;
        }
        assert!(out.status.success(), "{text}");
        assert!(text.contains("azprov-links-child-ok"), "the child did not run the checks:\n{text}");
    }

    fn sh(args: &[&str]) -> bool {
        Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success())
    }

    /// `ip -o monitor link` lines until `stop` returns.
    fn monitor(during: impl FnOnce()) -> Vec<String> {
        let mut mon = Command::new("ip").args(["-o", "monitor", "link"]).stdout(Stdio::piped()).spawn().unwrap();
        let stdout = mon.stdout.take().unwrap();
        let reader = std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect());
        std::thread::sleep(Duration::from_millis(200));
        during();
        std::thread::sleep(Duration::from_millis(300));
        let _ = mon.kill();
        let _ = mon.wait();
        reader.join().unwrap()
    }

    fn position(lines: &[String], pred: impl Fn(&str) -> bool) -> Option<usize> {
        lines.iter().position(|l| pred(l))
    }

    fn child(host: &str) {
        // only ever in the namespaces unshare made
        check_private_netns(host).unwrap();
        if !sh(&["mount", "--make-rprivate", "/"]) || !sh(&["mount", "-t", "tmpfs", "tmpfs", "/run"]) {
            println!("azprov-links-unavailable: cannot mount a private /run");
            return;
        }
        assert!(sh(&["ip", "link", "set", "lo", "up"]));

        // Running: the simulator's control endpoint assigns, the hook cycles the carrier
        let pool = VmDefinition { pps_type: "Running".into(), ..Default::default() };
        let vm = pool.clone().with_customer(VmDefinition { hostname: "customer".into(), ..pool });
        let sim = Simulator::start(vm, Faults::none()).unwrap();
        let nic = Arc::new(Mutex::new(PoolNic::create(host, NicSpec::default()).unwrap()));
        sim.set_assign_hook(assign_hook(Arc::clone(&nic), SignalOptions::default()));
        let before = nic.lock().unwrap().link_line().unwrap();
        assert!(before.contains("LOWER_UP") && before.contains("link/ether 60:45:bd:a1:b2:c3"), "{before}");
        let lines = monitor(|| {
            let out = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", ""])
                .arg(format!("{}/azprov-sim/assign", sim.url()))
                .output();
            match out {
                Ok(o) => assert_eq!(String::from_utf8_lossy(&o.stdout), "200"),
                // no curl: the Rust API triggers the same hook
                Err(_) => assert_eq!(sim.assign().unwrap().pps_type, "Running"),
            }
        });
        let ours: Vec<String> = lines.iter().filter(|l| l.contains("azpps0@")).cloned().collect();
        let down = position(&ours, |l| l.contains("NO-CARRIER")).unwrap_or_else(|| panic!("{lines:#?}"));
        let up = position(&ours[down..], |l| l.contains("LOWER_UP") && l.contains("state UP"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert!(up > 0);
        assert!(sim.is_assigned());
        assert_eq!(sim.pps_status().hook_error, None);
        drop(sim);
        drop(nic);

        // Savable: the Rust API assigns, the hook removes the NIC and hot-attaches another one
        let pool = VmDefinition { pps_type: "Savable".into(), ..Default::default() };
        let vm = pool.clone().with_customer(VmDefinition { hostname: "customer".into(), ..pool });
        let sim = Simulator::start(vm, Faults::none()).unwrap();
        let nic = Arc::new(Mutex::new(PoolNic::create(host, NicSpec::default()).unwrap()));
        sim.set_assign_hook(assign_hook(Arc::clone(&nic), SignalOptions::default()));
        let lines = monitor(|| {
            sim.assign().unwrap();
        });
        let deleted = position(&lines, |l| l.starts_with("Deleted") && l.contains("azpps0@"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        let added = position(&lines, |l| !l.starts_with("Deleted") && l.contains("azpps1@"))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        assert!(deleted < added, "{lines:#?}");
        let nic_now = nic.lock().unwrap();
        assert_eq!(nic_now.agent_if(), "azpps1");
        let line = nic_now.link_line().unwrap();
        assert!(line.contains("state DOWN") && line.contains("60:45:bd:a1:b2:c4"), "{line}");
        assert!(!sh(&["ip", "link", "show", "dev", "azpps0"]));
        // the agent brings the hot-attached NIC up: the host side is up, so it gets a carrier
        assert!(sh(&["ip", "link", "set", "azpps1", "up"]));
        std::thread::sleep(Duration::from_millis(100));
        assert!(nic_now.link_line().unwrap().contains("LOWER_UP"));
        drop(nic_now);
        // the simulator's hook holds the other reference
        drop(sim);
        drop(nic);
        assert!(!sh(&["ip", "netns", "exec", "azpps-host", "true"]), "the host namespace is removed on drop");
        println!("azprov-links-child-ok");
    }
}
