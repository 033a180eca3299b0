//! What a real istiod does with the `cacerts` mesh-ca-issuer writes: pilot-discovery built from
//! istio.io/istio (hack/lib/istio.sh), running against the local control plane(s), with workloads
//! asking it for certificates through Istio's own CA client (hack/go/istio/workload-agent).
//!
//! Real: the API servers, our controller, istiod, its TokenReview check of each workload's
//! ServiceAccount token, its gRPC CA on the 15012 port, its file watch and hot reload, its
//! `istio-ca-root-cert` ConfigMaps. Stand-ins (labelled in tests/support): cert-manager's
//! controllers (support::cert_manager) and the kubelet's projection of `cacerts` and
//! `istio-ca-root-cert` into files (support::kubelet). Not here at all: Envoy and ztunnel, so the
//! data plane's own TLS handshakes and ztunnel's verifier are not proven; workload certificates
//! are judged instead as a peer would judge them, with Go's crypto/x509 (tests/goverify) and
//! openssl, against the roots the peer workload holds.
//!
//! Only one istio-system exists per control plane: these tests take it in turns
//! (support::istio_system::IstioSystemLock).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, RootRotation, RotationMode, RotationPhase};
use mesh_ca_issuer::pki::Certificate;
use support::eventually;
use support::istio_system::{IstioSystem, SOURCE, TIMEOUT};
use support::istiod::{Issued, IstiodConfig, Workload, contains, root_cert_config_map};
use support::objects::{condition, data, phase_of};

/// istiod's log lines for the three outcomes of a changed `root-cert.pem`
/// (`handleEvent` in pilot/pkg/bootstrap/istio_ca.go).
const ROOT_ACCEPTED: &str = "Updating new ROOT-CA";
const ROOT_REFUSED: &str = "Updating new ROOT-CA not supported";
const ROOT_REFUSED_NO_MULTIROOT: &str = "Multi root is disabled, updating new ROOT-CA not supported";
/// istiod's log line once it has loaded a new `cacerts` and re-signed its own serving certificate.
const RELOADED: &str = "Istiod has detected the newly added intermediate CA";

/// istiod's log lines saying it took a changed `root-cert.pem` (the refusals contain the same
/// words, followed by "not supported").
fn root_changes_taken(istiod: &support::istiod::Istiod) -> Vec<String> {
    istiod
        .log_lines(ROOT_ACCEPTED)
        .into_iter()
        .filter(|l| !l.contains("not supported"))
        .collect()
}

/// Waits until istiod has taken `n` root changes.
async fn wait_root_changes_taken(sys: &IstioSystem, n: usize) {
    eventually(TIMEOUT, || async {
        (root_changes_taken(sys.istiod()).len() >= n).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{}: istiod did not take {n} root changes:\n{}",
            sys.context,
            sys.istiod().log_tail(30)
        )
    });
}

fn parse(pem: &[u8]) -> Vec<Certificate> {
    Certificate::parse_pem_bundle(pem, "PEM").expect("PEM certificates")
}

/// Requests certificates until one is signed by `intermediate`; panics if any other issuer than
/// `intermediate` or `before` signs one, or after `timeout`. Returns that answer and every
/// request's (requested at, answered at, signed by `intermediate`).
async fn request_until_signed_by(
    workload: &Workload,
    sys: &IstioSystem,
    intermediate: &Certificate,
    before: &Certificate,
    timeout: Duration,
) -> Issued {
    let deadline = Instant::now() + timeout;
    loop {
        let issued = workload.request(sys.istiod()).await;
        let leaf = issued.leaf();
        if leaf.is_signed_by(intermediate) {
            return issued;
        }
        assert!(
            leaf.is_signed_by(before),
            "a workload certificate signed by neither the old nor the new intermediate"
        );
        assert!(
            Instant::now() < deadline,
            "istiod still signs with the old intermediate {timeout:?} later:\n{}",
            sys.istiod().log_tail(30)
        );
    }
}

/// A one-cluster mesh: root `mesh`, istiod's intermediate under it, `cacerts` written by our
/// controller, istiod started on it, and a workload.
async fn one_cluster(multi_root_mesh: bool) -> (IstioSystem, Workload, Certificate) {
    let mut sys = IstioSystem::create(&support::kubeconfig()).await;
    sys.issuer("mesh", "87600h").await;
    let intermediate = sys.issue_intermediate("mesh").await;
    sys.istio_cacerts("cluster.local", None).await;
    sys.start_istiod(IstiodConfig::new("cluster.local", multi_root_mesh))
        .await;
    let ns = sys.workload_namespace("istiod-wl").await;
    let workload = Workload::new(&sys.client, &ns, "app", sys.istiod()).await;
    (sys, workload, intermediate)
}

// === 0. the kubelet stand-in itself ===

#[test]
fn kubelet_stand_in_switches_versions_like_the_kubelets_atomic_writer() {
    let dir = tempfile::tempdir().unwrap();
    let v1: BTreeMap<String, Vec<u8>> = [("a".into(), b"1".to_vec()), ("b".into(), b"1".to_vec())].into();
    assert!(support::kubelet::write_atomically(dir.path(), &v1).unwrap());
    let first = std::fs::read_link(dir.path().join("..data")).unwrap();
    assert!(first.to_string_lossy().starts_with(".."), "{first:?}");
    assert_eq!(
        std::fs::read_link(dir.path().join("a")).unwrap(),
        std::path::Path::new("..data/a")
    );
    assert!(
        !support::kubelet::write_atomically(dir.path(), &v1).unwrap(),
        "the same payload is not written again"
    );
    let v2: BTreeMap<String, Vec<u8>> = [("a".into(), b"2".to_vec()), ("c".into(), b"2".to_vec())].into();
    assert!(support::kubelet::write_atomically(dir.path(), &v2).unwrap());
    let second = std::fs::read_link(dir.path().join("..data")).unwrap();
    assert_ne!(first, second, "a new timestamped directory");
    assert!(!dir.path().join(&first).exists(), "the old version is removed");
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"2");
    assert_eq!(std::fs::read(dir.path().join("c")).unwrap(), b"2");
    assert!(
        std::fs::symlink_metadata(dir.path().join("b")).is_err(),
        "a key that went away is removed"
    );
    assert!(!dir.path().join("..data_tmp").exists());
}

// === 1. plugged-in CA ===

#[tokio::test]
async fn istiod_loads_our_cacerts_and_its_workload_certificates_chain_to_our_intermediate_and_root() {
    let (mut sys, workload, intermediate) = one_cluster(false).await;
    let root = sys.root_of("mesh").await;
    let (cacerts, _) = sys.cacerts().await;
    let istiod = sys.istiod();
    // Plugged-in mode, not istiod's self-signed CA (pilot/pkg/bootstrap/istio_ca.go).
    assert!(
        !istiod.log_lines("Use local CA certificate").is_empty(),
        "istiod did not load the plugged-in CA:\n{}",
        istiod.log_tail(40)
    );
    assert!(istiod.log_lines("Use self-signed certificate").is_empty());

    let issued = workload.request(istiod).await;
    let chain = issued.chain_certificates();
    assert_eq!(
        chain[0].uri_sans(),
        vec![workload.spiffe_id()],
        "the workload's SPIFFE ID"
    );
    assert!(!chain[0].is_ca());
    assert_eq!(chain[1], intermediate, "signed by our intermediate, which comes next");
    assert!(chain[0].is_signed_by(&intermediate) && intermediate.is_signed_by(&root));
    assert_eq!(
        issued.root_certificates(),
        vec![root.clone()],
        "the workload holds our root"
    );
    assert_eq!(
        issued.roots.as_bytes(),
        &cacerts["root-cert.pem"][..],
        "root-cert.pem byte for byte"
    );
    issued
        .go_verdict(&root.to_pem())
        .unwrap_or_else(|e| panic!("Go refuses: {e}"));
    issued
        .openssl_verdict(&root.to_pem())
        .unwrap_or_else(|e| panic!("openssl refuses: {e}"));
    // The judges can refuse: the same certificate against a root that is not ours.
    sys.issuer("stranger", "87600h").await;
    let stranger = sys.root_of("stranger").await.to_pem();
    assert!(!issued.verifies(&stranger), "verified against an unrelated root");

    // istiod published the same root into the workload's namespace.
    let published = root_cert_config_map(&sys.client, &workload.namespace).await;
    assert_eq!(
        published.as_deref().map(str::as_bytes),
        Some(&cacerts["root-cert.pem"][..])
    );
    sys.istiod_mut().assert_still_first_process();
    eprintln!(
        "istiod {}: issued {} (issuer {}), chain of {} answer elements, roots {}",
        std::fs::read_to_string(support::istiod::istio_dir().join("VERSION"))
            .unwrap_or_default()
            .trim(),
        workload.spiffe_id(),
        chain[1].subject(),
        issued.elements.len(),
        root.subject()
    );
}

/// Revocation turned on under a running istiod: the `cacerts` our controller writes with
/// `ca-crl.pem` (a CRL for the intermediate and for the root) passes istiod's own check, which
/// refuses the whole update otherwise (`missing CRL signed by certificates`), and istiod hands
/// exactly those CRLs to the workloads in the `istio-ca-crl` ConfigMap.
#[tokio::test]
async fn istiod_accepts_our_ca_crl_pem_and_distributes_it_to_the_workloads() {
    let (sys, workload, _) = one_cluster(false).await;
    let revocation = |enabled: bool| {
        let api = sys.ns.api::<IstioCACerts>();
        async move {
            let patch = serde_json::json!({"spec": {"revocation": {"enabled": enabled}}});
            api.patch("istiod", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    revocation(true).await;
    sys.wait_icc("CRLsCurrent=Current", |icc| {
        condition(icc, "CRLsCurrent").is_some_and(|c| c.reason == "Current")
    })
    .await;
    let (cacerts, _) = sys.cacerts().await;
    let written = String::from_utf8(cacerts["ca-crl.pem"].clone()).unwrap();
    assert_eq!(written.matches("BEGIN X509 CRL").count(), 2);
    let configmaps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(sys.client.clone(), &workload.namespace);
    let distributed = eventually(Duration::from_secs(60), || async {
        let cm = configmaps.get_opt("istio-ca-crl").await.ok()??;
        cm.data?.remove("ca-crl.pem").filter(|pem| *pem == written)
    })
    .await;
    let istiod = sys.istiod();
    assert!(
        distributed.is_some(),
        "istiod did not distribute our CRLs:\n{}",
        istiod.log_tail(40)
    );
    assert!(
        istiod.log_lines("Failed to update new Plug-in CA certs").is_empty(),
        "istiod refused the update:\n{}",
        istiod.log_tail(40)
    );
    // Still the same CA: workloads are issued as before.
    let issued = workload.request(istiod).await;
    assert!(issued.verifies(&sys.root_of("mesh").await.to_pem()));

    // Revocation off: ca-crl.pem goes from cacerts, but istiod keeps handing out the CRLs it
    // loaded (istio/istio#61073), which nothing refreshes any more: the IstioCACerts says so.
    revocation(false).await;
    let icc = sys
        .wait_icc("CRLsCurrent=StaleCRLsDistributed", |icc| {
            condition(icc, "CRLsCurrent").is_some_and(|c| c.reason == "StaleCRLsDistributed")
        })
        .await;
    let (cacerts, _) = sys.cacerts().await;
    assert!(!cacerts.contains_key("ca-crl.pem"));
    let message = condition(&icc, "CRLsCurrent").unwrap().message.clone();
    assert!(message.contains("rollout restart deployment/istiod"), "{message}");
    let still = configmaps.get("istio-ca-crl").await.unwrap().data.unwrap_or_default();
    assert_eq!(
        still.get("ca-crl.pem"),
        Some(&written),
        "istiod kept the CRLs it loaded"
    );
}

// === 2. renewal, hot reload ===

#[tokio::test]
async fn istiod_hot_reloads_a_renewed_intermediate_without_a_restart() {
    let (mut sys, workload, first) = one_cluster(false).await;
    let before = workload.request(sys.istiod()).await;
    assert!(before.leaf().is_signed_by(&first));
    let pid = sys.istiod().pid();
    let (_, written_before) = sys.cacerts().await;

    // cert-manager renews the Certificate; our controller writes the new cacerts.
    let second = sys.issue_intermediate("mesh").await;
    assert_ne!(second, first);
    let second_pem = second.to_pem();
    let projected = sys
        .istiod()
        .cacerts
        .wait_for(TIMEOUT, |p| {
            p.data
                .get("ca-cert.pem")
                .is_some_and(|c| c.starts_with(second_pem.as_bytes()))
        })
        .await;
    assert_ne!(projected.resource_version, written_before);
    let (cacerts, _) = sys.cacerts().await;
    assert_eq!(
        cacerts["root-cert.pem"],
        before.roots.as_bytes(),
        "a renewal keeps root-cert.pem byte-identical"
    );

    let after = request_until_signed_by(&workload, &sys, &second, &first, TIMEOUT).await;
    let served = after
        .at
        .duration_since(jiff::Timestamp::try_from(projected.wall).unwrap());
    let reloaded_line = sys.istiod().wait_log_line(RELOADED, 0, TIMEOUT).await;
    let reloaded_at = log_time(&reloaded_line);
    let reload = reloaded_at.duration_since(jiff::Timestamp::try_from(projected.wall).unwrap());
    assert_eq!(after.root_certificates(), before.root_certificates());
    assert!(
        after.verifies(&before.roots),
        "the new certificate verifies against what the workload held before"
    );
    assert!(
        sys.istiod().log_lines(ROOT_ACCEPTED).is_empty(),
        "no root change, taken or refused"
    );
    let istiod = sys.istiod_mut();
    istiod.assert_still_first_process();
    assert_eq!(istiod.pid(), pid);
    eprintln!(
        "renewal: cacerts {} projected; istiod logged the reload {reload:#} later and the first \
         certificate under the new intermediate was answered {served:#} after the projection \
         (that includes the workload-agent's start, RSA key and TLS handshake)",
        projected.resource_version
    );
}

/// The timestamp that starts an istio log line (`2026-12-04T19:03:45.123456Z\tinfo\t...`).
fn log_time(line: &str) -> jiff::Timestamp {
    line.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"))
}

// === 3. federation across two clusters ===

/// Runs `meshca` with both clusters' kubeconfig files, as a user would.
fn meshca(a: &IstioSystem, b: &IstioSystem, args: &[&str]) -> (i32, String) {
    let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], args, &[]);
    (run.code, run.said())
}

/// Requests until the roots istiod hands the workload are exactly `roots`; returns that answer.
async fn request_until_roots(workload: &Workload, sys: &IstioSystem, roots: &[Certificate]) -> Issued {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let issued = workload.request(sys.istiod()).await;
        let held = issued.root_certificates();
        if held == roots {
            return issued;
        }
        assert!(
            Instant::now() < deadline,
            "{}: istiod never handed out the roots {:?} within {TIMEOUT:?} (last: {:?}):\n{}",
            sys.context,
            roots.iter().map(Certificate::subject).collect::<Vec<_>>(),
            held.iter().map(Certificate::subject).collect::<Vec<_>>(),
            sys.istiod().log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_istiods_trust_each_others_workloads_after_meshca_federate_and_no_longer_after_unfederate() {
    let mut a = IstioSystem::create(&support::kubeconfig()).await;
    let mut b = IstioSystem::create(&support::kubeconfig_b()).await;
    assert_ne!(a.context, b.context);
    let mut workloads = Vec::new();
    for (sys, trust_domain) in [(&mut a, "a.example"), (&mut b, "b.example")] {
        sys.issuer("mesh", "87600h").await;
        sys.issue_intermediate("mesh").await;
        sys.istio_cacerts(trust_domain, None).await;
        sys.start_istiod(IstiodConfig::new(trust_domain, true)).await;
        let ns = sys.workload_namespace("fed-wl").await;
        workloads.push(Workload::new(&sys.client, &ns, "app", sys.istiod()).await);
    }
    let (wa, wb) = (&workloads[0], &workloads[1]);
    let (root_a, root_b) = (a.root_of("mesh").await, b.root_of("mesh").await);
    assert_ne!(root_a, root_b, "each cluster has its own root");
    let pids = (a.istiod().pid(), b.istiod().pid());

    // Before: each workload trusts only its own cluster.
    let (ia, ib) = (wa.request(a.istiod()).await, wb.request(b.istiod()).await);
    assert!(ia.leaf().uri_sans()[0].starts_with("spiffe://a.example/"));
    assert!(ib.leaf().uri_sans()[0].starts_with("spiffe://b.example/"));
    assert!(ia.verifies(&ia.roots) && ib.verifies(&ib.roots));
    assert!(
        !ib.verifies(&ia.roots),
        "B's workload verified against A's roots before federation"
    );
    assert!(
        !ia.verifies(&ib.roots),
        "A's workload verified against B's roots before federation"
    );

    let federate = Instant::now();
    let (code, said) = meshca(
        &a,
        &b,
        &["federate", "--context", &a.context, "--context", &b.context, "--yes"],
    );
    assert_eq!(code, 0, "{said}");
    // Each istiod picks up its grown root-cert.pem by itself, and hands out both roots.
    let ia = request_until_roots(wa, &a, &[root_a.clone(), root_b.clone()]).await;
    let ib = request_until_roots(wb, &b, &[root_b.clone(), root_a.clone()]).await;
    let federated_in = federate.elapsed();
    assert!(
        ib.verifies(&ia.roots),
        "B's workload against the roots A's istiod hands out"
    );
    assert!(
        ia.verifies(&ib.roots),
        "A's workload against the roots B's istiod hands out"
    );
    assert!(
        ia.verifies(&ia.roots) && ib.verifies(&ib.roots),
        "each still trusts its own"
    );
    // The whole root-cert.pem is the answer's last element: istio-agent holds both roots.
    for issued in [&ia, &ib] {
        let last = issued.elements.last().expect("an answer");
        assert_eq!(parse(last.as_bytes()).len(), 2, "the last element holds both roots");
    }
    for sys in [&a, &b] {
        wait_root_changes_taken(sys, 1).await;
        assert!(sys.istiod().log_lines(ROOT_REFUSED).is_empty());
    }

    let unfederate = Instant::now();
    let (code, said) = meshca(
        &a,
        &b,
        &["unfederate", "--context", &a.context, "--context", &b.context],
    );
    assert_eq!(code, 0, "{said}");
    let ia = request_until_roots(wa, &a, std::slice::from_ref(&root_a)).await;
    let ib = request_until_roots(wb, &b, std::slice::from_ref(&root_b)).await;
    let unfederated_in = unfederate.elapsed();
    assert!(!ib.verifies(&ia.roots), "B's workload still verified against A's roots");
    assert!(!ia.verifies(&ib.roots), "A's workload still verified against B's roots");
    for sys in [&mut a, &mut b] {
        wait_root_changes_taken(sys, 2).await;
        assert!(sys.istiod().log_lines(ROOT_REFUSED).is_empty());
        sys.istiod_mut().assert_still_first_process();
    }
    assert_eq!((a.istiod().pid(), b.istiod().pid()), pids, "neither istiod restarted");
    eprintln!(
        "federation on two istiods: both hand out both roots {federated_in:?} after `meshca federate`, \
         only their own {unfederated_in:?} after `meshca unfederate` (no restart)"
    );
}

// === 4. root rotation under load, two clusters ===

const TRUST: Duration = Duration::from_secs(6);
const DRAIN: Duration = Duration::from_secs(8);
/// How often each workload asks for a certificate during the rotation.
const EVERY: Duration = Duration::from_millis(300);

fn rotation(mode: RotationMode, multi_root_mesh_enabled: bool) -> RootRotation {
    RootRotation {
        multi_root_mesh_enabled,
        trust_propagation_delay: format!("{}s", TRUST.as_secs()),
        workload_drain_delay: format!("{}s", DRAIN.as_secs()),
        mode,
        paused: false,
        // Approved when created (support::approve_new_root).
        expected_new_root: None,
    }
}

/// Waits until both clusters' current phase is past its delay.
async fn both_ready(a: &IstioSystem, b: &IstioSystem) {
    eventually(TIMEOUT, || async {
        for sys in [a, b] {
            let next: jiff::Timestamp = sys.icc().await.status?.root_rotation?.next_phase_at?.parse().ok()?;
            (jiff::Timestamp::now() >= next).then_some(())?;
        }
        Some(())
    })
    .await
    .expect("both delays end");
}

/// The roots `workload` held at `at`: those of its last answer before then.
fn held_at(answers: &[Issued], at: jiff::Timestamp) -> Option<&str> {
    answers
        .iter()
        .filter(|i| i.ok && i.at <= at)
        .max_by_key(|i| i.at)
        .map(|i| i.roots.as_str())
}

#[tokio::test]
async fn root_rotation_under_load_fails_no_workload_certificate_in_either_cluster() {
    let mut a = IstioSystem::create(&support::kubeconfig()).await;
    let mut b = IstioSystem::create(&support::kubeconfig_b()).await;
    // One old and one new root shared by both clusters: bootstrapped in A, copied to B.
    a.issuer("old", "87600h").await;
    a.issuer("new", "175200h").await;
    b.share_root(&a, "old").await;
    b.share_root(&a, "new").await;
    b.issuer("old", "87600h").await;
    b.issuer("new", "175200h").await;
    let (old_root, new_root) = (a.root_of("old").await, a.root_of("new").await);
    let mut workloads = Vec::new();
    for sys in [&mut a, &mut b] {
        sys.issue_intermediate("old").await;
        sys.istio_cacerts("cluster.local", Some(rotation(RotationMode::Manual, true)))
            .await;
        sys.start_istiod(IstiodConfig::new("cluster.local", true)).await;
        let ns = sys.workload_namespace("rot-wl").await;
        workloads.push(Workload::new(&sys.client, &ns, "app", sys.istiod()).await);
    }
    let pids = (a.istiod().pid(), b.istiod().pid());
    let contexts = [a.context.clone(), b.context.clone()];
    let fleet = |verb: &str, to: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = vec!["rotation".into(), verb.into()];
        for c in &contexts {
            v.extend(["--context".into(), c.clone()]);
        }
        v.extend([
            "--namespace".into(),
            "istio-system".into(),
            "--name".into(),
            "istiod".into(),
        ]);
        if let Some(to) = to {
            v.extend(["--to".into(), to.into()]);
        }
        v
    };

    // The load: each workload asks its istiod for a certificate every 300 ms throughout.
    let loops = [
        workloads[0].request_every(a.istiod(), EVERY, Duration::from_secs(600)),
        workloads[1].request_every(b.istiod(), EVERY, Duration::from_secs(600)),
    ];
    let started = jiff::Timestamp::now();
    let mut phase_times: Vec<(String, jiff::Timestamp)> = vec![("start".into(), started)];
    // Both loops answer before anything changes.
    eventually(TIMEOUT, || async {
        loops.iter().all(|l| l.so_far().iter().any(|i| i.ok)).then_some(())
    })
    .await
    .expect("both workloads got a first certificate");

    // cert-manager renews both intermediates under the new root: both start by adding it.
    a.issue_intermediate("new").await;
    b.issue_intermediate("new").await;
    a.wait_phase(RotationPhase::AddingNewRoot).await;
    b.wait_phase(RotationPhase::AddingNewRoot).await;
    phase_times.push(("AddingNewRoot".into(), jiff::Timestamp::now()));
    // Past both delays, `meshca rotation advance` moves both clusters together, twice.
    for (to, reached) in [
        ("SwitchingIntermediate", RotationPhase::SwitchingIntermediate),
        ("RemovingOldRoot", RotationPhase::Completed),
    ] {
        both_ready(&a, &b).await;
        let args = fleet("advance", Some(to));
        let (code, said) = meshca(&a, &b, &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(code, 0, "{said}");
        a.wait_phase(reached).await;
        b.wait_phase(reached).await;
        phase_times.push((reached.as_str().into(), jiff::Timestamp::now()));
    }
    let completed = jiff::Timestamp::now();
    // A few more certificates from both, after both hold only the new root.
    let new_only = vec![new_root.clone()];
    eventually(TIMEOUT, || async {
        loops
            .iter()
            .all(|l| {
                l.so_far()
                    .iter()
                    .filter(|i| i.ok && i.at > completed && i.root_certificates() == new_only)
                    .count()
                    >= 3
            })
            .then_some(())
    })
    .await
    .expect("both workloads hold only the new root after the rotation");
    let [loop_a, loop_b] = loops;
    let answers = [loop_a.stop(), loop_b.stop()];

    // Every certificate against what every workload (itself and its peer) held at that moment.
    let mut checked = 0usize;
    let mut verdicts = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut under = BTreeMap::<(&str, &str), usize>::new();
    let names = ["A", "B"];
    for (from, issued_list) in answers.iter().enumerate() {
        for issued in issued_list {
            if !issued.ok {
                failures.push(format!(
                    "{}: istiod issued nothing at {}: {}",
                    names[from], issued.at, issued.error
                ));
                continue;
            }
            checked += 1;
            let leaf = issued.leaf();
            let root = if issued.chain_certificates()[1].is_signed_by(&new_root) {
                "new"
            } else {
                "old"
            };
            *under.entry((names[from], root)).or_default() += 1;
            assert!(leaf.is_signed_by(&issued.chain_certificates()[1]));
            for (peer, peer_answers) in answers.iter().enumerate() {
                let Some(held) = held_at(peer_answers, issued.at) else {
                    continue; // that workload had no certificate yet: nothing to judge with
                };
                verdicts += 2;
                if let Err(e) = issued.go_verdict(held) {
                    failures.push(format!(
                        "Go: {}'s certificate of {} against {}'s roots: {e}",
                        names[from], issued.at, names[peer]
                    ));
                }
                if let Err(e) = issued.openssl_verdict(held) {
                    failures.push(format!(
                        "openssl: {}'s certificate of {} against {}'s roots: {e}",
                        names[from], issued.at, names[peer]
                    ));
                }
            }
        }
    }
    // The rotation really happened under the load: both intermediates signed in both clusters,
    // and the roots held went old → old+new → new.
    for name in names {
        assert!(
            under.get(&(name, "old")).copied().unwrap_or(0) > 0,
            "{name}: no certificate under the old root: {under:?}"
        );
        assert!(
            under.get(&(name, "new")).copied().unwrap_or(0) > 0,
            "{name}: no certificate under the new root: {under:?}"
        );
    }
    let both = vec![old_root.clone(), new_root.clone()];
    for (i, issued_list) in answers.iter().enumerate() {
        let seen: Vec<Vec<Certificate>> = issued_list
            .iter()
            .filter(|i| i.ok)
            .map(Issued::root_certificates)
            .collect();
        assert_eq!(
            seen.first(),
            Some(&vec![old_root.clone()]),
            "{}: first held the old root",
            names[i]
        );
        assert!(seen.contains(&both), "{}: never held old+new", names[i]);
        assert_eq!(seen.last(), Some(&new_only), "{}: ends holding the new root", names[i]);
    }
    // The judges do refuse in this very setting: A's last certificate under the old intermediate
    // against what B held at the end (the new root only).
    let last_old = answers[0]
        .iter()
        .rfind(|i| i.ok && !i.chain_certificates()[1].is_signed_by(&new_root))
        .expect("A issued under the old intermediate");
    let final_roots = &answers[1].iter().rfind(|i| i.ok).expect("B's last answer").roots;
    assert!(
        !last_old.verifies(final_roots),
        "an old-intermediate certificate verified against the new root alone"
    );
    for sys in [&mut a, &mut b] {
        assert!(sys.istiod().log_lines(ROOT_REFUSED).is_empty());
        sys.istiod_mut().assert_still_first_process();
    }
    assert_eq!((a.istiod().pid(), b.istiod().pid()), pids, "no istiod restarted");
    eprintln!(
        "rotation under load: {checked} workload certificates checked ({under:?}), {verdicts} verdicts \
         (Go and openssl, each against the roots both workloads held at that moment), {} failures; \
         phases at {:?}",
        failures.len(),
        phase_times.iter().map(|(p, t)| format!("{p} {t}")).collect::<Vec<_>>()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// === 5. what istiod does with a root change it cannot take ===

/// A `cacerts` (Istio's keys) written by hand from a cert-manager Secret (`tls.crt`, `tls.key`,
/// `ca.crt`), with `root-cert.pem` = `roots`: what a hand-made pipeline without our guards writes.
fn hand_made_cacerts(source: &BTreeMap<String, Vec<u8>>, roots: &str) -> serde_json::Value {
    let text = |k: &str| String::from_utf8(source[k].clone()).expect("PEM text");
    let intermediate = parse(&source["tls.crt"]).remove(0).to_pem();
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "stringData": {
            "ca-cert.pem": intermediate,
            "ca-key.pem": text("tls.key"),
            "cert-chain.pem": format!("{}{}", text("tls.crt"), text("ca.crt")),
            "root-cert.pem": roots,
        }
    })
}

async fn write_by_hand(sys: &IstioSystem, cacerts: &serde_json::Value) -> String {
    sys.ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .patch(
            "cacerts",
            &PatchParams::apply("hand-made-pipeline").force(),
            &Patch::Apply(cacerts),
        )
        .await
        .expect("write cacerts by hand")
        .resource_version()
        .unwrap_or_default()
}

/// Writes `cacerts` by hand and waits until istiod's watch has seen that very write, so what
/// istiod does next is its answer to it.
async fn write_seen_by_istiod(sys: &IstioSystem, cacerts: &serde_json::Value) {
    let version = write_by_hand(sys, cacerts).await;
    sys.istiod()
        .cacerts
        .wait_for(TIMEOUT, |p| p.resource_version == version)
        .await;
}

/// A workload `app` in `ns`, once its first certificate (from the running istiod) is signed
/// by `intermediate`: where each half of the wrong-rotation test starts.
async fn workload_under(sys: &IstioSystem, ns: &str, intermediate: &Certificate) -> Workload {
    let workload = Workload::new(&sys.client, ns, "app", sys.istiod()).await;
    assert!(workload.request(sys.istiod()).await.leaf().is_signed_by(intermediate));
    workload
}

async fn source(sys: &IstioSystem) -> BTreeMap<String, Vec<u8>> {
    data(
        &sys.ns
            .api::<k8s_openapi::api::core::v1::Secret>()
            .get(SOURCE)
            .await
            .expect("source Secret"),
    )
}

#[tokio::test]
async fn istiod_ignores_a_root_change_that_is_neither_superset_nor_subset_and_any_root_change_without_multiroot() {
    let mut sys = IstioSystem::create(&support::kubeconfig()).await;
    sys.issuer("old", "87600h").await;
    sys.issuer("other", "87600h").await;
    let (old_root, other_root) = (sys.root_of("old").await.to_pem(), sys.root_of("other").await.to_pem());
    let old_intermediate = sys.issue_intermediate("old").await;
    let old_source = source(&sys).await;
    let other_intermediate = sys.issue_intermediate("other").await;
    let other_source = source(&sys).await;
    let first = hand_made_cacerts(&old_source, &old_root);
    // A "renewal" onto another root, written in one go: root-cert.pem is replaced, neither a
    // superset nor a subset of the old one.
    let replaced = hand_made_cacerts(&other_source, &other_root);
    // The old intermediate with a grown root-cert.pem (a superset).
    let grown = hand_made_cacerts(&old_source, &format!("{old_root}{other_root}"));

    // With ISTIO_MULTIROOT_MESH=true.
    write_by_hand(&sys, &first).await;
    sys.start_istiod(IstiodConfig::new("cluster.local", true)).await;
    let ns = sys.workload_namespace("wrong-wl").await;
    let workload = workload_under(&sys, &ns, &old_intermediate).await;
    write_seen_by_istiod(&sys, &replaced).await;
    let refused = sys.istiod().wait_log_line(ROOT_REFUSED, 0, TIMEOUT).await;
    // Ignored as a whole: the new intermediate is not used either, the roots stay.
    let issued = workload.request(sys.istiod()).await;
    assert!(
        issued.leaf().is_signed_by(&old_intermediate),
        "istiod took the replaced bundle"
    );
    assert_eq!(issued.roots, old_root);
    assert!(
        !sys.istiod()
            .log_lines(ROOT_REFUSED)
            .iter()
            .any(|l| l.contains(ROOT_REFUSED_NO_MULTIROOT))
    );
    assert!(root_changes_taken(sys.istiod()).is_empty(), "istiod took a root change");
    // What it does take: a superset, then the same two roots in the other order — neither file's
    // bytes contain the other's, but the certificates are the same set (istiod 1.31 compares
    // parsed certificates; up to 1.30 it compared bytes and would refuse this one).
    let reordered = hand_made_cacerts(&old_source, &format!("{other_root}{old_root}"));
    for (taken, cacerts) in [(1, &grown), (2, &reordered)] {
        write_seen_by_istiod(&sys, cacerts).await;
        wait_root_changes_taken(&sys, taken).await;
    }
    let issued = workload.request(sys.istiod()).await;
    assert_eq!(
        issued.roots,
        format!("{other_root}{old_root}"),
        "the reordered roots, as written"
    );
    assert!(issued.leaf().is_signed_by(&old_intermediate));
    assert_eq!(
        sys.istiod().log_lines(ROOT_REFUSED).len(),
        1,
        "only the replacement was refused"
    );
    sys.istiod_mut().assert_still_first_process();

    // Without ISTIO_MULTIROOT_MESH (istiod's default): even a superset is ignored.
    sys.istiod = None;
    write_by_hand(&sys, &first).await;
    sys.start_istiod(IstiodConfig::new("cluster.local", false)).await;
    let workload = workload_under(&sys, &ns, &old_intermediate).await;
    let mut refused_without = Vec::new();
    for (what, cacerts) in [("a superset", &grown), ("neither", &replaced)] {
        let seen = sys.istiod().log_lines(ROOT_REFUSED_NO_MULTIROOT).len();
        write_seen_by_istiod(&sys, cacerts).await;
        let line = sys
            .istiod()
            .wait_log_line(ROOT_REFUSED_NO_MULTIROOT, seen, TIMEOUT)
            .await;
        refused_without.push(line);
        let issued = workload.request(sys.istiod()).await;
        assert!(issued.leaf().is_signed_by(&old_intermediate), "{what}: istiod took it");
        assert_eq!(issued.roots, old_root, "{what}: the roots changed");
        assert!(!issued.leaf().is_signed_by(&other_intermediate));
    }
    sys.istiod_mut().assert_still_first_process();
    eprintln!("istiod refused, with ISTIO_MULTIROOT_MESH=true: {refused:?}; without: {refused_without:?}");
}

// === 5 and 6. our rotation writes only what istiod takes; istio-ca-root-cert per phase ===

#[tokio::test]
async fn our_rotation_writes_only_root_changes_istiod_accepts_and_istio_ca_root_cert_follows_each_phase() {
    let mut sys = IstioSystem::create(&support::kubeconfig()).await;
    sys.issuer("old", "87600h").await;
    sys.issuer("new", "175200h").await;
    let (old_root, new_root) = (sys.root_of("old").await, sys.root_of("new").await);
    let old_intermediate = sys.issue_intermediate("old").await;
    sys.istio_cacerts("cluster.local", Some(rotation(RotationMode::Automatic, false)))
        .await;
    sys.start_istiod(IstiodConfig::new("cluster.local", true)).await;
    let ns = sys.workload_namespace("phases-wl").await;
    let workload = Workload::new(&sys.client, &ns, "app", sys.istiod()).await;
    let client = sys.client.clone();
    let published = |expected: Vec<Certificate>| wait_published(client.clone(), ns.clone(), expected);
    let mut read_after = vec![("before", published(vec![old_root.clone()]).await)];
    let (_, synced) = sys.cacerts().await;

    // The input a careless pipeline turns into a replaced root-cert.pem: a renewal under another
    // root. Without multiRootMeshEnabled our controller refuses it and writes nothing.
    let new_intermediate = sys.issue_intermediate("new").await;
    let icc = sys
        .wait_icc("Ready=RootChanged", |icc| {
            condition(icc, "Ready").is_some_and(|c| c.reason == "RootChanged")
        })
        .await;
    assert_eq!(phase_of(&icc), None);
    assert_eq!(sys.cacerts().await.1, synced, "cacerts untouched");
    assert_eq!(
        sys.istiod().cacerts.projections().len(),
        1,
        "nothing new for istiod to load"
    );
    assert!(sys.istiod().log_lines(ROOT_ACCEPTED).is_empty());

    // Confirmed (istiod runs with ISTIO_MULTIROOT_MESH=true): the rotation runs by itself.
    sys.ns
        .api::<IstioCACerts>()
        .patch(
            "istiod",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"rootRotation": {"multiRootMeshEnabled": true}}})),
        )
        .await
        .expect("confirm ISTIO_MULTIROOT_MESH");
    sys.wait_phase(RotationPhase::AddingNewRoot).await;
    read_after.push((
        "AddingNewRoot",
        published(vec![old_root.clone(), new_root.clone()]).await,
    ));
    let issued = workload.request(sys.istiod()).await;
    assert!(
        issued.leaf().is_signed_by(&old_intermediate),
        "the old intermediate signs while the new root propagates"
    );
    assert_eq!(issued.root_certificates(), vec![old_root.clone(), new_root.clone()]);

    sys.wait_phase(RotationPhase::SwitchingIntermediate).await;
    read_after.push((
        "SwitchingIntermediate",
        published(vec![old_root.clone(), new_root.clone()]).await,
    ));
    let issued = request_until_signed_by(&workload, &sys, &new_intermediate, &old_intermediate, TIMEOUT).await;
    assert_eq!(issued.root_certificates(), vec![old_root.clone(), new_root.clone()]);

    sys.wait_phase(RotationPhase::Completed).await;
    read_after.push(("Completed", published(vec![new_root.clone()]).await));
    let issued = request_until_roots(&workload, &sys, std::slice::from_ref(&new_root)).await;
    assert!(issued.leaf().is_signed_by(&new_intermediate));

    // Every version istiod was given was one it took: the root grew, the intermediate switched
    // under the same roots, the root shrank; istiod refused nothing.
    let versions = sys.istiod().cacerts.projections();
    assert_eq!(versions.len(), 4, "first, grown, switched, cut");
    let roots: Vec<Vec<Certificate>> = versions.iter().map(|v| parse(&v.data["root-cert.pem"])).collect();
    assert_eq!(roots[1], vec![old_root.clone(), new_root.clone()]);
    assert_eq!(roots[2], roots[1]);
    assert_eq!(roots[3], vec![new_root.clone()]);
    for pair in versions.windows(2) {
        let (before, after) = (&pair[0].data["root-cert.pem"], &pair[1].data["root-cert.pem"]);
        assert!(
            contains(after, before) || contains(before, after),
            "root-cert.pem neither grew nor shrank at an end, byte for byte"
        );
    }
    let taken = root_changes_taken(sys.istiod());
    assert_eq!(
        taken.len(),
        2,
        "istiod took the grown and the cut root-cert.pem: {taken:?}"
    );
    assert!(
        sys.istiod().log_lines(ROOT_REFUSED).is_empty(),
        "istiod refused a write of ours"
    );
    // At least three reloads: istiod reloads on every batch of file events, also one that
    // reaches it halfway through a projection (it then reads the old `..data` again).
    let reloads = sys.istiod().log_lines(RELOADED).len();
    assert!(reloads >= 3, "{reloads} reloads for three new versions");
    sys.istiod_mut().assert_still_first_process();

    // How long istio-ca-root-cert took to follow each root change, from the projection of the
    // cacerts version to that of the ConfigMap (both through watches).
    let mut lags = Vec::new();
    for (phase, version) in [("AddingNewRoot", &versions[1]), ("RemovingOldRoot", &versions[3])] {
        let roots = parse(&version.data["root-cert.pem"]);
        let followed = workload
            .root_cert
            .projections()
            .into_iter()
            .find(|p| p.at >= version.at && parse(&p.data["root-cert.pem"]) == roots)
            .unwrap_or_else(|| panic!("istio-ca-root-cert never followed {phase}"));
        lags.push((phase, followed.at - version.at));
    }
    eprintln!(
        "istio-ca-root-cert read after each phase: {:?}; it followed the root changes {lags:?} after istiod's cacerts changed",
        read_after
            .iter()
            .map(|(p, r)| (p, r.iter().map(short_fingerprint).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    );
}

/// Reads `istio-ca-root-cert` in `namespace` until it holds exactly `expected` (istiod writes
/// it a moment after it loaded a new `cacerts`); returns what it held.
async fn wait_published(client: kube::Client, namespace: String, expected: Vec<Certificate>) -> Vec<Certificate> {
    eventually(TIMEOUT, || async {
        let pem = root_cert_config_map(&client, &namespace).await?;
        let roots = Certificate::parse_pem_bundle(pem.as_bytes(), "istio-ca-root-cert").ok()?;
        (roots == expected).then_some(roots)
    })
    .await
    .unwrap_or_else(|| panic!("istio-ca-root-cert never held {} roots", expected.len()))
}

/// The first 12 hex digits of a certificate's SHA-256 fingerprint, to tell roots apart in output.
fn short_fingerprint(cert: &Certificate) -> String {
    cert.fingerprint()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect()
}

// === meshca check on a real istiod (issue 26) ===

/// The verdict of one check in `meshca check -o json` for this cluster: (status, problem, fix).
fn check_verdict(sys: &IstioSystem, id: &str) -> (String, String, String) {
    let run = support::meshca::run(
        &[sys.kubeconfig.as_path()],
        &["check", "--namespace", support::istiod::ISTIO_NAMESPACE, "-o", "json"],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("meshca check -o json: {e}\n{}\n{}", run.stdout, run.stderr));
    let finding = report["clusters"][0]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["checks"].as_array().cloned().unwrap_or_default())
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {}", run.stdout));
    let text = |k: &str| finding[k].as_str().unwrap_or_default().to_string();
    (text("status"), text("problem"), text("fix"))
}

#[tokio::test]
async fn meshca_check_sees_an_istiod_started_before_cacerts_and_passes_once_it_is_restarted() {
    let mut sys = IstioSystem::create(&support::kubeconfig()).await;
    let ns = support::istiod::ISTIO_NAMESPACE;
    // istiod first, as Istio's chart allows (cacerts is an optional volume): no cacerts yet, so
    // it runs its own self-signed CA (istio/istio#57853).
    let mut config = IstiodConfig::new("cluster.local", false);
    config.cacerts_optional = true;
    sys.start_istiod(config).await;
    assert!(
        !sys.istiod().log_lines("Use self-signed certificate").is_empty(),
        "istiod started on its own CA:\n{}",
        sys.istiod().log_tail(40)
    );
    sys.issuer("mesh", "87600h").await;
    sys.issue_intermediate("mesh").await;
    sys.istio_cacerts("cluster.local", None).await;
    let ours = sys.root_of("mesh").await;
    let (cacerts, _) = sys.cacerts().await;
    // What istiod distributes in its own namespace: its self-signed root, not ours, even now
    // that cacerts exists.
    let distributed = eventually(TIMEOUT, || async {
        root_cert_config_map(&sys.client, ns).await.filter(|r| !r.is_empty())
    })
    .await
    .expect("istiod writes istio-ca-root-cert into its namespace");
    assert_ne!(distributed.as_bytes(), &cacerts["root-cert.pem"][..]);
    let (status, problem, fix) = check_verdict(&sys, "istiod-loaded-ca");
    assert_eq!(status, "fail", "{problem}");
    assert!(problem.contains("not our root"), "{problem}");
    assert!(fix.contains("rollout restart deployment/istiod"), "{fix}");

    // Restarted (a new process on the same cacerts), istiod loads ours and the check passes.
    sys.istiod = None;
    sys.start_istiod(IstiodConfig::new("cluster.local", false)).await;
    assert!(!sys.istiod().log_lines("Use local CA certificate").is_empty());
    let ours_pem = ours.to_pem();
    eventually(TIMEOUT, || async {
        root_cert_config_map(&sys.client, ns)
            .await
            .filter(|r| r.as_bytes() == &cacerts["root-cert.pem"][..] && r.contains(ours_pem.trim()))
    })
    .await
    .expect("the restarted istiod distributes our root");
    let (status, problem, _) = check_verdict(&sys, "istiod-loaded-ca");
    assert_eq!(status, "pass", "{problem}");
}

// === federation through our SPIFFE bundle endpoint ===

/// Issue 24, proof 6 with a real istiod: istiod's own `meshConfig.caCertificates[].spiffeBundleUrl`
/// fetches a peer's bundle from our endpoint served with a Web PKI certificate
/// (`spec.bundleEndpoint.tlsSecretName`, the `https_web` profile), and takes exactly the peer's
/// root into the trust bundle it hands its proxies. istiod only says so in its log (the bundle
/// goes out through PCDS, which no workload here asks for), so its log lines are the proof.
#[tokio::test]
async fn istiods_spiffe_bundle_url_takes_the_peer_root_from_our_https_web_endpoint() {
    // The peer: a mesh of its own root in another namespace, its controller serving its
    // bundle endpoint with a certificate for 127.0.0.1 from a private CA.
    let (_scope, client, ns) = support::namespaced_test("istiod-bundle-peer").await;
    let logs = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let addr = format!("--bundle-endpoint-addr=127.0.0.1:{port}");
    let mut peer_controller = support::ControllerProcess::start(&["--namespace", &ns.name, &addr], logs.path());
    assert!(peer_controller.wait_ready(TIMEOUT).await, "{}", peer_controller.log());
    let peer = support::mesh::Mesh::new(client.clone(), ns, "mesh");
    peer.local_issuer("own", "own-root", "87600h", support::issuer::a_year_at_most())
        .await;
    peer.issue("own").await;
    let peer_root = support::objects::root_of(&peer.ns.api(), "own").await;
    let (ca_pem, serving) = peer.serve_bundle_with_web_pki("peer.example", "5m").await;
    let served = serving.status.unwrap().bundle_endpoint.unwrap();
    assert_eq!(served.served_roots, vec![peer_root.fingerprint()]);
    assert!(served.serving_certificate_not_after.is_some(), "{served:?}");
    assert_eq!(
        served.endpoint_spiffe_id, None,
        "a Web PKI certificate has no SPIFFE ID"
    );

    // This cluster's istiod, multi-root, trusting the private CA, told to fetch the peer's bundle.
    let mut sys = IstioSystem::create(&support::kubeconfig()).await;
    sys.issuer("mesh", "87600h").await;
    sys.issue_intermediate("mesh").await;
    sys.istio_cacerts("cluster.local", None).await;
    let ca_file = logs.path().join("web-pki-ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let mut config = IstiodConfig::new("cluster.local", true);
    config.env.push(("SSL_CERT_FILE".into(), ca_file.display().to_string()));
    config.mesh_config_extra = format!(
        "caCertificates:\n- spiffeBundleUrl: https://127.0.0.1:{port}/peer.example\n  trustDomains: [peer.example]\n"
    );
    sys.start_istiod(config).await;
    let istiod = sys.istiod();
    let loaded = istiod
        .wait_log_line("Loaded SPIFFE trust bundle for:", 0, TIMEOUT)
        .await;
    assert!(loaded.contains("containing 1 certs"), "{loaded}");
    // The certificate it took is the peer's root (istiod prints the PEM it updates with).
    let body: String = peer_root.to_pem().lines().filter(|l| !l.starts_with("-----")).collect();
    let logged: String = istiod.log().lines().map(str::trim).collect();
    assert!(
        logged.contains(&body),
        "istiod's trust bundle update does not carry the peer's root:\n{}",
        istiod.log_tail(40)
    );
    eprintln!("istiod: {loaded}");
    drop(peer_controller);
}
