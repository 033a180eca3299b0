//! Renewal windows and the dangerous combinations between an intermediate and the CAs above
//! it. Pure; the clock and the thresholds are parameters.
//!
//! Windows, in order of precedence: Expired (past notAfter) > Expiring (less than the expiring
//! threshold left) > RenewalDue (past the renewal time plus grace, i.e. renewal should have
//! happened) > Healthy.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::istio_cacerts::RenewalWindow;

/// The thresholds, from flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// How long before notAfter a certificate counts as Expiring.
    pub expiring: Duration,
    /// How long past its renewal time a certificate may stay before it counts as RenewalDue
    /// (cert-manager renews at the renewal time; this is the slack for it to finish).
    pub renewal_grace: Duration,
    /// istiod's workload certificate lifetime (24h by default).
    pub workload_ttl: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            expiring: Duration::from_secs(7 * 24 * 3600),
            renewal_grace: Duration::from_secs(3600),
            workload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// cert-manager's default renewal time: two thirds into the lifetime, in whole seconds like
/// every certificate time.
pub fn default_renewal_time(not_before: Timestamp, not_after: Timestamp) -> Timestamp {
    let lifetime = not_after.duration_since(not_before);
    let renewal = not_before + lifetime * 2 / 3;
    Timestamp::from_second(renewal.as_second()).unwrap_or(renewal)
}

/// A certificate's life, for window arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Life {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub renewal: Timestamp,
}

impl Life {
    pub fn new(not_before: Timestamp, not_after: Timestamp, renewal: Option<Timestamp>) -> Self {
        Self {
            not_before,
            not_after,
            renewal: renewal.unwrap_or_else(|| default_renewal_time(not_before, not_after)),
        }
    }

    pub fn window(&self, now: Timestamp, t: &Thresholds) -> RenewalWindow {
        if now >= self.not_after {
            RenewalWindow::Expired
        } else if now >= self.not_after - signed(t.expiring) {
            RenewalWindow::Expiring
        } else if now >= self.renewal + signed(t.renewal_grace) {
            RenewalWindow::RenewalDue
        } else {
            RenewalWindow::Healthy
        }
    }

    /// The next moment after `now` at which the window changes, if any.
    pub fn next_boundary(&self, now: Timestamp, t: &Thresholds) -> Option<Timestamp> {
        [
            self.renewal + signed(t.renewal_grace),
            self.not_after - signed(t.expiring),
            self.not_after,
        ]
        .into_iter()
        .filter(|b| *b > now)
        .min()
    }
}

/// A dangerous combination, with a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Risk {
    /// PascalCase, for the condition's reason.
    pub reason: &'static str,
    pub message: String,
}

/// The dangerous combinations of an intermediate with the root it chains to and the backend CA
/// that signs its renewals.
pub fn risks(
    intermediate: &Life,
    root: Option<&Life>,
    backend_ca: Option<&Life>,
    now: Timestamp,
    t: &Thresholds,
) -> Vec<Risk> {
    let mut out = Vec::new();
    for (what, ca) in [("the root", root), ("the backend CA", backend_ca)] {
        let Some(ca) = ca else { continue };
        if ca.not_after < intermediate.renewal && ca.not_after > now {
            out.push(Risk {
                reason: "CAExpiresBeforeRenewal",
                message: format!(
                    "{what} expires at {}, before the intermediate's next renewal at {}: the renewal cannot succeed; rotate {what} now",
                    ca.not_after, intermediate.renewal
                ),
            });
        }
    }
    if let Some(root) = root
        && intermediate.not_after > root.not_after
    {
        out.push(Risk {
            reason: "IntermediateOutlivesRoot",
            message: format!(
                "the intermediate is valid until {}, after its root expires at {}: workloads stop trusting it at the root's expiry",
                intermediate.not_after, root.not_after
            ),
        });
    }
    let remaining = intermediate.not_after.duration_since(now);
    if remaining < signed(t.workload_ttl) && now < intermediate.not_after {
        out.push(Risk {
            reason: "ShorterThanWorkloadCertificates",
            message: format!(
                "the intermediate has {} left, less than istiod's workload certificate lifetime ({}): workload certificates will outlive it; renew it now",
                crate::duration::format_go_duration(remaining.unsigned_abs()),
                crate::duration::format_go_duration(t.workload_ttl)
            ),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn at(d: f64) -> Timestamp {
        Timestamp::from_second((d * DAY as f64) as i64).unwrap()
    }

    /// A 90-day intermediate from day 0, renewed at day 60 by default.
    fn intermediate() -> Life {
        Life::new(at(0.0), at(90.0), None)
    }

    #[test]
    fn default_renewal_is_two_thirds_into_the_lifetime() {
        assert_eq!(intermediate().renewal, at(60.0));
    }

    #[test]
    fn windows_over_a_lifetime() {
        let t = Thresholds::default();
        let cases = [
            (10.0, RenewalWindow::Healthy),
            // Renewal time passed but within the 1h grace: still healthy.
            (60.02, RenewalWindow::Healthy),
            (60.1, RenewalWindow::RenewalDue),
            (83.5, RenewalWindow::Expiring),
            (90.0, RenewalWindow::Expired),
            (100.0, RenewalWindow::Expired),
        ];
        for (day, expected) in cases {
            assert_eq!(intermediate().window(at(day), &t), expected, "day {day}");
        }
    }

    #[test]
    fn next_boundary_is_the_first_future_window_change() {
        let t = Thresholds::default();
        let i = intermediate();
        assert_eq!(
            i.next_boundary(at(10.0), &t),
            Some(at(60.0) + SignedDuration::from_hours(1))
        );
        assert_eq!(i.next_boundary(at(70.0), &t), Some(at(83.0)));
        assert_eq!(i.next_boundary(at(85.0), &t), Some(at(90.0)));
        assert_eq!(i.next_boundary(at(91.0), &t), None);
    }

    #[test]
    fn dangerous_combinations() {
        let t = Thresholds::default();
        let healthy_root = Life::new(at(-100.0), at(3650.0), None);
        assert!(risks(&intermediate(), Some(&healthy_root), None, at(10.0), &t).is_empty());

        // A root expiring at day 50: before the renewal at day 60, and before the intermediate's end.
        let short_root = Life::new(at(-100.0), at(50.0), None);
        let reasons: Vec<_> = risks(&intermediate(), Some(&short_root), None, at(10.0), &t)
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(reasons, vec!["CAExpiresBeforeRenewal", "IntermediateOutlivesRoot"]);

        // The backend CA expiring before renewal is flagged the same way.
        let backend = Life::new(at(-10.0), at(40.0), None);
        let r = risks(&intermediate(), Some(&healthy_root), Some(&backend), at(10.0), &t);
        assert_eq!(r.len(), 1);
        assert!(r[0].message.contains("the backend CA expires"));

        // Twelve hours left: less than a day of workload certificates.
        let r = risks(&intermediate(), Some(&healthy_root), None, at(89.5), &t);
        assert_eq!(
            r.iter().map(|r| r.reason).collect::<Vec<_>>(),
            vec!["ShorterThanWorkloadCertificates"]
        );
        assert!(r[0].message.contains("12h left"), "{}", r[0].message);
    }
}
