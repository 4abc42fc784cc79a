//! azprov-sim: a local simulator of the Azure platform as a provisioning agent sees it — IMDS, the wireserver and
//! the provisioning DVD — built from one VM definition, for tests and demos. Binds 127.0.0.1 only.

pub mod agent;
pub mod bench;
pub mod certs;
pub mod demo;
pub mod dvd;
pub mod faults;
pub mod links;
pub mod live;
pub mod ovf;
pub mod pps_live;
pub mod sandbox;
pub mod server;
pub mod vm;

pub use certs::{KeyTransport, SimCert};
pub use faults::{FaultStep, Faults};
pub use server::{AssignError, AssignTrigger, Assignment, HealthReport, PpsStatus, RequestRecord, Simulator};
pub use vm::VmDefinition;
