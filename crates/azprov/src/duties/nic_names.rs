//! Stable NIC names (platform.md §9.12): on the first boot of a VM id, pin the names the synthetic NICs have now
//! with MAC-matched systemd `.link` files, restricted to `Driver=hv_netvsc` so the Accelerated Networking VF that
//! shares the MAC never matches; move aside the old udev persistent-net rules an image may carry (they pin names
//! to the MACs of the VM the image was captured from). Nothing is renamed at run time: the files take effect
//! when udev next sees the devices (the next boot). Files only, so it works under `--root`.

use std::path::{Path, PathBuf};

use super::nics::{self, Nic};
use super::Outcome;
use crate::report::Failure;
use crate::system::System;

pub const LINK_DIR: &str = "/etc/systemd/network";
/// Our `.link` files: `10-azprov-<name>.link` (sorts before distro defaults such as `99-default.link`).
pub const LINK_PREFIX: &str = "10-azprov-";
/// Old persistent-net rules an image may carry in `/etc`.
pub const OLD_RULES: &[&str] =
    &["/etc/udev/rules.d/70-persistent-net.rules", "/etc/udev/rules.d/75-persistent-net-generator.rules"];
/// Appended to a rules file moved aside (udev reads only `*.rules`).
pub const DISABLED_SUFFIX: &str = ".azprov-disabled";
const GENERATOR: &str = "75-persistent-net-generator.rules";
/// Where a packaged persistent-net generator lives (Debian/Ubuntu before systemd's `.link` naming, RHEL 6).
const GENERATOR_DIRS: &[&str] = &["/lib/udev/rules.d", "/usr/lib/udev/rules.d"];
const MASK_TEXT: &str =
    "# Disabled by azprov: interface names are pinned by MAC in /etc/systemd/network/10-azprov-*.link\n";

/// A name we can put in a file name and a `.link` file: 1–15 bytes (IFNAMSIZ-1), no `/`, whitespace or `%`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'%' && b != b'\\')
}

pub fn link_path(name: &str) -> PathBuf {
    Path::new(LINK_DIR).join(format!("{LINK_PREFIX}{name}.link"))
}

/// The `.link` file pinning `nic`'s current name.
pub fn link_file_text(nic: &Nic) -> String {
    format!(
        "# Written by azprov on the first boot of this VM: keeps the name this synthetic NIC had then.\n\
         # Bound to the MAC address; deprovisioning removes it.\n\
         [Match]\n\
         MACAddress={}\n\
         Driver=hv_netvsc\n\
         \n\
         [Link]\n\
         Name={}\n",
        nic.colon_mac(),
        nic.name
    )
}

/// Whether a `.link` file's `[Match]` section names `colon_mac` (any case, possibly among several MACs).
pub fn link_matches_mac(text: &str, colon_mac: &str) -> bool {
    let mut in_match = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_match = line.eq_ignore_ascii_case("[Match]");
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let key = k.trim();
            if in_match
                && (key == "MACAddress" || key == "PermanentMACAddress")
                && v.split_whitespace().any(|m| m.eq_ignore_ascii_case(colon_mac))
            {
                return true;
            }
        }
    }
    false
}

/// A rules file that does nothing: a symlink to `/dev/null`, or only blank and comment lines (udev's masks).
fn is_mask(sys: &dyn System, path: &Path) -> bool {
    let Ok(info) = sys.stat(path) else { return false };
    if info.is_symlink {
        return sys.read_link(path).map(|t| t == Path::new("/dev/null")).unwrap_or(false);
    }
    info.is_file
        && sys
            .read_to_string(path)
            .map(|t| t.lines().map(str::trim).all(|l| l.is_empty() || l.starts_with('#')))
            .unwrap_or(false)
}

/// `<path>.azprov-disabled`, or `.azprov-disabled.N` when an earlier one is in the way.
fn aside_path(sys: &dyn System, path: &Path) -> Option<PathBuf> {
    (0..100)
        .map(|n| {
            let suffix = if n == 0 { DISABLED_SUFFIX.to_string() } else { format!("{DISABLED_SUFFIX}.{n}") };
            PathBuf::from(format!("{}{suffix}", path.display()))
        })
        .find(|p| !sys.exists(p))
}

fn fail(path: &Path, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(
        Failure::new("failure to pin network interface names").with("path", path.display()).with("exception", e),
    )
}

/// Move the old persistent-net rules aside and mask a packaged generator. Returns what changed.
fn disable_old_rules(sys: &dyn System, changes: &mut Vec<String>) -> Result<(), Outcome> {
    for rules in OLD_RULES.iter().map(Path::new) {
        if !sys.exists(rules) || is_mask(sys, rules) {
            continue;
        }
        let Some(to) = aside_path(sys, rules) else { return Err(fail(rules, "no free name to move it aside")) };
        sys.rename(rules, &to).map_err(|e| fail(rules, e))?;
        changes.push(format!("moved {} to {}", rules.display(), to.display()));
    }
    let etc_generator = Path::new("/etc/udev/rules.d").join(GENERATOR);
    let packaged = GENERATOR_DIRS.iter().map(|d| Path::new(d).join(GENERATOR)).find(|p| sys.exists(p));
    if let (Some(packaged), false) = (packaged, sys.exists(&etc_generator)) {
        sys.create_dir_all(Path::new("/etc/udev/rules.d"), 0o755, None).map_err(|e| fail(&etc_generator, e))?;
        sys.write_file(&etc_generator, MASK_TEXT.as_bytes(), 0o644, None).map_err(|e| fail(&etc_generator, e))?;
        changes.push(format!("masked {} with {}", packaged.display(), etc_generator.display()));
    }
    Ok(())
}

/// Pin the current names of the synthetic NICs (first boot of a VM id) and disable old persistent-net rules.
pub fn pin(sys: &dyn System) -> Outcome {
    let mut changes = Vec::new();
    if let Err(outcome) = disable_old_rules(sys, &mut changes) {
        return outcome;
    }
    let nic_list = match nics::read_nics(sys) {
        Ok(n) => n,
        Err(e) => {
            let why = format!("cannot list {}: {e}", nics::SYS_CLASS_NET);
            return if changes.is_empty() {
                Outcome::Skipped(why)
            } else {
                Outcome::Done(format!("{}; {why}", changes.join("; ")))
            };
        }
    };
    let synthetic: Vec<&Nic> =
        nic_list.iter().filter(|n| n.is_synthetic() && !n.mac.is_empty() && valid_ifname(&n.name)).collect();
    let mut notes = Vec::new();
    // `.link` files someone else wrote: a NIC already pinned there is left to them (ours would sort first)
    let others: Vec<(String, String)> = sys
        .read_dir(Path::new(LINK_DIR))
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".link") && !n.starts_with(LINK_PREFIX))
        .filter_map(|n| sys.read_to_string(&Path::new(LINK_DIR).join(&n)).ok().map(|t| (n, t)))
        .collect();
    for nic in &synthetic {
        let mac = nic.colon_mac();
        if let Some((other, _)) = others.iter().find(|(_, t)| link_matches_mac(t, &mac)) {
            notes.push(format!("{} ({mac}) already matched by {LINK_DIR}/{other}", nic.name));
            continue;
        }
        let path = link_path(&nic.name);
        let text = link_file_text(nic);
        if sys.read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            notes.push(format!("{} already pinned", nic.name));
            continue;
        }
        if let Err(e) = sys.create_dir_all(Path::new(LINK_DIR), 0o755, None) {
            return fail(Path::new(LINK_DIR), e);
        }
        if let Err(e) = sys.write_file(&path, text.as_bytes(), 0o644, None) {
            return fail(&path, e);
        }
        changes.push(format!("pinned {} ({mac}) in {}", nic.name, path.display()));
    }
    let vfs: Vec<&str> = nic_list.iter().filter(|n| n.is_vf()).map(|n| n.name.as_str()).collect();
    if !vfs.is_empty() {
        notes.push(format!("SR-IOV VFs not pinned: {}", vfs.join(", ")));
    }
    if synthetic.is_empty() && changes.is_empty() {
        return Outcome::Skipped("no synthetic (hv_netvsc) network interface".into());
    }
    let mut text = if changes.is_empty() { "no change".to_string() } else { changes.join("; ") };
    if !notes.is_empty() {
        text.push_str(&format!(" ({})", notes.join("; ")));
    }
    Outcome::Done(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duties::nics::tests::fake_nic;
    use crate::system::record::RecordingSystem;

    fn done(o: Outcome) -> String {
        match o {
            Outcome::Done(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn link_text_and_names() {
        let nic = Nic {
            name: "eth0".into(),
            index: 2,
            mac: "000D3A047598".into(),
            flags: 0x1003,
            driver: Some("hv_netvsc".into()),
        };
        assert_eq!(
            link_file_text(&nic),
            "# Written by azprov on the first boot of this VM: keeps the name this synthetic NIC had then.\n\
             # Bound to the MAC address; deprovisioning removes it.\n\
             [Match]\nMACAddress=00:0d:3a:04:75:98\nDriver=hv_netvsc\n\n[Link]\nName=eth0\n"
        );
        assert_eq!(link_path("eth0"), PathBuf::from("/etc/systemd/network/10-azprov-eth0.link"));
        for ok in ["eth0", "enP30832s1", "a.b-c_d"] {
            assert!(valid_ifname(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "sixteen-chars-xx", "a%d"] {
            assert!(!valid_ifname(bad), "{bad}");
        }
        assert!(link_matches_mac("[Match]\nMACAddress=00:0D:3A:04:75:98\n[Link]\nName=x\n", "00:0d:3a:04:75:98"));
        assert!(link_matches_mac("[Match]\nMACAddress=aa:bb:cc:dd:ee:ff 00:0d:3a:04:75:98\n", "00:0d:3a:04:75:98"));
        assert!(!link_matches_mac("[Link]\nMACAddress=00:0d:3a:04:75:98\n", "00:0d:3a:04:75:98"));
        assert!(!link_matches_mac("[Match]\nOriginalName=eth0\n", "00:0d:3a:04:75:98"));
    }

    #[test]
    fn pins_synthetic_nics_only_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_nic(root, "eth0", 2, "00:0d:3a:04:75:98", 0x1003, Some("hv_netvsc"));
        fake_nic(root, "eth1", 3, "00:0d:3a:04:75:99", 0x1003, Some("hv_netvsc"));
        fake_nic(root, "enP30832s1", 4, "00:0d:3a:04:75:98", 0x1803, Some("mlx5_core"));
        fake_nic(root, "enP1s2", 5, "00:0d:3a:04:75:99", 0x1003, Some("mana"));
        fake_nic(root, "docker0", 6, "02:42:ac:11:00:01", 0x1003, None);
        fake_nic(root, "lo", 1, "00:00:00:00:00:00", 0x9, None);
        let sys = RecordingSystem::new(root);
        let d = done(pin(&sys));
        assert!(d.contains("pinned eth0 (00:0d:3a:04:75:98)") && d.contains("pinned eth1"), "{d}");
        assert!(d.contains("SR-IOV VFs not pinned: enP1s2, enP30832s1"), "{d}");
        let mut files = sys.read_dir(Path::new(LINK_DIR)).unwrap();
        files.sort();
        assert_eq!(files, vec!["10-azprov-eth0.link", "10-azprov-eth1.link"]);
        let text = sys.read_to_string(&link_path("eth1")).unwrap();
        assert!(text.contains("MACAddress=00:0d:3a:04:75:99\nDriver=hv_netvsc\n") && text.contains("Name=eth1\n"));
        assert_eq!(sys.stat(&link_path("eth0")).unwrap().mode, 0o644);
        assert!(sys.commands().is_empty(), "nothing run, nothing renamed");
        let before =
            std::fs::metadata(root.join("etc/systemd/network/10-azprov-eth0.link")).unwrap().modified().unwrap();
        let d = done(pin(&sys));
        assert!(d.starts_with("no change") && d.contains("eth0 already pinned"), "{d}");
        let after =
            std::fs::metadata(root.join("etc/systemd/network/10-azprov-eth0.link")).unwrap().modified().unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn respects_existing_link_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_nic(root, "eth0", 2, "00:0d:3a:04:75:98", 0x1003, Some("hv_netvsc"));
        std::fs::create_dir_all(root.join("etc/systemd/network")).unwrap();
        std::fs::write(
            root.join("etc/systemd/network/50-cloud-init-eth0.link"),
            "[Match]\nMACAddress=00:0D:3A:04:75:98\n[Link]\nName=lan0\n",
        )
        .unwrap();
        let d = done(pin(&RecordingSystem::new(root)));
        assert!(d.contains("already matched by /etc/systemd/network/50-cloud-init-eth0.link"), "{d}");
        assert!(!root.join("etc/systemd/network/10-azprov-eth0.link").exists());
    }

    #[test]
    fn moves_old_rules_aside_and_masks_the_generator() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fake_nic(root, "eth0", 2, "00:0d:3a:04:75:98", 0x1003, Some("hv_netvsc"));
        let rules = root.join("etc/udev/rules.d");
        std::fs::create_dir_all(&rules).unwrap();
        std::fs::write(
            rules.join("70-persistent-net.rules"),
            "SUBSYSTEM==\"net\", ATTR{address}==\"00:0d:3a:aa:bb:cc\", NAME=\"eth0\"\n",
        )
        .unwrap();
        std::fs::write(rules.join("70-persistent-net.rules.azprov-disabled"), "older\n").unwrap();
        std::fs::write(rules.join("75-persistent-net-generator.rules"), "ACTION==\"add\", GOTO=\"x\"\n").unwrap();
        std::fs::create_dir_all(root.join("lib/udev/rules.d")).unwrap();
        std::fs::write(root.join("lib/udev/rules.d/75-persistent-net-generator.rules"), "ACTION==\"add\"\n").unwrap();
        let sys = RecordingSystem::new(root);
        let d = done(pin(&sys));
        assert!(d.contains("moved /etc/udev/rules.d/70-persistent-net.rules to /etc/udev/rules.d/70-persistent-net.rules.azprov-disabled.1"), "{d}");
        assert!(d.contains("moved /etc/udev/rules.d/75-persistent-net-generator.rules"), "{d}");
        assert!(d.contains("masked /lib/udev/rules.d/75-persistent-net-generator.rules"), "{d}");
        assert_eq!(std::fs::read_to_string(rules.join("70-persistent-net.rules.azprov-disabled")).unwrap(), "older\n");
        assert!(std::fs::read_to_string(rules.join("70-persistent-net.rules.azprov-disabled.1"))
            .unwrap()
            .contains("NAME"));
        assert!(!rules.join("70-persistent-net.rules").exists());
        assert!(std::fs::read_to_string(rules.join("75-persistent-net-generator.rules")).unwrap().starts_with('#'));
        assert!(root.join("lib/udev/rules.d/75-persistent-net-generator.rules").exists(), "packaged file untouched");
        // the mask stays a mask on the next run
        let d = done(pin(&sys));
        assert!(d.starts_with("no change"), "{d}");
    }

    #[test]
    fn a_dev_null_mask_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rules = root.join("etc/udev/rules.d");
        std::fs::create_dir_all(&rules).unwrap();
        std::os::unix::fs::symlink("/dev/null", rules.join("75-persistent-net-generator.rules")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/net")).unwrap();
        match pin(&RecordingSystem::new(root)) {
            Outcome::Skipped(r) => assert!(r.contains("no synthetic"), "{r}"),
            other => panic!("{other:?}"),
        }
        assert!(std::fs::symlink_metadata(rules.join("75-persistent-net-generator.rules"))
            .unwrap()
            .file_type()
            .is_symlink());
        // no sysfs at all (an offline image)
        let empty = tempfile::tempdir().unwrap();
        match pin(&RecordingSystem::new(empty.path())) {
            Outcome::Skipped(r) => assert!(r.contains("/sys/class/net"), "{r}"),
            other => panic!("{other:?}"),
        }
    }
}
