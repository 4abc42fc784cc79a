//! Keys that arrive as certificates through the wireserver (platform.md §5.8): OVF `PublicKey` entries that carry
//! only a `Fingerprint`, and `KeyPair` entries whose private key is installed at their `Path`.

use std::path::{Component, Path, PathBuf};

use super::{ssh_keys, Outcome, Passwd};
use crate::platform::certificates::CertEntry;
use crate::platform::ovf::KeyPair;
use crate::report::Failure;
use crate::system::System;

/// A platform path inside the user's home: `$HOME/<user>/…` (WALinuxAgent's form), `~/…`, or an absolute path
/// under the home directory. Anything outside the home, or with `..`, is refused.
pub fn resolve_in_home(path: &str, user: &Passwd) -> Result<PathBuf, String> {
    let home = Path::new(&user.home);
    let p = path.trim();
    let candidate = if let Some(rest) = p.strip_prefix(&format!("$HOME/{}/", user.name)) {
        home.join(rest)
    } else if let Some(rest) = p.strip_prefix("$HOME/") {
        home.join(rest)
    } else if let Some(rest) = p.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(p)
    };
    if candidate.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{path}: `..` is not allowed"));
    }
    if !candidate.is_absolute() || !candidate.starts_with(home) || candidate == home {
        return Err(format!("{path}: not inside the home directory {}", user.home));
    }
    Ok(candidate)
}

/// No component between the home directory and `path` may be a symlink.
fn no_symlink_below_home(sys: &dyn System, home: &Path, path: &Path) -> Result<(), String> {
    let mut cur = home.to_path_buf();
    if let Ok(rel) = path.strip_prefix(home) {
        for c in rel.components() {
            cur.push(c);
            if let Ok(st) = sys.stat(&cur) {
                if st.is_symlink {
                    return Err(format!("{} is a symlink", cur.display()));
                }
            }
        }
    }
    Ok(())
}

fn find<'c>(certs: &'c [CertEntry], fingerprint: &str) -> Option<&'c CertEntry> {
    certs.iter().find(|c| c.thumbprint.eq_ignore_ascii_case(fingerprint.trim()))
}

/// Install what the platform asked for: public keys (by fingerprint) into `authorized_keys`, key pairs at their
/// paths (private key 0600 and `<path>.pub` 0644, owned by the user).
pub fn install(
    sys: &dyn System,
    user: &Passwd,
    certs: &[CertEntry],
    public_keys: &[String],
    pairs: &[KeyPair],
) -> Outcome {
    let mut done = Vec::new();
    let mut lines = Vec::new();
    for fp in public_keys {
        match find(certs, fp).and_then(|c| c.public_key_openssh.clone()) {
            Some(key) => lines.push(crate::plan::SshKey { key, path: None }),
            None => {
                return Outcome::Failed(
                    Failure::new("failure to find certificate for public key").with("fingerprint", fp),
                )
            }
        }
    }
    if !lines.is_empty() {
        match ssh_keys::install(sys, user, &lines) {
            Outcome::Done(d) => done.push(format!("certificate keys: {d}")),
            Outcome::Skipped(s) => done.push(s),
            Outcome::Failed(f) => return Outcome::Failed(f),
        }
    }
    let owner = Some((user.uid, user.gid));
    for kp in pairs {
        let Some(entry) = find(certs, &kp.fingerprint) else {
            return Outcome::Failed(
                Failure::new("failure to find certificate for key pair").with("fingerprint", &kp.fingerprint),
            );
        };
        let (Some(key), Some(public)) = (&entry.private_key_pem, &entry.public_key_openssh) else {
            return Outcome::Failed(
                Failure::new("failure to find private key for key pair").with("fingerprint", &kp.fingerprint),
            );
        };
        let raw = kp.path.clone().unwrap_or_else(|| format!("{}/.ssh/id_rsa", user.home));
        let path = match resolve_in_home(&raw, user) {
            Ok(p) => p,
            Err(e) => return Outcome::Failed(Failure::new("refused key pair path").with("detail", e)),
        };
        let home = Path::new(&user.home);
        if let Err(e) = no_symlink_below_home(sys, home, &path) {
            return Outcome::Failed(Failure::new("refused key pair path").with("detail", e));
        }
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                sys.create_dir_all(dir, 0o700, owner)?;
            }
            sys.write_file(&path, key.expose(), 0o600, owner)?;
            let mut pub_path = path.clone().into_os_string();
            pub_path.push(".pub");
            sys.write_file(Path::new(&pub_path), format!("{public}\n").as_bytes(), 0o644, owner)
        };
        if let Err(e) = write() {
            return Outcome::Failed(
                Failure::new("failure to write key pair").with("path", path.display()).with("exception", e),
            );
        }
        done.push(format!("key pair {} at {}", entry.thumbprint, path.display()));
    }
    if done.is_empty() {
        Outcome::Skipped("no certificate-based keys requested".into())
    } else {
        Outcome::Done(done.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Passwd {
        Passwd {
            name: "azureuser".into(),
            uid: 1000,
            gid: 1000,
            home: "/home/azureuser".into(),
            shell: "/bin/sh".into(),
        }
    }

    #[test]
    fn paths() {
        let u = user();
        assert_eq!(
            resolve_in_home("$HOME/azureuser/.ssh/id_rsa", &u).unwrap(),
            PathBuf::from("/home/azureuser/.ssh/id_rsa")
        );
        assert_eq!(
            resolve_in_home("/home/azureuser/.ssh/id_rsa", &u).unwrap(),
            PathBuf::from("/home/azureuser/.ssh/id_rsa")
        );
        assert_eq!(resolve_in_home("~/.ssh/k", &u).unwrap(), PathBuf::from("/home/azureuser/.ssh/k"));
        assert!(resolve_in_home("/root/.ssh/id_rsa", &u).is_err());
        assert!(resolve_in_home("/home/azureuser/../root/x", &u).is_err());
        assert!(resolve_in_home("/home/azureuserX/x", &u).is_err());
        assert!(resolve_in_home("relative/x", &u).is_err());
    }

    #[test]
    fn key_pair_written_with_modes_and_missing_cert_fails() {
        let dir = tempfile::tempdir().unwrap();
        let sys = crate::system::RealSystem::new(dir.path());
        sys.create_dir_all(Path::new("/home/azureuser"), 0o755, None).unwrap();
        let mut u = user();
        u.uid = 0;
        u.gid = 0;
        let entry = CertEntry {
            thumbprint: "ABCD".into(),
            cert_der: vec![],
            public_key_openssh: Some("ssh-rsa AAAAB3NzaC1yc2E= x".into()),
            private_key_pem: Some(crate::secret::Secret::new(b"-----BEGIN PRIVATE KEY-----\n".to_vec())),
        };
        let kp = KeyPair { fingerprint: "abcd".into(), path: Some("$HOME/azureuser/.ssh/id_rsa".into()) };
        let out = install(&sys, &u, std::slice::from_ref(&entry), &[], std::slice::from_ref(&kp));
        assert!(matches!(out, Outcome::Done(_)), "{out:?}");
        assert_eq!(sys.stat(Path::new("/home/azureuser/.ssh/id_rsa")).unwrap().mode, 0o600);
        assert_eq!(sys.stat(Path::new("/home/azureuser/.ssh/id_rsa.pub")).unwrap().mode, 0o644);
        assert_eq!(sys.stat(Path::new("/home/azureuser/.ssh")).unwrap().mode, 0o700);
        let missing = KeyPair { fingerprint: "FFFF".into(), path: None };
        match install(&sys, &u, &[entry], &[], &[missing]) {
            Outcome::Failed(f) => assert_eq!(f.reason, "failure to find certificate for key pair"),
            o => panic!("{o:?}"),
        }
    }
}
