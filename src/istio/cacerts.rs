//! istiod's `cacerts` Secret: assembling it from cert-manager's Secret, deciding whether we may
//! write it, and verifying it the way istiod does before it is written. Pure.
//!
//! What istiod checks when it loads a plugged-in CA (pilot/pkg/bootstrap/istio_ca.go,
//! security/pkg/pki/util/keycertbundle.go): the key parses and matches `ca-cert.pem`; Go's
//! `x509.Verify` of the signing certificate against *all* certificates in `root-cert.pem`, with
//! `cert-chain.pem` as intermediates — so every certificate must be within its validity,
//! issuers must be CAs, path lengths hold along the whole path, and an ExtendedKeyUsage
//! anywhere on it must allow serverAuth ([`crate::pki::chain`] does exactly that, counting
//! `ca-cert.pem` as the intermediate it is in workload chains). On reload it compares `root-cert.pem` byte for byte with what it loaded and,
//! without multi-root support, ignores the whole update when the bytes differ. Hence: on a
//! renewal under the same root, `root-cert.pem` is kept byte for byte.

use std::collections::BTreeMap;

use jiff::Timestamp;

use super::secret_data::SecretData;
use crate::api::istio_cacerts::AdoptExisting;
use crate::pki::chain::{self, ChainError};
use crate::pki::{Certificate, SigningKey, strength};

pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";
/// Marks istiod's own self-signed CA: never written, never kept, never replaced.
pub const ISTIO_GENERATED: &str = "istio-generated";
/// Keys of istiod's TLS format; when `tls.crt` is present istiod uses these instead of ours.
pub const TLS_FORMAT_KEYS: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];
/// istiod's CRL (Istio 1.27+). Not written by us, and never kept: a CRL not signed by the
/// new chain makes istiod refuse the whole update.
pub const CA_CRL: &str = "ca-crl.pem";

/// Whether istiod reads `key` (in either format): every other key of a target is foreign to
/// istiod, and kept unless `adoptExisting: Replace`.
pub fn istiod_reads(key: &str) -> bool {
    [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, CA_CRL, ISTIO_GENERATED].contains(&key) || TLS_FORMAT_KEYS.contains(&key)
}

/// Label and annotation that mark a target Secret as written by an IstioCACerts.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "mesh-ca-issuer";
pub const OWNER_ANNOTATION: &str = "meshca.io/istiocacerts";

/// Reasons of the `Ready` condition.
pub mod reason {
    pub const SYNCED: &str = "Synced";
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const SOURCE_INCOMPLETE: &str = "SourceIncomplete";
    pub const INVALID_SOURCE: &str = "InvalidSource";
    pub const KEY_MISMATCH: &str = "KeyMismatch";
    pub const NOT_A_CA: &str = "NotACA";
    pub const CHAIN_INVALID: &str = "ChainInvalid";
    pub const WEAK_KEY: &str = "WeakKey";
    pub const EXPIRED: &str = "Expired";
    pub const NOT_YET_VALID: &str = "NotYetValid";
    pub const NOT_OWNED: &str = "NotOwned";
    pub const ISTIOD_SELF_SIGNED: &str = "IstiodSelfSignedCA";
    pub const ROOT_CHANGED: &str = "RootChanged";
    pub const WRITE_FAILED: &str = "WriteFailed";
    /// `targetSecretName` is not in `--cacerts-secret-names`.
    pub const TARGET_NOT_ALLOWED: &str = "TargetNotAllowed";
    /// `targetSecretName` is `sourceSecretName`.
    pub const TARGET_IS_SOURCE: &str = "TargetIsSource";
    /// `adoptExisting` holds a value that is none of false, true, KeepForeignKeys, Replace.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Adopting would delete a typed Secret that carries keys istiod does not read.
    pub const ADOPTION_NEEDS_REPLACE: &str = "AdoptionNeedsReplace";
    /// Adopting a typed Secret deleted it, and creating it again as Opaque failed: istiod,
    /// restarted now, would make its own self-signed CA.
    pub const RECREATE_FAILED: &str = "RecreateFailed";
}

/// The Secret a typed target is copied to before adoption deletes it (one copy per target,
/// owned by the IstioCACerts, labelled ours): what it held is never lost.
pub fn backup_name(target: &str) -> String {
    format!("{target}-meshca-backup")
}

/// The annotation on a backup naming the Secret it is a copy of.
pub const BACKUP_OF_ANNOTATION: &str = "meshca.io/backup-of";

/// Why `cacerts` is not (re)written, and what to do about it. Never carries key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What cert-manager's Secret holds, parsed but not yet judged. `Debug` leaves the key out,
/// and the key bytes are zeroized when it is dropped.
pub struct SourceBundle {
    pub intermediate: Certificate,
    /// Further intermediates between it and the root (bottom-up), if any.
    pub intermediates: Vec<Certificate>,
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
    pub root: Certificate,
}

impl std::fmt::Debug for SourceBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceBundle")
            .field("intermediate", &self.intermediate)
            .field("intermediates", &self.intermediates)
            .field("key_pem", &"<redacted>")
            .field("root", &self.root)
            .finish()
    }
}

/// Reads cert-manager's Secret (`tls.crt`, `tls.key`, `ca.crt`).
pub fn read_source(data: &BTreeMap<String, Vec<u8>>, display: &str) -> Result<SourceBundle, Problem> {
    let need = |key: &str| {
        data.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
            Problem::new(
                reason::SOURCE_INCOMPLETE,
                format!("{display} has no {key}: is its Certificate issued yet?"),
            )
        })
    };
    let mut chain = Certificate::parse_pem_bundle(need("tls.crt")?, "tls.crt")
        .map_err(|e| Problem::new(reason::INVALID_SOURCE, format!("{display}: {e}")))?;
    let key_pem = zeroize::Zeroizing::new(need("tls.key")?.clone());
    SigningKey::from_pem(&key_pem)
        .map_err(|e| Problem::new(reason::INVALID_SOURCE, format!("{display} tls.key: {e}")))?;
    let root = match data.get("ca.crt").filter(|v| !v.is_empty()) {
        Some(bytes) => Certificate::parse_pem_bundle(bytes, "ca.crt")
            .map_err(|e| Problem::new(reason::INVALID_SOURCE, format!("{display}: {e}")))?
            .remove(0),
        None if chain.len() > 1 && chain.last().is_some_and(Certificate::is_self_signed) => {
            chain.remove(chain.len() - 1)
        }
        None => {
            return Err(Problem::new(
                reason::SOURCE_INCOMPLETE,
                format!(
                    "{display} has no ca.crt, and tls.crt does not end in a root: the issuer must return its root in status.ca"
                ),
            ));
        }
    };
    // A tls.crt that repeats the root at its end: the root goes into root-cert.pem only once.
    if chain.len() > 1 && chain.last() == Some(&root) {
        chain.pop();
    }
    let intermediate = chain.remove(0);
    Ok(SourceBundle {
        intermediate,
        intermediates: chain,
        key_pem,
        root,
    })
}

/// The target Secret as found. `Debug` shows its data's key names and sizes only
/// ([`SecretData`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Absent,
    Present {
        data: SecretData,
        /// Which IstioCACerts (if any) marked it as theirs.
        owner: Option<String>,
    },
}

/// What istiod would load from a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleContents {
    pub intermediate: Certificate,
    /// `cert-chain.pem` as written: intermediate first, the root last.
    pub chain: Vec<Certificate>,
    pub roots: Vec<Certificate>,
    /// The root the intermediate chains to.
    pub anchor: Certificate,
}

/// Checks a `cacerts` bundle as istiod does before it loads it.
pub fn verify_bundle(data: &BTreeMap<String, Vec<u8>>, now: Timestamp) -> Result<BundleContents, Problem> {
    let get = |key: &'static str| {
        data.get(key)
            .ok_or_else(|| Problem::new(reason::SOURCE_INCOMPLETE, format!("the bundle has no {key}")))
    };
    let bad = |key: &str, e: crate::pki::PkiError| Problem::new(reason::INVALID_SOURCE, format!("{key}: {e}"));
    let intermediate = Certificate::parse_pem_bundle(get(CA_CERT)?, "ca-cert.pem")
        .map_err(|e| bad(CA_CERT, e))?
        .remove(0);
    let key = SigningKey::from_pem(get(CA_KEY)?).map_err(|e| bad(CA_KEY, e))?;
    let chain = Certificate::parse_pem_bundle(get(CERT_CHAIN)?, "cert-chain.pem").map_err(|e| bad(CERT_CHAIN, e))?;
    let roots = Certificate::parse_pem_bundle(get(ROOT_CERT)?, "root-cert.pem").map_err(|e| bad(ROOT_CERT, e))?;
    let subject = intermediate.subject();

    if !key.matches(&intermediate) {
        return Err(Problem::new(
            reason::KEY_MISMATCH,
            format!("the private key is not the key of the certificate {subject}"),
        ));
    }
    if !intermediate.is_ca() || intermediate.key_usage_cert_sign() == Some(false) {
        return Err(Problem::new(
            reason::NOT_A_CA,
            format!(
                "{subject} is not a CA certificate that may sign certificates (BasicConstraints CA:TRUE and keyCertSign): istiod cannot sign workload certificates with it"
            ),
        ));
    }
    if intermediate.eku_excludes_server_auth() {
        return Err(Problem::new(
            reason::NOT_A_CA,
            format!("{subject} has an ExtendedKeyUsage without serverAuth, which istiod's chain verification rejects"),
        ));
    }
    if chain.first() != Some(&intermediate) {
        return Err(Problem::new(
            reason::CHAIN_INVALID,
            "cert-chain.pem does not start with ca-cert.pem",
        ));
    }
    // Go accepts RSA keys of 1024 bits; istiod would load them. We do not write what we would
    // refuse to sign with: every key of the chain and every root must pass the strength check.
    // First, since our signature verifier cannot check a 1024-bit RSA signature, which would
    // otherwise read as "no path".
    for cert in chain.iter().chain(roots.iter()) {
        strength::check_key(&cert.public_key_info(), "its").map_err(|w| {
            Problem::new(
                reason::WEAK_KEY,
                format!("{} in the bundle is too weak to trust: {w}", cert.subject()),
            )
        })?;
    }
    // Go's x509.Verify as istiod runs it, counting ca-cert.pem as the intermediate it is in
    // every workload chain (stricter than istiod's load check; see `pki::chain`).
    let path = chain::verify(&intermediate, chain::Subject::SigningCa, &chain, &roots, now).map_err(|e| {
        let reason = match &e {
            ChainError::Expired { .. } => reason::EXPIRED,
            ChainError::NotYetValid { .. } => reason::NOT_YET_VALID,
            _ => reason::CHAIN_INVALID,
        };
        Problem::new(
            reason,
            format!("istiod or the workloads it signs for would refuse this bundle: {e}"),
        )
    })?;
    let anchor = path.anchor().clone();
    Ok(BundleContents {
        intermediate,
        chain,
        roots,
        anchor,
    })
}

/// What to write, and whether that changes anything. `Debug` shows the key names and sizes of
/// `data`, never its values.
#[derive(Clone, PartialEq, Eq)]
pub struct CacertsPlan {
    /// The four keys istiod reads, and the target's keys istiod does not read (kept unless
    /// `adoptExisting: Replace`).
    pub data: SecretData,
    pub contents: BundleContents,
    /// False when the target already holds exactly this: no write.
    pub changed: bool,
    /// True when this write takes over a Secret we did not create (`adoptExisting`).
    pub adopting: bool,
    /// Keys of the existing Secret that the write removes (adoption of a TLS-format bundle).
    pub dropped_keys: Vec<String>,
    /// Keys of the existing Secret istiod does not read, kept as they are (all but with
    /// `adoptExisting: Replace`).
    pub kept_keys: Vec<String>,
}

impl std::fmt::Debug for CacertsPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacertsPlan")
            .field("data", &self.data)
            .field("contents", &self.contents)
            .field("changed", &self.changed)
            .field("adopting", &self.adopting)
            .field("dropped_keys", &self.dropped_keys)
            .field("kept_keys", &self.kept_keys)
            .finish()
    }
}

/// Decides what `cacerts` should hold, or why it must stay as it is.
pub fn plan(
    source: &SourceBundle,
    target: &Target,
    owner: &str,
    adopt: &AdoptExisting,
    now: Timestamp,
) -> Result<CacertsPlan, Problem> {
    let (existing, adopting) = ownership(target, owner, adopt)?;
    check_links(source)?;
    let root_pem = root_pem(existing, source)?;
    let intermediate_pem = source.intermediate.to_pem();
    let mut chain_pem = intermediate_pem.clone();
    for c in &source.intermediates {
        chain_pem.push_str(&c.to_pem());
    }
    chain_pem.push_str(&source.root.to_pem());
    let mut data: SecretData = [
        (CA_CERT.to_string(), intermediate_pem.into_bytes()),
        (CA_KEY.to_string(), source.key_pem.to_vec()),
        (CERT_CHAIN.to_string(), chain_pem.into_bytes()),
        (ROOT_CERT.to_string(), root_pem),
    ]
    .into();
    let contents = verify_bundle(&data, now)?;
    // Keys istiod does not read belong to whoever put them there: kept byte for byte unless the
    // user asked for the Secret to be replaced whole.
    let mut kept_keys = Vec::new();
    if *adopt != AdoptExisting::Replace {
        for (key, value) in existing.iter().flat_map(|d| d.iter()) {
            if !istiod_reads(key) {
                data.insert(key.clone(), value.clone());
                kept_keys.push(key.clone());
            }
        }
    }
    let changed = existing != Some(&data);
    let dropped_keys = existing
        .map(|d| d.keys().filter(|k| !data.contains_key(*k)).cloned().collect())
        .unwrap_or_default();
    Ok(CacertsPlan {
        data,
        contents,
        changed,
        adopting,
        dropped_keys,
        kept_keys,
    })
}

/// Whether the target may be written: absent, ours, or adopted (`adoptExisting`); and the data
/// it holds now.
fn ownership<'a>(
    target: &'a Target,
    owner: &str,
    adopt: &AdoptExisting,
) -> Result<(Option<&'a SecretData>, bool), Problem> {
    let adopt_existing = adopt.adopts();
    match target {
        Target::Absent => Ok((None, false)),
        Target::Present { data, .. } if data.contains_key(ISTIO_GENERATED) => Err(Problem::new(
            reason::ISTIOD_SELF_SIGNED,
            "the target holds istiod's own self-signed CA (key istio-generated); it is never replaced. To plug in this CA, delete that Secret and restart istiod after cacerts is written",
        )),
        Target::Present { data, owner: Some(o) } if o == owner => Ok((Some(data), false)),
        Target::Present { owner: Some(other), .. } if !adopt_existing => Err(Problem::new(
            reason::NOT_OWNED,
            format!("the target Secret belongs to IstioCACerts {other}; it is left untouched"),
        )),
        Target::Present { data, .. } if adopt_existing => Ok((Some(data), true)),
        Target::Present { .. } => Err(Problem::new(
            reason::NOT_OWNED,
            "the target Secret exists and was not created by mesh-ca-issuer; it is left untouched. Set spec.adoptExisting: true (KeepForeignKeys: keys istiod does not read are kept) or Replace to take it over",
        )),
    }
}

/// The source must hold together on its own before it is compared with what istiod trusts:
/// each certificate signed by the next, the last by the root.
fn check_links(source: &SourceBundle) -> Result<(), Problem> {
    let mut links = std::iter::once(&source.intermediate)
        .chain(source.intermediates.iter())
        .peekable();
    while let Some(cert) = links.next() {
        let parent = links.peek().copied().unwrap_or(&source.root);
        if !cert.is_signed_by(parent) {
            return Err(Problem::new(
                reason::CHAIN_INVALID,
                format!(
                    "{} in the source is not signed by {} (its ca.crt or the next certificate in tls.crt)",
                    cert.subject(),
                    parent.subject()
                ),
            ));
        }
    }
    Ok(())
}

/// `root-cert.pem` to write: the roots istiod trusts now (root-cert.pem, or ca.crt of a
/// TLS-format bundle), kept byte for byte when they already hold the source's root; a root that
/// is not among them is a root change, which istiod would ignore (or, partly trusted, break).
fn root_pem(existing: Option<&SecretData>, source: &SourceBundle) -> Result<Vec<u8>, Problem> {
    match existing.and_then(trusted_roots) {
        Some((key, bytes)) => match Certificate::parse_pem_bundle(bytes, key) {
            Ok(roots) if roots.contains(&source.root) => Ok(bytes.clone()),
            Ok(roots) => Err(Problem::new(
                reason::ROOT_CHANGED,
                format!(
                    "the new intermediate chains to root {} (SHA-256 {}), which is not among the {} trust anchors in the target's {key}; cacerts is left as it is. Rotating roots without downtime needs the new root added to root-cert.pem first (and ISTIO_MULTIROOT_MESH on istiod); if the root change is intended and downtime is acceptable, delete the target Secret and restart istiod",
                    source.root.subject(),
                    source.root.fingerprint(),
                    roots.len()
                ),
            )),
            // An unreadable bundle in a Secret we own or adopt is replaced.
            Err(_) => Ok(source.root.to_pem().into_bytes()),
        },
        None => Ok(source.root.to_pem().into_bytes()),
    }
}

/// The roots istiod trusts in a target, and the key they are in. A Secret in istiod's TLS
/// format (`tls.crt` present) is loaded from its TLS keys only, so its root is `ca.crt`;
/// otherwise `root-cert.pem`. Reading only `root-cert.pem` let an adopted TLS-format bundle
/// get another root written with no rotation.
fn trusted_roots(data: &SecretData) -> Option<(&'static str, &Vec<u8>)> {
    let tls_root = data
        .contains_key(TLS_FORMAT_KEYS[0])
        .then(|| data.get(TLS_FORMAT_KEYS[2]).map(|b| (TLS_FORMAT_KEYS[2], b)))
        .flatten();
    tls_root.or_else(|| data.get(ROOT_CERT).map(|b| (ROOT_CERT, b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::pki::sign::{CaSigner, self_signed_root, tests::signed_istiod};
    use jiff::SignedDuration;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    struct Pki {
        root: Certificate,
        root_key: SigningKey,
    }

    fn pki() -> Pki {
        let (root, root_key) =
            self_signed_root(&RootBootstrap::default(), now() - SignedDuration::from_hours(24)).unwrap();
        Pki { root, root_key }
    }

    fn intermediate(pki: &Pki, ca: bool, from: Timestamp, to: Timestamp) -> (Certificate, SigningKey) {
        let root = CaSigner {
            certificate: &pki.root,
            key: &pki.root_key,
        };
        signed_istiod(&root, ca.then_some(0), from, to)
    }

    fn source(pki: &Pki) -> SourceBundle {
        let (cert, key) = intermediate(
            pki,
            true,
            now() - SignedDuration::from_hours(1),
            now() + SignedDuration::from_hours(2160),
        );
        SourceBundle {
            intermediate: cert,
            intermediates: vec![],
            key_pem: key.to_pem().into_bytes().into(),
            root: pki.root.clone(),
        }
    }

    fn source_data(s: &SourceBundle) -> BTreeMap<String, Vec<u8>> {
        [
            ("tls.crt".to_string(), s.intermediate.to_pem().into_bytes()),
            ("tls.key".to_string(), s.key_pem.to_vec()),
            ("ca.crt".to_string(), s.root.to_pem().into_bytes()),
        ]
        .into()
    }

    fn owned(data: impl Into<SecretData>) -> Target {
        Target::Present {
            data: data.into(),
            owner: Some("mesh".into()),
        }
    }

    #[test]
    fn a_fresh_target_gets_exactly_the_four_keys_in_istio_order() {
        let pki = pki();
        let src = source(&pki);
        let p = plan(&src, &Target::Absent, "mesh", &AdoptExisting::Never, now()).unwrap();
        assert!(p.changed && !p.adopting);
        assert_eq!(
            p.data.keys().collect::<Vec<_>>(),
            vec![CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT]
        );
        let chain = Certificate::parse_pem_bundle(&p.data[CERT_CHAIN], "c").unwrap();
        assert_eq!(
            chain,
            vec![src.intermediate.clone(), pki.root.clone()],
            "intermediate, then the root"
        );
        assert_eq!(p.contents.anchor, pki.root);
        // Writing the same again is a no-op.
        let again = plan(&src, &owned(p.data.clone()), "mesh", &AdoptExisting::Never, now()).unwrap();
        assert!(!again.changed);
    }

    #[test]
    fn renewals_under_the_same_root_keep_root_cert_pem_byte_for_byte() {
        let pki = pki();
        // An existing bundle whose root-cert.pem holds the root plus a second anchor, with its
        // own (non-canonical) formatting: a trailing comment line and CRLF line endings.
        let other = self::pki();
        let bundle =
            format!("{}{}# extra trust anchor\n", pki.root.to_pem(), other.root.to_pem()).replace('\n', "\r\n");
        let first = plan(&source(&pki), &Target::Absent, "mesh", &AdoptExisting::Never, now()).unwrap();
        let mut existing = first.data.clone();
        existing.insert(ROOT_CERT.into(), bundle.clone().into_bytes());
        for _ in 0..3 {
            let p = plan(
                &source(&pki),
                &owned(existing.clone()),
                "mesh",
                &AdoptExisting::Never,
                now(),
            )
            .unwrap();
            assert!(p.changed, "a new intermediate is written");
            assert_eq!(p.data[ROOT_CERT], bundle.as_bytes(), "root-cert.pem untouched");
            existing = p.data;
        }
    }

    #[test]
    fn refusals() {
        let pki = pki();
        let src = source(&pki);
        let written = plan(&src, &Target::Absent, "mesh", &AdoptExisting::Never, now())
            .unwrap()
            .data;
        let foreign = Target::Present {
            data: written.clone(),
            owner: None,
        };
        let other_owner = Target::Present {
            data: written.clone(),
            owner: Some("other".into()),
        };
        let mut self_signed = written.clone();
        self_signed.insert(ISTIO_GENERATED.into(), b"".to_vec());
        let istiod = Target::Present {
            data: self_signed,
            owner: Some("mesh".into()),
        };
        let new_root_pki = self::pki();
        // (case, source, target, adoptExisting, expected refusal)
        type Case<'a> = (&'a str, &'a SourceBundle, Target, bool, Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            // A hand-made cacerts is never replaced unless asked...
            ("foreign", &src, foreign.clone(), false, Err(reason::NOT_OWNED)),
            // ...and taken over when asked.
            ("adopted", &src, foreign, true, Ok(())),
            ("other owner", &src, other_owner, false, Err(reason::NOT_OWNED)),
            // istiod's own self-signed CA: never, even when adopting.
            (
                "istio-generated",
                &src,
                istiod.clone(),
                true,
                Err(reason::ISTIOD_SELF_SIGNED),
            ),
        ];
        for (name, s, target, adopt, expected) in cases {
            let adopt = if adopt {
                AdoptExisting::KeepForeignKeys
            } else {
                AdoptExisting::Never
            };
            let got = plan(s, &target, "mesh", &adopt, now())
                .map(|_| ())
                .map_err(|p| p.reason);
            assert_eq!(got, expected, "{name}");
        }
        // A source whose ca.crt did not sign its tls.crt: the chain is broken in itself.
        let broken = SourceBundle {
            root: new_root_pki.root.clone(),
            ..source(&pki)
        };
        assert_eq!(
            plan(&broken, &Target::Absent, "mesh", &AdoptExisting::Never, now())
                .unwrap_err()
                .reason,
            reason::CHAIN_INVALID
        );
        // A source under another root than the one istiod trusts: RootChanged, with what to do.
        let moved = source(&new_root_pki);
        let err = plan(&moved, &owned(written), "mesh", &AdoptExisting::Never, now()).unwrap_err();
        assert_eq!(err.reason, reason::ROOT_CHANGED);
        assert!(err.message.contains("ISTIO_MULTIROOT_MESH"), "{}", err.message);
    }

    #[test]
    fn adopting_a_tls_format_bundle_drops_its_tls_keys() {
        let pki = pki();
        let tls_format: BTreeMap<String, Vec<u8>> = TLS_FORMAT_KEYS
            .iter()
            .map(|k| (k.to_string(), b"old".to_vec()))
            .collect();
        for adopt in [AdoptExisting::KeepForeignKeys, AdoptExisting::Replace] {
            let p = plan(
                &source(&pki),
                &Target::Present {
                    data: tls_format.clone().into(),
                    owner: None,
                },
                "mesh",
                &adopt,
                now(),
            )
            .unwrap();
            assert!(p.adopting);
            assert_eq!(p.dropped_keys, vec!["ca.crt", "tls.crt", "tls.key"], "{adopt:?}");
            assert!(p.kept_keys.is_empty(), "{adopt:?}");
        }
    }

    /// A TLS-format bundle's root is its `ca.crt` (istiod loads only the TLS keys when
    /// `tls.crt` is there): adopting it under the same root keeps that root; under another
    /// root it is a root change, refused as for `root-cert.pem`.
    #[test]
    fn a_tls_format_bundle_trusts_its_ca_crt() {
        let (pki, other) = (pki(), pki());
        let tls_bundle = |root: &Certificate| Target::Present {
            data: BTreeMap::from([
                ("tls.crt".to_string(), b"old".to_vec()),
                ("tls.key".to_string(), b"old".to_vec()),
                ("ca.crt".to_string(), root.to_pem().into_bytes()),
                // A stale root-cert.pem next to the TLS keys is not what istiod trusts.
                (ROOT_CERT.to_string(), other.root.to_pem().into_bytes()),
            ])
            .into(),
            owner: None,
        };
        let adopt = AdoptExisting::KeepForeignKeys;
        let same = plan(&source(&pki), &tls_bundle(&pki.root), "mesh", &adopt, now()).unwrap();
        assert_eq!(same.data[ROOT_CERT], pki.root.to_pem().into_bytes());
        let err = plan(&source(&pki), &tls_bundle(&other.root), "mesh", &adopt, now()).unwrap_err();
        assert_eq!(err.reason, reason::ROOT_CHANGED);
        assert!(err.message.contains("target's ca.crt"), "{}", err.message);
    }

    /// Keys istiod does not read belong to someone else: adopting (`true`/`KeepForeignKeys`)
    /// keeps them byte for byte, later writes too; only `Replace` removes them. istiod's own
    /// keys (a stale CRL included) and the TLS ones always go.
    #[test]
    fn foreign_keys_are_kept_unless_replace_is_asked_for() {
        let pki = pki();
        let existing: BTreeMap<String, Vec<u8>> = [
            ("tls.crt", b"old".to_vec()),
            (CA_CRL, b"stale crl".to_vec()),
            ("note", b"by an operator".to_vec()),
            ("gateway.key", b"someone else's".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let foreign = Target::Present {
            data: existing.into(),
            owner: None,
        };
        let src = source(&pki);
        let kept = plan(&src, &foreign, "mesh", &AdoptExisting::KeepForeignKeys, now()).unwrap();
        assert_eq!(kept.kept_keys, vec!["gateway.key", "note"]);
        assert_eq!(kept.dropped_keys, vec![CA_CRL, "tls.crt"]);
        assert_eq!(kept.data["note"], b"by an operator");
        // Written so and planned again: nothing to write, the keys still there.
        let again = plan(&src, &owned(kept.data.clone()), "mesh", &AdoptExisting::Never, now()).unwrap();
        assert!(!again.changed && again.kept_keys == kept.kept_keys);
        let replaced = plan(&src, &foreign, "mesh", &AdoptExisting::Replace, now()).unwrap();
        assert!(replaced.kept_keys.is_empty());
        assert_eq!(
            replaced.data.keys().collect::<Vec<_>>(),
            vec![CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT]
        );
        assert_eq!(replaced.dropped_keys, vec![CA_CRL, "gateway.key", "note", "tls.crt"]);
    }

    #[test]
    fn istiod_checks() {
        let pki = pki();
        let good = source(&pki);
        let data = plan(&good, &Target::Absent, "mesh", &AdoptExisting::Never, now())
            .unwrap()
            .data;
        let with = |key: &str, value: Vec<u8>| {
            let mut d = data.clone();
            d.insert(key.to_string(), value);
            d
        };
        let (leaf, leaf_key) = intermediate(
            &pki,
            false,
            now() - SignedDuration::from_hours(1),
            now() + SignedDuration::from_hours(24),
        );
        let (expired, expired_key) = intermediate(
            &pki,
            true,
            now() - SignedDuration::from_hours(48),
            now() - SignedDuration::from_hours(24),
        );
        let stranger = self::pki();
        let leaf_bundle = {
            let mut d = with(CA_CERT, leaf.to_pem().into_bytes());
            d.insert(CA_KEY.into(), leaf_key.to_pem().into_bytes());
            d.insert(
                CERT_CHAIN.into(),
                format!("{}{}", leaf.to_pem(), pki.root.to_pem()).into_bytes(),
            );
            d
        };
        let expired_bundle = {
            let mut d = with(CA_CERT, expired.to_pem().into_bytes());
            d.insert(CA_KEY.into(), expired_key.to_pem().into_bytes());
            d.insert(
                CERT_CHAIN.into(),
                format!("{}{}", expired.to_pem(), pki.root.to_pem()).into_bytes(),
            );
            d
        };
        let cases = vec![
            ("good", data.clone(), None),
            (
                "key of another certificate",
                with(CA_KEY, stranger.root_key.to_pem().into_bytes()),
                Some(reason::KEY_MISMATCH),
            ),
            ("leaf", leaf_bundle, Some(reason::NOT_A_CA)),
            ("expired", expired_bundle, Some(reason::EXPIRED)),
            (
                "chain to an unknown root",
                with(ROOT_CERT, stranger.root.to_pem().into_bytes()),
                Some(reason::CHAIN_INVALID),
            ),
            (
                "chain not starting with ca-cert",
                with(CERT_CHAIN, pki.root.to_pem().into_bytes()),
                Some(reason::CHAIN_INVALID),
            ),
            (
                "garbage",
                with(CA_CERT, b"garbage".to_vec()),
                Some(reason::INVALID_SOURCE),
            ),
        ];
        for (name, bundle, expected) in cases {
            let got = verify_bundle(&bundle, now()).err().map(|p| p.reason);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let pki = pki();
        let src = source(&pki);
        let plan = plan(&src, &Target::Absent, "mesh", &AdoptExisting::Never, now()).unwrap();
        let target = owned(plan.data.clone());
        for (what, shown) in [
            ("SourceBundle", format!("{src:?}")),
            ("CacertsPlan", format!("{plan:?}")),
            ("Target", format!("{target:?}")),
        ] {
            crate::istio::secret_data::tests::assert_not_shown(&shown, &src.key_pem, what);
        }
        crate::istio::secret_data::tests::assert_not_shown(
            &format!("{:?}", pki.root_key),
            pki.root_key.to_pem().as_bytes(),
            "SigningKey",
        );
        assert!(format!("{plan:?}").contains("\"ca-key.pem\": <"), "{plan:?}");
    }

    #[test]
    fn source_reading() {
        let pki = pki();
        let s = source(&pki);
        let data = source_data(&s);
        assert_eq!(read_source(&data, "Secret ns/src").unwrap().root, pki.root);
        // tls.crt carrying the root too (and no ca.crt): the root is taken from its end.
        let mut bundled = data.clone();
        bundled.remove("ca.crt");
        bundled.insert(
            "tls.crt".into(),
            format!("{}{}", s.intermediate.to_pem(), pki.root.to_pem()).into_bytes(),
        );
        let read = read_source(&bundled, "Secret ns/src").unwrap();
        assert_eq!((read.root, read.intermediates.len()), (pki.root.clone(), 0));
        for missing in ["tls.crt", "tls.key"] {
            let mut d = data.clone();
            d.remove(missing);
            assert_eq!(
                read_source(&d, "s").unwrap_err().reason,
                reason::SOURCE_INCOMPLETE,
                "{missing}"
            );
        }
        let mut no_root = data.clone();
        no_root.remove("ca.crt");
        assert_eq!(
            read_source(&no_root, "s").unwrap_err().reason,
            reason::SOURCE_INCOMPLETE
        );
        let mut garbage = data;
        garbage.insert(
            "tls.crt".into(),
            b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_vec(),
        );
        let err = read_source(&garbage, "s").unwrap_err();
        assert_eq!(err.reason, reason::INVALID_SOURCE);
        assert!(!err.message.contains("PRIVATE"));
    }
}
