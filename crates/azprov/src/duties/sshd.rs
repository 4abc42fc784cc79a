//! sshd password-login settings. sshd keeps the *first* value it reads for a keyword, so our drop-in sorts first
//! (`01-azprov.conf`); images whose `sshd_config` has no `Include` are edited in place before the first `Match`.
//! After writing, the effective value is checked; a file read before ours that says otherwise fails the duty with
//! `failure to configure sshd` naming that file (we never rename ourselves ahead of it or edit other files).
//!
//! [`Effective`] is also the reader other duties use: `AuthorizedKeysFile` (ssh_keys) and `UsePAM` (password).

use std::path::Path;
use std::time::Duration;

use super::Outcome;
use crate::config::SshdDuty;
use crate::report::Failure;
use crate::system::{Command, System};

const MAIN: &str = "/etc/ssh/sshd_config";
/// How deep `Include` may nest (sshd's own limit is 16).
const MAX_INCLUDE_DEPTH: usize = 16;

/// One effective setting: the first value sshd reads for a keyword, and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// Lower-case canonical keyword (`challengeresponseauthentication` is read as `kbdinteractiveauthentication`).
    pub keyword: String,
    /// The arguments as written (quotes kept).
    pub value: String,
    /// Where it was read (`sshd -T` for the daemon's own answer).
    pub source: String,
}

impl Setting {
    /// The first argument, lower-cased (`yes`, `no`, …).
    pub fn first(&self) -> String {
        self.value.split_whitespace().next().unwrap_or("").trim_matches('"').to_ascii_lowercase()
    }
}

/// The effective global sshd configuration (first value wins; `Match` blocks are not applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub settings: Vec<Setting>,
    /// `sshd -T` or `sshd_config files` — how it was obtained.
    pub how: String,
}

fn canonical(keyword: &str) -> String {
    let k = keyword.to_ascii_lowercase();
    if k == "challengeresponseauthentication" {
        "kbdinteractiveauthentication".into()
    } else {
        k
    }
}

/// `Keyword value…` or `Keyword=value…`; comments and blank lines give `None`.
fn split_directive(line: &str) -> Option<(String, String)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let keyword = &line[..end];
    let rest = line[end..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
    // a token starting with `#` starts a comment
    let mut value = Vec::new();
    for tok in rest.split_whitespace() {
        if tok.starts_with('#') {
            break;
        }
        value.push(tok);
    }
    Some((keyword.to_string(), value.join(" ")))
}

/// `*` and `?` in one path component.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// Files an `Include` argument names, in the order sshd reads them (glob results sorted).
fn include_targets(sys: &dyn System, arg: &str) -> Vec<String> {
    let arg = arg.trim_matches('"');
    let full = if arg.starts_with('/') { arg.to_string() } else { format!("/etc/ssh/{arg}") };
    let path = Path::new(&full);
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![full];
    }
    let Some(dir) = path.parent() else { return Vec::new() };
    let mut names: Vec<String> = sys
        .read_dir(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.starts_with('.') || name.starts_with('.'))
        .filter(|n| glob_match(name.as_bytes(), n.as_bytes()))
        .collect();
    names.sort();
    names.into_iter().map(|n| dir.join(n).display().to_string()).collect()
}

impl Effective {
    pub fn get(&self, keyword: &str) -> Option<&Setting> {
        let k = canonical(keyword);
        self.settings.iter().find(|s| s.keyword == k)
    }

    fn add(&mut self, keyword: &str, value: String, source: &str) {
        let keyword = canonical(keyword);
        if self.settings.iter().all(|s| s.keyword != keyword) {
            self.settings.push(Setting { keyword, value, source: source.to_string() });
        }
    }

    /// Read `/etc/ssh/sshd_config` and what it `Include`s the way sshd does: first value wins, includes expanded
    /// where they appear. Lines inside `Match` blocks are skipped (this is the global view). `None` without the
    /// main file.
    pub fn from_files(sys: &dyn System) -> Option<Effective> {
        let main = sys.read_to_string(Path::new(MAIN)).ok()?;
        let mut eff = Effective { settings: Vec::new(), how: "sshd_config files".into() };
        eff.read_text(sys, &main, MAIN, 0);
        Some(eff)
    }

    fn read_text(&mut self, sys: &dyn System, text: &str, source: &str, depth: usize) {
        let mut in_match = false;
        for line in text.lines() {
            let Some((keyword, value)) = split_directive(line) else { continue };
            let k = keyword.to_ascii_lowercase();
            if k == "match" {
                in_match = !value.eq_ignore_ascii_case("all");
                continue;
            }
            if in_match {
                continue;
            }
            if k == "include" {
                if depth >= MAX_INCLUDE_DEPTH {
                    continue;
                }
                for arg in value.split_whitespace() {
                    for file in include_targets(sys, arg) {
                        if let Ok(t) = sys.read_to_string(Path::new(&file)) {
                            self.read_text(sys, &t, &file, depth + 1);
                        }
                    }
                }
                continue;
            }
            self.add(&keyword, value, source);
        }
    }

    /// Parse `sshd -T` output (`keyword value…` per line, already resolved by the daemon).
    pub fn from_sshd_t(stdout: &str) -> Effective {
        let mut eff = Effective { settings: Vec::new(), how: "sshd -T".into() };
        for line in stdout.lines() {
            if let Some((k, v)) = split_directive(line) {
                eff.add(&k, v, "sshd -T");
            }
        }
        eff
    }
}

/// Ask the installed sshd for its effective configuration (`sshd -T [-C user=…,host=…,addr=127.0.0.1]`). Only on
/// the live system: under `--root` the image's `Include` paths would name the host's files. `Err` says why not.
pub fn sshd_t(sys: &dyn System, user: Option<&str>) -> Result<Effective, String> {
    if !sys.is_live() {
        return Err("not the live system: sshd -T not run".into());
    }
    if !sys.has_program("sshd") {
        return Err("sshd not installed: sshd -T not run".into());
    }
    let mut args = vec!["-T".to_string()];
    if let Some(u) = user {
        let host = sys
            .read_to_string(Path::new("/etc/hostname"))
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        args.push("-C".into());
        args.push(format!("user={u},host={host},addr=127.0.0.1"));
    }
    // Before sshd's first start (our place in the boot) a generalized image has no host key yet (and maybe no
    // privilege separation directory), and `sshd -T` refuses to run without them: give it a throwaway key (and
    // the directory sshd's unit would create anyway).
    let scratch = Path::new(SCRATCH_DIR);
    let throwaway = scratch.join("hostkey");
    let has_key = HOST_KEY_FILES.iter().any(|k| sys.exists(Path::new(k)));
    let mut temp_key = false;
    if !has_key && sys.has_program("ssh-keygen") && sys.create_dir_all(scratch, 0o700, None).is_ok() {
        let _ = sys.remove_file(&throwaway);
        let _ = sys.remove_file(&scratch.join("hostkey.pub"));
        let path = throwaway.display().to_string();
        let mut gen =
            Command::new("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "azprov sshd -T", "-f", &path]);
        gen.timeout = Duration::from_secs(30);
        if sys.run(&gen).is_ok_and(|o| o.success()) {
            args.push("-h".into());
            args.push(path);
            temp_key = true;
        }
    }
    let cmd = Command { program: "sshd".into(), args, stdin: None, timeout: Duration::from_secs(30) };
    let mut out = sys.run(&cmd);
    // the directory sshd's unit creates at its start (Debian: RuntimeDirectory=sshd): named in the error
    let privsep = out.as_ref().ok().filter(|o| !o.success()).and_then(|o| {
        let err = String::from_utf8_lossy(&o.stderr);
        let dir = err.split("Missing privilege separation directory:").nth(1)?.split_whitespace().next()?.to_string();
        Some(dir).filter(|d| d.starts_with("/run/") || d.starts_with("/var/run/"))
    });
    if let Some(dir) = privsep {
        if sys.create_dir_all(Path::new(&dir), 0o755, None).is_ok() {
            out = sys.run(&cmd);
        }
    }
    let result = match out {
        Ok(o) if o.success() => Ok(Effective::from_sshd_t(&String::from_utf8_lossy(&o.stdout))),
        Ok(o) => Err(format!("sshd -T failed: {}", super::excerpt(&o.stderr))),
        Err(e) => Err(format!("sshd -T failed: {e}")),
    };
    if temp_key {
        let _ = sys.remove_file(&throwaway);
        let _ = sys.remove_file(&scratch.join("hostkey.pub"));
    }
    result
}

/// The host keys `sshd -T` could load; without any, it is given a throwaway key from [`SCRATCH_DIR`].
const HOST_KEY_FILES: [&str; 3] =
    ["/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_rsa_key"];
/// Per-boot scratch space for that key (root-only).
const SCRATCH_DIR: &str = "/run/azprov/sshd-t";

/// The effective configuration: `sshd -T` where possible, else our own reading of the files. The string is a
/// note on why `sshd -T` was not used (empty when it was). `None` when sshd is not configured at all.
pub fn effective(sys: &dyn System, user: Option<&str>) -> (Option<Effective>, String) {
    match sshd_t(sys, user) {
        Ok(e) => (Some(e), String::new()),
        Err(why) => (Effective::from_files(sys), why),
    }
}

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

/// Apply the password-login setting (global view, no user for `sshd -T -C`). See [`configure_for`].
pub fn configure(sys: &dyn System, cfg: &SshdDuty, password_auth: bool) -> Outcome {
    configure_for(sys, cfg, password_auth, None)
}

/// Apply the password-login setting, then check that it is the effective one: always by reading the files the
/// way sshd does, and with `sshd -T -C user=<user>,…` on the live system when sshd is installed (skipped with a
/// note otherwise). A file sshd reads before ours that sets a keyword we own to another value is a failure
/// (`failure to configure sshd`, naming the file): we do not rename ourselves ahead of it or edit other
/// software's files. Reloads a running sshd (live systems only) when something changed.
pub fn configure_for(sys: &dyn System, cfg: &SshdDuty, password_auth: bool, user: Option<&str>) -> Outcome {
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
    let changed = old.as_deref() != Some(new.as_str());
    if changed {
        let mode = sys.stat(&path).map(|s| s.mode).unwrap_or(0o644);
        if let Err(e) = sys.write_file(&path, new.as_bytes(), mode, None) {
            return Outcome::Failed(write_failure(&path, e));
        }
    }
    let note = match verify(sys, &wanted, user) {
        Ok(n) => n,
        Err(f) => return Outcome::Failed(f),
    };
    if !changed {
        return Outcome::Done(format!("{summary} (unchanged){note}"));
    }
    Outcome::Done(format!("{summary}{note}{}", reload_if_running(sys)))
}

fn check(eff: &Effective, wanted: &[(&str, &str)], required: bool) -> Result<(), Failure> {
    for (k, v) in wanted {
        let got = eff.get(k);
        let ok = match got {
            Some(s) => s.first() == *v,
            None => !required,
        };
        if !ok {
            let (value, source) = got.map(|s| (s.value.clone(), s.source.clone())).unwrap_or_default();
            return Err(Failure::new("failure to configure sshd")
                .with("keyword", k)
                .with("wanted", v)
                .with("effective", if value.is_empty() { "unset".into() } else { value })
                .with("source", if source.is_empty() { "none".into() } else { source })
                .with("checked_with", &eff.how)
                .with("detail", "sshd keeps the first value it reads: another setting is read before ours"));
        }
    }
    Ok(())
}

/// Check the effective values; the `Ok` string is a note for the outcome.
fn verify(sys: &dyn System, wanted: &[(&str, &str)], user: Option<&str>) -> Result<String, Failure> {
    if let Some(files) = Effective::from_files(sys) {
        check(&files, wanted, true)?;
    }
    match sshd_t(sys, user) {
        // `sshd -T` omits keywords an old sshd does not know (KbdInteractiveAuthentication before 8.7)
        Ok(eff) => check(&eff, wanted, false).map(|_| "; effective value checked with sshd -T".into()),
        Err(why) => Ok(format!("; {why} (checked by reading the configuration files)")),
    }
}

/// Reload sshd if this is the live system and sshd is already running (normally we run before it starts).
pub fn reload_if_running(sys: &dyn System) -> String {
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

/// After new host keys on a pre-provisioned VM: an sshd running with the image's keys is reloaded, and an sshd that
/// could not start in the pool (a generalized image has no host keys until the customer's are made, so systemd gave
/// up on it) is started again. The note is for the log.
pub fn serve_new_host_keys(sys: &dyn System) -> String {
    let note = reload_if_running(sys);
    if !note.is_empty() || !sys.is_live() || !sys.has_program("systemctl") {
        return note;
    }
    // Debian's ssh.service is also reachable as sshd.service (an alias): start the first failed one only
    for unit in ["ssh.service", "sshd.service"] {
        let failed = sys.run(&Command::new("systemctl", &["is-failed", "--quiet", unit])).is_ok_and(|o| o.success());
        if !failed {
            continue;
        }
        // clears the start limit systemd hit while sshd had no keys
        let _ = sys.run(&Command::new("systemctl", &["reset-failed", unit]));
        let mut cmd = Command::new("systemctl", &["restart", "--no-block", unit]);
        cmd.timeout = Duration::from_secs(30);
        return match sys.run(&cmd) {
            Ok(o) if o.success() => format!("; {unit} had failed (no host keys before): started again"),
            Ok(o) => format!("; {unit} had failed, start failed: {}", o.stderr_text()),
            Err(e) => format!("; {unit} had failed, start failed: {e}"),
        };
    }
    String::new()
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

    use crate::system::record::RecordingSystem;

    fn sandbox(files: &[(&str, &str)]) -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let p = dir.path().join(rel.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("etc/ssh/sshd_config.d")).unwrap();
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    const MAIN_WITH_INCLUDE: &str =
        "Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n";

    #[test]
    fn sshd_t_before_the_first_start_gets_a_throwaway_key_and_its_directory() {
        let (d, sys) = sandbox(&[("/etc/ssh/sshd_config", MAIN_WITH_INCLUDE)]);
        sys.pretend_live();
        let ok = crate::system::CommandOutput { status: Some(0), ..Default::default() };
        sys.script("ssh-keygen", ok.clone());
        sys.script("sshd", crate::system::CommandOutput { stdout: b"passwordauthentication no\n".to_vec(), ..ok });
        let eff = sshd_t(&sys, None).unwrap();
        assert_eq!(eff.get("passwordauthentication").unwrap().value, "no");
        let cmds = sys.commands();
        assert_eq!(cmds[0].program, "ssh-keygen");
        assert!(cmds[0].args.windows(2).any(|w| w == ["-f", "/run/azprov/sshd-t/hostkey"]), "{:?}", cmds[0].args);
        assert!(cmds[1].args.windows(2).any(|w| w == ["-h", "/run/azprov/sshd-t/hostkey"]), "{:?}", cmds[1].args);
        // with a host key of its own, sshd needs no help
        std::fs::write(d.path().join("etc/ssh/ssh_host_ed25519_key"), "k").unwrap();
        let sys2 = RecordingSystem::new(d.path());
        sys2.pretend_live();
        sys2.script("sshd", crate::system::CommandOutput { status: Some(0), ..Default::default() });
        sshd_t(&sys2, None).unwrap();
        assert!(sys2.commands().iter().all(|c| c.program == "sshd" && !c.args.contains(&"-h".to_string())));
        // the privilege separation directory sshd names is created, and sshd asked again
        let sys3 = RecordingSystem::new(d.path());
        sys3.pretend_live();
        let missing = b"Missing privilege separation directory: /run/sshd\n".to_vec();
        sys3.script("sshd", crate::system::CommandOutput { status: Some(255), stderr: missing, ..Default::default() });
        assert!(sshd_t(&sys3, None).is_err());
        assert!(d.path().join("run/sshd").is_dir());
        assert_eq!(sys3.commands().len(), 2);
    }

    #[test]
    fn effective_reading_follows_sshd_rules() {
        let (_d, sys) = sandbox(&[
            (
                "/etc/ssh/sshd_config",
                "# PasswordAuthentication yes\nPort=2222\nInclude sshd_config.d/*.conf /etc/ssh/extra.conf\n\
                 PasswordAuthentication yes\nMatch User bob\n  UsePAM no\n  PermitRootLogin yes\nMatch all\nX11Forwarding no # trailing\n",
            ),
            ("/etc/ssh/sshd_config.d/50-cloud-init.conf", "passwordauthentication no\nUsePAM yes\n"),
            ("/etc/ssh/sshd_config.d/10-first.conf", "ChallengeResponseAuthentication yes\nMatch Address 10.0.0.0/8\n  UsePAM no\n"),
            ("/etc/ssh/sshd_config.d/ignored.txt", "UsePAM no\n"),
            ("/etc/ssh/extra.conf", "PermitRootLogin no\n"),
        ]);
        let eff = Effective::from_files(&sys).unwrap();
        let get = |k: &str| eff.get(k).map(|s| (s.value.clone(), s.source.clone()));
        assert_eq!(get("port"), Some(("2222".into(), MAIN.into())));
        assert_eq!(
            get("PasswordAuthentication"),
            Some(("no".into(), "/etc/ssh/sshd_config.d/50-cloud-init.conf".into()))
        );
        assert_eq!(eff.get("KbdInteractiveAuthentication").unwrap().source, "/etc/ssh/sshd_config.d/10-first.conf");
        assert_eq!(eff.get("usepam").unwrap().first(), "yes", "Match blocks are not applied");
        assert_eq!(eff.get("PermitRootLogin").unwrap().first(), "no");
        assert_eq!(eff.get("X11Forwarding").unwrap().value, "no", "after `Match all`, comment stripped");
        assert!(Effective::from_files(&sandbox(&[]).1).is_none());
    }

    #[test]
    fn sshd_t_output_is_read() {
        let eff = Effective::from_sshd_t(
            "port 22\npasswordauthentication no\nchallengeresponseauthentication no\nauthorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2\n",
        );
        assert_eq!(eff.get("KbdInteractiveAuthentication").unwrap().first(), "no");
        assert_eq!(eff.get("AuthorizedKeysFile").unwrap().value, ".ssh/authorized_keys .ssh/authorized_keys2");
        assert_eq!(eff.how, "sshd -T");
    }

    #[test]
    fn drop_in_wins_over_later_files() {
        let (dir, sys) = sandbox(&[
            ("/etc/ssh/sshd_config", MAIN_WITH_INCLUDE),
            ("/etc/ssh/sshd_config.d/50-cloud-init.conf", "PasswordAuthentication yes\n"),
            ("/etc/ssh/sshd_config.d/60-cloudimg-settings.conf", "PasswordAuthentication no\n"),
        ]);
        let out = configure_for(&sys, &SshdDuty::default(), true, Some("azureuser"));
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        // the tool-absence rule: no sshd -T here, said so
        assert!(d.contains("sshd -T not run"), "{d}");
        let text = std::fs::read_to_string(dir.path().join("etc/ssh/sshd_config.d/01-azprov.conf")).unwrap();
        assert!(text.contains("PasswordAuthentication yes\nKbdInteractiveAuthentication yes\n"));
        let eff = Effective::from_files(&sys).unwrap();
        assert_eq!(eff.get("PasswordAuthentication").unwrap().source, "/etc/ssh/sshd_config.d/01-azprov.conf");
        assert_eq!(eff.get("KbdInteractiveAuthentication").unwrap().first(), "yes");
        assert!(sys.commands().is_empty(), "nothing run on a sandbox (no reload, no sshd -T)");
        // again: unchanged
        let out = configure_for(&sys, &SshdDuty::default(), true, None);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("(unchanged)")), "{out:?}");
    }

    #[test]
    fn an_earlier_setting_is_a_failure_naming_its_file() {
        let (_d, sys) = sandbox(&[
            ("/etc/ssh/sshd_config", MAIN_WITH_INCLUDE),
            ("/etc/ssh/sshd_config.d/00-vendor.conf", "PasswordAuthentication yes\n"),
        ]);
        let out = configure(&sys, &SshdDuty::default(), false);
        let Outcome::Failed(f) = &out else { panic!("{out:?}") };
        assert_eq!(f.reason, "failure to configure sshd");
        let text = f.to_string();
        assert!(text.contains("00-vendor.conf") && text.contains("PasswordAuthentication"), "{text}");
        // the same value earlier is fine
        let (_d, sys) = sandbox(&[
            ("/etc/ssh/sshd_config", MAIN_WITH_INCLUDE),
            ("/etc/ssh/sshd_config.d/00-vendor.conf", "PasswordAuthentication no\n"),
        ]);
        assert!(matches!(configure(&sys, &SshdDuty::default(), false), Outcome::Done(_)));
        // a directive in the main file before its Include
        let (_d, sys) = sandbox(&[(
            "/etc/ssh/sshd_config",
            "KbdInteractiveAuthentication yes\nInclude /etc/ssh/sshd_config.d/*.conf\n",
        )]);
        let out = configure(&sys, &SshdDuty::default(), false);
        assert!(
            matches!(&out, Outcome::Failed(f) if f.to_string().contains("KbdInteractiveAuthentication")),
            "{out:?}"
        );
    }

    #[test]
    fn main_file_without_include_is_edited_and_checked() {
        let (dir, sys) = sandbox(&[(
            "/etc/ssh/sshd_config",
            "#PasswordAuthentication yes\nPasswordAuthentication yes\nMatch User x\n  PasswordAuthentication yes\n",
        )]);
        let out = configure(&sys, &SshdDuty::default(), false);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("in /etc/ssh/sshd_config")), "{out:?}");
        assert!(!dir.path().join("etc/ssh/sshd_config.d/01-azprov.conf").exists());
        let eff = Effective::from_files(&sys).unwrap();
        assert_eq!(eff.get("PasswordAuthentication").unwrap().first(), "no");
    }

    #[test]
    fn new_host_keys_start_a_failed_sshd() {
        use crate::system::record::RecordingSystem;
        use crate::system::CommandOutput;
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        // not the running system: nothing
        assert_eq!(serve_new_host_keys(&sys), "");
        assert!(sys.commands().is_empty());
        sys.pretend_live();
        // not running, not failed (is-failed answers 1): nothing started
        sys.script("systemctl", CommandOutput { status: Some(1), ..Default::default() });
        assert_eq!(serve_new_host_keys(&sys), "");
        assert!(sys.commands().iter().all(|c| c.args.first().map(String::as_str) == Some("is-failed")));
        // failed in the pool: reset and started again, once (sshd.service is Debian's alias)
        sys.script("systemctl", CommandOutput { status: Some(0), ..Default::default() });
        let note = serve_new_host_keys(&sys);
        assert!(note.contains("ssh.service had failed"), "{note}");
        let shown: Vec<String> = sys.commands().iter().map(|c| c.display()).collect();
        let n = shown.len();
        assert_eq!(
            shown[n - 3..],
            [
                "systemctl is-failed --quiet ssh.service",
                "systemctl reset-failed ssh.service",
                "systemctl restart --no-block ssh.service"
            ]
        );
        // running (pid file): reloaded as before
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(dir.path().join("run/sshd.pid"), "1\n").unwrap();
        assert_eq!(serve_new_host_keys(&sys), "; sshd reloaded");
    }
}
