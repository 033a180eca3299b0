//! The AWS Private CA backend against a real ACM PCA API endpoint on loopback (moto's server
//! behind tests/fixtures/pca_fixture.py), reached through the real `aws-sdk-acmpca`, with the
//! controller on the real API server. Exactly-once issuance (also across SIGKILL), classified
//! errors, throttling, CA state, credentials, validity clamping.

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuerSpec, MeshCAIssuer};
use mesh_ca_issuer::pki::Certificate;
use support::cert_manager::{self as cm, IntermediateRequest, issued_parts};
use support::objects::create_secret;
use support::pca::{ACCESS_KEY_ID, ENDPOINT_OVERRIDE, PcaFixture, SECRET_ACCESS_KEY};
use support::{ControllerProcess, RunningController, eventually, issuer, openssl, wait_for_event};

const TIMEOUT: Duration = Duration::from_secs(45);
/// Without `credentialsSecretRef` a namespaced issuer uses the controller's own identity only
/// with the operator's consent (off by default).
const AMBIENT: &str = "--issuer-ambient-credentials=true";
const ARN_ANNOTATION: &str = "meshca.io/aws-pca-certificate-arn";

/// A test namespace with the `aws-creds` Secret and a PCA endpoint.
type Env = support::WithNamespace<Pca>;

struct Pca {
    pca: PcaFixture,
}

async fn env(prefix: &str) -> Env {
    let test = support::WithNamespace::start(prefix).await;
    let pca = PcaFixture::start();
    support::pca::create_credentials_secret(&test.ns.api()).await;
    test.with(Pca { pca })
}

async fn wait_issuer(env: &Env, name: &str, status: &str) -> (String, String) {
    support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), name, status, TIMEOUT).await
}

/// A CA with `key_algorithm` in the PCA and MeshCAIssuer `pca` for it, once Ready: where most
/// tests start, once their controller runs. The CA's ARN.
async fn ready_pca_issuer(env: &Env, key_algorithm: &str) -> String {
    let arn = env.pca.create_ca(key_algorithm, "GENERAL_PURPOSE", 3650).await;
    issuer::create(&env.ns.api(), "pca", env.pca.issuer_spec(&arn)).await;
    wait_issuer(env, "pca", "True").await;
    arn
}

#[tokio::test]
async fn an_istiod_intermediate_is_signed_by_the_pca_exactly_once() {
    let env = env("pca-happy").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let arn = env.pca.create_ca("RSA_2048", "GENERAL_PURPOSE", 3650).await;
    issuer::create(&env.ns.api(), "pca", env.pca.issuer_spec(&arn)).await;
    let (reason, message) = wait_issuer(&env, "pca", "True").await;
    assert_eq!(reason, "Verified", "{message}");
    let issuer = env.ns.api::<MeshCAIssuer>().get("pca").await.unwrap();
    let status = issuer.status.unwrap();
    assert_eq!(status.backend.as_deref(), Some("awsPCA"));
    assert!(status.ca.unwrap().subject.contains("Test PCA Root RSA_2048"));

    let cr = cm::istiod_until(&env.client, &env.ns.name, "istiod", "pca", "Issued", TIMEOUT).await;
    let (chain, root) = issued_parts(&cr);
    assert_eq!(chain.len(), 1, "the intermediate only; the root goes to status.ca");
    assert!(
        root.is_self_signed() && root.subject().contains("Test PCA Root"),
        "status.ca is the PCA root"
    );
    openssl::assert_istiod_intermediate(&cr);
    // The ARN was recorded on the request, and exactly one certificate was issued.
    let arn_recorded = cr.annotations().get(ARN_ANNOTATION).cloned().expect("ARN annotation");
    assert!(arn_recorded.starts_with(&arn));
    let stats = env.pca.stats().await;
    assert_eq!(stats["certificates_issued"], 1);
    assert_eq!(stats["calls"]["IssueCertificate"], 1);
    // GetCertificate may be called again after a conflict on the status write (the ARN is
    // fetched, never re-issued): a figure, not a property.
    println!(
        "normal request: IssueCertificate calls {}, GetCertificate calls {}, certificates issued {}",
        stats["calls"]["IssueCertificate"], stats["calls"]["GetCertificate"], stats["certificates_issued"]
    );
    assert_eq!(
        stats["issued"][0]["template"],
        "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
    );
    assert_eq!(
        stats["issued"][0]["token"],
        cr.uid().unwrap(),
        "the idempotency token is the request's UID"
    );
    let note = wait_for_event(&env.client, &env.ns.name, "istiod", "Issued").await;
    assert!(note.contains("(awsPCA)"), "{note}");
}

#[tokio::test]
async fn the_signing_algorithm_follows_the_cas_key_not_the_csrs() {
    let env = env("pca-algorithms").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let cases = [
        // (CA key, CSR key, algorithm PCA must be asked for, openssl's name for it)
        ("RSA_2048", "ECDSA", "SHA256WITHRSA", "sha256WithRSAEncryption"),
        ("EC_prime256v1", "RSA", "SHA256WITHECDSA", "ecdsa-with-SHA256"),
        ("EC_secp384r1", "ECDSA", "SHA384WITHECDSA", "ecdsa-with-SHA384"),
    ];
    for (i, (ca_key, csr_key, _, _)) in cases.iter().enumerate() {
        let arn = env.pca.create_ca(ca_key, "GENERAL_PURPOSE", 3650).await;
        issuer::create(&env.ns.api(), &format!("pca-{i}"), env.pca.issuer_spec(&arn)).await;
        wait_issuer(&env, &format!("pca-{i}"), "True").await;
        let req = IntermediateRequest {
            key_algorithm: csr_key.to_string(),
            ..IntermediateRequest::istiod(&format!("r-{i}"), &format!("pca-{i}"))
        };
        cm::request_and_approve(&env.client, &env.ns.name, &req).await;
    }
    let stats = env.pca.stats().await;
    for (i, (_, _, algorithm, openssl_name)) in cases.iter().enumerate() {
        let cr = cm::wait_for_reason(&env.client, &env.ns.name, &format!("r-{i}"), &["Issued"], TIMEOUT).await;
        let arn = cr.annotations().get(ARN_ANNOTATION).cloned().unwrap();
        let issued = stats["issued"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["arn"] == arn.as_str());
        let issued = match issued {
            Some(c) => c.clone(),
            None => env.pca.stats().await["issued"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["arn"] == arn.as_str())
                .cloned()
                .unwrap(),
        };
        assert_eq!(issued["signing_algorithm"], *algorithm, "case {i}");
        let certificate = cr.status.unwrap().certificate.unwrap();
        let text = openssl::text(&certificate);
        assert!(
            text.contains(&format!("Signature Algorithm: {openssl_name}")),
            "case {i}: {text}"
        );
    }
}

/// Runs the controller binary (no failpoint) until `request` is Issued, then stops it.
async fn restart_until_issued(env: &Env, request: &str, logs: &std::path::Path) {
    let mut controller = ControllerProcess::start(&["--namespace", &env.ns.name, ENDPOINT_OVERRIDE], logs);
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    cm::wait_for_reason(&env.client, &env.ns.name, request, &["Issued"], TIMEOUT).await;
}

/// Runs the controller binary with a failpoint until it stops there, then SIGKILLs it.
async fn crash_at(env: &Env, failpoint: &str, request: &str, logs: &std::path::Path) {
    let kubeconfig = support::kubeconfig();
    let mut controller = ControllerProcess::start_with_env(
        &kubeconfig,
        &["--namespace", &env.ns.name, ENDPOINT_OVERRIDE],
        &[("MESHCA_FAILPOINT", failpoint)],
        logs,
    );
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    cm::request_and_approve(&env.client, &env.ns.name, &IntermediateRequest::istiod(request, "pca")).await;
    let reached = eventually(TIMEOUT, || async {
        controller
            .log()
            .contains(&format!("failpoint {failpoint} reached"))
            .then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "failpoint {failpoint} not reached: {}",
        controller.log()
    );
    let pid = controller.child.id().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let _ = controller.child.wait();
}

#[tokio::test]
async fn a_crash_between_issue_and_status_never_issues_twice() {
    let env = env("pca-crash").await;
    let arn = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    issuer::create(&env.ns.api(), "pca", env.pca.issuer_spec(&arn)).await;
    let logs = tempfile::tempdir().unwrap();

    // 1. Killed right after IssueCertificate returned, before the ARN was recorded.
    crash_at(&env, "after-issue-certificate", "crash-1", logs.path()).await;
    let cr = env.ns.api::<CertificateRequest>().get("crash-1").await.unwrap();
    assert!(
        cr.annotations().get(ARN_ANNOTATION).is_none(),
        "the ARN was not recorded before the crash"
    );
    assert_eq!(env.pca.certificates_issued().await, 1);
    // Restarted: the request ends Issued with the certificate already issued for it.
    restart_until_issued(&env, "crash-1", logs.path()).await;
    assert_eq!(
        env.pca.certificates_issued().await,
        1,
        "no second certificate after the restart"
    );

    // 2. Killed right after the ARN was recorded, before the status was written.
    crash_at(&env, "after-arn-annotation", "crash-2", logs.path()).await;
    let cr = env.ns.api::<CertificateRequest>().get("crash-2").await.unwrap();
    assert!(
        cr.annotations().get(ARN_ANNOTATION).is_some(),
        "the ARN was recorded before the crash"
    );
    assert!(
        cr.condition("Ready")
            .is_none_or(|c| c.reason.as_deref() != Some("Issued"))
    );
    assert_eq!(env.pca.certificates_issued().await, 2);
    restart_until_issued(&env, "crash-2", logs.path()).await;

    let stats = env.pca.stats().await;
    assert_eq!(stats["certificates_issued"], 2, "one certificate per request: {stats}");
    // crash-1 called IssueCertificate twice (same token, same ARN); crash-2 once.
    assert_eq!(stats["calls"]["IssueCertificate"], 3, "{stats}");
    let arns: Vec<String> = futures::future::join_all(["crash-1", "crash-2"].map(|n| async {
        env.ns.api::<CertificateRequest>().get(n).await.unwrap().annotations()[ARN_ANNOTATION].clone()
    }))
    .await;
    let issued: Vec<String> = stats["issued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["arn"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        arns.iter().filter(|a| issued.contains(a)).count(),
        2,
        "each request holds the certificate that was issued for it"
    );
    println!(
        "crash test: IssueCertificate calls {}, GetCertificate calls {}, certificates issued {}",
        stats["calls"]["IssueCertificate"], stats["calls"]["GetCertificate"], stats["certificates_issued"]
    );
}

#[tokio::test]
async fn throttling_and_server_errors_keep_requests_pending_then_issue_once() {
    let env = env("pca-throttle").await;
    // A 1 s initial back-off keeps the test short; the schedule is the production one otherwise.
    let _controller =
        RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE, "--retry-backoff-initial", "1s"]).await;
    ready_pca_issuer(&env, "EC_prime256v1").await;
    // The first three IssueCertificate calls are throttled, the fourth gets a 500; the new
    // certificate then answers RequestInProgress to its first GetCertificate.
    env.pca.inject("IssueCertificate", "throttle", 3).await;
    env.pca.inject("IssueCertificate", "server_error", 1).await;
    env.pca.pending_gets(1).await;
    let started = std::time::Instant::now();
    let pending = cm::pending(&env.client, &env.ns.name, "throttled", "pca", TIMEOUT).await;
    let message = cm::ready_message(&pending);
    assert!(message.contains("ThrottlingException"), "{message}");
    assert!(
        pending.status.as_ref().unwrap().failure_time.is_none(),
        "never Failed for a transient error"
    );
    let cr = cm::wait_for_reason(
        &env.client,
        &env.ns.name,
        "throttled",
        &["Issued", "Failed"],
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(cr.condition("Ready").unwrap().reason.as_deref(), Some("Issued"));
    let elapsed = started.elapsed();
    let stats = env.pca.stats().await;
    assert_eq!(stats["certificates_issued"], 1, "{stats}");
    // Bounded by the back-off: four failures and the call that worked, nothing more.
    assert_eq!(stats["calls"]["IssueCertificate"], 5, "{stats}");
    assert_eq!(stats["calls"]["GetCertificate"], 2, "{stats}");
    // 1 + 2 + 4 + 8 s of back-off (±10 %) before the fifth call.
    assert!(
        elapsed >= Duration::from_millis(13_500),
        "retries came faster than the back-off: {elapsed:?}"
    );
    println!(
        "throttle test: IssueCertificate calls {}, GetCertificate calls {}, certificates issued {}, {:.1}s",
        stats["calls"]["IssueCertificate"],
        stats["calls"]["GetCertificate"],
        stats["certificates_issued"],
        elapsed.as_secs_f64()
    );
}

#[tokio::test]
async fn requests_pca_refuses_fail_and_malformed_csrs_never_reach_it() {
    let env = env("pca-malformed").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    ready_pca_issuer(&env, "RSA_2048").await;
    // A CSR that is not a CSR is refused before any billed call.
    let req = IntermediateRequest::istiod("garbage", "pca");
    cm::create_request(
        &env.client,
        &env.ns.name,
        &req,
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await;
    cm::approve(&env.client, &env.ns.name, "garbage").await;
    cm::wait_for_reason(&env.client, &env.ns.name, "garbage", &["Failed"], TIMEOUT).await;
    assert_eq!(env.pca.calls("IssueCertificate").await, 0);
    // A CSR PCA itself rejects (MalformedCSRException): Failed, with PCA's words.
    env.pca.inject("IssueCertificate", "malformed_csr", 1).await;
    let cr = cm::istiod_until(&env.client, &env.ns.name, "rejected", "pca", "Failed", TIMEOUT).await;
    let message = cm::ready_message(&cr);
    assert!(message.contains("MalformedCSRException"), "{message}");
    assert!(cr.status.unwrap().failure_time.is_some());
    assert_eq!(env.pca.certificates_issued().await, 0);
}

/// A template or CA setting that changes what was asked for (one level deeper, an extra SAN,
/// another subject, a longer life) is caught before anything is handed out: the request fails
/// naming the field, once, with no second billed call.
#[tokio::test]
async fn a_certificate_that_differs_from_the_request_is_never_handed_out() {
    let env = env("pca-tamper").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    ready_pca_issuer(&env, "RSA_2048").await;
    let cases = [
        (
            "path-len",
            "path_len",
            "it is a CA with pathLen 1, the plan is pathLen 0",
        ),
        ("extra-san", "extra_san", "subject alternative names are"),
        ("subject", "subject", "its subject is"),
        ("longer", "longer", "after the planned"),
    ];
    for (i, (name, kind, expected)) in cases.into_iter().enumerate() {
        env.pca.tamper(Some(kind)).await;
        cm::request_and_approve(&env.client, &env.ns.name, &IntermediateRequest::istiod(name, "pca")).await;
        let cr = cm::wait_for_reason(&env.client, &env.ns.name, name, &["Failed"], TIMEOUT).await;
        let message = cr.condition("Ready").unwrap().message.clone().unwrap();
        assert!(
            message.contains("differs from the request, so it is not used") && message.contains(expected),
            "{name}: {message}"
        );
        let status = cr.status.unwrap();
        assert!(
            status.certificate.is_none() && status.ca.is_none(),
            "{name}: nothing handed out"
        );
        assert_eq!(env.pca.certificates_issued().await, i as u64 + 1, "{name}: issued once");
    }
    // Faithful again: the next request is issued.
    env.pca.tamper(None).await;
    cm::request_and_approve(
        &env.client,
        &env.ns.name,
        &IntermediateRequest::istiod("faithful", "pca"),
    )
    .await;
    cm::wait_for_reason(&env.client, &env.ns.name, "faithful", &["Issued"], TIMEOUT).await;
}

#[tokio::test]
async fn a_disabled_ca_makes_requests_wait_until_it_is_enabled() {
    let env = env("pca-disabled").await;
    let _controller =
        RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE, "--issuer-recheck-interval", "2s"])
            .await;
    let arn = ready_pca_issuer(&env, "EC_prime256v1").await;
    env.pca.set_ca_status(&arn, "DISABLED").await;
    let message = support::wait_issuer_reason(&env.ns.api::<MeshCAIssuer>(), "pca", "CADisabled", TIMEOUT).await;
    assert!(
        message.contains("DISABLED") && message.contains("enable it"),
        "{message}"
    );
    let cr = cm::pending(&env.client, &env.ns.name, "waits", "pca", TIMEOUT).await;
    assert!(
        cm::ready_message(&cr).contains("CADisabled"),
        "{}",
        cm::ready_message(&cr)
    );
    // Enabled again: issued without anyone touching the request.
    env.pca.set_ca_status(&arn, "ACTIVE").await;
    cm::wait_for_reason(&env.client, &env.ns.name, "waits", &["Issued"], TIMEOUT).await;
    assert_eq!(env.pca.certificates_issued().await, 1);
}

#[tokio::test]
async fn a_ca_disabled_since_the_issuers_last_check_is_named_by_its_state() {
    // The issuer was checked while the CA was ACTIVE and is not checked again for an hour, so
    // the request is signed with that description and IssueCertificate finds the CA disabled.
    // The request must say which state the CA is in and what to do, as the issuer would.
    let env = env("pca-disabled-since").await;
    let _controller =
        RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE, "--issuer-recheck-interval", "1h"])
            .await;
    let arn = ready_pca_issuer(&env, "EC_prime256v1").await;
    env.pca.set_ca_status(&arn, "DISABLED").await;
    let cr = cm::pending(&env.client, &env.ns.name, "waits", "pca", TIMEOUT).await;
    let message = cm::ready_message(&cr);
    assert!(
        message.contains("CADisabled") && message.contains("enable it"),
        "{message}"
    );
    assert_eq!(env.pca.certificates_issued().await, 0);
}

#[tokio::test]
async fn unknown_arns_and_bad_credentials_say_what_to_fix() {
    let env = env("pca-config").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let arn = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    let unknown = "arn:aws:acm-pca:us-east-1:123456789012:certificate-authority/00000000-0000-0000-0000-000000000000";
    issuer::create(&env.ns.api(), "unknown", env.pca.issuer_spec(unknown)).await;
    let bad = serde_json::json!({
        "metadata": {"name": "bad-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIDWRONG", "AWS_SECRET_ACCESS_KEY": "nope-nope-nope-secret"}
    });
    create_secret(&env.ns.api(), bad).await;
    let mut spec = env.pca.issuer_spec(&arn);
    spec.aws_pca
        .as_mut()
        .unwrap()
        .credentials_secret_ref
        .as_mut()
        .unwrap()
        .name = "bad-creds".into();
    issuer::create(&env.ns.api(), "bad-creds", spec).await;
    let mut malformed = env.pca.issuer_spec("arn:aws:acm-pca:nowhere");
    malformed.aws_pca.as_mut().unwrap().endpoint = Some(env.pca.endpoint.clone());
    issuer::create(&env.ns.api(), "malformed", malformed).await;
    let cases = [
        ("unknown", "CANotFound", "check spec.awsPCA.arn"),
        (
            "bad-creds",
            "InvalidCredentials",
            "fix the Secret named by credentialsSecretRef",
        ),
        ("malformed", "InvalidSpec", "is not an AWS Private CA ARN"),
    ];
    for (name, reason, hint) in cases {
        // A transient API error may be reported first; the lasting reason is what must come.
        let message = support::wait_issuer_reason(&env.ns.api::<MeshCAIssuer>(), name, reason, TIMEOUT).await;
        assert!(message.contains(hint), "{name}: {message}");
        assert!(
            !message.contains("nope-nope-nope-secret") && !message.contains(SECRET_ACCESS_KEY),
            "no secrets in conditions"
        );
    }
    assert_eq!(env.pca.certificates_issued().await, 0);
}

/// Runs the controller binary with the environment `vars` (and `--issuer-ambient-credentials`
/// when `ambient`), has it sign one istiod intermediate through an issuer with `spec` (the CA's
/// ARN filled in), checks the chain with openssl and returns the fixture's stats.
async fn issue_once_with(env: &Env, vars: &[(&str, &str)], ambient: bool, mut spec: IssuerSpec) -> serde_json::Value {
    let logs = tempfile::tempdir().unwrap();
    let mut flags = vec!["--namespace", env.ns.name.as_str(), ENDPOINT_OVERRIDE];
    if ambient {
        flags.push(AMBIENT);
    }
    let mut controller = ControllerProcess::start_with_env(&support::kubeconfig(), &flags, vars, logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    let arn = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    spec.aws_pca.as_mut().unwrap().arn = arn;
    issuer::create(&env.ns.api(), "pca", spec).await;
    let (reason, message) = wait_issuer(env, "pca", "True").await;
    assert_eq!(reason, "Verified", "{message}\n{}", controller.log());
    let cr = cm::istiod_until(&env.client, &env.ns.name, "istiod", "pca", "Issued", TIMEOUT).await;
    let status = cr.status.clone().unwrap();
    assert_eq!(
        openssl::verify(&status.ca.unwrap(), &status.certificate.unwrap()),
        "chain.pem: OK"
    );
    let log = controller.log();
    assert!(!log.contains(SECRET_ACCESS_KEY), "no secret key in the log");
    let stats = env.pca.stats().await;
    assert_eq!(stats["certificates_issued"], 1);
    stats
}

/// The access keys PCA accepted calls from.
fn pca_callers(stats: &serde_json::Value) -> Vec<String> {
    stats["pca_callers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

const ROLE: &str = "arn:aws:iam::123456789012:role/mesh-ca-issuer-signer";

/// The STS sessions the fixture saw: at least one, each `action` on [`ROLE`].
fn role_sessions<'a>(stats: &'a serde_json::Value, action: &str) -> &'a [serde_json::Value] {
    let sessions = stats["role_sessions"].as_array().unwrap();
    assert!(!sessions.is_empty(), "no {action}: {stats}");
    for session in sessions {
        assert_eq!(session["action"], action);
        assert_eq!(session["role_arn"], ROLE);
    }
    sessions
}

/// With `roleARN`, the Secret's credentials only assume the role (STS at `AWS_ENDPOINT_URL_STS`,
/// the SDK's standard override, here moto's STS) and PCA is called with the role's.
#[tokio::test]
async fn with_a_role_arn_pca_is_called_with_the_assumed_roles_credentials() {
    let env = env("pca-role").await;
    // The Secret's key may assume the role, but is refused by PCA itself.
    env.pca.allow_keys(&[]).await;
    let mut spec = env.pca.issuer_spec("");
    spec.aws_pca.as_mut().unwrap().role_arn = Some(ROLE.to_string());
    let stats = issue_once_with(&env, &[("AWS_ENDPOINT_URL_STS", &env.pca.endpoint)], false, spec).await;
    for session in role_sessions(&stats, "AssumeRole") {
        assert_eq!(session["session_name"], "mesh-ca-issuer");
        assert_eq!(session["caller"], ACCESS_KEY_ID, "the Secret's key assumes the role");
    }
    let callers = pca_callers(&stats);
    assert!(!callers.is_empty());
    assert!(
        !callers.iter().any(|k| k == ACCESS_KEY_ID),
        "PCA is never called with the Secret's key: {callers:?}"
    );
}

/// Without `credentialsSecretRef`, the SDK's default chain: keys from the environment.
#[tokio::test]
async fn without_a_credentials_secret_keys_come_from_the_environment() {
    let env = env("pca-env-keys").await;
    let mut spec = env.pca.issuer_spec("");
    spec.aws_pca.as_mut().unwrap().credentials_secret_ref = None;
    let stats = issue_once_with(
        &env,
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
        true,
        spec,
    )
    .await;
    assert_eq!(pca_callers(&stats), [ACCESS_KEY_ID]);
}

/// Without `credentialsSecretRef`, the SDK's default chain: a web identity token (IRSA, as EKS
/// injects it) exchanged at STS for the role's credentials.
#[tokio::test]
async fn without_a_credentials_secret_a_web_identity_token_is_exchanged_for_the_role() {
    let env = env("pca-irsa").await;
    // Only keys STS hands out may call PCA.
    env.pca.allow_keys(&[]).await;
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, "projected-service-account-token").unwrap();
    let mut spec = env.pca.issuer_spec("");
    spec.aws_pca.as_mut().unwrap().credentials_secret_ref = None;
    let stats = issue_once_with(
        &env,
        &[
            ("AWS_ENDPOINT_URL_STS", &env.pca.endpoint),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", ROLE),
            ("AWS_ROLE_SESSION_NAME", "mesh-ca-issuer-irsa"),
        ],
        true,
        spec,
    )
    .await;
    for session in role_sessions(&stats, "AssumeRoleWithWebIdentity") {
        assert_eq!(session["web_identity_token"], "projected-service-account-token");
    }
    assert!(!pca_callers(&stats).is_empty());
}

#[tokio::test]
async fn validity_is_clamped_to_the_ca_and_to_seven_days_for_a_short_lived_ca() {
    let env = env("pca-validity").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let month = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 30).await;
    let short = env
        .pca
        .create_ca("EC_prime256v1", "SHORT_LIVED_CERTIFICATE", 3650)
        .await;
    issuer::create(&env.ns.api(), "month", env.pca.issuer_spec(&month)).await;
    issuer::create(&env.ns.api(), "short", env.pca.issuer_spec(&short)).await;
    wait_issuer(&env, "month", "True").await;
    wait_issuer(&env, "short", "True").await;
    cm::request_and_approve(
        &env.client,
        &env.ns.name,
        &IntermediateRequest::istiod("from-month", "month"),
    )
    .await;
    cm::request_and_approve(
        &env.client,
        &env.ns.name,
        &IntermediateRequest::istiod("from-short", "short"),
    )
    .await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "from-month", &["Issued"], TIMEOUT).await;
    let (chain, root) = issued_parts(&cr);
    assert_eq!(chain[0].not_after(), root.not_after(), "clamped to the CA's notAfter");
    let note = wait_for_event(&env.client, &env.ns.name, "from-month", "Issued").await;
    assert!(
        note.contains("shortened from the requested 2160h: the signing CA expires at"),
        "{note}"
    );
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "from-short", &["Issued"], TIMEOUT).await;
    let (chain, _) = issued_parts(&cr);
    let left = chain[0].not_after().duration_since(jiff::Timestamp::now());
    assert!(
        left <= jiff::SignedDuration::from_hours(7 * 24) && left > jiff::SignedDuration::from_hours(7 * 24 - 1),
        "{left:?}"
    );
    let note = wait_for_event(&env.client, &env.ns.name, "from-short", "Issued").await;
    assert!(note.contains("at most 168h"), "{note}");
}

#[tokio::test]
async fn no_credentials_or_keys_in_logs_events_or_conditions() {
    let env = env("pca-no-secrets").await;
    let logs = tempfile::tempdir().unwrap();
    let mut controller = ControllerProcess::start(
        &["--namespace", &env.ns.name, ENDPOINT_OVERRIDE, "--log-level", "debug"],
        logs.path(),
    );
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    ready_pca_issuer(&env, "EC_prime256v1").await;
    let (_, key) = cm::request_until(
        &env.client,
        &env.ns.name,
        &IntermediateRequest::istiod("good", "pca"),
        &["Issued"],
        TIMEOUT,
    )
    .await;
    wait_for_event(&env.client, &env.ns.name, "good", "Issued").await;
    let mut haystack = controller.log();
    for name in ["pca", "good"] {
        for (_, reason, note) in support::events_for(&env.client, &env.ns.name, name).await {
            haystack.push_str(&format!("\n{reason}: {note}"));
        }
    }
    haystack.push_str(&format!(
        "{:?}",
        env.ns.api::<MeshCAIssuer>().get("pca").await.unwrap().status
    ));
    assert!(haystack.contains("Issued"), "the haystack holds what was said");
    assert!(!haystack.contains(SECRET_ACCESS_KEY), "the secret access key leaked");
    assert!(!haystack.contains("PRIVATE KEY"));
    let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!haystack.contains(&body[10..42]), "key material leaked");
}

/// Revocation's proof 4, under AWS Private CA: PCA cannot sign the root's CRL here and this
/// backend fetches none, so with no CRL in `spec.crlFrom` `ca-crl.pem` is not written, the
/// condition names the PCA root and why, and the intermediate still renews normally. A corrupt
/// `crlFrom` (not a CRL) and a forged one (a CRL with the PCA root's name, signed by another
/// key) are refused by name, and nothing is written.
#[tokio::test]
async fn a_pca_chain_without_a_crl_writes_no_ca_crl_pem_and_still_renews() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    use mesh_ca_issuer::api::issuer::{ConfigMapKeySelector, CrlFrom};
    use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec, Revocation};
    const SOURCE: &str = "istiod-intermediate";
    let env = env("pca-crl").await;
    let _controller = RunningController::in_namespace_with(&env.ns.name, &[ENDPOINT_OVERRIDE]).await;
    let arn = env.pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    let spec = IssuerSpec {
        crl_from: Some(CrlFrom {
            config_map_key_ref: Some(ConfigMapKeySelector {
                name: "pca-crl".into(),
                key: "crl.pem".into(),
            }),
            ..Default::default()
        }),
        ..env.pca.issuer_spec(&arn)
    };
    issuer::create(&env.ns.api(), "pca", spec).await;
    wait_issuer(&env, "pca", "True").await;
    let issue = |name: &'static str| {
        let env = &env;
        async move {
            let req = IntermediateRequest {
                certificate: Some(SOURCE.into()),
                ..IntermediateRequest::istiod(name, "pca")
            };
            let (cr, key) = cm::request_until(&env.client, &env.ns.name, &req, &["Issued"], TIMEOUT).await;
            cm::write_certificate_secret(&env.client, &env.ns.name, SOURCE, &cr, &key).await;
            issued_parts(&cr)
        }
    };
    let (first, root) = issue("istiod-1").await;
    let iccs = env.ns.api::<IstioCACerts>();
    let spec = IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        revocation: Some(Revocation {
            enabled: true,
            crl_validity: "72h".into(),
            refresh_before: None,
        }),
        ..Default::default()
    };
    support::objects::create_icc(&iccs, "istiod", spec).await;
    let condition = |type_: &'static str| {
        let iccs = &iccs;
        async move {
            let icc = iccs.get("istiod").await.ok()?;
            icc.status?.conditions.into_iter().find(|c| c.type_ == type_)
        }
    };
    let cacerts = || async {
        let secret = env.ns.api::<Secret>().get_opt("cacerts").await.ok()??;
        Some(support::objects::data(&secret))
    };
    // Waits until cacerts holds `intermediate` and CRLsCurrent says `reason` with `text`.
    let settled = |intermediate: Certificate, text: &'static str| {
        let (condition, cacerts) = (&condition, &cacerts);
        async move {
            let found =
                eventually(TIMEOUT, || async {
                    let data = cacerts().await?;
                    let held = Certificate::parse_pem_bundle(&data["ca-cert.pem"], "ca-cert.pem")
                        .ok()?
                        .remove(0);
                    let crls = condition("CRLsCurrent").await?;
                    let ready = condition("Ready").await?;
                    (held == intermediate && crls.reason == "CRLUnavailable" && crls.message.contains(text))
                        .then_some((data, crls.message, ready.reason))
                })
                .await;
            found.unwrap_or_else(|| {
                panic!(
                    "cacerts with {} and CRLUnavailable naming {text:?}",
                    intermediate.subject()
                )
            })
        }
    };

    let (data, message, ready) = settled(first[0].clone(), "(spec.crlFrom) not found").await;
    assert!(!data.contains_key("ca-crl.pem"), "no CRL set without the root's CRL");
    assert!(
        message.contains(&root.subject()),
        "names the CA without a CRL: {message}"
    );
    assert_eq!(ready, "Synced", "cacerts is written as usual");
    assert_eq!(support::goverify::istiod_loads(&data), Ok(()));

    // Corrupt: not a CRL at all.
    let configmaps = env.ns.api::<ConfigMap>();
    let put = |value: String| {
        let configmaps = &configmaps;
        async move {
            let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pca-crl"}, "data": {"crl.pem": value}});
            configmaps
                .patch("pca-crl", &PatchParams::apply("test").force(), &Patch::Apply(&cm))
                .await
                .unwrap();
        }
    };
    put("-----BEGIN X509 CRL-----\nbm90IGEgQ1JM\n-----END X509 CRL-----\n".into()).await;
    // The renewal goes through meanwhile, without CRLs.
    let (second, _) = issue("istiod-2").await;
    let (data, message, ready) = settled(second[0].clone(), "is refused: not a CRL").await;
    assert!(!data.contains_key("ca-crl.pem") && ready == "Synced", "{message}");

    // Forged: a CRL with the PCA root's name, signed by another key.
    let (other, other_key) = mesh_ca_issuer::pki::sign::self_signed_root(
        &mesh_ca_issuer::api::issuer::RootBootstrap::default(),
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
    )
    .unwrap();
    let forged = mesh_ca_issuer::pki::crl::issue(
        &mesh_ca_issuer::pki::crl::CrlSpec {
            number: 1,
            this_update: jiff::Timestamp::now(),
            next_update: jiff::Timestamp::now() + jiff::SignedDuration::from_hours(72),
            revoked: vec![],
        },
        &mesh_ca_issuer::pki::sign::CaSigner {
            certificate: &other,
            key: &other_key,
        },
    )
    .unwrap();
    put(forged.to_pem()).await;
    iccs.patch(
        "istiod",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"test/look-again": "1"}}})),
    )
    .await
    .unwrap();
    let (data, message, _) = settled(second[0].clone(), "is signed by no CA of cert-chain.pem").await;
    assert!(!data.contains_key("ca-crl.pem"), "{message}");
    assert!(
        !message.contains("is refused: not a CRL"),
        "the new source was read: {message}"
    );
}
