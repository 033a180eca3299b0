//! Copies of requests known to be stale: the resourceVersions this controller has written
//! over, per request.
//!
//! Why: a reconcile decides on the watch cache's copy of a request. Right after one of our own
//! writes, that copy can still be the one we wrote over (two triggers queued while one
//! reconcile ran). Signing it again would be wasted, and handing out a second certificate would
//! be wrong. The status write is guarded by the resourceVersion decided on, so the API server
//! refuses the write of a stale copy (409) and nothing is ever handed out twice; this record
//! saves the signature too, without a read of the request before every signing. A copy at a
//! resourceVersion we wrote over is stale for certain: our write is on its way through the
//! watch, and it wakes the request again.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many written-over versions are kept per request: a request sees a handful of our writes
/// (a retry mark, a signing mark, a status), and only the newest few can still be in a cache.
const KEPT_PER_REQUEST: usize = 4;

/// By request uid, the resourceVersions our writes replaced.
#[derive(Default)]
pub struct Superseded(Mutex<HashMap<String, Vec<String>>>);

impl Superseded {
    /// Our write replaced `uid`'s copy at `resource_version`.
    pub fn record(&self, uid: &str, resource_version: Option<&str>) {
        let Some(resource_version) = resource_version else {
            return;
        };
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let versions = map.entry(uid.to_string()).or_default();
        if versions.len() == KEPT_PER_REQUEST {
            versions.remove(0);
        }
        versions.push(resource_version.to_string());
    }

    /// Whether `uid`'s copy at `resource_version` is one we already wrote over.
    pub fn is_stale(&self, uid: &str, resource_version: Option<&str>) -> bool {
        let Some(resource_version) = resource_version else {
            return false;
        };
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(uid)
            .is_some_and(|versions| versions.iter().any(|v| v == resource_version))
    }

    /// The request ended: no copy of it is signed again anyway.
    pub fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    /// Drops the record of every request `keep` rejects (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|uid, _| keep(uid));
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_we_wrote_over_is_stale_and_a_newer_one_is_not() {
        let superseded = Superseded::default();
        assert!(!superseded.is_stale("a", Some("10")));
        superseded.record("a", Some("10"));
        superseded.record("a", Some("11"));
        assert!(superseded.is_stale("a", Some("10")));
        assert!(superseded.is_stale("a", Some("11")));
        // The version our last write made is the current one, not a stale one.
        assert!(!superseded.is_stale("a", Some("12")));
        // Per request: another request's versions say nothing.
        assert!(!superseded.is_stale("b", Some("10")));
        // No resourceVersion: nothing is known.
        superseded.record("a", None);
        assert!(!superseded.is_stale("a", None));
    }

    #[test]
    fn the_record_stays_small_and_goes_with_its_request() {
        let superseded = Superseded::default();
        for rv in 0..10 {
            superseded.record("a", Some(&rv.to_string()));
        }
        assert!(!superseded.is_stale("a", Some("5")));
        assert!(superseded.is_stale("a", Some("6")));
        assert!(superseded.is_stale("a", Some("9")));
        superseded.record("b", Some("1"));
        superseded.retain(|uid| uid == "b");
        assert!(!superseded.is_stale("a", Some("9")));
        assert_eq!(superseded.len(), 1);
        superseded.forget("b");
        assert!(superseded.is_empty());
    }
}
