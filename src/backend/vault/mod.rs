//! The Vault / OpenBao backend: istiod's intermediate signed by `sign-intermediate` of a PKI
//! secrets engine, so the mesh root's key never leaves Vault.
//!
//! One file per concern: [`endpoint`] (server, paths, `--vault-servers`; pure), [`client`]
//! (HTTP, TLS, Vault's error answers), [`auth`] (Kubernetes, AppRole and token auth, the
//! ambient-credential gate, the per-issuer login cache and its revocation), [`ca`] (reading and
//! checking the signing CA), [`classify`] (what a failed call means: the one place),
//! [`signer`] (the request's parameters, the call, and the checks of what came back).
//!
//! Vault has no idempotency key: a crash between signing and the status write signs again on
//! the retry. The signer says so ([`crate::backend::Signer::repeats_on_retry`]); the controller
//! marks requests before signing and counts repeats; the extra certificate is never handed out.

mod auth;
mod ca;
mod classify;
mod client;
mod endpoint;
mod signer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use ca::VaultCa;
pub use classify::{Call, CallFailure, classify};
pub use client::vault_errors;
pub use endpoint::{SignPath, parse_server, parse_sign_path, server_allowed};
pub use signer::VaultSigner;

/// Condition reasons an issuer (or a request) gets from this backend.
pub mod reason {
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SERVER_NOT_ALLOWED: &str = "ServerNotAllowed";
    pub const AMBIENT_CREDENTIALS_DISABLED: &str = "AmbientCredentialsDisabled";
    pub const AMBIENT_CREDENTIALS_UNAVAILABLE: &str = "AmbientCredentialsUnavailable";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_FORBIDDEN: &str = "SecretForbidden";
    pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
    pub const TOKEN_REQUEST_FORBIDDEN: &str = "TokenRequestForbidden";
    pub const UNREACHABLE: &str = "VaultUnreachable";
    pub const SEALED: &str = "VaultSealed";
    pub const UNAVAILABLE: &str = "VaultUnavailable";
    pub const THROTTLED: &str = "Throttled";
    pub const AUTH_FAILED: &str = "VaultAuthFailed";
    pub const INVALID_TOKEN: &str = "InvalidToken";
    pub const CA_NOT_FOUND: &str = "CANotFound";
    pub const REJECTED: &str = "Rejected";
    pub const PERMISSION_DENIED: &str = "PermissionDenied";
    pub const API_ERROR: &str = "APIError";
    pub const NAME_CONSTRAINTS_UNSUPPORTED: &str = "NameConstraintsUnsupported";
    pub const CERTIFICATE_NOT_BOUND: &str = "CertificateNotBound";
}

/// State every Vault issuer in the process shares: clients, logins, CAs read for signing, and
/// the operator's limits.
pub struct Shared {
    clients: Mutex<HashMap<String, (String, Arc<client::VaultClient>)>>,
    logins: Mutex<HashMap<String, auth::Slot>>,
    cas: Mutex<HashMap<String, (String, Instant, VaultCa)>>,
    /// `--vault-servers`: URL prefixes namespaced issuers may call (empty: any).
    pub servers: Vec<String>,
    /// `--service-account-token-file`: the controller's own token (ambient credentials).
    pub ambient_token_file: PathBuf,
    /// How long a CA read is reused for signing before it is read again.
    pub ca_ttl: Duration,
}

impl Shared {
    pub fn new(servers: Vec<String>, ambient_token_file: PathBuf, ca_ttl: Duration) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            logins: Mutex::new(HashMap::new()),
            cas: Mutex::new(HashMap::new()),
            servers,
            ambient_token_file,
            ca_ttl,
        }
    }

    /// Revokes every token the controller logged in for (best effort, at shutdown): a token
    /// left behind would stay valid until its lease ends. Tokens from `tokenSecretRef` are the
    /// operator's and never revoked.
    pub async fn revoke_logins(&self) -> usize {
        auth::revoke_all(self).await
    }
}
