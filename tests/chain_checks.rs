//! Our `cacerts` verification judged by Go's own `crypto/x509` (`tests/goverify`, istiod's
//! check) on PKIs made by openssl, independently of this crate: path lengths along the whole
//! chain, CA:TRUE and keyCertSign on every issuer, extended key usages anywhere on the path.
//!
//! The rule every case obeys: a bundle we accept, istiod loads **and** a workload certificate
//! signed by it verifies; a bundle we refuse, istiod refuses, or (our one documented stricter
//! rule, see `pki::chain`) istiod would load it but no workload certificate it signs verifies.

mod support;

use std::collections::BTreeMap;

use jiff::Timestamp;
use mesh_ca_issuer::istio::cacerts::verify_bundle;
use support::goverify::{cacerts, istiod_loads, workload_verifies};
use support::openssl::{Workdir, workload_certificate};

const CA_KU: &str = "keyUsage=critical,keyCertSign,cRLSign,digitalSignature";
// The extension lines the cases combine, named once so each case says only what it changes.
const CA_TRUE: &str = "basicConstraints=critical,CA:TRUE";
const PATHLEN_0: &str = "basicConstraints=critical,CA:TRUE,pathlen:0";
const PATHLEN_1: &str = "basicConstraints=critical,CA:TRUE,pathlen:1";
const CLIENT_AUTH: &str = "extendedKeyUsage=clientAuth";
const UNKNOWN_CRITICAL: &str = "1.3.6.1.4.1.55555.1=critical,ASN1:NULL";
/// A CA with no path length limit: what most cases' root and middle CA are.
const CA: &[&str] = &[CA_TRUE, CA_KU];
/// istiod's intermediate as cert-manager asks for it: a CA that signs only workloads.
const ISTIOD: &[&str] = &[PATHLEN_0, CA_KU];

/// One PKI: a root, optionally a middle CA, and istiod's intermediate, each with the given
/// extension lines (`None` for the middle: no middle CA).
struct Case {
    name: &'static str,
    root: &'static [&'static str],
    middle: Option<&'static [&'static str]>,
    intermediate: &'static [&'static str],
    /// Our verdict.
    ours: Ours,
    /// The root's key (openssl `-newkey`), "ec" for P-256.
    root_key: &'static str,
    /// The digest the intermediate is signed with (openssl `x509 -req -<digest>`).
    intermediate_digest: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ours {
    Accepted,
    Refused,
    /// Refused on purpose although Go accepts it: a key too weak to trust (Go takes RSA-1024).
    RefusedStricterThanGo,
}
use Ours::{Accepted, Refused, RefusedStricterThanGo};

/// The fields most cases share: a P-256 [`CA`] root, no middle CA, an [`ISTIOD`] intermediate
/// signed with SHA-256.
const PLAIN: Case = Case {
    name: "",
    root: CA,
    middle: None,
    intermediate: ISTIOD,
    ours: Accepted,
    root_key: "ec",
    intermediate_digest: "sha256",
};

/// Each case is [`PLAIN`] but for what its builder calls change: the table then reads as the
/// list of differences it is.
impl Case {
    const fn new(name: &'static str, ours: Ours) -> Self {
        Self { name, ours, ..PLAIN }
    }

    const fn root(self, root: &'static [&'static str]) -> Self {
        Self { root, ..self }
    }

    const fn middle(self, middle: &'static [&'static str]) -> Self {
        Self {
            middle: Some(middle),
            ..self
        }
    }

    const fn intermediate(self, intermediate: &'static [&'static str]) -> Self {
        Self { intermediate, ..self }
    }

    const fn root_key(self, root_key: &'static str) -> Self {
        Self { root_key, ..self }
    }

    const fn intermediate_digest(self, intermediate_digest: &'static str) -> Self {
        Self {
            intermediate_digest,
            ..self
        }
    }
}

fn sign(dir: &Workdir, name: &str, parent: &str, extensions: &[&str]) {
    sign_with(dir, name, parent, extensions, "sha256");
}

fn sign_with(dir: &Workdir, name: &str, parent: &str, extensions: &[&str], digest: &str) {
    let (key, csr, cnf) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.cnf"));
    dir.req_with_new_p256_key(&key, &csr, None, &format!("/CN={name}"), &[]);
    dir.write(&cnf, extensions.join("\n") + "\n");
    let (ca, ca_key) = (format!("{parent}.pem"), format!("{parent}.key"));
    let out = format!("{name}.pem");
    dir.sign(&csr, (&ca, &ca_key), "365", &cnf, &out, &[&format!("-{digest}")]);
}

/// The `cacerts` bundle of a case, as istiod reads it.
fn bundle(case: &Case) -> BTreeMap<String, Vec<u8>> {
    let dir = Workdir::new();
    if case.root_key == "ec" {
        dir.req_with_new_p256_key("root.key", "root.pem", Some(3650), "/CN=root", case.root);
    } else {
        let mut args = vec![
            "req",
            "-x509",
            "-days",
            "3650",
            "-newkey",
            case.root_key,
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=root",
        ];
        for extension in case.root {
            args.extend_from_slice(&["-addext", extension]);
        }
        dir.run(&args);
    }
    let parent = match case.middle {
        Some(extensions) => {
            sign(&dir, "middle", "root", extensions);
            "middle"
        }
        None => "root",
    };
    sign_with(&dir, "int", parent, case.intermediate, case.intermediate_digest);
    let middle = case.middle.map(|_| dir.read("middle.pem")).unwrap_or_default();
    cacerts(
        &dir.read("int.pem"),
        &dir.read("int.key"),
        &middle,
        &dir.read("root.pem"),
    )
}

/// Whether a workload certificate signed with the bundle verifies as its peers check it.
fn workload_accepted(data: &BTreeMap<String, Vec<u8>>) -> Result<(), String> {
    let leaf = workload_certificate(
        &data["ca-cert.pem"],
        &data["ca-key.pem"],
        &data["cert-chain.pem"],
        "spiffe://cluster.local/ns/default/sa/app",
    );
    workload_verifies(leaf.as_bytes(), b"", &data["root-cert.pem"])
}

#[test]
fn our_verdict_on_cacerts_agrees_with_gos_x509_verify() {
    let cases = [
        Case::new("intermediate under its root", Accepted),
        Case::new("root pathLen 0 (istiod loads it, its workloads fail)", Refused).root(&[PATHLEN_0, CA_KU]),
        Case::new("middle CA pathLen 0 above the intermediate", Refused).middle(ISTIOD),
        Case::new("root pathLen 1 above a middle CA and the intermediate", Refused)
            .root(&[PATHLEN_1, CA_KU])
            .middle(CA),
        Case::new("path lengths 2, 1, 0", Accepted)
            .root(&["basicConstraints=critical,CA:TRUE,pathlen:2", CA_KU])
            .middle(&[PATHLEN_1, CA_KU]),
        Case::new("middle certificate is not a CA", Refused).middle(&["basicConstraints=critical,CA:FALSE", CA_KU]),
        Case::new("middle CA without keyCertSign", Refused).middle(&[CA_TRUE, "keyUsage=critical,digitalSignature"]),
        Case::new("intermediate EKU clientAuth only", Refused).intermediate(&[PATHLEN_0, CA_KU, CLIENT_AUTH]),
        Case::new("middle CA EKU clientAuth only", Refused).middle(&[CA_TRUE, CA_KU, CLIENT_AUTH]),
        Case::new("middle CA EKU serverAuth and clientAuth", Accepted).middle(&[
            CA_TRUE,
            CA_KU,
            "extendedKeyUsage=serverAuth,clientAuth",
        ]),
        Case::new("root EKU clientAuth only", Refused).root(&[CA_TRUE, CA_KU, CLIENT_AUTH]),
        Case::new("intermediate signed with ECDSA-SHA1", Refused).intermediate_digest("sha1"),
        Case::new("RSA-1024 root signing with SHA-1", Refused)
            .root_key("rsa:1024")
            .intermediate_digest("sha1"),
        Case::new("RSA-1024 root signing with SHA-256", RefusedStricterThanGo).root_key("rsa:1024"),
        Case::new("RSA-3072 root signing with SHA-256", Accepted).root_key("rsa:3072"),
        Case::new("intermediate with an unknown critical extension", Refused).intermediate(&[
            PATHLEN_0,
            CA_KU,
            UNKNOWN_CRITICAL,
        ]),
        Case::new("middle CA with an unknown critical extension", Refused).middle(&[CA_TRUE, CA_KU, UNKNOWN_CRITICAL]),
        Case::new("root with an unknown critical extension", Refused).root(&[CA_TRUE, CA_KU, UNKNOWN_CRITICAL]),
        Case::new("unknown extension, not critical", Accepted).intermediate(&[
            PATHLEN_0,
            CA_KU,
            "1.3.6.1.4.1.55555.1=ASN1:NULL",
        ]),
        Case::new("critical certificate policies (Go handles them)", Accepted).intermediate(&[
            PATHLEN_0,
            CA_KU,
            "certificatePolicies=critical,2.5.29.32.0",
        ]),
    ];
    for case in &cases {
        let data = bundle(case);
        let ours = verify_bundle(&data, Timestamp::now());
        let istiod = istiod_loads(&data);
        let workloads = workload_accepted(&data);
        println!(
            "{}: ours {:?}, istiod {:?}, workloads {:?}",
            case.name,
            ours.as_ref().map(|_| ()).map_err(|p| &p.message),
            istiod,
            workloads
        );
        assert_eq!(ours.is_ok(), case.ours == Accepted, "{}: {:?}", case.name, ours.err());
        if case.ours == RefusedStricterThanGo {
            assert_eq!(
                (&istiod, &workloads),
                (&Ok(()), &Ok(())),
                "{}: refused only by our stricter rule, so Go accepts it",
                case.name
            );
        } else if ours.is_ok() {
            assert_eq!(
                (&istiod, &workloads),
                (&Ok(()), &Ok(())),
                "{}: accepted, so Go must agree",
                case.name
            );
        } else {
            assert!(
                istiod.is_err() || workloads.is_err(),
                "{}: refused, so istiod or its workloads must refuse too",
                case.name
            );
        }
    }
}

/// An issuer whose CA has pathLen 0 cannot give istiod a working intermediate: Go refuses the
/// workload chains under any sub-CA it signs. The issuer says so (not Ready, naming the
/// certificate and what to do), its requests wait instead of getting such an intermediate, and
/// once the Secret holds a CA with room the same request is issued — and Go accepts the result.
#[tokio::test]
async fn an_issuer_whose_ca_path_length_forbids_a_sub_ca_is_not_ready_and_signs_nothing() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};
    use mesh_ca_issuer::api::issuer::MeshCAIssuer;
    use std::time::Duration;
    use support::cert_manager::{self as cm, IntermediateRequest};
    use support::issuer;
    use support::objects::create_tls_secret;

    let (_lock, client, ns) = support::namespaced_test("pathlen").await;
    let _controller = support::RunningController::in_namespace(&ns.name).await;
    // A self-signed root named `cn` whose basicConstraints are `constraints`.
    let root_ca = |cn: &str, constraints: &str| {
        let dir = Workdir::new();
        dir.req_with_new_p256_key("root.key", "root.pem", Some(3650), cn, &[constraints, CA_KU]);
        dir
    };
    let exhausted = root_ca("/CN=exhausted root", PATHLEN_0);
    let secrets: Api<Secret> = ns.api();
    create_tls_secret(&secrets, "ca", &exhausted.read("root.pem"), &exhausted.read("root.key")).await;
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuer::create(&issuers, "mesh", issuer::from_secret("ca")).await;
    let timeout = Duration::from_secs(30);
    let message = support::wait_issuer_reason(&issuers, "mesh", "PathLenExhausted", timeout).await;
    assert!(message.contains("CN=exhausted root has pathLen 0"), "{message}");

    let key = cm::request_and_approve(&client, &ns.name, &IntermediateRequest::istiod("istiod", "mesh")).await;
    let waiting = cm::wait_for_reason(&client, &ns.name, "istiod", &["Pending"], timeout).await;
    let status = waiting.status.unwrap();
    assert!(status.certificate.is_none(), "nothing signed");

    // A root with room for one sub-CA: the issuer turns Ready and the request is issued.
    let roomy = root_ca("/CN=roomy root", PATHLEN_1);
    let replacement = serde_json::json!({
        "metadata": {"name": "ca"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": roomy.read("root.pem"), "tls.key": roomy.read("root.key")}
    });
    let mut replacement: Secret = serde_json::from_value(replacement).unwrap();
    replacement.metadata.resource_version = secrets.get("ca").await.unwrap().metadata.resource_version;
    secrets
        .replace("ca", &PostParams::default(), &replacement)
        .await
        .unwrap();
    let issued = cm::wait_for_reason(&client, &ns.name, "istiod", &["Issued"], timeout).await;
    let status = issued.status.unwrap();
    let intermediate = String::from_utf8(status.certificate.unwrap()).unwrap();
    let root = String::from_utf8(status.ca.unwrap()).unwrap();
    let data = cacerts(&intermediate, &key, "", &root);
    assert_eq!(istiod_loads(&data), Ok(()));
    assert_eq!(workload_accepted(&data), Ok(()));
}
