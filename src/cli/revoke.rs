//! `meshca revoke`: adds a cluster's intermediate (or any serial) to an issuer's `spec.revoked`
//! in every named cluster, then waits until their IstioCACerts write it into `ca-crl.pem`.
//! What is decided here is pure; `cli::mod` reads and writes.

use jiff::Timestamp;

use crate::api::issuer::{RevocationReason, RevokedCertificate};
use crate::api::istio_cacerts::IstioCACerts;
use crate::pki::crl::parse_serial;

/// The serial `--cert-from-context` names: the intermediate that cluster's IstioCACerts
/// shows (`status.intermediate.serialNumber`), with its subject for the messages.
pub fn victim_serial(icc: &IstioCACerts, context: &str) -> Result<(String, String), String> {
    let intermediate = icc
        .status
        .as_ref()
        .and_then(|s| s.intermediate.as_ref())
        .ok_or_else(|| {
            format!(
                "context {context}: IstioCACerts {} shows no intermediate yet (status.intermediate)",
                icc.metadata.name.as_deref().unwrap_or_default()
            )
        })?;
    let serial = intermediate.serial_number.clone().ok_or_else(|| {
        format!(
            "context {context}: status.intermediate has no serialNumber (a controller older than this CLI); pass --serial"
        )
    })?;
    Ok((canonical(&serial)?, intermediate.subject.clone()))
}

/// A serial as `spec.revoked` and `status.crl[].revokedSerials` compare it: lower-case hex,
/// no separators, no leading zero bytes but the one DER keeps.
pub fn canonical(serial: &str) -> Result<String, String> {
    parse_serial(serial).map(|bytes| crate::pki::hex(&bytes))
}

/// The issuer's new `spec.revoked`: the current list with the serial added (`None`: it is
/// already listed, nothing to write). Other entries are kept as they are.
pub fn add(
    current: &[RevokedCertificate],
    serial: &str,
    reason: RevocationReason,
    at: Timestamp,
) -> Option<Vec<RevokedCertificate>> {
    let listed = current
        .iter()
        .any(|r| canonical(&r.serial_number).ok().as_deref() == Some(serial));
    if listed {
        return None;
    }
    let mut list = current.to_vec();
    list.push(RevokedCertificate {
        serial_number: serial.to_string(),
        reason,
        revoked_at: Some(at.to_string()),
    });
    Some(list)
}

/// Whether an IstioCACerts' `ca-crl.pem` lists the serial; `None` when it has nothing to wait
/// for: its revocation is off, or its backend CA (`status.backendCA`) is not the revoking
/// issuer's CA (`ca_fingerprint`), so that CA's CRL is not its to write.
pub fn lists(icc: &IstioCACerts, serial: &str, ca_fingerprint: &str) -> Option<bool> {
    if !icc.spec.revocation.as_ref().is_some_and(|r| r.enabled) {
        return None;
    }
    let backend = icc.status.as_ref().and_then(|s| s.backend_ca.as_ref());
    if !backend.is_some_and(|b| b.fingerprint_sha256.eq_ignore_ascii_case(ca_fingerprint)) {
        return None;
    }
    let listed = icc
        .status
        .iter()
        .flat_map(|s| &s.crl)
        .any(|crl| crl.revoked_serials.iter().any(|s| s == serial));
    Some(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::istio_cacerts::{IstioCACertsSpec, IstioCACertsStatus, Revocation, TrackedCertificate, TrackedCrl};

    fn icc(serial: Option<&str>, enabled: bool, crl: &[&str]) -> IstioCACerts {
        let mut icc = IstioCACerts::new(
            "istiod",
            IstioCACertsSpec {
                revocation: Some(Revocation {
                    enabled,
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        icc.status = Some(IstioCACertsStatus {
            intermediate: serial.map(|s| TrackedCertificate {
                subject: "CN=istiod".into(),
                serial_number: Some(s.into()),
                ..Default::default()
            }),
            backend_ca: Some(TrackedCertificate {
                fingerprint_sha256: "AB".into(),
                ..Default::default()
            }),
            crl: vec![TrackedCrl {
                revoked_serials: crl.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
            ..Default::default()
        });
        icc
    }

    /// The victim's serial comes from its status, read as a number; an entry already listed
    /// (in any spelling) is not added twice; only IstioCACerts with revocation on under the
    /// revoking issuer's CA are waited for.
    #[test]
    fn the_victims_serial_is_added_once_and_waited_for_where_revocation_is_on() {
        assert_eq!(
            victim_serial(&icc(Some("0A:1B"), true, &[]), "b"),
            Ok(("0a1b".to_string(), "CN=istiod".to_string()))
        );
        assert!(
            victim_serial(&icc(None, true, &[]), "b")
                .unwrap_err()
                .contains("no intermediate")
        );

        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let entry = |serial: &str| RevokedCertificate {
            serial_number: serial.into(),
            ..Default::default()
        };
        let cases = [
            ("empty", vec![], true),
            ("another serial", vec![entry("ff")], true),
            ("the same, written otherwise", vec![entry("0x0A:1b")], false),
        ];
        for (case, current, adds) in cases {
            let out = add(&current, "0a1b", RevocationReason::KeyCompromise, at);
            assert_eq!(out.is_some(), adds, "{case}");
            if let Some(list) = out {
                assert_eq!(list.len(), current.len() + 1, "{case}: others kept");
                let added = list.last().unwrap();
                assert_eq!(added.serial_number, "0a1b");
                assert_eq!(added.reason, RevocationReason::KeyCompromise);
                assert_eq!(added.revoked_at.as_deref(), Some("2027-01-15T08:00:00Z"));
            }
        }

        assert_eq!(lists(&icc(Some("01"), true, &["0a1b"]), "0a1b", "ab"), Some(true));
        assert_eq!(lists(&icc(Some("01"), true, &[]), "0a1b", "ab"), Some(false));
        assert_eq!(lists(&icc(Some("01"), false, &["0a1b"]), "0a1b", "ab"), None);
        assert_eq!(lists(&icc(Some("01"), true, &[]), "0a1b", "cd"), None, "another CA's");
    }
}
