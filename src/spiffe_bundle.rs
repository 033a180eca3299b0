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

use crate::pki::{Certificate, strength};

/// The largest bundle body accepted, in bytes: a bundle of a few roots is a few KiB.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// The JWK `use` of an X.509 authority (a root that signs X.509-SVIDs).
pub const X509_SVID_USE: &str = "x509-svid";
/// The most keys a bundle may hold: a trust domain has one root, two during a rotation.
pub const MAX_KEYS: usize = 32;

/// A peer's bundle, checked: its roots in the order given, and what it says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub roots: Vec<Certificate>,
    pub sequence: Option<u64>,
    pub refresh_hint: Option<Duration>,
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
    let document = json!({
        "keys": keys,
        "spiffe_sequence": sequence,
        "spiffe_refresh_hint": refresh_hint.as_secs().max(1),
    });
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
    })
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
}
