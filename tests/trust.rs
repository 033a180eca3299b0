//! Only the right party gets a mesh CA (issue 11), on the real API server with the real
//! `aws-sdk-acmpca` against the local ACM PCA endpoint: requests from namespaces an issuer does
//! not serve, SPIFFE IDs outside the default trust domain, weak CSRs made with openssl, a
//! namespaced issuer reaching for the controller's own AWS identity, and stored certificate ARNs
//! that are not the request's. Each refusal is checked for its outcome AND for nothing signed:
//! the fixture's IssueCertificate count, and no `status.certificate` on the request. The chains
//! that are issued are checked with openssl and with Go's crypto/x509 (as istiod loads them).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{ClusterMeshCAIssuer, MeshCAIssuer};
use support::cert_manager::{self as cm, IntermediateRequest};
use support::objects::create_tls_secret;
use support::pca::{ACCESS_KEY_ID, ENDPOINT_OVERRIDE, PcaFixture, SECRET_ACCESS_KEY, create_credentials_secret};
use support::{
    ControllerProcess, RunningController, ScopeLock, TestNamespace, goverify, issuer, openssl, wait_for_event,
};

const TIMEOUT: Duration = Duration::from_secs(45);
const ARN_ANNOTATION: &str = "meshca.io/aws-pca-certificate-arn";

// === helpers ===

/// A namespace with the credentials Secret, a PCA with one CA, and a MeshCAIssuer `pca` for it.
type Env = support::WithNamespace<Pca>;

struct Pca {
    pca: PcaFixture,
    ca_arn: String,
}

async fn env(prefix: &str) -> Env {
    let test = support::WithNamespace::start(prefix).await;
    let pca = PcaFixture::start();
    create_credentials_secret(&test.ns.api()).await;
    let ca_arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    test.with(Pca { pca, ca_arn })
}

/// MeshCAIssuer `pca` for the environment's CA, once Ready: where most tests start.
async fn ready_pca_issuer(env: &Env) {
    let spec = env.pca.issuer_spec(&env.ca_arn);
    issuer::create_ready(&env.ns.api(), "pca", spec, TIMEOUT).await;
}

/// Creates a request for `csr_pem`, with `annotations`, and approves it.
async fn request_with(
    client: &Client,
    namespace: &str,
    req: &IntermediateRequest,
    csr_pem: &[u8],
    annotations: &[(&str, &str)],
) {
    cm::create_request(client, namespace, req, csr_pem).await;
    if !annotations.is_empty() {
        let map: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        Api::<CertificateRequest>::namespaced(client.clone(), namespace)
            .patch(
                &req.name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": map}})),
            )
            .await
            .unwrap();
    }
    cm::approve(client, namespace, &req.name).await;
}

/// Waits for `Failed`, and checks that nothing was written: failureTime set, no certificate,
/// no CA. Returns the Ready message.
async fn wait_failed_unsigned(client: &Client, namespace: &str, name: &str) -> String {
    let cr = cm::wait_for_reason(client, namespace, name, &["Failed", "Issued"], TIMEOUT).await;
    let ready = cr.condition("Ready").unwrap();
    let message = ready.message.clone().unwrap_or_default();
    assert_eq!(ready.reason.as_deref(), Some("Failed"), "{name}: {message}");
    let status = cr.status.as_ref().unwrap();
    assert!(status.failure_time.is_some(), "{name}: failureTime is set");
    assert!(status.certificate.is_none(), "{name}: no certificate was written");
    assert!(status.ca.is_none(), "{name}: no CA was written");
    message
}

/// The issued chain, judged by openssl and by Go as istiod loads it (TLS-format cacerts).
fn assert_chain_loads(cr: &CertificateRequest, key_pem: &str) {
    let status = cr.status.as_ref().unwrap();
    let (certificate, ca) = (status.certificate.clone().unwrap(), status.ca.clone().unwrap());
    assert_eq!(openssl::verify(&ca, &certificate), "chain.pem: OK");
    let bundle = BTreeMap::from([
        ("tls.crt".to_string(), certificate),
        ("tls.key".to_string(), key_pem.as_bytes().to_vec()),
        ("ca.crt".to_string(), ca),
    ]);
    assert_eq!(
        goverify::istiod_loads(&bundle),
        Ok(()),
        "istiod (Go) loads the issued CA"
    );
}

async fn issuer_status<K>(api: &Api<K>, name: &str) -> mesh_ca_issuer::api::issuer::IssuerStatus
where
    K: mesh_ca_issuer::controller::issuer::IssuerObject,
{
    api.get(name).await.unwrap().status().cloned().unwrap()
}

// === 1. who may request ===

#[tokio::test]
async fn a_cluster_issuer_signs_only_for_the_istio_namespaces_until_widened() {
    let client = support::admin_client().await;
    support::ensure_crds(&client).await;
    let _lock = ScopeLock::exclusive().await;
    let resources = TestNamespace::create(&client, "trust-resources").await;
    let istio = TestNamespace::create(&client, "trust-istio").await;
    let team = TestNamespace::create(&client, "trust-team").await;
    let pca = PcaFixture::start();
    create_credentials_secret(&resources.api()).await;
    let arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    let name = format!("mesh-{}", support::unique_suffix());
    let _cleanup = support::DeleteClusterIssuers(vec![name.clone()]);
    let _controller = RunningController::start(&[
        "--cluster-resource-namespace",
        &resources.name,
        "--istio-namespaces",
        &istio.name,
    ])
    .await;
    let issuers: Api<ClusterMeshCAIssuer> = Api::all(client.clone());
    issuers
        .create(
            &PostParams::default(),
            &ClusterMeshCAIssuer::new(&name, pca.issuer_spec(&arn)),
        )
        .await
        .unwrap();
    support::wait_issuer(&issuers, &name, "True", TIMEOUT).await;
    // The issuer says whom it serves: the Istio namespaces and the default trust domain.
    let status = issuer_status(&issuers, &name).await;
    assert_eq!(status.allowed_namespaces, vec![istio.name.as_str()]);
    assert_eq!(status.allowed_trust_domains, ["cluster.local"]);

    let req = IntermediateRequest {
        issuer_kind: "ClusterMeshCAIssuer".into(),
        ..IntermediateRequest::istiod("istiod", &name)
    };
    // istiod's namespace: signed (the flow users run today keeps working).
    let key = cm::request_and_approve(&client, &istio.name, &req).await;
    let cr = cm::wait_for_reason(&client, &istio.name, "istiod", &["Issued"], TIMEOUT).await;
    assert_chain_loads(&cr, &key);
    assert_eq!(pca.calls("IssueCertificate").await, 1);

    // Any other namespace: Failed, PolicyViolation, never signed.
    cm::request_and_approve(&client, &team.name, &req).await;
    let message = wait_failed_unsigned(&client, &team.name, "istiod").await;
    assert!(
        message.contains(&format!("namespace {:?}", team.name)) && message.contains("spec.policy.allowedNamespaces"),
        "{message}"
    );
    let note = wait_for_event(&client, &team.name, "istiod", "PolicyViolation").await;
    assert!(note.contains(&team.name), "{note}");
    assert_eq!(pca.calls("IssueCertificate").await, 1, "nothing signed for the team");

    // Widened by the issuer's own policy: the team's next request is signed.
    issuers
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"policy": {"allowedNamespaces": [istio.name, team.name]}}})),
        )
        .await
        .unwrap();
    support::wait_issuer(&issuers, &name, "True", TIMEOUT).await;
    assert_eq!(
        issuer_status(&issuers, &name).await.allowed_namespaces,
        [istio.name.clone(), team.name.clone()]
    );
    let again = req.named("istiod-2");
    let key = cm::request_and_approve(&client, &team.name, &again).await;
    let cr = cm::wait_for_reason(&client, &team.name, "istiod-2", &["Issued"], TIMEOUT).await;
    assert_chain_loads(&cr, &key);
    assert_eq!(pca.calls("IssueCertificate").await, 2);

    // A name that is no namespace name is refused by the API server itself (CRD schema).
    let invalid = issuers
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"policy": {"allowedNamespaces": ["Team_A"]}}})),
        )
        .await;
    assert!(
        matches!(&invalid, Err(kube::Error::Api(e)) if e.code == 422),
        "{invalid:?}"
    );

    // A namespaced issuer cannot be widened: the field makes it not Ready.
    let mut widened = pca.issuer_spec(&arn);
    widened.policy.allowed_namespaces = vec!["*".into()];
    team.api::<MeshCAIssuer>()
        .create(&PostParams::default(), &MeshCAIssuer::new("wide", widened))
        .await
        .unwrap();
    let message = support::wait_issuer_reason(&team.api::<MeshCAIssuer>(), "wide", "InvalidSpec", TIMEOUT).await;
    assert!(message.contains("only for a ClusterMeshCAIssuer"), "{message}");
}

// === 2. trust domains ===

#[tokio::test]
async fn a_spiffe_id_outside_the_default_trust_domain_is_failed_and_never_signed() {
    let env = env("trust-domain").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    ready_pca_issuer(&env).await;
    let base = IntermediateRequest::istiod("x", "pca");
    let cases = [
        (
            "foreign",
            "spiffe://evil.example/ns/istio-system/sa/istiod",
            "trust domain \"evil.example\"",
        ),
        (
            "not-spiffe",
            "https://istiod.example/ns/istio-system",
            "is not a valid SPIFFE ID",
        ),
        (
            "dot-segment",
            "spiffe://cluster.local/ns/../sa/istiod",
            "is not a valid SPIFFE ID",
        ),
    ];
    for (name, uri, _) in &cases {
        let req = IntermediateRequest {
            uris: vec![uri.to_string()],
            ..base.named(name)
        };
        cm::request_and_approve(&env.client, &env.ns.name, &req).await;
    }
    for (name, _, expected) in cases {
        let message = wait_failed_unsigned(&env.client, &env.ns.name, name).await;
        assert!(
            message.contains(expected) && message.starts_with("Refused by MeshCAIssuer"),
            "{name}: {message}"
        );
        let note = wait_for_event(&env.client, &env.ns.name, name, "Failed").await;
        assert!(note.contains(expected), "{name}: {note}");
    }
    assert_eq!(env.pca.calls("IssueCertificate").await, 0, "nothing signed");
    // The default trust domain itself is signed: the refusals above were the policy's.
    let key = cm::request_and_approve(&env.client, &env.ns.name, &base.named("cluster-local")).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "cluster-local", &["Issued"], TIMEOUT).await;
    assert_chain_loads(&cr, &key);
    assert_eq!(env.pca.calls("IssueCertificate").await, 1);
}

// === 3. weak requests ===

/// A CSR made by openssl: a new key from `newkey` (`openssl req -newkey` syntax), signed with
/// `digest`, with `sans` as subjectAltName.
fn openssl_csr(dir: &openssl::Workdir, name: &str, newkey: &[&str], digest: &str, sans: &str) -> String {
    let out = format!("{name}.csr");
    let key = format!("{name}.key");
    let san = format!("subjectAltName={sans}");
    let mut args = vec!["req", "-new", "-nodes", "-keyout", &key, "-out", &out];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&[
        digest,
        "-subj",
        "/O=cluster.local/CN=istiod intermediate",
        "-addext",
        &san,
        "-addext",
        "keyUsage=critical,keyCertSign,digitalSignature",
    ]);
    dir.run(&args);
    dir.read(&out)
}

#[tokio::test]
async fn weak_requests_are_failed_by_name_and_never_signed() {
    let env = env("trust-weak").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    ready_pca_issuer(&env).await;
    let dir = openssl::Workdir::new();
    let istiod = "URI:spiffe://cluster.local/ns/istio-system/sa/istiod";
    let rsa1024 = ["-newkey", "rsa:1024"];
    let rsa2048 = ["-newkey", "rsa:2048"];
    let p521 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"];
    let k256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp256k1"];
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];
    let many: String = (0..101).map(|i| format!("DNS:san-{i}.example,")).collect::<String>() + istiod;
    let huge: String = (0..2600)
        .map(|i| format!("DNS:padding-{i:05}.example.org,"))
        .collect::<String>()
        + istiod;
    // (request name, key, digest, SANs, what the refusal says); each CSR has a file name of its own.
    let weak: [(&str, &[&str], &str, &str, &str); 8] = [
        // Today's gap: an RSA-1024 SHA-1 CSR got a CA certificate. The signature is named first.
        (
            "rsa1024-sha1",
            &rsa1024,
            "-sha1",
            istiod,
            "signed with sha1WithRSAEncryption (SHA-1)",
        ),
        (
            "rsa1024",
            &rsa1024,
            "-sha256",
            istiod,
            "RSA key has 1024 bits; at least 2048 are required",
        ),
        (
            "sha1",
            &rsa2048,
            "-sha1",
            istiod,
            "signed with sha1WithRSAEncryption (SHA-1)",
        ),
        (
            "md5",
            &rsa2048,
            "-md5",
            istiod,
            "signed with md5WithRSAEncryption (MD5)",
        ),
        (
            "p521",
            &p521,
            "-sha512",
            istiod,
            "curve P-521 (secp521r1); only P-256 and P-384",
        ),
        (
            "secp256k1",
            &k256,
            "-sha256",
            istiod,
            "curve secp256k1; only P-256 and P-384",
        ),
        (
            "many-sans",
            &p256,
            "-sha256",
            &many,
            "102 subject alternative names; at most 100",
        ),
        ("huge", &p256, "-sha256", &huge, "at most 65536 are accepted"),
    ];
    let cases: Vec<(&str, String, &str)> = weak
        .iter()
        .zip('a'..)
        .map(|(&(name, key, digest, sans, expected), file)| {
            (name, openssl_csr(&dir, &file.to_string(), key, digest, sans), expected)
        })
        .collect();
    let base = IntermediateRequest::istiod("x", "pca");
    for (name, csr, _) in &cases {
        request_with(&env.client, &env.ns.name, &base.named(name), csr.as_bytes(), &[]).await;
    }
    for (name, _, expected) in &cases {
        let message = wait_failed_unsigned(&env.client, &env.ns.name, name).await;
        assert!(message.contains(expected), "{name}: {message}");
    }
    assert_eq!(env.pca.calls("IssueCertificate").await, 0, "nothing signed");
    // The same openssl recipe with a P-256 key and SHA-256 is signed: the refusals were the keys'.
    let good = openssl_csr(&dir, "ok", &p256, "-sha256", istiod);
    request_with(&env.client, &env.ns.name, &base.named("p256"), good.as_bytes(), &[]).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "p256", &["Issued"], TIMEOUT).await;
    assert_chain_loads(&cr, &dir.read("ok.key"));
    assert_eq!(env.pca.calls("IssueCertificate").await, 1);
}

#[tokio::test]
async fn a_weak_signing_ca_key_makes_the_issuer_not_ready_and_says_why() {
    let (_lock, client, ns) = support::namespaced_test("trust-weak-ca").await;
    let _controller = RunningController::in_namespace(&ns.name).await;
    let dir = openssl::Workdir::new();
    dir.run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:1024",
        "-nodes",
        "-keyout",
        "root.key",
        "-out",
        "root.crt",
        "-days",
        "365",
        "-sha256",
        "-subj",
        "/CN=weak root",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    create_tls_secret(&ns.api(), "weak-root", &dir.read("root.crt"), &dir.read("root.key")).await;
    issuer::create(&ns.api(), "weak", issuer::from_secret("weak-root")).await;
    let (reason, message) = support::wait_issuer(&ns.api::<MeshCAIssuer>(), "weak", "False", TIMEOUT).await;
    assert_eq!(reason, "WeakCAKey", "{message}");
    assert!(
        message.contains("the signing CA's RSA key has 1024 bits; at least 2048 are required"),
        "{message}"
    );
    // Requests wait on the issuer; nothing is signed with the weak key.
    let cr = cm::pending_saying(&client, &ns.name, "waits", "weak", "WeakCAKey", TIMEOUT).await;
    assert!(cr.status.unwrap().certificate.is_none());
}

// === 4. ambient credentials ===

#[tokio::test]
async fn a_namespaced_issuer_without_credentials_may_not_use_the_controllers_environment_keys() {
    let env = env("trust-ambient").await;
    let logs = tempfile::tempdir().unwrap();
    // The controller has working AWS keys in its environment: exactly what must not be lent.
    let mut controller = ControllerProcess::start_with_env(
        &support::kubeconfig(),
        &["--namespace", &env.ns.name, ENDPOINT_OVERRIDE],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
            ("AWS_ENDPOINT_URL_STS", &env.pca.endpoint),
        ],
        logs.path(),
    );
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    let mut ambient = env.pca.issuer_spec(&env.ca_arn);
    ambient.aws_pca.as_mut().unwrap().credentials_secret_ref = None;
    let mut with_role = ambient.clone();
    with_role.aws_pca.as_mut().unwrap().role_arn = Some("arn:aws:iam::123456789012:role/mesh-signer".into());
    issuer::create(&env.ns.api(), "ambient", ambient).await;
    issuer::create(&env.ns.api(), "ambient-role", with_role).await;
    for (name, hint) in [
        ("ambient", "--issuer-ambient-credentials=true"),
        ("ambient-role", "roleARN"),
    ] {
        let (reason, message) = support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), name, "False", TIMEOUT).await;
        assert_eq!(reason, "AmbientCredentialsDisabled", "{name}: {message}");
        assert!(
            message.contains(hint) && message.contains("--issuer-ambient-credentials=true"),
            "{name}: {message}"
        );
    }
    let cr = cm::pending_saying(
        &env.client,
        &env.ns.name,
        "waits",
        "ambient",
        "AmbientCredentialsDisabled",
        TIMEOUT,
    )
    .await;
    assert!(cr.status.unwrap().certificate.is_none());
    // Not one call reached PCA or STS with the controller's identity.
    let stats = env.pca.stats().await;
    assert_eq!(stats["calls"], serde_json::json!({}), "{stats}");
    assert_eq!(stats["role_sessions"], serde_json::json!([]), "{stats}");
    assert_eq!(stats["certificates_issued"], 0);
}

#[tokio::test]
async fn an_endpoint_override_on_a_namespaced_issuer_needs_the_operators_consent() {
    let env = env("trust-endpoint").await;
    // No --issuer-endpoint-override: the default.
    let _controller = RunningController::in_namespace(&env.ns.name).await;
    issuer::create(&env.ns.api(), "redirected", env.pca.issuer_spec(&env.ca_arn)).await;
    let (reason, message) = support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), "redirected", "False", TIMEOUT).await;
    assert_eq!(reason, "EndpointOverrideDisabled", "{message}");
    assert!(message.contains("--issuer-endpoint-override=true"), "{message}");
    assert_eq!(
        env.pca.stats().await["calls"],
        serde_json::json!({}),
        "no call went to the endpoint"
    );
}

// === 5. a PCA certificate is bound to its request ===

#[tokio::test]
async fn a_stored_arn_of_another_ca_or_another_key_is_failed_and_nothing_is_written() {
    let env = env("trust-binding").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let other_ca = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    issuer::create(&env.ns.api(), "a", env.pca.issuer_spec(&env.ca_arn)).await;
    issuer::create(&env.ns.api(), "b", env.pca.issuer_spec(&other_ca)).await;
    for name in ["a", "b"] {
        support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), name, "True", TIMEOUT).await;
    }
    // One honest certificate from each CA.
    let mut arns = BTreeMap::new();
    for (request, issuer) in [("from-a", "a"), ("from-b", "b")] {
        let key =
            cm::request_and_approve(&env.client, &env.ns.name, &IntermediateRequest::istiod(request, issuer)).await;
        let cr = cm::wait_for_reason(&env.client, &env.ns.name, request, &["Issued"], TIMEOUT).await;
        assert_chain_loads(&cr, &key);
        arns.insert(issuer, cr.annotations()[ARN_ANNOTATION].clone());
    }
    assert_eq!(env.pca.calls("IssueCertificate").await, 2);
    let gets_before = env.pca.calls("GetCertificate").await;

    // A fresh request `name` for issuer `a` that carries the stored ARN `arn`, once Failed with
    // nothing written: its Ready message.
    let failed_with_arn = async |name: &str, arn: &str| {
        let req = IntermediateRequest::istiod(name, "a");
        let (_, csr) = cm::make_key_and_csr(&req);
        let annotations = [(ARN_ANNOTATION, arn)];
        request_with(&env.client, &env.ns.name, &req, csr.as_bytes(), &annotations).await;
        wait_failed_unsigned(&env.client, &env.ns.name, name).await
    };
    // Another CA's certificate: refused before any call.
    let message = failed_with_arn("foreign-ca", &arns["b"]).await;
    assert!(
        message.contains("ARN check failed") && message.contains(&other_ca),
        "{message}"
    );
    assert_eq!(
        env.pca.calls("GetCertificate").await,
        gets_before,
        "another CA's certificate is never fetched"
    );

    // This CA's certificate, but for another key (the request "from-a"'s).
    let message = failed_with_arn("other-key", &arns["a"]).await;
    assert!(message.contains("public key check failed"), "{message}");

    // A certificate this CA does not have: permanent, not an endless wait on the issuer.
    let missing = format!("{}/certificate/00000000000000000000000000000000", env.ca_arn);
    let message = failed_with_arn("missing", &missing).await;
    assert!(message.contains("ResourceNotFoundException"), "{message}");

    // PCA says issuing the recorded certificate failed: permanent too.
    env.pca.inject("GetCertificate", "request_failed", 1).await;
    let message = failed_with_arn("request-failed", &arns["a"]).await;
    assert!(message.contains("RequestFailedException"), "{message}");

    assert_eq!(env.pca.calls("IssueCertificate").await, 2, "nothing more was signed");
    assert_eq!(env.pca.certificates_issued().await, 2);
}

#[tokio::test]
async fn an_unknown_client_error_is_retried_until_the_retry_deadline_then_failed() {
    let env = env("trust-unknown-4xx").await;
    let _controller = RunningController::in_namespace_with(
        &env.ns.name,
        &[
            ENDPOINT_OVERRIDE,
            "--retry-backoff-initial",
            "1s",
            "--max-retry-duration",
            "6s",
        ],
    )
    .await;
    ready_pca_issuer(&env).await;
    env.pca.inject("IssueCertificate", "unknown_client_error", 100).await;
    // First retried (Pending, no failureTime)...
    let pending = cm::pending(&env.client, &env.ns.name, "unknown", "pca", TIMEOUT).await;
    let message = cm::ready_message(&pending);
    assert!(message.contains("SomeNewClientException"), "{message}");
    assert!(pending.status.unwrap().failure_time.is_none());
    // ...then Failed at the deadline, never left waiting.
    let message = wait_failed_unsigned(&env.client, &env.ns.name, "unknown").await;
    assert!(message.contains("maximum retry duration"), "{message}");
    let calls = env.pca.calls("IssueCertificate").await;
    assert!(calls >= 2, "retried before giving up: {calls} calls");
    assert_eq!(env.pca.certificates_issued().await, 0);
}
