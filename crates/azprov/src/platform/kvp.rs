//! Hyper-V KVP pool records (platform.md §7): 512-byte key + 2048-byte value, NUL-padded UTF-8.
//! Pure encoding here; the locked append lives in `crate::system`.

pub const KEY_SIZE: usize = 512;
pub const VALUE_SIZE: usize = 2048;
pub const RECORD_SIZE: usize = KEY_SIZE + VALUE_SIZE;
/// What the host can read of a key / value (kernel off-by-one in the UTF-16 conversion).
pub const MAX_KEY: usize = 254;
pub const MAX_VALUE: usize = 1022;

fn cut(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// One record; key and value are cut (on char boundaries) to the readable limits.
pub fn record(key: &str, value: &str) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_SIZE];
    let k = cut(key, MAX_KEY).as_bytes();
    let v = cut(value, MAX_VALUE).as_bytes();
    r[..k.len()].copy_from_slice(k);
    r[KEY_SIZE..KEY_SIZE + v.len()].copy_from_slice(v);
    r
}

/// Records for a value of any length: chunks ≤ 1022 bytes cut on UTF-8 boundaries; keys get `|<i>` suffixes when
/// there is more than one chunk (the daemon upserts by key).
pub fn records(key: &str, value: &str) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut rest = value;
    loop {
        let c = cut(rest, MAX_VALUE);
        chunks.push(c);
        rest = &rest[c.len()..];
        if rest.is_empty() {
            break;
        }
    }
    if chunks.len() == 1 {
        return record(key, chunks[0]);
    }
    let mut out = Vec::with_capacity(chunks.len() * RECORD_SIZE);
    for (i, c) in chunks.iter().enumerate() {
        out.extend(record(&format!("{key}|{i}"), c));
    }
    out
}

/// Decode a pool file into (key, value) pairs (for `status`, tests and the simulator's view).
pub fn parse_pool(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .chunks_exact(RECORD_SIZE)
        .map(|r| {
            let field = |b: &[u8]| {
                let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
                String::from_utf8_lossy(&b[..end]).into_owned()
            };
            (field(&r[..KEY_SIZE]), field(&r[KEY_SIZE..]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn record_layout() {
        let r = record("PROVISIONING_REPORT", "result=success");
        assert_eq!(r.len(), 2560);
        assert_eq!(&r[..19], b"PROVISIONING_REPORT");
        assert_eq!(r[19], 0);
        assert_eq!(&r[512..526], b"result=success");
        assert_eq!(parse_pool(&r), vec![("PROVISIONING_REPORT".into(), "result=success".into())]);
    }
    #[test]
    fn long_values_split_on_char_boundaries() {
        let v = "é".repeat(1000); // 2000 bytes
        let rs = records("k", &v);
        let parsed = parse_pool(&rs);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].0, "k|0");
        assert_eq!(parsed[1].0, "k|1");
        assert_eq!(parsed[0].1.len() + parsed[1].1.len(), 2000);
        assert!(parsed.iter().all(|(_, v)| v.len() <= MAX_VALUE));
    }
}
