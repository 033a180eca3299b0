//! The CA as PCA describes it (`DescribeCertificateAuthority` and
//! `GetCertificateAuthorityCertificate`), cached for signing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_acmpca::types::{CertificateAuthorityStatus, CertificateAuthorityUsageMode, KeyAlgorithm};
use jiff::Timestamp;

use super::{classify, reason};
use crate::backend::{BackendError, FailureKind, Purpose};
use crate::pki::{Certificate, strength};

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

/// The last description of each issuer's CA: (CA ARN, when, description), reused for signing
/// for `ttl` (issuer checks always describe afresh).
pub struct DescriptionCache {
    entries: Mutex<HashMap<String, (String, Instant, CaDescription)>>,
    ttl: Duration,
}

impl DescriptionCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The issuer's description of `arn`, if it is recent enough.
    fn recent(&self, issuer: &str, arn: &str) -> Option<CaDescription> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (cached_arn, at, d) = entries.get(issuer)?;
        (cached_arn == arn && at.elapsed() < self.ttl).then(|| d.clone())
    }

    fn forget(&self, issuer: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(issuer);
    }

    fn store(&self, issuer: &str, arn: &str, description: &CaDescription) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(
            issuer.to_string(),
            (arn.to_string(), Instant::now(), description.clone()),
        );
    }
}

fn timestamp(t: Option<&aws_sdk_acmpca::primitives::DateTime>) -> Option<Timestamp> {
    Timestamp::from_second(t?.secs()).ok()
}
/// Describes the CA (reusing a recent description when signing) and checks it can issue.
pub(super) async fn describe(
    client: &aws_sdk_acmpca::Client,
    cache: &DescriptionCache,
    issuer: &str,
    arn: &str,
    purpose: Purpose,
) -> Result<CaDescription, BackendError> {
    if purpose == Purpose::Signing
        && let Some(recent) = cache.recent(issuer, arn)
    {
        return Ok(recent);
    }
    let ca = active_ca(client, cache, issuer, arn).await?;
    let key_algorithm = ca
        .certificate_authority_configuration()
        .map(|c| c.key_algorithm().clone());
    let short_lived = ca.usage_mode() == Some(&CertificateAuthorityUsageMode::ShortLivedCertificate);
    let certs = client
        .get_certificate_authority_certificate()
        .certificate_authority_arn(arn)
        .send()
        .await;
    let certs = match certs {
        Ok(certs) => certs,
        Err(e) => {
            let error = classify("GetCertificateAuthorityCertificate", arn, e.into());
            return Err(named_state(client, cache, issuer, arn, error).await);
        }
    };
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
    strength::check_key(&certificate.public_key_info(), strength::CA_KEY).map_err(|w| {
        BackendError::issuer_not_ready(
            reason::WEAK_CA_KEY,
            format!(
                "AWS Private CA {arn} ({}): {w}; point spec.awsPCA.arn at a CA with a stronger key",
                certificate.subject()
            ),
        )
    })?;
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
    cache.store(issuer, arn, &description);
    Ok(description)
}

/// `DescribeCertificateAuthority`: the CA, if it is ACTIVE; otherwise its state, named, and
/// what to do.
async fn active_ca(
    client: &aws_sdk_acmpca::Client,
    cache: &DescriptionCache,
    issuer: &str,
    arn: &str,
) -> Result<aws_sdk_acmpca::types::CertificateAuthority, BackendError> {
    let described = client
        .describe_certificate_authority()
        .certificate_authority_arn(arn)
        .send()
        .await
        .map_err(|e| classify("DescribeCertificateAuthority", arn, e.into()))?;
    let ca = described
        .certificate_authority()
        .cloned()
        .ok_or_else(|| BackendError::retryable(reason::API_ERROR, "DescribeCertificateAuthority returned nothing"))?;
    let status = ca.status().cloned().unwrap_or(CertificateAuthorityStatus::Creating);
    let not_ready = |r: &'static str, what: &str| {
        // A CA that cannot issue is not described for signing from memory any more: the next
        // signing asks again instead of calling IssueCertificate on an ACTIVE remembered.
        cache.forget(issuer);
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
    Ok(ca)
}

/// What to say when a call after the description (`GetCertificateAuthorityCertificate`,
/// `IssueCertificate`) found the CA not ACTIVE. The CA changed state since it was described,
/// and the API's InvalidStateException does not say to which: a new description names it
/// (`CADisabled`, ...) and what to do. Any other error is said as it is.
pub(super) async fn named_state(
    client: &aws_sdk_acmpca::Client,
    cache: &DescriptionCache,
    issuer: &str,
    arn: &str,
    error: BackendError,
) -> BackendError {
    if error.reason != reason::CA_NOT_ACTIVE {
        return error;
    }
    match active_ca(client, cache, issuer, arn).await {
        // Only a state is taken from the second description: were that call throttled or
        // cut off, the request would otherwise turn from waiting on its issuer into a
        // transient failure with a deadline.
        Err(named) if named.kind == FailureKind::IssuerNotReady => named,
        _ => error,
    }
}
