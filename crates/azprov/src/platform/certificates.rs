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
use rsa::PrivateKey as RsaPrivateKey;
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

use super::http::HttpClient;
use super::wireserver::{fetch_certificates_with, CertCipher, GoalState, WireConfig, WireError};
use crate::report::Failure;
use crate::secret::Secret;
use crate::timeutil::Clock;

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
    #[error("{0}")]
    Fetch(WireError),
}

impl CertError {
    /// The public failure (platform.md §6.2 style reason).
    pub fn failure(&self) -> Failure {
        match self {
            CertError::Rng(_) | CertError::Transport(_) => {
                Failure::new("failure to generate transport certificate").with("error", self)
            }
            CertError::Fetch(e) => Failure::new("failure to fetch certificates").with("error", e),
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
        let basic = BasicConstraints { ca: true, path_len_constraint: None }.to_extension(tbs.subject(), &[])?;
        let mut extensions: Vec<Extension> = vec![basic];
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
    let mut b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.extend(chunk.iter().map(|b| char::from(*b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    // The intermediate may hold a private key: wipe it (`out` is handed to a `Secret` by such callers).
    zeroize::Zeroize::zeroize(&mut b64);
    out
}

/// Fetch and decrypt the goal state's certificates (platform.md §5.8): ask for `AES128_CBC`; if that request or its
/// decryption fails, ask again for `DES_EDE3_CBC` (WALinuxAgent). No Certificates URL → no certificates.
pub fn certificates_for(
    client: &HttpClient,
    cfg: &WireConfig,
    clock: &dyn Clock,
    goal: &GoalState,
    transport: &TransportCert,
) -> Result<Vec<CertEntry>, CertError> {
    if goal.certificates_url.is_none() {
        return Ok(Vec::new());
    }
    let attempt = |cipher| {
        let body = fetch_certificates_with(client, cfg, clock, goal, transport, cipher).map_err(CertError::Fetch)?;
        decrypt_certificates(&body, transport.key())
    };
    match attempt(CertCipher::Aes128Cbc) {
        Ok(certs) => Ok(certs),
        Err(first) => {
            warn!(error = %first, "certificates with AES128_CBC failed; retrying with DES_EDE3_CBC");
            attempt(CertCipher::DesEde3Cbc)
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// A small BER reader (definite and indefinite lengths, constructed strings)
// ---------------------------------------------------------------------------------------------------------------

/// Just enough BER to walk CMS and PKCS#12: tag/length/content, nested parsing, constructed OCTET STRINGs.
pub(crate) mod asn1 {
    /// Nesting limit (CMS/PKCS#12 need fewer than 20 levels).
    const MAX_DEPTH: usize = 48;

    pub const UNIVERSAL: u8 = 0;
    pub const CONTEXT: u8 = 2;
    pub const INTEGER: u32 = 2;
    pub const OCTET_STRING: u32 = 4;
    pub const OID: u32 = 6;
    pub const SEQUENCE: u32 = 16;
    pub const SET: u32 = 17;

    /// One element. For an indefinite length, `content` excludes the end-of-contents marker.
    #[derive(Debug, Clone, Copy)]
    pub struct Tlv<'a> {
        pub class: u8,
        pub constructed: bool,
        pub number: u32,
        pub content: &'a [u8],
    }

    fn short(what: &str) -> String {
        format!("truncated {what}")
    }

    /// Parse one element at the start of `input`; returns it and the number of bytes it took.
    fn parse_one(input: &[u8], depth: usize) -> Result<(Tlv<'_>, usize), String> {
        if depth > MAX_DEPTH {
            return Err("nesting too deep".into());
        }
        let b0 = *input.first().ok_or_else(|| short("tag"))?;
        let class = b0 >> 6;
        let constructed = b0 & 0x20 != 0;
        let mut pos = 1;
        let mut number = u32::from(b0 & 0x1f);
        if number == 0x1f {
            number = 0;
            loop {
                let b = *input.get(pos).ok_or_else(|| short("tag"))?;
                pos += 1;
                if number > (u32::MAX >> 7) {
                    return Err("tag number too large".into());
                }
                number = (number << 7) | u32::from(b & 0x7f);
                if b & 0x80 == 0 {
                    break;
                }
            }
        }
        let l0 = *input.get(pos).ok_or_else(|| short("length"))?;
        pos += 1;
        if l0 == 0x80 {
            if !constructed {
                return Err("indefinite length on a primitive element".into());
            }
            let start = pos;
            loop {
                let rest = &input[pos..];
                if rest.len() < 2 {
                    return Err(short("indefinite-length element"));
                }
                if rest[0] == 0 && rest[1] == 0 {
                    let tlv = Tlv { class, constructed, number, content: &input[start..pos] };
                    return Ok((tlv, pos + 2));
                }
                let (_, used) = parse_one(rest, depth + 1)?;
                pos += used;
            }
        }
        let len = if l0 < 0x80 {
            usize::from(l0)
        } else {
            let n = usize::from(l0 & 0x7f);
            if n > 4 {
                return Err("length too large".into());
            }
            let bytes = input.get(pos..pos + n).ok_or_else(|| short("length"))?;
            pos += n;
            bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let end = pos.checked_add(len).ok_or_else(|| short("content"))?;
        let content = input.get(pos..end).ok_or_else(|| short("content"))?;
        Ok((Tlv { class, constructed, number, content }, end))
    }

    /// Parse a whole buffer holding one element (trailing zero bytes are tolerated, anything else is not).
    pub fn parse(input: &[u8]) -> Result<Tlv<'_>, String> {
        let (tlv, used) = parse_one(input, 0)?;
        if input[used..].iter().any(|b| *b != 0) {
            return Err("trailing data after the element".into());
        }
        Ok(tlv)
    }

    impl<'a> Tlv<'a> {
        pub fn is(&self, class: u8, number: u32) -> bool {
            self.class == class && self.number == number
        }

        /// The elements inside a constructed element.
        pub fn children(&self) -> Result<Vec<Tlv<'a>>, String> {
            if !self.constructed {
                return Err("expected a constructed element".into());
            }
            let mut out = Vec::new();
            let mut rest = self.content;
            while !rest.is_empty() {
                let (tlv, used) = parse_one(rest, 1)?;
                out.push(tlv);
                rest = &rest[used..];
            }
            Ok(out)
        }

        /// The children of a SEQUENCE (universal 16), with a message naming `what` otherwise.
        pub fn seq(&self, what: &str) -> Result<Vec<Tlv<'a>>, String> {
            if !self.is(UNIVERSAL, SEQUENCE) || !self.constructed {
                return Err(format!("{what}: expected a SEQUENCE"));
            }
            self.children().map_err(|e| format!("{what}: {e}"))
        }

        /// The bytes of a string type, primitive or constructed (BER segments concatenated).
        pub fn octets(&self) -> Result<Vec<u8>, String> {
            if !self.constructed {
                return Ok(self.content.to_vec());
            }
            let mut out = Vec::new();
            for c in self.children()? {
                out.extend_from_slice(&c.octets()?);
            }
            Ok(out)
        }

        /// An OBJECT IDENTIFIER's content octets.
        pub fn oid(&self, what: &str) -> Result<&'a [u8], String> {
            if self.is(UNIVERSAL, OID) && !self.constructed {
                Ok(self.content)
            } else {
                Err(format!("{what}: expected an OBJECT IDENTIFIER"))
            }
        }

        /// A small non-negative INTEGER.
        pub fn uint(&self, what: &str) -> Result<u64, String> {
            if !self.is(UNIVERSAL, INTEGER) || self.constructed || self.content.is_empty() {
                return Err(format!("{what}: expected an INTEGER"));
            }
            if self.content[0] & 0x80 != 0 {
                return Err(format!("{what}: negative INTEGER"));
            }
            let digits: Vec<u8> = self.content.iter().copied().skip_while(|b| *b == 0).collect();
            if digits.len() > 8 {
                return Err(format!("{what}: INTEGER too large"));
            }
            Ok(digits.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
        }
    }

    /// DER encoding of a tag/length header followed by `content`.
    pub fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }
}

use asn1::Tlv;

/// Object identifiers used below (compared by their DER content octets).
mod oid {
    use super::ObjectIdentifier as O;
    pub const DATA: O = O::new_unwrap("1.2.840.113549.1.7.1");
    pub const ENVELOPED_DATA: O = O::new_unwrap("1.2.840.113549.1.7.3");
    pub const ENCRYPTED_DATA: O = O::new_unwrap("1.2.840.113549.1.7.6");
    pub const RSA_ENCRYPTION: O = O::new_unwrap("1.2.840.113549.1.1.1");
    pub const RSAES_OAEP: O = O::new_unwrap("1.2.840.113549.1.1.7");
    pub const MGF1: O = O::new_unwrap("1.2.840.113549.1.1.8");
    pub const P_SPECIFIED: O = O::new_unwrap("1.2.840.113549.1.1.9");
    pub const SHA1: O = O::new_unwrap("1.3.14.3.2.26");
    pub const SHA256: O = O::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const DES_EDE3_CBC: O = O::new_unwrap("1.2.840.113549.3.7");
    pub const AES128_CBC: O = O::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub const AES192_CBC: O = O::new_unwrap("2.16.840.1.101.3.4.1.22");
    pub const AES256_CBC: O = O::new_unwrap("2.16.840.1.101.3.4.1.42");
    pub const PBE_SHA1_3DES: O = O::new_unwrap("1.2.840.113549.1.12.1.3");
    pub const PBE_SHA1_2DES: O = O::new_unwrap("1.2.840.113549.1.12.1.4");
    pub const KEY_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.1");
    pub const SHROUDED_KEY_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.2");
    pub const CERT_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.3");
    pub const SAFE_CONTENTS_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.6");
    pub const X509_CERTIFICATE: O = O::new_unwrap("1.2.840.113549.1.9.22.1");
    pub const LOCAL_KEY_ID: O = O::new_unwrap("1.2.840.113549.1.9.21");
    pub const EC_PUBLIC_KEY: O = O::new_unwrap("1.2.840.10045.2.1");
    pub const P256: O = O::new_unwrap("1.2.840.10045.3.1.7");
    pub const P384: O = O::new_unwrap("1.3.132.0.34");
    pub const P521: O = O::new_unwrap("1.3.132.0.35");
    pub const ED25519: O = O::new_unwrap("1.3.101.112");
}

fn is_oid(content: &[u8], want: &ObjectIdentifier) -> bool {
    content == want.as_bytes()
}

fn oid_name(content: &[u8]) -> String {
    ObjectIdentifier::from_bytes(content).map(|o| o.to_string()).unwrap_or_else(|_| "<bad OID>".into())
}

fn malformed(e: String) -> CertError {
    CertError::Malformed(e)
}

// ---------------------------------------------------------------------------------------------------------------
// The CertificateFile document
// ---------------------------------------------------------------------------------------------------------------

/// One decrypted certificate from the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// Upper-case hex SHA-1 of `cert_der` (matches OVF `Fingerprint` values).
    pub thumbprint: String,
    pub cert_der: Vec<u8>,
    /// `ssh-rsa AAAA…` (or `ecdsa-sha2-*` / `ssh-ed25519`) for the certificate's public key; `None` for other keys.
    pub public_key_openssh: Option<String>,
    /// The matching private key from the PFX as PKCS#8 PEM, when there was one.
    pub private_key_pem: Option<Secret>,
}

/// `Format` and `Data` of a `CertificateFile` (entities decoded, whitespace kept in `Data`).
fn parse_certificate_file(bytes: &[u8]) -> Result<(String, Option<String>), CertError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| CertError::Xml(format!("not UTF-8: {e}")))?;
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut current: Option<String> = None;
    let mut buf = String::new();
    let mut format = String::new();
    let mut data: Option<String> = None;
    let mut saw_root = false;
    loop {
        let event = reader.read_event().map_err(|e| CertError::Xml(e.to_string()))?;
        use quick_xml::events::Event;
        match event {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if depth == 0 {
                    if name != "CertificateFile" {
                        return Err(CertError::Xml(format!("root element is {name}, not CertificateFile")));
                    }
                    saw_root = true;
                }
                depth += 1;
                current = (depth == 2).then_some(name);
                buf.clear();
            }
            Event::Empty(e) if depth == 0 => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name != "CertificateFile" {
                    return Err(CertError::Xml(format!("root element is {name}, not CertificateFile")));
                }
                saw_root = true;
            }
            Event::Text(t) => {
                buf.push_str(&t.xml10_content().map_err(|e| CertError::Xml(e.to_string()))?);
            }
            Event::CData(t) => buf.push_str(&t.decode().map_err(|e| CertError::Xml(e.to_string()))?),
            Event::GeneralRef(r) => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| CertError::Xml(e.to_string()))? {
                    buf.push(c);
                } else {
                    let name = r.decode().map_err(|e| CertError::Xml(e.to_string()))?;
                    let v = quick_xml::escape::resolve_predefined_entity(&name)
                        .ok_or_else(|| CertError::Xml(format!("unknown entity &{name};")))?;
                    buf.push_str(v);
                }
            }
            Event::End(_) => {
                if depth == 2 {
                    match current.as_deref() {
                        Some("Format") => format = buf.trim().to_string(),
                        Some("Data") if data.is_none() => data = Some(std::mem::take(&mut buf)),
                        _ => {}
                    }
                }
                depth = depth.saturating_sub(1);
                current = None;
                buf.clear();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if depth != 0 {
        return Err(CertError::Xml("unterminated element".into()));
    }
    if !saw_root {
        return Err(CertError::Xml("no CertificateFile element".into()));
    }
    Ok((format, data.filter(|d| !d.trim().is_empty())))
}

/// Decrypt a `comp=certificates` answer (platform.md §5.8) with the transport key. No `Data` → no certificates;
/// a `Format` other than empty or `Pkcs7BlobWithPfxContents` → skipped with a warning. Validity dates are never
/// checked.
pub fn decrypt_certificates(response_xml: &[u8], transport_key: &RsaPrivateKey) -> Result<Vec<CertEntry>, CertError> {
    let (format, data) = parse_certificate_file(response_xml)?;
    let Some(data) = data else {
        return Ok(Vec::new());
    };
    if !format.is_empty() && format != FORMAT_PFX {
        warn!(format = %format, "skipping certificates in an unsupported format");
        return Ok(Vec::new());
    }
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| CertError::Xml(format!("Data is not base64: {e}")))?;
    let pfx = decrypt_envelope(&blob, transport_key)?;
    parse_pfx(pfx.expose())
}

// ---------------------------------------------------------------------------------------------------------------
// CMS EnvelopedData (RFC 5652 §6)
// ---------------------------------------------------------------------------------------------------------------

/// A KeyTransRecipientInfo, parsed.
struct KeyTrans<'a> {
    /// `Some(ski)` for rid `[0] SubjectKeyIdentifier`, `None` for issuerAndSerialNumber.
    ski: Option<Vec<u8>>,
    alg: &'a [u8],
    params: Option<Tlv<'a>>,
    encrypted_key: Vec<u8>,
}

/// An AlgorithmIdentifier: OID content and optional parameters.
fn algorithm<'a>(t: &Tlv<'a>, what: &str) -> Result<(&'a [u8], Option<Tlv<'a>>), CertError> {
    let parts = t.seq(what).map_err(malformed)?;
    let oid = parts.first().ok_or_else(|| malformed(format!("{what}: empty")))?.oid(what).map_err(malformed)?;
    Ok((oid, parts.get(1).copied()))
}

/// Decrypt a CMS ContentInfo(envelopedData) with `key`; returns the plaintext (the PFX).
fn decrypt_envelope(blob: &[u8], key: &RsaPrivateKey) -> Result<Secret, CertError> {
    let ci = asn1::parse(blob).map_err(|e| malformed(format!("envelope: {e}")))?;
    let parts = ci.seq("ContentInfo").map_err(malformed)?;
    let ctype = parts.first().ok_or_else(|| malformed("ContentInfo: empty".into()))?;
    let ctype = ctype.oid("ContentInfo").map_err(malformed)?;
    if !is_oid(ctype, &oid::ENVELOPED_DATA) {
        return Err(CertError::Unsupported(format!("content type {} (want envelopedData)", oid_name(ctype))));
    }
    let explicit = parts
        .get(1)
        .filter(|t| t.is(asn1::CONTEXT, 0))
        .ok_or_else(|| malformed("ContentInfo: no [0] content".into()))?;
    let env = explicit.children().map_err(malformed)?;
    let env = env.first().ok_or_else(|| malformed("ContentInfo: empty [0]".into()))?;
    let fields = env.seq("EnvelopedData").map_err(malformed)?;
    // version, [0] originatorInfo OPTIONAL, recipientInfos SET, encryptedContentInfo, [1] unprotectedAttrs OPTIONAL
    let mut it = fields.iter().skip(1).skip_while(|t| t.is(asn1::CONTEXT, 0));
    let recipients = it.next().filter(|t| t.is(asn1::UNIVERSAL, asn1::SET));
    let recipients = recipients.ok_or_else(|| malformed("EnvelopedData: no recipientInfos".into()))?;
    let eci = it.next().ok_or_else(|| malformed("EnvelopedData: no encryptedContentInfo".into()))?;

    let mut candidates = Vec::new();
    for ri in recipients.children().map_err(malformed)? {
        // KeyTransRecipientInfo is the SEQUENCE alternative; the others are [1]..[4].
        if !ri.is(asn1::UNIVERSAL, asn1::SEQUENCE) {
            continue;
        }
        let f = ri.seq("KeyTransRecipientInfo").map_err(malformed)?;
        if f.len() < 4 {
            return Err(malformed("KeyTransRecipientInfo: too few fields".into()));
        }
        let ski = if f[1].is(asn1::CONTEXT, 0) { Some(f[1].octets().map_err(malformed)?) } else { None };
        let (alg, params) = algorithm(&f[2], "keyEncryptionAlgorithm")?;
        let encrypted_key = f[3].octets().map_err(malformed)?;
        candidates.push(KeyTrans { ski, alg, params, encrypted_key });
    }
    if candidates.is_empty() {
        return Err(CertError::NoRecipient);
    }
    // Recipients naming our key's SKI first; others (issuerAndSerialNumber, other SKIs) after.
    let own_ski = key.to_public_key().to_public_key_der().ok().and_then(|d| {
        spki::SubjectPublicKeyInfoRef::from_der(d.as_bytes())
            .ok()
            .map(|s| Sha1::digest(s.subject_public_key.raw_bytes()).to_vec())
    });
    candidates.sort_by_key(|c| match (&c.ski, &own_ski) {
        (Some(a), Some(b)) if a == b => 0,
        (None, _) => 1,
        _ => 2,
    });

    let ec = eci.seq("EncryptedContentInfo").map_err(malformed)?;
    if ec.len() < 3 {
        return Err(malformed("EncryptedContentInfo: no encryptedContent".into()));
    }
    let (cipher_oid, cipher_params) = algorithm(&ec[1], "contentEncryptionAlgorithm")?;
    let cipher = ContentCipher::from_oid(cipher_oid)?;
    let iv = cipher_params
        .filter(|p| p.is(asn1::UNIVERSAL, asn1::OCTET_STRING))
        .ok_or_else(|| malformed("contentEncryptionAlgorithm: no IV".into()))?
        .octets()
        .map_err(malformed)?;
    let content = ec
        .iter()
        .skip(2)
        .find(|t| t.is(asn1::CONTEXT, 0))
        .ok_or_else(|| malformed("EncryptedContentInfo: no [0] encryptedContent".into()))?
        .octets()
        .map_err(malformed)?;

    let mut last = CertError::NoRecipient;
    for c in &candidates {
        let cek = match unwrap_cek(key, c) {
            Ok(k) => k,
            Err(e) => {
                last = e;
                continue;
            }
        };
        if cek.len() != cipher.key_len() {
            last = CertError::KeyTransport(format!(
                "key is {} bytes, {} needs {} (wrong transport key?)",
                cek.len(),
                cipher.name(),
                cipher.key_len()
            ));
            continue;
        }
        match cipher.decrypt(cek.expose(), &iv, &content) {
            // A wrong CEK that happens to unpad still fails here: the plaintext must be a DER/BER SEQUENCE (the PFX).
            Ok(plain) if asn1::parse(plain.expose()).is_ok_and(|t| t.is(asn1::UNIVERSAL, asn1::SEQUENCE)) => {
                return Ok(plain)
            }
            Ok(_) => last = CertError::Content(format!("{}: plaintext is not a PFX", cipher.name())),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// RSA-decrypt the content-encryption key of one recipient.
fn unwrap_cek(key: &RsaPrivateKey, kt: &KeyTrans<'_>) -> Result<Secret, CertError> {
    let kerr = |e: rsa::Error| CertError::KeyTransport(format!("RSA decryption failed: {e}"));
    let ct = &kt.encrypted_key;
    let cek = if is_oid(kt.alg, &oid::RSA_ENCRYPTION) {
        key.decrypt_blinded(&mut OsRng, rsa::Pkcs1v15Encrypt, ct).map_err(kerr)?
    } else if is_oid(kt.alg, &oid::RSAES_OAEP) {
        let (hash, mgf_hash) = oaep_params(kt.params.as_ref())?;
        use rsa::Oaep;
        match (hash, mgf_hash) {
            (Hash::Sha1, Hash::Sha1) => key.decrypt_blinded(&mut OsRng, Oaep::<Sha1>::new(), ct),
            (Hash::Sha256, Hash::Sha256) => key.decrypt_blinded(&mut OsRng, Oaep::<sha2::Sha256>::new(), ct),
            (Hash::Sha256, Hash::Sha1) => {
                key.decrypt_blinded(&mut OsRng, Oaep::<sha2::Sha256, Sha1>::new_with_mgf_hash(), ct)
            }
            (Hash::Sha1, Hash::Sha256) => {
                key.decrypt_blinded(&mut OsRng, Oaep::<Sha1, sha2::Sha256>::new_with_mgf_hash(), ct)
            }
        }
        .map_err(kerr)?
    } else {
        return Err(CertError::Unsupported(format!("key encryption algorithm {}", oid_name(kt.alg))));
    };
    Ok(Secret::new(cek))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
}

fn hash_of(oid_content: &[u8]) -> Result<Hash, CertError> {
    if is_oid(oid_content, &oid::SHA1) {
        Ok(Hash::Sha1)
    } else if is_oid(oid_content, &oid::SHA256) {
        Ok(Hash::Sha256)
    } else {
        Err(CertError::Unsupported(format!("OAEP hash {}", oid_name(oid_content))))
    }
}

/// RSAES-OAEP-params (RFC 4055): `[0]` hash (default SHA-1), `[1]` MGF1 with a hash (default SHA-1), `[2]` an
/// empty label only.
fn oaep_params(params: Option<&Tlv<'_>>) -> Result<(Hash, Hash), CertError> {
    let mut hash = Hash::Sha1;
    let mut mgf = Hash::Sha1;
    let Some(p) = params.filter(|p| !p.is(asn1::UNIVERSAL, 5)) else {
        return Ok((hash, mgf));
    };
    for f in p.seq("RSAES-OAEP-params").map_err(malformed)? {
        let inner = f.children().map_err(malformed)?;
        let inner = inner.first().ok_or_else(|| malformed("RSAES-OAEP-params: empty field".into()))?;
        match f.number {
            0 => hash = hash_of(algorithm(inner, "OAEP hash")?.0)?,
            1 => {
                let (m, mp) = algorithm(inner, "OAEP mask generation")?;
                if !is_oid(m, &oid::MGF1) {
                    return Err(CertError::Unsupported(format!("OAEP mask generation {}", oid_name(m))));
                }
                let mp = mp.ok_or_else(|| malformed("MGF1 without a hash".into()))?;
                mgf = hash_of(algorithm(&mp, "MGF1 hash")?.0)?;
            }
            2 => {
                let (src, label) = algorithm(inner, "OAEP pSource")?;
                let label = label.map(|l| l.octets()).transpose().map_err(malformed)?.unwrap_or_default();
                if !is_oid(src, &oid::P_SPECIFIED) || !label.is_empty() {
                    return Err(CertError::Unsupported("OAEP label".into()));
                }
            }
            _ => {}
        }
    }
    Ok((hash, mgf))
}

/// Content-encryption ciphers (all CBC with PKCS#7 padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentCipher {
    DesEde3,
    Aes128,
    Aes192,
    Aes256,
}

impl ContentCipher {
    fn from_oid(o: &[u8]) -> Result<Self, CertError> {
        Ok(if is_oid(o, &oid::DES_EDE3_CBC) {
            ContentCipher::DesEde3
        } else if is_oid(o, &oid::AES128_CBC) {
            ContentCipher::Aes128
        } else if is_oid(o, &oid::AES192_CBC) {
            ContentCipher::Aes192
        } else if is_oid(o, &oid::AES256_CBC) {
            ContentCipher::Aes256
        } else {
            return Err(CertError::Unsupported(format!("content encryption {}", oid_name(o))));
        })
    }

    fn key_len(self) -> usize {
        match self {
            ContentCipher::DesEde3 | ContentCipher::Aes192 => 24,
            ContentCipher::Aes128 => 16,
            ContentCipher::Aes256 => 32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            ContentCipher::DesEde3 => "des-ede3-cbc",
            ContentCipher::Aes128 => "aes128-cbc",
            ContentCipher::Aes192 => "aes192-cbc",
            ContentCipher::Aes256 => "aes256-cbc",
        }
    }

    fn decrypt(self, key: &[u8], iv: &[u8], data: &[u8]) -> Result<Secret, CertError> {
        let plain = match self {
            ContentCipher::DesEde3 => cbc_decrypt::<des::TdesEde3>(key, iv, data),
            ContentCipher::Aes128 => cbc_decrypt::<aes::Aes128>(key, iv, data),
            ContentCipher::Aes192 => cbc_decrypt::<aes::Aes192>(key, iv, data),
            ContentCipher::Aes256 => cbc_decrypt::<aes::Aes256>(key, iv, data),
        };
        plain.map(Secret::new).ok_or_else(|| CertError::Content(format!("{}: bad key, IV or padding", self.name())))
    }
}

/// CBC decryption with PKCS#7 unpadding; `None` for a bad key/IV length or bad padding.
fn cbc_decrypt<C>(key: &[u8], iv: &[u8], data: &[u8]) -> Option<Vec<u8>>
where
    C: cbc::cipher::BlockCipherDecrypt + cbc::cipher::KeyInit,
    cbc::Decryptor<C>: cbc::cipher::KeyIvInit + cbc::cipher::BlockModeDecrypt,
{
    use cbc::cipher::{BlockModeDecrypt, KeyIvInit};
    let dec = cbc::Decryptor::<C>::new_from_slices(key, iv).ok()?;
    dec.decrypt_padded_vec::<cbc::cipher::block_padding::Pkcs7>(data).ok()
}

// ---------------------------------------------------------------------------------------------------------------
// PKCS#12 (RFC 7292)
// ---------------------------------------------------------------------------------------------------------------

/// Upper bound on PBE iteration counts (the platform uses 2000; a hostile count must not stall the boot).
const MAX_PBE_ITERATIONS: u64 = 1_000_000;

/// RFC 7292 Appendix B.2 key derivation with SHA-1 (u = 20, v = 64). `password` is already in its BMPString form.
fn pkcs12_kdf(password: &[u8], salt: &[u8], id: u8, iterations: u64, out_len: usize) -> Vec<u8> {
    const U: usize = 20;
    const V: usize = 64;
    let fill = |s: &[u8]| -> Vec<u8> {
        if s.is_empty() {
            return Vec::new();
        }
        let n = V * s.len().div_ceil(V);
        s.iter().copied().cycle().take(n).collect()
    };
    let d = [id; V];
    let mut i_buf = fill(salt);
    i_buf.extend_from_slice(&fill(password));
    let mut out = Vec::with_capacity(out_len + U);
    while out.len() < out_len {
        let mut h = Sha1::new();
        h.update(d);
        h.update(&i_buf);
        let mut a = h.finalize();
        for _ in 1..iterations {
            a = Sha1::digest(a);
        }
        out.extend_from_slice(&a);
        if out.len() >= out_len {
            break;
        }
        // B = A repeated to v bytes; each v-byte block I_j = (I_j + B + 1) mod 2^(8v).
        let b: Vec<u8> = a.iter().copied().cycle().take(V).collect();
        for block in i_buf.chunks_mut(V) {
            let mut carry = 1u16;
            for k in (0..V).rev() {
                let sum = u16::from(block[k]) + u16::from(b[k]) + carry;
                block[k] = sum as u8;
                carry = sum >> 8;
            }
        }
    }
    for x in i_buf.iter_mut() {
        *x = 0;
    }
    out.truncate(out_len);
    out
}

/// The empty password in both forms OpenSSL tries: BMPString "" (two zero bytes), then zero-length.
const EMPTY_PASSWORDS: [&[u8]; 2] = [&[0, 0], &[]];

/// Decrypt PBE-protected bytes (pkcs-12PbeIds 3DES) with the empty password; the result must be a SEQUENCE.
fn pbe_decrypt(alg: &Tlv<'_>, data: &[u8]) -> Result<Secret, CertError> {
    let (alg_oid, params) = algorithm(alg, "PBE algorithm")?;
    let key_len = if is_oid(alg_oid, &oid::PBE_SHA1_3DES) {
        24
    } else if is_oid(alg_oid, &oid::PBE_SHA1_2DES) {
        16
    } else {
        return Err(CertError::Unsupported(format!("PKCS#12 encryption {}", oid_name(alg_oid))));
    };
    let params = params.ok_or_else(|| malformed("PBE parameters missing".into()))?;
    let p = params.seq("PBE parameters").map_err(malformed)?;
    let salt = p.first().ok_or_else(|| malformed("PBE parameters: no salt".into()))?.octets().map_err(malformed)?;
    let iterations = p.get(1).ok_or_else(|| malformed("PBE parameters: no iterations".into()))?;
    let iterations = iterations.uint("PBE iterations").map_err(malformed)?;
    if iterations == 0 || iterations > MAX_PBE_ITERATIONS {
        return Err(CertError::Pfx(format!("PBE iteration count {iterations} out of range")));
    }
    for password in EMPTY_PASSWORDS {
        let key = Secret::new(pkcs12_kdf(password, &salt, 1, iterations, key_len));
        let iv = pkcs12_kdf(password, &salt, 2, iterations, 8);
        let plain = if key_len == 24 {
            cbc_decrypt::<des::TdesEde3>(key.expose(), &iv, data)
        } else {
            cbc_decrypt::<des::TdesEde2>(key.expose(), &iv, data)
        };
        if let Some(plain) = plain {
            let plain = Secret::new(plain);
            if asn1::parse(plain.expose()).is_ok_and(|t| t.is(asn1::UNIVERSAL, asn1::SEQUENCE)) {
                return Ok(plain);
            }
        }
    }
    Err(CertError::Pfx("cannot decrypt with the empty password".into()))
}

/// A certificate or key found in the PFX, with its `localKeyId`.
struct FoundCert {
    der: Vec<u8>,
    local_key_id: Option<Vec<u8>>,
}

struct FoundKey {
    /// PKCS#8 PrivateKeyInfo DER.
    pkcs8: Secret,
    local_key_id: Option<Vec<u8>>,
    /// The public key as SubjectPublicKeyInfo DER (RSA keys only).
    spki: Option<Vec<u8>>,
}

#[derive(Default)]
struct Bags {
    certs: Vec<FoundCert>,
    keys: Vec<FoundKey>,
}

/// Parse a PFX with the empty password; pair keys with certificates by `localKeyId`, else by public key.
fn parse_pfx(pfx: &[u8]) -> Result<Vec<CertEntry>, CertError> {
    let top = asn1::parse(pfx).map_err(|e| malformed(format!("PFX: {e}")))?;
    let f = top.seq("PFX").map_err(malformed)?;
    let version = f.first().ok_or_else(|| malformed("PFX: empty".into()))?.uint("PFX version").map_err(malformed)?;
    if version != 3 {
        return Err(CertError::Unsupported(format!("PFX version {version}")));
    }
    let auth_safe = f.get(1).ok_or_else(|| malformed("PFX: no authSafe".into()))?;
    // MAC verification is optional (WALinuxAgent's first attempt skips it): the PBE padding and DER checks and the
    // RSA envelope already authenticate the content well enough for a boot agent, so macData is not checked.
    let safe = data_content(auth_safe, "authSafe")?;
    let safe = asn1::parse(&safe).map_err(|e| malformed(format!("AuthenticatedSafe: {e}")))?;
    let mut bags = Bags::default();
    for ci in safe.seq("AuthenticatedSafe").map_err(malformed)? {
        let parts = ci.seq("ContentInfo").map_err(malformed)?;
        let ctype = parts
            .first()
            .ok_or_else(|| malformed("ContentInfo: empty".into()))?
            .oid("ContentInfo")
            .map_err(malformed)?;
        if is_oid(ctype, &oid::DATA) {
            let contents = data_content(&ci, "SafeContents")?;
            walk_safe_contents(&contents, &mut bags, 0)?;
        } else if is_oid(ctype, &oid::ENCRYPTED_DATA) {
            let ed = parts
                .get(1)
                .filter(|t| t.is(asn1::CONTEXT, 0))
                .ok_or_else(|| malformed("encryptedData: no [0] content".into()))?
                .children()
                .map_err(malformed)?;
            let ed = ed.first().ok_or_else(|| malformed("encryptedData: empty".into()))?;
            let ef = ed.seq("EncryptedData").map_err(malformed)?;
            let eci = ef.get(1).ok_or_else(|| malformed("EncryptedData: no encryptedContentInfo".into()))?;
            let ec = eci.seq("EncryptedContentInfo").map_err(malformed)?;
            let alg = ec.get(1).ok_or_else(|| malformed("EncryptedContentInfo: no algorithm".into()))?;
            let Some(data) = ec.iter().skip(2).find(|t| t.is(asn1::CONTEXT, 0)) else {
                continue;
            };
            let plain = pbe_decrypt(alg, &data.octets().map_err(malformed)?)?;
            walk_safe_contents(plain.expose(), &mut bags, 0)?;
        } else {
            warn!(content_type = %oid_name(ctype), "skipping unsupported PKCS#12 content");
        }
    }
    Ok(pair(bags))
}

/// The OCTET STRING inside a ContentInfo of type `data` (`[0] EXPLICIT OCTET STRING`).
fn data_content(ci: &Tlv<'_>, what: &str) -> Result<Vec<u8>, CertError> {
    let parts = ci.seq(what).map_err(malformed)?;
    let ctype = parts.first().ok_or_else(|| malformed(format!("{what}: empty")))?.oid(what).map_err(malformed)?;
    if !is_oid(ctype, &oid::DATA) {
        return Err(CertError::Unsupported(format!("{what} content type {}", oid_name(ctype))));
    }
    let explicit =
        parts.get(1).filter(|t| t.is(asn1::CONTEXT, 0)).ok_or_else(|| malformed(format!("{what}: no [0] content")))?;
    let inner = explicit.children().map_err(malformed)?;
    inner
        .first()
        .filter(|t| t.is(asn1::UNIVERSAL, asn1::OCTET_STRING))
        .ok_or_else(|| malformed(format!("{what}: no OCTET STRING")))?
        .octets()
        .map_err(malformed)
}

fn walk_safe_contents(bytes: &[u8], bags: &mut Bags, depth: usize) -> Result<(), CertError> {
    if depth > 4 {
        return Err(malformed("SafeContents nested too deep".into()));
    }
    let sc = asn1::parse(bytes).map_err(|e| malformed(format!("SafeContents: {e}")))?;
    for bag in sc.seq("SafeContents").map_err(malformed)? {
        let f = bag.seq("SafeBag").map_err(malformed)?;
        let bag_id = f.first().ok_or_else(|| malformed("SafeBag: empty".into()))?.oid("SafeBag").map_err(malformed)?;
        let value = f
            .get(1)
            .filter(|t| t.is(asn1::CONTEXT, 0))
            .ok_or_else(|| malformed("SafeBag: no [0] value".into()))?
            .children()
            .map_err(malformed)?;
        let value = value.first().ok_or_else(|| malformed("SafeBag: empty value".into()))?;
        let local_key_id = match f.get(2) {
            Some(attrs) => local_key_id(attrs)?,
            None => None,
        };
        if is_oid(bag_id, &oid::CERT_BAG) {
            let cb = value.seq("CertBag").map_err(malformed)?;
            let cert_id =
                cb.first().ok_or_else(|| malformed("CertBag: empty".into()))?.oid("CertBag").map_err(malformed)?;
            if !is_oid(cert_id, &oid::X509_CERTIFICATE) {
                warn!(cert_type = %oid_name(cert_id), "skipping a non-X.509 certificate bag");
                continue;
            }
            let der = cb
                .get(1)
                .filter(|t| t.is(asn1::CONTEXT, 0))
                .ok_or_else(|| malformed("CertBag: no [0] value".into()))?
                .children()
                .map_err(malformed)?
                .first()
                .ok_or_else(|| malformed("CertBag: empty value".into()))?
                .octets()
                .map_err(malformed)?;
            bags.certs.push(FoundCert { der, local_key_id });
        } else if is_oid(bag_id, &oid::SHROUDED_KEY_BAG) {
            let ep = value.seq("EncryptedPrivateKeyInfo").map_err(malformed)?;
            let alg = ep.first().ok_or_else(|| malformed("EncryptedPrivateKeyInfo: empty".into()))?;
            let data = ep.get(1).ok_or_else(|| malformed("EncryptedPrivateKeyInfo: no data".into()))?;
            let pkcs8 = pbe_decrypt(alg, &data.octets().map_err(malformed)?)?;
            bags.keys.push(found_key(pkcs8, local_key_id));
        } else if is_oid(bag_id, &oid::KEY_BAG) {
            let raw = bag_value_der(value);
            bags.keys.push(found_key(Secret::new(raw), local_key_id));
        } else if is_oid(bag_id, &oid::SAFE_CONTENTS_BAG) {
            walk_safe_contents(&bag_value_der(value), bags, depth + 1)?;
        }
    }
    Ok(())
}

/// Re-encode an element (its content is DER or BER) with a definite length, for handing to a DER decoder.
fn bag_value_der(t: &Tlv<'_>) -> Vec<u8> {
    let tag = (t.class << 6) | if t.constructed { 0x20 } else { 0 } | (t.number.min(30) as u8);
    asn1::encode(tag, t.content)
}

fn found_key(pkcs8: Secret, local_key_id: Option<Vec<u8>>) -> FoundKey {
    let spki = RsaPrivateKey::from_pkcs8_der(pkcs8.expose())
        .ok()
        .and_then(|k| k.to_public_key().to_public_key_der().ok())
        .map(|d| d.as_bytes().to_vec());
    FoundKey { pkcs8, local_key_id, spki }
}

/// The `localKeyId` attribute of a SafeBag's attribute SET.
fn local_key_id(attrs: &Tlv<'_>) -> Result<Option<Vec<u8>>, CertError> {
    for attr in attrs.children().map_err(malformed)? {
        let a = attr.seq("bag attribute").map_err(malformed)?;
        let Some(id) = a.first() else { continue };
        if is_oid(id.oid("bag attribute").map_err(malformed)?, &oid::LOCAL_KEY_ID) {
            if let Some(v) =
                a.get(1).map(|s| s.children()).transpose().map_err(malformed)?.and_then(|v| v.first().copied())
            {
                return Ok(Some(v.octets().map_err(malformed)?));
            }
        }
    }
    Ok(None)
}

fn pair(bags: Bags) -> Vec<CertEntry> {
    let Bags { certs, keys } = bags;
    let mut out = Vec::with_capacity(certs.len());
    for c in certs {
        let parsed = Certificate::from_der(&c.der).ok();
        if parsed.is_none() {
            warn!(thumbprint = %thumbprint(&c.der), "certificate does not parse as X.509; keeping it without a public key");
        }
        let spki = parsed.as_ref().and_then(|p| p.tbs_certificate().subject_public_key_info().to_der().ok());
        let key = keys
            .iter()
            .find(|k| k.local_key_id.is_some() && k.local_key_id == c.local_key_id)
            .or_else(|| keys.iter().find(|k| k.spki.is_some() && k.spki == spki));
        out.push(CertEntry {
            thumbprint: thumbprint(&c.der),
            public_key_openssh: spki.as_deref().and_then(openssh_public_key),
            private_key_pem: key.map(|k| Secret::from(pem("PRIVATE KEY", k.pkcs8.expose()))),
            cert_der: c.der,
        });
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// OpenSSH public keys
// ---------------------------------------------------------------------------------------------------------------

fn ssh_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

/// RFC 4251 mpint of a non-negative big-endian integer: minimal, with a leading zero when the top bit is set.
fn mpint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut v = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(&trimmed);
    v
}

/// An OpenSSH public key line (`ssh-rsa AAAA…`, `ecdsa-sha2-nistpNNN …`, `ssh-ed25519 …`) for a
/// SubjectPublicKeyInfo (DER); `None` for other key types or malformed keys.
pub fn openssh_public_key(spki_der: &[u8]) -> Option<String> {
    let spki = spki::SubjectPublicKeyInfoRef::from_der(spki_der).ok()?;
    let key = spki.subject_public_key.as_bytes()?;
    let alg = &spki.algorithm;
    let mut blob = Vec::new();
    let name = if alg.oid == oid::RSA_ENCRYPTION {
        let t = asn1::parse(key).ok()?;
        let f = t.seq("RSAPublicKey").ok()?;
        let (n, e) = (f.first()?, f.get(1)?);
        if !n.is(asn1::UNIVERSAL, asn1::INTEGER) || !e.is(asn1::UNIVERSAL, asn1::INTEGER) {
            return None;
        }
        ssh_string(&mut blob, b"ssh-rsa");
        ssh_string(&mut blob, &mpint(e.content));
        ssh_string(&mut blob, &mpint(n.content));
        "ssh-rsa"
    } else if alg.oid == oid::EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = alg.parameters.as_ref()?.decode_as().ok()?;
        let (name, id) = if curve == oid::P256 {
            ("ecdsa-sha2-nistp256", "nistp256")
        } else if curve == oid::P384 {
            ("ecdsa-sha2-nistp384", "nistp384")
        } else if curve == oid::P521 {
            ("ecdsa-sha2-nistp521", "nistp521")
        } else {
            return None;
        };
        ssh_string(&mut blob, name.as_bytes());
        ssh_string(&mut blob, id.as_bytes());
        ssh_string(&mut blob, key);
        name
    } else if alg.oid == oid::ED25519 {
        ssh_string(&mut blob, b"ssh-ed25519");
        ssh_string(&mut blob, key);
        "ssh-ed25519"
    } else {
        return None;
    };
    Some(format!("{name} {}", base64::engine::general_purpose::STANDARD.encode(blob)))
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

    const HIBERNATE: &str = "certs/walinuxagent-hibernate";

    fn fixture_key() -> Option<RsaPrivateKey> {
        let pem = crate::testutil::fixture(&format!("{HIBERNATE}/TransportPrivate.pem"))?;
        Some(RsaPrivateKey::from_pkcs8_pem(std::str::from_utf8(&pem).unwrap()).unwrap())
    }

    /// (thumbprint, hasPrivateKey) from WALinuxAgent's Certificates.json.
    fn expected(goal_state: &str) -> Vec<(String, bool)> {
        let json = crate::testutil::fixture(&format!("{HIBERNATE}/{goal_state}/Certificates.json")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| (c["thumbprint"].as_str().unwrap().to_string(), c["hasPrivateKey"].as_bool().unwrap()))
            .collect()
    }

    #[test]
    fn decrypts_platform_certificates_hibernate_set() {
        let Some(key) = fixture_key() else { return };
        for gs in ["goal_state_1", "goal_state_2"] {
            let xml = crate::testutil::fixture(&format!("{HIBERNATE}/{gs}/Certificates.xml")).unwrap();
            let certs = decrypt_certificates(&xml, &key).unwrap();
            let mut got: Vec<(String, bool)> =
                certs.iter().map(|c| (c.thumbprint.clone(), c.private_key_pem.is_some())).collect();
            let mut want = expected(gs);
            got.sort();
            want.sort();
            assert_eq!(got, want, "{gs}");
            for c in &certs {
                assert_eq!(c.thumbprint, thumbprint(&c.cert_der));
                assert!(c.public_key_openssh.as_deref().unwrap().starts_with("ssh-rsa AAAAB3NzaC1yc2E"), "{c:?}");
                if let Some(pem) = &c.private_key_pem {
                    // The private key matches the certificate's public key.
                    let k = RsaPrivateKey::from_pkcs8_pem(std::str::from_utf8(pem.expose()).unwrap()).unwrap();
                    let cert = Certificate::from_der(&c.cert_der).unwrap();
                    let spki = cert.tbs_certificate().subject_public_key_info().to_der().unwrap();
                    assert_eq!(k.to_public_key().to_public_key_der().unwrap().as_bytes(), spki.as_slice());
                    assert!(!format!("{c:?}").contains("PRIVATE KEY"));
                }
            }
        }
    }

    #[test]
    fn wrong_key_is_an_error_not_garbage() {
        let Some(_) = fixture_key() else { return };
        let xml = crate::testutil::fixture(&format!("{HIBERNATE}/goal_state_1/Certificates.xml")).unwrap();
        let other = TransportCert::generate().unwrap();
        let e = decrypt_certificates(&xml, other.key()).unwrap_err();
        assert!(matches!(e, CertError::KeyTransport(_)), "{e:?}");
        assert_eq!(e.failure().reason, "failure to decrypt certificates");
    }

    #[test]
    fn documents_without_data_or_in_other_formats() {
        let key = TransportCert::generate().unwrap();
        let none = b"\xEF\xBB\xBF<?xml version=\"1.0\"?><CertificateFile><Version>2012-11-30</Version><Incarnation>1</Incarnation><Format>Pkcs7BlobWithPfxContents</Format></CertificateFile>";
        assert_eq!(decrypt_certificates(none, key.key()).unwrap(), vec![]);
        let empty = b"<CertificateFile><Format/><Data>  \n </Data></CertificateFile>";
        assert_eq!(decrypt_certificates(empty, key.key()).unwrap(), vec![]);
        let other = b"<CertificateFile><Format>SomethingElse</Format><Data>AAAA</Data></CertificateFile>";
        assert_eq!(decrypt_certificates(other, key.key()).unwrap(), vec![]);
        let bad = b"<CertificateFile><Data>not base64!</Data></CertificateFile>";
        assert!(matches!(decrypt_certificates(bad, key.key()), Err(CertError::Xml(_))));
        let garbage = b"<CertificateFile><Data>AAAA</Data></CertificateFile>";
        assert!(matches!(decrypt_certificates(garbage, key.key()), Err(CertError::Malformed(_))));
        assert!(matches!(decrypt_certificates(b"<Other/>", key.key()), Err(CertError::Xml(_))));
        assert!(matches!(decrypt_certificates(b"<CertificateFile><Data>", key.key()), Err(CertError::Xml(_))));
    }

    fn run(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new(args[0]).args(&args[1..]).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn certificate_file(blob: &[u8]) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        let lines: Vec<String> = b64.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CertificateFile><Version>2012-11-30</Version>\
             <Incarnation>1</Incarnation><Format>Pkcs7BlobWithPfxContents</Format><Data>{}</Data></CertificateFile>",
            lines.join("\n")
        )
        .into_bytes()
    }

    /// openssl-made material: a key pair certificate (in the PFX with its key), an SSH public-key certificate
    /// (without key), the PFX, and our transport certificate on disk.
    struct Made {
        dir: tempfile::TempDir,
        transport: TransportCert,
        with_key_thumb: String,
        no_key_thumb: String,
    }

    fn make_pfx() -> Option<Made> {
        if !have("openssl") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["kp", "pub"] {
            run(
                d,
                &[
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                    "-days",
                    "1",
                    "-subj",
                    &format!("/CN={name}"),
                ],
            );
        }
        // PFX: the key pair (key + cert, linked by localKeyId) plus the bare public-key certificate, Azure style
        // (3DES PBE for both bag kinds, SHA-1 MAC, empty password).
        run(
            d,
            &[
                "openssl",
                "pkcs12",
                "-export",
                "-inkey",
                "kp.key",
                "-in",
                "kp.crt",
                "-certfile",
                "pub.crt",
                "-out",
                "bundle.pfx",
                "-passout",
                "pass:",
                "-keypbe",
                "PBE-SHA1-3DES",
                "-certpbe",
                "PBE-SHA1-3DES",
                "-macalg",
                "sha1",
            ],
        );
        let transport = TransportCert::generate().unwrap();
        std::fs::write(d.join("transport.pem"), transport.cert_pem()).unwrap();
        let thumb = |f: &str| {
            let out = run(d, &["openssl", "x509", "-noout", "-fingerprint", "-sha1", "-in", f]);
            String::from_utf8_lossy(&out).trim().rsplit('=').next().unwrap().replace(':', "")
        };
        Some(Made { with_key_thumb: thumb("kp.crt"), no_key_thumb: thumb("pub.crt"), transport, dir })
    }

    /// `openssl cms -encrypt` the PFX to the transport certificate with extra options.
    fn envelope(m: &Made, opts: &[&str]) -> Vec<u8> {
        let mut args =
            vec!["openssl", "cms", "-encrypt", "-binary", "-in", "bundle.pfx", "-outform", "DER", "-out", "env.der"];
        // -keyopt applies to the -recip before it.
        args.extend_from_slice(&["-recip", "transport.pem"]);
        args.extend_from_slice(opts);
        run(m.dir.path(), &args);
        std::fs::read(m.dir.path().join("env.der")).unwrap()
    }

    fn check_made(m: &Made, certs: &[CertEntry]) {
        let mut got: Vec<(String, bool)> =
            certs.iter().map(|c| (c.thumbprint.clone(), c.private_key_pem.is_some())).collect();
        got.sort();
        let mut want = vec![(m.with_key_thumb.clone(), true), (m.no_key_thumb.clone(), false)];
        want.sort();
        assert_eq!(got, want);
        let kp = certs.iter().find(|c| c.private_key_pem.is_some()).unwrap();
        // The key is the one openssl generated (same PKCS#8 → same public key).
        let theirs = std::fs::read_to_string(m.dir.path().join("kp.key")).unwrap();
        let theirs = RsaPrivateKey::from_pkcs8_pem(&theirs).unwrap();
        let ours =
            RsaPrivateKey::from_pkcs8_pem(std::str::from_utf8(kp.private_key_pem.as_ref().unwrap().expose()).unwrap())
                .unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn openssl_round_trips_all_ciphers_paddings_and_rids() {
        let Some(m) = make_pfx() else { return };
        let cases: &[&[&str]] = &[
            &["-aes128"],
            &["-des3"],
            &["-aes256"],
            &["-aes128", "-keyid"],
            &["-des3", "-keyid", "-keyopt", "rsa_padding_mode:oaep"],
            &["-aes128", "-keyopt", "rsa_padding_mode:oaep"],
            &["-aes256", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"],
            // BER: indefinite lengths and a constructed (chunked) encryptedContent.
            &["-aes128", "-stream", "-keyid"],
        ];
        for opts in cases {
            let blob = envelope(&m, opts);
            let certs = decrypt_certificates(&certificate_file(&blob), m.transport.key())
                .unwrap_or_else(|e| panic!("{opts:?}: {e}"));
            check_made(&m, &certs);
        }
        // Wrong key: an error (PKCS#1 v1.5 implicit rejection yields a random CEK, caught by the length check or
        // the padding), never garbage certificates.
        let blob = envelope(&m, &["-aes128"]);
        let other = TransportCert::generate().unwrap();
        assert!(decrypt_certificates(&certificate_file(&blob), other.key()).is_err());
    }

    #[test]
    fn ber_reader_handles_indefinite_lengths_and_chunks() {
        // SEQUENCE (indefinite) { OCTET STRING (constructed, indefinite) { "ab", "c" }, INTEGER 5 }
        let ber = [0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0, 0, 0x02, 0x01, 5, 0, 0];
        let t = asn1::parse(&ber).unwrap();
        let c = t.seq("x").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].octets().unwrap(), b"abc");
        assert_eq!(c[1].uint("i").unwrap(), 5);
        // Truncations and garbage are errors, never panics.
        for n in 0..ber.len() {
            let _ = asn1::parse(&ber[..n]).and_then(|t| t.seq("x").map(|_| ()));
        }
        assert!(asn1::parse(&[0x04, 0x80, 0, 0]).is_err());
        assert!(asn1::parse(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(asn1::parse(&[0x04, 0x01, 1, 7]).is_err());
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 200).flatten().collect();
        assert!(asn1::parse(&deep).is_err());
        assert_eq!(asn1::encode(0x04, &[7; 200])[..3], [0x04, 0x81, 200]);
    }

    #[test]
    fn pkcs12_kdf_matches_rfc7292_reference() {
        // Known-answer vectors (OpenSSL test/pkcs12_format / Bouncy Castle PKCS12Test): password "smeg" as
        // BMPString, salt 0A58CF64530D823F, 1 iteration.
        let bmp: Vec<u8> = "smeg\0".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let salt = [0x0A, 0x58, 0xCF, 0x64, 0x53, 0x0D, 0x82, 0x3F];
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02X}")).collect::<String>();
        assert_eq!(hex(pkcs12_kdf(&bmp, &salt, 1, 1, 24)), "8AAAE6297B6CB04642AB5B077851284EB7128F1A2A7FBCA3");
        assert_eq!(hex(pkcs12_kdf(&bmp, &salt, 2, 1, 8)), "79993DFE048D3B76");
    }

    #[test]
    fn openssh_conversion_matches_ssh_keygen() {
        if !have("openssl") || !have("ssh-keygen") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (i, alg) in [["-algorithm", "RSA"], ["-algorithm", "EC"], ["-algorithm", "ED25519"]].iter().enumerate() {
            let key = format!("k{i}.pem");
            let mut args = vec!["openssl", "genpkey", alg[0], alg[1], "-out", &key];
            if alg[1] == "EC" {
                args.extend_from_slice(&["-pkeyopt", "ec_paramgen_curve:P-384"]);
            }
            run(d, &args);
            let pubpem = format!("p{i}.pem");
            run(d, &["openssl", "pkey", "-in", &key, "-pubout", "-out", &pubpem]);
            let der = run(d, &["openssl", "pkey", "-in", &key, "-pubout", "-outform", "DER"]);
            let ours = openssh_public_key(&der).unwrap();
            if alg[1] == "ED25519" {
                // ssh-keygen -i -m PKCS8 does not import Ed25519 SPKI; compare with the private-key derived form.
                let ssh = format!("s{i}");
                run(d, &["cp", &key, &ssh]);
                run(d, &["chmod", "600", &ssh]);
                if Command::new("ssh-keygen")
                    .args(["-y", "-f"])
                    .arg(d.join(&ssh))
                    .output()
                    .is_ok_and(|o| o.status.success())
                {
                    let theirs = run(d, &["ssh-keygen", "-y", "-f", &ssh]);
                    assert_eq!(ours, String::from_utf8_lossy(&theirs).trim());
                }
                continue;
            }
            let theirs = run(d, &["ssh-keygen", "-i", "-m", "PKCS8", "-f", &pubpem]);
            assert_eq!(ours, String::from_utf8_lossy(&theirs).trim(), "{alg:?}");
        }
        // mpint: leading zero only when the top bit is set; redundant zeros dropped.
        assert_eq!(mpint(&[0, 0, 0x7f]), vec![0x7f]);
        assert_eq!(mpint(&[0x80, 1]), vec![0, 0x80, 1]);
        assert_eq!(mpint(&[0, 0x80]), vec![0, 0x80]);
        assert_eq!(openssh_public_key(b"junk"), None);
    }

    mod wire {
        use super::*;
        use crate::platform::http::tests::{reply, Scripted};
        use crate::platform::wireserver::{fetch_certificates, parse_goal_state, HealthProtocol};
        use crate::timeutil::SystemClock;
        use std::sync::{Arc, OnceLock};
        use std::time::Instant;

        fn fixture_transport() -> Option<TransportCert> {
            let cert = crate::testutil::fixture(&format!("{HIBERNATE}/TransportCert.pem"))?;
            let key = crate::testutil::fixture(&format!("{HIBERNATE}/TransportPrivate.pem"))?;
            Some(TransportCert::from_pem(std::str::from_utf8(&cert).unwrap(), &Secret::new(key)).unwrap())
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

        fn goal(base: &str, incarnation: &str) -> String {
            format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?><GoalState><Incarnation>{incarnation}</Incarnation>\
                 <Container><ContainerId>cid</ContainerId><RoleInstanceList><RoleInstance><InstanceId>iid.vm</InstanceId>\
                 <Configuration><Certificates>{base}/machine/cid/iid?comp=certificates&amp;incarnation={incarnation}\
                 </Certificates></Configuration></RoleInstance></RoleInstanceList></Container></GoalState>"
            )
        }

        #[test]
        fn aes_refused_then_des_decrypts_with_headers() {
            let Some(t) = fixture_transport() else { return };
            let xml = crate::testutil::fixture(&format!("{HIBERNATE}/goal_state_1/Certificates.xml")).unwrap();
            let body = String::from_utf8(xml).unwrap();
            let srv = Scripted::start(move |i, _| if i == 0 { reply(400, "no") } else { reply(200, &body) });
            let g = parse_goal_state(goal(&srv.base, "1").as_bytes()).unwrap();
            let certs = certificates_for(&client(), &cfg(&srv.base), &SystemClock, &g, &t).unwrap();
            let mut got: Vec<(String, bool)> =
                certs.iter().map(|c| (c.thumbprint.clone(), c.private_key_pem.is_some())).collect();
            got.sort();
            let mut want = expected("goal_state_1");
            want.sort();
            assert_eq!(got, want);
            let seen = srv.finish();
            assert_eq!(seen.len(), 2);
            for (r, cipher) in seen.iter().zip(["AES128_CBC", "DES_EDE3_CBC"]) {
                assert_eq!(
                    (r.method.as_str(), r.url.as_str()),
                    ("GET", "/machine/cid/iid?comp=certificates&incarnation=1")
                );
                assert_eq!(r.header("x-ms-agent-name"), Some("azprov"));
                assert_eq!(r.header("x-ms-version"), Some("2012-11-30"));
                assert_eq!(r.header("x-ms-cipher-name"), Some(cipher));
                assert_eq!(r.header("x-ms-guest-agent-public-x509-cert"), Some(t.header_value().as_str()));
            }
        }

        #[test]
        fn aes_answer_undecryptable_then_des() {
            let Some(t) = fixture_transport() else { return };
            let xml = String::from_utf8(
                crate::testutil::fixture(&format!("{HIBERNATE}/goal_state_2/Certificates.xml")).unwrap(),
            )
            .unwrap();
            let bad = "<CertificateFile><Format>Pkcs7BlobWithPfxContents</Format><Data>MAA=</Data></CertificateFile>";
            let srv = Scripted::start(move |_, r| {
                if r.header("x-ms-cipher-name") == Some("AES128_CBC") {
                    reply(200, bad)
                } else {
                    reply(200, &xml)
                }
            });
            let g = parse_goal_state(goal(&srv.base, "1").as_bytes()).unwrap();
            let certs = certificates_for(&client(), &cfg(&srv.base), &SystemClock, &g, &t).unwrap();
            assert_eq!(certs.len(), 2);
            assert_eq!(srv.finish().len(), 2);
            // Both fail → the DES error, as a fetch failure when the request itself fails.
            let srv = Scripted::start(|_, _| reply(401, ""));
            let g = parse_goal_state(goal(&srv.base, "1").as_bytes()).unwrap();
            let e = certificates_for(&client(), &cfg(&srv.base), &SystemClock, &g, &t).unwrap_err();
            assert_eq!(e, CertError::Fetch(WireError::Http { code: 401 }));
            assert_eq!(e.failure().reason, "failure to fetch certificates");
            assert_eq!(srv.finish().len(), 2);
        }

        #[test]
        fn stale_incarnation_refetches_goal_state() {
            let t = TransportCert::generate().unwrap();
            let base: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
            let b = base.clone();
            let srv = Scripted::start(move |_, r| match r.url.as_str() {
                "/machine/?comp=goalstate" => reply(200, &goal(b.get().unwrap(), "2")),
                u if u.ends_with("incarnation=1") => reply(410, "gone"),
                _ if r.header("x-ms-cipher-name").is_some() => reply(200, "<CertificateFile/>"),
                _ => reply(500, ""),
            });
            base.set(srv.base.clone()).unwrap();
            let g = parse_goal_state(goal(&srv.base, "1").as_bytes()).unwrap();
            let body = fetch_certificates(&client(), &cfg(&srv.base), &SystemClock, &g, &t).unwrap();
            assert_eq!(body, b"<CertificateFile/>");
            let urls: Vec<String> = srv.finish().into_iter().map(|r| r.url).collect();
            assert_eq!(
                urls,
                [
                    "/machine/cid/iid?comp=certificates&incarnation=1",
                    "/machine/?comp=goalstate",
                    "/machine/cid/iid?comp=certificates&incarnation=2"
                ]
            );
            // No Certificates URL: nothing to fetch, no request.
            let mut g2 = g.clone();
            g2.certificates_url = None;
            assert_eq!(certificates_for(&client(), &cfg("http://127.0.0.1:9"), &SystemClock, &g2, &t).unwrap(), vec![]);
            assert!(matches!(
                fetch_certificates(&client(), &cfg("http://127.0.0.1:9"), &SystemClock, &g2, &t),
                Err(WireError::Parse(_))
            ));
        }
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
