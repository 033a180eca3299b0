//! The controllers and what they share: one [`Context`] handed to every reconcile, and [`run`],
//! which starts the admin listener and every controller and serves until shutdown.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::api::cert_manager::CertificateRequest;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Everything a reconcile needs besides the object itself.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

/// Builds a client from `--kubeconfig`, else `$KUBECONFIG`/`~/.kube/config`, else in-cluster.
pub async fn client_from(config: &Config) -> Result<Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    Client::try_from(kube_config).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// Runs the admin listener and the controllers until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let client = client_from(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let (admin_address, admin_server) = admin::bind(
        config.metrics_listen_address,
        readiness.clone(),
        metrics.clone(),
    )
    .await
    .map_err(|source| Error::AdminListener {
        address: config.metrics_listen_address,
        source,
    })?;
    info!(%admin_address, "serving /healthz, /readyz and /metrics");
    let admin_task = tokio::spawn(admin_server);

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    let mut stop = shutdown_rx.clone();
    tokio::select! {
        _ = wait_for_crds(&client) => {}
        _ = stop.wait_for(|stop| *stop) => {
            admin_task.abort();
            return Ok(());
        }
    }

    let ctx = Arc::new(Context {
        client: client.clone(),
        config: config.clone(),
        metrics: metrics.clone(),
    });
    let requests: Api<CertificateRequest> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let controller = Controller::new(requests, watcher::Config::default());
    let store = controller.store();
    let mut graceful = shutdown_rx.clone();
    let controller = controller
        .graceful_shutdown_on(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        })
        .run(reconcile_request, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "certificaterequest reconcile failed");
            }
        });

    let readiness_task = {
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        async move {
            if store.wait_until_ready().await.is_ok() {
                readiness.set_ready(true);
                metrics.ready.set(1);
                info!("watch caches synced; ready");
            }
        }
    };
    tokio::join!(controller, readiness_task);
    readiness.set_ready(false);
    admin_task.abort();
    info!("controllers stopped");
    Ok(())
}

/// The API resources we cannot work without, and what to do when one is missing.
const REQUIRED_RESOURCES: &[(&str, &str, &str)] = &[
    (
        "cert-manager.io/v1",
        "certificaterequests",
        "install cert-manager (its CRDs) first",
    ),
    (
        "meshca.io/v1alpha1",
        "meshcaissuers",
        "install mesh-ca-issuer's CRDs (the Helm chart or `crdgen | kubectl apply -f -`)",
    ),
];

/// Waits until every required resource is served, saying every 10 s which is missing and what
/// to do. Readiness stays false meanwhile.
async fn wait_for_crds(client: &Client) {
    loop {
        let mut missing = Vec::new();
        for (group_version, plural, fix) in REQUIRED_RESOURCES {
            let served = match client.list_api_group_resources(group_version).await {
                Ok(list) => list.resources.iter().any(|r| r.name == *plural),
                Err(_) => false,
            };
            if !served {
                missing.push(format!("{plural}.{group_version} is not served: {fix}"));
            }
        }
        if missing.is_empty() {
            return;
        }
        for m in &missing {
            warn!("{m}");
        }
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    }
}

async fn reconcile_request(
    cr: Arc<CertificateRequest>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics
        .count_reconcile("certificaterequest", "observed");
    tracing::debug!(name = %kube::ResourceExt::name_any(cr.as_ref()), "observed certificaterequest");
    Ok(Action::await_change())
}

fn error_policy(_cr: Arc<CertificateRequest>, error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(error.requeue_after())
}
