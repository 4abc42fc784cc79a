//! sudoers drop-in for the admin user (0440, validated with `visudo` when present).

use std::path::Path;
use std::time::Duration;

use super::Outcome;
use crate::config::SudoDuty;
use crate::report::Failure;
use crate::system::{Command, System};

/// `NOPASSWD` when the user has no password to type.
pub fn rule(user: &str, has_password: bool) -> String {
    if has_password {
        format!("{user} ALL=(ALL) ALL")
    } else {
        format!("{user} ALL=(ALL) NOPASSWD: ALL")
    }
}

/// Our file's new text: lines for other users kept, this user's line replaced.
pub fn merged(existing: &str, user: &str, line: &str) -> String {
    let mut out: Vec<&str> = existing.lines().filter(|l| l.split_whitespace().next() != Some(user)).collect();
    out.push(line);
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn fail(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(Failure::new("failure to configure sudo").with("exception", e))
}

pub fn configure(sys: &dyn System, cfg: &SudoDuty, user: &str, has_password: bool) -> Outcome {
    let sudoers = Path::new("/etc/sudoers");
    let Ok(main) = sys.read_to_string(sudoers) else {
        return Outcome::Skipped("/etc/sudoers not found (sudo not installed)".into());
    };
    let dir = cfg.file.parent().unwrap_or(Path::new("/etc/sudoers.d"));
    let included = main.lines().any(|l| {
        let mut w = l.split_whitespace();
        matches!(w.next(), Some("#includedir") | Some("@includedir")) && w.next() == Some(&*dir.display().to_string())
    });
    if !included {
        return Outcome::Skipped(format!("/etc/sudoers does not include {}", dir.display()));
    }
    let existing = sys.read_to_string(&cfg.file).unwrap_or_default();
    let text = merged(&existing, user, &rule(user, has_password));
    if text == existing {
        return Outcome::Done(format!("{} unchanged", cfg.file.display()));
    }
    if let Err(e) = sys.create_dir_all(dir, 0o750, None) {
        return fail(e);
    }
    let mut note = String::new();
    if sys.has_program("visudo") {
        // sudo ignores names containing '.', so the candidate is inert while it is checked.
        let tmp = dir.join(".azprov-check");
        if let Err(e) = sys.write_file(&tmp, text.as_bytes(), 0o440, None) {
            return fail(e);
        }
        let tmp_host = sys.host_path(&tmp).display().to_string();
        let mut cmd = Command::new("visudo", &["-c", "-q", "-f", &tmp_host]);
        cmd.timeout = Duration::from_secs(30);
        let res = sys.run(&cmd);
        let _ = sys.remove_file(&tmp);
        match res {
            Ok(o) if o.success() => {}
            Ok(o) => return fail(format!("visudo rejected the rule: {}", o.stderr_text())),
            Err(e) => return fail(e),
        }
    } else {
        note = " (visudo not installed: not validated)".into();
    }
    if let Err(e) = sys.write_file(&cfg.file, text.as_bytes(), 0o440, Some((0, 0))) {
        return fail(e);
    }
    Outcome::Done(format!(
        "{} for {user} in {}{note}",
        if has_password { "sudo" } else { "passwordless sudo" },
        cfg.file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rules_and_merge() {
        assert_eq!(rule("a", false), "a ALL=(ALL) NOPASSWD: ALL");
        assert_eq!(rule("a", true), "a ALL=(ALL) ALL");
        assert_eq!(merged("b ALL=(ALL) ALL\na ALL=(ALL) ALL\n", "a", "a X"), "b ALL=(ALL) ALL\na X\n");
        assert_eq!(merged("", "a", "a X"), "a X\n");
        // a user whose name is a prefix of another's keeps the other's line
        assert_eq!(merged("ab ALL=(ALL) ALL\n", "a", "a X"), "ab ALL=(ALL) ALL\na X\n");
    }

    #[test]
    fn tool_absence_skips_with_a_reason() {
        // sudo not installed: nothing created
        let dir = tempfile::tempdir().unwrap();
        let sys = crate::system::record::RecordingSystem::new(dir.path());
        let out = configure(&sys, &SudoDuty::default(), "azureuser", false);
        assert!(matches!(&out, Outcome::Skipped(r) if r.contains("sudo not installed")), "{out:?}");
        assert!(!dir.path().join("etc/sudoers").exists());
        assert!(!dir.path().join("etc/sudoers.d").exists());
        // sudo without visudo: written, with a note
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/sudoers"), "@includedir /etc/sudoers.d\n").unwrap();
        sys.uninstall("visudo");
        let out = configure(&sys, &SudoDuty::default(), "azureuser", false);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("visudo not installed")), "{out:?}");
        let text = std::fs::read_to_string(dir.path().join("etc/sudoers.d/90-azprov")).unwrap();
        assert_eq!(text, "azureuser ALL=(ALL) NOPASSWD: ALL\n");
    }
}
