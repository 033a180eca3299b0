//! Credentials and clients: static keys from the issuer's Secret (or the SDK's default chain),
//! an optional role to assume, and one client per issuer, rebuilt when any of that changes.

use std::time::Duration;

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::rate_limit::Shared;
use super::reason;
use crate::api::issuer::AwsPCA;
use crate::backend::{BackendError, IssuerScope};

pub(super) async fn read_credentials(
    kube: &kube::Client,
    scope: &IssuerScope,
    r: &crate::api::issuer::AwsCredentialsSecretRef,
) -> Result<(Credentials, String), BackendError> {
    let display = format!("Secret {}/{}", scope.secret_namespace, r.name);
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &scope.secret_namespace);
    let secret = match secrets.get_opt(&r.name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(BackendError::issuer_not_ready(
                reason::SECRET_NOT_FOUND,
                format!("credentials {display} not found"),
            ));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(BackendError::issuer_not_ready(
                reason::SECRET_FORBIDDEN,
                format!("not allowed to read credentials {display}"),
            ));
        }
        Err(e) => {
            return Err(BackendError::retryable(
                reason::API_ERROR,
                format!("reading {display}: {e}"),
            ));
        }
    };
    let get = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let missing = |key: &str| {
        BackendError::issuer_not_ready(
            reason::INVALID_CREDENTIALS,
            format!("credentials {display} has no {key}"),
        )
    };
    let access_key = get(&r.access_key_id_key).ok_or_else(|| missing(&r.access_key_id_key))?;
    let secret_key = get(&r.secret_access_key_key).ok_or_else(|| missing(&r.secret_access_key_key))?;
    let session = get(&r.session_token_key);
    // The resourceVersion keys the client cache: rotated keys take effect at once.
    let version = secret.resource_version().unwrap_or_default();
    Ok((
        Credentials::new(access_key, secret_key, session, None, "meshca-credentials-secret"),
        version,
    ))
}

/// A client per issuer, rebuilt when its configuration or credentials change.
pub(super) async fn client_for(
    shared: &Shared,
    spec: &AwsPCA,
    scope: &IssuerScope,
    region: &str,
    credentials: Option<(Credentials, String)>,
) -> aws_sdk_acmpca::Client {
    let key = format!(
        "{}|{region}|{}|{}|{}",
        spec.arn,
        spec.endpoint.as_deref().unwrap_or(""),
        spec.role_arn.as_deref().unwrap_or(""),
        credentials.as_ref().map(|(_, v)| v.as_str()).unwrap_or("default-chain")
    );
    if let Some((k, client)) = shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&scope.display)
        && *k == key
    {
        return client.clone();
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_string()))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(15))
                .build(),
        );
    if let Some((creds, _)) = credentials {
        loader = loader.credentials_provider(SharedCredentialsProvider::new(creds));
    }
    let mut sdk = loader.load().await;
    if let Some(role) = &spec.role_arn {
        let provider = aws_config::sts::AssumeRoleProvider::builder(role)
            .session_name("mesh-ca-issuer")
            .region(aws_config::Region::new(region.to_string()))
            .configure(&sdk)
            .build()
            .await;
        sdk = sdk
            .into_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
    }
    let mut config = aws_sdk_acmpca::config::Builder::from(&sdk);
    if let Some(endpoint) = &spec.endpoint {
        config = config.endpoint_url(endpoint);
    }
    let client = aws_sdk_acmpca::Client::from_conf(config.build());
    shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(scope.display.clone(), (key, client.clone()));
    client
}
