//! A peer's SPIFFE bundle endpoint that the test controls, on loopback: it serves whatever
//! certificate and body it is told to, so that the hostile endpoints of issue 24 (a rollback,
//! a wrong SPIFFE ID, a certificate from elsewhere, an endless or broken body, a leaf posing as
//! a root) can be put in front of the real controller. A stand-in for a peer cluster only
//! where a real one cannot misbehave on demand; the honest peer is a real controller
//! elsewhere (tests/root_rotation.rs).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use jiff::{SignedDuration, Timestamp};
use mesh_ca_issuer::api::issuer::RootBootstrap;
use mesh_ca_issuer::pki::sign::{CaSigner, self_signed_root, svid};
use mesh_ca_issuer::pki::{Certificate, SigningKey};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// A CA of the fixture: a root and its key.
pub struct Ca {
    pub root: Certificate,
    key: SigningKey,
}

impl Ca {
    pub fn new() -> Self {
        let spec = RootBootstrap {
            duration: "8760h".into(),
            ..Default::default()
        };
        let (root, key) = self_signed_root(&spec, Timestamp::now() - SignedDuration::from_hours(1)).expect("root");
        Self { root, key }
    }

    /// An X.509-SVID for `id`, valid for a day: what a bundle endpoint serves.
    pub fn svid(&self, id: &str) -> (Certificate, SigningKey) {
        let now = Timestamp::now();
        svid(
            &CaSigner {
                certificate: &self.root,
                key: &self.key,
            },
            id,
            now - SignedDuration::from_mins(5),
            now + SignedDuration::from_hours(24),
        )
        .expect("svid")
    }
}

impl Default for Ca {
    fn default() -> Self {
        Self::new()
    }
}

/// A private Web PKI for loopback: (CA PEM, server certificate PEM for IP 127.0.0.1, its key).
pub fn web_pki_for_loopback() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test Web PKI CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "bundle.peer.example");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), leaf_cert.pem(), key.serialize_pem())
}

/// What the endpoint serves next.
struct Behaviour {
    certified: Arc<CertifiedKey>,
    body: Bytes,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Behaviour>>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shared")
    }
}

impl ResolvesServerCert for Shared {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.lock().unwrap().certified.clone())
    }
}

/// The endpoint; stops serving when dropped.
pub struct BundlePeer {
    pub port: u16,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

fn certified(leaf: &Certificate, key: &SigningKey, chain: &[&Certificate]) -> Arc<CertifiedKey> {
    let mut ders = vec![CertificateDer::from(leaf.der().to_vec())];
    ders.extend(chain.iter().map(|c| CertificateDer::from(c.der().to_vec())));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der()));
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(CertifiedKey::from_der(ders, key, &provider).expect("certified key"))
}

impl BundlePeer {
    /// Serves `body` with `leaf` (signed by `issuer`) on a free loopback port.
    pub async fn start(leaf: &(Certificate, SigningKey), issuer: &Certificate, body: impl Into<Bytes>) -> Self {
        mesh_ca_issuer::install_crypto_provider();
        let shared = Shared(Arc::new(Mutex::new(Behaviour {
            certified: certified(&leaf.0, &leaf.1, &[issuer]),
            body: body.into(),
        })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(shared.clone()));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, shared) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_request| {
                        let body = shared.0.lock().unwrap().body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { port, shared, task }
    }

    pub fn url(&self, trust_domain: &str) -> String {
        format!("https://127.0.0.1:{}/{trust_domain}", self.port)
    }

    /// Serves `body` from now on.
    pub fn serve(&self, body: impl Into<Bytes>) {
        self.shared.0.lock().unwrap().body = body.into();
    }

    /// Presents `leaf` (signed by `issuer`) from now on.
    pub fn present(&self, leaf: &(Certificate, SigningKey), issuer: &Certificate) {
        self.shared.0.lock().unwrap().certified = certified(&leaf.0, &leaf.1, &[issuer]);
    }
}

impl Drop for BundlePeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
