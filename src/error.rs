//! Errors of the controller process and their one classification into retry kinds.

use std::time::Duration;

/// Everything that can go wrong outside a single reconcile's decision logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not build a Kubernetes client configuration: {0}")]
    KubeConfig(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("Kubernetes API request failed: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    #[error("{count} event(s) about {object} could not be written yet; retrying after a back-off")]
    EventsUnsent { object: String, count: usize },

    #[error("could not serve the admin endpoint on {address}: {source}")]
    AdminListener {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("could not serve the SPIFFE bundle endpoint on {address} (--bundle-endpoint-addr): {source}")]
    BundleEndpointListener {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a kube error with what we were doing and on which object.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source,
        }
    }

    /// True when the API server answered 409 Conflict: someone else wrote first. A conflict
    /// is a requeue, never a failure.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
    }

    /// How long to wait before the reconcile that failed with this error runs again.
    pub fn requeue_after(&self) -> Duration {
        if self.is_conflict() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> Error {
        let status = kube::core::Status::failure("conflict", "Conflict").with_code(code);
        Error::kube("writing status", kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn a_conflict_is_a_quick_requeue_and_other_errors_back_off() {
        assert!(api_error(409).is_conflict());
        assert_eq!(api_error(409).requeue_after(), Duration::from_millis(200));
        assert!(!api_error(500).is_conflict());
        assert_eq!(api_error(500).requeue_after(), Duration::from_secs(5));
    }
}
