//! The admin password: SHA-512 crypt computed in-process with a random salt and handed to `chpasswd -e` on stdin
//! (never argv, logs or KVP). No password → the account stays/gets locked.

use std::time::Duration;

use super::{excerpt, Outcome};
use crate::report::Failure;
use crate::secret::Secret;
use crate::system::{Command, System};

const SALT_CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// 16 random characters of `[./0-9A-Za-z]` (glibc's maximum salt length).
pub fn random_salt() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| e.to_string())?;
    Ok(b.iter().map(|x| SALT_CHARS[(*x as usize) % SALT_CHARS.len()] as char).collect())
}

/// `$6$[rounds=N$]salt$hash` (rounds 5000 is the default and is not written).
pub fn sha512_crypt(password: &[u8], salt: &str, rounds: usize) -> Result<Secret, String> {
    let params = sha_crypt::Sha512Params::new(rounds).map_err(|e| format!("{e:?}"))?;
    let hash = sha_crypt::sha512_crypt_b64(password, salt.as_bytes(), &params).map_err(|e| format!("{e:?}"))?;
    let prefix = if rounds == 5000 { String::new() } else { format!("rounds={rounds}$") };
    Ok(Secret::new(format!("$6${prefix}{salt}${hash}").into_bytes()))
}

fn root_args(sys: &dyn System) -> Vec<String> {
    if sys.is_live() {
        Vec::new()
    } else {
        vec!["--root".into(), sys.root().display().to_string()]
    }
}

fn run(sys: &dyn System, cmd: Command, what: &str) -> Result<(), Failure> {
    let reason = || Failure::new("failure to set password").with("command", what);
    match sys.run(&cmd) {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(reason()
            .with("exit_status", o.status.map(|s| s.to_string()).unwrap_or_else(|| "signal".into()))
            .with("stderr", excerpt(&o.stderr))),
        Err(e) => Err(reason().with("exception", e)),
    }
}

/// `sha512_crypt` with a fresh random salt and the default 5000 rounds.
fn hash(password: &Secret) -> Result<Secret, String> {
    random_salt().and_then(|salt| sha512_crypt(password.expose(), &salt, 5000))
}

/// The password hash (milliseconds of CPU) computed on a helper thread while earlier steps — useradd — run.
pub struct Prehash {
    input: Secret,
    handle: std::thread::JoinHandle<Result<Secret, String>>,
}

impl Prehash {
    /// Start hashing `password` on a helper thread; `None` if no thread could be started (then `apply` hashes).
    pub fn start(password: &Secret) -> Option<Prehash> {
        let pw = password.clone();
        let handle = std::thread::Builder::new().name("azprov-pwhash".into()).spawn(move || hash(&pw)).ok()?;
        Some(Prehash { input: password.clone(), handle })
    }

    /// The hash, if it was started for this very password.
    fn join_for(self, password: &Secret) -> Option<Result<Secret, String>> {
        let result = self.handle.join().ok()?;
        (self.input == *password).then_some(result)
    }
}

/// Whether sshd runs without PAM (`UsePAM no`, also OpenSSH's built-in default when the files say nothing). sshd
/// then refuses even key logins for a `!`-locked account ("account is locked"), so we lock with `*`.
/// No sshd configuration at all → `false`.
pub fn sshd_without_pam(sys: &dyn System) -> bool {
    let (eff, _) = super::sshd::effective(sys, None);
    eff.is_some_and(|e| e.get("UsePAM").map(|s| s.first()).as_deref() != Some("yes"))
}

/// Feed `user:<value>` to `chpasswd -e` on stdin.
fn chpasswd(sys: &dyn System, user: &str, value: &[u8]) -> Result<(), Failure> {
    let mut line = Vec::with_capacity(user.len() + value.len() + 2);
    line.extend_from_slice(user.as_bytes());
    line.push(b':');
    line.extend_from_slice(value);
    line.push(b'\n');
    let mut args = root_args(sys);
    args.push("-e".into());
    let cmd =
        Command { program: "chpasswd".into(), args, stdin: Some(Secret::new(line)), timeout: Duration::from_secs(30) };
    run(sys, cmd, "chpasswd -e")
}

/// Set (or lock) the password of `user`. `newly_created`: useradd already left the account locked.
/// Without a password the account is locked: `!` (useradd's default, or `usermod -L`), or `*` written through
/// `chpasswd -e` when sshd runs with `UsePAM no` (see [`sshd_without_pam`]).
pub fn apply(sys: &dyn System, user: &str, password: Option<&Secret>, newly_created: bool) -> Outcome {
    apply_prehashed(sys, user, password, newly_created, None)
}

/// As [`apply`], using the hash a [`Prehash`] computed meanwhile when it was started for the same password.
pub fn apply_prehashed(
    sys: &dyn System,
    user: &str,
    password: Option<&Secret>,
    newly_created: bool,
    prehash: Option<Prehash>,
) -> Outcome {
    let Some(pw) = password else {
        if sshd_without_pam(sys) {
            return match chpasswd(sys, user, b"*") {
                Ok(()) => Outcome::Done(format!("no password provided: {user} locked with '*' (sshd UsePAM no)")),
                Err(f) => Outcome::Failed(f),
            };
        }
        if newly_created {
            return Outcome::Done(format!("no password provided: {user} stays locked (useradd default)"));
        }
        let mut args = root_args(sys);
        args.extend(["-L".to_string(), user.to_string()]);
        let cmd = Command { program: "usermod".into(), args, stdin: None, timeout: Duration::from_secs(30) };
        return match run(sys, cmd, "usermod -L") {
            Ok(()) => Outcome::Done(format!("no password provided: {user} locked")),
            Err(f) => Outcome::Failed(f),
        };
    };
    let hashed = match prehash.and_then(|p| p.join_for(pw)).unwrap_or_else(|| hash(pw)) {
        Ok(h) => h,
        Err(e) => return Outcome::Failed(Failure::new("failure to set password").with("exception", e)),
    };
    match chpasswd(sys, user, hashed.expose()) {
        Ok(()) => Outcome::Done(format!("password set for {user} (sha512-crypt)")),
        Err(f) => Outcome::Failed(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        let h = sha512_crypt(b"Hello world!", "saltstringsaltst", 10000).unwrap();
        assert_eq!(
            std::str::from_utf8(h.expose()).unwrap(),
            "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."
        );
    }

    #[test]
    fn salts_are_random_and_valid() {
        let a = random_salt().unwrap();
        let b = random_salt().unwrap();
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| SALT_CHARS.contains(&c)));
        let h = sha512_crypt("£ café 김치".as_bytes(), &a, 5000).unwrap();
        assert!(std::str::from_utf8(h.expose()).unwrap().starts_with(&format!("$6${a}$")));
    }

    #[test]
    fn prehash_is_used_only_for_the_same_password() {
        let dir = tempfile::tempdir().unwrap();
        let sys = crate::system::record::RecordingSystem::new(dir.path());
        sys.script("chpasswd", crate::system::CommandOutput { status: Some(0), ..Default::default() });
        let pw = Secret::new(b"Sup3r-Secret!".to_vec());
        let pre = Prehash::start(&pw).unwrap();
        assert!(matches!(apply_prehashed(&sys, "azureuser", Some(&pw), true, Some(pre)), Outcome::Done(_)));
        // started for another password: ignored, the right one is hashed
        let pre = Prehash::start(&Secret::new(b"other".to_vec())).unwrap();
        assert!(matches!(apply_prehashed(&sys, "azureuser", Some(&pw), true, Some(pre)), Outcome::Done(_)));
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 2);
        for c in &cmds {
            let line = String::from_utf8(c.stdin.as_ref().unwrap().expose().to_vec()).unwrap();
            let hash = line.trim_end().strip_prefix("azureuser:").unwrap();
            let salt = hash.split('$').nth(2).unwrap();
            let again = sha512_crypt(b"Sup3r-Secret!", salt, 5000).unwrap();
            assert_eq!(again.expose(), hash.as_bytes(), "the hash is of the password given to apply");
        }
    }

    #[test]
    fn password_goes_to_stdin_only() {
        let dir = tempfile::tempdir().unwrap();
        let sys = crate::system::record::RecordingSystem::new(dir.path());
        sys.script("chpasswd", crate::system::CommandOutput { status: Some(0), ..Default::default() });
        let pw = Secret::new(b"Sup3r-Secret!".to_vec());
        let out = apply(&sys, "azureuser", Some(&pw), true);
        assert!(matches!(out, Outcome::Done(_)), "{out:?}");
        let cmds = sys.commands();
        assert_eq!(cmds.len(), 1);
        assert!(!cmds[0].display().contains("Sup3r"));
        assert!(!cmds[0].display().contains("$6$"));
        let stdin = String::from_utf8(cmds[0].stdin.as_ref().unwrap().expose().to_vec()).unwrap();
        assert!(stdin.starts_with("azureuser:$6$") && stdin.ends_with('\n'));
        assert!(!stdin.contains("Sup3r"));
    }

    fn sandbox(sshd_config: Option<&str>) -> (tempfile::TempDir, crate::system::record::RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = sshd_config {
            std::fs::create_dir_all(dir.path().join("etc/ssh")).unwrap();
            std::fs::write(dir.path().join("etc/ssh/sshd_config"), text).unwrap();
        }
        let sys = crate::system::record::RecordingSystem::new(dir.path());
        for p in ["chpasswd", "usermod"] {
            sys.script(p, crate::system::CommandOutput { status: Some(0), ..Default::default() });
        }
        (dir, sys)
    }

    fn stdin_of(sys: &crate::system::record::RecordingSystem) -> Vec<String> {
        sys.commands()
            .iter()
            .map(|c| {
                let stdin = c.stdin.as_ref().map(|s| String::from_utf8_lossy(s.expose()).to_string());
                format!("{} <{}>", c.display(), stdin.unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn without_pam_the_lock_is_a_star() {
        for config in ["UsePAM no\n", "Port 22\n", "Match User x\n  UsePAM yes\n"] {
            for created in [true, false] {
                let (d, sys) = sandbox(Some(config));
                let out = apply(&sys, "azureuser", None, created);
                assert!(matches!(&out, Outcome::Done(m) if m.contains("'*'")), "{out:?}");
                let root = d.path().display().to_string();
                assert_eq!(stdin_of(&sys), [format!("chpasswd --root {root} -e <azureuser:*\n>")], "{config}");
            }
        }
    }

    #[test]
    fn with_pam_or_without_sshd_the_lock_is_a_bang() {
        let (_d, sys) = sandbox(Some("Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n"));
        assert!(matches!(apply(&sys, "azureuser", None, true), Outcome::Done(_)));
        assert!(sys.commands().is_empty(), "useradd's `!` is kept");
        for config in [Some("UsePAM yes\n"), None] {
            let (d, sys) = sandbox(config);
            assert!(matches!(apply(&sys, "azureuser", None, false), Outcome::Done(_)));
            assert_eq!(stdin_of(&sys), [format!("usermod --root {} -L azureuser <>", d.path().display())]);
        }
    }
}
