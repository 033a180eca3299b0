//! A Secret's data as the IstioCACerts decision carries it: key names to bytes. The bytes of
//! istiod's bundle include `ca-key.pem` (and a source's `tls.key`), so this type never shows
//! them: `Debug` prints each key's name and size only, and every value is overwritten with
//! zeros when the map is dropped. A derived `Debug` on anything holding one stays safe.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use zeroize::Zeroize;

/// Key names to bytes; redacted in `Debug`, zeroized on drop.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl SecretData {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Deref for SecretData {
    type Target = BTreeMap<String, Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for SecretData {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl SecretData {
    /// Overwrites every value with zeros (and empties it). Only the values are secret; the key
    /// names are what `Debug` shows anyway.
    fn wipe(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl Drop for SecretData {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Size(usize);
        impl std::fmt::Debug for Size {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "<{} bytes>", self.0)
            }
        }
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| (k, Size(v.len()))))
            .finish()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for SecretData {
    fn from(map: BTreeMap<String, Vec<u8>>) -> Self {
        Self(map)
    }
}

impl<const N: usize> From<[(String, Vec<u8>); N]> for SecretData {
    fn from(pairs: [(String, Vec<u8>); N]) -> Self {
        Self(pairs.into())
    }
}

impl FromIterator<(String, Vec<u8>)> for SecretData {
    fn from_iter<I: IntoIterator<Item = (String, Vec<u8>)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl PartialEq<BTreeMap<String, Vec<u8>>> for SecretData {
    fn eq(&self, other: &BTreeMap<String, Vec<u8>>) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Fails when `shown` (a `{:?}` rendering) contains `secret` in any form `Debug` could give
    /// it: as text, as a byte list, or a line of its PEM body.
    pub(crate) fn assert_not_shown(shown: &str, secret: &[u8], what: &str) {
        let text = String::from_utf8_lossy(secret);
        assert!(
            !shown.contains(text.as_ref()),
            "{what} shows the secret as text: {shown}"
        );
        for line in text.lines().filter(|l| l.len() >= 16) {
            assert!(!shown.contains(line), "{what} shows a line of the secret: {shown}");
        }
        assert!(!shown.contains("PRIVATE KEY"), "{what} shows a PEM key: {shown}");
        // `{:?}` of bytes: "[45, 45, ...]"; inside a longer list without the brackets.
        let head = &secret[..secret.len().min(24)];
        let listed = format!("{head:?}");
        let listed = listed.trim_start_matches('[').trim_end_matches(']');
        assert!(!shown.contains(listed), "{what} shows the secret as bytes: {shown}");
    }

    #[test]
    fn debug_shows_key_names_and_sizes_never_values() {
        let key = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";
        let data: SecretData = [
            ("ca-key.pem".to_string(), key.to_vec()),
            ("tls.key".to_string(), key.to_vec()),
        ]
        .into();
        let shown = format!("{data:?}");
        assert_eq!(
            shown,
            format!(r#"{{"ca-key.pem": <{0} bytes>, "tls.key": <{0} bytes>}}"#, key.len())
        );
        assert_not_shown(&shown, key, "SecretData");
        assert_not_shown(&format!("{data:#?}"), key, "SecretData (pretty)");
    }

    #[test]
    fn values_are_wiped_on_drop() {
        let mut data: SecretData = [("ca-key.pem".to_string(), b"secret".to_vec())].into();
        // What Drop runs, observed on a map still in scope (zeroize writes zeros over the
        // contents, then empties the Vec).
        data.wipe();
        assert_eq!(data.get("ca-key.pem").map(Vec::len), Some(0), "the value is wiped");
    }
}
