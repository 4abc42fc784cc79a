//! Finding the resource disk from sysfs facts (target paths: under `--root DIR` they are files under `DIR/sys`),
//! immediately: a VM size without a temporary disk is answered at once, never waited for.

use std::path::{Path, PathBuf};

use crate::system::System;

/// Gen2 SCSI controller 0 (OS disk at LUN 0, resource disk at LUN 1).
pub const GEN2_SCSI0: &str = "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}";
/// Gen1: the resource disk's VMBus device id starts with this (the OS disk's with `{00000000-0000-`).
pub const GEN1_RESOURCE_PREFIX: &str = "{00000000-0001-";
/// Local NVMe temporary disks of v6 and newer sizes.
pub const NVME_DIRECT_V2: &str = "Microsoft NVMe Direct Disk v2";
/// Storage-optimized local NVMe (Lsv2/Lsv3): not the resource disk.
pub const NVME_DIRECT_V1: &str = "Microsoft NVMe Direct Disk";
pub const RESOURCE_LINK: &str = "/dev/disk/azure/resource";

/// Where the temporary disk is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The SCSI resource disk: target path of its node and how it was found.
    Scsi { node: PathBuf, how: String },
    /// Local NVMe temporary disks (Direct Disk v2), in name order.
    Nvme { nodes: Vec<PathBuf> },
    /// No temporary disk on this VM size, with what was looked at.
    None(String),
}

/// The block device names under a sysfs device directory (`…/block/<name>`), searching at most `depth` levels of
/// real directories (symlinks are not followed: sysfs is full of loops).
fn block_names_under(sys: &dyn System, dir: &Path, depth: u32, want_lun: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = sys.read_dir(dir) else { return out };
    for e in entries {
        let p = dir.join(&e);
        if e == "block" {
            if let Ok(names) = sys.read_dir(&p) {
                out.extend(names);
            }
            continue;
        }
        let Ok(st) = sys.stat(&p) else { continue };
        if !st.is_dir || st.is_symlink || depth == 0 {
            continue;
        }
        // a SCSI device directory is named H:C:T:L
        let fields: Vec<&str> = e.split(':').collect();
        if fields.len() == 4 {
            if let Some(lun) = want_lun {
                if fields[3] != lun {
                    continue;
                }
            }
        }
        out.extend(block_names_under(sys, &p, depth - 1, want_lun));
    }
    out
}

fn trimmed(sys: &dyn System, path: &Path) -> Option<String> {
    sys.read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Find the temporary disk(s).
pub fn find(sys: &dyn System) -> Found {
    let vmbus = Path::new("/sys/bus/vmbus/devices");
    let devices = sys.read_dir(vmbus).unwrap_or_default();
    for d in &devices {
        let dir = vmbus.join(d);
        let Some(id) = trimmed(sys, &dir.join("device_id")).map(|s| s.to_ascii_lowercase()) else { continue };
        let (lun, how) = if id.starts_with(GEN1_RESOURCE_PREFIX) {
            (None, format!("Gen1 VMBus device {id}"))
        } else if id == GEN2_SCSI0 {
            (Some("1"), format!("Gen2 SCSI controller {id} LUN 1"))
        } else {
            continue;
        };
        if let Some(name) = block_names_under(sys, &dir, 6, lun).into_iter().next() {
            return Found::Scsi { node: Path::new("/dev").join(name), how };
        }
    }
    if sys.exists(Path::new(RESOURCE_LINK)) {
        return Found::Scsi { node: RESOURCE_LINK.into(), how: format!("link {RESOURCE_LINK}") };
    }
    let mut nodes = Vec::new();
    for name in sys.read_dir(Path::new("/sys/block")).unwrap_or_default() {
        if !name.starts_with("nvme") {
            continue;
        }
        let model = trimmed(sys, &Path::new("/sys/block").join(&name).join("device/model"));
        if model.as_deref() == Some(NVME_DIRECT_V2) {
            nodes.push(Path::new("/dev").join(&name));
        }
    }
    if !nodes.is_empty() {
        return Found::Nvme { nodes };
    }
    Found::None(format!(
        "no resource disk on this VM ({} VMBus devices, no {RESOURCE_LINK}, no {NVME_DIRECT_V2})",
        devices.len()
    ))
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
    fn gen1_gen2_nvme_and_none() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let sys = RealSystem::new(r);
        assert!(matches!(find(&sys), Found::None(_)));
        // NVMe v1 (storage optimized) is not the resource disk
        put(r, "sys/block/nvme0n1/device/model", "Microsoft NVMe Direct Disk              \n");
        assert!(matches!(find(&sys), Found::None(_)));
        put(r, "sys/block/nvme1n1/device/model", "Microsoft NVMe Direct Disk v2\n");
        put(r, "sys/block/nvme2n1/device/model", "MSFT NVMe Accelerator v1.0\n");
        assert_eq!(find(&sys), Found::Nvme { nodes: vec!["/dev/nvme1n1".into()] });
        // Gen2: LUN 0 is the OS disk, LUN 1 the resource disk
        put(
            r,
            "sys/bus/vmbus/devices/f8b3781a-1e82-4818-a1c3-63d806ec15bb/device_id",
            "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}\n",
        );
        let base = "sys/bus/vmbus/devices/f8b3781a-1e82-4818-a1c3-63d806ec15bb/host0/target0:0:0";
        std::fs::create_dir_all(r.join(base).join("0:0:0:0/block/sda")).unwrap();
        assert!(matches!(find(&sys), Found::Nvme { .. }));
        std::fs::create_dir_all(r.join(base).join("0:0:0:1/block/sdb")).unwrap();
        assert!(matches!(find(&sys), Found::Scsi { ref node, .. } if node == Path::new("/dev/sdb")));
        // Gen1
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let sys = RealSystem::new(r);
        put(
            r,
            "sys/bus/vmbus/devices/00000000-0000-8899-0000-000000000000/device_id",
            "{00000000-0000-8899-0000-000000000000}",
        );
        std::fs::create_dir_all(
            r.join("sys/bus/vmbus/devices/00000000-0000-8899-0000-000000000000/host0/target0:0:0/0:0:0:0/block/sda"),
        )
        .unwrap();
        assert!(matches!(find(&sys), Found::None(_)));
        put(
            r,
            "sys/bus/vmbus/devices/00000000-0001-8899-0000-000000000000/device_id",
            "{00000000-0001-8899-0000-000000000000}",
        );
        std::fs::create_dir_all(
            r.join("sys/bus/vmbus/devices/00000000-0001-8899-0000-000000000000/host1/target1:0:1/1:0:1:0/block/sdb"),
        )
        .unwrap();
        match find(&sys) {
            Found::Scsi { node, how } => {
                assert_eq!(node, Path::new("/dev/sdb"));
                assert!(how.contains("Gen1"), "{how}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resource_link() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "dev/sdb", "");
        std::fs::create_dir_all(dir.path().join("dev/disk/azure")).unwrap();
        std::os::unix::fs::symlink("../../sdb", dir.path().join("dev/disk/azure/resource")).unwrap();
        let sys = RealSystem::new(dir.path());
        assert!(matches!(find(&sys), Found::Scsi { ref node, .. } if node == Path::new(RESOURCE_LINK)));
    }
}
