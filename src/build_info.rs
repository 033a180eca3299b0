//! What this build is: the crate version and the git revision it was built from (see
//! `build.rs`: "unknown" when built outside a git checkout). One place for `--version` of
//! every binary, the `meshca_build_info` metric and the start-up log line.

/// The crate version (= the chart's appVersion = the image tag).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision (12 hex digits), or "unknown".
pub const REVISION: &str = env!("MESHCA_GIT_REVISION");

/// What `--version` prints after the program name, e.g. `0.1.0 (revision 1a2b3c4d5e6f)`.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("MESHCA_GIT_REVISION"),
    ")"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_line_names_the_version_and_the_revision() {
        assert_eq!(VERSION_LINE, format!("{VERSION} (revision {REVISION})"));
        assert!(!REVISION.is_empty());
        assert!(!REVISION.contains(char::is_whitespace), "{REVISION:?}");
    }
}
