//! ARNs, templates, idempotency tokens and signing algorithms: pure string and enum mapping.

use aws_sdk_acmpca::types::{KeyAlgorithm, SigningAlgorithm};

use crate::api::issuer::PcaSigningAlgorithm;

/// Parses `arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>`.
pub fn parse_ca_arn(arn: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "acm-pca", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && resource.starts_with("certificate-authority/")
                && !resource.contains("/certificate/") =>
        {
            Ok((partition.to_string(), region.to_string()))
        }
        _ => Err(format!(
            "{arn:?} is not an AWS Private CA ARN (arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>)"
        )),
    }
}

/// The CA ARN a certificate ARN belongs to.
pub fn ca_of_certificate_arn(arn: &str) -> Option<&str> {
    arn.split_once("/certificate/").map(|(ca, _)| ca)
}

/// The signing algorithm that fits a CA key.
pub fn signing_algorithm_for(key: &KeyAlgorithm) -> Option<SigningAlgorithm> {
    Some(match key {
        KeyAlgorithm::EcPrime256v1 => SigningAlgorithm::Sha256Withecdsa,
        KeyAlgorithm::EcSecp384r1 => SigningAlgorithm::Sha384Withecdsa,
        KeyAlgorithm::EcSecp521r1 => SigningAlgorithm::Sha512Withecdsa,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => SigningAlgorithm::Sha256Withrsa,
        _ => return None,
    })
}

pub(super) fn is_ec(key: &KeyAlgorithm) -> bool {
    matches!(
        key,
        KeyAlgorithm::EcPrime256v1 | KeyAlgorithm::EcSecp384r1 | KeyAlgorithm::EcSecp521r1
    )
}

pub(super) fn spec_algorithm(a: PcaSigningAlgorithm) -> SigningAlgorithm {
    match a {
        PcaSigningAlgorithm::Sha256WithEcdsa => SigningAlgorithm::Sha256Withecdsa,
        PcaSigningAlgorithm::Sha384WithEcdsa => SigningAlgorithm::Sha384Withecdsa,
        PcaSigningAlgorithm::Sha512WithEcdsa => SigningAlgorithm::Sha512Withecdsa,
        PcaSigningAlgorithm::Sha256WithRsa => SigningAlgorithm::Sha256Withrsa,
        PcaSigningAlgorithm::Sha384WithRsa => SigningAlgorithm::Sha384Withrsa,
        PcaSigningAlgorithm::Sha512WithRsa => SigningAlgorithm::Sha512Withrsa,
    }
}

/// The template for a CA certificate with `path_len`, or a leaf, in the CA's partition.
pub fn template_arn(partition: &str, path_len: Option<u8>) -> String {
    match path_len {
        Some(n) => format!("arn:{partition}:acm-pca:::template/SubordinateCACertificate_PathLen{n}/V1"),
        None => format!("arn:{partition}:acm-pca:::template/EndEntityCertificate/V1"),
    }
}
/// PCA idempotency tokens are at most 36 characters; a Kubernetes UID is exactly 36.
pub fn idempotency_token(uid: &str) -> String {
    uid.chars().filter(|c| !c.is_whitespace()).take(36).collect()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_templates_and_algorithms() {
        assert_eq!(
            parse_ca_arn("arn:aws-us-gov:acm-pca:us-gov-west-1:123456789012:certificate-authority/abc").unwrap(),
            ("aws-us-gov".to_string(), "us-gov-west-1".to_string())
        );
        for bad in [
            "",
            "arn:aws:acm:us-east-1:123456789012:certificate/x",
            "arn:aws:acm-pca:us-east-1:1:certificate-authority/x",
        ] {
            assert!(parse_ca_arn(bad).is_err(), "{bad}");
        }
        assert_eq!(
            template_arn("aws-cn", Some(0)),
            "arn:aws-cn:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
        );
        assert_eq!(
            template_arn("aws", None),
            "arn:aws:acm-pca:::template/EndEntityCertificate/V1"
        );
        // The CA's key decides, whatever the CSR's key is.
        assert_eq!(
            signing_algorithm_for(&KeyAlgorithm::Rsa2048),
            Some(SigningAlgorithm::Sha256Withrsa)
        );
        assert_eq!(
            signing_algorithm_for(&KeyAlgorithm::EcSecp384r1),
            Some(SigningAlgorithm::Sha384Withecdsa)
        );
        assert_eq!(
            ca_of_certificate_arn("arn:aws:acm-pca:r:123456789012:certificate-authority/ca/certificate/c"),
            Some("arn:aws:acm-pca:r:123456789012:certificate-authority/ca")
        );
        assert_eq!(idempotency_token("0b3d2c1a-0000-4000-8000-123456789abc").len(), 36);
    }
}
