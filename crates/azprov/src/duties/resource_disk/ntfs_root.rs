//! The root directory of an NTFS volume, read in user space (the `ntfs` crate), never through a kernel driver.

use std::io::{self, Read, Seek, SeekFrom};

use ntfs::structured_values::NtfsFileNamespace;
use ntfs::Ntfs;

use crate::platform::media::ReadAt;

/// Names the platform puts on a fresh temporary disk (compared case-insensitively).
const PLATFORM_NAMES: [&str; 2] = ["dataloss_warning_readme.txt", "system volume information"];

/// A `Read + Seek` window over `len` bytes at `start` of a device.
struct Window<'a> {
    src: &'a dyn ReadAt,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src.read_at(self.start + self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

/// Root directory entry names, without DOS 8.3 duplicates (the long name of the same file is listed too).
pub fn root_names(src: &dyn ReadAt, start: u64, len: u64) -> Result<Vec<String>, String> {
    let mut fs = Window { src, start, len, pos: 0 };
    let ntfs = Ntfs::new(&mut fs).map_err(|e| e.to_string())?;
    let root = ntfs.root_directory(&mut fs).map_err(|e| e.to_string())?;
    let index = root.directory_index(&mut fs).map_err(|e| e.to_string())?;
    let mut entries = index.entries();
    let mut names = Vec::new();
    while let Some(entry) = entries.next(&mut fs) {
        let entry = entry.map_err(|e| e.to_string())?;
        let Some(key) = entry.key() else { continue };
        let name = key.map_err(|e| e.to_string())?;
        if name.namespace() == NtfsFileNamespace::Dos {
            continue;
        }
        names.push(name.name().to_string_lossy());
        if names.len() > 10_000 {
            return Err("NTFS root directory has too many entries".into());
        }
    }
    Ok(names)
}

/// Whether a root entry belongs to the platform or to NTFS itself.
pub fn is_platform_name(name: &str) -> bool {
    name == "." || name.starts_with('$') || PLATFORM_NAMES.iter().any(|p| name.eq_ignore_ascii_case(p))
}

/// `Ok` when the NTFS volume at `start` holds nothing but what the platform and NTFS put there; otherwise the
/// reason it must not be formatted (user files, or an unreadable volume).
pub fn check_fresh(src: &dyn ReadAt, start: u64, len: u64) -> Result<(), String> {
    let names = root_names(src, start, len).map_err(|e| format!("NTFS volume cannot be read ({e}): not formatted"))?;
    let user: Vec<&str> = names.iter().map(|s| s.as_str()).filter(|n| !is_platform_name(n)).collect();
    if user.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = user.iter().take(5).copied().collect();
    Err(format!(
        "NTFS volume holds {} file(s) not from the platform ({}{}): not formatted",
        user.len(),
        shown.join(", "),
        if user.len() > shown.len() { ", …" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names() {
        for n in [
            ".",
            "$MFT",
            "$Extend",
            "DATALOSS_WARNING_README.txt",
            "dataloss_warning_readme.TXT",
            "System Volume Information",
        ] {
            assert!(is_platform_name(n), "{n}");
        }
        for n in ["data.db", "DATALOSS_WARNING_README.txt.bak", "..", "System Volume"] {
            assert!(!is_platform_name(n), "{n}");
        }
    }

    #[test]
    fn garbage_is_unreadable_not_fresh() {
        let mut d = vec![0u8; 1 << 20];
        d[3..11].copy_from_slice(b"NTFS    ");
        let e = check_fresh(&d, 0, d.len() as u64).unwrap_err();
        assert!(e.contains("cannot be read"), "{e}");
    }
}
