//! Fault scripts: per endpoint, a list of steps consumed one per request; once a list is used up the endpoint answers
//! normally. Loadable from TOML or JSON, e.g.
//!
//! ```toml
//! [[imds]]
//! kind = "status_for"
//! code = 410
//! ms = 2000
//!
//! [[goalstate]]
//! kind = "drop"
//! ```

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What one request to a faulted endpoint gets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultStep {
    /// Answer `code` with `body` (a platform-like error body when absent) and an optional `Retry-After`.
    Status { code: u16, body: Option<String>, retry_after: Option<u32> },
    /// Answer `code` to every request until `ms` have passed since the first request that reached this step.
    StatusFor { code: u16, ms: u64 },
    /// Sleep, then answer normally (exceeds a client's read timeout when long enough).
    Delay { ms: u64 },
    /// Read the request, then close the connection without sending a byte.
    Drop,
    /// Read the request, hold the connection for `ms` without answering, then close it.
    Hang { ms: u64 },
    /// HTTP 200 with a body that is neither JSON nor XML.
    Malformed,
    /// Answer `code` with `body` (a platform-like error body when absent) after `delay_ms`.
    Respond { code: u16, body: Option<String>, delay_ms: u64 },
    /// Answer normally.
    Normal,
}

impl FaultStep {
    /// A short label for logs, e.g. `status 503`.
    pub fn label(&self) -> String {
        match self {
            FaultStep::Status { code, .. } => format!("status {code}"),
            FaultStep::StatusFor { code, ms } => format!("status_for {code} {ms}ms"),
            FaultStep::Delay { ms } => format!("delay {ms}ms"),
            FaultStep::Drop => "drop".into(),
            FaultStep::Hang { ms } => format!("hang {ms}ms"),
            FaultStep::Malformed => "malformed".into(),
            FaultStep::Respond { code, delay_ms, .. } => format!("respond {code} after {delay_ms}ms"),
            FaultStep::Normal => "normal".into(),
        }
    }
}

/// Fault scripts per endpoint. `health` covers both the XML (`comp=health`) and the JSON (`/provisioning/health`)
/// health endpoints; `reprovisiondata` is IMDS `/metadata/reprovisiondata` (pre-provisioned VMs), whose normal answer
/// is 404 until the VM is assigned.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    pub imds: Vec<FaultStep>,
    pub goalstate: Vec<FaultStep>,
    pub health: Vec<FaultStep>,
    pub versions: Vec<FaultStep>,
    pub certificates: Vec<FaultStep>,
    pub role_properties: Vec<FaultStep>,
    pub reprovisiondata: Vec<FaultStep>,
}

impl Faults {
    /// No faults: every endpoint answers normally.
    pub fn none() -> Faults {
        Faults::default()
    }

    pub fn from_toml(text: &str) -> Result<Faults, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    pub fn from_json(text: &str) -> Result<Faults, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Loads a file: JSON when its name ends in `.json`, TOML otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<Faults, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let parsed = if path.extension().is_some_and(|x| x.eq_ignore_ascii_case("json")) {
            Faults::from_json(&text)
        } else {
            Faults::from_toml(&text)
        };
        parsed.map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The position in one endpoint's script.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    steps: Vec<FaultStep>,
    next: usize,
    /// When the current `StatusFor` step saw its first request.
    since: Option<Instant>,
}

impl Cursor {
    pub(crate) fn new(steps: Vec<FaultStep>) -> Cursor {
        Cursor { steps, next: 0, since: None }
    }

    /// The step for the request arriving at `now`, or `None` once the script is used up.
    pub(crate) fn take(&mut self, now: Instant) -> Option<FaultStep> {
        loop {
            let step = self.steps.get(self.next)?.clone();
            if let FaultStep::StatusFor { ms, .. } = step {
                let since = *self.since.get_or_insert(now);
                if now.duration_since(since) < Duration::from_millis(ms) {
                    return Some(step);
                }
                self.since = None;
                self.next += 1;
                continue;
            }
            self.next += 1;
            return Some(step);
        }
    }
}

/// How long "always" lasts when a script's last step is an error: longer than any client deadline.
const REPEAT_MS: u64 = 3_600_000;

/// Convert one scripted response of azure-init's testing server (status, optional body, delay in seconds) to a step.
fn scripted(code: u16, body: Option<String>, delay_s: u64, success_is_normal: bool) -> FaultStep {
    match (code, delay_s) {
        (200, 0) if success_is_normal => FaultStep::Normal,
        (200, d) if success_is_normal => FaultStep::Delay { ms: d * 1000 },
        (c, 0) => FaultStep::Status { code: c, body, retry_after: None },
        (c, d) => FaultStep::Respond { code: c, body, delay_ms: d * 1000 },
    }
}

/// A script whose last response is an error keeps answering it (azure-init's "always 500" scripts).
fn repeat_last_error(mut steps: Vec<FaultStep>) -> Vec<FaultStep> {
    let last = match steps.last() {
        Some(FaultStep::Status { code, .. }) | Some(FaultStep::Respond { code, .. }) if *code != 200 => Some(*code),
        _ => None,
    };
    if let Some(code) = last {
        steps.push(FaultStep::StatusFor { code, ms: REPEAT_MS });
    }
    steps
}

/// IMDS steps from an azure-init testing-server script (`{"responses": [{"status_code", "response", "delay"}…]}`).
/// A 200 answers the script's own document.
pub fn from_azure_init_imds(json: &str) -> Result<Vec<FaultStep>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let responses = v.get("responses").and_then(|r| r.as_array()).ok_or("no `responses` array")?;
    let mut steps = Vec::new();
    for r in responses {
        let code = r.get("status_code").and_then(|c| c.as_u64()).ok_or("response without status_code")? as u16;
        let body = r.get("response").map(|b| b.to_string());
        let delay = r.get("delay").and_then(|d| d.as_u64()).unwrap_or(0);
        steps.push(scripted(code, body, delay, false));
    }
    Ok(repeat_last_error(steps))
}

fn xml_field(block: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = block.find(&open)? + open.len();
    let end = block[start..].find(&format!("</{tag}>"))? + start;
    Some(block[start..end].trim().to_string())
}

/// Wireserver steps from an azure-init testing-server script (`<responses><response><status_code>…`). A 200 is
/// served by the simulator's normal handling (so a health report is validated and recorded), after the delay.
pub fn from_azure_init_wireserver(xml: &str) -> Result<Vec<FaultStep>, String> {
    let mut steps = Vec::new();
    for block in xml.split("<response>").skip(1) {
        let code = xml_field(block, "status_code")
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or("response without status_code")?;
        let delay = xml_field(block, "delay").and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
        steps.push(scripted(code, None, delay, true));
    }
    if steps.is_empty() {
        return Err("no <response> elements".into());
    }
    Ok(repeat_last_error(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_load() {
        let toml = r#"
            [[imds]]
            kind = "status"
            code = 503
            retry_after = 2

            [[imds]]
            kind = "status_for"
            code = 410
            ms = 1500

            [[goalstate]]
            kind = "drop"

            [[health]]
            kind = "hang"
            ms = 100

            [[versions]]
            kind = "malformed"

            [[certificates]]
            kind = "delay"
            ms = 10

            [[role_properties]]
            kind = "normal"

            [[reprovisiondata]]
            kind = "status"
            code = 429
        "#;
        let f = Faults::from_toml(toml).unwrap();
        assert_eq!(f.imds[0], FaultStep::Status { code: 503, body: None, retry_after: Some(2) });
        assert_eq!(f.imds[1], FaultStep::StatusFor { code: 410, ms: 1500 });
        assert_eq!(f.goalstate, vec![FaultStep::Drop]);
        assert_eq!(f.health, vec![FaultStep::Hang { ms: 100 }]);
        assert_eq!(f.versions, vec![FaultStep::Malformed]);
        assert_eq!(f.certificates, vec![FaultStep::Delay { ms: 10 }]);
        assert_eq!(f.role_properties, vec![FaultStep::Normal]);
        assert_eq!(f.reprovisiondata, vec![FaultStep::Status { code: 429, body: None, retry_after: None }]);

        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(Faults::from_json(&json).unwrap(), f);
        let j = Faults::from_json(r#"{"goalstate":[{"kind":"status","code":500,"body":"x"}]}"#).unwrap();
        assert_eq!(j.goalstate[0], FaultStep::Status { code: 500, body: Some("x".into()), retry_after: None });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Faults::from_toml("[[imds]]\nkind = \"explode\"\n").is_err());
        assert!(Faults::from_toml("[[wire]]\nkind = \"drop\"\n").unwrap_err().contains("wire"));
        assert!(Faults::from_json(r#"{"imds":[{"kind":"delay","ms":1,"extra":2}]}"#).is_err());
    }

    #[test]
    fn cursor_consumes_steps_and_holds_status_for() {
        let mut c =
            Cursor::new(vec![FaultStep::Drop, FaultStep::StatusFor { code: 410, ms: 100 }, FaultStep::Malformed]);
        let t0 = Instant::now();
        assert_eq!(c.take(t0), Some(FaultStep::Drop));
        assert_eq!(c.take(t0), Some(FaultStep::StatusFor { code: 410, ms: 100 }));
        assert_eq!(c.take(t0 + Duration::from_millis(99)), Some(FaultStep::StatusFor { code: 410, ms: 100 }));
        assert_eq!(c.take(t0 + Duration::from_millis(100)), Some(FaultStep::Malformed));
        assert_eq!(c.take(t0 + Duration::from_millis(200)), None);
    }
}
