//! PKCS#10 certificate signing requests: decoded strictly and verified before anything else
//! looks at them. A request that is not exactly one well-formed, correctly self-signed CSR is
//! refused with a message that says which of those it is not.

use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use super::{PkiError, pem, strength};

/// A subject alternative name we know how to carry into a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectAltName {
    Dns(String),
    Uri(String),
    Ip(IpAddr),
    Email(String),
}

/// Subject attributes of a CSR, as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectAttributes {
    pub common_name: Option<String>,
    pub organization: Vec<String>,
    pub organizational_unit: Vec<String>,
    pub country: Vec<String>,
    pub locality: Vec<String>,
    pub province: Vec<String>,
}

/// What a decoded and verified CSR asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSigningRequest {
    der: Vec<u8>,
    /// The subject, RFC 4514-style, for messages.
    pub subject: String,
    /// The DER SubjectPublicKeyInfo.
    pub public_key_info: Vec<u8>,
    pub sans: Vec<SubjectAltName>,
    /// BasicConstraints in the CSR's requested extensions, if any (cert-manager omits them by default).
    pub requested_ca: Option<(bool, Option<u32>)>,
}

impl CertificateSigningRequest {
    /// Decodes `spec.request`: exactly one PEM `CERTIFICATE REQUEST` whose signature verifies.
    pub fn from_pem(input: &[u8]) -> Result<Self, PkiError> {
        let what = "spec.request";
        // Before decoding anything: an oversized request costs nothing to refuse.
        strength::check_request_size(input.len())?;
        let blocks = pem::decode_all(input, what)?;
        let mut csrs = Vec::new();
        for (label, der) in blocks {
            match label.as_str() {
                pem::CERTIFICATE_REQUEST | "NEW CERTIFICATE REQUEST" => csrs.push(der),
                _ => {
                    return Err(PkiError::UnexpectedPemType {
                        what,
                        found: label,
                        expected: pem::CERTIFICATE_REQUEST,
                    });
                }
            }
        }
        if csrs.len() != 1 {
            return Err(PkiError::NotOneCsr {
                what,
                count: csrs.len(),
            });
        }
        Self::from_der(csrs.remove(0))
    }

    pub fn from_der(der: Vec<u8>) -> Result<Self, PkiError> {
        let (rest, csr) =
            X509CertificationRequest::from_der(&der).map_err(|e| PkiError::MalformedCsr(e.to_string()))?;
        if !rest.is_empty() {
            return Err(PkiError::MalformedCsr("trailing bytes after the request".into()));
        }
        // Weakness first, then the signature: a SHA-1 or RSA-1024 request is refused by name,
        // not reported as a signature that does not verify.
        strength::check_csr_signature(&csr.signature_algorithm.algorithm)?;
        strength::check_key(csr.certification_request_info.subject_pki.raw, strength::CSR_KEY)?;
        csr.verify_signature().map_err(|_| PkiError::CsrSignatureInvalid)?;
        let info = &csr.certification_request_info;
        let mut sans = Vec::new();
        let mut requested_ca = None;
        if let Some(extensions) = csr.requested_extensions() {
            for ext in extensions {
                match ext {
                    ParsedExtension::SubjectAlternativeName(san) => {
                        for name in &san.general_names {
                            sans.push(convert_san(name)?);
                        }
                    }
                    ParsedExtension::BasicConstraints(bc) => {
                        requested_ca = Some((bc.ca, bc.path_len_constraint));
                    }
                    // KeyUsage and ExtendedKeyUsage are decided by the issuer, not copied;
                    // other requested extensions are not carried into the certificate.
                    _ => {}
                }
            }
        }
        strength::check_san_count(sans.len())?;
        let subject = info.subject.to_string();
        let public_key_info = info.subject_pki.raw.to_vec();
        Ok(Self {
            subject,
            public_key_info,
            sans,
            requested_ca,
            der,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The raw DER of the subject name.
    pub fn raw_subject(&self) -> Vec<u8> {
        match X509CertificationRequest::from_der(&self.der) {
            Ok((_, csr)) => csr.certification_request_info.subject.as_raw().to_vec(),
            Err(_) => unreachable!("CSR DER was validated on construction"),
        }
    }

    /// The value (DER inside the OCTET STRING) of the extension the CSR requests with OID
    /// `oid` (dotted, e.g. `2.5.29.30`), if it requests one.
    pub fn requested_extension(&self, oid: &str) -> Option<Vec<u8>> {
        let (_, csr) = X509CertificationRequest::from_der(&self.der).ok()?;
        csr.certification_request_info
            .iter_attributes()
            .find_map(|attribute| match attribute.parsed_attribute() {
                ParsedCriAttribute::ExtensionRequest(request) => request
                    .extensions
                    .iter()
                    .find(|e| e.oid.to_id_string() == oid)
                    .map(|e| e.value.to_vec()),
                _ => None,
            })
    }

    /// The subject's attributes a CA service may take as parameters (Vault's `common_name`,
    /// `organization`, ...), each in the order the CSR names them.
    pub fn subject_attributes(&self) -> SubjectAttributes {
        let Ok((_, csr)) = X509CertificationRequest::from_der(&self.der) else {
            return SubjectAttributes::default();
        };
        let subject = &csr.certification_request_info.subject;
        let all = |values: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
            values
                .filter_map(|v| v.as_str().ok().map(str::to_string))
                .collect::<Vec<_>>()
        };
        SubjectAttributes {
            common_name: all(&mut subject.iter_common_name()).into_iter().next(),
            organization: all(&mut subject.iter_organization()),
            organizational_unit: all(&mut subject.iter_organizational_unit()),
            country: all(&mut subject.iter_country()),
            locality: all(&mut subject.iter_locality()),
            province: all(&mut subject.iter_state_or_province()),
        }
    }

    /// `spiffe://` URI SANs.
    pub fn spiffe_ids(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|san| match san {
            SubjectAltName::Uri(uri) if uri.to_ascii_lowercase().starts_with("spiffe://") => Some(uri.as_str()),
            _ => None,
        })
    }
}

pub(crate) fn convert_san(name: &GeneralName<'_>) -> Result<SubjectAltName, PkiError> {
    Ok(match name {
        GeneralName::DNSName(dns) => SubjectAltName::Dns(dns.to_string()),
        GeneralName::URI(uri) => SubjectAltName::Uri(uri.to_string()),
        GeneralName::RFC822Name(email) => SubjectAltName::Email(email.to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => {
                let octets: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
                SubjectAltName::Ip(IpAddr::from(octets))
            }
            16 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(bytes);
                SubjectAltName::Ip(IpAddr::from(octets))
            }
            n => return Err(PkiError::UnsupportedSan(format!("IP address of {n} bytes"))),
        },
        other => return Err(PkiError::UnsupportedSan(format!("{other}"))),
    })
}

/// The trust domain of a valid SPIFFE ID (lower-cased), or `None` when `uri` is not one.
///
/// As the SPIFFE ID specification has it: scheme `spiffe`, a trust domain of letters, digits,
/// `.`, `-` and `_` (no port, no user info), and a path whose segments are non-empty, not `.` or
/// `..`, and made of the same characters; no query, no fragment, no percent-encoding. Scheme
/// and trust domain are compared case-insensitively, as URIs are.
pub fn spiffe_trust_domain(uri: &str) -> Option<String> {
    let rest = uri
        .get(..9)
        .filter(|s| s.eq_ignore_ascii_case("spiffe://"))
        .map(|_| &uri[9..])?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let (domain, path) = match rest.split_once('/') {
        Some((domain, path)) => (domain, Some(path)),
        None => (rest, None),
    };
    if domain.is_empty() || !domain.chars().all(allowed) {
        return None;
    }
    if let Some(path) = path {
        let valid = path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != ".." && segment.chars().all(allowed));
        if !valid {
            return None;
        }
    }
    Some(domain.to_ascii_lowercase())
}

/// Every URI SAN, SPIFFE or not: each must be a valid SPIFFE ID to be signed.
impl CertificateSigningRequest {
    pub fn uris(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|san| match san {
            SubjectAltName::Uri(uri) => Some(uri.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_trust_domains() {
        let cases = [
            (
                "spiffe://cluster.local/ns/istio-system/sa/istiod",
                Some("cluster.local"),
            ),
            ("SPIFFE://Cluster.Local/ns/x", Some("cluster.local")),
            ("spiffe://example.org", Some("example.org")),
            ("spiffe:///ns/x", None),
            ("spiffe://bad domain/x", None),
            ("https://example.org", None),
            // Not SPIFFE IDs either: a port, user info, empty or dot segments, a query, a
            // fragment, percent-encoding, a trailing slash.
            ("spiffe://cluster.local:443/ns/x", None),
            ("spiffe://user@cluster.local/ns/x", None),
            ("spiffe://cluster.local//x", None),
            ("spiffe://cluster.local/ns/../x", None),
            ("spiffe://cluster.local/ns/x?y=1", None),
            ("spiffe://cluster.local/ns/x#y", None),
            ("spiffe://cluster.local/ns/%2e", None),
            ("spiffe://cluster.local/ns/x/", None),
        ];
        for (uri, expected) in cases {
            assert_eq!(spiffe_trust_domain(uri).as_deref(), expected, "{uri}");
        }
    }
}
