//! `ovf-env.xml`: the VM-create parameters on the provisioning DVD (platform.md §3).

use crate::report::Failure;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PublicKey {
    pub fingerprint: Option<String>,
    pub path: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyPair {
    pub fingerprint: String,
    pub path: Option<String>,
}

/// `CustomData` as found: decoded bytes, or the text as given when it is not valid base64 (flagged in warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomData {
    Decoded(Secret),
    Raw(Secret),
}

impl CustomData {
    /// Bytes after base64 decoding, or the raw length when it was not base64.
    pub fn len(&self) -> usize {
        match self {
            CustomData::Decoded(s) | CustomData::Raw(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parsed environment. `Debug` never shows the password or customData (they are `Secret`s).
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub hostname: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub disable_ssh_password_authentication: Option<bool>,
    pub public_keys: Vec<PublicKey>,
    pub key_pairs: Vec<KeyPair>,
    pub custom_data: Option<CustomData>,
    /// Absent means true.
    pub provision_guest_agent: bool,
    pub preprovisioned_vm: bool,
    pub preprovisioned_vm_type: Option<String>,
    pub provision_guest_proxy_agent: bool,
    /// Non-fatal findings (bad booleans, customData that is not base64, …), safe to log.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OvfError {
    /// Malformed XML (reason `error parsing ovf-env.xml: <msg>`).
    #[error("error parsing ovf-env.xml: {0}")]
    Malformed(String),
    /// Missing/duplicate required elements (reason `unexpected metadata parsing ovf-env.xml: <msg>`).
    #[error("unexpected metadata parsing ovf-env.xml: {0}")]
    Unexpected(String),
    /// `unsupported password length=N max=72`
    #[error("unsupported password length={0} max=72")]
    PasswordLength(usize),
}

impl OvfError {
    pub fn failure(&self) -> Failure {
        Failure::new(self.to_string())
    }
}

/// Maximum `UserPassword` length in characters (platform.md §3.4).
pub const MAX_PASSWORD_CHARS: usize = 72;
/// Decoded `CustomData` above this size only warns (the API enforces it; platform.md §3.4).
pub const MAX_CUSTOM_DATA_BYTES: usize = 65_535;
/// The text `redact` writes, and which `parse` treats as "no password" (platform.md §2.5).
pub const REDACTED: &str = "REDACTED";

/// Deeper nesting than this is rejected (real documents are 6 levels deep); keeps the tree small and drops cheap.
const MAX_DEPTH: usize = 64;
const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// One element of the document: local name, `xsi:nil`, its own character data (entities decoded, CDATA included)
/// and child elements. Text is wiped on drop because a `UserPassword` node holds the plaintext password.
struct Node {
    name: String,
    nil: bool,
    text: String,
    children: Vec<Node>,
}

impl Drop for Node {
    fn drop(&mut self) {
        drop(Secret::new(std::mem::take(&mut self.text).into_bytes()));
    }
}

impl Node {
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The child expected at most once: `None` when absent, an error when repeated.
    fn single(&self, name: &str) -> Result<Option<&Node>, OvfError> {
        self.single_by(name, |n| n == name)
    }

    fn single_by(&self, label: &str, matches: impl Fn(&str) -> bool) -> Result<Option<&Node>, OvfError> {
        let mut found = self.children.iter().filter(|c| matches(&c.name));
        let first = found.next();
        let more = found.count();
        if more > 0 {
            return Err(OvfError::Unexpected(format!("multiple configuration matches for '{label}' ({})", more + 1)));
        }
        Ok(first)
    }

    fn required(&self, name: &str) -> Result<&Node, OvfError> {
        self.single(name)?.ok_or_else(|| missing(name))
    }

    /// The text as given (never trimmed); `None` when nil or empty.
    fn raw_text(&self) -> Option<&str> {
        if self.nil || self.text.is_empty() {
            None
        } else {
            Some(&self.text)
        }
    }

    /// The text trimmed of ASCII whitespace; `None` when nil, empty or only whitespace.
    fn trimmed(&self) -> Option<&str> {
        self.raw_text().map(|t| t.trim_matches(|c: char| c.is_ascii_whitespace())).filter(|t| !t.is_empty())
    }
}

fn missing(name: &str) -> OvfError {
    OvfError::Unexpected(format!("missing configuration for '{name}'"))
}

fn malformed(msg: &str, text: &str, pos: u64) -> OvfError {
    let pos = usize::try_from(pos).unwrap_or(usize::MAX).min(text.len());
    let before = &text.as_bytes()[..pos];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = pos - before.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    OvfError::Malformed(format!("{msg}: line {line}, column {column}"))
}

/// A message for a quick-xml error that never quotes document content (a broken document may put password text
/// where a tag name is expected).
fn describe_xml_error(e: &quick_xml::Error) -> String {
    use quick_xml::errors::IllFormedError;
    use quick_xml::Error;
    match e {
        Error::Syntax(s) => s.to_string(),
        Error::IllFormed(IllFormedError::MismatchedEndTag { .. }) => "mismatched end tag".into(),
        Error::IllFormed(IllFormedError::UnmatchedEndTag(_)) => "end tag without a start tag".into(),
        Error::IllFormed(IllFormedError::MissingEndTag(_)) => "missing end tag".into(),
        Error::IllFormed(IllFormedError::MissingDeclVersion(_)) => "XML declaration without a version".into(),
        Error::IllFormed(other) => other.to_string(),
        Error::Encoding(_) => "invalid UTF-8".into(),
        Error::InvalidAttr(_) => "invalid attribute".into(),
        Error::Escape(_) => "invalid character or entity reference".into(),
        Error::Namespace(_) => "invalid namespace declaration".into(),
        Error::Io(_) => "read error".into(),
    }
}

fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes)
}

/// Parse the document into a tree of elements named by local name.
fn parse_tree(text: &str) -> Result<Node, OvfError> {
    use quick_xml::events::Event;
    use quick_xml::name::{Namespace, ResolveResult};

    let mut reader = quick_xml::NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    loop {
        let event =
            reader.read_event().map_err(|e| malformed(&describe_xml_error(&e), text, reader.error_position()))?;
        let here = reader.buffer_position();
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if root.is_some() {
                    return Err(malformed("content after the root element", text, here));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed(&format!("elements nested deeper than {MAX_DEPTH} levels"), text, here));
                }
                let mut nil = false;
                for attr in e.attributes() {
                    let attr = attr.map_err(|_| malformed("invalid attribute", text, here))?;
                    if let (ResolveResult::Bound(Namespace(XSI_NS)), local) = reader.resolve_attribute(attr.key) {
                        if local.as_ref() == b"nil" {
                            let value = attr
                                .unescape_value()
                                .map_err(|_| malformed("invalid character or entity reference", text, here))?;
                            nil = matches!(value.trim_matches(|c: char| c.is_ascii_whitespace()), "true" | "1");
                        }
                    }
                }
                let name = std::str::from_utf8(e.local_name().into_inner())
                    .map_err(|_| malformed("invalid UTF-8", text, here))?
                    .to_string();
                let node = Node { name, nil, text: String::new(), children: Vec::new() };
                if matches!(event, Event::Start(_)) {
                    stack.push(node);
                } else {
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => root = Some(node),
                    }
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| malformed("end tag without a start tag", text, here))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content().map_err(|_| malformed("invalid UTF-8", text, here))?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&s),
                    None if s.chars().all(|c| c.is_ascii_whitespace()) => {}
                    None => return Err(malformed("text outside the root element", text, here)),
                }
            }
            Event::CData(c) => {
                let s = c.xml10_content().map_err(|_| malformed("invalid UTF-8", text, here))?;
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&s),
                    None => return Err(malformed("CDATA outside the root element", text, here)),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => Some(c.to_string()),
                        _ => return Err(malformed("invalid character reference", text, here)),
                    }
                } else {
                    let name = r.decode().map_err(|_| malformed("invalid UTF-8", text, here))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_string)
                };
                let Some(resolved) = resolved else {
                    return Err(malformed("undefined entity reference", text, here));
                };
                match stack.last_mut() {
                    Some(node) => node.text.push_str(&resolved),
                    None => return Err(malformed("reference outside the root element", text, here)),
                }
            }
            Event::DocType(_) => return Err(malformed("DTDs are not allowed", text, here)),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => {
                if !stack.is_empty() {
                    return Err(malformed("unexpected end of document (unclosed element)", text, here));
                }
                return root.ok_or_else(|| malformed("no root element", text, here));
            }
        }
    }
}

/// At most this many characters of a bad value are quoted in a warning.
fn quote_value(value: &str) -> String {
    let mut out: String = value.chars().take(64).collect();
    if out.len() < value.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// `true`/`false` (any case) and `1`/`0`; `None` for anything else.
fn parse_bool_text(value: &str) -> Option<bool> {
    if value.eq_ignore_ascii_case("true") || value == "1" {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") || value == "0" {
        Some(false)
    } else {
        None
    }
}

/// An optional boolean: absent/empty/nil → `None`; invalid → warning and `None`.
fn opt_bool(node: Option<&Node>, name: &str, default_note: &str, warnings: &mut Vec<String>) -> Option<bool> {
    let value = node?.trimmed()?;
    let parsed = parse_bool_text(value);
    if parsed.is_none() {
        warnings.push(format!("{name}: {} is not a boolean; using {default_note}", quote_value(value)));
    }
    parsed
}

fn bool_or(node: Option<&Node>, name: &str, default: bool, warnings: &mut Vec<String>) -> bool {
    opt_bool(node, name, &format!("the default ({default})"), warnings).unwrap_or(default)
}

fn decode_custom_data(node: &Node, warnings: &mut Vec<String>) -> Option<CustomData> {
    use base64::Engine as _;
    let given = node.raw_text()?;
    let compact: String = given.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return None;
    }
    let compact = Secret::new(compact.into_bytes());
    match base64::engine::general_purpose::STANDARD.decode(compact.expose()) {
        Ok(bytes) => {
            if bytes.len() > MAX_CUSTOM_DATA_BYTES {
                warnings.push(format!(
                    "CustomData: {} bytes decoded, more than the platform limit of {MAX_CUSTOM_DATA_BYTES}",
                    bytes.len()
                ));
            }
            Some(CustomData::Decoded(Secret::new(bytes)))
        }
        Err(_) => {
            warnings.push(format!(
                "CustomData: not valid base64 ({} characters); using the text as given",
                given.chars().count()
            ));
            Some(CustomData::Raw(Secret::new(given.as_bytes().to_vec())))
        }
    }
}

fn upper_fingerprint(node: Option<&Node>) -> Option<String> {
    node.and_then(Node::trimmed).map(str::to_ascii_uppercase)
}

fn trimmed_string(node: Option<&Node>) -> Option<String> {
    node.and_then(Node::trimmed).map(str::to_string)
}

fn parse_ssh(linux: &Node, env: &mut Environment) -> Result<(), OvfError> {
    let Some(ssh) = linux.single("SSH")? else { return Ok(()) };
    if let Some(keys) = ssh.single("PublicKeys")? {
        for (i, key) in keys.named("PublicKey").enumerate() {
            let public_key = PublicKey {
                fingerprint: upper_fingerprint(key.single("Fingerprint")?),
                path: trimmed_string(key.single("Path")?),
                value: trimmed_string(key.single("Value")?),
            };
            if public_key.fingerprint.is_none() && public_key.value.is_none() {
                env.warnings.push(format!("PublicKey #{} has neither Fingerprint nor Value; skipped", i + 1));
                continue;
            }
            env.public_keys.push(public_key);
        }
    }
    if let Some(pairs) = ssh.single("KeyPairs")? {
        for (i, pair) in pairs.named("KeyPair").enumerate() {
            let path = trimmed_string(pair.single("Path")?);
            match upper_fingerprint(pair.single("Fingerprint")?) {
                Some(fingerprint) => env.key_pairs.push(KeyPair { fingerprint, path }),
                None => env.warnings.push(format!("KeyPair #{} has no Fingerprint; skipped", i + 1)),
            }
        }
    }
    Ok(())
}

fn parse_linux_set(linux: &Node, env: &mut Environment) -> Result<(), OvfError> {
    let _ = linux.single("ConfigurationSetType")?;
    env.hostname = trimmed_string(linux.single("HostName")?).ok_or_else(|| missing("HostName"))?;
    env.username = trimmed_string(linux.single("UserName")?);
    if let Some(password) = linux.single("UserPassword")?.and_then(Node::raw_text) {
        let chars = password.chars().count();
        if chars > MAX_PASSWORD_CHARS {
            return Err(OvfError::PasswordLength(chars));
        }
        if password != REDACTED {
            env.password = Some(Secret::new(password.as_bytes().to_vec()));
        }
    }
    env.disable_ssh_password_authentication = opt_bool(
        linux.single("DisableSshPasswordAuthentication")?,
        "DisableSshPasswordAuthentication",
        "the platform default",
        &mut env.warnings,
    );
    parse_ssh(linux, env)?;
    if let Some(custom) = linux.single("CustomData")? {
        env.custom_data = decode_custom_data(custom, &mut env.warnings);
    }
    Ok(())
}

fn parse_platform_settings(settings: &Node, env: &mut Environment) -> Result<(), OvfError> {
    let w = &mut env.warnings;
    env.provision_guest_agent = bool_or(settings.single("ProvisionGuestAgent")?, "ProvisionGuestAgent", true, w);
    env.preprovisioned_vm = bool_or(settings.single("PreprovisionedVm")?, "PreprovisionedVm", false, w);
    let vm_type = settings.single_by("PreprovisionedVMType", |n| n.eq_ignore_ascii_case("PreprovisionedVMType"))?;
    env.preprovisioned_vm_type = trimmed_string(vm_type);
    if let Some(t) = &env.preprovisioned_vm_type {
        if !["Running", "Savable", "PreprovisionedOSDisk"].iter().any(|k| k.eq_ignore_ascii_case(t)) {
            w.push(format!("PreprovisionedVMType: unknown value {}", quote_value(t)));
        }
    }
    env.provision_guest_proxy_agent =
        bool_or(settings.single("ProvisionGuestProxyAgent")?, "ProvisionGuestProxyAgent", false, w);
    Ok(())
}

/// Parse `ovf-env.xml` bytes (UTF-8, optional BOM).
pub fn parse(bytes: &[u8]) -> Result<Environment, OvfError> {
    let text = std::str::from_utf8(strip_bom(bytes))
        .map_err(|e| OvfError::Malformed(format!("not valid UTF-8 (invalid byte at offset {})", e.valid_up_to())))?;
    let root = parse_tree(text)?;
    if root.name != "Environment" {
        return Err(missing("Environment"));
    }
    let mut env = Environment { provision_guest_agent: true, ..Environment::default() };

    let provisioning = root.required("ProvisioningSection")?;
    match provisioning.single("Version")?.and_then(Node::trimmed) {
        None => env.warnings.push("ProvisioningSection has no Version".into()),
        Some(v) if v > "1.0" => {
            env.warnings.push(format!("ProvisioningSection Version {} is newer than 1.0", quote_value(v)))
        }
        Some(_) => {}
    }
    let Some(linux) = provisioning.single("LinuxProvisioningConfigurationSet")? else {
        if provisioning.named("WindowsProvisioningConfigurationSet").next().is_some() {
            return Err(OvfError::Unexpected(
                "missing configuration for 'LinuxProvisioningConfigurationSet' (found 'WindowsProvisioningConfigurationSet': a Windows configuration for a Linux image)".into(),
            ));
        }
        return Err(missing("LinuxProvisioningConfigurationSet"));
    };
    parse_linux_set(linux, &mut env)?;

    let platform = root.required("PlatformSettingsSection")?;
    let settings = platform.required("PlatformSettings")?;
    parse_platform_settings(settings, &mut env)?;
    Ok(env)
}

/// Byte ranges (into `text`) of the content of every element whose local name contains `UserPassword`; `None`
/// when the document is not well-formed.
fn password_ranges(text: &str) -> Option<Vec<std::ops::Range<usize>>> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    // (depth of the open password element, where its content starts)
    let mut open: Option<(usize, usize)> = None;
    let mut ranges = Vec::new();
    loop {
        let before = usize::try_from(reader.buffer_position()).ok()?;
        let event = reader.read_event().ok()?;
        let after = usize::try_from(reader.buffer_position()).ok()?;
        match event {
            Event::Start(e) => {
                depth += 1;
                if open.is_none() && contains(e.local_name().as_ref(), b"UserPassword") {
                    open = Some((depth, after));
                }
            }
            Event::End(_) => {
                if let Some((d, start)) = open {
                    if d == depth {
                        ranges.push(start..before);
                        open = None;
                    }
                }
                depth = depth.checked_sub(1)?;
            }
            Event::Eof => {
                return (depth == 0 && open.is_none()).then_some(ranges);
            }
            _ => {}
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle, 0).is_some()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Byte-level redaction for documents the reader rejects: the content after every `<…UserPassword…>` start tag up
/// to the next `</…UserPassword…>` end tag is replaced; when no end tag follows, everything after the start tag
/// is dropped. Errs on the side of removing too much.
fn redact_fallback(bytes: &[u8]) -> Vec<u8> {
    const NAME: &[u8] = b"UserPassword";
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0; // bytes[..copied] are already in `out`
    let mut search = 0;
    while let Some(hit) = find(bytes, NAME, search) {
        search = hit + NAME.len();
        let Some(lt) = bytes[..hit].iter().rposition(|&b| b == b'<') else { continue };
        let tag_head = &bytes[lt + 1..hit];
        if lt < copied || tag_head.first() == Some(&b'/') || tag_head.iter().any(|&b| b == b'>') {
            continue; // an end tag, text, or a tag already handled
        }
        let Some(gt) = find(bytes, b">", search) else {
            // unterminated start tag: drop it and everything after
            out.extend_from_slice(&bytes[copied..lt]);
            return out;
        };
        if bytes[gt - 1] == b'/' {
            search = gt + 1; // <UserPassword/>: no content
            continue;
        }
        let content = gt + 1;
        out.extend_from_slice(&bytes[copied..content]);
        out.extend_from_slice(REDACTED.as_bytes());
        // the next end tag whose name contains UserPassword
        let mut end = None;
        let mut from = content;
        while let Some(close) = find(bytes, b"</", from) {
            let tag_end = find(bytes, b">", close).unwrap_or(bytes.len());
            if contains(&bytes[close..tag_end], NAME) {
                end = Some(close);
                break;
            }
            from = close + 2;
        }
        let Some(end) = end else { return out };
        copied = end;
        search = end;
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

/// The same document with the text of every `*UserPassword*` element replaced by `REDACTED`; everything else
/// byte-for-byte unchanged. `<UserPassword/>` stays as it is. A document that cannot be parsed is redacted by a
/// byte-level fallback that may remove more than the password, never less.
pub fn redact(bytes: &[u8]) -> Vec<u8> {
    let offset = if bytes.starts_with(UTF8_BOM) { UTF8_BOM.len() } else { 0 };
    let ranges = std::str::from_utf8(&bytes[offset..]).ok().and_then(password_ranges);
    let Some(ranges) = ranges else { return redact_fallback(bytes) };
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0;
    for r in ranges {
        out.extend_from_slice(&bytes[copied..offset + r.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied = offset + r.end;
    }
    out.extend_from_slice(&bytes[copied..]);
    out
}

impl Environment {
    /// The JSON printed by `azprov inspect ovf|media` (keys fixed by the core issue; never the password).
    pub fn inspect_json(&self) -> serde_json::Value {
        serde_json::json!({
            "hostname": self.hostname,
            "username": self.username,
            "password_provided": self.password.is_some(),
            "disable_ssh_password_authentication": self.disable_ssh_password_authentication,
            "public_keys": self.public_keys,
            "custom_data_len": self.custom_data.as_ref().map(|c| c.len()).unwrap_or(0),
            "provision_guest_agent": self.provision_guest_agent,
            "preprovisioned_vm": self.preprovisioned_vm,
            "preprovisioned_vm_type": self.preprovisioned_vm_type,
        })
    }
}
