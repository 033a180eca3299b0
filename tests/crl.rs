//! The CRLs `pki::crl` signs are CRLs the independent judges accept as istiod and its proxies
//! would: Go's `crypto/x509` with istiod's `ca-crl.pem` rule (every CA of `cert-chain.pem` needs
//! a CRL it signed, else the whole bundle is refused), `openssl crl -verify`, and
//! `openssl verify -crl_check_all` of a workload certificate, revoked or not. The PKI is made
//! by openssl; only the CRLs are ours.

mod support;

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};
use mesh_ca_issuer::pki::crl::{self, Crl, CrlSpec, Reason, Revoked};
use mesh_ca_issuer::pki::sign::CaSigner;
use mesh_ca_issuer::pki::{Certificate, SigningKey};
use support::goverify;
use support::openssl::{Workdir, workload_certificate};

const HOUR: SignedDuration = SignedDuration::from_hours(1);

/// A root and an istiod intermediate made by openssl, as `cacerts` holds them.
struct Pki {
    dir: Workdir,
    root: Certificate,
    root_key: SigningKey,
    intermediate: Certificate,
    intermediate_key: SigningKey,
}

impl Pki {
    fn new() -> Self {
        let dir = support::openssl::root_and_intermediate(
            "CA:TRUE",
            "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\n",
        );
        let cert = |file: &str| {
            Certificate::parse_pem_bundle(dir.read(file).as_bytes(), "pem")
                .unwrap()
                .remove(0)
        };
        let key = |file: &str| SigningKey::from_pem(dir.read(file).as_bytes()).unwrap();
        Self {
            root: cert("root.pem"),
            root_key: key("root.key"),
            intermediate: cert("int.pem"),
            intermediate_key: key("int.key"),
            dir,
        }
    }

    fn cacerts(&self, crls: &[&Crl]) -> BTreeMap<String, Vec<u8>> {
        let read = |file: &str| self.dir.read(file);
        let mut data = goverify::cacerts(&read("int.pem"), &read("int.key"), "", &read("root.pem"));
        if !crls.is_empty() {
            let pem: String = crls.iter().map(|c| c.to_pem()).collect();
            data.insert("ca-crl.pem".to_string(), pem.into_bytes());
        }
        data
    }

    fn crl(&self, of_root: bool, number: u64, revoked: Vec<Revoked>) -> Crl {
        let (certificate, key) = if of_root {
            (&self.root, &self.root_key)
        } else {
            (&self.intermediate, &self.intermediate_key)
        };
        let now = Timestamp::now();
        let spec = CrlSpec {
            number,
            this_update: now - HOUR,
            next_update: now + HOUR * 72,
            revoked,
        };
        crl::issue(&spec, &CaSigner { certificate, key }).unwrap()
    }
}

/// openssl's verdict on `leaf` (first block of `leaf_and_chain`) with every CRL checked.
fn openssl_verify_with_crls(pki: &Pki, leaf_and_chain: &str, crls: &[&Crl]) -> (bool, String) {
    let pem: String = crls.iter().map(|c| c.to_pem()).collect();
    support::openssl::verify_with_crls(
        leaf_and_chain,
        pki.dir.read("int.pem").as_bytes(),
        pki.dir.read("root.pem").as_bytes(),
        pem.as_bytes(),
    )
}

#[test]
fn our_crls_pass_istiods_rule_openssl_and_revoke_what_they_list() {
    let pki = Pki::new();
    let (root_crl, int_crl) = (pki.crl(true, 1, vec![]), pki.crl(false, 1, vec![]));

    // istiod's rule, in Go: a CRL for every CA of the chain, or the bundle is refused.
    assert_eq!(goverify::istiod_loads(&pki.cacerts(&[&root_crl, &int_crl])), Ok(()));
    let missing = goverify::istiod_loads(&pki.cacerts(&[&root_crl])).unwrap_err();
    assert!(
        missing.contains("missing CRL signed by certificates") && missing.contains("CN=Intermediate"),
        "{missing}"
    );
    assert_eq!(
        goverify::istiod_loads(&pki.cacerts(&[])),
        Ok(()),
        "no CRL: nothing to check"
    );

    // openssl checks each CRL's signature against its CA.
    for (crl, ca) in [(&root_crl, "root.pem"), (&int_crl, "int.pem")] {
        let dir = Workdir::new();
        dir.write("crl.pem", crl.to_pem()).write("ca.pem", pki.dir.read(ca));
        let (ok, said) = dir.try_run(&["crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"]);
        assert!(ok && said.contains("verify OK"), "{ca}: {said}");
    }

    // A workload certificate verifies with every CRL checked, until its serial is listed.
    let data = pki.cacerts(&[]);
    let workload = workload_certificate(
        &data["ca-cert.pem"],
        &data["ca-key.pem"],
        &data["cert-chain.pem"],
        "spiffe://cluster.local/ns/default/sa/x",
    );
    let (ok, said) = openssl_verify_with_crls(&pki, &workload, &[&root_crl, &int_crl]);
    assert!(ok, "not revoked: {said}");
    let serial = Certificate::parse_pem_bundle(workload.as_bytes(), "workload")
        .unwrap()
        .remove(0)
        .serial_hex();
    let revoked = pki.crl(
        false,
        2,
        vec![Revoked {
            serial: crl::parse_serial(&serial).unwrap(),
            reason: Reason::KeyCompromise,
            revoked_at: Timestamp::now() - HOUR,
        }],
    );
    assert_eq!(
        revoked.revoked_serials(),
        vec![serial.to_ascii_lowercase().replace(':', "")]
    );
    let (ok, said) = openssl_verify_with_crls(&pki, &workload, &[&root_crl, &revoked]);
    assert!(!ok && said.contains("certificate revoked"), "{said}");
    // The bundle with the new CRL still loads in istiod: revocation never blocks cacerts.
    assert_eq!(goverify::istiod_loads(&pki.cacerts(&[&root_crl, &revoked])), Ok(()));
}
