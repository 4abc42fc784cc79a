//! Wireserver certificates (platform.md §5.8): the self-signed transport certificate the platform encrypts to, and
//! the decryption of a `comp=certificates` answer (CMS EnvelopedData → PKCS#12 PFX → certificates and keys).
//!
//! Everything here is pure Rust (RustCrypto); the CMS and PKCS#12 structures are walked with a small BER reader
//! of our own ([`asn1`]), so definite-length DER and indefinite-length BER are both accepted.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use der::asn1::ObjectIdentifier;
use der::{Decode, DecodePem, Encode};
use pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha1::{Digest, Sha1};
use spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use tracing::warn;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::{AuthorityKeyIdentifier, BasicConstraints, SubjectKeyIdentifier};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

use crate::report::Failure;
use crate::secret::Secret;

/// Subject and issuer of the transport certificate.
pub const TRANSPORT_SUBJECT: &str = "CN=LinuxTransport";
/// RSA modulus size of the transport key (WALinuxAgent, afterburn).
pub const TRANSPORT_KEY_BITS: usize = 2048;
/// Validity of the transport certificate (WALinuxAgent).
pub const TRANSPORT_VALIDITY_DAYS: u64 = 730;
/// The only `Format` understood (an empty `Format` means the same).
pub const FORMAT_PFX: &str = "Pkcs7BlobWithPfxContents";

/// Everything that can go wrong generating the transport certificate or decrypting certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("random number generator failed: {0}")]
    Rng(String),
    #[error("transport certificate: {0}")]
    Transport(String),
    #[error("malformed certificates document: {0}")]
    Xml(String),
    #[error("malformed {0}")]
    Malformed(String),
    #[error("unsupported {0}")]
    Unsupported(String),
    #[error("no recipient in the envelope matches the transport certificate")]
    NoRecipient,
    #[error("content-encryption key: {0}")]
    KeyTransport(String),
    #[error("content decryption failed: {0}")]
    Content(String),
    #[error("PKCS#12: {0}")]
    Pfx(String),
}

impl CertError {
    /// The public failure (platform.md §6.2 style reason).
    pub fn failure(&self) -> Failure {
        match self {
            CertError::Rng(_) | CertError::Transport(_) => {
                Failure::new("failure to generate transport certificate").with("error", self)
            }
            _ => Failure::new("failure to decrypt certificates").with("error", self),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------------------------

/// The operating system's CSPRNG (`getrandom(2)`), fallible, for the RustCrypto APIs.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRng;

/// `getrandom` failed.
#[derive(Debug, Clone, Copy)]
pub struct RngError(getrandom::Error);

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "getrandom: {}", self.0)
    }
}

impl std::error::Error for RngError {}

impl rand_core::TryRng for OsRng {
    type Error = RngError;

    fn try_next_u32(&mut self) -> Result<u32, RngError> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, RngError> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RngError> {
        getrandom::getrandom(dst).map_err(RngError)
    }
}

impl rand_core::TryCryptoRng for OsRng {}

fn random_bytes(n: usize) -> Result<Vec<u8>, CertError> {
    let mut v = vec![0u8; n];
    getrandom::getrandom(&mut v).map_err(|e| CertError::Rng(e.to_string()))?;
    Ok(v)
}

// ---------------------------------------------------------------------------------------------------------------
// Transport certificate
// ---------------------------------------------------------------------------------------------------------------

/// Our self-signed transport certificate and its RSA key (platform.md §5.8). The key is zeroized on drop (rsa).
pub struct TransportCert {
    key: RsaPrivateKey,
    der: Vec<u8>,
}

impl fmt::Debug for TransportCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransportCert(thumbprint {}, key redacted)", thumbprint(&self.der))
    }
}

/// The certificate profile: self-signed `CN=LinuxTransport` with SKI, AKI (= SKI) and BasicConstraints CA:TRUE.
struct TransportProfile {
    subject: Name,
}

impl BuilderProfile for TransportProfile {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        // SubjectKeyIdentifier: SHA-1 of the subjectPublicKey BIT STRING contents (RFC 5280 §4.2.1.2 method 1).
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        let mut extensions: Vec<Extension> = Vec::new();
        extensions
            .push(BasicConstraints { ca: true, path_len_constraint: None }.to_extension(tbs.subject(), &extensions)?);
        extensions.push(ski.to_extension(tbs.subject(), &extensions)?);
        extensions.push(
            AuthorityKeyIdentifier { key_identifier: Some(ski.0.clone()), ..Default::default() }
                .to_extension(tbs.subject(), &extensions)?,
        );
        Ok(extensions)
    }
}

impl TransportCert {
    /// Generate a fresh RSA 2048 key and a self-signed certificate valid for 730 days from now, with a random
    /// positive 16-byte serial.
    pub fn generate() -> Result<TransportCert, CertError> {
        let key = RsaPrivateKey::new(&mut OsRng, TRANSPORT_KEY_BITS).map_err(|e| CertError::Rng(e.to_string()))?;
        let der = self_signed(&key)?;
        Ok(TransportCert { key, der })
    }

    /// Load a persisted pair: the certificate PEM and the PKCS#8 private key PEM. The certificate's public key
    /// must be the key's.
    pub fn from_pem(cert_pem: &str, key_pem: &Secret) -> Result<TransportCert, CertError> {
        let key = key_from_pem(key_pem)?;
        let cert = Certificate::from_pem(cert_pem.as_bytes())
            .map_err(|e| CertError::Transport(format!("certificate PEM: {e}")))?;
        let der = cert.to_der().map_err(|e| CertError::Transport(format!("certificate: {e}")))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| CertError::Transport(format!("certificate key: {e}")))?;
        let own =
            key.to_public_key().to_public_key_der().map_err(|e| CertError::Transport(format!("public key: {e}")))?;
        if own.as_bytes() != spki.as_slice() {
            return Err(CertError::Transport("certificate does not belong to the private key".into()));
        }
        Ok(TransportCert { key, der })
    }

    /// Load a persisted private key and issue a new self-signed certificate for it.
    pub fn from_key_pem(key_pem: &Secret) -> Result<TransportCert, CertError> {
        let key = key_from_pem(key_pem)?;
        let der = self_signed(&key)?;
        Ok(TransportCert { key, der })
    }

    /// The certificate, DER.
    pub fn der(&self) -> Vec<u8> {
        self.der.clone()
    }

    /// The certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    /// The value of `x-ms-guest-agent-public-x509-cert`: base64 of the DER on one line.
    pub fn header_value(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.der)
    }

    /// Upper-case hex SHA-1 of the certificate DER.
    pub fn thumbprint(&self) -> String {
        thumbprint(&self.der)
    }

    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), for persisting with mode 0600.
    pub fn private_key_pem(&self) -> Result<Secret, CertError> {
        let pem = self.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| CertError::Transport(format!("PKCS#8: {e}")))?;
        Ok(Secret::from(pem.to_string()))
    }

    /// The RSA private key (for [`decrypt_certificates`]).
    pub fn key(&self) -> &RsaPrivateKey {
        &self.key
    }
}

fn key_from_pem(key_pem: &Secret) -> Result<RsaPrivateKey, CertError> {
    let text = std::str::from_utf8(key_pem.expose())
        .map_err(|_| CertError::Transport("private key PEM is not UTF-8".into()))?;
    RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| CertError::Transport(format!("private key PEM: {e}")))
}

fn self_signed(key: &RsaPrivateKey) -> Result<Vec<u8>, CertError> {
    let terr = |what: &str, e: &dyn fmt::Display| CertError::Transport(format!("{what}: {e}"));
    let subject: Name = TRANSPORT_SUBJECT.parse().map_err(|e| terr("subject", &e))?;
    let mut serial = random_bytes(16)?;
    serial[0] = (serial[0] & 0x7f) | 0x40; // positive, 16 significant bytes
    let serial = SerialNumber::new(&serial).map_err(|e| terr("serial", &e))?;
    let validity =
        Validity::from_now(Duration::from_secs(TRANSPORT_VALIDITY_DAYS * 86_400)).map_err(|e| terr("validity", &e))?;
    let spki_der = key.to_public_key().to_public_key_der().map_err(|e| terr("public key", &e))?;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(|e| terr("public key", &e))?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let builder = CertificateBuilder::new(TransportProfile { subject }, serial, validity, spki)
        .map_err(|e| terr("builder", &e))?;
    let cert = builder.build::<_, rsa::pkcs1v15::Signature>(&signer).map_err(|e| terr("signing", &e))?;
    cert.to_der().map_err(|e| terr("encoding", &e))
}

/// Upper-case hex SHA-1 (40 characters) — the platform's certificate thumbprint.
pub fn thumbprint(cert_der: &[u8]) -> String {
    Sha1::digest(cert_der).iter().map(|b| format!("{b:02X}")).collect()
}

/// PEM armour with 64-character lines and a trailing newline.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have(program: &str) -> bool {
        let ok = Command::new(program).arg("version").output().is_ok();
        if !ok {
            if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
                panic!("AZPROV_REQUIRE_SHARED=1 but {program} is not installed");
            }
            eprintln!("skipping: {program} is not installed");
        }
        ok
    }

    #[test]
    fn transport_cert_is_self_signed_with_ski() {
        let t0 = std::time::Instant::now();
        let t = TransportCert::generate().unwrap();
        eprintln!("keygen + cert: {:?}", t0.elapsed());
        let cert = Certificate::from_der(&t.der()).unwrap();
        let tbs = cert.tbs_certificate();
        assert_eq!(tbs.subject().to_string(), "CN=LinuxTransport");
        assert_eq!(tbs.issuer().to_string(), "CN=LinuxTransport");
        let life = tbs.validity().not_after.to_unix_duration() - tbs.validity().not_before.to_unix_duration();
        assert_eq!(life, Duration::from_secs(730 * 86_400));
        let exts = tbs.extensions().unwrap();
        let oids: Vec<String> = exts.iter().map(|e| e.extn_id.to_string()).collect();
        assert_eq!(oids, ["2.5.29.19", "2.5.29.14", "2.5.29.35"]);
        // SKI = SHA-1 of the subjectPublicKey bits.
        let spk = tbs.subject_public_key_info().subject_public_key.raw_bytes();
        let ski = SubjectKeyIdentifier::from_der(exts[1].extn_value.as_bytes()).unwrap();
        assert_eq!(ski.0.as_bytes(), Sha1::digest(spk).as_slice());
        // Header value: one line of base64 of the DER.
        let hv = t.header_value();
        assert!(!hv.contains('\n'));
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(&hv).unwrap(), t.der());
        assert_eq!(t.thumbprint().len(), 40);

        // PEM round trip.
        let key_pem = t.private_key_pem().unwrap();
        assert!(key_pem.expose().starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        let back = TransportCert::from_pem(&t.cert_pem(), &key_pem).unwrap();
        assert_eq!(back.der(), t.der());
        let reissued = TransportCert::from_key_pem(&key_pem).unwrap();
        assert_ne!(reissued.der(), t.der());
        assert!(TransportCert::from_pem(&reissued.cert_pem(), &key_pem).is_ok());
        let other = TransportCert::generate().unwrap();
        assert!(matches!(
            TransportCert::from_pem(&t.cert_pem(), &other.private_key_pem().unwrap()),
            Err(CertError::Transport(_))
        ));
        assert!(!format!("{t:?}").contains("PRIVATE"));

        if !have("openssl") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.pem"), t.cert_pem()).unwrap();
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(dir.path().join("t.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "Subject: CN = LinuxTransport",
            "Issuer: CN = LinuxTransport",
            "Public-Key: (2048 bit)",
            "X509v3 Subject Key Identifier",
            "X509v3 Authority Key Identifier",
            "CA:TRUE",
            "sha256WithRSAEncryption",
        ] {
            assert!(text.contains(want), "{want} missing in {text}");
        }
        // The signature verifies (self-signed).
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.path().join("t.pem"))
            .arg(dir.path().join("t.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        // The fingerprint matches our thumbprint.
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
            .arg(dir.path().join("t.pem"))
            .output()
            .unwrap();
        let fp = String::from_utf8_lossy(&out.stdout).trim().rsplit('=').next().unwrap().replace(':', "");
        assert_eq!(fp, t.thumbprint());
    }
}
