//! Back-off for requests whose backend failed transiently or is still working, kept per
//! request UID in memory: exponential from `--retry-backoff-initial` (5 s) doubling up to
//! `--retry-backoff-max` (5 min) with ±10 % jitter, so a burst of failing requests (throttling,
//! an outage) spreads out instead of hammering a backend in lockstep.
//!
//! The back-off is also a gate: a reconcile that comes early (our own status write, any watch
//! event) does not call the backend again before the delay is over. Without the gate every
//! change of the Pending message would trigger an immediate, un-backed-off retry.
//! Forgotten on success; a restart starts afresh, which at worst retries a little sooner.
//!
//! The *retry budget* (`--max-retry-duration`) is different: it must survive restarts and
//! leader hand-overs, so it lives on the request as [`FIRST_FAILURE_ANNOTATION`], the time of
//! the first transient failure of the current attempt. [`budget`] decides, purely, when the
//! deadline is and how that annotation changes: a request that waited an hour for approval or
//! for its issuer starts with a full budget at its first network blip, not with none.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use crate::api::cert_manager::CertificateRequest;
use crate::error::{Error, Result};

/// When the current run of transient failures began (RFC 3339), on the CertificateRequest.
pub const FIRST_FAILURE_ANNOTATION: &str = "meshca.io/first-transient-failure";

/// How a reconcile's outcome bears on the retry budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// A transient failure: the budget runs.
    Transient,
    /// Anything else — issued, failed, denied, or waiting on approval, the issuer or the
    /// backend: the run of failures is over, and waiting never spends the budget.
    Other,
}

/// Writes [`FIRST_FAILURE_ANNOTATION`] as `mark` says (a merge patch of metadata only, so
/// cert-manager's and other writers' fields are untouched); `Some` with the updated request
/// when it wrote, so the status write that follows carries the new resourceVersion.
pub async fn write_mark(
    api: &Api<CertificateRequest>,
    cr: &CertificateRequest,
    mark: &Mark,
) -> Result<Option<CertificateRequest>> {
    let value = match mark {
        Mark::Keep => return Ok(None),
        Mark::Set(at) => serde_json::Value::String(at.to_string()),
        Mark::Remove => serde_json::Value::Null,
    };
    let name = cr.name_any();
    // The resourceVersion we decided on guards the write, as for the status.
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": cr.resource_version(),
        "annotations": {FIRST_FAILURE_ANNOTATION: value},
    }});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(Some)
        .map_err(|e| Error::kube(format!("recording the retry budget on CertificateRequest {name}"), e))
}

/// What to do with [`FIRST_FAILURE_ANNOTATION`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mark {
    Keep,
    Set(Timestamp),
    Remove,
}

/// The retry budget of one reconcile: the deadline a transient failure is judged against, and
/// the annotation change to write before the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub deadline: Option<Timestamp>,
    pub mark: Mark,
}

/// Decides the deadline from the recorded first failure (`recorded`, the annotation's value
/// if any), the outcome, the clock and `--max-retry-duration`. An unreadable annotation
/// counts as absent: at worst the budget starts afresh, never runs out early.
pub fn budget(attempt: Attempt, recorded: Option<&str>, now: Timestamp, max: Duration) -> Budget {
    let first = recorded.and_then(|v| v.parse::<Timestamp>().ok());
    match (attempt, first) {
        (Attempt::Other, _) => Budget {
            deadline: None,
            mark: if recorded.is_some() { Mark::Remove } else { Mark::Keep },
        },
        (Attempt::Transient, first) => {
            // A first failure "in the future" (a clock ahead of ours wrote it) counts from now.
            let start = first.filter(|t| *t <= now).unwrap_or(now);
            let max = SignedDuration::try_from(max).unwrap_or(SignedDuration::MAX);
            Budget {
                deadline: start.checked_add(max).ok(),
                mark: if first == Some(start) {
                    Mark::Keep
                } else {
                    Mark::Set(start)
                },
            }
        }
    }
}

/// The first wait before asking a backend again about a certificate it is still issuing.
pub const POLL_INITIAL: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug)]
struct Entry {
    attempts: u32,
    not_before: Instant,
}

pub struct RetryTracker {
    initial: Duration,
    max: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Default for RetryTracker {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), Duration::from_secs(300))
    }
}

impl RetryTracker {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a failed attempt for `key` and returns the delay before the next one; the backend
    /// is not called for `key` again before then.
    pub fn next_delay(&self, key: &str) -> Duration {
        let mut map = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = map.entry(key.to_string()).or_insert(Entry {
            attempts: 0,
            not_before: Instant::now(),
        });
        entry.attempts = entry.attempts.saturating_add(1);
        let delay = jitter(backoff(self.initial, self.max, entry.attempts));
        entry.not_before = Instant::now() + delay;
        delay
    }

    /// Counts a poll of a backend that is still working on `key` (PCA's `RequestInProgress`)
    /// and returns the delay before the next one: from [`POLL_INITIAL`], doubling to the
    /// tracker's maximum. Not a failure, so it does not start at the failure back-off: a PCA
    /// certificate is usually ready within a second, and the first failure back-off (5 s by
    /// default) was most of its approve→Ready time.
    pub fn next_poll(&self, key: &str) -> Duration {
        let mut map = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = map.entry(key.to_string()).or_insert(Entry {
            attempts: 0,
            not_before: Instant::now(),
        });
        entry.attempts = entry.attempts.saturating_add(1);
        let delay = jitter(backoff(POLL_INITIAL.min(self.initial), self.max, entry.attempts));
        entry.not_before = Instant::now() + delay;
        delay
    }

    /// How long `key` must still wait before its backend may be called again, if at all.
    pub fn wait_remaining(&self, key: &str) -> Option<Duration> {
        let map = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let remaining = map.get(key)?.not_before.saturating_duration_since(Instant::now());
        (!remaining.is_zero()).then_some(remaining)
    }

    /// Clears the history of `key` (it succeeded or ended).
    pub fn forget(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }

    /// Drops the history of every key `keep` rejects: requests that were deleted (no
    /// reconcile ever runs for them again) or ended.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|key, _| keep(key));
    }

    /// How many requests have back-off history (for tests and metrics).
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn attempts(&self, key: &str) -> u32 {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .map(|e| e.attempts)
            .unwrap_or(0)
    }
}

/// `initial`, twice that, four times, ... capped at `max`, for attempt 1, 2, 3, ...
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    initial.saturating_mul(factor).min(max)
}

fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    // Without randomness the un-jittered delay is still correct.
    let _ = aws_lc_rs::rand::fill(&mut byte);
    let permille = 900 + (u64::from(byte[0]) * 200 / 255); // 900..=1100
    Duration::from_millis(d.as_millis() as u64 * permille / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_budget_counts_from_the_first_transient_failure_only() {
        let at = |s: i64| Timestamp::from_second(1_800_000_000 + s).unwrap();
        let max = Duration::from_secs(10);
        let stamp = |s: i64| at(s).to_string();
        let (t0, t5, later) = (stamp(0), stamp(5), stamp(100));
        use Attempt::*;
        // (case, outcome, recorded first failure, now, expected deadline, expected mark)
        type Case<'a> = (&'a str, Attempt, Option<&'a str>, i64, Option<i64>, Mark);
        let cases: Vec<Case> = vec![
            // Waiting (approval, issuer, backend) with nothing recorded: no budget, no write.
            ("waiting", Other, None, 3600, None, Mark::Keep),
            // The first failure after an hour of waiting: a full budget from now, recorded.
            (
                "first failure late",
                Transient,
                None,
                3600,
                Some(3610),
                Mark::Set(at(3600)),
            ),
            // Later failures keep the recorded start.
            ("second failure", Transient, Some(&t0), 5, Some(10), Mark::Keep),
            ("past the deadline", Transient, Some(&t0), 11, Some(10), Mark::Keep),
            // Success, failure or waiting ends the run: the mark goes.
            ("over", Other, Some(&t5), 6, None, Mark::Remove),
            // A garbled or future mark never shortens the budget.
            ("garbled", Transient, Some("yesterday"), 20, Some(30), Mark::Set(at(20))),
            ("future", Transient, Some(&later), 20, Some(30), Mark::Set(at(20))),
        ];
        for (name, attempt, recorded, now, deadline, mark) in cases {
            let got = budget(attempt, recorded, at(now), max);
            assert_eq!(
                got,
                Budget {
                    deadline: deadline.map(at),
                    mark
                },
                "{name}"
            );
        }
        // A maximum beyond the calendar means no deadline, not an overflow.
        assert_eq!(budget(Transient, None, at(0), Duration::MAX).deadline, None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (initial, max) = (Duration::from_secs(5), Duration::from_secs(300));
        let secs: Vec<u64> = (1..=8).map(|a| backoff(initial, max, a).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(initial, max, u32::MAX), max);
    }

    #[test]
    fn delays_grow_per_key_gate_early_calls_and_reset_on_forget() {
        let t = RetryTracker::default();
        let first = t.next_delay("a");
        let second = t.next_delay("a");
        assert!(
            first <= Duration::from_millis(5500) && second >= Duration::from_millis(9000),
            "{first:?} {second:?}"
        );
        assert!(
            t.wait_remaining("a").is_some_and(|w| w > Duration::from_secs(8)),
            "an early reconcile waits"
        );
        assert_eq!(t.wait_remaining("b"), None);
        t.forget("a");
        assert_eq!((t.attempts("a"), t.wait_remaining("a")), (0, None));
        // Requests that are gone are swept.
        t.next_delay("gone");
        t.next_delay("live");
        t.retain(|k| k == "live");
        assert_eq!((t.len(), t.attempts("live"), t.attempts("gone")), (1, 1, 0));
    }

    /// A backend still at work is asked again from half a second on, doubling (with ±10 %
    /// jitter), and early reconciles wait for it; never sooner than the failure back-off's
    /// own first step when that is set lower (tests set 1 s).
    #[test]
    fn polls_of_a_backend_at_work_start_short_and_double() {
        let t = RetryTracker::default();
        let polls: Vec<Duration> = (0..4).map(|_| t.next_poll("pca")).collect();
        for (poll, expected) in polls.iter().zip([500u64, 1000, 2000, 4000]) {
            let (low, high) = (expected * 9 / 10, expected * 11 / 10);
            assert!((low..=high).contains(&(poll.as_millis() as u64)), "{polls:?}");
        }
        assert!(t.wait_remaining("pca").is_some(), "an early reconcile waits");
        let quick = RetryTracker::new(Duration::from_millis(100), Duration::from_secs(1));
        assert!(quick.next_poll("x") <= Duration::from_millis(110));
    }
}
