//! Reading an IstioCACerts' trust anchors: each anchor's ConfigMap or Secret key, as the
//! controller observes them. The decisions live in [`crate::istio::trust_bundle`].

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;

use super::Context;
use crate::api::istio_cacerts::TrustAnchor;
use crate::error::{Error, Result};
use crate::istio::trust_bundle::{AnchorInput, Fetched};

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
