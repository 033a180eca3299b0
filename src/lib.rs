//! mesh-ca-issuer: a cert-manager external issuer for Istio's CA.
//!
//! cert-manager asks, through `CertificateRequest`s, for istiod's intermediate CA certificate;
//! this crate signs it with a pluggable PKI backend and hands the chain back. The library owns
//! all logic; `main.rs` only parses configuration and runs [`run`].
//!
//! Layout: [`api`] holds CRD types, [`controller`] the reconcilers (decisions as pure
//! functions, IO in thin shells), [`error`] the one place errors are classified.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod backend;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod controller;
pub mod duration;
pub mod error;
pub mod failpoint;
pub mod federation;
pub mod fuzzing;
pub mod istio;
pub mod lease;
pub mod metrics;
pub mod pki;
pub mod spiffe_bundle;
pub mod telemetry;

pub use controller::run;
pub use error::{Error, Result};

/// The field manager of every server-side apply this controller makes.
pub const FIELD_MANAGER: &str = "mesh-ca-issuer";

/// Installs the process-wide rustls crypto provider (aws-lc-rs) once. Both the Kubernetes
/// client and the AWS SDK build rustls configs; with one provider installed neither has to guess.
pub fn install_crypto_provider() {
    // Err means a provider is already installed (e.g. by an earlier test): nothing to do.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
