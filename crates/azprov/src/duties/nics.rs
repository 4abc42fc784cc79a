//! Network interfaces as sysfs shows them (`/sys/class/net/*` under the root), SR-IOV VF filtering and the
//! primary NIC by MAC (platform.md §9.12). Shared by the routes and NIC-name duties.

use std::path::Path;

use crate::system::System;

pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// `IFF_SLAVE`: the interface is enslaved (an Accelerated Networking VF bonded under its synthetic NIC).
pub const IFF_SLAVE: u32 = 0x800;
/// The synthetic (VMBus) NIC driver.
pub const SYNTHETIC_DRIVER: &str = "hv_netvsc";
/// SR-IOV VF drivers of Accelerated Networking (Mellanox ConnectX-3, ConnectX-4/5, Microsoft MANA).
pub const VF_DRIVERS: &[&str] = &["mlx4_core", "mlx5_core", "mana"];

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// `ifindex`; 0 when sysfs does not say.
    pub index: u32,
    /// 12 upper-case hex digits, no separators (IMDS's form); empty when the interface has no 6-byte address.
    pub mac: String,
    /// `IFF_*` flags.
    pub flags: u32,
    /// The driver bound to the interface's device (`device/driver` link name); `None` for virtual interfaces.
    pub driver: Option<String>,
}

impl Nic {
    /// An SR-IOV VF: a VF driver, or enslaved under another interface.
    pub fn is_vf(&self) -> bool {
        self.flags & IFF_SLAVE != 0 || self.driver.as_deref().is_some_and(|d| VF_DRIVERS.contains(&d))
    }
    /// A Hyper-V synthetic NIC (and not a VF).
    pub fn is_synthetic(&self) -> bool {
        self.driver.as_deref() == Some(SYNTHETIC_DRIVER) && !self.is_vf()
    }
    /// `00:0d:3a:04:75:98` (lower-case, as systemd and `ip link` print it).
    pub fn colon_mac(&self) -> String {
        colon_mac(&self.mac)
    }
}

/// `000D3A047598` → `00:0d:3a:04:75:98`.
pub fn colon_mac(mac12: &str) -> String {
    mac12.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_ascii_lowercase()).collect::<Vec<_>>().join(":")
}

/// `00:0d:3a:04:75:98` (sysfs `address`) → `000D3A047598`; `None` unless exactly six 2-digit hex groups.
pub fn normalize_sysfs_mac(text: &str) -> Option<String> {
    let groups: Vec<&str> = text.trim().split(':').collect();
    let ok = groups.len() == 6 && groups.iter().all(|g| g.len() == 2 && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| groups.concat().to_ascii_uppercase())
}

/// `0x1003` (sysfs `flags`) → 0x1003.
pub fn parse_flags(text: &str) -> Option<u32> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u32::from_str_radix(hex, 16).ok()
}

/// Every interface in `/sys/class/net` that has a directory with an `address` (the loopback and other
/// interfaces without a 6-byte address are kept with an empty `mac`). Entries that are not interfaces
/// (`bonding_masters`) are skipped.
pub fn read_nics(sys: &dyn System) -> std::io::Result<Vec<Nic>> {
    let base = Path::new(SYS_CLASS_NET);
    let mut nics = Vec::new();
    for name in sys.read_dir(base)? {
        let dir = base.join(&name);
        let Ok(address) = sys.read_to_string(&dir.join("address")) else { continue };
        let read = |f: &str| sys.read_to_string(&dir.join(f)).ok();
        let driver = sys
            .read_link(&dir.join("device/driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        nics.push(Nic {
            index: read("ifindex").and_then(|t| t.trim().parse().ok()).unwrap_or(0),
            mac: normalize_sysfs_mac(&address).unwrap_or_default(),
            flags: read("flags").and_then(|t| parse_flags(&t)).unwrap_or(0),
            driver,
            name,
        });
    }
    Ok(nics)
}

/// The primary NIC: the interface carrying `mac` (IMDS `network.interface[0].macAddress`), never a VF that shares
/// it. When several non-VF interfaces carry the MAC, the synthetic one wins; still ambiguous is an error.
/// The error is a reason for the record.
pub fn primary<'a>(nics: &'a [Nic], mac: &str) -> Result<&'a Nic, String> {
    let mac = mac.trim().to_ascii_uppercase();
    let carrying: Vec<&Nic> = nics.iter().filter(|n| !n.mac.is_empty() && n.mac == mac).collect();
    let candidates: Vec<&Nic> = carrying.iter().copied().filter(|n| !n.is_vf()).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] if carrying.is_empty() => {
            Err(format!("no network interface has the primary MAC {} (IMDS)", colon_mac(&mac)))
        }
        [] => Err(format!(
            "only SR-IOV virtual functions ({}) have the primary MAC {}",
            names(&carrying),
            colon_mac(&mac)
        )),
        several => {
            let synthetic: Vec<&Nic> = several.iter().copied().filter(|n| n.is_synthetic()).collect();
            match synthetic.as_slice() {
                [one] => Ok(one),
                _ => Err(format!("several interfaces ({}) have the primary MAC {}", names(several), colon_mac(&mac))),
            }
        }
    }
}

fn names(nics: &[&Nic]) -> String {
    nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;

    /// Lay out `/sys/class/net/<name>` under `root` the way the kernel does: the class entry a symlink into
    /// `/sys/devices`, `device/driver` a symlink to the driver directory. `driver` None = a virtual interface.
    pub(crate) fn fake_nic(root: &Path, name: &str, index: u32, mac: &str, flags: u32, driver: Option<&str>) {
        let devdir = root.join(format!("sys/devices/fake/{name}/net/{name}"));
        std::fs::create_dir_all(&devdir).unwrap();
        std::fs::write(devdir.join("address"), format!("{mac}\n")).unwrap();
        std::fs::write(devdir.join("ifindex"), format!("{index}\n")).unwrap();
        std::fs::write(devdir.join("flags"), format!("{flags:#x}\n")).unwrap();
        if let Some(d) = driver {
            let drv = root.join(format!("sys/bus/fake/drivers/{d}"));
            std::fs::create_dir_all(&drv).unwrap();
            let dev = root.join(format!("sys/devices/fake/{name}"));
            std::os::unix::fs::symlink(format!("../../../bus/fake/drivers/{d}"), dev.join("driver")).unwrap();
            std::os::unix::fs::symlink("../..", devdir.join("device")).unwrap();
        }
        std::fs::create_dir_all(root.join("sys/class/net")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../devices/fake/{name}/net/{name}"),
            root.join("sys/class/net").join(name),
        )
        .unwrap();
    }

    fn nic(name: &str, mac: &str, flags: u32, driver: Option<&str>) -> Nic {
        Nic { name: name.into(), index: 2, mac: mac.into(), flags, driver: driver.map(String::from) }
    }

    #[test]
    fn mac_and_flag_forms() {
        assert_eq!(normalize_sysfs_mac("00:0d:3a:04:75:98\n").as_deref(), Some("000D3A047598"));
        assert_eq!(normalize_sysfs_mac("00:00:00:00:00:00").as_deref(), Some("000000000000"));
        assert_eq!(normalize_sysfs_mac("80:00:02:08:fe:80:00:00:00:00:00:00:00:00:00:00:00:00:00:00"), None);
        assert_eq!(normalize_sysfs_mac("0:d:3a:4:75:98"), None);
        assert_eq!(normalize_sysfs_mac(""), None);
        assert_eq!(parse_flags("0x1003\n"), Some(0x1003));
        assert_eq!(parse_flags("4099"), None);
        assert_eq!(colon_mac("000D3A047598"), "00:0d:3a:04:75:98");
    }

    #[test]
    fn vf_filtering() {
        assert!(nic("eth1", "M", 0x1803, Some("hv_netvsc")).is_vf(), "enslaved");
        for d in ["mlx4_core", "mlx5_core", "mana"] {
            assert!(nic("enP1s1", "M", 0x1003, Some(d)).is_vf(), "{d}");
            assert!(!nic("enP1s1", "M", 0x1003, Some(d)).is_synthetic());
        }
        assert!(!nic("eth0", "M", 0x1003, Some("hv_netvsc")).is_vf());
        assert!(nic("eth0", "M", 0x1003, Some("hv_netvsc")).is_synthetic());
        assert!(!nic("veth0", "M", 0x1003, None).is_vf());
        assert!(!nic("veth0", "M", 0x1003, None).is_synthetic());
    }

    #[test]
    fn primary_by_mac_never_a_vf() {
        let nics = vec![
            nic("eth1", "000D3A047599", 0x1003, Some("hv_netvsc")),
            nic("enP2s2", "000D3A047598", 0x1803, Some("mlx5_core")),
            nic("eth0", "000D3A047598", 0x1003, Some("hv_netvsc")),
        ];
        assert_eq!(primary(&nics, "000D3A047598").unwrap().name, "eth0");
        assert_eq!(primary(&nics, "000d3a047599").unwrap().name, "eth1");
        let e = primary(&nics, "000D3A0475AA").unwrap_err();
        assert!(e.contains("no network interface") && e.contains("00:0d:3a:04:75:aa"), "{e}");
        let e = primary(&nics[1..2], "000D3A047598").unwrap_err();
        assert!(e.contains("only SR-IOV") && e.contains("enP2s2"), "{e}");
        // two non-VF interfaces with the MAC: the synthetic one wins; two synthetic ones are ambiguous
        let with_virtual = vec![nic("br0", "000D3A047598", 0x1003, None), nics[2].clone()];
        assert_eq!(primary(&with_virtual, "000D3A047598").unwrap().name, "eth0");
        let twice = vec![nics[2].clone(), nic("eth9", "000D3A047598", 0x1003, Some("hv_netvsc"))];
        assert!(primary(&twice, "000D3A047598").unwrap_err().contains("several"));
        assert!(primary(&[nic("lo", "", 0x9, None)], "").is_err(), "an empty MAC matches nothing");
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        fake_nic(dir.path(), "eth0", 2, "00:0d:3a:04:75:98", 0x1003, Some("hv_netvsc"));
        fake_nic(dir.path(), "enP30832s1", 3, "00:0d:3a:04:75:98", 0x1803, Some("mlx5_core"));
        fake_nic(dir.path(), "lo", 1, "00:00:00:00:00:00", 0x9, None);
        std::fs::write(dir.path().join("sys/class/net/bonding_masters"), "\n").unwrap();
        let sys = RecordingSystem::new(dir.path());
        let nics = read_nics(&sys).unwrap();
        assert_eq!(nics.len(), 3, "{nics:?}");
        let vf = nics.iter().find(|n| n.name == "enP30832s1").unwrap();
        assert_eq!((vf.index, vf.flags, vf.driver.as_deref()), (3, 0x1803, Some("mlx5_core")));
        assert!(vf.is_vf());
        let eth0 = primary(&nics, "000D3A047598").unwrap();
        assert_eq!((eth0.name.as_str(), eth0.index, eth0.driver.as_deref()), ("eth0", 2, Some("hv_netvsc")));
        assert_eq!(nics.iter().find(|n| n.name == "lo").unwrap().driver, None);
        let empty = tempfile::tempdir().unwrap();
        assert!(read_nics(&RecordingSystem::new(empty.path())).is_err());
    }
}
