//! Identity duties end to end: the real binary against the simulator on a sandbox root (root only: useradd
//! --root chroots). Password hashes checked with the system's crypt (`openssl passwd -6`), secrets searched for
//! in every file the run left behind, users that exist or clash with a group, keys and `AuthorizedKeysFile`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use azprov_sim::faults::Faults;
use azprov_sim::vm::VmDefinition;
use common::*;

fn shadow_field(env: &Env, user: &str) -> String {
    let shadow = env.read("/etc/shadow");
    let line = shadow.lines().find(|l| l.starts_with(&format!("{user}:"))).expect("shadow line");
    line.split(':').nth(1).unwrap().to_string()
}

fn passwd_fields(env: &Env, user: &str) -> Vec<String> {
    let passwd = env.read("/etc/passwd");
    let line = passwd.lines().find(|l| l.starts_with(&format!("{user}:"))).expect("passwd line");
    line.split(':').map(|s| s.to_string()).collect()
}

/// Every regular file under `dir` whose bytes contain `needle` (relative paths).
fn files_containing(dir: &Path, needle: &[u8], base: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            files_containing(&p, needle, base, out);
        } else if md.is_file() {
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(needle.len()).any(|w| w == needle) {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
}

fn keygen(dir: &Path, name: &str, kind: &str) -> String {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", kind, "-C", name, "-f"])
        .arg(dir.join(name))
        .status()
        .expect("ssh-keygen is installed");
    assert!(st.success());
    std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap()
}

#[test]
fn root_utf8_password_hash_verifies_and_secrets_stay_out_of_everything() {
    if !can_run_as_root("root_utf8_password_hash_verifies_and_secrets_stay_out_of_everything") {
        return;
    }
    let password = "Pässw0rd-£-café-김치";
    let vm = VmDefinition { password: Some(password.into()), ..VmDefinition::default() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    // `$6$<salt>$<hash>`, recomputed by the system's crypt implementation
    let hash = shadow_field(&env, &vm.username);
    let salt = hash.strip_prefix("$6$").and_then(|r| r.split('$').next()).expect("sha512-crypt hash");
    assert_eq!(salt.len(), 16);
    let o = Command::new("openssl").args(["passwd", "-6", "-salt", salt, password]).output().expect("openssl");
    assert!(o.status.success());
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), hash, "hash verifies with openssl passwd -6");
    // password login on, sudo asks for the password
    assert!(env.read("/etc/ssh/sshd_config.d/01-azprov.conf").contains("PasswordAuthentication yes\n"));
    assert_eq!(env.read("/etc/sudoers.d/90-azprov"), format!("{} ALL=(ALL) ALL\n", vm.username));
    // the password: nowhere in the image (state, KVP pool, logs, copies), nor on the agent's output
    let root = env.root();
    let mut hits = Vec::new();
    files_containing(&root, password.as_bytes(), &root, &mut hits);
    // the provisioning DVD itself (the platform's input) is the only place
    assert_eq!(hits, ["dev/sr0"], "password found in {hits:?}");
    // the hash: only in the shadow database
    let mut hits = Vec::new();
    files_containing(&root, hash.as_bytes(), &root, &mut hits);
    hits.retain(|h| h != "etc/shadow" && h != "etc/shadow-");
    assert!(hits.is_empty(), "hash found in {hits:?}");
    let pool = std::fs::read(env.path("/var/lib/hyperv/.kvp_pool_1")).unwrap();
    for secret in [password.as_bytes(), hash.as_bytes(), salt.as_bytes()] {
        assert!(!pool.windows(secret.len()).any(|w| w == secret), "secret in the KVP pool");
        assert!(!out.stderr.windows(secret.len()).any(|w| w == secret), "secret on stderr");
        assert!(!out.stdout.windows(secret.len()).any(|w| w == secret), "secret on stdout");
    }
    let status = env.azprov(&["status", "--json"], &[]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains(password));
    assert!(!env.sim.health_reports().iter().any(|r| format!("{r:?}").contains(password)));
    assert_eq!(std::fs::metadata(env.path("/etc/shadow")).unwrap().mode() & 0o007, 0, "shadow not world-readable");
}

#[test]
fn root_user_named_like_a_group_joins_it() {
    if !can_run_as_root("root_user_named_like_a_group_joins_it") {
        return;
    }
    // `video` exists as a group in the image: useradd would exit 9 without `-g video`
    let vm = VmDefinition { username: "video".into(), password: None, ..VmDefinition::default() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    let f = passwd_fields(&env, "video");
    assert_eq!(f[3], "44", "primary group is the existing video group");
    assert!(f[2].parse::<u32>().unwrap() >= 1000);
    assert!(shadow_field(&env, "video").starts_with('!'), "no password: locked");
    let ak = env.read(&format!("{}/.ssh/authorized_keys", f[5]));
    assert!(ak.contains(vm.ssh_keys[0].split_whitespace().nth(1).unwrap()));
    assert!(env.read("/etc/ssh/sshd_config.d/01-azprov.conf").contains("PasswordAuthentication no\n"));
    assert_eq!(env.read("/etc/group").lines().filter(|l| l.starts_with("video:")).count(), 1);
}

#[test]
fn root_system_account_is_refused() {
    if !can_run_as_root("root_system_account_is_refused") {
        return;
    }
    let vm = VmDefinition { username: "daemon".into(), ..VmDefinition::default() };
    let env = setup(vm, Faults::none(), Dvd::Udf102);
    let before = env.read("/etc/shadow");
    let out = env.provision(&[]);
    assert_failed_with(&env, &out, "refusing to modify a system account");
    assert_eq!(env.read("/etc/shadow"), before, "daemon's password untouched");
    assert!(!file_exists(&env.path("/usr/sbin/.ssh")));
}

#[test]
fn root_authorized_keys_file_and_use_pam_no_are_respected() {
    if !can_run_as_root("root_authorized_keys_file_and_use_pam_no_are_respected") {
        return;
    }
    let kd = tempfile::tempdir().unwrap();
    let ed = keygen(kd.path(), "ed", "ed25519");
    let ec = keygen(kd.path(), "ec", "ecdsa");
    // the portal's CRLF, a duplicate, and whitespace
    let keys = vec![format!("{}\r\n", ed.trim()), format!("  {}  ", ec.trim()), ed.clone()];
    let vm = VmDefinition { password: None, ssh_keys: keys, ..VmDefinition::default() };
    let env = setup(vm.clone(), Faults::none(), Dvd::Udf102);
    // the image: keys in authorized_keys2, no PAM
    std::fs::write(
        env.path("/etc/ssh/sshd_config.d/50-image.conf"),
        "AuthorizedKeysFile %h/.ssh/authorized_keys2 .ssh/authorized_keys\n",
    )
    .unwrap();
    let main = env.read("/etc/ssh/sshd_config").replace("UsePAM yes", "UsePAM no");
    std::fs::write(env.path("/etc/ssh/sshd_config"), main).unwrap();
    let out = env.provision(&[]);
    assert_eq!(exit_code(&out), 0);
    let home = passwd_fields(&env, &vm.username)[5].clone();
    let ak2 = format!("{home}/.ssh/authorized_keys2");
    let text = env.read(&ak2);
    assert_eq!(
        text,
        format!("{}\n{}\n", ed.trim(), ec.trim()),
        "IMDS path /home/<u>/.ssh/authorized_keys → sshd's file"
    );
    assert_eq!(env.mode(&ak2), 0o600);
    assert!(!file_exists(&env.path(&format!("{home}/.ssh/authorized_keys"))));
    let uid: u32 = passwd_fields(&env, &vm.username)[2].parse().unwrap();
    assert_eq!(std::fs::metadata(env.path(&ak2)).unwrap().uid(), uid);
    // UsePAM no: `*`, not `!` (sshd would refuse key logins for a `!` account)
    assert_eq!(shadow_field(&env, &vm.username), "*");
    assert!(env.read("/etc/ssh/sshd_config.d/01-azprov.conf").contains("PasswordAuthentication no\n"));
}

#[test]
fn root_sshd_drop_in_sorting_before_ours_fails_with_reason() {
    if !can_run_as_root("root_sshd_drop_in_sorting_before_ours_fails_with_reason") {
        return;
    }
    let vm = VmDefinition { password: None, ..VmDefinition::default() };
    let env = setup(vm, Faults::none(), Dvd::Udf102);
    std::fs::write(env.path("/etc/ssh/sshd_config.d/00-vendor.conf"), "PasswordAuthentication yes\n").unwrap();
    let out = env.provision(&[]);
    assert_failed_with(&env, &out, "failure to configure sshd");
    let d = env.last_report().description.unwrap_or_default();
    assert!(d.contains("00-vendor.conf"), "{d}");
}
