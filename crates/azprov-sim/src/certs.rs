//! The wireserver's `comp=certificates` answer (platform.md §5.8): the VM's certificates (and their private keys)
//! packed into a PKCS#12 PFX with the empty password, enveloped in CMS EnvelopedData to the agent's transport
//! certificate, base64 in the `Data` of a `CertificateFile` with `Format` `Pkcs7BlobWithPfxContents`.
//!
//! The structures are those of a real platform answer (WALinuxAgent's "hibernate" test vector): EnvelopedData v2 with
//! one KeyTransRecipientInfo v2 whose rid is the transport certificate's Subject Key Identifier, RSAES-OAEP (SHA-1,
//! empty parameters) key transport, the content cipher chosen by `x-ms-cipher-name`; inside, a PFX v3 whose
//! AuthenticatedSafe holds a `data` ContentInfo with pkcs8ShroudedKeyBags and an `encryptedData` ContentInfo with the
//! certBags, both protected with pbeWithSHAAnd3-KeyTripleDES-CBC (2000 iterations), keys and certificates linked by
//! `localKeyId` (`01000000`, `02000000`, … as the platform does), and a SHA-1 MAC (2000 iterations).
//!
//! DER is written by hand with the few helpers in [`tlv`].

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use pkcs8::{EncodePrivateKey, LineEnding};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use spki::{EncodePublicKey, SubjectPublicKeyInfoRef};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::certificate::TbsCertificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Validity;
use x509_cert::Certificate;

/// The `Format` of a PFX answer.
pub const FORMAT_PFX: &str = "Pkcs7BlobWithPfxContents";
/// PBE and MAC iteration count used by the platform.
pub const PFX_ITERATIONS: u64 = 2000;

/// One certificate the platform holds for the VM, and how the OVF refers to it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SimCert {
    /// The X.509 certificate, PEM (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`); put into the PFX with the certificate.
    #[serde(default)]
    pub key_pem: Option<String>,
    /// List it in the OVF as an SSH `PublicKey` with this certificate's `Fingerprint` and an empty `Value`.
    #[serde(default)]
    pub ovf_public_key: bool,
    /// List it in the OVF as a `KeyPair` (`Fingerprint` + `Path`); needs `key_pem`.
    #[serde(default)]
    pub ovf_key_pair: bool,
    /// The OVF `Path`; default `/home/<user>/.ssh/authorized_keys` for a public key, `/home/<user>/.ssh/id_rsa`
    /// for a key pair.
    #[serde(default)]
    pub ovf_path: Option<String>,
}

impl SimCert {
    /// A fresh RSA 2048 key and a self-signed certificate `CN=<cn>` (with a Subject Key Identifier), valid for a year.
    /// Neither OVF flag is set; see [`SimCert::public_key`] and [`SimCert::key_pair`].
    pub fn generate_rsa(cn: &str) -> Result<SimCert, String> {
        let key = rsa::PrivateKey::new(&mut OsRng, 2048).map_err(|e| format!("RSA key generation: {e}"))?;
        let der = self_signed(&key, cn)?;
        let key_pem = key.to_pkcs8_pem(LineEnding::LF).map_err(|e| format!("PKCS#8: {e}"))?;
        Ok(SimCert {
            cert_pem: pem("CERTIFICATE", &der),
            key_pem: Some(key_pem.to_string()),
            ovf_public_key: false,
            ovf_key_pair: false,
            ovf_path: None,
        })
    }

    /// This certificate without its private key, listed in the OVF as a `PublicKey` without `Value`.
    pub fn public_key(self) -> SimCert {
        SimCert { key_pem: None, ovf_public_key: true, ovf_key_pair: false, ..self }
    }

    /// This certificate with its private key, listed in the OVF as a `KeyPair`.
    pub fn key_pair(self) -> SimCert {
        SimCert { ovf_public_key: false, ovf_key_pair: true, ..self }
    }

    /// The certificate DER.
    pub fn cert_der(&self) -> Result<Vec<u8>, String> {
        let (label, der) = der::pem::decode_vec(self.cert_pem.as_bytes()).map_err(|e| format!("cert_pem: {e}"))?;
        if label != "CERTIFICATE" {
            return Err(format!("cert_pem: PEM label {label:?}, expected CERTIFICATE"));
        }
        Certificate::from_der(&der).map_err(|e| format!("cert_pem: not an X.509 certificate: {e}"))?;
        Ok(der)
    }

    /// The private key as PKCS#8 DER, when there is one.
    fn key_der(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(pem) = &self.key_pem else { return Ok(None) };
        let (label, der) = der::pem::decode_vec(pem.as_bytes()).map_err(|e| format!("key_pem: {e}"))?;
        if label != "PRIVATE KEY" {
            return Err(format!("key_pem: PEM label {label:?}, expected PRIVATE KEY (PKCS#8)"));
        }
        pkcs8::PrivateKeyInfoRef::from_der(&der).map_err(|e| format!("key_pem: not PKCS#8: {e}"))?;
        Ok(Some(der))
    }

    /// Upper-case hex SHA-1 of the certificate DER (the OVF `Fingerprint`).
    pub fn thumbprint(&self) -> Result<String, String> {
        Ok(hex_upper(&Sha1::digest(self.cert_der()?)))
    }

    /// The certificate's public key as an OpenSSH `ssh-rsa` line (what the agent should install); `None` for other
    /// key types.
    pub fn ssh_public_key(&self) -> Result<Option<String>, String> {
        let der = self.cert_der()?;
        let cert = Certificate::from_der(&der).map_err(|e| e.to_string())?;
        let spki = cert.tbs_certificate().subject_public_key_info().to_der().map_err(|e| e.to_string())?;
        let Ok(key) = <rsa::PublicKey as spki::DecodePublicKey>::from_public_key_der(&spki) else {
            return Ok(None);
        };
        use rsa::traits::PublicKeyParts;
        let mut blob = Vec::new();
        for part in [b"ssh-rsa".to_vec(), mpint(&key.e().to_be_bytes()), mpint(&key.n().to_be_bytes())] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(&part);
        }
        Ok(Some(format!("ssh-rsa {}", base64::engine::general_purpose::STANDARD.encode(blob))))
    }

    /// Checks the PEMs and the flags.
    pub fn validate(&self) -> Result<(), String> {
        self.cert_der()?;
        let key = self.key_der()?;
        if self.ovf_key_pair && key.is_none() {
            return Err("ovf_key_pair needs key_pem".into());
        }
        Ok(())
    }
}

/// OpenSSH mpint content: no redundant leading zeros, a zero byte added when the top bit is set.
fn mpint(be: &[u8]) -> Vec<u8> {
    let digits: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    match digits.first() {
        Some(b) if b & 0x80 != 0 => [&[0u8][..], &digits].concat(),
        _ => digits,
    }
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

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

/// How the content-encryption key is encrypted to the transport key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyTransport {
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1 (what the platform sends today).
    #[default]
    Oaep,
    /// RSAES-PKCS1-v1_5 (`rsaEncryption`), as older platform answers and `openssl cms` by default.
    Pkcs1v15,
}

/// The content cipher named by `x-ms-cipher-name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentCipher {
    Aes128Cbc,
    Aes256Cbc,
    DesEde3Cbc,
}

impl ContentCipher {
    /// `AES128_CBC`, `AES256_CBC` or `DES_EDE3_CBC`; `None` for anything else.
    pub fn from_header(name: &str) -> Option<ContentCipher> {
        match name {
            "AES128_CBC" => Some(ContentCipher::Aes128Cbc),
            "AES256_CBC" => Some(ContentCipher::Aes256Cbc),
            "DES_EDE3_CBC" => Some(ContentCipher::DesEde3Cbc),
            _ => None,
        }
    }

    fn oid(self) -> ObjectIdentifier {
        match self {
            ContentCipher::Aes128Cbc => oid::AES128_CBC,
            ContentCipher::Aes256Cbc => oid::AES256_CBC,
            ContentCipher::DesEde3Cbc => oid::DES_EDE3_CBC,
        }
    }

    fn key_len(self) -> usize {
        match self {
            ContentCipher::Aes128Cbc => 16,
            ContentCipher::Aes256Cbc => 32,
            ContentCipher::DesEde3Cbc => 24,
        }
    }

    fn iv_len(self) -> usize {
        match self {
            ContentCipher::DesEde3Cbc => 8,
            _ => 16,
        }
    }

    fn encrypt(self, key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            ContentCipher::Aes128Cbc => cbc_encrypt::<aes::Aes128>(key, iv, data),
            ContentCipher::Aes256Cbc => cbc_encrypt::<aes::Aes256>(key, iv, data),
            ContentCipher::DesEde3Cbc => cbc_encrypt::<des::TdesEde3>(key, iv, data),
        }
    }
}

fn cbc_encrypt<C>(key: &[u8], iv: &[u8], data: &[u8]) -> Result<Vec<u8>, String>
where
    C: cbc::cipher::BlockCipherEncrypt + cbc::cipher::KeyInit,
    cbc::Encryptor<C>: cbc::cipher::KeyIvInit + cbc::cipher::BlockModeEncrypt,
{
    use cbc::cipher::{BlockModeEncrypt, KeyIvInit};
    let enc = cbc::Encryptor::<C>::new_from_slices(key, iv).map_err(|e| format!("cipher setup: {e}"))?;
    Ok(enc.encrypt_padded_vec::<cbc::cipher::block_padding::Pkcs7>(data))
}

/// The agent's transport certificate, from `x-ms-guest-agent-public-x509-cert`.
pub struct Recipient {
    /// Subject Key Identifier (the rid the envelope names).
    pub ski: Vec<u8>,
    pub key: rsa::PublicKey,
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient(ski {})", hex_upper(&self.ski))
    }
}

impl Recipient {
    /// Parses the header value: base64 (one line) of an X.509 certificate with an RSA key and a Subject Key
    /// Identifier (the platform encrypts to `rid = [0] SubjectKeyIdentifier`).
    pub fn from_header(value: &str) -> Result<Recipient, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|e| format!("x-ms-guest-agent-public-x509-cert is not base64: {e}"))?;
        Recipient::from_der(&der)
    }

    /// Parses a certificate DER.
    pub fn from_der(der: &[u8]) -> Result<Recipient, String> {
        let cert = Certificate::from_der(der).map_err(|e| format!("transport certificate is not X.509: {e}"))?;
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info().to_der().map_err(|e| format!("transport certificate key: {e}"))?;
        let key = <rsa::PublicKey as spki::DecodePublicKey>::from_public_key_der(&spki)
            .map_err(|e| format!("transport certificate key is not RSA: {e}"))?;
        let ski = tbs
            .extensions()
            .into_iter()
            .flatten()
            .find(|e| e.extn_id == oid::SUBJECT_KEY_IDENTIFIER)
            .ok_or("transport certificate has no Subject Key Identifier")?;
        let ski = SubjectKeyIdentifier::from_der(ski.extn_value.as_bytes())
            .map_err(|e| format!("transport certificate Subject Key Identifier: {e}"))?;
        Ok(Recipient { ski: ski.0.as_bytes().to_vec(), key })
    }
}

/// The whole `comp=certificates` answer for `certs` (no `Data` when there are none).
pub fn certificate_file_xml(
    certs: &[SimCert],
    incarnation: u32,
    recipient: &Recipient,
    transport: KeyTransport,
    cipher: ContentCipher,
) -> Result<String, String> {
    let data = if certs.is_empty() {
        String::new()
    } else {
        let pfx = pfx(certs)?;
        let blob = envelope(&pfx, recipient, transport, cipher)?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        // The platform wraps the base64 at 64 characters.
        let lines: Vec<String> = b64.as_bytes().chunks(64).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!("\n  <Data>{}</Data>", lines.join("\n"))
    };
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CertificateFile xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:noNamespaceSchemaLocation=\"certificates10.xsd\">\n  <Version>2012-11-30</Version>\n  \
         <Incarnation>{incarnation}</Incarnation>\n  <Format>{FORMAT_PFX}</Format>{data}\n</CertificateFile>\n"
    ))
}

// ---------------------------------------------------------------------------------------------------------------------
// DER

mod oid {
    use der::asn1::ObjectIdentifier as O;
    pub const DATA: O = O::new_unwrap("1.2.840.113549.1.7.1");
    pub const ENVELOPED_DATA: O = O::new_unwrap("1.2.840.113549.1.7.3");
    pub const ENCRYPTED_DATA: O = O::new_unwrap("1.2.840.113549.1.7.6");
    pub const RSA_ENCRYPTION: O = O::new_unwrap("1.2.840.113549.1.1.1");
    pub const RSAES_OAEP: O = O::new_unwrap("1.2.840.113549.1.1.7");
    pub const SHA1: O = O::new_unwrap("1.3.14.3.2.26");
    pub const DES_EDE3_CBC: O = O::new_unwrap("1.2.840.113549.3.7");
    pub const AES128_CBC: O = O::new_unwrap("2.16.840.1.101.3.4.1.2");
    pub const AES256_CBC: O = O::new_unwrap("2.16.840.1.101.3.4.1.42");
    pub const PBE_SHA1_3DES: O = O::new_unwrap("1.2.840.113549.1.12.1.3");
    pub const SHROUDED_KEY_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.2");
    pub const CERT_BAG: O = O::new_unwrap("1.2.840.113549.1.12.10.1.3");
    pub const X509_CERTIFICATE: O = O::new_unwrap("1.2.840.113549.1.9.22.1");
    pub const LOCAL_KEY_ID: O = O::new_unwrap("1.2.840.113549.1.9.21");
    pub const SUBJECT_KEY_IDENTIFIER: O = O::new_unwrap("2.5.29.14");
}

/// A minimal DER writer: definite lengths, content given as already-encoded children.
pub mod tlv {
    use der::asn1::ObjectIdentifier;

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
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

    pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// SET OF with its elements in DER order (sorted by encoding).
    pub fn set(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut sorted = parts.to_vec();
        sorted.sort();
        tlv(0x31, &sorted.concat())
    }

    pub fn octets(b: &[u8]) -> Vec<u8> {
        tlv(0x04, b)
    }

    pub fn oid(o: &ObjectIdentifier) -> Vec<u8> {
        tlv(0x06, o.as_bytes())
    }

    pub fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }

    /// A non-negative INTEGER.
    pub fn uint(v: u64) -> Vec<u8> {
        let mut digits: Vec<u8> = v.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        if digits.first().is_none_or(|b| b & 0x80 != 0) {
            digits.insert(0, 0);
        }
        tlv(0x02, &digits)
    }

    /// `[n] EXPLICIT` around one encoded element.
    pub fn explicit(n: u8, inner: &[u8]) -> Vec<u8> {
        tlv(0xA0 | n, inner)
    }

    /// `[n] IMPLICIT` primitive (e.g. an OCTET STRING).
    pub fn implicit(n: u8, content: &[u8]) -> Vec<u8> {
        tlv(0x80 | n, content)
    }
}

use tlv::{explicit, implicit, null, octets, seq, set, uint};

fn alg(o: &ObjectIdentifier, params: Option<Vec<u8>>) -> Vec<u8> {
    match params {
        Some(p) => seq(&[tlv::oid(o), p]),
        None => seq(&[tlv::oid(o)]),
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// PKCS#12

/// RFC 7292 Appendix B.2 key derivation with SHA-1 (u = 20, v = 64); `password` in BMPString form.
pub fn pkcs12_kdf(password: &[u8], salt: &[u8], id: u8, iterations: u64, out_len: usize) -> Vec<u8> {
    const V: usize = 64;
    let fill = |s: &[u8]| -> Vec<u8> {
        if s.is_empty() {
            return Vec::new();
        }
        s.iter().copied().cycle().take(V * s.len().div_ceil(V)).collect()
    };
    let mut i_buf = fill(salt);
    i_buf.extend_from_slice(&fill(password));
    let mut out = Vec::with_capacity(out_len + 20);
    loop {
        let mut h = Sha1::new();
        h.update([id; V]);
        h.update(&i_buf);
        let mut a = h.finalize();
        for _ in 1..iterations {
            a = Sha1::digest(a);
        }
        out.extend_from_slice(&a);
        if out.len() >= out_len {
            break;
        }
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
    out.truncate(out_len);
    out
}

/// The empty password as an RFC 7292 BMPString: just the terminating NUL.
const EMPTY_PASSWORD: [u8; 2] = [0, 0];

/// pbeWithSHAAnd3-KeyTripleDES-CBC with the empty password and a random salt: (AlgorithmIdentifier, ciphertext).
fn pbe_encrypt(plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let salt = random(8)?;
    let key = pkcs12_kdf(&EMPTY_PASSWORD, &salt, 1, PFX_ITERATIONS, 24);
    let iv = pkcs12_kdf(&EMPTY_PASSWORD, &salt, 2, PFX_ITERATIONS, 8);
    let ct = cbc_encrypt::<des::TdesEde3>(&key, &iv, plain)?;
    let params = seq(&[octets(&salt), uint(PFX_ITERATIONS)]);
    Ok((alg(&oid::PBE_SHA1_3DES, Some(params)), ct))
}

/// A SafeBag with an optional `localKeyId`.
fn safe_bag(bag_id: &ObjectIdentifier, value: &[u8], local_key_id: Option<&[u8]>) -> Vec<u8> {
    let mut parts = vec![tlv::oid(bag_id), explicit(0, value)];
    if let Some(id) = local_key_id {
        let attr = seq(&[tlv::oid(&oid::LOCAL_KEY_ID), set(&[octets(id)])]);
        parts.push(set(&[attr]));
    }
    seq(&parts)
}

/// `ContentInfo { data, [0] OCTET STRING }`.
fn data_content_info(content: &[u8]) -> Vec<u8> {
    seq(&[tlv::oid(&oid::DATA), explicit(0, &octets(content))])
}

/// The PFX (PKCS#12 v3) holding every certificate and private key of `certs`, with the empty password.
pub fn pfx(certs: &[SimCert]) -> Result<Vec<u8>, String> {
    let mut key_bags = Vec::new();
    let mut cert_bags = Vec::new();
    let mut next_id = 1u32;
    for c in certs {
        let der = c.cert_der()?;
        let key = c.key_der()?;
        let id = key.as_ref().map(|_| {
            let id = next_id.to_le_bytes().to_vec();
            next_id += 1;
            id
        });
        if let Some(pkcs8) = &key {
            let (alg_id, ct) = pbe_encrypt(pkcs8)?;
            let epki = seq(&[alg_id, octets(&ct)]);
            key_bags.push(safe_bag(&oid::SHROUDED_KEY_BAG, &epki, id.as_deref()));
        }
        let cert_bag = seq(&[tlv::oid(&oid::X509_CERTIFICATE), explicit(0, &octets(&der))]);
        cert_bags.push(safe_bag(&oid::CERT_BAG, &cert_bag, id.as_deref()));
    }
    let mut safes = Vec::new();
    if !key_bags.is_empty() {
        safes.push(data_content_info(&seq(&key_bags)));
    }
    let (alg_id, ct) = pbe_encrypt(&seq(&cert_bags))?;
    let eci = seq(&[tlv::oid(&oid::DATA), alg_id, implicit(0, &ct)]);
    let encrypted = seq(&[uint(0), eci]);
    safes.push(seq(&[tlv::oid(&oid::ENCRYPTED_DATA), explicit(0, &encrypted)]));
    let auth_safe = seq(&safes);

    // MacData: HMAC-SHA-1 over the AuthenticatedSafe octets, key from the KDF with ID 3.
    let mac_salt = random(20)?;
    let mac_key = pkcs12_kdf(&EMPTY_PASSWORD, &mac_salt, 3, PFX_ITERATIONS, 20);
    let mac = {
        use hmac::{KeyInit, Mac};
        let mut h = hmac::Hmac::<Sha1>::new_from_slice(&mac_key).map_err(|e| format!("HMAC: {e}"))?;
        h.update(&auth_safe);
        h.finalize().into_bytes().to_vec()
    };
    let mac_data = seq(&[seq(&[alg(&oid::SHA1, Some(null())), octets(&mac)]), octets(&mac_salt), uint(PFX_ITERATIONS)]);
    Ok(seq(&[uint(3), data_content_info(&auth_safe), mac_data]))
}

// ---------------------------------------------------------------------------------------------------------------------
// CMS EnvelopedData

/// CMS `ContentInfo(envelopedData)`: `plain` encrypted with a random key under `cipher`, the key encrypted to
/// `recipient` (rid = its Subject Key Identifier).
pub fn envelope(
    plain: &[u8],
    recipient: &Recipient,
    transport: KeyTransport,
    cipher: ContentCipher,
) -> Result<Vec<u8>, String> {
    let cek = random(cipher.key_len())?;
    let iv = random(cipher.iv_len())?;
    let content = cipher.encrypt(&cek, &iv, plain)?;
    let (key_alg, encrypted_key) = match transport {
        KeyTransport::Oaep => (
            // RSAES-OAEP-params with every field at its default (SHA-1, MGF1-SHA-1, empty label): an empty SEQUENCE.
            alg(&oid::RSAES_OAEP, Some(seq(&[]))),
            recipient.key.encrypt(&mut OsRng, rsa::Oaep::<Sha1>::new(), &cek),
        ),
        KeyTransport::Pkcs1v15 => {
            (alg(&oid::RSA_ENCRYPTION, Some(null())), recipient.key.encrypt(&mut OsRng, rsa::Pkcs1v15Encrypt, &cek))
        }
    };
    let encrypted_key = encrypted_key.map_err(|e| format!("RSA encryption: {e}"))?;
    let ktri = seq(&[uint(2), implicit(0, &recipient.ski), key_alg, octets(&encrypted_key)]);
    let eci = seq(&[tlv::oid(&oid::DATA), alg(&cipher.oid(), Some(octets(&iv))), implicit(0, &content)]);
    let enveloped = seq(&[uint(2), set(&[ktri]), eci]);
    Ok(seq(&[tlv::oid(&oid::ENVELOPED_DATA), explicit(0, &enveloped)]))
}

// ---------------------------------------------------------------------------------------------------------------------
// Randomness and certificates

fn random(n: usize) -> Result<Vec<u8>, String> {
    let mut v = vec![0u8; n];
    getrandom::getrandom(&mut v).map_err(|e| format!("getrandom: {e}"))?;
    Ok(v)
}

/// `getrandom(2)` for the RustCrypto APIs.
struct OsRng;

#[derive(Debug)]
struct RngError(getrandom::Error);

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

/// Self-signed, subject = issuer, with a Subject Key Identifier.
struct SelfSigned {
    subject: Name,
}

impl BuilderProfile for SelfSigned {
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
        let ski = SubjectKeyIdentifier::try_from(spk)?;
        Ok(vec![ski.to_extension(tbs.subject(), &[])?])
    }
}

fn self_signed(key: &rsa::PrivateKey, cn: &str) -> Result<Vec<u8>, String> {
    let err = |what: &str, e: &dyn fmt::Display| format!("certificate {what}: {e}");
    let subject: Name = format!("CN={cn}").parse().map_err(|e| err("subject", &e))?;
    let mut serial = random(16)?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let serial = SerialNumber::new(&serial).map_err(|e| err("serial", &e))?;
    let validity = Validity::from_now(Duration::from_secs(365 * 86_400)).map_err(|e| err("validity", &e))?;
    let spki_der = key.to_public_key().to_public_key_der().map_err(|e| err("public key", &e))?;
    let spki = spki::SubjectPublicKeyInfoOwned::from_der(spki_der.as_bytes()).map_err(|e| err("public key", &e))?;
    let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone());
    let builder =
        CertificateBuilder::new(SelfSigned { subject }, serial, validity, spki).map_err(|e| err("builder", &e))?;
    let cert = builder.build::<_, rsa::pkcs1v15::Signature>(&signer).map_err(|e| err("signing", &e))?;
    cert.to_der().map_err(|e| err("encoding", &e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn have_openssl() -> bool {
        let ok = Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success());
        if !ok {
            eprintln!("skipping the openssl cross-check: openssl is not installed");
        }
        ok
    }

    fn openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    #[test]
    fn pkcs12_kdf_matches_rfc7292_reference() {
        // OpenSSL / Bouncy Castle known answer: password "smeg" (BMPString), salt 0A58CF64530D823F, 1 iteration.
        let bmp: Vec<u8> = "smeg\0".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        let salt = [0x0A, 0x58, 0xCF, 0x64, 0x53, 0x0D, 0x82, 0x3F];
        assert_eq!(hex_upper(&pkcs12_kdf(&bmp, &salt, 1, 1, 24)), "8AAAE6297B6CB04642AB5B077851284EB7128F1A2A7FBCA3");
        assert_eq!(hex_upper(&pkcs12_kdf(&bmp, &salt, 2, 1, 8)), "79993DFE048D3B76");
    }

    #[test]
    fn tlv_writer() {
        assert_eq!(uint(0), [2, 1, 0]);
        assert_eq!(uint(0x80), [2, 2, 0, 0x80]);
        assert_eq!(uint(2000), [2, 2, 0x07, 0xD0]);
        assert_eq!(tlv::tlv(4, &[7; 200])[..3], [4, 0x81, 200]);
        assert_eq!(tlv::tlv(4, &[7; 300])[..4], [4, 0x82, 1, 44]);
        assert_eq!(set(&[vec![2, 1, 5], vec![2, 1, 3]]), [0x31, 6, 2, 1, 3, 2, 1, 5]);
    }

    #[test]
    fn generated_cert_and_validation() {
        let c = SimCert::generate_rsa("kp").unwrap();
        assert!(c.cert_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(c.key_pem.as_deref().unwrap().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(c.thumbprint().unwrap(), hex_upper(&Sha1::digest(c.cert_der().unwrap())));
        assert!(c.ssh_public_key().unwrap().unwrap().starts_with("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ"));
        // The generated certificate can be a transport certificate (it has an SKI).
        assert_eq!(Recipient::from_der(&c.cert_der().unwrap()).unwrap().ski.len(), 20);
        c.validate().unwrap();
        let p = c.clone().public_key();
        assert!(p.key_pem.is_none() && p.ovf_public_key && !p.ovf_key_pair);
        let k = c.clone().key_pair();
        assert!(k.key_pem.is_some() && k.ovf_key_pair);
        let bad = SimCert { key_pem: None, ..k.clone() };
        assert!(bad.validate().unwrap_err().contains("key_pem"));
        let bad = SimCert { cert_pem: c.key_pem.clone().unwrap(), ..k.clone() };
        assert!(bad.validate().unwrap_err().contains("CERTIFICATE"));
        let bad = SimCert { key_pem: Some(c.cert_pem.clone()), ..k };
        assert!(bad.validate().unwrap_err().contains("PRIVATE KEY"));
        assert!(Recipient::from_header("not base64!").is_err());
        assert!(Recipient::from_header("MIIBszCCAVmgAwIBAgIUQUJD").is_err());
    }

    #[test]
    fn certificate_file_without_certificates_has_no_data() {
        let t = SimCert::generate_rsa("LinuxTransport").unwrap();
        let r = Recipient::from_der(&t.cert_der().unwrap()).unwrap();
        let xml = certificate_file_xml(&[], 4, &r, KeyTransport::Oaep, ContentCipher::Aes128Cbc).unwrap();
        assert!(xml.contains("<Incarnation>4</Incarnation>") && xml.contains(FORMAT_PFX), "{xml}");
        assert!(!xml.contains("<Data>"));
    }

    /// openssl decrypts the envelope with the transport key (every cipher, both paddings) and reads the PFX with
    /// the empty password, verifying its MAC; the certificates and the key are the ones put in.
    #[test]
    fn openssl_opens_the_envelope_and_the_pfx() {
        if !have_openssl() {
            return;
        }
        let transport = SimCert::generate_rsa("LinuxTransport").unwrap();
        let pair = SimCert::generate_rsa("pair").unwrap().key_pair();
        let public = SimCert::generate_rsa("public").unwrap().public_key();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("t.crt"), &transport.cert_pem).unwrap();
        std::fs::write(d.join("t.key"), transport.key_pem.as_deref().unwrap()).unwrap();
        let recipient = Recipient::from_der(&transport.cert_der().unwrap()).unwrap();
        let certs = [pair.clone(), public.clone()];
        for kt in [KeyTransport::Oaep, KeyTransport::Pkcs1v15] {
            for cipher in [ContentCipher::Aes128Cbc, ContentCipher::DesEde3Cbc, ContentCipher::Aes256Cbc] {
                let xml = certificate_file_xml(&certs, 1, &recipient, kt, cipher).unwrap();
                let data: String = xml
                    .split("<Data>")
                    .nth(1)
                    .unwrap()
                    .split("</Data>")
                    .next()
                    .unwrap()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let blob = base64::engine::general_purpose::STANDARD.decode(data).unwrap();
                std::fs::write(d.join("env.der"), &blob).unwrap();
                let parsed =
                    String::from_utf8(openssl(d, &["cms", "-cmsout", "-print", "-inform", "DER", "-in", "env.der"]))
                        .unwrap();
                let want_alg = if kt == KeyTransport::Oaep { "rsaesOaep" } else { "rsaEncryption" };
                assert!(parsed.contains(want_alg), "{parsed}");
                assert!(parsed.contains("subjectKeyIdentifier"), "{parsed}");
                openssl(
                    d,
                    &[
                        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", "env.der", "-inkey", "t.key", "-recip",
                        "t.crt", "-out", "p.pfx",
                    ],
                );
                // -info verifies the MAC; the legacy provider may be needed for 3DES PBE on OpenSSL 3.
                let mut args = vec!["pkcs12", "-in", "p.pfx", "-passin", "pass:", "-nodes", "-info"];
                let legacy = Command::new("openssl").args(["list", "-providers", "-provider", "legacy"]).output();
                if legacy.is_ok_and(|o| o.status.success()) {
                    args.extend_from_slice(&["-legacy"]);
                }
                let out = Command::new("openssl").args(&args).current_dir(d).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success(), "{kt:?} {cipher:?}: {text}");
                assert!(text.contains("MAC: sha1, Iteration 2000"), "{text}");
                assert!(text.contains("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2000"), "{text}");
                assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "{text}");
                assert_eq!(text.matches("-----BEGIN PRIVATE KEY-----").count(), 1, "{text}");
                assert!(text.contains("subject=CN = pair") && text.contains("subject=CN = public"), "{text}");
                assert!(text.contains("localKeyID: 01 00 00 00"), "{text}");
                // The key in the PFX is the pair's key.
                let key_start = text.find("-----BEGIN PRIVATE KEY-----").unwrap();
                let key_end = text.find("-----END PRIVATE KEY-----").unwrap() + "-----END PRIVATE KEY-----\n".len();
                assert_eq!(&text[key_start..key_end], pair.key_pem.as_deref().unwrap());
            }
        }
    }
}
