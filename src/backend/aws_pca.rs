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
//! `SubordinateCACertificate_PathLen{n}/V1` in the CA's partition, and validity is the plan's
//! notAfter (clamped to the CA's notAfter, and to 7 days for a short-lived CA).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_acmpca::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    CertificateAuthorityStatus, CertificateAuthorityUsageMode, KeyAlgorithm, SigningAlgorithm, Validity,
    ValidityPeriodType,
};
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::{BackendError, CaInfo, FailureKind, IssuedChain, IssuerScope, Purpose, SignOutcome, SignRequest, Signer};
use crate::api::issuer::{AwsPCA, PcaSigningAlgorithm};
use crate::pki::Certificate;
use crate::pki::policy::CaLifetime;

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
}

// === errors ===

/// How an SDK call failed, reduced to what classification needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    /// No response: connection refused/reset, DNS, timeout, or an unparseable response.
    Transport(String),
    /// The request could not be built or signed (e.g. no credentials could be loaded).
    Construction(String),
    /// The service answered with an error code and HTTP status.
    Service {
        code: Option<String>,
        status: u16,
        message: String,
    },
}

impl<E: ProvideErrorMetadata + std::error::Error + 'static> From<SdkError<E>> for CallFailure {
    fn from(e: SdkError<E>) -> Self {
        match &e {
            SdkError::ServiceError(s) => CallFailure::Service {
                code: s.err().code().map(str::to_string),
                status: s.raw().status().as_u16(),
                message: s.err().message().unwrap_or_default().to_string(),
            },
            SdkError::ConstructionFailure(_) => CallFailure::Construction(error_chain(&e)),
            _ => CallFailure::Transport(error_chain(&e)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Maps a PCA call failure onto what it means. The one place PCA errors are classified:
/// transient ones are retried (never Failed before the retry deadline), request errors fail
/// the request, CA and access problems make the issuer not Ready.
pub fn classify(operation: &str, ca_arn: &str, failure: CallFailure) -> BackendError {
    use FailureKind::*;
    let (code, status, message) = match failure {
        CallFailure::Transport(m) => {
            return BackendError::new(
                Retryable,
                reason::API_ERROR,
                format!("{operation} could not reach AWS Private CA: {m}"),
            );
        }
        CallFailure::Construction(m) if m.to_ascii_lowercase().contains("credential") => {
            return BackendError::new(
                IssuerNotReady,
                reason::INVALID_CREDENTIALS,
                format!(
                    "no AWS credentials could be loaded for {operation}: {m}; set credentialsSecretRef or give the pod an IAM identity (IRSA or EKS Pod Identity)"
                ),
            );
        }
        CallFailure::Construction(m) => {
            return BackendError::new(
                IssuerNotReady,
                reason::INVALID_SPEC,
                format!("{operation} request could not be built: {m}"),
            );
        }
        CallFailure::Service { code, status, message } => (code.unwrap_or_default(), status, message),
    };
    let said = |what: &str| format!("{operation} on {ca_arn}: {code}: {message}{what}");
    match code.as_str() {
        "ThrottlingException" | "LimitExceededException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            BackendError::new(
                Retryable,
                reason::THROTTLED,
                said(" (throttled; retrying with back-off)"),
            )
        }
        "RequestInProgressException" => BackendError::new(Pending, reason::IN_PROGRESS, said("")),
        "MalformedCSRException"
        | "InvalidArgsException"
        | "ValidationException"
        | "InvalidRequestException"
        | "InvalidParameterException" => BackendError::new(Permanent, reason::REJECTED, said("")),
        "InvalidStateException" => BackendError::new(
            IssuerNotReady,
            reason::CA_NOT_ACTIVE,
            said(": the CA is not ACTIVE (disabled, expired or deleted); requests wait until it is"),
        ),
        "ResourceNotFoundException" | "InvalidArnException" => BackendError::new(
            IssuerNotReady,
            reason::CA_NOT_FOUND,
            said(": check spec.awsPCA.arn and region, and that the CA exists in that account"),
        ),
        "AccessDeniedException" => BackendError::new(
            IssuerNotReady,
            reason::ACCESS_DENIED,
            said(
                ": the identity lacks acm-pca permissions (DescribeCertificateAuthority, GetCertificateAuthorityCertificate, IssueCertificate, GetCertificate) on this CA",
            ),
        ),
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature" => BackendError::new(
            IssuerNotReady,
            reason::INVALID_CREDENTIALS,
            said(
                ": the AWS credentials are not valid; fix the Secret named by credentialsSecretRef (or the pod's IAM identity)",
            ),
        ),
        _ if status >= 500 => BackendError::new(Retryable, reason::API_ERROR, said(" (server error; retrying)")),
        // Unknown client errors: the request waits rather than fails, and says so.
        _ => BackendError::new(IssuerNotReady, reason::API_ERROR, said("")),
    }
}

// === shared state: clients, CA descriptions, rate limits ===

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.max(1e-9)))
        }
    }
}

/// What `DescribeCertificateAuthority` and `GetCertificateAuthorityCertificate` said.
#[derive(Clone, Debug)]
pub struct CaDescription {
    pub key_algorithm: Option<KeyAlgorithm>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub short_lived: bool,
    pub certificate: Certificate,
    /// Certificates above the CA, bottom-up, root last (empty for a root CA).
    pub chain: Vec<Certificate>,
}

/// State shared by every PCA issuer in the process.
pub struct Shared {
    clients: Mutex<HashMap<String, (String, aws_sdk_acmpca::Client)>>,
    descriptions: Mutex<HashMap<String, (String, Instant, CaDescription)>>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    pub issue_rate: f64,
    pub issue_burst: f64,
    /// How long a CA description is reused for signing before it is fetched again.
    pub description_ttl: Duration,
}

impl Shared {
    pub fn new(issue_rate: f64, issue_burst: f64, description_ttl: Duration) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            descriptions: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            issue_rate,
            issue_burst,
            description_ttl,
        }
    }

    fn take_token(&self, issuer: &str) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(issuer.to_string()).or_insert_with(|| TokenBucket {
            tokens: self.issue_burst,
            last: Instant::now(),
        });
        bucket.take(self.issue_rate, self.issue_burst, Instant::now())
    }
}

/// Parses `arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>`.
pub fn parse_ca_arn(arn: &str) -> Result<(String, String), String> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", partition, "acm-pca", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && resource.starts_with("certificate-authority/")
                && !resource.contains("/certificate/") =>
        {
            Ok((partition.to_string(), region.to_string()))
        }
        _ => Err(format!(
            "{arn:?} is not an AWS Private CA ARN (arn:<partition>:acm-pca:<region>:<account>:certificate-authority/<id>)"
        )),
    }
}

/// The CA ARN a certificate ARN belongs to.
pub fn ca_of_certificate_arn(arn: &str) -> Option<&str> {
    arn.split_once("/certificate/").map(|(ca, _)| ca)
}

/// The signing algorithm that fits a CA key.
pub fn signing_algorithm_for(key: &KeyAlgorithm) -> Option<SigningAlgorithm> {
    Some(match key {
        KeyAlgorithm::EcPrime256v1 => SigningAlgorithm::Sha256Withecdsa,
        KeyAlgorithm::EcSecp384r1 => SigningAlgorithm::Sha384Withecdsa,
        KeyAlgorithm::EcSecp521r1 => SigningAlgorithm::Sha512Withecdsa,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => SigningAlgorithm::Sha256Withrsa,
        _ => return None,
    })
}

fn is_ec(key: &KeyAlgorithm) -> bool {
    matches!(
        key,
        KeyAlgorithm::EcPrime256v1 | KeyAlgorithm::EcSecp384r1 | KeyAlgorithm::EcSecp521r1
    )
}

fn spec_algorithm(a: PcaSigningAlgorithm) -> SigningAlgorithm {
    match a {
        PcaSigningAlgorithm::Sha256WithEcdsa => SigningAlgorithm::Sha256Withecdsa,
        PcaSigningAlgorithm::Sha384WithEcdsa => SigningAlgorithm::Sha384Withecdsa,
        PcaSigningAlgorithm::Sha512WithEcdsa => SigningAlgorithm::Sha512Withecdsa,
        PcaSigningAlgorithm::Sha256WithRsa => SigningAlgorithm::Sha256Withrsa,
        PcaSigningAlgorithm::Sha384WithRsa => SigningAlgorithm::Sha384Withrsa,
        PcaSigningAlgorithm::Sha512WithRsa => SigningAlgorithm::Sha512Withrsa,
    }
}

/// The template for a CA certificate with `path_len`, or a leaf, in the CA's partition.
pub fn template_arn(partition: &str, path_len: Option<u8>) -> String {
    match path_len {
        Some(n) => format!("arn:{partition}:acm-pca:::template/SubordinateCACertificate_PathLen{n}/V1"),
        None => format!("arn:{partition}:acm-pca:::template/EndEntityCertificate/V1"),
    }
}

fn timestamp(t: Option<&aws_sdk_acmpca::primitives::DateTime>) -> Option<Timestamp> {
    Timestamp::from_second(t?.secs()).ok()
}

// === the signer ===

pub struct AwsPcaSigner {
    client: aws_sdk_acmpca::Client,
    issuer: String,
    ca_arn: String,
    partition: String,
    path_len: u8,
    signing_algorithm: SigningAlgorithm,
    description: CaDescription,
    shared: Arc<Shared>,
    info: CaInfo,
}

impl AwsPcaSigner {
    pub async fn connect(
        kube: &kube::Client,
        shared: Arc<Shared>,
        spec: &AwsPCA,
        scope: &IssuerScope,
        purpose: Purpose,
    ) -> Result<Self, BackendError> {
        let invalid = |m: String| BackendError::issuer_not_ready(reason::INVALID_SPEC, m);
        let (partition, arn_region) = parse_ca_arn(&spec.arn).map_err(|m| invalid(format!("spec.awsPCA.arn: {m}")))?;
        let region = spec.region.clone().unwrap_or(arn_region);
        let credentials = match &spec.credentials_secret_ref {
            Some(r) => Some(read_credentials(kube, scope, r).await?),
            None => None,
        };
        let client = client_for(&shared, spec, scope, &region, credentials).await;
        let description = describe(&client, &shared, &scope.display, &spec.arn, purpose).await?;
        let key = description.key_algorithm.clone().ok_or_else(|| {
            BackendError::issuer_not_ready(
                reason::API_ERROR,
                format!("AWS Private CA {} did not say its key algorithm", spec.arn),
            )
        })?;
        let signing_algorithm = match spec.signing_algorithm {
            Some(a) => {
                let chosen = spec_algorithm(a);
                let fits = is_ec(&key)
                    == matches!(
                        chosen,
                        SigningAlgorithm::Sha256Withecdsa
                            | SigningAlgorithm::Sha384Withecdsa
                            | SigningAlgorithm::Sha512Withecdsa
                    );
                if !fits {
                    return Err(invalid(format!(
                        "spec.awsPCA.signingAlgorithm {} does not fit the CA's {} key; leave it unset to follow the CA",
                        chosen.as_str(),
                        key.as_str()
                    )));
                }
                chosen
            }
            None => signing_algorithm_for(&key).ok_or_else(|| {
                invalid(format!(
                    "the CA's key algorithm {} is not supported for istiod intermediates",
                    key.as_str()
                ))
            })?,
        };
        let root = description.chain.last().unwrap_or(&description.certificate);
        let info = CaInfo {
            summary: description.certificate.summary(),
            lifetime: CaLifetime {
                not_before: description.not_before,
                not_after: description.not_after.min(root.not_after()),
                max_validity: description.short_lived.then_some(SHORT_LIVED_MAX),
            },
        };
        Ok(Self {
            client,
            issuer: scope.display.clone(),
            ca_arn: spec.arn.clone(),
            partition,
            path_len: spec.path_len,
            signing_algorithm,
            description,
            shared,
            info,
        })
    }

    async fn issue(&self, request: &SignRequest<'_>) -> Result<SignOutcome, BackendError> {
        let path_len = match request.plan.ca_path_len {
            Some(asked) if asked != self.path_len => {
                return Err(BackendError::permanent(
                    reason::REJECTED,
                    format!(
                        "the request calls for pathLen {asked}, but {} issues pathLen {} (spec.awsPCA.pathLen)",
                        self.issuer, self.path_len
                    ),
                ));
            }
            other => other,
        };
        if let Err(wait) = self.shared.take_token(&self.issuer) {
            return Err(BackendError::new(
                FailureKind::Pending,
                reason::RATE_LIMITED,
                format!(
                    "{} is at its IssueCertificate rate limit; next call in {:.1}s",
                    self.issuer,
                    wait.as_secs_f64()
                ),
            ));
        }
        let validity = Validity::builder()
            .value(request.plan.not_after.as_second())
            .r#type(ValidityPeriodType::Absolute)
            .build()
            .map_err(|e| BackendError::permanent(reason::REJECTED, format!("validity: {e}")))?;
        let pem = crate::pki::pem::encode(crate::pki::pem::CERTIFICATE_REQUEST, request.csr.der());
        // Name constraints need the passthrough template and travel as a custom extension.
        let (template, passthrough) = match (&request.plan.name_constraints, path_len) {
            (Some(constraints), Some(n)) => (
                super::aws_pca_passthrough::template_arn(&self.partition, n),
                Some(
                    super::aws_pca_passthrough::api_passthrough(constraints)
                        .map_err(|e| BackendError::permanent(reason::REJECTED, e))?,
                ),
            ),
            _ => (template_arn(&self.partition, path_len), None),
        };
        let issued = self
            .client
            .issue_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .csr(Blob::new(pem.into_bytes()))
            .signing_algorithm(self.signing_algorithm.clone())
            .template_arn(template)
            .set_api_passthrough(passthrough)
            .validity(validity)
            .idempotency_token(idempotency_token(request.request_uid))
            .send()
            .await
            .map_err(|e| classify("IssueCertificate", &self.ca_arn, e.into()))?;
        let arn = issued.certificate_arn().unwrap_or_default().to_string();
        if arn.is_empty() {
            return Err(BackendError::retryable(
                reason::API_ERROR,
                "IssueCertificate returned no certificate ARN",
            ));
        }
        crate::failpoint::hit("after-issue-certificate");
        Ok(SignOutcome::InProgress { backend_ref: arn })
    }

    async fn fetch(&self, certificate_arn: &str) -> Result<SignOutcome, BackendError> {
        let ca_arn = ca_of_certificate_arn(certificate_arn).unwrap_or(&self.ca_arn);
        let got = self
            .client
            .get_certificate()
            .certificate_authority_arn(ca_arn)
            .certificate_arn(certificate_arn)
            .send()
            .await
            .map_err(|e| classify("GetCertificate", ca_arn, e.into()))?;
        let bad =
            |m: String| BackendError::retryable(reason::API_ERROR, format!("GetCertificate {certificate_arn}: {m}"));
        let certificate =
            Certificate::parse_pem_bundle(got.certificate().unwrap_or_default().as_bytes(), "Certificate")
                .map_err(|e| bad(e.to_string()))?
                .remove(0);
        let mut chain = Certificate::parse_pem_bundle(
            got.certificate_chain().unwrap_or_default().as_bytes(),
            "CertificateChain",
        )
        .map_err(|e| bad(e.to_string()))?;
        // The root is the last certificate of the chain; the rest are intermediates.
        let root = chain.pop().ok_or_else(|| bad("no CertificateChain".into()))?;
        if !root.is_self_signed() {
            return Err(BackendError::issuer_not_ready(
                reason::API_ERROR,
                format!(
                    "the chain PCA returned for {certificate_arn} does not end in a root ({})",
                    root.subject()
                ),
            ));
        }
        let mut full = vec![certificate];
        full.extend(chain);
        for pair in full.windows(2) {
            if !pair[0].is_signed_by(&pair[1]) {
                return Err(bad(format!(
                    "{} is not signed by {}",
                    pair[0].subject(),
                    pair[1].subject()
                )));
            }
        }
        if !full[full.len() - 1].is_signed_by(&root) {
            return Err(bad("the chain does not link to its root".into()));
        }
        Ok(SignOutcome::Issued(IssuedChain { chain: full, root }))
    }
}

/// PCA idempotency tokens are at most 36 characters; a Kubernetes UID is exactly 36.
pub fn idempotency_token(uid: &str) -> String {
    uid.chars().filter(|c| !c.is_whitespace()).take(36).collect()
}

impl Signer for AwsPcaSigner {
    fn backend_name(&self) -> &'static str {
        "awsPCA"
    }

    fn ca(&self) -> &CaInfo {
        &self.info
    }

    fn sign<'a>(&'a self, request: SignRequest<'a>) -> BoxFuture<'a, Result<SignOutcome, BackendError>> {
        Box::pin(async move {
            match request.backend_ref {
                Some(arn) => self.fetch(arn).await,
                None => self.issue(&request).await,
            }
        })
    }
}

impl AwsPcaSigner {
    /// The CA description used (for status and tests).
    pub fn description(&self) -> &CaDescription {
        &self.description
    }
}

async fn read_credentials(
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
async fn client_for(
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

/// Describes the CA (reusing a recent description when signing) and checks it can issue.
async fn describe(
    client: &aws_sdk_acmpca::Client,
    shared: &Shared,
    issuer: &str,
    arn: &str,
    purpose: Purpose,
) -> Result<CaDescription, BackendError> {
    if purpose == Purpose::Signing {
        let cache = shared.descriptions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_arn, at, d)) = cache.get(issuer)
            && cached_arn == arn
            && at.elapsed() < shared.description_ttl
        {
            return Ok(d.clone());
        }
    }
    let described = client
        .describe_certificate_authority()
        .certificate_authority_arn(arn)
        .send()
        .await
        .map_err(|e| classify("DescribeCertificateAuthority", arn, e.into()))?;
    let ca = described
        .certificate_authority()
        .ok_or_else(|| BackendError::retryable(reason::API_ERROR, "DescribeCertificateAuthority returned nothing"))?;
    let status = ca.status().cloned().unwrap_or(CertificateAuthorityStatus::Creating);
    let not_ready = |r: &'static str, what: &str| {
        BackendError::issuer_not_ready(r, format!("AWS Private CA {arn} is {}: {what}", status.as_str()))
    };
    match status {
        CertificateAuthorityStatus::Active => {}
        CertificateAuthorityStatus::Disabled => {
            return Err(not_ready(
                reason::CA_DISABLED,
                "enable it again (update-certificate-authority --status ACTIVE); requests wait until then",
            ));
        }
        CertificateAuthorityStatus::Expired => {
            return Err(not_ready(
                reason::CA_EXPIRED,
                "renew its certificate or point spec.awsPCA.arn at another CA",
            ));
        }
        CertificateAuthorityStatus::Deleted => {
            return Err(not_ready(
                reason::CA_DELETED,
                "restore it within its restoration period or point spec.awsPCA.arn at another CA",
            ));
        }
        _ => return Err(not_ready(reason::CA_NOT_ACTIVE, "it cannot issue until it is ACTIVE")),
    }
    let key_algorithm = ca
        .certificate_authority_configuration()
        .map(|c| c.key_algorithm().clone());
    let short_lived = ca.usage_mode() == Some(&CertificateAuthorityUsageMode::ShortLivedCertificate);
    let certs = client
        .get_certificate_authority_certificate()
        .certificate_authority_arn(arn)
        .send()
        .await
        .map_err(|e| classify("GetCertificateAuthorityCertificate", arn, e.into()))?;
    let bad = |m: String| {
        BackendError::issuer_not_ready(
            reason::API_ERROR,
            format!("the certificate of AWS Private CA {arn}: {m}"),
        )
    };
    let certificate =
        Certificate::parse_pem_bundle(certs.certificate().unwrap_or_default().as_bytes(), "CA certificate")
            .map_err(|e| bad(e.to_string()))?
            .remove(0);
    let chain = match certs.certificate_chain() {
        Some(c) if !c.trim().is_empty() => {
            Certificate::parse_pem_bundle(c.as_bytes(), "CA certificate chain").map_err(|e| bad(e.to_string()))?
        }
        _ => Vec::new(),
    };
    let description = CaDescription {
        key_algorithm,
        not_before: timestamp(ca.not_before()).unwrap_or_else(|| certificate.not_before()),
        not_after: timestamp(ca.not_after()).unwrap_or_else(|| certificate.not_after()),
        short_lived,
        certificate,
        chain,
    };
    shared.descriptions.lock().unwrap_or_else(|p| p.into_inner()).insert(
        issuer.to_string(),
        (arn.to_string(), Instant::now(), description.clone()),
    );
    Ok(description)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let service = |code: &str, status: u16| CallFailure::Service {
            code: Some(code.into()),
            status,
            message: "m".into(),
        };
        let cases = [
            // Transient: never Failed.
            (service("ThrottlingException", 400), FailureKind::Retryable),
            (service("InternalFailure", 500), FailureKind::Retryable),
            (service("ServiceUnavailable", 503), FailureKind::Retryable),
            (
                CallFailure::Transport("connection refused".into()),
                FailureKind::Retryable,
            ),
            // Still being issued.
            (service("RequestInProgressException", 400), FailureKind::Pending),
            // The request itself is wrong.
            (service("MalformedCSRException", 400), FailureKind::Permanent),
            (service("InvalidArgsException", 400), FailureKind::Permanent),
            (service("ValidationException", 400), FailureKind::Permanent),
            (service("InvalidRequestException", 400), FailureKind::Permanent),
            // The CA or our access to it.
            (service("InvalidStateException", 400), FailureKind::IssuerNotReady),
            (service("ResourceNotFoundException", 400), FailureKind::IssuerNotReady),
            (service("AccessDeniedException", 400), FailureKind::IssuerNotReady),
            (service("UnrecognizedClientException", 400), FailureKind::IssuerNotReady),
            (
                CallFailure::Construction("no credentials provider".into()),
                FailureKind::IssuerNotReady,
            ),
            // Unknown client errors wait rather than fail.
            (service("SomethingNew", 400), FailureKind::IssuerNotReady),
        ];
        for (failure, expected) in cases {
            let e = classify("IssueCertificate", "arn", failure.clone());
            assert_eq!(e.kind, expected, "{failure:?}: {e:?}");
        }
        let creds = classify("X", "arn", service("UnrecognizedClientException", 400));
        assert_eq!(creds.reason, reason::INVALID_CREDENTIALS);
        assert!(creds.message.contains("credentialsSecretRef"));
    }

    #[test]
    fn arns_templates_and_algorithms() {
        assert_eq!(
            parse_ca_arn("arn:aws-us-gov:acm-pca:us-gov-west-1:123456789012:certificate-authority/abc").unwrap(),
            ("aws-us-gov".to_string(), "us-gov-west-1".to_string())
        );
        for bad in [
            "",
            "arn:aws:acm:us-east-1:123456789012:certificate/x",
            "arn:aws:acm-pca:us-east-1:1:certificate-authority/x",
        ] {
            assert!(parse_ca_arn(bad).is_err(), "{bad}");
        }
        assert_eq!(
            template_arn("aws-cn", Some(0)),
            "arn:aws-cn:acm-pca:::template/SubordinateCACertificate_PathLen0/V1"
        );
        assert_eq!(
            template_arn("aws", None),
            "arn:aws:acm-pca:::template/EndEntityCertificate/V1"
        );
        // The CA's key decides, whatever the CSR's key is.
        assert_eq!(
            signing_algorithm_for(&KeyAlgorithm::Rsa2048),
            Some(SigningAlgorithm::Sha256Withrsa)
        );
        assert_eq!(
            signing_algorithm_for(&KeyAlgorithm::EcSecp384r1),
            Some(SigningAlgorithm::Sha384Withecdsa)
        );
        assert_eq!(
            ca_of_certificate_arn("arn:aws:acm-pca:r:123456789012:certificate-authority/ca/certificate/c"),
            Some("arn:aws:acm-pca:r:123456789012:certificate-authority/ca")
        );
        assert_eq!(idempotency_token("0b3d2c1a-0000-4000-8000-123456789abc").len(), 36);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket {
            tokens: 3.0,
            last: start,
        };
        for _ in 0..3 {
            assert!(b.take(1.0, 3.0, start).is_ok());
        }
        let wait = b.take(1.0, 3.0, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(b.take(1.0, 3.0, start + Duration::from_secs(1)).is_ok());
    }
}
