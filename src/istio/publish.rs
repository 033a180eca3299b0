//! `spec.publishRoot`: this cluster's own root(s) as PEM in a ConfigMap that peers copy
//! (`meshca federate`). Which bytes, whether the ConfigMap may be written (only one that
//! mesh-ca-issuer created), and whether anything differs. Pure; the write is the controller's.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::cacerts::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem};
use crate::api::istio_cacerts::{PublishRoot, TRUST_DOMAIN_LABEL};
use crate::pki::Certificate;

/// The condition that reports `spec.publishRoot`.
pub const ROOT_PUBLISHED: &str = "RootPublished";

/// Reasons of the `RootPublished` condition.
pub mod reason {
    pub const PUBLISHED: &str = "Published";
    pub const NOT_OWNED: &str = "NotOwned";
    pub const NO_ROOT: &str = "NoRoot";
    pub const WRITE_FAILED: &str = "WriteFailed";
}

/// The publishRoot ConfigMap as observed.
#[derive(Clone, Debug)]
pub enum Found {
    Absent,
    Present(Box<ConfigMap>),
    /// Reading it failed: the API server's answer.
    Unreadable(String),
}

/// The server-side apply that publishes the root(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishWrite {
    pub config_map_name: String,
    pub key: String,
    pub pem: String,
    pub trust_domain: String,
    /// The IstioCACerts that owns it (annotation).
    pub owner: String,
}

impl PublishWrite {
    /// The whole ConfigMap as it is applied: the labels that mark it ours and its trust domain.
    pub fn apply_patch(&self, namespace: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.config_map_name,
                "namespace": namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, TRUST_DOMAIN_LABEL: self.trust_domain},
                "annotations": {OWNER_ANNOTATION: self.owner},
            },
            "data": BTreeMap::from([(self.key.clone(), self.pem.clone())]),
        })
    }
}

/// The bytes of a published root: the PEM of each own root, in order. Always the same bytes
/// for the same roots, so a re-publish is no change.
pub fn published_pem(own_roots: &[Certificate]) -> String {
    own_roots.iter().map(Certificate::to_pem).collect()
}

/// What publishing `own_roots` takes: `Ok(Some(write))` when the ConfigMap differs,
/// `Ok(None)` when it already says exactly this, or why it is not written. Never a ConfigMap
/// of that name that mesh-ca-issuer did not create.
pub fn plan(
    publish: &PublishRoot,
    namespace: &str,
    owner: &str,
    trust_domain: &str,
    own_roots: &[Certificate],
    found: &Found,
) -> Result<Option<PublishWrite>, Problem> {
    let display = format!("ConfigMap {namespace}/{}", publish.config_map_name);
    if own_roots.is_empty() {
        return Err(Problem {
            reason: reason::NO_ROOT,
            message: format!("{display} is not written yet: cacerts holds no verified bundle to take the root from"),
        });
    }
    let write = PublishWrite {
        config_map_name: publish.config_map_name.clone(),
        key: publish.key.clone(),
        pem: published_pem(own_roots),
        trust_domain: trust_domain.to_string(),
        owner: owner.to_string(),
    };
    let cm = match found {
        Found::Absent => return Ok(Some(write)),
        Found::Unreadable(e) => {
            return Err(Problem {
                reason: reason::WRITE_FAILED,
                message: format!("reading {display} failed: {e}"),
            });
        }
        Found::Present(cm) => cm,
    };
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return Err(Problem {
            reason: reason::NOT_OWNED,
            message: format!(
                "{display} exists and was not created by mesh-ca-issuer; it is left untouched. Choose another publishRoot.configMapName or delete it"
            ),
        });
    }
    let annotations = cm.metadata.annotations.clone().unwrap_or_default();
    let same = cm.data.as_ref().and_then(|d| d.get(&write.key)) == Some(&write.pem)
        && labels.get(TRUST_DOMAIN_LABEL).map(String::as_str) == Some(trust_domain)
        && annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(owner);
    Ok((!same).then_some(write))
}

/// The `RootPublished` message once the ConfigMap holds `own_roots`.
pub fn published_message(
    publish: &PublishRoot,
    namespace: &str,
    trust_domain: &str,
    own_roots: &[Certificate],
) -> String {
    format!(
        "ConfigMap {namespace}/{} key {} holds this cluster's root {} (trust domain {trust_domain})",
        publish.config_map_name,
        publish.key,
        own_roots
            .iter()
            .map(Certificate::subject)
            .collect::<Vec<_>>()
            .join(", "),
    )
}
