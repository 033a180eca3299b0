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
use crate::pki::Certificate;
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
    match tokio::time::timeout(timeout, get(url, authenticate)).await {
        Ok(Ok(body)) => Fetch::Body(body),
        Ok(Err(why)) => Fetch::Failed(format!("fetching {url}: {why}")),
        Err(_) => Fetch::Failed(format!("fetching {url}: no answer within {}s", timeout.as_secs())),
    }
}

async fn get(url: &str, authenticate: &Authenticate) -> Result<Vec<u8>, String> {
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
        .header("accept", "application/json")
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
    match Limited::new(response.into_body(), MAX_BUNDLE_BYTES + 1).collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(format!(
            "the bundle is over {MAX_BUNDLE_BYTES} bytes; it is not read further"
        )),
        Err(e) => Err(format!("reading the body: {e}")),
    }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The `https_spiffe` check of the endpoint's certificate.
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
        let anchors = self
            .roots
            .iter()
            .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok().map(|a| a.to_owned()))
            .collect::<Vec<_>>();
        let leaf = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| general(format!("the endpoint's certificate cannot be read: {e:?}")))?;
        leaf.verify_for_usage(
            self.algorithms.all,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            general(format!(
                "the endpoint's certificate does not chain to the last bundle accepted from this peer ({e:?})"
            ))
        })?;
        let cert = Certificate::from_der(end_entity.to_vec())
            .map_err(|e| general(format!("the endpoint's certificate cannot be read: {e}")))?;
        let uris = cert.uri_sans();
        if uris != [self.id.clone()] {
            return Err(general(format!(
                "the endpoint's certificate carries URI SANs {uris:?}, not exactly the endpointSPIFFEID {:?}",
                self.id
            )));
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
