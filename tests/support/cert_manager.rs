//! STAND-IN for cert-manager's controllers, for tests that must control exactly what cert-manager
//! would send or when. Real cert-manager (v1.21.2, `real_cert_manager.rs`) runs the main flow in
//! `tests/cert_manager.rs` and `hack/demo --cert-manager`; this stand-in remains where a test
//! needs what real cert-manager cannot give on demand: a request with chosen contents (weak or
//! foreign CSRs, other kinds, unapproved requests that stay unapproved), a given revision or
//! Secret at a given moment (renewal windows, root rotation, federation), or hundreds of
//! requests at once (the benches). It does exactly what cert-manager does for an istiod
//! intermediate, and nothing more:
//!
//! - the Certificate controller: make a private key and a CSR (subject, SPIFFE URI SAN, a
//!   critical keyUsage with keyCertSign, no BasicConstraints — cert-manager's defaults for
//!   `isCA: true`) and create the CertificateRequest with `spec.isCA`, `spec.duration`,
//!   `spec.issuerRef` and the cert-manager annotations;
//! - the approver: add `Approved=True` (or `Denied=True`) to the request's status;
//! - the Certificate controller again: copy a issued request into the Certificate's Secret
//!   (`tls.crt` = `status.certificate`, `tls.key`, `ca.crt` = `status.ca`) with cert-manager's
//!   annotations.
//!
//! Its requests are written against cert-manager's own CRDs, installed by the harness. Used by
//! the tests, the benches and, through `examples/cert_manager_stand_in.rs`, by the fast default
//! of `hack/demo` and by `hack/demo --multicluster`.
#![allow(dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::{
    CERTIFICATE_NAME_ANNOTATION, CertificateRequest, CertificateRequestSpec, ISSUER_GROUP_ANNOTATION,
    ISSUER_KIND_ANNOTATION, ISSUER_NAME_ANNOTATION, IssuerReference,
};

/// The field manager the stand-in approver writes with.
pub const APPROVER: &str = "cert-manager-approver-stand-in";

/// What the stand-in Certificate controller asks for.
#[derive(Clone, Debug)]
pub struct IntermediateRequest {
    /// The CertificateRequest's name (cert-manager: `<certificate>-<revision>`).
    pub name: String,
    /// The Certificate it belongs to (the `cert-manager.io/certificate-name` annotation);
    /// `None`: a Certificate named like the request.
    pub certificate: Option<String>,
    pub issuer_group: String,
    pub issuer_kind: String,
    pub issuer_name: String,
    pub common_name: String,
    pub organization: Option<String>,
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub duration: Option<String>,
    /// "ECDSA" (P-256) or "RSA" (2048).
    pub key_algorithm: String,
    /// cert-manager's `Certificate.spec.nameConstraints` (feature gate `NameConstraints`): the
    /// DER value of the NameConstraints extension the CSR then requests, critical.
    pub name_constraints: Option<Vec<u8>>,
}

impl IntermediateRequest {
    /// istiod's intermediate from a MeshCAIssuer, as an Istio operator would write it.
    pub fn istiod(name: &str, issuer_name: &str) -> Self {
        Self {
            name: name.to_string(),
            certificate: None,
            issuer_group: "meshca.io".to_string(),
            issuer_kind: "MeshCAIssuer".to_string(),
            issuer_name: issuer_name.to_string(),
            common_name: "istiod intermediate".to_string(),
            organization: Some("cluster.local".to_string()),
            uris: vec!["spiffe://cluster.local/ns/istio-system/sa/istiod".to_string()],
            is_ca: true,
            duration: None,
            key_algorithm: "ECDSA".to_string(),
            name_constraints: None,
        }
    }
}

impl IntermediateRequest {
    /// The same request under another name.
    pub fn named(&self, name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..self.clone()
        }
    }
}

/// A private key and CSR in PEM, as cert-manager would generate them.
pub fn make_key_and_csr(req: &IntermediateRequest) -> (String, String) {
    let key = match req.key_algorithm.as_str() {
        "RSA" => rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        _ => rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
    }
    .expect("key generation");
    let mut params = rcgen::CertificateParams::default();
    // rcgen pre-fills a CN; start from an empty name so ours comes out in the order given.
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(org) = &req.organization {
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, org.as_str());
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, req.common_name.as_str());
    params.subject_alt_names = req
        .uris
        .iter()
        .map(|u| rcgen::SanType::URI(u.clone().try_into().expect("IA5 URI")))
        .collect();
    if req.is_ca {
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ];
    }
    if let Some(der) = &req.name_constraints {
        let mut extension = rcgen::CustomExtension::from_oid_content(&[2, 5, 29, 30], der.clone());
        extension.set_criticality(true);
        params.custom_extensions.push(extension);
    }
    let csr = params.serialize_request(&key).expect("CSR");
    (key.serialize_pem(), csr.pem().expect("CSR PEM"))
}

/// Creates the CertificateRequest for `csr_pem`. Returns the created object.
pub async fn create_request(
    client: &Client,
    namespace: &str,
    req: &IntermediateRequest,
    csr_pem: &[u8],
) -> CertificateRequest {
    let mut cr = CertificateRequest::new(
        &req.name,
        CertificateRequestSpec {
            issuer_ref: IssuerReference {
                name: req.issuer_name.clone(),
                kind: Some(req.issuer_kind.clone()),
                group: Some(req.issuer_group.clone()),
            },
            request: csr_pem.to_vec(),
            is_ca: Some(req.is_ca),
            duration: req.duration.clone(),
            usages: Some(if req.is_ca {
                vec!["cert sign".into(), "digital signature".into()]
            } else {
                vec!["digital signature".into(), "key encipherment".into()]
            }),
            ..Default::default()
        },
    );
    cr.annotations_mut().insert(
        CERTIFICATE_NAME_ANNOTATION.to_string(),
        req.certificate.clone().unwrap_or_else(|| req.name.clone()),
    );
    cr.annotations_mut()
        .insert("cert-manager.io/certificate-revision".to_string(), "1".to_string());
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &cr)
        .await
        .expect("create CertificateRequest")
}

async fn set_approval(client: &Client, namespace: &str, name: &str, type_: &str, reason: &str, message: &str) {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "CertificateRequest",
        "status": {"conditions": [{
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }]}
    });
    api.patch_status(name, &PatchParams::apply(APPROVER).force(), &Patch::Apply(&patch))
        .await
        .expect("approve/deny CertificateRequest");
}

/// What cert-manager's approver does on approval.
pub async fn approve(client: &Client, namespace: &str, name: &str) {
    set_approval(
        client,
        namespace,
        name,
        "Approved",
        "cert-manager.io",
        "Certificate request has been approved by cert-manager.io",
    )
    .await;
}

/// What an approver does on denial.
pub async fn deny(client: &Client, namespace: &str, name: &str, message: &str) {
    set_approval(client, namespace, name, "Denied", "policy.cert-manager.io", message).await;
}

/// Creates, approves, and returns the key PEM.
pub async fn request_and_approve(client: &Client, namespace: &str, req: &IntermediateRequest) -> String {
    let (key, csr) = make_key_and_csr(req);
    create_request(client, namespace, req, csr.as_bytes()).await;
    approve(client, namespace, &req.name).await;
    key
}

/// Waits until the request's Ready condition has one of `reasons`; returns the request.
pub async fn wait_for_reason(
    client: &Client,
    namespace: &str,
    name: &str,
    reasons: &[&str],
    timeout: Duration,
) -> CertificateRequest {
    let what = format!("{reasons:?}");
    wait_until(client, namespace, name, &what, timeout, |cr| {
        cr.condition("Ready")
            .and_then(|c| c.reason.as_deref())
            .is_some_and(|reason| reasons.contains(&reason))
    })
    .await
}

/// The request `name` once `reached` holds of it; panics with its status, naming `what` it
/// did not reach, after `timeout`.
async fn wait_until(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    reached: impl Fn(&CertificateRequest) -> bool,
) -> CertificateRequest {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let cr = api.get(name).await.expect("get CertificateRequest");
        if reached(&cr) {
            return cr;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "CertificateRequest {namespace}/{name} did not reach {what} within {timeout:?}: status {:?}",
                cr.status
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What cert-manager's Certificate controller writes once the request is issued.
pub async fn write_certificate_secret(
    client: &Client,
    namespace: &str,
    secret_name: &str,
    cr: &CertificateRequest,
    key_pem: &str,
) {
    let status = cr.status.as_ref().expect("issued request has status");
    let mut data = serde_json::Map::new();
    let b64 = |b: &[u8]| serde_json::to_value(k8s_openapi::ByteString(b.to_vec())).expect("base64");
    data.insert("tls.crt".into(), b64(status.certificate.as_deref().unwrap_or_default()));
    data.insert("tls.key".into(), b64(key_pem.as_bytes()));
    if let Some(ca) = status.ca.as_deref().filter(|ca| !ca.is_empty()) {
        data.insert("ca.crt".into(), b64(ca));
    }
    let issuer = &cr.spec.issuer_ref;
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name, "namespace": namespace, "annotations": {
            CERTIFICATE_NAME_ANNOTATION: cr.annotations().get(CERTIFICATE_NAME_ANNOTATION).cloned().unwrap_or_default(),
            ISSUER_NAME_ANNOTATION: issuer.name,
            ISSUER_KIND_ANNOTATION: issuer.kind.clone().unwrap_or_default(),
            ISSUER_GROUP_ANNOTATION: issuer.group.clone().unwrap_or_default(),
        }},
        "type": "kubernetes.io/tls",
        "data": data,
    });
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.patch(
        secret_name,
        &PatchParams::apply("cert-manager-certificates-issuing-stand-in").force(),
        &Patch::Apply(&secret),
    )
    .await
    .expect("write certificate Secret");
}

/// What cert-manager's Certificate controller records on the Certificate once issued:
/// `status.notBefore`, `notAfter` and `renewalTime` = notAfter - renewBefore (default: a third
/// of the lifetime).
pub async fn record_certificate(
    client: &Client,
    namespace: &str,
    name: &str,
    secret_name: &str,
    cr: &CertificateRequest,
    renew_before: Option<Duration>,
) -> jiff::Timestamp {
    let status = cr.status.as_ref().expect("issued request");
    let cert = mesh_ca_issuer::pki::Certificate::parse_pem_bundle(
        status.certificate.as_deref().unwrap_or_default(),
        "tls.crt",
    )
    .expect("issued certificate")
    .remove(0);
    let lifetime = cert.not_after().duration_since(cert.not_before());
    let renew_before = renew_before
        .map(|d| jiff::SignedDuration::try_from(d).expect("duration"))
        .unwrap_or(lifetime / 3);
    let renewal = cert.not_after() - renew_before;
    let api: Api<mesh_ca_issuer::api::cert_manager::Certificate> = Api::namespaced(client.clone(), namespace);
    let object = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"secretName": secret_name, "issuerRef": cr.spec.issuer_ref, "isCA": true},
    });
    api.patch(
        name,
        &PatchParams::apply("cert-manager-certificates-stand-in").force(),
        &Patch::Apply(&object),
    )
    .await
    .expect("apply Certificate");
    let status = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "status": {
            "notBefore": cert.not_before().to_string(),
            "notAfter": cert.not_after().to_string(),
            "renewalTime": renewal.to_string(),
        },
    });
    api.patch_status(
        name,
        &PatchParams::apply("cert-manager-certificates-stand-in").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("Certificate status");
    renewal
}

// === request and wait until it ends ===

/// Requests `req`, approves it as cert-manager's approver would, and waits until its Ready
/// reason is one of `reasons`: the request as it ended, and its private key.
pub async fn request_until(
    client: &Client,
    namespace: &str,
    req: &IntermediateRequest,
    reasons: &[&str],
    timeout: Duration,
) -> (CertificateRequest, String) {
    let key = request_and_approve(client, namespace, req).await;
    (
        wait_for_reason(client, namespace, &req.name, reasons, timeout).await,
        key,
    )
}

/// istiod's intermediate requested as each of `names` from MeshCAIssuer `issuer`, all
/// approved before any is waited on, then each until Issued.
pub async fn issue_all(client: &Client, namespace: &str, issuer: &str, names: &[String], timeout: Duration) {
    for name in names {
        request_and_approve(client, namespace, &IntermediateRequest::istiod(name, issuer)).await;
    }
    for name in names {
        wait_for_reason(client, namespace, name, &["Issued"], timeout).await;
    }
}

/// istiod's intermediate `name` requested from MeshCAIssuer `issuer` and approved, once it
/// waits (`Pending`).
pub async fn pending(
    client: &Client,
    namespace: &str,
    name: &str,
    issuer: &str,
    timeout: Duration,
) -> CertificateRequest {
    let req = IntermediateRequest::istiod(name, issuer);
    request_until(client, namespace, &req, &["Pending"], timeout).await.0
}

/// istiod's intermediate `name` requested from issuer `issuer` and approved, once it waits
/// (`Pending`) with a message that `says` this. The request controller judges the issuer from
/// its watch cache, which may be a moment behind the issuer status a test has just read: the
/// first Pending message can still be "Waiting for ... to be checked", and the next one, after
/// the issuer's change re-queues the request, says why.
pub async fn pending_saying(
    client: &Client,
    namespace: &str,
    name: &str,
    issuer: &str,
    says: &str,
    timeout: Duration,
) -> CertificateRequest {
    request_and_approve(client, namespace, &IntermediateRequest::istiod(name, issuer)).await;
    let what = format!("Pending saying {says:?}");
    wait_until(client, namespace, name, &what, timeout, |cr| {
        cr.condition("Ready")
            .is_some_and(|c| c.reason.as_deref() == Some("Pending") && ready_message(cr).contains(says))
    })
    .await
}

/// What an issued request holds: the chain in `status.certificate` and the root in
/// `status.ca`, parsed.
pub fn issued_parts(
    cr: &CertificateRequest,
) -> (Vec<mesh_ca_issuer::pki::Certificate>, mesh_ca_issuer::pki::Certificate) {
    let status = cr.status.as_ref().expect("an issued request");
    let chain = mesh_ca_issuer::pki::Certificate::parse_pem_bundle(
        status.certificate.as_deref().unwrap_or_default(),
        "certificate",
    )
    .expect("status.certificate");
    let root = mesh_ca_issuer::pki::Certificate::parse_pem_bundle(status.ca.as_deref().unwrap_or_default(), "ca")
        .expect("status.ca")
        .remove(0);
    (chain, root)
}

/// What a request's Ready condition says (empty when it has none).
pub fn ready_message(cr: &CertificateRequest) -> String {
    cr.condition("Ready")
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// istiod's intermediate `name` requested from MeshCAIssuer `issuer` and approved, once its
/// Ready reason is `reason` (Issued, Failed, ...).
pub async fn istiod_until(
    client: &Client,
    namespace: &str,
    name: &str,
    issuer: &str,
    reason: &str,
    timeout: Duration,
) -> CertificateRequest {
    let req = IntermediateRequest::istiod(name, issuer);
    request_until(client, namespace, &req, &[reason], timeout).await.0
}
