//! Leader election through a `coordination.k8s.io/v1` Lease, so that with several replicas
//! exactly one writes status, Secrets and events.
//!
//! Every replica runs its watches (caches stay warm, `/readyz` means "synced" for a standby
//! too, so a PodDisruptionBudget sees it as available); only the leader's reconciles act. The
//! leader renews every retry period; a leader shutting down gracefully releases the lease so
//! the next one takes over at once. The decision is a pure function ([`decide`]).
//!
//! Two replicas must never both write, even when one is paused (SIGSTOP, a frozen VM, a long
//! GC-like stall) or its API calls hang. As client-go does:
//! - **Expiry is judged by local observation.** A candidate takes over a lease only when the
//!   lease *object* (its resourceVersion) has not changed for a whole lease duration by the
//!   candidate's own monotonic clock — never by comparing the holder's `renewTime` with our
//!   wall clock, which may be skewed.
//! - **A leader steps down by its own clock before anyone may take over.** Its leadership is
//!   valid until the start of its last successful renew round plus the renew deadline (shorter
//!   than the lease duration). [`Leadership::is_leader`] checks that deadline on the monotonic
//!   clock at every call, so a process resumed after a pause knows at once that it no longer
//!   leads, before its election loop has even run.
//! - **Every Lease call is bounded**: a round may take at most until the leader's deadline
//!   (or the renew deadline when following), and the Lease client has connect and read
//!   timeouts.
//! - **Writes are fenced** ([`WriteFence`]): every mutating API request of the controllers
//!   passes a check of [`Leadership::is_leader`] when it is sent, so a reconcile that decided
//!   while leading cannot write after leadership has lapsed.

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

/// Whether this process leads; cheap to clone and to ask.
#[derive(Clone)]
pub struct Leadership {
    changes: watch::Receiver<bool>,
    /// While leading: until when, on the monotonic clock. `None` with `true` means always.
    valid_until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// For `--leader-elect=false`: always the leader.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        Self {
            changes: rx,
            valid_until: Arc::new(Mutex::new(None)),
        }
    }

    /// True while this replica leads and its last renewal is younger than the renew deadline,
    /// by the monotonic clock at the moment of asking.
    pub fn is_leader(&self) -> bool {
        *self.changes.borrow()
            && self
                .valid_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|until| Instant::now() < until)
    }

    /// A receiver to wait on changes.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.changes.clone()
    }
}

/// Timing, as the flags give it.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl ElectionConfig {
    /// client-go's rules for these timings (`leaderelection.NewLeaderElector`): a leader must
    /// give up before its lease can expire for others (renew deadline < lease duration), and
    /// must get more than one jittered retry within its deadline (retry period × 1.2 < renew
    /// deadline). Anything else lets two replicas lead at once, or none for long.
    pub fn validate(&self) -> Result<(), String> {
        let (lease, deadline, retry) = (self.lease_duration, self.renew_deadline, self.retry_period);
        if lease.is_zero() || deadline.is_zero() || retry.is_zero() {
            return Err("--leader-election-lease-duration, --leader-election-renew-deadline and --leader-election-retry-period must all be positive".into());
        }
        if deadline >= lease {
            return Err(format!(
                "--leader-election-renew-deadline ({deadline:?}) must be shorter than --leader-election-lease-duration ({lease:?}): a leader must stop before its lease can expire for a standby"
            ));
        }
        if retry.mul_f64(JITTER_FACTOR) >= deadline {
            return Err(format!(
                "--leader-election-retry-period ({retry:?}) times {JITTER_FACTOR} must be shorter than --leader-election-renew-deadline ({deadline:?}): a leader needs more than one try within its deadline"
            ));
        }
        Ok(())
    }
}

/// client-go's `JitterFactor`: retries wait up to this many retry periods.
const JITTER_FACTOR: f64 = 1.2;

/// What to do with the lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds a live lease: wait.
    Follow { holder: String },
}

/// Decides from the lease's spec what this candidate does now. `unchanged_for` is how long
/// the lease object has looked exactly like this to us (client-go's observed time): another
/// holder's lease has expired only when that exceeds its lease duration.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration, default_duration: Duration) -> Step {
    let Some(spec) = spec else { return Step::Acquire };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == identity {
        return Step::Renew;
    }
    if holder.is_empty() {
        return Step::Acquire;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(default_duration);
    if unchanged_for < duration {
        Step::Follow { holder }
    } else {
        Step::Acquire
    }
}

fn lease_spec(previous: Option<&LeaseSpec>, c: &ElectionConfig, now: Timestamp, step: &Step) -> LeaseSpec {
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    let (acquire_time, transitions) = match step {
        Step::Renew => (previous.and_then(|p| p.acquire_time.clone()), transitions),
        _ => (Some(MicroTime(now)), transitions + 1),
    };
    LeaseSpec {
        holder_identity: Some(c.identity.clone()),
        lease_duration_seconds: Some(c.lease_duration.as_secs().max(1) as i32),
        acquire_time,
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    }
}

/// The lease object as last seen and when (monotonic) it was first seen looking like that.
#[derive(Default)]
struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

impl Observed {
    /// Records `resource_version` as seen now; returns how long it has been unchanged.
    fn see(&mut self, resource_version: Option<String>, now: Instant) -> Duration {
        if self.resource_version != resource_version || self.since.is_none() {
            self.resource_version = resource_version;
            self.since = Some(now);
        }
        self.since.map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

/// How long one election round may take: a leader must be done before its leadership lapses;
/// a follower gets the renew deadline.
fn round_budget(valid_until: Option<Instant>, now: Instant, renew_deadline: Duration) -> Duration {
    match valid_until {
        Some(until) => until.saturating_duration_since(now),
        None => renew_deadline,
    }
}

/// Starts the election loop; returns the leadership handle and the loop's task. The loop ends
/// (releasing the lease if held) when `shutdown` says so; await the task to let it finish.
/// `client` should carry connect and read timeouts shorter than the renew deadline.
pub fn start(
    client: Client,
    config: ElectionConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let valid_until = Arc::new(Mutex::new(Some(Instant::now())));
    let leadership = Leadership {
        changes: rx,
        valid_until: valid_until.clone(),
    };
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut observed = Observed::default();
        let mut leading_until: Option<Instant> = None;
        loop {
            let round_start = Instant::now();
            let budget = round_budget(leading_until, round_start, config.renew_deadline);
            match tokio::time::timeout(budget, elect_once(&api, &config, &mut observed)).await {
                // Valid from when the round started: the renewal cannot have been accepted
                // earlier, so others cannot see it expire before we stop.
                Ok(Ok(true)) => leading_until = Some(round_start + config.renew_deadline),
                Ok(Ok(false)) => leading_until = None,
                Ok(Err(e)) => {
                    warn!(error = %e, lease = %config.name, "leader election: could not read or write the Lease")
                }
                Err(_) => {
                    warn!(lease = %config.name, timeout = ?budget, "leader election: the Lease call did not answer in time")
                }
            }
            // A leader that could not renew within the renew deadline steps down.
            if leading_until.is_some_and(|until| Instant::now() >= until) {
                leading_until = None;
            }
            *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(leading_until.unwrap_or(round_start));
            let is_leader = leading_until.is_some();
            if *tx.borrow() != is_leader {
                if is_leader {
                    info!(identity = %config.identity, lease = %format!("{}/{}", config.namespace, config.name), "became the leader");
                } else {
                    warn!(identity = %config.identity, "not the leader (any more); standing by");
                }
                let _ = tx.send(is_leader);
            }
            // Next round after a retry period, or at the leadership's end if that comes first
            // (so the change is announced on time).
            let pause = match leading_until {
                Some(until) => config.retry_period.min(until.saturating_duration_since(Instant::now())),
                None => config.retry_period,
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *tx.borrow() {
            let _ = tokio::time::timeout(config.renew_deadline, release(&api, &config)).await;
            *valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            let _ = tx.send(false);
        }
    });
    (leadership, task)
}

/// One round: read the Lease, then renew, acquire or follow. Ok(true) when we hold it now.
async fn elect_once(api: &Api<Lease>, c: &ElectionConfig, observed: &mut Observed) -> Result<bool, kube::Error> {
    let current = api.get_opt(&c.name).await?;
    let now = Timestamp::now();
    let Some(mut lease) = current else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(c.name.clone()),
                namespace: Some(c.namespace.clone()),
                ..Default::default()
            },
            spec: Some(lease_spec(None, c, now, &Step::Acquire)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false), // someone else created it first
            Err(e) => Err(e),
        };
    };
    let unchanged_for = observed.see(lease.resource_version(), Instant::now());
    let step = decide(lease.spec.as_ref(), &c.identity, unchanged_for, c.lease_duration);
    if let Step::Follow { .. } = step {
        return Ok(false);
    }
    lease.spec = Some(lease_spec(lease.spec.as_ref(), c, now, &step));
    // The resourceVersion read above makes this a compare-and-swap: of two candidates taking an
    // expired lease, one gets a 409.
    match api.replace(&c.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the lease up on a graceful shutdown, so a standby takes over without waiting.
async fn release(api: &Api<Lease>, c: &ElectionConfig) {
    if let Ok(Some(mut lease)) = api.get_opt(&c.name).await
        && lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(c.identity.as_str())
        && let Some(spec) = lease.spec.as_mut()
    {
        spec.holder_identity = None;
        spec.renew_time = None;
        match api.replace(&c.name, &PostParams::default(), &lease).await {
            Ok(_) => info!("released the leader lease"),
            Err(e) => warn!(error = %e, "could not release the leader lease"),
        }
    }
}

// === impl WriteFence ===

/// A write the fence stopped because this replica does not lead (any more).
#[derive(Debug, thiserror::Error)]
#[error("not the leader: {method} {path} was not sent")]
pub struct NotLeader {
    pub method: http::Method,
    pub path: String,
}

/// Counts what the fence let through and what it stopped: `(sent)` true or false.
pub type WriteCounter = Arc<dyn Fn(bool) + Send + Sync>;

/// A tower layer for the controllers' Kubernetes client: mutating requests (POST, PUT,
/// PATCH, DELETE) are sent only while [`Leadership::is_leader`] holds, checked at the moment
/// of sending. Reads pass untouched. The election's own Lease client is not fenced.
#[derive(Clone)]
pub struct WriteFence {
    leadership: Leadership,
    count: WriteCounter,
}

impl WriteFence {
    pub fn new(leadership: Leadership, count: WriteCounter) -> Self {
        Self { leadership, count }
    }
}

impl<S> tower_layer::Layer<S> for WriteFence {
    type Service = FencedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FencedService {
            inner,
            fence: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FencedService<S> {
    inner: S,
    fence: WriteFence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// True for the methods that change something on the API server.
pub fn is_write(method: &http::Method) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

impl<S, B> tower_service::Service<http::Request<B>> for FencedService<S>
where
    S: tower_service::Service<http::Request<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if is_write(request.method()) {
            let sent = self.fence.leadership.is_leader();
            (self.fence.count)(sent);
            if !sent {
                let refused = NotLeader {
                    method: request.method().clone(),
                    path: request.uri().path().to_string(),
                };
                return Box::pin(async move { Err(refused.into()) });
            }
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timings_follow_client_gos_rules() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let timings = |lease, deadline, retry| ElectionConfig {
            namespace: "ns".into(),
            name: "mesh-ca-issuer".into(),
            identity: "a".into(),
            lease_duration: lease,
            renew_deadline: deadline,
            retry_period: retry,
        };
        let cases = [
            (s(15), s(10), s(2), None),  // the defaults
            (s(4), s(3), ms(500), None), // the tests' short ones
            (
                s(10),
                s(10),
                s(2),
                Some("must be shorter than --leader-election-lease-duration"),
            ),
            (
                s(10),
                s(15),
                s(2),
                Some("must be shorter than --leader-election-lease-duration"),
            ),
            (s(15), s(10), ms(8500), Some("times 1.2 must be shorter")), // 10.2 s of jittered retry
            (s(15), s(10), s(0), Some("must all be positive")),
        ];
        for (lease, deadline, retry, expected) in cases {
            let verdict = timings(lease, deadline, retry).validate();
            match expected {
                None => assert_eq!(verdict, Ok(()), "{lease:?}/{deadline:?}/{retry:?}"),
                Some(text) => {
                    let message = verdict.expect_err("refused");
                    assert!(message.contains(text), "{message}");
                }
            }
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn election_steps() {
        let d = Duration::from_secs(15);
        let secs = Duration::from_secs;
        // (case, lease as read, how long it has looked like this to us, expected step)
        let cases = [
            // No lease object yet, or nobody holds it: take it.
            ("absent", None, secs(0), Step::Acquire),
            ("released", Some(LeaseSpec::default()), secs(0), Step::Acquire),
            // Ours: renew.
            ("ours", Some(held("me", 100)), secs(0), Step::Renew),
            // Someone else's, changed 5 s ago by our clock: follow.
            (
                "live",
                Some(held("other", 105)),
                secs(5),
                Step::Follow { holder: "other".into() },
            ),
            // Someone else's, unchanged for a whole lease duration by our clock: take it over.
            ("expired", Some(held("other", 95)), secs(15), Step::Acquire),
            // A renewTime long past by our wall clock (the holder's clock is behind, or we
            // just started) is not expiry: only our own observation counts.
            (
                "old renewTime, freshly seen",
                Some(held("other", 0)),
                secs(1),
                Step::Follow { holder: "other".into() },
            ),
        ];
        for (name, spec, unchanged_for, expected) in cases {
            assert_eq!(decide(spec.as_ref(), "me", unchanged_for, d), expected, "{name}");
        }
    }

    #[test]
    fn observation_time_restarts_whenever_the_lease_changes() {
        let t0 = Instant::now();
        let mut seen = Observed::default();
        assert_eq!(seen.see(Some("1".into()), t0), Duration::ZERO);
        assert_eq!(
            seen.see(Some("1".into()), t0 + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        // A renewal (new resourceVersion) starts the count again.
        assert_eq!(seen.see(Some("2".into()), t0 + Duration::from_secs(4)), Duration::ZERO);
    }

    #[test]
    fn a_leaders_round_never_outlasts_its_leadership() {
        let now = Instant::now();
        let deadline = Duration::from_secs(10);
        assert_eq!(round_budget(None, now, deadline), deadline);
        assert_eq!(
            round_budget(Some(now + Duration::from_secs(2)), now, deadline),
            Duration::from_secs(2)
        );
        assert_eq!(
            round_budget(Some(now), now + Duration::from_secs(1), deadline),
            Duration::ZERO
        );
    }

    #[test]
    fn leadership_lapses_by_the_clock_without_the_election_loop() {
        let (tx, rx) = watch::channel(true);
        let valid_until = Arc::new(Mutex::new(Some(Instant::now() + Duration::from_millis(50))));
        let leadership = Leadership {
            changes: rx,
            valid_until: valid_until.clone(),
        };
        assert!(leadership.is_leader());
        // As after SIGSTOP/SIGCONT: the flag still says true, the deadline has passed.
        *valid_until.lock().unwrap() = Some(Instant::now() - Duration::from_millis(1));
        assert!(!leadership.is_leader());
        drop(tx);
        assert!(Leadership::always().is_leader());
    }

    #[tokio::test]
    async fn the_fence_stops_writes_but_not_reads_when_not_leading() {
        use tower_layer::Layer;
        use tower_service::Service;
        let (_tx, rx) = watch::channel(true);
        let leadership = Leadership {
            changes: rx,
            valid_until: Arc::new(Mutex::new(Some(Instant::now() - Duration::from_millis(1)))),
        };
        let counted = Arc::new(Mutex::new(Vec::new()));
        let count: WriteCounter = {
            let counted = counted.clone();
            Arc::new(move |sent| counted.lock().unwrap().push(sent))
        };
        let inner = tower_service_fn(|_: http::Request<()>| async { Ok::<_, std::convert::Infallible>("sent") });
        let mut service = WriteFence::new(leadership, count).layer(inner);
        let request = |method: http::Method| {
            http::Request::builder()
                .method(method)
                .uri("/api/v1/x")
                .body(())
                .unwrap()
        };
        assert_eq!(service.call(request(http::Method::GET)).await.unwrap(), "sent");
        let refused = service.call(request(http::Method::PATCH)).await.unwrap_err();
        assert!(
            refused.to_string().contains("not the leader: PATCH /api/v1/x"),
            "{refused}"
        );
        assert_eq!(*counted.lock().unwrap(), vec![false], "only writes are counted");
    }

    /// A service from a closure (tower's `service_fn`, without the dependency).
    fn tower_service_fn<F, Fut, R>(f: F) -> ServiceFn<F>
    where
        F: FnMut(http::Request<()>) -> Fut,
        Fut: std::future::Future<Output = Result<R, std::convert::Infallible>>,
    {
        ServiceFn(f)
    }

    struct ServiceFn<F>(F);

    impl<F, Fut, R> tower_service::Service<http::Request<()>> for ServiceFn<F>
    where
        F: FnMut(http::Request<()>) -> Fut,
        Fut: std::future::Future<Output = Result<R, std::convert::Infallible>> + Send + 'static,
    {
        type Response = R;
        type Error = std::convert::Infallible;
        type Future = Fut;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, request: http::Request<()>) -> Fut {
            (self.0)(request)
        }
    }

    #[test]
    fn acquiring_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let c = ElectionConfig {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let acquired = lease_spec(Some(&held("other", 0)), &c, at(100), &Step::Acquire);
        assert_eq!(acquired.lease_transitions, Some(1));
        assert_eq!(acquired.acquire_time, Some(MicroTime(at(100))));
        let renewed = lease_spec(Some(&acquired), &c, at(102), &Step::Renew);
        assert_eq!(renewed.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(at(102))));
        assert_eq!(renewed.lease_transitions, Some(1));
    }
}
