//! This cluster's SPIFFE bundle endpoint, as the leader decides it: which roots are served,
//! under which `spiffe_sequence`, and whether the serving certificate is fit. Pure. Every
//! replica serves what the status says (`federation::serve`), so the sequence is kept in the
//! API server and never goes back across restarts and replicas.

use std::time::Duration;

use jiff::Timestamp;

use crate::api::istio_cacerts::{BundleEndpoint, BundleEndpointStatus, bundle_endpoint_spiffe_id};
use crate::pki::Certificate;

/// The condition type.
pub const BUNDLE_ENDPOINT_READY: &str = "BundleEndpointReady";

pub mod reason {
    pub const SERVING: &str = "Serving";
    /// `cacerts` holds no bundle yet: nothing to serve.
    pub const NO_ROOTS: &str = "NoRootsYet";
    pub const INVALID_SPEC: &str = "InvalidBundleEndpointSpec";
    pub const SERVING_CERTIFICATE_NOT_FOUND: &str = "ServingCertificateNotFound";
    pub const SERVING_CERTIFICATE_INVALID: &str = "ServingCertificateInvalid";
    pub const SERVING_CERTIFICATE_EXPIRED: &str = "ServingCertificateExpired";
    pub const SERVING_CERTIFICATE_DOES_NOT_CHAIN: &str = "ServingCertificateDoesNotChain";
}

/// The `tlsSecretName` Secret, as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServingSecret {
    NotFound,
    /// Its `tls.crt` (the key is never read by the leader).
    Found(Vec<u8>),
}

/// (ok, reason, message)
pub type Verdict = (bool, &'static str, String);

/// The refresh hint of a spec, checked.
pub fn refresh_hint(spec: &BundleEndpoint) -> Result<Duration, String> {
    let hint = crate::duration::parse_go_duration(&spec.refresh_hint)
        .map_err(|e| format!("spec.bundleEndpoint.refreshHint {:?}: {e}", spec.refresh_hint))?;
    if hint < Duration::from_secs(1) {
        return Err(format!(
            "spec.bundleEndpoint.refreshHint {:?} is under 1s: peers would fetch without pause",
            spec.refresh_hint
        ));
    }
    Ok(hint)
}

/// What is served and the condition. `own`: this cluster's own roots as published (both
/// during a rotation), empty when `cacerts` holds no bundle; `previous`: the status so far.
pub fn decide(
    spec: &BundleEndpoint,
    trust_domain: &str,
    previous: Option<&BundleEndpointStatus>,
    own: &[Certificate],
    serving: Option<&ServingSecret>,
    now: Timestamp,
) -> (Verdict, Option<BundleEndpointStatus>) {
    let served: Vec<String> = own.iter().map(Certificate::fingerprint).collect();
    let mut status = previous.cloned().unwrap_or_default();
    if let Err(why) = refresh_hint(spec) {
        return ((false, reason::INVALID_SPEC, why), previous.cloned());
    }
    if served.is_empty() {
        return (
            (
                false,
                reason::NO_ROOTS,
                "cacerts holds no bundle yet, so there are no roots to serve".into(),
            ),
            previous.cloned(),
        );
    }
    if status.served_roots != served || status.sequence == 0 {
        // Every change of the content is a new sequence, never reused: peers refuse a lower
        // one as a rollback. At least the current Unix time, so that a status lost with its
        // object (the IstioCACerts deleted and created again, the endpoint turned off and on)
        // does not start again below what peers last accepted.
        status.sequence = (status.sequence + 1).max(u64::try_from(now.as_second()).unwrap_or(0));
        status.served_roots = served;
    }
    let serving_verdict = match (&spec.tls_secret_name, serving) {
        (None, _) => {
            status.endpoint_spiffe_id = Some(bundle_endpoint_spiffe_id(trust_domain));
            status.serving_certificate_not_after = None;
            Ok(format!(
                "serving X.509-SVID {} signed with the intermediate in cacerts (24h, renewed at half-life and after every intermediate switch)",
                bundle_endpoint_spiffe_id(trust_domain)
            ))
        }
        (Some(name), found) => {
            let checked = check_serving(name, found, own, now);
            match &checked {
                Ok(served) => {
                    status.endpoint_spiffe_id = served.spiffe_id.clone();
                    status.serving_certificate_not_after = Some(served.not_after.to_string());
                }
                Err(_) => {
                    status.endpoint_spiffe_id = None;
                    status.serving_certificate_not_after = None;
                }
            }
            checked.map(|s| s.message)
        }
    };
    let verdict = match serving_verdict {
        Ok(serving) => (
            true,
            reason::SERVING,
            format!(
                "serving {} root(s) of {trust_domain} at sequence {}, refresh hint {}; {serving}",
                status.served_roots.len(),
                status.sequence,
                spec.refresh_hint
            ),
        ),
        Err((reason, message)) => (false, reason, message),
    };
    (verdict, Some(status))
}

struct Served {
    spiffe_id: Option<String>,
    not_after: Timestamp,
    message: String,
}

/// A `tlsSecretName` certificate: present, readable, valid now, and a chain in which each
/// certificate is signed by the next. Where it chains to one of our own roots (an SVID the
/// user issued from the mesh) that is said, since a root rotation must re-issue it.
fn check_serving(
    name: &str,
    found: Option<&ServingSecret>,
    own: &[Certificate],
    now: Timestamp,
) -> Result<Served, (&'static str, String)> {
    let bytes = match found {
        None | Some(ServingSecret::NotFound) => {
            return Err((
                reason::SERVING_CERTIFICATE_NOT_FOUND,
                format!("spec.bundleEndpoint.tlsSecretName: Secret {name} (key tls.crt) does not exist"),
            ));
        }
        Some(ServingSecret::Found(bytes)) => bytes,
    };
    let chain = Certificate::parse_pem_bundle(bytes, "tls.crt").map_err(|e| {
        (
            reason::SERVING_CERTIFICATE_INVALID,
            format!("Secret {name} key tls.crt cannot be read: {e}"),
        )
    })?;
    let Some(leaf) = chain.first() else {
        return Err((
            reason::SERVING_CERTIFICATE_INVALID,
            format!("Secret {name} key tls.crt holds no certificate"),
        ));
    };
    if let Some(expired) = chain.iter().find(|c| !c.is_valid_at(now)) {
        return Err((
            reason::SERVING_CERTIFICATE_EXPIRED,
            format!(
                "Secret {name}: {} is valid only from {} to {}; peers refuse the endpoint",
                expired.subject(),
                expired.not_before(),
                expired.not_after()
            ),
        ));
    }
    if let Some(pair) = chain.windows(2).find(|p| !p[0].is_signed_by(&p[1])) {
        return Err((
            reason::SERVING_CERTIFICATE_DOES_NOT_CHAIN,
            format!(
                "Secret {name} key tls.crt: {} is not signed by the next certificate, {}",
                pair[0].subject(),
                pair[1].subject()
            ),
        ));
    }
    let spiffe_id = leaf.uri_sans().into_iter().find(|u| u.starts_with("spiffe://"));
    let top = chain.last().unwrap_or(leaf);
    let mesh_root = own.iter().find(|r| *r == top || top.is_signed_by(r));
    Ok(Served {
        not_after: leaf.not_after(),
        message: format!(
            "serving Secret {name} ({}{}, valid until {}){}",
            leaf.subject(),
            spiffe_id.as_deref().map(|id| format!(", {id}")).unwrap_or_default(),
            leaf.not_after(),
            mesh_root
                .map(|r| format!(
                    "; it chains to this cluster's root {}: re-issue it after a root rotation",
                    r.fingerprint()
                ))
                .unwrap_or_default()
        ),
        spiffe_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::testing::{root, t0};

    fn spec(tls: Option<&str>, hint: &str) -> BundleEndpoint {
        BundleEndpoint {
            enabled: true,
            tls_secret_name: tls.map(str::to_string),
            refresh_hint: hint.into(),
        }
    }

    #[test]
    fn the_sequence_moves_once_per_change_of_the_served_roots_and_never_back() {
        let (old, _) = root(365);
        let (new, _) = root(730);
        let s = spec(None, "5m");
        let now = t0();
        let step =
            |prev: Option<&BundleEndpointStatus>, own: &[Certificate]| decide(&s, "b.example", prev, own, None, now);
        let (v1, s1) = step(None, std::slice::from_ref(&old));
        assert!(v1.0, "{v1:?}");
        let s1 = s1.unwrap();
        let first = u64::try_from(now.as_second()).unwrap();
        assert_eq!(s1.sequence, first, "starts at the time of the change");
        assert_eq!(
            s1.endpoint_spiffe_id.as_deref(),
            Some("spiffe://b.example/meshca/bundle-endpoint")
        );
        // (own roots, expected sequence): unchanged, rotation adds, removes (within the same
        // second: one more each); an empty bundle keeps what was served.
        let cases: Vec<(Vec<Certificate>, u64, bool)> = vec![
            (vec![old.clone()], first, true),
            (vec![old.clone(), new.clone()], first + 1, true),
            (vec![old.clone(), new.clone()], first + 1, true),
            (vec![new.clone()], first + 2, true),
            (vec![], first + 2, false),
            (vec![new.clone()], first + 2, true),
        ];
        let mut prev = s1;
        for (i, (own, sequence, ok)) in cases.into_iter().enumerate() {
            let (verdict, status) = step(Some(&prev), &own);
            let status = status.unwrap();
            assert_eq!(status.sequence, sequence, "case {i}");
            assert_eq!(verdict.0, ok, "case {i}: {verdict:?}");
            prev = status;
        }
        assert_eq!(prev.served_roots, vec![new.fingerprint()]);
        // Later, and after a status lost with its object: never below the time of the change.
        let later = now + jiff::SignedDuration::from_hours(1);
        let (_, moved) = decide(&s, "b.example", Some(&prev), std::slice::from_ref(&old), None, later);
        assert_eq!(moved.unwrap().sequence, first + 3600);
        let (_, fresh) = decide(&s, "b.example", None, std::slice::from_ref(&old), None, later);
        assert!(
            fresh.unwrap().sequence > prev.sequence,
            "a re-created object does not roll back"
        );
    }

    #[test]
    fn a_bad_hint_or_serving_certificate_is_named() {
        let (own, _) = root(365);
        let (other, _) = root(365);
        let now = t0();
        let own = vec![own];
        let pem = |c: &Certificate| ServingSecret::Found(c.to_pem().into_bytes());
        let cases: Vec<(BundleEndpoint, Option<ServingSecret>, &str)> = vec![
            (spec(None, "nonsense"), None, reason::INVALID_SPEC),
            (spec(None, "500ms"), None, reason::INVALID_SPEC),
            (spec(Some("tls"), "5m"), None, reason::SERVING_CERTIFICATE_NOT_FOUND),
            (
                spec(Some("tls"), "5m"),
                Some(ServingSecret::NotFound),
                reason::SERVING_CERTIFICATE_NOT_FOUND,
            ),
            (
                spec(Some("tls"), "5m"),
                Some(ServingSecret::Found(b"junk".to_vec())),
                reason::SERVING_CERTIFICATE_INVALID,
            ),
            (
                spec(Some("tls"), "5m"),
                Some(ServingSecret::Found(
                    format!("{}{}", other.to_pem(), own[0].to_pem()).into_bytes(),
                )),
                reason::SERVING_CERTIFICATE_DOES_NOT_CHAIN,
            ),
            (spec(Some("tls"), "5m"), Some(pem(&other)), reason::SERVING),
        ];
        for (i, (s, serving, expected)) in cases.into_iter().enumerate() {
            let (verdict, _) = decide(&s, "b.example", None, &own, serving.as_ref(), now);
            assert_eq!(verdict.1, expected, "case {i}: {verdict:?}");
            assert_eq!(verdict.0, expected == reason::SERVING, "case {i}");
        }
        let (root, _) = root(1);
        let later = t0() + jiff::SignedDuration::from_hours(24 * 3);
        let (verdict, _) = decide(
            &spec(Some("tls"), "5m"),
            "b.example",
            None,
            &own,
            Some(&pem(&root)),
            later,
        );
        assert_eq!(verdict.1, reason::SERVING_CERTIFICATE_EXPIRED, "{verdict:?}");
    }
}
