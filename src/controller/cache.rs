//! What the watch caches keep: only the fields a decision reads, so memory follows the number
//! of objects, not their size, and not other issuers' chains.
//!
//! The CertificateRequest watch is cluster-wide and sees every issuer's requests, which
//! cert-manager keeps after issuance; each holds a CSR and, once issued, a chain and a CA.
//! None of that is needed to decide *whether* to act (`triage`, `requests_waiting_on`, the
//! waiting and denied status writes): those read the issuer reference, the conditions and the
//! metadata. The CSR is kept only while a request of ours is approved and not ended, and only
//! up to [`MAX_CACHED_CSR`]: a local CA signs from the cached copy, with no read of the request
//! first (the status write's resourceVersion precondition refuses a stale copy). A larger CSR
//! is read from the API server when it is signed, as every CSR a remote backend signs is.
//! `managedFields`, labels and every annotation but our own (`meshca.io/...`: the PCA
//! certificate ARN, the retry budget's mark) are not read here: a request may carry up to
//! 256 KiB of annotations, and whoever may create requests decides how many.
//!
//! A request that ended (issued, failed, denied) keeps only its name, version, issuer reference
//! and its conditions' types, statuses and reasons: enough to see it ended.
//! Requests of other issuers are not kept at all ([`ours_only`]): the only decision about them
//! is that they are not ours, and that is made on the watch event itself.
//!
//! Secrets are watched only to map a change to the issuers or IstioCACerts naming them: those
//! watches are metadata-only (see `super::secret_apis`), so no Secret data is ever decoded
//! outside the reads that use it.

use kube::api::ObjectMeta;
use kube::runtime::watcher;

use super::certificate_request::{Triage, triage};
use crate::api::cert_manager::{
    CertificateRequest, CertificateRequestCondition, CertificateRequestSpec, CertificateRequestStatus,
};

/// The annotations the request controller reads from a cached request all start so.
const OUR_ANNOTATIONS: &str = "meshca.io/";

/// The largest CSR (PEM bytes) the cache keeps. An istiod CSR is under 2 KiB even with a
/// 4096-bit RSA key; the bound keeps whoever may create approved requests from filling the
/// cache with large ones, which are read from the API server when signed instead.
pub const MAX_CACHED_CSR: usize = 8 * 1024;

/// Strips a CertificateRequest down to what the request controller's decisions read from the
/// cache. Applied to every object before the reflector stores it.
pub fn slim_request(cr: &mut CertificateRequest) {
    let triage = triage(cr, true);
    if triage == Triage::Terminal {
        // Issued, failed, denied or invalid: the one decision left is "terminal", read from
        // the conditions' types, statuses and reasons. Requests stay long after they ended.
        *cr = terminal_remains(cr);
        return;
    }
    cr.metadata.managed_fields = None;
    cr.metadata.labels = None;
    if let Some(annotations) = cr.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key.starts_with(OUR_ANNOTATIONS));
    }
    if !matches!(triage, Triage::Proceed { .. }) || cr.spec.request.len() > MAX_CACHED_CSR {
        cr.spec.request = Vec::new();
    }
    if let Some(status) = cr.status.as_mut() {
        status.certificate = None;
        status.ca = None;
    }
}

/// What the cache keeps of a request that ended: enough to find it, and to see it ended.
fn terminal_remains(cr: &CertificateRequest) -> CertificateRequest {
    let metadata = &cr.metadata;
    let conditions = cr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .map(|conditions| {
            conditions
                .iter()
                .map(|c| CertificateRequestCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                    message: None,
                    last_transition_time: None,
                })
                .collect()
        });
    CertificateRequest {
        metadata: ObjectMeta {
            name: metadata.name.clone(),
            namespace: metadata.namespace.clone(),
            uid: metadata.uid.clone(),
            resource_version: metadata.resource_version.clone(),
            ..Default::default()
        },
        spec: CertificateRequestSpec {
            issuer_ref: cr.spec.issuer_ref.clone(),
            ..Default::default()
        },
        status: Some(CertificateRequestStatus {
            conditions,
            ..Default::default()
        }),
    }
}

/// Keeps other issuers' requests out of the cache, and their changes from waking the
/// controller: an added or changed one becomes a deletion (so a request whose issuer reference
/// was edited away from us leaves the cache too), one listed at start-up is skipped.
/// cert-manager keeps every request it issued, so in a busy cluster these are most requests.
pub fn ours_only(event: watcher::Event<CertificateRequest>) -> Option<watcher::Event<CertificateRequest>> {
    let foreign = |cr: &CertificateRequest| triage(cr, true) == Triage::NotOurs;
    match event {
        watcher::Event::InitApply(cr) if foreign(&cr) => None,
        watcher::Event::Apply(cr) if foreign(&cr) => Some(watcher::Event::Delete(cr)),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::certificate_request::IssuerKind;
    use kube::ResourceExt;

    /// kubectl's copy of the whole object it last applied: as large as the object itself.
    const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

    fn issued_foreign_or_ours(group: &str, conditions: &[(&str, &str, &str)]) -> CertificateRequest {
        let mut cr = crate::controller::certificate_request::tests::cr(group, "MeshCAIssuer", conditions);
        cr.spec.request = b"-----BEGIN CERTIFICATE REQUEST-----".to_vec();
        cr.spec.is_ca = Some(true);
        cr.metadata.namespace = Some("istio-system".into());
        cr.metadata.resource_version = Some("42".into());
        cr.metadata.managed_fields = Some(vec![Default::default()]);
        cr.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_string(), "{...}".to_string()),
                ("meshca.io/certificate-arn".to_string(), "arn:x".to_string()),
            ]
            .into(),
        );
        if let Some(status) = cr.status.as_mut() {
            status.certificate = Some(b"CHAIN".to_vec());
            status.ca = Some(b"ROOT".to_vec());
        }
        cr
    }

    #[test]
    fn the_cache_keeps_no_csr_chain_ca_or_bookkeeping() {
        let mut cr = issued_foreign_or_ours("other.example", &[("Ready", "True", "Issued")]);
        slim_request(&mut cr);
        assert!(cr.spec.request.is_empty());
        let status = cr.status.as_ref().expect("status kept");
        assert_eq!((status.certificate.as_ref(), status.ca.as_ref()), (None, None));
        assert_eq!(cr.metadata.managed_fields, None);
        assert!(!cr.annotations().contains_key(LAST_APPLIED));
    }

    #[test]
    fn a_waiting_request_keeps_our_annotations_only() {
        let mut cr = issued_foreign_or_ours("meshca.io", &[("Approved", "True", "cert-manager.io")]);
        cr.annotations_mut()
            .insert("example.com/blob".to_string(), "x".repeat(200 * 1024));
        cr.labels_mut().insert("team".to_string(), "a".to_string());
        slim_request(&mut cr);
        let kept: Vec<&String> = cr.annotations().keys().collect();
        assert_eq!(kept, ["meshca.io/certificate-arn"]);
        assert!(cr.labels().is_empty());
        assert_eq!(cr.spec.issuer_ref.name, "mesh", "the issuer reference stays");
    }

    #[test]
    fn only_an_approved_request_of_ours_keeps_its_csr_and_only_a_small_one() {
        let csr = b"-----BEGIN CERTIFICATE REQUEST-----".to_vec();
        let approved = &[("Approved", "True", "cert-manager.io")][..];
        type Conditions<'a> = &'a [(&'a str, &'a str, &'a str)];
        // (group, conditions, CSR size, kept)
        let cases: &[(&str, Conditions, usize, bool)] = &[
            ("meshca.io", approved, csr.len(), true),
            ("meshca.io", approved, MAX_CACHED_CSR, true),
            ("meshca.io", approved, MAX_CACHED_CSR + 1, false),
            ("meshca.io", &[], csr.len(), false), // not approved yet: anyone may create those
            ("meshca.io", &[("Denied", "True", "Policy")], csr.len(), false),
            ("meshca.io", &[("Ready", "True", "Issued")], csr.len(), false),
            ("other.example", approved, csr.len(), false),
        ];
        for &(group, conditions, size, kept) in cases {
            let mut cr = issued_foreign_or_ours(group, conditions);
            cr.spec.request = csr.iter().copied().cycle().take(size).collect();
            slim_request(&mut cr);
            assert_eq!(!cr.spec.request.is_empty(), kept, "{group} {conditions:?} {size}");
        }
    }

    #[test]
    fn other_issuers_requests_never_reach_the_cache() {
        use watcher::Event;
        let foreign = || issued_foreign_or_ours("other.example", &[("Ready", "True", "Issued")]);
        let ours = || issued_foreign_or_ours("meshca.io", &[("Approved", "True", "cert-manager.io")]);
        let kind = |e: Option<Event<CertificateRequest>>| match e {
            None => "dropped",
            Some(Event::Apply(_)) => "apply",
            Some(Event::Delete(_)) => "delete",
            Some(Event::Init) => "init",
            Some(Event::InitApply(_)) => "init-apply",
            Some(Event::InitDone) => "init-done",
        };
        let cases = [
            (Event::InitApply(foreign()), "dropped"), // listed at start-up: never stored
            (Event::Apply(foreign()), "delete"),      // added or edited away from us: removed
            (Event::Delete(foreign()), "delete"),     // deleted: still a deletion
            (Event::InitApply(ours()), "init-apply"), // ours: as it came
            (Event::Apply(ours()), "apply"),
            (Event::Delete(ours()), "delete"),
            (Event::Init, "init"),
            (Event::InitDone, "init-done"),
        ];
        for (event, expected) in cases {
            let shown = format!("{event:?}").chars().take(40).collect::<String>();
            assert_eq!(kind(ours_only(event)), expected, "{shown}");
        }
    }

    #[test]
    fn an_ended_request_keeps_only_what_shows_it_ended() {
        let mut cr = issued_foreign_or_ours(
            "meshca.io",
            &[("Approved", "True", "cert-manager.io"), ("Ready", "True", "Issued")],
        );
        cr.metadata.uid = Some("u-1".into());
        cr.metadata.labels = Some([("app".to_string(), "x".to_string())].into());
        cr.spec.username = Some("system:serviceaccount:cert-manager:cert-manager".into());
        let (before, issuer_ref) = (triage(&cr, true), cr.spec.issuer_ref.clone());
        slim_request(&mut cr);
        assert_eq!((triage(&cr, true), before), (Triage::Terminal, Triage::Terminal));
        assert_eq!(cr.name_any(), "r");
        assert_eq!(cr.namespace().as_deref(), Some("istio-system"));
        assert_eq!(cr.uid().as_deref(), Some("u-1"));
        assert_eq!(cr.resource_version().as_deref(), Some("42"));
        assert_eq!(cr.spec.issuer_ref, issuer_ref);
        assert_eq!((cr.metadata.labels, cr.metadata.annotations), (None, None));
        assert_eq!((cr.spec.username, cr.spec.is_ca), (None, None));
        let conditions = cr.status.and_then(|s| s.conditions).unwrap_or_default();
        assert_eq!(conditions.len(), 2);
        assert!(conditions.iter().all(|c| c.message.is_none()));
    }

    #[test]
    fn what_decisions_read_survives_the_slimming() {
        // One case per triage outcome the cache feeds: each decides the same before and after.
        type Conditions<'a> = &'a [(&'a str, &'a str, &'a str)];
        let cases: &[(&str, Conditions)] = &[
            ("other.example", &[("Ready", "True", "Issued")]), // foreign
            ("meshca.io", &[("Ready", "True", "Issued")]),     // terminal
            ("meshca.io", &[]),                                // awaiting approval
            ("meshca.io", &[("Denied", "True", "Policy")]),    // denied
            (
                "meshca.io",
                &[("Approved", "True", "cert-manager.io"), ("Ready", "False", "Pending")],
            ), // proceed
        ];
        for (group, conditions) in cases {
            let full = issued_foreign_or_ours(group, conditions);
            let mut slim = full.clone();
            slim_request(&mut slim);
            assert_eq!(triage(&slim, true), triage(&full, true), "{group} {conditions:?}");
            assert_eq!(slim.resource_version(), full.resource_version());
            assert_eq!(slim.spec.issuer_ref, full.spec.issuer_ref);
            if triage(&full, true) != Triage::Terminal && *group == "meshca.io" {
                // Ours and not ended: annotations survive (the retry budget mark is read from
                // the cache).
                assert_eq!(
                    slim.annotations().get("meshca.io/certificate-arn"),
                    full.annotations().get("meshca.io/certificate-arn")
                );
            }
        }
        let proceed = issued_foreign_or_ours("meshca.io", &[("Approved", "True", "cert-manager.io")]);
        assert_eq!(
            triage(&proceed, true),
            Triage::Proceed {
                kind: IssuerKind::Namespaced,
                name: "mesh".into()
            }
        );
    }
}
