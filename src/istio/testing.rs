//! Test fixtures of the istio decisions, written once: roots and istiod intermediates at a
//! fixed clock, cert-manager's Secret for them, and the objects one reconcile observes.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::cacerts::SourceBundle;
use super::plan::Observed;
use super::secret_data::SecretData;
use crate::api::issuer::RootBootstrap;
use crate::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec};
use crate::pki::sign::{CaSigner, self_signed_root, tests::signed_istiod};
use crate::pki::{Certificate, SigningKey};

pub const HOUR: SignedDuration = SignedDuration::from_hours(1);
pub const DAY: SignedDuration = SignedDuration::from_hours(24);

/// The fixed "now" every fixture is made around.
pub fn t0() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

/// A root valid from a day before t0 for `days`.
pub fn root(days: i64) -> (Certificate, SigningKey) {
    let spec = RootBootstrap {
        duration: format!("{}h", days * 24),
        ..Default::default()
    };
    self_signed_root(&spec, t0() - DAY).unwrap()
}

/// A "root" that is a CA certificate signed by `issuer`, not by itself (valid from an hour
/// before t0 for two years): unfit to rotate to.
pub fn cross_signed_root(issuer: &(Certificate, SigningKey)) -> (Certificate, SigningKey) {
    let signer = CaSigner {
        certificate: &issuer.0,
        key: &issuer.1,
    };
    signed_istiod(&signer, Some(1), t0() - HOUR, t0() + DAY * 730)
}

/// A self-signed root on curve P-521, which the key-strength check refuses (valid for rcgen's
/// default span, far beyond every other root here).
pub fn weak_root() -> (Certificate, SigningKey) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "weak root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&pair).unwrap();
    (
        Certificate::from_der(cert.der().to_vec()).unwrap(),
        SigningKey::from_pem(pair.serialize_pem().as_bytes()).unwrap(),
    )
}

/// An istiod intermediate (pathLen 0) signed by `root`, valid from an hour before t0 for 90
/// days, as cert-manager's Secret would hold it.
pub fn source_under(root: &(Certificate, SigningKey)) -> SourceBundle {
    let signer = CaSigner {
        certificate: &root.0,
        key: &root.1,
    };
    let (intermediate, key) = signed_istiod(&signer, Some(0), t0() - HOUR, t0() + DAY * 90);
    SourceBundle {
        intermediate,
        intermediates: vec![],
        key_pem: zeroize::Zeroizing::new(key.to_pem().into_bytes()),
        root: root.0.clone(),
    }
}

/// A Secret named `name` with `data`.
pub fn secret(name: &str, data: impl Into<SecretData>) -> Secret {
    let data: SecretData = data.into();
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some("istio-system".to_string()),
            ..Default::default()
        },
        data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.clone()))).collect()),
        ..Default::default()
    }
}

/// cert-manager's Secret for `source`: tls.crt, tls.key, ca.crt.
pub fn source_secret(source: &SourceBundle) -> Secret {
    let data = [
        ("tls.crt", source.intermediate.to_pem().into_bytes()),
        ("tls.key", source.key_pem.to_vec()),
        ("ca.crt", source.root.to_pem().into_bytes()),
    ];
    secret(
        "istiod-intermediate",
        data.into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// An IstioCACerts `mesh` in istio-system with `spec`.
pub fn istio_cacerts(spec: IstioCACertsSpec) -> IstioCACerts {
    let mut icc = IstioCACerts::new("mesh", spec);
    icc.metadata.namespace = Some("istio-system".to_string());
    icc.metadata.generation = Some(1);
    icc
}

/// What a reconcile of `icc` observes with `source` in cert-manager's Secret and no target yet.
pub fn observed(icc: IstioCACerts, source: Option<&SourceBundle>) -> Observed {
    Observed {
        icc: Arc::new(icc),
        source: source.map(source_secret),
        target: None,
        anchors: vec![],
        certificate: None,
        backend_ca: None,
        published: None,
        revocation: None,
        distributed_crls: None,
        serving: None,
        trust_bundles: None,
        now: t0(),
    }
}
