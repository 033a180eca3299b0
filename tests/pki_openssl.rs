//! Our signing checked by an independent implementation: roots made by `openssl` in the key
//! formats cert-manager and operators actually use (PKCS#1 RSA, SEC1 EC, PKCS#8), intermediates
//! signed by this crate, and `openssl verify` / `openssl x509 -text` as the judges.

mod support;

use support::openssl::Workdir;

use jiff::{SignedDuration, Timestamp};
use mesh_ca_issuer::api::issuer::IssuancePolicy;
use mesh_ca_issuer::pki::policy::{CaLifetime, RequestFacts, plan, with_defaults};
use mesh_ca_issuer::pki::{Certificate, CertificateSigningRequest, SigningKey};

/// An openssl-made root with a three-attribute UTF8 subject, its key in the given form.
fn openssl_root(dir: &Workdir, key_args: &[&str], convert: Option<&[&str]>) -> (Certificate, SigningKey) {
    let mut genkey = vec!["genpkey"];
    genkey.extend_from_slice(key_args);
    genkey.extend_from_slice(&["-out", "root.pkcs8.key"]);
    dir.run(&genkey);
    let key_file = match convert {
        Some(args) => {
            let mut a = args.to_vec();
            a.extend_from_slice(&["-in", "root.pkcs8.key", "-out", "root.key"]);
            dir.run(&a);
            "root.key"
        }
        None => "root.pkcs8.key",
    };
    dir.run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        key_file,
        "-days",
        "3650",
        "-utf8",
        "-subj",
        "/O=Example Corp/OU=Platform Security/CN=Example Mesh Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "root.crt",
    ]);
    let cert = Certificate::parse_pem_bundle(&std::fs::read(dir.path().join("root.crt")).unwrap(), "root.crt")
        .unwrap()
        .remove(0);
    let key = SigningKey::from_pem(&std::fs::read(dir.path().join(key_file)).unwrap()).unwrap();
    assert!(key.matches(&cert));
    (cert, key)
}

/// An istiod-like CSR made by openssl (so the CSR side is independent of our code too).
fn openssl_csr(dir: &Workdir) -> CertificateSigningRequest {
    dir.new_p256_key("istiod.key");
    dir.run(&[
        "req",
        "-new",
        "-key",
        "istiod.key",
        "-subj",
        "/O=cluster.local/CN=istiod",
        "-addext",
        "keyUsage=critical,keyCertSign,digitalSignature",
        "-addext",
        "subjectAltName=URI:spiffe://cluster.local/ns/istio-system/sa/istiod",
        "-out",
        "istiod.csr",
    ]);
    CertificateSigningRequest::from_pem(&std::fs::read(dir.path().join("istiod.csr")).unwrap()).unwrap()
}

fn sign_and_verify(key_args: &[&str], convert: Option<&[&str]>, expected_sig: &str) {
    let dir = Workdir::new();
    let (root, root_key) = openssl_root(&dir, key_args, convert);
    let csr = openssl_csr(&dir);
    let now = Timestamp::now();
    let ca = CaLifetime {
        not_before: root.not_before(),
        not_after: root.not_after(),
        max_validity: None,
    };
    let facts = RequestFacts {
        is_ca: Some(true),
        duration: Some("720h"),
    };
    // The default policy as the controller applies it (`--trust-domain cluster.local`).
    let policy = with_defaults(&IssuancePolicy::default(), "cluster.local");
    let the_plan = plan(&csr, &facts, &policy, &ca, now).unwrap();
    let cert = support::sign::signed(&csr, &the_plan, &root, &root_key);
    std::fs::write(dir.path().join("intermediate.crt"), cert.to_pem()).unwrap();

    // The independent verdict: the chain verifies and the intermediate can act as a CA.
    let verdict = dir.run(&["verify", "-x509_strict", "-CAfile", "root.crt", "intermediate.crt"]);
    assert_eq!(verdict.trim(), "intermediate.crt: OK");
    // A leaf signed by the intermediate (as istiod would) verifies through it.
    dir.req_with_new_p256_key("leaf.key", "leaf.csr", None, "/CN=workload", &[]);
    std::fs::write(
        dir.path().join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=URI:spiffe://cluster.local/ns/default/sa/app\n",
    )
    .unwrap();
    dir.sign(
        "leaf.csr",
        ("intermediate.crt", "istiod.key"),
        "1",
        "leaf.ext",
        "leaf.crt",
        &[],
    );
    let leaf = dir.run(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        "root.crt",
        "-untrusted",
        "intermediate.crt",
        "leaf.crt",
    ]);
    assert_eq!(leaf.trim(), "leaf.crt: OK");

    let text = dir.run(&["x509", "-in", "intermediate.crt", "-noout", "-text"]);
    assert!(
        text.contains("X509v3 Basic Constraints: critical\n                CA:TRUE, pathlen:0"),
        "{text}"
    );
    assert!(
        text.contains("X509v3 Key Usage: critical\n                Digital Signature, Certificate Sign, CRL Sign"),
        "{text}"
    );
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        !text.contains("Extended Key Usage"),
        "no EKU on an istiod intermediate: {text}"
    );
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/istio-system/sa/istiod"),
        "{text}"
    );
    assert!(text.contains(&format!("Signature Algorithm: {expected_sig}")), "{text}");
    assert!(
        text.contains("Issuer: O = Example Corp, OU = Platform Security, CN = Example Mesh Root CA"),
        "{text}"
    );
    assert!(text.contains("Subject: O = cluster.local, CN = istiod"), "{text}");
    // 720h requested: notAfter about 30 days out.
    let expected = now + SignedDuration::from_hours(720);
    assert_eq!(cert.not_after(), Timestamp::from_second(expected.as_second()).unwrap());
}

#[test]
fn rsa_root_with_pkcs1_key_signs_a_verifiable_intermediate() {
    sign_and_verify(
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        Some(&["rsa", "-traditional"]),
        "sha256WithRSAEncryption",
    );
}

#[test]
fn ecdsa_p384_root_with_sec1_key_signs_a_verifiable_intermediate() {
    sign_and_verify(
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        Some(&["ec"]),
        "ecdsa-with-SHA384",
    );
}

#[test]
fn ecdsa_p256_root_with_pkcs8_key_signs_a_verifiable_intermediate() {
    sign_and_verify(
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        None,
        "ecdsa-with-SHA256",
    );
}
