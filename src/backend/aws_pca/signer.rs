//! The signer: `IssueCertificate` with the request's idempotency token, then `GetCertificate`
//! on the ARN the controller persisted.

use std::sync::Arc;

use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};
use futures::future::BoxFuture;

use super::arn::{idempotency_token, is_ec, parse_ca_arn, signing_algorithm_for, spec_algorithm, template_arn};
use super::binding;
use super::credentials::{ambient_gate, client_for, read_credentials};
use super::describe::{CaDescription, describe, named_state};
use super::rate_limit::Shared;
use super::{SHORT_LIVED_MAX, classify, reason};
use crate::api::issuer::AwsPCA;
use crate::backend::{
    AmbientPolicy, BackendError, CaInfo, FailureKind, IssuerScope, Purpose, SignOutcome, SignRequest, Signer,
};
use crate::pki::Certificate;
use crate::pki::policy::CaLifetime;

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
        ambient: AmbientPolicy,
        spec: &AwsPCA,
        scope: &IssuerScope,
        purpose: Purpose,
    ) -> Result<Self, BackendError> {
        // Before anything is read or called: may this issuer use what it asks for?
        ambient_gate(spec, scope, ambient)?;
        let invalid = |m: String| BackendError::issuer_not_ready(reason::INVALID_SPEC, m);
        let (partition, arn_region) = parse_ca_arn(&spec.arn).map_err(|m| invalid(format!("spec.awsPCA.arn: {m}")))?;
        let region = spec.region.clone().unwrap_or(arn_region);
        let credentials = match &spec.credentials_secret_ref {
            Some(r) => Some(read_credentials(kube, scope, r).await?),
            None => None,
        };
        let client = client_for(&shared, spec, scope, &region, credentials).await;
        let description = describe(&client, &shared.descriptions, &scope.display, &spec.arn, purpose).await?;
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
                super::passthrough::template_arn(&self.partition, n),
                Some(
                    super::passthrough::api_passthrough(constraints)
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
            .await;
        let issued = match issued {
            Ok(issued) => issued,
            Err(e) => {
                let error = classify("IssueCertificate", &self.ca_arn, e.into());
                let descriptions = &self.shared.descriptions;
                return Err(named_state(&self.client, descriptions, &self.issuer, &self.ca_arn, error).await);
            }
        };
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

    /// Fetches the certificate recorded for this request and binds it to the request (see
    /// [`binding`]): the ARN must be of this CA, the key the CSR's, the chain the CA's.
    async fn fetch(&self, certificate_arn: &str, request: &SignRequest<'_>) -> Result<SignOutcome, BackendError> {
        // Before any call: the controller's credentials never fetch another CA's certificate.
        binding::check_arn(certificate_arn, &self.ca_arn)?;
        let got = self
            .client
            .get_certificate()
            .certificate_authority_arn(&self.ca_arn)
            .certificate_arn(certificate_arn)
            .send()
            .await
            .map_err(|e| classify("GetCertificate", &self.ca_arn, e.into()))?;
        let bad =
            |m: String| BackendError::retryable(reason::API_ERROR, format!("GetCertificate {certificate_arn}: {m}"));
        let certificate =
            Certificate::parse_pem_bundle(got.certificate().unwrap_or_default().as_bytes(), "Certificate")
                .map_err(|e| bad(e.to_string()))?
                .remove(0);
        let chain = Certificate::parse_pem_bundle(
            got.certificate_chain().unwrap_or_default().as_bytes(),
            "CertificateChain",
        )
        .map_err(|e| bad(e.to_string()))?;
        let csr_key = &request.csr.public_key_info;
        match binding::bind(
            certificate_arn,
            csr_key,
            certificate.clone(),
            chain.clone(),
            &self.description,
        )? {
            binding::ChainVerdict::Bound(issued) => Ok(SignOutcome::Issued(issued)),
            binding::ChainVerdict::ForeignChain(_) => {
                // The description may be older than a renewal of the CA's certificate: judge
                // once more against a fresh one before calling the chain foreign.
                let fresh = describe(
                    &self.client,
                    &self.shared.descriptions,
                    &self.issuer,
                    &self.ca_arn,
                    Purpose::HealthCheck,
                )
                .await?;
                match binding::bind(certificate_arn, csr_key, certificate, chain, &fresh)? {
                    binding::ChainVerdict::Bound(issued) => Ok(SignOutcome::Issued(issued)),
                    binding::ChainVerdict::ForeignChain(detail) => Err(binding::foreign_chain(detail)),
                }
            }
        }
    }
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
                Some(arn) => self.fetch(arn, &request).await,
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
