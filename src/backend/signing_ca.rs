//! What every backend that reads its CA's certificate asks of it before it signs with it (the
//! local CA from its Secret, Vault from its PKI mount): a strong key, a CA allowed to sign
//! certificates, valid now, and chained to a self-signed root. Pure; `display` says where the
//! CA came from, for messages.

use jiff::Timestamp;

use super::BackendError;
use crate::pki::{Certificate, chain, strength};

/// Condition reasons of an issuer whose CA fails one of these checks.
pub mod reason {
    pub const NOT_A_CA: &str = "NotACA";
    pub const CA_EXPIRED: &str = "CAExpired";
    pub const CA_NOT_YET_VALID: &str = "CANotYetValid";
    pub const INCOMPLETE_CHAIN: &str = "IncompleteChain";
    pub const WEAK_CA_KEY: &str = "WeakCAKey";
}

/// The CA's key is at least RSA 2048 / EC P-256, judged from its certificate; `fix` says what
/// to do otherwise.
pub fn check_strength(ca: &Certificate, display: &str, fix: &str) -> Result<(), BackendError> {
    strength::check_key(&ca.public_key_info(), strength::CA_KEY).map_err(|w| {
        BackendError::issuer_not_ready(reason::WEAK_CA_KEY, format!("{display}: {}: {w}; {fix}", ca.subject()))
    })
}

/// BasicConstraints CA:TRUE, and keyCertSign when the certificate has a KeyUsage.
pub fn check_is_ca(ca: &Certificate, display: &str) -> Result<(), BackendError> {
    if !ca.is_ca() {
        return Err(BackendError::issuer_not_ready(
            reason::NOT_A_CA,
            format!(
                "{display}: {} is not a CA certificate (no BasicConstraints CA:TRUE)",
                ca.subject()
            ),
        ));
    }
    if ca.key_usage_cert_sign() == Some(false) {
        return Err(BackendError::issuer_not_ready(
            reason::NOT_A_CA,
            format!("{display}: {} has a KeyUsage without keyCertSign", ca.subject()),
        ));
    }
    Ok(())
}

/// The CA must be within its own validity at `now`.
pub fn check_validity(ca: &Certificate, display: &str, now: Timestamp) -> Result<(), BackendError> {
    if now > ca.not_after() {
        return Err(BackendError::issuer_not_ready(
            reason::CA_EXPIRED,
            format!("{display}: {} expired at {}", ca.subject(), ca.not_after()),
        ));
    }
    if now < ca.not_before() {
        return Err(BackendError::issuer_not_ready(
            reason::CA_NOT_YET_VALID,
            format!("{display}: {} is not valid before {}", ca.subject(), ca.not_before()),
        ));
    }
    Ok(())
}

/// The certificates linking `ca` to a self-signed root among `pool` (bottom-up, both ends
/// excluded), and that root. At most [`chain::MAX_SIGNATURE_CHECKS`] signature checks, as Go's
/// path building: the pool is input (a tenant's Secret, a Vault answer), and each check is an
/// asymmetric verification. `Err` says why no path was found.
pub fn path_to_root(ca: &Certificate, pool: &[Certificate]) -> Result<(Vec<Certificate>, Certificate), String> {
    if ca.is_self_signed() {
        return Ok((Vec::new(), ca.clone()));
    }
    let mut path = Vec::new();
    let mut current = ca.clone();
    let mut checks = 0usize;
    // A chain longer than the pool cannot be honest; the bound also stops loops.
    for _ in 0..=pool.len() {
        let mut parent = None;
        for candidate in pool
            .iter()
            .filter(|p| *p != &current && p.raw_subject() == current.raw_issuer())
        {
            checks += 2; // the candidate's signature on `current`, and on itself below
            if checks > chain::MAX_SIGNATURE_CHECKS {
                return Err(format!(
                    "gave up finding the root of {} after {} signature checks",
                    ca.subject(),
                    chain::MAX_SIGNATURE_CHECKS
                ));
            }
            if current.is_signed_by(candidate) {
                parent = Some(candidate);
                break;
            }
        }
        let Some(parent) = parent else {
            break;
        };
        if parent.is_self_signed() {
            return Ok((path, parent.clone()));
        }
        path.push(parent.clone());
        current = parent.clone();
    }
    Err(format!(
        "the root of {} is not among the certificates given",
        ca.subject()
    ))
}
