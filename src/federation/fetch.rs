//! One fetch of a peer's SPIFFE bundle endpoint, authenticated as its profile says:
//! - `https_spiffe`: the server's certificate must chain to the roots of the last bundle
//!   accepted from this peer (the bootstrap bundle before the first), and carry exactly the
//!   anchor's `endpointSPIFFEID` as its only URI SAN. No DNS name is checked: the SPIFFE ID
//!   is the name (SPIFFE Federation §5.2.2).
//! - `https_web`: ordinary Web PKI, against the anchor's `caBundle` or the system's roots.
//!
//! The body is read up to one byte past the limit, so that an endless body is refused by name
//! rather than read.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::istio::bundle_source::Fetch;
use crate::pki::chain::{self, Subject};
use crate::pki::csr::spiffe_trust_domain;
use crate::pki::{Certificate, name_constraints};
use crate::spiffe_bundle::MAX_BUNDLE_BYTES;

/// How a fetch authenticates the endpoint.
#[derive(Clone, Debug)]
pub enum Authenticate {
    /// The server must present an X.509-SVID with this ID, chaining to these roots.
    Spiffe { id: String, roots: Vec<Certificate> },
    /// Web PKI, against these CAs (empty: the system's roots).
    Web { cas: Vec<Certificate> },
}

/// GETs `url`; `Fetch::Failed` names why, never with the body.
pub async fn fetch(url: &str, authenticate: &Authenticate, timeout: Duration) -> Fetch {
    let what = Body {
        accept: "application/json",
        limit: MAX_BUNDLE_BYTES,
        name: "the bundle",
    };
    match get_within(url, authenticate, timeout, &what).await {
        Ok(body) => Fetch::Body(body),
        Err(why) => Fetch::Failed(why),
    }
}

/// What a GET asks for: its `accept` header, the most bytes read, and its name in messages.
pub struct Body {
    pub accept: &'static str,
    pub limit: usize,
    pub name: &'static str,
}

/// GETs `url` over https within `timeout`, authenticated as `authenticate` says; the error
/// names the URL and why, never with the body.
pub async fn get_within(
    url: &str,
    authenticate: &Authenticate,
    timeout: Duration,
    what: &Body,
) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(timeout, get(url, authenticate, what)).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(why)) => Err(format!("fetching {url}: {why}")),
        Err(_) => Err(format!("fetching {url}: no answer within {}s", timeout.as_secs())),
    }
}

async fn get(url: &str, authenticate: &Authenticate, what: &Body) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err("only https:// is fetched".into());
    }
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match authenticate {
        Authenticate::Spiffe { id, roots } => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeVerifier {
                id: id.clone(),
                roots: roots.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect(),
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Authenticate::Web { cas } => {
            let mut store = rustls::RootCertStore::empty();
            if cas.is_empty() {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = store.add(cert);
                }
            } else {
                for ca in cas {
                    store
                        .add(CertificateDer::from(ca.der().to_vec()))
                        .map_err(|e| format!("caBundle: {e}"))?;
                }
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let request = http::Request::get(uri)
        .header("accept", what.accept)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| {
        // The TLS refusal is in the error's sources; name the innermost.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = s.to_string();
            source = s.source();
        }
        // rustls shows our own verifier's refusal as "unexpected error: <ours>".
        why.trim_start_matches("unexpected error: ").to_string()
    })?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("the endpoint answered {}", response.status()));
    }
    match Limited::new(response.into_body(), what.limit + 1).collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(format!(
            "{} is over {} bytes; it is not read further",
            what.name, what.limit
        )),
        Err(e) => Err(format!("reading the body: {e}")),
    }
}

/// The process's crypto provider (aws-lc-rs, installed at start), or aws-lc-rs when none is.
pub(super) fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The `https_spiffe` check of the endpoint's certificate. The handshake's signatures are
/// checked with the crypto provider's algorithms.
#[derive(Debug)]
struct SpiffeVerifier {
    id: String,
    roots: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let general = |why: String| rustls::Error::General(why);
        let read = |der: &CertificateDer<'_>| {
            Certificate::from_der(der.to_vec())
                .map_err(|e| general(format!("the endpoint's certificate chain cannot be read: {e}")))
        };
        let cert = read(end_entity)?;
        let pool = intermediates.iter().map(read).collect::<Result<Vec<_>, _>>()?;
        let roots = self.roots.iter().map(read).collect::<Result<Vec<_>, _>>()?;
        let now = jiff::Timestamp::from_second(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))
            .map_err(|e| general(e.to_string()))?;
        // As Go's crypto/x509 verifies (what go-spiffe and SPIRE use), not rustls-webpki, which
        // refuses every certificate under a CA with URI name constraints (docs/name-constraints.md).
        let path = chain::verify(&cert, Subject::Leaf, &pool, &roots, now).map_err(|e| {
            general(format!(
                "the endpoint's certificate does not chain to the last bundle accepted from this peer ({e})"
            ))
        })?;
        let uris = cert.uri_sans();
        if uris != [self.id.clone()] {
            return Err(general(format!(
                "the endpoint's certificate carries URI SANs {uris:?}, not exactly the endpointSPIFFEID {:?}",
                self.id
            )));
        }
        // The name constraints of every CA on the path hold for the endpoint's SPIFFE ID.
        let host = spiffe_trust_domain(&self.id).unwrap_or_default();
        for ca in path.certificates.iter().skip(1) {
            match name_constraints::carried_by(ca) {
                Ok(None) => {}
                Ok(Some((_, nc))) if nc.permits_uri_host(&host) => {}
                Ok(Some((_, nc))) => {
                    return Err(general(format!(
                        "the endpoint's SPIFFE ID {} is outside the name constraints of {} ({})",
                        self.id,
                        ca.subject(),
                        nc.describe()
                    )));
                }
                Err(e) => {
                    return Err(general(format!(
                        "{}'s name constraints cannot be read: {e}",
                        ca.subject()
                    )));
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::testing::{HOUR, root, t0};
    use crate::pki::SigningKey;
    use crate::pki::name_constraints::{NameConstraints, Subtree};
    use crate::pki::policy::SigningPlan;
    use crate::pki::sign::tests::istiod_csr_with_key;
    use crate::pki::sign::{CaSigner, sign_csr, svid};

    const ID: &str = "spiffe://peer.example/meshca/bundle-endpoint";

    /// The endpoint's chain: an SVID for `id` under an intermediate (constrained to
    /// `constraint`, if any) under `root`.
    fn chain(root: &(Certificate, SigningKey), constraint: Option<&str>, id: &str) -> Vec<Certificate> {
        let (csr, key) = istiod_csr_with_key();
        let plan = SigningPlan {
            ca_path_len: Some(0),
            not_before: t0() - HOUR,
            not_after: t0() + HOUR * 24,
            requested: std::time::Duration::from_secs(1),
            clamped: None,
            name_constraints: constraint.map(|host| NameConstraints {
                permitted: vec![Subtree::Uri(host.into())],
                excluded: vec![],
            }),
        };
        let ca = CaSigner {
            certificate: &root.0,
            key: &root.1,
        };
        let intermediate = sign_csr(&csr, &plan, &ca).unwrap();
        let signer = CaSigner {
            certificate: &intermediate,
            key: &key,
        };
        let (leaf, _) = svid(&signer, id, t0() - HOUR, t0() + HOUR).unwrap();
        vec![leaf, intermediate]
    }

    fn verify(chain: &[Certificate], roots: &[Certificate]) -> Result<(), String> {
        let provider = provider();
        let verifier = SpiffeVerifier {
            id: ID.into(),
            roots: roots.iter().map(|r| CertificateDer::from(r.der().to_vec())).collect(),
            algorithms: provider.signature_verification_algorithms,
        };
        let ders: Vec<CertificateDer> = chain.iter().map(|c| CertificateDer::from(c.der().to_vec())).collect();
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(t0().as_second() as u64));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(&ders[0], &ders[1..], &name, &[], now)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_endpoint_must_chain_to_the_last_bundle_carry_its_id_and_keep_its_cas_name_constraints() {
        let peer = root(365);
        let other = root(365);
        let roots = std::slice::from_ref(&peer.0);
        // (case, chain, the refusal's words or None)
        let cases: Vec<(&str, Vec<Certificate>, Option<&str>)> = vec![
            ("plain", chain(&peer, None, ID), None),
            // rustls-webpki would refuse this one; Go, go-spiffe and we accept it.
            (
                "under a CA constrained to its trust domain",
                chain(&peer, Some("peer.example"), ID),
                None,
            ),
            (
                "an ID outside the CA's constraints",
                chain(&peer, Some("other.example"), ID),
                Some("outside the name constraints"),
            ),
            (
                "another ID",
                chain(&peer, None, "spiffe://peer.example/workload"),
                Some("not exactly the endpointSPIFFEID"),
            ),
            (
                "another root",
                chain(&other, None, ID),
                Some("does not chain to the last bundle"),
            ),
        ];
        for (case, chain, refusal) in cases {
            let verdict = verify(&chain, roots);
            match refusal {
                None => assert!(verdict.is_ok(), "{case}: {verdict:?}"),
                Some(words) => assert!(
                    verdict.as_ref().is_err_and(|e| e.contains(words)),
                    "{case}: {verdict:?}"
                ),
            }
        }
    }
}
