//! Wireserver client (platform.md §5): goal state, health reports (XML default, JSON alternative).

use std::time::{Duration, Instant};

use quick_xml::events::Event;
use tracing::debug;

use super::http::{HttpClient, Response, Retry, RetryPolicy, TransportError};
use crate::report::Failure;
use crate::timeutil::Clock;

/// `x-ms-version` sent on every wireserver call except `?comp=versions`.
pub const X_MS_VERSION: &str = "2012-11-30";
/// `x-ms-agent-name`.
pub const AGENT_NAME: &str = "azprov";
/// The health description is cut to this many characters before escaping (platform.md §5.5).
pub const DESCRIPTION_MAX_CHARS: usize = 512;
/// How many unusable goal states (e.g. no `RoleInstance` yet shortly after boot) are tolerated in a row.
pub const GOAL_STATE_PARSE_RETRIES: u32 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthProtocol {
    /// `GET /machine/?comp=goalstate` + `POST /machine?comp=health` (default).
    Xml,
    /// `POST /provisioning/health`.
    Json,
}

#[derive(Debug, Clone)]
pub struct WireConfig {
    /// e.g. `http://168.63.129.16`
    pub base_url: String,
    pub protocol: HealthProtocol,
    /// Give up at this instant (20 minutes after provisioning started).
    pub deadline: Instant,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Pause after the first failure (default 1 s), doubling up to `max_delay` (default 5 s), plus jitter.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Minimum spacing between attempt starts (default 100 ms; guards the immediate retry after a 410).
    pub min_interval: Duration,
}

impl WireConfig {
    /// Defaults of platform.md §5.2 (connect 5 s, read 60 s) with a short backoff.
    pub fn new(base_url: impl Into<String>, protocol: HealthProtocol, deadline: Instant) -> Self {
        WireConfig {
            base_url: base_url.into(),
            protocol,
            deadline,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            min_interval: Duration::from_millis(100),
        }
    }

    /// An [`HttpClient`] with this configuration's timeouts.
    pub fn client(&self) -> HttpClient {
        HttpClient::new(self.connect_timeout, self.read_timeout)
    }

    /// The retry policy, its deadline measured from `now`.
    pub fn retry_policy(&self, now: Instant) -> RetryPolicy {
        RetryPolicy {
            deadline: self.deadline.saturating_duration_since(now),
            base_delay: self.base_delay,
            max_delay: self.max_delay,
            min_interval: self.min_interval,
        }
    }

    fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoalState {
    pub incarnation: String,
    pub container_id: String,
    pub instance_id: String,
    /// Absolute URL, entities decoded.
    pub certificates_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady { sub_status: String, description: String },
}

/// What happened while reporting.
#[derive(Debug, Clone)]
pub struct ReportOutcome {
    pub attempts: u32,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("timeout reporting health to the wireserver: {last}")]
    Deadline { last: String },
    #[error("http error {code} from the wireserver")]
    Http { code: u16 },
    #[error("error parsing wireserver goal state: {0}")]
    Parse(String),
    /// A success code other than the one the endpoint promises (role properties: exactly 202).
    #[error("unexpected http status {code} from the wireserver (expected {expected})")]
    UnexpectedStatus { code: u16, expected: u16 },
    #[error("timeout sending role properties to the wireserver: {last}")]
    RolePropertiesDeadline { last: String },
}

impl WireError {
    pub fn failure(&self) -> Failure {
        Failure::new(self.to_string())
    }
}

/// Parse a goal state (platform.md §5.4): local element names, UTF-8 BOM tolerated, entities decoded.
/// `Incarnation`, `Container/ContainerId` and `RoleInstanceList/RoleInstance/InstanceId` are required; the error
/// names the first missing one.
pub fn parse_goal_state(bytes: &[u8]) -> Result<GoalState, String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| format!("goal state is not UTF-8: {e}"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut path: Vec<String> = Vec::new();
    let mut buf = String::new();
    let mut incarnation = None;
    let mut container_id = None;
    let mut saw_container = false;
    let mut saw_role_instance = false;
    let mut instance_id = None;
    let mut certificates_url = None;
    loop {
        let event = reader.read_event().map_err(|e| format!("malformed goal state XML: {e}"))?;
        match event {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                path.push(name);
                buf.clear();
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                match p.as_slice() {
                    [root] if *root != "GoalState" => return Err(format!("root element is {root}, not GoalState")),
                    ["GoalState", "Container"] => saw_container = true,
                    ["GoalState", "Container", "RoleInstanceList", "RoleInstance"] => saw_role_instance = true,
                    _ => {}
                }
            }
            Event::Empty(e) => {
                let name = e.local_name();
                if path.is_empty() && name.as_ref() != b"GoalState" {
                    return Err(format!("root element is {}, not GoalState", String::from_utf8_lossy(name.as_ref())));
                }
                if path.len() == 1 && name.as_ref() == b"Container" {
                    saw_container = true;
                }
                if path.len() == 3 && path[1] == "Container" && name.as_ref() == b"RoleInstance" {
                    saw_role_instance = true;
                }
            }
            Event::Text(t) => {
                buf.push_str(&t.xml10_content().map_err(|e| format!("bad text in goal state: {e}"))?);
            }
            Event::CData(t) => {
                buf.push_str(&t.decode().map_err(|e| format!("bad CDATA in goal state: {e}"))?);
            }
            Event::GeneralRef(r) => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| format!("bad character reference: {e}"))? {
                    buf.push(c);
                } else {
                    let name = r.decode().map_err(|e| format!("bad entity reference: {e}"))?;
                    let v = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| format!("unknown entity &{name};"))?;
                    buf.push_str(v);
                }
            }
            Event::End(_) => {
                let value = buf.trim().to_string();
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                let slot = match p.as_slice() {
                    ["GoalState", "Incarnation"] => Some(&mut incarnation),
                    ["GoalState", "Container", "ContainerId"] => Some(&mut container_id),
                    ["GoalState", "Container", "RoleInstanceList", "RoleInstance", "InstanceId"] => {
                        Some(&mut instance_id)
                    }
                    ["GoalState", "Container", "RoleInstanceList", "RoleInstance", "Configuration", "Certificates"] => {
                        Some(&mut certificates_url)
                    }
                    _ => None,
                };
                if let Some(slot) = slot {
                    if slot.is_none() && !value.is_empty() {
                        *slot = Some(value);
                    }
                }
                path.pop();
                buf.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let incarnation = incarnation.ok_or("missing Incarnation")?;
    if !saw_container {
        return Err("missing Container".into());
    }
    let container_id = container_id.ok_or("missing ContainerId")?;
    if !saw_role_instance {
        return Err("missing RoleInstance".into());
    }
    let instance_id = instance_id.ok_or("missing InstanceId")?;
    Ok(GoalState { incarnation, container_id, instance_id, certificates_url })
}

/// Characters XML 1.0 allows (C0 controls other than TAB/LF/CR and U+FFFE/U+FFFF are dropped).
fn xml_char_ok(c: char) -> bool {
    !((c < ' ' && c != '\t' && c != '\n' && c != '\r') || c == '\u{FFFE}' || c == '\u{FFFF}')
}

/// Drop forbidden characters, then keep at most `max_chars` characters.
fn clean(s: &str, max_chars: usize) -> String {
    s.chars().filter(|c| xml_char_ok(*c)).take(max_chars).collect()
}

/// Escape XML text content.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn xml_text(s: &str) -> String {
    escape(&clean(s, usize::MAX))
}

/// The protocol versions the wireserver lists (`GET /?comp=versions`, sent without the x-ms headers). Diagnostics
/// only: called once after reporting failed, so the log says whether the endpoint speaks our version at all.
pub fn fetch_versions(client: &HttpClient, base_url: &str) -> Result<Vec<String>, String> {
    let url = format!("{}/?comp=versions", base_url.trim_end_matches('/'));
    let resp = client.get(&url, &[]).map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("http {}", resp.status));
    }
    let text = String::from_utf8_lossy(&resp.body);
    let mut out = Vec::new();
    let mut rest = text.as_ref();
    while let Some(i) = rest.find("<Version>") {
        let after = &rest[i + "<Version>".len()..];
        let Some(j) = after.find("</Version>") else { break };
        let v = after[..j].trim().to_string();
        if !out.contains(&v) {
            out.push(v);
        }
        rest = &after[j..];
    }
    Ok(out)
}

/// The XML health document for `POST /machine?comp=health` (escaped, description capped at 512 chars).
pub fn health_xml(goal: &GoalState, health: &Health) -> String {
    let role_health = match health {
        Health::Ready => "        <Health><State>Ready</State></Health>\n".to_string(),
        Health::NotReady { sub_status, description } => {
            let sub_status = clean(sub_status, usize::MAX);
            if sub_status.is_empty() {
                "        <Health><State>NotReady</State></Health>\n".to_string()
            } else {
                format!(
                    "        <Health>\n          <State>NotReady</State>\n          <Details>\n            \
                     <SubStatus>{}</SubStatus>\n            <Description>{}</Description>\n          </Details>\n        \
                     </Health>\n",
                    escape(&sub_status),
                    escape(&clean(description, DESCRIPTION_MAX_CHARS)),
                )
            }
        }
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n  \
         <GoalStateIncarnation>{}</GoalStateIncarnation>\n  \
         <Container>\n    \
         <ContainerId>{}</ContainerId>\n    \
         <RoleInstanceList>\n      \
         <Role>\n        \
         <InstanceId>{}</InstanceId>\n\
         {role_health}      \
         </Role>\n    \
         </RoleInstanceList>\n  \
         </Container>\n\
         </Health>\n",
        xml_text(&goal.incarnation),
        xml_text(&goal.container_id),
        xml_text(&goal.instance_id),
    )
}

/// The JSON body for `POST /provisioning/health` (the description gets the same 512-character cap).
pub fn health_json(health: &Health) -> String {
    let v = match health {
        Health::Ready => serde_json::json!({ "state": "Ready" }),
        Health::NotReady { sub_status, description } => serde_json::json!({
            "state": "NotReady",
            "details": {
                "subStatus": clean(sub_status, usize::MAX),
                "description": clean(description, DESCRIPTION_MAX_CHARS),
            }
        }),
    };
    v.to_string()
}

/// Escape an XML attribute value (double-quoted).
fn escape_attr(s: &str) -> String {
    escape(&clean(s, usize::MAX)).replace('"', "&quot;").replace('\'', "&apos;")
}

/// The role-properties document for `POST /machine?comp=roleProperties` (platform.md §5.7): the SSH host key
/// thumbprint as the role's `CertificateThumbprint` property; every value escaped.
pub fn role_properties_xml(goal: &GoalState, thumbprint: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <RoleProperties><Container><ContainerId>{}</ContainerId>\n  \
         <RoleInstances><RoleInstance><Id>{}</Id>\n    \
         <Properties><Property name=\"CertificateThumbprint\" value=\"{}\"/></Properties>\n  \
         </RoleInstance></RoleInstances></Container></RoleProperties>\n",
        xml_text(&goal.container_id),
        xml_text(&goal.instance_id),
        escape_attr(thumbprint),
    )
}

/// A failed attempt, classified.
enum Failed {
    /// Try again after a pause (`stale`: the goal state is outdated, 409/410: the first one retries at once).
    Retry {
        last: String,
        retry_after: Option<Duration>,
        stale: bool,
    },
    /// A 2xx goal state that is unusable (e.g. no `RoleInstance` yet).
    BadGoalState(String),
    Fatal(WireError),
}

/// The retry loop shared by every wireserver call.
struct Driver<'a> {
    retry: Retry<'a>,
    last: String,
    bad_goal_states: u32,
    prev_stale: bool,
}

impl<'a> Driver<'a> {
    fn new(cfg: &WireConfig, clock: &'a dyn Clock) -> Self {
        Driver {
            retry: Retry::new(&cfg.retry_policy(clock.now()), clock),
            last: String::new(),
            bad_goal_states: 0,
            prev_stale: false,
        }
    }

    /// After a failure: `Ok` → attempt again (after any pause), `Err` → give up.
    fn handle(&mut self, failed: Failed) -> Result<(), WireError> {
        match failed {
            Failed::Fatal(e) => Err(e),
            Failed::BadGoalState(msg) => {
                self.bad_goal_states += 1;
                if self.bad_goal_states >= GOAL_STATE_PARSE_RETRIES {
                    return Err(WireError::Parse(msg));
                }
                self.last = format!("unusable goal state: {msg}");
                self.prev_stale = false;
                self.pause(None)
            }
            Failed::Retry { last, retry_after, stale } => {
                self.last = last;
                let immediate = stale && !self.prev_stale && !self.retry.remaining().is_zero();
                self.prev_stale = stale;
                if immediate {
                    Ok(())
                } else {
                    self.pause(retry_after)
                }
            }
        }
    }

    fn pause(&mut self, retry_after: Option<Duration>) -> Result<(), WireError> {
        if self.retry.backoff(retry_after) {
            Ok(())
        } else {
            Err(WireError::Deadline { last: std::mem::take(&mut self.last) })
        }
    }
}

/// Which answers count as success.
#[derive(Debug, Clone, Copy)]
enum Accept {
    Any2xx,
    /// Exactly this code; any other 2xx is a fatal error.
    Exactly(u16),
}

/// Classify an HTTP answer: `Ok(())` for 2xx.
fn classify(what: &str, resp: &Response) -> Result<(), Failed> {
    classify_as(what, resp, Accept::Any2xx)
}

fn classify_as(what: &str, resp: &Response, accept: Accept) -> Result<(), Failed> {
    let code = resp.status;
    match code {
        200..=299 => match accept {
            Accept::Exactly(expected) if code != expected => {
                Err(Failed::Fatal(WireError::UnexpectedStatus { code, expected }))
            }
            _ => Ok(()),
        },
        409 | 410 => Err(Failed::Retry { last: format!("{what}: http {code}"), retry_after: None, stale: true }),
        403 | 404 | 408 | 429 | 500..=599 => {
            let retry_after = if code == 429 || code == 503 { resp.retry_after() } else { None };
            Err(Failed::Retry { last: format!("{what}: http {code}"), retry_after, stale: false })
        }
        _ => Err(Failed::Fatal(WireError::Http { code })),
    }
}

fn transport_failure(what: &str, e: TransportError) -> Failed {
    Failed::Retry { last: format!("{what}: {e}"), retry_after: None, stale: false }
}

const GOAL_STATE: &str = "GET /machine/?comp=goalstate";
const HEALTH_XML: &str = "POST /machine?comp=health";
const HEALTH_JSON: &str = "POST /provisioning/health";
const ROLE_PROPERTIES: &str = "POST /machine?comp=roleProperties";

/// One goal-state request.
fn goal_state_once(client: &HttpClient, cfg: &WireConfig, attempt: u32) -> Result<GoalState, Failed> {
    let url = format!("{}/machine/?comp=goalstate", cfg.base());
    let headers = [("x-ms-agent-name", AGENT_NAME), ("x-ms-version", X_MS_VERSION)];
    match client.get(&url, &headers) {
        Ok(resp) => {
            debug!(attempt, path = "/machine/?comp=goalstate", status = resp.status, "wireserver answered");
            classify(GOAL_STATE, &resp)?;
            parse_goal_state(&resp.body).map_err(Failed::BadGoalState)
        }
        Err(e) => {
            debug!(attempt, path = "/machine/?comp=goalstate", error = %e, "wireserver request failed");
            Err(transport_failure(GOAL_STATE, e))
        }
    }
}

/// Fetch the goal state, retrying as platform.md §5.2 says until `cfg.deadline`.
pub fn fetch_goal_state(client: &HttpClient, cfg: &WireConfig, clock: &dyn Clock) -> Result<GoalState, WireError> {
    let mut d = Driver::new(cfg, clock);
    loop {
        let attempt = d.retry.pace();
        match goal_state_once(client, cfg, attempt) {
            Ok(gs) => return Ok(gs),
            Err(f) => d.handle(f)?,
        }
    }
}

/// One POST, prepared for one attempt.
struct Post {
    url: String,
    headers: Vec<(&'static str, String)>,
    body: String,
}

/// Headers of the XML POSTs (platform.md §5.2).
fn xml_headers() -> Vec<(&'static str, String)> {
    vec![
        ("x-ms-agent-name", AGENT_NAME.to_string()),
        ("x-ms-version", X_MS_VERSION.to_string()),
        ("Content-Type", "text/xml;charset=utf-8".to_string()),
    ]
}

/// The retry loop of every wireserver POST: `prepare` builds each attempt's request (fetching a fresh goal state
/// when the document needs one; its failures are retried like the POST's), the answer is classified per
/// platform.md §5.2 (a 409/410 retries at once with a new goal state) until `cfg.deadline`.
/// `ReportOutcome::attempts` counts POSTs.
fn post_retrying(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    what: &str,
    accept: Accept,
    mut prepare: impl FnMut(u32) -> Result<Post, Failed>,
) -> Result<ReportOutcome, WireError> {
    let mut d = Driver::new(cfg, clock);
    let mut posts = 0u32;
    loop {
        let attempt = d.retry.pace();
        let post = match prepare(attempt) {
            Ok(p) => p,
            Err(f) => {
                d.handle(f)?;
                continue;
            }
        };
        d.bad_goal_states = 0;
        posts += 1;
        let headers: Vec<(&str, &str)> = post.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let failed = match client.post(&post.url, &headers, post.body.as_bytes()) {
            Ok(resp) => {
                debug!(attempt = posts, what, status = resp.status, "wireserver answered");
                match classify_as(what, &resp, accept) {
                    Ok(()) => return Ok(ReportOutcome { attempts: posts, status: resp.status }),
                    Err(f) => f,
                }
            }
            Err(e) => {
                debug!(attempt = posts, what, error = %e, "wireserver request failed");
                transport_failure(what, e)
            }
        };
        d.handle(failed)?;
    }
}

/// Report `health`, fetching a fresh goal state before each POST (XML protocol), retrying until `cfg.deadline`.
/// `ReportOutcome::attempts` counts health POSTs.
pub fn report_health(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    health: &Health,
) -> Result<ReportOutcome, WireError> {
    match cfg.protocol {
        HealthProtocol::Xml => post_retrying(client, cfg, clock, HEALTH_XML, Accept::Any2xx, |attempt| {
            let goal = goal_state_once(client, cfg, attempt)?;
            debug!(incarnation = %goal.incarnation, "posting XML health report");
            Ok(Post {
                url: format!("{}/machine?comp=health", cfg.base()),
                headers: xml_headers(),
                body: health_xml(&goal, health),
            })
        }),
        HealthProtocol::Json => {
            let agent = format!("{AGENT_NAME} v{}", crate::VERSION);
            post_retrying(client, cfg, clock, HEALTH_JSON, Accept::Any2xx, |_| {
                Ok(Post {
                    url: format!("{}/provisioning/health", cfg.base()),
                    headers: vec![
                        ("Content-Type", "application/json".into()),
                        ("x-ms-guest-agent-name", agent.clone()),
                    ],
                    body: health_json(health),
                })
            })
        }
    }
}

/// Send the SSH host key thumbprint as role properties (platform.md §5.7): a fresh goal state before each POST
/// (whatever `cfg.protocol` says: the document needs the container and instance ids), success is exactly HTTP
/// 202, retried like [`report_health`] until `cfg.deadline`. Call it only after Ready was accepted, with a short
/// deadline of its own: it must never delay Ready.
pub fn report_role_properties(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    thumbprint: &str,
) -> Result<(), WireError> {
    post_retrying(client, cfg, clock, ROLE_PROPERTIES, Accept::Exactly(202), |attempt| {
        let goal = goal_state_once(client, cfg, attempt)?;
        Ok(Post {
            url: format!("{}/machine?comp=roleProperties", cfg.base()),
            headers: xml_headers(),
            body: role_properties_xml(&goal, thumbprint),
        })
    })
    .map(|_| ())
    .map_err(|e| match e {
        WireError::Deadline { last } => WireError::RolePropertiesDeadline { last },
        e => e,
    })
}

/// `x-ms-cipher-name` of a certificates request (platform.md §5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCipher {
    /// `AES128_CBC` (WALinuxAgent's first choice; the platform's default).
    Aes128Cbc,
    /// `DES_EDE3_CBC` (cloud-init, afterburn; WALinuxAgent's fallback).
    DesEde3Cbc,
}

impl CertCipher {
    pub fn header_value(self) -> &'static str {
        match self {
            CertCipher::Aes128Cbc => "AES128_CBC",
            CertCipher::DesEde3Cbc => "DES_EDE3_CBC",
        }
    }
}

const CERTIFICATES: &str = "GET comp=certificates";

/// `GET` the goal state's Certificates URL asking for `AES128_CBC` (see [`fetch_certificates_with`]).
pub fn fetch_certificates(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    goal: &GoalState,
    transport: &super::certificates::TransportCert,
) -> Result<Vec<u8>, WireError> {
    fetch_certificates_with(client, cfg, clock, goal, transport, CertCipher::Aes128Cbc)
}

/// `GET` the goal state's Certificates URL with the transport certificate, retrying as platform.md §5.2 says
/// until `cfg.deadline`; on 409/410 the goal state is fetched again and its (new) Certificates URL used. Returns
/// the raw `CertificateFile` document for [`super::certificates::decrypt_certificates`]. A goal state without
/// a Certificates URL is a [`WireError::Parse`].
pub fn fetch_certificates_with(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    goal: &GoalState,
    transport: &super::certificates::TransportCert,
    cipher: CertCipher,
) -> Result<Vec<u8>, WireError> {
    let no_url = || WireError::Parse("goal state has no Certificates URL".into());
    let mut url = goal.certificates_url.clone().ok_or_else(no_url)?;
    let cert = transport.header_value();
    let headers = [
        ("x-ms-agent-name", AGENT_NAME),
        ("x-ms-version", X_MS_VERSION),
        ("x-ms-cipher-name", cipher.header_value()),
        ("x-ms-guest-agent-public-x509-cert", cert.as_str()),
    ];
    let mut d = Driver::new(cfg, clock);
    let mut refresh = false;
    loop {
        let attempt = d.retry.pace();
        if refresh {
            match goal_state_once(client, cfg, attempt) {
                Ok(g) => {
                    url = g.certificates_url.ok_or_else(no_url)?;
                    refresh = false;
                }
                Err(f) => {
                    d.handle(f)?;
                    continue;
                }
            }
        }
        let failed = match client.get(&url, &headers) {
            Ok(resp) => {
                debug!(attempt, cipher = cipher.header_value(), status = resp.status, "certificates answered");
                match classify(CERTIFICATES, &resp) {
                    Ok(()) => return Ok(resp.body),
                    Err(f) => f,
                }
            }
            Err(e) => {
                debug!(attempt, error = %e, "certificates request failed");
                transport_failure(CERTIFICATES, e)
            }
        };
        if let Failed::Retry { stale: true, .. } = failed {
            refresh = true;
        }
        d.handle(failed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::http::tests::{closed_port, reply, FakeClock, Recorded, Scripted};
    use crate::timeutil::SystemClock;

    fn goal() -> GoalState {
        GoalState {
            incarnation: "3".into(),
            container_id: "2f1c6c3e-8a4b-4d55-9a3e-0c7b6d1e4f21".into(),
            instance_id: "7d3b1a52-1e44-4c1b-b6a2-4b0f8f6e2c10.web-01-vm".into(),
            certificates_url: None,
        }
    }

    fn goal_xml(incarnation: &str) -> String {
        format!(
            "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<GoalState xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
             <Version>2012-11-30</Version><Incarnation>{incarnation}</Incarnation><Machine><ExpectedState>Started</ExpectedState></Machine>\
             <Container><ContainerId>cid-1</ContainerId><RoleInstanceList><RoleInstance><InstanceId>iid-1.vm</InstanceId>\
             <State>Started</State><Configuration><Certificates>http://h/machine/x?comp=certificates&amp;incarnation={incarnation}</Certificates>\
             </Configuration></RoleInstance></RoleInstanceList></Container></GoalState>"
        )
    }

    #[test]
    fn parses_walinuxagent_goal_state() {
        let Some(bytes) = crate::testutil::fixture("wireserver/walinuxagent-goal-state.xml") else { return };
        let g = parse_goal_state(&bytes).unwrap();
        assert_eq!(g.incarnation, "1");
        assert_eq!(g.container_id, "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2");
        assert_eq!(g.instance_id, "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0");
        assert_eq!(
            g.certificates_url.as_deref(),
            Some("http://168.63.129.16:80/machine/865a6683-91d8-450f-99ae/bc8b9d47%2Db5ed%2D4704%2D85d9%2Dfd74cc967ec2.%5Fcanary?comp=certificates&incarnation=1")
        );
    }

    #[test]
    fn parses_goal_state_without_certificates() {
        let Some(bytes) = crate::testutil::fixture("wireserver/walinuxagent-goal-state-no-certs.xml") else { return };
        let g = parse_goal_state(&bytes).unwrap();
        assert_eq!(g.certificates_url, None);
        assert!(!g.instance_id.is_empty());
    }

    #[test]
    fn goal_state_without_role_instance_is_an_error() {
        let Some(bytes) = crate::testutil::fixture("wireserver/walinuxagent-goal-state-noop-no-role-instance.xml")
        else {
            return;
        };
        assert_eq!(parse_goal_state(&bytes), Err("missing RoleInstance".to_string()));
    }

    #[test]
    fn goal_state_bom_entities_and_missing_fields() {
        let g = parse_goal_state(goal_xml("7").as_bytes()).unwrap();
        assert_eq!(g.incarnation, "7");
        assert_eq!(g.container_id, "cid-1");
        assert_eq!(g.instance_id, "iid-1.vm");
        assert_eq!(g.certificates_url.as_deref(), Some("http://h/machine/x?comp=certificates&incarnation=7"));
        // Namespace prefixes are ignored (local names).
        let prefixed = "<g:GoalState xmlns:g=\"urn:x\"><g:Incarnation>2</g:Incarnation><g:Container><g:ContainerId>c</g:ContainerId>\
                        <g:RoleInstanceList><g:RoleInstance><g:InstanceId>i</g:InstanceId></g:RoleInstance></g:RoleInstanceList>\
                        </g:Container></g:GoalState>";
        assert_eq!(parse_goal_state(prefixed.as_bytes()).unwrap().instance_id, "i");

        let cases = [
            ("<Incarnation>1</Incarnation>", "", "missing Incarnation"),
            ("<ContainerId>cid-1</ContainerId>", "", "missing ContainerId"),
            ("<InstanceId>iid-1.vm</InstanceId>", "", "missing InstanceId"),
            ("<InstanceId>iid-1.vm</InstanceId>", "<InstanceId> </InstanceId>", "missing InstanceId"),
        ];
        for (from, to, want) in cases {
            let doc = goal_xml("1").replace(from, to);
            assert_eq!(parse_goal_state(doc.as_bytes()), Err(want.to_string()), "{doc}");
        }
        assert_eq!(
            parse_goal_state(b"<GoalState><Incarnation>1</Incarnation></GoalState>"),
            Err("missing Container".to_string())
        );
        assert!(parse_goal_state(b"<Other/>").is_err());
        assert!(parse_goal_state(b"<GoalState><Incarnation>1</Container></GoalState>").is_err());
        assert!(parse_goal_state(b"\xff\xfe").is_err());
        assert!(parse_goal_state(b"").is_err());
    }

    #[test]
    fn ready_document_matches_spec() {
        let want = r#"<?xml version="1.0" encoding="utf-8"?>
<Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema">
  <GoalStateIncarnation>3</GoalStateIncarnation>
  <Container>
    <ContainerId>2f1c6c3e-8a4b-4d55-9a3e-0c7b6d1e4f21</ContainerId>
    <RoleInstanceList>
      <Role>
        <InstanceId>7d3b1a52-1e44-4c1b-b6a2-4b0f8f6e2c10.web-01-vm</InstanceId>
        <Health><State>Ready</State></Health>
      </Role>
    </RoleInstanceList>
  </Container>
</Health>
"#;
        assert_eq!(health_xml(&goal(), &Health::Ready), want);
    }

    #[test]
    fn not_ready_document_matches_spec() {
        let desc = "result=error|reason=failure to obtain DHCP lease|agent=azprov/0.1.0|driver=hv_netvsc";
        let doc = health_xml(
            &goal(),
            &Health::NotReady { sub_status: "ProvisioningFailed".into(), description: desc.into() },
        );
        let want_role = format!(
            r#"        <Health>
          <State>NotReady</State>
          <Details>
            <SubStatus>ProvisioningFailed</SubStatus>
            <Description>{desc}</Description>
          </Details>
        </Health>
      </Role>"#
        );
        assert!(doc.contains(&want_role), "{doc}");
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health xmlns:xsi="));
        // The document is well-formed and round-trips through an XML reader.
        let mut r = quick_xml::Reader::from_str(&doc);
        loop {
            match r.read_event().unwrap() {
                Event::Eof => break,
                _ => continue,
            }
        }
        // No SubStatus → no Details.
        let doc = health_xml(&goal(), &Health::NotReady { sub_status: String::new(), description: "x".into() });
        assert!(doc.contains("<Health><State>NotReady</State></Health>") && !doc.contains("Details"));
    }

    #[test]
    fn escaping_controls_and_truncation() {
        let desc = format!("a<b>&c\u{1}\u{1b}[0m\td\r\ne{}", "é".repeat(600));
        let doc = health_xml(&goal(), &Health::NotReady { sub_status: "Prov<&>".into(), description: desc });
        assert!(doc.contains("<SubStatus>Prov&lt;&amp;&gt;</SubStatus>"), "{doc}");
        let start = doc.find("<Description>").unwrap() + "<Description>".len();
        let end = doc.find("</Description>").unwrap();
        let got = &doc[start..end];
        assert!(got.starts_with("a&lt;b&gt;&amp;c[0m\td\r\neéé"), "{got}");
        assert!(!got.contains('\u{1}') && !got.contains('\u{1b}'));
        // 512 characters kept (before escaping): "a<b>&c" (6) + "[0m\td\r\ne" (8) + 498 × é.
        assert_eq!(got.matches('é').count(), 512 - 14);
        // Worst case: 512 × '&' → 2560 bytes, far below 4096.
        let doc = health_xml(&goal(), &Health::NotReady { sub_status: "S".into(), description: "&".repeat(5000) });
        assert_eq!(doc.matches("&amp;").count(), 512);
        assert!(doc.len() < 4096);
        // Goal-state fields are escaped too.
        let mut g = goal();
        g.instance_id = "a&b".into();
        assert!(health_xml(&g, &Health::Ready).contains("<InstanceId>a&amp;b</InstanceId>"));
    }

    #[test]
    fn json_documents() {
        assert_eq!(health_json(&Health::Ready), r#"{"state":"Ready"}"#);
        let v: serde_json::Value = serde_json::from_str(&health_json(&Health::NotReady {
            sub_status: "ProvisioningFailed".into(),
            description: format!("reason=x\u{0}\"<>{}", "z".repeat(1000)),
        }))
        .unwrap();
        assert_eq!(v["state"], "NotReady");
        assert_eq!(v["details"]["subStatus"], "ProvisioningFailed");
        let d = v["details"]["description"].as_str().unwrap();
        assert!(d.starts_with("reason=x\"<>zz"));
        assert_eq!(d.chars().count(), 512);
    }

    fn cfg(base: &str, protocol: HealthProtocol, deadline_ms: u64) -> WireConfig {
        WireConfig {
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
            min_interval: Duration::from_millis(1),
            ..WireConfig::new(base, protocol, Instant::now() + Duration::from_millis(deadline_ms))
        }
    }

    fn client() -> HttpClient {
        HttpClient::new(Duration::from_millis(300), Duration::from_millis(300))
    }

    fn assert_wire_headers(r: &Recorded) {
        assert_eq!(r.header("x-ms-agent-name"), Some("azprov"), "{r:?}");
        assert_eq!(r.header("x-ms-version"), Some("2012-11-30"), "{r:?}");
    }

    fn incarnation_in(body: &str) -> &str {
        let start = body.find("<GoalStateIncarnation>").map(|i| i + "<GoalStateIncarnation>".len()).unwrap_or(0);
        let end = body.find("</GoalStateIncarnation>").unwrap_or(start);
        &body[start..end]
    }

    #[test]
    fn xml_report_ready_first_try() {
        let srv =
            Scripted::start(|_, req| if req.method == "GET" { reply(200, &goal_xml("3")) } else { reply(200, "") });
        let out =
            report_health(&client(), &cfg(&srv.base, HealthProtocol::Xml, 3000), &SystemClock, &Health::Ready).unwrap();
        assert_eq!((out.attempts, out.status), (1, 200));
        let seen = srv.finish();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].method.as_str(), seen[0].url.as_str()), ("GET", "/machine/?comp=goalstate"));
        assert_eq!((seen[1].method.as_str(), seen[1].url.as_str()), ("POST", "/machine?comp=health"));
        seen.iter().for_each(assert_wire_headers);
        assert_eq!(seen[1].header("Content-Type"), Some("text/xml;charset=utf-8"));
        assert_eq!(seen[1].body, health_xml(&parse_goal_state(goal_xml("3").as_bytes()).unwrap(), &Health::Ready));
    }

    #[test]
    fn xml_report_410_refetches_goal_state() {
        // First goal state is incarnation 1; the POST with it gets 410; the platform has moved to incarnation 2.
        let srv = Scripted::start(|i, req| match (req.method.as_str(), i) {
            ("GET", 0) => reply(200, &goal_xml("1")),
            ("GET", _) => reply(200, &goal_xml("2")),
            ("POST", _) if incarnation_in(&req.body) == "2" => reply(200, ""),
            ("POST", _) => reply(410, "stale"),
            _ => None,
        });
        let clock = FakeClock::new();
        let c = WireConfig::new(srv.base.clone(), HealthProtocol::Xml, clock.now() + Duration::from_secs(60));
        let out = report_health(&client(), &c, &clock, &Health::Ready).unwrap();
        assert_eq!((out.attempts, out.status), (2, 200));
        let seen = srv.finish();
        let methods: Vec<&str> = seen.iter().map(|r| r.method.as_str()).collect();
        assert_eq!(methods, ["GET", "POST", "GET", "POST"]);
        assert_eq!(incarnation_in(&seen[1].body), "1");
        assert_eq!(incarnation_in(&seen[3].body), "2");
        // The first 410 is retried at once (only the pacing interval).
        assert_eq!(clock.sleeps(), vec![Duration::from_millis(100)]);
    }

    #[test]
    fn xml_report_503s_then_ok_with_backoff() {
        let srv = Scripted::start(|i, req| match req.method.as_str() {
            "GET" => reply(200, &goal_xml("5")),
            _ if i < 5 => Some((503, vec![("Retry-After", "2".to_string())], String::new())),
            _ if i < 7 => reply(500, ""),
            _ => reply(202, ""),
        });
        let clock = FakeClock::new();
        let c = WireConfig::new(srv.base.clone(), HealthProtocol::Xml, clock.now() + Duration::from_secs(600));
        let out = report_health(&client(), &c, &clock, &Health::Ready).unwrap();
        assert_eq!((out.attempts, out.status), (4, 202));
        srv.finish();
        let sleeps = clock.sleeps();
        // Retry-After honoured twice, then exponential backoff (3rd failure → 4 s base, up to 25 % jitter).
        assert_eq!(&sleeps[..2], &[Duration::from_secs(2), Duration::from_secs(2)]);
        assert!(sleeps[2] >= Duration::from_secs(4) && sleeps[2] <= Duration::from_secs(5), "{sleeps:?}");
    }

    #[test]
    fn xml_report_other_4xx_fails_fast() {
        let srv = Scripted::start(|_, req| match req.method.as_str() {
            "GET" => reply(200, &goal_xml("5")),
            _ => reply(400, "bad request"),
        });
        let e = report_health(&client(), &cfg(&srv.base, HealthProtocol::Xml, 3000), &SystemClock, &Health::Ready)
            .unwrap_err();
        assert_eq!(e, WireError::Http { code: 400 });
        assert_eq!(srv.finish().len(), 2);
    }

    #[test]
    fn xml_report_deadline_names_last_failure() {
        let srv = Scripted::start(|_, req| match req.method.as_str() {
            "GET" => reply(200, &goal_xml("5")),
            _ => reply(500, ""),
        });
        let start = Instant::now();
        let e = report_health(&client(), &cfg(&srv.base, HealthProtocol::Xml, 300), &SystemClock, &Health::Ready)
            .unwrap_err();
        srv.finish();
        assert_eq!(e, WireError::Deadline { last: "POST /machine?comp=health: http 500".into() });
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn goal_state_lacking_role_instance_is_retried_briefly() {
        let no_role = goal_xml("1")
            .replace("<InstanceId>iid-1.vm</InstanceId>", "")
            .replace("<RoleInstanceList><RoleInstance>", "<RoleInstanceList><X>");
        let no_role = no_role.replace("</RoleInstance></RoleInstanceList>", "</X></RoleInstanceList>");
        assert_eq!(parse_goal_state(no_role.as_bytes()), Err("missing RoleInstance".into()));
        let body = no_role.clone();
        let srv = Scripted::start(move |i, _| if i < 2 { reply(200, &body) } else { reply(200, &goal_xml("4")) });
        let g = fetch_goal_state(&client(), &cfg(&srv.base, HealthProtocol::Xml, 3000), &SystemClock).unwrap();
        assert_eq!(g.incarnation, "4");
        let seen = srv.finish();
        assert_eq!(seen.len(), 3);
        seen.iter().for_each(assert_wire_headers);

        // Never gets a RoleInstance → a parse error after a few tries, long before the deadline.
        let srv = Scripted::start(move |_, _| reply(200, &no_role));
        let clock = FakeClock::new();
        let c = WireConfig::new(srv.base.clone(), HealthProtocol::Xml, clock.now() + Duration::from_secs(1200));
        let e = report_health(&client(), &c, &clock, &Health::Ready).unwrap_err();
        assert_eq!(e, WireError::Parse("missing RoleInstance".into()));
        assert_eq!(srv.finish().len(), GOAL_STATE_PARSE_RETRIES as usize);
    }

    #[test]
    fn fetch_goal_state_retries_throttling_and_fails_fast_on_401() {
        let srv = Scripted::start(|i, _| match i {
            0 => reply(429, ""),
            1 => reply(403, ""),
            2 => reply(404, ""),
            _ => reply(200, &goal_xml("9")),
        });
        let g = fetch_goal_state(&client(), &cfg(&srv.base, HealthProtocol::Xml, 3000), &SystemClock).unwrap();
        assert_eq!(g.incarnation, "9");
        assert_eq!(srv.finish().len(), 4);

        let srv = Scripted::start(|_, _| reply(401, ""));
        let e = fetch_goal_state(&client(), &cfg(&srv.base, HealthProtocol::Xml, 3000), &SystemClock).unwrap_err();
        assert_eq!(e, WireError::Http { code: 401 });
        assert_eq!(srv.finish().len(), 1);
    }

    #[test]
    fn fetch_goal_state_refused_until_deadline() {
        let base = format!("http://127.0.0.1:{}", closed_port());
        let e = fetch_goal_state(&client(), &cfg(&base, HealthProtocol::Xml, 200), &SystemClock).unwrap_err();
        match e {
            WireError::Deadline { last } => {
                assert!(last.starts_with("GET /machine/?comp=goalstate: connection error"), "{last}")
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn json_report_body_and_headers() {
        let srv = Scripted::start(|i, _| if i == 0 { reply(503, "") } else { reply(200, "") });
        let health = Health::NotReady { sub_status: "ProvisioningFailed".into(), description: "result=error".into() };
        let out = report_health(&client(), &cfg(&srv.base, HealthProtocol::Json, 3000), &SystemClock, &health).unwrap();
        assert_eq!((out.attempts, out.status), (2, 200));
        let seen = srv.finish();
        assert_eq!(seen.len(), 2);
        for r in &seen {
            assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", "/provisioning/health"));
            assert_eq!(r.header("Content-Type"), Some("application/json"));
            assert_eq!(r.header("x-ms-guest-agent-name"), Some(format!("azprov v{}", crate::VERSION).as_str()));
            assert!(r.header("x-ms-version").is_none());
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"state":"NotReady","details":{"subStatus":"ProvisioningFailed","description":"result=error"}})
            );
        }
    }

    #[test]
    fn role_properties_document_matches_spec() {
        let want = r#"<?xml version="1.0" encoding="utf-8"?>
<RoleProperties><Container><ContainerId>2f1c6c3e-8a4b-4d55-9a3e-0c7b6d1e4f21</ContainerId>
  <RoleInstances><RoleInstance><Id>7d3b1a52-1e44-4c1b-b6a2-4b0f8f6e2c10.web-01-vm</Id>
    <Properties><Property name="CertificateThumbprint" value="SHA256q3Zc0y1ExampleFingerprintWithoutColons"/></Properties>
  </RoleInstance></RoleInstances></Container></RoleProperties>
"#;
        assert_eq!(role_properties_xml(&goal(), "SHA256q3Zc0y1ExampleFingerprintWithoutColons"), want);
    }

    #[test]
    fn role_properties_escaping() {
        let mut g = goal();
        g.container_id = "c&<x>".into();
        g.instance_id = "i\u{1}\"'".into();
        let thumb = "SHA256a+/b\"'<&>\u{7}";
        let doc = role_properties_xml(&g, thumb);
        assert!(doc.contains("<ContainerId>c&amp;&lt;x&gt;</ContainerId>"), "{doc}");
        assert!(doc.contains("<Id>i\"'</Id>"), "{doc}");
        assert!(doc.contains(r#"value="SHA256a+/b&quot;&apos;&lt;&amp;&gt;""#), "{doc}");
        // well-formed, and the attribute reads back as sent (minus the forbidden control character)
        let mut r = quick_xml::Reader::from_str(&doc);
        let mut value = None;
        loop {
            match r.read_event().unwrap() {
                Event::Empty(e) if e.local_name().as_ref() == b"Property" => {
                    let a = e.try_get_attribute("value").unwrap().unwrap();
                    value = Some(a.unescape_value().unwrap().into_owned());
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(value.as_deref(), Some("SHA256a+/b\"'<&>"));
    }

    fn sim_cfg(sim: &azprov_sim::Simulator, clock: &dyn Clock, secs: u64) -> WireConfig {
        WireConfig::new(sim.url(), HealthProtocol::Xml, clock.now() + Duration::from_secs(secs))
    }

    fn role_property_statuses(sim: &azprov_sim::Simulator) -> Vec<Option<u16>> {
        sim.requests().iter().filter(|r| r.endpoint == "role_properties").map(|r| r.status).collect()
    }

    #[test]
    fn role_properties_accepted_by_the_simulator() {
        let sim =
            azprov_sim::Simulator::start(azprov_sim::VmDefinition::default(), azprov_sim::Faults::none()).unwrap();
        let clock = FakeClock::new();
        let thumb = "SHA256R2MLIy3nBGs9ZLxknaK8tPiUMqsfPebOEgEozIZs9Vk";
        report_role_properties(&client(), &sim_cfg(&sim, &clock, 60), &clock, thumb).unwrap();
        assert_eq!(sim.role_properties(), vec![("CertificateThumbprint".to_string(), thumb.to_string())]);
        assert_eq!(role_property_statuses(&sim), vec![Some(202)]);
        let reqs = sim.requests();
        let endpoints: Vec<&str> = reqs.iter().map(|r| r.endpoint.as_str()).collect();
        assert_eq!(endpoints, ["goalstate", "role_properties"]);
        assert!(clock.sleeps().is_empty(), "{:?}", clock.sleeps());
        // health reports are untouched
        assert!(sim.health_reports().is_empty());
    }

    #[test]
    fn role_properties_503_then_202() {
        use azprov_sim::faults::{FaultStep, Faults};
        let faults = Faults {
            role_properties: vec![
                FaultStep::Status { code: 503, body: None, retry_after: Some(3) },
                FaultStep::Status { code: 500, body: None, retry_after: None },
            ],
            ..Faults::none()
        };
        let sim = azprov_sim::Simulator::start(azprov_sim::VmDefinition::default(), faults).unwrap();
        let clock = FakeClock::new();
        report_role_properties(&client(), &sim_cfg(&sim, &clock, 600), &clock, "SHA256abc").unwrap();
        assert_eq!(role_property_statuses(&sim), vec![Some(503), Some(500), Some(202)]);
        assert_eq!(sim.role_properties(), vec![("CertificateThumbprint".to_string(), "SHA256abc".to_string())]);
        // a fresh goal state before every POST
        let endpoints: Vec<String> = sim.requests().iter().map(|r| r.endpoint.clone()).collect();
        assert_eq!(endpoints.iter().filter(|e| *e == "goalstate").count(), 3, "{endpoints:?}");
        // Retry-After honoured, then backoff
        let sleeps = clock.sleeps();
        assert_eq!(sleeps[0], Duration::from_secs(3), "{sleeps:?}");
    }

    #[test]
    fn role_properties_other_2xx_is_a_failure() {
        use azprov_sim::faults::{FaultStep, Faults};
        let faults = Faults {
            role_properties: vec![FaultStep::Status { code: 200, body: Some(String::new()), retry_after: None }],
            ..Faults::none()
        };
        let sim = azprov_sim::Simulator::start(azprov_sim::VmDefinition::default(), faults).unwrap();
        let clock = FakeClock::new();
        let e = report_role_properties(&client(), &sim_cfg(&sim, &clock, 600), &clock, "0011").unwrap_err();
        assert_eq!(e, WireError::UnexpectedStatus { code: 200, expected: 202 });
        assert_eq!(e.to_string(), "unexpected http status 200 from the wireserver (expected 202)");
        assert_eq!(role_property_statuses(&sim), vec![Some(200)]);
        assert!(sim.role_properties().is_empty());
    }

    #[test]
    fn role_properties_deadline_names_the_endpoint() {
        let srv = Scripted::start(|_, req| match req.method.as_str() {
            "GET" => reply(200, &goal_xml("5")),
            _ => reply(503, ""),
        });
        let e = report_role_properties(&client(), &cfg(&srv.base, HealthProtocol::Json, 300), &SystemClock, "x")
            .unwrap_err();
        let seen = srv.finish();
        assert_eq!(e, WireError::RolePropertiesDeadline { last: "POST /machine?comp=roleProperties: http 503".into() });
        // XML headers even when health goes through JSON
        let post = seen.iter().find(|r| r.method == "POST").unwrap();
        assert_eq!(post.url, "/machine?comp=roleProperties");
        assert_wire_headers(post);
        assert_eq!(post.header("Content-Type"), Some("text/xml;charset=utf-8"));
        assert!(post.body.contains(r#"<Property name="CertificateThumbprint" value="x"/>"#));
    }
}
