//! The simulator over real loopback sockets, with a raw HTTP/1.1 client.

use std::io::{self, Read as _, Write as _};

use base64::Engine as _;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::server::Simulator;
use azprov_sim::vm::VmDefinition;

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends one request and reads until EOF. `Ok(None)`: the server closed without sending a byte.
fn send(sim: &Simulator, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> io::Result<Option<Resp>> {
    send_with_timeout(sim, method, target, headers, body, Duration::from_secs(10))
}

fn send_with_timeout(
    sim: &Simulator,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> io::Result<Option<Resp>> {
    let mut s = TcpStream::connect(sim.addr())?;
    s.set_read_timeout(Some(timeout))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", sim.addr());
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    if raw.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_string(), v.trim().to_string())
        })
        .collect::<Vec<_>>();
    let resp = Resp { status, headers, body: body.to_string() };
    if let Some(len) = resp.header("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), resp.body.len(), "Content-Length");
    }
    Ok(Some(resp))
}

fn get(sim: &Simulator, target: &str, headers: &[(&str, &str)]) -> Resp {
    send(sim, "GET", target, headers, "").unwrap().expect("a response")
}

fn post(sim: &Simulator, target: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    send(sim, "POST", target, headers, body).unwrap().expect("a response")
}

const IMDS: &str = "/metadata/instance?api-version=2021-08-01&extended=true";
const MD: &[(&str, &str)] = &[("Metadata", "true")];
const WIRE: &[(&str, &str)] = &[("x-ms-agent-name", "azprov"), ("x-ms-version", "2012-11-30")];
const WIRE_XML: &[(&str, &str)] =
    &[("x-ms-agent-name", "azprov"), ("x-ms-version", "2012-11-30"), ("Content-Type", "text/xml;charset=utf-8")];
const JSON_HEALTH: &[(&str, &str)] =
    &[("x-ms-guest-agent-name", "azprov v0.1.0"), ("Content-Type", "application/json")];

fn sim() -> Simulator {
    Simulator::start(VmDefinition::default(), Faults::none()).unwrap()
}

fn sim_with(faults: Faults) -> Simulator {
    Simulator::start(VmDefinition::default(), faults).unwrap()
}

fn health_xml(vm: &VmDefinition, incarnation: u32, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Health xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">\n  <GoalStateIncarnation>{incarnation}</GoalStateIncarnation>\n  \
         <Container>\n    <ContainerId>{}</ContainerId>\n    <RoleInstanceList>\n      <Role>\n        \
         <InstanceId>{}</InstanceId>\n        <Health>{inner}</Health>\n      </Role>\n    </RoleInstanceList>\n  \
         </Container>\n</Health>\n",
        vm.container_id, vm.role_instance_id
    )
}

const READY: &str = "<State>Ready</State>";

// ---------------------------------------------------------------------------------------------------------------------
// IMDS

#[test]
fn imds_without_metadata_header_is_400() {
    let sim = sim();
    let r = get(&sim, IMDS, &[]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("metadata header"), "{}", r.body);
    let r = get(&sim, IMDS, &[("Metadata", "false")]);
    assert_eq!(r.status, 400);
}

#[test]
fn imds_with_x_forwarded_for_is_400() {
    let sim = sim();
    let r = get(&sim, IMDS, &[("Metadata", "true"), ("X-Forwarded-For", "10.1.2.3")]);
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("X-Forwarded-For"));
}

#[test]
fn imds_instance_document() {
    let sim = sim();
    let vm = sim.vm();
    let r = get(&sim, IMDS, MD);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let doc = r.json();
    let c = &doc["compute"];
    assert_eq!(c["vmId"], vm.vm_id.as_str());
    assert_eq!(c["osProfile"]["adminUsername"], "azureuser");
    assert_eq!(c["osProfile"]["computerName"], "azprov-demo");
    assert_eq!(c["osProfile"]["disablePasswordAuthentication"], "false");
    assert_eq!(c["publicKeys"][0]["keyData"], vm.ssh_keys[0].as_str());
    assert_eq!(c["publicKeys"][0]["path"], "/home/azureuser/.ssh/authorized_keys");
    assert_eq!(c["userData"], "YXpwcm92IGRlbW8gdXNlckRhdGEK"); // "azprov demo userData\n"
    assert_eq!(c["vmSize"], "Standard_D2s_v5");
    assert_eq!(c["location"], "westeurope");
    assert_eq!(doc["extended"]["compute"]["hasCustomData"], true);
    assert_eq!(doc["extended"]["compute"]["ppsType"], "None");
    let nic = &doc["network"]["interface"][0];
    assert_eq!(nic["macAddress"], "6045BDA1B2C3");
    assert_eq!(nic["ipv4"]["ipAddress"][0]["privateIpAddress"], "10.0.0.4");
    assert_eq!(nic["ipv4"]["subnet"][0]["address"], "10.0.0.0");
    assert!(!r.body.contains("Passw0rd"), "the password never goes through IMDS");

    // Without extended=true there is no extended block.
    let plain = get(&sim, "/metadata/instance?api-version=2023-11-15", MD).json();
    assert!(plain.get("extended").is_none());
    assert!(plain["compute"].get("userData").is_some());
}

#[test]
fn imds_versions_and_fallback() {
    let sim = sim();
    for bad in [
        "/metadata/instance?api-version=2099-01-01&extended=true",
        "/metadata/instance",
        "/metadata/instance?api-version=",
    ] {
        let r = get(&sim, bad, MD);
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["newest-versions"].as_array().is_some_and(|v| !v.is_empty()));
    }
    let r = get(&sim, "/metadata/instance?api-version=2019-06-01", MD);
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["compute"]["vmId"], sim.vm().vm_id.as_str());
    assert!(doc["compute"].get("userData").is_none(), "no userData before 2021-01-01");
    assert!(doc.get("extended").is_none());
    assert_eq!(doc["compute"]["publicKeys"][0]["keyData"], sim.vm().ssh_keys[0].as_str());
    // extended=true on an old version: accepted, no block.
    let r = get(&sim, "/metadata/instance?api-version=2019-06-01&extended=true", MD);
    assert_eq!(r.status, 200);
    assert!(r.json().get("extended").is_none());

    let v = get(&sim, "/metadata/versions", MD);
    assert_eq!(v.status, 200);
    let list = v.json()["apiVersions"].as_array().unwrap().clone();
    for want in ["2019-06-01", "2021-08-01", "2023-11-15"] {
        assert!(list.iter().any(|x| x == want), "{want}");
    }
    assert_eq!(get(&sim, "/metadata/versions", &[]).status, 400);
}

#[test]
fn imds_specialized_vm_has_no_os_profile() {
    let vm = VmDefinition { specialized: true, ..Default::default() };
    let sim = Simulator::start(vm, Faults::none()).unwrap();
    let doc = get(&sim, IMDS, MD).json();
    assert!(doc["compute"].get("osProfile").is_none());
    assert_eq!(doc["compute"]["publicKeys"].as_array().unwrap().len(), 0);
    assert_eq!(doc["extended"]["compute"]["hasCustomData"], false);
}

#[test]
fn imds_computer_name_can_differ_from_the_ovf_host_name() {
    let vm =
        VmDefinition { hostname: "ovf-name".into(), imds_hostname: Some("imds-name".into()), ..Default::default() };
    assert!(azprov_sim::ovf::ovf_env_xml(&vm).contains("<HostName>ovf-name</HostName>"));
    let sim = Simulator::start(vm, Faults::none()).unwrap();
    assert_eq!(get(&sim, IMDS, MD).json()["compute"]["osProfile"]["computerName"], "imds-name");
}

#[test]
fn imds_password_authentication_flag_is_a_string() {
    let vm = VmDefinition { disable_password_authentication: true, password: None, ..Default::default() };
    let sim = Simulator::start(vm, Faults::none()).unwrap();
    assert_eq!(get(&sim, IMDS, MD).json()["compute"]["osProfile"]["disablePasswordAuthentication"], "true");
}

// ---------------------------------------------------------------------------------------------------------------------
// Wireserver

#[test]
fn versions_need_no_headers() {
    let sim = sim();
    let r = get(&sim, "/?comp=versions", &[]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<Version>2012-11-30</Version>"));
    assert!(r.header("content-type").unwrap().starts_with("text/xml"));
}

#[test]
fn goal_state_validates_headers() {
    let sim = sim();
    let vm = sim.vm();
    assert_eq!(get(&sim, "/machine/?comp=goalstate", &[]).status, 400);
    assert_eq!(get(&sim, "/machine/?comp=goalstate", &[("x-ms-agent-name", "azprov")]).status, 400);
    assert_eq!(get(&sim, "/machine/?comp=goalstate", &[("x-ms-version", "2012-11-30")]).status, 400);
    let wrong = [("x-ms-agent-name", "azprov"), ("x-ms-version", "2015-04-05")];
    assert_eq!(get(&sim, "/machine/?comp=goalstate", &wrong).status, 400);

    for target in ["/machine/?comp=goalstate", "/machine?comp=goalstate"] {
        let r = get(&sim, target, WIRE);
        assert_eq!(r.status, 200, "{target}");
        assert!(r.body.contains("<Incarnation>1</Incarnation>"));
        assert!(r.body.contains(&format!("<ContainerId>{}</ContainerId>", vm.container_id)));
        assert!(r.body.contains(&format!("<InstanceId>{}</InstanceId>", vm.role_instance_id)));
        assert!(r.body.contains(&format!("<Certificates>{}/machine/{}/", sim.url(), vm.container_id)));
        assert!(r.body.contains("?comp=certificates&amp;incarnation=1</Certificates>"));
    }
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 6);
    assert_eq!(reqs[0].endpoint, "goalstate");
    assert_eq!(reqs[0].status, Some(400));
    assert!(reqs[0].error.as_deref().unwrap().contains("x-ms-version"));
}

#[test]
fn certificates_url_from_goal_state() {
    let sim = sim();
    let gs = get(&sim, "/machine/?comp=goalstate", WIRE).body;
    let url = gs.split("<Certificates>").nth(1).unwrap().split("</Certificates>").next().unwrap().replace("&amp;", "&");
    let target = url.strip_prefix(&sim.url()).unwrap();
    assert_eq!(get(&sim, target, WIRE).status, 400, "the transport certificate header is required");
    let mut h = WIRE.to_vec();
    h.push(("x-ms-cipher-name", "AES128_CBC"));
    // A truncated certificate: the platform cannot encrypt to it.
    h.push(("x-ms-guest-agent-public-x509-cert", "MIIBszCCAVmgAwIBAgIUQUJD"));
    let r = get(&sim, target, &h);
    assert_eq!(r.status, 400, "{}", r.body);
    // A real certificate (with a Subject Key Identifier); the default VM has no certificates: no Data.
    let transport = azprov_sim::SimCert::generate_rsa("LinuxTransport").unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(transport.cert_der().unwrap());
    h.pop();
    h.push(("x-ms-guest-agent-public-x509-cert", &b64));
    let r = get(&sim, target, &h);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("<CertificateFile") && !r.body.contains("<Data>"), "{}", r.body);
    let n = h.len();
    h[n - 2] = ("x-ms-cipher-name", "RC4");
    assert_eq!(get(&sim, target, &h).status, 400);
}

#[test]
fn health_ready_is_recorded() {
    let sim = sim();
    let vm = sim.vm();
    assert!(!sim.ready_reported());
    let r = post(&sim, "/machine?comp=health", WIRE_XML, &health_xml(&vm, 1, READY));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(sim.ready_reported());
    let reports = sim.health_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].state, "Ready");
    assert_eq!(reports[0].protocol, "xml");
    assert_eq!(reports[0].incarnation, Some(1));
    assert_eq!(reports[0].sub_status, None);
    let last = sim.requests().pop().unwrap();
    assert_eq!(last.health.unwrap().state, "Ready");
}

#[test]
fn health_not_ready_with_details() {
    let sim = sim();
    let vm = sim.vm();
    let inner = "<State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus>\
                 <Description>result=error|reason=a &amp; b &lt;c&gt;</Description></Details>";
    // afterburn's spelling of the path.
    let r = post(&sim, "/machine/?comp=health", WIRE_XML, &health_xml(&vm, 1, inner));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!sim.ready_reported());
    let h = &sim.health_reports()[0];
    assert_eq!(h.state, "NotReady");
    assert_eq!(h.sub_status.as_deref(), Some("ProvisioningFailed"));
    assert_eq!(h.description.as_deref(), Some("result=error|reason=a & b <c>"));
}

#[test]
fn stale_incarnation_is_410() {
    let sim = sim();
    let vm = sim.vm();
    sim.set_incarnation(2);
    let r = post(&sim, "/machine?comp=health", WIRE_XML, &health_xml(&vm, 1, READY));
    assert_eq!(r.status, 410);
    assert!(!sim.ready_reported());
    assert!(get(&sim, "/machine/?comp=goalstate", WIRE).body.contains("<Incarnation>2</Incarnation>"));
    let r = post(&sim, "/machine?comp=health", WIRE_XML, &health_xml(&vm, 2, READY));
    assert_eq!(r.status, 200);
    assert!(sim.ready_reported());
}

#[test]
fn malformed_health_is_400() {
    let sim = sim();
    let vm = sim.vm();
    let good = health_xml(&vm, 1, READY);
    let cases: Vec<(String, &str)> = vec![
        (good[..good.len() - 12].to_string(), "truncated"),
        (good.replace("<State>Ready</State>", "<State>Fine</State>"), "unknown state"),
        (good.replace("<State>Ready</State>", "<State>Ready</State><Extra/>"), "unknown element"),
        (good.replace("<GoalStateIncarnation>1", "<GoalStateIncarnation>one"), "bad incarnation"),
        (good.replace("<Role>", "<Role>junk"), "stray text"),
        (good.replace("</Container>", "</Container><Container/>"), "duplicate"),
        (good.replace(&vm.container_id, "00000000-0000-0000-0000-000000000000"), "wrong container"),
        (good.replace(&vm.role_instance_id, "x.y"), "wrong instance"),
        ("{\"state\":\"Ready\"}".to_string(), "json"),
        (String::new(), "empty"),
    ];
    for (body, what) in &cases {
        let r = post(&sim, "/machine?comp=health", WIRE_XML, body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
    }
    let wrong_type =
        [("x-ms-agent-name", "azprov"), ("x-ms-version", "2012-11-30"), ("Content-Type", "application/json")];
    assert_eq!(post(&sim, "/machine?comp=health", &wrong_type, &good).status, 400);
    assert_eq!(post(&sim, "/machine?comp=health", &WIRE_XML[1..], &good).status, 400);
    let long = format!("<State>NotReady</State><Details><SubStatus>ProvisioningFailed</SubStatus><Description>{}</Description></Details>", "x".repeat(5000));
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &health_xml(&vm, 1, &long)).status, 400);
    assert!(sim.health_reports().is_empty());
    assert_eq!(get(&sim, "/machine?comp=health", WIRE).status, 405);
}

#[test]
fn json_health() {
    let sim = sim();
    assert_eq!(post(&sim, "/provisioning/health", &JSON_HEALTH[1..], "{\"state\":\"Ready\"}").status, 400);
    for bad in ["", "{", "{\"state\":\"Done\"}", "{\"state\":\"Ready\",\"extra\":1}", "[]", "{\"details\":{}}"] {
        assert_eq!(post(&sim, "/provisioning/health", JSON_HEALTH, bad).status, 400, "{bad}");
    }
    assert!(sim.health_reports().is_empty());

    let not_ready = r#"{"state":"NotReady","details":{"subStatus":"Provisioning","description":"still going"}}"#;
    assert_eq!(post(&sim, "/provisioning/health", JSON_HEALTH, not_ready).status, 200);
    assert!(!sim.ready_reported());
    assert_eq!(post(&sim, "/provisioning/health", JSON_HEALTH, "{\"state\":\"Ready\"}").status, 200);
    assert!(sim.ready_reported());
    let h = sim.health_reports();
    assert_eq!(h[0].protocol, "json");
    assert_eq!(h[0].sub_status.as_deref(), Some("Provisioning"));
    assert_eq!(h[0].description.as_deref(), Some("still going"));
    assert_eq!(h[0].incarnation, None);
    assert_eq!(h[1].state, "Ready");
}

#[test]
fn role_properties_are_accepted_with_202() {
    let sim = sim();
    let vm = sim.vm();
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<RoleProperties><Container><ContainerId>{}</ContainerId>\
         <RoleInstances><RoleInstance><Id>{}</Id><Properties><Property name=\"CertificateThumbprint\" \
         value=\"SHA256abc\"/></Properties></RoleInstance></RoleInstances></Container></RoleProperties>",
        vm.container_id, vm.role_instance_id
    );
    assert_eq!(post(&sim, "/machine?comp=roleProperties", WIRE_XML, &body).status, 202);
    assert_eq!(sim.role_properties(), vec![("CertificateThumbprint".to_string(), "SHA256abc".to_string())]);
    assert_eq!(post(&sim, "/machine?comp=roleProperties", WIRE_XML, "<RoleProperties/>").status, 400);
}

#[test]
fn unknown_paths_are_404() {
    let sim = sim();
    assert_eq!(get(&sim, "/", &[]).status, 404);
    assert_eq!(get(&sim, "/machine/?comp=nothing", WIRE).status, 404);
    assert_eq!(get(&sim, "/metadata/identity/oauth2/token", MD).status, 404);
    assert_eq!(sim.requests().iter().filter(|r| r.endpoint == "unknown").count(), 3);
}

#[test]
fn garbage_request_is_400() {
    let sim = sim();
    let mut s = TcpStream::connect(sim.addr()).unwrap();
    s.write_all(b"HELLO\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert_eq!(sim.requests()[0].endpoint, "invalid");
}

// ---------------------------------------------------------------------------------------------------------------------
// Faults

#[test]
fn fault_status_then_normal() {
    let faults = Faults {
        imds: vec![
            FaultStep::Status { code: 503, body: None, retry_after: Some(2) },
            FaultStep::Status { code: 429, body: Some("{\"error\":\"slow down\"}".into()), retry_after: None },
        ],
        ..Default::default()
    };
    let sim = sim_with(faults);
    let r = get(&sim, IMDS, MD);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    let r = get(&sim, IMDS, MD);
    assert_eq!((r.status, r.body.as_str()), (429, "{\"error\":\"slow down\"}"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(get(&sim, IMDS, MD).status, 200);
    // Other endpoints are unaffected.
    assert_eq!(get(&sim, "/machine/?comp=goalstate", WIRE).status, 200);
    let faults: Vec<_> = sim.requests().iter().map(|r| r.fault.clone()).collect();
    assert_eq!(faults, vec![Some("status 503".into()), Some("status 429".into()), None, None]);
}

#[test]
fn fault_status_for_lasts_its_duration() {
    let faults = Faults {
        goalstate: vec![
            FaultStep::StatusFor { code: 410, ms: 400 },
            FaultStep::Status { code: 500, body: None, retry_after: None },
        ],
        ..Default::default()
    };
    let sim = sim_with(faults);
    let t0 = Instant::now();
    let mut gone = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        assert_eq!(get(&sim, "/machine/?comp=goalstate", WIRE).status, 410);
        gone += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone >= 3);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(get(&sim, "/machine/?comp=goalstate", WIRE).status, 500, "next step after the duration");
    assert_eq!(get(&sim, "/machine/?comp=goalstate", WIRE).status, 200);
}

#[test]
fn fault_delay_exceeds_a_read_timeout_then_answers() {
    let faults =
        Faults { imds: vec![FaultStep::Delay { ms: 600 }, FaultStep::Delay { ms: 300 }], ..Default::default() };
    let sim = sim_with(faults);
    let err = send_with_timeout(&sim, "GET", IMDS, MD, "", Duration::from_millis(150)).unwrap_err();
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
    let t0 = Instant::now();
    let r = get(&sim, IMDS, MD);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, 200);
    // Records are appended when a request is answered: the 600 ms one may still be sleeping.
    assert!(sim.requests().iter().any(|r| r.fault.as_deref() == Some("delay 300ms") && r.status == Some(200)));
}

#[test]
fn fault_drop_closes_without_a_byte() {
    let faults = Faults { health: vec![FaultStep::Drop], ..Default::default() };
    let sim = sim_with(faults);
    let body = health_xml(&sim.vm(), 1, READY);
    assert!(send(&sim, "POST", "/machine?comp=health", WIRE_XML, &body).unwrap().is_none());
    assert!(!sim.ready_reported(), "a dropped report is not accepted");
    assert_eq!(sim.requests()[0].status, None);
    assert_eq!(sim.requests()[0].fault.as_deref(), Some("drop"));
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &body).status, 200);
    assert!(sim.ready_reported());
}

#[test]
fn fault_hang_holds_the_connection() {
    let faults = Faults { imds: vec![FaultStep::Hang { ms: 500 }, FaultStep::Hang { ms: 5000 }], ..Default::default() };
    let sim = sim_with(faults);
    let err = send_with_timeout(&sim, "GET", IMDS, MD, "", Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err}");
    // A hang ends in a close without an answer; other connections are served meanwhile.
    let sim2_thread = {
        let addr = sim.addr();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /metadata/instance?api-version=2021-08-01 HTTP/1.1\r\nMetadata: true\r\n\r\n").unwrap();
            let mut out = Vec::new();
            let t0 = Instant::now();
            s.read_to_end(&mut out).unwrap();
            (out, t0.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(get(&sim, IMDS, MD).status, 200);
    // Stopping the simulator releases the held connection early.
    sim.stop();
    let (out, waited) = sim2_thread.join().unwrap();
    assert!(out.is_empty());
    assert!(waited < Duration::from_millis(4000), "{waited:?}");
}

#[test]
fn fault_malformed_is_200_garbage() {
    let faults =
        Faults { imds: vec![FaultStep::Malformed], versions: vec![FaultStep::Malformed], ..Default::default() };
    let sim = sim_with(faults);
    let r = get(&sim, IMDS, MD);
    assert_eq!(r.status, 200);
    assert!(serde_json::from_str::<serde_json::Value>(&r.body).is_err());
    let r = get(&sim, "/?comp=versions", &[]);
    assert_eq!(r.status, 200);
    assert!(!r.body.contains("<Versions>"));
}

#[test]
fn faults_can_be_replaced_at_runtime() {
    let sim = sim();
    assert_eq!(get(&sim, IMDS, MD).status, 200);
    sim.set_faults(Faults::from_toml("[[imds]]\nkind = \"status\"\ncode = 500\n").unwrap());
    assert_eq!(get(&sim, IMDS, MD).status, 500);
    assert_eq!(get(&sim, IMDS, MD).status, 200);
}

// ---------------------------------------------------------------------------------------------------------------------
// Lifecycle and logging

#[test]
fn request_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.jsonl");
    let faults =
        Faults { imds: vec![FaultStep::Status { code: 503, body: None, retry_after: None }], ..Default::default() };
    let sim = sim_with(faults);
    sim.set_request_log(&path).unwrap();
    let vm = sim.vm();
    get(&sim, IMDS, MD);
    get(&sim, IMDS, MD);
    post(&sim, "/machine?comp=health", WIRE_XML, &health_xml(&vm, 1, READY));
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["method"], "GET");
    assert_eq!(lines[0]["target"], IMDS);
    assert_eq!(lines[0]["headers"]["metadata"], "true");
    assert_eq!(lines[0]["status"], 503);
    assert_eq!(lines[0]["fault"], "status 503");
    assert_eq!(lines[1]["status"], 200);
    assert!(lines[1]["fault"].is_null());
    assert_eq!(lines[2]["endpoint"], "health");
    assert_eq!(lines[2]["health"]["state"], "Ready");
    assert!(lines[2]["ts"].as_str().unwrap().ends_with('Z'));
    assert!(!text.contains(vm.password.as_deref().unwrap()));
}

#[test]
fn non_loopback_addresses_are_refused() {
    for addr in ["0.0.0.0:0", "10.0.0.1:0", "[::]:0", "168.63.129.16:80"] {
        let err = Simulator::start_on(addr, VmDefinition::default(), Faults::none()).err().expect(addr);
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{addr}");
    }
    let err = Simulator::start_on("localhost:0", VmDefinition::default(), Faults::none()).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let sim = Simulator::start_on("127.0.0.1:0", VmDefinition::default(), Faults::none()).unwrap();
    assert!(sim.url().starts_with("http://127.0.0.1:"));
}

#[test]
fn stop_and_drop_close_the_port() {
    let sim = sim();
    let addr = sim.addr();
    assert_eq!(get(&sim, "/?comp=versions", &[]).status, 200);
    sim.stop();
    assert!(TcpStream::connect(addr).is_err());
    let addr = {
        let sim = self::sim();
        sim.addr()
    };
    assert!(TcpStream::connect(addr).is_err());
}
