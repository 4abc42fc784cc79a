//! ISO9660 reader with Joliet (platform.md §2.3). Every offset is bounds-checked; this is a fuzz target.

use super::{MediaError, ReadAt, RootFile};
use std::io;

const BLOCK: usize = 2048;
const BLOCK64: u64 = BLOCK as u64;
/// Volume descriptors examined after sector 16 before giving up on a terminator.
const MAX_DESCRIPTORS: u64 = 64;
/// Largest root directory we scan.
const MAX_DIR_BYTES: u32 = 4 << 20;
/// Directory records making up one multi-extent file.
const MAX_FILE_SECTIONS: usize = 256;

fn corrupt(msg: impl Into<String>) -> MediaError {
    MediaError::Corrupt { fs: "ISO9660", msg: msg.into() }
}

fn u16_le(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_le(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn read_exact(src: &dyn ReadAt, off: u64, buf: &mut [u8]) -> Result<(), MediaError> {
    let end = off.checked_add(buf.len() as u64).ok_or_else(|| corrupt("offset overflow"))?;
    if end > src.size() {
        return Err(corrupt(format!("read at byte {off} beyond the end of the media")));
    }
    src.read_at(off, buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(format!("read at byte {off} beyond the end of the media")),
        _ => MediaError::Io(e),
    })
}

/// Which name encoding a directory tree uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Names {
    Plain,
    Joliet,
}

/// Root directory record of one volume descriptor.
struct Tree {
    names: Names,
    lba: u32,
    len: u32,
    label: Option<String>,
}

fn decode_ucs2(b: &[u8]) -> String {
    let units = b.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
}

fn decode_label(b: &[u8], names: Names) -> Option<String> {
    let s = match names {
        Names::Plain => b.iter().map(|&c| char::from(c)).collect::<String>(),
        Names::Joliet => decode_ucs2(b),
    };
    let s = s.trim_end_matches([' ', '\0']).to_string();
    (!s.is_empty()).then_some(s)
}

/// Parse a PVD or Joliet SVD.
fn parse_descriptor(d: &[u8], names: Names) -> Result<Tree, MediaError> {
    let block = u16_le(d, 128).ok_or_else(|| corrupt("volume descriptor truncated"))?;
    if usize::from(block) != BLOCK {
        return Err(corrupt(format!("logical block size {block} is not supported (only 2048)")));
    }
    let root = d.get(156..190).ok_or_else(|| corrupt("volume descriptor truncated"))?;
    let lba = u32_le(root, 2).ok_or_else(|| corrupt("root record truncated"))?;
    let len = u32_le(root, 10).ok_or_else(|| corrupt("root record truncated"))?;
    if root[25] & 0x02 == 0 {
        return Err(corrupt("root directory record is not a directory"));
    }
    Ok(Tree { names, lba, len, label: d.get(40..72).and_then(|b| decode_label(b, names)) })
}

/// Look up `name` in the root directory (Joliet preferred; plain names compared after stripping `;1` and a trailing
/// `.`, case-insensitively, with `_` accepted for `-`). `Err(NotRecognized)` without a primary volume descriptor.
pub fn read_root_file(src: &dyn ReadAt, name: &str, max: usize) -> Result<RootFile, MediaError> {
    let mut first = vec![0u8; BLOCK];
    match src.read_at(16 * BLOCK64, &mut first) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(MediaError::NotRecognized),
        Err(e) => return Err(MediaError::Io(e)),
    }
    if first.get(1..6) != Some(b"CD001".as_slice()) {
        return Err(MediaError::NotRecognized);
    }
    let mut primary = None;
    let mut joliet = None;
    let mut terminated = false;
    for i in 0..MAX_DESCRIPTORS {
        let d = if i == 0 {
            std::mem::take(&mut first)
        } else {
            let mut d = vec![0u8; BLOCK];
            read_exact(src, (16 + i) * BLOCK64, &mut d)?;
            d
        };
        if d.get(1..6) != Some(b"CD001".as_slice()) {
            return Err(corrupt(format!("volume descriptor at sector {} lacks CD001", 16 + i)));
        }
        match d[0] {
            1 if primary.is_none() => primary = Some(parse_descriptor(&d, Names::Plain)?),
            2 if joliet.is_none() && matches!(d.get(88..91), Some(b"%/@" | b"%/C" | b"%/E")) => {
                // A broken Joliet tree must not hide the primary one.
                joliet = parse_descriptor(&d, Names::Joliet).ok();
            }
            255 => {
                terminated = true;
                break;
            }
            _ => {}
        }
    }
    let Some(primary) = primary else { return Err(corrupt("no primary volume descriptor")) };
    if !terminated {
        return Err(corrupt("no volume descriptor set terminator"));
    }
    let label = primary.label.clone().or_else(|| joliet.as_ref().and_then(|j| j.label.clone()));
    let mut joliet_err = None;
    if let Some(j) = &joliet {
        match find_file(src, j, name, max) {
            Ok(Some(data)) => return Ok(RootFile { label, data: Some(data) }),
            Ok(None) => {}
            Err(MediaError::TooLarge) => return Err(MediaError::TooLarge),
            Err(e) => joliet_err = Some(e),
        }
    }
    match find_file(src, &primary, name, max) {
        Ok(data) => Ok(RootFile { label, data }),
        Err(e) => Err(joliet_err.unwrap_or(e)),
    }
}

/// Does directory-record name `raw` (in `names` encoding) match `want`?
fn name_matches(raw: &[u8], names: Names, want: &str) -> bool {
    let decoded = match names {
        Names::Joliet => decode_ucs2(raw),
        Names::Plain => raw.iter().map(|&c| char::from(c)).collect(),
    };
    let base = match decoded.rfind(';') {
        Some(i) => &decoded[..i],
        None => decoded.as_str(),
    };
    let base = base.strip_suffix('.').unwrap_or(base);
    let want = want.strip_suffix('.').unwrap_or(want);
    if base.to_lowercase() == want.to_lowercase() {
        return true;
    }
    names == Names::Plain
        && base.chars().count() == want.chars().count()
        && base
            .chars()
            .zip(want.chars())
            .all(|(a, b)| a.to_lowercase().eq(b.to_lowercase()) || (a == '_' && b == '-') || (a == '-' && b == '_'))
}

/// One directory record's extent.
struct Section {
    lba: u32,
    ext_attr: u8,
    len: u32,
}

/// Scan the root directory of `tree` for `name`; read its data.
fn find_file(src: &dyn ReadAt, tree: &Tree, name: &str, max: usize) -> Result<Option<Vec<u8>>, MediaError> {
    if tree.len > MAX_DIR_BYTES {
        return Err(corrupt(format!("root directory of {} bytes is too large", tree.len)));
    }
    let sectors = (tree.len as usize).div_ceil(BLOCK);
    let mut sections: Vec<Section> = Vec::new();
    let mut block = vec![0u8; BLOCK];
    for s in 0..sectors {
        let off = (u64::from(tree.lba) + s as u64) * BLOCK64;
        read_exact(src, off, &mut block)?;
        let mut pos = 0usize;
        while pos < BLOCK {
            let rec_len = usize::from(block[pos]);
            if rec_len == 0 {
                break; // rest of the sector is padding
            }
            let rec = block
                .get(pos..pos + rec_len)
                .filter(|r| r.len() >= 34)
                .ok_or_else(|| corrupt(format!("directory record at sector {} offset {pos} is invalid", tree.lba)))?;
            pos += rec_len;
            let name_len = usize::from(rec[32]);
            let raw = rec.get(33..33 + name_len).ok_or_else(|| corrupt("directory record name out of bounds"))?;
            let flags = rec[25];
            let section = || -> Result<Section, MediaError> {
                Ok(Section {
                    lba: u32_le(rec, 2).ok_or_else(|| corrupt("directory record truncated"))?,
                    ext_attr: rec[1],
                    len: u32_le(rec, 10).ok_or_else(|| corrupt("directory record truncated"))?,
                })
            };
            if !sections.is_empty() {
                // Continuing a multi-extent file: the following records carry the same name.
                if !name_matches(raw, tree.names, name) {
                    return Err(corrupt("multi-extent file is missing its final section"));
                }
                if sections.len() >= MAX_FILE_SECTIONS {
                    return Err(corrupt("too many file sections"));
                }
                sections.push(section()?);
                if flags & 0x80 == 0 {
                    return read_sections(src, &sections, max).map(Some);
                }
                continue;
            }
            if name_len == 1 && (raw[0] == 0 || raw[0] == 1) {
                continue; // "." and ".."
            }
            if flags & 0x02 != 0 || !name_matches(raw, tree.names, name) {
                continue;
            }
            sections.push(section()?);
            if flags & 0x80 == 0 {
                return read_sections(src, &sections, max).map(Some);
            }
        }
    }
    if sections.is_empty() {
        Ok(None)
    } else {
        Err(corrupt("multi-extent file is missing its final section"))
    }
}

fn read_sections(src: &dyn ReadAt, sections: &[Section], max: usize) -> Result<Vec<u8>, MediaError> {
    let total: u64 = sections.iter().map(|s| u64::from(s.len)).sum();
    if total > max as u64 {
        return Err(MediaError::TooLarge);
    }
    let mut out = vec![0u8; total as usize];
    let mut at = 0usize;
    for s in sections {
        let len = s.len as usize;
        let start = (u64::from(s.lba) + u64::from(s.ext_attr)) * BLOCK64;
        read_exact(src, start, &mut out[at..at + len])?;
        at += len;
    }
    Ok(out)
}
