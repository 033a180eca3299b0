//! Transient errors never stop renewals early. The retry budget (`--max-retry-duration`)
//! counts from the first transient failure, not from the request's creation: a request that
//! waited for its issuer longer than the whole budget still rides out a burst of throttling and
//! is issued — and is never `Failed` on the way. And one transient error while re-checking an
//! issuer does not flip it to not Ready (which would hold up every request behind it).
//! Real parts: the API server, the controller, aws-sdk-acmpca against the PCA fixture.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::MeshCAIssuer;
use support::RunningController;
use support::cert_manager as cm;
use support::pca::{ENDPOINT_OVERRIDE, PcaFixture, create_credentials_secret};

const BUDGET_ANNOTATION: &str = "meshca.io/first-transient-failure";

/// Every (Ready reason, budget annotation present) the request showed, as the watch saw it.
type Seen = Arc<Mutex<Vec<(String, bool)>>>;

fn record_every_state(api: Api<CertificateRequest>, name: &str) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, config).applied_objects().boxed();
            while let Some(Ok(cr)) = stream.next().await {
                let reason = cr.condition("Ready").and_then(|c| c.reason.clone()).unwrap_or_default();
                let marked = cr
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(BUDGET_ANNOTATION));
                seen.lock().unwrap().push((reason, marked));
            }
        })
    };
    (seen, task)
}

#[tokio::test]
async fn a_request_that_waited_longer_than_the_budget_still_rides_out_throttling() {
    let (_lock, client, ns) = support::namespaced_test("retry-budget").await;
    let pca = PcaFixture::start();
    create_credentials_secret(&ns.api()).await;
    let _controller = RunningController::in_namespace_with(
        &ns.name,
        &[
            "--max-retry-duration",
            "10s",
            "--retry-backoff-initial",
            "1s",
            // The namespaced issuer points at the local PCA endpoint: the operator's opt-in.
            ENDPOINT_OVERRIDE,
        ],
    )
    .await;
    let requests: Api<CertificateRequest> = ns.api();
    let (seen, watch) = record_every_state(requests.clone(), "istiod");

    // The request waits 20 s for an issuer that does not exist yet: twice the whole budget.
    let waiting = cm::pending(&client, &ns.name, "istiod", "pca", Duration::from_secs(30)).await;
    let message = cm::ready_message(&waiting);
    assert!(message.contains("does not exist"), "{message}");
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Then the issuer appears while PCA throttles every IssueCertificate for 5 s.
    let arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    pca.inject_for("IssueCertificate", "throttle", Duration::from_secs(5))
        .await;
    let spec = pca.issuer_spec(&arn);
    support::issuer::create(&ns.api(), "pca", spec).await;
    let done = cm::wait_for_reason(
        &client,
        &ns.name,
        "istiod",
        &["Issued", "Failed"],
        Duration::from_secs(60),
    )
    .await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    let stats = pca.stats().await;
    println!(
        "retry budget test: states seen {seen:?}; IssueCertificate calls {}, certificates issued {}",
        stats["calls"]["IssueCertificate"], stats["certificates_issued"]
    );

    assert_eq!(done.condition("Ready").unwrap().reason.as_deref(), Some("Issued"));
    assert!(
        seen.iter()
            .all(|(reason, _)| ["", "Pending", "Issued"].contains(&reason.as_str())),
        "Pending throughout, never Failed: {seen:?}"
    );
    // It really was throttled, with its budget recorded while it retried...
    assert!(stats["calls"]["IssueCertificate"].as_u64().unwrap_or(0) >= 2, "{stats}");
    assert!(
        seen.iter().any(|(reason, marked)| reason == "Pending" && *marked),
        "{seen:?}"
    );
    assert_eq!(stats["certificates_issued"], 1, "{stats}");
    // ...and the record is gone once issued.
    let annotations = done.metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(BUDGET_ANNOTATION), "{annotations:?}");
}

/// Parses `name{labels} value` for a series whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn one_transient_error_while_rechecking_leaves_a_ready_issuer_ready() {
    let (_lock, client, ns) = support::namespaced_test("issuer-blip").await;
    let pca = PcaFixture::start();
    create_credentials_secret(&ns.api()).await;
    // The namespaced issuer points at the local PCA endpoint: the operator's opt-in.
    let controller = RunningController::in_namespace_with(&ns.name, &[ENDPOINT_OVERRIDE]).await;
    let arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    let spec = pca.issuer_spec(&arn);
    let issuers: Api<MeshCAIssuer> = ns.api();
    support::issuer::create(&issuers, "pca", spec).await;
    support::wait_issuer(&issuers, "pca", "True", Duration::from_secs(30)).await;
    let ready_since = |issuer: &MeshCAIssuer| {
        let c = issuer
            .status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .clone();
        (c.status, c.last_transition_time)
    };
    let before = ready_since(&issuers.get("pca").await.unwrap());

    // PCA throttles the next DescribeCertificateAuthority; a change to the issuer's metadata
    // makes the controller re-check it now.
    pca.inject("DescribeCertificateAuthority", "throttle", 1).await;
    let touch = serde_json::json!({"metadata": {"annotations": {"test/recheck": "1"}}});
    issuers
        .patch(
            "pca",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&touch),
        )
        .await
        .unwrap();
    // The controller saw the error and held (a counter, not a sleep)...
    let held = support::eventually(Duration::from_secs(20), || async {
        let text = controller.metrics().await;
        (metric(&text, "meshca_reconciles_total", &["outcome=\"transient_error\""]) >= 1.0).then_some(())
    })
    .await;
    assert!(held.is_some(), "the transient error was seen and held");
    assert_eq!(
        ready_since(&issuers.get("pca").await.unwrap()),
        before,
        "still Ready, same transition"
    );
    // ...and its next check, a few seconds later, passes: Ready throughout.
    let checks_before = metric(
        &controller.metrics().await,
        "meshca_reconciles_total",
        &["outcome=\"ready\""],
    );
    support::eventually(Duration::from_secs(30), || async {
        let text = controller.metrics().await;
        (metric(&text, "meshca_reconciles_total", &["outcome=\"ready\""]) > checks_before).then_some(())
    })
    .await
    .expect("re-checked after the blip");
    assert_eq!(
        ready_since(&issuers.get("pca").await.unwrap()),
        before,
        "Ready throughout"
    );
    let events = support::events_for(&client, &ns.name, "pca").await;
    assert!(
        events.iter().all(|e| e.0 != "Warning"),
        "no warning for one blip: {events:?}"
    );
}
