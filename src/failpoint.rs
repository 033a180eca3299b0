//! Crash points for tests. With `MESHCA_FAILPOINT=<name>` set, the process stops dead when it
//! reaches that point: it logs `failpoint <name> reached` and parks the thread for good, so a
//! test can SIGKILL it exactly there (e.g. between PCA's IssueCertificate and persisting the
//! ARN). Unset — always, outside tests — a check is one comparison against a cached value.
//!
//! Compiled in only where tests run: debug builds, or with the `failpoints` feature. A release
//! build (the image, `hack/release`) has none, so no environment variable can park it.

#[cfg(any(debug_assertions, feature = "failpoints"))]
fn configured() -> Option<&'static str> {
    use std::sync::OnceLock;
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("MESHCA_FAILPOINT").ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Stops here for good when `MESHCA_FAILPOINT` names this point.
#[cfg(any(debug_assertions, feature = "failpoints"))]
pub fn hit(name: &str) {
    if configured() == Some(name) {
        tracing::error!(failpoint = name, "failpoint {name} reached; stopping here");
        eprintln!("failpoint {name} reached");
        loop {
            std::thread::park();
        }
    }
}

/// Release builds without the `failpoints` feature: never stops.
#[cfg(not(any(debug_assertions, feature = "failpoints")))]
#[inline(always)]
pub fn hit(_name: &str) {}
