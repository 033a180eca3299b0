//! Reading a cacerts source Secret (tls.crt, tls.key, ca.crt) and planning the bundle from it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_ca_issuer::fuzzing::cacerts_source(data);
});
