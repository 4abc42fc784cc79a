//! What the platform says: provisioning media (DVD), the OVF environment, IMDS, the wireserver, VM identity and
//! the Hyper-V KVP record format. Parsers here are pure (bytes in, types out); network clients take their endpoint
//! and retry policy from the caller.

pub mod cdrom;
pub mod certificates;
pub mod endpoint;
pub mod http;
pub mod identity;
pub mod imds;
pub mod kvp;
pub mod media;
pub mod nvme;
pub mod ovf;
pub mod wireserver;
