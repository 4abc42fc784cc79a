//! azprov: a Linux VM provisioning agent for Microsoft Azure.
//!
//! Layers (data flows left to right; only `system` has effects):
//! `platform` (what Azure says) → `plan` (pure decisions) → `duties` (one module per duty, effects through
//! `system`) → `report` (KVP + health). `provision` wires them together for one boot; `state` remembers what was done.

pub mod config;
pub mod deprovision;
pub mod duties;
pub mod plan;
pub mod platform;
pub mod provision;
pub mod report;
pub mod report_only;
pub mod secret;
pub mod state;
pub mod system;
pub mod timeutil;

#[cfg(test)]
pub mod testutil;

/// The agent name and version as sent to the platform (`agent=azprov/<version>`).
pub const AGENT: &str = concat!("azprov/", env!("CARGO_PKG_VERSION"));
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
