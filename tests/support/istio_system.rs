//! One cluster's `istio-system` as a platform team sets it up with mesh-ca-issuer, on a real
//! control plane: the namespace, our controller watching it, MeshCAIssuers with local roots,
//! istiod's intermediate issued through the cert-manager stand-in ([`cert_manager`](super::cert_manager);
//! real cert-manager is another piece of work), and the `IstioCACerts` that writes `cacerts`.
//! Then a real [`Istiod`](super::istiod::Istiod) on top, and workload namespaces it sees.
//!
//! Only one `istio-system` exists per control plane, so a test holds it exclusively (a file lock
//! next to the control plane's kubeconfig, across threads and test processes) and removes it,
//! with everything in it, when done. Fields drop in order: istiod first, then our controller,
//! then the namespace, then the lock.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, RootRotation, RotationPhase};
use mesh_ca_issuer::pki::Certificate;

use super::cert_manager::{self as cm, IntermediateRequest};
use super::istiod::{DISCOVERY_LABEL, ISTIO_NAMESPACE, Istiod, IstiodConfig};
use super::objects::{self, data, phase_of, ready_at_generation};
use super::{ControllerProcess, TestNamespace, issuer};

pub const TIMEOUT: Duration = Duration::from_secs(60);
/// The Secret the cert-manager (stand-in) Certificate for istiod's intermediate writes.
pub use super::mesh::SOURCE;
/// The IstioCACerts (`meshca`'s default name).
pub const NAME: &str = "istiod";

/// Exclusive use of a control plane's `istio-system` (a file lock).
pub struct IstioSystemLock(std::fs::File);

impl IstioSystemLock {
    pub async fn acquire(kubeconfig: &Path) -> Self {
        let path = kubeconfig.with_file_name("tests-istio-system.lock");
        tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("lock file {}: {e}", path.display()));
            file.lock().expect("file lock");
            Self(file)
        })
        .await
        .expect("lock task")
    }
}

/// One cluster's istio-system with mesh-ca-issuer and (once started) istiod.
pub struct IstioSystem {
    /// istiod, once [`IstioSystem::start_istiod`] ran.
    pub istiod: Option<Istiod>,
    controller: ControllerProcess,
    /// Workload namespaces, removed before istio-system.
    workloads: Vec<TestNamespace>,
    pub ns: TestNamespace,
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The kubeconfig context naming this cluster (for `meshca`).
    pub context: String,
    /// The cert-manager stand-in's revision of istiod's intermediate.
    revision: u32,
    logs: tempfile::TempDir,
    _lock: IstioSystemLock,
}

impl IstioSystem {
    /// Takes the control plane behind `kubeconfig`'s istio-system (removing one left over by a
    /// killed run), installs our CRDs and starts our controller for it.
    pub async fn create(kubeconfig: &Path) -> Self {
        let lock = IstioSystemLock::acquire(kubeconfig).await;
        let client = super::client_for_kubeconfig(kubeconfig).await;
        super::install_crds(&client).await;
        if Api::<Namespace>::all(client.clone())
            .get_opt(ISTIO_NAMESPACE)
            .await
            .expect("read namespaces")
            .is_some()
        {
            super::remove_namespace(&client, ISTIO_NAMESPACE)
                .await
                .expect("remove a leftover istio-system");
        }
        let ns = TestNamespace::create_named(&client, ISTIO_NAMESPACE, kubeconfig).await;
        let logs = tempfile::tempdir().expect("log directory");
        // The issuers here bootstrap their roots in istio-system itself, which the controller
        // refuses unless allowed (security.md, guard 12).
        let flags = [
            "--namespace",
            ISTIO_NAMESPACE,
            "--allow-root-bootstrap-in-istio-namespaces=true",
        ];
        let mut controller = ControllerProcess::start_with_kubeconfig(kubeconfig, &flags, logs.path());
        assert!(
            controller.wait_ready(TIMEOUT).await,
            "controller ready: {}",
            controller.log()
        );
        Self {
            istiod: None,
            controller,
            workloads: Vec::new(),
            ns,
            client,
            kubeconfig: kubeconfig.to_path_buf(),
            context: super::context_of(kubeconfig),
            revision: 0,
            logs,
            _lock: lock,
        }
    }

    /// A MeshCAIssuer `name` with its own local root (bootstrapped into Secret `<name>-root`,
    /// unless that Secret is there already), Ready.
    pub async fn issuer(&self, name: &str, root_duration: &str) {
        let spec = issuer::bootstrapped_for(&format!("{name}-root"), root_duration, issuer::a_year_at_most());
        issuer::create_ready(&self.ns.api(), name, spec, TIMEOUT).await;
    }

    /// The root of issuer `name`.
    pub async fn root_of(&self, issuer: &str) -> Certificate {
        objects::root_of(&self.ns.api(), issuer).await
    }

    /// Copies issuer `name`'s root Secret from `other`, so both clusters share that root.
    pub async fn share_root(&self, other: &IstioSystem, issuer: &str) {
        // Its labels too: in an Istio namespace a Secret serves as a CA only when labelled.
        let name = format!("{issuer}-root");
        objects::copy_secret(&other.ns.api(), &self.ns.api(), ISTIO_NAMESPACE, &name, true).await;
    }

    /// cert-manager (stand-in) issues (or renews) istiod's intermediate from `issuer` into
    /// [`SOURCE`]; returns the intermediate.
    pub async fn issue_intermediate(&mut self, issuer: &str) -> Certificate {
        self.revision += 1;
        let req = IntermediateRequest {
            certificate: Some(SOURCE.to_string()),
            ..IntermediateRequest::istiod(&format!("{SOURCE}-{}", self.revision), issuer)
        };
        let key = cm::request_and_approve(&self.client, ISTIO_NAMESPACE, &req).await;
        let cr = cm::wait_for_reason(&self.client, ISTIO_NAMESPACE, &req.name, &["Issued"], TIMEOUT).await;
        cm::write_certificate_secret(&self.client, ISTIO_NAMESPACE, SOURCE, &cr, &key).await;
        let chain = cr.status.and_then(|s| s.certificate).expect("issued certificate");
        Certificate::parse_pem_bundle(&chain, "intermediate")
            .expect("intermediate PEM")
            .remove(0)
    }

    /// The IstioCACerts writing `cacerts` from [`SOURCE`], publishing this cluster's root, with
    /// `trust_domain` and an optional root rotation; waits until it is Synced.
    pub async fn istio_cacerts(&self, trust_domain: &str, rotation: Option<RootRotation>) {
        let mut spec = super::mesh::publishing(trust_domain, rotation);
        // A rotation approves the `new` issuer's root.
        super::approve_new_root(&self.ns.api(), spec.root_rotation.as_mut()).await;
        self.ns
            .api::<IstioCACerts>()
            .create(&PostParams::default(), &IstioCACerts::new(NAME, spec))
            .await
            .expect("create IstioCACerts");
        self.wait_icc("Ready=Synced", |icc| ready_at_generation(icc, Some("Synced")))
            .await;
    }

    pub async fn icc(&self) -> IstioCACerts {
        self.ns.api::<IstioCACerts>().get(NAME).await.expect("IstioCACerts")
    }

    /// Waits until `check` holds for the IstioCACerts; returns it.
    pub async fn wait_icc(&self, what: &str, check: impl Fn(&IstioCACerts) -> bool) -> IstioCACerts {
        objects::wait_icc(&self.ns.api(), NAME, TIMEOUT, &self.context, what, check).await
    }

    pub async fn wait_phase(&self, phase: RotationPhase) -> IstioCACerts {
        self.wait_icc(phase.as_str(), |icc| phase_of(icc) == Some(phase)).await
    }

    /// The `cacerts` Secret's data and resourceVersion.
    pub async fn cacerts(&self) -> (BTreeMap<String, Vec<u8>>, String) {
        let secret: Secret = self.ns.api().get("cacerts").await.expect("cacerts");
        (data(&secret), secret.resource_version().unwrap_or_default())
    }

    /// Starts istiod on this istio-system's `cacerts`.
    pub async fn start_istiod(&mut self, config: IstiodConfig) -> &mut Istiod {
        // istiod's own namespace and the workload namespaces are the ones it sees (its
        // discovery selectors); a second istiod takes them over from the first.
        self.label_for_istiod(ISTIO_NAMESPACE, &config.discovery).await;
        for ns in &self.workloads {
            self.label_for_istiod(&ns.name, &config.discovery).await;
        }
        let istiod = Istiod::start(&self.client, &self.kubeconfig, config).await;
        self.istiod.insert(istiod)
    }

    pub fn istiod(&self) -> &Istiod {
        self.istiod.as_ref().expect("istiod started")
    }

    pub fn istiod_mut(&mut self) -> &mut Istiod {
        self.istiod.as_mut().expect("istiod started")
    }

    /// A workload namespace `<prefix>-<suffix>` that istiod sees; returns its name.
    pub async fn workload_namespace(&mut self, prefix: &str) -> String {
        let ns = TestNamespace::create_named(
            &self.client,
            &format!("{prefix}-{}", super::unique_suffix()),
            &self.kubeconfig,
        )
        .await;
        let discovery = self.istiod().config.discovery.clone();
        self.label_for_istiod(&ns.name, &discovery).await;
        let name = ns.name.clone();
        self.workloads.push(ns);
        name
    }

    async fn label_for_istiod(&self, namespace: &str, discovery: &str) {
        let patch = serde_json::json!({"metadata": {"labels": {DISCOVERY_LABEL: discovery}}});
        Api::<Namespace>::all(self.client.clone())
            .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("labelling namespace {namespace}: {e}"));
    }

    pub fn controller_log(&self) -> String {
        self.controller.log()
    }
}
