//! Entry points for fuzzing (`fuzz/`, run by `hack/fuzz`) and for the property tests of the
//! normal test run (`tests/parser_properties.rs`): each feeds attacker-shaped bytes to code
//! that reads them — a CertificateRequest's CSR, PEM bundles, certificate chains, a `cacerts`
//! source Secret, Go duration strings — and asserts what must hold for *any* input besides
//! "no panic". Not part of the controller's behaviour; public only so both harnesses share it.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;

use crate::api::issuer::{IssuancePolicy, RootBootstrap};
use crate::duration::{format_go_duration, parse_go_duration};
use crate::istio::cacerts::{self, Target};
use crate::pki::chain::{self, Subject};
use crate::pki::policy::{self, CaLifetime, RequestFacts};
use crate::pki::sign::{CaSigner, self_signed_root, sign_csr};
use crate::pki::{Certificate, CertificateSigningRequest, SigningKey};

/// Separates the parts of one input (certificates of a chain, keys of a Secret).
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// A fixed clock, so a run is reproducible (2027-01-15).
pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Splits `data` at [`SEPARATOR`].
pub fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    parts.push(rest);
    parts
}

/// The CA that signs fuzzed CSRs: made once per process.
fn signing_ca() -> Option<&'static (Certificate, SigningKey)> {
    static CA: OnceLock<Option<(Certificate, SigningKey)>> = OnceLock::new();
    CA.get_or_init(|| self_signed_root(&RootBootstrap::default(), now() - jiff::SignedDuration::from_hours(1)).ok())
        .as_ref()
}

/// A CSR from `spec.request` (PEM, or DER as it is inside): decoding, the issuance policy,
/// and signing. What decodes from PEM decodes the same from its DER; what is signed carries
/// the CSR's subject byte for byte and its key, and chains to the CA.
pub fn csr(data: &[u8]) {
    let _ = CertificateSigningRequest::from_der(data.to_vec());
    let Ok(csr) = CertificateSigningRequest::from_pem(data) else {
        return;
    };
    let again = CertificateSigningRequest::from_der(csr.der().to_vec());
    assert_eq!(again.as_ref(), Ok(&csr), "a CSR decodes the same from its DER");
    let Some((ca_cert, ca_key)) = signing_ca() else {
        return;
    };
    let lifetime = CaLifetime {
        not_before: ca_cert.not_before(),
        not_after: ca_cert.not_after(),
        max_validity: None,
    };
    for is_ca in [Some(true), None] {
        let facts = RequestFacts {
            is_ca,
            duration: Some("2160h"),
        };
        let Ok(plan) = policy::plan(&csr, &facts, &IssuancePolicy::default(), &lifetime, now()) else {
            continue;
        };
        let signer = CaSigner {
            certificate: ca_cert,
            key: ca_key,
        };
        if let Ok(cert) = sign_csr(&csr, &plan, &signer) {
            assert_eq!(
                cert.raw_subject(),
                csr.raw_subject(),
                "the subject is copied byte for byte"
            );
            assert_eq!(cert.public_key_info(), csr.public_key_info, "the key is the CSR's");
            assert!(cert.is_signed_by(ca_cert), "it chains to the CA");
        }
    }
}

/// A PEM certificate bundle: what parses re-encodes to PEM that parses to the same
/// certificates, and every question asked of a certificate has an answer.
pub fn pem_bundle(data: &[u8]) {
    let Ok(certs) = Certificate::parse_pem_bundle(data, "bundle") else {
        return;
    };
    let text: String = certs.iter().map(Certificate::to_pem).collect();
    let again = Certificate::parse_pem_bundle(text.as_bytes(), "bundle");
    assert_eq!(
        again.as_ref(),
        Ok(&certs),
        "re-encoded PEM parses to the same certificates"
    );
    for cert in &certs {
        let _ = (cert.subject(), cert.not_before(), cert.not_after(), cert.fingerprint());
        let _ = (
            cert.ca_constraints(),
            cert.may_sign_certificates(),
            cert.eku_excludes_server_auth(),
        );
        let _ = (
            cert.uri_sans(),
            cert.serial_hex(),
            cert.is_self_signed(),
            cert.summary(),
        );
    }
}

/// Certificates of a chain, DER or PEM, separated by [`SEPARATOR`]: the first is verified
/// with the others as intermediates and roots. An accepted path starts with it, ends in a
/// root, links by signatures, and passes every check again on its own.
pub fn chain(data: &[u8]) {
    let certs: Vec<Certificate> = split(data)
        .into_iter()
        .filter_map(|part| {
            Certificate::from_der(part.to_vec())
                .ok()
                .or_else(|| Certificate::parse_pem_bundle(part, "part").ok()?.into_iter().next())
        })
        .collect();
    let Some((first, others)) = certs.split_first() else {
        return;
    };
    let _ = chain::sub_ca_room(&certs);
    for subject in [Subject::Leaf, Subject::SigningCa] {
        let Ok(path) = chain::verify(first, subject, others, others, now()) else {
            continue;
        };
        let path = &path.certificates;
        assert_eq!(
            path.first(),
            Some(first),
            "the path starts with the verified certificate"
        );
        assert!(others.contains(path.last().unwrap_or(first)), "the path ends in a root");
        for pair in path.windows(2) {
            assert!(pair[0].is_signed_by(&pair[1]), "each link is signed by the next");
        }
        let (intermediates, root) = (&path[1..path.len() - 1], &path[path.len() - 1..]);
        assert!(
            chain::verify(first, subject, intermediates, root, now()).is_ok(),
            "the path found verifies on its own"
        );
    }
}

/// A `cacerts` source Secret: `tls.crt`, `tls.key` and `ca.crt` separated by [`SEPARATOR`]
/// (a missing part is a missing key). A bundle planned from it verifies as istiod would load
/// it, and planning it again over itself changes nothing.
pub fn cacerts_source(data: &[u8]) {
    let mut secret = BTreeMap::new();
    for (key, part) in ["tls.crt", "tls.key", "ca.crt"].into_iter().zip(split(data)) {
        secret.insert(key.to_string(), part.to_vec());
    }
    let Ok(source) = cacerts::read_source(&secret, "Secret fuzz/source") else {
        return;
    };
    let Ok(plan) = cacerts::plan(
        &source,
        &Target::Absent,
        "fuzz",
        &crate::api::istio_cacerts::AdoptExisting::Never,
        now(),
    ) else {
        return;
    };
    assert!(
        cacerts::verify_bundle(&plan.data, now()).is_ok(),
        "a planned bundle verifies"
    );
    let owned = Target::Present {
        data: plan.data.clone(),
        owner: Some("fuzz".into()),
    };
    let again = cacerts::plan(
        &source,
        &owned,
        "fuzz",
        &crate::api::istio_cacerts::AdoptExisting::Never,
        now(),
    );
    assert!(
        again.is_ok_and(|p| !p.changed),
        "planning over its own result changes nothing"
    );
}

/// A Go duration string: what parses, formatted and parsed again, is the same to the second.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = parse_go_duration(text) else {
        return;
    };
    let whole = Duration::from_secs(parsed.as_secs());
    let formatted = format_go_duration(whole);
    assert_eq!(
        parse_go_duration(&formatted),
        Ok(whole),
        "{text:?} → {formatted:?} parses back"
    );
}
