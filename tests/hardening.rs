//! The second security review's findings, each proven on the real API server: what a Secret must
//! be to serve as a local CA, and bounded work per object (a tenant's oversized CA Secret costs
//! the controller nothing, and the Lease keeps being renewed).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mesh_ca_issuer::api::issuer::MeshCAIssuer;
use support::cert_manager::{self as cm, IntermediateRequest};
use support::openssl::Workdir;
use support::{ControllerProcess, RunningController, TEST_MANAGER, eventually, issuer};

const TIMEOUT: Duration = Duration::from_secs(45);
const CA_KU: &str = "keyUsage=critical,keyCertSign,cRLSign,digitalSignature";

/// A root CA made by openssl, as a `kubernetes.io/tls` Secret named `name`, with `labels` and
/// `annotations`.
fn ca_secret(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
    let dir = Workdir::new();
    dir.req_with_new_p256_key(
        "root.key",
        "root.pem",
        Some(3650),
        &format!("/CN={name} root"),
        &["basicConstraints=critical,CA:TRUE", CA_KU],
    );
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": map(labels), "annotations": map(annotations)},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": dir.read("root.pem"), "tls.key": dir.read("root.key")}
    }))
    .unwrap()
}

/// In istiod's namespace a MeshCAIssuer could otherwise sign with whatever CA lies there:
/// cert-manager's Secret of istiod's own intermediate above all. Each Secret that is not meant
/// as a CA is refused with `InvalidCASecret` and a sentence that says how to mark one that is.
#[tokio::test]
async fn only_a_secret_meant_as_a_ca_serves_a_local_ca_issuer() {
    let (_lock, client, ns) = support::namespaced_test("ca-secret-rules").await;
    // This namespace plays istiod's: the controller treats it as an Istio namespace.
    let controller = RunningController::in_namespace_with(&ns.name, &["--istio-namespaces", &ns.name]).await;
    let secrets: Api<Secret> = ns.api();
    let issuers: Api<MeshCAIssuer> = ns.api();
    let cases = [
        (
            "istiod-intermediate",
            ca_secret(
                "istiod-intermediate",
                &[],
                &[("cert-manager.io/certificate-name", "istiod-intermediate")],
            ),
            "was issued by cert-manager for Certificate istiod-intermediate",
        ),
        (
            "plain",
            ca_secret("plain", &[], &[]),
            "only a Secret labelled meshca.io/ca",
        ),
        (
            "cacerts",
            ca_secret(
                "cacerts",
                &[("meshca.io/ca", "true")],
                &[("meshca.io/istiocacerts", "istiod")],
            ),
            "is the cacerts of IstioCACerts istiod",
        ),
    ];
    for (name, secret, expected) in &cases {
        secrets.create(&PostParams::default(), secret).await.unwrap();
        issuer::create(&issuers, name, issuer::from_secret(name)).await;
        let message = support::wait_issuer_reason(&issuers, name, "InvalidCASecret", TIMEOUT).await;
        assert!(message.contains(expected), "{name}: {message}");
    }
    // Nothing was signed with any of them: a request to the cert-manager Secret's issuer waits.
    cm::request_and_approve(
        &client,
        &ns.name,
        &IntermediateRequest::istiod("deputy", "istiod-intermediate"),
    )
    .await;
    let waiting = cm::wait_for_reason(&client, &ns.name, "deputy", &["Pending"], TIMEOUT).await;
    assert!(waiting.status.unwrap().certificate.is_none());

    // Marked as a CA by its owner, the plain Secret serves.
    secrets
        .patch(
            "plain",
            &PatchParams::apply(TEST_MANAGER),
            &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"labels": {"meshca.io/ca": "true"}}})),
        )
        .await
        .unwrap();
    support::wait_issuer(&issuers, "plain", "True", TIMEOUT).await;
    // Bootstrapping a root creates a Secret under a name the issuer chose: not in an Istio
    // namespace unless the operator allows it.
    issuer::create(&issuers, "boot", issuer::bootstrapped("boot-root")).await;
    let message = support::wait_issuer_reason(&issuers, "boot", "BootstrapNotAllowed", TIMEOUT).await;
    assert!(
        message.contains("--allow-root-bootstrap-in-istio-namespaces"),
        "{message}"
    );
    assert!(
        secrets.get_opt("boot-root").await.unwrap().is_none(),
        "no Secret created"
    );
    drop(controller);
    let _controller = RunningController::in_namespace_with(
        &ns.name,
        &[
            "--istio-namespaces",
            &ns.name,
            "--allow-root-bootstrap-in-istio-namespaces=true",
        ],
    )
    .await;
    // Allowed, the root it bootstraps there is marked as a CA from the start.
    support::wait_issuer(&issuers, "boot", "True", TIMEOUT).await;
    let labels = secrets
        .get("boot-root")
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap_or_default();
    assert_eq!(labels.get("meshca.io/ca").map(String::as_str), Some("true"));
}

/// Deleting a bootstrapped root's Secret makes the controller bootstrap another root, with a
/// new key. That is never silent: a Warning event and the issuer's RootBootstrapped condition
/// (RootRecreated) name the new root's fingerprint and the one it replaces.
#[tokio::test]
async fn a_re_created_bootstrapped_root_is_a_warning_and_a_condition_naming_both_roots() {
    let (_lock, client, ns) = support::namespaced_test("reboot").await;
    let _controller = RunningController::in_namespace(&ns.name).await;
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuer::create(&issuers, "boot", issuer::bootstrapped("boot-root")).await;
    support::wait_issuer(&issuers, "boot", "True", TIMEOUT).await;
    let bootstrapped = |status: &mesh_ca_issuer::api::issuer::IssuerStatus| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "RootBootstrapped")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let first = eventually(TIMEOUT, || async {
        let status = issuers.get("boot").await.ok()?.status?;
        bootstrapped(&status).is_some().then_some(status)
    })
    .await
    .expect("RootBootstrapped set");
    let old = first.ca.clone().expect("the root in status").fingerprint_sha256;
    let (reason, message) = bootstrapped(&first).unwrap();
    assert_eq!(reason, "RootCreated");
    assert!(message.contains(&old), "{message}");
    let events = support::events_for(&client, &ns.name, "MeshCAIssuer/boot").await;
    assert!(
        events
            .iter()
            .any(|(type_, reason, _)| type_ == "Normal" && reason == "RootBootstrapped"),
        "{events:?}"
    );

    ns.api::<Secret>()
        .delete("boot-root", &Default::default())
        .await
        .unwrap();
    let again = eventually(TIMEOUT, || async {
        let status = issuers.get("boot").await.ok()?.status?;
        (bootstrapped(&status)?.0 == "RootRecreated").then_some(status)
    })
    .await
    .expect("RootBootstrapped says RootRecreated");
    let (_, message) = bootstrapped(&again).unwrap();
    let new = eventually(TIMEOUT, || async {
        let status = issuers.get("boot").await.ok()?.status?;
        status.ca.map(|ca| ca.fingerprint_sha256).filter(|fp| *fp != old)
    })
    .await
    .expect("status.ca shows the new root");
    assert!(
        message.contains(&new) && message.contains(&old) && message.contains("meshca rotation approve"),
        "{message}"
    );
    let warning = eventually(TIMEOUT, || async {
        support::events_for(&client, &ns.name, "MeshCAIssuer/boot")
            .await
            .into_iter()
            .find(|(type_, reason, _)| type_ == "Warning" && reason == "RootBootstrapped")
    })
    .await
    .expect("a Warning RootBootstrapped event");
    assert!(warning.2.contains(&new) && warning.2.contains(&old), "{}", warning.2);
}

/// A CA whose chain up to its root is `links` certificates long, each link a CA signed by the
/// next, the root self-signed: the CA and its key, then the chain, root first (so that a naive
/// search for each parent scans nearly the whole pool every time: some n²/2 signature checks).
fn long_chain(links: usize) -> (String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let params = |cn: String| {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
    };
    let mut key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut cert = params(format!("c{links}")).self_signed(&key).unwrap();
    let mut pems = vec![cert.pem()];
    for i in (0..links).rev() {
        let next_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = Issuer::new(params(format!("c{}", i + 1)), &key);
        cert = params(format!("c{i}")).signed_by(&next_key, &issuer).unwrap();
        pems.push(cert.pem());
        key = next_key;
    }
    // c0 is the CA the issuer signs with; the rest is its chain, root (c<links>) first.
    let ca = pems.pop().unwrap();
    let chain: String = pems.concat();
    (format!("{ca}{chain}"), key.serialize_pem())
}

/// One tenant's CA Secret of about 1 MiB: a CA whose chain to its root has 1,800 links, next to
/// a normal issuer on the same single-threaded controller with leader election on. Checked the
/// old way (each parent searched among all certificates with a signature check each) it costs
/// some 1.6 million signature checks; it is refused at a glance, the normal issuer's requests
/// are issued, and the Lease is renewed throughout, never going a lease duration unrenewed.
#[tokio::test]
async fn an_oversized_ca_secret_neither_stalls_signing_nor_the_lease() {
    let (_lock, client, ns) = support::namespaced_test("bounded-ca").await;
    let logs = tempfile::tempdir().unwrap();
    let lease_duration = support::leader::LEASE;
    let mut flags = support::leader::election_flags(&ns.name);
    flags.extend(["--worker-threads", "1"]);
    let mut controller = ControllerProcess::start(&flags, logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );

    // Watch the Lease from here on: every renewal it sees, with when it saw it.
    let leases: Api<Lease> = ns.api();
    let lease_watch = tokio::spawn({
        let leases = leases.clone();
        async move {
            let mut seen: Vec<(tokio::time::Instant, String)> = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(lease)) = leases.get_opt("mesh-ca-issuer").await
                    && let Some(renew) = lease.spec.and_then(|s| s.renew_time)
                {
                    let renew = renew.0.to_string();
                    if seen.last().is_none_or(|(_, last)| *last != renew) {
                        seen.push((tokio::time::Instant::now(), renew));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        }
    });

    // Some 1,800 links fit in a Secret (at most 1 MiB).
    let links = 1_800;
    let (tls_crt, tls_key) = long_chain(links);
    let count = links + 1;
    assert!(tls_crt.len() < 1_000_000, "{} bytes", tls_crt.len());
    let secrets = ns.api::<Secret>();
    let big: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "big"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": tls_crt, "tls.key": tls_key}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &big).await.unwrap();
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuer::create(&issuers, "big", issuer::from_secret("big")).await;
    issuer::create(&issuers, "mesh", issuer::bootstrapped("root")).await;
    let message = support::wait_issuer_reason(&issuers, "big", "InvalidCA", TIMEOUT).await;
    assert!(
        message.contains(&format!("holds {count} certificates")) && message.contains("at most 32"),
        "{message}"
    );
    support::wait_issuer(&issuers, "mesh", "True", TIMEOUT).await;
    for i in 0..5 {
        let name = format!("istiod-{i}");
        cm::request_and_approve(&client, &ns.name, &IntermediateRequest::istiod(&name, "mesh")).await;
    }
    for i in 0..5 {
        cm::wait_for_reason(&client, &ns.name, &format!("istiod-{i}"), &["Issued"], TIMEOUT).await;
    }

    let seen = lease_watch.await.unwrap();
    assert!(seen.len() > 10, "the Lease was renewed {} times in 30s", seen.len());
    let longest = seen.windows(2).map(|w| w[1].0 - w[0].0).max().unwrap_or_default();
    println!(
        "{count} certificates refused; Lease renewed {} times in 30s, longest gap seen {longest:?}",
        seen.len()
    );
    assert!(
        longest < lease_duration,
        "the Lease went {longest:?} without renewal (lease duration {lease_duration:?})"
    );
    let leading = eventually(Duration::from_secs(5), || async {
        let (_, metrics) = support::http_get(controller.admin_port, "/metrics").await.ok()?;
        metrics.lines().any(|l| l == "meshca_leader 1").then_some(())
    })
    .await;
    assert!(leading.is_some(), "still the leader: {}", controller.log());
    let _ = controller.child.kill();
}

/// The controller's resident memory, from /proc (KiB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// Whoever may create CertificateRequests decides how much each carries: up to 256 KiB of
/// annotations. 500 requests with 200 KiB each (100 MB in all), approved and waiting on an
/// issuer that does not exist, stay in the controller's cache; its memory grows by less than
/// 10 MiB, because the cache keeps none of those annotations.
#[tokio::test]
async fn waiting_requests_cost_no_memory_for_their_annotations() {
    let (_lock, client, ns) = support::namespaced_test("cache-annotations").await;
    let logs = tempfile::tempdir().unwrap();
    let mut controller = ControllerProcess::start(&["--namespace", &ns.name], logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    let before = rss_kib(controller.child.id());

    let count = 500;
    let template = IntermediateRequest::istiod("waiting", "missing");
    let (_, csr) = cm::make_key_and_csr(&template);
    let blob = "x".repeat(200 * 1024);
    let requests: Api<mesh_ca_issuer::api::cert_manager::CertificateRequest> = ns.api();
    for i in 0..count {
        let name = format!("waiting-{i}");
        cm::create_request(&client, &ns.name, &template.named(&name), csr.as_bytes()).await;
        requests
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"example.com/blob": blob}}})),
            )
            .await
            .unwrap();
        cm::approve(&client, &ns.name, &name).await;
    }
    // Every one of them was seen, decided on and cached: each says it waits for its issuer.
    let waiting = eventually(Duration::from_secs(120), || async {
        let list = requests.list(&Default::default()).await.ok()?;
        let pending = list
            .items
            .iter()
            .filter(|cr| cr.condition("Ready").and_then(|c| c.reason.as_deref()) == Some("Pending"))
            .count();
        (pending == count).then_some(())
    })
    .await;
    assert!(
        waiting.is_some(),
        "not all {count} requests were Pending: {}",
        controller.log()
    );
    let after = rss_kib(controller.child.id());
    let growth = after.saturating_sub(before);
    println!("RSS {before} KiB before, {after} KiB after {count} requests of 200 KiB annotations: +{growth} KiB");
    assert!(growth < 10 * 1024, "RSS grew by {growth} KiB");
}
