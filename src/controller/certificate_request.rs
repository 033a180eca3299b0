//! The CertificateRequest controller: cert-manager's external-issuer contract.
//!
//! Order of checks (as cert-manager's issuer-lib): foreign request? already terminal? denied?
//! approved? issuer exists, Ready, and checked at its current generation? CSR valid and within
//! policy? sign. Every decision is a pure function of the request, the issuer and the clock
//! ([`triage`], [`issuer_gate`], [`status_change`]); [`reconcile`] only fetches, signs and writes.
//!
//! Outcomes: issued (`Ready=True/Issued`, chain and root, in one status write); waiting
//! (`Ready=False/Pending` with a message saying on what); failed (`Ready=False/Failed` +
//! `failureTime`: only for requests that can never succeed, or transient errors that outlast
//! `--max-retry-duration`); denied (`Ready=False/Denied` + `failureTime`, never signed).

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::issuer::IssuerObject;
use super::{Context, admission, retry};
use crate::FIELD_MANAGER;
use crate::api::cert_manager::{CertificateRequest, CertificateRequestCondition, CertificateRequestStatus, condition};
use crate::api::conditions::READY;
use crate::api::issuer::{
    CLUSTER_ISSUER_KIND, ClusterMeshCAIssuer, ISSUER_KIND, IssuerSpec, IssuerStatus, MeshCAIssuer,
};
use crate::backend::{self, BackendError, FailureKind, IssuerScope, Purpose, SignOutcome, SignRequest, aws_pca};
use crate::error::{Error, Result};
use crate::pki::CertificateSigningRequest;
use crate::pki::name_constraints;
use crate::pki::policy::{self, RequestFacts};

/// Which of our issuer kinds a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerKind {
    Namespaced,
    Cluster,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Namespaced => ISSUER_KIND,
            IssuerKind::Cluster => CLUSTER_ISSUER_KIND,
        }
    }
}

/// The first decision about a request, from the request alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Triage {
    /// Not for us (another group or kind, or cluster issuers disabled): no write at all.
    NotOurs,
    /// Already Issued, Failed, Denied or invalid: untouched.
    Terminal,
    /// Neither approved nor denied yet: no write (approval triggers a new reconcile).
    AwaitingApproval,
    /// Denied by an approver: mark Denied, never sign.
    Denied { message: String },
    /// Approved and ours: go on with the issuer of this kind and name.
    Proceed { kind: IssuerKind, name: String },
}

/// Decides what to do with a request before looking at anything else.
pub fn triage(cr: &CertificateRequest, cluster_issuers_enabled: bool) -> Triage {
    let issuer_ref = &cr.spec.issuer_ref;
    if issuer_ref.group.as_deref() != Some(crate::api::GROUP) {
        return Triage::NotOurs;
    }
    // Resolved strictly by kind: no fallback from one kind to the other, and an empty kind
    // (cert-manager defaults it to "Issuer") is not ours.
    let kind = match issuer_ref.kind.as_deref() {
        Some(ISSUER_KIND) => IssuerKind::Namespaced,
        Some(CLUSTER_ISSUER_KIND) if cluster_issuers_enabled => IssuerKind::Cluster,
        _ => return Triage::NotOurs,
    };
    if let Some(ready) = cr.condition(condition::READY) {
        let done = ready.status == "True"
            || matches!(
                ready.reason.as_deref(),
                Some(condition::REASON_FAILED) | Some(condition::REASON_DENIED)
            );
        if done {
            return Triage::Terminal;
        }
    }
    if cr.condition_is_true(condition::INVALID_REQUEST) {
        return Triage::Terminal;
    }
    if let Some(denied) = cr.condition(condition::DENIED).filter(|c| c.status == "True") {
        let why = denied
            .message
            .clone()
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "no reason given".into());
        return Triage::Denied {
            message: format!("The CertificateRequest was denied by an approval controller: {why}"),
        };
    }
    if !cr.condition_is_true(condition::APPROVED) {
        return Triage::AwaitingApproval;
    }
    Triage::Proceed {
        kind,
        name: issuer_ref.name.clone(),
    }
}

/// What the request's issuer looks like right now.
#[derive(Clone, Debug, PartialEq)]
pub enum IssuerLookup {
    Missing,
    Found {
        spec: Box<IssuerSpec>,
        status: Option<Box<IssuerStatus>>,
        generation: Option<i64>,
    },
}

/// Lets a request through only when its issuer exists, is Ready, and was checked at its
/// current generation; otherwise says what the request waits on.
pub fn issuer_gate<'a>(display: &str, lookup: &'a IssuerLookup) -> Result<&'a IssuerSpec, String> {
    let (spec, status, generation) = match lookup {
        IssuerLookup::Missing => return Err(format!("Waiting for {display}: it does not exist")),
        IssuerLookup::Found {
            spec,
            status,
            generation,
        } => (spec.as_ref(), status, generation),
    };
    let ready = status
        .as_ref()
        .and_then(|s| crate::api::conditions::find(&s.conditions, READY));
    match ready {
        None => Err(format!("Waiting for {display} to be checked")),
        Some(c) if c.observed_generation < *generation => Err(format!(
            "Waiting for {display} to be re-checked: its spec changed (generation {}, last checked {})",
            generation.unwrap_or_default(),
            c.observed_generation.unwrap_or_default()
        )),
        Some(c) if c.status != "True" => Err(format!(
            "Waiting for {display}, which is not Ready: {}: {}",
            c.reason, c.message
        )),
        Some(_) => Ok(spec),
    }
}

/// How a reconcile ended, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Denied {
        message: String,
    },
    /// Waiting on something that will trigger a new reconcile (issuer, backend).
    Waiting {
        message: String,
        retry_after: Duration,
    },
    /// A transient failure: retried with back-off until the deadline, then Failed.
    Transient {
        message: String,
        retry_after: Duration,
    },
    /// Can never succeed as asked.
    Failed {
        message: String,
    },
    /// Refused because the request's namespace is outside its issuer's scope: Failed, with a
    /// `PolicyViolation` Warning event.
    PolicyViolation {
        message: String,
    },
    Issued {
        certificate: String,
        ca: String,
        message: String,
    },
}

impl Outcome {
    /// How this outcome bears on the retry budget: only a transient failure spends it.
    pub fn attempt(&self) -> retry::Attempt {
        match self {
            Outcome::Transient { .. } => retry::Attempt::Transient,
            _ => retry::Attempt::Other,
        }
    }
}

/// The status write and event an outcome calls for.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusChange {
    pub status: CertificateRequestStatus,
    /// `Some` when the condition changed: one event per change, not per retry.
    pub event: Option<(EventType, String, String)>,
}

/// Maps an outcome onto the request's status. `None` when the status already says exactly
/// this (no write, no event). A transient failure past `deadline` becomes `Failed`.
pub fn status_change(
    cr: &CertificateRequest,
    outcome: Outcome,
    now: Timestamp,
    deadline: Option<Timestamp>,
) -> Option<StatusChange> {
    let outcome = match outcome {
        Outcome::Transient { message, .. } if deadline.is_some_and(|d| now >= d) => Outcome::Failed {
            message: format!("Giving up after the maximum retry duration: {message}"),
        },
        other => other,
    };
    let (ready, reason, message, failed, event_type) = match &outcome {
        Outcome::Denied { message } => (
            false,
            condition::REASON_DENIED,
            message.clone(),
            true,
            EventType::Warning,
        ),
        Outcome::Waiting { message, .. } | Outcome::Transient { message, .. } => (
            false,
            condition::REASON_PENDING,
            message.clone(),
            false,
            EventType::Normal,
        ),
        Outcome::Failed { message } | Outcome::PolicyViolation { message } => (
            false,
            condition::REASON_FAILED,
            message.clone(),
            true,
            EventType::Warning,
        ),
        Outcome::Issued { message, .. } => (
            true,
            condition::REASON_ISSUED,
            message.clone(),
            false,
            EventType::Normal,
        ),
    };
    let previous = cr.condition(condition::READY);
    let status_str = if ready { "True" } else { "False" };
    let unchanged = previous.is_some_and(|c| {
        c.status == status_str && c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message.as_str())
    });
    if unchanged {
        return None;
    }
    let last_transition_time = match previous {
        Some(c) if c.status == status_str => c.last_transition_time.clone().or(Some(Time(now))),
        _ => Some(Time(now)),
    };
    // cert-manager keys on the Ready reason `Failed`; the event says why in one word.
    let event_reason = match &outcome {
        Outcome::PolicyViolation { .. } => REASON_POLICY_VIOLATION,
        _ => reason,
    };
    let (certificate, ca) = match outcome {
        Outcome::Issued { certificate, ca, .. } => (Some(certificate.into_bytes()), Some(ca.into_bytes())),
        _ => (None, None),
    };
    Some(StatusChange {
        status: CertificateRequestStatus {
            conditions: Some(vec![CertificateRequestCondition {
                type_: condition::READY.to_string(),
                status: status_str.to_string(),
                reason: Some(reason.to_string()),
                message: Some(message.clone()),
                last_transition_time,
            }]),
            certificate,
            ca,
            failure_time: failed.then_some(Time(now)),
        },
        event: Some((event_type, event_reason.to_string(), message)),
    })
}

/// The event reason of a request refused by its issuer's policy. Its Ready condition says
/// `Failed`, the reason cert-manager acts on.
pub const REASON_POLICY_VIOLATION: &str = "PolicyViolation";

/// The largest status we write. etcd refuses values above 1.5 MiB and the API server then
/// answers with an error that, retried, would re-sign the request every few seconds forever;
/// a status this large is a chain no istiod needs.
pub const MAX_STATUS_BYTES: usize = 1024 * 1024;

/// Turns a status change too large to store into `Failed` with a message saying why: a
/// terminal answer instead of a retry loop that signs again on every attempt.
pub fn fit_status(cr: &CertificateRequest, change: StatusChange, now: Timestamp, limit: usize) -> Option<StatusChange> {
    let size = serde_json::to_vec(&change.status).map_or(usize::MAX, |v| v.len());
    if size <= limit {
        return Some(change);
    }
    let message = format!(
        "The signed chain makes a status of {size} bytes, more than the {limit} bytes this issuer writes (etcd refuses objects above 1.5 MiB): shorten the CA's chain in its Secret or the request's SANs"
    );
    status_change(cr, Outcome::Failed { message }, now, None)
}

/// What a backend failure means for a request. The one place backend errors are classified.
pub fn classify(error: BackendError, issuer_display: &str, retry_after: Duration) -> Outcome {
    match error.kind {
        FailureKind::Permanent => Outcome::Failed { message: error.message },
        FailureKind::Retryable => Outcome::Transient {
            message: format!("Transient error, will retry: {}", error.message),
            retry_after,
        },
        FailureKind::Pending => Outcome::Waiting {
            message: error.message,
            retry_after,
        },
        FailureKind::IssuerNotReady => Outcome::Waiting {
            message: format!(
                "Waiting for {issuer_display}, which is not Ready: {}: {}",
                error.reason, error.message
            ),
            retry_after: Duration::from_secs(60),
        },
    }
}

/// Requests that wait on the issuer `kind/namespace/name`: what an issuer change re-queues.
pub fn requests_waiting_on(
    store: &Store<CertificateRequest>,
    kind: IssuerKind,
    namespace: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<CertificateRequest>> {
    super::cached_refs(store, |cr| {
        let r = &cr.spec.issuer_ref;
        r.group.as_deref() == Some(crate::api::GROUP)
            && r.kind.as_deref() == Some(kind.as_str())
            && r.name == name
            && (kind == IssuerKind::Cluster || cr.namespace().as_deref() == namespace)
            && !matches!(triage(cr, true), Triage::Terminal | Triage::NotOurs)
    })
}

async fn lookup_issuer(
    ctx: &Context,
    kind: IssuerKind,
    namespace: &str,
    name: &str,
) -> Result<(IssuerLookup, IssuerScope)> {
    let cached = match kind {
        IssuerKind::Namespaced => ctx
            .issuers
            .namespaced
            .as_ref()
            .and_then(|cache| cached_issuer(cache, ObjectRef::new(name).within(namespace))),
        IssuerKind::Cluster => ctx
            .issuers
            .cluster
            .as_ref()
            .and_then(|cache| cached_issuer(cache, ObjectRef::new(name))),
    };
    let found = match cached {
        Some(found) => found,
        None => match kind {
            IssuerKind::Namespaced => Api::<MeshCAIssuer>::namespaced(ctx.client.clone(), namespace)
                .get_opt(name)
                .await
                .map(|o| o.map(|i| (i.spec, i.status, i.metadata.generation))),
            IssuerKind::Cluster => Api::<ClusterMeshCAIssuer>::all(ctx.client.clone())
                .get_opt(name)
                .await
                .map(|o| o.map(|i| (i.spec, i.status, i.metadata.generation))),
        }
        .map_err(|e| Error::kube(format!("reading {} {name}", kind.as_str()), e))?,
    };
    let scope = match kind {
        IssuerKind::Namespaced => IssuerScope {
            display: format!("{ISSUER_KIND} {namespace}/{name}"),
            name: name.to_string(),
            secret_namespace: namespace.to_string(),
            cluster_scoped: false,
        },
        IssuerKind::Cluster => IssuerScope {
            display: format!("{CLUSTER_ISSUER_KIND} {name}"),
            name: name.to_string(),
            secret_namespace: ctx.config.cluster_resource_namespace.clone(),
            cluster_scoped: true,
        },
    };
    let lookup = match found {
        None => IssuerLookup::Missing,
        Some((spec, status, generation)) => IssuerLookup::Found {
            spec: Box::new(spec),
            status: status.map(Box::new),
            generation,
        },
    };
    Ok((lookup, scope))
}

#[instrument(skip_all, fields(namespace = cr.namespace().unwrap_or_default(), name = %cr.name_any()))]
pub async fn reconcile(cr: Arc<CertificateRequest>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        // done: a standby only keeps its caches warm; becoming the leader re-queues everything
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let (kind, issuer_name) = match triage(&cr, ctx.config.namespace.is_none()) {
        // done: foreign, terminal or not yet approved requests get no write at all
        Triage::NotOurs | Triage::Terminal | Triage::AwaitingApproval => {
            // A request that ended needs no back-off history.
            let uid = cr.uid().unwrap_or_default();
            ctx.retries.forget(&uid);
            ctx.superseded.forget(&uid);
            return Ok(Action::await_change());
        }
        Triage::Denied { message } => {
            apply_outcome(&ctx, &cr, Outcome::Denied { message }, now).await?;
            // done: denied is terminal
            return Ok(Action::await_change());
        }
        Triage::Proceed { kind, name } => (kind, name),
    };
    if ctx
        .superseded
        .is_stale(&cr.uid().unwrap_or_default(), cr.resource_version().as_deref())
    {
        // done: a copy our own write replaced; that write's watch event wakes the request again
        return Ok(Action::await_change());
    }
    let namespace = cr.namespace().unwrap_or_default();
    let (lookup, scope) = lookup_issuer(&ctx, kind, &namespace, &issuer_name).await?;
    // An early wake-up (say, our own status write) while backing off after a transient backend
    // failure must not call the backend again before the delay is over.
    let backing_off = ctx.retries.wait_remaining(&cr.uid().unwrap_or_default());
    let outcome = match (issuer_gate(&scope.display, &lookup), backing_off) {
        // requeue: the issuer watch brings the request back when the issuer changes
        (Err(message), _) => Outcome::Waiting {
            message,
            retry_after: Duration::from_secs(300),
        },
        // requeue: still backing off
        (Ok(_), Some(wait)) => return Ok(Action::requeue(wait)),
        (Ok(spec), None) => return sign_and_write(&ctx, &cr, spec, &scope, now).await,
    };
    let next = next_action(&outcome);
    apply_outcome(&ctx, &cr, outcome, now).await?;
    Ok(next)
}

/// Signs an approved request of an issuer that is ready, and writes the outcome: the request
/// admitted first, then its CSR signed by the connected backend.
async fn sign_and_write(
    ctx: &Context,
    cr: &CertificateRequest,
    spec: &IssuerSpec,
    scope: &IssuerScope,
    now: Timestamp,
) -> Result<Action> {
    // Who may ask comes before what is asked: a request from a namespace the issuer
    // does not serve is refused before its CSR is decoded or its backend contacted.
    if let Err(message) = admit(ctx, cr, spec, scope) {
        apply_outcome(ctx, cr, Outcome::PolicyViolation { message }, now).await?;
        return Ok(Action::await_change()); // done: failed
    }
    // The cached copy may lag behind a write that is not ours (a leader hand-over).
    // Every write is guarded by the resourceVersion decided on, so such a copy is never
    // handed a second certificate: its status write is refused (409). A local
    // signature is cheap, and one wasted that way is counted. A remote backend's
    // signature costs quota or money, so for those the request is read afresh first,
    // in the same round trip as the backend's CA.
    // (The cache keeps no CSR over `cache::MAX_CACHED_CSR`: such a one is read too.)
    let from_cache = spec.local_ca.is_some() && !cr.spec.request.is_empty();
    let (fresh, signer) = tokio::join!(
        async {
            match from_cache {
                true => Ok(Some(cr.clone())),
                false => read_fresh(ctx, cr).await,
            }
        },
        backend::connect(&ctx.backends, spec, scope, Purpose::Signing, now)
    );
    let mut fresh = match fresh? {
        Some(fresh) => fresh,
        None => return Ok(Action::await_change()), // done: deleted meanwhile
    };
    if !matches!(triage(&fresh, ctx.config.namespace.is_none()), Triage::Proceed { .. }) {
        // requeue: it changed (issued, denied, ...) since the cache saw it
        return Ok(Action::requeue(Duration::ZERO));
    }
    let outcome = sign(ctx, &mut fresh, spec, scope, signer, now).await;
    let next = next_action(&outcome);
    let signed = matches!(outcome, Outcome::Issued { .. });
    match apply_outcome(ctx, &fresh, outcome, now).await {
        Err(e) if signed && e.is_conflict() => {
            // The copy was stale: the request changed since, and the certificate is
            // not handed out. The newer version's watch event wakes the request.
            let backend = backend::configured_backend(spec).unwrap_or_default();
            ctx.metrics.count_signature_discarded(backend);
            ctx.metrics.count_reconcile("certificaterequest", "conflict");
            debug!(error = %e, "signed a stale copy; its status write was refused and the certificate discarded");
            return Ok(Action::await_change()); // done: the newer version comes
        }
        written => written?,
    }
    Ok(next)
}

/// What follows a written outcome: waiting or retrying comes back after its delay; anything
/// else is done.
fn next_action(outcome: &Outcome) -> Action {
    match outcome {
        Outcome::Waiting { retry_after, .. } | Outcome::Transient { retry_after, .. } => Action::requeue(*retry_after),
        _ => Action::await_change(),
    }
}

/// An issuer from the cache the request controller's issuer watch fills, once that cache holds
/// its initial list; `None` before. Never waited for: that watch is driven by the same
/// controller whose reconciles would wait, and right after start-up a request may be
/// reconciled before it has listed. Until then the issuer is read from the API server.
fn cached_issuer<K: IssuerObject>(cache: &Store<K>, reference: ObjectRef<K>) -> Option<Option<FoundIssuer>> {
    use futures::FutureExt;
    match cache.wait_until_ready().now_or_never() {
        Some(Ok(())) => Some(cache.get(&reference).map(|issuer| {
            (
                issuer.spec().clone(),
                issuer.status().cloned(),
                issuer.meta().generation,
            )
        })),
        _ => None,
    }
}

/// An issuer's spec, status and generation: what the issuer gate reads.
type FoundIssuer = (IssuerSpec, Option<IssuerStatus>, Option<i64>);

/// The request as the API server has it now (not as the watch cache last saw it).
async fn read_fresh(ctx: &Context, cr: &CertificateRequest) -> Result<Option<CertificateRequest>> {
    let name = cr.name_any();
    Api::<CertificateRequest>::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default())
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading CertificateRequest {name}"), e))
}

/// Whether the request's namespace may ask this issuer at all (a namespace never changes, so
/// the cached request answers).
fn admit(ctx: &Context, cr: &CertificateRequest, spec: &IssuerSpec, scope: &IssuerScope) -> Result<(), String> {
    let allowed = admission::effective_namespaces(
        scope.cluster_scoped,
        &scope.secret_namespace,
        &spec.policy,
        &ctx.config.istio_namespaces,
    );
    let namespace = cr.namespace().unwrap_or_default();
    admission::admit(&namespace, scope.cluster_scoped, &allowed, &scope.display)
}

/// Decodes and checks the CSR, then has the connected backend sign. `cr` is updated when a
/// backend id is recorded on it.
async fn sign(
    ctx: &Context,
    cr: &mut CertificateRequest,
    spec: &IssuerSpec,
    scope: &IssuerScope,
    signer: Result<Box<dyn backend::Signer>, BackendError>,
    now: Timestamp,
) -> Outcome {
    let uid = cr.uid().unwrap_or_default();
    let csr = match CertificateSigningRequest::from_pem(&cr.spec.request) {
        Ok(csr) => csr,
        Err(e) => {
            return Outcome::Failed {
                message: format!("Invalid request: {e}"),
            };
        }
    };
    let signer = match signer {
        Ok(signer) => signer,
        Err(e) => return classify(e, &scope.display, ctx.retries.next_delay(&uid)),
    };
    let plan = match signing_plan(ctx, cr, &csr, spec, scope, &signer.ca().lifetime, now) {
        Ok(plan) => plan,
        Err(outcome) => return outcome,
    };
    let started = std::time::Instant::now();
    // A backend-side id from an earlier attempt (a PCA certificate ARN): fetch, never re-issue.
    let known_ref = cr.annotations().get(aws_pca::CERTIFICATE_ARN_ANNOTATION).cloned();
    let request = SignRequest {
        csr: &csr,
        plan: &plan,
        request_uid: &uid,
        backend_ref: known_ref.as_deref(),
    };
    // A backend without idempotency (Vault) signs again when asked again: the request is
    // marked before it is asked, so a signing that finds the mark of an earlier one whose
    // outcome was never written (a crash, a lost answer) is counted as a repeat.
    let marks = signer.repeats_on_retry();
    if marks && let Err(outcome) = mark_start(ctx, cr, signer.backend_name(), now).await {
        return outcome;
    }
    let mut result = signer.sign(request).await;
    if marks && matches!(&result, Err(e) if !e.may_have_signed) {
        // The backend answered that it signed nothing: a retry is no repeat.
        match mark_signing(ctx, cr, None).await {
            Ok(updated) => *cr = updated,
            Err(e) => warn!(error = %e, "could not clear the signing mark; a retry will count as a repeat"),
        }
    }
    if let (Ok(SignOutcome::InProgress { backend_ref }), None) = (&result, &known_ref) {
        // Persist the id before anything else: after a crash or a retry, this request fetches
        // the certificate that was issued instead of paying for another.
        let backend_ref = backend_ref.clone();
        if let Err(outcome) = record_backend_ref(ctx, cr, &backend_ref).await {
            return outcome;
        }
        // Issuing is done; fetching the certificate gets a back-off of its own.
        ctx.retries.forget(&uid);
        let request = SignRequest {
            csr: &csr,
            plan: &plan,
            request_uid: &uid,
            backend_ref: Some(&backend_ref),
        };
        result = signer.sign(request).await;
    }
    ctx.metrics.signing_seconds.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(SignOutcome::Issued(chain)) => {
            ctx.retries.forget(&uid);
            issued(&chain, &csr, &plan, scope, signer.backend_name(), now)
        }
        Ok(SignOutcome::InProgress { .. }) => Outcome::Waiting {
            message: format!("{} is still issuing the certificate", scope.display),
            retry_after: ctx.retries.next_poll(&uid),
        },
        // A backend still at work is polled soon; a failure backs off.
        Err(e) if e.kind == FailureKind::Pending => {
            let retry_after = ctx.retries.next_poll(&uid);
            classify(e, &scope.display, retry_after)
        }
        Err(e) => classify(e, &scope.display, ctx.retries.next_delay(&uid)),
    }
}

/// Marks the request before a backend without idempotency signs it, naming an earlier mark
/// whose outcome was never written: that signing is counted as a repeat.
async fn mark_start(
    ctx: &Context,
    cr: &mut CertificateRequest,
    backend_name: &str,
    now: Timestamp,
) -> Result<(), Outcome> {
    if let Some(earlier) = cr.annotations().get(SIGNING_STARTED_ANNOTATION) {
        ctx.metrics
            .signings_repeated
            .get_or_create(&crate::metrics::BackendLabels {
                backend: backend_name.to_string(),
            })
            .inc();
        warn!(%earlier, backend = backend_name, "signing again: an earlier signing of this request may have produced a certificate that is never handed out");
    }
    match mark_signing(ctx, cr, Some(now)).await {
        Ok(updated) => {
            *cr = updated;
            Ok(())
        }
        Err(e) => Err(Outcome::Transient {
            message: format!("could not record the start of signing on the request: {e}"),
            retry_after: ctx.retries.next_delay(&cr.uid().unwrap_or_default()),
        }),
    }
}

/// Records the backend's id of a certificate being issued on the request, before anything
/// else: after a crash or a retry, this request fetches that certificate instead of paying for
/// another.
async fn record_backend_ref(ctx: &Context, cr: &mut CertificateRequest, backend_ref: &str) -> Result<(), Outcome> {
    match persist_backend_ref(ctx, cr, backend_ref).await {
        Ok(updated) => *cr = updated,
        Err(e) => {
            return Err(Outcome::Transient {
                message: format!("could not record the issued certificate's id on the request: {e}"),
                retry_after: ctx.retries.next_delay(&cr.uid().unwrap_or_default()),
            });
        }
    }
    crate::failpoint::hit("after-arn-annotation");
    Ok(())
}

/// What will be signed: the issuer's policy (with the controller's defaults) applied to the
/// CSR and the request, clamped to the CA's life, with the name constraints it must carry.
fn signing_plan(
    ctx: &Context,
    cr: &CertificateRequest,
    csr: &CertificateSigningRequest,
    spec: &IssuerSpec,
    scope: &IssuerScope,
    ca: &policy::CaLifetime,
    now: Timestamp,
) -> Result<policy::SigningPlan, Outcome> {
    let facts = RequestFacts {
        is_ca: cr.spec.is_ca,
        duration: cr.spec.duration.as_deref(),
    };
    let effective_policy = policy::with_defaults(&spec.policy, &ctx.config.trust_domain);
    let mut plan = match policy::plan(csr, &facts, &effective_policy, ca, now) {
        Ok(plan) => plan,
        Err(violation @ policy::PolicyViolation::CaNotValid { .. }) => {
            return Err(Outcome::Waiting {
                message: format!("Waiting for {}, whose CA cannot sign now: {violation}", scope.display),
                retry_after: Duration::from_secs(60),
            });
        }
        Err(violation) => {
            return Err(Outcome::Failed {
                message: format!("Refused by {}'s policy: {violation}", scope.display),
            });
        }
    };
    match name_constraints::decide(
        csr,
        plan.ca_path_len.is_some(),
        &effective_policy,
        default_trust_domain(ctx),
    ) {
        Ok(constraints) => plan.name_constraints = constraints,
        Err(violation) => {
            return Err(Outcome::Failed {
                message: format!("Refused by {}'s policy: {violation}", scope.display),
            });
        }
    }
    Ok(plan)
}

/// The outcome of an issued chain: Issued with what was signed, unless an intermediate meant
/// to be constrained came back without exactly those constraints.
fn issued(
    chain: &backend::IssuedChain,
    csr: &crate::pki::csr::CertificateSigningRequest,
    plan: &policy::SigningPlan,
    scope: &IssuerScope,
    backend_name: &str,
    now: Timestamp,
) -> Outcome {
    let issued = &chain.chain[0];
    let mut message = format!(
        "Certificate issued by {} ({}): serial {}, valid until {}",
        scope.display,
        backend_name,
        issued.serial_hex(),
        issued.not_after()
    );
    if let Some(why) = &plan.clamped {
        message.push_str(&format!(
            " (shortened from the requested {}: {why})",
            crate::duration::format_go_duration(plan.requested)
        ));
    }
    // Whatever the backend: what is handed out is what was asked for (a remote CA's template
    // or role may have changed the subject, the SANs, the pathLen or the lifetime).
    if let Err(why) = crate::pki::issued::check_matches_plan(issued, csr, plan, now) {
        return Outcome::Failed {
            message: format!(
                "{} ({}) issued a certificate (serial {}) that differs from the request, so it is not used: {why}",
                scope.display,
                backend_name,
                issued.serial_hex()
            ),
        };
    }
    if let Some(expected) = &plan.name_constraints {
        // Whatever the backend: an intermediate meant to be constrained is never handed
        // out without exactly those constraints.
        if let Err(why) = name_constraints::check_carries(issued, expected) {
            return Outcome::Failed {
                message: format!(
                    "{} ({}) did not apply the requested name constraints, so the certificate (serial {}) is not used: {why}",
                    scope.display,
                    backend_name,
                    issued.serial_hex()
                ),
            };
        }
        message.push_str(&format!(", with name constraints: {}", expected.describe()));
    }
    Outcome::Issued {
        certificate: chain.certificate_pem(),
        ca: chain.ca_pem(),
        message,
    }
}

/// The trust domain an intermediate is constrained to when its CSR names none: one place, so
/// it can follow the controller's configured trust domain.
fn default_trust_domain(ctx: &Context) -> &str {
    &ctx.config.trust_domain
}

/// On a request signed by a backend without idempotency: when its current signing began (RFC
/// 3339). Set before the backend is asked, removed when the backend answered that it signed
/// nothing; found by a later signing, it means a certificate may exist that was never handed
/// out (see `backend::Signer::repeats_on_retry`).
pub const SIGNING_STARTED_ANNOTATION: &str = "meshca.io/signing-started";

/// Sets (`Some`) or removes [`SIGNING_STARTED_ANNOTATION`], guarded by the resourceVersion the
/// request was read at, as every write of ours.
async fn mark_signing(ctx: &Context, cr: &CertificateRequest, at: Option<Timestamp>) -> Result<CertificateRequest> {
    let name = cr.name_any();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let value = at
        .map(|t| serde_json::Value::String(t.to_string()))
        .unwrap_or(serde_json::Value::Null);
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": cr.resource_version(),
        "annotations": {SIGNING_STARTED_ANNOTATION: value},
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("marking the signing of CertificateRequest {name}"), e))
}

/// Records a backend-side id (the PCA certificate ARN) on the request's metadata.
async fn persist_backend_ref(ctx: &Context, cr: &CertificateRequest, backend_ref: &str) -> Result<CertificateRequest> {
    let name = cr.name_any();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {aws_pca::CERTIFICATE_ARN_ANNOTATION: backend_ref}}});
    let updated = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("annotating CertificateRequest {name}"), e))?;
    info!(certificate_arn = %backend_ref, "recorded the issued certificate's ARN on the request");
    Ok(updated)
}

/// Writes the status an outcome calls for (if it changed) and raises its event.
async fn apply_outcome(ctx: &Context, cr: &CertificateRequest, outcome: Outcome, now: Timestamp) -> Result<()> {
    let metric = match &outcome {
        Outcome::Denied { .. } => "denied",
        Outcome::Waiting { .. } => "pending",
        Outcome::Transient { .. } => "retrying",
        Outcome::Failed { .. } | Outcome::PolicyViolation { .. } => "failed",
        Outcome::Issued { .. } => "issued",
    };
    let budget = retry::budget(
        outcome.attempt(),
        cr.annotations()
            .get(retry::FIRST_FAILURE_ANNOTATION)
            .map(String::as_str),
        now,
        ctx.config.max_retry_duration,
    );
    let change = status_change(cr, outcome, now, budget.deadline);
    let name = cr.name_any();
    let api: Api<CertificateRequest> = Api::namespaced(ctx.client.clone(), &cr.namespace().unwrap_or_default());
    // The budget's mark goes first: a status that says "retrying" always has its start recorded.
    let original_version = cr.resource_version();
    let marked = retry::write_mark(&api, cr, &budget.mark).await?;
    let cr = marked.as_ref().unwrap_or(cr);
    let Some(change) = change.and_then(|c| fit_status(cr, c, now, MAX_STATUS_BYTES)) else {
        return Ok(());
    };
    // The resourceVersion we decided on is a precondition: if the request changed meanwhile
    // (another writer, a leader hand-over), the write fails with 409 and is decided again.
    let patch = serde_json::json!({
        "apiVersion": CertificateRequest::api_version(&()),
        "kind": CertificateRequest::kind(&()),
        "metadata": {"resourceVersion": cr.resource_version()},
        "status": change.status,
    });
    let written = api
        .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::kube(format!("writing status of CertificateRequest {name}"), e))?;
    // Until the watch brings these writes, a cached copy at a version they replaced is stale:
    // never signed. A write that changed nothing kept its version, which is then the current
    // one, not a stale one: recording it would leave the request waiting for an event that
    // never comes.
    let uid = cr.uid().unwrap_or_default();
    let mut replaced = vec![original_version, cr.resource_version()];
    replaced.dedup();
    for version in replaced {
        if version != written.resource_version() {
            ctx.superseded.record(&uid, version.as_deref());
        }
    }
    ctx.metrics.count_reconcile("certificaterequest", metric);
    if let Some((type_, reason, note)) = change.event {
        match type_ {
            EventType::Warning => warn!(%reason, %note, "certificaterequest"),
            EventType::Normal if reason == condition::REASON_ISSUED => {
                info!(%reason, %note, "certificaterequest")
            }
            EventType::Normal => debug!(%reason, %note, "certificaterequest"),
        }
        ctx.publish_event(&cr.object_ref(&()), type_, &reason, "Sign", note)
            .await;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::cert_manager::{CertificateRequestSpec, IssuerReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    /// A request named `r` for issuer `mesh` of `kind` in `group`, with `conditions` (type,
    /// status, reason).
    pub(crate) fn cr(group: &str, kind: &str, conditions: &[(&str, &str, &str)]) -> CertificateRequest {
        let mut cr = CertificateRequest::new(
            "r",
            CertificateRequestSpec {
                issuer_ref: IssuerReference {
                    name: "mesh".into(),
                    kind: Some(kind.into()),
                    group: Some(group.into()),
                },
                ..Default::default()
            },
        );
        cr.status = Some(CertificateRequestStatus {
            conditions: Some(
                conditions
                    .iter()
                    .map(|(t, s, r)| CertificateRequestCondition {
                        type_: t.to_string(),
                        status: s.to_string(),
                        reason: Some(r.to_string()),
                        message: Some(format!("{t} {r}")),
                        last_transition_time: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        cr
    }

    const OURS: &str = "meshca.io";
    const APPROVED: (&str, &str, &str) = ("Approved", "True", "cert-manager.io");

    #[test]
    fn triage_follows_the_external_issuer_contract() {
        use Triage::*;
        let proceed = |kind| Proceed {
            kind,
            name: "mesh".into(),
        };
        let cases: Vec<(&str, CertificateRequest, bool, Triage)> = vec![
            // Another group: never ours.
            (
                "foreign group",
                cr("cert-manager.io", "Issuer", &[APPROVED]),
                true,
                NotOurs,
            ),
            // Our group, unknown kind: not ours either (no kind fallback).
            ("unknown kind", cr(OURS, "Issuer", &[APPROVED]), true, NotOurs),
            // Cluster kind while cluster issuers are disabled (--namespace).
            (
                "cluster disabled",
                cr(OURS, "ClusterMeshCAIssuer", &[APPROVED]),
                false,
                NotOurs,
            ),
            // Neither approved nor denied: wait silently.
            ("unapproved", cr(OURS, "MeshCAIssuer", &[]), true, AwaitingApproval),
            // Denied wins over everything but a terminal Ready.
            (
                "denied",
                cr(OURS, "MeshCAIssuer", &[("Denied", "True", "policy")]),
                true,
                Denied {
                    message: "The CertificateRequest was denied by an approval controller: Denied policy".into(),
                },
            ),
            // Terminal states are untouched.
            (
                "issued",
                cr(OURS, "MeshCAIssuer", &[APPROVED, ("Ready", "True", "Issued")]),
                true,
                Terminal,
            ),
            (
                "failed",
                cr(OURS, "MeshCAIssuer", &[APPROVED, ("Ready", "False", "Failed")]),
                true,
                Terminal,
            ),
            (
                "already denied",
                cr(
                    OURS,
                    "MeshCAIssuer",
                    &[("Denied", "True", "x"), ("Ready", "False", "Denied")],
                ),
                true,
                Terminal,
            ),
            (
                "invalid",
                cr(OURS, "MeshCAIssuer", &[APPROVED, ("InvalidRequest", "True", "x")]),
                true,
                Terminal,
            ),
            // Pending is not terminal: proceed.
            (
                "pending",
                cr(OURS, "MeshCAIssuer", &[APPROVED, ("Ready", "False", "Pending")]),
                true,
                proceed(IssuerKind::Namespaced),
            ),
            (
                "approved cluster",
                cr(OURS, "ClusterMeshCAIssuer", &[APPROVED]),
                true,
                proceed(IssuerKind::Cluster),
            ),
        ];
        for (name, request, cluster_enabled, expected) in cases {
            assert_eq!(triage(&request, cluster_enabled), expected, "{name}");
        }
    }

    fn ready_condition(status: &str, observed: i64) -> IssuerStatus {
        IssuerStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: "Verified".into(),
                message: "m".into(),
                observed_generation: Some(observed),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn issuer_gate_says_what_the_request_waits_on() {
        let found = |status: Option<IssuerStatus>, generation| IssuerLookup::Found {
            spec: Box::default(),
            status: status.map(Box::new),
            generation,
        };
        let cases = vec![
            ("missing", IssuerLookup::Missing, Some("does not exist")),
            ("never checked", found(None, Some(1)), Some("to be checked")),
            (
                "stale generation",
                found(Some(ready_condition("True", 1)), Some(2)),
                Some("spec changed (generation 2, last checked 1)"),
            ),
            (
                "not ready",
                found(Some(ready_condition("False", 1)), Some(1)),
                Some("which is not Ready: Verified: m"),
            ),
            ("ready", found(Some(ready_condition("True", 2)), Some(2)), None),
        ];
        for (name, lookup, expected) in cases {
            match (issuer_gate("MeshCAIssuer ns/mesh", &lookup), expected) {
                (Ok(_), None) => {}
                (Err(m), Some(part)) => assert!(m.contains(part), "{name}: {m}"),
                (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
            }
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn status_changes() {
        let approved = cr(OURS, "MeshCAIssuer", &[APPROVED]);
        let wait = || Outcome::Waiting {
            message: "Waiting for X".into(),
            retry_after: Duration::from_secs(1),
        };

        // Issued: Ready=True with certificate and root in the same write, a Normal event.
        let issued = Outcome::Issued {
            certificate: "CHAIN".into(),
            ca: "ROOT".into(),
            message: "ok".into(),
        };
        let change = status_change(&approved, issued, now(), None).unwrap();
        assert_eq!(change.status.certificate.as_deref(), Some(b"CHAIN".as_slice()));
        assert_eq!(change.status.ca.as_deref(), Some(b"ROOT".as_slice()));
        assert_eq!(change.status.failure_time, None);
        assert_eq!(
            change.event.as_ref().map(|e| (e.0, e.1.as_str())),
            Some((EventType::Normal, "Issued"))
        );

        // Failed and Denied stamp failureTime and warn.
        for outcome in [
            Outcome::Failed { message: "bad".into() },
            Outcome::Denied { message: "no".into() },
        ] {
            let change = status_change(&approved, outcome, now(), None).unwrap();
            assert_eq!(change.status.failure_time, Some(Time(now())));
            assert_eq!(change.event.unwrap().0, EventType::Warning);
        }

        // Pending with an unchanged message: no write, no event.
        let mut pending = approved.clone();
        pending.status = Some(status_change(&approved, wait(), now(), None).unwrap().status);
        pending
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()
            .push(CertificateRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: None,
                message: None,
                last_transition_time: None,
            });
        assert_eq!(status_change(&pending, wait(), now(), None), None);

        // A transient error before the deadline is Pending, never Failed...
        let transient = || Outcome::Transient {
            message: "throttled".into(),
            retry_after: Duration::from_secs(5),
        };
        let before = status_change(
            &approved,
            transient(),
            now(),
            Some(now() + jiff::SignedDuration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(before.status.conditions.unwrap()[0].reason.as_deref(), Some("Pending"));
        assert_eq!(before.status.failure_time, None);
        // ...and Failed once the maximum retry duration has passed.
        let after = status_change(&approved, transient(), now(), Some(now())).unwrap();
        let condition = &after.status.conditions.unwrap()[0];
        assert_eq!(condition.reason.as_deref(), Some("Failed"));
        assert!(condition.message.as_deref().unwrap().contains("maximum retry duration"));
    }

    #[test]
    fn a_status_too_large_to_store_fails_the_request_instead_of_retrying() {
        let approved = cr(OURS, "MeshCAIssuer", &[APPROVED]);
        let issued = |size: usize| Outcome::Issued {
            certificate: "C".repeat(size),
            ca: "ROOT".into(),
            message: "ok".into(),
        };
        let small = status_change(&approved, issued(100), now(), None).unwrap();
        assert_eq!(fit_status(&approved, small.clone(), now(), 10_000), Some(small));
        let big = status_change(&approved, issued(20_000), now(), None).unwrap();
        let failed = fit_status(&approved, big, now(), 10_000).unwrap();
        let condition = &failed.status.conditions.as_ref().unwrap()[0];
        assert_eq!(condition.reason.as_deref(), Some("Failed"));
        assert!(
            condition
                .message
                .as_deref()
                .unwrap()
                .contains("more than the 10000 bytes")
        );
        assert_eq!(
            (failed.status.certificate, failed.status.failure_time),
            (None, Some(Time(now())))
        );
    }

    #[test]
    fn backend_failures_are_classified_in_one_place() {
        let d = Duration::from_secs(7);
        let cases = [
            (FailureKind::Permanent, "Failed"),
            (FailureKind::Retryable, "Transient"),
            (FailureKind::Pending, "Waiting"),
            (FailureKind::IssuerNotReady, "Waiting"),
        ];
        for (kind, expected) in cases {
            let outcome = classify(BackendError::new(kind, "R", "m"), "MeshCAIssuer ns/mesh", d);
            assert!(format!("{outcome:?}").starts_with(expected), "{kind:?}: {outcome:?}");
        }
    }
}
