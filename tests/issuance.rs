//! The external-issuer contract on the real API server, with the local root backend: each
//! point of cert-manager's contract, the certificate we sign (judged by openssl), and every
//! kind of bad input.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuancePolicy, IssuerSpec, LocalCA, MeshCAIssuer, RootBootstrap};
use mesh_ca_issuer::pki::Certificate;
use support::cert_manager::{self as cm, IntermediateRequest};
use support::objects::{create_secret, create_tls_secret};
use support::{RunningController, eventually, issuer, openssl, wait_for_event};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace with a controller watching only it.
type Env = support::WithNamespace<RunningController>;

async fn env(prefix: &str) -> Env {
    Env::controlled(prefix, &[]).await
}

fn local_ca(secret: &str, bootstrap: Option<RootBootstrap>) -> IssuerSpec {
    IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: secret.into(),
            bootstrap,
        }),
        ..Default::default()
    }
}

async fn create_issuer(env: &Env, name: &str, spec: IssuerSpec) {
    issuer::create(&env.ns.api(), name, spec).await;
}

/// Waits for the issuer's Ready condition to have `status` and returns (reason, message).
async fn wait_issuer(env: &Env, name: &str, status: &str) -> (String, String) {
    support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), name, status, TIMEOUT).await
}

async fn ready_issuer(env: &Env, name: &str) {
    issuer::create_ready_with_own_root(&env.ns.api(), name, TIMEOUT).await;
}

/// Stops bootstrapping the issuer's root Secret (`<name>-root`), so a Secret the test changes
/// or deletes is not made again behind its back, and waits for the issuer to be Ready again.
async fn stop_bootstrapping(env: &Env, name: &str) {
    let issuers: Api<MeshCAIssuer> = env.ns.api();
    let patch = serde_json::json!({"spec": {"localCA": {"secretName": format!("{name}-root"), "bootstrap": null}}});
    issuers
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_issuer(env, name, "True").await;
}

/// An istiod intermediate request to `issuer`, approved, once it is Issued.
async fn request_issued(env: &Env, name: &str, issuer: &str) -> CertificateRequest {
    cm::request_and_approve(&env.client, &env.ns.name, &IntermediateRequest::istiod(name, issuer)).await;
    cm::wait_for_reason(&env.client, &env.ns.name, name, &["Issued"], TIMEOUT).await
}

async fn get_cr(env: &Env, name: &str) -> CertificateRequest {
    env.ns.api::<CertificateRequest>().get(name).await.unwrap()
}

#[tokio::test]
async fn approved_request_is_issued_with_the_intermediate_and_the_root_in_one_write() {
    let env = env("issue-happy").await;
    ready_issuer(&env, "mesh").await;
    let cr = cm::istiod_until(&env.client, &env.ns.name, "istiod", "mesh", "Issued", TIMEOUT).await;

    let status = cr.status.clone().unwrap();
    let chain = Certificate::parse_pem_bundle(status.certificate.as_deref().unwrap(), "status.certificate").unwrap();
    let root = Certificate::parse_pem_bundle(status.ca.as_deref().unwrap(), "status.ca").unwrap();
    assert_eq!(
        chain.len(),
        1,
        "status.certificate holds the intermediate only: root excluded"
    );
    assert_eq!(root.len(), 1);
    assert!(root[0].is_self_signed());
    // The root in status.ca is the issuer's root.
    let root_secret: Secret = env.ns.api().get("mesh-root").await.unwrap();
    let root_in_secret = &root_secret.data.unwrap()["tls.crt"].0;
    assert_eq!(
        Certificate::parse_pem_bundle(root_in_secret, "tls.crt").unwrap()[0],
        root[0]
    );

    // Judged by openssl, not only by our own code.
    assert_eq!(
        openssl::verify(status.ca.as_deref().unwrap(), status.certificate.as_deref().unwrap()),
        "chain.pem: OK"
    );
    let text = openssl::text(status.certificate.as_deref().unwrap());
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains("X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign"),
        "{text}"
    );
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/istio-system/sa/istiod"),
        "{text}"
    );
    // The CSR's subject, exactly (our signer compares the DER too).
    assert!(
        text.contains("Subject: O = cluster.local, CN = istiod intermediate"),
        "{text}"
    );
    // cert-manager's default lifetime: 90 days from signing.
    let remaining = chain[0].not_after().duration_since(jiff::Timestamp::now());
    assert!(
        (remaining.as_secs() - 2160 * 3600).abs() <= 120,
        "notAfter is {remaining:?} away"
    );

    let ready = cr.condition("Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_deref()),
        ("True", Some("Issued"))
    );
    assert!(cr.status.unwrap().failure_time.is_none());
    let note = wait_for_event(&env.client, &env.ns.name, "istiod", "Issued").await;
    assert!(note.contains(&format!("MeshCAIssuer {}/mesh", env.ns.name)), "{note}");
}

#[tokio::test]
async fn foreign_and_unapproved_requests_get_no_write() {
    let env = env("issue-foreign").await;
    ready_issuer(&env, "mesh").await;
    // Another issuer's group, and our group with a kind that is not ours (no kind fallback).
    let foreign_group = IntermediateRequest {
        issuer_group: "cert-manager.io".into(),
        issuer_kind: "Issuer".into(),
        ..IntermediateRequest::istiod("foreign-group", "mesh")
    };
    let foreign_kind = IntermediateRequest {
        issuer_kind: "Issuer".into(),
        ..IntermediateRequest::istiod("foreign-kind", "mesh")
    };
    cm::request_and_approve(&env.client, &env.ns.name, &foreign_group).await;
    cm::request_and_approve(&env.client, &env.ns.name, &foreign_kind).await;
    // Ours, but not approved yet.
    let (_, csr) = cm::make_key_and_csr(&IntermediateRequest::istiod("unapproved", "mesh"));
    cm::create_request(
        &env.client,
        &env.ns.name,
        &IntermediateRequest::istiod("unapproved", "mesh"),
        csr.as_bytes(),
    )
    .await;
    // A request that is ours and approved, as a witness that the controller is working.
    cm::istiod_until(&env.client, &env.ns.name, "witness", "mesh", "Issued", TIMEOUT).await;
    let before: Vec<(String, Option<String>)> = futures::future::join_all(
        ["foreign-group", "foreign-kind", "unapproved"]
            .map(|n| async { (n.to_string(), get_cr(&env, n).await.resource_version()) }),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, rv) in before {
        let cr = get_cr(&env, &name).await;
        assert_eq!(cr.resource_version(), rv, "{name} was written to");
        assert!(cr.condition("Ready").is_none(), "{name} got a Ready condition");
        assert!(
            support::events_for(&env.client, &env.ns.name, &name).await.is_empty(),
            "{name} got events"
        );
    }
    // Approval is all it takes for the unapproved one.
    cm::approve(&env.client, &env.ns.name, "unapproved").await;
    cm::wait_for_reason(&env.client, &env.ns.name, "unapproved", &["Issued"], TIMEOUT).await;
}

#[tokio::test]
async fn denied_request_is_never_signed() {
    let env = env("issue-denied").await;
    ready_issuer(&env, "mesh").await;
    let req = IntermediateRequest::istiod("denied", "mesh");
    let (_, csr) = cm::make_key_and_csr(&req);
    cm::create_request(&env.client, &env.ns.name, &req, csr.as_bytes()).await;
    cm::deny(
        &env.client,
        &env.ns.name,
        "denied",
        "istiod intermediates need a change ticket",
    )
    .await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "denied", &["Denied"], TIMEOUT).await;
    let status = cr.status.clone().unwrap();
    assert!(status.failure_time.is_some());
    assert!(status.certificate.is_none() && status.ca.is_none(), "never signed");
    assert_eq!(cr.condition("Ready").unwrap().status, "False");
    let note = wait_for_event(&env.client, &env.ns.name, "denied", "Denied").await;
    assert!(note.contains("change ticket"), "{note}");
    assert!(
        support::events_for(&env.client, &env.ns.name, "denied")
            .await
            .iter()
            .all(|e| e.0 == "Warning")
    );
}

#[tokio::test]
async fn terminal_requests_are_left_untouched() {
    let env = env("issue-terminal").await;
    ready_issuer(&env, "mesh").await;
    let api: Api<CertificateRequest> = env.ns.api();
    for (name, status, reason) in [("was-issued", "True", "Issued"), ("was-failed", "False", "Failed")] {
        let req = IntermediateRequest::istiod(name, "mesh");
        let (_, csr) = cm::make_key_and_csr(&req);
        cm::create_request(&env.client, &env.ns.name, &req, csr.as_bytes()).await;
        // Someone (an earlier run) already finished it.
        let done = serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
            "status": {"conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "earlier"}]}
        });
        api.patch_status(name, &PatchParams::apply("earlier-run").force(), &Patch::Apply(&done))
            .await
            .unwrap();
        cm::approve(&env.client, &env.ns.name, name).await;
    }
    cm::istiod_until(&env.client, &env.ns.name, "witness", "mesh", "Issued", TIMEOUT).await;
    let rvs: Vec<_> = [
        get_cr(&env, "was-issued").await.resource_version(),
        get_cr(&env, "was-failed").await.resource_version(),
    ]
    .into();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rvs,
        vec![
            get_cr(&env, "was-issued").await.resource_version(),
            get_cr(&env, "was-failed").await.resource_version()
        ]
    );
    assert!(get_cr(&env, "was-issued").await.status.unwrap().certificate.is_none());
}

#[tokio::test]
async fn missing_issuer_makes_the_request_wait_until_the_issuer_exists() {
    let env = env("issue-late-issuer").await;
    let cr = cm::pending(&env.client, &env.ns.name, "early", "late", TIMEOUT).await;
    let message = cm::ready_message(&cr);
    assert!(
        message.contains(&format!("MeshCAIssuer {}/late", env.ns.name)) && message.contains("does not exist"),
        "{message}"
    );
    // Nobody touches the request: creating the issuer is enough.
    ready_issuer(&env, "late").await;
    cm::wait_for_reason(&env.client, &env.ns.name, "early", &["Issued"], TIMEOUT).await;
}

#[tokio::test]
async fn missing_root_secret_makes_issuer_not_ready_and_requests_wait_until_it_appears() {
    let env = env("issue-late-root").await;
    create_issuer(&env, "mesh", issuer::from_secret("root-ca")).await;
    let (reason, message) = wait_issuer(&env, "mesh", "False").await;
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains(&format!("Secret {}/root-ca not found", env.ns.name)),
        "{message}"
    );
    cm::pending_saying(
        &env.client,
        &env.ns.name,
        "waiting",
        "mesh",
        "not Ready: SecretNotFound",
        TIMEOUT,
    )
    .await;

    // An operator creates the root Secret (made with openssl, as they would).
    let dir = openssl::Workdir::new();
    dir.req_with_new_p256_key(
        "tls.key",
        "tls.crt",
        Some(365),
        "/O=Example/CN=Operator Root",
        &[
            "basicConstraints=critical,CA:TRUE",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    create_tls_secret(&env.ns.api(), "root-ca", &dir.read("tls.crt"), &dir.read("tls.key")).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "waiting", &["Issued"], TIMEOUT).await;
    let status = cr.status.unwrap();
    assert_eq!(
        openssl::verify(status.ca.as_deref().unwrap(), status.certificate.as_deref().unwrap()),
        "chain.pem: OK"
    );
    assert!(openssl::text(status.ca.as_deref().unwrap()).contains("CN = Operator Root"));
}

#[tokio::test]
async fn bad_roots_make_the_issuer_not_ready_with_the_cause() {
    let env = env("issue-bad-root").await;
    let dir = openssl::Workdir::new();
    dir.req_with_new_p256_key(
        "a.key",
        "a.crt",
        Some(30),
        "/CN=A",
        &["basicConstraints=critical,CA:TRUE"],
    );
    dir.new_p256_key("b.key");
    dir.req_with_new_p256_key(
        "leaf.key",
        "leaf.crt",
        Some(30),
        "/CN=not a CA",
        &["basicConstraints=critical,CA:FALSE"],
    );
    let read = |f: &str| dir.read(f);
    let secrets: Api<Secret> = env.ns.api();
    let cases = [
        ("mismatch", read("a.crt"), read("b.key"), "KeyMismatch"),
        ("leaf", read("leaf.crt"), read("leaf.key"), "NotACA"),
        ("garbage", "not a certificate".to_string(), read("a.key"), "InvalidCA"),
    ];
    for (name, crt, key, _) in &cases {
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "stringData": {"tls.crt": crt, "tls.key": key}});
        create_secret(&secrets, secret).await;
        create_issuer(&env, name, issuer::from_secret(name)).await;
    }
    for (name, _, _, expected) in &cases {
        let message = support::wait_issuer_reason(&env.ns.api::<MeshCAIssuer>(), name, expected, TIMEOUT).await;
        assert!(
            !message.contains("PRIVATE KEY") && !message.contains(&read("b.key")[30..60]),
            "no key material: {message}"
        );
        // The event follows the status write.
        wait_for_event(&env.client, &env.ns.name, name, expected).await;
        let events = support::events_for(&env.client, &env.ns.name, name).await;
        assert!(
            events.iter().any(|e| e.0 == "Warning" && &e.1 == expected),
            "{name}: {events:?}"
        );
    }
    // A request to a broken issuer waits; it is not failed.
    cm::pending_saying(&env.client, &env.ns.name, "r", "mismatch", "KeyMismatch", TIMEOUT).await;
}

/// A CSR whose signature does not verify: one bit flipped in the signature.
fn tampered_csr(req: &IntermediateRequest) -> String {
    let (_, csr) = cm::make_key_and_csr(req);
    let mut der = pem::parse(&csr).unwrap().into_contents();
    let last = der.len() - 3;
    der[last] ^= 0x01;
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

#[tokio::test]
async fn bad_requests_fail_with_the_cause_and_the_controller_keeps_serving() {
    let env = env("issue-bad-input").await;
    let policy = IssuancePolicy {
        allowed_trust_domains: vec!["cluster.local".into()],
        ..Default::default()
    };
    create_issuer(
        &env,
        "mesh",
        IssuerSpec {
            policy,
            ..issuer::bootstrapped("mesh-root")
        },
    )
    .await;
    wait_issuer(&env, "mesh", "True").await;
    let base = IntermediateRequest::istiod("x", "mesh");
    let root_cert = {
        let s: Secret = env.ns.api().get("mesh-root").await.unwrap();
        String::from_utf8(s.data.unwrap()["tls.crt"].0.clone()).unwrap()
    };
    let with_bc = {
        // A CSR asking for pathLen 2 in its BasicConstraints (made with openssl).
        let dir = openssl::Workdir::new();
        dir.req_with_new_p256_key(
            "k",
            "c",
            None,
            "/CN=deep",
            &["basicConstraints=critical,CA:TRUE,pathlen:2"],
        );
        dir.read("c")
    };
    let leaf_req = IntermediateRequest {
        is_ca: false,
        ..base.clone()
    };
    let long_req = IntermediateRequest {
        duration: Some("9000h".into()),
        ..base.clone()
    };
    let foreign_req = IntermediateRequest {
        uris: vec!["spiffe://evil.example/ns/x/sa/y".into()],
        ..base.clone()
    };
    let cases: Vec<(&str, IntermediateRequest, String, &str)> = vec![
        (
            "garbage",
            base.clone(),
            "this is not PEM".into(),
            "no PEM data found in spec.request",
        ),
        (
            "not-a-csr",
            base.clone(),
            root_cert.clone(),
            "holds a PEM block of type \"CERTIFICATE\"",
        ),
        (
            "bad-signature",
            base.clone(),
            tampered_csr(&base),
            "signature does not verify",
        ),
        (
            "not-ca",
            leaf_req.clone(),
            cm::make_key_and_csr(&leaf_req).1,
            "requireCA",
        ),
        (
            "path-len",
            base.clone(),
            with_bc,
            "pathLen 2, above this issuer's policy.maxPathLen 0",
        ),
        (
            "too-long",
            long_req.clone(),
            cm::make_key_and_csr(&long_req).1,
            "exceeds this issuer's policy.maxDuration 8760h",
        ),
        (
            "trust-domain",
            foreign_req.clone(),
            cm::make_key_and_csr(&foreign_req).1,
            "evil.example",
        ),
    ];
    for (name, req, csr, _) in &cases {
        let req = req.named(name);
        cm::create_request(&env.client, &env.ns.name, &req, csr.as_bytes()).await;
        cm::approve(&env.client, &env.ns.name, name).await;
    }
    for (name, _, _, cause) in &cases {
        let cr = cm::wait_for_reason(&env.client, &env.ns.name, name, &["Failed"], TIMEOUT).await;
        let status = cr.status.clone().unwrap();
        let message = cm::ready_message(&cr);
        assert!(message.contains(cause), "{name}: {message}");
        assert!(status.failure_time.is_some(), "{name}");
        assert!(
            status.certificate.is_none() && status.ca.is_none(),
            "{name}: nothing signed"
        );
        let note = wait_for_event(&env.client, &env.ns.name, name, "Failed").await;
        assert!(note.contains(cause), "{name}: {note}");
    }
    // Still serving.
    cm::istiod_until(&env.client, &env.ns.name, "good", "mesh", "Issued", TIMEOUT).await;
}

#[tokio::test]
async fn lifetime_beyond_the_root_is_clamped_and_the_event_says_so() {
    let env = env("issue-clamp").await;
    let short_root = RootBootstrap {
        duration: "720h".into(),
        ..Default::default()
    };
    create_issuer(&env, "mesh", local_ca("mesh-root", Some(short_root))).await;
    wait_issuer(&env, "mesh", "True").await;
    let cr = cm::istiod_until(&env.client, &env.ns.name, "long", "mesh", "Issued", TIMEOUT).await;
    let status = cr.status.unwrap();
    let cert = &Certificate::parse_pem_bundle(status.certificate.as_deref().unwrap(), "c").unwrap()[0];
    let root = &Certificate::parse_pem_bundle(status.ca.as_deref().unwrap(), "ca").unwrap()[0];
    assert_eq!(cert.not_after(), root.not_after(), "notAfter clamped to the root's");
    let note = wait_for_event(&env.client, &env.ns.name, "long", "Issued").await;
    assert!(
        note.contains("shortened from the requested 2160h: the signing CA expires at"),
        "{note}"
    );
}

#[tokio::test]
async fn issuer_turns_not_ready_when_its_root_vanishes_or_expires() {
    let env = env("issue-recheck").await;
    ready_issuer(&env, "vanishing").await;
    let secrets: Api<Secret> = env.ns.api();
    // Keep the Secret from being re-bootstrapped: drop bootstrap from the spec first.
    stop_bootstrapping(&env, "vanishing").await;
    secrets
        .delete("vanishing-root", &DeleteParams::default())
        .await
        .unwrap();
    let (reason, _) = wait_issuer(&env, "vanishing", "False").await;
    assert_eq!(reason, "SecretNotFound");

    // A root that lives 8 seconds: the issuer is re-checked right when it expires.
    let brief = RootBootstrap {
        duration: "8s".into(),
        ..Default::default()
    };
    create_issuer(&env, "brief", local_ca("brief-root", Some(brief))).await;
    wait_issuer(&env, "brief", "True").await;
    let api: Api<MeshCAIssuer> = env.ns.api();
    let expired = eventually(Duration::from_secs(20), || async {
        let c = api
            .get("brief")
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.reason == "CAExpired").then_some(c.message)
    })
    .await;
    assert!(expired.is_some(), "issuer with an expired root did not turn CAExpired");
}

/// The local CA is kept parsed between signings, but never past a change of its Secret: the
/// request signed right after the root was replaced in place (same Secret, new data) gets the
/// new root, and so does the one after the Secret was deleted and made again under its name.
#[tokio::test]
async fn a_replaced_root_signs_the_very_next_request() {
    let env = env("issue-replaced-root").await;
    ready_issuer(&env, "mesh").await;
    // The operator owns the root from here on: no bootstrap to recreate it behind our back.
    stop_bootstrapping(&env, "mesh").await;
    let secrets: Api<Secret> = env.ns.api();
    let root_of = |cr: CertificateRequest| {
        let status = cr.status.unwrap();
        let ca = status.ca.unwrap();
        assert_eq!(
            openssl::verify(&ca, status.certificate.as_deref().unwrap()),
            "chain.pem: OK"
        );
        Certificate::parse_pem_bundle(&ca, "status.ca").unwrap().remove(0)
    };
    let secret_root = |secret: &Secret| {
        Certificate::parse_pem_bundle(&secret.data.as_ref().unwrap()["tls.crt"].0, "tls.crt")
            .unwrap()
            .remove(0)
    };
    let original = secret_root(&secrets.get("mesh-root").await.unwrap());
    let first = request_issued(&env, "first", "mesh").await;
    assert_eq!(root_of(first), original);

    let new_root = |not_before| {
        let (cert, key) = mesh_ca_issuer::pki::sign::self_signed_root(&RootBootstrap::default(), not_before).unwrap();
        (cert.to_pem(), key.to_pem())
    };
    // Replaced in place, and the next request approved at once: no waiting for any watch.
    let (cert, key) = new_root(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60));
    let patch = serde_json::json!({"stringData": {"tls.crt": cert, "tls.key": key}});
    let replaced = secrets
        .patch("mesh-root", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_ne!(secret_root(&replaced), original);
    let second = request_issued(&env, "second", "mesh").await;
    assert_eq!(root_of(second), secret_root(&replaced), "signed by the replaced root");

    // Deleted and created again under the same name, with yet another root.
    secrets.delete("mesh-root", &DeleteParams::default()).await.unwrap();
    let (cert, key) = new_root(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60));
    let again: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mesh-root"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key}
    }))
    .unwrap();
    let again = secrets.create(&PostParams::default(), &again).await.unwrap();
    assert_ne!(again.uid(), replaced.uid());
    // The deletion may have made the issuer not Ready meanwhile: the request waits, then is
    // signed once the issuer is checked again, by the root now in the Secret.
    let third = request_issued(&env, "third", "mesh").await;
    assert_eq!(root_of(third), secret_root(&again), "signed by the recreated root");
}

#[tokio::test]
async fn no_key_material_in_logs_events_or_conditions() {
    let (_lock, client, ns) = support::namespaced_test("issue-no-secrets").await;
    let logs = tempfile::tempdir().unwrap();
    // The real binary at its most talkative, so every log line it can write is looked at.
    let mut controller =
        support::ControllerProcess::start(&["--namespace", &ns.name, "--log-level", "debug"], logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuer::create(&issuers, "mesh", issuer::bootstrapped("mesh-root")).await;
    let mut keys = Vec::new();
    keys.push(cm::request_and_approve(&client, &ns.name, &IntermediateRequest::istiod("good", "mesh")).await);
    cm::wait_for_reason(&client, &ns.name, "good", &["Issued"], TIMEOUT).await;
    let leaf = IntermediateRequest {
        is_ca: false,
        ..IntermediateRequest::istiod("refused", "mesh")
    };
    keys.push(cm::request_and_approve(&client, &ns.name, &leaf).await);
    cm::wait_for_reason(&client, &ns.name, "refused", &["Failed"], TIMEOUT).await;
    let root: Secret = ns.api().get("mesh-root").await.unwrap();
    keys.push(String::from_utf8(root.data.unwrap()["tls.key"].0.clone()).unwrap());

    // Every event that will be said has been said.
    wait_for_event(&client, &ns.name, "good", "Issued").await;
    wait_for_event(&client, &ns.name, "refused", "Failed").await;
    wait_for_event(&client, &ns.name, "mesh", "RootBootstrapped").await;
    let mut haystack = controller.log();
    for name in ["mesh", "good", "refused"] {
        for (_, reason, note) in support::events_for(&client, &ns.name, name).await {
            haystack.push_str(&format!("\n{reason}: {note}"));
        }
    }
    for name in ["good", "refused"] {
        haystack.push_str(&format!(
            "\n{:?}",
            get_cr_in(&client, &ns.name, name).await.condition("Ready")
        ));
    }
    haystack.push_str(&format!("\n{:?}", issuers.get("mesh").await.unwrap().status));
    assert!(
        haystack.contains("Issued") && haystack.contains("requireCA"),
        "the haystack holds what was said"
    );
    assert!(!haystack.contains("PRIVATE KEY"));
    for key in &keys {
        // Any 32-character run of the key's base64 body would be a leak.
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        for start in (0..body.len().saturating_sub(32)).step_by(16) {
            assert!(!haystack.contains(&body[start..start + 32]), "key material leaked");
        }
    }
}

async fn get_cr_in(client: &Client, namespace: &str, name: &str) -> CertificateRequest {
    Api::<CertificateRequest>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap()
}

/// An issuer whose `Ready` was written for an older generation must not be trusted: here the
/// controller runs as an identity that cannot write issuer status, so the status stays stale
/// after a spec change, and requests wait until the controller can re-check it.
#[tokio::test]
async fn requests_wait_while_the_issuer_status_is_older_than_its_spec() {
    use k8s_openapi::api::rbac::v1::Role;
    let (_lock, client, ns) = support::namespaced_test("issue-stale-generation").await;
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuer::create(&issuers, "mesh", issuer::bootstrapped("mesh-root")).await;
    // Checked once (by an admin-run controller), then the controller goes away.
    {
        let _checker = RunningController::in_namespace(&ns.name).await;
        eventually(TIMEOUT, || async {
            let s = issuers.get("mesh").await.ok()?.status?;
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.observed_generation == Some(1))
                .then_some(())
        })
        .await
        .expect("issuer Ready at generation 1");
    }
    // The spec changes: generation 2, status still says generation 1.
    let patch = serde_json::json!({"spec": {"policy": {"maxDuration": "4000h"}}});
    issuers
        .patch("mesh", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    // A controller that may do everything but write issuer status.
    let rules = |issuer_status: bool| {
        let mut rules = vec![
            serde_json::json!({"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests", "certificates"], "verbs": ["get", "list", "watch", "patch"]}),
            serde_json::json!({"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests/status"], "verbs": ["update", "patch"]}),
            serde_json::json!({"apiGroups": ["meshca.io"], "resources": ["meshcaissuers", "istiocacerts"], "verbs": ["get", "list", "watch"]}),
            serde_json::json!({"apiGroups": ["meshca.io"], "resources": ["istiocacerts/status"], "verbs": ["update", "patch"]}),
            serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}),
            serde_json::json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
        ];
        if issuer_status {
            rules.push(serde_json::json!({"apiGroups": ["meshca.io"], "resources": ["meshcaissuers/status"], "verbs": ["update", "patch"]}));
        }
        rules
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::restricted_identity(&client, &ns.name, "controller", rules(false), dir.path()).await;
    let mut controller =
        support::ControllerProcess::start_with_env(&kubeconfig, &["--namespace", &ns.name], &[], dir.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );

    let cr = cm::pending(&client, &ns.name, "waits", "mesh", TIMEOUT).await;
    let message = cm::ready_message(&cr);
    assert!(
        message.contains("spec changed (generation 2, last checked 1)"),
        "{message}"
    );
    assert!(
        cr.status.unwrap().certificate.is_none(),
        "nothing signed on a stale check"
    );

    // Once the controller may write the issuer's status again, it re-checks the issuer and the
    // request is issued without anyone touching it.
    let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "controller"}, "rules": rules(true)});
    ns.api::<Role>()
        .replace(
            "controller",
            &PostParams::default(),
            &serde_json::from_value(role).unwrap(),
        )
        .await
        .unwrap();
    cm::wait_for_reason(&client, &ns.name, "waits", &["Issued"], Duration::from_secs(60)).await;
}

/// A reconcile handed an outdated copy of a request (the watch cache lags behind our own
/// status write when two triggers queue up) must not sign it again: the request is read afresh
/// before signing, and the status write carries the resourceVersion it was decided on.
#[tokio::test]
async fn a_stale_copy_of_an_issued_request_is_never_signed_again() {
    use mesh_ca_issuer::controller::{Context, certificate_request};
    let env = env("issue-once").await;
    // The request as the API server had it before it was issued (approved, waiting for its
    // issuer): what a watch cache that lags behind the issuing write still holds, at that
    // version. (A copy is never at the current resourceVersion with older content.)
    let stale = cm::pending(&env.client, &env.ns.name, "once", "mesh", TIMEOUT).await;
    ready_issuer(&env, "mesh").await;
    let issued = cm::wait_for_reason(&env.client, &env.ns.name, "once", &["Issued"], TIMEOUT).await;
    let first = issued.status.clone().unwrap().certificate;

    // Reconcile that stale copy directly, with a context of our own.
    let config = <mesh_ca_issuer::config::Config as clap::Parser>::try_parse_from([
        "mesh-ca-issuer",
        "--namespace",
        env.ns.name.as_str(),
        "--leader-elect=false",
    ])
    .unwrap();
    let metrics = std::sync::Arc::new(mesh_ca_issuer::metrics::Metrics::new());
    let ctx = std::sync::Arc::new(Context::new(
        env.client.clone(),
        config,
        metrics.clone(),
        mesh_ca_issuer::lease::Leadership::always(),
    ));
    certificate_request::reconcile(std::sync::Arc::new(stale), ctx)
        .await
        .unwrap();

    assert!(
        !metrics.render().contains("outcome=\"issued\""),
        "nothing was issued again"
    );
    // A local CA signs from the cached copy; what it signed for the stale copy is counted
    // and never handed out.
    assert!(
        metrics
            .render()
            .contains("meshca_signatures_discarded_total{backend=\"localCA\"} 1"),
        "{}",
        metrics.render()
    );
    let now = get_cr(&env, "once").await;
    assert_eq!(
        now.status.unwrap().certificate,
        first,
        "the certificate in status is the first one"
    );
    let events = support::events_for(&env.client, &env.ns.name, "once").await;
    assert_eq!(events.iter().filter(|e| e.1 == "Issued").count(), 1, "{events:?}");
}

/// 200 requests while the root Secret is replaced halfway through the burst: the half approved
/// after the replacement was written (so their signing began after it) are all signed by the
/// new root, every chain verifies, and no request gets two certificates: the controller counts
/// exactly 200 issued status writes, one Issued event each, and a watch of every version sees
/// no request's certificate change once it had one. The local CA's Secret reads are coalesced
/// under such a burst; a read sent before the replacement must never serve a signing that began
/// after it.
#[tokio::test]
async fn a_root_replaced_during_a_burst_of_200_signs_every_request_approved_after_it() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::collections::{HashMap, HashSet};
    const HALF: usize = 100;
    let env = env("issue-burst-replace").await;
    ready_issuer(&env, "mesh").await;
    stop_bootstrapping(&env, "mesh").await;
    let (client, ns) = (env.client.clone(), env.ns.name.clone());
    let secrets: Api<Secret> = env.ns.api();
    let requests: Api<CertificateRequest> = env.ns.api();
    let root_in = |secret: &Secret| {
        Certificate::parse_pem_bundle(&secret.data.as_ref().unwrap()["tls.crt"].0, "tls.crt")
            .unwrap()
            .remove(0)
    };
    let old_root = root_in(&secrets.get("mesh-root").await.unwrap());

    // Every version of every request, from before the first approval: each certificate seen.
    let seen: std::sync::Arc<std::sync::Mutex<HashMap<String, HashSet<Vec<u8>>>>> = Default::default();
    let watching = {
        let (requests, seen) = (requests.clone(), seen.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(requests, watcher::Config::default()).applied_objects());
            while let Some(Ok(cr)) = stream.next().await {
                if let Some(certificate) = cr.status.as_ref().and_then(|s| s.certificate.clone()) {
                    let mut seen = seen.lock().unwrap();
                    seen.entry(cr.name_any()).or_default().insert(certificate);
                }
            }
        })
    };
    // One CSR for all: key generation is cert-manager's work, not what is measured here.
    let (_, csr) = cm::make_key_and_csr(&IntermediateRequest::istiod("burst", "mesh"));
    let names: Vec<String> = (0..2 * HALF).map(|i| format!("burst-{i}")).collect();
    futures::stream::iter(&names)
        .for_each_concurrent(16, |name| {
            let (client, ns, csr) = (&client, &ns, &csr);
            async move {
                cm::create_request(client, ns, &IntermediateRequest::istiod(name, "mesh"), csr.as_bytes()).await;
            }
        })
        .await;
    let approve_all = |names: &'static [String]| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            futures::stream::iter(names)
                .for_each_concurrent(16, |name| {
                    let (client, ns) = (&client, &ns);
                    async move { cm::approve(client, ns, name).await }
                })
                .await
        }
    };
    let names: &'static [String] = names.leak();
    let (first, second) = names.split_at(HALF);

    // The first half approved; once the first of them is issued, the burst is under way, and
    // the root is replaced in place.
    approve_all(first).await;
    support::eventually(TIMEOUT, || async {
        seen.lock().unwrap().keys().any(|n| first.contains(n)).then_some(())
    })
    .await
    .expect("the first half's burst began");
    let (cert, key) = mesh_ca_issuer::pki::sign::self_signed_root(
        &RootBootstrap::default(),
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
    )
    .unwrap();
    let patch = serde_json::json!({"stringData": {"tls.crt": cert.to_pem(), "tls.key": key.to_pem()}});
    let replaced = secrets
        .patch("mesh-root", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let new_root = root_in(&replaced);
    assert_ne!(new_root, old_root);
    let issued_before_replacement = seen.lock().unwrap().len();
    // The second half is approved only now: their signing begins after the replacement.
    approve_all(second).await;
    for name in names {
        cm::wait_for_reason(&client, &ns, name, &["Issued"], Duration::from_secs(120)).await;
    }

    let mut first_half_new = 0;
    for cr in requests.list(&Default::default()).await.unwrap() {
        let name = cr.name_any();
        if !name.starts_with("burst-") {
            continue;
        }
        let status = cr.status.clone().unwrap();
        let ca = status.ca.clone().unwrap();
        assert_eq!(
            openssl::verify(&ca, status.certificate.as_deref().unwrap()),
            "chain.pem: OK",
            "{name}"
        );
        let root = Certificate::parse_pem_bundle(&ca, "status.ca").unwrap().remove(0);
        if second.contains(&name) {
            assert_eq!(
                root, new_root,
                "{name} was approved after the replacement: the new root signs it"
            );
        } else {
            assert!(root == old_root || root == new_root, "{name}: signed by neither root");
            first_half_new += usize::from(root == new_root);
        }
    }
    // Exactly one certificate per request, however often it was reconciled.
    let issued_writes = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("meshca_reconciles_total{")
                    && l.contains("controller=\"certificaterequest\"")
                    && l.contains("outcome=\"issued\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let metrics = env.metrics().await;
    assert_eq!(issued_writes(&metrics), (2 * HALF) as f64, "issued status writes");
    let events: Api<k8s_openapi::api::events::v1::Event> = env.ns.api();
    let mut issued_events: HashMap<String, usize> = HashMap::new();
    for event in events.list(&Default::default()).await.unwrap() {
        if event.reason.as_deref() == Some("Issued") {
            let name = event.regarding.and_then(|r| r.name).unwrap_or_default();
            *issued_events.entry(name).or_default() += 1;
        }
    }
    for name in names {
        assert_eq!(issued_events.get(name), Some(&1), "{name}: one Issued event");
    }
    watching.abort();
    let seen = seen.lock().unwrap();
    for name in names {
        assert_eq!(
            seen.get(name).map(HashSet::len),
            Some(1),
            "{name}: one certificate ever"
        );
    }
    let discarded = metrics
        .lines()
        .filter(|l| l.starts_with("meshca_signatures_discarded_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64;
    println!(
        "issued before the replacement: {issued_before_replacement}; first half under the new root: {first_half_new} of {HALF}; signatures discarded: {discarded}"
    );
}
