//! Across the named clusters: clusters of one trust domain share a root; each federated
//! peer's current roots (as its own status shows them) are among our trust anchors, which
//! catches a stale copy after the peer rotated; trust domains are unique among federated
//! clusters; root rotations are in step, so no cluster signs with a root a peer does not
//! trust; a cluster writing CRLs holds each peer's intermediate CRL. Pure. (A peer's bundle-endpoint staleness belongs here once bundle endpoints exist.)

use std::collections::{BTreeMap, BTreeSet};

use super::observe::{ClusterRead, short};
use super::{CheckId, Finding, Status, combine};
use crate::api::istio_cacerts::RotationPhase;

/// One cluster as the checks across clusters see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Member {
    pub context: String,
    pub cluster_id: Option<String>,
    pub trust_domain: String,
    /// Fingerprints of its own roots (`status.roots`).
    pub roots: BTreeSet<String>,
    /// Fingerprints of its trust anchors (`status.trustAnchors`).
    pub anchors: BTreeSet<String>,
    /// The trust domains its anchors vouch for (`spec.trustAnchors[].trustDomains`).
    pub anchor_domains: BTreeSet<String>,
    /// Cluster ids of the peers `meshca federate` copied roots from.
    pub peer_ids: BTreeSet<String>,
    /// The root its intermediate chains to (from cacerts), i.e. the root it signs under.
    pub signing_root: Option<String>,
    /// A root rotation under way.
    pub phase: Option<RotationPhase>,
    /// Subjects by fingerprint, for messages.
    pub names: BTreeMap<String, String>,
    /// The intermediate istiod signs with (`status.intermediate`).
    pub intermediate: Option<String>,
    /// With revocation on: the CAs whose CRLs its `ca-crl.pem` holds (`status.crl`).
    pub crl_cas: Option<BTreeSet<String>>,
}

impl Member {
    /// The first IstioCACerts of a cluster that could be read.
    pub fn of(read: &ClusterRead) -> Option<Member> {
        let ClusterRead::Read(o) = read else { return None };
        let icc = o.istio_cacerts.as_ref().ok()?.first()?;
        let status = icc.status.clone().unwrap_or_default();
        let mut names = BTreeMap::new();
        for r in &status.roots {
            names.insert(r.fingerprint_sha256.clone(), r.subject.clone());
        }
        for a in &status.trust_anchors {
            names.insert(a.certificate.fingerprint_sha256.clone(), a.certificate.subject.clone());
        }
        if let Some(i) = &status.intermediate {
            names.insert(i.fingerprint_sha256.clone(), i.subject.clone());
        }
        let cacerts = o
            .secrets
            .get(&icc.spec.target_secret_name)
            .and_then(|r| r.as_ref().ok())
            .and_then(|s| s.as_ref());
        Some(Member {
            context: o.context.clone(),
            cluster_id: o.cluster_id.as_ref().ok().cloned(),
            trust_domain: icc.spec.trust_domain.clone(),
            roots: status.roots.iter().map(|r| r.fingerprint_sha256.clone()).collect(),
            anchors: status
                .trust_anchors
                .iter()
                .map(|a| a.certificate.fingerprint_sha256.clone())
                .collect(),
            anchor_domains: icc
                .spec
                .trust_anchors
                .iter()
                .flat_map(|a| a.trust_domains.iter().cloned())
                .collect(),
            peer_ids: o
                .peer_config_maps
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter_map(|(_, id)| id.clone())
                .collect(),
            signing_root: cacerts
                .and_then(|c| c.signing_root.as_ref())
                .map(|r| r.fingerprint.clone()),
            phase: status.root_rotation.map(|r| r.phase).filter(|p| p.in_progress()),
            names,
            intermediate: status.intermediate.map(|i| i.fingerprint_sha256),
            crl_cas: icc
                .spec
                .revocation
                .as_ref()
                .filter(|r| r.enabled)
                .map(|_| status.crl.iter().map(|c| c.ca_fingerprint_sha256.clone()).collect()),
        })
    }

    /// Whether this cluster trusts `peer` as a federation peer: it copied the peer's root, or
    /// holds an anchor for the peer's (different) trust domain or of one of its roots.
    fn federated_with(&self, peer: &Member) -> bool {
        peer.cluster_id.as_ref().is_some_and(|id| self.peer_ids.contains(id))
            || (peer.trust_domain != self.trust_domain && self.anchor_domains.contains(&peer.trust_domain))
            || !self.anchors.is_disjoint(&peer.roots)
    }

    fn trusts(&self, root: &str) -> bool {
        self.roots.contains(root) || self.anchors.contains(root)
    }

    fn name(&self, fingerprint: &str) -> String {
        match self.names.get(fingerprint) {
            Some(subject) => format!("{subject} (SHA-256 {})", short(fingerprint)),
            None => format!("SHA-256 {}", short(fingerprint)),
        }
    }
}

fn federated(a: &Member, b: &Member) -> bool {
    a.federated_with(b) || b.federated_with(a)
}

fn shares_root(a: &Member, b: &Member) -> bool {
    !a.roots.is_disjoint(&b.roots)
}

fn pairs(members: &[Member]) -> impl Iterator<Item = (&Member, &Member)> {
    members
        .iter()
        .enumerate()
        .flat_map(move |(i, a)| members[i + 1..].iter().map(move |b| (a, b)))
}

fn contexts(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| format!("--context {}", m.context))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every check across clusters, over the clusters that could be read.
pub fn check(reads: &[ClusterRead]) -> Vec<Finding> {
    let members: Vec<Member> = reads.iter().filter_map(Member::of).collect();
    let left_out: Vec<&str> = reads
        .iter()
        .filter(|r| Member::of(r).is_none())
        .map(ClusterRead::context)
        .collect();
    let findings = checks(&members);
    if left_out.is_empty() {
        return findings;
    }
    // A verdict over part of the fleet is no pass.
    findings
        .into_iter()
        .map(|f| match f.status {
            Status::Pass => Finding::warn(
                f.id,
                format!(
                    "compared only {}: {} could not be read or has no IstioCACerts",
                    members
                        .iter()
                        .map(|m| m.context.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    left_out.join(", ")
                ),
                "fix that cluster's checks above, then run meshca check again",
            ),
            _ => f,
        })
        .collect()
}

/// The four checks over `members`.
pub fn checks(members: &[Member]) -> Vec<Finding> {
    vec![
        shared_root(members),
        peer_roots(members),
        trust_domains(members),
        rotations(members),
        peer_crls(members),
    ]
}

/// Envoy checks the CRL of every CA of a peer's chain once any CRL is loaded: a cluster that
/// writes `ca-crl.pem` needs the CRL of each peer's intermediate too, which comes only over
/// the peer's SPIFFE bundle endpoint (docs/revocation.md). Without one, its sidecars refuse
/// that peer's workloads.
fn peer_crls(members: &[Member]) -> Finding {
    let id = CheckId::FleetPeerCrls;
    let mut findings = Vec::new();
    for x in members {
        let Some(held) = &x.crl_cas else { continue };
        for y in members {
            if x.context == y.context || !(shares_root(x, y) || federated(x, y)) {
                continue;
            }
            let Some(intermediate) = &y.intermediate else { continue };
            if held.contains(intermediate) {
                continue;
            }
            findings.push(Finding::fail(
                id,
                format!(
                    "context {} writes ca-crl.pem without a CRL of context {}'s intermediate {}: Envoy sidecars in {} refuse every workload of {} (unable to get certificate CRL)",
                    x.context,
                    y.context,
                    y.name(intermediate),
                    x.context,
                    y.context
                ),
                format!(
                    "in {}, follow {}'s SPIFFE bundle endpoint (spec.trustAnchors[].spiffeBundleEndpoint; {} serves it with spec.bundleEndpoint and revocation on), which carries its CRLs; or turn spec.revocation off in {} and restart its istiod (Istio keeps loaded CRLs), or use ztunnel there: {}#fleet-peer-crls",
                    x.context,
                    y.context,
                    y.context,
                    x.context,
                    super::DOCS
                ),
            ));
        }
    }
    combine(id, findings)
}

fn shared_root(members: &[Member]) -> Finding {
    let id = CheckId::FleetSharedRoot;
    combine(
        id,
        pairs(members)
            .filter(|(a, b)| a.trust_domain == b.trust_domain && !shares_root(a, b) && !federated(a, b))
            .map(|(a, b)| {
                Finding::fail(
                    id,
                    format!(
                        "contexts {} and {} share trust domain {} but not a root ({} vs {}): neither trusts the other's workloads",
                        a.context,
                        b.context,
                        a.trust_domain,
                        a.roots.iter().map(|r| a.name(r)).collect::<Vec<_>>().join(", "),
                        b.roots.iter().map(|r| b.name(r)).collect::<Vec<_>>().join(", ")
                    ),
                    "give both one root (docs/multicluster.md), or each its own trust domain and then meshca federate",
                )
            })
            .collect(),
    )
}

fn peer_roots(members: &[Member]) -> Finding {
    let id = CheckId::FleetPeerRoots;
    let mut findings = Vec::new();
    for x in members {
        for y in members {
            if x.context == y.context || !x.federated_with(y) {
                continue;
            }
            let missing: Vec<String> = y
                .roots
                .iter()
                .filter(|r| !x.anchors.contains(*r))
                .map(|r| y.name(r))
                .collect();
            if missing.is_empty() {
                continue;
            }
            findings.push(Finding::fail(
                id,
                format!(
                    "context {}'s trust anchors lack {} of context {}: its copy of the peer's roots is stale (the peer rotated), so workloads signed under it will be refused",
                    x.context,
                    missing.join(", "),
                    y.context
                ),
                format!("meshca federate {}", contexts(&[x, y])),
            ));
        }
    }
    combine(id, findings)
}

fn trust_domains(members: &[Member]) -> Finding {
    let id = CheckId::FleetTrustDomains;
    combine(
        id,
        pairs(members)
            .filter(|(a, b)| a.trust_domain == b.trust_domain && federated(a, b))
            .map(|(a, b)| {
                Finding::fail(
                    id,
                    format!(
                        "contexts {} and {} are federated with one trust domain {}: either cluster's CA can mint the other's identities",
                        a.context, b.context, a.trust_domain
                    ),
                    "give each cluster its own trust domain (spec.trustDomain and meshConfig.trustDomain), then meshca federate again: docs/federation.md",
                )
            })
            .collect(),
    )
}

fn rotations(members: &[Member]) -> Finding {
    let id = CheckId::FleetRotations;
    let mut findings = Vec::new();
    for x in members {
        let Some(signing) = &x.signing_root else { continue };
        for y in members {
            if x.context == y.context || !(shares_root(x, y) || federated(x, y)) || y.trusts(signing) {
                continue;
            }
            let fix = if shares_root(x, y) {
                format!(
                    "meshca rotation status {0}; move them together with meshca rotation advance {0}",
                    contexts(&[x, y])
                )
            } else {
                format!("meshca federate {}", contexts(&[x, y]))
            };
            findings.push(Finding::fail(
                id,
                format!(
                    "context {} signs under root {}, which context {} does not trust: workloads across them fail",
                    x.context,
                    x.name(signing),
                    y.context
                ),
                fix,
            ));
        }
    }
    // Clusters of one root should be in one phase: `meshca rotation advance` moves only those.
    for (a, b) in pairs(members) {
        if shares_root(a, b) && a.phase != b.phase {
            let phase = |m: &Member| m.phase.map_or("none", RotationPhase::as_str).to_string();
            findings.push(Finding::warn(
                id,
                format!(
                    "contexts {} ({}) and {} ({}) share a root but their rotations are not in step",
                    a.context,
                    phase(a),
                    b.context,
                    phase(b)
                ),
                format!("meshca rotation status {}", contexts(&[a, b])),
            ));
        }
    }
    combine(id, findings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(context: &str, td: &str, roots: &[&str], anchors: &[&str]) -> Member {
        Member {
            context: context.into(),
            cluster_id: Some(format!("uid-{context}")),
            trust_domain: td.into(),
            roots: roots.iter().map(|s| s.to_string()).collect(),
            anchors: anchors.iter().map(|s| s.to_string()).collect(),
            anchor_domains: BTreeSet::new(),
            peer_ids: BTreeSet::new(),
            signing_root: roots.first().map(|s| s.to_string()),
            phase: None,
            names: BTreeMap::new(),
            intermediate: Some(format!("int-{context}")),
            crl_cas: None,
        }
    }

    /// `x` copied `y`'s roots, as `meshca federate` does.
    fn peer(mut x: Member, y: &Member) -> Member {
        x.peer_ids.insert(y.cluster_id.clone().unwrap());
        x.anchor_domains.insert(y.trust_domain.clone());
        x
    }

    fn verdicts(members: &[Member]) -> Vec<(CheckId, Status, String)> {
        checks(members)
            .into_iter()
            .map(|f| (f.id, f.status, f.problem.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn fleets_pass_and_fail_as_they_are_built() {
        use Status::{Fail, Pass, Warn};
        let east = member("east", "east.example", &["E"], &["W"]);
        let west = member("west", "west.example", &["W"], &["E"]);
        let (east, west) = (
            peer(east, &west),
            peer(west, &member("east", "east.example", &["E"], &[])),
        );
        // West rotated: its status shows both roots, east's copy only the old one.
        let mut west_rotating = west.clone();
        west_rotating.roots.insert("W2".into());
        west_rotating.phase = Some(RotationPhase::AddingNewRoot);
        let mut west_switched = west_rotating.clone();
        west_switched.phase = Some(RotationPhase::SwitchingIntermediate);
        west_switched.signing_root = Some("W2".into());
        let mut shared_b_ahead = member("b", "cluster.local", &["R", "R2"], &[]);
        shared_b_ahead.phase = Some(RotationPhase::AddingNewRoot);
        let mut shared_b_switched = shared_b_ahead.clone();
        shared_b_switched.phase = Some(RotationPhase::SwitchingIntermediate);
        shared_b_switched.signing_root = Some("R2".into());
        // (case, members, check, status, problem contains)
        let cases: Vec<(&str, Vec<Member>, CheckId, Status, &str)> = vec![
            (
                "federated pair",
                vec![east.clone(), west.clone()],
                CheckId::FleetPeerRoots,
                Pass,
                "",
            ),
            (
                "shared root",
                vec![
                    member("a", "cluster.local", &["R"], &[]),
                    member("b", "cluster.local", &["R"], &[]),
                ],
                CheckId::FleetSharedRoot,
                Pass,
                "",
            ),
            (
                "one trust domain, two roots, no federation",
                vec![
                    member("a", "cluster.local", &["R"], &[]),
                    member("b", "cluster.local", &["S"], &[]),
                ],
                CheckId::FleetSharedRoot,
                Fail,
                "share trust domain cluster.local but not a root",
            ),
            (
                "stale peer root",
                vec![east.clone(), west_rotating.clone()],
                CheckId::FleetPeerRoots,
                Fail,
                "context east's trust anchors lack SHA-256 W2 of context west",
            ),
            (
                "stale peer root, rotation otherwise fine",
                vec![east.clone(), west_rotating.clone()],
                CheckId::FleetRotations,
                Pass,
                "",
            ),
            (
                "peer signs under a root we lack",
                vec![east.clone(), west_switched],
                CheckId::FleetRotations,
                Fail,
                "context west signs under root SHA-256 W2, which context east does not trust",
            ),
            (
                "federated, one trust domain",
                vec![
                    peer(
                        member("a", "cluster.local", &["R"], &["S"]),
                        &member("b", "x", &[], &[]),
                    ),
                    member("b", "cluster.local", &["S"], &["R"]),
                ],
                CheckId::FleetTrustDomains,
                Fail,
                "federated with one trust domain cluster.local",
            ),
            (
                "federated, own trust domains",
                vec![east.clone(), west.clone()],
                CheckId::FleetTrustDomains,
                Pass,
                "",
            ),
            (
                "shared root, one cluster a phase ahead",
                vec![member("a", "cluster.local", &["R"], &[]), shared_b_ahead],
                CheckId::FleetRotations,
                Warn,
                "rotations are not in step",
            ),
            (
                "shared root, one switched before the other trusts the new root",
                vec![member("a", "cluster.local", &["R"], &[]), shared_b_switched],
                CheckId::FleetRotations,
                Fail,
                "context b signs under root SHA-256 R2, which context a does not trust",
            ),
            (
                "independent meshes",
                vec![
                    member("a", "a.example", &["R"], &[]),
                    member("b", "b.example", &["S"], &[]),
                ],
                CheckId::FleetRotations,
                Pass,
                "",
            ),
        ];
        for (case, members, id, status, text) in cases {
            let got = verdicts(&members);
            let (_, s, problem) = got.iter().find(|(i, _, _)| *i == id).unwrap();
            assert_eq!(*s, status, "{case}: {got:?}");
            assert!(problem.contains(text), "{case}: {problem}");
        }
    }

    /// A cluster writing CRLs fails for every peer it verifies whose intermediate's CRL it
    /// lacks; without revocation, or holding the peer's CRL, it passes.
    #[test]
    fn a_cluster_writing_crls_needs_every_peers_intermediate_crl() {
        let a = member("a", "cluster.local", &["R"], &[]);
        let b = member("b", "cluster.local", &["R"], &[]);
        let other = member("c", "c.example", &["C"], &[]);
        let revoking = |m: &Member, held: &[&str]| Member {
            crl_cas: Some(held.iter().map(|s| s.to_string()).collect()),
            ..m.clone()
        };
        let cases = [
            ("no revocation", vec![a.clone(), b.clone()], Status::Pass, ""),
            (
                "a writes its own chain's CRLs only",
                vec![revoking(&a, &["int-a", "R"]), b.clone()],
                Status::Fail,
                "context a writes ca-crl.pem without a CRL of context b's intermediate",
            ),
            (
                "a holds b's intermediate CRL too",
                vec![revoking(&a, &["int-a", "R", "int-b"]), b.clone()],
                Status::Pass,
                "",
            ),
            (
                "an unrelated cluster is not a peer",
                vec![revoking(&a, &["int-a", "R"]), other],
                Status::Pass,
                "",
            ),
        ];
        for (case, members, status, text) in cases {
            let got = peer_crls(&members);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.unwrap_or_default().contains(text), "{case}");
        }
    }

    #[test]
    fn a_cluster_left_out_turns_passes_into_warnings() {
        let reads = vec![
            ClusterRead::Unreachable {
                context: "north".into(),
                reason: "refused".into(),
            },
            ClusterRead::Unreachable {
                context: "south".into(),
                reason: "refused".into(),
            },
        ];
        for f in check(&reads) {
            assert_eq!(f.status, Status::Warn, "{f:?}");
            assert!(f.problem.unwrap().contains("north, south could not be read"));
        }
    }
}
