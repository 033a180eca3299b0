//! The controllers and what they share: one [`Context`] handed to every reconcile, and [`run`],
//! which starts the admin listener and every controller and serves until shutdown.
//!
//! Controllers: CertificateRequests (the external-issuer contract), MeshCAIssuers and
//! ClusterMeshCAIssuers (issuer health). Requests watch issuers, issuers watch Secrets, so a
//! fix anywhere along the chain reaches the waiting requests without anyone touching them.

pub mod admission;
pub mod cache;
pub mod certificate_request;
pub mod events;
pub mod issuer;
pub mod istio_cacerts;
pub mod retry;
pub mod superseded;
pub mod triggers;
pub mod trust_anchors;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::admin::{self, Readiness};
use crate::api::cert_manager::{Certificate as CertManagerCertificate, CertificateRequest};
use crate::api::issuer::{ClusterMeshCAIssuer, MeshCAIssuer};
use crate::api::istio_cacerts::IstioCACerts;
use crate::backend::{Backends, aws_pca, vault};
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
    pub retries: RetryTracker,
    /// Copies of requests our own writes replaced: never signed.
    pub superseded: superseded::Superseded,
    pub backends: Backends,
    /// Only the leader acts; standbys keep their caches warm and do nothing else.
    pub leadership: Leadership,
    /// Back-off of reconciles that failed (API errors, failed writes), per object.
    pub failures: RetryTracker,
    /// Transient check failures of Ready issuers inside their grace window.
    pub issuer_blips: issuer::Blips,
    /// Our events, and those the API server refused, sent again before the object's next reconcile.
    events: events::EventQueue,
    /// The issuers as the request controller's issuer watches last saw them.
    pub issuers: IssuerCaches,
}

/// Issuer caches filled by the watches that wake the requests waiting on an issuer: the
/// reflector stores each change before the change wakes anyone, so a request woken by an
/// issuer change never reads that issuer older than the change. `None` (a context made outside
/// [`run`]) means the issuer is read from the API server instead.
#[derive(Clone, Default)]
pub struct IssuerCaches {
    pub namespaced: Option<Store<MeshCAIssuer>>,
    pub cluster: Option<Store<ClusterMeshCAIssuer>>,
}

/// The key of an object in per-object bookkeeping: kind, namespace and name.
pub(crate) fn object_key(reference: &ObjectReference) -> String {
    format!(
        "{}/{}/{}",
        reference.kind.as_deref().unwrap_or_default(),
        reference.namespace.as_deref().unwrap_or_default(),
        reference.name.as_deref().unwrap_or_default()
    )
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, leadership: Leadership) -> Self {
        let pca = aws_pca::Shared::new(
            config.aws_pca_issue_rate,
            config.aws_pca_issue_burst,
            config.issuer_recheck_interval,
        );
        let vault = vault::Shared::new(
            config.vault_servers.clone(),
            config.service_account_token_file.clone(),
            config.issuer_recheck_interval,
        );
        let backends = Backends {
            kube: client.clone(),
            local_cas: Default::default(),
            pca: Arc::new(pca),
            vault: Arc::new(vault),
            ambient: config.ambient_policy(),
            istio_namespaces: config.istio_namespaces.clone(),
        };
        let retries = RetryTracker::new(config.retry_backoff_initial, config.retry_backoff_max);
        let failures = RetryTracker::new(config.retry_backoff_initial, config.retry_backoff_max);
        Self {
            client,
            config,
            metrics,
            retries,
            superseded: Default::default(),
            backends,
            leadership,
            failures,
            issuer_blips: Default::default(),
            events: events::EventQueue::new(),
            issuers: IssuerCaches::default(),
        }
    }

    /// Has request reconciles read issuers from these caches.
    pub fn with_issuer_caches(mut self, issuers: IssuerCaches) -> Self {
        self.issuers = issuers;
        self
    }
}

/// The client configuration from `--kubeconfig`, else `$KUBECONFIG`/`~/.kube/config`, else
/// in-cluster.
pub async fn kube_config_from(config: &Config) -> Result<kube::Config> {
    match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::KubeConfig(e.to_string())),
    }
}

/// How long any request may take to connect, and a request/response call to answer. Watches
/// have no read timeout (they are idle by nature; kube's watcher guards them); every other call
/// has one, so a hung API server cannot stall a reconcile — or the Lease — for good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a client from `--kubeconfig`, else `$KUBECONFIG`/`~/.kube/config`, else in-cluster,
/// with [`CONNECT_TIMEOUT`]; meant for watches.
pub async fn client_from(config: &Config) -> Result<Client> {
    let mut kube_config = kube_config_from(config).await?;
    kube_config.connect_timeout = Some(CONNECT_TIMEOUT);
    Client::try_from(kube_config).map_err(|e| Error::KubeConfig(e.to_string()))
}

/// A client for request/response calls: connect and read timeouts of `timeout` (at most
/// [`CONNECT_TIMEOUT`] to connect), and, when `fence` is given, writes only while leading.
pub async fn call_client(config: &Config, timeout: Duration, fence: Option<&lease::WriteFence>) -> Result<Client> {
    let mut kube_config = kube_config_from(config).await?;
    kube_config.connect_timeout = Some(timeout.min(CONNECT_TIMEOUT));
    kube_config.read_timeout = Some(timeout);
    kube_config.write_timeout = Some(timeout);
    // The read timeout counts from the request, not from when a pooled connection went idle.
    kube_config.reset_reader_on_write = true;
    let builder = kube::client::ClientBuilder::try_from(kube_config).map_err(|e| Error::KubeConfig(e.to_string()))?;
    Ok(match fence {
        Some(fence) => builder.with_layer(fence).build(),
        None => builder.build(),
    })
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

/// The APIs to watch for objects that live beside istiod: `--namespace`, else the
/// `--istio-namespaces`. Certificates (the intermediate an IstioCACerts follows) and ConfigMaps
/// (trust anchors, published roots) live there, and the chart grants access there only.
fn istio_namespace_apis<K>(client: &Client, config: &Config) -> Vec<Api<K>>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
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
    info!(
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        "mesh-ca-issuer starting"
    );
    let client = client_from(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let admin_task = start_admin(&config, readiness.clone(), metrics.clone()).await?;
    let stop = Stop::on(shutdown);
    tokio::select! {
        _ = wait_for_crds(&client) => {}
        _ = stop.requested() => {
            admin_task.abort();
            return Ok(());
        }
    }
    let (leadership, election_task) = start_leadership(&config, &metrics, &stop).await?;
    let issuer_watches = IssuerWatches::start(&client, config.namespace.as_deref());
    let ctx = Arc::new(
        Context::new(
            call_client(&config, CALL_TIMEOUT, Some(&write_fence(&leadership, &metrics))).await?,
            config.clone(),
            metrics.clone(),
            leadership,
        )
        .with_issuer_caches(issuer_watches.caches()),
    );
    let served = crate::federation::serve::Served::default();
    let (bundle_address, bundle_server) = crate::federation::serve::bind(config.bundle_endpoint_addr, served.clone())
        .await
        .map_err(|source| Error::BundleEndpointListener {
            address: config.bundle_endpoint_addr,
            source,
        })?;
    info!(%bundle_address, "serving SPIFFE bundle endpoints (for IstioCACerts with spec.bundleEndpoint)");
    let bundle_task = tokio::spawn(bundle_server);
    let controllers = start_controllers(&client, &config, issuer_watches, &stop, &ctx, served);
    serve(controllers, &readiness, &metrics).await;
    readiness.set_ready(false);
    // Give the Lease back so a standby takes over at once (bounded: a stuck API server must not
    // hold up the shutdown).
    if let Some(task) = election_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    // Vault tokens the controller logged in for would stay valid until their lease ends:
    // revoke them (best effort, bounded like the Lease release).
    match tokio::time::timeout(Duration::from_secs(5), ctx.backends.vault.revoke_logins()).await {
        Ok(0) => {}
        Ok(revoked) => info!(revoked, "revoked the Vault tokens of this process"),
        Err(_) => warn!("revoking Vault tokens at shutdown took longer than 5s; the rest expire with their lease"),
    }
    bundle_task.abort();
    admin_task.abort();
    info!("controllers stopped");
    Ok(())
}

// === clients and leadership ===

/// Binds the admin listener (/healthz, /readyz, /metrics) and serves it in a task.
async fn start_admin(
    config: &Config,
    readiness: Readiness,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let (admin_address, admin_server) = admin::bind(config.metrics_listen_address, readiness, metrics)
        .await
        .map_err(|source| Error::AdminListener {
            address: config.metrics_listen_address,
            source,
        })?;
    info!(%admin_address, "serving /healthz, /readyz and /metrics");
    Ok(tokio::spawn(admin_server))
}

/// The shutdown signal, for every task that stops on it.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn on(shutdown: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once shutdown is asked for.
    fn requested(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Leader election when `--leader-elect` (else this replica always leads), and the `leader`
/// metric following it.
async fn start_leadership(
    config: &Config,
    metrics: &Arc<Metrics>,
    stop: &Stop,
) -> Result<(Leadership, Option<tokio::task::JoinHandle<()>>)> {
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
        election.validate().map_err(Error::Config)?;
        info!(lease = %format!("{}/{}", election.namespace, election.name), identity = %election.identity, "leader election on");
        // The Lease calls answer within the renew deadline or count as failed.
        let lease_client = call_client(config, config.leader_election_renew_deadline, None).await?;
        let (leadership, task) = lease::start(lease_client, election, stop.0.clone());
        (leadership, Some(task))
    } else {
        (Leadership::always(), None)
    };
    let metrics = metrics.clone();
    let mut changes = leadership.changes();
    metrics.leader.set(i64::from(*changes.borrow()));
    tokio::spawn(async move {
        while changes.changed().await.is_ok() {
            metrics.leader.set(i64::from(*changes.borrow()));
        }
    });
    Ok((leadership, election_task))
}

/// Reconciles read and write through a fenced client: no write leaves this process unless it
/// leads at that very moment.
fn write_fence(leadership: &Leadership, metrics: &Arc<Metrics>) -> lease::WriteFence {
    let metrics = metrics.clone();
    lease::WriteFence::new(
        leadership.clone(),
        Arc::new(move |sent| metrics.count_api_write(if sent { "sent" } else { "refused_not_leader" })),
    )
}

// === watches and caches ===

/// The issuers requests wait on: one watch per kind both fills the cache the issuer gate
/// reads (no API read per signing) and wakes the waiting requests (see `IssuerCaches`).
struct IssuerWatches {
    namespaced: Store<MeshCAIssuer>,
    namespaced_changes: Changes<MeshCAIssuer>,
    /// Only when cluster issuers are served (no `--namespace`).
    cluster: Option<(Store<ClusterMeshCAIssuer>, Changes<ClusterMeshCAIssuer>)>,
}

/// The objects a watch saw change, after its reflector stored them.
type Changes<K> = BoxStream<'static, std::result::Result<K, watcher::Error>>;

impl IssuerWatches {
    fn start(client: &Client, namespace: Option<&str>) -> Self {
        let (namespaced, writer) = reflector::store();
        let namespaced_changes = reflector::reflector(
            writer,
            watcher(scoped::<MeshCAIssuer>(client, namespace), watcher::Config::default()),
        )
        .touched_objects()
        .boxed();
        let cluster = namespace.is_none().then(|| {
            let (seen, writer) = reflector::store();
            let changes = reflector::reflector(
                writer,
                watcher(
                    Api::<ClusterMeshCAIssuer>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .touched_objects()
            .boxed();
            (seen, changes)
        });
        Self {
            namespaced,
            namespaced_changes,
            cluster,
        }
    }

    fn caches(&self) -> IssuerCaches {
        IssuerCaches {
            namespaced: Some(self.namespaced.clone()),
            cluster: self.cluster.as_ref().map(|(seen, _)| seen.clone()),
        }
    }
}

/// The controllers' tasks, and what must have listed before the process is ready.
#[derive(Default)]
struct Controllers {
    tasks: Vec<BoxFuture<'static, ()>>,
    caches_listed: Vec<BoxFuture<'static, ()>>,
    cluster_issuers: bool,
}

impl Controllers {
    fn add<K>(&mut self, task: BoxFuture<'static, ()>, store: &Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.tasks.push(task);
        self.listed(store);
    }

    fn listed<K>(&mut self, store: &Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        self.caches_listed.push(wait_ready(store.clone()).boxed());
    }
}

/// Runs every controller until shutdown; ready only once every watch cache has its initial
/// list: decisions need the whole picture.
async fn serve(controllers: Controllers, readiness: &Readiness, metrics: &Arc<Metrics>) {
    let readiness_task = {
        let (readiness, metrics) = (readiness.clone(), metrics.clone());
        async move {
            futures::future::join_all(controllers.caches_listed).await;
            readiness.set_ready(true);
            metrics.ready.set(1);
            info!(
                cluster_issuers = controllers.cluster_issuers,
                "watch caches synced; ready"
            );
        }
    };
    tokio::join!(futures::future::join_all(controllers.tasks), readiness_task);
}

// === one function per controller ===

/// Starts every controller; the metrics drop a deleted object's series through their caches.
fn start_controllers(
    client: &Client,
    config: &Config,
    issuer_watches: IssuerWatches,
    stop: &Stop,
    ctx: &Arc<Context>,
    served: crate::federation::serve::Served,
) -> Controllers {
    let mut controllers = Controllers {
        cluster_issuers: config.namespace.is_none(),
        ..Default::default()
    };
    controllers.listed(&issuer_watches.namespaced);
    if let Some((seen, _)) = &issuer_watches.cluster {
        controllers.listed(seen);
    }
    let (requests, request_store) = request_controller(client, config, issuer_watches, stop, ctx);
    controllers.add(requests, &request_store);
    let (namespaced_issuers, namespaced_issuer_store) = issuer_controller(
        Controller::new(
            scoped::<MeshCAIssuer>(client, config.namespace.as_deref()),
            watcher::Config::default(),
        ),
        client,
        config,
        |issuer: &MeshCAIssuer, secret: &PartialObjectMeta<Secret>, _| issuer.namespace() == secret.namespace(),
        stop.requested(),
        ctx.clone(),
    );
    controllers.add(namespaced_issuers, &namespaced_issuer_store);
    let cluster_issuer_store = config.namespace.is_none().then(|| {
        let (cluster_issuers, store) = issuer_controller(
            Controller::new(
                Api::<ClusterMeshCAIssuer>::all(client.clone()),
                watcher::Config::default(),
            ),
            client,
            config,
            |_: &ClusterMeshCAIssuer, secret: &PartialObjectMeta<Secret>, cluster_resource_namespace: &str| {
                secret.namespace().as_deref() == Some(cluster_resource_namespace)
            },
            stop.requested(),
            ctx.clone(),
        );
        controllers.add(cluster_issuers, &store);
        store
    });
    // === IstioCACerts, re-checked when its Secrets, Certificate or issuer change ===
    let (cacerts_task, cacerts_store) = istio_cacerts_controller(client, config, stop.requested(), ctx.clone());
    controllers.add(cacerts_task, &cacerts_store);
    // === SPIFFE bundle endpoints: served from the cache by every replica, peers' polled by
    // the leader; both stop with the controllers ===
    let until_stopped = |task: BoxFuture<'static, ()>| {
        let stopped = stop.requested();
        async move {
            tokio::select! {
                _ = task => {}
                _ = stopped => {}
            }
        }
        .boxed()
    };
    controllers.tasks.push(until_stopped(
        crate::federation::serve::refresh(client.clone(), cacerts_store.clone(), served).boxed(),
    ));
    controllers.tasks.push(until_stopped(
        crate::federation::poller::run(ctx.clone(), cacerts_store.clone(), config.bundle_refresh_bounds()).boxed(),
    ));
    // ClusterTrustBundles of deleted IstioCACerts: cluster-scoped, so nothing owns them, and a
    // deletion wakes no reconcile.
    controllers.tasks.push(until_stopped({
        let ctx = ctx.clone();
        async move {
            loop {
                istio_cacerts::sweep_trust_bundles(&ctx).await;
                tokio::time::sleep(TRUST_BUNDLE_SWEEP_INTERVAL).await;
            }
        }
        .boxed()
    }));
    sweep_deleted_objects(
        ctx.clone(),
        ObjectCaches {
            requests: request_store,
            namespaced_issuers: namespaced_issuer_store.clone(),
            cluster_issuers: cluster_issuer_store.clone(),
            istio_cacerts: cacerts_store.clone(),
        },
    );
    ctx.metrics.track_owners(series_owner_exists(
        namespaced_issuer_store,
        cluster_issuer_store,
        cacerts_store,
    ));
    controllers
}

/// How often ClusterTrustBundles are checked for an IstioCACerts that is gone: one LIST of ours
/// (a handful of objects), and a GET of each owner.
const TRUST_BUNDLE_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// How often what is kept per object is checked against the watch caches.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The watch caches of every kind we publish events about.
struct ObjectCaches {
    requests: Store<CertificateRequest>,
    namespaced_issuers: Store<MeshCAIssuer>,
    cluster_issuers: Option<Store<ClusterMeshCAIssuer>>,
    istio_cacerts: Store<IstioCACerts>,
}

impl ObjectCaches {
    async fn listed(&self) {
        wait_ready(self.requests.clone()).await;
        wait_ready(self.namespaced_issuers.clone()).await;
        if let Some(store) = &self.cluster_issuers {
            wait_ready(store.clone()).await;
        }
        wait_ready(self.istio_cacerts.clone()).await;
    }

    /// Whether the object `reference` names is still there: same kind, namespace and name, and
    /// the same uid (a re-created object is another object).
    fn exists(&self, reference: &ObjectReference) -> bool {
        let name = reference.name.as_deref().unwrap_or_default();
        let namespace = reference.namespace.as_deref().unwrap_or_default();
        fn at<K: kube::Resource<DynamicType = ()>>(name: &str, namespace: &str) -> ObjectRef<K> {
            ObjectRef::new(name).within(namespace)
        }
        let uid = match reference.kind.as_deref() {
            Some("CertificateRequest") => self.requests.get(&at(name, namespace)).map(|o| o.uid()),
            Some("MeshCAIssuer") => self.namespaced_issuers.get(&at(name, namespace)).map(|o| o.uid()),
            Some("ClusterMeshCAIssuer") => self
                .cluster_issuers
                .as_ref()
                .and_then(|store| store.get(&ObjectRef::new(name)))
                .map(|o| o.uid()),
            Some("IstioCACerts") => self.istio_cacerts.get(&at(name, namespace)).map(|o| o.uid()),
            // A kind no cache holds cannot be judged gone: kept.
            _ => return true,
        };
        match uid {
            None => false,
            Some(uid) => reference.uid.is_none() || uid == reference.uid,
        }
    }

    /// Whether the object an [`object_key`] (`Kind/namespace/name`) names is still there.
    fn exists_key(&self, key: &str) -> bool {
        let mut parts = key.splitn(3, '/');
        let (Some(kind), Some(namespace), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            return true;
        };
        self.exists(&ObjectReference {
            kind: Some(kind.to_string()),
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            name: Some(name.to_string()),
            ..Default::default()
        })
    }

    /// Drops what the controller remembers per object for objects no cache holds any more:
    /// unsent events, failure back-off and issuers' transient-failure windows (a deleted object
    /// is never reconciled again, so nothing else would). Returns how many entries went.
    fn prune(&self, events: &events::EventQueue, failures: &RetryTracker, blips: &issuer::Blips) -> usize {
        let dropped_events = events.retain_existing(|r| self.exists(r));
        let (failures_before, blips_before) = (failures.len(), blips.len());
        failures.retain(|key| self.exists_key(key));
        blips.retain(|key| {
            // `namespace/name`; a ClusterMeshCAIssuer's namespace is empty.
            match key.split_once('/') {
                Some(("", name)) => self.exists_key(&format!("ClusterMeshCAIssuer//{name}")),
                Some(_) => self.exists_key(&format!("MeshCAIssuer/{key}")),
                None => true,
            }
        });
        dropped_events + (failures_before - failures.len()) + (blips_before - blips.len())
    }
}

/// A deleted object is never reconciled again, so nothing would ever send or drop the events
/// queued for it, nor forget its failure back-off: once the caches have listed (an empty cache
/// before that would look like everything was deleted), every [`SWEEP_INTERVAL`] what is kept
/// for objects no cache holds any more is dropped ([`ObjectCaches::prune`]).
fn sweep_deleted_objects(ctx: Arc<Context>, caches: ObjectCaches) {
    tokio::spawn(async move {
        caches.listed().await;
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            let dropped = caches.prune(&ctx.events, &ctx.failures, &ctx.issuer_blips);
            if dropped > 0 {
                info!(
                    dropped,
                    "dropped the unsent events and back-off history of deleted objects"
                );
            }
        }
    });
}

/// Wires the CertificateRequest controller, re-queued when the issuer a request waits on
/// changes. The cache keeps only our requests, and of those only what decisions read (no
/// CSRs, chains or CAs): see `cache`. Signing reads the request afresh anyway.
fn request_controller(
    client: &Client,
    config: &Config,
    issuer_watches: IssuerWatches,
    stop: &Stop,
    ctx: &Arc<Context>,
) -> (BoxFuture<'static, ()>, Store<CertificateRequest>) {
    let (request_store, request_writer) = reflector::store();
    let request_events = reflector::reflector(
        request_writer,
        watcher(
            scoped::<CertificateRequest>(client, config.namespace.as_deref()),
            watcher::Config::default(),
        )
        .try_filter_map(|event| std::future::ready(Ok(cache::ours_only(event))))
        .modify(cache::slim_request),
    )
    .applied_objects();
    let mut requests = Controller::for_stream(request_events, request_store.clone()).watches_stream(
        issuer_watches.namespaced_changes,
        wake_waiting_requests(request_store.clone(), IssuerKind::Namespaced),
    );
    if let Some((_, changes)) = issuer_watches.cluster {
        requests = requests.watches_stream(
            changes,
            wake_waiting_requests(request_store.clone(), IssuerKind::Cluster),
        );
    }
    // Deleted requests are never reconciled again: sweep their back-off history from the cache.
    {
        let (store, ctx) = (request_store.clone(), ctx.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let live: std::collections::HashSet<String> = store.state().iter().filter_map(|cr| cr.uid()).collect();
                ctx.retries.retain(|uid| live.contains(uid));
                ctx.superseded.retain(|uid| live.contains(uid));
            }
        });
    }
    let task = requests
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrent_workers))
        .reconcile_all_on(leadership_gained(&ctx.leadership))
        .graceful_shutdown_on(stop.requested())
        .run(
            |cr, ctx| reconcile_with_backoff(cr, ctx, certificate_request::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|result| async move { log_failure("certificaterequest", result) })
        .boxed();
    (task, request_store)
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

/// The watch mapper that wakes the requests waiting on an issuer of `kind` when it changes,
/// once the issuer has been checked at its generation (`triggers`).
fn wake_waiting_requests<K: IssuerObject>(
    requests: Store<CertificateRequest>,
    kind: IssuerKind,
) -> impl Fn(K) -> Vec<ObjectRef<CertificateRequest>> + Send + Sync + 'static {
    move |issuer: K| {
        if !triggers::issuer_change_wakes_requests(issuer.status(), issuer.meta().generation) {
            return Vec::new();
        }
        // A cluster issuer has no namespace: `None`, as `requests_waiting_on` expects.
        certificate_request::requests_waiting_on(&requests, kind, issuer.namespace().as_deref(), &issuer.name_any())
    }
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
                    crate::backend::names_secret(issuer.spec(), &name)
                        && in_scope(issuer, &secret, &cluster_resource_namespace)
                })
            },
        );
    }
    let task = controller
        .reconcile_all_on(leadership_gained(&ctx.leadership))
        .graceful_shutdown_on(stopped)
        .run(
            |issuer, ctx| reconcile_with_backoff(issuer, ctx, issuer::reconcile::<K>),
            error_policy,
            ctx,
        )
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
                        && (i.spec.source_secret_name == name
                            || i.spec.target_secret_name == name
                            || i.spec.trust_anchors.iter().any(|a| a.reads_secret(&name))
                            || i.spec
                                .bundle_endpoint
                                .as_ref()
                                .is_some_and(|e| e.tls_secret_name.as_deref() == Some(name.as_str())))
                })
            },
        );
    }
    // Trust anchors' ConfigMaps, and the published root (re-written when someone changes it).
    for config_maps in istio_namespace_apis::<ConfigMap>(client, config) {
        let store = store.clone();
        controller = controller.watches(config_maps, watcher::Config::default(), move |cm: ConfigMap| {
            let name = cm.name_any();
            cached_refs(&store, |i| {
                i.namespace() == cm.namespace()
                    // istiod's CRLs: one still handed out after revocation was turned off.
                    && (name == crate::istio::revocation::DISTRIBUTED_CONFIG_MAP
                        || i.spec.publish_root.as_ref().is_some_and(|p| p.config_map_name == name)
                        || i.spec.trust_anchors.iter().any(|a| a.reads_config_map(&name))
                        // What the bundle endpoint poller keeps for its anchors.
                        || name == crate::istio::bundle_source::config_map_name(&i.name_any()))
            })
        });
    }
    for certificates in istio_namespace_apis::<CertManagerCertificate>(client, config) {
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
    if namespace.is_none() {
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
        .run(
            |icc, ctx| reconcile_with_backoff(icc, ctx, istio_cacerts::reconcile),
            error_policy,
            ctx,
        )
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

/// The `controller` label of `meshca_reconciles_total` for a kind, as each controller already
/// writes it: the request and cacerts controllers in lower case, the issuer controllers by kind.
fn controller_label(kind: &str) -> String {
    match kind {
        "CertificateRequest" | "IstioCACerts" => kind.to_lowercase(),
        other => other.to_string(),
    }
}

/// Failed reconciles (API server unreachable or refusing a write, conflicts) are retried: a
/// 409 at once, anything else with a per-object exponential back-off
/// (`--retry-backoff-initial` doubling up to `--retry-backoff-max`), reset by a reconcile that
/// succeeds.
fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    // Every failed reconcile shows in metrics, whatever failed (a refused status write
    // included, which cannot show in the status it failed to write).
    ctx.metrics.count_reconcile(
        &controller_label(&K::kind(&())),
        if error.is_conflict() { "conflict" } else { "error" },
    );
    if error.is_conflict() {
        return Action::requeue(error.requeue_after());
    }
    let delay = ctx.failures.next_delay(&object_key(&object.object_ref(&())));
    Action::requeue(delay)
}

/// Runs `reconcile` for `object` with the bookkeeping every controller shares: events that
/// failed earlier are sent first; a success resets the object's failure back-off; and events
/// still unsent make the reconcile an error, so the error policy retries them.
async fn reconcile_with_backoff<K, Fut>(
    object: Arc<K>,
    ctx: Arc<Context>,
    reconcile: fn(Arc<K>, Arc<Context>) -> Fut,
) -> Result<Action>
where
    K: kube::Resource<DynamicType = ()>,
    Fut: Future<Output = Result<Action>>,
{
    let reference = object.object_ref(&());
    if ctx.leadership.is_leader() {
        ctx.send_unsent_events(&reference).await;
    } else {
        // A standby looked and did nothing: the signal tests wait on instead of a sleep.
        ctx.metrics.count_reconcile(&controller_label(&K::kind(&())), "standby");
    }
    let action = reconcile(object, ctx.clone()).await?;
    let unsent = ctx.unsent_event_count(&reference);
    if unsent > 0 {
        return Err(Error::EventsUnsent {
            object: object_key(&reference),
            count: unsent,
        });
    }
    ctx.failures.forget(&object_key(&reference));
    Ok(action)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn icc(namespace: &str, name: &str) -> IstioCACerts {
        let mut icc = IstioCACerts::new(name, Default::default());
        icc.metadata.namespace = Some(namespace.into());
        icc.metadata.uid = Some(format!("uid-{name}"));
        icc
    }

    fn issuer(namespace: &str, name: &str) -> MeshCAIssuer {
        let mut issuer = MeshCAIssuer::new(name, Default::default());
        issuer.metadata.namespace = Some(namespace.into());
        issuer.metadata.uid = Some(format!("uid-{name}"));
        issuer
    }

    /// What the controller keeps per object (failure back-off, issuers' transient-failure
    /// windows) goes once the object is gone from the caches; what belongs to live objects,
    /// and keys of kinds no cache holds, stay.
    #[test]
    fn the_bookkeeping_of_deleted_objects_is_pruned() {
        let (requests, _) = reflector::store::<CertificateRequest>();
        let (issuers, mut issuer_writer) = reflector::store::<MeshCAIssuer>();
        let (istio_cacerts, mut icc_writer) = reflector::store::<IstioCACerts>();
        issuer_writer.apply_watcher_event(&Event::Apply(issuer("team", "live")));
        icc_writer.apply_watcher_event(&Event::Apply(icc("istio-system", "mesh")));
        let caches = ObjectCaches {
            requests,
            namespaced_issuers: issuers,
            cluster_issuers: None,
            istio_cacerts,
        };
        let failures = RetryTracker::default();
        for key in [
            "IstioCACerts/istio-system/mesh",
            "IstioCACerts/istio-system/deleted",
            "MeshCAIssuer/team/live",
            "MeshCAIssuer/team/deleted",
            "CertificateRequest/istio-system/gone",
            "Unknown/ns/kept",
        ] {
            failures.next_delay(key);
        }
        let blips = issuer::Blips::default();
        let now = jiff::Timestamp::now();
        for key in ["team/live", "team/deleted"] {
            blips.set(key, Some(now));
        }
        let events = events::EventQueue::new();
        let dropped = caches.prune(&events, &failures, &blips);
        assert_eq!(dropped, 4);
        let kept: Vec<u32> = [
            "IstioCACerts/istio-system/mesh",
            "MeshCAIssuer/team/live",
            "Unknown/ns/kept",
        ]
        .iter()
        .map(|k| failures.attempts(k))
        .collect();
        assert_eq!(kept, vec![1, 1, 1]);
        assert_eq!(failures.len(), 3);
        assert_eq!(blips.len(), 1);
        assert!(blips.first("team/live").is_some());
    }
}
