//! The one integration-test harness: connects to the local control plane, installs the CRDs
//! once, and gives each test a temporary namespace that it removes afterwards.
//!
//! The control plane comes from the environment: `make test` (hack/test) starts it and exports
//! `KUBECONFIG`. Run a single test by hand with
//! `hack/control-plane up && eval "$(hack/control-plane env)" && cargo test --test <name>`,
//! or set `MESHCA_TEST_START_CONTROL_PLANE=1` and the harness runs `hack/control-plane up
//! --name test` itself.
//!
//! The local API server has no controller-manager: nothing garbage-collects and nothing
//! finalizes namespaces. The harness therefore does the namespace controller's job for its own
//! namespaces: delete every namespaced object, then remove the `kubernetes` finalizer.
#![allow(dead_code)] // each test crate uses a different part of the harness

pub mod bundle_peer;
pub mod cert_manager;
pub mod chart;
pub mod goverify;
pub mod issuer;
pub mod istio_chart;
pub mod istio_system;
pub mod istiod;
pub mod kubelet;
pub mod leader;
pub mod mesh;
pub mod mesh_cluster;
pub mod meshca;
pub mod objects;
pub mod openbao;
pub mod openssl;
pub mod pca;
pub mod promql;
pub mod real_cert_manager;
pub mod sign;
pub mod spiffe;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

/// The issuer whose root a rotation test moves to: its root (Secret `new-root`) is the one
/// the fixtures approve.
pub const NEW_ROOT_ISSUER: &str = "new";

/// The SHA-256 fingerprint, as `status.roots[].fingerprintSHA256` shows it, of the root in
/// Secret `<issuer>-root` (a MeshCAIssuer's bootstrapped root); None when there is none.
pub async fn root_fingerprint(secrets: &Api<k8s_openapi::api::core::v1::Secret>, issuer: &str) -> Option<String> {
    let secret = secrets.get_opt(&format!("{issuer}-root")).await.ok()??;
    let pem = secret.data?.remove("tls.crt")?;
    let root = mesh_ca_issuer::pki::Certificate::parse_pem_bundle(&pem.0, "root")
        .ok()?
        .into_iter()
        .next()?;
    Some(root.fingerprint())
}

/// A rotation approves its new root (`spec.rootRotation.expectedNewRoot`) in the fixture, as
/// an operator would with `meshca rotation approve`: the root of the [`NEW_ROOT_ISSUER`]
/// issuer, when the test made one and pinned nothing itself.
pub async fn approve_new_root(
    secrets: &Api<k8s_openapi::api::core::v1::Secret>,
    rotation: Option<&mut mesh_ca_issuer::api::istio_cacerts::RootRotation>,
) {
    if let Some(r) = rotation.filter(|r| r.expected_new_root.is_none()) {
        r.expected_new_root = root_fingerprint(secrets, NEW_ROOT_ISSUER).await;
    }
}

/// Field manager of the harness's own writes (never the controller's).
pub const TEST_MANAGER: &str = "mesh-ca-issuer-tests";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The kubeconfig of the control plane the tests run against.
pub fn kubeconfig() -> PathBuf {
    static KUBECONFIG: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KUBECONFIG
        .get_or_init(|| {
            if let Ok(path) = std::env::var("KUBECONFIG")
                && !path.is_empty()
                && Path::new(&path).exists()
            {
                return PathBuf::from(path);
            }
            if std::env::var("MESHCA_TEST_START_CONTROL_PLANE").as_deref() == Ok("1") {
                let status = Command::new(repo_root().join("hack/control-plane"))
                    .args(["up", "--name", "test"])
                    .status()
                    .expect("could not run hack/control-plane");
                assert!(status.success(), "hack/control-plane up --name test failed");
                return repo_root().join(".control-plane/test/kubeconfig");
            }
            panic!(
                "no control plane: run `make test`, or `hack/control-plane up && eval \"$(hack/control-plane env)\"` \
                 before `cargo test`, or set MESHCA_TEST_START_CONTROL_PLANE=1"
            )
        })
        .clone()
}

/// A client for the admin identity of the local control plane.
pub async fn admin_client() -> Client {
    client_for_kubeconfig(&kubeconfig()).await
}

/// The kubeconfig of the second control plane, for the tests across two clusters (hack/test
/// starts it as `<name>-b` and exports `MESHCA_TEST_KUBECONFIG_B`).
pub fn kubeconfig_b() -> PathBuf {
    match std::env::var("MESHCA_TEST_KUBECONFIG_B") {
        Ok(path) if !path.is_empty() && Path::new(&path).exists() => PathBuf::from(path),
        _ => panic!(
            "no second control plane: run `hack/test`, or `hack/control-plane up --name test-b` and set \
             MESHCA_TEST_KUBECONFIG_B=.control-plane/test-b/kubeconfig"
        ),
    }
}

/// The current context of a kubeconfig file (each test control plane has its own name).
pub fn context_of(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
    config["current-context"].as_str().expect("current-context").to_string()
}

/// A client for the admin identity of the control plane behind `path`.
pub async fn client_for_kubeconfig(path: &Path) -> Client {
    mesh_ca_issuer::install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("readable kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("valid kubeconfig");
    Client::try_from(config).expect("client")
}

/// A client that authenticates with a bearer token (a ServiceAccount's, say) instead of admin's.
pub async fn client_with_token(token: &str) -> Client {
    mesh_ca_issuer::install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig()).expect("readable kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("valid kubeconfig");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

/// Every CRD the tests need: ours and cert-manager's own (from its module, v1.21.2).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = mesh_ca_issuer::api::crds();
    crds.extend(real_cert_manager::crds());
    crds
}

/// Installs (server-side apply, idempotent across test processes) and waits until every CRD
/// is Established. Runs once per test process.
pub async fn ensure_crds(client: &Client) {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED.get_or_init(|| install_crds(client)).await;
}

/// Installs every CRD into the control plane behind `client` and waits until each is
/// Established (idempotent; [`ensure_crds`] does it once per process for the main one).
pub async fn install_crds(client: &Client) {
    {
        {
            let api: Api<CustomResourceDefinition> = Api::all(client.clone());
            let params = PatchParams::apply(TEST_MANAGER).force();
            for crd in all_crds() {
                let name = crd.name_any();
                api.patch(&name, &params, &Patch::Apply(&crd))
                    .await
                    .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
            }
            for crd in all_crds() {
                let name = crd.name_any();
                let established = eventually(Duration::from_secs(30), || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await.ok()?;
                        let conditions = crd.status?.conditions?;
                        conditions
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                            .then_some(())
                    }
                })
                .await;
                assert!(established.is_some(), "CRD {name} not Established within 30s");
            }
        }
    }
}

/// Polls `check` until it yields `Some`, or gives up after `timeout` with `None`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A short random-enough suffix: unique across the test processes of one run.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mixed = nanos
        ^ ((std::process::id() as u64) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:08x}", (mixed ^ (mixed >> 29)) as u32)
}

/// A namespace that lives as long as the test; removed (with everything in it) on drop, also
/// when the test panics.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
    /// The control plane it lives in (removed through it on drop).
    pub kubeconfig: PathBuf,
}

impl TestNamespace {
    /// Creates `<prefix>-<suffix>`; `prefix` should say which test it belongs to.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let mut prefix: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        prefix.truncate(40);
        let name = format!("{}-{}", prefix.trim_end_matches('-'), unique_suffix());
        Self::create_named(client, &name, &kubeconfig()).await
    }

    /// Creates exactly `name` in the control plane behind `kubeconfig` (and `client`).
    pub async fn create_named(client: &Client, name: &str, kubeconfig: &Path) -> Self {
        let name = name.to_string();
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"meshca.io/test": "true"}}
        }))
        .expect("namespace object");
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self {
            name,
            client: client.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var("MESHCA_TEST_KEEP_NAMESPACES").as_deref() == Ok("1") {
            eprintln!("keeping test namespace {}", self.name);
            return;
        }
        let name = self.name.clone();
        let kubeconfig = self.kubeconfig.clone();
        clean_up_from_drop(async move {
            let client = client_for_kubeconfig(&kubeconfig).await;
            if let Err(e) = remove_namespace(&client, &name).await {
                eprintln!("warning: could not remove test namespace {name}: {e}");
            }
        });
    }
}

/// Runs `cleanup` to completion from a `Drop`: drop cannot be async, and the test's runtime may
/// be shutting down, so it runs on a thread with a runtime of its own (and the future makes a
/// client of its own).
pub fn clean_up_from_drop(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(cleanup);
    })
    .join();
}

/// Namespaced resource kinds that can be listed and deleted (discovered once per process).
async fn namespaced_resources(client: &Client) -> &'static [ApiResource] {
    static RESOURCES: OnceCell<Vec<ApiResource>> = OnceCell::const_new();
    RESOURCES
        .get_or_init(|| async {
            let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
            let mut out = Vec::new();
            for group in discovery.groups() {
                for (ar, caps) in group.recommended_resources() {
                    if caps.scope == Scope::Namespaced && caps.supports_operation(verbs::DELETE_COLLECTION) {
                        out.push(ar);
                    }
                }
            }
            out
        })
        .await
}

/// What the namespace controller would do: delete everything in it, then finalize it.
pub async fn remove_namespace(client: &Client, name: &str) -> Result<(), kube::Error> {
    for ar in namespaced_resources(client).await {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), name, ar);
        // Resources this identity cannot delete or that vanished meanwhile are not fatal.
        let _ = api
            .delete_collection(&DeleteParams::background(), &ListParams::default())
            .await;
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    }
    let mut ns = match namespaces.get(name).await {
        Ok(ns) => ns,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if let Some(spec) = ns.spec.as_mut() {
        spec.finalizers = Some(Vec::new());
    }
    namespaces
        .replace_subresource("finalize", name, &PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// stdout and stderr of a finished command, in that order: what it said.
pub fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A tool the tests run: `env` when set, else the copy hack/test caches under
/// `~/.cache/mesh-ca-issuer/tools/<cached>`; panics with `missing` when there is none.
pub fn cached_tool(env: &str, cached: &str, missing: &str) -> PathBuf {
    if let Ok(path) = std::env::var(env)
        && !path.is_empty()
    {
        return PathBuf::from(path);
    }
    let path = PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/mesh-ca-issuer/tools")
        .join(cached);
    assert!(path.exists(), "{missing}");
    path
}

/// A free TCP port on 127.0.0.1 (the kernel picks; tiny window before the caller binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A plain HTTP/1.0 request on loopback, with an optional JSON body: (status code, body).
/// Enough for the admin endpoints and the PCA fixture's control endpoints.
async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&serde_json::Value>,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let payload = match json {
        Some(body) => serde_json::to_vec(body)?,
        None => Vec::new(),
    };
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if json.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    head.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&payload).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// GET on loopback: (status code, body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, None).await
}

/// POST of JSON on loopback: (status code, body).
pub async fn http_post_json(port: u16, path: &str, body: &serde_json::Value) -> std::io::Result<(u16, String)> {
    http_request(port, "POST", path, Some(body)).await
}

/// The lowest bounds on a root rotation's delays, and on how often a peer's bundle endpoint is
/// fetched: every controller process a test starts gets these unless it passes the flag itself
/// (a test of the defaults passes `--workload-cert-ttl=24h`).
pub const TEST_ROTATION_FLAGS: [&str; 4] = [
    "--workload-cert-ttl=1s",
    "--clock-skew-allowance=0s",
    "--min-trust-propagation-delay=0s",
    "--bundle-refresh-min=1s",
];

/// The controller binary running as a child process; killed on drop.
pub struct ControllerProcess {
    pub child: std::process::Child,
    pub admin_port: u16,
    /// Where it serves SPIFFE bundle endpoints (127.0.0.1); 0 when started by [`Self::spawn`].
    pub bundle_port: u16,
    pub log_path: PathBuf,
}

impl ControllerProcess {
    /// Starts `mesh-ca-issuer` against the test control plane with extra arguments.
    pub fn start(extra_args: &[&str], log_dir: &Path) -> Self {
        Self::start_with_kubeconfig(&kubeconfig(), extra_args, log_dir)
    }

    pub fn start_with_kubeconfig(kubeconfig: &Path, extra_args: &[&str], log_dir: &Path) -> Self {
        Self::start_with_env(kubeconfig, extra_args, &[], log_dir)
    }

    /// Starts it with extra environment variables (e.g. `MESHCA_FAILPOINT`).
    pub fn start_with_env(kubeconfig: &Path, extra_args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        let admin_port = free_port();
        let bundle_port = extra_args
            .iter()
            .find_map(|a| a.strip_prefix("--bundle-endpoint-addr=127.0.0.1:"))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(free_port);
        let mut command = Command::new(env!("CARGO_BIN_EXE_mesh-ca-issuer"));
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--metrics-listen-address")
            .arg(format!("127.0.0.1:{admin_port}"))
            // Many controllers run side by side: each its own bundle endpoint port.
            .args(
                (!extra_args.iter().any(|a| a.starts_with("--bundle-endpoint-addr")))
                    .then(|| format!("--bundle-endpoint-addr=127.0.0.1:{bundle_port}")),
            )
            .args(extra_args)
            // Tests run many controllers side by side: no leader election unless a test asks.
            .args((!extra_args.iter().any(|a| a.starts_with("--leader-elect"))).then_some("--leader-elect=false"))
            // Rotations in tests wait seconds, not istiod's 24h: the one place the delays'
            // minimums are lowered, unless the test passes its own.
            .args(
                TEST_ROTATION_FLAGS
                    .iter()
                    .filter(|flag| {
                        let name = flag.split('=').next().unwrap_or_default();
                        !extra_args.iter().any(|a| a.starts_with(name))
                    })
                    .copied(),
            )
            .env_remove("RUST_LOG")
            // Never reach for the EC2 metadata service from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied());
        let mut process = Self::spawn(command, admin_port, log_dir);
        process.bundle_port = bundle_port;
        process
    }

    /// Runs `command`, which must start the controller with its admin listener on
    /// 127.0.0.1:`admin_port` (e.g. the image's entrypoint in a chroot), logging to `log_dir`.
    pub fn spawn(mut command: Command, admin_port: u16, log_dir: &Path) -> Self {
        let log_path = log_dir.join(format!("controller-{admin_port}.log"));
        let log = std::fs::File::create(&log_path).expect("controller log file");
        let child = command
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start the controller ({command:?}): {e}"));
        Self {
            child,
            admin_port,
            bundle_port: 0,
            log_path,
        }
    }

    /// Waits for /readyz to answer 200; false on timeout or if the process died.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        let port = self.admin_port;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok((200, _)) = http_get(port, "/readyz").await {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === controllers in the test process ===

/// Tests that run a controller scoped to their namespace hold this lock shared; tests that
/// run a cluster-wide controller (cluster issuers) hold it exclusively, so a cluster-wide
/// controller never acts on another test's requests. File locks, so the rule holds across
/// test processes too.
pub struct ScopeLock(std::fs::File);

impl ScopeLock {
    async fn acquire(exclusive: bool) -> Self {
        tokio::task::spawn_blocking(move || {
            let path = kubeconfig().with_file_name("tests-cluster-wide.lock");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .expect("lock file");
            if exclusive { file.lock() } else { file.lock_shared() }.expect("file lock");
            Self(file)
        })
        .await
        .expect("lock task")
    }

    /// For tests whose controllers watch only their own namespace.
    pub async fn shared() -> Self {
        Self::acquire(false).await
    }

    /// For tests that run a cluster-wide controller.
    pub async fn exclusive() -> Self {
        Self::acquire(true).await
    }
}

/// An admin client with the CRDs installed and a namespace of its own, `<prefix>-<suffix>`:
/// how a test that runs no controller (or runs its own, as a process) starts.
pub async fn test_namespace(prefix: &str) -> (Client, TestNamespace) {
    let client = admin_client().await;
    ensure_crds(&client).await;
    let ns = TestNamespace::create(&client, prefix).await;
    (client, ns)
}

/// How a test whose controllers watch only its own namespace starts: an admin client with the
/// CRDs installed, the shared [`ScopeLock`], and a namespace of its own. Bound as
/// `let (_lock, client, ns) = ...`, the namespace is removed before the lock is released.
pub async fn namespaced_test(prefix: &str) -> (ScopeLock, Client, TestNamespace) {
    let client = admin_client().await;
    ensure_crds(&client).await;
    let lock = ScopeLock::shared().await;
    let ns = TestNamespace::create(&client, prefix).await;
    (lock, client, ns)
}

/// A test's own namespace (see [`namespaced_test`]) with the fixtures it runs against
/// (`fixture`, reached through `Deref`: `env.pca`, `env.bao`). Fields drop in order: the
/// namespace is removed, then the fixtures stop, then the scope lock is released.
pub struct WithNamespace<T> {
    pub client: Client,
    pub ns: TestNamespace,
    pub fixture: T,
    _lock: ScopeLock,
}

impl WithNamespace<()> {
    /// [`namespaced_test`] with no fixture yet: add one with [`WithNamespace::with`].
    pub async fn start(prefix: &str) -> Self {
        let (lock, client, ns) = namespaced_test(prefix).await;
        Self {
            client,
            ns,
            fixture: (),
            _lock: lock,
        }
    }

    pub fn with<T>(self, fixture: T) -> WithNamespace<T> {
        WithNamespace {
            client: self.client,
            ns: self.ns,
            fixture,
            _lock: self._lock,
        }
    }
}

impl WithNamespace<RunningController> {
    /// A test's own namespace with a controller watching only it (`flags` added to its command
    /// line): the environment most tests start from. The namespace is removed before the
    /// controller stops.
    pub async fn controlled(prefix: &str, flags: &[&str]) -> Self {
        let test = WithNamespace::start(prefix).await;
        let controller = RunningController::in_namespace_with(&test.ns.name, flags).await;
        test.with(controller)
    }
}

impl<T> std::ops::Deref for WithNamespace<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.fixture
    }
}

/// `mesh_ca_issuer::run` on the test's runtime; stopped on drop.
pub struct RunningController {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<mesh_ca_issuer::Result<()>>,
    pub admin_port: u16,
}

impl RunningController {
    /// Starts the controller with `args` (e.g. `["--namespace", ns]`) and waits for /readyz.
    pub async fn start(args: &[&str]) -> Self {
        mesh_ca_issuer::install_crypto_provider();
        let admin_port = free_port();
        let kubeconfig = kubeconfig();
        let mut argv: Vec<String> = vec![
            "mesh-ca-issuer".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-listen-address".into(),
            format!("127.0.0.1:{admin_port}"),
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        if !args.iter().any(|a| a.starts_with("--bundle-endpoint-addr")) {
            argv.push(format!("--bundle-endpoint-addr=127.0.0.1:{}", free_port()));
        }
        // Tests run many controllers side by side: no leader election unless a test asks.
        if !args.iter().any(|a| a.starts_with("--leader-elect")) {
            argv.push("--leader-elect=false".into());
        }
        let config = <mesh_ca_issuer::config::Config as clap::Parser>::try_parse_from(argv).expect("valid flags");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(mesh_ca_issuer::run(config, async move {
            let _ = rx.await;
        }));
        let started = tokio::time::Instant::now();
        loop {
            if let Ok((200, _)) = http_get(admin_port, "/readyz").await {
                break;
            }
            assert!(!task.is_finished(), "the controller stopped before becoming ready");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the controller did not become ready within 60s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            shutdown: Some(tx),
            task,
            admin_port,
        }
    }

    /// A controller watching only `namespace` (cluster issuers disabled).
    pub async fn in_namespace(namespace: &str) -> Self {
        Self::in_namespace_with(namespace, &[]).await
    }

    /// A controller watching only `namespace`, with `flags` added to its command line.
    pub async fn in_namespace_with(namespace: &str, flags: &[&str]) -> Self {
        let mut args = vec!["--namespace", namespace];
        args.extend_from_slice(flags);
        Self::start(&args).await
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin_port, "/metrics").await.expect("GET /metrics").1
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

// === reading what the controller did ===

/// Events (events.k8s.io/v1) about an object in `namespace`: (type, reason, note). `object` is
/// a name, or `Kind/name` when objects of different kinds share the name.
pub async fn events_for(client: &Client, namespace: &str, object: &str) -> Vec<(String, String, String)> {
    let (kind, name) = match object.split_once('/') {
        Some((kind, name)) => (Some(kind), name),
        None => (None, object),
    };
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    let mut out: Vec<(String, String, String)> = api
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| {
            let regarding = e.regarding.as_ref();
            regarding.and_then(|r| r.name.as_deref()) == Some(name)
                && kind.is_none_or(|k| regarding.and_then(|r| r.kind.as_deref()) == Some(k))
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until an event with `reason` about `name` exists; returns its note.
pub async fn wait_for_event(client: &Client, namespace: &str, name: &str, reason: &str) -> String {
    eventually(Duration::from_secs(20), || async {
        events_for(client, namespace, name)
            .await
            .into_iter()
            .find(|e| e.1 == reason)
            .map(|e| e.2)
    })
    .await
    .unwrap_or_else(|| panic!("no {reason} event about {namespace}/{name} within 20s"))
}

// === identities and cluster-scoped leftovers ===

/// A token for ServiceAccount `namespace/name` from the TokenRequest API.
pub async fn service_account_token(client: &Client, namespace: &str, name: &str) -> String {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}
    }))
    .expect("TokenRequest");
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource::<TokenRequest, TokenRequest>("token", name, &PostParams::default(), &request)
        .await
        .expect("a ServiceAccount token")
        .status
        .and_then(|s| s.token)
        .expect("the issued token")
}

/// ServiceAccount `name` of `namespace`, allowed only `rules` (a Role and a RoleBinding, both
/// named `name` too), and a kubeconfig in `dir` that authenticates as it: how a test runs the
/// controller with less than its chart grants, to see what a refused call does. Returns the
/// kubeconfig's path; the test widens the Role itself when it grants the rest.
pub async fn restricted_identity(
    client: &Client,
    namespace: &str,
    name: &str,
    rules: Vec<serde_json::Value>,
    dir: &Path,
) -> PathBuf {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role = serde_json::json!({"metadata": {"name": name}, "rules": rules});
    let account = serde_json::json!({"metadata": {"name": name}});
    let binding = serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    });
    let params = PostParams::default();
    Api::<Role>::namespaced(client.clone(), namespace)
        .create(&params, &serde_json::from_value(role).expect("a Role"))
        .await
        .unwrap_or_else(|e| panic!("creating Role {name}: {e}"));
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&params, &serde_json::from_value(account).expect("a ServiceAccount"))
        .await
        .unwrap_or_else(|e| panic!("creating ServiceAccount {name}: {e}"));
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .create(&params, &serde_json::from_value(binding).expect("a RoleBinding"))
        .await
        .unwrap_or_else(|e| panic!("creating RoleBinding {name}: {e}"));
    let token = service_account_token(client, namespace, name).await;
    kubeconfig_with_token(dir, &token)
}

/// A copy of the test kubeconfig that authenticates with `token` instead of as admin.
pub fn kubeconfig_with_token(dir: &Path, token: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig()).expect("kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
    config["users"][0]["user"] = serde_yaml::to_value(serde_json::json!({"token": token})).expect("user");
    let path = dir.join("token.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).expect("YAML")).expect("write kubeconfig");
    path
}

/// Deletes the ClusterMeshCAIssuers a test made when it ends (namespaces take care of the rest).
pub struct DeleteClusterIssuers(pub Vec<String>);

impl Drop for DeleteClusterIssuers {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        clean_up_from_drop(async move {
            let api: Api<mesh_ca_issuer::api::ClusterMeshCAIssuer> = Api::all(admin_client().await);
            for name in names {
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        });
    }
}

/// Waits until an issuer's Ready condition has `status` for its current generation; returns
/// (reason, message).
pub async fn wait_issuer<K>(api: &Api<K>, name: &str, status: &str, timeout: Duration) -> (String, String)
where
    K: mesh_ca_issuer::controller::issuer::IssuerObject,
{
    eventually(timeout, || async {
        let issuer = api.get(name).await.ok()?;
        let c = issuer.status()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        (c.status == status && c.observed_generation == issuer.meta().generation).then_some((c.reason, c.message))
    })
    .await
    .unwrap_or_else(|| panic!("issuer {name} not Ready={status} within {timeout:?}"))
}

/// Waits until an issuer's Ready condition has `reason` (transient reasons may come first);
/// returns its message.
pub async fn wait_issuer_reason<K>(api: &Api<K>, name: &str, reason: &str, timeout: Duration) -> String
where
    K: mesh_ca_issuer::controller::issuer::IssuerObject,
{
    eventually(timeout, || async {
        let issuer = api.get(name).await.ok()?;
        let c = issuer.status()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        (c.reason == reason).then_some(c.message)
    })
    .await
    .unwrap_or_else(|| panic!("issuer {name} never had Ready reason {reason} within {timeout:?}"))
}

// === Helm charts rendered and applied ===

/// helm, as hack/test installs it (`MESHCA_HELM`), else from the tool cache.
pub fn helm() -> PathBuf {
    cached_tool(
        "MESHCA_HELM",
        "helm-3.17.2/helm",
        "helm is not installed: run hack/test (or set MESHCA_HELM)",
    )
}

/// `helm template` of `chart` (release `release` in `namespace`, `--set` each of `set`), only
/// `show_only`'s documents, and of those only the ones `keep` accepts.
pub fn helm_template(
    chart: &Path,
    release: &str,
    namespace: &str,
    set: &[&str],
    show_only: &str,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut command = Command::new(helm());
    command
        .arg("template")
        .arg(release)
        .arg(chart)
        .args(["--namespace", namespace, "--show-only", show_only]);
    for s in set {
        command.args(["--set", s]);
    }
    let output = command.output().expect("run helm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "helm template {}: {}{stdout}",
        chart.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_yaml::Deserializer::from_str(&stdout)
        .filter_map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).ok())
        .filter(|doc| doc.is_object() && keep(doc))
        .collect()
}

/// Objects a test applied (server-side apply), deleted again on drop: for cluster-scoped ones
/// (ClusterRoles and their bindings) that no namespace removal takes away.
pub struct AppliedObjects {
    objects: Vec<(ApiResource, Option<String>, String)>,
}

impl AppliedObjects {
    /// Applies `documents`; namespaced ones without a namespace go to `namespace`.
    pub async fn apply(client: &Client, namespace: &str, documents: Vec<serde_json::Value>) -> Self {
        let discovery = Discovery::new(client.clone()).run().await.expect("API discovery");
        let mut applied = Self { objects: Vec::new() };
        for document in documents {
            let object: DynamicObject = serde_json::from_value(document.clone()).expect("a Kubernetes object");
            let types = object.types.clone().expect("apiVersion and kind");
            let (group, version) = types.api_version.split_once('/').unwrap_or(("", &types.api_version));
            let gvk = kube::core::GroupVersionKind::gvk(group, version, &types.kind);
            let (resource, capabilities) = discovery
                .resolve_gvk(&gvk)
                .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
            let name = object.name_any();
            let api: Api<DynamicObject> = if capabilities.scope == Scope::Namespaced {
                let ns = object
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| namespace.to_string());
                applied.objects.push((resource.clone(), Some(ns.clone()), name.clone()));
                Api::namespaced_with(client.clone(), &ns, &resource)
            } else {
                applied.objects.push((resource.clone(), None, name.clone()));
                Api::all_with(client.clone(), &resource)
            };
            api.patch(&name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&object))
                .await
                .unwrap_or_else(|e| panic!("applying {} {name}: {e}", types.kind));
        }
        applied
    }
}

impl Drop for AppliedObjects {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut self.objects);
        clean_up_from_drop(async move {
            let client = admin_client().await;
            for (resource, namespace, name) in objects {
                let api: Api<DynamicObject> = match &namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                    None => Api::all_with(client.clone(), &resource),
                };
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
        });
    }
}
