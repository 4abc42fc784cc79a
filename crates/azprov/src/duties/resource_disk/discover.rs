//! Finding the resource disk from sysfs facts (target paths: under `--root DIR` they are files under `DIR/sys`),
//! immediately: a VM size without a temporary disk is answered at once, never waited for.

use std::path::{Path, PathBuf};

use crate::platform::nvme::{self, NvmeKind};
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
    /// Local NVMe temporary disks (Direct Disk v2): ordered by the `index` of their vendor metadata, disks
    /// without metadata after them in name order; `notes` say where the metadata was missing or what it excluded.
    Nvme { nodes: Vec<PathBuf>, notes: Vec<String> },
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
    let (nodes, notes) = local_nvme(sys);
    if !nodes.is_empty() {
        return Found::Nvme { nodes, notes };
    }
    Found::None(format!(
        "no resource disk on this VM ({} VMBus devices, no {RESOURCE_LINK}, no {NVME_DIRECT_V2})",
        devices.len()
    ))
}

/// `nvme<ctrl>n<ns>` → `(ctrl, ns)`; `None` for anything else (partitions, hidden multipath paths `nvme0c0n1`).
fn nvme_namespace_key(name: &str) -> Option<(u32, u32)> {
    let (c, n) = name.strip_prefix("nvme")?.split_once('n')?;
    Some((c.parse().ok()?, n.parse().ok()?))
}

/// The local NVMe temporary disks: model Direct Disk v2, refined by the Identify Namespace vendor metadata where
/// the device gives it (ordered by `index`; `type=os`/`type=data` excluded). Where it cannot be read (not the live
/// system, no CAP_SYS_ADMIN, a kernel or device refusing the command) the model rule alone decides, noted.
fn local_nvme(sys: &dyn System) -> (Vec<PathBuf>, Vec<String>) {
    let mut found: Vec<(Option<u32>, (u32, u32), PathBuf)> = Vec::new();
    let mut notes = Vec::new();
    let mut no_meta: Vec<String> = Vec::new();
    for name in sys.read_dir(Path::new("/sys/block")).unwrap_or_default() {
        let Some(key) = nvme_namespace_key(&name) else { continue };
        let model = trimmed(sys, &Path::new("/sys/block").join(&name).join("device/model"));
        if model.as_deref() != Some(NVME_DIRECT_V2) {
            continue;
        }
        let node = Path::new("/dev").join(&name);
        let meta = match sys.nvme_identify_namespace(&node) {
            Ok(buf) => nvme::parse_identify(&buf).ok_or_else(|| "no vendor metadata".to_string()),
            Err(e) => Err(format!("Identify Namespace unavailable: {e}")),
        };
        match meta {
            Ok(m) => match m.kind {
                Some(NvmeKind::Local) | None => found.push((m.index, key, node)),
                Some(kind) => notes.push(format!("{name} skipped: vendor metadata says type={}", kind.as_str())),
            },
            Err(why) => {
                no_meta.push(format!("{name} ({why})"));
                found.push((None, key, node));
            }
        }
    }
    if !no_meta.is_empty() && !found.is_empty() {
        notes.push(format!("model rule for {}", no_meta.join(", ")));
    }
    found.sort_by_key(|(index, key, _)| (index.is_none(), *index, *key));
    (found.into_iter().map(|(_, _, n)| n).collect(), notes)
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
        assert!(matches!(find(&sys), Found::Nvme { ref nodes, .. } if nodes == &[PathBuf::from("/dev/nvme1n1")]));
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

    fn identify(vs: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; nvme::IDENTIFY_LEN];
        b[nvme::VS_OFFSET..nvme::VS_OFFSET + vs.len()].copy_from_slice(vs);
        b
    }

    #[test]
    fn nvme_vendor_metadata_orders_and_excludes() {
        use crate::system::record::RecordingSystem;
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for n in ["nvme0n1", "nvme1n1", "nvme2n1", "nvme10n1", "nvme3n1"] {
            put(r, &format!("sys/block/{n}/device/model"), "Microsoft NVMe Direct Disk v2\n");
        }
        std::fs::create_dir_all(r.join("sys/block/nvme0c0n1")).unwrap(); // hidden multipath path: ignored
        let sys = RecordingSystem::new(r);
        // under a root nothing answers: the model rule, in numeric name order, noted
        match find(&sys) {
            Found::Nvme { nodes, notes } => {
                let names: Vec<_> = nodes.iter().map(|n| n.display().to_string()).collect();
                assert_eq!(names, ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/nvme2n1", "/dev/nvme3n1", "/dev/nvme10n1"]);
                assert_eq!(notes.len(), 1, "{notes:?}");
                assert!(notes[0].starts_with("model rule for nvme0n1 (Identify Namespace unavailable"), "{notes:?}");
            }
            other => panic!("{other:?}"),
        }
        sys.script_nvme_identify("/dev/nvme0n1", Ok(identify(b"type=os")));
        sys.script_nvme_identify("/dev/nvme1n1", Ok(identify(b"type=local,index=2,name=nvme-440G-2")));
        sys.script_nvme_identify("/dev/nvme2n1", Ok(identify(b"type=local,index=1,name=nvme-440G-1")));
        sys.script_nvme_identify("/dev/nvme3n1", Ok(identify(b"type=data,lun=4")));
        sys.script_nvme_identify("/dev/nvme10n1", Ok(identify(b"")));
        match find(&sys) {
            Found::Nvme { nodes, notes } => {
                let names: Vec<_> = nodes.iter().map(|n| n.display().to_string()).collect();
                assert_eq!(names, ["/dev/nvme2n1", "/dev/nvme1n1", "/dev/nvme10n1"]);
                assert_eq!(notes.len(), 3, "{notes:?}");
                assert!(notes[0].contains("nvme0n1 skipped") && notes[0].contains("type=os"), "{notes:?}");
                assert!(notes[2].contains("nvme10n1 (no vendor metadata)"), "{notes:?}");
            }
            other => panic!("{other:?}"),
        }
        // every disk says os/data: no temporary disk
        sys.script_nvme_identify("/dev/nvme1n1", Ok(identify(b"type=data,lun=0")));
        sys.script_nvme_identify("/dev/nvme2n1", Ok(identify(b"type=data,lun=1")));
        sys.script_nvme_identify("/dev/nvme10n1", Ok(identify(b"type=os")));
        assert!(matches!(find(&sys), Found::None(_)));
    }

    #[test]
    fn namespace_names() {
        assert_eq!(nvme_namespace_key("nvme12n3"), Some((12, 3)));
        assert_eq!(nvme_namespace_key("nvme0c0n1"), None);
        assert_eq!(nvme_namespace_key("nvme0n1p1"), None);
        assert_eq!(nvme_namespace_key("sda"), None);
    }
}
