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

#[cfg(test)]
mod tests {
    use super::super::testsupport::{genisoimage, have_tool, torture, tree, Bytes, Rng};
    use super::super::{read_ovf, FsKind, MAX_OVF_BYTES};
    use super::*;

    const OVF: &[u8] = b"<?xml version=\"1.0\"?><Environment><ProvisioningSection/></Environment>\n";
    const LABEL: &str = "rd_rdfe_stable.xyz";

    fn read(img: &[u8]) -> Result<RootFile, MediaError> {
        read_root_file(&Bytes(img), "ovf-env.xml", MAX_OVF_BYTES)
    }

    fn image(args: &[&str], files: &[(&str, &[u8])]) -> Vec<u8> {
        let dir = tree(files);
        let out = tempfile::tempdir().expect("tempdir");
        let mut all = vec!["-V", LABEL];
        all.extend(args);
        genisoimage(&all, dir.path(), &out.path().join("img"))
    }

    #[test]
    fn plain_iso_reads_mangled_name() {
        if !have_tool("genisoimage") {
            return;
        }
        let img = image(&[], &[("ovf-env.xml", OVF), ("other.txt", b"o")]);
        let found = read(&img).expect("iso");
        assert_eq!(found.data.as_deref(), Some(OVF));
        assert!(found.label.as_deref().is_some_and(|l| l.eq_ignore_ascii_case(LABEL)), "{:?}", found.label);
        let other = read_root_file(&Bytes(&img), "Other.Txt", 16).expect("iso");
        assert_eq!(other.data.as_deref(), Some(&b"o"[..]));
        assert!(read_root_file(&Bytes(&img), "absent.xml", 16).expect("iso").data.is_none());
        assert!(matches!(read_root_file(&Bytes(&img), "ovf-env.xml", OVF.len() - 1), Err(MediaError::TooLarge)));
        let ovf = read_ovf(&Bytes(&img)).expect("read_ovf");
        assert_eq!((ovf.fs, ovf.bytes.as_slice()), (FsKind::Iso9660, OVF));
    }

    #[test]
    fn joliet_names_are_preferred() {
        if !have_tool("genisoimage") {
            return;
        }
        // Both names mangle to OVF_ENV.XML in the plain tree; only Joliet tells them apart.
        let img = image(&["-J"], &[("ovf_env.xml", b"underscore"), ("ovf-env.xml", OVF)]);
        let found = read(&img).expect("iso");
        assert_eq!(found.data.as_deref(), Some(OVF));
        assert_eq!(found.label.as_deref(), Some(LABEL));
        let other = read_root_file(&Bytes(&img), "OVF_ENV.XML", 64).expect("iso");
        assert_eq!(other.data.as_deref(), Some(&b"underscore"[..]));
    }

    #[test]
    fn rock_ridge_without_joliet_uses_plain_names() {
        if !have_tool("genisoimage") {
            return;
        }
        let img = image(&["-R"], &[("ovf-env.xml", OVF)]);
        assert_eq!(read(&img).expect("iso").data.as_deref(), Some(OVF));
    }

    #[test]
    fn udf_bridge_image_read_as_iso() {
        if !have_tool("genisoimage") {
            return;
        }
        let img = image(&["-udf", "-J", "-R"], &[("ovf-env.xml", OVF)]);
        let found = read(&img).expect("iso view of a bridge disc");
        assert_eq!(found.data.as_deref(), Some(OVF));
        assert_eq!(found.label.as_deref(), Some(LABEL));
    }

    #[test]
    fn many_entries_and_large_file() {
        if !have_tool("genisoimage") {
            return;
        }
        let big: Vec<u8> = (0..600_000u32).map(|i| (i ^ (i >> 11)) as u8).collect();
        let names: Vec<String> = (0..200).map(|i| format!("a-long-file-name-for-entry-{i:04}.txt")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
        files.push(("big.bin", &big));
        files.push(("ovf-env.xml", OVF));
        for args in [&["-J"][..], &[]] {
            let img = image(args, &files);
            assert_eq!(read(&img).expect("iso").data.as_deref(), Some(OVF), "{args:?}");
            let got = read_root_file(&Bytes(&img), "big.bin", MAX_OVF_BYTES).expect("iso").data;
            assert_eq!(got.as_deref(), Some(big.as_slice()), "{args:?}");
            if !args.is_empty() {
                let got = read_root_file(&Bytes(&img), &names[199], 64).expect("iso").data;
                assert_eq!(got.as_deref(), Some(names[199].as_bytes()));
            }
        }
    }

    /// A minimal hand-made ISO: PVD (16), terminator (17), root directory (18), data from 20.
    fn handmade(records: &[(&[u8], u32, u32, u8, u8)]) -> Vec<u8> {
        let mut img = vec![0u8; 40 * 2048];
        let pvd = &mut img[16 * 2048..17 * 2048];
        pvd[0] = 1;
        pvd[1..6].copy_from_slice(b"CD001");
        pvd[6] = 1;
        pvd[40..72].fill(b' ');
        pvd[40..44].copy_from_slice(b"HAND");
        pvd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        let root = &mut pvd[156..190];
        root[0] = 34;
        root[2..6].copy_from_slice(&18u32.to_le_bytes());
        root[10..14].copy_from_slice(&2048u32.to_le_bytes());
        root[25] = 2;
        root[32] = 1;
        let term = &mut img[17 * 2048..18 * 2048];
        term[0] = 255;
        term[1..6].copy_from_slice(b"CD001");
        term[6] = 1;
        let mut pos = 18 * 2048;
        for (name, lba, len, flags, xattr) in records {
            let rec_len = (33 + name.len() + 1) & !1;
            let r = &mut img[pos..pos + rec_len];
            r[0] = rec_len as u8;
            r[1] = *xattr;
            r[2..6].copy_from_slice(&lba.to_le_bytes());
            r[10..14].copy_from_slice(&len.to_le_bytes());
            r[25] = *flags;
            r[32] = name.len() as u8;
            r[33..33 + name.len()].copy_from_slice(name);
            pos += rec_len;
        }
        for (i, b) in img[20 * 2048..].iter_mut().enumerate() {
            *b = (i % 253) as u8;
        }
        img
    }

    #[test]
    fn handmade_multi_extent_and_extended_attributes() {
        let img = handmade(&[
            (b"\0", 18, 2048, 2, 0),
            (b"\x01", 18, 2048, 2, 0),
            (b"OVF_ENV.XML;1", 20, 2048, 0x80, 0),
            (b"OVF_ENV.XML;1", 25, 100, 0, 0),
            (b"XATTR.TXT;1", 21, 10, 0, 1),
            (b"DIR", 19, 2048, 2, 0),
        ]);
        let found = read(&img).expect("iso");
        assert_eq!(found.label.as_deref(), Some("HAND"));
        let data = found.data.expect("multi-extent file");
        let expect: Vec<u8> = (0..2048).chain(5 * 2048..5 * 2048 + 100).map(|i| (i % 253) as u8).collect();
        assert_eq!(data, expect);
        let x = read_root_file(&Bytes(&img), "xattr.txt", 64).expect("iso").data.expect("xattr file");
        assert_eq!(x, (2 * 2048..2 * 2048 + 10).map(|i| (i % 253) as u8).collect::<Vec<_>>());
        assert!(read_root_file(&Bytes(&img), "dir", 64).expect("iso").data.is_none(), "directories are not files");
        // A multi-extent file without its final section is corrupt.
        let img = handmade(&[(b"OVF_ENV.XML;1", 20, 2048, 0x80, 0), (b"OTHER;1", 21, 1, 0, 0)]);
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
        // Data beyond the end of the media is corrupt.
        let img = handmade(&[(b"OVF_ENV.XML;1", 39, 4096, 0, 0)]);
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
        // Other block sizes are rejected.
        let mut img = handmade(&[]);
        img[16 * 2048 + 128..16 * 2048 + 130].copy_from_slice(&512u16.to_le_bytes());
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
    }

    #[test]
    fn name_matching() {
        assert!(name_matches(b"OVF_ENV.XML;1", Names::Plain, "ovf-env.xml"));
        assert!(name_matches(b"OVF-ENV.XML", Names::Plain, "ovf-env.xml"));
        assert!(name_matches(b"OVF_ENV.XML.;1", Names::Plain, "ovf-env.xml"));
        assert!(!name_matches(b"OVF_ENV.XM;1", Names::Plain, "ovf-env.xml"));
        assert!(!name_matches(b"OVFXENV.XML;1", Names::Plain, "ovf-env.xml"));
        let joliet: Vec<u8> = "Ovf-Env.xml".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        assert!(name_matches(&joliet, Names::Joliet, "ovf-env.xml"));
        let underscore: Vec<u8> = "ovf_env.xml".encode_utf16().flat_map(|u| u.to_be_bytes()).collect();
        assert!(!name_matches(&underscore, Names::Joliet, "ovf-env.xml"));
    }

    #[test]
    fn garbage_zero_and_udf_only_images_are_not_recognized() {
        assert!(matches!(read(&[]), Err(MediaError::NotRecognized)));
        assert!(matches!(read(&vec![0u8; 1 << 20]), Err(MediaError::NotRecognized)));
        let mut rng = Rng(7);
        for size in [10usize, 2048 * 17, 1 << 20] {
            let img: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            assert!(matches!(read(&img), Err(MediaError::NotRecognized)), "{size}");
        }
        // A pure UDF volume (no ISO9660 bridge).
        if have_tool("mkudffs") {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("img");
            std::fs::File::create(&path).and_then(|f| f.set_len(4096 * 2048)).expect("create image");
            super::super::testsupport::run(
                std::process::Command::new("mkudffs").args(["--media-type=hd", "-b", "2048"]).arg(&path),
            );
            let img = std::fs::read(&path).expect("read image");
            assert!(matches!(read(&img), Err(MediaError::NotRecognized)));
        }
        // "CD001" alone, without a usable descriptor set.
        let mut img = vec![0u8; 40 * 2048];
        img[16 * 2048 + 1..16 * 2048 + 6].copy_from_slice(b"CD001");
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
    }

    #[test]
    fn damaged_images_never_panic() {
        let hand = handmade(&[(b"OVF_ENV.XML;1", 20, 2048, 0x80, 0), (b"OVF_ENV.XML;1", 25, 100, 0, 0)]);
        torture(&hand, &[16, 17, 18], read);
        if !have_tool("genisoimage") {
            return;
        }
        for args in [&["-J"][..], &["-udf", "-J", "-R"]] {
            let img = image(args, &[("ovf-env.xml", OVF), ("b.txt", b"b")]);
            let hot: Vec<usize> = (16..img.len() / 2048)
                .filter(|&s| img[s * 2048..(s + 1) * 2048].iter().any(|&b| b != 0))
                .take(12)
                .collect();
            torture(&img, &hot, read);
        }
    }
}
