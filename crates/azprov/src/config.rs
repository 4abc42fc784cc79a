//! Configuration: TOML from `/etc/azprov/azprov.toml`, then `/etc/azprov/azprov.toml.d/*.toml` in lexical order,
//! then `--config FILE`; environment overrides for the endpoints. Unknown keys and bad values are errors that name
//! the file and the key.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::platform::wireserver::HealthProtocol;
use crate::system::System;

pub const MAIN_FILE: &str = "/etc/azprov/azprov.toml";
pub const DROP_IN_DIR: &str = "/etc/azprov/azprov.toml.d";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub platform: PlatformConfig,
    pub media: MediaConfig,
    pub state: StateConfig,
    pub kvp: KvpConfig,
    pub duties: Duties,
    pub deprovision: DeprovisionConfig,
    pub pps: PpsConfig,
    pub coexistence: CoexistenceConfig,
}

/// Pre-provisioned (pool) VMs (platform.md §10): how long each wait may last. 0 = no bound (the platform decides
/// when a pooled VM is assigned: minutes or days).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpsConfig {
    /// Wait for the assignment signal (Running: the NIC's link down and up; Savable: NIC detached and a new one
    /// attached).
    pub assignment_wait_secs: u64,
    /// Poll `/metadata/reprovisiondata` for the customer's OVF.
    pub reprovision_wait_secs: u64,
    /// DHCP on a hot-attached NIC (Savable).
    pub dhcp_wait_secs: u64,
    /// PreprovisionedOSDisk: after the pool's Ready the host shuts the VM down; if it has not after this long, the
    /// wait ends with `error waiting for host shutdown`.
    pub os_disk_wait_secs: u64,
}

impl Default for PpsConfig {
    fn default() -> Self {
        PpsConfig { assignment_wait_secs: 0, reprovision_wait_secs: 0, dhcp_wait_secs: 1200, os_disk_wait_secs: 0 }
    }
}

/// `azprov deprovision` settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeprovisionConfig {
    /// Lock root's password (`root:*LOCK*`) when generalizing (also `--lock-root-password`).
    pub lock_root_password: bool,
}

/// What to do when cloud-init's Azure datasource would also provision this VM (platform.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudInitPolicy {
    /// Change nothing, report nothing, exit 2 and say why (default).
    Refuse,
    /// Provision anyway (a warning is logged): for images where cloud-init is known not to report.
    Ignore,
}

/// Living with the other agents an image may carry (platform.md §12, §4.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoexistenceConfig {
    /// cloud-init with an active Azure datasource: `refuse` or `ignore`.
    pub cloud_init: CloudInitPolicy,
    /// When `/etc/waagent.conf` exists, set `Provisioning.Agent=disabled` and hand the resource disk, swap, host
    /// name monitoring and host key regeneration to azprov.
    pub waagent_conf: bool,
    /// `ProvisionGuestProxyAgent=true`: wait this long for `azure-proxy-agent --status --wait` (seconds).
    pub proxy_agent_wait_secs: u64,
}

impl Default for CoexistenceConfig {
    fn default() -> Self {
        CoexistenceConfig { cloud_init: CloudInitPolicy::Refuse, waagent_conf: true, proxy_agent_wait_secs: 120 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlatformConfig {
    /// IMDS base URL (env `AZPROV_IMDS_URL` overrides).
    pub imds_url: String,
    /// Wireserver base URL, or `auto`: an existing host route, else DHCP option 245 from the active client's
    /// lease, else 168.63.129.16 (env `AZPROV_WIRESERVER_URL` overrides).
    pub wireserver_url: String,
    /// `xml` (goal state + `comp=health`) or `json` (`/provisioning/health`).
    pub health_protocol: HealthProtocol,
    /// Overall IMDS deadline in seconds.
    pub imds_deadline_secs: u64,
    /// Wireserver reporting deadline in seconds from the start of provisioning.
    pub wireserver_deadline_secs: u64,
    pub connect_timeout_secs: u64,
    pub imds_read_timeout_secs: u64,
    pub wireserver_read_timeout_secs: u64,
    /// Refuse to run when the machine does not look like an Azure VM.
    pub require_azure: bool,
    /// How long to probe IMDS when the chassis asset tag is missing, in milliseconds.
    pub detect_timeout_ms: u64,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            imds_url: "http://169.254.169.254".into(),
            wireserver_url: "auto".into(),
            health_protocol: HealthProtocol::Xml,
            imds_deadline_secs: 300,
            wireserver_deadline_secs: 1200,
            connect_timeout_secs: 5,
            imds_read_timeout_secs: 30,
            wireserver_read_timeout_secs: 60,
            require_azure: true,
            detect_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Wait this long for media in a CD-ROM drive that exists but has no disc yet (never waits without a drive).
    pub wait_secs: u64,
    /// Eject the DVD after Ready was accepted (it holds the plaintext password).
    pub eject: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig { wait_secs: 10, eject: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Persistent state: per-VM step results, provisioned markers, redacted OVF copy.
    pub dir: PathBuf,
    /// Per-boot state (the unredacted OVF between phases, removed after Ready).
    pub run_dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: "/var/lib/azprov".into(), run_dir: "/run/azprov".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvpConfig {
    pub enabled: bool,
    /// Guest→host pool file.
    pub pool_path: PathBuf,
}

impl Default for KvpConfig {
    fn default() -> Self {
        KvpConfig { enabled: true, pool_path: "/var/lib/hyperv/.kvp_pool_1".into() }
    }
}

/// One switch per duty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Duties {
    pub hostname: HostnameDuty,
    pub user: UserDuty,
    pub password: Switch,
    pub ssh_keys: Switch,
    pub sshd: SshdDuty,
    pub sudo: SudoDuty,
    pub host_keys: HostKeysDuty,
    pub resource_disk: ResourceDiskDuty,
    pub scsi_timeouts: ScsiTimeoutsDuty,
    pub routes: RoutesDuty,
    pub nic_names: Switch,
    pub custom_data: CustomDataDuty,
    pub entropy: Switch,
    pub numa: Switch,
    pub serial_console: SerialConsoleDuty,
}

impl Default for Duties {
    fn default() -> Self {
        Duties {
            hostname: HostnameDuty::default(),
            resource_disk: ResourceDiskDuty::default(),
            scsi_timeouts: ScsiTimeoutsDuty::default(),
            user: UserDuty::default(),
            password: Switch { enabled: true },
            ssh_keys: Switch { enabled: true },
            sshd: SshdDuty::default(),
            sudo: SudoDuty::default(),
            host_keys: HostKeysDuty::default(),
            routes: RoutesDuty::default(),
            nic_names: Switch { enabled: true },
            custom_data: CustomDataDuty::default(),
            entropy: Switch { enabled: true },
            numa: Switch { enabled: true },
            serial_console: SerialConsoleDuty::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Switch {
    pub enabled: bool,
}

impl Default for Switch {
    fn default() -> Self {
        Switch { enabled: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostnameDuty {
    pub enabled: bool,
    /// Add `127.0.1.1 <name>` to /etc/hosts unless nsswitch resolves it with `myhostname`.
    pub manage_etc_hosts: bool,
    /// On every later boot (after-ready phase), ask IMDS for the computerName and apply (and publish) it when the platform's name is not
    /// the one applied for this VM id before. Off: the host name is set only for a new VM id.
    pub follow_platform_renames: bool,
}

impl Default for HostnameDuty {
    fn default() -> Self {
        HostnameDuty { enabled: true, manage_etc_hosts: true, follow_platform_renames: false }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserDuty {
    pub enabled: bool,
    /// Supplementary groups for a new admin user; groups the image lacks are skipped.
    pub groups: Vec<String>,
    /// A group named like the new user already exists (e.g. `video`): join it (`useradd -g`) or fail.
    pub on_group_clash: GroupClash,
    /// Allow adopting an existing account whose uid is below `UID_MIN` (`/etc/login.defs`).
    pub allow_system_user: bool,
}

impl Default for UserDuty {
    fn default() -> Self {
        UserDuty { enabled: true, groups: Vec::new(), on_group_clash: GroupClash::Join, allow_system_user: false }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupClash {
    Join,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshdDuty {
    pub enabled: bool,
    /// Our drop-in; must sort before other drop-ins (sshd keeps the first value it reads).
    pub drop_in: PathBuf,
}

impl Default for SshdDuty {
    fn default() -> Self {
        SshdDuty { enabled: true, drop_in: "/etc/ssh/sshd_config.d/01-azprov.conf".into() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SudoDuty {
    pub enabled: bool,
    /// sudoers drop-in (no `.` or `~` in the name, or sudo skips it).
    pub file: PathBuf,
}

impl Default for SudoDuty {
    fn default() -> Self {
        SudoDuty { enabled: true, file: "/etc/sudoers.d/90-azprov".into() }
    }
}

/// Which SSH host key fingerprint goes to the wireserver's role properties (platform.md §5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FingerprintReport {
    /// `SHA256<base64>`: the `ssh-keygen -lf` fingerprint without its colon (default).
    Sha256,
    /// 32 hex digits: the legacy MD5 fingerprint without colons.
    Md5,
    /// Send nothing.
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostKeysDuty {
    /// Regenerate the SSH host keys on the first boot of a new VM id.
    pub enabled: bool,
    /// The host key thumbprint posted to the wireserver after Ready (`sha256`, `md5` or `off`).
    pub report_fingerprint: FingerprintReport,
    /// With the phase units: the local phase leaves key generation to `azprov provision --phase host-keys`
    /// (azprov-host-keys.service, ordered only before sshd) instead of waiting for it, so Ready is not delayed.
    pub own_unit: bool,
}

impl Default for HostKeysDuty {
    fn default() -> Self {
        HostKeysDuty { enabled: true, report_fingerprint: FingerprintReport::Sha256, own_unit: true }
    }
}

/// Host routes to the wireserver and IMDS through the primary NIC (platform.md §9.11).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesDuty {
    /// Add `<wireserver>/32` and `169.254.169.254/32` via the primary NIC's gateway when no route covers them.
    pub enabled: bool,
    /// Also add a default route via that gateway when the main table has none.
    pub add_default_route: bool,
    /// How long the duty waits for the primary NIC's lease (an address, then briefly its routes) before it looks at
    /// the routing table: on a later boot the network phase can start before the DHCP client has a lease. 0 = no
    /// wait.
    pub wait_secs: u64,
}

impl Default for RoutesDuty {
    fn default() -> Self {
        RoutesDuty { enabled: true, add_default_route: true, wait_secs: 30 }
    }
}

/// What to do with IMDS `userData` (platform.md §9.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserDataPolicy {
    /// Leave it in IMDS (default).
    Ignore,
    /// Save the decoded bytes root-only in the state directory.
    Save,
    /// Save, then run it after Ready like customData (only with a `#!` line).
    Execute,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CustomDataDuty {
    /// Save the OVF's decoded customData root-only at `<state dir>/custom_data`.
    pub enabled: bool,
    /// Also keep the raw base64 at WALinuxAgent's `/var/lib/waagent/CustomData` for tools that read it there.
    pub waagent_copy: bool,
    /// Fail provisioning (`failure to read customData while hasCustomData=true`) when IMDS says there is
    /// customData but none could be read; otherwise it is only reported.
    pub fail_on_missing: bool,
    /// Run customData after Ready when it starts with `#!` (never `#cloud-config`).
    pub execute: bool,
    pub user_data: UserDataPolicy,
    /// How long an executed script may run, in seconds.
    pub timeout_secs: u64,
}

impl Default for CustomDataDuty {
    fn default() -> Self {
        CustomDataDuty {
            enabled: true,
            waagent_copy: false,
            fail_on_missing: false,
            execute: false,
            user_data: UserDataPolicy::Ignore,
            timeout_secs: 600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialConsoleDuty {
    /// Check that the kernel command line and the boot loader send the console to ttyS0 (boot diagnostics).
    pub enabled: bool,
    /// Edit `GRUB_CMDLINE_LINUX` to add `console=ttyS0,115200n8 earlyprintk=ttyS0` and regenerate grub.cfg.
    pub fix_bootloader: bool,
    /// Mirror key progress lines and the final report to `/dev/console`.
    pub mirror: bool,
}

impl Default for SerialConsoleDuty {
    fn default() -> Self {
        SerialConsoleDuty { enabled: true, fix_bootloader: false, mirror: true }
    }
}

/// File system for a freshly formatted resource disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFilesystem {
    Ext4,
    Xfs,
}

impl DiskFilesystem {
    pub fn name(self) -> &'static str {
        match self {
            DiskFilesystem::Ext4 => "ext4",
            DiskFilesystem::Xfs => "xfs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceDiskDuty {
    /// Find, format (only when fresh from the platform), mount the temporary disk on every boot.
    pub enabled: bool,
    /// Where to mount it, or `auto`: `ResourceDisk.MountPoint` from the image's `/etc/waagent.conf`, else `/mnt`.
    pub mount_point: String,
    /// File system for a fresh disk (`ext4` or `xfs`); an existing Linux file system is mounted as it is.
    pub filesystem: DiskFilesystem,
    /// Never format: mount an existing Linux file system, leave anything else alone.
    pub never_format: bool,
    /// Swap file on the mounted disk in MiB (0 = none).
    pub swap_size_mb: u64,
    /// Several local NVMe temporary disks: stripe them (mdadm RAID0) instead of using the first one.
    pub nvme_raid0: bool,
    /// Persist the mount with an fstab line (`nofail`, short device timeout) so a boot without the agent mounts it.
    pub persist: bool,
}

impl Default for ResourceDiskDuty {
    fn default() -> Self {
        ResourceDiskDuty {
            enabled: true,
            mount_point: "auto".into(),
            filesystem: DiskFilesystem::Ext4,
            never_format: false,
            swap_size_mb: 0,
            nvme_raid0: false,
            persist: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScsiTimeoutsDuty {
    pub enabled: bool,
    /// SCSI command timeout of Azure (Msft Virtual Disk) disks, in seconds.
    pub scsi_timeout_secs: u32,
    /// I/O timeout of Azure remote NVMe disks, in milliseconds (only ever raised).
    pub nvme_io_timeout_ms: u32,
}

impl Default for ScsiTimeoutsDuty {
    fn default() -> Self {
        ScsiTimeoutsDuty { enabled: true, scsi_timeout_secs: 300, nvme_io_timeout_ms: 240_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    #[error("{file}: {err}")]
    Io { file: String, err: std::io::Error },
}

/// One configuration source: its name (for errors) and text.
pub struct Source {
    pub name: String,
    pub text: String,
}

/// Validate one file on its own, so an error names the file it is in.
fn parse_table(src: &Source) -> Result<toml::Table, ConfigError> {
    let invalid = |e: toml::de::Error| ConfigError::Invalid { file: src.name.clone(), msg: describe(&src.text, &e) };
    let table: toml::Table = toml::from_str(&src.text).map_err(invalid)?;
    toml::from_str::<Config>(&src.text).map_err(invalid)?;
    Ok(table)
}

/// A one-line error: the message plus the offending line (which names the key) when toml gives a span.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    let Some(start) = e.span().map(|s| s.start).filter(|&s| s <= text.len() && text.is_char_boundary(s)) else {
        return msg;
    };
    let line_no = text[..start].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    // the table the line belongs to, so `enabled` is reported as `duties.sshd.enabled`
    let table = text[..start].lines().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[').and_then(|r| r.strip_suffix(']')).map(|t| t.trim_matches(['[', ']']).to_string())
    });
    match table {
        Some(t) => format!("line {line_no} in [{t}]: `{line}`: {msg}"),
        None => format!("line {line_no}: `{line}`: {msg}"),
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Merge sources in order (later wins, key by key) and apply the environment overrides.
pub fn from_sources(sources: &[Source], env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let mut merged = toml::Table::new();
    for s in sources {
        merge(&mut merged, parse_table(s)?);
    }
    let mut cfg: Config = toml::Value::Table(merged).try_into().map_err(|e: toml::de::Error| ConfigError::Invalid {
        file: "merged configuration".into(),
        msg: e.to_string(),
    })?;
    if let Some(u) = env("AZPROV_IMDS_URL").filter(|s| !s.is_empty()) {
        cfg.platform.imds_url = u;
    }
    if let Some(u) = env("AZPROV_WIRESERVER_URL").filter(|s| !s.is_empty()) {
        cfg.platform.wireserver_url = u;
    }
    for (key, url) in
        [("platform.imds_url", &cfg.platform.imds_url), ("platform.wireserver_url", &cfg.platform.wireserver_url)]
    {
        let auto = key == "platform.wireserver_url" && url == "auto";
        if !(url.starts_with("http://") || auto) {
            return Err(ConfigError::Invalid {
                file: "effective configuration".into(),
                msg: format!("{key}: `{url}` is not an http:// URL"),
            });
        }
    }
    Ok(cfg)
}

/// Read the configuration files of the target (under its root) plus an optional host `--config` file.
pub fn load(sys: &dyn System, extra: Option<&Path>) -> Result<Config, ConfigError> {
    let mut sources = Vec::new();
    let main = Path::new(MAIN_FILE);
    if sys.exists(main) {
        let text = sys
            .read_to_string(main)
            .map_err(|err| ConfigError::Io { file: sys.host_path(main).display().to_string(), err })?;
        sources.push(Source { name: sys.host_path(main).display().to_string(), text });
    }
    if let Ok(names) = sys.read_dir(Path::new(DROP_IN_DIR)) {
        for n in names.into_iter().filter(|n| n.ends_with(".toml")) {
            let p = Path::new(DROP_IN_DIR).join(&n);
            let text = sys
                .read_to_string(&p)
                .map_err(|err| ConfigError::Io { file: sys.host_path(&p).display().to_string(), err })?;
            sources.push(Source { name: sys.host_path(&p).display().to_string(), text });
        }
    }
    if let Some(p) = extra {
        let text = std::fs::read_to_string(p).map_err(|err| ConfigError::Io { file: p.display().to_string(), err })?;
        sources.push(Source { name: p.display().to_string(), text });
    }
    from_sources(&sources, &|k| std::env::var(k).ok())
}

impl Config {
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(name: &str, text: &str) -> Source {
        Source { name: name.into(), text: text.into() }
    }
    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_without_files() {
        let c = from_sources(&[], &no_env).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.platform.imds_deadline_secs, 300);
        assert!(c.duties.sshd.enabled);
    }

    #[test]
    fn later_files_win_key_by_key() {
        let c = from_sources(
            &[
                src("a.toml", "[platform]\nimds_deadline_secs = 10\nconnect_timeout_secs = 3\n"),
                src("b.toml", "[platform]\nimds_deadline_secs = 20\n[duties.sudo]\nenabled = false\n"),
            ],
            &no_env,
        )
        .unwrap();
        assert_eq!(c.platform.imds_deadline_secs, 20);
        assert_eq!(c.platform.connect_timeout_secs, 3);
        assert!(!c.duties.sudo.enabled);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let e = from_sources(&[src("/etc/azprov/azprov.toml.d/10-x.toml", "[duties.sshd]\nenabeld = true\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("10-x.toml"), "{e}");
        assert!(e.contains("enabeld"), "{e}");
    }

    #[test]
    fn bad_value_names_file_and_key() {
        let e = from_sources(&[src("x.toml", "[platform]\nhealth_protocol = \"soap\"\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.toml") && e.contains("health_protocol"), "{e}");
        let e = from_sources(&[src("y.toml", "[kvp]\nenabled = \"yes\"\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("y.toml") && e.contains("enabled"), "{e}");
    }

    #[test]
    fn user_section() {
        let c =
            from_sources(&[src("a", "[duties.user]\non_group_clash = \"fail\"\nallow_system_user = true\n")], &no_env)
                .unwrap();
        assert_eq!(c.duties.user.on_group_clash, GroupClash::Fail);
        assert!(c.duties.user.allow_system_user);
        let d = Config::default();
        assert_eq!((d.duties.user.on_group_clash, d.duties.user.allow_system_user), (GroupClash::Join, false));
        assert!(from_sources(&[src("a", "[duties.user]\non_group_clash = \"rename\"\n")], &no_env).is_err());
    }

    #[test]
    fn host_keys_section() {
        let c = from_sources(&[], &no_env).unwrap();
        assert!(c.duties.host_keys.enabled);
        assert_eq!(c.duties.host_keys.report_fingerprint, FingerprintReport::Sha256);
        for (text, want) in
            [("md5", FingerprintReport::Md5), ("off", FingerprintReport::Off), ("sha256", FingerprintReport::Sha256)]
        {
            let t = format!("[duties.host_keys]\nreport_fingerprint = \"{text}\"\n");
            let c = from_sources(&[src("a.toml", &t)], &no_env).unwrap();
            assert_eq!(c.duties.host_keys.report_fingerprint, want);
            assert!(c.duties.host_keys.enabled);
        }
        let c = from_sources(&[src("a.toml", "[duties.host_keys]\nenabled = false\n")], &no_env).unwrap();
        assert!(!c.duties.host_keys.enabled);
        assert_eq!(c.duties.host_keys.report_fingerprint, FingerprintReport::Sha256);
        let e = from_sources(&[src("b.toml", "[duties.host_keys]\nreport_fingerprint = \"SHA1\"\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("report_fingerprint"), "{e}");
        let e =
            from_sources(&[src("c.toml", "[duties.host_keys]\nregenerate = true\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("regenerate"), "{e}");
    }

    #[test]
    fn network_duty_sections() {
        let c = from_sources(&[], &no_env).unwrap();
        assert!(c.duties.routes.enabled && c.duties.routes.add_default_route && c.duties.nic_names.enabled);
        let c = from_sources(
            &[src("a.toml", "[duties.routes]\nadd_default_route = false\n[duties.nic_names]\nenabled = false\n")],
            &no_env,
        )
        .unwrap();
        assert!(c.duties.routes.enabled && !c.duties.routes.add_default_route && !c.duties.nic_names.enabled);
        let e = from_sources(&[src("n.toml", "[duties.nic_names]\nrename = true\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("n.toml") && e.contains("rename"), "{e}");
    }

    #[test]
    fn custom_data_section() {
        let c = from_sources(&[], &no_env).unwrap().duties.custom_data;
        assert_eq!(c, CustomDataDuty::default());
        assert!(c.enabled && !c.waagent_copy && !c.fail_on_missing && !c.execute);
        assert_eq!((c.user_data, c.timeout_secs), (UserDataPolicy::Ignore, 600));
        let t = "[duties.custom_data]\nexecute = true\nwaagent_copy = true\nfail_on_missing = true\nuser_data = \"execute\"\ntimeout_secs = 5\n";
        let c = from_sources(&[src("a.toml", t)], &no_env).unwrap().duties.custom_data;
        assert!(c.enabled && c.execute && c.waagent_copy && c.fail_on_missing);
        assert_eq!((c.user_data, c.timeout_secs), (UserDataPolicy::Execute, 5));
        for (text, want) in [("ignore", UserDataPolicy::Ignore), ("save", UserDataPolicy::Save)] {
            let t = format!("[duties.custom_data]\nuser_data = \"{text}\"\n");
            assert_eq!(from_sources(&[src("a.toml", &t)], &no_env).unwrap().duties.custom_data.user_data, want);
        }
        let e = from_sources(&[src("b.toml", "[duties.custom_data]\nuser_data = \"run\"\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("user_data"), "{e}");
        let e = from_sources(&[src("c.toml", "[duties.custom_data]\nexecute_custom_data = true\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml") && e.contains("execute_custom_data"), "{e}");
    }

    #[test]
    fn kernel_duty_sections() {
        let d = from_sources(&[], &no_env).unwrap().duties;
        assert!(d.entropy.enabled && d.numa.enabled);
        assert_eq!(d.serial_console, SerialConsoleDuty { enabled: true, fix_bootloader: false, mirror: true });
        let t = "[duties.entropy]\nenabled = false\n[duties.numa]\nenabled = false\n[duties.serial_console]\nfix_bootloader = true\nmirror = false\n";
        let d = from_sources(&[src("a.toml", t)], &no_env).unwrap().duties;
        assert!(!d.entropy.enabled && !d.numa.enabled);
        assert_eq!(d.serial_console, SerialConsoleDuty { enabled: true, fix_bootloader: true, mirror: false });
        let e =
            from_sources(&[src("d.toml", "[duties.serial_console]\nfix = true\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("d.toml") && e.contains("fix"), "{e}");
        let e = from_sources(&[src("e.toml", "[duties.numa]\noff = true\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("e.toml") && e.contains("off"), "{e}");
    }

    #[test]
    fn resource_disk_section() {
        let c = from_sources(&[], &no_env).unwrap();
        let d = &c.duties.resource_disk;
        assert!(d.enabled && d.persist && !d.never_format && !d.nvme_raid0);
        assert_eq!((d.mount_point.as_str(), d.filesystem, d.swap_size_mb), ("auto", DiskFilesystem::Ext4, 0));
        assert_eq!(c.duties.scsi_timeouts.scsi_timeout_secs, 300);
        let t = "[duties.resource_disk]\nmount_point = \"/mnt/resource\"\nfilesystem = \"xfs\"\nswap_size_mb = 2048\n\
                 never_format = true\n[duties.scsi_timeouts]\nscsi_timeout_secs = 180\n";
        let c = from_sources(&[src("a.toml", t)], &no_env).unwrap();
        let d = &c.duties.resource_disk;
        assert_eq!(
            (d.mount_point.as_str(), d.filesystem, d.swap_size_mb),
            ("/mnt/resource", DiskFilesystem::Xfs, 2048)
        );
        assert!(d.never_format);
        assert_eq!(c.duties.scsi_timeouts.scsi_timeout_secs, 180);
        let e = from_sources(&[src("b.toml", "[duties.resource_disk]\nfilesystem = \"ntfs\"\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b.toml") && e.contains("filesystem"), "{e}");
    }

    #[test]
    fn coexistence_section() {
        let c = from_sources(&[], &no_env).unwrap().coexistence;
        assert_eq!(
            c,
            CoexistenceConfig { cloud_init: CloudInitPolicy::Refuse, waagent_conf: true, proxy_agent_wait_secs: 120 }
        );
        let t = "[coexistence]\ncloud_init = \"ignore\"\nwaagent_conf = false\nproxy_agent_wait_secs = 30\n";
        let c = from_sources(&[src("a.toml", t)], &no_env).unwrap().coexistence;
        assert_eq!(
            c,
            CoexistenceConfig { cloud_init: CloudInitPolicy::Ignore, waagent_conf: false, proxy_agent_wait_secs: 30 }
        );
        let c = from_sources(&[src("a.toml", "[coexistence]\ncloud_init = \"refuse\"\n")], &no_env).unwrap();
        assert_eq!(c.coexistence.cloud_init, CloudInitPolicy::Refuse);
        let e =
            from_sources(&[src("b.toml", "[coexistence]\ncloud_init = \"force\"\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("b.toml") && e.contains("cloud_init"), "{e}");
        let e = from_sources(&[src("c.toml", "[coexistence]\nwaagent = true\n")], &no_env).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("waagent"), "{e}");
        let e = from_sources(&[src("d.toml", "[coexistence]\nproxy_agent_wait_secs = -1\n")], &no_env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.toml") && e.contains("proxy_agent_wait_secs"), "{e}");
    }

    #[test]
    fn environment_overrides_endpoints() {
        let env = |k: &str| match k {
            "AZPROV_IMDS_URL" => Some("http://127.0.0.1:8080".to_string()),
            _ => None,
        };
        let c = from_sources(&[src("a.toml", "[platform]\nimds_url = \"http://127.0.0.2\"\n")], &env).unwrap();
        assert_eq!(c.platform.imds_url, "http://127.0.0.1:8080");
        assert_eq!(c.platform.wireserver_url, "auto");
    }

    #[test]
    fn printed_config_round_trips() {
        let c = Config::default();
        let back = from_sources(&[src("printed", &c.to_toml())], &no_env).unwrap();
        assert_eq!(back, c);
    }
}
