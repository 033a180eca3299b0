//! Back-off for requests whose backend failed transiently or is still working, kept per
//! request UID in memory: exponential from `--retry-backoff-initial` (5 s) doubling up to
//! `--retry-backoff-max` (5 min) with ±10 % jitter, so a burst of failing requests (throttling,
//! an outage) spreads out instead of hammering a backend in lockstep.
//!
//! The back-off is also a gate: a reconcile that comes early (our own status write, any watch
//! event) does not call the backend again before the delay is over. Without the gate every
//! change of the Pending message would trigger an immediate, un-backed-off retry.
//! Forgotten on success; a restart starts afresh, which at worst retries a little sooner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    }
}
