#![no_main]
//! OVF parser and redaction on arbitrary bytes: no panic; a redacted document never parses to a password.
use azprov::platform::ovf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ovf::parse(data);
    let red = ovf::redact(data);
    if let Ok(env) = ovf::parse(&red) {
        assert!(env.password.is_none(), "redacted document still carries a password");
    }
});
