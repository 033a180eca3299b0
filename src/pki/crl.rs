//! Certificate revocation lists for istiod's `ca-crl.pem` (Istio 1.27+, `PILOT_ENABLE_CA_CRL`):
//! one v2 CRL per CA of `cert-chain.pem`, each signed by that CA's key, with a CRL number and a
//! `nextUpdate`. istiod refuses a whole `cacerts` update when `ca-crl.pem` lacks a CRL signed by
//! any certificate of the chain, and TLS stacks refuse an expired CRL, so [`check`] judges every
//! CRL before it may be written. Pure; `istio::revocation` decides which CRLs `ca-crl.pem`
//! holds.

use jiff::{SignedDuration, Timestamp};
use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::sign::CaSigner;
use super::{Certificate, PkiError, hex, pem};

/// The PEM label of a CRL.
pub const X509_CRL: &str = "X509 CRL";

/// Why a certificate is revoked (RFC 5280 §5.3.1), as `spec.revoked[].reason` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    Superseded,
    CessationOfOperation,
}

impl Reason {
    /// The RFC 5280 name (`keyCompromise`); any case.
    pub fn parse(name: &str) -> Option<Self> {
        [
            ("unspecified", Reason::Unspecified),
            ("keycompromise", Reason::KeyCompromise),
            ("cacompromise", Reason::CaCompromise),
            ("superseded", Reason::Superseded),
            ("cessationofoperation", Reason::CessationOfOperation),
        ]
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, r)| r)
    }

    fn rcgen(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::CaCompromise => RevocationReason::CaCompromise,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }
}

/// One revoked certificate: its serial (big-endian bytes), why, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    pub serial: Vec<u8>,
    pub reason: Reason,
    pub revoked_at: Timestamp,
}

/// A CA's certificate and key, kept to sign its CRLs (the local CA backend's).
#[derive(Clone, Debug)]
pub struct CrlSigner {
    pub certificate: Certificate,
    pub key: std::sync::Arc<super::SigningKey>,
}

/// What to put in a CRL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlSpec {
    /// Must grow with every CRL of one CA (RFC 5280 §5.2.3).
    pub number: u64,
    pub this_update: Timestamp,
    pub next_update: Timestamp,
    pub revoked: Vec<Revoked>,
}

/// A parsed CRL, kept as its DER with the fields the decisions read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    der: Vec<u8>,
    issuer: String,
    number: Option<u64>,
    version_2: bool,
    this_update: Timestamp,
    next_update: Option<Timestamp>,
    serials: Vec<Vec<u8>>,
}

impl Crl {
    /// Parses one DER CRL.
    pub fn from_der(der: Vec<u8>) -> Result<Self, PkiError> {
        let bad = |e: String| PkiError::MalformedCertificate(format!("a CRL: {e}"));
        let (rest, parsed) = CertificateRevocationList::from_der(&der).map_err(|e| bad(e.to_string()))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after it".into()));
        }
        let number = parsed
            .crl_number()
            .map(|n| u64::try_from(n).map_err(|_| bad("a CRL number above 2^64".into())))
            .transpose()?;
        let time = |t: x509_parser::time::ASN1Time| Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::MAX);
        let crl = Crl {
            issuer: parsed.issuer().to_string(),
            number,
            version_2: parsed.version().is_some_and(|v| v.0 == 1),
            this_update: time(parsed.last_update()),
            next_update: parsed.next_update().map(time),
            serials: parsed
                .iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec())
                .collect(),
            der: Vec::new(),
        };
        Ok(Crl { der, ..crl })
    }

    /// Every CRL of a PEM file (`ca-crl.pem` holds several).
    pub fn parse_pem_bundle(input: &[u8], what: &'static str) -> Result<Vec<Self>, PkiError> {
        pem::decode_expecting(input, X509_CRL, what)?
            .into_iter()
            .map(Crl::from_der)
            .collect()
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn to_pem(&self) -> String {
        pem::encode(X509_CRL, &self.der)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn number(&self) -> Option<u64> {
        self.number
    }

    pub fn this_update(&self) -> Timestamp {
        self.this_update
    }

    pub fn next_update(&self) -> Option<Timestamp> {
        self.next_update
    }

    /// The serials it revokes, lower-case hex.
    pub fn revoked_serials(&self) -> Vec<String> {
        self.serials.iter().map(|s| hex(s)).collect()
    }

    /// The serials it revokes, as numbers ([`serial_number`]): to compare with others.
    pub fn revoked_numbers(&self) -> std::collections::BTreeSet<Vec<u8>> {
        self.serials.iter().map(|s| serial_number(s)).collect()
    }

    /// Whether `ca` signed it: its issuer is `ca`'s subject and the signature verifies with
    /// `ca`'s key (what Go's `RevocationList.CheckSignatureFrom` asks, as istiod does).
    pub fn is_signed_by(&self, ca: &Certificate) -> bool {
        let Ok((_, parsed)) = CertificateRevocationList::from_der(&self.der) else {
            return false;
        };
        let ca = ca.parsed();
        parsed.issuer().as_raw() == ca.subject().as_raw() && parsed.verify_signature(ca.public_key()).is_ok()
    }
}

/// Signs a v2 CRL for `spec` with the CA's key (authority key identifier, CRL number).
pub fn issue(spec: &CrlSpec, ca: &CaSigner) -> Result<Crl, PkiError> {
    let offset = |t: Timestamp| {
        time::OffsetDateTime::from_unix_timestamp(t.as_second())
            .map_err(|_| PkiError::Signing(format!("time {t} out of range")))
    };
    let revoked_certs = spec
        .revoked
        .iter()
        .map(|r| {
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: offset(r.revoked_at)?,
                reason_code: Some(r.reason.rcgen()),
                invalidity_date: None,
            })
        })
        .collect::<Result<Vec<_>, PkiError>>()?;
    let params = CertificateRevocationListParams {
        this_update: offset(spec.this_update)?,
        next_update: offset(spec.next_update)?,
        crl_number: SerialNumber::from_slice(&spec.number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        // The CA's own subjectKeyIdentifier as the CRL's authorityKeyIdentifier: verifiers
        // match a CRL to its CA by it, and a CA made elsewhere (openssl: SHA-1 of the key) does
        // not use rcgen's method.
        key_identifier_method: match ca.certificate.subject_key_id() {
            Some(id) => KeyIdMethod::PreSpecified(id),
            None => KeyIdMethod::Sha256,
        },
    };
    let issuer = Issuer::from_ca_cert_der(&ca.certificate.der().to_vec().into(), ca.key.key_pair())
        .map_err(|e| PkiError::Signing(format!("the CA {}: {e}", ca.certificate.subject())))?;
    let crl = params
        .signed_by(&issuer)
        .map_err(|e| PkiError::Signing(format!("the CRL of {}: {e}", ca.certificate.subject())))?;
    Crl::from_der(crl.der().to_vec())
}

/// Whether `crl` may be written for `ca`: signed by it, a v2 CRL with a number that grew past
/// `previous_number` (the last one written for this CA), and valid for more than
/// `refresh_before` from `now` (so it is refreshed before anyone could find it expired).
pub fn check(
    crl: &Crl,
    ca: &Certificate,
    previous_number: Option<u64>,
    now: Timestamp,
    refresh_before: SignedDuration,
) -> Result<(), String> {
    let who = format!("the CRL of {}", ca.subject());
    if !crl.is_signed_by(ca) {
        return Err(format!(
            "{who} is not signed by that CA (its issuer is {})",
            crl.issuer()
        ));
    }
    let Some(number) = crl.number().filter(|_| crl.version_2) else {
        return Err(format!("{who} is not a v2 CRL with a CRL number"));
    };
    if let Some(previous) = previous_number
        && number <= previous
    {
        return Err(format!(
            "{who} has CRL number {number}, not above {previous}, the last one written: a CRL never goes back"
        ));
    }
    let Some(next_update) = crl.next_update() else {
        return Err(format!("{who} has no nextUpdate"));
    };
    if next_update <= now {
        return Err(format!("{who} expired at {next_update}"));
    }
    if next_update - refresh_before <= now {
        return Err(format!(
            "{who} is valid only until {next_update}, within the refresh window ({refresh_before:#}) from now"
        ));
    }
    if crl.this_update() > now {
        return Err(format!("{who} is not valid before {}", crl.this_update()));
    }
    Ok(())
}

/// A serial as a number, for comparing: DER keeps a leading zero byte to stay positive, a
/// serial written by hand may have more or fewer; neither changes which certificate it names.
pub fn serial_number(serial: &[u8]) -> Vec<u8> {
    let start = serial.iter().position(|b| *b != 0).unwrap_or(serial.len());
    serial[start..].to_vec()
}

/// A serial number as people write it: hex, any case, colons or spaces between bytes allowed.
pub fn parse_serial(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let digits = digits.strip_prefix("0x").unwrap_or(&digits);
    if digits.is_empty() || digits.len() > 40 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a serial number: up to 20 bytes of hex (case and colons ignored)"
        ));
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits.to_string()
    };
    let mut bytes: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    // DER integers carry no leading zero bytes but the one that keeps them positive.
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] < 0x80 {
        bytes.remove(0);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::RootBootstrap;
    use crate::pki::sign::self_signed_root;

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    const HOUR: SignedDuration = SignedDuration::from_hours(1);

    fn spec(number: u64, revoked: Vec<Revoked>) -> CrlSpec {
        CrlSpec {
            number,
            this_update: now() - HOUR,
            next_update: now() + HOUR * 72,
            revoked,
        }
    }

    /// A CRL we sign is one we read back as written, and it passes the check; every way a CRL
    /// can be unfit to write is refused by name.
    #[test]
    fn issued_crls_read_back_and_unfit_ones_are_refused() {
        let (root, key) = self_signed_root(&RootBootstrap::default(), now() - HOUR).unwrap();
        let (other, other_key) = self_signed_root(&RootBootstrap::default(), now() - HOUR).unwrap();
        let ca = CaSigner {
            certificate: &root,
            key: &key,
        };
        let revoked = Revoked {
            serial: parse_serial("0A:1b:2C").unwrap(),
            reason: Reason::KeyCompromise,
            revoked_at: now() - HOUR,
        };
        let crl = issue(&spec(7, vec![revoked]), &ca).unwrap();
        assert_eq!(crl.number(), Some(7));
        assert_eq!(crl.revoked_serials(), vec!["0a1b2c"]);
        assert_eq!(crl.next_update(), Some(now() + HOUR * 72));
        assert!(crl.is_signed_by(&root) && !crl.is_signed_by(&other));
        let parsed = Crl::parse_pem_bundle(crl.to_pem().as_bytes(), "ca-crl.pem").unwrap();
        assert_eq!(parsed, vec![crl.clone()]);
        let day = HOUR * 24;
        assert_eq!(check(&crl, &root, Some(6), now(), day), Ok(()));
        let foreign = issue(
            &spec(8, vec![]),
            &CaSigner {
                certificate: &other,
                key: &other_key,
            },
        )
        .unwrap();
        let cases: Vec<(&str, Result<(), String>, &str)> = vec![
            (
                "another CA's",
                check(&foreign, &root, None, now(), day),
                "not signed by that CA",
            ),
            (
                "a number that did not grow",
                check(&crl, &root, Some(7), now(), day),
                "never goes back",
            ),
            (
                "expired",
                check(&crl, &root, None, now() + HOUR * 73, day),
                "expired at",
            ),
            (
                "inside the refresh window",
                check(&crl, &root, None, now() + HOUR * 60, day),
                "refresh window",
            ),
        ];
        for (case, got, text) in cases {
            let message = got.expect_err(case);
            assert!(message.contains(text), "{case}: {message}");
        }
    }

    #[test]
    fn serials_are_read_as_people_write_them() {
        assert_eq!(parse_serial("0a:1B:2c"), Ok(vec![0x0a, 0x1b, 0x2c]));
        assert_eq!(parse_serial("0x00ff"), Ok(vec![0x00, 0xff]));
        assert_eq!(parse_serial("0001"), Ok(vec![0x01]));
        assert_eq!(parse_serial("abc"), Ok(vec![0x0a, 0xbc]));
        for bad in ["", "xyz", &"ab".repeat(21)] {
            assert!(parse_serial(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Reason::parse("keyCompromise"), Some(Reason::KeyCompromise));
        assert_eq!(Reason::parse("nope"), None);
    }
}
