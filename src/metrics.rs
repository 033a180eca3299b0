//! Prometheus metrics, registered per area on one registry that lives in the controller's
//! context (not a global), so several controllers can run in one test process.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-reconcile metrics: which controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

/// Labels of per-outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub controller: String,
    pub outcome: String,
}

/// Every metric the process exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub ready: Gauge,
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
        Self {
            registry,
            reconciles,
            ready,
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
