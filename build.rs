//! Records the git revision the binaries are built from, for `--version`, the
//! `meshca_build_info` metric and the image labels.
//!
//! Order: `MESHCA_GIT_REVISION` (set by whoever builds from a source tarball and knows the
//! revision), else `git rev-parse` in this directory, else "unknown" — a source tree without
//! `.git` or a machine without git still builds.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=MESHCA_GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = std::env::var("MESHCA_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(git_revision)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=MESHCA_GIT_REVISION={}", revision.trim());
    // Rebuild when HEAD moves (a commit, a checkout), not on every source change.
    for path in git_revision().map(|_| git_paths()).unwrap_or_default() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The revision of the checkout this crate is the top of: a source tarball unpacked inside
/// some other repository must not report that repository's revision.
fn git_revision() -> Option<String> {
    let top = std::fs::canonicalize(git(&["rev-parse", "--show-toplevel"])?).ok()?;
    let here = std::fs::canonicalize(std::env::var("CARGO_MANIFEST_DIR").ok()?).ok()?;
    if top != here {
        return None;
    }
    git(&["rev-parse", "--short=12", "HEAD"])
}

/// HEAD, the ref it points to and packed-refs: the files whose change means a new revision.
/// A worktree keeps HEAD in its own git dir and the refs in the common one.
fn git_paths() -> Vec<PathBuf> {
    let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--absolute-git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return Vec::new();
    };
    let mut paths = vec![PathBuf::from(&git_dir).join("HEAD")];
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.push(PathBuf::from(&common_dir).join(reference));
    }
    paths.push(PathBuf::from(&common_dir).join("packed-refs"));
    paths.into_iter().filter(|p| p.exists()).collect()
}
