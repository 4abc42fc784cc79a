//! `azprov run resource-disk` and `azprov run scsi-timeouts`: the real binary on sandbox roots. Disk tests use
//! image files on loop devices (never the host's disks) and run the agent under `unshare --mount` so its mounts
//! stay in a private namespace that dies with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn azprov() -> Command {
    Command::new(env!("CARGO_BIN_EXE_azprov"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn have(p: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Why the loop-device tests cannot run here.
fn root_unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices".into());
    }
    ["losetup", "unshare", "mkfs.ext4", "mkntfs", "ntfscp"]
        .iter()
        .find(|p| !have(p))
        .map(|p| format!("{p} not installed"))
}

struct Loop(PathBuf);

impl Loop {
    fn attach(img: &Path) -> Loop {
        let out = Command::new("losetup").args(["-f", "--show"]).arg(img).output().unwrap();
        assert!(out.status.success(), "losetup: {}", text(&out));
        Loop(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        // partitions added with BLKPG outlive the detach of a loop device without partscan: drop them first
        let _ = Command::new("partx").arg("-d").arg(&self.0).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

const DISK: u64 = 64 << 20;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out));
}

/// MBR + NTFS partition 1 (from 1 MiB) with the platform's warning file and `extra` files.
fn azure_disk(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let img = dir.join(name);
    let part = dir.join(format!("{name}.part"));
    std::fs::File::create(&part).unwrap().set_len(DISK - (1 << 20)).unwrap();
    run("mkntfs", &["-F", "-Q", "-q", "-L", "Temporary Storage", part.to_str().unwrap()]);
    let note = dir.join("note.txt");
    std::fs::write(&note, "temporary\r\n").unwrap();
    for f in ["DATALOSS_WARNING_README.txt"].iter().chain(extra) {
        run("ntfscp", &["-f", part.to_str().unwrap(), note.to_str().unwrap(), f]);
    }
    let mut bytes = vec![0u8; 1 << 20];
    bytes[0x1be + 4] = 0x07;
    bytes[0x1be + 8..0x1be + 12].copy_from_slice(&2048u32.to_le_bytes());
    bytes[0x1be + 12..0x1be + 16].copy_from_slice(&(((DISK >> 9) - 2048) as u32).to_le_bytes());
    bytes[510] = 0x55;
    bytes[511] = 0xaa;
    bytes.extend_from_slice(&std::fs::read(&part).unwrap());
    std::fs::write(&img, bytes).unwrap();
    std::fs::remove_file(part).unwrap();
    img
}

fn run_disk(root: &Path, cfg: &Path, dev: &Path, extra: &[&str]) -> Output {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private"])
        .arg(env!("CARGO_BIN_EXE_azprov"))
        .args(["run", "resource-disk", "--device"])
        .arg(dev)
        .arg("--root")
        .arg(root)
        .arg("--config")
        .arg(cfg)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn root_run_resource_disk_formats_fresh_and_leaves_user_data() {
    if let Some(why) = root_unavailable() {
        eprintln!("skipping: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let cfg = dir.path().join("azprov.toml");
    std::fs::write(&cfg, "[duties.resource_disk]\nswap_size_mb = 4\n").unwrap();

    let img = azure_disk(dir.path(), "fresh.img", &[]);
    let disk = Loop::attach(&img);
    let out = run_disk(&root, &cfg, &disk.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("formatted ext4") && t.contains("mounted at /mnt") && t.contains("swap file"), "{t}");
    drop(disk);
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(&bytes[512..520], b"EFI PART");
    assert_eq!(&bytes[(1 << 20) + 0x438..(1 << 20) + 0x43a], &[0x53, 0xef]);
    let fstab = std::fs::read_to_string(root.join("etc/fstab")).unwrap();
    assert!(fstab.contains("\t/mnt\text4\tdefaults,nofail"), "{fstab}");
    // nothing leaked into this namespace
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(root.to_str().unwrap()));

    // the disk now holds our ext4: mounted as it is, --no-persist leaves fstab alone
    std::fs::remove_file(root.join("etc/fstab")).unwrap();
    let disk = Loop::attach(&img);
    let out = run_disk(&root, &cfg, &disk.0, &["--no-persist", "--mount-point", "/mnt/resource"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("existing ext2/3/4 file system kept"), "{}", text(&out));
    assert!(!root.join("etc/fstab").exists());
    drop(disk);

    let img = azure_disk(dir.path(), "user.img", &["my-data.bin"]);
    let before = std::fs::read(&img).unwrap();
    let disk = Loop::attach(&img);
    let out = run_disk(&root, &cfg, &disk.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("left alone") && text(&out).contains("my-data.bin"), "{}", text(&out));
    drop(disk);
    assert!(std::fs::read(&img).unwrap() == before, "a disk with user data was modified");
}

#[test]
fn run_resource_disk_fails_on_a_non_device() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-a-disk");
    std::fs::write(&f, [0u8; 4096]).unwrap();
    let out =
        azprov().args(["run", "resource-disk", "--device"]).arg(&f).arg("--root").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("resource disk: not a block device"), "{}", text(&out));
    // no disk on this (sandbox) VM: rightly left alone
    let out = azprov().args(["run", "resource-disk", "--root"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("left alone: no resource disk"), "{}", text(&out));
}

#[test]
fn run_scsi_timeouts_on_sandbox_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("sys/block/sdb/device");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("vendor"), "Msft    \n").unwrap();
    std::fs::write(dev.join("model"), "Virtual Disk    \n").unwrap();
    std::fs::write(dev.join("timeout"), "30\n").unwrap();
    let out = azprov().args(["run", "scsi-timeouts", "--root"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(dev.join("timeout")).unwrap(), "300");
}
