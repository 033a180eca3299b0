//! What a backend checks of a certificate a CA service handed back, before anything of it is
//! written: it is for the request's key, it chains to the very CA the issuer checked, and —
//! for a backend whose service decides the extensions itself (Vault) — it says what the plan
//! says. Pure; each backend words the failure for its own users (`check` names which check).
//!
//! The local CA backend needs none of this: it builds the certificate itself and checks its
//! own signature (`pki::sign`).

use jiff::{SignedDuration, Timestamp};

use super::IssuedChain;
use crate::pki::csr::SubjectAltName;
use crate::pki::policy::SigningPlan;
use crate::pki::{Certificate, CertificateSigningRequest};

/// Why a returned certificate is not the one the request asked for: the check that failed and
/// what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unbound {
    pub check: &'static str,
    pub detail: String,
}

fn unbound(check: &'static str, detail: String) -> Unbound {
    Unbound { check, detail }
}

/// Whether the chain the service returned is the CA's own, or what differs.
#[derive(Debug, PartialEq, Eq)]
pub enum ChainVerdict {
    Bound(IssuedChain),
    /// The chain does not end at the CA as last read: maybe that read is stale (the CA's
    /// certificate was renewed); the caller may read the CA again and judge once more.
    ForeignChain(String),
}

/// The certificate's public key is the CSR's, byte for byte (SubjectPublicKeyInfo DER).
/// `label` names the certificate in the message (an ARN, a serial).
pub fn check_key(label: &str, csr_public_key: &[u8], certificate: &Certificate) -> Result<(), Unbound> {
    if certificate.public_key_info() == csr_public_key {
        return Ok(());
    }
    Err(unbound(
        "public key",
        format!(
            "the certificate {label} ({}) is for a different key than the request's CSR",
            certificate.subject()
        ),
    ))
}

/// `chain` (the issuing CA up to the root, as the service returned it) must be exactly
/// `expected` (the CA's own certificate, then its chain up to its root, as the issuer read
/// them), end at a self-signed root, and every link must verify. The root goes to
/// `status.ca`, the certificate and any intermediates to `status.certificate`.
pub fn check_chain(
    label: &str,
    certificate: Certificate,
    chain: Vec<Certificate>,
    expected: &[Certificate],
) -> Result<ChainVerdict, Unbound> {
    let (Some(ca), Some(root)) = (expected.first(), expected.last()) else {
        return Err(unbound("chain", "the issuer's CA chain is empty".to_string()));
    };
    let same = chain.len() == expected.len() && chain.iter().zip(expected).all(|(got, want)| got == want);
    if !same {
        return Ok(ChainVerdict::ForeignChain(format!(
            "the chain returned for {label} does not end at the CA's own certificate {} and root {} (SHA-256 {})",
            ca.subject(),
            root.subject(),
            root.fingerprint()
        )));
    }
    if !root.is_self_signed() {
        return Err(unbound(
            "chain",
            format!("the CA's chain ends in {}, which is not a root", root.subject()),
        ));
    }
    let mut full = vec![certificate];
    full.extend(chain);
    for pair in full.windows(2) {
        if !pair[0].is_signed_by(&pair[1]) {
            return Err(unbound(
                "chain",
                format!("{} is not signed by {}", pair[0].subject(), pair[1].subject()),
            ));
        }
    }
    let root = full.pop().unwrap_or_else(|| root.clone());
    if full.is_empty() {
        // Only possible if the service returned the root as the certificate itself: never ours.
        return Err(unbound("chain", format!("{label} is the CA's root itself")));
    }
    Ok(ChainVerdict::Bound(IssuedChain { chain: full, root }))
}

/// How much later than planned a certificate may end: the service's clock, not ours, turns a
/// TTL into notAfter. The same allowance the plan gives clocks when it backdates notBefore.
pub const CLOCK_SKEW: SignedDuration = SignedDuration::from_mins(5);

/// What the certificate says matches the plan, for a service that builds the certificate
/// itself from parameters: BasicConstraints and pathLen, exactly the CSR's subject alternative
/// names, a KeyUsage that allows signing certificates and no ExtendedKeyUsage that excludes
/// serverAuth (istiod's Go verification refuses such an intermediate), and a notAfter no later
/// than planned (give or take [`CLOCK_SKEW`]) nor than the signing CA's.
///
/// A notAfter *earlier* than planned passes: the service capped the lifetime (Vault's mount
/// `max_lease_ttl`), which is safe, and the caller says so.
pub fn check_plan(
    certificate: &Certificate,
    csr: &CertificateSigningRequest,
    plan: &SigningPlan,
    ca_not_after: Timestamp,
) -> Result<(), Unbound> {
    let constraints = certificate.ca_constraints();
    let got = match constraints {
        Some(c) if c.is_ca => match c.path_len {
            Some(n) => format!("CA:TRUE, pathlen:{n}"),
            None => "CA:TRUE without a pathLen".to_string(),
        },
        _ => "no CA:TRUE".to_string(),
    };
    let bc_ok = match plan.ca_path_len {
        Some(n) => constraints.is_some_and(|c| c.is_ca && c.path_len == Some(u32::from(n))),
        None => !constraints.is_some_and(|c| c.is_ca),
    };
    if !bc_ok {
        let wanted = match plan.ca_path_len {
            Some(n) => format!("CA:TRUE, pathlen:{n}"),
            None => "no CA:TRUE".to_string(),
        };
        return Err(unbound(
            "BasicConstraints",
            format!("the certificate carries {got}; the plan says {wanted}"),
        ));
    }
    let mut wanted: Vec<String> = csr.sans.iter().map(describe_san).collect();
    let mut carried: Vec<String> = certificate.subject_alt_names().iter().map(describe_san).collect();
    wanted.sort();
    carried.sort();
    if wanted != carried {
        return Err(unbound(
            "subject alternative names",
            format!(
                "the certificate names [{}], the CSR [{}]",
                carried.join(", "),
                wanted.join(", ")
            ),
        ));
    }
    if plan.ca_path_len.is_some() && certificate.key_usage_cert_sign() == Some(false) {
        return Err(unbound(
            "KeyUsage",
            "the certificate's KeyUsage does not allow keyCertSign".to_string(),
        ));
    }
    if certificate.eku_excludes_server_auth() {
        return Err(unbound(
            "ExtendedKeyUsage",
            "the certificate's ExtendedKeyUsage excludes serverAuth, which istiod's chain check refuses".to_string(),
        ));
    }
    let not_after = certificate.not_after();
    if not_after > ca_not_after {
        return Err(unbound(
            "notAfter",
            format!("the certificate is valid until {not_after}, after its CA's end {ca_not_after}"),
        ));
    }
    if plan
        .not_after
        .checked_add(CLOCK_SKEW)
        .is_ok_and(|latest| not_after > latest)
    {
        return Err(unbound(
            "notAfter",
            format!(
                "the certificate is valid until {not_after}, later than the planned {}",
                plan.not_after
            ),
        ));
    }
    Ok(())
}

fn describe_san(san: &SubjectAltName) -> String {
    match san {
        SubjectAltName::Dns(name) => format!("DNS:{name}"),
        SubjectAltName::Uri(uri) => format!("URI:{uri}"),
        SubjectAltName::Ip(ip) => format!("IP:{ip}"),
        SubjectAltName::Email(email) => format!("email:{email}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::pki::SigningKey;
    use crate::pki::sign::tests::istiod_csr;
    use crate::pki::sign::{CaSigner, self_signed_root, sign_csr};

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn root() -> (Certificate, SigningKey) {
        self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1)).unwrap()
    }

    fn plan(path_len: Option<u8>, hours: i64) -> SigningPlan {
        SigningPlan {
            ca_path_len: path_len,
            not_before: now() - SignedDuration::from_secs(60),
            not_after: now() + SignedDuration::from_hours(hours),
            requested: std::time::Duration::from_secs(3600 * hours as u64),
            clamped: None,
            name_constraints: None,
        }
    }

    fn sign(csr: &CertificateSigningRequest, plan: &SigningPlan, ca: &(Certificate, SigningKey)) -> Certificate {
        sign_csr(
            csr,
            plan,
            &CaSigner {
                certificate: &ca.0,
                key: &ca.1,
            },
        )
        .unwrap()
    }

    #[test]
    fn a_certificate_as_planned_passes_and_each_difference_is_named() {
        let ca = root();
        let csr = istiod_csr();
        let planned = plan(Some(0), 24);
        let ca_end = ca.0.not_after();
        let good = sign(&csr, &planned, &ca);
        assert_eq!(check_plan(&good, &csr, &planned, ca_end), Ok(()));
        // A shorter lifetime (the service capped it) passes.
        assert_eq!(
            check_plan(&sign(&csr, &plan(Some(0), 1), &ca), &csr, &planned, ca_end),
            Ok(())
        );
        // (case, certificate, plan, CA end, check expected to fail)
        let cases = [
            (
                "pathLen",
                sign(&csr, &plan(Some(1), 24), &ca),
                planned.clone(),
                ca_end,
                "BasicConstraints",
            ),
            ("leaf", good.clone(), plan(None, 24), ca_end, "BasicConstraints"),
            (
                "longer",
                sign(&csr, &plan(Some(0), 48), &ca),
                planned.clone(),
                ca_end,
                "notAfter",
            ),
            (
                "beyond the CA",
                good.clone(),
                planned.clone(),
                now() + SignedDuration::from_hours(2),
                "notAfter",
            ),
        ];
        for (name, certificate, plan, ca_end, check) in cases {
            let err = check_plan(&certificate, &csr, &plan, ca_end).unwrap_err();
            assert_eq!(err.check, check, "{name}: {err:?}");
        }
        // Another CSR's names: the SAN check says what each side names.
        let other = crate::pki::sign::tests::csr_with_uris(&["spiffe://other.example/ns/istio-system/sa/istiod"]);
        let err = check_plan(&good, &other, &planned, ca_end).unwrap_err();
        assert_eq!(err.check, "subject alternative names");
        assert!(err.detail.contains("spiffe://other.example"), "{}", err.detail);
    }

    #[test]
    fn a_chain_other_than_the_cas_own_is_foreign_and_broken_links_are_refused() {
        let (ours, theirs) = (root(), root());
        let csr = istiod_csr();
        let planned = plan(Some(0), 24);
        let cert = sign(&csr, &planned, &ours);
        let bound = check_chain(
            "serial 1",
            cert.clone(),
            vec![ours.0.clone()],
            std::slice::from_ref(&ours.0),
        );
        assert_eq!(
            bound,
            Ok(ChainVerdict::Bound(IssuedChain {
                chain: vec![cert.clone()],
                root: ours.0.clone()
            }))
        );
        let foreign = check_chain(
            "serial 1",
            cert.clone(),
            vec![theirs.0.clone()],
            std::slice::from_ref(&ours.0),
        );
        assert!(matches!(foreign, Ok(ChainVerdict::ForeignChain(_))), "{foreign:?}");
        let theirs_signed = sign(&csr, &planned, &theirs);
        let err = check_chain(
            "serial 2",
            theirs_signed,
            vec![ours.0.clone()],
            std::slice::from_ref(&ours.0),
        )
        .unwrap_err();
        assert_eq!(err.check, "chain");
        assert!(err.detail.contains("is not signed by"), "{}", err.detail);
        let err = check_key("serial 2", &istiod_csr().public_key_info, &cert).unwrap_err();
        assert_eq!(err.check, "public key");
    }
}
