//! Approval: can anyone approve the CertificateRequests for the mesh's issuers, and does
//! cert-manager's own approver approve all of them everywhere? Pure.
//!
//! cert-manager's webhook lets an identity set `Approved` only when a SubjectAccessReview for
//! verb `approve` on `signers` (group cert-manager.io) allows it for
//! `<kind plural>.<group>/*` or `<kind plural>.<group>/[<request namespace>.]<issuer name>`;
//! observe asks exactly those reviews. cert-manager's built-in approver approves every request
//! it is allowed to, so the wildcard means "every request for that kind, in every namespace".

use super::observe::{Approver, IssuerKey, Observed};
use super::{CheckId, Finding};

/// approver-policy's CRD.
pub const POLICY_CRD: &str = "certificaterequestpolicies.policy.cert-manager.io";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApproverKind {
    /// cert-manager's built-in approver: approves everything it may.
    CertManager,
    /// approver-policy: approves what a CertificateRequestPolicy allows.
    ApproverPolicy,
}

/// The identities that approve: cert-manager's ServiceAccount, and approver-policy's when it is
/// installed (both as their Helm charts name them).
pub fn approvers(cert_manager_namespace: &str, policy_installed: bool) -> Vec<(String, ApproverKind)> {
    let mut out = vec![(
        format!("{cert_manager_namespace}/cert-manager"),
        ApproverKind::CertManager,
    )];
    if policy_installed {
        out.push((
            format!("{cert_manager_namespace}/cert-manager-approver-policy"),
            ApproverKind::ApproverPolicy,
        ));
    }
    out
}

const NAMESPACED_WILDCARD: &str = "meshcaissuers.meshca.io/*";
const CLUSTER_WILDCARD: &str = "clustermeshcaissuers.meshca.io/*";

fn wildcard(key: &IssuerKey) -> &'static str {
    if key.cluster_scoped {
        CLUSTER_WILDCARD
    } else {
        NAMESPACED_WILDCARD
    }
}

/// cert-manager's signer name for requests in `namespace` to the issuer `key`.
pub fn signer_name(key: &IssuerKey, namespace: &str) -> String {
    if key.cluster_scoped {
        format!("clustermeshcaissuers.meshca.io/{}", key.name)
    } else {
        format!("meshcaissuers.meshca.io/{namespace}.{}", key.name)
    }
}

/// Every signer name observe asks about: both wildcards, and each issuer by name.
pub fn signer_names(namespace: &str, keys: &[IssuerKey]) -> Vec<String> {
    let mut names = vec![NAMESPACED_WILDCARD.to_string(), CLUSTER_WILDCARD.to_string()];
    for key in keys {
        let name = signer_name(key, namespace);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

pub fn check(o: &Observed) -> Vec<Finding> {
    vec![permission(o), scope(o)]
}

/// The answer for one signer name: Some(true/false), or None when it could not be asked.
fn answer<'a>(approver: &'a Approver, name: &str) -> Result<bool, &'a str> {
    match approver.may_approve.get(name) {
        Some(Ok(allowed)) => Ok(*allowed),
        Some(Err(e)) => Err(e.as_str()),
        None => Ok(false),
    }
}

fn may_approve<'a>(approver: &'a Approver, key: &IssuerKey, namespace: &str) -> Result<bool, &'a str> {
    Ok(answer(approver, wildcard(key))? || answer(approver, &signer_name(key, namespace))?)
}

/// `*` matches any run of characters, as approver-policy's selectors do.
fn glob(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((head, tail)) => {
            let Some(rest) = value.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// The names of Ready CertificateRequestPolicies that select requests in `namespace` for `key`.
fn selecting_policies(policies: &[serde_json::Value], key: &IssuerKey, namespace: &str) -> Vec<String> {
    let field = |p: &serde_json::Value, path: &[&str]| -> Option<String> {
        path.iter()
            .try_fold(p, |v, k| v.get(k))
            .and_then(|v| v.as_str())
            .map(String::from)
    };
    policies
        .iter()
        .filter(|p| {
            let matches = |path: &[&str], value: &str| field(p, path).is_none_or(|pattern| glob(&pattern, value));
            let issuer = ["spec", "selector", "issuerRef"];
            let namespaces: Vec<String> = p
                .pointer("/spec/selector/namespace/matchNames")
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
                .unwrap_or_default();
            let ready = p
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.get("type").and_then(|t| t.as_str()) == Some("Ready")
                            && c.get("status").and_then(|s| s.as_str()) == Some("True")
                    })
                });
            p.pointer("/spec/selector/issuerRef").is_some()
                && matches(&[issuer[0], issuer[1], issuer[2], "group"], crate::api::GROUP)
                && matches(&[issuer[0], issuer[1], issuer[2], "kind"], key.kind())
                && matches(&[issuer[0], issuer[1], issuer[2], "name"], &key.name)
                && (namespaces.is_empty() || namespaces.iter().any(|n| glob(n, namespace)))
                && ready
        })
        .filter_map(|p| field(p, &["metadata", "name"]))
        .collect()
}

/// The issuers whose requests must be approved: those the mesh's Certificates name.
fn targets(o: &Observed) -> Vec<IssuerKey> {
    let mut keys: Vec<IssuerKey> = o
        .certificates
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| super::observe::issuer_key_of(&o.settings_namespace, c))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn permission(o: &Observed) -> Finding {
    let id = CheckId::ApprovalPermission;
    let ns = o.settings_namespace.as_str();
    let keys = targets(o);
    let cert_manager = o.approvers.iter().find(|a| a.kind == ApproverKind::CertManager);
    let policy_approver = o.approvers.iter().find(|a| a.kind == ApproverKind::ApproverPolicy);
    let grant = format!(
        "helm upgrade <release> mesh-ca-issuer --reuse-values --set certManager.approver.enabled=true, or approve with approver-policy: {}#approval-permission",
        super::DOCS
    );
    if keys.is_empty() {
        // Nothing names an issuer of ours yet: can anyone approve requests for our kinds at all?
        let any = o
            .approvers
            .iter()
            .any(|a| answer(a, NAMESPACED_WILDCARD) == Ok(true) || answer(a, CLUSTER_WILDCARD) == Ok(true));
        return if any {
            Finding::pass(id)
        } else {
            Finding::fail(
                id,
                "no approver may approve requests for any MeshCAIssuer or ClusterMeshCAIssuer",
                grant,
            )
        };
    }
    let mut problems = Vec::new();
    for key in &keys {
        let by_cert_manager = cert_manager.map(|a| may_approve(a, key, ns));
        if by_cert_manager == Some(Ok(true)) {
            continue;
        }
        if let Some(Err(e)) = by_cert_manager {
            return Finding::fail(
                id,
                e.to_string(),
                "meshca check needs create on subjectaccessreviews.authorization.k8s.io",
            );
        }
        let by_policy = policy_approver.map(|a| (a, may_approve(a, key, ns)));
        match (by_policy, &o.policies) {
            (Some((_, Ok(true))), Ok(Some(policies))) => {
                if selecting_policies(policies, key, ns).is_empty() {
                    problems.push(format!(
                        "approver-policy may approve requests for {}, but no Ready CertificateRequestPolicy selects it: they stay unapproved",
                        key.display()
                    ));
                }
            }
            (Some((_, Err(e))), _) => problems.push(e.to_string()),
            (_, Err(e)) => problems.push(e.clone()),
            (Some((a, Ok(_))), _) => problems.push(format!(
                "neither cert-manager's approver nor approver-policy ({}) may approve requests for {}: istiod's intermediate waits for approval forever",
                a.service_account,
                key.display()
            )),
            (None, _) => problems.push(format!(
                "cert-manager's approver ({}) may not approve requests for {} (approve on signers {} or {}): istiod's intermediate waits for approval forever",
                cert_manager.map_or("-", |a| a.service_account.as_str()),
                key.display(),
                wildcard(key),
                signer_name(key, ns)
            )),
        }
    }
    if problems.is_empty() {
        Finding::pass(id)
    } else {
        Finding::fail(id, problems.join("; "), grant)
    }
}

fn scope(o: &Observed) -> Finding {
    let id = CheckId::ApprovalScope;
    let Some(cert_manager) = o.approvers.iter().find(|a| a.kind == ApproverKind::CertManager) else {
        return Finding::pass(id);
    };
    let everything: Vec<&str> = [NAMESPACED_WILDCARD, CLUSTER_WILDCARD]
        .into_iter()
        .filter(|w| answer(cert_manager, w) == Ok(true))
        .collect();
    if everything.is_empty() {
        return Finding::pass(id);
    }
    let examples: Vec<String> = targets(o)
        .iter()
        .map(|k| signer_name(k, &o.settings_namespace))
        .collect();
    Finding::warn(
        id,
        format!(
            "cert-manager's approver ({}) may approve {}: it approves every request for those issuers from every namespace",
            cert_manager.service_account,
            everything.join(" and ")
        ),
        format!(
            "name the issuers it may approve (helm upgrade <release> mesh-ca-issuer --reuse-values --set certManager.approver.issuerNames='{{{}}}'), or use approver-policy: {}#approval-scope",
            if examples.is_empty() {
                "clustermeshcaissuers.meshca.io/<name>".to_string()
            } else {
                examples.join(",")
            },
            super::DOCS
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::check::Status;
    use crate::cli::check::testdata;

    fn with_access(cert_manager: &[&str], policy: Option<&[&str]>) -> Observed {
        let mut o = testdata::healthy();
        let names = signer_names(&o.settings_namespace, &[testdata::cluster_issuer_key()]);
        let approver = |kind, sa: &str, allowed: &[&str]| Approver {
            service_account: sa.into(),
            kind,
            may_approve: names
                .iter()
                .map(|n| (n.clone(), Ok(allowed.contains(&n.as_str()))))
                .collect(),
        };
        o.approvers = vec![approver(
            ApproverKind::CertManager,
            "cert-manager/cert-manager",
            cert_manager,
        )];
        if let Some(allowed) = policy {
            o.approvers.push(approver(
                ApproverKind::ApproverPolicy,
                "cert-manager/cert-manager-approver-policy",
                allowed,
            ));
        }
        o
    }

    fn policy(kind: &str, name: &str, ready: bool) -> serde_json::Value {
        serde_json::json!({
            "metadata": {"name": "istiod-intermediate"},
            "spec": {"selector": {
                "issuerRef": {"group": "meshca.io", "kind": kind, "name": name},
                "namespace": {"matchNames": ["istio-*"]},
            }},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        })
    }

    #[test]
    fn permission_needs_an_approver_for_every_issuer_the_mesh_uses() {
        const NAMED: &str = "clustermeshcaissuers.meshca.io/mesh-root";
        // (case, cert-manager's grants, approver-policy's grants, policies, status, problem contains)
        type Case<'a> = (
            &'a str,
            &'a [&'a str],
            Option<&'a [&'a str]>,
            Vec<serde_json::Value>,
            Status,
            &'a str,
        );
        let cases: Vec<Case> = vec![
            ("wildcard", &[CLUSTER_WILDCARD], None, vec![], Status::Pass, ""),
            ("by name", &[NAMED], None, vec![], Status::Pass, ""),
            (
                "only the namespaced wildcard",
                &[NAMESPACED_WILDCARD],
                None,
                vec![],
                Status::Fail,
                "may not approve requests for ClusterMeshCAIssuer mesh-root",
            ),
            ("nothing", &[], None, vec![], Status::Fail, "waits for approval forever"),
            (
                "approver-policy with a policy",
                &[],
                Some(&[CLUSTER_WILDCARD]),
                vec![policy("ClusterMeshCAIssuer", "mesh-*", true)],
                Status::Pass,
                "",
            ),
            (
                "approver-policy, policy for another issuer",
                &[],
                Some(&[CLUSTER_WILDCARD]),
                vec![policy("ClusterMeshCAIssuer", "other", true)],
                Status::Fail,
                "no Ready CertificateRequestPolicy selects it",
            ),
            (
                "approver-policy, policy not Ready",
                &[],
                Some(&[CLUSTER_WILDCARD]),
                vec![policy("ClusterMeshCAIssuer", "mesh-root", false)],
                Status::Fail,
                "no Ready CertificateRequestPolicy",
            ),
            (
                "approver-policy without the permission",
                &[],
                Some(&[]),
                vec![policy("ClusterMeshCAIssuer", "mesh-root", true)],
                Status::Fail,
                "neither cert-manager's approver nor approver-policy",
            ),
        ];
        for (case, cm, ap, policies, status, text) in cases {
            let mut o = with_access(cm, ap);
            o.policies = Ok(ap.map(|_| policies));
            let got = permission(&o);
            assert_eq!(got.status, status, "{case}: {got:?}");
            assert!(got.problem.as_deref().unwrap_or("").contains(text), "{case}: {got:?}");
        }
        // A review that could not be asked is said as it is.
        let mut o = with_access(&[], None);
        o.approvers[0]
            .may_approve
            .insert(CLUSTER_WILDCARD.into(), Err("forbidden (403)".into()));
        let got = permission(&o);
        assert_eq!(got.status, Status::Fail);
        assert!(got.problem.unwrap().contains("forbidden"), "review refused");
    }

    #[test]
    fn scope_warns_when_cert_managers_approver_may_approve_every_request() {
        let named = "clustermeshcaissuers.meshca.io/mesh-root";
        // (case, cert-manager's grants, status)
        let cases: [(&str, &[&str], Status); 4] = [
            ("by name only", &[named], Status::Pass),
            ("nothing", &[], Status::Pass),
            ("cluster wildcard", &[CLUSTER_WILDCARD], Status::Warn),
            ("both wildcards", &[CLUSTER_WILDCARD, NAMESPACED_WILDCARD], Status::Warn),
        ];
        for (case, cm, status) in cases {
            let got = scope(&with_access(cm, None));
            assert_eq!(got.status, status, "{case}: {got:?}");
            if status == Status::Warn {
                assert!(got.fix.unwrap().contains(named), "{case}: the fix names the issuer");
            }
        }
    }

    #[test]
    fn signer_names_follow_cert_managers_webhook() {
        let keys = [
            testdata::cluster_issuer_key(),
            IssuerKey {
                cluster_scoped: false,
                namespace: Some("istio-system".into()),
                name: "mesh".into(),
            },
        ];
        assert_eq!(
            signer_names("istio-system", &keys),
            vec![
                NAMESPACED_WILDCARD,
                CLUSTER_WILDCARD,
                "clustermeshcaissuers.meshca.io/mesh-root",
                "meshcaissuers.meshca.io/istio-system.mesh"
            ]
        );
        assert!(glob("istio-*", "istio-system") && glob("*", "") && !glob("istio-*", "default"));
    }
}
