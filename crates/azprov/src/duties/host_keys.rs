//! SSH host keys (platform.md §9.6): regenerated on the first boot of a new VM id (the caller decides when), and
//! their fingerprints computed in process for the serial console, KVP and the role-properties thumbprint (§5.7).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use md5::Md5;
use sha2::{Digest, Sha256};

use super::{excerpt, Outcome};
use crate::config::FingerprintReport;
use crate::report::Failure;
use crate::system::{Command, System};

/// Where the host keys live on the target.
pub const SSH_DIR: &str = "/etc/ssh";
/// The types generated one by one when `ssh-keygen -A` fails (old OpenSSH).
pub const FALLBACK_TYPES: [&str; 3] = ["rsa", "ecdsa", "ed25519"];
/// The group RHEL gives private host keys (mode 0640) when it exists.
pub const SSH_KEYS_GROUP: &str = "ssh_keys";
const KEYGEN: &str = "ssh-keygen";
/// RSA generation on a fresh VM with little entropy can be slow.
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(120);
/// Preference when one key stands for the VM (role properties): WALinuxAgent's default type first.
const THUMBPRINT_PREFERENCE: [&str; 4] = ["ssh-rsa", "ecdsa-sha2-nistp256", "ssh-ed25519", "ecdsa-sha2-nistp384"];

/// One host key's fingerprints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostKeyFingerprint {
    /// The algorithm embedded in the key blob, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// Key size as `ssh-keygen -l` prints it (0 when unknown).
    pub bits: u32,
    /// `SHA256:` + unpadded base64 of SHA-256 over the decoded blob (what `ssh-keygen -lf` prints).
    pub sha256: String,
    /// `MD5:` + colon-separated lower-case hex of MD5 over the blob (`ssh-keygen -l -E md5`).
    pub md5: String,
}

impl HostKeyFingerprint {
    /// Compute from the decoded key blob; `None` when the blob does not start with an SSH string.
    pub fn from_blob(blob: &[u8]) -> Option<HostKeyFingerprint> {
        let mut r = Reader(blob);
        let key_type = std::str::from_utf8(r.string()?).ok()?.to_string();
        let bits = key_bits(&key_type, &mut r);
        let sha256 =
            format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(blob)));
        let md5 = Md5::digest(blob).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        Some(HostKeyFingerprint { key_type, bits, sha256, md5: format!("MD5:{md5}") })
    }

    /// The name `ssh-keygen -l` shows in parentheses: `RSA`, `ECDSA`, `ED25519`, …
    pub fn type_label(&self) -> String {
        match self.key_type.as_str() {
            "ssh-rsa" => "RSA".into(),
            "ssh-dss" => "DSA".into(),
            "ssh-ed25519" => "ED25519".into(),
            "sk-ssh-ed25519@openssh.com" => "ED25519-SK".into(),
            "sk-ecdsa-sha2-nistp256@openssh.com" => "ECDSA-SK".into(),
            t if t.starts_with("ecdsa-sha2-") => "ECDSA".into(),
            t => t.to_ascii_uppercase(),
        }
    }

    /// The role-properties `CertificateThumbprint` value (platform.md §5.7): `SHA256<base64>` (the fingerprint
    /// token without its colon) or 32 hex digits; `None` for `off`.
    pub fn thumbprint(&self, format: FingerprintReport) -> Option<String> {
        match format {
            FingerprintReport::Sha256 => Some(self.sha256.replacen(':', "", 1)),
            FingerprintReport::Md5 => Some(self.md5.trim_start_matches("MD5:").replace(':', "")),
            FingerprintReport::Off => None,
        }
    }
}

/// Reads SSH wire-format strings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.0.get(..4)?.try_into().ok()?) as usize;
        let end = 4usize.checked_add(len)?;
        let s = self.0.get(4..end)?;
        self.0 = &self.0[end..];
        Some(s)
    }
}

/// Bit length of an SSH mpint (big-endian, possibly with a leading zero byte).
fn mpint_bits(m: &[u8]) -> u32 {
    let m = match m.iter().position(|b| *b != 0) {
        Some(i) => &m[i..],
        None => return 0,
    };
    (m.len() as u32 - 1) * 8 + (8 - m[0].leading_zeros())
}

fn key_bits(key_type: &str, r: &mut Reader) -> u32 {
    match key_type {
        "ssh-rsa" => {
            let _e = r.string();
            r.string().map(mpint_bits).unwrap_or(0)
        }
        "ssh-dss" => r.string().map(mpint_bits).unwrap_or(0),
        "ssh-ed25519" | "sk-ssh-ed25519@openssh.com" | "sk-ecdsa-sha2-nistp256@openssh.com" => 256,
        "ecdsa-sha2-nistp256" => 256,
        "ecdsa-sha2-nistp384" => 384,
        "ecdsa-sha2-nistp521" => 521,
        _ => 0,
    }
}

/// Parse the text of a `.pub` file (`type base64 [comment]`, first non-comment line) and fingerprint it. The type
/// word must match the type embedded in the blob.
pub fn fingerprint_public_key(text: &str) -> Result<HostKeyFingerprint, String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).ok_or("no key line")?;
    let mut words = line.split_whitespace();
    let (Some(kind), Some(b64)) = (words.next(), words.next()) else {
        return Err("expected `type base64 [comment]`".into());
    };
    let blob = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("bad base64: {e}"))?;
    let fp = HostKeyFingerprint::from_blob(&blob).ok_or("truncated key blob")?;
    if fp.key_type != kind {
        return Err(format!("key type {kind} does not match the blob's {}", fp.key_type));
    }
    Ok(fp)
}

/// `ssh_host_*key*`: what a regeneration removes first (keys, `.pub`, certificates, leftovers).
fn is_host_key_file(name: &str) -> bool {
    name.strip_prefix("ssh_host_").is_some_and(|rest| rest.contains("key"))
}

/// `ssh_host_<type>_key`: a private host key.
fn is_private_key(name: &str) -> bool {
    name.starts_with("ssh_host_") && name.ends_with("_key")
}

/// Fingerprints of every `/etc/ssh/ssh_host_*_key.pub`, in file-name order. Unreadable or invalid files are
/// skipped with a warning (a console report must never stop provisioning).
pub fn fingerprints(sys: &dyn System) -> Vec<HostKeyFingerprint> {
    let dir = Path::new(SSH_DIR);
    let Ok(names) = sys.read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for name in names.iter().filter(|n| n.strip_suffix(".pub").is_some_and(is_private_key)) {
        let path = dir.join(name);
        match sys.read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| fingerprint_public_key(&t)) {
            Ok(fp) => out.push(fp),
            Err(e) => tracing::warn!("host key {}: {e}", path.display()),
        }
    }
    out
}

/// The key that stands for the VM in role properties: RSA first (WALinuxAgent's default), then ECDSA P-256,
/// Ed25519, then whatever comes first.
pub fn preferred(fps: &[HostKeyFingerprint]) -> Option<&HostKeyFingerprint> {
    THUMBPRINT_PREFERENCE.iter().find_map(|t| fps.iter().find(|f| f.key_type == *t)).or_else(|| fps.first())
}

/// The role-properties thumbprint for `format`, from the preferred key; `None` when off or no key exists.
pub fn thumbprint(fps: &[HostKeyFingerprint], format: FingerprintReport) -> Option<String> {
    preferred(fps)?.thumbprint(format)
}

/// The serial-console block (the markers cloud-init prints, which users and tools look for in boot diagnostics):
/// one `ssh-keygen -l` style line per key, then the MD5 forms.
pub fn console_block(fps: &[HostKeyFingerprint]) -> String {
    let mut s = String::from("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n");
    for f in fps {
        s.push_str(&format!("{} {} ({})\n", f.bits, f.sha256, f.type_label()));
    }
    for f in fps {
        s.push_str(&format!("{} {} ({})\n", f.bits, f.md5, f.type_label()));
    }
    s.push_str("-----END SSH HOST KEY FINGERPRINTS-----\n");
    s
}

/// A compact JSON value for KVP (about 130 bytes per key: fits one record for the usual three keys).
pub fn kvp_value(fps: &[HostKeyFingerprint]) -> String {
    let v: Vec<serde_json::Value> =
        fps.iter().map(|f| serde_json::json!({"type": f.key_type, "sha256": f.sha256, "md5": f.md5})).collect();
    serde_json::Value::Array(v).to_string()
}

fn failure(what: &str, path: &Path, e: impl ToString) -> Failure {
    Failure::new("failure to generate SSH host keys")
        .with("step", what)
        .with("path", path.display())
        .with("exception", e.to_string())
}

/// The gid of `name` in `/etc/group` text.
fn group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].trim().parse().ok()).flatten()
    })
}

/// Remove stale `/etc/ssh/ssh_host_*key*`, generate every default type with `ssh-keygen -A` (per type on old
/// OpenSSH), fix owners and modes, relabel under SELinux, and check the keys are there. Run it only on the first
/// boot of a new VM id and before sshd starts. A missing `ssh-keygen` skips the duty and leaves the keys alone.
pub fn regenerate(sys: &dyn System) -> Outcome {
    regenerate_with(sys, KEYGEN)
}

/// [`regenerate`] with another `ssh-keygen` program (a path or a name on `PATH`).
pub fn regenerate_with(sys: &dyn System, keygen: &str) -> Outcome {
    let dir = Path::new(SSH_DIR);
    if !sys.has_program(keygen) {
        return Outcome::Skipped(format!("{KEYGEN} not installed: host keys left as they are"));
    }
    let names = match sys.read_dir(dir) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Skipped(format!("{SSH_DIR} not found (OpenSSH not installed)"))
        }
        Err(e) => return Outcome::Failed(failure("list", dir, e)),
    };

    // 1. Stale keys from the image (a deprovision may have missed them).
    let mut removed = 0usize;
    for name in names.iter().filter(|n| is_host_key_file(n)) {
        let path = dir.join(name);
        if sys.stat(&path).is_ok_and(|s| s.is_dir) {
            continue;
        }
        if let Err(e) = sys.remove_file(&path) {
            return Outcome::Failed(failure("remove stale key", &path, e));
        }
        removed += 1;
    }

    // 2. Generate: all default types at once, per type when that fails.
    let mut notes = Vec::new();
    let mut how = format!("{KEYGEN} -A");
    let all = generate_all(sys, keygen);
    let have_after_all = private_keys(sys).map(|k| !k.is_empty()).unwrap_or(false);
    match all {
        Ok(()) if have_after_all => {}
        other => {
            let why = match other {
                Ok(()) => format!("{KEYGEN} -A wrote no key under {SSH_DIR}"),
                Err(e) => e,
            };
            tracing::warn!("{why}; generating host keys one type at a time");
            notes.push(why);
            how = format!("{KEYGEN} -t per type");
            for t in FALLBACK_TYPES {
                if let Err(e) = generate_one(sys, keygen, t) {
                    notes.push(e);
                }
            }
        }
    }

    // 3. Owners and modes; 4. SELinux labels; 5. verify.
    let keys = match private_keys(sys) {
        Ok(k) => k,
        Err(e) => return Outcome::Failed(failure("list", dir, e)),
    };
    let types: Vec<String> = keys.iter().filter_map(|(t, _)| t.clone()).collect();
    if keys.is_empty() {
        let f = Failure::new("failure to generate SSH host keys").with("detail", notes.join("; "));
        return Outcome::Failed(f);
    }
    let ssh_keys_gid = sys.read_to_string(Path::new("/etc/group")).ok().and_then(|g| group_gid(&g, SSH_KEYS_GROUP));
    let mut files = Vec::new();
    for (_, private) in &keys {
        let public = PathBuf::from(format!("{}.pub", private.display()));
        let private_perm = match ssh_keys_gid {
            Some(gid) => (0o640, gid),
            None => (0o600, 0),
        };
        if let Err(f) = fix(sys, private, private_perm.0, private_perm.1) {
            return Outcome::Failed(f);
        }
        if let Err(f) = fix(sys, &public, 0o644, 0) {
            return Outcome::Failed(f);
        }
        files.push(private.clone());
        files.push(public);
    }
    if let Some(note) = relabel(sys, &files) {
        notes.push(note);
    }
    let mut summary =
        format!("generated SSH host keys ({}) with {how}; removed {removed} stale file(s)", types.join(", "));
    if ssh_keys_gid.is_some() {
        summary.push_str(&format!("; private keys 0640 root:{SSH_KEYS_GROUP}"));
    }
    for n in notes {
        summary.push_str("; ");
        summary.push_str(&n);
    }
    Outcome::Done(summary)
}

/// `ssh-keygen -A` (live) or `ssh-keygen -A -f <root>` (OpenSSH prefixes its default paths with the `-f` value).
fn generate_all(sys: &dyn System, keygen: &str) -> Result<(), String> {
    let root = sys.root().display().to_string();
    let args: Vec<&str> = if sys.is_live() { vec!["-A"] } else { vec!["-A", "-f", root.trim_end_matches('/')] };
    let mut cmd = Command::new(keygen, &args);
    cmd.timeout = KEYGEN_TIMEOUT;
    match sys.run(&cmd) {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!("{} failed ({:?}): {}", cmd.display(), o.status, excerpt(&o.stderr))),
        Err(e) => Err(format!("{} failed: {e}", cmd.display())),
    }
}

/// `ssh-keygen -q -N '' -t <type> -f /etc/ssh/ssh_host_<type>_key`, unless that pair already exists.
fn generate_one(sys: &dyn System, keygen: &str, t: &str) -> Result<(), String> {
    let private = PathBuf::from(format!("{SSH_DIR}/ssh_host_{t}_key"));
    let public = PathBuf::from(format!("{SSH_DIR}/ssh_host_{t}_key.pub"));
    if sys.exists(&private) && sys.exists(&public) {
        return Ok(());
    }
    // a half-written pair would make ssh-keygen ask whether to overwrite
    for p in [&private, &public] {
        sys.remove_file(p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
    }
    let target = sys.host_path(&private).display().to_string();
    let mut cmd = Command::new(keygen, &["-q", "-N", "", "-t", t, "-f", &target]);
    cmd.timeout = KEYGEN_TIMEOUT;
    match sys.run(&cmd) {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!("{t} key not generated ({:?}): {}", o.status, excerpt(&o.stderr))),
        Err(e) => Err(format!("{t} key not generated: {e}")),
    }
}

/// `(type from the file name, path)` of every private key that has its `.pub` next to it.
fn private_keys(sys: &dyn System) -> io::Result<Vec<(Option<String>, PathBuf)>> {
    let names = sys.read_dir(Path::new(SSH_DIR))?;
    Ok(names
        .iter()
        .filter(|n| is_private_key(n) && names.contains(&format!("{n}.pub")))
        .map(|n| {
            let t = n.strip_prefix("ssh_host_").and_then(|r| r.strip_suffix("_key")).map(str::to_string);
            (t, Path::new(SSH_DIR).join(n))
        })
        .collect())
}

/// Owner root:`gid` and `mode` on a regular file (never through a symlink).
fn fix(sys: &dyn System, path: &Path, mode: u32, gid: u32) -> Result<(), Failure> {
    let st = sys.stat(path).map_err(|e| failure("stat", path, e))?;
    if !st.is_file {
        return Err(failure("check", path, "not a regular file"));
    }
    if (st.uid, st.gid) != (0, gid) {
        sys.set_owner(path, 0, gid).map_err(|e| failure("chown", path, e))?;
    }
    if st.mode != mode {
        sys.set_mode(path, mode).map_err(|e| failure("chmod", path, e))?;
    }
    Ok(())
}

/// `restorecon` the new files when SELinux is enabled on the target; a note when it could not be done.
fn relabel(sys: &dyn System, files: &[PathBuf]) -> Option<String> {
    if !sys.exists(Path::new("/sys/fs/selinux/enforce")) {
        return None;
    }
    if !sys.has_program("restorecon") {
        return Some("SELinux enabled but restorecon missing: host keys not relabelled".into());
    }
    let paths: Vec<String> = files.iter().map(|p| sys.host_path(p).display().to_string()).collect();
    let args: Vec<&str> = paths.iter().map(String::as_str).collect();
    match sys.run(&Command::new("restorecon", &args)) {
        Ok(o) if o.success() => Some("relabelled for SELinux".into()),
        Ok(o) => Some(format!("restorecon failed: {}", excerpt(&o.stderr))),
        Err(e) => Some(format!("restorecon failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;
    use std::collections::BTreeMap;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn sandbox() -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nwheel:x:10:\n").unwrap();
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    fn have_keygen() -> bool {
        let ok = crate::system::RealSystem::new("/").has_program(KEYGEN);
        if !ok {
            eprintln!("skipping: {KEYGEN} is not installed");
        }
        ok
    }

    /// The host's `/etc/ssh` listing with sizes and mtimes.
    fn host_ssh_listing() -> BTreeMap<String, (u64, i64)> {
        std::fs::read_dir("/etc/ssh")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| {
                        let m = e.metadata().ok()?;
                        Some((e.file_name().to_string_lossy().into_owned(), (m.len(), m.mtime())))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn ssh_dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn mode_of(p: &Path) -> (u32, u32, u32) {
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.permissions().mode() & 0o7777, m.uid(), m.gid())
    }

    #[test]
    fn glob_filters() {
        for n in ["ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_ed25519_key-cert.pub", "ssh_host_key"] {
            assert!(is_host_key_file(n), "{n}");
        }
        for n in ["sshd_config", "ssh_config", "moduli", "ssh_host_", "ssh_known_hosts", "host_rsa_key"] {
            assert!(!is_host_key_file(n), "{n}");
        }
        assert!(is_private_key("ssh_host_ecdsa_key"));
        assert!(!is_private_key("ssh_host_ecdsa_key.pub"));
        assert_eq!(group_gid("root:x:0:\nssh_keys:x:996:\n", "ssh_keys"), Some(996));
        assert_eq!(group_gid("ssh_keys_x:x:5:\n", "ssh_keys"), None);
    }

    #[test]
    fn missing_keygen_is_skipped_and_keys_are_kept() {
        let (dir, sys) = sandbox();
        std::fs::write(dir.path().join("etc/ssh/ssh_host_rsa_key"), "old").unwrap();
        sys.uninstall(KEYGEN);
        match regenerate(&sys) {
            Outcome::Skipped(why) => assert!(why.contains("ssh-keygen not installed"), "{why}"),
            o => panic!("{o:?}"),
        }
        assert!(dir.path().join("etc/ssh/ssh_host_rsa_key").exists());
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn missing_ssh_dir_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        sys.script(KEYGEN, CommandOutput { status: Some(0), ..Default::default() });
        assert!(matches!(regenerate(&sys), Outcome::Skipped(w) if w.contains("/etc/ssh not found")));
    }

    #[test]
    fn regenerates_inside_the_root_only() {
        if !have_keygen() {
            return;
        }
        let (dir, sys) = sandbox();
        let ssh = dir.path().join("etc/ssh");
        // stale keys from the image, a certificate, unrelated files that must stay
        for n in ["ssh_host_rsa_key", "ssh_host_rsa_key.pub", "ssh_host_dsa_key", "ssh_host_dsa_key.pub"] {
            std::fs::write(ssh.join(n), "stale").unwrap();
        }
        std::fs::write(ssh.join("ssh_host_ed25519_key-cert.pub"), "stale cert").unwrap();
        std::fs::write(ssh.join("sshd_config"), "Port 22\n").unwrap();
        std::fs::write(ssh.join("moduli"), "x").unwrap();
        let before = host_ssh_listing();

        let out = regenerate(&sys);
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        assert!(d.contains("ssh-keygen -A") && d.contains("removed 5 stale"), "{d}");
        assert_eq!(host_ssh_listing(), before, "the host's /etc/ssh changed");

        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        let root = dir.path().display().to_string();
        assert_eq!(cmds[0].args, vec!["-A".to_string(), "-f".into(), root]);

        let names = ssh_dir_names(dir.path());
        assert!(!names.iter().any(|n| n.contains("_dsa_") || n.contains("cert")), "{names:?}");
        for t in FALLBACK_TYPES {
            let private = ssh.join(format!("ssh_host_{t}_key"));
            assert_ne!(std::fs::read(&private).unwrap(), b"stale");
            assert_eq!(mode_of(&private), (0o600, 0, 0), "{t}");
            assert_eq!(mode_of(&ssh.join(format!("ssh_host_{t}_key.pub"))), (0o644, 0, 0), "{t}");
        }
        assert!(names.contains(&"sshd_config".to_string()) && names.contains(&"moduli".to_string()));

        // fingerprints of what was generated agree with ssh-keygen
        let fps = fingerprints(&sys);
        assert_eq!(fps.len(), 3);
        for f in &fps {
            let t = match f.key_type.as_str() {
                "ssh-rsa" => "rsa",
                "ssh-ed25519" => "ed25519",
                _ => "ecdsa",
            };
            let pubkey = ssh.join(format!("ssh_host_{t}_key.pub"));
            let line = keygen_line(&["-l", "-f"], &pubkey);
            assert_eq!(line_fields(&line), (f.bits.to_string(), f.sha256.clone(), format!("({})", f.type_label())));
            let line = keygen_line(&["-l", "-E", "md5", "-f"], &pubkey);
            assert_eq!(line_fields(&line).1, f.md5);
        }
    }

    fn keygen_line(args: &[&str], path: &Path) -> String {
        let out = std::process::Command::new(KEYGEN).args(args).arg(path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `(bits, fingerprint, (TYPE))` of an `ssh-keygen -l` line (the comment in between may contain spaces).
    fn line_fields(line: &str) -> (String, String, String) {
        let w: Vec<&str> = line.split_whitespace().collect();
        (w[0].to_string(), w[1].to_string(), w[w.len() - 1].to_string())
    }

    #[test]
    fn fingerprints_match_ssh_keygen_for_every_type() {
        if !have_keygen() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join("etc/ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let types: &[(&str, &[&str])] = &[
            ("rsa", &["-b", "1024"]),
            ("rsa2", &["-t", "rsa", "-b", "2047"]),
            ("ecdsa", &["-b", "256"]),
            ("ecdsa384", &["-t", "ecdsa", "-b", "384"]),
            ("ecdsa521", &["-t", "ecdsa", "-b", "521"]),
            ("ed25519", &[]),
        ];
        for (name, extra) in types {
            let path = ssh.join(format!("ssh_host_{name}_key"));
            let mut args = vec!["-q", "-N", "", "-C", "root@test host"];
            if !extra.contains(&"-t") {
                args.extend(["-t", name]);
            }
            args.extend(extra.iter());
            let st = std::process::Command::new(KEYGEN).args(&args).arg("-f").arg(&path).status().unwrap();
            assert!(st.success(), "{name}");
        }
        // noise that must be ignored
        std::fs::write(ssh.join("ssh_host_bad_key.pub"), "ssh-rsa !!!notbase64 x\n").unwrap();
        std::fs::write(ssh.join("ssh_host_ed25519_key-cert.pub"), "ignored").unwrap();
        let sys = RecordingSystem::new(dir.path());
        let fps = fingerprints(&sys);
        assert_eq!(fps.len(), types.len(), "{fps:?}");
        // file-name order
        let mut files: Vec<String> = types.iter().map(|(n, _)| format!("ssh_host_{n}_key.pub")).collect();
        files.sort();
        for (f, name) in fps.iter().zip(files) {
            let pubkey = ssh.join(&name);
            let sha = keygen_line(&["-l", "-f"], &pubkey);
            assert_eq!(line_fields(&sha), (f.bits.to_string(), f.sha256.clone(), format!("({})", f.type_label())));
            let md5 = keygen_line(&["-l", "-E", "md5", "-f"], &pubkey);
            assert_eq!(line_fields(&md5).1, f.md5, "{name}");
            assert_eq!(f.md5.len(), 4 + 47);
        }
        let mut rsa_bits: Vec<u32> = fps.iter().filter(|f| f.key_type == "ssh-rsa").map(|f| f.bits).collect();
        rsa_bits.sort();
        assert_eq!(rsa_bits, [1024, 2047]);
    }

    #[test]
    fn known_answer_and_thumbprint_formats() {
        // Expected values printed by `ssh-keygen -l -f` and `ssh-keygen -l -E md5 -f` (OpenSSH 9.2).
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGrzDObeazJ06waQqKa7V1rdUlAy6iCiOkJ5S04LYX8b test\n";
        let fp = fingerprint_public_key(line).unwrap();
        assert_eq!(
            fp,
            HostKeyFingerprint {
                key_type: "ssh-ed25519".into(),
                bits: 256,
                sha256: "SHA256:R2MLIy3nBGs9ZLxknaK8tPiUMqsfPebOEgEozIZs9Vk".into(),
                md5: "MD5:f6:06:15:78:2a:33:40:ed:dc:a2:0e:df:ed:ae:ff:35".into(),
            }
        );
        assert_eq!(fp.type_label(), "ED25519");
        assert_eq!(
            fp.thumbprint(FingerprintReport::Sha256).as_deref(),
            Some("SHA256R2MLIy3nBGs9ZLxknaK8tPiUMqsfPebOEgEozIZs9Vk")
        );
        assert_eq!(fp.thumbprint(FingerprintReport::Md5).as_deref(), Some("f60615782a3340eddca20edfedaeff35"));
        assert_eq!(fp.thumbprint(FingerprintReport::Off), None);
        // comments and blank lines before the key, CRLF
        let fp2 = fingerprint_public_key(&format!("# host key\n\n{}", line.replace('\n', "\r\n"))).unwrap();
        assert_eq!(fp2, fp);

        // type word must match the blob; garbage is rejected
        assert!(fingerprint_public_key(&line.replace("ssh-ed25519 ", "ssh-rsa "))
            .unwrap_err()
            .contains("does not match"));
        assert!(fingerprint_public_key("ssh-rsa").is_err());
        assert!(fingerprint_public_key("ssh-rsa AAAA").is_err());
        assert!(fingerprint_public_key("# only a comment\n").is_err());
        assert!(HostKeyFingerprint::from_blob(&[0, 0, 0, 9, b'x']).is_none());
    }

    #[test]
    fn preferred_key_and_reports() {
        let mk = |t: &str| HostKeyFingerprint {
            key_type: t.into(),
            bits: 256,
            sha256: format!("SHA256:{t}"),
            md5: "MD5:00:11".into(),
        };
        let fps = vec![mk("ecdsa-sha2-nistp256"), mk("ssh-ed25519"), mk("ssh-rsa")];
        assert_eq!(thumbprint(&fps, FingerprintReport::Sha256).as_deref(), Some("SHA256ssh-rsa"));
        assert_eq!(thumbprint(&fps[..2], FingerprintReport::Sha256).as_deref(), Some("SHA256ecdsa-sha2-nistp256"));
        assert_eq!(thumbprint(&[mk("ssh-dss")], FingerprintReport::Md5).as_deref(), Some("0011"));
        assert_eq!(thumbprint(&[], FingerprintReport::Sha256), None);
        let block = console_block(&fps);
        assert!(
            block.starts_with("-----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:ecdsa-sha2-nistp256 (ECDSA)\n")
        );
        assert!(block.ends_with("-----END SSH HOST KEY FINGERPRINTS-----\n"));
        let v: serde_json::Value = serde_json::from_str(&kvp_value(&fps)).unwrap();
        assert_eq!(v[2]["type"], "ssh-rsa");
        assert!(kvp_value(&fps).len() < crate::platform::kvp::MAX_VALUE);
    }

    /// A fake `ssh-keygen` that rejects `-A` (as OpenSSH before 5.8 does) and runs the real one otherwise.
    fn old_keygen(dir: &Path) -> String {
        let p = dir.join("old-ssh-keygen");
        std::fs::write(&p, "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = -A ] && { echo 'unknown option -- A' >&2; exit 1; }; done\nexec ssh-keygen \"$@\"\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    }

    #[test]
    fn falls_back_per_type_and_uses_the_ssh_keys_group() {
        if !have_keygen() {
            return;
        }
        let (dir, sys) = sandbox();
        let tools = tempfile::tempdir().unwrap();
        let keygen = old_keygen(tools.path());
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nssh_keys:x:4242:\n").unwrap();
        // a half pair left behind: must be replaced, not answered with an overwrite prompt
        std::fs::write(dir.path().join("etc/ssh/ssh_host_ed25519_key"), "stale").unwrap();
        let before = host_ssh_listing();
        let out = regenerate_with(&sys, &keygen);
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        assert!(d.contains("per type") && d.contains("unknown option -- A"), "{d}");
        assert!(d.contains("0640 root:ssh_keys"), "{d}");
        assert_eq!(host_ssh_listing(), before, "the host's /etc/ssh changed");
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 4, "{cmds:?}");
        let ssh = dir.path().join("etc/ssh");
        for (i, t) in FALLBACK_TYPES.iter().enumerate() {
            let private = ssh.join(format!("ssh_host_{t}_key"));
            let want_args = ["-q", "-N", "", "-t", t, "-f", &private.display().to_string()].map(String::from).to_vec();
            assert_eq!(cmds[i + 1].args, want_args);
            assert_eq!(mode_of(&private), (0o640, 0, 4242), "{t}");
            assert_eq!(mode_of(&ssh.join(format!("ssh_host_{t}_key.pub"))), (0o644, 0, 0), "{t}");
        }
        assert_eq!(fingerprints(&sys).len(), 3);
    }

    #[test]
    fn failing_keygen_fails_with_a_reason() {
        let (dir, sys) = sandbox();
        std::fs::write(dir.path().join("etc/ssh/ssh_host_rsa_key"), "stale").unwrap();
        sys.script(KEYGEN, CommandOutput { status: Some(1), stderr: b"no entropy".to_vec(), ..Default::default() });
        match regenerate(&sys) {
            Outcome::Failed(f) => {
                assert_eq!(f.reason, "failure to generate SSH host keys");
                assert!(format!("{f}").contains("no entropy"), "{f}");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(sys.commands().len(), 4);
        assert!(!dir.path().join("etc/ssh/ssh_host_rsa_key").exists());
    }

    #[test]
    fn selinux_relabels_the_new_keys() {
        let (dir, sys) = sandbox();
        std::fs::create_dir_all(dir.path().join("sys/fs/selinux")).unwrap();
        std::fs::write(dir.path().join("sys/fs/selinux/enforce"), "1").unwrap();
        // a stand-in ssh-keygen: `-A -f ROOT` writes one pair with loose modes
        let tools = tempfile::tempdir().unwrap();
        let keygen = tools.path().join("fake-ssh-keygen");
        std::fs::write(
            &keygen,
            "#!/bin/sh\n[ \"$1\" = -A ] || exit 1\nk=\"$3/etc/ssh/ssh_host_ed25519_key\"\nprintf k > \"$k\"; printf p > \"$k.pub\"\nchmod 666 \"$k\" \"$k.pub\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&keygen, std::fs::Permissions::from_mode(0o755)).unwrap();
        sys.script("restorecon", CommandOutput { status: Some(0), ..Default::default() });
        let out = regenerate_with(&sys, &keygen.display().to_string());
        let Outcome::Done(d) = &out else { panic!("{out:?}") };
        assert!(d.contains("(ed25519)") && d.contains("relabelled for SELinux"), "{d}");
        let ssh = dir.path().join("etc/ssh");
        assert_eq!(mode_of(&ssh.join("ssh_host_ed25519_key")), (0o600, 0, 0));
        assert_eq!(mode_of(&ssh.join("ssh_host_ed25519_key.pub")), (0o644, 0, 0));
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[1].program, "restorecon");
        let want: Vec<String> = ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
            .iter()
            .map(|n| ssh.join(n).display().to_string())
            .collect();
        assert_eq!(cmds[1].args, want);
        // without restorecon: a note, not a failure
        let (_dir2, sys2) = sandbox();
        std::fs::create_dir_all(sys2.root().join("sys/fs/selinux")).unwrap();
        std::fs::write(sys2.root().join("sys/fs/selinux/enforce"), "1").unwrap();
        sys2.uninstall("restorecon");
        let out = regenerate_with(&sys2, &keygen.display().to_string());
        assert!(matches!(&out, Outcome::Done(d) if d.contains("restorecon missing")), "{out:?}");
    }
}
