//! The local CA backend: a CA certificate and key kept in a Kubernetes Secret, in the layout of
//! cert-manager's CA issuer (`tls.crt`, `tls.key`, optionally `ca.crt`).
//!
//! Usually `tls.crt` is a self-signed root. It may also be an intermediate whose chain up to a
//! root is in the rest of `tls.crt` or in `ca.crt`; requests then get that chain too. Before a
//! CA is used it must: parse; have a key that matches; be a CA (and allow keyCertSign when it
//! has a KeyUsage); be within its validity; and chain to a self-signed root in the Secret.
//!
//! Not every Secret with a CA in it is a CA for us to sign with ([`secret_refusal`]): a
//! `cacerts` we write, a Secret cert-manager issued (istiod's own intermediate is one), and any
//! Secret in an Istio namespace are refused unless marked `meshca.io/ca: "true"`, so that an
//! issuer in istiod's namespace cannot turn the mesh's own intermediate into a signer of leaves
//! for any identity.
//!
//! Bounded work: the Secret may hold at most [`MAX_CERTIFICATES`] certificates and the search
//! for the root makes at most [`crate::pki::chain::MAX_SIGNATURE_CHECKS`] signature checks, and parsing and
//! checking run on the blocking pool, never on the async workers the Lease renewal shares.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::{
    BackendError, Backends, CaInfo, IssuedChain, IssuerScope, Purpose, SignOutcome, SignRequest, Signer, signing_ca,
};
use crate::api::issuer::LocalCA;
use crate::pki::chain::{SubCaRoom, sub_ca_room};
use crate::pki::policy::CaLifetime;
use crate::pki::sign::{CaSigner, probe_signing, sign_csr};
use crate::pki::{Certificate, SigningKey};

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
/// The label that marks a Secret as a CA for local CA issuers, where one is required.
pub const CA_LABEL: &str = "meshca.io/ca";
/// The most certificates `tls.crt` and `ca.crt` may hold together. A CA and its chain up to a
/// root is a handful; thousands would only make every check of the issuer expensive.
pub const MAX_CERTIFICATES: usize = 32;

/// Condition reasons an issuer gets from this backend.
pub mod reason {
    pub use crate::backend::signing_ca::reason::{
        CA_EXPIRED, CA_NOT_YET_VALID, INCOMPLETE_CHAIN, NOT_A_CA, WEAK_CA_KEY,
    };
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_FORBIDDEN: &str = "SecretForbidden";
    pub const INVALID_CA: &str = "InvalidCA";
    pub const KEY_MISMATCH: &str = "KeyMismatch";
    pub const API_ERROR: &str = "APIError";
    pub const SIGNING_FAILED: &str = "SigningFailed";
    pub const INVALID_CA_SECRET: &str = "InvalidCASecret";
}

/// Why a Secret may not serve as a local CA at all, judged from its metadata before its data is
/// read; `None` when it may. `istio_namespaces` is `--istio-namespaces`.
pub fn secret_refusal(secret: &Secret, display: &str, istio_namespaces: &[String]) -> Option<String> {
    let meta = &secret.metadata;
    let marked = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(CA_LABEL))
        .is_some_and(|v| v == "true");
    let annotations = meta.annotations.clone().unwrap_or_default();
    // A cacerts we wrote holds istiod's intermediate and its key: never a CA for an issuer.
    if let Some(owner) = annotations.get(crate::istio::cacerts::OWNER_ANNOTATION) {
        return Some(format!(
            "{display} is the cacerts of IstioCACerts {owner} (istiod's own CA), not a CA for an issuer"
        ));
    }
    if !marked {
        if let Some(certificate) = annotations.get("cert-manager.io/certificate-name") {
            return Some(format!(
                "{display} was issued by cert-manager for Certificate {certificate} (istiod's intermediate is such a Secret), \
                 so it is not used as a CA unless it carries the label {CA_LABEL}: \"true\" (set it with the Certificate's spec.secretTemplate.labels)"
            ));
        }
        let namespace = meta.namespace.as_deref().unwrap_or_default();
        if istio_namespaces.iter().any(|n| n == namespace) {
            return Some(format!(
                "{display} is in the Istio namespace {namespace}, where only a Secret labelled {CA_LABEL}: \"true\" is used as a CA (istiod's own key material lives there)"
            ));
        }
    }
    None
}

/// Refuses more than [`MAX_CERTIFICATES`] PEM certificates, counted before any is decoded.
fn check_certificate_count(data: Option<&BTreeMap<String, ByteString>>, display: &str) -> Result<(), BackendError> {
    let count: usize = [TLS_CRT, CA_CRT]
        .iter()
        .filter_map(|k| data.and_then(|d| d.get(*k)))
        .map(|b| crate::pki::pem::count_blocks(&b.0))
        .sum();
    if count > MAX_CERTIFICATES {
        return Err(BackendError::issuer_not_ready(
            reason::INVALID_CA,
            format!(
                "{display} holds {count} certificates in {TLS_CRT} and {CA_CRT}; at most {MAX_CERTIFICATES} are accepted: keep the CA and its chain up to the root only"
            ),
        ));
    }
    Ok(())
}

pub struct LocalCa {
    ca: Certificate,
    key: Arc<SigningKey>,
    /// Certificates between `ca` and the root, bottom-up, excluding both.
    path: Vec<Certificate>,
    root: Certificate,
    info: CaInfo,
    /// What pathLen a sub-CA signed here may carry (path lengths of `ca`, `path` and `root`).
    sub_ca_room: SubCaRoom,
}

/// CAs already read and checked, by Secret, reused while the Secret keeps its uid and
/// resourceVersion. The Secret is still read for every signing, so a replaced CA is used from
/// the first signing after the write; what is saved is parsing the CA again and verifying its
/// chain's signatures, which cost more than signing with it. One entry per CA Secret in use.
///
/// Those reads are coalesced ([`super::coalesce`]): signings that begin while one read is in
/// flight share the next, so a burst makes one read per batch, and still none of them signs
/// with a CA replaced before it began.
#[derive(Default)]
pub struct CheckedCas {
    checked: Mutex<HashMap<String, CheckedCa>>,
    reads: super::coalesce::Coalesced<SecretRead>,
}

/// A CA Secret as one read found it, shared by the signings it serves.
type SecretRead = Result<Option<Arc<Secret>>, Arc<kube::Error>>;

struct CheckedCa {
    uid: Option<String>,
    resource_version: Option<String>,
    ca: Arc<LocalCa>,
}

impl CheckedCas {
    fn get(&self, key: &str, secret: &Secret) -> Option<Arc<LocalCa>> {
        let map = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(key)?;
        // Both must match: a Secret deleted and created again may reuse neither, but a
        // resourceVersion alone says nothing across objects.
        let same = entry.uid.is_some()
            && entry.resource_version.is_some()
            && entry.uid == secret.metadata.uid
            && entry.resource_version == secret.metadata.resource_version;
        same.then(|| entry.ca.clone())
    }

    fn put(&self, key: String, secret: &Secret, ca: Arc<LocalCa>) {
        let entry = CheckedCa {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
            ca,
        };
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, entry);
    }

    fn forget(&self, key: &str) {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

impl LocalCa {
    /// Reads the CA Secret named by `spec` in the scope's Secret namespace, and checks it: in
    /// full for a health check, and for signing unless the checked CAs hold this very version
    /// of it (then only its validity at `now` is checked again).
    pub async fn load(
        backends: &Backends,
        spec: &LocalCA,
        scope: &IssuerScope,
        purpose: Purpose,
        now: Timestamp,
    ) -> Result<Arc<Self>, BackendError> {
        let key = format!("{}/{}", scope.secret_namespace, spec.secret_name);
        let checked = &backends.local_cas;
        let loaded = Self::read_and_check(backends, &key, spec, scope, purpose, now).await;
        if loaded.is_err() {
            checked.forget(&key);
        }
        loaded
    }

    async fn read_and_check(
        backends: &Backends,
        key: &str,
        spec: &LocalCA,
        scope: &IssuerScope,
        purpose: Purpose,
        now: Timestamp,
    ) -> Result<Arc<Self>, BackendError> {
        let (client, checked) = (&backends.kube, &backends.local_cas);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &scope.secret_namespace);
        let display = format!("Secret {}/{}", scope.secret_namespace, spec.secret_name);
        let read = || async {
            secrets
                .get_opt(&spec.secret_name)
                .await
                .map(|s| s.map(Arc::new))
                .map_err(Arc::new)
        };
        // A health check proves nothing about the next signing: it reads for itself.
        let found = match purpose {
            Purpose::Signing => checked.reads.read(key, read).await,
            Purpose::HealthCheck => read().await,
        };
        let secret = match found {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                let hint = if spec.bootstrap.is_some() {
                    "it will be created with a new self-signed root (localCA.bootstrap)"
                } else {
                    "create it with the root's tls.crt and tls.key, or set localCA.bootstrap to have one generated"
                };
                return Err(BackendError::issuer_not_ready(
                    reason::SECRET_NOT_FOUND,
                    format!("{display} not found: {hint}"),
                ));
            }
            Err(e) if matches!(&*e, kube::Error::Api(status) if status.code == 403) => {
                return Err(BackendError::issuer_not_ready(
                    reason::SECRET_FORBIDDEN,
                    format!(
                        "not allowed to read {display}: grant the controller read access to Secrets in namespace {} (Helm value issuerNamespaces)",
                        scope.secret_namespace
                    ),
                ));
            }
            Err(e) => {
                return Err(BackendError::retryable(
                    reason::API_ERROR,
                    format!("reading {display}: {e}"),
                ));
            }
        };
        if let Some(why) = secret_refusal(&secret, &display, &backends.istio_namespaces) {
            return Err(BackendError::issuer_not_ready(reason::INVALID_CA_SECRET, why));
        }
        if purpose == Purpose::Signing
            && let Some(ca) = checked.get(key, &secret)
        {
            signing_ca::check_validity(&ca.ca, &display, now)?;
            return Ok(ca);
        }
        // Parsing, chain signatures and the probe signature are CPU work that grows with what a
        // tenant put in the Secret: never on the async workers (the Lease renewal runs there).
        let data = secret.data.clone();
        let task_display = display.clone();
        let ca = tokio::task::spawn_blocking(move || Self::from_data(data.as_ref(), &task_display, purpose, now))
            .await
            .map_err(|e| {
                BackendError::retryable(reason::API_ERROR, format!("checking {display}: task failed: {e}"))
            })??;
        let ca = Arc::new(ca);
        // Only signing fills the cache: a health check proves nothing about the next signing.
        if purpose == Purpose::Signing {
            checked.put(key.to_string(), &secret, ca.clone());
        }
        Ok(ca)
    }

    /// Checks a CA from a Secret's data. Pure apart from the probe signature.
    pub fn from_data(
        data: Option<&BTreeMap<String, ByteString>>,
        display: &str,
        purpose: Purpose,
        now: Timestamp,
    ) -> Result<Self, BackendError> {
        let invalid = |reason, message: String| BackendError::issuer_not_ready(reason, message);
        check_certificate_count(data, display)?;
        let field = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.as_slice());
        let crt = field(TLS_CRT).ok_or_else(|| invalid(reason::INVALID_CA, format!("{display} has no {TLS_CRT}")))?;
        let key = field(TLS_KEY).ok_or_else(|| invalid(reason::INVALID_CA, format!("{display} has no {TLS_KEY}")))?;
        let mut certs = Certificate::parse_pem_bundle(crt, "tls.crt")
            .map_err(|e| invalid(reason::INVALID_CA, format!("{display}: {e}")))?;
        let extra = match field(CA_CRT) {
            Some(bytes) if !bytes.is_empty() => Certificate::parse_pem_bundle(bytes, "ca.crt")
                .map_err(|e| invalid(reason::INVALID_CA, format!("{display}: {e}")))?,
            _ => Vec::new(),
        };
        let ca = certs.remove(0);
        let subject = ca.subject();
        // Judged from the certificate, before the key is loaded: a weak key is named as weak,
        // not reported as one that "cannot be decoded".
        signing_ca::check_strength(&ca, display, "replace the CA with a stronger key")?;
        let key =
            SigningKey::from_pem(key).map_err(|e| invalid(reason::INVALID_CA, format!("{display} {TLS_KEY}: {e}")))?;
        if !key.matches(&ca) {
            return Err(invalid(
                reason::KEY_MISMATCH,
                format!("{display}: {TLS_KEY} is not the key of the certificate {subject} in {TLS_CRT}"),
            ));
        }
        signing_ca::check_is_ca(&ca, display)?;
        signing_ca::check_validity(&ca, display, now)?;
        let pool: Vec<Certificate> = certs.into_iter().chain(extra).collect();
        let (path, root) = signing_ca::path_to_root(&ca, &pool).map_err(|why| {
            invalid(
                reason::INCOMPLETE_CHAIN,
                format!("{display}: {why}: keep the CA's chain up to a self-signed root in {TLS_CRT} or {CA_CRT}"),
            )
        })?;
        if purpose == Purpose::HealthCheck {
            probe_signing(
                &CaSigner {
                    certificate: &ca,
                    key: &key,
                },
                now,
            )
            .map_err(|e| invalid(reason::INVALID_CA, format!("{display}: {e}")))?;
        }
        // The lifetime that bounds what we sign: the CA's own, cut by any CA above it.
        let not_after = path
            .iter()
            .chain([&root])
            .map(Certificate::not_after)
            .fold(ca.not_after(), Ord::min);
        let info = CaInfo {
            summary: ca.summary(),
            lifetime: CaLifetime {
                not_before: ca.not_before(),
                not_after,
                max_validity: None,
            },
        };
        let issuing: Vec<Certificate> = std::iter::once(ca.clone())
            .chain(path.iter().cloned())
            .chain((ca != root).then(|| root.clone()))
            .collect();
        let sub_ca_room = sub_ca_room(&issuing);
        Ok(Self {
            ca,
            key: Arc::new(key),
            path,
            root,
            info,
            sub_ca_room,
        })
    }

    pub fn root(&self) -> &Certificate {
        &self.root
    }

    /// The CA and its key, to sign the CA's CRLs (revocation).
    pub fn crl_signer(&self) -> crate::pki::crl::CrlSigner {
        crate::pki::crl::CrlSigner {
            certificate: self.ca.clone(),
            key: self.key.clone(),
        }
    }
}

impl Signer for LocalCa {
    fn backend_name(&self) -> &'static str {
        "localCA"
    }

    fn ca(&self) -> &CaInfo {
        &self.info
    }

    fn sub_ca_room(&self) -> SubCaRoom {
        self.sub_ca_room.clone()
    }

    fn sign<'a>(&'a self, request: SignRequest<'a>) -> BoxFuture<'a, Result<SignOutcome, BackendError>> {
        Box::pin(async move {
            // Never a sub-CA whose workload chains Go would refuse (issuers that may sign
            // leaves only are not stopped by `check_path_len_room`, so ask again here).
            if let Some(path_len) = request.plan.ca_path_len
                && !self.sub_ca_room.allows(u32::from(path_len))
            {
                return Err(BackendError::issuer_not_ready(
                    super::PATH_LEN_EXHAUSTED,
                    format!(
                        "{} cannot sign a sub-CA with pathLen {path_len}: its chain's path lengths allow {:?}",
                        self.ca.subject(),
                        self.sub_ca_room
                    ),
                ));
            }
            // An ECDSA signature costs less than handing it to the blocking pool and back (two
            // thread wake-ups, and a pool that grows a thread per concurrent signing in a
            // burst); an RSA signature takes milliseconds and stays off the async threads.
            let signed = if self.key.signs_quickly() {
                sign_csr(
                    request.csr,
                    request.plan,
                    &CaSigner {
                        certificate: &self.ca,
                        key: &self.key,
                    },
                )
            } else {
                let (csr, plan) = (request.csr.clone(), request.plan.clone());
                let (ca, key) = (self.ca.clone(), self.key.clone());
                tokio::task::spawn_blocking(move || {
                    sign_csr(
                        &csr,
                        &plan,
                        &CaSigner {
                            certificate: &ca,
                            key: &key,
                        },
                    )
                })
                .await
                .map_err(|e| BackendError::retryable(reason::SIGNING_FAILED, format!("signing task failed: {e}")))?
            };
            let certificate = signed.map_err(|e| match e {
                // The request itself cannot be signed as asked.
                crate::pki::PkiError::UnsupportedSubject(_)
                | crate::pki::PkiError::UnsupportedPublicKey(_)
                | crate::pki::PkiError::UnsupportedSan(_) => BackendError::permanent("BadRequest", e.to_string()),
                // Anything else is about the CA.
                _ => BackendError::issuer_not_ready(reason::SIGNING_FAILED, e.to_string()),
            })?;
            let mut chain = vec![certificate];
            if self.ca != self.root {
                chain.push(self.ca.clone());
                chain.extend(self.path.iter().cloned());
            }
            Ok(SignOutcome::Issued(IssuedChain {
                chain,
                root: self.root.clone(),
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::pki::sign::self_signed_root;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn data(pairs: &[(&str, String)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    fn root() -> (Certificate, SigningKey) {
        self_signed_root(&RootBootstrap::default(), now() - jiff::SignedDuration::from_hours(1)).unwrap()
    }

    fn reason_of(result: Result<LocalCa, BackendError>) -> &'static str {
        match result {
            Ok(_) => "Ok",
            Err(e) => {
                assert_eq!(e.kind, super::super::FailureKind::IssuerNotReady, "{e:?}");
                assert!(
                    !e.message.contains("PRIVATE KEY"),
                    "no key material in messages: {}",
                    e.message
                );
                e.reason
            }
        }
    }

    #[test]
    fn ca_secret_checks() {
        let (cert, key) = root();
        let (_, other_key) = root();
        // A certificate that is not a CA, signed by the root.
        let (leaf, leaf_key) = crate::pki::sign::tests::signed_istiod(
            &CaSigner {
                certificate: &cert,
                key: &key,
            },
            None,
            now() - jiff::SignedDuration::from_secs(60),
            now() + jiff::SignedDuration::from_hours(1),
        );
        let expired_at = now() + jiff::SignedDuration::from_hours(24 * 365 * 20);
        let cases: Vec<(&str, BTreeMap<String, ByteString>, Timestamp, &str)> = vec![
            // A bootstrapped root: usable.
            (
                "good root",
                data(&[(TLS_CRT, cert.to_pem()), (TLS_KEY, key.to_pem())]),
                now(),
                "Ok",
            ),
            // Missing fields and garbage.
            ("no key", data(&[(TLS_CRT, cert.to_pem())]), now(), reason::INVALID_CA),
            ("no cert", data(&[(TLS_KEY, key.to_pem())]), now(), reason::INVALID_CA),
            (
                "garbage cert",
                data(&[(TLS_CRT, "garbage".into()), (TLS_KEY, key.to_pem())]),
                now(),
                reason::INVALID_CA,
            ),
            (
                "garbage key",
                data(&[(TLS_CRT, cert.to_pem()), (TLS_KEY, "garbage".into())]),
                now(),
                reason::INVALID_CA,
            ),
            // The key of another root.
            (
                "key mismatch",
                data(&[(TLS_CRT, cert.to_pem()), (TLS_KEY, other_key.to_pem())]),
                now(),
                reason::KEY_MISMATCH,
            ),
            // A leaf certificate cannot sign.
            (
                "not a CA",
                data(&[(TLS_CRT, leaf.to_pem()), (TLS_KEY, leaf_key.to_pem())]),
                now(),
                reason::NOT_A_CA,
            ),
            // Past notAfter.
            (
                "expired",
                data(&[(TLS_CRT, cert.to_pem()), (TLS_KEY, key.to_pem())]),
                expired_at,
                reason::CA_EXPIRED,
            ),
        ];
        for (name, d, at, expected) in cases {
            assert_eq!(
                reason_of(LocalCa::from_data(Some(&d), "Secret ns/root", Purpose::HealthCheck, at)),
                expected,
                "{name}"
            );
        }
        assert_eq!(
            reason_of(LocalCa::from_data(None, "Secret ns/root", Purpose::HealthCheck, now())),
            reason::INVALID_CA
        );
    }

    #[test]
    fn intermediate_ca_signs_with_its_chain_and_the_root_in_ca_crt() {
        let (root_cert, root_key) = root();
        // An intermediate CA (pathLen 1) signed by the root, with its own key.
        let int_key = SigningKey::generate(&Default::default()).unwrap();
        let int_csr = {
            let mut params = rcgen::CertificateParams::default();
            // rcgen pre-fills a CN; start from an empty name so ours comes out in the order given.
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(rcgen::DnType::CommonName, "Issuing CA");
            let pair = rcgen::KeyPair::from_pem(&int_key.to_pem()).unwrap();
            let pem = params.serialize_request(&pair).unwrap().pem().unwrap();
            crate::pki::CertificateSigningRequest::from_pem(pem.as_bytes()).unwrap()
        };
        let plan = crate::pki::policy::SigningPlan {
            ca_path_len: Some(1),
            not_before: now() - jiff::SignedDuration::from_secs(60),
            not_after: now() + jiff::SignedDuration::from_hours(24 * 365),
            requested: std::time::Duration::from_secs(3600),
            clamped: None,
            name_constraints: None,
        };
        let int_cert = sign_csr(
            &int_csr,
            &plan,
            &CaSigner {
                certificate: &root_cert,
                key: &root_key,
            },
        )
        .unwrap();
        let secret = data(&[
            (TLS_CRT, int_cert.to_pem()),
            (TLS_KEY, int_key.to_pem()),
            (CA_CRT, root_cert.to_pem()),
        ]);
        let ca = LocalCa::from_data(Some(&secret), "Secret ns/int", Purpose::HealthCheck, now()).unwrap();
        assert_eq!(ca.root(), &root_cert);
        assert_eq!(
            ca.ca().lifetime.not_after,
            int_cert.not_after().min(root_cert.not_after())
        );
        // Without the root the chain is incomplete.
        let no_root = data(&[(TLS_CRT, int_cert.to_pem()), (TLS_KEY, int_key.to_pem())]);
        assert_eq!(
            reason_of(LocalCa::from_data(
                Some(&no_root),
                "Secret ns/int",
                Purpose::HealthCheck,
                now()
            )),
            reason::INCOMPLETE_CHAIN
        );
    }

    #[test]
    fn a_ca_whose_path_length_is_used_up_refuses_to_sign_sub_cas() {
        use crate::pki::chain::tests::{ca, make};
        let root = make(&ca("Root", Some(0)), None);
        let secret = data(&[(TLS_CRT, root.cert.to_pem()), (TLS_KEY, root.signing_key().to_pem())]);
        let local = LocalCa::from_data(Some(&secret), "Secret ns/root", Purpose::HealthCheck, now()).unwrap();
        // The issuer check says so, naming the certificate and its pathLen...
        let err = super::super::check_path_len_room(&local, &Default::default()).unwrap_err();
        assert_eq!(
            (err.kind, err.reason),
            (
                super::super::FailureKind::IssuerNotReady,
                super::super::PATH_LEN_EXHAUSTED
            )
        );
        assert!(err.message.contains("CN=Root has pathLen 0"), "{}", err.message);
        // ...and signing a sub-CA is refused even when asked directly.
        let csr = crate::pki::sign::tests::istiod_csr();
        let plan = crate::pki::policy::SigningPlan {
            ca_path_len: Some(0),
            not_before: now(),
            not_after: now() + jiff::SignedDuration::from_hours(1),
            requested: std::time::Duration::from_secs(3600),
            clamped: None,
            name_constraints: None,
        };
        let request = SignRequest {
            csr: &csr,
            plan: &plan,
            request_uid: "u",
            backend_ref: None,
        };
        let refused = futures::executor::block_on(local.sign(request)).unwrap_err();
        assert_eq!(refused.reason, super::super::PATH_LEN_EXHAUSTED);

        // A root with pathLen 1 leaves room for exactly pathLen 0.
        let roomy = make(&ca("Roomy", Some(1)), None);
        let secret = data(&[(TLS_CRT, roomy.cert.to_pem()), (TLS_KEY, roomy.signing_key().to_pem())]);
        let local = LocalCa::from_data(Some(&secret), "Secret ns/root", Purpose::HealthCheck, now()).unwrap();
        assert_eq!(local.sub_ca_room(), SubCaRoom::AtMost(0));
        assert!(super::super::check_path_len_room(&local, &Default::default()).is_ok());
    }
}
