//! IstioCACerts on the real API server: `cacerts` written verified and byte-stable, never
//! written when it would break a running mesh, renewal windows tracked with status, events,
//! metrics and a requeue at the exact boundary.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use mesh_ca_issuer::api::issuer::{MeshCAIssuer, RootBootstrap};
use mesh_ca_issuer::api::istio_cacerts::{AdoptExisting, IstioCACerts, IstioCACertsSpec, RenewalWindow};
use mesh_ca_issuer::pki::{Certificate, SigningKey};
use support::cert_manager as cm;
use support::issuer::{a_year_at_most, bootstrapped};
use support::mesh::{Mesh, SOURCE};
use support::objects::{condition, create_secret, data};
use support::{RunningController, ScopeLock, eventually, goverify, openssl, wait_for_event};

const TIMEOUT: Duration = Duration::from_secs(30);

/// One mesh with its own controller (watching only its namespace).
struct Env {
    mesh: Mesh,
    controller: RunningController,
    _lock: ScopeLock,
}

impl std::ops::Deref for Env {
    type Target = Mesh;
    fn deref(&self) -> &Mesh {
        &self.mesh
    }
}

async fn env_with(prefix: &str, flags: &[&str], root_duration: &str) -> Env {
    let (lock, client, ns) = support::namespaced_test(prefix).await;
    env_in(lock, client, ns, flags, root_duration).await
}

async fn env_in(
    lock: ScopeLock,
    client: kube::Client,
    ns: support::TestNamespace,
    flags: &[&str],
    root_duration: &str,
) -> Env {
    let mut args = vec!["--namespace", ns.name.as_str()];
    args.extend_from_slice(flags);
    let controller = RunningController::start(&args).await;
    let env = Env {
        mesh: Mesh::new(client, ns, "mesh"),
        controller,
        _lock: lock,
    };
    env.local_issuer("mesh", "mesh-root", root_duration, a_year_at_most())
        .await;
    env
}

async fn env(prefix: &str) -> Env {
    env_with(prefix, &[], "87600h").await
}

/// cert-manager (stand-in) issues a new revision of the intermediate into the source Secret.
async fn issue(
    env: &Env,
    issuer: &str,
    duration: Option<&str>,
) -> mesh_ca_issuer::api::cert_manager::CertificateRequest {
    env.issue_for(issuer, duration).await
}

/// An environment whose `cacerts` has been written once from a first intermediate.
async fn synced_env(prefix: &str) -> Env {
    let env = env(prefix).await;
    issue(&env, "mesh", None).await;
    create_icc(&env, AdoptExisting::Never).await;
    wait_condition(&env, "Ready", "Synced").await;
    env
}

async fn create_icc(env: &Env, adopt: AdoptExisting) {
    env.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        target_secret_name: "cacerts".into(),
        adopt_existing: adopt,
        ..Default::default()
    })
    .await;
}

/// Waits until the IstioCACerts' condition `type_` has `reason`; returns the object.
async fn wait_condition(env: &Env, type_: &str, reason: &str) -> IstioCACerts {
    env.wait_condition(type_, reason).await
}

/// The target Secret. Whenever it is one we wrote, Go's crypto/x509 (istiod's own check) must
/// load it: no test may see us write a bundle istiod would refuse.
async fn cacerts(env: &Env) -> Option<Secret> {
    let secret = env.ns.api::<Secret>().get_opt("cacerts").await.unwrap()?;
    if secret.labels().get("app.kubernetes.io/managed-by").map(String::as_str) == Some("mesh-ca-issuer") {
        let bundle = data(&secret);
        // Judged now, or just before the intermediate expired for tests that move through its
        // renewal windows into expiry.
        let not_after = Certificate::parse_pem_bundle(&bundle["ca-cert.pem"], "ca-cert.pem")
            .unwrap()
            .remove(0)
            .not_after();
        let at = Timestamp::now()
            .min(not_after - SignedDuration::from_secs(1))
            .round(jiff::Unit::Second)
            .unwrap();
        assert_eq!(
            goverify::istiod_loads_at(&bundle, Some(&at.to_string())),
            Ok(()),
            "istiod (Go's x509.Verify) loads the cacerts we wrote"
        );
    }
    Some(secret)
}

fn condition_message(icc: &IstioCACerts, type_: &str) -> String {
    condition(icc, type_).unwrap().message.clone()
}

/// Parses `name{labels} value` lines of the Prometheus text format.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric_name, rest) = series.split_once('{')?;
        if metric_name != name {
            return None;
        }
        let label_text = rest.strip_suffix('}')?;
        let parsed: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        labels
            .iter()
            .all(|l| parsed.contains(l))
            .then(|| value.parse().ok())
            .flatten()
    })
}

#[tokio::test]
async fn cacerts_is_written_verified_and_tracked_with_metrics() {
    let env = env("icc-write").await;
    let cr = issue(&env, "mesh", None).await;
    // cert-manager records the renewal time on the Certificate.
    // renewBefore 500h: far from the default third of the lifetime, so the status can only
    // show this renewal time if it was read from the Certificate.
    let renewal = cm::record_certificate(
        &env.client,
        &env.ns.name,
        SOURCE,
        SOURCE,
        &cr,
        Some(Duration::from_secs(500 * 3600)),
    )
    .await;
    create_icc(&env, AdoptExisting::Never).await;
    let icc = wait_condition(&env, "Ready", "Synced").await;

    let secret = cacerts(&env).await.expect("cacerts written");
    let d = data(&secret);
    assert_eq!(
        d.keys().collect::<Vec<_>>(),
        vec!["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    );
    assert_eq!(
        secret.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("mesh-ca-issuer")
    );
    assert_eq!(
        secret.annotations().get("meshca.io/istiocacerts").map(String::as_str),
        Some("mesh")
    );
    assert!(
        secret.metadata.owner_references.is_none(),
        "no ownerReference: deleting the IstioCACerts must not delete cacerts"
    );
    let source: Secret = env.ns.api().get(SOURCE).await.unwrap();
    let source_data = data(&source);
    assert_eq!(d["ca-key.pem"], source_data["tls.key"]);
    let intermediate = &Certificate::parse_pem_bundle(&d["ca-cert.pem"], "ca-cert").unwrap()[0];
    let root = &Certificate::parse_pem_bundle(&d["root-cert.pem"], "root").unwrap()[0];
    let chain = Certificate::parse_pem_bundle(&d["cert-chain.pem"], "chain").unwrap();
    assert_eq!(chain, vec![intermediate.clone(), root.clone()]);

    // openssl's verdict on what istiod will load.
    assert_eq!(openssl::verify(&d["root-cert.pem"], &d["ca-cert.pem"]), "chain.pem: OK");
    assert_eq!(
        openssl::verify(&d["root-cert.pem"], &d["cert-chain.pem"]),
        "chain.pem: OK"
    );

    // Status: the intermediate with the Certificate's renewal time, the root, the backend CA.
    let status = icc.status.clone().unwrap();
    let tracked = status.intermediate.clone().unwrap();
    assert_eq!(tracked.fingerprint_sha256, intermediate.fingerprint());
    assert_eq!(tracked.renewal_time, renewal.to_string());
    assert_eq!(tracked.window, RenewalWindow::Healthy);
    assert_eq!(status.roots.len(), 1);
    assert_eq!(status.roots[0].fingerprint_sha256, root.fingerprint());
    let backend = status.backend_ca.clone().expect("the issuer's CA is tracked");
    assert_eq!(
        backend.fingerprint_sha256,
        root.fingerprint(),
        "the local CA is the root here"
    );
    let healthy = wait_condition(&env, "CertificatesHealthy", "AllHealthy").await;
    assert!(condition_message(&healthy, "CertificatesHealthy").contains("healthy window"));
    let note = wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "Written").await;
    assert!(note.contains(&intermediate.fingerprint()), "{note}");

    // Metrics, parsed from /metrics.
    let text = env.controller.metrics().await;
    let labels = [
        ("kind", "intermediate"),
        ("namespace", env.ns.name.as_str()),
        ("name", "mesh"),
    ];
    let fp = intermediate.fingerprint();
    let mut with_fp = labels.to_vec();
    with_fp.push(("fingerprint", fp.as_str()));
    assert_eq!(
        metric(&text, "meshca_certificate_not_after_seconds", &with_fp),
        Some(intermediate.not_after().as_second() as f64),
        "{text}"
    );
    assert_eq!(
        metric(&text, "meshca_certificate_renewal_seconds", &with_fp),
        Some(renewal.as_second() as f64)
    );
    let root_fp = root.fingerprint();
    let root_labels = [
        ("kind", "root"),
        ("namespace", env.ns.name.as_str()),
        ("name", "mesh"),
        ("fingerprint", root_fp.as_str()),
    ];
    assert_eq!(
        metric(&text, "meshca_certificate_not_after_seconds", &root_labels),
        Some(root.not_after().as_second() as f64)
    );
    let backend_labels = [
        ("kind", "backend_ca"),
        ("namespace", env.ns.name.as_str()),
        ("name", "mesh"),
    ];
    assert!(metric(&text, "meshca_certificate_not_after_seconds", &backend_labels).is_some());
}

#[tokio::test]
async fn renewals_keep_root_cert_pem_byte_identical_and_unchanged_content_is_not_rewritten() {
    let env = synced_env("icc-renew").await;
    let first = data(&cacerts(&env).await.unwrap());
    let mut intermediates = vec![first["ca-cert.pem"].clone()];
    for _ in 0..3 {
        issue(&env, "mesh", None).await;
        let renewed = eventually(TIMEOUT, || async {
            let d = data(&cacerts(&env).await?);
            (!intermediates.contains(&d["ca-cert.pem"])).then_some(d)
        })
        .await
        .expect("cacerts follows the renewal");
        assert_eq!(
            renewed["root-cert.pem"], first["root-cert.pem"],
            "root-cert.pem byte for byte"
        );
        intermediates.push(renewed["ca-cert.pem"].clone());
    }
    assert_eq!(intermediates.len(), 4);

    // Nothing changed: a reconcile forced by a spec change that leaves cacerts as it is
    // (revocation stated off) writes nothing. Its Ready condition at the new generation is the
    // signal that the decision was made; only then is the Secret compared.
    let before = cacerts(&env).await.unwrap().resource_version();
    let touch = serde_json::json!({"spec": {"revocation": {"enabled": false}}});
    let touched = env
        .ns
        .api::<IstioCACerts>()
        .patch("mesh", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    support::objects::wait_icc(
        &env.ns.api(),
        "mesh",
        TIMEOUT,
        "",
        "Ready at the touched generation",
        |icc| {
            icc.metadata.generation == touched.metadata.generation
                && support::objects::ready_at_generation(icc, Some("Synced"))
        },
    )
    .await;
    assert_eq!(cacerts(&env).await.unwrap().resource_version(), before);
}

#[tokio::test]
async fn a_foreign_cacerts_is_untouched_unless_adoption_is_asked_for() {
    let env = env("icc-foreign").await;
    issue(&env, "mesh", None).await;
    let hand_made = serde_json::json!({
        "metadata": {"name": "cacerts"}, "stringData": {"ca-cert.pem": "hand made", "note": "by an operator"}
    });
    create_secret(&env.ns.api(), hand_made).await;
    let before = cacerts(&env).await.unwrap();
    create_icc(&env, AdoptExisting::Never).await;
    let icc = wait_condition(&env, "Ready", "NotOwned").await;
    assert!(condition_message(&icc, "Ready").contains("adoptExisting"));
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "NotOwned").await;
    // No sleep: the refusal is decided before any write, and act writes cacerts first and the
    // status and event last, so the reconcile that raised this event wrote nothing.
    let after = cacerts(&env).await.unwrap();
    assert_eq!(
        (after.resource_version(), data(&after)),
        (before.resource_version(), data(&before)),
        "untouched"
    );

    // Asked to adopt (`true`, as before `Replace` existed): written, marked ours, and the
    // operator's key istiod does not read is kept as it was.
    let adopt = serde_json::json!({"spec": {"adoptExisting": true}});
    env.ns
        .api::<IstioCACerts>()
        .patch("mesh", &PatchParams::default(), &Patch::Merge(&adopt))
        .await
        .unwrap();
    wait_condition(&env, "Ready", "Synced").await;
    let adopted = cacerts(&env).await.unwrap();
    assert_eq!(
        adopted.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("mesh-ca-issuer")
    );
    assert_eq!(
        data(&adopted).keys().collect::<Vec<_>>(),
        vec!["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "note", "root-cert.pem"]
    );
    assert_eq!(data(&adopted)["note"], b"by an operator");
    let note = wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "Written").await;
    assert!(note.starts_with("Adopted") && note.contains("kept keys"), "{note}");

    // Replace asked for: the operator's key goes too.
    let replace = serde_json::json!({"spec": {"adoptExisting": "Replace"}});
    env.ns
        .api::<IstioCACerts>()
        .patch("mesh", &PatchParams::default(), &Patch::Merge(&replace))
        .await
        .unwrap();
    let replaced = eventually(TIMEOUT, || async {
        let secret = cacerts(&env).await?;
        (!data(&secret).contains_key("note")).then_some(secret)
    })
    .await
    .expect("the foreign key removed with Replace");
    assert_eq!(
        data(&replaced).keys().collect::<Vec<_>>(),
        vec!["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    );
}

/// A `kubernetes.io/tls` Secret that carries keys istiod does not read is someone else's too:
/// adopting it would delete it (its type cannot change), which `adoptExisting: true` never
/// does. It stays byte for byte (`AdoptionNeedsReplace`) until `Replace` is asked for.
#[tokio::test]
async fn adopting_never_deletes_a_typed_secret_with_foreign_keys_unless_replace_is_asked_for() {
    let env = env("icc-adopt-foreign").await;
    issue(&env, "mesh", None).await;
    let before = hand_made_cacerts(&env, "backup.pem", Some("someone else's")).await;
    let secrets = env.ns.api::<Secret>();
    create_icc(&env, AdoptExisting::KeepForeignKeys).await;
    let icc = wait_condition(&env, "Ready", "AdoptionNeedsReplace").await;
    let message = condition_message(&icc, "Ready");
    assert!(
        message.contains("backup.pem") && message.contains("Replace"),
        "{message}"
    );
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "AdoptionNeedsReplace").await;
    assert_unchanged_after_refusal(&secrets, "cacerts", &before, "not deleted, not changed").await;

    env.patch_icc(serde_json::json!({"spec": {"adoptExisting": "Replace"}}))
        .await;
    wait_condition(&env, "Ready", "Synced").await;
    let adopted = cacerts(&env).await.unwrap();
    assert_eq!(adopted.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        data(&adopted).keys().collect::<Vec<_>>(),
        vec!["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    );
}

/// A `kubernetes.io/tls` Secret `cacerts` holding a hand-made CA, whose root (`ca.crt`) is
/// `root_pem`.
async fn tls_cacerts(env: &Env, root_pem: Option<&str>) -> Secret {
    hand_made_cacerts(env, "ca.crt", root_pem).await
}

/// A `kubernetes.io/tls` Secret `cacerts` holding a hand-made CA and one more entry, `extra`,
/// whose value is `value` (the CA's own certificate when `None`): what an operator left there
/// before the controller came.
async fn hand_made_cacerts(env: &Env, extra: &str, value: Option<&str>) -> Secret {
    let dir = openssl::Workdir::new();
    dir.req_with_new_p256_key(
        "old.key",
        "old.pem",
        Some(30),
        "/CN=old hand-made CA",
        &["basicConstraints=critical,CA:TRUE"],
    );
    let value = value.map_or_else(|| dir.read("old.pem"), str::to_string);
    let tls = serde_json::json!({
        "metadata": {"name": "cacerts"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": dir.read("old.pem"), "tls.key": dir.read("old.key"), extra: value}
    });
    create_secret(&env.ns.api(), tls).await
}

/// The root the source Secret carries (`ca.crt`), the mesh's root.
async fn source_root(env: &Env) -> String {
    let source: Secret = env.ns.api().get(SOURCE).await.unwrap();
    String::from_utf8(data(&source)["ca.crt"].clone()).unwrap()
}

/// A `kubernetes.io/tls` Secret must keep `tls.crt`/`tls.key` and cannot change type, so a plain
/// replace of its data is refused by the API server (forever). Adopting one replaces the Secret:
/// the result is an Opaque `cacerts` with exactly istiod's four keys, which istiod loads. istiod
/// trusts such a bundle's `ca.crt`: under another root, adoption is a root change and refused;
/// under the same root, the old Secret is copied to `cacerts-meshca-backup` first.
#[tokio::test]
async fn adopting_a_tls_typed_cacerts_replaces_it_with_an_opaque_one() {
    let env = env("icc-adopt-tls").await;
    issue(&env, "mesh", None).await;
    let secrets = env.ns.api::<Secret>();
    let other_root = tls_cacerts(&env, None).await;
    create_icc(&env, AdoptExisting::KeepForeignKeys).await;
    let icc = wait_condition(&env, "Ready", "RootChanged").await;
    assert!(
        condition_message(&icc, "Ready").contains("target's ca.crt"),
        "{}",
        condition_message(&icc, "Ready")
    );
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "RootChanged").await;
    // No sleep: the refusal is decided before any write (see above).
    let after = secrets.get("cacerts").await.unwrap();
    assert_eq!(
        after.resource_version(),
        other_root.resource_version(),
        "not deleted, not changed"
    );
    assert!(secrets.get_opt("cacerts-meshca-backup").await.unwrap().is_none());

    // The same bundle under the mesh's root: adopted, after a copy.
    secrets.delete("cacerts", &DeleteParams::default()).await.unwrap();
    let original = tls_cacerts(&env, Some(&source_root(&env).await)).await;
    wait_condition(&env, "Ready", "Synced").await;
    let adopted = cacerts(&env).await.expect("cacerts exists");
    assert_eq!(adopted.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        data(&adopted).keys().collect::<Vec<_>>(),
        vec!["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
    );
    let note = wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "Written").await;
    assert!(note.starts_with("Adopted") && note.contains("tls.crt"), "{note}");
    let backup = secrets.get("cacerts-meshca-backup").await.unwrap();
    assert_eq!(backup.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(data(&backup), data(&original), "the copy holds what was deleted");
    assert_eq!(
        backup.labels().get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("mesh-ca-issuer")
    );
    assert_eq!(
        backup.annotations().get("meshca.io/backup-of").map(String::as_str),
        Some("cacerts")
    );
    let icc = env.icc().await;
    assert_eq!(
        backup
            .owner_references()
            .iter()
            .map(|r| r.uid.clone())
            .collect::<Vec<_>>(),
        vec![icc.uid().unwrap()],
        "owned by the IstioCACerts: it holds a CA key"
    );
}

/// Adoption deletes the typed Secret, then creates it as Opaque. When that create is refused
/// (here by a ValidatingAdmissionPolicy, as an admission webhook or quota might), istiod would
/// self-sign on its next restart: the controller tries again at once, then says so in Ready
/// (`RecreateFailed`, naming the backup) and a Warning, and creates it once it may.
#[tokio::test]
async fn a_failed_re_create_after_adoption_is_shown_names_the_backup_and_is_retried() {
    use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
    let env = env("icc-recreate").await;
    issue(&env, "mesh", None).await;
    let original = tls_cacerts(&env, Some(&source_root(&env).await)).await;
    let name = format!("deny-opaque-cacerts-{}", env.ns.name);
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["secrets"]
            }]},
            "validations": [{
                "expression": "!(object.metadata.name == 'cacerts' && has(object.type) && object.type == 'Opaque')",
                "message": "this test refuses an Opaque cacerts"
            }]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": env.ns.name}}}
        }
    }))
    .unwrap();
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(env.client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(env.client.clone());
    policies.create(&PostParams::default(), &policy).await.unwrap();
    bindings.create(&PostParams::default(), &binding).await.unwrap();
    // The API server loads policies asynchronously: wait until a dry-run create is denied by
    // it (not by AlreadyExists, which comes after admission).
    let probe: Secret = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "cacerts"}, "type": "Opaque", "stringData": {"x": "y"}}),
    )
    .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let secrets = env.ns.api::<Secret>();
    eventually(TIMEOUT, || async {
        match secrets.create(&dry_run, &probe).await {
            Err(kube::Error::Api(e)) if e.message.contains("this test refuses") => Some(()),
            _ => None,
        }
    })
    .await
    .expect("the policy in force");

    create_icc(&env, AdoptExisting::KeepForeignKeys).await;
    let icc = wait_condition(&env, "Ready", "RecreateFailed").await;
    let message = condition_message(&icc, "Ready");
    assert!(
        message.contains("cacerts-meshca-backup")
            && message.contains("self-signed")
            && message.contains("failed 4 times"),
        "{message}"
    );
    let note = wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "RecreateFailed").await;
    assert!(
        note.contains("cacerts-meshca-backup") && note.contains("self-signed"),
        "{note}"
    );
    assert!(
        secrets.get_opt("cacerts").await.unwrap().is_none(),
        "deleted, not yet created"
    );
    let backup = secrets.get("cacerts-meshca-backup").await.unwrap();
    assert_eq!(data(&backup), data(&original), "nothing lost meanwhile");

    // Allowed again: the controller's own retry creates it (nothing else changes).
    bindings.delete(&name, &DeleteParams::default()).await.unwrap();
    policies.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_condition(&env, "Ready", "Synced").await;
    let written = cacerts(&env).await.expect("cacerts created");
    assert_eq!(written.type_.as_deref(), Some("Opaque"));
}

/// The API server refuses the controller's writes (RBAC: no Secret writes, no events). The
/// refusal shows in status and metrics, the error policy keeps retrying with back-off, and once
/// the permissions are granted `cacerts` and the held-back events land — nothing else changes
/// in between, so the retry is the controller's own.
#[tokio::test]
async fn a_refused_cacerts_write_is_retried_until_it_is_allowed() {
    use k8s_openapi::api::rbac::v1::Role;
    let env = env("icc-rbac").await;
    issue(&env, "mesh", None).await;
    // From here on only a restricted controller runs.
    let Env {
        mesh: Mesh { client, ns, .. },
        controller,
        ..
    } = env;
    drop(controller);
    let rules = |writes: bool| {
        let mut rules = vec![
            serde_json::json!({"apiGroups": ["cert-manager.io"], "resources": ["certificaterequests", "certificates"], "verbs": ["get", "list", "watch"]}),
            serde_json::json!({"apiGroups": ["meshca.io"], "resources": ["meshcaissuers", "istiocacerts"], "verbs": ["get", "list", "watch"]}),
            serde_json::json!({"apiGroups": ["meshca.io"], "resources": ["meshcaissuers/status", "istiocacerts/status"], "verbs": ["update", "patch"]}),
            serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}),
        ];
        if writes {
            rules.push(serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "update", "delete"]}));
            rules.push(serde_json::json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}));
        }
        rules
    };
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::restricted_identity(&client, &ns.name, "controller", rules(false), dir.path()).await;
    let flags = [
        "--namespace",
        &ns.name,
        "--retry-backoff-initial",
        "1s",
        "--retry-backoff-max",
        "4s",
    ];
    let mut restricted = support::ControllerProcess::start_with_env(&kubeconfig, &flags, &[], dir.path());
    assert!(
        restricted.wait_ready(Duration::from_secs(60)).await,
        "{}",
        restricted.log()
    );

    let api: Api<IstioCACerts> = ns.api();
    let spec = IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        target_secret_name: "cacerts".into(),
        adopt_existing: AdoptExisting::Never,
        ..Default::default()
    };
    support::objects::create_icc(&api, "mesh", spec).await;
    let failed_message = eventually(TIMEOUT, || async {
        let icc = api.get("mesh").await.ok()?;
        let c = condition(&icc, "Ready")?.clone();
        (c.reason == "WriteFailed").then_some(c.message)
    })
    .await
    .expect("the refused write shows in status");
    assert!(failed_message.contains("forbidden"), "{failed_message}");
    // Retried, with back-off, and counted: at least two refused attempts.
    let write_failed = |text: &str| {
        metric(
            text,
            "meshca_reconciles_total",
            &[("controller", "istiocacerts"), ("outcome", "write_failed")],
        )
    };
    eventually(TIMEOUT, || async {
        let (_, text) = support::http_get(restricted.admin_port, "/metrics").await.ok()?;
        (write_failed(&text)? >= 2.0).then_some(())
    })
    .await
    .expect("meshca_reconciles_total{outcome=\"write_failed\"} counts the retries");
    assert!(ns.api::<Secret>().get_opt("cacerts").await.unwrap().is_none());
    let (_, text) = support::http_get(restricted.admin_port, "/metrics").await.unwrap();
    assert!(
        metric(
            &text,
            "meshca_reconciles_total",
            &[("controller", "event"), ("outcome", "write_failed")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the refused event is counted"
    );

    // Granted: the write lands and the held-back events follow, with no other trigger.
    let roles: Api<Role> = ns.api();
    let mut granted: Role =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "controller"}, "rules": rules(true)})).unwrap();
    granted.metadata.resource_version = roles.get("controller").await.unwrap().metadata.resource_version;
    roles
        .replace("controller", &PostParams::default(), &granted)
        .await
        .unwrap();
    let synced = eventually(Duration::from_secs(30), || async {
        let icc = api.get("mesh").await.ok()?;
        (condition(&icc, "Ready")?.reason == "Synced").then_some(())
    })
    .await;
    assert!(
        synced.is_some(),
        "cacerts written once allowed; log:\n{}",
        restricted.log()
    );
    let written = ns.api::<Secret>().get("cacerts").await.unwrap();
    assert_eq!(goverify::istiod_loads(&data(&written)), Ok(()));
    wait_for_event(&client, &ns.name, "IstioCACerts/mesh", "Written").await;
    wait_for_event(&client, &ns.name, "IstioCACerts/mesh", "WriteFailed").await;
}

#[tokio::test]
async fn istiods_self_signed_ca_is_never_touched_even_when_adopting() {
    let env = env("icc-istiod").await;
    issue(&env, "mesh", None).await;
    let istiod = serde_json::json!({
        "metadata": {"name": "cacerts"},
        "stringData": {"ca-cert.pem": "istiod's own", "ca-key.pem": "k", "root-cert.pem": "r", "istio-generated": ""}
    });
    create_secret(&env.ns.api(), istiod).await;
    let before = cacerts(&env).await.unwrap();
    create_icc(&env, AdoptExisting::KeepForeignKeys).await;
    let icc = wait_condition(&env, "Ready", "IstiodSelfSignedCA").await;
    assert!(condition_message(&icc, "Ready").contains("istio-generated"));
    // No sleep: the refusal is decided before any write, and act writes cacerts first and the
    // status last, so the reconcile that set this condition wrote nothing.
    assert_eq!(
        cacerts(&env).await.unwrap().resource_version(),
        before.resource_version()
    );
}

#[tokio::test]
async fn a_new_root_leaves_cacerts_untouched_with_root_changed() {
    let env = synced_env("icc-root-change").await;
    let before = cacerts(&env).await.unwrap();
    // The Certificate moves to an issuer with another root.
    env.issuer("other", bootstrapped("other-root")).await;
    issue(&env, "other", None).await;
    let icc = wait_condition(&env, "Ready", "RootChanged").await;
    let message = condition_message(&icc, "Ready");
    assert!(
        message.contains("not among the 1 trust anchors") && message.contains("ISTIO_MULTIROOT_MESH"),
        "{message}"
    );
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "RootChanged").await;
    let after = cacerts(&env).await.unwrap();
    assert_eq!(
        (after.resource_version(), data(&after)),
        (before.resource_version(), data(&before))
    );
    // Status keeps tracking what istiod actually runs with: the old intermediate.
    let tracked = icc.status.unwrap().intermediate.unwrap();
    let running = &Certificate::parse_pem_bundle(&data(&before)["ca-cert.pem"], "c").unwrap()[0];
    assert_eq!(tracked.fingerprint_sha256, running.fingerprint());
}

/// Signs a CSR with the issuer's root directly (for sources that no issuer would produce).
fn sign_with_root(root_secret: &Secret, ca: bool, from: Timestamp, to: Timestamp) -> (String, String) {
    let d = data(root_secret);
    let root = Certificate::parse_pem_bundle(&d["tls.crt"], "root").unwrap().remove(0);
    let root_key = SigningKey::from_pem(&d["tls.key"]).unwrap();
    let plan = support::sign::plan(ca, from, to, Duration::from_secs(1));
    let (cert, key) = support::sign::istiod_intermediate(&plan, &root, &root_key);
    (cert.to_pem(), key)
}

#[tokio::test]
async fn bad_sources_leave_cacerts_untouched_with_the_cause() {
    let env = synced_env("icc-bad-source").await;
    let good = cacerts(&env).await.unwrap();
    let source: Secret = env.ns.api().get(SOURCE).await.unwrap();
    let source_data = data(&source);
    let root_secret: Secret = env.ns.api().get("mesh-root").await.unwrap();
    let now = Timestamp::now();
    let (leaf, leaf_key) = sign_with_root(
        &root_secret,
        false,
        now - SignedDuration::from_hours(1),
        now + SignedDuration::from_hours(24),
    );
    let (expired, expired_key) = sign_with_root(
        &root_secret,
        true,
        now - SignedDuration::from_hours(48),
        now - SignedDuration::from_hours(1),
    );
    let stranger = mesh_ca_issuer::pki::sign::self_signed_root(&RootBootstrap::default(), now).unwrap();
    let text = |b: &Vec<u8>| String::from_utf8(b.clone()).unwrap();
    let (crt, key, ca) = (
        text(&source_data["tls.crt"]),
        text(&source_data["tls.key"]),
        text(&source_data["ca.crt"]),
    );
    let other_key = SigningKey::generate(&Default::default()).unwrap().to_pem();
    let cases: Vec<(&str, Option<BTreeMap<&str, String>>)> = vec![
        ("SourceNotFound", None),
        (
            "SourceIncomplete",
            Some([("tls.crt", crt.clone()), ("ca.crt", ca.clone())].into()),
        ),
        (
            "KeyMismatch",
            Some([("tls.crt", crt.clone()), ("tls.key", other_key), ("ca.crt", ca.clone())].into()),
        ),
        (
            "NotACA",
            Some([("tls.crt", leaf), ("tls.key", leaf_key), ("ca.crt", ca.clone())].into()),
        ),
        (
            "ChainInvalid",
            Some(
                [
                    ("tls.crt", crt.clone()),
                    ("tls.key", key.clone()),
                    ("ca.crt", stranger.0.to_pem()),
                ]
                .into(),
            ),
        ),
        (
            "Expired",
            Some([("tls.crt", expired), ("tls.key", expired_key), ("ca.crt", ca.clone())].into()),
        ),
        (
            "InvalidSource",
            Some(
                [
                    (
                        "tls.crt",
                        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n".into(),
                    ),
                    ("tls.key", key.clone()),
                    ("ca.crt", ca.clone()),
                ]
                .into(),
            ),
        ),
    ];
    let secrets: Api<Secret> = env.ns.api();
    for (expected, content) in cases {
        let _ = secrets.delete(SOURCE, &DeleteParams::default()).await;
        if let Some(content) = content {
            eventually(TIMEOUT, || async {
                secrets.get_opt(SOURCE).await.ok()?.is_none().then_some(())
            })
            .await;
            create_secret(
                &secrets,
                serde_json::json!({"metadata": {"name": SOURCE}, "stringData": content}),
            )
            .await;
        }
        let icc = wait_condition(&env, "Ready", expected).await;
        let message = condition_message(&icc, "Ready");
        let note = wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", expected).await;
        for said in [&message, &note] {
            assert!(
                !said.contains("PRIVATE KEY") && !said.contains(&key[40..80]),
                "{expected}: no key material"
            );
        }
        let now_cacerts = cacerts(&env).await.unwrap();
        assert_eq!(
            now_cacerts.resource_version(),
            good.resource_version(),
            "{expected}: cacerts untouched"
        );
        assert_eq!(data(&now_cacerts), data(&good), "{expected}");
    }
}

/// Secret `name` still has the fingerprint it had `before` (`what` says whose it is). No
/// sleep is needed once the refusal's event is out: the refusal is decided before any write,
/// and act writes cacerts first and the status and event last, so the reconcile that raised
/// the event wrote nothing.
async fn assert_unchanged_after_refusal(secrets: &Api<Secret>, name: &str, before: &Secret, what: &str) {
    let after = secrets.get(name).await.unwrap();
    assert_eq!(fingerprint_of(&after), fingerprint_of(before), "{what}");
}

/// Everything of a Secret that a write could change.
fn fingerprint_of(secret: &Secret) -> impl PartialEq + std::fmt::Debug {
    (
        secret.uid(),
        secret.resource_version(),
        secret.type_.clone(),
        data(secret),
        secret.labels().clone(),
        secret.annotations().clone(),
    )
}

/// Only the Secrets on `--cacerts-secret-names` (default `cacerts`) are written: an
/// IstioCACerts aimed at a gateway's TLS Secret in istiod's namespace, adoption asked for, is
/// refused with a condition naming the flag and the Helm value, and the gateway's Secret stays
/// exactly as it was (before, the controller deleted it and made an Opaque `cacerts`-shaped
/// Secret of it).
#[tokio::test]
async fn a_target_outside_the_allowed_names_is_refused_and_left_byte_for_byte() {
    let env = env("icc-allow").await;
    issue(&env, "mesh", None).await;
    let dir = openssl::Workdir::new();
    dir.req_with_new_p256_key(
        "gw.key",
        "gw.pem",
        Some(30),
        "/CN=ingress.example",
        &["subjectAltName=DNS:ingress.example"],
    );
    let gateway = serde_json::json!({
        "metadata": {"name": "istio-ingressgateway-certs", "labels": {"app": "istio-ingressgateway"}},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": dir.read("gw.pem"), "tls.key": dir.read("gw.key")}
    });
    let secrets = env.ns.api::<Secret>();
    let before = create_secret(&secrets, gateway).await;
    env.create_icc(IstioCACertsSpec {
        source_secret_name: SOURCE.into(),
        target_secret_name: "istio-ingressgateway-certs".into(),
        adopt_existing: AdoptExisting::KeepForeignKeys,
        ..Default::default()
    })
    .await;
    let icc = wait_condition(&env, "Ready", "TargetNotAllowed").await;
    let message = condition_message(&icc, "Ready");
    for needed in [
        "istio-ingressgateway-certs",
        "--cacerts-secret-names",
        "controller.cacertsSecretNames",
    ] {
        assert!(message.contains(needed), "{needed}: {message}");
    }
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "TargetNotAllowed").await;
    assert_unchanged_after_refusal(
        &secrets,
        "istio-ingressgateway-certs",
        &before,
        "the gateway's Secret is untouched",
    )
    .await;
    assert!(
        secrets.get_opt("cacerts").await.unwrap().is_none(),
        "nothing else written"
    );
}

/// `targetSecretName == sourceSecretName` is refused by the controller too, not only by the
/// CRD's rule: an object stored before the rule existed (or on an API server that does not
/// run CEL) must not have cert-manager's Secret overwritten. Here the rule is taken off the CRD
/// for the moment it takes to store such an object (hence the exclusive lock).
#[tokio::test]
async fn a_target_that_is_the_source_is_refused_and_cert_managers_secret_kept() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let client = support::admin_client().await;
    support::ensure_crds(&client).await;
    let lock = ScopeLock::exclusive().await;
    let ns = support::TestNamespace::create(&client, "icc-onto-source").await;
    let env = env_in(lock, client.clone(), ns, &[], "87600h").await;
    issue(&env, "mesh", None).await;
    let secrets = env.ns.api::<Secret>();
    let before = secrets.get(SOURCE).await.unwrap();

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(support::TEST_MANAGER).force();
    let original = mesh_ca_issuer::api::crds()
        .into_iter()
        .find(|c| c.name_any() == "istiocacerts.meshca.io")
        .unwrap();
    let mut without_rule = serde_json::to_value(&original).unwrap();
    without_rule["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("x-kubernetes-validations")
        .expect("the CRD has the rule");
    crds.patch(original.name_any().as_str(), &params, &Patch::Apply(&without_rule))
        .await
        .unwrap();
    let onto_source = IstioCACerts::new(
        "mesh",
        IstioCACertsSpec {
            source_secret_name: SOURCE.into(),
            target_secret_name: SOURCE.into(),
            adopt_existing: AdoptExisting::KeepForeignKeys,
            ..Default::default()
        },
    );
    // The API server takes the CRD change in a moment.
    let stored = eventually(TIMEOUT, || async {
        env.ns
            .api::<IstioCACerts>()
            .create(&PostParams::default(), &onto_source)
            .await
            .ok()
    })
    .await;
    crds.patch(original.name_any().as_str(), &params, &Patch::Apply(&original))
        .await
        .unwrap();
    assert!(stored.is_some(), "stored while the CRD had no rule");

    let icc = wait_condition(&env, "Ready", "TargetIsSource").await;
    let message = condition_message(&icc, "Ready");
    assert!(
        message.contains(SOURCE) && message.contains("cert-manager"),
        "{message}"
    );
    wait_for_event(&env.client, &env.ns.name, "IstioCACerts/mesh", "TargetIsSource").await;
    assert_unchanged_after_refusal(&secrets, SOURCE, &before, "cert-manager's Secret is untouched").await;
}

#[tokio::test]
async fn deleting_the_istiocacerts_leaves_cacerts_in_place() {
    let env = synced_env("icc-delete").await;
    let before = cacerts(&env).await.unwrap();
    env.ns
        .api::<IstioCACerts>()
        .delete("mesh", &DeleteParams::default())
        .await
        .unwrap();
    eventually(TIMEOUT, || async {
        env.ns
            .api::<IstioCACerts>()
            .get_opt("mesh")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    // This control plane has no garbage collector: what protects cacerts on a real cluster is
    // that it carries no ownerReference to the IstioCACerts.
    let after = cacerts(&env).await.unwrap();
    assert!(after.metadata.owner_references.is_none());
    assert_eq!(data(&after), data(&before));
}

/// Series whose `namespace` and `name` labels are these, in the `/metrics` text.
fn series_of(text: &str, namespace: &str, name: &str) -> Vec<String> {
    let namespace = format!("namespace=\"{namespace}\"");
    let name = format!("name=\"{name}\"");
    text.lines()
        .filter(|l| l.starts_with("meshca_certificate_") && l.contains(&namespace) && l.contains(&name))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_deleted_objects_metrics_go_with_it() {
    let env = synced_env("icc-metrics-gone").await;
    // The IstioCACerts and its issuer are both named `mesh`: intermediate, root, backend_ca
    // and issuer_ca series.
    let ns = env.ns.name.clone();
    let text = env.controller.metrics().await;
    let kinds = |series: &[String]| {
        let mut kinds: Vec<&str> = series
            .iter()
            .filter_map(|l| l.split("kind=\"").nth(1)?.split('"').next())
            .collect();
        kinds.sort();
        kinds.dedup();
        kinds.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&series_of(&text, &ns, "mesh")),
        ["backend_ca", "intermediate", "issuer_ca", "root"],
        "{text}"
    );

    env.ns
        .api::<IstioCACerts>()
        .delete("mesh", &DeleteParams::default())
        .await
        .unwrap();
    let text = eventually(TIMEOUT, || async {
        let text = env.controller.metrics().await;
        (kinds(&series_of(&text, &ns, "mesh")) == ["issuer_ca"]).then_some(text)
    })
    .await
    .expect("the IstioCACerts' series gone, the issuer's kept");
    // An issuer's CA is exported as its notAfter only.
    assert_eq!(series_of(&text, &ns, "mesh").len(), 1, "{text}");

    env.ns
        .api::<MeshCAIssuer>()
        .delete("mesh", &DeleteParams::default())
        .await
        .unwrap();
    eventually(TIMEOUT, || async {
        let text = env.controller.metrics().await;
        series_of(&text, &ns, "mesh").is_empty().then_some(())
    })
    .await
    .expect("the issuer's series gone too");
}

#[tokio::test]
async fn renewal_windows_change_at_their_exact_boundaries_with_one_event_each() {
    // A 30-second intermediate; renewal due 1 s after two thirds (20 s), expiring 5 s before
    // the end (25 s), expired at 30 s. Nothing renews it: the windows must follow each other.
    let env = env_with(
        "icc-windows",
        &["--expiring-threshold", "5s", "--renewal-grace", "1s"],
        "87600h",
    )
    .await;
    let cr = issue(&env, "mesh", Some("30s")).await;
    create_icc(&env, AdoptExisting::Never).await;
    wait_condition(&env, "Ready", "Synced").await;
    let cert =
        &Certificate::parse_pem_bundle(cr.status.as_ref().unwrap().certificate.as_deref().unwrap(), "c").unwrap()[0];
    // cert-manager's default, as the controller computes it (two thirds, whole seconds).
    let renewal = mesh_ca_issuer::pki::renewal::default_renewal_time(cert.not_before(), cert.not_after());
    // Less than a day left from the start: the dangerous combination is flagged at once.
    let icc = wait_condition(&env, "CertificatesHealthy", "ShorterThanWorkloadCertificates").await;
    assert!(
        condition_message(&icc, "CertificatesHealthy").contains("less than istiod's workload certificate lifetime")
    );
    let expected = [
        ("IntermediateRenewalDue", renewal + SignedDuration::from_secs(1)),
        ("IntermediateExpiring", cert.not_after() - SignedDuration::from_secs(5)),
        ("IntermediateExpired", cert.not_after()),
    ];
    for (reason, boundary) in expected {
        let seen = eventually(Duration::from_secs(45), || async {
            let events = support::events_for(&env.client, &env.ns.name, "IstioCACerts/mesh").await;
            events.iter().any(|e| e.1 == reason).then(Timestamp::now)
        })
        .await
        .unwrap_or_else(|| panic!("no {reason} event"));
        let late = seen.duration_since(boundary);
        assert!(
            late >= -SignedDuration::from_millis(200) && late < SignedDuration::from_secs(3),
            "{reason} seen {late:?} after its boundary"
        );
    }
    let events = support::events_for(&env.client, &env.ns.name, "IstioCACerts/mesh").await;
    for reason in ["IntermediateRenewalDue", "IntermediateExpiring", "IntermediateExpired"] {
        assert_eq!(
            events.iter().filter(|e| e.1 == reason).count(),
            1,
            "one {reason} event: {events:?}"
        );
    }
    let icc = wait_condition(&env, "CertificatesHealthy", "IntermediateExpired").await;
    assert_eq!(icc.status.unwrap().intermediate.unwrap().window, RenewalWindow::Expired);
}
