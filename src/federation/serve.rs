//! The SPIFFE bundle endpoint, served by every replica (not only the leader, so that a peer's
//! fetch does not fail over with leadership): HTTPS on `--bundle-endpoint-addr`, `GET /` and
//! `GET /<trustDomain>`, answering the bundle of each IstioCACerts with
//! `spec.bundleEndpoint.enabled`.
//!
//! What is served comes from the API server, never from this replica's own decisions: the
//! roots and sequence the leader wrote into `status.bundleEndpoint`, the certificates out of
//! `cacerts`. The refresher keeps an in-memory copy per trust domain, rebuilt when the status
//! changes, and the default serving SVID (signed here with `ca-key.pem`) is renewed at
//! half-life and at once when the intermediate changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{debug, info, warn};

use crate::api::istio_cacerts::{IstioCACerts, bundle_endpoint_spiffe_id};
use crate::istio::bundle_endpoint::refresh_hint;
use crate::pki::sign::{CaSigner, svid};
use crate::pki::{Certificate, SigningKey};
use crate::spiffe_bundle;

/// How long the default serving SVID is valid; it is renewed at half-life.
pub const SVID_LIFETIME: SignedDuration = SignedDuration::from_hours(24);
/// How often the refresher looks at the watch cache (cheap: in memory; the API server is only
/// read when something changed).
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The most connections served at once.
const MAX_CONNECTIONS: usize = 256;
/// A `tlsSecretName` Secret is read again this often (cert-manager renews it in place).
const TLS_SECRET_REREAD: SignedDuration = SignedDuration::from_secs(30);

/// One trust domain's endpoint: the body and the serving certificate.
struct Endpoint {
    body: Bytes,
    certified: Arc<CertifiedKey>,
    /// What it was built from: rebuilt when this changes.
    basis: Basis,
    /// When to build it again even if nothing changed (SVID half-life, Secret re-read).
    rebuild_at: Timestamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Basis {
    icc: String,
    sequence: u64,
    served_roots: Vec<String>,
    intermediate: Option<String>,
    tls_secret_name: Option<String>,
    refresh_hint: String,
    /// `status.crl` (CA and number of each): a CRL signed anew is served anew.
    crls: Vec<(String, u64)>,
}

/// What every replica serves, by trust domain; and the last problem logged for each, so that
/// one that persists is logged once, not at every look.
#[derive(Clone, Default)]
pub struct Served(
    Arc<RwLock<BTreeMap<String, Endpoint>>>,
    Arc<std::sync::Mutex<BTreeMap<String, String>>>,
);

impl Served {
    /// Logs `why` for `key` unless it is what was logged last for it.
    fn warn_once(&self, key: &str, why: String) {
        let Ok(mut logged) = self.1.lock() else { return };
        if logged.get(key) != Some(&why) {
            warn!(key, "bundle endpoint: {why}");
            logged.insert(key.to_string(), why);
        }
    }

    fn clear_warning(&self, key: &str) {
        if let Ok(mut logged) = self.1.lock() {
            logged.remove(key);
        }
    }

    /// The body for a request path: `/<trustDomain>`, or `/` when exactly one is served.
    fn body(&self, path: &str) -> Option<Bytes> {
        let map = self.0.read().ok()?;
        let name = path.trim_start_matches('/');
        if name.is_empty() {
            let mut all = map.values();
            return match (all.next(), all.next()) {
                (Some(only), None) => Some(only.body.clone()),
                _ => None,
            };
        }
        map.get(name).map(|e| e.body.clone())
    }

    /// The trust domains served, for the `/` answer that lists them.
    fn trust_domains(&self) -> Vec<String> {
        self.0.read().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Served").field(&self.trust_domains()).finish()
    }
}

impl ResolvesServerCert for Served {
    /// The certificate of the trust domain the client names (SNI), else the only one served,
    /// else the first (a peer that fetches `/<trustDomain>` by IP sends no SNI).
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.0.read().ok()?;
        hello
            .server_name()
            .and_then(|name| map.get(name))
            .or_else(|| map.values().next())
            .map(|e| e.certified.clone())
    }
}

/// Binds the listener; the future serves until dropped.
pub async fn bind(
    address: SocketAddr,
    served: Served,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(served.clone()));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // Peers poll every few minutes: a few hundred connections at once is a flood, not peers.
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let serve = async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                debug!(%peer, "bundle endpoint: {MAX_CONNECTIONS} connections open; this one is closed");
                continue;
            };
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let _permit = permit;
                // A client that never finishes its handshake must not hold a task forever.
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%peer, error = %e, "bundle endpoint: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |request| {
                    let served = served.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&served, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                let _ = tokio::time::timeout(Duration::from_secs(60), connection).await;
            });
        }
    };
    Ok((bound, serve))
}

fn answer<B>(served: &Served, request: &http::Request<B>) -> http::Response<Full<Bytes>> {
    let respond = |status: u16, content_type: &str, body: Bytes| {
        http::Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("cache-control", "no-store")
            .body(Full::new(body))
            .unwrap_or_default()
    };
    if request.method() != http::Method::GET {
        return respond(405, "text/plain", Bytes::from_static(b"only GET\n"));
    }
    match served.body(request.uri().path()) {
        Some(body) => respond(200, "application/json", body),
        None => respond(
            404,
            "text/plain",
            Bytes::from(format!(
                "no bundle here; trust domains served: {:?} (GET /<trustDomain>)\n",
                served.trust_domains()
            )),
        ),
    }
}

/// Keeps [`Served`] in step with the IstioCACerts watch cache until dropped.
pub async fn refresh(client: Client, store: Store<IstioCACerts>, served: Served) {
    let mut interval = tokio::time::interval(LOOK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        refresh_once(&client, &store, &served).await;
    }
}

/// One look: builds what changed, drops trust domains no longer served.
pub async fn refresh_once(client: &Client, store: &Store<IstioCACerts>, served: &Served) {
    let now = Timestamp::now();
    let mut wanted: BTreeMap<String, (Arc<IstioCACerts>, Basis)> = BTreeMap::new();
    let mut iccs = store.state();
    iccs.sort_by_key(|i| (i.namespace(), i.name_any()));
    for icc in iccs {
        let Some(spec) = icc.spec.bundle_endpoint.as_ref().filter(|e| e.enabled) else {
            continue;
        };
        let Some(status) = icc.status.as_ref().and_then(|s| s.bundle_endpoint.as_ref()) else {
            continue;
        };
        let td = icc.spec.trust_domain.clone();
        let key = format!("{}/{}", icc.namespace().unwrap_or_default(), icc.name_any());
        if let Some((first, _)) = wanted.get(&td) {
            served.warn_once(
                &key,
                format!(
                    "IstioCACerts {} and {key} both serve trust domain {td}; the first (by namespace and name) is served",
                    first.name_any()
                ),
            );
            continue;
        }
        let basis = Basis {
            icc: key,
            sequence: status.sequence,
            served_roots: status.served_roots.clone(),
            intermediate: icc
                .status
                .as_ref()
                .and_then(|s| s.intermediate.as_ref())
                .map(|i| i.fingerprint_sha256.clone()),
            tls_secret_name: spec.tls_secret_name.clone(),
            refresh_hint: spec.refresh_hint.clone(),
            crls: icc
                .status
                .as_ref()
                .map(|s| {
                    s.crl
                        .iter()
                        .map(|c| (c.ca_fingerprint_sha256.clone(), c.number))
                        .collect()
                })
                .unwrap_or_default(),
        };
        wanted.insert(td, (icc.clone(), basis));
    }
    let stale: Vec<String> = {
        let Ok(map) = served.0.read() else { return };
        wanted
            .iter()
            .filter(|(td, (_, basis))| map.get(*td).is_none_or(|e| e.basis != *basis || now >= e.rebuild_at))
            .map(|(td, _)| td.clone())
            .collect()
    };
    for td in stale {
        let (icc, basis) = &wanted[&td];
        match build(client, icc, basis.clone(), now).await {
            Ok(endpoint) => {
                served.clear_warning(&basis.icc);
                let changed = served
                    .0
                    .read()
                    .map(|m| m.get(&td).is_none_or(|e| e.basis.sequence != basis.sequence))
                    .unwrap_or(true);
                if changed {
                    info!(trust_domain = %td, sequence = basis.sequence, roots = basis.served_roots.len(), "bundle endpoint: serving");
                }
                if let Ok(mut map) = served.0.write() {
                    map.insert(td, endpoint);
                }
            }
            // What was served stays (a peer keeps getting the last good bundle) and is tried
            // again at the next look.
            Err(why) => served.warn_once(&basis.icc, format!("trust domain {td}: {why}")),
        }
    }
    if let Ok(mut map) = served.0.write() {
        map.retain(|td, _| wanted.contains_key(td));
    }
}

async fn build(client: &Client, icc: &IstioCACerts, basis: Basis, now: Timestamp) -> Result<Endpoint, String> {
    let namespace = icc.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let read = |name: String| {
        let (secrets, namespace) = (secrets.clone(), namespace.clone());
        async move {
            let secret = secrets
                .get_opt(&name)
                .await
                .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?
                .ok_or_else(|| format!("Secret {namespace}/{name} does not exist"))?;
            Ok::<_, String>(crate::istio::decide::secret_data(&secret))
        }
    };
    let cacerts = read(icc.spec.target_secret_name.clone()).await?;
    let get = |key: &str| {
        cacerts
            .get(key)
            .map(|v| v.as_slice())
            .ok_or_else(|| format!("{} has no {key}", icc.spec.target_secret_name))
    };
    let in_file = Certificate::parse_pem_bundle(get("root-cert.pem")?, "root-cert.pem").map_err(|e| e.to_string())?;
    let roots = basis
        .served_roots
        .iter()
        .map(|fp| {
            in_file
                .iter()
                .find(|c| c.fingerprint() == *fp)
                .cloned()
                .ok_or_else(|| format!("root {fp} of status.bundleEndpoint is not in root-cert.pem (yet)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hint = icc
        .spec
        .bundle_endpoint
        .as_ref()
        .ok_or("bundleEndpoint is gone")
        .and_then(|spec| refresh_hint(spec).map_err(|_| "bad refresh hint"))?;
    // The roots are served whatever becomes of the CRLs: a peer must keep following them.
    let revocation = match (cacerts.get("ca-crl.pem"), cacerts.get("cert-chain.pem")) {
        (Some(crls), Some(chain)) => match served_revocation(chain, crls) {
            Ok(r) => Some(r),
            Err(why) => {
                warn!(icc = %basis.icc, "bundle endpoint: serving no CRLs: {why}");
                None
            }
        },
        _ => None,
    };
    let body = spiffe_bundle::encode_with_revocation(&roots, basis.sequence, hint, revocation.as_ref())?;
    let (certified, rebuild_at) = match &basis.tls_secret_name {
        None => {
            let intermediate = Certificate::parse_pem_bundle(get("ca-cert.pem")?, "ca-cert.pem")
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or("ca-cert.pem holds no certificate")?;
            let key = SigningKey::from_pem(get("ca-key.pem")?).map_err(|e| e.to_string())?;
            let chain =
                Certificate::parse_pem_bundle(get("cert-chain.pem")?, "cert-chain.pem").map_err(|e| e.to_string())?;
            let ca = CaSigner {
                certificate: &intermediate,
                key: &key,
            };
            // Not past the intermediate: an SVID outliving its issuer would fail verification.
            let not_after = (now + SVID_LIFETIME).min(intermediate.not_after());
            let (leaf, leaf_key) = svid(
                &ca,
                &bundle_endpoint_spiffe_id(&icc.spec.trust_domain),
                now - SignedDuration::from_mins(5),
                not_after,
            )
            .map_err(|e| format!("signing the serving SVID: {e}"))?;
            let mut ders = vec![CertificateDer::from(leaf.der().to_vec())];
            ders.extend(chain.iter().map(|c| CertificateDer::from(c.der().to_vec())));
            let certified = certified_key(ders, leaf_key.pkcs8_der())?;
            let half_life = now + SignedDuration::from_secs((not_after.as_second() - now.as_second()).max(2) / 2);
            (certified, half_life)
        }
        Some(name) => {
            let tls = read(name.clone()).await?;
            let crt = tls
                .get("tls.crt")
                .ok_or_else(|| format!("Secret {name} has no tls.crt"))?;
            let key = tls
                .get("tls.key")
                .ok_or_else(|| format!("Secret {name} has no tls.key"))?;
            let chain = Certificate::parse_pem_bundle(crt, "tls.crt").map_err(|e| e.to_string())?;
            let ders = chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect();
            let key = SigningKey::from_pem(key).map_err(|e| format!("Secret {name} key tls.key: {e}"))?;
            (certified_key(ders, key.pkcs8_der())?, now + TLS_SECRET_REREAD)
        }
    };
    Ok(Endpoint {
        body: Bytes::from(body),
        certified,
        basis,
        rebuild_at,
    })
}

/// What peers get for revocation: the CAs of `cert-chain.pem` below its root, and the CRLs of
/// `ca-crl.pem` that a CA of that chain signed. Not the others (a replaced intermediate's,
/// peers' own): a peer could not check them against a CA it is given, and each cluster serves
/// only its own.
fn served_revocation(chain_pem: &[u8], crl_pem: &[u8]) -> Result<spiffe_bundle::Revocation, String> {
    let chain = Certificate::parse_pem_bundle(chain_pem, "cert-chain.pem").map_err(|e| e.to_string())?;
    let crls = crate::pki::crl::Crl::parse_pem_bundle(crl_pem, "ca-crl.pem").map_err(|e| e.to_string())?;
    Ok(spiffe_bundle::Revocation {
        crls: crls
            .into_iter()
            .filter(|crl| chain.iter().any(|ca| crl.is_signed_by(ca)))
            .collect(),
        cas: chain.into_iter().filter(|c| !c.is_self_signed()).collect(),
    })
}

fn certified_key(chain: Vec<CertificateDer<'static>>, pkcs8: Vec<u8>) -> Result<Arc<CertifiedKey>, String> {
    let provider = super::fetch::provider();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| format!("the serving certificate and key do not go together: {e}"))
}
