//! Living with the other agents an image may carry (platform.md §12, §4.3):
//!
//! * cloud-init with its Azure datasource would provision and report too: detected from the image's files
//!   ([`cloud_init_azure_active`]); azprov then refuses unless `[coexistence] cloud_init = "ignore"`
//!   ([`check_cloud_init`]).
//! * WALinuxAgent stays for extensions: told not to provision and to leave the resource disk, swap, host name and
//!   host keys alone ([`configure_waagent`]), and given what it expects to find after provisioning
//!   ([`waagent_after_ready`], [`disable_guest_agent`]).
//! * The guest proxy agent (`ProvisionGuestProxyAgent=true`) is waited for, within a bound ([`wait_proxy_agent`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{excerpt, Outcome};
use crate::config::{CloudInitPolicy, CoexistenceConfig};
use crate::platform::{identity, ovf};
use crate::report::Failure;
use crate::system::{Command, FileInfo, System};

// ---- cloud-init ----

const CLOUD_INIT_UNIT: &str = "cloud-init-local.service";
/// Where a cloud-init installation shows: its program (distribution package or pip) or its main configuration.
const CLOUD_INIT_FILES: &[&str] = &["/usr/bin/cloud-init", "/usr/local/bin/cloud-init", "/etc/cloud/cloud.cfg"];
const CLOUD_CFG: &str = "/etc/cloud/cloud.cfg";
const CLOUD_CFG_D: &str = "/etc/cloud/cloud.cfg.d";
const CLOUD_INIT_DISABLED: &str = "/etc/cloud/cloud-init.disabled";
/// systemd unit directories, highest precedence first.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// Whether cloud-init would provision this VM through its Azure datasource, with the reason either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudInitStatus {
    /// It would: every finding that says so, naming the files.
    AzureActive(String),
    /// It would not: the first finding that rules it out.
    Inactive(String),
}

/// `Some(reason)` when cloud-init's Azure datasource would also provision this VM (platform.md §12): cloud-init
/// installed, `cloud-init-local.service` enabled (not masked), not disabled by `/etc/cloud/cloud-init.disabled` or
/// `cloud-init=disabled` on the kernel command line, and its `datasource_list` includes `Azure` or is unset.
pub fn cloud_init_azure_active(sys: &dyn System) -> Option<String> {
    match cloud_init_status(sys) {
        CloudInitStatus::AzureActive(r) => Some(r),
        CloudInitStatus::Inactive(_) => None,
    }
}

/// The full assessment behind [`cloud_init_azure_active`].
pub fn cloud_init_status(sys: &dyn System) -> CloudInitStatus {
    let Some(installed) = CLOUD_INIT_FILES.iter().find(|p| sys.exists(Path::new(p))) else {
        return CloudInitStatus::Inactive("cloud-init is not installed".into());
    };
    if sys.exists(Path::new(CLOUD_INIT_DISABLED)) {
        return CloudInitStatus::Inactive(format!("cloud-init is disabled by {CLOUD_INIT_DISABLED}"));
    }
    let cmdline = sys.read_to_string(Path::new("/proc/cmdline")).unwrap_or_default();
    if cmdline.split_whitespace().any(|t| t == "cloud-init=disabled") {
        return CloudInitStatus::Inactive(
            "cloud-init is disabled by cloud-init=disabled on the kernel command line".into(),
        );
    }
    let unit = match unit_enablement(sys) {
        Ok(how) => how,
        Err(why) => return CloudInitStatus::Inactive(why),
    };
    match datasource_allows_azure(sys, &cmdline) {
        Ok(ds) => CloudInitStatus::AzureActive(format!("cloud-init is installed ({installed}), {unit} and {ds}")),
        Err(why) => CloudInitStatus::Inactive(why),
    }
}

/// The cloud-init check as `azprov provision` applies it: `Ok(None)` nothing in the way; `Ok(Some(warning))`
/// cloud-init is active but `[coexistence] cloud_init = "ignore"` (log the warning and go on); `Err(message)`
/// refuse: change nothing, report nothing, print the message (it says why and how to override) and exit 2.
pub fn check_cloud_init(sys: &dyn System, cfg: &CoexistenceConfig) -> Result<Option<String>, String> {
    let reason = match cloud_init_status(sys) {
        CloudInitStatus::Inactive(why) => {
            tracing::debug!("cloud-init: {why}");
            return Ok(None);
        }
        CloudInitStatus::AzureActive(reason) => reason,
    };
    match cfg.cloud_init {
        CloudInitPolicy::Ignore => Ok(Some(format!(
            "{reason}: both agents may report to the platform; going on because [coexistence] cloud_init = \"ignore\""
        ))),
        CloudInitPolicy::Refuse => Err(format!(
            "refusing to provision: {reason}, so cloud-init would provision this VM and report to the platform too; \
             nothing changed. Disable cloud-init (touch {CLOUD_INIT_DISABLED}, or set `datasource_list: [ None ]` in \
             a file in {CLOUD_CFG_D}/), or set `cloud_init = \"ignore\"` in the [coexistence] section of \
             /etc/azprov/azprov.toml (or a drop-in in /etc/azprov/azprov.toml.d/) to provision anyway"
        )),
    }
}

/// A symlink to `/dev/null`: a masked unit, or a link that enables nothing.
fn is_null_link(sys: &dyn System, path: &Path, info: &FileInfo) -> bool {
    info.is_symlink && sys.read_link(path).is_ok_and(|t| t == Path::new("/dev/null"))
}

/// `Ok("cloud-init-local.service is enabled (…)")` or `Err(why not)`.
fn unit_enablement(sys: &dyn System) -> Result<String, String> {
    if sys.is_live() && sys.has_program("systemctl") {
        // what WALinuxAgent asks; decisive only for clear answers (static, indirect, … and a system not booted with
        // systemd fall back to the files)
        let mut cmd = Command::new("systemctl", &["is-enabled", CLOUD_INIT_UNIT]);
        cmd.timeout = Duration::from_secs(10);
        if let Ok(out) = sys.run(&cmd) {
            let text = String::from_utf8_lossy(&out.stdout);
            let word = text.lines().next().unwrap_or("").trim();
            match word {
                "enabled" | "enabled-runtime" => {
                    return Ok(format!("{CLOUD_INIT_UNIT} is enabled (systemctl is-enabled: {word})"))
                }
                "masked" | "masked-runtime" | "not-found" => {
                    return Err(format!("{CLOUD_INIT_UNIT} is not enabled (systemctl is-enabled: {word})"))
                }
                _ => {}
            }
        }
    }
    // the unit file that wins (first in precedence) decides whether the unit is masked
    for dir in UNIT_DIRS {
        let p = Path::new(dir).join(CLOUD_INIT_UNIT);
        let Ok(info) = sys.stat(&p) else { continue };
        if is_null_link(sys, &p, &info) || (info.is_file && info.len == 0) {
            return Err(format!("{CLOUD_INIT_UNIT} is masked ({})", p.display()));
        }
        break;
    }
    for dir in UNIT_DIRS {
        let Ok(names) = sys.read_dir(Path::new(dir)) else { continue };
        for n in names.iter().filter(|n| n.ends_with(".wants") || n.ends_with(".requires")) {
            let link = Path::new(dir).join(n).join(CLOUD_INIT_UNIT);
            let Ok(info) = sys.stat(&link) else { continue };
            if !is_null_link(sys, &link, &info) {
                return Ok(format!("{CLOUD_INIT_UNIT} is enabled ({})", link.display()));
            }
        }
    }
    Err(format!("{CLOUD_INIT_UNIT} is not enabled (no link in any *.wants or *.requires directory)"))
}

/// `Ok(what says Azure may be used)` or `Err(why not)`: the kernel command line's `ci.ds=` / `ci.datasource=`,
/// else the last `datasource_list` of `/etc/cloud/cloud.cfg` then `/etc/cloud/cloud.cfg.d/*.cfg` (lexical order);
/// unset or empty means cloud-init's default list, which includes Azure.
fn datasource_allows_azure(sys: &dyn System, cmdline: &str) -> Result<String, String> {
    let forced = cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("ci.ds=").or_else(|| t.strip_prefix("ci.datasource=")))
        .next_back();
    if let Some(ds) = forced {
        let azure = ds.split(',').any(|d| d.trim().eq_ignore_ascii_case("Azure"));
        let msg = format!("the kernel command line selects the datasource {ds}");
        return if azure { Ok(msg) } else { Err(msg) };
    }
    let mut files = vec![PathBuf::from(CLOUD_CFG)];
    if let Ok(names) = sys.read_dir(Path::new(CLOUD_CFG_D)) {
        files.extend(names.iter().filter(|n| n.ends_with(".cfg")).map(|n| Path::new(CLOUD_CFG_D).join(n)));
    }
    let mut setting: Option<(PathBuf, Vec<String>)> = None;
    for f in files {
        let Ok(bytes) = sys.read(&f) else { continue };
        if let Some(list) = parse_datasource_list(&String::from_utf8_lossy(&bytes)) {
            setting = Some((f, list));
        }
    }
    match setting {
        None => Ok("datasource_list is not set (cloud-init's default list includes Azure)".into()),
        Some((f, list)) if list.is_empty() => {
            Ok(format!("datasource_list is empty in {} (cloud-init's default list includes Azure)", f.display()))
        }
        Some((f, list)) => {
            let shown = list.join(", ");
            if list.iter().any(|d| d.eq_ignore_ascii_case("Azure")) {
                Ok(format!("datasource_list in {} includes Azure ([ {shown} ])", f.display()))
            } else {
                Err(format!("cloud-init's datasource_list in {} is [ {shown} ], without Azure", f.display()))
            }
        }
    }
}

/// A line without its YAML comment (`#` at the start or after white space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut after_space = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '#' && after_space => return &line[..i],
            None if (c == '\'' || c == '"') && after_space => quote = Some(c),
            None => {}
        }
        after_space = c.is_whitespace() || c == '[' || c == ',';
    }
    line
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// What follows `datasource_list:` when `line` sets the top-level key (column 0, optionally quoted).
fn key_value(line: &str) -> Option<&str> {
    ["datasource_list", "\"datasource_list\"", "'datasource_list'"].iter().find_map(|k| {
        let rest = line.strip_prefix(k)?.trim_start_matches([' ', '\t']).strip_prefix(':')?;
        (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
    })
}

/// The top-level `datasource_list` of one cloud-init YAML file: `None` when the file does not set it; an empty list
/// when it is set to nothing (`[]`, `~`, `null`, no items), which cloud-init treats as its default list. Flow
/// (`[ Azure, None ]`, also over several lines) and block (`- Azure` lines) sequences, quotes and comments; the
/// last occurrence wins, like a YAML loader. Just this key: no YAML library.
pub fn parse_datasource_list(text: &str) -> Option<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = None;
    let mut i = 0;
    while i < lines.len() {
        let Some(rest) = key_value(lines[i]) else {
            i += 1;
            continue;
        };
        i += 1;
        let value = strip_comment(rest).trim();
        if let Some(flow) = value.strip_prefix('[') {
            let mut buf = flow.to_string();
            while !buf.contains(']') && i < lines.len() {
                buf.push(' ');
                buf.push_str(strip_comment(lines[i]));
                i += 1;
            }
            let Some(end) = buf.find(']') else { continue }; // unterminated: not a value cloud-init would load
            found = Some(buf[..end].split(',').map(unquote).filter(|s| !s.is_empty()).map(String::from).collect());
        } else if value.is_empty() {
            let mut items = Vec::new();
            while i < lines.len() {
                let l = strip_comment(lines[i]);
                let t = l.trim();
                if t.is_empty() {
                    i += 1;
                    continue;
                }
                let Some(item) = t.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) else {
                    break;
                };
                let item = unquote(item);
                if !item.is_empty() {
                    items.push(item.to_string());
                }
                i += 1;
            }
            found = Some(items);
        } else if ["~", "null", "Null", "NULL"].contains(&value) {
            found = Some(Vec::new());
        } else {
            found = Some(vec![unquote(value).to_string()]);
        }
    }
    found
}

// ---- WALinuxAgent ----

pub const WAAGENT_CONF: &str = "/etc/waagent.conf";
/// WALinuxAgent's state directory (`Lib.Dir`).
pub const WAAGENT_LIB: &str = "/var/lib/waagent";
/// Its own run-once marker: the instance id (platform.md §12).
pub const WAAGENT_PROVISIONED: &str = "/var/lib/waagent/provisioned";
/// Its copy of the OVF (WALinuxAgent keeps one; extensions and `waagent -deprovision+user` read it).
pub const WAAGENT_OVF: &str = "/var/lib/waagent/ovf-env.xml";
/// `ProvisionGuestAgent=false`: WALinuxAgent sleeps instead of handling extensions.
pub const WAAGENT_DISABLE_AGENT: &str = "/var/lib/waagent/disable_agent";
const WAAGENT_PROGRAMS: &[&str] = &["/usr/sbin/waagent", "/usr/bin/waagent", "/usr/local/sbin/waagent"];

/// One owner per duty (platform.md §12): WALinuxAgent neither provisions nor touches what azprov does.
pub const WAAGENT_SETTINGS: &[(&str, &str)] = &[
    ("Provisioning.Agent", "disabled"),
    ("ResourceDisk.Format", "n"),
    ("ResourceDisk.EnableSwap", "n"),
    ("Provisioning.MonitorHostName", "n"),
    ("Provisioning.RegenerateSshHostKeyPair", "n"),
];
/// Read by agents older than `Provisioning.Agent`: switched off where it is set to something else, never added.
const WAAGENT_LEGACY: (&str, &str) = ("Provisioning.Enabled", "n");
const WAAGENT_HEADER: &str =
    "# Set by azprov ([coexistence] waagent_conf): azprov provisions this VM, WALinuxAgent handles extensions.";

/// Whether WALinuxAgent is installed in the target: its configuration or its program.
pub fn waagent_installed(sys: &dyn System) -> bool {
    std::iter::once(&WAAGENT_CONF).chain(WAAGENT_PROGRAMS).any(|p| sys.exists(Path::new(p)))
}

/// A line as WALinuxAgent reads it (`ConfigurationProvider.load`): `(key, value)` unless it starts with `#` or
/// has no `=`; the value ends at the first `#` and loses surrounding spaces and double quotes.
fn waagent_line(line: &str) -> Option<(&str, &str)> {
    if line.starts_with('#') {
        return None;
    }
    let (k, v) = line.split_once('=')?;
    let v = v.split('#').next().unwrap_or("").trim_matches(['"', ' ']).trim();
    Some((k.trim(), v))
}

/// Whether WALinuxAgent reads `have` as `want`: `y`/`n` switches ignore case, `Provisioning.Agent` does not.
fn waagent_value_ok(want: &str, have: &str) -> bool {
    if want == "y" || want == "n" {
        have.eq_ignore_ascii_case(want)
    } else {
        have == want
    }
}

/// `line` (without its terminator) with the value replaced; spacing and a trailing comment kept.
fn with_value(line: &str, value: &str) -> String {
    let Some(eq) = line.find('=') else { return line.to_string() };
    let (key, after) = (&line[..=eq], &line[eq + 1..]);
    let lead = &after[..after.len() - after.trim_start().len()];
    match after.find('#') {
        None => format!("{key}{lead}{value}"),
        Some(h) => {
            let before = &after[..h];
            let gap = &before[before.trim_end().len()..];
            let gap = if gap.is_empty() { " " } else { gap };
            format!("{key}{lead}{value}{gap}{}", &after[h..])
        }
    }
}

/// `/etc/waagent.conf` text with [`WAAGENT_SETTINGS`] applied: every uncommented line of a key gets the value
/// (comments, other lines, spacing and line ends kept), keys it lacks are appended. Returns the new text and the
/// changes (empty: nothing to do).
pub fn edit_waagent_conf(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len() + 256);
    let mut changes = Vec::new();
    let mut seen = Vec::new();
    for raw in text.split_inclusive('\n') {
        let body = raw.trim_end_matches(['\n', '\r']);
        let end = &raw[body.len()..];
        let wanted = waagent_line(body).and_then(|(k, v)| {
            let (key, want) = WAAGENT_SETTINGS.iter().chain([&WAAGENT_LEGACY]).find(|(key, _)| *key == k)?;
            seen.push(*key);
            (!waagent_value_ok(want, v)).then(|| (*key, *want, v.to_string()))
        });
        match wanted {
            Some((key, want, old)) => {
                out.push_str(&with_value(body, want));
                out.push_str(end);
                changes.push(format!("{key} {old:?} -> {want}"));
            }
            None => out.push_str(raw),
        }
    }
    let missing: Vec<_> = WAAGENT_SETTINGS.iter().filter(|(k, _)| !seen.contains(k)).collect();
    if !missing.is_empty() {
        let nl = if text.contains("\r\n") { "\r\n" } else { "\n" };
        if !out.is_empty() && !out.ends_with('\n') {
            out.push_str(nl);
        }
        if !text.lines().any(|l| l.trim_end() == WAAGENT_HEADER) {
            out.push_str(WAAGENT_HEADER);
            out.push_str(nl);
        }
        for (k, v) in missing {
            out.push_str(&format!("{k}={v}{nl}"));
            changes.push(format!("{k}={v} added"));
        }
    }
    (out, changes)
}

fn waagent_failure(path: &str, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(Failure::new("failure to configure WALinuxAgent").with("path", path).with("exception", e))
}

/// Make the image's WALinuxAgent leave provisioning to azprov (`[coexistence] waagent_conf`, default on): edits
/// `/etc/waagent.conf` in place (mode and owner kept), writing only when something changes. Run it before
/// WALinuxAgent starts (local phase, every boot: it is cheap and a no-op once done).
pub fn configure_waagent(sys: &dyn System, cfg: &CoexistenceConfig) -> Outcome {
    if !cfg.waagent_conf {
        return Outcome::Skipped(format!("[coexistence] waagent_conf = false: {WAAGENT_CONF} left as it is"));
    }
    let path = Path::new(WAAGENT_CONF);
    let Ok(info) = sys.stat(path) else {
        return Outcome::Skipped(format!("no {WAAGENT_CONF} (WALinuxAgent not installed)"));
    };
    if info.is_symlink || !info.is_file {
        return waagent_failure(WAAGENT_CONF, "not a regular file (a symlink is not followed)");
    }
    let text = match sys.read_to_string(path) {
        Ok(t) => t,
        Err(e) => return waagent_failure(WAAGENT_CONF, e),
    };
    let (new, changes) = edit_waagent_conf(&text);
    if changes.is_empty() {
        return Outcome::Done(format!("{WAAGENT_CONF} unchanged (already leaves provisioning to azprov)"));
    }
    if let Err(e) = sys.write_file(path, new.as_bytes(), info.mode, Some((info.uid, info.gid))) {
        return waagent_failure(WAAGENT_CONF, e);
    }
    Outcome::Done(format!("{WAAGENT_CONF}: {}", changes.join(", ")))
}

fn waagent_state_failure(path: &str, e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(Failure::new("failure to write WALinuxAgent state").with("path", path).with("exception", e))
}

/// Write `data` root-only unless the file already holds exactly that; `Ok(true)` when written.
fn write_if_changed(sys: &dyn System, path: &str, data: &[u8]) -> std::io::Result<bool> {
    let p = Path::new(path);
    if sys.read(p).is_ok_and(|old| old == data) && sys.stat(p).is_ok_and(|i| i.mode == 0o600) {
        return Ok(false);
    }
    sys.write_file(p, data, 0o600, Some((0, 0)))?;
    Ok(true)
}

/// After the platform accepted Ready, when WALinuxAgent is installed: what it expects to find after provisioning,
/// so that it only handles extensions — its OVF copy `/var/lib/waagent/ovf-env.xml` (from `ovf_env`, the raw or the
/// redacted document: password and customData are removed here by [`ovf::redact_secrets`]) and then its marker
/// `/var/lib/waagent/provisioned` holding the VM id (WALinuxAgent accepts either byte order; no newline, like
/// WALinuxAgent). Files 0600 root, the directory 0700 when created. Must run before WALinuxAgent starts.
pub fn waagent_after_ready(sys: &dyn System, vm_id: &str, ovf_env: Option<&[u8]>) -> Outcome {
    if !waagent_installed(sys) {
        return Outcome::Skipped("WALinuxAgent not installed".into());
    }
    if let Err(e) = sys.create_dir_all(Path::new(WAAGENT_LIB), 0o700, Some((0, 0))) {
        return waagent_state_failure(WAAGENT_LIB, e);
    }
    let mut notes = Vec::new();
    match ovf_env.map(ovf::redact_secrets) {
        None => notes.push(format!("no {WAAGENT_OVF} (no provisioning media)")),
        Some(None) => notes.push(format!("no {WAAGENT_OVF}: the document is not well-formed")),
        Some(Some(copy)) => match write_if_changed(sys, WAAGENT_OVF, &copy) {
            Ok(true) => notes.push(format!("{WAAGENT_OVF} written (no password, no customData)")),
            Ok(false) => notes.push(format!("{WAAGENT_OVF} unchanged")),
            Err(e) => return waagent_state_failure(WAAGENT_OVF, e),
        },
    }
    let vm_id = vm_id.trim().to_ascii_lowercase();
    let current = sys.read_to_string(Path::new(WAAGENT_PROVISIONED)).ok();
    if current.as_deref().is_some_and(|c| identity::same_vm_id(c.trim(), &vm_id)) {
        notes.push(format!("{WAAGENT_PROVISIONED} already names this VM"));
    } else {
        match write_if_changed(sys, WAAGENT_PROVISIONED, vm_id.as_bytes()) {
            Ok(_) => notes.push(format!("{WAAGENT_PROVISIONED} = {vm_id}")),
            Err(e) => return waagent_state_failure(WAAGENT_PROVISIONED, e),
        }
    }
    Outcome::Done(format!("WALinuxAgent: {}", notes.join("; ")))
}

/// OVF `ProvisionGuestAgent=false` (VM created without the VM agent): touch `/var/lib/waagent/disable_agent` so an
/// installed WALinuxAgent sleeps instead of handling extensions, as WALinuxAgent itself does. Call it only for that
/// OVF value, before WALinuxAgent starts (local phase, once per VM id). An existing file is never removed.
pub fn disable_guest_agent(sys: &dyn System) -> Outcome {
    if !waagent_installed(sys) {
        return Outcome::Skipped("WALinuxAgent not installed".into());
    }
    if sys.exists(Path::new(WAAGENT_DISABLE_AGENT)) {
        return Outcome::Done(format!("{WAAGENT_DISABLE_AGENT} already present"));
    }
    let written = sys
        .create_dir_all(Path::new(WAAGENT_LIB), 0o700, Some((0, 0)))
        .and_then(|_| sys.write_file(Path::new(WAAGENT_DISABLE_AGENT), b"", 0o600, Some((0, 0))));
    match written {
        Ok(()) => Outcome::Done(format!("{WAAGENT_DISABLE_AGENT} created (ProvisionGuestAgent=false)")),
        Err(e) => waagent_state_failure(WAAGENT_DISABLE_AGENT, e),
    }
}

// ---- guest proxy agent ----

pub const PROXY_AGENT: &str = "azure-proxy-agent";

/// The last 200 characters of command output, on one line.
fn tail(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ");
    let n = s.chars().count();
    s.chars().skip(n.saturating_sub(200)).collect()
}

/// `ProvisionGuestProxyAgent=true` (platform.md §4.3): run `azure-proxy-agent --status --wait <secs>` and return
/// its answer once the proxy is ready; before any IMDS or wireserver request. Missing program → `azure-proxy-agent
/// not found`; a non-zero exit (or the process outliving the wait by 30 s) → `azure-proxy-agent status failure`
/// with `exit_code`, `stdout` and `stderr` (tails) as supporting data.
pub fn wait_proxy_agent(sys: &dyn System, timeout_secs: u64) -> Result<String, Failure> {
    let not_found = || Failure::new("azure-proxy-agent not found");
    if !sys.has_program(PROXY_AGENT) {
        return Err(not_found());
    }
    let secs = timeout_secs.to_string();
    let mut cmd = Command::new(PROXY_AGENT, &["--status", "--wait", &secs]);
    cmd.timeout = Duration::from_secs(timeout_secs.saturating_add(30));
    let failure = || Failure::new("azure-proxy-agent status failure");
    match sys.run(&cmd) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
        Err(e) => Err(failure().with("exception", e)),
        Ok(out) if out.success() => {
            let said = excerpt(&out.stdout);
            Ok(if said.is_empty() { "azure-proxy-agent is ready".into() } else { format!("azure-proxy-agent: {said}") })
        }
        Ok(out) => {
            let code = out.status.map_or_else(|| "none".to_string(), |c| c.to_string());
            let mut f = failure().with("exit_code", code);
            if out.timed_out {
                f = f.with("timed_out", "true");
            }
            Err(f.with("stdout", tail(&out.stdout)).with("stderr", tail(&out.stderr)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn sandbox() -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }
    fn put(dir: &tempfile::TempDir, path: &str, text: &str) {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    fn link(dir: &tempfile::TempDir, path: &str, target: &str) {
        let p = dir.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    }
    fn read(dir: &tempfile::TempDir, path: &str) -> String {
        std::fs::read_to_string(dir.path().join(path.trim_start_matches('/'))).unwrap()
    }
    fn mode(dir: &tempfile::TempDir, path: &str) -> u32 {
        std::fs::metadata(dir.path().join(path.trim_start_matches('/'))).unwrap().permissions().mode() & 0o7777
    }
    fn exists(dir: &tempfile::TempDir, path: &str) -> bool {
        dir.path().join(path.trim_start_matches('/')).symlink_metadata().is_ok()
    }
    const WANTS: &str = "/etc/systemd/system/cloud-init.target.wants/cloud-init-local.service";
    /// cloud-init installed and its local unit enabled the Debian way; no datasource_list anywhere.
    fn cloud_init_image() -> (tempfile::TempDir, RecordingSystem) {
        let (dir, sys) = sandbox();
        put(&dir, "/usr/bin/cloud-init", "#!/usr/bin/python3\n");
        put(&dir, "/lib/systemd/system/cloud-init-local.service", "[Unit]\nDescription=x\n");
        link(&dir, WANTS, "/lib/systemd/system/cloud-init-local.service");
        (dir, sys)
    }
    fn active(sys: &RecordingSystem) -> String {
        match cloud_init_status(sys) {
            CloudInitStatus::AzureActive(r) => r,
            other => panic!("expected active, got {other:?}"),
        }
    }
    fn inactive(sys: &RecordingSystem) -> String {
        match cloud_init_status(sys) {
            CloudInitStatus::Inactive(r) => r,
            other => panic!("expected inactive, got {other:?}"),
        }
    }

    // ---- cloud-init ----

    #[test]
    fn cloud_init_absent_or_enabled_with_default_datasources() {
        let (_dir, sys) = sandbox();
        assert_eq!(inactive(&sys), "cloud-init is not installed");
        assert_eq!(cloud_init_azure_active(&sys), None);
        let (_dir, sys) = cloud_init_image();
        let r = active(&sys);
        assert!(r.contains("(/usr/bin/cloud-init)") && r.contains(WANTS), "{r}");
        assert!(r.contains("datasource_list is not set (cloud-init's default list includes Azure)"), "{r}");
        assert_eq!(cloud_init_azure_active(&sys), Some(r));
        // never asks systemctl about a root that is not the running system
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn cloud_init_installed_only_as_configuration_counts() {
        let (dir, sys) = sandbox();
        put(&dir, "/etc/cloud/cloud.cfg", "users: [default]\n");
        link(&dir, "/etc/systemd/system/multi-user.target.wants/cloud-init-local.service", "/x");
        assert!(active(&sys).contains("(/etc/cloud/cloud.cfg)"));
    }

    #[test]
    fn cloud_init_unit_not_enabled_or_masked() {
        let (dir, sys) = cloud_init_image();
        std::fs::remove_file(dir.path().join(WANTS.trim_start_matches('/'))).unwrap();
        assert!(inactive(&sys).contains("cloud-init-local.service is not enabled"), "{}", inactive(&sys));
        // a wants link to /dev/null enables nothing
        link(&dir, WANTS, "/dev/null");
        assert!(inactive(&sys).contains("is not enabled"));

        // masked in /etc (symlink to /dev/null) beats an enablement link
        let (dir, sys) = cloud_init_image();
        link(&dir, "/etc/systemd/system/cloud-init-local.service", "/dev/null");
        assert_eq!(inactive(&sys), "cloud-init-local.service is masked (/etc/systemd/system/cloud-init-local.service)");
        // masked at run time, by an empty file
        let (dir, sys) = cloud_init_image();
        put(&dir, "/run/systemd/system/cloud-init-local.service", "");
        assert!(inactive(&sys).contains("is masked (/run/systemd/system/cloud-init-local.service)"));
        // an override file with content in /etc is not a mask
        let (dir, sys) = cloud_init_image();
        put(&dir, "/etc/systemd/system/cloud-init-local.service", "[Unit]\n");
        active(&sys);
    }

    #[test]
    fn cloud_init_enabled_from_vendor_directories() {
        for wants in [
            "/usr/lib/systemd/system/cloud-init.target.wants/cloud-init-local.service",
            "/lib/systemd/system/multi-user.target.wants/cloud-init-local.service",
            "/run/systemd/system/sysinit.target.requires/cloud-init-local.service",
        ] {
            let (dir, sys) = sandbox();
            put(&dir, "/usr/bin/cloud-init", "");
            link(&dir, wants, "../cloud-init-local.service");
            assert!(active(&sys).contains(wants), "{wants}");
        }
    }

    #[test]
    fn cloud_init_disabled_by_file_or_kernel_command_line() {
        let (dir, sys) = cloud_init_image();
        put(&dir, "/etc/cloud/cloud-init.disabled", "");
        assert_eq!(inactive(&sys), "cloud-init is disabled by /etc/cloud/cloud-init.disabled");

        let (dir, sys) = cloud_init_image();
        put(&dir, "/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro cloud-init=disabled console=ttyS0\n");
        assert!(inactive(&sys).contains("cloud-init=disabled on the kernel command line"));
        // a similar token is not the switch
        put(&dir, "/proc/cmdline", "root=/dev/sda1 xcloud-init=disabled cloud-init=enabled\n");
        active(&sys);
    }

    #[test]
    fn cloud_init_datasource_list_from_files_last_one_wins() {
        let (dir, sys) = cloud_init_image();
        put(&dir, "/etc/cloud/cloud.cfg", "datasource_list: [ NoCloud, Azure, None ]\n");
        assert!(
            active(&sys).contains("datasource_list in /etc/cloud/cloud.cfg includes Azure ([ NoCloud, Azure, None ])")
        );
        // a drop-in replaces it
        put(
            &dir,
            "/etc/cloud/cloud.cfg.d/99-no-azure.cfg",
            "# keep cloud-init for config only\ndatasource_list: [ None ]\n",
        );
        assert_eq!(
            inactive(&sys),
            "cloud-init's datasource_list in /etc/cloud/cloud.cfg.d/99-no-azure.cfg is [ None ], without Azure"
        );
        // lexical order: 99 beats 90 whatever the creation order
        put(&dir, "/etc/cloud/cloud.cfg.d/90_dpkg.cfg", "datasource_list: [ Azure ]\n");
        inactive(&sys);
        // only *.cfg files count
        put(&dir, "/etc/cloud/cloud.cfg.d/99a.cfg.dpkg-old", "datasource_list: [ Azure ]\n");
        put(&dir, "/etc/cloud/cloud.cfg.d/README", "datasource_list: [ Azure ]\n");
        inactive(&sys);
        put(&dir, "/etc/cloud/cloud.cfg.d/99z.cfg", "datasource_list:\n  - 'Azure'\n");
        assert!(active(&sys).contains("/etc/cloud/cloud.cfg.d/99z.cfg includes Azure"));
        // a later empty list means the default list, which includes Azure
        put(&dir, "/etc/cloud/cloud.cfg.d/99zz.cfg", "datasource_list: []\n");
        assert!(active(&sys).contains("datasource_list is empty in /etc/cloud/cloud.cfg.d/99zz.cfg"));
        // files that do not mention the key leave the last setting alone
        put(&dir, "/etc/cloud/cloud.cfg.d/99zzz.cfg", "datasource:\n  Azure:\n    apply_network_config: false\n");
        assert!(active(&sys).contains("99zz.cfg"));
    }

    #[test]
    fn cloud_init_datasource_from_kernel_command_line() {
        let (dir, sys) = cloud_init_image();
        put(&dir, "/etc/cloud/cloud.cfg", "datasource_list: [ Azure ]\n");
        put(&dir, "/proc/cmdline", "ro ci.ds=NoCloud\n");
        assert_eq!(inactive(&sys), "the kernel command line selects the datasource NoCloud");
        put(&dir, "/proc/cmdline", "ro ci.datasource=Azure\n");
        assert!(active(&sys).contains("the kernel command line selects the datasource Azure"));
    }

    #[test]
    fn datasource_list_parser() {
        let p = |t: &str| parse_datasource_list(t);
        let v = |items: &[&str]| Some(items.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(p(""), None);
        assert_eq!(p("datasource:\n  Azure: {}\n"), None);
        assert_eq!(p("datasource_list: [ Azure, None ]\n"), v(&["Azure", "None"]));
        assert_eq!(p("datasource_list: [Azure,None]"), v(&["Azure", "None"]));
        assert_eq!(p("datasource_list: [ 'Azure', \"None\" ]  # the image's choice\n"), v(&["Azure", "None"]));
        assert_eq!(p("datasource_list:   [ Azure ]\r\n"), v(&["Azure"]));
        assert_eq!(p("\"datasource_list\": [ Azure ]\n"), v(&["Azure"]));
        // flow over several lines, with comments
        assert_eq!(
            p("datasource_list: [ NoCloud,  # local seed\n   Azure,\n   None ]\nother: 1\n"),
            v(&["NoCloud", "Azure", "None"])
        );
        // block style, indented or not, with comments, quotes and blank lines
        assert_eq!(
            p("a: 1\ndatasource_list:   # choose\n  - Azure  # first\n\n  # - NoCloud\n  - \"None\"\nb: 2\n- stray\n"),
            v(&["Azure", "None"])
        );
        assert_eq!(p("datasource_list:\n- Azure\n- None\n"), v(&["Azure", "None"]));
        assert_eq!(p("datasource_list:\n- Azure\n---\n- None\n"), v(&["Azure"]));
        // null and empty mean cloud-init's default
        for t in [
            "datasource_list: []\n",
            "datasource_list:\n",
            "datasource_list: ~\n",
            "datasource_list: null # x\n",
            "datasource_list:\nfoo: 1\n",
        ] {
            assert_eq!(p(t), Some(vec![]), "{t}");
        }
        // commented, nested, or a longer key: not the setting
        assert_eq!(p("# datasource_list: [ None ]\n"), None);
        assert_eq!(p("  datasource_list: [ None ]\n"), None);
        assert_eq!(p("system_info:\n  datasource_list: [ None ]\n"), None);
        assert_eq!(p("datasource_list_x: [ None ]\n"), None);
        assert_eq!(p("datasource_list:[ None ]\n"), None);
        // the last occurrence wins
        assert_eq!(p("datasource_list: [ Azure ]\ndatasource_list: [ None ]\n"), v(&["None"]));
        // an unterminated flow sequence is not a value
        assert_eq!(p("datasource_list: [ None\n"), None);
        // a '#' inside quotes or a word is no comment
        assert_eq!(p("datasource_list: [ 'a#b', c#d ]\n"), v(&["a#b", "c#d"]));
        // a scalar
        assert_eq!(p("datasource_list: Azure\n"), v(&["Azure"]));
    }

    #[test]
    fn cloud_init_live_asks_systemctl_first() {
        let (dir, sys) = cloud_init_image();
        sys.pretend_live();
        let answer = |word: &str, code: i32| CommandOutput {
            status: Some(code),
            stdout: format!("{word}\n").into_bytes(),
            ..Default::default()
        };
        sys.script("systemctl", answer("masked", 1));
        assert_eq!(inactive(&sys), "cloud-init-local.service is not enabled (systemctl is-enabled: masked)");
        let cmds = sys.commands();
        assert_eq!(cmds[0].display(), "systemctl is-enabled cloud-init-local.service");
        // enabled according to systemd although the files do not show it (e.g. a runtime enablement)
        std::fs::remove_file(dir.path().join(WANTS.trim_start_matches('/'))).unwrap();
        sys.script("systemctl", answer("enabled-runtime", 0));
        assert!(active(&sys).contains("systemctl is-enabled: enabled-runtime"));
        // unclear answers and a systemd that is not running fall back to the files
        sys.script("systemctl", answer("static", 0));
        assert!(inactive(&sys).contains("no link in any"));
        sys.script(
            "systemctl",
            CommandOutput {
                status: Some(1),
                stderr: b"System has not been booted with systemd".to_vec(),
                ..Default::default()
            },
        );
        link(&dir, WANTS, "/lib/systemd/system/cloud-init-local.service");
        assert!(active(&sys).contains(WANTS));
        sys.uninstall("systemctl");
        let before = sys.commands().len();
        assert!(active(&sys).contains(WANTS));
        assert_eq!(sys.commands().len(), before);
    }

    #[test]
    fn check_cloud_init_refuses_or_ignores() {
        let refuse = CoexistenceConfig::default();
        let ignore = CoexistenceConfig { cloud_init: CloudInitPolicy::Ignore, ..Default::default() };
        let (_dir, sys) = sandbox();
        assert_eq!(check_cloud_init(&sys, &refuse), Ok(None));
        assert_eq!(check_cloud_init(&sys, &ignore), Ok(None));
        let (dir, sys) = cloud_init_image();
        let msg = check_cloud_init(&sys, &refuse).unwrap_err();
        assert!(msg.starts_with("refusing to provision: cloud-init is installed"), "{msg}");
        for hint in [
            "nothing changed",
            "/etc/cloud/cloud-init.disabled",
            "datasource_list: [ None ]",
            "cloud_init = \"ignore\"",
            "[coexistence]",
        ] {
            assert!(msg.contains(hint), "{hint}: {msg}");
        }
        let warning = check_cloud_init(&sys, &ignore).unwrap().unwrap();
        assert!(warning.contains("going on because [coexistence] cloud_init = \"ignore\""), "{warning}");
        put(&dir, "/etc/cloud/cloud.cfg.d/99.cfg", "datasource_list: [ None ]\n");
        assert_eq!(check_cloud_init(&sys, &refuse), Ok(None));
    }

    // ---- WALinuxAgent configuration ----

    const CONF: &str = "\
#
# Microsoft Azure Linux Agent Configuration
#

# Enable extension handling.
Extensions.Enabled=y

# Which provisioning agent to use. Supported values are \"auto\" (default), \"waagent\",
# \"cloud-init\", or \"disabled\".
Provisioning.Agent=auto

# Password authentication for root account will be unavailable.
Provisioning.DeleteRootPassword=y

# Generate fresh host key pair.
Provisioning.RegenerateSshHostKeyPair = y   # regenerate

# Monitor host name changes and publish changes via DHCP requests.
#Provisioning.MonitorHostName=y

# Format if unformatted. If 'n', resource disk will not be mounted.
ResourceDisk.Format=\"y\"
ResourceDisk.Filesystem=ext4
ResourceDisk.MountPoint=/mnt/resource
ResourceDisk.EnableSwap=N
ResourceDisk.Format=y
";

    #[test]
    fn waagent_conf_edit_keeps_everything_else() {
        let (new, changes) = edit_waagent_conf(CONF);
        let expected = CONF
            .replace("Provisioning.Agent=auto", "Provisioning.Agent=disabled")
            .replace(
                "Provisioning.RegenerateSshHostKeyPair = y   # regenerate",
                "Provisioning.RegenerateSshHostKeyPair = n   # regenerate",
            )
            .replace("ResourceDisk.Format=\"y\"", "ResourceDisk.Format=n")
            .replace("ResourceDisk.Format=y\n", "ResourceDisk.Format=n\n")
            + WAAGENT_HEADER
            + "\nProvisioning.MonitorHostName=n\n";
        assert_eq!(new, expected);
        assert_eq!(
            changes,
            [
                "Provisioning.Agent \"auto\" -> disabled",
                "Provisioning.RegenerateSshHostKeyPair \"y\" -> n",
                "ResourceDisk.Format \"y\" -> n",
                "ResourceDisk.Format \"y\" -> n",
                "Provisioning.MonitorHostName=n added",
            ]
        );
        // the commented-out line stays commented; `N` already means no
        assert!(new.contains("#Provisioning.MonitorHostName=y\n") && new.contains("ResourceDisk.EnableSwap=N\n"));
        // idempotent
        let (again, none) = edit_waagent_conf(&new);
        assert_eq!((again.as_str(), none.len()), (new.as_str(), 0));
        // WALinuxAgent reads the result as wanted
        for (k, v) in WAAGENT_SETTINGS {
            let last = new.lines().filter_map(waagent_line).rfind(|(key, _)| key == k).unwrap();
            assert!(waagent_value_ok(v, last.1), "{k}: {last:?}");
        }
    }

    #[test]
    fn waagent_conf_edge_cases() {
        // empty file, no final newline, CRLF, legacy switch, case of the agent value
        let (new, _) = edit_waagent_conf("");
        assert!(new.starts_with(WAAGENT_HEADER) && new.ends_with("Provisioning.RegenerateSshHostKeyPair=n\n"), "{new}");
        assert_eq!(new.lines().count(), 6);
        let (new, _) = edit_waagent_conf("Extensions.Enabled=y");
        assert!(
            new.starts_with(&format!("Extensions.Enabled=y\n{WAAGENT_HEADER}\nProvisioning.Agent=disabled\n")),
            "{new}"
        );
        let (new, _) = edit_waagent_conf("Provisioning.Agent=Disabled\r\nProvisioning.Enabled=y\r\n");
        assert!(new.starts_with("Provisioning.Agent=disabled\r\nProvisioning.Enabled=n\r\n"), "{new}");
        assert!(
            new.ends_with("Provisioning.RegenerateSshHostKeyPair=n\r\n") && !new.replace("\r\n", "").contains('\n')
        );
        // the legacy switch is never added
        assert!(!edit_waagent_conf("").0.contains("Provisioning.Enabled"));
        // a value with a comment and no space before it
        assert_eq!(with_value("ResourceDisk.Format=y# keep", "n"), "ResourceDisk.Format=n # keep");
        assert_eq!(with_value("  ResourceDisk.Format =  y  ", "n"), "  ResourceDisk.Format =  n");
        // a line with leading white space is a setting for WALinuxAgent, `  #Key=` is not our key
        let (new, changes) = edit_waagent_conf("  #Provisioning.Agent=auto\n");
        assert!(new.starts_with("  #Provisioning.Agent=auto\n") && changes.iter().all(|c| c.ends_with("added")));
    }

    #[test]
    fn configure_waagent_in_place() {
        let (dir, sys) = sandbox();
        let cfg = CoexistenceConfig::default();
        let out = configure_waagent(&sys, &cfg);
        assert_eq!(out, Outcome::Skipped("no /etc/waagent.conf (WALinuxAgent not installed)".into()));
        assert!(!exists(&dir, "/etc/waagent.conf"));

        put(&dir, "/etc/waagent.conf", CONF);
        std::fs::set_permissions(dir.path().join("etc/waagent.conf"), PermissionsExt::from_mode(0o640)).unwrap();
        let off = CoexistenceConfig { waagent_conf: false, ..Default::default() };
        assert!(matches!(configure_waagent(&sys, &off), Outcome::Skipped(r) if r.contains("waagent_conf = false")));
        assert_eq!(read(&dir, "/etc/waagent.conf"), CONF);

        let out = configure_waagent(&sys, &cfg);
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        assert!(
            d.starts_with("/etc/waagent.conf: Provisioning.Agent \"auto\" -> disabled") && d.contains("added"),
            "{d}"
        );
        assert_eq!(read(&dir, "/etc/waagent.conf"), edit_waagent_conf(CONF).0);
        assert_eq!(mode(&dir, "/etc/waagent.conf"), 0o640);
        // no write when nothing changes
        let ino = std::fs::metadata(dir.path().join("etc/waagent.conf")).unwrap().ino();
        assert!(matches!(configure_waagent(&sys, &cfg), Outcome::Done(d) if d.contains("unchanged")));
        assert_eq!(std::fs::metadata(dir.path().join("etc/waagent.conf")).unwrap().ino(), ino);
    }

    #[test]
    fn configure_waagent_refuses_a_symlink() {
        let (dir, sys) = sandbox();
        put(&dir, "/etc/waagent.conf.real", "Provisioning.Agent=auto\n");
        link(&dir, "/etc/waagent.conf", "waagent.conf.real");
        let out = configure_waagent(&sys, &CoexistenceConfig::default());
        let Outcome::Failed(f) = out else { panic!("{out:?}") };
        assert_eq!(f.reason, "failure to configure WALinuxAgent");
        assert_eq!(read(&dir, "/etc/waagent.conf.real"), "Provisioning.Agent=auto\n");
    }

    // ---- WALinuxAgent state ----

    const VM_ID: &str = "d0df4c54-4ecb-4a4b-9954-5bdf3ed5c3b8";
    const OVF: &str = "<Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\" xmlns:wa=\"http://schemas.microsoft.com/windowsazure\"><wa:ProvisioningSection><LinuxProvisioningConfigurationSet><HostName>h</HostName><UserName>u</UserName><UserPassword>s3cret!</UserPassword><CustomData>c2VjcmV0</CustomData></LinuxProvisioningConfigurationSet></wa:ProvisioningSection></Environment>";

    #[test]
    fn waagent_state_only_when_installed() {
        let (dir, sys) = sandbox();
        assert_eq!(
            waagent_after_ready(&sys, VM_ID, Some(OVF.as_bytes())),
            Outcome::Skipped("WALinuxAgent not installed".into())
        );
        assert_eq!(disable_guest_agent(&sys), Outcome::Skipped("WALinuxAgent not installed".into()));
        assert!(!exists(&dir, "/var/lib/waagent"));
    }

    #[test]
    fn waagent_state_files_and_modes() {
        let (dir, sys) = sandbox();
        put(&dir, "/usr/sbin/waagent", "#!/usr/bin/python3\n");
        let out = waagent_after_ready(&sys, &VM_ID.to_uppercase(), Some(OVF.as_bytes()));
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        assert!(d.contains("ovf-env.xml written (no password, no customData)") && d.contains(VM_ID), "{d}");
        assert_eq!(read(&dir, WAAGENT_PROVISIONED), VM_ID);
        let copy = read(&dir, WAAGENT_OVF);
        assert!(!copy.contains("s3cret") && !copy.contains("c2VjcmV0"), "{copy}");
        assert!(
            copy.contains("<UserPassword>REDACTED</UserPassword><CustomData></CustomData>")
                && copy.contains("<UserName>u</UserName>")
        );
        assert_eq!(mode(&dir, WAAGENT_LIB), 0o700);
        assert_eq!(mode(&dir, WAAGENT_PROVISIONED), 0o600);
        assert_eq!(mode(&dir, WAAGENT_OVF), 0o600);
        let meta = std::fs::metadata(dir.path().join("var/lib/waagent/ovf-env.xml")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));

        // again: nothing rewritten
        let ino = |p: &str| std::fs::metadata(dir.path().join(p.trim_start_matches('/'))).unwrap().ino();
        let (a, b) = (ino(WAAGENT_OVF), ino(WAAGENT_PROVISIONED));
        let out = waagent_after_ready(&sys, VM_ID, Some(ovf::redact(OVF.as_bytes()).as_slice()));
        assert!(
            matches!(&out, Outcome::Done(d) if d.contains("ovf-env.xml unchanged") && d.contains("already names this VM")),
            "{out:?}"
        );
        assert_eq!((ino(WAAGENT_OVF), ino(WAAGENT_PROVISIONED)), (a, b));

        // the marker in the other byte order (what WALinuxAgent writes on Gen2) is kept
        put(&dir, WAAGENT_PROVISIONED, "544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8");
        waagent_after_ready(&sys, VM_ID, None);
        assert_eq!(read(&dir, WAAGENT_PROVISIONED), "544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8");
        // another VM's marker (captured without deprovisioning) is replaced
        put(&dir, WAAGENT_PROVISIONED, "00000000-1111-2222-3333-444444444444\n");
        let out = waagent_after_ready(&sys, VM_ID, None);
        assert!(
            matches!(&out, Outcome::Done(d) if d.contains("no /var/lib/waagent/ovf-env.xml (no provisioning media)")),
            "{out:?}"
        );
        assert_eq!(read(&dir, WAAGENT_PROVISIONED), VM_ID);
        assert_eq!(mode(&dir, WAAGENT_PROVISIONED), 0o600);
    }

    #[test]
    fn waagent_state_without_a_well_formed_ovf() {
        let (dir, sys) = sandbox();
        put(&dir, "/etc/waagent.conf", "");
        std::fs::create_dir_all(dir.path().join("var/lib/waagent")).unwrap();
        std::fs::set_permissions(dir.path().join("var/lib/waagent"), PermissionsExt::from_mode(0o755)).unwrap();
        let out = waagent_after_ready(&sys, VM_ID, Some(b"<Environment><UserPassword>x</Environment>"));
        assert!(matches!(&out, Outcome::Done(d) if d.contains("not well-formed")), "{out:?}");
        assert!(!exists(&dir, WAAGENT_OVF));
        assert_eq!(read(&dir, WAAGENT_PROVISIONED), VM_ID);
        // an existing directory keeps its mode
        assert_eq!(mode(&dir, WAAGENT_LIB), 0o755);
    }

    #[test]
    fn disable_agent_marker() {
        let (dir, sys) = sandbox();
        put(&dir, "/etc/waagent.conf", "");
        assert_eq!(
            disable_guest_agent(&sys),
            Outcome::Done(format!("{WAAGENT_DISABLE_AGENT} created (ProvisionGuestAgent=false)"))
        );
        assert_eq!(read(&dir, WAAGENT_DISABLE_AGENT), "");
        assert_eq!((mode(&dir, WAAGENT_DISABLE_AGENT), mode(&dir, WAAGENT_LIB)), (0o600, 0o700));
        assert_eq!(disable_guest_agent(&sys), Outcome::Done(format!("{WAAGENT_DISABLE_AGENT} already present")));
    }

    // ---- guest proxy agent ----

    #[test]
    fn proxy_agent_missing() {
        let (_dir, sys) = sandbox();
        sys.uninstall(PROXY_AGENT);
        let f = wait_proxy_agent(&sys, 120).unwrap_err();
        assert_eq!(f, Failure::new("azure-proxy-agent not found"));
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn proxy_agent_ready() {
        let (_dir, sys) = sandbox();
        sys.script(PROXY_AGENT, CommandOutput { status: Some(0), stdout: b"Ready\n".to_vec(), ..Default::default() });
        assert_eq!(wait_proxy_agent(&sys, 120).unwrap(), "azure-proxy-agent: Ready");
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].display(), "azure-proxy-agent --status --wait 120");
        assert_eq!(cmds[0].timeout, Duration::from_secs(150));
        sys.script(PROXY_AGENT, CommandOutput { status: Some(0), ..Default::default() });
        assert_eq!(wait_proxy_agent(&sys, 5).unwrap(), "azure-proxy-agent is ready");
        assert_eq!(sys.commands()[1].display(), "azure-proxy-agent --status --wait 5");
    }

    #[test]
    fn proxy_agent_fails() {
        let (_dir, sys) = sandbox();
        let long = format!("{}the end of it", "x ".repeat(300));
        sys.script(
            PROXY_AGENT,
            CommandOutput {
                status: Some(1),
                stdout: b"not ready\n".to_vec(),
                stderr: long.into_bytes(),
                timed_out: false,
            },
        );
        let f = wait_proxy_agent(&sys, 120).unwrap_err();
        assert_eq!(f.reason, "azure-proxy-agent status failure");
        assert_eq!(f.supporting[0], ("exit_code".to_string(), "1".to_string()));
        assert_eq!(f.supporting[1], ("stdout".to_string(), "not ready".to_string()));
        let (k, stderr) = &f.supporting[2];
        assert!(k == "stderr" && stderr.ends_with("x the end of it") && stderr.chars().count() == 200, "{stderr}");
        // killed at the bound
        sys.script(PROXY_AGENT, CommandOutput { status: None, timed_out: true, ..Default::default() });
        let f = wait_proxy_agent(&sys, 1).unwrap_err();
        assert_eq!(f.to_string(), "azure-proxy-agent status failure exit_code=none timed_out=true stdout= stderr=");
    }
}
