//! The HTTP client of one Vault server: JSON over HTTP/1.1 through hyper and rustls (the stack
//! the Kubernetes client already uses), the server's CA bundle or the system's roots, a
//! connect timeout and an overall timeout per call, `X-Vault-Namespace` on every call, and
//! Vault's `{"errors": [...]}` answers turned into a [`CallFailure`] for the classifier.
//!
//! Tokens travel only in the `X-Vault-Token` header, marked sensitive; [`VaultToken`] never
//! prints its value.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use zeroize::Zeroizing;

use super::classify::CallFailure;
use super::endpoint::Server;
use crate::pki::Certificate;

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call may take in all: a hung Vault must not hold a reconcile.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest answer read; a sign-intermediate answer with its chain is a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A Vault token. Its value is never printed, logged or put in a message.
#[derive(Clone)]
pub struct VaultToken(Zeroizing<String>);

impl VaultToken {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    fn header(&self) -> Result<HeaderValue, CallFailure> {
        let mut value = HeaderValue::from_str(&self.0)
            .map_err(|_| CallFailure::Refused("the token holds characters no HTTP header may carry".into()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl std::fmt::Debug for VaultToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultToken(<redacted>)")
    }
}

/// One Vault server as one issuer reaches it.
pub struct VaultClient {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    namespace: Option<String>,
}

impl VaultClient {
    /// A client trusting `ca_bundle` (PEM), or the system's roots without one.
    pub fn new(server: &Server, ca_bundle: Option<&[u8]>, namespace: Option<&str>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        match ca_bundle {
            Some(pem) => {
                let certificates = Certificate::parse_pem_bundle(pem, "CA bundle").map_err(|e| e.to_string())?;
                for certificate in certificates {
                    roots
                        .add(rustls::pki_types::CertificateDer::from(certificate.der().to_vec()))
                        .map_err(|e| {
                            format!("CA bundle: {} is not a usable trust anchor: {e}", certificate.subject())
                        })?;
                }
            }
            None => {
                // Certificates the system store holds but rustls cannot use are skipped, as
                // every rustls client does; an empty store is refused below.
                let native = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(native.certs);
            }
        }
        if roots.is_empty() {
            return Err("no trusted CA: the system has no root certificates; set caBundle or caBundleSecretRef".into());
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        // `https_or_http`: the server's scheme was checked already (plain http to loopback only).
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            base: server.base.clone(),
            namespace: namespace.filter(|n| !n.is_empty()).map(str::to_string),
        })
    }

    /// Calls `/v1/<path>` and returns the JSON answer of a 2xx (`Null` for an empty one).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&VaultToken>,
        body: Option<&Value>,
    ) -> Result<Value, CallFailure> {
        let uri = format!("{}/v1/{}", self.base, path.trim_start_matches('/'));
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header("X-Vault-Request", "true");
        if let Some(ns) = &self.namespace {
            request = request.header("X-Vault-Namespace", ns.as_str());
        }
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token.header()?);
        }
        let payload = match body {
            Some(json) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(json).map_err(|e| CallFailure::Refused(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| CallFailure::Refused(format!("{uri}: {e}")))?;
        let answer = async {
            let response = self.http.request(request).await.map_err(|e| {
                let detail = crate::backend::error_chain(&e);
                // Nothing reached Vault when the connection never opened; anything later
                // may have been carried out.
                if e.is_connect() {
                    CallFailure::Unreachable(detail)
                } else {
                    CallFailure::Lost(detail)
                }
            })?;
            let status = response.status().as_u16();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| CallFailure::Lost(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, CallFailure>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| CallFailure::Lost(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))??;
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallFailure::Malformed(format!("the {status} answer is not JSON: {e}")));
        }
        Err(CallFailure::Status {
            status,
            errors: vault_errors(&bytes),
        })
    }
}

/// Vault's error text from an error answer, trimmed for a condition message: the `errors`
/// list joined, go-multierror's "1 error occurred:\n\t* " wrapping removed, whitespace
/// collapsed, at most 300 characters.
pub fn vault_errors(body: &[u8]) -> String {
    let listed: Vec<String> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
        .map(|errors| errors.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
        .unwrap_or_else(|| vec![String::from_utf8_lossy(body).into_owned()]);
    let mut parts = Vec::new();
    for error in listed {
        for line in error.lines() {
            let line = line.trim().trim_start_matches("* ").trim();
            let wrapper = line.ends_with("error occurred:") || line.ends_with("errors occurred:");
            if !line.is_empty() && !wrapper {
                parts.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }
    }
    let text = if parts.is_empty() {
        "no error text".to_string()
    } else {
        parts.join("; ")
    };
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{} [...]", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_error_text_is_trimmed_for_a_condition() {
        let cases = [
            (r#"{"errors":["permission denied"]}"#, "permission denied"),
            (
                r#"{"errors":["1 error occurred:\n\t* permission denied\n\n"]}"#,
                "permission denied",
            ),
            (r#"{"errors":["Vault is sealed"]}"#, "Vault is sealed"),
            (r#"{"errors":["a","b  c"]}"#, "a; b c"),
            (r#"{"errors":[]}"#, "no error text"),
            ("<html>bad gateway</html>", "<html>bad gateway</html>"),
        ];
        for (body, expected) in cases {
            assert_eq!(vault_errors(body.as_bytes()), expected, "{body}");
        }
        let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(1000));
        let trimmed = vault_errors(long.as_bytes());
        assert!(trimmed.len() < 320 && trimmed.ends_with("[...]"), "{trimmed}");
    }

    #[test]
    fn a_token_never_prints_its_value() {
        let token = VaultToken::new("s.supersecret".into());
        assert_eq!(format!("{token:?}"), "VaultToken(<redacted>)");
        assert!(token.header().unwrap().is_sensitive());
    }
}
