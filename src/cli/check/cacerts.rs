//! IstioCACerts and `cacerts`: Ready and healthy, `cacerts` holding the intermediate
//! cert-manager issued last (not a stale one), and no tracked certificate in a warning window.
//! With revocation on, `ca-crl.pem` holds a current CRL for every CA and the intermediate is
//! not revoked. Pure.

use kube::ResourceExt;

use super::observe::{Observed, short};
use super::{CheckId, Finding, combine};
use crate::api::conditions::{READY, find};
use crate::api::istio_cacerts::{IstioCACerts, RenewalWindow, RotationPhase, TrackedCertificate};

const HEALTHY: &str = "CertificatesHealthy";

pub fn check(o: &Observed) -> Vec<Finding> {
    let all = match &o.istio_cacerts {
        Ok(all) if !all.is_empty() => all,
        Ok(_) => {
            return vec![Finding::fail(
                CheckId::IstioCACertsFound,
                format!(
                    "no IstioCACerts in {}: nothing writes istiod's cacerts",
                    o.settings_namespace
                ),
                "kubectl apply -f config/samples/istiocacerts.yaml (sourceSecretName: the Secret of istiod's Certificate)",
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                CheckId::IstioCACertsFound,
                e.clone(),
                format!("{}#rbac", super::DOCS),
            )];
        }
    };
    vec![
        Finding::pass(CheckId::IstioCACertsFound),
        combine(CheckId::IstioCACertsReady, all.iter().map(ready).collect()),
        combine(
            CheckId::IstioCACertsFresh,
            all.iter().map(|icc| fresh(o, icc)).collect(),
        ),
        combine(CheckId::IstioCACertsWindows, all.iter().map(windows).collect()),
        combine(CheckId::IstioCACertsCrls, all.iter().map(crls).collect()),
    ]
}

/// `spec.revocation`: the CRLsCurrent condition, each CRL's window, and a Ready that says the
/// intermediate is revoked or a renewal is held for want of a CRL.
fn crls(icc: &IstioCACerts) -> Finding {
    use crate::api::istio_cacerts::CrlWindow;
    use crate::istio::revocation::{CRLS_CURRENT, reason};
    let id = CheckId::IstioCACertsCrls;
    if !icc.spec.revocation.as_ref().is_some_and(|r| r.enabled) {
        return Finding::pass(id);
    }
    let fix = format!("{} (and {}#revocation)", describe(icc), super::DOCS);
    let status = icc.status.clone().unwrap_or_default();
    if let Some(ready) = find(&status.conditions, READY)
        .filter(|c| c.reason == reason::INTERMEDIATE_REVOKED || c.reason == reason::CRLS_INCOMPLETE)
    {
        return Finding::fail(
            id,
            format!("{}: {}: {}", display(icc), ready.reason, ready.message),
            fix,
        );
    }
    let Some(current) = find(&status.conditions, CRLS_CURRENT) else {
        return Finding::fail(
            id,
            format!(
                "{} has revocation on but no {CRLS_CURRENT} condition: is the controller older than its spec?",
                display(icc)
            ),
            fix,
        );
    };
    let worst = status.crl.iter().map(|c| c.window).max_by_key(|w| match w {
        // Never refreshed here by design: a retired one goes when it lapses, and its CA with
        // it; a peer refreshes its own (fleet-peer-crls judges those).
        CrlWindow::Current | CrlWindow::Retired | CrlWindow::Peer => 0,
        CrlWindow::RefreshDue => 1,
        CrlWindow::Expiring => 2,
    });
    let what = format!(
        "{}: {CRLS_CURRENT} {}: {}",
        display(icc),
        current.reason,
        current.message
    );
    match (current.status.as_str(), current.reason.as_str(), worst) {
        ("True", _, None | Some(CrlWindow::Current | CrlWindow::Retired | CrlWindow::Peer)) => Finding::pass(id),
        (_, reason::REFRESH_DUE, _) | ("True", _, Some(CrlWindow::RefreshDue)) => Finding::warn(id, what, fix),
        _ => Finding::fail(id, what, fix),
    }
}

fn display(icc: &IstioCACerts) -> String {
    format!(
        "IstioCACerts {}/{}",
        icc.namespace().unwrap_or_default(),
        icc.name_any()
    )
}

fn describe(icc: &IstioCACerts) -> String {
    format!(
        "kubectl -n {} describe istiocacerts {} (its conditions and events say what to change)",
        icc.namespace().unwrap_or_default(),
        icc.name_any()
    )
}

fn ready(icc: &IstioCACerts) -> Finding {
    let id = CheckId::IstioCACertsReady;
    let conditions = icc.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    match find(conditions, READY) {
        None => {
            return Finding::fail(
                id,
                format!("{} has no Ready condition: is the controller running?", display(icc)),
                describe(icc),
            );
        }
        Some(c) if c.status != "True" => {
            return Finding::fail(
                id,
                format!("{} is not Ready: {}: {}", display(icc), c.reason, c.message),
                describe(icc),
            );
        }
        Some(c) if c.observed_generation != icc.metadata.generation => {
            return Finding::fail(
                id,
                format!(
                    "{} was judged at generation {:?}, not its current {:?}: the controller has not seen its last change",
                    display(icc),
                    c.observed_generation,
                    icc.metadata.generation
                ),
                describe(icc),
            );
        }
        Some(_) => {}
    }
    match find(conditions, HEALTHY) {
        Some(c) if c.status != "True" => Finding::warn(
            id,
            format!("{} is Ready but not healthy: {}: {}", display(icc), c.reason, c.message),
            describe(icc),
        ),
        _ => Finding::pass(id),
    }
}

fn fresh(o: &Observed, icc: &IstioCACerts) -> Finding {
    let id = CheckId::IstioCACertsFresh;
    let ns = icc.namespace().unwrap_or_default();
    let (source_name, target_name) = (&icc.spec.source_secret_name, &icc.spec.target_secret_name);
    let read = |name: &String| {
        o.secrets
            .get(name)
            .cloned()
            .unwrap_or_else(|| Err(format!("Secret {ns}/{name} was not read")))
    };
    let (source, target) = match (read(source_name), read(target_name)) {
        (Err(e), _) | (_, Err(e)) => {
            return Finding::warn(
                id,
                format!("not checked: {e}"),
                format!("meshca check needs get on secrets in {ns}: {}#rbac", super::DOCS),
            );
        }
        (Ok(s), Ok(t)) => (s, t),
    };
    let Some(source) = source.and_then(|s| s.leaf) else {
        return Finding::fail(
            id,
            format!("Secret {ns}/{source_name} (the issued intermediate) does not exist or holds no certificate"),
            format!("kubectl -n {ns} describe certificate (cert-manager writes it once the request is issued)"),
        );
    };
    let Some(target) = target.and_then(|t| t.leaf) else {
        return Finding::fail(
            id,
            format!("Secret {ns}/{target_name} (istiod's cacerts) does not exist or holds no ca-cert.pem"),
            describe(icc),
        );
    };
    if source.fingerprint == target.fingerprint {
        return Finding::pass(id);
    }
    // During AddingNewRoot the controller keeps the old intermediate on purpose, until every
    // proxy trusts the new root.
    let holding = icc
        .status
        .as_ref()
        .and_then(|s| s.root_rotation.as_ref())
        .is_some_and(|r| r.phase == RotationPhase::AddingNewRoot);
    if holding {
        return Finding::pass(id);
    }
    Finding::fail(
        id,
        format!(
            "{target_name} holds intermediate {} but cert-manager issued {} into {source_name}: istiod signs with a stale intermediate",
            target.display(),
            source.display()
        ),
        describe(icc),
    )
}

fn windows(icc: &IstioCACerts) -> Finding {
    let id = CheckId::IstioCACertsWindows;
    let Some(status) = icc.status.as_ref() else {
        return Finding::pass(id);
    };
    let tracked: Vec<(String, &TrackedCertificate)> = status
        .intermediate
        .iter()
        .map(|c| ("intermediate".to_string(), c))
        .chain(status.roots.iter().map(|c| ("root".to_string(), c)))
        .chain(status.backend_ca.iter().map(|c| ("issuer's CA".to_string(), c)))
        .chain(
            status
                .trust_anchors
                .iter()
                .map(|a| (format!("trust anchor {}", a.name), &a.certificate)),
        )
        .collect();
    let findings = tracked
        .into_iter()
        .map(|(role, c)| {
            let what = format!(
                "{}: {role} {} (SHA-256 {}) is {}",
                display(icc),
                c.subject,
                short(&c.fingerprint_sha256),
                c.window.as_str()
            );
            let fix = format!("{}#istiocacerts-windows", super::DOCS);
            match c.window {
                RenewalWindow::Healthy => Finding::pass(id),
                RenewalWindow::RenewalDue => {
                    Finding::warn(id, format!("{what}: past its renewal time {}", c.renewal_time), fix)
                }
                RenewalWindow::Expiring | RenewalWindow::Expired => {
                    Finding::fail(id, format!("{what}: notAfter {}", c.not_after), fix)
                }
            }
        })
        .collect();
    combine(id, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio_cacerts::RootRotationStatus;
    use crate::cli::check::Status;
    use crate::cli::check::observe::{CertId, SecretCertificates};
    use crate::cli::check::testdata;

    #[test]
    fn ready_needs_ready_at_the_current_generation_and_healthy_certificates() {
        // (case, change, status, problem contains)
        type Change = fn(&mut IstioCACerts);
        let cases: [(&str, Change, Status, &str); 5] = [
            ("ready and healthy", |_| {}, Status::Pass, ""),
            (
                "not ready",
                |icc| {
                    icc.status.as_mut().unwrap().conditions[0] =
                        testdata::condition("Ready", false, "NotOwned", "cacerts was made by hand")
                },
                Status::Fail,
                "NotOwned: cacerts was made by hand",
            ),
            (
                "older generation",
                |icc| icc.metadata.generation = Some(5),
                Status::Fail,
                "not its current Some(5)",
            ),
            (
                "unhealthy",
                |icc| {
                    icc.status.as_mut().unwrap().conditions[1] =
                        testdata::condition(HEALTHY, false, "IntermediateRenewalDue", "renew")
                },
                Status::Warn,
                "Ready but not healthy",
            ),
            ("no status", |icc| icc.status = None, Status::Fail, "no Ready condition"),
        ];
        for (case, change, status, text) in cases {
            let mut icc = testdata::istio_cacerts();
            change(&mut icc);
            let got = ready(&icc);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
    }

    #[test]
    fn cacerts_must_hold_the_intermediate_issued_last() {
        let id = |fp: &str| CertId {
            subject: format!("CN={fp}"),
            fingerprint: fp.repeat(16),
        };
        let secret = |leaf: &str| {
            Ok(Some(SecretCertificates {
                leaf: Some(id(leaf)),
                ..Default::default()
            }))
        };
        // (case, source, target, rotation phase, status, problem contains)
        type Case<'a> = (
            &'a str,
            Result<Option<SecretCertificates>, String>,
            Result<Option<SecretCertificates>, String>,
            Option<RotationPhase>,
            Status,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            ("same", secret("a"), secret("a"), None, Status::Pass, ""),
            (
                "stale",
                secret("b"),
                secret("a"),
                None,
                Status::Fail,
                "istiod signs with a stale intermediate",
            ),
            (
                "held back while adding a root",
                secret("b"),
                secret("a"),
                Some(RotationPhase::AddingNewRoot),
                Status::Pass,
                "",
            ),
            (
                "stale after the switch",
                secret("b"),
                secret("a"),
                Some(RotationPhase::SwitchingIntermediate),
                Status::Fail,
                "stale",
            ),
            (
                "no cacerts",
                secret("a"),
                Ok(None),
                None,
                Status::Fail,
                "istiod's cacerts) does not exist",
            ),
            (
                "no source",
                Ok(None),
                secret("a"),
                None,
                Status::Fail,
                "the issued intermediate) does not exist",
            ),
            (
                "forbidden",
                Err("forbidden (403)".into()),
                secret("a"),
                None,
                Status::Warn,
                "not checked: forbidden",
            ),
        ];
        for (case, source, target, phase, status, text) in cases {
            let mut o = testdata::healthy();
            o.secrets.insert("istiod-intermediate".into(), source);
            o.secrets.insert("cacerts".into(), target);
            let mut icc = testdata::istio_cacerts();
            icc.status.as_mut().unwrap().root_rotation = phase.map(|phase| RootRotationStatus {
                phase,
                old_roots: vec![],
                new_root: String::new(),
                phase_started_at: String::new(),
                next_phase_at: None,
                history: vec![],
            });
            let got = fresh(&o, &icc);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
    }

    /// Revocation off passes; on, CRLsCurrent and each CRL's window decide, and a revoked or
    /// held intermediate fails.
    #[test]
    fn crls_are_current_and_the_intermediate_not_revoked() {
        use crate::api::istio_cacerts::{CrlWindow, Revocation, TrackedCrl};
        type Change = fn(&mut IstioCACerts);
        let on: Change = |icc| {
            icc.spec.revocation = Some(Revocation {
                enabled: true,
                ..Default::default()
            });
            let status = icc.status.as_mut().unwrap();
            status
                .conditions
                .push(testdata::condition("CRLsCurrent", true, "Current", "2 CRLs"));
            status.crl = vec![TrackedCrl::default(), TrackedCrl::default()];
        };
        let cases: [(&str, Change, Status, &str); 7] = [
            ("revocation off", |_| {}, Status::Pass, ""),
            ("current", on, Status::Pass, ""),
            (
                "refresh due",
                |icc| {
                    (icc.status.as_mut().unwrap().conditions[2]) =
                        testdata::condition("CRLsCurrent", false, "CRLRefreshDue", "could not be replaced");
                },
                Status::Warn,
                "CRLRefreshDue: could not be replaced",
            ),
            (
                "expiring",
                |icc| icc.status.as_mut().unwrap().crl[1].window = CrlWindow::Expiring,
                Status::Fail,
                "CRLsCurrent Current",
            ),
            (
                "unavailable",
                |icc| {
                    (icc.status.as_mut().unwrap().conditions[2]) =
                        testdata::condition("CRLsCurrent", false, "CRLUnavailable", "no CRL for CN=root");
                },
                Status::Fail,
                "CRLUnavailable: no CRL for CN=root",
            ),
            (
                "intermediate revoked",
                |icc| {
                    icc.status.as_mut().unwrap().conditions[0] =
                        testdata::condition("Ready", false, "IntermediateRevoked", "serial 0a1b");
                },
                Status::Fail,
                "IntermediateRevoked: serial 0a1b",
            ),
            (
                "no condition yet",
                |icc| {
                    icc.status.as_mut().unwrap().conditions.pop();
                },
                Status::Fail,
                "no CRLsCurrent condition",
            ),
        ];
        for (case, change, status, text) in cases {
            let mut icc = testdata::istio_cacerts();
            if case != "revocation off" {
                on(&mut icc);
            }
            change(&mut icc);
            let got = crls(&icc);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
    }

    #[test]
    fn windows_warn_when_due_and_fail_when_expiring() {
        // (case, window of the intermediate, status)
        let cases = [
            ("healthy", RenewalWindow::Healthy, Status::Pass),
            ("due", RenewalWindow::RenewalDue, Status::Warn),
            ("expiring", RenewalWindow::Expiring, Status::Fail),
            ("expired", RenewalWindow::Expired, Status::Fail),
        ];
        for (case, window, status) in cases {
            let mut icc = testdata::istio_cacerts();
            icc.status.as_mut().unwrap().intermediate.as_mut().unwrap().window = window;
            let got = windows(&icc);
            assert_eq!(got.status, status, "{case}: {got:?}");
            if status != Status::Pass {
                assert!(
                    got.problem
                        .unwrap()
                        .contains("intermediate CN=istiod intermediate (SHA-256 "),
                    "{case}"
                );
            }
        }
        let mut o = testdata::healthy();
        o.istio_cacerts = Ok(vec![]);
        assert_eq!(check(&o).len(), 1, "no IstioCACerts: one failure");
    }
}
