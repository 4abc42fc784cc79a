//! sshd password-login settings. sshd keeps the *first* value it reads for a keyword, so our drop-in sorts first
//! (`01-azprov.conf`); images whose `sshd_config` has no `Include` are edited in place before the first `Match`.

use std::path::Path;
use std::time::Duration;

use super::Outcome;
use crate::config::SshdDuty;
use crate::report::Failure;
use crate::system::{Command, System};

const MAIN: &str = "/etc/ssh/sshd_config";

/// The keywords we own and their value.
pub fn settings(password_auth: bool) -> Vec<(&'static str, &'static str)> {
    let v = if password_auth { "yes" } else { "no" };
    vec![("PasswordAuthentication", v), ("KbdInteractiveAuthentication", v)]
}

/// Whether an uncommented `Include` line (before any `Match`) pulls in `dir`/*.conf.
pub fn includes_dir(main: &str, dir: &str) -> bool {
    // relative Include paths are relative to /etc/ssh
    let covers = |p: &str| p.starts_with(dir) || (p.starts_with("sshd_config.d") && dir.ends_with("/sshd_config.d"));
    for line in main.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next().map(|w| w.to_ascii_lowercase()) else { continue };
        if first == "match" {
            return false;
        }
        if first == "include" && words.any(covers) {
            return true;
        }
    }
    false
}

/// Set each keyword in a main config without `Include`: replace the first uncommented directive located before the
/// first `Match`, else insert before the first `Match` (or append). Commented lines are never rewritten.
pub fn edit_main(main: &str, settings: &[(&str, &str)]) -> String {
    let mut lines: Vec<String> = main.lines().map(|l| l.to_string()).collect();
    for (key, value) in settings {
        let match_idx = lines
            .iter()
            .position(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case("match")))
            .unwrap_or(lines.len());
        let existing = lines[..match_idx]
            .iter()
            .position(|l| l.split_whitespace().next().is_some_and(|w| w.eq_ignore_ascii_case(key)));
        let new_line = format!("{key} {value}");
        match existing {
            Some(i) => lines[i] = new_line,
            None => lines.insert(match_idx, new_line),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn write_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new("failure to configure sshd").with("path", path.display()).with("exception", e)
}

/// Apply the password-login setting. Reloads a running sshd (live systems only) when something changed.
pub fn configure(sys: &dyn System, cfg: &SshdDuty, password_auth: bool) -> Outcome {
    let main_path = Path::new(MAIN);
    let Ok(main) = sys.read_to_string(main_path) else {
        return Outcome::Skipped(format!("{MAIN} not found (sshd not installed)"));
    };
    let wanted = settings(password_auth);
    let drop_dir = cfg.drop_in.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let (path, old, new) = if includes_dir(&main, &drop_dir) {
        let mut text = String::from("# Written by azprov: password login as provisioned by the platform.\n");
        for (k, v) in &wanted {
            text.push_str(&format!("{k} {v}\n"));
        }
        let old = sys.read_to_string(&cfg.drop_in).ok();
        if let Err(e) = sys.create_dir_all(Path::new(&drop_dir), 0o755, None) {
            return Outcome::Failed(write_failure(&cfg.drop_in, e));
        }
        (cfg.drop_in.clone(), old, text)
    } else {
        (main_path.to_path_buf(), Some(main.clone()), edit_main(&main, &wanted))
    };
    let summary = format!("PasswordAuthentication {} in {}", wanted[0].1, path.display());
    if old.as_deref() == Some(new.as_str()) {
        return Outcome::Done(format!("{summary} (unchanged)"));
    }
    let mode = sys.stat(&path).map(|s| s.mode).unwrap_or(0o644);
    if let Err(e) = sys.write_file(&path, new.as_bytes(), mode, None) {
        return Outcome::Failed(write_failure(&path, e));
    }
    Outcome::Done(format!("{summary}{}", reload(sys)))
}

/// Reload sshd if this is the live system and sshd is already running (normally we run before it starts).
fn reload(sys: &dyn System) -> String {
    if !sys.is_live() {
        return String::new();
    }
    let running = ["/run/sshd.pid", "/var/run/sshd.pid"].iter().any(|p| sys.exists(Path::new(p)));
    if !running {
        return String::new();
    }
    if !sys.has_program("systemctl") {
        return "; sshd running but systemctl missing: not reloaded".into();
    }
    let mut cmd = Command::new("systemctl", &["try-reload-or-restart", "ssh.service", "sshd.service"]);
    cmd.timeout = Duration::from_secs(30);
    match sys.run(&cmd) {
        Ok(o) if o.success() => "; sshd reloaded".into(),
        Ok(o) => format!("; sshd reload failed: {}", o.stderr_text()),
        Err(e) => format!("; sshd reload failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_detection() {
        assert!(includes_dir("Include /etc/ssh/sshd_config.d/*.conf\nPort 22\n", "/etc/ssh/sshd_config.d"));
        assert!(!includes_dir("#Include /etc/ssh/sshd_config.d/*.conf\n", "/etc/ssh/sshd_config.d"));
        assert!(!includes_dir("Match User x\nInclude /etc/ssh/sshd_config.d/*.conf\n", "/etc/ssh/sshd_config.d"));
    }

    #[test]
    fn edit_in_place_before_match() {
        let main = "#PasswordAuthentication yes\nPasswordAuthentication yes\nUsePAM yes\nMatch User anoncvs\n  PasswordAuthentication yes\n";
        let out = edit_main(main, &settings(false));
        assert_eq!(
            out,
            "#PasswordAuthentication yes\nPasswordAuthentication no\nUsePAM yes\nKbdInteractiveAuthentication no\nMatch User anoncvs\n  PasswordAuthentication yes\n"
        );
        // idempotent
        assert_eq!(edit_main(&out, &settings(false)), out);
    }

    #[test]
    fn legacy_fixture_gets_settings_before_match() {
        let Some(bytes) = crate::testutil::fixture("sshd/walinuxagent-sshd_config-debian-legacy") else { return };
        let text = String::from_utf8_lossy(&bytes);
        assert!(!includes_dir(&text, "/etc/ssh/sshd_config.d"));
        let out = edit_main(&text, &settings(false));
        let match_at = out.lines().position(|l| l.trim_start().starts_with("Match")).unwrap_or(usize::MAX);
        let pa = out.lines().position(|l| l == "PasswordAuthentication no").unwrap();
        assert!(pa < match_at);
        assert_eq!(out.lines().filter(|l| l.starts_with("PasswordAuthentication")).count(), 1);
    }
}
