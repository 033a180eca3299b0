//! A whole mesh's trust in one namespace of one control plane, healthy unless a test breaks
//! it: the controller (leader-elected, its Lease in that namespace), a MeshCAIssuer with its own
//! root, cert-manager's Certificate for istiod's intermediate (issued through the cert-manager
//! stand-in), an IstioCACerts that writes `cacerts` and publishes its root, the approver's
//! permission (cert-manager's ServiceAccount in that namespace, granted by issuer name as the
//! chart's `issuerNames` does), istiod's Deployment and mesh config rendered from Istio's own
//! chart, and the `istio-ca-root-cert` ConfigMap istiod would write.
//!
//! The namespace stands in for `istio-system`, `cert-manager` and the controller's namespace at
//! once, so `meshca check --namespace N --controller-namespace N --cert-manager-namespace N`
//! looks at this mesh only, whatever other tests run beside it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, RootRotation, RotationMode};

use super::cert_manager::{self as cm, IntermediateRequest};
use super::meshca::{self, MeshcaRun};
use super::objects::{self, ready_at_generation};
use super::{ControllerProcess, TEST_MANAGER, TestNamespace, eventually, issuer, istio_chart};

pub const TIMEOUT: Duration = Duration::from_secs(40);
/// cert-manager's Secret for istiod's intermediate, and its Certificate.
pub use super::mesh::SOURCE;
pub const ISSUER: &str = "mesh";

/// Cluster-scoped objects a test made (no garbage collector here): deleted when dropped.
pub struct ClusterScoped {
    kubeconfig: PathBuf,
    roles: Vec<String>,
}

impl Drop for ClusterScoped {
    fn drop(&mut self) {
        let (kubeconfig, roles) = (self.kubeconfig.clone(), std::mem::take(&mut self.roles));
        super::clean_up_from_drop(async move {
            let client = super::client_for_kubeconfig(&kubeconfig).await;
            for name in roles {
                let _ = Api::<ClusterRoleBinding>::all(client.clone())
                    .delete(&name, &DeleteParams::default())
                    .await;
                let _ = Api::<ClusterRole>::all(client.clone())
                    .delete(&name, &DeleteParams::default())
                    .await;
            }
        });
    }
}

/// One cluster's mesh.
pub struct MeshCluster {
    pub kubeconfig: PathBuf,
    pub context: String,
    pub client: Client,
    pub ns: TestNamespace,
    pub trust_domain: String,
    revision: u32,
    _controller: ControllerProcess,
    _logs: tempfile::TempDir,
    cluster_scoped: ClusterScoped,
}

impl MeshCluster {
    /// A healthy mesh in namespace `namespace` of the control plane behind `kubeconfig`, with
    /// istiod rendered from Istio's chart with `istiod_values` (its trust domain is set here).
    pub async fn healthy(kubeconfig: PathBuf, namespace: &str, trust_domain: &str, istiod_values: &[&str]) -> Self {
        let mut mesh = Self::bare(kubeconfig, namespace, trust_domain).await;
        mesh.approver_may_approve(&[&mesh.signer_name()]).await;
        mesh.create_issuer(ISSUER).await;
        mesh.issue(ISSUER).await;
        mesh.create_istio_cacerts(None).await;
        mesh.wait_synced().await;
        mesh.install_istiod(istiod_values).await;
        mesh.istiod_writes_root_cert().await;
        mesh
    }

    /// The namespace, CRDs and a running controller; nothing else.
    pub async fn bare(kubeconfig: PathBuf, namespace: &str, trust_domain: &str) -> Self {
        let client = super::client_for_kubeconfig(&kubeconfig).await;
        super::install_crds(&client).await;
        let ns = TestNamespace::create_named(&client, namespace, &kubeconfig).await;
        let logs = tempfile::tempdir().expect("log dir");
        let mut controller = ControllerProcess::start_with_kubeconfig(
            &kubeconfig,
            &[
                "--namespace",
                namespace,
                "--leader-elect=true",
                "--leader-election-namespace",
                namespace,
            ],
            logs.path(),
        );
        assert!(
            controller.wait_ready(Duration::from_secs(60)).await,
            "controller ready: {}",
            controller.log()
        );
        let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
        eventually(TIMEOUT, || async {
            let lease = leases.get_opt("mesh-ca-issuer").await.ok()??;
            lease.spec?.holder_identity.filter(|h| !h.is_empty())
        })
        .await
        .expect("the controller holds its Lease");
        Self {
            context: super::context_of(&kubeconfig),
            cluster_scoped: ClusterScoped {
                kubeconfig: kubeconfig.clone(),
                roles: Vec::new(),
            },
            kubeconfig,
            client,
            ns,
            trust_domain: trust_domain.to_string(),
            revision: 0,
            _controller: controller,
            _logs: logs,
        }
    }

    /// cert-manager's signer name for requests here to the MeshCAIssuer.
    pub fn signer_name(&self) -> String {
        format!("meshcaissuers.meshca.io/{}.{ISSUER}", self.ns.name)
    }

    /// Lets cert-manager's ServiceAccount (`<namespace>/cert-manager`) approve `signers`, as the
    /// chart's approver ClusterRole does.
    pub async fn approver_may_approve(&mut self, signers: &[&str]) {
        let name = format!("meshca-test-approver-{}", self.ns.name);
        let role: ClusterRole = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["cert-manager.io"], "resources": ["signers"], "verbs": ["approve"], "resourceNames": signers}],
        }))
        .expect("ClusterRole");
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "cert-manager", "namespace": self.ns.name}],
        }))
        .expect("ClusterRoleBinding");
        self.grant(role, binding).await;
        for signer in signers {
            self.wait_approver_may(signer, true).await;
        }
    }

    /// Waits until the API server's RBAC (its caches lag a write a little) answers `allowed`
    /// for cert-manager's ServiceAccount approving `signer`.
    pub async fn wait_approver_may(&self, signer: &str, allowed: bool) {
        use k8s_openapi::api::authorization::v1::SubjectAccessReview;
        let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({
            "spec": {
                "user": format!("system:serviceaccount:{}:cert-manager", self.ns.name),
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", self.ns.name), "system:authenticated"],
                "resourceAttributes": {"group": "cert-manager.io", "resource": "signers", "verb": "approve", "name": signer, "version": "*"},
            }
        }))
        .expect("SubjectAccessReview");
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        eventually(TIMEOUT, || async {
            let answer = api.create(&PostParams::default(), &review).await.ok()?;
            (answer.status?.allowed == allowed).then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("RBAC never answered {allowed} for approving {signer}"));
    }

    /// Applies a ClusterRole and its binding, deleted when the test ends.
    pub async fn grant(&mut self, role: ClusterRole, binding: ClusterRoleBinding) {
        let params = PatchParams::apply(TEST_MANAGER).force();
        let name = role.name_any();
        Api::<ClusterRole>::all(self.client.clone())
            .patch(&name, &params, &Patch::Apply(&role))
            .await
            .expect("ClusterRole");
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .patch(&binding.name_any(), &params, &Patch::Apply(&binding))
            .await
            .expect("ClusterRoleBinding");
        if !self.cluster_scoped.roles.contains(&name) {
            self.cluster_scoped.roles.push(name);
        }
    }

    /// Takes back every approve permission granted above.
    pub async fn revoke_approver(&mut self) {
        let name = format!("meshca-test-approver-{}", self.ns.name);
        Api::<ClusterRoleBinding>::all(self.client.clone())
            .delete(&name, &DeleteParams::default())
            .await
            .expect("delete binding");
        self.wait_approver_may(&self.signer_name(), false).await;
    }

    /// A MeshCAIssuer `name` with its own bootstrapped root; waits until Ready.
    pub async fn create_issuer(&self, name: &str) {
        issuer::create_ready_with_own_root(&self.ns.api(), name, TIMEOUT).await;
    }

    /// cert-manager (stand-in) issues istiod's intermediate from `issuer` and records the
    /// Certificate, as its Certificate controller does.
    pub async fn issue(&mut self, issuer: &str) {
        self.revision += 1;
        let req = IntermediateRequest {
            certificate: Some(SOURCE.to_string()),
            ..IntermediateRequest::istiod(&format!("{SOURCE}-{}", self.revision), issuer)
        };
        let key = cm::request_and_approve(&self.client, &self.ns.name, &req).await;
        let cr: CertificateRequest =
            cm::wait_for_reason(&self.client, &self.ns.name, &req.name, &["Issued"], TIMEOUT).await;
        cm::write_certificate_secret(&self.client, &self.ns.name, SOURCE, &cr, &key).await;
        cm::record_certificate(&self.client, &self.ns.name, SOURCE, SOURCE, &cr, None).await;
    }

    /// The IstioCACerts `istiod`, publishing its root; with a root rotation when given.
    pub async fn create_istio_cacerts(&self, rotation: Option<RootRotation>) {
        let spec = super::mesh::publishing(&self.trust_domain, rotation);
        self.ns
            .api::<IstioCACerts>()
            .create(&PostParams::default(), &IstioCACerts::new("istiod", spec))
            .await
            .expect("create IstioCACerts");
    }

    /// A rotation that stays in each phase until advanced by hand, approving the root of
    /// issuer `to` (`spec.rootRotation.expectedNewRoot`) when it has one.
    pub async fn manual_rotation_to(&self, to: &str) -> RootRotation {
        RootRotation {
            multi_root_mesh_enabled: true,
            mode: RotationMode::Manual,
            expected_new_root: super::root_fingerprint(&self.ns.api(), to).await,
            ..Default::default()
        }
    }

    pub async fn istio_cacerts(&self) -> IstioCACerts {
        self.ns.api::<IstioCACerts>().get("istiod").await.expect("IstioCACerts")
    }

    /// Waits until the IstioCACerts is Ready for its current generation and `check` holds.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&IstioCACerts) -> bool) -> IstioCACerts {
        let what = format!("Ready and {what}");
        objects::wait_icc(&self.ns.api(), "istiod", TIMEOUT, &self.context, &what, |icc| {
            ready_at_generation(icc, None) && check(icc)
        })
        .await
    }

    pub async fn wait_synced(&self) -> IstioCACerts {
        self.wait_for("Ready", |_| true).await
    }

    /// istiod's Deployment and mesh config from Istio's chart, with this mesh's trust domain.
    pub async fn install_istiod(&self, values: &[&str]) {
        let trust_domain = format!("meshConfig.trustDomain={}", self.trust_domain);
        let mut all = vec![trust_domain.as_str()];
        all.extend_from_slice(values);
        let (deployment, mesh) = istio_chart::istiod(&self.ns.name, &all);
        istio_chart::apply(&self.client, &[&deployment, &mesh]).await;
    }

    /// STAND-IN for istiod's own write: istiod puts the roots it distributes (`root-cert.pem`
    /// of the CA it loaded) into the ConfigMap `istio-ca-root-cert` of every namespace. istiod
    /// does not run in this harness yet (the real-istiod tests are being added beside this), so
    /// the test writes exactly what an istiod that loaded `cacerts` would: its `root-cert.pem`,
    /// under the same name, key and label.
    pub async fn istiod_writes_root_cert(&self) {
        let cacerts = self.ns.api::<Secret>().get("cacerts").await.expect("cacerts");
        let root = cacerts
            .data
            .and_then(|d| d.get("root-cert.pem").cloned())
            .expect("root-cert.pem");
        self.istiod_writes_root_cert_pem(&String::from_utf8_lossy(&root.0))
            .await;
    }

    /// STAND-IN for istiod's write (see above) with any roots, e.g. istiod's own self-signed
    /// one when it started before `cacerts` existed.
    pub async fn istiod_writes_root_cert_pem(&self, pem: &str) {
        let cm = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio-ca-root-cert", "namespace": self.ns.name, "labels": {"istio.io/config": "true"}},
            "data": {"root-cert.pem": pem},
        });
        self.ns
            .api::<ConfigMap>()
            .patch(
                "istio-ca-root-cert",
                &PatchParams::apply("istiod-stand-in").force(),
                &Patch::Apply(&cm),
            )
            .await
            .expect("istio-ca-root-cert");
    }

    /// `meshca check` of this cluster alone, with `extra` arguments.
    pub fn check(&self, extra: &[&str]) -> MeshcaRun {
        meshca::run(&[&self.kubeconfig], &check_args(&[self], extra), &[])
    }
}

/// `check --context ... --namespace N --controller-namespace N --cert-manager-namespace N`.
pub fn check_args<'a>(clusters: &[&'a MeshCluster], extra: &[&'a str]) -> Vec<&'a str> {
    let ns = clusters[0].ns.name.as_str();
    let mut args = vec!["check"];
    for c in clusters {
        args.extend(["--context", c.context.as_str()]);
    }
    args.extend([
        "--namespace",
        ns,
        "--controller-namespace",
        ns,
        "--cert-manager-namespace",
        ns,
    ]);
    args.extend_from_slice(extra);
    args
}
