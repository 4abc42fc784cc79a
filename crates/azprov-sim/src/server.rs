//! One loopback HTTP listener that answers both as IMDS (`/metadata/…`) and as the wireserver (`/?comp=versions`,
//! `/machine…`, `/provisioning/health`), validating requests the way the platform does (platform.md §4, §5) and applying
//! fault scripts ([`crate::faults`]) first.
//!
//! The listener is a small HTTP/1.1 server on `std::net`: one request per connection, `Connection: close`, one thread
//! per connection. Owning the socket is what makes `drop` and `hang` faults possible.
//!
//! # Pre-provisioned VMs (platform.md §10)
//!
//! A VM definition with `pps_type` `Running`, `Savable` or `PreprovisionedOSDisk` and a `customer` is a pool VM: its
//! DVD OVF says `PreprovisionedVm=true`, IMDS says `extended.compute.ppsType` = the type, and
//! `GET /metadata/reprovisiondata?api-version=…` answers 404. Once the VM is **assigned**, the simulator serves the
//! customer: `reprovisiondata` answers 200 with the customer's `ovf-env.xml` (`PreprovisionedVm=false`), IMDS the
//! customer's document (`ppsType` `None`, its `osProfile`…), and the goal state a higher incarnation (the customer's
//! `incarnation` when larger, else the pool's + 1), so a health report with the pool incarnation gets 410.
//!
//! Assignment happens (once) by
//! * `POST /azprov-sim/assign` (empty body, e.g. `curl -d '' http://127.0.0.1:PORT/azprov-sim/assign`): 200 with the
//!   [`PpsStatus`] JSON; 409 when there is no customer or the VM is already assigned; 500 when the assign hook failed
//!   (the VM is assigned all the same);
//! * `assign_after_ready_ms` in the definition: that long after the first `Ready` health report arrived while pooled
//!   (counted on arrival, so a report a fault drops — a Savable VM being suspended — counts too);
//! * [`Simulator::assign`] from Rust.
//!
//! The state switches first, then the hook set with [`Simulator::set_assign_hook`] runs (on the triggering thread):
//! that is where a live test makes the network signal the agent waits for (see [`crate::links`]).
//! `GET /azprov-sim/pps` returns the [`PpsStatus`] JSON: health reports before (intermediate) and after (final) the
//! assignment, `reprovisiondata` polls. Every request record carries `phase` — `pool` before, `customer` after the
//! assignment (absent for other VMs). The control paths are never faulted and, like everything here, loopback only.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::faults::{Cursor, FaultStep, Faults};
use crate::ovf::xml_escape;
use crate::vm::VmDefinition;

mod xml;

/// The only wireserver protocol version the agent-facing endpoints accept.
pub const WIRESERVER_VERSION: &str = "2012-11-30";

/// IMDS api-versions the simulator accepts (a subset of what `/metadata/versions` lists on Azure).
pub const IMDS_API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2022-02-01",
    "2022-03-01",
    "2022-07-01",
    "2022-08-01",
    "2023-07-01",
    "2023-11-15",
];

const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The platform's reported limit for a health description (platform.md §5.5).
const MAX_DESCRIPTION_BYTES: usize = 4096;
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

/// One health report the simulator accepted.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// `Ready` or `NotReady`.
    pub state: String,
    pub sub_status: Option<String>,
    pub description: Option<String>,
    /// `xml` (`comp=health`) or `json` (`/provisioning/health`).
    pub protocol: String,
    /// `GoalStateIncarnation` of an XML report; `None` for JSON.
    pub incarnation: Option<u32>,
}

/// One request as the simulator saw it (also the shape of a request-log line).
#[derive(Serialize, Clone, Debug)]
pub struct RequestRecord {
    /// Arrival time, RFC 3339 UTC.
    pub ts: String,
    /// Milliseconds since the simulator started.
    pub ms: u64,
    pub method: String,
    /// Path and query as sent.
    pub target: String,
    /// `imds`, `imds_versions`, `versions`, `goalstate`, `health`, `json_health`, `role_properties`, `certificates`,
    /// `unknown` or `invalid` (unparseable request).
    pub endpoint: String,
    /// Selected headers (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// The status sent; `None` when a fault closed the connection without an answer.
    pub status: Option<u16>,
    /// The fault step applied, e.g. `status 503`.
    pub fault: Option<String>,
    /// Why the request was rejected, for 4xx answers.
    pub error: Option<String>,
    /// The report, for an accepted health post.
    pub health: Option<HealthReport>,
    /// Pre-provisioned VMs: `pool` before the assignment, `customer` after it (when the request arrived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// What assigned a pool VM to its customer.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AssignTrigger {
    /// `POST /azprov-sim/assign`.
    Control,
    /// `assign_after_ready_ms` after the first pooled Ready.
    Auto,
    /// [`Simulator::assign`].
    Api,
}

/// The assignment of the pool VM to its customer.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The pool VM's `pps_type` (`Running`, `Savable`, `PreprovisionedOSDisk`).
    pub pps_type: String,
    pub trigger: AssignTrigger,
    /// Milliseconds since the simulator started.
    pub ms: u64,
    /// The goal-state incarnation from now on.
    pub incarnation: u32,
}

/// Why an assignment did not happen (or its hook failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignError {
    /// The VM definition has no `customer`.
    NoCustomer,
    AlreadyAssigned,
    /// The VM was assigned, but the assign hook returned this error.
    Hook(String),
}

impl std::fmt::Display for AssignError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssignError::NoCustomer => write!(f, "this VM has no customer definition"),
            AssignError::AlreadyAssigned => write!(f, "the VM is already assigned"),
            AssignError::Hook(e) => write!(f, "assigned, but the assign hook failed: {e}"),
        }
    }
}

impl std::error::Error for AssignError {}

/// Runs right after an assignment (state already switched), on the thread that triggered it.
pub type AssignHook = Box<dyn FnMut(&Assignment) -> Result<(), String> + Send>;

/// The pre-provisioning state (`GET /azprov-sim/pps`).
#[derive(Serialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PpsStatus {
    /// The pool VM's `pps_type`.
    pub pps_type: String,
    pub has_customer: bool,
    pub assignment: Option<Assignment>,
    /// When the first `Ready` health report arrived while pooled (ms since start; accepted or not).
    pub first_ready_ms: Option<u64>,
    /// `Ready` health reports that arrived while pooled, accepted or not (a fault may drop them).
    pub pool_ready_posts: u32,
    /// Health reports accepted before the assignment (the intermediate Ready is here).
    pub pool_health: Vec<HealthReport>,
    /// Health reports accepted after the assignment (the final Ready is here).
    pub customer_health: Vec<HealthReport>,
    /// Requests to `/metadata/reprovisiondata` (faulted ones included).
    pub reprovision_polls: u32,
    /// Of those, the ones that arrived before the assignment.
    pub reprovision_polls_pooled: u32,
    /// `reprovisiondata` answers with the customer's OVF.
    pub reprovision_served: u32,
    /// The last error the assign hook returned.
    pub hook_error: Option<String>,
}

impl PpsStatus {
    pub fn assigned(&self) -> bool {
        self.assignment.is_some()
    }

    /// An accepted `Ready` before the assignment.
    pub fn intermediate_ready(&self) -> bool {
        self.pool_health.iter().any(|h| h.state == "Ready")
    }

    /// An accepted `Ready` after the assignment.
    pub fn final_ready(&self) -> bool {
        self.customer_health.iter().any(|h| h.state == "Ready")
    }
}

/// The running simulator. Dropping it stops the listener.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    start: Instant,
    base_url: String,
    stop: AtomicBool,
    state: Mutex<State>,
    hook: Mutex<Option<AssignHook>>,
}

struct State {
    vm: VmDefinition,
    cursors: Cursors,
    requests: Vec<RequestRecord>,
    health: Vec<HealthReport>,
    /// When the first accepted Ready arrived (for start→Ready measurements).
    ready_at: Option<Instant>,
    role_properties: Vec<(String, String)>,
    log: Option<File>,
    pps: PpsStatus,
    /// The customer's definition as served after the assignment.
    customer: Option<VmDefinition>,
    /// `assign_after_ready_ms` of the pool VM.
    auto_assign_ms: Option<u64>,
    auto_assign_scheduled: bool,
}

impl State {
    fn push_health(&mut self, report: HealthReport) {
        if report.state == "Ready" && self.ready_at.is_none() {
            self.ready_at = Some(Instant::now());
        }
        match self.phase() {
            Some("pool") => self.pps.pool_health.push(report.clone()),
            Some(_) => self.pps.customer_health.push(report.clone()),
            None => {}
        }
        self.health.push(report);
    }

    /// Whether the VM waits in the pool: pre-provisioned or with a customer, and not assigned yet.
    fn pooled(&self) -> bool {
        (self.customer.is_some() || self.pps.pps_type != "None") && self.pps.assignment.is_none()
    }

    /// `pool` / `customer` for pre-provisioned VMs, `None` for the others.
    fn phase(&self) -> Option<&'static str> {
        if self.pps.assignment.is_some() {
            Some("customer")
        } else if self.pooled() {
            Some("pool")
        } else {
            None
        }
    }
}

struct Cursors {
    imds: Cursor,
    goalstate: Cursor,
    health: Cursor,
    versions: Cursor,
    certificates: Cursor,
    role_properties: Cursor,
    reprovisiondata: Cursor,
}

impl Cursors {
    fn new(f: Faults) -> Cursors {
        Cursors {
            imds: Cursor::new(f.imds),
            goalstate: Cursor::new(f.goalstate),
            health: Cursor::new(f.health),
            versions: Cursor::new(f.versions),
            certificates: Cursor::new(f.certificates),
            role_properties: Cursor::new(f.role_properties),
            reprovisiondata: Cursor::new(f.reprovisiondata),
        }
    }

    fn for_endpoint(&mut self, e: Endpoint) -> Option<&mut Cursor> {
        match e {
            Endpoint::ImdsInstance | Endpoint::ImdsVersions => Some(&mut self.imds),
            Endpoint::Versions => Some(&mut self.versions),
            Endpoint::GoalState => Some(&mut self.goalstate),
            Endpoint::Health | Endpoint::JsonHealth => Some(&mut self.health),
            Endpoint::Certificates => Some(&mut self.certificates),
            Endpoint::RoleProperties => Some(&mut self.role_properties),
            Endpoint::ImdsReprovision => Some(&mut self.reprovisiondata),
            Endpoint::Control | Endpoint::Unknown => None,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler thread must not take the whole simulator down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps up to `ms`, returning early when the simulator stops.
    fn sleep(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while !self.stopped() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(20)));
        }
    }

    fn record(&self, rec: RequestRecord) {
        let mut st = self.lock();
        if let Some(log) = st.log.as_mut() {
            if let Ok(line) = serde_json::to_string(&rec) {
                // The log is a diagnostic aid; a full disk must not break request handling.
                let _ = writeln!(log, "{line}");
            }
        }
        st.requests.push(rec);
    }
}

impl Simulator {
    /// Starts the simulator on `127.0.0.1:<ephemeral port>`.
    pub fn start(vm: VmDefinition, faults: Faults) -> io::Result<Simulator> {
        Simulator::start_on("127.0.0.1:0", vm, faults)
    }

    /// Starts the simulator on `addr` (`IP:PORT`), which must be a loopback address.
    pub fn start_on(addr: &str, vm: VmDefinition, faults: Faults) -> io::Result<Simulator> {
        let requested: SocketAddr = addr
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not an IP:PORT address: {addr:?}")))?;
        if !requested.ip().is_loopback() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("refusing to listen on non-loopback address {requested}"),
            ));
        }
        vm.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(requested)?;
        let addr = listener.local_addr()?;
        let customer = vm.customer_definition();
        let pps = PpsStatus {
            pps_type: if vm.pps_type.is_empty() { "None".into() } else { vm.pps_type.clone() },
            has_customer: customer.is_some(),
            ..PpsStatus::default()
        };
        let auto_assign_ms = vm.assign_after_ready_ms;
        let vm = VmDefinition { customer: None, assign_after_ready_ms: None, ..vm };
        let shared = Arc::new(Shared {
            start: Instant::now(),
            base_url: format!("http://{addr}"),
            stop: AtomicBool::new(false),
            hook: Mutex::new(None),
            state: Mutex::new(State {
                vm,
                cursors: Cursors::new(faults),
                requests: Vec::new(),
                health: Vec::new(),
                ready_at: None,
                role_properties: Vec::new(),
                log: None,
                pps,
                customer,
                auto_assign_ms,
                auto_assign_scheduled: false,
            }),
        });
        let accept_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("azprov-sim-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(Simulator { shared, addr, thread: Some(thread) })
    }

    /// `http://127.0.0.1:PORT`: the base URL for both IMDS and wireserver paths.
    pub fn url(&self) -> String {
        self.shared.base_url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request handled so far, in the order they were answered (or closed by a fault); `ms` gives arrival.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// Every accepted health report (XML and JSON), in order.
    pub fn health_reports(&self) -> Vec<HealthReport> {
        self.shared.lock().health.clone()
    }

    /// When the first accepted `Ready` arrived (for a pool VM: the intermediate one; see [`Simulator::pps_status`]).
    pub fn ready_at(&self) -> Option<Instant> {
        self.shared.lock().ready_at
    }

    /// Whether an accepted health report said `Ready`.
    pub fn ready_reported(&self) -> bool {
        self.shared.lock().health.iter().any(|h| h.state == "Ready")
    }

    /// `(name, value)` of every property in accepted `comp=roleProperties` posts.
    pub fn role_properties(&self) -> Vec<(String, String)> {
        self.shared.lock().role_properties.clone()
    }

    /// The VM definition currently served: a pool VM's until it is assigned, then its customer's (without the
    /// `customer` and `assign_after_ready_ms` keys either way).
    pub fn vm(&self) -> VmDefinition {
        self.shared.lock().vm.clone()
    }

    /// Assigns the pool VM to its customer now (module documentation), then runs the assign hook.
    pub fn assign(&self) -> Result<Assignment, AssignError> {
        assign(&self.shared, AssignTrigger::Api)
    }

    /// Runs `hook` after every later assignment (it must not call `set_assign_hook` itself), on the thread that triggered it (an HTTP handler for the control
    /// endpoint, a timer thread for `assign_after_ready_ms`, the caller for [`Simulator::assign`]). An error it
    /// returns is kept in [`PpsStatus::hook_error`] and reported by the trigger.
    pub fn set_assign_hook(&self, hook: impl FnMut(&Assignment) -> Result<(), String> + Send + 'static) {
        *self.shared.hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// The pre-provisioning state: assignment, intermediate and final health reports, `reprovisiondata` polls.
    pub fn pps_status(&self) -> PpsStatus {
        self.shared.lock().pps.clone()
    }

    pub fn is_assigned(&self) -> bool {
        self.shared.lock().pps.assignment.is_some()
    }

    /// Waits up to `timeout` for the assignment (e.g. an automatic one).
    pub fn wait_for_assignment(&self, timeout: Duration) -> Option<Assignment> {
        let until = Instant::now() + timeout;
        loop {
            if let Some(a) = self.shared.lock().pps.assignment.clone() {
                return Some(a);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Changes the goal-state incarnation (as the platform does when the VM's configuration changes).
    pub fn set_incarnation(&self, n: u32) {
        self.shared.lock().vm.incarnation = n;
    }

    /// Replaces every fault script (positions restart at the first step).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().cursors = Cursors::new(faults);
    }

    /// Appends every later request to `path` as one JSON line (a [`RequestRecord`]; bodies are never logged).
    pub fn set_request_log(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        self.shared.lock().log = Some(file);
        Ok(())
    }

    /// Stops the listener; connections being held by `hang`/`delay` faults are released.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // wake the blocking accept so it sees the flag
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                if shared.stopped() {
                    break;
                }
                let conn_shared = Arc::clone(shared);
                let spawned = std::thread::Builder::new()
                    .name("azprov-sim-conn".into())
                    .spawn(move || handle_connection(stream, &conn_shared));
                if spawned.is_err() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            // Blocking accept (no polling latency); `stop` wakes it with a connection of its own.
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// HTTP

struct Request {
    method: String,
    target: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn comp(&self) -> Option<&str> {
        self.query("comp")
    }
}

/// An unparseable request: the status to answer and why.
struct BadRequest(u16, String);

fn read_request(stream: &TcpStream) -> Result<Request, BadRequest> {
    let mut reader = BufReader::new(stream);
    let mut head_len = 0usize;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), BadRequest> {
        line.clear();
        let mut raw = Vec::new();
        let n = (&mut reader)
            .take((MAX_HEADER_BYTES - head_len + 1) as u64)
            .read_until(b'\n', &mut raw)
            .map_err(|e| BadRequest(400, format!("reading request: {e}")))?;
        head_len += n;
        if head_len > MAX_HEADER_BYTES {
            return Err(BadRequest(431, "request head too large".into()));
        }
        if n == 0 || !raw.ends_with(b"\n") {
            return Err(BadRequest(400, "connection closed inside the request head".into()));
        }
        *line = String::from_utf8(raw).map_err(|_| BadRequest(400, "request head is not UTF-8".into()))?;
        Ok(())
    };

    read_line(&mut line)?;
    let request_line = line.trim_end_matches(['\r', '\n']).to_string();
    let mut parts = request_line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && t.starts_with('/') => (m, t, v),
        _ => return Err(BadRequest(400, format!("malformed request line {request_line:?}"))),
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(BadRequest(505, format!("unsupported protocol {version:?}")));
    }

    let mut headers = Vec::new();
    loop {
        read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').ok_or_else(|| BadRequest(400, format!("malformed header {l:?}")))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
            return Err(BadRequest(400, format!("malformed header name {name:?}")));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }

    let (path, query_str) = target.split_once('?').unwrap_or((target, ""));
    let query = query_str
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        path: path.to_string(),
        query,
        headers,
        body: Vec::new(),
    };

    if req.header("transfer-encoding").is_some() {
        return Err(BadRequest(411, "chunked request bodies are not supported; send Content-Length".into()));
    }
    let length = match req.header("content-length") {
        Some(v) => v.parse::<usize>().map_err(|_| BadRequest(400, format!("bad Content-Length {v:?}")))?,
        None if req.method == "POST" => return Err(BadRequest(411, "POST without Content-Length".into())),
        None => 0,
    };
    if length > MAX_BODY_BYTES {
        return Err(BadRequest(413, format!("body of {length} bytes is too large")));
    }
    if length > 0 && req.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        let mut w = stream;
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).map_err(|e| BadRequest(400, format!("reading a {length}-byte body: {e}")))?;
    req.body = body;
    Ok(req)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    retry_after: Option<u32>,
}

const JSON: &str = "application/json; charset=utf-8";
const XML: &str = "text/xml; charset=utf-8";

impl Response {
    fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into(), retry_after: None }
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

fn write_response(mut stream: &TcpStream, r: &Response) {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nServer: azprov-sim\r\n",
        r.status,
        reason_phrase(r.status),
        r.content_type,
        r.body.len()
    );
    if let Some(s) = r.retry_after {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&r.body)).and_then(|()| stream.flush());
    close_gracefully(stream);
}

/// Half-closes and drains what the client still sends, so that unread input does not turn the close into a reset
/// that could destroy the response in flight.
fn close_gracefully(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Dispatch

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    ImdsInstance,
    ImdsVersions,
    ImdsReprovision,
    /// `/azprov-sim/…`: the simulator's own control paths.
    Control,
    Versions,
    GoalState,
    Health,
    JsonHealth,
    RoleProperties,
    Certificates,
    Unknown,
}

impl Endpoint {
    fn classify(req: &Request) -> Endpoint {
        let machine = req.path == "/machine" || req.path == "/machine/";
        match (req.path.as_str(), req.comp()) {
            ("/metadata/instance" | "/metadata/instance/", _) => Endpoint::ImdsInstance,
            ("/metadata/versions" | "/metadata/versions/", _) => Endpoint::ImdsVersions,
            ("/metadata/reprovisiondata" | "/metadata/reprovisiondata/", _) => Endpoint::ImdsReprovision,
            (p, _) if p.starts_with("/azprov-sim/") => Endpoint::Control,
            ("/", Some("versions")) => Endpoint::Versions,
            (_, Some("goalstate")) if machine => Endpoint::GoalState,
            (_, Some("health")) if machine => Endpoint::Health,
            (_, Some("roleProperties")) if machine => Endpoint::RoleProperties,
            (p, Some("certificates")) if p.starts_with("/machine/") && p.len() > "/machine/".len() => {
                Endpoint::Certificates
            }
            ("/provisioning/health", _) => Endpoint::JsonHealth,
            _ => Endpoint::Unknown,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::ImdsInstance => "imds",
            Endpoint::ImdsVersions => "imds_versions",
            Endpoint::ImdsReprovision => "reprovisiondata",
            Endpoint::Control => "control",
            Endpoint::Versions => "versions",
            Endpoint::GoalState => "goalstate",
            Endpoint::Health => "health",
            Endpoint::JsonHealth => "json_health",
            Endpoint::RoleProperties => "role_properties",
            Endpoint::Certificates => "certificates",
            Endpoint::Unknown => "unknown",
        }
    }

    fn is_imds(self) -> bool {
        matches!(self, Endpoint::ImdsInstance | Endpoint::ImdsVersions | Endpoint::ImdsReprovision)
    }
}

/// What a handler decided.
struct Outcome {
    response: Response,
    error: Option<String>,
    health: Option<HealthReport>,
}

impl Outcome {
    fn ok(response: Response) -> Outcome {
        Outcome { response, error: None, health: None }
    }
}

const LOGGED_HEADERS: &[&str] = &[
    "content-type",
    "metadata",
    "user-agent",
    "x-forwarded-for",
    "x-ms-agent-name",
    "x-ms-cipher-name",
    "x-ms-client-request-id",
    "x-ms-guest-agent-name",
    "x-ms-version",
];

fn handle_connection(stream: TcpStream, shared: &Arc<Shared>) {
    let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
    let _ = stream.set_write_timeout(Some(SOCKET_TIMEOUT));
    let arrived = Instant::now();
    let mut rec = RequestRecord {
        ts: rfc3339(SystemTime::now()),
        ms: arrived.duration_since(shared.start).as_millis() as u64,
        method: String::new(),
        target: String::new(),
        endpoint: "invalid".into(),
        headers: BTreeMap::new(),
        status: None,
        fault: None,
        error: None,
        health: None,
        phase: None,
    };
    let req = match read_request(&stream) {
        Ok(r) => r,
        Err(BadRequest(code, why)) => {
            rec.status = Some(code);
            rec.error = Some(why.clone());
            shared.record(rec);
            write_response(&stream, &Response::new(code, "text/plain; charset=utf-8", why));
            return;
        }
    };
    let endpoint = Endpoint::classify(&req);
    rec.method = req.method.clone();
    rec.target = req.target.clone();
    rec.endpoint = endpoint.name().into();
    for (name, value) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if LOGGED_HEADERS.contains(&lower.as_str()) {
            rec.headers.insert(lower, value.clone());
        }
    }

    rec.phase = arrival(shared, &req, endpoint, arrived).map(str::to_string);

    let step = shared.lock().cursors.for_endpoint(endpoint).and_then(|c| c.take(arrived));
    rec.fault = step.as_ref().map(FaultStep::label);
    let outcome = match step {
        Some(FaultStep::Status { code, body, retry_after }) => {
            let mut r = match body {
                Some(b) => Response::new(code, if endpoint.is_imds() { JSON } else { XML }, b),
                None => error_response(endpoint, code, &format!("simulated HTTP {code}")),
            };
            r.retry_after = retry_after;
            Outcome::ok(r)
        }
        Some(FaultStep::Respond { code, body, delay_ms }) => {
            shared.sleep(delay_ms);
            Outcome::ok(match body {
                Some(b) => Response::new(code, if endpoint.is_imds() { JSON } else { XML }, b),
                None => error_response(endpoint, code, &format!("simulated HTTP {code}")),
            })
        }
        Some(FaultStep::StatusFor { code, .. }) => {
            Outcome::ok(error_response(endpoint, code, &format!("simulated HTTP {code}")))
        }
        Some(FaultStep::Drop) => {
            shared.record(rec);
            // The whole request has been read, so closing sends FIN: the client sees EOF before any byte.
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Some(FaultStep::Hang { ms }) => {
            shared.record(rec);
            shared.sleep(ms);
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Some(FaultStep::Malformed) => Outcome::ok(Response::new(
            200,
            if endpoint.is_imds() { JSON } else { XML },
            "\u{feff}<garbage>{\"compute\": [ not json & not </xml>",
        )),
        Some(FaultStep::Delay { ms }) => {
            shared.sleep(ms);
            handle(shared, &req, endpoint)
        }
        Some(FaultStep::Normal) | None => handle(shared, &req, endpoint),
    };
    rec.status = Some(outcome.response.status);
    rec.error = outcome.error;
    rec.health = outcome.health;
    // Record before answering: a client that has its answer must find the request in `requests()`.
    shared.record(rec);
    write_response(&stream, &outcome.response);
}

fn error_response(endpoint: Endpoint, code: u16, message: &str) -> Response {
    if endpoint.is_imds() || endpoint == Endpoint::Control {
        Response::new(code, JSON, json!({ "error": message }).to_string())
    } else {
        let code_name: String = reason_phrase(code).split_whitespace().collect();
        Response::new(
            code,
            XML,
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
                 xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n  <Code>{}</Code>\n  <Message>{}</Message>\n  \
                 <Details></Details>\n</Error>\n",
                xml_escape(&code_name),
                xml_escape(message)
            ),
        )
    }
}

/// A rejected request: the answer and the reason recorded for it.
fn reject(endpoint: Endpoint, code: u16, message: impl Into<String>) -> Outcome {
    let message = message.into();
    let response = if endpoint.is_imds() || endpoint == Endpoint::Control {
        Response::new(code, JSON, json!({ "error": message }).to_string())
    } else {
        error_response(endpoint, code, &message)
    };
    Outcome { response, error: Some(message), health: None }
}

fn handle(shared: &Arc<Shared>, req: &Request, endpoint: Endpoint) -> Outcome {
    let expected_method = match endpoint {
        Endpoint::Health | Endpoint::JsonHealth | Endpoint::RoleProperties => "POST",
        _ => "GET",
    };
    if !matches!(endpoint, Endpoint::Unknown | Endpoint::Control) && req.method != expected_method {
        return reject(endpoint, 405, format!("{} {} requires {expected_method}", req.method, req.path));
    }
    match endpoint {
        Endpoint::ImdsInstance => imds_instance(shared, req),
        Endpoint::ImdsVersions => imds_versions(req),
        Endpoint::ImdsReprovision => reprovision_data(shared, req),
        Endpoint::Control => control(shared, req),
        Endpoint::Versions => Outcome::ok(Response::new(200, XML, versions_xml())),
        Endpoint::GoalState => goal_state(shared, req),
        Endpoint::Health => xml_health(shared, req),
        Endpoint::JsonHealth => json_health(shared, req),
        Endpoint::RoleProperties => role_properties(shared, req),
        Endpoint::Certificates => certificates(shared, req),
        Endpoint::Unknown => {
            let mut o = reject(endpoint, 404, format!("no such resource: {}", req.target));
            if req.path.starts_with("/metadata/") {
                o.response = Response::new(404, JSON, json!({ "error": "Not found" }).to_string());
            }
            o
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// IMDS

fn imds_common_checks(req: &Request) -> Result<(), String> {
    if req.header("x-forwarded-for").is_some() {
        return Err("Bad request. Request must not contain the X-Forwarded-For header".into());
    }
    if !req.header("metadata").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err("Bad request. Required metadata header not specified".into());
    }
    Ok(())
}

fn newest_versions() -> Vec<&'static str> {
    IMDS_API_VERSIONS.iter().rev().take(3).copied().collect()
}

fn imds_instance(shared: &Shared, req: &Request) -> Outcome {
    if let Err(why) = imds_common_checks(req) {
        return reject(Endpoint::ImdsInstance, 400, why);
    }
    let bad_version = |msg: &str| {
        let mut o = reject(Endpoint::ImdsInstance, 400, msg);
        o.response.body = json!({ "error": msg, "newest-versions": newest_versions() }).to_string().into_bytes();
        o
    };
    let version = match req.query("api-version") {
        None | Some("") => return bad_version(
            "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
        ),
        Some(v) if !IMDS_API_VERSIONS.contains(&v) => {
            return bad_version(
                "Bad request. api-version is invalid or was not specified in the request. For more information refer \
                 to aka.ms/azureimds",
            )
        }
        Some(v) => v,
    };
    match req.query("format") {
        None | Some("json") => {}
        Some(f) => return reject(Endpoint::ImdsInstance, 400, format!("Bad request. Format {f} is not supported")),
    }
    let extended = match req.query("extended") {
        None | Some("false") => false,
        Some("true") => true,
        Some(x) => return reject(Endpoint::ImdsInstance, 400, format!("Bad request. Invalid extended value {x:?}")),
    };
    let vm = shared.lock().vm.clone();
    Outcome::ok(Response::new(200, JSON, imds_document(&vm, version, extended).to_string()))
}

fn imds_versions(req: &Request) -> Outcome {
    if let Err(why) = imds_common_checks(req) {
        return reject(Endpoint::ImdsInstance, 400, why);
    }
    Outcome::ok(Response::new(200, JSON, json!({ "apiVersions": IMDS_API_VERSIONS }).to_string()))
}

/// The IMDS instance document for `vm` as served for `api_version` (platform.md §4.5). Fields appear only from the
/// api-version that introduced them: `osProfile` from 2020-07-15, `userData` and `extended` from 2021-01-01.
pub fn imds_document(vm: &VmDefinition, api_version: &str, extended: bool) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let public_keys: Vec<serde_json::Value> = if vm.specialized {
        Vec::new()
    } else {
        vm.ssh_keys
            .iter()
            .map(|k| json!({ "keyData": k, "path": format!("/home/{}/.ssh/authorized_keys", vm.username) }))
            .collect()
    };
    let mut compute = json!({
        "azEnvironment": "AzurePublicCloud",
        "customData": "",
        "location": vm.location,
        "name": vm.vm_name(),
        "offer": "",
        "osType": "Linux",
        "platformFaultDomain": "0",
        "platformUpdateDomain": "0",
        "provider": "Microsoft.Compute",
        "publicKeys": public_keys,
        "publisher": "",
        "resourceGroupName": "azprov-sim",
        "sku": "",
        "subscriptionId": "fb15ddba-711b-47bc-8313-b6186c98f2c5",
        "tags": "",
        "version": "",
        "vmId": vm.vm_id,
        "vmSize": vm.vm_size,
    });
    if api_version >= "2020-07-15" && !vm.specialized {
        compute["osProfile"] = json!({
            "adminUsername": vm.username,
            "computerName": vm.computer_name(),
            "disablePasswordAuthentication": if vm.disable_password_authentication { "true" } else { "false" },
        });
    }
    let modern = api_version >= "2021-01-01";
    if modern {
        compute["userData"] = json!(vm.user_data.as_deref().map(|u| b64.encode(u)).unwrap_or_default());
    }
    let prefix = ipv4_prefix24(&vm.private_ip);
    let mut doc = json!({
        "compute": compute,
        "network": { "interface": [ {
            "ipv4": {
                "ipAddress": [ { "privateIpAddress": vm.private_ip, "publicIpAddress": "" } ],
                "subnet": [ { "address": prefix, "prefix": "24" } ]
            },
            "ipv6": { "ipAddress": [] },
            "macAddress": vm.mac_address.to_ascii_uppercase()
        } ] }
    });
    if extended && modern {
        let has_custom_data = vm.custom_data.is_some() && !vm.specialized;
        doc["extended"] = json!({ "compute": { "hasCustomData": has_custom_data, "ppsType": vm.pps_type } });
    }
    doc
}

fn ipv4_prefix24(ip: &str) -> String {
    match ip.parse::<std::net::Ipv4Addr>() {
        Ok(a) => {
            let o = a.octets();
            format!("{}.{}.{}.0", o[0], o[1], o[2])
        }
        Err(_) => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Pre-provisioned VMs

/// Bookkeeping when a request arrives: `reprovisiondata` polls and pooled `Ready` reports (which may schedule the
/// automatic assignment). Returns the phase the request arrived in.
fn arrival(shared: &Arc<Shared>, req: &Request, endpoint: Endpoint, arrived: Instant) -> Option<&'static str> {
    let ready = matches!(endpoint, Endpoint::Health | Endpoint::JsonHealth)
        && reported_state(req, endpoint).as_deref() == Some("Ready");
    let mut st = shared.lock();
    let phase = st.phase();
    let pooled = st.pooled();
    if endpoint == Endpoint::ImdsReprovision {
        st.pps.reprovision_polls += 1;
        if pooled {
            st.pps.reprovision_polls_pooled += 1;
        }
    }
    if ready && pooled {
        st.pps.pool_ready_posts += 1;
        let ms = arrived.duration_since(shared.start).as_millis() as u64;
        st.pps.first_ready_ms.get_or_insert(ms);
        if let (Some(delay), false, true) = (st.auto_assign_ms, st.auto_assign_scheduled, st.customer.is_some()) {
            st.auto_assign_scheduled = true;
            let timer_shared = Arc::clone(shared);
            let spawned = std::thread::Builder::new().name("azprov-sim-assign".into()).spawn(move || {
                timer_shared.sleep(delay);
                if !timer_shared.stopped() {
                    // an earlier manual assignment makes this one a no-op
                    let _ = assign(&timer_shared, AssignTrigger::Auto);
                }
            });
            if spawned.is_err() {
                st.auto_assign_scheduled = false;
            }
        }
    }
    phase
}

/// The `State` a health post reports, read leniently (also for posts a fault answers).
fn reported_state(req: &Request, endpoint: Endpoint) -> Option<String> {
    match endpoint {
        Endpoint::Health => {
            let body = std::str::from_utf8(&req.body).ok()?;
            xml::parse(body).ok().and_then(|root| parse_health(&root).ok()).map(|p| p.state)
        }
        Endpoint::JsonHealth => serde_json::from_slice::<JsonHealthBody>(&req.body).ok().map(|b| b.state),
        _ => None,
    }
}

/// Switches the served VM to the customer's and runs the hook (module documentation).
fn assign(shared: &Shared, trigger: AssignTrigger) -> Result<Assignment, AssignError> {
    let assignment = {
        let mut st = shared.lock();
        let Some(customer) = st.customer.clone() else { return Err(AssignError::NoCustomer) };
        if st.pps.assignment.is_some() {
            return Err(AssignError::AlreadyAssigned);
        }
        let current = st.vm.incarnation;
        let incarnation = if customer.incarnation > current { customer.incarnation } else { current.saturating_add(1) };
        st.vm = VmDefinition { incarnation, ..customer };
        let a = Assignment {
            pps_type: st.pps.pps_type.clone(),
            trigger,
            ms: shared.start.elapsed().as_millis() as u64,
            incarnation,
        };
        st.pps.assignment = Some(a.clone());
        a
    };
    let result = match shared.hook.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        Some(hook) => hook(&assignment),
        None => Ok(()),
    };
    match result {
        Ok(()) => Ok(assignment),
        Err(e) => {
            shared.lock().pps.hook_error = Some(e.clone());
            Err(AssignError::Hook(e))
        }
    }
}

fn reprovision_data(shared: &Shared, req: &Request) -> Outcome {
    let e = Endpoint::ImdsReprovision;
    if let Err(why) = imds_common_checks(req) {
        return reject(e, 400, why);
    }
    match req.query("api-version") {
        None | Some("") => return reject(
            e,
            400,
            "Bad request. api-version was not specified in the request. For more information refer to aka.ms/azureimds",
        ),
        Some(v) if !IMDS_API_VERSIONS.contains(&v) => {
            return reject(
                e,
                400,
                "Bad request. api-version is invalid or was not specified in the request. For more information refer \
                 to aka.ms/azureimds",
            )
        }
        Some(_) => {}
    }
    let mut st = shared.lock();
    if st.pps.assignment.is_none() {
        drop(st);
        let mut o = reject(e, 404, "the VM is not assigned yet");
        o.response.body = json!({ "error": "Not found" }).to_string().into_bytes();
        return o;
    }
    st.pps.reprovision_served += 1;
    let ovf = crate::ovf::ovf_env_xml(&st.vm);
    Outcome::ok(Response::new(200, XML, ovf))
}

fn control(shared: &Arc<Shared>, req: &Request) -> Outcome {
    let e = Endpoint::Control;
    let status = |shared: &Shared| serde_json::to_string(&shared.lock().pps).unwrap_or_default();
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/azprov-sim/assign") => match assign(shared, AssignTrigger::Control) {
            Ok(_) => Outcome::ok(Response::new(200, JSON, status(shared))),
            Err(err) => {
                let code = if matches!(err, AssignError::Hook(_)) { 500 } else { 409 };
                let mut o = reject(e, code, err.to_string());
                o.response.body =
                    json!({ "error": err.to_string(), "status": shared.lock().pps.clone() }).to_string().into_bytes();
                o
            }
        },
        ("GET", "/azprov-sim/pps") => Outcome::ok(Response::new(200, JSON, status(shared))),
        (m, p @ ("/azprov-sim/assign" | "/azprov-sim/pps")) => reject(e, 405, format!("{m} {p} is not allowed")),
        (_, p) => reject(e, 404, format!("no such control path: {p}")),
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// Wireserver

/// The `GET /?comp=versions` answer (platform.md §5.3).
pub fn versions_xml() -> String {
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Versions>\n  <Preferred>\n    <Version>2015-04-05</Version>\n  \
     </Preferred>\n  <Supported>\n    <Version>2015-04-05</Version>\n    <Version>2012-11-30</Version>\n    \
     <Version>2010-12-15</Version>\n  </Supported>\n</Versions>\n"
        .to_string()
}

/// The goal state for `vm` (platform.md §5.4); configuration URLs point at `base_url`.
pub fn goal_state_xml(vm: &VmDefinition, base_url: &str) -> String {
    let n = vm.incarnation;
    let container = xml_escape(&vm.container_id);
    let instance = xml_escape(&vm.role_instance_id);
    let instance_url: String = vm
        .role_instance_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let base = format!("{base_url}/machine/{}/{}", vm.container_id, instance_url);
    let cfg = |kind: &str| xml_escape(&format!("{base}?comp=config&type={kind}&incarnation={n}"));
    let certificates = xml_escape(&format!("{base}?comp=certificates&incarnation={n}"));
    let guid = vm.role_instance_id.split_once('.').map_or(vm.role_instance_id.as_str(), |(g, _)| g);
    let config_name = xml_escape(&format!("{guid}.{n}.{guid}.{n}.{}.1.xml", vm.vm_name()));
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>{WIRESERVER_VERSION}</Version>
  <Incarnation>{n}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts>
      <Port>16001</Port>
    </LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{container}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{instance}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{}</HostingEnvironmentConfig>
          <SharedConfig>{}</SharedConfig>
          <ExtensionsConfig>{}</ExtensionsConfig>
          <FullConfig>{}</FullConfig>
          <Certificates>{certificates}</Certificates>
          <ConfigName>{config_name}</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
        cfg("hostingEnvironmentConfig"),
        cfg("sharedConfig"),
        cfg("extensionsConfig"),
        cfg("fullConfig"),
    )
}

fn has_value(req: &Request, header: &str) -> bool {
    req.header(header).is_some_and(|v| !v.trim().is_empty())
}

/// The `x-ms-version` and `x-ms-agent-name` every wireserver call but `comp=versions` carries (platform.md §5.2).
fn wire_headers(req: &Request) -> Result<(), String> {
    match req.header("x-ms-version") {
        Some(WIRESERVER_VERSION) => {}
        Some(v) => return Err(format!("unsupported x-ms-version {v:?}")),
        None => return Err("missing x-ms-version header".into()),
    }
    if !has_value(req, "x-ms-agent-name") {
        return Err("missing x-ms-agent-name header".into());
    }
    Ok(())
}

fn xml_post_checks(req: &Request) -> Result<String, String> {
    wire_headers(req)?;
    let ct = req.header("content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("text/xml") {
        return Err(format!("expected Content-Type text/xml, got {ct:?}"));
    }
    String::from_utf8(req.body.clone()).map_err(|_| "body is not UTF-8".to_string())
}

fn goal_state(shared: &Shared, req: &Request) -> Outcome {
    if let Err(why) = wire_headers(req) {
        return reject(Endpoint::GoalState, 400, why);
    }
    let vm = shared.lock().vm.clone();
    Outcome::ok(Response::new(200, XML, goal_state_xml(&vm, &shared.base_url)))
}

fn certificates(shared: &Shared, req: &Request) -> Outcome {
    let e = Endpoint::Certificates;
    if let Err(why) = wire_headers(req) {
        return reject(e, 400, why);
    }
    let Some(cert) = req.header("x-ms-guest-agent-public-x509-cert").filter(|c| !c.trim().is_empty()) else {
        return reject(e, 400, "missing x-ms-guest-agent-public-x509-cert header");
    };
    let recipient = match crate::certs::Recipient::from_header(cert) {
        Ok(r) => r,
        Err(why) => return reject(e, 400, why),
    };
    // Without the header the platform "currently defaults to AES128_CBC" (WALinuxAgent).
    let cipher = match req.header("x-ms-cipher-name") {
        None => crate::certs::ContentCipher::Aes128Cbc,
        Some(c) => match crate::certs::ContentCipher::from_header(c) {
            Some(cipher) => cipher,
            None => return reject(e, 400, format!("unsupported x-ms-cipher-name {c:?}")),
        },
    };
    let vm = shared.lock().vm.clone();
    match crate::certs::certificate_file_xml(
        &vm.certificates,
        vm.incarnation,
        &recipient,
        vm.cert_key_transport,
        cipher,
    ) {
        Ok(body) => Outcome::ok(Response::new(200, XML, body)),
        Err(why) => reject(e, 500, format!("cannot build the certificates answer: {why}")),
    }
}

fn xml_health(shared: &Shared, req: &Request) -> Outcome {
    let e = Endpoint::Health;
    let body = match xml_post_checks(req) {
        Ok(b) => b,
        Err(why) => return reject(e, 400, why),
    };
    let parsed = match xml::parse(&body).and_then(|root| parse_health(&root)) {
        Ok(p) => p,
        Err(why) => return reject(e, 400, format!("invalid health report: {why}")),
    };
    let mut st = shared.lock();
    if parsed.incarnation != st.vm.incarnation {
        let why = format!("stale GoalStateIncarnation {} (current {})", parsed.incarnation, st.vm.incarnation);
        drop(st);
        return reject(e, 410, why);
    }
    if parsed.container_id != st.vm.container_id {
        return reject(e, 400, format!("unknown ContainerId {:?}", parsed.container_id));
    }
    if parsed.instance_id != st.vm.role_instance_id {
        return reject(e, 400, format!("unknown InstanceId {:?}", parsed.instance_id));
    }
    let report = HealthReport {
        state: parsed.state,
        sub_status: parsed.sub_status,
        description: parsed.description,
        protocol: "xml".into(),
        incarnation: Some(parsed.incarnation),
    };
    st.push_health(report.clone());
    Outcome { response: Response::new(200, XML, Vec::new()), error: None, health: Some(report) }
}

struct ParsedHealth {
    incarnation: u32,
    container_id: String,
    instance_id: String,
    state: String,
    sub_status: Option<String>,
    description: Option<String>,
}

fn parse_health(root: &xml::Element) -> Result<ParsedHealth, String> {
    root.expect_name("Health")?;
    root.only_children(&["GoalStateIncarnation", "Container"])?;
    let inc_text = root.one("GoalStateIncarnation")?.leaf_text()?;
    let incarnation = inc_text.trim().parse::<u32>().map_err(|_| format!("GoalStateIncarnation {inc_text:?}"))?;
    let container = root.one("Container")?;
    container.only_children(&["ContainerId", "RoleInstanceList"])?;
    let container_id = container.one("ContainerId")?.leaf_text()?.trim().to_string();
    let list = container.one("RoleInstanceList")?;
    list.only_children(&["Role"])?;
    let role = list.one("Role")?;
    role.only_children(&["InstanceId", "Health"])?;
    let instance_id = role.one("InstanceId")?.leaf_text()?.trim().to_string();
    let health = role.one("Health")?;
    health.only_children(&["State", "Details"])?;
    let state = health.one("State")?.leaf_text()?.trim().to_string();
    if state != "Ready" && state != "NotReady" {
        return Err(format!("State {state:?} is neither Ready nor NotReady"));
    }
    let (mut sub_status, mut description) = (None, None);
    if let Some(details) = health.optional("Details")? {
        details.only_children(&["SubStatus", "Description"])?;
        sub_status = Some(details.one("SubStatus")?.leaf_text()?.to_string());
        if let Some(d) = details.optional("Description")? {
            let text = d.leaf_text()?;
            if text.len() > MAX_DESCRIPTION_BYTES {
                return Err(format!("Description of {} bytes exceeds {MAX_DESCRIPTION_BYTES}", text.len()));
            }
            description = Some(text.to_string());
        }
    }
    Ok(ParsedHealth { incarnation, container_id, instance_id, state, sub_status, description })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHealthBody {
    state: String,
    details: Option<JsonHealthDetails>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JsonHealthDetails {
    sub_status: String,
    description: Option<String>,
}

fn json_health(shared: &Shared, req: &Request) -> Outcome {
    let e = Endpoint::JsonHealth;
    if !has_value(req, "x-ms-guest-agent-name") {
        return reject(e, 400, "missing x-ms-guest-agent-name header");
    }
    let ct = req.header("content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return reject(e, 400, format!("expected Content-Type application/json, got {ct:?}"));
    }
    let body: JsonHealthBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(err) => return reject(e, 400, format!("invalid health report: {err}")),
    };
    if body.state != "Ready" && body.state != "NotReady" {
        return reject(e, 400, format!("invalid health report: state {:?} is neither Ready nor NotReady", body.state));
    }
    let (sub_status, description) = match body.details {
        Some(d) => (Some(d.sub_status), d.description),
        None => (None, None),
    };
    if description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES) {
        return reject(e, 400, format!("invalid health report: description exceeds {MAX_DESCRIPTION_BYTES} bytes"));
    }
    let report =
        HealthReport { state: body.state, sub_status, description, protocol: "json".into(), incarnation: None };
    shared.lock().push_health(report.clone());
    Outcome { response: Response::new(200, JSON, Vec::new()), error: None, health: Some(report) }
}

fn role_properties(shared: &Shared, req: &Request) -> Outcome {
    let e = Endpoint::RoleProperties;
    let body = match xml_post_checks(req) {
        Ok(b) => b,
        Err(why) => return reject(e, 400, why),
    };
    let parsed = xml::parse(&body).and_then(|root| {
        root.expect_name("RoleProperties")?;
        root.only_children(&["Container"])?;
        let container = root.one("Container")?;
        container.only_children(&["ContainerId", "RoleInstances"])?;
        let container_id = container.one("ContainerId")?.leaf_text()?.trim().to_string();
        let instances = container.one("RoleInstances")?;
        instances.only_children(&["RoleInstance"])?;
        let instance = instances.one("RoleInstance")?;
        instance.only_children(&["Id", "Properties"])?;
        let id = instance.one("Id")?.leaf_text()?.trim().to_string();
        let props = instance.one("Properties")?;
        props.only_children(&["Property"])?;
        let mut out = Vec::new();
        for p in &props.children {
            p.leaf_text()?;
            let name = p.attr("name").ok_or("Property without name")?;
            let value = p.attr("value").ok_or("Property without value")?;
            out.push((name.to_string(), value.to_string()));
        }
        if out.is_empty() {
            return Err("no Property".to_string());
        }
        Ok((container_id, id, out))
    });
    let (container_id, id, props) = match parsed {
        Ok(p) => p,
        Err(why) => return reject(e, 400, format!("invalid role properties: {why}")),
    };
    let mut st = shared.lock();
    if container_id != st.vm.container_id {
        return reject(e, 400, format!("unknown ContainerId {container_id:?}"));
    }
    if id != st.vm.role_instance_id {
        return reject(e, 400, format!("unknown RoleInstance Id {id:?}"));
    }
    st.role_properties.extend(props);
    Outcome::ok(Response::new(202, XML, Vec::new()))
}

// ---------------------------------------------------------------------------------------------------------------------
// Time

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-25T17:20:01.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}
