//! `azprov-sim demo`: provision a fresh sandbox root end to end with the real agent and show what happened — the
//! agent's steps with their durations, what the platform received, and what changed in the sandbox.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::agent::{self, Sandbox};
use crate::dvd::UdfLayout;
use crate::vm::VmDefinition;

pub struct DemoOptions {
    pub vm: VmDefinition,
    pub agent: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub layout: UdfLayout,
    pub keep: bool,
}

fn line(out: &mut dyn Write, s: &str) {
    let _ = writeln!(out, "{s}");
}

fn show_file(out: &mut dyn Write, root: &Path, rel: &str) {
    match std::fs::read_to_string(root.join(rel.trim_start_matches('/'))) {
        Ok(t) => {
            line(out, &format!("  {rel}:"));
            for l in t.lines() {
                line(out, &format!("      {l}"));
            }
        }
        Err(e) => line(out, &format!("  {rel}: ({e})")),
    }
}

/// Run the demo; `Ok(true)` when the platform accepted Ready.
pub fn run(opts: DemoOptions, out: &mut dyn Write) -> Result<bool, String> {
    let agent = agent::find_agent(opts.agent.as_deref())?;
    if !rustix_is_root() {
        return Err("the demo creates a user inside the sandbox with `useradd --root`, which needs root".into());
    }
    let root = match &opts.root {
        Some(r) => r.clone(),
        None => agent::fresh_dir("azprov-demo").map_err(|e| e.to_string())?,
    };
    let sandbox = Sandbox { root: root.clone(), keep: opts.keep || opts.root.is_some() };
    let vm = &opts.vm;
    line(out, "== azprov demo: provisioning a sandbox VM against the local platform simulator");
    line(out, &format!("  agent:      {}", agent.display()));
    line(out, &format!("  sandbox:    {}", root.display()));
    line(out, &format!("  VM:         {} (vm id {}, gen{})", vm.hostname, vm.vm_id, if vm.gen2 { 2 } else { 1 }));
    agent::prepare_sandbox(vm, &root, opts.layout).map_err(|e| format!("preparing the sandbox: {e}"))?;
    let layout = match opts.layout {
        UdfLayout::V102 => "UDF 1.02",
        UdfLayout::V250 => "UDF 2.50 with a metadata partition",
    };
    line(out, &format!("  DVD:        {layout} image at {}/dev/sr0 with ovf-env.xml", root.display()));
    let sim = agent::start_simulator(vm).map_err(|e| format!("starting the simulator: {e}"))?;
    line(out, &format!("  simulator:  {} (IMDS and wireserver, loopback only)", sim.url()));
    line(out, "");
    line(out, "== agent output");
    let started = Instant::now();
    let result =
        agent::agent_command(&agent, &root, &sim, "info").output().map_err(|e| format!("running the agent: {e}"))?;
    let wall = started.elapsed();
    for l in String::from_utf8_lossy(&result.stderr).lines() {
        line(out, &format!("  | {l}"));
    }
    let ready_ms = sim.ready_at().map(|t| t.duration_since(started).as_secs_f64() * 1000.0);
    line(out, "");
    line(out, "== steps (azprov status)");
    let status = std::process::Command::new(&agent).args(["status", "--root"]).arg(&root).output();
    if let Ok(s) = status {
        for l in String::from_utf8_lossy(&s.stdout).lines() {
            line(out, &format!("  {l}"));
        }
    }
    line(out, "");
    line(out, "== what the platform received");
    for r in sim.requests() {
        let st = r.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        line(out, &format!("  {:>5} ms  {:<4} {:<60} → {st}", r.ms, r.method, r.target));
    }
    for h in sim.health_reports() {
        let detail = match (&h.sub_status, &h.description) {
            (Some(s), Some(d)) => format!(" {s}: {d}"),
            _ => String::new(),
        };
        line(out, &format!("  health report ({}): {}{detail}", h.protocol, h.state));
    }
    line(out, "");
    line(out, "== the sandbox after provisioning");
    for f in ["/etc/hostname", "/etc/ssh/sshd_config.d/01-azprov.conf", "/etc/sudoers.d/90-azprov"] {
        show_file(out, &root, f);
    }
    show_file(out, &root, &format!("/home/{}/.ssh/authorized_keys", vm.username));
    if let Ok(p) = std::fs::read_to_string(root.join("etc/passwd")) {
        if let Some(l) = p.lines().find(|l| l.starts_with(&format!("{}:", vm.username))) {
            line(out, &format!("  /etc/passwd: {l}"));
        }
    }
    line(out, "");
    let ok = sim.ready_reported() && result.status.success();
    match (ok, ready_ms) {
        (true, Some(ms)) => line(
            out,
            &format!("RESULT: Ready accepted by the platform {ms:.1} ms after the agent started (process exit after {:.1} ms)", wall.as_secs_f64() * 1000.0),
        ),
        _ => line(out, &format!("RESULT: not provisioned (agent exit code {:?})", result.status.code())),
    }
    if sandbox.keep {
        line(out, &format!("(sandbox kept at {})", root.display()));
    }
    Ok(ok)
}

fn rustix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
