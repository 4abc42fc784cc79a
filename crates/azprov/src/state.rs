//! Persistent state (`/var/lib/azprov` by default): per-VM-id step results, the "provisioned" marker (written only
//! after Ready was accepted), the redacted OVF copy and the last run's summary for `azprov status`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::system::{Lock, System};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepOutcome {
    Done,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub outcome: StepOutcome,
    pub duration_ms: u64,
    /// What was done, why it was skipped, or the failure reason (never secrets).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunResult {
    Success,
    Error,
    InProgress,
}

/// The last run, as `azprov status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub vm_id: Option<String>,
    pub result: RunResult,
    pub reason: Option<String>,
    /// Whether the platform accepted the final report of this run.
    pub reported: bool,
    pub steps: Vec<StepRecord>,
}

/// Once-per-VM steps already done for one VM id (survives reboots until Ready is accepted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmProgress {
    pub vm_id: String,
    pub done: Vec<String>,
    /// The primary NIC's MAC as IMDS gave it (for every-boot route checks without asking IMDS again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_mac: Option<String>,
}

/// The provisioned admin user's name (one line).
const ADMIN_USER: &str = "admin-user";
/// Marker directories: Ready accepted for a VM id; host keys made for a VM id.
const PROVISIONED: &str = "provisioned";
const HOST_KEYS: &str = "host-keys";

pub struct State<'a> {
    sys: &'a dyn System,
    dir: PathBuf,
}

impl<'a> State<'a> {
    pub fn new(sys: &'a dyn System, dir: &Path) -> Self {
        State { sys, dir: dir.to_path_buf() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Create the directory (0700) and take the process lock; `WouldBlock` if another azprov holds it.
    pub fn lock(&self) -> io::Result<Box<dyn Lock>> {
        self.sys.create_dir_all(&self.dir, 0o700, None)?;
        self.sys.lock_exclusive(&self.dir.join("lock"))
    }

    /// A per-VM-id marker file: `<state>/<kind>/<vm id>`.
    fn marker_path(&self, kind: &str, vm_id: &str) -> PathBuf {
        self.dir.join(kind).join(vm_id.to_ascii_lowercase())
    }

    /// The marker of `kind` for this VM id exists (also under the byte-swapped form of the id).
    fn has_marker(&self, kind: &str, vm_id: &str) -> bool {
        self.sys.exists(&self.marker_path(kind, vm_id))
            || self
                .sys
                .read_dir(&self.dir.join(kind))
                .map(|names| names.iter().any(|n| crate::platform::identity::same_vm_id(n, vm_id)))
                .unwrap_or(false)
    }

    /// Write the marker of `kind` for this VM id (one line, 0600, fsynced).
    fn write_marker(&self, kind: &str, vm_id: &str, line: &str) -> io::Result<()> {
        self.sys.create_dir_all(&self.dir.join(kind), 0o700, None)?;
        self.sys.write_file(&self.marker_path(kind, vm_id), format!("{line}\n").as_bytes(), 0o600, None)
    }

    /// Provisioned marker for this VM id (also accepts a marker saved under the byte-swapped form).
    pub fn is_provisioned(&self, vm_id: &str) -> bool {
        self.has_marker(PROVISIONED, vm_id)
    }

    /// Written only after the platform accepted Ready.
    pub fn mark_provisioned(&self, vm_id: &str, report_timestamp: &str) -> io::Result<()> {
        self.write_marker(PROVISIONED, vm_id, report_timestamp)
    }

    /// The host-key phase's own lock: it runs beside the network phase (which holds the main lock).
    pub fn lock_host_keys(&self) -> io::Result<Box<dyn Lock>> {
        self.sys.create_dir_all(&self.dir, 0o700, None)?;
        self.sys.lock_exclusive(&self.dir.join("host-keys.lock"))
    }

    /// Host keys were regenerated for this VM id (also under the byte-swapped form, or recorded as a progress step
    /// by an earlier version).
    pub fn host_keys_done(&self, vm_id: &str) -> bool {
        self.has_marker(HOST_KEYS, vm_id) || self.progress(vm_id).done.iter().any(|d| d == "host_keys")
    }

    /// Written once the host keys of this VM id exist (one JSON line: when and what).
    pub fn mark_host_keys(&self, vm_id: &str, record: &str) -> io::Result<()> {
        self.write_marker(HOST_KEYS, vm_id, record)
    }

    fn pool_marker(&self) -> PathBuf {
        self.dir.join("pps-ready")
    }

    /// A pre-provisioned VM reported its intermediate Ready for this VM id (and waits for its customer).
    pub fn pool_reported(&self, vm_id: &str) -> bool {
        self.sys
            .read_to_string(&self.pool_marker())
            .map(|t| crate::platform::identity::same_vm_id(t.trim(), vm_id))
            .unwrap_or(false)
    }

    /// Written only after the intermediate Ready was accepted (cloud-init PR #590).
    pub fn mark_pool_reported(&self, vm_id: &str) -> io::Result<()> {
        self.sys.create_dir_all(&self.dir, 0o700, None)?;
        self.sys.write_file(&self.pool_marker(), format!("{vm_id}\n").as_bytes(), 0o600, None)
    }

    /// The customer's provisioning is done: the pool marker goes.
    pub fn clear_pool_reported(&self) -> io::Result<()> {
        match self.sys.remove_file(&self.pool_marker()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn progress_path(&self) -> PathBuf {
        self.dir.join("progress.json")
    }

    /// Steps done for `vm_id`; progress saved for another VM id is ignored.
    pub fn progress(&self, vm_id: &str) -> VmProgress {
        let saved: Option<VmProgress> =
            self.sys.read(&self.progress_path()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        match saved {
            Some(p) if crate::platform::identity::same_vm_id(&p.vm_id, vm_id) => p,
            _ => VmProgress { vm_id: vm_id.to_string(), ..Default::default() },
        }
    }

    /// Atomic (rename) but not fsynced: it only saves a re-run work (every step is safe to repeat), and a copy lost
    /// to a power cut reads as "nothing done yet". The marker, written after Ready, is what must survive.
    pub fn save_progress(&self, p: &VmProgress) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(p).map_err(io::Error::other)?;
        self.sys.write_file_unsynced(&self.progress_path(), &json, 0o600, None)
    }

    /// Rewritten on every run, read only by `azprov status`: not fsynced (the marker and progress are).
    pub fn save_summary(&self, s: &RunSummary) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(s).map_err(io::Error::other)?;
        self.sys.write_file_unsynced(&self.dir.join("last-run.json"), &json, 0o600, None)
    }

    pub fn summary(&self) -> io::Result<RunSummary> {
        let b = self.sys.read(&self.dir.join("last-run.json"))?;
        serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Record the provisioned admin user's name (for `azprov deprovision --user`).
    /// Not fsynced (read only by a later `deprovision`; written again by a re-run).
    pub fn save_admin_user(&self, name: &str) -> io::Result<()> {
        self.sys.write_file_unsynced(&self.dir.join(ADMIN_USER), format!("{name}\n").as_bytes(), 0o600, None)
    }

    /// The recorded admin user's name, if any.
    pub fn admin_user(&self) -> Option<String> {
        let t = self.sys.read_to_string(&self.dir.join(ADMIN_USER)).ok()?;
        Some(t.trim().to_string()).filter(|u| !u.is_empty())
    }

    /// The root-only copy of the OVF with the password redacted (diagnostics, rewritten on every run: not fsynced).
    pub fn save_redacted_ovf(&self, redacted: &[u8]) -> io::Result<()> {
        self.sys.write_file_unsynced(&self.dir.join("ovf-env.xml"), redacted, 0o600, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::RealSystem;

    #[test]
    fn marker_progress_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RealSystem::new(dir.path());
        let st = State::new(&sys, Path::new("/var/lib/azprov"));
        let _lock = st.lock().unwrap();
        let id = "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf";
        assert!(!st.is_provisioned(id));
        st.mark_provisioned(id, "t").unwrap();
        assert!(st.is_provisioned(id));
        assert!(st.is_provisioned("527c2691-029f-fe4c-b1f4-a4da7ebac2cf"), "swapped form accepted");
        assert!(!st.is_provisioned("00000000-9f02-4cfe-b1f4-a4da7ebac2cf"));
        assert_eq!(sys.stat(Path::new("/var/lib/azprov")).unwrap().mode, 0o700);
        assert_eq!(sys.stat(&st.marker_path(PROVISIONED, id)).unwrap().mode, 0o600);

        let mut p = st.progress(id);
        p.done.push("user".into());
        st.save_progress(&p).unwrap();
        assert_eq!(st.progress(id).done, vec!["user"]);
        assert!(st.progress("11111111-2222-3333-4444-555555555555").done.is_empty());

        let s = RunSummary {
            vm_id: Some(id.into()),
            result: RunResult::InProgress,
            reason: None,
            reported: false,
            steps: vec![],
        };
        st.save_summary(&s).unwrap();
        assert_eq!(st.summary().unwrap(), s);
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"in-progress\""));
    }

    #[test]
    fn host_keys_marker() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RealSystem::new(dir.path());
        let st = State::new(&sys, Path::new("/var/lib/azprov"));
        let id = "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf";
        assert!(!st.host_keys_done(id));
        st.mark_host_keys(id, "{}").unwrap();
        assert!(st.host_keys_done(id));
        assert!(st.host_keys_done("527c2691-029f-fe4c-b1f4-a4da7ebac2cf"), "swapped form accepted");
        assert!(!st.host_keys_done("00000000-9f02-4cfe-b1f4-a4da7ebac2cf"));
        // an earlier version recorded it as a progress step
        let other = "11111111-2222-3333-4444-555555555555";
        st.save_progress(&VmProgress { vm_id: other.into(), done: vec!["host_keys".into()], primary_mac: None })
            .unwrap();
        assert!(st.host_keys_done(other));
        // its own lock, independent of the main one
        let _main = st.lock().unwrap();
        let _hk = st.lock_host_keys().unwrap();
        assert!(st.lock_host_keys().is_err());
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RealSystem::new(dir.path());
        let st = State::new(&sys, Path::new("/state"));
        let _a = st.lock().unwrap();
        let b = st.lock();
        assert!(b.is_err());
    }
}
