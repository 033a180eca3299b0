//! A healthy cluster as observe would read it, for the table tests of every check: each test
//! changes one thing and looks at one verdict.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};

use super::approval::ApproverKind;
use super::observe::{
    Approver, CertId, ControllerObserved, IssuerKey, IssuerObject, IssuerObserved, Observed, SecretCertificates,
    Settings,
};
use crate::api::cert_manager::{Certificate, CertificateSpec, IssuerReference};
use crate::api::issuer::{CertificateSummary, IssuerSpec, IssuerStatus, LocalCA};
use crate::api::istio_cacerts::{
    IstioCACerts, IstioCACertsSpec, IstioCACertsStatus, RenewalWindow, TrackedCertificate,
};

pub fn now() -> Timestamp {
    Timestamp::from_second(1_800_000_000).unwrap()
}

pub fn settings() -> Settings {
    Settings {
        namespace: "istio-system".into(),
        controller_namespace: None,
        cert_manager_namespace: "cert-manager".into(),
    }
}

pub fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: Some(1),
        last_transition_time: Time(now()),
    }
}

/// A certificate identity with a fingerprint made from its name.
pub fn cert_id(name: &str) -> CertId {
    CertId {
        subject: format!("CN={name}"),
        fingerprint: format!("{:0<64}", name.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

fn tracked(id: &CertId, days_left: i64) -> TrackedCertificate {
    TrackedCertificate {
        subject: id.subject.clone(),
        fingerprint_sha256: id.fingerprint.clone(),
        not_before: (now() - SignedDuration::from_hours(24)).to_string(),
        not_after: (now() + SignedDuration::from_hours(24 * days_left)).to_string(),
        renewal_time: (now() + SignedDuration::from_hours(24 * days_left / 3)).to_string(),
        window: RenewalWindow::Healthy,
        ..Default::default()
    }
}

pub fn root() -> CertId {
    cert_id("root")
}

pub fn intermediate() -> CertId {
    CertId {
        subject: "CN=istiod intermediate".into(),
        ..cert_id("intermediate")
    }
}

pub fn cluster_issuer_key() -> IssuerKey {
    IssuerKey {
        cluster_scoped: true,
        namespace: None,
        name: "mesh-root".into(),
    }
}

pub fn ready_issuer(observed_generation: Option<i64>, generation: Option<i64>) -> IssuerObject {
    IssuerObject {
        spec: IssuerSpec {
            local_ca: Some(LocalCA {
                secret_name: "mesh-root-ca".into(),
                bootstrap: None,
            }),
            ..Default::default()
        },
        status: Some(IssuerStatus {
            conditions: vec![Condition {
                observed_generation,
                ..condition("Ready", true, "Verified", "ok")
            }],
            backend: Some("localCA".into()),
            ca: Some(CertificateSummary {
                subject: root().subject,
                not_before: (now() - SignedDuration::from_hours(24)).to_string(),
                not_after: (now() + SignedDuration::from_hours(87600)).to_string(),
                fingerprint_sha256: root().fingerprint,
            }),
            ..Default::default()
        }),
        generation,
    }
}

pub fn istiod_certificate() -> Certificate {
    let mut c = Certificate::new(
        "istiod-intermediate",
        CertificateSpec {
            secret_name: "istiod-intermediate".into(),
            issuer_ref: IssuerReference {
                name: "mesh-root".into(),
                kind: Some("ClusterMeshCAIssuer".into()),
                group: Some("meshca.io".into()),
            },
            is_ca: Some(true),
            ..Default::default()
        },
    );
    c.metadata.namespace = Some("istio-system".into());
    c
}

pub fn istio_cacerts() -> IstioCACerts {
    let mut icc = IstioCACerts::new(
        "istiod",
        IstioCACertsSpec {
            source_secret_name: "istiod-intermediate".into(),
            ..Default::default()
        },
    );
    icc.metadata.namespace = Some("istio-system".into());
    icc.metadata.generation = Some(1);
    icc.status = Some(IstioCACertsStatus {
        conditions: vec![
            condition("Ready", true, "Synced", "cacerts is up to date"),
            condition("CertificatesHealthy", true, "Healthy", "ok"),
        ],
        intermediate: Some(tracked(&intermediate(), 90)),
        roots: vec![tracked(&root(), 3650)],
        ..Default::default()
    });
    icc
}

/// istiod's Deployment as Istio's chart renders the parts we read.
pub fn istiod() -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {"spec": {
                "containers": [{
                    "name": "discovery",
                    "image": "docker.io/istio/pilot",
                    "volumeMounts": [{"name": "cacerts", "mountPath": "/etc/cacerts", "readOnly": true}],
                }],
                "volumes": [{"name": "cacerts", "secret": {"secretName": "cacerts", "optional": true}}],
            }},
        },
    }))
    .unwrap()
}

pub fn istiod_mut(o: &mut Observed) -> &mut Deployment {
    &mut o.istiods.as_mut().unwrap()[0]
}

/// Sets an environment variable of istiod's container; `None`: from a ConfigMap (valueFrom).
pub fn set_istiod_env(o: &mut Observed, name: &str, value: Option<&str>) {
    let container = &mut istiod_mut(o).spec.template.spec.as_mut().unwrap().containers[0];
    let var = match value {
        Some(v) => serde_json::json!({"name": name, "value": v}),
        None => serde_json::json!({"name": name, "valueFrom": {"configMapKeyRef": {"name": "env", "key": name}}}),
    };
    container
        .env
        .get_or_insert_with(Vec::new)
        .push(serde_json::from_value(var).unwrap());
}

pub fn set_mesh(o: &mut Observed, mesh: &str) {
    o.mesh_configs.insert("istio".into(), Ok(Some(mesh_config_map(mesh))));
}

fn mesh_config_map(mesh: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "istio", "namespace": "istio-system"},
        "data": {"mesh": mesh},
    }))
    .unwrap()
}

/// The chart's controller Deployment with these flags; `available` as a controller-manager
/// would report it.
pub fn deployment_with_args(namespace: &str, args: &[&str], replicas: i32, available: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mesh-ca-issuer", "namespace": namespace, "labels": {"app.kubernetes.io/name": "mesh-ca-issuer"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "mesh-ca-issuer"}},
            "template": {"spec": {"containers": [{"name": "controller", "args": args}]}},
        },
        "status": {"availableReplicas": available},
    }))
    .unwrap()
}

fn established(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.status = Some(CustomResourceDefinitionStatus {
        conditions: Some(vec![CustomResourceDefinitionCondition {
            type_: "Established".into(),
            status: "True".into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    crd
}

/// Everything in order.
pub fn healthy() -> Observed {
    use crate::api::cert_manager::{Certificate, CertificateRequest};
    use kube::{CustomResourceExt, ResourceExt};
    let crds = crate::api::crds()
        .into_iter()
        // cert-manager's own CRDs by name (only their names and Established matter here).
        .chain([CertificateRequest::crd(), Certificate::crd()])
        .map(|c| (c.name_any(), Ok(Some(established(c)))))
        .chain([(super::approval::POLICY_CRD.to_string(), Ok(None))])
        .collect();
    let names = super::approval::signer_names("istio-system", &[cluster_issuer_key()]);
    Observed {
        context: "east".into(),
        settings_namespace: "istio-system".into(),
        cluster_id: Ok("uid-east".into()),
        crds,
        controller: ControllerObserved {
            deployments: Ok(vec![]),
            lease_namespace: "cert-manager".into(),
            lease_name: "mesh-ca-issuer".into(),
            lease: Ok(Some(Lease {
                spec: Some(LeaseSpec {
                    holder_identity: Some("mesh-ca-issuer-abc".into()),
                    lease_duration_seconds: Some(15),
                    renew_time: Some(MicroTime(now() - SignedDuration::from_secs(2))),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        },
        approvers: vec![Approver {
            service_account: "cert-manager/cert-manager".into(),
            kind: ApproverKind::CertManager,
            may_approve: names
                .into_iter()
                .map(|n| {
                    let allowed = n == "clustermeshcaissuers.meshca.io/mesh-root";
                    (n, Ok(allowed))
                })
                .collect(),
        }],
        policies: Ok(None),
        certificates: Ok(vec![istiod_certificate()]),
        issuers: vec![IssuerObserved {
            key: cluster_issuer_key(),
            issuer: Ok(Some(ready_issuer(Some(1), Some(1)))),
        }],
        istio_cacerts: Ok(vec![istio_cacerts()]),
        secrets: [
            (
                "istiod-intermediate".to_string(),
                Ok(Some(SecretCertificates {
                    leaf: Some(intermediate()),
                    signing_root: Some(root()),
                    roots: vec![root()],
                })),
            ),
            (
                "cacerts".to_string(),
                Ok(Some(SecretCertificates {
                    leaf: Some(intermediate()),
                    signing_root: Some(root()),
                    roots: vec![root()],
                })),
            ),
        ]
        .into(),
        istiods: Ok(vec![istiod()]),
        mesh_configs: [(
            "istio".to_string(),
            Ok(Some(mesh_config_map("trustDomain: cluster.local\n"))),
        )]
        .into(),
        root_cert_config_map: Ok(Some(Ok(vec![root()]))),
        ztunnels: Ok(vec![]),
        peer_config_maps: Ok(vec![]),
    }
}

#[test]
fn the_healthy_cluster_passes_every_check() {
    let findings = super::check_cluster(&super::observe::ClusterRead::Read(Box::new(healthy())), now());
    assert_eq!(findings.len(), 27, "every per-cluster check ran: {findings:?}");
    for f in findings {
        assert_eq!(f.status, super::Status::Pass, "{f:?}");
    }
}
