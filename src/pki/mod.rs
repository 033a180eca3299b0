//! X.509 work, free of Kubernetes and IO: decoding and verifying CSRs, reading certificates and
//! keys, chain verification as Go (istiod) does it, the issuance policy, validity arithmetic, and
//! signing.
//!
//! Nothing in here logs, and no error message carries key material: messages name what failed
//! (a subject, a fingerprint, a PEM label), never the bytes.

pub mod certificate;
pub mod chain;
pub mod crl;
pub mod csr;
pub mod issued;
pub mod key;
pub mod name_constraints;
pub mod pem;
pub mod policy;
pub mod renewal;
pub mod sign;
pub mod strength;

pub use certificate::Certificate;
pub use csr::CertificateSigningRequest;
pub use key::SigningKey;

/// Errors of the PKI layer. The controller decides what each means for a request or an issuer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PkiError {
    #[error("no PEM data found in {what}")]
    NoPem { what: &'static str },
    #[error("{what} is not valid PEM: {reason}")]
    BadPem { what: &'static str, reason: String },
    #[error("{what} holds a PEM block of type {found:?}, expected {expected:?}")]
    UnexpectedPemType {
        what: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("{what} holds {count} certificate requests, expected exactly one")]
    NotOneCsr { what: &'static str, count: usize },
    #[error("the certificate request cannot be decoded: {0}")]
    MalformedCsr(String),
    #[error("the certificate request's signature does not verify: it was not signed by the key it carries")]
    CsrSignatureInvalid,
    #[error("the certificate request uses a public key type this issuer cannot certify: {0}")]
    UnsupportedPublicKey(String),
    #[error("the certificate request's subject alternative name {0} is of a type this issuer does not sign")]
    UnsupportedSan(String),
    #[error(
        "the certificate request's subject cannot be reproduced exactly ({0}); use a subject without multi-valued or repeated attributes"
    )]
    UnsupportedSubject(String),
    #[error("a certificate cannot be decoded: {0}")]
    MalformedCertificate(String),
    #[error("the private key cannot be decoded (expected PKCS#8, PKCS#1 or SEC1 PEM of an RSA or ECDSA key)")]
    MalformedKey,
    #[error("the private key does not match the certificate {subject}")]
    KeyMismatch { subject: String },
    #[error("could not generate a key: {0}")]
    KeyGeneration(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("{0}")]
    Weak(#[from] strength::Weakness),
}

/// Lower-case hex of bytes (fingerprints, serials).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of DER bytes, as lower-case hex: how certificates are identified in status,
/// metrics and events.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der).as_ref())
}
