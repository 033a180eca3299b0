//! Events about our objects: published once per change (not through kube-runtime's
//! `Recorder`), notes cut to what the API server keeps, and a per-object queue of the events it
//! refused, sent again before that object's next reconcile ([`super::reconcile_with_backoff`]).
//! A deleted object is never reconciled again, so its queued events are dropped by
//! [`EventQueue::retain_existing`], which the controllers' sweep runs against the watch caches:
//! the queue holds events of live objects only, however many objects come and go.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Api;
use kube::runtime::events::EventType;
use tracing::warn;

use super::{Context, object_key};

/// Who our events say reported them, and the events the API server refused, per object.
pub struct EventQueue {
    /// `reportingInstance` of our events: the pod's name.
    reporting_instance: String,
    unsent: Mutex<HashMap<String, Vec<UnsentEvent>>>,
}

impl EventQueue {
    pub fn new() -> Self {
        Self {
            reporting_instance: std::env::var("POD_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .unwrap_or_else(|_| crate::FIELD_MANAGER.to_string()),
            unsent: Mutex::new(HashMap::new()),
        }
    }
}

impl EventQueue {
    /// Drops the queued events of every object for which `exists` is false (deleted, or
    /// deleted and made again under the same name: the reference's uid no longer matches).
    /// Returns how many events were dropped.
    pub fn retain_existing(&self, exists: impl Fn(&ObjectReference) -> bool) -> usize {
        let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        let mut dropped = 0;
        unsent.retain(|_, queued| {
            // Every event of one key is about the same object; the last names it best (a
            // re-created object's events replace the old uid's at the end).
            let keep = queued.last().is_some_and(|e| exists(&e.reference));
            if !keep {
                dropped += queued.len();
            }
            keep
        });
        dropped
    }

    /// How many events wait to be written, for all objects.
    pub fn len(&self) -> usize {
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues an event the API server refused.
    fn queue(&self, event: UnsentEvent) {
        self.unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(object_key(&event.reference))
            .or_default()
            .push(event);
    }
}

impl Default for EventQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// An event that could not be written yet.
#[derive(Clone, Debug)]
struct UnsentEvent {
    reference: ObjectReference,
    type_: EventType,
    reason: String,
    action: String,
    note: String,
}

/// The longest event note the API server keeps (events.k8s.io/v1 refuses longer ones).
pub const MAX_EVENT_NOTE_BYTES: usize = 1024;

/// Cuts `note` to at most [`MAX_EVENT_NOTE_BYTES`] bytes on a character boundary, marking the
/// cut, so a long chain of error messages never makes the event itself fail.
pub fn cut_note(mut note: String) -> String {
    if note.len() <= MAX_EVENT_NOTE_BYTES {
        return note;
    }
    const MARK: &str = " [...]";
    let mut end = MAX_EVENT_NOTE_BYTES - MARK.len();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note.truncate(end);
    note.push_str(MARK);
    note
}

// === impl Context ===

impl Context {
    /// Sends the events of `reference` that failed before; those that fail again stay queued.
    pub(super) async fn send_unsent_events(&self, reference: &ObjectReference) {
        let key = object_key(reference);
        let queued = self
            .events
            .unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .unwrap_or_default();
        for e in queued {
            self.publish_event(&e.reference, e.type_, &e.reason, &e.action, e.note)
                .await;
        }
    }

    /// How many events of `reference` still wait to be written.
    pub(super) fn unsent_event_count(&self, reference: &ObjectReference) -> usize {
        self.events
            .unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&object_key(reference))
            .map_or(0, Vec::len)
    }

    /// Publishes an event, its note cut to [`MAX_EVENT_NOTE_BYTES`]. An event the API server
    /// refuses is queued: the reconcile then ends in an error ([`reconcile_with_backoff`]),
    /// the error policy backs off, and the event is sent again before the next reconcile.
    pub async fn publish_event(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = cut_note(note);
        // Events about cluster-scoped objects (ClusterMeshCAIssuers) go to kube-system: the one
        // namespace every Kubernetes version accepts for them (1.20 rejects "default").
        let namespace = reference
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("kube-system");
        let result = self
            .create_event(namespace, reference, type_, reason, action, &note)
            .await;
        if let Err(e) = result {
            warn!(error = %e, %reason, "could not publish event; it is sent again after a back-off");
            self.metrics.count_reconcile("event", "write_failed");
            self.events.queue(UnsentEvent {
                reference: reference.clone(),
                type_,
                reason: reason.to_string(),
                action: action.to_string(),
                note,
            });
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
            reporting_instance: Some(self.events.reporting_instance.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(kind: &str, name: &str, uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some(kind.into()),
            namespace: Some("istio-system".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn refused(reference: &ObjectReference, reason: &str) -> UnsentEvent {
        UnsentEvent {
            reference: reference.clone(),
            type_: EventType::Warning,
            reason: reason.into(),
            action: "Sign".into(),
            note: "the API server was away".into(),
        }
    }

    /// Events of deleted objects would never be sent (a deleted object is not reconciled
    /// again) and would stay in memory for good: the sweep drops them, keeps the live ones.
    #[test]
    fn queued_events_of_deleted_objects_are_dropped() {
        let queue = EventQueue::new();
        let live = reference("CertificateRequest", "live", "uid-1");
        let deleted = reference("CertificateRequest", "deleted", "uid-2");
        let recreated = reference("IstioCACerts", "mesh", "uid-old");
        for r in [&live, &deleted, &deleted, &recreated] {
            queue.queue(refused(r, "Issued"));
        }
        assert_eq!(queue.len(), 4);
        // What the watch caches hold: `live` as it was; `mesh` made again with a new uid.
        let exists = |r: &ObjectReference| match r.name.as_deref() {
            Some("live") => r.uid.as_deref() == Some("uid-1"),
            Some("mesh") => r.uid.as_deref() == Some("uid-new"),
            _ => false,
        };
        assert_eq!(
            queue.retain_existing(exists),
            3,
            "the deleted and the re-created object's"
        );
        assert_eq!(queue.len(), 1);
        let kept = queue.unsent.lock().unwrap();
        assert_eq!(
            kept.get(&object_key(&live)).map(|q| q[0].reason.as_str()),
            Some("Issued"),
            "the live object's event is still sent"
        );
        drop(kept);
        // Nothing deleted: nothing dropped.
        assert_eq!(queue.retain_existing(|_| true), 0);
        assert_eq!(queue.retain_existing(|_| false), 1);
        assert!(queue.is_empty());
    }

    #[test]
    fn event_notes_are_cut_to_one_kib_on_a_character_boundary() {
        assert_eq!(cut_note("short".into()), "short");
        let exact = "x".repeat(MAX_EVENT_NOTE_BYTES);
        assert_eq!(cut_note(exact.clone()), exact);
        // Multi-byte characters around the cut: never split, always within the limit.
        for filler in ["é", "€", "🔐"] {
            let cut = cut_note(filler.repeat(2000));
            assert!(cut.len() <= MAX_EVENT_NOTE_BYTES, "{}", cut.len());
            assert!(cut.ends_with(" [...]"));
        }
    }
}
