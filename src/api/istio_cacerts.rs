//! `IstioCACerts`: keep istiod's `cacerts` Secret written from the Secret cert-manager issues
//! for istiod's intermediate, verified as istiod would, and track every renewal window.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Keeps a `cacerts` Secret for istiod in sync with a cert-manager Certificate's Secret.
// kube-derive's `printcolumn(...)` blocks repeat keys such as `type_` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "meshca.io",
    version = "v1alpha1",
    kind = "IstioCACerts",
    plural = "istiocacerts",
    singular = "istiocacert",
    shortname = "icc",
    category = "meshca",
    namespaced,
    status = "IstioCACertsStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Healthy",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="CertificatesHealthy")].status"#
    ),
    printcolumn(
        name = "Intermediate Expiry",
        type_ = "string",
        json_path = ".status.intermediate.notAfter"
    ),
    printcolumn(
        name = "Next Renewal",
        type_ = "string",
        json_path = ".status.intermediate.renewalTime"
    ),
    printcolumn(name = "Root Expiry", type_ = "string", json_path = ".status.roots[0].notAfter"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct IstioCACertsSpec {
    /// The Secret cert-manager writes for the istiod-intermediate Certificate (`tls.crt`,
    /// `tls.key`, `ca.crt`), in this namespace.
    #[schemars(length(min = 1))]
    pub source_secret_name: String,
    /// The Secret istiod reads, in this namespace.
    #[serde(default = "default_target")]
    pub target_secret_name: String,
    /// Take over an existing target Secret that mesh-ca-issuer did not create. Off by default:
    /// a hand-made `cacerts` is never replaced without being asked. A Secret holding istiod's
    /// own self-signed CA (`istio-generated`) is never taken over.
    #[serde(default)]
    pub adopt_existing: bool,
}

fn default_target() -> String {
    "cacerts".to_string()
}

/// What the controller last saw and wrote.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioCACertsStatus {
    /// `Ready`: the target holds a verified bundle from the source. `CertificatesHealthy`:
    /// every tracked certificate is in its healthy window and no dangerous combination exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The intermediate istiod signs with (`ca-cert.pem` of the target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<TrackedCertificate>,
    /// The trust anchors in `root-cert.pem`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<TrackedCertificate>,
    /// The issuer's backend CA that signs the intermediate.
    #[serde(default, rename = "backendCA", skip_serializing_if = "Option::is_none")]
    pub backend_ca: Option<TrackedCertificate>,
}

/// A certificate whose renewal we track.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackedCertificate {
    pub subject: String,
    #[serde(rename = "fingerprintSHA256")]
    pub fingerprint_sha256: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// When it should be renewed (RFC 3339): the Certificate's `status.renewalTime` when known,
    /// else two thirds into its lifetime (cert-manager's default).
    pub renewal_time: String,
    pub window: RenewalWindow,
    /// The X.509 name constraints the certificate carries, if any (shown for the intermediate:
    /// the identities istiod can mint with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_constraints: Option<super::name_constraints::NameConstraintsSummary>,
}

/// Where a certificate stands in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum RenewalWindow {
    /// Before its renewal time (plus grace).
    #[default]
    Healthy,
    /// Past its renewal time (plus grace) and not renewed.
    RenewalDue,
    /// Less than the expiring threshold left.
    Expiring,
    /// Past notAfter.
    Expired,
}

impl RenewalWindow {
    pub fn as_str(self) -> &'static str {
        match self {
            RenewalWindow::Healthy => "Healthy",
            RenewalWindow::RenewalDue => "RenewalDue",
            RenewalWindow::Expiring => "Expiring",
            RenewalWindow::Expired => "Expired",
        }
    }
}
