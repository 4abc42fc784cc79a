//! The Azure vendor metadata of NVMe Identify Namespace (platform.md §9.8; what azure-vm-utils' `azure-nvme-id`
//! reads): the vendor-specific area of the 4096-byte Identify Namespace structure (offset 384, length 3712) holds
//! ASCII `key=value` pairs, comma-separated, NUL-terminated: `type=local,index=1,name=nvme-440G-1`, `type=os`,
//! `type=data,lun=4,name=data-db`. A leading NUL means the device does not say. Pure: bytes in, types out.

/// Offset of the vendor-specific area in Identify Namespace.
pub const VS_OFFSET: usize = 384;
/// Length of the vendor-specific area.
pub const VS_LEN: usize = 3712;
/// Size of the Identify Namespace structure.
pub const IDENTIFY_LEN: usize = 4096;

/// What the disk is, by the `type` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmeKind {
    /// The OS disk.
    Os,
    /// A remote data disk (`lun`).
    Data,
    /// A local (temporary) disk (`index`).
    Local,
    /// A type this agent does not know, as given.
    Other(String),
}

impl NvmeKind {
    /// The value as the device gives it (`os`, `data`, `local`, …).
    pub fn as_str(&self) -> &str {
        match self {
            NvmeKind::Os => "os",
            NvmeKind::Data => "data",
            NvmeKind::Local => "local",
            NvmeKind::Other(s) => s,
        }
    }
}

/// The vendor metadata of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NvmeMetadata {
    pub kind: Option<NvmeKind>,
    pub index: Option<u32>,
    pub lun: Option<u32>,
    pub name: Option<String>,
    /// Every pair as given, in order (unknown keys included).
    pub pairs: Vec<(String, String)>,
}

/// Parse the vendor metadata from an Identify Namespace buffer. `None` when the buffer is too short, the area
/// starts with NUL (not supported), or it holds anything but printable ASCII before the terminating NUL.
/// Pairs without `=` and unparsable numbers are ignored; the first valid value of a key wins.
pub fn parse_identify(buf: &[u8]) -> Option<NvmeMetadata> {
    let area = buf.get(VS_OFFSET..)?;
    let area = &area[..area.len().min(VS_LEN)];
    let end = area.iter().position(|&b| b == 0).unwrap_or(area.len());
    let text = &area[..end];
    if text.is_empty() || !text.iter().all(|b| (0x20..0x7f).contains(b)) {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?;
    let mut m = NvmeMetadata::default();
    for pair in text.split(',') {
        let Some((k, v)) = pair.split_once('=') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() {
            continue;
        }
        m.pairs.push((k.to_string(), v.to_string()));
        match k {
            "type" if m.kind.is_none() => {
                m.kind = Some(match v {
                    "os" => NvmeKind::Os,
                    "data" => NvmeKind::Data,
                    "local" => NvmeKind::Local,
                    other => NvmeKind::Other(other.to_string()),
                })
            }
            "index" if m.index.is_none() => m.index = v.parse().ok(),
            "lun" if m.lun.is_none() => m.lun = v.parse().ok(),
            "name" if m.name.is_none() && !v.is_empty() => m.name = Some(v.to_string()),
            _ => {}
        }
    }
    (!m.pairs.is_empty()).then_some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(vs: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_LEN];
        b[VS_OFFSET..VS_OFFSET + vs.len()].copy_from_slice(vs);
        b
    }

    #[test]
    fn local_os_data() {
        let m = parse_identify(&buf(b"type=local,index=1,name=nvme-440G-1")).unwrap();
        assert_eq!(m.kind, Some(NvmeKind::Local));
        assert_eq!((m.index, m.lun, m.name.as_deref()), (Some(1), None, Some("nvme-440G-1")));
        assert_eq!(parse_identify(&buf(b"type=os")).unwrap().kind, Some(NvmeKind::Os));
        let d = parse_identify(&buf(b"type=data,lun=4,name=data-db")).unwrap();
        assert_eq!((d.kind, d.lun, d.name.as_deref()), (Some(NvmeKind::Data), Some(4), Some("data-db")));
        let o = parse_identify(&buf(b"type=gpu,x=y")).unwrap();
        assert_eq!(o.kind, Some(NvmeKind::Other("gpu".into())));
        assert_eq!(o.pairs, vec![("type".into(), "gpu".into()), ("x".into(), "y".into())]);
    }

    #[test]
    fn unsupported_and_odd() {
        assert_eq!(parse_identify(&buf(b"")), None); // leading NUL
        assert_eq!(parse_identify(&[]), None);
        assert_eq!(parse_identify(&[b'x'; VS_OFFSET]), None);
        assert_eq!(parse_identify(&buf(b"type=local\xff")), None);
        assert_eq!(parse_identify(&buf(b"garbage")), None);
        // text after the NUL is not read; pairs without '=' and bad numbers are ignored
        let m = parse_identify(&buf(b"type=local,junk,index=x,index=2\0type=os")).unwrap();
        assert_eq!((m.kind, m.index), (Some(NvmeKind::Local), Some(2)));
        // a short buffer and an area without NUL up to its end
        let mut short = vec![0u8; VS_OFFSET];
        short.extend_from_slice(b"type=local,index=3");
        assert_eq!(parse_identify(&short).unwrap().index, Some(3));
        let full = buf(&[b'a'; VS_LEN]);
        assert_eq!(parse_identify(&full), None);
        let mut long = buf(b"type=os");
        long.extend_from_slice(b"beyond the structure");
        assert_eq!(parse_identify(&long).unwrap().kind, Some(NvmeKind::Os));
    }

    #[test]
    fn fuzz_never_panics() {
        // xorshift, deterministic; printable-heavy bytes so that the pair splitting is exercised
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"type=local,index=1lun0name\0,=\xff ";
        for round in 0..2000 {
            let len = (round * 7) % (IDENTIFY_LEN + 64);
            let mut b = vec![0u8; len];
            for x in b.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *x = alphabet[(s % alphabet.len() as u64) as usize];
            }
            let _ = parse_identify(&b);
        }
    }
}
