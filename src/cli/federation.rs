//! What `meshca federate` and `meshca unfederate` write where, decided from what was read of
//! every cluster before anything is written. Pure: no client in here.
//!
//! In cluster X, the root that cluster Y publishes becomes a ConfigMap `meshca-peer-<Y>` (a
//! byte-for-byte copy of Y's published PEM, labelled with Y's cluster id and trust domain) and a
//! `spec.trustAnchors` entry `peer-<Y>` pointing at it. The CLI owns exactly those entries
//! (server-side apply, field manager [`FIELD_MANAGER`]); entries others wrote are never
//! touched. `<Y>` is Y's kubeconfig context, made into a DNS label; clusters are told apart by
//! the UID of their `kube-system` namespace, which also catches one cluster under two contexts.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::api::istio_cacerts::{
    BundleEndpointProfile, BundleRef, IstioCACerts, KeyRef, SpiffeBundleEndpoint, TRUST_DOMAIN_LABEL, TrustAnchor,
};
use crate::istio::cacerts::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION};
use crate::istio::trust_bundle::{self, CheckedAnchor};
use crate::pki::{Certificate, pem};

/// The field manager of every write the CLI makes.
pub const FIELD_MANAGER: &str = "meshca-cli";
/// On a peer ConfigMap: the UID of the peer cluster's kube-system namespace.
pub const PEER_CLUSTER_LABEL: &str = "meshca.io/peer-cluster";
/// On a peer ConfigMap: the context it was copied from (for people reading it).
pub const PEER_CONTEXT_ANNOTATION: &str = "meshca.io/peer-context";
/// The key peer ConfigMaps hold the PEM under.
pub const PEER_KEY: &str = "root-cert.pem";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", FIELD_MANAGER);

/// What was read of one cluster.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub context: String,
    /// UID of kube-system: the cluster's identity.
    pub cluster_id: String,
    pub istio_cacerts: IstioCACerts,
    /// The `publishRoot` ConfigMap, when one is configured and exists.
    pub published: Option<ConfigMap>,
    /// ConfigMaps in the namespace labelled as peer copies by this CLI.
    pub peer_config_maps: Vec<ConfigMap>,
}

/// A cluster's published root, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedRoot {
    /// Exactly the bytes published: copied as they are, so they stay byte-stable.
    pub pem: String,
    pub certificates: Vec<Certificate>,
    pub trust_domain: String,
}

/// What to write into one cluster.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterPlan {
    pub context: String,
    pub namespace: String,
    pub name: String,
    /// Peer ConfigMaps to apply: (name, labels, annotations, PEM).
    pub apply_config_maps: Vec<PeerConfigMap>,
    /// The complete list of trust anchors the CLI owns after the change.
    pub anchors: Vec<TrustAnchor>,
    /// Peer ConfigMaps to delete (after the anchors no longer name them).
    pub delete_config_maps: Vec<String>,
    /// The mesh config the cluster still needs, for the anchors the CLI owns.
    pub mesh_config: String,
}

/// A peer's root as a ConfigMap in this cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfigMap {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub pem: String,
}

/// A context name as a DNS label fragment: lower case, `[a-z0-9-]`, at most 40 characters.
pub fn label_of(context: &str) -> String {
    let mut out: String = context
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(40);
    out.trim_matches('-').to_string()
}

pub fn anchor_name(peer_context: &str) -> String {
    format!("peer-{}", label_of(peer_context))
}

pub fn config_map_name(peer_context: &str) -> String {
    format!("meshca-peer-{}", label_of(peer_context))
}

/// Checks what a cluster publishes: `publishRoot` configured, the ConfigMap and key there, and
/// every certificate a CA valid now.
pub fn published_root(snapshot: &Snapshot, now: Timestamp) -> Result<PublishedRoot, String> {
    let icc = &snapshot.istio_cacerts;
    let at = format!(
        "context {}: IstioCACerts {}/{}",
        snapshot.context,
        icc.namespace().unwrap_or_default(),
        icc.name_any()
    );
    let Some(publish) = &icc.spec.publish_root else {
        return Err(format!(
            "{at} has no spec.publishRoot: set it (e.g. publishRoot: {{configMapName: istio-ca-root-published}}) so its root can be shared"
        ));
    };
    let display = format!(
        "ConfigMap {}/{}",
        icc.namespace().unwrap_or_default(),
        publish.config_map_name
    );
    let Some(cm) = &snapshot.published else {
        return Err(format!(
            "{at}: {display} (spec.publishRoot) does not exist yet: is the controller running and the IstioCACerts Ready?"
        ));
    };
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(&publish.key)) else {
        return Err(format!("{at}: {display} has no key {}", publish.key));
    };
    let not_valid = |why: String| format!("{at}: {display} key {} is not a valid CA: {why}", publish.key);
    let blocks = pem::decode_all(text.as_bytes(), "the published root").map_err(|e| not_valid(e.to_string()))?;
    let mut certificates = Vec::new();
    for (label, der) in blocks {
        if label != pem::CERTIFICATE {
            return Err(not_valid(format!("it holds a PEM block of type {label:?}")));
        }
        let cert = Certificate::from_der(der).map_err(|e| not_valid(e.to_string()))?;
        if !cert.is_ca() || cert.key_usage_cert_sign() == Some(false) {
            return Err(not_valid(format!("{} is not a CA certificate", cert.subject())));
        }
        if !cert.is_valid_at(now) {
            return Err(not_valid(format!(
                "{} is valid only from {} to {}",
                cert.subject(),
                cert.not_before(),
                cert.not_after()
            )));
        }
        certificates.push(cert);
    }
    // A ConfigMap of that name that the peer's controller refuses (`NotOwned`) must never be
    // copied into every other cluster: it must be the controller's, and hold exactly the roots
    // the peer's cacerts trusts as its own (its status, which only the controller writes).
    let ours = cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY_VALUE)
        && cm.annotations().get(OWNER_ANNOTATION) == Some(&icc.name_any());
    if !ours {
        return Err(format!(
            "{at}: {display} was not written by mesh-ca-issuer for this IstioCACerts (no label {MANAGED_BY_LABEL}={MANAGED_BY_VALUE} and annotation {OWNER_ANNOTATION}={}): a ConfigMap made by hand is never copied to other clusters. Delete it and let the controller publish the root",
            icc.name_any()
        ));
    }
    let own = own_roots_in_status(icc);
    let published: BTreeSet<String> = certificates.iter().map(Certificate::fingerprint).collect();
    if own.is_empty() {
        return Err(format!(
            "{at} shows no roots in its status yet: is the controller running and the IstioCACerts Ready?"
        ));
    }
    if published != own {
        let list = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        return Err(format!(
            "{at}: {display} holds the roots {} but the cluster's cacerts trusts {} as its own (status.roots): it was changed by hand or is not published yet; nothing is copied until they agree",
            list(&published),
            list(&own)
        ));
    }
    Ok(PublishedRoot {
        pem: text.clone(),
        certificates,
        trust_domain: icc.spec.trust_domain.clone(),
    })
}

/// The fingerprints (lower case) of the roots a cluster's `cacerts` trusts as its own, as its
/// status shows them: `status.roots` (which never lists trust anchors; any that did would not
/// count).
pub fn own_roots_in_status(icc: &IstioCACerts) -> BTreeSet<String> {
    let Some(status) = &icc.status else {
        return BTreeSet::new();
    };
    let anchors: BTreeSet<String> = status
        .trust_anchors
        .iter()
        .map(|a| a.certificate.fingerprint_sha256.to_ascii_lowercase())
        .collect();
    status
        .roots
        .iter()
        .map(|r| r.fingerprint_sha256.to_ascii_lowercase())
        .filter(|fp| !anchors.contains(fp))
        .collect()
}

/// Refuses one cluster under two contexts.
pub fn distinct(snapshots: &[Snapshot]) -> Result<(), String> {
    for (i, a) in snapshots.iter().enumerate() {
        if let Some(b) = snapshots[i + 1..].iter().find(|b| b.cluster_id == a.cluster_id) {
            return Err(format!(
                "contexts {} and {} are the same cluster (kube-system UID {}): name each cluster once",
                a.context, b.context, a.cluster_id
            ));
        }
        if let Some(b) = snapshots[i + 1..]
            .iter()
            .find(|b| label_of(&b.context) == label_of(&a.context))
        {
            return Err(format!(
                "contexts {} and {} give the same peer name {}: rename one context",
                a.context,
                b.context,
                anchor_name(&a.context)
            ));
        }
    }
    Ok(())
}

/// The names of the `spec.trustAnchors` entries that `manager` applied (from managedFields).
pub fn owned_anchor_names(icc: &IstioCACerts, manager: &str) -> Vec<String> {
    let mut names = Vec::new();
    for entry in icc.managed_fields() {
        if entry.manager.as_deref() != Some(manager) || entry.operation.as_deref() != Some("Apply") {
            continue;
        }
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let Some(list) = fields.0.get("f:spec").and_then(|s| s.get("f:trustAnchors")) else {
            continue;
        };
        let Some(items) = list.as_object() else { continue };
        for key in items.keys() {
            // Keys of an associative list look like `k:{"name":"peer-b"}`.
            let Some(json) = key.strip_prefix("k:") else { continue };
            if let Ok(serde_json::Value::Object(k)) = serde_json::from_str::<serde_json::Value>(json)
                && let Some(serde_json::Value::String(name)) = k.get("name")
                && !names.contains(name)
            {
                names.push(name.clone());
            }
        }
    }
    names
}

fn entries_owned(icc: &IstioCACerts) -> Vec<TrustAnchor> {
    let owned = owned_anchor_names(icc, FIELD_MANAGER);
    icc.spec
        .trust_anchors
        .iter()
        .filter(|a| owned.contains(&a.name))
        .cloned()
        .collect()
}

fn mesh_config_for(trust_domain: &str, anchors: &[TrustAnchor], pems: &BTreeMap<String, Vec<Certificate>>) -> String {
    let checked: Vec<CheckedAnchor> = anchors
        .iter()
        .map(|a| CheckedAnchor {
            name: a.name.clone(),
            trust_domains: a.trust_domains.clone(),
            certificates: pems.get(&a.name).cloned().unwrap_or_default(),
        })
        .collect();
    trust_bundle::mesh_config(trust_domain, &checked).snippet
}

/// Every cluster trusts every other: a full mesh of anchors.
/// The `spiffeBundleEndpoint` of an anchor for `peer`, served at `url`: the peer must serve a
/// bundle endpoint with its default SVID (a `tlsSecretName` endpoint's profile and CAs are the
/// user's to write) and serve exactly the roots it publishes, which become the bootstrap.
fn endpoint_of(
    peer: &Snapshot,
    root: &PublishedRoot,
    url: &str,
    bootstrap: &str,
) -> Result<SpiffeBundleEndpoint, String> {
    let icc = &peer.istio_cacerts;
    let at = format!(
        "context {}: IstioCACerts {}/{}",
        peer.context,
        icc.namespace().unwrap_or_default(),
        icc.name_any()
    );
    if !url.starts_with("https://") {
        return Err(format!(
            "--bundle-endpoint {}={url}: the URL must be https://",
            peer.context
        ));
    }
    let enabled = icc.spec.bundle_endpoint.as_ref().is_some_and(|e| e.enabled);
    let Some(status) = icc
        .status
        .as_ref()
        .and_then(|s| s.bundle_endpoint.as_ref())
        .filter(|_| enabled)
    else {
        return Err(format!(
            "{at} serves no bundle endpoint (spec.bundleEndpoint.enabled and status.bundleEndpoint): enable it, or federate without --bundle-endpoint {}",
            peer.context
        ));
    };
    if icc
        .spec
        .bundle_endpoint
        .as_ref()
        .is_some_and(|e| e.tls_secret_name.is_some())
    {
        return Err(format!(
            "{at} serves its bundle endpoint with its own certificate (tlsSecretName): write a spiffeBundleEndpoint anchor with the profile and CAs that certificate needs (docs/federation.md)"
        ));
    }
    let Some(id) = status.endpoint_spiffe_id.clone() else {
        return Err(format!("{at}: status.bundleEndpoint names no endpointSPIFFEID yet"));
    };
    let published: BTreeSet<String> = root.certificates.iter().map(Certificate::fingerprint).collect();
    let served: BTreeSet<String> = status.served_roots.iter().cloned().collect();
    if published != served {
        return Err(format!(
            "{at} serves other roots ({}) than it publishes ({}): wait until its status settles, then run this again",
            status.served_roots.join(", "),
            published.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(SpiffeBundleEndpoint {
        url: url.to_string(),
        profile: BundleEndpointProfile::HttpsSpiffe,
        endpoint_spiffe_id: Some(id),
        bootstrap_bundle: Some(BundleRef {
            config_map_key_ref: Some(KeyRef {
                name: bootstrap.to_string(),
                key: PEER_KEY.to_string(),
            }),
            secret_key_ref: None,
        }),
        ca_bundle: None,
    })
}

/// Every cluster trusts every other one: by a pinned copy of its published roots, or, for a
/// peer in `endpoints` (context → URL), by following its bundle endpoint, with that copy as
/// the pinned bootstrap bundle.
pub fn plan_federation(
    snapshots: &[Snapshot],
    endpoints: &BTreeMap<String, String>,
    now: Timestamp,
) -> Result<Vec<ClusterPlan>, Vec<String>> {
    let mut problems = Vec::new();
    if let Err(e) = distinct(snapshots) {
        problems.push(e);
    }
    let published: Vec<Option<PublishedRoot>> = snapshots
        .iter()
        .map(|s| published_root(s, now).map_err(|e| problems.push(e)).ok())
        .collect();
    let followed: Vec<Option<SpiffeBundleEndpoint>> = snapshots
        .iter()
        .zip(&published)
        .map(|(s, root)| {
            let (url, root) = (endpoints.get(&s.context)?, root.as_ref()?);
            endpoint_of(s, root, url, &config_map_name(&s.context))
                .map_err(|e| problems.push(e))
                .ok()
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut plans = Vec::new();
    for (x, snapshot) in snapshots.iter().enumerate() {
        let icc = &snapshot.istio_cacerts;
        let mut anchors = entries_owned(icc);
        let mut apply_config_maps = Vec::new();
        let mut pems: BTreeMap<String, Vec<Certificate>> = BTreeMap::new();
        for (y, peer) in snapshots.iter().enumerate() {
            if x == y {
                continue;
            }
            let Some(root) = &published[y] else { continue };
            let name = anchor_name(&peer.context);
            let cm_name = config_map_name(&peer.context);
            apply_config_maps.push(PeerConfigMap {
                name: cm_name.clone(),
                labels: BTreeMap::from([
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (PEER_CLUSTER_LABEL.to_string(), peer.cluster_id.clone()),
                    (TRUST_DOMAIN_LABEL.to_string(), root.trust_domain.clone()),
                ]),
                annotations: BTreeMap::from([(PEER_CONTEXT_ANNOTATION.to_string(), peer.context.clone())]),
                pem: root.pem.clone(),
            });
            let entry = TrustAnchor {
                name: name.clone(),
                trust_domains: vec![root.trust_domain.clone()],
                // Followed: the copy is only the bootstrap bundle.
                config_map_key_ref: followed[y].is_none().then(|| KeyRef {
                    name: cm_name,
                    key: PEER_KEY.to_string(),
                }),
                secret_key_ref: None,
                spiffe_bundle_endpoint: followed[y].clone(),
                // Pinned: should the copy ever hold anything else, the controller refuses it
                // (for an endpoint anchor the pins hold for the bootstrap bundle only).
                fingerprints: root.certificates.iter().map(Certificate::fingerprint).collect(),
                allow_intermediate: false,
            };
            pems.insert(name.clone(), root.certificates.clone());
            match anchors.iter_mut().find(|a| a.name == name) {
                Some(existing) => *existing = entry,
                None => anchors.push(entry),
            }
        }
        plans.push(ClusterPlan {
            context: snapshot.context.clone(),
            namespace: icc.namespace().unwrap_or_default(),
            name: icc.name_any(),
            mesh_config: mesh_config_for(&icc.spec.trust_domain, &anchors, &pems),
            apply_config_maps,
            anchors,
            delete_config_maps: Vec::new(),
        });
    }
    Ok(plans)
}

/// Every cluster stops trusting every other one named: the CLI's anchors and ConfigMaps for
/// those peers go; anchors for peers not named stay.
pub fn plan_unfederation(snapshots: &[Snapshot]) -> Result<Vec<ClusterPlan>, Vec<String>> {
    distinct(snapshots).map_err(|e| vec![e])?;
    let mut plans = Vec::new();
    for (x, snapshot) in snapshots.iter().enumerate() {
        let icc = &snapshot.istio_cacerts;
        let peers: Vec<&Snapshot> = snapshots
            .iter()
            .enumerate()
            .filter(|(y, _)| *y != x)
            .map(|(_, s)| s)
            .collect();
        // The peer ConfigMaps of the named peers, found by cluster id (so a renamed context
        // still unfederates) or by the name this CLI gives them.
        let doomed: Vec<String> = snapshot
            .peer_config_maps
            .iter()
            .filter(|cm| {
                let id = cm.labels().get(PEER_CLUSTER_LABEL);
                peers
                    .iter()
                    .any(|p| id == Some(&p.cluster_id) || cm.name_any() == config_map_name(&p.context))
            })
            .map(|cm| cm.name_any())
            .collect();
        let anchors: Vec<TrustAnchor> = entries_owned(icc)
            .into_iter()
            .filter(|a| {
                let via_config_map = a.config_map_key_ref.as_ref().is_some_and(|r| doomed.contains(&r.name));
                let by_name = peers.iter().any(|p| a.name == anchor_name(&p.context));
                !(via_config_map || by_name)
            })
            .collect();
        plans.push(ClusterPlan {
            context: snapshot.context.clone(),
            namespace: icc.namespace().unwrap_or_default(),
            name: icc.name_any(),
            mesh_config: mesh_config_for(&icc.spec.trust_domain, &[], &BTreeMap::new()),
            apply_config_maps: Vec::new(),
            anchors,
            delete_config_maps: doomed,
        });
    }
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::api::istio_cacerts::{
        IstioCACertsSpec, IstioCACertsStatus, PublishRoot, TrackedAnchor, TrackedCertificate,
    };
    use crate::pki::sign::self_signed_root;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn now() -> Timestamp {
        Timestamp::now()
    }

    fn snapshot(context: &str, id: &str, root: &Certificate) -> Snapshot {
        let mut icc = IstioCACerts::new(
            "istiod",
            IstioCACertsSpec {
                source_secret_name: "istiod-intermediate".into(),
                trust_domain: format!("{context}.example"),
                publish_root: Some(PublishRoot {
                    config_map_name: "root".into(),
                    key: "root-cert.pem".into(),
                }),
                ..Default::default()
            },
        );
        icc.metadata.namespace = Some("istio-system".into());
        // As the controller leaves it: the root in status, published by it.
        icc.status = Some(IstioCACertsStatus {
            roots: vec![TrackedCertificate {
                fingerprint_sha256: root.fingerprint(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let published: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "root", "namespace": "istio-system",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE}, "annotations": {OWNER_ANNOTATION: "istiod"},
            },
            "data": {"root-cert.pem": root.to_pem()},
        }))
        .unwrap();
        Snapshot {
            context: context.into(),
            cluster_id: id.into(),
            istio_cacerts: icc,
            published: Some(published),
            peer_config_maps: Vec::new(),
        }
    }

    fn root() -> Certificate {
        self_signed_root(&RootBootstrap::default(), now() - jiff::SignedDuration::from_hours(1))
            .unwrap()
            .0
    }

    #[test]
    fn three_clusters_become_a_full_mesh_of_anchors() {
        let snaps = vec![
            snapshot("a", "1", &root()),
            snapshot("b", "2", &root()),
            snapshot("c", "3", &root()),
        ];
        let plans = plan_federation(&snaps, &BTreeMap::new(), now()).unwrap();
        let names: Vec<Vec<String>> = plans
            .iter()
            .map(|p| p.anchors.iter().map(|a| a.name.clone()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["peer-b", "peer-c"],
                vec!["peer-a", "peer-c"],
                vec!["peer-a", "peer-b"]
            ]
        );
        // A's copy of B's root is B's published bytes exactly, labelled with B's identity.
        let copy = &plans[0].apply_config_maps[0];
        assert_eq!(copy.name, "meshca-peer-b");
        assert_eq!(
            &copy.pem,
            snaps[1]
                .published
                .as_ref()
                .unwrap()
                .data
                .as_ref()
                .unwrap()
                .get("root-cert.pem")
                .unwrap()
        );
        assert_eq!(copy.labels[PEER_CLUSTER_LABEL], "2");
        assert_eq!(copy.labels[TRUST_DOMAIN_LABEL], "b.example");
        assert!(plans[0].mesh_config.contains("b.example") && plans[0].mesh_config.contains("c.example"));
    }

    #[test]
    fn refusals_name_the_context_and_write_nothing() {
        let r = root();
        let same = vec![snapshot("a", "1", &r), snapshot("a2", "1", &r)];
        assert!(plan_federation(&same, &BTreeMap::new(), now()).unwrap_err()[0].contains("same cluster"));
        let mut unpublished = snapshot("b", "2", &root());
        unpublished.istio_cacerts.spec.publish_root = None;
        let errs = plan_federation(&[snapshot("a", "1", &r), unpublished], &BTreeMap::new(), now()).unwrap_err();
        assert!(
            errs[0].contains("context b") && errs[0].contains("publishRoot"),
            "{errs:?}"
        );
        let mut missing = snapshot("b", "2", &root());
        missing.published = None;
        assert!(
            plan_federation(&[snapshot("a", "1", &r), missing], &BTreeMap::new(), now()).unwrap_err()[0]
                .contains("does not exist")
        );
        // A published leaf, or garbage: not a valid CA.
        let mut garbage = snapshot("b", "2", &root());
        garbage.published.as_mut().unwrap().data = Some(BTreeMap::from([("root-cert.pem".into(), "garbage".into())]));
        assert!(
            plan_federation(&[snapshot("a", "1", &r), garbage], &BTreeMap::new(), now()).unwrap_err()[0]
                .contains("not a valid CA")
        );
    }

    /// Only what the peer's controller published, holding exactly the roots the peer's status
    /// shows as its own, is copied; the copy's anchor pins those roots.
    #[test]
    fn only_the_peers_own_published_roots_are_copied_and_pinned() {
        let (a_root, b_root) = (root(), root());
        let a = snapshot("a", "1", &a_root);
        // Made by hand: the peer's controller refuses it (NotOwned), so it is never copied.
        let mut hand_made = snapshot("b", "2", &b_root);
        if let Some(cm) = hand_made.published.as_mut() {
            cm.metadata.labels = None;
            cm.metadata.annotations = None;
        }
        let errs = plan_federation(&[a.clone(), hand_made], &BTreeMap::new(), now()).unwrap_err();
        assert!(
            errs[0].contains("context b") && errs[0].contains("not written by mesh-ca-issuer"),
            "{errs:?}"
        );
        // The controller's ConfigMap, but another root than the peer's cacerts holds.
        let mut swapped = snapshot("b", "2", &b_root);
        if let Some(status) = swapped.istio_cacerts.status.as_mut() {
            status.roots[0].fingerprint_sha256 = root().fingerprint();
        }
        let errs = plan_federation(&[a.clone(), swapped], &BTreeMap::new(), now()).unwrap_err();
        assert!(errs[0].contains("status.roots"), "{errs:?}");
        // Not Ready yet: no roots in status.
        let mut fresh = snapshot("b", "2", &b_root);
        fresh.istio_cacerts.status = None;
        let errs = plan_federation(&[a.clone(), fresh], &BTreeMap::new(), now()).unwrap_err();
        assert!(errs[0].contains("no roots in its status"), "{errs:?}");
        // The peer's own anchors in status.roots are not its own roots.
        let mut federated = snapshot("b", "2", &b_root);
        if let Some(status) = federated.istio_cacerts.status.as_mut() {
            let anchor = TrackedCertificate {
                fingerprint_sha256: a_root.fingerprint(),
                ..Default::default()
            };
            status.roots.push(anchor.clone());
            status.trust_anchors.push(TrackedAnchor {
                name: "peer-a".into(),
                trust_domains: vec![],
                certificate: anchor,
                source: None,
            });
        }
        let plans = plan_federation(&[a, federated], &BTreeMap::new(), now()).unwrap();
        assert_eq!(plans[0].anchors[0].fingerprints, vec![b_root.fingerprint()]);
        assert_eq!(plans[1].anchors[0].fingerprints, vec![a_root.fingerprint()]);
    }

    #[test]
    fn unfederation_removes_only_the_named_peers_entries_owned_by_the_cli() {
        let snaps = vec![snapshot("a", "1", &root()), snapshot("b", "2", &root())];
        let mut a = snaps[0].clone();
        let plan = &plan_federation(&snaps, &BTreeMap::new(), now()).unwrap()[0];
        // A after federation: the CLI's entry for b, and a hand-made one.
        let mut anchors = plan.anchors.clone();
        anchors.push(TrustAnchor {
            name: "by-hand".into(),
            trust_domains: vec![],
            config_map_key_ref: Some(KeyRef {
                name: "x".into(),
                key: "k".into(),
            }),
            spiffe_bundle_endpoint: None,
            secret_key_ref: None,
            fingerprints: vec![],
            allow_intermediate: false,
        });
        a.istio_cacerts.spec.trust_anchors = anchors;
        a.istio_cacerts.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(FIELD_MANAGER.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(serde_json::json!({
                "f:spec": {"f:trustAnchors": {r#"k:{"name":"peer-b"}"#: {".": {}}}}
            }))),
            ..Default::default()
        }]);
        let peer_cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "meshca-peer-b", "labels": {PEER_CLUSTER_LABEL: "2"}},
        }))
        .unwrap();
        a.peer_config_maps = vec![peer_cm];
        assert_eq!(owned_anchor_names(&a.istio_cacerts, FIELD_MANAGER), vec!["peer-b"]);
        let plans = plan_unfederation(&[a, snaps[1].clone()]).unwrap();
        assert!(
            plans[0].anchors.is_empty(),
            "the CLI owns no other entry; by-hand is not its to list"
        );
        assert_eq!(plans[0].delete_config_maps, vec!["meshca-peer-b"]);
    }

    #[test]
    fn a_peer_named_with_its_bundle_endpoint_is_followed_with_its_copy_as_the_pinned_bootstrap() {
        use crate::api::istio_cacerts::{BundleEndpoint, BundleEndpointStatus, bundle_endpoint_spiffe_id};
        let (ra, rb) = (root(), root());
        let a = snapshot("a", "1", &ra);
        let mut b = snapshot("b", "2", &rb);
        let url = "https://bundle.b.example:8443/b.example";
        let endpoints = BTreeMap::from([("b".to_string(), url.to_string())]);
        let errs = plan_federation(&[a.clone(), b.clone()], &endpoints, now()).unwrap_err();
        assert!(
            errs[0].contains("context b") && errs[0].contains("serves no bundle endpoint"),
            "{errs:?}"
        );

        b.istio_cacerts.spec.bundle_endpoint = Some(BundleEndpoint {
            enabled: true,
            tls_secret_name: None,
            refresh_hint: "5m".into(),
        });
        let serving = |roots: Vec<String>| BundleEndpointStatus {
            sequence: 1,
            served_roots: roots,
            endpoint_spiffe_id: Some(bundle_endpoint_spiffe_id("b.example")),
            serving_certificate_not_after: None,
        };
        b.istio_cacerts.status.as_mut().unwrap().bundle_endpoint = Some(serving(vec![ra.fingerprint()]));
        let errs = plan_federation(&[a.clone(), b.clone()], &endpoints, now()).unwrap_err();
        assert!(errs[0].contains("serves other roots"), "{errs:?}");

        b.istio_cacerts.status.as_mut().unwrap().bundle_endpoint = Some(serving(vec![rb.fingerprint()]));
        let plans = plan_federation(&[a.clone(), b.clone()], &endpoints, now()).unwrap();
        let at_a = &plans[0].anchors[0];
        let followed = at_a.spiffe_bundle_endpoint.as_ref().expect("A follows B's endpoint");
        assert_eq!(at_a.config_map_key_ref, None);
        assert_eq!(followed.url, url);
        assert_eq!(followed.profile, BundleEndpointProfile::HttpsSpiffe);
        assert_eq!(
            followed.endpoint_spiffe_id.as_deref(),
            Some("spiffe://b.example/meshca/bundle-endpoint")
        );
        let bootstrap = followed
            .bootstrap_bundle
            .as_ref()
            .unwrap()
            .config_map_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(bootstrap.name, "meshca-peer-b");
        assert_eq!(at_a.fingerprints, vec![rb.fingerprint()]);
        assert_eq!(
            plans[0].apply_config_maps[0].pem,
            rb.to_pem(),
            "the bootstrap is the copy"
        );
        // A serves no endpoint and was not named: B still copies A's root.
        let at_b = &plans[1].anchors[0];
        assert!(at_b.config_map_key_ref.is_some() && at_b.spiffe_bundle_endpoint.is_none());

        let http = BTreeMap::from([("b".to_string(), "http://bundle.b.example/".to_string())]);
        let errs = plan_federation(&[a, b], &http, now()).unwrap_err();
        assert!(errs[0].contains("must be https://"), "{errs:?}");
    }

    #[test]
    fn context_names_become_dns_labels() {
        assert_eq!(
            anchor_name("arn:aws:eks:eu-west-1:1:cluster/Prod"),
            "peer-arn-aws-eks-eu-west-1-1-cluster-prod"
        );
        assert_eq!(config_map_name("meshca-fed-b"), "meshca-peer-meshca-fed-b");
    }
}
