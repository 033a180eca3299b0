//! The performance harness (run by `hack/bench`, which starts the local control plane and
//! installs the CRDs). It starts the controller itself (`MESHCA_BENCH_CONTROLLER_BIN`), so it
//! can read its RSS and CPU time and restart it for the cold start, and measures:
//!
//! - **floor**: a bare client writing what a contract-complete issuer must write — the final
//!   status (a precomputed certificate and CA of the same size, server-side apply on `/status`
//!   with a resourceVersion precondition, as the controller does) plus one Normal event —
//!   to N approved requests at the controller's concurrency (`--concurrent-workers`);
//! - **gated burst**: N approved requests wait on a missing issuer; the issuer is created and
//!   the clock runs until a watch sees all N `Ready`; the ratio to the floor for each N;
//! - **end-to-end burst**: creation and approval race the controller;
//! - **steady arrival**: one approval every 1/rate s; approve→Ready p50/p99/max, next to the
//!   floor's serial p50/p99 (one status write plus one event, one after another);
//! - **memory**: controller RSS idle, after foreign Secrets and foreign issued requests (with a
//!   3-certificate chain and a CA) across 50 namespaces, after its own issued requests, after
//!   an idle period;
//! - **cold start**: process start to `/readyz` with our issued requests and the foreign ones
//!   in the cluster, and how many were signed again (must be 0).
//!
//! Prints one table and writes it as JSON to `target/bench/perf.json`; comparisons are the
//! `ratio_*` fields, measured in the same run. Figures, never assertions: the machines are
//! shared and noisy. `--smoke` runs every phase at toy sizes (seconds), to keep this from rotting.

#[path = "../tests/support/cert_manager.rs"]
mod cert_manager;
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use mesh_ca_issuer::api::cert_manager::{
    CertificateRequest, CertificateRequestCondition, CertificateRequestSpec, CertificateRequestStatus, IssuerReference,
};
use mesh_ca_issuer::api::issuer::{IssuerSpec, LocalCA, RootBootstrap};

const BATCH_LABEL: &str = "bench.meshca.io/batch";
/// The bench issuers' CA Secret (bootstrapped by the first issuer).
const ROOT_SECRET: &str = "bench-root";
/// The group of requests nobody serves: the floor's and the foreign ones.
const FOREIGN_GROUP: &str = "other-issuer.example.com";

// === sizes ===

struct Sizes {
    gated: Vec<usize>,
    steady_rate: u32,
    steady_secs: u32,
    floor_serial: usize,
    foreign_namespaces: usize,
    foreign_secrets: usize,
    foreign_requests: usize,
    own_requests: usize,
    idle_secs: u64,
}

impl Sizes {
    fn from_env(smoke: bool) -> Self {
        let var = |name: &str, full: u64, smoke_value: u64| -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(if smoke { smoke_value } else { full })
        };
        let gated = std::env::var("MESHCA_BENCH_SIZES")
            .unwrap_or_else(|_| if smoke { "20".into() } else { "100,500,2000".into() })
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        Sizes {
            gated,
            steady_rate: var("MESHCA_BENCH_STEADY_RATE", 10, 10) as u32,
            steady_secs: var("MESHCA_BENCH_STEADY_SECS", 60, 2) as u32,
            floor_serial: var("MESHCA_BENCH_FLOOR_SERIAL", 200, 10) as usize,
            foreign_namespaces: var("MESHCA_BENCH_FOREIGN_NAMESPACES", 50, 2) as usize,
            foreign_secrets: var("MESHCA_BENCH_FOREIGN_SECRETS", 10_000, 20) as usize,
            foreign_requests: var("MESHCA_BENCH_FOREIGN_REQUESTS", 1_000, 20) as usize,
            own_requests: var("MESHCA_BENCH_OWN_REQUESTS", 1_000, 20) as usize,
            idle_secs: var("MESHCA_BENCH_IDLE_SECS", 600, 1),
        }
    }
}

// === the controller process ===

/// The controller's `--concurrent-workers`, which the floor matches: `MESHCA_BENCH_WORKERS`,
/// default 16 (the controller's default); `unbounded` passes no flag (builds before the flag,
/// which reconciled without a limit) and the floor writes everything at once.
fn workers() -> Option<usize> {
    match std::env::var("MESHCA_BENCH_WORKERS").as_deref() {
        Ok("unbounded") => None,
        Ok(n) => Some(n.parse().expect("MESHCA_BENCH_WORKERS: a number or 'unbounded'")),
        Err(_) => Some(16),
    }
}

struct Controller {
    child: tokio::process::Child,
    pid: u32,
    admin: String,
    /// `perf record` attached to the controller (`MESHCA_BENCH_PERF_DATA`): a CPU profile of
    /// everything it does, for `hack/bench --profile`.
    profiler: Option<std::process::Child>,
}

impl Controller {
    /// Starts the controller and waits for `/readyz`; returns it and the time that took.
    async fn start(log: &std::path::Path) -> (Controller, Duration) {
        let bin =
            std::env::var("MESHCA_BENCH_CONTROLLER_BIN").unwrap_or_else(|_| "target/release/mesh-ca-issuer".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let admin = format!("127.0.0.1:{port}");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("controller log");
        let mut args = vec![
            "--metrics-listen-address".to_string(),
            admin.clone(),
            // Bound on loopback only, on a free port: never a fixed one that may be taken.
            format!(
                "--bundle-endpoint-addr=127.0.0.1:{}",
                std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port())
                    .expect("a free port")
            ),
            "--log-level=warn".into(),
            "--leader-elect=false".into(),
        ];
        if let Some(n) = workers() {
            args.push(format!("--concurrent-workers={n}"));
        }
        let started = Instant::now();
        // Extra environment for the controller only (say TOKIO_WORKER_THREADS=1), as
        // `MESHCA_BENCH_CONTROLLER_ENV="K=V K=V"`: the bench's own client stays as it is.
        let extra_env: Vec<(String, String)> = std::env::var("MESHCA_BENCH_CONTROLLER_ENV")
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = tokio::process::Command::new(&bin)
            .args(&args)
            .envs(extra_env)
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        let pid = child.id().expect("pid");
        let mut controller = Controller {
            child,
            pid,
            admin,
            profiler: None,
        };
        loop {
            if controller.get("/readyz").await.is_some_and(|(code, _)| code == 200) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "controller not ready within 120s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = started.elapsed();
        controller.profiler = std::env::var("MESHCA_BENCH_PERF_DATA").ok().map(|data| {
            // One profile per controller process: the cold start's restart gets its own file.
            let data = format!("{data}.{pid}");
            std::process::Command::new("perf")
                .args(["record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384"])
                .args(["-o", &data, "-p", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("starting perf record: {e}"))
        });
        (controller, ready)
    }

    async fn stop(mut self) {
        if let Some(mut perf) = self.profiler.take() {
            // perf writes its data on SIGINT.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &perf.id().to_string()])
                .status();
            let _ = perf.wait();
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let _ = self.child.kill().await;
    }

    /// A plain HTTP GET on the admin listener: (status code, body).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.admin).await.ok()?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(head.as_bytes()).await.ok()?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.ok()?;
        let code = raw.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            code,
            raw.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        ))
    }

    /// How many times the controller called a backend to sign (the signing histogram's count).
    async fn sign_calls(&self) -> Option<u64> {
        let (_, body) = self.get("/metrics").await?;
        body.lines()
            .filter(|l| l.contains("signing_duration_seconds_count"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .reduce(|a, b| a + b)
            .or(Some(0))
    }

    /// Request status writes so far (the reconcile counter counts writes, by outcome; a
    /// refused one is counted as `conflict`, and is no write).
    async fn status_writes(&self) -> u64 {
        self.counter("meshca_reconciles_total{", &["controller=\"certificaterequest\""])
            .await
            .saturating_sub(self.conflicts().await)
    }

    /// Request status writes the API server refused with 409 (a stale copy decided on).
    async fn conflicts(&self) -> u64 {
        self.counter(
            "meshca_reconciles_total{",
            &["controller=\"certificaterequest\"", "outcome=\"conflict\""],
        )
        .await
    }

    /// Certificates signed for a stale copy and never handed out.
    async fn wasted_signatures(&self) -> u64 {
        self.counter("meshca_signatures_discarded_total{", &[]).await
    }

    /// The sum of the series starting `series` whose labels include all of `labels`.
    async fn counter(&self, series: &str, labels: &[&str]) -> u64 {
        let Some((_, body)) = self.get("/metrics").await else {
            return 0;
        };
        body.lines()
            .filter(|l| l.starts_with(series) && labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    /// RSS split into anonymous memory (the heap, stacks) and file pages (the binary's code,
    /// mapped from the page cache: clean, shared, and given back only under memory pressure).
    fn rss_split_mib(&self) -> (f64, f64) {
        (self.status_mib("RssAnon:"), self.status_mib("RssFile:"))
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// User + system CPU time, from /proc/<pid>/stat (utime and stime, in clock ticks).
    fn cpu(&self) -> Duration {
        let ticks_per_s = 100.0; // USER_HZ on Linux
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let ticks = stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                let f: Vec<&str> = rest.split_whitespace().collect();
                f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                    + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            })
            .unwrap_or(0);
        Duration::from_secs_f64(ticks as f64 / ticks_per_s)
    }
}

/// GETs of `resource` the API server has answered (its `apiserver_request_total`): the reads
/// the controller makes before signing, counted where they land.
async fn apiserver_gets(client: &Client, resource: &str) -> u64 {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("metrics request");
    let text = client.request_text(request).await.unwrap_or_default();
    let resource = format!("resource=\"{resource}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("verb=\"GET\"") && l.contains(&resource))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

// === requests ===

/// What every request of the bench carries: one CSR (key generation is cert-manager's work,
/// and the controller signs each request anyway).
struct Template {
    csr: Vec<u8>,
    /// The final status an issued request ends with: the floor writes these bytes.
    certificate: Vec<u8>,
    ca: Vec<u8>,
    issued_message: String,
}

fn request(name: &str, batch: &str, issuer: &str, group: &str, csr: &[u8]) -> CertificateRequest {
    let mut cr = CertificateRequest::new(
        name,
        CertificateRequestSpec {
            issuer_ref: IssuerReference {
                name: issuer.into(),
                kind: Some("MeshCAIssuer".into()),
                group: Some(group.into()),
            },
            request: csr.to_vec(),
            is_ca: Some(true),
            usages: Some(vec!["cert sign".into(), "digital signature".into()]),
            ..Default::default()
        },
    );
    cr.labels_mut().insert(BATCH_LABEL.into(), batch.into());
    cr
}

async fn create_all(api: &Api<CertificateRequest>, requests: Vec<CertificateRequest>) {
    futures::stream::iter(requests)
        .for_each_concurrent(32, |cr| async move {
            api.create(&PostParams::default(), &cr)
                .await
                .expect("create CertificateRequest");
        })
        .await;
}

async fn approve_all(client: &Client, ns: &str, names: &[String]) {
    futures::stream::iter(names)
        .for_each_concurrent(32, |name| cert_manager::approve(client, ns, name))
        .await;
}

fn is_ready(cr: &CertificateRequest) -> bool {
    cr.condition("Ready").is_some_and(|c| c.status == "True")
}

/// Waits until every request of `batch` in `api` satisfies `done`; returns when each did.
async fn wait_batch(
    api: &Api<CertificateRequest>,
    batch: &str,
    n: usize,
    done: impl Fn(&CertificateRequest) -> bool,
) -> HashMap<String, Instant> {
    let config = watcher::Config::default().labels(&format!("{BATCH_LABEL}={batch}"));
    let mut watch = std::pin::pin!(watcher(api.clone(), config).applied_objects());
    let mut seen = HashMap::new();
    while seen.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(600), watch.try_next()).await;
        let Ok(Ok(Some(cr))) = next else {
            panic!("batch {batch}: only {}/{n} done", seen.len());
        };
        if done(&cr) {
            seen.entry(cr.name_any()).or_insert_with(Instant::now);
        }
    }
    seen
}

/// [`wait_batch`], but it returns once the watch's initial list is in, with the wait running
/// on: so what is timed after it starts is the controller's work, not the bench's own LIST of
/// the batch (at N = 2,000 that list took longer than the first request took to be issued, and
/// the API server served it while the controller worked).
async fn watch_listed(
    api: &Api<CertificateRequest>,
    batch: &str,
    n: usize,
    done: fn(&CertificateRequest) -> bool,
) -> tokio::task::JoinHandle<HashMap<String, Instant>> {
    let (listed, is_listed) = tokio::sync::oneshot::channel();
    let config = watcher::Config::default().labels(&format!("{BATCH_LABEL}={batch}"));
    let (api, batch) = (api.clone(), batch.to_string());
    let task = tokio::spawn(async move {
        let mut watch = std::pin::pin!(watcher(api, config));
        let mut listed = Some(listed);
        let mut seen = HashMap::new();
        while seen.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(600), watch.try_next()).await;
            let Ok(Ok(Some(event))) = next else {
                panic!("batch {batch}: only {}/{n} done", seen.len());
            };
            match event {
                watcher::Event::InitDone => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                }
                watcher::Event::InitApply(cr) | watcher::Event::Apply(cr) if done(&cr) => {
                    seen.entry(cr.name_any()).or_insert_with(Instant::now);
                }
                _ => {}
            }
        }
        seen
    });
    // A watch that ends before it listed has panicked: the join below says so.
    let _ = is_listed.await;
    task
}

async fn delete_batch(api: &Api<CertificateRequest>, batch: &str) {
    let _ = api
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&format!("{BATCH_LABEL}={batch}")),
        )
        .await;
}

// === the floor ===

/// A bare client doing what a contract-complete issuer must: write the final status through
/// server-side apply on `/status` with the resourceVersion as precondition, then create one
/// Normal event (events.k8s.io/v1, as the controller does). With `reads`, it first reads the CA
/// Secret, once per request, the way a controller keeping "a replaced CA is used from the next
/// signing" without coalescing would. (The controller coalesces those reads and makes no read
/// of the request before a local CA signs, since its status write is guarded.)
struct Floor<'a> {
    api: Api<CertificateRequest>,
    events: Api<k8s_openapi::api::events::v1::Event>,
    secrets: Api<Secret>,
    template: &'a Template,
    reads: bool,
}

impl<'a> Floor<'a> {
    fn new(client: &Client, ns: &str, template: &'a Template, reads: bool) -> Self {
        Floor {
            api: Api::namespaced(client.clone(), ns),
            events: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            template,
            reads,
        }
    }

    async fn write(&self, cr: &CertificateRequest) {
        let name = cr.name_any();
        if self.reads {
            self.secrets.get(ROOT_SECRET).await.expect("floor: read the CA Secret");
        }
        let template = self.template;
        let status = CertificateRequestStatus {
            conditions: Some(vec![CertificateRequestCondition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: Some("Issued".into()),
                message: Some(template.issued_message.clone()),
                last_transition_time: Some(Time(jiff::Timestamp::now())),
            }]),
            certificate: Some(template.certificate.clone()),
            ca: Some(template.ca.clone()),
            failure_time: None,
        };
        let patch = serde_json::json!({
            "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
            "metadata": {"resourceVersion": cr.resource_version()},
            "status": status,
        });
        self.api
            .patch_status(&name, &PatchParams::apply("bench-floor").force(), &Patch::Apply(&patch))
            .await
            .expect("floor status write");
        let now = jiff::Timestamp::now();
        let event = k8s_openapi::api::events::v1::Event {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                ..Default::default()
            },
            event_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now)),
            action: Some("Sign".into()),
            reason: Some("Issued".into()),
            note: Some(template.issued_message.clone()),
            regarding: Some(cr.object_ref(&())),
            reporting_controller: Some("bench-floor".into()),
            reporting_instance: Some("bench-floor".into()),
            type_: Some("Normal".into()),
            ..Default::default()
        };
        self.events
            .create(&PostParams::default(), &event)
            .await
            .expect("floor event");
    }
}

/// `n` approved foreign requests labelled `batch`, as the controller would find them.
async fn approved_foreign_batch(
    client: &Client,
    ns: &str,
    template: &Template,
    n: usize,
    batch: &str,
) -> Vec<CertificateRequest> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..n).map(|i| format!("{batch}-{i}")).collect();
    create_all(
        &api,
        names
            .iter()
            .map(|name| request(name, batch, "floor", FOREIGN_GROUP, &template.csr))
            .collect(),
    )
    .await;
    approve_all(client, ns, &names).await;
    api.list(&ListParams::default().labels(&format!("{BATCH_LABEL}={batch}")))
        .await
        .expect("list floor batch")
        .items
}

/// N approved foreign requests, then the floor's writes to all of them, as many at once as the
/// controller works on: the time they take.
async fn floor_burst(client: &Client, ns: &str, template: &Template, n: usize, batch: &str, reads: bool) -> Duration {
    let approved = approved_foreign_batch(client, ns, template, n, batch).await;
    let floor = Floor::new(client, ns, template, reads);
    let started = Instant::now();
    futures::stream::iter(approved.iter())
        .for_each_concurrent(workers(), |cr| floor.write(cr))
        .await;
    let took = started.elapsed();
    delete_batch(&Api::namespaced(client.clone(), ns), batch).await;
    took
}

/// The floor's latency for one write plus one event (after one read of the CA Secret, with
/// `reads`), `n` times one after another.
async fn floor_serial(client: &Client, ns: &str, template: &Template, n: usize, reads: bool) -> Vec<Duration> {
    let batch = if reads { "floor-serial-read" } else { "floor-serial" };
    let approved = approved_foreign_batch(client, ns, template, n, batch).await;
    let floor = Floor::new(client, ns, template, reads);
    let mut latencies = Vec::new();
    for cr in &approved {
        let started = Instant::now();
        floor.write(cr).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    delete_batch(&Api::namespaced(client.clone(), ns), batch).await;
    latencies
}

// === our side ===

/// What one gated burst measured, besides its time.
struct Burst {
    took: Duration,
    /// From the issuer's creation to the first request Ready: the cost every burst pays once.
    first_ready: Duration,
    cpu_per_request: Duration,
    status_writes_per_request: f64,
    /// Reads of the CA Secret and of requests per request, as the API server counted them.
    secret_gets_per_request: f64,
    request_gets_per_request: f64,
    /// Status writes refused with 409, and the certificates signed for them.
    conflicts: u64,
    wasted_signatures: u64,
}

/// What the controller's timed bursts run against: the client, the controller under test,
/// its namespace and the template request. One value, so that each burst's signature says
/// only which batch it times.
struct Stage<'a> {
    client: &'a Client,
    controller: &'a Controller,
    ns: &'a str,
    template: &'a Template,
}

impl Stage<'_> {
    /// The namespace's requests, and the names of the `n` requests of batch `batch`.
    fn batch(&self, batch: &str, n: usize) -> (Api<CertificateRequest>, Vec<String>) {
        let api = Api::namespaced(self.client.clone(), self.ns);
        (api, (0..n).map(|i| format!("{batch}-{i}")).collect())
    }
}

/// N approved requests wait on the missing issuer `issuer`; it is created (on the already
/// bootstrapped root), and the clock runs until all are Ready.
async fn gated_burst(stage: &Stage<'_>, n: usize, batch: &str) -> Burst {
    let (api, names) = stage.batch(batch, n);
    let issuer = format!("{batch}-issuer");
    create_all(
        &api,
        names
            .iter()
            .map(|name| request(name, batch, &issuer, "meshca.io", &stage.template.csr))
            .collect(),
    )
    .await;
    approve_all(stage.client, stage.ns, &names).await;
    // Gated: every request has been told it waits (so the approvals are processed) first.
    wait_batch(&api, batch, n, |cr| {
        cr.condition("Ready")
            .is_some_and(|c| c.reason.as_deref() == Some("Pending"))
    })
    .await;
    let ready = watch_listed(&api, batch, n, is_ready).await;
    let cpu_before = stage.controller.cpu();
    let writes_before = stage.controller.status_writes().await;
    let (conflicts_before, wasted_before) = (
        stage.controller.conflicts().await,
        stage.controller.wasted_signatures().await,
    );
    let (secret_gets_before, request_gets_before) = (
        apiserver_gets(stage.client, "secrets").await,
        apiserver_gets(stage.client, "certificaterequests").await,
    );
    let started = Instant::now();
    let create_issuer = async {
        let issuers: Api<mesh_ca_issuer::api::issuer::MeshCAIssuer> = Api::namespaced(stage.client.clone(), stage.ns);
        let spec = IssuerSpec {
            local_ca: Some(LocalCA {
                secret_name: ROOT_SECRET.into(),
                bootstrap: None,
            }),
            ..Default::default()
        };
        issuers
            .create(
                &PostParams::default(),
                &mesh_ca_issuer::api::issuer::MeshCAIssuer::new(&issuer, spec),
            )
            .await
            .expect("create gated issuer");
    };
    let (ready, _) = tokio::join!(ready, create_issuer);
    let ready = ready.expect("the Ready watch");
    let since_start = |t: Option<&Instant>| t.map(|t| t.saturating_duration_since(started)).unwrap_or_default();
    let per_request = |count: u64| count as f64 / n as f64;
    let burst = Burst {
        took: since_start(ready.values().max()),
        first_ready: since_start(ready.values().min()),
        cpu_per_request: (stage.controller.cpu().saturating_sub(cpu_before)) / n as u32,
        status_writes_per_request: per_request(stage.controller.status_writes().await.saturating_sub(writes_before)),
        secret_gets_per_request: per_request(
            apiserver_gets(stage.client, "secrets")
                .await
                .saturating_sub(secret_gets_before),
        ),
        request_gets_per_request: per_request(
            apiserver_gets(stage.client, "certificaterequests")
                .await
                .saturating_sub(request_gets_before),
        ),
        conflicts: stage.controller.conflicts().await.saturating_sub(conflicts_before),
        wasted_signatures: stage.controller.wasted_signatures().await.saturating_sub(wasted_before),
    };
    delete_batch(&api, batch).await;
    burst
}

/// N requests created and approved while the controller races them: time from the first
/// creation until all are Ready, and CPU per request. Kept (the memory phase counts them).
async fn end_to_end_burst(stage: &Stage<'_>, n: usize, batch: &str) -> (Duration, Duration) {
    let (api, names) = stage.batch(batch, n);
    let cpu_before = stage.controller.cpu();
    let started = Instant::now();
    let ready = wait_batch(&api, batch, n, is_ready);
    let work = async {
        futures::stream::iter(names.iter())
            .for_each_concurrent(32, |name| {
                let api = api.clone();
                async move {
                    api.create(
                        &PostParams::default(),
                        &request(name, batch, "bench", "meshca.io", &stage.template.csr),
                    )
                    .await
                    .expect("create");
                    cert_manager::approve(stage.client, stage.ns, name).await;
                }
            })
            .await;
    };
    let (ready, _) = tokio::join!(ready, work);
    let took = ready
        .values()
        .max()
        .map(|t| t.saturating_duration_since(started))
        .unwrap_or_default();
    (took, stage.controller.cpu().saturating_sub(cpu_before) / n as u32)
}

/// One approval every 1/rate s for `secs`; approve→Ready latencies, sorted.
async fn steady(client: &Client, ns: &str, template: &Template, rate: u32, secs: u32) -> Vec<Duration> {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
    let batch = "steady";
    let n = (rate * secs) as usize;
    let names: Vec<String> = (0..n).map(|i| format!("{batch}-{i}")).collect();
    create_all(
        &api,
        names
            .iter()
            .map(|name| request(name, batch, "bench", "meshca.io", &template.csr))
            .collect(),
    )
    .await;
    let ready = watch_listed(&api, batch, n, is_ready).await;
    let approve = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
        let mut approved = HashMap::new();
        for name in &names {
            tick.tick().await;
            cert_manager::approve(client, ns, name).await;
            approved.insert(name.clone(), Instant::now());
        }
        approved
    };
    let (ready, approved) = tokio::join!(ready, approve);
    let ready = ready.expect("the Ready watch");
    let mut latencies: Vec<Duration> = ready
        .iter()
        .filter_map(|(name, at)| Some(at.saturating_duration_since(*approved.get(name)?)))
        .collect();
    latencies.sort();
    delete_batch(&api, batch).await;
    latencies
}

// === foreign objects ===

/// Secrets of 1.5 KiB and requests issued by another issuer (3-certificate chain and a CA in
/// status), spread over `namespaces` namespaces.
async fn foreign_load(client: &Client, prefix: &str, sizes: &Sizes, template: &Template) {
    let namespaces: Vec<String> = (0..sizes.foreign_namespaces)
        .map(|i| format!("{prefix}-f{i}"))
        .collect();
    for ns in &namespaces {
        common::create_namespace(client, ns).await;
    }
    let payload = "x".repeat(1536);
    futures::stream::iter(0..sizes.foreign_secrets)
        .for_each_concurrent(32, |i| {
            let ns = &namespaces[i % namespaces.len()];
            let payload = &payload;
            async move {
                let secret: Secret = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("foreign-{i}")},
                    "stringData": {"data": payload},
                }))
                .expect("secret");
                Api::<Secret>::namespaced(client.clone(), ns)
                    .create(&PostParams::default(), &secret)
                    .await
                    .expect("create foreign Secret");
            }
        })
        .await;
    // A 3-certificate chain: leaf, intermediate, and one more intermediate.
    let mut chain = template.certificate.clone();
    chain.extend_from_slice(&template.ca);
    chain.extend_from_slice(&template.ca);
    futures::stream::iter(0..sizes.foreign_requests)
        .for_each_concurrent(32, |i| {
            let ns = &namespaces[i % namespaces.len()];
            let chain = &chain;
            async move {
                let api: Api<CertificateRequest> = Api::namespaced(client.clone(), ns);
                let cr = api
                    .create(
                        &PostParams::default(),
                        &request(
                            &format!("foreign-{i}"),
                            "foreign",
                            "other",
                            FOREIGN_GROUP,
                            &template.csr,
                        ),
                    )
                    .await
                    .expect("create foreign request");
                let patch = serde_json::json!({
                    "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
                    "metadata": {"resourceVersion": cr.resource_version()},
                    "status": CertificateRequestStatus {
                        conditions: Some(vec![CertificateRequestCondition {
                            type_: "Ready".into(), status: "True".into(), reason: Some("Issued".into()),
                            message: Some("Certificate fetched from issuer successfully".into()),
                            last_transition_time: Some(Time(jiff::Timestamp::now())),
                        }]),
                        certificate: Some(chain.clone()),
                        ca: Some(template.ca.clone()),
                        failure_time: None,
                    },
                });
                api.patch_status(
                    &cr.name_any(),
                    &PatchParams::apply("other-issuer").force(),
                    &Patch::Apply(&patch),
                )
                .await
                .expect("foreign status");
            }
        })
        .await;
}

// === the report ===

#[derive(Default)]
struct Report {
    rows: Vec<(String, f64, &'static str)>,
}

impl Report {
    fn add(&mut self, key: &str, value: f64, unit: &'static str) {
        println!("  {key:<40} {value:>12.2} {unit}");
        self.rows.push((key.to_string(), value, unit));
    }
    fn ms(&mut self, key: &str, d: Duration) {
        self.add(key, d.as_secs_f64() * 1e3, "ms");
    }
    fn write(&self, name: &str) {
        let dir =
            std::path::Path::new(&std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("bench");
        let _ = std::fs::create_dir_all(&dir);
        let json: BTreeMap<&str, serde_json::Value> = self
            .rows
            .iter()
            .map(|(k, v, _)| (k.as_str(), serde_json::json!((v * 1000.0).round() / 1000.0)))
            .collect();
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap_or_default()).expect("write JSON");
        println!("\n{:<42} {:>12}", "figure", "value");
        for (k, v, unit) in &self.rows {
            println!("{k:<42} {v:>12.2} {unit}");
        }
        println!("written to {}", path.display());
    }
}

impl Report {
    fn get(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|(k, _, _)| k == key).map(|(_, v, _)| *v)
    }

    /// Every target (issue 27's, and those of the first pass that must not get worse) with its
    /// measured value and whether it is met.
    fn targets(&self, sizes: &Sizes) {
        let idle = format!("rss_after_idle_{}s_mib", sizes.idle_secs);
        let ratios: Vec<f64> = sizes
            .gated
            .iter()
            .filter_map(|n| self.get(&format!("ratio_gated_to_floor_n{n}")))
            .collect();
        let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
        let spread = ratios
            .iter()
            .map(|r| (r / mean.max(1e-9) - 1.0).abs() * 100.0)
            .fold(0.0, f64::max);
        let cpu = sizes
            .gated
            .iter()
            .filter_map(|n| self.get(&format!("cpu_per_request_gated_n{n}_ms")))
            .fold(0.0, f64::max);
        let growth = |after: &str, before: &str| Some(self.get(after)? - self.get(before)?);
        let rows: Vec<(&str, Option<f64>, &str, bool)> = vec![
            (
                "gated burst / floor, N=500",
                self.get("ratio_gated_to_floor_n500"),
                "<= 1.3x",
                self.get("ratio_gated_to_floor_n500").is_some_and(|v| v <= 1.3),
            ),
            (
                "gated / floor ratio, largest deviation from the mean over N (%)",
                (ratios.len() > 1).then_some(spread),
                "<= 20 %",
                ratios.len() > 1 && spread <= 20.0,
            ),
            (
                "steady p99 / floor serial p99",
                self.get("ratio_steady_p99_to_floor_p99"),
                "<= 1.5x",
                self.get("ratio_steady_p99_to_floor_p99").is_some_and(|v| v <= 1.5),
            ),
            (
                "steady p99 (ms)",
                self.get("steady_p99_ms"),
                "<= 30 ms",
                self.get("steady_p99_ms").is_some_and(|v| v <= 30.0),
            ),
            (
                "RSS after the idle period (MiB)",
                self.get(&idle),
                "<= 20 MiB",
                self.get(&idle).is_some_and(|v| v <= 20.0),
            ),
            (
                "RSS idle (MiB)",
                self.get("rss_idle_mib"),
                "<= 20 MiB",
                self.get("rss_idle_mib").is_some_and(|v| v <= 20.0),
            ),
            (
                "RSS growth from foreign objects (MiB)",
                growth("rss_after_foreign_mib", "rss_idle_mib"),
                "<= +2 MiB",
                growth("rss_after_foreign_mib", "rss_idle_mib").is_some_and(|v| v <= 2.0),
            ),
            (
                "RSS growth from our own issued requests (MiB)",
                growth("rss_after_own_mib", "rss_after_foreign_mib"),
                "<= +5 MiB",
                growth("rss_after_own_mib", "rss_after_foreign_mib").is_some_and(|v| v <= 5.0),
            ),
            ("CPU per request, gated, worst N (ms)", Some(cpu), "<= 1 ms", cpu <= 1.0),
            (
                "cold start to /readyz (ms)",
                self.get("cold_start_to_readyz_ms"),
                "<= 3000 ms",
                self.get("cold_start_to_readyz_ms").is_some_and(|v| v <= 3000.0),
            ),
            (
                "cold start: requests signed again",
                self.get("cold_start_sign_calls"),
                "0",
                self.get("cold_start_sign_calls") == Some(0.0),
            ),
        ];
        println!("\n{:<66} {:>10} {:>10}  met", "target", "measured", "bound");
        for (name, value, bound, met) in rows {
            let verdict = match (value, met) {
                (None, _) => "not measured",
                (Some(_), true) => "met",
                (Some(_), false) => "NOT met",
            };
            let value = value.map_or("-".to_string(), |v| format!("{v:.2}"));
            println!("{name:<66} {value:>10} {bound:>10}  {verdict}");
        }
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

#[tokio::main]
async fn main() {
    if !common::started_by_hack_bench("perf") {
        return;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    let sizes = Sizes::from_env(smoke);
    let client = Client::try_default().await.expect("KUBECONFIG");
    let prefix = format!("perf-{}", std::process::id());
    let ns = prefix.clone();
    common::create_namespace(&client, &ns).await;
    let log = std::env::temp_dir().join(format!("{prefix}-controller.log"));
    let mut report = Report::default();
    println!("cores: {}; controller log: {}", num_cpus(), log.display());

    // --- idle ---
    let (controller, _) = Controller::start(&log).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.add("rss_idle_mib", controller.rss_mib(), "MiB");
    let (anon, file) = controller.rss_split_mib();
    report.add("rss_idle_anon_mib", anon, "MiB");
    report.add("rss_idle_file_mib", file, "MiB");

    // --- the root, and one issued request whose status the floor copies ---
    common::create_ready_issuer(
        &client,
        &ns,
        "bench",
        IssuerSpec {
            local_ca: Some(LocalCA {
                secret_name: ROOT_SECRET.into(),
                bootstrap: Some(RootBootstrap::default()),
            }),
            ..Default::default()
        },
    )
    .await;
    let (_, csr) = cert_manager::make_key_and_csr(&cert_manager::IntermediateRequest::istiod("template", "bench"));
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), &ns);
    api.create(
        &PostParams::default(),
        &request("template", "template", "bench", "meshca.io", csr.as_bytes()),
    )
    .await
    .expect("template request");
    cert_manager::approve(&client, &ns, "template").await;
    let issued = wait_batch(&api, "template", 1, is_ready).await;
    assert_eq!(issued.len(), 1);
    let done = api.get("template").await.expect("template");
    let status = done.status.clone().unwrap_or_default();
    let template = Template {
        csr: csr.into_bytes(),
        certificate: status.certificate.unwrap_or_default(),
        ca: status.ca.unwrap_or_default(),
        issued_message: done
            .condition("Ready")
            .and_then(|c| c.message.clone())
            .unwrap_or_default(),
    };

    // --- memory: foreign objects, then our own ---
    let started = Instant::now();
    foreign_load(&client, &prefix, &sizes, &template).await;
    println!(
        "  (created {} foreign Secrets and {} foreign issued requests in {:.1}s)",
        sizes.foreign_secrets,
        sizes.foreign_requests,
        started.elapsed().as_secs_f64()
    );
    // The watches see the last of them shortly after: RSS is a reading, not a proof.
    tokio::time::sleep(Duration::from_secs(3)).await;
    report.add("rss_after_foreign_mib", controller.rss_mib(), "MiB");
    let stage = Stage {
        client: &client,
        controller: &controller,
        ns: &ns,
        template: &template,
    };
    let (e2e, cpu) = end_to_end_burst(&stage, sizes.own_requests, "own").await;
    report.ms(&format!("end_to_end_burst_n{}_ms", sizes.own_requests), e2e);
    report.add("cpu_per_request_e2e_ms", cpu.as_secs_f64() * 1e3, "ms");
    tokio::time::sleep(Duration::from_secs(2)).await;
    report.add("rss_after_own_mib", controller.rss_mib(), "MiB");

    // --- gated bursts against the floor: each floor (writes only; with one CA Secret read per
    // request), then ours, at every size ---
    // (figure name, batch label, the floor reads the CA Secret)
    const FLOORS: [(&str, &str, bool); 2] = [("floor", "floor", false), ("floor_with_read", "floorread", true)];
    let mut ratios = Vec::new();
    for &n in &sizes.gated {
        let mut floors = Vec::new();
        for (name, batch, reads) in FLOORS {
            let took = floor_burst(&client, &ns, &template, n, &format!("{batch}{n}"), reads).await;
            report.ms(&format!("{name}_burst_n{n}_ms"), took);
            floors.push((name, took));
        }
        let burst = gated_burst(&stage, n, &format!("gated{n}")).await;
        let ours = burst.took;
        report.ms(&format!("gated_burst_n{n}_ms"), ours);
        report.ms(&format!("gated_first_ready_n{n}_ms"), burst.first_ready);
        report.add(
            &format!("cpu_per_request_gated_n{n}_ms"),
            burst.cpu_per_request.as_secs_f64() * 1e3,
            "ms",
        );
        report.add(
            &format!("status_writes_per_request_gated_n{n}"),
            burst.status_writes_per_request,
            "",
        );
        report.add(
            &format!("secret_gets_per_request_gated_n{n}"),
            burst.secret_gets_per_request,
            "",
        );
        report.add(
            &format!("request_gets_per_request_gated_n{n}"),
            burst.request_gets_per_request,
            "",
        );
        report.add(&format!("conflicts_gated_n{n}"), burst.conflicts as f64, "");
        report.add(
            &format!("wasted_signatures_gated_n{n}"),
            burst.wasted_signatures as f64,
            "",
        );
        for (name, took) in &floors {
            let suffix = name.strip_prefix("floor").unwrap_or_default();
            report.add(&format!("ratio_gated_to_floor{suffix}_n{n}"), ratio(ours, *took), "x");
        }
        ratios.push(ratio(ours, floors[0].1));
    }
    if let (Some(lo), Some(hi)) = (
        ratios.iter().copied().reduce(f64::min),
        ratios.iter().copied().reduce(f64::max),
    ) {
        report.add("ratio_gated_spread_max_to_min", hi / lo.max(1e-9), "x");
    }

    // --- steady arrival ---
    let serial = floor_serial(&client, &ns, &template, sizes.floor_serial, false).await;
    let serial_read = floor_serial(&client, &ns, &template, sizes.floor_serial, true).await;
    let lat = steady(&client, &ns, &template, sizes.steady_rate, sizes.steady_secs).await;
    report.ms("floor_serial_p50_ms", common::percentile(&serial, 0.5));
    report.ms("floor_serial_p99_ms", common::percentile(&serial, 0.99));
    report.ms("floor_serial_with_read_p50_ms", common::percentile(&serial_read, 0.5));
    report.ms("floor_serial_with_read_p99_ms", common::percentile(&serial_read, 0.99));
    report.ms("steady_p50_ms", common::percentile(&lat, 0.5));
    report.ms("steady_p99_ms", common::percentile(&lat, 0.99));
    report.ms("steady_max_ms", lat.last().copied().unwrap_or_default());
    report.add(
        "ratio_steady_p99_to_floor_p99",
        ratio(common::percentile(&lat, 0.99), common::percentile(&serial, 0.99)),
        "x",
    );

    // --- idle after all that ---
    tokio::time::sleep(Duration::from_secs(sizes.idle_secs)).await;
    report.add(
        &format!("rss_after_idle_{}s_mib", sizes.idle_secs),
        controller.rss_mib(),
        "MiB",
    );
    let (anon, file) = controller.rss_split_mib();
    report.add(&format!("rss_after_idle_{}s_anon_mib", sizes.idle_secs), anon, "MiB");
    report.add(&format!("rss_after_idle_{}s_file_mib", sizes.idle_secs), file, "MiB");

    // --- cold start: our issued requests and the foreign ones are all that is left ---
    let ours: HashMap<String, String> = api
        .list(&ListParams::default().labels(&format!("{BATCH_LABEL} in (own,template)")))
        .await
        .expect("list ours")
        .items
        .iter()
        .map(|cr| (cr.name_any(), cr.resource_version().unwrap_or_default()))
        .collect();
    let total = Api::<CertificateRequest>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or_default();
    let (conflicts_total, wasted_total) = (controller.conflicts().await, controller.wasted_signatures().await);
    controller.stop().await;
    let (controller, cold) = Controller::start(&log).await;
    report.add("cold_start_requests", total as f64, "");
    report.ms("cold_start_to_readyz_ms", cold);
    // Whatever a new controller would re-sign, it does right after its caches sync: give it a
    // moment, then count backend calls and compare resourceVersions.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resigned = controller.sign_calls().await.unwrap_or(u64::MAX);
    let changed: HashSet<String> = api
        .list(&ListParams::default().labels(&format!("{BATCH_LABEL} in (own,template)")))
        .await
        .expect("list ours")
        .items
        .iter()
        .filter(|cr| ours.get(&cr.name_any()) != cr.resource_version().as_ref())
        .map(|cr| cr.name_any())
        .collect();
    report.add("cold_start_sign_calls", resigned as f64, "");
    report.add("cold_start_requests_changed", changed.len() as f64, "");
    report.add("rss_after_cold_start_mib", controller.rss_mib(), "MiB");
    report.add("conflicts_total", controller.conflicts().await as f64, "");
    controller.stop().await;
    report.add("conflicts_before_cold_start", conflicts_total as f64, "");
    report.add("wasted_signatures_before_cold_start", wasted_total as f64, "");
    report.write(if smoke { "perf-smoke" } else { "perf" });
    report.targets(&sizes);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
