//! The admin user: validate the name, adopt an existing account or create it with `useradd`.

use std::path::Path;
use std::time::Duration;

use super::{excerpt, find_passwd, group_exists, Outcome, Passwd};
use crate::config::{GroupClash, UserDuty};
use crate::report::Failure;
use crate::system::{Command, System};

/// Portable user name: `[a-z_][a-z0-9_-]*`, optional trailing `$`, at most 32 bytes (what `useradd` accepts).
pub fn validate_name(name: &str) -> Result<(), Failure> {
    let bad = |why: &str| Err(Failure::new("invalid user name").with("username", name).with("detail", why));
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 32 {
        return bad("longer than 32 characters");
    }
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() || c == '_' => {}
        _ => return bad("must start with a lower-case letter or underscore"),
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return bad("only lower-case letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

/// Look a user up in the target's passwd database.
pub fn lookup(sys: &dyn System, name: &str) -> Option<Passwd> {
    let text = sys.read_to_string(Path::new("/etc/passwd")).ok()?;
    find_passwd(&text, name)
}

/// `UID_MIN` from the target's `/etc/login.defs` (1000 when absent or unreadable).
pub fn uid_min(sys: &dyn System) -> u32 {
    let text = sys.read_to_string(Path::new("/etc/login.defs")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("UID_MIN")).then(|| w.next()?.parse().ok()).flatten()
        })
        .last()
        .unwrap_or(1000)
}

/// [`ensure_with`] under the default policy (join a clashing group; refuse system accounts).
pub fn ensure(sys: &dyn System, name: &str, groups: &[String]) -> (Option<Passwd>, Outcome) {
    let policy = UserDuty { groups: groups.to_vec(), ..UserDuty::default() };
    ensure_with(sys, name, &policy)
}

/// Ensure the admin user exists; returns its passwd entry and what was done. An existing account is adopted
/// (never recreated) unless it is a system account (uid < `UID_MIN`) and `allow_system_user` is off. A group
/// named like a new user is joined (`useradd -g`) or, with `on_group_clash = "fail"`, a failure.
pub fn ensure_with(sys: &dyn System, name: &str, policy: &UserDuty) -> (Option<Passwd>, Outcome) {
    if let Err(f) = validate_name(name) {
        return (None, Outcome::Failed(f));
    }
    if let Some(p) = lookup(sys, name) {
        let min = uid_min(sys);
        if p.uid < min && !policy.allow_system_user {
            return (
                None,
                Outcome::Failed(
                    Failure::new("refusing to modify a system account")
                        .with("username", name)
                        .with("uid", p.uid)
                        .with("uid_min", min)
                        .with("detail", "set duties.user.allow_system_user = true to allow it"),
                ),
            );
        }
        return (Some(p), Outcome::Done(format!("adopted existing user {name}")));
    }
    let groups = &policy.groups;
    let group_text = sys.read_to_string(Path::new("/etc/group")).unwrap_or_default();
    let mut args: Vec<String> = vec!["-m".into()];
    let extra: Vec<&str> = groups.iter().map(|g| g.as_str()).filter(|g| group_exists(&group_text, g)).collect();
    if !extra.is_empty() {
        args.push("-G".into());
        args.push(extra.join(","));
    }
    // A group named like the user (e.g. `video`) makes useradd exit 9 under USERGROUPS_ENAB: join it instead.
    if group_exists(&group_text, name) {
        if policy.on_group_clash == GroupClash::Fail {
            return (
                None,
                Outcome::Failed(
                    Failure::new("user name clashes with an existing group")
                        .with("username", name)
                        .with("detail", "duties.user.on_group_clash = \"fail\""),
                ),
            );
        }
        args.push("-g".into());
        args.push(name.into());
    }
    if !sys.is_live() {
        args.push("--root".into());
        args.push(sys.root().display().to_string());
    }
    args.push(name.into());
    let cmd = Command { program: "useradd".into(), args, stdin: None, timeout: Duration::from_secs(60) };
    let fail = |f: Failure| (None, Outcome::Failed(f));
    match sys.run(&cmd) {
        Ok(out) if out.success() => {}
        Ok(out) => {
            return fail(
                Failure::new("failure to create user")
                    .with("username", name)
                    .with("command", "useradd")
                    .with("exit_status", out.status.map(|s| s.to_string()).unwrap_or_else(|| "signal".into()))
                    .with("stderr", excerpt(&out.stderr)),
            )
        }
        Err(e) => {
            return fail(
                Failure::new("failure to create user")
                    .with("username", name)
                    .with("command", "useradd")
                    .with("exception", e),
            )
        }
    }
    match lookup(sys, name) {
        Some(p) => {
            let detail = format!("created user {name} (uid {}, home {})", p.uid, p.home);
            (Some(p), Outcome::Done(detail))
        }
        None => fail(
            Failure::new("failure to create user").with("username", name).with("detail", "not in passwd after useradd"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["azureuser", "_svc", "a-b_c1", "machine$", "a"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Root", "1abc", "a b", "a:b", "ä", &"a".repeat(33)] {
            let f = validate_name(bad).unwrap_err();
            assert_eq!(f.reason, "invalid user name", "{bad}");
        }
    }
}
