//! cacerts benchmark against the real local API server (run by `hack/bench`): the time from
//! cert-manager's Secret changing (a renewal) to `cacerts` holding the new intermediate, over
//! 100 renewals done one after another. Intermediates are issued beforehand, so only the
//! IstioCACerts path is measured. Prints p50/p99/max; figures, not assertions.

#[path = "../tests/support/cert_manager.rs"]
mod cert_manager;
mod common;

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuerSpec, LocalCA, RootBootstrap};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec};

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} did not happen within 120s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    if !common::started_by_hack_bench("cacerts") {
        return;
    }
    let renewals: usize = common::env_or("MESHCA_BENCH_RENEWALS", 100);
    let client = Client::try_default().await.expect("KUBECONFIG");
    let ns = format!("bench-cacerts-{}", std::process::id());
    common::create_namespace(&client, &ns).await;
    let spec = IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: "bench-root".into(),
            bootstrap: Some(RootBootstrap::default()),
        }),
        ..Default::default()
    };
    common::create_ready_issuer(&client, &ns, "bench", spec).await;

    // Issue every intermediate up front (cert-manager's and the issuer's part).
    println!("issuing {} intermediates beforehand...", renewals + 1);
    let mut issued: Vec<(CertificateRequest, String)> = Vec::new();
    for i in 0..=renewals {
        let req = cert_manager::IntermediateRequest::istiod(&format!("istiod-{i}"), "bench");
        let issued_one = cert_manager::request_until(&client, &ns, &req, &["Issued"], Duration::from_secs(120)).await;
        issued.push(issued_one);
    }
    let (first, first_key) = &issued[0];
    cert_manager::write_certificate_secret(&client, &ns, "istiod-intermediate", first, first_key).await;
    let iccs: Api<IstioCACerts> = Api::namespaced(client.clone(), &ns);
    let spec = IstioCACertsSpec {
        source_secret_name: "istiod-intermediate".into(),
        target_secret_name: "cacerts".into(),
        adopt_existing: mesh_ca_issuer::api::istio_cacerts::AdoptExisting::Never,
        ..Default::default()
    };
    iccs.create(&PostParams::default(), &IstioCACerts::new("istiod", spec))
        .await
        .expect("IstioCACerts");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    wait_until("first cacerts", || async {
        secrets.get_opt("cacerts").await.ok().flatten().is_some()
    })
    .await;

    // Watch cacerts; each renewal writes the source and waits for the new ca-cert.pem.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, Instant)>();
    let watch_api = secrets.clone();
    tokio::spawn(async move {
        let stream = watcher(watch_api, watcher::Config::default().fields("metadata.name=cacerts")).applied_objects();
        let mut stream = std::pin::pin!(stream);
        while let Ok(Some(secret)) = stream.try_next().await {
            let ca_cert = secret
                .data
                .as_ref()
                .and_then(|d| d.get("ca-cert.pem"))
                .map(|b| b.0.clone())
                .unwrap_or_default();
            let _ = tx.send((ca_cert, Instant::now()));
        }
    });
    let mut latencies = Vec::new();
    for (cr, key) in issued.iter().skip(1) {
        let expected = cr
            .status
            .as_ref()
            .and_then(|s| s.certificate.clone())
            .unwrap_or_default();
        while rx.try_recv().is_ok() {}
        let started = Instant::now();
        cert_manager::write_certificate_secret(&client, &ns, "istiod-intermediate", cr, key).await;
        loop {
            let Some((ca_cert, at)) = rx.recv().await else {
                panic!("watch ended")
            };
            if ca_cert == expected {
                latencies.push(at.saturating_duration_since(started));
                break;
            }
        }
    }
    latencies.sort();
    let total: Duration = latencies.iter().sum();
    println!(
        "source Secret change -> cacerts written, over {} renewals:",
        latencies.len()
    );
    println!(
        "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   mean {:.1} ms",
        common::percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        common::percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3 / latencies.len().max(1) as f64
    );
    let written = secrets.get("cacerts").await.expect("cacerts");
    println!(
        "  cacerts resourceVersion after: {}",
        written.resource_version().unwrap_or_default()
    );
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await;
}
