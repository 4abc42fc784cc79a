//! SSH public keys into the user's `authorized_keys`: validated, merged with what is there, de-duplicated,
//! written atomically with the modes sshd's StrictModes wants, to the file sshd actually reads (effective
//! `AuthorizedKeysFile`) or to the platform's path when that is inside the home; relabelled on SELinux.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use super::{Outcome, Passwd};
use crate::plan::SshKey;
use crate::report::Failure;
use crate::system::{Command, System};

/// A structurally valid OpenSSH public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub options: Option<String>,
    pub kind: String,
    pub blob: String,
    pub comment: Option<String>,
}

impl PublicKey {
    pub fn line(&self) -> String {
        let mut s = String::new();
        if let Some(o) = &self.options {
            s.push_str(o);
            s.push(' ');
        }
        s.push_str(&self.kind);
        s.push(' ');
        s.push_str(&self.blob);
        if let Some(c) = &self.comment {
            s.push(' ');
            s.push_str(c);
        }
        s
    }
}

/// Split on whitespace, keeping double-quoted runs (options such as `command="a b"`) together.
fn tokens(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        let mut quoted = false;
        while i < b.len() && (quoted || !b[i].is_ascii_whitespace()) {
            if b[i] == b'\\' && quoted {
                i += 1;
            } else if b[i] == b'"' {
                quoted = !quoted;
            }
            i += 1;
        }
        out.push((start, i.min(b.len())));
    }
    out
}

/// The key type string embedded at the start of a key blob.
fn embedded_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

/// Parse `[options] type base64 [comment]`; CR/LF anywhere are removed first (the portal's keys had `\r\n`).
pub fn parse(line: &str) -> Result<PublicKey, String> {
    let clean: String = line.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let clean = clean.trim();
    if clean.is_empty() || clean.starts_with('#') {
        return Err("empty or comment".into());
    }
    let toks = tokens(clean);
    for i in 0..toks.len().min(2) {
        let kind = &clean[toks[i].0..toks[i].1];
        let Some(&(bs, be)) = toks.get(i + 1) else { break };
        let blob = &clean[bs..be];
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(blob) else { continue };
        if embedded_type(&raw) != Some(kind) {
            continue;
        }
        let options = (i == 1).then(|| clean[toks[0].0..toks[0].1].to_string());
        let comment = toks.get(i + 2).map(|&(s, _)| clean[s..].trim().to_string()).filter(|c| !c.is_empty());
        return Ok(PublicKey { options, kind: kind.to_string(), blob: blob.to_string(), comment });
    }
    Err("not an OpenSSH public key (type, base64 blob and embedded type must agree)".into())
}

/// Merge `new` keys into existing `authorized_keys` text: every existing line is kept; a new key whose (type, blob)
/// is already present is not added again. Returns the new text and how many keys were added.
pub fn merge(existing: &str, new: &[PublicKey]) -> (String, usize) {
    let mut seen: Vec<(String, String)> =
        existing.lines().filter_map(|l| parse(l).ok()).map(|k| (k.kind, k.blob)).collect();
    let mut out = existing.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let mut added = 0;
    for k in new {
        let id = (k.kind.clone(), k.blob.clone());
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        out.push_str(&k.line());
        out.push('\n');
        added += 1;
    }
    (out, added)
}

fn io_failure(path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new("failure to write authorized_keys").with("path", path.display()).with("exception", e)
}

/// Where a platform key `Path` points for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// The usual `~/.ssh/authorized_keys`: the key goes to the file sshd reads (`AuthorizedKeysFile`).
    Default,
    /// Another file inside the user's home, honoured as given.
    Custom(PathBuf),
}

/// Judge a platform key path (OVF `PublicKey/Path`, IMDS `path`). `$HOME/<user>` (WALinuxAgent's form: `$HOME` is
/// `/home`), `/home/<user>`, `~` and `~<user>` all stand for the passwd home. Refused (`Err` with the reason): a
/// relative path, one with `..`, or one outside the home. Symlinks are checked when writing.
pub fn platform_destination(path: &str, user: &Passwd) -> Result<Destination, String> {
    let home = Path::new(&user.home);
    let p = path.trim();
    if p.is_empty() {
        return Ok(Destination::Default);
    }
    let p = match p.strip_prefix("$HOME") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/home{rest}"),
        _ => p.to_string(),
    };
    let tilde_user = format!("~{}", user.name);
    let home_user = format!("/home/{}", user.name);
    let mut expanded = None;
    for prefix in [home_user.as_str(), tilde_user.as_str(), "~"] {
        if let Some(rest) = p.strip_prefix(prefix) {
            if rest.is_empty() || rest.starts_with('/') {
                expanded = Some(format!("{}{rest}", user.home.trim_end_matches('/')));
                break;
            }
        }
    }
    let p = expanded.unwrap_or(p);
    if !p.starts_with('/') {
        return Err("not an absolute path".into());
    }
    let mut normal = PathBuf::from("/");
    for c in Path::new(&p).components() {
        match c {
            std::path::Component::ParentDir => return Err("contains '..'".into()),
            std::path::Component::Normal(n) => normal.push(n),
            _ => {}
        }
    }
    if !home.is_absolute() || home == Path::new("/") || !normal.starts_with(home) || normal == home {
        return Err(format!("outside the home directory {}", home.display()));
    }
    if normal == home.join(".ssh/authorized_keys") {
        return Ok(Destination::Default);
    }
    Ok(Destination::Custom(normal))
}

/// Expand an `AuthorizedKeysFile` token: `%%`, `%h` (home), `%u` (name), `%U` (uid); relative → under the home.
pub fn expand_tokens(token: &str, user: &Passwd) -> Result<PathBuf, String> {
    let mut out = String::new();
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(&user.home),
            Some('u') => out.push_str(&user.name),
            Some('U') => out.push_str(&user.uid.to_string()),
            Some(x) => return Err(format!("unknown token %{x} in AuthorizedKeysFile {token}")),
            None => return Err(format!("dangling % in AuthorizedKeysFile {token}")),
        }
    }
    if out.is_empty() {
        return Err("empty AuthorizedKeysFile".into());
    }
    let p = PathBuf::from(&out);
    Ok(if p.is_absolute() { p } else { Path::new(&user.home).join(p) })
}

/// The file sshd reads the user's keys from: the first token of the effective `AuthorizedKeysFile` (`sshd -T -C
/// user=…` on the live system with sshd installed, else the configuration files), expanded; default
/// `~/.ssh/authorized_keys`. The strings are notes for the outcome.
pub fn authorized_keys_file(sys: &dyn System, user: &Passwd) -> (PathBuf, Vec<String>) {
    let default = Path::new(&user.home).join(".ssh/authorized_keys");
    let (eff, why) = super::sshd::effective(sys, Some(&user.name));
    // on the live system a failing or missing sshd is worth saying; under --root it is expected
    let mut notes = Vec::new();
    if sys.is_live() && !why.is_empty() {
        notes.push(format!("{why}: AuthorizedKeysFile read from the configuration files"));
    }
    let Some(setting) = eff.as_ref().and_then(|e| e.get("AuthorizedKeysFile")) else {
        return (default, notes);
    };
    let how = eff.as_ref().map(|e| e.how.clone()).unwrap_or_default();
    let Some(first) = setting.value.split_whitespace().next().map(|t| t.trim_matches('"')) else {
        return (default, notes);
    };
    if first.eq_ignore_ascii_case("none") {
        notes.push(format!("AuthorizedKeysFile none ({how}): keys written to {} anyway", default.display()));
        return (default, notes);
    }
    match expand_tokens(first, user) {
        Ok(p) => (p, notes),
        Err(e) => {
            notes.push(format!("{e} ({how}): using the default file"));
            (default, notes)
        }
    }
}

/// Check (lstat) every directory between the home and `dir`: no symlinks, no non-directories, owned by the user
/// or root. Missing ones are created 0700, owned by the user.
fn safe_dirs(sys: &dyn System, user: &Passwd, dir: &Path) -> Result<(), Failure> {
    let home = Path::new(&user.home);
    let owner = Some((user.uid, user.gid));
    if !sys.exists(home) {
        sys.create_dir_all(home, 0o700, owner).map_err(|e| io_failure(home, e))?;
    }
    let rel = dir.strip_prefix(home).map_err(|_| io_failure(dir, "not inside the home directory"))?;
    let mut cur = home.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match sys.stat(&cur) {
            Ok(st) if st.is_symlink => return Err(io_failure(&cur, "is a symlink: refused")),
            Ok(st) if !st.is_dir => return Err(io_failure(&cur, "not a directory")),
            Ok(st) if st.uid != user.uid && st.uid != 0 => {
                return Err(io_failure(&cur, format!("owned by uid {}, not the user or root", st.uid)))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                sys.create_dir_all(&cur, 0o700, owner).map_err(|e| io_failure(&cur, e))?;
            }
            Err(e) => return Err(io_failure(&cur, e)),
        }
    }
    Ok(())
}

/// Merge `keys` into `file` (atomic write, 0600, owned by the user). Returns how many keys were new.
fn write_keys(sys: &dyn System, user: &Passwd, file: &Path, keys: &[PublicKey]) -> Result<usize, Failure> {
    let home = Path::new(&user.home);
    let owner = Some((user.uid, user.gid));
    let parent = file.parent().ok_or_else(|| io_failure(file, "no parent directory"))?;
    if parent.starts_with(home) && home != Path::new("/") {
        safe_dirs(sys, user, parent)?;
    } else if !sys.exists(parent) {
        // an administrator's AuthorizedKeysFile outside the home (e.g. /etc/ssh/authorized_keys/%u): root's
        sys.create_dir_all(parent, 0o755, Some((0, 0))).map_err(|e| io_failure(parent, e))?;
    }
    let existing = match sys.stat(file) {
        Ok(st) if st.is_symlink => return Err(io_failure(file, "is a symlink: refused")),
        Ok(st) if !st.is_file => return Err(io_failure(file, "not a regular file")),
        Ok(_) => sys.read_to_string(file).map_err(|e| io_failure(file, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_failure(file, e)),
    };
    let (text, added) = merge(&existing, keys);
    sys.write_file(file, text.as_bytes(), 0o600, owner).map_err(|e| io_failure(file, e))?;
    let ssh_dir = home.join(".ssh");
    if parent == ssh_dir {
        sys.set_mode(&ssh_dir, 0o700)
            .and_then(|_| sys.set_owner(&ssh_dir, user.uid, user.gid))
            .map_err(|e| io_failure(&ssh_dir, e))?;
    }
    Ok(added)
}

/// On SELinux systems (`/sys/fs/selinux/enforce` exists) relabel what we wrote (`restorecon -R`): files created
/// by root otherwise keep a label sshd may not read. A missing or failing restorecon is a note.
fn relabel(sys: &dyn System, paths: &[PathBuf]) -> Option<String> {
    if paths.is_empty() || !sys.exists(Path::new("/sys/fs/selinux/enforce")) {
        return None;
    }
    if !sys.has_program("restorecon") {
        return Some("SELinux enabled but restorecon is not installed: not relabelled".into());
    }
    let mut args = vec!["-R".to_string()];
    args.extend(paths.iter().map(|p| sys.host_path(p).display().to_string()));
    let cmd = Command { program: "restorecon".into(), args, stdin: None, timeout: Duration::from_secs(60) };
    Some(match sys.run(&cmd) {
        Ok(o) if o.success() => "relabelled with restorecon".into(),
        Ok(o) => format!("restorecon failed: {}", super::excerpt(&o.stderr)),
        Err(e) => format!("restorecon failed: {e}"),
    })
}

/// Install `keys` for `user`: each key goes to the file sshd reads (effective `AuthorizedKeysFile`, first token)
/// unless the platform named another path inside the home; paths outside the home, with `..` or through a
/// symlink are refused with the reason in the outcome. Existing lines are kept, duplicates dropped.
pub fn install(sys: &dyn System, user: &Passwd, keys: &[SshKey]) -> Outcome {
    let (default_file, mut notes) = authorized_keys_file(sys, user);
    let mut targets: Vec<(PathBuf, Vec<PublicKey>)> = Vec::new();
    let mut rejected = 0;
    let mut refused = Vec::new();
    for k in keys {
        let pk = match parse(&k.key) {
            Ok(pk) => pk,
            Err(e) => {
                rejected += 1;
                tracing::warn!("skipping an SSH key: {e}");
                continue;
            }
        };
        let target = match k.path.as_deref().map(|p| (p, platform_destination(p, user))) {
            None | Some((_, Ok(Destination::Default))) => default_file.clone(),
            Some((_, Ok(Destination::Custom(p)))) => p,
            Some((p, Err(why))) => {
                tracing::warn!("refusing SSH key path {p}: {why}");
                refused.push(format!("{p}: {why}"));
                continue;
            }
        };
        match targets.iter_mut().find(|(t, _)| *t == target) {
            Some((_, list)) => list.push(pk),
            None => targets.push((target, vec![pk])),
        }
    }
    if targets.is_empty() {
        return if !refused.is_empty() {
            Outcome::Failed(
                Failure::new("failure to write authorized_keys")
                    .with("username", &user.name)
                    .with("refused_paths", refused.join("; ")),
            )
        } else if rejected > 0 {
            Outcome::Failed(Failure::new("no valid ssh public key").with("rejected", rejected))
        } else {
            Outcome::Skipped("no SSH public keys provided".into())
        };
    }
    let ssh_dir = Path::new(&user.home).join(".ssh");
    let mut written = Vec::new();
    let mut relabel_paths: Vec<PathBuf> = Vec::new();
    for (file, list) in &targets {
        match write_keys(sys, user, file, list) {
            Ok(added) => written.push(format!("{added} key(s) added to {}", file.display())),
            Err(f) => return Outcome::Failed(f.with("username", &user.name)),
        }
        let label = if file.starts_with(&ssh_dir) { ssh_dir.clone() } else { file.clone() };
        if !relabel_paths.contains(&label) {
            relabel_paths.push(label);
        }
    }
    if let Ok(st) = sys.stat(Path::new(&user.home)) {
        if st.is_dir && st.mode & 0o022 != 0 {
            notes.push(format!("home {} is group/world-writable: sshd StrictModes ignores its keys", user.home));
        }
    }
    notes.extend(relabel(sys, &relabel_paths));
    let mut detail = written.join(", ");
    if rejected > 0 {
        detail.push_str(&format!(", {rejected} invalid key(s) skipped"));
    }
    if !refused.is_empty() {
        detail.push_str(&format!(", refused path(s): {}", refused.join("; ")));
    }
    for n in notes {
        detail.push_str("; ");
        detail.push_str(&n);
    }
    Outcome::Done(detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    // a real ed25519 public key blob (type string + 32 bytes)
    const ED: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBwW7zdCNp6VZ4Q6gGXlmN2nQ/AD8hvKbi/UP8wXpC2L";

    fn ed_line(comment: &str) -> String {
        format!("ssh-ed25519 {ED} {comment}")
    }

    #[test]
    fn parses_forms() {
        let k = parse(&ed_line("dev@laptop")).unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment.as_deref(), Some("dev@laptop"));
        let k = parse(&format!("  {}\r\n", ed_line("x y z"))).unwrap();
        assert_eq!(k.comment.as_deref(), Some("x y z"));
        let k = parse(&format!("command=\"echo a b\",no-pty ssh-ed25519 {ED}")).unwrap();
        assert_eq!(k.options.as_deref(), Some("command=\"echo a b\",no-pty"));
        assert_eq!(k.comment, None);
        assert!(parse("ssh-rsa AAAANOTAREALKEY== foo@bar.local").is_err());
        assert!(parse(&format!("ssh-rsa {ED}")).is_err(), "embedded type must match");
        assert!(parse("").is_err());
    }

    #[test]
    fn merge_keeps_existing_and_dedupes() {
        let existing = format!("# mine\n{}\n", ed_line("old-comment"));
        let new = vec![parse(&ed_line("new-comment")).unwrap()];
        let (text, added) = merge(&existing, &new);
        assert_eq!(added, 0);
        assert_eq!(text, existing);
        let (text, added) = merge("no-newline-line", &new);
        assert_eq!(added, 1);
        assert_eq!(text, format!("no-newline-line\n{}\n", ed_line("new-comment")));
    }

    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command as Proc;

    struct Sandbox {
        dir: tempfile::TempDir,
        sys: RecordingSystem,
        user: Passwd,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("home/azureuser")).unwrap();
            std::fs::set_permissions(dir.path().join("home/azureuser"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            // the test's own ids: chown works without root
            let md = std::fs::metadata(dir.path()).unwrap();
            let user = Passwd {
                name: "azureuser".into(),
                uid: md.uid(),
                gid: md.gid(),
                home: "/home/azureuser".into(),
                shell: "/bin/sh".into(),
            };
            let sys = RecordingSystem::new(dir.path());
            Sandbox { dir, sys, user }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel.trim_start_matches('/'))
        }
        fn write(&self, rel: &str, text: &str) {
            let p = self.p(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        fn read(&self, rel: &str) -> String {
            std::fs::read_to_string(self.p(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
        }
        fn mode(&self, rel: &str) -> u32 {
            std::fs::metadata(self.p(rel)).unwrap().permissions().mode() & 0o7777
        }
        fn install(&self, keys: &[SshKey]) -> Outcome {
            install(&self.sys, &self.user, keys)
        }
    }

    fn key(line: &str) -> SshKey {
        SshKey::new(line, None)
    }

    fn at(line: &str, path: &str) -> SshKey {
        SshKey::new(line, Some(path.into()))
    }

    /// `ssh-keygen` a key (`bits` for rsa/ecdsa); returns the public line.
    fn keygen(dir: &Path, name: &str, kind: &str, bits: Option<&str>) -> Option<String> {
        let mut c = Proc::new("ssh-keygen");
        c.args(["-q", "-N", "", "-t", kind, "-C", name, "-f"]).arg(dir.join(name));
        if let Some(b) = bits {
            c.args(["-b", b]);
        }
        let ok = c.output().ok()?.status.success();
        ok.then(|| std::fs::read_to_string(dir.join(format!("{name}.pub"))).ok()).flatten()
    }

    fn ssh_string(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    /// `ssh-keygen -l` on a file: one fingerprint line per key it accepts.
    fn fingerprints(path: &Path) -> Vec<String> {
        let out = Proc::new("ssh-keygen").arg("-l").arg("-f").arg(path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| l.to_string()).collect()
    }

    #[test]
    fn every_openssh_key_form_is_installed_and_readable_by_ssh_keygen() {
        let sb = Sandbox::new();
        let kd = tempfile::tempdir().unwrap();
        let d = kd.path();
        let mut lines = Vec::new();
        for (name, kind, bits) in [
            ("rsa", "rsa", Some("1024")),
            ("e256", "ecdsa", Some("256")),
            ("e384", "ecdsa", Some("384")),
            ("e521", "ecdsa", Some("521")),
            ("ed", "ed25519", None),
            ("ca", "ed25519", None),
        ] {
            lines.push(keygen(d, name, kind, bits).expect("ssh-keygen is installed"));
        }
        let ca_line = lines.pop().unwrap();
        // certificates for two of them
        for k in ["ed", "e256"] {
            let st = Proc::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(d.join("ca"))
                .args(["-I", "azprov-test", "-n", "azureuser"])
                .arg(d.join(format!("{k}.pub")))
                .status()
                .unwrap();
            assert!(st.success());
            lines.push(std::fs::read_to_string(d.join(format!("{k}-cert.pub"))).unwrap());
        }
        assert!(lines[lines.len() - 2].starts_with("ssh-ed25519-cert-v01@openssh.com "));
        assert!(lines[lines.len() - 1].starts_with("ecdsa-sha2-nistp256-cert-v01@openssh.com "));
        // DSA where this ssh-keygen still makes it
        if let Some(dsa) = keygen(d, "dsa", "dsa", None) {
            lines.push(dsa);
        }
        // security keys cannot be generated without a token: build their blobs (the curve point from e256)
        let raw = |l: &str| base64::engine::general_purpose::STANDARD.decode(l.split_whitespace().nth(1).unwrap());
        let mut sk_ed = ssh_string(b"sk-ssh-ed25519@openssh.com");
        sk_ed.extend(ssh_string(&raw(&lines[4]).unwrap()[19..51]));
        sk_ed.extend(ssh_string(b"ssh:"));
        lines.push(format!("sk-ssh-ed25519@openssh.com {} yubikey", b64(&sk_ed)));
        let e256 = raw(&lines[1]).unwrap();
        let q = &e256[e256.len() - 65..];
        let mut sk_ec = ssh_string(b"sk-ecdsa-sha2-nistp256@openssh.com");
        sk_ec.extend(ssh_string(b"nistp256"));
        sk_ec.extend(ssh_string(q));
        sk_ec.extend(ssh_string(b"ssh:"));
        lines.push(format!("no-touch-required sk-ecdsa-sha2-nistp256@openssh.com {} token", b64(&sk_ec)));
        // CRLF (the portal's keys), stray whitespace, options with quoted spaces
        let mut keys: Vec<SshKey> = lines.iter().map(|l| key(&format!("  {}\r\n", l.trim()))).collect();
        keys[0] = key(&format!("from=\"10.0.0.0/8\",command=\"echo a b\" {}\r\n", lines[0].trim()));
        assert!(!ca_line.is_empty());

        let out = sb.install(&keys);
        assert!(matches!(&out, Outcome::Done(d) if d.contains(&format!("{} key(s) added", keys.len()))), "{out:?}");
        let ak = sb.read("/home/azureuser/.ssh/authorized_keys");
        assert_eq!(ak.lines().count(), keys.len(), "{ak}");
        assert!(!ak.contains('\r'));
        assert!(ak.lines().all(|l| l == l.trim()));
        assert!(ak.starts_with("from=\"10.0.0.0/8\",command=\"echo a b\" ssh-rsa "));
        assert_eq!(sb.mode("/home/azureuser/.ssh/authorized_keys"), 0o600);
        assert_eq!(sb.mode("/home/azureuser/.ssh"), 0o700);
        // OpenSSH itself reads every line (types, blobs, certificates, options)
        let fps = fingerprints(&sb.p("/home/azureuser/.ssh/authorized_keys"));
        assert_eq!(fps.len(), keys.len(), "{fps:?}");
        assert!(fps.iter().any(|l| l.ends_with("(ED25519-SK)")), "{fps:?}");
        assert!(fps.iter().any(|l| l.ends_with("(ECDSA-SK)")), "{fps:?}");
        assert!(fps.iter().any(|l| l.ends_with("(ED25519-CERT)")), "{fps:?}");
        // a second run adds nothing and keeps the file as it was
        let out = sb.install(&keys);
        assert!(matches!(&out, Outcome::Done(d) if d.starts_with("0 key(s) added")), "{out:?}");
        assert_eq!(sb.read("/home/azureuser/.ssh/authorized_keys"), ak);
    }

    #[test]
    fn existing_lines_kept_duplicates_dropped_invalid_skipped() {
        let sb = Sandbox::new();
        let existing = format!("# managed by hand\nrestrict {}\n", ed_line("mine"));
        sb.write("/home/azureuser/.ssh/authorized_keys", &existing);
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr5fhwHBqAEMnGzYHNmFhgQ2d3M6kRrJpXSM8lX8y4u other";
        let out = sb.install(&[
            key(&ed_line("platform-comment")),
            key(other),
            key(&format!("{other}\r\n")),
            key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGr5fhwHBqAEMnGzYHNmFhgQ2d3M6kRrJpXSM8lX8y4u type-mismatch"),
        ]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("1 key(s) added") && d.contains("1 invalid")), "{out:?}");
        assert_eq!(sb.read("/home/azureuser/.ssh/authorized_keys"), format!("{existing}{other}\n"));
    }

    fn user_at(home: &str) -> Passwd {
        Passwd { name: "azureuser".into(), uid: 1000, gid: 1000, home: home.into(), shell: "/bin/sh".into() }
    }

    #[test]
    fn platform_paths_are_judged_against_the_passwd_home() {
        let u = user_at("/home/azureuser");
        let srv = user_at("/srv/azureuser");
        let custom = |p: &str| Ok(Destination::Custom(PathBuf::from(p)));
        assert_eq!(platform_destination("/home/azureuser/.ssh/authorized_keys", &u), Ok(Destination::Default));
        assert_eq!(platform_destination("$HOME/azureuser/.ssh/authorized_keys", &u), Ok(Destination::Default));
        assert_eq!(platform_destination("~/.ssh/authorized_keys", &u), Ok(Destination::Default));
        assert_eq!(platform_destination("/home/azureuser//.ssh/./authorized_keys", &u), Ok(Destination::Default));
        assert_eq!(platform_destination("", &u), Ok(Destination::Default));
        // the API's /home/<user> means the passwd home
        assert_eq!(platform_destination("/home/azureuser/.ssh/authorized_keys", &srv), Ok(Destination::Default));
        assert_eq!(platform_destination("$HOME/azureuser/.ssh/extra", &srv), custom("/srv/azureuser/.ssh/extra"));
        assert_eq!(platform_destination("/srv/azureuser/keys/ak", &srv), custom("/srv/azureuser/keys/ak"));
        assert_eq!(platform_destination("~azureuser/k", &u), custom("/home/azureuser/k"));
        let refused = |p: &str, u: &Passwd| platform_destination(p, u).unwrap_err();
        assert!(refused("/home/azureuser/../root/.ssh/authorized_keys", &u).contains(".."));
        assert!(refused("/home/azureuser/.ssh/../../x", &u).contains(".."));
        assert!(refused("/root/.ssh/authorized_keys", &u).contains("outside"));
        assert!(refused("/home/azureuserx/.ssh/authorized_keys", &u).contains("outside"));
        assert!(refused("/home/azureuser", &u).contains("outside"));
        assert!(refused("/etc/ssh/sshd_config", &u).contains("outside"));
        assert!(refused(".ssh/authorized_keys", &u).contains("absolute"));
        assert!(refused("$HOME/other/.ssh/authorized_keys", &u).contains("outside"));
    }

    #[test]
    fn token_expansion() {
        let u = user_at("/home/azureuser");
        assert_eq!(
            expand_tokens("%h/.ssh/authorized_keys2", &u).unwrap(),
            Path::new("/home/azureuser/.ssh/authorized_keys2")
        );
        assert_eq!(expand_tokens(".ssh/%u.keys", &u).unwrap(), Path::new("/home/azureuser/.ssh/azureuser.keys"));
        assert_eq!(expand_tokens("/etc/ssh/keys/%U", &u).unwrap(), Path::new("/etc/ssh/keys/1000"));
        assert_eq!(expand_tokens("/k/100%%-%u", &u).unwrap(), Path::new("/k/100%-azureuser"));
        assert!(expand_tokens("/k/%x", &u).is_err());
        assert!(expand_tokens("/k/%", &u).is_err());
    }

    #[test]
    fn traversal_and_outside_paths_are_refused_with_a_reason() {
        let sb = Sandbox::new();
        sb.write("/root/.ssh/authorized_keys", "");
        let out = sb.install(&[
            at(&ed_line("evil"), "/home/azureuser/../../root/.ssh/authorized_keys"),
            at(&ed_line("evil2"), "/root/.ssh/authorized_keys"),
        ]);
        let Outcome::Failed(f) = out else { panic!("{out:?}") };
        assert_eq!(f.reason, "failure to write authorized_keys");
        let refused = f.supporting.iter().find(|(k, _)| k == "refused_paths").map(|(_, v)| v.clone()).unwrap();
        assert!(refused.contains("contains '..'") && refused.contains("outside the home"), "{refused}");
        assert_eq!(sb.read("/root/.ssh/authorized_keys"), "");
        // with one good key the duty succeeds and records the refusal
        let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr5fhwHBqAEMnGzYHNmFhgQ2d3M6kRrJpXSM8lX8y4u other";
        let out = sb.install(&[
            at(&ed_line("evil"), "/root/.ssh/authorized_keys"),
            at(other, "/home/azureuser/.ssh/authorized_keys"),
        ]);
        assert!(
            matches!(&out, Outcome::Done(d) if d.contains("refused path(s): /root/.ssh/authorized_keys: outside")),
            "{out:?}"
        );
        assert_eq!(sb.read("/home/azureuser/.ssh/authorized_keys"), format!("{other}\n"));
        assert_eq!(sb.read("/root/.ssh/authorized_keys"), "");
    }

    #[test]
    fn custom_path_inside_home_is_honoured() {
        let sb = Sandbox::new();
        let out = sb.install(&[at(&ed_line("x"), "$HOME/azureuser/keys/sub/ak")]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("/home/azureuser/keys/sub/ak")), "{out:?}");
        assert_eq!(sb.read("/home/azureuser/keys/sub/ak"), format!("{}\n", ed_line("x")));
        assert_eq!(sb.mode("/home/azureuser/keys"), 0o700);
        assert_eq!(sb.mode("/home/azureuser/keys/sub/ak"), 0o600);
        assert!(!sb.p("/home/azureuser/.ssh/authorized_keys").exists());
    }

    #[test]
    fn symlinks_under_home_are_refused() {
        // a symlinked .ssh (pointing elsewhere in the image)
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.p("/etc/elsewhere")).unwrap();
        std::os::unix::fs::symlink(sb.p("/etc/elsewhere"), sb.p("/home/azureuser/.ssh")).unwrap();
        let out = sb.install(&[key(&ed_line("x"))]);
        let Outcome::Failed(f) = &out else { panic!("{out:?}") };
        assert_eq!(f.reason, "failure to write authorized_keys");
        assert!(f.to_string().contains("symlink"), "{f}");
        assert!(!sb.p("/etc/elsewhere/authorized_keys").exists());
        // a symlinked directory on a custom path
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.p("/etc/elsewhere")).unwrap();
        std::os::unix::fs::symlink(sb.p("/etc/elsewhere"), sb.p("/home/azureuser/keys")).unwrap();
        let out = sb.install(&[at(&ed_line("x"), "/home/azureuser/keys/ak")]);
        assert!(matches!(&out, Outcome::Failed(f) if f.to_string().contains("symlink")), "{out:?}");
        assert!(!sb.p("/etc/elsewhere/ak").exists());
        // a symlinked authorized_keys
        let sb = Sandbox::new();
        sb.write("/etc/shadow-copy", "secret\n");
        std::fs::create_dir_all(sb.p("/home/azureuser/.ssh")).unwrap();
        std::os::unix::fs::symlink(sb.p("/etc/shadow-copy"), sb.p("/home/azureuser/.ssh/authorized_keys")).unwrap();
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(matches!(&out, Outcome::Failed(f) if f.to_string().contains("symlink")), "{out:?}");
        assert_eq!(sb.read("/etc/shadow-copy"), "secret\n");
    }

    #[test]
    fn authorized_keys_file_from_the_sshd_configuration() {
        let sb = Sandbox::new();
        sb.write(
            "/etc/ssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\nAuthorizedKeysFile .ssh/authorized_keys\nMatch User azureuser\n  AuthorizedKeysFile /nope\n",
        );
        sb.write(
            "/etc/ssh/sshd_config.d/50-image.conf",
            "AuthorizedKeysFile %h/.ssh/authorized_keys2 .ssh/authorized_keys\n",
        );
        // the platform's usual path means "the file sshd reads"
        let out = sb.install(&[at(&ed_line("x"), "/home/azureuser/.ssh/authorized_keys")]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("authorized_keys2")), "{out:?}");
        assert_eq!(sb.read("/home/azureuser/.ssh/authorized_keys2"), format!("{}\n", ed_line("x")));
        assert!(!sb.p("/home/azureuser/.ssh/authorized_keys").exists());
        assert_eq!(sb.mode("/home/azureuser/.ssh"), 0o700);

        // an administrator's file outside the home: written there, directory root's
        let sb = Sandbox::new();
        sb.write("/etc/ssh/sshd_config", "AuthorizedKeysFile /etc/ssh/keys/%u\n");
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("/etc/ssh/keys/azureuser")), "{out:?}");
        assert_eq!(sb.read("/etc/ssh/keys/azureuser"), format!("{}\n", ed_line("x")));
        assert_eq!(sb.mode("/etc/ssh/keys/azureuser"), 0o600);

        // `none`: keys still go to the default file, with a note
        let sb = Sandbox::new();
        sb.write("/etc/ssh/sshd_config", "AuthorizedKeysFile none\n");
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("AuthorizedKeysFile none")), "{out:?}");
        assert!(sb.p("/home/azureuser/.ssh/authorized_keys").exists());
    }

    #[test]
    fn selinux_relabel_and_its_absence() {
        let sb = Sandbox::new();
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(sb.sys.commands().is_empty(), "no SELinux, no restorecon");
        assert!(matches!(&out, Outcome::Done(d) if !d.contains("restorecon")));

        let sb = Sandbox::new();
        sb.write("/sys/fs/selinux/enforce", "1");
        sb.sys.script("restorecon", CommandOutput { status: Some(0), ..Default::default() });
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("relabelled with restorecon")), "{out:?}");
        let cmds = sb.sys.commands();
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].display(), format!("restorecon -R {}", sb.p("/home/azureuser/.ssh").display()));

        let sb = Sandbox::new();
        sb.write("/sys/fs/selinux/enforce", "1");
        sb.sys.uninstall("restorecon");
        let out = sb.install(&[key(&ed_line("x"))]);
        assert!(matches!(&out, Outcome::Done(d) if d.contains("restorecon is not installed")), "{out:?}");
        assert!(sb.p("/home/azureuser/.ssh/authorized_keys").exists());
    }
}
