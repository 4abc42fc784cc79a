//! Wireserver address discovery (platform.md §5.1): an existing host route, else DHCP option 245 from the active
//! DHCP client's lease, else `168.63.129.16`. Never derived from DNS servers.
//!
//! The parsers are pure and total (no panics on any input): ISC dhclient lease files, systemd-networkd leases,
//! raw BOOTP/DHCP packets as dhcpcd stores them, NetworkManager's `private_245` values and `/proc/net/route`.
//! [`discover`] reads files only through [`System`], so it works under `--root` and in tests.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::system::System;

/// The public-cloud wireserver address and the fallback when nothing else is known.
pub const DEFAULT_WIRESERVER: Ipv4Addr = Ipv4Addr::new(168, 63, 129, 16);

/// The IPv4 address in an endpoint URL's host (`http://169.254.169.254/metadata` → that address), if it is one.
pub fn url_ipv4(url: &str) -> Option<Ipv4Addr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.split(':').next()?.parse().ok()
}
/// DHCP option carrying the wireserver address (4 bytes, big-endian IPv4).
pub const OPTION_WIRESERVER: u8 = 245;
/// `168.63.129.16` as `/proc/net/route` prints it (little-endian hex).
const ROUTE_HEX: &str = "10813FA8";
/// BOOTP magic cookie (99.130.83.99) and where it sits.
const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const COOKIE_OFFSET: usize = 236;
/// Lease files larger than this are not leases; they are skipped without being read.
const MAX_LEASE_FILE: u64 = 1 << 20;

/// Where the wireserver is and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    pub address: Ipv4Addr,
    /// Human-readable origin for logs: the route table, a lease file path, or the fallback.
    pub source: String,
}

impl Discovery {
    /// `http://<address>` — the form `WireConfig::new` takes.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The lease-file layouts [`sniff`] tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseFormat {
    /// ISC dhclient text (`lease { … }` blocks); also NetworkManager's dhclient backend.
    Dhclient,
    /// systemd-networkd `KEY=VALUE` lines.
    Networkd,
    /// A raw BOOTP/DHCP packet (dhcpcd).
    Packet,
    Unknown,
}

// ---------------------------------------------------------------------------------------------------------------
// /proc/net/route

/// True when some route's destination is `168.63.129.16` (the `Destination` column is `10813FA8`).
pub fn route_table_has_wireserver(proc_net_route: &str) -> bool {
    proc_net_route
        .lines()
        .skip_while(|l| l.trim_start().starts_with("Iface"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .any(|dest| dest.eq_ignore_ascii_case(ROUTE_HEX))
}

// ---------------------------------------------------------------------------------------------------------------
// Value forms shared by the text formats

/// `a8:3f:81:10` / `4:3:2:1`: exactly four groups of 1–2 hex digits (NetworkManager `private_245`, dhclient).
pub fn parse_nm_option(value: &str) -> Option<Ipv4Addr> {
    parse_colon_hex(value.trim())
}

fn parse_colon_hex(s: &str) -> Option<Ipv4Addr> {
    let mut out = [0u8; 4];
    let mut n = 0;
    for group in s.split(':') {
        if n == 4 || group.is_empty() || group.len() > 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        out[n] = u8::from_str_radix(group, 16).ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(out))
}

fn addr_from_bytes(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

// ---------------------------------------------------------------------------------------------------------------
// ISC dhclient lease files

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    /// A quoted string, unescaped; `None` when malformed (bad octal escape, no closing quote).
    Str(Option<Vec<u8>>),
    Open,
    Close,
    Semi,
}

/// dhclient.conf/leases lexer: words, quoted strings (escapes `\ooo` octal and `\<char>`), `{ } ;`, `#` comments.
fn tokenize(text: &str) -> Vec<Tok> {
    let b = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'{' => {
                toks.push(Tok::Open);
                i += 1;
            }
            b'}' => {
                toks.push(Tok::Close);
                i += 1;
            }
            b';' => {
                toks.push(Tok::Semi);
                i += 1;
            }
            b'"' => {
                i += 1;
                let mut s = Vec::new();
                let mut ok = false;
                let mut bad = false;
                while i < b.len() {
                    match b[i] {
                        b'"' => {
                            ok = true;
                            i += 1;
                            break;
                        }
                        b'\\' if i + 1 < b.len() => {
                            let digits = b[i + 1..].iter().take(3).take_while(|d| (b'0'..=b'7').contains(*d)).count();
                            if digits > 0 {
                                let v = b[i + 1..i + 1 + digits].iter().fold(0u32, |a, d| a * 8 + (d - b'0') as u32);
                                match u8::try_from(v) {
                                    Ok(v) => s.push(v),
                                    Err(_) => bad = true,
                                }
                                i += 1 + digits;
                            } else {
                                s.push(b[i + 1]);
                                i += 2;
                            }
                        }
                        c => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                toks.push(Tok::Str((ok && !bad).then_some(s)));
            }
            _ => {
                let start = i;
                while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'{' | b'}' | b';' | b'"' | b'#') {
                    i += 1;
                }
                toks.push(Tok::Word(String::from_utf8_lossy(&b[start..i]).into_owned()));
            }
        }
    }
    toks
}

/// One `lease { … }` block, as far as discovery cares.
#[derive(Debug, Default)]
struct Lease {
    option245: Option<Ipv4Addr>,
    /// `None` = no `expire` statement; `Some(None)` = unparseable; `Some(Some(Expiry))`.
    expire: Option<Option<Expiry>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    Never,
    At(i64),
}

impl Lease {
    fn valid_at(&self, now_unix: i64) -> bool {
        match self.expire {
            None | Some(Some(Expiry::Never)) => true,
            Some(Some(Expiry::At(t))) => t > now_unix,
            Some(None) => false,
        }
    }
}

/// The wireserver address from an ISC dhclient lease file: the last `lease { … }` block that has not expired at
/// `now_unix` and carries a well-formed `option unknown-245`.
///
/// Values: colon hex (`a8:3f:81:10`, 1–2 digits per octet), a quoted string when dhclient found all bytes
/// printable (`"dH\"l"`; escapes `\"`, `\\`, `\ooo`), or a dotted quad (when a dhclient.conf declares the option
/// as `ip-address`). dhclient drops one trailing NUL when it prints a value as text, so a 3-byte string means
/// the fourth byte was 0. Expiry: `expire never;`, `expire N YYYY/MM/DD HH:MM:SS;` (UTC) or `expire epoch N;`;
/// a lease without `expire` counts as valid, one with an unreadable `expire` as expired. Unterminated blocks
/// (a truncated file) are ignored.
pub fn parse_dhclient_leases(text: &str, now_unix: i64) -> Option<Ipv4Addr> {
    dhclient_leases(&tokenize(text))
        .into_iter()
        .rev()
        .find(|l| l.option245.is_some() && l.valid_at(now_unix))
        .and_then(|l| l.option245)
}

/// Complete `lease { … }` blocks in file order.
fn dhclient_leases(toks: &[Tok]) -> Vec<Lease> {
    let mut leases = Vec::new();
    let mut i = 0;
    let mut depth = 0usize;
    while i < toks.len() {
        match &toks[i] {
            Tok::Word(w) if depth == 0 && w == "lease" && toks.get(i + 1) == Some(&Tok::Open) => {
                match parse_lease_block(&toks[i + 2..]) {
                    Some((lease, used)) => {
                        leases.push(lease);
                        i += 2 + used;
                    }
                    None => break, // unterminated: the rest of the file is inside it
                }
            }
            Tok::Open => {
                depth += 1;
                i += 1;
            }
            Tok::Close => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    leases
}

/// Parse the body after `lease {`; returns the lease and the number of tokens consumed including the closing `}`.
fn parse_lease_block(toks: &[Tok]) -> Option<(Lease, usize)> {
    let mut lease = Lease::default();
    let mut stmt: Vec<&Tok> = Vec::new();
    let mut depth = 0usize;
    for (n, t) in toks.iter().enumerate() {
        match t {
            Tok::Open => depth += 1,
            Tok::Close if depth == 0 => return Some((lease, n + 1)),
            Tok::Close => {
                depth -= 1;
                stmt.clear();
            }
            Tok::Semi if depth == 0 => {
                apply_statement(&mut lease, &stmt);
                stmt.clear();
            }
            _ if depth == 0 => stmt.push(t),
            _ => {}
        }
    }
    None
}

fn apply_statement(lease: &mut Lease, stmt: &[&Tok]) {
    let word = |k: usize| match stmt.get(k) {
        Some(Tok::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    match word(0) {
        Some("option") if word(1).is_some_and(is_option_245_name) => {
            // A later duplicate replaces an earlier one, as dhclient itself would.
            lease.option245 = if stmt.len() == 3 { dhclient_value(stmt[2]) } else { None };
        }
        Some("expire") => lease.expire = Some(parse_expire(&stmt[1..])),
        _ => {}
    }
}

fn is_option_245_name(name: &str) -> bool {
    name.eq_ignore_ascii_case("unknown-245")
}

fn dhclient_value(tok: &Tok) -> Option<Ipv4Addr> {
    match tok {
        Tok::Str(Some(bytes)) => match bytes.len() {
            4 => addr_from_bytes(bytes),
            3 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], 0)),
            _ => None,
        },
        Tok::Word(w) if w.contains(':') => parse_colon_hex(w),
        Tok::Word(w) if w.contains('.') => w.parse().ok(),
        _ => None,
    }
}

/// `never` | `N never` | `N YYYY/MM/DD HH:MM:SS` | `epoch N` (dhclient's `db-time-format local`).
fn parse_expire(args: &[&Tok]) -> Option<Expiry> {
    let words: Vec<&str> = args
        .iter()
        .map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    match words.as_slice() {
        ["never"] | [_, "never"] => Some(Expiry::Never),
        ["epoch", n] => n.parse().ok().map(Expiry::At),
        [wd, date, time] if wd.bytes().all(|b| b.is_ascii_digit()) => parse_utc(date, time).map(Expiry::At),
        [date, time] => parse_utc(date, time).map(Expiry::At),
        _ => None,
    }
}

/// `YYYY/MM/DD` + `HH:MM:SS` (UTC) → seconds since the epoch.
fn parse_utc(date: &str, time: &str) -> Option<i64> {
    let num = |s: &str, max_len: usize| -> Option<i64> {
        if s.is_empty() || s.len() > max_len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let d: Vec<&str> = date.split('/').collect();
    let t: Vec<&str> = time.split(':').collect();
    let ([y, mo, da], [h, mi, s]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    let (y, mo, da) = (num(y, 4)?, num(mo, 2)?, num(da, 2)?);
    let (h, mi, s) = (num(h, 2)?, num(mi, 2)?, num(s, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------------------------
// systemd-networkd leases

/// `OPTION_245=a83f8110` from `/run/systemd/netif/leases/<ifindex>` (8 hex digits, any case).
pub fn parse_networkd_lease(text: &str) -> Option<Ipv4Addr> {
    text.lines().filter_map(|l| l.trim().strip_prefix("OPTION_245=")).find_map(|v| {
        let v = v.trim();
        if v.len() != 8 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(v, 16).ok().map(Ipv4Addr::from)
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Raw DHCP packets (dhcpcd lease files)

/// The concatenated value of option `code` in a raw BOOTP/DHCP packet (RFC 2131 layout, magic cookie at 236),
/// looking also in the `file` and `sname` fields when option 52 (overload) says so, and joining repeated
/// instances (RFC 3396). `None` when the packet is not DHCP or the option is absent. A truncated option area is
/// read up to the first option that does not fit.
pub fn dhcp_packet_option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
    if packet.get(COOKIE_OFFSET..COOKIE_OFFSET + 4) != Some(&MAGIC_COOKIE[..]) {
        return None;
    }
    let mut found = None;
    let overload = walk_options(packet.get(COOKIE_OFFSET + 4..).unwrap_or(&[]), code, &mut found);
    if overload & 1 != 0 {
        walk_options(packet.get(108..236).unwrap_or(&[]), code, &mut found);
    }
    if overload & 2 != 0 {
        walk_options(packet.get(44..108).unwrap_or(&[]), code, &mut found);
    }
    found
}

/// Walk one option area, appending every instance of `code` to `found`; returns the option-52 value seen (0 if
/// none).
fn walk_options(area: &[u8], code: u8, found: &mut Option<Vec<u8>>) -> u8 {
    let mut overload = 0;
    let mut i = 0;
    while let Some(&c) = area.get(i) {
        match c {
            0 => i += 1,
            255 => break,
            _ => {
                let Some(&len) = area.get(i + 1) else { break };
                let Some(value) = area.get(i + 2..i + 2 + len as usize) else { break };
                if c == code {
                    found.get_or_insert_with(Vec::new).extend_from_slice(value);
                }
                if c == 52 {
                    overload = value.first().copied().unwrap_or(0);
                }
                i += 2 + len as usize;
            }
        }
    }
    overload
}

/// Option 245 from a raw DHCP packet (a dhcpcd lease file): exactly 4 bytes, big-endian IPv4.
pub fn parse_dhcp_packet(bytes: &[u8]) -> Option<Ipv4Addr> {
    addr_from_bytes(&dhcp_packet_option(bytes, OPTION_WIRESERVER)?)
}

/// One classless static route (DHCP option 121 / Microsoft option 249, RFC 3442; platform.md §9.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// Decode option 121/249 data: repeated (prefix length, `ceil(len/8)` network bytes, 4-byte gateway).
/// `None` when malformed (prefix > 32, truncated entry).
pub fn parse_classless_routes(data: &[u8]) -> Option<Vec<Route>> {
    let mut routes = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let prefix_len = data[i];
        if prefix_len > 32 {
            return None;
        }
        let n = (prefix_len as usize).div_ceil(8);
        let net = data.get(i + 1..i + 1 + n)?;
        let gw = data.get(i + 1 + n..i + 5 + n)?;
        let mut dest = [0u8; 4];
        dest[..n].copy_from_slice(net);
        routes.push(Route { destination: Ipv4Addr::from(dest), prefix_len, gateway: addr_from_bytes(gw)? });
        i += 5 + n;
    }
    Some(routes)
}

// ---------------------------------------------------------------------------------------------------------------
// Format sniffing and discovery

/// Tell a lease file's layout from its content.
pub fn sniff(bytes: &[u8]) -> LeaseFormat {
    if bytes.get(COOKIE_OFFSET..COOKIE_OFFSET + 4) == Some(&MAGIC_COOKIE[..]) {
        return LeaseFormat::Packet;
    }
    let text = String::from_utf8_lossy(bytes);
    let toks = tokenize(&text);
    if toks.windows(2).any(|w| w[0] == Tok::Word("lease".into()) && w[1] == Tok::Open) {
        return LeaseFormat::Dhclient;
    }
    let is_kv = |l: &str| {
        l.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
    };
    if text.lines().map(str::trim).any(is_kv) {
        return LeaseFormat::Networkd;
    }
    LeaseFormat::Unknown
}

/// Option 245 from one lease file of any supported format.
pub fn parse_lease_file(bytes: &[u8], now_unix: i64) -> Option<Ipv4Addr> {
    match sniff(bytes) {
        LeaseFormat::Packet => parse_dhcp_packet(bytes),
        LeaseFormat::Dhclient => parse_dhclient_leases(&String::from_utf8_lossy(bytes), now_unix),
        LeaseFormat::Networkd => parse_networkd_lease(&String::from_utf8_lossy(bytes)),
        LeaseFormat::Unknown => None,
    }
}

/// Option 245 from the first of `files` (name, content) that carries it, each file's format sniffed.
pub fn from_lease_files(files: &[(String, Vec<u8>)], now_unix: i64) -> Option<Ipv4Addr> {
    files.iter().find_map(|(_, bytes)| parse_lease_file(bytes, now_unix))
}

/// Where DHCP clients keep leases: (directory, name prefix, accepted name suffixes; empty = any).
const LEASE_LOCATIONS: &[(&str, &str, &[&str])] = &[
    ("/var/lib/dhcp", "dhclient", &[".leases"]),
    ("/var/lib/dhclient", "dhclient-", &[".lease", ".leases"]),
    ("/var/lib/NetworkManager", "dhclient-", &[".lease"]),
    ("/run/systemd/netif/leases", "", &[]),
    ("/var/lib/dhcpcd", "", &[".lease"]),
    ("/var/lib/dhcpcd5", "", &[".lease"]),
];

/// Candidate lease files present under the target root, newest first (modification time; equal times keep the
/// location order above), so the client that is active on this boot wins over leases left in the image.
pub fn lease_files(sys: &dyn System) -> Vec<PathBuf> {
    let mut found: Vec<(PathBuf, i64)> = Vec::new();
    for (dir, prefix, suffixes) in LEASE_LOCATIONS {
        let Ok(names) = sys.read_dir(Path::new(dir)) else { continue };
        for name in names {
            let wanted = !name.starts_with('.')
                && name.starts_with(prefix)
                && (suffixes.is_empty() || suffixes.iter().any(|s| name.len() > s.len() && name.ends_with(s)));
            if !wanted {
                continue;
            }
            let path = Path::new(dir).join(&name);
            match sys.stat(&path) {
                Ok(info) if info.is_file && info.len <= MAX_LEASE_FILE => found.push((path, info.mtime_s)),
                _ => {}
            }
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.1));
    found.into_iter().map(|(p, _)| p).collect()
}

/// Find the wireserver (platform.md §5.1): a route to 168.63.129.16 in `/proc/net/route`, else option 245 from
/// the newest lease file that has it ([`lease_files`]), else [`DEFAULT_WIRESERVER`]. Reads through `sys` only.
pub fn discover(sys: &dyn System, now_unix: i64) -> Discovery {
    if let Ok(table) = sys.read(Path::new("/proc/net/route")) {
        if route_table_has_wireserver(&String::from_utf8_lossy(&table)) {
            return Discovery { address: DEFAULT_WIRESERVER, source: "route in /proc/net/route".into() };
        }
    }
    for path in lease_files(sys) {
        let Ok(bytes) = sys.read(&path) else { continue };
        if let Some(address) = parse_lease_file(&bytes, now_unix) {
            return Discovery { address, source: format!("DHCP option 245 in {}", path.display()) };
        }
    }
    Discovery { address: DEFAULT_WIRESERVER, source: "default (no route, no lease with option 245)".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_address_from_url() {
        assert_eq!(url_ipv4("http://169.254.169.254"), Some(Ipv4Addr::new(169, 254, 169, 254)));
        assert_eq!(url_ipv4("http://127.0.0.1:8080/metadata"), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(url_ipv4("http://u@10.0.0.1:1?x"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(url_ipv4("http://imds.example/"), None);
        assert_eq!(url_ipv4("http://[::1]:80/"), None);
    }
    use crate::system::record::RecordingSystem;
    use crate::testutil::fixture;

    /// 2025-01-01T00:00:00Z
    const NOW: i64 = 1_735_689_600;
    /// 2200-01-01T00:00:00Z, after the fixture's 2152 expiry.
    const FAR_FUTURE: i64 = 7_258_118_400;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn lease(body: &str) -> String {
        format!("lease {{\n  interface \"eth0\";\n  fixed-address 10.0.0.4;\n{body}\n}}\n")
    }

    // --- fixtures ---------------------------------------------------------------------------------------------

    #[test]
    fn fixture_dhclient_three_leases() {
        let Some(bytes) = fixture("dhcp/walinuxagent-dhclient.leases") else { return };
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert_eq!(sniff(&bytes), LeaseFormat::Dhclient);
        assert_eq!(parse_dhclient_leases(&text, NOW), Some(ip("168.63.129.16")));
        assert_eq!(parse_dhclient_leases(&text, FAR_FUTURE), Some(ip("168.63.129.16")));
        assert_eq!(parse_lease_file(&bytes, NOW), Some(ip("168.63.129.16")));

        // Tell the three leases apart: #1 `expire 0 never`, #2 expired 2015, #3 expires 2152.
        let mut marked = String::new();
        for (n, part) in text.split("a8:3f:81:10").enumerate() {
            marked.push_str(part);
            if n < 3 {
                marked.push_str(&format!("{0}:{0}:{0}:{0}", n + 1));
            }
        }
        let leases = dhclient_leases(&tokenize(&marked));
        assert_eq!(leases.len(), 3);
        assert_eq!(leases[0].expire, Some(Some(Expiry::Never)));
        assert_eq!(leases[1].expire, Some(Some(Expiry::At(1_434_473_934))));
        assert_eq!(leases[2].expire, Some(Some(Expiry::At(5_761_063_630))));
        // Now: the last unexpired one (#3) wins.
        assert_eq!(parse_dhclient_leases(&marked, NOW), Some(ip("3.3.3.3")));
        // Before 2015-06-16 all three are valid: still the last.
        assert_eq!(parse_dhclient_leases(&marked, 1_400_000_000), Some(ip("3.3.3.3")));
        // After 2152 only the `never` lease (#1) is left; #2 (expired 2015) never wins.
        assert_eq!(parse_dhclient_leases(&marked, FAR_FUTURE), Some(ip("1.1.1.1")));
        // Exactly at the expiry second a lease counts as expired.
        assert_eq!(parse_dhclient_leases(&marked, 5_761_063_630), Some(ip("1.1.1.1")));
        assert_eq!(parse_dhclient_leases(&marked, 5_761_063_629), Some(ip("3.3.3.3")));
    }

    #[test]
    fn fixture_networkd_lease() {
        let Some(bytes) = fixture("dhcp/walinuxagent-networkd-lease-option245") else { return };
        assert_eq!(sniff(&bytes), LeaseFormat::Networkd);
        assert_eq!(parse_networkd_lease(std::str::from_utf8(&bytes).unwrap()), Some(ip("168.63.129.16")));
        assert_eq!(parse_lease_file(&bytes, NOW), Some(ip("168.63.129.16")));
    }

    #[test]
    fn fixture_raw_dhcp_offer_per_host_endpoint() {
        let Some(bytes) = fixture("dhcp/walinuxagent-dhcp-offer-raw.bin") else { return };
        assert_eq!(bytes.len(), 328);
        assert_eq!(sniff(&bytes), LeaseFormat::Packet);
        assert_eq!(parse_dhcp_packet(&bytes), Some(ip("10.62.144.140")));
        assert_eq!(dhcp_packet_option(&bytes, 53), Some(vec![2]));
        assert_eq!(dhcp_packet_option(&bytes, 54), Some(vec![10, 62, 3, 42]));
        assert_eq!(dhcp_packet_option(&bytes, 15).as_deref(), Some(&b"test-cs12.h1.internal.cloudapp.net"[..]));
        assert_eq!(dhcp_packet_option(&bytes, 121), None);
    }

    #[test]
    fn fixture_dhcpcd_azure_lease_and_routes() {
        let Some(bytes) = fixture("dhcp/cloud-init-dhcpcd-raw-lease-azure-eth0.bin") else { return };
        assert_eq!(bytes.len(), 370);
        assert_eq!(sniff(&bytes), LeaseFormat::Packet);
        assert_eq!(parse_dhcp_packet(&bytes), Some(ip("168.63.129.16")));
        assert_eq!(parse_lease_file(&bytes, NOW), Some(ip("168.63.129.16")));
        assert_eq!(dhcp_packet_option(&bytes, 53), Some(vec![5]));
        let routes = parse_classless_routes(&dhcp_packet_option(&bytes, 121).unwrap()).unwrap();
        let gw = ip("10.1.0.1");
        assert_eq!(
            routes,
            vec![
                Route { destination: ip("0.0.0.0"), prefix_len: 0, gateway: gw },
                Route { destination: ip("168.63.129.16"), prefix_len: 32, gateway: gw },
                Route { destination: ip("169.254.169.254"), prefix_len: 32, gateway: gw },
            ]
        );
    }

    #[test]
    fn fixture_dhcpcd_non_azure_has_no_option_245() {
        let Some(bytes) = fixture("dhcp/cloud-init-dhcpcd-raw-lease-non-azure-no-option245.bin") else { return };
        assert_eq!(bytes.len(), 321);
        assert_eq!(sniff(&bytes), LeaseFormat::Packet);
        assert_eq!(parse_dhcp_packet(&bytes), None);
        assert_eq!(parse_lease_file(&bytes, NOW), None);
        assert_eq!(dhcp_packet_option(&bytes, 3), Some(vec![192, 168, 0, 1]));
        assert_eq!(dhcp_packet_option(&bytes, 51), Some(86_400u32.to_be_bytes().to_vec()));
    }

    #[test]
    fn truncated_and_mutated_fixtures_never_panic() {
        let names = [
            "dhcp/walinuxagent-dhcp-offer-raw.bin",
            "dhcp/cloud-init-dhcpcd-raw-lease-azure-eth0.bin",
            "dhcp/cloud-init-dhcpcd-raw-lease-non-azure-no-option245.bin",
            "dhcp/walinuxagent-dhclient.leases",
            "dhcp/walinuxagent-networkd-lease-option245",
        ];
        for name in names {
            let Some(bytes) = fixture(name) else { return };
            let full = parse_lease_file(&bytes, NOW);
            let is_packet = sniff(&bytes) == LeaseFormat::Packet;
            for n in 0..=bytes.len() {
                let cut = &bytes[..n];
                let got = parse_lease_file(cut, NOW);
                // A truncated file never yields a different address than the whole file.
                assert!(got.is_none() || got == full, "{name} cut at {n}: {got:?}");
                if is_packet {
                    let _ = dhcp_packet_option(cut, 121).map(|d| parse_classless_routes(&d));
                    let _ = parse_dhclient_leases(&String::from_utf8_lossy(cut), NOW);
                    let _ = parse_networkd_lease(&String::from_utf8_lossy(cut));
                    let _ = route_table_has_wireserver(&String::from_utf8_lossy(cut));
                }
            }
            if !is_packet {
                continue;
            }
            // Every single-byte corruption of the option area (length bytes included).
            for pos in COOKIE_OFFSET + 4..bytes.len() {
                for v in [0u8, 1, 4, 52, 0x7f, 0xf5, 0xff] {
                    let mut m = bytes.clone();
                    m[pos] = v;
                    let _ = parse_dhcp_packet(&m);
                    let _ = dhcp_packet_option(&m, 121).map(|d| parse_classless_routes(&d));
                }
            }
        }
        // The raw packets: once the whole option-245 entry is present, the address is found.
        let Some(offer) = fixture("dhcp/walinuxagent-dhcp-offer-raw.bin") else { return };
        let at = offer.windows(2).position(|w| w == [0xf5, 4]).unwrap();
        assert_eq!(parse_dhcp_packet(&offer[..at + 5]), None);
        assert_eq!(parse_dhcp_packet(&offer[..at + 6]), Some(ip("10.62.144.140")));
    }

    // --- dhclient text ----------------------------------------------------------------------------------------

    #[test]
    fn dhclient_quoted_values_cloud_init_vectors() {
        for (value, want) in [
            (r#""bL6 ""#, "98.76.54.32"),
            (r#""dH\"l""#, "100.72.34.108"),
            (r#""dH:l""#, "100.72.58.108"),
            (r#""\250?\201\020""#, "168.63.129.16"),
            (r#""a\\b\$""#, "97.92.98.36"),
            // dhclient drops one trailing NUL when printing text: 3 bytes = x.y.z.0
            (r#""dH\"""#, "100.72.34.0"),
            ("a8:3f:81:10", "168.63.129.16"),
            ("4:3:2:1", "4.3.2.1"),
            ("A8:3F:81:10", "168.63.129.16"),
            ("168.63.129.16", "168.63.129.16"),
        ] {
            let text = lease(&format!("  option unknown-245 {value};\n  expire never;"));
            assert_eq!(parse_dhclient_leases(&text, NOW), Some(ip(want)), "{value}");
        }
    }

    #[test]
    fn dhclient_malformed_values_are_ignored() {
        for value in [
            r#""bL6""#, // 3 printable bytes is fine (NUL), but 2 is not
            r#""bL""#,
            r#""bL6 x""#,   // 5 bytes
            r#""\400abc""#, // octal out of range
            r#""bL6 "#,     // unterminated
            "a8:3f:81",
            "a8:3f:81:10:00",
            "a8:3f:81:100",
            "a8:3f:81:1g",
            "a8::81:10",
            ":a8:3f:81",
            "a83f8110",
            "168.63.129",
            "168.63.129.256",
            "",
            "a8:3f:81:10 extra",
        ] {
            let text = lease(&format!("  option unknown-245 {value};"));
            let got = parse_dhclient_leases(&text, NOW);
            if value == r#""bL6""# {
                assert_eq!(got, Some(ip("98.76.54.0")));
            } else {
                assert_eq!(got, None, "{value}");
            }
        }
    }

    #[test]
    fn dhclient_last_unexpired_lease_with_245_wins() {
        let a = lease("  option unknown-245 1:1:1:1;\n  expire 3 2030/01/02 03:04:05;");
        let b = lease("  option unknown-245 2:2:2:2;\n  expire 2 2020/01/01 00:00:00;"); // expired
        let c = lease("  option routers 10.0.0.1;\n  expire never;"); // no 245
        let d = lease("  option unknown-245 4:4:4:4;\n  expire 1 2029/12/31 23:59:59;");
        assert_eq!(parse_dhclient_leases(&format!("{a}{b}{c}"), NOW), Some(ip("1.1.1.1")));
        assert_eq!(parse_dhclient_leases(&format!("{a}{b}{c}{d}"), NOW), Some(ip("4.4.4.4")));
        assert_eq!(parse_dhclient_leases(&format!("{d}{a}{b}{c}"), NOW), Some(ip("1.1.1.1")));
        // 2029-12-31T23:59:59Z passed: d is expired, a (2030) is not.
        assert_eq!(parse_dhclient_leases(&format!("{a}{d}"), 1_893_455_999), Some(ip("1.1.1.1")));
        assert_eq!(parse_dhclient_leases(&format!("{a}{d}"), 1_893_455_998), Some(ip("4.4.4.4")));
        // Everything expired: nothing (the caller falls back).
        assert_eq!(parse_dhclient_leases(&b, NOW), None);
        assert_eq!(parse_dhclient_leases(&format!("{a}{d}"), FAR_FUTURE), None);
    }

    #[test]
    fn dhclient_expiry_forms() {
        let with = |expire: &str| lease(&format!("  option unknown-245 9:9:9:9;\n  {expire}"));
        let yes = Some(ip("9.9.9.9"));
        assert_eq!(parse_dhclient_leases(&with("expire never;"), FAR_FUTURE), yes);
        assert_eq!(parse_dhclient_leases(&with("expire 0 never;"), FAR_FUTURE), yes);
        assert_eq!(parse_dhclient_leases(&with("expire epoch 1735689601; # Wed Jan  1 00:00:01 2025"), NOW), yes);
        assert_eq!(parse_dhclient_leases(&with("expire epoch 1735689600;"), NOW), None);
        assert_eq!(parse_dhclient_leases(&with("expire 3 2025/01/01 00:00:01;"), NOW), yes);
        assert_eq!(parse_dhclient_leases(&with("expire 3 2025/01/01 00:00:00;"), NOW), None);
        assert_eq!(parse_dhclient_leases(&with("expire 2025/01/01 00:00:01;"), NOW), yes);
        // Leap day and a far year go through the calendar arithmetic.
        assert_eq!(parse_utc("2000/02/29", "00:00:00"), Some(951_782_400));
        assert_eq!(parse_utc("2015/06/16", "16:58:54"), Some(1_434_473_934));
        assert_eq!(parse_utc("1970/01/01", "00:00:00"), Some(0));
        // No expire statement: valid.
        assert_eq!(parse_dhclient_leases(&with(""), FAR_FUTURE), yes);
        // Unreadable expire: treated as expired.
        for bad in [
            "expire soon;",
            "expire 3 2025/13/01 00:00:00;",
            "expire 3 2025/01/01 24:00:00;",
            "expire 3 2025-01-01 00:00:00;",
            "expire 3 99999/01/01 00:00:00;",
            "expire 3 2030/01/01;",
            "expire epoch x;",
            "expire;",
            "expire \"never\";",
        ] {
            assert_eq!(parse_dhclient_leases(&with(bad), NOW), None, "{bad}");
        }
    }

    #[test]
    fn dhclient_tolerates_odd_files() {
        let good = lease("  option unknown-245 a8:3f:81:10;\n  expire never;");
        let sfx = Some(DEFAULT_WIRESERVER);
        // Top-level statements, comments, DHCPv6 blocks with nesting, junk lines, CRLF.
        let text = format!(
            "default-duid \"\\000\\001\\000\\001\";\n# comment with lease {{ inside\noption rfc3442 code 121 = array of unsigned integer 8;\n\
             lease6 {{\n  interface \"eth0\";\n  ia-na 1a:2b {{ iaaddr ::1 {{ max-life 10; }} }}\n}}\n\
             garbage ;; }} {{ }}\n{good}this line is junk\r\n"
        );
        assert_eq!(parse_dhclient_leases(&text, NOW), sfx);
        // Option value with `;` and `}` inside a quoted string.
        let t = lease("  option domain-name \"a;b}c{\";\n  option unknown-245 \";}{\";\n  expire never;");
        assert_eq!(parse_dhclient_leases(&t, NOW), Some(Ipv4Addr::new(b';', b'}', b'{', 0)));
        // A malformed line inside the block does not spoil the rest of the lease.
        let t = lease("  option ;\n  option unknown-245;\n  @@ junk =\n  ;\n  weird { x; option unknown-245 1:2:3:4; }\n  option unknown-245 a8:3f:81:10;");
        assert_eq!(parse_dhclient_leases(&t, NOW), sfx);
        // Later duplicate in the same lease replaces the earlier one (even a bad one).
        let t = lease("  option unknown-245 1:2:3:4;\n  option unknown-245 5:6:7:8;");
        assert_eq!(parse_dhclient_leases(&t, NOW), Some(ip("5.6.7.8")));
        let t = lease("  option unknown-245 1:2:3:4;\n  option unknown-245 5:6:7;");
        assert_eq!(parse_dhclient_leases(&t, NOW), None);
        // Unterminated final lease (truncated write): ignored; the earlier complete lease still counts.
        let partial = "lease {\n  option unknown-245 9:9:9:9;\n  expire never;\n";
        assert_eq!(parse_dhclient_leases(&format!("{good}{partial}"), NOW), sfx);
        assert_eq!(parse_dhclient_leases(partial, NOW), None);
        // Other option names and `unknown-2450` do not count.
        let t = lease(
            "  option unknown-2450 1:2:3:4;\n  option unknown-24 1:2:3:4;\n  option domain-name-servers 1.2.3.4;",
        );
        assert_eq!(parse_dhclient_leases(&t, NOW), None);
        // Nothing at all.
        for t in ["", "lease", "lease {", "}}}}", "\"", "\\", "lease { option unknown-245 \"\\"] {
            assert_eq!(parse_dhclient_leases(t, NOW), None, "{t:?}");
        }
    }

    #[test]
    fn dhclient_ignores_option_outside_lease_blocks() {
        let t = "option unknown-245 1:2:3:4;\nlease {\n  interface \"eth0\";\n}\n";
        assert_eq!(parse_dhclient_leases(t, NOW), None);
    }

    // --- networkd, NetworkManager, route table ----------------------------------------------------------------

    #[test]
    fn networkd_leases() {
        assert_eq!(parse_networkd_lease("ADDRESS=10.0.0.4\nOPTION_245=a83f8110\n"), Some(DEFAULT_WIRESERVER));
        assert_eq!(parse_networkd_lease("OPTION_245=A83F8110"), Some(DEFAULT_WIRESERVER));
        assert_eq!(parse_networkd_lease("  OPTION_245=0a3e908c  \r\n"), Some(ip("10.62.144.140")));
        for bad in [
            "OPTION_245=a83f81",
            "OPTION_245=a83f811000",
            "OPTION_245=a8:3f:81:10",
            "OPTION_245=",
            "OPTION_24=a83f8110",
            "OPTION_2450=a83f8110",
            "X=1",
            "",
        ] {
            assert_eq!(parse_networkd_lease(bad), None, "{bad}");
        }
        assert_eq!(sniff(b"# This is private data. Do not parse.\nADDRESS=10.0.0.4\n"), LeaseFormat::Networkd);
        assert_eq!(sniff(b"hello world\n"), LeaseFormat::Unknown);
        assert_eq!(sniff(b""), LeaseFormat::Unknown);
    }

    #[test]
    fn network_manager_option_values() {
        assert_eq!(parse_nm_option("a8:3f:81:10"), Some(DEFAULT_WIRESERVER));
        assert_eq!(parse_nm_option(" a8:3f:81:10\n"), Some(DEFAULT_WIRESERVER));
        assert_eq!(parse_nm_option("4:3:2:1"), Some(ip("4.3.2.1")));
        for bad in ["", "a8:3f:81", "a8:3f:81:10:1", "a83f8110", "168.63.129.16", "+8:3f:81:10", "a8:3f:81:1x"] {
            assert_eq!(parse_nm_option(bad), None, "{bad}");
        }
    }

    #[test]
    fn route_table() {
        let with = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                    eth0\t10813FA8\t0100000A\t0007\t0\t0\t100\tFFFFFFFF\t0\t0\t0\n";
        assert!(route_table_has_wireserver(with));
        assert!(route_table_has_wireserver("eth0 10813fa8 0100000A 0007"));
        let gateway_only = "Iface\tDestination\tGateway\neth0\t00000000\t10813FA8\t0003\n";
        assert!(!route_table_has_wireserver(gateway_only));
        assert!(!route_table_has_wireserver("Iface\tDestination\tGateway\n"));
        assert!(!route_table_has_wireserver(""));
    }

    // --- raw packets -----------------------------------------------------------------------------------------

    fn packet(options: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 240];
        p[0] = 2;
        p[236..240].copy_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(options);
        p
    }

    #[test]
    fn packet_option_walk() {
        // Pads, then 245, then end.
        assert_eq!(parse_dhcp_packet(&packet(&[0, 0, 245, 4, 168, 63, 129, 16, 255])), Some(DEFAULT_WIRESERVER));
        // No end option: the walk stops at the end of the buffer.
        assert_eq!(parse_dhcp_packet(&packet(&[53, 1, 5, 245, 4, 1, 2, 3, 4])), Some(ip("1.2.3.4")));
        // Wrong length.
        assert_eq!(parse_dhcp_packet(&packet(&[245, 3, 1, 2, 3, 255])), None);
        assert_eq!(parse_dhcp_packet(&packet(&[245, 5, 1, 2, 3, 4, 5, 255])), None);
        // Split across two instances (RFC 3396): concatenated.
        assert_eq!(parse_dhcp_packet(&packet(&[245, 2, 1, 2, 3, 1, 9, 245, 2, 3, 4, 255])), Some(ip("1.2.3.4")));
        // After END nothing counts.
        assert_eq!(parse_dhcp_packet(&packet(&[255, 245, 4, 1, 2, 3, 4])), None);
        // Length runs past the end.
        assert_eq!(parse_dhcp_packet(&packet(&[245, 4, 1, 2, 3])), None);
        assert_eq!(parse_dhcp_packet(&packet(&[245])), None);
        // No cookie, short buffers.
        let mut p = packet(&[245, 4, 1, 2, 3, 4, 255]);
        p[236] = 0;
        assert_eq!(parse_dhcp_packet(&p), None);
        assert_eq!(parse_dhcp_packet(&[]), None);
        assert_eq!(parse_dhcp_packet(&MAGIC_COOKIE), None);
    }

    #[test]
    fn packet_option_overload() {
        // 52 = 1: options continue in `file` (offset 108).
        let mut p = packet(&[53, 1, 5, 52, 1, 1, 255]);
        p[108..115].copy_from_slice(&[245, 4, 10, 0, 0, 1, 255]);
        assert_eq!(parse_dhcp_packet(&p), Some(ip("10.0.0.1")));
        // 52 = 2: `sname` (offset 44); 52 = 3: both, file first then sname.
        let mut p = packet(&[52, 1, 2, 255]);
        p[44..51].copy_from_slice(&[245, 4, 10, 0, 0, 2, 255]);
        assert_eq!(parse_dhcp_packet(&p), Some(ip("10.0.0.2")));
        let mut p = packet(&[52, 1, 3, 245, 1, 10, 255]);
        p[108..113].copy_from_slice(&[245, 2, 0, 0, 255]);
        p[44..48].copy_from_slice(&[245, 1, 3, 255]);
        assert_eq!(parse_dhcp_packet(&p), Some(ip("10.0.0.3")));
        // Without option 52 the `file` field is not options.
        let mut p = packet(&[53, 1, 5, 255]);
        p[108..115].copy_from_slice(&[245, 4, 10, 0, 0, 1, 255]);
        assert_eq!(parse_dhcp_packet(&p), None);
        // Overload with a truncated packet (file field cut off).
        let mut p = packet(&[52, 1, 1, 255]);
        p[108..115].copy_from_slice(&[245, 4, 10, 0, 0, 1, 255]);
        assert_eq!(parse_dhcp_packet(&p[..112]), None);
    }

    #[test]
    fn classless_routes() {
        assert_eq!(parse_classless_routes(&[]), Some(vec![]));
        let r = parse_classless_routes(&[24, 10, 1, 2, 10, 1, 2, 1, 9, 128, 0, 10, 0, 0, 1]).unwrap();
        assert_eq!(r[0], Route { destination: ip("10.1.2.0"), prefix_len: 24, gateway: ip("10.1.2.1") });
        assert_eq!(r[1], Route { destination: ip("128.0.0.0"), prefix_len: 9, gateway: ip("10.0.0.1") });
        assert_eq!(parse_classless_routes(&[33, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(parse_classless_routes(&[32, 168, 63, 129, 16, 10, 0, 0]), None);
        assert_eq!(parse_classless_routes(&[0]), None);
    }

    // --- several files, discovery ------------------------------------------------------------------------------

    #[test]
    fn from_lease_files_first_hit_in_order() {
        let nd = ("2".to_string(), b"OPTION_245=0a000001\n".to_vec());
        let none = ("x".to_string(), b"ADDRESS=10.0.0.4\n".to_vec());
        let dh = ("dhclient.leases".to_string(), lease("  option unknown-245 a8:3f:81:10;").into_bytes());
        let mut pk = packet(&[245, 4, 10, 0, 0, 2, 255]);
        pk.truncate(247);
        let pk = ("eth0.lease".to_string(), pk);
        assert_eq!(from_lease_files(&[none.clone(), nd.clone(), dh.clone()], NOW), Some(ip("10.0.0.1")));
        assert_eq!(from_lease_files(&[dh.clone(), nd.clone()], NOW), Some(DEFAULT_WIRESERVER));
        assert_eq!(from_lease_files(&[pk.clone(), dh], NOW), Some(ip("10.0.0.2")));
        assert_eq!(from_lease_files(&[none], NOW), None);
        assert_eq!(from_lease_files(&[], NOW), None);
    }

    fn sandbox() -> (tempfile::TempDir, RecordingSystem) {
        let dir = tempfile::tempdir().unwrap();
        let sys = RecordingSystem::new(dir.path());
        (dir, sys)
    }

    fn put(sys: &RecordingSystem, path: &str, data: &[u8]) {
        let p = Path::new(path);
        sys.create_dir_all(p.parent().unwrap(), 0o755, None).unwrap();
        sys.write_file(p, data, 0o644, None).unwrap();
    }

    fn set_mtime(sys: &RecordingSystem, path: &str, secs: i64) {
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 },
            last_modification: rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 },
        };
        rustix::fs::utimensat(rustix::fs::CWD, sys.host_path(Path::new(path)), &t, rustix::fs::AtFlags::empty())
            .unwrap();
    }

    #[test]
    fn discover_falls_back_on_an_empty_root() {
        let (_d, sys) = sandbox();
        let d = discover(&sys, NOW);
        assert_eq!(d.address, DEFAULT_WIRESERVER);
        assert!(d.source.starts_with("default"), "{}", d.source);
        assert_eq!(d.url(), "http://168.63.129.16");
        assert!(sys.commands().is_empty());
    }

    #[test]
    fn discover_route_first_then_leases() {
        let (_d, sys) = sandbox();
        put(&sys, "/run/systemd/netif/leases/2", b"OPTION_245=0a3e908c\n");
        let d = discover(&sys, NOW);
        assert_eq!(d.address, ip("10.62.144.140"));
        assert_eq!(d.source, "DHCP option 245 in /run/systemd/netif/leases/2");

        put(&sys, "/proc/net/route", b"Iface\tDestination\tGateway\neth0\t10813FA8\t0100000A\t0007\n");
        let d = discover(&sys, NOW);
        assert_eq!(d.address, DEFAULT_WIRESERVER);
        assert!(d.source.contains("/proc/net/route"));

        // A route table without the host route: the lease again.
        put(&sys, "/proc/net/route", b"Iface\tDestination\tGateway\neth0\t00000000\t0100000A\t0003\n");
        assert_eq!(discover(&sys, NOW).address, ip("10.62.144.140"));
    }

    #[test]
    fn discover_lease_locations_and_names() {
        let v = |n: u8| lease(&format!("  option unknown-245 {n}:{n}:{n}:{n};")).into_bytes();
        for (path, hit) in [
            ("/var/lib/dhcp/dhclient.leases", true),
            ("/var/lib/dhcp/dhclient.eth0.leases", true),
            ("/var/lib/dhcp/dhclient.eth0.leases~", false),
            ("/var/lib/dhcp/other.leases", false),
            ("/var/lib/dhclient/dhclient-eth0.leases", true),
            ("/var/lib/dhclient/dhclient-1234-eth0.lease", true),
            ("/var/lib/dhclient/dhclient.leases", false),
            ("/var/lib/NetworkManager/dhclient-5f1e-eth0.lease", true),
            ("/var/lib/NetworkManager/dhclient-5f1e-eth0.conf", false),
            ("/var/lib/NetworkManager/internal-5f1e-eth0.lease", false),
            ("/run/systemd/netif/leases/7", true),
            ("/run/systemd/netif/leases/.7.tmp", false),
            ("/var/lib/dhcpcd/eth0.lease", true),
            ("/var/lib/dhcpcd/eth0.lease6", false),
            ("/var/lib/dhcpcd5/dhcpcd-eth0.lease", true),
            ("/var/lib/dhcp/dhclient6.eth0.leases", true),
        ] {
            let (_d, sys) = sandbox();
            put(&sys, path, &v(9));
            let d = discover(&sys, NOW);
            if hit {
                assert_eq!((d.address, d.source), (ip("9.9.9.9"), format!("DHCP option 245 in {path}")));
            } else {
                assert_eq!(d.address, DEFAULT_WIRESERVER, "{path}");
            }
        }
    }

    #[test]
    fn discover_prefers_the_newest_lease_and_skips_useless_files() {
        let (_d, sys) = sandbox();
        let old = "/var/lib/dhcp/dhclient.eth0.leases";
        let new = "/var/lib/dhcpcd/eth0.lease";
        put(&sys, old, lease("  option unknown-245 1:1:1:1;\n  expire never;").as_bytes());
        put(&sys, new, &packet(&[245, 4, 2, 2, 2, 2, 255]));
        set_mtime(&sys, old, 1_000_000_000);
        set_mtime(&sys, new, 1_700_000_000);
        assert_eq!(discover(&sys, NOW).address, ip("2.2.2.2"));
        set_mtime(&sys, old, 1_800_000_000);
        assert_eq!(discover(&sys, NOW).address, ip("1.1.1.1"));
        assert_eq!(lease_files(&sys), vec![PathBuf::from(old), PathBuf::from(new)]);

        // The newest has no usable option 245 (expired): the next one is used.
        put(&sys, old, lease("  option unknown-245 1:1:1:1;\n  expire epoch 1;").as_bytes());
        set_mtime(&sys, old, 1_800_000_000);
        assert_eq!(discover(&sys, NOW).address, ip("2.2.2.2"));

        // Directories and oversized files named like leases are skipped.
        let (_d2, sys) = sandbox();
        sys.create_dir_all(Path::new("/run/systemd/netif/leases/3"), 0o755, None).unwrap();
        let mut big = b"OPTION_245=01010101\n".to_vec();
        big.resize(MAX_LEASE_FILE as usize + 1, b'\n');
        put(&sys, "/run/systemd/netif/leases/4", &big);
        put(&sys, "/run/systemd/netif/leases/5", b"OPTION_245=05050505\n");
        assert_eq!(lease_files(&sys), vec![PathBuf::from("/run/systemd/netif/leases/5")]);
        assert_eq!(discover(&sys, NOW).address, ip("5.5.5.5"));
    }
}
