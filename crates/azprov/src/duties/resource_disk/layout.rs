//! What is on a disk, read in user space: file system signatures, MBR/GPT partition tables, and the verdict of the
//! safety rule (platform.md §9.8). Also the GPT we write. Pure: bytes in (`ReadAt`), types out.

use std::io;

use super::ntfs_root;
use crate::platform::media::ReadAt;

const MIB: u64 = 1 << 20;

/// A signature at the start of a partition or disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    Ext,
    Xfs,
    Btrfs,
    Ntfs,
    Luks,
    BitLocker,
    Swap,
    Fat,
}

impl Signature {
    pub fn name(self) -> &'static str {
        match self {
            Signature::Ext => "ext2/3/4",
            Signature::Xfs => "xfs",
            Signature::Btrfs => "btrfs",
            Signature::Ntfs => "NTFS",
            Signature::Luks => "LUKS",
            Signature::BitLocker => "BitLocker",
            Signature::Swap => "swap",
            Signature::Fat => "FAT",
        }
    }
    /// The `mount -t` type for a Linux file system we mount as is.
    pub fn mount_type(self) -> Option<&'static str> {
        match self {
            Signature::Ext => Some("ext4"),
            Signature::Xfs => Some("xfs"),
            _ => None,
        }
    }
}

/// Read up to `len` bytes at `offset`, fewer at the end of the device.
fn read_clamped(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let avail = src.size().saturating_sub(offset).min(len as u64) as usize;
    let mut buf = vec![0u8; avail];
    if avail > 0 {
        src.read_at(offset, &mut buf)?;
    }
    Ok(buf)
}

/// The signature of the file system or container starting at `offset`, if any we know.
pub fn signature(src: &dyn ReadAt, offset: u64) -> io::Result<Option<Signature>> {
    let b = read_clamped(src, offset, 0x10100)?;
    let at = |o: usize, magic: &[u8]| b.get(o..o + magic.len()) == Some(magic);
    Ok(if at(0, b"LUKS\xba\xbe") || at(0, b"SKUL\xba\xbe") {
        Some(Signature::Luks)
    } else if at(3, b"-FVE-FS-") {
        Some(Signature::BitLocker)
    } else if at(3, b"NTFS    ") {
        Some(Signature::Ntfs)
    } else if at(0, b"XFSB") {
        Some(Signature::Xfs)
    } else if at(0x438, &[0x53, 0xef]) {
        Some(Signature::Ext)
    } else if at(0x10040, b"_BHRfS_M") {
        Some(Signature::Btrfs)
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        Some(Signature::Swap)
    } else if (at(0x36, b"FAT") || at(0x52, b"FAT32")) && at(510, &[0x55, 0xaa]) {
        Some(Signature::Fat)
    } else {
        None
    })
}

/// The 16-byte volume UUID of an ext or xfs file system at `offset`, formatted `8-4-4-4-12`.
pub fn fs_uuid(src: &dyn ReadAt, offset: u64, sig: Signature) -> io::Result<Option<String>> {
    let at = match sig {
        Signature::Ext => 1024 + 0x68,
        Signature::Xfs => 32,
        _ => return Ok(None),
    };
    let mut u = [0u8; 16];
    src.read_at(offset + at, &mut u)?;
    if u.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])))
}

/// One used partition table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the kernel numbers it.
    pub number: u32,
    /// Byte offset and length.
    pub start: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    None,
    Mbr(Vec<Partition>),
    Gpt(Vec<Partition>),
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3], b[o + 4], b[o + 5], b[o + 6], b[o + 7]])
}

/// The partition table: GPT (512- or 4096-byte sectors) else MBR. `Err` for tables we do not understand
/// (extended partitions, entries beyond the disk).
pub fn partition_table(src: &dyn ReadAt) -> io::Result<Result<Table, String>> {
    let size = src.size();
    for sector in [512u64, 4096] {
        let hdr = read_clamped(src, sector, 92)?;
        if hdr.len() < 92 || &hdr[..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = le64(&hdr, 72);
        let count = le32(&hdr, 80) as u64;
        let esize = le32(&hdr, 84) as u64;
        if !(128..=4096).contains(&esize) || count > 1024 {
            return Ok(Err(format!("GPT header with {count} entries of {esize} bytes")));
        }
        let Some(off) = entries_lba.checked_mul(sector) else {
            return Ok(Err("GPT entries beyond the disk".into()));
        };
        let raw = read_clamped(src, off, (count * esize) as usize)?;
        let mut parts = Vec::new();
        for i in 0..count {
            let Some(e) = raw.get((i * esize) as usize..(i * esize + 128) as usize) else {
                return Ok(Err("GPT entries beyond the disk".into()));
            };
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            let start = first.saturating_mul(sector);
            let end = last.saturating_add(1).saturating_mul(sector);
            if last < first || end > size {
                return Ok(Err(format!("GPT partition {} lies outside the disk", i + 1)));
            }
            parts.push(Partition { number: (i + 1) as u32, start, len: end - start });
        }
        return Ok(Ok(Table::Gpt(parts)));
    }
    let mbr = read_clamped(src, 0, 512)?;
    if mbr.len() < 512 || le16(&mbr, 510) != 0xaa55 {
        return Ok(Ok(Table::None));
    }
    let mut parts = Vec::new();
    for i in 0..4 {
        let e = &mbr[0x1be + i * 16..0x1be + (i + 1) * 16];
        let kind = e[4];
        let (lba, count) = (le32(e, 8) as u64, le32(e, 12) as u64);
        if kind == 0 || count == 0 {
            continue;
        }
        if matches!(kind, 0x05 | 0x0f | 0x85) {
            return Ok(Err("MBR with extended partitions".into()));
        }
        if kind == 0xee {
            return Ok(Err("protective MBR without a GPT header".into()));
        }
        let (start, len) = (lba * 512, count * 512);
        if start + len > size {
            return Ok(Err(format!("MBR partition {} lies outside the disk", i + 1)));
        }
        parts.push(Partition { number: (i + 1) as u32, start, len });
    }
    Ok(Ok(Table::Mbr(parts)))
}

/// `MD_SB_MAGIC`, little-endian on disk.
const MD_MAGIC: [u8; 4] = 0xa92b_4efc_u32.to_le_bytes();

/// An md RAID superblock on a whole disk: `Some(array name)` (v1.x: `set_name`, often `host:name`; v0.90 has
/// none: empty). Looks where each metadata version keeps it: 4 KiB (1.2), the start (1.1), 8 KiB before the end
/// rounded to 4 KiB (1.0), 64 KiB before the end rounded to 64 KiB (0.90).
pub fn md_superblock(src: &dyn ReadAt) -> io::Result<Option<String>> {
    let size = src.size();
    let v1_end = ((size / 512).saturating_sub(16) & !7) * 512;
    for off in [4096, 0, v1_end] {
        let b = read_clamped(src, off, 64)?;
        if b.len() == 64 && b[..4] == MD_MAGIC && b[4..8] == 1u32.to_le_bytes() {
            let name = &b[32..64];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            return Ok(Some(String::from_utf8_lossy(&name[..end]).into_owned()));
        }
    }
    if size >= 128 << 10 {
        let b = read_clamped(src, (size & !0xffff) - (64 << 10), 4)?;
        if b[..] == MD_MAGIC {
            return Ok(Some(String::new()));
        }
    }
    Ok(None)
}

/// What to do with a disk (the safety rule, re-checked every boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing on it (zeros where tables and superblocks live): may be formatted.
    Blank,
    /// The NTFS volume the platform ships, holding nothing but its own files: may be formatted.
    FreshNtfs { partition: Option<u32> },
    /// A Linux file system: mounted as it is. `partition` None = the whole disk.
    Linux { fs: Signature, partition: Option<Partition> },
    /// LUKS or BitLocker: never touched, no swap.
    Encrypted(Signature),
    /// Anything else: left alone, with the reason.
    Keep(String),
}

/// Apply the safety rule of platform.md §9.8 to a whole disk.
pub fn classify(src: &dyn ReadAt) -> io::Result<Verdict> {
    let whole = signature(src, 0)?;
    match whole {
        Some(s @ (Signature::Luks | Signature::BitLocker)) => return Ok(Verdict::Encrypted(s)),
        Some(s @ (Signature::Ext | Signature::Xfs)) => return Ok(Verdict::Linux { fs: s, partition: None }),
        Some(Signature::Ntfs) => {
            return Ok(match ntfs_root::check_fresh(src, 0, src.size()) {
                Ok(()) => Verdict::FreshNtfs { partition: None },
                Err(why) => Verdict::Keep(why),
            });
        }
        // a FAT boot sector also carries 0x55AA: a FAT file system unless a partition table says otherwise
        Some(Signature::Fat) if matches!(partition_table(src)?, Ok(Table::Mbr(ref p)) if !p.is_empty()) => {}
        Some(s) => return Ok(Verdict::Keep(format!("the disk holds a {} signature", s.name()))),
        None => {}
    }
    let parts = match partition_table(src)? {
        Ok(Table::None) => {
            let head = read_clamped(src, 0, MIB as usize)?;
            return Ok(if head.iter().all(|&b| b == 0) {
                Verdict::Blank
            } else {
                Verdict::Keep("unknown data and no partition table".into())
            });
        }
        Ok(Table::Mbr(p)) | Ok(Table::Gpt(p)) => p,
        Err(why) => return Ok(Verdict::Keep(why)),
    };
    let sigs: Vec<(Partition, Option<Signature>)> =
        parts.iter().map(|p| signature(src, p.start).map(|s| (*p, s))).collect::<io::Result<_>>()?;
    if let Some(enc) = sigs.iter().find_map(|(_, s)| s.filter(|s| matches!(s, Signature::Luks | Signature::BitLocker)))
    {
        return Ok(Verdict::Encrypted(enc));
    }
    match sigs.len() {
        0 => return Ok(Verdict::Keep("a partition table without partitions".into())),
        1 | 2 => {}
        n => return Ok(Verdict::Keep(format!("{n} partitions"))),
    }
    // the candidate: partition 2 of two (a Microsoft Reserved partition comes first on large GPT disks), else 1
    let (part, sig) = sigs[sigs.len() - 1];
    Ok(match sig {
        Some(Signature::Ntfs) => match ntfs_root::check_fresh(src, part.start, part.len) {
            Ok(()) => Verdict::FreshNtfs { partition: Some(part.number) },
            Err(why) => Verdict::Keep(why),
        },
        Some(s @ (Signature::Ext | Signature::Xfs)) if sigs.len() == 1 => {
            Verdict::Linux { fs: s, partition: Some(part) }
        }
        Some(s) => Verdict::Keep(format!("partition {} holds {}", part.number, s.name())),
        None if sigs.len() == 1 && our_unfinished_layout(src)? => Verdict::Blank,
        None => Verdict::Keep(format!("partition {} holds no file system we know", part.number)),
    })
}

/// Our own GPT (exactly the one [`gpt_one_partition`] lays out for this disk: one Linux partition named
/// `resource`) with no file system in it: a format that was interrupted between the partition table and mkfs
/// (power cut, a failed mkfs). Nobody's data can be there, so it counts as blank.
fn our_unfinished_layout(src: &dyn ReadAt) -> io::Result<bool> {
    for sector in [512u64, 4096] {
        let hdr = read_clamped(src, sector, 92)?;
        if hdr.len() < 92 || &hdr[..8] != b"EFI PART" {
            continue;
        }
        let Some(want) = gpt_one_partition(src.size(), sector, [0; 32]) else { return Ok(false) };
        let (count, esize) = (le32(&hdr, 80) as u64, le32(&hdr, 84) as u64);
        let Some(off) = le64(&hdr, 72).checked_mul(sector) else { return Ok(false) };
        let raw = read_clamped(src, off, (count.min(1024) * esize.min(4096)) as usize)?;
        let used: Vec<&[u8]> =
            raw.chunks(esize.max(128) as usize).filter(|e| e.len() >= 128 && e[..16].iter().any(|&b| b != 0)).collect();
        let [e] = used.as_slice() else { return Ok(false) };
        if e[..16] != LINUX_FS {
            return Ok(false);
        }
        let name: Vec<u16> = e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let (first, last) = (le64(e, 32), le64(e, 40));
        // LBAs from the disk: no overflow on absurd values (they simply do not match our layout)
        let (start, len) =
            (first.saturating_mul(sector), last.saturating_add(1).saturating_sub(first).saturating_mul(sector));
        return Ok(String::from_utf16_lossy(&name[..end]) == "resource"
            && start == want.partition.start
            && len == want.partition.len);
    }
    Ok(false)
}

/// IEEE CRC-32 (GPT header and entry array checksums).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Linux filesystem data, 0FC63DAF-8483-4772-8E79-3D69D8477DE4, in GPT (mixed-endian) byte order.
const LINUX_FS: [u8; 16] =
    [0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4];
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;

/// A GPT with one Linux partition spanning the disk (1 MiB aligned), ready to write.
#[derive(Debug, Clone)]
pub struct GptImage {
    /// Protective MBR, primary header and entries, written at offset 0.
    pub head: Vec<u8>,
    /// Backup entries and header, written at `tail_offset`.
    pub tail: Vec<u8>,
    pub tail_offset: u64,
    pub partition: Partition,
}

/// Lay out a GPT for a disk of `size` bytes with `sector`-byte logical blocks. `guids` are 32 random bytes (disk
/// and partition GUIDs). `None` when the disk is too small for a partition.
pub fn gpt_one_partition(size: u64, sector: u64, guids: [u8; 32]) -> Option<GptImage> {
    if !matches!(sector, 512 | 4096) {
        return None;
    }
    let lbas = size / sector;
    let entry_sectors = (ENTRIES * ENTRY_SIZE).div_ceil(sector);
    let last_lba = lbas.checked_sub(1)?;
    let first_usable = 2 + entry_sectors;
    let last_usable = last_lba.checked_sub(entry_sectors + 1)?;
    let align = MIB / sector;
    let first = first_usable.div_ceil(align) * align;
    let last = ((last_usable + 1) / align * align).checked_sub(1)?;
    if last <= first {
        return None;
    }
    let guid = |b: &[u8]| {
        let mut g = [0u8; 16];
        g.copy_from_slice(b);
        g[7] = (g[7] & 0x0f) | 0x40; // version 4 (time_hi is little-endian on disk)
        g[8] = (g[8] & 0x3f) | 0x80;
        g
    };
    let (disk_guid, part_guid) = (guid(&guids[..16]), guid(&guids[16..]));

    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    entries[..16].copy_from_slice(&LINUX_FS);
    entries[16..32].copy_from_slice(&part_guid);
    entries[32..40].copy_from_slice(&first.to_le_bytes());
    entries[40..48].copy_from_slice(&last.to_le_bytes());
    for (i, c) in "resource".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32(&entries);
    let header = |my: u64, alt: u64, entries_lba: u64| {
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.resize(sector as usize, 0);
        h
    };
    let s = sector as usize;
    let mut head = vec![0u8; s];
    // protective MBR: one 0xEE entry covering the disk
    let pmbr = &mut head[0x1be..0x1ce];
    pmbr[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pmbr[4] = 0xee;
    pmbr[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pmbr[8..12].copy_from_slice(&1u32.to_le_bytes());
    pmbr[12..16].copy_from_slice(&(u32::try_from(lbas - 1).unwrap_or(u32::MAX)).to_le_bytes());
    head[510] = 0x55;
    head[511] = 0xaa;
    head.extend_from_slice(&header(1, last_lba, 2));
    head.extend_from_slice(&entries);
    let backup_entries_lba = last_lba - entry_sectors;
    let mut tail = entries.clone();
    tail.resize((entry_sectors * sector) as usize, 0);
    tail.extend_from_slice(&header(last_lba, 1, backup_entries_lba));
    Some(GptImage {
        head,
        tail,
        tail_offset: backup_entries_lba * sector,
        partition: Partition { number: 1, start: first * sector, len: (last - first + 1) * sector },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(size: usize) -> Vec<u8> {
        vec![0u8; size]
    }

    #[test]
    fn our_interrupted_format_counts_as_blank_anything_else_is_kept() {
        let size = 64 * MIB as usize;
        let g = gpt_one_partition(size as u64, 512, [9u8; 32]).unwrap();
        let mut d = disk(size);
        d[..g.head.len()].copy_from_slice(&g.head);
        let t = g.tail_offset as usize;
        d[t..t + g.tail.len()].copy_from_slice(&g.tail);
        // what an old NTFS volume left inside the new partition: junk, no signature
        let p = g.partition.start as usize;
        d[p + 4096..p + 8192].fill(0x5a);
        assert_eq!(classify(&d).unwrap(), Verdict::Blank);
        // the same layout under another partition name: somebody else's, kept
        let mut other = d.clone();
        other[1024 + 56] = b'X';
        assert!(matches!(classify(&other).unwrap(), Verdict::Keep(_)));
        // a header whose entries are shorter than 128 bytes, or whose LBAs overflow: not ours, no panic
        let mut short = d.clone();
        short[512 + 80..512 + 84].copy_from_slice(&1u32.to_le_bytes());
        short[512 + 84..512 + 88].copy_from_slice(&8u32.to_le_bytes());
        assert!(!our_unfinished_layout(&short).unwrap());
        let mut huge = d.clone();
        huge[1024 + 32..1024 + 48].fill(0xff);
        assert!(!our_unfinished_layout(&huge).unwrap());
        // our layout with a file system in it is not blank
        let mut ext = d.clone();
        ext[p + 1024 + 56..p + 1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
        assert!(matches!(classify(&ext).unwrap(), Verdict::Linux { .. }));
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn gpt_round_trips_and_is_aligned() {
        for sector in [512u64, 4096] {
            let size = 64 * MIB as usize + 12345;
            let g = gpt_one_partition(size as u64, sector, [7u8; 32]).unwrap();
            let mut d = disk(size);
            d[..g.head.len()].copy_from_slice(&g.head);
            let t = g.tail_offset as usize;
            d[t..t + g.tail.len()].copy_from_slice(&g.tail);
            assert_eq!(g.partition.start, MIB);
            assert_eq!(g.partition.len % MIB, 0);
            assert_eq!(t + g.tail.len(), size / sector as usize * sector as usize);
            assert_eq!(partition_table(&d).unwrap().unwrap(), Table::Gpt(vec![g.partition]));
            // header CRC checks out
            let h = &d[sector as usize..sector as usize + 92];
            let mut z = h.to_vec();
            z[16..20].fill(0);
            assert_eq!(crc32(&z), le32(h, 16));
            // our own table with nothing in it yet (an interrupted format): formatted again
            assert_eq!(classify(&d).unwrap(), Verdict::Blank);
        }
        assert!(gpt_one_partition(MIB, 512, [0; 32]).is_none());
        assert!(gpt_one_partition(64 * MIB, 1024, [0; 32]).is_none());
    }

    #[test]
    fn blank_encrypted_and_unknown() {
        let mut d = disk(4 * MIB as usize);
        assert_eq!(classify(&d).unwrap(), Verdict::Blank);
        d[..6].copy_from_slice(b"LUKS\xba\xbe");
        assert_eq!(classify(&d).unwrap(), Verdict::Encrypted(Signature::Luks));
        d[..6].fill(0);
        d[3..11].copy_from_slice(b"-FVE-FS-");
        assert_eq!(classify(&d).unwrap(), Verdict::Encrypted(Signature::BitLocker));
        d[3..11].fill(0);
        d[2 * MIB as usize - 1] = 1;
        assert!(matches!(classify(&d).unwrap(), Verdict::Blank));
        d[100] = 1;
        assert!(matches!(classify(&d).unwrap(), Verdict::Keep(_)));
    }

    fn mbr(d: &mut [u8], parts: &[(u8, u32, u32)]) {
        for (i, (kind, lba, n)) in parts.iter().enumerate() {
            let e = &mut d[0x1be + i * 16..0x1be + (i + 1) * 16];
            e[4] = *kind;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&n.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xaa;
    }

    #[test]
    fn mbr_rules() {
        let mut d = disk(8 * MIB as usize);
        mbr(&mut d, &[(0x83, 2048, 4096)]);
        // ext superblock magic in partition 1
        d[MIB as usize + 0x438] = 0x53;
        d[MIB as usize + 0x439] = 0xef;
        assert_eq!(
            classify(&d).unwrap(),
            Verdict::Linux { fs: Signature::Ext, partition: Some(Partition { number: 1, start: MIB, len: 2 * MIB }) }
        );
        mbr(&mut d, &[(0x83, 2048, 4096), (0x83, 6144, 100), (0x83, 6244, 100)]);
        assert_eq!(classify(&d).unwrap(), Verdict::Keep("3 partitions".into()));
        mbr(&mut d, &[(0x83, 2048, 4096), (0x05, 6144, 100)]);
        assert_eq!(classify(&d).unwrap(), Verdict::Keep("MBR with extended partitions".into()));
        mbr(&mut d, &[(0x83, 2048, 40960)]);
        assert!(matches!(classify(&d).unwrap(), Verdict::Keep(ref r) if r.contains("outside")));
        let mut d = disk(8 * MIB as usize);
        mbr(&mut d, &[(0x83, 2048, 4096)]);
        d[MIB as usize..MIB as usize + 6].copy_from_slice(b"LUKS\xba\xbe");
        assert_eq!(classify(&d).unwrap(), Verdict::Encrypted(Signature::Luks));
    }

    #[test]
    fn uuid_formatting() {
        let mut d = disk(8192);
        d[0x438] = 0x53;
        d[0x439] = 0xef;
        for (i, b) in d[1024 + 0x68..1024 + 0x78].iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(fs_uuid(&d, 0, Signature::Ext).unwrap().unwrap(), "00010203-0405-0607-0809-0a0b0c0d0e0f");
        assert_eq!(fs_uuid(&d, 0, Signature::Ntfs).unwrap(), None);
    }

    #[test]
    fn md_superblocks() {
        let mut d = disk(1 << 20);
        assert_eq!(md_superblock(&d).unwrap(), None);
        let put = |d: &mut [u8], off: usize, name: &[u8]| {
            d[off..off + 4].copy_from_slice(&MD_MAGIC);
            d[off + 4..off + 8].copy_from_slice(&1u32.to_le_bytes());
            d[off + 32..off + 32 + name.len()].copy_from_slice(name);
        };
        put(&mut d, 4096, b"vm1:azprov-resource");
        assert_eq!(md_superblock(&d).unwrap().as_deref(), Some("vm1:azprov-resource"));
        assert!(matches!(classify(&d).unwrap(), Verdict::Keep(_)));
        let mut e = disk(1 << 20);
        put(&mut e, (1 << 20) - 16 * 512, b"other");
        assert_eq!(md_superblock(&e).unwrap().as_deref(), Some("other"));
        let mut f = disk(1 << 20);
        f[(1 << 20) - (64 << 10)..][..4].copy_from_slice(&MD_MAGIC);
        assert_eq!(md_superblock(&f).unwrap().as_deref(), Some(""));
        assert_eq!(md_superblock(&vec![0u8; 100]).unwrap(), None);
    }
}
