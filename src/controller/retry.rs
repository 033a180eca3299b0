//! Back-off for requests that wait or retry, kept per request UID in memory: exponential from
//! 5 s to 5 min with ±10 % jitter, so a burst of failing requests (throttling, an outage)
//! spreads out instead of hammering a backend in lockstep. Forgotten on success; a restart
//! starts afresh, which at worst retries a little sooner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

pub const INITIAL: Duration = Duration::from_secs(5);
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct RetryTracker {
    attempts: Mutex<HashMap<String, u32>>,
}

impl RetryTracker {
    /// The delay before the next attempt for `key`, counting this one.
    pub fn next_delay(&self, key: &str) -> Duration {
        let attempt = {
            let mut map = self.attempts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        jitter(backoff(attempt))
    }

    /// Clears the history of `key` (it succeeded or ended).
    pub fn forget(&self, key: &str) {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }

    pub fn attempts(&self, key: &str) -> u32 {
        self.attempts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// 5 s, 10 s, 20 s, ... capped at 5 min, for attempt 1, 2, 3, ...
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    INITIAL.saturating_mul(factor).min(MAX)
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
        let secs: Vec<u64> = (1..=8).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX);
    }

    #[test]
    fn delays_grow_per_key_and_reset_on_forget() {
        let t = RetryTracker::default();
        let first = t.next_delay("a");
        let second = t.next_delay("a");
        assert!(
            first <= Duration::from_millis(5500) && second >= Duration::from_millis(9000),
            "{first:?} {second:?}"
        );
        assert_eq!(t.attempts("b"), 0);
        t.forget("a");
        assert_eq!(t.attempts("a"), 0);
    }
}
