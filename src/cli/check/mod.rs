//! `meshca check`: whether a cluster's, and a fleet's, mesh trust is healthy, and exactly what
//! to do when it is not ([docs/check.md](../../../docs/check.md) lists every check).
//!
//! Three steps, as every controller here: [`observe`] reads everything the checks need from each
//! cluster into a plain [`observe::Observed`] value (every read with a timeout; an unreachable
//! cluster becomes a failed check, never a crash); the checks are pure functions over what was
//! read and the clock (one file per group, each table-tested); [`render`] prints the findings as
//! text (with colour on a terminal, without under `NO_COLOR` or a pipe) or JSON. Nothing here
//! writes to any cluster: the only requests besides GET and LIST are SubjectAccessReviews, which
//! the API server answers without storing anything.
//!
//! This module holds the vocabulary (check ids, groups, findings, the exit code) and the thin
//! shell that runs the three steps.

pub mod approval;
pub mod cacerts;
pub mod certificate;
pub mod fleet;
pub mod installation;
pub mod issuers;
pub mod istiod;
pub mod observe;
pub mod render;
#[cfg(test)]
pub(crate) mod testdata;

use std::time::Duration;

use jiff::Timestamp;
use kube::config::Kubeconfig;
use serde::Serialize;

use observe::{ClusterRead, Settings};

/// Where every check is explained, with its fix.
pub const DOCS: &str = "https://github.com/mesh-ca-issuer/mesh-ca-issuer/blob/main/docs/check.md";

/// The groups, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Group {
    #[serde(rename = "Kubernetes API")]
    Api,
    Installation,
    Approval,
    Issuers,
    #[serde(rename = "istiod's Certificate")]
    Certificate,
    #[serde(rename = "IstioCACerts and cacerts")]
    IstioCACerts,
    #[serde(rename = "istiod")]
    Istiod,
    #[serde(rename = "istiod has loaded our CA")]
    IstiodCa,
    #[serde(rename = "Across the named clusters")]
    Fleet,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Api => "Kubernetes API",
            Group::Installation => "Installation",
            Group::Approval => "Approval",
            Group::Issuers => "Issuers",
            Group::Certificate => "istiod's Certificate",
            Group::IstioCACerts => "IstioCACerts and cacerts",
            Group::Istiod => "istiod",
            Group::IstiodCa => "istiod has loaded our CA",
            Group::Fleet => "Across the named clusters",
        }
    }
}

/// Every check, by a stable id (`-o json`, docs/check.md anchors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CheckId {
    ApiReachable,
    Crds,
    CertManagerCrds,
    Controller,
    ApprovalPermission,
    ApprovalScope,
    IssuersReady,
    IssuersCaValidity,
    IssuersAmbient,
    CertificateFound,
    CertificateCa,
    CertificateLifetimes,
    CertificateIssuer,
    CertificateSource,
    IstioCACertsFound,
    IstioCACertsReady,
    IstioCACertsFresh,
    IstioCACertsWindows,
    IstioCACertsCrls,
    IstiodFound,
    IstiodCacertsMounted,
    IstiodMultiRoot,
    IstiodTrustDomain,
    IstiodTrustDomainAliases,
    IstiodXdsAgent,
    IstiodAmbient,
    IstiodLoadedCa,
    FleetSharedRoot,
    FleetPeerRoots,
    FleetTrustDomains,
    FleetRotations,
    FleetPeerCrls,
}

impl CheckId {
    pub const ALL: [CheckId; 32] = [
        CheckId::ApiReachable,
        CheckId::Crds,
        CheckId::CertManagerCrds,
        CheckId::Controller,
        CheckId::ApprovalPermission,
        CheckId::ApprovalScope,
        CheckId::IssuersReady,
        CheckId::IssuersCaValidity,
        CheckId::IssuersAmbient,
        CheckId::CertificateFound,
        CheckId::CertificateCa,
        CheckId::CertificateLifetimes,
        CheckId::CertificateIssuer,
        CheckId::CertificateSource,
        CheckId::IstioCACertsFound,
        CheckId::IstioCACertsReady,
        CheckId::IstioCACertsFresh,
        CheckId::IstioCACertsWindows,
        CheckId::IstioCACertsCrls,
        CheckId::IstiodFound,
        CheckId::IstiodCacertsMounted,
        CheckId::IstiodMultiRoot,
        CheckId::IstiodTrustDomain,
        CheckId::IstiodTrustDomainAliases,
        CheckId::IstiodXdsAgent,
        CheckId::IstiodAmbient,
        CheckId::IstiodLoadedCa,
        CheckId::FleetSharedRoot,
        CheckId::FleetPeerRoots,
        CheckId::FleetTrustDomains,
        CheckId::FleetRotations,
        CheckId::FleetPeerCrls,
    ];

    /// (id, group, what holds when the check passes).
    pub fn info(self) -> (&'static str, Group, &'static str) {
        use CheckId::*;
        match self {
            ApiReachable => ("api-reachable", Group::Api, "the API server answers"),
            Crds => (
                "crds",
                Group::Installation,
                "mesh-ca-issuer's CRDs are installed at this meshca's version",
            ),
            CertManagerCrds => (
                "cert-manager-crds",
                Group::Installation,
                "cert-manager's CRDs are installed",
            ),
            Controller => (
                "controller",
                Group::Installation,
                "the controller runs and one replica holds a fresh leader Lease",
            ),
            ApprovalPermission => (
                "approval-permission",
                Group::Approval,
                "an approver may approve requests for the mesh's issuers",
            ),
            ApprovalScope => (
                "approval-scope",
                Group::Approval,
                "cert-manager's approver does not approve every request for our issuers in every namespace",
            ),
            IssuersReady => ("issuers-ready", Group::Issuers, "the mesh's issuers are Ready"),
            IssuersCaValidity => (
                "issuers-ca-validity",
                Group::Issuers,
                "each issuer's CA outlives the intermediates requested from it",
            ),
            IssuersAmbient => (
                "issuers-ambient",
                Group::Issuers,
                "no issuer relies on ambient credentials or an endpoint override the controller forbids",
            ),
            CertificateFound => (
                "certificate-found",
                Group::Certificate,
                "a Certificate asks one of our issuers for istiod's intermediate",
            ),
            CertificateCa => (
                "certificate-ca",
                Group::Certificate,
                "it asks for a CA: isCA with usages cert sign and digital signature",
            ),
            CertificateLifetimes => (
                "certificate-lifetimes",
                Group::Certificate,
                "duration > renewBefore > istiod's workload certificate lifetime",
            ),
            CertificateIssuer => (
                "certificate-issuer",
                Group::Certificate,
                "its issuerRef names a Ready issuer of ours",
            ),
            CertificateSource => (
                "certificate-source",
                Group::Certificate,
                "its Secret is the sourceSecretName of an IstioCACerts",
            ),
            IstioCACertsFound => (
                "istiocacerts-found",
                Group::IstioCACerts,
                "an IstioCACerts keeps istiod's cacerts",
            ),
            IstioCACertsReady => (
                "istiocacerts-ready",
                Group::IstioCACerts,
                "it is Ready and its certificates are healthy",
            ),
            IstioCACertsFresh => (
                "istiocacerts-fresh",
                Group::IstioCACerts,
                "cacerts holds the intermediate cert-manager issued last",
            ),
            IstioCACertsWindows => (
                "istiocacerts-windows",
                Group::IstioCACerts,
                "no tracked certificate is past its renewal time or close to expiry",
            ),
            IstioCACertsCrls => (
                "istiocacerts-crls",
                Group::IstioCACerts,
                "with revocation on, ca-crl.pem holds a current CRL for every CA and the intermediate is not revoked",
            ),
            IstiodFound => ("istiod-found", Group::Istiod, "istiod's Deployment is there"),
            IstiodCacertsMounted => (
                "istiod-cacerts-mounted",
                Group::Istiod,
                "istiod mounts cacerts at /etc/cacerts",
            ),
            IstiodMultiRoot => (
                "istiod-multiroot",
                Group::Istiod,
                "ISTIO_MULTIROOT_MESH=true where trust anchors or a root rotation need it",
            ),
            IstiodTrustDomain => (
                "istiod-trust-domain",
                Group::Istiod,
                "the mesh config's trustDomain is the IstioCACerts' trustDomain",
            ),
            IstiodTrustDomainAliases => (
                "istiod-trust-domain-aliases",
                Group::Istiod,
                "trustDomainAliases cover the trust anchors' trust domains",
            ),
            IstiodXdsAgent => (
                "istiod-xds-agent",
                Group::Istiod,
                "PROXY_CONFIG_XDS_AGENT is set for proxies when federated",
            ),
            IstiodAmbient => (
                "istiod-ambient",
                Group::Istiod,
                "no ztunnel runs beside trust anchors of another root",
            ),
            IstiodLoadedCa => (
                "istiod-loaded-ca",
                Group::IstiodCa,
                "istio-ca-root-cert, which istiod writes, holds our root-cert.pem",
            ),
            FleetSharedRoot => (
                "fleet-shared-root",
                Group::Fleet,
                "clusters of one trust domain share a root",
            ),
            FleetPeerRoots => (
                "fleet-peer-roots",
                Group::Fleet,
                "each federated peer's current roots are all among our trust anchors",
            ),
            FleetTrustDomains => (
                "fleet-trust-domains",
                Group::Fleet,
                "trust domains are unique among federated clusters",
            ),
            FleetRotations => (
                "fleet-rotations",
                Group::Fleet,
                "root rotations are in step: every cluster trusts the root each peer signs with",
            ),
            FleetPeerCrls => (
                "fleet-peer-crls",
                Group::Fleet,
                "no cluster writing CRLs lacks the CRL of a peer's intermediate its sidecars verify",
            ),
        }
    }

    pub fn id(self) -> &'static str {
        self.info().0
    }
    pub fn group(self) -> Group {
        self.info().1
    }
    pub fn title(self) -> &'static str {
        self.info().2
    }
    /// The check's section in docs/check.md.
    pub fn doc(self) -> String {
        format!("{DOCS}#{}", self.id())
    }
}

/// ✔ / ⚠ / ✖.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One check's verdict: on a warning or failure, one line of what is wrong and one line of
/// what to do (a command, or a doc link).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub id: CheckId,
    pub status: Status,
    pub problem: Option<String>,
    pub fix: Option<String>,
}

impl Finding {
    pub fn pass(id: CheckId) -> Self {
        Self {
            id,
            status: Status::Pass,
            problem: None,
            fix: None,
        }
    }
    pub fn warn(id: CheckId, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Warn,
            problem: Some(one_line(problem.into())),
            fix: Some(one_line(fix.into())),
        }
    }
    pub fn fail(id: CheckId, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            id,
            status: Status::Fail,
            problem: Some(one_line(problem.into())),
            fix: Some(one_line(fix.into())),
        }
    }
}

/// Messages come from the API server too (errors, conditions): one line each, always.
fn one_line(s: String) -> String {
    if s.contains('\n') {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    } else {
        s
    }
}

/// Several objects can fail one check: the worst verdict, the problems joined, the first fix.
pub fn combine(id: CheckId, findings: Vec<Finding>) -> Finding {
    let worst = findings.iter().map(|f| f.status).max().unwrap_or(Status::Pass);
    if worst == Status::Pass {
        return Finding::pass(id);
    }
    let bad: Vec<&Finding> = findings.iter().filter(|f| f.status == worst).collect();
    let problems: Vec<&str> = bad.iter().filter_map(|f| f.problem.as_deref()).collect();
    Finding {
        id,
        status: worst,
        problem: Some(problems.join("; ")),
        fix: bad.first().and_then(|f| f.fix.clone()),
    }
}

/// What one cluster showed.
#[derive(Clone, Debug)]
pub struct ClusterReport {
    pub context: String,
    pub namespace: String,
    pub findings: Vec<Finding>,
}

/// Everything `meshca check` found.
#[derive(Clone, Debug)]
pub struct Report {
    pub clusters: Vec<ClusterReport>,
    /// Checks across the named clusters (only with two or more).
    pub fleet: Vec<Finding>,
}

impl Report {
    pub fn all(&self) -> impl Iterator<Item = &Finding> {
        self.clusters.iter().flat_map(|c| c.findings.iter()).chain(&self.fleet)
    }

    /// (passed, warnings, failed).
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |s| self.all().filter(|f| f.status == s).count();
        (count(Status::Pass), count(Status::Warn), count(Status::Fail))
    }

    /// 0 all pass, 1 any failure (or a warning under `--strict`), 4 warnings only.
    pub fn exit_code(&self, strict: bool) -> u8 {
        match self.counts() {
            (_, _, f) if f > 0 => 1,
            (_, w, _) if w > 0 && strict => 1,
            (_, w, _) if w > 0 => 4,
            _ => 0,
        }
    }
}

/// Runs every check of one cluster, in group order. A group whose first check finds nothing
/// to check stops there: its later checks would only repeat that.
pub fn check_cluster(read: &ClusterRead, now: Timestamp) -> Vec<Finding> {
    let observed = match read {
        ClusterRead::Unreachable { reason, .. } => {
            return vec![Finding::fail(
                CheckId::ApiReachable,
                reason.clone(),
                "check the context's server address and credentials (kubectl --context <context> get --raw /version); the other checks of this cluster did not run",
            )];
        }
        ClusterRead::Read(observed) => observed,
    };
    let mut out = vec![Finding::pass(CheckId::ApiReachable)];
    out.extend(installation::check(observed, now));
    out.extend(approval::check(observed));
    out.extend(issuers::check(observed, now));
    out.extend(certificate::check(observed));
    out.extend(cacerts::check(observed));
    out.extend(istiod::check(observed));
    out.push(istiod::loaded_ca(observed));
    out
}

/// What `meshca check` was asked.
#[derive(Clone, Debug)]
pub struct Args {
    pub contexts: Vec<String>,
    pub settings: Settings,
    pub json: bool,
    pub strict: bool,
    /// How long one cluster may take to be read.
    pub timeout: Duration,
}

/// Reads every cluster (at once, each within the timeout), checks, prints; returns the exit code.
pub async fn run(kubeconfig: Result<Kubeconfig, String>, args: &Args) -> u8 {
    let reads: Vec<ClusterRead> = match &kubeconfig {
        Ok(kubeconfig) => {
            futures::future::join_all(
                args.contexts
                    .iter()
                    .map(|c| observe::observe_with_timeout(kubeconfig, c, &args.settings, args.timeout)),
            )
            .await
        }
        Err(e) => args
            .contexts
            .iter()
            .map(|c| ClusterRead::Unreachable {
                context: c.clone(),
                reason: format!("cannot read the kubeconfig: {e}"),
            })
            .collect(),
    };
    let now = Timestamp::now();
    let report = Report {
        clusters: reads
            .iter()
            .map(|r| ClusterReport {
                context: r.context().to_string(),
                namespace: args.settings.namespace.clone(),
                findings: check_cluster(r, now),
            })
            .collect(),
        fleet: if reads.len() > 1 {
            fleet::check(&reads)
        } else {
            Vec::new()
        },
    };
    let code = report.exit_code(args.strict);
    let text = if args.json {
        render::json(&report, code)
    } else {
        render::text(&report, code, render::Style::detect())
    };
    print!("{text}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        Report {
            clusters: vec![ClusterReport {
                context: "east".into(),
                namespace: "istio-system".into(),
                findings: statuses
                    .iter()
                    .map(|s| Finding {
                        id: CheckId::Crds,
                        status: *s,
                        problem: None,
                        fix: None,
                    })
                    .collect(),
            }],
            fleet: vec![],
        }
    }

    #[test]
    fn exit_code_is_zero_one_or_four_and_strict_turns_warnings_into_failures() {
        use Status::*;
        // (case, statuses, strict, exit code)
        let cases: [(&str, &[Status], bool, u8); 7] = [
            ("all pass", &[Pass, Pass], false, 0),
            ("nothing checked", &[], false, 0),
            ("a warning", &[Pass, Warn], false, 4),
            ("a warning, strict", &[Pass, Warn], true, 1),
            ("a failure", &[Pass, Fail], false, 1),
            ("failure and warning", &[Warn, Fail], false, 1),
            ("all pass, strict", &[Pass], true, 0),
        ];
        for (case, statuses, strict, code) in cases {
            assert_eq!(report(statuses).exit_code(strict), code, "{case}");
        }
    }

    #[test]
    fn every_check_has_a_unique_id_and_a_section_in_docs_check_md() {
        let docs = include_str!("../../../docs/check.md");
        let mut ids = std::collections::BTreeSet::new();
        for id in CheckId::ALL {
            assert!(ids.insert(id.id()), "duplicate id {}", id.id());
            let anchor = format!("<a id=\"{}\"></a>", id.id());
            assert!(docs.contains(&anchor), "docs/check.md has no section {anchor}");
            assert!(
                docs.contains(id.title()),
                "docs/check.md does not name the check {:?}",
                id.title()
            );
        }
    }

    /// The read-only promise, in the code: the only request that is not a GET or LIST is the
    /// SubjectAccessReview, and no other file of `meshca check` talks to the API server.
    #[test]
    fn nothing_but_observe_calls_the_api_server_and_it_writes_nothing() {
        let observe = include_str!("observe.rs");
        for write in [
            ".patch(",
            ".patch_status(",
            ".replace(",
            ".delete(",
            "delete_collection",
            ".create_subresource(",
        ] {
            assert!(!observe.contains(write), "observe.rs calls {write}");
        }
        assert_eq!(
            observe.matches(".create(").count(),
            1,
            "one create: the SubjectAccessReview"
        );
        assert!(observe.contains(concat!(
            "Api::",
            "<SubjectAccessReview>::all(client.clone())\n        .create("
        )));
        for (file, text) in [
            ("mod.rs", include_str!("mod.rs")),
            ("installation.rs", include_str!("installation.rs")),
            ("approval.rs", include_str!("approval.rs")),
            ("issuers.rs", include_str!("issuers.rs")),
            ("certificate.rs", include_str!("certificate.rs")),
            ("cacerts.rs", include_str!("cacerts.rs")),
            ("istiod.rs", include_str!("istiod.rs")),
            ("fleet.rs", include_str!("fleet.rs")),
            ("render.rs", include_str!("render.rs")),
        ] {
            // Spelt in two halves, so this file's own test does not match itself.
            let (api, client) = (concat!("Api", "::<"), concat!("kube", "::Client"));
            assert!(
                !text.contains(api) && !text.contains(client),
                "{file} talks to the API server"
            );
        }
    }

    #[test]
    fn findings_are_one_line_each() {
        let f = Finding::fail(CheckId::Crds, "a\nb", "c\n d");
        assert_eq!((f.problem.as_deref(), f.fix.as_deref()), (Some("a b"), Some("c d")));
    }

    #[test]
    fn combine_keeps_the_worst_verdict_and_every_problem_of_it() {
        let got = combine(
            CheckId::IssuersReady,
            vec![
                Finding::pass(CheckId::IssuersReady),
                Finding::warn(CheckId::IssuersReady, "w", "fw"),
                Finding::fail(CheckId::IssuersReady, "one", "fix one"),
                Finding::fail(CheckId::IssuersReady, "two", "fix two"),
            ],
        );
        assert_eq!(got.status, Status::Fail);
        assert_eq!(got.problem.as_deref(), Some("one; two"));
        assert_eq!(got.fix.as_deref(), Some("fix one"));
        assert_eq!(combine(CheckId::IssuersReady, vec![]).status, Status::Pass);
    }
}
