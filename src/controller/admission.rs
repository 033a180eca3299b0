//! Who may request from an issuer: the namespace scope of each issuer kind. Pure.
//!
//! An intermediate under the mesh root can mint any workload identity in the mesh, so a
//! request is signed only when it comes from a namespace its issuer serves:
//! - a `MeshCAIssuer` serves its own namespace, and nothing else (it cannot be widened: a
//!   namespaced object must not grant anything outside its namespace);
//! - a `ClusterMeshCAIssuer` serves `spec.policy.allowedNamespaces` (`"*"`: any), or, when
//!   that is empty, the controller's `--istio-namespaces` (default `istio-system`): the flow
//!   users run (a Certificate in istiod's namespace) keeps working, a Certificate anywhere else
//!   does not.

use crate::api::issuer::IssuancePolicy;

/// The value of `allowedNamespaces` that admits every namespace.
pub const ANY_NAMESPACE: &str = "*";

/// Checks the namespace fields of an issuer's policy; an error makes the issuer not Ready.
pub fn validate_scope(cluster_scoped: bool, policy: &IssuancePolicy) -> Result<(), String> {
    if !cluster_scoped && !policy.allowed_namespaces.is_empty() {
        return Err(
            "spec.policy.allowedNamespaces is only for a ClusterMeshCAIssuer: a MeshCAIssuer signs requests from its own namespace only; remove the field, or use a ClusterMeshCAIssuer to serve other namespaces"
                .into(),
        );
    }
    if policy.allowed_namespaces.iter().any(|n| n.trim().is_empty()) {
        return Err("spec.policy.allowedNamespaces holds an empty name; list namespace names, or \"*\" for any".into());
    }
    Ok(())
}

/// The namespaces an issuer serves, as in effect: its own for a MeshCAIssuer; the policy's
/// list, or else `istio_namespaces`, for a ClusterMeshCAIssuer. `["*"]` means any.
pub fn effective_namespaces(
    cluster_scoped: bool,
    issuer_namespace: &str,
    policy: &IssuancePolicy,
    istio_namespaces: &[String],
) -> Vec<String> {
    if !cluster_scoped {
        return vec![issuer_namespace.to_string()];
    }
    if policy.allowed_namespaces.iter().any(|n| n == ANY_NAMESPACE) {
        return vec![ANY_NAMESPACE.to_string()];
    }
    let configured = if policy.allowed_namespaces.is_empty() {
        istio_namespaces
    } else {
        &policy.allowed_namespaces
    };
    let mut namespaces: Vec<String> = Vec::new();
    for namespace in configured.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !namespaces.iter().any(|n| n == namespace) {
            namespaces.push(namespace.to_string());
        }
    }
    namespaces
}

/// Admits a request from `namespace`, or says why not and which field widens the scope.
pub fn admit(namespace: &str, cluster_scoped: bool, allowed: &[String], issuer_display: &str) -> Result<(), String> {
    if allowed.iter().any(|n| n == ANY_NAMESPACE || n == namespace) {
        return Ok(());
    }
    let widen = if cluster_scoped {
        "add it to the issuer's spec.policy.allowedNamespaces (or to the controller's --istio-namespaces when that list is empty)"
    } else {
        "a MeshCAIssuer signs only for its own namespace: use an issuer in that namespace"
    };
    Err(format!(
        "PolicyViolation: {issuer_display} does not sign requests from namespace {namespace:?} (allowed: {allowed:?}); {widen}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> IssuancePolicy {
        IssuancePolicy {
            allowed_namespaces: allowed.iter().map(|s| s.to_string()).collect(),
            ..IssuancePolicy::default()
        }
    }

    fn istio() -> Vec<String> {
        vec!["istio-system".to_string()]
    }

    #[test]
    fn each_kind_serves_the_namespaces_it_should() {
        let cases: Vec<(&str, bool, IssuancePolicy, Vec<&str>)> = vec![
            // A MeshCAIssuer: its own namespace, whatever the flag says.
            ("namespaced", false, policy(&[]), vec!["team-a"]),
            // A ClusterMeshCAIssuer with no list: the Istio namespaces.
            ("cluster default", true, policy(&[]), vec!["istio-system"]),
            // Its own list replaces the default.
            (
                "cluster list",
                true,
                policy(&["east", "west", "east"]),
                vec!["east", "west"],
            ),
            // "*" anywhere in the list: any namespace.
            ("cluster any", true, policy(&["east", "*"]), vec!["*"]),
        ];
        for (name, cluster, p, expected) in cases {
            assert_eq!(
                effective_namespaces(cluster, "team-a", &p, &istio()),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn requests_from_other_namespaces_are_refused_with_the_field_to_change() {
        let allowed = effective_namespaces(true, "", &policy(&[]), &istio());
        assert_eq!(
            admit("istio-system", true, &allowed, "ClusterMeshCAIssuer mesh"),
            Ok(())
        );
        let refused = admit("team-a", true, &allowed, "ClusterMeshCAIssuer mesh").unwrap_err();
        assert!(refused.starts_with("PolicyViolation: "), "{refused}");
        assert!(refused.contains("namespace \"team-a\""), "{refused}");
        assert!(refused.contains("spec.policy.allowedNamespaces"), "{refused}");
        assert_eq!(admit("anything", true, &["*".to_string()], "C"), Ok(()));
        let own = effective_namespaces(false, "team-a", &policy(&[]), &istio());
        assert_eq!(admit("team-a", false, &own, "MeshCAIssuer team-a/x"), Ok(()));
        assert!(admit("team-b", false, &own, "MeshCAIssuer team-a/x").is_err());
    }

    #[test]
    fn a_namespaced_issuer_cannot_widen_its_scope() {
        assert_eq!(validate_scope(false, &policy(&[])), Ok(()));
        let err = validate_scope(false, &policy(&["*"])).unwrap_err();
        assert!(err.contains("only for a ClusterMeshCAIssuer"), "{err}");
        assert_eq!(validate_scope(true, &policy(&["*"])), Ok(()));
        assert!(validate_scope(true, &policy(&[" "])).is_err());
    }
}
