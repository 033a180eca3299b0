//! The issuance policy: given what a request asks for, what the issuer allows and the signing
//! CA's lifetime, decide exactly what to sign — or why not. Pure; the clock is a parameter.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::csr::{CertificateSigningRequest, spiffe_trust_domain};
use crate::api::issuer::IssuancePolicy;
use crate::duration::parse_go_duration;

/// cert-manager's default lifetime when a Certificate sets no `spec.duration`.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);
/// How far notBefore is moved into the past, to tolerate clock skew between the nodes that
/// issue, store and load the certificate.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// What the request carries besides its CSR.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts<'a> {
    /// `spec.isCA`.
    pub is_ca: Option<bool>,
    /// `spec.duration`, a Go duration.
    pub duration: Option<&'a str>,
}

/// The lifetime of the CA that will sign, and any cap the backend puts on what it issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaLifetime {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// E.g. 7 days for an AWS PCA in short-lived certificate mode.
    pub max_validity: Option<Duration>,
}

/// Exactly what will be signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningPlan {
    /// `Some(pathLen)` for a CA certificate, `None` for a leaf.
    pub ca_path_len: Option<u8>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// The lifetime that was asked for (or cert-manager's default).
    pub requested: Duration,
    /// Set when notAfter was cut short, with the reason ("the CA expires at ...").
    pub clamped: Option<String>,
    /// The NameConstraints extension a CA certificate must carry (`policy.nameConstraints`);
    /// filled in by [`super::name_constraints::decide`] after the plan is made.
    pub name_constraints: Option<super::name_constraints::NameConstraints>,
}

/// Why a request is refused. Each message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error(
        "the request is not for a CA certificate (spec.isCA is not true), and this issuer signs only CA certificates (policy.requireCA); set isCA: true on the Certificate"
    )]
    NotCA,
    #[error("the CSR asks for pathLen {requested}, above this issuer's policy.maxPathLen {max}")]
    PathLenTooLong { requested: u32, max: u8 },
    #[error("spec.duration {requested:?} is invalid: {reason}")]
    InvalidDuration { requested: String, reason: String },
    #[error("spec.duration {requested} exceeds this issuer's policy.maxDuration {max}")]
    DurationTooLong { requested: String, max: String },
    #[error(
        "the CSR's URI SAN {uri:?} is not a valid SPIFFE ID (spiffe://<trust domain>/<path>); only SPIFFE IDs are signed"
    )]
    InvalidSpiffeId { uri: String },
    #[error(
        "the CSR's SPIFFE ID {uri:?} is in trust domain {domain:?}, which is not allowed (allowed: {allowed:?}); add it to the issuer's spec.policy.allowedTrustDomains, or set the controller's --trust-domain"
    )]
    TrustDomainNotAllowed {
        uri: String,
        domain: String,
        allowed: Vec<String>,
    },
    #[error("the signing CA is not valid now (valid {not_before} to {not_after})")]
    CaNotValid {
        not_before: Timestamp,
        not_after: Timestamp,
    },
}

/// The trust domains SPIFFE IDs in a request may name: the issuer's
/// `spec.policy.allowedTrustDomains`, or, when that is empty, only `default_trust_domain` (the
/// controller's `--trust-domain`). Lower-cased, as trust domains compare.
pub fn effective_trust_domains(policy: &IssuancePolicy, default_trust_domain: &str) -> Vec<String> {
    let configured = if policy.allowed_trust_domains.is_empty() {
        vec![default_trust_domain.to_string()]
    } else {
        policy.allowed_trust_domains.clone()
    };
    let mut domains: Vec<String> = Vec::new();
    for domain in configured.iter().map(|d| d.to_ascii_lowercase()) {
        if !domains.contains(&domain) {
            domains.push(domain);
        }
    }
    domains
}

/// The policy a request is judged by: the issuer's, with the controller's defaults filled in
/// where the issuer left them empty (see [`effective_trust_domains`]).
pub fn with_defaults(policy: &IssuancePolicy, default_trust_domain: &str) -> IssuancePolicy {
    IssuancePolicy {
        allowed_trust_domains: effective_trust_domains(policy, default_trust_domain),
        ..policy.clone()
    }
}

/// Checks a policy's own fields; an invalid policy makes the issuer not Ready.
pub fn validate_policy(policy: &IssuancePolicy) -> Result<Duration, String> {
    parse_go_duration(&policy.max_duration).map_err(|e| format!("policy.maxDuration: {e}"))
}

/// Decides what to sign for `csr` under `policy`, or why not.
pub fn plan(
    csr: &CertificateSigningRequest,
    facts: &RequestFacts<'_>,
    policy: &IssuancePolicy,
    ca: &CaLifetime,
    now: Timestamp,
) -> Result<SigningPlan, PolicyViolation> {
    // CA-ness: cert-manager says it in spec.isCA; a CSR may also carry BasicConstraints.
    let csr_ca = csr.requested_ca.map(|(ca, _)| ca);
    let wants_ca = facts.is_ca == Some(true) || csr_ca == Some(true);
    if policy.require_ca && !wants_ca {
        return Err(PolicyViolation::NotCA);
    }
    let ca_path_len = if wants_ca {
        match csr.requested_ca.and_then(|(_, path_len)| path_len) {
            Some(requested) if requested > u32::from(policy.max_path_len) => {
                return Err(PolicyViolation::PathLenTooLong {
                    requested,
                    max: policy.max_path_len,
                });
            }
            // The CSR's own (smaller) constraint is honoured; otherwise the policy's.
            Some(requested) => Some(requested as u8),
            None => Some(policy.max_path_len),
        }
    } else {
        None
    };

    let requested = match facts.duration {
        Some(text) => parse_go_duration(text).map_err(|e| PolicyViolation::InvalidDuration {
            requested: text.to_string(),
            reason: e.reason.to_string(),
        })?,
        None => DEFAULT_DURATION,
    };
    if requested.is_zero() {
        return Err(PolicyViolation::InvalidDuration {
            requested: "0".into(),
            reason: "must be positive".into(),
        });
    }
    // An unparsable maxDuration is caught by issuer validation; here it only means "no cap".
    if let Ok(max) = parse_go_duration(&policy.max_duration)
        && requested > max
    {
        return Err(PolicyViolation::DurationTooLong {
            requested: facts.duration.unwrap_or("2160h").to_string(),
            max: policy.max_duration.clone(),
        });
    }

    // Every URI SAN must be a SPIFFE ID in an allowed trust domain. An empty list allows none:
    // callers fill in the controller's default first ([`with_defaults`]).
    for uri in csr.uris() {
        let domain =
            spiffe_trust_domain(uri).ok_or_else(|| PolicyViolation::InvalidSpiffeId { uri: uri.to_string() })?;
        let allowed = &policy.allowed_trust_domains;
        if !allowed.iter().any(|d| d.eq_ignore_ascii_case(&domain)) {
            return Err(PolicyViolation::TrustDomainNotAllowed {
                uri: uri.to_string(),
                domain,
                allowed: allowed.clone(),
            });
        }
    }

    if now < ca.not_before || now >= ca.not_after {
        return Err(PolicyViolation::CaNotValid {
            not_before: ca.not_before,
            not_after: ca.not_after,
        });
    }
    let backdated = now - signed(BACKDATE);
    let not_before = if backdated < ca.not_before {
        ca.not_before
    } else {
        backdated
    };
    let mut not_after = now + signed(requested);
    let mut clamped = None;
    if let Some(max) = ca.max_validity {
        let cap = now + signed(max);
        if not_after > cap {
            not_after = cap;
            clamped = Some(format!(
                "the backend issues certificates for at most {}",
                crate::duration::format_go_duration(max)
            ));
        }
    }
    if not_after > ca.not_after {
        not_after = ca.not_after;
        clamped = Some(format!("the signing CA expires at {}", ca.not_after));
    }
    Ok(SigningPlan {
        ca_path_len,
        not_before,
        not_after,
        requested,
        clamped,
        name_constraints: None,
    })
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::csr::SubjectAltName;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;

    fn csr(requested_ca: Option<(bool, Option<u32>)>, uris: &[&str]) -> CertificateSigningRequest {
        // Only the fields the policy reads matter; the DER is not looked at.
        let mut c = crate::pki::sign::tests::istiod_csr();
        c.requested_ca = requested_ca;
        c.sans = uris.iter().map(|u| SubjectAltName::Uri(u.to_string())).collect();
        c
    }

    fn ca() -> CaLifetime {
        CaLifetime {
            not_before: at(NOW - 10 * DAY),
            not_after: at(NOW + 3650 * DAY),
            max_validity: None,
        }
    }

    /// The default policy as the controller applies it: `--trust-domain cluster.local`.
    fn policy() -> IssuancePolicy {
        with_defaults(&IssuancePolicy::default(), "cluster.local")
    }

    fn ca_request() -> RequestFacts<'static> {
        RequestFacts {
            is_ca: Some(true),
            duration: None,
        }
    }

    #[test]
    fn policy_decisions() {
        let domains = IssuancePolicy {
            allowed_trust_domains: vec!["cluster.local".into()],
            ..policy()
        };
        let path1 = IssuancePolicy {
            max_path_len: 1,
            ..policy()
        };
        let leaf_ok = IssuancePolicy {
            require_ca: false,
            ..policy()
        };
        let no_ca = RequestFacts {
            is_ca: None,
            duration: None,
        };
        let long = RequestFacts {
            is_ca: Some(true),
            duration: Some("9000h"),
        };
        let bad = RequestFacts {
            is_ca: Some(true),
            duration: Some("ten days"),
        };
        type Case<'a> = (
            &'a str,
            CertificateSigningRequest,
            RequestFacts<'a>,
            IssancePolicyRef<'a>,
            Result<Option<u8>, &'a str>,
        );
        type IssancePolicyRef<'a> = &'a IssuancePolicy;
        let p = policy();
        let raw = IssuancePolicy::default();
        let cases: Vec<Case> = vec![
            // istiod's intermediate as cert-manager asks for it: CA, pathLen from the policy.
            (
                "default istiod request",
                csr(None, &["spiffe://cluster.local/ns/istio-system/sa/istiod"]),
                ca_request(),
                &p,
                Ok(Some(0)),
            ),
            // CA-ness may also come from the CSR's BasicConstraints.
            (
                "CA from CSR",
                csr(Some((true, None)), &[]),
                no_ca.clone(),
                &p,
                Ok(Some(0)),
            ),
            // Not a CA while requireCA: refused.
            ("leaf refused", csr(None, &[]), no_ca.clone(), &p, Err("NotCA")),
            // Leaf allowed when requireCA is off: no CA constraints.
            ("leaf allowed", csr(None, &[]), no_ca.clone(), &leaf_ok, Ok(None)),
            // A smaller requested pathLen is honoured.
            (
                "smaller pathLen",
                csr(Some((true, Some(0))), &[]),
                ca_request(),
                &path1,
                Ok(Some(0)),
            ),
            // A larger one is refused.
            (
                "pathLen too long",
                csr(Some((true, Some(2))), &[]),
                ca_request(),
                &path1,
                Err("PathLenTooLong"),
            ),
            // Above maxDuration: refused, not clamped.
            ("duration too long", csr(None, &[]), long, &p, Err("DurationTooLong")),
            ("duration garbage", csr(None, &[]), bad, &p, Err("InvalidDuration")),
            // Trust domain allow-list.
            (
                "allowed domain",
                csr(None, &["spiffe://Cluster.Local/ns/istio-system/sa/istiod"]),
                ca_request(),
                &domains,
                Ok(Some(0)),
            ),
            (
                "foreign domain",
                csr(None, &["spiffe://evil.example/ns/x/sa/y"]),
                ca_request(),
                &domains,
                Err("TrustDomainNotAllowed"),
            ),
            (
                "broken spiffe id",
                csr(None, &["spiffe:///ns/x"]),
                ca_request(),
                &p,
                Err("InvalidSpiffeId"),
            ),
            // Any URI SAN must be a SPIFFE ID.
            (
                "https uri",
                csr(None, &["https://example.org/x"]),
                ca_request(),
                &domains,
                Err("InvalidSpiffeId"),
            ),
            // With no allowedTrustDomains, only the controller's default trust domain.
            (
                "default domain",
                csr(None, &["spiffe://cluster.local/ns/istio-system/sa/istiod"]),
                ca_request(),
                &p,
                Ok(Some(0)),
            ),
            (
                "outside the default domain",
                csr(None, &["spiffe://evil.example/ns/istio-system/sa/istiod"]),
                ca_request(),
                &p,
                Err("TrustDomainNotAllowed"),
            ),
            // An empty list reaching plan() allows nothing (fail closed).
            (
                "no defaults filled in",
                csr(None, &["spiffe://cluster.local/ns/istio-system/sa/istiod"]),
                ca_request(),
                &raw,
                Err("TrustDomainNotAllowed"),
            ),
        ];
        for (name, csr, facts, policy, expected) in cases {
            let got = plan(&csr, &facts, policy, &ca(), at(NOW));
            match (got, expected) {
                (Ok(plan), Ok(path_len)) => assert_eq!(plan.ca_path_len, path_len, "{name}"),
                (Err(v), Err(variant)) => {
                    assert!(format!("{v:?}").starts_with(variant), "{name}: {v:?}")
                }
                (got, expected) => panic!("{name}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_default_trust_domain_applies_only_when_none_are_configured() {
        let empty = IssuancePolicy::default();
        assert_eq!(effective_trust_domains(&empty, "cluster.local"), ["cluster.local"]);
        assert_eq!(effective_trust_domains(&empty, "Mesh.Example"), ["mesh.example"]);
        let configured = IssuancePolicy {
            allowed_trust_domains: vec!["east.example".into(), "West.Example".into()],
            ..IssuancePolicy::default()
        };
        assert_eq!(
            effective_trust_domains(&configured, "cluster.local"),
            ["east.example", "west.example"],
            "configured domains replace the default, they do not add to it"
        );
    }

    #[test]
    fn validity_defaults_backdates_and_clamps() {
        let p = policy();
        // No duration: cert-manager's 90 days, notBefore 5 minutes back.
        let plan0 = plan(&csr(None, &[]), &ca_request(), &p, &ca(), at(NOW)).unwrap();
        assert_eq!(plan0.not_after, at(NOW + 90 * DAY));
        assert_eq!(plan0.not_before, at(NOW - 300));
        assert_eq!(plan0.clamped, None);

        // The CA expires in 30 days: notAfter is clamped to it, and the plan says so.
        let short_ca = CaLifetime {
            not_after: at(NOW + 30 * DAY),
            ..ca()
        };
        let clamped = plan(&csr(None, &[]), &ca_request(), &p, &short_ca, at(NOW)).unwrap();
        assert_eq!(clamped.not_after, at(NOW + 30 * DAY));
        assert!(clamped.clamped.unwrap().contains("signing CA expires"));

        // A backend cap (short-lived PCA mode) applies too.
        let capped_ca = CaLifetime {
            max_validity: Some(Duration::from_secs(7 * DAY as u64)),
            ..ca()
        };
        let capped = plan(&csr(None, &[]), &ca_request(), &p, &capped_ca, at(NOW)).unwrap();
        assert_eq!(capped.not_after, at(NOW + 7 * DAY));

        // A CA issued a minute ago: notBefore is not moved before the CA's own.
        let new_ca = CaLifetime {
            not_before: at(NOW - 60),
            ..ca()
        };
        let fresh = plan(&csr(None, &[]), &ca_request(), &p, &new_ca, at(NOW)).unwrap();
        assert_eq!(fresh.not_before, at(NOW - 60));

        // An expired CA signs nothing.
        let expired = CaLifetime {
            not_after: at(NOW - 1),
            ..ca()
        };
        assert!(matches!(
            plan(&csr(None, &[]), &ca_request(), &p, &expired, at(NOW)),
            Err(PolicyViolation::CaNotValid { .. })
        ));
    }
}
