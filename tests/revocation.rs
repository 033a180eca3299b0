//! Revocation on a real API server (`spec.revocation`, istiod's `ca-crl.pem`), with the local CA
//! backend. Every `cacerts` written is judged independently: Go with istiod's rule (a CRL
//! signed by every CA of `cert-chain.pem`), `openssl crl -verify` of each CRL against its CA,
//! and `openssl verify -crl_check_all` of a workload certificate, as Envoy checks a peer.
//!
//! cert-manager is the stand-in of `support::mesh` (it writes the source Secret and the
//! Certificate's status); what these tests prove is what our controller writes and asks for.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use mesh_ca_issuer::api::cert_manager::Certificate as CertManagerCertificate;
use mesh_ca_issuer::api::issuer::MeshCAIssuer;
use mesh_ca_issuer::api::istio_cacerts::{CrlWindow, IstioCACerts, IstioCACertsSpec, Revocation};
use mesh_ca_issuer::pki::Certificate;
use mesh_ca_issuer::pki::crl::Crl;
use support::mesh::{Cluster, SOURCE, workload};
use support::objects::condition;
use support::openssl::{Workdir, verify_with_crls};
use support::{ScopeLock, cert_manager as cm, eventually, goverify, issuer::a_year_at_most};

const TIMEOUT: Duration = Duration::from_secs(60);

fn revoking(validity: &str, refresh_before: &str) -> IstioCACertsSpec {
    IstioCACertsSpec {
        revocation: Some(Revocation {
            enabled: true,
            crl_validity: validity.into(),
            refresh_before: Some(refresh_before.into()),
        }),
        ..support::mesh::publishing("cluster.local", None)
    }
}

fn crls(data: &BTreeMap<String, Vec<u8>>) -> Vec<Crl> {
    data.get("ca-crl.pem")
        .map(|pem| Crl::parse_pem_bundle(pem, "ca-crl.pem").expect("ca-crl.pem parses"))
        .unwrap_or_default()
}

fn chain(data: &BTreeMap<String, Vec<u8>>) -> Vec<Certificate> {
    Certificate::parse_pem_bundle(&data["cert-chain.pem"], "cert-chain.pem").expect("chain")
}

/// The intermediates of a chain (all but its last, the root), as PEM.
fn untrusted(data: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let chain = chain(data);
    chain[..chain.len() - 1]
        .iter()
        .map(Certificate::to_pem)
        .collect::<String>()
        .into_bytes()
}

/// openssl's verdict on `leaf` with every CRL checked, under the chain, root and CRLs of the
/// `cacerts` `data`: what a peer of that mesh checks.
fn verify_under(data: &BTreeMap<String, Vec<u8>>, leaf: &str) -> (bool, String) {
    verify_with_crls(leaf, &untrusted(data), &data["root-cert.pem"], &data["ca-crl.pem"])
}

/// A workload of a peer (`leaf`, presented with the chain of the peer's `cacerts` `theirs`)
/// verified under `ours`: our roots and our CRLs alone, every CRL checked, as a sidecar here
/// checks it.
fn verify_at(ours: &BTreeMap<String, Vec<u8>>, leaf: &str, theirs: &BTreeMap<String, Vec<u8>>) -> (bool, String) {
    verify_with_crls(leaf, &untrusted(theirs), &ours["root-cert.pem"], &ours["ca-crl.pem"])
}

/// Every judge on the `cacerts` just read: [`judge_signatures`], and a workload certificate
/// under it verified now with every CRL checked (which also refuses an expired CRL).
fn judge(data: &BTreeMap<String, Vec<u8>>) {
    judge_signatures(data);
    let leaf = workload(data, "spiffe://cluster.local/ns/default/sa/x");
    let (ok, said) = verify_under(data, &leaf);
    assert!(ok, "a workload certificate with every CRL checked: {said}");
}

/// The judges that hold for any version, whenever it was written: istiod's rule in Go and
/// `openssl crl -verify` of each CRL with its CA.
fn judge_signatures(data: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(goverify::istiod_loads(data), Ok(()), "istiod's rule");
    let chain = chain(data);
    let crls = crls(data);
    assert!(crls.len() >= chain.len(), "one CRL per CA of cert-chain.pem: {crls:?}");
    for (ca, crl) in chain.iter().zip(&crls) {
        let dir = Workdir::new();
        dir.write("crl.pem", crl.to_pem()).write("ca.pem", ca.to_pem());
        let (ok, said) = dir.try_run(&["crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"]);
        assert!(ok && said.contains("verify OK"), "{}: {said}", ca.subject());
    }
    // After them, only CRLs of intermediates this cacerts replaced: signed by no CA of the
    // chain (the renewal test checks each against the intermediate it belongs to).
    for retired in &crls[chain.len()..] {
        assert!(!chain.iter().any(|ca| retired.is_signed_by(ca)), "{retired:?}");
    }
}

async fn one_cluster(prefix: &str) -> (Cluster, ScopeLock) {
    let lock = ScopeLock::shared().await;
    let namespace = format!("{prefix}-{}", support::unique_suffix());
    let mut cluster = Cluster::start(support::kubeconfig(), &namespace, "mesh", "cluster.local").await;
    cluster.timeout = TIMEOUT;
    cluster
        .local_issuer("root", "mesh-root", "87600h", a_year_at_most())
        .await;
    (cluster, lock)
}

async fn wait_crls(cluster: &Cluster, reason: &str) -> IstioCACerts {
    cluster.wait_condition("CRLsCurrent", reason).await
}

/// Two control planes whose issuers `root` share one local root (A's, copied to B), each with
/// an intermediate issued into the source Secret and its Certificate recorded (so that a
/// revoked one can ask cert-manager for another).
async fn sharing_one_root(prefix: &str) -> support::mesh::TwoClusters {
    let clusters = support::mesh::TwoClusters::start_waiting(prefix, "mesh", TIMEOUT).await;
    let (a, b) = (&clusters.a, &clusters.b);
    a.local_issuer("root", "mesh-root", "87600h", a_year_at_most()).await;
    b.copy_secret(a, "mesh-root").await;
    b.local_issuer("root", "mesh-root", "87600h", a_year_at_most()).await;
    for c in [a, b] {
        let cr = c.issue("root").await;
        cm::record_certificate(&c.client, &c.ns.name, SOURCE, SOURCE, &cr, None).await;
    }
    clusters
}

/// `cluster`'s `cacerts` once its `ca-crl.pem` holds a CRL that `ca` signed.
async fn holding_crl_of(cluster: &Cluster, ca: &Certificate) -> BTreeMap<String, Vec<u8>> {
    eventually(TIMEOUT, || async {
        let data = cluster.cacerts().await;
        crls(&data).iter().any(|c| c.is_signed_by(ca)).then_some(data)
    })
    .await
    .unwrap_or_else(|| panic!("a CRL of {} in ca-crl.pem", ca.subject()))
}

/// Lists `serial` (keyCompromise) in the `spec.revoked` of `cluster`'s issuer `root`, as
/// `meshca revoke` does.
async fn revoke_at(cluster: &Cluster, serial: &str) {
    let patch = serde_json::json!({"spec": {"revoked": [{"serialNumber": serial, "reason": "keyCompromise"}]}});
    cluster
        .ns
        .api::<MeshCAIssuer>()
        .patch("root", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .expect("revoke at the issuer");
}

/// `cluster`'s `cacerts` once the CRL `ca` signed in its `ca-crl.pem` lists exactly `serial`.
async fn once_listed(cluster: &Cluster, ca: &Certificate, serial: &str) -> BTreeMap<String, Vec<u8>> {
    let serial = serial.to_ascii_lowercase();
    eventually(TIMEOUT, || async {
        let data = cluster.cacerts().await;
        crls(&data)
            .iter()
            .any(|c| c.is_signed_by(ca) && c.revoked_serials() == vec![serial.clone()])
            .then_some(data)
    })
    .await
    .unwrap_or_else(|| panic!("the CRL of {} listing {serial}", ca.subject()))
}

/// Proofs 1 and 3: every write carries a CRL for the intermediate and the root that all judges
/// accept; over several cycles each CRL is replaced before it lapses; with the root's key out
/// of reach the CRL in place stays while the condition escalates, and once it has lapsed
/// `ca-crl.pem` is no longer written (never an expired one); back in reach, it is current again.
#[tokio::test]
async fn every_write_carries_fresh_crls_and_one_that_cannot_be_refreshed_is_kept_until_it_lapses() {
    let (cluster, _lock) = one_cluster("revocation-fresh").await;
    cluster.issue("root").await;
    let history = cluster.record_cacerts();
    let started = Instant::now();
    cluster.create_icc(revoking("8s", "4s")).await;
    wait_crls(&cluster, "Current").await;
    let first_write = started.elapsed();

    // Several refresh cycles: the root's CRL number changes each time.
    let cycles = eventually(TIMEOUT, || async {
        let numbers: std::collections::BTreeSet<u64> = history
            .versions()
            .iter()
            .filter_map(|(_, _, d)| crls(d).last().and_then(Crl::number))
            .collect();
        (numbers.len() >= 4).then_some(numbers.len())
    })
    .await
    .expect("the root's CRL is refreshed over several cycles");
    judge(&cluster.cacerts().await);
    let versions = history.versions();
    for (_, _, data) in &versions {
        judge_signatures(data);
    }
    // Each CRL was replaced before it lapsed: the next write's thisUpdate (when it was signed,
    // just before the write) is before the previous nextUpdate, for every CA.
    for pair in versions.windows(2) {
        let (before, after) = (crls(&pair[0].2), crls(&pair[1].2));
        for (b, a) in before.iter().zip(&after) {
            assert!(
                a.this_update() <= b.next_update().expect("nextUpdate"),
                "a CRL lapsed before its successor: {b:?} then {a:?}"
            );
        }
        let gap = pair[1].1.duration_since(pair[0].1);
        assert!(
            gap < Duration::from_secs(8),
            "writes {gap:?} apart, longer than crlValidity"
        );
    }
    let icc = cluster.icc().await;
    let status = icc.status.expect("status");
    assert_eq!(status.crl.len(), 2, "{:#?}", status.crl);
    eprintln!(
        "first write with CRLs {first_write:?} after the IstioCACerts was created; {cycles} root CRL numbers in {:?}; CRL sizes {:?} bytes",
        started.elapsed(),
        crls(&versions[versions.len() - 1].2)
            .iter()
            .map(|c| c.der().len())
            .collect::<Vec<_>>()
    );

    // Longer-lived CRLs, so each stage can be seen; then the root's key out of reach.
    cluster
        .patch_icc(serde_json::json!({"spec": {"revocation": {"crlValidity": "40s", "refreshBefore": "30s"}}}))
        .await;
    let fresh = eventually(TIMEOUT, || async {
        let data = cluster.cacerts().await;
        let root_crl = crls(&data).pop()?;
        let life = root_crl.next_update()?.duration_since(root_crl.this_update());
        (life.as_secs() == 40).then_some(root_crl)
    })
    .await
    .expect("a CRL signed for 40s");
    let issuers: kube::Api<MeshCAIssuer> = cluster.ns.api();
    issuers
        .patch(
            "root",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"localCA": {"secretName": "no-such-root", "bootstrap": null}}})),
        )
        .await
        .expect("point the issuer elsewhere");
    let lapse = fresh.next_update().expect("nextUpdate");
    for reason in ["CRLRefreshDue", "CRLExpiring"] {
        let icc = wait_crls(&cluster, reason).await;
        let message = condition(&icc, "CRLsCurrent").expect("condition").message.clone();
        assert!(message.contains("no-such-root"), "{message}");
        let data = cluster.cacerts().await;
        assert_eq!(
            crls(&data).pop().as_ref(),
            Some(&fresh),
            "the root's CRL in place is kept"
        );
        judge(&data);
    }
    let icc = wait_crls(&cluster, "CRLUnavailable").await;
    assert!(Timestamp::now() >= lapse, "not removed before it lapsed");
    let data = cluster.cacerts().await;
    assert!(!data.contains_key("ca-crl.pem"), "a lapsed CRL is not written");
    assert_eq!(goverify::istiod_loads(&data), Ok(()));
    assert_eq!(
        condition(&icc, "Ready").map(|c| c.reason.as_str()),
        Some("Synced"),
        "cacerts stays Ready without CRLs"
    );
    // No write ever held an expired CRL.
    for (_, _, data) in history.versions() {
        if data.contains_key("ca-crl.pem") {
            assert_eq!(goverify::istiod_loads(&data), Ok(()));
        }
    }

    issuers
        .patch(
            "root",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"localCA": {"secretName": "mesh-root"}}})),
        )
        .await
        .expect("back to the root");
    wait_crls(&cluster, "Current").await;
    let data = cluster.cacerts().await;
    judge(&data);
    assert!(
        crls(&data).pop().and_then(|c| c.number()) > fresh.number(),
        "numbers only grow"
    );
}

/// A renewal keeps the workloads of the intermediate it replaces verifying with every CRL
/// checked. istiod keeps their certificates valid until they expire, and a sidecar checking
/// CRLs (Envoy checks every CA of a peer's chain) needs a CRL of that intermediate too: without
/// one it refuses them ("unable to get certificate CRL") until they are renewed, up to a day.
/// The replaced intermediate's CRL is signed with its key as it is replaced, valid until it
/// expires, and stays while the intermediate after it is renewed in turn.
#[tokio::test]
async fn a_renewal_keeps_the_replaced_intermediates_workloads_verifying_with_every_crl_checked() {
    let (cluster, _lock) = one_cluster("revocation-renew").await;
    cluster.issue("root").await;
    cluster.create_icc(revoking("72h", "24h")).await;
    wait_crls(&cluster, "Current").await;
    let first = cluster.cacerts().await;
    judge(&first);
    let first_leaf = workload(&first, "spiffe://cluster.local/ns/default/sa/first");
    let mut seen = vec![(first_leaf, first)];
    for renewal in 1..=2 {
        cluster.issue("root").await;
        let previous = seen.last().map(|(_, data)| chain(data)[0].clone()).expect("a write");
        let data = eventually(TIMEOUT, || async {
            let data = cluster.cacerts().await;
            (chain(&data)[0] != previous).then_some(data)
        })
        .await
        .expect("the renewed intermediate is written");
        judge(&data);
        // Every workload under an intermediate written so far, presented with its own chain,
        // verifies under the CRLs written now.
        for (leaf, then) in &seen {
            let (ok, said) = verify_at(&data, leaf, then);
            assert!(
                ok,
                "renewal {renewal}: a workload of {}: {said}",
                chain(then)[0].subject()
            );
        }
        let retired: Vec<Crl> = crls(&data)
            .into_iter()
            .filter(|c| !chain(&data).iter().any(|ca| c.is_signed_by(ca)))
            .collect();
        assert_eq!(retired.len(), renewal, "one CRL per intermediate replaced");
        for (_, then) in &seen {
            let replaced = &chain(then)[0];
            let theirs: Vec<&Crl> = retired.iter().filter(|c| c.is_signed_by(replaced)).collect();
            assert_eq!(theirs.len(), 1, "one CRL of {}: {retired:?}", replaced.subject());
            assert_eq!(
                theirs[0].next_update(),
                Some(replaced.not_after()),
                "valid until it expires"
            );
            assert!(theirs[0].revoked_serials().is_empty());
        }
        let status = cluster.icc().await.status.expect("status");
        assert_eq!(
            status.crl.iter().filter(|c| c.window == CrlWindow::Retired).count(),
            renewal,
            "{:#?}",
            status.crl
        );
        let leaf = workload(&data, &format!("spiffe://cluster.local/ns/default/sa/r{renewal}"));
        seen.push((leaf, data));
    }
}

/// Peers' CRLs over their SPIFFE bundle endpoint, on two control planes with a root each
/// (federated). A follows B's endpoint; with revocation on in both, A's `ca-crl.pem` carries
/// B's intermediate's and root's CRLs after its own. A workload of B then verifies under A's
/// roots and CRLs with every CRL checked, as a sidecar in A checks it; once B's issuer revokes
/// B's intermediate, B's new root CRL reaches A over the endpoint and the workload is refused
/// as revoked. A's set passes istiod's rule throughout, and its status names B's CAs as peers.
#[tokio::test]
async fn a_peers_crls_come_over_its_bundle_endpoint_and_its_revocations_reach_us() {
    use mesh_ca_issuer::api::istio_cacerts::CrlWindow;
    use support::mesh::{TwoClusters, endpoint_anchor, serving_bundle};
    let TwoClusters { a, b, lock: _lock } = TwoClusters::start_waiting("revocation-peer", "mesh", TIMEOUT).await;
    for cluster in [&a, &b] {
        cluster
            .local_issuer("root", "mesh-root", "87600h", a_year_at_most())
            .await;
        cluster.issue("root").await;
    }
    let in_domain = |trust_domain: &str| IstioCACertsSpec {
        revocation: revoking("72h", "24h").revocation,
        ..support::mesh::publishing(trust_domain, None)
    };
    b.create_icc(IstioCACertsSpec {
        bundle_endpoint: serving_bundle("1s"),
        ..in_domain("b.example")
    })
    .await;
    wait_crls(&b, "Current").await;
    let at_b = b.cacerts().await;
    let (b_intermediate, b_root) = (chain(&at_b)[0].clone(), chain(&at_b)[1].clone());
    a.bootstrap("b-bootstrap", &[&b_root]).await;
    let started = Instant::now();
    a.create_icc(IstioCACertsSpec {
        trust_anchors: vec![endpoint_anchor(
            "peer-b",
            "b.example",
            b.controller.bundle_port,
            "b-bootstrap",
        )],
        ..in_domain("a.example")
    })
    .await;
    wait_crls(&a, "Current").await;
    let at_a = holding_crl_of(&a, &b_intermediate).await;
    let first = started.elapsed();
    judge(&at_a);
    let held = crls(&at_a);
    assert_eq!(
        held.len(),
        4,
        "A's intermediate and root, B's intermediate and root: {held:?}"
    );
    assert!(held[3].is_signed_by(&b_root));
    let b_leaf = workload(&at_b, "spiffe://b.example/ns/default/sa/x");
    let (ok, said) = verify_at(&at_a, &b_leaf, &at_b);
    assert!(ok, "B's workload under A's roots and CRLs: {said}");
    let status = a.icc().await.status.expect("status");
    let peers: Vec<&str> = status
        .crl
        .iter()
        .filter(|c| c.window == CrlWindow::Peer)
        .map(|c| c.ca_fingerprint_sha256.as_str())
        .collect();
    let (b_int_fp, b_root_fp) = (b_intermediate.fingerprint(), b_root.fingerprint());
    assert_eq!(peers, [b_int_fp.as_str(), b_root_fp.as_str()]);

    // B revokes its own intermediate: its next root CRL reaches A over the endpoint.
    let serial = b_intermediate.serial_hex();
    let revoked_at = Instant::now();
    revoke_at(&b, &serial).await;
    let listed = once_listed(&a, &b_root, &serial).await;
    let reached = revoked_at.elapsed();
    judge(&listed);
    let (ok, said) = verify_at(&listed, &b_leaf, &at_b);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
    eprintln!(
        "B's CRLs in A's ca-crl.pem {first:?} after A's IstioCACerts was created; B's revocation there {reached:?} after B's issuer change; ca-crl.pem at A {} bytes",
        listed["ca-crl.pem"].len()
    );
}

/// Proof 2 with the CRLs distributed, on two control planes sharing one local root: A follows
/// B's SPIFFE bundle endpoint. A's `ca-crl.pem` then holds B's intermediate's CRL besides its
/// own two (the shared root's CRL stays A's own: a peer is never believed about a CA of our
/// chain), and B's workloads verify under A's CRLs alone. Revoking B's intermediate at both
/// issuers makes A refuse them as revoked, while A's own still verify; B's next intermediate's
/// CRL reaches A over the endpoint, and B's new workloads verify at A again.
#[tokio::test]
async fn a_peer_sharing_the_root_is_cut_off_by_our_own_crls_once_we_follow_its_endpoint() {
    use support::mesh::{TwoClusters, endpoint_anchor, serving_bundle};
    let TwoClusters { a, b, lock: _lock } = sharing_one_root("revocation-shared").await;
    b.create_icc(IstioCACertsSpec {
        bundle_endpoint: serving_bundle("1s"),
        ..revoking("72h", "24h")
    })
    .await;
    wait_crls(&b, "Current").await;
    let at_b = b.cacerts().await;
    let (b_intermediate, shared_root) = (chain(&at_b)[0].clone(), chain(&at_b)[1].clone());
    a.bootstrap("b-bootstrap", &[&shared_root]).await;
    a.create_icc(IstioCACertsSpec {
        trust_anchors: vec![endpoint_anchor(
            "peer-b",
            "cluster.local",
            b.controller.bundle_port,
            "b-bootstrap",
        )],
        ..revoking("72h", "24h")
    })
    .await;
    wait_crls(&a, "Current").await;
    let at_a = holding_crl_of(&a, &b_intermediate).await;
    judge(&at_a);
    assert_eq!(
        crls(&at_a).len(),
        3,
        "A's intermediate's, the shared root's (A's own), B's intermediate's"
    );
    assert_eq!(chain(&at_a)[1], shared_root, "one root");
    let b_leaf = workload(&at_b, "spiffe://cluster.local/ns/b/sa/x");
    let (ok, said) = verify_at(&at_a, &b_leaf, &at_b);
    assert!(ok, "B's workload under A's CRLs alone: {said}");

    let serial = b_intermediate.serial_hex();
    for c in [&a, &b] {
        revoke_at(c, &serial).await;
    }
    let listed = once_listed(&a, &shared_root, &serial).await;
    judge(&listed);
    let (ok, said) = verify_at(&listed, &b_leaf, &at_b);
    assert!(!ok && said.contains("certificate revoked"), "B's workload at A: {said}");

    // cert-manager (stand-in) issues B's next intermediate; its CRL comes over the endpoint.
    b.issue("root").await;
    let renewed = eventually(TIMEOUT, || async {
        let data = b.cacerts().await;
        (chain(&data)[0] != b_intermediate).then_some(data)
    })
    .await
    .expect("B's new intermediate");
    let at_a = holding_crl_of(&a, &chain(&renewed)[0]).await;
    judge(&at_a);
    let b_new_leaf = workload(&renewed, "spiffe://cluster.local/ns/b/sa/x");
    let (ok, said) = verify_at(&at_a, &b_new_leaf, &renewed);
    assert!(ok, "B's new workloads verify at A again: {said}");
}

/// `spec.crlFrom.url`: a local CA that is a sub-CA, under a root whose key only the test holds.
/// The root's CRL is served over https by the test (a private Web PKI, the issuer's
/// `caBundle`), and `ca-crl.pem` carries the intermediate's, the sub-CA's and that root's CRLs,
/// accepted by istiod's rule and openssl. A newer root CRL revoking the sub-CA is fetched on the
/// next look, and openssl then refuses the workloads under it. A body that is not a CRL, or a
/// server that does not chain to `caBundle`, is refused by name, and the CRL in place stays.
#[tokio::test]
async fn crl_from_url_fetches_a_ca_s_crl_over_https_and_follows_it() {
    use mesh_ca_issuer::api::issuer::CrlFrom;
    use mesh_ca_issuer::pki::SigningKey;
    use mesh_ca_issuer::pki::crl::{CrlSpec, Reason, Revoked, issue};
    use mesh_ca_issuer::pki::sign::{CaSigner, self_signed_root};
    use support::bundle_peer::{BundlePeer, web_pki_for_loopback};
    let lock = ScopeLock::shared().await;
    let namespace = format!("revocation-url-{}", support::unique_suffix());
    let mut cluster = Cluster::start(support::kubeconfig(), &namespace, "mesh", "cluster.local").await;
    cluster.timeout = TIMEOUT;
    let _lock = lock;
    // The root (its key stays here) and the sub-CA the issuer signs with.
    let now = Timestamp::now();
    let root = self_signed_root(&Default::default(), now - jiff::SignedDuration::from_hours(1)).expect("root");
    let sub_plan = mesh_ca_issuer::pki::policy::SigningPlan {
        ca_path_len: Some(1),
        ..support::sign::plan(
            true,
            now - jiff::SignedDuration::from_hours(1),
            now + jiff::SignedDuration::from_hours(24 * 365),
            Duration::from_secs(1),
        )
    };
    let (sub_ca, sub_key) = support::sign::istiod_intermediate(&sub_plan, &root.0, &root.1);
    support::objects::create_tls_secret(
        &cluster.ns.api(),
        "sub-ca",
        &format!("{}{}", sub_ca.to_pem(), root.0.to_pem()),
        &sub_key,
    )
    .await;
    let root_crl = |number: u64, revoked: Vec<Revoked>| {
        let spec = CrlSpec {
            number,
            this_update: Timestamp::now() - jiff::SignedDuration::from_mins(1),
            next_update: Timestamp::now() + jiff::SignedDuration::from_hours(72),
            revoked,
        };
        issue(
            &spec,
            &CaSigner {
                certificate: &root.0,
                key: &root.1,
            },
        )
        .expect("the root's CRL")
    };
    let (ca_pem, crt_pem, key_pem) = web_pki_for_loopback();
    let web_ca = Certificate::parse_pem_bundle(ca_pem.as_bytes(), "ca")
        .expect("ca")
        .remove(0);
    let serving = (
        Certificate::parse_pem_bundle(crt_pem.as_bytes(), "crt")
            .expect("crt")
            .remove(0),
        SigningKey::from_pem(key_pem.as_bytes()).expect("key"),
    );
    let first = root_crl(1, Vec::new());
    let server = BundlePeer::start(&serving, &web_ca, first.der().to_vec()).await;
    let url = |version: u32| format!("https://127.0.0.1:{}/root.crl?v={version}", server.port);
    cluster
        .issuer(
            "sub",
            mesh_ca_issuer::api::issuer::IssuerSpec {
                crl_from: Some(CrlFrom {
                    url: Some(url(1)),
                    ca_bundle: Some(ca_pem.clone()),
                    ..Default::default()
                }),
                policy: a_year_at_most(),
                ..support::issuer::from_secret("sub-ca")
            },
        )
        .await;
    cluster.issue("sub").await;
    cluster.create_icc(revoking("72h", "24h")).await;
    wait_crls(&cluster, "Current").await;
    let data = cluster.cacerts().await;
    judge(&data);
    assert_eq!(chain(&data).len(), 3, "intermediate, sub-CA, root");
    assert_eq!(crls(&data)[2], first, "the root's CRL as served");

    // A look after the issuer changed (the URL, here) fetches again. First what is refused:
    // a body that is not a CRL, then a server that does not chain to caBundle.
    let issuers: kube::Api<MeshCAIssuer> = cluster.ns.api();
    let point = |version: u32, ca: &str| {
        let patch = serde_json::json!({"spec": {"crlFrom": {"url": url(version), "caBundle": ca}}});
        let issuers = issuers.clone();
        async move {
            issuers
                .patch("sub", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("patch crlFrom")
        }
    };
    server.serve(b"<html>not a CRL</html>".to_vec());
    point(2, &ca_pem).await;
    let said = |text: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .wait_icc(text, |icc| {
                    condition(icc, "CRLsCurrent").is_some_and(|c| c.message.contains(text))
                })
                .await
        }
    };
    said("not a CRL").await;
    assert_eq!(crls(&cluster.cacerts().await)[2], first, "the CRL in place stays");
    let (other_ca, _, _) = web_pki_for_loopback();
    point(3, &other_ca).await;
    said("fetching https://127.0.0.1").await;
    assert_eq!(crls(&cluster.cacerts().await)[2], first, "the CRL in place stays");

    // The root revokes the sub-CA: the next look writes that CRL, and openssl refuses the
    // workloads under the sub-CA.
    let revoked = root_crl(
        2,
        vec![Revoked {
            serial: sub_ca.serial_number(),
            reason: Reason::CaCompromise,
            revoked_at: Timestamp::now() - jiff::SignedDuration::from_mins(1),
        }],
    );
    server.serve(revoked.der().to_vec());
    point(4, &ca_pem).await;
    let listed = eventually(TIMEOUT, || async {
        let data = cluster.cacerts().await;
        (crls(&data)[2] == revoked).then_some(data)
    })
    .await
    .expect("the root's new CRL in ca-crl.pem");
    judge_signatures(&listed);
    let leaf = workload(&listed, "spiffe://cluster.local/ns/default/sa/x");
    let (ok, said) = verify_under(&listed, &leaf);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
}

/// Revoking the intermediate `cacerts` holds: on the issuer's change the root's CRL lists it
/// (openssl then refuses the workloads under it), Ready says so, and cert-manager is asked for
/// a new one through the Certificate's `Issuing` condition, once. The new intermediate is not
/// revoked, and its workloads verify with every CRL checked.
#[tokio::test]
async fn a_revoked_intermediate_is_listed_said_and_replaced() {
    let (cluster, _lock) = one_cluster("revocation-revoke").await;
    let cr = cluster.issue("root").await;
    cm::record_certificate(&cluster.client, &cluster.ns.name, SOURCE, SOURCE, &cr, None).await;
    cluster.create_icc(revoking("72h", "24h")).await;
    wait_crls(&cluster, "Current").await;
    let before = cluster.cacerts().await;
    judge(&before);
    let intermediate = chain(&before).remove(0);
    let serial = intermediate.serial_hex();

    let issuers: kube::Api<MeshCAIssuer> = cluster.ns.api();
    let started = Instant::now();
    issuers
        .patch(
            "root",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"revoked": [
                {"serialNumber": serial, "reason": "keyCompromise", "revokedAt": Timestamp::now().to_string()}
            ]}})),
        )
        .await
        .expect("revoke");
    let listed = eventually(TIMEOUT, || async {
        let data = cluster.cacerts().await;
        crls(&data)
            .pop()
            .is_some_and(|c| c.revoked_serials() == vec![serial.to_ascii_lowercase()])
            .then_some(data)
    })
    .await
    .expect("the root's CRL lists the revoked intermediate");
    let took = started.elapsed();
    assert_eq!(goverify::istiod_loads(&listed), Ok(()), "istiod still loads it");
    let leaf = workload(&listed, "spiffe://cluster.local/ns/default/sa/x");
    let (ok, said) = verify_under(&listed, &leaf);
    assert!(!ok && said.contains("certificate revoked"), "{said}");

    let icc = cluster.wait_ready("IntermediateRevoked").await;
    let message = condition(&icc, "Ready").expect("Ready").message.clone();
    assert!(
        message.contains(&serial) && message.contains("MeshCAIssuer"),
        "{message}"
    );
    let certificates: kube::Api<CertManagerCertificate> = cluster.ns.api();
    let issuing = eventually(TIMEOUT, || async {
        let certificate = certificates.get(SOURCE).await.ok()?;
        let conditions = certificate.status?.conditions?;
        conditions
            .into_iter()
            .find(|c| c.type_ == "Issuing" && c.status == "True")
    })
    .await
    .expect("cert-manager is asked for a new intermediate");
    assert_eq!(issuing.reason.as_deref(), Some("ManuallyTriggered"));
    eprintln!("revoked serial listed in ca-crl.pem {took:?} after the issuer's change");

    // cert-manager (stand-in) issues the next intermediate.
    cluster.issue("root").await;
    cluster.wait_ready("Synced").await;
    let after = cluster.cacerts().await;
    judge(&after);
    assert_ne!(chain(&after)[0], intermediate);
    assert_eq!(
        crls(&after).pop().expect("root CRL").revoked_serials(),
        vec![serial.to_ascii_lowercase()],
        "the old one stays revoked"
    );
}

/// Proof 2 on two control planes sharing one local root: `meshca revoke` adds B's intermediate
/// to the issuer in both clusters; A's `ca-crl.pem` lists it on the issuer change, B reports it
/// revoked and asks for a new one; B's workloads are refused under A's CRLs and, once B has a
/// new intermediate, verify again.
///
/// Envoy needs a CRL for every CA of a peer's chain. Here A does not follow B's bundle
/// endpoint, so A's `ca-crl.pem` holds only its own chain's (peers' CRLs come over bundle
/// endpoints: see the test above). openssl is asked both ways: with A's CRLs alone (refused for
/// the missing CRL, as a sidecar in A would refuse B) and with B's own intermediate CRL added
/// (what following B's endpoint gives).
#[tokio::test]
async fn meshca_revoke_cuts_off_a_peer_sharing_the_root_until_it_has_a_new_intermediate() {
    let support::mesh::TwoClusters { a, b, lock: _lock } = sharing_one_root("revocation-peer").await;
    for c in [&a, &b] {
        c.create_icc(revoking("72h", "24h")).await;
        wait_crls(c, "Current").await;
    }
    let (at_a, at_b) = (a.cacerts().await, b.cacerts().await);
    assert_eq!(at_a["root-cert.pem"], at_b["root-cert.pem"], "one root");
    let b_intermediate = chain(&at_b).remove(0);
    let serial = b_intermediate.serial_hex().to_ascii_lowercase();
    let b_leaf = workload(&at_b, "spiffe://cluster.local/ns/b/sa/x");
    let at_a_with_b_crl = |a_data: &BTreeMap<String, Vec<u8>>, b_data: &BTreeMap<String, Vec<u8>>| {
        let mut crls = a_data["ca-crl.pem"].clone();
        crls.extend(crls_of_pem(&b_data["ca-crl.pem"]).remove(0).to_pem().into_bytes());
        verify_with_crls(&b_leaf, &untrusted(b_data), &a_data["root-cert.pem"], &crls)
    };
    let (ok, said) = verify_at(&at_a, &b_leaf, &at_b);
    assert!(
        !ok && said.contains("unable to get certificate CRL"),
        "A's CRLs alone: {said}"
    );
    let (ok, said) = at_a_with_b_crl(&at_a, &at_b);
    assert!(ok, "with B's intermediate CRL, before the revocation: {said}");

    let namespace = a.ns.name.clone();
    let args = [
        "revoke",
        "--context",
        &a.context,
        "--context",
        &b.context,
        "--issuer",
        "root",
        "--issuer-namespace",
        &namespace,
        "--cert-from-context",
        &b.context,
        "--namespace",
        &namespace,
        "--name",
        "mesh",
    ];
    let unconfirmed = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], &args, &[]);
    assert_eq!(
        unconfirmed.code,
        3,
        "without --yes and a terminal: {}",
        unconfirmed.said()
    );
    let issuers: kube::Api<MeshCAIssuer> = a.ns.api();
    assert!(
        issuers.get("root").await.unwrap().spec.revoked.is_empty(),
        "nothing written"
    );

    let run = support::meshca::run(&[&a.kubeconfig, &b.kubeconfig], &[&args[..], &["--yes"]].concat(), &[]);
    assert_eq!(run.code, 0, "{}", run.said());
    assert!(run.stdout.contains(&format!("serial {serial}")), "{}", run.stdout);
    eprintln!(
        "meshca revoke: {:?} until both clusters' ca-crl.pem listed it\n{}",
        run.took, run.stdout
    );
    let listed_at_a = a.cacerts().await;
    assert_eq!(
        crls(&listed_at_a).pop().unwrap().revoked_serials(),
        vec![serial.clone()]
    );
    judge(&listed_at_a);
    let (ok, said) = at_a_with_b_crl(&listed_at_a, &b.cacerts().await);
    assert!(!ok && said.contains("certificate revoked"), "B's workload at A: {said}");
    let a_leaf = workload(&listed_at_a, "spiffe://cluster.local/ns/a/sa/x");
    let (ok, said) = verify_under(&listed_at_a, &a_leaf);
    assert!(ok, "A's own workloads still verify: {said}");

    // B says so, and asks cert-manager for a new intermediate.
    b.wait_ready("IntermediateRevoked").await;
    let status = support::meshca::run(
        &[&a.kubeconfig, &b.kubeconfig],
        &["status", "--context", &b.context, "-o", "json"],
        &[],
    );
    let report: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    let row = &report[0]["istioCacerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["namespace"] == namespace.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["intermediateRevoked"], true, "{row}");
    let certificates: kube::Api<CertManagerCertificate> = b.ns.api();
    eventually(TIMEOUT, || async {
        let conditions = certificates.get(SOURCE).await.ok()?.status?.conditions?;
        conditions
            .into_iter()
            .find(|c| c.type_ == "Issuing" && c.status == "True")
    })
    .await
    .expect("B asks cert-manager for a new intermediate");
    b.issue("root").await;
    b.wait_ready("Synced").await;
    let renewed = b.cacerts().await;
    assert_ne!(chain(&renewed)[0], b_intermediate);
    let b_new_leaf = workload(&renewed, "spiffe://cluster.local/ns/b/sa/x");
    let mut crls_at_a = listed_at_a["ca-crl.pem"].clone();
    crls_at_a.extend(crls_of_pem(&renewed["ca-crl.pem"]).remove(0).to_pem().into_bytes());
    let (ok, said) = verify_with_crls(
        &b_new_leaf,
        &untrusted(&renewed),
        &listed_at_a["root-cert.pem"],
        &crls_at_a,
    );
    assert!(ok, "B's new workloads verify at A again: {said}");
}

fn crls_of_pem(pem: &[u8]) -> Vec<Crl> {
    Crl::parse_pem_bundle(pem, "ca-crl.pem").expect("CRLs")
}

/// Proof 5: a root rotation with revocation on. Every `cacerts` written in every phase carries
/// a CRL set that istiod's rule accepts for that phase's `cert-chain.pem` (the old root's CRL
/// while the old intermediate is written, the new root's after the switch), each CRL verifies
/// against its CA, and the rotation completes.
#[tokio::test]
async fn a_root_rotation_writes_a_complete_crl_set_in_every_phase() {
    use mesh_ca_issuer::api::istio_cacerts::{RootRotation, RotationMode, RotationPhase};
    let (cluster, _lock) = one_cluster("revocation-rotation").await;
    cluster
        .local_issuer("new", "new-root", "175200h", a_year_at_most())
        .await;
    cluster.issue("root").await;
    let spec = IstioCACertsSpec {
        root_rotation: Some(RootRotation {
            multi_root_mesh_enabled: true,
            trust_propagation_delay: "6s".into(),
            workload_drain_delay: "8s".into(),
            mode: RotationMode::Automatic,
            ..Default::default()
        }),
        ..revoking("72h", "24h")
    };
    cluster.create_icc(spec).await;
    wait_crls(&cluster, "Current").await;
    let history = cluster.record_cacerts();
    cluster.issue("new").await;
    cluster
        .wait_icc("Completed", |icc| {
            support::objects::phase_of(icc) == Some(RotationPhase::Completed)
        })
        .await;
    wait_crls(&cluster, "Current").await;
    let versions = history.versions();
    assert!(versions.len() >= 4, "a write per phase: {}", versions.len());
    let mut chains = Vec::new();
    for (_, _, data) in &versions {
        assert!(data.contains_key("ca-crl.pem"), "every write carries CRLs");
        judge_signatures(data);
        let chain = chain(data);
        let crls = crls(data);
        for (ca, crl) in chain.iter().zip(&crls) {
            assert!(crl.is_signed_by(ca), "the CRL of {} is its own", ca.subject());
        }
        if chains.last() != Some(&chain) {
            chains.push(chain);
        }
    }
    assert_eq!(chains.len(), 2, "the old chain, then the new one");
    assert_ne!(chains[0].last(), chains[1].last(), "under two roots");
    judge(&cluster.cacerts().await);
    eprintln!(
        "rotation with revocation: {} writes, each with a complete CRL set",
        versions.len()
    );
}

/// Hostile: the source Secret's annotation names another Certificate of the namespace (one that
/// writes another Secret). A revoked intermediate asks nobody then: that Certificate is never
/// made to re-issue.
#[tokio::test]
async fn a_revoked_intermediate_never_makes_another_certificate_reissue() {
    use mesh_ca_issuer::api::cert_manager::CERTIFICATE_NAME_ANNOTATION;
    let (cluster, _lock) = one_cluster("revocation-decoy").await;
    let cr = cluster.issue("root").await;
    cm::record_certificate(&cluster.client, &cluster.ns.name, "decoy", "other-secret", &cr, None).await;
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = cluster.ns.api();
    secrets
        .patch(
            SOURCE,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"annotations": {CERTIFICATE_NAME_ANNOTATION: "decoy"}}})),
        )
        .await
        .unwrap();
    cluster.create_icc(revoking("72h", "24h")).await;
    wait_crls(&cluster, "Current").await;
    let serial = chain(&cluster.cacerts().await).remove(0).serial_hex();
    let issuers: kube::Api<MeshCAIssuer> = cluster.ns.api();
    issuers
        .patch(
            "root",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"revoked": [{"serialNumber": serial}]}})),
        )
        .await
        .unwrap();
    cluster.wait_ready("IntermediateRevoked").await;
    // The controller said why it asked nobody: the signal that the decision was made.
    let said = eventually(TIMEOUT, || async {
        cluster
            .controller
            .log()
            .contains("that Certificate does not write the source Secret")
            .then_some(())
    })
    .await;
    assert!(said.is_some(), "{}", cluster.controller.log());
    let certificates: kube::Api<CertManagerCertificate> = cluster.ns.api();
    let decoy = certificates.get("decoy").await.unwrap();
    let issuing = decoy
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.type_ == "Issuing");
    assert!(!issuing, "the decoy Certificate was never asked to re-issue");
}
