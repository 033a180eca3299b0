//! High availability: two controller processes against one control plane, one leader. Only
//! the leader writes; when it is killed (SIGKILL) the other takes over within the lease
//! duration, pending requests complete, and no request is signed twice.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::Api;
use support::cert_manager as cm;
use support::issuer::bootstrapped;
use support::leader::{LEASE, LeaderPair, RETRY, is_leader, metric, signed_once};
use support::{ControllerProcess, eventually};

/// `<prefix>-0` … `<prefix>-<n-1>`.
fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// MeshCAIssuer `mesh` (a bootstrapped root), and istiod's intermediates `names` issued by it
/// with each Issued event out: an event follows its status write, so the leader may be
/// stopped only now, not between a write and its event (which would never be sent).
async fn issued_before(client: &kube::Client, ns: &str, names: &[String]) {
    support::issuer::create(&Api::namespaced(client.clone(), ns), "mesh", bootstrapped("root")).await;
    cm::issue_all(client, ns, "mesh", names, Duration::from_secs(30)).await;
    for name in names {
        support::wait_for_event(client, ns, name, "Issued").await;
    }
}

/// Requests istiod's intermediates `names` while the leader is gone (requests keep coming),
/// then waits until `standby` leads; `what` names the takeover in the failure.
async fn requested_until_taken_over(
    client: &kube::Client,
    ns: &str,
    names: &[String],
    standby: &ControllerProcess,
    what: &str,
) {
    for name in names {
        cm::request_and_approve(client, ns, &cm::IntermediateRequest::istiod(name, "mesh")).await;
    }
    eventually(Duration::from_secs(20), || async {
        is_leader(standby).await.then_some(())
    })
    .await
    .expect(what);
}

#[tokio::test]
async fn one_leader_writes_and_a_standby_takes_over_when_it_dies() {
    let (_lock, client, ns) = support::namespaced_test("ha").await;
    let logs = tempfile::tempdir().unwrap();
    let LeaderPair { leader, standby } = LeaderPair::start(&ns.name, logs.path()).await;
    let (mut leader, standby) = (leader.process, standby.process);

    // The issued count follows each status write too: all five are counted by now.
    issued_before(&client, &ns.name, &names("before", 5)).await;
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
    requested_until_taken_over(
        &client,
        &ns.name,
        &names("after", 5),
        &standby,
        "the standby takes over",
    )
    .await;
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
    for name in names("after", 5) {
        cm::wait_for_reason(&client, &ns.name, &name, &["Issued"], Duration::from_secs(30)).await;
    }

    // No request was signed twice: one Issued event each, ten distinct serials, and the early
    // requests still hold the certificate the first leader gave them.
    let all = [names("before", 5), names("after", 5)].concat();
    let serials = signed_once(&client, &ns.name, &all).await;
    assert_eq!(serials, 10);
    assert_eq!(
        metric(standby.admin_port, issued_metric).await,
        5.0,
        "the new leader issued the five new requests"
    );
}

/// Events in `namespace` reported by replica `instance` at or after `since`.
async fn events_reported_by(client: &kube::Client, namespace: &str, instance: &str, since: jiff::Timestamp) -> usize {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), namespace);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reporting_instance.as_deref().is_some_and(|i| i.starts_with(instance)))
        .filter(|e| e.event_time.as_ref().is_some_and(|t| t.0 >= since))
        .count()
}

/// A leader paused with SIGSTOP for longer than its lease (a frozen node, a stalled VM) is
/// replaced; when it is resumed it knows at once that it no longer leads and writes nothing —
/// not a status, not an event — although its watches hand it new work; nothing is signed twice.
#[tokio::test]
async fn a_paused_leader_is_replaced_and_writes_nothing_when_it_wakes() {
    let (_lock, client, ns) = support::namespaced_test("ha-stop").await;
    let logs = tempfile::tempdir().unwrap();
    let LeaderPair { leader, standby } = LeaderPair::start(&ns.name, logs.path()).await;
    let (old, old_name, new) = (leader.process, leader.name, standby.process);

    let names = |prefix: &str| names(prefix, 3);
    issued_before(&client, &ns.name, &names("before")).await;
    // Quiet now: every request issued, the issuer checked. What the old leader has sent so far:
    let sent = "meshca_api_writes_total{outcome=\"sent\"} ";
    let refused = "meshca_api_writes_total{outcome=\"refused_not_leader\"} ";
    let standby_looks = "meshca_reconciles_total{controller=\"certificaterequest\",outcome=\"standby\"} ";
    let sent_before = metric(old.admin_port, sent).await;
    assert!(sent_before > 0.0, "the leader wrote through the fenced client");

    // Pause the leader; new requests arrive meanwhile.
    let pid = old.child.id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let taken_over = "the standby takes over from the paused leader";
    requested_until_taken_over(&client, &ns.name, &names("during"), &new, taken_over).await;
    let failover = stopped.elapsed();
    for name in names("during") {
        cm::wait_for_reason(&client, &ns.name, &name, &["Issued"], Duration::from_secs(30)).await;
    }
    // Paused for longer than the lease, then resumed; its watches now hand it the "during"
    // requests, and new ones arrive.
    let pause = stopped.elapsed().max(LEASE + Duration::from_secs(1));
    tokio::time::sleep(pause.saturating_sub(stopped.elapsed())).await;
    let resumed_at = jiff::Timestamp::now();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let resumed = Instant::now();
    let stale = eventually(Duration::from_secs(10), || async {
        (metric(old.admin_port, "meshca_leader ").await == 0.0).then(|| resumed.elapsed())
    })
    .await
    .expect("the resumed replica reports that it does not lead");
    cm::issue_all(&client, &ns.name, "mesh", &names("after"), Duration::from_secs(30)).await;
    // Proof that the resumed replica looked at the new work (a signal, not a sleep): it
    // reconciled the "during" and "after" requests as a standby.
    eventually(Duration::from_secs(20), || async {
        (metric(old.admin_port, standby_looks).await >= 6.0).then_some(())
    })
    .await
    .expect("the resumed replica reconciled the new requests as a standby");

    let sent_after = metric(old.admin_port, sent).await;
    let refused_after = metric(old.admin_port, refused).await;
    let old_events = events_reported_by(&client, &ns.name, old_name, resumed_at).await;
    println!(
        "SIGSTOP failover: {:.2}s (lease {}s); resumed leader reported not leading after {:.3}s; its writes after SIGCONT: {} sent, {} refused by the fence; its events after SIGCONT: {}",
        failover.as_secs_f64(),
        LEASE.as_secs(),
        stale.as_secs_f64(),
        sent_after - sent_before,
        refused_after,
        old_events
    );
    assert_eq!(sent_after, sent_before, "the resumed replica sent no write");
    assert_eq!(old_events, 0, "the resumed replica published no event");
    assert!(
        failover <= LEASE + RETRY * 2 + Duration::from_secs(1),
        "failover took {failover:?}"
    );

    // Nothing signed twice: one Issued event each, nine distinct serials.
    let all = [names("before"), names("during"), names("after")].concat();
    assert_eq!(signed_once(&client, &ns.name, &all).await, 9);
    drop(new);
    drop(old);
}
