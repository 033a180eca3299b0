//! Real cert-manager for the tests: its controllers and its admission webhook (v1.21.2, built
//! from cert-manager's Go module by `hack/cert-manager`, see `hack/go/cert-manager/main.go`) as
//! processes against the test control plane, and its own CRDs from the same module.
//!
//! Each [`CertManager`] watches one test namespace only (`--namespace`), so its approver never
//! approves another test's requests, and registers its webhook for that namespace only (a
//! `namespaceSelector` on `kubernetes.io/metadata.name`). The webhook runs as a process too: the
//! API server calls it by URL (`clientConfig.url`, as cert-manager's chart does with
//! `webhook.url.host`), so cert-manager's validation, its defaulting of the requester identity,
//! and its check that whoever approves or denies a request may `approve` the issuer's `signers`
//! all run as in a cluster.
//!
//! Readiness is observed, never slept on: the controller's `/readyz` answers 200 once every
//! informer cache has synced; the webhook is ready once the API server rejects, through it, a
//! dry-run Certificate that only cert-manager's validation refuses.
//!
//! Logs are kept under `target/test-logs/cert-manager/<namespace>/` and their tails printed when
//! a test panics while the processes run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

use super::{TEST_MANAGER, TestNamespace, eventually, free_port, http_get, kubeconfig, repo_root};

/// The cert-manager release built and run here (hack/cert-manager pins the same).
pub const VERSION: &str = "v1.21.2";

/// Where the built binary and cert-manager's module source are.
pub struct Installation {
    /// `meshca-cert-manager` (subcommands `controller` and `webhook`).
    pub bin: PathBuf,
    /// The module's source in the Go module cache (`deploy/crds/`, `deploy/charts/cert-manager/`).
    pub source: PathBuf,
}

/// From `MESHCA_CERT_MANAGER_BIN` and `MESHCA_CERT_MANAGER_SOURCE` (hack/test exports them), or
/// else from `hack/cert-manager env`, which builds the binary on first use.
pub fn installation() -> &'static Installation {
    static INSTALLATION: std::sync::OnceLock<Installation> = std::sync::OnceLock::new();
    INSTALLATION.get_or_init(|| {
        let from_env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty()).map(PathBuf::from);
        if let (Some(bin), Some(source)) = (
            from_env("MESHCA_CERT_MANAGER_BIN"),
            from_env("MESHCA_CERT_MANAGER_SOURCE"),
        ) {
            return Installation { bin, source };
        }
        let output = Command::new(repo_root().join("hack/cert-manager"))
            .arg("env")
            .stderr(Stdio::inherit())
            .output()
            .expect("could not run hack/cert-manager env");
        assert!(
            output.status.success(),
            "hack/cert-manager env failed; run it by hand to see why"
        );
        let exports = String::from_utf8_lossy(&output.stdout);
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| PathBuf::from(v.trim_matches('\'')))
                .unwrap_or_else(|| panic!("hack/cert-manager env printed no {name}: {exports}"))
        };
        Installation {
            bin: value("MESHCA_CERT_MANAGER_BIN"),
            source: value("MESHCA_CERT_MANAGER_SOURCE"),
        }
    })
}

/// cert-manager's own CRDs (`deploy/crds/` of its module; their specs equal the Helm chart's
/// CRD templates).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let dir = installation().source.join("deploy/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading cert-manager's CRDs in {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no CRDs in {}", dir.display());
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
        })
        .collect()
}

/// How to run cert-manager for one test.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// A bearer token the controller authenticates with (a ServiceAccount's); `None`: admin.
    pub token: Option<String>,
    /// Extra controller flags, e.g. `--controllers=*,-certificaterequests-approver` or
    /// `--certificate-request-minimum-backoff-duration=10s`.
    pub controller_args: Vec<String>,
}

/// cert-manager's controllers and webhook for one test namespace; stopped on drop.
pub struct CertManager {
    pub namespace: String,
    client: Client,
    controller: Child,
    webhook: Child,
    webhook_configuration: String,
    pub log_dir: PathBuf,
}

impl CertManager {
    /// Runs cert-manager for `ns` as admin, with every controller this build carries (the
    /// Certificate controllers and the approver) and its webhook.
    pub async fn start(ns: &TestNamespace) -> Self {
        Self::start_with(ns, Options::default()).await
    }

    pub async fn start_with(ns: &TestNamespace, options: Options) -> Self {
        let log_dir = repo_root().join("target/test-logs/cert-manager").join(&ns.name);
        std::fs::create_dir_all(&log_dir).expect("log directory");
        let webhook_port = free_port();
        let webhook_configuration = format!("meshca-test-cert-manager-{}", ns.name);
        let ca_pem = write_webhook_tls(&log_dir);
        let webhook = spawn(
            Command::new(&installation().bin)
                .arg("webhook")
                .arg("--kubeconfig")
                .arg(kubeconfig())
                .args(["--secure-port", &webhook_port.to_string()])
                .args(["--healthz-port", &free_port().to_string()])
                .arg("--tls-cert-file")
                .arg(log_dir.join("webhook-tls.crt"))
                .arg("--tls-private-key-file")
                .arg(log_dir.join("webhook-tls.key"))
                // No metrics listener: nothing reads it, and it would bind all interfaces.
                .args(["--metrics-listen-address", "0"]),
            &log_dir.join("webhook.log"),
        );
        let readyz_port = free_port();
        let controller_kubeconfig = match &options.token {
            Some(token) => super::kubeconfig_with_token(&log_dir, token),
            None => kubeconfig(),
        };
        let controller = spawn(
            Command::new(&installation().bin)
                .arg("controller")
                .arg("--kubeconfig")
                .arg(&controller_kubeconfig)
                .args(["--namespace", &ns.name])
                .args(["--readyz-listen-address", &format!("127.0.0.1:{readyz_port}")])
                .args(&options.controller_args),
            &log_dir.join("controller.log"),
        );
        let mut cert_manager = Self {
            namespace: ns.name.clone(),
            client: ns.client.clone(),
            controller,
            webhook,
            webhook_configuration,
            log_dir,
        };
        cert_manager.register_webhook(webhook_port, &ca_pem).await;
        cert_manager.wait_controller_ready(readyz_port).await;
        cert_manager
    }

    /// Registers the webhook for this namespace (cert-manager's chart's rules, called by URL) and
    /// waits until the API server really calls it.
    async fn register_webhook(&mut self, port: u16, ca_pem: &str) {
        let selector = serde_json::json!({"matchLabels": {"kubernetes.io/metadata.name": self.namespace}});
        let ca_bundle = k8s_openapi::ByteString(ca_pem.as_bytes().to_vec());
        let hook = |path: &str, rules: serde_json::Value| {
            serde_json::json!({
                "name": "webhook.cert-manager.io",
                "namespaceSelector": selector,
                "rules": rules,
                "admissionReviewVersions": ["v1"],
                "matchPolicy": "Equivalent",
                "timeoutSeconds": 10,
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle},
            })
        };
        let validating: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": self.webhook_configuration},
            "webhooks": [hook("/validate", serde_json::json!([{
                "apiGroups": ["cert-manager.io", "acme.cert-manager.io"], "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"], "resources": ["*/*"],
            }]))],
        }))
        .expect("ValidatingWebhookConfiguration");
        let mutating: MutatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.webhook_configuration},
            "webhooks": [hook("/mutate", serde_json::json!([{
                "apiGroups": ["cert-manager.io"], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["certificaterequests"],
            }]))],
        }))
        .expect("MutatingWebhookConfiguration");
        let params = PatchParams::apply(TEST_MANAGER).force();
        Api::<ValidatingWebhookConfiguration>::all(self.client.clone())
            .patch(&self.webhook_configuration, &params, &Patch::Apply(&validating))
            .await
            .expect("register cert-manager's validating webhook");
        Api::<MutatingWebhookConfiguration>::all(self.client.clone())
            .patch(&self.webhook_configuration, &params, &Patch::Apply(&mutating))
            .await
            .expect("register cert-manager's mutating webhook");

        // The API server picks webhook configurations up asynchronously, and the process may
        // still be starting: ready once a Certificate that only cert-manager's validation
        // refuses (a lifetime under its 1h minimum) is refused.
        let certificates = certificates(&self.client, &self.namespace);
        let probe: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
            "metadata": {"name": "webhook-probe"},
            "spec": {"secretName": "webhook-probe", "commonName": "probe", "duration": "5m",
                     "issuerRef": {"name": "probe", "kind": "Probe", "group": "example.com"}},
        }))
        .expect("probe Certificate");
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        let started = tokio::time::Instant::now();
        loop {
            match certificates.create(&dry_run, &probe).await {
                Err(kube::Error::Api(e)) if e.message.contains("certificate duration must be greater than") => return,
                outcome => {
                    if let Ok(Some(status)) = self.webhook.try_wait() {
                        panic!("cert-manager's webhook exited ({status}):\n{}", self.webhook_log());
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "the API server did not call cert-manager's webhook within 60s (last answer to the probe: {outcome:?}):\n{}",
                        self.webhook_log()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_controller_ready(&mut self, port: u16) {
        let started = tokio::time::Instant::now();
        loop {
            if let Ok((200, _)) = http_get(port, "/readyz").await {
                return;
            }
            if let Ok(Some(status)) = self.controller.try_wait() {
                panic!(
                    "cert-manager's controller exited ({status}):\n{}",
                    self.controller_log()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cert-manager's controller did not become ready within 60s:\n{}",
                self.controller_log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the controllers (the webhook stays): nothing cert-manager does changes the
    /// namespace afterwards.
    pub fn stop_controller(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }

    pub fn controller_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("controller.log")).unwrap_or_default()
    }

    pub fn webhook_log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("webhook.log")).unwrap_or_default()
    }

    /// Waits until the controller's log has a line containing every one of `needles`; returns it.
    pub async fn wait_for_controller_log(&self, needles: &[&str], timeout: Duration) -> String {
        eventually(timeout, || async {
            self.controller_log()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_string)
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "no line with {needles:?} in cert-manager's controller log within {timeout:?}:\n{}",
                tail(&self.controller_log(), 40)
            )
        })
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- cert-manager controller log ({}), last lines:\n{}\n--- cert-manager webhook log, last lines:\n{}",
                self.log_dir.display(),
                tail(&self.controller_log(), 40),
                tail(&self.webhook_log(), 20)
            );
        }
        let _ = self.controller.kill();
        let _ = self.controller.wait();
        // The configuration goes before the webhook: an API server calling a webhook that is
        // gone refuses every cert-manager write in the namespace (failurePolicy Fail).
        let name = self.webhook_configuration.clone();
        super::clean_up_from_drop(async move {
            let client = super::admin_client().await;
            let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
                .delete(&name, &DeleteParams::default())
                .await;
            let _ = Api::<MutatingWebhookConfiguration>::all(client)
                .delete(&name, &DeleteParams::default())
                .await;
        });
        let _ = self.webhook.kill();
        let _ = self.webhook.wait();
    }
}

/// cert-manager's Certificates in `namespace`, as dynamic objects: the tests read status fields
/// (conditions, failedIssuanceAttempts, lastFailureTime) that our hand-written subset leaves out.
pub fn certificates(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// The status condition `type_` of a cert-manager object as JSON (`status`, `reason`, ...).
pub fn condition(object: &DynamicObject, type_: &str) -> Option<serde_json::Value> {
    object.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

fn spawn(command: &mut Command, log: &Path) -> Child {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log handle"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("could not start {command:?}: {e}"))
}

/// A serving certificate for 127.0.0.1 and the CA that signed it (the webhook's caBundle);
/// writes `webhook-tls.crt` and `webhook-tls.key`, returns the CA's PEM.
fn write_webhook_tls(dir: &Path) -> String {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cert-manager webhook test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("serving key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("serving params");
    params.subject_alt_names = vec![rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into())];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).expect("serving certificate");
    std::fs::write(dir.join("webhook-tls.crt"), cert.pem()).expect("write webhook-tls.crt");
    std::fs::write(dir.join("webhook-tls.key"), key.serialize_pem()).expect("write webhook-tls.key");
    ca.pem()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The RBAC of cert-manager's controller from cert-manager's own Helm chart (its ClusterRoles
/// and their bindings; no leader election here), for ServiceAccount `cert-manager` in
/// `namespace`, names prefixed with `release`.
pub fn controller_rbac(release: &str, namespace: &str) -> Vec<serde_json::Value> {
    super::helm_template(
        &installation().source.join("deploy/charts/cert-manager"),
        release,
        namespace,
        &["serviceAccount.name=cert-manager"],
        "templates/rbac.yaml",
        |doc| doc["kind"] == "ClusterRole" || doc["kind"] == "ClusterRoleBinding",
    )
}
