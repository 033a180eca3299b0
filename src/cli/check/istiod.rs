//! istiod, as its Deployment and its `istio` mesh-config ConfigMap show it (both readable on any
//! API server, no pod needed): `cacerts` mounted, `ISTIO_MULTIROOT_MESH` where anchors or a
//! rotation need it, the trust domain and its aliases, `PROXY_CONFIG_XDS_AGENT` for proxies,
//! no ztunnel beside other roots; and whether istiod has loaded our CA, from the
//! `istio-ca-root-cert` ConfigMap it writes. Pure.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Container};
use kube::ResourceExt;

use super::observe::{CertId, Observed, short};
use super::{CheckId, Finding, combine};
use crate::api::istio_cacerts::IstioCACerts;

/// How Istio's chart labels istiod's Deployment.
pub const ISTIOD_LABEL: &str = "app=istiod";
/// The ConfigMap istiod writes into every namespace with the roots it distributes.
pub const ROOT_CERT_CONFIG_MAP: &str = "istio-ca-root-cert";
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Where istiod reads a plugged-in CA.
pub const CACERTS_MOUNT: &str = "/etc/cacerts";
const MESH_KEY: &str = "mesh";
/// Istio's default trust domain, when the mesh config names none.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// ztunnel's DaemonSet: Istio's chart labels it `app.kubernetes.io/name=ztunnel` and only its
/// pods `app=ztunnel`; hand-made ones often put `app=ztunnel` on the DaemonSet itself.
pub fn is_ztunnel(ds: &DaemonSet) -> bool {
    let labels = ds.labels();
    let pods = ds.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
    labels.get("app").map(String::as_str) == Some("ztunnel")
        || labels.get("app.kubernetes.io/name").map(String::as_str) == Some("ztunnel")
        || pods.and_then(|l| l.get("app")).map(String::as_str) == Some("ztunnel")
}

/// The mesh config ConfigMap of an istiod: `istio`, or `istio-<revision>` for a revision.
pub fn mesh_config_name(d: &Deployment) -> String {
    match d.labels().get("istio.io/rev").map(String::as_str) {
        None | Some("") | Some("default") => "istio".to_string(),
        Some(rev) => format!("istio-{rev}"),
    }
}

/// istiod's container: `discovery` in Istio's charts, else the first.
fn discovery(d: &Deployment) -> Option<&Container> {
    let containers = &d.spec.template.spec.as_ref()?.containers;
    containers.iter().find(|c| c.name == "discovery").or(containers.first())
}

/// The value of an environment variable of istiod's container; `Some("")` when it comes from
/// elsewhere (valueFrom) and cannot be read here.
pub fn env_of(d: &Deployment, name: &str) -> Option<String> {
    let env = discovery(d)?.env.as_ref()?.iter().find(|e| e.name == name)?;
    Some(env.value.clone().unwrap_or_default())
}

fn deployment_name(d: &Deployment) -> String {
    format!("Deployment {}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

/// What the mesh config says, as far as the checks need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub trust_domain: String,
    pub aliases: Vec<String>,
    pub xds_agent: Option<String>,
}

/// Parses the `mesh` key of istiod's mesh config ConfigMap.
pub fn mesh_config(cm: &ConfigMap) -> Result<MeshConfig, String> {
    let name = format!("ConfigMap {}/{}", cm.namespace().unwrap_or_default(), cm.name_any());
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(MESH_KEY))
        .ok_or_else(|| format!("{name} has no key {MESH_KEY}"))?;
    let mesh: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("{name} key {MESH_KEY} is not YAML: {e}"))?;
    let string = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    Ok(MeshConfig {
        trust_domain: mesh
            .get("trustDomain")
            .and_then(string)
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string()),
        aliases: mesh
            .get("trustDomainAliases")
            .and_then(|a| a.as_sequence())
            .map(|a| a.iter().filter_map(string).collect())
            .unwrap_or_default(),
        xds_agent: mesh
            .get("defaultConfig")
            .and_then(|d| d.get("proxyMetadata"))
            .and_then(|m| m.get("PROXY_CONFIG_XDS_AGENT"))
            .and_then(string),
    })
}

/// The trust domains of an IstioCACerts' anchors other than its own.
fn anchor_trust_domains(icc: &IstioCACerts) -> BTreeSet<String> {
    icc.spec
        .trust_anchors
        .iter()
        .flat_map(|a| a.trust_domains.iter())
        .chain(
            icc.status
                .iter()
                .flat_map(|s| s.trust_anchors.iter())
                .flat_map(|a| a.trust_domains.iter()),
        )
        .filter(|td| **td != icc.spec.trust_domain)
        .cloned()
        .collect()
}

fn has_anchors(icc: &IstioCACerts) -> bool {
    !icc.spec.trust_anchors.is_empty() || icc.status.as_ref().is_some_and(|s| !s.trust_anchors.is_empty())
}

fn rotating(icc: &IstioCACerts) -> bool {
    icc.status
        .as_ref()
        .and_then(|s| s.root_rotation.as_ref())
        .is_some_and(|r| r.phase.in_progress())
}

pub fn check(o: &Observed) -> Vec<Finding> {
    let istiods = match &o.istiods {
        Ok(d) if !d.is_empty() => d,
        Ok(_) => {
            return vec![Finding::fail(
                CheckId::IstiodFound,
                format!("no Deployment labelled {ISTIOD_LABEL} in {}", o.settings_namespace),
                format!(
                    "install Istio's istiod chart into {0}, or name istiod's namespace with --namespace",
                    o.settings_namespace
                ),
            )];
        }
        Err(e) => {
            return vec![Finding::fail(
                CheckId::IstiodFound,
                e.clone(),
                format!("{}#rbac", super::DOCS),
            )];
        }
    };
    let iccs = o.istio_cacerts.as_deref().unwrap_or_default();
    let per_istiod = |f: &dyn Fn(&Deployment) -> Finding| istiods.iter().map(f).collect::<Vec<_>>();
    vec![
        Finding::pass(CheckId::IstiodFound),
        combine(CheckId::IstiodCacertsMounted, per_istiod(&|d| cacerts_mounted(d, iccs))),
        combine(CheckId::IstiodMultiRoot, per_istiod(&|d| multi_root(d, iccs))),
        combine(
            CheckId::IstiodTrustDomain,
            per_istiod(&|d| with_mesh_config(o, d, CheckId::IstiodTrustDomain, |m, cm| trust_domain(m, cm, iccs))),
        ),
        combine(
            CheckId::IstiodTrustDomainAliases,
            per_istiod(&|d| with_mesh_config(o, d, CheckId::IstiodTrustDomainAliases, |m, cm| aliases(m, cm, iccs))),
        ),
        combine(
            CheckId::IstiodXdsAgent,
            per_istiod(&|d| with_mesh_config(o, d, CheckId::IstiodXdsAgent, |m, cm| xds_agent(m, cm, iccs))),
        ),
        ambient(o, iccs),
    ]
}

fn cacerts_mounted(d: &Deployment, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodCacertsMounted;
    let target = iccs
        .first()
        .map_or("cacerts", |icc| icc.spec.target_secret_name.as_str());
    let volumes = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .cloned()
        .unwrap_or_default();
    let volume = volumes
        .iter()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(target));
    let mounted = volume.is_some_and(|v| {
        discovery(d).and_then(|c| c.volume_mounts.as_ref()).is_some_and(|m| {
            m.iter()
                .any(|m| m.name == v.name && m.mount_path.trim_end_matches('/') == CACERTS_MOUNT)
        })
    });
    if mounted {
        return Finding::pass(id);
    }
    Finding::fail(
        id,
        format!(
            "{} does not mount Secret {target} at {CACERTS_MOUNT}: istiod runs its own self-signed CA and never sees ours",
            deployment_name(d)
        ),
        format!(
            "mount it (Istio's istiod chart does: volume cacerts, secret {target}, optional: true, at {CACERTS_MOUNT}); see {}#istiod-cacerts-mounted",
            super::DOCS
        ),
    )
}

fn multi_root(d: &Deployment, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodMultiRoot;
    let why: Vec<String> = iccs
        .iter()
        .filter_map(|icc| {
            let name = format!("IstioCACerts {}", icc.name_any());
            if rotating(icc) {
                Some(format!("{name} is rotating its root"))
            } else if has_anchors(icc) {
                Some(format!("{name} has trust anchors"))
            } else if icc
                .spec
                .root_rotation
                .as_ref()
                .is_some_and(|r| r.multi_root_mesh_enabled)
            {
                Some(format!("{name} says spec.rootRotation.multiRootMeshEnabled: true"))
            } else {
                None
            }
        })
        .collect();
    if why.is_empty() {
        return Finding::pass(id);
    }
    let fix = format!(
        "kubectl -n {} set env deployment/{} ISTIO_MULTIROOT_MESH=true (Helm: pilot.env.ISTIO_MULTIROOT_MESH: \"true\")",
        d.namespace().unwrap_or_default(),
        d.name_any()
    );
    match env_of(d, "ISTIO_MULTIROOT_MESH") {
        Some(v) if v.eq_ignore_ascii_case("true") => Finding::pass(id),
        Some(v) if v.is_empty() => Finding::warn(
            id,
            format!(
                "{} sets ISTIO_MULTIROOT_MESH from elsewhere (valueFrom): cannot tell whether it is true, and {}",
                deployment_name(d),
                why.join(", ")
            ),
            fix,
        ),
        _ => Finding::fail(
            id,
            format!(
                "{} does not set ISTIO_MULTIROOT_MESH=true, yet {}: istiod ignores every changed root-cert.pem",
                deployment_name(d),
                why.join(", ")
            ),
            fix,
        ),
    }
}

/// Runs `f` on the mesh config of `d`, or fails when it cannot be read.
fn with_mesh_config(o: &Observed, d: &Deployment, id: CheckId, f: impl Fn(&MeshConfig, &str) -> Finding) -> Finding {
    let name = mesh_config_name(d);
    let display = format!("ConfigMap {}/{name}", o.settings_namespace);
    match o.mesh_configs.get(&name) {
        Some(Ok(Some(cm))) => match mesh_config(cm) {
            Ok(mesh) => f(&mesh, &display),
            Err(e) => Finding::fail(id, e, "fix istiod's mesh config (Helm: meshConfig)"),
        },
        Some(Ok(None)) | None => Finding::fail(
            id,
            format!("{display} (istiod's mesh config) does not exist"),
            "install istiod with Istio's chart, which writes it (Helm: meshConfig)",
        ),
        Some(Err(e)) => Finding::fail(id, e.clone(), format!("{}#rbac", super::DOCS)),
    }
}

fn helm_set(what: &str) -> String {
    format!("helm upgrade istiod istio/istiod -n <namespace> --reuse-values --set {what}")
}

fn trust_domain(mesh: &MeshConfig, display: &str, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodTrustDomain;
    combine(
        id,
        iccs.iter()
            .map(|icc| {
                if icc.spec.trust_domain == mesh.trust_domain {
                    Finding::pass(id)
                } else {
                    Finding::fail(
                        id,
                        format!(
                            "{display} says trustDomain {}, but IstioCACerts {} says {}: workload identities and the trust domain we constrain to disagree",
                            mesh.trust_domain,
                            icc.name_any(),
                            icc.spec.trust_domain
                        ),
                        format!(
                            "make them one: {} (or spec.trustDomain of the IstioCACerts)",
                            helm_set(&format!("meshConfig.trustDomain={}", icc.spec.trust_domain))
                        ),
                    )
                }
            })
            .collect(),
    )
}

fn aliases(mesh: &MeshConfig, display: &str, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodTrustDomainAliases;
    let needed: BTreeSet<String> = iccs.iter().flat_map(anchor_trust_domains).collect();
    let missing: Vec<&String> = needed.iter().filter(|td| !mesh.aliases.contains(td)).collect();
    if missing.is_empty() {
        return Finding::pass(id);
    }
    let all: Vec<String> = mesh
        .aliases
        .iter()
        .cloned()
        .chain(missing.iter().map(|s| s.to_string()))
        .collect();
    Finding::fail(
        id,
        format!(
            "{display} trustDomainAliases lack {}, the trust domain(s) of our trust anchors: their workloads are refused by authorization",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
        format!(
            "paste status.meshConfig.snippet of the IstioCACerts, or {}",
            helm_set(&format!("'meshConfig.trustDomainAliases={{{}}}'", all.join(",")))
        ),
    )
}

fn xds_agent(mesh: &MeshConfig, display: &str, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodXdsAgent;
    let why = if iccs.iter().any(has_anchors) {
        "trust anchors"
    } else if iccs.iter().any(rotating) {
        "a root rotation"
    } else {
        return Finding::pass(id);
    };
    if mesh
        .xds_agent
        .as_deref()
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Finding::pass(id);
    }
    Finding::fail(
        id,
        format!(
            "{display} does not set defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT=\"true\", yet the mesh has {why}: sidecars keep only the last root istiod sends and ignore the pushed trust bundle"
        ),
        format!(
            "{}, then restart the workloads",
            helm_set("meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT=\"true\"")
        ),
    )
}

fn ambient(o: &Observed, iccs: &[IstioCACerts]) -> Finding {
    let id = CheckId::IstiodAmbient;
    let ztunnels = match &o.ztunnels {
        Ok(z) => z,
        Err(e) => return Finding::warn(id, format!("not checked: {e}"), format!("{}#rbac", super::DOCS)),
    };
    let anchored: Vec<String> = iccs.iter().filter(|i| has_anchors(i)).map(|i| i.name_any()).collect();
    if ztunnels.is_empty() || anchored.is_empty() {
        return Finding::pass(id);
    }
    Finding::fail(
        id,
        format!(
            "ztunnel ({}) runs while IstioCACerts {} has trust anchors of other roots: ambient works only with one shared root",
            ztunnels.join(", "),
            anchored.join(", ")
        ),
        "use one root for every cluster (docs/multicluster.md) and meshca unfederate, or run these clusters with sidecars only",
    )
}

/// istiod has loaded our CA when the roots it distributes (`istio-ca-root-cert`) are ours.
pub fn loaded_ca(o: &Observed) -> Finding {
    let id = CheckId::IstiodLoadedCa;
    let ns = &o.settings_namespace;
    let istiod = o
        .istiods
        .as_deref()
        .unwrap_or_default()
        .first()
        .map_or("istiod".to_string(), |d| d.name_any());
    let restart = format!("kubectl -n {ns} rollout restart deployment/{istiod}");
    let Some(icc) = o.istio_cacerts.as_deref().unwrap_or_default().first() else {
        return Finding::fail(
            id,
            format!("no IstioCACerts in {ns}: no CA of ours to look for"),
            "see IstioCACerts above",
        );
    };
    let published = match &o.root_cert_config_map {
        Err(e) => return Finding::fail(id, e.clone(), format!("{}#rbac", super::DOCS)),
        Ok(None) => {
            return Finding::fail(
                id,
                format!("istiod has not written ConfigMap {ns}/{ROOT_CERT_CONFIG_MAP}: it is not running, or not yet"),
                format!("kubectl -n {ns} get pods -l {ISTIOD_LABEL}; kubectl -n {ns} logs deployment/{istiod}"),
            );
        }
        Ok(Some(Err(e))) => {
            return Finding::fail(id, format!("ConfigMap {ns}/{ROOT_CERT_CONFIG_MAP}: {e}"), restart);
        }
        Ok(Some(Ok(certs))) => certs,
    };
    // Ours: the roots cacerts holds (read from the Secret, else as the status tracks them).
    let target = o
        .secrets
        .get(&icc.spec.target_secret_name)
        .and_then(|r| r.as_ref().ok())
        .and_then(|s| s.as_ref());
    let status = icc.status.clone().unwrap_or_default();
    let own: BTreeSet<String> = status.roots.iter().map(|r| r.fingerprint_sha256.clone()).collect();
    let expected: BTreeSet<String> = match target {
        Some(t) if !t.roots.is_empty() => t.roots.iter().map(|r| r.fingerprint.clone()).collect(),
        _ => own
            .iter()
            .cloned()
            .chain(
                status
                    .trust_anchors
                    .iter()
                    .map(|a| a.certificate.fingerprint_sha256.clone()),
            )
            .collect(),
    };
    let got: BTreeSet<String> = published.iter().map(|c| c.fingerprint.clone()).collect();
    let describe = |certs: &[CertId]| certs.iter().map(CertId::display).collect::<Vec<_>>().join(", ");
    if expected.is_empty() {
        return Finding::fail(
            id,
            format!("IstioCACerts {} has written no root yet", icc.name_any()),
            "see IstioCACerts above",
        );
    }
    let ours = if own.is_empty() { &expected } else { &own };
    if got.is_disjoint(ours) {
        return Finding::fail(
            id,
            format!(
                "istiod distributes {}, not our root: it still runs another CA (its own self-signed one if it started before cacerts existed)",
                describe(published)
            ),
            restart,
        );
    }
    if got != expected {
        let missing: Vec<&str> = expected.difference(&got).map(|f| short(f)).collect();
        let extra: Vec<&str> = got.difference(&expected).map(|f| short(f)).collect();
        return Finding::warn(
            id,
            format!(
                "istiod distributes an older root-cert.pem than cacerts holds (missing: [{}], no longer in cacerts: [{}]): it has not reloaded",
                missing.join(", "),
                extra.join(", ")
            ),
            format!("with ISTIO_MULTIROOT_MESH=true istiod reloads it by itself; otherwise {restart}"),
        );
    }
    Finding::pass(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio_cacerts::{KeyRef, TrustAnchor};
    use crate::cli::check::Status;
    use crate::cli::check::testdata;

    fn federated(icc: &mut IstioCACerts) {
        icc.spec.trust_anchors = vec![TrustAnchor {
            name: "peer-west".into(),
            trust_domains: vec!["west.example".into()],
            config_map_key_ref: Some(KeyRef {
                name: "meshca-peer-west".into(),
                key: "root-cert.pem".into(),
            }),
            secret_key_ref: None,
            spiffe_bundle_endpoint: None,
            fingerprints: vec![],
            allow_intermediate: false,
        }];
    }

    fn run(o: &Observed, id: CheckId) -> Finding {
        check(o)
            .into_iter()
            .chain([loaded_ca(o)])
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("{id:?} not run: {:?}", check(o)))
    }

    #[test]
    fn a_healthy_istiod_passes_every_check() {
        let o = testdata::healthy();
        for f in check(&o).into_iter().chain([loaded_ca(&o)]) {
            assert_eq!(f.status, Status::Pass, "{f:?}");
        }
    }

    #[test]
    fn each_broken_istiod_fails_its_check_with_what_to_do() {
        // (case, change to the world, check, status, problem contains, fix contains)
        type Change = fn(&mut Observed);
        let cases: Vec<(&str, Change, CheckId, Status, &str, &str)> = vec![
            (
                "no cacerts volume",
                |o| testdata::istiod_mut(o).spec.template.spec.as_mut().unwrap().volumes = None,
                CheckId::IstiodCacertsMounted,
                Status::Fail,
                "does not mount Secret cacerts at /etc/cacerts",
                "optional: true",
            ),
            (
                "mounted elsewhere",
                |o| {
                    let pod = testdata::istiod_mut(o).spec.template.spec.as_mut().unwrap();
                    pod.containers[0].volume_mounts.as_mut().unwrap()[0].mount_path = "/etc/other".into();
                },
                CheckId::IstiodCacertsMounted,
                Status::Fail,
                "does not mount",
                "",
            ),
            (
                "anchors without multiroot",
                |o| federated(&mut o.istio_cacerts.as_mut().unwrap()[0]),
                CheckId::IstiodMultiRoot,
                Status::Fail,
                "does not set ISTIO_MULTIROOT_MESH=true, yet IstioCACerts istiod has trust anchors",
                "set env deployment/istiod ISTIO_MULTIROOT_MESH=true",
            ),
            (
                "multiroot claimed but not set",
                |o| {
                    o.istio_cacerts.as_mut().unwrap()[0].spec.root_rotation =
                        Some(crate::api::istio_cacerts::RootRotation {
                            multi_root_mesh_enabled: true,
                            ..Default::default()
                        })
                },
                CheckId::IstiodMultiRoot,
                Status::Fail,
                "multiRootMeshEnabled: true",
                "",
            ),
            (
                "multiroot from a ConfigMap",
                |o| {
                    federated(&mut o.istio_cacerts.as_mut().unwrap()[0]);
                    testdata::set_istiod_env(o, "ISTIO_MULTIROOT_MESH", None);
                },
                CheckId::IstiodMultiRoot,
                Status::Warn,
                "cannot tell",
                "",
            ),
            (
                "another trust domain",
                |o| testdata::set_mesh(o, "trustDomain: other.example\n"),
                CheckId::IstiodTrustDomain,
                Status::Fail,
                "says trustDomain other.example, but IstioCACerts istiod says cluster.local",
                "meshConfig.trustDomain=cluster.local",
            ),
            (
                "no mesh config",
                |o| {
                    o.mesh_configs.insert("istio".into(), Ok(None));
                },
                CheckId::IstiodTrustDomain,
                Status::Fail,
                "(istiod's mesh config) does not exist",
                "",
            ),
            (
                "aliases missing",
                |o| {
                    federated(&mut o.istio_cacerts.as_mut().unwrap()[0]);
                    testdata::set_istiod_env(o, "ISTIO_MULTIROOT_MESH", Some("true"));
                },
                CheckId::IstiodTrustDomainAliases,
                Status::Fail,
                "trustDomainAliases lack west.example",
                "meshConfig.trustDomainAliases={west.example}",
            ),
            (
                "xds agent missing",
                |o| federated(&mut o.istio_cacerts.as_mut().unwrap()[0]),
                CheckId::IstiodXdsAgent,
                Status::Fail,
                "PROXY_CONFIG_XDS_AGENT",
                "restart the workloads",
            ),
            (
                "ztunnel with anchors",
                |o| {
                    federated(&mut o.istio_cacerts.as_mut().unwrap()[0]);
                    o.ztunnels = Ok(vec!["istio-system/ztunnel".into()]);
                },
                CheckId::IstiodAmbient,
                Status::Fail,
                "ztunnel (istio-system/ztunnel) runs while IstioCACerts istiod has trust anchors",
                "one root",
            ),
            (
                "ztunnel with one root",
                |o| o.ztunnels = Ok(vec!["istio-system/ztunnel".into()]),
                CheckId::IstiodAmbient,
                Status::Pass,
                "",
                "",
            ),
            (
                "istiod on its self-signed CA",
                |o| o.root_cert_config_map = Ok(Some(Ok(vec![testdata::cert_id("istiod-self-signed")]))),
                CheckId::IstiodLoadedCa,
                Status::Fail,
                "not our root",
                "rollout restart deployment/istiod",
            ),
            (
                "istiod never wrote it",
                |o| o.root_cert_config_map = Ok(None),
                CheckId::IstiodLoadedCa,
                Status::Fail,
                "has not written ConfigMap",
                "",
            ),
            (
                "istiod has not reloaded an added anchor",
                |o| {
                    let anchor = testdata::cert_id("peer");
                    o.secrets
                        .get_mut("cacerts")
                        .unwrap()
                        .as_mut()
                        .unwrap()
                        .as_mut()
                        .unwrap()
                        .roots
                        .push(anchor);
                },
                CheckId::IstiodLoadedCa,
                Status::Warn,
                "has not reloaded",
                "ISTIO_MULTIROOT_MESH=true",
            ),
        ];
        for (case, change, id, status, problem, fix) in cases {
            let mut o = testdata::healthy();
            change(&mut o);
            let got = run(&o, id);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(
                got.problem.as_deref().unwrap_or("").contains(problem),
                "{case}: {got:?}"
            );
            assert!(got.fix.as_deref().unwrap_or("").contains(fix), "{case}: {got:?}");
        }
        let mut o = testdata::healthy();
        o.istiods = Ok(vec![]);
        let got = check(&o);
        assert_eq!(
            (got.len(), got[0].id, got[0].status),
            (1, CheckId::IstiodFound, Status::Fail)
        );
    }

    #[test]
    fn ztunnel_is_found_by_the_labels_istios_chart_gives_it() {
        let ds = |labels: serde_json::Value, pod: serde_json::Value| -> DaemonSet {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "x", "labels": labels},
                "spec": {"selector": {}, "template": {"metadata": {"labels": pod}}},
            }))
            .unwrap()
        };
        // As Istio's ztunnel chart renders it: the DaemonSet is app.kubernetes.io/name=ztunnel.
        assert!(is_ztunnel(&ds(
            serde_json::json!({"app.kubernetes.io/name": "ztunnel"}),
            serde_json::json!({"app": "ztunnel"})
        )));
        assert!(is_ztunnel(&ds(
            serde_json::json!({"app": "ztunnel"}),
            serde_json::json!({})
        )));
        assert!(!is_ztunnel(&ds(
            serde_json::json!({"app": "fluentd"}),
            serde_json::json!({"app": "fluentd"})
        )));
    }

    #[test]
    fn mesh_config_is_read_as_istio_writes_it() {
        let cm = |mesh: &str| ConfigMap {
            data: Some([("mesh".to_string(), mesh.to_string())].into()),
            ..Default::default()
        };
        let got = mesh_config(&cm("defaultConfig:\n  proxyMetadata:\n    PROXY_CONFIG_XDS_AGENT: \"true\"\ntrustDomain: east.example\ntrustDomainAliases: [west.example]\n")).unwrap();
        assert_eq!(
            got,
            MeshConfig {
                trust_domain: "east.example".into(),
                aliases: vec!["west.example".into()],
                xds_agent: Some("true".into())
            }
        );
        assert_eq!(
            mesh_config(&cm("{}")).unwrap().trust_domain,
            "cluster.local",
            "Istio's default"
        );
        assert!(mesh_config(&cm(": - [")).is_err());
        let mut d = Deployment::default();
        d.metadata.labels = Some([("istio.io/rev".to_string(), "1-30".to_string())].into());
        assert_eq!(mesh_config_name(&d), "istio-1-30");
    }
}
