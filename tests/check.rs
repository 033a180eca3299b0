//! `meshca check` against the real API server (and, for the checks across clusters, the second
//! control plane, `MESHCA_TEST_KUBECONFIG_B`). Each broken situation is built for real (istiod
//! and ztunnel rendered from Istio's own charts, a real root rotation by the controller, real
//! RBAC answered by the API server's SubjectAccessReviews) and must fail exactly its check, with
//! its line, and exit 1; repaired, the check passes again. A healthy mesh passes with exit 0,
//! also under an identity that may only read; warnings alone exit 4 (1 with `--strict`); an
//! unreachable cluster is a failed check while the others are still checked; and the output is
//! read off a terminal (tmux) as a person sees it, with and without colour and as JSON.
//!
//! istiod itself does not run here yet: the `istio-ca-root-cert` ConfigMap it writes is written
//! by the fixture exactly as istiod writes it (see `MeshCluster::istiod_writes_root_cert`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mesh_ca_issuer::api::issuer::RootBootstrap;
use support::context_of;
use support::mesh_cluster::{ISSUER, MeshCluster, check_args};
use support::meshca::{MeshcaRun, run as meshca};
use support::{ScopeLock, eventually, istio_chart};

const TIMEOUT: Duration = Duration::from_secs(40);

fn namespace(prefix: &str) -> String {
    format!("{prefix}-{}", support::unique_suffix())
}

/// The run failed with exactly one ✖: `title` with `problem` under it, and exit 1.
fn assert_only_failure(run: &MeshcaRun, title: &str, problem: &str) {
    assert_eq!(run.code, 1, "exit code: {run:#?}");
    assert_eq!(
        run.failures(),
        vec![(format!("✖ {title}"), problem.to_string())],
        "the only failure: {}",
        run.stdout
    );
    assert!(run.warnings().is_empty(), "no warning: {}", run.stdout);
}

fn assert_all_pass(run: &MeshcaRun, checks: usize) {
    assert_eq!(
        (run.code, run.failures(), run.warnings()),
        (0, vec![], vec![]),
        "{}",
        run.stdout
    );
    assert_eq!(
        run.stdout.lines().filter(|l| l.starts_with('✔')).count(),
        checks,
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("all checks passed"), "{}", run.stdout);
}

/// Every per-cluster check (API 1, installation 3, approval 2, issuers 3, Certificate 5,
/// IstioCACerts 5, istiod 7, istiod's CA 1) and the five across clusters.
const PER_CLUSTER: usize = 27;
const ACROSS: usize = 5;

#[tokio::test]
async fn a_healthy_mesh_passes_also_under_a_read_only_identity_and_reads_well_in_a_terminal() {
    let _lock = ScopeLock::shared().await;
    let mut mesh = MeshCluster::healthy(support::kubeconfig(), &namespace("check-ok"), "cluster.local", &[]).await;

    let run = mesh.check(&[]);
    assert_all_pass(&run, PER_CLUSTER);
    eprintln!("FIGURES meshca check, one cluster: {:?}", run.took);
    assert_eq!(mesh.check(&["--strict"]).code, 0, "nothing to be strict about");

    // Nothing is written: the same checks pass under an identity that may only get and list
    // (and ask SubjectAccessReviews), and that identity really cannot write.
    let ns = mesh.ns.name.clone();
    mesh.ns
        .api::<ServiceAccount>()
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "meshca-check"}})).unwrap(),
        )
        .await
        .unwrap();
    let role_name = format!("meshca-test-check-{ns}");
    mesh.grant(
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": role_name},
            // The ClusterRole docs/check.md gives.
            "rules": [
                {"apiGroups": ["", "apps", "coordination.k8s.io", "apiextensions.k8s.io", "cert-manager.io", "meshca.io", "policy.cert-manager.io"],
                 "resources": ["*"], "verbs": ["get", "list"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            ],
        }))
        .unwrap(),
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": role_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            "subjects": [{"kind": "ServiceAccount", "name": "meshca-check", "namespace": ns}],
        }))
        .unwrap(),
    )
    .await;
    let token = support::service_account_token(&mesh.client, &ns, "meshca-check").await;
    let dir = tempfile::tempdir().unwrap();
    let read_only = support::kubeconfig_with_token(dir.path(), &token);
    let as_reader = support::client_with_token(&token).await;
    // RBAC's caches see a new binding a moment later: wait until the identity may read.
    eventually(TIMEOUT, || async {
        Api::<ConfigMap>::namespaced(as_reader.clone(), &ns)
            .list(&Default::default())
            .await
            .ok()
    })
    .await
    .expect("the read-only identity may list");
    let refused = Api::<ConfigMap>::namespaced(as_reader, &ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 403),
        "the identity may not write: {refused:?}"
    );
    assert_all_pass(&meshca(&[&read_only], &check_args(&[&mesh], &[]), &[]), PER_CLUSTER);

    terminal_output(&mesh);

    // Warnings alone: cert-manager's approver may approve every MeshCAIssuer's requests (the
    // chart's default) → exit 4, and 1 with --strict.
    mesh.approver_may_approve(&["meshcaissuers.meshca.io/*"]).await;
    let run = mesh.check(&[]);
    assert_eq!(run.code, 4, "{}", run.stdout);
    assert!(run.failures().is_empty(), "{}", run.stdout);
    assert_eq!(
        run.warnings(),
        vec![(
            "⚠ cert-manager's approver does not approve every request for our issuers in every namespace".to_string(),
            format!(
                "cert-manager's approver ({ns}/cert-manager) may approve meshcaissuers.meshca.io/*: it approves every request for those issuers from every namespace"
            )
        )]
    );
    assert!(
        run.stdout
            .contains("warnings only: 26 passed, 1 warning, 0 failed (exit 4;"),
        "{}",
        run.stdout
    );
    let strict = mesh.check(&["--strict"]);
    assert_eq!((strict.code, strict.warnings().len()), (1, 1), "{}", strict.stdout);
}

/// Runs `meshca check` in a tmux pane, as a person would, and returns the screen (`-e`: with
/// its colour escapes), once the command has ended.
fn in_terminal(mesh: &MeshCluster, session: &str, env: &str, extra: &str) -> String {
    let tmux = which("tmux").expect("tmux is missing: hack/test installs it (apt_install tmux)");
    let socket = format!("meshca-check-{}", support::unique_suffix());
    let args = check_args(&[mesh], &[]).join(" ");
    let command = format!(
        "env {env} KUBECONFIG={} TERM=xterm-256color {} {args} {extra}; echo EXIT=$?; sleep 60",
        mesh.kubeconfig.display(),
        env!("CARGO_BIN_EXE_meshca"),
    );
    let status = Command::new(&tmux)
        .args([
            "-L",
            &socket,
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "250",
            "-y",
            "150",
            &command,
        ])
        .env_remove("TMUX")
        .status()
        .expect("tmux runs");
    assert!(status.success(), "tmux new-session");
    let capture = |escapes: bool| {
        // From the start of the pane's history (-S -), wrapped lines joined (-J).
        let mut args = vec![
            "-L",
            socket.as_str(),
            "capture-pane",
            "-p",
            "-J",
            "-S",
            "-",
            "-t",
            session,
        ];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&Command::new(&tmux).args(&args).output().expect("capture-pane").stdout).into_owned()
    };
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !capture(false).contains("EXIT=") {
        assert!(
            std::time::Instant::now() < deadline,
            "meshca check did not end in tmux: {}",
            capture(false)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let screen = capture(true);
    // Our tmux server only (its own socket).
    let _ = Command::new(&tmux).args(["-L", &socket, "kill-server"]).status();
    let out = support::repo_root().join(format!("target/check-terminal-{session}.txt"));
    let _ = std::fs::write(&out, &screen);
    screen
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()))?
}

fn terminal_output(mesh: &MeshCluster) {
    let colour = in_terminal(mesh, "colour", "", "");
    assert!(colour.contains("EXIT=0"), "{colour}");
    let green_tick = colour
        .lines()
        .find(|l| l.contains("the API server answers"))
        .expect("the API check on screen");
    assert!(green_tick.contains("\u{1b}[32m✔"), "a green tick: {green_tick:?}");
    assert!(colour.contains("\u{1b}[1mInstallation"), "bold headings: {colour}");

    let plain = in_terminal(mesh, "plain", "NO_COLOR=1", "");
    assert!(plain.contains("EXIT=0"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "NO_COLOR: no escape at all: {plain:?}");
    assert!(plain.contains("✔ the API server answers\n"), "{plain}");
    assert!(
        plain.contains(&format!("Context {} (namespace {})\n====", mesh.context, mesh.ns.name)),
        "{plain}"
    );

    let json = in_terminal(mesh, "json", "", "-o json");
    let text: String = json
        .lines()
        .take_while(|l| !l.starts_with("EXIT="))
        .collect::<Vec<_>>()
        .join("\n");
    let start = text.find('{').expect("JSON on screen");
    let v: serde_json::Value = serde_json::from_str(text[start..].trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        (v["success"].as_bool(), v["exitCode"].as_u64()),
        (Some(true), Some(0)),
        "{v}"
    );
    assert_eq!(v["summary"]["passed"], PER_CLUSTER, "{v}");
    assert!(!json.contains("\u{1b}[3"), "no colour in JSON");
}

#[tokio::test]
async fn each_broken_situation_fails_exactly_its_check_and_passes_again_when_repaired() {
    let _lock = ScopeLock::shared().await;
    let mut mesh = MeshCluster::healthy(support::kubeconfig(), &namespace("check-broken"), "cluster.local", &[]).await;
    let ns = mesh.ns.name.clone();
    assert_all_pass(&mesh.check(&[]), PER_CLUSTER);

    // 1. istiod's Deployment without the cacerts mount (a hand-trimmed manifest).
    let (mut deployment, _) = istio_chart::istiod(&ns, &["meshConfig.trustDomain=cluster.local"]);
    let pod = &mut deployment["spec"]["template"]["spec"];
    let keep = |list: &serde_json::Value| -> serde_json::Value {
        list.as_array()
            .unwrap()
            .iter()
            .filter(|v| v["name"] != "cacerts")
            .cloned()
            .collect()
    };
    pod["volumes"] = keep(&pod["volumes"]);
    pod["containers"][0]["volumeMounts"] = keep(&pod["containers"][0]["volumeMounts"]);
    istio_chart::apply(&mesh.client, &[&deployment]).await;
    assert_only_failure(
        &mesh.check(&[]),
        "istiod mounts cacerts at /etc/cacerts",
        &format!(
            "Deployment {ns}/istiod does not mount Secret cacerts at /etc/cacerts: istiod runs its own self-signed CA and never sees ours"
        ),
    );
    mesh.install_istiod(&[]).await;
    assert_all_pass(&mesh.check(&[]), PER_CLUSTER);

    // 2. A mesh config with another trust domain.
    mesh.install_istiod(&["meshConfig.trustDomain=other.example"]).await;
    assert_only_failure(
        &mesh.check(&[]),
        "the mesh config's trustDomain is the IstioCACerts' trustDomain",
        &format!(
            "ConfigMap {ns}/istio says trustDomain other.example, but IstioCACerts istiod says cluster.local: workload identities and the trust domain we constrain to disagree"
        ),
    );
    mesh.install_istiod(&[]).await;
    assert_all_pass(&mesh.check(&[]), PER_CLUSTER);

    // 3. cert-manager's approver without the approve permission.
    mesh.revoke_approver().await;
    let run = mesh.check(&[]);
    assert_only_failure(
        &run,
        "an approver may approve requests for the mesh's issuers",
        &format!(
            "cert-manager's approver ({ns}/cert-manager) may not approve requests for MeshCAIssuer {ns}/{ISSUER} (approve on signers meshcaissuers.meshca.io/* or meshcaissuers.meshca.io/{ns}.{ISSUER}): istiod's intermediate waits for approval forever"
        ),
    );
    assert!(
        run.stdout
            .contains("→ helm upgrade <release> mesh-ca-issuer --reuse-values --set certManager.approver.enabled=true"),
        "{}",
        run.stdout
    );
    let signer = mesh.signer_name();
    mesh.approver_may_approve(&[&signer]).await;
    assert_all_pass(&mesh.check(&[]), PER_CLUSTER);

    // 4. istiod started before cacerts existed: it distributes its own self-signed root.
    let (self_signed, _) = mesh_ca_issuer::pki::sign::self_signed_root(
        &RootBootstrap {
            subject: mesh_ca_issuer::api::issuer::BootstrapSubject {
                common_name: "istiod self-signed".into(),
                organizations: vec!["cluster.local".into()],
            },
            ..Default::default()
        },
        jiff::Timestamp::now(),
    )
    .unwrap();
    mesh.istiod_writes_root_cert_pem(&self_signed.to_pem()).await;
    let run = mesh.check(&[]);
    assert_only_failure(
        &run,
        "istio-ca-root-cert, which istiod writes, holds our root-cert.pem",
        &format!(
            "istiod distributes {} (SHA-256 {}), not our root: it still runs another CA (its own self-signed one if it started before cacerts existed)",
            self_signed.subject(),
            &self_signed.fingerprint()[..12]
        ),
    );
    assert!(
        run.stdout
            .contains(&format!("→ kubectl -n {ns} rollout restart deployment/istiod")),
        "the restart advice: {}",
        run.stdout
    );
    mesh.istiod_writes_root_cert().await;
    assert_all_pass(&mesh.check(&[]), PER_CLUSTER);
}

/// Refreshes the stand-in for istiod's `istio-ca-root-cert` once `cacerts` holds `roots`
/// roots: istiod with ISTIO_MULTIROOT_MESH=true reloads a grown root-cert.pem by itself.
async fn istiod_reloads(mesh: &MeshCluster, roots: usize) {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = mesh.ns.api();
    eventually(TIMEOUT, || async {
        let data = secrets.get("cacerts").await.ok()?.data?;
        let pem = data.get("root-cert.pem")?;
        (String::from_utf8_lossy(&pem.0).matches("BEGIN CERTIFICATE").count() == roots).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{}: cacerts never held {roots} roots", mesh.context));
    mesh.istiod_writes_root_cert().await;
}

/// `meshca check` of both clusters (and across them).
fn both(a: &MeshCluster, b: &MeshCluster, extra: &[&str]) -> MeshcaRun {
    meshca(&[&a.kubeconfig, &b.kubeconfig], &check_args(&[a, b], extra), &[])
}

fn federate(a: &MeshCluster, b: &MeshCluster) {
    let run = meshca(
        &[&a.kubeconfig, &b.kubeconfig],
        &support::meshca::across("federate", &[&a.context, &b.context], &a.ns.name, &["--yes"]),
        &[],
    );
    assert_eq!(run.code, 0, "federate: {run:#?}");
}

#[tokio::test]
async fn a_federated_pair_passes_and_ztunnel_or_a_peer_rotation_each_fail_exactly_their_check() {
    let _lock = ScopeLock::shared().await;
    let ns = namespace("check-fed");
    // istiod as federation needs it (docs/federation.md): multi-root, the proxies' XDS agent,
    // the peer's trust domain as an alias.
    let values = |peer: &str| {
        vec![
            "pilot.env.ISTIO_MULTIROOT_MESH=true".to_string(),
            "--set-string=meshConfig.defaultConfig.proxyMetadata.PROXY_CONFIG_XDS_AGENT=true".to_string(),
            format!("meshConfig.trustDomainAliases={{{peer}}}"),
        ]
    };
    let (va, vb) = (values("b.example"), values("a.example"));
    let (va, vb): (Vec<&str>, Vec<&str>) = (
        va.iter().map(String::as_str).collect(),
        vb.iter().map(String::as_str).collect(),
    );
    let (a, mut b) = futures::join!(
        MeshCluster::healthy(support::kubeconfig(), &ns, "a.example", &va),
        MeshCluster::healthy(support::kubeconfig_b(), &ns, "b.example", &vb),
    );

    federate(&a, &b);
    for c in [&a, &b] {
        c.wait_for("tracks its peer's root", |icc| {
            icc.status.as_ref().is_some_and(|s| s.trust_anchors.len() == 1)
        })
        .await;
        istiod_reloads(c, 2).await;
    }
    let run = both(&a, &b, &[]);
    assert_all_pass(&run, 2 * PER_CLUSTER + ACROSS);
    eprintln!("FIGURES meshca check, two clusters: {:?}", run.took);

    // ztunnel (Istio's chart) in a cluster whose root-cert.pem holds another cluster's root.
    let ztunnel = istio_chart::ztunnel(&ns);
    istio_chart::apply(&a.client, &[&ztunnel]).await;
    assert_only_failure(
        &both(&a, &b, &[]),
        "no ztunnel runs beside trust anchors of another root",
        &format!(
            "ztunnel ({ns}/ztunnel) runs while IstioCACerts istiod has trust anchors of other roots: ambient works only with one shared root"
        ),
    );
    Api::<DaemonSet>::namespaced(a.client.clone(), &ns)
        .delete("ztunnel", &DeleteParams::default())
        .await
        .unwrap();
    assert_all_pass(&both(&a, &b, &[]), 2 * PER_CLUSTER + ACROSS);

    // A writes CRLs: its own chain's only, so its sidecars would refuse B's workloads.
    let revocation = |enabled: bool| serde_json::json!({"spec": {"revocation": {"enabled": enabled}}});
    let iccs = a.ns.api::<mesh_ca_issuer::api::istio_cacerts::IstioCACerts>();
    iccs.patch("istiod", &PatchParams::default(), &Patch::Merge(&revocation(true)))
        .await
        .unwrap();
    a.wait_for("writes its CRLs", |icc| {
        icc.status.as_ref().is_some_and(|s| s.crl.len() == 2)
    })
    .await;
    let run = both(&a, &b, &[]);
    let failures = run.failures();
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(failures.len(), 1, "{}", run.stdout);
    assert_eq!(
        failures[0].0,
        "✖ no cluster writing CRLs lacks the CRL of a peer's intermediate its sidecars verify"
    );
    assert!(
        failures[0].1.starts_with(&format!(
            "context {} writes ca-crl.pem without a CRL of context {}'s intermediate",
            a.context, b.context
        )) && failures[0].1.contains("unable to get certificate CRL"),
        "{}",
        run.stdout
    );
    iccs.patch("istiod", &PatchParams::default(), &Patch::Merge(&revocation(false)))
        .await
        .unwrap();
    a.wait_for("stops tracking CRLs", |icc| {
        icc.status.as_ref().is_some_and(|s| s.crl.is_empty())
    })
    .await;
    assert_all_pass(&both(&a, &b, &[]), 2 * PER_CLUSTER + ACROSS);

    // B rotates its root (approved): its status shows old and new, A's copy only the old one.
    b.create_issuer("next").await;
    let rotation = b.manual_rotation_to("next").await;
    b.ns.api::<mesh_ca_issuer::api::istio_cacerts::IstioCACerts>()
        .patch(
            "istiod",
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"rootRotation": rotation}})),
        )
        .await
        .unwrap();
    // The new issuer needs the approver too: `meshca check` said so when this test forgot it.
    let signers = [b.signer_name(), format!("meshcaissuers.meshca.io/{ns}.next")];
    b.approver_may_approve(&[&signers[0], &signers[1]]).await;
    b.issue("next").await;
    let rotating = b
        .wait_for("adds its new root", |icc| {
            icc.status.as_ref().is_some_and(|s| {
                s.roots.len() == 2
                    && s.root_rotation
                        .as_ref()
                        .is_some_and(|r| r.phase == mesh_ca_issuer::api::istio_cacerts::RotationPhase::AddingNewRoot)
            })
        })
        .await;
    istiod_reloads(&b, 3).await;
    let new_root = rotating.status.unwrap().root_rotation.unwrap().new_root;
    let subject = RootBootstrap::default().subject.common_name;
    let run = both(&a, &b, &[]);
    assert_only_failure(
        &run,
        "each federated peer's current roots are all among our trust anchors",
        &format!(
            "context {}'s trust anchors lack CN={subject} (SHA-256 {}) of context {}: its copy of the peer's roots is stale (the peer rotated), so workloads signed under it will be refused",
            a.context,
            &new_root[..12],
            b.context
        ),
    );
    assert!(
        run.stdout.contains(&format!(
            "→ meshca federate --context {} --context {}",
            a.context, b.context
        )),
        "{}",
        run.stdout
    );

    // Federating again copies both roots: all well.
    federate(&a, &b);
    a.wait_for("tracks both of B's roots", |icc| {
        icc.status.as_ref().is_some_and(|s| s.trust_anchors.len() == 2)
    })
    .await;
    istiod_reloads(&a, 3).await;
    assert_all_pass(&both(&a, &b, &[]), 2 * PER_CLUSTER + ACROSS);
    let json: serde_json::Value = serde_json::from_str(&both(&a, &b, &["-o", "json"]).stdout).unwrap();
    assert_eq!(json["fleet"]["checks"].as_array().map(Vec::len), Some(ACROSS), "{json}");
}

/// A kubeconfig whose only context `name` points at `server`, with the test's credentials.
fn kubeconfig_for_server(dir: &Path, name: &str, server: &str) -> PathBuf {
    let text = std::fs::read_to_string(support::kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let context = context_of(&support::kubeconfig());
    config["clusters"][0]["cluster"]["server"] = server.into();
    config["clusters"][0]["name"] = name.into();
    config["users"][0]["name"] = name.into();
    config["contexts"][0]["name"] = name.into();
    config["contexts"][0]["context"]["cluster"] = name.into();
    config["contexts"][0]["context"]["user"] = name.into();
    config["current-context"] = name.into();
    assert_ne!(context, name);
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn an_unreachable_or_silent_cluster_is_a_failed_check_and_the_others_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on this port.
    let closed = support::free_port();
    let gone = kubeconfig_for_server(dir.path(), "gone", &format!("https://127.0.0.1:{closed}"));
    // This one accepts connections and never answers.
    let silent_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = kubeconfig_for_server(
        dir.path(),
        "silent",
        &format!("https://127.0.0.1:{}", silent_listener.local_addr().unwrap().port()),
    );
    let here = context_of(&support::kubeconfig());
    let ns = namespace("check-nothing-here");
    let run = meshca(
        &[&support::kubeconfig(), &gone, &silent],
        &[
            "check",
            "--context",
            &here,
            "--context",
            "gone",
            "--context",
            "silent",
            "--namespace",
            &ns,
            "--timeout",
            "3s",
        ],
        &[],
    );
    assert_eq!(run.code, 1, "{run:#?}");
    let failures = run.failures();
    let api: Vec<&(String, String)> = failures
        .iter()
        .filter(|(title, _)| title == "✖ the API server answers")
        .collect();
    assert_eq!(
        api.len(),
        2,
        "both unreachable clusters fail the API check: {}",
        run.stdout
    );
    assert!(api[0].1.starts_with("context gone is unreachable:"), "{:?}", api[0]);
    // The silent cluster was cut off by --timeout (its own message says so), not waited for:
    // that message is the proof, not a wall-clock bound on a shared machine.
    assert_eq!(api[1].1, "context silent did not answer within 3s");
    // The reachable cluster was checked all the same (its namespace is empty: istiod missing).
    let here_block = run
        .stdout
        .split("Context ")
        .find(|b| b.starts_with(&here))
        .expect("the reachable cluster's block");
    assert!(here_block.contains("✔ the API server answers"), "{here_block}");
    assert!(here_block.contains("✖ istiod's Deployment is there"), "{here_block}");
    // The checks across clusters say they compared only part of the fleet.
    assert!(
        run.stdout.contains("could not be read or has no IstioCACerts"),
        "{}",
        run.stdout
    );
    drop(silent_listener);
}

#[test]
fn a_kubeconfig_that_cannot_be_read_is_a_failed_check_not_a_crash() {
    let run = meshca(
        &[Path::new("/nonexistent/kubeconfig")],
        &["check", "--context", "x"],
        &[],
    );
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{}", run.stdout);
    assert!(
        run.failures()[0].1.starts_with("cannot read the kubeconfig"),
        "{:?}",
        run.failures()
    );
    let usage = meshca(&[Path::new("/nonexistent")], &["check", "--output", "yaml"], &[]);
    assert_eq!(usage.code, 2, "bad usage: {usage:#?}");
}
