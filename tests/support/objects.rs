//! Reading and copying the objects the controller reads and writes, written once for every
//! test: a Secret's data, an IstioCACerts' conditions and rotation phase, waiting until an
//! IstioCACerts gets somewhere, creating a Secret as an operator writes one, and copying a
//! Secret between namespaces or clusters.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use mesh_ca_issuer::api::istio_cacerts::{IstioCACerts, IstioCACertsSpec, RotationPhase};

use super::{TEST_MANAGER, eventually};

/// A Secret's data as bytes.
pub fn data(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// A condition of an IstioCACerts.
pub fn condition<'a>(icc: &'a IstioCACerts, type_: &str) -> Option<&'a Condition> {
    icc.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// The phase of an IstioCACerts' root rotation, if one is under way.
pub fn phase_of(icc: &IstioCACerts) -> Option<RotationPhase> {
    Some(icc.status.as_ref()?.root_rotation.as_ref()?.phase)
}

/// Whether Ready has `reason` (any reason when `None`) and status True (when `reason` is
/// `None`) for the IstioCACerts' current generation.
pub fn ready_at_generation(icc: &IstioCACerts, reason: Option<&str>) -> bool {
    condition(icc, "Ready").is_some_and(|c| {
        let current = c.observed_generation == icc.metadata.generation;
        match reason {
            Some(reason) => c.reason == reason && current,
            None => c.status == "True" && current,
        }
    })
}

/// Waits until `check` holds for IstioCACerts `name`; returns it. The panic names `cluster`
/// (empty: no cluster to name) and `what` it waited for.
pub async fn wait_icc(
    api: &Api<IstioCACerts>,
    name: &str,
    timeout: Duration,
    cluster: &str,
    what: &str,
    check: impl Fn(&IstioCACerts) -> bool,
) -> IstioCACerts {
    let check = &check;
    eventually(timeout, || {
        let api = api.clone();
        async move { api.get(name).await.ok().filter(check) }
    })
    .await
    .unwrap_or_else(|| {
        let cluster = if cluster.is_empty() {
            String::new()
        } else {
            format!("{cluster}: ")
        };
        panic!("{cluster}IstioCACerts never got to {what} within {timeout:?}")
    })
}

/// Creates the Secret `object` describes (`metadata.name`, `type`, `stringData`, ...) in the
/// namespace of `secrets`, as an operator writes one by hand; returns it as created.
pub async fn create_secret(secrets: &Api<Secret>, object: serde_json::Value) -> Secret {
    let secret: Secret = serde_json::from_value(object).expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "creating Secret {}: {e}",
                secret.metadata.name.as_deref().unwrap_or_default()
            )
        })
}

/// A `kubernetes.io/tls` Secret `name` holding `certificate` and its `key` (PEM): a CA an
/// operator supplies.
pub async fn create_tls_secret(secrets: &Api<Secret>, name: &str, certificate: &str, key: &str) -> Secret {
    create_secret(
        secrets,
        serde_json::json!({
            "metadata": {"name": name}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": certificate, "tls.key": key}
        }),
    )
    .await
}

/// Creates IstioCACerts `name` with `spec` in the namespace of `api`; returns it as created.
pub async fn create_icc(api: &Api<IstioCACerts>, name: &str, spec: IstioCACertsSpec) -> IstioCACerts {
    api.create(&PostParams::default(), &IstioCACerts::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("creating IstioCACerts {name}: {e}"))
}

/// Copies Secret `name` from `from` into namespace `namespace` of `to`, as a platform team
/// distributes one shared root; with its labels when `labels` (in an Istio namespace a Secret
/// serves as a CA only when labelled meshca.io/ca: "true", security.md, guard 11).
pub async fn copy_secret(from: &Api<Secret>, to: &Api<Secret>, namespace: &str, name: &str, labels: bool) {
    let secret = from
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading Secret {name} to copy: {e}"));
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace});
    if labels {
        metadata["labels"] = serde_json::json!(secret.metadata.labels);
    }
    let copy = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": metadata,
        "type": secret.type_,
        "data": secret.data,
    });
    to.patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&copy))
        .await
        .unwrap_or_else(|e| panic!("copying Secret {name}: {e}"));
}

/// The root certificate of issuer `issuer` (`tls.crt` of its root Secret `<issuer>-root`).
pub async fn root_of(secrets: &Api<Secret>, issuer: &str) -> mesh_ca_issuer::pki::Certificate {
    let secret = secrets
        .get(&format!("{issuer}-root"))
        .await
        .unwrap_or_else(|e| panic!("root Secret of {issuer}: {e}"));
    mesh_ca_issuer::pki::Certificate::parse_pem_bundle(&data(&secret)["tls.crt"], "root")
        .expect("root PEM")
        .remove(0)
}
