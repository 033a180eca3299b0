//! What a failed Vault call means: the one place Vault's answers become a [`FailureKind`].
//!
//! - sealed or unavailable (503), other 5xx, 412, 429, timeouts and lost connections are
//!   transient: retried with back-off within the retry budget (a Ready issuer stays Ready for
//!   its grace window);
//! - a 400 from `sign-intermediate` means Vault refused this CSR: the request fails with
//!   Vault's text;
//! - a 403 from `sign-intermediate` is retried with back-off until the retry budget ends: the
//!   token's policy may be being fixed;
//! - a refused login, token or CA read makes the issuer not Ready, naming the auth method and
//!   role, so requests wait instead of failing.

use super::reason;
use crate::backend::{BackendError, FailureKind};

/// How a call failed, reduced to what classification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// No connection could be opened: nothing reached Vault.
    Unreachable(String),
    /// The request may have reached Vault but no complete answer came back (timeout, reset):
    /// what Vault did is unknown.
    Lost(String),
    /// The request could not even be built (e.g. a token that is not a valid header value).
    Refused(String),
    /// A 2xx answer that does not say what it should.
    Malformed(String),
    /// Vault answered with an error status and its (trimmed) error text.
    Status { status: u16, errors: String },
}

/// What was being called, for the message and for what a status means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// A login: `method` (`Kubernetes auth`, `AppRole`), the role, and who logged in (a
    /// ServiceAccount, a role_id).
    Login {
        method: &'a str,
        login_path: &'a str,
        /// What the role is called by this method: `role`, or AppRole's `role_id`.
        role_label: &'a str,
        role: &'a str,
        identity: &'a str,
    },
    /// `auth/token/lookup-self` with a token from `source` (a Secret and key).
    LookupSelf { source: &'a str },
    /// Reading the signing CA at `path`.
    ReadCa { path: &'a str },
    /// Reading the signing CA's CRL at `path` (revocation).
    ReadCrl { path: &'a str },
    /// `sign-intermediate` at `path`.
    Sign { path: &'a str },
}

/// Maps a failed call to `server` onto what it means.
pub fn classify(server: &str, call: Call<'_>, failure: CallFailure) -> BackendError {
    use FailureKind::*;
    let what = match call {
        Call::Login {
            method,
            login_path,
            role_label,
            role,
            identity,
        } => format!("{method} login at {server}/v1/{login_path} as {role_label} {role:?} ({identity})"),
        Call::LookupSelf { source } => format!("checking the Vault token from {source} at {server}"),
        Call::ReadCa { path } => format!("reading the signing CA from {server}/v1/{path}"),
        Call::ReadCrl { path } => format!("reading the signing CA's CRL from {server}/v1/{path}"),
        Call::Sign { path } => format!("sign-intermediate at {server}/v1/{path}"),
    };
    let (status, errors) = match failure {
        CallFailure::Unreachable(m) => {
            return BackendError::new(
                Retryable,
                reason::UNREACHABLE,
                format!("{what}: Vault unreachable: {m}"),
            );
        }
        CallFailure::Lost(m) => {
            let error = BackendError::new(Retryable, reason::UNREACHABLE, format!("{what}: no answer: {m}"));
            // A signing whose answer was lost may have signed.
            return if matches!(call, Call::Sign { .. }) {
                error.may_have_signed()
            } else {
                error
            };
        }
        CallFailure::Refused(m) => {
            return BackendError::new(IssuerNotReady, reason::INVALID_SPEC, format!("{what}: {m}"));
        }
        CallFailure::Malformed(m) => {
            let error = BackendError::new(Retryable, reason::API_ERROR, format!("{what}: {m}"));
            return if matches!(call, Call::Sign { .. }) {
                error.may_have_signed()
            } else {
                error
            };
        }
        CallFailure::Status { status, errors } => (status, errors),
    };
    let said = format!("{what}: {status}: {errors}");
    match (status, call) {
        (503, _) if errors.to_ascii_lowercase().contains("sealed") => BackendError::new(
            Retryable,
            reason::SEALED,
            format!("{said}; waiting until Vault is unsealed (retrying with back-off)"),
        ),
        (429, _) => BackendError::new(Retryable, reason::THROTTLED, format!("{said}; retrying with back-off")),
        // 412: a performance standby has not caught up yet; 5xx: Vault or a proxy failing.
        (412, _) | (500..=599, _) => BackendError::new(
            Retryable,
            reason::UNAVAILABLE,
            format!("{said}; retrying with back-off"),
        ),
        (_, Call::Login { method, .. }) => BackendError::new(
            IssuerNotReady,
            reason::AUTH_FAILED,
            format!("{said}; check the {method} role, what it is bound to, and the credentials the issuer names"),
        ),
        (_, Call::LookupSelf { .. }) => BackendError::new(
            IssuerNotReady,
            reason::INVALID_TOKEN,
            format!(
                "{said}; the token is expired, revoked or not one of this Vault's: put a valid token in the Secret"
            ),
        ),
        (_, Call::ReadCa { .. }) => BackendError::new(
            IssuerNotReady,
            reason::CA_NOT_FOUND,
            format!("{said}; check spec.vault.path (the mount and issuer) and spec.vault.namespace"),
        ),
        (_, Call::ReadCrl { .. }) => BackendError::new(
            IssuerNotReady,
            reason::CA_NOT_FOUND,
            format!("{said}; ca-crl.pem needs the CA's CRL: check that the mount serves it (its config/crl)"),
        ),
        (400, Call::Sign { .. }) => {
            BackendError::new(Permanent, reason::REJECTED, format!("Vault refused to sign: {said}"))
        }
        (403, Call::Sign { .. }) => BackendError::new(
            Retryable,
            reason::PERMISSION_DENIED,
            format!(
                "{said}; the token's policies do not allow this signing (update on the path, allowed_parameters); retrying with back-off until the retry budget ends, in case the policy is being fixed"
            ),
        ),
        (404, Call::Sign { .. }) => BackendError::new(
            IssuerNotReady,
            reason::CA_NOT_FOUND,
            format!("{said}; check spec.vault.path (the mount and issuer)"),
        ),
        // Unknown client errors: retried until the retry deadline, then Failed; never left
        // waiting forever, never Failed at once for what may be transient.
        (_, Call::Sign { .. }) => BackendError::new(
            Retryable,
            reason::API_ERROR,
            format!("{said}; retrying until the retry budget ends"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOGIN: Call<'static> = Call::Login {
        method: "Kubernetes auth",
        login_path: "auth/kubernetes/login",
        role_label: "role",
        role: "istiod-ca",
        identity: "ServiceAccount mesh/vault-auth",
    };
    const SIGN: Call<'static> = Call::Sign {
        path: "pki/root/sign-intermediate",
    };
    const LOOKUP: Call<'static> = Call::LookupSelf {
        source: "Secret mesh/vault-token key token",
    };
    const READ: Call<'static> = Call::ReadCa {
        path: "pki/issuer/default/json",
    };

    fn status(status: u16, errors: &str) -> CallFailure {
        CallFailure::Status {
            status,
            errors: errors.into(),
        }
    }

    #[test]
    fn answers_are_classified() {
        use FailureKind::*;
        // (case, call, failure, kind, reason)
        let cases = [
            // Transient, whatever was called: never Failed before the retry deadline.
            (
                "sealed",
                SIGN,
                status(503, "Vault is sealed"),
                Retryable,
                reason::SEALED,
            ),
            (
                "sealed login",
                LOGIN,
                status(503, "Vault is sealed"),
                Retryable,
                reason::SEALED,
            ),
            (
                "standby",
                READ,
                status(503, "node is in standby"),
                Retryable,
                reason::UNAVAILABLE,
            ),
            (
                "5xx",
                SIGN,
                status(500, "internal error"),
                Retryable,
                reason::UNAVAILABLE,
            ),
            (
                "throttled",
                SIGN,
                status(429, "rate limit quota exceeded"),
                Retryable,
                reason::THROTTLED,
            ),
            (
                "412",
                SIGN,
                status(412, "required index state not present"),
                Retryable,
                reason::UNAVAILABLE,
            ),
            (
                "refused connection",
                LOGIN,
                CallFailure::Unreachable("refused".into()),
                Retryable,
                reason::UNREACHABLE,
            ),
            (
                "timeout",
                SIGN,
                CallFailure::Lost("no answer within 15s".into()),
                Retryable,
                reason::UNREACHABLE,
            ),
            // The CSR refused: Failed with Vault's text.
            (
                "400",
                SIGN,
                status(400, "RSA keys < 2048 bits are unsafe"),
                Permanent,
                reason::REJECTED,
            ),
            // A policy refusal may be being fixed: retried until the budget ends.
            (
                "403 sign",
                SIGN,
                status(403, "permission denied"),
                Retryable,
                reason::PERMISSION_DENIED,
            ),
            ("unknown 4xx", SIGN, status(418, "teapot"), Retryable, reason::API_ERROR),
            (
                "missing mount",
                SIGN,
                status(404, "no handler for route"),
                IssuerNotReady,
                reason::CA_NOT_FOUND,
            ),
            // Auth and configuration: the issuer is not Ready, requests wait.
            (
                "bad role",
                LOGIN,
                status(400, "invalid role name \"x\""),
                IssuerNotReady,
                reason::AUTH_FAILED,
            ),
            (
                "bad secret",
                LOGIN,
                status(400, "invalid role or secret ID"),
                IssuerNotReady,
                reason::AUTH_FAILED,
            ),
            (
                "not bound",
                LOGIN,
                status(403, "permission denied"),
                IssuerNotReady,
                reason::AUTH_FAILED,
            ),
            (
                "expired token",
                LOOKUP,
                status(403, "permission denied"),
                IssuerNotReady,
                reason::INVALID_TOKEN,
            ),
            (
                "no issuer",
                READ,
                status(404, "unable to find PKI issuer"),
                IssuerNotReady,
                reason::CA_NOT_FOUND,
            ),
        ];
        for (name, call, failure, kind, expected_reason) in cases {
            let e = classify("https://vault.example", call, failure);
            assert_eq!((e.kind, e.reason), (kind, expected_reason), "{name}: {}", e.message);
        }
    }

    #[test]
    fn messages_say_what_was_called_and_what_vault_said() {
        let e = classify(
            "https://vault.example",
            LOGIN,
            status(400, "invalid role name \"istiod-ca\""),
        );
        for part in [
            "Kubernetes auth login at https://vault.example/v1/auth/kubernetes/login",
            "role \"istiod-ca\"",
            "ServiceAccount mesh/vault-auth",
            "400: invalid role name",
        ] {
            assert!(e.message.contains(part), "{part}: {}", e.message);
        }
        let e = classify("https://vault.example", SIGN, status(400, "bad CSR"));
        assert!(e.message.starts_with("Vault refused to sign: sign-intermediate at https://vault.example/v1/pki/root/sign-intermediate: 400: bad CSR"), "{}", e.message);
    }

    #[test]
    fn only_a_signing_whose_answer_was_lost_may_have_signed() {
        let lost = || CallFailure::Lost("reset".into());
        assert!(classify("s", SIGN, lost()).may_have_signed);
        assert!(classify("s", SIGN, CallFailure::Malformed("x".into())).may_have_signed);
        assert!(!classify("s", LOGIN, lost()).may_have_signed);
        assert!(!classify("s", SIGN, CallFailure::Unreachable("refused".into())).may_have_signed);
        assert!(!classify("s", SIGN, status(503, "Vault is sealed")).may_have_signed);
        assert!(!classify("s", SIGN, status(400, "no")).may_have_signed);
    }
}
