//! Provisioning-DVD image writer: UDF (1.02-style with one physical partition, and 2.50+ with a metadata
//! partition and Extended File Entries) and ISO9660 (+ Joliet). Written from ECMA-167 / OSTA UDF / ECMA-119.
//!
//! Both writers are pure, deterministic and total: any input produces an image (over-long names and labels
//! are truncated, characters that cannot be recorded are replaced by `_`).
//!
//! UDF layout (sector = logical block = 2048 bytes):
//!
//! | sector      | content                                                                   |
//! |-------------|---------------------------------------------------------------------------|
//! | 16..19      | Volume Recognition Sequence: `BEA01`, `NSR02`/`NSR03`, `TEA01`            |
//! | 32..48      | main VDS: PVD, IUVD, PD, LVD, USD, TD                                     |
//! | 48..64      | reserve VDS (same descriptors, own tag locations)                         |
//! | 64, 65      | LVID (closed), TD                                                         |
//! | 256         | AVDP                                                                      |
//! | 257..N-1    | partition 0 (type-1 map), read-only, no space bitmap                      |
//! | N-1         | AVDP (no N-256 anchor: it would fall inside the partition)                |
//!
//! V102 partition blocks: FSD 0, TD 1, root File Entry 2, root directory FIDs from 3 (parent entry first),
//! one File Entry per file (short_ad), then file data. Descriptor version 2.
//! V250 partition blocks: Metadata File EFE (type 250) at 0, Metadata Mirror File EFE (251) at 1, the
//! metadata extent at 32 (a multiple of 32 blocks) followed by its byte-identical mirror (duplicate flag
//! set, no bitmap file), then file data. The metadata partition (map 1) holds, at the same relative blocks
//! as V102, FSD, TD, root EFE, root directory FIDs and one EFE per file; file data is referenced with
//! long_ad into partition 0 (short_ad would point into the metadata partition), except files of at most
//! [`UDF_EMBED_MAX`] bytes, which are embedded in their EFE. Descriptor version 3.
//!
//! Names are OSTA CS0 (compression id 8 when every character is Latin-1, else 16 with UCS-2BE); file
//! names are truncated to 255 bytes, `/`, `\` and NUL become `_`, empty names become `_`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdfLayout {
    /// UDF 1.02: File Entries in one type-1 physical partition.
    V102,
    /// UDF 2.50: metadata partition (type-2 map), metadata file, Extended File Entries.
    V250,
}

/// In [`UdfLayout::V250`] images, files of at most this many bytes are embedded in their Extended File
/// Entry (ICB allocation type 3) instead of being recorded in the physical partition.
pub const UDF_EMBED_MAX: usize = 64;

const SS: usize = 2048;
const SSU: u32 = 2048;
/// Largest extent length that is a multiple of the block size and fits in the 30-bit length field.
const MAX_EXTENT: u64 = 0x3FFF_F800;

// ---------------------------------------------------------------------------------------------------------
// Little helpers shared by both writers
// ---------------------------------------------------------------------------------------------------------

fn w16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn w32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn w64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Copies `bytes` into the image at `sector`, clipped to the image size.
fn put(img: &mut [u8], sector: u32, bytes: &[u8]) {
    let start = sector as usize * SS;
    if start >= img.len() {
        return;
    }
    let n = bytes.len().min(img.len() - start);
    img[start..start + n].copy_from_slice(&bytes[..n]);
}

fn blocks_for(len: u64) -> u64 {
    len.div_ceil(SS as u64)
}

/// Deterministic 64-bit FNV-1a, used for the volume set identifier.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Characters that cannot appear in a file name on either file system (path separators, NUL).
fn sanitize_name(name: &str) -> String {
    let s: String = name.chars().map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c }).collect();
    if s.is_empty() || s == "." || s == ".." {
        "_".to_string()
    } else {
        s
    }
}

// ---------------------------------------------------------------------------------------------------------
// UDF primitives (ECMA-167 3rd edition, OSTA UDF)
// ---------------------------------------------------------------------------------------------------------

/// CRC-CCITT (polynomial 0x1021, initial value 0, no reflection), as ECMA-167 7.2.6 requires.
fn crc_ccitt(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Fills the 16-byte descriptor tag of `d` (the whole descriptor; CRC covers `d[16..]`).
fn finish_tag(d: &mut [u8], ident: u16, version: u16, location: u32) {
    w16(d, 0, ident);
    w16(d, 2, version);
    d[4] = 0;
    d[5] = 0;
    w16(d, 6, 1); // TagSerialNumber
    let body = &d[16..];
    let crc = crc_ccitt(body);
    let crc_len = u16::try_from(body.len()).unwrap_or(u16::MAX);
    w16(d, 8, crc);
    w16(d, 10, crc_len);
    w32(d, 12, location);
    let sum = d[..16].iter().enumerate().filter(|(i, _)| *i != 4).fold(0u8, |acc, (_, &b)| acc.wrapping_add(b));
    d[4] = sum;
}

/// OSTA CS0 d-characters with the compression id byte: 8 (one byte per char, Latin-1) when possible,
/// otherwise 16 (UCS-2 big-endian; characters outside the BMP become `_`). At most `max_bytes` bytes in
/// total (compression id included), truncated on a character boundary.
fn dchars(s: &str, max_bytes: usize) -> Vec<u8> {
    if max_bytes < 2 || s.is_empty() {
        return Vec::new();
    }
    if s.chars().all(|c| (c as u32) <= 0xFF) {
        let mut out = vec![8u8];
        out.extend(s.chars().take(max_bytes - 1).map(|c| c as u32 as u8));
        out
    } else {
        let mut out = vec![16u8];
        for c in s.chars().take((max_bytes - 1) / 2) {
            let u = if (c as u32) <= 0xFFFF { c as u32 as u16 } else { u16::from(b'_') };
            out.extend_from_slice(&u.to_be_bytes());
        }
        out
    }
}

/// A fixed-size dstring field: d-characters, zero padding, used length in the last byte.
fn dstring(b: &mut [u8], off: usize, len: usize, s: &str) {
    let field = &mut b[off..off + len];
    field.fill(0);
    let chars = dchars(s, len - 1);
    field[..chars.len()].copy_from_slice(&chars);
    field[len - 1] = chars.len() as u8;
}

/// charspec: CS0, "OSTA Compressed Unicode".
fn charspec(b: &mut [u8], off: usize) {
    b[off] = 0;
    let name = b"OSTA Compressed Unicode";
    b[off + 1..off + 1 + name.len()].copy_from_slice(name);
}

/// Entity identifier (regid): flags 0, identifier (23 bytes, zero padded), suffix (8 bytes).
fn regid(b: &mut [u8], off: usize, ident: &[u8], suffix: [u8; 8]) {
    b[off] = 0;
    let n = ident.len().min(23);
    b[off + 1..off + 24].fill(0);
    b[off + 1..off + 1 + n].copy_from_slice(&ident[..n]);
    b[off + 24..off + 32].copy_from_slice(&suffix);
}

const OS_CLASS_UNIX: u8 = 4;
const OS_ID_LINUX: u8 = 5;
const IMPL_ID: &[u8] = b"*azprov-sim";

/// Domain Identifier Suffix: UDF revision, domain flags 0.
fn domain_suffix(rev: u16) -> [u8; 8] {
    let r = rev.to_le_bytes();
    [r[0], r[1], 0, 0, 0, 0, 0, 0]
}

/// UDF Identifier Suffix: UDF revision, OS class, OS identifier.
fn udf_suffix(rev: u16) -> [u8; 8] {
    let r = rev.to_le_bytes();
    [r[0], r[1], OS_CLASS_UNIX, OS_ID_LINUX, 0, 0, 0, 0]
}

/// Implementation Identifier Suffix: OS class, OS identifier.
fn impl_suffix() -> [u8; 8] {
    [OS_CLASS_UNIX, OS_ID_LINUX, 0, 0, 0, 0, 0, 0]
}

/// Fixed recording time: 2023-01-01 00:00:00 UTC (type 1 = local time, offset 0).
fn timestamp(b: &mut [u8], off: usize) {
    w16(b, off, 0x1000);
    w16(b, off + 2, 2023);
    b[off + 4..off + 12].copy_from_slice(&[1, 1, 0, 0, 0, 0, 0, 0]);
}

/// long_ad: extent length, lb_addr (lbn, partition reference), implementation use (UDF: flags u16,
/// UDF unique id u32).
fn long_ad(b: &mut [u8], off: usize, len: u32, lbn: u32, partref: u16, unique_id: u32) {
    w32(b, off, len);
    w32(b, off + 4, lbn);
    w16(b, off + 8, partref);
    w16(b, off + 10, 0);
    w32(b, off + 12, unique_id);
}

/// Splits `len` bytes starting at block `start` into (length, block) extents of at most [`MAX_EXTENT`].
fn split_extents(start: u32, len: u64) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut rem = len;
    let mut block = start;
    while rem > 0 {
        let n = rem.min(MAX_EXTENT);
        out.push((n as u32, block));
        block = block.wrapping_add((n / SS as u64) as u32);
        rem -= n;
    }
    out
}

fn short_ads(extents: &[(u32, u32)]) -> Vec<u8> {
    let mut out = vec![0u8; extents.len() * 8];
    for (i, &(len, pos)) in extents.iter().enumerate() {
        w32(&mut out, i * 8, len);
        w32(&mut out, i * 8 + 4, pos);
    }
    out
}

fn long_ads(extents: &[(u32, u32)], partref: u16) -> Vec<u8> {
    let mut out = vec![0u8; extents.len() * 16];
    for (i, &(len, pos)) in extents.iter().enumerate() {
        long_ad(&mut out, i * 16, len, pos, partref, 0);
    }
    out
}

const AD_SHORT: u16 = 0;
const AD_LONG: u16 = 1;
const AD_EMBEDDED: u16 = 3;

const FT_DIRECTORY: u8 = 4;
const FT_FILE: u8 = 5;
const FT_METADATA: u8 = 250;
const FT_METADATA_MIRROR: u8 = 251;

/// ECMA-167 permissions: r-x for everyone on directories, r-- on files.
const PERM_DIR: u32 = 0x5 | (0x5 << 5) | (0x5 << 10);
const PERM_FILE: u32 = 0x4 | (0x4 << 5) | (0x4 << 10);

/// One (Extended) File Entry.
struct Icb<'a> {
    extended: bool,
    location: u32,
    file_type: u8,
    info_len: u64,
    blocks_recorded: u64,
    unique_id: u64,
    link_count: u16,
    permissions: u32,
    ad_type: u16,
    /// Allocation descriptors, or the file data for [`AD_EMBEDDED`].
    ads: &'a [u8],
}

/// Builds a File Entry (tag 261) or Extended File Entry (tag 266) block.
fn file_entry(icb: &Icb<'_>, dver: u16) -> Vec<u8> {
    let hdr = if icb.extended { 216 } else { 176 };
    let l_ad = icb.ads.len().min(SS - hdr);
    let mut d = vec![0u8; hdr + l_ad];
    // ICB tag
    w16(&mut d, 20, 4); // strategy type 4
    w16(&mut d, 24, 1); // maximum number of entries
    d[27] = icb.file_type;
    w16(&mut d, 34, icb.ad_type);
    w32(&mut d, 36, 0); // uid
    w32(&mut d, 40, 0); // gid
    w32(&mut d, 44, icb.permissions);
    w16(&mut d, 48, icb.link_count);
    w64(&mut d, 56, icb.info_len);
    if icb.extended {
        w64(&mut d, 64, icb.info_len); // object size
        w64(&mut d, 72, icb.blocks_recorded);
        timestamp(&mut d, 80); // access
        timestamp(&mut d, 92); // modification
        timestamp(&mut d, 104); // creation
        timestamp(&mut d, 116); // attribute
        w32(&mut d, 128, 1); // checkpoint
        regid(&mut d, 168, IMPL_ID, impl_suffix());
        w64(&mut d, 200, icb.unique_id);
        w32(&mut d, 208, 0); // L_EA
        w32(&mut d, 212, l_ad as u32);
    } else {
        w64(&mut d, 64, icb.blocks_recorded);
        timestamp(&mut d, 72);
        timestamp(&mut d, 84);
        timestamp(&mut d, 96);
        w32(&mut d, 108, 1);
        regid(&mut d, 128, IMPL_ID, impl_suffix());
        w64(&mut d, 160, icb.unique_id);
        w32(&mut d, 168, 0);
        w32(&mut d, 172, l_ad as u32);
    }
    d[hdr..].copy_from_slice(&icb.ads[..l_ad]);
    finish_tag(&mut d, if icb.extended { 266 } else { 261 }, dver, icb.location);
    d
}

/// File Identifier Descriptor without its tag location (filled in when placed); returns the padded bytes.
fn fid(characteristics: u8, name: &[u8], icb_lbn: u32, icb_partref: u16, unique_id: u32) -> Vec<u8> {
    let len = (38 + name.len() + 3) & !3;
    let mut d = vec![0u8; len];
    w16(&mut d, 16, 1); // file version number
    d[18] = characteristics;
    d[19] = name.len() as u8;
    long_ad(&mut d, 20, SSU, icb_lbn, icb_partref, unique_id);
    w16(&mut d, 36, 0); // L_IU
    d[38..38 + name.len()].copy_from_slice(name);
    d
}

// Volume layout constants (sectors).
const VRS_SECTOR: u32 = 16;
const MVDS_SECTOR: u32 = 32;
const RVDS_SECTOR: u32 = 48;
const VDS_SECTORS: u32 = 16;
const LVID_SECTOR: u32 = 64;
const AVDP_SECTOR: u32 = 256;
const PART_START: u32 = 257;
/// V250: metadata allocation unit (blocks); the metadata extent and its mirror are multiples of it.
const META_ALLOC_UNIT: u32 = 32;
const META_ALIGN_UNIT: u16 = 16;

struct VolumeInfo<'a> {
    label: &'a str,
    v250: bool,
    rev: u16,
    dver: u16,
    part_len: u32,
    /// V250: metadata extent length in blocks; 0 otherwise.
    meta_len: u32,
    vsid: String,
    num_files: u32,
    next_unique_id: u64,
}

fn volume_descriptors(v: &VolumeInfo<'_>, base: u32) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    let dv = v.dver;

    // Primary Volume Descriptor
    let mut pvd = vec![0u8; 512];
    w32(&mut pvd, 16, 1);
    w32(&mut pvd, 20, 0);
    dstring(&mut pvd, 24, 32, v.label);
    w16(&mut pvd, 56, 1);
    w16(&mut pvd, 58, 1);
    w16(&mut pvd, 60, 2);
    w16(&mut pvd, 62, 3);
    w32(&mut pvd, 64, 1);
    w32(&mut pvd, 68, 1);
    dstring(&mut pvd, 72, 128, &v.vsid);
    charspec(&mut pvd, 200);
    charspec(&mut pvd, 264);
    regid(&mut pvd, 344, IMPL_ID, impl_suffix());
    timestamp(&mut pvd, 376);
    regid(&mut pvd, 388, IMPL_ID, impl_suffix());
    finish_tag(&mut pvd, 1, dv, base);
    out.push((base, pvd));

    // Implementation Use Volume Descriptor ("*UDF LV Info")
    let mut iuvd = vec![0u8; 512];
    w32(&mut iuvd, 16, 2);
    regid(&mut iuvd, 20, b"*UDF LV Info", udf_suffix(v.rev));
    charspec(&mut iuvd, 52);
    dstring(&mut iuvd, 116, 128, v.label);
    dstring(&mut iuvd, 244, 36, "");
    dstring(&mut iuvd, 280, 36, "");
    dstring(&mut iuvd, 316, 36, "");
    regid(&mut iuvd, 352, IMPL_ID, impl_suffix());
    finish_tag(&mut iuvd, 4, dv, base + 1);
    out.push((base + 1, iuvd));

    // Partition Descriptor
    let mut pd = vec![0u8; 512];
    w32(&mut pd, 16, 3);
    w16(&mut pd, 20, 1); // allocated
    w16(&mut pd, 22, 0); // partition number
    regid(&mut pd, 24, if v.v250 { b"+NSR03" } else { b"+NSR02" }, [0; 8]);
    w32(&mut pd, 184, 1); // access type: read-only
    w32(&mut pd, 188, PART_START);
    w32(&mut pd, 192, v.part_len);
    regid(&mut pd, 196, IMPL_ID, impl_suffix());
    finish_tag(&mut pd, 5, dv, base + 2);
    out.push((base + 2, pd));

    // Logical Volume Descriptor
    let maps_len: usize = if v.v250 { 6 + 64 } else { 6 };
    let mut lvd = vec![0u8; 440 + maps_len];
    w32(&mut lvd, 16, 4);
    charspec(&mut lvd, 20);
    dstring(&mut lvd, 84, 128, v.label);
    w32(&mut lvd, 212, SSU);
    regid(&mut lvd, 216, b"*OSTA UDF Compliant", domain_suffix(v.rev));
    // File Set Descriptor extent (FSD + terminator): in the metadata partition for V250.
    long_ad(&mut lvd, 248, 2 * SSU, 0, u16::from(v.v250), 0);
    w32(&mut lvd, 264, maps_len as u32);
    w32(&mut lvd, 268, if v.v250 { 2 } else { 1 });
    regid(&mut lvd, 272, IMPL_ID, impl_suffix());
    w32(&mut lvd, 432, 2 * SSU); // integrity sequence extent
    w32(&mut lvd, 436, LVID_SECTOR);
    // Type 1 map: physical partition 0.
    lvd[440] = 1;
    lvd[441] = 6;
    w16(&mut lvd, 442, 1);
    w16(&mut lvd, 444, 0);
    if v.v250 {
        let m = 446;
        lvd[m] = 2;
        lvd[m + 1] = 64;
        regid(&mut lvd, m + 4, b"*UDF Metadata Partition", udf_suffix(v.rev));
        w16(&mut lvd, m + 36, 1); // volume sequence number
        w16(&mut lvd, m + 38, 0); // partition number
        w32(&mut lvd, m + 40, 0); // metadata file location
        w32(&mut lvd, m + 44, 1); // metadata mirror file location
        w32(&mut lvd, m + 48, u32::MAX); // no metadata bitmap file
        w32(&mut lvd, m + 52, META_ALLOC_UNIT);
        w16(&mut lvd, m + 56, META_ALIGN_UNIT);
        lvd[m + 58] = 1; // duplicate metadata flag: the mirror is a real copy
    }
    finish_tag(&mut lvd, 6, dv, base + 3);
    out.push((base + 3, lvd));

    // Unallocated Space Descriptor (no free space on a read-only image)
    let mut usd = vec![0u8; 24];
    w32(&mut usd, 16, 5);
    w32(&mut usd, 20, 0);
    finish_tag(&mut usd, 7, dv, base + 4);
    out.push((base + 4, usd));

    // Terminating Descriptor
    let mut td = vec![0u8; 512];
    finish_tag(&mut td, 8, dv, base + 5);
    out.push((base + 5, td));
    out
}

fn lvid(v: &VolumeInfo<'_>) -> Vec<u8> {
    let nparts: usize = if v.v250 { 2 } else { 1 };
    let l_iu = 46usize;
    let mut d = vec![0u8; 80 + 8 * nparts + l_iu];
    timestamp(&mut d, 16);
    w32(&mut d, 28, 1); // close integrity
                        // Logical Volume Header Descriptor: next unique id.
    w64(&mut d, 40, v.next_unique_id);
    w32(&mut d, 72, nparts as u32);
    w32(&mut d, 76, l_iu as u32);
    // Free space table: all zero (read-only). Size table:
    w32(&mut d, 80 + 4 * nparts, v.part_len);
    if v.v250 {
        w32(&mut d, 80 + 4 * nparts + 4, v.meta_len);
    }
    let iu = 80 + 8 * nparts;
    regid(&mut d, iu, IMPL_ID, impl_suffix());
    w32(&mut d, iu + 32, v.num_files);
    w32(&mut d, iu + 36, 1); // directories
    w16(&mut d, iu + 40, v.rev); // minimum UDF read revision
    w16(&mut d, iu + 42, v.rev); // minimum UDF write revision
    w16(&mut d, iu + 44, v.rev); // maximum UDF write revision
    finish_tag(&mut d, 9, v.dver, LVID_SECTOR);
    d
}

fn fsd(v: &VolumeInfo<'_>, root_partref: u16) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    timestamp(&mut d, 16);
    w16(&mut d, 28, 3);
    w16(&mut d, 30, 3);
    w32(&mut d, 32, 1);
    w32(&mut d, 36, 1);
    w32(&mut d, 40, 0);
    w32(&mut d, 44, 0);
    charspec(&mut d, 48);
    dstring(&mut d, 112, 128, v.label);
    charspec(&mut d, 240);
    dstring(&mut d, 304, 32, v.label);
    long_ad(&mut d, 400, SSU, 2, root_partref, 0);
    regid(&mut d, 416, b"*OSTA UDF Compliant", domain_suffix(v.rev));
    finish_tag(&mut d, 256, v.dver, 0);
    d
}

fn vrs_record(ident: &[u8; 5]) -> Vec<u8> {
    let mut r = vec![0u8; SS];
    r[1..6].copy_from_slice(ident);
    r[6] = 1;
    r
}

/// A UDF image with `files` in the root directory.
pub fn udf_image(files: &[(&str, &[u8])], label: &str, layout: UdfLayout) -> Vec<u8> {
    let v250 = layout == UdfLayout::V250;
    let rev: u16 = if v250 { 0x0250 } else { 0x0102 };
    let dver: u16 = if v250 { 3 } else { 2 };
    // ICBs and directories live in partition reference `meta_ref` (0 for V102, 1 = metadata partition).
    let meta_ref: u16 = u16::from(v250);
    let n = files.len();

    let names: Vec<Vec<u8>> = files.iter().map(|(name, _)| dchars(&sanitize_name(name), 255)).collect();
    let embed: Vec<bool> = files.iter().map(|(_, data)| v250 && data.len() <= UDF_EMBED_MAX).collect();

    // Directory stream: parent FID + one FID per file.
    let dir_len: u64 = 40 + names.iter().map(|nm| ((38 + nm.len() + 3) & !3) as u64).sum::<u64>();
    let dir_blocks = blocks_for(dir_len) as u32;

    // Blocks in the ICB partition: FSD 0, TD 1, root 2, directory 3.., file entries.
    let dir_start: u32 = 3;
    let fe_start: u32 = dir_start + dir_blocks;
    let icb_used: u32 = fe_start + n as u32;

    // Physical partition layout.
    let (meta_len, data_start) = if v250 {
        let meta_len = icb_used.div_ceil(META_ALLOC_UNIT) * META_ALLOC_UNIT;
        (meta_len, META_ALLOC_UNIT + 2 * meta_len)
    } else {
        (0, icb_used)
    };
    let mut data_loc = Vec::with_capacity(n);
    let mut next = data_start;
    for (i, (_, data)) in files.iter().enumerate() {
        data_loc.push(next);
        if !embed[i] {
            next = next.wrapping_add(blocks_for(data.len() as u64) as u32);
        }
    }
    let part_len = next;
    let total = PART_START + part_len + 1;

    // UDF 2.2.2.5: the first 16 characters are a unique value in hex; derived from the content so that
    // images are deterministic but differ when their files do.
    let mut hash_parts: Vec<&[u8]> = vec![label.as_bytes()];
    for (name, data) in files {
        hash_parts.push(name.as_bytes());
        hash_parts.push(data);
    }
    let vsid = format!("{:016x}azprov-sim", fnv1a(&hash_parts));
    let info = VolumeInfo {
        label,
        v250,
        rev,
        dver,
        part_len,
        meta_len,
        vsid,
        num_files: n as u32,
        next_unique_id: 16 + n as u64,
    };

    let mut img = vec![0u8; total as usize * SS];

    // Volume Recognition Sequence.
    put(&mut img, VRS_SECTOR, &vrs_record(b"BEA01"));
    put(&mut img, VRS_SECTOR + 1, &vrs_record(if v250 { b"NSR03" } else { b"NSR02" }));
    put(&mut img, VRS_SECTOR + 2, &vrs_record(b"TEA01"));

    // Volume Descriptor Sequences, LVID, anchors.
    for base in [MVDS_SECTOR, RVDS_SECTOR] {
        for (sector, d) in volume_descriptors(&info, base) {
            put(&mut img, sector, &d);
        }
    }
    put(&mut img, LVID_SECTOR, &lvid(&info));
    let mut td = vec![0u8; 512];
    finish_tag(&mut td, 8, dver, LVID_SECTOR + 1);
    put(&mut img, LVID_SECTOR + 1, &td);
    for sector in [AVDP_SECTOR, total - 1] {
        let mut avdp = vec![0u8; 512];
        w32(&mut avdp, 16, VDS_SECTORS * SSU);
        w32(&mut avdp, 20, MVDS_SECTOR);
        w32(&mut avdp, 24, VDS_SECTORS * SSU);
        w32(&mut avdp, 28, RVDS_SECTOR);
        finish_tag(&mut avdp, 2, dver, sector);
        put(&mut img, sector, &avdp);
    }

    // File structure, built as blocks of the ICB partition.
    let mut meta = vec![0u8; icb_used as usize * SS];
    let mut put_meta = |block: u32, bytes: &[u8]| put(&mut meta, block, bytes);
    put_meta(0, &fsd(&info, meta_ref));
    let mut td = vec![0u8; 512];
    finish_tag(&mut td, 8, dver, 1);
    put_meta(1, &td);

    // Root directory.
    let mut dir = Vec::with_capacity(dir_len as usize);
    let push_fid = |dir: &mut Vec<u8>, mut f: Vec<u8>| {
        let loc = dir_start + (dir.len() / SS) as u32;
        finish_tag(&mut f, 257, dver, loc);
        dir.extend_from_slice(&f);
    };
    push_fid(&mut dir, fid(0x0A, &[], 2, meta_ref, 0));
    for (i, name) in names.iter().enumerate() {
        let uid = 16 + i as u32;
        push_fid(&mut dir, fid(0, name, fe_start + i as u32, meta_ref, uid));
    }
    for (k, chunk) in dir.chunks(SS).enumerate() {
        put_meta(dir_start + k as u32, chunk);
    }
    let dir_ads = short_ads(&split_extents(dir_start, dir_len));
    let root = file_entry(
        &Icb {
            extended: v250,
            location: 2,
            file_type: FT_DIRECTORY,
            info_len: dir_len,
            blocks_recorded: u64::from(dir_blocks),
            unique_id: 0,
            link_count: 1,
            permissions: PERM_DIR,
            ad_type: AD_SHORT,
            ads: &dir_ads,
        },
        dver,
    );
    put_meta(2, &root);

    // File entries and data.
    for (i, (_, data)) in files.iter().enumerate() {
        let len = data.len() as u64;
        let extents = split_extents(data_loc[i], len);
        let (ad_type, ads, recorded) = if embed[i] {
            (AD_EMBEDDED, data.to_vec(), 0)
        } else if v250 {
            (AD_LONG, long_ads(&extents, 0), blocks_for(len))
        } else {
            (AD_SHORT, short_ads(&extents), blocks_for(len))
        };
        let fe = file_entry(
            &Icb {
                extended: v250,
                location: fe_start + i as u32,
                file_type: FT_FILE,
                info_len: len,
                blocks_recorded: recorded,
                unique_id: 16 + i as u64,
                link_count: 1,
                permissions: PERM_FILE,
                ad_type,
                ads: &ads,
            },
            dver,
        );
        put_meta(fe_start + i as u32, &fe);
        if !embed[i] {
            put(&mut img, PART_START + data_loc[i], data);
        }
    }

    if v250 {
        // Metadata extent and its mirror, then the two metadata file EFEs at partition blocks 0 and 1.
        let meta_bytes = u64::from(meta_len) * SS as u64;
        for (block, start, ft) in
            [(0u32, META_ALLOC_UNIT, FT_METADATA), (1, META_ALLOC_UNIT + meta_len, FT_METADATA_MIRROR)]
        {
            put(&mut img, PART_START + start, &meta);
            let ads = short_ads(&split_extents(start, meta_bytes));
            let efe = file_entry(
                &Icb {
                    extended: true,
                    location: block,
                    file_type: ft,
                    info_len: meta_bytes,
                    blocks_recorded: u64::from(meta_len),
                    unique_id: 0,
                    link_count: 1,
                    permissions: 0,
                    ad_type: AD_SHORT,
                    ads: &ads,
                },
                dver,
            );
            put(&mut img, PART_START + block, &efe);
        }
    } else {
        put(&mut img, PART_START, &meta);
    }
    img
}

// ---------------------------------------------------------------------------------------------------------
// ISO9660 (ECMA-119) + Joliet
// ---------------------------------------------------------------------------------------------------------

fn both16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    b[off + 2..off + 4].copy_from_slice(&v.to_be_bytes());
}

fn both32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    b[off + 4..off + 8].copy_from_slice(&v.to_be_bytes());
}

/// Plain ISO9660 file identifier: upper case, `[A-Z0-9_]` plus one `.`, name + extension at most 30
/// characters, `;1` version suffix (`ovf-env.xml` → `OVF_ENV.XML;1`).
fn iso_plain_name(name: &str) -> Vec<u8> {
    let mapped: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_uppercase();
            if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (base, ext) = match mapped.rfind('.') {
        Some(p) => (mapped[..p].replace('.', "_"), mapped[p + 1..].to_string()),
        None => (mapped.clone(), String::new()),
    };
    let ext: String = ext.chars().take(30).collect();
    let mut base: String = base.chars().take(30 - ext.len()).collect();
    if base.is_empty() && ext.is_empty() {
        base.push('_');
    }
    format!("{base}.{ext};1").into_bytes()
}

/// ECMA-119 9.3 ordering of plain identifiers: name, then extension, each padded with spaces, then version.
fn iso_sort_key(ident: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (name_ext, version) = match ident.iter().position(|&b| b == b';') {
        Some(p) => (&ident[..p], &ident[p + 1..]),
        None => (ident, &[][..]),
    };
    let (name, ext) = match name_ext.iter().position(|&b| b == b'.') {
        Some(p) => (&name_ext[..p], &name_ext[p + 1..]),
        None => (name_ext, &[][..]),
    };
    let pad = |s: &[u8]| {
        let mut v = s.to_vec();
        v.resize(31, b' ');
        v
    };
    (pad(name), pad(ext), version.to_vec())
}

/// Joliet file identifier: UCS-2BE, at most 64 characters including the `;1` suffix.
fn iso_joliet_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for c in name.chars().take(62) {
        let u = match c {
            '*' | '/' | ':' | ';' | '?' | '\\' => u16::from(b'_'),
            c if (c as u32) < 0x20 || (c as u32) > 0xFFFF => u16::from(b'_'),
            c => c as u32 as u16,
        };
        out.extend_from_slice(&u.to_be_bytes());
    }
    out.extend_from_slice(&[0, b';', 0, b'1']);
    out
}

/// Recording date of directory records: 2023-01-01 00:00:00 UTC.
const ISO_DIR_DATE: [u8; 7] = [123, 1, 1, 0, 0, 0, 0];

fn dir_record(ident: &[u8], extent: u32, len: u32, is_dir: bool) -> Vec<u8> {
    let l = 33 + ident.len() + usize::from(ident.len() & 1 == 0);
    let mut r = vec![0u8; l];
    r[0] = l as u8;
    both32(&mut r, 2, extent);
    both32(&mut r, 10, len);
    r[18..25].copy_from_slice(&ISO_DIR_DATE);
    r[25] = if is_dir { 0x02 } else { 0 };
    both16(&mut r, 28, 1);
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    r
}

/// Lays directory records into sectors (records never straddle a sector boundary).
fn dir_sectors(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    for r in records {
        let used = out.len() % SS;
        if used + r.len() > SS {
            out.resize(out.len() + SS - used, 0);
        }
        out.extend_from_slice(r);
    }
    let padded = out.len().div_ceil(SS).max(1) * SS;
    out.resize(padded, 0);
    out
}

/// A root-only path table (one 10-byte record), little- or big-endian.
fn path_table(root: u32, big_endian: bool) -> Vec<u8> {
    let mut t = vec![0u8; 10];
    t[0] = 1;
    if big_endian {
        t[2..6].copy_from_slice(&root.to_be_bytes());
        t[6..8].copy_from_slice(&1u16.to_be_bytes());
    } else {
        t[2..6].copy_from_slice(&root.to_le_bytes());
        t[6..8].copy_from_slice(&1u16.to_le_bytes());
    }
    t
}

struct IsoTree {
    dir_sector: u32,
    dir_len: u32,
    path_l: u32,
    path_m: u32,
}

fn iso_text(b: &mut [u8], off: usize, len: usize, s: &str, joliet: bool) {
    let field = &mut b[off..off + len];
    if joliet {
        for pair in field.chunks_mut(2) {
            pair.copy_from_slice(&[0, b' '][..pair.len()]);
        }
        let units: Vec<u16> = s
            .chars()
            .map(|c| if (c as u32) <= 0xFFFF { c as u32 as u16 } else { u16::from(b'_') })
            .take(len / 2)
            .collect();
        for (i, u) in units.iter().enumerate() {
            field[2 * i..2 * i + 2].copy_from_slice(&u.to_be_bytes());
        }
    } else {
        field.fill(b' ');
        for (i, c) in s.chars().take(len).enumerate() {
            field[i] = if c.is_ascii() && !c.is_ascii_control() { c as u8 } else { b'_' };
        }
    }
}

fn iso_volume_descriptor(label: &str, joliet: bool, total: u32, tree: &IsoTree) -> Vec<u8> {
    let mut d = vec![0u8; SS];
    d[0] = if joliet { 2 } else { 1 };
    d[1..6].copy_from_slice(b"CD001");
    d[6] = 1;
    iso_text(&mut d, 8, 32, "LINUX", joliet);
    iso_text(&mut d, 40, 32, label, joliet);
    both32(&mut d, 80, total);
    if joliet {
        d[88..91].copy_from_slice(b"%/E");
    }
    both16(&mut d, 120, 1);
    both16(&mut d, 124, 1);
    both16(&mut d, 128, SSU as u16);
    both32(&mut d, 132, 10);
    w32(&mut d, 140, tree.path_l);
    d[148..152].copy_from_slice(&tree.path_m.to_be_bytes());
    let root = dir_record(&[0], tree.dir_sector, tree.dir_len, true);
    d[156..190].copy_from_slice(&root);
    for (off, len) in [(190, 128), (318, 128), (446, 128), (574, 128)] {
        iso_text(&mut d, off, len, "", joliet);
    }
    iso_text(&mut d, 574, 128, "AZPROV-SIM", joliet);
    for (off, len) in [(702, 37), (739, 37), (776, 37)] {
        iso_text(&mut d, off, len, "", joliet);
    }
    let date = b"2023010100000000";
    d[813..829].copy_from_slice(date);
    d[830..846].copy_from_slice(date);
    d[847..863].copy_from_slice(b"0000000000000000");
    d[864..880].copy_from_slice(b"0000000000000000");
    d[881] = 1;
    d
}

/// An ISO9660 image (with a Joliet tree when `joliet`) with `files` in the root directory.
pub fn iso9660_image(files: &[(&str, &[u8])], label: &str, joliet: bool) -> Vec<u8> {
    // Data lengths are 32-bit: larger files are truncated.
    let max_len = (u32::MAX as usize) & !(SS - 1);
    let data: Vec<&[u8]> = files.iter().map(|(_, d)| &d[..d.len().min(max_len)]).collect();
    let names: Vec<String> = files.iter().map(|(n, _)| sanitize_name(n)).collect();

    // Sorted record order per tree (ECMA-119 9.3: ascending file identifier).
    let mut plain: Vec<(Vec<u8>, usize)> = names.iter().enumerate().map(|(i, n)| (iso_plain_name(n), i)).collect();
    plain.sort_by_cached_key(|(n, i)| (iso_sort_key(n), *i));
    let mut jol: Vec<(Vec<u8>, usize)> = names.iter().enumerate().map(|(i, n)| (iso_joliet_name(n), i)).collect();
    jol.sort();

    // Directory sizes do not depend on extent positions, so lay them out with placeholders first.
    let dir_size = |names: &[(Vec<u8>, usize)]| {
        let mut recs = vec![dir_record(&[0], 0, 0, true), dir_record(&[1], 0, 0, true)];
        recs.extend(names.iter().map(|(n, _)| dir_record(n, 0, 0, false)));
        dir_sectors(&recs).len() as u32 / SSU
    };

    let mut next: u32 = 16;
    let pvd_sector = next;
    next += 1;
    let svd_sector = next;
    if joliet {
        next += 1;
    }
    let term_sector = next;
    next += 1;
    let tree = |next: &mut u32, names: &[(Vec<u8>, usize)]| {
        let t = IsoTree { path_l: *next, path_m: *next + 1, dir_sector: *next + 2, dir_len: dir_size(names) * SSU };
        *next += 2 + dir_size(names);
        t
    };
    let plain_tree = tree(&mut next, &plain);
    let jol_tree = if joliet { Some(tree(&mut next, &jol)) } else { None };
    let mut extents = Vec::with_capacity(files.len());
    for d in &data {
        // Empty files point at sector 0 and occupy nothing.
        extents.push(if d.is_empty() { 0 } else { next });
        next += (d.len().div_ceil(SS)) as u32;
    }
    let total = next;

    let mut img = vec![0u8; total as usize * SS];
    put(&mut img, pvd_sector, &iso_volume_descriptor(label, false, total, &plain_tree));
    let mut term = vec![0u8; SS];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;
    put(&mut img, term_sector, &term);

    let write_tree = |img: &mut Vec<u8>, t: &IsoTree, names: &[(Vec<u8>, usize)]| {
        put(img, t.path_l, &path_table(t.dir_sector, false));
        put(img, t.path_m, &path_table(t.dir_sector, true));
        let mut recs =
            vec![dir_record(&[0], t.dir_sector, t.dir_len, true), dir_record(&[1], t.dir_sector, t.dir_len, true)];
        recs.extend(names.iter().map(|(n, i)| dir_record(n, extents[*i], data[*i].len() as u32, false)));
        put(img, t.dir_sector, &dir_sectors(&recs));
    };
    write_tree(&mut img, &plain_tree, &plain);
    if let Some(jt) = &jol_tree {
        put(&mut img, svd_sector, &iso_volume_descriptor(label, true, total, jt));
        write_tree(&mut img, jt, &jol);
    }
    for (i, d) in data.iter().enumerate() {
        put(&mut img, extents[i], d);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    const LABEL: &str = "rd_rdfe_stable.230101-1234";

    fn ovf_xml() -> Vec<u8> {
        let mut s = String::from(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Environment xmlns=\"http://schemas.dmtf.org/ovf/environment/1\">\n",
        );
        let mut i = 0;
        while s.len() < 3000 {
            s.push_str(&format!("  <wa:Setting{i}>value {i}</wa:Setting{i}>\n"));
            i += 1;
        }
        s.push_str("</Environment>\n");
        s.into_bytes()
    }

    fn big() -> Vec<u8> {
        (0..5000u32).map(|i| (i.wrapping_mul(131) >> 3) as u8).collect()
    }

    /// Name → content of the standard fixture (ovf-env.xml ~3 KB, a 5000-byte file, tiny, empty,
    /// Latin-1 and non-Latin-1 names).
    fn fixture() -> Vec<(String, Vec<u8>)> {
        vec![
            ("ovf-env.xml".into(), ovf_xml()),
            ("blob.bin".into(), big()),
            ("tiny.txt".into(), b"hi\n".to_vec()),
            ("empty".into(), Vec::new()),
            ("café.txt".into(), vec![0xC3; 2049]),
            ("日本語.txt".into(), b"nihongo".to_vec()),
        ]
    }

    fn as_refs(v: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
        v.iter().map(|(n, d)| (n.as_str(), d.as_slice())).collect()
    }

    // -----------------------------------------------------------------------------------------------------
    // Independent UDF read-back (written from ECMA-167 / OSTA UDF, not sharing the writer's helpers)
    // -----------------------------------------------------------------------------------------------------

    fn r16(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }
    fn r32(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn r64(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn crc_ref(data: &[u8]) -> u16 {
        // Table-less, bit-reflected-free CRC-16/XMODEM (same polynomial as ECMA-167), written differently.
        data.iter().fold(0u16, |crc, &byte| {
            let mut c = crc;
            for bit in (0..8).rev() {
                let feedback = ((c >> 15) as u8 ^ (byte >> bit)) & 1;
                c <<= 1;
                if feedback == 1 {
                    c ^= 0x1021;
                }
            }
            c
        })
    }

    /// Validates a descriptor tag; returns the descriptor version.
    fn check_tag(d: &[u8], id: u16, loc: u32) -> u16 {
        assert_eq!(r16(d, 0), id, "tag id");
        let sum = (0..16).filter(|&i| i != 4).fold(0u8, |a, i| a.wrapping_add(d[i]));
        assert_eq!(d[4], sum, "tag checksum of descriptor {id}");
        let crc_len = r16(d, 10) as usize;
        assert!(16 + crc_len <= d.len(), "crc length of descriptor {id}");
        assert_eq!(r16(d, 8), crc_ref(&d[16..16 + crc_len]), "crc of descriptor {id}");
        assert_eq!(r32(d, 12), loc, "tag location of descriptor {id}");
        let ver = r16(d, 2);
        assert!(ver == 2 || ver == 3);
        ver
    }

    fn decode_dchars(b: &[u8]) -> String {
        match b.first() {
            None => String::new(),
            Some(8) => b[1..].iter().map(|&c| c as char).collect(),
            Some(16) => {
                b[1..].chunks(2).map(|p| char::from_u32(u32::from(u16::from_be_bytes([p[0], p[1]]))).unwrap()).collect()
            }
            Some(x) => panic!("compression id {x}"),
        }
    }

    fn dstring_field(b: &[u8]) -> String {
        let used = *b.last().unwrap() as usize;
        decode_dchars(&b[..used])
    }

    enum Part {
        Phys(u32),
        /// Metadata partition: (byte length, absolute first sector) extents of the metadata file.
        Meta(Vec<(u64, u32)>),
    }

    struct Udf<'a> {
        img: &'a [u8],
        parts: Vec<Part>,
        dver: u16,
        label: String,
        domain_rev: u16,
    }

    #[derive(Debug)]
    struct Entry {
        name: String,
        characteristics: u8,
        data: Vec<u8>,
        tag_id: u16,
        ad_type: u16,
    }

    impl<'a> Udf<'a> {
        fn sector(&self, n: u32) -> &'a [u8] {
            let o = n as usize * SS;
            &self.img[o..o + SS]
        }

        fn abs(&self, partref: u16, lbn: u32) -> u32 {
            match &self.parts[partref as usize] {
                Part::Phys(start) => start + lbn,
                Part::Meta(exts) => {
                    let mut off = u64::from(lbn) * 2048;
                    for &(len, first) in exts {
                        if off < len {
                            return first + (off / 2048) as u32;
                        }
                        off -= len;
                    }
                    panic!("lbn {lbn} beyond the metadata file");
                }
            }
        }

        fn open(img: &'a [u8]) -> Udf<'a> {
            assert_eq!(img.len() % SS, 0);
            let n = (img.len() / SS) as u32;
            let mut udf = Udf { img, parts: Vec::new(), dver: 0, label: String::new(), domain_rev: 0 };
            // VRS
            let ids: Vec<&[u8]> = (16..19).map(|s| &udf.sector(s)[1..6]).collect();
            assert_eq!(ids[0], b"BEA01");
            assert!(ids[1] == b"NSR02" || ids[1] == b"NSR03");
            assert_eq!(ids[2], b"TEA01");
            // Anchors at 256 and N-1 describe the same sequences.
            let a = udf.sector(256);
            udf.dver = check_tag(a, 2, 256);
            let b = udf.sector(n - 1);
            check_tag(b, 2, n - 1);
            assert_eq!(&a[16..32], &b[16..32]);
            let (mlen, mloc, rlen, rloc) = (r32(a, 16), r32(a, 20), r32(a, 24), r32(a, 28));
            let main = udf.read_vds(mloc, mlen);
            let reserve = udf.read_vds(rloc, rlen);
            assert_eq!(main.1[16..], reserve.1[16..], "main and reserve LVD differ");
            let (pds, lvd) = main;
            assert_eq!(r32(&lvd, 212), 2048);
            assert_eq!(&lvd[217..236], b"*OSTA UDF Compliant");
            udf.domain_rev = r16(&lvd, 240);
            udf.label = dstring_field(&lvd[84..212]);
            // LVID
            let lvid = udf.sector(r32(&lvd, 436));
            check_tag(&lvid[..r16(lvid, 10) as usize + 16], 9, r32(&lvd, 436));
            assert_eq!(r32(lvid, 28), 1, "LVID closed");
            // Partition maps.
            let nmaps = r32(&lvd, 268) as usize;
            let mut off = 440;
            for _ in 0..nmaps {
                let m = &lvd[off..];
                match m[0] {
                    1 => {
                        assert_eq!(m[1], 6);
                        udf.parts.push(Part::Phys(pds[&r16(m, 4)]));
                    }
                    2 => {
                        assert_eq!(m[1], 64);
                        assert_eq!(&m[5..28], b"*UDF Metadata Partition");
                        let start = pds[&r16(m, 38)];
                        let exts = |loc: u32, want_type: u8| {
                            let fe = udf.sector(start + loc);
                            check_tag(&fe[..216 + r32(fe, 212) as usize], 266, loc);
                            assert_eq!(fe[27], want_type);
                            assert_eq!(r16(fe, 34) & 7, 0, "metadata file uses short_ad");
                            let l_ea = r32(fe, 208) as usize;
                            let l_ad = r32(fe, 212) as usize;
                            fe[216 + l_ea..216 + l_ea + l_ad]
                                .chunks(8)
                                .map(|ad| (u64::from(r32(ad, 0) & 0x3FFF_FFFF), start + r32(ad, 4)))
                                .collect::<Vec<_>>()
                        };
                        let main = exts(r32(m, 40), 250);
                        let mirror = exts(r32(m, 44), 251);
                        // Duplicate flag set: the mirror holds a byte-identical copy.
                        assert_eq!(m[58] & 1, 1);
                        let bytes = |e: &[(u64, u32)]| {
                            e.iter()
                                .flat_map(|&(len, first)| {
                                    let o = first as usize * SS;
                                    img[o..o + len as usize].to_vec()
                                })
                                .collect::<Vec<u8>>()
                        };
                        assert_eq!(bytes(&main), bytes(&mirror));
                        udf.parts.push(Part::Meta(main));
                    }
                    t => panic!("partition map type {t}"),
                }
                off += m[1] as usize;
            }
            udf
        }

        /// Walks a Volume Descriptor Sequence: (partition number → start, LVD bytes).
        fn read_vds(&self, loc: u32, len: u32) -> (BTreeMap<u16, u32>, Vec<u8>) {
            let mut pds = BTreeMap::new();
            let mut lvd = None;
            for s in loc..loc + len / 2048 {
                let d = self.sector(s);
                let id = r16(d, 0);
                let dlen = 16 + r16(d, 10) as usize;
                check_tag(&d[..dlen], id, s);
                match id {
                    5 => {
                        let contents = &d[25..31];
                        assert!(contents == b"+NSR02" || contents == b"+NSR03");
                        pds.insert(r16(d, 22), r32(d, 188));
                    }
                    6 => lvd = Some(d[..dlen].to_vec()),
                    8 => break,
                    1 | 4 | 7 => {}
                    other => panic!("unexpected descriptor {other} in VDS"),
                }
            }
            (pds, lvd.expect("no LVD"))
        }

        /// Reads an (E)FE: (tag id, file type, content, allocation descriptor type).
        fn read_icb(&self, partref: u16, lbn: u32) -> (u16, u8, Vec<u8>, u16) {
            let d = self.sector(self.abs(partref, lbn));
            let id = r16(d, 0);
            let hdr = match id {
                261 => 176,
                266 => 216,
                other => panic!("not a file entry: {other}"),
            };
            let l_ea = r32(d, hdr - 8) as usize;
            let l_ad = r32(d, hdr - 4) as usize;
            check_tag(&d[..hdr + l_ea + l_ad], id, lbn);
            assert_eq!(r16(d, 20), 4, "strategy 4");
            let size = r64(d, 56) as usize;
            let ads = &d[hdr + l_ea..hdr + l_ea + l_ad];
            let mut out = Vec::new();
            let mut take = |abs_first: u32, len: usize| {
                let o = abs_first as usize * SS;
                out.extend_from_slice(&self.img[o..o + len]);
            };
            match r16(d, 34) & 7 {
                0 => ads.chunks(8).for_each(|ad| {
                    assert_eq!(r32(ad, 0) >> 30, 0);
                    take(self.abs(partref, r32(ad, 4)), (r32(ad, 0) & 0x3FFF_FFFF) as usize)
                }),
                1 => ads.chunks(16).for_each(|ad| {
                    assert_eq!(r32(ad, 0) >> 30, 0);
                    take(self.abs(r16(ad, 8), r32(ad, 4)), (r32(ad, 0) & 0x3FFF_FFFF) as usize)
                }),
                3 => out.extend_from_slice(ads),
                t => panic!("allocation type {t}"),
            }
            assert_eq!(out.len(), size, "information length");
            (id, d[27], out, r16(d, 34) & 7)
        }

        fn root(&self) -> Vec<Entry> {
            let fsd_ad = {
                // LVD is re-read through the anchor to keep open() simple.
                let a = self.sector(256);
                let lvd = self.read_vds(r32(a, 20), r32(a, 16)).1;
                (r32(&lvd, 252), r16(&lvd, 256))
            };
            let fsd = self.sector(self.abs(fsd_ad.1, fsd_ad.0));
            check_tag(&fsd[..512], 256, fsd_ad.0);
            assert_eq!(&fsd[417..436], b"*OSTA UDF Compliant");
            let (root_lbn, root_ref) = (r32(fsd, 404), r16(fsd, 408));
            let (_, ft, dir, _) = self.read_icb(root_ref, root_lbn);
            assert_eq!(ft, 4);
            // Directory data of these images is one contiguous extent right after the root ICB... but do
            // not rely on it: locate each FID's block by searching its tag location within the stream.
            let (first_dir_lbn, _) = {
                let d = self.sector(self.abs(root_ref, root_lbn));
                let hdr = if r16(d, 0) == 266 { 216 } else { 176 };
                let l_ea = r32(d, hdr - 8) as usize;
                (r32(d, hdr + l_ea + 4), 0)
            };
            let mut out = Vec::new();
            let mut off = 0;
            while off < dir.len() {
                let f = &dir[off..];
                let l_fi = f[19] as usize;
                let l_iu = r16(f, 36) as usize;
                let len = (38 + l_iu + l_fi + 3) & !3;
                check_tag(&f[..len], 257, first_dir_lbn + (off / SS) as u32);
                let (icb_lbn, icb_ref) = (r32(f, 24), r16(f, 28));
                let name = decode_dchars(&f[38 + l_iu..38 + l_iu + l_fi]);
                let characteristics = f[18];
                if characteristics & 0x08 != 0 {
                    assert_eq!((icb_lbn, icb_ref), (root_lbn, root_ref), "parent of root is root");
                    out.push(Entry { name, characteristics, data: Vec::new(), tag_id: 0, ad_type: 0 });
                } else {
                    let (tag_id, ft, data, ad_type) = self.read_icb(icb_ref, icb_lbn);
                    assert_eq!(ft, 5);
                    out.push(Entry { name, characteristics, data, tag_id, ad_type });
                }
                off += len;
            }
            out
        }
    }

    fn check_udf_roundtrip(files: &[(String, Vec<u8>)], label: &str, layout: UdfLayout) -> Vec<u8> {
        let img = udf_image(&as_refs(files), label, layout);
        let udf = Udf::open(&img);
        assert_eq!(udf.label, label);
        let (rev, dver, fe_tag) = match layout {
            UdfLayout::V102 => (0x0102, 2, 261),
            UdfLayout::V250 => (0x0250, 3, 266),
        };
        assert_eq!(udf.domain_rev, rev);
        assert_eq!(udf.dver, dver);
        assert_eq!(udf.parts.len(), if layout == UdfLayout::V250 { 2 } else { 1 });
        let entries = udf.root();
        assert_eq!(entries[0].characteristics, 0x0A, "first FID is the parent entry");
        let got: Vec<(String, Vec<u8>)> = entries[1..].iter().map(|e| (e.name.clone(), e.data.clone())).collect();
        assert_eq!(got.len(), files.len());
        for ((gn, gd), (wn, wd)) in got.iter().zip(files) {
            assert_eq!(gn, wn);
            assert!(gd == wd, "content of {wn} differs");
        }
        assert!(entries[1..].iter().all(|e| e.tag_id == fe_tag));
        // V102: short_ad everywhere. V250: long_ad into the physical partition, tiny files embedded.
        for e in &entries[1..] {
            let want = match layout {
                UdfLayout::V102 => AD_SHORT,
                UdfLayout::V250 if e.data.len() <= UDF_EMBED_MAX => AD_EMBEDDED,
                UdfLayout::V250 => AD_LONG,
            };
            assert_eq!(e.ad_type, want, "allocation type of {}", e.name);
        }
        img
    }

    #[test]
    fn dvd_udf_v102_roundtrip() {
        check_udf_roundtrip(&fixture(), LABEL, UdfLayout::V102);
    }

    #[test]
    fn dvd_udf_v250_roundtrip() {
        let img = check_udf_roundtrip(&fixture(), LABEL, UdfLayout::V250);
        // Small files are embedded, the others are in the physical partition (long_ad, partref 0).
        let udf = Udf::open(&img);
        let Part::Meta(exts) = &udf.parts[1] else { panic!("no metadata partition") };
        let meta_first = exts[0].1;
        let ovf = ovf_xml();
        let pos = img.windows(64).position(|w| w == &ovf[..64]).unwrap() / SS;
        assert!(pos as u32 >= meta_first + 2 * exts[0].0 as u32 / 2048, "file data after metadata + mirror");
    }

    #[test]
    fn dvd_udf_edge_cases_roundtrip_and_deterministic() {
        let long_name = "n".repeat(300);
        let wide_name = "字".repeat(200);
        let long_label = "L".repeat(200);
        for layout in [UdfLayout::V102, UdfLayout::V250] {
            // Empty file list.
            let img = check_udf_roundtrip(&[], LABEL, layout);
            assert_eq!(img, udf_image(&[], LABEL, layout), "deterministic");
            // Empty label.
            check_udf_roundtrip(&[("a".into(), b"x".to_vec())], "", layout);
            // Names beyond 255 bytes are truncated; separators replaced; long labels truncated.
            let files: Vec<(&str, &[u8])> =
                vec![(&long_name, b"long"), (&wide_name, b"wide"), ("a/b", b"slash"), ("", b"empty name")];
            let img = udf_image(&files, &long_label, layout);
            assert_eq!(img, udf_image(&files, &long_label, layout), "deterministic");
            let udf = Udf::open(&img);
            assert_eq!(udf.label, "L".repeat(126));
            let names: Vec<String> = udf.root()[1..].iter().map(|e| e.name.clone()).collect();
            assert_eq!(names, vec!["n".repeat(254), "字".repeat(127), "a_b".into(), "_".into()]);
            // Many files: the directory spans several blocks.
            let many: Vec<(String, Vec<u8>)> =
                (0..120).map(|i| (format!("file-{i:03}-{}", "x".repeat(40)), vec![i as u8; i * 37])).collect();
            check_udf_roundtrip(&many, LABEL, layout);
        }
    }

    #[test]
    fn dvd_crc_and_tag_basics() {
        assert_eq!(crc_ccitt(b"123456789"), 0x31C3);
        assert_eq!(crc_ref(b"123456789"), 0x31C3);
        let mut d = vec![0u8; 512];
        d[100] = 7;
        finish_tag(&mut d, 8, 2, 1234);
        check_tag(&d, 8, 1234);
        assert_eq!(dchars("ab", 255), vec![8, b'a', b'b']);
        assert_eq!(dchars("é", 255), vec![8, 0xE9]);
        assert_eq!(dchars("€", 255), vec![16, 0x20, 0xAC]);
        assert_eq!(iso_plain_name("ovf-env.xml"), b"OVF_ENV.XML;1");
        assert_eq!(iso_plain_name("README"), b"README.;1");
        assert_eq!(iso_plain_name("a.b.c"), b"A_B.C;1");
        assert!(iso_sort_key(b"AB.;1") < iso_sort_key(b"AB2.;1"));
        assert!(iso_sort_key(b"A.Z;1") < iso_sort_key(b"AB.A;1"));
    }

    // -----------------------------------------------------------------------------------------------------
    // ISO9660 read-back
    // -----------------------------------------------------------------------------------------------------

    /// (name, content) of the root directory of the PVD (`joliet = false`) or the Joliet SVD.
    fn iso_root(img: &[u8], joliet: bool) -> Option<Vec<(String, Vec<u8>)>> {
        let mut s = 16;
        loop {
            let d = &img[s * SS..(s + 1) * SS];
            assert_eq!(&d[1..6], b"CD001");
            match d[0] {
                255 => return None,
                1 if !joliet => break,
                2 if joliet && &d[88..91] == b"%/E" => break,
                _ => {}
            }
            s += 1;
        }
        let d = &img[s * SS..(s + 1) * SS];
        assert_eq!(r16(d, 128), 2048);
        assert_eq!(r32(d, 80) as usize * SS, img.len(), "volume space size");
        let root = &d[156..190];
        let (ext, len) = (r32(root, 2) as usize, r32(root, 10) as usize);
        let dir = &img[ext * SS..ext * SS + len];
        let mut out = Vec::new();
        let mut off = 0;
        while off < dir.len() {
            let l = dir[off] as usize;
            if l == 0 {
                off = (off / SS + 1) * SS;
                continue;
            }
            let r = &dir[off..off + l];
            assert!((off % SS) + l <= SS, "record straddles a sector");
            let name = &r[33..33 + r[32] as usize];
            if name != [0] && name != [1] {
                let name = if joliet {
                    name.chunks(2)
                        .map(|p| char::from_u32(u32::from(u16::from_be_bytes([p[0], p[1]]))).unwrap())
                        .collect()
                } else {
                    String::from_utf8(name.to_vec()).unwrap()
                };
                let (e, n) = (r32(r, 2) as usize, r32(r, 10) as usize);
                out.push((name, img[e * SS..e * SS + n].to_vec()));
            }
            off += l;
        }
        Some(out)
    }

    #[test]
    fn dvd_iso_roundtrip() {
        let files = fixture();
        let img = iso9660_image(&as_refs(&files), LABEL, true);
        assert_eq!(img, iso9660_image(&as_refs(&files), LABEL, true), "deterministic");
        let plain: BTreeMap<String, Vec<u8>> = iso_root(&img, false).unwrap().into_iter().collect();
        assert_eq!(plain["OVF_ENV.XML;1"], ovf_xml());
        assert_eq!(plain["BLOB.BIN;1"], big());
        assert_eq!(plain["EMPTY.;1"], b"");
        let jol: BTreeMap<String, Vec<u8>> = iso_root(&img, true).unwrap().into_iter().collect();
        for (n, d) in &files {
            assert_eq!(&jol[&format!("{n};1")], d, "{n}");
        }
        let no_joliet = iso9660_image(&as_refs(&files), LABEL, false);
        assert!(iso_root(&no_joliet, true).is_none());
        assert_eq!(iso_root(&no_joliet, false).unwrap().len(), files.len());
        // Edge cases: no files, long names and label, many files (directory over several sectors).
        for j in [false, true] {
            let img = iso9660_image(&[], "", j);
            assert!(iso_root(&img, false).unwrap().is_empty());
            let long = "x".repeat(300);
            let img = iso9660_image(&[(&long, b"1"), ("a/b", b"2")], &"L".repeat(99), j);
            assert_eq!(iso_root(&img, false).unwrap().len(), 2);
            let many: Vec<(String, Vec<u8>)> =
                (0..150).map(|i| (format!("file-number-{i:04}.txt"), vec![i as u8; i])).collect();
            let img = iso9660_image(&as_refs(&many), LABEL, j);
            let root = iso_root(&img, j).unwrap();
            assert_eq!(root.len(), 150);
            assert!(root.iter().all(|(_, d)| d.len() == d.first().map_or(0, |&b| b as usize)));
        }
    }

    /// Pseudo-random names (control characters, separators, non-BMP) and sizes: no panic, deterministic,
    /// and every file reads back in order.
    #[test]
    fn dvd_writers_total_on_random_input() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "aZ09-._/\\\0;*?é字😀 \u{7f}\u{ffff}".chars().collect();
        for _ in 0..40 {
            let nfiles = (next() % 6) as usize;
            let files: Vec<(String, Vec<u8>)> = (0..nfiles)
                .map(|_| {
                    let len = (next() % 300) as usize;
                    let name: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
                    let size = (next() % 7000) as usize;
                    (name, (0..size).map(|_| next() as u8).collect())
                })
                .collect();
            let label: String =
                (0..(next() % 80)).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            for layout in [UdfLayout::V102, UdfLayout::V250] {
                let img = udf_image(&as_refs(&files), &label, layout);
                assert_eq!(img, udf_image(&as_refs(&files), &label, layout));
                let entries = Udf::open(&img).root();
                assert_eq!(entries.len(), files.len() + 1);
                for (e, (_, d)) in entries[1..].iter().zip(&files) {
                    assert!(&e.data == d);
                    assert!(!e.name.is_empty() && !e.name.contains('/') && !e.name.contains('\0'));
                }
            }
            for joliet in [false, true] {
                let img = iso9660_image(&as_refs(&files), &label, joliet);
                assert_eq!(img, iso9660_image(&as_refs(&files), &label, joliet));
                let mut got: Vec<Vec<u8>> = iso_root(&img, joliet).unwrap().into_iter().map(|(_, d)| d).collect();
                let mut want: Vec<Vec<u8>> = files.iter().map(|(_, d)| d.clone()).collect();
                got.sort();
                want.sort();
                assert_eq!(got, want);
            }
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // External tools
    // -----------------------------------------------------------------------------------------------------

    fn find_tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    /// The tool's path; `None` (skip, with a reason) when absent, unless AZPROV_REQUIRE_SHARED=1.
    fn tool(name: &str) -> Option<PathBuf> {
        let found = find_tool(name);
        if found.is_none() {
            if std::env::var("AZPROV_REQUIRE_SHARED").as_deref() == Ok("1") {
                panic!("AZPROV_REQUIRE_SHARED=1 but `{name}` is not installed");
            }
            eprintln!("skipping: `{name}` is not installed (set AZPROV_REQUIRE_SHARED=1 to make this fatal)");
        }
        found
    }

    fn run(tool: &Path, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(tool).args(args).output().expect("run tool");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn run_bytes(tool: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new(tool).args(args).output().expect("run tool");
        assert!(out.status.success(), "{} {args:?}: {}", tool.display(), String::from_utf8_lossy(&out.stderr));
        out.stdout
    }

    fn write_img(dir: &Path, name: &str, img: &[u8]) -> String {
        let p = dir.join(name);
        std::fs::write(&p, img).unwrap();
        p.to_str().unwrap().to_string()
    }

    #[test]
    fn dvd_udfinfo_parses_both_layouts() {
        let Some(udfinfo) = tool("udfinfo") else { return };
        let tmp = tempfile::tempdir().unwrap();
        let files = fixture();
        for (layout, rev) in [(UdfLayout::V102, "1.02"), (UdfLayout::V250, "2.50")] {
            for (i, f) in [files.clone(), Vec::new()].iter().enumerate() {
                let img = udf_image(&as_refs(f), LABEL, layout);
                let p = write_img(tmp.path(), &format!("{layout:?}-{i}.udf"), &img);
                let (ok, out, err) = run(&udfinfo, &[&p]);
                assert!(ok, "udfinfo failed on {layout:?}: {err}\n{out}");
                assert!(err.trim().is_empty(), "udfinfo complained on {layout:?}: {err}");
                assert!(out.lines().any(|l| l == format!("label={LABEL}")), "{out}");
                assert!(out.lines().any(|l| l == format!("udfrev={rev}")), "{out}");
                assert!(out.lines().any(|l| l == format!("udfwriterev={rev}")), "{out}");
                assert!(out.lines().any(|l| l == format!("numfiles={}", f.len())), "{out}");
                assert!(out.lines().any(|l| l == "integrity=closed"), "{out}");
                assert!(out.lines().any(|l| l == "blocksize=2048"), "{out}");
                assert!(out.lines().any(|l| l == format!("blocks={}", img.len() / SS)), "{out}");
            }
        }
    }

    #[test]
    fn dvd_blkid_probes_udf_label_and_version() {
        let Some(blkid) = tool("blkid") else { return };
        let tmp = tempfile::tempdir().unwrap();
        for (layout, rev) in [(UdfLayout::V102, "1.02"), (UdfLayout::V250, "2.50")] {
            let img = udf_image(&as_refs(&fixture()), LABEL, layout);
            let p = write_img(tmp.path(), &format!("{layout:?}.udf"), &img);
            let (ok, out, err) = run(&blkid, &["-p", "-o", "export", &p]);
            assert!(ok, "blkid: {err}");
            assert!(out.lines().any(|l| l == "TYPE=udf"), "{out}");
            assert!(out.lines().any(|l| l == format!("LABEL={LABEL}")), "{out}");
            assert!(out.lines().any(|l| l == format!("VERSION={rev}")), "{out}");
        }
    }

    /// 7-Zip has its own UDF reader (including the 2.50 metadata partition). It is an optional extra
    /// check: skipped when `7zz` is absent, whatever AZPROV_REQUIRE_SHARED says.
    #[test]
    fn dvd_7zip_extracts_udf_files() {
        let Some(sevenzip) = find_tool("7zz").or_else(|| find_tool("7z")) else {
            eprintln!("skipping: 7-Zip (7zz) is not installed; optional check");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let files = fixture();
        for layout in [UdfLayout::V102, UdfLayout::V250] {
            let p = write_img(tmp.path(), &format!("{layout:?}.udf"), &udf_image(&as_refs(&files), LABEL, layout));
            let (ok, out, err) = run(&sevenzip, &["l", "-tUdf", &p]);
            assert!(ok, "7z l: {err}\n{out}");
            assert!(!out.contains("Warnings") && !out.contains("ERROR"), "{out}");
            for (name, data) in &files {
                let got = run_bytes(&sevenzip, &["e", "-tUdf", "-so", &p, name]);
                assert!(&got == data, "7z extracted different bytes for {name} ({layout:?})");
            }
        }
    }

    #[test]
    fn dvd_isoinfo_lists_and_extracts() {
        let Some(isoinfo) = tool("isoinfo") else { return };
        let tmp = tempfile::tempdir().unwrap();
        let files = fixture();
        let ovf = ovf_xml();
        let p = write_img(tmp.path(), "dvd.iso", &iso9660_image(&as_refs(&files), LABEL, true));
        let (ok, out, err) = run(&isoinfo, &["-d", "-i", &p]);
        assert!(ok, "{err}");
        assert!(out.contains(&format!("Volume id: {LABEL}")), "{out}");
        assert!(out.contains("Joliet with UCS level 3 found"), "{out}");
        let (ok, out, err) = run(&isoinfo, &["-i", &p, "-l"]);
        assert!(ok, "{err}");
        for n in ["OVF_ENV.XML;1", "BLOB.BIN;1", "TINY.TXT;1", "EMPTY.;1"] {
            assert!(out.contains(n), "{n} missing from\n{out}");
        }
        let (ok, out, err) = run(&isoinfo, &["-i", &p, "-J", "-l"]);
        assert!(ok, "{err}");
        // isoinfo converts names to the locale's character set: check the ASCII ones.
        for (n, _) in files.iter().filter(|(n, _)| n.is_ascii()) {
            assert!(out.contains(&format!("{n};1")), "{n} missing from\n{out}");
        }
        assert_eq!(run_bytes(&isoinfo, &["-i", &p, "-J", "-x", "/ovf-env.xml;1"]), ovf);
        assert_eq!(run_bytes(&isoinfo, &["-i", &p, "-J", "-x", "/blob.bin;1"]), big());
        assert_eq!(run_bytes(&isoinfo, &["-i", &p, "-x", "/OVF_ENV.XML;1"]), ovf);

        let p = write_img(tmp.path(), "plain.iso", &iso9660_image(&as_refs(&files), LABEL, false));
        let (ok, out, err) = run(&isoinfo, &["-d", "-i", &p]);
        assert!(ok, "{err}");
        assert!(out.contains("NO Joliet present"), "{out}");
        assert_eq!(run_bytes(&isoinfo, &["-i", &p, "-x", "/OVF_ENV.XML;1"]), ovf);
        let p = write_img(tmp.path(), "empty.iso", &iso9660_image(&[], LABEL, true));
        let (ok, _, err) = run(&isoinfo, &["-i", &p, "-J", "-l"]);
        assert!(ok, "{err}");
    }
}
