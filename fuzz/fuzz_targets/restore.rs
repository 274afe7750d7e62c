#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| backmesh_core::fuzz::restore(data));
