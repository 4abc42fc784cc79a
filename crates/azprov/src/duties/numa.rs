//! Virtual NUMA (platform.md §9.15): kernels older than 2.6.37 mishandle Hyper-V's virtual NUMA topology and need
//! `numa=off` on their command line — in `GRUB_CMDLINE_LINUX` (then grub.cfg regenerated) and on grub legacy
//! `kernel` lines. 2.6.37 itself is fine (Microsoft's "< 2.6.37"). A no-op with a reason on every modern kernel.

use std::path::Path;

use super::grub;
use super::{kernel_version, Outcome};
use crate::config::Switch;
use crate::report::Failure;
use crate::system::System;

pub const NUMA_OFF: &str = "numa=off";
/// The first kernel that handles Hyper-V virtual NUMA.
pub const FIXED_IN: (u32, u32, u32) = (2, 6, 37);

/// Whether a kernel of this version needs `numa=off`.
pub fn needs_numa_off(version: (u32, u32, u32)) -> bool {
    version < FIXED_IN
}

/// The kernel to decide for: the running one (`/proc` under the root, `uname` live), else in an offline image the
/// newest under `/lib/modules` (the one its boot loader normally starts).
fn target_kernel(sys: &dyn System) -> Option<(String, (u32, u32, u32))> {
    if let Some(r) = sys.kernel_release() {
        if let Some(v) = kernel_version(&r) {
            return Some((r, v));
        }
    }
    let names = sys.read_dir(Path::new("/lib/modules")).ok()?;
    names.into_iter().filter_map(|n| kernel_version(&n).map(|v| (n, v))).max_by_key(|(_, v)| *v)
}

fn write_failure(path: &Path, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(
        Failure::new("failure to configure the boot loader").with("path", path.display()).with("exception", e),
    )
}

/// Add `numa=off` where the kernel needs it (local phase; also an image-build action under `--root`).
pub fn apply(sys: &dyn System, cfg: &Switch) -> Outcome {
    if !cfg.enabled {
        return Outcome::Skipped("disabled by configuration (duties.numa.enabled = false)".into());
    }
    let Some((release, version)) = target_kernel(sys) else {
        return Outcome::Skipped("kernel version unknown (no /proc/sys/kernel/osrelease, no /lib/modules)".into());
    };
    if !needs_numa_off(version) {
        return Outcome::Skipped(format!("kernel {release} is 2.6.37 or later: virtual NUMA needs no change"));
    }
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    let mut regenerate = false;
    if sys.exists(Path::new(grub::DEFAULT_GRUB)) {
        let add = |mut v: Vec<String>| {
            if !v.iter().any(|a| a == NUMA_OFF) {
                v.push(NUMA_OFF.to_string());
            }
            v
        };
        match grub::edit_default(sys, grub::CMDLINE_LINUX, add) {
            Ok(Some(p)) => {
                changed.push(format!("{} in {}", grub::CMDLINE_LINUX, p.display()));
                regenerate = true;
            }
            Ok(None) => unchanged.push(grub::CMDLINE_LINUX.to_string()),
            Err(e) => return write_failure(Path::new(grub::DEFAULT_GRUB), e),
        }
    }
    for legacy in grub::LEGACY_CONFIGS {
        let path = Path::new(legacy);
        match sys.stat(path) {
            // menu.lst is usually a link to grub.conf, which is edited on its own
            Ok(st) if st.is_file => {}
            _ => continue,
        }
        let old = match sys.read_to_string(path) {
            Ok(t) => t,
            Err(e) => return write_failure(path, e),
        };
        let new = grub::legacy_add_arg(&old, NUMA_OFF);
        if new == old {
            unchanged.push(legacy.to_string());
            continue;
        }
        let mode = sys.stat(path).map(|s| s.mode).unwrap_or(0o600);
        if let Err(e) = sys.write_file(path, new.as_bytes(), mode, None) {
            return write_failure(path, e);
        }
        changed.push(format!("kernel lines in {legacy}"));
    }
    if changed.is_empty() && unchanged.is_empty() {
        return Outcome::Skipped(format!(
            "kernel {release} needs {NUMA_OFF} but there is no boot loader configuration ({}, {})",
            grub::DEFAULT_GRUB,
            grub::LEGACY_CONFIGS.join(", ")
        ));
    }
    if changed.is_empty() {
        return Outcome::Done(format!("kernel {release}: {NUMA_OFF} already set ({})", unchanged.join(", ")));
    }
    let mut detail = format!("kernel {release}: added {NUMA_OFF} to {}", changed.join(", "));
    if regenerate {
        match grub::regenerate(sys) {
            Ok(how) => detail.push_str(&format!("; {how}")),
            Err(why) => {
                tracing::warn!("numa: grub.cfg not regenerated: {why}");
                detail.push_str(&format!("; grub.cfg not regenerated: {why}"));
            }
        }
    }
    Outcome::Done(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    const ON: Switch = Switch { enabled: true };

    fn sandbox(release: Option<&str>, files: &[(&str, &str)]) -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(r) = release {
            std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
            std::fs::write(dir.path().join("proc/sys/kernel/osrelease"), format!("{r}\n")).unwrap();
        }
        for (p, text) in files {
            let host = dir.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(host.parent().unwrap()).unwrap();
            std::fs::write(host, text).unwrap();
        }
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    fn read(dir: &tempfile::TempDir, p: &str) -> String {
        std::fs::read_to_string(dir.path().join(p.trim_start_matches('/'))).unwrap()
    }

    #[test]
    fn version_threshold() {
        assert!(needs_numa_off((2, 6, 32)));
        assert!(needs_numa_off((2, 6, 36)));
        assert!(!needs_numa_off((2, 6, 37)));
        assert!(!needs_numa_off((2, 6, 39)));
        assert!(!needs_numa_off((3, 0, 0)));
        assert!(needs_numa_off((2, 4, 99)));
        assert!(!needs_numa_off(kernel_version("5.15.0-1019-azure").unwrap()));
    }

    #[test]
    fn modern_kernels_are_left_alone() {
        let grub = "GRUB_CMDLINE_LINUX=\"quiet\"\n";
        for r in ["2.6.37", "3.10.0-1160.el7.x86_64", "6.8.0-1015-azure"] {
            let (dir, sys) = sandbox(Some(r), &[("/etc/default/grub", grub)]);
            match apply(&sys, &ON) {
                Outcome::Skipped(why) => assert!(why.contains("2.6.37 or later") && why.contains(r), "{why}"),
                o => panic!("{o:?}"),
            }
            assert_eq!(read(&dir, "/etc/default/grub"), grub);
            assert!(sys.commands().is_empty());
        }
        let (_d, sys) = sandbox(None, &[]);
        assert!(matches!(apply(&sys, &ON), Outcome::Skipped(w) if w.contains("kernel version unknown")));
        assert!(matches!(apply(&sys, &Switch { enabled: false }), Outcome::Skipped(w) if w.contains("disabled")));
    }

    #[test]
    fn old_kernel_grub2_edit_and_regeneration() {
        let grub =
            "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet\"\nGRUB_DISABLE_RECOVERY=\"true\"\n";
        let (dir, sys) = sandbox(
            Some("2.6.32-754.el6.x86_64"),
            &[("/etc/default/grub", grub), ("/usr/sbin/grub2-mkconfig", ""), ("/boot/grub2/grub.cfg", "")],
        );
        sys.script("chroot", CommandOutput { status: Some(0), ..Default::default() });
        let d = match apply(&sys, &ON) {
            Outcome::Done(d) => d,
            o => panic!("{o:?}"),
        };
        assert!(d.contains("added numa=off to GRUB_CMDLINE_LINUX in /etc/default/grub"), "{d}");
        assert!(d.contains("regenerated grub.cfg with `chroot"), "{d}");
        assert_eq!(
            read(&dir, "/etc/default/grub"),
            "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"crashkernel=auto rhgb quiet numa=off\"\nGRUB_DISABLE_RECOVERY=\"true\"\n"
        );
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        let root = dir.path().display().to_string();
        assert_eq!(cmds[0].args, vec![root, "grub2-mkconfig".into(), "-o".into(), "/boot/grub2/grub.cfg".into()]);
        // idempotent: nothing written, nothing regenerated
        match apply(&sys, &ON) {
            Outcome::Done(d) => assert!(d.contains("already set"), "{d}"),
            o => panic!("{o:?}"),
        }
        assert_eq!(sys.commands().len(), 1);
    }

    #[test]
    fn missing_generator_is_a_recorded_reason() {
        let (dir, sys) = sandbox(Some("2.6.36"), &[("/etc/default/grub", "GRUB_TIMEOUT=5\n")]);
        let d = match apply(&sys, &ON) {
            Outcome::Done(d) => d,
            o => panic!("{o:?}"),
        };
        assert!(d.contains("grub.cfg not regenerated: no grub.cfg generator"), "{d}");
        assert_eq!(read(&dir, "/etc/default/grub"), "GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX=\"numa=off\"\n");
    }

    #[test]
    fn grub_legacy_kernel_lines_and_image_kernels() {
        let conf = "default=0\ntimeout=5\ntitle CentOS 6 (2.6.32-754.el6.x86_64)\n\troot (hd0,0)\n\tkernel /boot/vmlinuz-2.6.32-754.el6.x86_64 ro root=UUID=abc console=ttyS0\n\tinitrd /boot/initramfs-2.6.32-754.el6.x86_64.img\n";
        // an offline image: no /proc, the kernel from /lib/modules
        let (dir, sys) =
            sandbox(None, &[("/boot/grub/grub.conf", conf), ("/lib/modules/2.6.32-754.el6.x86_64/modules.dep", "")]);
        std::os::unix::fs::symlink("./grub.conf", dir.path().join("boot/grub/menu.lst")).unwrap();
        let d = match apply(&sys, &ON) {
            Outcome::Done(d) => d,
            o => panic!("{o:?}"),
        };
        assert!(
            d.contains("kernel 2.6.32-754.el6.x86_64: added numa=off to kernel lines in /boot/grub/grub.conf"),
            "{d}"
        );
        assert!(!d.contains("regenerat"), "{d}");
        assert_eq!(read(&dir, "/boot/grub/grub.conf"), conf.replace("console=ttyS0\n", "console=ttyS0 numa=off\n"));
        assert!(std::fs::symlink_metadata(dir.path().join("boot/grub/menu.lst")).unwrap().file_type().is_symlink());
        assert!(sys.commands().is_empty());
        let again = read(&dir, "/boot/grub/grub.conf");
        assert!(matches!(apply(&sys, &ON), Outcome::Done(d) if d.contains("already set")));
        assert_eq!(read(&dir, "/boot/grub/grub.conf"), again);
        // no boot loader configuration at all
        let (_d, sys) = sandbox(Some("2.6.18-398.el5"), &[]);
        assert!(matches!(apply(&sys, &ON), Outcome::Skipped(w) if w.contains("no boot loader configuration")));
    }
}
