//! Instance Metadata Service client (platform.md §4).

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use super::http::{HttpClient, Retry, RetryPolicy, TransportError};
use crate::report::Failure;
use crate::timeutil::{uuid4, Clock};

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// e.g. `http://169.254.169.254`
    pub base_url: String,
    /// Overall deadline from the first attempt (default 300 s).
    pub deadline: Duration,
    /// Pause between attempts (default 1 s, plus jitter).
    pub pause: Duration,
    /// Minimum spacing of request starts (default 200 ms: IMDS allows 5 requests per second).
    pub min_interval: Duration,
}

/// The preferred instance api-version (with `extended=true`).
pub const API_VERSION: &str = "2021-08-01";
/// The fallback after an HTTP 400 (no `extended`, no `userData`).
pub const FALLBACK_API_VERSION: &str = "2019-06-01";
/// Recommended per-request timeouts for the [`HttpClient`] used with IMDS (platform.md §4.3).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

impl ImdsConfig {
    /// Defaults of platform.md §4.3.
    pub fn new(base_url: impl Into<String>) -> Self {
        ImdsConfig {
            base_url: base_url.into(),
            deadline: Duration::from_secs(300),
            pause: Duration::from_secs(1),
            min_interval: Duration::from_millis(200),
        }
    }

    /// The retry policy: a constant pause (plus jitter) until the deadline.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: self.deadline,
            base_delay: self.pause,
            max_delay: self.pause,
            min_interval: self.min_interval,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImdsPublicKey {
    /// CR/LF removed and trimmed.
    pub key_data: String,
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Interface {
    /// 12 upper-case hex digits, no separators.
    pub mac: String,
    pub ipv4: Vec<String>,
}

/// The fields azprov uses from the instance document.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Instance {
    pub vm_id: Option<String>,
    /// True when `compute.osProfile` is present (absent on specialized disks).
    pub has_os_profile: bool,
    pub admin_username: Option<String>,
    pub computer_name: Option<String>,
    pub disable_password_authentication: Option<bool>,
    pub public_keys: Vec<ImdsPublicKey>,
    /// Base64 as given; never logged.
    #[serde(skip)]
    pub user_data: Option<String>,
    pub pps_type: Option<String>,
    pub has_custom_data: Option<bool>,
    pub interfaces: Vec<Interface>,
    pub vm_size: Option<String>,
    /// The api-version that answered (the fallback one lacks `extended` and `userData`).
    pub api_version: String,
    /// Dropped keys and other non-fatal findings.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImdsError {
    #[error("connection timeout querying IMDS")]
    ConnectTimeout { duration_s: f64 },
    #[error("connection error querying IMDS")]
    Connect { duration_s: f64, detail: String },
    #[error("read timeout querying IMDS")]
    ReadTimeout { duration_s: f64 },
    #[error("http error {code} querying IMDS")]
    Http { code: u16, duration_s: f64 },
    #[error("error parsing IMDS metadata")]
    Parse { detail: String },
    #[error("unexpected error querying IMDS")]
    Unexpected { detail: String },
}

impl ImdsError {
    /// Public reason + supporting data (platform.md §6.2).
    pub fn failure(&self) -> Failure {
        let f = Failure::new(self.to_string());
        match self {
            ImdsError::ConnectTimeout { duration_s } | ImdsError::ReadTimeout { duration_s } => {
                f.with("duration", format!("{duration_s:.1}"))
            }
            ImdsError::Connect { duration_s, detail } => {
                f.with("duration", format!("{duration_s:.1}")).with("exception", detail)
            }
            ImdsError::Http { code, duration_s } => {
                f.with("http_code", code).with("duration", format!("{duration_s:.1}"))
            }
            ImdsError::Parse { detail } | ImdsError::Unexpected { detail } => f.with("exception", detail),
        }
    }
}

/// Parse an instance document (tolerant: absent fields are `None`/empty; only a non-JSON body or a missing
/// `compute` object is an error). Invalid SSH keys are dropped with a warning.
pub fn parse_instance(bytes: &[u8], api_version: &str) -> Result<Instance, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let root = doc.as_object().ok_or("instance document is not a JSON object")?;
    let compute = root.get("compute").and_then(Value::as_object).ok_or("instance document has no compute object")?;
    let mut inst = Instance { api_version: api_version.to_string(), ..Instance::default() };

    inst.vm_id = text(compute.get("vmId"));
    inst.vm_size = text(compute.get("vmSize"));
    inst.user_data = compute.get("userData").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);

    if let Some(os) = compute.get("osProfile").and_then(Value::as_object) {
        inst.has_os_profile = true;
        inst.admin_username = text(os.get("adminUsername"));
        inst.computer_name = text(os.get("computerName"));
        match os.get("disablePasswordAuthentication") {
            None | Some(Value::Null) => {}
            Some(v) => match flag(v) {
                Some(b) => inst.disable_password_authentication = Some(b),
                None => inst.warnings.push(format!("ignoring osProfile.disablePasswordAuthentication={v}")),
            },
        }
    }

    if let Some(keys) = compute.get("publicKeys").and_then(Value::as_array) {
        for (i, k) in keys.iter().enumerate() {
            let raw = k.get("keyData").and_then(Value::as_str).unwrap_or("");
            let key_data: String = raw.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let key_data = key_data.trim().to_string();
            if key_data.is_empty() {
                inst.warnings.push(format!("dropping IMDS public key {i}: empty keyData"));
                continue;
            }
            if let Err(e) = validate_openssh_key(&key_data) {
                inst.warnings.push(format!("dropping IMDS public key {i}: {e}"));
                continue;
            }
            inst.public_keys.push(ImdsPublicKey { key_data, path: text(k.get("path")) });
        }
    }

    if let Some(ext) = root.get("extended").and_then(|e| e.get("compute")).and_then(Value::as_object) {
        inst.pps_type = text(ext.get("ppsType"));
        inst.has_custom_data = ext.get("hasCustomData").and_then(flag);
    }

    if let Some(ifaces) = root.get("network").and_then(|n| n.get("interface")).and_then(Value::as_array) {
        for (i, iface) in ifaces.iter().enumerate() {
            let Some(obj) = iface.as_object() else { continue };
            let raw_mac = obj.get("macAddress").and_then(Value::as_str).unwrap_or("");
            let Some(mac) = normalize_mac(raw_mac) else {
                inst.warnings.push(format!("ignoring network interface {i}: invalid macAddress {raw_mac:?}"));
                continue;
            };
            inst.interfaces.push(Interface { mac, ipv4: private_ipv4(obj) });
        }
    }

    for w in &inst.warnings {
        warn!("IMDS: {w}");
    }
    Ok(inst)
}

/// A trimmed, non-empty string field.
fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

/// A boolean given as JSON bool or as the string "true"/"false" (any case).
fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// `000D3A047598`, `00:0d:3a:04:75:98` or `00-0D-…` → `000D3A047598`.
fn normalize_mac(raw: &str) -> Option<String> {
    let hex: String = raw.trim().chars().filter(|c| *c != ':' && *c != '-').collect();
    (hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_ascii_uppercase())
}

fn private_ipv4(iface: &Map<String, Value>) -> Vec<String> {
    iface
        .get("ipv4")
        .and_then(|v| v.get("ipAddress"))
        .and_then(Value::as_array)
        .map(|addrs| addrs.iter().filter_map(|a| text(a.get("privateIpAddress"))).collect())
        .unwrap_or_default()
}

/// Key types OpenSSH accepts in `authorized_keys` (used to tell a key type from an options field).
const KEY_TYPES: &[&str] = &[
    "ssh-rsa",
    "ssh-dss",
    "ssh-ed25519",
    "ssh-ed448",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "sk-ssh-ed25519@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
];

/// Structural check of one OpenSSH public-key line (`authorized_keys` format):
/// `[options] <type> <base64 blob> [comment]`, where the blob decodes and starts with the SSH string `<type>`.
/// Does not check the key material itself.
pub fn validate_openssh_key(line: &str) -> Result<(), String> {
    let line = line.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if line.is_empty() {
        return Err("empty key line".into());
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("control character in key line".into());
    }
    let (first, rest) = split_token(line);
    match check_type_and_blob(first, rest) {
        Ok(()) => return Ok(()),
        Err(e) if KEY_TYPES.contains(&first) => return Err(e),
        Err(_) => {}
    }
    // The first field must be options.
    let rest = skip_options(line)?;
    let (ty, rest) = split_token(rest);
    if ty.is_empty() {
        return Err("no key type after options".into());
    }
    check_type_and_blob(ty, rest)
}

/// The first space/tab-separated token and the rest.
fn split_token(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches([' ', '\t']);
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// Skip an options field (`a,b="x y",c`), honouring double quotes and backslash escapes inside them.
fn skip_options(line: &str) -> Result<&str, String> {
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quote = false;
            }
        } else if c == '"' {
            in_quote = true;
        } else if c == ' ' || c == '\t' {
            return Ok(&line[i..]);
        }
    }
    if in_quote {
        Err("unterminated quote in key options".into())
    } else {
        Err("no key type and key data".into())
    }
}

fn check_type_and_blob(ty: &str, rest: &str) -> Result<(), String> {
    if ty.is_empty() || !ty.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '@' | '.' | '_')) {
        return Err("invalid key type".into());
    }
    let (b64, _comment) = split_token(rest);
    if b64.is_empty() {
        return Err(format!("no key data after type {ty}"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| format!("key data for {ty} is not valid base64"))?;
    let len = blob.get(..4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let embedded = len.and_then(|n| blob.get(4..4usize.saturating_add(n))).ok_or("key data is truncated")?;
    if embedded != ty.as_bytes() {
        return Err(format!("key data is for type {:?}, line says {ty}", String::from_utf8_lossy(embedded)));
    }
    if blob.len() <= 4 + embedded.len() {
        return Err(format!("key data for {ty} holds no key"));
    }
    Ok(())
}

/// Why the last attempt failed (what a deadline reports).
enum LastFailure {
    Http(u16),
    Transport(TransportError),
    Parse(String),
}

/// Fetch `/metadata/instance` with the policy of platform.md §4.3.
pub fn fetch_instance(client: &HttpClient, cfg: &ImdsConfig, clock: &dyn Clock) -> Result<Instance, ImdsError> {
    let base = cfg.base_url.trim_end_matches('/');
    let mut retry = Retry::new(&cfg.retry_policy(), clock);
    let mut api_version = API_VERSION;
    loop {
        let url = if api_version == API_VERSION {
            format!("{base}/metadata/instance?api-version={api_version}&extended=true")
        } else {
            format!("{base}/metadata/instance?api-version={api_version}")
        };
        let attempt = retry.pace();
        let request_id = uuid4();
        let headers =
            [("Metadata", "true"), ("x-ms-client-request-id", request_id.as_str()), ("User-Agent", crate::AGENT)];
        let result = client.get(&url, &headers);
        let (last, retry_after) = match result {
            Ok(resp) => {
                debug!(attempt, path = "/metadata/instance", api_version, status = resp.status, "IMDS answered");
                match resp.status {
                    200 => match parse_instance(&resp.body, api_version) {
                        Ok(inst) => return Ok(inst),
                        Err(e) => {
                            debug!(attempt, error = %e, "IMDS document unparseable");
                            (LastFailure::Parse(e), None)
                        }
                    },
                    400 if api_version == API_VERSION => {
                        debug!("IMDS rejected api-version {API_VERSION}; falling back to {FALLBACK_API_VERSION}");
                        api_version = FALLBACK_API_VERSION;
                        retry.reset();
                        continue;
                    }
                    404 | 410 | 500 => (LastFailure::Http(resp.status), None),
                    429 => (LastFailure::Http(429), resp.retry_after()),
                    503 => (LastFailure::Http(503), Some(resp.retry_after().unwrap_or(Duration::from_secs(1)))),
                    code => return Err(ImdsError::Http { code, duration_s: retry.elapsed().as_secs_f64() }),
                }
            }
            Err(TransportError::Other(detail)) => {
                debug!(attempt, path = "/metadata/instance", error = %detail, "IMDS request failed");
                return Err(ImdsError::Unexpected { detail });
            }
            Err(e) => {
                debug!(attempt, path = "/metadata/instance", error = %e, "IMDS request failed");
                (LastFailure::Transport(e), None)
            }
        };
        if !retry.backoff(retry_after) {
            return Err(last.into_error(retry.elapsed().as_secs_f64()));
        }
    }
}

impl LastFailure {
    /// The error a loop that gives up after this failure reports.
    fn into_error(self, duration_s: f64) -> ImdsError {
        match self {
            LastFailure::Http(code) => ImdsError::Http { code, duration_s },
            LastFailure::Parse(detail) => ImdsError::Parse { detail },
            LastFailure::Transport(TransportError::ConnectTimeout) => ImdsError::ConnectTimeout { duration_s },
            LastFailure::Transport(TransportError::ReadTimeout) => ImdsError::ReadTimeout { duration_s },
            LastFailure::Transport(TransportError::Connect(detail)) => ImdsError::Connect { duration_s, detail },
            LastFailure::Transport(TransportError::Other(detail)) => ImdsError::Unexpected { detail },
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// reprovisiondata (pre-provisioned VMs, platform.md §4.6 and §10)

/// The api-version of `/metadata/reprovisiondata`.
pub const REPROVISION_API_VERSION: &str = "2019-06-01";

/// How `/metadata/reprovisiondata` is polled while the VM waits in the pool.
#[derive(Debug, Clone)]
pub struct ReprovisionConfig {
    /// e.g. `http://169.254.169.254`
    pub base_url: String,
    /// Pause after the first failed poll (default 1 s; never less than that in production: a tight loop draws 429s).
    pub pause: Duration,
    /// The backoff doubles up to this pause (default 30 s), plus jitter.
    pub max_pause: Duration,
    /// Minimum spacing of request starts (default 200 ms, the IMDS rate limit).
    pub min_interval: Duration,
    /// Overall deadline from the first poll; `None` (the default): wait as long as the VM stays in the pool.
    pub deadline: Option<Duration>,
}

impl ReprovisionConfig {
    /// Defaults of platform.md §4.6: 1 s pause doubling to 30 s, no overall deadline.
    pub fn new(base_url: impl Into<String>) -> Self {
        ReprovisionConfig {
            base_url: base_url.into(),
            pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(30),
            min_interval: Duration::from_millis(200),
            deadline: None,
        }
    }

    /// The retry policy: exponential backoff from `pause` to `max_pause`, until `deadline` if any.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            deadline: self.deadline.unwrap_or(RetryPolicy::NO_DEADLINE),
            base_delay: self.pause,
            max_delay: self.max_pause.max(self.pause),
            min_interval: self.min_interval,
        }
    }
}

/// What to do after a connection error while polling `reprovisiondata`.
pub type OnConnectionError<'a> = dyn FnMut(&TransportError) -> std::ops::ControlFlow<()> + 'a;

/// Poll `GET {base}/metadata/reprovisiondata?api-version=2019-06-01` until it answers 200, and return the body —
/// the customer's `ovf-env.xml`, a UTF-8 BOM removed — for the OVF parser (platform.md §4.6).
///
/// * 404, 410, 429 and 5xx are retried with a pause of at least `cfg.pause`, doubling to `cfg.max_pause`, plus
///   jitter (a `Retry-After` is honoured within those bounds); a 200 with an empty body is retried too.
/// * A connection error (refused, unreachable, connect timeout) means the VM's network changed: `on_conn_error` is
///   called — the caller tears down and re-runs DHCP there — and polling goes on with a fresh backoff when it
///   returns `Continue`; `Break` gives up with that error.
/// * Read timeouts (the client's per-request timeout, 30 s in production) and other transport errors are retried.
/// * Other 4xx (e.g. 400: no `Metadata` header) are fatal at once.
/// * Without `cfg.deadline` it never gives up otherwise; with one, the last failure is returned when it passes.
///
/// The body holds the customer's secrets: it is never logged.
pub fn fetch_reprovision_data(
    client: &HttpClient,
    cfg: &ReprovisionConfig,
    clock: &dyn Clock,
    on_conn_error: &mut OnConnectionError<'_>,
) -> Result<Vec<u8>, ImdsError> {
    let url = format!(
        "{}/metadata/reprovisiondata?api-version={REPROVISION_API_VERSION}",
        cfg.base_url.trim_end_matches('/')
    );
    let path = "/metadata/reprovisiondata";
    let mut retry = Retry::new(&cfg.retry_policy(), clock);
    let max_pause = cfg.max_pause.max(cfg.pause);
    loop {
        let attempt = retry.pace();
        let request_id = uuid4();
        let headers =
            [("Metadata", "true"), ("x-ms-client-request-id", request_id.as_str()), ("User-Agent", crate::AGENT)];
        let (last, retry_after) = match client.get(&url, &headers) {
            Ok(resp) => {
                debug!(attempt, path, status = resp.status, "IMDS answered");
                match resp.status {
                    200 => {
                        let body = resp.body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&resp.body);
                        if !body.iter().all(u8::is_ascii_whitespace) {
                            debug!(
                                attempt,
                                bytes = body.len(),
                                elapsed_s = retry.elapsed().as_secs_f64(),
                                "reprovision data received"
                            );
                            return Ok(body.to_vec());
                        }
                        (LastFailure::Parse("empty reprovisiondata body".into()), None)
                    }
                    404 | 410 | 429 | 500..=599 => {
                        let ra = resp.retry_after().map(|ra| ra.clamp(cfg.pause, max_pause));
                        (LastFailure::Http(resp.status), ra)
                    }
                    code => return Err(ImdsError::Http { code, duration_s: retry.elapsed().as_secs_f64() }),
                }
            }
            Err(e @ (TransportError::Connect(_) | TransportError::ConnectTimeout)) => {
                debug!(attempt, path, error = %e, "IMDS unreachable: the network changed");
                if on_conn_error(&e).is_break() {
                    return Err(LastFailure::Transport(e).into_error(retry.elapsed().as_secs_f64()));
                }
                // a fresh start on the new network, still at least `pause` after this attempt
                retry.reset();
                (LastFailure::Transport(e), None)
            }
            Err(e) => {
                debug!(attempt, path, error = %e, "IMDS request failed");
                (LastFailure::Transport(e), None)
            }
        };
        if !retry.backoff(retry_after) {
            return Err(last.into_error(retry.elapsed().as_secs_f64()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::http::tests::{closed_port, reply, silent_server, FakeClock, Recorded, Scripted};
    use crate::timeutil::SystemClock;

    /// An OpenSSH public-key line of `ty` with `n` bytes of fake key material.
    fn key_line(ty: &str, n: usize, comment: &str) -> String {
        let mut blob = (ty.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(ty.as_bytes());
        blob.extend_from_slice(&(n as u32).to_be_bytes());
        blob.extend((0..n).map(|i| i as u8));
        format!("{ty} {} {comment}", base64::engine::general_purpose::STANDARD.encode(blob)).trim().to_string()
    }

    fn full_doc(keys: &[String]) -> String {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| serde_json::json!({"keyData": k, "path": "/home/azureuser/.ssh/authorized_keys"}))
            .collect();
        serde_json::json!({
          "compute": {
            "azEnvironment": "AzurePublicCloud", "location": "westeurope", "name": "web-01-vm", "osType": "Linux",
            "osProfile": { "adminUsername": " azureuser\n", "computerName": "web-01",
                           "disablePasswordAuthentication": "true" },
            "platformFaultDomain": "0",
            "publicKeys": keys,
            "userData": "I2Nsb3VkLWNvbmZpZw==", "vmId": "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf", "vmSize": "Standard_D2s_v5"
          },
          "extended": { "compute": { "hasCustomData": false, "ppsType": "None" } },
          "network": { "interface": [ {
            "macAddress": "000D3A047598",
            "ipv4": { "ipAddress": [ { "privateIpAddress": "10.0.0.4", "publicIpAddress": "" },
                                     { "privateIpAddress": "10.0.0.5", "publicIpAddress": "" } ],
                      "subnet": [ { "address": "10.0.0.0", "prefix": "24" } ] },
            "ipv6": { "ipAddress": [] } },
            { "macAddress": "00:0d:3a:04:75:99", "ipv4": { "ipAddress": [] } } ] }
        })
        .to_string()
    }

    #[test]
    fn parses_walinuxagent_fixture_without_os_profile() {
        let Some(bytes) = crate::testutil::fixture("imds/walinuxagent-imds-instance-valid.json") else { return };
        let inst = parse_instance(&bytes, API_VERSION).unwrap();
        assert!(!inst.has_os_profile);
        assert_eq!(inst.admin_username, None);
        assert_eq!(inst.vm_id.as_deref(), Some("e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e"));
        assert_eq!(inst.vm_size.as_deref(), Some("Standard_D2_V2"));
        assert_eq!(inst.interfaces, vec![Interface { mac: "000D3A3382E8".into(), ipv4: vec!["10.0.1.4".into()] }]);
        assert!(inst.public_keys.is_empty());
        assert_eq!(inst.pps_type, None);
        assert_eq!(inst.api_version, API_VERSION);
    }

    #[test]
    fn parses_full_document_with_crlf_key() {
        let good = key_line("ssh-ed25519", 32, "dev@laptop");
        let doc = full_doc(&[format!("{}\r\n", &good[..20]) + &good[20..] + "\r\n"]);
        let inst = parse_instance(doc.as_bytes(), API_VERSION).unwrap();
        assert!(inst.has_os_profile);
        assert_eq!(inst.admin_username.as_deref(), Some("azureuser"));
        assert_eq!(inst.computer_name.as_deref(), Some("web-01"));
        assert_eq!(inst.disable_password_authentication, Some(true));
        assert_eq!(
            inst.public_keys,
            vec![ImdsPublicKey { key_data: good, path: Some("/home/azureuser/.ssh/authorized_keys".into()) }]
        );
        assert_eq!(inst.user_data.as_deref(), Some("I2Nsb3VkLWNvbmZpZw=="));
        assert_eq!(inst.pps_type.as_deref(), Some("None"));
        assert_eq!(inst.has_custom_data, Some(false));
        assert_eq!(inst.vm_size.as_deref(), Some("Standard_D2s_v5"));
        assert_eq!(inst.vm_id.as_deref(), Some("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf"));
        assert_eq!(
            inst.interfaces,
            vec![
                Interface { mac: "000D3A047598".into(), ipv4: vec!["10.0.0.4".into(), "10.0.0.5".into()] },
                Interface { mac: "000D3A047599".into(), ipv4: vec![] },
            ]
        );
        assert!(inst.warnings.is_empty(), "{:?}", inst.warnings);
    }

    #[test]
    fn spec_example_key_is_accepted() {
        // platform.md §4.5 (abridged key material, but structurally valid).
        let doc = full_doc(&["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dev@laptop\r\n".into()]);
        let inst = parse_instance(doc.as_bytes(), API_VERSION).unwrap();
        assert_eq!(inst.public_keys[0].key_data, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dev@laptop");
    }

    #[test]
    fn bad_key_dropped_good_kept() {
        let good = key_line("ssh-rsa", 64, "");
        let mismatched = key_line("ssh-rsa", 64, "x").replacen("ssh-rsa", "ssh-ed25519", 1);
        let doc = full_doc(&["not a key".into(), good.clone(), mismatched, "".into()]);
        let inst = parse_instance(doc.as_bytes(), API_VERSION).unwrap();
        assert_eq!(inst.public_keys.len(), 1);
        assert_eq!(inst.public_keys[0].key_data, good);
        assert_eq!(inst.warnings.len(), 3, "{:?}", inst.warnings);
    }

    #[test]
    fn password_flag_variants_and_tolerance() {
        let doc = br#"{"compute":{"osProfile":{"adminUsername":"u","disablePasswordAuthentication":false}}}"#;
        let inst = parse_instance(doc, FALLBACK_API_VERSION).unwrap();
        assert_eq!(inst.disable_password_authentication, Some(false));
        assert_eq!(inst.api_version, FALLBACK_API_VERSION);
        let doc = br#"{"compute":{"osProfile":{"disablePasswordAuthentication":"False"}}}"#;
        assert_eq!(parse_instance(doc, API_VERSION).unwrap().disable_password_authentication, Some(false));
        let doc = br#"{"compute":{"osProfile":{"disablePasswordAuthentication":"maybe"}}}"#;
        let inst = parse_instance(doc, API_VERSION).unwrap();
        assert_eq!(inst.disable_password_authentication, None);
        assert_eq!(inst.warnings.len(), 1);
        // Wrong types and missing pieces are tolerated.
        let doc = br#"{"compute":{"vmId":5,"publicKeys":"x","osProfile":null},"network":{"interface":[{"macAddress":"zz"}]}}"#;
        let inst = parse_instance(doc, API_VERSION).unwrap();
        assert!(!inst.has_os_profile);
        assert_eq!(inst.vm_id, None);
        assert!(inst.interfaces.is_empty());
        // BOM.
        assert!(parse_instance(b"\xEF\xBB\xBF{\"compute\":{}}", API_VERSION).is_ok());
    }

    #[test]
    fn parse_errors() {
        assert!(parse_instance(b"", API_VERSION).is_err());
        assert!(parse_instance(b"<html>", API_VERSION).is_err());
        assert!(parse_instance(b"[]", API_VERSION).is_err());
        assert!(parse_instance(b"{\"network\":{}}", API_VERSION).is_err());
    }

    #[test]
    fn openssh_key_validation() {
        let k = key_line("ssh-ed25519", 32, "me@host with spaces");
        assert_eq!(validate_openssh_key(&k), Ok(()));
        assert_eq!(validate_openssh_key(&key_line("ecdsa-sha2-nistp256", 65, "")), Ok(()));
        assert_eq!(validate_openssh_key(&key_line("sk-ssh-ed25519@openssh.com", 40, "")), Ok(()));
        // Options, including quoted spaces and escaped quotes.
        assert_eq!(validate_openssh_key(&format!("no-pty,command=\"echo \\\"a b\\\"\" {k}")), Ok(()));
        assert_eq!(validate_openssh_key(&format!("from=\"10.0.0.0/8\"\t{k}")), Ok(()));
        // Tabs as separators.
        assert_eq!(validate_openssh_key(&k.replace(' ', "\t")), Ok(()));
        for bad in [
            "".to_string(),
            "ssh-rsa".into(),
            "ssh-rsa !!!notbase64".into(),
            "ssh-rsa AAAA".into(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5".into(), // type only, no key
            key_line("ssh-rsa", 10, "").replacen("ssh-rsa", "ssh-dss", 1),
            format!("command=\"unterminated {k}"),
            format!("no-pty {}", "AAAA"),
            format!("{k}\u{0}"),
            "hello world".into(),
        ] {
            assert!(validate_openssh_key(&bad).is_err(), "accepted {bad:?}");
        }
    }

    fn cfg(base: &str, deadline_ms: u64) -> ImdsConfig {
        ImdsConfig {
            base_url: base.to_string(),
            deadline: Duration::from_millis(deadline_ms),
            pause: Duration::from_millis(20),
            min_interval: Duration::from_millis(5),
        }
    }

    fn client() -> HttpClient {
        HttpClient::new(Duration::from_millis(300), Duration::from_millis(300))
    }

    const OK_DOC: &str = r#"{"compute":{"vmId":"abc","osProfile":{"adminUsername":"azureuser"}}}"#;

    /// Every IMDS request carries the mandatory and optional headers.
    fn assert_imds_headers(r: &Recorded) {
        assert_eq!(r.method, "GET");
        assert_eq!(r.header("Metadata"), Some("true"), "{r:?}");
        assert_eq!(r.header("User-Agent"), Some(crate::AGENT));
        let id = r.header("x-ms-client-request-id").unwrap_or("");
        assert_eq!(id.len(), 36, "{id}");
        assert!(r.header("X-Forwarded-For").is_none());
    }

    /// A server that answers 400 to requests without `Metadata: true`, like IMDS, then follows `script`.
    fn imds_server(script: Vec<(u16, &'static str)>) -> Scripted {
        Scripted::start(move |i, req| {
            if req.header("Metadata") != Some("true") {
                return reply(400, "missing Metadata header");
            }
            let (status, body) = script.get(i).copied().unwrap_or((500, "script exhausted"));
            reply(status, body)
        })
    }

    #[test]
    fn fetch_ok_first_try() {
        let srv = imds_server(vec![(200, OK_DOC)]);
        let inst = fetch_instance(&client(), &cfg(&srv.base, 2000), &SystemClock).unwrap();
        assert_eq!(inst.vm_id.as_deref(), Some("abc"));
        assert_eq!(inst.api_version, API_VERSION);
        let seen = srv.finish();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].url, "/metadata/instance?api-version=2021-08-01&extended=true");
        assert_imds_headers(&seen[0]);
    }

    #[test]
    fn fetch_400_falls_back_once() {
        let srv = imds_server(vec![(400, "bad version"), (200, OK_DOC)]);
        let inst = fetch_instance(&client(), &cfg(&srv.base, 2000), &SystemClock).unwrap();
        assert_eq!(inst.api_version, FALLBACK_API_VERSION);
        let seen = srv.finish();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[1].url, "/metadata/instance?api-version=2019-06-01");
        seen.iter().for_each(assert_imds_headers);
        assert_ne!(seen[0].header("x-ms-client-request-id"), seen[1].header("x-ms-client-request-id"));
    }

    #[test]
    fn fetch_400_on_fallback_is_fatal() {
        let srv = imds_server(vec![(400, ""), (400, ""), (200, OK_DOC)]);
        let e = fetch_instance(&client(), &cfg(&srv.base, 2000), &SystemClock).unwrap_err();
        assert!(matches!(e, ImdsError::Http { code: 400, .. }), "{e:?}");
        assert_eq!(srv.finish().len(), 2);
    }

    #[test]
    fn fetch_retries_410_429_and_bad_json() {
        let clock = FakeClock::new();
        let srv = imds_server(vec![(410, ""), (429, ""), (404, ""), (200, "{not json"), (200, OK_DOC)]);
        let mut c = cfg(&srv.base, 60_000);
        c.pause = Duration::from_secs(1);
        c.min_interval = Duration::from_millis(200);
        let inst = fetch_instance(&client(), &c, &clock).unwrap();
        assert_eq!(inst.vm_id.as_deref(), Some("abc"));
        assert_eq!(srv.finish().len(), 5);
        let sleeps = clock.sleeps();
        assert_eq!(sleeps.len(), 4, "{sleeps:?}");
        for s in sleeps {
            assert!(s >= Duration::from_secs(1) && s <= Duration::from_millis(1250), "{s:?}");
        }
    }

    #[test]
    fn fetch_503_honours_retry_after() {
        let clock = FakeClock::new();
        let srv = Scripted::start(|i, _| match i {
            0 => Some((503, vec![("Retry-After", "7".to_string())], String::new())),
            1 => reply(503, ""),
            _ => reply(200, OK_DOC),
        });
        let mut c = cfg(&srv.base, 60_000);
        c.pause = Duration::from_secs(2);
        fetch_instance(&client(), &c, &clock).unwrap();
        srv.finish();
        // Retry-After: 7 → 7 s; no header → the 1 s default.
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(7), Duration::from_secs(1)]);
    }

    #[test]
    fn fetch_retry_after_capped_to_deadline() {
        let clock = FakeClock::new();
        let srv = Scripted::start(|_, _| Some((503, vec![("Retry-After", "3600".to_string())], String::new())));
        let e = fetch_instance(&client(), &cfg(&srv.base, 5_000), &clock).unwrap_err();
        let seen = srv.finish();
        assert_eq!(seen.len(), 2);
        assert_eq!(clock.sleeps(), vec![Duration::from_secs(5)]);
        match e {
            ImdsError::Http { code: 503, duration_s } => assert!((duration_s - 5.0).abs() < 0.01, "{duration_s}"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn fetch_never_exceeds_five_requests_per_second() {
        let clock = FakeClock::new();
        let srv = imds_server(vec![(500, ""), (500, ""), (500, ""), (200, OK_DOC)]);
        let c = ImdsConfig {
            pause: Duration::ZERO,
            min_interval: Duration::from_millis(200),
            ..ImdsConfig::new(srv.base.clone())
        };
        fetch_instance(&client(), &c, &clock).unwrap();
        srv.finish();
        assert_eq!(clock.sleeps(), vec![Duration::from_millis(200); 3]);
    }

    #[test]
    fn fetch_500_until_deadline() {
        let srv = imds_server(vec![]);
        let start = std::time::Instant::now();
        let e = fetch_instance(&client(), &cfg(&srv.base, 300), &SystemClock).unwrap_err();
        let n = srv.finish().len();
        assert!(n >= 3, "{n}");
        match e {
            ImdsError::Http { code: 500, duration_s } => assert!((0.3..1.5).contains(&duration_s), "{duration_s}"),
            e => panic!("{e:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(e.failure().reason, "http error 500 querying IMDS");
    }

    #[test]
    fn fetch_bad_json_until_deadline_is_parse_error() {
        let srv = Scripted::start(|_, _| reply(200, "<html>"));
        let e = fetch_instance(&client(), &cfg(&srv.base, 150), &SystemClock).unwrap_err();
        srv.finish();
        assert!(matches!(e, ImdsError::Parse { .. }), "{e:?}");
        assert_eq!(e.to_string(), "error parsing IMDS metadata");
    }

    #[test]
    fn fetch_other_4xx_is_fatal_at_once() {
        let srv = imds_server(vec![(403, ""), (200, OK_DOC)]);
        let e = fetch_instance(&client(), &cfg(&srv.base, 2000), &SystemClock).unwrap_err();
        assert!(matches!(e, ImdsError::Http { code: 403, .. }), "{e:?}");
        assert_eq!(srv.finish().len(), 1);
    }

    #[test]
    fn fetch_read_timeout() {
        let port = silent_server(Duration::from_secs(2));
        let client = HttpClient::new(Duration::from_millis(300), Duration::from_millis(100));
        let e = fetch_instance(&client, &cfg(&format!("http://127.0.0.1:{port}"), 250), &SystemClock).unwrap_err();
        assert!(matches!(e, ImdsError::ReadTimeout { .. }), "{e:?}");
        assert_eq!(e.to_string(), "read timeout querying IMDS");
    }

    #[test]
    fn fetch_refused_is_connect_error() {
        let port = closed_port();
        let e = fetch_instance(&client(), &cfg(&format!("http://127.0.0.1:{port}"), 150), &SystemClock).unwrap_err();
        assert!(matches!(e, ImdsError::Connect { .. }), "{e:?}");
        assert_eq!(e.to_string(), "connection error querying IMDS");
    }
}

#[cfg(test)]
mod reprovision_tests {
    use std::ops::ControlFlow;
    use std::time::Duration;

    use super::*;
    use crate::platform::http::tests::{closed_port, reply, silent_server, FakeClock, Scripted};
    use crate::timeutil::SystemClock;

    const OVF: &str = "<?xml version=\"1.0\"?><Environment><HostName>customer</HostName></Environment>";

    fn client() -> HttpClient {
        HttpClient::new(Duration::from_millis(300), Duration::from_millis(300))
    }

    fn cfg(base: &str) -> ReprovisionConfig {
        ReprovisionConfig { max_pause: Duration::from_secs(4), ..ReprovisionConfig::new(base) }
    }

    fn never(_: &TransportError) -> ControlFlow<()> {
        panic!("no connection error expected")
    }

    #[test]
    fn defaults_have_no_deadline() {
        let c = ReprovisionConfig::new("http://169.254.169.254");
        assert_eq!(c.deadline, None);
        assert_eq!(c.pause, Duration::from_secs(1));
        assert_eq!(c.max_pause, Duration::from_secs(30));
        let p = c.retry_policy();
        assert_eq!(p.deadline, RetryPolicy::NO_DEADLINE);
        assert_eq!(p.max_delay, Duration::from_secs(30));
    }

    #[test]
    fn polls_through_404_410_429_5xx_with_capped_backoff() {
        let clock = FakeClock::new();
        let srv = Scripted::start(|i, req| {
            if req.header("Metadata") != Some("true") {
                return reply(400, "missing Metadata header");
            }
            match i {
                0..=2 => reply(404, "{\"error\":\"Not found\"}"),
                3 => reply(410, ""),
                4 => Some((429, vec![("Retry-After", "0".to_string())], String::new())),
                5 => reply(500, ""),
                6 => Some((503, vec![("Retry-After", "3600".to_string())], String::new())),
                7 => reply(502, ""),
                8 => reply(200, "  \n"),
                _ => reply(200, &format!("\u{feff}{OVF}")),
            }
        });
        let body = fetch_reprovision_data(&client(), &cfg(&srv.base), &clock, &mut never).unwrap();
        assert_eq!(body, OVF.as_bytes(), "BOM stripped");
        let seen = srv.finish();
        assert_eq!(seen.len(), 10);
        for r in &seen {
            assert_eq!(r.method, "GET");
            assert_eq!(r.url, "/metadata/reprovisiondata?api-version=2019-06-01");
            assert_eq!(r.header("Metadata"), Some("true"));
            assert_eq!(r.header("x-ms-client-request-id").map(str::len), Some(36));
        }
        let s: Vec<u64> = clock.sleeps().iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(s.len(), 9, "{s:?}");
        let within = |v: u64, base: u64| v >= base && v <= base + base / 4;
        assert!(within(s[0], 1000) && within(s[1], 2000) && within(s[2], 4000) && within(s[3], 4000), "{s:?}");
        // Retry-After 0 → at least the pause; 3600 → at most the cap; no jitter on either
        assert_eq!((s[4], s[6]), (1000, 4000), "{s:?}");
        assert!(s.iter().all(|v| (1000..=5000).contains(v)), "{s:?}");
    }

    #[test]
    fn other_4xx_is_fatal() {
        for code in [400u16, 403] {
            let srv = Scripted::start(move |_, _| reply(code, ""));
            let e = fetch_reprovision_data(&client(), &cfg(&srv.base), &FakeClock::new(), &mut never).unwrap_err();
            assert!(matches!(e, ImdsError::Http { code: c, .. } if c == code), "{e:?}");
            assert_eq!(srv.finish().len(), 1);
        }
    }

    #[test]
    fn optional_deadline_ends_the_wait() {
        let clock = FakeClock::new();
        let srv = Scripted::start(|_, _| reply(404, ""));
        let c = ReprovisionConfig { deadline: Some(Duration::from_secs(20)), ..cfg(&srv.base) };
        let e = fetch_reprovision_data(&client(), &c, &clock, &mut never).unwrap_err();
        let n = srv.finish().len();
        assert!(matches!(e, ImdsError::Http { code: 404, .. }), "{e:?}");
        // 1 + 2 + 4 + 4 + 4 + 4 (+ jitter) reaches 20 s after 5 to 7 pauses
        assert!((5..=8).contains(&n), "{n}");
        assert!(clock.sleeps().iter().sum::<Duration>() <= Duration::from_secs(20));
    }

    #[test]
    fn connection_error_calls_back_and_polls_again_on_the_new_network() {
        // IMDS is unreachable until the callback (the caller's DHCP) brings it up on the same address
        let port = closed_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut calls = 0;
        let mut server = None;
        let mut cb = |e: &TransportError| {
            assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
            calls += 1;
            if calls == 2 {
                let srv = tiny_http::Server::http(format!("127.0.0.1:{port}")).unwrap();
                server = Some(std::thread::spawn(move || {
                    let mut n = 0;
                    while let Ok(req) = srv.recv() {
                        n += 1;
                        let (code, body) = if n == 1 { (404, "") } else { (200, OVF) };
                        req.respond(tiny_http::Response::from_string(body).with_status_code(code)).unwrap();
                        if n == 2 {
                            break;
                        }
                    }
                    n
                }));
            }
            ControlFlow::Continue(())
        };
        let clock = FakeClock::new();
        let body = fetch_reprovision_data(&client(), &cfg(&base), &clock, &mut cb).unwrap();
        assert_eq!(body, OVF.as_bytes());
        assert_eq!(calls, 2);
        assert_eq!(server.unwrap().join().unwrap(), 2);
        // a fresh backoff after each network change: 1 s, 1 s, then 2 s after the 404
        let s = clock.sleeps();
        assert_eq!(s.len(), 3, "{s:?}");
        let within = |d: Duration, ms: u64| d >= Duration::from_millis(ms) && d <= Duration::from_millis(ms + ms / 4);
        assert!(within(s[0], 1000) && within(s[1], 1000) && within(s[2], 2000), "{s:?}");
    }

    #[test]
    fn connection_error_break_gives_up() {
        let base = format!("http://127.0.0.1:{}", closed_port());
        let mut calls = 0;
        let mut cb = |_: &TransportError| {
            calls += 1;
            if calls < 3 {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        };
        let e = fetch_reprovision_data(&client(), &cfg(&base), &FakeClock::new(), &mut cb).unwrap_err();
        assert!(matches!(e, ImdsError::Connect { .. }), "{e:?}");
        assert_eq!(calls, 3);
    }

    #[test]
    fn read_timeout_is_retried_without_callback() {
        let port = silent_server(Duration::from_secs(2));
        let c = ReprovisionConfig {
            pause: Duration::from_millis(10),
            max_pause: Duration::from_millis(10),
            min_interval: Duration::ZERO,
            deadline: Some(Duration::from_millis(250)),
            ..ReprovisionConfig::new(format!("http://127.0.0.1:{port}"))
        };
        let client = HttpClient::new(Duration::from_millis(300), Duration::from_millis(100));
        let e = fetch_reprovision_data(&client, &c, &SystemClock, &mut never).unwrap_err();
        assert!(matches!(e, ImdsError::ReadTimeout { .. }), "{e:?}");
    }

    #[test]
    fn simulator_pool_vm_answers_after_assignment() {
        use azprov_sim::{Simulator, VmDefinition};
        let pool = VmDefinition { pps_type: "Running".into(), hostname: "pool-1".into(), ..Default::default() };
        let vm =
            pool.clone().with_customer(VmDefinition { hostname: "web-01".into(), username: "alice".into(), ..pool });
        let sim = std::sync::Arc::new(Simulator::start(vm, azprov_sim::Faults::none()).unwrap());
        let before = fetch_instance(&client(), &ImdsConfig::new(sim.url()), &SystemClock).unwrap();
        assert_eq!(before.pps_type.as_deref(), Some("Running"));
        // the platform assigns the VM while the agent polls
        let assigner = {
            let sim = std::sync::Arc::clone(&sim);
            std::thread::spawn(move || {
                while sim.pps_status().reprovision_polls < 3 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                sim.assign().unwrap()
            })
        };
        let c = ReprovisionConfig {
            pause: Duration::from_millis(20),
            max_pause: Duration::from_millis(40),
            min_interval: Duration::ZERO,
            deadline: Some(Duration::from_secs(10)),
            ..ReprovisionConfig::new(sim.url())
        };
        let body = fetch_reprovision_data(&client(), &c, &SystemClock, &mut never).unwrap();
        assigner.join().unwrap();
        let env = crate::platform::ovf::parse(&body).unwrap();
        assert_eq!((env.hostname.as_str(), env.username.as_deref()), ("web-01", Some("alice")));
        assert!(!env.preprovisioned_vm);
        let st = sim.pps_status();
        assert!(st.reprovision_polls_pooled >= 3, "{st:?}");
        assert_eq!(st.reprovision_served, 1);
        // then IMDS again: ppsType must now be None
        let after = fetch_instance(&client(), &ImdsConfig::new(sim.url()), &SystemClock).unwrap();
        assert_eq!(after.pps_type.as_deref(), Some("None"));
        assert_eq!(after.computer_name.as_deref(), Some("web-01"));
    }
}
