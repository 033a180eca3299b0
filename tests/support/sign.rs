//! Certificates signed with this crate's own `pki::sign` by a CA a test holds, outside any
//! controller: sources no issuer would produce (expired, not a CA, under another root) and the
//! seeds the judges and property tests start from. Written once, so each caller says only
//! what its certificate is.

use std::time::Duration;

use jiff::Timestamp;
use mesh_ca_issuer::pki::policy::SigningPlan;
use mesh_ca_issuer::pki::sign::{CaSigner, sign_csr};
use mesh_ca_issuer::pki::{Certificate, CertificateSigningRequest, SigningKey};

/// A plan for a certificate valid from `not_before` to `not_after` (a CA with pathLen 0 when
/// `ca`), `requested` being the duration asked for: not clamped, no name constraints.
pub fn plan(ca: bool, not_before: Timestamp, not_after: Timestamp, requested: Duration) -> SigningPlan {
    SigningPlan {
        ca_path_len: ca.then_some(0),
        not_before,
        not_after,
        requested,
        clamped: None,
        name_constraints: None,
    }
}

/// `csr` signed by `ca` (whose key is `ca_key`) as `plan` says.
pub fn signed(
    csr: &CertificateSigningRequest,
    plan: &SigningPlan,
    ca: &Certificate,
    ca_key: &SigningKey,
) -> Certificate {
    sign_csr(
        csr,
        plan,
        &CaSigner {
            certificate: ca,
            key: ca_key,
        },
    )
    .expect("signing with the test's own CA")
}

/// istiod's intermediate (the CSR cert-manager makes for it, with a new key) signed by `ca`
/// as `plan` says: the certificate and its key's PEM.
pub fn istiod_intermediate(plan: &SigningPlan, ca: &Certificate, ca_key: &SigningKey) -> (Certificate, String) {
    let request = super::cert_manager::IntermediateRequest::istiod("x", "mesh");
    let (key, csr) = super::cert_manager::make_key_and_csr(&request);
    let csr = CertificateSigningRequest::from_pem(csr.as_bytes()).expect("the stand-in's CSR");
    (signed(&csr, plan, ca, ca_key), key)
}
