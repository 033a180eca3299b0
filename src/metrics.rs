//! Prometheus metrics, registered on one registry that lives in the controller's context (not
//! a global), so several controllers can run in one test process.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::backend::CaInfo;

/// Labels of per-outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub controller: String,
    pub outcome: String,
}

/// Labels of a tracked certificate: the role it plays (`intermediate`, `root`, `backend_ca`),
/// the object it belongs to, and which certificate exactly.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub fingerprint: String,
}

/// Every metric the process exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub ready: Gauge,
    pub signing_seconds: Histogram,
    pub certificate_not_after: Family<CertificateLabels, Gauge>,
    pub certificate_renewal: Family<CertificateLabels, Gauge>,
    /// The fingerprints exported per (kind, namespace, name), so a replaced certificate's
    /// series is removed instead of lingering.
    exported: Mutex<HashMap<(String, String, String), Vec<String>>>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshca");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by controller and outcome",
            reconciles.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "controller_ready",
            "1 once every watch cache has synced and the controllers run",
            ready.clone(),
        );
        let signing_seconds = Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]);
        registry.register(
            "signing_duration_seconds",
            "Time the backend took to sign a request",
            signing_seconds.clone(),
        );
        let certificate_not_after = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_not_after_seconds",
            "notAfter of a tracked certificate, as a Unix timestamp",
            certificate_not_after.clone(),
        );
        let certificate_renewal = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_renewal_seconds",
            "When a tracked certificate is due for renewal, as a Unix timestamp",
            certificate_renewal.clone(),
        );
        Self {
            registry,
            reconciles,
            ready,
            signing_seconds,
            certificate_not_after,
            certificate_renewal,
            exported: Mutex::new(HashMap::new()),
        }
    }

    pub fn count_reconcile(&self, controller: &str, outcome: &str) {
        self.reconciles
            .get_or_create(&OutcomeLabels {
                controller: controller.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// Exports an issuer's signing CA (`namespace` empty for a cluster issuer), as kind `issuer_ca`.
    pub fn observe_issuer_ca(&self, namespace: &str, name: &str, ca: &CaInfo) {
        let series = [(
            ca.summary.fingerprint_sha256.clone(),
            ca.lifetime.not_after.as_second(),
            None,
        )];
        self.set_certificates("issuer_ca", namespace, name, &series);
    }

    /// Replaces the certificates exported for one (kind, namespace, name): `(fingerprint,
    /// notAfter, renewal time)` in Unix seconds. Series of certificates no longer listed are
    /// removed.
    pub fn set_certificates(&self, kind: &str, namespace: &str, name: &str, certs: &[(String, i64, Option<i64>)]) {
        let labels = |fingerprint: &str| CertificateLabels {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            fingerprint: fingerprint.to_string(),
        };
        let key = (kind.to_string(), namespace.to_string(), name.to_string());
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        for old in exported.remove(&key).unwrap_or_default() {
            if !certs.iter().any(|(f, _, _)| *f == old) {
                self.certificate_not_after.remove(&labels(&old));
                self.certificate_renewal.remove(&labels(&old));
            }
        }
        for (fingerprint, not_after, renewal) in certs {
            self.certificate_not_after
                .get_or_create(&labels(fingerprint))
                .set(*not_after);
            if let Some(renewal) = renewal {
                self.certificate_renewal
                    .get_or_create(&labels(fingerprint))
                    .set(*renewal);
            }
        }
        exported.insert(key, certs.iter().map(|(f, _, _)| f.clone()).collect());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_certificate_series_disappears() {
        let m = Metrics::new();
        m.set_certificates(
            "root",
            "istio-system",
            "mesh",
            &[("aa".into(), 100, Some(50)), ("bb".into(), 200, None)],
        );
        m.set_certificates(
            "root",
            "istio-system",
            "mesh",
            &[("bb".into(), 200, None), ("cc".into(), 300, Some(250))],
        );
        let text = m.render();
        assert!(!text.contains("fingerprint=\"aa\""), "{text}");
        let labels = "{kind=\"root\",namespace=\"istio-system\",name=\"mesh\",fingerprint=\"cc\"}";
        assert!(
            text.contains(&format!("meshca_certificate_not_after_seconds{labels} 300")),
            "{text}"
        );
        assert!(
            text.contains(&format!("meshca_certificate_renewal_seconds{labels} 250")),
            "{text}"
        );
    }
}
