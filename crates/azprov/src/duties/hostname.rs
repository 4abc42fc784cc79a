//! Host name: `/etc/hostname`, the kernel host name (live only), and `/etc/hosts` so the name resolves.

use std::path::Path;

use super::Outcome;
use crate::report::Failure;
use crate::system::System;

/// The short name to set: the part before the first `.`, at most 64 bytes (HOST_NAME_MAX).
pub fn normalize(name: &str) -> Option<String> {
    let short = name.trim().split('.').next().unwrap_or("");
    let mut n = short.len().min(64);
    while !short.is_char_boundary(n) {
        n -= 1;
    }
    let s = &short[..n];
    let valid = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    valid.then(|| s.to_string())
}

/// `/etc/hosts` with a `127.0.1.1 <name>` line (replacing an earlier `127.0.1.1` line).
pub fn hosts_with(text: &str, name: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for l in text.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !placed {
                out.push(format!("127.0.1.1\t{name}"));
                placed = true;
            }
            continue;
        }
        out.push(l.to_string());
    }
    if !placed {
        out.push(format!("127.0.1.1\t{name}"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn fail(e: impl std::fmt::Display) -> Outcome {
    Outcome::Failed(Failure::new("failure to set hostname").with("exception", e))
}

pub fn apply(sys: &dyn System, requested: &str, manage_hosts: bool) -> Outcome {
    let Some(name) = normalize(requested) else {
        return Outcome::Failed(Failure::new("invalid hostname").with("hostname", requested));
    };
    let path = Path::new("/etc/hostname");
    let mut changes = Vec::new();
    if sys.read_to_string(path).ok().as_deref().map(str::trim) != Some(name.as_str()) {
        if let Err(e) = sys.write_file(path, format!("{name}\n").as_bytes(), 0o644, None) {
            return fail(e);
        }
        changes.push("/etc/hostname");
    }
    match sys.set_kernel_hostname(&name) {
        Ok(true) => changes.push("kernel"),
        Ok(false) => {}
        Err(e) => return fail(e),
    }
    if manage_hosts {
        let nss = sys.read_to_string(Path::new("/etc/nsswitch.conf")).unwrap_or_default();
        let myhostname = nss
            .lines()
            .any(|l| l.trim_start().starts_with("hosts:") && l.split_whitespace().any(|w| w == "myhostname"));
        if !myhostname {
            let hosts = sys.read_to_string(Path::new("/etc/hosts")).unwrap_or_default();
            let new = hosts_with(&hosts, &name);
            if new != hosts {
                if let Err(e) = sys.write_file(Path::new("/etc/hosts"), new.as_bytes(), 0o644, None) {
                    return fail(e);
                }
                changes.push("/etc/hosts");
            }
        }
    }
    if changes.is_empty() {
        Outcome::Done(format!("host name {name} (unchanged)"))
    } else {
        Outcome::Done(format!("host name {name} ({})", changes.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn normalization() {
        assert_eq!(normalize("web-01").as_deref(), Some("web-01"));
        assert_eq!(normalize("web-01.abc.internal.cloudapp.net").as_deref(), Some("web-01"));
        assert_eq!(normalize(&"a".repeat(70)).map(|s| s.len()), Some(64));
        assert_eq!(normalize(""), None);
        assert_eq!(normalize("bad_name"), None);
        assert_eq!(normalize("-x"), None);
    }
    #[test]
    fn hosts_line() {
        assert_eq!(hosts_with("127.0.0.1 localhost\n", "vm"), "127.0.0.1 localhost\n127.0.1.1\tvm\n");
        assert_eq!(hosts_with("127.0.0.1 localhost\n127.0.1.1 old\n", "vm"), "127.0.0.1 localhost\n127.0.1.1\tvm\n");
    }
}
