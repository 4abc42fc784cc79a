//! Pre-provisioned pool VMs over real loopback sockets: `reprovisiondata`, the assignment (control endpoint,
//! automatic, Rust API), the switch of IMDS and goal state, and how the records tell the two Readys apart.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::server::{AssignError, AssignTrigger, Simulator};
use azprov_sim::vm::VmDefinition;

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One request; `None` when the server closed without answering.
fn send(sim: &Simulator, method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> Option<Resp> {
    let mut s = TcpStream::connect(sim.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", sim.addr());
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Some(Resp { status, body: body.to_string() })
}

const MD: &[(&str, &str)] = &[("Metadata", "true")];
const REPROVISION: &str = "/metadata/reprovisiondata?api-version=2019-06-01";
const IMDS: &str = "/metadata/instance?api-version=2021-08-01&extended=true";
const WIRE: &[(&str, &str)] = &[("x-ms-agent-name", "azprov"), ("x-ms-version", "2012-11-30")];
const WIRE_XML: &[(&str, &str)] =
    &[("x-ms-agent-name", "azprov"), ("x-ms-version", "2012-11-30"), ("Content-Type", "text/xml;charset=utf-8")];

fn get(sim: &Simulator, target: &str, headers: &[(&str, &str)]) -> Resp {
    send(sim, "GET", target, headers, "").expect("an answer")
}

fn post(sim: &Simulator, target: &str, headers: &[(&str, &str)], body: &str) -> Option<Resp> {
    send(sim, "POST", target, headers, body)
}

fn pool(pps_type: &str) -> VmDefinition {
    let pool = VmDefinition {
        pps_type: pps_type.into(),
        hostname: "pool-0042".into(),
        username: "pooladmin".into(),
        ..Default::default()
    };
    pool.clone().with_customer(VmDefinition {
        hostname: "web-01".into(),
        username: "alice".into(),
        password: None,
        disable_password_authentication: true,
        ..pool
    })
}

fn start(vm: VmDefinition) -> Simulator {
    Simulator::start(vm, Faults::none()).unwrap()
}

fn health(vm: &VmDefinition, incarnation: u32) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Health><GoalStateIncarnation>{incarnation}</GoalStateIncarnation>\
         <Container><ContainerId>{}</ContainerId><RoleInstanceList><Role><InstanceId>{}</InstanceId>\
         <Health><State>Ready</State></Health></Role></RoleInstanceList></Container></Health>",
        vm.container_id, vm.role_instance_id
    )
}

fn goal_state_incarnation(sim: &Simulator) -> u32 {
    let gs = get(sim, "/machine/?comp=goalstate", WIRE).body;
    let start = gs.find("<Incarnation>").unwrap() + "<Incarnation>".len();
    gs[start..].split('<').next().unwrap().parse().unwrap()
}

#[test]
fn pool_vm_is_served_until_assigned() {
    let vm = pool("Running");
    let ovf = azprov_sim::ovf::ovf_env_xml(&vm);
    assert!(ovf.contains("<ns1:PreprovisionedVm>true</ns1:PreprovisionedVm>"), "{ovf}");
    assert!(ovf.contains("<ns1:PreprovisionedVMType>Running</ns1:PreprovisionedVMType>"));
    assert!(ovf.contains("<HostName>pool-0042</HostName>"));

    let sim = start(vm);
    let doc = get(&sim, IMDS, MD).json();
    assert_eq!(doc["extended"]["compute"]["ppsType"], "Running");
    assert_eq!(doc["compute"]["osProfile"]["computerName"], "pool-0042");
    for _ in 0..3 {
        let r = get(&sim, REPROVISION, MD);
        assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("Not found")));
    }
    // IMDS rules apply
    assert_eq!(get(&sim, REPROVISION, &[]).status, 400);
    assert_eq!(get(&sim, "/metadata/reprovisiondata", MD).status, 400);
    assert_eq!(get(&sim, "/metadata/reprovisiondata?api-version=1999-01-01", MD).status, 400);
    assert_eq!(send(&sim, "POST", REPROVISION, MD, "").unwrap().status, 405);
    let st = sim.pps_status();
    assert_eq!(st.pps_type, "Running");
    assert!(st.has_customer && !st.assigned());
    assert_eq!((st.reprovision_polls, st.reprovision_polls_pooled, st.reprovision_served), (7, 7, 0));
    let recs = sim.requests();
    assert!(recs.iter().all(|r| r.phase.as_deref() == Some("pool")));
    assert_eq!(recs.iter().filter(|r| r.endpoint == "reprovisiondata").count(), 7);
    assert_eq!(recs[1].error.as_deref(), Some("the VM is not assigned yet"));
}

#[test]
fn control_endpoint_assigns_and_switches_to_the_customer() {
    let vm = pool("Savable");
    let sim = start(vm.clone());
    assert_eq!(goal_state_incarnation(&sim), 1);
    let r = post(&sim, "/azprov-sim/assign", &[], "").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let st = r.json();
    assert_eq!(st["assignment"]["trigger"], "control");
    assert_eq!(st["assignment"]["pps_type"], "Savable");
    assert_eq!(st["assignment"]["incarnation"], 2);

    // reprovisiondata: the customer's OVF, not pre-provisioned
    let r = get(&sim, REPROVISION, MD);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, azprov_sim::ovf::ovf_env_xml(&vm.customer_definition().unwrap()));
    assert!(r.body.contains("<HostName>web-01</HostName>") && r.body.contains("<UserName>alice</UserName>"));
    assert!(r.body.contains("<ns1:PreprovisionedVm>false</ns1:PreprovisionedVm>"));
    assert!(!r.body.contains("UserPassword"));
    // IMDS: the customer's document
    let doc = get(&sim, IMDS, MD).json();
    assert_eq!(doc["extended"]["compute"]["ppsType"], "None");
    assert_eq!(doc["compute"]["osProfile"]["computerName"], "web-01");
    assert_eq!(doc["compute"]["osProfile"]["adminUsername"], "alice");
    assert_eq!(doc["compute"]["osProfile"]["disablePasswordAuthentication"], "true");
    assert_eq!(doc["compute"]["vmId"], vm.vm_id.as_str());
    // the goal state moved on
    assert_eq!(goal_state_incarnation(&sim), 2);
    assert_eq!(sim.vm().incarnation, 2);
    assert_eq!(sim.vm().hostname, "web-01");

    // once only
    let r = post(&sim, "/azprov-sim/assign", &[], "").unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "the VM is already assigned");
    assert_eq!(sim.assign(), Err(AssignError::AlreadyAssigned));
    // status, wrong method, unknown path
    let st = get(&sim, "/azprov-sim/pps", &[]).json();
    assert_eq!((st["reprovision_served"].as_u64(), st["reprovision_polls_pooled"].as_u64()), (Some(1), Some(0)));
    assert_eq!(get(&sim, "/azprov-sim/assign", &[]).status, 405);
    assert_eq!(get(&sim, "/azprov-sim/nope", &[]).status, 404);
    let phases: Vec<_> = sim.requests().iter().map(|r| r.phase.clone().unwrap()).collect();
    assert_eq!(phases[..2], ["pool", "pool"]);
    assert!(phases[2..].iter().all(|p| p == "customer"), "{phases:?}");
    assert!(sim.requests().iter().filter(|r| r.endpoint == "control").count() >= 4);
}

#[test]
fn records_tell_the_intermediate_ready_from_the_final_one() {
    let vm = pool("Running");
    let sim = start(vm.clone());
    let log = tempfile::NamedTempFile::new().unwrap();
    sim.set_request_log(log.path()).unwrap();
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 1)).unwrap().status, 200);
    let st = sim.pps_status();
    assert!(st.intermediate_ready() && !st.final_ready());
    assert_eq!(st.pool_ready_posts, 1);
    assert!(st.first_ready_ms.is_some());

    let a = sim.assign().unwrap();
    assert_eq!((a.trigger, a.incarnation), (AssignTrigger::Api, 2));
    // a report with the pool's incarnation is stale now; the customer's identity is the pool VM's here
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 1)).unwrap().status, 410);
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 2)).unwrap().status, 200);
    let st = sim.pps_status();
    assert!(st.intermediate_ready() && st.final_ready());
    assert_eq!(st.pool_health.len(), 1);
    assert_eq!(st.customer_health.len(), 1);
    assert_eq!(st.pool_health[0].incarnation, Some(1));
    assert_eq!(st.customer_health[0].incarnation, Some(2));
    assert_eq!(st.pool_ready_posts, 1, "Ready after the assignment is not a pool Ready");

    let text = std::fs::read_to_string(log.path()).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let readys: Vec<(&str, u64)> = lines
        .iter()
        .filter(|l| l["health"]["state"] == "Ready")
        .map(|l| (l["phase"].as_str().unwrap(), l["health"]["incarnation"].as_u64().unwrap()))
        .collect();
    assert_eq!(readys, vec![("pool", 1), ("customer", 2)]);
}

#[test]
fn automatic_assignment_after_the_first_ready() {
    let vm = VmDefinition { assign_after_ready_ms: Some(150), ..pool("Running") };
    let sim = start(vm.clone());
    assert_eq!(sim.wait_for_assignment(Duration::from_millis(300)), None, "nothing before a Ready");
    // NotReady does not count
    let not_ready = health(&vm, 1).replace("<State>Ready</State>", "<State>NotReady</State>");
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &not_ready).unwrap().status, 200);
    assert_eq!(sim.wait_for_assignment(Duration::from_millis(300)), None);
    assert_eq!(post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 1)).unwrap().status, 200);
    assert_eq!(get(&sim, REPROVISION, MD).status, 404);
    let a = sim.wait_for_assignment(Duration::from_secs(5)).expect("assigned");
    assert_eq!(a.trigger, AssignTrigger::Auto);
    let st = sim.pps_status();
    assert!(a.ms >= st.first_ready_ms.unwrap() + 150, "{a:?} {st:?}");
    assert_eq!(get(&sim, REPROVISION, MD).status, 200);
    assert_eq!(st.pool_health.len(), 2);
}

#[test]
fn savable_intermediate_ready_dropped_still_assigns() {
    // the VM is suspended as it reports: the POST gets no answer
    let vm = VmDefinition { assign_after_ready_ms: Some(50), ..pool("Savable") };
    let faults = Faults { health: vec![FaultStep::Drop], ..Faults::none() };
    let sim = Simulator::start(vm.clone(), faults).unwrap();
    assert!(post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 1)).is_none());
    let a = sim.wait_for_assignment(Duration::from_secs(5)).expect("assigned");
    assert_eq!((a.trigger, a.pps_type.as_str()), (AssignTrigger::Auto, "Savable"));
    let st = sim.pps_status();
    assert_eq!(st.pool_ready_posts, 1);
    assert!(!st.intermediate_ready(), "the dropped report was not accepted");
    let rec = sim.requests().into_iter().find(|r| r.endpoint == "health").unwrap();
    assert_eq!((rec.fault.as_deref(), rec.status, rec.phase.as_deref()), (Some("drop"), None, Some("pool")));
    // JSON health counts too (and the final one is accepted)
    let json = [("x-ms-guest-agent-name", "azprov"), ("Content-Type", "application/json")];
    assert_eq!(post(&sim, "/provisioning/health", &json, "{\"state\":\"Ready\"}").unwrap().status, 200);
    assert!(sim.pps_status().final_ready());
}

#[test]
fn reprovisiondata_fault_script() {
    let faults = Faults {
        reprovisiondata: vec![
            FaultStep::Status { code: 429, body: None, retry_after: Some(1) },
            FaultStep::Status { code: 500, body: None, retry_after: None },
            FaultStep::Drop,
        ],
        ..Faults::none()
    };
    let sim = Simulator::start(pool("Running"), faults).unwrap();
    assert_eq!(get(&sim, REPROVISION, MD).status, 429);
    assert_eq!(get(&sim, REPROVISION, MD).status, 500);
    assert!(send(&sim, "GET", REPROVISION, MD, "").is_none());
    assert_eq!(get(&sim, REPROVISION, MD).status, 404);
    // the instance document is a separate script
    assert_eq!(get(&sim, IMDS, MD).status, 200);
    sim.assign().unwrap();
    assert_eq!(get(&sim, REPROVISION, MD).status, 200);
    let st = sim.pps_status();
    assert_eq!((st.reprovision_polls, st.reprovision_polls_pooled, st.reprovision_served), (5, 4, 1));
    let faults: Vec<_> = sim.requests().iter().filter_map(|r| r.fault.clone()).collect();
    assert_eq!(faults, ["status 429", "status 500", "drop"]);
}

#[test]
fn assign_hook_runs_after_the_switch() {
    let sim = Arc::new(start(pool("Running")));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (s2, seen2) = (Arc::downgrade(&sim), Arc::clone(&seen));
    sim.set_assign_hook(move |a| {
        // the customer is already served when the hook runs
        let hostname = s2.upgrade().map(|s| s.vm().hostname).unwrap_or_default();
        seen2.lock().unwrap().push((a.trigger, hostname));
        Err("carrier did not come back".into())
    });
    let r = post(&sim, "/azprov-sim/assign", &[], "").unwrap();
    assert_eq!(r.status, 500);
    assert!(r.json()["error"].as_str().unwrap().contains("carrier did not come back"));
    assert_eq!(*seen.lock().unwrap(), vec![(AssignTrigger::Control, "web-01".to_string())]);
    assert!(sim.is_assigned(), "assigned all the same");
    assert_eq!(sim.pps_status().hook_error.as_deref(), Some("carrier did not come back"));
    assert_eq!(get(&sim, REPROVISION, MD).status, 200);
}

#[test]
fn customer_incarnation_and_vms_without_customer() {
    let vm = pool("PreprovisionedOSDisk");
    let customer = VmDefinition { incarnation: 7, ..vm.customer_definition().unwrap() };
    let sim = start(VmDefinition { customer: None, ..vm.clone() }.with_customer(customer));
    assert_eq!(sim.assign().unwrap().incarnation, 7);
    assert_eq!(goal_state_incarnation(&sim), 7);

    // a plain VM: never assigned, no phase in its records
    let sim = start(VmDefinition::default());
    assert_eq!(get(&sim, REPROVISION, MD).status, 404);
    assert_eq!(sim.assign(), Err(AssignError::NoCustomer));
    let r = post(&sim, "/azprov-sim/assign", &[], "").unwrap();
    assert_eq!((r.status, r.json()["error"].as_str()), (409, Some("this VM has no customer definition")));
    assert!(sim.requests().iter().all(|r| r.phase.is_none()));
    let line = serde_json::to_string(&sim.requests()[0]).unwrap();
    assert!(!line.contains("phase"), "{line}");
    assert_eq!(sim.pps_status().pps_type, "None");
}

#[test]
fn toml_pool_vm_end_to_end() {
    let vm = VmDefinition::from_toml(
        r#"
        pps_type = "Running"
        hostname = "pool-7"
        assign_after_ready_ms = 0

        [customer]
        hostname = "db-01"
        "#,
    )
    .unwrap();
    let sim = start(vm.clone());
    post(&sim, "/machine?comp=health", WIRE_XML, &health(&vm, 1)).unwrap();
    sim.wait_for_assignment(Duration::from_secs(5)).expect("assigned");
    assert!(get(&sim, REPROVISION, MD).body.contains("<HostName>db-01</HostName>"));
}
