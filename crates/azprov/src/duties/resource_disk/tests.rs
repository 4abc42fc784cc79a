//! Unit tests of the pure parts, and `root_` tests on disk image files attached to loop devices (never the host's
//! disks), with every mount in the test thread's own private mount namespace.

use std::path::{Path, PathBuf};

use super::*;
use crate::system::RealSystem;

#[test]
fn mountinfo_parsing() {
    let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             37 35 259:3 / /mnt rw shared:2 - ext4 /dev/loop0p1 rw\nbroken line\n";
    let m = parse_mountinfo(t);
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].target, Path::new("/mnt/with space"));
    assert_eq!((m[1].dev, m[1].fstype.as_str()), ((259, 3), "ext4"));
}

#[test]
fn fstab_lines() {
    let mp = Path::new("/mnt");
    let line = fstab_line("UUID=abc", mp, "ext4");
    assert_eq!(line, "UUID=abc\t/mnt\text4\tdefaults,nofail,x-systemd.device-timeout=10s,x-azprov\t0\t2");
    let base = "# /etc/fstab\nUUID=root / ext4 defaults 0 1\n";
    let once = fstab_update(base, &line, mp).unwrap().unwrap();
    assert_eq!(once, format!("{base}{line}\n"));
    assert_eq!(fstab_update(&once, &line, mp).unwrap(), None);
    let line2 = fstab_line("UUID=def", mp, "ext4");
    let twice = fstab_update(&once, &line2, mp).unwrap().unwrap();
    assert_eq!(twice, format!("{base}{line2}\n"));
    // someone else's entry for the mount point (cloud-init) wins
    let ci = "/dev/disk/cloud/azure_resource-part1 /mnt auto defaults,nofail,comment=cloudconfig 0 2\n";
    assert!(fstab_update(ci, &line, mp).unwrap_err().contains("already has an entry"));
    // commented lines do not count
    assert!(fstab_update("#/dev/sdb1 /mnt ext4 defaults 0 0\n", &line, mp).unwrap().is_some());
    assert_eq!(fstab_line("UUID=x", Path::new("/mnt/a b"), "xfs").split('\t').nth(1), Some("/mnt/a\\040b"));
}

#[test]
fn mount_point_choice() {
    let dir = tempfile::tempdir().unwrap();
    let sys = RealSystem::new(dir.path());
    let cfg = ResourceDiskDuty::default();
    let opts = RunOptions::default();
    assert_eq!(mount_point(&sys, &cfg, &opts), Path::new("/mnt"));
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/waagent.conf"), "# x\nResourceDisk.MountPoint=/mnt/resource # c\n").unwrap();
    assert_eq!(mount_point(&sys, &cfg, &opts), Path::new("/mnt/resource"));
    let cfg2 = ResourceDiskDuty { mount_point: "/scratch".into(), ..cfg.clone() };
    assert_eq!(mount_point(&sys, &cfg2, &opts), Path::new("/scratch"));
    let opts2 = RunOptions { mount_point: Some("/other".into()), ..opts };
    assert_eq!(mount_point(&sys, &cfg2, &opts2), Path::new("/other"));
}

#[test]
fn no_disk_is_answered_at_once_and_waagent_owner_respected() {
    let dir = tempfile::tempdir().unwrap();
    let sys = RealSystem::new(dir.path());
    let start = std::time::Instant::now();
    let out = run_every_boot(&sys, &ResourceDiskDuty::default(), &RunOptions::default());
    assert!(matches!(out, Outcome::Skipped(ref r) if r.starts_with("no resource disk")), "{out:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(dir.path().join("etc/waagent.conf"), "ResourceDisk.Format=y\n").unwrap();
    let out = run_every_boot(&sys, &ResourceDiskDuty::default(), &RunOptions::default());
    assert!(matches!(out, Outcome::Skipped(ref r) if r.contains("WALinuxAgent")), "{out:?}");
    let off = ResourceDiskDuty { enabled: false, ..ResourceDiskDuty::default() };
    assert!(matches!(run_every_boot(&sys, &off, &RunOptions::default()), Outcome::Skipped(_)));
}

// ---- loop-device tests ----

/// Why root tests cannot run here, if they cannot.
fn root_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    for p in ["losetup", "mkfs.ext4", "mkswap"] {
        if !RealSystem::new("/").has_program(p) {
            return Some(format!("{p} not installed"));
        }
    }
    None
}

macro_rules! need_root {
    () => {
        if let Some(why) = root_unavailable() {
            eprintln!("skipping: {why}");
            return;
        }
        if let Err(e) = private_mounts() {
            eprintln!("skipping: cannot unshare the mount namespace: {e}");
            return;
        }
    };
}

macro_rules! need_ntfs {
    () => {
        for p in ["mkntfs", "ntfscp"] {
            if !RealSystem::new("/").has_program(p) {
                eprintln!("skipping: {p} not installed (ntfs-3g)");
                return;
            }
        }
    };
}

/// Give this test thread its own mount namespace with private propagation: its mounts never reach the host and
/// vanish with the thread.
fn private_mounts() -> std::io::Result<()> {
    // SAFETY: only CLONE_NEWNS (and the CLONE_FS it implies): no file descriptor tables are unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::REC | rustix::mount::MountPropagationFlags::PRIVATE,
    )?;
    Ok(())
}

/// An image file attached to a loop device; detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(img: &Path) -> Loop {
        let out = std::process::Command::new("losetup").args(["-f", "--show"]).arg(img).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        Loop { dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()) }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // partitions added with BLKPG outlive the detach of a loop device without partscan: drop them first
        let sys = RealSystem::new("/");
        if let Ok(info) = sys.block_info(&self.dev) {
            for p in info.partitions {
                let _ = sys.delete_partition(&self.dev, p.number);
            }
        }
        let _ = std::process::Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Unmounts a host path on drop (before the loop device is detached: declare it after the `Loop`).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

fn unmount(p: &Path) {
    rustix::mount::unmount(p, rustix::mount::UnmountFlags::empty()).unwrap();
}

const DISK: u64 = 80 << 20;

/// An MBR with one partition of `kind` from 1 MiB to the end, like the platform's NTFS disk.
fn mbr_disk(path: &Path, kind: u8) {
    let mut head = vec![0u8; 512];
    let e = &mut head[0x1be..0x1ce];
    e[4] = kind;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&(((DISK >> 9) - 2048) as u32).to_le_bytes());
    head[510] = 0x55;
    head[511] = 0xaa;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(DISK).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
}

fn run(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A disk as Azure hands it out: MBR, partition 1 NTFS "Temporary Storage" holding DATALOSS_WARNING_README.txt,
/// plus `extra` user files.
fn azure_ntfs_disk(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let img = dir.join(name);
    mbr_disk(&img, 0x07);
    let part = dir.join(format!("{name}.part"));
    std::fs::File::create(&part).unwrap().set_len(DISK - (1 << 20)).unwrap();
    run("mkntfs", &["-F", "-Q", "-q", "-L", "Temporary Storage", part.to_str().unwrap()]);
    let readme = dir.join("readme.txt");
    std::fs::write(&readme, "WARNING: THIS IS A TEMPORARY DISK.\r\n").unwrap();
    run("ntfscp", &["-f", part.to_str().unwrap(), readme.to_str().unwrap(), "DATALOSS_WARNING_README.txt"]);
    for f in extra {
        run("ntfscp", &["-f", part.to_str().unwrap(), readme.to_str().unwrap(), f]);
    }
    let data = std::fs::read(&part).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &data, 1 << 20).unwrap();
    std::fs::remove_file(&part).unwrap();
    img
}

fn opts(l: &Loop) -> RunOptions {
    RunOptions { devices: vec![l.dev.clone()], ..RunOptions::default() }
}

fn done(o: &Outcome) -> &str {
    match o {
        Outcome::Done(s) => s,
        Outcome::Failed(f) if f.to_string().contains("busy") => {
            let diag = std::process::Command::new("sh")
                .arg("-c")
                .arg("losetup -a; for d in /sys/block/loop*; do echo $d $(ls $d/holders) $(ls -d $d/loop*p* 2>/dev/null); done; grep -H -E ' (7|259):' /proc/[0-9]*/mountinfo | head; ls -l /proc/[0-9]*/fd 2>/dev/null | grep loop | head")
                .output()
                .unwrap();
            panic!("{f}\n{}", String::from_utf8_lossy(&diag.stdout))
        }
        other => panic!("expected Done, got {other:?}"),
    }
}

fn skipped(o: &Outcome) -> &str {
    match o {
        Outcome::Skipped(s) => s,
        other => panic!("expected Skipped, got {other:?}"),
    }
}

fn fstab(root: &Path) -> String {
    std::fs::read_to_string(root.join("etc/fstab")).unwrap_or_default()
}

#[test]
fn ntfs_reader_sees_the_platform_files() {
    need_ntfs!();
    let dir = tempfile::tempdir().unwrap();
    let img = azure_ntfs_disk(dir.path(), "d.img", &["User Data.db"]);
    let bytes = std::fs::read(&img).unwrap();
    let mut names = ntfs_root::root_names(&bytes, 1 << 20, DISK - (1 << 20)).unwrap();
    names.retain(|n| !n.starts_with('$'));
    names.sort();
    assert_eq!(names, [".", "DATALOSS_WARNING_README.txt", "User Data.db"]);
    let v = layout::classify(&bytes).unwrap();
    assert!(matches!(v, Verdict::Keep(ref r) if r.contains("User Data.db")), "{v:?}");
    let img = azure_ntfs_disk(dir.path(), "e.img", &[]);
    assert_eq!(layout::classify(&std::fs::read(&img).unwrap()).unwrap(), Verdict::FreshNtfs { partition: Some(1) });
}

#[test]
fn root_fresh_ntfs_formatted_then_idempotent_then_kept_then_replaced() {
    need_ntfs!();
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/fstab"), "UUID=r / ext4 defaults 0 1\n").unwrap();
    let sys = RealSystem::new(&root);
    let cfg = ResourceDiskDuty { swap_size_mb: 8, ..ResourceDiskDuty::default() };
    let mnt = root.join("mnt");

    let img = azure_ntfs_disk(dir.path(), "a.img", &[]);
    let disk = Loop::attach(&img);
    let _m = Unmount(mnt.clone());
    let out = run_every_boot(&sys, &cfg, &opts(&disk));
    let text = done(&out);
    assert!(text.contains("fresh platform NTFS volume formatted ext4") && text.contains("mounted at /mnt"), "{text}");
    assert!(text.contains("not activated"), "{text}");
    let readme = std::fs::read_to_string(mnt.join(README)).unwrap();
    assert!(readme.contains("TEMPORARY DISK"));
    let tab = fstab(&root);
    assert_eq!(tab.lines().filter(|l| l.contains("x-azprov")).count(), 1, "{tab}");
    assert!(tab.starts_with("UUID=r / ext4"));
    // swap file on the resource disk, 0600, with a swap signature
    let swap = std::fs::metadata(mnt.join(SWAP_FILE)).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((swap.len(), swap.permissions().mode() & 0o777), (8 << 20, 0o600));
    assert_eq!(swap.dev(), std::fs::metadata(&mnt).unwrap().dev());
    assert_ne!(swap.dev(), std::fs::metadata(&root).unwrap().dev());
    // the partition node exists and the disk carries our GPT
    let part = sys.block_info(&disk.dev).unwrap().partitions;
    assert_eq!(part.len(), 1);
    assert_eq!(part[0].start, 1 << 20);

    // second boot, still mounted: nothing changes
    std::fs::write(mnt.join("keep.txt"), "x").unwrap();
    let out = run_every_boot(&sys, &cfg, &opts(&disk));
    let text = done(&out);
    assert!(text.contains("already mounted") && text.contains("fstab up to date") && text.contains("kept"), "{text}");
    assert_eq!(fstab(&root), tab);

    // reboot (unmounted, same disk): the ext4 is ours, mounted as is, data survives
    unmount(&mnt);
    let out = run_every_boot(&sys, &cfg, &opts(&disk));
    let text = done(&out);
    assert!(text.contains("existing ext2/3/4 file system kept"), "{text}");
    assert_eq!(std::fs::read_to_string(mnt.join("keep.txt")).unwrap(), "x");
    assert_eq!(fstab(&root), tab);

    // the disk is replaced by a fresh one (deallocate/redeploy): formatted again, fstab follows the new UUID
    unmount(&mnt);
    drop(disk);
    let img2 = azure_ntfs_disk(dir.path(), "b.img", &[]);
    let disk2 = Loop::attach(&img2);
    let out = run_every_boot(&sys, &cfg, &opts(&disk2));
    let text = done(&out);
    assert!(text.contains("formatted ext4"), "{text}");
    assert!(!mnt.join("keep.txt").exists());
    assert!(mnt.join(SWAP_FILE).exists());
    let tab2 = fstab(&root);
    assert_eq!(tab2.lines().filter(|l| l.contains("x-azprov")).count(), 1, "{tab2}");
    assert_ne!(tab2, tab);
    unmount(&mnt);
    drop(disk2);
}

#[test]
fn root_ntfs_with_user_file_is_not_formatted() {
    need_ntfs!();
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let sys = RealSystem::new(&root);
    let img = azure_ntfs_disk(dir.path(), "a.img", &["important.db"]);
    let before = std::fs::read(&img).unwrap();
    let disk = Loop::attach(&img);
    let _m = Unmount(root.join("mnt"));
    let cfg = ResourceDiskDuty { swap_size_mb: 8, ..ResourceDiskDuty::default() };
    let out = run_every_boot(&sys, &cfg, &opts(&disk));
    let r = skipped(&out);
    assert!(r.contains("important.db") && r.contains("not formatted"), "{r}");
    drop(disk);
    assert!(std::fs::read(&img).unwrap() == before, "the disk was modified");
    assert!(!root.join("mnt/swapfile").exists() && !root.join("etc/fstab").exists());
}

#[test]
fn root_encrypted_and_never_format_are_left_alone() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let sys = RealSystem::new(&root);
    let img = dir.path().join("luks.img");
    mbr_disk(&img, 0x83);
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"LUKS\xba\xbe\x00\x02", 1 << 20).unwrap();
    drop(f);
    let before = std::fs::read(&img).unwrap();
    let disk = Loop::attach(&img);
    let _m = Unmount(root.join("mnt"));
    let cfg = ResourceDiskDuty { swap_size_mb: 8, ..ResourceDiskDuty::default() };
    let r = skipped(&run_every_boot(&sys, &cfg, &opts(&disk))).to_string();
    assert!(r.contains("encrypted (LUKS)") && r.contains("no swap"), "{r}");
    drop(disk);
    assert!(std::fs::read(&img).unwrap() == before);
    assert!(!root.join("mnt/swapfile").exists());

    // a blank disk with never_format: not formatted
    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank).unwrap().set_len(DISK).unwrap();
    let disk = Loop::attach(&blank);
    let cfg = ResourceDiskDuty { never_format: true, ..cfg };
    let r = skipped(&run_every_boot(&sys, &cfg, &opts(&disk))).to_string();
    assert!(r.contains("never_format"), "{r}");
    assert!(std::fs::read(&blank).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn root_discovered_from_sysfs_no_persist_and_foreign_mount() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank).unwrap().set_len(DISK).unwrap();
    let disk = Loop::attach(&blank);
    // Gen2 sysfs facts under the root, and /dev/sdb standing for the loop device
    let vmbus = root.join("sys/bus/vmbus/devices/f8b3781a-1e82-4818-a1c3-63d806ec15bb");
    std::fs::create_dir_all(vmbus.join("host0/target0:0:0/0:0:0:1/block/sdb")).unwrap();
    std::fs::write(vmbus.join("device_id"), "{f8b3781a-1e82-4818-a1c3-63d806ec15bb}\n").unwrap();
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::os::unix::fs::symlink(&disk.dev, root.join("dev/sdb")).unwrap();
    let sys = RealSystem::new(&root);
    let mp = root.join("mnt/resource");
    let _m = Unmount(mp.clone());
    let cfg = ResourceDiskDuty { filesystem: crate::config::DiskFilesystem::Ext4, ..ResourceDiskDuty::default() };
    let o = RunOptions { mount_point: Some("/mnt/resource".into()), no_persist: true, ..RunOptions::default() };
    let text = done(&run_every_boot(&sys, &cfg, &o)).to_string();
    assert!(text.contains("Gen2 SCSI controller") && text.contains("blank disk formatted ext4"), "{text}");
    assert!(text.contains("fstab left alone") && !root.join("etc/fstab").exists(), "{text}");
    assert!(mp.join(README).exists());
    // mounted somewhere else than our mount point: left alone
    let o2 = RunOptions { mount_point: Some("/mnt".into()), ..o };
    let r = skipped(&run_every_boot(&sys, &cfg, &o2)).to_string();
    assert!(r.contains("mounted at") && r.contains("someone else"), "{r}");
    unmount(&mp);
}

/// Two local NVMe disks (blank image files under the root) and, for the array mdadm would start, a loop device
/// behind `/dev/md/azprov-resource`: mdadm itself is scripted (the CI host has no md driver).
#[test]
fn root_nvme_raid0_created_then_formatted_or_first_disk_without_mdadm() {
    need_root!();
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev/md")).unwrap();
    for n in ["nvme0n1", "nvme1n1"] {
        let model = root.join("sys/block").join(n).join("device/model");
        std::fs::create_dir_all(model.parent().unwrap()).unwrap();
        std::fs::write(model, "Microsoft NVMe Direct Disk v2\n").unwrap();
        std::fs::File::create(root.join("dev").join(n)).unwrap().set_len(DISK).unwrap();
    }
    let img = dir.path().join("md.img");
    std::fs::File::create(&img).unwrap().set_len(DISK).unwrap();
    let md = Loop::attach(&img);
    std::os::unix::fs::symlink(&md.dev, root.join("dev/md/azprov-resource")).unwrap();
    let sys = RecordingSystem::new(&root);
    sys.script("mdadm", CommandOutput { status: Some(0), ..Default::default() });
    let mp = root.join("mnt");
    let _m = Unmount(mp.clone());
    let cfg = ResourceDiskDuty {
        nvme_raid0: true,
        filesystem: crate::config::DiskFilesystem::Ext4,
        ..ResourceDiskDuty::default()
    };
    let o = RunOptions { no_persist: true, ..RunOptions::default() };
    let text = done(&run_every_boot(&sys, &cfg, &o)).to_string();
    assert!(text.contains("RAID0 azprov-resource of 2 local NVMe disks created"), "{text}");
    assert!(text.contains("model rule for nvme0n1") && text.contains("blank disk formatted ext4"), "{text}");
    let mdadm: Vec<_> = sys.commands().into_iter().filter(|c| c.program == "mdadm").collect();
    assert_eq!(mdadm.len(), 1);
    assert_eq!(
        mdadm[0].args[..6],
        ["--create", raid::MD_NODE, "--run", "--level=0", "--raid-devices=2", "--name=azprov-resource"]
    );
    assert!(mp.join(README).exists());
    unmount(&mp);
    // without mdadm: the first disk alone, with the reason
    let sys = RecordingSystem::new(&root);
    sys.uninstall("mdadm");
    std::fs::remove_file(root.join("dev/md/azprov-resource")).unwrap();
    let first = Loop::attach(&root.join("dev/nvme0n1"));
    std::fs::remove_file(root.join("dev/nvme0n1")).unwrap();
    std::os::unix::fs::symlink(&first.dev, root.join("dev/nvme0n1")).unwrap();
    let text = done(&run_every_boot(&sys, &cfg, &o)).to_string();
    assert!(text.contains("mdadm is not installed: using the first of 2"), "{text}");
    assert!(text.contains("local NVMe /dev/nvme0n1") && text.contains("blank disk formatted ext4"), "{text}");
    unmount(&mp);
}

/// `run resource-disk --device A --device B` (host paths): striped even with `nvme_raid0 = false` (an explicit
/// request), then formatted and mounted; mdadm is scripted, a loop device stands for the array.
#[test]
fn root_given_devices_striped_then_formatted() {
    need_root!();
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("dev/md")).unwrap();
    let mut devices = Vec::new();
    for n in ["nvme0n1", "nvme1n1"] {
        let p = dir.path().join(n);
        std::fs::File::create(&p).unwrap().set_len(DISK).unwrap();
        devices.push(p);
    }
    let img = dir.path().join("md.img");
    std::fs::File::create(&img).unwrap().set_len(DISK).unwrap();
    let md = Loop::attach(&img);
    std::os::unix::fs::symlink(&md.dev, root.join("dev/md/azprov-resource")).unwrap();
    let sys = RecordingSystem::new(&root);
    sys.script("mdadm", CommandOutput { status: Some(0), ..Default::default() });
    let mp = root.join("mnt/nvme");
    let _m = Unmount(mp.clone());
    let cfg = ResourceDiskDuty { nvme_raid0: false, ..ResourceDiskDuty::default() };
    let o = RunOptions { devices: devices.clone(), mount_point: Some("/mnt/nvme".into()), no_persist: true };
    let text = done(&run_every_boot(&sys, &cfg, &o)).to_string();
    assert!(text.contains("RAID0 azprov-resource of 2 given disks created"), "{text}");
    assert!(text.contains("blank disk formatted ext4") && text.contains("mounted at /mnt/nvme"), "{text}");
    let mdadm: Vec<_> = sys.commands().into_iter().filter(|c| c.program == "mdadm").collect();
    assert_eq!(mdadm.len(), 1);
    assert_eq!(mdadm[0].args[7..], [devices[0].display().to_string(), devices[1].display().to_string()]);
    assert!(mp.join(README).exists() && fstab(&root).is_empty());
    unmount(&mp);
}
