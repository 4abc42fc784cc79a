//! `azprov-sim bench`: run the agent against the simulator several times on fresh sandbox roots and print the
//! median wall time from process start to Ready received, CPU (children included), peak RSS and binary size.
//! Figures are printed, never asserted. `--live` measures the agent with root `/` inside a throwaway namespace
//! sandbox instead (see [`crate::live`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::agent::{self, ChildUsage, Sandbox};
use crate::dvd::UdfLayout;
use crate::vm::VmDefinition;

pub struct BenchOptions {
    pub agent: Option<PathBuf>,
    pub runs: usize,
    pub warmup: usize,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Figures collected over the measured runs.
#[derive(Debug, Default)]
pub struct Samples {
    ready: Vec<f64>,
    exit: Vec<f64>,
    cpu: Vec<f64>,
    hwm: Vec<f64>,
    tree: Vec<f64>,
}

impl Samples {
    pub fn push(&mut self, ready: Duration, u: &ChildUsage) {
        self.ready.push(ms(ready));
        self.exit.push(ms(u.wall));
        self.cpu.push(ms(u.cpu));
        self.hwm.push(u.agent_hwm_kib as f64 / 1024.0);
        self.tree.push(u.tree_maxrss_kib as f64 / 1024.0);
    }
    pub fn len(&self) -> usize {
        self.ready.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// Spawn one agent run with stderr going to `log` and wait for it; `Err` names the run and shows the log's tail
/// when no Ready arrived.
pub fn measured_run(
    i: usize,
    mut cmd: Command,
    sim: &crate::server::Simulator,
    log: &Path,
) -> Result<(Duration, ChildUsage), String> {
    let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdout(std::process::Stdio::null()).stderr(err);
    let (u, started) = agent::run_measured(cmd).map_err(|e| e.to_string())?;
    match sim.ready_at() {
        Some(at) => Ok((at.duration_since(started), u)),
        None => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!("run {i}: no Ready (agent exit code {:?})\n{}", u.exit_code, tail.join("\n")))
        }
    }
}

/// `azprov status` of the run just made (`root`: `None` = live), indented, for the report.
pub fn last_run_steps(agent: &Path, root: Option<&Path>) -> String {
    let mut cmd = Command::new(agent);
    cmd.arg("status");
    if let Some(r) = root {
        cmd.arg("--root").arg(r);
    }
    let out = cmd.env_clear().stdin(std::process::Stdio::null()).output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).lines().map(|l| format!("    {l}\n")).collect(),
        Err(e) => format!("    (azprov status failed: {e})\n"),
    }
}

/// Print the figures; `mode` names where the agent ran; `steps`: the last run's `azprov status`.
pub fn print_report(
    out: &mut dyn Write,
    mode: &str,
    agent: &Path,
    runs: usize,
    warmup: usize,
    s: &mut Samples,
    steps: &str,
) {
    let size = std::fs::metadata(agent).map(|m| m.len()).unwrap_or(0);
    let stripped = std::process::Command::new("file")
        .arg(agent)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(", stripped"));
    let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
    let min = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::min);
    let mut w = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(format!("azprov benchmark: {runs} runs (+{warmup} warm-up), {mode}, simulator on 127.0.0.1"));
    w(format!(
        "  binary            {} — {:.2} MiB{}",
        agent.display(),
        size as f64 / 1048576.0,
        match stripped {
            Some(true) => " (stripped)",
            Some(false) => " (NOT stripped: build with --release)",
            None => "",
        }
    ));
    let (rmin, rmax) = (min(&s.ready), max(&s.ready));
    w(format!("  start → Ready     median {:.2} ms   (min {rmin:.2}, max {rmax:.2})", median(&mut s.ready)));
    w(format!("  start → exit      median {:.2} ms", median(&mut s.exit)));
    w(format!("  CPU user+sys      median {:.2} ms   (children included)", median(&mut s.cpu)));
    w(format!("  peak RSS, agent   max {:.2} MiB     (VmHWM of the azprov process, sampled)", max(&s.hwm)));
    w(format!(
        "  peak RSS, tree    max {:.2} MiB     (wait4 ru_maxrss: largest process incl. useradd/chpasswd)",
        max(&s.tree)
    ));
    if !steps.is_empty() {
        w("  last run (azprov status):".into());
        w(steps.trim_end().to_string());
    }
}

pub fn run(opts: BenchOptions, out: &mut dyn Write) -> Result<(), String> {
    let agent = agent::find_agent(opts.agent.as_deref())?;
    let vm = VmDefinition::default();
    let mut samples = Samples::default();
    let mut steps = String::new();
    for i in 0..opts.warmup + opts.runs {
        let root = agent::fresh_dir("azprov-bench").map_err(|e| e.to_string())?;
        let _sandbox = Sandbox { root: root.clone(), keep: false };
        let sandbox_root = root.join("root");
        agent::prepare_sandbox(&vm, &sandbox_root, UdfLayout::V102).map_err(|e| e.to_string())?;
        let sim = agent::start_simulator(&vm).map_err(|e| e.to_string())?;
        let cmd = agent::agent_command(&agent, &sandbox_root, &sim, "warn");
        let (ready, u) = measured_run(i, cmd, &sim, &root.join("agent.log"))?;
        if i >= opts.warmup {
            samples.push(ready, &u);
        }
        if i + 1 == opts.warmup + opts.runs {
            steps = last_run_steps(&agent, Some(&sandbox_root));
        }
    }
    print_report(out, "sandbox root", &agent, opts.runs, opts.warmup, &mut samples, &steps);
    Ok(())
}
