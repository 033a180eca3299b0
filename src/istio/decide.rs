//! The IstioCACerts decision: `decide(&Observed, &Settings) -> Plan`, pure. It reads the
//! source, judges it and the target as istiod would (`cacerts`), steps a root rotation
//! (`rotation`), joins the trust anchors (`trust_bundle`), tracks what istiod runs with
//! (`tracking`), publishes the root (`publish`), and says what the status, events, metrics and
//! requeue become — once for a `cacerts` write that lands, once for one that is refused.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::bundle_endpoint;
use super::cacerts::{
    self, BundleContents, CacertsPlan, MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem, SourceBundle,
    Target,
};
use super::cluster_trust_bundle;
use super::plan::{
    Basis, CacertsStep, CacertsWrite, MetricUpdates, Observed, Outcome, Plan, PlannedEvent, SecretWrite, Settings,
};
use super::publish::{self, ROOT_PUBLISHED};
use super::revocation;
use super::rotation;
use super::secret_data::SecretData;
use super::tracking::{CERTIFICATES_HEALTHY, Role, Tracked, health};
use super::trust_bundle::{self, AnchorInput, Assembly, Change, CheckedAnchors};
use crate::api::conditions::{self, READY};
use crate::api::istio_cacerts::{
    ADVANCE_ROTATION_ANNOTATION, AdoptExisting, IstioCACertsStatus, MeshConfigAdvice, RotationPhase, TrackedAnchor,
    TrackedCertificate,
};
use crate::pki::Certificate;
use crate::pki::renewal::Life;

/// Decides one reconcile of an IstioCACerts.
pub fn decide(o: &Observed, settings: &Settings) -> Plan {
    if let Some(problem) = target_refused(o, settings) {
        // done: a Secret we may not write is neither written, nor read as istiod's bundle,
        // nor tracked; no rotation moves.
        return Plan {
            cacerts: None,
            then: Outcome::of(
                o,
                settings,
                &Decided {
                    trust: &Trust::NotApplied,
                    rotation: None,
                    crls: None,
                },
                Err(problem),
                None,
                Cacerts::NotWritten,
            ),
        };
    }
    let facts = Facts::of(o);
    let rotation = facts.rotation(o, settings);
    let (decision, trust, crls) = facts.cacerts_plan(o, rotation.as_ref());
    let decided = Decided {
        trust: &trust,
        rotation: rotation.as_ref(),
        crls: crls.as_ref(),
    };
    let outcome = |ready, live, step| Outcome::of(o, settings, &decided, ready, live, step);
    let plan = match decision.and_then(|plan| match recreate_refused(o, &plan) {
        Some(problem) => Err(problem),
        None => Ok(plan),
    }) {
        Ok(plan) => plan,
        // done: nothing to write; what is in place stays and is tracked
        Err(problem) => {
            let live = existing_bundle(&facts.target, o.now);
            return Plan {
                cacerts: None,
                then: outcome(Err(problem), live, Cacerts::NotWritten),
            };
        }
    };
    let ready = ready_verdict(o, &plan, &trust).and_then(|summary| {
        match crls.as_ref().and_then(|v| v.intermediate_revoked.clone()) {
            Some(message) => Err(Problem {
                reason: revocation::reason::INTERMEDIATE_REVOKED,
                message: format!("{message}. {summary}"),
            }),
            None => Ok(summary),
        }
    });
    let then = outcome(ready, Some(plan.contents.clone()), Cacerts::InPlace);
    if !plan.changed {
        // done: the target already holds exactly this (a restart or a periodic look)
        return Plan { cacerts: None, then };
    }
    // Its message is the API server's answer, put in when the write is refused.
    let refusal = Problem {
        reason: cacerts::reason::WRITE_FAILED,
        message: format!(
            "writing {} was refused",
            o.secret_display(&o.icc.spec.target_secret_name)
        ),
    };
    let live = existing_bundle(&facts.target, o.now);
    let if_refused = outcome(Err(refusal), live, Cacerts::Refused);
    Plan {
        cacerts: Some(CacertsStep {
            write: cacerts_write(o, &plan, &trust, rotation.as_ref()),
            if_refused: Box::new(if_refused),
        }),
        then,
    }
}

/// Why the target may not be written at all, whatever the Secrets hold: it is cert-manager's
/// Secret itself (the CRD refuses that too, but an API server without CEL validation, or an
/// object stored before the rule, gets here), or it is not one of the names the operator
/// allowed. Without the allow-list, anyone who may create an IstioCACerts in an Istio
/// namespace could have any Secret there replaced, a gateway's TLS Secret say.
fn target_refused(o: &Observed, settings: &Settings) -> Option<Problem> {
    let spec = &o.icc.spec;
    let target = &spec.target_secret_name;
    if let AdoptExisting::Invalid(value) = &spec.adopt_existing {
        return Some(Problem {
            reason: cacerts::reason::INVALID_SPEC,
            message: format!(
                "spec.adoptExisting is {value}, which is none of false, true (the same as KeepForeignKeys), KeepForeignKeys or Replace; nothing is written until it is one of them"
            ),
        });
    }
    if *target == spec.source_secret_name {
        return Some(Problem {
            reason: cacerts::reason::TARGET_IS_SOURCE,
            message: format!(
                "targetSecretName and sourceSecretName both name {}: writing istiod's bundle there would overwrite the Secret cert-manager writes the intermediate into, and each would keep destroying the other's; nothing is written. Set targetSecretName to istiod's CA Secret (cacerts)",
                o.secret_display(target)
            ),
        });
    }
    if !settings.cacerts_secret_names.iter().any(|allowed| allowed == target) {
        return Some(Problem {
            reason: cacerts::reason::TARGET_NOT_ALLOWED,
            message: format!(
                "targetSecretName {target} is not a Secret this controller may write (allowed: {}); {} is left untouched. If it is meant as istiod's CA Secret, add it to the controller's --cacerts-secret-names flag (Helm value controller.cacertsSecretNames, which also grants update and delete on it); otherwise set targetSecretName to cacerts",
                match settings.cacerts_secret_names.join(", ") {
                    none if none.is_empty() => "none".to_string(),
                    names => names,
                },
                o.secret_display(target)
            ),
        });
    }
    None
}

/// Adopting a `kubernetes.io/*` typed Secret means deleting it and creating it again (its type
/// cannot change). One that carries keys istiod does not read is someone else's too: it is
/// never deleted unless the user asked for `adoptExisting: Replace` (which also drops those
/// keys, so `kept_keys` is empty then).
fn recreate_refused(o: &Observed, plan: &CacertsPlan) -> Option<Problem> {
    let target = o.target.as_ref()?;
    if secret_write(o) != SecretWrite::Recreate || plan.kept_keys.is_empty() {
        return None;
    }
    Some(Problem {
        reason: cacerts::reason::ADOPTION_NEEDS_REPLACE,
        message: format!(
            "{} is of type {} and carries keys istiod does not read ({}); adopting it means deleting it and creating it again as Opaque, which adoptExisting: true (KeepForeignKeys) never does. It is left untouched. Set adoptExisting: Replace to take it over anyway (those keys are then removed), or move them to another Secret",
            o.secret_display(&o.icc.spec.target_secret_name),
            target.type_.as_deref().unwrap_or_default(),
            plan.kept_keys.join(", ")
        ),
    })
}

/// How the target is written: created, replaced, or (a `kubernetes.io/*` typed Secret, whose
/// built-in type has keys the API server requires) deleted and created as Opaque.
fn secret_write(o: &Observed) -> SecretWrite {
    let typed = |s: &Secret| s.type_.as_deref().is_some_and(|t| t.starts_with("kubernetes.io/"));
    let recreate_failed = o
        .icc
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .is_some_and(|c| c.reason == cacerts::reason::RECREATE_FAILED);
    match &o.target {
        None if recreate_failed => SecretWrite::CreateAfterAdoption,
        None => SecretWrite::Create,
        Some(s) if typed(s) => SecretWrite::Recreate,
        Some(_) => SecretWrite::Replace,
    }
}

/// Where the `cacerts` step leaves the planned bundle.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cacerts {
    /// In the target: written, or there already.
    InPlace,
    /// Not written: the source, the target or the rotation refuses it.
    NotWritten,
    /// The API server refused the write.
    Refused,
}

/// What the reads say before anything is decided.
struct Facts {
    target: Target,
    /// The appended anchors recorded on the target.
    recorded: BTreeSet<String>,
    source: Option<Result<SourceBundle, Problem>>,
}

impl Facts {
    fn of(o: &Observed) -> Self {
        let recorded = trust_bundle::parse_record(
            o.target
                .as_ref()
                .and_then(|s| annotation(s, trust_bundle::RECORD_ANNOTATION)),
        );
        let source_display = o.secret_display(&o.icc.spec.source_secret_name);
        Self {
            target: target_state(o.target.as_ref()),
            recorded,
            source: o
                .source
                .as_ref()
                .map(|s| cacerts::read_source(&secret_data(s), &source_display)),
        }
    }

    /// The rotation's step, when the source is readable.
    fn rotation(&self, o: &Observed, settings: &Settings) -> Option<rotation::Decision> {
        let Some(Ok(source)) = &self.source else {
            return None;
        };
        // The anchors' certificates, so that a rotation never cuts an old root that is also one;
        // while they cannot be read or checked, the rotation cuts nothing.
        let anchors = trust_bundle::check_anchors(&o.anchors, &[], o.now).map(|c| c.certificates());
        let icc = &o.icc;
        let status = icc.status.as_ref();
        let advance_set_by = advance_setters(&icc.metadata);
        let serving = match &o.serving {
            Some(bundle_endpoint::ServingSecret::Found(pem)) => {
                crate::pki::Certificate::parse_pem_bundle(pem, "tls.crt").ok()
            }
            _ => None,
        };
        Some(rotation::decide(&rotation::Inputs {
            namespace: o.namespace(),
            name: o.name(),
            spec: icc.spec.root_rotation.as_ref(),
            status: status.and_then(|s| s.root_rotation.as_ref()),
            advance: annotation_of(&icc.metadata, ADVANCE_ROTATION_ANNOTATION),
            advance_set_by: advance_set_by.as_deref(),
            source,
            target: &self.target,
            anchors: anchors.as_ref().map(Vec::as_slice),
            limits: settings.rotation,
            bundle_refresh_hint: icc
                .spec
                .bundle_endpoint
                .as_ref()
                .filter(|e| e.enabled)
                .and_then(|e| bundle_endpoint::refresh_hint(e).ok())
                .and_then(|h| jiff::SignedDuration::try_from(h).ok()),
            serving_certificate: serving.as_deref(),
            previous_condition: status
                .and_then(|s| conditions::find(&s.conditions, rotation::ROOT_ROTATION))
                .map(|c| (c.reason.as_str(), c.message.as_str())),
            now: o.now,
        }))
    }

    /// The bundle to write (the rotation's, or the ordinary one) with its CRLs and the anchors
    /// joined.
    fn cacerts_plan(
        &self,
        o: &Observed,
        rotation: Option<&rotation::Decision>,
    ) -> (Result<CacertsPlan, Problem>, Trust, Option<revocation::Verdict>) {
        let spec = &o.icc.spec;
        let decision = match &self.source {
            None => Err(Problem {
                reason: cacerts::reason::SOURCE_NOT_FOUND,
                message: format!(
                    "{} not found: it is written by cert-manager once the istiod intermediate Certificate is issued",
                    o.secret_display(&spec.source_secret_name)
                ),
            }),
            Some(Err(problem)) => Err(problem.clone()),
            Some(Ok(source)) => {
                let ordinary = rotation::Bundle::Ordinary;
                let bundle = rotation.map_or(&ordinary, |r| &r.bundle);
                rotation::plan(source, bundle, &self.target, o.name(), &spec.adopt_existing, o.now)
            }
        };
        // CRLs for the chain being written, before the anchors (which judge the change anew).
        let (decision, crls) = match decision {
            Ok(plan) => {
                let (plan, verdict) = revocation::apply(
                    plan,
                    &self.target,
                    spec.revocation.as_ref(),
                    o.revocation.as_ref(),
                    o.now,
                );
                match verdict.as_ref().and_then(|v| v.hold.clone()) {
                    // Not written: the condition and status.crl stay as they are.
                    Some(message) => (
                        Err(Problem {
                            reason: revocation::reason::CRLS_INCOMPLETE,
                            message,
                        }),
                        None,
                    ),
                    None => (Ok(plan), verdict),
                }
            }
            Err(problem) => (Err(problem), None),
        };
        // The anchors join root-cert.pem only when every one of them is good; otherwise
        // root-cert.pem stays as it is (a renewal of the intermediate still goes through: a
        // peer's broken ConfigMap must not leave this cluster's renewal stuck).
        let (decision, trust) = with_anchors(decision, &o.anchors, &self.target, &self.recorded, o.now);
        (decision, trust, crls)
    }
}

/// Ready after a successful (or needless) write: Synced with a summary, or the bad anchor.
fn ready_verdict(o: &Observed, plan: &CacertsPlan, trust: &Trust) -> Result<String, Problem> {
    let mut summary = format!(
        "{} holds intermediate {} (SHA-256 {}) valid until {}, chaining to root {}; root-cert.pem has {} trust anchor(s)",
        o.secret_display(&o.icc.spec.target_secret_name),
        plan.contents.intermediate.subject(),
        plan.contents.intermediate.fingerprint(),
        plan.contents.intermediate.not_after(),
        plan.contents.anchor.subject(),
        plan.contents.roots.len()
    );
    summary.push_str(&trust.summary());
    match trust {
        Trust::Invalid(problem) => Err(Problem {
            reason: problem.reason,
            message: format!(
                "{}; root-cert.pem is left as it was and no trust anchor is added or removed until this is fixed. {summary}",
                problem.message
            ),
        }),
        _ => Ok(summary),
    }
}

/// The write of a changed plan, with its `Written` note.
fn cacerts_write(
    o: &Observed,
    plan: &CacertsPlan,
    trust: &Trust,
    rotation: Option<&rotation::Decision>,
) -> CacertsWrite {
    let intermediate = &plan.contents.intermediate;
    let mut note = format!(
        "{} {}: intermediate {} (SHA-256 {}) valid until {}",
        if plan.adopting { "Adopted and wrote" } else { "Wrote" },
        o.secret_display(&o.icc.spec.target_secret_name),
        intermediate.subject(),
        intermediate.fingerprint(),
        intermediate.not_after()
    );
    if let Some(change) = trust.change_note() {
        note.push_str("; ");
        note.push_str(&change);
    }
    if !plan.dropped_keys.is_empty() {
        note.push_str(&format!(
            "; removed keys {:?} so that istiod reads the new bundle",
            plan.dropped_keys
        ));
    }
    if plan.adopting && !plan.kept_keys.is_empty() {
        note.push_str(&format!(
            "; kept keys {:?}, which istiod does not read (adoptExisting: Replace would remove them)",
            plan.kept_keys
        ));
    }
    CacertsWrite {
        how: secret_write(o),
        data: plan.data.clone(),
        owner: o.name().to_string(),
        record: match trust {
            Trust::Applied { assembly, .. } => Some(trust_bundle::format_record(&assembly.record)),
            _ => None,
        },
        note,
        fingerprint: intermediate.fingerprint(),
        // Tests stop the process here: cacerts written, status not yet (a crash at the worst
        // moment of a phase change).
        failpoint: rotation
            .and_then(|r| r.transition.as_ref())
            .map(|(phase, _)| format!("rotation-written-{}", phase.as_str())),
    }
}

/// What the decision made of the reads, before the `cacerts` step: the anchors, the rotation's
/// step and the CRLs.
struct Decided<'a> {
    trust: &'a Trust,
    rotation: Option<&'a rotation::Decision>,
    crls: Option<&'a revocation::Verdict>,
}

impl Outcome {
    /// Everything after the `cacerts` step, given Ready's verdict, the bundle istiod runs with
    /// afterwards (`live`: the new one, or the one left in place) and where the step left the
    /// planned bundle: a rotation's phase moves on only once it is in the target.
    fn of(
        o: &Observed,
        settings: &Settings,
        decided: &Decided,
        ready: Result<String, Problem>,
        live: Option<BundleContents>,
        step: Cacerts,
    ) -> Self {
        let (now, t) = (o.now, &settings.thresholds);
        let Decided { trust, rotation, crls } = *decided;
        let previous = o.icc.status.as_ref();
        let previous_rotation = previous.and_then(|s| s.root_rotation.as_ref());
        let tracked = track(o, live.as_ref());
        let rotation = rotation.map(|r| rotation_after(r, step, previous_rotation));
        let live_roots: Vec<&Certificate> = live.as_ref().map(|b| b.roots.iter().collect()).unwrap_or_default();
        let (trust_anchors, mesh_config) = trust.tracked(o, &live_roots, settings);
        let own = own_roots(o, rotation.as_ref(), live.as_ref(), &live_roots);
        let published = published(o, &own);
        let trust_bundles = cluster_trust_bundles(o, trust, &own, &live_roots);
        let endpoint = o.icc.spec.bundle_endpoint.as_ref().filter(|e| e.enabled).map(|spec| {
            let previous = previous.and_then(|s| s.bundle_endpoint.as_ref());
            let ((ok, reason, message), status) =
                bundle_endpoint::decide(spec, &o.icc.spec.trust_domain, previous, &own, o.serving.as_ref(), now);
            ((ok, reason.to_string(), message), status)
        });
        let conditions = Verdicts {
            ready: match ready {
                Ok(summary) => (true, cacerts::reason::SYNCED.to_string(), summary),
                Err(p) => (false, p.reason.to_string(), p.message),
            },
            healthy: health(&tracked, anchor_of(&tracked, live.as_ref()), now, t),
            rotation: rotation.as_ref(),
            published: published.as_ref().map(|(verdict, _)| verdict.clone()),
            crls: crls_condition(o, crls),
            revocation_enabled: o.icc.spec.revocation.as_ref().is_some_and(|r| r.enabled),
            bundle_endpoint: endpoint.as_ref().map(|(v, _)| v.clone()),
            trust_bundles: trust_bundles.as_ref().and_then(|(v, _)| v.clone()),
            trust_bundles_enabled: o.icc.spec.cluster_trust_bundle.as_ref().is_some_and(|c| c.enabled),
        };
        // Not decided this time (nothing could be planned): what is tracked stays.
        let tracked_crls = match crls {
            Some(v) => v.tracked.clone(),
            None if conditions.revocation_enabled => previous.map(|s| s.crl.clone()).unwrap_or_default(),
            None => Vec::new(),
        };
        let (reissue, reissue_requested_for) = reissue_once(o, crls, live.as_ref(), step);
        let status = IstioCACertsStatus {
            conditions: conditions.build(o),
            root_rotation: rotation
                .as_ref()
                .map_or(previous_rotation.cloned(), |r| r.status.clone()),
            new_root_awaiting_approval: rotation.as_ref().and_then(|r| r.awaiting_approval.as_ref()).map(|c| {
                crate::api::istio_cacerts::NewRootAwaitingApproval {
                    subject: c.subject(),
                    fingerprint_sha256: c.fingerprint(),
                    not_after: c.not_after().to_string(),
                }
            }),
            crl: tracked_crls,
            reissue_requested_for,
            bundle_endpoint: endpoint.and_then(|(_, status)| status),
            ..tracked_status(&tracked, live.as_ref(), trust_anchors, mesh_config, now, settings)
        };
        let basis = Basis {
            previous: previous.cloned(),
            generation: o.icc.metadata.generation,
            now,
            thresholds: *t,
            tracked,
            rotation_events: rotation.as_ref().map(rotation_events).unwrap_or_default(),
        };
        let metrics = metric_updates(&basis, &status, step, conditions.ready.0);
        // Requeue exactly at the next window boundary; watches cover every other change.
        let requeue_at = basis
            .tracked
            .iter()
            .filter_map(|c| c.life.next_boundary(now, t))
            .chain(rotation.as_ref().and_then(|r| r.requeue_at))
            .chain(crls.and_then(|v| v.requeue_at))
            .min();
        Outcome {
            publish: published.and_then(|(_, write)| write),
            trust_bundles: trust_bundles.and_then(|(_, writes)| writes),
            events: basis.events(&status),
            status,
            remove_advance_annotation: rotation
                .as_ref()
                .is_some_and(|r| r.consume_advance || r.stale_advance.is_some() || r.refused_advance.is_some()),
            metrics,
            requeue_at,
            reissue,
            basis,
        }
    }
}

/// A rotation's step as the `cacerts` step left it: when the write failed (or was not
/// possible), nothing moved and the phase stays where it was, so a phase only ever moves on
/// with its bundle in the target.
fn rotation_after(
    decision: &rotation::Decision,
    step: Cacerts,
    previous: Option<&crate::api::istio_cacerts::RootRotationStatus>,
) -> rotation::Decision {
    let mut r = decision.clone();
    if step != Cacerts::InPlace && !matches!(r.bundle, rotation::Bundle::Refused(_)) {
        r.status = previous.cloned();
        r.transition = None;
        r.consume_advance = false;
        r.forced_advance = None;
        r.expiring_warning = None;
        r.condition = None;
    }
    r
}

/// `CRLsCurrent`: the CRL set's verdict; with revocation off, whether istiod still hands out
/// CRLs it loaded before.
fn crls_condition(o: &Observed, crls: Option<&revocation::Verdict>) -> Option<(bool, String, String)> {
    match crls {
        Some(v) => Some((v.condition.0, v.condition.1.to_string(), v.condition.2.clone())),
        None => o
            .distributed_crls
            .as_deref()
            .filter(|_| !o.icc.spec.revocation.as_ref().is_some_and(|r| r.enabled))
            .and_then(|d| revocation::after_turned_off(d, o.namespace(), o.now))
            .map(|(ok, reason, message)| (ok, reason.to_string(), message)),
    }
}

/// The re-issue to ask cert-manager for, and `status.reissueRequestedFor`. cert-manager is
/// asked once per revoked intermediate: should its issuance fail, it retries with its own
/// back-off, and asking again each reconcile would bypass it.
fn reissue_once(
    o: &Observed,
    crls: Option<&revocation::Verdict>,
    live: Option<&BundleContents>,
    step: Cacerts,
) -> (Option<crate::istio::plan::Reissue>, Option<String>) {
    let revoked_serial = crls
        .filter(|v| v.intermediate_revoked.is_some())
        .and(live)
        .map(|b| b.intermediate.serial_hex());
    let asked_before = o.icc.status.as_ref().and_then(|s| s.reissue_requested_for.clone());
    let reissue = crls
        .and_then(|v| v.intermediate_revoked.as_ref())
        .filter(|_| step == Cacerts::InPlace && revoked_serial != asked_before)
        .and_then(|message| reissue(o, message));
    let requested_for = match (crls, &reissue) {
        (None, _) => asked_before,
        (Some(_), Some(_)) => revoked_serial,
        (Some(_), None) => revoked_serial.filter(|s| Some(s) == asked_before.as_ref()),
    };
    (reissue, requested_for)
}

/// The metrics of one decision: every kind of certificate series (so a series that went away
/// is dropped), the CRLs' lapse times, the rotation phase and the reconcile's outcome.
fn metric_updates(basis: &Basis, status: &IstioCACertsStatus, step: Cacerts, ready: bool) -> MetricUpdates {
    let (now, t) = (basis.now, &basis.thresholds);
    MetricUpdates {
        rotation_phase: status.root_rotation.as_ref().map(|r| r.phase.as_str()),
        certificates: Role::ALL
            .iter()
            .map(|role| {
                let series = basis
                    .tracked
                    .iter()
                    .filter(|c| c.role == *role)
                    .map(|c| c.series(now, t));
                (role.metric_kind(), series.collect())
            })
            .collect(),
        // A retired CRL is never refreshed and goes when it lapses: no alert waits on it.
        crls: status
            .crl
            .iter()
            .filter(|c| c.window != crate::api::istio_cacerts::CrlWindow::Retired)
            .filter_map(|c| {
                let next_update: Timestamp = c.next_update.parse().ok()?;
                Some((c.issuer.clone(), next_update.as_second()))
            })
            .collect(),
        reconcile: match (step, ready) {
            (Cacerts::Refused, _) => "write_failed",
            (_, true) => "synced",
            (_, false) => "refused",
        },
    }
}

/// cert-manager is asked for a new intermediate once: not while the Certificate is already
/// issuing (that is our ask, or cert-manager's own renewal, under way).
fn reissue(o: &Observed, message: &str) -> Option<crate::istio::plan::Reissue> {
    let certificate = o
        .source
        .as_ref()
        .and_then(|s| annotation(s, crate::api::cert_manager::CERTIFICATE_NAME_ANNOTATION))?;
    let issuing = o
        .certificate
        .as_ref()
        .and_then(|c| c.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Issuing" && c.status == "True"));
    (!issuing).then(|| crate::istio::plan::Reissue {
        certificate: certificate.to_string(),
        message: message.to_string(),
    })
}

/// (ok, reason, message) of a condition.
type Verdict = (bool, String, String);

/// The verdicts that make the status's conditions.
struct Verdicts<'a> {
    ready: Verdict,
    healthy: Verdict,
    /// Not decided this time (`None`, or no condition): the RootRotation condition stays.
    rotation: Option<&'a rotation::Decision>,
    published: Option<Verdict>,
    /// `CRLsCurrent`; not decided this time (`None`) it stays, while revocation is on.
    crls: Option<Verdict>,
    revocation_enabled: bool,
    /// `BundleEndpointReady`, with `spec.bundleEndpoint.enabled`.
    bundle_endpoint: Option<Verdict>,
    /// `ClusterTrustBundlesPublished`; not decided this time (`None`) it stays while enabled.
    trust_bundles: Option<Verdict>,
    trust_bundles_enabled: bool,
}

impl Verdicts<'_> {
    /// Ready, CertificatesHealthy, RootRotation (when rotation is or was configured),
    /// RootPublished (when publishRoot is set): in that order, times kept when unchanged.
    fn build(&self, o: &Observed) -> Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let previous = o.icc.status.as_ref();
        let find = |type_: &str| previous.and_then(|s| conditions::find(&s.conditions, type_));
        let next = |type_: &str, (ok, reason, message): &Verdict| {
            conditions::next(
                find(type_),
                type_,
                *ok,
                reason,
                message.clone(),
                o.icc.metadata.generation,
                o.now,
            )
        };
        let rotation = self.rotation.and_then(|r| {
            let (reason, message) = r.condition.as_ref()?;
            let in_progress = r.status.as_ref().is_some_and(|s| s.phase.in_progress());
            Some(next(
                rotation::ROOT_ROTATION,
                &(in_progress, reason.to_string(), message.clone()),
            ))
        });
        // Not decided this time: the condition stays as it was.
        let kept_rotation = find(rotation::ROOT_ROTATION).filter(|_| rotation.is_none()).cloned();
        let crls = match &self.crls {
            Some(v) => Some(next(revocation::CRLS_CURRENT, v)),
            None if self.revocation_enabled => find(revocation::CRLS_CURRENT).cloned(),
            None => None,
        };
        [
            Some(next(READY, &self.ready)),
            Some(next(CERTIFICATES_HEALTHY, &self.healthy)),
            rotation,
            kept_rotation,
            self.published.as_ref().map(|v| next(ROOT_PUBLISHED, v)),
            crls,
            self.bundle_endpoint
                .as_ref()
                .map(|v| next(bundle_endpoint::BUNDLE_ENDPOINT_READY, v)),
            match &self.trust_bundles {
                Some(v) => Some(next(cluster_trust_bundle::PUBLISHED, v)),
                None if self.trust_bundles_enabled => find(cluster_trust_bundle::PUBLISHED).cloned(),
                None => None,
            },
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The status's certificate fields: the intermediate (with its name constraints), the roots
/// that are not trust anchors, the backend CA, the anchors and the mesh config.
fn tracked_status(
    tracked: &[Tracked],
    live: Option<&BundleContents>,
    trust_anchors: Vec<TrackedAnchor>,
    mesh_config: Option<MeshConfigAdvice>,
    now: Timestamp,
    settings: &Settings,
) -> IstioCACertsStatus {
    let t = &settings.thresholds;
    let anchor_fingerprints: Vec<&str> = trust_anchors
        .iter()
        .map(|a| a.certificate.fingerprint_sha256.as_str())
        .collect();
    IstioCACertsStatus {
        intermediate: tracked
            .iter()
            .find(|c| c.role == Role::Intermediate)
            .map(|c| TrackedCertificate {
                name_constraints: live.and_then(|b| constraints_summary(&b.intermediate)),
                ..c.status(now, t)
            }),
        roots: tracked
            .iter()
            .filter(|c| c.role == Role::Root && !anchor_fingerprints.contains(&c.fingerprint.as_str()))
            .map(|c| c.status(now, t))
            .collect(),
        backend_ca: tracked
            .iter()
            .find(|c| c.role == Role::BackendCA)
            .map(|c| c.status(now, t)),
        trust_anchors,
        mesh_config,
        ..Default::default()
    }
}

/// What is tracked: the live bundle's intermediate (with the Certificate's renewal time when
/// it describes this very intermediate) and roots, and the issuer's backend CA.
fn track(o: &Observed, live: Option<&BundleContents>) -> Vec<Tracked> {
    let mut tracked = Vec::new();
    if let Some(bundle) = live {
        let renewal = o.certificate.as_ref().and_then(|status| {
            let same =
                status.not_after.as_ref().map(|t| t.0.as_second()) == Some(bundle.intermediate.not_after().as_second());
            same.then(|| status.renewal_time.as_ref().map(|t| t.0)).flatten()
        });
        tracked.push(Tracked::from_certificate(
            Role::Intermediate,
            &bundle.intermediate,
            renewal,
        ));
        tracked.extend(
            bundle
                .roots
                .iter()
                .map(|root| Tracked::from_certificate(Role::Root, root, None)),
        );
    }
    let backend = o.backend_ca.as_ref().and_then(|summary| {
        Some(Tracked {
            role: Role::BackendCA,
            subject: summary.subject.clone(),
            fingerprint: summary.fingerprint_sha256.clone(),
            serial: None,
            life: Life::new(summary.not_before.parse().ok()?, summary.not_after.parse().ok()?, None),
        })
    });
    tracked.extend(backend);
    tracked
}

/// The tracked root the live intermediate chains to.
fn anchor_of<'a>(tracked: &'a [Tracked], live: Option<&BundleContents>) -> Option<&'a Tracked> {
    let fingerprint = live?.anchor.fingerprint();
    tracked
        .iter()
        .find(|c| c.role == Role::Root && c.fingerprint == fingerprint)
}

/// This cluster's own roots as published and served: both while old and new are trusted in
/// a rotation, else the root the live intermediate chains to (none without a live bundle).
fn own_roots(
    o: &Observed,
    rotation: Option<&rotation::Decision>,
    live: Option<&BundleContents>,
    live_roots: &[&Certificate],
) -> Vec<Certificate> {
    let previous_rotation = o.icc.status.as_ref().and_then(|s| s.root_rotation.as_ref());
    let own = rotation.and_then(|r| r.published_roots.clone()).or_else(|| {
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
    own.unwrap_or_else(|| live.iter().map(|b| b.anchor.clone()).collect())
}

/// The ClusterTrustBundlesPublished verdict (`None`: not decided, or turned off) and the
/// writes. Turned off after it was on, ours are deleted. With anchors that could not be
/// checked this time, nothing is decided: what is published stays.
fn cluster_trust_bundles(
    o: &Observed,
    trust: &Trust,
    own: &[Certificate],
    live_roots: &[&Certificate],
) -> Option<(Option<Verdict>, Option<cluster_trust_bundle::Writes>)> {
    let found = o.trust_bundles.as_ref()?;
    let enabled = o.icc.spec.cluster_trust_bundle.as_ref().is_some_and(|c| c.enabled);
    if !enabled {
        let cluster_trust_bundle::Found::Listed(existing) = found else {
            return None;
        };
        let delete: Vec<String> = existing.iter().map(|e| e.name.clone()).collect();
        return Some((
            None,
            (!delete.is_empty()).then_some(cluster_trust_bundle::Writes { apply: vec![], delete }),
        ));
    }
    let anchors: Vec<(String, Vec<Certificate>)> = match trust {
        Trust::Applied { checked, .. } => checked
            .anchors
            .iter()
            .map(|a| {
                let held = a
                    .certificates
                    .iter()
                    .filter(|c| live_roots.contains(c))
                    .cloned()
                    .collect();
                (a.name.clone(), held)
            })
            .collect(),
        _ if o.icc.spec.trust_anchors.is_empty() => Vec::new(),
        _ => return None,
    };
    let owner = cluster_trust_bundle::Owner {
        namespace: o.namespace(),
        name: o.name(),
        uid: o.icc.metadata.uid.as_deref().unwrap_or_default(),
        trust_domain: &o.icc.spec.trust_domain,
    };
    let (verdict, writes) = cluster_trust_bundle::plan(&owner, own, &anchors, found);
    let verdict = match verdict {
        Ok(message) => (true, cluster_trust_bundle::reason::PUBLISHED.to_string(), message),
        Err(p) => (false, p.reason.to_string(), p.message),
    };
    Some((Some(verdict), writes))
}

/// The RootPublished verdict and the write it needs, when publishRoot is set.
fn published(o: &Observed, own: &[Certificate]) -> Option<(Verdict, Option<publish::PublishWrite>)> {
    let spec = &o.icc.spec;
    let publish_root = spec.publish_root.as_ref()?;
    let found = o.published.clone().unwrap_or(publish::Found::Absent);
    let (namespace, trust_domain) = (o.namespace(), spec.trust_domain.as_str());
    Some(
        match publish::plan(publish_root, namespace, o.name(), trust_domain, own, &found) {
            Ok(write) => (
                (
                    true,
                    publish::reason::PUBLISHED.to_string(),
                    publish::published_message(publish_root, namespace, trust_domain, own),
                ),
                write,
            ),
            Err(p) => ((false, p.reason.to_string(), p.message), None),
        },
    )
}

/// The rotation's events: one per phase change, and warnings for an advance annotation that
/// was forced, came too early, or named another phase.
fn rotation_events(decision: &rotation::Decision) -> Vec<PlannedEvent> {
    let transition = decision.transition.as_ref().map(|(phase, message)| PlannedEvent {
        warning: false,
        reason: format!("Rotation{}", phase.as_str()),
        action: "RootRotation",
        note: message.clone(),
    });
    let warning = |reason: &str, message: &Option<String>| {
        message.as_ref().map(|message| PlannedEvent {
            warning: true,
            reason: reason.to_string(),
            action: "RootRotation",
            note: message.clone(),
        })
    };
    transition
        .into_iter()
        .chain(warning(rotation::reason::FORCED_ADVANCE, &decision.forced_advance))
        .chain(warning(
            rotation::reason::OLD_INTERMEDIATE_EXPIRING,
            &decision.expiring_warning,
        ))
        .chain(warning(rotation::reason::ADVANCE_REFUSED, &decision.refused_advance))
        .chain(warning(rotation::reason::STALE_ADVANCE, &decision.stale_advance))
        .collect()
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

    /// `status.trustAnchors` and `status.meshConfig`: the anchors `root-cert.pem` now holds.
    fn tracked(
        &self,
        o: &Observed,
        live_roots: &[&Certificate],
        settings: &Settings,
    ) -> (Vec<TrackedAnchor>, Option<MeshConfigAdvice>) {
        let previous = o.icc.status.as_ref();
        match self {
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
                                certificate: Tracked::from_certificate(Role::Root, c, None)
                                    .status(o.now, &settings.thresholds),
                                source: o
                                    .anchors
                                    .iter()
                                    .find(|i| i.spec.name == a.name)
                                    .and_then(|i| i.endpoint.clone()),
                            })
                    })
                    .collect(),
                Some(trust_bundle::mesh_config(&o.icc.spec.trust_domain, &checked.anchors)),
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
        }
    }
}

/// Checks the anchors and puts them into the plan (see [`Trust`]).
fn with_anchors(
    decision: Result<CacertsPlan, Problem>,
    inputs: &[AnchorInput],
    target: &Target,
    recorded: &BTreeSet<String>,
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

/// A Secret's data (and any `stringData` of an object built by hand) as bytes.
pub fn secret_data(secret: &Secret) -> SecretData {
    let mut data: SecretData = secret
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

/// Who set the advance annotation: the field managers whose `managedFields` entry owns it
/// (`f:metadata/f:annotations/f:meshca.io/advance-rotation`), as `"name" (Operation)`. A name
/// is what the client called itself (kubectl: `kubectl-annotate`), not an authenticated user:
/// the API server's audit log has that.
fn advance_setters(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    let field = format!("f:{ADVANCE_ROTATION_ANNOTATION}");
    let names: Vec<String> = meta
        .managed_fields
        .iter()
        .flatten()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:metadata")?.get("f:annotations")?.get(&field))
                .is_some()
        })
        .map(|entry| {
            format!(
                "{:?} ({})",
                entry.manager.as_deref().unwrap_or_default(),
                entry.operation.as_deref().unwrap_or("unknown operation")
            )
        })
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn annotation<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    annotation_of(&secret.metadata, key)
}

fn annotation_of<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The target as the ownership rules see it: its data, and which IstioCACerts marked it.
fn target_state(secret: Option<&Secret>) -> Target {
    let Some(s) = secret else {
        return Target::Absent;
    };
    let labels = s.metadata.labels.as_ref();
    let ours = labels.and_then(|l| l.get(MANAGED_BY_LABEL)).map(String::as_str) == Some(MANAGED_BY_VALUE);
    Target::Present {
        data: secret_data(s),
        owner: ours
            .then(|| annotation(s, OWNER_ANNOTATION).map(str::to_string))
            .flatten(),
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

/// The name constraints a certificate carries, for status.
fn constraints_summary(certificate: &Certificate) -> Option<crate::api::name_constraints::NameConstraintsSummary> {
    match crate::pki::name_constraints::carried_by(certificate) {
        Ok(found) => found.map(|(critical, nc)| nc.summary(critical)),
        Err(why) => {
            // Not status material: a summary would have to invent subtrees. Say it in the log.
            tracing::warn!(fingerprint = %certificate.fingerprint(), %why, "the intermediate's name constraints cannot be read");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;
    use crate::api::istio_cacerts::{IstioCACertsSpec, KeyRef, PublishRoot, RootRotation, RotationMode, TrustAnchor};
    use crate::istio::plan::SecretWrite::{self, Create, Recreate, Replace};
    use crate::istio::publish::Found;
    use crate::istio::testing::{
        DAY, HOUR, cross_signed_root, istio_cacerts, observed, root, secret, source_under, t0, weak_root,
    };
    use crate::istio::trust_bundle::Fetched;

    /// What a row expects of the plan: the `cacerts` write, Ready's and CertificatesHealthy's
    /// reasons, the rotation phase, the events and RootPublished, once the plan is carried out.
    #[derive(Clone, Copy, Debug)]
    struct Expect {
        write: Option<SecretWrite>,
        ready: &'static str,
        healthy: &'static str,
        phase: Option<RotationPhase>,
        events: &'static [&'static str],
        published: Option<&'static str>,
        /// The published root's ConfigMap is written.
        publishes: bool,
        /// The RootRotation condition's reason, when the row is about it.
        rotation: Option<&'static str>,
        /// Text one of the events' notes holds, when the row is about it.
        note: Option<&'static str>,
    }

    const SYNCED: Expect = Expect {
        write: None,
        ready: "Synced",
        healthy: "AllHealthy",
        phase: None,
        events: &[],
        published: None,
        publishes: false,
        rotation: None,
        note: None,
    };

    /// The PKIs of the rows: an old root with two intermediates (a renewal), a new root.
    struct Pki {
        old: SourceBundle,
        renewed: SourceBundle,
        new: SourceBundle,
        /// A root that expires before the old one: unfit to rotate to.
        short: SourceBundle,
        /// A root with a key the strength check refuses (P-521).
        weak: SourceBundle,
        /// A "root" signed by another root, not by itself.
        cross_signed: SourceBundle,
        peer_root: Certificate,
    }

    impl Pki {
        fn new() -> Self {
            let old_root = root(365);
            let new_root = root(730);
            Self {
                old: source_under(&old_root),
                renewed: source_under(&old_root),
                new: source_under(&new_root),
                short: source_under(&root(200)),
                // Refused before the intermediate is looked at.
                weak: SourceBundle {
                    root: weak_root().0,
                    ..source_under(&new_root)
                },
                cross_signed: SourceBundle {
                    root: cross_signed_root(&root(3650)).0,
                    ..source_under(&new_root)
                },
                peer_root: root(3650).0,
            }
        }
    }

    fn spec() -> IstioCACertsSpec {
        IstioCACertsSpec {
            source_secret_name: "istiod-intermediate".into(),
            ..Default::default()
        }
    }

    /// Rotation configured, with `approved` pinned as the new root (`expectedNewRoot`).
    fn rotating(mode: RotationMode, paused: bool, approved: &Certificate) -> IstioCACertsSpec {
        IstioCACertsSpec {
            root_rotation: Some(RootRotation {
                multi_root_mesh_enabled: true,
                trust_propagation_delay: "1h".into(),
                workload_drain_delay: "25h".into(),
                mode,
                paused,
                expected_new_root: Some(approved.fingerprint()),
            }),
            ..spec()
        }
    }

    fn publishing() -> IstioCACertsSpec {
        IstioCACertsSpec {
            publish_root: Some(PublishRoot {
                config_map_name: "root-published".into(),
                key: "root-cert.pem".into(),
            }),
            ..spec()
        }
    }

    fn anchor(name: &str, fetched: Fetched) -> AnchorInput {
        AnchorInput {
            spec: TrustAnchor {
                name: name.into(),
                trust_domains: vec!["peer.example".into()],
                config_map_key_ref: Some(KeyRef {
                    name: name.into(),
                    key: "root-cert.pem".into(),
                }),
                secret_key_ref: None,
                spiffe_bundle_endpoint: None,
                fingerprints: vec![],
                allow_intermediate: false,
            },
            source: format!("ConfigMap istio-system/{name} key root-cert.pem"),
            fetched,
            endpoint: None,
        }
    }

    /// The next reconcile at `at` after `plan` was carried out as act does when every write
    /// lands: the target holds the write, the status and the published root are written, a
    /// used advance annotation is gone.
    fn after(o: &Observed, plan: &Plan, at: Timestamp) -> Observed {
        let mut next = o.clone();
        if let Some(step) = &plan.cacerts {
            let mut target = secret("cacerts", step.write.data.clone());
            let meta = &mut target.metadata;
            meta.labels = Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into());
            let mut annotations = BTreeMap::from([(OWNER_ANNOTATION.to_string(), step.write.owner.clone())]);
            if let Some(record) = step.write.record.clone().filter(|r| !r.is_empty()) {
                annotations.insert(trust_bundle::RECORD_ANNOTATION.to_string(), record);
            }
            meta.annotations = Some(annotations);
            next.target = Some(target);
        }
        let mut icc = o.icc.as_ref().clone();
        icc.status = Some(plan.then.status.clone());
        if plan.then.remove_advance_annotation {
            icc.metadata.annotations = None;
        }
        next.icc = std::sync::Arc::new(icc);
        if let Some(write) = &plan.then.publish {
            let patch = write.apply_patch(o.namespace());
            next.published = Some(Found::Present(Box::new(serde_json::from_value(patch).unwrap())));
        }
        next.now = at;
        next
    }

    /// `o` with the source replaced by `source`.
    fn sourced(o: &Observed, source: &SourceBundle) -> Observed {
        Observed {
            source: Some(crate::istio::testing::source_secret(source)),
            ..o.clone()
        }
    }

    /// `o` with the advance annotation naming `phase`.
    fn advancing(o: &Observed, phase: &str) -> Observed {
        let mut icc = o.icc.as_ref().clone();
        icc.metadata.annotations = Some([(ADVANCE_ROTATION_ANNOTATION.to_string(), phase.to_string())].into());
        Observed {
            icc: std::sync::Arc::new(icc),
            ..o.clone()
        }
    }

    /// `o` with the advance annotation set to `value` by server-side apply as `manager`.
    fn advancing_as(o: &Observed, value: &str, manager: &str) -> Observed {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
        let mut o = advancing(o, value);
        let mut icc = o.icc.as_ref().clone();
        let owns = |field: &str| serde_json::json!({"f:metadata": {"f:annotations": {format!("f:{field}"): {}}}});
        icc.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("mesh-ca-issuer".into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some(manager.into()),
                operation: Some("Apply".into()),
                fields_v1: Some(FieldsV1(owns(ADVANCE_ROTATION_ANNOTATION))),
                ..Default::default()
            },
        ]);
        o.icc = std::sync::Arc::new(icc);
        o
    }

    /// `o` with spec.rootRotation.expectedNewRoot set to `pin`.
    fn pinned(o: &Observed, pin: Option<String>) -> Observed {
        let mut icc = o.icc.as_ref().clone();
        if let Some(r) = icc.spec.root_rotation.as_mut() {
            r.expected_new_root = pin;
        }
        Observed {
            icc: std::sync::Arc::new(icc),
            ..o.clone()
        }
    }

    /// `o` with spec.rootRotation's delays set to `trust` and `drain`.
    fn delays(o: &Observed, trust: &str, drain: &str) -> Observed {
        let mut icc = o.icc.as_ref().clone();
        if let Some(r) = icc.spec.root_rotation.as_mut() {
            r.trust_propagation_delay = trust.into();
            r.workload_drain_delay = drain.into();
        }
        Observed {
            icc: std::sync::Arc::new(icc),
            ..o.clone()
        }
    }

    /// A world that already ran: `o` decided and carried out, looked at again at `at`.
    fn settled(o: Observed, at: Timestamp) -> Observed {
        let plan = decide(&o, &Settings::default());
        after(&o, &plan, at)
    }

    fn rows(pki: &Pki) -> Vec<(&'static str, Observed, Expect)> {
        use RotationPhase::*;
        let fresh = observed(istio_cacerts(spec()), Some(&pki.old));
        let written = settled(fresh.clone(), t0());
        // Someone else's cacerts: another intermediate under the same root, unmarked.
        let theirs = settled(observed(istio_cacerts(spec()), Some(&pki.renewed)), t0());
        let foreign = |type_: Option<&str>| {
            let mut target = secret("cacerts", theirs.target.as_ref().map(secret_data).unwrap());
            target.type_ = type_.map(str::to_string);
            Observed {
                target: Some(target),
                ..fresh.clone()
            }
        };
        // Adopting someone else's cacerts of `type_`, with a key of theirs istiod does not read
        // when `note`.
        let adopting_as = |type_: Option<&str>, adopt_existing: AdoptExisting, note: bool| {
            let mut o = foreign(type_);
            if let Some(data) = o.target.as_mut().and_then(|s| s.data.as_mut()).filter(|_| note) {
                data.insert("note".into(), k8s_openapi::ByteString(b"by an operator".to_vec()));
            }
            o.icc = std::sync::Arc::new(istio_cacerts(IstioCACertsSpec {
                adopt_existing,
                ..spec()
            }));
            o
        };
        let adopting = |type_| adopting_as(type_, AdoptExisting::KeepForeignKeys, false);
        // A gateway's TLS Secret named as the target (adoption asked for, even): not on the
        // allow-list.
        let gateway = {
            let mut o = adopting(Some("kubernetes.io/tls"));
            let mut icc = o.icc.as_ref().clone();
            icc.spec.target_secret_name = "istio-ingressgateway-certs".into();
            o.icc = std::sync::Arc::new(icc);
            o
        };
        // cert-manager's own Secret named as the target.
        let onto_source = {
            let mut o = adopting(None);
            let mut icc = o.icc.as_ref().clone();
            icc.spec.target_secret_name = icc.spec.source_secret_name.clone();
            o.icc = std::sync::Arc::new(icc);
            o.target = o.source.clone();
            o
        };
        let mut bad_source = fresh.clone();
        if let Some(s) = bad_source.source.as_mut().and_then(|s| s.data.as_mut()) {
            s.insert("tls.key".into(), k8s_openapi::ByteString(b"not a key".to_vec()));
        }
        // A rotation: started, then each delay over (Automatic), then a cut root written.
        let rotation = settled(
            observed(
                istio_cacerts(rotating(RotationMode::Automatic, false, &pki.new.root)),
                Some(&pki.old),
            ),
            t0(),
        );
        let started = settled(sourced(&rotation, &pki.new), t0() + HOUR * 2);
        let switched = settled(started.clone(), t0() + DAY * 2);
        let cut = settled(switched.clone(), t0() + DAY * 2);
        let manual = settled(
            observed(
                istio_cacerts(rotating(RotationMode::Manual, false, &pki.new.root)),
                Some(&pki.old),
            ),
            t0(),
        );
        let manual_started = settled(sourced(&manual, &pki.new), t0() + HOUR * 2);
        let paused = {
            let mut o = started.clone();
            let mut icc = o.icc.as_ref().clone();
            icc.spec = rotating(RotationMode::Automatic, true, &pki.new.root);
            o.icc = std::sync::Arc::new(icc);
            o
        };
        let at = |o: &Observed, now| Observed { now, ..o.clone() };
        // Trust anchors: a peer's root added to a running mesh, then removed again.
        let peer_pem = Fetched::Found(pki.peer_root.to_pem().into_bytes());
        let with_anchor = |o: &Observed, anchors: Vec<AnchorInput>| {
            let mut o = o.clone();
            let mut icc = o.icc.as_ref().clone();
            icc.spec.trust_anchors = anchors.iter().map(|a| a.spec.clone()).collect();
            o.icc = std::sync::Arc::new(icc);
            o.anchors = anchors;
            o
        };
        let anchored = with_anchor(&written, vec![anchor("peer", peer_pem.clone())]);
        // The drain over with the old root also a peer's anchor: the cut keeps it.
        let old_root_pem = Fetched::Found(pki.old.root.to_pem().into_bytes());
        let kept_as_anchor = settled(
            with_anchor(&at(&switched, t0() + DAY * 3), vec![anchor("peer", old_root_pem)]),
            t0() + DAY * 3,
        );
        let anchor_removed = with_anchor(&settled(anchored.clone(), t0()), vec![]);
        // The published root: absent, ours and up to date, someone else's.
        let publish = settled(observed(istio_cacerts(publishing()), Some(&pki.old)), t0());
        let foreign_config_map = Observed {
            published: Some(Found::Present(Box::new(ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some("root-published".into()),
                    ..Default::default()
                },
                ..Default::default()
            }))),
            ..observed(istio_cacerts(publishing()), Some(&pki.old))
        };
        vec![
            // Nothing to write until cert-manager has written its Secret.
            (
                "source missing",
                observed(istio_cacerts(spec()), None),
                Expect {
                    ready: "SourceNotFound",
                    events: &["SourceNotFound"],
                    ..SYNCED
                },
            ),
            // A source whose key does not parse is refused with the cause.
            (
                "bad source",
                bad_source,
                Expect {
                    ready: "InvalidSource",
                    events: &["InvalidSource"],
                    ..SYNCED
                },
            ),
            // The first write creates cacerts; a fine fresh resource says nothing more.
            (
                "fresh target",
                fresh.clone(),
                Expect {
                    write: Some(Create),
                    ..SYNCED
                },
            ),
            // Looked at again: the target holds exactly this, nothing is written.
            ("unchanged", written.clone(), SYNCED),
            // A cacerts someone else made is left alone unless adoption is asked for.
            (
                "adoption refused",
                foreign(None),
                Expect {
                    ready: "NotOwned",
                    events: &["NotOwned"],
                    ..SYNCED
                },
            ),
            // Asked for: it is replaced, marked ours.
            (
                "adoption",
                adopting(None),
                Expect {
                    write: Some(Replace),
                    ..SYNCED
                },
            ),
            // A kubernetes.io/tls Secret cannot change type: deleted and created as Opaque.
            (
                "adoption of a typed Secret",
                adopting(Some("kubernetes.io/tls")),
                Expect {
                    write: Some(Recreate),
                    ..SYNCED
                },
            ),
            // Adopting keeps the keys istiod does not read: replaced with them in.
            (
                "adoption keeps foreign keys",
                adopting_as(None, AdoptExisting::KeepForeignKeys, true),
                Expect {
                    write: Some(Replace),
                    ..SYNCED
                },
            ),
            // A typed Secret with such keys is not deleted to re-create it...
            (
                "adoption of a typed Secret with foreign keys",
                adopting_as(Some("kubernetes.io/tls"), AdoptExisting::KeepForeignKeys, true),
                Expect {
                    ready: "AdoptionNeedsReplace",
                    events: &["AdoptionNeedsReplace"],
                    ..SYNCED
                },
            ),
            // ...unless Replace is asked for.
            (
                "replacing a typed Secret with foreign keys",
                adopting_as(Some("kubernetes.io/tls"), AdoptExisting::Replace, true),
                Expect {
                    write: Some(Recreate),
                    ..SYNCED
                },
            ),
            // A value the API server cannot check is refused by name.
            (
                "adoptExisting invalid",
                adopting_as(None, AdoptExisting::Invalid("Sometimes".into()), false),
                Expect {
                    ready: "InvalidSpec",
                    events: &["InvalidSpec"],
                    ..SYNCED
                },
            ),
            // A target outside --cacerts-secret-names is never written, adopting or not.
            (
                "target not allowed",
                gateway,
                Expect {
                    ready: "TargetNotAllowed",
                    events: &["TargetNotAllowed"],
                    ..SYNCED
                },
            ),
            // Target == source: cert-manager's Secret is never written over.
            (
                "target is source",
                onto_source,
                Expect {
                    ready: "TargetIsSource",
                    events: &["TargetIsSource"],
                    ..SYNCED
                },
            ),
            // A renewal under the same root replaces the intermediate.
            (
                "renewal",
                sourced(&written, &pki.renewed),
                Expect {
                    write: Some(Replace),
                    ..SYNCED
                },
            ),
            // A new root without rotation configured leaves cacerts as it is.
            (
                "RootChanged",
                sourced(&written, &pki.new),
                Expect {
                    ready: "RootChanged",
                    events: &["RootChanged"],
                    ..SYNCED
                },
            ),
            // Rotation: a new root is appended, the old intermediate kept.
            (
                "rotation starts",
                sourced(&rotation, &pki.new),
                Expect {
                    write: Some(Replace),
                    phase: Some(AddingNewRoot),
                    events: &["RotationAddingNewRoot"],
                    ..SYNCED
                },
            ),
            // A new root nothing pins waits for approval, showing the command that gives it.
            (
                "rotation not approved",
                sourced(&pinned(&rotation, None), &pki.new),
                Expect {
                    ready: "NewRootNotApproved",
                    events: &["NewRootNotApproved"],
                    rotation: Some("NewRootNotApproved"),
                    ..SYNCED
                },
            ),
            // Another root pinned: the rotation waits (pinned X, found Y).
            (
                "rotation pinned to another root",
                sourced(&pinned(&rotation, Some(pki.peer_root.fingerprint())), &pki.new),
                Expect {
                    ready: "NewRootNotApproved",
                    events: &["NewRootNotApproved"],
                    rotation: Some("NewRootNotApproved"),
                    ..SYNCED
                },
            ),
            // Manual mode needs the same approval before AddingNewRoot.
            (
                "manual rotation not approved",
                sourced(&pinned(&manual, None), &pki.new),
                Expect {
                    ready: "NewRootNotApproved",
                    events: &["NewRootNotApproved"],
                    rotation: Some("NewRootNotApproved"),
                    ..SYNCED
                },
            ),
            // A weak new root is refused, pinned or not.
            (
                "new root with a weak key",
                sourced(&pinned(&rotation, Some(pki.weak.root.fingerprint())), &pki.weak),
                Expect {
                    ready: "NewRootRefused",
                    events: &["NewRootRefused"],
                    rotation: Some("NewRootRefused"),
                    ..SYNCED
                },
            ),
            // A new root that is not self-signed is refused, pinned or not.
            (
                "new root not self-signed",
                sourced(
                    &pinned(&rotation, Some(pki.cross_signed.root.fingerprint())),
                    &pki.cross_signed,
                ),
                Expect {
                    ready: "NewRootRefused",
                    events: &["NewRootRefused"],
                    rotation: Some("NewRootRefused"),
                    ..SYNCED
                },
            ),
            // A rotation under way goes on without a pin (set before the pin was required).
            (
                "rotation in progress unaffected by the pin",
                at(&pinned(&started, None), t0() + DAY * 2),
                Expect {
                    write: Some(Replace),
                    phase: Some(SwitchingIntermediate),
                    events: &["RotationSwitchingIntermediate"],
                    ..SYNCED
                },
            ),
            (
                "manual rotation in progress advanced without a pin",
                advancing(&at(&pinned(&manual_started, None), t0() + DAY * 2), "AddingNewRoot"),
                Expect {
                    write: Some(Replace),
                    phase: Some(SwitchingIntermediate),
                    events: &["RotationSwitchingIntermediate"],
                    ..SYNCED
                },
            ),
            // Within the trust propagation delay nothing moves.
            (
                "rotation waits",
                at(&started, t0() + HOUR / 2),
                Expect {
                    phase: Some(AddingNewRoot),
                    ..SYNCED
                },
            ),
            // The delay is over: the new intermediate is written.
            (
                "rotation switches",
                at(&started, t0() + DAY * 2),
                Expect {
                    write: Some(Replace),
                    phase: Some(SwitchingIntermediate),
                    events: &["RotationSwitchingIntermediate"],
                    ..SYNCED
                },
            ),
            // The drain delay is over: the old root is cut.
            (
                "rotation cuts the old root",
                at(&switched, t0() + DAY * 3),
                Expect {
                    write: Some(Replace),
                    phase: Some(RemovingOldRoot),
                    events: &["RotationRemovingOldRoot"],
                    ..SYNCED
                },
            ),
            // The cut is in the target: completed without another write.
            (
                "rotation completes",
                at(&cut, t0() + DAY * 3),
                Expect {
                    phase: Some(Completed),
                    events: &["RotationCompleted"],
                    ..SYNCED
                },
            ),
            // Back to the old root before the switch: the new root is cut off again.
            (
                "rotation rolls back",
                sourced(&started, &pki.old),
                Expect {
                    write: Some(Replace),
                    phase: Some(RolledBack),
                    events: &["RotationRolledBack"],
                    ..SYNCED
                },
            ),
            // Paused: nothing moves, the delay notwithstanding.
            (
                "rotation paused",
                at(&paused, t0() + DAY * 2),
                Expect {
                    phase: Some(AddingNewRoot),
                    ..SYNCED
                },
            ),
            // Manual mode: the delay is over but only the annotation moves it on.
            (
                "manual rotation waits",
                at(&manual_started, t0() + DAY * 2),
                Expect {
                    phase: Some(AddingNewRoot),
                    ..SYNCED
                },
            ),
            // The annotation naming the current phase moves it on (and is removed).
            (
                "manual rotation advanced",
                advancing(&at(&manual_started, t0() + DAY * 2), "AddingNewRoot"),
                Expect {
                    write: Some(Replace),
                    phase: Some(SwitchingIntermediate),
                    events: &["RotationSwitchingIntermediate"],
                    ..SYNCED
                },
            ),
            // An annotation naming another phase is ignored, removed and warned about.
            (
                "stale advance",
                advancing(&manual_started, "RemovingOldRoot"),
                Expect {
                    phase: Some(AddingNewRoot),
                    events: &["StaleAdvanceAnnotation"],
                    ..SYNCED
                },
            ),
            // A plain advance before nextPhaseAt is refused, removed, and the condition says
            // when the phase may end.
            (
                "early advance refused",
                advancing(&at(&manual_started, t0() + HOUR / 2), "AddingNewRoot"),
                Expect {
                    phase: Some(AddingNewRoot),
                    events: &["AdvanceRefused"],
                    rotation: Some("AdvanceRefused"),
                    note: Some("may end no earlier than 2027-01-15T09:00:00Z"),
                    ..SYNCED
                },
            ),
            // The emergency value moves at once, and a Warning names who set it.
            (
                "forced advance",
                advancing_as(
                    &at(&manual_started, t0() + HOUR / 2),
                    "force-SwitchingIntermediate",
                    "alice",
                ),
                Expect {
                    write: Some(Replace),
                    phase: Some(SwitchingIntermediate),
                    events: &["RotationSwitchingIntermediate", "ForcedAdvance"],
                    rotation: Some("WaitingForAdvance"),
                    note: Some("set by field manager \"alice\" (Apply)"),
                    ..SYNCED
                },
            ),
            // Delays shorter than the flags allow: the rotation does not start.
            (
                "drain delay too short",
                sourced(&delays(&rotation, "1h", "1m"), &pki.new),
                Expect {
                    ready: "DelayTooShort",
                    events: &["DelayTooShort"],
                    rotation: Some("DelayTooShort"),
                    ..SYNCED
                },
            ),
            (
                "trust propagation delay too short",
                sourced(&delays(&rotation, "10s", "25h"), &pki.new),
                Expect {
                    ready: "DelayTooShort",
                    events: &["DelayTooShort"],
                    rotation: Some("DelayTooShort"),
                    ..SYNCED
                },
            ),
            // The drain is over, but the anchors cannot be read: no root is cut.
            (
                "anchors unreadable at the cut",
                with_anchor(
                    &at(&switched, t0() + DAY * 3),
                    vec![anchor("peer", Fetched::ObjectNotFound)],
                ),
                Expect {
                    ready: "TrustAnchorNotFound",
                    events: &["TrustAnchorNotFound"],
                    phase: Some(SwitchingIntermediate),
                    rotation: Some("CutHeld"),
                    ..SYNCED
                },
            ),
            // In RemovingOldRoot with the old root kept as an anchor, an unreadable anchor
            // holds the cut (and the completion).
            (
                "anchors unreadable during RemovingOldRoot",
                with_anchor(&kept_as_anchor, vec![anchor("peer", Fetched::ObjectNotFound)]),
                Expect {
                    ready: "TrustAnchorNotFound",
                    events: &["TrustAnchorNotFound"],
                    phase: Some(RemovingOldRoot),
                    rotation: Some("CutHeld"),
                    ..SYNCED
                },
            ),
            // The old intermediate would expire before the delays end: no rotation starts.
            (
                "intermediate expiring during the delays",
                sourced(&at(&rotation, t0() + DAY * 89), &pki.new),
                Expect {
                    ready: "OldIntermediateExpiring",
                    healthy: "IntermediateExpiring",
                    events: &["OldIntermediateExpiring", "IntermediateExpiring"],
                    rotation: Some("OldIntermediateExpiring"),
                    ..SYNCED
                },
            ),
            // A new root that expires before the old one is refused; cacerts stays.
            (
                "rotation refused",
                sourced(&rotation, &pki.short),
                Expect {
                    ready: "NewRootRefused",
                    events: &["NewRootRefused"],
                    ..SYNCED
                },
            ),
            // A good anchor is appended to root-cert.pem.
            (
                "anchor added",
                anchored.clone(),
                Expect {
                    write: Some(Replace),
                    ..SYNCED
                },
            ),
            // A bad anchor: root-cert.pem stays, the renewal still goes through.
            (
                "anchor invalid",
                sourced(
                    &with_anchor(&written, vec![anchor("peer", Fetched::Found(b"garbage".to_vec()))]),
                    &pki.renewed,
                ),
                Expect {
                    write: Some(Replace),
                    ready: "InvalidTrustAnchor",
                    events: &["InvalidTrustAnchor"],
                    ..SYNCED
                },
            ),
            // A missing anchor is named the same way.
            (
                "anchor missing",
                with_anchor(&written, vec![anchor("peer", Fetched::ObjectNotFound)]),
                Expect {
                    ready: "TrustAnchorNotFound",
                    events: &["TrustAnchorNotFound"],
                    ..SYNCED
                },
            ),
            // An anchor taken out of the spec is cut from root-cert.pem.
            (
                "anchor removed",
                anchor_removed,
                Expect {
                    write: Some(Replace),
                    ..SYNCED
                },
            ),
            // The published root is written where there is none.
            (
                "publishRoot fresh",
                observed(istio_cacerts(publishing()), Some(&pki.old)),
                Expect {
                    write: Some(Create),
                    published: Some("Published"),
                    publishes: true,
                    ..SYNCED
                },
            ),
            // Ours and up to date: no write, still Published.
            (
                "publishRoot owned",
                publish,
                Expect {
                    published: Some("Published"),
                    ..SYNCED
                },
            ),
            // A ConfigMap of that name someone else made is never taken over.
            (
                "publishRoot not owned",
                foreign_config_map,
                Expect {
                    write: Some(Create),
                    published: Some("NotOwned"),
                    ..SYNCED
                },
            ),
            // Windows of the intermediate (90 days from t0 - 1h; renewal due at day 60).
            ("healthy", at(&written, t0() + DAY * 30), SYNCED),
            (
                "renewal due",
                at(&written, t0() + DAY * 61),
                Expect {
                    healthy: "IntermediateRenewalDue",
                    events: &["IntermediateRenewalDue"],
                    ..SYNCED
                },
            ),
            (
                "expiring",
                at(&written, t0() + DAY * 85),
                Expect {
                    healthy: "IntermediateExpiring",
                    events: &["IntermediateExpiring"],
                    ..SYNCED
                },
            ),
            // Expired: the source no longer loads, the bundle in place is still tracked.
            (
                "expired",
                at(&written, t0() + DAY * 91),
                Expect {
                    ready: "Expired",
                    healthy: "IntermediateExpired",
                    events: &["Expired", "IntermediateExpired"],
                    ..SYNCED
                },
            ),
        ]
    }

    /// The allow-list is the operator's: a name on it is written like `cacerts`; a name off it
    /// is refused with the flag and the Helm value that would allow it.
    #[test]
    fn only_targets_on_the_allow_list_are_written() {
        let pki = Pki::new();
        let east = observed(
            istio_cacerts(IstioCACertsSpec {
                target_secret_name: "cacerts-east".into(),
                ..spec()
            }),
            Some(&pki.old),
        );
        let refused = decide(&east, &Settings::default());
        assert!(refused.cacerts.is_none(), "nothing written");
        let ready = conditions::find(&refused.then.status.conditions, READY).unwrap();
        assert_eq!(ready.reason, "TargetNotAllowed");
        for needed in [
            "cacerts-east",
            "--cacerts-secret-names",
            "controller.cacertsSecretNames",
        ] {
            assert!(ready.message.contains(needed), "{needed}: {}", ready.message);
        }
        let allowed = Settings {
            cacerts_secret_names: vec!["cacerts".into(), "cacerts-east".into()],
            ..Settings::default()
        };
        let plan = decide(&east, &allowed);
        assert_eq!(plan.cacerts.map(|s| s.write.how), Some(Create));
        // The allow-list never makes cert-manager's Secret a target.
        let mut onto_source = east.clone();
        let mut icc = onto_source.icc.as_ref().clone();
        icc.spec.target_secret_name = icc.spec.source_secret_name.clone();
        onto_source.icc = std::sync::Arc::new(icc);
        let everything = Settings {
            cacerts_secret_names: vec!["istiod-intermediate".into()],
            ..Settings::default()
        };
        let plan = decide(&onto_source, &everything);
        assert!(plan.cacerts.is_none());
        assert_eq!(reason(&plan.then.status, READY), Some("TargetIsSource"));
    }

    /// An adoption that deleted the typed target and could not create it again: the next look
    /// finds no target and creates it as right after the delete (tried again at once; a refusal
    /// keeps saying RecreateFailed). Once written, Ready is Synced again.
    #[test]
    fn a_target_an_adoption_deleted_is_created_again_as_after_the_delete() {
        let pki = Pki::new();
        let mut typed = observed(istio_cacerts(spec()), Some(&pki.renewed));
        let mut icc = typed.icc.as_ref().clone();
        icc.spec.adopt_existing = AdoptExisting::KeepForeignKeys;
        typed.icc = std::sync::Arc::new(icc);
        typed.target = settled(observed(istio_cacerts(spec()), Some(&pki.old)), t0())
            .target
            .map(|mut s| {
                s.type_ = Some("kubernetes.io/tls".into());
                s.metadata.labels = None;
                s.metadata.annotations = None;
                s
            });
        let plan = decide(&typed, &Settings::default());
        assert_eq!(plan.cacerts.as_ref().map(|c| c.write.how), Some(SecretWrite::Recreate));
        let refused = plan
            .if_cacerts_refused(Problem {
                reason: cacerts::reason::RECREATE_FAILED,
                message: "deleted, and the create was refused".into(),
            })
            .unwrap();
        assert_eq!(reason(&refused.status, READY), Some("RecreateFailed"));
        // The next look: the target is gone.
        let mut gone = typed.clone();
        gone.target = None;
        let mut icc = gone.icc.as_ref().clone();
        icc.status = Some(refused.status.clone());
        gone.icc = std::sync::Arc::new(icc);
        let again = decide(&gone, &Settings::default());
        assert_eq!(
            again.cacerts.as_ref().map(|c| c.write.how),
            Some(SecretWrite::CreateAfterAdoption)
        );
        assert_eq!(reason(&again.then.status, READY), Some("Synced"));
        // Written: an ordinary target from then on.
        let written = after(&gone, &again, t0());
        assert!(decide(&written, &Settings::default()).cacerts.is_none());
        // A target absent for any other reason is a plain create.
        let fresh = observed(istio_cacerts(spec()), Some(&pki.old));
        assert_eq!(
            decide(&fresh, &Settings::default()).cacerts.map(|c| c.write.how),
            Some(SecretWrite::Create)
        );
    }

    /// An intermediate the issuer revoked: Ready says so, and cert-manager is asked for a new
    /// one once (recorded in status); the next looks do not ask again for that serial, and a
    /// Certificate already issuing is not asked at all.
    #[test]
    fn a_revoked_intermediate_asks_cert_manager_once() {
        use crate::api::istio_cacerts::Revocation;
        use crate::pki::crl::{CrlSigner, Reason, Revoked, parse_serial};
        let r = crate::istio::testing::root(3650);
        let source = crate::istio::testing::source_under(&r);
        let mut o = observed(
            istio_cacerts(IstioCACertsSpec {
                revocation: Some(Revocation {
                    enabled: true,
                    crl_validity: "72h".into(),
                    refresh_before: None,
                }),
                ..spec()
            }),
            Some(&source),
        );
        let serial = source.intermediate.serial_hex();
        if let Some(s) = o.source.as_mut() {
            s.metadata.annotations = Some(
                [(
                    crate::api::cert_manager::CERTIFICATE_NAME_ANNOTATION.to_string(),
                    "istiod-intermediate".to_string(),
                )]
                .into(),
            );
        }
        o.revocation = Some(revocation::Inputs {
            issuer: "ClusterMeshCAIssuer mesh-root".into(),
            revoked: vec![Revoked {
                serial: parse_serial(&serial).unwrap(),
                reason: Reason::KeyCompromise,
                revoked_at: t0(),
            }],
            signer: Some(CrlSigner {
                certificate: r.0.clone(),
                key: std::sync::Arc::new(r.1),
            }),
            ..Default::default()
        });
        let first = decide(&o, &Settings::default());
        assert_eq!(reason(&first.then.status, READY), Some("IntermediateRevoked"));
        assert_eq!(
            first.then.reissue.as_ref().map(|r| r.certificate.as_str()),
            Some("istiod-intermediate")
        );
        assert_eq!(
            first.then.status.reissue_requested_for.as_deref(),
            Some(serial.as_str())
        );
        let next = after(&o, &first, t0() + HOUR);
        let again = decide(&next, &Settings::default());
        assert!(again.then.reissue.is_none(), "asked once");
        assert_eq!(
            again.then.status.reissue_requested_for.as_deref(),
            Some(serial.as_str())
        );
        // cert-manager already issuing (its own renewal): not asked, nothing recorded.
        let mut issuing = o.clone();
        issuing.certificate = Some(crate::api::cert_manager::CertificateStatus {
            conditions: Some(vec![crate::api::cert_manager::CertificateRequestCondition {
                type_: "Issuing".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let busy = decide(&issuing, &Settings::default());
        assert!(busy.then.reissue.is_none() && busy.then.status.reissue_requested_for.is_none());
    }

    /// Nothing the decision carries shows key material in `{:?}`: not the observed Secrets,
    /// the target as judged, the plan, nor the write.
    #[test]
    fn no_key_material_in_debug_output() {
        use crate::istio::secret_data::tests::assert_not_shown;
        let pki = Pki::new();
        let fresh = observed(istio_cacerts(spec()), Some(&pki.old));
        let plan = decide(&fresh, &Settings::default());
        let written = after(&fresh, &plan, t0());
        let renewal = sourced(&written, &pki.renewed);
        let key = pki.old.key_pem.to_vec();
        let renewed_key = pki.renewed.key_pem.to_vec();
        let step = plan.cacerts.as_ref().unwrap();
        let target = target_state(written.target.as_ref());
        let cacerts_plan = cacerts::plan(&pki.renewed, &target, "mesh", &AdoptExisting::Never, t0()).unwrap();
        let shown = [
            ("Observed", format!("{written:?}")),
            ("Plan", format!("{plan:?}")),
            ("CacertsWrite", format!("{:#?}", step.write)),
            ("Target", format!("{target:?}")),
            ("CacertsPlan", format!("{cacerts_plan:?}")),
            ("SourceBundle", format!("{:?}", pki.old)),
            (
                "secret_data",
                format!("{:?}", secret_data(written.target.as_ref().unwrap())),
            ),
            ("renewal Plan", format!("{:?}", decide(&renewal, &Settings::default()))),
        ];
        for (what, shown) in &shown {
            assert_not_shown(shown, &key, what);
            assert_not_shown(shown, &renewed_key, what);
        }
        // Still useful: the key names are there.
        assert!(shown[2].1.contains("ca-key.pem"), "{}", shown[2].1);
    }

    fn reason<'a>(status: &'a IstioCACertsStatus, type_: &str) -> Option<&'a str> {
        conditions::find(&status.conditions, type_).map(|c| c.reason.as_str())
    }

    #[test]
    fn decide_table() {
        let pki = Pki::new();
        for (case, o, expect) in rows(&pki) {
            let plan = decide(&o, &Settings::default());
            let then = &plan.then;
            let got = (
                plan.cacerts.as_ref().map(|s| s.write.how),
                reason(&then.status, READY).unwrap_or_default(),
                reason(&then.status, CERTIFICATES_HEALTHY).unwrap_or_default(),
                then.status.root_rotation.as_ref().map(|r| r.phase),
                then.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
                reason(&then.status, ROOT_PUBLISHED),
                then.publish.is_some(),
            );
            if let Some(expected) = expect.rotation {
                assert_eq!(
                    reason(&then.status, rotation::ROOT_ROTATION),
                    Some(expected),
                    "{case}: RootRotation {:?}",
                    conditions::find(&then.status.conditions, rotation::ROOT_ROTATION).map(|c| &c.message)
                );
            }
            if let Some(text) = expect.note {
                assert!(
                    then.events.iter().any(|e| e.note.contains(text)),
                    "{case}: no event says {text:?}: {:?}",
                    then.events
                );
            }
            let want = (
                expect.write,
                expect.ready,
                expect.healthy,
                expect.phase,
                expect.events.to_vec(),
                expect.published,
                expect.publishes,
            );
            assert_eq!(
                got, want,
                "{case}: (write, Ready, CertificatesHealthy, phase, events, RootPublished, publishes)"
            );
            // Whatever the row, a refused write moves nothing and says why.
            if let Some(refused) = plan.if_cacerts_refused(Problem {
                reason: cacerts::reason::WRITE_FAILED,
                message: "the API server said no".into(),
            }) {
                let previous_phase = o
                    .icc
                    .status
                    .as_ref()
                    .and_then(|s| s.root_rotation.as_ref())
                    .map(|r| r.phase);
                assert_eq!(
                    refused.status.root_rotation.as_ref().map(|r| r.phase),
                    previous_phase,
                    "{case}: refused"
                );
                assert_eq!(reason(&refused.status, READY), Some("WriteFailed"), "{case}: refused");
                assert!(
                    !refused.events.iter().any(|e| e.reason.starts_with("Rotation")),
                    "{case}: refused"
                );
                assert_eq!(refused.metrics.reconcile, "write_failed", "{case}: refused");
            }
        }
    }
}
