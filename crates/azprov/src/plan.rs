//! The plan: pure decisions from what the platform said (OVF, IMDS), the configuration and the saved progress →
//! an ordered list of steps per phase. No I/O here; `--dry-run` prints this.

use serde::Serialize;

use crate::config::Config;
use crate::platform::imds::Instance;
use crate::platform::ovf::Environment;

/// Boot phases (platform.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Before the network: host name, user, keys, sshd, sudo.
    Local,
    /// IMDS, wireserver, Ready.
    Network,
    /// After Ready was accepted.
    AfterReady,
}

/// Pre-provisioned (pool) VM types (platform.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PpsKind {
    /// A normal VM.
    None,
    /// Assigned by moving the NIC: its link goes down and up.
    Running,
    /// Suspended in the pool; assigned by detaching the pool NIC and hot-attaching the customer's.
    Savable,
    /// The host shuts the VM down and reuses its OS disk.
    OsDisk,
    /// Rebooted while in the pool (our intermediate-Ready marker exists): only wait for the customer's OVF.
    Unknown,
}

impl PpsKind {
    /// The name the reports use (IMDS `ppsType` spelling).
    pub fn name(self) -> &'static str {
        match self {
            PpsKind::None => "None",
            PpsKind::Running => "Running",
            PpsKind::Savable => "Savable",
            PpsKind::OsDisk => "PreprovisionedOSDisk",
            PpsKind::Unknown => "Unknown",
        }
    }
}

/// The pool type, first match wins (cloud-init's order): our intermediate-Ready marker → `Unknown`; OVF
/// `PreprovisionedVMType` or IMDS `ppsType` `Savable` → `Savable`, `PreprovisionedOSDisk` → `OsDisk`; OVF
/// `PreprovisionedVm=true` or type `Running` → `Running`; else `None`.
pub fn pps_kind(ovf: Option<&Environment>, imds_pps_type: Option<&str>, pool_marker: bool) -> PpsKind {
    if pool_marker {
        return PpsKind::Unknown;
    }
    let ovf_type = ovf.and_then(|o| o.preprovisioned_vm_type.as_deref());
    let is = |want: &str| [ovf_type, imds_pps_type].iter().flatten().any(|t| t.trim().eq_ignore_ascii_case(want));
    if is("Savable") {
        PpsKind::Savable
    } else if is("PreprovisionedOSDisk") {
        PpsKind::OsDisk
    } else if is("Running") || ovf.is_some_and(|o| o.preprovisioned_vm) {
        PpsKind::Running
    } else {
        PpsKind::None
    }
}

/// One SSH public key as the platform sent it, with the platform's target path (OVF `PublicKey/Path`, IMDS
/// `publicKeys[].path`) when it gave one. Where the key finally goes depends on the passwd home and the effective
/// sshd `AuthorizedKeysFile`, which the duty resolves (`duties::ssh_keys::install`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshKey {
    /// The OpenSSH line.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl SshKey {
    pub fn new(key: impl Into<String>, path: Option<String>) -> Self {
        SshKey { key: key.into(), path }
    }
}

/// The identity the platform asked for, merged from OVF and IMDS (IMDS wins, platform.md §4.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub hostname: Option<String>,
    pub username: Option<String>,
    /// OpenSSH lines with their platform target paths.
    pub ssh_keys: Vec<SshKey>,
    /// A password came with the OVF (the value itself is never in the plan).
    pub password_provided: bool,
    /// `PasswordAuthentication yes` only with a provisioned password the platform allows.
    pub password_authentication: bool,
    /// Notes on where values came from and what was ignored.
    pub notes: Vec<String>,
}

/// Merge OVF and IMDS values.
pub fn identity(ovf: Option<&Environment>, imds: Option<&Instance>) -> Identity {
    let mut notes = Vec::new();
    let imds_profile = imds.filter(|i| i.has_os_profile);
    let username = imds_profile
        .and_then(|i| i.admin_username.clone())
        .filter(|u| !u.is_empty())
        .or_else(|| ovf.and_then(|o| o.username.clone()));
    let hostname = imds_profile
        .and_then(|i| i.computer_name.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| ovf.map(|o| o.hostname.clone()).filter(|h| !h.is_empty()));
    let imds_keys: Vec<SshKey> = imds
        .map(|i| i.public_keys.iter().map(|k| SshKey::new(k.key_data.clone(), k.path.clone())).collect())
        .unwrap_or_default();
    let ssh_keys = if !imds_keys.is_empty() {
        imds_keys
    } else {
        let mut keys = Vec::new();
        for k in ovf.map(|o| o.public_keys.as_slice()).unwrap_or(&[]) {
            match &k.value {
                Some(v) if !v.trim().is_empty() => keys.push(SshKey::new(v.clone(), k.path.clone())),
                _ => notes.push(format!(
                    "public key {} has no value (certificate-based keys are not handled by this step)",
                    k.fingerprint.as_deref().unwrap_or("?")
                )),
            }
        }
        keys
    };
    let password_provided = ovf.is_some_and(|o| o.password.is_some());
    let disabled_by_ovf = ovf.and_then(|o| o.disable_ssh_password_authentication) == Some(true);
    let disabled_by_imds = imds_profile.and_then(|i| i.disable_password_authentication) == Some(true);
    Identity {
        hostname,
        username,
        ssh_keys,
        password_provided,
        password_authentication: password_provided && !disabled_by_ovf && !disabled_by_imds,
        notes,
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "duty", rename_all = "snake_case")]
pub enum Action {
    Hostname {
        name: String,
    },
    User {
        name: String,
        groups: Vec<String>,
    },
    Password {
        user: String,
        set: bool,
    },
    /// Each key with the platform's path for it (the key of the step changes when a key or a path changes).
    SshKeys {
        user: String,
        keys: Vec<SshKey>,
    },
    Sshd {
        password_authentication: bool,
    },
    Sudo {
        user: String,
        password_set: bool,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Hostname { .. } => "hostname",
            Action::User { .. } => "user",
            Action::Password { .. } => "password",
            Action::SshKeys { .. } => "ssh_keys",
            Action::Sshd { .. } => "sshd",
            Action::Sudo { .. } => "sudo",
        }
    }

    /// A stable key for "this step with these arguments was done for this VM id": a changed value (e.g. an IMDS
    /// host name that differs from the OVF one) makes the step run again.
    pub fn key(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        // FNV-1a: short, stable across builds
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in json.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{}:{h:016x}", self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub phase: Phase,
    pub action: Action,
    /// Why the step will not run (disabled, already done for this VM id, nothing to do).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub vm_id: String,
    pub identity: Identity,
    pub steps: Vec<Step>,
}

/// The identity steps, in order, for the given identity.
pub fn plan(vm_id: &str, id: &Identity, cfg: &Config, done: &[String], phase: Phase) -> Plan {
    let d = &cfg.duties;
    let mut steps = Vec::new();
    let mut push = |enabled: bool, action: Action| {
        let skip = if !enabled {
            Some(format!("disabled by configuration (duties.{}.enabled = false)", action.name()))
        } else if done.contains(&action.key()) {
            Some("already done for this VM id".to_string())
        } else {
            None
        };
        steps.push(Step { phase, action, skip });
    };
    if let Some(name) = &id.hostname {
        push(d.hostname.enabled, Action::Hostname { name: name.clone() });
    }
    if let Some(user) = &id.username {
        push(d.user.enabled, Action::User { name: user.clone(), groups: d.user.groups.clone() });
        push(d.password.enabled, Action::Password { user: user.clone(), set: id.password_provided });
        if !id.ssh_keys.is_empty() {
            push(d.ssh_keys.enabled, Action::SshKeys { user: user.clone(), keys: id.ssh_keys.clone() });
        }
        push(d.sudo.enabled, Action::Sudo { user: user.clone(), password_set: id.password_provided });
    }
    push(d.sshd.enabled, Action::Sshd { password_authentication: id.password_authentication });
    Plan { vm_id: vm_id.to_string(), identity: id.clone(), steps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::imds::ImdsPublicKey;
    use crate::platform::ovf::PublicKey;
    use crate::secret::Secret;

    fn ovf() -> Environment {
        Environment {
            hostname: "ovf-host".into(),
            username: Some("ovfuser".into()),
            password: Some(Secret::new(b"pw".to_vec())),
            disable_ssh_password_authentication: Some(false),
            public_keys: vec![
                PublicKey {
                    fingerprint: None,
                    path: Some("/home/ovfuser/.ssh/authorized_keys".into()),
                    value: Some("ssh-ed25519 AAAA ovf".into()),
                },
                PublicKey { fingerprint: Some("ABCD".into()), path: None, value: None },
            ],
            provision_guest_agent: true,
            ..Default::default()
        }
    }

    fn imds() -> Instance {
        Instance {
            has_os_profile: true,
            admin_username: Some("imdsuser".into()),
            computer_name: Some("imds-host".into()),
            disable_password_authentication: Some(false),
            public_keys: vec![ImdsPublicKey { key_data: "ssh-ed25519 BBBB imds".into(), path: None }],
            ..Default::default()
        }
    }

    #[test]
    fn imds_overrides_ovf() {
        let id = identity(Some(&ovf()), Some(&imds()));
        assert_eq!(id.username.as_deref(), Some("imdsuser"));
        assert_eq!(id.hostname.as_deref(), Some("imds-host"));
        assert_eq!(id.ssh_keys, vec![SshKey::new("ssh-ed25519 BBBB imds", None)]);
        assert!(id.password_authentication);
    }

    #[test]
    fn ovf_alone_and_password_rules() {
        let id = identity(Some(&ovf()), None);
        assert_eq!(id.username.as_deref(), Some("ovfuser"));
        assert_eq!(
            id.ssh_keys,
            vec![SshKey::new("ssh-ed25519 AAAA ovf", Some("/home/ovfuser/.ssh/authorized_keys".into()))]
        );
        assert_eq!(id.notes.len(), 1);
        let mut i = imds();
        i.disable_password_authentication = Some(true);
        assert!(!identity(Some(&ovf()), Some(&i)).password_authentication);
        let mut o = ovf();
        o.password = None;
        assert!(!identity(Some(&o), Some(&imds())).password_authentication, "no password → never enabled");
    }

    #[test]
    fn specialized_disk_has_no_identity_steps() {
        let i = Instance { has_os_profile: false, ..Default::default() };
        let id = identity(None, Some(&i));
        assert_eq!(id.username, None);
        assert_eq!(id.hostname, None);
    }

    #[test]
    fn order_switches_and_done_steps() {
        let id = identity(Some(&ovf()), None);
        let cfg = Config::default();
        let p = plan("vm", &id, &cfg, &[], Phase::Local);
        let names: Vec<_> = p.steps.iter().map(|s| s.action.name()).collect();
        assert_eq!(names, ["hostname", "user", "password", "ssh_keys", "sudo", "sshd"]);
        assert!(p.steps.iter().all(|s| s.skip.is_none()));

        let mut cfg2 = Config::default();
        cfg2.duties.sudo.enabled = false;
        let done = vec![p.steps[0].action.key()];
        let p2 = plan("vm", &id, &cfg2, &done, Phase::Local);
        assert_eq!(p2.steps[0].skip.as_deref(), Some("already done for this VM id"));
        assert!(p2.steps[4].skip.as_deref().unwrap().contains("duties.sudo.enabled"));

        // a key's platform path is part of the step
        let keys = |path: &str| Action::SshKeys {
            user: "u".into(),
            keys: vec![SshKey::new("ssh-ed25519 AAAA", Some(path.into()))],
        };
        assert_ne!(keys("/home/u/.ssh/authorized_keys").key(), keys("/home/u/.ssh/other").key());
        assert_eq!(keys("/home/u/.ssh/authorized_keys").key(), keys("/home/u/.ssh/authorized_keys").key());

        // a different host name is a different step
        let mut id3 = id.clone();
        id3.hostname = Some("other".into());
        let p3 = plan("vm", &id3, &cfg, &done, Phase::Network);
        assert!(p3.steps[0].skip.is_none());
    }

    #[test]
    fn pps_kind_first_match_wins() {
        let pool = |vm: bool, t: Option<&str>| Environment {
            preprovisioned_vm: vm,
            preprovisioned_vm_type: t.map(String::from),
            ..ovf()
        };
        assert_eq!(pps_kind(Some(&ovf()), None, false), PpsKind::None);
        assert_eq!(pps_kind(Some(&ovf()), Some("None"), false), PpsKind::None);
        assert_eq!(pps_kind(None, None, false), PpsKind::None);
        assert_eq!(pps_kind(Some(&pool(true, None)), None, false), PpsKind::Running);
        assert_eq!(pps_kind(Some(&pool(true, Some("Running"))), None, false), PpsKind::Running);
        assert_eq!(pps_kind(Some(&pool(true, Some("Savable"))), None, false), PpsKind::Savable);
        assert_eq!(pps_kind(Some(&pool(true, Some("PreprovisionedOSDisk"))), None, false), PpsKind::OsDisk);
        // IMDS alone is enough, and Savable beats Running
        assert_eq!(pps_kind(None, Some("Savable"), false), PpsKind::Savable);
        assert_eq!(pps_kind(Some(&pool(true, Some("Running"))), Some("savable"), false), PpsKind::Savable);
        assert_eq!(pps_kind(None, Some("Running"), false), PpsKind::Running);
        // our marker after a reboot in the pool
        assert_eq!(pps_kind(Some(&pool(true, Some("Savable"))), None, true), PpsKind::Unknown);
        assert_eq!(PpsKind::OsDisk.name(), "PreprovisionedOSDisk");
    }
}
