//! Wireserver certificates end to end: the simulator's `comp=certificates` answer (PFX in CMS, made by
//! `azprov_sim::certs`) fetched and decrypted by the agent, and `azprov inspect certificates` on the shared sample set
//! and on simulator answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use azprov::platform::certificates::{certificates_for, decrypt_certificates, CertEntry, TransportCert};
use azprov::platform::http::HttpClient;
use azprov::platform::wireserver::{
    fetch_certificates_with, fetch_goal_state, CertCipher, GoalState, HealthProtocol, WireConfig,
};
use azprov::timeutil::SystemClock;
use azprov_sim::faults::{FaultStep, Faults};
use azprov_sim::{KeyTransport, SimCert, Simulator, VmDefinition};

const HIBERNATE: &str = "certs/walinuxagent-hibernate";

/// A shared fixture path (`../shared/fixtures/<rel>`), or `None` (with a reason) when the directory is absent,
/// unless `AZPROV_REQUIRE_SHARED=1`.
fn fixture(rel: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    if dir.is_dir() {
        return Some(dir.join(rel));
    }
    if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("AZPROV_REQUIRE_SHARED=1 but {} does not exist", dir.display());
    }
    eprintln!("skipping: {} is absent", dir.display());
    None
}

fn cfg(base: &str) -> WireConfig {
    WireConfig {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(20),
        min_interval: Duration::from_millis(1),
        ..WireConfig::new(base, HealthProtocol::Xml, Instant::now() + Duration::from_secs(5))
    }
}

fn client() -> HttpClient {
    HttpClient::new(Duration::from_millis(500), Duration::from_millis(2000))
}

/// Two certificates as a VM with a key pair and a fingerprint-only SSH key has them.
struct Vm {
    pair: SimCert,
    public: SimCert,
    transport: TransportCert,
}

/// Generated once for all tests (RSA key generation is the slow part).
fn vm_certs() -> &'static Vm {
    static VM: std::sync::OnceLock<Vm> = std::sync::OnceLock::new();
    VM.get_or_init(|| Vm {
        pair: SimCert::generate_rsa("keypair").unwrap().key_pair(),
        public: SimCert::generate_rsa("sshkey").unwrap().public_key(),
        transport: TransportCert::generate().unwrap(),
    })
}

fn start(v: &Vm, transport: KeyTransport, faults: Faults) -> Simulator {
    let vm = VmDefinition {
        certificates: vec![v.pair.clone(), v.public.clone()],
        cert_key_transport: transport,
        ..Default::default()
    };
    Simulator::start(vm, faults).unwrap()
}

fn goal(sim: &Simulator) -> GoalState {
    fetch_goal_state(&client(), &cfg(&sim.url()), &SystemClock).unwrap()
}

fn check(v: &Vm, certs: &[CertEntry]) {
    let mut got: Vec<(String, bool)> =
        certs.iter().map(|c| (c.thumbprint.clone(), c.private_key_pem.is_some())).collect();
    got.sort();
    let mut want = vec![(v.pair.thumbprint().unwrap(), true), (v.public.thumbprint().unwrap(), false)];
    want.sort();
    assert_eq!(got, want);
    for sim_cert in [&v.pair, &v.public] {
        let c = certs.iter().find(|c| c.thumbprint == sim_cert.thumbprint().unwrap()).unwrap();
        assert_eq!(c.public_key_openssh, sim_cert.ssh_public_key().unwrap());
    }
    // The key pair's private key comes back as it went in (PKCS#8 PEM).
    let kp = certs.iter().find(|c| c.private_key_pem.is_some()).unwrap();
    assert_eq!(kp.private_key_pem.as_ref().unwrap().expose(), v.pair.key_pem.as_deref().unwrap().as_bytes());
}

#[test]
fn agent_decrypts_simulator_certificates_every_cipher_and_padding() {
    let v = vm_certs();
    for transport in [KeyTransport::Oaep, KeyTransport::Pkcs1v15] {
        let sim = start(v, transport, Faults::none());
        let g = goal(&sim);
        // The agent's own sequence (AES128_CBC first).
        let certs = certificates_for(&client(), &cfg(&sim.url()), &SystemClock, &g, &v.transport).unwrap();
        check(v, &certs);
        // Each cipher explicitly.
        for cipher in [CertCipher::Aes128Cbc, CertCipher::DesEde3Cbc] {
            let body =
                fetch_certificates_with(&client(), &cfg(&sim.url()), &SystemClock, &g, &v.transport, cipher).unwrap();
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("<Format>Pkcs7BlobWithPfxContents</Format>") && text.contains("<Data>"), "{text}");
            check(v, &decrypt_certificates(&body, v.transport.key()).unwrap());
        }
        let reqs = sim.requests();
        let certs_reqs: Vec<_> = reqs.iter().filter(|r| r.endpoint == "certificates").collect();
        assert_eq!(certs_reqs.len(), 3);
        assert!(certs_reqs.iter().all(|r| r.status == Some(200)), "{certs_reqs:?}");
    }
}

#[test]
fn aes_refused_falls_back_to_des() {
    let v = vm_certs();
    let faults =
        Faults { certificates: vec![FaultStep::Status { code: 400, body: None, retry_after: None }], ..Faults::none() };
    let sim = start(v, KeyTransport::Oaep, faults);
    let g = goal(&sim);
    let certs = certificates_for(&client(), &cfg(&sim.url()), &SystemClock, &g, &v.transport).unwrap();
    check(v, &certs);
    let statuses: Vec<Option<u16>> =
        sim.requests().iter().filter(|r| r.endpoint == "certificates").map(|r| r.status).collect();
    assert_eq!(statuses, [Some(400), Some(200)]);
}

#[test]
fn another_transport_key_cannot_decrypt() {
    let v = vm_certs();
    let sim = start(v, KeyTransport::Pkcs1v15, Faults::none());
    let g = goal(&sim);
    let body =
        fetch_certificates_with(&client(), &cfg(&sim.url()), &SystemClock, &g, &v.transport, CertCipher::Aes128Cbc)
            .unwrap();
    let other = TransportCert::generate().unwrap();
    assert!(decrypt_certificates(&body, other.key()).is_err());
}

#[test]
fn simulator_ovf_names_the_certificates() {
    let v = vm_certs();
    let vm = VmDefinition { certificates: vec![v.pair.clone(), v.public.clone()], ..Default::default() };
    let env = azprov::platform::ovf::parse(azprov_sim::ovf::ovf_env_xml(&vm).as_bytes()).unwrap();
    let kp: Vec<(String, Option<String>)> =
        env.key_pairs.iter().map(|k| (k.fingerprint.clone(), k.path.clone())).collect();
    assert_eq!(kp, [(v.pair.thumbprint().unwrap(), Some("/home/azureuser/.ssh/id_rsa".to_string()))]);
    let fp_only: Vec<_> = env.public_keys.iter().filter(|k| k.fingerprint.is_some()).collect();
    assert_eq!(fp_only.len(), 1);
    assert_eq!(fp_only[0].fingerprint.as_deref(), Some(v.public.thumbprint().unwrap().as_str()));
    assert!(fp_only[0].value.as_deref().unwrap_or("").is_empty(), "{:?}", fp_only[0]);
    assert_eq!(fp_only[0].path.as_deref(), Some("/home/azureuser/.ssh/authorized_keys"));
}

// ---------------------------------------------------------------------------------------------------------------------
// azprov inspect certificates

fn inspect(xml: &Path, key: &Path, cert: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_azprov"))
        .args(["inspect", "certificates", "--certificates"])
        .arg(xml)
        .arg("--transport-key")
        .arg(key)
        .arg("--transport-cert")
        .arg(cert)
        .output()
        .unwrap()
}

fn listed(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn inspect_lists_the_sample_set() {
    let Some(dir) = fixture(HIBERNATE) else { return };
    for gs in ["goal_state_1", "goal_state_2"] {
        let out = inspect(
            &dir.join(gs).join("Certificates.xml"),
            &dir.join("TransportPrivate.pem"),
            &dir.join("TransportCert.pem"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
        let mut got: Vec<(String, bool)> = listed(&out)
            .iter()
            .map(|c| {
                let tp = c["thumbprint"].as_str().unwrap().to_string();
                assert_eq!(tp.len(), 40);
                assert_eq!(tp, tp.to_ascii_uppercase());
                assert!(c["ssh_public_key"].as_str().unwrap().starts_with("ssh-rsa AAAAB3NzaC1yc2E"), "{c}");
                assert_eq!(c.as_object().unwrap().len(), 3, "{c}");
                (tp, c["has_private_key"].as_bool().unwrap())
            })
            .collect();
        let expected: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(gs).join("Certificates.json")).unwrap()).unwrap();
        let mut want: Vec<(String, bool)> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["thumbprint"].as_str().unwrap().to_string(), c["hasPrivateKey"].as_bool().unwrap()))
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{gs}");
    }
}

#[test]
fn inspect_with_another_key_fails() {
    let Some(dir) = fixture(HIBERNATE) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let other = TransportCert::generate().unwrap();
    std::fs::write(tmp.path().join("k.pem"), other.private_key_pem().unwrap().expose()).unwrap();
    std::fs::write(tmp.path().join("c.pem"), other.cert_pem()).unwrap();
    let xml = dir.join("goal_state_1/Certificates.xml");
    let out = inspect(&xml, &tmp.path().join("k.pem"), &tmp.path().join("c.pem"));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("content-encryption key") || err.contains("decrypt"), "{err}");
    // A key that does not belong to the certificate is refused before decrypting.
    let out = inspect(&xml, &tmp.path().join("k.pem"), &dir.join("TransportCert.pem"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn inspect_simulator_answer() {
    let v = vm_certs();
    let sim = start(v, KeyTransport::Oaep, Faults::none());
    let g = goal(&sim);
    let body =
        fetch_certificates_with(&client(), &cfg(&sim.url()), &SystemClock, &g, &v.transport, CertCipher::DesEde3Cbc)
            .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(d.join("Certificates.xml"), &body).unwrap();
    std::fs::write(d.join("k.pem"), v.transport.private_key_pem().unwrap().expose()).unwrap();
    std::fs::write(d.join("c.pem"), v.transport.cert_pem()).unwrap();
    let out = inspect(&d.join("Certificates.xml"), &d.join("k.pem"), &d.join("c.pem"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE"));
    let list = listed(&out);
    assert_eq!(list.len(), 2);
    for c in &list {
        let sim_cert = if c["has_private_key"].as_bool().unwrap() { &v.pair } else { &v.public };
        assert_eq!(c["thumbprint"].as_str().unwrap(), sim_cert.thumbprint().unwrap());
        assert_eq!(c["ssh_public_key"].as_str(), sim_cert.ssh_public_key().unwrap().as_deref());
    }
    // An answer without Data is an empty list, not an error.
    std::fs::write(
        d.join("empty.xml"),
        "<CertificateFile><Version>2012-11-30</Version><Format>Pkcs7BlobWithPfxContents</Format></CertificateFile>",
    )
    .unwrap();
    let out = inspect(&d.join("empty.xml"), &d.join("k.pem"), &d.join("c.pem"));
    assert_eq!(listed(&out).len(), 0);
    // A missing file is an error.
    let out = inspect(&d.join("nope.xml"), &d.join("k.pem"), &d.join("c.pem"));
    assert_eq!(out.status.code(), Some(1));
}
