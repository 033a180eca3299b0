//! `spec.policy.nameConstraints` of both issuer kinds, and how the constraints a certificate
//! carries are shown in status (`IstioCACerts` `status.intermediate.nameConstraints`).
//!
//! With a mode other than `None`, every intermediate the issuer signs carries a critical X.509
//! NameConstraints extension whose permitted URI subtrees are the SPIFFE trust domains it is
//! for: its key can then mint workload identities of those trust domains only.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether and how signed intermediates are name-constrained to their trust domains.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameConstraintsPolicy {
    /// `None` (default): intermediates carry no name constraints. `TrustDomain`: every signed
    /// intermediate carries a critical NameConstraints extension whose permitted URI subtrees are
    /// exactly the trust domains of the CSR's `spiffe://` URI SANs (which must be allowed by
    /// `allowedTrustDomains`), or the issuer's default trust domain when the CSR has none.
    /// `Required`: like `TrustDomain`, but a CSR without a `spiffe://` URI SAN is Failed.
    #[serde(default)]
    pub mode: NameConstraintsMode,
    /// DNS domains added as permitted DNS subtrees (e.g. `istio-system.svc`). Leave empty to keep
    /// DNS names unconstrained: istiod signs its own serving certificate (DNS SANs such as
    /// `istiod.istio-system.svc`) with the intermediate, so a DNS subtree must cover those names.
    #[serde(default, rename = "permittedDNSDomains", skip_serializing_if = "Vec::is_empty")]
    pub permitted_dns_domains: Vec<String>,
    /// Host or domain names added as excluded URI subtrees. A leading dot (`.cluster.local`)
    /// excludes every host below the domain but not the domain itself.
    #[serde(default, rename = "excludedURIDomains", skip_serializing_if = "Vec::is_empty")]
    pub excluded_uri_domains: Vec<String>,
}

impl NameConstraintsPolicy {
    /// True when intermediates get name constraints.
    pub fn enabled(&self) -> bool {
        self.mode != NameConstraintsMode::None
    }
}

/// See [`NameConstraintsPolicy::mode`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NameConstraintsMode {
    #[default]
    None,
    TrustDomain,
    Required,
}

/// The NameConstraints extension of a certificate, as shown in status. Subtrees are written as
/// openssl prints them: `URI:cluster.local`, `DNS:istio-system.svc`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NameConstraintsSummary {
    /// Whether the extension is marked critical.
    pub critical: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permitted: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}
