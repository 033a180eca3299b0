//! The SPIFFE bundles we write are bundles an independent SPIFFE implementation reads as we
//! meant them: go-spiffe's `spiffebundle.Parse` (what SPIRE and every go-spiffe client use),
//! built from its module by `hack/test` (`hack/go/spiffe-bundle`). And what go-spiffe refuses,
//! we refuse too. The roots are made by openssl.

mod support;

use std::time::Duration;

use jiff::Timestamp;
use mesh_ca_issuer::pki::Certificate;
use mesh_ca_issuer::spiffe_bundle;
use support::spiffe::go_spiffe;

/// A self-signed root CA made by openssl with key `key` (`rsa:2048`, `P-256`, ...).
fn root(key: &str) -> Certificate {
    let dir = support::openssl::Workdir::new();
    let mut args = vec![
        "req", "-x509", "-nodes", "-keyout", "root.key", "-out", "root.pem", "-days", "30",
    ];
    if let Some(curve) = key.strip_prefix("P-") {
        args.extend(["-newkey", "ec", "-pkeyopt"]);
        args.push(if curve == "256" {
            "ec_paramgen_curve:P-256"
        } else {
            "ec_paramgen_curve:P-384"
        });
    } else {
        args.extend(["-newkey", key]);
    }
    let subject = format!("/CN={key} root");
    args.extend(["-subj", &subject]);
    args.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    dir.run(&args);
    Certificate::parse_pem_bundle(dir.read("root.pem").as_bytes(), "root")
        .unwrap()
        .remove(0)
}

/// Our roots of every key type we run under, during a rotation (two roots) and alone: go-spiffe
/// reads exactly those roots, the sequence and the refresh hint.
#[test]
fn go_spiffe_reads_our_bundles_as_we_wrote_them() {
    let cases = [
        vec![root("P-256")],
        vec![root("P-384"), root("P-256")],
        vec![root("rsa:2048"), root("rsa:3072")],
    ];
    for (i, roots) in cases.iter().enumerate() {
        let sequence = 40 + i as u64;
        let body = spiffe_bundle::encode(roots, sequence, Duration::from_secs(300)).unwrap();
        let read = go_spiffe("cluster.local", &body).unwrap_or_else(|e| panic!("case {i}: go-spiffe refuses: {e}"));
        let mut expected: Vec<String> = roots.iter().map(|r| format!("x509 {}", r.fingerprint())).collect();
        expected.push(format!("sequence {sequence}"));
        expected.push("refresh_hint 300".into());
        assert_eq!(read, expected, "case {i}");
        // And we read back what we wrote.
        let ours = spiffe_bundle::decode(body.as_bytes(), None, Timestamp::now()).unwrap();
        assert_eq!(&ours.roots, roots, "case {i}");
    }
    // With our CRL member (docs/revocation.md, peers' CRLs), go-spiffe reads the same roots:
    // it ignores a member it does not know.
    let roots = vec![root("P-256")];
    let revocation = spiffe_bundle::Revocation {
        cas: vec![root("P-384")],
        crls: Vec::new(),
    };
    let body = spiffe_bundle::encode_with_revocation(&roots, 50, Duration::from_secs(300), Some(&revocation)).unwrap();
    assert!(body.contains(spiffe_bundle::REVOCATION_MEMBER));
    let read = go_spiffe("cluster.local", &body).unwrap_or_else(|e| panic!("go-spiffe refuses our CRL member: {e}"));
    assert_eq!(
        read,
        vec![
            format!("x509 {}", roots[0].fingerprint()),
            "sequence 50".into(),
            "refresh_hint 300".into()
        ]
    );
}

/// Bundles go-spiffe refuses are refused by us too (we refuse more: leaves, weak keys, roots
/// that are not self-signed, which go-spiffe takes as they are).
#[test]
fn what_go_spiffe_refuses_we_refuse() {
    let good = root("P-256");
    let body = spiffe_bundle::encode(std::slice::from_ref(&good), 1, Duration::from_secs(60)).unwrap();
    let mut two_certificates: serde_json::Value = serde_json::from_str(&body).unwrap();
    let x5c = two_certificates["keys"][0]["x5c"][0].clone();
    two_certificates["keys"][0]["x5c"] = serde_json::json!([x5c.clone(), x5c]);
    let mut no_x5c: serde_json::Value = serde_json::from_str(&body).unwrap();
    if let Some(key) = no_x5c["keys"][0].as_object_mut() {
        key.remove("x5c");
    }
    let cases = [
        ("not JSON", "<html>".to_string()),
        ("two certificates in x5c", two_certificates.to_string()),
        ("no x5c", no_x5c.to_string()),
    ];
    for (case, body) in cases {
        assert!(
            go_spiffe("cluster.local", &body).is_err(),
            "{case}: go-spiffe accepts it"
        );
        assert!(
            spiffe_bundle::decode(body.as_bytes(), None, Timestamp::now()).is_err(),
            "{case}: we accept it"
        );
    }
}
