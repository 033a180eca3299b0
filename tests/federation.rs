//! Trust across two real control planes: each cluster has its own root, a MeshCAIssuer, the
//! cert-manager stand-in's istiod intermediate and an IstioCACerts that publishes its root.
//! `meshca federate` makes each cluster's workload certificates verify against the other's
//! `root-cert.pem` (openssl and Go's crypto/x509, as istiod and Envoy judge), `meshca
//! unfederate` undoes it, and every `root-cert.pem` either contains or is contained in the one
//! before it. With one shared root, workloads verify across clusters without any anchor.
//!
//! Needs the second control plane that hack/test starts (`MESHCA_TEST_KUBECONFIG_B`).

mod support;

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use mesh_ca_issuer::api::issuer::RootBootstrap;
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec, KeyRef, PublishRoot, TrustAnchor};
use support::goverify::workload_and_chain_verify as go_verifies;
use support::issuer::bootstrapped;
use support::istiod::contains;
use support::mesh::{Cluster, SOURCE, TwoClusters, workload};
use support::openssl::workload_verifies as openssl_verifies;
use support::{ScopeLock, eventually, goverify};

const TIMEOUT: Duration = Duration::from_secs(30);
const PUBLISHED: &str = "istio-ca-root-published";

/// A ConfigMap under the published name, holding `root_cert`, applied by the test (not by the
/// controller) in `cluster`'s namespace: someone else's, which the controller must not take.
async fn foreign_published(cluster: &Cluster, root_cert: &str) {
    let foreign = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": PUBLISHED, "namespace": cluster.ns.name},
        "data": {"root-cert.pem": root_cert},
    });
    cluster
        .ns
        .api::<ConfigMap>()
        .patch(
            PUBLISHED,
            &PatchParams::apply(support::TEST_MANAGER),
            &Patch::Apply(&foreign),
        )
        .await
        .unwrap();
}

/// What a federation test does with a cluster: its own root, istiod's intermediate, an
/// IstioCACerts `istiod` that publishes the root.
impl Cluster {
    /// A MeshCAIssuer `mesh` with a local root bootstrapped into `mesh-root` (unless the Secret
    /// was put there before: the shared-root case), and istiod's intermediate from it.
    async fn issue_intermediate(&self) {
        self.issuer("mesh", bootstrapped("mesh-root")).await;
        self.issue("mesh").await;
    }

    async fn create_istio_cacerts(&self, trust_anchors: Vec<TrustAnchor>) {
        self.create_icc(IstioCACertsSpec {
            source_secret_name: SOURCE.into(),
            trust_domain: self.trust_domain.clone(),
            trust_anchors,
            publish_root: Some(PublishRoot {
                config_map_name: PUBLISHED.into(),
                key: "root-cert.pem".into(),
            }),
            ..Default::default()
        })
        .await;
    }

    async fn published_root(&self) -> String {
        eventually(TIMEOUT, || async {
            let cm = self.ns.api::<ConfigMap>().get_opt(PUBLISHED).await.ok()??;
            cm.data?.get("root-cert.pem").cloned()
        })
        .await
        .expect("the published root")
    }

    /// A workload certificate as istiod would sign it in this cluster, followed by cert-chain.pem.
    async fn workload_certificate(&self) -> String {
        let spiffe_id = format!("spiffe://{}/ns/default/sa/x", self.trust_domain);
        workload(&self.cacerts().await, &spiffe_id)
    }
}

/// Runs `meshca` with a KUBECONFIG of both files (as a user would: colon-separated).
fn meshca(a: &Cluster, b: &Cluster, args: &[&str]) -> (i32, String, Duration) {
    let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], args, &[]);
    (run.code, run.said(), run.took)
}

fn args<'a>(verb: &'a str, a: &'a Cluster, b: &'a Cluster, extra: &[&'a str]) -> Vec<&'a str> {
    support::meshca::across(verb, &[&a.context, &b.context], &a.ns.name, extra)
}

#[tokio::test]
async fn federate_makes_workloads_verify_across_clusters_and_unfederate_undoes_it() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start("fed", "istiod").await;
    for c in [&a, &b] {
        c.issue_intermediate().await;
        c.create_istio_cacerts(vec![]).await;
        c.wait_ready("Synced").await;
    }
    let (root_a, root_b) = (a.published_root().await, b.published_root().await);
    assert_ne!(root_a, root_b, "each cluster has its own root");
    let (history_a, history_b) = (a.record_cacerts(), b.record_cacerts());
    let (wl_a, wl_b) = (a.workload_certificate().await, b.workload_certificate().await);

    // Before: A's workload does not verify against B's bundle, nor B's against A's.
    let (bundle_a, bundle_b) = (
        a.cacerts().await["root-cert.pem"].clone(),
        b.cacerts().await["root-cert.pem"].clone(),
    );
    assert!(
        openssl_verifies(&wl_a, &bundle_a) && go_verifies(&wl_a, &bundle_a),
        "A's own bundle"
    );
    assert!(!openssl_verifies(&wl_a, &bundle_b) && !go_verifies(&wl_a, &bundle_b));
    assert!(!openssl_verifies(&wl_b, &bundle_a) && !go_verifies(&wl_b, &bundle_a));

    // A dry run writes nothing.
    let (code, said, _) = meshca(&a, &b, &args("federate", &a, &b, &["--dry-run"]));
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("would write"), "{said}");
    assert!(a.icc().await.spec.trust_anchors.is_empty(), "dry run kept nothing");

    let fingerprint = |pem: &str| {
        mesh_ca_issuer::pki::Certificate::parse_pem_bundle(pem.as_bytes(), "root")
            .unwrap()
            .remove(0)
            .fingerprint()
    };
    let (fp_a, fp_b) = (fingerprint(&root_a), fingerprint(&root_b));
    // Without --yes and without a terminal to ask on: the pins shown, nothing written.
    let (code, said, _) = meshca(&a, &b, &args("federate", &a, &b, &[]));
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains("Pins") && said.contains(&fp_b) && said.contains("--yes"),
        "{said}"
    );
    assert!(
        a.icc().await.spec.trust_anchors.is_empty(),
        "nothing written unconfirmed"
    );

    let (code, said, federate_time) = meshca(&a, &b, &args("federate", &a, &b, &["--yes"]));
    assert_eq!(code, 0, "{said}");
    // Each copy is pinned to the root it holds.
    let pins = |icc: IstioCACerts| {
        icc.spec
            .trust_anchors
            .iter()
            .map(|t| t.fingerprints.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pins(a.icc().await), vec![vec![fp_b]]);
    assert_eq!(pins(b.icc().await), vec![vec![fp_a]]);
    assert!(
        said.contains("trustDomainAliases") && said.contains("b.example"),
        "{said}"
    );
    let icc_a = eventually(TIMEOUT, || async {
        let icc = a.wait_ready("Synced").await;
        (icc.status.as_ref()?.trust_anchors.len() == 1).then_some(icc)
    })
    .await
    .expect("A tracks B's root as a trust anchor");
    eventually(TIMEOUT, || async {
        (b.icc().await.status?.trust_anchors.len() == 1).then_some(())
    })
    .await
    .expect("B tracks A's root");
    let status_a = icc_a.status.clone().unwrap();
    assert_eq!(
        status_a.trust_anchors[0].name,
        format!("peer-{}", mesh_ca_issuer::cli::federation::label_of(&b.context))
    );
    assert_eq!(status_a.trust_anchors[0].trust_domains, vec!["b.example"]);
    let mesh_config = status_a.mesh_config.expect("status.meshConfig");
    assert!(mesh_config.snippet.contains("trustDomainAliases") && mesh_config.snippet.contains("b.example"));
    let ready = status_a.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.contains("ISTIO_MULTIROOT_MESH=true"), "{}", ready.message);

    // After: both ways, with openssl and Go.
    let (bundle_a, bundle_b) = (
        a.cacerts().await["root-cert.pem"].clone(),
        b.cacerts().await["root-cert.pem"].clone(),
    );
    assert!(bundle_a.starts_with(root_a.as_bytes()), "own root first, byte for byte");
    assert!(
        openssl_verifies(&wl_a, &bundle_b) && go_verifies(&wl_a, &bundle_b),
        "A's workload under B's bundle"
    );
    assert!(
        openssl_verifies(&wl_b, &bundle_a) && go_verifies(&wl_b, &bundle_a),
        "B's workload under A's bundle"
    );
    assert!(goverify::istiod_loads(&a.cacerts().await).is_ok() && goverify::istiod_loads(&b.cacerts().await).is_ok());
    let writes_federate = (history_a.writes(), history_b.writes());

    // Again: the same result, and no write at all.
    let (code, said, _) = meshca(&a, &b, &args("federate", &a, &b, &["--yes"]));
    assert_eq!(code, 0, "{said}");
    let generation = a.icc().await.metadata.generation;
    a.wait_ready("Synced").await;
    assert_eq!(a.cacerts().await["root-cert.pem"], bundle_a);
    assert_eq!(
        a.icc().await.metadata.generation,
        generation,
        "repeating federate changed nothing"
    );

    let (code, said, unfederate_time) = meshca(&a, &b, &args("unfederate", &a, &b, &[]));
    assert_eq!(code, 0, "{said}");
    eventually(TIMEOUT, || async {
        (a.cacerts().await["root-cert.pem"] == root_a.as_bytes()
            && b.cacerts().await["root-cert.pem"] == root_b.as_bytes())
        .then_some(())
    })
    .await
    .expect("each root-cert.pem back to its own root");
    let (bundle_a, bundle_b) = (
        a.cacerts().await["root-cert.pem"].clone(),
        b.cacerts().await["root-cert.pem"].clone(),
    );
    assert!(!openssl_verifies(&wl_a, &bundle_b) && !go_verifies(&wl_a, &bundle_b));
    assert!(!openssl_verifies(&wl_b, &bundle_a) && !go_verifies(&wl_b, &bundle_a));
    assert!(
        a.ns.api::<ConfigMap>()
            .get_opt(&format!(
                "meshca-peer-{}",
                mesh_ca_issuer::cli::federation::label_of(&b.context)
            ))
            .await
            .unwrap()
            .is_none()
    );
    a.wait_ready("Synced").await;
    b.wait_ready("Synced").await;

    // Every root-cert.pem contains, or is contained in, the one before it.
    for (cluster, history) in [("A", &history_a), ("B", &history_b)] {
        let roots = history.roots();
        for pair in roots.windows(2) {
            assert!(
                contains(&pair[1], &pair[0]) || contains(&pair[0], &pair[1]),
                "{cluster}: a root-cert.pem change that istiod would ignore"
            );
        }
    }
    // `meshca status` shows both clusters, as a table and as JSON.
    let (code, table, _) = meshca(&a, &b, &["status", "--context", &a.context, "--context", &b.context]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains(&format!("CONTEXT {}", a.context)) && table.contains(&format!("CONTEXT {}", b.context)),
        "{table}"
    );
    assert!(
        table.contains("MeshCAIssuer") && table.contains("intermediate") && table.contains("Ready=True"),
        "{table}"
    );
    let (code, json, _) = meshca(
        &a,
        &b,
        &["status", "--context", &a.context, "--context", &b.context, "-o", "json"],
    );
    assert_eq!(code, 0, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(report.as_array().map(Vec::len), Some(2));
    let writes_total = (history_a.writes(), history_b.writes());
    eprintln!(
        "FIGURES cacerts writes per federation: A={} B={}; per unfederation: A={} B={}; meshca federate took {federate_time:?}, unfederate {unfederate_time:?} for two clusters",
        writes_federate.0,
        writes_federate.1,
        writes_total.0 - writes_federate.0,
        writes_total.1 - writes_federate.1
    );
    assert_eq!(writes_federate, (1, 1), "one cacerts write per cluster to federate");
    assert_eq!(
        (writes_total.0 - writes_federate.0, writes_total.1 - writes_federate.1),
        (1, 1),
        "and one to unfederate"
    );
}

#[tokio::test]
async fn one_shared_root_verifies_across_clusters_without_anchors() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start("shared", "istiod").await;
    // The same root Secret content in both clusters, as a platform team would distribute it.
    a.issuer("seed", bootstrapped("mesh-root")).await;
    b.copy_secret(&a, "mesh-root").await;
    for c in [&a, &b] {
        c.issue_intermediate().await;
        c.create_istio_cacerts(vec![]).await;
        c.wait_ready("Synced").await;
    }
    let (wl_a, wl_b) = (a.workload_certificate().await, b.workload_certificate().await);
    let (bundle_a, bundle_b) = (
        a.cacerts().await["root-cert.pem"].clone(),
        b.cacerts().await["root-cert.pem"].clone(),
    );
    assert_eq!(bundle_a, bundle_b, "one root, byte for byte");
    assert_ne!(
        a.cacerts().await["ca-cert.pem"],
        b.cacerts().await["ca-cert.pem"],
        "an intermediate per cluster"
    );
    assert!(openssl_verifies(&wl_a, &bundle_b) && go_verifies(&wl_a, &bundle_b));
    assert!(openssl_verifies(&wl_b, &bundle_a) && go_verifies(&wl_b, &bundle_a));
    assert!(a.icc().await.status.unwrap().trust_anchors.is_empty());
}

#[tokio::test]
async fn meshca_refuses_and_writes_nothing_when_a_check_fails() {
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start("refuse", "istiod").await;
    for c in [&a, &b] {
        c.issue_intermediate().await;
    }
    // A publishes its root; B has no publishRoot.
    a.create_istio_cacerts(vec![]).await;
    b.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        ..Default::default()
    })
    .await;
    a.wait_ready("Synced").await;
    b.wait_ready("Synced").await;
    a.published_root().await;
    let (code, said, _) = meshca(&a, &b, &args("federate", &a, &b, &[]));
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains(&format!("context {}", b.context)) && said.contains("publishRoot"),
        "{said}"
    );
    // B's publishRoot ConfigMap made by hand (B's controller refuses it as NotOwned): the
    // CLI never copies it into A.
    let a_root = String::from_utf8(a.cacerts().await["root-cert.pem"].clone()).unwrap();
    foreign_published(&b, &a_root).await;
    b.patch_icc(serde_json::json!({"spec": {"publishRoot": {"configMapName": PUBLISHED}}}))
        .await;
    b.wait_condition("RootPublished", "NotOwned").await;
    let (code, said, _) = meshca(&a, &b, &args("federate", &a, &b, &["--yes"]));
    assert_eq!(code, 3, "{said}");
    assert!(
        said.contains(&format!("context {}", b.context)) && said.contains("not written by mesh-ca-issuer"),
        "{said}"
    );
    // The same cluster twice.
    let federate = support::meshca::across("federate", &[&a.context, &a.context], &a.ns.name, &[]);
    let (code, said, _) = meshca(&a, &b, &federate);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("same cluster"), "{said}");
    // An unknown context.
    let federate = support::meshca::across("federate", &[&a.context, "nowhere"], &a.ns.name, &[]);
    let (code, said, _) = meshca(&a, &b, &federate);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("nowhere"), "{said}");
    // An unreachable cluster: a context whose API server does not answer.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.kubeconfig");
    let port = support::free_port();
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: dead\n  user:\n    token: x\ncontexts:\n- name: dead\n  context:\n    cluster: dead\n    user: dead\ncurrent-context: dead\n"
        ),
    )
    .unwrap();
    let run = support::meshca::run(
        &[&a.kubeconfig, &b.kubeconfig, &dead],
        &support::meshca::across("federate", &[&a.context, "dead"], &a.ns.name, &[]),
        &[],
    );
    let said = &run.stderr;
    assert_eq!(run.code, 3, "{said}");
    assert!(
        said.contains("context dead is unreachable") && said.contains("nothing was written"),
        "{said}"
    );
    // Nothing was written anywhere.
    assert!(a.icc().await.spec.trust_anchors.is_empty());
    assert!(b.icc().await.spec.trust_anchors.is_empty());
    let peers = a.ns.api::<ConfigMap>().list(&Default::default()).await.unwrap();
    assert!(peers.items.iter().all(|cm| !cm.name_any().starts_with("meshca-peer-")));
}

#[tokio::test]
async fn a_bad_trust_anchor_is_named_and_leaves_cacerts_as_it_was() {
    let _lock = ScopeLock::shared().await;
    let namespace = format!("badanchor-{}", support::unique_suffix());
    let a = Cluster::start(support::kubeconfig(), &namespace, "istiod", "a.example").await;
    a.issue_intermediate().await;
    a.create_istio_cacerts(vec![]).await;
    a.wait_ready("Synced").await;
    let before = a.cacerts().await;
    // A ConfigMap holding a private key instead of a certificate, and one that does not exist.
    let key = a.ns.api::<Secret>().get(SOURCE).await.unwrap().data.unwrap()["tls.key"]
        .0
        .clone();
    let bad = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "oops", "namespace": a.ns.name},
        "data": {"root-cert.pem": String::from_utf8(key.clone()).unwrap()},
    });
    a.ns.api::<ConfigMap>()
        .patch("oops", &PatchParams::apply(support::TEST_MANAGER), &Patch::Apply(&bad))
        .await
        .unwrap();
    let anchor = |name: &str, cm: &str| TrustAnchor {
        name: name.into(),
        trust_domains: vec!["b.example".into()],
        config_map_key_ref: Some(KeyRef {
            name: cm.into(),
            key: "root-cert.pem".into(),
        }),
        secret_key_ref: None,
        spiffe_bundle_endpoint: None,
        fingerprints: vec![],
        allow_intermediate: false,
    };
    // Roots that are not fit to trust, and a pinned anchor whose ConfigMap gained a root.
    let dir = support::openssl::Workdir::new();
    let ca = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ];
    for (name, key) in [
        ("rsa1024", "rsa:1024"),
        ("pinned", "rsa:2048"),
        ("slipped-in", "rsa:2048"),
    ] {
        let mut args = vec![
            "req", "-x509", "-newkey", key, "-nodes", "-keyout", "k.pem", "-out", name, "-days", "30", "-subj",
        ];
        let subject = format!("/CN={name} root");
        args.push(&subject);
        args.extend_from_slice(&ca);
        dir.run(&args);
    }
    let fingerprint = |pem: &str| {
        mesh_ca_issuer::pki::Certificate::parse_pem_bundle(pem.as_bytes(), "root")
            .unwrap()
            .remove(0)
            .fingerprint()
    };
    let own_intermediate = String::from_utf8(before["ca-cert.pem"].clone()).unwrap();
    for (cm, pem) in [
        ("rsa1024", dir.read("rsa1024")),
        ("intermediate", own_intermediate),
        ("tampered", dir.read("pinned") + &dir.read("slipped-in")),
    ] {
        let object = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": cm, "namespace": a.ns.name},
            "data": {"root-cert.pem": pem},
        });
        a.ns.api::<ConfigMap>()
            .patch(cm, &PatchParams::apply(support::TEST_MANAGER), &Patch::Apply(&object))
            .await
            .unwrap();
    }
    let mut tampered = anchor("tampered", "tampered");
    tampered.fingerprints = vec![fingerprint(&dir.read("pinned"))];
    let patch = serde_json::json!({"spec": {"trustAnchors": [
        anchor("pasted-key", "oops"), anchor("gone", "missing"),
        anchor("weak", "rsa1024"), anchor("intermediate", "intermediate"), tampered,
    ]}});
    a.ns.api::<IstioCACerts>()
        .patch("istiod", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let icc = a.wait_ready("InvalidTrustAnchor").await;
    let message = &icc
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("\"pasted-key\"") && message.contains("PRIVATE KEY"),
        "{message}"
    );
    assert!(
        message.contains("\"gone\"") && message.contains("does not exist"),
        "{message}"
    );
    for (anchor, why) in [
        ("weak", "RSA key has 1024 bits"),
        ("intermediate", "not self-signed"),
        ("tampered", "certificates that are not pinned"),
    ] {
        assert!(
            message.contains(&format!("\"{anchor}\"")) && message.contains(why),
            "{anchor}: {message}"
        );
    }
    assert!(
        !message.contains(&String::from_utf8_lossy(&key[40..80]).to_string()),
        "no key material in the condition"
    );
    assert_eq!(a.cacerts().await, before, "cacerts stays as it was");
    // A ConfigMap and a Secret with the same name are rejected by the schema as duplicates.
    let duplicate = serde_json::json!({"spec": {"trustAnchors": [anchor("x", "a"), anchor("x", "b")]}});
    let err =
        a.ns.api::<IstioCACerts>()
            .patch("istiod", &PatchParams::default(), &Patch::Merge(&duplicate))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("Duplicate"), "{err}");
}

#[test]
fn meshca_explains_itself_and_completes_in_shells() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_meshca")).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, help) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        help.contains("Examples:")
            && help.contains("Exit codes of `meshca check`:")
            && help.contains("Exit codes of the other commands:")
            && help.contains("meshca federate"),
        "{help}"
    );
    let (code, version) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let (code, script) = run(&["completion", "bash"]);
    assert_eq!(code, Some(0));
    assert!(
        script.contains("federate") && script.contains("--dry-run"),
        "a bash completion script"
    );
    // One cluster is no federation: a usage error, before any kubeconfig is read.
    let (code, said) = run(&["federate", "--context", "a"]);
    assert_eq!(code, Some(2), "{said}");
    let (code, _) = run(&["frobnicate"]);
    assert_eq!(code, Some(2));
}

#[tokio::test]
async fn the_published_root_is_byte_stable_and_never_takes_over_a_foreign_config_map() {
    let _lock = ScopeLock::shared().await;
    let namespace = format!("publish-{}", support::unique_suffix());
    let a = Cluster::start(support::kubeconfig(), &namespace, "istiod", "a.example").await;
    a.issue_intermediate().await;
    // Someone else's ConfigMap under the published name: left alone, and said so.
    foreign_published(&a, "not ours").await;
    a.create_istio_cacerts(vec![]).await;
    let published_condition = |icc: &IstioCACerts| {
        icc.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "RootPublished").cloned())
    };
    let icc = a.wait_ready("Synced").await;
    let refused = published_condition(&icc).expect("RootPublished");
    assert_eq!(
        (refused.status.as_str(), refused.reason.as_str()),
        ("False", "NotOwned"),
        "{}",
        refused.message
    );
    let kept = a.ns.api::<ConfigMap>().get(PUBLISHED).await.unwrap();
    assert_eq!(kept.data.unwrap()["root-cert.pem"], "not ours");

    // Published under another name: the own root, PEM only, labelled with the trust domain.
    let patch = serde_json::json!({"spec": {"publishRoot": {"configMapName": "mine"}}});
    a.ns.api::<IstioCACerts>()
        .patch("istiod", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let icc = a.wait_ready("Synced").await;
    assert_eq!(published_condition(&icc).unwrap().status, "True");
    let mine = a.ns.api::<ConfigMap>().get("mine").await.unwrap();
    let root = a.cacerts().await["root-cert.pem"].clone();
    assert_eq!(mine.data.as_ref().unwrap()["root-cert.pem"].as_bytes(), root.as_slice());
    assert_eq!(mine.labels()["meshca.io/trust-domain"], "a.example");

    // A spec change that does not touch the root (an anchor from a Secret key): the controller
    // looks again (observedGeneration) and leaves the published bytes and object alone.
    let (peer, _) = mesh_ca_issuer::pki::sign::self_signed_root(
        &RootBootstrap::default(),
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
    )
    .unwrap();
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "peer-root", "namespace": a.ns.name},
        "stringData": {"ca.crt": peer.to_pem()},
    });
    a.ns.api::<Secret>()
        .patch(
            "peer-root",
            &PatchParams::apply(support::TEST_MANAGER),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    let patch = serde_json::json!({"spec": {"trustAnchors": [{
        "name": "peer", "trustDomains": ["peer.example"],
        "secretKeyRef": {"name": "peer-root", "key": "ca.crt"},
    }]}});
    a.ns.api::<IstioCACerts>()
        .patch("istiod", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let icc = a.wait_ready("Synced").await;
    assert_eq!(
        icc.status.unwrap().trust_anchors[0].name,
        "peer",
        "the Secret anchor is in root-cert.pem"
    );
    let again = a.ns.api::<ConfigMap>().get("mine").await.unwrap();
    assert_eq!(
        again.resource_version(),
        mine.resource_version(),
        "the published root was not rewritten"
    );
    assert_eq!(
        again.data.unwrap()["root-cert.pem"].as_bytes(),
        root.as_slice(),
        "own root only, never the anchors"
    );
}
