//! azprov-sim command line: serve the platform endpoints, write provisioning media, print documents.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use azprov_sim::dvd::{self, UdfLayout};
use azprov_sim::faults::Faults;
use azprov_sim::ovf::ovf_env_xml;
use azprov_sim::server::Simulator;
use azprov_sim::vm::VmDefinition;

#[derive(Parser)]
#[command(
    name = "azprov-sim",
    version,
    about = "Local simulator of the Azure platform for testing azprov (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve IMDS and the wireserver on one loopback port until killed. A pre-provisioned pool VM (`pps_type` and a
    /// `[customer]` table) is assigned by `POST /azprov-sim/assign` (or `assign_after_ready_ms`); `GET
    /// /azprov-sim/pps` shows the pre-provisioning state.
    Serve {
        /// VM definition (TOML); the built-in example VM when absent.
        #[arg(long, value_name = "FILE.toml")]
        vm: Option<PathBuf>,
        /// Fault scripts (TOML, or JSON when the name ends in .json).
        #[arg(long, value_name = "FILE.toml")]
        faults: Option<PathBuf>,
        /// Loopback address to listen on.
        #[arg(long, value_name = "127.0.0.1:PORT", default_value = "127.0.0.1:0")]
        listen: String,
        /// Append every request as a JSON line to this file.
        #[arg(long, value_name = "FILE.jsonl")]
        log: Option<PathBuf>,
    },
    /// Write the provisioning DVD image (UDF with ovf-env.xml).
    Media {
        #[arg(long, value_name = "FILE.toml")]
        vm: PathBuf,
        /// The customer's media of a pool VM (what an OS-disk pre-provisioned VM boots with after assignment).
        #[arg(long)]
        customer: bool,
        #[arg(long, value_name = "IMG")]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = Layout::Udf102)]
        layout: Layout,
    },
    /// Print the ovf-env.xml of a VM definition.
    Ovf {
        #[arg(long, value_name = "FILE.toml")]
        vm: PathBuf,
        /// The customer's document of a pool VM (what `reprovisiondata` serves after assignment).
        #[arg(long)]
        customer: bool,
    },
    /// Print the built-in example VM definition as TOML.
    ExampleVm,
    /// Provision a fresh sandbox root end to end with the azprov agent and show every step (needs root).
    Demo {
        /// VM definition (TOML); the built-in example VM when absent.
        #[arg(long, value_name = "FILE.toml")]
        vm: Option<PathBuf>,
        /// The azprov binary; default: next to azprov-sim, then PATH.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Sandbox directory to use (kept); default: a fresh one under the temp dir, removed afterwards.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Layout::Udf250)]
        layout: Layout,
        /// Keep the sandbox directory.
        #[arg(long)]
        keep: bool,
    },
    /// Measure start→Ready, CPU, peak RSS and binary size over several runs (needs root).
    Bench {
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Measure a live run (root `/`) inside a throwaway mount+UTS+network namespace sandbox with overlays
        /// over /etc, /home and /var: nothing of this machine changes (needs root and util-linux unshare).
        #[arg(long)]
        live: bool,
    },
    /// Run a pre-provisioned pool VM LIVE (root `/`, real netlink link signals, DHCP from dnsmasq) inside a throwaway
    /// mount+UTS+network+PID namespace sandbox, and check it: intermediate Ready, the link signal, reprovisiondata,
    /// the customer's user and host name, final Ready. Needs root, util-linux unshare and iproute2 (Savable also
    /// dnsmasq and dhclient). Exit 0: every check passed; 1: a check failed; 77: skipped (prerequisite missing).
    PpsLive {
        #[arg(long = "type", value_enum)]
        pps_type: PpsType,
        /// The azprov binary; default: next to azprov-sim, then PATH.
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Print only the JSON summary.
        #[arg(long)]
        json: bool,
        /// Running only: no DHCP server nor client (the lease renewal after the bounce is skipped).
        #[arg(long)]
        no_dhcp: bool,
    },
    /// Internal: the inside of `pps-live`, run under unshare (options in the environment).
    #[command(name = "__pps-live", hide = true)]
    PpsLiveInner,
    /// Internal: the inside of `bench --live`, run under unshare.
    #[command(name = "__live-bench", hide = true)]
    LiveBenchInner {
        #[arg(long)]
        agent: PathBuf,
        #[arg(long)]
        runs: usize,
        #[arg(long)]
        warmup: usize,
        #[arg(long)]
        scratch: PathBuf,
        #[arg(long)]
        host_ns: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PpsType {
    Running,
    Savable,
}

/// `pps-live`'s exit code when a prerequisite is missing (the automake convention for a skipped test).
const EXIT_SKIPPED: u8 = 77;

#[derive(Clone, Copy, ValueEnum)]
enum Layout {
    Udf102,
    Udf250,
}

/// The DVD's volume label: the platform's labels start with `rd_rdfe_stable`.
use azprov_sim::agent::MEDIA_LABEL;

fn load_vm(path: &Path) -> Result<VmDefinition> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    VmDefinition::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The VM of `path`, or its customer's with `customer`.
fn load_vm_or_customer(path: &Path, customer: bool) -> Result<VmDefinition> {
    let vm = load_vm(path)?;
    if !customer {
        return Ok(vm);
    }
    vm.customer_definition().with_context(|| format!("{}: no [customer] table", path.display()))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::PpsLive { pps_type, agent, json, no_dhcp } = &cli.command {
        return pps_live(*pps_type, agent.clone(), *json, *no_dhcp);
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("azprov-sim: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn pps_live(pps_type: PpsType, agent: Option<PathBuf>, json: bool, no_dhcp: bool) -> std::process::ExitCode {
    use azprov_sim::pps_live::{self, Flow, Launch, PpsLiveOptions};
    use std::process::ExitCode;
    let flow = match pps_type {
        PpsType::Running => Flow::Running,
        PpsType::Savable => Flow::Savable,
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("azprov-sim: locating the azprov-sim executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut inner = std::process::Command::new(exe);
    inner.arg(pps_live::INNER_SUBCOMMAND);
    match pps_live::run(&PpsLiveOptions { flow, agent, no_dhcp }, inner) {
        Ok(Launch::Ran(s)) => {
            use std::io::Write as _;
            let mut out = std::io::stdout();
            if !json {
                let _ = write!(out, "{}", s.human());
            }
            let _ = writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default());
            if s.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Launch::Skipped(why)) => {
            eprintln!("azprov-sim pps-live skipped: {why}");
            ExitCode::from(EXIT_SKIPPED)
        }
        Err(e) => {
            eprintln!("azprov-sim: pps-live: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { vm, faults, listen, log } => {
            let vm = match vm {
                Some(p) => load_vm(&p)?,
                None => VmDefinition::default(),
            };
            let faults = match faults {
                Some(p) => Faults::from_file(&p).map_err(anyhow::Error::msg)?,
                None => Faults::none(),
            };
            let sim = Simulator::start_on(&listen, vm, faults).with_context(|| format!("listening on {listen}"))?;
            if let Some(p) = log {
                sim.set_request_log(&p).with_context(|| format!("opening {}", p.display()))?;
            }
            println!("{}", sim.url());
            use std::io::Write as _;
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
        Command::Media { vm, customer, out, layout } => {
            let vm = load_vm_or_customer(&vm, customer)?;
            if vm.specialized {
                bail!("a specialized VM gets no provisioning media");
            }
            let xml = ovf_env_xml(&vm);
            let layout = match layout {
                Layout::Udf102 => UdfLayout::V102,
                Layout::Udf250 => UdfLayout::V250,
            };
            let image = dvd::udf_image(&[("ovf-env.xml", xml.as_bytes())], MEDIA_LABEL, layout);
            if image.is_empty() {
                bail!("the UDF writer produced no image (dvd::udf_image is not implemented yet)");
            }
            std::fs::write(&out, &image).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({} bytes, label {MEDIA_LABEL})", out.display(), image.len());
        }
        Command::Ovf { vm, customer } => print!("{}", ovf_env_xml(&load_vm_or_customer(&vm, customer)?)),
        Command::ExampleVm => print!("{}", VmDefinition::default().to_toml().map_err(anyhow::Error::msg)?),
        Command::Demo { vm, agent, root, layout, keep } => {
            let vm = match vm {
                Some(p) => load_vm(&p)?,
                None => VmDefinition::default(),
            };
            let layout = match layout {
                Layout::Udf102 => UdfLayout::V102,
                Layout::Udf250 => UdfLayout::V250,
            };
            let opts = azprov_sim::demo::DemoOptions { vm, agent, root, layout, keep };
            if !azprov_sim::demo::run(opts, &mut std::io::stdout()).map_err(anyhow::Error::msg)? {
                bail!("the demo VM was not provisioned");
            }
        }
        Command::Bench { agent, runs, warmup, live: false } => {
            let opts = azprov_sim::bench::BenchOptions { agent, runs, warmup };
            azprov_sim::bench::run(opts, &mut std::io::stdout()).map_err(anyhow::Error::msg)?;
        }
        Command::Bench { agent, runs, warmup, live: true } => {
            let sim_exe = std::env::current_exe().context("locating the azprov-sim executable")?;
            let opts = azprov_sim::live::LiveOptions { agent, runs, warmup, sim_exe };
            azprov_sim::live::run(opts, &mut std::io::stdout()).map_err(anyhow::Error::msg)?;
        }
        // handled in main
        Command::PpsLive { .. } => {}
        Command::PpsLiveInner => {
            if azprov_sim::pps_live::inner_from_env().map_err(anyhow::Error::msg)?.is_none() {
                bail!("{} is not set: run `azprov-sim pps-live`", azprov_sim::pps_live::OPTIONS_ENV);
            }
        }
        Command::LiveBenchInner { agent, runs, warmup, scratch, host_ns } => {
            let opts = azprov_sim::live::InnerOptions { agent, runs, warmup, scratch, host_ns };
            azprov_sim::live::inner(opts, &mut std::io::stdout()).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(())
}
