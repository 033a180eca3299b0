//! A short property-test run of what `hack/fuzz` fuzzes (`mesh_ca_issuer::fuzzing`): real
//! certificates, keys and CSRs, mutated (bytes flipped, cut, spliced, PEM re-wrapped), and
//! arbitrary strings. Each harness asserts its own invariants besides "no panic"; the crashing
//! inputs fuzzing found are replayed here by name.

mod support;

use std::sync::OnceLock;

use mesh_ca_issuer::api::issuer::RootBootstrap;
use mesh_ca_issuer::fuzzing::{self, SEPARATOR};
use mesh_ca_issuer::pki::sign::self_signed_root;
use mesh_ca_issuer::pki::{CertificateSigningRequest, SigningKey};
use proptest::prelude::*;

/// Real inputs to mutate: a root, an intermediate under it with its key, and the CSR it came
/// from, as PEM.
struct Seeds {
    root: String,
    intermediate: String,
    intermediate_key: String,
    csr: String,
}

fn seeds() -> &'static Seeds {
    static SEEDS: OnceLock<Seeds> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let now = fuzzing::now();
        let (root, root_key) =
            self_signed_root(&RootBootstrap::default(), now - jiff::SignedDuration::from_hours(1)).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        params.distinguished_name.push(rcgen::DnType::CommonName, "istiod");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://cluster.local/ns/istio-system/sa/istiod".try_into().unwrap(),
        )];
        let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
        let csr = CertificateSigningRequest::from_pem(csr_pem.as_bytes()).unwrap();
        let plan = support::sign::plan(
            true,
            now - jiff::SignedDuration::from_secs(60),
            now + jiff::SignedDuration::from_hours(2160),
            std::time::Duration::from_secs(2160 * 3600),
        );
        let intermediate = support::sign::signed(&csr, &plan, &root, &root_key);
        let intermediate_key = SigningKey::from_pem(key.serialize_pem().as_bytes()).unwrap();
        Seeds {
            root: root.to_pem(),
            intermediate: intermediate.to_pem(),
            intermediate_key: intermediate_key.to_pem(),
            csr: csr_pem,
        }
    })
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(SEPARATOR)
}

/// Mutations of a seed: flip bytes, cut, or insert bytes at some positions.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len().max(1);
    (
        prop::collection::vec((0..len, any::<u8>()), 0..4),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(flips, cut, insert)| {
            let mut out = seed.clone();
            for (at, byte) in flips {
                if let Some(b) = out.get_mut(at) {
                    *b ^= byte;
                }
            }
            out.truncate(cut.max(out.len() / 2));
            let at = cut.min(out.len());
            out.splice(at..at, insert);
            out
        })
}

/// The DER inside a PEM seed, mutated, and wrapped again as PEM half of the time: so the
/// mutations reach the ASN.1 parsers, not only the PEM armour.
fn mutated_der(pem_text: &str) -> impl Strategy<Value = Vec<u8>> {
    let der = pem::parse(pem_text).unwrap().into_contents();
    let tag = pem::parse(pem_text).unwrap().tag().to_string();
    (mutated(der), any::<bool>()).prop_map(move |(der, wrap)| {
        if wrap {
            pem::encode(&pem::Pem::new(tag.clone(), der)).into_bytes()
        } else {
            der
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn csr_decoding_and_signing_hold_for_mutated_csrs(data in mutated_der(&seeds().csr)) {
        fuzzing::csr(&data);
    }

    #[test]
    fn pem_bundles_round_trip_for_mutated_certificates(data in mutated(format!("{}{}", seeds().intermediate, seeds().root).into_bytes())) {
        fuzzing::pem_bundle(&data);
    }

    #[test]
    fn chains_hold_for_mutated_certificates(first in mutated_der(&seeds().intermediate), root in mutated_der(&seeds().root), keep_root in any::<bool>()) {
        let root = if keep_root { seeds().root.as_bytes().to_vec() } else { root };
        fuzzing::chain(&join(&[&first, &root]));
    }

    #[test]
    fn cacerts_sources_hold_for_mutated_secrets(crt in mutated(seeds().intermediate.clone().into_bytes()), key in prop_oneof![Just(seeds().intermediate_key.clone().into_bytes()), mutated(seeds().intermediate_key.clone().into_bytes())], with_ca in any::<bool>()) {
        let seed = seeds();
        let ca = if with_ca { seed.root.as_bytes() } else { b"".as_slice() };
        fuzzing::cacerts_source(&join(&[&crt, &key, ca]));
    }

    #[test]
    fn durations_round_trip(text in "[0-9.]{0,6}(ns|us|µs|ms|s|m|h|x)?([0-9.]{0,4}(h|m|s))?") {
        fuzzing::duration(text.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::csr(&data);
        fuzzing::pem_bundle(&data);
        fuzzing::chain(&data);
        fuzzing::cacerts_source(&data);
        fuzzing::duration(&data);
    }
}

/// The unmutated seeds pass every harness (and the chain and source harnesses reach their
/// deepest assertions with them).
#[test]
fn real_inputs_pass_every_harness() {
    let s = seeds();
    fuzzing::csr(s.csr.as_bytes());
    fuzzing::pem_bundle(format!("{}{}", s.intermediate, s.root).as_bytes());
    fuzzing::chain(&join(&[s.intermediate.as_bytes(), s.root.as_bytes()]));
    fuzzing::cacerts_source(&join(&[
        s.intermediate.as_bytes(),
        s.intermediate_key.as_bytes(),
        s.root.as_bytes(),
    ]));
    fuzzing::duration(b"2160h");
}

/// Inputs on which `hack/fuzz` found a failing invariant, replayed by name.
#[test]
fn inputs_fuzzing_found_hold_now() {
    // duration: crash-bf61f74beb32bb9295ba8cd10cc85374bd29befb (float rounding lost a second).
    fuzzing::duration(b"9555555555s");
}
