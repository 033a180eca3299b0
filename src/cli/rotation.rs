//! `meshca rotation`: a fleet's root rotation side by side, and the gate that moves every
//! cluster to the next phase together. Pure: the command reads every cluster, asks
//! [`plan_advance`], and writes only when it says go.
//!
//! The gate exists so that no cluster switches its intermediate before every cluster trusts
//! the new root, and no cluster cuts the old root before every cluster has drained: all
//! clusters must be in the same phase, in `Manual` mode, not paused, and past their delay.

use jiff::Timestamp;

use crate::api::istio_cacerts::{IstioCACerts, RotationMode, RotationPhase};

/// One cluster as read.
#[derive(Clone, Debug)]
pub struct ClusterRotation {
    pub context: String,
    pub istio_cacerts: IstioCACerts,
}

/// The phase after `phase`, for `--to` and for messages.
pub fn next_phase(phase: RotationPhase) -> Option<RotationPhase> {
    match phase {
        RotationPhase::AddingNewRoot => Some(RotationPhase::SwitchingIntermediate),
        RotationPhase::SwitchingIntermediate => Some(RotationPhase::RemovingOldRoot),
        RotationPhase::RemovingOldRoot => Some(RotationPhase::Completed),
        RotationPhase::Completed | RotationPhase::RolledBack => None,
    }
}

/// One row of `meshca rotation status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub context: String,
    pub phase: String,
    pub mode: String,
    pub since: String,
    pub next_phase_at: String,
    pub next_step: String,
}

/// Whether each federated peer trusts `cluster`'s new root yet, from what the peer's status
/// says its `root-cert.pem` holds: its own roots (`status.roots`: a peer sharing the root) and
/// its trust anchors (`status.trustAnchors`: a peer holding a copy). (peer context, trusts).
/// Empty when no rotation is under way.
pub fn peers_trust(cluster: &ClusterRotation, peers: &[ClusterRotation]) -> Vec<(String, bool)> {
    let Some(status) = rotating(cluster) else {
        return Vec::new();
    };
    let new_root = status.new_root.to_ascii_lowercase();
    peers
        .iter()
        .map(|peer| {
            let trusts = peer.istio_cacerts.status.as_ref().is_some_and(|s| {
                s.roots
                    .iter()
                    .chain(s.trust_anchors.iter().map(|a| &a.certificate))
                    .any(|r| r.fingerprint_sha256.eq_ignore_ascii_case(&new_root))
            });
            (peer.context.clone(), trusts)
        })
        .collect()
}

/// The rotation under way on `cluster`, if any.
fn rotating(cluster: &ClusterRotation) -> Option<&crate::api::istio_cacerts::RootRotationStatus> {
    cluster
        .istio_cacerts
        .status
        .as_ref()
        .and_then(|s| s.root_rotation.as_ref())
        .filter(|r| r.phase.in_progress())
}

/// Where a cluster stands and what comes next, in words; with `peers`, whether each trusts
/// the new root yet.
pub fn row(cluster: &ClusterRotation, peers: &[ClusterRotation], now: Timestamp) -> Row {
    let mut row = phase_row(cluster, now);
    let trust = peers_trust(cluster, peers);
    if !trust.is_empty() {
        let said: Vec<String> = trust
            .iter()
            .map(|(peer, trusts)| {
                if *trusts {
                    format!("{peer} trusts the new root")
                } else {
                    format!("{peer} does not trust the new root yet (meshca federate)")
                }
            })
            .collect();
        row.next_step = format!("{}; peers: {}", row.next_step, said.join(", "));
    }
    row
}

fn phase_row(cluster: &ClusterRotation, now: Timestamp) -> Row {
    let icc = &cluster.istio_cacerts;
    let spec = icc.spec.root_rotation.as_ref();
    let status = icc.status.as_ref().and_then(|s| s.root_rotation.as_ref());
    let mode = match spec {
        None => "-".to_string(),
        Some(s) if s.paused => format!("{:?} (paused)", s.mode),
        Some(s) => format!("{:?}", s.mode),
    };
    // A new root nobody approved: nothing moves until someone does, whatever an earlier
    // rotation's status says.
    if let Some(waiting) = icc.status.as_ref().and_then(|s| s.new_root_awaiting_approval.as_ref()) {
        return Row {
            context: cluster.context.clone(),
            phase: "NewRootNotApproved".into(),
            mode,
            since: "-".into(),
            next_phase_at: "-".into(),
            next_step: format!(
                "waiting for approval of new root {} (SHA-256 {}): meshca rotation approve --context {} --fingerprint {}",
                waiting.subject, waiting.fingerprint_sha256, cluster.context, waiting.fingerprint_sha256
            ),
        };
    }
    let Some(status) = status else {
        return Row {
            context: cluster.context.clone(),
            phase: "-".into(),
            mode,
            since: "-".into(),
            next_phase_at: "-".into(),
            next_step: if spec.is_some_and(|s| s.multi_root_mesh_enabled) {
                "none: a rotation starts when the source's intermediate chains to a new root".into()
            } else {
                "none: rotation is not enabled (spec.rootRotation.multiRootMeshEnabled)".into()
            },
        };
    };
    let next = status
        .next_phase_at
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok());
    let next_step = match (next_phase(status.phase), next) {
        (None, _) => "none: the rotation is over".to_string(),
        (Some(to), _) if status.phase == RotationPhase::RemovingOldRoot => {
            format!("{} by itself once the cut is written", to.as_str())
        }
        (Some(to), Some(at)) if spec.is_some_and(|s| s.paused) => {
            format!("{} after unpausing (delay ends {at})", to.as_str())
        }
        (Some(to), Some(at)) if now < at => format!("{} at {at} (delay running)", to.as_str()),
        (Some(to), _) if spec.is_some_and(|s| s.mode == RotationMode::Manual) => {
            format!("{}: ready, waiting for `meshca rotation advance`", to.as_str())
        }
        (Some(to), _) => format!("{} now", to.as_str()),
    };
    Row {
        context: cluster.context.clone(),
        phase: status.phase.as_str().to_string(),
        mode,
        since: status.phase_started_at.clone(),
        next_phase_at: status.next_phase_at.clone().unwrap_or_else(|| "-".into()),
        next_step,
    }
}

/// The phase to name in the advance annotation on every cluster, or why not (one line per
/// cluster that holds things up).
pub fn plan_advance(
    clusters: &[ClusterRotation],
    peers: &[ClusterRotation],
    to: Option<RotationPhase>,
    now: Timestamp,
) -> Result<RotationPhase, Vec<String>> {
    let mut problems = Vec::new();
    let mut phases = Vec::new();
    for c in clusters {
        let icc = &c.istio_cacerts;
        let who = format!("context {}", c.context);
        let Some(spec) = icc.spec.root_rotation.as_ref() else {
            problems.push(format!("{who}: spec.rootRotation is not set"));
            continue;
        };
        let Some(status) = icc.status.as_ref().and_then(|s| s.root_rotation.as_ref()) else {
            problems.push(format!("{who}: no rotation is under way"));
            continue;
        };
        if !status.phase.in_progress() {
            problems.push(format!("{who}: the rotation is {}", status.phase.as_str()));
            continue;
        }
        phases.push((who.clone(), status.phase));
        if spec.mode != RotationMode::Manual {
            problems.push(format!(
                "{who} is in Automatic mode: it moves on by itself (set spec.rootRotation.mode: Manual to drive it)"
            ));
        }
        if spec.paused {
            problems.push(format!("{who} is paused (spec.rootRotation.paused)"));
        }
        match status.next_phase_at.as_deref().map(str::parse::<Timestamp>) {
            Some(Ok(at)) if now < at => problems.push(format!(
                "{who} is in {} until its delay ends at {at}",
                status.phase.as_str()
            )),
            Some(Err(_)) => problems.push(format!("{who}: status.rootRotation.nextPhaseAt cannot be read")),
            _ => {}
        }
    }
    let first = phases.first().map(|(_, p)| *p);
    if phases.iter().any(|(_, p)| Some(*p) != first) {
        problems.push(format!(
            "the clusters are in different phases ({}): advance only moves clusters that are all in the same phase",
            phases
                .iter()
                .map(|(who, p)| format!("{who}: {}", p.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let (Some(to), Some(phase)) = (to, first)
        && next_phase(phase) != Some(to)
    {
        problems.push(format!(
            "--to {} does not follow {}: the next phase is {}",
            to.as_str(),
            phase.as_str(),
            next_phase(phase).map_or("none", RotationPhase::as_str)
        ));
    }
    // The switch makes workloads present certificates under the new root: every federated
    // peer named must trust it first, or calls from these clusters to it fail.
    if first == Some(RotationPhase::AddingNewRoot) {
        for c in clusters {
            for (peer, trusts) in peers_trust(c, peers) {
                if !trusts {
                    problems.push(format!(
                        "context {peer} does not trust the new root of context {} yet (its status shows it in neither roots nor trustAnchors): switching now would break calls from {} to {peer}. Run meshca federate --context {} --context {peer} --yes, wait until {peer} is Synced, then advance",
                        c.context, c.context, c.context
                    ));
                }
            }
        }
    }
    match (first, problems.is_empty()) {
        (Some(phase), true) => Ok(phase),
        _ if problems.is_empty() => Err(vec!["no cluster given".to_string()]),
        _ => Err(problems),
    }
}

/// The fingerprint to write as `spec.rootRotation.expectedNewRoot` on every cluster, or why
/// not (one line per cluster). A cluster is approved only for the new root its own status
/// reports as waiting for approval (`status.newRootAwaitingApproval`), so a typo or another
/// root is never approved blindly; one already pinned to it is approved again (re-running is
/// safe).
pub fn plan_approve(clusters: &[ClusterRotation], fingerprint: &str) -> Result<String, Vec<String>> {
    let given = fingerprint.trim().to_ascii_lowercase();
    let mut problems = Vec::new();
    if given.len() != 64 || !given.bytes().all(|b| b.is_ascii_hexdigit()) {
        problems.push(format!(
            "--fingerprint {fingerprint:?} is not a SHA-256 fingerprint: 64 hex digits, as status.roots[].fingerprintSHA256 and the NewRootNotApproved condition show them"
        ));
    }
    for c in clusters {
        let icc = &c.istio_cacerts;
        let who = format!("context {}", c.context);
        let Some(spec) = icc.spec.root_rotation.as_ref() else {
            problems.push(format!("{who}: spec.rootRotation is not set"));
            continue;
        };
        let waiting = icc.status.as_ref().and_then(|s| s.new_root_awaiting_approval.as_ref());
        let pinned = spec.expected_new_root.as_deref().map(str::to_ascii_lowercase);
        match waiting {
            Some(root) if root.fingerprint_sha256.eq_ignore_ascii_case(&given) => {}
            Some(root) => problems.push(format!(
                "{who}: the new root waiting for approval is {} (SHA-256 {}), not {given}",
                root.subject, root.fingerprint_sha256
            )),
            None if pinned.as_deref() == Some(given.as_str()) => {}
            None => problems.push(format!(
                "{who}: no new root waits for approval (status.newRootAwaitingApproval is empty): only a root the cluster reports as waiting can be approved"
            )),
        }
    }
    if problems.is_empty() && !clusters.is_empty() {
        Ok(given)
    } else if clusters.is_empty() {
        Err(vec!["no cluster given".to_string()])
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio_cacerts::{
        IstioCACertsSpec, IstioCACertsStatus, RootRotation, RootRotationStatus, TrackedAnchor, TrackedCertificate,
    };

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn cluster(context: &str, phase: RotationPhase, mode: RotationMode, paused: bool, next_in: i64) -> ClusterRotation {
        let mut icc = IstioCACerts::new(
            "istiod",
            IstioCACertsSpec {
                root_rotation: Some(RootRotation {
                    multi_root_mesh_enabled: true,
                    mode,
                    paused,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        icc.status = Some(IstioCACertsStatus {
            root_rotation: Some(RootRotationStatus {
                phase,
                old_roots: vec!["old".into()],
                new_root: "new".into(),
                phase_started_at: (now() - jiff::SignedDuration::from_hours(2)).to_string(),
                next_phase_at: Some((now() + jiff::SignedDuration::from_secs(next_in)).to_string()),
                history: vec![],
            }),
            ..Default::default()
        });
        ClusterRotation {
            context: context.into(),
            istio_cacerts: icc,
        }
    }

    #[test]
    fn advance_goes_only_when_every_cluster_is_ready_for_the_same_step() {
        use RotationMode::{Automatic, Manual};
        use RotationPhase::{AddingNewRoot as Adding, SwitchingIntermediate as Switching};
        let ready = |c| cluster(c, Adding, Manual, false, -1);
        // (case, clusters, --to, expected: Ok(phase) or text of the problem)
        type Case<'a> = (
            &'a str,
            Vec<ClusterRotation>,
            Option<RotationPhase>,
            Result<RotationPhase, &'a str>,
        );
        let cases: Vec<Case> = vec![
            ("both ready", vec![ready("a"), ready("b")], None, Ok(Adding)),
            (
                "both ready, --to names the next phase",
                vec![ready("a"), ready("b")],
                Some(Switching),
                Ok(Adding),
            ),
            (
                "--to skipping a phase",
                vec![ready("a"), ready("b")],
                Some(RotationPhase::RemovingOldRoot),
                Err("does not follow"),
            ),
            (
                "one still in its delay",
                vec![ready("a"), cluster("b", Adding, Manual, false, 30)],
                None,
                Err("context b is in AddingNewRoot until"),
            ),
            (
                "different phases",
                vec![ready("a"), cluster("b", Switching, Manual, false, -1)],
                None,
                Err("different phases"),
            ),
            (
                "automatic mode",
                vec![ready("a"), cluster("b", Adding, Automatic, false, -1)],
                None,
                Err("context b is in Automatic mode"),
            ),
            (
                "paused",
                vec![ready("a"), cluster("b", Adding, Manual, true, -1)],
                None,
                Err("context b is paused"),
            ),
            (
                "completed",
                vec![ready("a"), cluster("b", RotationPhase::Completed, Manual, false, -1)],
                None,
                Err("context b: the rotation is Completed"),
            ),
        ];
        for (case, clusters, to, expected) in cases {
            assert_planned(case, plan_advance(&clusters, &[], to, now()), expected);
        }
    }

    /// A table row's verdict: the plan expected, or problems of which one names `text`.
    fn assert_planned<T: PartialEq + std::fmt::Debug>(
        case: &str,
        got: Result<T, Vec<String>>,
        expected: Result<T, &str>,
    ) {
        match expected {
            Ok(plan) => assert_eq!(got, Ok(plan), "{case}"),
            Err(text) => {
                let problems = got.expect_err(case);
                assert!(problems.iter().any(|p| p.contains(text)), "{case}: {problems:?}");
            }
        }
    }

    #[test]
    fn approve_writes_only_the_root_each_cluster_reports_as_waiting() {
        use crate::api::istio_cacerts::NewRootAwaitingApproval;
        let new = "ab".repeat(32);
        let other = "cd".repeat(32);
        // A cluster whose status reports `waiting` (if any), pinned to `pinned` (if any).
        let at = |context: &str, waiting: Option<&str>, pinned: Option<&str>| {
            let mut icc = IstioCACerts::new(
                "istiod",
                IstioCACertsSpec {
                    root_rotation: Some(RootRotation {
                        multi_root_mesh_enabled: true,
                        expected_new_root: pinned.map(str::to_string),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            icc.status = Some(IstioCACertsStatus {
                new_root_awaiting_approval: waiting.map(|fp| NewRootAwaitingApproval {
                    subject: "CN=new root".into(),
                    fingerprint_sha256: fp.into(),
                    not_after: "2040-01-01T00:00:00Z".into(),
                }),
                ..Default::default()
            });
            ClusterRotation {
                context: context.into(),
                istio_cacerts: icc,
            }
        };
        let unconfigured = ClusterRotation {
            context: "c".into(),
            istio_cacerts: IstioCACerts::new("istiod", IstioCACertsSpec::default()),
        };
        // (case, clusters, --fingerprint, expected: Ok(fingerprint written) or text of the problem)
        type Case<'a> = (&'a str, Vec<ClusterRotation>, String, Result<String, &'a str>);
        let cases: Vec<Case> = vec![
            (
                "both wait for this root",
                vec![at("a", Some(&new), None), at("b", Some(&new), None)],
                new.clone(),
                Ok(new.clone()),
            ),
            (
                "given in capitals, written as status shows it",
                vec![at("a", Some(&new), None)],
                new.to_uppercase(),
                Ok(new.clone()),
            ),
            (
                "already pinned, nothing waits: approving again is safe",
                vec![at("a", None, Some(&new))],
                new.clone(),
                Ok(new.clone()),
            ),
            (
                "another root waits in one cluster",
                vec![at("a", Some(&new), None), at("b", Some(&other), None)],
                new.clone(),
                Err("context b: the new root waiting for approval is CN=new root (SHA-256 cdcd"),
            ),
            (
                "a typo",
                vec![at("a", Some(&new), None)],
                format!("{}0", &new[..63]),
                Err("not ab"),
            ),
            (
                "nothing waits",
                vec![at("a", None, None)],
                new.clone(),
                Err("context a: no new root waits for approval"),
            ),
            (
                "not a fingerprint",
                vec![at("a", Some(&new), None)],
                "ab:cd".into(),
                Err("is not a SHA-256 fingerprint"),
            ),
            (
                "rotation not configured",
                vec![at("a", Some(&new), None), unconfigured],
                new.clone(),
                Err("context c: spec.rootRotation is not set"),
            ),
        ];
        for (case, clusters, fingerprint, expected) in cases {
            assert_planned(case, plan_approve(&clusters, &fingerprint), expected);
        }
    }

    /// A peer whose cacerts does not hold the new root (status roots or trustAnchors) holds the switch
    /// back, named with what to run; once it does, the advance goes, and status says so.
    #[test]
    fn the_switch_waits_for_every_named_peer_to_trust_the_new_root() {
        let east = cluster("east", RotationPhase::AddingNewRoot, RotationMode::Manual, false, -1);
        let peer = |trusts: bool| {
            let mut west = cluster("west", RotationPhase::Completed, RotationMode::Manual, false, -1);
            // West's own root, and a copy of east's roots as trust anchors.
            if let Some(status) = west.istio_cacerts.status.as_mut() {
                let tracked = |fp: &str| TrackedCertificate {
                    fingerprint_sha256: fp.to_string(),
                    ..Default::default()
                };
                status.roots = vec![tracked("west")];
                status.trust_anchors = ["old", if trusts { "NEW" } else { "other" }]
                    .iter()
                    .map(|fp| TrackedAnchor {
                        name: "peer-east".into(),
                        trust_domains: vec![],
                        certificate: tracked(fp),
                        source: None,
                    })
                    .collect();
            }
            west
        };
        let held = plan_advance(std::slice::from_ref(&east), &[peer(false)], None, now()).unwrap_err();
        assert!(
            held[0].contains("context west does not trust the new root of context east")
                && held[0].contains("meshca federate --context east --context west --yes"),
            "{held:?}"
        );
        assert_eq!(
            plan_advance(std::slice::from_ref(&east), &[peer(true)], None, now()),
            Ok(RotationPhase::AddingNewRoot)
        );
        assert!(
            row(&east, &[peer(false)], now())
                .next_step
                .contains("west does not trust the new root yet")
        );
        assert!(
            row(&east, &[peer(true)], now())
                .next_step
                .contains("west trusts the new root")
        );
        // After the switch the peer check is no longer the gate.
        let switched = cluster(
            "east",
            RotationPhase::SwitchingIntermediate,
            RotationMode::Manual,
            false,
            -1,
        );
        assert_eq!(
            plan_advance(std::slice::from_ref(&switched), &[peer(false)], None, now()),
            Ok(RotationPhase::SwitchingIntermediate)
        );
    }

    #[test]
    fn status_rows_say_what_comes_next() {
        let rows = [
            row(
                &cluster("a", RotationPhase::AddingNewRoot, RotationMode::Manual, false, 30),
                &[],
                now(),
            ),
            row(
                &cluster("b", RotationPhase::AddingNewRoot, RotationMode::Manual, false, -1),
                &[],
                now(),
            ),
            row(
                &cluster(
                    "c",
                    RotationPhase::SwitchingIntermediate,
                    RotationMode::Automatic,
                    true,
                    -1,
                ),
                &[],
                now(),
            ),
        ];
        assert!(rows[0].next_step.contains("delay running"), "{:?}", rows[0]);
        assert!(rows[1].next_step.contains("meshca rotation advance"), "{:?}", rows[1]);
        assert!(rows[2].next_step.contains("after unpausing"), "{:?}", rows[2]);
        // A new root waiting for approval, after an earlier rotation completed.
        let mut waiting = cluster("d", RotationPhase::Completed, RotationMode::Automatic, false, -1);
        if let Some(status) = waiting.istio_cacerts.status.as_mut() {
            status.new_root_awaiting_approval = Some(crate::api::istio_cacerts::NewRootAwaitingApproval {
                subject: "CN=new root".into(),
                fingerprint_sha256: "ab".repeat(32),
                not_after: "2040-01-01T00:00:00Z".into(),
            });
        }
        let row = row(&waiting, &[], now());
        assert_eq!(row.phase, "NewRootNotApproved");
        assert!(
            row.next_step.contains("waiting for approval of new root CN=new root")
                && row.next_step.contains(&format!(
                    "meshca rotation approve --context d --fingerprint {}",
                    "ab".repeat(32)
                )),
            "{row:?}"
        );
    }
}
