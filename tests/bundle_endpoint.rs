//! SPIFFE bundle endpoints (issue 24) on real control planes: what a peer's outage and our own
//! restart leave trusted, how hostile endpoints are refused, and that an independent SPIFFE
//! implementation (go-spiffe's federation client) follows our endpoint. The rotation across
//! federated clusters is in tests/root_rotation.rs.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec, bundle_endpoint_spiffe_id};
use mesh_ca_issuer::pki::{Certificate, SigningKey};
use mesh_ca_issuer::spiffe_bundle;
use support::bundle_peer::{BundlePeer, Ca};
use support::issuer::a_year_at_most;
use support::mesh::{Mesh, SOURCE, TwoClusters, endpoint_anchor, last_fetched, publishing, serving_bundle};
use support::objects::condition;
use support::spiffe::go_spiffe_fetch;
use support::{ControllerProcess, eventually};

const TIMEOUT: Duration = Duration::from_secs(40);
const HINT: Duration = Duration::from_secs(2);

/// The anchor source's status: (sequence, last fetched, error).
fn source(icc: &IstioCACerts, anchor: &str) -> Option<(Option<u64>, Option<String>, Option<String>)> {
    let s = icc
        .status
        .as_ref()?
        .trust_anchors
        .iter()
        .find(|a| a.name == anchor)?
        .source
        .clone()?;
    Some((s.sequence, s.last_fetched, s.error))
}

fn trusted(icc: &IstioCACerts) -> Vec<String> {
    icc.status
        .as_ref()
        .map(|s| {
            s.trust_anchors
                .iter()
                .map(|a| a.certificate.fingerprint_sha256.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn holds(data: &std::collections::BTreeMap<String, Vec<u8>>, root: &Certificate) -> bool {
    Certificate::parse_pem_bundle(&data["root-cert.pem"], "roots")
        .unwrap()
        .contains(root)
}

async fn own_root(m: &Mesh, name: &str) {
    m.local_issuer(name, &format!("{name}-root"), "87600h", a_year_at_most())
        .await;
    m.issue(name).await;
}

/// Issue 24, proof 3, and proof 6 (interoperability): B serves its bundle, A follows it.
/// go-spiffe's federation client fetches B's bundle with the `https_spiffe` profile. Then B's
/// endpoint goes away for more than three refresh periods, and A's controller restarts
/// meanwhile: A never rewrites `cacerts`, B's root stays in `root-cert.pem` throughout, and
/// A's status says how stale the bundle is and why. When B is back, A fetches again.
#[tokio::test]
async fn a_peers_outage_and_our_restart_keep_its_root_trusted_and_the_status_says_how_stale() {
    let TwoClusters {
        mut a,
        mut b,
        lock: _lock,
    } = TwoClusters::start_waiting("endpoint-outage", "mesh", TIMEOUT).await;
    let namespace = a.ns.name.clone();
    own_root(&a, "own").await;
    own_root(&b, "own").await;
    let b_root = support::objects::root_of(&b.ns.api(), "own").await;
    b.create_icc(IstioCACertsSpec {
        bundle_endpoint: serving_bundle("2s"),
        ..publishing("b.example", None)
    })
    .await;
    let b_icc = b
        .wait_icc("serving", |icc| {
            condition(icc, "BundleEndpointReady").is_some_and(|c| c.status == "True")
        })
        .await;
    let served = b_icc.status.unwrap().bundle_endpoint.unwrap();
    assert!(
        served.sequence > 1_700_000_000,
        "a sequence from the time of the change: {}",
        served.sequence
    );
    assert_eq!(served.served_roots, vec![b_root.fingerprint()]);
    let id = bundle_endpoint_spiffe_id("b.example");
    assert_eq!(served.endpoint_spiffe_id.as_deref(), Some(id.as_str()));

    // go-spiffe, as a SPIRE-style peer would, authenticated by B's root. Every replica serves
    // what the status says within a second of it: until then the handshake is refused.
    let port = b.controller.bundle_port;
    let url = format!("https://127.0.0.1:{port}/b.example");
    let last_refusal = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let fetched = eventually(Duration::from_secs(10), || {
        let (url, id, pem, refusal) = (url.clone(), id.clone(), b_root.to_pem(), last_refusal.clone());
        async move {
            match go_spiffe_fetch("b.example", &url, &id, &pem).await {
                Ok(lines) => Some(lines),
                Err(e) => {
                    *refusal.lock().unwrap() = e;
                    None
                }
            }
        }
    })
    .await
    .unwrap_or_else(|| panic!("go-spiffe refuses our endpoint: {}", last_refusal.lock().unwrap()));
    assert_eq!(
        fetched,
        vec![
            format!("x509 {}", b_root.fingerprint().to_lowercase()),
            format!("sequence {}", served.sequence),
            "refresh_hint 2".to_string()
        ]
    );
    // ... and refuses it for another endpoint ID.
    let wrong = go_spiffe_fetch("b.example", &url, "spiffe://b.example/someone-else", &b_root.to_pem()).await;
    assert!(wrong.is_err(), "{wrong:?}");

    // `meshca federate --bundle-endpoint`: A follows B's endpoint, bootstrapped and pinned by
    // a checked copy of B's roots; B, which A serves nothing for, copies A's root.
    a.create_icc(publishing("a.example", None)).await;
    a.wait_condition("Ready", "Synced").await;
    let peer = format!("{}={url}", b.context);
    let federate = support::meshca::across(
        "federate",
        &[&a.context, &b.context],
        &namespace,
        &["--name", "mesh", "--yes", "--bundle-endpoint", &peer],
    );
    let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], &federate, &[]);
    assert_eq!(run.code, 0, "{}", run.said());
    let anchor = mesh_ca_issuer::cli::federation::anchor_name(&b.context);
    let synced = a
        .wait_icc("B's bundle fetched", |icc| {
            condition(icc, "Ready").is_some_and(|c| c.reason == "Synced") && last_fetched(icc, &anchor).is_some()
        })
        .await;
    let written = &synced.spec.trust_anchors[0];
    assert_eq!(
        written.spiffe_bundle_endpoint.as_ref().map(|e| e.url.as_str()),
        Some(url.as_str())
    );
    assert_eq!(
        written.fingerprints,
        vec![b_root.fingerprint()],
        "the bootstrap is pinned"
    );
    assert_eq!(trusted(&synced), vec![b_root.fingerprint()]);
    let history = a.record_cacerts();

    // B's endpoint goes down.
    b.controller.child.kill().unwrap();
    b.controller.child.wait().unwrap();
    let down = Timestamp::now();
    a.wait_icc("the failed fetch in the status", |icc| {
        source(icc, &anchor).is_some_and(|(_, _, e)| e.is_some_and(|e| e.contains("fetching")))
    })
    .await;
    // Our controller restarts during the outage.
    let logs = tempfile::tempdir().unwrap();
    drop(std::mem::replace(
        &mut a.controller,
        ControllerProcess::start_with_kubeconfig(&a.kubeconfig, &["--namespace", &namespace], logs.path()),
    ));
    assert!(a.controller.wait_ready(TIMEOUT).await, "{}", a.controller.log());
    // Three refresh periods without B, watched the whole time: B's root stays trusted.
    let stale = eventually(TIMEOUT, || async {
        let icc = a.icc().await;
        assert_eq!(trusted(&icc), vec![b_root.fingerprint()], "B's root stays trusted");
        assert!(holds(&a.cacerts().await, &b_root), "B's root stays in root-cert.pem");
        let (_, last, error) = source(&icc, &anchor)?;
        let last: Timestamp = last?.parse().ok()?;
        (Timestamp::now().duration_since(last).unsigned_abs() > HINT * 3
            && Timestamp::now().duration_since(down).unsigned_abs() > HINT * 3)
            .then_some((last, error?))
    })
    .await;
    let Some(stale) = stale else {
        panic!(
            "the status shows the stale bundle: {:?}\n{}",
            source(&a.icc().await, &anchor),
            a.controller.log()
        );
    };
    eprintln!("stale since {}: {}", stale.0, stale.1);
    assert!(stale.1.contains(&url), "{}", stale.1);

    // B is back on the same port: A fetches again, the error clears.
    let logs_b = tempfile::tempdir().unwrap();
    b.controller = ControllerProcess::start_with_kubeconfig(
        &b.kubeconfig,
        &[
            "--namespace",
            &namespace,
            &format!("--bundle-endpoint-addr=127.0.0.1:{port}"),
        ],
        logs_b.path(),
    );
    assert!(b.controller.wait_ready(TIMEOUT).await, "{}", b.controller.log());
    a.wait_icc("fetched again", |icc| {
        source(icc, &anchor).is_some_and(|(seq, last, error)| {
            error.is_none()
                && seq == Some(served.sequence)
                && last
                    .and_then(|l| l.parse::<Timestamp>().ok())
                    .is_some_and(|l| l > stale.0)
        })
    })
    .await;
    history.stop();
    assert_eq!(history.writes(), 0, "cacerts at A was never rewritten");
}

/// Issue 24, proof 4: each hostile endpoint is refused with a named reason, the last good
/// bundle (sequence 5) stays trusted, and `cacerts` is not rewritten. The peer is the test's
/// own endpoint, since a real controller cannot be made to misbehave.
#[tokio::test]
async fn hostile_endpoints_are_refused_by_name_and_the_last_good_bundle_is_kept() {
    let (_lock, client, ns) = support::namespaced_test("endpoint-hostile").await;
    let logs = tempfile::tempdir().unwrap();
    let mut controller = ControllerProcess::start(&["--namespace", &ns.name], logs.path());
    assert!(controller.wait_ready(TIMEOUT).await, "{}", controller.log());
    let mut m = Mesh::new(client, ns, "mesh");
    m.timeout = TIMEOUT;
    own_root(&m, "own").await;

    let id = bundle_endpoint_spiffe_id("peer.example");
    let (peer, other) = (Ca::new(), Ca::new());
    let good = |sequence| spiffe_bundle::encode(std::slice::from_ref(&peer.root), sequence, HINT).unwrap();
    let endpoint = BundlePeer::start(&peer.svid(&id), &peer.root, good(5)).await;
    m.bootstrap("peer-bootstrap", &[&peer.root]).await;
    m.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        trust_domain: "mine.example".into(),
        trust_anchors: vec![endpoint_anchor("peer", "peer.example", endpoint.port, "peer-bootstrap")],
        ..Default::default()
    })
    .await;
    m.wait_icc("the good bundle", |icc| {
        condition(icc, "Ready").is_some_and(|c| c.reason == "Synced")
            && source(icc, "peer").is_some_and(|(seq, _, error)| seq == Some(5) && error.is_none())
    })
    .await;
    let before = m.cacerts_secret().await.resource_version();

    // What a hostile endpoint would like us to trust instead: another root, a higher sequence.
    let tempting = spiffe_bundle::encode(std::slice::from_ref(&other.root), 9, HINT).unwrap();
    let leaf = peer.svid("spiffe://peer.example/workload");
    // (case, certificate presented (leaf, issuer), body, the reason named)
    type Case<'a> = (&'a str, (Certificate, SigningKey), Certificate, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a lower sequence",
            peer.svid(&id),
            peer.root.clone(),
            spiffe_bundle::encode(std::slice::from_ref(&other.root), 4, HINT)
                .unwrap()
                .into_bytes(),
            "lower than 5",
        ),
        (
            "a TLS certificate with the wrong SPIFFE ID",
            peer.svid("spiffe://peer.example/not-the-endpoint"),
            peer.root.clone(),
            tempting.clone().into_bytes(),
            "not exactly the endpointSPIFFEID",
        ),
        (
            "a TLS certificate that does not chain to the last bundle",
            other.svid(&id),
            other.root.clone(),
            tempting.clone().into_bytes(),
            "does not chain to the last bundle",
        ),
        (
            "a 2 MiB body",
            peer.svid(&id),
            peer.root.clone(),
            vec![b' '; 2 * 1024 * 1024],
            "over 1048576 bytes",
        ),
        (
            "a body that is not JSON",
            peer.svid(&id),
            peer.root.clone(),
            b"<html>maintenance</html>".to_vec(),
            "not JSON",
        ),
        (
            "a leaf instead of a CA",
            peer.svid(&id),
            peer.root.clone(),
            spiffe_bundle::encode(std::slice::from_ref(&leaf.0), 10, HINT)
                .unwrap()
                .into_bytes(),
            "not a CA",
        ),
    ];
    for (case, presented, issuer, body, reason) in cases {
        endpoint.present(&presented, &issuer);
        endpoint.serve(body);
        let icc = m
            .wait_icc(case, |icc| {
                source(icc, "peer").is_some_and(|(_, _, e)| e.is_some_and(|e| e.contains(reason)))
            })
            .await;
        let (sequence, _, error) = source(&icc, "peer").unwrap();
        eprintln!("{case}: {}", error.unwrap_or_default());
        assert_eq!(sequence, Some(5), "{case}: the last good bundle is kept");
        assert_eq!(trusted(&icc), vec![peer.root.fingerprint()], "{case}");
        assert_eq!(
            m.cacerts_secret().await.resource_version(),
            before,
            "{case}: cacerts untouched"
        );
    }
    // An honest bundle with a higher sequence is taken again.
    endpoint.present(&peer.svid(&id), &peer.root);
    endpoint.serve(good(11));
    m.wait_icc("the honest bundle again", |icc| {
        source(icc, "peer").is_some_and(|(seq, _, error)| seq == Some(11) && error.is_none())
    })
    .await;
    drop(controller);
}

/// Issue 24, proof 7: with `spec.clusterTrustBundle`, this cluster's own root and each trust
/// anchor appear as ClusterTrustBundles (certificates.k8s.io/v1) with signer
/// `meshca.io/<trustDomain>` and their role; an anchor removed takes its bundle along, and
/// deleting the IstioCACerts removes the rest (they are cluster-scoped: nothing owns them).
#[tokio::test]
async fn roots_and_anchors_appear_as_cluster_trust_bundles_and_go_with_their_istiocacerts() {
    use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
    use kube::api::{Api, DeleteParams, ListParams};
    use mesh_ca_issuer::api::istio_cacerts::ClusterTrustBundles;

    let (_lock, client, ns) = support::namespaced_test("ctb").await;
    let logs = tempfile::tempdir().unwrap();
    let mut controller = ControllerProcess::start(&["--namespace", &ns.name], logs.path());
    assert!(controller.wait_ready(TIMEOUT).await, "{}", controller.log());
    let mut m = Mesh::new(client.clone(), ns, "mesh");
    m.timeout = TIMEOUT;
    own_root(&m, "own").await;
    let own = support::objects::root_of(&m.ns.api(), "own").await;
    let peer = Ca::new();
    m.bootstrap("peer-root", &[&peer.root]).await;
    let trust_domain = format!("{}.example", m.ns.name);
    m.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        trust_domain: trust_domain.clone(),
        cluster_trust_bundle: Some(ClusterTrustBundles { enabled: true }),
        trust_anchors: vec![support::mesh::config_map_anchor("peer", "peer.example", "peer-root")],
        ..Default::default()
    })
    .await;
    let icc = m
        .wait_icc("published", |icc| {
            condition(icc, "ClusterTrustBundlesPublished").is_some_and(|c| c.status == "True")
        })
        .await;
    let uid = icc.uid().unwrap();
    let api: Api<ClusterTrustBundle> = Api::all(client.clone());
    let ours = || {
        let api = api.clone();
        let selector = format!("meshca.io/istiocacerts-uid={uid}");
        async move {
            let mut items = api.list(&ListParams::default().labels(&selector)).await.unwrap().items;
            items.sort_by_key(|c| c.name_any());
            items
        }
    };
    let bundles = ours().await;
    let signer = format!("meshca.io/{trust_domain}");
    let summary: Vec<(String, Option<String>, String, String)> = bundles
        .iter()
        .map(|c| {
            (
                c.name_any(),
                c.spec.signer_name.clone(),
                c.labels()["meshca.io/trust-bundle-role"].clone(),
                c.spec.trust_bundle.clone(),
            )
        })
        .collect();
    let prefix = format!("meshca.io:{trust_domain}:{}.mesh", m.ns.name);
    assert_eq!(
        summary,
        vec![
            (
                format!("{prefix}.anchor.peer"),
                Some(signer.clone()),
                "anchor".to_string(),
                peer.root.to_pem()
            ),
            (
                format!("{prefix}.own"),
                Some(signer.clone()),
                "own".to_string(),
                own.to_pem()
            ),
        ]
    );

    // The anchor goes: its bundle too.
    m.patch_icc(serde_json::json!({"spec": {"trustAnchors": []}})).await;
    let left = eventually(TIMEOUT, || async {
        let left = ours().await;
        (left.len() == 1).then_some(left)
    })
    .await
    .expect("the anchor's bundle deleted");
    assert_eq!(left[0].name_any(), format!("{prefix}.own"));

    // The IstioCACerts goes: the rest too.
    m.ns.api::<IstioCACerts>()
        .delete("mesh", &DeleteParams::default())
        .await
        .unwrap();
    // Swept within 15s (TRUST_BUNDLE_SWEEP_INTERVAL).
    let gone = eventually(TIMEOUT, || async { ours().await.is_empty().then_some(()) }).await;
    assert!(
        gone.is_some(),
        "every bundle of the deleted IstioCACerts deleted: {:?}\n{}",
        ours()
            .await
            .iter()
            .map(|c| (c.name_any(), c.labels().clone(), c.annotations().clone()))
            .collect::<Vec<_>>(),
        controller.log()
    );
    drop(controller);
}

/// The `https_web` profile end to end: B serves its bundle with a Web PKI certificate
/// (`tlsSecretName`: a private CA, IP 127.0.0.1), A follows it with that CA as the anchor's
/// `caBundle`. Pointed at another CA, A refuses the endpoint by name and keeps B's root.
#[tokio::test]
async fn an_https_web_endpoint_is_followed_with_its_ca_bundle_and_another_ca_is_refused() {
    use mesh_ca_issuer::api::istio_cacerts::{BundleEndpointProfile, SpiffeBundleEndpoint, TrustAnchor};
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start_waiting("endpoint-web", "mesh", TIMEOUT).await;
    own_root(&a, "own").await;
    own_root(&b, "own").await;
    let b_root = support::objects::root_of(&b.ns.api(), "own").await;
    let (ca_pem, _) = b.serve_bundle_with_web_pki("b.example", "2s").await;
    let anchor = |ca: &str| TrustAnchor {
        name: "peer-b".into(),
        trust_domains: vec!["b.example".into()],
        config_map_key_ref: None,
        secret_key_ref: None,
        spiffe_bundle_endpoint: Some(SpiffeBundleEndpoint {
            url: format!("https://127.0.0.1:{}/b.example", b.controller.bundle_port),
            profile: BundleEndpointProfile::HttpsWeb,
            endpoint_spiffe_id: None,
            bootstrap_bundle: None,
            ca_bundle: Some(ca.to_string()),
        }),
        fingerprints: vec![],
        allow_intermediate: false,
    };
    a.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        trust_domain: "a.example".into(),
        trust_anchors: vec![anchor(&ca_pem)],
        ..Default::default()
    })
    .await;
    let synced = a
        .wait_icc("B's bundle fetched over Web PKI", |icc| {
            condition(icc, "Ready").is_some_and(|c| c.reason == "Synced") && last_fetched(icc, "peer-b").is_some()
        })
        .await;
    assert_eq!(trusted(&synced), vec![b_root.fingerprint()]);
    assert!(holds(&a.cacerts().await, &b_root));
    let before = a.cacerts_secret().await.resource_version();

    // Another CA: the endpoint no longer authenticates; B's root stays.
    let (other_ca, _, _) = support::bundle_peer::web_pki_for_loopback();
    a.patch_icc(serde_json::json!({"spec": {"trustAnchors": [anchor(&other_ca)]}}))
        .await;
    let refused = a
        .wait_icc("the endpoint refused", |icc| {
            source(icc, "peer-b").is_some_and(|(_, _, e)| e.is_some_and(|e| e.contains("invalid peer certificate")))
        })
        .await;
    eprintln!("{:?}", source(&refused, "peer-b"));
    assert_eq!(trusted(&refused), vec![b_root.fingerprint()], "B's root stays");
    assert_eq!(a.cacerts_secret().await.resource_version(), before, "cacerts untouched");
}
