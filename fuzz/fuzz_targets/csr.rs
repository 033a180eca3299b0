//! CSR decode and verify: `spec.request` of a CertificateRequest is attacker-supplied bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_ca_issuer::fuzzing::csr(data);
});
