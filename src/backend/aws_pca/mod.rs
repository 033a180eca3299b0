//! The AWS Private CA (ACM PCA) backend.
//!
//! Issuance is exactly-once: `IssueCertificate` carries an idempotency token derived from the
//! CertificateRequest's UID (PCA returns the same certificate ARN for the same token within
//! five minutes), and the ARN it returns is persisted on the request (by the controller)
//! before anything else, so a retry or a restart fetches that certificate with
//! `GetCertificate` instead of issuing another one. The SDK's own retries are off: every
//! retry goes through the controller's back-off, and `IssueCertificate` through a per-issuer
//! token bucket, so throttling never amplifies into a storm of billed calls.
//!
//! The signing algorithm follows the **CA's** key (not the CSR's), the template is
//! `SubordinateCACertificate_PathLen{n}/V1` in the CA's partition (its `_APIPassthrough`
//! variant when the intermediate is name-constrained), and validity is the plan's
//! notAfter (clamped to the CA's notAfter, and to 7 days for a short-lived CA).

//!
//! One file per concern: [`classify`] (what an SDK error means), [`rate_limit`] (the
//! IssueCertificate token bucket), [`arn`] (ARNs, templates, tokens, algorithms), [`describe`]
//! (the CA's description and its cache), [`credentials`] (who may use which credentials and
//! endpoint; the Secret's keys; the per-issuer client), [`binding`] (a stored certificate is
//! this request's, from this CA), [`signer`] (issue and fetch), [`passthrough`] (name
//! constraints as an `ApiPassthrough` custom extension).

mod arn;
mod binding;
mod classify;
mod credentials;
mod describe;
pub mod passthrough;
mod rate_limit;
mod signer;

use std::time::Duration;

pub use arn::{ca_of_certificate_arn, idempotency_token, parse_ca_arn, signing_algorithm_for, template_arn};
pub use classify::{CallFailure, classify};
pub use credentials::ambient_gate;
pub use describe::CaDescription;
pub use rate_limit::{Shared, TokenBucket};
pub use signer::AwsPcaSigner;

/// Annotation on a CertificateRequest holding the ARN of the certificate PCA issued for it.
pub const CERTIFICATE_ARN_ANNOTATION: &str = "meshca.io/aws-pca-certificate-arn";
/// A short-lived-mode CA issues certificates valid for at most this long.
pub const SHORT_LIVED_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Condition reasons an issuer gets from this backend.
pub mod reason {
    pub const CA_DISABLED: &str = "CADisabled";
    pub const CA_EXPIRED: &str = "CAExpired";
    pub const CA_DELETED: &str = "CADeleted";
    pub const CA_NOT_ACTIVE: &str = "CANotActive";
    pub const CA_NOT_FOUND: &str = "CANotFound";
    pub const ACCESS_DENIED: &str = "AccessDenied";
    pub const INVALID_CREDENTIALS: &str = "InvalidCredentials";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const RATE_LIMITED: &str = "RateLimited";
    pub const THROTTLED: &str = "Throttled";
    pub const API_ERROR: &str = "APIError";
    pub const IN_PROGRESS: &str = "InProgress";
    pub const REJECTED: &str = "Rejected";
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    pub const SECRET_FORBIDDEN: &str = "SecretForbidden";
    pub const AMBIENT_CREDENTIALS_DISABLED: &str = "AmbientCredentialsDisabled";
    pub const ENDPOINT_OVERRIDE_DISABLED: &str = "EndpointOverrideDisabled";
    pub const CERTIFICATE_NOT_BOUND: &str = "CertificateNotBound";
    pub const CERTIFICATE_FAILED: &str = "CertificateFailed";
    pub const WEAK_CA_KEY: &str = "WeakCAKey";
}
