//! SCSI command timeouts of Azure disks and I/O timeouts of Azure remote NVMe disks (platform.md §9.13), written
//! now for the disks that exist; disks attached later get them from the udev rule in `packaging/udev/`.
//! Under `--root DIR` the sysfs attributes are files under `DIR/sys`.

use std::path::Path;

use super::Outcome;
use crate::config::ScsiTimeoutsDuty;
use crate::system::System;

/// Remote NVMe disks (OS and data disks on NVMe sizes).
pub const NVME_REMOTE_MODEL: &str = "MSFT NVMe Accelerator";

fn attr(sys: &dyn System, path: &Path) -> Option<String> {
    sys.read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Set the timeouts; Done lists what changed.
pub fn apply(sys: &dyn System, cfg: &ScsiTimeoutsDuty) -> Outcome {
    if !cfg.enabled {
        return Outcome::Skipped("SCSI/NVMe timeout duty disabled".into());
    }
    let block = Path::new("/sys/block");
    let Ok(names) = sys.read_dir(block) else {
        return Outcome::Skipped("no /sys/block".into());
    };
    let mut changed = Vec::new();
    let mut failed = Vec::new();
    let scsi = cfg.scsi_timeout_secs.to_string();
    for name in &names {
        let dev = block.join(name);
        if name.starts_with("sd") {
            let vendor = attr(sys, &dev.join("device/vendor")).unwrap_or_default();
            let model = attr(sys, &dev.join("device/model")).unwrap_or_default();
            if !(vendor.starts_with("Msft") && model.starts_with("Virtual Disk")) {
                continue;
            }
            let path = dev.join("device/timeout");
            if attr(sys, &path).as_deref() == Some(scsi.as_str()) {
                continue;
            }
            match sys.write_attribute(&path, scsi.as_bytes()) {
                Ok(()) => changed.push(format!("{name} {scsi}s")),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        } else if name.starts_with("nvme") {
            let model = attr(sys, &dev.join("device/model")).unwrap_or_default();
            if !model.starts_with(NVME_REMOTE_MODEL) {
                continue;
            }
            let path = dev.join("queue/io_timeout");
            let Some(current) = attr(sys, &path).and_then(|v| v.parse::<u64>().ok()) else { continue };
            if current >= cfg.nvme_io_timeout_ms as u64 {
                continue; // only ever raised
            }
            match sys.write_attribute(&path, cfg.nvme_io_timeout_ms.to_string().as_bytes()) {
                Ok(()) => changed.push(format!("{name} io_timeout {}ms", cfg.nvme_io_timeout_ms)),
                Err(e) => failed.push(format!("{name}: {e}")),
            }
        }
    }
    let mut text = if changed.is_empty() { "timeouts already set".to_string() } else { changed.join(", ") };
    if !failed.is_empty() {
        // a timeout we could not set never fails provisioning: recorded as a note
        text.push_str(&format!("; not set: {}", failed.join(", ")));
    }
    Outcome::Done(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::RealSystem;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn sets_msft_scsi_and_nvme_remote_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "sys/block/sda/device/vendor", "Msft    \n");
        put(r, "sys/block/sda/device/model", "Virtual Disk    \n");
        put(r, "sys/block/sda/device/timeout", "30\n");
        put(r, "sys/block/sdc/device/vendor", "ATA     \n");
        put(r, "sys/block/sdc/device/model", "Samsung\n");
        put(r, "sys/block/sdc/device/timeout", "30\n");
        put(r, "sys/block/nvme0n1/device/model", "MSFT NVMe Accelerator v1.0              \n");
        put(r, "sys/block/nvme0n1/queue/io_timeout", "30000\n");
        put(r, "sys/block/nvme1n1/device/model", "Microsoft NVMe Direct Disk v2\n");
        put(r, "sys/block/nvme1n1/queue/io_timeout", "30000\n");
        put(r, "sys/block/nvme2n1/device/model", "MSFT NVMe Accelerator v1.0\n");
        put(r, "sys/block/nvme2n1/queue/io_timeout", "600000\n");
        let sys = RealSystem::new(r);
        let cfg = ScsiTimeoutsDuty::default();
        let out = apply(&sys, &cfg);
        assert_eq!(out, Outcome::Done("nvme0n1 io_timeout 240000ms, sda 300s".into()));
        let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap();
        assert_eq!(read("sys/block/sda/device/timeout"), "300");
        assert_eq!(read("sys/block/sdc/device/timeout"), "30\n");
        assert_eq!(read("sys/block/nvme1n1/queue/io_timeout"), "30000\n");
        assert_eq!(read("sys/block/nvme2n1/queue/io_timeout"), "600000\n");
        assert_eq!(apply(&sys, &cfg), Outcome::Done("timeouts already set".into()));
        // the attribute is written in place, never created
        std::fs::remove_file(r.join("sys/block/sda/device/timeout")).unwrap();
        let cfg = ScsiTimeoutsDuty { scsi_timeout_secs: 180, ..cfg };
        assert!(matches!(apply(&sys, &cfg), Outcome::Done(ref t) if t.contains("not set: sda")));
        assert!(!r.join("sys/block/sda/device/timeout").exists());
        assert_eq!(
            apply(&sys, &ScsiTimeoutsDuty { enabled: false, ..cfg }),
            Outcome::Skipped("SCSI/NVMe timeout duty disabled".into())
        );
    }
}

#[cfg(test)]
mod rules_tests {
    use std::collections::HashSet;

    /// The shipped udev rules: well-formed `KEY op "value"` lists, every GOTO has its LABEL, and the SCSI timeout
    /// rule is the one of platform.md §9.13 with the default value. (`udevadm verify` runs in the packaging VM.)
    #[test]
    fn udev_rules_are_well_formed() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../packaging/udev/66-azprov-storage.rules");
        let text = std::fs::read_to_string(path).unwrap();
        let mut labels = HashSet::new();
        let mut gotos = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut rest = line;
            while !rest.is_empty() {
                let op_at = rest.find(['=', '!', '+', ':']).unwrap_or_else(|| panic!("line {}: no operator", n + 1));
                let key = &rest[..op_at];
                assert!(
                    key.chars().all(|c| c.is_ascii_alphanumeric() || "{}_/".contains(c)),
                    "line {}: key `{key}`",
                    n + 1
                );
                let after = &rest[op_at..];
                let op = ["==", "!=", "+=", ":=", "="].iter().find(|o| after.starts_with(**o)).unwrap();
                let value_start = &after[op.len()..];
                assert!(value_start.starts_with('"'), "line {}: value not quoted", n + 1);
                let end = value_start[1..].find('"').unwrap_or_else(|| panic!("line {}: unterminated", n + 1));
                let value = &value_start[1..1 + end];
                match key {
                    "LABEL" => {
                        labels.insert(value.to_string());
                    }
                    "GOTO" => {
                        gotos.insert(value.to_string());
                    }
                    _ => {}
                }
                rest = value_start[end + 2..].trim_start();
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r.trim_start();
                } else {
                    assert!(rest.is_empty(), "line {}: junk `{rest}`", n + 1);
                }
            }
        }
        assert!(gotos.is_subset(&labels), "GOTO without LABEL: {:?}", gotos.difference(&labels));
        let want = format!(
            "ACTION==\"add|change\", SUBSYSTEM==\"scsi\", ENV{{DEVTYPE}}==\"scsi_device\", ATTR{{type}}==\"0\", \
             ATTR{{vendor}}==\"Msft*\", ATTR{{model}}==\"Virtual Disk*\", ATTR{{timeout}}=\"{}\"",
            crate::config::ScsiTimeoutsDuty::default().scsi_timeout_secs
        );
        assert!(text.lines().any(|l| l == want), "SCSI timeout rule missing");
        assert!(text.contains(&format!(
            "ATTR{{queue/io_timeout}}=\"{}\"",
            crate::config::ScsiTimeoutsDuty::default().nvme_io_timeout_ms
        )));
        for link in ["disk/azure/os", "disk/azure/resource", "disk/azure/data/by-lun/", "disk/azure/local/"] {
            assert!(text.contains(link), "{link}");
        }
    }
}
