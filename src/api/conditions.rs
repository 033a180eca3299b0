//! Status conditions on our resources: one shape (`metav1.Condition`), one rule for
//! timestamps (they move only when the status changes) and `observedGeneration` always stamped.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition type every resource of ours carries.
pub const READY: &str = "Ready";

/// "True"/"False" as Kubernetes spells condition statuses.
pub fn status_str(ok: bool) -> &'static str {
    if ok { "True" } else { "False" }
}

/// The condition of `type_` in `conditions`, if any.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Builds the next value of a condition: `lastTransitionTime` is kept from `previous` when the
/// status did not change, so a periodic re-check never looks like a transition.
pub fn next(
    previous: Option<&Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = status_str(ok);
    let last_transition_time = match previous {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation,
        last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let first = next(None, READY, false, "Pending", "waiting", Some(1), at(100));
        // Same status, new reason and generation: the transition time stays.
        let same = next(Some(&first), READY, false, "Other", "still waiting", Some(2), at(200));
        assert_eq!(same.last_transition_time, Time(at(100)));
        assert_eq!(same.observed_generation, Some(2));
        assert_eq!(same.reason, "Other");
        // Status flips: the transition time moves.
        let flipped = next(Some(&same), READY, true, "Ready", "ok", Some(2), at(300));
        assert_eq!(flipped.last_transition_time, Time(at(300)));
        assert_eq!(flipped.status, "True");
    }
}
