//! The local ACM PCA endpoint: moto's server behind `tests/fixtures/pca_fixture.py`, which
//! closes moto's gaps and counts calls. One per test, on a free loopback port.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mesh_ca_issuer::api::issuer::{AwsCredentialsSecretRef, AwsPCA, IssuerSpec};

/// The static test credentials the fixture accepts.
pub const ACCESS_KEY_ID: &str = "AKIDMESHCATEST";
pub const SECRET_ACCESS_KEY: &str = "meshca-test-secret-key-0123456789abcdef";
/// The tests' PCA is a loopback endpoint set on namespaced issuers (`spec.awsPCA.endpoint`):
/// that takes the operator's consent, off by default, so every controller of a PCA test is
/// started with this flag.
pub const ENDPOINT_OVERRIDE: &str = "--issuer-endpoint-override=true";
/// The Secret holding them that the tests' issuers name (`credentialsSecretRef`).
pub const CREDENTIALS_SECRET: &str = "aws-creds";

/// Creates [`CREDENTIALS_SECRET`] with the fixture's keys in the namespace of `secrets`: every
/// namespaced PCA issuer of the tests reads it.
pub async fn create_credentials_secret(secrets: &kube::Api<k8s_openapi::api::core::v1::Secret>) {
    super::objects::create_secret(
        secrets,
        serde_json::json!({
            "metadata": {"name": CREDENTIALS_SECRET},
            "stringData": {"AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}
        }),
    )
    .await;
}

pub struct PcaFixture {
    child: Child,
    pub endpoint: String,
    port: u16,
}

fn python() -> PathBuf {
    super::cached_tool(
        "MESHCA_PCA_PYTHON",
        "moto-5.2.5/bin/python",
        "no moto virtualenv: run `hack/test`, or set MESHCA_PCA_PYTHON to a python with moto[server] installed",
    )
}

impl PcaFixture {
    pub fn start() -> Self {
        let script = super::repo_root().join("tests/fixtures/pca_fixture.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the PCA fixture");
        let stdout = child.stdout.take().expect("fixture stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("fixture READY line");
        let endpoint = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("fixture said {line:?}"))
            .to_string();
        let port = endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("fixture port");
        Self { child, endpoint, port }
    }

    /// `spec` of a MeshCAIssuer signing with CA `arn` of this endpoint, with the keys of
    /// [`CREDENTIALS_SECRET`].
    pub fn issuer_spec(&self, arn: &str) -> IssuerSpec {
        IssuerSpec {
            aws_pca: Some(AwsPCA {
                arn: arn.to_string(),
                endpoint: Some(self.endpoint.clone()),
                credentials_secret_ref: Some(AwsCredentialsSecretRef::named(CREDENTIALS_SECRET)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn control(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, text) = super::http_post_json(self.port, path, &body)
            .await
            .expect("fixture control call");
        assert_eq!(status, 200, "{path}: {text}");
        serde_json::from_str(&text).expect("fixture JSON")
    }

    /// An ACTIVE root CA with a key of `key_algorithm` (RSA_2048, EC_prime256v1, ...).
    pub async fn create_ca(&self, key_algorithm: &str, usage_mode: &str, validity_days: u32) -> String {
        let body = serde_json::json!({"keyAlgorithm": key_algorithm, "usageMode": usage_mode, "validityDays": validity_days,
            "commonName": format!("Test PCA Root {key_algorithm}")});
        self.control("/__fixture/ca", body).await["arn"]
            .as_str()
            .expect("arn")
            .to_string()
    }

    /// The next `count` calls of `operation` fail with `kind` (throttle, server_error, pending,
    /// malformed_csr, request_failed, unknown_client_error).
    pub async fn inject(&self, operation: &str, kind: &str, count: u32) {
        self.control(
            "/__fixture/faults",
            serde_json::json!({"operation": operation, "kind": kind, "count": count}),
        )
        .await;
    }

    /// Every call of `operation` fails with `kind` for the next `window`, however many come.
    pub async fn inject_for(&self, operation: &str, kind: &str, window: std::time::Duration) {
        self.control(
            "/__fixture/faults",
            serde_json::json!({"operation": operation, "kind": kind, "seconds": window.as_secs_f64()}),
        )
        .await;
    }

    /// Each newly issued certificate answers RequestInProgress to its first `count` GetCertificate calls.
    pub async fn pending_gets(&self, count: u32) {
        self.control("/__fixture/pending-gets", serde_json::json!({"count": count}))
            .await;
    }

    /// Make passthrough issuance drop the requested custom extensions silently (as an issuer that
    /// ignores them would), or stop doing so.
    pub async fn drop_custom_extensions(&self, drop: bool) {
        self.control("/__fixture/drop-custom-extensions", serde_json::json!({"drop": drop}))
            .await;
    }

    /// Make issuance hand back certificates that differ from the request (`"path_len"`: one
    /// deeper; `"extra_san"`: a DNS name added; `"subject"`: another subject; `"longer"`: 30 days
    /// longer than asked), as a misconfigured template would; `None` issues faithfully again.
    pub async fn tamper(&self, kind: Option<&str>) {
        self.control("/__fixture/tamper", serde_json::json!({"kind": kind}))
            .await;
    }

    pub async fn set_ca_status(&self, arn: &str, status: &str) {
        self.control(
            "/__fixture/ca-status",
            serde_json::json!({"arn": arn, "status": status}),
        )
        .await;
    }

    /// Only these access key ids may call PCA; keys STS hands out are added as it does.
    pub async fn allow_keys(&self, keys: &[&str]) {
        self.control("/__fixture/credentials", serde_json::json!({"allowed": keys}))
            .await;
    }

    pub async fn stats(&self) -> serde_json::Value {
        self.control("/__fixture/stats", serde_json::json!({})).await
    }

    pub async fn calls(&self, operation: &str) -> u64 {
        self.stats().await["calls"][operation].as_u64().unwrap_or(0)
    }

    pub async fn certificates_issued(&self) -> u64 {
        self.stats().await["certificates_issued"].as_u64().unwrap_or(0)
    }
}

impl Drop for PcaFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
