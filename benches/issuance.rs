//! Issuance benchmark against the real local API server (run by `hack/bench`, which
//! starts the control plane and the controller and passes its pid and admin port).
//!
//! For each batch size: N CertificateRequests for istiod intermediates are created, then all
//! approved as fast as the API server takes it; approve→Ready latency is measured per request
//! from the moment its approval was accepted to the moment a watch saw it Ready. Prints p50,
//! p99, max, throughput, the controller's RSS idle and after each batch, and its CPU time per
//! request. Figures, not assertions: the machines are shared and noisy.

#[path = "../tests/support/cert_manager.rs"]
mod cert_manager;
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{AwsCredentialsSecretRef, AwsPCA, IssuerSpec, LocalCA, RootBootstrap};

/// A call to the fixture's control endpoint (plain HTTP, JSON in and out).
async fn fixture_control(endpoint: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let body = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("fixture");
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let json = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(json).expect("fixture JSON")
}

/// Creates an ACTIVE root CA on the fixture.
async fn pca_root_ca(endpoint: &str) -> String {
    let body =
        serde_json::json!({"keyAlgorithm": "EC_prime256v1", "usageMode": "GENERAL_PURPOSE", "validityDays": 3650});
    fixture_control(endpoint, "/__fixture/ca", body).await["arn"]
        .as_str()
        .expect("arn")
        .to_string()
}

/// IssueCertificate calls the fixture has answered so far (throttled ones included).
async fn issue_calls(endpoint: &str) -> u64 {
    fixture_control(endpoint, "/__fixture/stats", serde_json::json!({})).await["calls"]["IssueCertificate"]
        .as_u64()
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The process' user + system CPU time, from /proc/<pid>/stat (clock ticks of 10 ms on Linux).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

async fn run_batch(client: &Client, ns: &str, n: usize, tag: &str) -> (Vec<Duration>, Duration) {
    // Keys and CSRs are cert-manager's work, not ours: made before the clock starts.
    let requests: Vec<(cert_manager::IntermediateRequest, String)> = (0..n)
        .map(|i| {
            let req = cert_manager::IntermediateRequest::istiod(&format!("{tag}-{i}"), "bench");
            let (_, csr) = cert_manager::make_key_and_csr(&req);
            (req, csr)
        })
        .collect();
    futures::stream::iter(requests.iter())
        .for_each_concurrent(16, |(req, csr)| async move {
            cert_manager::create_request(client, ns, req, csr.as_bytes()).await;
        })
        .await;

    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    let prefix = format!("{tag}-");
    let watch = watcher(api.clone(), watcher::Config::default()).applied_objects();
    let (approved_tx, mut approved_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let started = Instant::now();
    let approve = async {
        futures::stream::iter(requests.iter())
            .for_each_concurrent(16, |(req, _)| {
                let tx = approved_tx.clone();
                async move {
                    cert_manager::approve(client, ns, &req.name).await;
                    let _ = tx.send((req.name.clone(), Instant::now()));
                }
            })
            .await;
    };
    let observe = async {
        let mut ready_at: HashMap<String, Instant> = HashMap::new();
        let mut watch = std::pin::pin!(watch);
        while ready_at.len() < n {
            let Some(cr) = watch.try_next().await.expect("watch") else {
                break;
            };
            let name = cr.name_any();
            if name.starts_with(&prefix) && cr.condition("Ready").is_some_and(|c| c.status == "True") {
                ready_at.entry(name).or_insert_with(Instant::now);
            }
        }
        ready_at
    };
    let (_, ready_at) = tokio::join!(approve, observe);
    let wall = started.elapsed();
    drop(approved_tx);
    let mut approved_at = HashMap::new();
    while let Some((name, at)) = approved_rx.recv().await {
        approved_at.insert(name, at);
    }
    let mut latencies: Vec<Duration> = ready_at
        .iter()
        .filter_map(|(name, ready)| approved_at.get(name).map(|a| ready.saturating_duration_since(*a)))
        .collect();
    latencies.sort();
    (latencies, wall)
}

#[tokio::main]
async fn main() {
    if !common::started_by_hack_bench("issuance") {
        return;
    }
    let pid: u32 = common::env_or("MESHCA_BENCH_CONTROLLER_PID", 0);
    let sizes: Vec<usize> = std::env::var("MESHCA_BENCH_SIZES")
        .unwrap_or_else(|_| "100,500".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let client = Client::try_default().await.expect("KUBECONFIG");
    let ns_name = format!("bench-{}", std::process::id());
    common::create_namespace(&client, &ns_name).await;
    let spec = match std::env::var("MESHCA_BENCH_PCA_ENDPOINT") {
        // AWS Private CA through the local ACM PCA endpoint (hack/bench starts it).
        Ok(endpoint) => {
            let arn = pca_root_ca(&endpoint).await;
            let creds: Secret = serde_json::from_value(serde_json::json!({
                "metadata": {"name": "aws-creds"},
                "stringData": {"AWS_ACCESS_KEY_ID": "AKIDMESHCATEST", "AWS_SECRET_ACCESS_KEY": "bench-only"}
            }))
            .unwrap();
            Api::<Secret>::namespaced(client.clone(), &ns_name)
                .create(&PostParams::default(), &creds)
                .await
                .expect("credentials");
            println!("backend: awsPCA ({arn} at {endpoint})");
            IssuerSpec {
                aws_pca: Some(AwsPCA {
                    arn,
                    endpoint: Some(endpoint),
                    credentials_secret_ref: Some(AwsCredentialsSecretRef::named("aws-creds")),
                    ..Default::default()
                }),
                ..Default::default()
            }
        }
        Err(_) => {
            println!("backend: localCA");
            IssuerSpec {
                local_ca: Some(LocalCA {
                    secret_name: "bench-root".into(),
                    bootstrap: Some(RootBootstrap::default()),
                }),
                ..Default::default()
            }
        }
    };
    common::create_ready_issuer(&client, &ns_name, "bench", spec).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid);
    println!(
        "controller RSS idle: {} MiB",
        idle.map(|k| format!("{:.1}", k as f64 / 1024.0))
            .unwrap_or("n/a".into())
    );
    println!(
        "{:>6} {:>10} {:>10} {:>10} {:>10} {:>12} {:>14} {:>14}",
        "N", "p50 ms", "p99 ms", "max ms", "wall s", "req/s", "RSS after MiB", "CPU ms/req"
    );
    let endpoint = std::env::var("MESHCA_BENCH_PCA_ENDPOINT").ok();
    let mut p50s = Vec::new();
    for (i, n) in sizes.iter().enumerate() {
        let cpu_before = cpu_time(pid);
        let calls_before = match &endpoint {
            Some(e) => Some(issue_calls(e).await),
            None => None,
        };
        let (lat, wall) = run_batch(&client, &ns_name, *n, &format!("b{i}")).await;
        if let (Some(e), Some(before)) = (&endpoint, calls_before) {
            let calls = issue_calls(e).await - before;
            println!(
                "  IssueCertificate calls for {n} requests: {calls} ({:.2} per request)",
                calls as f64 / *n as f64
            );
        }
        // The controller's own CPU per request: what is left of the latency is queueing and
        // the API server's work.
        let cpu_per_request = cpu_before
            .zip(cpu_time(pid))
            .map(|(before, after)| format!("{:.2}", (after - before).as_secs_f64() * 1e3 / *n as f64))
            .unwrap_or("n/a".into());
        let p50 = common::percentile(&lat, 0.50);
        p50s.push((*n, p50, common::percentile(&lat, 0.99)));
        let after = rss_kib(pid);
        println!(
            "{:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.2} {:>12.1} {:>14} {:>14}",
            n,
            p50.as_secs_f64() * 1e3,
            common::percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            wall.as_secs_f64(),
            lat.len() as f64 / wall.as_secs_f64(),
            after
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or("n/a".into()),
            cpu_per_request,
        );
        assert_eq!(lat.len(), *n, "every request must be issued");
    }
    // Throttling: the next THROTTLES IssueCertificate calls are refused; each costs exactly
    // one more call, and no request is issued twice.
    if let Some(e) = &endpoint {
        let n = sizes.first().copied().unwrap_or(20);
        let throttles: u64 = std::env::var("MESHCA_BENCH_THROTTLES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let before = issue_calls(e).await;
        fixture_control(
            e,
            "/__fixture/faults",
            serde_json::json!({"operation": "IssueCertificate", "kind": "throttle", "count": throttles}),
        )
        .await;
        let (lat, wall) = run_batch(&client, &ns_name, n, "throttled").await;
        let calls = issue_calls(e).await - before;
        println!(
            "throttled: {n} requests with {throttles} throttles injected: {calls} IssueCertificate calls (1 + throttles would be {}), p50 {:.1} ms, p99 {:.1} ms, wall {:.2} s",
            n as u64 + throttles,
            common::percentile(&lat, 0.50).as_secs_f64() * 1e3,
            common::percentile(&lat, 0.99).as_secs_f64() * 1e3,
            wall.as_secs_f64()
        );
    }
    // Ratios within one run are what to compare across machines.
    if let (Some(first), Some(last)) = (p50s.first(), p50s.last())
        && p50s.len() > 1
    {
        println!(
            "ratio N={} / N={}: p50 {:.2}x, p99 {:.2}x",
            last.0,
            first.0,
            last.1.as_secs_f64() / first.1.as_secs_f64().max(1e-9),
            last.2.as_secs_f64() / first.2.as_secs_f64().max(1e-9)
        );
    }
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&ns_name, &DeleteParams::default())
        .await;
}
