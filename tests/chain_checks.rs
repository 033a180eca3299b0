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
use support::goverify::{istiod_loads, workload_verifies};
use support::openssl::{Workdir, workload_certificate};

const CA_KU: &str = "keyUsage=critical,keyCertSign,cRLSign,digitalSignature";

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

/// The fields most cases share: a P-256 root, an intermediate signed with SHA-256.
const PLAIN: Case = Case {
    name: "",
    root: &[],
    middle: None,
    intermediate: &[],
    ours: Accepted,
    root_key: "ec",
    intermediate_digest: "sha256",
};

fn sign(dir: &Workdir, name: &str, parent: &str, extensions: &[&str]) {
    sign_with(dir, name, parent, extensions, "sha256");
}

fn sign_with(dir: &Workdir, name: &str, parent: &str, extensions: &[&str], digest: &str) {
    dir.req_with_new_p256_key(
        &format!("{name}.key"),
        &format!("{name}.csr"),
        None,
        &format!("/CN={name}"),
        &[],
    );
    dir.write(format!("{name}.cnf").as_str(), extensions.join("\n") + "\n");
    dir.run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{parent}.pem"),
        "-CAkey",
        &format!("{parent}.key"),
        "-CAcreateserial",
        &format!("-{digest}"),
        "-days",
        "365",
        "-extfile",
        &format!("{name}.cnf"),
        "-out",
        &format!("{name}.pem"),
    ]);
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
    let (int, root) = (dir.read("int.pem"), dir.read("root.pem"));
    BTreeMap::from([
        ("ca-cert.pem".to_string(), int.clone().into_bytes()),
        ("ca-key.pem".to_string(), dir.read("int.key").into_bytes()),
        (
            "cert-chain.pem".to_string(),
            format!("{int}{middle}{root}").into_bytes(),
        ),
        ("root-cert.pem".to_string(), root.into_bytes()),
    ])
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
        Case {
            name: "intermediate under its root",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: None,
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Accepted,
            ..PLAIN
        },
        Case {
            name: "root pathLen 0 (istiod loads it, its workloads fail)",
            root: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            middle: None,
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "middle CA pathLen 0 above the intermediate",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "root pathLen 1 above a middle CA and the intermediate",
            root: &["basicConstraints=critical,CA:TRUE,pathlen:1", CA_KU],
            middle: Some(&["basicConstraints=critical,CA:TRUE", CA_KU]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "path lengths 2, 1, 0",
            root: &["basicConstraints=critical,CA:TRUE,pathlen:2", CA_KU],
            middle: Some(&["basicConstraints=critical,CA:TRUE,pathlen:1", CA_KU]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Accepted,
            ..PLAIN
        },
        Case {
            name: "middle certificate is not a CA",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&["basicConstraints=critical,CA:FALSE", CA_KU]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "middle CA without keyCertSign",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,digitalSignature",
            ]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "intermediate EKU clientAuth only",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: None,
            intermediate: &[
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                CA_KU,
                "extendedKeyUsage=clientAuth",
            ],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "middle CA EKU clientAuth only",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&[
                "basicConstraints=critical,CA:TRUE",
                CA_KU,
                "extendedKeyUsage=clientAuth",
            ]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "middle CA EKU serverAuth and clientAuth",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&[
                "basicConstraints=critical,CA:TRUE",
                CA_KU,
                "extendedKeyUsage=serverAuth,clientAuth",
            ]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Accepted,
            ..PLAIN
        },
        Case {
            name: "root EKU clientAuth only",
            root: &[
                "basicConstraints=critical,CA:TRUE",
                CA_KU,
                "extendedKeyUsage=clientAuth",
            ],
            middle: None,
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "intermediate signed with ECDSA-SHA1",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            intermediate_digest: "sha1",
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "RSA-1024 root signing with SHA-1",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            root_key: "rsa:1024",
            intermediate_digest: "sha1",
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "RSA-1024 root signing with SHA-256",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            root_key: "rsa:1024",
            ours: RefusedStricterThanGo,
            ..PLAIN
        },
        Case {
            name: "RSA-3072 root signing with SHA-256",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            root_key: "rsa:3072",
            ours: Accepted,
            ..PLAIN
        },
        Case {
            name: "intermediate with an unknown critical extension",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &[
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                CA_KU,
                "1.3.6.1.4.1.55555.1=critical,ASN1:NULL",
            ],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "middle CA with an unknown critical extension",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            middle: Some(&[
                "basicConstraints=critical,CA:TRUE",
                CA_KU,
                "1.3.6.1.4.1.55555.1=critical,ASN1:NULL",
            ]),
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "root with an unknown critical extension",
            root: &[
                "basicConstraints=critical,CA:TRUE",
                CA_KU,
                "1.3.6.1.4.1.55555.1=critical,ASN1:NULL",
            ],
            intermediate: &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
            ours: Refused,
            ..PLAIN
        },
        Case {
            name: "unknown extension, not critical",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &[
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                CA_KU,
                "1.3.6.1.4.1.55555.1=ASN1:NULL",
            ],
            ours: Accepted,
            ..PLAIN
        },
        Case {
            name: "critical certificate policies (Go handles them)",
            root: &["basicConstraints=critical,CA:TRUE", CA_KU],
            intermediate: &[
                "basicConstraints=critical,CA:TRUE,pathlen:0",
                CA_KU,
                "certificatePolicies=critical,2.5.29.32.0",
            ],
            ours: Accepted,
            ..PLAIN
        },
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
    use mesh_ca_issuer::api::issuer::{IssuerSpec, LocalCA, MeshCAIssuer};
    use std::time::Duration;
    use support::cert_manager::{self as cm, IntermediateRequest};

    let (_lock, client, ns) = support::namespaced_test("pathlen").await;
    let _controller = support::RunningController::in_namespace(&ns.name).await;
    let ca_secret = |dir: &Workdir| -> Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ca"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": dir.read("root.pem"), "tls.key": dir.read("root.key")}
        }))
        .unwrap()
    };
    let exhausted = Workdir::new();
    exhausted.req_with_new_p256_key(
        "root.key",
        "root.pem",
        Some(3650),
        "/CN=exhausted root",
        &["basicConstraints=critical,CA:TRUE,pathlen:0", CA_KU],
    );
    let secrets: Api<Secret> = ns.api();
    secrets
        .create(&PostParams::default(), &ca_secret(&exhausted))
        .await
        .unwrap();
    let spec = IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: "ca".into(),
            bootstrap: None,
        }),
        ..Default::default()
    };
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuers
        .create(&PostParams::default(), &MeshCAIssuer::new("mesh", spec))
        .await
        .unwrap();
    let timeout = Duration::from_secs(30);
    let message = support::wait_issuer_reason(&issuers, "mesh", "PathLenExhausted", timeout).await;
    assert!(message.contains("CN=exhausted root has pathLen 0"), "{message}");

    let key = cm::request_and_approve(&client, &ns.name, &IntermediateRequest::istiod("istiod", "mesh")).await;
    let waiting = cm::wait_for_reason(&client, &ns.name, "istiod", &["Pending"], timeout).await;
    let status = waiting.status.unwrap();
    assert!(status.certificate.is_none(), "nothing signed");

    // A root with room for one sub-CA: the issuer turns Ready and the request is issued.
    let roomy = Workdir::new();
    roomy.req_with_new_p256_key(
        "root.key",
        "root.pem",
        Some(3650),
        "/CN=roomy root",
        &["basicConstraints=critical,CA:TRUE,pathlen:1", CA_KU],
    );
    let mut replacement = ca_secret(&roomy);
    replacement.metadata.resource_version = secrets.get("ca").await.unwrap().metadata.resource_version;
    secrets
        .replace("ca", &PostParams::default(), &replacement)
        .await
        .unwrap();
    let issued = cm::wait_for_reason(&client, &ns.name, "istiod", &["Issued"], timeout).await;
    let status = issued.status.unwrap();
    let intermediate = String::from_utf8(status.certificate.unwrap()).unwrap();
    let root = String::from_utf8(status.ca.unwrap()).unwrap();
    let data = BTreeMap::from([
        ("ca-cert.pem".to_string(), intermediate.clone().into_bytes()),
        ("ca-key.pem".to_string(), key.into_bytes()),
        (
            "cert-chain.pem".to_string(),
            format!("{intermediate}{root}").into_bytes(),
        ),
        ("root-cert.pem".to_string(), root.into_bytes()),
    ]);
    assert_eq!(istiod_loads(&data), Ok(()));
    assert_eq!(workload_accepted(&data), Ok(()));
}
