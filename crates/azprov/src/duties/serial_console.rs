//! Serial console (platform.md §9.16): boot diagnostics and the serial console read COM1 = ttyS0 at 115200 8N1, so
//! the kernel needs `console=ttyS0,115200n8` as its **last** `console=` (that one becomes `/dev/console`) and
//! `earlyprintk=ttyS0`. We check the running command line and the boot loader defaults, fix the latter when
//! configured, and mirror the agent's key lines to `/dev/console` so users see them in boot diagnostics.

use std::path::Path;

use super::grub;
use super::Outcome;
use crate::config::SerialConsoleDuty;
use crate::report::Failure;
use crate::system::System;

pub const CONSOLE: &str = "console=ttyS0,115200n8";
pub const EARLYPRINTK: &str = "earlyprintk=ttyS0";
pub const CONSOLE_DEVICE: &str = "/dev/console";

fn is_ttys0_console(arg: &str) -> bool {
    arg.strip_prefix("console=").is_some_and(|v| v == "ttyS0" || v.starts_with("ttyS0,"))
}

fn is_good_console(value: &str) -> bool {
    matches!(value, "ttyS0,115200n8" | "ttyS0,115200")
}

fn is_earlyprintk_ttys0(arg: &str) -> bool {
    arg.strip_prefix("earlyprintk=").is_some_and(|v| v.starts_with("ttyS0") || v.starts_with("serial,ttyS0"))
}

/// What a kernel command line lacks for Azure's serial console (empty when it is right).
pub fn missing(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    match args.iter().rev().find_map(|a| a.strip_prefix("console=")) {
        Some(v) if is_good_console(v) => {}
        Some(v) => out.push(format!("{CONSOLE} as the last console= (the last is console={v})")),
        None => out.push(CONSOLE.to_string()),
    }
    if !args.iter().any(|a| is_earlyprintk_ttys0(a)) {
        out.push(EARLYPRINTK.to_string());
    }
    out
}

/// The fixed `(GRUB_CMDLINE_LINUX, GRUB_CMDLINE_LINUX_DEFAULT)`: ttyS0 last and earlyprintk in `LINUX`; other
/// consoles set in `LINUX_DEFAULT` (which comes after `LINUX` on the command line) move before it.
pub fn fixed(linux: &[String], default: &[String]) -> (Vec<String>, Vec<String>) {
    let moved: Vec<String> =
        default.iter().filter(|a| a.starts_with("console=") && !is_ttys0_console(a)).cloned().collect();
    let mut l: Vec<String> =
        linux.iter().filter(|a| !is_ttys0_console(a) && !a.starts_with("earlyprintk=")).cloned().collect();
    l.extend(moved);
    l.push(CONSOLE.to_string());
    l.push(EARLYPRINTK.to_string());
    let d: Vec<String> =
        default.iter().filter(|a| !a.starts_with("console=") && !is_earlyprintk_ttys0(a)).cloned().collect();
    (l, d)
}

/// `GRUB_CMDLINE_LINUX` then `GRUB_CMDLINE_LINUX_DEFAULT`, as grub puts them on a normal entry; `None` without
/// `/etc/default/grub`.
fn grub_args(sys: &dyn System) -> Option<(Vec<String>, Vec<String>)> {
    if !sys.exists(Path::new(grub::DEFAULT_GRUB)) {
        return None;
    }
    let (l, _) = grub::effective_args(sys, grub::CMDLINE_LINUX);
    let (d, _) = grub::effective_args(sys, grub::CMDLINE_LINUX_DEFAULT);
    Some((l.unwrap_or_default(), d.unwrap_or_default()))
}

/// Check (and with `fix_bootloader`, fix) the console settings. Never `Failed` for a missing setting: this is
/// about diagnostics, the VM works without them; only a failed write of a requested fix is a failure.
pub fn apply(sys: &dyn System, cfg: &SerialConsoleDuty) -> Outcome {
    if !cfg.enabled {
        return Outcome::Skipped("disabled by configuration (duties.serial_console.enabled = false)".into());
    }
    let mut notes = Vec::new();
    let mut lacking = false;
    match sys.read_to_string(Path::new("/proc/cmdline")) {
        Ok(c) => {
            let args: Vec<String> = c.split_whitespace().map(str::to_string).collect();
            let m = missing(&args);
            if m.is_empty() {
                notes.push("kernel command line OK".to_string());
            } else {
                lacking = true;
                notes.push(format!("kernel command line lacks {}", m.join(", ")));
            }
        }
        Err(_) => notes.push("kernel command line not available".into()),
    }
    let Some((linux, default)) = grub_args(sys) else {
        notes.push(format!("no {}: boot loader not checked", grub::DEFAULT_GRUB));
        return finish(notes, lacking);
    };
    let all: Vec<String> = linux.iter().chain(default.iter()).cloned().collect();
    let m = missing(&all);
    if m.is_empty() {
        notes.push(format!("{} OK", grub::DEFAULT_GRUB));
        return finish(notes, lacking);
    }
    if !cfg.fix_bootloader {
        notes.push(format!(
            "{} lacks {} (not changed: duties.serial_console.fix_bootloader = false)",
            grub::DEFAULT_GRUB,
            m.join(", ")
        ));
        return finish(notes, true);
    }
    let (new_linux, new_default) = fixed(&linux, &default);
    let mut written = Vec::new();
    for (key, new) in [(grub::CMDLINE_LINUX, new_linux), (grub::CMDLINE_LINUX_DEFAULT, new_default)] {
        if key == grub::CMDLINE_LINUX_DEFAULT
            && !default.iter().any(|a| a.starts_with("console=") || is_earlyprintk_ttys0(a))
        {
            continue;
        }
        match grub::edit_default(sys, key, |_| new) {
            Ok(Some(p)) => written.push(format!("{key} in {}", p.display())),
            Ok(None) => {}
            Err(e) => {
                return Outcome::Failed(
                    Failure::new("failure to configure the boot loader")
                        .with("path", grub::DEFAULT_GRUB)
                        .with("exception", e),
                )
            }
        }
    }
    notes.push(format!("set {CONSOLE} as the last console= and {EARLYPRINTK} in {}", written.join(", ")));
    match grub::regenerate(sys) {
        Ok(how) => notes.push(how),
        Err(why) => notes.push(format!("grub.cfg not regenerated: {why}")),
    }
    notes.push("takes effect at the next boot".into());
    finish(notes, lacking)
}

fn finish(notes: Vec<String>, lacking: bool) -> Outcome {
    let text = format!("serial console: {}", notes.join("; "));
    if lacking {
        tracing::warn!("{text}");
    }
    Outcome::Done(text)
}

/// Write `line` (each of its lines, prefixed `azprov: `, control characters dropped) to `/dev/console` — under a
/// root only to `<root>/dev/console` when that exists, never the host's. Best effort: errors are ignored (a serial
/// console that is not there or is stuck must not stall or fail provisioning).
pub fn mirror(sys: &dyn System, line: &str) {
    let path = Path::new(CONSOLE_DEVICE);
    if !sys.exists(path) {
        return;
    }
    let mut out = String::new();
    for l in line.lines() {
        out.push_str("azprov: ");
        out.extend(l.chars().filter(|c| !c.is_control() || *c == '\t'));
        out.push('\n');
    }
    if let Err(e) = sys.append_existing(path, out.as_bytes()) {
        tracing::debug!("cannot write to {CONSOLE_DEVICE}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn cfg(fix: bool) -> SerialConsoleDuty {
        SerialConsoleDuty { enabled: true, fix_bootloader: fix, mirror: true }
    }

    fn sandbox(files: &[(&str, &str)]) -> (tempfile::TempDir, RecordingSystem) {
        crate::testutil::sandbox(files)
    }

    fn done(o: Outcome) -> String {
        match o {
            Outcome::Done(d) => d,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn what_is_missing() {
        assert!(missing(&args("root=/dev/sda1 console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0")).is_empty());
        assert!(missing(&args("console=ttyS0,115200 earlyprintk=serial,ttyS0,115200")).is_empty());
        assert_eq!(missing(&args("ro quiet")), vec![CONSOLE.to_string(), EARLYPRINTK.to_string()]);
        assert_eq!(
            missing(&args("console=ttyS0,115200n8 console=tty1 earlyprintk=ttyS0")),
            vec!["console=ttyS0,115200n8 as the last console= (the last is console=tty1)".to_string()]
        );
        assert_eq!(missing(&args("console=tty1 console=ttyS0 earlyprintk=ttyS0")).len(), 1);
        assert_eq!(missing(&args("console=ttyS0,115200n8")), vec![EARLYPRINTK.to_string()]);
    }

    #[test]
    fn fixing_moves_other_consoles_first() {
        let (l, d) = fixed(
            &args("rootdelay=300 console=ttyS0 earlyprintk=ttyS0,9600"),
            &args("quiet console=tty1 console=ttyS0"),
        );
        assert_eq!(l, args("rootdelay=300 console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0"));
        assert_eq!(d, args("quiet"));
        let all: Vec<String> = l.iter().chain(d.iter()).cloned().collect();
        assert!(missing(&all).is_empty());
        let (l2, d2) = fixed(&l, &d);
        assert_eq!((l2, d2), (l, d), "idempotent");
    }

    #[test]
    fn reports_without_changing_by_default() {
        let grub = "GRUB_CMDLINE_LINUX=\"rootdelay=300\"\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\n";
        let (dir, sys) = sandbox(&[
            ("/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=UUID=x ro console=tty1\n"),
            ("/etc/default/grub", grub),
        ]);
        let (o, log) = crate::testutil::capture_log(|| apply(&sys, &cfg(false)));
        let d = done(o);
        assert!(d.contains("kernel command line lacks console=ttyS0,115200n8 as the last console= (the last is console=tty1), earlyprintk=ttyS0"), "{d}");
        assert!(d.contains("/etc/default/grub lacks console=ttyS0,115200n8, earlyprintk=ttyS0 (not changed"), "{d}");
        assert!(log.contains("WARN"), "{log}");
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/default/grub")).unwrap(), grub);
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn all_good() {
        let (_d, sys) = sandbox(&[
            ("/proc/cmdline", "root=/dev/sda1 console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300\n"),
            (
                "/etc/default/grub",
                "GRUB_CMDLINE_LINUX=\"console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0 rootdelay=300\"\n",
            ),
        ]);
        assert_eq!(done(apply(&sys, &cfg(true))), "serial console: kernel command line OK; /etc/default/grub OK");
        assert!(sys.commands().is_empty());
        let (_d, sys) = sandbox(&[]);
        assert_eq!(
            done(apply(&sys, &cfg(true))),
            "serial console: kernel command line not available; no /etc/default/grub: boot loader not checked"
        );
        assert!(matches!(apply(&sys, &SerialConsoleDuty { enabled: false, ..cfg(true) }), Outcome::Skipped(_)));
    }

    #[test]
    fn fixes_grub_defaults_and_drop_ins_then_regenerates() {
        // Ubuntu cloud images set the consoles in a grub.d drop-in, sourced after /etc/default/grub
        let main = "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"\"\n";
        let drop = "# Set the default commandline\nGRUB_CMDLINE_LINUX_DEFAULT=\"console=tty1 console=ttyS0\"\n";
        let (dir, sys) = sandbox(&[
            ("/etc/default/grub", main),
            ("/etc/default/grub.d/50-cloudimg-settings.cfg", drop),
            ("/usr/sbin/update-grub", ""),
        ]);
        sys.script("chroot", CommandOutput { status: Some(0), ..Default::default() });
        let d = done(apply(&sys, &cfg(true)));
        assert!(d.contains("set console=ttyS0,115200n8 as the last console= and earlyprintk=ttyS0 in GRUB_CMDLINE_LINUX in /etc/default/grub, GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub.d/50-cloudimg-settings.cfg"), "{d}");
        assert!(d.contains("regenerated grub.cfg with `chroot") && d.contains("next boot"), "{d}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/default/grub")).unwrap(),
            "GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT=\"quiet splash\"\nGRUB_CMDLINE_LINUX=\"console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0\"\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/default/grub.d/50-cloudimg-settings.cfg")).unwrap(),
            "# Set the default commandline\nGRUB_CMDLINE_LINUX_DEFAULT=\"\"\n"
        );
        let root = dir.path().display().to_string();
        assert_eq!(sys.commands()[0].args, vec![root, "update-grub".to_string()]);
        // idempotent
        assert_eq!(
            done(apply(&sys, &cfg(true))),
            "serial console: kernel command line not available; /etc/default/grub OK"
        );
        assert_eq!(sys.commands().len(), 1);
    }

    #[test]
    fn fix_without_generator_is_recorded() {
        let (dir, sys) = sandbox(&[("/etc/default/grub", "GRUB_TIMEOUT=1\n")]);
        let d = done(apply(&sys, &cfg(true)));
        assert!(d.contains("grub.cfg not regenerated: no grub.cfg generator"), "{d}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/default/grub")).unwrap(),
            "GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX=\"console=ttyS0,115200n8 earlyprintk=ttyS0\"\n"
        );
    }

    #[test]
    fn mirror_only_to_an_existing_console_under_the_root() {
        let (dir, sys) = sandbox(&[]);
        mirror(&sys, "provisioned VM x");
        assert!(!dir.path().join("dev/console").exists());
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/console"), "").unwrap();
        mirror(&sys, "provisioned VM 91267c52: Ready accepted");
        mirror(&sys, "256 SHA256:abc root@vm (ED25519)\n3072 SHA256:def root@vm (RSA)\x1b[2J");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("dev/console")).unwrap(),
            "azprov: provisioned VM 91267c52: Ready accepted\nazprov: 256 SHA256:abc root@vm (ED25519)\nazprov: 3072 SHA256:def root@vm (RSA)[2J\n"
        );
    }
}
