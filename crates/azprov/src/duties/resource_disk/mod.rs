//! The resource (temporary) disk and its swap file, on every boot (platform.md §9.8, §9.9).
//!
//! Every boot, because deallocate, resize, redeploy and host repair hand out a fresh disk: find it from sysfs (never
//! waiting for a disk the VM size does not have), apply the safety rule (format only a disk fresh from the
//! platform: blank, or the platform's NTFS volume with nothing but its own files, read in user space), partition
//! (GPT, one partition), format, mount, write the data-loss warning, persist the mount (`nofail`), then the swap
//! file. An existing Linux file system is mounted as it is; encrypted disks and anything else are left alone.

pub mod discover;
pub mod layout;
pub mod ntfs_root;
pub mod raid;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{excerpt, Outcome};
use crate::config::{DiskFilesystem, ResourceDiskDuty};
use crate::report::Failure;
use crate::system::{BlockInfo, Command, System};
use discover::Found;
use layout::{Partition, Signature, Verdict};

const MIB: u64 = 1 << 20;
pub const README: &str = "DATALOSS_WARNING_README.txt";
pub const SWAP_FILE: &str = "swapfile";
const FSTAB: &str = "/etc/fstab";
/// Marks the fstab line this duty owns (mount helpers ignore `x-` options).
const FSTAB_MARK: &str = "x-azprov";
const WAAGENT_CONF: &str = "/etc/waagent.conf";
const EPHEMERAL_SETUP: &str = "/etc/systemd/system/multi-user.target.wants/azure-ephemeral-disk-setup.service";

/// Our words for the warning file at the mount root.
pub const README_TEXT: &str = "\
WARNING: THIS IS A TEMPORARY DISK.

This disk is local to the host the virtual machine runs on. Anything stored here can be lost for good, without
notice, whenever the platform moves or changes the machine: maintenance, resize, redeploy, deallocation (stop in
the portal) or a host failure. Lost data cannot be recovered.

Do not keep data you need on this disk. Use it for caches, scratch files and swap only.
See Microsoft's documentation on the Azure temporary disk for details.

(Written by azprov, which formats and mounts this disk on every boot.)
";

/// How one run is invoked (`azprov run resource-disk` flags, or the boot defaults).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Host paths of the disks to use instead of discovery (`--device`, repeatable; the kernel's own node names,
    /// `/dev/nvme0n1`). Several disks are an explicit request to stripe them: RAID0 as for local NVMe disks with
    /// `nvme_raid0` (that switch only governs discovered disks), created only when all are blank.
    pub devices: Vec<PathBuf>,
    /// Overrides the configured mount point (`--mount-point`).
    pub mount_point: Option<PathBuf>,
    /// Leave fstab alone (`--no-persist`).
    pub no_persist: bool,
}

/// The mount point: `--mount-point`, else the configuration, else (`auto`) the image's `ResourceDisk.MountPoint`
/// from `/etc/waagent.conf`, else `/mnt`.
pub fn mount_point(sys: &dyn System, cfg: &ResourceDiskDuty, opts: &RunOptions) -> PathBuf {
    if let Some(m) = &opts.mount_point {
        return m.clone();
    }
    if cfg.mount_point != "auto" {
        return PathBuf::from(&cfg.mount_point);
    }
    waagent_setting(sys, "ResourceDisk.MountPoint")
        .filter(|m| m.starts_with('/'))
        .map(PathBuf::from)
        .unwrap_or("/mnt".into())
}

fn waagent_setting(sys: &dyn System, key: &str) -> Option<String> {
    let text = sys.read_to_string(Path::new(WAAGENT_CONF)).ok()?;
    text.lines().find_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub dev: (u32, u32),
    pub target: PathBuf,
    pub fstype: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                dev: (maj.parse().ok()?, min.parse().ok()?),
                target: PathBuf::from(unescape(f.get(4)?)),
                fstype: f.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// Escape a path for an fstab field.
fn fstab_escape(s: &str) -> String {
    s.replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011")
}

/// Our fstab line for the resource disk: `nofail` and a short device timeout, so a boot without the disk (or
/// without the agent) never waits for it.
pub fn fstab_line(source: &str, mount_point: &Path, fstype: &str) -> String {
    format!(
        "{source}\t{}\t{fstype}\tdefaults,nofail,x-systemd.device-timeout=10s,{FSTAB_MARK}\t0\t2",
        fstab_escape(&mount_point.display().to_string())
    )
}

/// Put `line` into fstab text: replace our earlier line, else append. `Ok(None)` = unchanged; `Err` = another
/// entry (not ours) already mounts something at the mount point, so fstab is left as it is.
pub fn fstab_update(existing: &str, line: &str, mount_point: &Path) -> Result<Option<String>, String> {
    let mp = fstab_escape(&mount_point.display().to_string());
    let ours = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        !l.trim_start().starts_with('#') && f.get(3).is_some_and(|o| o.split(',').any(|x| x == FSTAB_MARK))
    };
    if let Some(foreign) = existing.lines().find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        !l.trim_start().starts_with('#') && f.get(1) == Some(&mp.as_str()) && !ours(l)
    }) {
        return Err(format!(
            "{FSTAB} already has an entry for {} (`{}`): left as it is",
            mount_point.display(),
            foreign.trim()
        ));
    }
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for l in existing.lines() {
        if ours(l) {
            if !placed {
                out.push(line.to_string());
                placed = true;
            }
        } else {
            out.push(l.to_string());
        }
    }
    if !placed {
        out.push(line.to_string());
    }
    let mut text = out.join("\n");
    text.push('\n');
    Ok((text != existing).then_some(text))
}

fn fail(reason: &str, disk: &Path, e: impl ToString) -> Outcome {
    Outcome::Failed(
        Failure::new(format!("resource disk: {reason}"))
            .with("device", disk.display())
            .with("exception", e.to_string()),
    )
}

/// Find, check, format when fresh, mount, persist, swap. Runs every boot, idempotent; see the module docs.
pub fn run_every_boot(sys: &dyn System, cfg: &ResourceDiskDuty, opts: &RunOptions) -> Outcome {
    if !cfg.enabled {
        return Outcome::Skipped("resource disk duty disabled".into());
    }
    let mp = mount_point(sys, cfg, opts);
    if mp == Path::new("/") || mp.is_relative() {
        return Outcome::Failed(Failure::new("resource disk: bad mount point").with("mount_point", mp.display()));
    }
    let mut notes = Vec::new();
    let (disk, how) = match opts.devices.as_slice() {
        [d] => (d.clone(), "--device".to_string()),
        [first, ..] => match raid::setup_hosts(sys, &opts.devices, cfg.never_format) {
            raid::Raid::Array { dev, note } => {
                notes.push(note);
                (dev, format!("RAID0 {} of --device", raid::MD_NODE))
            }
            raid::Raid::Single(why) => {
                notes.push(why);
                (first.clone(), "first --device".to_string())
            }
            raid::Raid::Failed(o) => return o,
        },
        [] => {
            if waagent_setting(sys, "ResourceDisk.Format").is_some_and(|v| v.eq_ignore_ascii_case("y")) {
                return Outcome::Skipped(format!(
                    "WALinuxAgent owns the resource disk (ResourceDisk.Format=y in {WAAGENT_CONF}): left to it"
                ));
            }
            match discover::find(sys) {
                Found::None(why) => return Outcome::Skipped(why),
                Found::Scsi { node, how } => match sys.resolve_device(&node) {
                    Ok(p) => (p, how),
                    Err(e) => return fail("cannot open the device node", &node, e),
                },
                Found::Nvme { nodes, notes: found } => {
                    if sys.exists(Path::new(EPHEMERAL_SETUP)) {
                        return Outcome::Skipped(
                            "azure-ephemeral-disk-setup is enabled: local NVMe disks are left to it".into(),
                        );
                    }
                    notes.extend(found);
                    let mut array = None;
                    if nodes.len() > 1 {
                        if cfg.nvme_raid0 {
                            match raid::setup(sys, &nodes, cfg.never_format) {
                                raid::Raid::Array { dev, note } => {
                                    notes.push(note);
                                    array = Some(dev);
                                }
                                raid::Raid::Single(why) => notes.push(why),
                                raid::Raid::Failed(o) => return o,
                            }
                        } else {
                            notes.push(format!("{} local NVMe disks: using the first", nodes.len()));
                        }
                    }
                    match array {
                        Some(dev) => (dev, format!("RAID0 {}", raid::MD_NODE)),
                        None => {
                            let node = nodes[0].clone();
                            match sys.resolve_device(&node) {
                                Ok(p) => (p, format!("local NVMe {}", node.display())),
                                Err(e) => return fail("cannot open the device node", &node, e),
                            }
                        }
                    }
                }
            }
        }
    };
    let info = match sys.block_info(&disk) {
        Ok(i) => i,
        Err(e) => return fail("not a block device the kernel knows", &disk, e),
    };
    let host_mp = sys.host_path(&mp);
    let mounts = parse_mountinfo(&sys.mountinfo().unwrap_or_default());
    let ours = |dev: (u32, u32)| dev == info.dev || info.partitions.iter().any(|p| p.dev == dev);
    let label = format!("resource disk {} ({how})", disk.display());
    if let Some(m) = mounts.iter().find(|m| ours(m.dev)) {
        if m.target != host_mp {
            return Outcome::Skipped(format!(
                "{label} is mounted at {} by someone else: left alone",
                m.target.display()
            ));
        }
        let node = info.partitions.iter().find(|p| p.dev == m.dev).map(|p| p.node.clone()).unwrap_or(disk.clone());
        notes.insert(0, format!("already mounted at {}", mp.display()));
        return after_mount(sys, cfg, opts, &node, &mp, false, &label, notes);
    }
    if let Some(m) = mounts.iter().find(|m| m.target == host_mp) {
        return Outcome::Skipped(format!(
            "{} already has another file system ({}) mounted: left alone",
            mp.display(),
            m.fstype
        ));
    }
    if let Ok(swaps) = sys.swaps() {
        if info
            .partitions
            .iter()
            .map(|p| p.node.as_path())
            .chain([disk.as_path()])
            .any(|n| swaps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(&n.display().to_string())))
        {
            return Outcome::Skipped(format!("{label} is in use as swap: left alone"));
        }
    }
    // from the first look at the disk to the mount: udev must not re-read the partition table (its inotify watch
    // fires when our writes close the disk) and take the partition node away under mkfs or mount
    let disk_lock = match sys.lock_block_device(&disk) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("resource disk: no lock on {}: {e}", disk.display());
            None
        }
    };
    // a partition node has a page cache of its own: drop the disk's, which may predate writes through a partition
    let _ = sys.flush_buffers(&disk);
    let src = match sys.open_host_read(&disk) {
        Ok(s) => s,
        Err(e) => return fail("cannot read the disk", &disk, e),
    };
    let verdict = match layout::classify(src.as_ref()) {
        Ok(v) => v,
        Err(e) => return fail("cannot read the disk", &disk, e),
    };
    drop(src);
    let (node, fstype, formatted) = match verdict {
        Verdict::Encrypted(s) => {
            return Outcome::Skipped(format!("{label} is encrypted ({}): left alone, no swap", s.name()));
        }
        Verdict::Keep(why) => return Outcome::Skipped(format!("{label}: {why}; left alone")),
        Verdict::Linux { fs, partition } => {
            let node = match partition {
                Some(p) => match ensure_partition(sys, &disk, p) {
                    Ok(n) => n,
                    Err(o) => return o,
                },
                None => disk.clone(),
            };
            notes.push(format!("existing {} file system kept", fs.name()));
            (node, fs.mount_type().unwrap_or("ext4").to_string(), false)
        }
        v @ (Verdict::Blank | Verdict::FreshNtfs { .. }) => {
            let what = if v == Verdict::Blank { "blank disk" } else { "fresh platform NTFS volume" };
            if cfg.never_format {
                return Outcome::Skipped(format!("{label}: {what}, but never_format is set; left alone"));
            }
            match format(sys, &disk, &info, cfg.filesystem) {
                Ok(node) => {
                    notes.push(format!("{what} formatted {}", cfg.filesystem.name()));
                    (node, cfg.filesystem.name().to_string(), true)
                }
                Err(o) => return o,
            }
        }
    };
    if let Err(e) = sys.create_dir_all(&mp, 0o755, None) {
        return fail("cannot create the mount point", &disk, e);
    }
    if let Err(e) = sys.mount(&node, &mp, &fstype, "") {
        return fail("mount failed", &node, e);
    }
    drop(disk_lock);
    notes.push(format!("mounted at {}", mp.display()));
    after_mount(sys, cfg, opts, &node, &mp, formatted, &label, notes)
}

/// Partition, wipe and format a disk that passed the safety rule. Returns the partition node.
fn format(sys: &dyn System, disk: &Path, info: &BlockInfo, fs: DiskFilesystem) -> Result<PathBuf, Outcome> {
    let mut guids = [0u8; 32];
    if let Err(e) = getrandom::getrandom(&mut guids) {
        return Err(fail("no randomness for the GPT", disk, e));
    }
    let Some(gpt) = layout::gpt_one_partition(info.size, info.logical_block as u64, guids) else {
        return Err(fail("disk too small or odd sector size", disk, format!("{} bytes", info.size)));
    };
    let zeros = vec![0u8; MIB.min(info.size) as usize];
    let writes = [
        (0, zeros.as_slice()),
        (info.size.saturating_sub(zeros.len() as u64), zeros.as_slice()),
        (gpt.partition.start, zeros.as_slice()),
        (0, gpt.head.as_slice()),
        (gpt.tail_offset, gpt.tail.as_slice()),
    ];
    for (off, data) in writes {
        if let Err(e) = write_retrying(sys, disk, off, data) {
            return Err(fail("cannot write the partition table", disk, e));
        }
    }
    let mut node = ensure_partition(sys, disk, gpt.partition)?;
    let mkfs = |node: &Path| {
        let n = node.display().to_string();
        let mut cmd = match fs {
            DiskFilesystem::Ext4 => {
                Command::new("mkfs.ext4", &["-F", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", &n])
            }
            DiskFilesystem::Xfs => Command::new("mkfs.xfs", &["-f", "-q", &n]),
        };
        cmd.timeout = Duration::from_secs(600);
        cmd
    };
    let mut cmd = mkfs(&node);
    let mut ran = sys.run(&cmd);
    // the partition node went away under mkfs (a partition table re-read by someone else): once more
    if matches!(&ran, Ok(out) if !out.success()) && sys.open_host_read(&node).is_err() {
        tracing::info!("resource disk: {} vanished during mkfs: partition ensured again", node.display());
        node = ensure_partition(sys, disk, gpt.partition)?;
        cmd = mkfs(&node);
        ran = sys.run(&cmd);
    }
    match ran {
        Ok(out) if out.success() => Ok(node),
        Ok(out) => Err(Outcome::Failed(
            Failure::new("resource disk: mkfs failed")
                .with("command", cmd.display())
                .with("status", format!("{:?}", out.status))
                .with("stderr", excerpt(&out.stderr)),
        )),
        Err(e) => Err(fail(&format!("{} not available", cmd.program), &node, e)),
    }
}

/// `block_write_at`, retried for a few seconds while the disk is busy: the exclusive open also fails while a file
/// system that was just unmounted is still being released, or a prober holds the disk for a moment.
fn write_retrying(sys: &dyn System, disk: &Path, off: u64, data: &[u8]) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match sys.block_write_at(disk, off, data) {
            Err(e) if e.raw_os_error() == Some(16) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Make sure the kernel has a node for `part`: re-read the table, and where the kernel does not parse partition
/// tables (or did not re-read), add the partition itself with BLKPG (`partx -a`), dropping stale ones.
fn ensure_partition(sys: &dyn System, disk: &Path, part: Partition) -> Result<PathBuf, Outcome> {
    let _ = sys.reread_partitions(disk); // EINVAL on loop devices without partscan, EBUSY when in use: BLKPG below
    let info = sys.block_info(disk).map_err(|e| fail("not a block device the kernel knows", disk, e))?;
    let same = |p: &crate::system::PartitionNode| p.number == part.number && p.start == part.start && p.len == part.len;
    let node = match info.partitions.iter().find(|p| same(p)) {
        Some(p) => p.node.clone(),
        None => {
            for p in &info.partitions {
                sys.delete_partition(disk, p.number).map_err(|e| fail("cannot drop a stale partition", &p.node, e))?;
            }
            sys.add_partition(disk, part.number, part.start, part.len)
                .map_err(|e| fail("cannot add the partition (BLKPG)", disk, e))?;
            let info = sys.block_info(disk).map_err(|e| fail("not a block device the kernel knows", disk, e))?;
            match info.partitions.iter().find(|p| same(p)) {
                Some(p) => p.node.clone(),
                None => return Err(fail("the kernel did not add the partition", disk, "BLKPG")),
            }
        }
    };
    // devtmpfs creates the node at once; give udev-managed /dev a moment
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys.open_host_read(&node).is_err() {
        if Instant::now() > deadline {
            return Err(fail("partition node did not appear", &node, "timeout"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(node)
}

/// After the file system on `node` (a partition, or the whole disk) is mounted at `mp`: the warning file, the
/// fstab line, the swap file.
#[allow(clippy::too_many_arguments)]
fn after_mount(
    sys: &dyn System,
    cfg: &ResourceDiskDuty,
    opts: &RunOptions,
    node: &Path,
    mp: &Path,
    formatted: bool,
    label: &str,
    mut notes: Vec<String>,
) -> Outcome {
    let readme = mp.join(README);
    if sys.read(&readme).ok().as_deref() != Some(README_TEXT.as_bytes()) {
        if let Err(e) = sys.write_file(&readme, README_TEXT.as_bytes(), 0o644, None) {
            return fail("cannot write the warning file", node, e);
        }
    }
    if opts.no_persist || !cfg.persist {
        notes.push("fstab left alone".into());
    } else {
        match persist(sys, node, mp) {
            Ok(n) => notes.push(n),
            Err(o) => return o,
        }
    }
    if cfg.swap_size_mb > 0 {
        match ensure_swap(sys, mp, cfg.swap_size_mb, formatted) {
            Ok(n) => notes.push(n),
            Err(o) => return o,
        }
    }
    Outcome::Done(format!("{label}: {}", notes.join("; ")))
}

/// The fstab line, by the UUID read from the file system's own node (the one mkfs wrote through).
fn persist(sys: &dyn System, disk: &Path, mp: &Path) -> Result<String, Outcome> {
    let start = 0;
    let src = sys.open_host_read(disk).map_err(|e| fail("cannot read the disk", disk, e))?;
    let sig = layout::signature(src.as_ref(), start).map_err(|e| fail("cannot read the disk", disk, e))?;
    let Some(fstype) = sig.and_then(Signature::mount_type) else {
        return Ok("fstab left alone (file system not recognized)".into());
    };
    let uuid = sig.and_then(|s| layout::fs_uuid(src.as_ref(), start, s).ok().flatten());
    let Some(uuid) = uuid else { return Ok("fstab left alone (file system has no UUID)".into()) };
    let line = fstab_line(&format!("UUID={uuid}"), mp, fstype);
    let existing = sys.read_to_string(Path::new(FSTAB)).unwrap_or_default();
    match fstab_update(&existing, &line, mp) {
        Ok(None) => Ok("fstab up to date".into()),
        Ok(Some(text)) => {
            let mode = sys.stat(Path::new(FSTAB)).map(|s| s.mode).unwrap_or(0o644);
            sys.create_dir_all(Path::new("/etc"), 0o755, None).map_err(|e| fail("cannot write fstab", disk, e))?;
            sys.write_file(Path::new(FSTAB), text.as_bytes(), mode, None)
                .map_err(|e| fail("cannot write fstab", disk, e))?;
            Ok(format!("fstab entry UUID={uuid}"))
        }
        Err(why) => Ok(why),
    }
}

/// `<mp>/swapfile` of `size_mb` MiB, 0600 from creation, activated on the live system.
fn ensure_swap(sys: &dyn System, mp: &Path, size_mb: u64, formatted: bool) -> Result<String, Outcome> {
    let path = mp.join(SWAP_FILE);
    let host = sys.host_path(&path);
    let host_s = host.display().to_string();
    let want = size_mb.saturating_mul(MIB);
    let active = sys
        .swaps()
        .map(|s| s.lines().skip(1).any(|l| l.split_whitespace().next() == Some(host_s.as_str())))
        .unwrap_or(false);
    if active {
        return Ok(format!("swap file {} active", path.display()));
    }
    let mut reuse = false;
    if let Ok(st) = sys.stat(&path) {
        if !st.is_file {
            return Err(fail("swap file path is not a regular file", &path, "left alone"));
        }
        let mut sig = [0u8; 10];
        let has_sig = sys.open_read(&path).and_then(|r| r.read_at(4086, &mut sig)).is_ok() && &sig == b"SWAPSPACE2";
        reuse = !formatted && st.len == want && st.mode == 0o600 && st.uid == 0 && has_sig;
        if !reuse {
            sys.remove_file(&path).map_err(|e| fail("cannot replace the swap file", &path, e))?;
        }
    }
    if !reuse {
        sys.allocate_file(&path, want, 0o600).map_err(|e| fail("cannot create the swap file", &path, e))?;
        let mut cmd = Command::new("mkswap", &[&host_s]);
        cmd.timeout = Duration::from_secs(120);
        match sys.run(&cmd) {
            Ok(o) if o.success() => {}
            Ok(o) => {
                let _ = sys.remove_file(&path);
                return Err(Outcome::Failed(
                    Failure::new("resource disk: mkswap failed")
                        .with("path", path.display())
                        .with("stderr", excerpt(&o.stderr)),
                ));
            }
            Err(e) => {
                let _ = sys.remove_file(&path);
                return Err(fail("mkswap not available", &path, e));
            }
        }
    }
    let made = if reuse { "kept" } else { "created" };
    if !sys.is_live() {
        return Ok(format!("swap file {} {made} ({size_mb} MiB), not activated (not the live system)", path.display()));
    }
    match sys.run(&Command::new("swapon", &[&host_s])) {
        Ok(o) if o.success() => Ok(format!("swap file {} {made} ({size_mb} MiB) and activated", path.display())),
        Ok(o) => Err(Outcome::Failed(
            Failure::new("resource disk: swapon failed")
                .with("path", path.display())
                .with("stderr", excerpt(&o.stderr)),
        )),
        Err(e) => Err(fail("swapon not available", &path, e)),
    }
}

#[cfg(test)]
mod tests;
