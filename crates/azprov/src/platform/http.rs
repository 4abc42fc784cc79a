//! The one HTTP client and the one retry policy used for IMDS and the wireserver: blocking, never proxied,
//! never redirected, with explicit connect/read timeouts.

use std::time::Duration;

/// Deadline-bounded retry with exponential backoff and jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
    /// Pause after the first failure; doubles up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Never start two requests closer together than this (IMDS: 5 requests/s → 200 ms).
    pub min_interval: Duration,
}

/// An HTTP answer (any status).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why no HTTP answer arrived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("connection timeout")]
    ConnectTimeout,
    #[error("connection error: {0}")]
    Connect(String),
    #[error("read timeout")]
    ReadTimeout,
    #[error("{0}")]
    Other(String),
}

/// Blocking client: no proxy (environment ignored), no redirects.
pub struct HttpClient {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

impl HttpClient {
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Self {
        HttpClient { connect_timeout, read_timeout }
    }
    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, TransportError> {
        let _ = (url, headers);
        Err(TransportError::Other("not implemented".into()))
    }
    pub fn post(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, TransportError> {
        let _ = (url, headers, body);
        Err(TransportError::Other("not implemented".into()))
    }
}
