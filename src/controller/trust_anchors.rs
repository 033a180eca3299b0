//! The IO around an IstioCACerts' trust anchors and published root: reading each anchor's
//! ConfigMap or Secret key, and writing this cluster's own root into the `publishRoot`
//! ConfigMap. The decisions live in [`crate::istio::trust_bundle`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::Context;
use crate::FIELD_MANAGER;
use crate::api::istio_cacerts::{IstioCACerts, TRUST_DOMAIN_LABEL, TrustAnchor};
use crate::error::{Error, Result};
use crate::istio::cacerts::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, OWNER_ANNOTATION, Problem};
use crate::istio::trust_bundle::{AnchorInput, Fetched};
use crate::pki::Certificate;

/// Reasons of the `RootPublished` condition.
pub mod reason {
    pub const PUBLISHED: &str = "Published";
    pub const NOT_OWNED: &str = "NotOwned";
    pub const NO_ROOT: &str = "NoRoot";
    pub const WRITE_FAILED: &str = "WriteFailed";
}

/// The condition that reports `spec.publishRoot`.
pub const ROOT_PUBLISHED: &str = "RootPublished";

/// Reads every anchor's source. A missing object or key is an answer ([`Fetched`]); only a
/// failing API call is an error (retried).
pub async fn read_anchors(ctx: &Context, namespace: &str, anchors: &[TrustAnchor]) -> Result<Vec<AnchorInput>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut out = Vec::with_capacity(anchors.len());
    for anchor in anchors {
        let (source, fetched) = match (&anchor.config_map_key_ref, &anchor.secret_key_ref) {
            (Some(r), None) => {
                let source = format!("ConfigMap {namespace}/{} key {}", r.name, r.key);
                let found = config_maps
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| Error::kube(format!("reading ConfigMap {namespace}/{}", r.name), e))?;
                let fetched = match found {
                    None => Fetched::ObjectNotFound,
                    Some(cm) => match (
                        cm.data.as_ref().and_then(|d| d.get(&r.key)),
                        cm.binary_data.as_ref().and_then(|d| d.get(&r.key)),
                    ) {
                        (Some(text), _) => Fetched::Found(text.clone().into_bytes()),
                        (None, Some(bytes)) => Fetched::Found(bytes.0.clone()),
                        (None, None) => Fetched::KeyNotFound,
                    },
                };
                (source, fetched)
            }
            (None, Some(r)) => {
                let source = format!("Secret {namespace}/{} key {}", r.name, r.key);
                let found = secrets
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| Error::kube(format!("reading Secret {namespace}/{}", r.name), e))?;
                let fetched = match found {
                    None => Fetched::ObjectNotFound,
                    Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(bytes) => Fetched::Found(bytes.0.clone()),
                        None => Fetched::KeyNotFound,
                    },
                };
                (source, fetched)
            }
            _ => (String::new(), Fetched::NotExactlyOneSource),
        };
        out.push(AnchorInput {
            spec: anchor.clone(),
            source,
            fetched,
        });
    }
    Ok(out)
}

/// The bytes of a published root: the PEM of each own root, in order. Always the same bytes
/// for the same roots, so a re-publish is no change.
pub fn published_pem(own_roots: &[Certificate]) -> String {
    own_roots.iter().map(Certificate::to_pem).collect()
}

/// Writes `publishRoot` (server-side apply, only when something differs). Refuses a
/// ConfigMap of that name that mesh-ca-issuer did not create. Ok(true) when written.
pub async fn publish_root(ctx: &Context, icc: &IstioCACerts, own_roots: &[Certificate]) -> Result<bool, Problem> {
    let Some(publish) = &icc.spec.publish_root else {
        return Ok(false);
    };
    let namespace = icc.namespace().unwrap_or_default();
    let display = format!("ConfigMap {namespace}/{}", publish.config_map_name);
    if own_roots.is_empty() {
        return Err(Problem {
            reason: reason::NO_ROOT,
            message: format!("{display} is not written yet: cacerts holds no verified bundle to take the root from"),
        });
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api.get_opt(&publish.config_map_name).await.map_err(|e| Problem {
        reason: reason::WRITE_FAILED,
        message: format!("reading {display} failed: {e}"),
    })?;
    let pem = published_pem(own_roots);
    let trust_domain = icc.spec.trust_domain.clone();
    if let Some(cm) = &existing {
        if cm.labels().get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY_VALUE) {
            return Err(Problem {
                reason: reason::NOT_OWNED,
                message: format!(
                    "{display} exists and was not created by mesh-ca-issuer; it is left untouched. Choose another publishRoot.configMapName or delete it"
                ),
            });
        }
        let same = cm.data.as_ref().and_then(|d| d.get(&publish.key)) == Some(&pem)
            && cm.labels().get(TRUST_DOMAIN_LABEL) == Some(&trust_domain)
            && cm.annotations().get(OWNER_ANNOTATION) == Some(&icc.name_any());
        if same {
            return Ok(false);
        }
    }
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": publish.config_map_name,
            "namespace": namespace,
            "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, TRUST_DOMAIN_LABEL: trust_domain},
            "annotations": {OWNER_ANNOTATION: icc.name_any()},
        },
        "data": BTreeMap::from([(publish.key.clone(), pem)]),
    });
    api.patch(
        &publish.config_map_name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|e| Problem {
        reason: reason::WRITE_FAILED,
        message: format!("writing {display} failed: {e}"),
    })?;
    Ok(true)
}
