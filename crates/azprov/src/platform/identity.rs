//! VM identity (platform.md §8): `product_uuid` → VM id, Azure detection by the chassis asset tag.

/// `MSFT AZURE VM` as decimal ASCII groups.
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// Parse a UUID string (any case) into 16 bytes in textual order.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.trim().len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Swap the first three fields' byte order (SMBIOS 2.3 little-endian fields printed big-endian).
fn swap_fields(b: &[u8; 16]) -> [u8; 16] {
    let mut o = *b;
    o[0..4].reverse();
    o[4..6].reverse();
    o[6..8].reverse();
    o
}

/// The VM id (lower case) from `product_uuid`: byte-swapped on Gen1 (no `/sys/firmware/efi`), as is on Gen2.
pub fn vm_id_from_product_uuid(product_uuid: &str, gen2: bool) -> Option<String> {
    let b = parse_uuid(product_uuid)?;
    Some(format_uuid(&if gen2 { b } else { swap_fields(&b) }))
}

/// Same VM: equal ignoring case, or equal after swapping the first three fields (ids saved by other agents).
pub fn same_vm_id(a: &str, b: &str) -> bool {
    match (parse_uuid(a), parse_uuid(b)) {
        (Some(x), Some(y)) => x == y || swap_fields(&x) == y,
        _ => a.eq_ignore_ascii_case(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn gen1_vectors() {
        assert_eq!(
            vm_id_from_product_uuid("527c2691-029f-fe4c-b1f4-a4da7ebac2cf", false).as_deref(),
            Some("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf")
        );
        assert_eq!(
            vm_id_from_product_uuid("544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8\n", false).as_deref(),
            Some("d0df4c54-4ecb-4a4b-9954-5bdf3ed5c3b8")
        );
    }
    #[test]
    fn gen2_is_verbatim() {
        assert_eq!(
            vm_id_from_product_uuid("91267C52-9F02-4CFE-B1F4-A4DA7EBAC2CF", true).as_deref(),
            Some("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf")
        );
    }
    #[test]
    fn rejects_garbage() {
        assert_eq!(vm_id_from_product_uuid("not-a-uuid", true), None);
        assert_eq!(vm_id_from_product_uuid("", false), None);
    }
    #[test]
    fn comparison_accepts_swapped_and_case() {
        assert!(same_vm_id("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf", "91267C52-9F02-4CFE-B1F4-A4DA7EBAC2CF"));
        assert!(same_vm_id("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf", "527c2691-029f-fe4c-b1f4-a4da7ebac2cf"));
        assert!(!same_vm_id("91267c52-9f02-4cfe-b1f4-a4da7ebac2cf", "00000000-9f02-4cfe-b1f4-a4da7ebac2cf"));
    }
}
