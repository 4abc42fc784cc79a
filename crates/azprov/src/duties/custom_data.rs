//! customData (platform.md §9.10, §2.4): the OVF's decoded `CustomData` kept root-only in the state directory
//! (optionally also WALinuxAgent's raw-base64 copy), a report when the platform says there is customData but none
//! was read, and optional execution after Ready of a `#!` script (never `#cloud-config`). IMDS `userData` is
//! handled the same way when configured. The content is never logged, never put in argv or an outcome.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::config::{Config, UserDataPolicy};
use crate::platform::ovf::CustomData;
use crate::report::Failure;
use crate::system::{Command, System};

/// Decoded customData, in the state directory.
pub const FILE: &str = "custom_data";
/// Decoded IMDS userData, in the state directory (`user_data = "save" | "execute"`).
pub const USER_DATA_FILE: &str = "user_data";
/// WALinuxAgent's location (raw base64), written when `waagent_copy = true`.
pub const WAAGENT_COPY: &str = "/var/lib/waagent/CustomData";
/// The public reason (platform.md §2.4).
pub const MISSING: &str = "failure to read customData while hasCustomData=true";
/// Output lines logged per stream of an executed script (the rest is counted, not logged).
const MAX_LOGGED_LINES: usize = 500;

/// What became of one executed script, kept next to it (`<name>.result.json`) for `azprov status`. Written with
/// `running` before the script starts, so a script that reboots the VM is not run again on the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptResult {
    /// `customData` or `userData`.
    pub source: String,
    /// `running` (started, never finished: the agent or the VM went down meanwhile), `exited`, `timed-out`,
    /// `killed` (by a signal) or `error` (could not be started).
    pub state: String,
    /// Exit status when `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

fn state_path(cfg: &Config, name: &str) -> PathBuf {
    cfg.state.dir.join(name)
}

fn result_path(cfg: &Config, name: &str) -> PathBuf {
    cfg.state.dir.join(format!("{name}.result.json"))
}

/// Write `data` as a 0600 file in the 0700 state directory.
fn write_private(sys: &dyn System, dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    sys.create_dir_all(dir, 0o700, None)?;
    if sys.stat(dir).map(|s| s.mode != 0o700).unwrap_or(false) {
        sys.set_mode(dir, 0o700)?;
    }
    sys.write_file(path, data, 0o600, None)
}

/// Remove a saved copy and its result; `true` when there was a copy (it belonged to an earlier VM).
fn remove_saved(sys: &dyn System, cfg: &Config, name: &str) -> bool {
    let path = state_path(cfg, name);
    let existed = sys.exists(&path);
    let _ = sys.remove_file(&path);
    let _ = sys.remove_file(&result_path(cfg, name));
    existed
}

/// `(interpreter, optional argument)` from a `#!` first line, as the kernel reads it (the rest of the line after
/// the interpreter is one argument). `None` without `#!` or without an absolute interpreter path.
pub fn shebang(data: &[u8]) -> Option<(String, Option<String>)> {
    let rest = data.strip_prefix(b"#!")?;
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(rest);
    let line = std::str::from_utf8(line).ok()?.trim_matches([' ', '\t', '\r']);
    let (interp, arg) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], Some(line[i..].trim_matches([' ', '\t']).to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    interp.starts_with('/').then(|| (interp.to_string(), arg))
}

/// Why a payload will not be executed, or `None` when it is a `#!` script.
fn not_executable(data: &[u8]) -> Option<&'static str> {
    if shebang(data).is_some() {
        None
    } else if data.starts_with(b"#cloud-config") {
        Some("#cloud-config is cloud-init's, never executed")
    } else if data.starts_with(b"#!") {
        Some("its #! line has no absolute interpreter path")
    } else {
        Some("it does not start with #!")
    }
}

/// What will happen after Ready, for the persist outcome.
fn execution_note(will_execute: bool, data: &[u8], setting: &str) -> String {
    match (will_execute, not_executable(data)) {
        (true, None) => "will run after Ready".into(),
        (true, Some(why)) => format!("will not run: {why}"),
        (false, _) => format!("not executed ({setting})"),
    }
}

/// Persist the OVF's customData (local phase, once per VM id): decoded bytes at `<state dir>/custom_data` (0600 in a
/// 0700 directory), plus WALinuxAgent's raw base64 copy when configured. `custom = None` removes a copy left by an
/// earlier VM; with `has_custom_data = Some(true)` (IMDS, when no media was read) the loss is reported, and is a
/// failure only with `fail_on_missing`.
pub fn persist(sys: &dyn System, cfg: &Config, custom: Option<&CustomData>, has_custom_data: Option<bool>) -> Outcome {
    let dc = &cfg.duties.custom_data;
    if !dc.enabled {
        return Outcome::Skipped("customData: disabled by configuration (duties.custom_data.enabled = false)".into());
    }
    let path = state_path(cfg, FILE);
    let Some(custom) = custom else {
        let stale = if remove_saved(sys, cfg, FILE) {
            format!("; removed {} left by an earlier VM", path.display())
        } else {
            String::new()
        };
        if has_custom_data == Some(true) {
            if dc.fail_on_missing {
                return Outcome::Failed(
                    Failure::new(MISSING).with("detail", "no provisioning media was read (fail_on_missing = true)"),
                );
            }
            return Outcome::Skipped(format!(
                "{MISSING}: no provisioning media was read, the customData is lost (reported only: \
                 duties.custom_data.fail_on_missing = false){stale}"
            ));
        }
        return Outcome::Skipped(format!("no customData{stale}"));
    };
    let (bytes, raw) = match custom {
        CustomData::Decoded(s) => (s.expose(), false),
        CustomData::Raw(s) => (s.expose(), true),
    };
    if let Err(e) = write_private(sys, &cfg.state.dir, &path, bytes) {
        return Outcome::Failed(
            Failure::new("failure to save customData").with("path", path.display()).with("exception", e),
        );
    }
    // new data: whatever ran before belongs to an earlier VM
    let _ = sys.remove_file(&result_path(cfg, FILE));
    let mut notes = vec![format!("customData ({} bytes) saved to {}", bytes.len(), path.display())];
    if raw {
        notes.push("it was not valid base64: saved as given".into());
    }
    if dc.waagent_copy {
        let b64 = if raw {
            zeroize::Zeroizing::new(bytes.to_vec())
        } else {
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes())
        };
        let copy = Path::new(WAAGENT_COPY);
        let dir = copy.parent().unwrap_or(Path::new("/"));
        let written = sys.create_dir_all(dir, 0o700, None).and_then(|_| sys.write_file(copy, &b64, 0o600, None));
        match written {
            Ok(()) => notes.push(format!("raw base64 copy at {WAAGENT_COPY}")),
            // the compatibility copy is a convenience: the primary copy exists
            Err(e) => {
                tracing::warn!("customData: cannot write {WAAGENT_COPY}: {e}");
                notes.push(format!("{WAAGENT_COPY} not written: {e}"));
            }
        }
    }
    let exec = execution_note(
        dc.execute,
        bytes,
        "duties.custom_data.execute = false; IMDS userData is the repeatable alternative",
    );
    notes.push(exec);
    Outcome::Done(notes.join("; "))
}

/// Persist IMDS `userData` (network phase, once per VM id) when `user_data = "save" | "execute"`: base64-decoded at
/// `<state dir>/user_data` (0600). Absent userData removes a copy left by an earlier VM.
pub fn persist_user_data(sys: &dyn System, cfg: &Config, user_data: Option<&str>) -> Outcome {
    let dc = &cfg.duties.custom_data;
    if !dc.enabled || dc.user_data == UserDataPolicy::Ignore {
        let why = if user_data.is_some() { "IMDS userData not saved" } else { "no IMDS userData" };
        return Outcome::Skipped(format!("{why} (duties.custom_data.user_data = \"ignore\" or the duty is disabled)"));
    }
    let path = state_path(cfg, USER_DATA_FILE);
    let Some(text) = user_data.filter(|t| !t.trim().is_empty()) else {
        let stale = remove_saved(sys, cfg, USER_DATA_FILE);
        let note = if stale { format!("; removed {} left by an earlier VM", path.display()) } else { String::new() };
        return Outcome::Skipped(format!("no IMDS userData{note}"));
    };
    let compact: zeroize::Zeroizing<String> =
        zeroize::Zeroizing::new(text.chars().filter(|c| !c.is_ascii_whitespace()).collect());
    let (bytes, raw) = match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
        Ok(b) => (zeroize::Zeroizing::new(b), false),
        Err(_) => (zeroize::Zeroizing::new(text.as_bytes().to_vec()), true),
    };
    if let Err(e) = write_private(sys, &cfg.state.dir, &path, &bytes) {
        return Outcome::Failed(
            Failure::new("failure to save userData").with("path", path.display()).with("exception", e),
        );
    }
    let _ = sys.remove_file(&result_path(cfg, USER_DATA_FILE));
    let mut notes = vec![format!("IMDS userData ({} bytes) saved to {}", bytes.len(), path.display())];
    if raw {
        notes.push("it was not valid base64: saved as given".into());
    }
    notes.push(execution_note(
        dc.user_data == UserDataPolicy::Execute,
        &bytes,
        "duties.custom_data.user_data = \"save\"",
    ));
    Outcome::Done(notes.join("; "))
}

/// The results of executed scripts, for `azprov status`.
pub fn results(sys: &dyn System, cfg: &Config) -> Vec<ScriptResult> {
    [FILE, USER_DATA_FILE]
        .iter()
        .filter_map(|n| sys.read(&result_path(cfg, n)).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// Run the saved customData (`execute = true`) and userData (`user_data = "execute"`) — call only after the
/// platform accepted Ready. Each runs once per saved copy, as root (the agent's user), through its `#!`
/// interpreter, with `timeout_secs`; its output goes to the log at info level line by line, its exit status to
/// `<state dir>/<name>.result.json` and the outcome. A failing script never fails provisioning: this returns
/// `Done` (something ran) or `Skipped`, never `Failed`.
pub fn execute_after_ready(sys: &dyn System, cfg: &Config) -> Outcome {
    let dc = &cfg.duties.custom_data;
    let mut wanted = Vec::new();
    if dc.enabled && dc.execute {
        wanted.push(("customData", FILE));
    }
    if dc.enabled && dc.user_data == UserDataPolicy::Execute {
        wanted.push(("userData", USER_DATA_FILE));
    }
    if wanted.is_empty() {
        return Outcome::Skipped(
            "execution disabled (duties.custom_data.execute = false, user_data is not \"execute\")".into(),
        );
    }
    if !sys.is_live() {
        // an offline image or sandbox: the script belongs to the VM, never to the machine running azprov
        return Outcome::Skipped("not the running system: scripts run only on the provisioned VM itself".into());
    }
    let mut ran = false;
    let notes: Vec<String> = wanted
        .into_iter()
        .map(|(label, name)| {
            let (r, note) = run_one(sys, cfg, label, name);
            ran |= r;
            note
        })
        .collect();
    if ran {
        Outcome::Done(notes.join("; "))
    } else {
        Outcome::Skipped(notes.join("; "))
    }
}

fn save_result(sys: &dyn System, cfg: &Config, name: &str, r: &ScriptResult) {
    let written = serde_json::to_vec_pretty(r)
        .map_err(io::Error::other)
        .and_then(|j| write_private(sys, &cfg.state.dir, &result_path(cfg, name), &j));
    if let Err(e) = written {
        tracing::warn!("{}: cannot record the script result: {e}", r.source);
    }
}

/// Log a stream line by line with a prefix (the script's output, never its content).
fn log_output(label: &str, stream: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    for line in lines.by_ref().take(MAX_LOGGED_LINES) {
        tracing::info!("{label} {stream}: {line}");
    }
    let rest = lines.count();
    if rest > 0 {
        tracing::info!("{label} {stream}: … {rest} more lines not logged");
    }
}

/// `(ran, note)` for one saved payload.
fn run_one(sys: &dyn System, cfg: &Config, label: &str, name: &str) -> (bool, String) {
    let path = state_path(cfg, name);
    let data = match sys.read(&path) {
        Ok(d) => zeroize::Zeroizing::new(d),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (false, format!("no {label} saved")),
        Err(e) => return (false, format!("{label}: cannot read {}: {e}", path.display())),
    };
    if let Some(prev) =
        sys.read(&result_path(cfg, name)).ok().and_then(|b| serde_json::from_slice::<ScriptResult>(&b).ok())
    {
        let status = prev.status.map(|s| format!(", exit status {s}")).unwrap_or_default();
        return (false, format!("{label} already ran ({}{status}): not run again", prev.state));
    }
    if let Some(why) = not_executable(&data) {
        tracing::info!("{label}: not executed: {why}; saved at {}", path.display());
        return (false, format!("{label} not executed: {why}"));
    }
    let Some((interp, arg)) = shebang(&data) else {
        return (false, format!("{label} not executed"));
    };
    if !sys.has_program(&interp) {
        return (false, format!("{label} not executed: interpreter {interp} is not installed"));
    }
    let mut args: Vec<String> = arg.into_iter().collect();
    args.push(sys.host_path(&path).display().to_string());
    let timeout = Duration::from_secs(cfg.duties.custom_data.timeout_secs.max(1));
    let cmd = Command { program: interp.clone(), args, stdin: None, timeout };
    let mut result = ScriptResult {
        source: label.into(),
        state: "running".into(),
        status: None,
        duration_ms: 0,
        detail: String::new(),
    };
    save_result(sys, cfg, name, &result);
    tracing::info!("{label}: running {} (timeout {} s)", path.display(), timeout.as_secs());
    let t = Instant::now();
    let out = sys.run(&cmd);
    result.duration_ms = t.elapsed().as_millis() as u64;
    let note = match out {
        Ok(o) => {
            log_output(label, "stdout", &o.stdout);
            log_output(label, "stderr", &o.stderr);
            if o.timed_out {
                result.state = "timed-out".into();
                format!("{label} timed out after {} s and was killed", timeout.as_secs())
            } else if let Some(code) = o.status {
                result.state = "exited".into();
                result.status = Some(code);
                format!("{label} exited with status {code} after {} ms", result.duration_ms)
            } else {
                result.state = "killed".into();
                format!("{label} was killed by a signal")
            }
        }
        Err(e) => {
            result.state = "error".into();
            result.detail = e.to_string();
            format!("{label} could not be started: {e}")
        }
    };
    tracing::info!("{note}");
    save_result(sys, cfg, name, &result);
    (true, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use crate::system::record::RecordingSystem;

    const SECRET_MARK: &str = "TOP-SECRET-4711";

    fn setup() -> (tempfile::TempDir, RecordingSystem, Config) {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        // scripts run only on the running system; the double keeps every path in the sandbox
        sys.pretend_live();
        (dir, sys, Config::default())
    }

    fn decoded(s: &str) -> CustomData {
        CustomData::Decoded(Secret::new(s.as_bytes().to_vec()))
    }

    fn mode(dir: &tempfile::TempDir, rel: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join(rel)).unwrap().permissions().mode() & 0o7777
    }

    fn done(o: Outcome) -> String {
        match o {
            Outcome::Done(d) => d,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn skipped(o: Outcome) -> String {
        match o {
            Outcome::Skipped(d) => d,
            other => panic!("expected Skipped, got {other:?}"),
        }
    }

    #[test]
    fn shebang_detection() {
        assert_eq!(shebang(b"#!/bin/sh\necho hi\n"), Some(("/bin/sh".into(), None)));
        assert_eq!(shebang(b"#! /bin/bash -e\r\nx"), Some(("/bin/bash".into(), Some("-e".into()))));
        assert_eq!(shebang(b"#!/usr/bin/env python3 -u\n"), Some(("/usr/bin/env".into(), Some("python3 -u".into()))));
        assert_eq!(shebang(b"#!/bin/sh"), Some(("/bin/sh".into(), None)));
        assert_eq!(shebang(b"#cloud-config\nruncmd: []\n"), None);
        assert_eq!(shebang(b"#!sh\n"), None);
        assert_eq!(shebang(b" #!/bin/sh\n"), None);
        assert_eq!(shebang(b""), None);
        assert_eq!(not_executable(b"#cloud-config\n"), Some("#cloud-config is cloud-init's, never executed"));
        assert_eq!(not_executable(b"\x1f\x8b\x08"), Some("it does not start with #!"));
        assert_eq!(not_executable(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn persist_decoded_root_only() {
        let (dir, sys, cfg) = setup();
        let body = format!("#!/bin/sh\n# {SECRET_MARK}\necho hi\n");
        let (o, log) = crate::testutil::capture_log(|| persist(&sys, &cfg, Some(&decoded(&body)), None));
        let d = done(o);
        assert!(d.contains("saved to /var/lib/azprov/custom_data") && d.contains("not executed"), "{d}");
        assert!(!d.contains(SECRET_MARK) && !log.contains(SECRET_MARK), "{d}\n{log}");
        assert_eq!(std::fs::read_to_string(dir.path().join("var/lib/azprov/custom_data")).unwrap(), body);
        assert_eq!(mode(&dir, "var/lib/azprov/custom_data"), 0o600);
        assert_eq!(mode(&dir, "var/lib/azprov"), 0o700);
        assert!(!dir.path().join("var/lib/waagent").exists());
        // idempotent
        done(persist(&sys, &cfg, Some(&decoded(&body)), None));
        assert_eq!(std::fs::read_to_string(dir.path().join("var/lib/azprov/custom_data")).unwrap(), body);
    }

    #[test]
    fn persist_tightens_an_existing_state_dir() {
        let (dir, sys, cfg) = setup();
        std::fs::create_dir_all(dir.path().join("var/lib/azprov")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("var/lib/azprov"), std::fs::Permissions::from_mode(0o755)).unwrap();
        done(persist(&sys, &cfg, Some(&decoded("x")), None));
        assert_eq!(mode(&dir, "var/lib/azprov"), 0o700);
    }

    #[test]
    fn waagent_copy_is_raw_base64() {
        let (dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.waagent_copy = true;
        let d = done(persist(&sys, &cfg, Some(&decoded("#!/bin/sh\necho hello from customData\n")), None));
        assert!(d.contains("raw base64 copy at /var/lib/waagent/CustomData"), "{d}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("var/lib/waagent/CustomData")).unwrap(),
            "IyEvYmluL3NoCmVjaG8gaGVsbG8gZnJvbSBjdXN0b21EYXRhCg=="
        );
        assert_eq!(mode(&dir, "var/lib/waagent/CustomData"), 0o600);
        assert_eq!(mode(&dir, "var/lib/waagent"), 0o700);
        // not base64: saved as given in both places
        let raw = CustomData::Raw(Secret::new(b"not base64!".to_vec()));
        let d = done(persist(&sys, &cfg, Some(&raw), None));
        assert!(d.contains("not valid base64"), "{d}");
        assert_eq!(std::fs::read(dir.path().join("var/lib/azprov/custom_data")).unwrap(), b"not base64!");
        assert_eq!(std::fs::read(dir.path().join("var/lib/waagent/CustomData")).unwrap(), b"not base64!");
    }

    #[test]
    fn missing_custom_data_reported_or_failed() {
        let (dir, sys, mut cfg) = setup();
        let why = skipped(persist(&sys, &cfg, None, Some(true)));
        assert!(why.starts_with(MISSING), "{why}");
        cfg.duties.custom_data.fail_on_missing = true;
        match persist(&sys, &cfg, None, Some(true)) {
            Outcome::Failed(f) => assert_eq!(f.reason, MISSING),
            o => panic!("{o:?}"),
        }
        // hasCustomData false or unknown: nothing to say
        assert_eq!(skipped(persist(&sys, &cfg, None, Some(false))), "no customData");
        assert_eq!(skipped(persist(&sys, &cfg, None, None)), "no customData");
        // a copy from an earlier VM goes away with its result
        std::fs::create_dir_all(dir.path().join("var/lib/azprov")).unwrap();
        std::fs::write(dir.path().join("var/lib/azprov/custom_data"), "old").unwrap();
        std::fs::write(dir.path().join("var/lib/azprov/custom_data.result.json"), "{}").unwrap();
        let why = skipped(persist(&sys, &cfg, None, None));
        assert!(why.contains("removed /var/lib/azprov/custom_data left by an earlier VM"), "{why}");
        assert!(!dir.path().join("var/lib/azprov/custom_data").exists());
        assert!(!dir.path().join("var/lib/azprov/custom_data.result.json").exists());
        cfg.duties.custom_data.enabled = false;
        assert!(skipped(persist(&sys, &cfg, Some(&decoded("x")), None)).contains("disabled"));
    }

    #[test]
    fn execution_is_off_by_default() {
        let (_dir, sys, cfg) = setup();
        done(persist(&sys, &cfg, Some(&decoded("#!/bin/sh\necho hi\n")), None));
        assert!(skipped(execute_after_ready(&sys, &cfg)).contains("execution disabled"));
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn executes_a_shebang_script_once_with_output_logged() {
        let (dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.execute = true;
        let body = format!("#!/bin/sh\n# {SECRET_MARK}\necho out-line\necho err-line >&2\nexit 3\n");
        let d = done(persist(&sys, &cfg, Some(&decoded(&body)), None));
        assert!(d.contains("will run after Ready"), "{d}");
        let (o, log) = crate::testutil::capture_log(|| execute_after_ready(&sys, &cfg));
        let d = done(o);
        assert!(d.contains("customData exited with status 3"), "{d}");
        assert!(log.contains("customData stdout: out-line") && log.contains("customData stderr: err-line"), "{log}");
        assert!(log.contains("INFO"), "{log}");
        assert!(!log.contains(SECRET_MARK) && !d.contains(SECRET_MARK), "{log}");
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].program, "/bin/sh");
        let host = dir.path().join("var/lib/azprov/custom_data").display().to_string();
        assert_eq!(cmds[0].args, vec![host]);
        let r = results(&sys, &cfg);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].source.as_str(), r[0].state.as_str(), r[0].status), ("customData", "exited", Some(3)));
        assert_eq!(mode(&dir, "var/lib/azprov/custom_data.result.json"), 0o600);
        // once: a second after-ready run (or the next boot) does not run it again
        let why = skipped(execute_after_ready(&sys, &cfg));
        assert!(why.contains("already ran (exited, exit status 3)"), "{why}");
        assert_eq!(sys.commands().len(), 1);
        // new customData (a new VM) clears the result
        done(persist(&sys, &cfg, Some(&decoded("#!/bin/sh\nexit 0\n")), None));
        assert!(results(&sys, &cfg).is_empty());
        assert!(done(execute_after_ready(&sys, &cfg)).contains("status 0"));
    }

    #[test]
    fn a_started_script_is_not_rerun_after_a_crash() {
        let (dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.execute = true;
        done(persist(&sys, &cfg, Some(&decoded("#!/bin/sh\nreboot\n")), None));
        // the state a reboot from inside the script leaves behind
        let running = ScriptResult {
            source: "customData".into(),
            state: "running".into(),
            status: None,
            duration_ms: 0,
            detail: String::new(),
        };
        std::fs::write(
            dir.path().join("var/lib/azprov/custom_data.result.json"),
            serde_json::to_vec(&running).unwrap(),
        )
        .unwrap();
        assert!(skipped(execute_after_ready(&sys, &cfg)).contains("already ran (running)"));
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn cloud_config_and_plain_data_are_never_run() {
        let (_dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.execute = true;
        let d = done(persist(&sys, &cfg, Some(&decoded("#cloud-config\nruncmd: [reboot]\n")), None));
        assert!(d.contains("will not run: #cloud-config"), "{d}");
        assert!(skipped(execute_after_ready(&sys, &cfg)).contains("#cloud-config is cloud-init's"));
        done(persist(&sys, &cfg, Some(&decoded("just data")), None));
        assert!(skipped(execute_after_ready(&sys, &cfg)).contains("does not start with #!"));
        assert!(sys.commands().is_empty());
        assert!(results(&sys, &cfg).is_empty());
    }

    #[test]
    fn missing_interpreter_and_nothing_saved() {
        let (_dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.execute = true;
        assert_eq!(skipped(execute_after_ready(&sys, &cfg)), "no customData saved");
        done(persist(&sys, &cfg, Some(&decoded("#!/azprov/no/such/interpreter\n")), None));
        let why = skipped(execute_after_ready(&sys, &cfg));
        assert!(why.contains("interpreter /azprov/no/such/interpreter is not installed"), "{why}");
    }

    #[test]
    fn a_hanging_script_times_out_without_failing() {
        let (_dir, sys, mut cfg) = setup();
        cfg.duties.custom_data.execute = true;
        cfg.duties.custom_data.timeout_secs = 1;
        done(persist(&sys, &cfg, Some(&decoded("#!/bin/sh\necho before\nsleep 30\necho after\n")), None));
        let t = Instant::now();
        let (o, log) = crate::testutil::capture_log(|| execute_after_ready(&sys, &cfg));
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(done(o).contains("customData timed out after 1 s"));
        assert!(log.contains("customData stdout: before") && !log.contains("after\n"), "{log}");
        let r = results(&sys, &cfg);
        assert_eq!((r[0].state.as_str(), r[0].status), ("timed-out", None));
    }

    #[test]
    fn user_data_policies() {
        let (dir, sys, mut cfg) = setup();
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("#!/bin/sh\n# {SECRET_MARK}\necho ud\n"));
        // ignore (default): nothing saved
        assert!(skipped(persist_user_data(&sys, &cfg, Some(&b64))).contains("not saved"));
        assert!(!dir.path().join("var/lib/azprov/user_data").exists());
        cfg.duties.custom_data.user_data = UserDataPolicy::Save;
        let d = done(persist_user_data(&sys, &cfg, Some(&b64)));
        assert!(d.contains("saved to /var/lib/azprov/user_data") && d.contains("not executed"), "{d}");
        assert!(std::fs::read_to_string(dir.path().join("var/lib/azprov/user_data")).unwrap().ends_with("echo ud\n"));
        assert_eq!(mode(&dir, "var/lib/azprov/user_data"), 0o600);
        assert!(skipped(execute_after_ready(&sys, &cfg)).contains("execution disabled"));
        cfg.duties.custom_data.user_data = UserDataPolicy::Execute;
        let (o, log) = crate::testutil::capture_log(|| execute_after_ready(&sys, &cfg));
        assert!(done(o).contains("userData exited with status 0"));
        assert!(log.contains("userData stdout: ud") && !log.contains(SECRET_MARK), "{log}");
        // both configured: customData absent is noted, userData already ran
        cfg.duties.custom_data.execute = true;
        let why = skipped(execute_after_ready(&sys, &cfg));
        assert!(why.contains("no customData saved") && why.contains("userData already ran"), "{why}");
        // gone from IMDS on a new VM: the stale copy goes
        assert!(skipped(persist_user_data(&sys, &cfg, None)).contains("removed /var/lib/azprov/user_data"));
        assert!(!dir.path().join("var/lib/azprov/user_data.result.json").exists());
    }
}
