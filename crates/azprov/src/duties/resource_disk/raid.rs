//! Several local NVMe temporary disks striped into one md RAID0 (`nvme_raid0 = true`, platform.md §9.8), or the
//! disks an administrator names (`azprov run resource-disk --device A --device B`, [`setup_hosts`]).
//!
//! The same safety rule as for one disk: an array is created only from disks that are all blank (no signature,
//! no partition table, no md superblock). An array of ours (name `azprov-resource`) is used when it is already
//! running (udev's incremental assembly on boot), else assembled. Anything else: the first disk alone, with the
//! reason, where the single-disk rules apply. The md device is then partitioned, formatted and mounted like a disk.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{excerpt, fail, layout, Outcome};
use crate::report::Failure;
use crate::system::{Command, System};

/// The array name given to `mdadm --create --name` (stored as `host:azprov-resource` by some mdadm versions).
pub const MD_NAME: &str = "azprov-resource";
/// The array's stable node (udev / mdadm create it from the name).
pub const MD_NODE: &str = "/dev/md/azprov-resource";

/// What one member disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// An md superblock of our array; `held` = the md device that already runs it (`/sys/block/<disk>/holders`).
    Ours { held: Option<String> },
    /// Nothing at all: may join a new array.
    Blank,
    /// Anything else, in words.
    Other(String),
}

/// What to do with the disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Our array already runs as this md device (kernel name, `md127`).
    Use(String),
    /// All disks carry our superblock: `mdadm --assemble`.
    Assemble,
    /// All disks are blank: `mdadm --create`.
    Create,
    /// No array: the first disk alone, for this reason.
    Single(String),
}

/// Whether an md array name is ours (`azprov-resource`, or `<homehost>:azprov-resource`).
pub fn is_our_name(name: &str) -> bool {
    name == MD_NAME || name.rsplit_once(':').is_some_and(|(_, n)| n == MD_NAME)
}

/// The decision, from what each disk (kernel name, state) holds. Pure.
pub fn plan(members: &[(String, Member)], never_format: bool) -> Plan {
    if members.iter().all(|(_, m)| *m == Member::Blank) {
        return if never_format { Plan::Single("RAID0 not created: never_format is set".into()) } else { Plan::Create };
    }
    let held: Vec<Option<&String>> = members
        .iter()
        .filter_map(|(_, m)| match m {
            Member::Ours { held } => Some(held.as_ref()),
            _ => None,
        })
        .collect();
    if held.len() == members.len() {
        if held.iter().all(|h| h.is_none()) {
            return Plan::Assemble;
        }
        if let Some(Some(md)) = held.first() {
            if held.iter().all(|h| *h == Some(*md)) {
                return Plan::Use(md.to_string());
            }
        }
        return Plan::Single("RAID0 members of our array are partly assembled: left to the administrator".into());
    }
    let why: Vec<String> = members
        .iter()
        .filter_map(|(n, m)| match m {
            Member::Blank => None,
            Member::Ours { .. } => Some(format!("{n} is a member of our earlier array")),
            Member::Other(w) => Some(format!("{n}: {w}")),
        })
        .collect();
    Plan::Single(format!("RAID0 not created ({}): using the first disk alone", why.join("; ")))
}

/// The result of [`setup`].
pub enum Raid {
    /// The array's block device (host path), with what was done.
    Array {
        dev: PathBuf,
        note: String,
    },
    /// The first disk alone, for this reason.
    Single(String),
    Failed(Outcome),
}

fn holder(sys: &dyn System, name: &str) -> Option<String> {
    let holders = sys.read_dir(&Path::new("/sys/block").join(name).join("holders")).ok()?;
    holders.into_iter().find(|h| h.starts_with("md"))
}

/// What a member disk (host path of its node, named as the kernel names it: `/dev/nvme0n1`) holds.
fn inspect(sys: &dyn System, host: &Path) -> std::io::Result<(String, Member)> {
    let name = host.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let src = sys.open_host_read(host)?;
    let member = match layout::md_superblock(src.as_ref())? {
        Some(n) if is_our_name(&n) => Member::Ours { held: holder(sys, &name) },
        Some(n) => Member::Other(format!("member of another md array `{n}`")),
        None => match holder(sys, &name) {
            Some(md) => Member::Other(format!("held by {md}")),
            None => match layout::classify(src.as_ref())? {
                layout::Verdict::Blank => Member::Blank,
                layout::Verdict::Encrypted(s) => Member::Other(format!("encrypted ({})", s.name())),
                layout::Verdict::Linux { fs, .. } => Member::Other(format!("holds {}", fs.name())),
                layout::Verdict::FreshNtfs { .. } => Member::Other("holds NTFS".into()),
                layout::Verdict::Keep(w) => Member::Other(w),
            },
        },
    };
    Ok((name, member))
}

/// The md device the array runs as, once mdadm has started it: the holder of the first member, else the
/// `/dev/md/azprov-resource` link (created by udev a moment later).
fn wait_for_array(sys: &dyn System, first: &str) -> Option<PathBuf> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(md) = holder(sys, first) {
            return Some(md_device(sys, &md));
        }
        if let Ok(p) = sys.resolve_device(Path::new(MD_NODE)) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The host path of md device `md127`.
fn md_device(sys: &dyn System, md: &str) -> PathBuf {
    let node = Path::new("/dev").join(md);
    sys.resolve_device(&node).unwrap_or(node)
}

/// `mdadm --create` argv for `devices` (host paths).
pub fn create_command(devices: &[PathBuf]) -> Command {
    let n = format!("--raid-devices={}", devices.len());
    let name = format!("--name={MD_NAME}");
    let mut args = vec!["--create", MD_NODE, "--run", "--level=0", &n, &name, "--metadata=1.2"];
    let devs: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
    args.extend(devs.iter().map(|s| s.as_str()));
    let mut cmd = Command::new("mdadm", &args);
    cmd.timeout = Duration::from_secs(120);
    cmd
}

/// `mdadm --assemble` argv for `devices` (host paths).
pub fn assemble_command(devices: &[PathBuf]) -> Command {
    let devs: Vec<String> = devices.iter().map(|d| d.display().to_string()).collect();
    let mut args = vec!["--assemble", "--run", MD_NODE];
    args.extend(devs.iter().map(|s| s.as_str()));
    let mut cmd = Command::new("mdadm", &args);
    cmd.timeout = Duration::from_secs(120);
    cmd
}

/// Stripe the local NVMe disks `nodes` (target paths, at least two): use, assemble or create our array.
pub fn setup(sys: &dyn System, nodes: &[PathBuf], never_format: bool) -> Raid {
    let mut hosts = Vec::new();
    for node in nodes {
        match sys.resolve_device(node) {
            Ok(h) => hosts.push(h),
            Err(e) => return Raid::Failed(fail("cannot read a local NVMe disk", node, e)),
        }
    }
    stripe(sys, &hosts, never_format, "local NVMe disks")
}

/// Stripe the disks given by the administrator (`--device`, host paths of the kernel's own nodes, at least two):
/// the same decisions as [`setup`].
pub fn setup_hosts(sys: &dyn System, hosts: &[PathBuf], never_format: bool) -> Raid {
    stripe(sys, hosts, never_format, "given disks")
}

fn stripe(sys: &dyn System, hosts: &[PathBuf], never_format: bool, what: &str) -> Raid {
    if !sys.has_program("mdadm") {
        return Raid::Single(format!("mdadm is not installed: using the first of {} {what}", hosts.len()));
    }
    let mut members = Vec::new();
    for host in hosts {
        match inspect(sys, host) {
            Ok(m) => members.push(m),
            Err(e) => return Raid::Failed(fail("cannot read a disk for the RAID0", host, e)),
        }
    }
    let first = members.first().map(|(n, _)| n.clone()).unwrap_or_default();
    let (cmd, done) = match plan(&members, never_format) {
        Plan::Single(why) => return Raid::Single(why),
        Plan::Use(md) => {
            return Raid::Array {
                dev: md_device(sys, &md),
                note: format!("RAID0 {MD_NAME} of {} {what} already running as {md}", hosts.len()),
            }
        }
        Plan::Assemble => (assemble_command(hosts), "assembled"),
        Plan::Create => (create_command(hosts), "created"),
    };
    match sys.run(&cmd) {
        Ok(o) if o.success() => {}
        Ok(o) => {
            return Raid::Failed(Outcome::Failed(
                Failure::new("resource disk: mdadm failed")
                    .with("command", cmd.display())
                    .with("status", format!("{:?}", o.status))
                    .with("stderr", excerpt(&o.stderr)),
            ))
        }
        Err(e) => return Raid::Failed(fail("mdadm not available", Path::new(MD_NODE), e)),
    }
    match wait_for_array(sys, &first) {
        Some(dev) => {
            Raid::Array { note: format!("RAID0 {MD_NAME} of {} {what} {done} ({})", hosts.len(), dev.display()), dev }
        }
        None => Raid::Failed(fail("the RAID0 array did not appear", Path::new(MD_NODE), cmd.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    fn m(n: &str, s: Member) -> (String, Member) {
        (n.to_string(), s)
    }

    #[test]
    fn decisions() {
        let ours = |h: Option<&str>| Member::Ours { held: h.map(String::from) };
        assert_eq!(plan(&[m("a", Member::Blank), m("b", Member::Blank)], false), Plan::Create);
        assert!(matches!(plan(&[m("a", Member::Blank), m("b", Member::Blank)], true), Plan::Single(_)));
        assert_eq!(plan(&[m("a", ours(None)), m("b", ours(None))], false), Plan::Assemble);
        assert_eq!(plan(&[m("a", ours(Some("md127"))), m("b", ours(Some("md127")))], true), Plan::Use("md127".into()));
        assert!(matches!(plan(&[m("a", ours(Some("md127"))), m("b", ours(None))], false), Plan::Single(_)));
        match plan(&[m("a", Member::Blank), m("b", Member::Other("holds ext2/3/4".into()))], false) {
            Plan::Single(w) => assert!(w.contains("b: holds ext2/3/4"), "{w}"),
            p => panic!("{p:?}"),
        }
        // a fresh disk next to a member of the old array (one disk replaced): never re-created
        assert!(matches!(plan(&[m("a", Member::Blank), m("b", ours(None))], false), Plan::Single(_)));
        assert!(is_our_name("azprov-resource") && is_our_name("vm-1:azprov-resource"));
        assert!(!is_our_name("azprov-resource2") && !is_our_name("x:y"));
    }

    fn sandbox(disks: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, RecordingSystem, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        let mut nodes = Vec::new();
        for (n, data) in disks {
            std::fs::write(dir.path().join("dev").join(n), data).unwrap();
            nodes.push(Path::new("/dev").join(n));
        }
        let sys = RecordingSystem::new(dir.path());
        (dir, sys, nodes)
    }

    fn ok() -> CommandOutput {
        CommandOutput { status: Some(0), ..Default::default() }
    }

    #[test]
    fn mdadm_missing_or_disk_not_blank() {
        let (_d, sys, nodes) = sandbox(&[("nvme0n1", vec![0; 1 << 20]), ("nvme1n1", vec![0; 1 << 20])]);
        sys.uninstall("mdadm");
        assert!(matches!(setup(&sys, &nodes, false), Raid::Single(ref w) if w.contains("mdadm is not installed")));
        let mut used = vec![0u8; 1 << 20];
        used[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        let (dir, sys, nodes) = sandbox(&[("nvme0n1", vec![0; 1 << 20]), ("nvme1n1", used)]);
        sys.script("mdadm", ok());
        match setup(&sys, &nodes, false) {
            Raid::Single(w) => assert!(w.contains("nvme1n1: holds ext2/3/4"), "{w}"),
            _ => panic!("expected the first disk alone"),
        }
        assert!(sys.commands().is_empty(), "nothing may run on a disk with a signature");
        drop(dir);
    }

    #[test]
    fn create_and_assemble_argv() {
        let (dir, sys, nodes) = sandbox(&[("nvme0n1", vec![0; 1 << 20]), ("nvme1n1", vec![0; 1 << 20])]);
        sys.script("mdadm", ok());
        // stands for the node udev makes once mdadm started the array
        std::fs::create_dir_all(dir.path().join("dev/md")).unwrap();
        std::fs::write(dir.path().join("dev/md127"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink("../md127", dir.path().join("dev/md/azprov-resource")).unwrap();
        let host = |n: &str| dir.path().canonicalize().unwrap().join("dev").join(n).display().to_string();
        match setup(&sys, &nodes, false) {
            Raid::Array { dev, note } => {
                assert_eq!(dev, dir.path().canonicalize().unwrap().join("dev/md127"));
                assert!(note.contains("created"), "{note}");
            }
            _ => panic!("expected an array"),
        }
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].program, "mdadm");
        assert_eq!(
            cmds[0].args,
            [
                "--create",
                MD_NODE,
                "--run",
                "--level=0",
                "--raid-devices=2",
                "--name=azprov-resource",
                "--metadata=1.2",
                &host("nvme0n1"),
                &host("nvme1n1"),
            ]
        );
        // later boot: both disks carry our superblock → assemble
        for n in ["nvme0n1", "nvme1n1"] {
            let mut d = vec![0u8; 1 << 20];
            d[4096..4100].copy_from_slice(&0xa92b_4efc_u32.to_le_bytes());
            d[4100..4104].copy_from_slice(&1u32.to_le_bytes());
            d[4096 + 32..4096 + 32 + 19].copy_from_slice(b"vm1:azprov-resource");
            std::fs::write(dir.path().join("dev").join(n), d).unwrap();
        }
        let sys2 = RecordingSystem::new(dir.path());
        sys2.script("mdadm", ok());
        assert!(matches!(setup(&sys2, &nodes, false), Raid::Array { ref note, .. } if note.contains("assembled")));
        assert_eq!(sys2.commands()[0].args, ["--assemble", "--run", MD_NODE, &host("nvme0n1"), &host("nvme1n1")]);
        // already running (udev assembled it at boot): used, nothing run
        for n in ["nvme0n1", "nvme1n1"] {
            std::fs::create_dir_all(dir.path().join("sys/block").join(n).join("holders/md127")).unwrap();
        }
        let sys3 = RecordingSystem::new(dir.path());
        sys3.script("mdadm", ok());
        assert!(matches!(setup(&sys3, &nodes, false), Raid::Array { ref dev, .. } if dev.ends_with("dev/md127")));
        assert!(sys3.commands().is_empty());
        // mdadm fails: a failure with the command
        let (_d, sys4, nodes4) = sandbox(&[("nvme0n1", vec![0; 1 << 20]), ("nvme1n1", vec![0; 1 << 20])]);
        sys4.script("mdadm", CommandOutput { status: Some(1), stderr: b"no md".to_vec(), ..Default::default() });
        assert!(matches!(setup(&sys4, &nodes4, false), Raid::Failed(Outcome::Failed(_))));
    }

    /// `run resource-disk --device A --device B`: host paths, striped like discovered disks, same safety rule.
    #[test]
    fn given_devices_are_striped_by_host_path() {
        let (dir, sys, _) = sandbox(&[("nvme0n1", vec![0; 1 << 20]), ("nvme1n1", vec![0; 1 << 20])]);
        sys.script("mdadm", ok());
        std::fs::create_dir_all(dir.path().join("dev/md")).unwrap();
        std::fs::write(dir.path().join("dev/md127"), vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink("../md127", dir.path().join("dev/md/azprov-resource")).unwrap();
        let hosts: Vec<PathBuf> =
            ["nvme0n1", "nvme1n1"].iter().map(|n| dir.path().canonicalize().unwrap().join("dev").join(n)).collect();
        match setup_hosts(&sys, &hosts, false) {
            Raid::Array { dev, note } => {
                assert!(dev.ends_with("dev/md127"), "{}", dev.display());
                assert!(note.contains("RAID0 azprov-resource of 2 given disks created"), "{note}");
            }
            _ => panic!("expected an array"),
        }
        let args = &sys.commands()[0].args;
        assert_eq!(args[..2], ["--create", MD_NODE]);
        assert_eq!(args[7..], [hosts[0].display().to_string(), hosts[1].display().to_string()]);
        // never_format: no array, nothing run
        let sys2 = RecordingSystem::new(dir.path());
        sys2.script("mdadm", ok());
        assert!(matches!(setup_hosts(&sys2, &hosts, true), Raid::Single(ref w) if w.contains("never_format")));
        assert!(sys2.commands().is_empty());
        // a disk that holds something: the first disk alone, nothing run
        let mut used = vec![0u8; 1 << 20];
        used[0x438..0x43a].copy_from_slice(&[0x53, 0xef]);
        std::fs::write(&hosts[1], used).unwrap();
        let sys3 = RecordingSystem::new(dir.path());
        sys3.script("mdadm", ok());
        assert!(matches!(setup_hosts(&sys3, &hosts, false), Raid::Single(ref w) if w.contains("nvme1n1: holds")));
        assert!(sys3.commands().is_empty());
    }
}
