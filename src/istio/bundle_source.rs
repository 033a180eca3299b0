//! Trust anchors fetched from a peer's SPIFFE bundle endpoint: what is kept of them between
//! fetches (and across restarts), and what one fetch decides. Pure: the poller
//! (`federation::poller`) fetches and writes, the IstioCACerts reconcile reads what is kept.
//!
//! The last bundle accepted for each anchor is kept in a ConfigMap the controller owns,
//! `<istiocacerts>-spiffe-bundles`: key `<anchor>.json` holds the bundle as fetched, and the
//! annotation [`SOURCES_ANNOTATION`] records, per anchor, where it came from, when, its
//! sequence and refresh hint, and the last error. Kept in the API server rather than in
//! memory, so that a restart during a peer's outage still trusts the peer's current roots,
//! and the sequence a rollback is judged against survives too.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::istio_cacerts::{AnchorSource, SpiffeBundleEndpoint, TrustAnchor};
use crate::spiffe_bundle::{self, Bundle, Refusal};

/// On the ConfigMap: JSON, anchor name → [`Stored`].
pub const SOURCES_ANNOTATION: &str = "meshca.io/bundle-sources";
/// The ConfigMap's label naming the IstioCACerts it belongs to.
pub const FOR_LABEL: &str = "meshca.io/istiocacerts";
/// Without a refresh hint, a peer is fetched again after this long.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);

/// The ConfigMap that keeps the fetched bundles of IstioCACerts `icc`.
pub fn config_map_name(icc: &str) -> String {
    format!("{icc}-spiffe-bundles")
}

/// The ConfigMap key of anchor `anchor`'s bundle.
pub fn key(anchor: &str) -> String {
    format!("{anchor}.json")
}

/// Labels of the ConfigMap the poller creates.
pub fn labels(icc: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            crate::istio::cacerts::MANAGED_BY_LABEL.to_string(),
            crate::istio::cacerts::MANAGED_BY_VALUE.to_string(),
        ),
        (FOR_LABEL.to_string(), icc.to_string()),
    ])
}

/// Whether a ConfigMap with these labels is the poller's for `icc`.
pub fn is_ours(labels: &BTreeMap<String, String>, icc: &str) -> bool {
    labels
        .get(crate::istio::cacerts::MANAGED_BY_LABEL)
        .is_some_and(|v| v == crate::istio::cacerts::MANAGED_BY_VALUE)
        && labels.get(FOR_LABEL).is_some_and(|v| v == icc)
}

/// What is kept of one anchor's source.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// The endpoint the kept bundle came from: a bundle kept for another URL or trust domain
    /// (the spec changed) is not used.
    pub url: String,
    pub trust_domain: String,
    /// When the kept bundle was last fetched and accepted (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_hint_seconds: Option<u64>,
    /// Why the last fetch was refused or failed; cleared by the next success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Stored {
    /// Whether what is kept belongs to this anchor as its spec stands now.
    pub fn is_for(&self, anchor: &TrustAnchor, endpoint: &SpiffeBundleEndpoint) -> bool {
        self.url == endpoint.url && Some(&self.trust_domain) == anchor.trust_domains.first()
    }

    /// For `status.trustAnchors[].source`.
    pub fn status(&self) -> AnchorSource {
        AnchorSource {
            url: self.url.clone(),
            last_fetched: self.last_fetched.clone(),
            sequence: self.sequence,
            refresh_hint: self.refresh_hint_seconds.map(|s| format!("{s}s")),
            error: self.error.clone(),
        }
    }
}

/// Reads the annotation; anything unreadable reads as nothing kept (the next fetch starts
/// from the bootstrap bundle, which is the safe side).
pub fn parse_sources(annotation: Option<&str>) -> BTreeMap<String, Stored> {
    annotation
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default()
}

pub fn format_sources(sources: &BTreeMap<String, Stored>) -> String {
    serde_json::to_string(sources).unwrap_or_default()
}

/// The poll interval bounds (`--bundle-refresh-min`, `--bundle-refresh-max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        }
    }
}

impl Bounds {
    /// How long until the next fetch after a success: the hint, clamped.
    pub fn refresh(&self, hint: Option<Duration>) -> Duration {
        hint.unwrap_or(DEFAULT_REFRESH).clamp(self.min, self.max.max(self.min))
    }

    /// How long until the next try after `failures` failures in a row (1 or more): doubling
    /// from the minimum, capped at the refresh interval, with up to a fifth taken off at
    /// random (`jitter` in `[0, 1)`) so that many controllers do not retry in step.
    pub fn backoff(&self, failures: u32, hint: Option<Duration>, jitter: f64) -> Duration {
        let cap = self.refresh(hint);
        let doubled = self
            .min
            .saturating_mul(1u32.checked_shl(failures.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
        let base = doubled.min(cap);
        base.mul_f64(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
    }
}

/// What one fetch gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The body, from an endpoint that authenticated as the anchor requires.
    Body(Vec<u8>),
    /// The endpoint could not be reached, did not authenticate, or did not answer 200.
    Failed(String),
}

/// What to keep after one fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub stored: Stored,
    /// The bundle to keep as the anchor's, when accepted (the body as fetched).
    pub accepted: Option<(Bundle, Vec<u8>)>,
}

/// Judges one fetch against what is kept. A refused or failed fetch keeps the last bundle
/// and records why; an accepted one replaces it. The sequence compared against is the last
/// one accepted *for this endpoint*: a changed URL starts over.
pub fn judge(
    anchor: &TrustAnchor,
    endpoint: &SpiffeBundleEndpoint,
    kept: Option<&Stored>,
    fetch: Fetch,
    now: Timestamp,
) -> Judged {
    let kept = kept.filter(|k| k.is_for(anchor, endpoint));
    let mut stored = kept.cloned().unwrap_or_else(|| Stored {
        url: endpoint.url.clone(),
        trust_domain: anchor.trust_domains.first().cloned().unwrap_or_default(),
        ..Default::default()
    });
    let body = match fetch {
        Fetch::Failed(why) => {
            stored.error = Some(why);
            return Judged { stored, accepted: None };
        }
        Fetch::Body(body) => body,
    };
    match spiffe_bundle::decode(&body, stored.sequence, now) {
        Ok(bundle) => {
            stored.last_fetched = Some(now.to_string());
            stored.sequence = bundle.sequence.or(stored.sequence);
            stored.refresh_hint_seconds = bundle.refresh_hint.map(|d| d.as_secs());
            stored.error = None;
            Judged {
                stored,
                accepted: Some((bundle, body)),
            }
        }
        Err(refusal) => {
            stored.error = Some(refused(&refusal));
            Judged { stored, accepted: None }
        }
    }
}

fn refused(refusal: &Refusal) -> String {
    format!("the fetched bundle was refused, the last one accepted is kept: {refusal}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio_cacerts::BundleEndpointProfile;
    use crate::istio::testing::{root, t0};

    fn anchor() -> (TrustAnchor, SpiffeBundleEndpoint) {
        let endpoint = SpiffeBundleEndpoint {
            url: "https://b.example:8443/b.example".into(),
            profile: BundleEndpointProfile::HttpsSpiffe,
            endpoint_spiffe_id: Some("spiffe://b.example/meshca/bundle-endpoint".into()),
            bootstrap_bundle: None,
            ca_bundle: None,
        };
        let anchor = TrustAnchor {
            name: "peer-b".into(),
            trust_domains: vec!["b.example".into()],
            config_map_key_ref: None,
            secret_key_ref: None,
            spiffe_bundle_endpoint: Some(endpoint.clone()),
            fingerprints: vec![],
            allow_intermediate: false,
        };
        (anchor, endpoint)
    }

    #[test]
    fn one_fetch_is_judged_against_what_is_kept() {
        let (root, _) = root(365);
        let now = t0();
        let (a, e) = anchor();
        let bundle = |seq| spiffe_bundle::encode(std::slice::from_ref(&root), seq, Duration::from_secs(2)).unwrap();
        let kept_at = |seq: u64, url: &str| Stored {
            url: url.into(),
            trust_domain: "b.example".into(),
            last_fetched: Some("2026-12-01T00:00:00Z".into()),
            sequence: Some(seq),
            refresh_hint_seconds: Some(2),
            error: None,
        };
        // (kept, fetch, accepted, sequence kept, error contains)
        type Case<'a> = (Option<Stored>, Fetch, bool, Option<u64>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (None, Fetch::Body(bundle(1).into_bytes()), true, Some(1), None),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(bundle(4).into_bytes()),
                true,
                Some(4),
                None,
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(bundle(3).into_bytes()),
                true,
                Some(3),
                None,
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(bundle(2).into_bytes()),
                false,
                Some(3),
                Some("lower than 3"),
            ),
            // A bundle kept for another URL is not compared against: the spec changed.
            (
                Some(kept_at(9, "https://old.example/")),
                Fetch::Body(bundle(2).into_bytes()),
                true,
                Some(2),
                None,
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(b"<html>".to_vec()),
                false,
                Some(3),
                Some("not JSON"),
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(br#"{"keys":[]}"#.to_vec()),
                false,
                Some(3),
                Some("no x509-svid key"),
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Body(vec![b' '; spiffe_bundle::MAX_BUNDLE_BYTES + 1]),
                false,
                Some(3),
                Some("at most"),
            ),
            (
                Some(kept_at(3, &e.url)),
                Fetch::Failed("connection refused".into()),
                false,
                Some(3),
                Some("connection refused"),
            ),
        ];
        for (i, (kept, fetch, accepted, sequence, error)) in cases.into_iter().enumerate() {
            let judged = judge(&a, &e, kept.as_ref(), fetch, now);
            assert_eq!(judged.accepted.is_some(), accepted, "case {i}: {judged:?}");
            assert_eq!(judged.stored.sequence, sequence, "case {i}");
            assert_eq!(judged.stored.url, e.url, "case {i}");
            match error {
                None => assert_eq!(judged.stored.error, None, "case {i}"),
                Some(text) => assert!(
                    judged.stored.error.as_deref().is_some_and(|e| e.contains(text)),
                    "case {i}: {:?}",
                    judged.stored.error
                ),
            }
            if accepted {
                assert_eq!(judged.stored.last_fetched, Some(now.to_string()), "case {i}");
            } else if kept.as_ref().is_some_and(|k| k.url == e.url) {
                assert_eq!(
                    judged.stored.last_fetched,
                    kept.unwrap().last_fetched,
                    "case {i}: the last fetch stays"
                );
            }
        }
    }

    #[test]
    fn polling_follows_the_hint_within_bounds_and_errors_back_off_up_to_it() {
        let b = Bounds {
            min: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        };
        let s = Duration::from_secs;
        assert_eq!(b.refresh(Some(s(2))), s(2));
        assert_eq!(b.refresh(None), s(300));
        assert_eq!(b.refresh(Some(s(0))), s(1));
        assert_eq!(b.refresh(Some(s(86400))), s(3600));
        assert_eq!(Bounds::default().refresh(Some(s(2))), s(30));
        assert_eq!(b.backoff(1, Some(s(60)), 0.0), s(1));
        assert_eq!(b.backoff(3, Some(s(60)), 0.0), s(4));
        assert_eq!(b.backoff(30, Some(s(60)), 0.0), s(60));
        assert_eq!(b.backoff(30, Some(s(60)), 0.999).as_secs(), 48);
    }

    #[test]
    fn what_is_kept_reads_back_and_garbage_reads_as_nothing() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "peer-b".to_string(),
            Stored {
                url: "https://b/".into(),
                trust_domain: "b.example".into(),
                sequence: Some(7),
                ..Default::default()
            },
        );
        assert_eq!(parse_sources(Some(&format_sources(&sources))), sources);
        assert!(parse_sources(Some("{not json")).is_empty());
        assert!(parse_sources(None).is_empty());
    }
}
