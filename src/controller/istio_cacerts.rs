//! The IstioCACerts controller: writes istiod's `cacerts` from cert-manager's Secret, only
//! when the result verifies as istiod would load it and only into a Secret we own (or were
//! told to adopt), and tracks the renewal windows of the intermediate, its roots and the
//! issuer's backend CA — with status, one event per window change, metrics, and a requeue at
//! exactly the next window boundary.
//!
//! The IstioCACerts never owns the target Secret through an ownerReference: deleting the
//! IstioCACerts must leave `cacerts` in place, because istiod needs it.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use super::{Context, trust_anchors};
use crate::FIELD_MANAGER;
use crate::api::cert_manager::{
    CERTIFICATE_NAME_ANNOTATION, Certificate as CertManagerCertificate, ISSUER_GROUP_ANNOTATION,
    ISSUER_KIND_ANNOTATION, ISSUER_NAME_ANNOTATION,
};
use crate::api::conditions::{self, READY};
use crate::api::issuer::{CLUSTER_ISSUER_KIND, CertificateSummary, ClusterMeshCAIssuer, ISSUER_KIND, MeshCAIssuer};
use crate::api::istio_cacerts::{
    ADVANCE_ROTATION_ANNOTATION, IstioCACerts, IstioCACertsStatus, RenewalWindow, RotationPhase, TrackedAnchor,
    TrackedCertificate,
};
use crate::error::{Error, Result};
use crate::istio::cacerts::{
    self, BundleContents, CacertsPlan, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem, Target,
};
use crate::istio::rotation;
use crate::istio::trust_bundle::{self, AnchorInput, Assembly, Change, CheckedAnchors};
use crate::metrics::CertificateSeries;
use crate::pki::Certificate;
use crate::pki::renewal::{Life, Thresholds, risks};

/// The second condition: every tracked certificate healthy, no dangerous combination.
pub const CERTIFICATES_HEALTHY: &str = "CertificatesHealthy";

/// Roles of tracked certificates, as in metrics labels and event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Intermediate,
    Root,
    BackendCA,
}

impl Role {
    pub fn metric_kind(self) -> &'static str {
        match self {
            Role::Intermediate => "intermediate",
            Role::Root => "root",
            Role::BackendCA => "backend_ca",
        }
    }
    fn event_prefix(self) -> &'static str {
        match self {
            Role::Intermediate => "Intermediate",
            Role::Root => "Root",
            Role::BackendCA => "BackendCA",
        }
    }
}

/// A certificate to track: who, its life, and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub role: Role,
    pub subject: String,
    pub fingerprint: String,
    pub life: Life,
}

impl Tracked {
    fn from_certificate(role: Role, cert: &Certificate, renewal: Option<Timestamp>) -> Self {
        Self {
            role,
            subject: cert.subject(),
            fingerprint: cert.fingerprint(),
            life: Life::new(cert.not_before(), cert.not_after(), renewal),
        }
    }

    fn status(&self, now: Timestamp, t: &Thresholds) -> TrackedCertificate {
        TrackedCertificate {
            subject: self.subject.clone(),
            fingerprint_sha256: self.fingerprint.clone(),
            not_before: self.life.not_before.to_string(),
            not_after: self.life.not_after.to_string(),
            renewal_time: self.life.renewal.to_string(),
            window: self.life.window(now, t),
            name_constraints: None,
        }
    }
}

/// The `CertificatesHealthy` verdict: (healthy, reason, message).
pub fn health(tracked: &[Tracked], anchor: Option<&Tracked>, now: Timestamp, t: &Thresholds) -> (bool, String, String) {
    let mut problems: Vec<(String, String)> = Vec::new();
    // Worst window first: Expired, Expiring, RenewalDue.
    for window in [
        RenewalWindow::Expired,
        RenewalWindow::Expiring,
        RenewalWindow::RenewalDue,
    ] {
        for c in tracked.iter().filter(|c| c.life.window(now, t) == window) {
            let what = match window {
                RenewalWindow::Expired => format!("expired at {}", c.life.not_after),
                RenewalWindow::Expiring => format!("expires at {}", c.life.not_after),
                _ => format!("was due for renewal at {} and has not been renewed", c.life.renewal),
            };
            problems.push((
                format!("{}{}", c.role.event_prefix(), window.as_str()),
                format!("{} {} {what}", role_name(c.role), c.subject),
            ));
        }
    }
    if let Some(intermediate) = tracked.iter().find(|c| c.role == Role::Intermediate) {
        let backend = tracked.iter().find(|c| c.role == Role::BackendCA);
        for risk in risks(
            &intermediate.life,
            anchor.map(|a| &a.life),
            backend.map(|b| &b.life),
            now,
            t,
        ) {
            problems.push((risk.reason.to_string(), risk.message));
        }
    }
    match problems.first() {
        None => (
            true,
            "AllHealthy".to_string(),
            "Every tracked certificate is within its healthy window".to_string(),
        ),
        Some((reason, _)) => {
            let message = problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
            (false, reason.clone(), message)
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Intermediate => "the intermediate",
        Role::Root => "the root",
        Role::BackendCA => "the backend CA",
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut data: BTreeMap<String, Vec<u8>> = secret
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    // stringData is write-only on the server, but a Secret object built by hand may carry it.
    if let Some(strings) = &secret.string_data {
        for (k, v) in strings {
            data.insert(k.clone(), v.clone().into_bytes());
        }
    }
    data
}

fn target_state(secret: Option<&Secret>) -> Target {
    match secret {
        None => Target::Absent,
        Some(s) => {
            let ours = s.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
            Target::Present {
                data: secret_data(s),
                owner: ours.then(|| s.annotations().get(OWNER_ANNOTATION).cloned()).flatten(),
            }
        }
    }
}

fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

#[instrument(skip_all, fields(namespace = icc.namespace().unwrap_or_default(), name = %icc.name_any()))]
pub async fn reconcile(icc: Arc<IstioCACerts>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.leadership.is_leader() {
        // done: a standby only keeps its caches warm; becoming the leader re-queues everything
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let namespace = icc.namespace().unwrap_or_default();
    let name = icc.name_any();
    let spec = &icc.spec;
    let thresholds = ctx.config.thresholds();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let source_display = format!("Secret {namespace}/{}", spec.source_secret_name);
    let target_display = format!("Secret {namespace}/{}", spec.target_secret_name);
    let read = |n: &str| {
        let secrets = secrets.clone();
        let n = n.to_string();
        async move {
            secrets
                .get_opt(&n)
                .await
                .map_err(|e| Error::kube(format!("reading Secret {n}"), e))
        }
    };
    let source = read(&spec.source_secret_name).await?;
    let target_secret = read(&spec.target_secret_name).await?;
    let target = target_state(target_secret.as_ref());

    let anchor_inputs = trust_anchors::read_anchors(&ctx, &namespace, &spec.trust_anchors).await?;
    let recorded = trust_bundle::parse_record(
        target_secret
            .as_ref()
            .and_then(|s| s.annotations().get(trust_bundle::RECORD_ANNOTATION))
            .map(String::as_str),
    );

    let parsed = source
        .as_ref()
        .map(|s| cacerts::read_source(&secret_data(s), &source_display));
    // The anchors' certificates, so that a rotation never cuts an old root that is also one.
    let anchor_certificates = trust_bundle::check_anchors(&anchor_inputs, &[], now)
        .map(|c| c.certificates())
        .unwrap_or_default();
    let previous_rotation = icc.status.as_ref().and_then(|s| s.root_rotation.as_ref());
    let rotation = match &parsed {
        Some(Ok(src)) => Some(rotation::decide(&rotation::Inputs {
            spec: spec.root_rotation.as_ref(),
            status: previous_rotation,
            advance: icc.annotations().get(ADVANCE_ROTATION_ANNOTATION).map(String::as_str),
            source: src,
            target: &target,
            anchors: &anchor_certificates,
            now,
        })),
        _ => None,
    };
    let decision: Result<CacertsPlan, Problem> = match (parsed, &rotation) {
        (None, _) => Err(Problem {
            reason: cacerts::reason::SOURCE_NOT_FOUND,
            message: format!(
                "{source_display} not found: it is written by cert-manager once the istiod intermediate Certificate is issued"
            ),
        }),
        (Some(Err(problem)), _) => Err(problem),
        (Some(Ok(src)), rotation) => {
            let ordinary = rotation::Bundle::Ordinary;
            let bundle = rotation.as_ref().map_or(&ordinary, |r| &r.bundle);
            rotation::plan(&src, bundle, &target, &name, spec.adopt_existing, now)
        }
    };
    // The anchors join root-cert.pem only when every one of them is good; otherwise
    // root-cert.pem stays as it is (a renewal of the intermediate still goes through: a peer's
    // broken ConfigMap must not leave this cluster's renewal stuck).
    let (decision, trust) = with_anchors(decision, &anchor_inputs, &target, &recorded, now);

    // What istiod runs with after this reconcile: the new bundle, or the one left in place.
    // A rotation's phase moves on only once its bundle is in the target.
    let mut carried_out = false;
    let mut write_failed = None;
    let (outcome, live): (Result<String, Problem>, Option<BundleContents>) = match decision {
        Ok(plan) => {
            let mut summary = format!(
                "{target_display} holds intermediate {} (SHA-256 {}) valid until {}, chaining to root {}; root-cert.pem has {} trust anchor(s)",
                plan.contents.intermediate.subject(),
                plan.contents.intermediate.fingerprint(),
                plan.contents.intermediate.not_after(),
                plan.contents.anchor.subject(),
                plan.contents.roots.len()
            );
            summary.push_str(&trust.summary());
            let record = match &trust {
                Trust::Applied { assembly, .. } => Some(trust_bundle::format_record(&assembly.record)),
                _ => None,
            };
            let written = write_target(&ctx, &icc, &plan, target_secret.as_ref(), record, trust.change_note()).await;
            carried_out = written.is_ok();
            if carried_out && plan.changed {
                // Tests stop the process here: cacerts written, status not yet (a crash at the
                // worst moment of a phase change).
                if let Some((phase, _)) = rotation.as_ref().and_then(|r| r.transition.as_ref()) {
                    crate::failpoint::hit(&format!("rotation-written-{}", phase.as_str()));
                }
            }
            match written {
                Ok(()) => match &trust {
                    Trust::Invalid(problem) => (
                        Err(Problem {
                            reason: problem.reason,
                            message: format!(
                                "{}; root-cert.pem is left as it was and no trust anchor is added or removed until this is fixed. {summary}",
                                problem.message
                            ),
                        }),
                        Some(plan.contents),
                    ),
                    _ => (Ok(summary), Some(plan.contents)),
                },
                Err((problem, source)) => {
                    // Shown in status below, and then retried by the error policy.
                    write_failed = Some(Error::kube(format!("writing {target_display}"), source));
                    let live = existing_bundle(&target, now);
                    (Err(problem), live)
                }
            }
        }
        Err(problem) => (Err(problem), existing_bundle(&target, now)),
    };

    // === tracking ===
    let mut tracked = Vec::new();
    let mut anchor = None;
    if let Some(bundle) = &live {
        let renewal = intermediate_renewal_time(&ctx, &namespace, source.as_ref(), &bundle.intermediate).await;
        tracked.push(Tracked::from_certificate(
            Role::Intermediate,
            &bundle.intermediate,
            renewal,
        ));
        for root in &bundle.roots {
            let t = Tracked::from_certificate(Role::Root, root, None);
            if *root == bundle.anchor {
                anchor = Some(t.clone());
            }
            tracked.push(t);
        }
    }
    if let Some(backend) = backend_ca(&ctx, &namespace, source.as_ref()).await {
        tracked.push(backend);
    }

    let (healthy, health_reason, health_message) = health(&tracked, anchor.as_ref(), now, &thresholds);

    // === trust anchors and the published root ===
    let previous = icc.status.as_ref();
    let live_roots: Vec<&Certificate> = live.as_ref().map(|b| b.roots.iter().collect()).unwrap_or_default();
    let (tracked_anchors, mesh_config) = match &trust {
        Trust::Applied { checked, .. } => (
            checked
                .anchors
                .iter()
                .flat_map(|a| {
                    a.certificates
                        .iter()
                        .filter(|c| live_roots.contains(c))
                        .map(|c| TrackedAnchor {
                            name: a.name.clone(),
                            trust_domains: a.trust_domains.clone(),
                            certificate: Tracked::from_certificate(Role::Root, c, None).status(now, &thresholds),
                        })
                })
                .collect::<Vec<_>>(),
            Some(trust_bundle::mesh_config(&spec.trust_domain, &checked.anchors)),
        ),
        // Unknown this time (source missing, or an anchor is bad): what was shown stays, for
        // the anchors still in root-cert.pem.
        _ => {
            let live_fps: Vec<String> = live_roots.iter().map(|c| c.fingerprint()).collect();
            (
                previous
                    .map(|s| s.trust_anchors.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| live_fps.contains(&a.certificate.fingerprint_sha256))
                    .collect(),
                previous.and_then(|s| s.mesh_config.clone()),
            )
        }
    };
    let anchor_fingerprints: Vec<String> = tracked_anchors
        .iter()
        .map(|a| a.certificate.fingerprint_sha256.clone())
        .collect();
    // === root rotation ===
    let rotation = rotation.map(|mut r| {
        if !carried_out && !matches!(r.bundle, rotation::Bundle::Refused(_)) {
            // The write failed: nothing moved, the phase stays.
            r.status = previous_rotation.cloned();
            r.transition = None;
            r.consume_advance = false;
            r.condition = None;
        }
        r
    });
    let published_roots = rotation.as_ref().and_then(|r| r.published_roots.clone()).or_else(|| {
        // Not decided this time (source unreadable, write failed): while old and new roots are
        // both trusted, both stay published.
        let status = previous_rotation.filter(|s| {
            matches!(
                s.phase,
                RotationPhase::AddingNewRoot | RotationPhase::SwitchingIntermediate
            )
        })?;
        let both: Vec<Certificate> = live_roots
            .iter()
            .filter(|c| {
                let fp = c.fingerprint();
                status.old_roots.contains(&fp) || status.new_root == fp
            })
            .map(|c| (*c).clone())
            .collect();
        (!both.is_empty()).then_some(both)
    });

    let published = match &spec.publish_root {
        None => None,
        Some(publish) => {
            let own: Vec<Certificate> =
                published_roots.unwrap_or_else(|| live.iter().map(|b| b.anchor.clone()).collect());
            Some(match trust_anchors::publish_root(&ctx, &icc, &own).await {
                Ok(_) => (
                    true,
                    trust_anchors::reason::PUBLISHED.to_string(),
                    format!(
                        "ConfigMap {namespace}/{} key {} holds this cluster's root {} (trust domain {})",
                        publish.config_map_name,
                        publish.key,
                        own.iter().map(Certificate::subject).collect::<Vec<_>>().join(", "),
                        spec.trust_domain
                    ),
                ),
                Err(p) => (false, p.reason.to_string(), p.message),
            })
        }
    };
    let generation = icc.meta().generation;
    let find = |t: &str| previous.and_then(|s| conditions::find(&s.conditions, t));
    let (ready, ready_reason, ready_message) = match &outcome {
        Ok(summary) => (true, cacerts::reason::SYNCED.to_string(), summary.clone()),
        Err(p) => (false, p.reason.to_string(), p.message.clone()),
    };
    let status = IstioCACertsStatus {
        conditions: vec![
            conditions::next(
                find(READY),
                READY,
                ready,
                &ready_reason,
                ready_message.clone(),
                generation,
                now,
            ),
            conditions::next(
                find(CERTIFICATES_HEALTHY),
                CERTIFICATES_HEALTHY,
                healthy,
                &health_reason,
                health_message.clone(),
                generation,
                now,
            ),
        ]
        .into_iter()
        .chain(
            rotation
                .as_ref()
                .and_then(|r| r.condition.as_ref())
                .map(|(reason, message)| {
                    let in_progress = rotation
                        .as_ref()
                        .and_then(|r| r.status.as_ref())
                        .is_some_and(|s| s.phase.in_progress());
                    conditions::next(
                        find(rotation::ROOT_ROTATION),
                        rotation::ROOT_ROTATION,
                        in_progress,
                        reason,
                        message.clone(),
                        generation,
                        now,
                    )
                }),
        )
        .chain(
            // Not decided this time: the condition stays as it was.
            find(rotation::ROOT_ROTATION)
                .filter(|_| rotation.as_ref().is_none_or(|r| r.condition.is_none()))
                .cloned(),
        )
        .chain(published.as_ref().map(|(ok, reason, message)| {
            conditions::next(
                find(trust_anchors::ROOT_PUBLISHED),
                trust_anchors::ROOT_PUBLISHED,
                *ok,
                reason,
                message.clone(),
                generation,
                now,
            )
        }))
        .collect(),
        intermediate: tracked
            .iter()
            .find(|t| t.role == Role::Intermediate)
            .map(|t| TrackedCertificate {
                name_constraints: live.as_ref().and_then(|b| constraints_summary(&b.intermediate)),
                ..t.status(now, &thresholds)
            }),
        roots: tracked
            .iter()
            .filter(|t| t.role == Role::Root && !anchor_fingerprints.contains(&t.fingerprint))
            .map(|t| t.status(now, &thresholds))
            .collect(),
        backend_ca: tracked
            .iter()
            .find(|t| t.role == Role::BackendCA)
            .map(|t| t.status(now, &thresholds)),
        trust_anchors: tracked_anchors,
        mesh_config,
        root_rotation: rotation
            .as_ref()
            .map_or(previous_rotation.cloned(), |r| r.status.clone()),
    };

    if previous != Some(&status) {
        let api: Api<IstioCACerts> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch =
            serde_json::json!({"apiVersion": IstioCACerts::api_version(&()), "kind": "IstioCACerts", "status": status});
        api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(|e| Error::kube(format!("writing status of IstioCACerts {name}"), e))?;
    }
    announce(&ctx, &icc, previous, &status, &tracked, now, &thresholds).await;
    if let Some(r) = &rotation {
        carry_out_rotation(&ctx, &icc, r).await?;
    }
    ctx.metrics.set_rotation_phase(
        &namespace,
        &name,
        status.root_rotation.as_ref().map(|r| r.phase.as_str()),
        &RotationPhase::ALL.map(RotationPhase::as_str),
    );

    // === metrics ===
    for role in [Role::Intermediate, Role::Root, Role::BackendCA] {
        let series: Vec<CertificateSeries> = tracked
            .iter()
            .filter(|t| t.role == role)
            .map(|t| CertificateSeries {
                fingerprint: t.fingerprint.clone(),
                not_after: t.life.not_after.as_second(),
                renewal: Some(t.life.renewal.as_second()),
                window: Some(t.life.window(now, &thresholds)),
            })
            .collect();
        ctx.metrics
            .set_certificates(role.metric_kind(), &namespace, &name, &series);
    }
    if let Some(error) = write_failed {
        // A refused write is an error, not a verdict: the error policy retries it with back-off
        // (a 409 at once), whether or not anything else changes.
        ctx.metrics.count_reconcile("istiocacerts", "write_failed");
        return Err(error);
    }
    ctx.metrics
        .count_reconcile("istiocacerts", if ready { "synced" } else { "refused" });

    // Requeue exactly at the next window boundary; watches cover every other change.
    let next = tracked
        .iter()
        .filter_map(|t| t.life.next_boundary(now, &thresholds))
        .chain(rotation.as_ref().and_then(|r| r.requeue_at))
        .min();
    Ok(match next {
        // A hair past the boundary, so the window has changed when we look.
        Some(at) => Action::requeue(at.duration_since(now).unsigned_abs() + std::time::Duration::from_millis(250)),
        None => Action::await_change(),
    })
}

/// The rotation's events and its annotation: one event per phase change, a warning for an
/// advance annotation that named another phase, and the annotation removed once it was read
/// (so it can never act on a later phase).
async fn carry_out_rotation(ctx: &Context, icc: &IstioCACerts, decision: &rotation::Decision) -> Result<()> {
    let reference = icc.object_ref(&());
    if let Some((phase, message)) = &decision.transition {
        info!(phase = phase.as_str(), %message, "root rotation");
        ctx.publish_event(
            &reference,
            EventType::Normal,
            &format!("Rotation{}", phase.as_str()),
            "RootRotation",
            message.clone(),
        )
        .await;
    }
    if let Some(message) = &decision.stale_advance {
        warn!(%message, "root rotation");
        ctx.publish_event(
            &reference,
            EventType::Warning,
            rotation::reason::STALE_ADVANCE,
            "RootRotation",
            message.clone(),
        )
        .await;
    }
    if decision.consume_advance || decision.stale_advance.is_some() {
        let api: Api<IstioCACerts> = Api::namespaced(ctx.client.clone(), &icc.namespace().unwrap_or_default());
        let patch = serde_json::json!({"metadata": {"annotations": {ADVANCE_ROTATION_ANNOTATION: null}}});
        api.patch(&icc.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube(format!("removing the {ADVANCE_ROTATION_ANNOTATION} annotation"), e))?;
    }
    Ok(())
}

/// What became of the trust anchors in this reconcile.
enum Trust {
    /// No plan to put them into (the source or target is not usable).
    NotApplied,
    /// An anchor is bad: root-cert.pem stays as it was.
    Invalid(Problem),
    /// Every anchor checked and assembled into the plan.
    Applied {
        checked: CheckedAnchors,
        assembly: Assembly,
    },
}

impl Trust {
    /// For the Ready message: notes, how the file relates to the previous one, and what istiod
    /// needs to pick a change up.
    fn summary(&self) -> String {
        let mut out = String::new();
        if let Trust::Applied { checked, assembly } = self {
            for note in &checked.notes {
                out.push_str("; ");
                out.push_str(note);
            }
            if assembly.deferred > 0 {
                out.push_str(&format!(
                    "; {} trust anchor certificate(s) are added in the next step, after the removal (never both in one write)",
                    assembly.deferred
                ));
            }
        }
        out.push_str("; ");
        out.push_str(trust_bundle::RELOAD_NOTE);
        out
    }

    /// For the Written event: what this write did to root-cert.pem.
    fn change_note(&self) -> Option<String> {
        let Trust::Applied { assembly, .. } = self else {
            return None;
        };
        let names = |certs: &[Certificate]| certs.iter().map(Certificate::subject).collect::<Vec<_>>().join(", ");
        match assembly.change {
            Change::Unchanged | Change::Fresh => None,
            Change::Grew => Some(format!(
                "root-cert.pem grew by {} (the previous bytes are its prefix); {}",
                names(&assembly.added),
                trust_bundle::RELOAD_NOTE
            )),
            Change::Shrank => Some(format!(
                "root-cert.pem lost {} (the new bytes are contained in the previous); {}",
                names(&assembly.removed),
                trust_bundle::RELOAD_NOTE
            )),
            Change::Reordered => Some(format!(
                "root-cert.pem lost {} from its middle: a subset of the previous certificates but not of its bytes, which istiod versions that compare bytes ignore; restart istiod",
                names(&assembly.removed)
            )),
        }
    }
}

/// The name constraints a certificate carries, for status.
fn constraints_summary(certificate: &Certificate) -> Option<crate::api::name_constraints::NameConstraintsSummary> {
    match crate::pki::name_constraints::carried_by(certificate) {
        Ok(found) => found.map(|(critical, nc)| nc.summary(critical)),
        Err(why) => {
            // Not status material: a summary would have to invent subtrees. Say it in the log.
            warn!(fingerprint = %certificate.fingerprint(), %why, "the intermediate's name constraints cannot be read");
            None
        }
    }
}

/// Checks the anchors and puts them into the plan (see [`Trust`]).
fn with_anchors(
    decision: Result<CacertsPlan, Problem>,
    inputs: &[AnchorInput],
    target: &Target,
    recorded: &std::collections::BTreeSet<String>,
    now: Timestamp,
) -> (Result<CacertsPlan, Problem>, Trust) {
    let plan = match decision {
        Ok(plan) => plan,
        Err(problem) => return (Err(problem), Trust::NotApplied),
    };
    let own_roots = [plan.contents.anchor.clone()];
    match trust_bundle::check_anchors(inputs, &own_roots, now) {
        Err(problem) => (Ok(plan), Trust::Invalid(problem)),
        Ok(checked) => match trust_bundle::apply(plan, target, recorded, &checked, now) {
            Ok((plan, assembly)) => (Ok(plan), Trust::Applied { checked, assembly }),
            Err(problem) => (Err(problem), Trust::NotApplied),
        },
    }
}

/// The bundle currently in the target, if it is one istiod could load.
fn existing_bundle(target: &Target, now: Timestamp) -> Option<BundleContents> {
    match target {
        Target::Present { data, .. } if !data.contains_key(cacerts::ISTIO_GENERATED) => {
            // A bundle that fails verification (say, an expired intermediate) is tracked too:
            // that is exactly what must be seen.
            cacerts::verify_bundle(data, now)
                .ok()
                .or_else(|| bundle_for_tracking(data))
        }
        _ => None,
    }
}

/// Best effort for tracking a bundle that fails verification at any time (e.g. expired
/// intermediate, valid root): its certificates, unjudged.
fn bundle_for_tracking(data: &BTreeMap<String, Vec<u8>>) -> Option<BundleContents> {
    let intermediate = Certificate::parse_pem_bundle(data.get(cacerts::CA_CERT)?, "ca-cert.pem")
        .ok()?
        .into_iter()
        .next()?;
    let roots = Certificate::parse_pem_bundle(data.get(cacerts::ROOT_CERT)?, "root-cert.pem").ok()?;
    let anchor = roots
        .iter()
        .find(|r| intermediate.is_signed_by(r))
        .cloned()
        .or_else(|| roots.first().cloned())?;
    Some(BundleContents {
        chain: vec![intermediate.clone()],
        intermediate,
        roots,
        anchor,
    })
}

/// Writes the planned bundle: create when absent, replace (with the read resourceVersion, so a
/// concurrent change is a conflict, not an overwrite) when present. No write when unchanged.
async fn write_target(
    ctx: &Context,
    icc: &IstioCACerts,
    plan: &CacertsPlan,
    existing: Option<&Secret>,
    anchor_record: Option<String>,
    root_change: Option<String>,
) -> Result<(), (Problem, kube::Error)> {
    if !plan.changed {
        return Ok(());
    }
    let namespace = icc.namespace().unwrap_or_default();
    let name = &icc.spec.target_secret_name;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let data: BTreeMap<String, ByteString> = plan
        .data
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.clone())))
        .collect();
    let mut secret = existing.cloned().unwrap_or_else(|| Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
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
        .insert(OWNER_ANNOTATION.to_string(), icc.name_any());
    match anchor_record {
        Some(record) if !record.is_empty() => {
            secret
                .annotations_mut()
                .insert(trust_bundle::RECORD_ANNOTATION.to_string(), record);
        }
        Some(_) => {
            secret.annotations_mut().remove(trust_bundle::RECORD_ANNOTATION);
        }
        None => {}
    }
    secret.data = Some(data);
    secret.string_data = None;
    // A Secret's type is immutable, and a `kubernetes.io/tls` Secret must keep tls.crt and
    // tls.key — which istiod would read instead of our keys. Adopting one therefore replaces
    // it: delete exactly the object we read (uid and resourceVersion as preconditions, so a
    // concurrent change is a conflict, not a loss), then create it as Opaque below. Should
    // the create fail, the next reconcile finds no target and creates it; istiod keeps the
    // CA it loaded meanwhile.
    // (Every built-in `kubernetes.io/*` type has keys the API server requires.)
    let recreate = existing.is_some_and(|s| s.type_.as_deref().is_some_and(|t| t.starts_with("kubernetes.io/")));
    if recreate {
        let preconditions = kube::api::Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        };
        let params = kube::api::DeleteParams {
            preconditions: Some(preconditions),
            ..Default::default()
        };
        if let Err(e) = secrets.delete(name, &params).await {
            return Err((
                Problem {
                    reason: cacerts::reason::WRITE_FAILED,
                    message: format!(
                        "adopting Secret {namespace}/{name} of type {:?} needs it replaced by an Opaque Secret, but deleting it failed (retrying with back-off): {e}",
                        secret.type_.as_deref().unwrap_or_default()
                    ),
                },
                e,
            ));
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
    let result = if existing.is_some() && !recreate {
        secrets
            .replace(
                name,
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                },
                &secret,
            )
            .await
    } else {
        secrets
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.to_string()),
                    ..Default::default()
                },
                &secret,
            )
            .await
    };
    let secret_display = format!("Secret {namespace}/{name}");
    match result {
        Ok(_) => {
            let mut note = format!(
                "{} {secret_display}: intermediate {} (SHA-256 {}) valid until {}",
                if plan.adopting { "Adopted and wrote" } else { "Wrote" },
                plan.contents.intermediate.subject(),
                plan.contents.intermediate.fingerprint(),
                plan.contents.intermediate.not_after()
            );
            if let Some(change) = &root_change {
                note.push_str("; ");
                note.push_str(change);
            }
            if !plan.dropped_keys.is_empty() {
                note.push_str(&format!(
                    "; removed keys {:?} so that istiod reads the new bundle",
                    plan.dropped_keys
                ));
            }
            info!(target_secret = %secret_display, fingerprint = %plan.contents.intermediate.fingerprint(), "cacerts written");
            ctx.publish_event(&icc.object_ref(&()), EventType::Normal, "Written", "Write", note)
                .await;
            Ok(())
        }
        // Someone changed it since we read it: decided again at once with the new state.
        Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if s.code == 409) => Err((
            Problem {
                reason: cacerts::reason::WRITE_FAILED,
                message: format!("{secret_display} changed while it was being written; retrying with its new content"),
            },
            e,
        )),
        Err(e) => Err((
            Problem {
                reason: cacerts::reason::WRITE_FAILED,
                message: format!("writing {secret_display} failed (retrying with back-off): {e}"),
            },
            e,
        )),
    }
}

/// The Certificate's `status.renewalTime`, when it describes this very intermediate.
async fn intermediate_renewal_time(
    ctx: &Context,
    namespace: &str,
    source: Option<&Secret>,
    intermediate: &Certificate,
) -> Option<Timestamp> {
    let certificate_name = source?.annotations().get(CERTIFICATE_NAME_ANNOTATION)?.clone();
    let api: Api<CertManagerCertificate> = Api::namespaced(ctx.client.clone(), namespace);
    let status = api.get_opt(&certificate_name).await.ok()??.status?;
    let same = status.not_after.as_ref().map(|t| t.0.as_second()) == Some(intermediate.not_after().as_second());
    same.then(|| status.renewal_time.map(|t| t.0)).flatten()
}

/// The issuer's backend CA, found through cert-manager's issuer annotations on the source.
async fn backend_ca(ctx: &Context, namespace: &str, source: Option<&Secret>) -> Option<Tracked> {
    let annotations = source?.annotations();
    if annotations.get(ISSUER_GROUP_ANNOTATION).map(String::as_str) != Some(crate::api::GROUP) {
        return None;
    }
    let issuer_name = annotations.get(ISSUER_NAME_ANNOTATION)?;
    let summary: CertificateSummary = match annotations.get(ISSUER_KIND_ANNOTATION).map(String::as_str) {
        Some(ISSUER_KIND) => {
            Api::<MeshCAIssuer>::namespaced(ctx.client.clone(), namespace)
                .get_opt(issuer_name)
                .await
                .ok()??
                .status?
                .ca?
        }
        Some(CLUSTER_ISSUER_KIND) => {
            Api::<ClusterMeshCAIssuer>::all(ctx.client.clone())
                .get_opt(issuer_name)
                .await
                .ok()??
                .status?
                .ca?
        }
        _ => return None,
    };
    Some(Tracked {
        role: Role::BackendCA,
        subject: summary.subject,
        fingerprint: summary.fingerprint_sha256,
        life: Life::new(parse_time(&summary.not_before)?, parse_time(&summary.not_after)?, None),
    })
}

/// One event per change: Ready's reason, CertificatesHealthy's reason, and each tracked
/// certificate's window.
async fn announce(
    ctx: &Context,
    icc: &IstioCACerts,
    previous: Option<&IstioCACertsStatus>,
    status: &IstioCACertsStatus,
    tracked: &[Tracked],
    now: Timestamp,
    t: &Thresholds,
) {
    let reference = icc.object_ref(&());
    let condition =
        |s: Option<&IstioCACertsStatus>, type_: &str| s.and_then(|s| conditions::find(&s.conditions, type_)).cloned();
    for type_ in [READY, CERTIFICATES_HEALTHY] {
        let (before, after) = (condition(previous, type_), condition(Some(status), type_));
        let Some(after) = after else { continue };
        let changed = before
            .as_ref()
            .is_none_or(|b| b.reason != after.reason || b.status != after.status);
        // A fresh resource that is simply fine says nothing; the Written event covers it. A
        // window reason is announced per certificate below, not twice.
        let window_reason = tracked
            .iter()
            .any(|c| after.reason == format!("{}{}", c.role.event_prefix(), c.life.window(now, t).as_str()));
        if !changed
            || (before.is_none() && after.status == "True")
            || (type_ == READY && after.status == "True")
            || window_reason
        {
            continue;
        }
        let type_event = if after.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        if type_event == EventType::Warning {
            warn!(condition = type_, reason = %after.reason, message = %after.message, "istiocacerts");
        }
        ctx.publish_event(&reference, type_event, &after.reason, "Check", after.message.clone())
            .await;
    }
    let previous_windows: Vec<(String, RenewalWindow)> = previous
        .map(|s| {
            s.intermediate
                .iter()
                .chain(s.roots.iter())
                .chain(s.backend_ca.iter())
                .map(|c| (c.fingerprint_sha256.clone(), c.window))
                .collect()
        })
        .unwrap_or_default();
    for c in tracked {
        let window = c.life.window(now, t);
        let before = previous_windows
            .iter()
            .find(|(f, _)| *f == c.fingerprint)
            .map(|(_, w)| *w);
        let changed = match before {
            Some(b) => b != window,
            // A certificate seen for the first time is announced only when it is not healthy.
            None => window != RenewalWindow::Healthy,
        };
        if !changed {
            continue;
        }
        let note = format!(
            "{} {} (SHA-256 {}) is now {}: renewal at {}, notAfter {}",
            role_name(c.role),
            c.subject,
            c.fingerprint,
            window.as_str(),
            c.life.renewal,
            c.life.not_after
        );
        let type_ = if window == RenewalWindow::Healthy {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.publish_event(
            &reference,
            type_,
            &format!("{}{}", c.role.event_prefix(), window.as_str()),
            "Track",
            note,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> Timestamp {
        Timestamp::from_second(days * 86_400).unwrap()
    }

    fn tracked(role: Role, from: i64, to: i64) -> Tracked {
        Tracked {
            role,
            subject: format!("CN={role:?}"),
            fingerprint: format!("{role:?}"),
            life: Life::new(at(from), at(to), None),
        }
    }

    #[test]
    fn health_verdicts() {
        let t = Thresholds::default();
        let intermediate = tracked(Role::Intermediate, 0, 90);
        let root = tracked(Role::Root, -100, 3650);
        let (ok, reason, _) = health(&[intermediate.clone(), root.clone()], Some(&root), at(10), &t);
        assert!(ok);
        assert_eq!(reason, "AllHealthy");
        // Past the renewal time and not renewed.
        let (ok, reason, message) = health(&[intermediate.clone(), root.clone()], Some(&root), at(70), &t);
        assert!(!ok);
        assert_eq!(reason, "IntermediateRenewalDue");
        assert!(message.contains("has not been renewed"), "{message}");
        // A root expiring before the renewal: the worst window first, then the risks.
        let short_root = tracked(Role::Root, -100, 50);
        let (ok, reason, message) = health(
            &[intermediate.clone(), short_root.clone()],
            Some(&short_root),
            at(45),
            &t,
        );
        assert!(!ok);
        assert_eq!(reason, "RootExpiring");
        assert!(
            message.contains("CAExpiresBeforeRenewal") || message.contains("before the intermediate's next renewal"),
            "{message}"
        );
        assert!(message.contains("after its root expires"), "{message}");
    }
}
