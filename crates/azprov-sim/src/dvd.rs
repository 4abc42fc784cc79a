//! Provisioning-DVD image writer: UDF (1.02-style with one physical partition, and 2.50+ with a metadata
//! partition and Extended File Entries) and ISO9660 (+ Joliet). Written from ECMA-167 / OSTA UDF / ECMA-119.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdfLayout {
    /// UDF 1.02: File Entries in one type-1 physical partition.
    V102,
    /// UDF 2.50: metadata partition (type-2 map), metadata file, Extended File Entries.
    V250,
}

/// A UDF image with `files` in the root directory.
pub fn udf_image(files: &[(&str, &[u8])], label: &str, layout: UdfLayout) -> Vec<u8> {
    let _ = (files, label, layout);
    Vec::new()
}

/// An ISO9660 image (with a Joliet tree when `joliet`) with `files` in the root directory.
pub fn iso9660_image(files: &[(&str, &[u8])], label: &str, joliet: bool) -> Vec<u8> {
    let _ = (files, label, joliet);
    Vec::new()
}
