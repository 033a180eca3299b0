//! Coalesced reads: one read in flight per key serves every caller that began *before that
//! read was sent*, and a caller that begins later waits for the next one.
//!
//! Why: a local CA is read from its Secret before every signing, so that a root replaced
//! before a request began is never used for it. Under a burst that was one GET per request.
//! Coalesced, it is one GET per batch, and the promise still holds: a caller only ever gets
//! the answer of a read that left after the caller arrived, so whatever was written before
//! it arrived is in that answer (a GET without a resourceVersion is a quorum read).
//!
//! How: every arrival and every read takes a number from one counter. A read numbered `s`
//! answers the callers numbered below `s`. One read per key runs at a time (a fair lock), so
//! callers that arrive during a read queue up; the first of them to get the lock sends the
//! next read, and the rest find its answer when their turn comes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Reads of `V` by key (a Secret's namespace/name), coalesced. `V` is cloned to each caller a
/// read serves, so it should be cheap to clone (an `Arc`, a `Result` of them).
pub struct Coalesced<V> {
    /// One counter for arrivals and reads alike: their order is what the promise is about.
    counter: AtomicU64,
    slots: Mutex<HashMap<String, Slot<V>>>,
}

/// One key's last answer, behind the lock only one read at a time holds.
type Slot<V> = Arc<tokio::sync::Mutex<Option<Answer<V>>>>;

struct Answer<V> {
    /// The number the read took when it was sent.
    sent: u64,
    value: V,
}

impl<V> Default for Coalesced<V> {
    fn default() -> Self {
        Coalesced {
            counter: AtomicU64::new(0),
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> Coalesced<V> {
    /// The answer of a read of `key` sent after this call began: `read`'s own, or that of a
    /// read another caller sent meanwhile.
    pub async fn read<F, Fut>(&self, key: &str, read: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        let arrived = self.counter.fetch_add(1, Ordering::SeqCst);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(key.to_string()).or_default().clone()
        };
        let mut last = slot.lock().await;
        if let Some(answer) = last.as_ref()
            && answer.sent > arrived
        {
            return answer.value.clone();
        }
        // Numbered before it is sent: every caller numbered below already waits for it.
        let sent = self.counter.fetch_add(1, Ordering::SeqCst);
        let value = read().await;
        *last = Some(Answer {
            sent,
            value: value.clone(),
        });
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// The value a read returns is the store's version when the read was sent: if callers got
    /// a version older than the one current when they began, the promise would be broken.
    #[tokio::test]
    async fn a_caller_only_gets_a_read_sent_after_it_began() {
        let reads = Arc::new(Coalesced::<u64>::default());
        let version = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (reads, version, sent) = (reads.clone(), version.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                // Halfway through, the stored value is replaced, as a root Secret would be.
                if i == 100 {
                    version.store(1, Ordering::SeqCst);
                }
                let current_at_start = version.load(Ordering::SeqCst);
                let got = reads
                    .read("ns/root", || {
                        let (version, sent) = (version.clone(), sent.clone());
                        async move {
                            sent.fetch_add(1, Ordering::SeqCst);
                            let v = version.load(Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            v
                        }
                    })
                    .await;
                (current_at_start, got)
            }));
        }
        for task in tasks {
            let (at_start, got) = task.await.expect("task");
            assert!(got >= at_start, "began at version {at_start}, was given {got}");
        }
        let sent = sent.load(Ordering::SeqCst);
        // 200 callers arriving at once share reads: fewer reads than callers.
        assert!(sent < 200, "{sent} reads for 200 callers: nothing was coalesced");
    }

    #[tokio::test]
    async fn a_caller_arriving_after_a_read_ended_reads_again() {
        let reads = Coalesced::<u32>::default();
        let calls = AtomicUsize::new(0);
        for _ in 0..3 {
            reads
                .read("k", || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    7
                })
                .await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // Keys are independent.
        reads
            .read("other", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                1
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
