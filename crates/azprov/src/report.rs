//! The failure-reporting contract (platform.md §6): public reason strings, the encoded description, and what is
//! written to KVP and the health report.

use crate::timeutil;

/// A provisioning failure: a public reason string (platform.md §6.2, lower case) plus supporting `key=value` data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: String,
    pub supporting: Vec<(String, String)>,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Self {
        Failure { reason: reason.into(), supporting: Vec::new() }
    }
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.supporting.push((key.to_string(), value.to_string()));
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)?;
        for (k, v) in &self.supporting {
            write!(f, " {k}={v}")?;
        }
        Ok(())
    }
}

/// Context every report carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportContext {
    pub vm_id: String,
    pub pps_type: String,
    /// Microseconds since the Unix epoch.
    pub timestamp_us: i64,
}

/// One CSV field with `|` as delimiter and `'` as quote char, quoted only when needed.
fn csv_field(field: &str) -> String {
    if field.contains(['|', '\'', '\r', '\n']) {
        format!("'{}'", field.replace('\'', "''"))
    } else {
        field.to_string()
    }
}

fn encode(fields: &[(String, String)]) -> String {
    fields.iter().map(|(k, v)| csv_field(&format!("{k}={v}"))).collect::<Vec<_>>().join("|")
}

/// `result=error|reason=…|agent=…|<supporting>|pps_type=…|vm_id=…|timestamp=…|documentation_url=…`
pub fn encode_failure(failure: &Failure, ctx: &ReportContext) -> String {
    let mut fields = vec![
        ("result".to_string(), "error".to_string()),
        ("reason".to_string(), failure.reason.clone()),
        ("agent".to_string(), crate::AGENT.to_string()),
    ];
    fields.extend(failure.supporting.iter().cloned());
    fields.push(("pps_type".into(), ctx.pps_type.clone()));
    fields.push(("vm_id".into(), ctx.vm_id.clone()));
    fields.push(("timestamp".into(), timeutil::iso8601_utc(ctx.timestamp_us)));
    fields.push(("documentation_url".into(), "https://aka.ms/linuxprovisioningerror".into()));
    encode(&fields)
}

/// `result=success|agent=…|pps_type=…|vm_id=…|timestamp=…` (KVP only; Ready on the wire has no description).
pub fn encode_success(ctx: &ReportContext) -> String {
    encode(&[
        ("result".into(), "success".into()),
        ("agent".into(), crate::AGENT.into()),
        ("pps_type".into(), ctx.pps_type.clone()),
        ("vm_id".into(), ctx.vm_id.clone()),
        ("timestamp".into(), timeutil::iso8601_utc(ctx.timestamp_us)),
    ])
}

/// The KVP copy of a failure, at most `max` bytes: supporting data is dropped first, then the text is cut on a char
/// boundary.
pub fn encode_failure_capped(failure: &Failure, ctx: &ReportContext, max: usize) -> String {
    let mut f = failure.clone();
    loop {
        let s = encode_failure(&f, ctx);
        if s.len() <= max {
            return s;
        }
        if f.supporting.pop().is_none() {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            return s[..cut].to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ReportContext {
        ReportContext {
            vm_id: "91267c52-9f02-4cfe-b1f4-a4da7ebac2cf".into(),
            pps_type: "None".into(),
            timestamp_us: 1_795_713_601_123_456,
        }
    }

    #[test]
    fn failure_record_layout() {
        let f = Failure::new("http error 404 querying IMDS").with("http_code", 404);
        let s = encode_failure(&f, &ctx());
        assert!(s.starts_with("result=error|reason=http error 404 querying IMDS|agent=azprov/"), "{s}");
        assert!(s.contains("|http_code=404|pps_type=None|vm_id=91267c52-9f02-4cfe-b1f4-a4da7ebac2cf|timestamp="));
        assert!(s.ends_with("|documentation_url=https://aka.ms/linuxprovisioningerror"));
    }

    #[test]
    fn quoting() {
        assert_eq!(csv_field("reason=foo'bar"), "'reason=foo''bar'");
        assert_eq!(csv_field("x=a|b"), "'x=a|b'");
        assert_eq!(csv_field("x=a\nb"), "'x=a\nb'");
        assert_eq!(csv_field("x=plain"), "x=plain");
    }

    #[test]
    fn capped() {
        let f = Failure::new("r").with("big", "x".repeat(2000));
        let s = encode_failure_capped(&f, &ctx(), 1022);
        assert!(s.len() <= 1022);
        assert!(!s.contains("big="));
        assert!(s.contains("documentation_url"));
    }

    #[test]
    fn success_record() {
        let s = encode_success(&ctx());
        assert!(s.starts_with("result=success|agent=azprov/"));
        assert!(s.contains("|pps_type=None|vm_id=91267c52"));
    }
}
