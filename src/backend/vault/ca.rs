//! The signing CA as Vault has it: `<mount>/issuer/<ref>/json` (certificate and `ca_chain`),
//! checked as every backend's CA is checked ([`crate::backend::signing_ca`]): a strong key, a
//! CA allowed to sign, valid now, chained to a self-signed root Vault holds. A health check
//! always reads it afresh; a signing reuses a read younger than `--issuer-recheck-interval`.

use std::time::Instant;

use http::Method;
use jiff::Timestamp;

use super::Shared;
use super::classify::{Call, CallFailure, classify};
use super::client::{VaultClient, VaultToken};
use super::endpoint::SignPath;
use crate::backend::{BackendError, Purpose, signing_ca};
use crate::pki::Certificate;

/// The CA that signs, with its chain up to the root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultCa {
    pub certificate: Certificate,
    /// Certificates above it, bottom-up, the root last; empty when it is the root.
    pub chain: Vec<Certificate>,
}

impl VaultCa {
    /// The CA's certificate followed by its chain: what a signed certificate must chain to.
    pub fn issuing(&self) -> Vec<Certificate> {
        std::iter::once(self.certificate.clone())
            .chain(self.chain.iter().cloned())
            .collect()
    }

    pub fn root(&self) -> &Certificate {
        self.chain.last().unwrap_or(&self.certificate)
    }

    /// The end of what it may sign: its own notAfter, cut by any CA above it.
    pub fn not_after(&self) -> Timestamp {
        self.chain
            .iter()
            .map(Certificate::not_after)
            .fold(self.certificate.not_after(), Ord::min)
    }
}

/// Where an issuer's CA is read, and with which token.
pub(super) struct CaSource<'a> {
    pub client: &'a VaultClient,
    pub token: &'a VaultToken,
    pub server: &'a str,
    pub sign_path: &'a SignPath,
}

/// Reads the CA (or reuses a recent read when signing) and checks it.
pub(super) async fn read(
    shared: &Shared,
    issuer: &str,
    source: &CaSource<'_>,
    purpose: Purpose,
    now: Timestamp,
) -> Result<VaultCa, BackendError> {
    let (server, path) = (source.server, source.sign_path.issuer_json());
    let key = format!("{server}|{path}");
    if purpose == Purpose::Signing {
        let cache = shared.cas.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((cached_key, at, ca)) = cache.get(issuer)
            && *cached_key == key
            && at.elapsed() < shared.ca_ttl
        {
            let ca = ca.clone();
            drop(cache);
            // The read may be recent, the clock moved on: validity is judged now.
            signing_ca::check_validity(&ca.certificate, &display(server, &path), now)?;
            return Ok(ca);
        }
    }
    let ca = fetch(source.client, source.token, server, &path).await?;
    check(&ca, &display(server, &path), now)?;
    shared
        .cas
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(issuer.to_string(), (key, Instant::now(), ca.clone()));
    Ok(ca)
}

fn display(server: &str, path: &str) -> String {
    format!("the Vault CA at {server}/v1/{path}")
}

async fn fetch(client: &VaultClient, token: &VaultToken, server: &str, path: &str) -> Result<VaultCa, BackendError> {
    let failed = |f| classify(server, Call::ReadCa { path }, f);
    let answer = client
        .call(Method::GET, path, Some(token), None)
        .await
        .map_err(failed)?;
    let data = &answer["data"];
    let malformed = |m: String| failed(CallFailure::Malformed(m));
    let certificate = data["certificate"]
        .as_str()
        .ok_or_else(|| malformed("the answer carries no data.certificate".into()))?;
    let certificate = Certificate::parse_pem_bundle(certificate.as_bytes(), "data.certificate")
        .map_err(|e| malformed(e.to_string()))?
        .remove(0);
    // `ca_chain` starts with the issuer itself; what is above it may be incomplete when the
    // mount holds an intermediate whose root was never imported (refused by `check`).
    let mut pool = Vec::new();
    for pem in data["ca_chain"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
    {
        pool.extend(
            Certificate::parse_pem_bundle(pem.as_bytes(), "data.ca_chain").map_err(|e| malformed(e.to_string()))?,
        );
    }
    let chain = match signing_ca::path_to_root(&certificate, &pool) {
        Ok((mut path, root)) if root != certificate => {
            path.push(root);
            path
        }
        _ => Vec::new(),
    };
    Ok(VaultCa { certificate, chain })
}

/// The checks every backend asks of its CA. Pure.
pub fn check(ca: &VaultCa, display: &str, now: Timestamp) -> Result<(), BackendError> {
    signing_ca::check_strength(
        &ca.certificate,
        display,
        "sign with a Vault issuer whose key is at least RSA 2048 or EC P-256",
    )?;
    signing_ca::check_is_ca(&ca.certificate, display)?;
    signing_ca::check_validity(&ca.certificate, display, now)?;
    if !ca.root().is_self_signed() {
        return Err(BackendError::issuer_not_ready(
            signing_ca::reason::INCOMPLETE_CHAIN,
            format!(
                "{display}: the chain of {} does not reach a self-signed root in Vault's ca_chain: import the root into the mount (pki/issuers/import/bundle) so requests get it as status.ca",
                ca.certificate.subject()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::chain::tests::{ca, leaf, make, now};

    #[test]
    fn the_signing_ca_must_be_a_valid_ca_chained_to_a_root() {
        let now = now();
        let made_root = make(&ca("root", None), None);
        let made_intermediate = make(&ca("vault-int", Some(1)), Some(&made_root));
        let made_leaf = make(&leaf("not-a-ca"), Some(&made_intermediate));
        let (root, intermediate, leaf) = (made_root.cert, made_intermediate.cert, made_leaf.cert);
        let ok = |ca: VaultCa| check(&ca, "the Vault CA", now);
        assert_eq!(
            ok(VaultCa {
                certificate: root.clone(),
                chain: vec![]
            }),
            Ok(())
        );
        assert_eq!(
            ok(VaultCa {
                certificate: intermediate.clone(),
                chain: vec![root.clone()]
            }),
            Ok(())
        );
        // An intermediate whose root Vault does not hold.
        let e = ok(VaultCa {
            certificate: intermediate,
            chain: vec![],
        })
        .unwrap_err();
        assert_eq!(e.reason, signing_ca::reason::INCOMPLETE_CHAIN, "{}", e.message);
        let e = ok(VaultCa {
            certificate: leaf,
            chain: vec![],
        })
        .unwrap_err();
        assert_eq!(e.reason, signing_ca::reason::NOT_A_CA, "{}", e.message);
        // Checked at a time past the root's end.
        let e = check(
            &VaultCa {
                certificate: root.clone(),
                chain: vec![],
            },
            "the Vault CA",
            root.not_after() + jiff::SignedDuration::from_secs(1),
        )
        .unwrap_err();
        assert_eq!(e.reason, signing_ca::reason::CA_EXPIRED);
    }
}
