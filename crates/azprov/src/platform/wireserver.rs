//! Wireserver client (platform.md §5): goal state, health reports (XML default, JSON alternative).

use std::time::{Duration, Instant};

use super::http::HttpClient;
use crate::report::Failure;
use crate::timeutil::Clock;

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
}

impl WireError {
    pub fn failure(&self) -> Failure {
        Failure::new(self.to_string())
    }
}

pub fn parse_goal_state(bytes: &[u8]) -> Result<GoalState, String> {
    let _ = bytes;
    Err("not implemented".into())
}

/// The XML health document for `POST /machine?comp=health` (escaped, description capped at 512 chars).
pub fn health_xml(goal: &GoalState, health: &Health) -> String {
    let _ = (goal, health);
    String::new()
}

/// The JSON body for `POST /provisioning/health`.
pub fn health_json(health: &Health) -> String {
    let _ = health;
    String::new()
}

/// Report `health`, fetching a fresh goal state before each POST (XML protocol), retrying until `cfg.deadline`.
pub fn report_health(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    health: &Health,
) -> Result<ReportOutcome, WireError> {
    let _ = (client, cfg, clock, health);
    Err(WireError::Parse("not implemented".into()))
}
