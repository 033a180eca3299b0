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
    printcolumn(name = "Rotation", type_ = "string", json_path = ".status.rootRotation.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// Writing `cacerts` over cert-manager's Secret would destroy the source it is written from (the
// controller refuses it too: the CRD's rule is the first line, not the only one).
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.targetSecretName != self.sourceSecretName",
    "message": "targetSecretName must differ from sourceSecretName (cert-manager's Secret)"
}]))]
pub struct IstioCACertsSpec {
    /// The Secret cert-manager writes for the istiod-intermediate Certificate (`tls.crt`,
    /// `tls.key`, `ca.crt`), in this namespace.
    #[schemars(length(min = 1))]
    pub source_secret_name: String,
    /// The Secret istiod reads, in this namespace. Must be one the controller is allowed to
    /// write (its `--cacerts-secret-names` flag, Helm value `controller.cacertsSecretNames`,
    /// default `cacerts`); any other name is refused and nothing is written.
    #[serde(default = "default_target")]
    pub target_secret_name: String,
    /// Take over an existing target Secret that mesh-ca-issuer did not create: `false` (the
    /// default: a hand-made `cacerts` is never replaced without being asked), `true` or
    /// `KeepForeignKeys` (take it over; keys that are neither istiod's nor TLS ones are kept,
    /// and a `kubernetes.io/*` typed Secret carrying such keys is not deleted and re-created),
    /// or `Replace` (take it over whole: such keys are removed). A Secret holding istiod's own
    /// self-signed CA (`istio-generated`) is never taken over.
    #[serde(default)]
    #[schemars(schema_with = "adopt_existing_schema")]
    pub adopt_existing: AdoptExisting,
    /// This mesh's trust domain (istiod's `meshConfig.trustDomain`). Labels the published root
    /// and goes into `status.meshConfig`.
    #[serde(default = "default_trust_domain")]
    #[schemars(length(min = 1))]
    pub trust_domain: String,
    /// Further roots istiod must trust (other clusters' roots), appended to `root-cert.pem`
    /// after this cluster's own root. Each name appears once.
    // Nullable: server-side apply on older API servers (1.20) writes `null` when the last
    // applied entry of a list is removed.
    #[serde(
        default,
        deserialize_with = "super::null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"], "nullable" = true))]
    pub trust_anchors: Vec<TrustAnchor>,
    /// Publish this cluster's own root(s) (never the anchors) as PEM into a ConfigMap in this
    /// namespace, labelled `meshca.io/trust-domain`, for other clusters (`meshca federate`,
    /// trust-manager) to consume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_root: Option<PublishRoot>,
    /// Rotate to a new root without downtime when the source's intermediate chains to a root
    /// that `root-cert.pem` does not hold: add the new root, wait, switch the intermediate,
    /// wait out the workload certificates, remove the old root. Without it (or with
    /// `multiRootMeshEnabled: false`) a new root is refused and `cacerts` is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotation>,
    /// Write `ca-crl.pem`: one CRL for every CA of `cert-chain.pem`, kept fresh, so that a
    /// revoked intermediate (another cluster's, after `meshca revoke`) is refused by this
    /// mesh's proxies (docs/revocation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
    /// Serve this cluster's own roots (never its anchors) as a SPIFFE bundle endpoint, so
    /// that peers follow its root rotations (docs/federation.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint: Option<BundleEndpoint>,
    /// Publish this cluster's own roots and each trust anchor as ClusterTrustBundles (signer
    /// `meshca.io/<trustDomain>`), for workloads outside the mesh and trust-manager. Off by
    /// default; where the API server does not serve them the condition says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_trust_bundle: Option<ClusterTrustBundles>,
}

/// `spec.clusterTrustBundle`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterTrustBundles {
    #[serde(default)]
    pub enabled: bool,
}

/// A SPIFFE bundle endpoint (SPIFFE Federation, §4), served by every replica on
/// `--bundle-endpoint-addr` at `/` and `/<trustDomain>`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleEndpoint {
    #[serde(default)]
    pub enabled: bool,
    /// A `kubernetes.io/tls` Secret in this namespace to serve with (the `https_web` profile,
    /// or an SVID you issue). Without it the endpoint serves an X.509-SVID
    /// `spiffe://<trustDomain>/meshca/bundle-endpoint`, signed with the intermediate in
    /// `cacerts`, valid 24h (the `https_spiffe` profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// `spiffe_refresh_hint`: how often peers should fetch again. A Go duration, at least 1s;
    /// default 5m.
    #[serde(default = "default_refresh_hint")]
    pub refresh_hint: String,
}

fn default_refresh_hint() -> String {
    "5m".to_string()
}

/// The SPIFFE ID of the certificate the bundle endpoint serves by default.
pub fn bundle_endpoint_spiffe_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/meshca/bundle-endpoint")
}

/// Revocation lists for istiod's `ca-crl.pem` (Istio 1.27+).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Off by default: istiod refuses a whole `cacerts` update whose `ca-crl.pem` lacks the CRL
    /// of any CA of its chain, so this is turned on knowingly.
    #[serde(default)]
    pub enabled: bool,
    /// How long each CRL signed here is valid (its `nextUpdate - thisUpdate`). A Go duration,
    /// at least 1s; default 72h.
    #[serde(default = "default_crl_validity")]
    pub crl_validity: String,
    /// How long before its `nextUpdate` a CRL is replaced by a new one (a Go duration, less
    /// than `crlValidity`); default a third of `crlValidity`. A fetched CRL with less time
    /// left than this is not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_before: Option<String>,
}

fn default_crl_validity() -> String {
    "72h".to_string()
}

/// How a root rotation runs (docs/root-rotation.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootRotation {
    /// Confirms that istiod runs with `ISTIO_MULTIROOT_MESH=true` (Helm:
    /// `pilot.env.ISTIO_MULTIROOT_MESH: "true"`), without which istiod ignores a changed
    /// `root-cert.pem`. While false, a new root is refused.
    #[serde(default)]
    pub multi_root_mesh_enabled: bool,
    /// How long the new root sits in `root-cert.pem` (next to the old one) before the
    /// intermediate under it is written: long enough for every proxy and every peer cluster to
    /// trust it. A Go duration, at least the controller's `--min-trust-propagation-delay`
    /// (default 1m); a shorter one holds the rotation.
    #[serde(default = "default_trust_propagation_delay")]
    pub trust_propagation_delay: String,
    /// How long after the switch the old root stays trusted: above istiod's workload
    /// certificate lifetime (24h by default), so every certificate signed by the old
    /// intermediate has expired. A Go duration, at least the controller's
    /// `--workload-cert-ttl` plus `--clock-skew-allowance` (default 24h5m); a shorter one holds
    /// the rotation.
    #[serde(default = "default_workload_drain_delay")]
    pub workload_drain_delay: String,
    /// `Automatic`: move on when a delay has passed. `Manual`: move on only when asked (the
    /// `meshca.io/advance-rotation` annotation, or `meshca rotation advance`).
    #[serde(default)]
    pub mode: RotationMode,
    /// Hold the rotation in its current phase; nothing moves until it is false again.
    #[serde(default)]
    pub paused: bool,
    /// The new root a rotation may move to: its SHA-256 fingerprint, 64 hex digits as
    /// `status.roots[].fingerprintSHA256` shows them (case does not matter). A rotation starts
    /// (in either mode) only towards the root it names; any other new root waits, with
    /// `Ready=False/NewRootNotApproved` showing its fingerprint and the command that approves
    /// it (`meshca rotation approve`, which writes this field). A rotation already under way is
    /// not stopped by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    pub expected_new_root: Option<String>,
}

fn default_trust_propagation_delay() -> String {
    "1h".to_string()
}

fn default_workload_drain_delay() -> String {
    "25h".to_string()
}

impl Default for RootRotation {
    fn default() -> Self {
        Self {
            multi_root_mesh_enabled: false,
            trust_propagation_delay: default_trust_propagation_delay(),
            workload_drain_delay: default_workload_drain_delay(),
            mode: RotationMode::Automatic,
            paused: false,
            expected_new_root: None,
        }
    }
}

/// Who moves a rotation to its next phase.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RotationMode {
    #[default]
    Automatic,
    Manual,
}

/// On the IstioCACerts: end the named phase once, as soon as its delay has passed
/// (`status.rootRotation.nextPhaseAt`); before that it is refused and removed. Naming the phase
/// means a stale annotation never skips a second phase. The emergency value
/// `force-<the phase it moves to>` (`force-SwitchingIntermediate`, `force-RemovingOldRoot`) acts
/// at once, whatever the delay, and raises a Warning event naming who set it.
pub const ADVANCE_ROTATION_ANNOTATION: &str = "meshca.io/advance-rotation";

/// Where a root rotation stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RotationPhase {
    /// `root-cert.pem` holds the old root(s) and the new one; istiod still signs with the old
    /// intermediate.
    AddingNewRoot,
    /// istiod signs with the new intermediate; the old root stays trusted while old workload
    /// certificates drain.
    SwitchingIntermediate,
    /// The old root is cut off `root-cert.pem`.
    RemovingOldRoot,
    /// Done: only the new root (and any trust anchors) remains.
    Completed,
    /// The source went back to the old root before the switch; the new root was cut off again.
    RolledBack,
}

impl RotationPhase {
    pub const ALL: [RotationPhase; 5] = [
        RotationPhase::AddingNewRoot,
        RotationPhase::SwitchingIntermediate,
        RotationPhase::RemovingOldRoot,
        RotationPhase::Completed,
        RotationPhase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RotationPhase::AddingNewRoot => "AddingNewRoot",
            RotationPhase::SwitchingIntermediate => "SwitchingIntermediate",
            RotationPhase::RemovingOldRoot => "RemovingOldRoot",
            RotationPhase::Completed => "Completed",
            RotationPhase::RolledBack => "RolledBack",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s.trim())
    }

    /// The phase an advance moves this one into (`force-<that phase>` names it).
    pub fn next(self) -> Option<Self> {
        match self {
            RotationPhase::AddingNewRoot => Some(RotationPhase::SwitchingIntermediate),
            RotationPhase::SwitchingIntermediate => Some(RotationPhase::RemovingOldRoot),
            _ => None,
        }
    }

    /// A rotation in one of these phases is under way.
    pub fn in_progress(self) -> bool {
        matches!(
            self,
            RotationPhase::AddingNewRoot | RotationPhase::SwitchingIntermediate | RotationPhase::RemovingOldRoot
        )
    }
}

/// `status.rootRotation`: the whole state of a rotation (nothing is kept only in memory).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootRotationStatus {
    pub phase: RotationPhase,
    /// SHA-256 fingerprints of the roots being replaced.
    pub old_roots: Vec<String>,
    /// SHA-256 fingerprint of the new root.
    pub new_root: String,
    /// RFC 3339.
    pub phase_started_at: String,
    /// When the phase may end (RFC 3339): in `Automatic` mode it ends then, in `Manual` mode
    /// it may be advanced from then on; an advance annotation before then is refused (only
    /// `force-<phase>` acts earlier). Absent in a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_phase_at: Option<String>,
    /// Every phase change of this rotation, oldest first.
    #[serde(default)]
    pub history: Vec<RotationHistoryEntry>,
}

/// One phase change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RotationHistoryEntry {
    pub phase: RotationPhase,
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// Whether, and how, a target Secret that mesh-ca-issuer did not create is taken over
/// (`spec.adoptExisting`). Written as `false`/`true` before `Replace` existed; both stay
/// accepted, `true` meaning `KeepForeignKeys`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AdoptExisting {
    /// `false`: never taken over.
    #[default]
    Never,
    /// `true`: taken over; keys other than istiod's and the TLS ones are kept, and a typed
    /// Secret carrying them is never deleted to re-create it.
    KeepForeignKeys,
    /// Taken over whole, as `true` did before: other keys are removed, a typed Secret is
    /// deleted and re-created as Opaque whatever it carries.
    Replace,
    /// A value that is none of these (the API server cannot check it: see
    /// [`adopt_existing_schema`]); refused by the controller, with the value.
    Invalid(String),
}

impl AdoptExisting {
    /// Whether a Secret we did not create may be taken over at all.
    pub fn adopts(&self) -> bool {
        matches!(self, AdoptExisting::KeepForeignKeys | AdoptExisting::Replace)
    }
}

impl Serialize for AdoptExisting {
    /// `false`/`true` for the two values older releases knew, so an object written by this
    /// release reads the same to them; the name otherwise.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            AdoptExisting::Never => serializer.serialize_bool(false),
            AdoptExisting::KeepForeignKeys => serializer.serialize_bool(true),
            AdoptExisting::Replace => serializer.serialize_str("Replace"),
            AdoptExisting::Invalid(value) => serializer.serialize_str(value),
        }
    }
}

impl<'de> Deserialize<'de> for AdoptExisting {
    /// Never fails: one object with a bad value must not break the watch of all of them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Null | serde_json::Value::Bool(false) => AdoptExisting::Never,
            serde_json::Value::Bool(true) => AdoptExisting::KeepForeignKeys,
            serde_json::Value::String(s) => match s.as_str() {
                "Never" => AdoptExisting::Never,
                "KeepForeignKeys" => AdoptExisting::KeepForeignKeys,
                "Replace" => AdoptExisting::Replace,
                _ => AdoptExisting::Invalid(s),
            },
            other => AdoptExisting::Invalid(other.to_string()),
        })
    }
}

/// `adoptExisting` takes a boolean (as before) or a name. A structural CRD schema has one type
/// per field (int-or-string is the only union), so the field is left untyped
/// (`x-kubernetes-preserve-unknown-fields`) and the controller judges the value
/// (`InvalidSpec` naming it). CEL rules cannot see untyped fields, so none applies here.
fn adopt_existing_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Take over an existing target Secret that mesh-ca-issuer did not create: false (default), true or KeepForeignKeys (keys other than istiod's and the TLS ones are kept; a kubernetes.io/* typed Secret carrying such keys is never deleted to re-create it), or Replace (taken over whole). A Secret holding istiod's own self-signed CA (istio-generated) is never taken over.",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// istiod's CA Secret: the default `targetSecretName`, and the default (and usually only) name
/// the controller may write (`--cacerts-secret-names`).
pub const DEFAULT_TARGET_SECRET_NAME: &str = "cacerts";

fn default_target() -> String {
    DEFAULT_TARGET_SECRET_NAME.to_string()
}

impl Default for IstioCACertsSpec {
    /// The defaults the API server fills in; `sourceSecretName` is empty (and required).
    fn default() -> Self {
        Self {
            source_secret_name: String::new(),
            target_secret_name: default_target(),
            adopt_existing: AdoptExisting::Never,
            trust_domain: default_trust_domain(),
            trust_anchors: Vec::new(),
            publish_root: None,
            root_rotation: None,
            revocation: None,
            bundle_endpoint: None,
            cluster_trust_bundle: None,
        }
    }
}

/// The trust domain when none is given: Istio's default.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}

/// The label that names the trust domain of a published root.
pub const TRUST_DOMAIN_LABEL: &str = "meshca.io/trust-domain";
/// The key a published root is written under when `publishRoot.key` is not given.
pub const DEFAULT_PUBLISH_KEY: &str = "root-cert.pem";

/// One extra root (or several: a peer in the middle of a root rotation publishes two), read
/// from a ConfigMap or Secret key in the IstioCACerts' namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// A CEL rule rather than `oneOf`: see `IssuerSpec`.
#[schemars(extend(
    "x-kubernetes-validations" = [{
        "rule": "[has(self.configMapKeyRef), has(self.secretKeyRef), has(self.spiffeBundleEndpoint)].exists_one(b, b)",
        "message": "exactly one source must be set: configMapKeyRef, secretKeyRef or spiffeBundleEndpoint"
    }]
))]
pub struct TrustAnchor {
    /// Unique in the list; names the anchor in conditions and status.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The trust domains this root vouches for (become `trustDomainAliases` and the
    /// `caCertificates[].trustDomains` of `status.meshConfig`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    /// A ConfigMap key holding PEM certificates. Exactly one of configMapKeyRef, secretKeyRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    /// A Secret key holding PEM certificates. Exactly one of configMapKeyRef, secretKeyRef.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A peer's SPIFFE bundle endpoint, polled as its `spiffe_refresh_hint` says, so that a
    /// peer's root rotation is followed without anyone re-running `meshca federate`. The last
    /// bundle accepted is kept (ConfigMap `<name>-spiffe-bundles`) through outages and
    /// restarts. `trustDomains[0]` is the peer's trust domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_bundle_endpoint: Option<SpiffeBundleEndpoint>,
    /// Pins: the SHA-256 fingerprints (64 hex digits, as `status.roots[].fingerprintSHA256`
    /// shows them; any case) of exactly the certificates the source must hold. When set, a
    /// source holding anything else is refused and `root-cert.pem` is left as it is.
    /// `meshca federate` writes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[0-9a-fA-F]{64}$")))]
    pub fingerprints: Vec<String>,
    /// Trust a CA that is not self-signed (an intermediate) as an anchor. Off: every anchor
    /// certificate must be a self-signed root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_intermediate: bool,
}

impl TrustAnchor {
    /// The ConfigMaps this anchor reads (its key, or its endpoint's bootstrap bundle).
    pub fn reads_config_map(&self, name: &str) -> bool {
        let bootstrap = self
            .spiffe_bundle_endpoint
            .as_ref()
            .and_then(|e| e.bootstrap_bundle.as_ref());
        self.config_map_key_ref.as_ref().is_some_and(|r| r.name == name)
            || bootstrap
                .and_then(|b| b.config_map_key_ref.as_ref())
                .is_some_and(|r| r.name == name)
    }

    /// The Secrets this anchor reads.
    pub fn reads_secret(&self, name: &str) -> bool {
        let bootstrap = self
            .spiffe_bundle_endpoint
            .as_ref()
            .and_then(|e| e.bootstrap_bundle.as_ref());
        self.secret_key_ref.as_ref().is_some_and(|r| r.name == name)
            || bootstrap
                .and_then(|b| b.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == name)
    }
}

/// Where a peer's bundle is fetched from, and how the endpoint is authenticated.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "x-kubernetes-validations" = [
        {
            "rule": "self.url.startsWith('https://')",
            "message": "url must be https://"
        },
        {
            "rule": "self.profile != 'https_spiffe' || (has(self.endpointSPIFFEID) && has(self.bootstrapBundle))",
            "message": "the https_spiffe profile needs endpointSPIFFEID and bootstrapBundle"
        }
    ]
))]
pub struct SpiffeBundleEndpoint {
    /// `https://host[:port]/path`.
    #[schemars(length(min = 9, max = 2048))]
    pub url: String,
    pub profile: BundleEndpointProfile,
    /// `https_spiffe`: the one SPIFFE ID the endpoint's certificate must carry (the peer's
    /// `status.bundleEndpoint.endpointSPIFFEID`).
    #[serde(default, rename = "endpointSPIFFEID", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub endpoint_spiffe_id: Option<String>,
    /// `https_spiffe`: the peer's roots that authenticate the first fetch (PEM certificates or
    /// a SPIFFE bundle JSON). Trusted until a fetch succeeds; after that, the endpoint must
    /// chain to the last bundle accepted, so a rotation is followed with authentication all
    /// the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_bundle: Option<BundleRef>,
    /// `https_web` with a private CA: the PEM CA certificates the endpoint's certificate
    /// chains to (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub ca_bundle: Option<String>,
}

/// The SPIFFE Federation endpoint profiles.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BundleEndpointProfile {
    /// Web PKI: the endpoint's certificate names its host and chains to a CA you trust.
    #[serde(rename = "https_web")]
    HttpsWeb,
    /// The endpoint's certificate is an X.509-SVID of the peer's trust domain.
    #[serde(rename = "https_spiffe")]
    HttpsSpiffe,
}

/// A ConfigMap or Secret key in this namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "x-kubernetes-validations" = [{
        "rule": "has(self.configMapKeyRef) != has(self.secretKeyRef)",
        "message": "exactly one of configMapKeyRef and secretKeyRef must be set"
    }]
))]
pub struct BundleRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
}

/// A key of a ConfigMap or Secret in the IstioCACerts' own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Where this cluster's own root is published.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishRoot {
    /// The ConfigMap to write, in this namespace. A ConfigMap of that name that
    /// mesh-ca-issuer did not create is left untouched.
    #[schemars(length(min = 1))]
    pub config_map_name: String,
    /// The key that holds the PEM.
    #[serde(default = "default_publish_key")]
    pub key: String,
}

fn default_publish_key() -> String {
    DEFAULT_PUBLISH_KEY.to_string()
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
    /// This cluster's own roots in `root-cert.pem` (the trust anchors added for peers are in
    /// `trustAnchors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roots: Vec<TrackedCertificate>,
    /// The issuer's backend CA that signs the intermediate.
    #[serde(default, rename = "backendCA", skip_serializing_if = "Option::is_none")]
    pub backend_ca: Option<TrackedCertificate>,
    /// One entry per certificate of `spec.trustAnchors` that `root-cert.pem` holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_anchors: Vec<TrackedAnchor>,
    /// The mesh config istiod still needs for the trust anchors, and what works where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_config: Option<MeshConfigAdvice>,
    /// The current (or last) root rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotationStatus>,
    /// The new root a rotation would move to, waiting for approval
    /// (`spec.rootRotation.expectedNewRoot`, or `meshca rotation approve`, which checks the
    /// fingerprint it is given against this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_root_awaiting_approval: Option<NewRootAwaitingApproval>,
    /// The CRLs `ca-crl.pem` holds, one per CA of `cert-chain.pem` (with
    /// `spec.revocation.enabled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl: Vec<TrackedCrl>,
    /// The serial of a revoked intermediate for which cert-manager was asked for a new one
    /// (once: it retries a failed issuance with its own back-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reissue_requested_for: Option<String>,
    /// What the SPIFFE bundle endpoint serves (with `spec.bundleEndpoint.enabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint: Option<BundleEndpointStatus>,
}

/// The bundle every replica serves.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleEndpointStatus {
    /// `spiffe_sequence`: one more on every change of the roots served; never goes back.
    pub sequence: u64,
    /// The SHA-256 fingerprints of the roots served, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_roots: Vec<String>,
    /// The SPIFFE ID of the serving certificate, if it has one: what peers put in their
    /// anchor's `endpointSPIFFEID`.
    #[serde(default, rename = "endpointSPIFFEID", skip_serializing_if = "Option::is_none")]
    pub endpoint_spiffe_id: Option<String>,
    /// With `tlsSecretName`: when that certificate expires (RFC 3339). The default SVID is
    /// signed by each replica, valid 24h and renewed at half-life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_certificate_not_after: Option<String>,
}

/// How fresh an anchor fetched from a SPIFFE bundle endpoint is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnchorSource {
    pub url: String,
    /// When the bundle in use was last fetched and accepted (RFC 3339); absent: never, the
    /// bootstrap bundle is in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched: Option<String>,
    /// The `spiffe_sequence` of the bundle in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// The peer's `spiffe_refresh_hint` (e.g. `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_hint: Option<String>,
    /// Why the last fetch was refused or failed (the bundle in use stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A CRL written into `ca-crl.pem`, tracked like a certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackedCrl {
    /// The CA that signed it (its subject).
    pub issuer: String,
    /// That CA's certificate.
    #[serde(rename = "caFingerprintSHA256")]
    pub ca_fingerprint_sha256: String,
    /// The CRL number.
    pub number: u64,
    /// RFC 3339.
    pub this_update: String,
    /// RFC 3339.
    pub next_update: String,
    /// When it is replaced (RFC 3339): `refreshBefore` ahead of `nextUpdate`.
    pub refresh_at: String,
    /// The serials it revokes, lower-case hex.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
    pub window: CrlWindow,
}

/// Where a CRL stands in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum CrlWindow {
    /// Before its refresh time.
    #[default]
    Current,
    /// Past its refresh time: a new one could not be had, it stays until it expires.
    RefreshDue,
    /// Less than half the refresh window left.
    Expiring,
    /// The CRL of a CA no longer in `cert-chain.pem`: an intermediate this IstioCACerts
    /// replaced (signed with its key as it was replaced, valid until it expires), or a CA of
    /// the chain before a rotation. Workloads still holding certificates under that CA keep
    /// verifying at sidecars that check CRLs. Never refreshed; removed at its `nextUpdate`.
    Retired,
    /// The CRL of a peer's CA, from the bundle its SPIFFE bundle endpoint serves: sidecars
    /// here need it to accept that peer's workloads. The peer refreshes it; it is replaced
    /// when the peer serves a newer one, and removed at its `nextUpdate` otherwise.
    Peer,
}

/// A trust anchor certificate, tracked like a root.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackedAnchor {
    /// The `spec.trustAnchors` entry it came from.
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(flatten)]
    pub certificate: TrackedCertificate,
    /// For an anchor fetched from a SPIFFE bundle endpoint: how fresh it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AnchorSource>,
}

/// What to paste into istiod's mesh config, and which part reaches which data plane.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfigAdvice {
    /// YAML under `meshConfig:`: `trustDomain`, `trustDomainAliases` (the anchors' trust
    /// domains) and `caCertificates` (one `pem` + `trustDomains` per anchor).
    pub snippet: String,
    /// Which to use, and what works for sidecars and for ambient (ztunnel).
    pub guidance: String,
}

/// A new root that a rotation would move to once approved.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewRootAwaitingApproval {
    pub subject: String,
    /// As `status.roots[].fingerprintSHA256` shows fingerprints: 64 lower-case hex digits.
    #[serde(rename = "fingerprintSHA256")]
    pub fingerprint_sha256: String,
    /// RFC 3339.
    pub not_after: String,
}

/// A certificate whose renewal we track.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackedCertificate {
    pub subject: String,
    #[serde(rename = "fingerprintSHA256")]
    pub fingerprint_sha256: String,
    /// Its serial number, lower-case hex (what an issuer's `spec.revoked` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `true`/`false` written before `Replace` existed keep their meaning (`true` now keeps
    /// foreign keys); names are read; anything else is kept to be refused, never a failed read;
    /// the two old values are written back as booleans.
    #[test]
    fn adopt_existing_reads_booleans_and_names() {
        let spec = |adopt: serde_json::Value| {
            let json = serde_json::json!({"sourceSecretName": "src", "adoptExisting": adopt});
            serde_json::from_value::<IstioCACertsSpec>(json).map(|s| s.adopt_existing)
        };
        let cases = [
            (serde_json::json!(false), AdoptExisting::Never),
            (serde_json::json!(true), AdoptExisting::KeepForeignKeys),
            (serde_json::json!(null), AdoptExisting::Never),
            (serde_json::json!("Never"), AdoptExisting::Never),
            (serde_json::json!("KeepForeignKeys"), AdoptExisting::KeepForeignKeys),
            (serde_json::json!("Replace"), AdoptExisting::Replace),
            (serde_json::json!("replace"), AdoptExisting::Invalid("replace".into())),
            (serde_json::json!(1), AdoptExisting::Invalid("1".into())),
        ];
        for (written, read) in cases {
            assert_eq!(spec(written.clone()).unwrap(), read, "{written}");
        }
        let absent = serde_json::json!({"sourceSecretName": "src"});
        assert_eq!(
            serde_json::from_value::<IstioCACertsSpec>(absent)
                .unwrap()
                .adopt_existing,
            AdoptExisting::Never
        );
        for (value, json) in [
            (AdoptExisting::Never, serde_json::json!(false)),
            (AdoptExisting::KeepForeignKeys, serde_json::json!(true)),
            (AdoptExisting::Replace, serde_json::json!("Replace")),
        ] {
            assert_eq!(serde_json::to_value(&value).unwrap(), json);
        }
    }
}
