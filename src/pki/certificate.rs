//! A parsed X.509 certificate and the questions we ask of it: who, until when, may it sign
//! certificates, was it signed by that other certificate.

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{PkiError, pem, sha256_fingerprint};
use crate::api::issuer::CertificateSummary;

/// A certificate kept as DER; fields are read on demand from a fresh parse (cheap, and it
/// avoids a self-referential struct).
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("subject", &self.subject())
            .field("sha256", &self.fingerprint())
            .finish()
    }
}

/// BasicConstraints as found in a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaConstraints {
    pub is_ca: bool,
    pub path_len: Option<u32>,
}

impl Certificate {
    pub fn from_der(der: Vec<u8>) -> Result<Self, PkiError> {
        let (rest, _) = X509Certificate::from_der(&der).map_err(|e| PkiError::MalformedCertificate(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::MalformedCertificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        Ok(Self { der })
    }

    /// Every certificate in a PEM bundle, in order. Any non-certificate block is an error.
    pub fn parse_pem_bundle(input: &[u8], what: &'static str) -> Result<Vec<Self>, PkiError> {
        pem::decode_expecting(input, pem::CERTIFICATE, what)?
            .into_iter()
            .map(Self::from_der)
            .collect()
    }

    pub(super) fn parsed(&self) -> X509Certificate<'_> {
        // Parsing succeeded in `from_der`, and the bytes are immutable.
        match X509Certificate::from_der(&self.der) {
            Ok((_, cert)) => cert,
            Err(_) => unreachable!("certificate DER was validated on construction"),
        }
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        pem::encode(pem::CERTIFICATE, &self.der)
    }

    /// The subject as an RFC 4514-style string, for status, events and logs.
    pub fn subject(&self) -> String {
        self.parsed().subject().to_string()
    }

    /// The issuer as an RFC 4514-style string, for messages.
    pub fn issuer(&self) -> String {
        self.parsed().issuer().to_string()
    }

    pub fn raw_subject(&self) -> Vec<u8> {
        self.parsed().subject().as_raw().to_vec()
    }

    pub fn raw_issuer(&self) -> Vec<u8> {
        self.parsed().issuer().as_raw().to_vec()
    }

    pub fn not_before(&self) -> Timestamp {
        asn1_to_timestamp(self.parsed().validity().not_before.timestamp())
    }

    pub fn not_after(&self) -> Timestamp {
        asn1_to_timestamp(self.parsed().validity().not_after.timestamp())
    }

    /// True when `now` lies within notBefore..=notAfter.
    pub fn is_valid_at(&self, now: Timestamp) -> bool {
        self.not_before() <= now && now <= self.not_after()
    }

    pub fn fingerprint(&self) -> String {
        sha256_fingerprint(&self.der)
    }

    pub fn serial_hex(&self) -> String {
        super::hex(self.parsed().raw_serial())
    }

    /// The serial as a number, as CRLs are compared ([`super::crl::serial_number`]).
    pub fn serial_number(&self) -> Vec<u8> {
        super::crl::serial_number(self.parsed().raw_serial())
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_info(&self) -> Vec<u8> {
        self.parsed().public_key().raw.to_vec()
    }

    pub fn ca_constraints(&self) -> Option<CaConstraints> {
        let cert = self.parsed();
        let bc = cert.basic_constraints().ok().flatten()?;
        Some(CaConstraints {
            is_ca: bc.value.ca,
            path_len: bc.value.path_len_constraint,
        })
    }

    pub fn is_ca(&self) -> bool {
        self.ca_constraints().is_some_and(|c| c.is_ca)
    }

    /// Whether this certificate may sign others, as Go's `CheckSignatureFrom` asks of a parent:
    /// a v3 certificate needs BasicConstraints CA:TRUE (v1 roots carry no extensions at all),
    /// and a KeyUsage, when present, needs keyCertSign.
    pub fn may_sign_certificates(&self) -> bool {
        let is_ca = match self.ca_constraints() {
            Some(c) => c.is_ca,
            None => self.parsed().version() != x509_parser::x509::X509Version::V3,
        };
        is_ca && self.key_usage_cert_sign() != Some(false)
    }

    /// The subjectKeyIdentifier, when the certificate carries one: what a CRL it signs names
    /// as its authorityKeyIdentifier, so that verifiers (openssl) match the CRL to it.
    pub fn subject_key_id(&self) -> Option<Vec<u8>> {
        self.parsed()
            .extensions()
            .iter()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
    }

    /// Whether the KeyUsage extension allows signing certificates; `None` when absent.
    pub fn key_usage_cert_sign(&self) -> Option<bool> {
        let cert = self.parsed();
        let ku = cert.key_usage().ok().flatten()?;
        Some(ku.value.key_cert_sign())
    }

    /// Whether the certificate carries an ExtendedKeyUsage that excludes serverAuth. Go's
    /// `x509.Verify` (istiod's check) rejects such an intermediate.
    pub fn eku_excludes_server_auth(&self) -> bool {
        let cert = self.parsed();
        match cert.extended_key_usage().ok().flatten() {
            Some(eku) => !(eku.value.any || eku.value.server_auth),
            None => false,
        }
    }

    pub fn uri_sans(&self) -> Vec<String> {
        let cert = self.parsed();
        let mut out = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        out.push(uri.to_string());
                    }
                }
            }
        }
        out
    }

    /// The broken hash this certificate's signature is made with (SHA-1, MD5, ...), by name;
    /// `None` for SHA-256 and stronger.
    pub fn broken_signature_hash(&self) -> Option<&'static str> {
        super::strength::broken_signature_hash(&self.parsed().signature_algorithm.algorithm)
    }

    /// The first critical extension Go's `crypto/x509` does not handle (what it lists in
    /// `UnhandledCriticalExtensions`), as a dotted OID. Go's `x509.Verify` refuses a path with
    /// such a certificate anywhere on it, roots included (`isValid`). Go handles KeyUsage,
    /// BasicConstraints, SubjectAltName (when it holds a DNS, email, IP or URI name), name
    /// constraints of those four forms, CRL distribution points, key identifiers, EKU, the
    /// policy extensions and AIA (`crypto/x509/parser.go`, `processExtensions`).
    pub fn unhandled_critical_extension(&self) -> Option<String> {
        const HANDLED: [&str; 11] = [
            "2.5.29.15",
            "2.5.29.19",
            "2.5.29.31",
            "2.5.29.35",
            "2.5.29.36",
            "2.5.29.37",
            "2.5.29.14",
            "2.5.29.32",
            "2.5.29.33",
            "2.5.29.54",
            "1.3.6.1.5.5.7.1.1",
        ];
        let supported = |name: &GeneralName<'_>| {
            matches!(
                name,
                GeneralName::DNSName(_) | GeneralName::RFC822Name(_) | GeneralName::IPAddress(_) | GeneralName::URI(_)
            )
        };
        let cert = self.parsed();
        cert.extensions().iter().filter(|e| e.critical).find_map(|ext| {
            let oid = ext.oid.to_id_string();
            let handled = match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => san.general_names.iter().any(supported),
                ParsedExtension::NameConstraints(nc) => nc
                    .permitted_subtrees
                    .iter()
                    .chain(nc.excluded_subtrees.iter())
                    .flatten()
                    .all(|subtree| supported(&subtree.base)),
                _ => HANDLED.contains(&oid.as_str()),
            };
            (!handled).then_some(oid)
        })
    }

    /// Every subject alternative name. A form no accepted CSR can carry (otherName,
    /// directoryName, ...) comes out as a `Uri("unsupported:...")`, so a comparison with a
    /// CSR's names never lets it pass unnoticed.
    pub fn subject_alt_names(&self) -> Vec<super::csr::SubjectAltName> {
        let cert = self.parsed();
        let mut out = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    out.push(
                        super::csr::convert_san(name)
                            .unwrap_or_else(|_| super::csr::SubjectAltName::Uri(format!("unsupported:{name}"))),
                    );
                }
            }
        }
        out
    }

    /// True when `issuer`'s key verifies this certificate's signature and the names chain.
    pub fn is_signed_by(&self, issuer: &Certificate) -> bool {
        let cert = self.parsed();
        let issuer_cert = issuer.parsed();
        cert.issuer().as_raw() == issuer_cert.subject().as_raw()
            && cert.verify_signature(Some(issuer_cert.public_key())).is_ok()
    }

    /// True for a self-signed certificate (a root).
    pub fn is_self_signed(&self) -> bool {
        self.is_signed_by(self)
    }

    pub fn summary(&self) -> CertificateSummary {
        CertificateSummary {
            subject: self.subject(),
            not_before: self.not_before().to_string(),
            not_after: self.not_after().to_string(),
            fingerprint_sha256: self.fingerprint(),
        }
    }
}

fn asn1_to_timestamp(unix_seconds: i64) -> Timestamp {
    // ASN.1 times lie within years 1950..=9999, always representable.
    Timestamp::from_second(unix_seconds).unwrap_or(Timestamp::MAX)
}
