//! Getting a Vault token for an issuer, and keeping it.
//!
//! - `kubernetes`: a bound ServiceAccount token made through the TokenRequest API in the
//!   issuer's namespace (the cluster resource namespace for a ClusterMeshCAIssuer), valid 10
//!   minutes, with cert-manager's audiences; without `serviceAccountRef`, the controller's own
//!   token (ambient, gated as cert-manager gates ambient credentials).
//! - `appRole`: `role_id` from the spec, `secret_id` from a Secret of the issuer's namespace.
//! - `tokenSecretRef`: the operator's token as it is; a health check asks Vault about it
//!   (`lookup-self`), so an expired token makes the issuer not Ready with that said.
//!
//! A login is cached per issuer until shortly before its lease ends and then done again (a
//! fresh login re-checks what the role is bound to; renewing would extend a token whose
//! grounds may be gone), behind one async lock per issuer: concurrent requests of one issuer
//! share one login. A change of anything the login used (server, role, Secret version)
//! logs in again. Tokens never appear in logs, events or conditions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{debug, warn};

use super::classify::{Call, CallFailure, classify};
use super::client::{VaultClient, VaultToken};
use super::endpoint::{self, Server};
use super::{Shared, reason};
use crate::api::issuer::{SecretKeySelector, Vault, VaultAuth};
use crate::backend::{AmbientPolicy, BackendError, IssuerScope, Purpose};

/// The lifetime of a ServiceAccount token made for a login: the shortest the TokenRequest API
/// allows, as cert-manager asks; it is used once, at once.
const SERVICE_ACCOUNT_TOKEN_SECONDS: i64 = 600;
/// The default key of `tokenSecretRef` and of `appRole.secretRef`.
pub const TOKEN_KEY: &str = "token";
pub const SECRET_ID_KEY: &str = "secretId";

/// A token the controller logged in for, and until when it is used.
pub(super) struct Login {
    token: VaultToken,
    /// When to log in again; `None` for a token without a lease end.
    refresh_at: Option<Instant>,
    /// What the login used: a different key means log in again.
    key: String,
    /// Where it was obtained, to revoke it there.
    client: Arc<VaultClient>,
}

/// One issuer's login, behind a lock held across a login.
pub(super) type Slot = Arc<tokio::sync::Mutex<Option<Login>>>;

/// When a login with a lease of `lease` is done again: shortly before the lease ends (a third
/// of it, at most five minutes, early), so a request never carries a token about to expire.
fn refresh_after(lease: Duration) -> Duration {
    lease.saturating_sub((lease / 3).min(Duration::from_secs(300)))
}

/// Everything a login needs.
pub(super) struct AuthContext<'a> {
    pub kube: &'a kube::Client,
    pub shared: &'a Shared,
    pub spec: &'a Vault,
    pub scope: &'a IssuerScope,
    pub server: &'a Server,
    pub client: &'a Arc<VaultClient>,
}

/// Whether the issuer may log in as its spec asks, before anything is read or called: the
/// controller's own ServiceAccount token (Kubernetes auth without `serviceAccountRef`) is
/// ambient. Cluster issuers may use it unless `--cluster-issuer-ambient-credentials=false`;
/// namespaced ones only with `--issuer-ambient-credentials=true` *and* a `--vault-servers`
/// list (which their server passed already), so the controller's identity only ever goes to
/// servers the operator named.
pub fn ambient_gate(
    auth: &VaultAuth,
    scope: &IssuerScope,
    policy: AmbientPolicy,
    servers: &[String],
) -> Result<(), BackendError> {
    let ambient = auth
        .kubernetes
        .as_ref()
        .is_some_and(|k| k.service_account_ref.is_none());
    if !ambient {
        return Ok(());
    }
    let refused = |m: String| BackendError::issuer_not_ready(reason::AMBIENT_CREDENTIALS_DISABLED, m);
    let what = format!(
        "{} names no spec.vault.auth.kubernetes.serviceAccountRef, so it would log in with the controller's own ServiceAccount token",
        scope.display
    );
    if scope.cluster_scoped {
        return match policy.cluster_issuer_ambient_credentials {
            true => Ok(()),
            false => Err(refused(format!(
                "{what}, which --cluster-issuer-ambient-credentials=false forbids: name a serviceAccountRef, or allow it (Helm value controller.clusterIssuerAmbientCredentials)"
            ))),
        };
    }
    match (policy.issuer_ambient_credentials, servers.is_empty()) {
        (true, false) => Ok(()),
        _ => Err(refused(format!(
            "{what}, which namespaced issuers may not do: name a serviceAccountRef of the issuer's namespace, or start the controller with --issuer-ambient-credentials=true and --vault-servers listing the servers that may receive its identity (Helm values controller.issuerAmbientCredentials, controller.vaultServers)"
        ))),
    }
}

/// A token for the issuer: from the Secret, or from the cached or a fresh login.
pub(super) async fn token(ctx: &AuthContext<'_>, purpose: Purpose) -> Result<VaultToken, BackendError> {
    let auth = &ctx.spec.auth;
    if let Some(selector) = &auth.token_secret_ref {
        let (value, _) = read_secret_key(ctx.kube, ctx.scope, selector, TOKEN_KEY).await?;
        let token = VaultToken::new(value);
        if purpose == Purpose::HealthCheck {
            let source = secret_display(ctx.scope, selector, TOKEN_KEY);
            ctx.client
                .call(Method::GET, "auth/token/lookup-self", Some(&token), None)
                .await
                .map_err(|f| classify(&ctx.server.base, Call::LookupSelf { source: &source }, f))?;
        }
        return Ok(token);
    }
    let slot = slot(ctx.shared, &ctx.scope.display);
    let mut held = slot.lock().await;
    let login = match (&auth.kubernetes, &auth.app_role) {
        (Some(kubernetes), _) => {
            let login_path = endpoint::kubernetes_login_path(&kubernetes.mount_path)
                .map_err(|m| BackendError::issuer_not_ready(reason::INVALID_SPEC, m))?;
            let (identity, key_part) = match &kubernetes.service_account_ref {
                Some(sa) => (
                    format!("ServiceAccount {}/{}", ctx.scope.secret_namespace, sa.name),
                    format!("sa:{}:{}", sa.name, sa.audiences.join(",")),
                ),
                None => ("the controller's own ServiceAccount".to_string(), "ambient".to_string()),
            };
            let key = login_key(ctx, &[&login_path, &kubernetes.role, &key_part]);
            if let Some(token) = reuse(&held, &key) {
                return Ok(token);
            }
            let jwt = match &kubernetes.service_account_ref {
                Some(sa) => service_account_token(ctx, &sa.name, &sa.audiences).await?,
                None => ambient_token(ctx.shared).await?,
            };
            let call = Call::Login {
                method: "Kubernetes auth",
                login_path: &login_path,
                role_label: "role",
                role: &kubernetes.role,
                identity: &identity,
            };
            let body = json!({"role": kubernetes.role, "jwt": jwt.as_str()});
            login(ctx, &login_path, &body, call, key).await?
        }
        (None, Some(app_role)) => {
            let login_path = endpoint::app_role_login_path(&app_role.path)
                .map_err(|m| BackendError::issuer_not_ready(reason::INVALID_SPEC, m))?;
            let (secret_id, version) =
                read_secret_key(ctx.kube, ctx.scope, &app_role.secret_ref, SECRET_ID_KEY).await?;
            let secret_id = zeroize::Zeroizing::new(secret_id);
            let key = login_key(
                ctx,
                &[&login_path, &app_role.role_id, &app_role.secret_ref.name, &version],
            );
            if let Some(token) = reuse(&held, &key) {
                return Ok(token);
            }
            let identity = format!(
                "secret_id from {}",
                secret_display(ctx.scope, &app_role.secret_ref, SECRET_ID_KEY)
            );
            let call = Call::Login {
                method: "AppRole",
                login_path: &login_path,
                role_label: "role_id",
                role: &app_role.role_id,
                identity: &identity,
            };
            let body = json!({"role_id": app_role.role_id, "secret_id": secret_id.as_str()});
            login(ctx, &login_path, &body, call, key).await?
        }
        (None, None) => {
            return Err(BackendError::issuer_not_ready(
                reason::INVALID_SPEC,
                "spec.vault.auth names no method: set exactly one of kubernetes, appRole, tokenSecretRef",
            ));
        }
    };
    let token = login.token.clone();
    *held = Some(login);
    Ok(token)
}

/// Forgets an issuer's login (Vault refused its token: it may have been revoked), so the next
/// call logs in afresh.
pub(super) fn forget(shared: &Shared, issuer: &str) {
    let slot = shared
        .logins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(issuer)
        .cloned();
    if let Some(slot) = slot
        && let Ok(mut held) = slot.try_lock()
    {
        *held = None;
    }
}

fn slot(shared: &Shared, issuer: &str) -> Slot {
    shared
        .logins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(issuer.to_string())
        .or_default()
        .clone()
}

fn login_key(ctx: &AuthContext<'_>, parts: &[&str]) -> String {
    format!(
        "{}|{}|{}",
        ctx.server.base,
        ctx.spec.namespace.as_deref().unwrap_or(""),
        parts.join("|")
    )
}

/// The cached token, if it is for this configuration and not due for a fresh login.
fn reuse(held: &Option<Login>, key: &str) -> Option<VaultToken> {
    let login = held.as_ref()?;
    let fresh = login.refresh_at.is_none_or(|at| Instant::now() < at);
    (login.key == key && fresh).then(|| login.token.clone())
}

async fn login(
    ctx: &AuthContext<'_>,
    login_path: &str,
    body: &serde_json::Value,
    call: Call<'_>,
    key: String,
) -> Result<Login, BackendError> {
    let started = Instant::now();
    let answer = ctx
        .client
        .call(Method::POST, login_path, None, Some(body))
        .await
        .map_err(|f| classify(&ctx.server.base, call, f))?;
    let auth = &answer["auth"];
    let token = auth["client_token"].as_str().filter(|t| !t.is_empty()).ok_or_else(|| {
        classify(
            &ctx.server.base,
            call,
            CallFailure::Malformed("the login answer carries no auth.client_token".into()),
        )
    })?;
    let lease = Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0));
    debug!(
        issuer = %ctx.scope.display,
        lease_seconds = lease.as_secs(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "logged in to Vault"
    );
    Ok(Login {
        token: VaultToken::new(token.to_string()),
        refresh_at: (!lease.is_zero()).then(|| started + refresh_after(lease)),
        key,
        client: ctx.client.clone(),
    })
}

/// A token for `name` in the issuer's namespace, from the TokenRequest API, with the audiences
/// cert-manager gives its Vault logins: the ones asked for, `vault://<namespace>/<issuer>`
/// (`vault://<issuer>` for a cluster issuer) and the server URL.
async fn service_account_token(
    ctx: &AuthContext<'_>,
    name: &str,
    extra_audiences: &[String],
) -> Result<zeroize::Zeroizing<String>, BackendError> {
    let namespace = &ctx.scope.secret_namespace;
    let own = match ctx.scope.cluster_scoped {
        true => format!("vault://{}", ctx.scope.name),
        false => format!("vault://{namespace}/{}", ctx.scope.name),
    };
    let mut audiences = extra_audiences.to_vec();
    audiences.extend([own, ctx.spec.server.clone()]);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(audiences),
            expiration_seconds: Some(SERVICE_ACCOUNT_TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let display = format!("ServiceAccount {namespace}/{name}");
    let made: Result<TokenRequest, kube::Error> = Api::<ServiceAccount>::namespaced(ctx.kube.clone(), namespace)
        .create_subresource("token", name, &PostParams::default(), &request)
        .await;
    match made {
        Ok(made) => made
            .status
            .and_then(|s| s.token)
            .filter(|t| !t.is_empty())
            .map(zeroize::Zeroizing::new)
            .ok_or_else(|| {
                BackendError::retryable(
                    reason::API_ERROR,
                    format!("the TokenRequest for {display} returned no token"),
                )
            }),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(BackendError::issuer_not_ready(
            reason::SERVICE_ACCOUNT_NOT_FOUND,
            format!("{display} (spec.vault.auth.kubernetes.serviceAccountRef) does not exist"),
        )),
        Err(kube::Error::Api(e)) if e.code == 403 => Err(BackendError::issuer_not_ready(
            reason::TOKEN_REQUEST_FORBIDDEN,
            format!(
                "the controller may not make tokens for {display}: grant it create on serviceaccounts/token in {namespace} (Helm value vault.tokenRequestServiceAccounts: {namespace}/{name})"
            ),
        )),
        Err(e) => Err(BackendError::retryable(
            reason::API_ERROR,
            format!("requesting a token for {display}: {e}"),
        )),
    }
}

/// The controller's own ServiceAccount token, read afresh (the kubelet rotates it).
async fn ambient_token(shared: &Shared) -> Result<zeroize::Zeroizing<String>, BackendError> {
    let path = &shared.ambient_token_file;
    match tokio::fs::read_to_string(path).await {
        Ok(token) if !token.trim().is_empty() => Ok(zeroize::Zeroizing::new(token.trim().to_string())),
        Ok(_) => Err(BackendError::issuer_not_ready(
            reason::AMBIENT_CREDENTIALS_UNAVAILABLE,
            format!("the controller's ServiceAccount token file {} is empty", path.display()),
        )),
        Err(e) => Err(BackendError::issuer_not_ready(
            reason::AMBIENT_CREDENTIALS_UNAVAILABLE,
            format!(
                "the controller's ServiceAccount token could not be read from {} (--service-account-token-file): {e}",
                path.display()
            ),
        )),
    }
}

fn secret_display(scope: &IssuerScope, selector: &SecretKeySelector, default_key: &str) -> String {
    format!(
        "Secret {}/{} key {}",
        scope.secret_namespace,
        selector.name,
        selector.key_or(default_key)
    )
}

/// One key of a Secret in the issuer's namespace, trimmed, and the Secret's resourceVersion
/// (a new version logs in again).
pub(super) async fn read_secret_key(
    kube: &kube::Client,
    scope: &IssuerScope,
    selector: &SecretKeySelector,
    default_key: &str,
) -> Result<(String, String), BackendError> {
    let display = secret_display(scope, selector, default_key);
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &scope.secret_namespace);
    let secret = match secrets.get_opt(&selector.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(BackendError::issuer_not_ready(
                reason::SECRET_NOT_FOUND,
                format!("{display}: the Secret does not exist"),
            ));
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Err(BackendError::issuer_not_ready(
                reason::SECRET_FORBIDDEN,
                format!("not allowed to read {display}"),
            ));
        }
        Err(e) => {
            return Err(BackendError::retryable(
                reason::API_ERROR,
                format!("reading {display}: {e}"),
            ));
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(selector.key_or(default_key)))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            BackendError::issuer_not_ready(
                reason::SECRET_NOT_FOUND,
                format!("{display}: no such key, or it is empty"),
            )
        })?;
    Ok((value, secret.resource_version().unwrap_or_default()))
}

/// Revokes every cached login token (see [`Shared::revoke_logins`]); returns how many.
pub(super) async fn revoke_all(shared: &Shared) -> usize {
    let slots: Vec<Slot> = shared
        .logins
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .map(|(_, slot)| slot)
        .collect();
    let mut revoked = 0;
    for slot in slots {
        let Some(login) = slot.lock().await.take() else {
            continue;
        };
        match login
            .client
            .call(Method::POST, "auth/token/revoke-self", Some(&login.token), None)
            .await
        {
            Ok(_) => revoked += 1,
            Err(e) => {
                warn!(error = ?e, "could not revoke a Vault token at shutdown; it stays valid until its lease ends")
            }
        }
    }
    revoked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::{VaultKubernetesAuth, VaultServiceAccountRef};
    use crate::backend::FailureKind;

    fn scope(cluster_scoped: bool) -> IssuerScope {
        IssuerScope {
            display: if cluster_scoped {
                "ClusterMeshCAIssuer v"
            } else {
                "MeshCAIssuer ns/v"
            }
            .into(),
            name: "v".into(),
            secret_namespace: "ns".into(),
            cluster_scoped,
        }
    }

    fn kubernetes(service_account: bool) -> VaultAuth {
        VaultAuth {
            kubernetes: Some(VaultKubernetesAuth {
                mount_path: "/v1/auth/kubernetes".into(),
                role: "r".into(),
                service_account_ref: service_account.then(|| VaultServiceAccountRef {
                    name: "sa".into(),
                    audiences: vec![],
                }),
            }),
            ..VaultAuth::default()
        }
    }

    #[test]
    fn the_controllers_own_token_goes_only_where_the_operator_allows() {
        let defaults = AmbientPolicy::default();
        let open = AmbientPolicy {
            issuer_ambient_credentials: true,
            ..defaults
        };
        let closed = AmbientPolicy {
            cluster_issuer_ambient_credentials: false,
            ..defaults
        };
        let listed = vec!["https://vault.example".to_string()];
        // (case, auth, cluster-scoped, policy, --vault-servers, refused with a hint)
        type Case = (
            &'static str,
            VaultAuth,
            bool,
            AmbientPolicy,
            Vec<String>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            // A ServiceAccount of the issuer's own namespace: never ambient.
            ("own account", kubernetes(true), false, defaults, vec![], None),
            ("token", VaultAuth::default(), false, defaults, vec![], None),
            // The controller's token for a namespaced issuer: refused by default...
            (
                "ambient",
                kubernetes(false),
                false,
                defaults,
                vec![],
                Some("--issuer-ambient-credentials=true"),
            ),
            // ...and with the flag but no server list (any server the namespace names).
            (
                "ambient, any server",
                kubernetes(false),
                false,
                open,
                vec![],
                Some("--vault-servers"),
            ),
            ("ambient allowed", kubernetes(false), false, open, listed.clone(), None),
            // Cluster issuers: allowed unless turned off.
            ("cluster", kubernetes(false), true, defaults, vec![], None),
            (
                "cluster off",
                kubernetes(false),
                true,
                closed,
                vec![],
                Some("--cluster-issuer-ambient-credentials=false"),
            ),
        ];
        for (name, auth, cluster, policy, servers, refused) in cases {
            match (ambient_gate(&auth, &scope(cluster), policy, &servers), refused) {
                (Ok(()), None) => {}
                (Err(e), Some(hint)) => {
                    assert_eq!(
                        (e.kind, e.reason),
                        (FailureKind::IssuerNotReady, reason::AMBIENT_CREDENTIALS_DISABLED),
                        "{name}"
                    );
                    assert!(e.message.contains(hint), "{name}: {}", e.message);
                }
                (got, want) => panic!("{name}: got {got:?}, expected refusal {want:?}"),
            }
        }
    }

    #[test]
    fn a_login_is_done_again_shortly_before_its_lease_ends() {
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3300));
        assert_eq!(refresh_after(Duration::from_secs(60)), Duration::from_secs(40));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }
}
