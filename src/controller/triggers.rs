//! Which changes wake which objects: decisions of the watch mappers, kept pure.

use crate::api::conditions::{self, READY};
use crate::api::issuer::IssuerStatus;

/// Whether an issuer change should wake the requests waiting on it: only once the issuer has
/// been checked at its current generation. A new or just-edited issuer is checked within
/// moments, and that status write wakes them again; waking them before would write
/// "waiting to be checked" to every waiting request (one status write and one event each)
/// only to overwrite it right after.
pub fn issuer_change_wakes_requests(status: Option<&IssuerStatus>, generation: Option<i64>) -> bool {
    status
        .and_then(|s| conditions::find(&s.conditions, READY))
        .is_some_and(|ready| ready.observed_generation >= generation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn status(ready: Option<(&str, i64)>) -> IssuerStatus {
        IssuerStatus {
            conditions: ready
                .map(|(s, observed)| Condition {
                    type_: READY.into(),
                    status: s.into(),
                    observed_generation: Some(observed),
                    reason: "Verified".into(),
                    message: String::new(),
                    last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_wake_only_for_an_issuer_checked_at_its_generation() {
        let cases = [
            (None, false),                            // created, no status yet
            (Some(status(None)), false),              // status without Ready
            (Some(status(Some(("True", 1)))), true),  // checked, Ready
            (Some(status(Some(("False", 1)))), true), // checked, not Ready: requests say why
            (Some(status(Some(("True", 0)))), false), // spec edited, not yet re-checked
        ];
        for (status, wakes) in cases {
            assert_eq!(
                issuer_change_wakes_requests(status.as_ref(), Some(1)),
                wakes,
                "{status:?}"
            );
        }
    }
}
