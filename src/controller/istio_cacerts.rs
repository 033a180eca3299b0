//! The IstioCACerts controller: writes istiod's `cacerts` from cert-manager's Secret, only
//! when the result verifies as istiod would load it and only into a Secret we own (or were
//! told to adopt), and tracks the renewal windows of the intermediate, its roots and the
//! issuer's backend CA — with status, one event per window change, metrics, and a requeue at
//! exactly the next window boundary.
//!
//! Three steps: [`observe`] reads everything into an [`Observed`]; [`decide`] (pure, in
//! `istio::decide`) makes the [`Plan`]; [`act`] carries it out in order and decides nothing:
//! when the `cacerts` write is refused it goes on with the plan's own fallback.
//!
//! The IstioCACerts never owns the target Secret through an ownerReference: deleting the
//! IstioCACerts must leave `cacerts` in place, because istiod needs it.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::issuer::IssuerObject;
use super::{Context, trust_anchors};
use crate::FIELD_MANAGER;
use crate::api::cert_manager::{
    CERTIFICATE_NAME_ANNOTATION, Certificate as CertManagerCertificate, CertificateStatus, ISSUER_GROUP_ANNOTATION,
    ISSUER_KIND_ANNOTATION, ISSUER_NAME_ANNOTATION,
};
use crate::api::issuer::{
    CLUSTER_ISSUER_KIND, ClusterMeshCAIssuer, ISSUER_KIND, IssuerSpec, IssuerStatus, MeshCAIssuer,
};
use crate::api::istio_cacerts::{ADVANCE_ROTATION_ANNOTATION, IstioCACerts, RotationPhase};
use crate::backend::IssuerScope;
use crate::error::{Error, Result};
use crate::istio::bundle_endpoint::ServingSecret;
use crate::istio::cacerts::{
    BACKUP_OF_ANNOTATION, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem, reason,
};
use crate::istio::cluster_trust_bundle;
use crate::istio::decide::decide;
use crate::istio::plan::{CacertsWrite, Observed, Outcome, Plan, PlannedEvent, Reissue, SecretWrite, Settings};
use crate::istio::publish::{self, PublishWrite, ROOT_PUBLISHED};
use crate::istio::revocation;
use crate::istio::trust_bundle;

pub use crate::istio::tracking::CERTIFICATES_HEALTHY;

#[instrument(skip_all, fields(namespace = icc.namespace().unwrap_or_default(), name = %icc.name_any()))]
pub async fn reconcile(icc: Arc<IstioCACerts>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        // done: a standby only keeps its caches warm; becoming the leader re-queues everything
        return Ok(Action::await_change());
    }
    let Some(observed) = observe(&ctx, &icc).await? else {
        // done: it was deleted; `cacerts` stays (istiod needs it). Its ClusterTrustBundles go
        // with the sweep (`sweep_trust_bundles`): a deletion rarely wakes a reconcile at all.
        return Ok(Action::await_change());
    };
    let settings = Settings {
        thresholds: ctx.config.thresholds(),
        rotation: ctx.config.rotation_limits(),
        cacerts_secret_names: ctx.config.cacerts_secret_names.clone(),
    };
    let plan = decide(&observed, &settings);
    act(&ctx, &observed, plan).await
}

// === observe ===

/// Reads everything the decision needs. A failing read of the source, the target or an
/// anchor is an error (retried with back-off); the Certificate and the issuer only add
/// tracking, so failing to read them leaves them out.
///
/// The IstioCACerts itself is read again from the API server, not taken from the watch cache:
/// the write of `cacerts` wakes the next reconcile, often before the cache holds the status
/// written with it. Decided on that stale status, a rotation entered its phase a second time
/// (a later `nextPhaseAt`, a duplicate history entry) and a forced advance could act twice.
/// `None`: it is gone.
pub async fn observe(ctx: &Context, cached: &IstioCACerts) -> Result<Option<Observed>> {
    let now = Timestamp::now();
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let Some(icc) = Api::<IstioCACerts>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading IstioCACerts {name}"), e))?
    else {
        return Ok(None);
    };
    let icc = Arc::new(icc);
    let spec = &icc.spec;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let read = |name: &str| {
        let (secrets, name) = (secrets.clone(), name.to_string());
        async move {
            secrets
                .get_opt(&name)
                .await
                .map_err(|e| Error::kube(format!("reading Secret {name}"), e))
        }
    };
    let source = read(&spec.source_secret_name).await?;
    let target = read(&spec.target_secret_name).await?;
    let anchors = trust_anchors::read_anchors(ctx, &namespace, &name, &spec.trust_anchors).await?;
    let certificate = source_certificate(ctx, &namespace, source.as_ref()).await;
    let issuer = source_issuer(ctx, &namespace, source.as_ref()).await;
    let backend_ca = issuer.as_ref().and_then(|i| i.status.as_ref()?.ca.clone());
    let enabled = spec.revocation.as_ref().is_some_and(|r| r.enabled);
    let revocation = match enabled {
        true => Some(revocation_for(ctx, &icc, issuer.as_ref(), source.is_some(), &anchors, now).await),
        false => None,
    };
    // Revocation was on and is off: does istiod still hand out the CRLs it loaded?
    let was_on = icc
        .status
        .as_ref()
        .is_some_and(|s| crate::api::conditions::find(&s.conditions, revocation::CRLS_CURRENT).is_some())
        || target
            .as_ref()
            .and_then(|t| t.data.as_ref())
            .is_some_and(|d| d.contains_key(crate::istio::cacerts::CA_CRL));
    let distributed_crls = if !enabled && was_on {
        Some(distributed_crls(ctx, &namespace).await)
    } else {
        None
    };
    let published = match &spec.publish_root {
        Some(p) => Some(published_config_map(ctx, &namespace, &p.config_map_name).await),
        None => None,
    };
    let serving = match spec
        .bundle_endpoint
        .as_ref()
        .filter(|e| e.enabled)
        .and_then(|e| e.tls_secret_name.as_deref())
    {
        Some(name) => Some(match read(name).await? {
            Some(secret) => match secret.data.as_ref().and_then(|d| d.get("tls.crt")) {
                Some(crt) => ServingSecret::Found(crt.0.clone()),
                None => ServingSecret::NotFound,
            },
            None => ServingSecret::NotFound,
        }),
        None => None,
    };
    let trust_bundles = if publishes_trust_bundles(&icc) {
        Some(list_trust_bundles(ctx, icc.metadata.uid.as_deref().unwrap_or_default()).await?)
    } else {
        None
    };
    Ok(Some(Observed {
        icc,
        source,
        target,
        anchors,
        certificate,
        backend_ca,
        published,
        revocation,
        distributed_crls,
        serving,
        trust_bundles,
        now,
    }))
}

/// Whether ClusterTrustBundles are (or were: the condition stays until they are deleted)
/// published for this IstioCACerts.
fn publishes_trust_bundles(icc: &IstioCACerts) -> bool {
    icc.spec.cluster_trust_bundle.as_ref().is_some_and(|c| c.enabled)
        || icc
            .status
            .as_ref()
            .is_some_and(|s| crate::api::conditions::find(&s.conditions, cluster_trust_bundle::PUBLISHED).is_some())
}

/// Our ClusterTrustBundles of the IstioCACerts with `uid`; `Unavailable` when the API server
/// does not serve them (404).
async fn list_trust_bundles(ctx: &Context, uid: &str) -> Result<cluster_trust_bundle::Found> {
    let api: Api<ClusterTrustBundle> = Api::all(ctx.client.clone());
    let selector = format!("{}={uid}", cluster_trust_bundle::ICC_UID_LABEL);
    match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => Ok(cluster_trust_bundle::Found::Listed(
            list.items.into_iter().map(existing_trust_bundle).collect(),
        )),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(cluster_trust_bundle::Found::Unavailable),
        Err(e) => Err(Error::kube("listing ClusterTrustBundles", e)),
    }
}

fn existing_trust_bundle(ctb: ClusterTrustBundle) -> cluster_trust_bundle::Existing {
    cluster_trust_bundle::Existing {
        name: ctb.name_any(),
        signer_name: ctb.spec.signer_name.clone(),
        trust_bundle: ctb.spec.trust_bundle.clone(),
        labels: ctb.metadata.labels.unwrap_or_default(),
        annotations: ctb.metadata.annotations.unwrap_or_default(),
    }
}

/// Deletes every ClusterTrustBundle of ours whose IstioCACerts is gone (within this
/// controller's namespaces); the leader only. Whether it is gone is asked of the API server,
/// owner by owner, never judged from a cache that may not have listed yet.
pub async fn sweep_trust_bundles(ctx: &Context) {
    if !ctx.leadership.is_leader() {
        return;
    }
    let api: Api<ClusterTrustBundle> = Api::all(ctx.client.clone());
    let selector = format!(
        "{MANAGED_BY_LABEL}={MANAGED_BY_VALUE},{}",
        cluster_trust_bundle::ICC_UID_LABEL
    );
    let list = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list,
        // The API is not served: nothing of ours can exist.
        Err(kube::Error::Api(status)) if status.code == 404 => return,
        Err(e) => {
            warn!(error = %e, "listing ClusterTrustBundles to sweep; the next sweep tries again");
            return;
        }
    };
    let scope = ctx.config.namespace.clone();
    let ours: Vec<cluster_trust_bundle::Existing> = list.items.into_iter().map(existing_trust_bundle).collect();
    // Each owner once: (namespace, name) → its uid now, if it exists.
    let mut live = Vec::new();
    let owners: std::collections::BTreeSet<(String, String)> = ours
        .iter()
        .filter_map(|e| {
            let (ns, name) = e.annotations.get(OWNER_ANNOTATION)?.split_once('/')?;
            Some((ns.to_string(), name.to_string()))
        })
        .filter(|(ns, _)| scope.as_deref().is_none_or(|s| s == ns))
        .collect();
    for (namespace, name) in owners {
        match Api::<IstioCACerts>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&name)
            .await
        {
            Ok(Some(icc)) => live.extend(icc.metadata.uid),
            Ok(None) => {}
            // Unknown: this sweep leaves it.
            Err(e) => {
                warn!(error = %e, "reading IstioCACerts {namespace}/{name} to sweep its ClusterTrustBundles");
                return;
            }
        }
    }
    let orphans: Vec<String> = ours
        .into_iter()
        .filter(|e| cluster_trust_bundle::orphaned(e, &live, |ns| scope.as_deref().is_none_or(|s| s == ns)))
        .map(|e| e.name)
        .collect();
    if !orphans.is_empty() {
        info!(
            count = orphans.len(),
            "deleting the ClusterTrustBundles of IstioCACerts that are gone"
        );
        if let Err((problem, _)) = delete_trust_bundles(ctx, &orphans).await {
            warn!("{}", problem.message);
        }
    }
}

/// Applies and deletes ClusterTrustBundles as planned. Refused: what the condition says, and
/// the error the reconcile ends in (retried with back-off).
async fn write_trust_bundles(
    ctx: &Context,
    writes: &cluster_trust_bundle::Writes,
) -> std::result::Result<(), (Problem, Error)> {
    let api: Api<ClusterTrustBundle> = Api::all(ctx.client.clone());
    for wanted in &writes.apply {
        if let Err(e) = api
            .patch(
                &wanted.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&wanted.apply_patch()),
            )
            .await
        {
            let problem = Problem {
                reason: cluster_trust_bundle::reason::WRITE_FAILED,
                message: format!(
                    "writing ClusterTrustBundle {} failed: {e} (the controller needs clustertrustbundles create and patch, and attest on signer {}: the chart grants both)",
                    wanted.name, wanted.signer_name
                ),
            };
            return Err((
                problem,
                Error::kube(format!("writing ClusterTrustBundle {}", wanted.name), e),
            ));
        }
    }
    delete_trust_bundles(ctx, &writes.delete).await
}

async fn delete_trust_bundles(ctx: &Context, names: &[String]) -> std::result::Result<(), (Problem, Error)> {
    let api: Api<ClusterTrustBundle> = Api::all(ctx.client.clone());
    for name in names {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => {
                let problem = Problem {
                    reason: cluster_trust_bundle::reason::WRITE_FAILED,
                    message: format!("deleting ClusterTrustBundle {name} failed: {e}"),
                };
                return Err((problem, Error::kube(format!("deleting ClusterTrustBundle {name}"), e)));
            }
        }
    }
    Ok(())
}

/// The CRLs istiod distributes from this namespace's `istio-ca-crl` ConfigMap (none when it is
/// absent, empty or unreadable: nothing to warn about then).
async fn distributed_crls(ctx: &Context, namespace: &str) -> Vec<crate::pki::crl::Crl> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let Ok(Some(cm)) = api.get_opt(revocation::DISTRIBUTED_CONFIG_MAP).await else {
        return Vec::new();
    };
    cm.data
        .as_ref()
        .and_then(|d| d.get(crate::istio::cacerts::CA_CRL))
        .filter(|pem| !pem.trim().is_empty())
        .and_then(|pem| crate::pki::crl::Crl::parse_pem_bundle(pem.as_bytes(), "istio-ca-crl").ok())
        .unwrap_or_default()
}

/// The status of the Certificate that writes the source (cert-manager's annotation names it).
async fn source_certificate(ctx: &Context, namespace: &str, source: Option<&Secret>) -> Option<CertificateStatus> {
    let certificate_name = source?.annotations().get(CERTIFICATE_NAME_ANNOTATION)?.clone();
    let api: Api<CertManagerCertificate> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(&certificate_name).await.ok()??.status
}

/// The issuer that signed the source, found through cert-manager's issuer annotations on it
/// (ours only; a MeshCAIssuer in this namespace).
struct SourceIssuer {
    spec: IssuerSpec,
    status: Option<IssuerStatus>,
    scope: IssuerScope,
    /// When `spec.revoked` was last changed, as `managedFields` record it: the revocation time
    /// of entries that give none.
    revoked_changed: Option<Timestamp>,
}

async fn source_issuer(ctx: &Context, namespace: &str, source: Option<&Secret>) -> Option<SourceIssuer> {
    let annotations = source?.annotations();
    if annotations.get(ISSUER_GROUP_ANNOTATION).map(String::as_str) != Some(crate::api::GROUP) {
        return None;
    }
    let issuer_name = annotations.get(ISSUER_NAME_ANNOTATION)?;
    fn of<I: IssuerObject>(issuer: I, cluster_resource_namespace: &str) -> SourceIssuer {
        SourceIssuer {
            spec: issuer.spec().clone(),
            status: issuer.status().cloned(),
            scope: issuer.scope(cluster_resource_namespace),
            revoked_changed: revoked_changed(issuer.meta()),
        }
    }
    let crn = &ctx.config.cluster_resource_namespace;
    match annotations.get(ISSUER_KIND_ANNOTATION).map(String::as_str) {
        Some(ISSUER_KIND) => Api::<MeshCAIssuer>::namespaced(ctx.client.clone(), namespace)
            .get_opt(issuer_name)
            .await
            .ok()?
            .map(|i| of(i, crn)),
        Some(CLUSTER_ISSUER_KIND) => Api::<ClusterMeshCAIssuer>::all(ctx.client.clone())
            .get_opt(issuer_name)
            .await
            .ok()?
            .map(|i| of(i, crn)),
        _ => None,
    }
}

/// The latest time a field manager wrote `spec.revoked`.
fn revoked_changed(meta: &kube::api::ObjectMeta) -> Option<Timestamp> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.pointer("/f:spec/f:revoked").is_some())
        })
        .filter_map(|m| m.time.as_ref())
        .map(|t| t.0)
        .max()
}

/// What revocation reads, with `spec.revocation` on: the issuer's revoked list and its
/// backend's CRLs, peers' CRLs from the bundles of the anchors, and `status.crl` as written.
async fn revocation_for(
    ctx: &Context,
    icc: &IstioCACerts,
    issuer: Option<&SourceIssuer>,
    source_found: bool,
    anchors: &[crate::istio::trust_bundle::AnchorInput],
    now: Timestamp,
) -> revocation::Inputs {
    let mut inputs = match issuer {
        Some(issuer) => revocation_inputs(ctx, issuer, now).await,
        // Said, so that the CA left without a CRL is explained.
        None => revocation::Inputs {
            problems: vec![format!(
                "Secret {}/{}{} names no issuer of ours (cert-manager's issuer annotations), so no backend gives the CRL of the CA above the intermediate",
                icc.namespace().unwrap_or_default(),
                icc.spec.source_secret_name,
                if source_found { "" } else { " (not found)" }
            )],
            ..Default::default()
        },
    };
    let (peers, problems) = revocation::peers(anchors, now);
    inputs.problems.extend(problems);
    revocation::Inputs {
        tracked: icc.status.as_ref().map(|s| s.crl.clone()).unwrap_or_default(),
        peers,
        ..inputs
    }
}

/// The issuer's revoked list and its backend's CRL sources.
async fn revocation_inputs(ctx: &Context, issuer: &SourceIssuer, now: Timestamp) -> revocation::Inputs {
    let (revoked, mut problems) = revocation::revoked(&issuer.spec.revoked, issuer.revoked_changed);
    let sources = crate::backend::crl::sources(&ctx.backends, &issuer.spec, &issuer.scope, now).await;
    problems.extend(sources.problems);
    revocation::Inputs {
        issuer: issuer.scope.display.clone(),
        revoked,
        signer: sources.signer,
        fetched: sources.fetched,
        problems,
        tracked: Vec::new(),
        peers: Vec::new(),
    }
}

/// The publishRoot ConfigMap; a failing read is shown in RootPublished, not retried.
async fn published_config_map(ctx: &Context, namespace: &str, name: &str) -> publish::Found {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(cm)) => publish::Found::Present(Box::new(cm)),
        Ok(None) => publish::Found::Absent,
        Err(e) => publish::Found::Unreadable(e.to_string()),
    }
}

// === act ===

/// Carries the plan out in order: `cacerts` (on refusal, the plan's fallback follows), the
/// published root, the ask for a new intermediate, status, events, the advance annotation,
/// metrics; then the requeue. A refused `cacerts` write ends the reconcile in its error after
/// all that, so the error policy retries it with back-off (a 409 at once) whether or not
/// anything else changes.
pub async fn act(ctx: &Context, o: &Observed, plan: Plan) -> Result<Action> {
    let (mut outcome, refused) = carry_out_cacerts(ctx, o, plan).await;
    if let Some(write) = &outcome.publish
        && let Err(problem) = write_published_root(ctx, o, write).await
    {
        outcome = outcome.refused(ROOT_PUBLISHED, problem);
    }
    // Refused, it is said in the condition and tried again with back-off.
    let mut trust_bundles_refused = None;
    if let Some(writes) = &outcome.trust_bundles
        && let Err(problem) = write_trust_bundles(ctx, writes).await
    {
        outcome = outcome.refused(cluster_trust_bundle::PUBLISHED, problem.0);
        trust_bundles_refused = Some(problem.1);
    }
    // Before the status that records it: an ask that fails is made again on the next reconcile.
    if let Some(reissue) = &outcome.reissue {
        request_reissue(ctx, o, reissue).await?;
    }
    if let Some(status) = outcome.status_write() {
        let api: Api<IstioCACerts> = Api::namespaced(ctx.client.clone(), o.namespace());
        // The resourceVersion read in observe guards the write: a status decided on an object
        // that changed since (a new annotation, another writer) is a conflict, decided again.
        let patch = serde_json::json!({
            "apiVersion": IstioCACerts::api_version(&()), "kind": "IstioCACerts",
            "metadata": {"resourceVersion": o.icc.resource_version()},
            "status": status,
        });
        api.patch_status(
            o.name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|e| Error::kube(format!("writing status of IstioCACerts {}", o.name()), e))?;
    }
    let reference = o.icc.object_ref(&());
    for event in &outcome.events {
        publish_event(ctx, &reference, event).await;
    }
    if outcome.remove_advance_annotation {
        remove_advance_annotation(ctx, o).await?;
    }
    update_metrics(ctx, o, &outcome);
    if let Some(error) = refused.or(trust_bundles_refused) {
        return Err(error);
    }
    Ok(match outcome.requeue_at {
        // A hair past the boundary, so the window has changed when we look.
        Some(at) => Action::requeue(at.duration_since(o.now).unsigned_abs() + std::time::Duration::from_millis(250)),
        None => Action::await_change(),
    })
}

/// Step 1: the `cacerts` write and what follows it — the plan's `then`, or its fallback (with
/// the refusal's error, to end the reconcile in).
async fn carry_out_cacerts(ctx: &Context, o: &Observed, plan: Plan) -> (Outcome, Option<Error>) {
    let Some(step) = &plan.cacerts else {
        return (plan.then, None);
    };
    let target_display = o.secret_display(&o.icc.spec.target_secret_name);
    match write_cacerts(ctx, o, &step.write).await {
        Ok(()) => {
            info!(target_secret = %target_display, fingerprint = %step.write.fingerprint, "cacerts written");
            let written = PlannedEvent {
                warning: false,
                reason: "Written".to_string(),
                action: "Write",
                note: step.write.note.clone(),
            };
            publish_event(ctx, &o.icc.object_ref(&()), &written).await;
            if let Some(failpoint) = &step.write.failpoint {
                crate::failpoint::hit(failpoint);
            }
            (plan.then, None)
        }
        Err((problem, error)) => {
            let outcome = plan.if_cacerts_refused(problem).unwrap_or(plan.then);
            (outcome, Some(error))
        }
    }
}

/// Writes `cacerts`: create when absent; replace with the read resourceVersion (a concurrent
/// change is a conflict, not an overwrite); or, adopting a `kubernetes.io/*` typed Secret,
/// delete exactly the object read and create it as Opaque. Should that create fail, the next
/// reconcile finds no target and creates it; istiod keeps the CA it loaded meanwhile.
async fn write_cacerts(ctx: &Context, o: &Observed, write: &CacertsWrite) -> Result<(), (Problem, Error)> {
    let name = &o.icc.spec.target_secret_name;
    let failed = |e| Error::kube(format!("writing {}", o.secret_display(name)), e);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), o.namespace());
    let mut secret = target_secret(o, write);
    if write.how == SecretWrite::Recreate {
        write_backup(ctx, o, write).await?;
        let preconditions = Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        };
        let params = DeleteParams {
            preconditions: Some(preconditions),
            ..Default::default()
        };
        if let Err(e) = secrets.delete(name, &params).await {
            let message = format!(
                "adopting {} of type {:?} needs it replaced by an Opaque Secret, but deleting it failed (retrying with back-off): {e}",
                o.secret_display(name),
                secret.type_.as_deref().unwrap_or_default()
            );
            return Err((problem(message), failed(e)));
        }
        secret.metadata = kube::api::ObjectMeta {
            name: secret.metadata.name.take(),
            namespace: secret.metadata.namespace.take(),
            labels: secret.metadata.labels.take(),
            annotations: secret.metadata.annotations.take(),
            ..Default::default()
        };
        secret.type_ = Some("Opaque".to_string());
    }
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let result = match write.how {
        SecretWrite::Replace => secrets.replace(name, &params, &secret).await,
        SecretWrite::Create => secrets.create(&params, &secret).await,
        SecretWrite::Recreate | SecretWrite::CreateAfterAdoption => recreate(&secrets, &params, &secret).await,
    };
    result.map(|_| ()).map_err(|e| {
        let problem = match write.how {
            SecretWrite::Recreate | SecretWrite::CreateAfterAdoption => recreate_failed(o, name, &e),
            SecretWrite::Create | SecretWrite::Replace => write_refused(&o.secret_display(name), &e),
        };
        (problem, failed(e))
    })
}

/// Creates the target again right after adoption deleted it. Until it exists, an istiod that
/// restarts makes its own self-signed CA, so the window is kept short: a failed create is
/// tried again at once, a few times, before the reconcile ends in the error (and back-off).
async fn recreate(secrets: &Api<Secret>, params: &PostParams, secret: &Secret) -> kube::Result<Secret> {
    let mut pause = std::time::Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match secrets.create(params, secret).await {
            Err(e) if attempt < 4 => {
                warn!(attempt, error = %e, "creating cacerts again after the adoption's delete failed; retrying at once");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn recreate_failed(o: &Observed, name: &str, error: &kube::Error) -> Problem {
    Problem {
        reason: reason::RECREATE_FAILED,
        message: format!(
            // The API server's answer last: it is long, and an event's note is cut to 1 KiB.
            "adopting {} deleted it to create it again as Opaque (what it held is in {}), but creating it failed 4 times; retrying with back-off. Until it exists, an istiod that restarts makes its own self-signed CA. The API server said: {error}",
            o.secret_display(name),
            o.secret_display(&crate::istio::cacerts::backup_name(name)),
        ),
    }
}

/// Copies the typed target to `<name>-meshca-backup` before adoption deletes it: created, or,
/// when an earlier adoption left one that is ours, replaced (one copy per target). A Secret of
/// that name that is not ours is never overwritten, and then nothing is deleted.
async fn write_backup(ctx: &Context, o: &Observed, write: &CacertsWrite) -> Result<(), (Problem, Error)> {
    let name = &o.icc.spec.target_secret_name;
    let backup_name = crate::istio::cacerts::backup_name(name);
    let display = o.secret_display(&backup_name);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), o.namespace());
    let Some(original) = &o.target else {
        return Ok(());
    };
    let mut backup = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(backup_name.clone()),
            namespace: Some(o.namespace().to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([
                (OWNER_ANNOTATION.to_string(), write.owner.clone()),
                (BACKUP_OF_ANNOTATION.to_string(), name.clone()),
            ])),
            // Owned: it holds a CA key, so it goes with the IstioCACerts that made it.
            owner_references: o.icc.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        type_: original.type_.clone(),
        data: original.data.clone(),
        ..Secret::default()
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..Default::default()
    };
    let refused = |e: kube::Error| {
        let problem = problem(format!(
            "adopting {} needs a copy of it in {display} before it is deleted, but writing that copy failed, so nothing was deleted (retrying with back-off): {e}",
            o.secret_display(name)
        ));
        (problem, Error::kube(format!("writing {display}"), e))
    };
    match secrets.create(&params, &backup).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(refused(e)),
    }
    let existing = secrets.get(&backup_name).await.map_err(refused)?;
    if existing.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        let message = format!(
            "adopting {} needs a copy of it in {display} before it is deleted, but that Secret exists and is not ours; nothing was deleted. Rename or remove it",
            o.secret_display(name)
        );
        // Not a conflict to retry at once: it takes someone to act (back-off meanwhile).
        return Err((problem(message.clone()), Error::Config(message)));
    }
    // A type cannot change, so a copy of another type is deleted first (it is ours).
    if existing.type_ != backup.type_ {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: existing.metadata.uid.clone(),
                resource_version: existing.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        secrets.delete(&backup_name, &params).await.map_err(refused)?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        return secrets.create(&params, &backup).await.map(|_| ()).map_err(refused);
    }
    backup.metadata.resource_version = existing.metadata.resource_version.clone();
    secrets
        .replace(&backup_name, &params, &backup)
        .await
        .map(|_| ())
        .map_err(refused)
}

/// The Secret to write: the one read (other labels and annotations kept) or a new Opaque one,
/// marked ours, with exactly the planned data.
fn target_secret(o: &Observed, write: &CacertsWrite) -> Secret {
    let mut secret = o.target.clone().unwrap_or_else(|| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(o.icc.spec.target_secret_name.clone()),
            namespace: Some(o.namespace().to_string()),
            ..Default::default()
        },
        type_: Some("Opaque".to_string()),
        ..Secret::default()
    });
    secret
        .labels_mut()
        .insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string());
    secret
        .annotations_mut()
        .insert(OWNER_ANNOTATION.to_string(), write.owner.clone());
    match &write.record {
        Some(record) if !record.is_empty() => {
            secret
                .annotations_mut()
                .insert(trust_bundle::RECORD_ANNOTATION.to_string(), record.clone());
        }
        Some(_) => {
            secret.annotations_mut().remove(trust_bundle::RECORD_ANNOTATION);
        }
        None => {}
    }
    secret.data = Some(
        write
            .data
            .iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone())))
            .collect::<BTreeMap<_, _>>(),
    );
    secret.string_data = None;
    secret
}

/// What a refused `cacerts` write means for status: the one place its errors are told apart.
fn write_refused(display: &str, error: &kube::Error) -> Problem {
    match error {
        // Someone changed it since we read it: decided again at once with the new state.
        kube::Error::Api(s) if s.code == 409 => problem(format!(
            "{display} changed while it was being written; retrying with its new content"
        )),
        e => problem(format!("writing {display} failed (retrying with back-off): {e}")),
    }
}

fn problem(message: String) -> Problem {
    Problem {
        reason: reason::WRITE_FAILED,
        message,
    }
}

/// Step 2: the published root, by server-side apply.
async fn write_published_root(ctx: &Context, o: &Observed, write: &PublishWrite) -> Result<(), Problem> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), o.namespace());
    let patch = write.apply_patch(o.namespace());
    api.patch(
        &write.config_map_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| Problem {
        reason: publish::reason::WRITE_FAILED,
        message: format!(
            "writing ConfigMap {}/{} failed: {e}",
            o.namespace(),
            write.config_map_name
        ),
    })
}

async fn publish_event(ctx: &Context, reference: &k8s_openapi::api::core::v1::ObjectReference, event: &PlannedEvent) {
    match (event.warning, event.action) {
        (true, "RootRotation") => warn!(message = %event.note, "root rotation"),
        (false, "RootRotation") => info!(reason = %event.reason, message = %event.note, "root rotation"),
        (true, _) => warn!(reason = %event.reason, message = %event.note, "istiocacerts"),
        (false, _) => {}
    }
    let type_ = if event.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    ctx.publish_event(reference, type_, &event.reason, event.action, event.note.clone())
        .await;
}

/// The advance annotation, once read, is removed, so it can never act on a later phase. Only
/// the value this reconcile read is removed (a JSON Patch `test` first): one set meanwhile,
/// such as a `force-<phase>` right after a refused early advance, stays for the next reconcile
/// (its write wakes one) instead of being dropped unread.
async fn remove_advance_annotation(ctx: &Context, o: &Observed) -> Result<()> {
    let Some(seen) = o
        .icc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADVANCE_ROTATION_ANNOTATION))
    else {
        return Ok(());
    };
    let api: Api<IstioCACerts> = Api::namespaced(ctx.client.clone(), o.namespace());
    let path = format!(
        "/metadata/annotations/{}",
        ADVANCE_ROTATION_ANNOTATION.replace('~', "~0").replace('/', "~1")
    );
    let patch: json_patch::Patch = match serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": seen},
        {"op": "remove", "path": path},
    ])) {
        Ok(patch) => patch,
        Err(e) => return Err(Error::Config(format!("building the annotation patch: {e}"))),
    };
    match api
        .patch(o.name(), &PatchParams::default(), &Patch::Json::<()>(patch))
        .await
    {
        Ok(_) => Ok(()),
        // The test failed: the annotation changed (or went) since it was read. Leave it.
        Err(kube::Error::Api(e)) if e.code == 422 || e.code == 409 => {
            debug!(
                namespace = o.namespace(),
                name = o.name(),
                "advance annotation changed since read; left for the next reconcile"
            );
            Ok(())
        }
        Err(e) => Err(Error::kube(
            format!("removing the {ADVANCE_ROTATION_ANNOTATION} annotation"),
            e,
        )),
    }
}

/// Asks cert-manager for a new intermediate as `cmctl renew` does: the Certificate's `Issuing`
/// condition set to True (reason `ManuallyTriggered`), written with the resourceVersion read so
/// that cert-manager's own status writes are never overwritten.
async fn request_reissue(ctx: &Context, o: &Observed, reissue: &Reissue) -> Result<()> {
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        o.namespace(),
        &kube::api::ApiResource::erase::<CertManagerCertificate>(&()),
    );
    let failed = |e| {
        Error::kube(
            format!("asking for a new intermediate on Certificate {}", reissue.certificate),
            e,
        )
    };
    let Some(certificate) = api.get_opt(&reissue.certificate).await.map_err(failed)? else {
        return Ok(());
    };
    // The source Secret's annotation names the Certificate; only the one that really writes
    // that Secret is asked, never another Certificate of the namespace.
    if certificate.data.pointer("/spec/secretName").and_then(|v| v.as_str()) != Some(&o.icc.spec.source_secret_name) {
        warn!(
            certificate = %reissue.certificate,
            "not asking for a new intermediate: that Certificate does not write the source Secret"
        );
        return Ok(());
    }
    let mut conditions: Vec<serde_json::Value> = certificate
        .data
        .pointer("/status/conditions")
        .and_then(|c| c.as_array())
        .cloned()
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c["type"] == "Issuing" && c["status"] == "True")
    {
        // done: already issuing (cert-manager's renewal, or our earlier ask)
        return Ok(());
    }
    conditions.retain(|c| c["type"] != "Issuing");
    conditions.push(serde_json::json!({
        "type": "Issuing",
        "status": "True",
        "reason": "ManuallyTriggered",
        "message": format!("mesh-ca-issuer: {}", reissue.message),
        "lastTransitionTime": o.now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "observedGeneration": certificate.metadata.generation,
    }));
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": certificate.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    api.patch_status(&reissue.certificate, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(failed)?;
    warn!(certificate = %reissue.certificate, "intermediate revoked by its issuer: a new one was requested from cert-manager");
    let event = PlannedEvent {
        warning: true,
        reason: "ReissueRequested".to_string(),
        action: "Reissue",
        note: format!(
            "asked cert-manager for a new intermediate (Certificate {}, Issuing=True): {}",
            reissue.certificate, reissue.message
        ),
    };
    publish_event(ctx, &o.icc.object_ref(&()), &event).await;
    Ok(())
}

fn update_metrics(ctx: &Context, o: &Observed, outcome: &Outcome) {
    let (namespace, name) = (o.namespace(), o.name());
    let metrics = &outcome.metrics;
    ctx.metrics.set_rotation_phase(
        namespace,
        name,
        metrics.rotation_phase,
        &RotationPhase::ALL.map(RotationPhase::as_str),
    );
    for (kind, series) in &metrics.certificates {
        ctx.metrics.set_certificates(kind, namespace, name, series);
    }
    ctx.metrics.set_crls(namespace, name, &metrics.crls);
    ctx.metrics.count_reconcile("istiocacerts", metrics.reconcile);
}
