//! A private key that signs certificates. Its `Debug` shows the algorithm only, and it has no
//! `Display`: the key bytes cannot end up in a log line by accident. Dropping it zeroizes the
//! key's DER kept by rcgen (aws-lc frees, and cleanses, its own copy).

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, RsaKeySize};

use super::{Certificate, PkiError};
use crate::api::issuer::{KeyAlgorithm, PrivateKeySpec};

pub struct SigningKey {
    pair: KeyPair,
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pair);
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm_name())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC), as cert-manager writes them.
    /// The signature algorithm follows the key: ECDSA P-256 → SHA-256, P-384 → SHA-384, RSA →
    /// PKCS#1 v1.5 SHA-256.
    pub fn from_pem(input: &[u8]) -> Result<Self, PkiError> {
        let text = std::str::from_utf8(input).map_err(|_| PkiError::MalformedKey)?;
        let pair = KeyPair::from_pem(text).map_err(|_| PkiError::MalformedKey)?;
        Ok(Self { pair })
    }

    /// A fresh key for a bootstrapped root.
    pub fn generate(spec: &PrivateKeySpec) -> Result<Self, PkiError> {
        let pair = match (spec.algorithm, spec.size) {
            (KeyAlgorithm::Ecdsa, None | Some(256)) => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            (KeyAlgorithm::Ecdsa, Some(384)) => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
            (KeyAlgorithm::Rsa, None | Some(2048)) => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
            (KeyAlgorithm::Rsa, Some(3072)) => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_3072),
            (KeyAlgorithm::Rsa, Some(4096)) => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096),
            (alg, Some(size)) => {
                return Err(PkiError::KeyGeneration(format!(
                    "unsupported size {size} for {alg:?}: use 256 or 384 for ECDSA, 2048, 3072 or 4096 for RSA"
                )));
            }
        }
        .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
        Ok(Self { pair })
    }

    /// PKCS#8 DER of the key, for a TLS listener in this process.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        self.pair.serialize_der()
    }

    /// PKCS#8 PEM of the key. Only ever written into a Secret.
    pub fn to_pem(&self) -> String {
        self.pair.serialize_pem()
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn public_key_info(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.pair)
    }

    /// True when this key is the private half of `cert`'s public key.
    pub fn matches(&self, cert: &Certificate) -> bool {
        self.public_key_info() == cert.public_key_info()
    }

    pub fn algorithm_name(&self) -> &'static str {
        let alg = self.pair.algorithm();
        if alg == &PKCS_ECDSA_P256_SHA256 {
            "ECDSA P-256 with SHA-256"
        } else if alg == &PKCS_ECDSA_P384_SHA384 {
            "ECDSA P-384 with SHA-384"
        } else if alg == &PKCS_RSA_SHA256 {
            "RSA with SHA-256"
        } else {
            "other"
        }
    }

    /// True for keys whose signatures take tens of microseconds (ECDSA), false for those that
    /// take milliseconds (RSA): what decides whether signing may run on an async thread.
    pub fn signs_quickly(&self) -> bool {
        let alg = self.pair.algorithm();
        alg == &PKCS_ECDSA_P256_SHA256 || alg == &PKCS_ECDSA_P384_SHA384
    }

    pub(super) fn key_pair(&self) -> &KeyPair {
        &self.pair
    }
}
