//! The simulated VM: one definition from which the OVF, the IMDS document and the wireserver goal state are all built.
//!
//! A pre-provisioned pool VM (`pps_type` = `Running`, `Savable` or `PreprovisionedOSDisk`) may carry a `[customer]`
//! table: the VM the customer asked for, served once the simulator assigns the pool VM (see [`crate::server`]). In
//! TOML every key absent from `[customer]` takes the pool VM's value, so the table lists only what differs; the
//! optional `password`, `custom_data` and `user_data` the pool VM has are removed with `unset = ["password", …]`:
//!
//! ```toml
//! pps_type = "Running"
//! hostname = "pool-0042"
//! assign_after_ready_ms = 500
//!
//! [customer]
//! hostname = "web-01"
//! username = "alice"
//! unset = ["custom_data"]
//! ```

use serde::{Deserialize, Serialize};

use crate::certs::{KeyTransport, SimCert};

/// Everything the platform knows about one VM. Missing TOML keys take the values of [`VmDefinition::default`], except
/// the optional ones (`password`, `custom_data`, `user_data`, `imds_hostname`): absent means none, so that TOML can
/// express "none".
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct VmDefinition {
    /// OVF `HostName`, and IMDS `osProfile.computerName` unless `imds_hostname` is set.
    pub hostname: String,
    /// IMDS `osProfile.computerName` when it differs from the OVF `HostName` (the VM renamed after the DVD was made,
    /// as the agent sees it when IMDS answers with another name): the agent must set it in its network phase and
    /// publish it to the platform DNS. Absent = `hostname`.
    #[serde(default)]
    pub imds_hostname: Option<String>,
    /// OVF `UserName` and IMDS `osProfile.adminUsername`.
    pub username: String,
    /// OVF `UserPassword` (plaintext); never sent through IMDS.
    #[serde(default)]
    pub password: Option<String>,
    /// OpenSSH public-key lines.
    pub ssh_keys: Vec<String>,
    /// customData as text; the OVF carries it base64-encoded.
    #[serde(default)]
    pub custom_data: Option<String>,
    pub disable_password_authentication: bool,
    /// The VM id (a UUID), as IMDS `compute.vmId` shows it.
    pub vm_id: String,
    /// Hyper-V generation 2 (UEFI): `product_uuid` equals the VM id without a byte swap.
    pub gen2: bool,
    /// Goal-state incarnation.
    pub incarnation: u32,
    pub container_id: String,
    /// `<guid>.<vm name>`.
    pub role_instance_id: String,
    /// OVF `ProvisionGuestAgent`.
    pub provision_guest_agent: bool,
    /// Specialized image: no `osProfile` in IMDS and no provisioning DVD.
    pub specialized: bool,
    /// IMDS `compute.userData` as text (served base64).
    #[serde(default)]
    pub user_data: Option<String>,
    pub vm_size: String,
    pub location: String,
    /// Primary NIC MAC, 12 hex digits without separators.
    pub mac_address: String,
    pub private_ip: String,
    /// `None`, `Running`, `Savable` or `PreprovisionedOSDisk`.
    pub pps_type: String,
    /// How `comp=certificates` encrypts the content key to the transport certificate: `oaep` (the platform today)
    /// or `pkcs1v15`.
    pub cert_key_transport: KeyTransport,
    /// Certificates served by `comp=certificates` (PFX in CMS); each one's flags say how the OVF refers to it.
    pub certificates: Vec<SimCert>,
    /// Pre-provisioned pool VM: what the customer asked for. Served (IMDS, goal state, `reprovisiondata`) once the
    /// VM is assigned; its `pps_type` is always `None` (see [`VmDefinition::customer_definition`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Box<VmDefinition>>,
    /// Assign the pool VM to its customer this many milliseconds after the first `Ready` health report arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assign_after_ready_ms: Option<u64>,
}

const DEMO_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIlJXvk9FW73Tb2ZY4fpfQw9OatLZhok0DFkY4rAWovn azureuser@azprov-demo";

impl Default for VmDefinition {
    fn default() -> Self {
        VmDefinition {
            hostname: "azprov-demo".into(),
            imds_hostname: None,
            username: "azureuser".into(),
            password: Some("Azprov-Demo-Passw0rd!".into()),
            ssh_keys: vec![DEMO_KEY.into()],
            custom_data: Some("#!/bin/sh\necho hello\n".into()),
            disable_password_authentication: false,
            vm_id: "53538997-634e-42de-ac2c-0b90d17aa93c".into(),
            gen2: true,
            incarnation: 1,
            container_id: "7d56e5c7-dec7-49bb-aaf1-1d89760b2f78".into(),
            role_instance_id: "103efdde-3061-45f3-9800-8e2e6d8cf845.azprov-demo".into(),
            provision_guest_agent: true,
            specialized: false,
            user_data: Some("azprov demo userData\n".into()),
            vm_size: "Standard_D2s_v5".into(),
            location: "westeurope".into(),
            mac_address: "6045BDA1B2C3".into(),
            private_ip: "10.0.0.4".into(),
            pps_type: "None".into(),
            cert_key_transport: KeyTransport::Oaep,
            certificates: Vec::new(),
            customer: None,
            assign_after_ready_ms: None,
        }
    }
}

/// The optional keys a `[customer]` table may `unset`.
const UNSETTABLE: [&str; 3] = ["password", "custom_data", "user_data"];

fn key_error(e: toml::de::Error) -> String {
    e.to_string().trim_end().replace('\n', " ")
}

impl VmDefinition {
    /// Parses a TOML VM definition; unknown keys and malformed identifiers are errors that name the key. Keys absent
    /// from a `[customer]` table take the pool VM's values (module documentation).
    pub fn from_toml(text: &str) -> Result<VmDefinition, String> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let customer = match table.remove("customer") {
            None => None,
            Some(toml::Value::Table(t)) => Some(t),
            Some(_) => return Err("customer: expected a table".into()),
        };
        let mut vm: VmDefinition = toml::Value::Table(table).try_into().map_err(key_error)?;
        if let Some(overlay) = customer {
            vm.customer = Some(Box::new(vm.customer_from_overlay(overlay)?));
        }
        vm.validate()?;
        Ok(vm)
    }

    /// The customer's definition from a `[customer]` table laid over this (pool) definition.
    fn customer_from_overlay(&self, mut overlay: toml::Table) -> Result<VmDefinition, String> {
        for key in ["customer", "assign_after_ready_ms"] {
            if overlay.contains_key(key) {
                return Err(format!("customer.{key}: not allowed in a customer definition"));
            }
        }
        if let Some(v) = overlay.get("pps_type") {
            if v.as_str() != Some("None") {
                return Err(format!("customer.pps_type: a customer's VM is not pre-provisioned (got {v})"));
            }
        }
        let unset: Vec<String> = match overlay.remove("unset") {
            None => Vec::new(),
            Some(v) => v.try_into().map_err(|_| "customer.unset: expected an array of key names".to_string())?,
        };
        let base = self.customer_base();
        let mut table = toml::Table::try_from(&base).map_err(|e| e.to_string())?;
        table.extend(overlay);
        let mut customer: VmDefinition =
            toml::Value::Table(table).try_into().map_err(|e| format!("customer: {}", key_error(e)))?;
        for key in &unset {
            match key.as_str() {
                "password" => customer.password = None,
                "custom_data" => customer.custom_data = None,
                "user_data" => customer.user_data = None,
                other => {
                    return Err(format!("customer.unset: cannot unset {other:?} (only {})", UNSETTABLE.join(", ")))
                }
            }
        }
        Ok(customer)
    }

    /// What a customer definition starts from: this VM, not pre-provisioned, without a customer.
    fn customer_base(&self) -> VmDefinition {
        VmDefinition { customer: None, assign_after_ready_ms: None, pps_type: "None".into(), ..self.clone() }
    }

    /// The definition as TOML (round-trips through [`VmDefinition::from_toml`]); a customer is written as the keys
    /// that differ from this VM's.
    pub fn to_toml(&self) -> Result<String, String> {
        let Some(customer) = self.customer_definition() else {
            return toml::to_string(self).map_err(|e| e.to_string());
        };
        let own = VmDefinition { customer: None, ..self.clone() };
        let mut table = toml::Table::try_from(&own).map_err(|e| e.to_string())?;
        let base = toml::Table::try_from(self.customer_base()).map_err(|e| e.to_string())?;
        let full = toml::Table::try_from(&customer).map_err(|e| e.to_string())?;
        let mut diff: toml::Table = full.into_iter().filter(|(k, v)| base.get(k) != Some(v)).collect();
        let unset: Vec<toml::Value> = UNSETTABLE
            .iter()
            .filter(|k| base.contains_key(**k) && !diff.contains_key(**k) && full_lacks(&customer, k))
            .map(|k| toml::Value::String((*k).to_string()))
            .collect();
        if !unset.is_empty() {
            diff.insert("unset".into(), toml::Value::Array(unset));
        }
        table.insert("customer".into(), toml::Value::Table(diff));
        toml::to_string(&table).map_err(|e| e.to_string())
    }

    /// The customer's VM as the simulator serves it after assignment: `pps_type` `None`, no customer of its own, no
    /// automatic assignment. `None` for a VM without a customer.
    pub fn customer_definition(&self) -> Option<VmDefinition> {
        self.customer.as_deref().map(|c| VmDefinition {
            pps_type: "None".into(),
            customer: None,
            assign_after_ready_ms: None,
            ..c.clone()
        })
    }

    /// `self` with `customer` as its customer (a convenience for `VmDefinition { …, ..pool.clone() }` customers).
    pub fn with_customer(self, customer: VmDefinition) -> VmDefinition {
        VmDefinition { customer: Some(Box::new(customer)), ..self }
    }

    /// Whether this is a pre-provisioned pool VM (`pps_type` other than `None`).
    pub fn is_preprovisioned(&self) -> bool {
        !self.pps_type.is_empty() && self.pps_type != "None"
    }

    /// Checks the fields the simulator itself depends on. Other values (over-long passwords, odd user names) are left
    /// alone on purpose: they are how tests exercise the agent's own validation.
    pub fn validate(&self) -> Result<(), String> {
        if uuid_bytes(&self.vm_id).is_none() {
            return Err(format!("vm_id: not a UUID: {:?}", self.vm_id));
        }
        if self.mac_address.len() != 12 || !self.mac_address.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("mac_address: expected 12 hex digits without separators, got {:?}", self.mac_address));
        }
        if self.private_ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(format!("private_ip: not an IPv4 address: {:?}", self.private_ip));
        }
        for (i, cert) in self.certificates.iter().enumerate() {
            cert.validate().map_err(|e| format!("certificates[{i}]: {e}"))?;
        }
        if let Some(c) = &self.customer {
            if c.customer.is_some() {
                return Err("customer.customer: a customer has no customer of its own".into());
            }
            c.validate().map_err(|e| format!("customer.{e}"))?;
        } else if self.assign_after_ready_ms.is_some() {
            return Err("assign_after_ready_ms: needs a [customer] to assign the VM to".into());
        }
        Ok(())
    }

    /// What `/sys/class/dmi/id/product_uuid` shows on this VM: the VM id on Gen2, the VM id with its first three fields
    /// byte-reversed on Gen1 (SMBIOS 2.3 stores them little-endian). Lower-case.
    pub fn product_uuid(&self) -> String {
        let id = self.vm_id.to_ascii_lowercase();
        if self.gen2 {
            return id;
        }
        match uuid_bytes(&id) {
            Some(mut b) => {
                b[0..4].reverse();
                b[4..6].reverse();
                b[6..8].reverse();
                format_uuid(&b)
            }
            None => id,
        }
    }

    /// IMDS `osProfile.computerName`: `imds_hostname`, else the OVF `hostname`.
    pub fn computer_name(&self) -> &str {
        self.imds_hostname.as_deref().unwrap_or(&self.hostname)
    }

    /// The VM (resource) name: the part of the role instance id after the first dot.
    pub fn vm_name(&self) -> &str {
        self.role_instance_id.split_once('.').map_or(self.hostname.as_str(), |(_, name)| name)
    }
}

/// Whether `key` (one of [`UNSETTABLE`]) is `None` in `vm`.
fn full_lacks(vm: &VmDefinition, key: &str) -> bool {
    match key {
        "password" => vm.password.is_none(),
        "custom_data" => vm.custom_data.is_none(),
        "user_data" => vm.user_data.is_none(),
        _ => false,
    }
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    if groups.len() != 5 || groups.iter().map(|g| g.len()).ne([8, 4, 4, 4, 12]) {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gen1_product_uuid_is_byte_swapped() {
        let vm =
            VmDefinition { vm_id: "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf".into(), gen2: false, ..Default::default() };
        assert_eq!(vm.product_uuid(), "527c2691-029f-fe4c-b1f4-a4da7ebac2cf");
        // The swap is its own inverse.
        let back = VmDefinition { vm_id: vm.product_uuid(), ..vm.clone() };
        assert_eq!(back.product_uuid(), "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf");
        let upper =
            VmDefinition { vm_id: "D0DF4C54-4ECB-4A4B-9954-5BDF3ED5C3B8".into(), gen2: false, ..Default::default() };
        assert_eq!(upper.product_uuid(), "544cdfd0-cb4e-4b4a-9954-5bdf3ed5c3b8");
    }

    #[test]
    fn gen2_product_uuid_is_the_vm_id() {
        let vm =
            VmDefinition { vm_id: "91267C52-9F02-4CFE-B1F4-A4DA7EBAC2CF".into(), gen2: true, ..Default::default() };
        assert_eq!(vm.product_uuid(), "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf");
    }

    #[test]
    fn toml_round_trip() {
        let vm = VmDefinition::default();
        let text = vm.to_toml().unwrap();
        assert_eq!(VmDefinition::from_toml(&text).unwrap(), vm);
        let sparse = VmDefinition { password: None, custom_data: None, user_data: None, ..vm };
        let text = sparse.to_toml().unwrap();
        assert!(!text.contains("\npassword"), "{text}");
        assert_eq!(VmDefinition::from_toml(&text).unwrap(), sparse);
    }

    #[test]
    fn missing_keys_take_defaults() {
        let vm = VmDefinition::from_toml("hostname = \"web-01\"\ngen2 = false\n").unwrap();
        assert_eq!(vm.hostname, "web-01");
        assert!(!vm.gen2);
        assert_eq!(vm.username, "azureuser");
        assert_eq!(vm.password, None);
        assert_eq!(vm.custom_data, None);
        assert_eq!((vm.imds_hostname.as_deref(), vm.computer_name()), (None, "web-01"));
    }

    #[test]
    fn imds_hostname_overrides_the_computer_name_only() {
        let vm = VmDefinition::from_toml("hostname = \"ovf-name\"\nimds_hostname = \"imds-name\"\n").unwrap();
        assert_eq!((vm.hostname.as_str(), vm.computer_name()), ("ovf-name", "imds-name"));
        assert_eq!(VmDefinition::from_toml(&vm.to_toml().unwrap()).unwrap(), vm);
        assert!(!VmDefinition::default().to_toml().unwrap().contains("imds_hostname"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = VmDefinition::from_toml("hostname = \"x\"\nhost_name = \"y\"\n").unwrap_err();
        assert!(err.contains("host_name"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = VmDefinition::from_toml("vm_id = \"nope\"").unwrap_err();
        assert!(err.starts_with("vm_id"), "{err}");
        let err = VmDefinition::from_toml("mac_address = \"00:0d:3a:04:75:98\"").unwrap_err();
        assert!(err.starts_with("mac_address"), "{err}");
        let err = VmDefinition::from_toml("incarnation = \"three\"").unwrap_err();
        assert!(err.contains("incarnation"), "{err}");
    }

    #[test]
    fn vm_name_comes_from_role_instance() {
        assert_eq!(VmDefinition::default().vm_name(), "azprov-demo");
    }

    #[test]
    fn certificates_round_trip_and_are_validated() {
        let cert = crate::certs::SimCert::generate_rsa("kp").unwrap().key_pair();
        let vm = VmDefinition {
            certificates: vec![cert.clone(), cert.clone().public_key()],
            cert_key_transport: KeyTransport::Pkcs1v15,
            ..Default::default()
        };
        let text = vm.to_toml().unwrap();
        assert!(text.contains("cert_key_transport = \"pkcs1v15\""), "{text}");
        assert_eq!(VmDefinition::from_toml(&text).unwrap(), vm);
        assert_eq!(VmDefinition::from_toml("").unwrap().cert_key_transport, KeyTransport::Oaep);
        let bad = VmDefinition { certificates: vec![crate::certs::SimCert { key_pem: None, ..cert }], ..vm };
        assert!(bad.validate().unwrap_err().starts_with("certificates[0]: "));
    }

    const POOL: &str = r#"
        pps_type = "Running"
        hostname = "pool-0042"
        password = "pool-Passw0rd!"
        custom_data = "pool"
        user_data = "shared"
        vm_id = "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf"
        assign_after_ready_ms = 250

        [customer]
        hostname = "web-01"
        username = "alice"
        incarnation = 5
        unset = ["custom_data", "password"]
    "#;

    #[test]
    fn customer_table_overlays_the_pool_vm() {
        let vm = VmDefinition::from_toml(POOL).unwrap();
        assert!(vm.is_preprovisioned());
        assert_eq!(vm.assign_after_ready_ms, Some(250));
        let c = vm.customer_definition().unwrap();
        assert_eq!((c.hostname.as_str(), c.username.as_str(), c.incarnation), ("web-01", "alice", 5));
        // absent keys: the pool VM's values (identity included), not the built-in defaults
        assert_eq!(c.vm_id, "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf");
        assert_eq!(c.user_data.as_deref(), Some("shared"));
        assert_eq!(vm.password.as_deref(), Some("pool-Passw0rd!"));
        assert_eq!(c.ssh_keys, vm.ssh_keys);
        assert_eq!((c.password.as_deref(), c.custom_data.as_deref()), (None, None));
        assert_eq!(c.pps_type, "None");
        assert!(!c.is_preprovisioned());
        // round trip, written as the difference
        let text = vm.to_toml().unwrap();
        assert_eq!(VmDefinition::from_toml(&text).unwrap(), vm, "{text}");
        let table = text.split("[customer]").nth(1).unwrap();
        assert!(!table.contains("vm_id"), "{text}");
        assert!(table.contains("unset = [\"password\", \"custom_data\"]"), "{text}");
        assert!(!VmDefinition::default().to_toml().unwrap().contains("customer"));
    }

    #[test]
    fn customer_errors_name_the_key() {
        let bad = |extra: &str| VmDefinition::from_toml(&format!("pps_type = \"Savable\"\n[customer]\n{extra}\n"));
        assert!(bad("host = 1").unwrap_err().contains("host"));
        assert!(bad("incarnation = \"x\"").unwrap_err().contains("customer: "));
        assert!(bad("unset = [\"hostname\"]").unwrap_err().starts_with("customer.unset"));
        assert!(bad("unset = 3").unwrap_err().starts_with("customer.unset"));
        assert!(bad("pps_type = \"Running\"").unwrap_err().starts_with("customer.pps_type"));
        assert!(bad("assign_after_ready_ms = 3").unwrap_err().starts_with("customer.assign_after_ready_ms"));
        assert!(bad("vm_id = \"x\"").unwrap_err().starts_with("customer.vm_id"));
        assert!(bad("pps_type = \"None\"").is_ok());
        let e = VmDefinition::from_toml("customer = 3").unwrap_err();
        assert!(e.starts_with("customer"), "{e}");
        let e = VmDefinition::from_toml("assign_after_ready_ms = 3").unwrap_err();
        assert!(e.starts_with("assign_after_ready_ms"), "{e}");
        let nested =
            VmDefinition::default().with_customer(VmDefinition::default().with_customer(VmDefinition::default()));
        assert!(nested.validate().unwrap_err().starts_with("customer.customer"));
    }

    #[test]
    fn customer_built_in_rust_is_normalized() {
        let pool = VmDefinition { pps_type: "Savable".into(), ..Default::default() };
        let vm = pool.clone().with_customer(VmDefinition { hostname: "cust".into(), ..pool });
        vm.validate().unwrap();
        let c = vm.customer_definition().unwrap();
        assert_eq!((c.hostname.as_str(), c.pps_type.as_str()), ("cust", "None"));
        assert_eq!(VmDefinition::default().customer_definition(), None);
    }
}
