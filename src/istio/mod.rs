//! What istiod needs: the `cacerts` Secret's layout, the ownership rules that keep us from
//! breaking a running mesh, and istiod's own checks, emulated before every write.

pub mod cacerts;
pub mod rotation;
pub mod trust_bundle;
