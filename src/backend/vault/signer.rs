//! The signer: connect (who may call where, the client, the token, the CA), then
//! `sign-intermediate` with the request's parameters, then the checks of what came back.
//!
//! Parameters: `csr`; `common_name` and the other subject attributes, `uri_sans`, `alt_names`
//! and `ip_sans` from the CSR, `exclude_cn_from_sans` (the CN is a name, not a SAN);
//! `max_path_length` from the plan; `ttl` up to the plan's notAfter, which is already clamped to
//! the CA's notAfter (Vault lets an intermediate outlive its issuer); `use_csr_values` only
//! when the plan asks for name constraints (below).
//!
//! Name constraints: Vault's and OpenBao's `sign-intermediate` cannot add URI name
//! constraints (OpenBao 2.7.2 knows `permitted_dns_domains` only and ignores
//! `permitted_uri_domains`, with a warning; Vault issue #31627). With `use_csr_values` they
//! copy the CSR's requested extensions, so constraints the CSR itself carries (cert-manager's
//! `Certificate.spec.nameConstraints`) do reach the certificate. A request whose plan wants
//! constraints its CSR does not carry exactly is failed before Vault is called, never signed
//! unconstrained; the controller re-checks the issued certificate either way.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::Method;
use jiff::Timestamp;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::auth::{self, AuthContext};
use super::ca::{self, CaSource, VaultCa};
use super::classify::{Call, CallFailure, classify};
use super::client::{VaultClient, VaultToken};
use super::endpoint::{self, Server, SignPath};
use super::{Shared, reason};
use crate::api::issuer::Vault;
use crate::backend::binding::{self, ChainVerdict};
use crate::backend::{
    AmbientPolicy, BackendError, CaInfo, IssuerScope, PATH_LEN_EXHAUSTED, Purpose, SignOutcome, SignRequest, Signer,
};
use crate::pki::chain::{SubCaRoom, sub_ca_room};
use crate::pki::crl::Crl;
use crate::pki::csr::SubjectAltName;
use crate::pki::name_constraints::{self, NameConstraints};
use crate::pki::policy::CaLifetime;
use crate::pki::{Certificate, CertificateSigningRequest};

/// The default key of `caBundleSecretRef`.
pub const CA_BUNDLE_KEY: &str = "ca.crt";

pub struct VaultSigner {
    client: Arc<VaultClient>,
    token: VaultToken,
    server: Server,
    sign_path: SignPath,
    issuer: String,
    shared: Arc<Shared>,
    ca: VaultCa,
    info: CaInfo,
    room: SubCaRoom,
}

/// What an issuer's spec says before anything is read: the server, the path, and that exactly
/// one auth method and at most one CA bundle are set. Pure.
pub fn validate(spec: &Vault) -> Result<(Server, SignPath), String> {
    let server = endpoint::parse_server(&spec.server)?;
    let sign_path = endpoint::parse_sign_path(&spec.path)?;
    let auth = &spec.auth;
    let methods = [
        auth.kubernetes.is_some(),
        auth.app_role.is_some(),
        auth.token_secret_ref.is_some(),
    ];
    if methods.iter().filter(|set| **set).count() != 1 {
        return Err("spec.vault.auth must set exactly one of kubernetes, appRole, tokenSecretRef".into());
    }
    if spec.ca_bundle.is_some() && spec.ca_bundle_secret_ref.is_some() {
        return Err("spec.vault sets both caBundle and caBundleSecretRef: set one".into());
    }
    Ok((server, sign_path))
}

impl VaultSigner {
    pub async fn connect(
        kube: &kube::Client,
        shared: Arc<Shared>,
        ambient: AmbientPolicy,
        spec: &Vault,
        scope: &IssuerScope,
        purpose: Purpose,
        now: Timestamp,
    ) -> Result<Self, BackendError> {
        let invalid = |m: String| BackendError::issuer_not_ready(reason::INVALID_SPEC, m);
        let (server, sign_path) = validate(spec).map_err(invalid)?;
        // Before anything is read or called: may this issuer call this server, and log in so?
        if !scope.cluster_scoped && !endpoint::server_allowed(&server, &shared.servers) {
            return Err(BackendError::issuer_not_ready(
                reason::SERVER_NOT_ALLOWED,
                format!(
                    "{} names Vault server {}, which --vault-servers does not list ({}): use a listed server, or ask the operator to add it (Helm value controller.vaultServers)",
                    scope.display,
                    spec.server,
                    shared.servers.join(", ")
                ),
            ));
        }
        auth::ambient_gate(&spec.auth, scope, ambient, &shared.servers)?;
        let bundle = match (&spec.ca_bundle, &spec.ca_bundle_secret_ref) {
            (Some(inline), _) => Some((inline.0.clone(), "inline".to_string())),
            (None, Some(selector)) => {
                let (pem, version) = auth::read_secret_key(kube, scope, selector, CA_BUNDLE_KEY).await?;
                Some((pem.into_bytes(), format!("{}@{version}", selector.name)))
            }
            (None, None) => None,
        };
        let client = client_for(&shared, scope, &server, spec.namespace.as_deref(), bundle)
            .map_err(|m| invalid(format!("spec.vault caBundle: {m}")))?;
        let token = auth::token(
            &AuthContext {
                kube,
                shared: &shared,
                spec,
                scope,
                server: &server,
                client: &client,
            },
            purpose,
        )
        .await?;
        let source = CaSource {
            client: &client,
            token: &token,
            server: &server.base,
            sign_path: &sign_path,
        };
        let ca = ca::read(&shared, &scope.display, &source, purpose, now).await?;
        let room = sub_ca_room(&ca.issuing());
        let info = CaInfo {
            summary: ca.certificate.summary(),
            lifetime: CaLifetime {
                not_before: ca.certificate.not_before(),
                not_after: ca.not_after(),
                max_validity: None,
            },
        };
        Ok(Self {
            client,
            token,
            server,
            sign_path,
            issuer: scope.display.clone(),
            shared,
            ca,
            info,
            room,
        })
    }

    /// The signing CA's current CRL as Vault publishes it (`<mount>/issuer/<ref>/crl`), for
    /// `ca-crl.pem`. Read without a token: Vault serves CRLs to anyone, and the token's
    /// policy need not allow one more path.
    pub async fn crl(&self) -> Result<Vec<Crl>, BackendError> {
        let path = format!("{}/issuer/{}/crl", self.sign_path.mount, self.sign_path.issuer);
        let call = Call::ReadCrl { path: &path };
        let answer = self
            .client
            .call(Method::GET, &path, None, None)
            .await
            .map_err(|f| classify(&self.server.base, call, f))?;
        let pem = answer.pointer("/data/crl").and_then(Value::as_str).ok_or_else(|| {
            classify(
                &self.server.base,
                call,
                CallFailure::Malformed("no data.crl in the answer".into()),
            )
        })?;
        Crl::parse_pem_bundle(pem.as_bytes(), "Vault's CRL").map_err(|e| {
            classify(
                &self.server.base,
                call,
                CallFailure::Malformed(format!("data.crl is not a PEM CRL: {e}")),
            )
        })
    }

    async fn issue(&self, request: &SignRequest<'_>) -> Result<SignOutcome, BackendError> {
        let (csr, plan) = (request.csr, request.plan);
        let Some(path_len) = plan.ca_path_len else {
            return Err(BackendError::permanent(
                reason::REJECTED,
                "the request is not for a CA certificate, and Vault's sign-intermediate makes CA certificates only",
            ));
        };
        if !self.room.allows(u32::from(path_len)) {
            return Err(BackendError::issuer_not_ready(
                PATH_LEN_EXHAUSTED,
                format!(
                    "a sub-CA with pathLen {path_len} cannot be signed by {} ({:?})",
                    self.ca.certificate.subject(),
                    self.room
                ),
            ));
        }
        let use_csr_values = match &plan.name_constraints {
            None => false,
            Some(wanted) => constraints_from_csr(csr, wanted)?,
        };
        let body = parameters(csr, path_len, plan.not_after, Timestamp::now(), use_csr_values);
        let call = Call::Sign {
            path: &self.sign_path.path,
        };
        let started = std::time::Instant::now();
        let answer = match self
            .client
            .call(Method::POST, &self.sign_path.path, Some(&self.token), Some(&body))
            .await
        {
            Ok(answer) => {
                debug!(issuer = %self.issuer, elapsed_ms = started.elapsed().as_millis() as u64, "signed by Vault");
                answer
            }
            Err(failure) => {
                if matches!(failure, CallFailure::Status { status: 403, .. }) {
                    // The token may have been revoked: the next attempt logs in afresh.
                    auth::forget(&self.shared, &self.issuer);
                }
                return Err(classify(&self.server.base, call, failure));
            }
        };
        crate::failpoint::hit("after-vault-sign");
        let (certificate, chain) =
            issued(&answer).map_err(|m| classify(&self.server.base, call, CallFailure::Malformed(m)))?;
        let label = format!("serial {}", certificate.serial_hex());
        let not_bound = |u: binding::Unbound| {
            BackendError::permanent(
                reason::CERTIFICATE_NOT_BOUND,
                format!(
                    "{} check failed: {}; the certificate Vault signed ({label}) is not used, nothing was written",
                    u.check, u.detail
                ),
            )
        };
        binding::check_key(&label, &csr.public_key_info, &certificate).map_err(not_bound)?;
        binding::check_plan(&certificate, csr, plan, self.info.lifetime.not_after).map_err(not_bound)?;
        let shortened = certificate.not_after() < plan.not_after - binding::CLOCK_SKEW;
        let verdict = match binding::check_chain(&label, certificate.clone(), chain.clone(), &self.ca.issuing())
            .map_err(not_bound)?
        {
            ChainVerdict::ForeignChain(_) => {
                // The CA read may be older than a change of the issuer in Vault: judge once
                // more against a fresh read before calling the chain foreign.
                let source = CaSource {
                    client: &self.client,
                    token: &self.token,
                    server: &self.server.base,
                    sign_path: &self.sign_path,
                };
                let fresh = ca::read(
                    &self.shared,
                    &self.issuer,
                    &source,
                    Purpose::HealthCheck,
                    Timestamp::now(),
                )
                .await?;
                binding::check_chain(&label, certificate.clone(), chain, &fresh.issuing()).map_err(not_bound)?
            }
            bound => bound,
        };
        match verdict {
            ChainVerdict::Bound(issued) => {
                if shortened {
                    info!(
                        issuer = %self.issuer,
                        not_after = %certificate.not_after(),
                        planned = %plan.not_after,
                        warnings = %vault_warnings(&answer),
                        "Vault issued a shorter lifetime than planned (its mount's max_lease_ttl caps the ttl)"
                    );
                }
                Ok(SignOutcome::Issued(issued))
            }
            ChainVerdict::ForeignChain(detail) => Err(not_bound(binding::Unbound { check: "chain", detail })),
        }
    }
}

/// Whether the CSR itself carries exactly the constraints the plan wants (then Vault copies
/// them with `use_csr_values`), or the failure that says why Vault cannot make them.
fn constraints_from_csr(csr: &CertificateSigningRequest, wanted: &NameConstraints) -> Result<bool, BackendError> {
    let carried = csr
        .requested_extension(name_constraints::OID_STRING)
        .map(|der| NameConstraints::from_der(&der));
    match carried {
        Some(Ok(carried)) if carried.same_as(wanted) => Ok(true),
        other => {
            let found = match other {
                Some(Ok(carried)) => format!("the CSR asks for different ones ({})", carried.describe()),
                Some(Err(e)) => format!("the CSR's NameConstraints extension cannot be read: {e}"),
                None => "the CSR carries none".to_string(),
            };
            Err(BackendError::permanent(
                reason::NAME_CONSTRAINTS_UNSUPPORTED,
                format!(
                    "the policy requires name constraints ({}), which Vault's sign-intermediate cannot add (no URI name constraints; OpenBao 2.7.2 ignores permitted_uri_domains), and {found}; nothing was signed. Put exactly these constraints into the CSR (cert-manager Certificate spec.nameConstraints) so Vault copies them, or set spec.policy.nameConstraints.mode None",
                    wanted.describe()
                ),
            ))
        }
    }
}

/// The body of the sign-intermediate call. Pure.
fn parameters(
    csr: &CertificateSigningRequest,
    path_len: u8,
    not_after: Timestamp,
    now: Timestamp,
    use_csr_values: bool,
) -> Value {
    let pem = crate::pki::pem::encode(crate::pki::pem::CERTIFICATE_REQUEST, csr.der());
    // Whole seconds up to the planned notAfter (at least one): Vault adds the TTL to its clock.
    let ttl = not_after.duration_since(now).as_secs().max(1);
    let mut body = json!({
        "csr": pem,
        "format": "pem",
        "ttl": format!("{ttl}s"),
        "max_path_length": path_len,
        "exclude_cn_from_sans": true,
        "use_csr_values": use_csr_values,
    });
    if use_csr_values {
        // Subject, SANs and extensions come from the CSR itself.
        return body;
    }
    // Lists go as Vault's own clients send them, comma-joined: ACL policies match parameter
    // values with globs (`allowed_parameters`), and OpenBao 2.7.2 matches a JSON array against
    // none of them. Only a list with a comma inside a value (an organization "Example, Inc.")
    // goes as an array, which Vault does not split.
    let subject = csr.subject_attributes();
    let sans = |want: fn(&SubjectAltName) -> Option<String>| csr.sans.iter().filter_map(want).collect::<Vec<_>>();
    let fields = [
        ("common_name", subject.common_name.into_iter().collect()),
        ("organization", subject.organization),
        ("ou", subject.organizational_unit),
        ("country", subject.country),
        ("locality", subject.locality),
        ("province", subject.province),
        (
            "uri_sans",
            sans(|s| match s {
                SubjectAltName::Uri(uri) => Some(uri.clone()),
                _ => None,
            }),
        ),
        (
            "alt_names",
            sans(|s| match s {
                SubjectAltName::Dns(name) | SubjectAltName::Email(name) => Some(name.clone()),
                _ => None,
            }),
        ),
        (
            "ip_sans",
            sans(|s| match s {
                SubjectAltName::Ip(ip) => Some(ip.to_string()),
                _ => None,
            }),
        ),
    ];
    for (name, values) in fields {
        if values.is_empty() {
            continue;
        }
        body[name] = match values.iter().any(|v| v.contains(',')) {
            false => Value::String(values.join(",")),
            true => json!(values),
        };
    }
    body
}

/// The certificate and the chain above it (issuing CA up to the root) from Vault's answer.
fn issued(answer: &Value) -> Result<(Certificate, Vec<Certificate>), String> {
    let data = &answer["data"];
    let parse =
        |pem: &str, what: &'static str| Certificate::parse_pem_bundle(pem.as_bytes(), what).map_err(|e| e.to_string());
    let certificate = data["certificate"]
        .as_str()
        .ok_or("the answer carries no data.certificate")?;
    let certificate = parse(certificate, "data.certificate")?.remove(0);
    // `ca_chain` is the certificate followed by its issuer's chain; older servers give only
    // `issuing_ca`.
    let mut chain = Vec::new();
    match data["ca_chain"].as_array() {
        Some(pems) => {
            for pem in pems.iter().filter_map(Value::as_str) {
                chain.extend(parse(pem, "data.ca_chain")?);
            }
            if chain.first() == Some(&certificate) {
                chain.remove(0);
            }
        }
        None => {
            let issuing = data["issuing_ca"]
                .as_str()
                .ok_or("the answer carries no data.ca_chain or data.issuing_ca")?;
            chain = parse(issuing, "data.issuing_ca")?;
        }
    }
    Ok((certificate, chain))
}

fn vault_warnings(answer: &Value) -> String {
    answer["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; "))
        .unwrap_or_default()
}

/// One client per issuer, rebuilt when the server, namespace or CA bundle changes (building
/// one reads the system's roots).
fn client_for(
    shared: &Shared,
    scope: &IssuerScope,
    server: &Server,
    namespace: Option<&str>,
    bundle: Option<(Vec<u8>, String)>,
) -> Result<Arc<VaultClient>, String> {
    let fingerprint = bundle
        .as_ref()
        .map(|(pem, source)| format!("{source}:{}", crate::pki::sha256_fingerprint(pem)))
        .unwrap_or_else(|| "system".into());
    let key = format!("{}|{}|{fingerprint}", server.base, namespace.unwrap_or(""));
    if let Some((cached_key, client)) = shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&scope.display)
        && *cached_key == key
    {
        return Ok(client.clone());
    }
    let client = Arc::new(VaultClient::new(
        server,
        bundle.as_ref().map(|(pem, _)| pem.as_slice()),
        namespace,
    )?);
    shared
        .clients
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(scope.display.clone(), (key, client.clone()));
    Ok(client)
}

impl Signer for VaultSigner {
    fn backend_name(&self) -> &'static str {
        "vault"
    }

    fn ca(&self) -> &CaInfo {
        &self.info
    }

    fn sub_ca_room(&self) -> SubCaRoom {
        self.room.clone()
    }

    fn repeats_on_retry(&self) -> bool {
        true
    }

    fn sign<'a>(&'a self, request: SignRequest<'a>) -> BoxFuture<'a, Result<SignOutcome, BackendError>> {
        // A backend_ref (a PCA certificate ARN annotation) means nothing to Vault: every
        // call signs.
        Box::pin(async move {
            let outcome = self.issue(&request).await;
            if let Err(e) = &outcome
                && e.may_have_signed
            {
                warn!(issuer = %self.issuer, error = %e.message, "Vault's answer to a signing was lost; a retry signs again");
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::issuer::{SecretKeySelector, VaultAuth};
    use crate::pki::name_constraints::Subtree;
    use crate::pki::sign::tests::istiod_csr;

    fn spec() -> Vault {
        Vault {
            server: "https://vault.example:8200".into(),
            path: "pki/root/sign-intermediate".into(),
            auth: VaultAuth {
                token_secret_ref: Some(SecretKeySelector {
                    name: "t".into(),
                    key: None,
                }),
                ..VaultAuth::default()
            },
            ..Vault::default()
        }
    }

    #[test]
    fn a_spec_names_one_auth_method_and_one_ca_bundle() {
        assert!(validate(&spec()).is_ok());
        let mut none = spec();
        none.auth = VaultAuth::default();
        assert!(validate(&none).unwrap_err().contains("exactly one of"));
        let mut both = spec();
        both.ca_bundle = Some(k8s_openapi::ByteString(b"x".to_vec()));
        both.ca_bundle_secret_ref = Some(SecretKeySelector {
            name: "b".into(),
            key: None,
        });
        assert!(
            validate(&both)
                .unwrap_err()
                .contains("both caBundle and caBundleSecretRef")
        );
        let mut plain = spec();
        plain.server = "http://vault.example:8200".into();
        assert!(validate(&plain).unwrap_err().contains("in clear"));
    }

    #[test]
    fn parameters_carry_the_csrs_names_and_the_plans_path_length_and_lifetime() {
        let csr = istiod_csr();
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let body = parameters(&csr, 0, now + jiff::SignedDuration::from_hours(2160), now, false);
        assert_eq!(body["ttl"], "7776000s");
        assert_eq!(body["max_path_length"], 0);
        assert_eq!(body["common_name"], "istiod intermediate");
        assert_eq!(body["organization"], "cluster.local");
        assert_eq!(body["uri_sans"], "spiffe://cluster.local/ns/istio-system/sa/istiod");
        assert_eq!(body["exclude_cn_from_sans"], true);
        assert_eq!(body["use_csr_values"], false);
        assert!(
            body.get("alt_names").is_none() && body.get("ip_sans").is_none(),
            "{body}"
        );
        assert!(
            body["csr"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        // With the CSR's own values, nothing else is sent that Vault would ignore anyway.
        let body = parameters(&csr, 1, now + jiff::SignedDuration::from_secs(10), now, true);
        assert_eq!(
            (body["ttl"].as_str(), body["use_csr_values"].as_bool()),
            (Some("10s"), Some(true))
        );
        assert!(body.get("uri_sans").is_none(), "{body}");
    }

    #[test]
    fn name_constraints_the_csr_does_not_carry_fail_before_vault_is_called() {
        let wanted = NameConstraints {
            permitted: vec![Subtree::Uri("cluster.local".into())],
            excluded: vec![],
        };
        let e = constraints_from_csr(&istiod_csr(), &wanted).unwrap_err();
        assert_eq!(
            (e.kind, e.reason),
            (
                crate::backend::FailureKind::Permanent,
                reason::NAME_CONSTRAINTS_UNSUPPORTED
            )
        );
        assert!(
            e.message.contains("the CSR carries none") && e.message.contains("nothing was signed"),
            "{}",
            e.message
        );
    }
}
