//! Kubernetes API types: our CRDs (group `meshca.io`) and the hand-written subset of
//! cert-manager's API that we read and write.

pub mod cert_manager;
pub mod conditions;
pub mod issuer;
pub mod istio_cacerts;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use issuer::{ClusterMeshCAIssuer, IssuerSpec, IssuerStatus, MeshCAIssuer};
pub use istio_cacerts::IstioCACerts;

/// Our API group.
pub const GROUP: &str = "meshca.io";
/// Our API version.
pub const VERSION: &str = "v1alpha1";

/// Every CRD this project owns, in the order `crdgen` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MeshCAIssuer::crd(), ClusterMeshCAIssuer::crd(), IstioCACerts::crd()]
}
