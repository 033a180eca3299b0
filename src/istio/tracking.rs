//! What an IstioCACerts tracks about the bundle istiod runs with: each certificate's renewal
//! window (the intermediate, its roots, the issuer's backend CA), the `CertificatesHealthy`
//! verdict over all of them, and the events a change of window or condition calls for. Pure:
//! the clock and thresholds are arguments.

use jiff::Timestamp;

use super::plan::PlannedEvent;
use crate::api::conditions::{self, READY};
use crate::api::istio_cacerts::{IstioCACertsStatus, RenewalWindow, TrackedCertificate};
use crate::metrics::CertificateSeries;
use crate::pki::Certificate;
use crate::pki::renewal::{Life, Thresholds, risks};

/// The second condition: every tracked certificate healthy, no dangerous combination.
pub const CERTIFICATES_HEALTHY: &str = "CertificatesHealthy";

/// Roles of tracked certificates, as in metrics labels and event reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Intermediate,
    Root,
    BackendCA,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Intermediate, Role::Root, Role::BackendCA];

    pub fn metric_kind(self) -> &'static str {
        match self {
            Role::Intermediate => "intermediate",
            Role::Root => "root",
            Role::BackendCA => "backend_ca",
        }
    }

    fn event_prefix(self) -> &'static str {
        match self {
            Role::Intermediate => "Intermediate",
            Role::Root => "Root",
            Role::BackendCA => "BackendCA",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Intermediate => "the intermediate",
            Role::Root => "the root",
            Role::BackendCA => "the backend CA",
        }
    }
}

/// A certificate to track: who, its life, and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub role: Role,
    pub subject: String,
    pub fingerprint: String,
    /// Lower-case hex; unknown for a backend CA (its status summary has none).
    pub serial: Option<String>,
    pub life: Life,
}

impl Tracked {
    pub fn from_certificate(role: Role, cert: &Certificate, renewal: Option<Timestamp>) -> Self {
        Self {
            role,
            subject: cert.subject(),
            fingerprint: cert.fingerprint(),
            serial: Some(cert.serial_hex()),
            life: Life::new(cert.not_before(), cert.not_after(), renewal),
        }
    }

    /// As `status.intermediate`, `status.roots[]` or `status.backendCA` show it.
    pub fn status(&self, now: Timestamp, t: &Thresholds) -> TrackedCertificate {
        TrackedCertificate {
            subject: self.subject.clone(),
            fingerprint_sha256: self.fingerprint.clone(),
            serial_number: self.serial.clone(),
            not_before: self.life.not_before.to_string(),
            not_after: self.life.not_after.to_string(),
            renewal_time: self.life.renewal.to_string(),
            window: self.life.window(now, t),
            name_constraints: None,
        }
    }

    /// As `meshca_certificate_*` exports it.
    pub fn series(&self, now: Timestamp, t: &Thresholds) -> CertificateSeries {
        CertificateSeries {
            fingerprint: self.fingerprint.clone(),
            not_after: self.life.not_after.as_second(),
            renewal: Some(self.life.renewal.as_second()),
            window: Some(self.life.window(now, t)),
        }
    }

    /// The reason of an event or condition about this certificate in `window`.
    fn reason(&self, window: RenewalWindow) -> String {
        format!("{}{}", self.role.event_prefix(), window.as_str())
    }
}

/// The `CertificatesHealthy` verdict: (healthy, reason, message).
pub fn health(tracked: &[Tracked], anchor: Option<&Tracked>, now: Timestamp, t: &Thresholds) -> (bool, String, String) {
    let mut problems: Vec<(String, String)> = Vec::new();
    // Worst window first: Expired, Expiring, RenewalDue.
    for window in [
        RenewalWindow::Expired,
        RenewalWindow::Expiring,
        RenewalWindow::RenewalDue,
    ] {
        for c in tracked.iter().filter(|c| c.life.window(now, t) == window) {
            let what = match window {
                RenewalWindow::Expired => format!("expired at {}", c.life.not_after),
                RenewalWindow::Expiring => format!("expires at {}", c.life.not_after),
                _ => format!("was due for renewal at {} and has not been renewed", c.life.renewal),
            };
            problems.push((c.reason(window), format!("{} {} {what}", c.role.name(), c.subject)));
        }
    }
    if let Some(intermediate) = tracked.iter().find(|c| c.role == Role::Intermediate) {
        let backend = tracked.iter().find(|c| c.role == Role::BackendCA);
        for risk in risks(
            &intermediate.life,
            anchor.map(|a| &a.life),
            backend.map(|b| &b.life),
            now,
            t,
        ) {
            problems.push((risk.reason.to_string(), risk.message));
        }
    }
    match problems.first() {
        None => (
            true,
            "AllHealthy".to_string(),
            "Every tracked certificate is within its healthy window".to_string(),
        ),
        Some((reason, _)) => {
            let message = problems.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>().join("; ");
            (false, reason.clone(), message)
        }
    }
}

/// One event per change: Ready's reason, CertificatesHealthy's reason, and each tracked
/// certificate's window.
pub fn announcements(
    previous: Option<&IstioCACertsStatus>,
    status: &IstioCACertsStatus,
    tracked: &[Tracked],
    now: Timestamp,
    t: &Thresholds,
) -> Vec<PlannedEvent> {
    let mut events = condition_changes(previous, status, tracked, now, t);
    events.extend(window_changes(previous, tracked, now, t));
    events
}

/// The events of Ready, CertificatesHealthy and CRLsCurrent changing reason or status.
fn condition_changes(
    previous: Option<&IstioCACertsStatus>,
    status: &IstioCACertsStatus,
    tracked: &[Tracked],
    now: Timestamp,
    t: &Thresholds,
) -> Vec<PlannedEvent> {
    let condition =
        |s: Option<&IstioCACertsStatus>, type_: &str| s.and_then(|s| conditions::find(&s.conditions, type_)).cloned();
    let mut events = Vec::new();
    for type_ in [READY, CERTIFICATES_HEALTHY, super::revocation::CRLS_CURRENT] {
        let (before, after) = (condition(previous, type_), condition(Some(status), type_));
        let Some(after) = after else { continue };
        let changed = before
            .as_ref()
            .is_none_or(|b| b.reason != after.reason || b.status != after.status);
        // A fresh resource that is simply fine says nothing; the Written event covers it. A
        // window reason is announced per certificate below, not twice.
        let window_reason = tracked.iter().any(|c| after.reason == c.reason(c.life.window(now, t)));
        if !changed
            || (before.is_none() && after.status == "True")
            || (type_ == READY && after.status == "True")
            || window_reason
        {
            continue;
        }
        events.push(PlannedEvent {
            warning: after.status != "True",
            reason: after.reason.clone(),
            action: "Check",
            note: after.message.clone(),
        });
    }
    events
}

/// The events of tracked certificates whose window changed (or that are seen for the first
/// time outside their healthy window).
fn window_changes(
    previous: Option<&IstioCACertsStatus>,
    tracked: &[Tracked],
    now: Timestamp,
    t: &Thresholds,
) -> Vec<PlannedEvent> {
    let previous_windows: Vec<(String, RenewalWindow)> = previous
        .map(|s| {
            s.intermediate
                .iter()
                .chain(s.roots.iter())
                .chain(s.backend_ca.iter())
                .map(|c| (c.fingerprint_sha256.clone(), c.window))
                .collect()
        })
        .unwrap_or_default();
    let mut events = Vec::new();
    for c in tracked {
        let window = c.life.window(now, t);
        let before = previous_windows
            .iter()
            .find(|(f, _)| *f == c.fingerprint)
            .map(|(_, w)| *w);
        let changed = match before {
            Some(b) => b != window,
            // A certificate seen for the first time is announced only when it is not healthy.
            None => window != RenewalWindow::Healthy,
        };
        if !changed {
            continue;
        }
        events.push(PlannedEvent {
            warning: window != RenewalWindow::Healthy,
            reason: c.reason(window),
            action: "Track",
            note: format!(
                "{} {} (SHA-256 {}) is now {}: renewal at {}, notAfter {}",
                c.role.name(),
                c.subject,
                c.fingerprint,
                window.as_str(),
                c.life.renewal,
                c.life.not_after
            ),
        });
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(days: i64) -> Timestamp {
        Timestamp::from_second(days * 86_400).unwrap()
    }

    fn tracked(role: Role, from: i64, to: i64) -> Tracked {
        Tracked {
            role,
            subject: format!("CN={role:?}"),
            fingerprint: format!("{role:?}"),
            serial: None,
            life: Life::new(at(from), at(to), None),
        }
    }

    #[test]
    fn health_verdicts() {
        let t = Thresholds::default();
        let intermediate = tracked(Role::Intermediate, 0, 90);
        let root = tracked(Role::Root, -100, 3650);
        let (ok, reason, _) = health(&[intermediate.clone(), root.clone()], Some(&root), at(10), &t);
        assert!(ok);
        assert_eq!(reason, "AllHealthy");
        // Past the renewal time and not renewed.
        let (ok, reason, message) = health(&[intermediate.clone(), root.clone()], Some(&root), at(70), &t);
        assert!(!ok);
        assert_eq!(reason, "IntermediateRenewalDue");
        assert!(message.contains("has not been renewed"), "{message}");
        // A root expiring before the renewal: the worst window first, then the risks.
        let short_root = tracked(Role::Root, -100, 50);
        let (ok, reason, message) = health(
            &[intermediate.clone(), short_root.clone()],
            Some(&short_root),
            at(45),
            &t,
        );
        assert!(!ok);
        assert_eq!(reason, "RootExpiring");
        assert!(
            message.contains("CAExpiresBeforeRenewal") || message.contains("before the intermediate's next renewal"),
            "{message}"
        );
        assert!(message.contains("after its root expires"), "{message}");
    }
}
