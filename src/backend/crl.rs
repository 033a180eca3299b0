//! What an issuer's backend gives for revocation (`ca-crl.pem`): the local CA's key, to sign
//! its CA's CRL; the CRL Vault publishes for its signing CA; CRLs read from the issuer's
//! `spec.crlFrom`. Each backend says here what it can do; `istio::revocation` decides which
//! CRLs are written. (AWS Private CA's CRL in S3 is not found by itself: `crlFrom` names it.)

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

use super::{Backends, IssuerScope, Purpose, local_ca};
use crate::api::issuer::{CrlFrom, IssuerSpec};
use crate::pki::Certificate;
use crate::pki::crl::{Crl, CrlSigner, X509_CRL};

/// The largest `crlFrom` value read (a CRL of a large CA can be some megabytes; more is no CRL
/// we would write).
const MAX_CRL_BYTES: usize = 4 * 1024 * 1024;

/// What the backend offers, and what could not be had.
#[derive(Debug, Default)]
pub struct CrlSources {
    pub signer: Option<CrlSigner>,
    pub fetched: Vec<Crl>,
    pub problems: Vec<String>,
}

/// Gathers an issuer's CRL sources. Never fails: what cannot be read is a problem named in the
/// result, and the CA it was for goes without a CRL (so `ca-crl.pem` is not written).
pub async fn sources(backends: &Backends, spec: &IssuerSpec, scope: &IssuerScope, now: Timestamp) -> CrlSources {
    let mut out = CrlSources::default();
    if let Some(local) = &spec.local_ca {
        match local_ca::LocalCa::load(backends, local, scope, Purpose::Signing, now).await {
            Ok(ca) => out.signer = Some(ca.crl_signer()),
            Err(e) => out.problems.push(format!(
                "the CA of {} cannot sign its CRL: {}",
                scope.display, e.message
            )),
        }
    }
    if let Some(vault) = &spec.vault {
        let signer = super::vault::VaultSigner::connect(
            &backends.kube,
            backends.vault.clone(),
            backends.ambient,
            vault,
            scope,
            Purpose::Signing,
            now,
        )
        .await;
        match signer {
            Ok(signer) => match signer.crl().await {
                Ok(crls) => out.fetched.extend(crls),
                Err(e) => out.problems.push(e.message),
            },
            Err(e) => out.problems.push(format!(
                "{} cannot reach Vault for its CA's CRL: {}",
                scope.display, e.message
            )),
        }
    }
    if let Some(from) = &spec.crl_from {
        match read_crl_from(backends, from, scope).await {
            Ok(crls) => out.fetched.extend(crls),
            Err(why) => out.problems.push(why),
        }
    }
    out
}

/// How long a `crlFrom.url` may take to answer.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The CRLs of `spec.crlFrom`: PEM (any number) or one DER CRL.
async fn read_crl_from(backends: &Backends, from: &CrlFrom, scope: &IssuerScope) -> Result<Vec<Crl>, String> {
    let r = match (&from.config_map_key_ref, &from.url) {
        (Some(r), None) => r,
        (None, Some(url)) => return fetch_crl(url, from.ca_bundle.as_deref()).await,
        _ => return Err("spec.crlFrom must name exactly one of configMapKeyRef and url".into()),
    };
    let display = format!("ConfigMap {}/{} key {}", scope.secret_namespace, r.name, r.key);
    let api: Api<ConfigMap> = Api::namespaced(backends.kube.clone(), &scope.secret_namespace);
    let cm = api
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("reading {display} (spec.crlFrom): {e}"))?
        .ok_or_else(|| format!("{display} (spec.crlFrom) not found"))?;
    let bytes = cm
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|s| s.as_bytes().to_vec())
        .or_else(|| cm.binary_data.as_ref().and_then(|d| d.get(&r.key)).map(|b| b.0.clone()))
        .ok_or_else(|| format!("{display} (spec.crlFrom) has no such key"))?;
    parse_crls(&bytes).map_err(|why| format!("{display} (spec.crlFrom) is refused: {why}"))
}

/// The CRLs at `url` (`spec.crlFrom.url`), its server checked against `ca_bundle` or the
/// system's roots. Plain http is refused: a CRL is signed, but a CRL withheld or swapped for an
/// older one on the way would go unseen.
async fn fetch_crl(url: &str, ca_bundle: Option<&str>) -> Result<Vec<Crl>, String> {
    use crate::federation::fetch::{Authenticate, Body, get_within};
    let cas = match ca_bundle {
        Some(pem) => Certificate::parse_pem_bundle(pem.as_bytes(), "caBundle")
            .map_err(|e| format!("spec.crlFrom.caBundle cannot be read: {e}"))?,
        None => Vec::new(),
    };
    let what = Body {
        accept: "application/pkix-crl, application/x-pem-file",
        limit: MAX_CRL_BYTES,
        name: "the CRL",
    };
    let bytes = get_within(url, &Authenticate::Web { cas }, FETCH_TIMEOUT, &what)
        .await
        .map_err(|why| format!("spec.crlFrom.url: {why}"))?;
    parse_crls(&bytes).map_err(|why| format!("spec.crlFrom.url {url} is refused: {why}"))
}

/// PEM CRLs, or a single DER one.
pub fn parse_crls(bytes: &[u8]) -> Result<Vec<Crl>, String> {
    if bytes.len() > MAX_CRL_BYTES {
        return Err(format!("{} bytes, more than the {MAX_CRL_BYTES} accepted", bytes.len()));
    }
    let pem_label = format!("-----BEGIN {X509_CRL}-----");
    let crls = if bytes.windows(pem_label.len()).any(|w| w == pem_label.as_bytes()) {
        Crl::parse_pem_bundle(bytes, "crlFrom")
    } else {
        Crl::from_der(bytes.to_vec()).map(|c| vec![c])
    };
    match crls {
        Ok(crls) if crls.is_empty() => Err("it holds no CRL".into()),
        Ok(crls) => Ok(crls),
        Err(e) => Err(format!("not a CRL in PEM or DER: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only CRLs pass: PEM or DER, nothing empty, nothing else.
    #[test]
    fn crl_from_holds_crls_in_pem_or_der() {
        let (root, key) = crate::istio::testing::root(365);
        let crl = crate::pki::crl::issue(
            &crate::pki::crl::CrlSpec {
                number: 3,
                this_update: crate::istio::testing::t0(),
                next_update: crate::istio::testing::t0() + crate::istio::testing::DAY,
                revoked: vec![],
            },
            &crate::pki::sign::CaSigner {
                certificate: &root,
                key: &key,
            },
        )
        .unwrap();
        assert_eq!(parse_crls(crl.to_pem().as_bytes()), Ok(vec![crl.clone()]));
        assert_eq!(parse_crls(crl.der()), Ok(vec![crl.clone()]));
        for (case, bytes) in [
            ("a certificate", root.to_pem().into_bytes()),
            ("garbage", b"not a crl".to_vec()),
            ("nothing", Vec::new()),
            ("too large", vec![b'x'; MAX_CRL_BYTES + 1]),
        ] {
            assert!(parse_crls(&bytes).is_err(), "{case}");
        }
    }
}
