//! Generalize an image before capture (platform.md §11): remove what belongs to one VM (host keys, machine-id,
//! DHCP leases and a DHCP-written resolv.conf, our state, cached OVF/customData, our drop-ins, fstab lines and swap
//! file, KVP pool, cloud-init's instance state and logs, WALinuxAgent's log, shell histories), reset the host name
//! (also where dhclient would send a fixed one), optionally lock root's password and, with `user`, delete the provisioned admin
//! user and its sudoers line.
//!
//! The work is planned first (read only), so `dry_run` lists exactly what a real run would do. It never prompts:
//! on the running system it refuses without `force`; under a root no flag is needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::duties::nic_names;
use crate::duties::resource_disk;
use crate::platform::ovf;
use crate::secret::Secret;
use crate::state::State;
use crate::system::{Command, System};

/// The host name an image is left with.
pub const GENERIC_HOSTNAME: &str = "localhost.localdomain";
/// Files we may have written under `/var/lib/waagent` (for WALinuxAgent's extension handling).
const WAAGENT_COPIES: &[&str] = &["CustomData", "ovf-env.xml", "provisioned"];
const FSTAB_MARK: &str = "x-azprov";

#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Also delete the provisioned admin user and its sudoers line.
    pub user: bool,
    /// List what would be done; change nothing.
    pub dry_run: bool,
    /// Allowed on the running system.
    pub force: bool,
    /// Set root's password hash to `*LOCK*`.
    pub lock_root_password: bool,
}

/// One planned change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Remove a file (target path).
    Remove(PathBuf),
    /// Replace a file's text (target path); `None` removes it (nothing left in it).
    Rewrite { path: PathBuf, text: Option<String>, why: String },
    /// Run a command (no secret in argv; stdin is not secret here but kept off logs anyway).
    Run { cmd: Command, why: String },
}

impl Change {
    /// One line for humans (`dry_run` prints these).
    pub fn describe(&self) -> String {
        match self {
            Change::Remove(p) => format!("remove {}", p.display()),
            Change::Rewrite { path, text: None, why } => format!("remove {} ({why})", path.display()),
            Change::Rewrite { path, why, .. } => format!("rewrite {} ({why})", path.display()),
            Change::Run { cmd, why } => format!("run {} ({why})", cmd.display()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What was (or, with `dry_run`, would be) done, in order.
    pub changes: Vec<Change>,
    /// Changes that failed, with the error.
    pub errors: Vec<String>,
    /// Things left alone and why.
    pub notes: Vec<String>,
}

impl Report {
    /// Every file removed (or to be removed): full target paths.
    pub fn removed_paths(&self) -> Vec<PathBuf> {
        self.changes
            .iter()
            .filter_map(|c| match c {
                Change::Remove(p) | Change::Rewrite { path: p, text: None, .. } => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeprovisionError {
    #[error("refusing to deprovision the running system without --force (use --root DIR for an offline image)")]
    Refused,
}

/// Plan and (unless `dry_run`) apply. `Err` only for the refusal; individual failures are in `Report::errors`.
pub fn deprovision(sys: &dyn System, cfg: &Config, opts: &Options) -> Result<Report, DeprovisionError> {
    if sys.is_live() && !opts.force && !opts.dry_run {
        return Err(DeprovisionError::Refused);
    }
    let mut notes = Vec::new();
    let changes = plan(sys, cfg, opts, &mut notes);
    let mut report = Report { changes, notes, ..Default::default() };
    if opts.dry_run {
        return Ok(report);
    }
    for c in &report.changes {
        if let Err(e) = apply(sys, c) {
            report.errors.push(format!("{}: {e}", c.describe()));
        }
    }
    Ok(report)
}

fn apply(sys: &dyn System, c: &Change) -> Result<(), String> {
    match c {
        Change::Remove(p) | Change::Rewrite { path: p, text: None, .. } => {
            sys.remove_file(p).map_err(|e| e.to_string())
        }
        Change::Rewrite { path, text: Some(t), .. } => {
            let (mode, owner) = match sys.stat(path) {
                Ok(i) => (i.mode, Some((i.uid, i.gid))),
                Err(_) => (0o644, None),
            };
            sys.write_file(path, t.as_bytes(), mode, owner).map_err(|e| e.to_string())
        }
        Change::Run { cmd, .. } => match sys.run(cmd) {
            Ok(o) if o.success() => Ok(()),
            Ok(o) => Err(format!("exit {:?}: {}", o.status, o.stderr_text())),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Regular files and symlinks under `dir` (recursively), whose name passes `keep`.
fn files_under(sys: &dyn System, dir: &Path, keep: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
    let Ok(names) = sys.read_dir(dir) else { return };
    for n in names {
        let p = dir.join(&n);
        match sys.stat(&p) {
            Ok(i) if i.is_dir && !i.is_symlink => files_under(sys, &p, keep, out),
            Ok(_) if keep(&n) => out.push(p),
            _ => {}
        }
    }
}

fn exists(sys: &dyn System, p: &Path) -> bool {
    sys.stat(p).is_ok()
}

/// The provisioned admin user: our state's record, else the redacted OVF copy.
pub fn provisioned_user(sys: &dyn System, cfg: &Config) -> Option<String> {
    let st = State::new(sys, &cfg.state.dir);
    if let Some(u) = st.admin_user() {
        return Some(u);
    }
    let bytes = sys.read(&cfg.state.dir.join("ovf-env.xml")).ok()?;
    ovf::parse(&bytes).ok()?.username.map(|u| u.trim().to_string()).filter(|u| !u.is_empty())
}

/// `/etc/fstab` without our lines, and the mount points those lines named.
pub fn fstab_without_ours(text: &str) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut mps = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let ours = !l.trim_start().starts_with('#') && f.get(3).is_some_and(|o| o.split(',').any(|x| x == FSTAB_MARK));
        if ours {
            if let Some(mp) = f.get(1) {
                mps.push(mp.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"));
            }
        } else {
            kept.push(l);
        }
    }
    let mut s = kept.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    (s, mps)
}

/// sudoers text without the lines whose first token is `user` (`None`: nothing but blanks left).
pub fn sudoers_without(text: &str, user: &str) -> Option<String> {
    let kept: Vec<&str> = text.lines().filter(|l| l.split_whitespace().next() != Some(user)).collect();
    if kept.iter().all(|l| l.trim().is_empty()) {
        return None;
    }
    let mut s = kept.join("\n");
    s.push('\n');
    Some(s)
}

/// `/etc/hosts` without `127.0.1.1` lines (ours, platform.md §9.7).
pub fn hosts_without_ours(text: &str) -> String {
    let kept: Vec<&str> = text.lines().filter(|l| l.split_whitespace().next() != Some("127.0.1.1")).collect();
    let mut s = kept.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

fn root_args(sys: &dyn System) -> Vec<String> {
    if sys.is_live() {
        vec![]
    } else {
        vec!["--root".into(), sys.root().display().to_string()]
    }
}

fn cmd(program: &str, args: Vec<String>) -> Command {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Command::new(program, &refs)
}

/// What a run would do, in order (reads only).
pub fn plan(sys: &dyn System, cfg: &Config, opts: &Options, notes: &mut Vec<String>) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut remove: Vec<PathBuf> = Vec::new();

    // the admin user first: userdel -r also takes its home (and history)
    let mut user_home: Option<String> = None;
    if opts.user {
        match provisioned_user(sys, cfg) {
            None => notes.push("--user: no provisioned user recorded in the state or the OVF copy".into()),
            Some(u) => {
                let passwd = sys.read_to_string(Path::new("/etc/passwd")).unwrap_or_default();
                let entry = passwd.lines().find(|l| l.split(':').next() == Some(u.as_str()));
                match entry {
                    None => notes.push(format!("--user: {u} is not in /etc/passwd")),
                    Some(line) => {
                        user_home = line.split(':').nth(5).map(str::to_string);
                        let mut args = root_args(sys);
                        args.extend(["-r".into(), u.clone()]);
                        changes.push(Change::Run {
                            cmd: cmd("userdel", args),
                            why: format!("delete the provisioned user {u} and its home"),
                        });
                    }
                }
                let sudo = &cfg.duties.sudo.file;
                if let Ok(text) = sys.read_to_string(sudo) {
                    if text.lines().any(|l| l.split_whitespace().next() == Some(u.as_str())) {
                        changes.push(Change::Rewrite {
                            path: sudo.clone(),
                            text: sudoers_without(&text, &u),
                            why: format!("{u}'s sudoers line"),
                        });
                    }
                }
            }
        }
    }

    // SSH host keys (always: WALinuxAgent #621)
    files_under(sys, Path::new("/etc/ssh"), &|n| n.starts_with("ssh_host_") && n.contains("key"), &mut remove);
    remove.retain(|p| p.parent() == Some(Path::new("/etc/ssh")));

    // machine-id: emptied (regenerated at first boot), the D-Bus copy removed
    let mid = Path::new("/etc/machine-id");
    if sys.read(mid).is_ok_and(|b| !b.is_empty()) {
        changes.push(Change::Rewrite { path: mid.into(), text: Some(String::new()), why: "emptied".into() });
    }
    let dbus = Path::new("/var/lib/dbus/machine-id");
    if exists(sys, dbus) {
        remove.push(dbus.into());
    }

    // DHCP leases
    for dir in ["/var/lib/dhclient", "/var/lib/dhcp", "/var/lib/dhcpcd", "/run/systemd/netif/leases"] {
        files_under(sys, Path::new(dir), &|_| true, &mut remove);
    }
    files_under(sys, Path::new("/var/lib/NetworkManager"), &|n| n.ends_with(".lease"), &mut remove);
    if let Ok(names) = sys.read_dir(Path::new("/var/db")) {
        for n in names.iter().filter(|n| n.starts_with("dhclient.leases.")) {
            remove.push(Path::new("/var/db").join(n));
        }
    }

    // our state (markers, progress, OVF copy, customData/userData and results, transport key, last run) and the
    // per-boot directory (unredacted OVF between phases); the lock file goes too
    files_under(sys, &cfg.state.dir, &|_| true, &mut remove);
    files_under(sys, &cfg.state.run_dir, &|_| true, &mut remove);
    for n in WAAGENT_COPIES {
        let p = Path::new("/var/lib/waagent").join(n);
        if exists(sys, &p) {
            remove.push(p);
        }
    }

    // WALinuxAgent's log (its state stays: extensions need it); cloud-init's instance state and logs, like
    // `cloud-init clean --logs` (everything in /var/lib/cloud but the seed directory)
    let walog = Path::new("/var/log/waagent.log");
    if exists(sys, walog) {
        remove.push(walog.into());
    }
    if let Ok(names) = sys.read_dir(Path::new("/var/lib/cloud")) {
        for n in names.iter().filter(|n| n.as_str() != "seed") {
            let p = Path::new("/var/lib/cloud").join(n);
            match sys.stat(&p) {
                Ok(i) if i.is_dir && !i.is_symlink => files_under(sys, &p, &|_| true, &mut remove),
                Ok(_) => remove.push(p),
                Err(_) => {}
            }
        }
    }
    if let Ok(names) = sys.read_dir(Path::new("/var/log")) {
        for n in names.iter().filter(|n| n.starts_with("cloud-init") && n.contains(".log")) {
            remove.push(Path::new("/var/log").join(n));
        }
    }

    // our drop-ins and MAC-bound link files
    if exists(sys, &cfg.duties.sshd.drop_in) {
        remove.push(cfg.duties.sshd.drop_in.clone());
    }
    if let Ok(names) = sys.read_dir(Path::new(nic_names::LINK_DIR)) {
        for n in names.iter().filter(|n| n.starts_with(nic_names::LINK_PREFIX) && n.ends_with(".link")) {
            remove.push(Path::new(nic_names::LINK_DIR).join(n));
        }
    }

    // fstab lines we wrote, and the swap file on those mount points (and on the configured one)
    let fstab = Path::new("/etc/fstab");
    let mut mount_points: BTreeSet<PathBuf> = BTreeSet::new();
    if let Ok(text) = sys.read_to_string(fstab) {
        let (new, mps) = fstab_without_ours(&text);
        if !mps.is_empty() {
            changes.push(Change::Rewrite { path: fstab.into(), text: Some(new), why: "our resource disk line".into() });
        }
        mount_points.extend(mps.into_iter().map(PathBuf::from));
    }
    mount_points.insert(resource_disk::mount_point(sys, &cfg.duties.resource_disk, &Default::default()));
    for mp in mount_points {
        let swap = mp.join(resource_disk::SWAP_FILE);
        if sys.stat(&swap).is_ok_and(|i| i.is_file) {
            remove.push(swap);
        }
    }

    // KVP pool
    if exists(sys, &cfg.kvp.pool_path) {
        remove.push(cfg.kvp.pool_path.clone());
    }

    // shell histories: root's and every account's home
    let mut homes: BTreeSet<String> = BTreeSet::from(["/root".to_string()]);
    let passwd = sys.read_to_string(Path::new("/etc/passwd")).unwrap_or_default();
    for l in passwd.lines() {
        if let Some(h) = l.split(':').nth(5).filter(|h| h.starts_with('/') && *h != "/") {
            homes.insert(h.to_string());
        }
    }
    for h in homes {
        let p = Path::new(&h).join(".bash_history");
        if user_home.as_deref() == Some(h.as_str()) {
            continue; // userdel -r removes it with the home
        }
        if sys.stat(&p).is_ok_and(|i| !i.is_dir) {
            remove.push(p);
        }
    }

    // host name
    let hostname = Path::new("/etc/hostname");
    if sys.read_to_string(hostname).map(|t| t.trim() != GENERIC_HOSTNAME).unwrap_or(true) {
        changes.push(Change::Rewrite {
            path: hostname.into(),
            text: Some(format!("{GENERIC_HOSTNAME}\n")),
            why: format!("host name reset to {GENERIC_HOSTNAME}"),
        });
    }
    let hosts = Path::new("/etc/hosts");
    if let Ok(text) = sys.read_to_string(hosts) {
        let new = hosts_without_ours(&text);
        if new != text {
            changes.push(Change::Rewrite { path: hosts.into(), text: Some(new), why: "our 127.0.1.1 line".into() });
        }
    }

    // dhclient configured with a literal name sends the image's name from the next VM: send gethostname() instead
    for conf in ["/etc/dhcp/dhclient.conf", "/etc/dhcp3/dhclient.conf", "/etc/dhclient.conf"] {
        let Ok(text) = sys.read_to_string(Path::new(conf)) else { continue };
        let literal = text.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with("send host-name") && !t.contains("gethostname()")
        });
        if literal {
            changes.push(Change::Rewrite {
                path: conf.into(),
                text: Some(crate::duties::hostname_publish::dhclient_conf_with_hostname(&text)),
                why: "send host-name = gethostname() instead of a fixed name".into(),
            });
        }
    }

    // resolv.conf written by the DHCP client of this VM (a regular file); the links to systemd-resolved's or
    // resolvconf's files are the distribution's and stay
    let resolv = Path::new("/etc/resolv.conf");
    match sys.stat(resolv) {
        Ok(i) if i.is_file && !i.is_symlink => remove.push(resolv.into()),
        Ok(i) if i.is_symlink => notes.push("/etc/resolv.conf is a link (resolver service): kept".into()),
        _ => {}
    }

    // root password
    let root_locked =
        sys.read_to_string(Path::new("/etc/shadow")).is_ok_and(|t| t.lines().any(|l| l.starts_with("root:*LOCK*:")));
    if opts.lock_root_password && !root_locked {
        if sys.has_program("chpasswd") {
            let mut args = root_args(sys);
            args.push("-e".into());
            let mut c = cmd("chpasswd", args);
            c = c.stdin(Secret::new(b"root:*LOCK*\n".to_vec()));
            changes.push(Change::Run { cmd: c, why: "lock root's password (root:*LOCK*)".into() });
        } else {
            let mut args = root_args(sys);
            args.extend(["-L".into(), "root".into()]);
            changes.push(Change::Run { cmd: cmd("usermod", args), why: "lock root's password".into() });
        }
    }

    let mut seen = BTreeSet::new();
    remove.retain(|p| seen.insert(p.clone()));
    changes.extend(remove.into_iter().map(Change::Remove));
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn image(root: &Path) {
        put(root, "/etc/ssh/ssh_host_rsa_key", "k");
        put(root, "/etc/ssh/ssh_host_rsa_key.pub", "k");
        put(root, "/etc/ssh/ssh_host_ed25519_key", "k");
        put(root, "/etc/ssh/sshd_config", "Port 22\n");
        put(root, "/etc/ssh/sshd_config.d/01-azprov.conf", "PasswordAuthentication no\n");
        put(root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        put(root, "/var/lib/dbus/machine-id", "0123456789abcdef0123456789abcdef\n");
        put(root, "/var/lib/dhcp/dhclient.eth0.leases", "lease {}\n");
        put(root, "/var/lib/NetworkManager/internal-x-eth0.lease", "x");
        put(root, "/var/lib/NetworkManager/NetworkManager.state", "keep");
        put(root, "/run/systemd/netif/leases/2", "ADDRESS=10.0.0.4\n");
        put(root, "/var/lib/azprov/provisioned/91267c52-9f02-4cfe-b1f4-a4da7ebac2cf", "t\n");
        put(root, "/var/lib/azprov/progress.json", "{}");
        put(root, "/var/lib/azprov/ovf-env.xml", &ovf_with_user("azureuser"));
        put(root, "/var/lib/azprov/custom_data", "secret");
        put(root, "/var/lib/azprov/last-run.json", "{}");
        put(root, "/var/lib/waagent/CustomData", "c2VjcmV0");
        put(root, "/var/lib/waagent/Extensions.conf", "keep");
        put(root, "/etc/systemd/network/10-azprov-eth0.link", "[Match]\n");
        put(root, "/etc/systemd/network/99-default.link", "keep");
        put(
            root,
            "/etc/fstab",
            "UUID=1 / ext4 defaults 0 1\n/dev/disk/azure/resource-part1\t/mnt\text4\tdefaults,nofail,x-azprov\t0\t2\n",
        );
        put(root, "/mnt/swapfile", "");
        put(root, "/var/lib/hyperv/.kvp_pool_1", "");
        put(root, "/root/.bash_history", "ls\n");
        put(root, "/home/other/.bash_history", "ls\n");
        put(
            root,
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/bash\nother:x:1001:1001::/home/other:/bin/sh\n",
        );
        put(root, "/etc/hostname", "web-01\n");
        put(root, "/etc/resolv.conf", "nameserver 168.63.129.16\nsearch abc.internal.cloudapp.net\n");
        put(root, "/etc/dhcp/dhclient.conf", "# conf\nsend host-name \"web-01\";\nrequest subnet-mask;\n");
        put(root, "/var/lib/cloud/instances/iid-1/user-data.txt", "secret");
        put(root, "/var/lib/cloud/data/instance-id", "iid-1\n");
        put(root, "/var/lib/cloud/seed/nocloud/meta-data", "keep");
        put(root, "/var/log/cloud-init.log", "log");
        put(root, "/var/log/cloud-init-output.log", "log");
        put(root, "/var/log/waagent.log", "log");
        put(root, "/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tweb-01\n");
    }

    fn ovf_with_user(u: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure">
<wa:ProvisioningSection><wa:Version>1.0</wa:Version>
<LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure">
<ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>
<HostName>web-01</HostName><UserName>{u}</UserName>
<DisablePasswordAuthentication>true</DisablePasswordAuthentication>
</LinuxProvisioningConfigurationSet></wa:ProvisioningSection>
<wa:PlatformSettingsSection><wa:Version>1.0</wa:Version>
<PlatformSettings xmlns="http://schemas.microsoft.com/windowsazure"><ProvisionGuestAgent>false</ProvisionGuestAgent></PlatformSettings>
</wa:PlatformSettingsSection></Environment>"#
        )
    }

    fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(d: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut v = Vec::new();
        walk(root, &mut v);
        v.sort();
        v
    }

    const REMOVED: &[&str] = &[
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/ssh/ssh_host_rsa_key.pub",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/sshd_config.d/01-azprov.conf",
        "/var/lib/dbus/machine-id",
        "/var/lib/dhcp/dhclient.eth0.leases",
        "/var/lib/NetworkManager/internal-x-eth0.lease",
        "/run/systemd/netif/leases/2",
        "/var/lib/azprov/provisioned/91267c52-9f02-4cfe-b1f4-a4da7ebac2cf",
        "/var/lib/azprov/progress.json",
        "/var/lib/azprov/ovf-env.xml",
        "/var/lib/azprov/custom_data",
        "/var/lib/azprov/last-run.json",
        "/var/lib/waagent/CustomData",
        "/etc/systemd/network/10-azprov-eth0.link",
        "/mnt/swapfile",
        "/var/lib/hyperv/.kvp_pool_1",
        "/root/.bash_history",
        "/home/other/.bash_history",
        "/etc/resolv.conf",
        "/var/lib/cloud/instances/iid-1/user-data.txt",
        "/var/lib/cloud/data/instance-id",
        "/var/log/cloud-init.log",
        "/var/log/cloud-init-output.log",
        "/var/log/waagent.log",
    ];

    #[test]
    fn dry_run_lists_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        let before = snapshot(d.path());
        let sys = RecordingSystem::new(d.path());
        let r = deprovision(&sys, &Config::default(), &Options { dry_run: true, user: true, ..Default::default() })
            .unwrap();
        let listed = r.removed_paths();
        for p in REMOVED {
            assert!(listed.contains(&PathBuf::from(p)), "{p} not listed: {listed:?}");
        }
        for keep in [
            "/var/lib/waagent/Extensions.conf",
            "/etc/systemd/network/99-default.link",
            "/etc/ssh/sshd_config",
            "/var/lib/cloud/seed/nocloud/meta-data",
        ] {
            assert!(!listed.contains(&PathBuf::from(keep)), "{keep} listed");
        }
        assert!(r.changes.iter().any(|c| matches!(c, Change::Run { cmd, .. } if cmd.program == "userdel")));
        assert_eq!(snapshot(d.path()), before, "dry run changed files");
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn removes_resets_and_edits() {
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        let sys = RecordingSystem::new(d.path());
        let r = deprovision(&sys, &Config::default(), &Options::default()).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        for p in REMOVED {
            assert!(std::fs::symlink_metadata(d.path().join(&p[1..])).is_err(), "{p} still there");
        }
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("etc/machine-id"), "");
        assert_eq!(read("etc/hostname"), "localhost.localdomain\n");
        assert_eq!(read("etc/hosts"), "127.0.0.1\tlocalhost\n");
        assert_eq!(read("etc/fstab"), "UUID=1 / ext4 defaults 0 1\n");
        assert_eq!(read("var/lib/waagent/Extensions.conf"), "keep");
        assert_eq!(read("etc/ssh/sshd_config"), "Port 22\n");
        assert_eq!(read("etc/dhcp/dhclient.conf"), "# conf\nsend host-name = gethostname();\nrequest subnet-mask;\n");
        assert_eq!(read("var/lib/cloud/seed/nocloud/meta-data"), "keep");
        assert!(sys.commands().is_empty(), "no --user, no root lock: no command");
        // a second run has nothing left to remove
        let again = deprovision(&sys, &Config::default(), &Options { dry_run: true, ..Default::default() }).unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn refuses_the_running_system_without_force() {
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        let before = snapshot(d.path());
        let sys = RecordingSystem::new(d.path());
        sys.pretend_live();
        let r = deprovision(&sys, &Config::default(), &Options { user: true, ..Default::default() });
        assert_eq!(r.unwrap_err(), DeprovisionError::Refused);
        assert_eq!(snapshot(d.path()), before);
        assert!(sys.commands().is_empty());
        // a dry run is allowed: it changes nothing
        assert!(deprovision(&sys, &Config::default(), &Options { dry_run: true, ..Default::default() }).is_ok());
        assert_eq!(snapshot(d.path()), before);
    }

    #[test]
    fn resolver_link_and_generic_dhclient_conf_kept() {
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        std::fs::remove_file(d.path().join("etc/resolv.conf")).unwrap();
        std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", d.path().join("etc/resolv.conf"))
            .unwrap();
        put(d.path(), "/etc/dhcp/dhclient.conf", "send host-name = gethostname();\n");
        let sys = RecordingSystem::new(d.path());
        let r = deprovision(&sys, &Config::default(), &Options { dry_run: true, ..Default::default() }).unwrap();
        assert!(!r.removed_paths().contains(&PathBuf::from("/etc/resolv.conf")));
        assert!(r.notes.iter().any(|n| n.contains("resolv.conf")), "{:?}", r.notes);
        assert!(!r.changes.iter().any(|c| c.describe().contains("dhclient.conf")), "{:?}", r.changes);
    }

    #[test]
    fn sudoers_lines_by_first_token_only() {
        let text = "azureuser ALL=(ALL) NOPASSWD: ALL\nbob ALL=(azureuser) ALL\nazureuser2 ALL=(ALL) ALL\n";
        assert_eq!(
            sudoers_without(text, "azureuser").as_deref(),
            Some("bob ALL=(azureuser) ALL\nazureuser2 ALL=(ALL) ALL\n")
        );
        assert_eq!(sudoers_without("azureuser ALL=(ALL) ALL\n", "azureuser"), None);
    }

    #[test]
    fn root_lock_through_chpasswd_stdin() {
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        let sys = RecordingSystem::new(d.path());
        sys.script("chpasswd", crate::system::CommandOutput { status: Some(0), ..Default::default() });
        let r =
            deprovision(&sys, &Config::default(), &Options { lock_root_password: true, ..Default::default() }).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].display(), format!("chpasswd --root {} -e", d.path().display()));
        assert_eq!(cmds[0].stdin.as_ref().unwrap().expose(), b"root:*LOCK*\n");
    }

    #[test]
    fn user_deleted_in_a_sandbox() {
        if !rustix::process::geteuid().is_root() || !RecordingSystem::new("/").has_program("userdel") {
            eprintln!("skipping: needs root and userdel");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        image(d.path());
        put(
            d.path(),
            "/etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nazureuser:x:1000:1000::/home/azureuser:/bin/bash\nother:x:1001:1001::/home/other:/bin/sh\n",
        );
        put(d.path(), "/etc/group", "root:x:0:\nazureuser:x:1000:\nother:x:1001:\n");
        put(
            d.path(),
            "/etc/shadow",
            "root:*:19000:0:99999:7:::\nazureuser:!:19000:0:99999:7:::\nother:!:19000:0:99999:7:::\n",
        );
        put(d.path(), "/etc/gshadow", "root:*::\nazureuser:!::\nother:!::\n");
        put(d.path(), "/home/azureuser/.bash_history", "sudo ls\n");
        put(d.path(), "/home/azureuser/.ssh/authorized_keys", "ssh-ed25519 AAAA x\n");
        for p in [
            "home/azureuser",
            "home/azureuser/.bash_history",
            "home/azureuser/.ssh",
            "home/azureuser/.ssh/authorized_keys",
        ] {
            std::os::unix::fs::lchown(d.path().join(p), Some(1000), Some(1000)).unwrap();
        }
        put(d.path(), "/etc/sudoers.d/90-azprov", "azureuser ALL=(ALL) NOPASSWD: ALL\nother ALL=(ALL) ALL\n");
        let sys = RecordingSystem::new(d.path());
        let r = deprovision(&sys, &Config::default(), &Options { user: true, ..Default::default() }).unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert!(!read("etc/passwd").contains("azureuser"), "{}", read("etc/passwd"));
        assert!(read("etc/passwd").contains("other:"));
        assert!(!d.path().join("home/azureuser").exists());
        assert_eq!(read("etc/sudoers.d/90-azprov"), "other ALL=(ALL) ALL\n");
        assert_eq!(sys.commands()[0].display(), format!("userdel --root {} -r azureuser", d.path().display()));
    }
}
