//! Name-constrained intermediates from AWS Private CA.
//!
//! PCA applies caller-chosen extensions only with an `..._APIPassthrough/V1` template; with
//! any other template it refuses `ApiPassthrough` custom extensions. So with
//! `policy.nameConstraints` on, the intermediate is issued with
//! `SubordinateCACertificate_PathLen{n}_APIPassthrough/V1` and the NameConstraints extension
//! (OID 2.5.29.30, critical, base64 DER) in `ApiPassthrough.Extensions.CustomExtensions`, as
//! AWS documents for a name-constrained subordinate CA. The controller then checks the issued
//! certificate carries exactly these constraints before it is used.

use aws_sdk_acmpca::types::{ApiPassthrough, CustomExtension, Extensions};

use crate::pki::name_constraints::{NameConstraints, OID_STRING};

/// The passthrough template for a CA certificate with `path_len`, in the CA's partition.
pub fn template_arn(partition: &str, path_len: u8) -> String {
    format!("arn:{partition}:acm-pca:::template/SubordinateCACertificate_PathLen{path_len}_APIPassthrough/V1")
}

/// `ApiPassthrough` carrying `constraints` as a critical custom extension.
pub fn api_passthrough(constraints: &NameConstraints) -> Result<ApiPassthrough, String> {
    let der = constraints.to_der()?;
    let extension = CustomExtension::builder()
        .object_identifier(OID_STRING)
        .value(base64(&der))
        .critical(true)
        .build()
        .map_err(|e| format!("NameConstraints custom extension: {e}"))?;
    Ok(ApiPassthrough::builder()
        .extensions(Extensions::builder().custom_extensions(extension).build())
        .build())
}

/// Standard base64 with padding (RFC 4648 §4), as PCA wants custom extension values.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::name_constraints::Subtree;

    #[test]
    fn base64_follows_rfc_4648_test_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn constraints_travel_as_one_critical_custom_extension_on_a_passthrough_template() {
        assert_eq!(
            template_arn("aws-us-gov", 1),
            "arn:aws-us-gov:acm-pca:::template/SubordinateCACertificate_PathLen1_APIPassthrough/V1"
        );
        let nc = NameConstraints {
            permitted: vec![Subtree::Uri("cluster.local".into())],
            excluded: vec![],
        };
        let passthrough = api_passthrough(&nc).unwrap();
        let custom = passthrough.extensions().unwrap().custom_extensions();
        assert_eq!(custom.len(), 1);
        assert_eq!(custom[0].object_identifier(), "2.5.29.30");
        assert_eq!(custom[0].critical(), Some(true));
        // The DER of tests in pki::name_constraints, base64-encoded.
        assert_eq!(custom[0].value(), "MBOgETAPhg1jbHVzdGVyLmxvY2Fs");
    }
}
