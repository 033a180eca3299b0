//! Issuers the mesh uses: Ready, a CA that outlives the intermediates asked of it, and no use
//! of the controller's own AWS identity or endpoint choice that its flags forbid. Pure.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;

use super::installation::controller_flag;
use super::observe::{IssuerKey, Observed};
use super::{CheckId, Finding, combine};
use crate::backend::{AmbientPolicy, IssuerScope};

/// cert-manager's default `spec.duration`.
pub const DEFAULT_DURATION: SignedDuration = SignedDuration::from_hours(2160);

pub fn check(o: &Observed, now: Timestamp) -> Vec<Finding> {
    vec![ready(o), ca_validity(o, now), ambient(o)]
}

/// A Go duration as cert-manager writes it.
pub fn duration(s: &str) -> Option<SignedDuration> {
    crate::duration::parse_go_duration(s)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
}

/// Whether an issuer's Ready condition is True for its current generation, else why not.
pub fn readiness(o: &Observed, key: &IssuerKey) -> Result<(), String> {
    let Some(found) = o.issuers.iter().find(|i| &i.key == key) else {
        return Err(format!("{} was not read", key.display()));
    };
    let issuer = match &found.issuer {
        Err(e) => return Err(e.clone()),
        Ok(None) => return Err(format!("{} does not exist", key.display())),
        Ok(Some(i)) => i,
    };
    let conditions = issuer
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    match crate::api::conditions::find(conditions, crate::api::conditions::READY) {
        None => Err(format!(
            "{} has no Ready condition yet: is the controller running?",
            key.display()
        )),
        Some(c) if c.status == "True" && c.observed_generation == issuer.generation => Ok(()),
        Some(c) if c.status == "True" => Err(format!(
            "{} was checked at generation {:?}, not its current {:?}: the controller has not seen its last change",
            key.display(),
            c.observed_generation,
            issuer.generation
        )),
        Some(c) => Err(format!("{} is not Ready: {}: {}", key.display(), c.reason, c.message)),
    }
}

fn ready(o: &Observed) -> Finding {
    let id = CheckId::IssuersReady;
    if o.issuers.is_empty() {
        return Finding::fail(
            id,
            format!(
                "no issuer of ours is named by a Certificate in {0}, and {0} has no MeshCAIssuer",
                o.settings_namespace
            ),
            format!("create one: {}#issuers-ready", super::DOCS),
        );
    }
    combine(
        id,
        o.issuers
            .iter()
            .map(|i| match readiness(o, &i.key) {
                Ok(()) => Finding::pass(id),
                Err(problem) => Finding::fail(
                    id,
                    problem,
                    format!(
                        "kubectl describe {} — its Ready message says what to change",
                        describe_target(&i.key)
                    ),
                ),
            })
            .collect(),
    )
}

/// `kubectl describe` arguments for an issuer.
pub fn describe_target(key: &IssuerKey) -> String {
    match &key.namespace {
        Some(ns) => format!("-n {ns} meshcaissuer {}", key.name),
        None => format!("clustermeshcaissuer {}", key.name),
    }
}

/// The longest `spec.duration` the mesh's Certificates ask of `key`.
fn longest_requested(o: &Observed, key: &IssuerKey) -> Option<SignedDuration> {
    o.certificates
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|c| super::observe::issuer_key_of(&o.settings_namespace, c).as_ref() == Some(key))
        .map(|c| {
            c.spec
                .duration
                .as_deref()
                .and_then(duration)
                .unwrap_or(DEFAULT_DURATION)
        })
        .max()
}

fn ca_validity(o: &Observed, now: Timestamp) -> Finding {
    let id = CheckId::IssuersCaValidity;
    let findings = o
        .issuers
        .iter()
        .filter_map(|i| {
            let issuer = i.issuer.as_ref().ok()?.as_ref()?;
            let ca = issuer.status.as_ref()?.ca.as_ref()?;
            let not_after: Timestamp = ca.not_after.parse().ok()?;
            let longest = longest_requested(o, &i.key)?;
            let rotate = "rotate the issuer's CA in time: docs/root-rotation.md";
            Some(if not_after <= now {
                Finding::fail(
                    id,
                    format!("the CA of {} ({}) expired at {not_after}", i.key.display(), ca.subject),
                    rotate,
                )
            } else if not_after < now + longest {
                Finding::warn(
                    id,
                    format!(
                        "the CA of {} ({}) expires at {not_after}, before an intermediate requested now would ({}h): intermediates are cut short to it, and the mesh stops at that date",
                        i.key.display(),
                        ca.subject,
                        longest.as_hours()
                    ),
                    rotate,
                )
            } else {
                Finding::pass(id)
            })
        })
        .collect();
    combine(id, findings)
}

/// What the controller's flags allow issuers (its defaults when no Deployment was found).
pub fn ambient_policy(deployments: &[Deployment]) -> AmbientPolicy {
    let defaults = AmbientPolicy::default();
    let Some(d) = deployments.first() else {
        return defaults;
    };
    let flag = |name: &str, env: &str, default: bool| {
        controller_flag(d, name, env).map_or(default, |v| v.trim().eq_ignore_ascii_case("true"))
    };
    AmbientPolicy {
        issuer_ambient_credentials: flag(
            "--issuer-ambient-credentials",
            "MESHCA_ISSUER_AMBIENT_CREDENTIALS",
            defaults.issuer_ambient_credentials,
        ),
        cluster_issuer_ambient_credentials: flag(
            "--cluster-issuer-ambient-credentials",
            "MESHCA_CLUSTER_ISSUER_AMBIENT_CREDENTIALS",
            defaults.cluster_issuer_ambient_credentials,
        ),
        issuer_endpoint_override: flag(
            "--issuer-endpoint-override",
            "MESHCA_ISSUER_ENDPOINT_OVERRIDE",
            defaults.issuer_endpoint_override,
        ),
    }
}

fn ambient(o: &Observed) -> Finding {
    let id = CheckId::IssuersAmbient;
    let policy = ambient_policy(o.controller.deployments.as_deref().unwrap_or_default());
    let findings = o
        .issuers
        .iter()
        .filter_map(|i| {
            let pca = i.issuer.as_ref().ok()?.as_ref()?.spec.aws_pca.as_ref()?;
            let scope = IssuerScope {
                display: i.key.display(),
                name: i.key.name.clone(),
                secret_namespace: i.key.namespace.clone().unwrap_or_default(),
                cluster_scoped: i.key.cluster_scoped,
            };
            // The controller's own gate decides, so the check and the controller never disagree.
            Some(match crate::backend::aws_pca::ambient_gate(pca, &scope, policy) {
                Ok(()) => Finding::pass(id),
                Err(e) => match e
                    .message
                    .split_once(": set ")
                    .or_else(|| e.message.split_once(": remove "))
                {
                    Some((problem, _)) => {
                        Finding::fail(id, problem.to_string(), e.message[problem.len() + 2..].to_string())
                    }
                    None => Finding::fail(id, e.message.clone(), "docs/aws-pca.md"),
                },
            })
        })
        .collect();
    combine(id, findings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::IssuerStatus;
    use crate::api::issuer::{AwsCredentialsSecretRef, AwsPCA, CertificateSummary, IssuerSpec};
    use crate::cli::check::Status;
    use crate::cli::check::observe::{IssuerObject, IssuerObserved};
    use crate::cli::check::testdata::{self, deployment_with_args};

    fn now() -> Timestamp {
        testdata::now()
    }

    #[test]
    fn ready_means_ready_for_the_current_generation() {
        let ok = testdata::ready_issuer(Some(2), Some(2));
        // (case, issuer as read, status, problem contains)
        type Case<'a> = (&'a str, Result<Option<IssuerObject>, String>, Status, &'a str);
        let cases: Vec<Case> = vec![
            ("ready", Ok(Some(ok.clone())), Status::Pass, ""),
            ("missing", Ok(None), Status::Fail, "does not exist"),
            ("forbidden", Err("forbidden (403)".into()), Status::Fail, "forbidden"),
            (
                "stale generation",
                Ok(Some(testdata::ready_issuer(Some(1), Some(2)))),
                Status::Fail,
                "not its current",
            ),
            (
                "not ready",
                Ok(Some(IssuerObject {
                    status: Some(IssuerStatus {
                        conditions: vec![testdata::condition("Ready", false, "SecretNotFound", "root missing")],
                        ..Default::default()
                    }),
                    ..ok.clone()
                })),
                Status::Fail,
                "SecretNotFound: root missing",
            ),
            (
                "never checked",
                Ok(Some(IssuerObject {
                    status: None,
                    ..ok.clone()
                })),
                Status::Fail,
                "no Ready condition",
            ),
        ];
        for (case, issuer, status, text) in cases {
            let mut o = testdata::healthy();
            o.issuers[0].issuer = issuer;
            let got = ready(&o);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
        let mut o = testdata::healthy();
        o.issuers.clear();
        assert_eq!(ready(&o).status, Status::Fail, "no issuer at all");
    }

    #[test]
    fn the_ca_must_outlive_the_longest_intermediate_requested() {
        // (case, CA notAfter from now, status)
        let cases = [
            ("ten years", SignedDuration::from_hours(87600), Status::Pass),
            ("91 days", SignedDuration::from_hours(91 * 24), Status::Pass),
            ("89 days, 90 asked", SignedDuration::from_hours(89 * 24), Status::Warn),
            ("expired", SignedDuration::from_hours(-1), Status::Fail),
        ];
        for (case, left, status) in cases {
            let mut o = testdata::healthy();
            let Ok(Some(issuer)) = &mut o.issuers[0].issuer else {
                unreachable!()
            };
            issuer.status.as_mut().unwrap().ca = Some(CertificateSummary {
                subject: "CN=root".into(),
                not_before: (now() - SignedDuration::from_hours(1)).to_string(),
                not_after: (now() + left).to_string(),
                fingerprint_sha256: "ab".into(),
            });
            let got = ca_validity(&o, now());
            assert_eq!(got.status, status, "{case}: {got:?}");
        }
    }

    #[test]
    fn ambient_identity_and_endpoint_follow_the_controllers_flags() {
        let pca = |creds: bool, endpoint: bool| AwsPCA {
            arn: "arn:aws:acm-pca:eu-west-1:111122223333:certificate-authority/x".into(),
            credentials_secret_ref: creds.then(|| AwsCredentialsSecretRef::named("aws")),
            endpoint: endpoint.then(|| "http://127.0.0.1:1".into()),
            ..Default::default()
        };
        let namespaced = IssuerKey {
            cluster_scoped: false,
            namespace: Some("istio-system".into()),
            name: "pca".into(),
        };
        let open = deployment_with_args(
            "cert-manager",
            &[
                "--issuer-ambient-credentials=true",
                "--issuer-endpoint-override",
                "true",
            ],
            1,
            1,
        );
        let strict = deployment_with_args("cert-manager", &["--cluster-issuer-ambient-credentials=false"], 1, 1);
        // (case, issuer, its PCA spec, controller Deployment, status, problem contains)
        type Case<'a> = (&'a str, IssuerKey, AwsPCA, Vec<Deployment>, Status, &'a str);
        let cases: Vec<Case> = vec![
            (
                "cluster, ambient, defaults",
                testdata::cluster_issuer_key(),
                pca(false, false),
                vec![],
                Status::Pass,
                "",
            ),
            (
                "cluster, ambient, forbidden",
                testdata::cluster_issuer_key(),
                pca(false, false),
                vec![strict.clone()],
                Status::Fail,
                "may not use the controller's own AWS identity",
            ),
            (
                "cluster, credentials",
                testdata::cluster_issuer_key(),
                pca(true, false),
                vec![strict],
                Status::Pass,
                "",
            ),
            (
                "namespaced, ambient, defaults",
                namespaced.clone(),
                pca(false, false),
                vec![],
                Status::Fail,
                "no spec.awsPCA.credentialsSecretRef",
            ),
            (
                "namespaced, endpoint, defaults",
                namespaced.clone(),
                pca(true, true),
                vec![],
                Status::Fail,
                "sets spec.awsPCA.endpoint",
            ),
            (
                "namespaced, both allowed",
                namespaced.clone(),
                pca(false, true),
                vec![open],
                Status::Pass,
                "",
            ),
        ];
        for (case, key, spec, deployments, status, text) in cases {
            let mut o = testdata::healthy();
            o.controller.deployments = Ok(deployments);
            o.issuers = vec![IssuerObserved {
                key,
                issuer: Ok(Some(IssuerObject {
                    spec: IssuerSpec {
                        aws_pca: Some(spec),
                        ..Default::default()
                    },
                    ..testdata::ready_issuer(Some(1), Some(1))
                })),
            }];
            let got = ambient(&o);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
            if status == Status::Fail {
                let fix = got.fix.unwrap();
                assert!(
                    fix.contains("--") || fix.contains("credentialsSecretRef"),
                    "{case}: {fix}"
                );
            }
        }
    }
}
