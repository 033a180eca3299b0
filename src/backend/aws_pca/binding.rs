//! A PCA certificate is bound to its request before anything of it is written.
//!
//! The certificate ARN the controller persisted on a request (annotation
//! [`super::CERTIFICATE_ARN_ANNOTATION`]) is metadata anyone who may edit the request can set.
//! So before `status.certificate` is written from it, three things must hold, each checked here
//! without IO:
//! 1. the ARN belongs to the issuer's CA (checked before `GetCertificate` is even called, so the
//!    controller's credentials never fetch another CA's certificate for a request);
//! 2. the certificate's public key is the CSR's, byte for byte (SubjectPublicKeyInfo DER);
//! 3. the chain PCA returned ends at the CA's own certificate and root, as
//!    `GetCertificateAuthorityCertificate` describes them, and every link verifies.
//!
//! Any failure is permanent (the request is `Failed`, naming the check), and nothing is written.

use super::arn::ca_of_certificate_arn;
use super::describe::CaDescription;
use super::reason;
use crate::backend::{BackendError, binding};
use crate::pki::Certificate;

/// Why a stored certificate is not this request's.
fn not_bound(check: &str, detail: String) -> BackendError {
    BackendError::permanent(
        reason::CERTIFICATE_NOT_BOUND,
        format!(
            "{check} check failed: {detail}; nothing was written. The ARN came from the request's annotation {}",
            super::CERTIFICATE_ARN_ANNOTATION
        ),
    )
}

/// Check 1: the certificate ARN names a certificate of `ca_arn`, exactly.
pub fn check_arn(certificate_arn: &str, ca_arn: &str) -> Result<(), BackendError> {
    match ca_of_certificate_arn(certificate_arn) {
        Some(ca) if ca == ca_arn => Ok(()),
        Some(other) => Err(not_bound(
            "ARN",
            format!("the certificate {certificate_arn} belongs to CA {other}, not to this issuer's CA {ca_arn}"),
        )),
        None => Err(not_bound(
            "ARN",
            format!("{certificate_arn:?} is not the ARN of a certificate issued by a private CA"),
        )),
    }
}

pub use crate::backend::binding::ChainVerdict;

/// Checks 2 and 3 on what `GetCertificate` returned (`certificate`, then `chain`: the issuing
/// CA up to the root), through the checks every backend shares ([`crate::backend::binding`]).
pub fn bind(
    certificate_arn: &str,
    csr_public_key: &[u8],
    certificate: Certificate,
    chain: Vec<Certificate>,
    ca: &CaDescription,
) -> Result<ChainVerdict, BackendError> {
    let failed = |u: binding::Unbound| not_bound(u.check, u.detail);
    binding::check_key(certificate_arn, csr_public_key, &certificate).map_err(failed)?;
    let expected: Vec<Certificate> = std::iter::once(ca.certificate.clone())
        .chain(ca.chain.iter().cloned())
        .collect();
    binding::check_chain(certificate_arn, certificate, chain, &expected).map_err(failed)
}

/// A chain that still does not end at the CA after a fresh description: permanent.
pub fn foreign_chain(detail: String) -> BackendError {
    not_bound("chain", detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::backend::IssuedChain;
    use crate::pki::policy::SigningPlan;
    use crate::pki::sign::tests::istiod_csr;
    use crate::pki::sign::{CaSigner, self_signed_root, sign_csr};
    use crate::pki::{CertificateSigningRequest, SigningKey};
    use jiff::{SignedDuration, Timestamp};

    const CA: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/aaaa";
    const OTHER_CA: &str = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/bbbb";

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn root() -> (Certificate, SigningKey) {
        self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1)).unwrap()
    }

    fn description(root: &Certificate) -> CaDescription {
        CaDescription {
            key_algorithm: None,
            not_before: root.not_before(),
            not_after: root.not_after(),
            short_lived: false,
            certificate: root.clone(),
            chain: Vec::new(),
        }
    }

    fn issue(csr: &CertificateSigningRequest, root: &(Certificate, SigningKey)) -> Certificate {
        let plan = SigningPlan {
            ca_path_len: Some(0),
            not_before: now() - SignedDuration::from_secs(60),
            not_after: now() + SignedDuration::from_hours(24),
            requested: std::time::Duration::from_secs(86_400),
            clamped: None,
            name_constraints: None,
        };
        sign_csr(
            csr,
            &plan,
            &CaSigner {
                certificate: &root.0,
                key: &root.1,
            },
        )
        .unwrap()
    }

    #[test]
    fn an_arn_of_another_ca_is_refused_before_any_call() {
        assert_eq!(check_arn(&format!("{CA}/certificate/1234"), CA), Ok(()));
        let other = check_arn(&format!("{OTHER_CA}/certificate/1234"), CA).unwrap_err();
        assert_eq!(other.kind, crate::backend::FailureKind::Permanent);
        assert!(other.message.starts_with("ARN check failed"), "{}", other.message);
        assert!(
            other.message.contains("belongs to CA") && other.message.contains(OTHER_CA),
            "{}",
            other.message
        );
        // A prefix is not enough: ".../aaaa-evil" is another CA.
        assert!(check_arn(&format!("{CA}-evil/certificate/1"), CA).is_err());
        assert!(check_arn("not an arn", CA).is_err());
    }

    #[test]
    fn a_certificate_for_the_requests_key_and_the_cas_chain_is_bound() {
        let ca = root();
        let csr = istiod_csr();
        let cert = issue(&csr, &ca);
        let verdict = bind(
            "arn",
            &csr.public_key_info,
            cert.clone(),
            vec![ca.0.clone()],
            &description(&ca.0),
        )
        .unwrap();
        assert_eq!(
            verdict,
            ChainVerdict::Bound(IssuedChain {
                chain: vec![cert],
                root: ca.0.clone()
            })
        );
    }

    #[test]
    fn a_certificate_for_another_key_is_refused() {
        let ca = root();
        let (mine, theirs) = (istiod_csr(), istiod_csr());
        let cert = issue(&theirs, &ca);
        let err = bind(
            "arn",
            &mine.public_key_info,
            cert,
            vec![ca.0.clone()],
            &description(&ca.0),
        )
        .unwrap_err();
        assert_eq!(err.kind, crate::backend::FailureKind::Permanent);
        assert!(err.message.starts_with("public key check failed"), "{}", err.message);
    }

    #[test]
    fn a_chain_that_ends_elsewhere_is_refused() {
        let (ours, theirs) = (root(), root());
        let csr = istiod_csr();
        // Issued by another root, and returned with that root: not the described CA.
        let cert = issue(&csr, &theirs);
        let verdict = bind(
            "arn",
            &csr.public_key_info,
            cert.clone(),
            vec![theirs.0.clone()],
            &description(&ours.0),
        )
        .unwrap();
        assert!(
            matches!(verdict, ChainVerdict::ForeignChain(ref m) if m.contains("does not end at the CA's own certificate")),
            "{verdict:?}"
        );
        // Returned with our root, but not signed by it: a link fails.
        let err = bind(
            "arn",
            &csr.public_key_info,
            cert,
            vec![ours.0.clone()],
            &description(&ours.0),
        )
        .unwrap_err();
        assert!(
            err.message.starts_with("chain check failed") && err.message.contains("is not signed by"),
            "{}",
            err.message
        );
        let permanent = foreign_chain("x".into());
        assert_eq!(permanent.kind, crate::backend::FailureKind::Permanent);
    }
}
