//! The data of one IstioCACerts reconcile, in its three steps: [`Observed`] (everything read,
//! gathered by the controller before anything is decided), [`Settings`] (the controller's
//! flags that bear on it), and [`Plan`] (what [`super::decide::decide`] makes of them: the
//! writes in order, each with what follows when the API server refuses it). The controller's
//! `act` carries a plan out and decides nothing itself.
//!
//! A later feature adds what it reads as a field of [`Observed`] and what it writes as a step
//! of [`Outcome`] (with the fallback its refusal needs), not a branch in the controller.

use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;

use super::cacerts::Problem;
use super::publish::{self, PublishWrite};
use super::secret_data::SecretData;
use super::trust_bundle::AnchorInput;
use crate::api::cert_manager::CertificateStatus;
use crate::api::conditions;
use crate::api::issuer::CertificateSummary;
use crate::api::istio_cacerts::{IstioCACerts, IstioCACertsStatus};
use crate::metrics::CertificateSeries;
use crate::pki::renewal::Thresholds;

/// Everything one reconcile reads, as it was read. `Debug` names what was found, never the
/// Secrets' data.
#[derive(Clone)]
pub struct Observed {
    /// The IstioCACerts itself: spec, status, the advance annotation, generation.
    pub icc: Arc<IstioCACerts>,
    /// cert-manager's Secret (`spec.sourceSecretName`), if it exists.
    pub source: Option<Secret>,
    /// istiod's `cacerts` (`spec.targetSecretName`), if it exists.
    pub target: Option<Secret>,
    /// Each `spec.trustAnchors` entry and what its ConfigMap or Secret key holds.
    pub anchors: Vec<AnchorInput>,
    /// The status of the Certificate that writes the source (its renewal time), if found.
    pub certificate: Option<CertificateStatus>,
    /// The issuer's backend CA as its status shows it, if the source names one of ours.
    pub backend_ca: Option<CertificateSummary>,
    /// The `spec.publishRoot` ConfigMap (`None` when publishRoot is not set).
    pub published: Option<publish::Found>,
    /// With `spec.revocation.enabled`: the issuer's revoked list and what its backend gives
    /// for CRLs (`None`: the source names no issuer of ours, or revocation is off).
    pub revocation: Option<super::revocation::Inputs>,
    /// With revocation off after it was on: the CRLs istiod still distributes (ConfigMap
    /// `istio-ca-crl` here), which it keeps when `ca-crl.pem` goes (Istio #61073).
    pub distributed_crls: Option<Vec<crate::pki::crl::Crl>>,
    /// With `spec.bundleEndpoint.tlsSecretName`: that Secret's certificate.
    pub serving: Option<super::bundle_endpoint::ServingSecret>,
    /// With `spec.clusterTrustBundle` (or after it was on): our ClusterTrustBundles.
    pub trust_bundles: Option<super::cluster_trust_bundle::Found>,
    pub now: Timestamp,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = |s: &Option<Secret>| {
            s.as_ref().map(|s| {
                s.data
                    .as_ref()
                    .map(|d| d.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
        };
        f.debug_struct("Observed")
            .field("icc", &self.icc.metadata.name)
            .field("source_keys", &keys(&self.source))
            .field("target_keys", &keys(&self.target))
            .field("anchors", &self.anchors.len())
            .field("certificate", &self.certificate)
            .field("backend_ca", &self.backend_ca)
            .field("published", &self.published.is_some())
            .field("revocation", &self.revocation.as_ref().map(|r| r.issuer.as_str()))
            .field("now", &self.now)
            .finish()
    }
}

impl Observed {
    pub fn namespace(&self) -> &str {
        self.icc.metadata.namespace.as_deref().unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.icc.metadata.name.as_deref().unwrap_or_default()
    }

    /// `Secret <namespace>/<name>`, for messages.
    pub fn secret_display(&self, name: &str) -> String {
        format!("Secret {}/{name}", self.namespace())
    }
}

/// The controller's flags that bear on the decision.
#[derive(Clone, Debug)]
pub struct Settings {
    pub thresholds: Thresholds,
    /// The bounds on a root rotation's delays (`--workload-cert-ttl`, `--clock-skew-allowance`,
    /// `--min-trust-propagation-delay`).
    pub rotation: super::rotation::Limits,
    /// `--cacerts-secret-names`: the only Secrets an IstioCACerts may write (its
    /// `targetSecretName`). The chart grants update and delete on exactly these.
    pub cacerts_secret_names: Vec<String>,
}

impl Default for Settings {
    /// The flags' defaults: istiod's own `cacerts` only.
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            rotation: super::rotation::Limits::default(),
            cacerts_secret_names: vec![crate::api::istio_cacerts::DEFAULT_TARGET_SECRET_NAME.to_string()],
        }
    }
}

/// What to do, in order. Step 1 is the `cacerts` write; everything after it is an
/// [`Outcome`]: `then` when the write succeeded or none was needed, the step's `if_refused`
/// when the API server refused it. So a rotation phase that moves with a write is only in the
/// outcome that follows that write's success.
#[derive(Clone, Debug)]
pub struct Plan {
    pub cacerts: Option<CacertsStep>,
    pub then: Outcome,
}

impl Plan {
    /// What follows when the `cacerts` write (if any) is refused for `problem`: the plan's
    /// fallback with the API server's answer in `Ready`. `None` when there is no write.
    pub fn if_cacerts_refused(&self, problem: Problem) -> Option<Outcome> {
        let step = self.cacerts.as_ref()?;
        Some(step.if_refused.as_ref().clone().refused(conditions::READY, problem))
    }
}

/// Writing `cacerts`, and what follows instead when that is refused.
#[derive(Clone, Debug)]
pub struct CacertsStep {
    pub write: CacertsWrite,
    /// The bundle left in place is tracked, nothing of a rotation moves, Ready is `WriteFailed`
    /// (its message is the API server's answer: [`Outcome::refused`]).
    pub if_refused: Box<Outcome>,
}

/// How the target Secret is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretWrite {
    /// It does not exist: create it.
    Create,
    /// Replace it, with the resourceVersion it was read at (a concurrent change is a conflict).
    Replace,
    /// Adopting a `kubernetes.io/*` typed Secret, whose type cannot change and whose keys
    /// istiod would read instead of ours: delete exactly the object read (uid and
    /// resourceVersion preconditions), then create it as Opaque.
    Recreate,
    /// It is gone because an adoption deleted it and could not create it again (Ready says
    /// `RecreateFailed`): create it, as right after that delete — tried again at once, and a
    /// refusal keeps saying `RecreateFailed` with the backup's name.
    CreateAfterAdoption,
}

/// The `cacerts` write. `Debug` shows the data's key names and sizes, never its values.
#[derive(Clone, PartialEq, Eq)]
pub struct CacertsWrite {
    pub how: SecretWrite,
    /// The four keys istiod reads, and the target's keys istiod does not read (kept unless
    /// `adoptExisting: Replace`).
    pub data: SecretData,
    /// The owner annotation's value: this IstioCACerts.
    pub owner: String,
    /// The appended-anchors record: `Some("")` removes the annotation, `None` leaves it.
    pub record: Option<String>,
    /// The `Written` event's note.
    pub note: String,
    /// The new intermediate's fingerprint, for the log.
    pub fingerprint: String,
    /// The crash point right after the write (a rotation phase changes with it).
    pub failpoint: Option<String>,
}

impl std::fmt::Debug for CacertsWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsWrite")
            .field("how", &self.how)
            .field("data", &self.data)
            .field("owner", &self.owner)
            .field("record", &self.record)
            .field("note", &self.note)
            .field("failpoint", &self.failpoint)
            .finish()
    }
}

/// A Certificate to be issued again, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reissue {
    pub certificate: String,
    pub message: String,
}

/// An event to publish about the IstioCACerts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning, else Normal.
    pub warning: bool,
    pub reason: String,
    pub action: &'static str,
    pub note: String,
}

/// The metric updates of a reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricUpdates {
    /// `meshca_rotation_phase`: the current phase, if any.
    pub rotation_phase: Option<&'static str>,
    /// `meshca_certificate_*` per kind (every kind, so a series that went away is dropped).
    pub certificates: Vec<(&'static str, Vec<CertificateSeries>)>,
    /// `meshca_crl_next_update_timestamp_seconds` per CRL in `ca-crl.pem`: (its CA, unix seconds).
    pub crls: Vec<(String, i64)>,
    /// `meshca_reconciles_total{controller="istiocacerts",outcome}`.
    pub reconcile: &'static str,
}

/// Everything after the `cacerts` write, in order: the published root, the status, the events,
/// the advance annotation's removal, the metrics and the requeue.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Step 2: publish the root (`spec.publishRoot`), when the ConfigMap differs. Refused:
    /// [`Outcome::refused`] with [`publish::ROOT_PUBLISHED`], and the rest goes on.
    pub publish: Option<PublishWrite>,
    /// Step 2c: the ClusterTrustBundles to apply and delete. Refused: [`Outcome::refused`] with
    /// [`super::cluster_trust_bundle::PUBLISHED`].
    pub trust_bundles: Option<super::cluster_trust_bundle::Writes>,
    /// Step 3: the complete new status (written when it differs from the one read).
    pub status: IstioCACertsStatus,
    /// Step 4: the events, in order.
    pub events: Vec<PlannedEvent>,
    /// Step 5: remove the `meshca.io/advance-rotation` annotation (it was used, or is stale).
    pub remove_advance_annotation: bool,
    /// Step 6.
    pub metrics: MetricUpdates,
    /// Step 7: look again then (the next window boundary or rotation delay); else on change.
    pub requeue_at: Option<Timestamp>,
    /// Step 2b, before the status that records it (`status.reissueRequestedFor`): ask
    /// cert-manager for a new intermediate (the issuer revoked this one), as `cmctl renew`
    /// does: the Certificate's `Issuing` condition, set by us.
    pub reissue: Option<Reissue>,
    /// What the status and events are made from, to redo them after a refusal.
    pub(super) basis: Basis,
}

/// What an outcome's status and events were made from.
#[derive(Clone, Debug)]
pub(super) struct Basis {
    pub previous: Option<IstioCACertsStatus>,
    pub generation: Option<i64>,
    pub now: Timestamp,
    pub thresholds: Thresholds,
    pub tracked: Vec<super::tracking::Tracked>,
    /// The rotation's own events (phase change, stale annotation), after the condition events.
    pub rotation_events: Vec<PlannedEvent>,
}

impl Outcome {
    /// The status to write: `None` when it is what the object already shows.
    pub fn status_write(&self) -> Option<&IstioCACertsStatus> {
        (self.basis.previous.as_ref() != Some(&self.status)).then_some(&self.status)
    }

    /// This outcome after a write was refused: `condition` (Ready for `cacerts`,
    /// RootPublished for the published root) says `problem`, and the events follow.
    pub fn refused(mut self, condition: &str, problem: Problem) -> Self {
        let b = &self.basis;
        let before = b
            .previous
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, condition));
        let next = conditions::next(
            before,
            condition,
            false,
            problem.reason,
            problem.message,
            b.generation,
            b.now,
        );
        match self.status.conditions.iter_mut().find(|c| c.type_ == condition) {
            Some(c) => *c = next,
            None => self.status.conditions.push(next),
        }
        self.events = self.basis.events(&self.status);
        self
    }
}

impl Basis {
    /// The events of a status: condition and window changes, then the rotation's.
    pub fn events(&self, status: &IstioCACertsStatus) -> Vec<PlannedEvent> {
        let mut events = super::tracking::announcements(
            self.previous.as_ref(),
            status,
            &self.tracked,
            self.now,
            &self.thresholds,
        );
        events.extend(self.rotation_events.iter().cloned());
        events
    }
}
