//! Two controller replicas with leader election on one control plane, written once: started
//! with a short lease, both ready, exactly one of them leading; and the metrics that show who
//! leads and what each wrote.

use std::path::Path;
use std::time::Duration;

use kube::Client;
use kube::api::Api;
use mesh_ca_issuer::api::cert_manager::CertificateRequest;

use super::{ControllerProcess, eventually, http_get};

/// The lease duration the pair runs with (renew deadline 3 s, retry period 500 ms).
pub const LEASE: Duration = Duration::from_secs(4);
pub const RETRY: Duration = Duration::from_millis(500);

/// The flags of a controller watching only `namespace` and electing its leader there with a
/// short lease ([`LEASE`], renew deadline 3 s, retry period [`RETRY`]).
pub fn election_flags(namespace: &str) -> Vec<&str> {
    vec![
        "--namespace",
        namespace,
        "--leader-elect=true",
        "--leader-election-namespace",
        namespace,
        "--leader-election-lease-duration",
        "4s",
        "--leader-election-renew-deadline",
        "3s",
        "--leader-election-retry-period",
        "500ms",
    ]
}

/// Reads one unlabelled gauge or a labelled counter line from /metrics: -1 when /metrics does
/// not answer, 0 when the series is not there.
pub async fn metric(port: u16, series: &str) -> f64 {
    let Ok((200, text)) = http_get(port, "/metrics").await else {
        return -1.0;
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

pub async fn is_leader(c: &ControllerProcess) -> bool {
    metric(c.admin_port, "meshca_leader ").await == 1.0
}

/// A replica and the name it runs under (`POD_NAME`, the start of its events' reporter).
pub struct Replica {
    pub process: ControllerProcess,
    pub name: &'static str,
}

/// Two replicas watching `namespace`, electing through a Lease there.
pub struct LeaderPair {
    pub leader: Replica,
    pub standby: Replica,
}

impl LeaderPair {
    /// Starts replica-a and replica-b, waits until both are ready (caches synced, whether they
    /// lead or not) and exactly one leads.
    pub async fn start(namespace: &str, logs: &Path) -> Self {
        let flags = election_flags(namespace);
        let kubeconfig = super::kubeconfig();
        let start = |name| ControllerProcess::start_with_env(&kubeconfig, &flags, &[("POD_NAME", name)], logs);
        let (mut a, mut b) = (start("replica-a"), start("replica-b"));
        assert!(a.wait_ready(Duration::from_secs(60)).await, "{}", a.log());
        assert!(b.wait_ready(Duration::from_secs(60)).await, "{}", b.log());
        let a_leads = eventually(Duration::from_secs(20), || async {
            match (is_leader(&a).await, is_leader(&b).await) {
                (true, false) => Some(true),
                (false, true) => Some(false),
                _ => None,
            }
        })
        .await
        .expect("exactly one leader");
        let (a, b) = (
            Replica {
                process: a,
                name: "replica-a",
            },
            Replica {
                process: b,
                name: "replica-b",
            },
        );
        if a_leads {
            Self { leader: a, standby: b }
        } else {
            Self { leader: b, standby: a }
        }
    }
}

/// Checks that each request of `names` was signed once (one Issued event each); returns how
/// many distinct serials they hold.
pub async fn signed_once(client: &Client, namespace: &str, names: &[String]) -> usize {
    let api: Api<CertificateRequest> = Api::namespaced(client.clone(), namespace);
    let mut serials = std::collections::HashSet::new();
    for name in names {
        let cr = api.get(name).await.unwrap();
        let pem = cr.status.and_then(|s| s.certificate).expect("an issued certificate");
        let cert = mesh_ca_issuer::pki::Certificate::parse_pem_bundle(&pem, "c")
            .unwrap()
            .remove(0);
        serials.insert(cert.serial_hex());
        let issued_events = super::events_for(client, namespace, name)
            .await
            .into_iter()
            .filter(|e| e.1 == "Issued")
            .count();
        assert_eq!(issued_events, 1, "{name} signed once");
    }
    serials.len()
}
