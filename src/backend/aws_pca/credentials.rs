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
use crate::backend::{AmbientPolicy, BackendError, IssuerScope};

/// Whether an issuer may use what its spec asks for, as cert-manager's ambient-credential flags
/// decide for its own issuers: without `credentialsSecretRef`, an issuer would sign with the
/// controller's own AWS identity (environment, IRSA, EKS Pod Identity, IMDS), and so would a
/// `roleARN` assumed with it; with `endpoint`, it would send the controller's calls to any URL.
/// Namespaced issuers get neither unless the operator says so.
pub fn ambient_gate(spec: &AwsPCA, scope: &IssuerScope, policy: AmbientPolicy) -> Result<(), BackendError> {
    if !scope.cluster_scoped && spec.endpoint.is_some() && !policy.issuer_endpoint_override {
        return Err(BackendError::issuer_not_ready(
            reason::ENDPOINT_OVERRIDE_DISABLED,
            format!(
                "{} sets spec.awsPCA.endpoint, which namespaced issuers may not do: remove it, or start the controller with --issuer-endpoint-override=true (Helm value controller.issuerEndpointOverride)",
                scope.display
            ),
        ));
    }
    if spec.credentials_secret_ref.is_some() {
        return Ok(());
    }
    let (allowed, flag, value) = if scope.cluster_scoped {
        (
            policy.cluster_issuer_ambient_credentials,
            "--cluster-issuer-ambient-credentials=true",
            "controller.clusterIssuerAmbientCredentials",
        )
    } else {
        (
            policy.issuer_ambient_credentials,
            "--issuer-ambient-credentials=true",
            "controller.issuerAmbientCredentials",
        )
    };
    if allowed {
        return Ok(());
    }
    let role = match &spec.role_arn {
        Some(role) => format!(" (its roleARN {role} would be assumed with that identity)"),
        None => String::new(),
    };
    Err(BackendError::issuer_not_ready(
        reason::AMBIENT_CREDENTIALS_DISABLED,
        format!(
            "{} has no spec.awsPCA.credentialsSecretRef and may not use the controller's own AWS identity (environment, IRSA, EKS Pod Identity, IMDS){role}: set credentialsSecretRef, or start the controller with {flag} (Helm value {value})",
            scope.display
        ),
    ))
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::AwsCredentialsSecretRef;
    use crate::backend::FailureKind;

    fn scope(cluster_scoped: bool) -> IssuerScope {
        IssuerScope {
            display: if cluster_scoped {
                "ClusterMeshCAIssuer c"
            } else {
                "MeshCAIssuer ns/x"
            }
            .into(),
            name: "x".into(),
            secret_namespace: "ns".into(),
            cluster_scoped,
        }
    }

    fn spec(secret: bool, role: bool, endpoint: bool) -> AwsPCA {
        AwsPCA {
            arn: "arn".into(),
            credentials_secret_ref: secret.then(|| AwsCredentialsSecretRef::named("creds")),
            role_arn: role.then(|| "arn:aws:iam::123456789012:role/r".to_string()),
            endpoint: endpoint.then(|| "http://127.0.0.1:1".to_string()),
            ..AwsPCA::default()
        }
    }

    #[test]
    fn the_gate_follows_cert_managers_ambient_credential_defaults() {
        let defaults = AmbientPolicy::default();
        let open = AmbientPolicy {
            issuer_ambient_credentials: true,
            cluster_issuer_ambient_credentials: true,
            issuer_endpoint_override: true,
        };
        let closed = AmbientPolicy {
            cluster_issuer_ambient_credentials: false,
            ..defaults
        };
        // (case, spec, cluster-scoped, policy, refused with reason and flag named)
        type Case = (
            &'static str,
            AwsPCA,
            bool,
            AmbientPolicy,
            Option<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            // A namespaced issuer with its own Secret: always fine.
            ("own secret", spec(true, false, false), false, defaults, None),
            ("own secret and role", spec(true, true, false), false, defaults, None),
            // Without one: the controller's identity, refused by default...
            (
                "ambient",
                spec(false, false, false),
                false,
                defaults,
                Some((
                    reason::AMBIENT_CREDENTIALS_DISABLED,
                    "--issuer-ambient-credentials=true",
                )),
            ),
            // ...also when that identity would only assume a role.
            (
                "ambient role",
                spec(false, true, false),
                false,
                defaults,
                Some((reason::AMBIENT_CREDENTIALS_DISABLED, "roleARN")),
            ),
            // ...and allowed when the operator says so.
            ("ambient allowed", spec(false, true, false), false, open, None),
            // Cluster issuers may use it by default, not when turned off.
            ("cluster ambient", spec(false, false, false), true, defaults, None),
            (
                "cluster ambient off",
                spec(false, false, false),
                true,
                closed,
                Some((
                    reason::AMBIENT_CREDENTIALS_DISABLED,
                    "--cluster-issuer-ambient-credentials=true",
                )),
            ),
            // An endpoint override on a namespaced issuer needs its own flag, even with a Secret.
            (
                "endpoint",
                spec(true, false, true),
                false,
                defaults,
                Some((reason::ENDPOINT_OVERRIDE_DISABLED, "--issuer-endpoint-override=true")),
            ),
            ("endpoint allowed", spec(true, false, true), false, open, None),
            ("cluster endpoint", spec(true, false, true), true, defaults, None),
        ];
        for (name, spec, cluster, policy, expected) in cases {
            match (ambient_gate(&spec, &scope(cluster), policy), expected) {
                (Ok(()), None) => {}
                (Err(e), Some((reason, hint))) => {
                    assert_eq!(e.kind, FailureKind::IssuerNotReady, "{name}");
                    assert_eq!(e.reason, reason, "{name}");
                    assert!(e.message.contains(hint), "{name}: {}", e.message);
                }
                (got, want) => panic!("{name}: got {got:?}, expected {want:?}"),
            }
        }
    }
}
