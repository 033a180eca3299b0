//! Federation over SPIFFE bundle endpoints (SPIFFE Federation): [`serve`] answers peers with
//! this cluster's own roots (every replica), [`poller`] follows peers' endpoints (the leader)
//! through [`fetch`]. The decisions are pure and live in `istio::bundle_endpoint` (what is
//! served) and `istio::bundle_source` (what a fetch is worth).

pub mod fetch;
pub mod poller;
pub mod serve;
