//! What a failed PCA call means: the one place PCA errors become a [`FailureKind`].

use aws_sdk_acmpca::error::{ProvideErrorMetadata, SdkError};

use super::reason;
use crate::backend::{BackendError, FailureKind};

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
            SdkError::ConstructionFailure(_) => CallFailure::Construction(crate::backend::error_chain(&e)),
            _ => CallFailure::Transport(crate::backend::error_chain(&e)),
        }
    }
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
        // PCA could not issue the certificate recorded for the request: it never will.
        "RequestFailedException" => BackendError::new(
            Permanent,
            reason::CERTIFICATE_FAILED,
            said(": PCA failed to issue this certificate; a new request gets a new one"),
        ),
        // The CA was described a moment ago, so what is missing is the certificate recorded
        // for the request: waiting on "issuer not Ready" would wait forever.
        "ResourceNotFoundException" if operation == "GetCertificate" => BackendError::new(
            Permanent,
            reason::CERTIFICATE_FAILED,
            said(": the certificate recorded for this request does not exist at this CA"),
        ),
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
        // Unknown errors: retried with back-off until the retry deadline, then Failed; never
        // left waiting forever, never Failed at once for what may be transient.
        _ => BackendError::new(
            Retryable,
            reason::API_ERROR,
            said(" (unrecognised error; retrying until the retry deadline)"),
        ),
    }
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
            // A stored ARN whose certificate failed or does not exist: permanent.
            (service("RequestFailedException", 400), FailureKind::Permanent),
            // Unknown client errors are retried until the deadline (then Failed).
            (service("SomethingNew", 400), FailureKind::Retryable),
        ];
        for (failure, expected) in cases {
            let e = classify("IssueCertificate", "arn", failure.clone());
            assert_eq!(e.kind, expected, "{failure:?}: {e:?}");
        }
        // ResourceNotFound means the certificate on GetCertificate, the CA elsewhere.
        let missing = classify("GetCertificate", "arn", service("ResourceNotFoundException", 400));
        assert_eq!(missing.kind, FailureKind::Permanent);
        let creds = classify("X", "arn", service("UnrecognizedClientException", 400));
        assert_eq!(creds.reason, reason::INVALID_CREDENTIALS);
        assert!(creds.message.contains("credentialsSecretRef"));
    }
}
