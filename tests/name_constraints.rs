//! Name-constrained intermediates (`policy.nameConstraints`): a cluster's CA can mint identities
//! of its own trust domain only.
//!
//! The judges are independent of this crate: openssl (`verify -x509_strict`, `x509 -text`) and
//! Go's crypto/x509 as istiod runs it (`support::goverify`). Workload certificates are made as
//! istiod makes them, signed with the issued intermediate's key. Both backends are proven on the
//! real API server: the local root, and AWS Private CA through the local ACM PCA endpoint.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::PostParams;
use mesh_ca_issuer::api::cert_manager::CertificateRequest;
use mesh_ca_issuer::api::issuer::{IssuancePolicy, IssuerSpec, LocalCA, MeshCAIssuer, RootBootstrap};
use mesh_ca_issuer::api::istio_cacerts::IstioCACerts;
use mesh_ca_issuer::api::name_constraints::{NameConstraintsMode, NameConstraintsPolicy};
use mesh_ca_issuer::pki::name_constraints::{self, NameConstraints, Subtree};
use mesh_ca_issuer::pki::policy::{self, CaLifetime, RequestFacts};
use mesh_ca_issuer::pki::sign::self_signed_root;
use mesh_ca_issuer::pki::{Certificate, CertificateSigningRequest};
use support::cert_manager::{self as cm, IntermediateRequest};
use support::goverify::{self, istiod_loads, workload_verifies};
use support::openssl::{self, Workdir, workload_certificate};
use support::pca::{ACCESS_KEY_ID, ENDPOINT_OVERRIDE, PcaFixture, SECRET_ACCESS_KEY};
use support::{RunningController, eventually};

const TIMEOUT: Duration = Duration::from_secs(45);
const OWN: &str = "cluster-a.example";
const OTHER: &str = "cluster-b.example";

// === the judges ===

/// openssl's verdict on a workload certificate (leaf first, then its chain) against `root`:
/// `Ok` when `openssl verify -x509_strict` accepts it, else openssl's words.
fn openssl_verifies(leaf_and_chain: &str, root: &[u8]) -> Result<(), String> {
    let dir = Workdir::new();
    dir.write("root.pem", root).write("leaf.pem", leaf_and_chain);
    let (ok, said) = dir.try_run(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "leaf.pem",
        "leaf.pem",
    ]);
    if ok { Ok(()) } else { Err(said) }
}

/// Both judges on one workload certificate: (openssl, Go).
fn verdicts(leaf_and_chain: &str, root: &[u8]) -> (Result<(), String>, Result<(), String>) {
    (
        openssl_verifies(leaf_and_chain, root),
        workload_verifies(leaf_and_chain.as_bytes(), b"", root),
    )
}

/// An issued intermediate with everything needed to act as istiod: its certificate, key, the
/// chain after it (`status.certificate` minus the first certificate) and the root (`status.ca`).
struct Intermediate {
    certificate: String,
    key: String,
    chain: String,
    root: String,
}

impl Intermediate {
    fn from_request(cr: &CertificateRequest, key: &str) -> Self {
        let status = cr.status.as_ref().expect("issued request");
        let chain = Certificate::parse_pem_bundle(status.certificate.as_deref().unwrap(), "certificate").unwrap();
        Self {
            certificate: chain[0].to_pem(),
            key: key.to_string(),
            chain: chain.iter().skip(1).map(Certificate::to_pem).collect(),
            root: String::from_utf8(status.ca.clone().unwrap()).unwrap(),
        }
    }

    /// openssl reads a critical name constraint permitting only OWN's URIs; its text is
    /// printed for the reader (`what` says which intermediate).
    fn assert_openssl_shows_own_constraint(&self, what: &str) {
        let text = openssl::text(self.certificate.as_bytes());
        assert!(
            text.contains(&format!(
                "X509v3 Name Constraints: critical\n                Permitted:\n                  URI:{OWN}\n"
            )),
            "{text}"
        );
        println!("--- openssl x509 -text of {what} intermediate ---\n{text}");
    }

    /// A workload certificate for `sans` (a SPIFFE ID, optionally `,DNS:...`), as istiod makes
    /// one, followed by the chain a proxy presents.
    fn workload(&self, sans: &str) -> String {
        let cert_chain = format!("{}{}{}", self.certificate, self.chain, self.root);
        workload_certificate(
            self.certificate.as_bytes(),
            self.key.as_bytes(),
            cert_chain.as_bytes(),
            sans,
        )
    }

    /// The `cacerts` bundle istiod would load, in Istio's own format.
    fn cacerts(&self) -> BTreeMap<String, Vec<u8>> {
        goverify::cacerts(&self.certificate, &self.key, &self.chain, &self.root)
    }

    /// The proof the issue asks for: own trust domain accepted and another refused by openssl
    /// and Go, and istiod's own check of the bundle passes.
    fn prove_constrained_to(&self, own: &str, other: &str) {
        let root = self.root.as_bytes();
        let mine = self.workload(&format!("spiffe://{own}/ns/x/sa/y"));
        assert_eq!(verdicts(&mine, root), (Ok(()), Ok(())), "own trust domain {own}");
        let foreign = self.workload(&format!("spiffe://{other}/ns/x/sa/y"));
        let (by_openssl, by_go) = verdicts(&foreign, root);
        assert!(
            by_openssl
                .as_ref()
                .is_err_and(|e| e.contains("permitted subtree violation")),
            "openssl must refuse {other}: {by_openssl:?}"
        );
        assert!(
            by_go.as_ref().is_err_and(|e| e.contains("not permitted")),
            "Go must refuse {other}: {by_go:?}"
        );
        assert_eq!(
            istiod_loads(&self.cacerts()),
            Ok(()),
            "istiod loads the constrained intermediate"
        );
    }
}

// === the encoding, judged by openssl ===

/// The raw value of the NameConstraints extension of the first certificate in `pem`.
fn raw_extension(pem: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer;
    let der = Certificate::parse_pem_bundle(pem, "certificate").unwrap().remove(0);
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.der()).unwrap();
    let oid = x509_parser::der_parser::oid::Oid::from(name_constraints::OID).unwrap();
    cert.extensions()
        .iter()
        .find(|e| e.oid == oid)
        .expect("a NameConstraints extension")
        .value
        .to_vec()
}

#[test]
fn our_encoding_is_byte_for_byte_what_openssl_writes_for_the_same_constraints() {
    let uri = |h: &str| Subtree::Uri(h.into());
    let cases = [
        (
            "permitted;URI:cluster.local",
            NameConstraints {
                permitted: vec![uri("cluster.local")],
                excluded: vec![],
            },
        ),
        (
            "permitted;URI:a.example,permitted;URI:b.example,permitted;DNS:istio-system.svc,excluded;URI:.a.example",
            NameConstraints {
                permitted: vec![
                    uri("a.example"),
                    uri("b.example"),
                    Subtree::Dns("istio-system.svc".into()),
                ],
                excluded: vec![uri(".a.example")],
            },
        ),
        (
            "excluded;URI:.cluster.local",
            NameConstraints {
                permitted: vec![],
                excluded: vec![uri(".cluster.local")],
            },
        ),
    ];
    for (config, ours) in cases {
        let dir = Workdir::new();
        dir.req_with_new_p256_key(
            "k.pem",
            "c.pem",
            Some(1),
            "/CN=encoding",
            &[
                "basicConstraints=critical,CA:TRUE",
                &format!("nameConstraints=critical,{config}"),
            ],
        );
        let theirs = raw_extension(dir.read("c.pem").as_bytes());
        assert_eq!(ours.to_der().unwrap(), theirs, "{config}");
        assert_eq!(
            NameConstraints::from_der(&theirs).unwrap(),
            ours,
            "{config}: decoded back"
        );
    }
}

// === what a constrained intermediate does to istiod's other certificates (local signer) ===

/// An intermediate signed by the crate's local signer under `policy`, for the CSR's `uris`.
fn sign_locally(uris: &[&str], nc: NameConstraintsPolicy) -> Intermediate {
    let now = jiff::Timestamp::now();
    let (root, root_key) =
        self_signed_root(&RootBootstrap::default(), now - jiff::SignedDuration::from_hours(1)).unwrap();
    let req = IntermediateRequest {
        uris: uris.iter().map(|u| u.to_string()).collect(),
        ..IntermediateRequest::istiod("local", "mesh")
    };
    let (key, csr) = cm::make_key_and_csr(&req);
    let csr = CertificateSigningRequest::from_pem(csr.as_bytes()).unwrap();
    // As the controller applies it, with this mesh's trust domain (`--trust-domain`).
    let issuance = policy::with_defaults(
        &IssuancePolicy {
            name_constraints: nc,
            ..Default::default()
        },
        OWN,
    );
    let facts = RequestFacts {
        is_ca: Some(true),
        duration: None,
    };
    let lifetime = CaLifetime {
        not_before: root.not_before(),
        not_after: root.not_after(),
        max_validity: None,
    };
    let mut plan = policy::plan(&csr, &facts, &issuance, &lifetime, now).unwrap();
    plan.name_constraints = name_constraints::decide(&csr, plan.ca_path_len.is_some(), &issuance, OWN).unwrap();
    let certificate = support::sign::signed(&csr, &plan, &root, &root_key);
    Intermediate {
        certificate: certificate.to_pem(),
        key,
        chain: String::new(),
        root: root.to_pem(),
    }
}

fn trust_domain_mode(dns: &[&str], excluded: &[&str]) -> NameConstraintsPolicy {
    NameConstraintsPolicy {
        mode: NameConstraintsMode::TrustDomain,
        permitted_dns_domains: dns.iter().map(|s| s.to_string()).collect(),
        excluded_uri_domains: excluded.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn istiods_dns_serving_certificate_verifies_when_no_dns_subtree_is_set() {
    let int = sign_locally(
        &[&format!("spiffe://{OWN}/ns/istio-system/sa/istiod")],
        trust_domain_mode(&[], &[]),
    );
    let root = int.root.as_bytes();
    // istiod's serving certificate carries DNS SANs only: URI subtrees leave DNS names free.
    let serving = int.workload("DNS:istiod.istio-system.svc,DNS:istio-pilot.istio-system.svc");
    assert_eq!(verdicts(&serving, root), (Ok(()), Ok(())));
    int.prove_constrained_to(OWN, OTHER);
}

#[test]
fn a_dns_subtree_permits_names_below_it_and_refuses_the_rest() {
    let int = sign_locally(
        &[&format!("spiffe://{OWN}/ns/istio-system/sa/istiod")],
        trust_domain_mode(&["istio-system.svc"], &[]),
    );
    let root = int.root.as_bytes();
    // Below the subtree: accepted by both.
    let inside = int.workload("DNS:istiod.istio-system.svc");
    assert_eq!(verdicts(&inside, root), (Ok(()), Ok(())));
    // The fully qualified name is *not* below istio-system.svc: refused by both, as documented
    // (list istio-system.svc.cluster.local too when istiod's certificate carries it).
    let qualified = int.workload("DNS:istiod.istio-system.svc.cluster.local");
    let (by_openssl, by_go) = verdicts(&qualified, root);
    assert!(by_openssl.is_err(), "openssl: {by_openssl:?}");
    assert!(
        by_go.as_ref().is_err_and(|e| e.contains("not permitted")),
        "Go: {by_go:?}"
    );
    // URI constraints are unchanged by a DNS subtree.
    int.prove_constrained_to(OWN, OTHER);
}

#[test]
fn a_sub_domain_trust_domain_is_refused_by_openssl_but_go_needs_an_excluded_uri_domain() {
    let sub = format!("spiffe://team.{OWN}/ns/x/sa/y");
    // Without exclusions, Go treats a URI subtree without a leading dot like a DNS domain
    // (the host and every host below it); openssl matches the host exactly.
    let loose = sign_locally(
        &[&format!("spiffe://{OWN}/ns/istio-system/sa/istiod")],
        trust_domain_mode(&[], &[]),
    );
    let (by_openssl, by_go) = verdicts(&loose.workload(&sub), loose.root.as_bytes());
    assert!(by_openssl.is_err(), "openssl refuses team.{OWN}: {by_openssl:?}");
    assert_eq!(by_go, Ok(()), "Go accepts team.{OWN} under a permitted {OWN}");
    // excludedURIDomains [".<td>"] closes the gap: both refuse, and the trust domain itself stays.
    let exact = sign_locally(
        &[&format!("spiffe://{OWN}/ns/istio-system/sa/istiod")],
        trust_domain_mode(&[], &[&format!(".{OWN}")]),
    );
    let (by_openssl, by_go) = verdicts(&exact.workload(&sub), exact.root.as_bytes());
    assert!(by_openssl.is_err(), "openssl: {by_openssl:?}");
    assert!(by_go.as_ref().is_err_and(|e| e.contains("excluded")), "Go: {by_go:?}");
    exact.prove_constrained_to(OWN, OTHER);
}

/// ztunnel's peer check: rustls-webpki's `EndEntityCert::verify_for_usage` for client auth, as
/// ztunnel's `TrustDomainVerifier` calls it (src/tls/workload.rs), with the rest of
/// `leaf_and_chain` as intermediates.
fn ztunnel_verifies(leaf_and_chain: &str, root: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, UnixTime};
    let certs = Certificate::parse_pem_bundle(leaf_and_chain.as_bytes(), "leaf").unwrap();
    let root = Certificate::parse_pem_bundle(root, "root").unwrap().remove(0);
    let root = CertificateDer::from(root.der().to_vec());
    let anchor = webpki::anchor_from_trusted_cert(&root).unwrap();
    let leaf = CertificateDer::from(certs[0].der().to_vec());
    let leaf = webpki::EndEntityCert::try_from(&leaf).unwrap();
    let intermediates: Vec<CertificateDer<'_>> = certs[1..]
        .iter()
        .map(|c| CertificateDer::from(c.der().to_vec()))
        .collect();
    leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("{e:?}"))
}

#[test]
fn ztunnels_verifier_refuses_even_its_own_trust_domain_under_a_uri_constrained_intermediate() {
    let own = format!("spiffe://{OWN}/ns/x/sa/y");
    let istiod = format!("spiffe://{OWN}/ns/istio-system/sa/istiod");
    // The judge works: without constraints the same workload certificate verifies.
    let plain = sign_locally(&[&istiod], NameConstraintsPolicy::default());
    assert_eq!(ztunnel_verifies(&plain.workload(&own), plain.root.as_bytes()), Ok(()));
    // rustls-webpki does not implement URI constraints and fails closed: ambient mode breaks.
    let constrained = sign_locally(&[&istiod], trust_domain_mode(&[], &[]));
    let verdict = ztunnel_verifies(&constrained.workload(&own), constrained.root.as_bytes());
    assert!(
        verdict.as_ref().is_err_and(|e| e.contains("NameConstraintViolation")),
        "{verdict:?}"
    );
    // ... while Go and openssl accept it.
    assert_eq!(
        verdicts(&constrained.workload(&own), constrained.root.as_bytes()),
        (Ok(()), Ok(()))
    );
}

// === on the API server: the local root backend ===

/// A namespace with a controller watching only it: the mesh's trust domain is OWN; the PCA
/// tests' namespaced issuers name a loopback endpoint.
type Env = support::WithNamespace<RunningController>;

async fn env(prefix: &str) -> Env {
    Env::controlled(prefix, &["--trust-domain", OWN, ENDPOINT_OVERRIDE]).await
}

fn policy(mode: NameConstraintsMode) -> IssuancePolicy {
    IssuancePolicy {
        name_constraints: NameConstraintsPolicy {
            mode,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn create_ready_issuer(env: &Env, name: &str, spec: IssuerSpec) {
    support::issuer::create(&env.ns.api(), name, spec).await;
    let (reason, message) = support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), name, "True", TIMEOUT).await;
    assert_eq!(reason, "Verified", "{message}");
}

fn local_issuer(mode: NameConstraintsMode) -> IssuerSpec {
    IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: "mesh-root".into(),
            bootstrap: Some(RootBootstrap::default()),
        }),
        policy: policy(mode),
        ..Default::default()
    }
}

/// istiod's intermediate for trust domain `td` (or, with `None`, without any URI SAN).
fn istiod_request(name: &str, issuer: &str, td: Option<&str>) -> IntermediateRequest {
    IntermediateRequest {
        uris: td
            .map(|td| vec![format!("spiffe://{td}/ns/istio-system/sa/istiod")])
            .unwrap_or_default(),
        ..IntermediateRequest::istiod(name, issuer)
    }
}

fn ready_message(cr: &CertificateRequest) -> String {
    cr.condition("Ready")
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn local_root_issues_an_intermediate_constrained_to_its_trust_domain_and_cacerts_shows_it() {
    let env = env("nc-local").await;
    create_ready_issuer(&env, "mesh", local_issuer(NameConstraintsMode::TrustDomain)).await;
    let req = IntermediateRequest {
        certificate: Some("istiod-intermediate".into()),
        ..istiod_request("istiod", "mesh", Some(OWN))
    };
    let key = cm::request_and_approve(&env.client, &env.ns.name, &req).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "istiod", &["Issued"], TIMEOUT).await;
    let message = ready_message(&cr);
    assert!(
        message.contains(&format!("with name constraints: permitted URI:{OWN}")),
        "{message}"
    );
    let note = support::wait_for_event(&env.client, &env.ns.name, "istiod", "Issued").await;
    assert!(
        note.contains(&format!("with name constraints: permitted URI:{OWN}")),
        "the Issued event says so too: {note}"
    );

    let int = Intermediate::from_request(&cr, &key);
    int.assert_openssl_shows_own_constraint("a localCA");
    int.prove_constrained_to(OWN, OTHER);

    // IstioCACerts writes it to cacerts and shows the constraints in status.intermediate.
    cm::write_certificate_secret(&env.client, &env.ns.name, "istiod-intermediate", &cr, &key).await;
    let icc: IstioCACerts = serde_json::from_value(serde_json::json!({
        "apiVersion": "meshca.io/v1alpha1", "kind": "IstioCACerts",
        "metadata": {"name": "mesh"},
        "spec": {"sourceSecretName": "istiod-intermediate", "targetSecretName": "cacerts"},
    }))
    .unwrap();
    env.ns
        .api::<IstioCACerts>()
        .create(&PostParams::default(), &icc)
        .await
        .unwrap();
    let shown = eventually(TIMEOUT, || async {
        let icc = env.ns.api::<IstioCACerts>().get("mesh").await.ok()?;
        icc.status?.intermediate?.name_constraints
    })
    .await
    .expect("status.intermediate.nameConstraints");
    assert!(shown.critical);
    assert_eq!(shown.permitted, vec![format!("URI:{OWN}")]);
    assert!(shown.excluded.is_empty());
    let cacerts: Secret = env.ns.api().get("cacerts").await.unwrap();
    assert_eq!(
        istiod_loads(&support::objects::data(&cacerts)),
        Ok(()),
        "istiod loads the written cacerts"
    );
}

#[tokio::test]
async fn without_a_spiffe_id_trust_domain_mode_uses_the_default_and_required_mode_fails() {
    let env = env("nc-modes").await;
    create_ready_issuer(&env, "lenient", local_issuer(NameConstraintsMode::TrustDomain)).await;
    let mut strict = local_issuer(NameConstraintsMode::Required);
    strict.local_ca.as_mut().unwrap().secret_name = "strict-root".into();
    create_ready_issuer(&env, "strict", strict).await;

    let key = cm::request_and_approve(&env.client, &env.ns.name, &istiod_request("lenient", "lenient", None)).await;
    cm::request_and_approve(&env.client, &env.ns.name, &istiod_request("strict", "strict", None)).await;

    // TrustDomain: the controller's default trust domain (`--trust-domain`).
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "lenient", &["Issued"], TIMEOUT).await;
    let int = Intermediate::from_request(&cr, &key);
    int.prove_constrained_to(OWN, OTHER);

    // Required: Failed, saying what to add; nothing issued.
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "strict", &["Failed"], TIMEOUT).await;
    let message = ready_message(&cr);
    assert!(
        message.contains("policy.nameConstraints.mode Required") && message.contains("spiffe://"),
        "{message}"
    );
    assert!(cr.status.unwrap().certificate.is_none());
}

#[tokio::test]
async fn domains_listed_while_the_mode_is_none_make_the_issuer_not_ready() {
    let env = env("nc-invalid").await;
    let mut spec = local_issuer(NameConstraintsMode::None);
    spec.policy.name_constraints.permitted_dns_domains = vec!["istio-system.svc".into()];
    support::issuer::create(&env.ns.api(), "mesh", spec).await;
    let (reason, message) = support::wait_issuer(&env.ns.api::<MeshCAIssuer>(), "mesh", "False", TIMEOUT).await;
    assert_eq!(reason, "InvalidSpec", "{message}");
    assert!(
        message.contains("policy.nameConstraints") && message.contains("mode is None"),
        "{message}"
    );
}

// === on the API server: AWS Private CA ===

struct PcaEnv {
    env: Env,
    pca: PcaFixture,
}

async fn pca_env(prefix: &str) -> PcaEnv {
    let env = env(prefix).await;
    let pca = PcaFixture::start();
    support::pca::create_credentials_secret(&env.ns.api()).await;
    PcaEnv { env, pca }
}

fn pca_issuer(pca: &PcaFixture, arn: &str, mode: NameConstraintsMode) -> IssuerSpec {
    IssuerSpec {
        policy: policy(mode),
        ..pca.issuer_spec(arn)
    }
}

#[tokio::test]
async fn aws_pca_issues_a_constrained_intermediate_through_the_passthrough_template() {
    let PcaEnv { env, pca } = pca_env("nc-pca").await;
    let arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    create_ready_issuer(&env, "pca", pca_issuer(&pca, &arn, NameConstraintsMode::Required)).await;
    let key = cm::request_and_approve(&env.client, &env.ns.name, &istiod_request("istiod", "pca", Some(OWN))).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "istiod", &["Issued"], TIMEOUT).await;
    let message = ready_message(&cr);
    assert!(
        message.contains(&format!("with name constraints: permitted URI:{OWN}")),
        "{message}"
    );

    // PCA was asked with the passthrough template and one critical NameConstraints extension.
    let stats = pca.stats().await;
    assert_eq!(stats["certificates_issued"], 1);
    let issued = &stats["issued"][0];
    assert_eq!(
        issued["template"],
        "arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0_APIPassthrough/V1"
    );
    assert_eq!(issued["custom_extensions"].as_array().unwrap().len(), 1);
    assert_eq!(issued["custom_extensions"][0]["oid"], "2.5.29.30");
    assert_eq!(issued["custom_extensions"][0]["critical"], true);

    let int = Intermediate::from_request(&cr, &key);
    int.assert_openssl_shows_own_constraint("an awsPCA");
    int.prove_constrained_to(OWN, OTHER);
}

#[tokio::test]
async fn an_intermediate_issued_without_the_requested_constraints_is_never_handed_out() {
    let PcaEnv { env, pca } = pca_env("nc-pca-drop").await;
    let arn = pca.create_ca("RSA_2048", "GENERAL_PURPOSE", 3650).await;
    create_ready_issuer(&env, "pca", pca_issuer(&pca, &arn, NameConstraintsMode::TrustDomain)).await;
    // The endpoint silently drops custom extensions, as an issuer that ignores them would.
    pca.drop_custom_extensions(true).await;
    cm::request_and_approve(&env.client, &env.ns.name, &istiod_request("istiod", "pca", Some(OWN))).await;
    let cr = cm::wait_for_reason(&env.client, &env.ns.name, "istiod", &["Failed"], TIMEOUT).await;
    let message = ready_message(&cr);
    assert!(
        message.contains("did not apply the requested name constraints")
            && message.contains("carries no NameConstraints extension"),
        "{message}"
    );
    assert!(cr.annotations().contains_key("meshca.io/aws-pca-certificate-arn"));
    let status = cr.status.unwrap();
    assert!(
        status.certificate.is_none() && status.ca.is_none(),
        "nothing handed out"
    );
    assert_eq!(
        pca.certificates_issued().await,
        1,
        "issued once, not retried into a loop"
    );
}

#[tokio::test]
async fn the_pca_endpoint_refuses_custom_extensions_on_a_template_without_passthrough() {
    let pca = PcaFixture::start();
    let arn = pca.create_ca("EC_prime256v1", "GENERAL_PURPOSE", 3650).await;
    mesh_ca_issuer::install_crypto_provider();
    let config = aws_sdk_acmpca::config::Builder::new()
        .behavior_version(aws_sdk_acmpca::config::BehaviorVersion::latest())
        .region(aws_sdk_acmpca::config::Region::new("us-east-1"))
        .endpoint_url(&pca.endpoint)
        .credentials_provider(aws_sdk_acmpca::config::Credentials::new(
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    let client = aws_sdk_acmpca::Client::from_conf(config);
    let (_, csr) = cm::make_key_and_csr(&istiod_request("x", "pca", Some(OWN)));
    let nc = NameConstraints {
        permitted: vec![Subtree::Uri(OWN.into())],
        excluded: vec![],
    };
    let passthrough = mesh_ca_issuer::backend::aws_pca::passthrough::api_passthrough(&nc).unwrap();
    let issue = |template: String| {
        client
            .issue_certificate()
            .certificate_authority_arn(&arn)
            .csr(aws_sdk_acmpca::primitives::Blob::new(csr.clone().into_bytes()))
            .signing_algorithm(aws_sdk_acmpca::types::SigningAlgorithm::Sha256Withecdsa)
            .template_arn(template)
            .validity(
                aws_sdk_acmpca::types::Validity::builder()
                    .value(30)
                    .r#type(aws_sdk_acmpca::types::ValidityPeriodType::Days)
                    .build()
                    .unwrap(),
            )
            .api_passthrough(passthrough.clone())
            .send()
    };
    let refused = issue("arn:aws:acm-pca:::template/SubordinateCACertificate_PathLen0/V1".into())
        .await
        .expect_err("custom extensions on a non-passthrough template");
    let code = aws_sdk_acmpca::error::ProvideErrorMetadata::code(&refused).map(str::to_string);
    assert_eq!(code.as_deref(), Some("ValidationException"), "{refused:?}");
    assert_eq!(pca.certificates_issued().await, 0);
    // The same request on the passthrough template is issued, carrying the extension.
    issue(mesh_ca_issuer::backend::aws_pca::passthrough::template_arn("aws", 0))
        .await
        .expect("passthrough template accepts custom extensions");
    assert_eq!(pca.certificates_issued().await, 1);
}
