//! Command-line configuration. Every flag has an environment fallback (`MESHCA_*`) for the
//! Helm chart; names follow cert-manager's where one exists, so operators recognise them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::duration::parse_go_duration;

/// mesh-ca-issuer: a cert-manager external issuer for istiod's intermediate CA.
#[derive(Parser, Debug, Clone)]
#[command(name = "mesh-ca-issuer", version = crate::build_info::VERSION_LINE, about, long_about = None)]
pub struct Config {
    /// Path to a kubeconfig. Without it: $KUBECONFIG, ~/.kube/config, then in-cluster config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace from which ClusterMeshCAIssuers read their Secrets (root CA, credentials).
    #[arg(long, env = "MESHCA_CLUSTER_RESOURCE_NAMESPACE", default_value = "cert-manager")]
    pub cluster_resource_namespace: String,

    /// Limit the controller to one namespace (requests, issuers, IstioCACerts). ClusterMeshCAIssuers
    /// are then disabled, as with cert-manager's --namespace.
    #[arg(long, env = "MESHCA_NAMESPACE")]
    pub namespace: Option<String>,

    /// Address of the one HTTP listener serving /healthz, /readyz and /metrics.
    #[arg(long, env = "MESHCA_METRICS_LISTEN_ADDRESS", default_value = "0.0.0.0:9402")]
    pub metrics_listen_address: SocketAddr,

    /// Address of the SPIFFE bundle endpoint (HTTPS), served by every replica for the
    /// IstioCACerts with `spec.bundleEndpoint.enabled` (docs/federation.md).
    #[arg(long, env = "MESHCA_BUNDLE_ENDPOINT_ADDR", default_value = "0.0.0.0:8443")]
    pub bundle_endpoint_addr: SocketAddr,

    /// The shortest interval between fetches of a peer's bundle endpoint, whatever its
    /// `spiffe_refresh_hint` says (and the first retry after a failure).
    #[arg(long, env = "MESHCA_BUNDLE_REFRESH_MIN", default_value = "30s", value_parser = go_duration)]
    pub bundle_refresh_min: Duration,

    /// The longest interval between fetches of a peer's bundle endpoint.
    #[arg(long, env = "MESHCA_BUNDLE_REFRESH_MAX", default_value = "1h", value_parser = go_duration)]
    pub bundle_refresh_max: Duration,

    /// How often every issuer is re-checked even when nothing changed (a root can expire or
    /// disappear without any event), as a Go duration.
    #[arg(long, env = "MESHCA_ISSUER_RECHECK_INTERVAL", default_value = "5m", value_parser = go_duration)]
    pub issuer_recheck_interval: Duration,

    /// How long a request keeps being retried after transient backend errors (network,
    /// throttling, 5xx) before it is marked Failed and cert-manager's own back-off takes over.
    /// Counted from the first transient failure; waiting for approval or the issuer never counts.
    #[arg(long, env = "MESHCA_MAX_RETRY_DURATION", default_value = "1h", value_parser = go_duration)]
    pub max_retry_duration: Duration,

    /// First delay before a request is retried after a transient backend error (doubling up to
    /// --retry-backoff-max, with jitter).
    #[arg(long, env = "MESHCA_RETRY_BACKOFF_INITIAL", default_value = "5s", value_parser = go_duration)]
    pub retry_backoff_initial: Duration,

    /// Longest delay between retries of one request.
    #[arg(long, env = "MESHCA_RETRY_BACKOFF_MAX", default_value = "5m", value_parser = go_duration)]
    pub retry_backoff_max: Duration,

    /// Namespaces in which to watch Secrets (issuer roots, credentials), comma-separated. Empty
    /// means cluster-wide; the Helm chart sets exactly the namespaces its RBAC grants.
    #[arg(long, env = "MESHCA_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,

    /// Namespaces where istiod runs, comma-separated: the only namespaces from which a
    /// ClusterMeshCAIssuer with an empty `spec.policy.allowedNamespaces` accepts requests.
    #[arg(
        long,
        env = "MESHCA_ISTIO_NAMESPACES",
        value_delimiter = ',',
        default_value = "istio-system"
    )]
    pub istio_namespaces: Vec<String>,

    /// Let `localCA.bootstrap` create a root Secret in an Istio namespace. Off by default: the
    /// controller may create Secrets there (istiod's `cacerts`), and RBAC cannot limit `create`
    /// by name, so without this an issuer there could create a Secret under any name istiod or a
    /// gateway reads. Helm: `allowRootBootstrap`.
    #[arg(long, env = "MESHCA_ALLOW_ROOT_BOOTSTRAP_IN_ISTIO_NAMESPACES", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_root_bootstrap_in_istio_namespaces: bool,

    /// The only Secrets an IstioCACerts may write (its `targetSecretName`), comma-separated, in
    /// any Istio namespace. Without this limit anyone who may create an IstioCACerts could have
    /// the controller overwrite or delete any Secret there, a gateway's TLS Secret say. Helm:
    /// `controller.cacertsSecretNames`, which grants update and delete on exactly these names.
    #[arg(
        long,
        env = "MESHCA_CACERTS_SECRET_NAMES",
        value_delimiter = ',',
        default_value = crate::api::istio_cacerts::DEFAULT_TARGET_SECRET_NAME
    )]
    pub cacerts_secret_names: Vec<String>,

    /// The mesh's trust domain: the only one SPIFFE IDs in a request may name when an issuer's
    /// `spec.policy.allowedTrustDomains` is empty.
    #[arg(long, env = "MESHCA_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Let namespaced MeshCAIssuers use the controller's own identity: its AWS identity
    /// (environment, IRSA, EKS Pod Identity, IMDS) when they name no credentialsSecretRef, its
    /// ServiceAccount token for Vault's Kubernetes auth when they name no serviceAccountRef (and
    /// only towards servers listed in --vault-servers). Off, as cert-manager's flag of the same
    /// name: anyone who can create an issuer in any namespace could otherwise sign with the
    /// controller's permissions.
    #[arg(long, env = "MESHCA_ISSUER_AMBIENT_CREDENTIALS", default_value_t = false, action = clap::ArgAction::Set)]
    pub issuer_ambient_credentials: bool,

    /// Let ClusterMeshCAIssuers use the controller's own AWS identity and ServiceAccount token
    /// (as cert-manager's flag).
    #[arg(long, env = "MESHCA_CLUSTER_ISSUER_AMBIENT_CREDENTIALS", default_value_t = true, action = clap::ArgAction::Set)]
    pub cluster_issuer_ambient_credentials: bool,

    /// Let namespaced MeshCAIssuers set `awsPCA.endpoint`. Off: a namespace could otherwise send
    /// the controller's requests (and, with ambient credentials, its signed AWS calls) to any URL.
    #[arg(long, env = "MESHCA_ISSUER_ENDPOINT_OVERRIDE", default_value_t = false, action = clap::ArgAction::Set)]
    pub issuer_endpoint_override: bool,

    /// Vault servers namespaced MeshCAIssuers may call, as URL prefixes, comma-separated (e.g.
    /// `https://vault.example:8200/`). Empty: any server (cert-manager lets a namespaced Vault
    /// Issuer name its own). ClusterMeshCAIssuers are not restricted: only cluster admins make them.
    #[arg(long, env = "MESHCA_VAULT_SERVERS", value_delimiter = ',')]
    pub vault_servers: Vec<String>,

    /// The controller's own ServiceAccount token: what Vault's Kubernetes auth logs in with when
    /// an issuer names no `serviceAccountRef` (ambient credentials, gated by
    /// --issuer-ambient-credentials and --cluster-issuer-ambient-credentials).
    #[arg(
        long,
        env = "MESHCA_SERVICE_ACCOUNT_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub service_account_token_file: PathBuf,

    /// AWS Private CA: IssueCertificate calls per second allowed per issuer (token bucket), so
    /// a burst of renewals cannot exceed the account's PCA quota.
    #[arg(long, env = "MESHCA_AWS_PCA_ISSUE_RATE", default_value_t = 2.0)]
    pub aws_pca_issue_rate: f64,

    /// AWS Private CA: the token bucket's burst size per issuer.
    #[arg(long, env = "MESHCA_AWS_PCA_ISSUE_BURST", default_value_t = 10.0)]
    pub aws_pca_issue_burst: f64,

    /// How long before notAfter a tracked certificate counts as Expiring.
    #[arg(long, env = "MESHCA_EXPIRING_THRESHOLD", default_value = "168h", value_parser = go_duration)]
    pub expiring_threshold: Duration,

    /// How long past its renewal time a certificate may go unrenewed before it counts as
    /// RenewalDue (cert-manager renews at the renewal time; this is its slack).
    #[arg(long, env = "MESHCA_RENEWAL_GRACE", default_value = "1h", value_parser = go_duration)]
    pub renewal_grace: Duration,

    /// istiod's workload certificate lifetime (its DEFAULT_WORKLOAD_CERT_TTL): an intermediate
    /// with less life left than this is flagged, and a root rotation's `workloadDrainDelay` must
    /// be at least this plus --clock-skew-allowance.
    #[arg(long, env = "MESHCA_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = go_duration)]
    pub workload_cert_ttl: Duration,

    /// How far the clocks of nodes and peers may differ: added to --workload-cert-ttl for the
    /// shortest `workloadDrainDelay` a root rotation accepts.
    #[arg(long, env = "MESHCA_CLOCK_SKEW_ALLOWANCE", default_value = "5m", value_parser = go_duration)]
    pub clock_skew_allowance: Duration,

    /// The shortest `trustPropagationDelay` a root rotation accepts: how long proxies and peer
    /// clusters need at least to trust a new root before anything is signed under it.
    #[arg(long, env = "MESHCA_MIN_TRUST_PROPAGATION_DELAY", default_value = "1m", value_parser = go_duration)]
    pub min_trust_propagation_delay: Duration,

    /// Elect a leader through a Lease so that only one replica writes. Turn off only when a
    /// single replica runs (e.g. local development).
    #[arg(long, env = "MESHCA_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease; default: $POD_NAMESPACE, else kube-system.
    #[arg(long, env = "MESHCA_LEADER_ELECTION_NAMESPACE")]
    pub leader_election_namespace: Option<String>,

    /// Name of the leader election Lease.
    #[arg(long, env = "MESHCA_LEADER_ELECTION_ID", default_value = "mesh-ca-issuer")]
    pub leader_election_id: String,

    /// How long a leader's Lease stays valid without renewal; a standby takes over after it.
    #[arg(long, env = "MESHCA_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = go_duration)]
    pub leader_election_lease_duration: Duration,

    /// How long a leader keeps leading while it fails to renew.
    #[arg(long, env = "MESHCA_LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = go_duration)]
    pub leader_election_renew_deadline: Duration,

    /// How often candidates try to acquire or renew.
    #[arg(long, env = "MESHCA_LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = go_duration)]
    pub leader_election_retry_period: Duration,

    /// How many CertificateRequests are reconciled at once (cert-manager's flag of the same
    /// name). Each API call in flight holds its own connection to the API server, so this also
    /// bounds connections, TLS handshakes and memory when a burst of requests arrives.
    #[arg(long, env = "MESHCA_CONCURRENT_WORKERS", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrent_workers: u16,

    /// Threads that run the controllers' async work. The controller waits on the API server
    /// far more than it computes, and one thread keeps a local API server saturated; each
    /// further thread adds cross-thread wake-ups (hack/bench: 0.84 ms of CPU per request with
    /// one, 1.40 ms with two). RSA signing and key generation run on a separate pool either way.
    #[arg(long, env = "MESHCA_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,

    /// Log output format.
    #[arg(long, env = "MESHCA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing-subscriber EnvFilter syntax), e.g. "info" or "mesh_ca_issuer=debug".
    #[arg(long, env = "MESHCA_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// The leader election Lease's namespace: the flag, else the pod's namespace, else kube-system.
    pub fn leader_election_namespace(&self) -> String {
        self.leader_election_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "kube-system".to_string())
    }

    /// What issuers may use of the controller's own AWS identity and endpoint choice.
    pub fn ambient_policy(&self) -> crate::backend::AmbientPolicy {
        crate::backend::AmbientPolicy {
            issuer_ambient_credentials: self.issuer_ambient_credentials,
            cluster_issuer_ambient_credentials: self.cluster_issuer_ambient_credentials,
            issuer_endpoint_override: self.issuer_endpoint_override,
        }
    }

    /// The bounds these flags set on a root rotation's delays.
    pub fn rotation_limits(&self) -> crate::istio::rotation::Limits {
        crate::istio::rotation::Limits {
            workload_cert_ttl: self.workload_cert_ttl,
            clock_skew_allowance: self.clock_skew_allowance,
            min_trust_propagation_delay: self.min_trust_propagation_delay,
        }
    }

    /// The bounds of a peer's bundle endpoint polling.
    pub fn bundle_refresh_bounds(&self) -> crate::istio::bundle_source::Bounds {
        crate::istio::bundle_source::Bounds {
            min: self.bundle_refresh_min,
            max: self.bundle_refresh_max,
        }
    }

    /// The renewal-window thresholds these flags set.
    pub fn thresholds(&self) -> crate::pki::renewal::Thresholds {
        crate::pki::renewal::Thresholds {
            expiring: self.expiring_threshold,
            renewal_grace: self.renewal_grace,
            workload_ttl: self.workload_cert_ttl,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

fn go_duration(s: &str) -> Result<Duration, String> {
    parse_go_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_cert_manager_familiar() {
        let c = Config::try_parse_from(["mesh-ca-issuer"]).unwrap();
        assert_eq!(c.cluster_resource_namespace, "cert-manager");
        assert_eq!(c.issuer_recheck_interval, Duration::from_secs(300));
        assert_eq!(c.metrics_listen_address.port(), 9402);
        assert!(c.namespace.is_none());
        assert_eq!(c.max_retry_duration, Duration::from_secs(3600));
        assert!(c.secret_namespaces.is_empty());
        assert!(c.leader_elect);
        // A rotation's delays are bounded by istiod's defaults unless lowered on purpose.
        assert_eq!(c.rotation_limits(), crate::istio::rotation::Limits::default());
        assert_eq!(
            c.rotation_limits().min_workload_drain_delay(),
            Duration::from_secs(24 * 3600 + 300)
        );
        let c = Config::try_parse_from(["mesh-ca-issuer", "--leader-elect=false"]).unwrap();
        assert!(!c.leader_elect);
        // Secure by default: only istiod's namespace, only the default trust domain, no
        // ambient AWS identity and no endpoint override for namespaced issuers.
        assert_eq!(c.istio_namespaces, vec!["istio-system"]);
        assert_eq!(c.cacerts_secret_names, vec!["cacerts"], "istiod's Secret only");
        assert_eq!(c.trust_domain, "cluster.local");
        assert!(!c.issuer_ambient_credentials);
        assert!(c.cluster_issuer_ambient_credentials);
        assert!(!c.issuer_endpoint_override);
        assert!(c.vault_servers.is_empty(), "any Vault server, as cert-manager allows");
        let c = Config::try_parse_from(["mesh-ca-issuer", "--vault-servers", "https://a:8200/,https://b/"]).unwrap();
        assert_eq!(c.vault_servers, vec!["https://a:8200/", "https://b/"]);
        let c = Config::try_parse_from([
            "mesh-ca-issuer",
            "--issuer-ambient-credentials=true",
            "--cluster-issuer-ambient-credentials=false",
            "--issuer-endpoint-override=true",
            "--istio-namespaces=istio-system,istio-east",
        ])
        .unwrap();
        assert!(c.issuer_ambient_credentials && !c.cluster_issuer_ambient_credentials && c.issuer_endpoint_override);
        assert_eq!(c.istio_namespaces, vec!["istio-system", "istio-east"]);
        let c = Config::try_parse_from(["mesh-ca-issuer", "--cacerts-secret-names", "cacerts,cacerts-east"]).unwrap();
        assert_eq!(c.cacerts_secret_names, vec!["cacerts", "cacerts-east"]);
        let c = Config::try_parse_from(["mesh-ca-issuer", "--secret-namespaces", "cert-manager,istio-system"]).unwrap();
        assert_eq!(c.secret_namespaces, vec!["cert-manager", "istio-system"]);
    }

    #[test]
    fn bad_duration_is_rejected_with_the_flag_name() {
        let err = Config::try_parse_from(["mesh-ca-issuer", "--issuer-recheck-interval", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--issuer-recheck-interval"), "{err}");
    }
}
