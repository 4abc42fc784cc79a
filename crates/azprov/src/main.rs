//! `azprov` command line: parse arguments, load configuration, call the library, map results to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use azprov::config;
use azprov::deprovision;
use azprov::duties::{resource_disk, scsi_timeouts, Outcome};
use azprov::platform::certificates::{self, TransportCert};
use azprov::platform::kvp;
use azprov::platform::{endpoint, media, ovf};
use azprov::provision::{self, exit, Options, PhaseSel};
use azprov::report_only;
use azprov::secret::Secret;
use azprov::state::State;
use azprov::system::{RealSystem, System};
use azprov::timeutil::SystemClock;

#[derive(Parser)]
#[command(name = "azprov", version, about = "Linux VM provisioning agent for Microsoft Azure")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Extra configuration file (host path), read after /etc/azprov/azprov.toml and its .d directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Operate on an offline image or sandbox: every path read or written is under DIR.
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum PhaseArg {
    Local,
    Network,
    AfterReady,
    HostKeys,
    All,
}

#[derive(Subcommand)]
enum Cmd {
    /// The boot job: provision this VM (or the --root image) and report to the platform.
    Provision {
        #[command(flatten)]
        common: Common,
        /// Read ovf-env.xml from this image file or device (host path) instead of scanning CD-ROM drives.
        #[arg(long, value_name = "PATH")]
        media: Option<PathBuf>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Which boot phase to run.
        #[arg(long, value_enum, default_value = "all")]
        phase: PhaseArg,
    },
    /// Print the effective configuration.
    Config {
        #[command(flatten)]
        common: Common,
    },
    /// Show the last run.
    Status {
        #[command(flatten)]
        common: Common,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run one every-boot duty on its own (for admins and tests).
    Run {
        #[command(subcommand)]
        duty: RunDuty,
    },
    /// Parse platform inputs and print them as JSON (never secrets).
    Inspect {
        #[command(subcommand)]
        what: Inspect,
    },
    /// Generalize this system (or the --root image) before capture: host keys, machine-id, DHCP leases, our state,
    /// cached OVF/customData, host name, shell histories... Never prompts.
    Deprovision {
        #[command(flatten)]
        common: Common,
        /// Also delete the provisioned admin user (userdel -r) and its sudoers line.
        #[arg(long)]
        user: bool,
        /// List every file that would be removed and every change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Required to deprovision the running system (not needed with --root).
        #[arg(long)]
        force: bool,
        /// Lock root's password (root:*LOCK*); also `[deprovision] lock_root_password = true` in the configuration.
        #[arg(long)]
        lock_root_password: bool,
    },
    /// Minimal mode: report Ready to the platform and nothing else (no DVD, no duties).
    ReportReady {
        #[command(flatten)]
        common: Common,
        /// Skip when this VM id's provisioned marker exists; write it after Ready was accepted.
        #[arg(long)]
        once: bool,
        /// Set the host name from IMDS osProfile.computerName first.
        #[arg(long)]
        set_hostname: bool,
    },
    /// Minimal mode: report NotReady/ProvisioningFailed with a reason.
    ReportFailure {
        #[command(flatten)]
        common: Common,
        /// The public reason (lower case, e.g. "failed to configure the image").
        #[arg(long)]
        reason: String,
    },
    /// Hyper-V KVP pool files.
    Kvp {
        #[command(subcommand)]
        what: KvpCmd,
    },
}

#[derive(Subcommand)]
enum KvpCmd {
    /// Print each record of a pool file as `key = value` (default: the configured guest-to-host pool under --root).
    Dump {
        /// Pool file (host path).
        file: Option<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum RunDuty {
    /// Find, check, format (only when fresh from the platform), mount the resource disk; swap file. Exits 0 when
    /// the disk ends up mounted or was rightly left alone.
    ResourceDisk {
        #[command(flatten)]
        common: Common,
        /// Use this disk (host path of its device node, e.g. /dev/nvme0n1) instead of finding it from sysfs.
        /// Repeatable: several disks are striped into the md RAID0 /dev/md/azprov-resource (created only when all
        /// are blank; assembled or reused when they already are our array), whatever nvme_raid0 says.
        #[arg(long = "device", value_name = "PATH")]
        devices: Vec<PathBuf>,
        /// Mount here instead of the configured mount point.
        #[arg(long, value_name = "DIR")]
        mount_point: Option<PathBuf>,
        /// Leave fstab alone.
        #[arg(long)]
        no_persist: bool,
    },
    /// Set the SCSI command timeout of Azure disks and the I/O timeout of Azure remote NVMe disks now.
    ScsiTimeouts {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Subcommand)]
enum Inspect {
    /// An ovf-env.xml file.
    Ovf { file: PathBuf },
    /// A provisioning DVD image or device (UDF or ISO9660).
    Media { path: PathBuf },
    /// The wireserver address (DHCP option 245) in these lease files (dhclient, networkd or dhcpcd); prints it.
    Endpoint {
        /// A lease file (repeatable; the first file with option 245 wins).
        #[arg(long = "lease", value_name = "FILE", required = true)]
        leases: Vec<PathBuf>,
    },
    /// A wireserver certificates answer (comp=certificates XML): decrypt it with the transport key and list the
    /// certificates as JSON [{thumbprint, has_private_key, ssh_public_key}] (private keys are never printed).
    Certificates {
        /// The CertificateFile XML the wireserver returned.
        #[arg(long, value_name = "FILE")]
        certificates: PathBuf,
        /// The transport private key (PKCS#8 PEM).
        #[arg(long, value_name = "PEM")]
        transport_key: PathBuf,
        /// The transport certificate (PEM) the request carried.
        #[arg(long, value_name = "PEM")]
        transport_cert: PathBuf,
    },
}

fn init_logging() {
    let level = match std::env::var("AZPROV_LOG").unwrap_or_default().to_ascii_lowercase().as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

fn load_config(sys: &dyn System, common: &Common) -> Result<config::Config, ExitCode> {
    config::load(sys, common.config.as_deref()).map_err(|e| {
        eprintln!("azprov: configuration error: {e}");
        ExitCode::from(exit::NOT_APPLICABLE as u8)
    })
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Provision { common, media, dry_run, phase } => {
            init_logging();
            let sys = RealSystem::new(&common.root);
            let cfg = match load_config(&sys, &common) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let phase = match phase {
                PhaseArg::Local => PhaseSel::Local,
                PhaseArg::Network => PhaseSel::Network,
                PhaseArg::AfterReady => PhaseSel::AfterReady,
                PhaseArg::HostKeys => PhaseSel::HostKeys,
                PhaseArg::All => PhaseSel::All,
            };
            let opts = Options { phase, media, dry_run };
            let out = provision::provision(&sys, &cfg, &opts, &SystemClock);
            if let Some(plan) = &out.plan {
                println!("{}", serde_json::to_string_pretty(plan)?);
            }
            if out.exit_code == exit::OK {
                tracing::info!("{}", out.message);
            } else {
                tracing::error!("{}", out.message);
            }
            Ok(ExitCode::from(out.exit_code as u8))
        }
        Cmd::Config { common } => {
            let sys = RealSystem::new(&common.root);
            let cfg = match load_config(&sys, &common) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            print!("{}", cfg.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { common, json } => {
            let sys = RealSystem::new(&common.root);
            let cfg = match load_config(&sys, &common) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let st = State::new(&sys, &cfg.state.dir);
            let summary = match st.summary() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("azprov: no run recorded in {}: {e}", sys.host_path(&cfg.state.dir).display());
                    return Ok(ExitCode::from(1));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "vm {}: {:?}{}{}",
                    summary.vm_id.as_deref().unwrap_or("?"),
                    summary.result,
                    summary.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                    if summary.reported { ", reported" } else { ", not reported" }
                );
                for s in &summary.steps {
                    println!(
                        "  {:<14} {:<8} {:>6} ms  {}",
                        s.name,
                        format!("{:?}", s.outcome).to_lowercase(),
                        s.duration_ms,
                        s.detail
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { duty } => {
            init_logging();
            let (common, name) = match &duty {
                RunDuty::ResourceDisk { common, .. } => (common, "resource-disk"),
                RunDuty::ScsiTimeouts { common } => (common, "scsi-timeouts"),
            };
            let sys = RealSystem::new(&common.root);
            let cfg = match load_config(&sys, common) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let outcome = match &duty {
                RunDuty::ResourceDisk { devices, mount_point, no_persist, .. } => {
                    let opts = resource_disk::RunOptions {
                        devices: devices.clone(),
                        mount_point: mount_point.clone(),
                        no_persist: *no_persist,
                    };
                    // `run resource-disk` is an explicit request: it runs even when the boot duty is disabled
                    let mut rd = cfg.duties.resource_disk.clone();
                    rd.enabled = true;
                    resource_disk::run_every_boot(&sys, &rd, &opts)
                }
                RunDuty::ScsiTimeouts { .. } => {
                    let mut st = cfg.duties.scsi_timeouts.clone();
                    st.enabled = true;
                    scsi_timeouts::apply(&sys, &st)
                }
            };
            Ok(match outcome {
                Outcome::Done(what) => {
                    println!("{name}: done: {what}");
                    ExitCode::SUCCESS
                }
                Outcome::Skipped(why) => {
                    println!("{name}: left alone: {why}");
                    ExitCode::SUCCESS
                }
                Outcome::Failed(f) => {
                    eprintln!("azprov: {name} failed: {f}");
                    ExitCode::from(1)
                }
            })
        }
        Cmd::Deprovision { common, user, dry_run, force, lock_root_password } => {
            init_logging();
            let sys = RealSystem::new(&common.root);
            let cfg = match load_config(&sys, &common) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let lock_root_password = lock_root_password || cfg.deprovision.lock_root_password;
            let opts = deprovision::Options { user, dry_run, force, lock_root_password };
            let report = match deprovision::deprovision(&sys, &cfg, &opts) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("azprov: {e}");
                    return Ok(ExitCode::from(exit::NOT_APPLICABLE as u8));
                }
            };
            let verb = if dry_run { "would " } else { "" };
            for c in &report.changes {
                println!("{verb}{}", c.describe());
            }
            for n in &report.notes {
                eprintln!("azprov: note: {n}");
            }
            for e in &report.errors {
                eprintln!("azprov: failed: {e}");
            }
            Ok(if report.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Cmd::ReportReady { common, once, set_hostname } => {
            report_only(&common, &report_only::What::Ready, &report_only::Options { once, set_hostname })
        }
        Cmd::ReportFailure { common, reason } => {
            report_only(&common, &report_only::What::Failure(reason), &report_only::Options::default())
        }
        Cmd::Kvp { what: KvpCmd::Dump { file, common } } => {
            let path = match file {
                Some(f) => f,
                None => {
                    let sys = RealSystem::new(&common.root);
                    let cfg = match load_config(&sys, &common) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    };
                    sys.host_path(&cfg.kvp.pool_path)
                }
            };
            let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            if bytes.len() % kvp::RECORD_SIZE != 0 {
                eprintln!(
                    "azprov: warning: {} is {} bytes, not a multiple of {}: the trailing partial record is ignored",
                    path.display(),
                    bytes.len(),
                    kvp::RECORD_SIZE
                );
            }
            for (k, v) in kvp::parse_pool(&bytes) {
                println!("{k} = {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { what } => {
            let bytes = match &what {
                Inspect::Endpoint { leases } => return inspect_endpoint(leases),
                Inspect::Certificates { certificates, transport_key, transport_cert } => {
                    return inspect_certificates(certificates, transport_key, transport_cert)
                }
                Inspect::Ovf { file } => std::fs::read(file).with_context(|| format!("reading {}", file.display()))?,
                Inspect::Media { path } => {
                    let sys = RealSystem::new("/");
                    let reader = sys.open_host_read(path).with_context(|| format!("opening {}", path.display()))?;
                    match media::read_ovf(reader.as_ref()) {
                        Ok(m) => m.bytes,
                        Err(e) => {
                            eprintln!("azprov: {}: {e}", path.display());
                            return Ok(ExitCode::from(1));
                        }
                    }
                }
            };
            match ovf::parse(&bytes) {
                Ok(env) => {
                    println!("{}", serde_json::to_string_pretty(&env.inspect_json())?);
                    for w in &env.warnings {
                        eprintln!("azprov: warning: {w}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("azprov: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// `azprov report-ready` / `report-failure`: exit 0 when the platform accepted the report (or `--once` found the
/// marker), 3 when it could not be delivered.
fn report_only(common: &Common, what: &report_only::What, opts: &report_only::Options) -> anyhow::Result<ExitCode> {
    init_logging();
    let sys = RealSystem::new(&common.root);
    let cfg = match load_config(&sys, common) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let out = report_only::run(&sys, &cfg, what, opts, &SystemClock);
    for n in &out.notes {
        tracing::info!("{n}");
    }
    let kind = match what {
        report_only::What::Ready => "Ready",
        report_only::What::Failure(_) => "NotReady (ProvisioningFailed)",
    };
    Ok(match out.result {
        report_only::Delivery::Reported { status, attempts } => {
            tracing::info!("VM {}: {kind} accepted (HTTP {status} after {attempts} attempt(s))", out.vm_id);
            ExitCode::SUCCESS
        }
        report_only::Delivery::AlreadyReported => {
            tracing::info!("VM {}: already reported (marker present): nothing sent", out.vm_id);
            ExitCode::SUCCESS
        }
        report_only::Delivery::Unreported(e) => {
            tracing::error!("VM {}: {kind} not delivered: {e}", out.vm_id);
            ExitCode::from(exit::UNREPORTED as u8)
        }
    })
}

/// `azprov inspect endpoint --lease FILE…`: option 245 from the given files only (no route table, no fallback).
fn inspect_endpoint(leases: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in leases {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        files.push((path.display().to_string(), bytes));
    }
    match endpoint::from_lease_files(&files, azprov::timeutil::now_us() / 1_000_000) {
        Some(addr) => {
            println!("{addr}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("azprov: no unexpired lease with DHCP option 245 (wireserver address) in the given files");
            Ok(ExitCode::from(1))
        }
    }
}

/// `azprov inspect certificates`: decrypt a comp=certificates answer; an answer that does not decrypt with the key
/// is an error, not an empty list. Private keys are only reported as present.
fn inspect_certificates(xml: &Path, key: &Path, cert: &Path) -> anyhow::Result<ExitCode> {
    let xml = std::fs::read(xml).with_context(|| format!("reading {}", xml.display()))?;
    let key_pem = Secret::new(std::fs::read(key).with_context(|| format!("reading {}", key.display()))?);
    let cert_pem = std::fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let transport = match TransportCert::from_pem(&cert_pem, &key_pem) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("azprov: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    match certificates::decrypt_certificates(&xml, transport.key()) {
        Ok(certs) => {
            #[derive(serde::Serialize)]
            struct Listed<'a> {
                thumbprint: &'a str,
                has_private_key: bool,
                ssh_public_key: Option<&'a str>,
            }
            let list: Vec<Listed<'_>> = certs
                .iter()
                .map(|c| Listed {
                    thumbprint: &c.thumbprint,
                    has_private_key: c.private_key_pem.is_some(),
                    ssh_public_key: c.public_key_openssh.as_deref(),
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("azprov: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("azprov: {e:#}");
            ExitCode::from(1)
        }
    }
}
