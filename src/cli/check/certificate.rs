//! istiod's Certificate: the cert-manager Certificate(s) in istiod's namespace that ask one of
//! our issuers for istiod's intermediate, or whose Secret an IstioCACerts copies. Each must ask
//! for a CA, renew well before istiod's workload certificates could outlive it, name a Ready
//! issuer of ours, and feed an IstioCACerts. Pure.

use jiff::SignedDuration;

use super::issuers::{DEFAULT_DURATION, duration, readiness};
use super::observe::{Observed, issuer_key_of};
use super::{CheckId, Finding, combine};
use crate::api::cert_manager::Certificate;
use kube::ResourceExt;

/// istiod's `DEFAULT_WORKLOAD_CERT_TTL` when its Deployment does not set it.
pub const DEFAULT_WORKLOAD_TTL: SignedDuration = SignedDuration::from_hours(24);

pub fn check(o: &Observed) -> Vec<Finding> {
    let certificates = match mesh_certificates(o) {
        Ok(c) if !c.is_empty() => c,
        Ok(_) => {
            return vec![Finding::fail(
                CheckId::CertificateFound,
                format!(
                    "no Certificate in {} names an issuer of group meshca.io or writes an IstioCACerts' source Secret",
                    o.settings_namespace
                ),
                "kubectl apply -f config/samples/certificate-istiod.yaml (adapt the issuer and trust domain)",
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                CheckId::CertificateFound,
                e,
                format!("{}#rbac", super::DOCS),
            )];
        }
    };
    vec![
        Finding::pass(CheckId::CertificateFound),
        combine(CheckId::CertificateCa, certificates.iter().map(|c| is_ca(c)).collect()),
        combine(
            CheckId::CertificateLifetimes,
            certificates.iter().map(|c| lifetimes(c, workload_ttl(o))).collect(),
        ),
        combine(
            CheckId::CertificateIssuer,
            certificates.iter().map(|c| issuer(o, c)).collect(),
        ),
        combine(
            CheckId::CertificateSource,
            certificates.iter().map(|c| source(o, c)).collect(),
        ),
    ]
}

/// The Certificates this mesh's CA comes from.
pub fn mesh_certificates(o: &Observed) -> Result<Vec<&Certificate>, String> {
    let certificates = o.certificates.as_ref().map_err(Clone::clone)?;
    let sources: Vec<&str> = o
        .istio_cacerts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|icc| icc.spec.source_secret_name.as_str())
        .collect();
    Ok(certificates
        .iter()
        .filter(|c| issuer_key_of(&o.settings_namespace, c).is_some() || sources.contains(&c.spec.secret_name.as_str()))
        .collect())
}

fn name(c: &Certificate) -> String {
    format!("Certificate {}/{}", c.namespace().unwrap_or_default(), c.name_any())
}

/// cert-manager's usages as the CSR carries them: the given ones (else its defaults, digital
/// signature and key encipherment), plus cert sign for a CA.
pub fn effective_usages(c: &Certificate) -> Vec<String> {
    let mut usages = c
        .spec
        .usages
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| vec!["digital signature".into(), "key encipherment".into()]);
    if c.spec.is_ca == Some(true) && !usages.iter().any(|u| u == "cert sign") {
        usages.push("cert sign".into());
    }
    usages
}

fn is_ca(c: &Certificate) -> Finding {
    let id = CheckId::CertificateCa;
    let patch = format!(
        "kubectl -n {} patch certificate {} --type merge -p '{{\"spec\":{{\"isCA\":true,\"usages\":[\"cert sign\",\"digital signature\"]}}}}'",
        c.namespace().unwrap_or_default(),
        c.name_any()
    );
    if c.spec.is_ca != Some(true) {
        return Finding::fail(
            id,
            format!(
                "{} lacks isCA: true, so istiod would get a leaf certificate it cannot sign with",
                name(c)
            ),
            patch,
        );
    }
    let usages = effective_usages(c);
    let missing: Vec<&str> = ["cert sign", "digital signature"]
        .into_iter()
        .filter(|u| !usages.iter().any(|have| have == u))
        .collect();
    if missing.is_empty() {
        Finding::pass(id)
    } else {
        Finding::fail(
            id,
            format!(
                "{} usages [{}] lack {}",
                name(c),
                usages.join(", "),
                missing.join(" and ")
            ),
            patch,
        )
    }
}

/// The longest `DEFAULT_WORKLOAD_CERT_TTL` of the istiod Deployments, else istiod's default.
pub fn workload_ttl(o: &Observed) -> SignedDuration {
    o.istiods
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|d| super::istiod::env_of(d, "DEFAULT_WORKLOAD_CERT_TTL"))
        .filter_map(|v| duration(&v))
        .max()
        .unwrap_or(DEFAULT_WORKLOAD_TTL)
}

/// cert-manager's renewBefore: the given one, else the percentage of the lifetime, else a third.
pub fn renew_before(c: &Certificate, lifetime: SignedDuration) -> SignedDuration {
    if let Some(r) = c.spec.renew_before.as_deref().and_then(duration) {
        return r;
    }
    match c.spec.renew_before_percentage {
        Some(p) if (1..100).contains(&p) => lifetime * p / 100,
        _ => lifetime / 3,
    }
}

fn hours(d: SignedDuration) -> String {
    if d.as_secs() % 3600 == 0 {
        format!("{}h", d.as_hours())
    } else {
        format!("{}m", d.as_mins())
    }
}

fn lifetimes(c: &Certificate, workload_ttl: SignedDuration) -> Finding {
    let id = CheckId::CertificateLifetimes;
    let lifetime = c
        .spec
        .duration
        .as_deref()
        .and_then(duration)
        .unwrap_or(DEFAULT_DURATION);
    let renew = renew_before(c, lifetime);
    let set = |field: &str, value: String| {
        format!(
            "kubectl -n {} patch certificate {} --type merge -p '{{\"spec\":{{\"{field}\":\"{value}\"}}}}'",
            c.namespace().unwrap_or_default(),
            c.name_any()
        )
    };
    if renew >= lifetime {
        return Finding::fail(
            id,
            format!(
                "{}: renewBefore {} is not below its duration {}",
                name(c),
                hours(renew),
                hours(lifetime)
            ),
            set("renewBefore", hours(lifetime / 3)),
        );
    }
    if renew <= workload_ttl {
        return Finding::fail(
            id,
            format!(
                "{}: renewBefore {} is not above istiod's workload certificate lifetime {}: workload certificates signed before the renewal can outlive the intermediate",
                name(c),
                hours(renew),
                hours(workload_ttl)
            ),
            set("renewBefore", hours((workload_ttl * 3).min(lifetime / 2))),
        );
    }
    Finding::pass(id)
}

fn issuer(o: &Observed, c: &Certificate) -> Finding {
    let id = CheckId::CertificateIssuer;
    let Some(key) = issuer_key_of(&o.settings_namespace, c) else {
        let r = &c.spec.issuer_ref;
        return Finding::fail(
            id,
            format!(
                "{} names {} {} of group {}, not a MeshCAIssuer or ClusterMeshCAIssuer",
                name(c),
                r.kind.as_deref().unwrap_or("Issuer"),
                r.name,
                r.group.as_deref().unwrap_or(crate::api::cert_manager::GROUP)
            ),
            "set spec.issuerRef to group meshca.io, kind ClusterMeshCAIssuer (or MeshCAIssuer) and the issuer's name",
        );
    };
    match readiness(o, &key) {
        Ok(()) => Finding::pass(id),
        Err(problem) => Finding::fail(
            id,
            format!("{}: {problem}", name(c)),
            format!("kubectl describe {}", super::issuers::describe_target(&key)),
        ),
    }
}

fn source(o: &Observed, c: &Certificate) -> Finding {
    let id = CheckId::CertificateSource;
    let fed = o
        .istio_cacerts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|icc| icc.spec.source_secret_name == c.spec.secret_name);
    if fed {
        Finding::pass(id)
    } else {
        Finding::fail(
            id,
            format!(
                "{} writes Secret {}, which no IstioCACerts in {} reads: nothing puts it into cacerts",
                name(c),
                c.spec.secret_name,
                o.settings_namespace
            ),
            format!(
                "set spec.sourceSecretName: {} on the IstioCACerts (config/samples/istiocacerts.yaml)",
                c.spec.secret_name
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::Status;
    use crate::cli::check::testdata;

    fn cert(f: impl FnOnce(&mut Certificate)) -> Certificate {
        let mut c = testdata::istiod_certificate();
        f(&mut c);
        c
    }

    #[test]
    fn istiods_certificate_must_ask_for_a_ca_with_both_usages() {
        // (case, Certificate, status, problem contains)
        let cases = [
            ("isCA, default usages", cert(|_| {}), Status::Pass, ""),
            (
                "isCA, explicit usages",
                cert(|c| c.spec.usages = Some(vec!["cert sign".into(), "digital signature".into()])),
                Status::Pass,
                "",
            ),
            (
                "not a CA",
                cert(|c| c.spec.is_ca = None),
                Status::Fail,
                "lacks isCA: true",
            ),
            (
                "no digital signature",
                cert(|c| c.spec.usages = Some(vec!["cert sign".into()])),
                Status::Fail,
                "lack digital signature",
            ),
        ];
        for (case, c, status, text) in cases {
            let got = is_ca(&c);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
            if status == Status::Fail {
                assert!(got.fix.unwrap().contains("\"isCA\":true"), "{case}");
            }
        }
    }

    #[test]
    fn renew_before_sits_between_the_duration_and_the_workload_lifetime() {
        let day = SignedDuration::from_hours(24);
        // (case, Certificate, workload TTL, status, problem contains)
        let cases = [
            ("defaults: 2160h, a third", cert(|_| {}), day, Status::Pass, ""),
            (
                "renewBefore above duration",
                cert(|c| c.spec.renew_before = Some("3000h".into())),
                day,
                Status::Fail,
                "not below its duration 2160h",
            ),
            (
                "renewBefore under a day",
                cert(|c| c.spec.renew_before = Some("12h".into())),
                day,
                Status::Fail,
                "not above istiod's workload certificate lifetime 24h",
            ),
            (
                "short intermediate, long workloads",
                cert(|c| c.spec.duration = Some("72h".into())),
                SignedDuration::from_hours(48),
                Status::Fail,
                "renewBefore 24h is not above",
            ),
            (
                "percentage",
                cert(|c| {
                    c.spec.duration = Some("240h".into());
                    c.spec.renew_before_percentage = Some(50);
                }),
                day,
                Status::Pass,
                "",
            ),
        ];
        for (case, c, ttl, status, text) in cases {
            let got = lifetimes(&c, ttl);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
    }

    #[test]
    fn the_certificate_names_a_ready_issuer_of_ours_and_feeds_an_istiocacerts() {
        let o = testdata::healthy();
        assert_eq!(
            check(&o).iter().map(|f| f.status).collect::<Vec<_>>(),
            vec![Status::Pass; 5],
            "{:?}",
            check(&o)
        );
        // A cert-manager CA Issuer instead of ours.
        let mut o = testdata::healthy();
        o.certificates = Ok(vec![cert(|c| {
            c.spec.issuer_ref.group = Some("cert-manager.io".into());
            c.spec.issuer_ref.kind = Some("Issuer".into());
        })]);
        let got = issuer(&o, &o.certificates.as_ref().unwrap()[0]);
        assert!(
            got.problem
                .unwrap()
                .contains("names Issuer mesh-root of group cert-manager.io")
        );
        // The issuer is not Ready.
        let mut o = testdata::healthy();
        o.issuers[0].issuer = Ok(None);
        let c = o.certificates.as_ref().unwrap()[0].clone();
        assert!(issuer(&o, &c).problem.unwrap().contains("does not exist"));
        // Its Secret is no IstioCACerts' source.
        let mut o = testdata::healthy();
        o.istio_cacerts.as_mut().unwrap()[0].spec.source_secret_name = "other".into();
        let got = source(&o, &c);
        assert_eq!(got.status, Status::Fail);
        assert!(got.fix.unwrap().contains("sourceSecretName: istiod-intermediate"));
        // None at all: one failure, the rest not run.
        let mut o = testdata::healthy();
        o.certificates = Ok(vec![]);
        o.istio_cacerts = Ok(vec![]);
        let got = check(&o);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].id, got[0].status), (CheckId::CertificateFound, Status::Fail));
    }
}
