//! Instance Metadata Service client (platform.md §4).

use std::time::Duration;

use super::http::HttpClient;
use crate::report::Failure;
use crate::timeutil::Clock;

#[derive(Debug, Clone)]
pub struct ImdsConfig {
    /// e.g. `http://169.254.169.254`
    pub base_url: String,
    /// Overall deadline from the first attempt (default 300 s).
    pub deadline: Duration,
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

/// Parse an instance document.
pub fn parse_instance(bytes: &[u8], api_version: &str) -> Result<Instance, String> {
    let _ = (bytes, api_version);
    Err("not implemented".into())
}

/// Fetch `/metadata/instance` with the policy of platform.md §4.3.
pub fn fetch_instance(client: &HttpClient, cfg: &ImdsConfig, clock: &dyn Clock) -> Result<Instance, ImdsError> {
    let _ = (client, cfg, clock);
    Err(ImdsError::Unexpected { detail: "not implemented".into() })
}
