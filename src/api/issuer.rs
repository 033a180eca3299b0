//! `MeshCAIssuer` (namespaced) and `ClusterMeshCAIssuer` (cluster-scoped): one spec type, two
//! kinds, exactly as cert-manager's `Issuer`/`ClusterIssuer` pair.
//!
//! kube-derive generates one kind per spec struct, so `MeshCAIssuer` is derived and
//! `ClusterMeshCAIssuer` is written out below with the same spec and status types; its CRD is
//! the namespaced one with names and scope swapped, so the two schemas cannot drift apart.

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::core::{ClusterResourceScope, Resource};
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The kind names, as they appear in a CertificateRequest's `spec.issuerRef.kind`.
pub const ISSUER_KIND: &str = "MeshCAIssuer";
pub const CLUSTER_ISSUER_KIND: &str = "ClusterMeshCAIssuer";

/// Configuration of an issuer: which PKI backend signs, and what it may sign.
// kube-derive's `printcolumn(...)` blocks repeat keys such as `type_` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "meshca.io",
    version = "v1alpha1",
    kind = "MeshCAIssuer",
    plural = "meshcaissuers",
    singular = "meshcaissuer",
    shortname = "meshissuer",
    category = "meshca",
    category = "cert-manager",
    namespaced,
    status = "IssuerStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Backend", type_ = "string", json_path = ".status.backend"),
    printcolumn(name = "CA Expiry", type_ = "string", json_path = ".status.ca.notAfter"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#,
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// A CEL rule rather than `oneOf`: the API server answers it in words a user can act on, while a
// failed `oneOf` ("must validate one and only one schema") also stops every CEL rule from
// being checked.
#[schemars(extend(
    "x-kubernetes-validations" = [{
        "rule": "[has(self.localCA), has(self.awsPCA), has(self.vault)].exists_one(b, b)",
        "message": "exactly one backend must be set: localCA, awsPCA or vault"
    }]
))]
pub struct IssuerSpec {
    /// Sign with a root CA whose certificate and key are kept in a Kubernetes Secret (the
    /// layout of cert-manager's CA issuer: `tls.crt`, `tls.key`). Exactly one backend must be set.
    #[serde(default, rename = "localCA", skip_serializing_if = "Option::is_none")]
    pub local_ca: Option<LocalCA>,
    /// Sign with AWS Private CA (ACM PCA). Exactly one backend must be set.
    #[serde(default, rename = "awsPCA", skip_serializing_if = "Option::is_none")]
    pub aws_pca: Option<AwsPCA>,
    /// Sign with the PKI secrets engine of HashiCorp Vault or OpenBao (`sign-intermediate`).
    /// Exactly one backend must be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<Vault>,
    /// What this issuer is allowed to sign.
    #[serde(default)]
    pub policy: IssuancePolicy,
    /// Certificates this issuer's CA has revoked: an intermediate whose key was compromised,
    /// say. With the local CA backend they go into the CRL of its CA that every IstioCACerts
    /// with `spec.revocation.enabled` writes into `ca-crl.pem` (`meshca revoke` adds entries).
    #[serde(
        default,
        deserialize_with = "super::null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 1000), extend("nullable" = true))]
    pub revoked: Vec<RevokedCertificate>,
    /// CRLs for CAs of the chain that the backend neither signs nor publishes (AWS Private CA,
    /// a CA above a local sub-CA): PEM or DER CRLs, each matched to its CA by signature, from a
    /// ConfigMap key (in the namespace the issuer reads Secrets from) or an `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_from: Option<CrlFrom>,
}

/// One revoked certificate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedCertificate {
    /// Its serial number in hex, as `openssl x509 -serial` or `status.intermediate` show it
    /// (case, colons and a leading `0x` ignored).
    #[schemars(regex(pattern = r"^(0[xX])?[0-9a-fA-F:]{1,59}$"))]
    pub serial_number: String,
    /// Why (RFC 5280): `unspecified` (the default), `keyCompromise`, `cACompromise`,
    /// `superseded` or `cessationOfOperation`.
    #[serde(default)]
    pub reason: RevocationReason,
    /// When it was revoked (RFC 3339). Unset: when the entry was added, as the issuer's
    /// `managedFields` record it (`meshca revoke` always sets it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub revoked_at: Option<String>,
}

/// RFC 5280 revocation reasons, as cert-manager and openssl name them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RevocationReason {
    #[default]
    #[serde(rename = "unspecified")]
    Unspecified,
    #[serde(rename = "keyCompromise")]
    KeyCompromise,
    #[serde(rename = "cACompromise")]
    CaCompromise,
    #[serde(rename = "superseded")]
    Superseded,
    #[serde(rename = "cessationOfOperation")]
    CessationOfOperation,
}

/// Where CRLs the backend cannot give are read from: exactly one of a ConfigMap key and a URL.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend(
    "x-kubernetes-validations" = [{
        "rule": "has(self.configMapKeyRef) != has(self.url)",
        "message": "exactly one of configMapKeyRef and url must be set"
    }]
))]
pub struct CrlFrom {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeySelector>,
    /// An `https://` URL that serves the CRLs (AWS Private CA writes its CA's CRL to S3, as DER
    /// at `crl/<CA id>.crl` of its bucket, or its custom CNAME). Fetched on every look, at
    /// least every 5 minutes; its server is checked against `caBundle`, else the system's
    /// roots. The CRLs' own signatures are what make them trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://"))]
    pub url: Option<String>,
    /// PEM CA certificates for `url`'s server; default: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
}

/// A key of a ConfigMap.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeySelector {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The local root CA backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalCA {
    /// Name of the Secret holding the root's `tls.crt` and `tls.key`. A MeshCAIssuer reads it
    /// from its own namespace, a ClusterMeshCAIssuer from the cluster resource namespace
    /// (`--cluster-resource-namespace`, default `cert-manager`).
    #[schemars(length(min = 1))]
    pub secret_name: String,
    /// When set and the Secret does not exist, create a self-signed root in it. An existing
    /// Secret is never overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<RootBootstrap>,
}

/// The AWS Private CA backend.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsPCA {
    /// ARN of the private CA (`arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>`).
    #[schemars(length(min = 1))]
    pub arn: String,
    /// AWS region; default: the region in `arn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL override (VPC endpoints, tests); default: the regional endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A Secret with static credentials, read like the local CA's Secret (the issuer's
    /// namespace, or the cluster resource namespace for a ClusterMeshCAIssuer). Without it:
    /// the standard AWS credential chain (environment, IRSA web identity, EKS Pod Identity, IMDS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<AwsCredentialsSecretRef>,
    /// A role to assume with those credentials.
    #[serde(default, rename = "roleARN", skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Path length of the issued intermediate: selects the template
    /// `SubordinateCACertificate_PathLen{n}/V1`. Must not exceed `policy.maxPathLen`.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3))]
    pub path_len: u8,
    /// Signing algorithm; default: the one that fits the CA's key (never the CSR's).
    // The schema is the enum's own: Kubernetes rejects `null` among enum values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "PcaSigningAlgorithm")]
    pub signing_algorithm: Option<PcaSigningAlgorithm>,
}

/// Where static AWS credentials are kept. Key names default to those the AWS PCA issuer's
/// users already use.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AwsCredentialsSecretRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_access_key_id_key", rename = "accessKeyIDKey")]
    pub access_key_id_key: String,
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
    #[serde(default = "default_session_token_key")]
    pub session_token_key: String,
}

impl AwsCredentialsSecretRef {
    /// A reference to Secret `name` with the default key names.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            access_key_id_key: default_access_key_id_key(),
            secret_access_key_key: default_secret_access_key_key(),
            session_token_key: default_session_token_key(),
        }
    }
}

fn default_access_key_id_key() -> String {
    "AWS_ACCESS_KEY_ID".into()
}
fn default_secret_access_key_key() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}
fn default_session_token_key() -> String {
    "AWS_SESSION_TOKEN".into()
}

/// The Vault / OpenBao backend. Field names follow cert-manager's Vault issuer where the
/// meaning is the same.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Vault {
    /// The server's URL, e.g. `https://vault.example:8200`. `https://`, or `http://` to a
    /// loopback address only (a token must never cross a network in clear). On a MeshCAIssuer,
    /// `--vault-servers` may restrict which servers are allowed.
    #[schemars(length(min = 1))]
    pub server: String,
    /// The `sign-intermediate` endpoint, without `/v1/`: `<mount>/root/sign-intermediate` (the
    /// mount's default issuer) or `<mount>/issuer/<ref>/sign-intermediate`.
    #[schemars(length(min = 1))]
    pub path: String,
    /// A Vault Enterprise (or OpenBao) namespace, sent as `X-Vault-Namespace` on every call,
    /// auth included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// PEM bundle of the CAs that sign the server's TLS certificate (base64 in YAML, as
    /// cert-manager's `caBundle`). Neither this nor `caBundleSecretRef`: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>", extend("format" = "byte"))]
    pub ca_bundle: Option<k8s_openapi::ByteString>,
    /// A Secret key holding that bundle (default key `ca.crt`), read from the issuer's
    /// namespace (the cluster resource namespace for a ClusterMeshCAIssuer). Not with `caBundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeySelector>,
    /// How the controller logs in: exactly one method.
    pub auth: VaultAuth,
}

/// Exactly one way of getting a Vault token.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
// CEL, not `oneOf`, for the same reason as the backends above.
#[schemars(extend(
    "x-kubernetes-validations" = [{
        "rule": "[has(self.kubernetes), has(self.appRole), has(self.tokenSecretRef)].exists_one(b, b)",
        "message": "exactly one Vault auth method must be set: kubernetes, appRole or tokenSecretRef"
    }]
))]
pub struct VaultAuth {
    /// Vault's Kubernetes auth method: log in with a ServiceAccount token of the issuer's
    /// namespace (the cluster resource namespace for a ClusterMeshCAIssuer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultKubernetesAuth>,
    /// Vault's AppRole auth method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<VaultAppRole>,
    /// A Vault token kept in a Secret (default key `token`). It is used as it is: never
    /// renewed, never revoked by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeySelector>,
}

/// Vault's Kubernetes auth method.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultKubernetesAuth {
    /// Where the auth method is mounted, with the `/v1/` prefix as in cert-manager.
    #[serde(default = "default_kubernetes_mount_path")]
    pub mount_path: String,
    /// The Vault role to log in as.
    #[schemars(length(min = 1))]
    pub role: String,
    /// The ServiceAccount whose token (made through the TokenRequest API, valid 10 minutes)
    /// logs in. Without it the controller's own ServiceAccount token is used: ambient
    /// credentials, see docs/vault.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_ref: Option<VaultServiceAccountRef>,
}

fn default_kubernetes_mount_path() -> String {
    "/v1/auth/kubernetes".to_string()
}

/// A ServiceAccount in the issuer's namespace (never another's: there is no namespace field).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultServiceAccountRef {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Audiences of the token, besides the two always included: `vault://<namespace>/<issuer>`
    /// (`vault://<issuer>` for a ClusterMeshCAIssuer) and the `server` URL, as cert-manager does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
}

/// Vault's AppRole auth method.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VaultAppRole {
    /// Where the AppRole auth method is mounted, without `/v1/auth/` (as in cert-manager).
    #[serde(default = "default_app_role_path")]
    pub path: String,
    /// The role's `role_id` (not a secret).
    #[serde(rename = "roleId")]
    #[schemars(length(min = 1))]
    pub role_id: String,
    /// The Secret key holding the `secret_id` (default key `secretId`).
    pub secret_ref: SecretKeySelector,
}

fn default_app_role_path() -> String {
    "approle".to_string()
}

/// One key of a Secret in the issuer's namespace (the cluster resource namespace for a
/// ClusterMeshCAIssuer).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key; each field that takes a selector says its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeySelector {
    /// The selector's key, or `default` when it names none.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().filter(|k| !k.is_empty()).unwrap_or(default)
    }
}

/// PCA signing algorithms (ECDSA ones need an EC CA key, RSA ones an RSA key).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PcaSigningAlgorithm {
    #[serde(rename = "SHA256WITHECDSA")]
    Sha256WithEcdsa,
    #[serde(rename = "SHA384WITHECDSA")]
    Sha384WithEcdsa,
    #[serde(rename = "SHA512WITHECDSA")]
    Sha512WithEcdsa,
    #[serde(rename = "SHA256WITHRSA")]
    Sha256WithRsa,
    #[serde(rename = "SHA384WITHRSA")]
    Sha384WithRsa,
    #[serde(rename = "SHA512WITHRSA")]
    Sha512WithRsa,
}

/// How to create a self-signed root when its Secret does not exist yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootBootstrap {
    /// Subject of the root certificate.
    #[serde(default)]
    pub subject: BootstrapSubject,
    /// Key algorithm of the root.
    #[serde(default)]
    pub private_key: PrivateKeySpec,
    /// Lifetime of the root, as a Go duration (e.g. "87600h" = 10 years).
    #[serde(default = "default_root_duration")]
    pub duration: String,
}

impl Default for RootBootstrap {
    fn default() -> Self {
        Self {
            subject: BootstrapSubject::default(),
            private_key: PrivateKeySpec::default(),
            duration: default_root_duration(),
        }
    }
}

fn default_root_duration() -> String {
    "87600h".to_string()
}

/// The subject of a bootstrapped root.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSubject {
    #[serde(default = "default_root_common_name")]
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
}

impl Default for BootstrapSubject {
    fn default() -> Self {
        Self {
            common_name: default_root_common_name(),
            organizations: Vec::new(),
        }
    }
}

fn default_root_common_name() -> String {
    "mesh-ca-issuer root CA".to_string()
}

/// A private key algorithm and size, named as in cert-manager's `Certificate.spec.privateKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Key size: 256 or 384 for ECDSA (default 256); 2048, 3072 or 4096 for RSA (default 2048).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

impl Default for PrivateKeySpec {
    fn default() -> Self {
        Self {
            algorithm: KeyAlgorithm::Ecdsa,
            size: None,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    #[serde(rename = "RSA")]
    Rsa,
}

/// Limits on what an issuer signs. Defaults fit an istiod intermediate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuancePolicy {
    /// Refuse requests that do not ask for a CA certificate (`spec.isCA` on the request).
    #[serde(default = "default_true", rename = "requireCA")]
    pub require_ca: bool,
    /// The path length constraint written into signed CA certificates, and the highest a
    /// request may ask for. 0 means the intermediate can sign only leaf certificates.
    #[serde(default)]
    #[schemars(range(min = 0, max = 8))]
    pub max_path_len: u8,
    /// The longest lifetime a request may ask for, as a Go duration.
    #[serde(default = "default_max_duration")]
    pub max_duration: String,
    /// Trust domains that SPIFFE IDs in a CSR may name. Empty: only the controller's
    /// `--trust-domain` (default `cluster.local`). Every URI SAN must be a valid SPIFFE ID.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_trust_domains: Vec<String>,
    /// ClusterMeshCAIssuer only: namespaces whose CertificateRequests it signs (`"*"`: any).
    /// Empty: only the controller's `--istio-namespaces` (default `istio-system`). A
    /// MeshCAIssuer signs only for its own namespace, and is not Ready when this is set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(pattern(r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$"), length(max = 63)))]
    pub allowed_namespaces: Vec<String>,
    /// Constrain every signed intermediate to its SPIFFE trust domains with an X.509
    /// NameConstraints extension (see docs/name-constraints.md). Off by default.
    #[serde(default, skip_serializing_if = "is_default")]
    pub name_constraints: super::name_constraints::NameConstraintsPolicy,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Default for IssuancePolicy {
    fn default() -> Self {
        Self {
            require_ca: true,
            max_path_len: 0,
            max_duration: default_max_duration(),
            allowed_trust_domains: Vec::new(),
            allowed_namespaces: Vec::new(),
            name_constraints: Default::default(),
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_duration() -> String {
    "8760h".to_string()
}

/// What the controller last observed of an issuer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready` tells whether requests can be signed; `observedGeneration` says for which spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The configured backend: `localCA`, `awsPCA` or `vault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The backend's signing CA, as last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateSummary>,
    /// Namespaces whose requests this issuer signs, as in effect (policy and controller
    /// defaults applied); `"*"` means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_namespaces: Vec<String>,
    /// Trust domains SPIFFE IDs in requests may name, as in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_trust_domains: Vec<String>,
}

/// Identity and lifetime of a certificate, for status and renewal tracking.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    pub subject: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
    /// Hex SHA-256 of the DER certificate.
    #[serde(rename = "fingerprintSHA256")]
    pub fingerprint_sha256: String,
}

// === impl ClusterMeshCAIssuer ===

/// The cluster-scoped issuer kind: same spec and status as [`MeshCAIssuer`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMeshCAIssuer {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IssuerStatus>,
}

impl ClusterMeshCAIssuer {
    pub fn new(name: &str, spec: IssuerSpec) -> Self {
        Self {
            api_version: format!("{}/{}", super::GROUP, super::VERSION),
            kind: CLUSTER_ISSUER_KIND.to_string(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

impl Resource for ClusterMeshCAIssuer {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        CLUSTER_ISSUER_KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        super::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        super::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "clustermeshcaissuers".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl CustomResourceExt for ClusterMeshCAIssuer {
    fn crd() -> CustomResourceDefinition {
        let mut crd = MeshCAIssuer::crd();
        crd.metadata.name = Some(Self::crd_name().to_string());
        crd.spec.scope = "Cluster".to_string();
        let names = &mut crd.spec.names;
        names.kind = CLUSTER_ISSUER_KIND.to_string();
        names.list_kind = Some(format!("{CLUSTER_ISSUER_KIND}List"));
        names.plural = "clustermeshcaissuers".to_string();
        names.singular = Some("clustermeshcaissuer".to_string());
        names.short_names = Some(Self::shortnames().iter().map(|s| s.to_string()).collect());
        crd
    }
    fn crd_name() -> &'static str {
        "clustermeshcaissuers.meshca.io"
    }
    fn api_resource() -> kube::core::ApiResource {
        kube::core::ApiResource::erase::<Self>(&())
    }
    fn shortnames() -> &'static [&'static str] {
        &["clustermeshissuer"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_share_one_schema() {
        let ns = MeshCAIssuer::crd();
        let cluster = ClusterMeshCAIssuer::crd();
        assert_eq!(ns.spec.versions, cluster.spec.versions);
        assert_eq!(cluster.spec.scope, "Cluster");
        assert_eq!(ns.spec.scope, "Namespaced");
        assert_eq!(cluster.spec.names.kind, "ClusterMeshCAIssuer");
        assert_eq!(cluster.metadata.name.as_deref(), Some("clustermeshcaissuers.meshca.io"));
    }

    #[test]
    fn empty_policy_means_the_istiod_intermediate_defaults() {
        let spec: IssuerSpec = serde_json::from_value(serde_json::json!({"localCA": {"secretName": "root"}})).unwrap();
        assert!(spec.policy.require_ca);
        assert_eq!(spec.policy.max_path_len, 0);
        assert_eq!(spec.policy.max_duration, "8760h");
        assert!(spec.policy.allowed_trust_domains.is_empty());
    }

    #[test]
    fn cluster_issuer_round_trips_with_api_version_and_kind() {
        let issuer = ClusterMeshCAIssuer::new("mesh", IssuerSpec::default());
        let json = serde_json::to_value(&issuer).unwrap();
        assert_eq!(json["apiVersion"], "meshca.io/v1alpha1");
        assert_eq!(json["kind"], "ClusterMeshCAIssuer");
        let back: ClusterMeshCAIssuer = serde_json::from_value(json).unwrap();
        assert_eq!(back, issuer);
    }
}
