//! `spec.clusterTrustBundle`: this cluster's own roots, and each trust anchor, published as
//! Kubernetes ClusterTrustBundles (certificates.k8s.io/v1), so that workloads outside the mesh
//! (a projected `clusterTrustBundle` volume) and trust-manager can consume them. Which objects,
//! with what content, and what to delete. Pure; the writes are the controller's.
//!
//! Every object carries signer name `meshca.io/<trustDomain>` (its name is then prefixed
//! `meshca.io:<trustDomain>:`, as the API server requires), a role label (`own` or `anchor`)
//! and the uid of its IstioCACerts. A cluster-scoped object cannot be owned by a namespaced
//! one, so the controller deletes them itself: when the IstioCACerts is gone (its last
//! reconcile), and in a periodic sweep for those whose IstioCACerts went while no controller
//! ran.

use std::collections::BTreeMap;

use super::cacerts::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem};
use crate::pki::Certificate;

/// The condition that reports `spec.clusterTrustBundle`.
pub const PUBLISHED: &str = "ClusterTrustBundlesPublished";
/// The uid of the IstioCACerts an object belongs to.
pub const ICC_UID_LABEL: &str = "meshca.io/istiocacerts-uid";
/// `own` (this cluster's roots) or `anchor` (one trust anchor).
pub const ROLE_LABEL: &str = "meshca.io/trust-bundle-role";
/// On an `anchor` object: the anchor's name (names are not always valid label values).
pub const ANCHOR_ANNOTATION: &str = "meshca.io/trust-anchor";

pub mod reason {
    pub const PUBLISHED: &str = "Published";
    /// The API server does not serve ClusterTrustBundles: nothing else changes.
    pub const API_UNAVAILABLE: &str = "ClusterTrustBundleAPIUnavailable";
    pub const NO_ROOTS: &str = "NoRootsYet";
    pub const WRITE_FAILED: &str = "WriteFailed";
}

/// One of our ClusterTrustBundles as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    pub name: String,
    pub signer_name: Option<String>,
    pub trust_bundle: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// What observe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// The API server answered that it does not serve them (404 on the list).
    Unavailable,
    /// Ours for this IstioCACerts (by its uid).
    Listed(Vec<Existing>),
}

/// One ClusterTrustBundle as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub signer_name: String,
    pub trust_bundle: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Wanted {
    /// The server-side apply body (certificates.k8s.io/v1).
    pub fn apply_patch(&self) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "ClusterTrustBundle",
            "metadata": {"name": self.name, "labels": self.labels, "annotations": self.annotations},
            "spec": {"signerName": self.signer_name, "trustBundle": self.trust_bundle},
        })
    }

    fn matches(&self, e: &Existing) -> bool {
        e.signer_name.as_deref() == Some(self.signer_name.as_str())
            && e.trust_bundle == self.trust_bundle
            && self.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v))
            && self.annotations.iter().all(|(k, v)| e.annotations.get(k) == Some(v))
    }
}

/// The writes: applied (created or changed), then deleted (no longer wanted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub apply: Vec<Wanted>,
    pub delete: Vec<String>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.apply.is_empty() && self.delete.is_empty()
    }
}

/// The signer name of a trust domain's bundles.
pub fn signer_name(trust_domain: &str) -> String {
    format!("meshca.io/{trust_domain}")
}

/// A name part: lower-case letters, digits, `-` and `.`; anything else becomes `-`.
fn part(s: &str) -> String {
    s.to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `meshca.io:<trustDomain>:<namespace>.<name>.<suffix>`.
fn object_name(trust_domain: &str, namespace: &str, icc: &str, suffix: &str) -> String {
    format!(
        "{}:{}.{}.{}",
        signer_name(trust_domain).replace('/', ":"),
        part(namespace),
        part(icc),
        part(suffix)
    )
}

/// Where the IstioCACerts stands, for the objects' labels and names.
pub struct Owner<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub trust_domain: &'a str,
}

/// The verdict (ok, reason, message) and the writes, if any. `own`: this cluster's own roots
/// (both during a root rotation); `anchors`: each anchor's certificates as `root-cert.pem`
/// holds them. Nothing is planned before `cacerts` holds a bundle, nor when the API is missing.
pub fn plan(
    owner: &Owner,
    own: &[Certificate],
    anchors: &[(String, Vec<Certificate>)],
    found: &Found,
) -> (Result<String, Problem>, Option<Writes>) {
    let existing = match found {
        Found::Unavailable => {
            return (
                Err(Problem {
                    reason: reason::API_UNAVAILABLE,
                    message: "the API server does not serve certificates.k8s.io/v1 ClusterTrustBundles (Kubernetes 1.33+ with the ClusterTrustBundle feature; GA in 1.37): nothing is published, and nothing else changes".into(),
                }),
                None,
            );
        }
        Found::Listed(existing) => existing,
    };
    if own.is_empty() {
        return (
            Err(Problem {
                reason: reason::NO_ROOTS,
                message: "cacerts holds no bundle yet: there are no roots to publish".into(),
            }),
            None,
        );
    }
    let base = |role: &str| {
        BTreeMap::from([
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
            (ICC_UID_LABEL.to_string(), owner.uid.to_string()),
            (ROLE_LABEL.to_string(), role.to_string()),
        ])
    };
    let owned_by = format!("{}/{}", owner.namespace, owner.name);
    let pem = |certs: &[Certificate]| certs.iter().map(Certificate::to_pem).collect::<String>();
    let mut wanted = vec![Wanted {
        name: object_name(owner.trust_domain, owner.namespace, owner.name, "own"),
        signer_name: signer_name(owner.trust_domain),
        trust_bundle: pem(own),
        labels: base("own"),
        annotations: BTreeMap::from([(OWNER_ANNOTATION.to_string(), owned_by.clone())]),
    }];
    for (anchor, certs) in anchors.iter().filter(|(_, c)| !c.is_empty()) {
        wanted.push(Wanted {
            name: object_name(
                owner.trust_domain,
                owner.namespace,
                owner.name,
                &format!("anchor.{anchor}"),
            ),
            signer_name: signer_name(owner.trust_domain),
            trust_bundle: pem(certs),
            labels: base("anchor"),
            annotations: BTreeMap::from([
                (OWNER_ANNOTATION.to_string(), owned_by.clone()),
                (ANCHOR_ANNOTATION.to_string(), anchor.clone()),
            ]),
        });
    }
    let writes = Writes {
        apply: wanted
            .iter()
            .filter(|w| !existing.iter().any(|e| e.name == w.name && w.matches(e)))
            .cloned()
            .collect(),
        delete: existing
            .iter()
            .filter(|e| !wanted.iter().any(|w| w.name == e.name))
            .map(|e| e.name.clone())
            .collect(),
    };
    let message = format!(
        "published {} ClusterTrustBundle(s) with signer {}: {}",
        wanted.len(),
        signer_name(owner.trust_domain),
        wanted.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    (Ok(message), (!writes.is_empty()).then_some(writes))
}

/// Whether an object of ours belongs to an IstioCACerts that is gone: its uid is not among
/// `live_uids`, and its owner is in `in_scope` (a controller limited to one namespace never
/// sweeps another's).
pub fn orphaned(existing: &Existing, live_uids: &[String], in_scope: impl Fn(&str) -> bool) -> bool {
    let managed = existing.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE);
    let uid = existing.labels.get(ICC_UID_LABEL);
    let namespace = existing
        .annotations
        .get(OWNER_ANNOTATION)
        .and_then(|o| o.split_once('/'))
        .map(|(ns, _)| ns);
    managed && uid.is_some_and(|u| !live_uids.contains(u)) && namespace.is_some_and(in_scope)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::testing::root;

    fn owner() -> Owner<'static> {
        Owner {
            namespace: "istio-system",
            name: "istiod",
            uid: "0b9c0d5e-1111-2222-3333-444455556666",
            trust_domain: "east.example",
        }
    }

    fn existing(w: &Wanted) -> Existing {
        Existing {
            name: w.name.clone(),
            signer_name: Some(w.signer_name.clone()),
            trust_bundle: w.trust_bundle.clone(),
            labels: w.labels.clone(),
            annotations: w.annotations.clone(),
        }
    }

    #[test]
    fn own_roots_and_each_anchor_become_one_bundle_each_and_only_changes_are_written() {
        let (own, _) = root(365);
        let (new, _) = root(730);
        let (peer, _) = root(365);
        let anchors = vec![("peer-west".to_string(), vec![peer.clone()])];
        let (verdict, writes) = plan(&owner(), std::slice::from_ref(&own), &anchors, &Found::Listed(vec![]));
        assert!(verdict.is_ok(), "{verdict:?}");
        let writes = writes.unwrap();
        assert_eq!(writes.apply.len(), 2);
        let mine = &writes.apply[0];
        assert_eq!(mine.name, "meshca.io:east.example:istio-system.istiod.own");
        assert_eq!(mine.signer_name, "meshca.io/east.example");
        assert_eq!(mine.trust_bundle, own.to_pem());
        assert_eq!(mine.labels[ROLE_LABEL], "own");
        let theirs = &writes.apply[1];
        assert_eq!(
            theirs.name,
            "meshca.io:east.example:istio-system.istiod.anchor.peer-west"
        );
        assert_eq!(theirs.labels[ROLE_LABEL], "anchor");
        assert_eq!(theirs.annotations[ANCHOR_ANNOTATION], "peer-west");
        assert_eq!(theirs.trust_bundle, peer.to_pem());

        // Written as planned: nothing to do.
        let found = Found::Listed(writes.apply.iter().map(existing).collect());
        let (_, none) = plan(&owner(), std::slice::from_ref(&own), &anchors, &found);
        assert_eq!(none, None);
        // A rotation adds the new root to the own bundle; the anchor is removed.
        let (_, writes) = plan(&owner(), &[own.clone(), new.clone()], &[], &found);
        let writes = writes.unwrap();
        assert_eq!(writes.apply.len(), 1);
        assert_eq!(
            writes.apply[0].trust_bundle,
            format!("{}{}", own.to_pem(), new.to_pem())
        );
        assert_eq!(writes.delete, vec![theirs.name.clone()]);
        // Edited by hand: put back.
        let mut edited = existing(mine);
        edited.trust_bundle = peer.to_pem();
        let (_, writes) = plan(&owner(), std::slice::from_ref(&own), &[], &Found::Listed(vec![edited]));
        assert_eq!(writes.unwrap().apply[0].trust_bundle, own.to_pem());
    }

    #[test]
    fn without_the_api_or_roots_nothing_is_planned_and_the_condition_says_why() {
        let (own, _) = root(365);
        let (verdict, writes) = plan(&owner(), &[own], &[], &Found::Unavailable);
        assert_eq!(verdict.unwrap_err().reason, reason::API_UNAVAILABLE);
        assert_eq!(writes, None);
        let (verdict, writes) = plan(&owner(), &[], &[], &Found::Listed(vec![]));
        assert_eq!(verdict.unwrap_err().reason, reason::NO_ROOTS);
        assert_eq!(writes, None);
    }

    #[test]
    fn only_objects_of_a_gone_istiocacerts_in_scope_are_orphans() {
        let (own, _) = root(365);
        let (_, writes) = plan(&owner(), &[own], &[], &Found::Listed(vec![]));
        let ours = existing(&writes.unwrap().apply[0]);
        let live = vec![owner().uid.to_string()];
        assert!(!orphaned(&ours, &live, |_| true), "its IstioCACerts lives");
        assert!(orphaned(&ours, &[], |_| true), "its IstioCACerts is gone");
        assert!(
            !orphaned(&ours, &[], |ns| ns == "other"),
            "another namespace's controller leaves it"
        );
        let mut foreign = ours.clone();
        foreign.labels.remove(MANAGED_BY_LABEL);
        assert!(!orphaned(&foreign, &[], |_| true), "not ours");
    }
}
