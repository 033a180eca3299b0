//! MeshCAIssuers as the tests make them, written once: a local root bootstrapped into a
//! Secret (a root already in that Secret is used as it is), or one an operator put there,
//! created and waited on until Ready.

use std::time::Duration;

use kube::api::{Api, PostParams};
use mesh_ca_issuer::api::issuer::{IssuancePolicy, IssuerSpec, LocalCA, MeshCAIssuer, RootBootstrap};

/// The default local-root issuer spec (bootstrapped root in `secret`).
pub fn bootstrapped(secret: &str) -> IssuerSpec {
    IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: secret.into(),
            bootstrap: Some(RootBootstrap::default()),
        }),
        ..Default::default()
    }
}

/// A local CA whose certificate and key an operator put in `secret` (no bootstrap: a Secret
/// without them leaves the issuer not Ready).
pub fn from_secret(secret: &str) -> IssuerSpec {
    IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: secret.into(),
            bootstrap: None,
        }),
        ..Default::default()
    }
}

/// A local root bootstrapped into `secret` for `root_duration`, issuing under `policy`.
pub fn bootstrapped_for(secret: &str, root_duration: &str, policy: IssuancePolicy) -> IssuerSpec {
    IssuerSpec {
        local_ca: Some(LocalCA {
            secret_name: secret.into(),
            bootstrap: Some(RootBootstrap {
                duration: root_duration.into(),
                ..Default::default()
            }),
        }),
        policy,
        ..Default::default()
    }
}

/// At most a year: the policy of the issuers behind istiod's intermediate in the rotation tests.
pub fn a_year_at_most() -> IssuancePolicy {
    IssuancePolicy {
        max_duration: "8760h".into(),
        ..Default::default()
    }
}

/// Creates MeshCAIssuer `name` with `spec`, without waiting: for tests that watch what its
/// Ready condition becomes.
pub async fn create(api: &Api<MeshCAIssuer>, name: &str, spec: IssuerSpec) {
    api.create(&PostParams::default(), &MeshCAIssuer::new(name, spec))
        .await
        .unwrap_or_else(|e| panic!("creating MeshCAIssuer {name}: {e}"));
}

/// Creates MeshCAIssuer `name` with a root of its own bootstrapped into `<name>-root`, and
/// waits until it is Ready: the issuer most tests just need to exist.
pub async fn create_ready_with_own_root(api: &Api<MeshCAIssuer>, name: &str, timeout: Duration) {
    create_ready(api, name, bootstrapped(&format!("{name}-root")), timeout).await;
}

/// Creates MeshCAIssuer `name` with `spec` and waits until it is Ready.
pub async fn create_ready(api: &Api<MeshCAIssuer>, name: &str, spec: IssuerSpec, timeout: Duration) {
    create(api, name, spec).await;
    super::wait_issuer(api, name, "True", timeout).await;
}
