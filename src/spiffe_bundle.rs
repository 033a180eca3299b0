//! SPIFFE trust bundles, as the SPIFFE Trust Domain and Bundle standard (§4) writes them: a
//! JWK Set whose `x509-svid` keys each carry one root CA certificate in `x5c`, with the key's
//! public parameters, plus `spiffe_sequence` and `spiffe_refresh_hint`. [`encode`] writes this
//! cluster's own roots for a bundle endpoint; [`decode`] reads a peer's bundle and refuses it,
//! by name, unless every root in it is fit to be trusted mesh-wide. Pure: bytes in, bytes or a
//! verdict out.
//!
//! Only `x509-svid` keys matter here; `jwt-svid` keys (JWT authorities) are skipped, as a
//! workload mesh trusts X.509 roots only.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::pki::crl::Crl;
use crate::pki::{Certificate, strength};

/// The largest bundle body accepted, in bytes: a bundle of a few roots is a few KiB.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// The JWK `use` of an X.509 authority (a root that signs X.509-SVIDs).
pub const X509_SVID_USE: &str = "x509-svid";
/// The most keys a bundle may hold: a trust domain has one root, two during a rotation.
pub const MAX_KEYS: usize = 32;

/// The bundle's member that carries the serving cluster's CRLs. Ours: a reader that does not
/// know it ignores it, as RFC 7517 (§5) asks of a JWK Set's unknown members.
pub const REVOCATION_MEMBER: &str = "meshca_revocation";
/// The most CAs, and the most CRLs, that member may carry: a chain has a few CAs.
pub const MAX_REVOCATION_ENTRIES: usize = 16;

/// A peer's bundle, checked: its roots in the order given, and what it says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub roots: Vec<Certificate>,
    pub sequence: Option<u64>,
    pub refresh_hint: Option<Duration>,
    /// The peer's CRLs ([`REVOCATION_MEMBER`]): none when it writes none, or why the member
    /// could not be read. An unreadable member never refuses the roots: trust must not stop
    /// following a peer's rotation over its CRLs.
    pub revocation: Option<Result<Revocation, String>>,
}

/// What a cluster's bundle carries for revocation: the CAs of its chain below its roots, and
/// the CRL of every CA of its chain, roots included (its `ca-crl.pem`). A proxy that checks
/// CRLs (Envoy) needs a CRL of every CA of a peer workload's chain, and a CRL can be checked
/// only with its CA's certificate. Nothing here is trusted on its own: the reader checks each
/// CA against the bundle's roots and each CRL against its CA.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Revocation {
    pub cas: Vec<Certificate>,
    pub crls: Vec<Crl>,
}

/// Why a fetched bundle is refused (the last good one is kept). Never carries the body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the bundle is {bytes} bytes; at most {MAX_BUNDLE_BYTES} are accepted")]
    TooLarge { bytes: usize },
    #[error("the bundle is not JSON: {0}")]
    NotJson(String),
    #[error("the bundle is not a JWK Set: {0}")]
    NotAJwkSet(String),
    #[error("the bundle holds no x509-svid key: a bundle without roots would trust nothing")]
    Empty,
    #[error("the bundle holds {count} keys; at most {MAX_KEYS} are accepted")]
    TooManyKeys { count: usize },
    #[error("key {index} of the bundle is refused: {why}")]
    Key { index: usize, why: String },
    #[error(
        "the bundle's spiffe_sequence {got} is lower than {last}, the last one accepted: an older bundle (a rollback) is never taken"
    )]
    Rollback { got: u64, last: u64 },
}

/// The JWK Set for `roots`: one `x509-svid` key per root, `spiffe_sequence` and
/// `spiffe_refresh_hint` (whole seconds, at least 1). Fails only on a root whose key no JWK
/// can carry here (neither RSA nor EC P-256/P-384), which a root we run under never is.
pub fn encode(roots: &[Certificate], sequence: u64, refresh_hint: Duration) -> Result<String, String> {
    encode_with_revocation(roots, sequence, refresh_hint, None)
}

/// [`encode`], with the serving cluster's CAs and CRLs in [`REVOCATION_MEMBER`] when it writes
/// `ca-crl.pem`.
pub fn encode_with_revocation(
    roots: &[Certificate],
    sequence: u64,
    refresh_hint: Duration,
    revocation: Option<&Revocation>,
) -> Result<String, String> {
    let keys = roots
        .iter()
        .map(|root| {
            let mut key = public_jwk(&root.public_key_info())
                .map_err(|why| format!("root {} (SHA-256 {}): {why}", root.subject(), root.fingerprint()))?;
            key.insert("use".into(), json!(X509_SVID_USE));
            key.insert("x5c".into(), json!([STANDARD.encode(root.der())]));
            Ok(Value::Object(key))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut document = json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint.as_secs().max(1),
    });
    if let Some(r) = revocation {
        let der = |bytes: &[u8]| json!(STANDARD.encode(bytes));
        document[REVOCATION_MEMBER] = json!({
            "cas": r.cas.iter().map(|c| der(c.der())).collect::<Vec<_>>(),
            "crls": r.crls.iter().map(|c| der(c.der())).collect::<Vec<_>>(),
        });
    }
    serde_json::to_string_pretty(&document).map_err(|e| e.to_string())
}

/// Reads a peer's bundle and checks every `x509-svid` key: exactly one certificate in `x5c`,
/// a CA that may sign certificates, valid now, self-signed, with a strong key that is the one
/// the JWK names. `last_sequence`: the sequence of the last bundle accepted from this peer;
/// a lower one is a rollback.
pub fn decode(body: &[u8], last_sequence: Option<u64>, now: Timestamp) -> Result<Bundle, Refusal> {
    if body.len() > MAX_BUNDLE_BYTES {
        return Err(Refusal::TooLarge { bytes: body.len() });
    }
    let document: Value = serde_json::from_slice(body).map_err(|e| Refusal::NotJson(e.to_string()))?;
    let Some(object) = document.as_object() else {
        return Err(Refusal::NotAJwkSet("the top level is not an object".into()));
    };
    let Some(keys) = object.get("keys").and_then(Value::as_array) else {
        return Err(Refusal::NotAJwkSet("it has no \"keys\" array".into()));
    };
    if keys.len() > MAX_KEYS {
        return Err(Refusal::TooManyKeys { count: keys.len() });
    }
    let sequence = match object.get("spiffe_sequence") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| Refusal::NotAJwkSet("spiffe_sequence is not a whole number".into()))?,
        ),
    };
    let refresh_hint = match object.get("spiffe_refresh_hint") {
        None | Some(Value::Null) => None,
        Some(v) => Some(Duration::from_secs(v.as_u64().ok_or_else(|| {
            Refusal::NotAJwkSet("spiffe_refresh_hint is not a whole number of seconds".into())
        })?)),
    };
    if let (Some(got), Some(last)) = (sequence, last_sequence)
        && got < last
    {
        return Err(Refusal::Rollback { got, last });
    }
    let mut roots = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let refused = |why: String| Refusal::Key { index, why };
        let Some(key) = key.as_object() else {
            return Err(refused("it is not a JSON object".into()));
        };
        match key.get("use").and_then(Value::as_str) {
            Some(X509_SVID_USE) => {}
            Some(_) => continue,
            None => return Err(refused("it has no \"use\"".into())),
        }
        let root = x509_authority(key, now).map_err(refused)?;
        if !roots.contains(&root) {
            roots.push(root);
        }
    }
    if roots.is_empty() {
        return Err(Refusal::Empty);
    }
    Ok(Bundle {
        roots,
        sequence,
        refresh_hint,
        revocation: object.get(REVOCATION_MEMBER).map(revocation),
    })
}

/// Reads [`REVOCATION_MEMBER`]: base64 DER certificates in `cas`, base64 DER CRLs in `crls`.
/// Only the form is checked here; what may be believed of them is the reader's to judge.
fn revocation(member: &Value) -> Result<Revocation, String> {
    let list = |name: &str| -> Result<Vec<Vec<u8>>, String> {
        let items = member
            .get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{REVOCATION_MEMBER} has no \"{name}\" array"))?;
        if items.len() > MAX_REVOCATION_ENTRIES {
            return Err(format!(
                "{REVOCATION_MEMBER}.{name} holds {} entries; at most {MAX_REVOCATION_ENTRIES} are accepted",
                items.len()
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str()
                    .and_then(|s| STANDARD.decode(s).ok())
                    .ok_or_else(|| format!("{REVOCATION_MEMBER}.{name}[{i}] is not base64"))
            })
            .collect()
    };
    let cas = list("cas")?
        .into_iter()
        .enumerate()
        .map(|(i, der)| {
            Certificate::from_der(der).map_err(|e| format!("{REVOCATION_MEMBER}.cas[{i}] cannot be read: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let crls = list("crls")?
        .into_iter()
        .enumerate()
        .map(|(i, der)| Crl::from_der(der).map_err(|e| format!("{REVOCATION_MEMBER}.crls[{i}] cannot be read: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Revocation { cas, crls })
}

/// The root one `x509-svid` key carries, checked as a trust anchor is.
fn x509_authority(key: &Map<String, Value>, now: Timestamp) -> Result<Certificate, String> {
    let chain = key.get("x5c").and_then(Value::as_array).ok_or("it has no \"x5c\"")?;
    let [encoded] = chain.as_slice() else {
        return Err(format!(
            "its \"x5c\" holds {} certificates; an x509-svid key holds exactly one",
            chain.len()
        ));
    };
    let der = encoded
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or("its \"x5c\" entry is not base64")?;
    let cert = Certificate::from_der(der).map_err(|e| format!("its certificate cannot be read: {e}"))?;
    let who = format!("{} (SHA-256 {})", cert.subject(), cert.fingerprint());
    if !cert.is_ca() || cert.key_usage_cert_sign() == Some(false) {
        return Err(format!(
            "{who} is not a CA certificate (a leaf?): only a root can be trusted"
        ));
    }
    if !cert.is_valid_at(now) {
        return Err(format!(
            "{who} is valid only from {} to {}",
            cert.not_before(),
            cert.not_after()
        ));
    }
    // Strength first: a weak RSA signature cannot be checked, and would read as not self-signed.
    strength::check_key(&cert.public_key_info(), "its").map_err(|w| format!("{who} is too weak to trust: {w}"))?;
    if !cert.is_self_signed() {
        return Err(format!(
            "{who} is not self-signed (issued by {}): a bundle holds roots",
            cert.issuer()
        ));
    }
    // The JWK's own parameters must be the certificate's key: a reader that trusts those (as
    // JWT validators do) must not trust another key than the one the certificate binds.
    let expected = public_jwk(&cert.public_key_info())?;
    for (name, value) in &expected {
        if key.get(name) != Some(value) {
            return Err(format!("its \"{name}\" does not match the key of {who} in its \"x5c\""));
        }
    }
    Ok(cert)
}

/// A JWK's public parameters for a DER SubjectPublicKeyInfo: `kty` with `crv`, `x`, `y` (EC
/// P-256/P-384) or `n`, `e` (RSA), base64url without padding (RFC 7518 §6).
fn public_jwk(spki: &[u8]) -> Result<Map<String, Value>, String> {
    let (_, info) = SubjectPublicKeyInfo::from_der(spki).map_err(|_| "its public key cannot be decoded".to_string())?;
    let algorithm = &info.algorithm.algorithm;
    let mut jwk = Map::new();
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = info.parsed() else {
            return Err("its RSA public key cannot be decoded".into());
        };
        jwk.insert("kty".into(), json!("RSA"));
        jwk.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(unsigned(rsa.modulus))));
        jwk.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(unsigned(rsa.exponent))));
        return Ok(jwk);
    }
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = info.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        let (name, size) = match curve {
            Some(c) if c == OID_EC_P256 => ("P-256", 32),
            Some(c) if c == OID_NIST_EC_P384 => ("P-384", 48),
            _ => return Err("its EC key is on neither P-256 nor P-384".into()),
        };
        // An uncompressed point: 0x04, then X and Y of the curve's size each.
        let point: &[u8] = &info.subject_public_key.data;
        if point.len() != 1 + 2 * size || point[0] != 4 {
            return Err("its EC point is not an uncompressed point".into());
        }
        jwk.insert("kty".into(), json!("EC"));
        jwk.insert("crv".into(), json!(name));
        jwk.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&point[1..=size])));
        jwk.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(&point[1 + size..])));
        return Ok(jwk);
    }
    Err(format!("its key type {algorithm} cannot be written as a JWK here"))
}

/// A DER INTEGER's magnitude without its leading zero bytes (RFC 7518 §6.3.1: no padding).
fn unsigned(bytes: &[u8]) -> &[u8] {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    &bytes[first..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::{KeyAlgorithm, PrivateKeySpec, RootBootstrap};
    use crate::pki::sign::self_signed_root;
    use jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn root(algorithm: KeyAlgorithm, size: u32) -> Certificate {
        let spec = RootBootstrap {
            private_key: PrivateKeySpec {
                algorithm,
                size: Some(size),
            },
            ..Default::default()
        };
        self_signed_root(&spec, now() - SignedDuration::from_hours(1))
            .unwrap()
            .0
    }

    fn keys(body: &str) -> Vec<Value> {
        serde_json::from_str::<Value>(body).unwrap()["keys"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Our roots, RSA and EC, round-trip: each key carries its root in x5c and the root's own
    /// public parameters; sequence and refresh hint are kept.
    #[test]
    fn our_roots_round_trip_through_a_bundle() {
        let roots = vec![
            root(KeyAlgorithm::Ecdsa, 256),
            root(KeyAlgorithm::Ecdsa, 384),
            root(KeyAlgorithm::Rsa, 2048),
        ];
        let body = encode(&roots, 7, Duration::from_secs(300)).unwrap();
        let written = keys(&body);
        assert_eq!(written[0]["kty"], "EC");
        assert_eq!(written[0]["crv"], "P-256");
        assert_eq!(written[1]["crv"], "P-384");
        assert_eq!(written[2]["kty"], "RSA");
        assert_eq!(written[2]["e"], "AQAB");
        assert!(written.iter().all(|k| k["use"] == X509_SVID_USE));
        let bundle = decode(body.as_bytes(), Some(7), now()).unwrap();
        assert_eq!(bundle.roots, roots);
        assert_eq!(bundle.sequence, Some(7));
        assert_eq!(bundle.refresh_hint, Some(Duration::from_secs(300)));
    }

    /// Every way a fetched bundle can be unfit is refused by name; the body never shows.
    #[test]
    fn unfit_bundles_are_refused_by_name() {
        let good = root(KeyAlgorithm::Ecdsa, 256);
        let other = root(KeyAlgorithm::Ecdsa, 256);
        let body = encode(std::slice::from_ref(&good), 5, Duration::from_secs(60)).unwrap();
        let with_key = |edit: &dyn Fn(&mut Map<String, Value>)| {
            let mut document: Value = serde_json::from_str(&body).unwrap();
            if let Some(key) = document["keys"][0].as_object_mut() {
                edit(key);
            }
            document.to_string()
        };
        let leaf = {
            use crate::pki::policy::SigningPlan;
            use crate::pki::sign::{CaSigner, sign_csr, tests::istiod_csr_with_key};
            let spec = RootBootstrap::default();
            let (ca, key) = self_signed_root(&spec, now() - SignedDuration::from_hours(1)).unwrap();
            let plan = SigningPlan {
                ca_path_len: None,
                not_before: now() - SignedDuration::from_hours(1),
                not_after: now() + SignedDuration::from_hours(1),
                requested: std::time::Duration::from_secs(1),
                clamped: None,
                name_constraints: None,
            };
            let signer = CaSigner {
                certificate: &ca,
                key: &key,
            };
            sign_csr(&istiod_csr_with_key().0, &plan, &signer).unwrap()
        };
        let weak = crate::istio::testing::weak_root().0;
        let x5c_of = |cert: &Certificate| json!([STANDARD.encode(cert.der())]);
        let huge = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(MAX_BUNDLE_BYTES));
        let cases: Vec<(&str, String, Option<u64>, &str)> = vec![
            ("a lower sequence", body.clone(), Some(6), "rollback"),
            ("over 1 MiB", huge, None, "at most 1048576"),
            ("not JSON", "<html>".into(), None, "not JSON"),
            ("no keys", "{\"spiffe_sequence\": 1}".into(), None, "no \"keys\""),
            ("empty", "{\"keys\": []}".into(), None, "no x509-svid key"),
            (
                "jwt keys only",
                with_key(&|k| {
                    k.insert("use".into(), json!("jwt-svid"));
                }),
                None,
                "no x509-svid key",
            ),
            (
                "a leaf",
                with_key(&|k| {
                    k.insert("x5c".into(), x5c_of(&leaf));
                }),
                None,
                "not a CA",
            ),
            (
                "a weak root",
                with_key(&|k| {
                    k.insert("x5c".into(), x5c_of(&weak));
                }),
                None,
                "too weak",
            ),
            (
                "two certificates",
                with_key(&|k| {
                    k.insert(
                        "x5c".into(),
                        json!([STANDARD.encode(good.der()), STANDARD.encode(other.der())]),
                    );
                }),
                None,
                "exactly one",
            ),
            (
                "another key than the certificate's",
                with_key(&|k| {
                    k.insert("x5c".into(), x5c_of(&other));
                }),
                None,
                "does not match the key",
            ),
            (
                "no use",
                with_key(&|k| {
                    k.remove("use");
                }),
                None,
                "no \"use\"",
            ),
            (
                "garbage in x5c",
                with_key(&|k| {
                    k.insert("x5c".into(), json!(["***"]));
                }),
                None,
                "not base64",
            ),
        ];
        for (case, body, last, text) in cases {
            let refusal = decode(body.as_bytes(), last, now()).expect_err(case).to_string();
            assert!(refusal.contains(text), "{case}: {refusal}");
            assert!(refusal.len() < 600, "{case}: the body is never echoed");
        }
        // Expired or not yet valid.
        let later = now() + SignedDuration::from_hours(24 * 365 * 200);
        assert!(
            decode(body.as_bytes(), None, later)
                .unwrap_err()
                .to_string()
                .contains("valid only")
        );
    }

    /// A cluster's CAs and CRLs travel in the bundle and come back as they were; a member that
    /// cannot be read is reported, and the roots are still taken.
    #[test]
    fn crls_ride_along_and_never_cost_the_roots() {
        let good = root(KeyAlgorithm::Ecdsa, 256);
        let (ca, key) = self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(1)).unwrap();
        let spec = crate::pki::crl::CrlSpec {
            number: 7,
            this_update: now(),
            next_update: now() + SignedDuration::from_hours(72),
            revoked: Vec::new(),
        };
        let signer = crate::pki::sign::CaSigner {
            certificate: &ca,
            key: &key,
        };
        let crl = vec![crate::pki::crl::issue(&spec, &signer).unwrap()];
        let revocation = Revocation {
            cas: vec![ca],
            crls: crl,
        };
        let body = encode_with_revocation(
            std::slice::from_ref(&good),
            3,
            Duration::from_secs(60),
            Some(&revocation),
        )
        .unwrap();
        let bundle = decode(body.as_bytes(), None, now()).unwrap();
        assert_eq!(bundle.roots, std::slice::from_ref(&good));
        assert_eq!(bundle.revocation, Some(Ok(revocation)));
        // Without the member, none; with one that cannot be read, why, and the roots.
        let plain = encode(std::slice::from_ref(&good), 3, Duration::from_secs(60)).unwrap();
        assert_eq!(decode(plain.as_bytes(), None, now()).unwrap().revocation, None);
        let mut document: Value = serde_json::from_str(&body).unwrap();
        document[REVOCATION_MEMBER]["crls"] = json!(["***"]);
        let bundle = decode(document.to_string().as_bytes(), None, now()).unwrap();
        assert_eq!(bundle.roots, [good]);
        let why = bundle.revocation.unwrap().unwrap_err();
        assert!(why.contains("crls[0] is not base64"), "{why}");
    }
}
