#![no_main]
//! Goal-state parser on arbitrary bytes: no panic.
use azprov::platform::wireserver;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wireserver::parse_goal_state(data);
});
