//! Signing: an intermediate (or, when policy allows, a leaf) from a verified CSR and a plan,
//! and self-signed roots for `localCA.bootstrap`.
//!
//! Every certificate produced here is checked before it leaves: its issuer name must be the
//! signing CA's subject **byte for byte** and its signature must verify with the CA's key
//! (Go's `x509.Verify`, which istiod uses, matches names by raw bytes), and its subject and
//! public key must be exactly the CSR's. rcgen re-encodes names, so a name it cannot
//! reproduce (multi-valued or repeated attributes) is refused rather than silently changed.

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::csr::SubjectAltName;
use super::name_constraints;
use super::policy::SigningPlan;
use super::{Certificate, CertificateSigningRequest, PkiError, SigningKey};
use crate::api::issuer::RootBootstrap;
use crate::duration::parse_go_duration;

/// A random, positive serial of 128 bits (RFC 5280 asks for at least 64 bits of entropy for
/// CAs that follow the CA/B baseline; we use 16 bytes with the top bit cleared).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| PkiError::Signing("no randomness available".into()))?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be stripped by DER; keep 128 bits of length.
    bytes[0] |= 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn to_offset(t: Timestamp) -> Result<time::OffsetDateTime, PkiError> {
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|_| PkiError::Signing(format!("time {t} out of range")))
}

/// Copies an X.509 name attribute by attribute, keeping each value's string type.
fn distinguished_name(name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let unsupported = |why: &str| PkiError::UnsupportedSubject(why.to_string());
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(unsupported("a multi-valued RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| unsupported("an attribute OID too large"))?
            .collect();
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| unsupported("an attribute that is not valid text"));
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_string()),
            Tag::PrintableString => {
                DnValue::PrintableString(text()?.try_into().map_err(|_| unsupported("a bad PrintableString"))?)
            }
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(|_| unsupported("a bad IA5String"))?),
            Tag::T61String => {
                DnValue::TeletexString(text()?.try_into().map_err(|_| unsupported("a bad TeletexString"))?)
            }
            Tag::BmpString => DnValue::BmpString(
                rcgen::string::BmpString::from_utf16be(data.to_vec()).map_err(|_| unsupported("a bad BMPString"))?,
            ),
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec())
                    .map_err(|_| unsupported("a bad UniversalString"))?,
            ),
            _ => return Err(unsupported("an attribute of an unsupported string type")),
        };
        if dn.get(&DnType::from_oid(&oid)).is_some() {
            return Err(unsupported("a repeated attribute"));
        }
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

fn san(san: &SubjectAltName) -> Result<SanType, PkiError> {
    let ia5 = |s: &str| {
        s.to_string()
            .try_into()
            .map_err(|_| PkiError::UnsupportedSan(format!("{s:?} (not IA5)")))
    };
    Ok(match san {
        SubjectAltName::Dns(d) => SanType::DnsName(ia5(d)?),
        SubjectAltName::Uri(u) => SanType::URI(ia5(u)?),
        SubjectAltName::Email(e) => SanType::Rfc822Name(ia5(e)?),
        SubjectAltName::Ip(ip) => SanType::IpAddress(*ip),
    })
}

/// The issuer (root or intermediate CA) that signs: its certificate and its key.
pub struct CaSigner<'a> {
    pub certificate: &'a Certificate,
    pub key: &'a SigningKey,
}

/// Signs `csr` as `plan` says. For a CA: CA:true (critical) with the plan's pathLen, keyUsage
/// keyCertSign + cRLSign + digitalSignature (critical), no extendedKeyUsage (istiod's Go
/// verification rejects an intermediate whose EKU excludes serverAuth), SKI and AKI.
pub fn sign_csr(
    csr: &CertificateSigningRequest,
    plan: &SigningPlan,
    ca: &CaSigner<'_>,
) -> Result<Certificate, PkiError> {
    let csr_der = csr.der();
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::MalformedCsr(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(&parsed.certification_request_info.subject)?;
    params.subject_alt_names = csr.sans.iter().map(san).collect::<Result<_, _>>()?;
    params.serial_number = Some(random_serial()?);
    params.not_before = to_offset(plan.not_before)?;
    params.not_after = to_offset(plan.not_after)?;
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    match plan.ca_path_len {
        Some(path_len) => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
        }
        None => {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        }
    }
    if let Some(constraints) = &plan.name_constraints {
        // rcgen cannot express URI subtrees: the extension is encoded by hand, always critical
        // (RFC 5280: "Conforming CAs MUST mark this extension as critical").
        let der = constraints.to_der().map_err(PkiError::Signing)?;
        let mut extension = rcgen::CustomExtension::from_oid_content(name_constraints::OID, der);
        extension.set_criticality(true);
        params.custom_extensions.push(extension);
    }
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(&csr.public_key_info)
        .map_err(|e| PkiError::UnsupportedPublicKey(e.to_string()))?;
    let issuer = Issuer::from_ca_cert_der(&ca.certificate.der().to_vec().into(), ca.key.key_pair())
        .map_err(|e| PkiError::Signing(format!("cannot use {} as issuer: {e}", ca.certificate.subject())))?;
    let signed = params
        .signed_by(&public_key, &issuer)
        .map_err(|e| PkiError::Signing(e.to_string()))?;
    let certificate = Certificate::from_der(signed.der().to_vec())?;

    if certificate.raw_subject() != csr.raw_subject() {
        return Err(PkiError::UnsupportedSubject(format!(
            "{} would have been re-encoded",
            csr.subject
        )));
    }
    if certificate.public_key_info() != csr.public_key_info {
        return Err(PkiError::UnsupportedPublicKey(
            "the key would have been re-encoded".into(),
        ));
    }
    check_chains_to(&certificate, ca.certificate)?;
    if let Some(constraints) = &plan.name_constraints {
        name_constraints::check_carries(&certificate, constraints).map_err(PkiError::Signing)?;
    }
    Ok(certificate)
}

/// The self-check every signature passes before use.
fn check_chains_to(certificate: &Certificate, ca: &Certificate) -> Result<(), PkiError> {
    if certificate.raw_issuer() != ca.raw_subject() {
        return Err(PkiError::Signing(format!(
            "the signed certificate's issuer name does not match {} byte for byte (the CA's subject uses multi-valued or repeated attributes that cannot be reproduced)",
            ca.subject()
        )));
    }
    if !certificate.is_signed_by(ca) {
        return Err(PkiError::Signing(format!(
            "the signature does not verify with {}'s key",
            ca.subject()
        )));
    }
    Ok(())
}

/// Proves that `ca` can sign certificates that chain to it: signs a throwaway certificate for
/// a fresh key and checks it. Run when an issuer is checked, so a root that cannot work is
/// reported on the issuer, not discovered on the first renewal.
pub fn probe_signing(ca: &CaSigner<'_>, now: Timestamp) -> Result<(), PkiError> {
    let probe_key = SigningKey::generate(&Default::default())?;
    let mut params = CertificateParams::default();
    // rcgen pre-fills a CN; start from an empty name so ours comes out in the order given.
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "mesh-ca-issuer signing probe");
    params.not_before = to_offset(now)?;
    params.not_after = to_offset(now + jiff::SignedDuration::from_secs(60))?;
    params.serial_number = Some(random_serial()?);
    let issuer = Issuer::from_ca_cert_der(&ca.certificate.der().to_vec().into(), ca.key.key_pair())
        .map_err(|e| PkiError::Signing(format!("cannot use {} as issuer: {e}", ca.certificate.subject())))?;
    let signed = params
        .signed_by(probe_key.key_pair(), &issuer)
        .map_err(|e| PkiError::Signing(e.to_string()))?;
    check_chains_to(&Certificate::from_der(signed.der().to_vec())?, ca.certificate)
}

/// An X.509-SVID for `spiffe_id` with a fresh P-256 key, signed by `ca` (the bundle endpoint's
/// serving certificate): not a CA, digitalSignature, serverAuth and clientAuth, the ID as its
/// only URI SAN (SPIFFE X.509-SVID §2, §4).
pub fn svid(
    ca: &CaSigner<'_>,
    spiffe_id: &str,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<(Certificate, SigningKey), PkiError> {
    let key = SigningKey::generate(&Default::default())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![san(&SubjectAltName::Uri(spiffe_id.to_string()))?];
    params.serial_number = Some(random_serial()?);
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(&ca.certificate.der().to_vec().into(), ca.key.key_pair())
        .map_err(|e| PkiError::Signing(format!("cannot use {} as issuer: {e}", ca.certificate.subject())))?;
    let signed = params
        .signed_by(key.key_pair(), &issuer)
        .map_err(|e| PkiError::Signing(e.to_string()))?;
    let certificate = Certificate::from_der(signed.der().to_vec())?;
    check_chains_to(&certificate, ca.certificate)?;
    Ok((certificate, key))
}

/// A new self-signed root as `localCA.bootstrap` describes: CA:true without a path length
/// limit, keyCertSign + cRLSign + digitalSignature.
pub fn self_signed_root(spec: &RootBootstrap, now: Timestamp) -> Result<(Certificate, SigningKey), PkiError> {
    let lifetime =
        parse_go_duration(&spec.duration).map_err(|e| PkiError::KeyGeneration(format!("bootstrap.duration: {e}")))?;
    let key = SigningKey::generate(&spec.private_key)?;
    let mut params = CertificateParams::default();
    // rcgen pre-fills a CN; start from an empty name so ours comes out in the order given.
    params.distinguished_name = DistinguishedName::new();
    for org in &spec.subject.organizations {
        params.distinguished_name.push(DnType::OrganizationName, org.as_str());
    }
    params
        .distinguished_name
        .push(DnType::CommonName, spec.subject.common_name.as_str());
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.serial_number = Some(random_serial()?);
    params.not_before = to_offset(now)?;
    params.not_after = to_offset(
        now + jiff::SignedDuration::try_from(lifetime)
            .map_err(|_| PkiError::KeyGeneration("bootstrap.duration too large".into()))?,
    )?;
    let cert = params
        .self_signed(key.key_pair())
        .map_err(|e| PkiError::Signing(e.to_string()))?;
    Ok((Certificate::from_der(cert.der().to_vec())?, key))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::issuer::{KeyAlgorithm, PrivateKeySpec};
    use crate::pki::policy::SigningPlan;

    /// A CSR like the one cert-manager makes for istiod's intermediate: ECDSA P-256, a subject
    /// with O and CN, a SPIFFE URI SAN, critical keyUsage, no BasicConstraints.
    pub(crate) fn istiod_csr() -> CertificateSigningRequest {
        istiod_csr_with_key().0
    }

    /// [`istiod_csr`] and the key that signed it.
    pub(crate) fn istiod_csr_with_key() -> (CertificateSigningRequest, SigningKey) {
        csr_with_uris_and_key(&["spiffe://cluster.local/ns/istio-system/sa/istiod"])
    }

    /// istiod's CSR signed by `issuer`, valid from `not_before` to `not_after`: a CA with path
    /// length `ca_path_len`, or a leaf when `None`; and its key. The certificate every test
    /// module needs under a root of its own.
    pub(crate) fn signed_istiod(
        issuer: &CaSigner,
        ca_path_len: Option<u8>,
        not_before: Timestamp,
        not_after: Timestamp,
    ) -> (Certificate, SigningKey) {
        let (csr, key) = istiod_csr_with_key();
        let plan = SigningPlan {
            ca_path_len,
            not_before,
            not_after,
            requested: std::time::Duration::from_secs(1),
            clamped: None,
            name_constraints: None,
        };
        (sign_csr(&csr, &plan, issuer).unwrap(), key)
    }

    /// [`istiod_csr`] naming other URI SANs.
    pub(crate) fn csr_with_uris(uris: &[&str]) -> CertificateSigningRequest {
        csr_with_uris_and_key(uris).0
    }

    fn csr_with_uris_and_key(uris: &[&str]) -> (CertificateSigningRequest, SigningKey) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        // rcgen pre-fills a CN; start from an empty name so ours comes out in the order given.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        params
            .distinguished_name
            .push(DnType::CommonName, "istiod intermediate");
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI(uri.to_string().try_into().unwrap()))
            .collect();
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let csr = params.serialize_request(&key).unwrap();
        let csr = CertificateSigningRequest::from_pem(csr.pem().unwrap().as_bytes()).unwrap();
        (csr, SigningKey::from_pem(key.serialize_pem().as_bytes()).unwrap())
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn plan(path_len: Option<u8>) -> SigningPlan {
        SigningPlan {
            ca_path_len: path_len,
            not_before: now() - jiff::SignedDuration::from_secs(300),
            not_after: now() + jiff::SignedDuration::from_hours(2160),
            requested: std::time::Duration::from_secs(2160 * 3600),
            clamped: None,
            name_constraints: None,
        }
    }

    fn root(alg: KeyAlgorithm) -> (Certificate, SigningKey) {
        let spec = RootBootstrap {
            private_key: PrivateKeySpec {
                algorithm: alg,
                size: None,
            },
            ..Default::default()
        };
        self_signed_root(&spec, now() - jiff::SignedDuration::from_hours(24)).unwrap()
    }

    #[test]
    fn intermediate_carries_the_csr_subject_key_and_sans_and_chains_to_the_root() {
        for alg in [KeyAlgorithm::Ecdsa, KeyAlgorithm::Rsa] {
            let (root_cert, root_key) = root(alg);
            let csr = istiod_csr();
            let cert = sign_csr(
                &csr,
                &plan(Some(0)),
                &CaSigner {
                    certificate: &root_cert,
                    key: &root_key,
                },
            )
            .unwrap();
            assert_eq!(cert.raw_subject(), csr.raw_subject());
            assert_eq!(cert.public_key_info(), csr.public_key_info);
            assert_eq!(
                cert.uri_sans(),
                vec!["spiffe://cluster.local/ns/istio-system/sa/istiod".to_string()]
            );
            assert!(cert.is_signed_by(&root_cert));
            assert_eq!(
                cert.ca_constraints().map(|c| (c.is_ca, c.path_len)),
                Some((true, Some(0)))
            );
            assert_eq!(cert.key_usage_cert_sign(), Some(true));
            assert!(!cert.eku_excludes_server_auth());
            assert_eq!(cert.not_after(), plan(None).not_after);
            assert!(cert.serial_hex().len() >= 16, "at least 64 bits of serial");
        }
    }

    #[test]
    fn serials_differ_between_signings() {
        let (root_cert, root_key) = root(KeyAlgorithm::Ecdsa);
        let ca = CaSigner {
            certificate: &root_cert,
            key: &root_key,
        };
        let a = sign_csr(&istiod_csr(), &plan(Some(0)), &ca).unwrap();
        let b = sign_csr(&istiod_csr(), &plan(Some(0)), &ca).unwrap();
        assert_ne!(a.serial_hex(), b.serial_hex());
    }

    #[test]
    fn a_constrained_plan_gives_a_critical_name_constraints_extension_exactly_as_planned() {
        use crate::pki::name_constraints::{NameConstraints, Subtree, carried_by};
        let (root_cert, root_key) = root(KeyAlgorithm::Ecdsa);
        let constraints = NameConstraints {
            permitted: vec![Subtree::Uri("cluster.local".into())],
            excluded: vec![Subtree::Uri(".cluster.local".into())],
        };
        let constrained = SigningPlan {
            name_constraints: Some(constraints.clone()),
            ..plan(Some(0))
        };
        let ca = CaSigner {
            certificate: &root_cert,
            key: &root_key,
        };
        let cert = sign_csr(&istiod_csr(), &constrained, &ca).unwrap();
        assert_eq!(carried_by(&cert).unwrap(), Some((true, constraints)));
        // Without constraints in the plan, none in the certificate.
        let plain = sign_csr(&istiod_csr(), &plan(Some(0)), &ca).unwrap();
        assert_eq!(carried_by(&plain).unwrap(), None);
    }

    #[test]
    fn leaf_plan_gives_a_non_ca_certificate() {
        let (root_cert, root_key) = root(KeyAlgorithm::Ecdsa);
        let cert = sign_csr(
            &istiod_csr(),
            &plan(None),
            &CaSigner {
                certificate: &root_cert,
                key: &root_key,
            },
        )
        .unwrap();
        assert_eq!(cert.ca_constraints().map(|c| c.is_ca), Some(false));
    }

    #[test]
    fn probe_succeeds_for_a_good_root_and_fails_for_a_foreign_key() {
        let (root_cert, root_key) = root(KeyAlgorithm::Ecdsa);
        probe_signing(
            &CaSigner {
                certificate: &root_cert,
                key: &root_key,
            },
            now(),
        )
        .unwrap();
        let (_, other_key) = root(KeyAlgorithm::Ecdsa);
        assert!(
            probe_signing(
                &CaSigner {
                    certificate: &root_cert,
                    key: &other_key
                },
                now()
            )
            .is_err()
        );
    }

    #[test]
    fn bootstrapped_root_is_a_self_signed_ca() {
        let (cert, key) = root(KeyAlgorithm::Rsa);
        assert!(cert.is_self_signed());
        assert!(cert.is_ca());
        assert!(key.matches(&cert));
        assert_eq!(cert.subject(), "CN=mesh-ca-issuer root CA");
        let reloaded = SigningKey::from_pem(key.to_pem().as_bytes()).unwrap();
        assert!(reloaded.matches(&cert));
    }
}
