//! The part of cert-manager's `cert-manager.io/v1` API that this issuer reads and writes,
//! written by hand (the way stackable's secret-operator carries foreign types).
//!
//! These types are **never** emitted as CRDs: cert-manager owns them, and the tests and the demo
//! install cert-manager's own CRDs (`hack/cert-manager crds`). `tests/cert_manager.rs` checks
//! that every field these types carry exists in those CRDs with the same type. Upstream keys the
//! `conditions` list by `type`, which is what lets our server-side apply own only the `Ready`
//! condition while the approver owns `Approved`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// cert-manager's API group.
pub const GROUP: &str = "cert-manager.io";

/// Annotation cert-manager puts on a request and on the Secret it writes: the Certificate's name.
pub const CERTIFICATE_NAME_ANNOTATION: &str = "cert-manager.io/certificate-name";
/// Annotations cert-manager puts on the Secret it writes: which issuer signed it.
pub const ISSUER_NAME_ANNOTATION: &str = "cert-manager.io/issuer-name";
pub const ISSUER_KIND_ANNOTATION: &str = "cert-manager.io/issuer-kind";
pub const ISSUER_GROUP_ANNOTATION: &str = "cert-manager.io/issuer-group";

/// Condition types and reasons of a CertificateRequest (cert-manager's `apis/certmanager/v1`).
pub mod condition {
    pub const READY: &str = "Ready";
    pub const APPROVED: &str = "Approved";
    pub const DENIED: &str = "Denied";
    pub const INVALID_REQUEST: &str = "InvalidRequest";

    pub const REASON_PENDING: &str = "Pending";
    pub const REASON_FAILED: &str = "Failed";
    pub const REASON_ISSUED: &str = "Issued";
    pub const REASON_DENIED: &str = "Denied";
}

/// A request for a signed certificate, created by cert-manager's Certificate controller.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "CertificateRequest",
    plural = "certificaterequests",
    singular = "certificaterequest",
    shortname = "cr",
    shortname = "crs",
    category = "cert-manager",
    namespaced,
    status = "CertificateRequestStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestSpec {
    /// Requested lifetime (Go duration string, e.g. "2160h"); the issuer may ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Which issuer should sign this request.
    pub issuer_ref: IssuerReference,
    /// PEM-encoded PKCS#10 CSR (base64 in JSON, as upstream's `format: byte`).
    #[serde(with = "base64_bytes")]
    #[schemars(with = "String", extend("format" = "byte"))]
    pub request: Vec<u8>,
    /// Whether a CA certificate is requested (cert-manager does not put BasicConstraints in the CSR).
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// Requested key usages (cert-manager's names, e.g. "cert sign").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub usages: Option<Vec<String>>,
    /// Filled in by cert-manager's webhook: who created the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub groups: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<BTreeMap<String, Vec<String>>>,
}

/// Reference to an issuer: `group`/`kind`/`name`, resolved strictly by kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct IssuerReference {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What the issuer writes back (through the `/status` subresource only).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<CertificateRequestCondition>>,
    /// PEM: the signed certificate followed by intermediates, root excluded.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64_bytes")]
    #[schemars(with = "Option<String>", extend("format" = "byte"))]
    pub certificate: Option<Vec<u8>>,
    /// PEM: the root CA of the chain.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_base64_bytes")]
    #[schemars(with = "Option<String>", extend("format" = "byte"))]
    pub ca: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_time: Option<Time>,
}

/// One condition of a CertificateRequest (no `observedGeneration` upstream: spec is immutable),
/// or of a Certificate (its `observedGeneration` is not read here).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequestCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// "True", "False" or "Unknown".
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// The subset of a cert-manager Certificate we read: its renewal time, for renewal windows, and
/// what `meshca check` judges (CA-ness, usages, lifetimes, issuer).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    plural = "certificates",
    singular = "certificate",
    shortname = "cert",
    shortname = "certs",
    category = "cert-manager",
    namespaced,
    status = "CertificateStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub issuer_ref: IssuerReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// cert-manager v1.16+: renewBefore as a percentage of the lifetime, when `renewBefore` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_percentage: Option<i32>,
    #[serde(default, rename = "isCA", skip_serializing_if = "Option::is_none")]
    pub is_ca: Option<bool>,
    /// Key usages (cert-manager's names, e.g. "cert sign"); unset means cert-manager's defaults,
    /// "digital signature" and "key encipherment" ("cert sign" is added for `isCA`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub usages: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub uris: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When cert-manager will renew: notAfter - renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// `Ready`, and `Issuing` while cert-manager issues (or was asked to, as `cmctl renew`
    /// asks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<CertificateRequestCondition>>,
}

// === impl CertificateRequest ===

impl CertificateRequest {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&CertificateRequestCondition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }

    /// True when a condition of that type has status "True".
    pub fn condition_is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}

mod base64_bytes {
    use k8s_openapi::ByteString;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        ByteString(bytes.to_vec()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(ByteString::deserialize(d)?.0)
    }
}

mod opt_base64_bytes {
    use k8s_openapi::ByteString;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        bytes.as_ref().map(|b| ByteString(b.clone())).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<ByteString>::deserialize(d)?.map(|b| b.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_through_upstream_json() {
        // A CertificateRequest as cert-manager v1.21 writes it (request is base64 PEM).
        let json = serde_json::json!({
            "apiVersion": "cert-manager.io/v1",
            "kind": "CertificateRequest",
            "metadata": {"name": "istiod-1", "namespace": "istio-system"},
            "spec": {
                "duration": "2160h",
                "isCA": true,
                "issuerRef": {"group": "meshca.io", "kind": "MeshCAIssuer", "name": "mesh"},
                "request": "LS0tLS1CRUdJTg==",
                "usages": ["cert sign", "digital signature"]
            },
            "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "cert-manager.io"}]}
        });
        let cr: CertificateRequest = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(cr.spec.request, b"-----BEGIN");
        assert_eq!(cr.spec.is_ca, Some(true));
        assert!(cr.condition_is_true(condition::APPROVED));
        assert!(!cr.condition_is_true(condition::DENIED));
        assert_eq!(serde_json::to_value(&cr).unwrap()["spec"], json["spec"]);
    }
}
