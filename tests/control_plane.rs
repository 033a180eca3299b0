//! The local control plane is a real Kubernetes API server: custom resources are written and
//! read back, status is server-side applied through `/status`, watches deliver changes, RBAC
//! denies an unprivileged identity, and the controller binary becomes healthy and ready.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mesh_ca_issuer::api::cert_manager::{CertificateRequest, CertificateRequestSpec, IssuerReference};
use mesh_ca_issuer::api::issuer::MeshCAIssuer;
use support::{TEST_MANAGER, TestNamespace, admin_client, client_with_token};

fn request(name: &str) -> CertificateRequest {
    CertificateRequest::new(
        name,
        CertificateRequestSpec {
            issuer_ref: IssuerReference {
                name: "mesh".into(),
                kind: Some("MeshCAIssuer".into()),
                group: Some("meshca.io".into()),
            },
            request: b"-----BEGIN CERTIFICATE REQUEST-----\n".to_vec(),
            is_ca: Some(true),
            ..Default::default()
        },
    )
}

#[tokio::test]
async fn custom_resource_write_is_stored_and_read_back() {
    let (_, ns) = support::test_namespace("cp-cr-write").await;
    let issuers: Api<MeshCAIssuer> = ns.api();
    let spec = support::issuer::from_secret("root-ca");
    support::issuer::create(&issuers, "mesh", spec.clone()).await;

    let stored = issuers.get("mesh").await.unwrap();
    assert_eq!(stored.spec, spec);
    // The API server applied the schema's defaults to the policy we left out.
    assert!(stored.spec.policy.require_ca);
    assert_eq!(stored.metadata.generation, Some(1));
}

#[tokio::test]
async fn server_side_apply_on_status_keeps_each_managers_condition() {
    let (_, ns) = support::test_namespace("cp-ssa-status").await;
    let requests: Api<CertificateRequest> = ns.api();
    requests.create(&PostParams::default(), &request("r1")).await.unwrap();

    // The approver's condition, then ours, each applied by its own field manager.
    let approved = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "test", "message": "ok"}]}
    });
    requests
        .patch_status("r1", &PatchParams::apply("approver-stand-in"), &Patch::Apply(&approved))
        .await
        .unwrap();
    let ready = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Pending", "message": "waiting"}]}
    });
    requests
        .patch_status("r1", &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&ready))
        .await
        .unwrap();

    let stored = requests.get("r1").await.unwrap();
    assert!(
        stored.condition_is_true("Approved"),
        "the other manager's condition survives"
    );
    assert_eq!(
        stored.condition("Ready").map(|c| c.reason.clone()),
        Some(Some("Pending".into()))
    );
    // Our manager owns exactly the Ready condition under status (1.20 predates the
    // managedFields `subresource` field, so look at the owned field set itself).
    let ours = stored
        .managed_fields()
        .iter()
        .find(|m| m.manager.as_deref() == Some(TEST_MANAGER))
        .expect("an entry for our field manager");
    let owned = serde_json::to_value(&ours.fields_v1).unwrap();
    let conditions = &owned["f:status"]["f:conditions"];
    assert!(conditions.get(r#"k:{"type":"Ready"}"#).is_some(), "{owned}");
    assert!(conditions.get(r#"k:{"type":"Approved"}"#).is_none(), "{owned}");
    assert!(owned.get("f:spec").is_none(), "{owned}");
    // Spec is untouched by status writes.
    assert_eq!(stored.spec, request("r1").spec);
}

#[tokio::test]
async fn watch_sees_a_change() {
    let (_, ns) = support::test_namespace("cp-watch").await;
    let requests: Api<CertificateRequest> = ns.api();

    let mut events = watcher(requests.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    // The initial (empty) list is done once the watch is established: create after starting.
    let create = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        requests
            .create(&PostParams::default(), &request("watched"))
            .await
            .unwrap();
        let label = serde_json::json!({"metadata": {"labels": {"changed": "yes"}}});
        requests
            .patch("watched", &PatchParams::default(), &Patch::Merge(&label))
            .await
            .unwrap();
    };
    let observe = async {
        while let Some(obj) = events.try_next().await.unwrap() {
            if obj.name_any() == "watched" && obj.labels().get("changed").map(String::as_str) == Some("yes") {
                return true;
            }
        }
        false
    };
    let (_, saw_change) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(create, observe) })
        .await
        .expect("the watch delivered the change within 20s");
    assert!(saw_change);
}

#[tokio::test]
async fn unprivileged_service_account_is_denied_by_rbac() {
    let client = admin_client().await;
    let ns = TestNamespace::create(&client, "cp-rbac").await;
    let accounts: Api<ServiceAccount> = ns.api();
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "nobody"}})).unwrap();
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    // A real ServiceAccount token from the TokenRequest API (signed by the control plane's key).
    let token_request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 600}
    }))
    .unwrap();
    let issued: TokenRequest = accounts
        .create_subresource("token", "nobody", &PostParams::default(), &token_request)
        .await
        .unwrap();
    let token = issued.status.and_then(|s| s.token).expect("an issued token");

    let as_nobody = client_with_token(&token).await;
    let secrets: Api<Secret> = Api::namespaced(as_nobody.clone(), &ns.name);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message.contains(&format!("system:serviceaccount:{}:nobody", ns.name)),
                "{}",
                e.message
            );
        }
        other => panic!("listing secrets as an unprivileged ServiceAccount must be forbidden, got {other:?}"),
    }
    // The same token authenticates: the denial is authorization, not a broken token.
    let review = as_nobody
        .request::<serde_json::Value>(http_request(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            &ns.name,
        ))
        .await
        .expect("an authenticated identity may review its own rules");
    assert_eq!(review["kind"], "SelfSubjectRulesReview");
    // Admin can list the same secrets.
    let admin_secrets: Api<Secret> = ns.api();
    admin_secrets.list(&ListParams::default()).await.unwrap();
}

fn http_request(path: &str, namespace: &str) -> http::Request<Vec<u8>> {
    let body = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": namespace}
    });
    http::Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap()
}

#[tokio::test]
async fn controller_binary_becomes_healthy_and_ready() {
    let (_, ns) = support::test_namespace("cp-controller").await;
    let logs = tempfile::tempdir().unwrap();
    let mut controller = support::ControllerProcess::start(&["--namespace", &ns.name], logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "not ready: {}",
        controller.log()
    );

    let (status, body) = support::http_get(controller.admin_port, "/healthz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, metrics) = support::http_get(controller.admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(metrics.lines().any(|l| l == "meshca_controller_ready 1"), "{metrics}");
}

#[tokio::test]
async fn status_apply_with_a_stale_resource_version_is_refused() {
    // The controller relies on this to never publish a decision made on an outdated request.
    let (_, ns) = support::test_namespace("cp-ssa-precondition").await;
    let requests: Api<CertificateRequest> = ns.api();
    let created = requests.create(&PostParams::default(), &request("r1")).await.unwrap();
    let stale = created.resource_version().unwrap();
    let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
    requests
        .patch("r1", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let ready = |rv: &str| {
        serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
            "metadata": {"resourceVersion": rv},
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Issued", "message": "m"}]}
        })
    };
    match requests
        .patch_status(
            "r1",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&ready(&stale)),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 409, "{e:?}"),
        other => panic!("a stale resourceVersion must be refused, got {other:?}"),
    }
    let current = requests.get("r1").await.unwrap().resource_version().unwrap();
    requests
        .patch_status(
            "r1",
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(&ready(&current)),
        )
        .await
        .expect("the current resourceVersion is accepted");
}

/// The API server's answer to a create: the error message of a refusal, `None` when stored.
async fn refusal(api: &Api<kube::core::DynamicObject>, object: serde_json::Value) -> Option<String> {
    let object: kube::core::DynamicObject = serde_json::from_value(object).unwrap();
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => None,
        Err(kube::Error::Api(e)) if e.code == 422 => Some(e.message),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn the_api_server_refuses_what_the_crds_cel_rules_forbid_in_plain_words() {
    let (client, ns) = support::test_namespace("cp-cel").await;
    let gvk = |kind: &str| kube::core::GroupVersionKind::gvk("meshca.io", "v1alpha1", kind);
    let issuers = Api::<kube::core::DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::core::ApiResource::from_gvk_with_plural(&gvk("MeshCAIssuer"), "meshcaissuers"),
    );
    let iccs = Api::<kube::core::DynamicObject>::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::core::ApiResource::from_gvk_with_plural(&gvk("IstioCACerts"), "istiocacerts"),
    );
    let issuer = |name: &str, spec: serde_json::Value| {
        serde_json::json!({"apiVersion": "meshca.io/v1alpha1", "kind": "MeshCAIssuer",
            "metadata": {"name": name}, "spec": spec})
    };
    let icc = |name: &str, spec: serde_json::Value| {
        serde_json::json!({"apiVersion": "meshca.io/v1alpha1", "kind": "IstioCACerts",
            "metadata": {"name": name}, "spec": spec})
    };

    // Two backends, and none.
    let both = serde_json::json!({"localCA": {"secretName": "root"},
        "awsPCA": {"arn": "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/x"}});
    let message = refusal(&issuers, issuer("both", both))
        .await
        .expect("two backends refused");
    assert!(
        message.contains("exactly one backend must be set: localCA, awsPCA or vault"),
        "{message}"
    );
    let message = refusal(&issuers, issuer("none", serde_json::json!({})))
        .await
        .expect("no backend refused");
    assert!(message.contains("exactly one backend must be set"), "{message}");
    assert!(
        refusal(
            &issuers,
            issuer("one", serde_json::json!({"localCA": {"secretName": "root"}}))
        )
        .await
        .is_none()
    );

    // cacerts written over cert-manager's Secret, named or by default.
    let message = refusal(
        &iccs,
        icc(
            "same",
            serde_json::json!({"sourceSecretName": "istiod-ca", "targetSecretName": "istiod-ca"}),
        ),
    )
    .await
    .expect("target == source refused");
    assert!(
        message.contains("targetSecretName must differ from sourceSecretName"),
        "{message}"
    );
    let message = refusal(
        &iccs,
        icc("default", serde_json::json!({"sourceSecretName": "cacerts"})),
    )
    .await
    .expect("a source named like the default target refused");
    assert!(message.contains("targetSecretName must differ"), "{message}");

    // A trust anchor with two sources.
    let anchor = serde_json::json!({"name": "west", "configMapKeyRef": {"name": "a", "key": "k"},
        "secretKeyRef": {"name": "b", "key": "k"}});
    let message = refusal(
        &iccs,
        icc(
            "anchor",
            serde_json::json!({"sourceSecretName": "src", "trustAnchors": [anchor]}),
        ),
    )
    .await
    .expect("two anchor sources refused");
    assert!(
        message.contains("exactly one source must be set: configMapKeyRef, secretKeyRef or spiffeBundleEndpoint"),
        "{message}"
    );
    // A bundle endpoint anchor over plain HTTP, and an https_spiffe one without its SPIFFE ID
    // and bootstrap bundle.
    for (name, endpoint, expected) in [
        (
            "plain-http",
            serde_json::json!({"url": "http://bundle.west.example/west.example", "profile": "https_web"}),
            "url must be https://",
        ),
        (
            "no-bootstrap",
            serde_json::json!({"url": "https://bundle.west.example/west.example", "profile": "https_spiffe"}),
            "the https_spiffe profile needs endpointSPIFFEID and bootstrapBundle",
        ),
    ] {
        let anchor = serde_json::json!({"name": "west", "spiffeBundleEndpoint": endpoint});
        let message = refusal(
            &iccs,
            icc(
                name,
                serde_json::json!({"sourceSecretName": "src", "trustAnchors": [anchor]}),
            ),
        )
        .await
        .unwrap_or_else(|| panic!("{name} refused"));
        assert!(message.contains(expected), "{name}: {message}");
    }
    assert!(
        refusal(&iccs, icc("fine", serde_json::json!({"sourceSecretName": "src"})))
            .await
            .is_none()
    );
}
