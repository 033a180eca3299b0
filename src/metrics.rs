//! Prometheus metrics, registered on one registry that lives in the controller's context (not
//! a global), so several controllers can run in one test process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::istio_cacerts::RenewalWindow;
use crate::backend::CaInfo;

/// Labels of per-outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub controller: String,
    pub outcome: String,
}

/// Labels of `meshca_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub revision: String,
}

/// Labels of `meshca_root_rotation_phase`: one series per phase of one IstioCACerts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RotationLabels {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

/// Labels of `meshca_crl_next_update_timestamp_seconds`: one series per CRL in an
/// IstioCACerts' `ca-crl.pem`, named by the CA that signs it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrlLabels {
    pub namespace: String,
    pub name: String,
    pub issuer: String,
}

/// Labels of the API write counter: what the leadership fence did with a write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiWriteLabels {
    pub outcome: String,
}

/// Labels of counters per PKI backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// Labels of a tracked certificate: the role it plays (`intermediate`, `root`, `backend_ca`,
/// `issuer_ca`), the object it belongs to, and which certificate exactly.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub fingerprint: String,
}

/// One tracked certificate's figures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSeries {
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub renewal: Option<i64>,
    pub window: Option<RenewalWindow>,
}

/// The `kind` label of an issuer's signing CA.
pub const ISSUER_CA_KIND: &str = "issuer_ca";

/// The object a group of certificate series belongs to: the series' `kind`, `namespace` and
/// `name` labels (`namespace` empty for a cluster-scoped issuer).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct SeriesOwner {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

/// Answers whether the object behind a [`SeriesOwner`] still exists (from the watch caches).
pub type OwnerExists = Box<dyn Fn(&SeriesOwner) -> bool + Send + Sync>;

/// The window as a number that orders by urgency, for alerts (`>= 2` is expiring or worse).
pub fn window_code(window: RenewalWindow) -> i64 {
    match window {
        RenewalWindow::Healthy => 0,
        RenewalWindow::RenewalDue => 1,
        RenewalWindow::Expiring => 2,
        RenewalWindow::Expired => 3,
    }
}

/// Every metric the process exports.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<OutcomeLabels, Counter>,
    pub ready: Gauge,
    pub leader: Gauge,
    pub signing_seconds: Histogram,
    pub certificate_not_after: Family<CertificateLabels, Gauge>,
    pub certificate_renewal: Family<CertificateLabels, Gauge>,
    pub certificate_window: Family<CertificateLabels, Gauge>,
    pub root_rotation_phase: Family<RotationLabels, Gauge>,
    pub crl_next_update: Family<CrlLabels, Gauge>,
    pub api_writes: Family<ApiWriteLabels, Counter>,
    pub signings_repeated: Family<BackendLabels, Counter>,
    pub signatures_discarded: Family<BackendLabels, Counter>,
    /// The fingerprints exported per owner, so a replaced certificate's series is removed
    /// instead of lingering.
    exported: Mutex<HashMap<SeriesOwner, Vec<String>>>,
    /// The rotation phases exported per IstioCACerts, dropped with it as certificates are.
    rotation_exported: Mutex<HashMap<SeriesOwner, Vec<String>>>,
    /// The CRL issuers exported per IstioCACerts, likewise.
    crl_exported: Mutex<HashMap<SeriesOwner, Vec<String>>>,
    /// Set once the watch caches exist. A deleted object is never reconciled again, so its
    /// series are dropped when `/metrics` is rendered, not by its reconcile: an alert on a
    /// deleted IstioCACerts' expiring intermediate would otherwise fire until a restart.
    owner_exists: OnceLock<OwnerExists>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("meshca");
        // Always 1: the labels carry the information, so a dashboard or alert can join on the
        // version or spot replicas running different builds.
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::build_info::VERSION.to_string(),
                revision: crate::build_info::REVISION.to_string(),
            })
            .set(1);
        registry.register(
            "build_info",
            "The version and git revision of the running build; always 1",
            build_info,
        );
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
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease and acts",
            leader.clone(),
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
        let certificate_window = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_window",
            "Renewal window of a tracked certificate: 0 Healthy, 1 RenewalDue, 2 Expiring, 3 Expired",
            certificate_window.clone(),
        );
        let root_rotation_phase = Family::<RotationLabels, Gauge>::default();
        registry.register(
            "root_rotation_phase",
            "Root rotation phase of an IstioCACerts, one-hot: 1 for the current phase, 0 for the others",
            root_rotation_phase.clone(),
        );
        let crl_next_update = Family::<CrlLabels, Gauge>::default();
        registry.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of each CRL an IstioCACerts wrote into ca-crl.pem (Unix seconds), by the CA that signs it; a proxy that checks CRLs refuses that CA's certificates once it passes",
            crl_next_update.clone(),
        );
        let api_writes = Family::<ApiWriteLabels, Counter>::default();
        registry.register(
            "api_writes",
            "Mutating Kubernetes API requests of the controllers: sent, or refused_not_leader when this replica no longer led",
            api_writes.clone(),
        );
        let signings_repeated = Family::<BackendLabels, Counter>::default();
        registry.register(
            "signings_repeated",
            "Signings of a request whose earlier signing may have produced a certificate that was never handed out (a crash or a lost answer between signing and the status write), by backend; only backends without idempotency (vault) count",
            signings_repeated.clone(),
        );
        let signatures_discarded = Family::<BackendLabels, Counter>::default();
        registry.register(
            "signatures_discarded",
            "Certificates signed and then never handed out, because the request had changed since the copy they were signed for (its status write was refused with 409: a stale watch cache copy), by backend; only the local CA signs from the cache",
            signatures_discarded.clone(),
        );
        Self {
            registry,
            root_rotation_phase,
            crl_next_update,
            api_writes,
            signings_repeated,
            signatures_discarded,
            reconciles,
            ready,
            leader,
            signing_seconds,
            certificate_not_after,
            certificate_renewal,
            certificate_window,
            exported: Mutex::new(HashMap::new()),
            rotation_exported: Default::default(),
            crl_exported: Default::default(),
            owner_exists: OnceLock::new(),
        }
    }

    /// Counts a mutating API request of the controllers: `sent`, or `refused_not_leader` when
    /// the leadership fence stopped it.
    pub fn count_api_write(&self, outcome: &str) {
        self.api_writes
            .get_or_create(&ApiWriteLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// A certificate was signed for a stale copy of its request and not handed out.
    pub fn count_signature_discarded(&self, backend: &str) {
        self.signatures_discarded
            .get_or_create(&BackendLabels {
                backend: backend.to_string(),
            })
            .inc();
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
        let series = CertificateSeries {
            fingerprint: ca.summary.fingerprint_sha256.clone(),
            not_after: ca.lifetime.not_after.as_second(),
            renewal: None,
            window: None,
        };
        self.set_certificates(ISSUER_CA_KIND, namespace, name, &[series]);
    }

    /// Replaces the certificates exported for one (kind, namespace, name). Series of
    /// certificates no longer listed are removed.
    pub fn set_certificates(&self, kind: &str, namespace: &str, name: &str, certs: &[CertificateSeries]) {
        let owner = SeriesOwner {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let mut exported = self.exported.lock().unwrap_or_else(|p| p.into_inner());
        for old in exported.remove(&owner).unwrap_or_default() {
            if !certs.iter().any(|c| c.fingerprint == old) {
                self.remove_series(&owner, &old);
            }
        }
        for c in certs {
            let l = certificate_labels(&owner, &c.fingerprint);
            self.certificate_not_after.get_or_create(&l).set(c.not_after);
            if let Some(renewal) = c.renewal {
                self.certificate_renewal.get_or_create(&l).set(renewal);
            }
            if let Some(window) = c.window {
                self.certificate_window.get_or_create(&l).set(window_code(window));
            }
        }
        exported.insert(owner, certs.iter().map(|c| c.fingerprint.clone()).collect());
    }

    /// Sets the one-hot root rotation phase of an IstioCACerts (`None`: never rotated, all 0).
    pub fn set_rotation_phase(&self, namespace: &str, name: &str, current: Option<&str>, phases: &[&str]) {
        self.rotation_exported.lock().unwrap_or_else(|p| p.into_inner()).insert(
            rotation_owner(namespace, name),
            phases.iter().map(|p| p.to_string()).collect(),
        );
        for phase in phases {
            let labels = RotationLabels {
                namespace: namespace.to_string(),
                name: name.to_string(),
                phase: phase.to_string(),
            };
            self.root_rotation_phase
                .get_or_create(&labels)
                .set(i64::from(current == Some(*phase)));
        }
    }

    /// Replaces the CRL series of one IstioCACerts: `(issuer, nextUpdate in Unix seconds)`.
    pub fn set_crls(&self, namespace: &str, name: &str, crls: &[(String, i64)]) {
        let owner = crl_owner(namespace, name);
        let labels = |issuer: &str| CrlLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
            issuer: issuer.to_string(),
        };
        let mut exported = self.crl_exported.lock().unwrap_or_else(|p| p.into_inner());
        for old in exported.remove(&owner).unwrap_or_default() {
            if !crls.iter().any(|(issuer, _)| *issuer == old) {
                self.crl_next_update.remove(&labels(&old));
            }
        }
        for (issuer, next_update) in crls {
            self.crl_next_update.get_or_create(&labels(issuer)).set(*next_update);
        }
        exported.insert(owner, crls.iter().map(|(issuer, _)| issuer.clone()).collect());
    }

    /// Tells the metrics how to find out whether a series' object still exists. Only the
    /// first call counts: one process has one set of watch caches.
    pub fn track_owners(&self, owner_exists: OwnerExists) {
        let _ = self.owner_exists.set(owner_exists);
    }

    /// Removes the series of every object that no longer exists.
    fn forget_deleted_owners(&self) {
        let Some(owner_exists) = self.owner_exists.get() else {
            return;
        };
        forget_deleted(&self.exported, owner_exists, |owner, fingerprint| {
            self.remove_series(owner, fingerprint)
        });
        forget_deleted(&self.crl_exported, owner_exists, |owner, issuer| {
            self.crl_next_update.remove(&CrlLabels {
                namespace: owner.namespace.clone(),
                name: owner.name.clone(),
                issuer: issuer.to_string(),
            });
        });
        forget_deleted(&self.rotation_exported, owner_exists, |owner, phase| {
            self.root_rotation_phase.remove(&RotationLabels {
                namespace: owner.namespace.clone(),
                name: owner.name.clone(),
                phase: phase.to_string(),
            });
        });
    }

    fn remove_series(&self, owner: &SeriesOwner, fingerprint: &str) {
        let labels = certificate_labels(owner, fingerprint);
        self.certificate_not_after.remove(&labels);
        self.certificate_renewal.remove(&labels);
        self.certificate_window.remove(&labels);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.forget_deleted_owners();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Drops from `exported` (series keys per owner) every owner that no longer exists, removing
/// each of its series with `remove`.
fn forget_deleted(
    exported: &Mutex<HashMap<SeriesOwner, Vec<String>>>,
    owner_exists: &OwnerExists,
    remove: impl Fn(&SeriesOwner, &str),
) {
    exported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|owner, keys| {
            if owner_exists(owner) {
                return true;
            }
            for key in keys.iter() {
                remove(owner, key);
            }
            false
        });
}

/// The owner of an IstioCACerts' rotation series (any kind but the issuers' is looked up as
/// an IstioCACerts).
fn rotation_owner(namespace: &str, name: &str) -> SeriesOwner {
    SeriesOwner {
        kind: "root_rotation".to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// The owner of an IstioCACerts' CRL series (looked up as an IstioCACerts, as rotation's are).
fn crl_owner(namespace: &str, name: &str) -> SeriesOwner {
    SeriesOwner {
        kind: "crl".to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

fn certificate_labels(owner: &SeriesOwner, fingerprint: &str) -> CertificateLabels {
    CertificateLabels {
        kind: owner.kind.clone(),
        namespace: owner.namespace.clone(),
        name: owner.name.clone(),
        fingerprint: fingerprint.to_string(),
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

    fn series(fp: &str, not_after: i64, renewal: Option<i64>, window: Option<RenewalWindow>) -> CertificateSeries {
        CertificateSeries {
            fingerprint: fp.into(),
            not_after,
            renewal,
            window,
        }
    }

    #[test]
    fn build_info_names_the_version_and_the_revision() {
        let text = Metrics::new().render();
        let expected = format!(
            "meshca_build_info{{version=\"{}\",revision=\"{}\"}} 1",
            crate::build_info::VERSION,
            crate::build_info::REVISION
        );
        assert!(text.contains(&expected), "{text}");
    }

    #[test]
    fn a_replaced_certificate_series_disappears() {
        let m = Metrics::new();
        m.set_certificates(
            "root",
            "istio-system",
            "mesh",
            &[series("aa", 100, Some(50), None), series("bb", 200, None, None)],
        );
        m.set_certificates(
            "root",
            "istio-system",
            "mesh",
            &[
                series("bb", 200, None, None),
                series("cc", 300, Some(250), Some(RenewalWindow::Expiring)),
            ],
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
        assert!(text.contains(&format!("meshca_certificate_window{labels} 2")), "{text}");
    }

    #[test]
    fn series_of_a_deleted_object_disappear_at_the_next_render() {
        use std::collections::HashSet;
        use std::sync::Arc;
        let m = Metrics::new();
        m.set_certificates("intermediate", "istio-system", "gone", &[series("aa", 100, None, None)]);
        m.set_certificates("intermediate", "istio-system", "kept", &[series("bb", 200, None, None)]);
        m.set_certificates(ISSUER_CA_KIND, "", "cluster-root", &[series("cc", 300, None, None)]);
        // Before the caches exist nothing is judged deleted.
        assert!(m.render().contains("fingerprint=\"aa\""));
        let live: Arc<Mutex<HashSet<&str>>> = Arc::new(Mutex::new(HashSet::from(["kept", "cluster-root"])));
        let cache = live.clone();
        m.track_owners(Box::new(move |owner: &SeriesOwner| {
            cache.lock().unwrap().contains(owner.name.as_str())
        }));
        let text = m.render();
        assert!(!text.contains("fingerprint=\"aa\""), "{text}");
        assert!(text.contains("fingerprint=\"bb\""), "{text}");
        assert!(text.contains("fingerprint=\"cc\""), "{text}");
        // Rotation phases go with their IstioCACerts too.
        m.set_rotation_phase("istio-system", "gone", Some("Switched"), &["AddingNewRoot", "Switched"]);
        m.set_rotation_phase("istio-system", "kept", None, &["AddingNewRoot", "Switched"]);
        let text = m.render();
        assert!(!text.contains("name=\"gone\",phase"), "{text}");
        assert!(text.contains("name=\"kept\",phase=\"Switched\""), "{text}");
        // Created again under the same name, it is exported again.
        live.lock().unwrap().insert("gone");
        m.set_certificates("intermediate", "istio-system", "gone", &[series("dd", 400, None, None)]);
        assert!(m.render().contains("fingerprint=\"dd\""));
    }
}
