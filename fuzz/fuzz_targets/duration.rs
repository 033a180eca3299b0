//! Go duration strings (spec.duration, policy.maxDuration, flags).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_ca_issuer::fuzzing::duration(data);
});
