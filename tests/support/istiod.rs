//! Real istiod as a process against the local control plane, and workloads that ask it for
//! certificates the way istio-agent does.
//!
//! Both binaries come from `istio.io/istio` (pinned in `hack/go/istio`), built and cached by
//! `hack/lib/istio.sh`; `hack/test` exports their directory as `MESHCA_ISTIO_DIR`:
//! `pilot-discovery` (istiod), `workload-agent` (our istio-agent stand-in built on Istio's own CA
//! client packages), `crd-all.gen.yaml` (Istio's CRDs) and `istiod-rbac.yaml` (the ServiceAccount,
//! ClusterRoles, Roles and bindings of Istio's `istio-discovery` chart, rendered by helm).
//!
//! istiod runs the way Istio runs it outside a cluster: its own working directory holding
//! `./etc/cacerts` (the `cacerts` Secret, projected there by the [`kubelet`](super::kubelet)
//! stand-in) and `./etc/istio/config/mesh` (the mesh config file), a kubeconfig that
//! authenticates as its ServiceAccount `istio-system/istiod` (a TokenRequest token; its rights are
//! the chart's RBAC, not admin), `POD_NAMESPACE=istio-system`, every port on a free loopback port.
//! Readiness is istiod's own `/ready` on its HTTP port.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::Discovery;
use kube::{Client, ResourceExt};
use mesh_ca_issuer::pki::Certificate;

use super::kubelet::ProjectedVolume;

/// istiod's namespace (`POD_NAMESPACE`), as in every Istio install.
pub const ISTIO_NAMESPACE: &str = "istio-system";
/// The ConfigMap istiod writes into every namespace it sees, holding its `root-cert.pem`.
pub const ROOT_CERT_CONFIG_MAP: &str = "istio-ca-root-cert";
/// Label of the namespaces an istiod of these tests sees (its mesh config's
/// `discoverySelectors`): istiod then writes `istio-ca-root-cert` only into its own test's
/// namespaces, never into those of other tests.
pub const DISCOVERY_LABEL: &str = "meshca.io/istiod-test";
/// How long istiod may take to become ready (it lists every watched kind first).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where `hack/lib/istio.sh` put the Istio binaries and manifests.
pub fn istio_dir() -> PathBuf {
    match std::env::var("MESHCA_ISTIO_DIR") {
        Ok(dir) if !dir.is_empty() && Path::new(&dir).join("pilot-discovery").exists() => PathBuf::from(dir),
        _ => panic!(
            "no istiod build: run the tests through hack/test, which builds istiod from istio.io/istio \
             (hack/lib/istio.sh) and exports MESHCA_ISTIO_DIR"
        ),
    }
}

/// Server-side applies every document of a multi-document YAML file (Istio's CRDs, the chart's
/// RBAC) to the control plane behind `client`.
async fn apply_manifests(client: &Client, path: &Path) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
    let params = PatchParams::apply(super::TEST_MANAGER).force();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).expect("YAML document");
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_yaml::from_value(value).expect("a Kubernetes object");
        let types = object.types.clone().expect("apiVersion and kind");
        let gvk = kube::core::GroupVersionKind::try_from(&types).expect("group, version, kind");
        let (resource, caps) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("{}: the API server does not serve {gvk:?}", path.display()));
        let name = object.name_any();
        let api: Api<DynamicObject> = match (caps.scope, object.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), &ns, &resource),
            (kube::discovery::Scope::Namespaced, None) => {
                Api::namespaced_with(client.clone(), ISTIO_NAMESPACE, &resource)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("applying {} {name} from {}: {e}", types.kind, path.display()));
    }
}

use serde::Deserialize;

/// Istio's CRDs, in the control plane behind `client` (idempotent), Established.
pub async fn install_crds(client: &Client) {
    let path = istio_dir().join("crd-all.gen.yaml");
    apply_manifests(client, &path).await;
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    let established = super::eventually(Duration::from_secs(60), || async {
        let list = crds.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .filter(|c| c.spec.group.ends_with("istio.io"))
            .all(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"))
            })
            .then_some(())
    })
    .await;
    assert!(established.is_some(), "Istio's CRDs not Established within 60s");
}

/// What an istiod is started with.
#[derive(Clone, Debug)]
pub struct IstiodConfig {
    /// The mesh config's `trustDomain`.
    pub trust_domain: String,
    /// `ISTIO_MULTIROOT_MESH` (istiod's default is false).
    pub multi_root_mesh: bool,
    /// The value of [`DISCOVERY_LABEL`] on the namespaces this istiod sees.
    pub discovery: String,
    /// Start without waiting for `cacerts`, as Istio's chart mounts it (`optional: true`): with
    /// no Secret yet, istiod starts on its own self-signed CA.
    pub cacerts_optional: bool,
    /// Appended to the mesh config file (YAML), e.g. `caCertificates`.
    pub mesh_config_extra: String,
    /// Further environment variables (istiod starts with a cleared environment).
    pub env: Vec<(String, String)>,
}

impl IstiodConfig {
    pub fn new(trust_domain: &str, multi_root_mesh: bool) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            multi_root_mesh,
            discovery: super::unique_suffix(),
            cacerts_optional: false,
            mesh_config_extra: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running istiod; killed on drop. Its working directory (and log) stays until then.
pub struct Istiod {
    child: Child,
    pub config: IstiodConfig,
    pub dir: tempfile::TempDir,
    /// Its CA's gRPC port (istiod's 15012).
    pub ca_port: u16,
    /// Its HTTP port (istiod's 8080: `/ready`, `/debug`).
    pub http_port: u16,
    /// Its monitoring port (istiod's 15014: `/metrics`).
    pub monitoring_port: u16,
    pub log_path: PathBuf,
    /// The kubelet stand-in keeping `./etc/cacerts` equal to the `cacerts` Secret.
    pub cacerts: ProjectedVolume,
}

impl Istiod {
    /// Starts istiod in the control plane behind `kubeconfig` (and `client`): installs Istio's
    /// CRDs and istiod's RBAC, waits until `istio-system/cacerts` is projected (a pod does not
    /// start before its volumes are mounted), starts it and waits for `/ready`.
    pub async fn start(client: &Client, kubeconfig: &Path, config: IstiodConfig) -> Self {
        install_crds(client).await;
        apply_manifests(client, &istio_dir().join("istiod-rbac.yaml")).await;
        let dir = tempfile::Builder::new()
            .prefix("istiod-")
            .tempdir()
            .expect("istiod directory");
        let token = service_account_token(client, ISTIO_NAMESPACE, "istiod", &[]).await;
        let own_kubeconfig = kubeconfig_with_token(kubeconfig, &token, &dir.path().join("kubeconfig"));
        let mesh_dir = dir.path().join("etc/istio/config");
        std::fs::create_dir_all(&mesh_dir).expect("mesh config directory");
        std::fs::write(
            mesh_dir.join("mesh"),
            format!(
                "trustDomain: {}\nrootNamespace: {ISTIO_NAMESPACE}\ndiscoverySelectors:\n- matchLabels:\n    {DISCOVERY_LABEL}: \"{}\"\n{}",
                config.trust_domain, config.discovery, config.mesh_config_extra
            ),
        )
        .expect("mesh config");
        let cacerts = ProjectedVolume::secret(client, ISTIO_NAMESPACE, "cacerts", &dir.path().join("etc/cacerts"));
        if !config.cacerts_optional {
            cacerts.wait_mounted(Duration::from_secs(60)).await;
        }

        let ports: Vec<u16> = (0..6).map(|_| super::free_port()).collect();
        let (http_port, https_port, grpc_port, ca_port, monitoring_port, ctrlz_port) =
            (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]);
        let log_path = dir.path().join("istiod.log");
        let log = std::fs::File::create(&log_path).expect("istiod log");
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let mut command = Command::new(istio_dir().join("pilot-discovery"));
        command
            .current_dir(dir.path())
            .args(["discovery", "--kubeconfig"])
            .arg(&own_kubeconfig)
            .args(["--meshConfig", "./etc/istio/config/mesh"])
            .args(["--networksConfig", "./etc/istio/config/meshNetworks"])
            .args(["--httpAddr", &addr(http_port)])
            .args(["--httpsAddr", &addr(https_port)])
            .args(["--grpcAddr", &addr(grpc_port)])
            .args(["--secureGRPCAddr", &addr(ca_port)])
            .args(["--monitoringAddr", &addr(monitoring_port)])
            .args(["--ctrlz_port", &ctrlz_port.to_string(), "--ctrlz_address", "127.0.0.1"])
            .args(["--domain", "cluster.local"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", dir.path())
            .env("POD_NAMESPACE", ISTIO_NAMESPACE)
            .env("POD_NAME", format!("istiod-{}", config.discovery))
            .env("ISTIO_MULTIROOT_MESH", config.multi_root_mesh.to_string())
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        let started = std::time::Instant::now();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("could not start istiod ({command:?}): {e}"));
        let mut istiod = Self {
            child,
            config,
            dir,
            ca_port,
            http_port,
            monitoring_port,
            log_path,
            cacerts,
        };
        istiod.wait_ready().await;
        eprintln!("istiod (pid {}) ready in {:?}", istiod.pid(), started.elapsed());
        istiod
    }

    /// Waits for istiod's `/ready` to answer 200; panics with its log if it exits or times out.
    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("istiod exited ({status}) before it was ready:\n{}", self.log_tail(60));
            }
            if let Ok((200, _)) = super::http_get(self.http_port, "/ready").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "istiod not ready within {READY_TIMEOUT:?}:\n{}",
                self.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The lines of its log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// Waits until its log has a line containing `needle` after the first `skip` such lines;
    /// returns that line.
    pub async fn wait_log_line(&self, needle: &str, skip: usize, timeout: Duration) -> String {
        super::eventually(timeout, || async { self.log_lines(needle).into_iter().nth(skip) })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "istiod never logged {needle:?} within {timeout:?}:\n{}",
                    self.log_tail(40)
                )
            })
    }

    /// Panics unless this is still the process that was started, never restarted: it has not
    /// exited, and its log shows its CA starting exactly once.
    pub fn assert_still_first_process(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("istiod exited ({status}):\n{}", self.log_tail(60));
        }
        let starts = self.log_lines("Istiod CA has started").len();
        assert_eq!(starts, 1, "istiod's CA started {starts} times:\n{}", self.log_tail(60));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `host:port` of its CA.
    pub fn ca_address(&self) -> String {
        format!("127.0.0.1:{}", self.ca_port)
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "istiod log ({}), last lines:\n{}",
                self.log_path.display(),
                self.log_tail(40)
            );
            if std::env::var("MESHCA_TEST_KEEP_ISTIOD").as_deref() == Ok("1") {
                let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
                eprintln!("keeping istiod's directory {}", kept.display());
            }
        }
    }
}

/// A token for ServiceAccount `namespace/name` (created if missing) from the TokenRequest API,
/// for `audiences` (none: the API server's own).
pub async fn service_account_token(client: &Client, namespace: &str, name: &str, audiences: &[&str]) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}
    }))
    .expect("ServiceAccount");
    accounts
        .patch(name, &PatchParams::apply(super::TEST_MANAGER), &Patch::Apply(&account))
        .await
        .unwrap_or_else(|e| panic!("ServiceAccount {namespace}/{name}: {e}"));
    let mut spec = serde_json::json!({"expirationSeconds": 3600});
    if !audiences.is_empty() {
        spec["audiences"] = serde_json::json!(audiences);
    }
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec
    }))
    .expect("TokenRequest");
    accounts
        .create_subresource::<TokenRequest, TokenRequest>("token", name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for {namespace}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("the issued token")
}

/// A copy of `kubeconfig` (its current context) that authenticates with `token`, at `path`.
fn kubeconfig_with_token(kubeconfig: &Path, token: &str, path: &Path) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    for user in config["users"].as_sequence_mut().expect("users") {
        user["user"] = serde_yaml::to_value(serde_json::json!({"token": token})).expect("user");
    }
    std::fs::write(path, serde_yaml::to_string(&config).expect("YAML")).expect("write kubeconfig");
    path.to_path_buf()
}

// === workloads ===

/// A workload's identity and the files the kubelet gives its istio-agent: a ServiceAccount
/// token with audience `istio-ca` (TokenRequest), and `istio-ca-root-cert` (written by istiod
/// into the namespace) projected as istio-agent's `./var/run/secrets/istio/root-cert.pem`.
pub struct Workload {
    pub namespace: String,
    pub service_account: String,
    pub trust_domain: String,
    dir: tempfile::TempDir,
    /// The kubelet stand-in keeping the workload's copy of `istio-ca-root-cert` current.
    pub root_cert: ProjectedVolume,
}

impl Workload {
    /// ServiceAccount `service_account` in `namespace` (which istiod must see), once istiod has
    /// written `istio-ca-root-cert` there.
    pub async fn new(client: &Client, namespace: &str, service_account: &str, istiod: &Istiod) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("workload-")
            .tempdir()
            .expect("workload directory");
        let token = service_account_token(client, namespace, service_account, &["istio-ca"]).await;
        let tokens = dir.path().join("var/run/secrets/tokens");
        std::fs::create_dir_all(&tokens).expect("token directory");
        std::fs::write(tokens.join("istio-token"), token).expect("token file");
        let root_cert = ProjectedVolume::config_map(
            client,
            namespace,
            ROOT_CERT_CONFIG_MAP,
            &dir.path().join("var/run/secrets/istio"),
        );
        root_cert.wait_mounted(Duration::from_secs(60)).await;
        Self {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            trust_domain: istiod.config.trust_domain.clone(),
            dir,
            root_cert,
        }
    }

    /// The SPIFFE ID istiod must put into this workload's certificates.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }

    fn agent(&self, istiod: &Istiod) -> Command {
        let mut command = Command::new(istio_dir().join("workload-agent"));
        command
            .current_dir(self.dir.path())
            .args(["--ca-address", &istiod.ca_address()])
            .args(["--ca-root", "./var/run/secrets/istio/root-cert.pem"])
            .args(["--ca-namespace", ISTIO_NAMESPACE])
            .args(["--token-file", "./var/run/secrets/tokens/istio-token"])
            .args(["--trust-domain", &self.trust_domain])
            .args(["--namespace", &self.namespace])
            .args(["--service-account", &self.service_account])
            .env_remove("KUBECONFIG");
        command
    }

    /// One certificate request to `istiod`; panics if istiod issued none.
    pub async fn request(&self, istiod: &Istiod) -> Issued {
        let mut command = self.agent(istiod);
        let out = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("agent task")
            .expect("workload-agent runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let records = Issued::parse_lines(&stdout);
        assert!(
            out.status.success() && records.len() == 1 && records[0].ok,
            "istiod issued no workload certificate ({}): {stdout}\n{}\nistiod:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            istiod.log_tail(30)
        );
        records.into_iter().next().expect("one record")
    }

    /// Starts requesting a certificate from `istiod` every `every` for `duration`, as a
    /// workload under load would; [`AgentLoop::finish`] returns every answer.
    pub fn request_every(&self, istiod: &Istiod, every: Duration, duration: Duration) -> AgentLoop {
        let out_path = self.dir.path().join(format!("loop-{}.jsonl", super::unique_suffix()));
        let stderr_path = out_path.with_extension("stderr");
        let mut command = self.agent(istiod);
        command
            .args(["--for", &format!("{}ms", duration.as_millis())])
            .args(["--every", &format!("{}ms", every.as_millis())])
            .arg("--out")
            .arg(&out_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).expect("agent stderr"));
        let child = command.spawn().expect("workload-agent starts");
        AgentLoop {
            child: Some(child),
            out_path,
            stderr_path,
        }
    }
}

/// A workload agent requesting certificates in a loop.
pub struct AgentLoop {
    child: Option<Child>,
    out_path: PathBuf,
    stderr_path: PathBuf,
}

impl AgentLoop {
    /// Every answer so far (the agent writes one JSON line per request; a line still being
    /// written is left for later).
    pub fn so_far(&self) -> Vec<Issued> {
        let text = std::fs::read_to_string(&self.out_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
        Issued::parse_lines(complete)
    }

    /// Stops the loop now; returns every answer it completed.
    pub fn stop(mut self) -> Vec<Issued> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.so_far()
    }

    /// Waits for the loop to end; returns every answer, failures included.
    pub async fn finish(mut self) -> Vec<Issued> {
        let mut child = self.child.take().expect("a running agent");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("agent task")
            .expect("agent exit status");
        assert!(
            status.success(),
            "workload-agent loop failed ({status}): {}",
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        );
        self.so_far()
    }
}

impl Drop for AgentLoop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One answer of istiod to a workload, as istio-agent keeps it.
#[derive(Clone, Debug, Deserialize)]
pub struct Issued {
    pub requested_at: jiff::Timestamp,
    pub at: jiff::Timestamp,
    pub ok: bool,
    #[serde(default)]
    pub error: String,
    /// Every element of istiod's `CreateCertificate` answer, in order.
    #[serde(default)]
    pub elements: Vec<String>,
    /// The workload's certificate chain (leaf first) as istio-agent keeps it.
    #[serde(default)]
    pub chain: String,
    /// The roots the workload holds after this answer.
    #[serde(default)]
    pub roots: String,
}

impl Issued {
    fn parse_lines(text: &str) -> Vec<Self> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("workload-agent wrote {l:?}: {e}")))
            .collect()
    }

    /// The workload certificate.
    pub fn leaf(&self) -> Certificate {
        self.chain_certificates().remove(0)
    }

    /// Every certificate of the chain, leaf first.
    pub fn chain_certificates(&self) -> Vec<Certificate> {
        Certificate::parse_pem_bundle(self.chain.as_bytes(), "workload chain").expect("a PEM chain")
    }

    /// Every certificate of the roots the workload holds.
    pub fn root_certificates(&self) -> Vec<Certificate> {
        Certificate::parse_pem_bundle(self.roots.as_bytes(), "workload roots").expect("PEM roots")
    }

    /// The leaf alone, in PEM.
    pub fn leaf_pem(&self) -> String {
        self.leaf().to_pem()
    }

    /// The chain after the leaf (what a peer receives as intermediates), in PEM.
    pub fn intermediates_pem(&self) -> String {
        self.chain_certificates()[1..].iter().map(Certificate::to_pem).collect()
    }

    /// Go's crypto/x509 (as istiod and Go peers judge) on the workload certificate, with the
    /// rest of its chain as intermediates, against `roots`.
    pub fn go_verdict(&self, roots: &str) -> super::goverify::Verdict {
        super::goverify::workload_verifies(
            self.leaf_pem().as_bytes(),
            self.intermediates_pem().as_bytes(),
            roots.as_bytes(),
        )
    }

    /// openssl's verdict on the same question (x509_strict).
    pub fn openssl_verdict(&self, roots: &str) -> Result<(), String> {
        super::openssl::verify_leaf(
            self.leaf_pem().as_bytes(),
            self.intermediates_pem().as_bytes(),
            roots.as_bytes(),
        )
    }

    /// Both judges agree that the workload certificate verifies against `roots` (true) or that
    /// it does not (false); panics if they disagree.
    pub fn verifies(&self, roots: &str) -> bool {
        let (go, openssl) = (self.go_verdict(roots), self.openssl_verdict(roots));
        assert_eq!(
            go.is_ok(),
            openssl.is_ok(),
            "Go ({go:?}) and openssl ({openssl:?}) disagree on a workload certificate"
        );
        go.is_ok()
    }
}

/// The `root-cert.pem` of `istio-ca-root-cert` in `namespace`, as istiod last wrote it.
pub async fn root_cert_config_map(client: &Client, namespace: &str) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.get_opt(ROOT_CERT_CONFIG_MAP)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.data)
        .and_then(|mut d: BTreeMap<String, String>| d.remove("root-cert.pem"))
}

/// Whether `needle`'s bytes are in `haystack`: istiod's `bytes.Contains` on `root-cert.pem`,
/// by which it tells a root change it accepts (a superset or subset) from one it refuses.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
