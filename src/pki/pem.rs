//! PEM in and out. Output always uses `\n` line endings and 64-column lines, so the same
//! certificate always yields the same bytes (istiod compares `root-cert.pem` byte for byte).

use super::PkiError;

pub const CERTIFICATE: &str = "CERTIFICATE";
pub const CERTIFICATE_REQUEST: &str = "CERTIFICATE REQUEST";

/// The DER contents of every PEM block in `input` with their labels, in order.
pub fn decode_all(input: &[u8], what: &'static str) -> Result<Vec<(String, Vec<u8>)>, PkiError> {
    let blocks = ::pem::parse_many(input).map_err(|e| PkiError::BadPem {
        what,
        reason: e.to_string(),
    })?;
    if blocks.is_empty() {
        return Err(PkiError::NoPem { what });
    }
    Ok(blocks
        .into_iter()
        .map(|b| (b.tag().to_string(), b.into_contents()))
        .collect())
}

/// Every block of `input`, all of which must carry `label`.
pub fn decode_expecting(input: &[u8], label: &'static str, what: &'static str) -> Result<Vec<Vec<u8>>, PkiError> {
    decode_all(input, what)?
        .into_iter()
        .map(|(tag, der)| {
            if tag == label {
                Ok(der)
            } else {
                Err(PkiError::UnexpectedPemType {
                    what,
                    found: tag,
                    expected: label,
                })
            }
        })
        .collect()
}

/// One PEM block with `\n` line endings.
/// How many PEM blocks `input` holds, counted without decoding any: a cheap bound to check
/// before decoding input of unknown size.
pub fn count_blocks(input: &[u8]) -> usize {
    const BEGIN: &[u8] = b"-----BEGIN ";
    input.windows(BEGIN.len()).filter(|w| *w == BEGIN).count()
}

pub fn encode(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der.to_vec()), config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_lf_line_endings() {
        let der = vec![0x30u8; 100];
        let text = encode(CERTIFICATE, &der);
        assert!(!text.contains('\r'));
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(text.ends_with("-----END CERTIFICATE-----\n"));
        assert_eq!(
            decode_expecting(text.as_bytes(), CERTIFICATE, "test").unwrap(),
            vec![der]
        );
    }

    #[test]
    fn wrong_label_and_garbage_are_named() {
        let key = encode("PRIVATE KEY", &[1, 2, 3]);
        let err = decode_expecting(key.as_bytes(), CERTIFICATE, "tls.crt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "tls.crt holds a PEM block of type \"PRIVATE KEY\", expected \"CERTIFICATE\""
        );
        assert_eq!(
            decode_all(b"hello", "tls.crt").unwrap_err(),
            PkiError::NoPem { what: "tls.crt" }
        );
    }
}
