//! Root rotation without downtime: which phase a rotation is in, when it moves on, and what
//! `cacerts` holds in each phase. Pure: `(spec, status, source, target, now) -> Decision`; the
//! controller reads, calls [`decide`], and carries the decision out.
//!
//! istiod accepts a changed `root-cert.pem` only with `ISTIO_MULTIROOT_MESH=true` and only when
//! one file's bytes contain the other's, so a rotation runs in steps that each grow or shrink
//! the file at an end ([`trust_bundle::assemble`] does the byte work):
//!
//! 1. `AddingNewRoot`: the new root is appended; istiod keeps signing with the *old*
//!    intermediate, taken from the target Secret itself (cert-manager's Secret already holds
//!    the new one). Wait `trustPropagationDelay`.
//! 2. `SwitchingIntermediate`: the new intermediate is written, `root-cert.pem` unchanged.
//!    Wait `workloadDrainDelay`.
//! 3. `RemovingOldRoot`: the old root is cut off (unless it is also a trust anchor).
//! 4. `Completed`.
//!
//! All state is in `status.rootRotation`. Every phase's `cacerts` is a function of the phase,
//! the source and the target, so a restart in any phase recomputes the same bytes and writes
//! nothing. The controller writes `cacerts` before status; when a status update was lost after
//! a write, the target shows it (the new intermediate already in place, the old root already
//! cut) and the status catches up, counting the next delay from now (never shorter).

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};

use super::cacerts::{
    self, BundleContents, CA_CERT, CA_KEY, CERT_CHAIN, Problem, ROOT_CERT, SourceBundle, Target, verify_bundle,
};
use super::trust_bundle::assemble;
use crate::api::istio_cacerts::{
    AdoptExisting, RootRotation, RootRotationStatus, RotationHistoryEntry, RotationMode, RotationPhase,
};
use crate::duration::parse_go_duration;
use crate::pki::Certificate;

/// The condition that shows a rotation's phase and what it waits for.
pub const ROOT_ROTATION: &str = "RootRotation";

/// Reasons (of `Ready` for refusals, of the `RootRotation` condition otherwise).
pub mod reason {
    /// The new root itself is unfit (a weak key, not self-signed, expired, not yet valid,
    /// expires before the old one, or the new intermediate does not verify against it).
    pub const NEW_ROOT_REFUSED: &str = "NewRootRefused";
    /// The new root is not the one `spec.rootRotation.expectedNewRoot` pins (or nothing is
    /// pinned): the rotation waits for `meshca rotation approve`.
    pub const NEW_ROOT_NOT_APPROVED: &str = "NewRootNotApproved";
    /// A delay in spec.rootRotation does not parse.
    pub const INVALID_ROTATION_SPEC: &str = "InvalidRotationSpec";
    /// The source moved to a third root while a rotation is under way.
    pub const ROTATION_IN_PROGRESS: &str = "RotationInProgress";
    pub const PAUSED: &str = "Paused";
    pub const WAITING: &str = "Waiting";
    pub const WAITING_FOR_ADVANCE: &str = "WaitingForAdvance";
    pub const STALE_ADVANCE: &str = "StaleAdvanceAnnotation";
    pub const NOT_ROTATING: &str = "NotRotating";
    /// An advance annotation that came before `status.rootRotation.nextPhaseAt`, or while the
    /// cut is held: refused and removed (the condition, and a Warning event).
    pub const ADVANCE_REFUSED: &str = "AdvanceRefused";
    /// A `force-<phase>` advance ended a phase before its delay (a Warning event).
    pub const FORCED_ADVANCE: &str = "ForcedAdvance";
    /// A delay in spec.rootRotation is shorter than the controller's flags allow.
    pub const DELAY_TOO_SHORT: &str = "DelayTooShort";
    /// The old root is not cut while the trust anchors cannot be read or checked.
    pub const CUT_HELD: &str = "CutHeld";
    /// The old intermediate would expire before the rotation no longer needs it: a rotation
    /// does not start, and one held in AddingNewRoot warns by when it must move on.
    pub const OLD_INTERMEDIATE_EXPIRING: &str = "OldIntermediateExpiring";
}

/// The prefix of the advance annotation's emergency value: `force-<phase it moves to>`.
pub const FORCE_PREFIX: &str = "force-";

/// The controller's flags that bound a rotation's delays. A delay shorter than these would let
/// the old root be cut while workload certificates under it are live (a mesh-wide mTLS outage),
/// and the CRD cannot know the flags, so the controller refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `--workload-cert-ttl`: istiod's workload certificate lifetime.
    pub workload_cert_ttl: std::time::Duration,
    /// `--clock-skew-allowance`: added to the workload certificate lifetime.
    pub clock_skew_allowance: std::time::Duration,
    /// `--min-trust-propagation-delay`.
    pub min_trust_propagation_delay: std::time::Duration,
}

impl Default for Limits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            workload_cert_ttl: std::time::Duration::from_secs(24 * 3600),
            clock_skew_allowance: std::time::Duration::from_secs(5 * 60),
            min_trust_propagation_delay: std::time::Duration::from_secs(60),
        }
    }
}

impl Limits {
    /// The shortest `workloadDrainDelay`: every workload certificate of the old intermediate has
    /// expired by then, whatever the clocks of the nodes say.
    pub fn min_workload_drain_delay(&self) -> std::time::Duration {
        self.workload_cert_ttl.saturating_add(self.clock_skew_allowance)
    }
}

/// What the controller knows in this reconcile.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// The IstioCACerts' namespace and name, for the command that approves a new root.
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: Option<&'a RootRotation>,
    /// The last `status.rootRotation`.
    pub status: Option<&'a RootRotationStatus>,
    /// The value of the `meshca.io/advance-rotation` annotation.
    pub advance: Option<&'a str>,
    /// Who set that annotation: the field manager(s) owning it (`managedFields`), for the
    /// Warning a forced advance raises. None: no manager owns it.
    pub advance_set_by: Option<&'a str>,
    pub source: &'a SourceBundle,
    pub target: &'a Target,
    /// The trust anchor certificates (`spec.trustAnchors`): an old root that is also one stays.
    /// Err when an anchor cannot be read or checked: then nothing is cut, since the root to cut
    /// might be one of them.
    pub anchors: Result<&'a [Certificate], &'a Problem>,
    /// The controller's bounds on the delays.
    pub limits: Limits,
    /// With `spec.bundleEndpoint`: its refresh hint. AddingNewRoot then lasts at least three
    /// of them (SPIFFE Federation's advice: publish a new root 3-5 refresh hints before it is
    /// used), so that peers polling at the hint hold the new root before it signs.
    pub bundle_refresh_hint: Option<SignedDuration>,
    /// With `spec.bundleEndpoint.tlsSecretName`: that certificate's chain (leaf first). One
    /// that chains to an old root only holds the cut until it is re-issued under the new one:
    /// peers would refuse the endpoint once the old root is gone.
    pub serving_certificate: Option<&'a [Certificate]>,
    /// The RootRotation condition as it stands (reason, message): a refused advance stays
    /// visible until the phase may end, not only until the annotation's removal is seen.
    pub previous_condition: Option<(&'a str, &'a str)>,
    pub now: Timestamp,
}

/// What the advance annotation asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Advance {
    /// `<phase>`: end this phase now, if its delay has passed (Manual mode's way on).
    End(RotationPhase),
    /// `force-<phase>`: move into this phase now, whatever the delay (the emergency path).
    Force(RotationPhase),
}

impl Advance {
    fn parse(value: &str) -> Option<Self> {
        match value.trim().strip_prefix(FORCE_PREFIX) {
            Some(to) => RotationPhase::parse(to).map(Advance::Force),
            None => RotationPhase::parse(value).map(Advance::End),
        }
    }
}

/// Which intermediate `cacerts` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signer {
    /// The one in the source (cert-manager's Secret).
    Source,
    /// The one already in the target: the old intermediate, kept while the new root propagates.
    Target,
}

/// What `cacerts` should hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bundle {
    /// No rotation involved: the ordinary plan (first write, same-root renewal, rotation not
    /// configured — which refuses a new root with `RootChanged` as always).
    Ordinary,
    /// `cacerts` stays exactly as it is, for this reason.
    Refused(Problem),
    /// This intermediate with exactly this `root-cert.pem` (before trust anchors are applied).
    Write { signer: Signer, root_cert: Vec<u8> },
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub bundle: Bundle,
    /// `status.rootRotation` after this step.
    pub status: Option<RootRotationStatus>,
    /// Set when the phase changed: the new phase and the message (for the event).
    pub transition: Option<(RotationPhase, String)>,
    /// For the `RootRotation` condition: (reason, message). None when rotation is not
    /// configured and never ran.
    pub condition: Option<(&'static str, String)>,
    /// The annotation named the current phase and was used: remove it.
    pub consume_advance: bool,
    /// The annotation names another phase: it is ignored and removed (message for an event).
    pub stale_advance: Option<String>,
    /// The annotation named the current phase but came before `nextPhaseAt` (or while the cut
    /// is held): refused and removed (message for a Warning event).
    pub refused_advance: Option<String>,
    /// A `force-<phase>` annotation moved the phase before its delay ended (message for a
    /// Warning event naming who set it).
    pub forced_advance: Option<String>,
    /// The old intermediate expires before a rotation held in AddingNewRoot could end (message
    /// for a Warning event, raised once when the condition turns to it).
    pub expiring_warning: Option<String>,
    /// When to look again (a delay ends).
    pub requeue_at: Option<Timestamp>,
    /// The own roots to publish (`publishRoot`) while old and new are both trusted.
    pub published_roots: Option<Vec<Certificate>>,
    /// A fit new root that waits for approval (`spec.rootRotation.expectedNewRoot`).
    pub awaiting_approval: Option<Certificate>,
}

impl Decision {
    fn new(bundle: Bundle, status: Option<RootRotationStatus>) -> Self {
        Self {
            bundle,
            status,
            transition: None,
            condition: None,
            consume_advance: false,
            stale_advance: None,
            refused_advance: None,
            forced_advance: None,
            expiring_warning: None,
            requeue_at: None,
            published_roots: None,
            awaiting_approval: None,
        }
    }
}

/// The next step of a root rotation.
pub fn decide(inputs: &Inputs) -> Decision {
    let previous = inputs.status.cloned();
    // Only a loadable current bundle can be rotated from; anything else is an ordinary write.
    let Some(current) = current_bundle(inputs.target, inputs.now) else {
        return idle(Decision::new(Bundle::Ordinary, previous), inputs);
    };
    let mut decision = match inputs.status.filter(|s| s.phase.in_progress()) {
        None => not_rotating(inputs, &current),
        Some(status) => rotating(inputs, &current, status),
    };
    // An annotation acts only on the phase that is current when it is seen; any other is
    // removed, so it can never fire later (in this rotation or the next).
    if let Some(advance) = inputs
        .advance
        .filter(|_| !decision.consume_advance && decision.refused_advance.is_none())
    {
        let phase = inputs
            .status
            .filter(|s| s.phase.in_progress())
            .map_or("no rotation is under way", |s| s.phase.as_str());
        let why = if inputs.spec.is_some_and(|s| s.paused) {
            format!("the rotation is paused (spec.rootRotation.paused) in {phase}")
        } else {
            format!(
                "the rotation is in {phase}, and an advance acts only on the phase it names (or, in an emergency, {FORCE_PREFIX}<the phase that follows it>)"
            )
        };
        decision.stale_advance = Some(format!(
            "the annotation {}: {advance} was ignored and removed: {why}",
            crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION
        ));
    }
    decision
}

/// The condition for a decision that does not involve a rotation.
fn idle(mut d: Decision, inputs: &Inputs) -> Decision {
    if inputs.spec.is_some() || d.status.is_some() {
        let last = d
            .status
            .as_ref()
            .map(|s| {
                format!(
                    "; the last rotation ended {} at {}",
                    s.phase.as_str(),
                    s.phase_started_at
                )
            })
            .unwrap_or_default();
        d.condition = Some((
            reason::NOT_ROTATING,
            format!("the source's intermediate chains to a root root-cert.pem already holds: no rotation{last}"),
        ));
        // Said now rather than when a new root arrives: a rotation would be refused.
        if let Some(Err(problem)) = inputs
            .spec
            .map(|spec| Delays::of(spec, &inputs.limits, inputs.bundle_refresh_hint))
        {
            d.condition = Some((
                problem.reason,
                format!("no rotation is under way, but one would be held: {}", problem.message),
            ));
        }
    }
    d
}

fn not_rotating(inputs: &Inputs, current: &BundleContents) -> Decision {
    let previous = inputs.status.cloned();
    let new_root = &inputs.source.root;
    if current.anchor == *new_root {
        // done: a renewal under the same root never changes root-cert.pem
        return idle(Decision::new(Bundle::Ordinary, previous), inputs);
    }
    let Some(spec) = inputs.spec else {
        // done: rotation is not configured; the ordinary plan refuses the new root (RootChanged)
        return Decision::new(Bundle::Ordinary, previous);
    };
    if !spec.multi_root_mesh_enabled {
        let mut d = Decision::new(
            Bundle::Refused(Problem {
                reason: cacerts::reason::ROOT_CHANGED,
                message: format!(
                    "the new intermediate chains to root {} (SHA-256 {}), which root-cert.pem does not hold; cacerts is left as it is. To rotate without downtime, run istiod with ISTIO_MULTIROOT_MESH=true (Helm: pilot.env.ISTIO_MULTIROOT_MESH=\"true\") and then set spec.rootRotation.multiRootMeshEnabled: true",
                    new_root.subject(),
                    new_root.fingerprint()
                ),
            }),
            previous,
        );
        d.condition = Some((
            cacerts::reason::ROOT_CHANGED,
            "a new root waits: spec.rootRotation.multiRootMeshEnabled is false".to_string(),
        ));
        return d;
    }
    start(inputs, current, spec, Approval::Needed)
}

/// Whether a rotation's new root must be the one `spec.rootRotation.expectedNewRoot` pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Approval {
    /// A new root: only the pinned one.
    Needed,
    /// Back to a root of the rotation under way (after the switch), which the mesh ran under.
    OldRoot,
}

/// Begins a rotation from the root the current intermediate chains to towards the source's.
fn start(inputs: &Inputs, current: &BundleContents, spec: &RootRotation, approval: Approval) -> Decision {
    let previous = inputs.status.cloned();
    let (old, new, now) = (&current.anchor, &inputs.source.root, inputs.now);
    if let Err(problem) = check_new_root(inputs.source, old, now) {
        let mut d = Decision::new(Bundle::Refused(problem.clone()), previous);
        d.condition = Some((problem.reason, problem.message));
        return d;
    }
    if approval == Approval::Needed
        && let Err(problem) = approved(new, spec, inputs)
    {
        // done: waits until the new root is pinned (meshca rotation approve)
        let mut d = refused(problem, previous);
        d.awaiting_approval = Some(new.clone());
        return d;
    }
    let delays = match Delays::of(spec, &inputs.limits, inputs.bundle_refresh_hint) {
        Ok(delays) => delays,
        Err(problem) => return refused(problem, previous),
    };
    if let Err(problem) = old_intermediate_outlives(&current.intermediate, &delays, now) {
        return refused(problem, previous);
    }
    if spec.paused {
        let mut d = Decision::new(Bundle::Refused(paused_problem("before it started")), previous);
        d.condition = Some((
            reason::PAUSED,
            format!(
                "a rotation to root {} waits: spec.rootRotation.paused is true",
                new.fingerprint()
            ),
        ));
        return d;
    }
    let root_cert = append(existing_root_cert(inputs.target), &[old.clone(), new.clone()]);
    let message = format!(
        "rotation to root {} (SHA-256 {}) started: root-cert.pem holds the old root {} and the new one; istiod keeps signing with the old intermediate",
        new.subject(),
        new.fingerprint(),
        old.fingerprint()
    );
    let status = RootRotationStatus {
        phase: RotationPhase::AddingNewRoot,
        old_roots: vec![old.fingerprint()],
        new_root: new.fingerprint(),
        phase_started_at: now.to_string(),
        next_phase_at: Some((now + delays.trust_propagation).to_string()),
        history: vec![RotationHistoryEntry {
            phase: RotationPhase::AddingNewRoot,
            at: now.to_string(),
            message: message.clone(),
        }],
    };
    let mut d = Decision::new(
        Bundle::Write {
            signer: Signer::Target,
            root_cert,
        },
        Some(status),
    );
    d.transition = Some((RotationPhase::AddingNewRoot, message));
    d.published_roots = Some(vec![old.clone(), new.clone()]);
    finish(d, spec, &delays, inputs)
}

fn rotating(inputs: &Inputs, current: &BundleContents, status: &RootRotationStatus) -> Decision {
    let previous = Some(status.clone());
    let Some(spec) = inputs.spec else {
        // The user removed spec.rootRotation mid-rotation: hold everything as it is.
        return refused(
            Problem {
                reason: reason::ROTATION_IN_PROGRESS,
                message: format!(
                    "a root rotation is in {} but spec.rootRotation was removed; cacerts is held as it is. Put spec.rootRotation back to go on",
                    status.phase.as_str()
                ),
            },
            previous,
        );
    };
    let delays = match Delays::of(spec, &inputs.limits, inputs.bundle_refresh_hint) {
        Ok(delays) => delays,
        Err(problem) => return refused(problem, previous),
    };
    let source_root = inputs.source.root.fingerprint();
    let to_new = source_root == status.new_root;
    let to_old = status.old_roots.contains(&source_root);
    let phase = status.phase;
    if !to_new && !to_old {
        return refused(
            Problem {
                reason: reason::ROTATION_IN_PROGRESS,
                message: format!(
                    "the source's intermediate chains to root {source_root}, but a rotation to root {} is in {}; cacerts is held as it is. Finish that rotation (or put the source back) before starting another",
                    status.new_root,
                    phase.as_str()
                ),
            },
            previous,
        );
    }
    let step = Step {
        inputs,
        status,
        spec,
        delays,
        old_certs: current
            .roots
            .iter()
            .filter(|r| status.old_roots.contains(&r.fingerprint()))
            .cloned()
            .collect(),
        advance: judge_advance(inputs, status),
    };
    if spec.paused {
        return step.old_intermediate_watched(step.paused(), current);
    }
    let d = match phase {
        RotationPhase::AddingNewRoot if to_old => step.roll_back(),
        // After the switch, going back to the old root is a new rotation.
        _ if to_old => return start(inputs, current, spec, Approval::OldRoot),
        RotationPhase::AddingNewRoot => step.adding_new_root(current),
        RotationPhase::SwitchingIntermediate => step.switching_intermediate(),
        // RemovingOldRoot (Completed and RolledBack are not in progress).
        _ => step.removing_old_root(),
    };
    let d = step.early_advance_shown(d);
    step.old_intermediate_watched(d, current)
}

/// The old intermediate signs until the switch, and the workload certificates it signed must
/// stay valid through the drain: a rotation starts only if it outlives both delays from now.
fn old_intermediate_outlives(old: &Certificate, delays: &Delays, now: Timestamp) -> Result<(), Problem> {
    let needed = now + delays.trust_propagation + delays.workload_drain;
    if old.not_after() >= needed {
        return Ok(());
    }
    Err(Problem {
        reason: reason::OLD_INTERMEDIATE_EXPIRING,
        message: format!(
            "the old intermediate {} (SHA-256 {}) in cacerts expires at {}, before a rotation started now could end ({needed}: trustPropagationDelay {} and workloadDrainDelay {}); istiod signs with it until the switch and its workload certificates must stay valid through the drain. The rotation does not start and cacerts is left as it is: before {}, renew the intermediate under the old root (point the Certificate back at the old issuer and renew it), then move it to the new root",
            old.subject(),
            old.fingerprint(),
            old.not_after(),
            crate::duration::format_go_duration(delays.trust_propagation.unsigned_abs()),
            crate::duration::format_go_duration(delays.workload_drain.unsigned_abs()),
            old.not_after()
        ),
    })
}

/// What the advance annotation does in this phase.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Judged {
    /// No annotation for this phase (none, or a stale one: [`decide`] reports that).
    Nothing,
    /// End the phase now: its delay has passed, or `force-<next phase>` was set.
    Now { forced: bool },
    /// It names this phase but the delay has not passed: refused, with this message.
    Early(String),
}

/// Judges the annotation against the phase: a plain advance acts only from `nextPhaseAt` on
/// (the delays protect live workload certificates; anyone with `patch` on the object could
/// otherwise skip them); `force-<next phase>` acts at once and is announced as a Warning.
fn judge_advance(inputs: &Inputs, status: &RootRotationStatus) -> Judged {
    let phase = status.phase;
    match inputs.advance.and_then(Advance::parse) {
        Some(Advance::Force(to)) if phase.next() == Some(to) => Judged::Now { forced: true },
        Some(Advance::End(named)) if named == phase => {
            let Some(next) = status.next_phase_at.as_deref() else {
                // A phase without a delay (RemovingOldRoot) completes by itself.
                return Judged::Now { forced: false };
            };
            match next.parse::<Timestamp>() {
                Ok(next) if inputs.now >= next => Judged::Now { forced: false },
                // An unreadable nextPhaseAt never lets an advance through: the delay is unknown.
                _ => Judged::Early(early_message(phase, next, status)),
            }
        }
        _ => Judged::Nothing,
    }
}

fn early_message(phase: RotationPhase, next: &str, status: &RootRotationStatus) -> String {
    let annotation = crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION;
    let force = phase
        .next()
        .map(|to| {
            format!(
                ". Only in an emergency, {annotation}: {FORCE_PREFIX}{} acts at once (a Warning event names who set it; docs/root-rotation.md)",
                to.as_str()
            )
        })
        .unwrap_or_default();
    format!(
        "the annotation {annotation}: {} was refused and removed: {} may end no earlier than {next} (status.rootRotation.nextPhaseAt: its delay counts from {}). Set it again from {next} on{force}",
        phase.as_str(),
        phase.as_str(),
        status.phase_started_at
    )
}

/// One reconcile of a rotation in progress towards the source's root.
struct Step<'a> {
    inputs: &'a Inputs<'a>,
    status: &'a RootRotationStatus,
    spec: &'a RootRotation,
    delays: Delays,
    /// The old roots `root-cert.pem` still holds.
    old_certs: Vec<Certificate>,
    /// What the advance annotation does in this phase.
    advance: Judged,
}

impl Step<'_> {
    fn new_root(&self) -> &Certificate {
        &self.inputs.source.root
    }

    /// Old and new roots, while both are trusted: what `publishRoot` shows.
    fn both_roots(&self) -> Vec<Certificate> {
        self.old_certs
            .iter()
            .cloned()
            .chain([self.new_root().clone()])
            .collect()
    }

    /// A decision that stays in the phase (the bundle as given), unless it moves on below.
    fn stay(&self, bundle: Bundle) -> Decision {
        Decision::new(bundle, Some(self.status.clone()))
    }

    fn advance_now(&self) -> bool {
        matches!(self.advance, Judged::Now { .. })
    }

    /// The phase moves on now: its annotation, or (Automatic) its delay is over.
    fn due(&self, d: &Decision) -> bool {
        self.advance_now()
            || (self.spec.mode == RotationMode::Automatic
                && d.status
                    .as_ref()
                    .and_then(|s| s.next_phase_at.as_deref())
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| self.inputs.now >= t))
    }

    /// Moves `d` into `phase` with `message`, writing `bundle`. A forced move says so in the
    /// history (which outlives the event) and raises a Warning naming who set it.
    fn enter(
        &self,
        mut d: Decision,
        phase: RotationPhase,
        next: Option<Timestamp>,
        message: String,
        bundle: Bundle,
    ) -> Decision {
        // Only the move the force named is a forced one (not a rollback that happens anyway).
        let message = match self.advance {
            Judged::Now { forced: true } if self.status.phase.next() == Some(phase) => {
                let note = self.forced_note(phase);
                d.forced_advance = Some(format!("{note}: {message}"));
                format!("{note}: {message}")
            }
            _ => message,
        };
        d.bundle = bundle;
        d.status = Some(enter(self.status, phase, next, &message, self.inputs.now));
        d.transition = Some((phase, message));
        d.consume_advance = self.advance_now();
        d
    }

    /// "forced by ...": the annotation, who set it, and whether it skipped part of the delay.
    fn forced_note(&self, to: RotationPhase) -> String {
        let when = match self.status.next_phase_at.as_deref() {
            Some(next) if next.parse::<Timestamp>().is_ok_and(|t| self.inputs.now < t) => {
                format!("at once, before its delay ended at {next}")
            }
            _ => "after its delay had passed".to_string(),
        };
        format!(
            "{} ended {when}, forced by the annotation {}: {FORCE_PREFIX}{} set by field manager {} (the emergency path)",
            self.status.phase.as_str(),
            crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION,
            to.as_str(),
            self.inputs.advance_set_by.unwrap_or("unknown")
        )
    }

    /// An advance refused as early: announced, its annotation removed, and the condition says
    /// when the phase may end — kept until then, so it does not vanish with the annotation.
    fn early_advance_shown(&self, mut d: Decision) -> Decision {
        let holding = d.transition.is_none()
            && d.condition
                .as_ref()
                .is_some_and(|(r, _)| [reason::WAITING, reason::WAITING_FOR_ADVANCE].contains(r));
        match &self.advance {
            Judged::Early(message) => {
                d.refused_advance = Some(message.clone());
                if holding {
                    d.condition = Some((reason::ADVANCE_REFUSED, message.clone()));
                }
            }
            _ => {
                let shown = self
                    .inputs
                    .previous_condition
                    .filter(|(r, _)| *r == reason::ADVANCE_REFUSED);
                if let Some((_, message)) = shown.filter(|_| holding && !self.delay_passed()) {
                    d.condition = Some((reason::ADVANCE_REFUSED, message.to_string()));
                }
            }
        }
        d
    }

    fn delay_passed(&self) -> bool {
        self.status
            .next_phase_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .is_none_or(|t| self.inputs.now >= t)
    }

    /// In AddingNewRoot istiod still signs with the old intermediate, and a Manual or paused
    /// rotation may stay there for as long as nobody acts: the switch must come a drain before
    /// the old intermediate expires. From a drain before that deadline on, the condition says
    /// by when to act (a Warning once); before, the decision looks again then. An Automatic
    /// rotation that switches in time by itself says nothing.
    fn old_intermediate_watched(&self, mut d: Decision, current: &BundleContents) -> Decision {
        let in_adding = d
            .status
            .as_ref()
            .is_some_and(|s| s.phase == RotationPhase::AddingNewRoot);
        if !in_adding || d.transition.is_some() || current.anchor == *self.new_root() {
            return d;
        }
        let old = &current.intermediate;
        let drain = self.delays.workload_drain;
        let act_by = old.not_after() - drain;
        let next = self
            .status
            .next_phase_at
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok());
        let switches_in_time =
            self.spec.mode == RotationMode::Automatic && !self.spec.paused && next.is_some_and(|next| next <= act_by);
        if switches_in_time {
            return d;
        }
        let warn_from = act_by - drain;
        if self.inputs.now < warn_from {
            d.requeue_at = Some(d.requeue_at.map_or(warn_from, |t| t.min(warn_from)));
            return d;
        }
        let how = match (self.spec.paused, self.spec.mode) {
            (true, _) => "set spec.rootRotation.paused: false".to_string(),
            (false, RotationMode::Manual) => format!(
                "advance it ({}: AddingNewRoot once its delay has passed, or {FORCE_PREFIX}SwitchingIntermediate)",
                crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION
            ),
            (false, RotationMode::Automatic) => "let its delay pass or advance it".to_string(),
        };
        let message = format!(
            "the old intermediate {} (SHA-256 {}), which istiod signs with until the switch, expires at {}; the workload certificates it signs must stay valid through the drain ({}), so the rotation must leave AddingNewRoot by {act_by}: {how}, or roll back (put the source back on the old root) and renew the intermediate first",
            old.subject(),
            old.fingerprint(),
            old.not_after(),
            crate::duration::format_go_duration(drain.unsigned_abs())
        );
        let shown = self
            .inputs
            .previous_condition
            .is_some_and(|(r, _)| r == reason::OLD_INTERMEDIATE_EXPIRING);
        if !shown {
            d.expiring_warning = Some(message.clone());
        }
        d.condition = Some((reason::OLD_INTERMEDIATE_EXPIRING, message));
        d
    }

    /// Holds a cut while the trust anchors cannot be read or checked: the root to cut might be
    /// a peer's anchor, which must stay. `None` when the anchors are known.
    fn held_cut(&self, what: &str) -> Option<Decision> {
        let Err(problem) = self.inputs.anchors else {
            return None;
        };
        let phase = self.status.phase;
        let message = format!(
            "{what} is held in {}: the trust anchors cannot be read or checked ({}: {}), and a root that is also a trust anchor must stay in root-cert.pem. Fix the anchor (or remove it from spec.trustAnchors); the rotation goes on once every anchor reads and checks",
            phase.as_str(),
            problem.reason,
            problem.message
        );
        Some(self.hold_cut(message))
    }

    /// Stays in the phase with the target as it is, `CutHeld` saying `message`; an advance
    /// asked for meanwhile is refused with it. What holds it is watched; the requeue is the
    /// backstop.
    fn hold_cut(&self, message: String) -> Decision {
        let phase = self.status.phase;
        let mut d = self.stay(hold_bundle(phase, self.inputs.target));
        if phase != RotationPhase::RemovingOldRoot {
            d.published_roots = Some(self.both_roots());
        }
        if self.advance_now() {
            d.refused_advance = Some(format!(
                "the annotation {}: {} was refused and removed: {message}",
                crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION,
                self.inputs.advance.unwrap_or_default()
            ));
        }
        d.condition = Some((reason::CUT_HELD, message));
        d.requeue_at = Some(self.inputs.now + SignedDuration::from_secs(30));
        d
    }

    /// Holds the cut while the bundle endpoint's own certificate (`tlsSecretName`, an SVID the
    /// user issued from the mesh) chains to an old root and not to the new one. A Web PKI
    /// certificate chains to neither and never holds anything.
    fn held_for_serving_certificate(&self) -> Option<Decision> {
        let chain = self.inputs.serving_certificate?;
        let top = chain.last()?;
        let chains_to = |root: &Certificate| top == root || top.is_signed_by(root);
        let old = self.old_certs.iter().find(|r| chains_to(r))?;
        if chain.iter().any(|c| chains_to_new(c, self.new_root())) {
            return None;
        }
        let leaf = &chain[0];
        let message = format!(
            "cutting the old root is held in {}: the bundle endpoint's certificate {} (spec.bundleEndpoint.tlsSecretName) chains to the old root {} only, and peers that follow the endpoint would refuse it once that root is cut. Re-issue it under the new root (renew the Certificate that writes the Secret); the rotation goes on once it chains to {}",
            self.status.phase.as_str(),
            leaf.subject(),
            old.fingerprint(),
            self.new_root().fingerprint()
        );
        Some(self.hold_cut(message))
    }

    /// The anchors' certificates, once known ([`Step::held_cut`] stops every cut before this).
    fn anchors(&self) -> &[Certificate] {
        self.inputs.anchors.unwrap_or(&[])
    }

    /// `root-cert.pem` as the target holds it, with the fingerprints `cut` cut off (byte-stable).
    fn cut(&self, keep: &[Certificate], cut: &BTreeSet<String>) -> (Vec<u8>, Vec<u8>) {
        let bytes = existing_root_cert(self.inputs.target).unwrap_or_default();
        let cut = assemble(Some(&bytes), keep, self.anchors(), cut).bytes;
        (bytes, cut)
    }

    fn paused(&self) -> Decision {
        let phase = self.status.phase;
        let mut d = self.stay(hold_bundle(phase, self.inputs.target));
        d.condition = Some((
            reason::PAUSED,
            format!(
                "paused in {} (spec.rootRotation.paused): nothing moves, cacerts is held as it is",
                phase.as_str()
            ),
        ));
        if phase != RotationPhase::RemovingOldRoot {
            d.published_roots = Some(self.both_roots());
        }
        d
    }

    /// Rollback before the switch: the new root is cut off again.
    fn roll_back(&self) -> Decision {
        if let Some(held) = self.held_cut("the rollback (cutting the new root off root-cert.pem)") {
            return held;
        }
        let new_fp: BTreeSet<String> = [self.status.new_root.clone()].into();
        let (_, cut) = self.cut(&self.old_certs, &new_fp);
        let message = format!(
            "rolled back: the source went back to the old root {} before the switch; the new root {} is cut off root-cert.pem again",
            self.inputs.source.root.fingerprint(),
            self.status.new_root
        );
        let bundle = Bundle::Write {
            signer: Signer::Source,
            root_cert: cut,
        };
        let mut d = self.enter(
            self.stay(Bundle::Ordinary),
            RotationPhase::RolledBack,
            None,
            message.clone(),
            bundle,
        );
        d.condition = Some((RotationPhase::RolledBack.as_str(), message));
        d
    }

    fn adding_new_root(&self, current: &BundleContents) -> Decision {
        let root_cert = append(existing_root_cert(self.inputs.target), &self.both_roots());
        let caught_up = current.anchor == *self.new_root();
        let mut d = self.stay(Bundle::Write {
            signer: Signer::Target,
            root_cert: root_cert.clone(),
        });
        d.published_roots = Some(self.both_roots());
        if caught_up || self.due(&d) {
            let message = if caught_up {
                "the target already holds the new intermediate (a write whose status update was lost): the drain delay counts from now".to_string()
            } else {
                format!(
                    "the new root has been trusted since {}; istiod now signs with the new intermediate, and the old root stays trusted while old workload certificates drain",
                    self.status.phase_started_at
                )
            };
            let next = Some(self.inputs.now + self.delays.workload_drain);
            let bundle = Bundle::Write {
                signer: Signer::Source,
                root_cert,
            };
            d = self.enter(d, RotationPhase::SwitchingIntermediate, next, message, bundle);
        }
        finish(d, self.spec, &self.delays, self.inputs)
    }

    fn switching_intermediate(&self) -> Decision {
        let old_fps: BTreeSet<String> = self.status.old_roots.iter().cloned().collect();
        let (bytes, cut) = self.cut(std::slice::from_ref(self.new_root()), &old_fps);
        let already_cut = self.old_certs.is_empty();
        let mut d = self.stay(Bundle::Write {
            signer: Signer::Source,
            root_cert: bytes,
        });
        d.published_roots = Some(self.both_roots());
        if already_cut || self.due(&d) {
            if let Some(held) = self.held_cut("cutting the old root").filter(|_| !already_cut) {
                return held;
            }
            if let Some(held) = self.held_for_serving_certificate().filter(|_| !already_cut) {
                return held;
            }
            let message = if already_cut {
                "root-cert.pem no longer holds the old root (a write whose status update was lost)".to_string()
            } else {
                format!(
                    "workload certificates of the old intermediate have drained since {}; the old root is cut off root-cert.pem",
                    self.status.phase_started_at
                )
            };
            let bundle = Bundle::Write {
                signer: Signer::Source,
                root_cert: cut,
            };
            d = self.enter(d, RotationPhase::RemovingOldRoot, None, message, bundle);
            d.published_roots = None;
        }
        finish(d, self.spec, &self.delays, self.inputs)
    }

    fn removing_old_root(&self) -> Decision {
        let old_fps: BTreeSet<String> = self.status.old_roots.iter().cloned().collect();
        let (bytes, cut) = self.cut(std::slice::from_ref(self.new_root()), &old_fps);
        let written = cut == bytes;
        let bundle = Bundle::Write {
            signer: Signer::Source,
            root_cert: cut,
        };
        if !written && let Some(held) = self.held_cut("cutting the old root") {
            return held;
        }
        let mut d = self.stay(bundle.clone());
        if written {
            let kept = self.old_certs.iter().any(|c| self.anchors().contains(c));
            let message = if kept {
                "completed: the old root stays in root-cert.pem only as a trust anchor (spec.trustAnchors)".to_string()
            } else {
                "completed: root-cert.pem holds the new root (and any trust anchors) only".to_string()
            };
            d = self.enter(d, RotationPhase::Completed, None, message, bundle);
        }
        finish(d, self.spec, &self.delays, self.inputs)
    }
}

/// Whether `c` is the new root or signed by it.
fn chains_to_new(c: &Certificate, new: &Certificate) -> bool {
    c == new || c.is_signed_by(new)
}

/// Fills in the condition and the requeue for the phase the decision ends in.
fn finish(mut d: Decision, spec: &RootRotation, delays: &Delays, inputs: &Inputs) -> Decision {
    let Some(status) = &d.status else { return d };
    let next = status
        .next_phase_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let phase = status.phase;
    let what_next = match phase {
        RotationPhase::AddingNewRoot => "the new intermediate is written",
        RotationPhase::SwitchingIntermediate => "the old root is cut off root-cert.pem",
        _ => "",
    };
    let (reason, message) = match (phase, next) {
        (RotationPhase::RemovingOldRoot, _) => (
            // The cut's own write brings the next reconcile; when it was written before (a
            // lost status update) nothing else would.
            {
                d.requeue_at = Some(inputs.now + SignedDuration::from_secs(1));
                phase.as_str()
            },
            "the old root is being cut off root-cert.pem; the rotation completes once that is written".to_string(),
        ),
        (_, Some(next)) if spec.mode == RotationMode::Automatic => {
            d.requeue_at = Some(next);
            (
                reason::WAITING,
                format!(
                    "in {} since {}; at {next} {what_next} (delays: trust propagation {}s{}, workload drain {}s)",
                    phase.as_str(),
                    status.phase_started_at,
                    delays.trust_propagation.as_secs(),
                    if delays.raised_for_peers {
                        ", three refresh hints of the bundle endpoint, so that peers fetch the new root before it is used"
                    } else {
                        ""
                    },
                    delays.workload_drain.as_secs()
                ),
            )
        }
        (_, Some(next)) => (
            reason::WAITING_FOR_ADVANCE,
            format!(
                "in {} since {} (Manual mode); {what_next} when the annotation {}: {} is set{}",
                phase.as_str(),
                status.phase_started_at,
                crate::api::istio_cacerts::ADVANCE_ROTATION_ANNOTATION,
                phase.as_str(),
                if inputs.now >= next {
                    " (its delay has passed)".to_string()
                } else {
                    format!(" (its delay ends at {next})")
                }
            ),
        ),
        _ => (
            phase.as_str(),
            status.history.last().map(|h| h.message.clone()).unwrap_or_default(),
        ),
    };
    d.condition = Some((reason, message));
    d
}

/// A phase that stays as it is (paused): the same intermediate and root-cert.pem as now.
fn hold_bundle(phase: RotationPhase, target: &Target) -> Bundle {
    let root_cert = existing_root_cert(target).unwrap_or_default();
    match phase {
        RotationPhase::AddingNewRoot => Bundle::Write {
            signer: Signer::Target,
            root_cert,
        },
        _ => Bundle::Write {
            signer: Signer::Source,
            root_cert,
        },
    }
}

fn refused(problem: Problem, status: Option<RootRotationStatus>) -> Decision {
    let mut d = Decision::new(Bundle::Refused(problem.clone()), status);
    d.condition = Some((problem.reason, problem.message));
    d
}

fn paused_problem(when: &str) -> Problem {
    Problem {
        reason: reason::PAUSED,
        message: format!(
            "a new root waits: the rotation is paused {when} (spec.rootRotation.paused); cacerts is left as it is"
        ),
    }
}

/// The status entering `phase` now.
fn enter(
    status: &RootRotationStatus,
    phase: RotationPhase,
    next: Option<Timestamp>,
    message: &str,
    now: Timestamp,
) -> RootRotationStatus {
    let mut history = status.history.clone();
    history.push(RotationHistoryEntry {
        phase,
        at: now.to_string(),
        message: message.to_string(),
    });
    RootRotationStatus {
        phase,
        old_roots: status.old_roots.clone(),
        new_root: status.new_root.clone(),
        phase_started_at: now.to_string(),
        next_phase_at: next.map(|t| t.to_string()),
        history,
    }
}

/// `existing` with every certificate of `roots` it lacks appended, byte-stable.
fn append(existing: Option<Vec<u8>>, roots: &[Certificate]) -> Vec<u8> {
    assemble(existing.as_deref(), roots, &[], &BTreeSet::new()).bytes
}

fn existing_root_cert(target: &Target) -> Option<Vec<u8>> {
    match target {
        Target::Present { data, .. } => data.get(ROOT_CERT).cloned(),
        Target::Absent => None,
    }
}

fn current_bundle(target: &Target, now: Timestamp) -> Option<BundleContents> {
    match target {
        Target::Present { data, .. } if !data.contains_key(cacerts::ISTIO_GENERATED) => verify_bundle(data, now).ok(),
        _ => None,
    }
}

/// The delays of the spec.
struct Delays {
    trust_propagation: SignedDuration,
    workload_drain: SignedDuration,
    /// The trust propagation delay was raised to three bundle endpoint refresh hints.
    raised_for_peers: bool,
}

impl Delays {
    /// The spec's delays, each a Go duration no shorter than the controller's flags allow.
    fn of(spec: &RootRotation, limits: &Limits, refresh_hint: Option<SignedDuration>) -> Result<Self, Problem> {
        let parse = |field: &str, value: &str| {
            parse_go_duration(value)
                .ok()
                .and_then(|d| SignedDuration::try_from(d).ok())
                .ok_or_else(|| Problem {
                    reason: reason::INVALID_ROTATION_SPEC,
                    message: format!(
                        "spec.rootRotation.{field} {value:?} is not a Go duration (such as \"1h\" or \"25h\"); the rotation holds until it is fixed"
                    ),
                })
        };
        let mut delays = Self {
            trust_propagation: parse("trustPropagationDelay", &spec.trust_propagation_delay)?,
            workload_drain: parse("workloadDrainDelay", &spec.workload_drain_delay)?,
            raised_for_peers: false,
        };
        let go = crate::duration::format_go_duration;
        let too_short = |field: &str, value: &str, minimum: std::time::Duration, why: String| Problem {
            reason: reason::DELAY_TOO_SHORT,
            message: format!(
                "spec.rootRotation.{field} {value:?} is shorter than the minimum {}: {why}; the rotation does not start or advance until {field} is at least {} (or the controller runs with lower flags)",
                go(minimum),
                go(minimum)
            ),
        };
        let minimum = limits.min_workload_drain_delay();
        if delays.workload_drain.unsigned_abs() < minimum || delays.workload_drain.is_negative() {
            return Err(too_short(
                "workloadDrainDelay",
                &spec.workload_drain_delay,
                minimum,
                format!(
                    "--workload-cert-ttl ({}, istiod's workload certificate lifetime) plus --clock-skew-allowance ({}), so that no workload certificate of the old intermediate is live when the old root is cut",
                    go(limits.workload_cert_ttl),
                    go(limits.clock_skew_allowance)
                ),
            ));
        }
        let minimum = limits.min_trust_propagation_delay;
        if delays.trust_propagation.unsigned_abs() < minimum || delays.trust_propagation.is_negative() {
            return Err(too_short(
                "trustPropagationDelay",
                &spec.trust_propagation_delay,
                minimum,
                format!(
                    "--min-trust-propagation-delay ({}), so that proxies and peers trust the new root before anything is signed under it",
                    go(minimum)
                ),
            ));
        }
        if let Some(three_hints) = refresh_hint.and_then(|h| h.checked_mul(3))
            && three_hints > delays.trust_propagation
        {
            delays.trust_propagation = three_hints;
            delays.raised_for_peers = true;
        }
        Ok(delays)
    }
}

/// A rotation moves only to the root `spec.rootRotation.expectedNewRoot` pins: anyone who can
/// change the istiod Certificate's issuer (or delete a bootstrapped root's Secret, which is
/// then re-created with a new key) would otherwise move the whole mesh to a root of their
/// choosing. The pin is compared case-insensitively with the fingerprint as status shows it.
fn approved(new: &Certificate, spec: &RootRotation, inputs: &Inputs) -> Result<(), Problem> {
    let found = new.fingerprint();
    let pin = spec
        .expected_new_root
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty());
    if pin.is_some_and(|p| p.eq_ignore_ascii_case(&found)) {
        return Ok(());
    }
    let what = match pin {
        None => "is not approved: spec.rootRotation.expectedNewRoot is not set".to_string(),
        Some(pinned) => format!("is not approved: spec.rootRotation.expectedNewRoot pins {pinned}, found {found}"),
    };
    Err(Problem {
        reason: reason::NEW_ROOT_NOT_APPROVED,
        message: format!(
            "new root {} (SHA-256 {found}) {what}; the rotation does not start and cacerts is left as it is. If this is the root the mesh should move to, approve it: meshca rotation approve --context <context> --namespace {} --name {} --fingerprint {found} (or set spec.rootRotation.expectedNewRoot: {found})",
            new.subject(),
            inputs.namespace,
            inputs.name,
        ),
    })
}

/// A new root must have a strong key, be self-signed, be valid now, outlive the old one, and
/// the source's intermediate must verify against it as istiod would.
pub fn check_new_root(source: &SourceBundle, old: &Certificate, now: Timestamp) -> Result<(), Problem> {
    let new = &source.root;
    let who = format!("new root {} (SHA-256 {})", new.subject(), new.fingerprint());
    let refuse = |what: String| {
        Err(Problem {
            reason: reason::NEW_ROOT_REFUSED,
            message: format!("{who} {what}; the rotation does not start and cacerts is left as it is"),
        })
    };
    // First the key: a weak one is refused as such (our verifier cannot check a 1024-bit RSA
    // signature, which would otherwise read as "not self-signed").
    if let Err(weak) = crate::pki::strength::check_key(&new.public_key_info(), "its") {
        return refuse(format!(
            "is too weak to rotate to: {weak}. Issue a new root with a strong key and point the source's Certificate at it"
        ));
    }
    if !new.is_self_signed() {
        return refuse(format!(
            "is not self-signed (issued by {}): the last certificate of the source's chain must be a root that signs itself. Make the issuer's CA a self-signed root (or put the root in the source's ca.crt)",
            new.issuer()
        ));
    }
    if now > new.not_after() {
        return refuse(format!("expired at {}", new.not_after()));
    }
    if now < new.not_before() {
        return refuse(format!("is not valid before {}", new.not_before()));
    }
    if new.not_after() < old.not_after() {
        return refuse(format!(
            "expires at {}, before the old root {} (at {}): a rotation must move to a root that outlives the one it replaces",
            new.not_after(),
            old.fingerprint(),
            old.not_after()
        ));
    }
    let mut chain = source.intermediate.to_pem();
    for c in &source.intermediates {
        chain.push_str(&c.to_pem());
    }
    chain.push_str(&new.to_pem());
    let data: super::secret_data::SecretData = [
        (CA_CERT.to_string(), source.intermediate.to_pem().into_bytes()),
        (CA_KEY.to_string(), source.key_pem.to_vec()),
        (CERT_CHAIN.to_string(), chain.into_bytes()),
        (ROOT_CERT.to_string(), new.to_pem().into_bytes()),
    ]
    .into();
    if let Err(problem) = verify_bundle(&data, now) {
        return refuse(format!(
            "does not verify the source's new intermediate ({}: {})",
            problem.reason, problem.message
        ));
    }
    Ok(())
}

/// The old intermediate as it is in the target, as a source to plan from: written again with
/// the new `root-cert.pem`, it comes out byte for byte as it was.
pub fn kept_signer(target: &Target, now: Timestamp) -> Option<SourceBundle> {
    let Target::Present { data, .. } = target else {
        return None;
    };
    let contents = verify_bundle(data, now).ok()?;
    let intermediates = contents
        .chain
        .iter()
        .skip(1)
        .filter(|c| **c != contents.anchor)
        .cloned()
        .collect();
    Some(SourceBundle {
        intermediate: contents.intermediate,
        intermediates,
        key_pem: zeroize::Zeroizing::new(data.get(CA_KEY)?.clone()),
        root: contents.anchor,
    })
}

/// The plan for a decision's bundle: the ordinary plan, a refusal, or the chosen intermediate
/// with the decided `root-cert.pem`, judged against the real target (`changed` is false when
/// the target already holds exactly this, so a restart writes nothing).
pub fn plan(
    source: &SourceBundle,
    bundle: &Bundle,
    target: &Target,
    owner: &str,
    adopt_existing: &AdoptExisting,
    now: Timestamp,
) -> Result<cacerts::CacertsPlan, Problem> {
    let (signer, root_cert) = match bundle {
        Bundle::Ordinary => return cacerts::plan(source, target, owner, adopt_existing, now),
        Bundle::Refused(problem) => return Err(problem.clone()),
        Bundle::Write { signer, root_cert } => (signer, root_cert),
    };
    let Target::Present { data, owner: marked } = target else {
        return cacerts::plan(source, target, owner, adopt_existing, now);
    };
    let kept;
    let signer = match signer {
        Signer::Source => source,
        Signer::Target => {
            kept = kept_signer(target, now).ok_or_else(|| Problem {
                reason: cacerts::reason::INVALID_SOURCE,
                message: "the target no longer holds a loadable intermediate to keep while the new root propagates"
                    .to_string(),
            })?;
            &kept
        }
    };
    let mut with_root = data.clone();
    with_root.insert(ROOT_CERT.to_string(), root_cert.clone());
    let mut plan = cacerts::plan(
        signer,
        &Target::Present {
            data: with_root,
            owner: marked.clone(),
        },
        owner,
        adopt_existing,
        now,
    )?;
    plan.changed = plan.data != *data;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::istio::testing::{cross_signed_root, weak_root};
    use crate::pki::SigningKey;
    use crate::pki::policy::SigningPlan;
    use crate::pki::sign::{CaSigner, self_signed_root, sign_csr, tests::istiod_csr_with_key};

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// A root valid from a day before t0 for `days`.
    fn root(days: i64) -> (Certificate, SigningKey) {
        let spec = RootBootstrap {
            duration: format!("{}h", days * 24),
            ..Default::default()
        };
        self_signed_root(&spec, t0() - SignedDuration::from_hours(24)).unwrap()
    }

    fn source_under(root: &(Certificate, SigningKey)) -> SourceBundle {
        let (csr, key) = istiod_csr_with_key();
        let plan = SigningPlan {
            ca_path_len: Some(0),
            not_before: t0() - HOUR,
            not_after: t0() + SignedDuration::from_hours(24 * 90),
            requested: std::time::Duration::from_secs(1),
            clamped: None,
            name_constraints: None,
        };
        let intermediate = sign_csr(
            &csr,
            &plan,
            &CaSigner {
                certificate: &root.0,
                key: &root.1,
            },
        )
        .unwrap();
        SourceBundle {
            intermediate,
            intermediates: vec![],
            key_pem: zeroize::Zeroizing::new(key.to_pem().into_bytes()),
            root: root.0.clone(),
        }
    }

    fn spec(mode: RotationMode) -> RootRotation {
        RootRotation {
            multi_root_mesh_enabled: true,
            trust_propagation_delay: "1h".into(),
            workload_drain_delay: "25h".into(),
            mode,
            paused: false,
            expected_new_root: None,
        }
    }

    /// The rotation under test: the old and new PKI, the target as istiod sees it, the status.
    struct World {
        old: SourceBundle,
        new: SourceBundle,
        target: Target,
        status: Option<RootRotationStatus>,
        spec: RootRotation,
        writes: usize,
        files: Vec<Vec<u8>>,
        /// The RootRotation condition as the last reconcile left it.
        condition: Option<(&'static str, String)>,
        /// The trust anchors, or why they cannot be checked.
        anchors: Result<Vec<Certificate>, Problem>,
        /// The field manager that set the advance annotation.
        set_by: Option<String>,
        limits: Limits,
        /// The bundle endpoint's refresh hint, when this cluster serves one.
        bundle_refresh_hint: Option<SignedDuration>,
        /// The bundle endpoint's `tlsSecretName` chain.
        serving_certificate: Option<Vec<Certificate>>,
    }

    impl World {
        fn new(mode: RotationMode) -> Self {
            Self::with_pki(mode, source_under(&root(365)), source_under(&root(730)))
        }

        /// A world whose old and new sources are these.
        fn with_pki(mode: RotationMode, old: SourceBundle, new: SourceBundle) -> Self {
            let target = Target::Present {
                data: cacerts::plan(&old, &Target::Absent, "mesh", &AdoptExisting::Never, t0())
                    .unwrap()
                    .data,
                owner: Some("mesh".into()),
            };
            // The new root is approved (spec.rootRotation.expectedNewRoot).
            let spec = RootRotation {
                expected_new_root: Some(new.root.fingerprint()),
                ..spec(mode)
            };
            let mut w = Self {
                old,
                new,
                target,
                status: None,
                spec,
                writes: 0,
                files: vec![],
                condition: None,
                anchors: Ok(vec![]),
                set_by: None,
                limits: Limits::default(),
                bundle_refresh_hint: None,
                serving_certificate: None,
            };
            w.files.push(w.root_cert());
            w
        }

        fn data(&self) -> &BTreeMap<String, Vec<u8>> {
            match &self.target {
                Target::Present { data, .. } => data,
                Target::Absent => unreachable!(),
            }
        }

        fn root_cert(&self) -> Vec<u8> {
            self.data()[ROOT_CERT].clone()
        }

        fn signing_root(&self, now: Timestamp) -> Certificate {
            verify_bundle(self.data(), now).unwrap().anchor
        }

        /// One reconcile with `source` at `now`, carried out as the controller does: the plan
        /// is written (when changed), then the status.
        fn reconcile(&mut self, source_is_new: bool, advance: Option<&str>, now: Timestamp) -> Decision {
            let source = if source_is_new { &self.new } else { &self.old };
            let d = decide(&Inputs {
                namespace: "istio-system",
                name: "mesh",
                spec: Some(&self.spec),
                status: self.status.as_ref(),
                advance,
                source,
                target: &self.target,
                anchors: self.anchors.as_ref().map(Vec::as_slice),
                advance_set_by: self.set_by.as_deref(),
                limits: self.limits,
                bundle_refresh_hint: self.bundle_refresh_hint,
                serving_certificate: self.serving_certificate.as_deref(),
                previous_condition: self.condition.as_ref().map(|(r, m)| (*r, m.as_str())),
                now,
            });
            if let Ok(plan) = plan(source, &d.bundle, &self.target, "mesh", &AdoptExisting::Never, now) {
                if plan.changed {
                    self.writes += 1;
                    self.target = Target::Present {
                        data: plan.data,
                        owner: Some("mesh".into()),
                    };
                    let file = self.root_cert();
                    let last = self.files.last().unwrap();
                    assert!(
                        contains(&file, last) || contains(last, &file),
                        "root-cert.pem is neither a byte superset nor subset of the one before"
                    );
                    self.files.push(file);
                }
                self.status = d.status.clone();
                if d.condition.is_some() {
                    self.condition = d.condition.clone();
                }
            }
            d
        }

        fn phase(&self) -> Option<RotationPhase> {
            self.status.as_ref().map(|s| s.phase)
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn a_bundle_endpoint_certificate_under_the_old_root_holds_the_cut_until_it_is_reissued() {
        use crate::pki::sign::svid;
        let id = "spiffe://cluster.local/meshca/bundle-endpoint";
        let (nb, na) = (t0() - HOUR, t0() + SignedDuration::from_hours(24 * 30));
        let under = |source: &SourceBundle| {
            let key = SigningKey::from_pem(&source.key_pem).unwrap();
            let ca = CaSigner {
                certificate: &source.intermediate,
                key: &key,
            };
            vec![svid(&ca, id, nb, na).unwrap().0, source.intermediate.clone()]
        };
        let drained = t0() + HOUR * 27;
        let w = World::new(RotationMode::Automatic);
        // Rows run against one world each, sharing its PKI.
        for (case, chain, phase, held) in [
            ("no tlsSecretName", None, RotationPhase::RemovingOldRoot, false),
            (
                "an SVID under the old root",
                Some(under(&w.old)),
                RotationPhase::SwitchingIntermediate,
                true,
            ),
            (
                "re-issued under the new root",
                Some(under(&w.new)),
                RotationPhase::RemovingOldRoot,
                false,
            ),
            (
                "a Web PKI certificate",
                Some(vec![root(365).0]),
                RotationPhase::RemovingOldRoot,
                false,
            ),
        ] {
            let copy = |s: &SourceBundle| SourceBundle {
                intermediate: s.intermediate.clone(),
                intermediates: s.intermediates.clone(),
                key_pem: zeroize::Zeroizing::new(s.key_pem.to_vec()),
                root: s.root.clone(),
            };
            let mut w = World::with_pki(RotationMode::Automatic, copy(&w.old), copy(&w.new));
            w.serving_certificate = chain;
            w.reconcile(true, None, t0());
            w.reconcile(true, None, t0() + HOUR);
            let d = w.reconcile(true, None, drained);
            assert_eq!(d.status.as_ref().map(|s| s.phase), Some(phase), "{case}");
            let condition = d.condition.clone().unwrap_or((reason::WAITING, String::new()));
            assert_eq!(condition.0 == reason::CUT_HELD, held, "{case}: {condition:?}");
            if held {
                assert!(
                    condition.1.contains("Re-issue it under the new root"),
                    "{case}: {}",
                    condition.1
                );
            }
        }
    }

    #[test]
    fn a_bundle_endpoint_keeps_the_new_root_published_for_three_refresh_hints_before_it_signs() {
        // (refresh hint, when the switch is due, whether the condition names the hints)
        let cases = [
            (None, t0() + HOUR, false),
            // Three hints within the delay: the delay rules.
            (Some(SignedDuration::from_mins(5)), t0() + HOUR, false),
            (Some(SignedDuration::from_mins(30)), t0() + HOUR + HOUR / 2, true),
        ];
        for (hint, due, named) in cases {
            let mut w = World::new(RotationMode::Automatic);
            w.bundle_refresh_hint = hint;
            let d = w.reconcile(true, None, t0());
            let status = d.status.clone().expect("started");
            assert_eq!(status.phase, RotationPhase::AddingNewRoot, "{hint:?}");
            assert_eq!(status.next_phase_at, Some(due.to_string()), "{hint:?}");
            let d = w.reconcile(true, None, t0() + SignedDuration::from_mins(1));
            let message = d.condition.map(|(_, m)| m).unwrap_or_default();
            assert_eq!(message.contains("three refresh hints"), named, "{hint:?}: {message}");
            let d = w.reconcile(true, None, due - SignedDuration::from_secs(1));
            assert_eq!(
                d.status.map(|s| s.phase),
                Some(RotationPhase::AddingNewRoot),
                "{hint:?}: not before"
            );
            let d = w.reconcile(true, None, due);
            assert_eq!(
                d.status.map(|s| s.phase),
                Some(RotationPhase::SwitchingIntermediate),
                "{hint:?}: at due"
            );
        }
    }

    #[test]
    fn an_automatic_rotation_runs_every_phase_in_three_writes_and_never_breaks_root_cert_pem() {
        let mut w = World::new(RotationMode::Automatic);
        let (old_root, new_root) = (w.old.root.clone(), w.new.root.clone());
        // (case, source is new, at, expected phase, expected signing root)
        let steps: Vec<(&str, bool, Timestamp, RotationPhase, &Certificate)> = vec![
            (
                "a new root starts the rotation; the old intermediate stays",
                true,
                t0(),
                RotationPhase::AddingNewRoot,
                &old_root,
            ),
            (
                "a restart in the delay changes nothing",
                true,
                t0() + HOUR / 2,
                RotationPhase::AddingNewRoot,
                &old_root,
            ),
            (
                "after the propagation delay the intermediate switches",
                true,
                t0() + HOUR,
                RotationPhase::SwitchingIntermediate,
                &new_root,
            ),
            (
                "a restart during the drain changes nothing",
                true,
                t0() + HOUR * 10,
                RotationPhase::SwitchingIntermediate,
                &new_root,
            ),
            (
                "after the drain the old root is cut",
                true,
                t0() + HOUR * 26,
                RotationPhase::RemovingOldRoot,
                &new_root,
            ),
            (
                "once the cut is written the rotation completes",
                true,
                t0() + HOUR * 26,
                RotationPhase::Completed,
                &new_root,
            ),
            (
                "completed, a reconcile writes nothing",
                true,
                t0() + HOUR * 30,
                RotationPhase::Completed,
                &new_root,
            ),
        ];
        for (case, new, at, phase, signing) in steps {
            w.reconcile(new, None, at);
            assert_eq!(w.phase(), Some(phase), "{case}");
            assert_eq!(&w.signing_root(at), signing, "{case}");
        }
        assert_eq!(w.writes, 3, "add root, switch intermediate, cut old root");
        assert_eq!(w.root_cert(), new_root.to_pem().into_bytes());
        let history: Vec<RotationPhase> = w.status.unwrap().history.iter().map(|h| h.phase).collect();
        assert_eq!(
            history,
            vec![
                RotationPhase::AddingNewRoot,
                RotationPhase::SwitchingIntermediate,
                RotationPhase::RemovingOldRoot,
                RotationPhase::Completed
            ]
        );
    }

    #[test]
    fn in_adding_new_root_the_old_intermediate_is_kept_byte_for_byte_and_the_new_root_appended() {
        let mut w = World::new(RotationMode::Automatic);
        let before = w.data().clone();
        let d = w.reconcile(true, None, t0());
        assert_eq!(d.transition.map(|t| t.0), Some(RotationPhase::AddingNewRoot));
        for key in [CA_CERT, CA_KEY, CERT_CHAIN] {
            assert_eq!(w.data()[key], before[key], "{key}");
        }
        let mut expected = before[ROOT_CERT].clone();
        expected.extend_from_slice(w.new.root.to_pem().as_bytes());
        assert_eq!(w.root_cert(), expected);
        assert_eq!(d.requeue_at, Some(t0() + HOUR));
        assert_eq!(d.published_roots, Some(vec![w.old.root.clone(), w.new.root.clone()]));
    }

    #[test]
    fn manual_mode_waits_for_the_annotation_naming_the_current_phase() {
        let mut w = World::new(RotationMode::Manual);
        w.reconcile(true, None, t0());
        // (case, annotation, expected phase afterwards, consumed, stale)
        let steps: Vec<(&str, Option<&str>, RotationPhase, bool, bool)> = vec![
            (
                "past the delay, nothing moves without being asked",
                None,
                RotationPhase::AddingNewRoot,
                false,
                false,
            ),
            (
                "an annotation naming a later phase is stale",
                Some("SwitchingIntermediate"),
                RotationPhase::AddingNewRoot,
                false,
                true,
            ),
            (
                "naming the current phase advances it once",
                Some("AddingNewRoot"),
                RotationPhase::SwitchingIntermediate,
                true,
                false,
            ),
            (
                "the same annotation again cannot skip a second phase",
                Some("AddingNewRoot"),
                RotationPhase::SwitchingIntermediate,
                false,
                true,
            ),
            (
                "garbage is stale too",
                Some("Faster"),
                RotationPhase::SwitchingIntermediate,
                false,
                true,
            ),
            (
                "the drain cannot be ended before its delay by a plain advance",
                Some("SwitchingIntermediate"),
                RotationPhase::SwitchingIntermediate,
                false,
                false,
            ),
            (
                "only the emergency value ends it early",
                Some("force-RemovingOldRoot"),
                RotationPhase::RemovingOldRoot,
                true,
                false,
            ),
        ];
        for (case, advance, phase, consumed, stale) in steps {
            let d = w.reconcile(true, advance, t0() + HOUR * 2);
            assert_eq!(w.phase(), Some(phase), "{case}");
            assert_eq!(d.consume_advance, consumed, "{case}");
            assert_eq!(d.stale_advance.is_some(), stale, "{case}");
        }
        let d = w.reconcile(true, None, t0() + HOUR * 2);
        assert_eq!(w.phase(), Some(RotationPhase::Completed));
        assert!(d.condition.is_some());
    }

    #[test]
    fn a_pause_holds_through_a_delay_and_resumes_when_lifted() {
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        w.spec.paused = true;
        let writes = w.writes;
        let d = w.reconcile(true, Some("AddingNewRoot"), t0() + HOUR * 5);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(w.writes, writes, "no write while paused");
        assert_eq!(d.condition.unwrap().0, reason::PAUSED);
        assert!(
            d.stale_advance.is_some(),
            "an advance while paused is not kept for later"
        );
        w.spec.paused = false;
        w.reconcile(true, None, t0() + HOUR * 5);
        assert_eq!(w.phase(), Some(RotationPhase::SwitchingIntermediate));
    }

    #[test]
    fn going_back_to_the_old_root_before_the_switch_rolls_back() {
        let mut w = World::new(RotationMode::Automatic);
        let original = w.root_cert();
        w.reconcile(true, None, t0());
        let d = w.reconcile(false, None, t0() + HOUR / 2);
        assert_eq!(w.phase(), Some(RotationPhase::RolledBack));
        assert_eq!(d.transition.unwrap().0, RotationPhase::RolledBack);
        assert_eq!(w.root_cert(), original, "the new root is cut off again");
        // Later reconciles under the old root are ordinary.
        let d = w.reconcile(false, None, t0() + HOUR * 2);
        assert_eq!(d.bundle, Bundle::Ordinary);
    }

    #[test]
    fn after_the_switch_going_back_is_a_new_rotation() {
        let mut w = World::new(RotationMode::Automatic);
        // Going back is accepted only to a root that outlives the current one: here both
        // expire at the same second.
        w.new = source_under(&root(365));
        w.spec.expected_new_root = Some(w.new.root.fingerprint());
        w.reconcile(true, None, t0());
        w.reconcile(true, None, t0() + HOUR);
        assert_eq!(w.phase(), Some(RotationPhase::SwitchingIntermediate));
        // Back to the longer-lived old root: a new rotation that starts by trusting it (it
        // already is, so root-cert.pem does not change) and keeps the current intermediate.
        let writes = w.writes;
        let d = w.reconcile(false, None, t0() + HOUR * 2);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(d.transition.unwrap().0, RotationPhase::AddingNewRoot);
        assert_eq!(w.writes, writes);
        assert_eq!(w.status.as_ref().unwrap().new_root, w.old.root.fingerprint());
    }

    #[test]
    fn unfit_new_roots_are_refused_and_nothing_is_written() {
        let old = source_under(&root(365));
        let target = Target::Present {
            data: cacerts::plan(&old, &Target::Absent, "mesh", &AdoptExisting::Never, t0())
                .unwrap()
                .data,
            owner: Some("mesh".into()),
        };
        let mut expired = source_under(&root(365));
        expired.root = self_signed_root(
            &RootBootstrap {
                duration: "24h".into(),
                ..Default::default()
            },
            t0() - SignedDuration::from_hours(240),
        )
        .unwrap()
        .0;
        let short = source_under(&root(30));
        let mut mismatched = source_under(&root(730));
        mismatched.root = root(730).0;
        let later = {
            let spec = RootBootstrap {
                duration: "20000h".into(),
                ..Default::default()
            };
            let r = self_signed_root(&spec, t0() + HOUR * 5).unwrap();
            let mut s = source_under(&root(730));
            s.root = r.0;
            s
        };
        let enabled = spec(RotationMode::Automatic);
        let good = source_under(&root(730));
        // Roots refused before the intermediate is looked at.
        let mut weak = source_under(&root(730));
        weak.root = weak_root().0;
        let mut not_self_signed = source_under(&root(730));
        not_self_signed.root = cross_signed_root(&root(730)).0;
        let pinned = |fingerprint: String| RootRotation {
            expected_new_root: Some(fingerprint),
            ..enabled.clone()
        };
        let approved = pinned(good.root.fingerprint().to_uppercase());
        let pinned_elsewhere = pinned(root(730).0.fingerprint());
        let weak_pinned = pinned(weak.root.fingerprint());
        let cross_pinned = pinned(not_self_signed.root.fingerprint());
        let disabled = RootRotation {
            multi_root_mesh_enabled: false,
            ..enabled.clone()
        };
        // (case, source, spec, now, expected reason, text in the message)
        type Case<'a> = (
            &'a str,
            &'a SourceBundle,
            Option<&'a RootRotation>,
            Timestamp,
            Option<&'a str>,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            (
                "not configured: the ordinary plan says RootChanged",
                &short,
                None,
                t0(),
                None,
                "",
            ),
            (
                "multi-root not confirmed",
                &short,
                Some(&disabled),
                t0(),
                Some(cacerts::reason::ROOT_CHANGED),
                "ISTIO_MULTIROOT_MESH",
            ),
            (
                "an expired new root",
                &expired,
                Some(&enabled),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "expired",
            ),
            (
                "a new root not valid yet",
                &later,
                Some(&enabled),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "not valid before",
            ),
            (
                "a new root expiring before the old",
                &short,
                Some(&enabled),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "before the old root",
            ),
            (
                "an intermediate the new root did not sign",
                &mismatched,
                Some(&enabled),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "does not verify",
            ),
            (
                "a new root with a weak key (P-521), even pinned",
                &weak,
                Some(&weak_pinned),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "too weak to rotate to",
            ),
            (
                "a new root that is not self-signed, even pinned",
                &not_self_signed,
                Some(&cross_pinned),
                t0(),
                Some(reason::NEW_ROOT_REFUSED),
                "is not self-signed",
            ),
            (
                "a fit new root, nothing pinned: the approving command is shown",
                &good,
                Some(&enabled),
                t0(),
                Some(reason::NEW_ROOT_NOT_APPROVED),
                "meshca rotation approve --context <context> --namespace istio-system --name mesh --fingerprint",
            ),
            (
                "a fit new root, another pinned: pinned X, found Y",
                &good,
                Some(&pinned_elsewhere),
                t0(),
                Some(reason::NEW_ROOT_NOT_APPROVED),
                "expectedNewRoot pins",
            ),
        ];
        for (case, source, spec, now, expected, text) in cases {
            let d = decide(&Inputs {
                namespace: "istio-system",
                name: "mesh",
                spec,
                status: None,
                advance: None,
                source,
                target: &target,
                anchors: Ok(&[]),
                advance_set_by: None,
                limits: Limits::default(),
                bundle_refresh_hint: None,
                serving_certificate: None,
                previous_condition: None,
                now,
            });
            assert_eq!(d.status, None, "{case}");
            match expected {
                None => assert_eq!(d.bundle, Bundle::Ordinary, "{case}"),
                Some(reason) => {
                    let Bundle::Refused(problem) = &d.bundle else {
                        panic!("{case}: {:?}", d.bundle)
                    };
                    assert_eq!(problem.reason, reason, "{case}");
                    assert!(problem.message.contains(text), "{case}: {}", problem.message);
                }
            }
        }
        // The pin, in capitals, approves the root status shows in lower case: the rotation starts.
        let d = decide(&Inputs {
            namespace: "istio-system",
            name: "mesh",
            spec: Some(&approved),
            status: None,
            advance: None,
            source: &good,
            target: &target,
            anchors: Ok(&[]),
            advance_set_by: None,
            limits: Limits::default(),
            bundle_refresh_hint: None,
            serving_certificate: None,
            previous_condition: None,
            now: t0(),
        });
        assert_eq!(d.status.map(|s| s.phase), Some(RotationPhase::AddingNewRoot));
        // Not configured: cacerts::plan refuses the new root as it always has.
        let err = plan(&short, &Bundle::Ordinary, &target, "mesh", &AdoptExisting::Never, t0()).unwrap_err();
        assert_eq!(err.reason, cacerts::reason::ROOT_CHANGED);
    }

    #[test]
    fn a_renewal_under_the_same_root_never_changes_root_cert_pem() {
        let old_pki = root(365);
        let new_pki = root(730);
        let mut w = World::new(RotationMode::Automatic);
        w.old = source_under(&old_pki);
        w.new = source_under(&new_pki);
        w.spec.expected_new_root = Some(new_pki.0.fingerprint());
        w.target = Target::Present {
            data: cacerts::plan(&w.old, &Target::Absent, "mesh", &AdoptExisting::Never, t0())
                .unwrap()
                .data,
            owner: Some("mesh".into()),
        };
        w.files = vec![w.root_cert()];
        let before = w.root_cert();
        // A fresh intermediate under the same root: an ordinary renewal.
        w.old = source_under(&old_pki);
        let d = w.reconcile(false, None, t0());
        assert_eq!(d.bundle, Bundle::Ordinary);
        assert_eq!(w.writes, 1, "the new intermediate is written");
        assert_eq!(w.root_cert(), before);
        // During a rotation, a renewal under the new root keeps root-cert.pem too.
        w.reconcile(true, None, t0());
        w.reconcile(true, None, t0() + HOUR);
        let during = w.root_cert();
        let writes = w.writes;
        w.new = source_under(&new_pki);
        w.reconcile(true, None, t0() + HOUR * 2);
        assert_eq!(w.writes, writes + 1, "the renewed intermediate is written");
        assert_eq!(w.root_cert(), during);
    }

    #[test]
    fn a_lost_status_update_is_caught_up_from_the_target_with_the_full_next_delay() {
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        let adding = w.status.clone();
        w.reconcile(true, None, t0() + HOUR);
        // The switch was written but its status update was lost.
        w.status = adding;
        let writes = w.writes;
        let d = w.reconcile(true, None, t0() + HOUR * 3);
        assert_eq!(w.phase(), Some(RotationPhase::SwitchingIntermediate));
        assert_eq!(w.writes, writes, "nothing written twice");
        assert_eq!(d.requeue_at, Some(t0() + HOUR * 3 + SignedDuration::from_hours(25)));
        // The very first status was lost too: the rotation is found from the target.
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        w.status = None;
        let writes = w.writes;
        w.reconcile(true, None, t0() + HOUR * 2);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(w.writes, writes);
    }

    #[test]
    fn an_old_root_that_is_also_a_trust_anchor_stays() {
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        w.reconcile(true, None, t0() + HOUR);
        let before = w.root_cert();
        let anchors = [w.old.root.clone()];
        let d = decide(&Inputs {
            namespace: "istio-system",
            name: "mesh",
            spec: Some(&w.spec),
            status: w.status.as_ref(),
            advance: None,
            source: &w.new,
            target: &w.target,
            anchors: Ok(&anchors),
            advance_set_by: None,
            limits: Limits::default(),
            bundle_refresh_hint: None,
            serving_certificate: None,
            previous_condition: None,
            now: t0() + HOUR * 30,
        });
        assert_eq!(d.status.unwrap().phase, RotationPhase::RemovingOldRoot);
        assert_eq!(
            d.bundle,
            Bundle::Write {
                signer: Signer::Source,
                root_cert: before
            }
        );
    }

    #[test]
    fn a_third_root_mid_rotation_is_refused() {
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        w.new = source_under(&root(900));
        let writes = w.writes;
        let d = w.reconcile(true, None, t0() + HOUR * 2);
        let Bundle::Refused(problem) = d.bundle else { panic!() };
        assert_eq!(problem.reason, reason::ROTATION_IN_PROGRESS);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(w.writes, writes);
    }

    #[test]
    fn an_advance_acts_only_from_next_phase_at_unless_forced_and_a_force_names_its_setter() {
        let mut w = World::new(RotationMode::Manual);
        w.reconcile(true, None, t0());
        let next = (t0() + HOUR).to_string();
        let alice = "\"alice\" (Apply)";
        // (case, annotation, set by, at, phase afterwards, consumed, refused, forced, stale,
        //  RootRotation reason, text its message or the warning holds)
        type Row<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            Timestamp,
            RotationPhase,
            [bool; 4],
            &'a str,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (
                "a plain advance before nextPhaseAt is refused and removed, saying when",
                Some("AddingNewRoot"),
                None,
                t0() + HOUR / 2,
                RotationPhase::AddingNewRoot,
                [false, true, false, false],
                reason::ADVANCE_REFUSED,
                &next,
            ),
            (
                "the refusal stays shown once the annotation is gone, until the delay ends",
                None,
                None,
                t0() + HOUR / 2 + SignedDuration::from_mins(5),
                RotationPhase::AddingNewRoot,
                [false, false, false, false],
                reason::ADVANCE_REFUSED,
                "force-SwitchingIntermediate",
            ),
            (
                "force names the phase it moves to: naming the current one is stale",
                Some("force-AddingNewRoot"),
                None,
                t0() + HOUR / 2 + SignedDuration::from_mins(10),
                RotationPhase::AddingNewRoot,
                [false, false, false, true],
                reason::ADVANCE_REFUSED,
                "",
            ),
            (
                "force-SwitchingIntermediate moves at once and names who set it",
                Some("force-SwitchingIntermediate"),
                Some(alice),
                t0() + HOUR / 2 + SignedDuration::from_mins(15),
                RotationPhase::SwitchingIntermediate,
                [true, false, true, false],
                reason::WAITING_FOR_ADVANCE,
                alice,
            ),
            (
                "a plain advance of the drain before its delay is refused",
                Some("SwitchingIntermediate"),
                None,
                t0() + HOUR * 2,
                RotationPhase::SwitchingIntermediate,
                [false, true, false, false],
                reason::ADVANCE_REFUSED,
                "force-RemovingOldRoot",
            ),
            (
                "a force whose setter no manager owns names nobody",
                Some("force-RemovingOldRoot"),
                None,
                t0() + HOUR * 3,
                RotationPhase::RemovingOldRoot,
                [true, false, true, false],
                RotationPhase::RemovingOldRoot.as_str(),
                "field manager unknown",
            ),
        ];
        for (case, advance, set_by, at, phase, [consumed, refused, forced, stale], reason, text) in rows {
            w.set_by = set_by.map(str::to_string);
            let d = w.reconcile(true, advance, at);
            assert_eq!(w.phase(), Some(phase), "{case}");
            assert_eq!(
                [
                    d.consume_advance,
                    d.refused_advance.is_some(),
                    d.forced_advance.is_some(),
                    d.stale_advance.is_some()
                ],
                [consumed, refused, forced, stale],
                "{case}: [consumed, refused, forced, stale]"
            );
            let (got, message) = w.condition.clone().unwrap();
            assert_eq!(got, reason, "{case}: {message}");
            let said = [Some(message), d.refused_advance, d.forced_advance]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" | ");
            assert!(said.contains(text), "{case}: {said}");
        }
        // The forced phase change is in the history, which outlives the event.
        let history = &w.status.as_ref().unwrap().history;
        assert!(history[1].message.contains(alice), "{history:?}");
        // In Automatic mode too, an early plain advance is refused.
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        let d = w.reconcile(true, Some("AddingNewRoot"), t0() + HOUR / 2);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert!(d.refused_advance.is_some() && !d.consume_advance);
        // Its delay over, the phase moves on by itself and the refusal is no longer shown.
        w.reconcile(true, None, t0() + HOUR);
        assert_eq!(w.phase(), Some(RotationPhase::SwitchingIntermediate));
        assert_eq!(w.condition.as_ref().unwrap().0, reason::WAITING);
    }

    #[test]
    fn delays_shorter_than_the_flags_allow_hold_the_rotation_and_name_field_minimum_and_flags() {
        let short = |trust: &str, drain: &str| RootRotation {
            trust_propagation_delay: trust.into(),
            workload_drain_delay: drain.into(),
            ..spec(RotationMode::Automatic)
        };
        let lowered = Limits {
            workload_cert_ttl: std::time::Duration::from_secs(1),
            clock_skew_allowance: std::time::Duration::ZERO,
            min_trust_propagation_delay: std::time::Duration::ZERO,
        };
        // (case, spec, limits, phase afterwards, refusal reason, texts the message holds)
        type Row<'a> = (
            &'a str,
            RootRotation,
            Limits,
            Option<RotationPhase>,
            Option<&'a str>,
            &'a [&'a str],
        );
        let rows: Vec<Row> = vec![
            (
                "a drain shorter than the workload certificate lifetime plus clock skew",
                short("1h", "24h"),
                Limits::default(),
                None,
                Some(reason::DELAY_TOO_SHORT),
                &[
                    "spec.rootRotation.workloadDrainDelay \"24h\"",
                    "minimum 24h5m",
                    "--workload-cert-ttl (24h",
                    "--clock-skew-allowance (5m)",
                ],
            ),
            (
                "a drain of a minute",
                short("1h", "1m"),
                Limits::default(),
                None,
                Some(reason::DELAY_TOO_SHORT),
                &["workloadDrainDelay \"1m\"", "24h5m"],
            ),
            (
                "a trust propagation delay under the minimum",
                short("30s", "25h"),
                Limits::default(),
                None,
                Some(reason::DELAY_TOO_SHORT),
                &[
                    "spec.rootRotation.trustPropagationDelay \"30s\"",
                    "minimum 1m",
                    "--min-trust-propagation-delay (1m)",
                ],
            ),
            (
                "zero delays",
                short("0s", "0s"),
                Limits::default(),
                None,
                Some(reason::DELAY_TOO_SHORT),
                &["workloadDrainDelay \"0s\""],
            ),
            (
                "exactly the minimums start",
                short("1m", "24h5m"),
                Limits::default(),
                Some(RotationPhase::AddingNewRoot),
                None,
                &[],
            ),
            (
                "lowered flags accept delays of seconds",
                short("6s", "8s"),
                lowered,
                Some(RotationPhase::AddingNewRoot),
                None,
                &[],
            ),
        ];
        for (case, spec, limits, phase, refusal, texts) in rows {
            let mut w = World::new(RotationMode::Automatic);
            (w.spec, w.limits) = (spec, limits);
            w.spec.expected_new_root = Some(w.new.root.fingerprint());
            let d = w.reconcile(true, None, t0());
            assert_eq!(w.phase(), phase, "{case}");
            match refusal {
                None => assert_eq!(w.writes, 1, "{case}"),
                Some(reason) => {
                    assert_eq!(w.writes, 0, "{case}: nothing written");
                    let Bundle::Refused(problem) = &d.bundle else {
                        panic!("{case}: {:?}", d.bundle)
                    };
                    assert_eq!(problem.reason, reason, "{case}");
                    for text in texts {
                        assert!(problem.message.contains(text), "{case}: {text} in {}", problem.message);
                    }
                }
            }
        }
        // Mid-rotation (the flags raised, or the spec lowered): held where it is, nothing written.
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        w.spec.workload_drain_delay = "1m".into();
        let writes = w.writes;
        let d = w.reconcile(true, None, t0() + HOUR * 2);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(w.writes, writes);
        assert_eq!(d.condition.unwrap().0, reason::DELAY_TOO_SHORT);
        // Without a rotation under way, the condition says so at once (nothing is refused).
        let mut w = World::new(RotationMode::Automatic);
        w.spec.workload_drain_delay = "1m".into();
        let d = w.reconcile(false, None, t0());
        assert_eq!(d.bundle, Bundle::Ordinary);
        assert_eq!(d.condition.unwrap().0, reason::DELAY_TOO_SHORT);
    }

    #[test]
    fn no_root_is_cut_while_the_trust_anchors_cannot_be_read_or_checked() {
        let unreadable = Problem {
            reason: crate::istio::trust_bundle::reason::TRUST_ANCHOR_NOT_FOUND,
            message: "trust anchor \"peer\": ConfigMap istio-system/peer not found".into(),
        };
        // The old root is also the peer's anchor: it must stay through the cut.
        let mut w = World::new(RotationMode::Automatic);
        w.anchors = Ok(vec![w.old.root.clone()]);
        w.reconcile(true, None, t0());
        w.reconcile(true, None, t0() + HOUR);
        assert_eq!(w.phase(), Some(RotationPhase::SwitchingIntermediate));
        let before = (w.root_cert(), w.writes);
        // (case, anchors readable, annotation, phase afterwards, RootRotation reason, refused)
        type Row<'a> = (&'a str, bool, Option<&'a str>, RotationPhase, &'a str, bool);
        let rows: Vec<Row> = vec![
            (
                "the drain is over but the anchors cannot be read: the cut is held",
                false,
                None,
                RotationPhase::SwitchingIntermediate,
                reason::CUT_HELD,
                false,
            ),
            (
                "not even a forced advance cuts while they cannot",
                false,
                Some("force-RemovingOldRoot"),
                RotationPhase::SwitchingIntermediate,
                reason::CUT_HELD,
                true,
            ),
            (
                "readable again, the cut goes on and keeps the anchor",
                true,
                None,
                RotationPhase::RemovingOldRoot,
                RotationPhase::RemovingOldRoot.as_str(),
                false,
            ),
            (
                "in RemovingOldRoot, unreadable anchors hold the completion too",
                false,
                None,
                RotationPhase::RemovingOldRoot,
                reason::CUT_HELD,
                false,
            ),
        ];
        let anchor = w.old.root.clone();
        for (case, readable, advance, phase, reason, refused) in rows {
            w.anchors = if readable {
                Ok(vec![anchor.clone()])
            } else {
                Err(unreadable.clone())
            };
            let d = w.reconcile(true, advance, t0() + HOUR * 30);
            assert_eq!(w.phase(), Some(phase), "{case}");
            let (got, message) = w.condition.clone().unwrap();
            assert_eq!(got, reason, "{case}: {message}");
            assert_eq!(d.refused_advance.is_some(), refused, "{case}");
            assert!(w.signing_root(t0() + HOUR * 30) == w.new.root, "{case}");
            if reason == reason::CUT_HELD {
                assert!(
                    message.contains("ConfigMap istio-system/peer not found"),
                    "{case}: {message}"
                );
            }
            assert_eq!(w.root_cert(), before.0, "{case}: the old root (an anchor) stays");
            assert_eq!(w.writes, before.1, "{case}: nothing written");
        }
        // Before the switch, a rollback's cut of the new root is held the same way.
        let mut w = World::new(RotationMode::Automatic);
        w.reconcile(true, None, t0());
        let grown = w.root_cert();
        w.anchors = Err(unreadable);
        let d = w.reconcile(false, None, t0() + HOUR / 2);
        assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot));
        assert_eq!(d.condition.unwrap().0, reason::CUT_HELD);
        assert_eq!(w.root_cert(), grown);
    }

    #[test]
    fn a_rotation_never_outlives_the_old_intermediate() {
        let day = SignedDuration::from_hours(24);
        // The old intermediate ends at t0 + 90 days; with 1h + 25h of delays, a rotation
        // started later than t0 + 88d 23h could not end before it.
        let mut w = World::new(RotationMode::Automatic);
        let d = w.reconcile(true, None, t0() + day * 89);
        let Bundle::Refused(problem) = &d.bundle else {
            panic!("{:?}", d.bundle)
        };
        assert_eq!(problem.reason, reason::OLD_INTERMEDIATE_EXPIRING);
        let expires = (t0() + day * 90).to_string();
        assert!(
            problem.message.contains(&format!("expires at {expires}")) && problem.message.contains("renew"),
            "{}",
            problem.message
        );
        assert_eq!((w.phase(), w.writes), (None, 0), "nothing starts, nothing is written");

        // Held in AddingNewRoot: the switch must come by a drain before the end (t0 + 89d - 1h),
        // said from a drain before that on (t0 + 88d - 2h), once as a Warning.
        let act_by = t0() + day * 90 - SignedDuration::from_hours(25);
        let warn_from = act_by - SignedDuration::from_hours(25);
        // (case, mode, paused, at, RootRotation reason, warning raised, requeue at)
        type Row<'a> = (&'a str, RotationMode, bool, Timestamp, &'a str, bool, Option<Timestamp>);
        let rows: Vec<Row> = vec![
            (
                "Manual, well before: it looks again when the warning is due",
                RotationMode::Manual,
                false,
                t0() + day * 70,
                reason::WAITING_FOR_ADVANCE,
                false,
                Some(warn_from),
            ),
            (
                "Manual, a drain before the deadline: it says by when to act",
                RotationMode::Manual,
                false,
                t0() + day * 88,
                reason::OLD_INTERMEDIATE_EXPIRING,
                true,
                None,
            ),
            (
                "paused, the same",
                RotationMode::Automatic,
                true,
                t0() + day * 88,
                reason::OLD_INTERMEDIATE_EXPIRING,
                true,
                None,
            ),
            (
                "Automatic and running: it switches in time by itself",
                RotationMode::Automatic,
                false,
                t0() + day * 60 + SignedDuration::from_mins(30),
                reason::WAITING,
                false,
                Some(t0() + day * 60 + HOUR),
            ),
        ];
        for (case, mode, paused, at, expected, warned, requeue) in rows {
            let mut w = World::new(mode);
            w.reconcile(true, None, t0() + day * 60);
            assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot), "{case}");
            w.spec.paused = paused;
            let d = w.reconcile(true, None, at);
            assert_eq!(w.phase(), Some(RotationPhase::AddingNewRoot), "{case}");
            let (got, message) = w.condition.clone().unwrap();
            assert_eq!(got, expected, "{case}: {message}");
            assert_eq!(d.expiring_warning.is_some(), warned, "{case}");
            if warned {
                assert!(message.contains(&format!("by {act_by}")), "{case}: {message}");
                // Once: the next look keeps the condition and raises no second Warning.
                let d = w.reconcile(true, None, at + HOUR);
                assert_eq!(w.condition.as_ref().unwrap().0, expected, "{case}");
                assert!(d.expiring_warning.is_none(), "{case}: warned twice");
            } else {
                assert_eq!(d.requeue_at, requeue, "{case}");
            }
        }
    }
}
