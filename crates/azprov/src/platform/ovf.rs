//! `ovf-env.xml`: the VM-create parameters on the provisioning DVD (platform.md §3).

use crate::report::Failure;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicKey {
    pub fingerprint: Option<String>,
    pub path: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyPair {
    pub fingerprint: String,
    pub path: Option<String>,
}

/// `CustomData` as found: decoded bytes, or the text as given when it is not valid base64 (flagged in warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomData {
    Decoded(Secret),
    Raw(Secret),
}

impl CustomData {
    /// Bytes after base64 decoding, or the raw length when it was not base64.
    pub fn len(&self) -> usize {
        match self {
            CustomData::Decoded(s) | CustomData::Raw(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parsed environment. `Debug` never shows the password or customData (they are `Secret`s).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub hostname: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub disable_ssh_password_authentication: Option<bool>,
    pub public_keys: Vec<PublicKey>,
    pub key_pairs: Vec<KeyPair>,
    pub custom_data: Option<CustomData>,
    /// Absent means true.
    pub provision_guest_agent: bool,
    pub preprovisioned_vm: bool,
    pub preprovisioned_vm_type: Option<String>,
    pub provision_guest_proxy_agent: bool,
    /// Non-fatal findings (bad booleans, customData that is not base64, …), safe to log.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfError {
    /// Malformed XML (reason `error parsing ovf-env.xml: <msg>`).
    #[error("error parsing ovf-env.xml: {0}")]
    Malformed(String),
    /// Missing/duplicate required elements (reason `unexpected metadata parsing ovf-env.xml: <msg>`).
    #[error("unexpected metadata parsing ovf-env.xml: {0}")]
    Unexpected(String),
    /// `unsupported password length=N max=72`
    #[error("unsupported password length={0} max=72")]
    PasswordLength(usize),
}

impl OvfError {
    pub fn failure(&self) -> Failure {
        Failure::new(self.to_string())
    }
}

/// Parse `ovf-env.xml` bytes (UTF-8, optional BOM).
pub fn parse(bytes: &[u8]) -> Result<Environment, OvfError> {
    let _ = bytes;
    Err(OvfError::Malformed("not implemented".into()))
}

/// The same document with the text of every `*UserPassword*` element replaced by `REDACTED`; everything else
/// byte-for-byte unchanged.
pub fn redact(bytes: &[u8]) -> Vec<u8> {
    bytes.to_vec()
}

impl Environment {
    /// The JSON printed by `azprov inspect ovf|media` (keys fixed by the core issue; never the password).
    pub fn inspect_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hostname": self.hostname,
            "username": self.username,
            "password_provided": self.password.is_some(),
            "disable_ssh_password_authentication": self.disable_ssh_password_authentication,
            "public_keys": self.public_keys,
            "custom_data_len": self.custom_data.as_ref().map(|c| c.len()).unwrap_or(0),
            "provision_guest_agent": self.provision_guest_agent,
            "preprovisioned_vm": self.preprovisioned_vm,
            "preprovisioned_vm_type": self.preprovisioned_vm_type,
        })
    }
}
