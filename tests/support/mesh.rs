//! A mesh as the tests build it, written once: in a namespace of a control plane, a
//! MeshCAIssuer with a local root, cert-manager's (stand-in) Secret for istiod's intermediate
//! and an IstioCACerts; two of them across the two control planes (`TwoClusters`), each with
//! its own controller; the workload certificate istiod would sign from `cacerts`; and every
//! version of `cacerts` as a watch saw it.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuancePolicy, IssuerSpec};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec};

use super::cert_manager::{self as cm, IntermediateRequest};
use super::objects::{self, condition, data, ready_at_generation};
use super::openssl::workload_certificate;
use super::{ControllerProcess, ScopeLock, TestNamespace, issuer};

/// cert-manager's Secret for istiod's intermediate (the IstioCACerts' source).
pub const SOURCE: &str = "istiod-intermediate";
/// Where an IstioCACerts publishes its cluster's root for `meshca federate`.
pub const PUBLISHED: &str = "istio-ca-root-published";

/// An IstioCACerts writing `cacerts` from [`SOURCE`] in `trust_domain`, publishing its root to
/// [`PUBLISHED`], with an optional root rotation.
pub fn publishing(
    trust_domain: &str,
    rotation: Option<mesh_ca_issuer::api::istio_cacerts::RootRotation>,
) -> IstioCACertsSpec {
    IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        trust_domain: trust_domain.into(),
        publish_root: Some(mesh_ca_issuer::api::istio_cacerts::PublishRoot {
            config_map_name: PUBLISHED.into(),
            key: "root-cert.pem".into(),
        }),
        root_rotation: rotation,
        ..Default::default()
    }
}

/// A trust anchor `name` for `trust_domain` read from ConfigMap `config_map` key `root-cert.pem`.
pub fn config_map_anchor(
    name: &str,
    trust_domain: &str,
    config_map: &str,
) -> mesh_ca_issuer::api::istio_cacerts::TrustAnchor {
    mesh_ca_issuer::api::istio_cacerts::TrustAnchor {
        name: name.into(),
        trust_domains: vec![trust_domain.into()],
        config_map_key_ref: Some(mesh_ca_issuer::api::istio_cacerts::KeyRef {
            name: config_map.into(),
            key: "root-cert.pem".into(),
        }),
        secret_key_ref: None,
        spiffe_bundle_endpoint: None,
        fingerprints: vec![],
        allow_intermediate: false,
    }
}

/// This cluster's bundle endpoint, with the default serving SVID and `refresh_hint`.
pub fn serving_bundle(refresh_hint: &str) -> Option<mesh_ca_issuer::api::istio_cacerts::BundleEndpoint> {
    Some(mesh_ca_issuer::api::istio_cacerts::BundleEndpoint {
        enabled: true,
        tls_secret_name: None,
        refresh_hint: refresh_hint.into(),
    })
}

/// A trust anchor `name` following the bundle endpoint of the peer in `trust_domain` whose
/// controller serves on 127.0.0.1:`port` (`https_spiffe`, its default SVID), authenticated
/// first by the PEM in ConfigMap `bootstrap` key `root-cert.pem` (see [`Mesh::bootstrap`]).
pub fn endpoint_anchor(
    name: &str,
    trust_domain: &str,
    port: u16,
    bootstrap: &str,
) -> mesh_ca_issuer::api::istio_cacerts::TrustAnchor {
    use mesh_ca_issuer::api::istio_cacerts::{
        BundleEndpointProfile, BundleRef, KeyRef, SpiffeBundleEndpoint, TrustAnchor, bundle_endpoint_spiffe_id,
    };
    TrustAnchor {
        name: name.into(),
        trust_domains: vec![trust_domain.into()],
        config_map_key_ref: None,
        secret_key_ref: None,
        spiffe_bundle_endpoint: Some(SpiffeBundleEndpoint {
            url: format!("https://127.0.0.1:{port}/{trust_domain}"),
            profile: BundleEndpointProfile::HttpsSpiffe,
            endpoint_spiffe_id: Some(bundle_endpoint_spiffe_id(trust_domain)),
            bootstrap_bundle: Some(BundleRef {
                config_map_key_ref: Some(KeyRef {
                    name: bootstrap.into(),
                    key: "root-cert.pem".into(),
                }),
                secret_key_ref: None,
            }),
            ca_bundle: None,
        }),
        fingerprints: vec![],
        allow_intermediate: false,
    }
}

/// When anchor `anchor`'s bundle endpoint was last fetched and accepted, per `icc`'s status.
pub fn last_fetched(icc: &IstioCACerts, anchor: &str) -> Option<String> {
    icc.status
        .as_ref()?
        .trust_anchors
        .iter()
        .filter(|a| a.name == anchor)
        .find_map(|a| a.source.as_ref()?.last_fetched.clone())
}

/// One mesh: a namespace, the IstioCACerts `icc` there, the intermediate's revisions.
pub struct Mesh {
    pub client: Client,
    pub ns: TestNamespace,
    /// The IstioCACerts' name.
    pub icc: String,
    /// How long each wait may take (30 s unless a test sets it).
    pub timeout: Duration,
    revision: AtomicU32,
}

impl Mesh {
    pub fn new(client: Client, ns: TestNamespace, icc: &str) -> Self {
        Self {
            client,
            ns,
            icc: icc.to_string(),
            timeout: Duration::from_secs(30),
            revision: AtomicU32::new(0),
        }
    }

    /// The last revision of the intermediate issued (0: none yet).
    pub fn revision(&self) -> u32 {
        self.revision.load(Ordering::SeqCst)
    }

    /// A Ready MeshCAIssuer `name` with a local root bootstrapped into Secret `secret` for
    /// `root_duration` (a root already in that Secret is used as it is).
    pub async fn local_issuer(&self, name: &str, secret: &str, root_duration: &str, policy: IssuancePolicy) {
        self.issuer(name, issuer::bootstrapped_for(secret, root_duration, policy))
            .await;
    }

    /// Creates MeshCAIssuer `name` and waits until it is Ready.
    pub async fn issuer(&self, name: &str, spec: IssuerSpec) {
        issuer::create_ready(&self.ns.api(), name, spec, self.timeout).await;
    }

    /// cert-manager (stand-in) issues the next revision of istiod's intermediate from `issuer`
    /// into the source Secret.
    pub async fn issue(&self, issuer: &str) -> CertificateRequest {
        self.issue_for(issuer, None).await
    }

    /// The same, asking for `duration`.
    pub async fn issue_for(&self, issuer: &str, duration: Option<&str>) -> CertificateRequest {
        let revision = self.revision.fetch_add(1, Ordering::SeqCst) + 1;
        let req = IntermediateRequest {
            certificate: Some(SOURCE.to_string()),
            duration: duration.map(str::to_string),
            ..IntermediateRequest::istiod(&format!("{SOURCE}-{revision}"), issuer)
        };
        let key = cm::request_and_approve(&self.client, &self.ns.name, &req).await;
        let cr = cm::wait_for_reason(&self.client, &self.ns.name, &req.name, &["Issued"], self.timeout).await;
        cm::write_certificate_secret(&self.client, &self.ns.name, SOURCE, &cr, &key).await;
        cr
    }

    /// Creates the IstioCACerts with `spec`.
    /// Creates the IstioCACerts; a rotation in it approves the `new` issuer's root
    /// ([`super::approve_new_root`]).
    pub async fn create_icc(&self, mut spec: IstioCACertsSpec) {
        super::approve_new_root(&self.ns.api(), spec.root_rotation.as_mut()).await;
        self.ns
            .api::<IstioCACerts>()
            .create(&PostParams::default(), &IstioCACerts::new(&self.icc, spec))
            .await
            .unwrap();
    }

    /// Creates the IstioCACerts in `trust_domain`, serving its bundle endpoint with a Web PKI
    /// certificate for 127.0.0.1 (Secret `bundle-endpoint-tls`, from a private CA: the
    /// `https_web` profile), and waits until it serves. Returns the CA's PEM and the object.
    pub async fn serve_bundle_with_web_pki(&self, trust_domain: &str, refresh_hint: &str) -> (String, IstioCACerts) {
        let (ca_pem, crt_pem, key_pem) = super::bundle_peer::web_pki_for_loopback();
        let tls: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bundle-endpoint-tls"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": crt_pem, "tls.key": key_pem},
        }))
        .unwrap();
        self.ns.api().create(&PostParams::default(), &tls).await.unwrap();
        self.create_icc(IstioCACertsSpec {
            source_secret_name: SOURCE.into(),
            trust_domain: trust_domain.into(),
            bundle_endpoint: Some(mesh_ca_issuer::api::istio_cacerts::BundleEndpoint {
                enabled: true,
                tls_secret_name: Some("bundle-endpoint-tls".into()),
                refresh_hint: refresh_hint.into(),
            }),
            ..Default::default()
        })
        .await;
        let serving = self.wait_condition("BundleEndpointReady", "Serving").await;
        (ca_pem, serving)
    }

    /// ConfigMap `name` holding `roots` as PEM under `root-cert.pem`: a peer's bootstrap bundle
    /// as `meshca federate --bundle-endpoint` writes it.
    pub async fn bootstrap(&self, name: &str, roots: &[&mesh_ca_issuer::pki::Certificate]) {
        let pem: String = roots.iter().map(|r| r.to_pem()).collect();
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "data": {"root-cert.pem": pem},
        }))
        .unwrap();
        self.ns.api().create(&PostParams::default(), &cm).await.unwrap();
    }

    pub async fn icc(&self) -> IstioCACerts {
        self.ns.api::<IstioCACerts>().get(&self.icc).await.unwrap()
    }

    pub async fn patch_icc(&self, patch: serde_json::Value) {
        self.ns
            .api::<IstioCACerts>()
            .patch(&self.icc, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }

    /// Waits until `check` holds for the IstioCACerts; returns it.
    pub async fn wait_icc(&self, what: &str, check: impl Fn(&IstioCACerts) -> bool) -> IstioCACerts {
        objects::wait_icc(&self.ns.api(), &self.icc, self.timeout, "", what, check).await
    }

    /// Waits until condition `type_` has `reason`.
    pub async fn wait_condition(&self, type_: &str, reason: &str) -> IstioCACerts {
        self.wait_icc(&format!("{type_}={reason}"), |icc| {
            condition(icc, type_).is_some_and(|c| c.reason == reason)
        })
        .await
    }

    /// Waits until Ready is `reason` for the current generation.
    pub async fn wait_ready(&self, reason: &str) -> IstioCACerts {
        self.wait_icc(&format!("Ready={reason} at its generation"), |icc| {
            ready_at_generation(icc, Some(reason))
        })
        .await
    }

    pub async fn cacerts_secret(&self) -> Secret {
        self.ns.api::<Secret>().get("cacerts").await.expect("cacerts")
    }

    /// The data of `cacerts`.
    pub async fn cacerts(&self) -> BTreeMap<String, Vec<u8>> {
        data(&self.cacerts_secret().await)
    }

    /// Copies Secret `name` from `from`, as a platform team distributes one shared root.
    pub async fn copy_secret(&self, from: &Mesh, name: &str) {
        objects::copy_secret(&from.ns.api(), &self.ns.api(), &self.ns.name, name, false).await;
    }

    /// Every version of `cacerts` from now on.
    pub fn record_cacerts(&self) -> CacertsHistory {
        CacertsHistory::record(self.ns.api())
    }
}

// === two clusters ===

/// One cluster of a pair: its control plane, a mesh in the namespace shared by name, and a
/// controller watching only that namespace.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub context: String,
    /// Its mesh's trust domain.
    pub trust_domain: String,
    pub mesh: Mesh,
    pub controller: ControllerProcess,
    _logs: tempfile::TempDir,
}

impl Cluster {
    /// Namespace `namespace` in the control plane behind `kubeconfig`, our CRDs, and a
    /// controller there; the IstioCACerts will be `icc`, in `trust_domain`.
    pub async fn start(kubeconfig: PathBuf, namespace: &str, icc: &str, trust_domain: &str) -> Self {
        let client = super::client_for_kubeconfig(&kubeconfig).await;
        super::install_crds(&client).await;
        let ns = TestNamespace::create_named(&client, namespace, &kubeconfig).await;
        let logs = tempfile::tempdir().expect("log dir");
        let mut controller =
            ControllerProcess::start_with_kubeconfig(&kubeconfig, &["--namespace", namespace], logs.path());
        assert!(
            controller.wait_ready(Duration::from_secs(60)).await,
            "controller ready: {}",
            controller.log()
        );
        Self {
            context: super::context_of(&kubeconfig),
            kubeconfig,
            trust_domain: trust_domain.to_string(),
            mesh: Mesh::new(client, ns, icc),
            controller,
            _logs: logs,
        }
    }
}

impl Deref for Cluster {
    type Target = Mesh;
    fn deref(&self) -> &Mesh {
        &self.mesh
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Mesh {
        &mut self.mesh
    }
}

/// Two clusters, each in its own control plane, in namespaces of the same name; the scope
/// lock keeps controllers that watch every namespace away meanwhile.
pub struct TwoClusters {
    pub a: Cluster,
    pub b: Cluster,
    pub lock: ScopeLock,
}

impl TwoClusters {
    /// Two clusters with a namespace `<prefix>-<unique>` each and their controllers; the
    /// IstioCACerts of each will be `icc`, in trust domains a.example and b.example.
    pub async fn start(prefix: &str, icc: &str) -> Self {
        let lock = ScopeLock::shared().await;
        let namespace = format!("{prefix}-{}", super::unique_suffix());
        let a = Cluster::start(super::kubeconfig(), &namespace, icc, "a.example").await;
        let b = Cluster::start(super::kubeconfig_b(), &namespace, icc, "b.example").await;
        Self { a, b, lock }
    }

    /// [`Self::start`], with every wait in either cluster bounded by `timeout`: the tests
    /// that drive both clusters through a rotation or an outage set it once here.
    pub async fn start_waiting(prefix: &str, icc: &str, timeout: Duration) -> Self {
        let mut clusters = Self::start(prefix, icc).await;
        (clusters.a.timeout, clusters.b.timeout) = (timeout, timeout);
        clusters
    }
}

/// The KUBECONFIG of both clusters (their files colon-separated, as a user would set it).
pub fn kubeconfig_of(a: &Cluster, b: &Cluster) -> std::ffi::OsString {
    std::env::join_paths([&a.kubeconfig, &b.kubeconfig]).expect("KUBECONFIG")
}

// === what istiod and the workloads make of cacerts ===

/// A workload certificate for `spiffe_id` as istiod would sign it from `cacerts` `data`,
/// followed by cert-chain.pem.
pub fn workload(data: &BTreeMap<String, Vec<u8>>, spiffe_id: &str) -> String {
    workload_certificate(
        &data["ca-cert.pem"],
        &data["ca-key.pem"],
        &data["cert-chain.pem"],
        spiffe_id,
    )
}

// === every version of cacerts ===

/// One version of `cacerts`: resourceVersion, when the watch saw it, its data.
pub type Version = (String, Instant, BTreeMap<String, Vec<u8>>);

/// Every version of `cacerts` the API server held from the start of the recording, as a
/// watch saw them (so none is missed), with when. The watch ends with the last clone.
#[derive(Clone)]
pub struct CacertsHistory {
    versions: Arc<Mutex<Vec<Version>>>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl CacertsHistory {
    pub fn record(api: Api<Secret>) -> Self {
        let versions: Arc<Mutex<Vec<Version>>> = Arc::default();
        let seen = versions.clone();
        let task = tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=cacerts");
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(event) = stream.next().await {
                let secret = match event {
                    Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => s,
                    _ => continue,
                };
                let version = secret.resource_version().unwrap_or_default();
                let mut versions = seen.lock().unwrap();
                if versions.last().is_none_or(|(v, _, _)| *v != version) {
                    versions.push((version, Instant::now(), data(&secret)));
                }
            }
        });
        Self {
            versions,
            task: Arc::new(task),
        }
    }

    /// Ends the watch; what was seen stays.
    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn versions(&self) -> Vec<Version> {
        self.versions.lock().unwrap().clone()
    }

    /// Writes seen since the first version (the first is the state when recording began).
    pub fn writes(&self) -> usize {
        self.versions.lock().unwrap().len().saturating_sub(1)
    }

    /// root-cert.pem of every version.
    pub fn roots(&self) -> Vec<Vec<u8>> {
        self.versions
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, d)| d.get("root-cert.pem").cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for CacertsHistory {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}
