//! Hyper-V entropy (platform.md §9.14): the ACPI table OEM0 holds random bytes after its 36-byte header. Before
//! Linux 6.9 nothing feeds them to the kernel (6.9+ credits them itself and zeroes the table), so a fresh VM may start
//! with a thin pool right when its SSH host keys are generated. We add them with `RNDADDENTROPY` (credited) on a live
//! system, once per boot and early. The bytes are never logged.

use std::io;
use std::path::Path;

use super::{kernel_version, Outcome};
use crate::config::Switch;
use crate::system::System;

/// Where sysfs exposes the table.
pub const OEM0: &str = "/sys/firmware/acpi/tables/OEM0";
/// The standard ACPI table header (signature, length, revision, checksum, OEM ids, creator).
pub const ACPI_HEADER_LEN: usize = 36;
/// From this kernel on, the kernel feeds OEM0 itself (commit f2580a907e5c).
pub const KERNEL_FEEDS_ITSELF: (u32, u32, u32) = (6, 9, 0);

/// The random bytes of an OEM0 table: after the header, up to the length the header gives. `Err` names why the
/// table is unusable.
pub fn payload(table: &[u8]) -> Result<&[u8], String> {
    if table.len() < ACPI_HEADER_LEN || &table[..4] != b"OEM0" {
        return Err(format!("not an OEM0 table ({} bytes)", table.len()));
    }
    let declared = u32::from_le_bytes([table[4], table[5], table[6], table[7]]) as usize;
    let end = declared.clamp(ACPI_HEADER_LEN, table.len());
    let data = &table[ACPI_HEADER_LEN..end];
    if data.is_empty() {
        return Err("the table has no data after its header".into());
    }
    if data.iter().all(|&b| b == 0) {
        return Err("the table data is all zeros (already consumed)".into());
    }
    Ok(data)
}

/// Feed OEM0 to the kernel's pool when it is useful and possible; every other case is `Skipped` with the reason
/// (never `Failed`: entropy is a best effort).
pub fn feed(sys: &dyn System, cfg: &Switch) -> Outcome {
    if !cfg.enabled {
        return Outcome::Skipped("disabled by configuration (duties.entropy.enabled = false)".into());
    }
    let release = sys.kernel_release();
    match release.as_deref().and_then(kernel_version) {
        Some(v) if v >= KERNEL_FEEDS_ITSELF => {
            return Outcome::Skipped(format!(
                "kernel {} feeds the ACPI OEM0 entropy itself (6.9 or later)",
                release.as_deref().unwrap_or("?")
            ))
        }
        _ => {}
    }
    let table = match sys.read(Path::new(OEM0)) {
        Ok(t) => zeroize::Zeroizing::new(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Outcome::Skipped(format!("no ACPI OEM0 table at {OEM0} (not Hyper-V, or no sysfs)"))
        }
        Err(e) => return Outcome::Skipped(format!("cannot read {OEM0}: {e}")),
    };
    let data = match payload(&table) {
        Ok(d) => d,
        Err(why) => return Outcome::Skipped(format!("{OEM0}: {why}")),
    };
    let bits = u32::try_from(data.len().saturating_mul(8)).unwrap_or(u32::MAX);
    let kernel = release.map(|r| format!("kernel {r}")).unwrap_or_else(|| "kernel version unknown".into());
    match sys.add_entropy(data, bits) {
        Ok(true) => Outcome::Done(format!(
            "added {} bytes from ACPI OEM0 to the kernel's entropy pool ({bits} bits credited, {kernel})",
            data.len()
        )),
        Ok(false) => Outcome::Skipped(format!("not the running system: {} bytes of OEM0 entropy not fed", data.len())),
        Err(e) => Outcome::Skipped(format!("RNDADDENTROPY failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::record::RecordingSystem;

    /// The fixture is Python-escaped text (`\xNN`, `\\`, `\'`, `\n`…): turn it back into bytes.
    fn unescape(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'\\' && i + 1 < text.len() {
                match text[i + 1] {
                    b'x' => {
                        let hex = std::str::from_utf8(&text[i + 2..i + 4]).unwrap();
                        out.push(u8::from_str_radix(hex, 16).unwrap());
                        i += 4;
                        continue;
                    }
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    c => out.push(c),
                }
                i += 2;
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        out
    }

    fn fixture_table() -> Option<Vec<u8>> {
        let raw = crate::testutil::fixture("acpi/cloud-init-oem0-table-python-escaped.txt")?;
        let t = unescape(&raw);
        assert_eq!(t.len(), 100);
        assert_eq!(t.iter().fold(0u8, |a, &b| a.wrapping_add(b)), 0, "ACPI checksum");
        Some(t)
    }

    fn sandbox(table: Option<&[u8]>, release: Option<&str>) -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        if let Some(t) = table {
            std::fs::create_dir_all(dir.path().join("sys/firmware/acpi/tables")).unwrap();
            std::fs::write(dir.path().join("sys/firmware/acpi/tables/OEM0"), t).unwrap();
        }
        if let Some(r) = release {
            std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
            std::fs::write(dir.path().join("proc/sys/kernel/osrelease"), format!("{r}\n")).unwrap();
        }
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    const ON: Switch = Switch { enabled: true };

    #[test]
    fn feeds_the_fixture_table_after_its_header() {
        let Some(table) = fixture_table() else { return };
        let (_d, sys) = sandbox(Some(&table), Some("5.15.0-1019-azure"));
        sys.accept_entropy();
        let (o, log) = crate::testutil::capture_log(|| feed(&sys, &ON));
        match &o {
            Outcome::Done(d) => assert!(d.contains("added 64 bytes") && d.contains("512 bits credited"), "{d}"),
            o => panic!("{o:?}"),
        }
        let added = sys.entropy_added();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].0, &table[36..]);
        assert_eq!(added[0].1, 512);
        // never the bytes, in any rendering
        let hex: String = table[36..44].iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{o:?}{log}");
        assert!(!text.contains(&hex) && !text.contains(&format!("{:?}", &table[36..40])), "{text}");
    }

    #[test]
    fn under_a_root_nothing_is_fed() {
        let Some(table) = fixture_table() else { return };
        let (_d, sys) = sandbox(Some(&table), Some("5.4.0"));
        match feed(&sys, &ON) {
            Outcome::Skipped(why) => assert!(why.starts_with("not the running system"), "{why}"),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn skips_on_new_kernels_zeros_and_absence() {
        let mut table = b"OEM0".to_vec();
        table.extend_from_slice(&100u32.to_le_bytes());
        table.resize(100, 0);
        let zero = table.clone();
        table[50] = 7;
        for (t, release, want) in [
            (Some(&table[..]), Some("6.9.0-1001-azure"), "feeds the ACPI OEM0 entropy itself"),
            (Some(&table[..]), Some("6.12.3"), "feeds the ACPI OEM0 entropy itself"),
            (Some(&zero[..]), Some("6.8.0"), "all zeros"),
            (None, Some("5.15.0"), "no ACPI OEM0 table"),
            (Some(&table[..36]), Some("5.15.0"), "no data after its header"),
            (Some(&b"XXXX"[..]), None, "not an OEM0 table"),
        ] {
            let (_d, sys) = sandbox(t, release);
            sys.accept_entropy();
            match feed(&sys, &ON) {
                Outcome::Skipped(why) => assert!(why.contains(want), "{why} vs {want}"),
                o => panic!("{o:?}"),
            }
            assert!(sys.entropy_added().is_empty());
        }
        // an unknown kernel (offline image without /proc) still feeds: the table is not zeroed yet
        let (_d, sys) = sandbox(Some(&table), None);
        sys.accept_entropy();
        assert!(matches!(feed(&sys, &ON), Outcome::Done(d) if d.contains("kernel version unknown")));
        assert!(matches!(feed(&sys, &Switch { enabled: false }), Outcome::Skipped(w) if w.contains("disabled")));
    }

    #[test]
    fn payload_honours_the_declared_length() {
        let mut t = b"OEM0".to_vec();
        t.extend_from_slice(&40u32.to_le_bytes());
        t.resize(36, 0);
        t.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        assert_eq!(payload(&t).unwrap(), &[1, 2, 3, 4]);
    }
}
