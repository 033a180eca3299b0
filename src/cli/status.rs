//! `meshca status`: what every named cluster's issuers and IstioCACerts say, as one table or
//! as JSON/YAML. Reads only; a cluster that cannot be read is shown with its error.

use kube::config::Kubeconfig;
use kube::{Api, ResourceExt};
use serde::Serialize;

use super::{Failure, Output, client_for};
use crate::api::conditions::READY;
use crate::api::istio_cacerts::{IstioCACerts, TrackedAnchor, TrackedCertificate, TrackedCrl};
use crate::api::{ClusterMeshCAIssuer, IssuerSpec, IssuerStatus, MeshCAIssuer};

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ClusterReport {
    pub context: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub issuers: Vec<IssuerRow>,
    pub istio_cacerts: Vec<IstioCACertsRow>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRow {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub backend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_not_after: Option<String>,
    /// The serials its `spec.revoked` lists (lower-case hex).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct IstioCACertsRow {
    pub namespace: String,
    pub name: String,
    pub trust_domain: String,
    pub ready: String,
    pub reason: String,
    /// The Ready message when not Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<TrackedCertificate>,
    pub roots: Vec<TrackedCertificate>,
    pub trust_anchors: Vec<TrackedAnchor>,
    /// The CRLs in `ca-crl.pem` (revocation on).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub crl: Vec<TrackedCrl>,
    /// Whether the intermediate istiod signs with is revoked by its issuer (Ready says so).
    pub intermediate_revoked: bool,
    /// What its SPIFFE bundle endpoint serves (`spec.bundleEndpoint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_endpoint: Option<crate::api::istio_cacerts::BundleEndpointStatus>,
}

fn ready_of(conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]) -> (String, String, String) {
    match crate::api::conditions::find(conditions, READY) {
        Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
        None => ("Unknown".into(), String::new(), String::new()),
    }
}

fn issuer_row(
    kind: &str,
    namespace: Option<String>,
    name: String,
    spec: &IssuerSpec,
    status: Option<&IssuerStatus>,
) -> IssuerRow {
    let (ready, reason, _) = ready_of(status.map(|s| s.conditions.as_slice()).unwrap_or_default());
    IssuerRow {
        kind: kind.into(),
        namespace,
        name,
        ready,
        reason,
        backend: status.and_then(|s| s.backend.clone()).unwrap_or_default(),
        ca_not_after: status.and_then(|s| s.ca.as_ref()).map(|c| c.not_after.clone()),
        revoked: spec
            .revoked
            .iter()
            .map(|r| super::revoke::canonical(&r.serial_number).unwrap_or_else(|_| r.serial_number.clone()))
            .collect(),
    }
}

async fn read_cluster(kubeconfig: &Kubeconfig, context: &str) -> ClusterReport {
    let mut report = ClusterReport {
        context: context.to_string(),
        error: None,
        issuers: Vec::new(),
        istio_cacerts: Vec::new(),
    };
    let result: Result<(), String> = async {
        let client = client_for(kubeconfig, context).await.map_err(|f| f.message)?;
        let lp = Default::default();
        let cluster = Api::<ClusterMeshCAIssuer>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|e| format!("listing ClusterMeshCAIssuers: {e}"))?;
        for i in cluster.items {
            report.issuers.push(issuer_row(
                "ClusterMeshCAIssuer",
                None,
                i.name_any(),
                &i.spec,
                i.status.as_ref(),
            ));
        }
        let namespaced = Api::<MeshCAIssuer>::all(client.clone())
            .list(&lp)
            .await
            .map_err(|e| format!("listing MeshCAIssuers: {e}"))?;
        for i in namespaced.items {
            report.issuers.push(issuer_row(
                "MeshCAIssuer",
                i.namespace(),
                i.name_any(),
                &i.spec,
                i.status.as_ref(),
            ));
        }
        let iccs = Api::<IstioCACerts>::all(client)
            .list(&lp)
            .await
            .map_err(|e| format!("listing IstioCACerts: {e}"))?;
        for icc in iccs.items {
            let status = icc.status.clone().unwrap_or_default();
            let (ready, reason, message) = ready_of(&status.conditions);
            report.istio_cacerts.push(IstioCACertsRow {
                namespace: icc.namespace().unwrap_or_default(),
                name: icc.name_any(),
                trust_domain: icc.spec.trust_domain.clone(),
                problem: (ready != "True" && !message.is_empty()).then_some(message),
                intermediate_revoked: reason == crate::istio::revocation::reason::INTERMEDIATE_REVOKED,
                crl: status.crl,
                ready,
                reason,
                intermediate: status.intermediate,
                roots: status.roots,
                trust_anchors: status.trust_anchors,
                bundle_endpoint: status.bundle_endpoint,
            });
        }
        Ok(())
    }
    .await;
    report.error = result.err();
    report
}

pub async fn run(kubeconfig: &Kubeconfig, contexts: &[String], output: Output) -> Result<(), Failure> {
    let reports: Vec<ClusterReport> =
        futures::future::join_all(contexts.iter().map(|c| read_cluster(kubeconfig, c))).await;
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&reports).map_err(|e| Failure::failed(e.to_string()))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_yaml::to_string(&reports).map_err(|e| Failure::failed(e.to_string()))?
        ),
        Output::Table => print!("{}", table(&reports)),
    }
    let unreadable: Vec<&str> = reports
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.context.as_str())
        .collect();
    if unreadable.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "could not read context(s): {}",
            unreadable.join(", ")
        )))
    }
}

fn window(c: &TrackedCertificate) -> String {
    format!("{} until {} ({:?})", c.subject, c.not_after, c.window)
}

/// The human table: one block per cluster.
pub fn table(reports: &[ClusterReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("CONTEXT {}\n", r.context));
        if let Some(e) = &r.error {
            out.push_str(&format!("  ERROR  {e}\n"));
            continue;
        }
        out.push_str(&format!(
            "  {:<22} {:<28} {:<6} {:<10} {:<22} {}\n",
            "ISSUER KIND", "NAME", "READY", "BACKEND", "CA EXPIRY", "REASON"
        ));
        for i in &r.issuers {
            let name = match &i.namespace {
                Some(ns) => format!("{ns}/{}", i.name),
                None => i.name.clone(),
            };
            out.push_str(&format!(
                "  {:<22} {:<28} {:<6} {:<10} {:<22} {}\n",
                i.kind,
                name,
                i.ready,
                i.backend,
                i.ca_not_after.as_deref().unwrap_or("-"),
                i.reason
            ));
            if !i.revoked.is_empty() {
                out.push_str(&format!("    revokes {}\n", i.revoked.join(", ")));
            }
        }
        for icc in &r.istio_cacerts {
            out.push_str(&format!(
                "  ISTIOCACERTS {}/{}  trust domain {}  Ready={} {}\n",
                icc.namespace, icc.name, icc.trust_domain, icc.ready, icc.reason
            ));
            if let Some(i) = &icc.intermediate {
                out.push_str(&format!(
                    "    intermediate  {}  next renewal {}\n",
                    window(i),
                    i.renewal_time
                ));
            }
            for root in &icc.roots {
                out.push_str(&format!("    root          {}\n", window(root)));
            }
            if let Some(b) = &icc.bundle_endpoint {
                out.push_str(&format!(
                    "    bundle endpoint  sequence {}, {} root(s) served{}\n",
                    b.sequence,
                    b.served_roots.len(),
                    b.endpoint_spiffe_id
                        .as_deref()
                        .map(|id| format!(", as {id}"))
                        .unwrap_or_default()
                ));
            }
            for a in &icc.trust_anchors {
                out.push_str(&format!(
                    "    anchor {:<6} {} [{}]\n",
                    a.name,
                    window(&a.certificate),
                    a.trust_domains.join(",")
                ));
                // Followed from a bundle endpoint: how fresh, and why not fresher.
                if let Some(source) = &a.source {
                    out.push_str(&format!(
                        "           from {} (sequence {}, fetched {}){}\n",
                        source.url,
                        source.sequence.map_or_else(|| "-".into(), |s| s.to_string()),
                        source
                            .last_fetched
                            .as_deref()
                            .unwrap_or("never: bootstrap bundle in use"),
                        source
                            .error
                            .as_deref()
                            .map(|e| format!("; last fetch: {e}"))
                            .unwrap_or_default()
                    ));
                }
            }
            for crl in &icc.crl {
                out.push_str(&format!(
                    "    crl           {} number {} until {} ({:?}){}\n",
                    crl.issuer,
                    crl.number,
                    crl.next_update,
                    crl.window,
                    if crl.revoked_serials.is_empty() {
                        String::new()
                    } else {
                        format!(" revokes {}", crl.revoked_serials.join(","))
                    }
                ));
            }
            if icc.intermediate_revoked {
                out.push_str("    REVOKED       the intermediate istiod signs with is revoked by its issuer\n");
            }
            if let Some(p) = &icc.problem {
                out.push_str(&format!("    problem       {p}\n"));
            }
        }
    }
    out
}
