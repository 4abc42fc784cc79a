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
    let (eff, _why) = super::sshd::effective(sys, Some(&user.name));
    let Some(setting) = eff.as_ref().and_then(|e| e.get("AuthorizedKeysFile")) else {
        return (default, Vec::new());
    };
    let how = eff.as_ref().map(|e| e.how.clone()).unwrap_or_default();
    let Some(first) = setting.value.split_whitespace().next().map(|t| t.trim_matches('"')) else {
        return (default, Vec::new());
    };
    if first.eq_ignore_ascii_case("none") {
        let note = format!("AuthorizedKeysFile none ({how}): keys written to {} anyway", default.display());
        return (default, vec![note]);
    }
    match expand_tokens(first, user) {
        Ok(p) => (p, Vec::new()),
        Err(e) => (default, vec![format!("{e} ({how}): using the default file")]),
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
}
