//! The one HTTP client and the one retry policy used for IMDS and the wireserver: blocking, never proxied,
//! never redirected, with explicit connect/read timeouts.

use std::io;
use std::time::{Duration, Instant};

use crate::timeutil::{jitter_fraction, Clock};

/// Largest response body accepted (IMDS documents and goal states are a few KiB; certificates tens of KiB).
pub const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// Jitter adds up to this fraction of the computed backoff delay.
pub const JITTER_FRACTION: f64 = 0.25;

/// Deadline-bounded retry with exponential backoff and jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Give up once this much time has passed since the first attempt; [`RetryPolicy::NO_DEADLINE`] (or any span
    /// too large to add to the clock) never gives up.
    pub deadline: Duration,
    /// Pause after the first failure; doubles up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Never start two requests closer together than this (IMDS: 5 requests/s → 200 ms).
    pub min_interval: Duration,
}

impl RetryPolicy {
    /// A `deadline` that never passes: the loop retries until it succeeds or fails fatally.
    pub const NO_DEADLINE: Duration = Duration::MAX;

    /// The pause before the next attempt after `failures` consecutive failures (1 = first failure), or `None`
    /// when `remaining` (time left until the deadline) is zero.
    ///
    /// Without `retry_after`: `min(base_delay · 2^(failures-1), max_delay)` plus up to [`JITTER_FRACTION`] of that
    /// scaled by `jitter` ∈ [0, 1). With `retry_after` (a server's `Retry-After`): exactly that. Either way the
    /// result is capped to `remaining`, so a sleep never runs past the deadline.
    pub fn next_delay(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        remaining: Duration,
        jitter: f64,
    ) -> Option<Duration> {
        if remaining.is_zero() {
            return None;
        }
        let delay = match retry_after {
            Some(ra) => ra,
            None => {
                let shift = failures.saturating_sub(1).min(31);
                let exp = self.base_delay.checked_mul(1u32 << shift).unwrap_or(self.max_delay).min(self.max_delay);
                let j = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
                exp + exp.mul_f64(JITTER_FRACTION * j)
            }
        };
        Some(delay.min(remaining))
    }
}

/// The state of one deadline-bounded retry loop: paces request starts (`min_interval`) and sleeps between
/// attempts according to the [`RetryPolicy`]. Used by every IMDS and wireserver call.
pub struct Retry<'a> {
    policy: RetryPolicy,
    clock: &'a dyn Clock,
    start: Instant,
    /// `None`: no deadline ([`RetryPolicy::NO_DEADLINE`]).
    deadline: Option<Instant>,
    /// Consecutive failures since the last [`Retry::reset`]; drives the exponent.
    failures: u32,
    requests: u32,
    last_request: Option<Instant>,
}

impl<'a> Retry<'a> {
    /// Start the clock: the deadline is `policy.deadline` from now (none for [`RetryPolicy::NO_DEADLINE`]).
    pub fn new(policy: &RetryPolicy, clock: &'a dyn Clock) -> Self {
        let start = clock.now();
        let deadline =
            if policy.deadline == RetryPolicy::NO_DEADLINE { None } else { start.checked_add(policy.deadline) };
        Retry { policy: policy.clone(), clock, start, deadline, failures: 0, requests: 0, last_request: None }
    }

    /// Call right before starting a request: waits so that request starts are at least `min_interval` apart.
    /// Returns the 1-based request number.
    pub fn pace(&mut self) -> u32 {
        if let Some(last) = self.last_request {
            let since = self.clock.now().saturating_duration_since(last);
            // never past the deadline: a backoff cut short by it may be followed by this spacing
            let wait = self.policy.min_interval.saturating_sub(since).min(self.remaining());
            if !wait.is_zero() {
                self.clock.sleep(wait);
            }
        }
        self.last_request = Some(self.clock.now());
        self.requests += 1;
        self.requests
    }

    /// Record a retryable failure and sleep before the next attempt. Returns `false` (without sleeping) when
    /// the deadline has passed: the caller gives up and reports its last failure.
    pub fn backoff(&mut self, retry_after: Option<Duration>) -> bool {
        self.failures = self.failures.saturating_add(1);
        let remaining = self.remaining();
        match self.policy.next_delay(self.failures, retry_after, remaining, jitter_fraction()) {
            Some(d) => {
                if !d.is_zero() {
                    self.clock.sleep(d);
                }
                true
            }
            None => false,
        }
    }

    /// Forget the consecutive failures (fresh backoff), keeping the overall deadline and pacing.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Time left until the deadline (zero once passed; `Duration::MAX` without a deadline).
    pub fn remaining(&self) -> Duration {
        match self.deadline {
            Some(d) => d.saturating_duration_since(self.clock.now()),
            None => Duration::MAX,
        }
    }

    /// Time since the retry loop started (the first attempt).
    pub fn elapsed(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.start)
    }

    /// Requests started so far.
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// When the loop gives up; `None` without a deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// Seconds from a `Retry-After` header (delta-seconds only; HTTP dates are ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
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

    /// `Retry-After` in seconds, when present and numeric.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after").and_then(parse_retry_after)
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

/// Blocking client: no proxy (environment ignored), no redirects, one connection per request, any status
/// returned as a [`Response`], bodies capped at [`MAX_BODY_BYTES`]. The timeouts are fixed at construction
/// (the fields are informational; changing them later has no effect).
pub struct HttpClient {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    max_body: u64,
    agent: ureq::Agent,
}

/// Whether the URL's host is an IP address (the platform endpoints always are): then "resolving" it is parsing,
/// and ureq's resolve timeout — which runs every lookup on a fresh thread — is dropped for that request.
fn host_is_ip_literal(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']').is_some_and(|(a, _)| a.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    host.parse::<std::net::Ipv4Addr>().is_ok()
}

impl HttpClient {
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Self {
        Self::with_max_body(connect_timeout, read_timeout, MAX_BODY_BYTES)
    }

    /// As [`HttpClient::new`] with a different response body cap.
    pub fn with_max_body(connect_timeout: Duration, read_timeout: Duration, max_body: u64) -> Self {
        let config = ureq::Agent::config_builder()
            // Never proxied: the default config reads HTTP_PROXY/ALL_PROXY/NO_PROXY; override it explicitly.
            .proxy(None)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .http_status_as_error(false)
            .https_only(false)
            // One connection per request: the wireserver is fine with `Connection: close`, and a stale pooled
            // connection after a platform restart would only produce spurious errors.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(crate::AGENT)
            .timeout_resolve(Some(connect_timeout))
            .timeout_connect(Some(connect_timeout))
            .timeout_send_request(Some(read_timeout))
            .timeout_send_body(Some(read_timeout))
            .timeout_recv_response(Some(read_timeout))
            .timeout_recv_body(Some(read_timeout))
            .build();
        HttpClient { connect_timeout, read_timeout, max_body, agent: ureq::Agent::new_with_config(config) }
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, TransportError> {
        let mut req = self.agent.get(url);
        if host_is_ip_literal(url) {
            req = req.config().timeout_resolve(None).build();
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.call())
    }

    pub fn post(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, TransportError> {
        let mut req = self.agent.post(url);
        if host_is_ip_literal(url) {
            req = req.config().timeout_resolve(None).build();
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.send(body))
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response, TransportError> {
        let resp = result.map_err(map_error)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let body = resp.into_body().into_with_config().limit(self.max_body).read_to_vec().map_err(map_error)?;
        Ok(Response { status, headers, body })
    }
}

/// Map a ureq error to the transport error kinds the callers distinguish.
fn map_error(e: ureq::Error) -> TransportError {
    match e {
        ureq::Error::Timeout(t) => match t {
            ureq::Timeout::Connect | ureq::Timeout::Resolve => TransportError::ConnectTimeout,
            _ => TransportError::ReadTimeout,
        },
        ureq::Error::Io(io) => map_io(&io),
        ureq::Error::HostNotFound => TransportError::Connect("host not found".into()),
        ureq::Error::ConnectionFailed => TransportError::Connect("connection failed".into()),
        ureq::Error::BodyExceedsLimit(n) => TransportError::Other(format!("response body larger than {n} bytes")),
        other => TransportError::Other(other.to_string()),
    }
}

fn map_io(e: &io::Error) -> TransportError {
    use io::ErrorKind as K;
    match e.kind() {
        K::TimedOut | K::WouldBlock => TransportError::ReadTimeout,
        K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::UnexpectedEof
        | K::AddrNotAvailable
        | K::AddrInUse => TransportError::Connect(e.to_string()),
        _ => {
            let unreachable =
                [rustix::io::Errno::NETUNREACH, rustix::io::Errno::HOSTUNREACH, rustix::io::Errno::NETDOWN]
                    .iter()
                    .any(|x| e.raw_os_error() == Some(x.raw_os_error()));
            if unreachable {
                TransportError::Connect(e.to_string())
            } else {
                TransportError::Other(e.to_string())
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::Mutex;

    /// A clock whose `sleep` only advances `now` (records the sleeps).
    pub struct FakeClock {
        now: Mutex<Instant>,
        pub sleeps: Mutex<Vec<Duration>>,
    }

    impl FakeClock {
        pub fn new() -> Self {
            FakeClock { now: Mutex::new(Instant::now()), sleeps: Mutex::new(Vec::new()) }
        }
        pub fn advance(&self, d: Duration) {
            let mut n = self.now.lock().unwrap();
            *n += d;
        }
        pub fn sleeps(&self) -> Vec<Duration> {
            self.sleeps.lock().unwrap().clone()
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            *self.now.lock().unwrap()
        }
        fn sleep(&self, d: Duration) {
            self.sleeps.lock().unwrap().push(d);
            self.advance(d);
        }
    }

    /// One request as the scripted server saw it.
    #[derive(Debug, Clone)]
    pub struct Recorded {
        pub method: String,
        pub url: String,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Recorded {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// A reply: status, headers, body.
    pub type Reply = (u16, Vec<(&'static str, String)>, String);

    /// A tiny_http server on 127.0.0.1:0 answering each request with `script(index, request)`; `None` stops it.
    pub struct Scripted {
        pub base: String,
        server: std::sync::Arc<tiny_http::Server>,
        handle: std::thread::JoinHandle<Vec<Recorded>>,
    }

    impl Scripted {
        pub fn start(mut script: impl FnMut(usize, &Recorded) -> Option<Reply> + Send + 'static) -> Scripted {
            let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let base = format!("http://{}", server.server_addr().to_ip().unwrap());
            let srv = server.clone();
            let handle = std::thread::spawn(move || {
                let mut seen = Vec::new();
                while let Ok(mut req) = srv.recv() {
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let rec = Recorded {
                        method: req.method().to_string(),
                        url: req.url().to_string(),
                        headers: req.headers().iter().map(|h| (h.field.to_string(), h.value.to_string())).collect(),
                        body,
                    };
                    let reply = script(seen.len(), &rec);
                    seen.push(rec);
                    let Some((status, headers, body)) = reply else { break };
                    let mut resp = tiny_http::Response::from_string(body).with_status_code(status);
                    for (k, v) in headers {
                        resp.add_header(tiny_http::Header::from_bytes(k, v.as_bytes()).unwrap());
                    }
                    let _ = req.respond(resp);
                }
                seen
            });
            Scripted { base, server, handle }
        }

        /// Stop the server and return what it saw.
        pub fn finish(self) -> Vec<Recorded> {
            self.server.unblock();
            self.handle.join().unwrap()
        }
    }

    /// A plain reply.
    pub fn reply(status: u16, body: &str) -> Option<Reply> {
        Some((status, Vec::new(), body.to_string()))
    }

    /// A port on 127.0.0.1 where nothing listens.
    pub fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// A listener that accepts connections and never answers, for `hold` each.
    pub fn silent_server(hold: Duration) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                std::thread::spawn(move || {
                    std::thread::sleep(hold);
                    drop(s);
                });
            }
        });
        port
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_secs(10),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(4),
            min_interval: Duration::from_millis(200),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn next_delay_is_exponential_capped_and_jittered() {
        let p = policy();
        let big = Duration::from_secs(100);
        assert_eq!(p.next_delay(1, None, big, 0.0), Some(ms(1000)));
        assert_eq!(p.next_delay(2, None, big, 0.0), Some(ms(2000)));
        assert_eq!(p.next_delay(3, None, big, 0.0), Some(ms(4000)));
        assert_eq!(p.next_delay(30, None, big, 0.0), Some(ms(4000)));
        assert_eq!(p.next_delay(u32::MAX, None, big, 0.0), Some(ms(4000)));
        // Jitter adds up to 25 %.
        assert_eq!(p.next_delay(1, None, big, 0.5), Some(ms(1125)));
        let d = p.next_delay(2, None, big, 0.999).unwrap();
        assert!(d > ms(2000) && d < ms(2500), "{d:?}");
        // Retry-After wins, no jitter.
        assert_eq!(p.next_delay(1, Some(ms(7000)), big, 0.9), Some(ms(7000)));
        // Capped to the deadline.
        assert_eq!(p.next_delay(3, None, ms(300), 0.0), Some(ms(300)));
        assert_eq!(p.next_delay(1, Some(Duration::from_secs(3600)), ms(300), 0.0), Some(ms(300)));
        assert_eq!(p.next_delay(1, None, Duration::ZERO, 0.0), None);
    }

    #[test]
    fn retry_paces_and_stops_at_deadline() {
        let clock = FakeClock::new();
        let mut r = Retry::new(&policy(), &clock);
        assert_eq!(r.pace(), 1);
        assert_eq!(r.pace(), 2); // immediately again: waits min_interval
        assert_eq!(clock.sleeps(), vec![ms(200)]);
        clock.advance(ms(500));
        r.pace(); // already 500 ms apart: no wait
        assert_eq!(clock.sleeps().len(), 1);
        let mut n = 0;
        while r.backoff(None) {
            n += 1;
            r.pace();
            assert!(n < 100);
        }
        // Never slept past the deadline.
        assert!(clock.now() <= r.deadline().unwrap());
        assert_eq!(r.remaining(), Duration::ZERO);
        assert!(r.elapsed() >= Duration::from_secs(10));
        assert!(r.elapsed() < Duration::from_secs(11));
        // Reset restarts the exponent.
        r.reset();
        assert_eq!(r.failures, 0);
    }

    #[test]
    fn retry_without_deadline_never_gives_up() {
        let clock = FakeClock::new();
        let p = RetryPolicy { deadline: RetryPolicy::NO_DEADLINE, ..policy() };
        let mut r = Retry::new(&p, &clock);
        assert_eq!(r.deadline(), None);
        for _ in 0..1000 {
            assert!(r.backoff(None));
        }
        // capped backoff: 1 + 2 + 4·998 s (plus jitter up to 25 %), a long time without giving up
        assert!(r.elapsed() >= Duration::from_secs(3995), "{:?}", r.elapsed());
        assert_eq!(r.remaining(), Duration::MAX);
        assert!(clock.sleeps().iter().all(|s| *s <= ms(5000)));
        // a deadline too large for the clock is no deadline either
        let huge = RetryPolicy { deadline: Duration::from_secs(u64::MAX / 2), ..policy() };
        assert_eq!(Retry::new(&huge, &clock).deadline(), None);
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    fn client() -> HttpClient {
        HttpClient::new(ms(500), ms(300))
    }

    #[test]
    fn ip_literal_hosts() {
        for yes in [
            "http://168.63.129.16/machine/?comp=goalstate",
            "http://127.0.0.1:8080",
            "http://[::1]:80/x",
            "http://169.254.169.254/metadata?x=1",
        ] {
            assert!(host_is_ip_literal(yes), "{yes}");
        }
        for no in ["http://wireserver.example/x", "http://localhost:80/", "http://1.2.3.4.example/", "http://[zz]/"] {
            assert!(!host_is_ip_literal(no), "{no}");
        }
    }

    #[test]
    fn get_returns_any_status_with_headers_and_body() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/x?y=1", server.server_addr().to_ip().unwrap());
        let t = std::thread::spawn(move || {
            let mut req = server.recv().unwrap();
            assert_eq!(req.url(), "/x?y=1");
            let got = req.headers().iter().find(|h| h.field.equiv("X-Test")).map(|h| h.value.to_string());
            assert_eq!(got.as_deref(), Some("abc"));
            let mut b = String::new();
            req.as_reader().read_to_string(&mut b).unwrap();
            assert_eq!(b, "");
            let resp = tiny_http::Response::from_string("nope")
                .with_status_code(503)
                .with_header(tiny_http::Header::from_bytes("Retry-After", "3").unwrap());
            req.respond(resp).unwrap();
        });
        let r = client().get(&url, &[("X-Test", "abc")]).unwrap();
        t.join().unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"nope");
        assert_eq!(r.retry_after(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn post_sends_body_and_redirects_are_not_followed() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/p", server.server_addr().to_ip().unwrap());
        let t = std::thread::spawn(move || {
            let mut req = server.recv().unwrap();
            assert_eq!(req.method(), &tiny_http::Method::Post);
            let mut b = String::new();
            req.as_reader().read_to_string(&mut b).unwrap();
            assert_eq!(b, "hello");
            let resp = tiny_http::Response::from_string("")
                .with_status_code(302)
                .with_header(tiny_http::Header::from_bytes("Location", "http://127.0.0.1:1/elsewhere").unwrap());
            req.respond(resp).unwrap();
        });
        let r = client().post(&url, &[("Content-Type", "text/plain")], b"hello").unwrap();
        t.join().unwrap();
        assert_eq!(r.status, 302);
    }

    #[test]
    fn refused_port_is_connect_error() {
        let port = closed_port();
        let e = client().get(&format!("http://127.0.0.1:{port}/"), &[]).unwrap_err();
        assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    }

    #[test]
    fn silent_server_is_read_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            std::thread::sleep(ms(800));
            drop(s);
        });
        let start = Instant::now();
        let e = client().get(&format!("http://127.0.0.1:{port}/"), &[]).unwrap_err();
        assert_eq!(e, TransportError::ReadTimeout);
        assert!(start.elapsed() < ms(750));
        t.join().unwrap();
    }

    #[test]
    fn reset_connection_is_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            // Close without answering.
            let _ = s.shutdown(std::net::Shutdown::Both);
        });
        let e = client().get(&format!("http://127.0.0.1:{port}/"), &[]).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, TransportError::Connect(_)), "{e:?}");
    }

    #[test]
    fn oversized_body_is_rejected() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = vec![b'a'; 100];
            let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(&body);
        });
        let c = HttpClient::with_max_body(ms(500), ms(500), 10);
        let e = c.get(&format!("http://127.0.0.1:{port}/"), &[]).unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, TransportError::Other(_)), "{e:?}");
    }

    #[test]
    fn proxy_environment_is_ignored() {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/direct", server.server_addr().to_ip().unwrap());
        let t = std::thread::spawn(move || {
            let req = server.recv().unwrap();
            assert_eq!(req.url(), "/direct");
            req.respond(tiny_http::Response::from_string("ok")).unwrap();
        });
        // A proxy that does not exist: if it were used, the request would fail.
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::set_var(var, "http://127.0.0.1:9");
        }
        std::env::set_var("NO_PROXY", "");
        let r = client().get(&url, &[]);
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY"] {
            std::env::remove_var(var);
        }
        let r = r.unwrap();
        t.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"ok");
    }
}
