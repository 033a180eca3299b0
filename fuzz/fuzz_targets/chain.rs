//! Chain ordering and verification over certificates taken from the input (a PEM bundle:
//! the first certificate is verified, the rest are intermediates and roots).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_ca_issuer::fuzzing::chain(data);
});
