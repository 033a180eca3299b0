//! Real cert-manager (v1.21.2: its Certificate controllers, its approver and its webhook, see
//! `tests/support/real_cert_manager.rs`) with our issuer, on the real API server: every step of
//! `Certificate` → `CertificateRequest` → our issuer → Secret → `IstioCACerts` → `cacerts` is
//! done by the real component, and cert-manager's renewal, denial, failure back-off and
//! approval rules are observed, not assumed.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Client, CustomResourceExt, ResourceExt};
use mesh_ca_issuer::api::cert_manager::{Certificate as CertificateSubset, CertificateRequest};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec};
use mesh_ca_issuer::pki::Certificate;
use support::real_cert_manager::{self as real, CertManager, Options, certificates, condition};
use support::{RunningController, ScopeLock, TestNamespace, eventually, goverify};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A namespace with our controller and real cert-manager watching only it, and a Ready
/// MeshCAIssuer `mesh` with a bootstrapped local root.
struct Env {
    client: Client,
    cert_manager: CertManager,
    _controller: RunningController,
    ns: TestNamespace,
    _lock: ScopeLock,
}

async fn env(prefix: &str, options: Options) -> Env {
    let (lock, client, ns) = support::namespaced_test(prefix).await;
    let controller = RunningController::in_namespace(&ns.name).await;
    let cert_manager = CertManager::start_with(&ns, options).await;
    let env = Env {
        client,
        cert_manager,
        _controller: controller,
        ns,
        _lock: lock,
    };
    ready_issuer(&env, "mesh").await;
    env
}

async fn ready_issuer(env: &Env, name: &str) {
    support::issuer::create_ready_with_own_root(&env.ns.api(), name, TIMEOUT).await;
}

/// istiod's intermediate as an Istio operator writes it (config/samples/certificate-istiod.yaml),
/// for MeshCAIssuer `issuer`, with `extra` merged into its spec.
async fn create_certificate(env: &Env, name: &str, issuer: &str, extra: serde_json::Value) {
    let mut spec = serde_json::json!({
        "isCA": true,
        "commonName": "istiod intermediate",
        "subject": {"organizations": ["cluster.local"]},
        "uris": ["spiffe://cluster.local/ns/istio-system/sa/istiod"],
        "duration": "2160h",
        "secretName": name,
        "privateKey": {"algorithm": "ECDSA", "size": 256},
        "issuerRef": {"group": "meshca.io", "kind": "MeshCAIssuer", "name": issuer},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let certificate: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("Certificate");
    certificates(&env.client, &env.ns.name)
        .create(&PostParams::default(), &certificate)
        .await
        .unwrap_or_else(|e| panic!("create Certificate {name}: {e}"));
}

/// Waits until `check` holds for Certificate `name`; returns it.
async fn wait_certificate(env: &Env, name: &str, what: &str, check: impl Fn(&DynamicObject) -> bool) -> DynamicObject {
    let api = certificates(&env.client, &env.ns.name);
    eventually(TIMEOUT, || async {
        let certificate = api.get(name).await.ok()?;
        check(&certificate).then_some(certificate)
    })
    .await
    .unwrap_or_else(|| panic!("Certificate {name}: not {what} within {TIMEOUT:?}"))
}

fn is_true(object: &DynamicObject, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

fn time(value: &serde_json::Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"))
        .parse()
        .unwrap_or_else(|e| panic!("not a timestamp: {value}: {e}"))
}

async fn request(env: &Env, name: &str) -> CertificateRequest {
    env.ns
        .api::<CertificateRequest>()
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get CertificateRequest {name}: {e}"))
}

async fn secret_data(env: &Env, name: &str) -> BTreeMap<String, Vec<u8>> {
    let secret: Secret = env
        .ns
        .api()
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get Secret {name}: {e}"));
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

fn first_certificate(pem: &[u8], what: &'static str) -> Certificate {
    Certificate::parse_pem_bundle(pem, what)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .remove(0)
}

async fn create_istio_cacerts(env: &Env, source: &str) {
    let spec = IstioCACertsSpec {
        source_secret_name: source.into(),
        target_secret_name: "cacerts".into(),
        ..Default::default()
    };
    support::objects::create_icc(&env.ns.api(), "istiod", spec).await;
}

/// Waits until IstioCACerts `istiod` has published the intermediate with `fingerprint`.
async fn wait_published(env: &Env, fingerprint: &str) -> IstioCACerts {
    let api: Api<IstioCACerts> = env.ns.api();
    eventually(TIMEOUT, || async {
        let icc = api.get("istiod").await.ok()?;
        let status = icc.status.as_ref()?;
        let synced = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "Synced" && c.status == "True");
        (synced && status.intermediate.as_ref()?.fingerprint_sha256 == fingerprint).then_some(icc.clone())
    })
    .await
    .unwrap_or_else(|| panic!("IstioCACerts did not publish intermediate {fingerprint} within {TIMEOUT:?}"))
}

// === the CRDs ===

/// Every field of our hand-written subset of cert-manager's API exists in cert-manager's own
/// CRDs with the same type and format: what we read and write is what cert-manager serves.
#[test]
fn cert_managers_crds_carry_every_field_our_hand_written_types_use() {
    fn schema_of(crd: &serde_json::Value) -> serde_json::Value {
        crd["spec"]["versions"]
            .as_array()
            .and_then(|versions| versions.iter().find(|v| v["name"] == "v1"))
            .map(|v| v["schema"]["openAPIV3Schema"].clone())
            .unwrap_or_else(|| panic!("no v1 schema in {}", crd["metadata"]["name"]))
    }
    /// Walks `ours`; every property must exist in `theirs` with the same type and the same
    /// encoding (`byte`, `date-time`; integer widths are only hints, Go's `int` has none).
    fn compare(path: &str, ours: &serde_json::Value, theirs: &serde_json::Value, checked: &mut usize) {
        assert_eq!(
            ours.get("type"),
            theirs.get("type"),
            "{path}: type differs from cert-manager's"
        );
        if let Some(format) = ours.get("format").filter(|f| *f != "int32" && *f != "int64") {
            assert_eq!(
                Some(format),
                theirs.get("format"),
                "{path}: our format {format} differs from cert-manager's"
            );
        }
        if let Some(properties) = ours["properties"].as_object() {
            for (name, child) in properties {
                let upstream = &theirs["properties"][name];
                assert!(
                    upstream.is_object(),
                    "{path}.{name}: cert-manager's CRD has no such field"
                );
                *checked += 1;
                compare(&format!("{path}.{name}"), child, upstream, checked);
            }
        }
        if ours["items"].is_object() {
            compare(&format!("{path}[]"), &ours["items"], &theirs["items"], checked);
        }
    }
    let upstream: BTreeMap<String, serde_json::Value> = real::crds()
        .into_iter()
        .map(|crd| (crd.name_any(), serde_json::to_value(crd).expect("CRD as JSON")))
        .collect();
    for ours in [CertificateRequest::crd(), CertificateSubset::crd()] {
        let name = ours.name_any();
        let theirs = upstream
            .get(&name)
            .unwrap_or_else(|| panic!("cert-manager has no CRD {name}"));
        let ours = serde_json::to_value(&ours).expect("CRD as JSON");
        assert_eq!(ours["spec"]["names"]["plural"], theirs["spec"]["names"]["plural"]);
        assert_eq!(ours["spec"]["scope"], theirs["spec"]["scope"]);
        let mut checked = 0;
        compare(&name, &schema_of(&ours), &schema_of(theirs), &mut checked);
        assert!(checked > 10, "{name}: only {checked} fields compared");
        // The list our server-side apply relies on: conditions keyed by type.
        let conditions = &schema_of(theirs)["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map", "{name}");
        assert_eq!(conditions["x-kubernetes-list-map-keys"][0], "type", "{name}");
    }
}

// === issuance ===

#[tokio::test]
async fn real_cert_manager_takes_a_certificate_to_istiods_cacerts() {
    let env = env("cm-issue", Options::default()).await;
    create_certificate(&env, "istiod-intermediate", "mesh", serde_json::json!({})).await;
    create_istio_cacerts(&env, "istiod-intermediate").await;
    let certificate = wait_certificate(&env, "istiod-intermediate", "Ready", |c| is_true(c, "Ready")).await;

    // cert-manager made the request (named <certificate>-<revision>, owned by the Certificate),
    // its webhook recorded who made it, its approver approved it, and we issued it.
    let cr = request(&env, "istiod-intermediate-1").await;
    assert_eq!(
        cr.annotations()
            .get("cert-manager.io/certificate-name")
            .map(String::as_str),
        Some("istiod-intermediate")
    );
    assert!(
        cr.owner_references()
            .iter()
            .any(|o| o.kind == "Certificate" && o.name == "istiod-intermediate"),
        "{:?}",
        cr.metadata.owner_references
    );
    assert_eq!(
        cr.spec.username.as_deref(),
        Some("meshca-admin"),
        "cert-manager's webhook fills in the requester"
    );
    assert_eq!(cr.spec.is_ca, Some(true));
    assert_eq!(
        cr.spec.usages, None,
        "cert-manager copies the Certificate's (absent) usages as they are"
    );
    let approved = cr.condition("Approved").expect("approved");
    assert_eq!(
        (approved.status.as_str(), approved.reason.as_deref()),
        ("True", Some("cert-manager.io"))
    );
    assert_eq!(cr.condition("Ready").and_then(|c| c.reason.as_deref()), Some("Issued"));

    // cert-manager wrote the Secret from our status: tls.crt byte for byte, ca.crt = status.ca.
    let status = cr.status.clone().expect("status");
    let secret: Secret = env
        .ns
        .api()
        .get("istiod-intermediate")
        .await
        .expect("the Certificate's Secret");
    let annotations = secret.annotations();
    assert_eq!(
        annotations.get("cert-manager.io/issuer-kind").map(String::as_str),
        Some("MeshCAIssuer")
    );
    assert_eq!(
        annotations.get("cert-manager.io/issuer-group").map(String::as_str),
        Some("meshca.io")
    );
    let data = secret_data(&env, "istiod-intermediate").await;
    assert_eq!(data.get("tls.crt"), status.certificate.as_ref());
    assert_eq!(data.get("ca.crt"), status.ca.as_ref());
    let intermediate = first_certificate(&data["tls.crt"], "tls.crt");
    assert_eq!(
        time(&certificate.data["status"]["notAfter"]),
        intermediate.not_after(),
        "cert-manager read our certificate's lifetime"
    );

    // IstioCACerts wrote istiod's cacerts from that Secret, and istiod's own check (Go's
    // x509.Verify) loads it.
    let icc = wait_published(&env, &intermediate.fingerprint()).await;
    let cacerts = secret_data(&env, "cacerts").await;
    assert_eq!(cacerts["ca-cert.pem"], data["tls.crt"]);
    assert_eq!(cacerts["root-cert.pem"], data["ca.crt"]);
    goverify::istiod_loads(&cacerts).expect("istiod loads the cacerts cert-manager and we wrote");
    // Its renewal tracking follows the Certificate's own status.renewalTime.
    assert_eq!(
        icc.status.and_then(|s| s.intermediate).map(|i| i.renewal_time),
        certificate.data["status"]["renewalTime"]
            .as_str()
            .map(|t| time(&serde_json::json!(t)).to_string())
    );
}

#[tokio::test]
async fn renewal_happens_at_renew_before_and_reaches_cacerts_with_the_same_roots() {
    let mut env = env("cm-renew", Options::default()).await;
    // cert-manager's webhook refuses lifetimes under 1h: renew 30s after issuance instead (and
    // every 30s after that, until the test stops cert-manager below).
    let renew_before = SignedDuration::from_secs(3600 - 30);
    create_certificate(
        &env,
        "istiod-intermediate",
        "mesh",
        serde_json::json!({"duration": "1h", "renewBefore": "59m30s"}),
    )
    .await;
    create_istio_cacerts(&env, "istiod-intermediate").await;
    let first = wait_certificate(&env, "istiod-intermediate", "Ready at revision 1", |c| {
        is_true(c, "Ready") && c.data["status"]["revision"] == 1
    })
    .await;
    let renewal_time = time(&first.data["status"]["renewalTime"]);
    let not_after = time(&first.data["status"]["notAfter"]);
    assert_eq!(
        renewal_time,
        not_after - renew_before,
        "renewalTime = notAfter - renewBefore"
    );
    let before = secret_data(&env, "istiod-intermediate").await;
    let first_intermediate = first_certificate(&before["tls.crt"], "tls.crt");
    wait_published(&env, &first_intermediate.fingerprint()).await;
    let cacerts_before = secret_data(&env, "cacerts").await;

    // Ready stays True across the renewal; the readiness controller then records the new
    // certificate's times.
    let second = wait_certificate(&env, "istiod-intermediate", "renewed (revision 2, new times)", |c| {
        is_true(c, "Ready")
            && c.data["status"]["revision"] == 2
            && c.data["status"]["notAfter"].is_string()
            && time(&c.data["status"]["notAfter"]) > not_after
            && time(&c.data["status"]["renewalTime"]) > renewal_time
    })
    .await;
    // Nothing more is needed from cert-manager: stop it before its next renewal, so what follows
    // reads one settled state.
    env.cert_manager.stop_controller();
    let renewed = request(&env, "istiod-intermediate-2").await;
    let requested_at = renewed
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| Timestamp::from_second(t.0.as_second()).expect("timestamp"))
        .expect("creationTimestamp");
    // Timestamps are whole seconds: the renewal's request came no earlier than renewalTime.
    assert!(
        requested_at >= renewal_time,
        "cert-manager renewed early: request at {requested_at}, renewalTime {renewal_time}"
    );
    eprintln!(
        "renewal: renewalTime {renewal_time}, revision 2 requested at {requested_at} ({}s later)",
        requested_at.duration_since(renewal_time).as_secs()
    );
    assert_eq!(
        renewed.condition("Ready").and_then(|c| c.reason.as_deref()),
        Some("Issued")
    );

    let after = secret_data(&env, "istiod-intermediate").await;
    let second_intermediate = first_certificate(&after["tls.crt"], "tls.crt");
    assert_ne!(second_intermediate.serial_hex(), first_intermediate.serial_hex());
    assert_ne!(
        second_intermediate.public_key_info(),
        first_intermediate.public_key_info(),
        "cert-manager's default rotationPolicy Always makes a new key"
    );
    assert_eq!(
        time(&second.data["status"]["notAfter"]),
        second_intermediate.not_after()
    );
    assert_eq!(
        time(&second.data["status"]["renewalTime"]),
        second_intermediate.not_after() - renew_before,
        "the next renewal is again notAfter - renewBefore"
    );

    // istiod's cacerts carries the new intermediate, and its roots did not change by a byte:
    // istiod hot-reloads only when root-cert.pem stays the same.
    wait_published(&env, &second_intermediate.fingerprint()).await;
    let cacerts_after = secret_data(&env, "cacerts").await;
    assert_eq!(cacerts_after["ca-cert.pem"], after["tls.crt"]);
    assert_eq!(cacerts_after["root-cert.pem"], cacerts_before["root-cert.pem"]);
    goverify::istiod_loads(&cacerts_after).expect("istiod loads the renewed cacerts");
}

// === denial and failure ===

#[tokio::test]
async fn a_denied_request_is_never_signed_and_cert_manager_counts_a_failed_attempt() {
    // An approver other than cert-manager's decides here; a 5s back-off shows what cert-manager
    // does after a denial within the test.
    let env = env(
        "cm-deny",
        Options {
            controller_args: vec![
                "--controllers=*,-certificaterequests-approver".into(),
                "--certificate-request-minimum-backoff-duration=5s".into(),
            ],
            ..Default::default()
        },
    )
    .await;
    create_certificate(&env, "istiod-intermediate", "mesh", serde_json::json!({})).await;
    let requests: Api<CertificateRequest> = env.ns.api();
    eventually(TIMEOUT, || async { requests.get("istiod-intermediate-1").await.ok() })
        .await
        .expect("cert-manager creates the request");
    support::cert_manager::deny(
        &env.client,
        &env.ns.name,
        "istiod-intermediate-1",
        "not allowed by policy",
    )
    .await;

    // cert-manager sees the denial: one failed attempt, Issuing=False with the denial's reason.
    let certificate = wait_certificate(&env, "istiod-intermediate", "failed once", |c| {
        c.data["status"]["failedIssuanceAttempts"] == 1
    })
    .await;
    let issuing = condition(&certificate, "Issuing").expect("Issuing condition");
    assert_eq!(issuing["status"], "False");
    assert_eq!(issuing["reason"], "policy.cert-manager.io");
    assert!(certificate.data["status"]["lastFailureTime"].is_string());

    // We answered the denial as the contract says, and signed nothing.
    let cr = support::cert_manager::wait_for_reason(
        &env.client,
        &env.ns.name,
        "istiod-intermediate-1",
        &["Denied"],
        TIMEOUT,
    )
    .await;
    let status = cr.status.expect("status");
    assert!(status.failure_time.is_some());
    assert_eq!(status.certificate, None, "a denied request is never signed");
    let secret = env
        .ns
        .api::<Secret>()
        .get_opt("istiod-intermediate")
        .await
        .expect("get Secret");
    assert!(
        secret.is_none_or(|s| !s.data.unwrap_or_default().contains_key("tls.crt")),
        "no certificate was written"
    );
    assert!(!is_true(&certificate, "Ready"));

    // After its back-off cert-manager tries again with a new request (and, with its default
    // rotationPolicy Always, a new key), which an approver must decide anew: until then it
    // waits, and nothing is signed.
    let denied_uid = request(&env, "istiod-intermediate-1").await.uid();
    let retry = eventually(TIMEOUT, || async {
        let cr = requests.get("istiod-intermediate-1").await.ok()?;
        (cr.uid() != denied_uid).then_some(cr)
    })
    .await
    .expect("cert-manager makes a new request after its back-off");
    assert!(retry.condition("Denied").is_none() && retry.condition("Approved").is_none());
    assert!(retry.status.and_then(|s| s.certificate).is_none());
}

#[tokio::test]
async fn a_failed_request_is_retried_with_cert_managers_own_doubling_back_off() {
    // cert-manager's first back-off is 1h by default; 5s keeps the test short and the law the same.
    let env = env(
        "cm-backoff",
        Options {
            controller_args: vec!["--certificate-request-minimum-backoff-duration=5s".into()],
            ..Default::default()
        },
    )
    .await;
    // A SPIFFE ID outside the issuer's trust domain: a policy violation we mark Failed.
    create_certificate(
        &env,
        "istiod-intermediate",
        "mesh",
        serde_json::json!({"uris": ["spiffe://elsewhere.example/ns/istio-system/sa/istiod"]}),
    )
    .await;

    // Each attempt is a new request of the same name (cert-manager deletes the failed one):
    // record each request's creation and each failure cert-manager records.
    let requests: Api<CertificateRequest> = env.ns.api();
    let certs = certificates(&env.client, &env.ns.name);
    let mut attempts: Vec<(String, Timestamp)> = Vec::new(); // (uid, created)
    let mut failures: BTreeMap<i64, Timestamp> = BTreeMap::new(); // attempt -> lastFailureTime
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while failures.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "three failed attempts not seen within 120s: requests {attempts:?}, failures {failures:?}"
        );
        if let Ok(cr) = requests.get("istiod-intermediate-1").await {
            let uid = cr.uid().unwrap_or_default();
            if !attempts.iter().any(|(seen, _)| *seen == uid) {
                let created = cr.metadata.creation_timestamp.as_ref().expect("creationTimestamp").0;
                attempts.push((uid, Timestamp::from_second(created.as_second()).expect("timestamp")));
            }
            if let Some(reason) = cr.condition("Ready").and_then(|c| c.reason.clone()) {
                assert_ne!(reason, "Issued", "a policy violation must never be issued");
            }
        }
        if let Ok(certificate) = certs.get("istiod-intermediate").await
            && let Some(n) = certificate.data["status"]["failedIssuanceAttempts"].as_i64()
        {
            failures
                .entry(n)
                .or_insert_with(|| time(&certificate.data["status"]["lastFailureTime"]));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(attempts.len() >= 3, "requests seen: {attempts:?}");
    // Our side: a Failed request, with failureTime, never a retry loop of our own.
    let last = support::cert_manager::wait_for_reason(
        &env.client,
        &env.ns.name,
        "istiod-intermediate-1",
        &["Failed"],
        TIMEOUT,
    )
    .await;
    assert!(last.status.and_then(|s| s.failure_time).is_some());

    // cert-manager's side: attempt n+1 comes no sooner than 5s * 2^(n-1) after failure n.
    for n in 1..=2i64 {
        let failed = failures[&n];
        let next_request = attempts[n as usize].1;
        let back_off = SignedDuration::from_secs(5 * (1 << (n - 1)));
        let waited = next_request.duration_since(failed);
        eprintln!(
            "back-off after failure {n}: waited {}s (cert-manager's minimum {}s)",
            waited.as_secs(),
            back_off.as_secs()
        );
        assert!(
            waited >= back_off,
            "attempt {} came {waited:?} after failure {n}, before the {back_off:?} back-off",
            n + 1
        );
    }
}

// === approval and its RBAC limits ===

/// The chart limits cert-manager's approver to named issuers; the limit holds because cert-manager's
/// webhook checks `approve` on the issuer's `signers` name for whoever sets Approved. An
/// approver-policy-shaped identity, allowed `approve` for one signer name only, approves that
/// issuer's requests and no other's.
#[tokio::test]
async fn cert_managers_approver_is_held_to_the_charts_issuer_names_and_another_approver_to_its_own() {
    let (lock, client, ns) = support::namespaced_test("cm-approval").await;
    let controller = RunningController::in_namespace(&ns.name).await;
    let release = format!("cm-{}", support::unique_suffix());

    // cert-manager's controller runs as its own ServiceAccount, with the RBAC of its own chart,
    // plus our chart's approver role limited to the issuer `allowed`.
    for sa in ["cert-manager", "approver-policy"] {
        let account: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": sa}})).unwrap();
        ns.api::<ServiceAccount>()
            .create(&PostParams::default(), &account)
            .await
            .expect("ServiceAccount");
    }
    let mut rbac = real::controller_rbac(&release, &ns.name);
    rbac.extend(support::helm_template(
        &support::repo_root().join("charts/mesh-ca-issuer"),
        &release,
        &ns.name,
        &[
            "certManager.approver.enabled=true",
            &format!(
                "certManager.approver.issuerNames={{meshcaissuers.meshca.io/{}.allowed}}",
                ns.name
            ),
            "certManager.approver.serviceAccountName=cert-manager",
            &format!("certManager.approver.namespace={}", ns.name),
        ],
        "templates/rbac.yaml",
        |doc| {
            doc["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-approver"))
        },
    ));
    // approver-policy's own chart grants `approve` on the signer names it is given
    // (app.approveSignerNames); the same shape, for the issuer `other` only.
    let signer = format!("meshcaissuers.meshca.io/{}.other", ns.name);
    rbac.push(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("{release}-approver-policy")},
        "rules": [{"apiGroups": ["cert-manager.io"], "resources": ["signers"], "verbs": ["approve"], "resourceNames": [signer]}],
    }));
    rbac.push(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{release}-approver-policy")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{release}-approver-policy")},
        "subjects": [{"kind": "ServiceAccount", "name": "approver-policy", "namespace": ns.name}],
    }));
    // approver-policy also updates request status.
    rbac.push(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": format!("{release}-approver-policy-status")},
        "rules": [{"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests/status"], "verbs": ["patch", "update"]},
                  {"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests"], "verbs": ["get"]}],
    }));
    rbac.push(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("{release}-approver-policy-status")},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{release}-approver-policy-status")},
        "subjects": [{"kind": "ServiceAccount", "name": "approver-policy", "namespace": ns.name}],
    }));
    let _rbac = support::AppliedObjects::apply(&client, &ns.name, rbac).await;
    let token = support::service_account_token(&client, &ns.name, "cert-manager").await;
    let cert_manager = CertManager::start_with(
        &ns,
        Options {
            token: Some(token),
            ..Default::default()
        },
    )
    .await;
    let env = Env {
        client: client.clone(),
        cert_manager,
        _controller: controller,
        ns,
        _lock: lock,
    };
    for issuer in ["allowed", "other", "third"] {
        ready_issuer(&env, issuer).await;
    }
    for issuer in ["allowed", "other", "third"] {
        create_certificate(&env, &format!("for-{issuer}"), issuer, serde_json::json!({})).await;
    }

    // The whole flow under cert-manager's own identity and RBAC, for the issuer it may approve.
    wait_certificate(&env, "for-allowed", "Ready", |c| is_true(c, "Ready")).await;
    let allowed = request(&env, "for-allowed-1").await;
    assert_eq!(
        allowed.spec.username.as_deref(),
        Some(format!("system:serviceaccount:{}:cert-manager", env.ns.name).as_str())
    );

    // For the others its approval is refused by the webhook, and the refusal is what it logs
    // (and retries with its own rate limit: the request waits, nothing is signed).
    let identity = format!("system:serviceaccount:{}:cert-manager", env.ns.name);
    for issuer in ["other", "third"] {
        env.cert_manager
            .wait_for_controller_log(
                &[
                    "webhook.cert-manager.io",
                    "denied the request",
                    &identity,
                    &format!("does not have permissions to set approved/denied conditions for issuer {{{issuer} MeshCAIssuer meshca.io}}"),
                ],
                TIMEOUT,
            )
            .await;
        let cr = request(&env, &format!("for-{issuer}-1")).await;
        assert!(cr.condition("Approved").is_none(), "{issuer}: {:?}", cr.status);
        assert!(
            cr.status.as_ref().and_then(|s| s.certificate.as_ref()).is_none(),
            "{issuer}: unapproved, never signed"
        );
    }

    // The approver-policy-shaped identity approves for `other`, and is refused for `third`.
    let approver =
        support::client_with_token(&support::service_account_token(&client, &env.ns.name, "approver-policy").await)
            .await;
    let approve = |name: String| {
        let approver = approver.clone();
        let namespace = env.ns.name.clone();
        async move {
            let patch = serde_json::json!({
                "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
                "status": {"conditions": [{
                    "type": "Approved", "status": "True", "reason": "policy.cert-manager.io",
                    "message": "Approved by CertificateRequestPolicy: \"istiod-intermediate\"",
                    "lastTransitionTime": Timestamp::now().to_string(),
                }]}
            });
            Api::<CertificateRequest>::namespaced(approver, &namespace)
                .patch_status(
                    &name,
                    &PatchParams::apply("approver-policy").force(),
                    &Patch::Apply(&patch),
                )
                .await
        }
    };
    approve("for-other-1".into())
        .await
        .expect("approving for its own signer name");
    wait_certificate(&env, "for-other", "Ready", |c| is_true(c, "Ready")).await;
    match approve("for-third-1".into()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message
                    .contains("does not have permissions to set approved/denied conditions"),
                "{}",
                e.message
            );
        }
        other => panic!("approving for another issuer must be refused: {other:?}"),
    }
    let third = request(&env, "for-third-1").await;
    assert!(third.condition("Approved").is_none());
    assert!(third.status.and_then(|s| s.certificate).is_none());
}
