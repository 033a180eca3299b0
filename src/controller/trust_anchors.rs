//! Reading an IstioCACerts' trust anchors: each anchor's ConfigMap or Secret key, or for an
//! anchor fed by a SPIFFE bundle endpoint, the last bundle accepted from it (kept by the
//! poller, `federation::poller`) or else its bootstrap bundle. The decisions live in
//! [`crate::istio::trust_bundle`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};

use super::Context;
use crate::api::istio_cacerts::{BundleRef, KeyRef, TrustAnchor};
use crate::error::{Error, Result};
use crate::istio::bundle_source::{self, Stored};
use crate::istio::trust_bundle::{AnchorInput, Fetched};

/// Reads every anchor's source. A missing object or key is an answer ([`Fetched`]); only a
/// failing API call is an error (retried).
pub async fn read_anchors(
    ctx: &Context,
    namespace: &str,
    icc: &str,
    anchors: &[TrustAnchor],
) -> Result<Vec<AnchorInput>> {
    let reader = Reader::new(ctx, namespace);
    let kept = if anchors.iter().any(|a| a.spiffe_bundle_endpoint.is_some()) {
        reader.kept_bundles(icc).await?
    } else {
        Kept::default()
    };
    let mut out = Vec::with_capacity(anchors.len());
    for anchor in anchors {
        // An endpoint anchor's pins hold for its bootstrap bundle only: a fetched bundle moves
        // on with the peer's rotations, authenticated by the one before it.
        let mut spec = anchor.clone();
        let (source, fetched, endpoint) = match (
            &anchor.config_map_key_ref,
            &anchor.secret_key_ref,
            &anchor.spiffe_bundle_endpoint,
        ) {
            (Some(r), None, None) => {
                let (source, fetched) = reader.config_map_key(r).await?;
                (source, fetched, None)
            }
            (None, Some(r), None) => {
                let (source, fetched) = reader.secret_key(r).await?;
                (source, fetched, None)
            }
            (None, None, Some(endpoint)) => {
                let stored = kept.sources.get(&anchor.name).filter(|s| s.is_for(anchor, endpoint));
                let bundle = stored.and_then(|_| kept.bundles.get(&bundle_source::key(&anchor.name)));
                match (stored, bundle) {
                    (Some(stored), Some(bundle)) => {
                        spec.fingerprints.clear();
                        (
                            format!(
                                "SPIFFE bundle endpoint {} (last accepted bundle, sequence {})",
                                endpoint.url,
                                stored.sequence.map_or_else(|| "none".into(), |s| s.to_string())
                            ),
                            Fetched::Found(bundle.clone().into_bytes()),
                            Some(stored.status()),
                        )
                    }
                    _ => {
                        let status = stored.cloned().unwrap_or_else(|| Stored {
                            url: endpoint.url.clone(),
                            ..Default::default()
                        });
                        match &endpoint.bootstrap_bundle {
                            Some(bootstrap) => {
                                let (source, fetched) = reader.bundle_ref(bootstrap).await?;
                                (
                                    format!(
                                        "bootstrap bundle ({source}) of SPIFFE bundle endpoint {}, until its first fetch",
                                        endpoint.url
                                    ),
                                    fetched,
                                    Some(status.status()),
                                )
                            }
                            None => (
                                format!("SPIFFE bundle endpoint {}", endpoint.url),
                                Fetched::NotYet(format!(
                                    "no bundle has been fetched from {} yet{}, and the anchor has no bootstrapBundle",
                                    endpoint.url,
                                    status.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                                )),
                                Some(status.status()),
                            ),
                        }
                    }
                }
            }
            _ => (String::new(), Fetched::NotExactlyOneSource, None),
        };
        out.push(AnchorInput {
            spec,
            source,
            fetched,
            endpoint,
        });
    }
    Ok(out)
}

/// What the poller keeps for one IstioCACerts: bundles by key, and their sources.
#[derive(Default)]
struct Kept {
    bundles: BTreeMap<String, String>,
    sources: BTreeMap<String, Stored>,
}

/// Reads keys of ConfigMaps and Secrets in one namespace.
pub struct Reader {
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    namespace: String,
}

impl Reader {
    pub fn new(ctx: &Context, namespace: &str) -> Self {
        Self {
            config_maps: Api::namespaced(ctx.client.clone(), namespace),
            secrets: Api::namespaced(ctx.client.clone(), namespace),
            namespace: namespace.to_string(),
        }
    }

    /// The kept bundles, from the ConfigMap the poller owns (one made by someone else is
    /// ignored: it would let anyone who may write ConfigMaps here pose as a peer's endpoint).
    async fn kept_bundles(&self, icc: &str) -> Result<Kept> {
        let name = bundle_source::config_map_name(icc);
        let Some(cm) = self
            .config_maps
            .get_opt(&name)
            .await
            .map_err(|e| Error::kube(format!("reading ConfigMap {}/{name}", self.namespace), e))?
        else {
            return Ok(Kept::default());
        };
        if !bundle_source::is_ours(cm.labels(), icc) {
            return Ok(Kept::default());
        }
        Ok(Kept {
            sources: bundle_source::parse_sources(
                cm.annotations()
                    .get(bundle_source::SOURCES_ANNOTATION)
                    .map(String::as_str),
            ),
            bundles: cm.data.unwrap_or_default(),
        })
    }

    pub async fn bundle_ref(&self, r: &BundleRef) -> Result<(String, Fetched)> {
        match (&r.config_map_key_ref, &r.secret_key_ref) {
            (Some(r), None) => self.config_map_key(r).await,
            (None, Some(r)) => self.secret_key(r).await,
            _ => Ok((String::new(), Fetched::NotExactlyOneSource)),
        }
    }

    pub async fn config_map_key(&self, r: &KeyRef) -> Result<(String, Fetched)> {
        let source = format!("ConfigMap {}/{} key {}", self.namespace, r.name, r.key);
        let found = self
            .config_maps
            .get_opt(&r.name)
            .await
            .map_err(|e| Error::kube(format!("reading ConfigMap {}/{}", self.namespace, r.name), e))?;
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
        Ok((source, fetched))
    }

    pub async fn secret_key(&self, r: &KeyRef) -> Result<(String, Fetched)> {
        let source = format!("Secret {}/{} key {}", self.namespace, r.name, r.key);
        let found = self
            .secrets
            .get_opt(&r.name)
            .await
            .map_err(|e| Error::kube(format!("reading Secret {}/{}", self.namespace, r.name), e))?;
        let fetched = match found {
            None => Fetched::ObjectNotFound,
            Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                Some(bytes) => Fetched::Found(bytes.0.clone()),
                None => Fetched::KeyNotFound,
            },
        };
        Ok((source, fetched))
    }
}
