//! What istiod needs: the `cacerts` Secret's layout, the ownership rules that keep us from
//! breaking a running mesh, and istiod's own checks, emulated before every write. Pure.
//!
//! The IstioCACerts controller observes into [`plan::Observed`], calls [`decide::decide`],
//! and carries out the [`plan::Plan`] it returns; everything it decides lives here:
//! [`cacerts`] (the bundle and ownership), [`rotation`] (root rotation phases),
//! [`trust_bundle`] (trust anchors in `root-cert.pem`), [`tracking`] (renewal windows and
//! health), [`publish`] (the published root); Secret data is carried as [`secret_data::SecretData`],
//! which never shows its values and wipes them on drop.

pub mod bundle_endpoint;
pub mod bundle_source;
pub mod cacerts;
pub mod cluster_trust_bundle;
pub mod decide;
pub mod plan;
pub mod publish;
pub mod revocation;
pub mod rotation;
pub mod secret_data;
pub mod tracking;
pub mod trust_bundle;

#[cfg(test)]
pub(crate) mod testing;
