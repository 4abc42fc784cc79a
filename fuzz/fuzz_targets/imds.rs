#![no_main]
//! IMDS instance-document parser on arbitrary bytes: no panic.
use azprov::platform::imds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = imds::parse_instance(data, "2021-08-01");
});
