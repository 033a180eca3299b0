//! The issuer controller: checks `MeshCAIssuer`s and `ClusterMeshCAIssuer`s on every spec
//! change, when their CA Secret changes, and periodically (a root can expire or vanish without
//! any event), and publishes `Ready` with `observedGeneration` and the CA's identity.
//!
//! Requests wait on this condition; the CertificateRequest controller watches issuers, so a
//! request waiting on an issuer is issued as soon as the issuer turns Ready.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, instrument, warn};

use super::{Context, admission};
use crate::FIELD_MANAGER;
use crate::api::conditions::{self, READY};
use crate::api::issuer::{
    CLUSTER_ISSUER_KIND, ClusterMeshCAIssuer, ISSUER_KIND, IssuerSpec, IssuerStatus, LocalCA, MeshCAIssuer,
    RootBootstrap,
};
use crate::backend::local_ca::{self, CA_CRT, TLS_CRT, TLS_KEY};
use crate::backend::{self, BackendError, CaInfo, FailureKind, IssuerScope, Purpose};
use crate::error::{Error, Result};
use crate::pki::policy::{effective_trust_domains, validate_policy};
use crate::pki::sign::self_signed_root;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Reasons of the issuer's `Ready` condition besides those the backends report.
pub mod reason {
    pub const VERIFIED: &str = "Verified";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const BOOTSTRAP_NOT_ALLOWED: &str = "BootstrapNotAllowed";
}

/// Label on Secrets this controller created.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "mesh-ca-issuer";
/// Annotation on a bootstrapped root Secret: which issuer asked for it.
pub const BOOTSTRAPPED_FOR_ANNOTATION: &str = "meshca.io/bootstrapped-for";

/// What both issuer kinds have in common, for one generic reconcile.
pub trait IssuerObject:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    fn spec(&self) -> &IssuerSpec;
    fn status(&self) -> Option<&IssuerStatus>;
    /// Where the issuer reads its Secrets: its own namespace, or the cluster resource namespace.
    fn scope(&self, cluster_resource_namespace: &str) -> IssuerScope;
    /// The API of this kind, in this object's namespace when it has one.
    fn api(&self, client: kube::Client) -> Api<Self>;
}

impl IssuerObject for MeshCAIssuer {
    const KIND: &'static str = ISSUER_KIND;
    fn spec(&self) -> &IssuerSpec {
        &self.spec
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn scope(&self, _: &str) -> IssuerScope {
        let namespace = self.namespace().unwrap_or_default();
        IssuerScope {
            display: format!("{ISSUER_KIND} {namespace}/{}", self.name_any()),
            name: self.name_any(),
            secret_namespace: namespace,
            cluster_scoped: false,
        }
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl IssuerObject for ClusterMeshCAIssuer {
    const KIND: &'static str = CLUSTER_ISSUER_KIND;
    fn spec(&self) -> &IssuerSpec {
        &self.spec
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn scope(&self, cluster_resource_namespace: &str) -> IssuerScope {
        IssuerScope {
            display: format!("{CLUSTER_ISSUER_KIND} {}", self.name_any()),
            name: self.name_any(),
            secret_namespace: cluster_resource_namespace.to_string(),
            cluster_scoped: true,
        }
    }
    fn api(&self, client: kube::Client) -> Api<Self> {
        Api::all(client)
    }
}

/// The verdict on an issuer, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub backend: Option<String>,
    pub ca: Option<CaInfo>,
    pub requeue_after: Duration,
}

/// Turns the result of checking an issuer into its status and the time of the next check.
/// Ready issuers are checked again at the recheck interval or right after their CA expires,
/// whichever is first; transient failures sooner.
pub fn assess(check: Result<(&'static str, CaInfo), BackendError>, recheck: Duration, now: Timestamp) -> Assessment {
    match check {
        Ok((backend, ca)) => {
            let until_expiry = ca.lifetime.not_after.duration_since(now).unsigned_abs() + Duration::from_secs(1);
            Assessment {
                ready: true,
                reason: reason::VERIFIED.to_string(),
                message: format!(
                    "Signing CA {} verified; valid until {}",
                    ca.summary.subject, ca.summary.not_after
                ),
                backend: Some(backend.to_string()),
                ca: Some(ca),
                requeue_after: recheck.min(until_expiry),
            }
        }
        Err(e) => Assessment {
            ready: false,
            reason: e.reason.to_string(),
            message: e.message,
            backend: None,
            ca: None,
            requeue_after: match e.kind {
                FailureKind::Retryable | FailureKind::Pending => recheck.min(Duration::from_secs(30)),
                FailureKind::IssuerNotReady | FailureKind::Permanent => recheck,
            },
        },
    }
}

/// How long an issuer that is Ready stays Ready while its checks fail transiently (API server
/// or backend unreachable, throttled): one blip must not stop every renewal behind it, but an
/// outage that outlasts this window is reported.
pub const TRANSIENT_GRACE: Duration = Duration::from_secs(60);
/// How soon a check that failed transiently inside the grace window is tried again.
pub const TRANSIENT_RECHECK: Duration = Duration::from_secs(10);

/// What to do with a check's result, given the transient failures seen so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blip {
    /// Report the result as it is (and forget any earlier transient failure).
    Report,
    /// A transient failure of an issuer that is Ready at its generation, inside the grace
    /// window that began at `since`: keep the status, check again after `recheck`.
    Hold { since: Timestamp, recheck: Duration },
}

/// Decides whether a failed check may leave a Ready issuer Ready for now. `first` is when the
/// current run of transient failures began, if one did.
pub fn blip(
    failure: Option<FailureKind>,
    ready_at_generation: bool,
    first: Option<Timestamp>,
    now: Timestamp,
    grace: Duration,
) -> Blip {
    if failure != Some(FailureKind::Retryable) || !ready_at_generation {
        return Blip::Report;
    }
    let since = first.filter(|t| *t <= now).unwrap_or(now);
    let elapsed = now.duration_since(since).unsigned_abs();
    if elapsed >= grace {
        return Blip::Report;
    }
    Blip::Hold {
        since,
        recheck: TRANSIENT_RECHECK.min(grace - elapsed),
    }
}

/// When each issuer's current run of transient check failures began (in memory: a restart
/// starts the window afresh, which at worst reports an outage a minute later).
#[derive(Default)]
pub struct Blips(std::sync::Mutex<std::collections::HashMap<String, Timestamp>>);

impl Blips {
    pub fn first(&self, key: &str) -> Option<Timestamp> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).get(key).copied()
    }
    /// Keeps only the issuers `keep` accepts (deleted issuers are pruned).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|key, _| keep(key));
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn set(&self, key: &str, since: Option<Timestamp>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match since {
            Some(t) => map.insert(key.to_string(), t),
            None => map.remove(key),
        };
    }
}

/// The status to write for an assessment, keeping the condition's transition time when its
/// status did not change.
pub fn next_status(
    previous: Option<&IssuerStatus>,
    a: &Assessment,
    generation: Option<i64>,
    now: Timestamp,
) -> IssuerStatus {
    let previous_ready = previous.and_then(|s| conditions::find(&s.conditions, READY));
    IssuerStatus {
        conditions: vec![conditions::next(
            previous_ready,
            READY,
            a.ready,
            &a.reason,
            a.message.clone(),
            generation,
            now,
        )],
        backend: a.backend.clone().or_else(|| previous.and_then(|s| s.backend.clone())),
        ca: a.ca.as_ref().map(|ca| ca.summary.clone()),
        ..IssuerStatus::default()
    }
}

/// Checks the issuer's spec and backend without writing anything.
async fn check(
    ctx: &Context,
    spec: &IssuerSpec,
    scope: &IssuerScope,
    now: Timestamp,
) -> Result<(&'static str, CaInfo), BackendError> {
    validate_policy(&spec.policy).map_err(|m| BackendError::issuer_not_ready(reason::INVALID_SPEC, m))?;
    admission::validate_scope(scope.cluster_scoped, &spec.policy)
        .map_err(|m| BackendError::issuer_not_ready(reason::INVALID_SPEC, m))?;
    crate::pki::name_constraints::validate_policy(&spec.policy.name_constraints)
        .map_err(|m| BackendError::issuer_not_ready(reason::INVALID_SPEC, m))?;
    let backend_name = backend::configured_backend(spec)?;
    let signer = backend::connect(&ctx.backends, spec, scope, Purpose::HealthCheck, now).await?;
    Ok((backend_name, signer.ca().clone()))
}

#[instrument(skip_all, fields(kind = K::KIND, namespace = issuer.namespace().unwrap_or_default(), name = %issuer.name_any()))]
pub async fn reconcile<K: IssuerObject>(issuer: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        // done: a standby only keeps its caches warm; becoming the leader re-queues everything
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let scope = issuer.scope(&ctx.config.cluster_resource_namespace);
    let spec = issuer.spec();
    let mut result = check(&ctx, spec, &scope, now).await;
    let generation = issuer.meta().generation;
    let previous = issuer.status();
    // A missing root with `bootstrap` set: create it, then check again.
    let mut bootstrapped = None;
    if let (Err(e), Some(local)) = (&result, &spec.local_ca)
        && e.reason == local_ca::reason::SECRET_NOT_FOUND
        && let Some(bootstrap) = &local.bootstrap
    {
        let before = known_root(previous);
        result = match bootstrap_allowed(&ctx.config, &scope, local) {
            Err(e) => Err(e),
            Ok(()) => match bootstrap_root(&ctx, issuer.as_ref(), &scope, local, bootstrap, before, now).await {
                Ok(created) => {
                    bootstrapped = created;
                    check(&ctx, spec, &scope, now).await
                }
                Err(e) => Err(e),
            },
        };
    }
    let ready_at_generation = previous
        .and_then(|s| conditions::find(&s.conditions, READY))
        .is_some_and(|c| c.status == "True" && c.observed_generation == generation);
    let key = format!("{}/{}", issuer.namespace().unwrap_or_default(), issuer.name_any());
    match blip(
        result.as_ref().err().map(|e| e.kind),
        ready_at_generation,
        ctx.issuer_blips.first(&key),
        now,
        TRANSIENT_GRACE,
    ) {
        Blip::Hold { since, recheck } => {
            if let Err(e) = &result {
                warn!(reason = %e.reason, error = %e.message, since = %since, "transient error checking the issuer; it stays Ready within the grace window");
            }
            ctx.issuer_blips.set(&key, Some(since));
            ctx.metrics.count_reconcile(K::KIND, "transient_error");
            // requeue: check again soon; the status still says Ready
            return Ok(Action::requeue(recheck));
        }
        Blip::Report => ctx.issuer_blips.set(&key, None),
    }
    let assessment = assess(result, ctx.config.issuer_recheck_interval, now);
    let mut status = next_status(previous, &assessment, generation, now);
    status
        .conditions
        .extend(root_bootstrapped(previous, bootstrapped.as_ref(), generation, now));
    // What the issuer admits, as in effect: policy with the controller's defaults applied.
    status.allowed_namespaces = admission::effective_namespaces(
        scope.cluster_scoped,
        &scope.secret_namespace,
        &spec.policy,
        &ctx.config.istio_namespaces,
    );
    status.allowed_trust_domains = effective_trust_domains(&spec.policy, &ctx.config.trust_domain);
    if previous != Some(&status) {
        write_status(&ctx, issuer.as_ref(), &status).await?;
        announce_transition(&ctx, issuer.as_ref(), previous, &assessment).await;
    }
    ctx.metrics
        .count_reconcile(K::KIND, if assessment.ready { "ready" } else { "not_ready" });
    if let Some(ca) = &assessment.ca {
        ctx.metrics
            .observe_issuer_ca(issuer.namespace().as_deref().unwrap_or(""), &issuer.name_any(), ca);
    }
    Ok(Action::requeue(assessment.requeue_after))
}

/// One event per transition: becoming Ready, or a new reason for not being Ready.
async fn announce_transition<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    previous: Option<&IssuerStatus>,
    a: &Assessment,
) {
    let before = previous.and_then(|s| conditions::find(&s.conditions, READY));
    let unchanged = before.is_some_and(|c| c.status == conditions::status_str(a.ready) && c.reason == a.reason);
    if unchanged {
        return;
    }
    if a.ready {
        info!(message = %a.message, "issuer ready");
        ctx.publish_event(
            &issuer.object_ref(&()),
            EventType::Normal,
            &a.reason,
            "Check",
            a.message.clone(),
        )
        .await;
    } else {
        warn!(reason = %a.reason, message = %a.message, "issuer not ready");
        ctx.publish_event(
            &issuer.object_ref(&()),
            EventType::Warning,
            &a.reason,
            "Check",
            a.message.clone(),
        )
        .await;
    }
}

async fn write_status<K: IssuerObject>(ctx: &Context, issuer: &K, status: &IssuerStatus) -> Result<()> {
    let api = issuer.api(ctx.client.clone());
    // The resourceVersion decided on guards the write: a reconcile woken by the Secret a
    // bootstrap just created may still see the status from before it in the watch cache, and
    // must not write over RootBootstrapped with it (a 409 decides again on the new object).
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::KIND,
        "metadata": {"resourceVersion": issuer.resource_version()},
        "status": status,
    });
    api.patch_status(
        &issuer.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Error::kube(format!("writing status of {} {}", K::KIND, issuer.name_any()), e))?;
    Ok(())
}

/// Whether `localCA.bootstrap` may create its Secret: in an Istio namespace only with
/// `--allow-root-bootstrap-in-istio-namespaces`, since there the controller holds `create` for
/// istiod's `cacerts` and RBAC cannot say which names.
fn bootstrap_allowed(config: &crate::config::Config, scope: &IssuerScope, local: &LocalCA) -> Result<(), BackendError> {
    let namespace = &scope.secret_namespace;
    if config.istio_namespaces.iter().any(|n| n == namespace) && !config.allow_root_bootstrap_in_istio_namespaces {
        return Err(BackendError::issuer_not_ready(
            reason::BOOTSTRAP_NOT_ALLOWED,
            format!(
                "localCA.bootstrap would create Secret {namespace}/{} in an Istio namespace, which the controller does only with --allow-root-bootstrap-in-istio-namespaces (Helm: allowRootBootstrap=true); or create the root Secret yourself, labelled meshca.io/ca=true",
                local.secret_name
            ),
        ));
    }
    Ok(())
}

/// The condition that says a root was bootstrapped, and whether it replaced another.
pub const ROOT_BOOTSTRAPPED: &str = "RootBootstrapped";

/// A root this controller created for `localCA.bootstrap`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrapped {
    /// What it says: created, or (a root was known before) created *again*.
    pub message: String,
    /// A root was known before: the Secret disappeared and a new key was made.
    pub replaced: bool,
}

/// The root this issuer last served or bootstrapped, as status shows it: its CA, or (when
/// that was cleared by a failed check) the last RootBootstrapped condition.
fn known_root(previous: Option<&IssuerStatus>) -> Option<String> {
    let previous = previous?;
    previous
        .ca
        .as_ref()
        .map(|ca| format!("SHA-256 {}", ca.fingerprint_sha256))
        .or_else(|| {
            conditions::find(&previous.conditions, ROOT_BOOTSTRAPPED)
                .map(|_| "bootstrapped earlier; its fingerprint is no longer in status".to_string())
        })
}

/// The RootBootstrapped condition: set when a root was just bootstrapped, kept as it was
/// otherwise (it records the last bootstrap; a re-created root is never silent).
pub fn root_bootstrapped(
    previous: Option<&IssuerStatus>,
    now_bootstrapped: Option<&Bootstrapped>,
    generation: Option<i64>,
    now: Timestamp,
) -> Option<Condition> {
    let before = previous.and_then(|s| conditions::find(&s.conditions, ROOT_BOOTSTRAPPED));
    match now_bootstrapped {
        Some(b) => {
            let reason = if b.replaced { "RootRecreated" } else { "RootCreated" };
            Some(conditions::next(
                before,
                ROOT_BOOTSTRAPPED,
                true,
                reason,
                b.message.clone(),
                generation,
                now,
            ))
        }
        None => before.cloned(),
    }
}

/// Creates a self-signed root in the (missing) CA Secret. `create` never overwrites: if
/// someone else created the Secret meanwhile, theirs is kept. `before`: the root the issuer
/// was known to serve; creating another then is a Warning (the old root's key is gone, and
/// every IstioCACerts under it refuses the new one until it is approved).
async fn bootstrap_root<K: IssuerObject>(
    ctx: &Context,
    issuer: &K,
    scope: &IssuerScope,
    local: &LocalCA,
    bootstrap: &RootBootstrap,
    before: Option<String>,
    now: Timestamp,
) -> Result<Option<Bootstrapped>, BackendError> {
    let spec = bootstrap.clone();
    // RSA key generation can take a second: off the reactor.
    let generated = tokio::task::spawn_blocking(move || self_signed_root(&spec, now))
        .await
        .map_err(|e| BackendError::retryable("BootstrapFailed", format!("root generation task failed: {e}")))?;
    let (cert, key) = generated
        .map_err(|e| BackendError::issuer_not_ready(reason::INVALID_SPEC, format!("localCA.bootstrap: {e}")))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(local.secret_name.clone()),
            namespace: Some(scope.secret_namespace.clone()),
            // Marked as a CA: in an Istio namespace only a Secret so marked serves a local CA.
            labels: Some(
                [
                    (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
                    (local_ca::CA_LABEL.to_string(), "true".to_string()),
                ]
                .into(),
            ),
            annotations: Some([(BOOTSTRAPPED_FOR_ANNOTATION.to_string(), scope.display.clone())].into()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(
            [
                (TLS_CRT.to_string(), ByteString(cert.to_pem().into_bytes())),
                (TLS_KEY.to_string(), ByteString(key.to_pem().into_bytes())),
                (CA_CRT.to_string(), ByteString(cert.to_pem().into_bytes())),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &scope.secret_namespace);
    let secret_display = format!("Secret {}/{}", scope.secret_namespace, local.secret_name);
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            let created = format!(
                "Created a self-signed root {} (SHA-256 {}) valid until {} in {secret_display}",
                cert.subject(),
                cert.fingerprint(),
                cert.not_after()
            );
            let bootstrapped = match &before {
                None => Bootstrapped {
                    message: created,
                    replaced: false,
                },
                Some(old) => Bootstrapped {
                    message: format!(
                        "{secret_display} had disappeared. {created}, with a new key: it replaces the root before it ({old}), whose key is gone. Every IstioCACerts under the old root refuses the new one (RootChanged, or a rotation waiting for spec.rootRotation.expectedNewRoot). If the Secret was deleted by mistake, restore it from a backup, or approve the new root with meshca rotation approve"
                    ),
                    replaced: true,
                },
            };
            let type_ = if bootstrapped.replaced {
                warn!(secret = %secret_display, fingerprint = %cert.fingerprint(), "the root Secret had disappeared: bootstrapped a NEW self-signed root");
                EventType::Warning
            } else {
                info!(secret = %secret_display, fingerprint = %cert.fingerprint(), "bootstrapped a self-signed root");
                EventType::Normal
            };
            ctx.publish_event(
                &issuer.object_ref(&()),
                type_,
                ROOT_BOOTSTRAPPED,
                "Bootstrap",
                bootstrapped.message.clone(),
            )
            .await;
            Ok(Some(bootstrapped))
        }
        // Someone created it first: theirs stands.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(BackendError::issuer_not_ready(
            local_ca::reason::SECRET_FORBIDDEN,
            format!(
                "not allowed to create {secret_display} for localCA.bootstrap: {}",
                e.message
            ),
        )),
        Err(e) => Err(BackendError::retryable(
            local_ca::reason::API_ERROR,
            format!("creating {secret_display}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RootBootstrapped records the last bootstrap: set when one happens (RootRecreated when a
    /// root was known before, from status.ca or an earlier bootstrap), kept as it was otherwise.
    #[test]
    fn a_bootstrap_is_recorded_and_a_re_created_root_is_never_silent() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let with_ca = IssuerStatus {
            ca: Some(crate::api::issuer::CertificateSummary {
                fingerprint_sha256: "ab:cd".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(known_root(None), None);
        assert_eq!(known_root(Some(&IssuerStatus::default())), None);
        assert_eq!(known_root(Some(&with_ca)).as_deref(), Some("SHA-256 ab:cd"));
        let first = Bootstrapped {
            message: "Created a self-signed root".into(),
            replaced: false,
        };
        let created = root_bootstrapped(None, Some(&first), Some(1), now).unwrap();
        assert_eq!(
            (created.reason.as_str(), created.status.as_str()),
            ("RootCreated", "True")
        );
        // A later check without a bootstrap keeps it.
        let bootstrapped_once = IssuerStatus {
            conditions: vec![created.clone()],
            ..Default::default()
        };
        assert_eq!(
            root_bootstrapped(Some(&bootstrapped_once), None, Some(1), now),
            Some(created)
        );
        assert_eq!(
            root_bootstrapped(Some(&IssuerStatus::default()), None, Some(1), now),
            None
        );
        // status.ca cleared by a failed check: the earlier bootstrap still makes the next one a
        // re-creation.
        assert!(known_root(Some(&bootstrapped_once)).is_some());
        let again = Bootstrapped {
            message: "replaces the root before it".into(),
            replaced: true,
        };
        let recreated = root_bootstrapped(Some(&bootstrapped_once), Some(&again), Some(1), now).unwrap();
        assert_eq!(recreated.reason, "RootRecreated");
        assert_eq!(recreated.message, "replaces the root before it");
    }
    use crate::api::issuer::CertificateSummary;
    use crate::pki::policy::CaLifetime;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn ca(not_after: i64) -> CaInfo {
        CaInfo {
            summary: CertificateSummary {
                subject: "CN=root".into(),
                not_after: at(not_after).to_string(),
                ..Default::default()
            },
            lifetime: CaLifetime {
                not_before: at(0),
                not_after: at(not_after),
                max_validity: None,
            },
        }
    }

    const RECHECK: Duration = Duration::from_secs(300);

    #[test]
    fn assessments() {
        // A healthy CA far from expiry: Ready, re-checked at the interval.
        let a = assess(Ok(("localCA", ca(1_000_000))), RECHECK, at(1000));
        assert!(a.ready);
        assert_eq!((a.reason.as_str(), a.requeue_after), ("Verified", RECHECK));
        // A CA expiring in 100 s: re-checked right after it expires, not 5 minutes later.
        let a = assess(Ok(("localCA", ca(1100))), RECHECK, at(1000));
        assert_eq!(a.requeue_after, Duration::from_secs(101));
        // A configuration problem: not Ready with the backend's reason, re-checked at the interval
        // (watches on the Secret bring it back sooner).
        let e = BackendError::issuer_not_ready("SecretNotFound", "Secret ns/root not found");
        let a = assess(Err(e), RECHECK, at(1000));
        assert!(!a.ready);
        assert_eq!((a.reason.as_str(), a.requeue_after), ("SecretNotFound", RECHECK));
        // A transient API error: not Ready, retried within 30 s.
        let a = assess(Err(BackendError::retryable("APIError", "timeout")), RECHECK, at(1000));
        assert_eq!(a.requeue_after, Duration::from_secs(30));
    }

    #[test]
    fn rechecks_do_not_move_the_transition_time_or_rewrite_status() {
        let a = assess(Ok(("localCA", ca(1_000_000))), RECHECK, at(1000));
        let first = next_status(None, &a, Some(1), at(1000));
        let again = next_status(Some(&first), &a, Some(1), at(2000));
        assert_eq!(
            first, again,
            "an unchanged verdict yields an identical status: no write"
        );
        // A new generation is stamped even when the verdict is the same.
        let bumped = next_status(Some(&first), &a, Some(2), at(3000));
        assert_eq!(bumped.conditions[0].observed_generation, Some(2));
        assert_eq!(
            bumped.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
    }

    #[test]
    fn one_transient_error_does_not_flip_a_ready_issuer() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let grace = Duration::from_secs(60);
        let hold = |since: i64, recheck: u64| Blip::Hold {
            since: at(since),
            recheck: Duration::from_secs(recheck),
        };
        use FailureKind::*;
        // (case, failure, Ready at its generation, first failure, now, expected)
        let cases = [
            // A first blip on a Ready issuer: hold, check again soon.
            ("first blip", Some(Retryable), true, None, 0, hold(0, 10)),
            // Still failing 30 s later: still held, from the same start.
            ("still failing", Some(Retryable), true, Some(0), 30, hold(0, 10)),
            // Near the end of the window the recheck lands on its end.
            ("window end", Some(Retryable), true, Some(0), 55, hold(0, 5)),
            // Failing for the whole window: reported.
            ("outage", Some(Retryable), true, Some(0), 60, Blip::Report),
            // Not Ready (or not checked at this generation): nothing to protect.
            ("not ready", Some(Retryable), false, None, 0, Blip::Report),
            // Configuration errors and success are reported at once.
            ("config error", Some(IssuerNotReady), true, None, 0, Blip::Report),
            ("success", None, true, Some(0), 30, Blip::Report),
        ];
        for (name, failure, ready, first, now, expected) in cases {
            assert_eq!(blip(failure, ready, first.map(at), at(now), grace), expected, "{name}");
        }
    }
}
