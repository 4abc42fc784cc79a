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
        .rev()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("UID_MIN")).then(|| w.next()?.parse().ok()).flatten()
        })
        .next()
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
    let clash = group_exists(&group_text, name);
    if clash {
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
            let joined = if clash { format!(", joined the existing group {name}") } else { String::new() };
            let detail = format!("created user {name} (uid {}, home {}{joined})", p.uid, p.home);
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

    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    fn sandbox(passwd: &str, login_defs: Option<&str>) -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), passwd).unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nvideo:x:44:\nsudo:x:27:\n").unwrap();
        if let Some(t) = login_defs {
            std::fs::write(dir.path().join("etc/login.defs"), t).unwrap();
        }
        let sys = RecordingSystem::new(dir.path());
        // useradd "fails" so that nothing is created: the argv is what the tests look at
        sys.script("useradd", CommandOutput { status: Some(1), ..Default::default() });
        (dir, sys)
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
                          svc:x:600:600::/var/svc:/bin/sh\nazureuser:x:1500:1500::/srv/azureuser:/bin/sh\n";

    #[test]
    fn uid_min_from_login_defs() {
        let (_d, sys) = sandbox(PASSWD, Some("# UID_MIN 5\nUID_MIN\t\t 500\nUID_MAX 60000\n"));
        assert_eq!(uid_min(&sys), 500);
        let (_d, sys) = sandbox(PASSWD, None);
        assert_eq!(uid_min(&sys), 1000);
    }

    #[test]
    fn existing_users_adopted_system_accounts_refused() {
        let (_d, sys) = sandbox(PASSWD, None);
        let (p, out) = ensure(&sys, "azureuser", &[]);
        assert_eq!(p.unwrap().home, "/srv/azureuser", "home from passwd");
        assert_eq!(out, Outcome::Done("adopted existing user azureuser".into()));
        for name in ["daemon", "svc", "root"] {
            let (p, out) = ensure(&sys, name, &[]);
            assert!(p.is_none());
            let Outcome::Failed(f) = out else { panic!("{name}: {out:?}") };
            assert_eq!(f.reason, "refusing to modify a system account");
            assert!(f.to_string().contains("uid_min=1000") || f.to_string().contains("1000"), "{f}");
        }
        // UID_MIN 500 makes svc (600) a regular account; the switch allows system accounts
        let (_d, sys) = sandbox(PASSWD, Some("UID_MIN 500\n"));
        assert!(matches!(ensure(&sys, "svc", &[]).1, Outcome::Done(_)));
        let policy = UserDuty { allow_system_user: true, ..UserDuty::default() };
        assert!(matches!(ensure_with(&sys, "daemon", &policy).1, Outcome::Done(_)));
        assert!(sys.commands().is_empty(), "nothing run for existing users");
    }

    #[test]
    fn group_clash_joins_or_fails_as_configured() {
        let (_d, sys) = sandbox(PASSWD, None);
        let _ = ensure(&sys, "video", &["sudo".to_string(), "wheel".to_string()]);
        let argv = sys.commands()[0].args.clone();
        assert_eq!(&argv[..5], ["-m", "-G", "sudo", "-g", "video"], "only groups that exist; join the clash");
        let (_d, sys) = sandbox(PASSWD, None);
        let policy = UserDuty { on_group_clash: GroupClash::Fail, ..UserDuty::default() };
        let (p, out) = ensure_with(&sys, "video", &policy);
        assert!(p.is_none());
        assert!(matches!(out, Outcome::Failed(f) if f.reason == "user name clashes with an existing group"));
        assert!(sys.commands().is_empty(), "useradd not run");
    }
}
