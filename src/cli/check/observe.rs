//! Observe: everything `meshca check` judges, read from one cluster into a plain [`Observed`]
//! value. Only GET, LIST and SubjectAccessReview (which the API server answers without storing
//! anything) are sent. Each read that fails is kept as its reason ([`Read`]) for the check that
//! needs it, so one forbidden list never hides the other checks. Secrets are reduced to the
//! identities of their certificates right here: no key ever leaves this file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, ListParams, PostParams};
use kube::config::Kubeconfig;
use kube::{Api, Client, ResourceExt};

use super::{approval, installation, istiod};
use crate::api::cert_manager::Certificate;
use crate::api::istio_cacerts::IstioCACerts;
use crate::api::{ClusterMeshCAIssuer, IssuerSpec, IssuerStatus, MeshCAIssuer};
use crate::cli::federation::PEER_CLUSTER_LABEL;
use crate::pki::Certificate as X509;

/// A read that worked, or why not (e.g. "forbidden (403)").
pub type Read<T> = Result<T, String>;

/// What the checks need to know besides the cluster.
#[derive(Clone, Debug)]
pub struct Settings {
    /// istiod's namespace: its Deployment, mesh config, Certificate and IstioCACerts live there.
    pub namespace: String,
    /// The controller's namespace; `None`: where the chart's Deployment is found, else
    /// `cert-manager`.
    pub controller_namespace: Option<String>,
    /// cert-manager's namespace: its ServiceAccount `cert-manager` approves requests, and
    /// approver-policy's is `cert-manager-approver-policy`.
    pub cert_manager_namespace: String,
}

/// One cluster as read, or why it could not be.
#[derive(Clone, Debug)]
pub enum ClusterRead {
    Read(Box<Observed>),
    Unreachable { context: String, reason: String },
}

impl ClusterRead {
    pub fn context(&self) -> &str {
        match self {
            ClusterRead::Read(o) => &o.context,
            ClusterRead::Unreachable { context, .. } => context,
        }
    }
}

/// Everything read of one cluster.
#[derive(Clone, Debug)]
pub struct Observed {
    pub context: String,
    pub settings_namespace: String,
    /// UID of `kube-system`: the cluster's identity (as `meshca federate` uses it).
    pub cluster_id: Read<String>,
    /// The CRDs looked for, by name (`None`: not installed).
    pub crds: BTreeMap<String, Read<Option<CustomResourceDefinition>>>,
    pub controller: ControllerObserved,
    pub approvers: Vec<Approver>,
    /// approver-policy's CertificateRequestPolicies; `Ok(None)` when approver-policy is not
    /// installed.
    pub policies: Read<Option<Vec<serde_json::Value>>>,
    /// cert-manager Certificates in istiod's namespace.
    pub certificates: Read<Vec<Certificate>>,
    /// Issuers of ours that the mesh uses (named by a Certificate, or in istiod's namespace).
    pub issuers: Vec<IssuerObserved>,
    pub istio_cacerts: Read<Vec<IstioCACerts>>,
    /// The IstioCACerts' source and target Secrets, by name, as certificate identities.
    pub secrets: BTreeMap<String, Read<Option<SecretCertificates>>>,
    /// Deployments labelled `app=istiod` in istiod's namespace.
    pub istiods: Read<Vec<Deployment>>,
    /// Mesh config ConfigMaps (`istio`, `istio-<revision>`), by name.
    pub mesh_configs: BTreeMap<String, Read<Option<ConfigMap>>>,
    /// `istio-ca-root-cert` in istiod's namespace, as istiod wrote it.
    pub root_cert_config_map: Read<Option<PemCertificates>>,
    /// ztunnel's DaemonSets, anywhere: "namespace/name".
    pub ztunnels: Read<Vec<String>>,
    /// ConfigMaps `meshca federate` wrote into istiod's namespace: (name, peer cluster id).
    pub peer_config_maps: Read<Vec<(String, Option<String>)>>,
}

/// Where the controller was looked for, and what was found.
#[derive(Clone, Debug)]
pub struct ControllerObserved {
    /// Deployments of the chart (`app.kubernetes.io/name=mesh-ca-issuer`).
    pub deployments: Read<Vec<Deployment>>,
    pub lease_namespace: String,
    pub lease_name: String,
    pub lease: Read<Option<Lease>>,
}

/// An identity that approves CertificateRequests, and what it may approve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approver {
    /// "namespace/name" of its ServiceAccount.
    pub service_account: String,
    pub kind: approval::ApproverKind,
    /// Signer names (`meshcaissuers.meshca.io/*`, ...) and whether `approve` is allowed.
    pub may_approve: BTreeMap<String, Read<bool>>,
}

/// Which issuer, strictly by kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IssuerKey {
    pub cluster_scoped: bool,
    /// The namespace of a MeshCAIssuer.
    pub namespace: Option<String>,
    pub name: String,
}

impl IssuerKey {
    pub fn kind(&self) -> &'static str {
        if self.cluster_scoped {
            crate::api::issuer::CLUSTER_ISSUER_KIND
        } else {
            crate::api::issuer::ISSUER_KIND
        }
    }
    /// "ClusterMeshCAIssuer mesh-root", "MeshCAIssuer istio-system/mesh".
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind(), self.name),
            None => format!("{} {}", self.kind(), self.name),
        }
    }
}

/// An issuer as read.
#[derive(Clone, Debug, PartialEq)]
pub struct IssuerObserved {
    pub key: IssuerKey,
    pub issuer: Read<Option<IssuerObject>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IssuerObject {
    pub spec: IssuerSpec,
    pub status: Option<IssuerStatus>,
    pub generation: Option<i64>,
}

/// A certificate's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertId {
    pub subject: String,
    pub fingerprint: String,
}

impl CertId {
    pub fn of(cert: &X509) -> Self {
        Self {
            subject: cert.subject(),
            fingerprint: cert.fingerprint(),
        }
    }
    /// "CN=x (SHA-256 ab12cd34ef56)".
    pub fn display(&self) -> String {
        format!("{} (SHA-256 {})", self.subject, short(&self.fingerprint))
    }
}

/// A fingerprint, shortened for people.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..12).unwrap_or(fingerprint)
}

/// The certificates of a Secret, never its key: the certificate it signs with (`ca-cert.pem`,
/// or `tls.crt` of cert-manager's Secret), the root that chain ends at, and the roots it
/// trusts (`root-cert.pem`, or `ca.crt`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SecretCertificates {
    pub leaf: Option<CertId>,
    pub signing_root: Option<CertId>,
    pub roots: Vec<CertId>,
}

/// PEM certificates, or why they could not be parsed.
pub type PemCertificates = Result<Vec<CertId>, String>;

/// Reads one cluster within `timeout`; a cluster that does not answer in time is unreachable.
pub async fn observe_with_timeout(
    kubeconfig: &Kubeconfig,
    context: &str,
    settings: &Settings,
    timeout: Duration,
) -> ClusterRead {
    match tokio::time::timeout(timeout, observe(kubeconfig, context, settings)).await {
        Ok(read) => read,
        Err(_) => ClusterRead::Unreachable {
            context: context.to_string(),
            reason: format!("context {context} did not answer within {}s", timeout.as_secs()),
        },
    }
}

/// Why a request failed, in one line: the API server's own message when it answered.
fn reason(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// Every object of `api` that `params` selects; a failure says what was listed (`what`) and
/// the API server's answer.
async fn list<K>(api: Api<K>, params: ListParams, what: String) -> Result<Vec<K>, String>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&params)
        .await
        .map(|l| l.items)
        .map_err(|e| format!("listing {what}: {}", reason(e)))
}

/// Reads one cluster. The first request tells reachable from not; the rest run at once.
pub async fn observe(kubeconfig: &Kubeconfig, context: &str, settings: &Settings) -> ClusterRead {
    let unreachable = |reason: String| ClusterRead::Unreachable {
        context: context.to_string(),
        reason,
    };
    let client = match super::super::client_for(kubeconfig, context).await {
        Ok(c) => c,
        Err(f) => return unreachable(f.message),
    };
    let cluster_id = match Api::<Namespace>::all(client.clone()).get("kube-system").await {
        Ok(ns) => ns
            .metadata
            .uid
            .ok_or_else(|| "namespace kube-system has no UID".to_string()),
        // The API server answered (e.g. forbidden): reachable.
        Err(kube::Error::Api(s)) => Err(format!("{} ({})", s.message, s.code)),
        Err(e) => return unreachable(format!("context {context} is unreachable: {e}")),
    };
    let ns = settings.namespace.as_str();

    // What the rest depends on: Certificates, issuers in the namespace, IstioCACerts,
    // istiod's Deployments and the controller's.
    let (crds, certificates, local_issuers, istio_cacerts, istiods, deployments) = futures::join!(
        read_crds(&client),
        list(
            Api::<Certificate>::namespaced(client.clone(), ns),
            ListParams::default(),
            format!("Certificates in {ns}"),
        ),
        list(
            Api::<MeshCAIssuer>::namespaced(client.clone(), ns),
            ListParams::default(),
            format!("MeshCAIssuers in {ns}"),
        ),
        list(
            Api::<IstioCACerts>::namespaced(client.clone(), ns),
            ListParams::default(),
            format!("IstioCACerts in {ns}"),
        ),
        list(
            Api::<Deployment>::namespaced(client.clone(), ns),
            ListParams::default().labels(istiod::ISTIOD_LABEL),
            format!("Deployments ({}) in {ns}", istiod::ISTIOD_LABEL),
        ),
        list(
            match &settings.controller_namespace {
                Some(n) => Api::<Deployment>::namespaced(client.clone(), n),
                None => Api::all(client.clone()),
            },
            ListParams::default().labels(installation::CHART_LABEL),
            format!("Deployments ({})", installation::CHART_LABEL),
        ),
    );

    let issuer_keys = issuer_keys(
        ns,
        certificates.as_deref().unwrap_or_default(),
        local_issuers.as_deref().unwrap_or_default(),
    );
    let policy_crd = crds
        .get(approval::POLICY_CRD)
        .and_then(|c| c.as_ref().ok())
        .and_then(|c| c.clone());
    let approver_identities = approval::approvers(&settings.cert_manager_namespace, policy_crd.is_some());
    let signer_names = approval::signer_names(ns, &issuer_keys);
    let (lease_namespace, lease_name) =
        installation::lease_location(deployments.as_deref().unwrap_or_default(), settings);
    let secret_names: BTreeSet<String> = istio_cacerts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .flat_map(|icc| [icc.spec.source_secret_name.clone(), icc.spec.target_secret_name.clone()])
        .collect();
    let mesh_config_names: BTreeSet<String> = istiods
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(istiod::mesh_config_name)
        .collect();

    let (issuers, approvers, policies, lease, secrets, mesh_configs, root_cert, ztunnels, peers) = futures::join!(
        futures::future::join_all(issuer_keys.iter().map(|k| read_issuer(&client, k))),
        futures::future::join_all(approver_identities.into_iter().map(|(sa, kind)| {
            let client = client.clone();
            let names = signer_names.clone();
            async move {
                let checks = futures::future::join_all(names.iter().map(|n| may_approve(&client, &sa, n))).await;
                Approver {
                    service_account: sa.clone(),
                    kind,
                    may_approve: names.into_iter().zip(checks).collect(),
                }
            }
        })),
        read_policies(&client, policy_crd.as_ref()),
        async {
            Api::<Lease>::namespaced(client.clone(), &lease_namespace)
                .get_opt(&lease_name)
                .await
                .map_err(|e| format!("reading Lease {lease_namespace}/{lease_name}: {}", reason(e)))
        },
        futures::future::join_all(secret_names.iter().map(|name| read_secret(&client, ns, name))),
        futures::future::join_all(mesh_config_names.iter().map(|name| {
            let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
            async move {
                api.get_opt(name)
                    .await
                    .map_err(|e| format!("reading ConfigMap {ns}/{name}: {}", reason(e)))
            }
        })),
        async {
            Api::<ConfigMap>::namespaced(client.clone(), ns)
                .get_opt(istiod::ROOT_CERT_CONFIG_MAP)
                .await
                .map(|cm| cm.map(|cm| root_cert_of(&cm)))
                .map_err(|e| format!("reading ConfigMap {ns}/{}: {}", istiod::ROOT_CERT_CONFIG_MAP, reason(e)))
        },
        async {
            // Istio's ztunnel chart labels only the pods `app=ztunnel`: list them all, pick here.
            Api::<DaemonSet>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|d| istiod::is_ztunnel(d))
                        .map(|d| format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()))
                        .collect()
                })
                .map_err(|e| format!("listing DaemonSets: {}", reason(e)))
        },
        async {
            Api::<ConfigMap>::namespaced(client.clone(), ns)
                .list_metadata(&ListParams::default().labels(PEER_CLUSTER_LABEL))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .map(|cm| (cm.name_any(), cm.labels().get(PEER_CLUSTER_LABEL).cloned()))
                        .collect()
                })
                .map_err(|e| format!("listing ConfigMaps ({PEER_CLUSTER_LABEL}) in {ns}: {}", reason(e)))
        },
    );

    ClusterRead::Read(Box::new(Observed {
        context: context.to_string(),
        settings_namespace: ns.to_string(),
        cluster_id,
        crds,
        controller: ControllerObserved {
            deployments,
            lease_namespace,
            lease_name,
            lease,
        },
        approvers,
        policies,
        certificates,
        issuers: issuer_keys
            .into_iter()
            .zip(issuers)
            .map(|(key, issuer)| IssuerObserved { key, issuer })
            .collect(),
        istio_cacerts,
        secrets: secret_names.into_iter().zip(secrets).collect(),
        istiods,
        mesh_configs: mesh_config_names.into_iter().zip(mesh_configs).collect(),
        root_cert_config_map: root_cert,
        ztunnels,
        peer_config_maps: peers,
    }))
}

/// The issuers the mesh uses: those its Certificates name (strictly by kind; a MeshCAIssuer in
/// the Certificate's namespace), and every MeshCAIssuer in istiod's namespace.
pub fn issuer_keys(namespace: &str, certificates: &[Certificate], local: &[MeshCAIssuer]) -> Vec<IssuerKey> {
    let mut keys = BTreeSet::new();
    for cert in certificates {
        if let Some(key) = issuer_key_of(namespace, cert) {
            keys.insert(key);
        }
    }
    for issuer in local {
        keys.insert(IssuerKey {
            cluster_scoped: false,
            namespace: Some(namespace.to_string()),
            name: issuer.name_any(),
        });
    }
    keys.into_iter().collect()
}

/// The issuer a Certificate names, when it is one of ours.
pub fn issuer_key_of(namespace: &str, cert: &Certificate) -> Option<IssuerKey> {
    let r = &cert.spec.issuer_ref;
    if r.group.as_deref() != Some(crate::api::GROUP) {
        return None;
    }
    match r.kind.as_deref() {
        Some(crate::api::issuer::CLUSTER_ISSUER_KIND) => Some(IssuerKey {
            cluster_scoped: true,
            namespace: None,
            name: r.name.clone(),
        }),
        Some(crate::api::issuer::ISSUER_KIND) => Some(IssuerKey {
            cluster_scoped: false,
            namespace: Some(namespace.to_string()),
            name: r.name.clone(),
        }),
        _ => None,
    }
}

async fn read_crds(client: &Client) -> BTreeMap<String, Read<Option<CustomResourceDefinition>>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names: Vec<&str> = installation::OUR_CRDS
        .iter()
        .chain(installation::CERT_MANAGER_CRDS.iter())
        .chain([approval::POLICY_CRD].iter())
        .copied()
        .collect();
    let reads = futures::future::join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .map_err(|e| format!("reading CRD {name}: {}", reason(e)))
        }
    }))
    .await;
    names.into_iter().map(String::from).zip(reads).collect()
}

async fn read_issuer(client: &Client, key: &IssuerKey) -> Read<Option<IssuerObject>> {
    let what = key.display();
    let err = |e| format!("reading {what}: {}", reason(e));
    match &key.namespace {
        None => get_issuer(Api::<ClusterMeshCAIssuer>::all(client.clone()), &key.name)
            .await
            .map_err(err),
        Some(ns) => get_issuer(Api::<MeshCAIssuer>::namespaced(client.clone(), ns), &key.name)
            .await
            .map_err(err),
    }
}

/// Either kind of issuer, as far as the checks read it.
async fn get_issuer<K: crate::controller::issuer::IssuerObject>(
    api: Api<K>,
    name: &str,
) -> Result<Option<IssuerObject>, kube::Error> {
    Ok(api.get_opt(name).await?.map(|i| IssuerObject {
        generation: kube::Resource::meta(&i).generation,
        spec: i.spec().clone(),
        status: i.status().cloned(),
    }))
}

/// Asks the API server whether `service_account` ("ns/name") may approve `signer`, as
/// cert-manager's webhook asks it when an approval is written. Creating a SubjectAccessReview
/// stores nothing.
async fn may_approve(client: &Client, service_account: &str, signer: &str) -> Read<bool> {
    let (sa_namespace, sa_name) = service_account.split_once('/').unwrap_or(("", service_account));
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_namespace}:{sa_name}")),
            // The groups Kubernetes gives every ServiceAccount token: bindings to them count.
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_namespace}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(crate::api::cert_manager::GROUP.into()),
                resource: Some("signers".into()),
                verb: Some("approve".into()),
                name: Some(signer.into()),
                version: Some("*".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map(|r| r.status.is_some_and(|s| s.allowed))
        .map_err(|e| format!("asking whether {service_account} may approve {signer}: {}", reason(e)))
}

async fn read_policies(
    client: &Client,
    crd: Option<&CustomResourceDefinition>,
) -> Read<Option<Vec<serde_json::Value>>> {
    let Some(crd) = crd else { return Ok(None) };
    let Some(version) = crd.spec.versions.iter().find(|v| v.served) else {
        return Ok(Some(Vec::new()));
    };
    let resource = ApiResource {
        group: crd.spec.group.clone(),
        version: version.name.clone(),
        api_version: format!("{}/{}", crd.spec.group, version.name),
        kind: crd.spec.names.kind.clone(),
        plural: crd.spec.names.plural.clone(),
    };
    Api::<DynamicObject>::all_with(client.clone(), &resource)
        .list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect()
        })
        .map(Some)
        .map_err(|e| format!("listing CertificateRequestPolicies: {}", reason(e)))
}

async fn read_secret(client: &Client, namespace: &str, name: &str) -> Read<Option<SecretCertificates>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {namespace}/{name}: {}", reason(e)))?;
    Ok(secret.map(|s| certificates_of(&s)))
}

/// The certificates of a `cacerts` (Istio's keys, or the TLS keys) or cert-manager Secret.
/// Keys are never looked at.
pub fn certificates_of(secret: &Secret) -> SecretCertificates {
    let data = secret.data.clone().unwrap_or_default();
    let parse = |key: &str| -> Vec<X509> {
        data.get(key)
            .and_then(|b| X509::parse_pem_bundle(&b.0, "a Secret key").ok())
            .unwrap_or_default()
    };
    let (leaf, chain, roots) = if data.contains_key(crate::istio::cacerts::CA_CERT) {
        (
            parse(crate::istio::cacerts::CA_CERT),
            parse(crate::istio::cacerts::CERT_CHAIN),
            parse(crate::istio::cacerts::ROOT_CERT),
        )
    } else {
        (parse("tls.crt"), parse("tls.crt"), parse("ca.crt"))
    };
    // The root the chain ends at: its last certificate when self-signed, else the trusted root
    // that signed it.
    let top = chain.last().or(leaf.first());
    let signing_root = top.and_then(|top| {
        if top.is_self_signed() {
            Some(top)
        } else {
            roots.iter().find(|r| top.is_signed_by(r))
        }
    });
    SecretCertificates {
        leaf: leaf.first().map(CertId::of),
        signing_root: signing_root.map(CertId::of),
        roots: roots.iter().map(CertId::of).collect(),
    }
}

/// The roots in istiod's `istio-ca-root-cert` ConfigMap (key `root-cert.pem`).
pub fn root_cert_of(cm: &ConfigMap) -> PemCertificates {
    let Some(pem) = cm.data.as_ref().and_then(|d| d.get(istiod::ROOT_CERT_KEY)) else {
        return Err(format!("it has no key {}", istiod::ROOT_CERT_KEY));
    };
    X509::parse_pem_bundle(pem.as_bytes(), "root-cert.pem")
        .map(|certs| certs.iter().map(CertId::of).collect())
        .map_err(|e| e.to_string())
}
