//! go-spiffe, an independent SPIFFE implementation (what SPIRE and every go-spiffe client
//! use), built from its module by `hack/test` (`hack/go/spiffe-bundle`): how it reads a bundle,
//! and how its federation client fetches one from a bundle endpoint.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

fn reader() -> PathBuf {
    let path = std::env::var("MESHCA_SPIFFE_BUNDLE").unwrap_or_default();
    assert!(
        !path.is_empty(),
        "no go-spiffe bundle reader: run `hack/test`, or `source hack/lib/common.sh && ensure_spiffe_bundle` and set MESHCA_SPIFFE_BUNDLE"
    );
    PathBuf::from(path)
}

fn lines(out: std::process::Output) -> Result<Vec<String>, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// go-spiffe's reading of `body` for trust domain `td`: Ok(its lines: `x509 <sha256>`,
/// `sequence <n>`, `refresh_hint <s>`) or Err(its refusal).
pub fn go_spiffe(td: &str, body: &str) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, body).unwrap();
    lines(
        Command::new(reader())
            .arg(td)
            .arg(&file)
            .output()
            .expect("run spiffe-bundle"),
    )
}

/// go-spiffe's federation client fetching `td`'s bundle from `url` with the `https_spiffe`
/// profile: the endpoint must present `endpoint_id`, chaining to `bootstrap_pem`.
pub async fn go_spiffe_fetch(
    td: &str,
    url: &str,
    endpoint_id: &str,
    bootstrap_pem: &str,
) -> Result<Vec<String>, String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.pem");
    std::fs::write(&file, bootstrap_pem).unwrap();
    let out = tokio::process::Command::new(reader())
        .args(["fetch", td, url, endpoint_id])
        .arg(&file)
        .output()
        .await
        .expect("run spiffe-bundle fetch");
    lines(out)
}
