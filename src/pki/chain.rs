//! Chain verification as Go's `crypto/x509` does it — istiod is written in Go, so what its
//! `x509.Verify` refuses is what must never be written into `cacerts` — plus the one question a
//! signer asks of its own chain: may the CA sign a sub-CA at all, and how deep.
//!
//! [`verify`] builds paths the way Go's `buildChains` does (Go 1.19–1.25,
//! `crypto/x509/verify.go`): from the certificate up through the intermediate pool until a
//! certificate of the root pool signed it, trying every candidate, and keeps the first path on
//! which every certificate passes Go's checks:
//! - every certificate is within its validity at `now`;
//! - every issuer (intermediates *and* roots) may sign: a v3 certificate needs BasicConstraints
//!   with CA:TRUE, and a KeyUsage, when present, needs keyCertSign (Go's `CheckSignatureFrom`);
//! - path length: a certificate with pathLen `n` may have at most `n` intermediates below it;
//! - extended key usage: a certificate with an EKU must allow serverAuth (or any), on every
//!   certificate of the path, roots included (istiod passes no `KeyUsages`, so Go asks for
//!   serverAuth);
//! - at most [`MAX_SIGNATURE_CHECKS`] signature checks, as Go;
//! - no signature on a link of the path made with a broken hash (SHA-1, MD5, ...): Go refuses
//!   them as insecure (a root's signature on itself is never checked, by Go nor here);
//! - no certificate on the path, roots included, with a critical extension Go does not handle.
//!
//! One documented way we are **stricter than istiod's load check**: istiod verifies
//! `ca-cert.pem` as if it were a leaf, so a parent with pathLen 0 above it passes there — but
//! every workload certificate istiod then signs has `ca-cert.pem` as an intermediate, and Go
//! refuses those chains ("too many intermediates"). [`verify`] therefore counts the verified
//! certificate itself as an intermediate when it is a CA ([`Subject::SigningCa`]): a bundle
//! istiod would load but whose workload certificates no peer accepts is refused.
//!
//! Not checked here: name constraints (the name-constraints work owns them) and key strength
//! (callers that write a chain check every key, `pki::strength`).

use jiff::Timestamp;

use super::Certificate;

/// Go's `maxChainSignatureChecks`: a pool of many same-subject certificates cannot make path
/// building quadratic.
pub const MAX_SIGNATURE_CHECKS: usize = 100;

/// What the verified certificate is, which decides how path lengths are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A leaf (Go's `x509.Verify` of a workload certificate): intermediates below a CA are
    /// counted as Go counts them.
    Leaf,
    /// A CA that will sign leaves (istiod's `ca-cert.pem`): it counts as an intermediate for
    /// every CA above it, as it will in each workload's chain.
    SigningCa,
}

/// Why no acceptable path exists. Messages name certificates by subject, never by key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("{subject} does not chain to any of the {roots} trusted root(s)")]
    NoPath { subject: String, roots: usize },
    #[error("{subject} expired at {not_after}")]
    Expired { subject: String, not_after: Timestamp },
    #[error("{subject} is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: Timestamp },
    #[error(
        "{subject} signs {child} but may not sign certificates: it needs BasicConstraints CA:TRUE and, when it has a KeyUsage, keyCertSign"
    )]
    NotACa { subject: String, child: String },
    #[error(
        "{subject} has pathLen {path_len} but would have {below} intermediate CA(s) below it in workload chains: Go's x509.Verify refuses such chains"
    )]
    PathLenExceeded {
        subject: String,
        path_len: u32,
        below: usize,
    },
    #[error("{subject} has an ExtendedKeyUsage without serverAuth, which Go's x509.Verify (istiod) refuses")]
    EkuExcludesServerAuth { subject: String },
    #[error("gave up after {MAX_SIGNATURE_CHECKS} signature checks while building a path for {subject}")]
    TooManySignatureChecks { subject: String },
    #[error(
        "{subject} is signed with {algorithm}, which Go's x509.Verify (istiod) refuses as insecure: re-issue it signed with SHA-256 or stronger"
    )]
    BrokenSignatureHash { subject: String, algorithm: &'static str },
    #[error(
        "{subject} carries the critical extension {oid}, which Go's crypto/x509 (istiod) does not handle and therefore refuses"
    )]
    UnhandledCriticalExtension { subject: String, oid: String },
}

impl ChainError {
    /// How bad a refusal is, for picking the one to report when several paths fail: a path
    /// that got far (a failed check on a real parent) says more than "no parent found".
    fn weight(&self) -> u8 {
        match self {
            ChainError::NoPath { .. } => 0,
            ChainError::TooManySignatureChecks { .. } => 1,
            _ => 2,
        }
    }
}

/// A verified path: the certificate first, then its intermediates, the trusted root last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedPath {
    pub certificates: Vec<Certificate>,
}

impl VerifiedPath {
    pub fn anchor(&self) -> &Certificate {
        // A path always ends in a root; `verify` never returns an empty one.
        &self.certificates[self.certificates.len() - 1]
    }
}

/// The checks Go's `isValid` makes of every certificate on a path, the verified one included:
/// no critical extension it does not handle, and within the validity period.
fn usable_at(cert: &Certificate, now: Timestamp) -> Result<(), ChainError> {
    if let Some(oid) = cert.unhandled_critical_extension() {
        return Err(ChainError::UnhandledCriticalExtension {
            subject: cert.subject(),
            oid,
        });
    }
    if now > cert.not_after() {
        return Err(ChainError::Expired {
            subject: cert.subject(),
            not_after: cert.not_after(),
        });
    }
    if now < cert.not_before() {
        return Err(ChainError::NotYetValid {
            subject: cert.subject(),
            not_before: cert.not_before(),
        });
    }
    Ok(())
}

/// Go's `isValid` for a candidate issuer with `below` certificates under it that count as
/// intermediates, and the CA checks of `CheckSignatureFrom`.
fn issuer_valid(parent: &Certificate, child: &Certificate, below: usize, now: Timestamp) -> Result<(), ChainError> {
    usable_at(parent, now)?;
    if !parent.may_sign_certificates() {
        return Err(ChainError::NotACa {
            subject: parent.subject(),
            child: child.subject(),
        });
    }
    if let Some(path_len) = parent.ca_constraints().and_then(|c| c.path_len)
        && below > path_len as usize
    {
        return Err(ChainError::PathLenExceeded {
            subject: parent.subject(),
            path_len,
            below,
        });
    }
    Ok(())
}

struct Search<'a> {
    intermediates: &'a [Certificate],
    roots: &'a [Certificate],
    now: Timestamp,
    /// 1 when the verified certificate counts as an intermediate ([`Subject::SigningCa`]).
    self_counts: usize,
    signature_checks: usize,
    worst: Option<ChainError>,
}

impl Search<'_> {
    fn note(&mut self, e: ChainError) {
        if self.worst.as_ref().is_none_or(|w| e.weight() > w.weight()) {
            self.worst = Some(e);
        }
    }

    /// Depth-first as Go's `buildChains`: roots first, then intermediates; the first path
    /// that passes everything wins.
    fn extend(&mut self, path: &mut Vec<Certificate>) -> Option<Vec<Certificate>> {
        let current = path[path.len() - 1].clone();
        // Certificates below a candidate parent that count as intermediates.
        let below = path.len() - 1 + self.self_counts;
        for (is_root, pool) in [(true, self.roots), (false, self.intermediates)] {
            for candidate in pool {
                // Go's alreadyInChain: never the same certificate twice (and no loops).
                if path.contains(candidate) || current.raw_issuer() != candidate.raw_subject() {
                    continue;
                }
                self.signature_checks += 1;
                if self.signature_checks > MAX_SIGNATURE_CHECKS {
                    self.note(ChainError::TooManySignatureChecks {
                        subject: path[0].subject(),
                    });
                    return None;
                }
                // As Go: the algorithm is judged before the signature (some broken ones our
                // verifier could not even check, which would read as "no parent found").
                if let Some(algorithm) = current.broken_signature_hash() {
                    self.note(ChainError::BrokenSignatureHash {
                        subject: current.subject(),
                        algorithm,
                    });
                    continue;
                }
                if !current.is_signed_by(candidate) {
                    continue;
                }
                if let Err(e) = issuer_valid(candidate, &current, below, self.now) {
                    self.note(e);
                    continue;
                }
                path.push(candidate.clone());
                if is_root {
                    match eku_refusal(path) {
                        None => return Some(path.clone()),
                        Some(e) => self.note(e),
                    }
                } else if let Some(found) = self.extend(path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        None
    }
}

/// Go's `checkChainForKeyUsage` for serverAuth: every certificate with an EKU must allow it.
fn eku_refusal(path: &[Certificate]) -> Option<ChainError> {
    path.iter()
        .find(|c| c.eku_excludes_server_auth())
        .map(|c| ChainError::EkuExcludesServerAuth { subject: c.subject() })
}

/// Verifies `cert` as Go's `x509.Verify` would, with `intermediates` as the intermediate pool
/// and `roots` as the trusted roots, at `now`; `subject` says whether `cert` is a leaf or a CA
/// that will sign leaves (see the module docs). Returns the first acceptable path.
pub fn verify(
    cert: &Certificate,
    subject: Subject,
    intermediates: &[Certificate],
    roots: &[Certificate],
    now: Timestamp,
) -> Result<VerifiedPath, ChainError> {
    usable_at(cert, now)?;
    let mut search = Search {
        intermediates,
        roots,
        now,
        self_counts: usize::from(subject == Subject::SigningCa),
        signature_checks: 0,
        worst: None,
    };
    match search.extend(&mut vec![cert.clone()]) {
        Some(certificates) => Ok(VerifiedPath { certificates }),
        None => Err(search.worst.unwrap_or_else(|| ChainError::NoPath {
            subject: cert.subject(),
            roots: roots.len(),
        })),
    }
}

/// How deep a sub-CA signed by a CA may be, given the CA's own path up to its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubCaRoom {
    /// No pathLen above limits it.
    Unlimited,
    /// A sub-CA may carry at most this pathLen.
    AtMost(u32),
    /// No sub-CA at all: `subject`'s pathLen `path_len` is used up.
    None { subject: String, path_len: u32 },
}

impl SubCaRoom {
    /// Whether a sub-CA with `path_len` is allowed.
    pub fn allows(&self, path_len: u32) -> bool {
        match self {
            SubCaRoom::Unlimited => true,
            SubCaRoom::AtMost(max) => path_len <= *max,
            SubCaRoom::None { .. } => false,
        }
    }
}

/// What pathLen a sub-CA signed by `issuing[0]` may carry, where `issuing` is that CA's path
/// up to and including its root. A sub-CA with pathLen `p` puts up to `p + 1 + i` intermediates
/// below `issuing[i]` in its workloads' chains (its own sub-CAs, itself, and the `i` CAs
/// between), so each pathLen `L` above allows `p <= L - 1 - i`.
pub fn sub_ca_room(issuing: &[Certificate]) -> SubCaRoom {
    let mut room = SubCaRoom::Unlimited;
    for (i, cert) in issuing.iter().enumerate() {
        let Some(path_len) = cert.ca_constraints().and_then(|c| c.path_len) else {
            continue;
        };
        let allowed = i64::from(path_len) - 1 - i as i64;
        if allowed < 0 {
            return SubCaRoom::None {
                subject: cert.subject(),
                path_len,
            };
        }
        let allowed = allowed as u32;
        room = match room {
            SubCaRoom::AtMost(current) if current <= allowed => SubCaRoom::AtMost(current),
            _ => SubCaRoom::AtMost(allowed),
        };
    }
    room
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pki::SigningKey;
    use jiff::SignedDuration;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    pub(crate) fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    /// How to make one test certificate.
    #[derive(Clone)]
    pub(crate) struct Spec {
        pub cn: &'static str,
        /// `None`: a leaf without BasicConstraints; `Some(None)`: CA without pathLen.
        pub ca: Option<Option<u8>>,
        pub eku: Vec<ExtendedKeyUsagePurpose>,
        pub key_usage: Vec<KeyUsagePurpose>,
        pub from_hours: i64,
        pub to_hours: i64,
    }

    pub(crate) fn ca(cn: &'static str, path_len: Option<u8>) -> Spec {
        Spec {
            cn,
            ca: Some(path_len),
            eku: vec![],
            key_usage: vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            from_hours: -1,
            to_hours: 1000,
        }
    }

    pub(crate) fn leaf(cn: &'static str) -> Spec {
        Spec {
            ca: None,
            key_usage: vec![KeyUsagePurpose::DigitalSignature],
            eku: vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            ..ca(cn, None)
        }
    }

    /// A made certificate and its key.
    pub(crate) struct Made {
        pub cert: Certificate,
        pub key: KeyPair,
    }

    impl Made {
        pub(crate) fn signing_key(&self) -> SigningKey {
            SigningKey::from_pem(self.key.serialize_pem().as_bytes()).unwrap()
        }
    }

    /// Makes `spec`, signed by `parent` (self-signed when `None`).
    pub(crate) fn make(spec: &Spec, parent: Option<&Made>) -> Made {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, spec.cn);
        params.is_ca = match spec.ca {
            None => IsCa::NoCa,
            Some(None) => IsCa::Ca(BasicConstraints::Unconstrained),
            Some(Some(n)) => IsCa::Ca(BasicConstraints::Constrained(n)),
        };
        params.key_usages = spec.key_usage.clone();
        params.extended_key_usages = spec.eku.clone();
        let offset = |h: i64| {
            time::OffsetDateTime::from_unix_timestamp((now() + SignedDuration::from_hours(h)).as_second()).unwrap()
        };
        params.not_before = offset(spec.from_hours);
        params.not_after = offset(spec.to_hours);
        let cert = match parent {
            None => params.self_signed(&key).unwrap(),
            Some(p) => {
                let issuer = Issuer::from_ca_cert_der(&p.cert.der().to_vec().into(), &p.key).unwrap();
                params.signed_by(&key, &issuer).unwrap()
            }
        };
        Made {
            cert: Certificate::from_der(cert.der().to_vec()).unwrap(),
            key,
        }
    }

    fn verdict(r: Result<VerifiedPath, ChainError>) -> Result<Vec<String>, String> {
        r.map(|p| p.certificates.iter().map(Certificate::subject).collect())
            .map_err(|e| format!("{e:?}").split([' ', '{']).next().unwrap().to_string())
    }

    #[test]
    fn paths_are_checked_as_go_checks_them() {
        let root = make(&ca("Root", None), None);
        let root_pl0 = make(&ca("Root0", Some(0)), None);
        let int = make(&ca("Int", Some(0)), Some(&root));
        let int_under_pl0 = make(&ca("IntUnder0", Some(0)), Some(&root_pl0));
        let mid = make(&ca("Mid", Some(0)), Some(&root));
        let int_under_mid = make(&ca("IntUnderMid", Some(0)), Some(&mid));
        let not_ca = make(&leaf("NotCA"), Some(&root));
        let under_not_ca = make(&ca("UnderNotCA", Some(0)), Some(&not_ca));
        let client_only = make(
            &Spec {
                eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
                ..ca("ClientOnly", Some(0))
            },
            Some(&root),
        );
        let expired = make(
            &Spec {
                from_hours: -10,
                to_hours: -1,
                ..ca("Expired", Some(0))
            },
            Some(&root),
        );
        let no_cert_sign = make(
            &Spec {
                key_usage: vec![KeyUsagePurpose::DigitalSignature],
                ..ca("NoCertSign", None)
            },
            Some(&root),
        );
        let under_no_cert_sign = make(&ca("UnderNoCertSign", Some(0)), Some(&no_cert_sign));
        let r = |m: &Made| m.cert.clone();
        use Subject::*;
        // (case, certificate, subject, intermediates, roots, expected path or error kind)
        type Case<'a> = (
            &'a str,
            Certificate,
            Subject,
            Vec<Certificate>,
            Vec<Certificate>,
            Result<Vec<&'a str>, &'a str>,
        );
        let cases: Vec<Case> = vec![
            // istiod's intermediate directly under its root.
            (
                "direct",
                r(&int),
                SigningCa,
                vec![],
                vec![r(&root)],
                Ok(vec!["CN=Int", "CN=Root"]),
            ),
            // The root in the intermediate pool as well (cert-chain.pem ends in it): still fine.
            (
                "root in pool",
                r(&int),
                SigningCa,
                vec![r(&int), r(&root)],
                vec![r(&root)],
                Ok(vec!["CN=Int", "CN=Root"]),
            ),
            // A root with pathLen 0 above istiod's CA: istiod loads it, its workloads fail.
            (
                "root pathLen 0",
                r(&int_under_pl0),
                SigningCa,
                vec![],
                vec![r(&root_pl0)],
                Err("PathLenExceeded"),
            ),
            // ...and as a leaf (Go's own count) it is fine.
            (
                "root pathLen 0, leaf count",
                r(&int_under_pl0),
                Leaf,
                vec![],
                vec![r(&root_pl0)],
                Ok(vec!["CN=IntUnder0", "CN=Root0"]),
            ),
            // A middle CA with pathLen 0 above istiod's CA: refused.
            (
                "mid pathLen 0",
                r(&int_under_mid),
                SigningCa,
                vec![r(&mid)],
                vec![r(&root)],
                Err("PathLenExceeded"),
            ),
            // A middle CA that is missing: no path.
            (
                "missing mid",
                r(&int_under_mid),
                SigningCa,
                vec![],
                vec![r(&root)],
                Err("NoPath"),
            ),
            // A non-CA in the middle.
            (
                "not a CA",
                r(&under_not_ca),
                SigningCa,
                vec![r(&not_ca)],
                vec![r(&root)],
                Err("NotACa"),
            ),
            // A KeyUsage without keyCertSign in the middle.
            (
                "no keyCertSign",
                r(&under_no_cert_sign),
                SigningCa,
                vec![r(&no_cert_sign)],
                vec![r(&root)],
                Err("NotACa"),
            ),
            // An EKU without serverAuth.
            (
                "clientAuth only",
                r(&client_only),
                SigningCa,
                vec![],
                vec![r(&root)],
                Err("EkuExcludesServerAuth"),
            ),
            // Expired.
            (
                "expired",
                r(&expired),
                SigningCa,
                vec![],
                vec![r(&root)],
                Err("Expired"),
            ),
            // Another root.
            (
                "foreign root",
                r(&int),
                SigningCa,
                vec![],
                vec![r(&root_pl0)],
                Err("NoPath"),
            ),
        ];
        for (name, cert, subject, pool, roots, expected) in cases {
            let got = verdict(verify(&cert, subject, &pool, &roots, now()));
            let expected = expected
                .map(|v| v.iter().map(|s| s.to_string()).collect())
                .map_err(str::to_string);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn a_failing_path_does_not_hide_a_good_one() {
        // Two roots with the same subject (a re-keyed root): only one signed the intermediate.
        let root = make(&ca("Root", None), None);
        let impostor = make(&ca("Root", None), None);
        let int = make(&ca("Int", Some(0)), Some(&root));
        let path = verify(
            &int.cert,
            Subject::SigningCa,
            &[],
            &[impostor.cert.clone(), root.cert.clone()],
            now(),
        )
        .unwrap();
        assert_eq!(path.anchor(), &root.cert);
    }

    #[test]
    fn room_for_sub_cas_follows_every_path_length_above() {
        let unlimited = make(&ca("Unlimited", None), None);
        let zero = make(&ca("Zero", Some(0)), None);
        let two = make(&ca("Two", Some(2)), None);
        let one_under_two = make(&ca("One", Some(1)), Some(&two));
        let unconstrained_under_two = make(&ca("Free", None), Some(&two));
        let cases = [
            (
                "root without pathLen",
                vec![unlimited.cert.clone()],
                SubCaRoom::Unlimited,
            ),
            (
                "root with pathLen 0",
                vec![zero.cert.clone()],
                SubCaRoom::None {
                    subject: "CN=Zero".into(),
                    path_len: 0,
                },
            ),
            ("root with pathLen 2", vec![two.cert.clone()], SubCaRoom::AtMost(1)),
            // One under two: the one allows pathLen 0 below it, the two allows 2 - 1 - 1 = 0.
            (
                "pathLen 1 under 2",
                vec![one_under_two.cert.clone(), two.cert.clone()],
                SubCaRoom::AtMost(0),
            ),
            // No pathLen on the signer: its root still limits.
            (
                "free under 2",
                vec![unconstrained_under_two.cert.clone(), two.cert.clone()],
                SubCaRoom::AtMost(0),
            ),
        ];
        for (name, issuing, expected) in cases {
            assert_eq!(sub_ca_room(&issuing), expected, "{name}");
        }
        assert!(SubCaRoom::AtMost(0).allows(0) && !SubCaRoom::AtMost(0).allows(1));
    }
}
