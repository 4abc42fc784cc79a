//! A throwaway root directory that looks like a freshly booted, generalized Debian-style image on an Azure VM, as
//! far as a provisioning agent run with `--root` can see: DMI identity, a CD-ROM drive holding the provisioning DVD
//! (an image file standing in for `/dev/sr0`), passwd/shadow/group, sshd and sudo configuration, KVP directory.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What the sandbox should look like.
#[derive(Debug, Clone)]
pub struct SandboxSpec<'a> {
    /// Contents of `/sys/class/dmi/id/product_uuid`.
    pub product_uuid: &'a str,
    /// Gen2 (UEFI): `/sys/firmware/efi` exists.
    pub gen2: bool,
    /// Azure chassis asset tag present.
    pub azure: bool,
    /// The provisioning DVD image placed at `/dev/sr0` with a CD-ROM `sys/class/block/sr0`; `None`: no drive at all.
    pub dvd: Option<&'a [u8]>,
    /// A CD-ROM drive with no disc (only when `dvd` is `None`).
    pub empty_drive: bool,
}

const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

pub(crate) const LOGIN_DEFS: &str =
    "UID_MIN 1000\nUID_MAX 60000\nGID_MIN 1000\nGID_MAX 60000\nSYS_UID_MIN 100\nSYS_UID_MAX 999\n\
SYS_GID_MIN 100\nSYS_GID_MAX 999\nUMASK 022\nUSERGROUPS_ENAB yes\nENCRYPT_METHOD SHA512\nCREATE_HOME yes\n";

pub(crate) const SSHD_CONFIG: &str =
    "Include /etc/ssh/sshd_config.d/*.conf\n\nKbdInteractiveAuthentication no\nUsePAM yes\n\
X11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem sftp /usr/lib/openssh/sftp-server\n";

pub(crate) const SUDOERS: &str =
    "Defaults env_reset\nDefaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n";

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> io::Result<()> {
    let p = root.join(rel);
    if let Some(d) = p.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(&p, data)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
}

fn dir(root: &Path, rel: &str, mode: u32) -> io::Result<()> {
    let p = root.join(rel);
    fs::create_dir_all(&p)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
}

/// Populate `root` (created if missing).
pub fn prepare(root: &Path, spec: &SandboxSpec<'_>) -> io::Result<()> {
    fs::create_dir_all(root)?;
    write(root, "etc/passwd", b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n", 0o644)?;
    write(
        root,
        "etc/group",
        b"root:x:0:\ndaemon:x:1:\nsudo:x:27:\nvideo:x:44:\nusers:x:100:\nnogroup:x:65534:\n",
        0o644,
    )?;
    write(
        root,
        "etc/shadow",
        b"root:*:20000:0:99999:7:::\ndaemon:*:20000:0:99999:7:::\nsshd:*:20000:0:99999:7:::\n",
        0o640,
    )?;
    write(root, "etc/gshadow", b"root:*::\ndaemon:*::\nsudo:*::\nvideo:*::\nusers:*::\nnogroup:*::\n", 0o640)?;
    write(root, "etc/login.defs", LOGIN_DEFS.as_bytes(), 0o644)?;
    write(root, "etc/skel/.profile", b"# ~/.profile\n", 0o644)?;
    write(root, "etc/hostname", b"localhost\n", 0o644)?;
    write(root, "etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644)?;
    write(root, "etc/nsswitch.conf", b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n", 0o644)?;
    write(root, "etc/ssh/sshd_config", SSHD_CONFIG.as_bytes(), 0o644)?;
    dir(root, "etc/ssh/sshd_config.d", 0o755)?;
    write(root, "etc/sudoers", SUDOERS.as_bytes(), 0o440)?;
    dir(root, "etc/sudoers.d", 0o750)?;
    dir(root, "home", 0o755)?;
    dir(root, "root", 0o700)?;
    dir(root, "var/lib/hyperv", 0o755)?;
    dir(root, "run", 0o755)?;
    dir(root, "tmp", 0o1777)?;
    write(root, "sys/class/dmi/id/product_uuid", format!("{}\n", spec.product_uuid).as_bytes(), 0o400)?;
    write(root, "sys/class/dmi/id/sys_vendor", b"Microsoft Corporation\n", 0o444)?;
    write(root, "sys/class/dmi/id/product_name", b"Virtual Machine\n", 0o444)?;
    if spec.azure {
        write(root, "sys/class/dmi/id/chassis_asset_tag", format!("{AZURE_ASSET_TAG}\n").as_bytes(), 0o444)?;
    } else {
        write(root, "sys/class/dmi/id/chassis_asset_tag", b"None\n", 0o444)?;
    }
    if spec.gen2 {
        dir(root, "sys/firmware/efi", 0o755)?;
    }
    // a SCSI disk (type 0) next to the CD-ROM, so discovery has to look at the type, not the name
    write(root, "sys/class/block/sda/device/type", b"0\n", 0o444)?;
    dir(root, "dev", 0o755)?;
    if let Some(img) = spec.dvd {
        write(root, "sys/class/block/sr0/device/type", b"5\n", 0o444)?;
        write(root, "dev/sr0", img, 0o660)?;
    } else if spec.empty_drive {
        // a drive without a disc: an empty file stands for it (the agent's sandbox convention)
        write(root, "sys/class/block/sr0/device/type", b"5\n", 0o444)?;
        write(root, "dev/sr0", b"", 0o660)?;
    }
    Ok(())
}
