//! The controllers and what they share: one [`Context`] handed to every reconcile, and [`run`],
//! which starts the admin listener and every controller and serves until shutdown.
//!
//! Controllers: CertificateRequests (the external-issuer contract), MeshCAIssuers and
//! ClusterMeshCAIssuers (issuer health). Requests watch issuers, issuers watch Secrets, so a
//! fix anywhere along the chain reaches the waiting requests without anyone touching them.

pub mod admission;
pub mod cache;
pub mod certificate_request;
pub mod issuer;
pub mod istio_cacerts;
pub mod retry;
pub mod triggers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::api::cert_manager::{Certificate as CertManagerCertificate, CertificateRequest};
use crate::api::issuer::{ClusterMeshCAIssuer, MeshCAIssuer};
use crate::api::istio_cacerts::IstioCACerts;
use crate::backend::{Backends, aws_pca};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lease::{self, ElectionConfig, Leadership};
use crate::metrics::{ISSUER_CA_KIND, Metrics, OwnerExists, SeriesOwner};
use certificate_request::IssuerKind;
use issuer::IssuerObject;
use retry::RetryTracker;

/// Everything a reconcile needs besides the object itself.
pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// `reportingInstance` of our events: the pod's name.
    reporting_instance: String,
    pub retries: RetryTracker,
    pub backends: Backends,
    /// Only the leader acts; standbys keep their caches warm and do nothing else.
    pub leadership: Leadership,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, leadership: Leadership) -> Self {
        let reporting_instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| crate::FIELD_MANAGER.to_string());
        let pca = aws_pca::Shared::new(
            config.aws_pca_issue_rate,
            config.aws_pca_issue_burst,
            config.issuer_recheck_interval,
        );
        let backends = Backends {
            kube: client.clone(),
            pca: Arc::new(pca),
            ambient: config.ambient_policy(),
        };
        let retries = RetryTracker::new(config.retry_backoff_initial, config.retry_backoff_max);
        Self {
            client,
            config,
            metrics,
            reporting_instance,
            retries,
            backends,
            leadership,
        }
    }

    /// Publishes an event; a failure to do so is logged, never fails the reconcile.
    pub async fn publish_event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // Events about cluster-scoped objects (ClusterMeshCAIssuers) go to kube-system: the one
        // namespace every Kubernetes version accepts for them (1.20 rejects "default").
        let namespace = reference
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("kube-system");
        if let Err(e) = self
            .create_event(namespace, reference, type_, reason, action, &note)
            .await
        {
            warn!(error = %e, %reason, "could not publish event");
        }
    }

    /// Creates one event. Not kube-runtime's `Recorder`: it keeps every event it published for
    /// six minutes to count repeats, and scans that whole cache under one lock on every publish,
    /// so a burst of N requests cost O(N²) and held N events in memory. Ours are emitted once
    /// per condition change, so there are no repeats to count.
    async fn create_event(
        &self,
        namespace: &str,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let now = jiff::Timestamp::now();
        let name = reference
            .name
            .clone()
            .unwrap_or_else(|| crate::FIELD_MANAGER.to_string());
        let event = K8sEvent {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}.{:x}", now.as_nanosecond())),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note.to_string()),
            regarding: Some(reference.clone()),
            reporting_controller: Some(crate::FIELD_MANAGER.to_string()),
            reporting_instance: Some(self.reporting_instance.clone()),
            type_: Some(match type_ {
                EventType::Normal => "Normal".to_string(),
                EventType::Warning => "Warning".to_string(),
            }),
            ..K8sEvent::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        api.create(&kube::api::PostParams::default(), &event).await.map(|_| ())
    }
}

/// Builds a client from `--kubeconfig`, else `$KUBECONFIG`/`~/.kube/config`, else in-cluster.
pub async fn client_from(config: &Config) -> Result<Client> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::KubeConfig(e.to_string()))?,
    };
    Client::try_from(kube_config).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// An `Api` for a namespaced kind, limited to `--namespace` when set.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The Secret APIs to watch: `--namespace`, else `--secret-namespaces`, else cluster-wide.
/// Metadata only: a Secret change is a trigger, mapped by name and namespace; the reads that
/// use a Secret's data fetch it then, so no Secret is decoded or held just because it exists.
fn secret_apis(client: &Client, config: &Config) -> Vec<Api<PartialObjectMeta<Secret>>> {
    if let Some(ns) = &config.namespace {
        return vec![Api::namespaced(client.clone(), ns)];
    }
    if config.secret_namespaces.is_empty() {
        return vec![Api::all(client.clone())];
    }
    config
        .secret_namespaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect()
}

/// The Certificate APIs to watch: `--namespace`, else the `--istio-namespaces`, where istiod's
/// intermediate (and so the Certificate an IstioCACerts follows) lives; the chart grants
/// Certificate reads there and nowhere else.
fn certificate_apis(client: &Client, config: &Config) -> Vec<Api<CertManagerCertificate>> {
    if let Some(ns) = &config.namespace {
        return vec![Api::namespaced(client.clone(), ns)];
    }
    config
        .istio_namespaces
        .iter()
        .map(|ns| Api::namespaced(client.clone(), ns))
        .collect()
}

/// Runs the admin listener and the controllers until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let client = client_from(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let (admin_address, admin_server) = admin::bind(config.metrics_listen_address, readiness.clone(), metrics.clone())
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
    let stopped = {
        let rx = shutdown_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        }
    };
    tokio::select! {
        _ = wait_for_crds(&client) => {}
        _ = stopped() => {
            admin_task.abort();
            return Ok(());
        }
    }

    let (leadership, election_task) = if config.leader_elect {
        let identity = format!(
            "{}_{}",
            std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| "mesh-ca-issuer".into()),
            crate::pki::hex(&random_bytes::<4>())
        );
        let election = ElectionConfig {
            namespace: config.leader_election_namespace(),
            name: config.leader_election_id.clone(),
            identity,
            lease_duration: config.leader_election_lease_duration,
            renew_deadline: config.leader_election_renew_deadline,
            retry_period: config.leader_election_retry_period,
        };
        info!(lease = %format!("{}/{}", election.namespace, election.name), identity = %election.identity, "leader election on");
        let (leadership, task) = lease::start(client.clone(), election, shutdown_rx.clone());
        (leadership, Some(task))
    } else {
        (Leadership::always(), None)
    };
    {
        let metrics = metrics.clone();
        let mut changes = leadership.changes();
        metrics.leader.set(i64::from(*changes.borrow()));
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                metrics.leader.set(i64::from(*changes.borrow()));
            }
        });
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
        leadership,
    ));
    let namespace = config.namespace.as_deref();
    let cluster_issuers_enabled = namespace.is_none();

    // === CertificateRequests, re-queued when the issuer they wait on changes ===
    // The cache keeps only what decisions read (no CSRs, chains or CAs, ours or foreign):
    // see `cache`. Signing reads the request afresh anyway.
    let (request_store, request_writer) = reflector::store();
    let request_events = reflector::reflector(
        request_writer,
        watcher(
            scoped::<CertificateRequest>(&client, namespace),
            watcher::Config::default(),
        )
        .modify(cache::slim_request),
    )
    .applied_objects();
    let requests = Controller::for_stream(request_events, request_store.clone());
    let mut requests = requests.watches(
        scoped::<MeshCAIssuer>(&client, namespace),
        watcher::Config::default(),
        {
            let store = request_store.clone();
            move |issuer: MeshCAIssuer| {
                if !triggers::issuer_change_wakes_requests(issuer.status.as_ref(), issuer.metadata.generation) {
                    return Vec::new();
                }
                certificate_request::requests_waiting_on(
                    &store,
                    IssuerKind::Namespaced,
                    issuer.namespace().as_deref(),
                    &issuer.name_any(),
                )
            }
        },
    );
    if cluster_issuers_enabled {
        requests = requests.watches(
            Api::<ClusterMeshCAIssuer>::all(client.clone()),
            watcher::Config::default(),
            {
                let store = request_store.clone();
                move |issuer: ClusterMeshCAIssuer| {
                    if !triggers::issuer_change_wakes_requests(issuer.status.as_ref(), issuer.metadata.generation) {
                        return Vec::new();
                    }
                    certificate_request::requests_waiting_on(&store, IssuerKind::Cluster, None, &issuer.name_any())
                }
            },
        );
    }
    let requests = requests
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrent_workers))
        .reconcile_all_on(leadership_gained(&ctx.leadership))
        .graceful_shutdown_on(stopped())
        .run(certificate_request::reconcile, error_policy, ctx.clone())
        .for_each(|result| async move { log_failure("certificaterequest", result) })
        .boxed();

    // === Issuers, re-checked when their CA Secret changes ===
    let (namespaced_issuers, namespaced_issuer_store) = issuer_controller(
        Controller::new(scoped::<MeshCAIssuer>(&client, namespace), watcher::Config::default()),
        &client,
        &config,
        |issuer: &MeshCAIssuer, secret: &PartialObjectMeta<Secret>, _| issuer.namespace() == secret.namespace(),
        stopped(),
        ctx.clone(),
    );
    let mut tasks = vec![requests, namespaced_issuers];
    let mut stores_ready = vec![
        wait_ready(request_store.clone()).boxed(),
        wait_ready(namespaced_issuer_store.clone()).boxed(),
    ];
    let mut cluster_issuer_cache = None;
    if cluster_issuers_enabled {
        let (cluster_issuers, cluster_issuer_store) = issuer_controller(
            Controller::new(
                Api::<ClusterMeshCAIssuer>::all(client.clone()),
                watcher::Config::default(),
            ),
            &client,
            &config,
            |_: &ClusterMeshCAIssuer, secret: &PartialObjectMeta<Secret>, cluster_resource_namespace: &str| {
                secret.namespace().as_deref() == Some(cluster_resource_namespace)
            },
            stopped(),
            ctx.clone(),
        );
        tasks.push(cluster_issuers);
        stores_ready.push(wait_ready(cluster_issuer_store.clone()).boxed());
        cluster_issuer_cache = Some(cluster_issuer_store);
    }

    // === IstioCACerts, re-checked when its Secrets, Certificate or issuer change ===
    let (cacerts_task, cacerts_store) =
        istio_cacerts_controller(&client, &config, cluster_issuers_enabled, stopped(), ctx.clone());
    tasks.push(cacerts_task);
    stores_ready.push(wait_ready(cacerts_store.clone()).boxed());
    metrics.track_owners(series_owner_exists(
        namespaced_issuer_store,
        cluster_issuer_cache,
        cacerts_store,
    ));

    // Ready only once every watch cache has its initial list: decisions need the whole picture.
    let readiness_task = {
        let readiness = readiness.clone();
        let metrics = metrics.clone();
        async move {
            futures::future::join_all(stores_ready).await;
            readiness.set_ready(true);
            metrics.ready.set(1);
            info!(cluster_issuers = cluster_issuers_enabled, "watch caches synced; ready");
        }
    };
    tokio::join!(futures::future::join_all(tasks), readiness_task);
    readiness.set_ready(false);
    // Give the Lease back so a standby takes over at once (bounded: a stuck API server must not
    // hold up the shutdown).
    if let Some(task) = election_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    admin_task.abort();
    info!("controllers stopped");
    Ok(())
}

/// Whether the object behind a certificate series still exists, from the watch caches: the
/// metrics drop a deleted object's series with it.
fn series_owner_exists(
    namespaced_issuers: Store<MeshCAIssuer>,
    cluster_issuers: Option<Store<ClusterMeshCAIssuer>>,
    istio_cacerts: Store<IstioCACerts>,
) -> OwnerExists {
    Box::new(
        move |owner: &SeriesOwner| match (owner.kind.as_str(), owner.namespace.as_str()) {
            // `observe_issuer_ca` exports a cluster issuer with an empty namespace.
            (ISSUER_CA_KIND, "") => cluster_issuers
                .as_ref()
                .is_some_and(|store| store.get(&ObjectRef::new(&owner.name)).is_some()),
            (ISSUER_CA_KIND, namespace) => namespaced_issuers
                .get(&ObjectRef::new(&owner.name).within(namespace))
                .is_some(),
            // Everything else is tracked by an IstioCACerts.
            (_, namespace) => istio_cacerts
                .get(&ObjectRef::new(&owner.name).within(namespace))
                .is_some(),
        },
    )
}

/// References to the cached objects for which `wanted` holds: what a watch mapper answers.
pub(crate) fn cached_refs<K>(store: &Store<K>, wanted: impl Fn(&K) -> bool) -> Vec<ObjectRef<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|object| wanted(object))
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

async fn wait_ready<K: kube::Resource + Clone>(store: Store<K>) -> ()
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let _ = store.wait_until_ready().await;
}

/// Wires an issuer controller: its reconcile, and Secret watches mapped to the issuers whose
/// `localCA.secretName` names the Secret (and whose scope covers its namespace).
fn issuer_controller<K: IssuerObject>(
    controller: Controller<K>,
    client: &Client,
    config: &Config,
    in_scope: fn(&K, &PartialObjectMeta<Secret>, &str) -> bool,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
) -> (futures::future::BoxFuture<'static, ()>, Store<K>) {
    let store = controller.store();
    let mut controller = controller;
    for secrets in secret_apis(client, config) {
        let store = store.clone();
        let cluster_resource_namespace = config.cluster_resource_namespace.clone();
        controller = controller.watches(
            secrets,
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                let name = secret.name_any();
                cached_refs(&store, |issuer| {
                    let spec = issuer.spec();
                    let names_it = spec.local_ca.as_ref().is_some_and(|l| l.secret_name == name)
                        || spec
                            .aws_pca
                            .as_ref()
                            .and_then(|p| p.credentials_secret_ref.as_ref())
                            .is_some_and(|r| r.name == name);
                    names_it && in_scope(issuer, &secret, &cluster_resource_namespace)
                })
            },
        );
    }
    let task = controller
        .reconcile_all_on(leadership_gained(&ctx.leadership))
        .graceful_shutdown_on(stopped)
        .run(issuer::reconcile::<K>, error_policy, ctx)
        .for_each(|result| async move { log_failure(K::KIND, result) })
        .boxed();
    (task, store)
}

/// Wires the IstioCACerts controller: Secrets map to the IstioCACerts naming them as source or
/// target, Certificates to those whose source is the Certificate's Secret, and any issuer
/// change re-checks every IstioCACerts (few objects; their backend CA may have changed).
fn istio_cacerts_controller(
    client: &Client,
    config: &Config,
    cluster_issuers_enabled: bool,
    stopped: impl Future<Output = ()> + Send + Sync + 'static,
    ctx: Arc<Context>,
) -> (futures::future::BoxFuture<'static, ()>, Store<IstioCACerts>) {
    let namespace = config.namespace.as_deref();
    let controller = Controller::new(scoped::<IstioCACerts>(client, namespace), watcher::Config::default());
    let store = controller.store();
    let mut controller = controller;
    for secrets in secret_apis(client, config) {
        let store = store.clone();
        controller = controller.watches(
            secrets,
            watcher::Config::default(),
            move |secret: PartialObjectMeta<Secret>| {
                let name = secret.name_any();
                cached_refs(&store, |i| {
                    i.namespace() == secret.namespace()
                        && (i.spec.source_secret_name == name || i.spec.target_secret_name == name)
                })
            },
        );
    }
    for certificates in certificate_apis(client, config) {
        let store = store.clone();
        controller = controller.watches(certificates, watcher::Config::default(), {
            move |certificate: CertManagerCertificate| {
                cached_refs(&store, |i| {
                    i.namespace() == certificate.namespace()
                        && i.spec.source_secret_name == certificate.spec.secret_name
                })
            }
        });
    }
    controller = controller.watches(scoped::<MeshCAIssuer>(client, namespace), watcher::Config::default(), {
        let store = store.clone();
        move |_: MeshCAIssuer| cached_refs(&store, |_| true)
    });
    if cluster_issuers_enabled {
        let store = store.clone();
        controller = controller.watches(
            Api::<ClusterMeshCAIssuer>::all(client.clone()),
            watcher::Config::default(),
            move |_: ClusterMeshCAIssuer| cached_refs(&store, |_| true),
        );
    }
    let task = controller
        .reconcile_all_on(leadership_gained(&ctx.leadership))
        .graceful_shutdown_on(stopped)
        .run(istio_cacerts::reconcile, error_policy, ctx)
        .for_each(|result| async move { log_failure("istiocacerts", result) })
        .boxed();
    (task, store)
}

/// Logs a failed reconcile. A conflict (someone wrote first; it is decided again at once) is
/// routine, not a warning.
fn log_failure<T, E: std::fmt::Display>(
    controller: &str,
    result: Result<T, kube::runtime::controller::Error<Error, E>>,
) {
    match result {
        Ok(_) => {}
        Err(kube::runtime::controller::Error::ReconcilerFailed(e, object)) if e.is_conflict() => {
            tracing::debug!(controller, object = %object, error = %e, "conflict; deciding again");
        }
        Err(e) => warn!(controller, error = %e, "reconcile failed"),
    }
}

/// Yields once each time this replica becomes the leader: a new leader looks at everything.
fn leadership_gained(leadership: &Leadership) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::unfold(leadership.changes(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow() {
                return Some(((), rx));
            }
        }
    })
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // A less random identity suffix is still a valid one.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    bytes
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
    (
        "meshca.io/v1alpha1",
        "istiocacerts",
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
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Infrastructure errors (API server unreachable, conflicts) are retried; a 409 at once.
fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(error.requeue_after())
}
