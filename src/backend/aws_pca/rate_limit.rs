//! State shared by every PCA issuer in the process: clients, CA descriptions, and the
//! per-issuer IssueCertificate token bucket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::describe::DescriptionCache;

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Takes a token, or says how long until one is available.
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate.max(1e-9)))
        }
    }
}

/// State shared by every PCA issuer in the process.
pub struct Shared {
    pub(super) clients: Mutex<HashMap<String, (String, aws_sdk_acmpca::Client)>>,
    /// CA descriptions, reused for signing for a while.
    pub(super) descriptions: DescriptionCache,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    pub issue_rate: f64,
    pub issue_burst: f64,
}

impl Shared {
    pub fn new(issue_rate: f64, issue_burst: f64, description_ttl: Duration) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            descriptions: DescriptionCache::new(description_ttl),
            buckets: Mutex::new(HashMap::new()),
            issue_rate,
            issue_burst,
        }
    }

    pub(super) fn take_token(&self, issuer: &str) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(issuer.to_string()).or_insert_with(|| TokenBucket {
            tokens: self.issue_burst,
            last: Instant::now(),
        });
        bucket.take(self.issue_rate, self.issue_burst, Instant::now())
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket {
            tokens: 3.0,
            last: start,
        };
        for _ in 0..3 {
            assert!(b.take(1.0, 3.0, start).is_ok());
        }
        let wait = b.take(1.0, 3.0, start).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(b.take(1.0, 3.0, start + Duration::from_secs(1)).is_ok());
    }
}
