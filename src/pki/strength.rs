//! What is too weak or too big to sign, or to sign with: RSA keys under 2048 bits, EC curves
//! other than P-256 and P-384, CSR signatures with SHA-1 or MD5, and requests whose size or SAN
//! count no istiod intermediate needs. Pure: DER in, a verdict out.
//!
//! The same key rule judges a signing CA's own key, so a weak root makes its issuer not Ready
//! with a message that says why (rather than "cannot be decoded").

use x509_parser::der_parser::oid::Oid;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

/// The largest `spec.request` accepted, in bytes. An istiod CSR is about 1 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The most subject alternative names a CSR may carry. istiod's carries one or two.
pub const MAX_SANS: usize = 100;
/// The smallest RSA modulus accepted, in bits (NIST SP 800-131A; Istio's own minimum).
pub const MIN_RSA_BITS: usize = 2048;

/// What is weak about a key, a signature or a request. Each message says exactly what, and
/// what is accepted instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weakness {
    #[error("{whose} RSA key has {bits} bits; at least {MIN_RSA_BITS} are required")]
    RsaKeyTooSmall { whose: &'static str, bits: usize },
    #[error("{whose} EC key is on curve {curve}; only P-256 and P-384 are accepted")]
    CurveNotAllowed { whose: &'static str, curve: String },
    #[error(
        "{whose} key is {kind}; only RSA (at least {MIN_RSA_BITS} bits) and ECDSA P-256 or P-384 keys are accepted"
    )]
    KeyTypeNotAllowed { whose: &'static str, kind: String },
    #[error(
        "the certificate request is signed with {algorithm}; SHA-1 and MD5 signatures are refused: sign it with SHA-256 or stronger"
    )]
    BrokenSignatureHash { algorithm: &'static str },
    #[error(
        "the certificate request's signature algorithm {oid} is not accepted; use SHA-256, SHA-384 or SHA-512 with RSA or ECDSA"
    )]
    SignatureNotAllowed { oid: String },
    #[error("spec.request is {bytes} bytes; at most {MAX_REQUEST_BYTES} are accepted")]
    RequestTooLarge { bytes: usize },
    #[error("the certificate request has {count} subject alternative names; at most {MAX_SANS} are accepted")]
    TooManySans { count: usize },
}

/// Whose key is judged, for messages.
pub const CSR_KEY: &str = "the certificate request's";
pub const CA_KEY: &str = "the signing CA's";

/// Refuses a `spec.request` larger than [`MAX_REQUEST_BYTES`], before it is decoded.
pub fn check_request_size(bytes: usize) -> Result<(), Weakness> {
    if bytes > MAX_REQUEST_BYTES {
        return Err(Weakness::RequestTooLarge { bytes });
    }
    Ok(())
}

/// Refuses more than [`MAX_SANS`] subject alternative names.
pub fn check_san_count(count: usize) -> Result<(), Weakness> {
    if count > MAX_SANS {
        return Err(Weakness::TooManySans { count });
    }
    Ok(())
}

/// Accepts RSA keys of at least [`MIN_RSA_BITS`] and EC keys on P-256 or P-384; `spki` is a
/// DER SubjectPublicKeyInfo.
pub fn check_key(spki: &[u8], whose: &'static str) -> Result<(), Weakness> {
    let not_allowed = |kind: String| Weakness::KeyTypeNotAllowed { whose, kind };
    let Ok((_, info)) = SubjectPublicKeyInfo::from_der(spki) else {
        return Err(not_allowed("not a decodable public key".into()));
    };
    let algorithm = &info.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match info.parsed() {
            Ok(PublicKey::RSA(rsa)) => bit_length(rsa.modulus),
            _ => 0,
        };
        if bits < MIN_RSA_BITS {
            return Err(Weakness::RsaKeyTooSmall { whose, bits });
        }
        return Ok(());
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(Weakness::CurveNotAllowed {
                whose,
                curve: curve_name(&c),
            }),
            None => Err(Weakness::CurveNotAllowed {
                whose,
                curve: "unnamed (explicit parameters)".into(),
            }),
        };
    }
    let kind = if *algorithm == OID_SIG_ED25519 {
        "Ed25519".to_string()
    } else {
        format!("of type {algorithm}")
    };
    Err(not_allowed(kind))
}

/// Accepts a CSR signature made with SHA-256 or stronger (RSA PKCS#1 v1.5, RSA-PSS, ECDSA);
/// names SHA-1 and MD5 outright.
pub fn check_csr_signature(algorithm: &Oid<'_>) -> Result<(), Weakness> {
    let accepted = [
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        // PSS's hash is in its parameters; signature verification accepts SHA-256 and up only.
        OID_PKCS1_RSASSAPSS,
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
        OID_SIG_ECDSA_WITH_SHA512,
    ];
    if accepted.contains(algorithm) {
        return Ok(());
    }
    match broken_signature_hash(algorithm) {
        Some(name) => Err(Weakness::BrokenSignatureHash { algorithm: name }),
        None => Err(Weakness::SignatureNotAllowed {
            oid: algorithm.to_id_string(),
        }),
    }
}

/// The name of a signature algorithm built on a broken hash (SHA-1, MD5, MD4, MD2), or `None`.
/// Go's `x509.Verify` (istiod) refuses such signatures on every link of a chain.
pub fn broken_signature_hash(algorithm: &Oid<'_>) -> Option<&'static str> {
    let broken: &[(&str, &'static str)] = &[
        ("1.2.840.113549.1.1.5", "sha1WithRSAEncryption (SHA-1)"),
        ("1.3.14.3.2.29", "sha1WithRSASignature (SHA-1)"),
        ("1.2.840.10045.4.1", "ecdsa-with-SHA1 (SHA-1)"),
        ("1.2.840.10040.4.3", "dsa-with-sha1 (SHA-1)"),
        ("1.2.840.113549.1.1.4", "md5WithRSAEncryption (MD5)"),
        ("1.3.14.3.2.25", "md5WithRSASignature (MD5)"),
        ("1.2.840.113549.1.1.3", "md4WithRSAEncryption (MD4)"),
        ("1.2.840.113549.1.1.2", "md2WithRSAEncryption (MD2)"),
    ];
    let dotted = algorithm.to_id_string();
    broken.iter().find(|(oid, _)| *oid == dotted).map(|(_, name)| *name)
}

/// Bits in a big-endian unsigned integer, leading zero bytes and bits not counted.
fn bit_length(bytes: &[u8]) -> usize {
    let significant: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return 0,
    };
    (significant.len() - 1) * 8 + (8 - significant[0].leading_zeros() as usize)
}

fn curve_name(oid: &Oid<'_>) -> String {
    if *oid == OID_NIST_EC_P521 {
        return "P-521 (secp521r1)".into();
    }
    match oid.to_id_string().as_str() {
        "1.3.132.0.10" => "secp256k1".into(),
        "1.3.36.3.3.2.8.1.1.7" => "brainpoolP256r1".into(),
        "1.2.840.10045.3.1.1" => "P-192 (prime192v1)".into(),
        "1.3.132.0.33" => "P-224 (secp224r1)".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData};
    use x509_parser::oid_registry::{OID_PKCS1_MD5WITHRSAENC, OID_PKCS1_SHA1WITHRSA};

    fn spki(pair: &KeyPair) -> Vec<u8> {
        pair.subject_public_key_info()
    }

    #[test]
    fn accepted_keys_are_rsa_2048_and_up_and_p256_or_p384() {
        let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let rsa = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        for (name, pair) in [("P-256", &p256), ("P-384", &p384), ("RSA 2048", &rsa)] {
            assert_eq!(check_key(&spki(pair), CSR_KEY), Ok(()), "{name}");
        }
    }

    #[test]
    fn weak_or_foreign_keys_are_named() {
        // RSA 1024, P-521, secp256k1 and Ed25519 SubjectPublicKeyInfos made by openssl
        // (`openssl genpkey ... | openssl pkey -pubout -outform DER | xxd -p`).
        let cases: [(&str, &str, &str); 4] = [
            ("rsa 1024", RSA_1024_SPKI, "RSA key has 1024 bits; at least 2048"),
            ("p-521", P521_SPKI, "curve P-521 (secp521r1); only P-256 and P-384"),
            ("secp256k1", K256_SPKI, "curve secp256k1"),
            ("ed25519", ED25519_SPKI, "key is Ed25519; only RSA"),
        ];
        for (name, hex, expected) in cases {
            let der = from_hex(hex);
            let err = check_key(&der, CSR_KEY).unwrap_err().to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.starts_with("the certificate request's"), "{name}: {err}");
        }
        let ca = check_key(&from_hex(RSA_1024_SPKI), CA_KEY).unwrap_err().to_string();
        assert!(ca.starts_with("the signing CA's RSA key has 1024 bits"), "{ca}");
    }

    #[test]
    fn sha1_and_md5_signatures_are_refused_by_name() {
        let ok = [OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA384, OID_PKCS1_RSASSAPSS];
        for oid in ok {
            assert_eq!(check_csr_signature(&oid), Ok(()), "{oid}");
        }
        let sha1 = check_csr_signature(&OID_PKCS1_SHA1WITHRSA).unwrap_err().to_string();
        assert!(sha1.contains("sha1WithRSAEncryption (SHA-1)"), "{sha1}");
        let md5 = check_csr_signature(&OID_PKCS1_MD5WITHRSAENC).unwrap_err().to_string();
        assert!(md5.contains("md5WithRSAEncryption (MD5)"), "{md5}");
        let ed = check_csr_signature(&OID_SIG_ED25519).unwrap_err().to_string();
        assert!(ed.contains("1.3.101.112 is not accepted"), "{ed}");
    }

    #[test]
    fn size_and_san_limits_are_inclusive() {
        assert_eq!(check_request_size(MAX_REQUEST_BYTES), Ok(()));
        assert_eq!(
            check_request_size(MAX_REQUEST_BYTES + 1),
            Err(Weakness::RequestTooLarge {
                bytes: MAX_REQUEST_BYTES + 1
            })
        );
        assert_eq!(check_san_count(MAX_SANS), Ok(()));
        assert!(
            check_san_count(MAX_SANS + 1)
                .unwrap_err()
                .to_string()
                .contains("101 subject alternative names")
        );
    }

    #[test]
    fn bit_length_ignores_leading_zeros() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0x00]), 9);
        assert_eq!(bit_length(&[0x00]), 0);
    }

    fn from_hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    const RSA_1024_SPKI: &str = "\
        30819f300d06092a864886f70d010101050003818d0030818902818100bed01c6daa5e5506d440c1fdb019f87f6effd4\
        984f4364a283eea61d12c0439c518fd2f1530e5f9ba72c32664cdb900655e4b53210c017c728dccde83068a62d579006\
        95f6126c0fca3e0803ad0a40cef1626c410938a086452f45a84306aa4c202cf42a9274aca321a8e3e54f3eb291ee4b88\
        d31307daccade67041cb1c64350203010001";
    const P521_SPKI: &str = "\
        30819b301006072a8648ce3d020106052b81040023038186000400393edc1c7e4dcd819bce5c1a678ea2ec562523eb00\
        83308fb3ed3eb83fc7b3ea4b4956fc4bfb8d68ee7a156744d2b9265941c0ac933143e6d478525921c20a2afb00b52994\
        9c6ce99d8971e2f1829d76eeea4c3b63a8a0c18af5508b44542bf3737f58c3e0b43a597334b3ffa0e312b664cab38278\
        e496950c76af388411c8121c33c0";
    const K256_SPKI: &str = "\
        3056301006072a8648ce3d020106052b8104000a0342000496747d05648a9780c5b0d4f36d424583634a39673534aa97\
        3d63f9bb6709e315df06fd7a467a8556ba9c28b79434092419246e36dd50472486ff72dfe03a6aac";
    const ED25519_SPKI: &str = "\
        302a300506032b6570032100ffb2b85be68c214c3897554ffa1e69f2eab8fd38752c8f6d1cfe63b9d2151853";
}
