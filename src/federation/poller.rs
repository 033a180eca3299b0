//! Follows peers' SPIFFE bundle endpoints (the leader only): every `spiffeBundleEndpoint`
//! anchor is fetched as its peer's refresh hint says, judged
//! ([`crate::istio::bundle_source::judge`]), and what is accepted is kept in the IstioCACerts'
//! `<name>-spiffe-bundles` ConfigMap. That write wakes the IstioCACerts reconcile, which puts
//! the roots into `root-cert.pem` by the usual rules (appended, cut, each change a byte
//! superset or subset). A failed or refused fetch keeps the last bundle: trust is never
//! dropped because a peer is unreachable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use tokio::time::Instant;
use tracing::{info, warn};

use super::fetch::{Authenticate, fetch};
use crate::api::istio_cacerts::{BundleEndpointProfile, IstioCACerts, SpiffeBundleEndpoint, TrustAnchor};
use crate::controller::Context;
use crate::controller::trust_anchors::Reader;
use crate::istio::bundle_source::{self, Bounds, Stored};
use crate::istio::trust_bundle::{self, AnchorInput};
use crate::pki::Certificate;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the schedule is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// When each anchor is fetched next, and how many fetches in a row failed.
#[derive(Default)]
struct Schedule {
    next: BTreeMap<String, (Instant, u32)>,
}

/// Polls until dropped.
pub async fn run(ctx: Arc<Context>, store: Store<IstioCACerts>, bounds: Bounds) {
    let mut schedule = Schedule::default();
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if !ctx.leadership.is_leader() {
            // A new leader starts from what is kept in the API server.
            schedule.next.clear();
            continue;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        let mut present = Vec::new();
        for icc in store.state() {
            for anchor in &icc.spec.trust_anchors {
                let Some(endpoint) = &anchor.spiffe_bundle_endpoint else {
                    continue;
                };
                let key = format!(
                    "{}/{}/{}/{}",
                    icc.namespace().unwrap_or_default(),
                    icc.name_any(),
                    anchor.name,
                    endpoint.url
                );
                present.push(key.clone());
                if schedule.next.get(&key).is_none_or(|(at, _)| *at <= now) {
                    due.push((key, icc.clone(), anchor.clone(), endpoint.clone()));
                }
            }
        }
        schedule.next.retain(|k, _| present.contains(k));
        for (key, icc, anchor, endpoint) in due {
            let failures = schedule.next.get(&key).map_or(0, |(_, f)| *f);
            let (ok, hint) = match poll(&ctx, &icc, &anchor, &endpoint).await {
                Ok(outcome) => outcome,
                Err(why) => {
                    warn!(icc = %icc.name_any(), anchor = %anchor.name, "bundle endpoint poll: {why}");
                    (false, None)
                }
            };
            let failures = if ok { 0 } else { failures + 1 };
            let wait = if ok {
                bounds.refresh(hint)
            } else {
                bounds.backoff(failures, hint, jitter())
            };
            schedule.next.insert(key, (Instant::now() + wait, failures));
        }
    }
}

fn jitter() -> f64 {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    f64::from(byte[0]) / 256.0
}

/// Fetches one anchor and keeps the verdict: (accepted, the peer's refresh hint).
async fn poll(
    ctx: &Context,
    icc: &IstioCACerts,
    anchor: &TrustAnchor,
    endpoint: &SpiffeBundleEndpoint,
) -> Result<(bool, Option<Duration>), String> {
    let namespace = icc.namespace().unwrap_or_default();
    let name = bundle_source::config_map_name(&icc.name_any());
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| format!("reading ConfigMap {namespace}/{name}: {e}"))?;
    if let Some(cm) = &existing
        && !bundle_source::is_ours(cm.labels(), &icc.name_any())
    {
        return Err(format!(
            "ConfigMap {namespace}/{name} exists and was not made by mesh-ca-issuer for this IstioCACerts; it is left alone and nothing fetched is kept. Delete or rename it"
        ));
    }
    let mut sources = bundle_source::parse_sources(
        existing
            .as_ref()
            .and_then(|cm| cm.annotations().get(bundle_source::SOURCES_ANNOTATION))
            .map(String::as_str),
    );
    let kept = sources
        .get(&anchor.name)
        .filter(|s| s.is_for(anchor, endpoint))
        .cloned();
    let kept_bundle = kept.as_ref().and_then(|_| {
        existing
            .as_ref()?
            .data
            .as_ref()?
            .get(&bundle_source::key(&anchor.name))
            .cloned()
    });
    let authenticate = match endpoint.profile {
        BundleEndpointProfile::HttpsSpiffe => Authenticate::Spiffe {
            id: endpoint.endpoint_spiffe_id.clone().unwrap_or_default(),
            roots: match &kept_bundle {
                Some(bundle) => crate::spiffe_bundle::decode(bundle.as_bytes(), None, Timestamp::now())
                    .map(|b| b.roots)
                    .unwrap_or_default(),
                None => bootstrap_roots(ctx, &namespace, anchor, endpoint).await?,
            },
        },
        BundleEndpointProfile::HttpsWeb => Authenticate::Web {
            cas: match &endpoint.ca_bundle {
                Some(pem) => {
                    Certificate::parse_pem_bundle(pem.as_bytes(), "caBundle").map_err(|e| format!("caBundle: {e}"))?
                }
                None => Vec::new(),
            },
        },
    };
    let fetched = fetch(&endpoint.url, &authenticate, FETCH_TIMEOUT).await;
    let judged = bundle_source::judge(anchor, endpoint, kept.as_ref(), fetched, Timestamp::now());
    let accepted = judged.accepted.is_some();
    let hint = judged.accepted.as_ref().and_then(|(b, _)| b.refresh_hint).or(kept
        .as_ref()
        .and_then(|k| k.refresh_hint_seconds.map(Duration::from_secs)));
    if let Some((bundle, _)) = &judged.accepted
        && kept.as_ref().and_then(|k| k.sequence) != bundle.sequence
    {
        info!(icc = %icc.name_any(), anchor = %anchor.name, sequence = ?bundle.sequence, roots = bundle.roots.len(), "accepted a new bundle from {}", endpoint.url);
    }
    if let Some(error) = &judged.stored.error
        && kept.as_ref().and_then(|k| k.error.as_ref()) != Some(error)
    {
        warn!(icc = %icc.name_any(), anchor = %anchor.name, "{error}");
    }
    let new_body = judged
        .accepted
        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned());
    if new_body.is_none() && kept.as_ref() == Some(&judged.stored) {
        return Ok((accepted, hint));
    }
    sources.insert(anchor.name.clone(), judged.stored);
    keep(&api, icc, existing, sources, anchor, new_body).await?;
    Ok((accepted, hint))
}

/// The roots of an `https_spiffe` anchor's bootstrap bundle, checked as the anchor itself is
/// (its pins included: a root slipped into the bootstrap never authenticates a fetch).
async fn bootstrap_roots(
    ctx: &Context,
    namespace: &str,
    anchor: &TrustAnchor,
    endpoint: &SpiffeBundleEndpoint,
) -> Result<Vec<Certificate>, String> {
    let Some(bootstrap) = &endpoint.bootstrap_bundle else {
        return Err("the anchor has no bootstrapBundle to authenticate its first fetch".into());
    };
    let (source, fetched) = Reader::new(ctx, namespace)
        .bundle_ref(bootstrap)
        .await
        .map_err(|e| e.to_string())?;
    let input = AnchorInput {
        spec: anchor.clone(),
        source: format!("bootstrap bundle {source}"),
        fetched,
        endpoint: None,
    };
    trust_bundle::anchor_certificates(&input, Timestamp::now())
        .map_err(|why| format!("{why}; no fetch is authenticated by it"))
}

/// Writes the kept bundles: created (owned by the IstioCACerts, so it goes with it) or
/// patched at the resourceVersion read (a conflict is tried again at the next poll). A merge
/// patch, since the chart grants `patch` on ConfigMaps in Istio namespaces, not `update`.
async fn keep(
    api: &Api<ConfigMap>,
    icc: &IstioCACerts,
    existing: Option<ConfigMap>,
    sources: BTreeMap<String, Stored>,
    anchor: &TrustAnchor,
    body: Option<String>,
) -> Result<(), String> {
    let name = bundle_source::config_map_name(&icc.name_any());
    // Anchors no longer in the spec are dropped.
    let wanted: Vec<&str> = icc.spec.trust_anchors.iter().map(|a| a.name.as_str()).collect();
    let sources: BTreeMap<String, Stored> = sources
        .into_iter()
        .filter(|(k, _)| wanted.contains(&k.as_str()))
        .collect();
    let annotation = bundle_source::format_sources(&sources);
    let written = match existing {
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: icc.namespace(),
                    labels: Some(bundle_source::labels(&icc.name_any())),
                    annotations: Some(BTreeMap::from([(
                        bundle_source::SOURCES_ANNOTATION.to_string(),
                        annotation,
                    )])),
                    owner_references: icc.controller_owner_ref(&()).map(|o| vec![o]),
                    ..Default::default()
                },
                data: body.map(|b| BTreeMap::from([(bundle_source::key(&anchor.name), b)])),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await.map(|_| ())
        }
        Some(cm) => {
            let mut data = serde_json::Map::new();
            for k in cm.data.iter().flat_map(|d| d.keys()) {
                if !sources.keys().any(|a| bundle_source::key(a) == *k) {
                    data.insert(k.clone(), serde_json::Value::Null);
                }
            }
            if let Some(body) = body {
                data.insert(bundle_source::key(&anchor.name), serde_json::Value::String(body));
            }
            let patch = serde_json::json!({
                "metadata": {
                    "resourceVersion": cm.resource_version(),
                    "annotations": { bundle_source::SOURCES_ANNOTATION: annotation },
                },
                "data": data,
            });
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
    };
    written.map_err(|e| format!("writing ConfigMap {name}: {e}"))
}
