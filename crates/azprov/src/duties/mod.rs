//! One module per duty. Each takes its inputs and `&dyn System` and returns an `Outcome`; duties never talk to
//! the platform (the report does).

pub mod coexistence;
pub mod custom_data;
pub mod dhcp_client;
pub mod entropy;
pub mod grub;
pub mod host_keys;
pub mod hostname;
pub mod hostname_publish;
pub mod key_pairs;
pub mod nic_names;
pub mod nics;
pub mod numa;
pub mod password;
pub mod pps_network;
pub mod resource_disk;
pub mod routes;
pub mod scsi_timeouts;
pub mod serial_console;
pub mod ssh_keys;
pub mod sshd;
pub mod sudo;
pub mod user;

use crate::report::Failure;

/// What a duty did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done, with a short description of what changed (never secrets).
    Done(String),
    /// Not applicable or not possible here, with the reason.
    Skipped(String),
    /// Failed with a public reason.
    Failed(Failure),
}

/// A user account as the passwd database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// Parse `/etc/passwd` text and find `name`.
pub fn find_passwd(text: &str, name: &str) -> Option<Passwd> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 || f[0] != name {
            return None;
        }
        Some(Passwd {
            name: f[0].to_string(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5].to_string(),
            shell: f[6].to_string(),
        })
    })
}

/// Whether `/etc/group` text has a group called `name`.
pub fn group_exists(text: &str, name: &str) -> bool {
    text.lines().any(|l| l.split(':').next() == Some(name))
}

/// `(major, minor, patch)` from a kernel release such as `2.6.32-754.el6.x86_64`, `6.9` or `5.15.0-1019-azure`
/// (missing parts are 0). `None` when it does not start with a number.
pub fn kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut parts = [0u32; 3];
    let numeric = release.trim().split(|c: char| !c.is_ascii_digit() && c != '.').next().unwrap_or("");
    let mut seen = 0;
    for (i, p) in numeric.split('.').take(3).enumerate() {
        match p.parse() {
            Ok(n) => {
                parts[i] = n;
                seen += 1;
            }
            Err(_) => break,
        }
    }
    (seen > 0).then_some((parts[0], parts[1], parts[2]))
}

/// `(stdout/stderr excerpt)` for failure reports: one line, bounded.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let s: String = String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ");
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn passwd_lookup() {
        let t = "root:x:0:0:root:/root:/bin/bash\nazureuser:x:1000:1000::/srv/azureuser:/bin/sh\nbad:line\n";
        let p = find_passwd(t, "azureuser").unwrap();
        assert_eq!((p.uid, p.gid, p.home.as_str()), (1000, 1000, "/srv/azureuser"));
        assert!(find_passwd(t, "azure").is_none());
        assert!(group_exists("video:x:44:\n", "video"));
        assert!(!group_exists("video:x:44:\n", "vide"));
    }
    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("2.6.32-754.el6.x86_64"), Some((2, 6, 32)));
        assert_eq!(kernel_version("6.9"), Some((6, 9, 0)));
        assert_eq!(kernel_version("5.15.0-1019-azure\n"), Some((5, 15, 0)));
        assert_eq!(kernel_version("6.10.0-rc1"), Some((6, 10, 0)));
        assert_eq!(kernel_version("2.6.37"), Some((2, 6, 37)));
        assert_eq!(kernel_version("3.10.0+"), Some((3, 10, 0)));
        assert_eq!(kernel_version("6.8.0-1015-azure"), Some((6, 8, 0)));
        assert_eq!(kernel_version("linux"), None);
        assert_eq!(kernel_version(""), None);
        assert!(kernel_version("6.9.0").unwrap() >= (6, 9, 0));
        assert!(kernel_version("6.8.12").unwrap() < (6, 9, 0));
    }
}
