//! Kubernetes API types: our CRDs (group `meshca.io`) and the hand-written subset of
//! cert-manager's API that we read and write.

pub mod cert_manager;
pub mod conditions;
pub mod issuer;
pub mod istio_cacerts;
pub mod name_constraints;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use issuer::{ClusterMeshCAIssuer, IssuerSpec, IssuerStatus, MeshCAIssuer};
pub use istio_cacerts::IstioCACerts;

/// Our API group.
pub const GROUP: &str = "meshca.io";
/// Our API version.
pub const VERSION: &str = "v1alpha1";

/// Reads a list that may be `null`: server-side apply on older API servers (1.20) writes
/// `null` when the last applied entry of a list is removed.
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    Ok(<Option<Vec<T>> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// A CRD as YAML, exactly as `crdgen` prints it and as `config/crd/` and the chart hold it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!("---\n{}", serde_yaml::to_string(crd)?))
}

/// Every CRD this project owns, in the order `crdgen` prints them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![MeshCAIssuer::crd(), ClusterMeshCAIssuer::crd(), IstioCACerts::crd()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kubernetes refuses `null` among enum values (and says so confusingly); Option<enum>
    /// fields must carry the enum's own schema.
    #[test]
    fn no_crd_schema_lists_null_as_an_enum_value() {
        fn walk(path: &str, v: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::Array(values)) = map.get("enum") {
                        assert!(!values.iter().any(|e| e.is_null()), "null enum value at {path}");
                    }
                    for (k, child) in map {
                        walk(&format!("{path}.{k}"), child);
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|i| walk(path, i)),
                _ => {}
            }
        }
        for crd in crds() {
            walk(
                crd.metadata.name.as_deref().unwrap_or("?"),
                &serde_json::to_value(&crd).unwrap(),
            );
        }
    }
}
