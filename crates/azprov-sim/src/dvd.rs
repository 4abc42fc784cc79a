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
//! | 257..N-1    | partition 0 (type-1 map)                                                  |
//! | N-1         | AVDP                                                                      |
//!
//! V102 partition: FSD, TD, root File Entry, root directory FIDs, one File Entry per file (short_ad), data.
//! V250 partition: Metadata File EFE (type 250) at block 0, Metadata Mirror File EFE (251) at block 1, the
//! metadata extent and its duplicate (mirror), then file data. The metadata partition (map 1) holds FSD,
//! TD, root EFE, root directory FIDs and one EFE per file; file data is referenced with long_ad into
//! partition 0, except files of at most [`UDF_EMBED_MAX`] bytes, which are embedded in their EFE.

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
    let s: String = name
        .chars()
        .map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c })
        .collect();
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
    let sum = d[..16]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 4)
        .fold(0u8, |acc, (_, &b)| acc.wrapping_add(b));
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

    let vsid = format!("{:016x}azprov-sim", fnv1a(&[label.as_bytes()]));
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
        for (block, start, ft) in [(0u32, META_ALLOC_UNIT, FT_METADATA), (1, META_ALLOC_UNIT + meta_len, FT_METADATA_MIRROR)] {
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
    let l = 33 + ident.len() + usize::from(ident.len() % 2 == 0);
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
    plain.sort();
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
        let mut recs = vec![
            dir_record(&[0], t.dir_sector, t.dir_len, true),
            dir_record(&[1], t.dir_sector, t.dir_len, true),
        ];
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

    #[test]
    fn dvd_dump_tmp() {
        let ovf = vec![b'x'; 3000];
        let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let files: &[(&str, &[u8])] = &[("ovf-env.xml", &ovf), ("big.bin", &big), ("tiny", b"hi")];
        std::fs::write("/tmp/u102.img", udf_image(files, "rd_rdfe_stable.230101-1234", UdfLayout::V102)).unwrap();
        std::fs::write("/tmp/u250.img", udf_image(files, "rd_rdfe_stable.230101-1234", UdfLayout::V250)).unwrap();
        std::fs::write("/tmp/iso.img", iso9660_image(files, "rd_rdfe_stable.230101-1234", true)).unwrap();
    }
}
