//! What a backend hands back is what was asked for. Before an issued certificate leaves the
//! controller, its subject, subject alternative names, CA-ness and pathLen, and notAfter are
//! compared with the CSR and the signing plan. The local signer makes them so itself; a remote CA
//! (AWS Private CA, Vault) applies templates and role settings of its own, and whatever those
//! changed (a deeper pathLen, an extra SAN, a longer life) would otherwise reach istiod unseen.
//! Pure: certificates in, a verdict out.

use jiff::{SignedDuration, Timestamp};

use super::policy::SigningPlan;
use super::{Certificate, CertificateSigningRequest};

/// How much later than planned a remote CA's notAfter may fall: the clock skew between this
/// controller and the CA (Vault computes notAfter from a relative TTL on its own clock).
pub const NOT_AFTER_SKEW: SignedDuration = SignedDuration::from_secs(60);

/// Compares `certificate` with what `csr` and `plan` asked for at `now`; the error names the first
/// field that differs, with both values.
///
/// notAfter: never later than planned (beyond [`NOT_AFTER_SKEW`]), and earlier by at most the time
/// since the certificate's notBefore. The plan is made again at every attempt, so a certificate
/// fetched a while after it was issued (PCA answered "in progress", or the controller restarted)
/// legitimately ends before the latest plan does, by up to the time since it was issued, and a
/// certificate's notBefore is never after its issuance.
pub fn check_matches_plan(
    certificate: &Certificate,
    csr: &CertificateSigningRequest,
    plan: &SigningPlan,
    now: Timestamp,
) -> Result<(), String> {
    if certificate.subject() != csr.subject {
        return Err(format!(
            "its subject is {:?}, the request asked for {:?}",
            certificate.subject(),
            csr.subject
        ));
    }
    // A name form no CSR we accept can carry comes back as an `unsupported:` URI: never equal.
    let mut got = certificate.subject_alt_names();
    let mut asked = csr.sans.clone();
    let key = |san: &super::csr::SubjectAltName| format!("{san:?}");
    got.sort_by_key(key);
    asked.sort_by_key(key);
    if got != asked {
        return Err(format!(
            "its subject alternative names are {got:?}, the request asked for {asked:?}"
        ));
    }
    let constraints = certificate.ca_constraints();
    match plan.ca_path_len {
        Some(path_len) => {
            let expected = Some(u32::from(path_len));
            match constraints {
                Some(c) if c.is_ca && c.path_len == expected => {}
                Some(c) if c.is_ca => {
                    return Err(format!(
                        "it is a CA with pathLen {}, the plan is pathLen {path_len}",
                        c.path_len.map_or("unlimited".to_string(), |n| n.to_string())
                    ));
                }
                _ => return Err(format!("it is not a CA, the plan is a CA with pathLen {path_len}")),
            }
        }
        None => {
            if constraints.is_some_and(|c| c.is_ca) {
                return Err("it is a CA, the plan is a leaf".to_string());
            }
        }
    }
    let not_after = certificate.not_after();
    if not_after > plan.not_after + NOT_AFTER_SKEW {
        return Err(format!(
            "it is valid until {not_after}, after the planned {}",
            plan.not_after
        ));
    }
    let since_issued = now.duration_since(certificate.not_before()).max(SignedDuration::ZERO);
    if not_after < plan.not_after - since_issued - NOT_AFTER_SKEW {
        return Err(format!(
            "it is valid only until {not_after}, well before the planned {}",
            plan.not_after
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::pki::SigningKey;
    use crate::pki::sign::tests::istiod_csr;
    use crate::pki::sign::{CaSigner, self_signed_root, sign_csr};

    fn plan(now: Timestamp, path_len: Option<u8>, hours: i64) -> SigningPlan {
        SigningPlan {
            ca_path_len: path_len,
            not_before: now - SignedDuration::from_secs(60),
            not_after: now + SignedDuration::from_hours(hours),
            requested: std::time::Duration::from_secs(hours as u64 * 3600),
            clamped: None,
            name_constraints: None,
        }
    }

    fn issue(csr: &CertificateSigningRequest, plan: &SigningPlan, root: &(Certificate, SigningKey)) -> Certificate {
        sign_csr(
            csr,
            plan,
            &CaSigner {
                certificate: &root.0,
                key: &root.1,
            },
        )
        .unwrap()
    }

    #[test]
    fn an_issued_certificate_is_compared_with_the_request_and_the_plan() {
        let now = Timestamp::now();
        let root = self_signed_root(&RootBootstrap::default(), now - SignedDuration::from_hours(1)).unwrap();
        let csr = istiod_csr();
        let asked = plan(now, Some(0), 24);
        let cert = issue(&csr, &asked, &root);
        let other_csr = {
            let mut other = csr.clone();
            other.subject = "CN=someone else".into();
            other
        };
        let fewer_sans = {
            let mut fewer = csr.clone();
            fewer.sans.clear();
            fewer
        };
        let cases: Vec<(&str, &CertificateSigningRequest, SigningPlan, Timestamp, Option<&str>)> = vec![
            // What was asked for, checked at once.
            ("as planned", &csr, asked.clone(), now, None),
            // Fetched an hour later: the plan made then ends an hour later too.
            (
                "fetched an hour later",
                &csr,
                plan(now + SignedDuration::from_hours(1), Some(0), 24),
                now + SignedDuration::from_hours(1),
                None,
            ),
            // Another subject than the CSR's.
            ("subject", &other_csr, asked.clone(), now, Some("its subject is")),
            // A SAN the request did not ask for.
            (
                "sans",
                &fewer_sans,
                asked.clone(),
                now,
                Some("subject alternative names are"),
            ),
            // pathLen 0 issued, pathLen 1 planned.
            (
                "path length",
                &csr,
                plan(now, Some(1), 24),
                now,
                Some("pathLen 0, the plan is pathLen 1"),
            ),
            // A CA where a leaf was planned.
            (
                "leaf planned",
                &csr,
                plan(now, None, 24),
                now,
                Some("it is a CA, the plan is a leaf"),
            ),
            // Valid for a day where an hour was planned.
            ("longer", &csr, plan(now, Some(0), 1), now, Some("after the planned")),
            // Valid for a day where a year was planned.
            (
                "shorter",
                &csr,
                plan(now, Some(0), 24 * 365),
                now,
                Some("well before the planned"),
            ),
        ];
        for (name, csr, plan, at, expected) in cases {
            let verdict = check_matches_plan(&cert, csr, &plan, at);
            match expected {
                None => assert_eq!(verdict, Ok(()), "{name}"),
                Some(text) => {
                    let message = verdict.expect_err(name);
                    assert!(message.contains(text), "{name}: {message}");
                }
            }
        }
    }
}
