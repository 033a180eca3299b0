//! Go's own `crypto/x509`, the judge istiod uses: builds `tests/goverify/main.go` (standard
//! library only, the Go that `hack/test` puts first on PATH) once per source version and asks it the two questions
//! istiod and its workloads ask: does istiod load this `cacerts` bundle, and does this workload
//! certificate verify against these roots.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::openssl::Workdir;

/// Go's verdict: `Ok(())` when Go verifies, `Err(why)` with Go's own words when it refuses.
pub type Verdict = Result<(), String>;

/// The `cacerts` data istiod loads, in Istio's own format: CA certificate `ca_cert` (PEM) and
/// its `ca_key`, the chain from it through `above` (the PEM of any CAs between it and the
/// root, possibly empty) to `root`, and the root. Every test that hands istiod a bundle
/// builds it here, so all of them judge the same layout.
pub fn cacerts(ca_cert: &str, ca_key: &str, above: &str, root: &str) -> BTreeMap<String, Vec<u8>> {
    BTreeMap::from([
        ("ca-cert.pem".to_string(), ca_cert.as_bytes().to_vec()),
        ("ca-key.pem".to_string(), ca_key.as_bytes().to_vec()),
        (
            "cert-chain.pem".to_string(),
            format!("{ca_cert}{above}{root}").into_bytes(),
        ),
        ("root-cert.pem".to_string(), root.as_bytes().to_vec()),
    ])
}

/// The goverify binary, built into `target/goverify/<source hash>/` on first use; parallel test
/// processes each build into a temporary file and rename it, so none sees a half-written one.
fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = super::repo_root();
        let source = root.join("tests/goverify/main.go");
        let text = std::fs::read(&source).expect("tests/goverify/main.go");
        let hash = text.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let dir = root.join(format!("target/goverify/{hash:016x}"));
        let bin = dir.join("goverify");
        if bin.exists() {
            return bin;
        }
        std::fs::create_dir_all(&dir).expect("create target/goverify");
        let part = dir.join(format!("goverify.{}.part", std::process::id()));
        let out = Command::new("go")
            .args(["build", "-o"])
            .arg(&part)
            .arg(&source)
            .env("GOFLAGS", "-mod=mod")
            .env("GOPROXY", "off")
            .env("GO111MODULE", "off")
            .output()
            .expect("Go is on PATH (hack/test puts a Go >= 1.26 there)");
        assert!(
            out.status.success(),
            "go build tests/goverify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&part, &bin).expect("move goverify into place");
        bin
    })
}

fn run(args: &[&str], cwd: &Path) -> Verdict {
    let out = Command::new(binary())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run goverify");
    let said = super::said(&out);
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(said.trim().trim_start_matches("REFUSED: ").to_string()),
        _ => panic!("goverify {args:?} could not judge: {said}"),
    }
}

/// istiod's load-time check of a `cacerts` bundle (the Secret's data), at `at` (RFC 3339) or
/// now: `x509.Verify` of `ca-cert.pem` with `cert-chain.pem` as intermediates against every root
/// of `root-cert.pem`, default key usage serverAuth, then the key matches. The TLS format
/// (`tls.crt` present) is read as istiod reads it.
pub fn istiod_loads_at(data: &BTreeMap<String, Vec<u8>>, at: Option<&str>) -> Verdict {
    let dir = Workdir::new();
    for (key, value) in data {
        dir.write(key, value);
    }
    let mut args = vec!["cacerts", "."];
    if let Some(at) = at {
        args.extend_from_slice(&["--at", at]);
    }
    run(&args, dir.path())
}

/// [`istiod_loads_at`] now.
pub fn istiod_loads(data: &BTreeMap<String, Vec<u8>>) -> Verdict {
    istiod_loads_at(data, None)
}

/// Whether a workload certificate verifies as a peer checks it: `leaf_pem`'s first certificate,
/// with the rest of `leaf_pem` and all of `chain_pem` as intermediates, against every
/// certificate in `roots_pem`, for serverAuth.
pub fn workload_verifies(leaf_pem: &[u8], chain_pem: &[u8], roots_pem: &[u8]) -> Verdict {
    let dir = Workdir::new();
    dir.write("leaf.pem", leaf_pem)
        .write("chain.pem", chain_pem)
        .write("roots.pem", roots_pem);
    run(
        &[
            "chain",
            "--leaf",
            "leaf.pem",
            "--chain",
            "chain.pem",
            "--roots",
            "roots.pem",
        ],
        dir.path(),
    )
}

/// Go's verdict on a workload certificate followed by its chain (as istiod hands them out)
/// against every root in `roots`.
pub fn workload_and_chain_verify(leaf_and_chain: &str, roots: &[u8]) -> bool {
    workload_verifies(leaf_and_chain.as_bytes(), b"", roots).is_ok()
}
