//! Leader election through a `coordination.k8s.io/v1` Lease, so that with several replicas
//! exactly one writes status, Secrets and events.
//!
//! Every replica runs its watches (caches stay warm, `/readyz` means "synced" for a standby
//! too, so a PodDisruptionBudget sees it as available); only the leader's reconciles act. The
//! leader renews every retry period; a replica takes over once the lease has not been renewed
//! for a whole lease duration; a leader that cannot renew within the renew deadline steps
//! down; a leader shutting down gracefully releases the lease so the next one takes over at
//! once. The decision is a pure function ([`decide`]) of the lease as read and the clock.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// Whether this process leads; cheap to clone and to ask.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<bool>);

impl Leadership {
    /// For `--leader-elect=false`: always the leader.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        Self(rx)
    }

    pub fn is_leader(&self) -> bool {
        *self.0.borrow()
    }

    /// A receiver to wait on changes.
    pub fn changes(&self) -> watch::Receiver<bool> {
        self.0.clone()
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

/// Decides from the lease's spec what this candidate does now.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp, default_duration: Duration) -> Step {
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
        .map(|s| SignedDuration::from_secs(i64::from(s)))
        .unwrap_or_else(|| SignedDuration::try_from(default_duration).unwrap_or(SignedDuration::MAX));
    match &spec.renew_time {
        Some(MicroTime(renewed)) if *renewed + duration > now => Step::Follow { holder },
        _ => Step::Acquire,
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

/// Starts the election loop; returns the leadership handle and the loop's task. The loop ends
/// (releasing the lease if held) when `shutdown` says so; await the task to let it finish.
pub fn start(
    client: Client,
    config: ElectionConfig,
    mut shutdown: watch::Receiver<bool>,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut last_renewal: Option<std::time::Instant> = None;
        loop {
            let leading = elect_once(&api, &config).await;
            match leading {
                Ok(true) => last_renewal = Some(std::time::Instant::now()),
                Ok(false) => last_renewal = None,
                Err(e) => warn!(error = %e, lease = %config.name, "leader election: could not read or write the Lease"),
            }
            // A leader that could not renew within the renew deadline steps down.
            let is_leader = last_renewal.is_some_and(|t| t.elapsed() < config.renew_deadline);
            if *tx.borrow() != is_leader {
                if is_leader {
                    info!(identity = %config.identity, lease = %format!("{}/{}", config.namespace, config.name), "became the leader");
                } else {
                    warn!(identity = %config.identity, "not the leader (any more); standing by");
                }
                let _ = tx.send(is_leader);
            }
            tokio::select! {
                _ = tokio::time::sleep(config.retry_period) => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
        }
        if *tx.borrow() {
            release(&api, &config).await;
            let _ = tx.send(false);
        }
    });
    (Leadership(rx), task)
}

/// One round: read the Lease, then renew, acquire or follow. Ok(true) when we hold it now.
async fn elect_once(api: &Api<Lease>, c: &ElectionConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&c.name).await?;
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
    let step = decide(lease.spec.as_ref(), &c.identity, now, c.lease_duration);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let cases = [
            // No lease object yet, or nobody holds it: take it.
            ("absent", None, Step::Acquire),
            ("released", Some(LeaseSpec::default()), Step::Acquire),
            // Ours: renew.
            ("ours", Some(held("me", 100)), Step::Renew),
            // Someone else's, renewed 5 s ago: follow.
            (
                "live",
                Some(held("other", 105)),
                Step::Follow { holder: "other".into() },
            ),
            // Someone else's, not renewed for a whole lease duration: take it over.
            ("expired", Some(held("other", 95)), Step::Acquire),
        ];
        for (name, spec, expected) in cases {
            assert_eq!(decide(spec.as_ref(), "me", at(110), d), expected, "{name}");
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
