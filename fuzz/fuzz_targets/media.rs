#![no_main]
//! UDF and ISO9660 readers on arbitrary images: no panic, bounded work.
use azprov::platform::media::{iso9660, udf, MAX_OVF_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let img = data.to_vec();
    let _ = udf::read_root_file(&img, "ovf-env.xml", MAX_OVF_BYTES);
    let _ = iso9660::read_root_file(&img, "ovf-env.xml", MAX_OVF_BYTES);
});
