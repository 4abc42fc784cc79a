//! UDF (ECMA-167 / OSTA UDF 1.02–2.60) reader, including the metadata partition of UDF ≥ 2.50.
//! See platform.md §2.2. Every offset is bounds-checked; this is a fuzz target.
//!
//! Scope: read one file from the root directory of a read-only (type-1 and metadata partition maps) volume with
//! 2048-byte blocks. VAT and sparable maps (write-once / rewritable media) and ICB strategy 4096 are rejected.

use super::{MediaError, ReadAt, RootFile};
use std::io;

const BLOCK: usize = 2048;
const BLOCK64: u64 = BLOCK as u64;

/// Volume Descriptor Sequence: descriptors examined in total (including VDP hops), and VDP hops.
const MAX_VDS_DESCRIPTORS: usize = 512;
const MAX_VDP_HOPS: usize = 16;
const MAX_PARTITION_MAPS: usize = 64;
/// Allocation descriptors per file (summed over its Allocation Extent Descriptor chain).
const MAX_EXTENTS: usize = 4096;
/// Allocation Extent Descriptors followed per file.
const MAX_AED_CHAIN: usize = 256;
/// Largest directory (FID stream) we read.
const MAX_DIR_BYTES: usize = 4 << 20;
/// Largest metadata file we map (bytes); far above anything a DVD carries.
const MAX_METADATA_BYTES: u64 = 1 << 40;

const TAG_AVDP: u16 = 2;
const TAG_VDP: u16 = 3;
const TAG_PD: u16 = 5;
const TAG_LVD: u16 = 6;
const TAG_TD: u16 = 8;
const TAG_FSD: u16 = 256;
const TAG_FID: u16 = 257;
const TAG_AED: u16 = 258;
const TAG_FE: u16 = 261;
const TAG_EFE: u16 = 266;

const FT_DIRECTORY: u8 = 4;
const FT_FILE: u8 = 5;
const FT_METADATA: u8 = 250;
const FT_METADATA_MIRROR: u8 = 251;

fn corrupt(msg: impl Into<String>) -> MediaError {
    MediaError::Corrupt { fs: "UDF", msg: msg.into() }
}

/// Look up `name` (case-insensitive) in the root directory. `Err(NotRecognized)` when there is no UDF anchor;
/// `Ok(RootFile { data: None, .. })` when the file is absent; `Err(TooLarge)` above `max` bytes.
pub fn read_root_file(src: &dyn ReadAt, name: &str, max: usize) -> Result<RootFile, MediaError> {
    let anchor = find_anchor(src)?;
    let vol = Volume::open(src, &anchor)?;
    let root = vol.root_directory()?;
    let data = match vol.lookup(&root, name)? {
        None => None,
        Some(ad) => {
            let icb = vol.read_icb(ad)?;
            if icb.file_type != FT_FILE {
                return Err(corrupt(format!("{name} is not a regular file (ICB file type {})", icb.file_type)));
            }
            Some(vol.read_content(&icb, max)?.0)
        }
    };
    Ok(RootFile { label: vol.label.clone(), data })
}

// ---------------------------------------------------------------------------------------------------------------
// Little helpers: bounds-checked integer reads, tags, CRC, d-characters.

fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn field<T>(v: Option<T>, what: &str) -> Result<T, MediaError> {
    v.ok_or_else(|| corrupt(format!("{what}: field out of bounds")))
}

/// CRC-CCITT (polynomial 0x1021, initial value 0, not reflected), as used by ECMA-167 descriptor tags.
pub(crate) fn crc_ccitt(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| (crc << 8) ^ CRC_TABLE[usize::from((crc >> 8) as u8 ^ b)])
}

const CRC_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// Sum of tag bytes 0..16 except byte 4, modulo 256.
pub(crate) fn tag_checksum(tag: &[u8]) -> u8 {
    tag.iter().take(16).enumerate().filter(|(i, _)| *i != 4).fold(0u8, |acc, (_, &b)| acc.wrapping_add(b))
}

/// Why a descriptor tag was refused.
#[derive(Debug)]
enum TagError {
    /// Not a descriptor at all (no valid checksum / version / identifier).
    Absent,
    /// Looks like the wanted descriptor but its location or CRC is wrong.
    Bad(String),
}

/// Verify the 16-byte tag at the start of `desc`: identifier (one of `ids`), version 2 or 3, checksum, location
/// and (when the CRC-covered bytes are available) the descriptor CRC. Returns the tag identifier.
fn check_tag(desc: &[u8], ids: &[u16], location: u32) -> Result<u16, TagError> {
    let tag = desc.get(..16).ok_or(TagError::Absent)?;
    let id = u16_at(tag, 0).ok_or(TagError::Absent)?;
    let version = u16_at(tag, 2).ok_or(TagError::Absent)?;
    if !ids.contains(&id) || !(version == 2 || version == 3) || tag_checksum(tag) != tag[4] {
        return Err(TagError::Absent);
    }
    let tag_loc = u32_at(tag, 12).ok_or(TagError::Absent)?;
    if tag_loc != location {
        return Err(TagError::Bad(format!("descriptor {id} records location {tag_loc}, found at {location}")));
    }
    let crc = u16_at(tag, 8).ok_or(TagError::Absent)?;
    let crc_len = usize::from(u16_at(tag, 10).ok_or(TagError::Absent)?);
    if let Some(body) = desc.get(16..16 + crc_len) {
        if crc_ccitt(body) != crc {
            return Err(TagError::Bad(format!("descriptor {id} at {location}: CRC mismatch")));
        }
    }
    Ok(id)
}

/// `check_tag` for a descriptor that must be there.
fn require_tag(desc: &[u8], ids: &[u16], location: u32, what: &str) -> Result<u16, MediaError> {
    check_tag(desc, ids, location).map_err(|e| match e {
        TagError::Absent => corrupt(format!("{what} at block {location}: no valid descriptor tag")),
        TagError::Bad(msg) => corrupt(format!("{what}: {msg}")),
    })
}

/// Decode OSTA CS0 d-characters: byte 0 is the compression id (8 = Latin-1, 16 = UCS-2BE).
fn decode_dchars(b: &[u8]) -> Option<String> {
    let (&comp, rest) = b.split_first()?;
    match comp {
        8 => Some(rest.iter().map(|&c| char::from(c)).collect()),
        16 => {
            let units = rest.chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]]));
            Some(char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect())
        }
        _ => None,
    }
}

/// A fixed-size dstring: the last byte holds the used length (including the compression id).
fn decode_dstring(field: &[u8]) -> Option<String> {
    let (&len, body) = field.split_last()?;
    let s = decode_dchars(body.get(..usize::from(len))?)?;
    let s = s.trim_end_matches(['\0', ' ']).to_string();
    (!s.is_empty()).then_some(s)
}

fn names_equal(a: &str, b: &str) -> bool {
    a == b || a.to_lowercase() == b.to_lowercase()
}

// ---------------------------------------------------------------------------------------------------------------
// Anchor and volume descriptor sequence.

/// Read a whole number of bytes at `off`; a read past the end of the media means a corrupt file system.
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

fn read_sector(src: &dyn ReadAt, sector: u64) -> Result<Vec<u8>, MediaError> {
    let off = sector.checked_mul(BLOCK64).ok_or_else(|| corrupt("sector number overflow"))?;
    let mut buf = vec![0u8; BLOCK];
    read_exact(src, off, &mut buf)?;
    Ok(buf)
}

/// Extent (length, location) pairs of the main and reserve Volume Descriptor Sequences.
struct Anchor {
    main: (u32, u32),
    reserve: (u32, u32),
}

fn find_anchor(src: &dyn ReadAt) -> Result<Anchor, MediaError> {
    let sectors = src.size() / BLOCK64;
    let mut candidates = vec![256u64];
    if sectors > 512 {
        candidates.push(sectors - 256);
    }
    if sectors > 257 {
        candidates.push(sectors - 1);
    }
    for sector in candidates {
        let Ok(loc) = u32::try_from(sector) else { continue };
        let mut buf = vec![0u8; BLOCK];
        match src.read_at(sector * BLOCK64, &mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => continue,
            Err(e) => return Err(MediaError::Io(e)),
        }
        if check_tag(&buf, &[TAG_AVDP], loc).is_err() {
            continue;
        }
        if let (Some(ml), Some(mp), Some(rl), Some(rp)) =
            (u32_at(&buf, 16), u32_at(&buf, 20), u32_at(&buf, 24), u32_at(&buf, 28))
        {
            return Ok(Anchor { main: (ml, mp), reserve: (rl, rp) });
        }
    }
    // A UDF volume with another block size: recognized, but unsupported.
    for size in [512u64, 1024, 4096, 8192] {
        let mut buf = vec![0u8; 512];
        if src.read_at(256 * size, &mut buf).is_ok() && check_tag(&buf, &[TAG_AVDP], 256).is_ok() {
            return Err(corrupt(format!("logical block size {size} is not supported (only 2048)")));
        }
    }
    Err(MediaError::NotRecognized)
}

#[derive(Clone)]
struct PartitionDesc {
    seq: u32,
    number: u16,
    start: u32,
    length: u32,
}

#[derive(Clone)]
struct LogicalVolumeDesc {
    seq: u32,
    block: Vec<u8>,
}

#[derive(Default, Clone)]
struct Vds {
    partitions: Vec<PartitionDesc>,
    lvd: Option<LogicalVolumeDesc>,
}

/// Walk one Volume Descriptor Sequence, keeping the prevailing (highest sequence number) PD per partition number
/// and LVD. Stops at a Terminating Descriptor or at the first block that is not a descriptor.
fn walk_vds(src: &dyn ReadAt, extent: (u32, u32)) -> Result<Vds, MediaError> {
    let mut vds = Vds::default();
    let (mut len, mut loc) = extent;
    let mut seen = 0usize;
    let mut hops = 0usize;
    'extents: loop {
        let count = (len / BLOCK as u32) as usize;
        for i in 0..count {
            seen += 1;
            if seen > MAX_VDS_DESCRIPTORS {
                return Err(corrupt("volume descriptor sequence too long"));
            }
            let sector = u64::from(loc) + i as u64;
            let Ok(sector32) = u32::try_from(sector) else { break 'extents };
            let buf = read_sector(src, sector)?;
            let id = match check_tag(&buf, &[TAG_PD, TAG_LVD, TAG_TD, TAG_VDP, 1, 4, 7], sector32) {
                Ok(id) => id,
                Err(TagError::Absent) => break 'extents,
                Err(TagError::Bad(msg)) => return Err(corrupt(msg)),
            };
            let seq = field(u32_at(&buf, 16), "volume descriptor")?;
            match id {
                TAG_TD => break 'extents,
                TAG_VDP => {
                    hops += 1;
                    if hops > MAX_VDP_HOPS {
                        return Err(corrupt("too many volume descriptor pointers"));
                    }
                    len = field(u32_at(&buf, 20), "VDP")?;
                    loc = field(u32_at(&buf, 24), "VDP")?;
                    continue 'extents;
                }
                TAG_PD => {
                    let pd = PartitionDesc {
                        seq,
                        number: field(u16_at(&buf, 22), "PD")?,
                        start: field(u32_at(&buf, 188), "PD")?,
                        length: field(u32_at(&buf, 192), "PD")?,
                    };
                    match vds.partitions.iter_mut().find(|p| p.number == pd.number) {
                        Some(old) if old.seq <= pd.seq => *old = pd,
                        Some(_) => {}
                        None => vds.partitions.push(pd),
                    }
                }
                TAG_LVD => {
                    let newer = match &vds.lvd {
                        Some(old) => old.seq <= seq,
                        None => true,
                    };
                    if newer {
                        vds.lvd = Some(LogicalVolumeDesc { seq, block: buf });
                    }
                }
                _ => {} // PVD, IUVD, USD: not needed
            }
        }
        break;
    }
    Ok(vds)
}

// ---------------------------------------------------------------------------------------------------------------
// Partitions and the volume.

/// An extent of the metadata file: metadata blocks [first, first + blocks) live at physical lbn `lbn`.
#[derive(Clone, Copy, Debug)]
struct MetaExtent {
    first: u64,
    blocks: u64,
    lbn: u32,
}

enum Map {
    Physical { start: u64, length: u64 },
    Metadata { phys: u16, extents: Vec<MetaExtent> },
}

/// A long_ad-style address: logical block `lbn` in partition reference `part`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LbAddr {
    lbn: u32,
    part: u16,
}

#[derive(Clone, Copy, Debug)]
struct Extent {
    addr: LbAddr,
    len: u32,
    recorded: bool,
}

enum Content {
    Embedded(Vec<u8>),
    Extents(Vec<Extent>),
}

struct Icb {
    addr: LbAddr,
    file_type: u8,
    info_len: u64,
    content: Content,
}

/// Where each piece of a read stream came from: stream offset `start` is block `lbn` (partition-relative).
#[derive(Clone, Copy)]
struct Segment {
    start: usize,
    lbn: u32,
    /// Embedded data: every byte belongs to the ICB's block.
    embedded: bool,
}

struct Volume<'a> {
    src: &'a dyn ReadAt,
    maps: Vec<Map>,
    label: Option<String>,
    fsd: LbAddr,
}

impl<'a> Volume<'a> {
    fn open(src: &'a dyn ReadAt, anchor: &Anchor) -> Result<Self, MediaError> {
        let main = walk_vds(src, anchor.main);
        let vds = match main {
            Ok(v) if v.lvd.is_some() && !v.partitions.is_empty() => v,
            other => match walk_vds(src, anchor.reserve) {
                Ok(v) if v.lvd.is_some() && !v.partitions.is_empty() => v,
                _ => match other {
                    Err(e) => return Err(e),
                    Ok(_) => return Err(corrupt("no logical volume / partition descriptor in the VDS")),
                },
            },
        };
        let Some(lvd) = vds.lvd.as_ref() else { return Err(corrupt("no logical volume descriptor")) };
        let b = &lvd.block;
        let block_size = field(u32_at(b, 212), "LVD")?;
        if block_size != BLOCK as u32 {
            return Err(corrupt(format!("logical block size {block_size} is not supported (only 2048)")));
        }
        let label = b.get(84..212).and_then(decode_dstring);
        let fsd = LbAddr { lbn: field(u32_at(b, 252), "LVD")?, part: field(u16_at(b, 256), "LVD")? };
        let table_len = field(u32_at(b, 264), "LVD")? as usize;
        let count = field(u32_at(b, 268), "LVD")? as usize;
        if count == 0 || count > MAX_PARTITION_MAPS {
            return Err(corrupt(format!("unsupported number of partition maps: {count}")));
        }
        let table = b
            .get(440..440usize.saturating_add(table_len))
            .ok_or_else(|| corrupt(format!("partition map table length {table_len} exceeds the LVD")))?;

        // First pass: raw maps.
        enum Raw {
            Type1 { number: u16 },
            Meta { number: u16, file: u32, mirror: u32 },
        }
        let mut raws = Vec::with_capacity(count);
        let mut pos = 0usize;
        for i in 0..count {
            let kind = field(u8_at(table, pos), "partition map")?;
            let len = usize::from(field(u8_at(table, pos + 1), "partition map")?);
            let m = table.get(pos..pos + len).ok_or_else(|| corrupt(format!("partition map {i} out of bounds")))?;
            match (kind, len) {
                (1, 6) => raws.push(Raw::Type1 { number: field(u16_at(m, 4), "type-1 map")? }),
                (2, 64) => {
                    let ident = &m[5..28];
                    let ident = ident.split(|&c| c == 0).next().unwrap_or_default();
                    match ident {
                        b"*UDF Metadata Partition" => raws.push(Raw::Meta {
                            number: field(u16_at(m, 38), "metadata map")?,
                            file: field(u32_at(m, 40), "metadata map")?,
                            mirror: field(u32_at(m, 44), "metadata map")?,
                        }),
                        b"*UDF Virtual Partition" => {
                            return Err(corrupt("virtual partition (VAT, write-once media) is not supported"))
                        }
                        b"*UDF Sparable Partition" => {
                            return Err(corrupt("sparable partition (rewritable media) is not supported"))
                        }
                        other => {
                            return Err(corrupt(format!(
                                "unsupported type-2 partition map {:?}",
                                String::from_utf8_lossy(other)
                            )))
                        }
                    }
                }
                _ => return Err(corrupt(format!("partition map {i}: unsupported type {kind} / length {len}"))),
            }
            pos += len;
        }

        let physical = |number: u16| -> Result<Map, MediaError> {
            let pd = vds
                .partitions
                .iter()
                .find(|p| p.number == number)
                .ok_or_else(|| corrupt(format!("no partition descriptor for partition {number}")))?;
            Ok(Map::Physical { start: u64::from(pd.start), length: u64::from(pd.length) })
        };
        let mut vol = Volume { src, maps: Vec::with_capacity(count), label, fsd };
        for raw in &raws {
            let map = match raw {
                Raw::Type1 { number } => physical(*number)?,
                // Placeholder; resolved below once all physical maps exist.
                Raw::Meta { .. } => Map::Physical { start: 0, length: 0 },
            };
            vol.maps.push(map);
        }
        for (i, raw) in raws.iter().enumerate() {
            let Raw::Meta { number, file, mirror } = raw else { continue };
            let phys = raws
                .iter()
                .position(|r| matches!(r, Raw::Type1 { number: n } if n == number))
                .ok_or_else(|| corrupt(format!("metadata partition refers to unmapped partition {number}")))?;
            let phys = u16::try_from(phys).map_err(|_| corrupt("partition map index overflow"))?;
            let extents = match vol.metadata_extents(phys, *file, FT_METADATA) {
                Ok(x) => x,
                Err(first) if *mirror != u32::MAX && *mirror != *file => {
                    vol.metadata_extents(phys, *mirror, FT_METADATA_MIRROR).map_err(|_| first)?
                }
                Err(e) => return Err(e),
            };
            vol.maps[i] = Map::Metadata { phys, extents };
        }
        Ok(vol)
    }

    /// Read the metadata (or mirror) file's ICB and turn its allocation descriptors into a block map.
    fn metadata_extents(&self, phys: u16, lbn: u32, want: u8) -> Result<Vec<MetaExtent>, MediaError> {
        let icb = self.read_icb(LbAddr { lbn, part: phys })?;
        if icb.file_type != want {
            return Err(corrupt(format!("metadata file ICB has file type {} (expected {want})", icb.file_type)));
        }
        if icb.info_len > MAX_METADATA_BYTES {
            return Err(corrupt("metadata file too large"));
        }
        let Content::Extents(ads) = icb.content else {
            return Err(corrupt("metadata file with embedded data"));
        };
        let mut out = Vec::with_capacity(ads.len());
        let mut first = 0u64;
        for ad in ads {
            if first.saturating_mul(BLOCK64) >= icb.info_len {
                break;
            }
            if !ad.recorded {
                return Err(corrupt("metadata file has an unrecorded extent"));
            }
            if ad.addr.part != phys {
                return Err(corrupt("metadata file extent outside its physical partition"));
            }
            let blocks = u64::from(ad.len).div_ceil(BLOCK64);
            out.push(MetaExtent { first, blocks, lbn: ad.addr.lbn });
            first += blocks;
        }
        Ok(out)
    }

    /// Absolute sector of logical block `addr`.
    fn sector(&self, addr: LbAddr) -> Result<u64, MediaError> {
        let map = self
            .maps
            .get(usize::from(addr.part))
            .ok_or_else(|| corrupt(format!("partition reference {} out of range", addr.part)))?;
        match map {
            Map::Physical { start, length } => {
                if u64::from(addr.lbn) >= *length {
                    return Err(corrupt(format!("block {} beyond partition {} length {length}", addr.lbn, addr.part)));
                }
                Ok(start + u64::from(addr.lbn))
            }
            Map::Metadata { phys, extents } => {
                let n = u64::from(addr.lbn);
                let idx = extents.partition_point(|e| e.first + e.blocks <= n);
                let e = extents
                    .get(idx)
                    .filter(|e| e.first <= n)
                    .ok_or_else(|| corrupt(format!("block {n} beyond the metadata file")))?;
                let lbn = u64::from(e.lbn) + (n - e.first);
                let lbn = u32::try_from(lbn).map_err(|_| corrupt("metadata block overflow"))?;
                match self.maps.get(usize::from(*phys)) {
                    Some(Map::Physical { .. }) => self.sector(LbAddr { lbn, part: *phys }),
                    _ => Err(corrupt("metadata partition not backed by a physical partition")),
                }
            }
        }
    }

    fn read_block(&self, addr: LbAddr) -> Result<Vec<u8>, MediaError> {
        let sector = self.sector(addr)?;
        read_sector(self.src, sector)
    }

    fn root_directory(&self) -> Result<Icb, MediaError> {
        let fsd = self.read_block(self.fsd)?;
        require_tag(&fsd, &[TAG_FSD], self.fsd.lbn, "file set descriptor")?;
        let root = LbAddr { lbn: field(u32_at(&fsd, 404), "FSD")?, part: field(u16_at(&fsd, 408), "FSD")? };
        let icb = self.read_icb(root)?;
        if icb.file_type != FT_DIRECTORY {
            return Err(corrupt(format!("root ICB has file type {} (expected directory)", icb.file_type)));
        }
        Ok(icb)
    }

    /// Read and parse a File Entry / Extended File Entry.
    fn read_icb(&self, addr: LbAddr) -> Result<Icb, MediaError> {
        let b = self.read_block(addr)?;
        let id = require_tag(&b, &[TAG_FE, TAG_EFE], addr.lbn, "file entry")?;
        let strategy = field(u16_at(&b, 20), "ICB tag")?;
        match strategy {
            4 => {}
            4096 => return Err(corrupt("ICB strategy 4096 is not supported")),
            s => return Err(corrupt(format!("unsupported ICB strategy {s}"))),
        }
        let file_type = field(u8_at(&b, 27), "ICB tag")?;
        let flags = field(u16_at(&b, 34), "ICB tag")?;
        let info_len = field(u64_at(&b, 56), "file entry")?;
        let (l_ea_off, base) = if id == TAG_FE { (168, 176) } else { (208, 216) };
        let l_ea = field(u32_at(&b, l_ea_off), "file entry")? as usize;
        let l_ad = field(u32_at(&b, l_ea_off + 4), "file entry")? as usize;
        let start = base + l_ea.min(BLOCK);
        let area =
            b.get(start..start.saturating_add(l_ad.min(BLOCK))).filter(|_| l_ea <= BLOCK && l_ad <= BLOCK).ok_or_else(
                || corrupt(format!("file entry at {}: L_EA {l_ea} + L_AD {l_ad} exceed the block", addr.lbn)),
            )?;
        let content = match flags & 7 {
            3 => {
                let len = usize::try_from(info_len).ok().filter(|&n| n <= area.len()).ok_or_else(|| {
                    corrupt(format!("embedded data: information length {info_len} exceeds L_AD {l_ad}"))
                })?;
                Content::Embedded(area[..len].to_vec())
            }
            kind => Content::Extents(self.parse_ads(area, kind, addr.part)?),
        };
        Ok(Icb { addr, file_type, info_len, content })
    }

    /// Parse allocation descriptors of type `kind` (0 short, 1 long, 2 ext), following continuation extents.
    fn parse_ads(&self, first_area: &[u8], kind: u16, part: u16) -> Result<Vec<Extent>, MediaError> {
        let size = match kind {
            0 => 8,
            1 => 16,
            2 => 20,
            k => return Err(corrupt(format!("unknown allocation descriptor type {k}"))),
        };
        let mut out = Vec::new();
        let mut owned: Vec<u8>;
        let mut area: &[u8] = first_area;
        let mut hops = 0usize;
        loop {
            let mut next = None;
            for ad in area.chunks_exact(size) {
                let raw_len = field(u32_at(ad, 0), "AD")?;
                let len = raw_len & 0x3FFF_FFFF;
                let typ = raw_len >> 30;
                if len == 0 {
                    break;
                }
                let addr = match kind {
                    0 => LbAddr { lbn: field(u32_at(ad, 4), "short_ad")?, part },
                    1 => LbAddr { lbn: field(u32_at(ad, 4), "long_ad")?, part: field(u16_at(ad, 8), "long_ad")? },
                    _ => LbAddr { lbn: field(u32_at(ad, 12), "ext_ad")?, part: field(u16_at(ad, 16), "ext_ad")? },
                };
                if typ == 3 {
                    next = Some((addr, len));
                    break;
                }
                if out.len() >= MAX_EXTENTS {
                    return Err(corrupt("too many allocation descriptors"));
                }
                out.push(Extent { addr, len, recorded: typ == 0 });
            }
            let Some((addr, len)) = next else { break };
            hops += 1;
            if hops > MAX_AED_CHAIN {
                return Err(corrupt("allocation extent chain too long"));
            }
            let block = self.read_block(addr)?;
            require_tag(&block, &[TAG_AED], addr.lbn, "allocation extent descriptor")?;
            let l_ad = field(u32_at(&block, 20), "AED")? as usize;
            let limit = (len as usize).min(BLOCK);
            let end = 24usize.saturating_add(l_ad);
            if end > limit {
                return Err(corrupt(format!("allocation extent descriptor at {}: L_AD {l_ad} too large", addr.lbn)));
            }
            owned = block[24..end].to_vec();
            area = &owned;
        }
        Ok(out)
    }

    /// Read an ICB's data (at most `max` bytes, else `TooLarge`), with the block of each piece.
    fn read_content(&self, icb: &Icb, max: usize) -> Result<(Vec<u8>, Vec<Segment>), MediaError> {
        if icb.info_len > max as u64 {
            return Err(MediaError::TooLarge);
        }
        let total = icb.info_len as usize; // <= max
        match &icb.content {
            Content::Embedded(data) => {
                Ok((data.clone(), vec![Segment { start: 0, lbn: icb.addr.lbn, embedded: true }]))
            }
            Content::Extents(extents) => {
                let mut out = Vec::with_capacity(total.min(1 << 20));
                let mut segs = Vec::new();
                for e in extents {
                    if out.len() >= total {
                        break;
                    }
                    let take = (e.len as usize).min(total - out.len());
                    if !e.recorded {
                        out.resize(out.len() + take, 0);
                        continue;
                    }
                    segs.push(Segment { start: out.len(), lbn: e.addr.lbn, embedded: false });
                    let blocks = take.div_ceil(BLOCK);
                    for i in 0..blocks {
                        let lbn = u32::try_from(u64::from(e.addr.lbn) + i as u64)
                            .map_err(|_| corrupt("extent crosses the end of the block address space"))?;
                        let block = self.read_block(LbAddr { lbn, part: e.addr.part })?;
                        let n = (take - i * BLOCK).min(BLOCK);
                        out.extend_from_slice(&block[..n]);
                    }
                }
                if out.len() < total {
                    return Err(corrupt(format!(
                        "allocation descriptors cover {} of {total} bytes of ICB at {}",
                        out.len(),
                        icb.addr.lbn
                    )));
                }
                Ok((out, segs))
            }
        }
    }

    /// Find `name` in a directory; returns the ICB address from its File Identifier Descriptor.
    fn lookup(&self, dir: &Icb, name: &str) -> Result<Option<LbAddr>, MediaError> {
        let (stream, segs) = self.read_content(dir, MAX_DIR_BYTES).map_err(|e| match e {
            MediaError::TooLarge => corrupt("directory too large"),
            e => e,
        })?;
        let mut pos = 0usize;
        while pos < stream.len() {
            // Trailing zero padding ends the stream.
            let rest = &stream[pos..];
            if rest.len() < 38 {
                if rest.iter().all(|&b| b == 0) {
                    break;
                }
                return Err(corrupt("truncated file identifier descriptor"));
            }
            let l_fi = usize::from(rest[19]);
            let l_iu = usize::from(field(u16_at(rest, 36), "FID")?);
            let rec_len = (38 + l_iu + l_fi + 3) & !3;
            let rec = rest.get(..rec_len.min(rest.len())).unwrap_or(rest);
            let location = fid_location(&segs, pos);
            require_tag(rec, &[TAG_FID], location, "file identifier descriptor")?;
            let ident = rest
                .get(38 + l_iu..38 + l_iu + l_fi)
                .ok_or_else(|| corrupt("file identifier descriptor runs past the end of the directory"))?;
            let characteristics = rest[18];
            pos += rec_len;
            if characteristics & (0x04 | 0x08) != 0 || l_fi == 0 {
                continue;
            }
            let Some(fid_name) = decode_dchars(ident) else {
                return Err(corrupt(format!("file identifier with unsupported compression id {}", ident[0])));
            };
            if characteristics & 0x02 == 0 && names_equal(&fid_name, name) {
                let addr = LbAddr { lbn: field(u32_at(rest, 24), "FID")?, part: field(u16_at(rest, 28), "FID")? };
                return Ok(Some(addr));
            }
        }
        Ok(None)
    }
}

/// Block (partition-relative) holding stream offset `pos`.
fn fid_location(segs: &[Segment], pos: usize) -> u32 {
    let idx = segs.partition_point(|s| s.start <= pos);
    match idx.checked_sub(1).and_then(|i| segs.get(i)) {
        Some(s) if s.embedded => s.lbn,
        Some(s) => s.lbn.wrapping_add(((pos - s.start) / BLOCK) as u32),
        None => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testsupport::{genisoimage, have_tool, run, torture, tree, Bytes, Rng};
    use super::super::{read_ovf, FsKind, MAX_OVF_BYTES};
    use super::*;
    use std::process::Command;

    const OVF: &[u8] = b"<?xml version=\"1.0\"?><Environment><ProvisioningSection/></Environment>\n";

    fn read(img: &[u8]) -> Result<RootFile, MediaError> {
        read_root_file(&Bytes(img), "ovf-env.xml", MAX_OVF_BYTES)
    }

    fn bridge_image(files: &[(&str, &[u8])]) -> Vec<u8> {
        let dir = tree(files);
        let out = tempfile::tempdir().expect("tempdir");
        genisoimage(&["-udf", "-J", "-R", "-V", "rd_rdfe_stable.xyz"], dir.path(), &out.path().join("img"))
    }

    /// `mkudffs` an empty image of `blocks` 2048-byte blocks with extra arguments; `None` when mkudffs refuses them.
    fn try_mkudffs(args: &[&str], blocks: u64) -> Option<Vec<u8>> {
        let out = tempfile::tempdir().expect("tempdir");
        let path = out.path().join("img");
        std::fs::File::create(&path).and_then(|f| f.set_len(blocks * 2048)).expect("create image");
        let res = Command::new("mkudffs").args(args).arg(&path).output().expect("run mkudffs");
        if !res.status.success() {
            eprintln!("mkudffs {args:?}: {}", String::from_utf8_lossy(&res.stderr).trim());
            return None;
        }
        Some(std::fs::read(&path).expect("read image"))
    }

    fn mkudffs(args: &[&str], blocks: u64) -> Vec<u8> {
        let out = tempfile::tempdir().expect("tempdir");
        let path = out.path().join("img");
        std::fs::File::create(&path).and_then(|f| f.set_len(blocks * 2048)).expect("create image");
        run(Command::new("mkudffs").args(args).arg(&path));
        std::fs::read(&path).expect("read image")
    }

    #[test]
    fn bridge_image_reads_ovf_and_label() {
        if !have_tool("genisoimage") {
            return;
        }
        let img = bridge_image(&[("ovf-env.xml", OVF), ("other.txt", b"x")]);
        let found = read(&img).expect("udf");
        assert_eq!(found.label.as_deref(), Some("rd_rdfe_stable.xyz"));
        assert_eq!(found.data.as_deref(), Some(OVF));
        // Case-insensitive.
        let upper = read_root_file(&Bytes(&img), "OVF-ENV.XML", MAX_OVF_BYTES).expect("udf");
        assert_eq!(upper.data.as_deref(), Some(OVF));
        // Absent file.
        let absent = read_root_file(&Bytes(&img), "missing.xml", MAX_OVF_BYTES).expect("udf");
        assert!(absent.data.is_none());
        assert_eq!(absent.label.as_deref(), Some("rd_rdfe_stable.xyz"));
        // Over the cap.
        let small = read_root_file(&Bytes(&img), "ovf-env.xml", OVF.len() - 1);
        assert!(matches!(small, Err(MediaError::TooLarge)), "{small:?}");
        assert!(read_root_file(&Bytes(&img), "ovf-env.xml", OVF.len()).is_ok());
        // Through the shared entry point.
        let ovf = read_ovf(&Bytes(&img)).expect("read_ovf");
        assert_eq!(ovf.fs, FsKind::Udf);
        assert_eq!(ovf.bytes, OVF);
    }

    #[test]
    fn bridge_image_many_entries_and_large_file() {
        if !have_tool("genisoimage") {
            return;
        }
        let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 + i / 2048) as u8).collect();
        let names: Vec<String> = (0..150).map(|i| format!("some-rather-long-file-name-number-{i:04}.dat")).collect();
        let mut files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
        files.push(("big.bin", &big));
        files.push(("ovf-env.xml", OVF));
        let img = bridge_image(&files);
        assert_eq!(read(&img).expect("udf").data.as_deref(), Some(OVF));
        let got = read_root_file(&Bytes(&img), "BIG.bin", MAX_OVF_BYTES).expect("udf").data.expect("big");
        assert_eq!(got, big);
        for n in [&names[0], &names[77], &names[149]] {
            let got = read_root_file(&Bytes(&img), n, 1024).expect("udf").data.expect("present");
            assert_eq!(got, n.as_bytes());
        }
    }

    #[test]
    fn iso_only_image_is_not_udf() {
        if !have_tool("genisoimage") {
            return;
        }
        let dir = tree(&[("ovf-env.xml", OVF)]);
        let out = tempfile::tempdir().expect("tempdir");
        let img = genisoimage(&["-J"], dir.path(), &out.path().join("img"));
        assert!(matches!(read(&img), Err(MediaError::NotRecognized)));
        let ovf = read_ovf(&Bytes(&img)).expect("falls back to ISO9660");
        assert_eq!(ovf.fs, FsKind::Iso9660);
        assert_eq!(ovf.bytes, OVF);
    }

    #[test]
    fn mkudffs_empty_volumes_all_revisions() {
        if !have_tool("mkudffs") {
            return;
        }
        for rev in ["1.02", "1.50", "2.00", "2.01"] {
            let img = mkudffs(
                &["--media-type=hd", &format!("--udfrev={rev}"), "-b", "2048", "--label=rd_rdfe_stable.test"],
                8192,
            );
            let found = read(&img).unwrap_or_else(|e| panic!("UDF {rev}: {e}"));
            assert_eq!(found.label.as_deref(), Some("rd_rdfe_stable.test"), "UDF {rev}");
            assert!(found.data.is_none(), "UDF {rev}");
            assert!(matches!(read_ovf(&Bytes(&img)), Err(MediaError::NoOvf)), "UDF {rev}");
        }
        // Default label; long_ads; File Entries instead of Extended File Entries.
        for args in [&["--udfrev=2.01"][..], &["--udfrev=2.01", "--ad=long"], &["--udfrev=2.01", "--noefe"]] {
            let mut all = vec!["--media-type=hd"];
            all.extend(args);
            all.extend(["-b", "2048"]);
            let found = read(&mkudffs(&all, 4096)).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(found.label.as_deref(), Some("LinuxUDF"));
            assert!(found.data.is_none());
        }
        // UDF 2.50/2.60 with a metadata partition on random-access media: udftools 2.3 refuses ("above 2.01 is not
        // currently supported for specified media type"); newer releases accept it.
        for rev in ["2.50", "2.60"] {
            let args = ["--media-type=hd", &format!("--udfrev={rev}"), "-b", "2048", "--label=rd_rdfe_stable.250"];
            match try_mkudffs(&args, 8192) {
                Some(img) => {
                    let found = read(&img).unwrap_or_else(|e| panic!("UDF {rev}: {e}"));
                    assert_eq!(found.label.as_deref(), Some("rd_rdfe_stable.250"));
                    assert!(found.data.is_none());
                }
                None => {
                    eprintln!("note: this mkudffs cannot write UDF {rev} on hd media; covered by the hand-made image")
                }
            }
        }
    }

    #[test]
    fn mkudffs_unsupported_layouts_are_corrupt() {
        if !have_tool("mkudffs") {
            return;
        }
        let cases: &[(&[&str], &str)] = &[
            (&["--media-type=cdr", "--udfrev=2.01", "--vat"], "virtual"),
            (&["--media-type=bdr", "--udfrev=2.50"], "virtual"),
            (&["--media-type=cdrw", "--udfrev=2.01"], "sparable"),
            (&["--media-type=hd", "--udfrev=2.01", "--strategy=4096"], "strategy"),
            (&["--media-type=hd", "-b", "4096"], "block size"),
        ];
        for (args, want) in cases {
            let mut all = args.to_vec();
            if !all.contains(&"-b") {
                all.extend(["-b", "2048"]);
            }
            let r = read(&mkudffs(&all, 20000));
            match r {
                Err(MediaError::Corrupt { msg, .. }) => assert!(msg.contains(want), "{args:?}: {msg}"),
                other => panic!("{args:?}: expected Corrupt({want}), got {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_zero_and_empty_images_are_not_recognized() {
        assert!(matches!(read(&[]), Err(MediaError::NotRecognized)));
        assert!(matches!(read(&vec![0u8; 1 << 20]), Err(MediaError::NotRecognized)));
        let mut rng = Rng(42);
        for size in [100usize, 2048 * 257, 1 << 20] {
            let img: Vec<u8> = (0..size).map(|_| rng.next() as u8).collect();
            let r = read(&img);
            assert!(matches!(r, Err(MediaError::NotRecognized)), "{size}: {r:?}");
        }
    }

    #[test]
    fn damaged_bridge_images_never_panic() {
        if !have_tool("genisoimage") {
            return;
        }
        let img = bridge_image(&[("ovf-env.xml", OVF), ("a.txt", b"a")]);
        let hot: Vec<usize> = (16..19).chain(32..36).chain(48..50).chain(64..65).chain(256..276).collect();
        torture(&img, &hot, read);
    }

    #[test]
    fn damaged_mkudffs_images_never_panic() {
        if !have_tool("mkudffs") {
            return;
        }
        let img = mkudffs(&["--media-type=hd", "--udfrev=2.01", "-b", "2048", "--ad=short"], 1024);
        let hot: Vec<usize> = (0..img.len() / 2048)
            .filter(|&s| {
                let b = &img[s * 2048..s * 2048 + 2048];
                check_tag(b, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 256, 257, 258, 261, 266], s as u32).is_ok()
                    || b.iter().any(|&x| x != 0) && s < 300
            })
            .take(40)
            .collect();
        torture(&img, &hot, read);
    }

    // -----------------------------------------------------------------------------------------------------------
    // A hand-made UDF 2.50 image with a metadata partition (no packaged tool writes files into one).

    const PART_START: usize = 300;
    const PART_LEN: u32 = 200;
    const SECTORS: usize = 600;

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Fill in the tag of a descriptor whose first `len` bytes are meaningful.
    fn finish_tag(b: &mut [u8], id: u16, loc: u32, len: usize) {
        put16(b, 0, id);
        put16(b, 2, 3);
        put16(b, 6, 1);
        let crc = crc_ccitt(&b[16..len]);
        put16(b, 8, crc);
        put16(b, 10, (len - 16) as u16);
        put32(b, 12, loc);
        b[4] = tag_checksum(b);
    }

    fn long_ad(len: u32, lbn: u32, part: u16) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        put32(&mut b, 0, len);
        put32(&mut b, 4, lbn);
        put16(&mut b, 8, part);
        b
    }

    fn short_ad(len: u32, lbn: u32) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        put32(&mut b, 0, len);
        put32(&mut b, 4, lbn);
        b
    }

    /// An Extended File Entry (or, with `plain_fe`, a File Entry) whose AD area / embedded data is `area`.
    fn file_entry(plain_fe: bool, file_type: u8, flags: u16, info_len: u64, area: &[u8], loc: u32) -> Vec<u8> {
        let mut b = vec![0u8; 2048];
        put16(&mut b, 20, 4);
        put16(&mut b, 24, 1);
        b[27] = file_type;
        put16(&mut b, 34, flags);
        put64(&mut b, 56, info_len);
        let (id, l_ea, base) = if plain_fe { (TAG_FE, 168, 176) } else { (TAG_EFE, 208, 216) };
        if !plain_fe {
            put64(&mut b, 64, info_len);
        }
        put32(&mut b, l_ea, 0);
        put32(&mut b, l_ea + 4, area.len() as u32);
        b[base..base + area.len()].copy_from_slice(area);
        finish_tag(&mut b, id, loc, base + area.len());
        b
    }

    fn fid(characteristics: u8, ident: &[u8], icb: u32, l_iu: usize, loc: u32) -> Vec<u8> {
        let len = (38 + l_iu + ident.len() + 3) & !3;
        let mut b = vec![0u8; len];
        put16(&mut b, 16, 1);
        b[18] = characteristics;
        b[19] = ident.len() as u8;
        b[20..36].copy_from_slice(&long_ad(2048, icb, 1));
        put16(&mut b, 36, l_iu as u16);
        b[38 + l_iu..38 + l_iu + ident.len()].copy_from_slice(ident);
        finish_tag(&mut b, TAG_FID, loc, len);
        b
    }

    fn latin1(name: &str) -> Vec<u8> {
        std::iter::once(8u8).chain(name.chars().map(|c| c as u8)).collect()
    }

    fn ucs2(name: &str) -> Vec<u8> {
        std::iter::once(16u8).chain(name.encode_utf16().flat_map(|u| u.to_be_bytes())).collect()
    }

    /// Metadata block → physical lbn: metadata extents are phys 10..12 (meta 0, 1) and 20..28 (meta 2..9).
    fn meta_phys(m: u32) -> u32 {
        if m < 2 {
            10 + m
        } else {
            18 + m
        }
    }

    struct Built {
        img: Vec<u8>,
        ovf: Vec<u8>,
        chain: Vec<u8>,
    }

    const NOTES: &[u8] = b"embedded hello\n";
    const UNI_NAME: &str = "\u{dc}n\u{ef}code-\u{540d}.txt";
    const UNI_DATA: &[u8] = b"ucs-2 named";

    #[derive(Default)]
    struct Opts {
        map_ident: Option<&'static str>,
        root_strategy: Option<u16>,
        block_size: Option<u32>,
        /// Describe ovf-env.xml with ext_ad instead of long_ad.
        ext_ad: bool,
    }

    fn ext_ad(len: u32, lbn: u32, part: u16) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        put32(&mut b, 0, len);
        put32(&mut b, 4, len);
        put32(&mut b, 8, len);
        put32(&mut b, 12, lbn);
        put16(&mut b, 16, part);
        b
    }

    fn build_udf250(opts: &Opts) -> Built {
        let mut img = vec![0u8; SECTORS * 2048];
        let sec = |img: &mut Vec<u8>, s: usize, data: &[u8]| img[s * 2048..s * 2048 + data.len()].copy_from_slice(data);
        let phys = |lbn: u32| PART_START + lbn as usize;
        // Volume recognition sequence.
        for (i, id) in [b"BEA01", b"NSR03", b"TEA01"].iter().enumerate() {
            let mut d = vec![0u8; 2048];
            d[1..6].copy_from_slice(*id);
            d[6] = 1;
            sec(&mut img, 16 + i, &d);
        }
        // Anchors (256 and N-1).
        for loc in [256usize, SECTORS - 1] {
            let mut a = vec![0u8; 512];
            put32(&mut a, 16, 16 * 2048);
            put32(&mut a, 20, 32);
            put32(&mut a, 24, 16 * 2048);
            put32(&mut a, 28, 48);
            finish_tag(&mut a, TAG_AVDP, loc as u32, 512);
            sec(&mut img, loc, &a);
        }
        // Main and reserve volume descriptor sequences: PD, LVD, TD.
        for base in [32u32, 48] {
            let mut pd = vec![0u8; 512];
            put32(&mut pd, 16, 1);
            put16(&mut pd, 20, 1);
            put16(&mut pd, 22, 0);
            pd[25..31].copy_from_slice(b"+NSR03");
            put32(&mut pd, 184, 1);
            put32(&mut pd, 188, PART_START as u32);
            put32(&mut pd, 192, PART_LEN);
            finish_tag(&mut pd, TAG_PD, base, 512);
            sec(&mut img, base as usize, &pd);

            let mut lvd = vec![0u8; 2048];
            put32(&mut lvd, 16, 2);
            lvd[21..44].copy_from_slice(b"OSTA Compressed Unicode");
            let label = latin1("rd_rdfe_stable.hand");
            lvd[84..84 + label.len()].copy_from_slice(&label);
            lvd[84 + 127] = label.len() as u8;
            put32(&mut lvd, 212, opts.block_size.unwrap_or(2048));
            lvd[217..236].copy_from_slice(b"*OSTA UDF Compliant");
            lvd[248..264].copy_from_slice(&long_ad(2048, 0, 1));
            put32(&mut lvd, 264, 70);
            put32(&mut lvd, 268, 2);
            // Type 1 map: partition 0.
            lvd[440..446].copy_from_slice(&[1, 6, 1, 0, 0, 0]);
            // Type 2 map: metadata partition on partition 0.
            let m = &mut lvd[446..510];
            m[0] = 2;
            m[1] = 64;
            let ident = opts.map_ident.unwrap_or("*UDF Metadata Partition");
            m[5..5 + ident.len()].copy_from_slice(ident.as_bytes());
            put16(m, 28, 0x0250);
            put16(m, 36, 1);
            put16(m, 38, 0);
            put32(m, 40, 0);
            put32(m, 44, 1);
            put32(m, 48, u32::MAX);
            put32(m, 52, 32);
            put16(m, 56, 1);
            finish_tag(&mut lvd, TAG_LVD, base + 1, 510);
            sec(&mut img, base as usize + 1, &lvd);

            let mut td = vec![0u8; 512];
            finish_tag(&mut td, TAG_TD, base + 2, 512);
            sec(&mut img, base as usize + 2, &td);
        }
        // Metadata file (phys 0) and its mirror (phys 1): meta 0..2 at phys 10, meta 2..10 at phys 20.
        let ads = [short_ad(2 * 2048, 10), short_ad(8 * 2048, 20)].concat();
        sec(&mut img, phys(0), &file_entry(false, FT_METADATA, 0, 10 * 2048, &ads, 0));
        sec(&mut img, phys(1), &file_entry(false, FT_METADATA_MIRROR, 0, 10 * 2048, &ads, 1));
        let meta = |img: &mut Vec<u8>, m: u32, data: &[u8]| {
            let s = phys(meta_phys(m));
            img[s * 2048..s * 2048 + data.len()].copy_from_slice(data);
        };
        // FSD at meta 0, root directory ICB at meta 3.
        let mut fsd = vec![0u8; 512];
        fsd[400..416].copy_from_slice(&long_ad(2048, 3, 1));
        finish_tag(&mut fsd, TAG_FSD, 0, 512);
        meta(&mut img, 0, &fsd);
        // Root directory FIDs at meta 1..3 (physically 11 and 20: crosses a metadata extent boundary).
        let mut stream = Vec::new();
        let loc = |stream: &Vec<u8>| 1 + (stream.len() / 2048) as u32;
        let f = fid(0x0A, &[], 3, 0, loc(&stream));
        stream.extend(f);
        let f = fid(0x04, &latin1("ovf-env.xml"), 150, 0, loc(&stream)); // deleted: must be skipped
        stream.extend(f);
        let f = fid(0, &latin1("notes.txt"), 4, 0, loc(&stream));
        stream.extend(f);
        // Filler so that the next FID starts 20 bytes before the block boundary.
        let target = 2028 - stream.len();
        let filler_name = latin1("filler.dat");
        let f = fid(0, &filler_name, 4, target - 38 - filler_name.len() - 3, loc(&stream));
        assert_eq!(f.len(), target);
        stream.extend(f);
        assert_eq!(stream.len(), 2028);
        let f = fid(0, &latin1("OVF-ENV.XML"), 5, 0, loc(&stream));
        stream.extend(f);
        let f = fid(0, &latin1("chain.bin"), 6, 0, loc(&stream));
        stream.extend(f);
        let f = fid(0, &ucs2(UNI_NAME), 9, 0, loc(&stream));
        stream.extend(f);
        assert!(stream.len() > 2048 && stream.len() < 4096);
        meta(&mut img, 1, &stream[..2048]);
        meta(&mut img, 2, &stream[2048..]);
        let mut root = file_entry(false, FT_DIRECTORY, 0, stream.len() as u64, &short_ad(stream.len() as u32, 1), 3);
        if let Some(s) = opts.root_strategy {
            put16(&mut root, 20, s);
            let len = 216 + 8;
            finish_tag(&mut root, TAG_EFE, 3, len);
        }
        meta(&mut img, 3, &root);
        // notes.txt: embedded data.
        meta(&mut img, 4, &file_entry(false, FT_FILE, 3, NOTES.len() as u64, NOTES, 4));
        // ovf-env.xml: a plain File Entry, two long_ad extents in the physical partition.
        let ovf: Vec<u8> = (0..3048u32).map(|i| b"<ovf/>"[i as usize % 6] ^ (i / 2048) as u8).collect();
        let (ad_type, ads) = if opts.ext_ad {
            (2, [ext_ad(2048, 40, 0), ext_ad(1000, 50, 0)].concat())
        } else {
            (1, [long_ad(2048, 40, 0), long_ad(1000, 50, 0)].concat())
        };
        meta(&mut img, 5, &file_entry(true, FT_FILE, ad_type, ovf.len() as u64, &ads, 5));
        sec(&mut img, phys(40), &ovf[..2048]);
        sec(&mut img, phys(50), &ovf[2048..]);
        // chain.bin: EFE → AED (meta 7) → AED (meta 8).
        let chain: Vec<u8> = (0..4596u32).map(|i| (i % 251) as u8).collect();
        let ads = [long_ad(2048, 60, 0), long_ad(0xC000_0000 | 2048, 7, 1)].concat();
        meta(&mut img, 6, &file_entry(false, FT_FILE, 1, chain.len() as u64, &ads, 6));
        for (m, ads) in
            [(7u32, [long_ad(2048, 61, 0), long_ad(0xC000_0000 | 2048, 8, 1)].concat()), (8, long_ad(500, 70, 0))]
        {
            let mut aed = vec![0u8; 2048];
            put32(&mut aed, 20, ads.len() as u32);
            aed[24..24 + ads.len()].copy_from_slice(&ads);
            finish_tag(&mut aed, TAG_AED, m, 24 + ads.len());
            meta(&mut img, m, &aed);
        }
        sec(&mut img, phys(60), &chain[..2048]);
        sec(&mut img, phys(61), &chain[2048..4096]);
        sec(&mut img, phys(70), &chain[4096..]);
        // UCS-2 named file, embedded.
        meta(&mut img, 9, &file_entry(false, FT_FILE, 3, UNI_DATA.len() as u64, UNI_DATA, 9));
        Built { img, ovf, chain }
    }

    #[test]
    fn handmade_udf250_metadata_partition() {
        let b = build_udf250(&Opts::default());
        let img = b.img.as_slice();
        let found = read(img).expect("udf 2.50");
        assert_eq!(found.label.as_deref(), Some("rd_rdfe_stable.hand"));
        assert_eq!(found.data.as_deref(), Some(b.ovf.as_slice()), "two-extent file behind a straddling FID");
        let notes = read_root_file(&Bytes(img), "Notes.TXT", 1024).expect("udf").data;
        assert_eq!(notes.as_deref(), Some(NOTES), "embedded data");
        let chain = read_root_file(&Bytes(img), "chain.bin", 1 << 20).expect("udf").data;
        assert_eq!(chain.as_deref(), Some(b.chain.as_slice()), "AED continuation");
        let uni = read_root_file(&Bytes(img), &UNI_NAME.to_uppercase(), 1024).expect("udf").data;
        assert_eq!(uni.as_deref(), Some(UNI_DATA), "UCS-2 identifier");
        assert!(read_root_file(&Bytes(img), "absent", 1024).expect("udf").data.is_none());
        assert!(matches!(read_root_file(&Bytes(img), "chain.bin", 4595), Err(MediaError::TooLarge)));
        let ovf = read_ovf(&Bytes(img)).expect("read_ovf");
        assert_eq!((ovf.fs, ovf.bytes), (FsKind::Udf, b.ovf.clone()));
        // The same file described with ext_ad.
        let b = build_udf250(&Opts { ext_ad: true, ..Opts::default() });
        assert_eq!(read(&b.img).expect("ext_ad").data.as_deref(), Some(b.ovf.as_slice()));
    }

    #[test]
    fn handmade_udf250_backups() {
        let b = build_udf250(&Opts::default());
        // Primary anchor gone: the one at N-1 is used.
        let mut img = b.img.clone();
        img[256 * 2048..257 * 2048].fill(0);
        assert_eq!(read(&img).expect("backup anchor").data.as_deref(), Some(b.ovf.as_slice()));
        // Only the anchor at N-256 (an unused block of the partition here).
        let mut img = b.img.clone();
        img[256 * 2048..257 * 2048].fill(0);
        img[(SECTORS - 1) * 2048..].fill(0);
        let mut anchor = b.img[256 * 2048..256 * 2048 + 512].to_vec();
        finish_tag(&mut anchor, TAG_AVDP, (SECTORS - 256) as u32, 512);
        img[(SECTORS - 256) * 2048..(SECTORS - 256) * 2048 + 512].copy_from_slice(&anchor);
        assert_eq!(read(&img).expect("anchor at N-256").data.as_deref(), Some(b.ovf.as_slice()));
        // No anchor at all: not UDF.
        img[(SECTORS - 256) * 2048..(SECTORS - 255) * 2048].fill(0);
        assert!(matches!(read(&img), Err(MediaError::NotRecognized)));
        // Main VDS gone: the reserve is used.
        let mut img = b.img.clone();
        img[32 * 2048..35 * 2048].fill(0);
        assert_eq!(read(&img).expect("reserve VDS").data.as_deref(), Some(b.ovf.as_slice()));
        // Metadata file damaged: the mirror is used.
        let mut img = b.img.clone();
        img[PART_START * 2048 + 100] ^= 0xFF;
        assert_eq!(read(&img).expect("metadata mirror").data.as_deref(), Some(b.ovf.as_slice()));
        // Tag location mismatch is corruption.
        let mut img = b.img.clone();
        let s = (PART_START + meta_phys(5) as usize) * 2048;
        put32(&mut img[s..], 12, 99);
        img[s + 4] = tag_checksum(&img[s..s + 16]);
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
        // Bad checksum on the file entry is corruption.
        let mut img = b.img.clone();
        img[s + 4] ^= 1;
        assert!(matches!(read(&img), Err(MediaError::Corrupt { .. })));
    }

    #[test]
    fn handmade_unsupported_variants_are_corrupt() {
        let cases = [
            (Opts { map_ident: Some("*UDF Sparable Partition"), ..Opts::default() }, "sparable"),
            (Opts { map_ident: Some("*UDF Virtual Partition"), ..Opts::default() }, "VAT"),
            (Opts { root_strategy: Some(4096), ..Opts::default() }, "strategy 4096"),
            (Opts { block_size: Some(512), ..Opts::default() }, "block size"),
        ];
        for (opts, want) in cases {
            match read(&build_udf250(&opts).img) {
                Err(MediaError::Corrupt { msg, .. }) => assert!(msg.contains(want), "{want}: {msg}"),
                other => panic!("{want}: {other:?}"),
            }
        }
    }

    #[test]
    fn damaged_handmade_images_never_panic() {
        let b = build_udf250(&Opts::default());
        let mut hot = vec![16, 32, 33, 34, 256, PART_START, PART_START + 1];
        hot.extend((0..10).map(|m| PART_START + meta_phys(m) as usize));
        let read_all = |img: &[u8]| {
            let chain = read_root_file(&Bytes(img), "chain.bin", 1 << 20);
            assert!(super::super::testsupport::acceptable(&chain), "{chain:?}");
            read(img)
        };
        torture(&b.img, &hot, read_all);
    }

    #[test]
    fn dstrings_and_crc() {
        assert_eq!(decode_dstring(&[0u8; 128]), None);
        let mut f = [0u8; 32];
        f[..4].copy_from_slice(&[8, b'a', b'b', b'c']);
        f[31] = 4;
        assert_eq!(decode_dstring(&f).as_deref(), Some("abc"));
        f[31] = 200; // length beyond the field
        assert_eq!(decode_dstring(&f), None);
        assert_eq!(decode_dchars(&[16, 0, b'A', 0x00, 0xE9]).as_deref(), Some("A\u{e9}"));
        assert_eq!(decode_dchars(&[254, 1]), None);
        assert_eq!(crc_ccitt(b"123456789"), 0x31C3);
    }
}
