//! Boot loader configuration shared by the NUMA and serial console duties: the kernel arguments in
//! `/etc/default/grub` (plus `/etc/default/grub.d/*.cfg`, sourced after it), `kernel` lines of grub legacy's
//! `menu.lst`/`grub.conf`, and regenerating `grub.cfg`. Text edits are pure functions; files go through `System`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::excerpt;
use crate::system::{Command, System};

pub const DEFAULT_GRUB: &str = "/etc/default/grub";
pub const DEFAULT_GRUB_D: &str = "/etc/default/grub.d";
/// Arguments for every entry (normal and recovery).
pub const CMDLINE_LINUX: &str = "GRUB_CMDLINE_LINUX";
/// Arguments for normal entries only, after `GRUB_CMDLINE_LINUX`.
pub const CMDLINE_LINUX_DEFAULT: &str = "GRUB_CMDLINE_LINUX_DEFAULT";
/// grub legacy configurations (RHEL/CentOS 6 and older, SLES 11): no regeneration step.
pub const LEGACY_CONFIGS: [&str; 2] = ["/boot/grub/menu.lst", "/boot/grub/grub.conf"];
/// Where `grub(2)-mkconfig -o` writes, first existing wins.
pub const GRUB_CFGS: [&str; 2] = ["/boot/grub2/grub.cfg", "/boot/grub/grub.cfg"];
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];
const MKCONFIG_TIMEOUT: Duration = Duration::from_secs(180);

/// One `KEY=value` shell assignment line.
struct Assign<'a> {
    /// Everything before the value (indentation, `export `, `KEY=`).
    head: &'a str,
    key: &'a str,
    value: &'a str,
    /// `"`, `'` or none.
    quote: Option<char>,
    /// Everything after the value (closing quote excluded), e.g. a comment.
    tail: &'a str,
}

fn parse_assign(line: &str) -> Option<Assign<'_>> {
    let body = line.trim_start();
    let body = body.strip_prefix("export ").map(str::trim_start).unwrap_or(body);
    let eq = body.find('=')?;
    let key = &body[..eq];
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let head_len = line.len() - body.len() + eq + 1;
    let rest = &line[head_len..];
    let (value, quote, tail) = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let inner = &rest[1..];
            let end = if q == '"' {
                let mut esc = false;
                inner.char_indices().find_map(|(i, c)| {
                    let hit = c == '"' && !esc;
                    esc = c == '\\' && !esc;
                    hit.then_some(i)
                })
            } else {
                inner.find('\'')
            }?;
            (&inner[..end], Some(q), &inner[end + 1..])
        }
        _ => {
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            (&rest[..end], None, &rest[end..])
        }
    };
    Some(Assign { head: &line[..head_len], key, value, quote, tail })
}

/// The arguments of `key` after the assignments in `text`, starting from `prev` (what earlier files set):
/// `$KEY`/`${KEY}` tokens expand to the previous value.
pub fn eval_args(text: &str, key: &str, prev: Option<Vec<String>>) -> Option<Vec<String>> {
    let mut cur = prev;
    for line in text.lines() {
        let Some(a) = parse_assign(line).filter(|a| a.key == key) else { continue };
        let mut next = Vec::new();
        for tok in a.value.split_whitespace() {
            if tok == format!("${key}") || tok == format!("${{{key}}}") {
                next.extend(cur.clone().unwrap_or_default());
            } else {
                next.push(tok.to_string());
            }
        }
        cur = Some(next);
    }
    cur
}

/// Rewrite the last assignment of `key` with `f(current arguments)`, keeping its quoting and whatever surrounds it;
/// append `KEY="…"` when there is none. Returns `text` unchanged when `f` changes nothing.
pub fn edit_args(text: &str, key: &str, f: impl FnOnce(Vec<String>) -> Vec<String>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let last = lines.iter().rposition(|l| parse_assign(l).is_some_and(|a| a.key == key));
    let current: Vec<String> = last
        .and_then(|i| parse_assign(lines[i]))
        .map(|a| a.value.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let wanted = f(current.clone());
    if wanted == current {
        return text.to_string();
    }
    let joined = wanted.join(" ");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match last.and_then(|i| parse_assign(lines[i]).map(|a| (i, a))) {
        Some((i, a)) => {
            let q = a.quote.unwrap_or('"');
            out[i] = format!("{}{q}{joined}{q}{}", a.head, a.tail);
        }
        None => out.push(format!("{key}=\"{joined}\"")),
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// grub legacy: add `arg` to every `kernel` line that lacks it.
pub fn legacy_add_arg(text: &str, arg: &str) -> String {
    let mut changed = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let mut toks = l.split_whitespace();
            if toks.next() == Some("kernel") && !toks.any(|t| t == arg) {
                changed = true;
                format!("{} {arg}", l.trim_end())
            } else {
                l.to_string()
            }
        })
        .collect();
    if !changed {
        return text.to_string();
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

/// `/etc/default/grub` then `/etc/default/grub.d/*.cfg` (sorted), those that exist.
pub fn default_files(sys: &dyn System) -> Vec<PathBuf> {
    let mut files = Vec::new();
    if sys.exists(Path::new(DEFAULT_GRUB)) {
        files.push(PathBuf::from(DEFAULT_GRUB));
    }
    if let Ok(names) = sys.read_dir(Path::new(DEFAULT_GRUB_D)) {
        files.extend(names.into_iter().filter(|n| n.ends_with(".cfg")).map(|n| Path::new(DEFAULT_GRUB_D).join(n)));
    }
    files
}

/// The effective arguments of `key` across the default files, and the file holding its last assignment.
pub fn effective_args(sys: &dyn System, key: &str) -> (Option<Vec<String>>, Option<PathBuf>) {
    let mut cur = None;
    let mut holder = None;
    for f in default_files(sys) {
        let Ok(text) = sys.read_to_string(&f) else { continue };
        let next = eval_args(&text, key, cur.clone());
        if text.lines().any(|l| parse_assign(l).is_some_and(|a| a.key == key)) {
            holder = Some(f.clone());
        }
        cur = next;
    }
    (cur, holder)
}

/// Edit `key` in the file holding its last assignment (or `/etc/default/grub`). `Ok(Some(path))` when written.
pub fn edit_default(
    sys: &dyn System,
    key: &str,
    f: impl FnOnce(Vec<String>) -> Vec<String>,
) -> std::io::Result<Option<PathBuf>> {
    let (_, holder) = effective_args(sys, key);
    let path = holder.unwrap_or_else(|| PathBuf::from(DEFAULT_GRUB));
    let old = sys.read_to_string(&path)?;
    let new = edit_args(&old, key, f);
    if new == old {
        return Ok(None);
    }
    let mode = sys.stat(&path).map(|s| s.mode).unwrap_or(0o644);
    sys.write_file(&path, new.as_bytes(), mode, None)?;
    Ok(Some(path))
}

/// Whether a tool is installed on the target: `PATH` on a live system, the usual directories in an image.
fn target_has(sys: &dyn System, tool: &str) -> bool {
    if sys.is_live() {
        sys.has_program(tool)
    } else {
        TOOL_DIRS.iter().any(|d| sys.exists(&Path::new(d).join(tool)))
    }
}

/// The command that regenerates grub.cfg on the target, or why there is none. Under a root it runs in a `chroot`
/// (an image build), never against the host's boot loader.
pub fn regenerate_command(sys: &dyn System) -> Result<Command, String> {
    let cfg = GRUB_CFGS.iter().find(|p| sys.exists(Path::new(p)));
    let candidates: [(&str, bool); 3] = [("update-grub", false), ("grub2-mkconfig", true), ("grub-mkconfig", true)];
    let Some((tool, needs_out)) = candidates.iter().find(|(t, _)| target_has(sys, t)) else {
        return Err("no grub.cfg generator (update-grub, grub2-mkconfig, grub-mkconfig) is installed".into());
    };
    let mut argv = vec![tool.to_string()];
    if *needs_out {
        let Some(cfg) = cfg else {
            return Err(format!(
                "{tool} is installed but there is no grub.cfg ({}) to regenerate",
                GRUB_CFGS.join(", ")
            ));
        };
        argv.extend(["-o".to_string(), cfg.to_string()]);
    }
    let (program, args) = if sys.is_live() {
        (argv[0].clone(), argv[1..].to_vec())
    } else {
        if !sys.has_program("chroot") {
            return Err("chroot is not installed: cannot run the image's grub tools".into());
        }
        let mut a = vec![sys.root().display().to_string()];
        a.extend(argv);
        ("chroot".to_string(), a)
    };
    Ok(Command { program, args, stdin: None, timeout: MKCONFIG_TIMEOUT })
}

/// Regenerate grub.cfg: `Ok(what ran)` or `Err(why not / what failed)`. Never fatal for the callers.
pub fn regenerate(sys: &dyn System) -> Result<String, String> {
    let cmd = regenerate_command(sys)?;
    let shown = cmd.display();
    let bls = if sys.read_dir(Path::new("/boot/loader/entries")).is_ok_and(|e| !e.is_empty()) {
        " (BLS entries in /boot/loader/entries keep their own options: update them with grubby)"
    } else {
        ""
    };
    match sys.run(&cmd) {
        Ok(o) if o.success() => Ok(format!("regenerated grub.cfg with `{shown}`{bls}")),
        Ok(o) if o.timed_out => Err(format!("`{shown}` timed out")),
        Ok(o) => Err(format!("`{shown}` failed (status {:?}): {}", o.status, excerpt(&o.stderr))),
        Err(e) => Err(format!("`{shown}` could not run: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;
    use crate::system::CommandOutput;

    fn add(arg: &'static str) -> impl FnOnce(Vec<String>) -> Vec<String> {
        move |mut v| {
            if !v.iter().any(|a| a == arg) {
                v.push(arg.to_string());
            }
            v
        }
    }

    #[test]
    fn edits_keep_quoting_and_surroundings() {
        let text = "GRUB_DEFAULT=0\n#GRUB_CMDLINE_LINUX=\"x\"\nGRUB_CMDLINE_LINUX=\"rootdelay=300 quiet\" # keep\nGRUB_CMDLINE_LINUX_DEFAULT=\"splash\"\n";
        let out = edit_args(text, CMDLINE_LINUX, add("numa=off"));
        assert_eq!(
            out,
            "GRUB_DEFAULT=0\n#GRUB_CMDLINE_LINUX=\"x\"\nGRUB_CMDLINE_LINUX=\"rootdelay=300 quiet numa=off\" # keep\nGRUB_CMDLINE_LINUX_DEFAULT=\"splash\"\n"
        );
        assert_eq!(edit_args(&out, CMDLINE_LINUX, add("numa=off")), out, "idempotent");
        assert_eq!(edit_args("GRUB_CMDLINE_LINUX=''\n", CMDLINE_LINUX, add("a=1")), "GRUB_CMDLINE_LINUX='a=1'\n");
        assert_eq!(edit_args("GRUB_CMDLINE_LINUX=\n", CMDLINE_LINUX, add("a=1")), "GRUB_CMDLINE_LINUX=\"a=1\"\n");
        assert_eq!(
            edit_args("  export GRUB_CMDLINE_LINUX=x\n", CMDLINE_LINUX, add("y")),
            "  export GRUB_CMDLINE_LINUX=\"x y\"\n"
        );
        // the last assignment is the one that counts; GRUB_CMDLINE_LINUX_DEFAULT is a different key
        assert_eq!(
            edit_args("GRUB_CMDLINE_LINUX=\"a\"\nGRUB_CMDLINE_LINUX=\"b\"\n", CMDLINE_LINUX, add("c")),
            "GRUB_CMDLINE_LINUX=\"a\"\nGRUB_CMDLINE_LINUX=\"b c\"\n"
        );
        assert_eq!(
            edit_args("GRUB_CMDLINE_LINUX_DEFAULT=\"q\"", CMDLINE_LINUX, add("c")),
            "GRUB_CMDLINE_LINUX_DEFAULT=\"q\"\nGRUB_CMDLINE_LINUX=\"c\"\n"
        );
    }

    #[test]
    fn evaluation_follows_shell_order_and_references() {
        let a = eval_args("GRUB_CMDLINE_LINUX=\"a b\"\n", CMDLINE_LINUX, None);
        assert_eq!(a, Some(vec!["a".into(), "b".into()]));
        let b = eval_args("GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX c\"\n", CMDLINE_LINUX, a.clone());
        assert_eq!(b, Some(vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(eval_args("# nothing\n", CMDLINE_LINUX, a.clone()), a);
        assert_eq!(eval_args("X=1\n", CMDLINE_LINUX, None), None);
    }

    #[test]
    fn legacy_kernel_lines() {
        let menu = "default=0\ntitle CentOS (2.6.32-754.el6.x86_64)\n\troot (hd0,0)\n\tkernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/sda1\n\tinitrd /initramfs.img\n";
        let out = legacy_add_arg(menu, "numa=off");
        assert!(out.contains("\tkernel /vmlinuz-2.6.32-754.el6.x86_64 ro root=/dev/sda1 numa=off\n"), "{out}");
        assert_eq!(out.lines().count(), menu.lines().count());
        assert_eq!(legacy_add_arg(&out, "numa=off"), out);
    }

    #[test]
    fn regeneration_commands() {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        let root = dir.path().display().to_string();
        assert!(regenerate(&sys).unwrap_err().contains("no grub.cfg generator"));
        std::fs::create_dir_all(dir.path().join("usr/sbin")).unwrap();
        std::fs::write(dir.path().join("usr/sbin/grub2-mkconfig"), "").unwrap();
        assert!(regenerate(&sys).unwrap_err().contains("no grub.cfg"));
        std::fs::create_dir_all(dir.path().join("boot/grub2")).unwrap();
        std::fs::write(dir.path().join("boot/grub2/grub.cfg"), "").unwrap();
        sys.script("chroot", CommandOutput { status: Some(0), ..Default::default() });
        assert_eq!(
            regenerate(&sys).unwrap(),
            format!("regenerated grub.cfg with `chroot {root} grub2-mkconfig -o /boot/grub2/grub.cfg`")
        );
        let c = &sys.commands()[0];
        assert_eq!(c.program, "chroot");
        assert_eq!(c.args, vec![root.clone(), "grub2-mkconfig".into(), "-o".into(), "/boot/grub2/grub.cfg".into()]);
        // update-grub wins where present (Debian/Ubuntu)
        std::fs::write(dir.path().join("usr/sbin/update-grub"), "").unwrap();
        assert_eq!(regenerate_command(&sys).unwrap().args, vec![root.clone(), "update-grub".to_string()]);
        sys.script(
            "chroot",
            CommandOutput {
                status: Some(1),
                stderr: b"/usr/sbin/grub-probe: error: failed to get canonical path of `overlay'.".to_vec(),
                ..Default::default()
            },
        );
        let e = regenerate(&sys).unwrap_err();
        assert!(e.contains("failed (status Some(1))") && e.contains("grub-probe"), "{e}");
        sys.uninstall("chroot");
        assert!(regenerate(&sys).unwrap_err().contains("chroot is not installed"));
    }
}
