//! Root rotation on the real API server, with delays of seconds: the controller is crashed and
//! restarted in every phase, and every `cacerts` it ever wrote is checked as istiod and the
//! workloads would judge it (openssl and Go's crypto/x509). Bad input holds the rotation with
//! a clear condition and no write beyond what its phase allows.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use mesh_ca_issuer::api::issuer::RootBootstrap;
use mesh_ca_issuer::api::istio_cacerts::{
    IstioCACerts, IstioCACertsSpec, PublishRoot, RootRotation, RotationMode, RotationPhase,
};
use mesh_ca_issuer::pki::Certificate;
use support::goverify::workload_and_chain_verify as go_verifies;
use support::issuer::a_year_at_most;
use support::istiod::contains;
use support::mesh::{Mesh, SOURCE, TwoClusters, endpoint_anchor, last_fetched, serving_bundle};
use support::objects::{condition, phase_of, root_of};
use support::openssl::workload_verifies as openssl_verifies;
use support::{ControllerProcess, eventually, goverify};

const TIMEOUT: Duration = Duration::from_secs(40);
const PUBLISHED: &str = "istio-ca-root-published";
const TRUST: Duration = Duration::from_secs(6);
const DRAIN: Duration = Duration::from_secs(8);

/// What a rotation test does with a mesh.
impl Mesh {
    /// A MeshCAIssuer `name` with its own bootstrapped root in Secret `<name>-root`.
    async fn root_issuer(&self, name: &str, root_duration: &str) {
        self.local_issuer(name, &format!("{name}-root"), root_duration, a_year_at_most())
            .await;
    }

    async fn wait_phase(&self, phase: RotationPhase) -> IstioCACerts {
        self.wait_icc(phase.as_str(), |icc| phase_of(icc) == Some(phase)).await
    }

    async fn published(&self) -> Vec<Certificate> {
        let cm: ConfigMap = self.ns.api().get(PUBLISHED).await.unwrap();
        let pem = cm.data.unwrap_or_default().remove("root-cert.pem").unwrap_or_default();
        Certificate::parse_pem_bundle(pem.as_bytes(), "published").unwrap_or_default()
    }

    async fn root_of(&self, issuer: &str) -> Certificate {
        root_of(&self.ns.api(), issuer).await
    }
}

/// A test's own namespace as one mesh (see [`mesh_in`]) and a directory for its controllers'
/// logs: where every single-mesh rotation test starts, before its controller. Bound as
/// `let (_lock, logs, mesh) = ...`, the namespace goes first, the lock last.
async fn one_mesh(prefix: &str) -> (support::ScopeLock, tempfile::TempDir, Mesh) {
    let (lock, client, ns) = support::namespaced_test(prefix).await;
    let logs = tempfile::tempdir().unwrap();
    (lock, logs, mesh_in(&client, ns))
}

/// A mesh `mesh` in `ns`, waiting as long as rotations take.
fn mesh_in(client: &kube::Client, ns: support::TestNamespace) -> Mesh {
    let mut mesh = Mesh::new(client.clone(), ns, "mesh");
    mesh.timeout = TIMEOUT;
    mesh
}

/// The IstioCACerts of a rotation test: publishing its root, rotating with short delays.
fn rotating(mode: RotationMode) -> IstioCACertsSpec {
    IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        publish_root: Some(PublishRoot {
            config_map_name: PUBLISHED.into(),
            key: "root-cert.pem".into(),
        }),
        root_rotation: Some(RootRotation {
            multi_root_mesh_enabled: true,
            trust_propagation_delay: format!("{}s", TRUST.as_secs()),
            workload_drain_delay: format!("{}s", DRAIN.as_secs()),
            mode,
            paused: false,
            // Approved when created (support::approve_new_root).
            expected_new_root: None,
        }),
        ..Default::default()
    }
}

/// [`rotating`] with its delays set: trust propagation `trust`, workload drain `drain`.
fn rotating_with(mode: RotationMode, trust: &str, drain: &str) -> IstioCACertsSpec {
    let mut spec = rotating(mode);
    if let Some(r) = spec.root_rotation.as_mut() {
        r.trust_propagation_delay = trust.into();
        r.workload_drain_delay = drain.into();
    }
    spec
}

/// No rotation under way, and `cacerts` still the version `synced` was: what a refused or
/// unapproved new root leaves.
async fn assert_held(mesh: &Mesh, icc: &IstioCACerts, synced: &Secret) {
    assert_eq!(phase_of(icc), None);
    assert_eq!(
        mesh.cacerts_secret().await.resource_version(),
        synced.resource_version(),
        "cacerts untouched"
    );
}

/// Roots `old` and `new` in `mesh`, and `cacerts` Synced from `old` under an IstioCACerts
/// `spec`: where the single-mesh rotation tests start, the new root not yet issued.
async fn synced_on_old_root(mesh: &Mesh, spec: IstioCACertsSpec) {
    mesh.root_issuer("old", "87600h").await;
    mesh.root_issuer("new", "175200h").await;
    mesh.issue("old").await;
    mesh.create_icc(spec).await;
    mesh.wait_condition("Ready", "Synced").await;
}

/// A controller process watching only `namespace`, optionally stopping dead at a failpoint.
async fn controller(namespace: &str, failpoint: Option<&str>, logs: &Path) -> ControllerProcess {
    let env: Vec<(&str, &str)> = failpoint.map(|f| ("MESHCA_FAILPOINT", f)).into_iter().collect();
    let mut c = ControllerProcess::start_with_env(&support::kubeconfig(), &["--namespace", namespace], &env, logs);
    assert!(
        c.wait_ready(Duration::from_secs(60)).await,
        "controller ready: {}",
        c.log()
    );
    c
}

/// A controller process watching only `namespace`, with `flags` (its own delays' bounds).
async fn controller_with(namespace: &str, flags: &[&str], logs: &Path) -> ControllerProcess {
    let args: Vec<&str> = ["--namespace", namespace]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let mut c = ControllerProcess::start_with_env(&support::kubeconfig(), &args, &[], logs);
    assert!(
        c.wait_ready(Duration::from_secs(60)).await,
        "controller ready: {}",
        c.log()
    );
    c
}

/// Waits until the process has stopped dead at its failpoint.
async fn wait_failpoint(c: &ControllerProcess, name: &str) {
    let needle = format!("failpoint {name} reached");
    eventually(TIMEOUT, || async { c.log().contains(&needle).then_some(()) })
        .await
        .unwrap_or_else(|| panic!("failpoint {name} never reached: {}", c.log()));
}

fn workload(data: &BTreeMap<String, Vec<u8>>) -> String {
    support::mesh::workload(data, "spiffe://cluster.local/ns/default/sa/x")
}

fn signing_root(data: &BTreeMap<String, Vec<u8>>, roots: &[&Certificate]) -> Certificate {
    let intermediate = Certificate::parse_pem_bundle(&data["ca-cert.pem"], "ca")
        .unwrap()
        .remove(0);
    roots
        .iter()
        .find(|r| intermediate.is_signed_by(r))
        .map(|r| (*r).clone())
        .expect("the intermediate chains to the old or the new root")
}

fn holds(data: &BTreeMap<String, Vec<u8>>, root: &Certificate) -> bool {
    Certificate::parse_pem_bundle(&data["root-cert.pem"], "roots")
        .unwrap()
        .contains(root)
}

#[tokio::test]
async fn one_cluster_rotates_through_every_phase_across_crashes_and_restarts() {
    let (_lock, logs, mesh) = one_mesh("rotation-one").await;
    let (client, namespace) = (mesh.client.clone(), mesh.ns.name.clone());
    let mut running = controller(&namespace, None, logs.path()).await;
    synced_on_old_root(&mesh, rotating(RotationMode::Automatic)).await;
    let (old_root, new_root) = (mesh.root_of("old").await, mesh.root_of("new").await);
    let recorder = mesh.record_cacerts();
    let started = Instant::now();
    let mut restarts = 0;

    // AddingNewRoot: the process dies right after writing the appended root, before status.
    drop(running);
    running = controller(&namespace, Some("rotation-written-AddingNewRoot"), logs.path()).await;
    mesh.issue("new").await;
    wait_failpoint(&running, "rotation-written-AddingNewRoot").await;
    drop(running);
    restarts += 1;
    assert_eq!(
        phase_of(&mesh.icc().await),
        None,
        "the status update was lost with the process"
    );
    running = controller(&namespace, None, logs.path()).await;
    let icc = mesh.wait_phase(RotationPhase::AddingNewRoot).await;
    let history = &icc.status.as_ref().unwrap().root_rotation.as_ref().unwrap().history;
    assert!(history[0].message.contains("started"), "{history:?}");
    assert_eq!(mesh.published().await, vec![old_root.clone(), new_root.clone()]);
    // ... and is restarted again in the middle of the propagation delay.
    tokio::time::sleep(TRUST / 3).await;
    drop(running);
    restarts += 1;
    running = controller(&namespace, None, logs.path()).await;

    // SwitchingIntermediate comes by itself; a restart in the middle of the drain.
    mesh.wait_phase(RotationPhase::SwitchingIntermediate).await;
    assert_eq!(mesh.published().await, vec![old_root.clone(), new_root.clone()]);
    tokio::time::sleep(DRAIN / 3).await;
    drop(running);
    restarts += 1;
    // RemovingOldRoot: the process dies right after writing the cut, before status.
    running = controller(&namespace, Some("rotation-written-RemovingOldRoot"), logs.path()).await;
    wait_failpoint(&running, "rotation-written-RemovingOldRoot").await;
    drop(running);
    restarts += 1;
    assert_eq!(phase_of(&mesh.icc().await), Some(RotationPhase::SwitchingIntermediate));
    running = controller(&namespace, None, logs.path()).await;
    let icc = mesh.wait_phase(RotationPhase::Completed).await;
    let total = started.elapsed();
    assert_eq!(mesh.published().await, vec![new_root.clone()]);
    let status = icc.status.clone().unwrap().root_rotation.unwrap();
    let phases: Vec<RotationPhase> = status.history.iter().map(|h| h.phase).collect();
    assert_eq!(
        phases,
        vec![
            RotationPhase::AddingNewRoot,
            RotationPhase::SwitchingIntermediate,
            RotationPhase::RemovingOldRoot,
            RotationPhase::Completed
        ]
    );

    // A restart after completion looks (its reconcile counter moves) and writes nothing.
    let before = mesh.cacerts_secret().await.resource_version();
    drop(running);
    restarts += 1;
    running = controller(&namespace, None, logs.path()).await;
    let port = running.admin_port;
    let metrics = eventually(TIMEOUT, || async {
        let (_, body) = support::http_get(port, "/metrics").await.ok()?;
        body.contains(r#"meshca_reconciles_total{controller="istiocacerts""#)
            .then_some(body)
    })
    .await
    .expect("the restarted controller reconciled");
    assert_eq!(mesh.cacerts_secret().await.resource_version(), before);
    for phase in RotationPhase::ALL {
        let line = format!(
            "meshca_root_rotation_phase{{namespace=\"{namespace}\",name=\"mesh\",phase=\"{}\"}} {}",
            phase.as_str(),
            i32::from(phase == RotationPhase::Completed)
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    for reason in [
        "RotationAddingNewRoot",
        "RotationSwitchingIntermediate",
        "RotationRemovingOldRoot",
        "RotationCompleted",
    ] {
        support::wait_for_event(&client, &namespace, "IstioCACerts/mesh", reason).await;
    }
    drop(running);
    recorder.stop();

    // === every cacerts the API server held ===
    let versions = recorder.versions();
    let roots = [&old_root, &new_root];
    // The initial bundle, the appended root, the switch, the cut: no write twice, though the
    // controller was restarted {restarts} times, twice right after a write.
    assert_eq!(
        versions.len(),
        4,
        "versions: {:?}",
        versions.iter().map(|v| &v.0).collect::<Vec<_>>()
    );
    for pair in versions.windows(2) {
        let (a, b) = (&pair[0].2["root-cert.pem"], &pair[1].2["root-cert.pem"]);
        assert!(
            contains(b, a) || contains(a, b),
            "root-cert.pem neither grew nor shrank at an end"
        );
    }
    for (_, _, d) in &versions {
        goverify::istiod_loads(d).unwrap_or_else(|e| panic!("istiod would not load a written cacerts: {e}"));
    }
    let added = versions.iter().position(|v| holds(&v.2, &new_root)).unwrap();
    let switched = versions
        .iter()
        .position(|v| signing_root(&v.2, &roots) == new_root)
        .unwrap();
    let cut = versions.iter().position(|v| !holds(&v.2, &old_root)).unwrap();
    assert_eq!((added, switched, cut), (1, 2, 3));
    assert_eq!(
        versions[1].2["ca-cert.pem"], versions[0].2["ca-cert.pem"],
        "the old intermediate is kept while the new root propagates"
    );
    assert_eq!(versions[3].2["root-cert.pem"], new_root.to_pem().into_bytes());
    let trusted_for = versions[switched].1 - versions[added].1;
    let drained_for = versions[cut].1 - versions[switched].1;
    assert!(trusted_for >= TRUST, "switched after {trusted_for:?}");
    assert!(drained_for >= DRAIN, "cut after {drained_for:?}");

    // Workload certificates under each intermediate verify against every root-cert.pem of
    // their span: the old intermediate's until the drain ends, the new one's from the switch.
    let mut checks = 0;
    for (i, (_, _, issued_by)) in versions.iter().enumerate() {
        let leaf = workload(issued_by);
        let root = signing_root(issued_by, &roots);
        for (j, (_, _, bundle)) in versions.iter().enumerate() {
            let span = if root == new_root { j >= switched } else { j < cut };
            // It verifies exactly where its root is trusted, and that covers its span.
            let trusted = holds(bundle, &root);
            assert!(trusted || !span, "v{j} is in the span of v{i} but lacks its root");
            let roots_pem = &bundle["root-cert.pem"];
            assert_eq!(
                openssl_verifies(&leaf, roots_pem),
                trusted,
                "openssl: leaf of v{i} against v{j}"
            );
            assert_eq!(go_verifies(&leaf, roots_pem), trusted, "Go: leaf of v{i} against v{j}");
            checks += 2;
        }
    }
    eprintln!(
        "rotation: {} cacerts writes for the rotation (plus the first), {restarts} restarts (2 right after a write), \
         new root trusted {trusted_for:?} before the switch (delay {TRUST:?}), old root cut {drained_for:?} after it \
         (delay {DRAIN:?}), {total:?} from the new intermediate to Completed, {checks} workload verdicts; history: {:?}",
        versions.len() - 1,
        status
            .history
            .iter()
            .map(|h| format!("{} {}", h.phase.as_str(), h.at))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn bad_input_holds_the_rotation_with_a_clear_condition() {
    let (_lock, logs, mesh) = one_mesh("rotation-bad").await;
    let (client, namespace) = (mesh.client.clone(), mesh.ns.name.clone());
    let _running = controller(&namespace, None, logs.path()).await;
    mesh.root_issuer("old", "87600h").await;
    mesh.root_issuer("short", "8760h").await;
    mesh.root_issuer("new", "175200h").await;
    mesh.issue("old").await;
    mesh.create_icc(rotating(RotationMode::Automatic)).await;
    mesh.wait_condition("Ready", "Synced").await;
    let synced = mesh.cacerts_secret().await;

    // A new root that expires before the old one is refused.
    mesh.issue("short").await;
    let icc = mesh.wait_condition("Ready", "NewRootRefused").await;
    let message = &condition(&icc, "Ready").unwrap().message;
    assert!(message.contains("before the old root"), "{message}");
    assert_eq!(phase_of(&icc), None);

    // An expired new root is refused: a source written by hand under a root that expired.
    let now = Timestamp::now();
    let (expired_root, expired_key) = mesh_ca_issuer::pki::sign::self_signed_root(
        &RootBootstrap {
            duration: "1h".into(),
            ..Default::default()
        },
        now - SignedDuration::from_hours(3),
    )
    .unwrap();
    let plan = support::sign::plan(
        true,
        now - SignedDuration::from_hours(3),
        now - SignedDuration::from_hours(2),
        Duration::from_secs(1),
    );
    let (intermediate, key) = support::sign::istiod_intermediate(&plan, &expired_root, &expired_key);
    let secrets: Api<Secret> = mesh.ns.api();
    let expired_source = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": SOURCE},
        "stringData": {"tls.crt": intermediate.to_pem(), "tls.key": key, "ca.crt": expired_root.to_pem()}
    });
    secrets
        .patch(
            SOURCE,
            &PatchParams::apply("rotation-test").force(),
            &Patch::Apply(&expired_source),
        )
        .await
        .unwrap();
    let icc = mesh
        .wait_icc("NewRootRefused for the expired root", |icc| {
            condition(icc, "Ready").is_some_and(|c| c.reason == "NewRootRefused" && c.message.contains("expired"))
        })
        .await;
    assert_held(&mesh, &icc, &synced).await;

    // multiRootMeshEnabled: false refuses the new root and says what to set.
    mesh.patch_icc(serde_json::json!({"spec": {"rootRotation": {"multiRootMeshEnabled": false}}}))
        .await;
    mesh.issue("new").await;
    let icc = mesh.wait_condition("Ready", "RootChanged").await;
    let message = &condition(&icc, "Ready").unwrap().message;
    assert!(
        message.contains("ISTIO_MULTIROOT_MESH") && message.contains("spec.rootRotation.multiRootMeshEnabled"),
        "{message}"
    );
    assert_held(&mesh, &icc, &synced).await;

    // Confirmed, the good new root starts the rotation; then a pause holds it through its delay.
    mesh.patch_icc(serde_json::json!({"spec": {"rootRotation": {"multiRootMeshEnabled": true}}}))
        .await;
    let icc = mesh.wait_phase(RotationPhase::AddingNewRoot).await;
    let next: Timestamp = icc
        .status
        .unwrap()
        .root_rotation
        .unwrap()
        .next_phase_at
        .unwrap()
        .parse()
        .unwrap();
    let adding = mesh.cacerts_secret().await;
    mesh.patch_icc(serde_json::json!({"spec": {"rootRotation": {"paused": true}}}))
        .await;
    mesh.wait_condition("RootRotation", "Paused").await;
    // Past the delay, a stale annotation (naming a phase that is not current) is a signal the
    // controller looked: it removes it and says so, and nothing moves.
    let wait = next.duration_since(Timestamp::now()).unsigned_abs() + Duration::from_secs(1);
    tokio::time::sleep(wait).await;
    mesh.patch_icc(
        serde_json::json!({"metadata": {"annotations": {"meshca.io/advance-rotation": "SwitchingIntermediate"}}}),
    )
    .await;
    let note = support::wait_for_event(&client, &namespace, "IstioCACerts/mesh", "StaleAdvanceAnnotation").await;
    assert!(
        note.contains("SwitchingIntermediate") && note.contains("AddingNewRoot"),
        "{note}"
    );
    let icc = mesh
        .wait_icc("the annotation removed", |icc| {
            !icc.annotations().contains_key("meshca.io/advance-rotation")
        })
        .await;
    assert_eq!(phase_of(&icc), Some(RotationPhase::AddingNewRoot));
    assert_eq!(condition(&icc, "RootRotation").unwrap().reason, "Paused");
    assert_eq!(
        mesh.cacerts_secret().await.resource_version(),
        adding.resource_version()
    );

    // Lifting the pause lets the delay that has passed take effect.
    mesh.patch_icc(serde_json::json!({"spec": {"rootRotation": {"paused": false}}}))
        .await;
    mesh.wait_phase(RotationPhase::SwitchingIntermediate).await;
    assert_ne!(
        mesh.cacerts_secret().await.resource_version(),
        adding.resource_version()
    );
}

/// Some(()) once the member's current phase is past its delay.
async fn ready(m: &Mesh) -> Option<()> {
    let next: Timestamp = m.icc().await.status?.root_rotation?.next_phase_at?.parse().ok()?;
    (Timestamp::now() >= next).then_some(())
}

/// Each cluster's freshly made workload certificate against the other's `root-cert.pem`, with
/// openssl and Go; panics on any failure. Returns the number of verdicts.
async fn cross_verify(a: &Mesh, b: &Mesh, step: &str) -> usize {
    let (da, db) = (a.cacerts().await, b.cacerts().await);
    let mut verdicts = 0;
    for (from, leaf_data, to, roots) in [("A", &da, "B", &db), ("B", &db, "A", &da)] {
        let leaf = workload(leaf_data);
        let roots_pem = &roots["root-cert.pem"];
        assert!(
            openssl_verifies(&leaf, roots_pem),
            "{step}: openssl refuses {from}'s workload against {to}'s root-cert.pem"
        );
        assert!(
            go_verifies(&leaf, roots_pem),
            "{step}: Go refuses {from}'s workload against {to}'s root-cert.pem"
        );
        verdicts += 2;
    }
    verdicts
}

async fn phases(a: &Mesh, b: &Mesh) -> (Option<RotationPhase>, Option<RotationPhase>) {
    (phase_of(&a.icc().await), phase_of(&b.icc().await))
}

#[tokio::test]
async fn two_clusters_sharing_a_root_rotate_together_driven_by_meshca_rotation_advance() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start_waiting("rotation-fleet", "mesh", TIMEOUT).await;
    let namespace = a.ns.name.clone();
    assert_ne!(a.context, b.context);
    // One old and one new root, shared: bootstrapped in A, copied to B.
    a.root_issuer("old", "87600h").await;
    a.root_issuer("new", "175200h").await;
    b.copy_secret(&a, "old-root").await;
    b.copy_secret(&a, "new-root").await;
    b.root_issuer("old", "87600h").await;
    b.root_issuer("new", "175200h").await;
    for m in [&a, &b] {
        m.issue("old").await;
        m.create_icc(rotating(RotationMode::Manual)).await;
        m.wait_condition("Ready", "Synced").await;
    }
    let fleet = |verb: &'static str| -> Vec<String> {
        let mut v: Vec<String> = vec!["rotation".into(), verb.into()];
        for c in [&a.context, &b.context] {
            v.extend(["--context".into(), c.clone()]);
        }
        v.extend(["--namespace".into(), namespace.clone(), "--name".into(), "mesh".into()]);
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], &refs, &[]);
        (run.code, run.said())
    };
    let mut verdicts = cross_verify(&a, &b, "before").await;
    let mut steps = vec!["before".to_string()];

    // A's source moves to the new root first: A starts alone (adding a root is always safe).
    a.issue("new").await;
    a.wait_phase(RotationPhase::AddingNewRoot).await;
    verdicts += cross_verify(&a, &b, "A adding the new root").await;
    steps.push("A AddingNewRoot, B not rotating".into());
    let (code, said) = run(fleet("advance"));
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains(&format!("context {}: no rotation is under way", b.context)),
        "{said}"
    );
    assert!(
        !a.mesh
            .icc()
            .await
            .annotations()
            .contains_key("meshca.io/advance-rotation"),
        "nothing written"
    );

    b.issue("new").await;
    let icc_b = b.wait_phase(RotationPhase::AddingNewRoot).await;
    verdicts += cross_verify(&a, &b, "both adding the new root").await;
    steps.push("both AddingNewRoot".into());
    // B's delay is still running: refused, naming B.
    let (code, said) = run(fleet("advance"));
    if code == 3 {
        assert!(
            said.contains(&format!("context {} is in AddingNewRoot until", b.context)),
            "{said}"
        );
        assert_eq!(
            phases(&a, &b).await,
            (Some(RotationPhase::AddingNewRoot), Some(RotationPhase::AddingNewRoot))
        );
    } else {
        panic!(
            "advance went through while B's delay ran (ends {:?}): {said}",
            icc_b.status.unwrap().root_rotation.unwrap().next_phase_at
        );
    }
    let (_, status) = run(fleet("status"));
    assert!(
        status.contains(&a.context) && status.contains(&b.context) && status.contains("AddingNewRoot"),
        "{status}"
    );

    // Past both delays, Manual mode still waits; advance moves both together.
    eventually(TIMEOUT, || async {
        ready(&a).await?;
        ready(&b).await
    })
    .await
    .expect("delays end");
    let (_, status) = run(fleet("status"));
    assert!(status.contains("waiting for `meshca rotation advance`"), "{status}");
    assert_eq!(
        phases(&a, &b).await,
        (Some(RotationPhase::AddingNewRoot), Some(RotationPhase::AddingNewRoot))
    );
    let (code, said) = run([fleet("advance"), vec!["--to".into(), "SwitchingIntermediate".into()]].concat());
    assert_eq!(code, 0, "{said}");
    a.wait_phase(RotationPhase::SwitchingIntermediate).await;
    b.wait_phase(RotationPhase::SwitchingIntermediate).await;
    verdicts += cross_verify(&a, &b, "both switched").await;
    steps.push("both SwitchingIntermediate".into());
    // A stale repeat of the same step is refused by the CLI (delay running) and, if set by
    // hand, ignored by the controllers.
    let (code, said) = run([fleet("advance"), vec!["--to".into(), "SwitchingIntermediate".into()]].concat());
    assert_eq!(code, 3, "{said}");

    eventually(TIMEOUT, || async {
        ready(&a).await?;
        ready(&b).await
    })
    .await
    .expect("drains end");
    let (code, said) = run([fleet("advance"), vec!["--to".into(), "RemovingOldRoot".into()]].concat());
    assert_eq!(code, 0, "{said}");
    a.wait_phase(RotationPhase::Completed).await;
    b.wait_phase(RotationPhase::Completed).await;
    verdicts += cross_verify(&a, &b, "both completed").await;
    steps.push("both Completed".into());
    let (da, db) = (a.cacerts().await, b.cacerts().await);
    let new_root = a.root_of("new").await;
    assert_eq!(da["root-cert.pem"], new_root.to_pem().into_bytes());
    assert_eq!(db["root-cert.pem"], da["root-cert.pem"]);
    eprintln!("fleet rotation: {verdicts} cross-cluster verdicts, all passing, at steps {steps:?}");
}

/// Federated by copies (`meshca federate`), a peer holds A's roots in a pinned copy that does
/// not follow A's rotation by itself. `meshca rotation advance --peer B` will not switch A's
/// intermediate while B does not trust A's new root, and `rotation status --peer B` says so;
/// re-running `meshca federate` in AddingNewRoot copies old and new (pinned), and then the
/// switch goes. B verifies A's workloads before, in AddingNewRoot and after the switch.
#[tokio::test]
async fn a_peer_federated_by_copy_must_trust_the_new_root_before_the_switch() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start_waiting("rotation-peer", "mesh", TIMEOUT).await;
    let namespace = a.ns.name.clone();
    a.root_issuer("old", "87600h").await;
    a.root_issuer("new", "175200h").await;
    b.root_issuer("own", "87600h").await;
    a.issue("old").await;
    b.issue("own").await;
    a.create_icc(rotating(RotationMode::Manual)).await;
    b.create_icc(support::mesh::publishing("cluster.local", None)).await;
    for m in [&a, &b] {
        m.wait_condition("Ready", "Synced").await;
    }
    let meshca = |args: &[&str]| {
        let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], args, &[]);
        (run.code, run.said())
    };
    let scope = ["--namespace", namespace.as_str(), "--name", "mesh"];
    let federate = [
        &["federate", "--context", &a.context, "--context", &b.context, "--yes"][..],
        &scope[..],
    ]
    .concat();
    let on_a_with_peer = |verb: &'static str| {
        [
            &["rotation", verb, "--context", &a.context, "--peer", &b.context][..],
            &scope[..],
        ]
        .concat()
    };
    let b_trusts = |root: Certificate| {
        let b = &b;
        async move {
            let trusted = eventually(TIMEOUT, || async {
                let status = b.icc().await.status?;
                (status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "Synced")
                    && status
                        .trust_anchors
                        .iter()
                        .any(|a| a.certificate.fingerprint_sha256 == root.fingerprint()))
                .then_some(())
            })
            .await;
            if trusted.is_none() {
                let status = b.icc().await.status;
                panic!("B does not trust root {}: {status:#?}", root.fingerprint());
            }
        }
    };
    let a_at_b = |step: &'static str| {
        let (a, b) = (&a, &b);
        async move {
            let leaf = workload(&a.cacerts().await);
            let roots = b.cacerts().await["root-cert.pem"].clone();
            assert!(
                openssl_verifies(&leaf, &roots),
                "{step}: openssl refuses A's workload at B"
            );
            assert!(go_verifies(&leaf, &roots), "{step}: Go refuses A's workload at B");
        }
    };
    let (code, said) = meshca(&federate);
    assert_eq!(code, 0, "{said}");
    b_trusts(a.root_of("old").await).await;
    a_at_b("federated").await;

    a.issue("new").await;
    a.wait_phase(RotationPhase::AddingNewRoot).await;
    a_at_b("A adding the new root").await;
    eventually(TIMEOUT, || ready(&a)).await.expect("A's delay ends");
    // B's copy holds A's old root only: the switch is refused, naming B and what to run.
    let (code, said) = meshca(&on_a_with_peer("advance"));
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains(&format!(
            "context {} does not trust the new root of context {}",
            b.context, a.context
        )) && said.contains("meshca federate"),
        "{said}"
    );
    assert!(
        !a.icc().await.annotations().contains_key("meshca.io/advance-rotation"),
        "nothing written"
    );
    let (_, status) = meshca(&on_a_with_peer("status"));
    assert!(
        status.contains(&format!("{} does not trust the new root yet", b.context)),
        "{status}"
    );

    // federate again: the copy now holds old and new, pinned; B trusts the new root.
    let (code, said) = meshca(&federate);
    assert_eq!(code, 0, "{said}");
    b_trusts(a.root_of("new").await).await;
    let pins = &b.icc().await.spec.trust_anchors[0].fingerprints;
    assert_eq!(pins.len(), 2, "old and new pinned: {pins:?}");
    let (_, status) = meshca(&on_a_with_peer("status"));
    assert!(
        status.contains(&format!("{} trusts the new root", b.context)),
        "{status}"
    );
    let (code, said) = meshca(&on_a_with_peer("advance"));
    assert_eq!(code, 0, "{said}");
    a.wait_phase(RotationPhase::SwitchingIntermediate).await;
    a_at_b("A switched to the new intermediate").await;
}

/// Federation that follows a rotation by itself (issue 24, proof 1): A and B, each with its
/// own root, trust each other through their SPIFFE bundle endpoints (`https_spiffe`, refresh
/// hint 2s, authenticated first by a bootstrap bundle). B rotates its root in Automatic mode;
/// nobody runs `meshca`. A trusts B's new root before B signs with it, and a workload
/// certificate of each verifies at the other at every step, with openssl and Go.
#[tokio::test]
async fn federated_clusters_follow_a_peers_root_rotation_through_bundle_endpoints() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start_waiting("rotation-endpoints", "mesh", TIMEOUT).await;
    a.root_issuer("own", "87600h").await;
    b.root_issuer("old", "87600h").await;
    b.root_issuer("new", "175200h").await;
    a.issue("own").await;
    b.issue("old").await;
    let (b_old, b_new) = (b.root_of("old").await, b.root_of("new").await);
    a.bootstrap("peer-b-bootstrap", &[&b_old]).await;
    b.bootstrap("peer-a-bootstrap", &[&a.root_of("own").await]).await;
    a.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        trust_domain: "a.example".into(),
        bundle_endpoint: serving_bundle("2s"),
        trust_anchors: vec![endpoint_anchor(
            "peer-b",
            "b.example",
            b.controller.bundle_port,
            "peer-b-bootstrap",
        )],
        ..Default::default()
    })
    .await;
    b.create_icc(IstioCACertsSpec {
        trust_domain: "b.example".into(),
        bundle_endpoint: serving_bundle("2s"),
        trust_anchors: vec![endpoint_anchor(
            "peer-a",
            "a.example",
            a.controller.bundle_port,
            "peer-a-bootstrap",
        )],
        ..rotating(RotationMode::Automatic)
    })
    .await;
    for (m, anchor) in [(&a, "peer-b"), (&b, "peer-a")] {
        m.wait_icc("the peer's bundle fetched and in root-cert.pem", |icc| {
            condition(icc, "Ready").is_some_and(|c| c.reason == "Synced") && last_fetched(icc, anchor).is_some()
        })
        .await;
    }
    let trusts = |icc: &IstioCACerts, root: &Certificate| {
        icc.status.as_ref().is_some_and(|s| {
            s.trust_anchors
                .iter()
                .any(|t| t.certificate.fingerprint_sha256 == root.fingerprint())
        })
    };
    assert!(trusts(&a.icc().await, &b_old) && !trusts(&a.icc().await, &b_new));
    let mut verdicts = cross_verify(&a, &b, "federated").await;
    let first_sequence = b.icc().await.status.unwrap().bundle_endpoint.unwrap().sequence;
    let a_writes = a.record_cacerts();
    let b_writes = b.record_cacerts();

    b.issue("new").await;
    b.wait_phase(RotationPhase::AddingNewRoot).await;
    let adding = Instant::now();
    let mut trusted_after = None;
    let mut phases_seen = Vec::new();
    loop {
        let (a_icc, b_icc) = (a.icc().await, b.icc().await);
        let phase = phase_of(&b_icc);
        if phases_seen.last() != Some(&phase) {
            phases_seen.push(phase);
        }
        if trusted_after.is_none() && trusts(&a_icc, &b_new) {
            trusted_after = Some(adding.elapsed());
        }
        // The safety property itself: B never signs under the new root before A trusts it.
        if phase != Some(RotationPhase::AddingNewRoot) {
            assert!(
                trusted_after.is_some() || trusts(&a_icc, &b_new),
                "B switched ({phase:?}) before A trusted its new root"
            );
        }
        verdicts += cross_verify(&a, &b, &format!("B in {phase:?}")).await;
        if phase == Some(RotationPhase::Completed) && !trusts(&a_icc, &b_old) {
            break;
        }
        assert!(
            adding.elapsed() < TIMEOUT * 2,
            "rotation did not complete: {:#?}",
            b_icc.status
        );
        // The verdicts' sampling cadence; the ordering itself is proven below from every
        // version of both `cacerts`, as their watches saw them.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    verdicts += cross_verify(&a, &b, "after").await;
    a_writes.stop();
    b_writes.stop();
    // Every version of both cacerts: A held B's new root before B's first version signed by it.
    let a_trusts_at = a_writes
        .versions()
        .into_iter()
        .find(|(_, _, data)| holds(data, &b_new))
        .map(|(_, at, _)| at)
        .expect("a version of A's cacerts with B's new root");
    let b_switched_at = b_writes
        .versions()
        .into_iter()
        .find(|(_, _, data)| signing_root(data, &[&b_old, &b_new]) == b_new)
        .map(|(_, at, _)| at)
        .expect("a version of B's cacerts signing under the new root");
    assert!(
        a_trusts_at < b_switched_at,
        "A trusted B's new root {:?} after B signed under it",
        a_trusts_at.duration_since(b_switched_at)
    );
    let trusted_after = trusted_after.expect("A trusted B's new root");
    let a_icc = a.icc().await;
    let source = a_icc.status.as_ref().unwrap().trust_anchors[0].source.clone().unwrap();
    assert!(source.error.is_none(), "{source:?}");
    assert_eq!(source.refresh_hint.as_deref(), Some("2s"));
    let b_status = b.icc().await.status.unwrap();
    let served = b_status.bundle_endpoint.unwrap();
    assert_eq!(served.served_roots, vec![b_new.fingerprint()]);
    assert!(served.sequence >= first_sequence + 2, "old; old and new; new");
    assert_eq!(source.sequence, Some(served.sequence));
    eprintln!(
        "B's AddingNewRoot → A trusts B's new root: {:.1}s; A trusted it {:.1}s before B signed under it; B's phases seen: {phases_seen:?}; {verdicts} verdicts, 0 failures; cacerts writes at A during B's rotation: {}",
        trusted_after.as_secs_f64(),
        b_switched_at.duration_since(a_trusts_at).as_secs_f64(),
        a_writes.writes()
    );
    // A's root-cert.pem grew by B's new root, then lost B's old one: two writes.
    assert_eq!(a_writes.writes(), 2, "{:?}", a_writes.roots().len());
}

/// A new root moves the mesh only once approved: an Automatic rotation towards a root nothing
/// pins waits (`NewRootNotApproved`, naming the root and the command that approves it, with
/// `cacerts` untouched); `meshca rotation approve` with another root's fingerprint exits 3 and
/// writes nothing; with the new root's own, it pins it (server-side apply as `meshca-cli`) and
/// the rotation starts.
#[tokio::test]
async fn a_new_root_waits_for_meshca_rotation_approve_which_refuses_another_fingerprint() {
    let (_lock, logs, mesh) = one_mesh("rotation-approve").await;
    let namespace = mesh.ns.name.clone();
    let _running = controller(&namespace, None, logs.path()).await;
    mesh.root_issuer("old", "87600h").await;
    mesh.issue("old").await;
    // Created before any new root exists: nothing is pinned.
    mesh.create_icc(rotating(RotationMode::Automatic)).await;
    mesh.wait_condition("Ready", "Synced").await;
    let synced = mesh.cacerts_secret().await;
    let pin = |icc: &IstioCACerts| icc.spec.root_rotation.as_ref().unwrap().expected_new_root.clone();
    assert_eq!(pin(&mesh.icc().await), None);

    // The source moves to a new root: the rotation waits for approval.
    mesh.root_issuer("next", "175200h").await;
    mesh.issue("next").await;
    let icc = mesh.wait_condition("Ready", "NewRootNotApproved").await;
    let (old_root, next_root) = (mesh.root_of("old").await, mesh.root_of("next").await);
    let fingerprint = next_root.fingerprint();
    let message = &condition(&icc, "Ready").unwrap().message;
    assert!(message.contains(&next_root.subject()), "{message}");
    assert!(
        message.contains(&format!(
            "meshca rotation approve --context <context> --namespace {namespace} --name mesh --fingerprint {fingerprint}"
        )),
        "{message}"
    );
    assert_eq!(
        condition(&icc, "RootRotation").map(|c| c.reason.as_str()),
        Some("NewRootNotApproved")
    );
    let waiting = icc.status.as_ref().and_then(|s| s.new_root_awaiting_approval.clone());
    assert_eq!(waiting.map(|w| w.fingerprint_sha256), Some(fingerprint.clone()));
    assert_held(&mesh, &icc, &synced).await;

    // Another root's fingerprint (here the old one's) is refused and nothing is written.
    let kubeconfig = support::kubeconfig();
    let context = support::context_of(&kubeconfig);
    let approve = |fingerprint: &str| {
        let args = [
            "rotation",
            "approve",
            "--context",
            &context,
            "--namespace",
            &namespace,
            "--name",
            "mesh",
            "--fingerprint",
            fingerprint,
        ];
        let run = support::meshca::run(&[kubeconfig.as_path()], &args, &[]);
        (run.code, run.said())
    };
    let before = mesh.icc().await;
    let (code, said) = approve(&old_root.fingerprint());
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains(&format!("the new root waiting for approval is {}", next_root.subject()))
            && said.contains(&fingerprint),
        "{said}"
    );
    let after = mesh.icc().await;
    assert_eq!(pin(&after), None, "nothing written");
    assert_eq!(after.metadata.generation, before.metadata.generation, "nothing written");
    assert_eq!(phase_of(&after), None);

    // The new root's own fingerprint (in capitals: any case) approves it: the rotation starts.
    let (code, said) = approve(&fingerprint.to_uppercase());
    assert_eq!(code, 0, "{said}");
    let icc = mesh.wait_phase(RotationPhase::AddingNewRoot).await;
    assert_eq!(pin(&icc), Some(fingerprint.clone()));
    let managers: Vec<_> = icc
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:expectedNewRoot"))
        })
        .map(|m| (m.manager.clone(), m.operation.clone()))
        .collect();
    assert_eq!(
        managers,
        vec![(Some("meshca-cli".to_string()), Some("Apply".to_string()))]
    );
    assert!(holds(&mesh.cacerts().await, &next_root), "the new root is added");
}

/// The delays cannot be skipped by whoever may patch the IstioCACerts: a plain advance before
/// `nextPhaseAt` is refused and removed, and says when it may come; only the emergency value
/// `force-<phase>` moves at once, and a Warning event names the field manager that set it.
#[tokio::test]
async fn an_early_advance_is_refused_and_only_force_moves_at_once_naming_who_set_it() {
    let (_lock, logs, mesh) = one_mesh("rotation-gate").await;
    let (client, namespace) = (mesh.client.clone(), mesh.ns.name.clone());
    let _running = controller(&namespace, None, logs.path()).await;
    // Delays long enough that the test ends well inside them.
    synced_on_old_root(&mesh, rotating_with(RotationMode::Manual, "1h", "25h")).await;
    mesh.issue("new").await;
    let icc = mesh.wait_phase(RotationPhase::AddingNewRoot).await;
    let next = icc.status.unwrap().root_rotation.unwrap().next_phase_at.unwrap();
    let adding = mesh.cacerts_secret().await;

    // (a) A plain advance 1h early: refused, removed, the condition says from when.
    mesh.patch_icc(serde_json::json!({"metadata": {"annotations": {"meshca.io/advance-rotation": "AddingNewRoot"}}}))
        .await;
    let icc = mesh
        .wait_icc("the early advance refused and removed", |icc| {
            !icc.annotations().contains_key("meshca.io/advance-rotation")
                && condition(icc, "RootRotation").is_some_and(|c| c.reason == "AdvanceRefused")
        })
        .await;
    let message = &condition(&icc, "RootRotation").unwrap().message;
    assert!(
        message.contains(&format!("no earlier than {next}")) && message.contains("force-SwitchingIntermediate"),
        "{message}"
    );
    assert_eq!(phase_of(&icc), Some(RotationPhase::AddingNewRoot));
    let events = support::events_for(&client, &namespace, "IstioCACerts/mesh").await;
    assert!(
        events
            .iter()
            .any(|(type_, reason, _)| type_ == "Warning" && reason == "AdvanceRefused"),
        "{events:?}"
    );
    // Nothing moved and nothing was written: the reconcile that raised this event decided the
    // refusal before any write (act writes cacerts first, the status and event last). The force
    // below may land before that reconcile removes the refused annotation: only the value it
    // read is removed, so the force is never dropped.
    let icc = mesh.icc().await;
    assert_eq!(phase_of(&icc), Some(RotationPhase::AddingNewRoot));
    assert_eq!(condition(&icc, "RootRotation").unwrap().reason, "AdvanceRefused");
    assert_eq!(
        mesh.cacerts_secret().await.resource_version(),
        adding.resource_version()
    );

    // (b) The emergency value, applied by "alice": the switch comes at once, and a Warning
    // names her.
    let api: Api<IstioCACerts> = mesh.ns.api();
    let force = serde_json::json!({
        "apiVersion": "meshca.io/v1alpha1", "kind": "IstioCACerts",
        "metadata": {"name": "mesh", "annotations": {"meshca.io/advance-rotation": "force-SwitchingIntermediate"}}
    });
    api.patch("mesh", &PatchParams::apply("alice"), &Patch::Apply(&force))
        .await
        .unwrap();
    let icc = mesh.wait_phase(RotationPhase::SwitchingIntermediate).await;
    assert!(
        Timestamp::now() < next.parse::<Timestamp>().unwrap(),
        "the switch came before the delay ended"
    );
    let note = support::wait_for_event(&client, &namespace, "IstioCACerts/mesh", "ForcedAdvance").await;
    assert!(
        note.contains(r#"field manager "alice" (Apply)"#) && note.contains("force-SwitchingIntermediate"),
        "{note}"
    );
    let events = support::events_for(&client, &namespace, "IstioCACerts/mesh").await;
    assert!(
        events
            .iter()
            .any(|(type_, reason, _)| type_ == "Warning" && reason == "ForcedAdvance"),
        "{events:?}"
    );
    let history = &icc.status.as_ref().unwrap().root_rotation.as_ref().unwrap().history;
    assert!(history.last().unwrap().message.contains("alice"), "{history:?}");
    mesh.wait_icc("the forced advance removed", |icc| {
        !icc.annotations().contains_key("meshca.io/advance-rotation")
    })
    .await;
    assert_ne!(
        mesh.cacerts_secret().await.resource_version(),
        adding.resource_version(),
        "the new intermediate is written"
    );
}

/// With the flags at their defaults (istiod's 24h workload certificates), a one-minute drain
/// is refused before the rotation starts, naming the field, the value, the minimum and flags.
#[tokio::test]
async fn a_controller_with_default_flags_refuses_a_one_minute_drain_naming_the_minimum() {
    let (_lock, logs, mesh) = one_mesh("rotation-min").await;
    let (client, namespace) = (mesh.client.clone(), mesh.ns.name.clone());
    let defaults = [
        "--workload-cert-ttl=24h",
        "--clock-skew-allowance=5m",
        "--min-trust-propagation-delay=1m",
    ];
    let _running = controller_with(&namespace, &defaults, logs.path()).await;
    synced_on_old_root(&mesh, rotating_with(RotationMode::Automatic, "1h", "1m")).await;
    // Said before any new root arrives.
    mesh.wait_condition("RootRotation", "DelayTooShort").await;
    let synced = mesh.cacerts_secret().await;

    mesh.issue("new").await;
    let icc = mesh.wait_condition("Ready", "DelayTooShort").await;
    let message = &condition(&icc, "Ready").unwrap().message;
    for text in [
        r#"spec.rootRotation.workloadDrainDelay "1m""#,
        "minimum 24h5m",
        "--workload-cert-ttl (24h",
        "--clock-skew-allowance (5m)",
    ] {
        assert!(message.contains(text), "{text} in {message}");
    }
    assert_eq!(condition(&icc, "RootRotation").unwrap().reason, "DelayTooShort");
    assert_eq!(phase_of(&icc), None, "the rotation did not start");
    assert_eq!(
        mesh.cacerts_secret().await.resource_version(),
        synced.resource_version()
    );
    support::wait_for_event(&client, &namespace, "IstioCACerts/mesh", "DelayTooShort").await;

    // At the minimum, it starts.
    mesh.patch_icc(serde_json::json!({"spec": {"rootRotation": {"workloadDrainDelay": "24h5m"}}}))
        .await;
    mesh.wait_phase(RotationPhase::AddingNewRoot).await;
}
