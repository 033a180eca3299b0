//! Installation: our CRDs at this binary's version, cert-manager's CRDs, and a controller that
//! runs (one replica holding a fresh leader Lease). Pure.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;

use super::observe::{Observed, Settings};
use super::{CheckId, Finding};

/// The label the chart puts on the controller's Deployment.
pub const CHART_LABEL: &str = "app.kubernetes.io/name=mesh-ca-issuer";
pub const OUR_CRDS: [&str; 3] = [
    "meshcaissuers.meshca.io",
    "clustermeshcaissuers.meshca.io",
    "istiocacerts.meshca.io",
];
pub const CERT_MANAGER_CRDS: [&str; 2] = ["certificaterequests.cert-manager.io", "certificates.cert-manager.io"];
/// Where the controller runs when no Deployment says otherwise (the demo, a controller run by
/// hand with `--leader-election-namespace cert-manager`).
pub const DEFAULT_CONTROLLER_NAMESPACE: &str = "cert-manager";
const DEFAULT_LEASE_NAME: &str = "mesh-ca-issuer";

pub fn check(o: &Observed, now: Timestamp) -> Vec<Finding> {
    vec![crds(o), cert_manager_crds(o), controller(o, now)]
}

/// A flag of the controller's container, as the chart writes it (`--flag=value` or `--flag
/// value`), else its `MESHCA_*` environment variable.
pub fn controller_flag(deployment: &Deployment, flag: &str, env: &str) -> Option<String> {
    let container = deployment.spec.template.spec.as_ref()?.containers.first()?;
    let args: Vec<&String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .collect();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')) {
            return Some(value.to_string());
        }
        if arg.as_str() == flag {
            return args.get(i + 1).map(|v| v.to_string());
        }
    }
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env)
        .and_then(|e| e.value.clone())
}

/// Where the leader Lease is: the Deployment's flags, else its namespace, else the namespace
/// asked for, else cert-manager; named by `--leader-election-id` (default mesh-ca-issuer).
pub fn lease_location(deployments: &[Deployment], settings: &Settings) -> (String, String) {
    let deployment = deployments.first();
    let namespace = deployment
        .and_then(|d| {
            controller_flag(d, "--leader-election-namespace", "MESHCA_LEADER_ELECTION_NAMESPACE")
                .or_else(|| d.namespace())
        })
        .or_else(|| settings.controller_namespace.clone())
        .unwrap_or_else(|| DEFAULT_CONTROLLER_NAMESPACE.to_string());
    let name = deployment
        .and_then(|d| controller_flag(d, "--leader-election-id", "MESHCA_LEADER_ELECTION_ID"))
        .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_string());
    (namespace, name)
}

/// Every property path of a schema ("spec.rootRotation.mode"), to say how two schemas differ.
fn property_paths(schema: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        if let Some(items) = schema.get("items") {
            property_paths(items, prefix, out);
        }
        return;
    };
    for (name, child) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        out.insert(path.clone());
        property_paths(child, &path, out);
    }
}

/// How the installed CRD differs from the one this binary was built with, if it does.
pub fn crd_difference(installed: &CustomResourceDefinition, ours: &CustomResourceDefinition) -> Option<String> {
    let name = ours.name_any();
    let ours_version = ours.spec.versions.first()?;
    let Some(version) = installed.spec.versions.iter().find(|v| v.name == ours_version.name) else {
        return Some(format!(
            "CRD {name} does not serve {} (it serves {})",
            ours_version.name,
            installed
                .spec
                .versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if !version.served {
        return Some(format!("CRD {name} has {} but does not serve it", version.name));
    }
    let schema =
        |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            v.schema
                .as_ref()
                .and_then(|s| serde_json::to_value(&s.open_api_v3_schema).ok())
                .unwrap_or_default()
        };
    let (theirs, mine) = (schema(version), schema(ours_version));
    if theirs == mine {
        return None;
    }
    let (mut a, mut b) = (BTreeSet::new(), BTreeSet::new());
    property_paths(&theirs, "", &mut a);
    property_paths(&mine, "", &mut b);
    let missing: Vec<&String> = b.difference(&a).collect();
    let extra: Vec<&String> = a.difference(&b).collect();
    let list = |v: &[&String]| {
        let shown: Vec<&str> = v.iter().take(3).map(|s| s.as_str()).collect();
        let more = v.len().saturating_sub(3);
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    Some(match (missing.is_empty(), extra.is_empty()) {
        (false, true) => format!("CRD {name} is older than this meshca: it lacks {}", list(&missing)),
        (true, false) => format!("CRD {name} is newer than this meshca: it has {}", list(&extra)),
        (false, false) => format!(
            "CRD {name} differs from this meshca's: it lacks {} and has {}",
            list(&missing),
            list(&extra)
        ),
        // Same fields, other types, defaults or validations.
        (true, true) => {
            format!("CRD {name}'s schema differs from this meshca's (same fields, other types or validations)")
        }
    })
}

fn established(crd: &CustomResourceDefinition) -> bool {
    crd.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
}

fn crds(o: &Observed) -> Finding {
    let id = CheckId::Crds;
    let fix = "kubectl apply --server-side -f charts/mesh-ca-issuer/crds/ from the release that matches the controller (helm does not upgrade CRDs), or use the meshca of that release";
    let mut problems = Vec::new();
    for ours in crate::api::crds() {
        let name = ours.name_any();
        match o.crds.get(&name) {
            None | Some(Ok(None)) => problems.push(format!("CRD {name} is not installed")),
            Some(Err(e)) => problems.push(e.clone()),
            Some(Ok(Some(installed))) => {
                if let Some(d) = crd_difference(installed, &ours) {
                    problems.push(d);
                } else if !established(installed) {
                    problems.push(format!("CRD {name} is not Established"));
                }
            }
        }
    }
    if problems.is_empty() {
        Finding::pass(id)
    } else {
        Finding::fail(
            id,
            format!("{} (meshca {})", problems.join("; "), crate::build_info::VERSION),
            fix,
        )
    }
}

fn cert_manager_crds(o: &Observed) -> Finding {
    let id = CheckId::CertManagerCrds;
    let mut problems = Vec::new();
    for name in CERT_MANAGER_CRDS {
        match o.crds.get(name) {
            None | Some(Ok(None)) => problems.push(format!("CRD {name} is not installed")),
            Some(Err(e)) => problems.push(e.clone()),
            Some(Ok(Some(crd))) if !crd.spec.versions.iter().any(|v| v.name == "v1" && v.served) => {
                problems.push(format!("CRD {name} does not serve v1"))
            }
            Some(Ok(Some(crd))) if !established(crd) => problems.push(format!("CRD {name} is not Established")),
            Some(Ok(Some(_))) => {}
        }
    }
    if problems.is_empty() {
        Finding::pass(id)
    } else {
        Finding::fail(
            id,
            problems.join("; "),
            "install cert-manager first: https://cert-manager.io/docs/installation/",
        )
    }
}

/// How long ago, in words.
pub fn ago(d: SignedDuration) -> String {
    let s = d.as_secs();
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if s < 7200 => format!("{}m", s / 60),
        _ if s < 172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn controller(o: &Observed, now: Timestamp) -> Finding {
    let id = CheckId::Controller;
    let c = &o.controller;
    let deployments = match &c.deployments {
        Ok(d) => d.as_slice(),
        Err(e) => return Finding::fail(id, e.clone(), format!("{}#rbac", super::DOCS)),
    };
    let where_ = format!("Lease {}/{}", c.lease_namespace, c.lease_name);
    let look = format!(
        "kubectl -n {} get deployment,pods -l {CHART_LABEL}; kubectl -n {} logs deployment/mesh-ca-issuer",
        c.lease_namespace, c.lease_namespace
    );
    if deployments.len() > 1 {
        let names: Vec<String> = deployments
            .iter()
            .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
            .collect();
        return Finding::warn(
            id,
            format!(
                "{} controller Deployments found ({}): only {where_} was checked",
                names.len(),
                names.join(", ")
            ),
            "run one controller per cluster, or name the one to check with --controller-namespace",
        );
    }
    let leader_elect = deployments
        .first()
        .and_then(|d| controller_flag(d, "--leader-elect", "MESHCA_LEADER_ELECT"))
        .is_none_or(|v| v != "false");
    if !leader_elect {
        // No Lease to look at: the Deployment's own status says whether a replica runs, and
        // more than one would write at once.
        let Some(d) = deployments.first() else {
            return Finding::fail(id, "no controller found", look);
        };
        let replicas = d.spec.replicas.unwrap_or(1);
        let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        return if replicas > 1 {
            Finding::fail(
                id,
                format!(
                    "Deployment {}/{} runs {replicas} replicas with --leader-elect=false: they all write",
                    d.namespace().unwrap_or_default(),
                    d.name_any()
                ),
                "helm upgrade ... --set leaderElection.enabled=true (or replicaCount=1)",
            )
        } else if available < 1 {
            Finding::fail(
                id,
                format!(
                    "Deployment {}/{} has no available replica",
                    d.namespace().unwrap_or_default(),
                    d.name_any()
                ),
                look,
            )
        } else {
            Finding::pass(id)
        };
    }
    let lease = match &c.lease {
        Err(e) => return Finding::fail(id, e.clone(), format!("{}#rbac", super::DOCS)),
        Ok(None) => {
            return Finding::fail(
                id,
                format!(
                    "{where_} does not exist: no controller has led here{}",
                    if deployments.is_empty() {
                        " (and no Deployment labelled app.kubernetes.io/name=mesh-ca-issuer was found)"
                    } else {
                        ""
                    }
                ),
                if deployments.is_empty() {
                    "install the chart (docs/install.md), or name its namespace with --controller-namespace".to_string()
                } else {
                    look
                },
            );
        }
        Ok(Some(lease)) => lease,
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Finding::fail(id, format!("{where_} is held by no one: no replica leads"), look);
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Finding::fail(id, format!("{where_} has no renewTime"), look);
    };
    let age = now.duration_since(renewed);
    // Twice the lease duration (at least 30s): this machine's clock and the controller's may
    // differ by a few seconds; a leader that stopped renewing is minutes behind.
    let slack = (duration * 2).max(SignedDuration::from_secs(30));
    if age > slack {
        Finding::fail(
            id,
            format!(
                "{where_} (holder {holder}) was last renewed {} ago, lease {}s: no replica is leading, nothing is signed and cacerts is not kept",
                ago(age),
                duration.as_secs()
            ),
            look,
        )
    } else {
        Finding::pass(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::Status;
    use crate::cli::check::testdata::{self, deployment_with_args};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::CustomResourceExt;

    fn now() -> Timestamp {
        testdata::now()
    }

    fn lease(holder: &str, renewed_secs_ago: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(now() - SignedDuration::from_secs(renewed_secs_ago))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn controller_passes_only_with_a_fresh_lease_or_one_available_replica_without_election() {
        let chart = deployment_with_args("cert-manager", &["--leader-election-namespace=cert-manager"], 2, 0);
        let no_election =
            |replicas, available| deployment_with_args("cert-manager", &["--leader-elect=false"], replicas, available);
        // (case, deployments, lease, status, problem contains)
        type Case<'a> = (&'a str, Vec<Deployment>, Option<Lease>, Status, &'a str);
        let cases: Vec<Case> = vec![
            (
                "fresh lease",
                vec![chart.clone()],
                Some(lease("pod-a", 3)),
                Status::Pass,
                "",
            ),
            (
                "no deployment, fresh lease",
                vec![],
                Some(lease("pod-a", 3)),
                Status::Pass,
                "",
            ),
            (
                "stale lease",
                vec![chart.clone()],
                Some(lease("pod-a", 600)),
                Status::Fail,
                "last renewed 10m ago",
            ),
            ("no lease", vec![chart.clone()], None, Status::Fail, "does not exist"),
            (
                "no lease, no deployment",
                vec![],
                None,
                Status::Fail,
                "no Deployment labelled",
            ),
            (
                "released lease",
                vec![chart.clone()],
                Some(lease("", 1)),
                Status::Fail,
                "held by no one",
            ),
            (
                "no election, one available",
                vec![no_election(1, 1)],
                None,
                Status::Pass,
                "",
            ),
            (
                "no election, none available",
                vec![no_election(1, 0)],
                None,
                Status::Fail,
                "no available replica",
            ),
            (
                "no election, two replicas",
                vec![no_election(2, 2)],
                None,
                Status::Fail,
                "they all write",
            ),
            (
                "two installations",
                vec![chart.clone(), chart.clone()],
                Some(lease("pod-a", 1)),
                Status::Warn,
                "2 controller Deployments",
            ),
        ];
        for (case, deployments, lease, status, text) in cases {
            let mut o = testdata::healthy();
            o.controller.deployments = Ok(deployments);
            o.controller.lease = Ok(lease);
            let got = controller(&o, now());
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
            assert_eq!(got.fix.is_some(), status != Status::Pass, "{case}");
        }
    }

    #[test]
    fn the_lease_is_where_the_deployments_flags_say() {
        let settings = testdata::settings();
        let d = deployment_with_args(
            "meshca",
            &["--leader-election-namespace=elsewhere", "--leader-election-id", "mine"],
            1,
            1,
        );
        assert_eq!(lease_location(&[d], &settings), ("elsewhere".into(), "mine".into()));
        let d = deployment_with_args("meshca", &[], 1, 1);
        assert_eq!(
            lease_location(&[d], &settings),
            ("meshca".into(), "mesh-ca-issuer".into())
        );
        assert_eq!(
            lease_location(&[], &settings),
            ("cert-manager".into(), "mesh-ca-issuer".into())
        );
    }

    #[test]
    fn crds_must_match_this_binary() {
        let ours = crate::api::IstioCACerts::crd();
        assert_eq!(crd_difference(&ours, &ours), None, "same CRD");
        let mut older = ours.clone();
        let schema = older.spec.versions[0]
            .schema
            .as_mut()
            .unwrap()
            .open_api_v3_schema
            .as_mut()
            .unwrap();
        let spec = schema.properties.as_mut().unwrap().get_mut("spec").unwrap();
        spec.properties.as_mut().unwrap().remove("rootRotation");
        let said = crd_difference(&older, &ours).expect("a difference");
        assert!(
            said.contains("older than this meshca") && said.contains("spec.rootRotation"),
            "{said}"
        );
        let said = crd_difference(&ours, &older).expect("a difference");
        assert!(said.contains("newer than this meshca"), "{said}");
        let mut other_version = ours.clone();
        other_version.spec.versions[0].name = "v1beta9".into();
        assert!(
            crd_difference(&other_version, &ours)
                .unwrap()
                .contains("does not serve v1alpha1")
        );

        // (case, change to the observed CRDs, status)
        let mut o = testdata::healthy();
        assert_eq!(crds(&o).status, Status::Pass, "all installed");
        o.crds.insert("istiocacerts.meshca.io".into(), Ok(Some(older)));
        let got = crds(&o);
        assert_eq!(got.status, Status::Fail);
        assert!(got.fix.unwrap().contains("kubectl apply --server-side"));
        o.crds.insert("istiocacerts.meshca.io".into(), Ok(None));
        assert!(
            crds(&o)
                .problem
                .unwrap()
                .contains("istiocacerts.meshca.io is not installed")
        );
    }

    #[test]
    fn cert_manager_crds_must_be_there() {
        let mut o = testdata::healthy();
        assert_eq!(cert_manager_crds(&o).status, Status::Pass);
        o.crds.insert("certificates.cert-manager.io".into(), Ok(None));
        let got = cert_manager_crds(&o);
        assert_eq!(got.status, Status::Fail);
        assert!(
            got.problem
                .unwrap()
                .contains("certificates.cert-manager.io is not installed")
        );
        o.crds
            .insert("certificates.cert-manager.io".into(), Err("forbidden (403)".into()));
        assert!(cert_manager_crds(&o).problem.unwrap().contains("forbidden"));
    }
}
