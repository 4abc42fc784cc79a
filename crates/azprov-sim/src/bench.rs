//! `azprov-sim bench`: run the agent against the simulator several times on fresh sandbox roots and print the
//! median wall time from process start to Ready received, CPU (children included), peak RSS and binary size.
//! Figures are printed, never asserted.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{self, Sandbox};
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

pub fn run(opts: BenchOptions, out: &mut dyn Write) -> Result<(), String> {
    let agent = agent::find_agent(opts.agent.as_deref())?;
    let size = std::fs::metadata(&agent).map_err(|e| e.to_string())?.len();
    let stripped = std::process::Command::new("file")
        .arg(&agent)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(", stripped"));
    let vm = VmDefinition::default();
    let (mut ready, mut exit, mut cpu, mut hwm, mut tree) = (vec![], vec![], vec![], vec![], vec![]);
    for i in 0..opts.warmup + opts.runs {
        let root = agent::fresh_dir("azprov-bench").map_err(|e| e.to_string())?;
        let _sandbox = Sandbox { root: root.clone(), keep: false };
        agent::prepare_sandbox(&vm, &root, UdfLayout::V102).map_err(|e| e.to_string())?;
        let sim = agent::start_simulator(&vm).map_err(|e| e.to_string())?;
        let mut cmd = agent::agent_command(&agent, &root, &sim, "warn");
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let (u, started) = agent::run_measured(cmd).map_err(|e| e.to_string())?;
        let Some(at) = sim.ready_at() else {
            return Err(format!("run {i}: no Ready (agent exit code {:?})", u.exit_code));
        };
        if i < opts.warmup {
            continue;
        }
        ready.push(ms(at.duration_since(started)));
        exit.push(ms(u.wall));
        cpu.push(ms(u.cpu));
        hwm.push(u.agent_hwm_kib as f64 / 1024.0);
        tree.push(u.tree_maxrss_kib as f64 / 1024.0);
    }
    let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
    let min = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::min);
    let mut w = |s: String| {
        let _ = writeln!(out, "{s}");
    };
    w(format!("azprov benchmark: {} runs (+{} warm-up), sandbox root, simulator on 127.0.0.1", opts.runs, opts.warmup));
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
    let (rmin, rmax) = (min(&ready), max(&ready));
    w(format!("  start → Ready     median {:.2} ms   (min {rmin:.2}, max {rmax:.2})", median(&mut ready)));
    w(format!("  start → exit      median {:.2} ms", median(&mut exit)));
    w(format!("  CPU user+sys      median {:.2} ms   (children included)", median(&mut cpu)));
    w(format!("  peak RSS, agent   max {:.2} MiB     (VmHWM of the azprov process, sampled)", max(&hwm)));
    w(format!(
        "  peak RSS, tree    max {:.2} MiB     (wait4 ru_maxrss: largest process incl. useradd/chpasswd)",
        max(&tree)
    ));
    Ok(())
}
