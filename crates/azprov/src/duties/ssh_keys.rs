//! SSH public keys into the user's `authorized_keys`: validated, merged with what is there, de-duplicated,
//! written atomically with the modes sshd's StrictModes wants.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::{Outcome, Passwd};
use crate::report::Failure;
use crate::system::System;

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

fn io_failure(path: &Path, e: std::io::Error) -> Failure {
    Failure::new("failure to write authorized_keys").with("path", path.display()).with("exception", e)
}

/// Write `keys` for `user` into `~/.ssh/authorized_keys` (0700 dir, 0600 file, owned by the user).
pub fn install(sys: &dyn System, user: &Passwd, keys: &[String]) -> Outcome {
    let mut valid = Vec::new();
    let mut rejected = 0;
    for k in keys {
        match parse(k) {
            Ok(pk) => valid.push(pk),
            Err(e) => {
                rejected += 1;
                tracing::warn!("skipping an SSH key: {e}");
            }
        }
    }
    if valid.is_empty() {
        return if rejected > 0 {
            Outcome::Failed(Failure::new("no valid ssh public key").with("rejected", rejected))
        } else {
            Outcome::Skipped("no SSH public keys provided".into())
        };
    }
    let owner = Some((user.uid, user.gid));
    let ssh_dir = PathBuf::from(&user.home).join(".ssh");
    let path = ssh_dir.join("authorized_keys");
    if let Err(e) = sys.create_dir_all(&ssh_dir, 0o700, owner) {
        return Outcome::Failed(io_failure(&ssh_dir, e));
    }
    match sys.stat(&ssh_dir) {
        Ok(st) if st.is_dir && !st.is_symlink && (st.uid == user.uid || st.uid == 0) => {}
        Ok(_) => {
            return Outcome::Failed(io_failure(&ssh_dir, std::io::Error::other("not a directory owned by the user")))
        }
        Err(e) => return Outcome::Failed(io_failure(&ssh_dir, e)),
    }
    let existing = match sys.stat(&path) {
        Ok(st) if st.is_symlink => {
            return Outcome::Failed(io_failure(&path, std::io::Error::other("is a symlink")));
        }
        Ok(_) => match sys.read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(io_failure(&path, e)),
        },
        Err(_) => String::new(),
    };
    let (text, added) = merge(&existing, &valid);
    let write = sys
        .write_file(&path, text.as_bytes(), 0o600, owner)
        .and_then(|_| sys.set_mode(&ssh_dir, 0o700))
        .and_then(|_| sys.set_owner(&ssh_dir, user.uid, user.gid));
    if let Err(e) = write {
        return Outcome::Failed(io_failure(&path, e));
    }
    let mut detail = format!("{added} key(s) added to {}", path.display());
    if rejected > 0 {
        detail.push_str(&format!(", {rejected} invalid key(s) skipped"));
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
