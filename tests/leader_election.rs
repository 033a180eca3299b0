//! High availability: two controller processes against one control plane, one leader. Only
//! the leader writes; when it is killed (SIGKILL) the other takes over within the lease
//! duration, pending requests complete, and no request is signed twice.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuerSpec, LocalCA, MeshCAIssuer, RootBootstrap};
use mesh_ca_issuer::pki::Certificate;
use support::cert_manager::{self as cm, IntermediateRequest};
use support::{ControllerProcess, eventually, http_get};

const LEASE: Duration = Duration::from_secs(4);
const RETRY: Duration = Duration::from_millis(500);

/// Reads one unlabelled gauge or a labelled counter line from /metrics.
async fn metric(port: u16, series: &str) -> f64 {
    let Ok((200, text)) = http_get(port, "/metrics").await else {
        return -1.0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn is_leader(c: &ControllerProcess) -> bool {
    metric(c.admin_port, "meshca_leader ").await == 1.0
}

#[tokio::test]
async fn one_leader_writes_and_a_standby_takes_over_when_it_dies() {
    let (_lock, client, ns) = support::namespaced_test("ha").await;
    let logs = tempfile::tempdir().unwrap();
    let flags = [
        "--namespace",
        &ns.name,
        "--leader-elect=true",
        "--leader-election-namespace",
        &ns.name,
        "--leader-election-lease-duration",
        "4s",
        "--leader-election-renew-deadline",
        "3s",
        "--leader-election-retry-period",
        "500ms",
    ];
    let kubeconfig = support::kubeconfig();
    let mut a = ControllerProcess::start_with_env(&kubeconfig, &flags, &[("POD_NAME", "replica-a")], logs.path());
    let mut b = ControllerProcess::start_with_env(&kubeconfig, &flags, &[("POD_NAME", "replica-b")], logs.path());
    // Both are ready (caches synced) whether they lead or not.
    assert!(a.wait_ready(Duration::from_secs(60)).await, "{}", a.log());
    assert!(b.wait_ready(Duration::from_secs(60)).await, "{}", b.log());
    let leader_found = eventually(Duration::from_secs(20), || async {
        match (is_leader(&a).await, is_leader(&b).await) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    })
    .await
    .expect("exactly one leader");
    let (mut leader, standby) = if leader_found { (a, b) } else { (b, a) };

    let issuers: Api<MeshCAIssuer> = ns.api();
    let spec = IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: "root".into(),
            bootstrap: Some(RootBootstrap::default()),
        }),
        ..Default::default()
    };
    issuers
        .create(&PostParams::default(), &MeshCAIssuer::new("mesh", spec))
        .await
        .unwrap();
    for i in 0..5 {
        cm::request_and_approve(
            &client,
            &ns.name,
            &IntermediateRequest::istiod(&format!("before-{i}"), "mesh"),
        )
        .await;
    }
    for i in 0..5 {
        cm::wait_for_reason(
            &client,
            &ns.name,
            &format!("before-{i}"),
            &["Issued"],
            Duration::from_secs(30),
        )
        .await;
    }
    let issued_metric = "meshca_reconciles_total{controller=\"certificaterequest\",outcome=\"issued\"} ";
    assert_eq!(
        metric(leader.admin_port, issued_metric).await,
        5.0,
        "the leader wrote every status"
    );
    assert_eq!(
        metric(standby.admin_port, issued_metric).await,
        0.0,
        "the standby wrote nothing"
    );

    // The leader dies without a word; requests keep coming.
    let pid = leader.child.id().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    let killed = Instant::now();
    let _ = leader.child.wait();
    for i in 0..5 {
        cm::request_and_approve(
            &client,
            &ns.name,
            &IntermediateRequest::istiod(&format!("after-{i}"), "mesh"),
        )
        .await;
    }
    eventually(Duration::from_secs(20), || async {
        is_leader(&standby).await.then_some(())
    })
    .await
    .expect("the standby takes over");
    let failover = killed.elapsed();
    // The lease was renewed at most one retry period before the kill; the standby polls every
    // retry period: the takeover comes within lease duration + retry period of the kill.
    assert!(
        failover <= LEASE + RETRY + Duration::from_millis(800),
        "failover took {failover:?}"
    );
    println!(
        "failover after SIGKILL: {:.2}s (lease duration {}s)",
        failover.as_secs_f64(),
        LEASE.as_secs()
    );
    for i in 0..5 {
        cm::wait_for_reason(
            &client,
            &ns.name,
            &format!("after-{i}"),
            &["Issued"],
            Duration::from_secs(30),
        )
        .await;
    }

    // No request was signed twice: one Issued event each, ten distinct serials, and the early
    // requests still hold the certificate the first leader gave them.
    let api: Api<CertificateRequest> = ns.api();
    let mut serials = HashSet::new();
    for name in (0..5)
        .map(|i| format!("before-{i}"))
        .chain((0..5).map(|i| format!("after-{i}")))
    {
        let cr = api.get(&name).await.unwrap();
        let cert = Certificate::parse_pem_bundle(cr.status.unwrap().certificate.as_deref().unwrap(), "c")
            .unwrap()
            .remove(0);
        serials.insert(cert.serial_hex());
        let issued_events = support::events_for(&client, &ns.name, &name)
            .await
            .into_iter()
            .filter(|e| e.1 == "Issued")
            .count();
        assert_eq!(issued_events, 1, "{name} signed once");
    }
    assert_eq!(serials.len(), 10);
    assert_eq!(
        metric(standby.admin_port, issued_metric).await,
        5.0,
        "the new leader issued the five new requests"
    );
}
