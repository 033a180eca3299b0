//! The Helm chart installed for a test, written once: helm itself, an install into a fresh
//! release namespace with its cluster resource (cert-manager) and Istio namespaces, what its
//! Deployment would run and a token of its ServiceAccount (there is no kubelet here to run the
//! pod), and the flow every installed chart is put through: a root and a ClusterMeshCAIssuer
//! in the cluster resource namespace, istiod's intermediate in the Istio namespace.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use mesh_ca_issuer::api::issuer::{ClusterMeshCAIssuer, IssuerSpec, LocalCA, RootBootstrap};

use super::cert_manager::{self as cm, IntermediateRequest};
use super::{DeleteClusterIssuers, TestNamespace, repo_root};

/// helm, from hack/test (`MESHCA_HELM`) or its cache.
pub use super::helm;

/// A tool hack/test installs: from `env`, else from the tools cache.
pub fn tool(env: &str, cached: &str) -> PathBuf {
    super::cached_tool(
        env,
        cached,
        &format!("{cached} is not installed: run hack/test (or set {env})"),
    )
}

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/mesh-ca-issuer")
}

/// stdout and stderr of a finished command.
pub use super::said as text;

/// `helm template` of our chart, as release `mesh-ca-issuer` in namespace `mesh-ca-issuer`,
/// with `options` (`--kube-version`, `--show-only`, ...) and `--set` each of `set`, run from
/// the repository root: what every test that reads the rendered chart asks helm.
pub fn template(options: &[&str], set: &[&str]) -> std::process::Output {
    let chart = chart_dir();
    let mut command = Command::new(helm());
    command
        .args(["template", "mesh-ca-issuer"])
        .arg(&chart)
        .args(["--namespace", "mesh-ca-issuer"])
        .args(options)
        .current_dir(repo_root());
    for s in set {
        command.args(["--set", s]);
    }
    command.output().expect("run helm")
}

/// The chart installed (CRDs skipped: the harness installs them) into `release_ns`, serving
/// the cluster resource namespace `resources` and the Istio namespace `istio`; uninstalled on
/// drop, before its namespaces go.
pub struct InstalledChart {
    pub release: String,
    /// What its Deployment would run.
    pub pod: PodSpec,
    /// A token of its ServiceAccount (TokenRequest API).
    pub token: String,
    pub release_ns: TestNamespace,
    pub resources: TestNamespace,
    pub istio: TestNamespace,
}

impl InstalledChart {
    /// Namespaces `<prefix>-release`, `<prefix>-cert-manager` and `<prefix>-istio`, and the
    /// chart installed there with `set` on top.
    pub async fn install(client: &Client, prefix: &str, set: &[&str]) -> Self {
        let release_ns = TestNamespace::create(client, &format!("{prefix}-release")).await;
        let resources = TestNamespace::create(client, &format!("{prefix}-cert-manager")).await;
        let istio = TestNamespace::create(client, &format!("{prefix}-istio")).await;
        let release = format!("meshca-{}", super::unique_suffix());
        let mut args: Vec<String> = vec![
            "install".into(),
            release.clone(),
            chart_dir().display().to_string(),
            "--kubeconfig".into(),
            super::kubeconfig().display().to_string(),
            "--namespace".into(),
            release_ns.name.clone(),
            "--skip-crds".into(),
            "--wait=false".into(),
        ];
        let namespaces = [
            format!("clusterResourceNamespace={}", resources.name),
            format!("istioNamespaces={{{}}}", istio.name),
            format!("certManager.approver.namespace={}", resources.name),
        ];
        for s in namespaces.iter().map(String::as_str).chain(set.iter().copied()) {
            args.extend(["--set".to_string(), s.to_string()]);
        }
        let out = Command::new(helm())
            .args(&args)
            .current_dir(repo_root())
            .output()
            .expect("helm");
        assert!(out.status.success(), "helm install: {}", text(&out));
        let deployment = release_ns
            .api::<Deployment>()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .remove(0);
        let pod = deployment.spec.template.spec.expect("a pod spec");
        let service_account = pod.service_account_name.clone().expect("a ServiceAccount");
        let token = super::service_account_token(client, &release_ns.name, &service_account).await;
        Self {
            release,
            pod,
            token,
            release_ns,
            resources,
            istio,
        }
    }

    pub fn service_account(&self) -> &str {
        self.pod.service_account_name.as_deref().unwrap_or_default()
    }

    /// The controller's container.
    pub fn container(&self) -> &Container {
        &self.pod.containers[0]
    }

    /// A root in the cluster resource namespace (created by the operator: the chart does not
    /// let the controller create Secrets there) and a ClusterMeshCAIssuer `<prefix>-<unique>`
    /// signing with it; deleted on drop of what is returned.
    pub async fn cluster_issuer(&self, client: &Client, prefix: &str) -> (String, DeleteClusterIssuers) {
        let (root, root_key) = mesh_ca_issuer::pki::sign::self_signed_root(
            &RootBootstrap::default(),
            jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
        )
        .unwrap();
        let root_secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "mesh-root-ca"}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": root.to_pem(), "tls.key": root_key.to_pem()}
        }))
        .unwrap();
        self.resources
            .api::<Secret>()
            .create(&PostParams::default(), &root_secret)
            .await
            .unwrap();
        let name = format!("{prefix}-{}", super::unique_suffix());
        let spec = IssuerSpec {
            local_ca: Some(LocalCA {
                secret_name: "mesh-root-ca".into(),
                bootstrap: None,
            }),
            ..Default::default()
        };
        Api::<ClusterMeshCAIssuer>::all(client.clone())
            .create(&PostParams::default(), &ClusterMeshCAIssuer::new(&name, spec))
            .await
            .unwrap();
        (name.clone(), DeleteClusterIssuers(vec![name]))
    }

    /// istiod's intermediate from cluster issuer `issuer`, as cert-manager writes it into
    /// Secret `istiod-intermediate` of the Istio namespace.
    pub async fn istiod_intermediate(&self, client: &Client, issuer: &str) {
        let req = IntermediateRequest {
            issuer_kind: "ClusterMeshCAIssuer".into(),
            ..IntermediateRequest::istiod("istiod-intermediate-1", issuer)
        };
        let namespace = &self.istio.name;
        let key = cm::request_and_approve(client, namespace, &req).await;
        let cr = cm::wait_for_reason(client, namespace, &req.name, &["Issued"], Duration::from_secs(60)).await;
        cm::write_certificate_secret(client, namespace, "istiod-intermediate", &cr, &key).await;
    }
}

impl Drop for InstalledChart {
    fn drop(&mut self) {
        let _ = Command::new(helm())
            .args([
                "uninstall",
                &self.release,
                "--namespace",
                &self.release_ns.name,
                "--kubeconfig",
            ])
            .arg(super::kubeconfig())
            .output();
    }
}
