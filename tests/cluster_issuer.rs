//! ClusterMeshCAIssuer: Secrets come only from the cluster resource namespace, requests from
//! the namespaces it allows are served, and issuer kinds are resolved strictly (no fallback between
//! MeshCAIssuer and ClusterMeshCAIssuer). These tests run a cluster-wide controller, so they
//! hold the harness's exclusive lock.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, PostParams};
use mesh_ca_issuer::api::issuer::{ClusterMeshCAIssuer, MeshCAIssuer};
use support::cert_manager::{self as cm, IntermediateRequest};
use support::issuer::{bootstrapped, from_secret};
use support::{RunningController, ScopeLock, TestNamespace, admin_client, ensure_crds};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn cluster_ready(client: &Client, name: &str, status: &str) -> (String, String) {
    support::wait_issuer(&Api::<ClusterMeshCAIssuer>::all(client.clone()), name, status, TIMEOUT).await
}

#[tokio::test]
async fn cluster_issuer_reads_only_the_cluster_resource_namespace_and_kinds_never_fall_back() {
    let client = admin_client().await;
    ensure_crds(&client).await;
    let _lock = ScopeLock::exclusive().await;
    let resources = TestNamespace::create(&client, "cluster-resources").await;
    let team_a = TestNamespace::create(&client, "team-a").await;
    let team_b = TestNamespace::create(&client, "team-b").await;
    let suffix = support::unique_suffix();
    let (good, misplaced) = (format!("mesh-{suffix}"), format!("misplaced-{suffix}"));
    let _cleanup = support::DeleteClusterIssuers(vec![good.clone(), misplaced.clone()]);
    let _controller = RunningController::start(&["--cluster-resource-namespace", &resources.name]).await;

    let api: Api<ClusterMeshCAIssuer> = Api::all(client.clone());
    // Two team namespaces it serves (by default it would serve only --istio-namespaces).
    let mut serving_teams = bootstrapped("mesh-root");
    serving_teams.policy.allowed_namespaces = vec![team_a.name.clone(), team_b.name.clone()];
    api.create(&PostParams::default(), &ClusterMeshCAIssuer::new(&good, serving_teams))
        .await
        .unwrap();
    cluster_ready(&client, &good, "True").await;
    // The bootstrapped root went into the cluster resource namespace, nowhere else.
    let root: Option<Secret> = resources.api().get_opt("mesh-root").await.unwrap();
    assert!(root.is_some());

    // A cluster issuer whose Secret exists only in a team namespace: it must not be read.
    let team_secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "team-root"}, "stringData": {"tls.crt": "x", "tls.key": "y"}
    }))
    .unwrap();
    team_a
        .api::<Secret>()
        .create(&PostParams::default(), &team_secret)
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &ClusterMeshCAIssuer::new(&misplaced, from_secret("team-root")),
    )
    .await
    .unwrap();
    let (reason, message) = cluster_ready(&client, &misplaced, "False").await;
    assert_eq!(reason, "SecretNotFound");
    // Events about cluster-scoped issuers land in kube-system (the namespace every Kubernetes
    // version accepts for them).
    let note = support::wait_for_event(
        &client,
        "kube-system",
        &format!("ClusterMeshCAIssuer/{misplaced}"),
        "SecretNotFound",
    )
    .await;
    assert!(note.contains("team-root"), "{note}");
    assert!(
        message.contains(&format!("Secret {}/team-root not found", resources.name)),
        "{message}"
    );

    // Requests from two namespaces, both served by the one cluster issuer.
    for ns in [&team_a, &team_b] {
        let req = IntermediateRequest {
            issuer_kind: "ClusterMeshCAIssuer".into(),
            ..IntermediateRequest::istiod("istiod", &good)
        };
        cm::request_and_approve(&client, &ns.name, &req).await;
        cm::wait_for_reason(&client, &ns.name, "istiod", &["Issued"], TIMEOUT).await;
    }

    // Strict kinds: a namespaced issuer named like the cluster one does not serve a request
    // for the cluster kind, and vice versa.
    let local = format!("local-{suffix}");
    let ns_issuers: Api<MeshCAIssuer> = team_b.api();
    ns_issuers
        .create(
            &PostParams::default(),
            &MeshCAIssuer::new(&local, bootstrapped("local-root")),
        )
        .await
        .unwrap();
    let wrong_cluster = IntermediateRequest {
        issuer_kind: "ClusterMeshCAIssuer".into(),
        ..IntermediateRequest::istiod("wants-cluster", &local)
    };
    cm::request_and_approve(&client, &team_b.name, &wrong_cluster).await;
    let wrong_namespaced = IntermediateRequest::istiod("wants-namespaced", &good);
    cm::request_and_approve(&client, &team_b.name, &wrong_namespaced).await;
    for (name, expected) in [
        (
            "wants-cluster",
            format!("ClusterMeshCAIssuer {local}: it does not exist"),
        ),
        (
            "wants-namespaced",
            format!("MeshCAIssuer {}/{good}: it does not exist", team_b.name),
        ),
    ] {
        let cr = cm::wait_for_reason(&client, &team_b.name, name, &["Pending"], TIMEOUT).await;
        let message = cm::ready_message(&cr);
        assert!(message.contains(&expected), "{name}: {message}");
    }
}
