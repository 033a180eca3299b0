//! What the benchmarks share: a namespace, a Ready issuer, percentiles.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use mesh_ca_issuer::api::issuer::{IssuerSpec, MeshCAIssuer};

/// The value at quantile `p` (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

/// Whether hack/bench started this benchmark (`--bench`); when it did, the crypto provider is
/// installed for what follows. `cargo test --all-targets` runs bench binaries without
/// `--bench`, and these need a control plane (and a controller) that only hack/bench provides,
/// so the benchmark `name` then says so and does nothing.
pub fn started_by_hack_bench(name: &str) -> bool {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} benchmark: run it with hack/bench");
        return false;
    }
    mesh_ca_issuer::install_crypto_provider();
    true
}

/// The value of environment variable `name`, else `default`: the benchmarks' knobs
/// (`MESHCA_BENCH_*`, set by whoever runs hack/bench).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Creates namespace `name`.
pub async fn create_namespace(client: &Client, name: &str) {
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// Creates MeshCAIssuer `name` in `namespace` and waits until it is Ready.
pub async fn create_ready_issuer(client: &Client, namespace: &str, name: &str, spec: IssuerSpec) {
    let issuers: Api<MeshCAIssuer> = Api::namespaced(client.clone(), namespace);
    issuers
        .create(&PostParams::default(), &MeshCAIssuer::new(name, spec))
        .await
        .expect("create issuer");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = issuers
            .get(name)
            .await
            .ok()
            .and_then(|i| i.status)
            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "issuer {namespace}/{name} not Ready within 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
