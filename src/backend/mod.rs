//! PKI backends behind one trait. A backend signs, and when it cannot it says what *kind* of
//! failure that is ([`FailureKind`]); it never decides a CertificateRequest's status itself —
//! `controller::certificate_request` does, in one place.

pub mod aws_pca;
pub mod binding;
pub mod coalesce;
pub mod crl;
pub mod local_ca;
pub mod signing_ca;
pub mod vault;

use std::sync::Arc;

use futures::future::BoxFuture;
use jiff::Timestamp;

use crate::api::issuer::{CertificateSummary, IssuerSpec};
use crate::pki::chain::SubCaRoom;
use crate::pki::policy::{CaLifetime, SigningPlan};
use crate::pki::{Certificate, CertificateSigningRequest};

/// What a failure means, as the backend sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The backend is working on it; ask again later (e.g. PCA's RequestInProgress).
    Pending,
    /// Transient (network, throttling, 5xx): retry with back-off, never give up early.
    Retryable,
    /// This request can never succeed as it is (malformed CSR, rejected by the CA).
    Permanent,
    /// The issuer's configuration or CA is unusable (secret missing, CA expired or disabled,
    /// access denied): the issuer is not Ready and requests wait.
    IssuerNotReady,
}

/// A backend failure: its kind, a PascalCase reason for conditions, and a message that says
/// what failed and what to do. Never contains key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: FailureKind,
    pub reason: &'static str,
    pub message: String,
    /// The backend may have signed before this failure (its answer was lost): for a backend
    /// without idempotency, a retry may then sign a second time (see
    /// [`Signer::repeats_on_retry`]).
    pub may_have_signed: bool,
}

impl BackendError {
    pub fn new(kind: FailureKind, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            reason,
            message: message.into(),
            may_have_signed: false,
        }
    }
    /// Marks the failure as one after which a certificate may exist.
    pub fn may_have_signed(mut self) -> Self {
        self.may_have_signed = true;
        self
    }
    pub fn issuer_not_ready(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(FailureKind::IssuerNotReady, reason, message)
    }
    pub fn retryable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(FailureKind::Retryable, reason, message)
    }
    pub fn permanent(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(FailureKind::Permanent, reason, message)
    }
}

/// The CA a backend signs with, as last checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaInfo {
    pub summary: CertificateSummary,
    pub lifetime: CaLifetime,
}

/// Everything a backend needs to sign one request.
pub struct SignRequest<'a> {
    pub csr: &'a CertificateSigningRequest,
    pub plan: &'a SigningPlan,
    /// The CertificateRequest's UID: the idempotency key of backends that have one.
    pub request_uid: &'a str,
    /// A backend-side id persisted on the request by an earlier attempt (e.g. a PCA ARN).
    pub backend_ref: Option<&'a str>,
}

/// A signed chain: `chain[0]` is the new certificate, followed by any intermediates, root
/// excluded; `root` is the trust anchor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedChain {
    pub chain: Vec<Certificate>,
    pub root: Certificate,
}

impl IssuedChain {
    /// PEM for `status.certificate`: the certificate followed by intermediates, root excluded.
    pub fn certificate_pem(&self) -> String {
        self.chain.iter().map(Certificate::to_pem).collect()
    }

    /// PEM for `status.ca`: the root.
    pub fn ca_pem(&self) -> String {
        self.root.to_pem()
    }
}

/// What a sign call produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignOutcome {
    Issued(IssuedChain),
    /// Accepted but not finished: persist `backend_ref` on the request, then ask again.
    InProgress {
        backend_ref: String,
    },
}

/// A PKI backend that can sign for one issuer.
pub trait Signer: Send + Sync {
    /// The backend's name as in the issuer spec (`localCA`).
    fn backend_name(&self) -> &'static str;
    /// The CA that signs.
    fn ca(&self) -> &CaInfo;
    fn sign<'a>(&'a self, request: SignRequest<'a>) -> BoxFuture<'a, Result<SignOutcome, BackendError>>;
    /// How deep a sub-CA this backend signs may be, from the path lengths of the CA's own
    /// chain. Backends that do not read that chain (AWS PCA, for now) say `Unlimited`, leaving
    /// the check to the CA service.
    fn sub_ca_room(&self) -> SubCaRoom {
        SubCaRoom::Unlimited
    }
    /// True for a backend without an idempotency key (Vault): asked again after a crash, or
    /// after an answer was lost, it signs again. The controller then marks a request before
    /// each signing, so that such a repeat is seen and counted
    /// (`meshca_signings_repeated_total`); only the certificate whose status write succeeds
    /// is ever handed out.
    fn repeats_on_retry(&self) -> bool {
        false
    }
}

/// A shared signer signs as the one it shares (the local CA backend hands out its checked CAs
/// this way).
impl<S: Signer + ?Sized> Signer for Arc<S> {
    fn backend_name(&self) -> &'static str {
        self.as_ref().backend_name()
    }
    fn ca(&self) -> &CaInfo {
        self.as_ref().ca()
    }
    fn sign<'a>(&'a self, request: SignRequest<'a>) -> BoxFuture<'a, Result<SignOutcome, BackendError>> {
        self.as_ref().sign(request)
    }
    fn sub_ca_room(&self) -> SubCaRoom {
        self.as_ref().sub_ca_room()
    }
    fn repeats_on_retry(&self) -> bool {
        self.as_ref().repeats_on_retry()
    }
}

/// Refuses a signer whose CA's path length leaves no room for the sub-CAs the issuer's policy
/// makes (`policy.maxPathLen` when the CSR asks for none): the issuer is not Ready and says
/// what to change, instead of handing out an intermediate whose workload chains Go refuses.
pub fn check_path_len_room(signer: &dyn Signer, spec: &IssuerSpec) -> Result<(), BackendError> {
    let wanted = u32::from(spec.policy.max_path_len);
    match signer.sub_ca_room() {
        room if room.allows(wanted) => Ok(()),
        SubCaRoom::None { subject, path_len } => Err(BackendError::issuer_not_ready(
            PATH_LEN_EXHAUSTED,
            format!(
                "the signing CA's chain cannot sign sub-CAs: {subject} has pathLen {path_len}, which leaves no room for istiod's intermediate; sign with a CA whose chain allows one more CA level"
            ),
        )),
        SubCaRoom::AtMost(max) => Err(BackendError::issuer_not_ready(
            PATH_LEN_EXHAUSTED,
            format!(
                "spec.policy.maxPathLen {wanted} is more than the signing CA's chain allows (at most {max}): lower spec.policy.maxPathLen to {max}"
            ),
        )),
        SubCaRoom::Unlimited => Ok(()),
    }
}

/// Reason of an issuer whose CA's path length forbids the sub-CAs it is meant to sign.
pub const PATH_LEN_EXHAUSTED: &str = "PathLenExhausted";

/// Where an issuer lives and where it may read Secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerScope {
    /// `MeshCAIssuer ns/name` or `ClusterMeshCAIssuer name`, for messages.
    pub display: String,
    /// The issuer's name (Vault's Kubernetes auth puts it in the token's audience).
    pub name: String,
    /// A namespaced issuer's own namespace, or the cluster resource namespace.
    pub secret_namespace: String,
    /// True for a ClusterMeshCAIssuer: what it may use of the controller's own identity differs.
    pub cluster_scoped: bool,
}

/// What issuers may use of the controller's own cloud identity and endpoint choice
/// (`--issuer-ambient-credentials`, `--cluster-issuer-ambient-credentials`,
/// `--issuer-endpoint-override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbientPolicy {
    pub issuer_ambient_credentials: bool,
    pub cluster_issuer_ambient_credentials: bool,
    pub issuer_endpoint_override: bool,
}

impl Default for AmbientPolicy {
    /// cert-manager's defaults: cluster issuers may use the controller's identity, namespaced
    /// ones may not, and namespaced ones may not redirect the endpoint.
    fn default() -> Self {
        Self {
            issuer_ambient_credentials: false,
            cluster_issuer_ambient_credentials: true,
            issuer_endpoint_override: false,
        }
    }
}

/// Why `connect` is called: a health check also proves the CA can sign (a probe signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    HealthCheck,
    Signing,
}

/// What backends need from the process: the Kubernetes client (Secrets) and the state PCA
/// issuers share (clients, CA descriptions, rate limits).
pub struct Backends {
    pub kube: kube::Client,
    /// Local CAs already checked, by Secret version.
    pub local_cas: Arc<local_ca::CheckedCas>,
    pub pca: Arc<aws_pca::Shared>,
    /// Logins, clients and CA reads of Vault issuers, and `--vault-servers`.
    pub vault: Arc<vault::Shared>,
    pub ambient: AmbientPolicy,
    /// `--istio-namespaces`: a local CA Secret there must be marked as a CA (`meshca.io/ca`).
    pub istio_namespaces: Vec<String>,
}

/// Exactly one backend must be configured; returns its name.
pub fn configured_backend(spec: &IssuerSpec) -> Result<&'static str, BackendError> {
    let configured: Vec<&'static str> = [
        spec.local_ca.as_ref().map(|_| "localCA"),
        spec.aws_pca.as_ref().map(|_| "awsPCA"),
        spec.vault.as_ref().map(|_| "vault"),
    ]
    .into_iter()
    .flatten()
    .collect();
    match configured.as_slice() {
        [one] => Ok(one),
        [] => Err(BackendError::issuer_not_ready(
            "InvalidSpec",
            "no backend configured: set spec.localCA, spec.awsPCA or spec.vault",
        )),
        many => Err(BackendError::issuer_not_ready(
            "InvalidSpec",
            format!("exactly one backend may be set, found {}", many.join(" and ")),
        )),
    }
}

/// Builds the signer an issuer's spec describes, checking its CA on the way.
pub async fn connect(
    backends: &Backends,
    spec: &IssuerSpec,
    scope: &IssuerScope,
    purpose: Purpose,
    now: Timestamp,
) -> Result<Box<dyn Signer>, BackendError> {
    configured_backend(spec)?;
    if let Some(local) = &spec.local_ca {
        let signer = local_ca::LocalCa::load(backends, local, scope, purpose, now).await?;
        if spec.policy.require_ca {
            check_path_len_room(signer.as_ref(), spec)?;
        }
        return Ok(Box::new(signer));
    }
    if let Some(pca) = &spec.aws_pca {
        if pca.path_len > spec.policy.max_path_len {
            return Err(BackendError::issuer_not_ready(
                "InvalidSpec",
                format!(
                    "spec.awsPCA.pathLen {} exceeds spec.policy.maxPathLen {}",
                    pca.path_len, spec.policy.max_path_len
                ),
            ));
        }
        let signer = aws_pca::AwsPcaSigner::connect(
            &backends.kube,
            backends.pca.clone(),
            backends.ambient,
            pca,
            scope,
            purpose,
        )
        .await?;
        return Ok(Box::new(signer));
    }
    if let Some(vault) = &spec.vault {
        if !spec.policy.require_ca {
            return Err(BackendError::issuer_not_ready(
                "InvalidSpec",
                "spec.vault signs through sign-intermediate, which makes CA certificates only: set spec.policy.requireCA true",
            ));
        }
        let signer = vault::VaultSigner::connect(
            &backends.kube,
            backends.vault.clone(),
            backends.ambient,
            vault,
            scope,
            purpose,
            now,
        )
        .await?;
        check_path_len_room(&signer, spec)?;
        return Ok(Box::new(signer));
    }
    Err(BackendError::issuer_not_ready("InvalidSpec", "no backend configured"))
}

/// Whether an issuer's spec names Secret `name` (in the namespace it reads Secrets from): a
/// change of that Secret re-checks the issuer.
pub fn names_secret(spec: &IssuerSpec, name: &str) -> bool {
    let local = spec.local_ca.iter().map(|l| l.secret_name.as_str());
    let pca = spec
        .aws_pca
        .iter()
        .filter_map(|p| p.credentials_secret_ref.as_ref())
        .map(|r| r.name.as_str());
    let vault = spec.vault.iter().flat_map(|v| {
        [
            v.ca_bundle_secret_ref.as_ref(),
            v.auth.token_secret_ref.as_ref(),
            v.auth.app_role.as_ref().map(|a| &a.secret_ref),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.name.as_str())
    });
    local.chain(pca).chain(vault).any(|n| n == name)
}

/// An error with every cause after it, `a: b: c`: what an SDK or HTTP client error says at
/// the top is rarely why (a DNS, TLS or connect failure sits below). One place for every
/// backend's transport messages.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
