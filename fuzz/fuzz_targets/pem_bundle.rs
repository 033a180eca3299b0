//! PEM certificate bundles: tls.crt, ca.crt, root-cert.pem, cert-chain.pem, a PCA chain.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mesh_ca_issuer::fuzzing::pem_bundle(data);
});
