//! The Helm chart: generated files in sync with the code, lint, schema, manifests valid for
//! current Kubernetes, and — on the real API server — installed, then the controller run with
//! the chart's own ServiceAccount token through the whole issuance and cacerts flow, and the
//! RBAC denials proven by impersonation.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use mesh_ca_issuer::api::cert_manager::{Certificate as CertManagerCertificate, CertificateRequest};
use mesh_ca_issuer::api::issuer::{ClusterMeshCAIssuer, RootBootstrap};
use mesh_ca_issuer::api::istio_cacerts::{AdoptExisting, IstioCACertsSpec, PublishRoot};
use support::chart::{InstalledChart, chart_dir as chart, helm, text, tool};
use support::{ControllerProcess, ScopeLock, TestNamespace, admin_client, ensure_crds, eventually, repo_root};

fn kubernetes_validate() -> PathBuf {
    tool(
        "MESHCA_KUBERNETES_VALIDATE",
        "kubernetes-validate-1.37.0/bin/kubernetes-validate",
    )
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("run tool")
}

/// Non-default value sets that exercise every template.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "ha-monitoring",
        &[
            "replicaCount=3",
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.dashboard.enabled=true",
        ],
    ),
    (
        "scoped-issuers",
        &[
            "issuerNamespaces={team-a,team-b}",
            "allowRootBootstrap=true",
            "certManager.approver.enabled=false",
        ],
    ),
    (
        "widened-trust",
        &[
            "trustDomain=mesh.example",
            "istioNamespaces={istio-system,istio-east}",
            "controller.issuerAmbientCredentials=true",
            "controller.clusterIssuerAmbientCredentials=false",
            "controller.issuerEndpointOverride=true",
            "certManager.approver.issuerNames={clustermeshcaissuers.meshca.io/mesh-root,meshcaissuers.meshca.io/istio-system.istiod}",
            "clusterIssuer.enabled=true",
            "clusterIssuer.policy.allowedNamespaces={istio-system,istio-east}",
        ],
    ),
    (
        "vault",
        &[
            "clusterIssuer.enabled=true",
            "clusterIssuer.backend=vault",
            "clusterIssuer.vault.server=https://vault.example:8200",
            "clusterIssuer.vault.role=istiod-ca",
            "clusterIssuer.vault.serviceAccountName=vault-auth",
            "clusterIssuer.vault.caBundleSecretName=vault-ca",
            "vault.tokenRequestServiceAccounts={team-a/vault-auth}",
            "issuerNamespaces={team-a}",
            "controller.vaultServers={https://vault.example:8200/}",
        ],
    ),
    (
        "cluster-wide-pca",
        &[
            "secretsClusterWideRead=true",
            "leaderElection.enabled=false",
            "clusterIssuer.enabled=true",
            "clusterIssuer.backend=awsPCA",
            "clusterIssuer.awsPCA.arn=arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/abc",
            "clusterIssuer.awsPCA.credentialsSecretName=aws-creds",
            "clusterIssuer.awsPCA.roleARN=arn:aws:iam::123456789012:role/mesh-ca-issuer",
            "controller.extraEnv[0].name=AWS_ENDPOINT_URL_STS",
            "controller.extraEnv[0].value=https://vpce-0123.sts.eu-west-1.vpce.amazonaws.com",
        ],
    ),
];

fn template(set: &[&str], kube_version: &str) -> Output {
    support::chart::template(&["--kube-version", kube_version], set)
}

#[test]
fn generated_crds_and_rbac_match_the_code_and_the_chart() {
    for crd in mesh_ca_issuer::api::crds() {
        let name = crd.name_any();
        let expected = mesh_ca_issuer::api::crd_yaml(&crd).unwrap();
        for dir in ["config/crd", "charts/mesh-ca-issuer/crds"] {
            let path = repo_root().join(dir).join(format!("{name}.yaml"));
            let found = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                found == expected,
                "{} differs from what crdgen prints: run hack/update-generated",
                path.display()
            );
        }
    }
    for dir in ["config/crd", "charts/mesh-ca-issuer/crds"] {
        let files = std::fs::read_dir(repo_root().join(dir)).unwrap().count();
        assert_eq!(files, mesh_ca_issuer::api::crds().len(), "{dir} holds exactly our CRDs");
    }
    let rendered = support::chart::template(&["--show-only", "templates/rbac.yaml"], &[]);
    assert!(rendered.status.success(), "{}", text(&rendered));
    let checked_in = std::fs::read_to_string(repo_root().join("config/rbac/rbac.yaml")).unwrap();
    assert!(
        checked_in.ends_with(&String::from_utf8_lossy(&rendered.stdout).to_string()),
        "config/rbac/rbac.yaml differs from the chart's RBAC: run hack/update-generated"
    );
}

#[test]
fn chart_lints_and_renders_manifests_valid_for_current_kubernetes() {
    let chart = chart();
    for (name, set) in VALUE_SETS {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        for s in *set {
            args.extend_from_slice(&["--set", s]);
        }
        let lint = run(&helm(), &args);
        assert!(lint.status.success(), "helm lint ({name}): {}", text(&lint));
        for version in ["1.29.0", "1.37.0"] {
            let rendered = template(set, version);
            assert!(
                rendered.status.success(),
                "helm template ({name}, {version}): {}",
                text(&rendered)
            );
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("rendered.yaml");
            std::fs::write(&file, &rendered.stdout).unwrap();
            let validated = run(
                &kubernetes_validate(),
                &["--strict", "-k", version, file.to_str().unwrap()],
            );
            let report = text(&validated);
            assert!(
                validated.status.success(),
                "kubernetes-validate ({name}, {version}): {report}"
            );
            // Every built-in kind was checked; only our own and prometheus-operator's kinds
            // (CRDs, unknown to the schema set) are skipped.
            for line in report.lines().filter(|l| l.starts_with("WARN")) {
                assert!(
                    line.contains("meshca.io/v1alpha1") || line.contains("monitoring.coreos.com/v1"),
                    "{name}: unexpected warning: {line}"
                );
            }
            assert!(
                !report.contains("ERROR") && !report.contains("failed"),
                "{name}: {report}"
            );
        }
    }
    // The CRDs themselves, against current apiextensions schemas.
    let crds: Vec<String> = std::fs::read_dir(chart.join("crds"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["--strict", "-k", "1.37.0"];
    args.extend(crds.iter().map(String::as_str));
    let validated = run(&kubernetes_validate(), &args);
    assert!(validated.status.success(), "{}", text(&validated));
}

/// Every series name the controller exports, with its label names: one series of each
/// metric is recorded, then read back from the Prometheus text.
fn exported_series() -> std::collections::HashMap<String, std::collections::BTreeSet<String>> {
    use mesh_ca_issuer::api::istio_cacerts::RenewalWindow;
    use mesh_ca_issuer::metrics::{CertificateSeries, Metrics};
    let metrics = Metrics::new();
    metrics.count_reconcile("certificaterequest", "failed");
    metrics.set_certificates(
        "intermediate",
        "istio-system",
        "mesh",
        &[CertificateSeries {
            fingerprint: "00".into(),
            not_after: 1,
            renewal: Some(1),
            window: Some(RenewalWindow::Expiring),
        }],
    );
    metrics.signing_seconds.observe(0.1);
    metrics.set_crls("istio-system", "mesh", &[("CN=root".into(), 1)]);
    let mut series: std::collections::HashMap<String, std::collections::BTreeSet<String>> = Default::default();
    for line in metrics
        .render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let sample = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = sample.split_once('{').unwrap_or((sample, ""));
        let labels = labels
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()));
        series.entry(name.to_string()).or_default().extend(labels);
    }
    series
}

/// The alerts parse as PromQL (an independent parser, not Prometheus itself), select only
/// series the controller exports and only labels those series have, and are documented.
#[test]
fn alert_expressions_are_valid_promql_over_what_the_controller_exports() {
    let exported = exported_series();
    let rendered = template(&["metrics.prometheusRule.enabled=true"], "1.37.0");
    assert!(rendered.status.success(), "{}", text(&rendered));
    let stdout = String::from_utf8_lossy(&rendered.stdout).to_string();
    let rule = serde_yaml::Deserializer::from_str(&stdout)
        .filter_map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).ok())
        .find(|doc| doc["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let alerts: Vec<&serde_json::Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(alerts.len(), 5, "{rule}");
    let operations = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        let expr = alert["expr"].as_str().unwrap();
        assert!(
            operations.contains(&format!("| `{name}`")),
            "{name} is not in docs/operations.md"
        );
        let ast = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{name}: {expr}: {e}"));
        let selectors = support::promql::selectors(&ast);
        assert!(!selectors.is_empty(), "{name}: no selector in {expr}");
        for vs in selectors {
            let metric = vs.name.clone().unwrap_or_default();
            let labels = exported
                .get(&metric)
                .unwrap_or_else(|| panic!("{name}: {metric} is not exported (exported: {:?})", exported.keys()));
            for matcher in &vs.matchers.matchers {
                assert!(
                    matcher.name == "__name__" || labels.contains(&matcher.name),
                    "{name}: {metric} has no label {} (it has {labels:?})",
                    matcher.name
                );
            }
        }
    }
}

#[test]
fn api_versions_follow_the_cluster() {
    let old = String::from_utf8(template(&["replicaCount=2"], "1.20.2").stdout).unwrap();
    let new = String::from_utf8(template(&["replicaCount=2"], "1.29.0").stdout).unwrap();
    assert!(
        old.contains("apiVersion: policy/v1beta1\nkind: PodDisruptionBudget"),
        "{old}"
    );
    assert!(
        new.contains("apiVersion: policy/v1\nkind: PodDisruptionBudget"),
        "{new}"
    );
    let single = String::from_utf8(template(&[], "1.29.0").stdout).unwrap();
    assert!(!single.contains("PodDisruptionBudget"), "no PDB for one replica");
    assert!(!single.contains("topologySpreadConstraints"));
    assert!(new.contains("topologySpreadConstraints"));
}

#[test]
fn invalid_values_are_rejected_by_the_schema_with_a_clear_message() {
    let cases = [
        (
            &["replicaCount=-1"][..],
            "replicaCount: Must be greater than or equal to 1",
        ),
        (
            &["clusterIssuer.enabled=true", "clusterIssuer.backend=spire"][..],
            "clusterIssuer.backend must be one of the following",
        ),
        // The vault backend needs its server and role.
        (
            &["clusterIssuer.enabled=true", "clusterIssuer.backend=vault"][..],
            "clusterIssuer.vault.server: String length must be greater than or equal to 1",
        ),
        (
            &["vault.tokenRequestServiceAccounts={vault-auth}"][..],
            "vault.tokenRequestServiceAccounts.0: Does not match pattern",
        ),
        (
            &["controller.vaultServers={vault.example:8200}"][..],
            "controller.vaultServers.0: Does not match pattern",
        ),
        (
            &["controller.issuerRecheckInterval=soon"][..],
            "controller.issuerRecheckInterval: Does not match pattern",
        ),
        (
            &["leaderElection.leaseDuration=fifteen"][..],
            "leaderElection.leaseDuration: Does not match pattern",
        ),
        (
            &["controller.clockSkewAllowance=a while"][..],
            "controller.clockSkewAllowance: Does not match pattern",
        ),
        (
            &["controller.minTrustPropagationDelay=1 minute"][..],
            "controller.minTrustPropagationDelay: Does not match pattern",
        ),
        // A bare number is not a duration either.
        (
            &["leaderElection.leaseDuration=15"][..],
            "leaderElection.leaseDuration: Invalid type. Expected: string",
        ),
        (
            &["clusterIssuer.enabled=true", "clusterIssuer.backend=awsPCA"][..],
            "arn",
        ),
        (&["unknownKey=1"][..], "Additional property unknownKey is not allowed"),
        // Signer names as cert-manager spells them, nothing else (no wildcards).
        (
            &["certManager.approver.issuerNames={meshcaissuers.meshca.io/*}"][..],
            "certManager.approver.issuerNames.0: Does not match pattern",
        ),
        (
            &["clusterIssuer.policy.allowedNamespaces={Team_A}"][..],
            "clusterIssuer.policy.allowedNamespaces.0: Does not match pattern",
        ),
        (
            &["controller.issuerAmbientCredentials=yes"][..],
            "controller.issuerAmbientCredentials: Invalid type. Expected: boolean",
        ),
    ];
    for (set, expected) in cases {
        let out = template(set, "1.29.0");
        assert!(!out.status.success(), "{set:?} was accepted");
        let message = text(&out);
        assert!(message.contains(expected), "{set:?}: {message}");
    }
}

/// The controller's arguments in the rendered Deployment.
fn rendered_args(set: &[&str]) -> Vec<String> {
    let rendered = template(set, "1.29.0");
    assert!(rendered.status.success(), "{}", text(&rendered));
    let stdout = String::from_utf8_lossy(&rendered.stdout).to_string();
    let deployment = serde_yaml::Deserializer::from_str(&stdout)
        .filter_map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).ok())
        .find(|doc| doc["kind"] == "Deployment")
        .expect("a Deployment");
    serde_json::from_value(deployment["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap()
}

/// The new guards' values reach the controller as flags it accepts, secure by default.
#[test]
fn trust_values_become_controller_flags_with_secure_defaults() {
    let cases: Vec<(&[&str], Vec<&str>)> = vec![
        (
            &[],
            vec![
                "--istio-namespaces=istio-system",
                "--allow-root-bootstrap-in-istio-namespaces=false",
                "--cacerts-secret-names=cacerts",
                "--trust-domain=cluster.local",
                "--issuer-ambient-credentials=false",
                "--cluster-issuer-ambient-credentials=true",
                "--issuer-endpoint-override=false",
                // A root rotation's shortest delays: istiod's 24h workload certificates, 5m of
                // clock skew, a minute for the new root to propagate.
                "--workload-cert-ttl=24h",
                "--clock-skew-allowance=5m",
                "--min-trust-propagation-delay=1m",
            ],
        ),
        (
            &[
                "istioNamespaces={istio-system,istio-east}",
                "trustDomain=mesh.example",
                "controller.issuerAmbientCredentials=true",
                "controller.clusterIssuerAmbientCredentials=false",
                "controller.issuerEndpointOverride=true",
                "controller.vaultServers={https://vault.example:8200/,https://vault.internal/}",
                "controller.workloadCertTTL=48h",
                "controller.clockSkewAllowance=30s",
                "controller.minTrustPropagationDelay=10m",
                "controller.cacertsSecretNames={cacerts,cacerts-east}",
            ],
            vec![
                "--istio-namespaces=istio-system,istio-east",
                "--cacerts-secret-names=cacerts,cacerts-east",
                "--trust-domain=mesh.example",
                "--issuer-ambient-credentials=true",
                "--cluster-issuer-ambient-credentials=false",
                "--issuer-endpoint-override=true",
                "--vault-servers=https://vault.example:8200/,https://vault.internal/",
                "--workload-cert-ttl=48h",
                "--clock-skew-allowance=30s",
                "--min-trust-propagation-delay=10m",
            ],
        ),
    ];
    for (set, expected) in cases {
        let args = rendered_args(set);
        for flag in &expected {
            assert!(args.iter().any(|a| a == flag), "{set:?}: {flag} not in {args:?}");
        }
        // And the controller accepts exactly these arguments.
        let argv = std::iter::once("mesh-ca-issuer".to_string()).chain(args.iter().cloned());
        let config = <mesh_ca_issuer::config::Config as clap::Parser>::try_parse_from(argv)
            .unwrap_or_else(|e| panic!("{set:?}: the controller refuses the chart's flags: {e}"));
        assert_eq!(
            config.ambient_policy().issuer_endpoint_override,
            set.contains(&"controller.issuerEndpointOverride=true")
        );
        let drain = config.rotation_limits().min_workload_drain_delay();
        let raised = set.contains(&"controller.workloadCertTTL=48h");
        let expected_drain = if raised { 48 * 3600 + 30 } else { 24 * 3600 + 300 };
        assert_eq!(drain, std::time::Duration::from_secs(expected_drain), "{args:?}");
        let east = set.contains(&"controller.cacertsSecretNames={cacerts,cacerts-east}");
        assert_eq!(
            config.cacerts_secret_names,
            if east {
                vec!["cacerts", "cacerts-east"]
            } else {
                vec!["cacerts"]
            }
        );
        // No list by default: any Vault server, as cert-manager's Vault Issuer allows.
        let listed = set.iter().any(|s| s.starts_with("controller.vaultServers="));
        assert_eq!(config.vault_servers.len(), if listed { 2 } else { 0 }, "{args:?}");
    }
}

/// In the Istio namespaces Secrets may be updated and deleted by name only: the names of
/// `controller.cacertsSecretNames` and their adoption backups (`<name>-meshca-backup`). `create` cannot be limited by name; reading is for the
/// source; `patch` is never granted.
#[test]
fn secret_writes_in_istio_namespaces_are_limited_to_the_cacerts_names() {
    let secret_rules = |set: &[&str]| {
        let rendered = template(set, "1.29.0");
        assert!(rendered.status.success(), "{}", text(&rendered));
        let stdout = String::from_utf8_lossy(&rendered.stdout).to_string();
        serde_yaml::Deserializer::from_str(&stdout)
            .filter_map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).ok())
            .filter(|doc| doc["kind"] == "Role" && doc["metadata"]["name"] == "mesh-ca-issuer-secrets")
            .map(|role| {
                let rules: Vec<serde_json::Value> = role["rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["resources"] == serde_json::json!(["secrets"]))
                    .cloned()
                    .collect();
                (role["metadata"]["namespace"].as_str().unwrap().to_string(), rules)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let cases: Vec<(&[&str], serde_json::Value)> = vec![
        (&[], serde_json::json!(["cacerts", "cacerts-meshca-backup"])),
        (
            &[
                "controller.cacertsSecretNames={cacerts-east,cacerts}",
                "allowRootBootstrap=true",
            ],
            serde_json::json!([
                "cacerts",
                "cacerts-east",
                "cacerts-east-meshca-backup",
                "cacerts-meshca-backup"
            ]),
        ),
    ];
    for (set, names) in cases {
        let roles = secret_rules(set);
        let istio = &roles["istio-system"];
        assert_eq!(
            istio,
            &vec![
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "list", "watch"]}),
                serde_json::json!({"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["delete", "update"]}),
            ],
            "{set:?}"
        );
        // Nowhere is a Secret updated, patched or deleted but by name.
        for (ns, rules) in &roles {
            for rule in rules {
                let writes = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| ["update", "patch", "delete", "*"].contains(&v.as_str().unwrap()));
                assert!(
                    !writes || rule["resourceNames"].is_array(),
                    "{set:?}: {ns} grants {rule} on every Secret"
                );
            }
        }
    }
}

/// The approver's RBAC: every issuer of both kinds by default, only the named ones when listed.
#[test]
fn the_approver_may_be_limited_to_named_issuers() {
    let rbac = |set: &[&str]| {
        let mut set = set.to_vec();
        set.push("certManager.approver.enabled=true");
        let rendered = template(&set, "1.29.0");
        assert!(rendered.status.success(), "{}", text(&rendered));
        let stdout = String::from_utf8_lossy(&rendered.stdout).to_string();
        let role = serde_yaml::Deserializer::from_str(&stdout)
            .filter_map(|doc| <serde_json::Value as serde::Deserialize>::deserialize(doc).ok())
            .find(|doc| doc["kind"] == "ClusterRole" && doc["metadata"]["name"] == "mesh-ca-issuer-approver")
            .expect("the approver ClusterRole");
        role["rules"][0]["resourceNames"].clone()
    };
    assert_eq!(
        rbac(&[]),
        serde_json::json!(["meshcaissuers.meshca.io/*", "clustermeshcaissuers.meshca.io/*"])
    );
    assert_eq!(
        rbac(&[
            "certManager.approver.issuerNames={clustermeshcaissuers.meshca.io/mesh-root,meshcaissuers.meshca.io/istio-system.istiod}"
        ]),
        serde_json::json!([
            "clustermeshcaissuers.meshca.io/mesh-root",
            "meshcaissuers.meshca.io/istio-system.istiod"
        ])
    );
}

#[tokio::test]
async fn samples_are_valid_against_the_installed_crds() {
    let (client, ns) = support::test_namespace("chart-samples").await;
    for file in [
        "clustermeshcaissuer-localca.yaml",
        "clustermeshcaissuer-awspca.yaml",
        "clustermeshcaissuer-vault.yaml",
        "meshcaissuer-bootstrap.yaml",
        "istiocacerts.yaml",
    ] {
        let yaml = std::fs::read_to_string(repo_root().join("config/samples").join(file)).unwrap();
        let mut object: kube::core::DynamicObject = serde_yaml::from_str(&yaml).unwrap();
        let types = object.types.clone().unwrap();
        let (group, version) = types.api_version.split_once('/').unwrap();
        let plural = match types.kind.as_str() {
            "ClusterMeshCAIssuer" => "clustermeshcaissuers",
            "MeshCAIssuer" => "meshcaissuers",
            _ => "istiocacerts",
        };
        let ar = kube::core::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: types.api_version.clone(),
            kind: types.kind.clone(),
            plural: plural.into(),
        };
        let api: Api<kube::core::DynamicObject> = if types.kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &ar)
        } else {
            object.metadata.namespace = Some(ns.name.clone());
            Api::namespaced_with(client.clone(), &ns.name, &ar)
        };
        let dry_run = PostParams {
            dry_run: true,
            ..Default::default()
        };
        api.create(&dry_run, &object)
            .await
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

/// A client that impersonates the chart's ServiceAccount, to ask the API server what it may do.
async fn impersonating(namespace: &str, sa: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(support::kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{sa}"));
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
    ]);
    Client::try_from(config).unwrap()
}

fn forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        other => panic!("{what} must be forbidden to the chart's ServiceAccount, got {other:?}"),
    }
}

#[tokio::test]
async fn installed_chart_runs_the_whole_flow_under_its_own_service_account_and_nothing_more() {
    let client = admin_client().await;
    ensure_crds(&client).await;
    // A cluster-wide controller: no other test's controller may run meanwhile.
    let _lock = ScopeLock::exclusive().await;
    let installed = InstalledChart::install(&client, "chart", &[]).await;
    let outsider = TestNamespace::create(&client, "chart-outsider").await;
    let (release_ns, resources, istio) = (&installed.release_ns, &installed.resources, &installed.istio);
    let (release, sa_name) = (&installed.release, installed.service_account());

    // The chart's Deployment says how to run the controller; run exactly that, as its
    // ServiceAccount (no kubelet here to run the pod itself).
    let mut args: Vec<String> = installed
        .container()
        .args
        .clone()
        .unwrap()
        .into_iter()
        .filter(|a| !a.starts_with("--metrics-listen-address") && !a.starts_with("--bundle-endpoint-addr"))
        .collect();
    args.retain(|a| !a.starts_with("--log-format"));
    assert!(
        args.contains(&format!("--secret-namespaces={},{}", resources.name, istio.name)),
        "{args:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let sa_kubeconfig = support::kubeconfig_with_token(dir.path(), &installed.token);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let pod_name = format!("{release}-pod");
    let mut controller = ControllerProcess::start_with_env(
        &sa_kubeconfig,
        &arg_refs,
        &[
            ("POD_NAMESPACE", release_ns.name.as_str()),
            ("POD_NAME", pod_name.as_str()),
        ],
        dir.path(),
    );
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "controller under the chart's SA: {}",
        controller.log()
    );

    // The flow: a root in the cluster resource namespace, a ClusterMeshCAIssuer, a request in
    // the Istio namespace, and cacerts written there.
    let (issuer_name, _cleanup) = installed.cluster_issuer(&client, "chart").await;
    installed.istiod_intermediate(&client, &issuer_name).await;
    let req_name = "istiod-intermediate-1";
    let cluster_issuers: Api<ClusterMeshCAIssuer> = Api::all(client.clone());
    // A peer cluster's root as a trust anchor, and this cluster's root published: ConfigMaps
    // read and written in the Istio namespace under the chart's RBAC.
    let (peer_root, _) = mesh_ca_issuer::pki::sign::self_signed_root(
        &RootBootstrap::default(),
        jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
    )
    .unwrap();
    let peer: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "peer-root"}, "data": {"root-cert.pem": peer_root.to_pem()}
    }))
    .unwrap();
    istio
        .api::<ConfigMap>()
        .create(&PostParams::default(), &peer)
        .await
        .unwrap();
    let spec = IstioCACertsSpec {
        source_secret_name: "istiod-intermediate".into(),
        target_secret_name: "cacerts".into(),
        adopt_existing: AdoptExisting::Never,
        trust_anchors: vec![support::mesh::config_map_anchor("peer", "peer.example", "peer-root")],
        publish_root: Some(PublishRoot {
            config_map_name: "istio-ca-root-published".into(),
            key: "root-cert.pem".into(),
        }),
        ..Default::default()
    };
    support::objects::create_icc(&istio.api(), "istiod", spec).await;
    let cacerts = eventually(Duration::from_secs(60), || async {
        istio.api::<Secret>().get_opt("cacerts").await.ok().flatten()
    })
    .await;
    assert!(
        cacerts.is_some(),
        "cacerts written under the chart's RBAC: {}",
        controller.log()
    );
    let with_anchor = eventually(Duration::from_secs(60), || async {
        let secret = istio.api::<Secret>().get("cacerts").await.ok()?;
        let roots = secret.data?.get("root-cert.pem")?.0.clone();
        String::from_utf8_lossy(&roots)
            .contains(&peer_root.to_pem())
            .then_some(())
    })
    .await;
    assert!(
        with_anchor.is_some(),
        "the trust anchor read under the chart's RBAC: {}",
        controller.log()
    );
    let published = eventually(Duration::from_secs(60), || async {
        istio
            .api::<ConfigMap>()
            .get_opt("istio-ca-root-published")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert!(
        published.is_some(),
        "the root published under the chart's RBAC: {}",
        controller.log()
    );
    // No permission this flow needs was missing (other tests' leftovers in namespaces the chart
    // does not cover are rightly forbidden to it, and the log says so).
    let log = controller.log();
    for line in log.lines().filter(|l| l.to_lowercase().contains("forbidden")) {
        for ours in [&resources.name, &istio.name, &release_ns.name] {
            assert!(!line.contains(ours.as_str()), "a permission was missing: {line}");
        }
    }

    // And nothing more: denials, asked of the API server as the chart's ServiceAccount.
    let as_chart = impersonating(&release_ns.name, sa_name).await;
    forbidden(
        Api::<Secret>::all(as_chart.clone()).list(&ListParams::default()).await,
        "listing Secrets cluster-wide",
    );
    let stray: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "stray"}, "stringData": {"k": "v"}})).unwrap();
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &resources.name)
            .create(&PostParams::default(), &stray)
            .await,
        "writing a Secret in the cluster resource namespace",
    );
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &outsider.name)
            .create(&PostParams::default(), &stray)
            .await,
        "writing a Secret outside the Istio namespaces",
    );
    let secret_elsewhere: Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "elsewhere"}, "stringData": {"k": "v"}}))
            .unwrap();
    outsider
        .api::<Secret>()
        .create(&PostParams::default(), &secret_elsewhere)
        .await
        .unwrap();
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &outsider.name)
            .get("elsewhere")
            .await,
        "reading a Secret in an unlisted namespace",
    );
    let stray_cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "stray"}})).unwrap();
    forbidden(
        Api::<ConfigMap>::namespaced(as_chart.clone(), &outsider.name)
            .create(&PostParams::default(), &stray_cm)
            .await,
        "writing a ConfigMap outside the Istio namespaces",
    );
    forbidden(
        Api::<ConfigMap>::all(as_chart.clone())
            .list(&ListParams::default())
            .await,
        "listing ConfigMaps cluster-wide",
    );
    forbidden(
        Api::<ConfigMap>::namespaced(as_chart.clone(), &istio.name)
            .delete("peer-root", &Default::default())
            .await,
        "deleting a ConfigMap in the Istio namespace",
    );
    forbidden(
        Api::<Namespace>::all(as_chart.clone())
            .list(&ListParams::default())
            .await,
        "listing namespaces",
    );
    // While what it needs is allowed.
    Api::<Secret>::namespaced(as_chart.clone(), &istio.name)
        .list(&ListParams::default())
        .await
        .expect("Secrets in the Istio namespace");
    Api::<Secret>::namespaced(as_chart.clone(), &resources.name)
        .get("mesh-root-ca")
        .await
        .expect("the root in the cluster resource namespace");

    // Secrets in the Istio namespace other than istiod's CA Secret cannot be overwritten or
    // deleted: a gateway's TLS Secret, say.
    let gateway: Secret = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "istio-ingressgateway-certs"}, "stringData": {"tls.crt": "x"}}),
    )
    .unwrap();
    let gateway = istio
        .api::<Secret>()
        .create(&PostParams::default(), &gateway)
        .await
        .unwrap();
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &istio.name)
            .replace("istio-ingressgateway-certs", &PostParams::default(), &gateway)
            .await,
        "updating a Secret in the Istio namespace that is not on controller.cacertsSecretNames",
    );
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &istio.name)
            .delete("istio-ingressgateway-certs", &Default::default())
            .await,
        "deleting a Secret in the Istio namespace that is not on controller.cacertsSecretNames",
    );

    // Least privilege: what the code never calls is denied too.
    forbidden(
        Api::<Secret>::namespaced(as_chart.clone(), &istio.name)
            .patch(
                "cacerts",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
        "patching a Secret (cacerts is created, or replaced with its resourceVersion)",
    );
    let issued: CertificateRequest = Api::namespaced(client.clone(), &istio.name)
        .get(req_name)
        .await
        .unwrap();
    forbidden(
        Api::<CertificateRequest>::namespaced(as_chart.clone(), &istio.name)
            .replace_status(req_name, &PostParams::default(), &issued)
            .await,
        "updating a request's status (only server-side apply patches are sent)",
    );
    let issuer = cluster_issuers.get(&issuer_name).await.unwrap();
    forbidden(
        Api::<ClusterMeshCAIssuer>::all(as_chart.clone())
            .replace_status(&issuer_name, &PostParams::default(), &issuer)
            .await,
        "updating an issuer's status (only server-side apply patches are sent)",
    );
    forbidden(
        Api::<CertManagerCertificate>::all(as_chart.clone())
            .list(&ListParams::default())
            .await,
        "listing Certificates cluster-wide",
    );
    forbidden(
        Api::<CertManagerCertificate>::namespaced(as_chart.clone(), &outsider.name)
            .list(&ListParams::default())
            .await,
        "reading Certificates outside the Istio namespaces",
    );
    Api::<CertManagerCertificate>::namespaced(as_chart.clone(), &istio.name)
        .list(&ListParams::default())
        .await
        .expect("Certificates in the Istio namespace");

    // cert-manager's approver: every issuer of ours by default; only the named one once
    // certManager.approver.issuerNames lists it. Asked of the API server as that ServiceAccount.
    let approver = impersonating(&resources.name, "cert-manager").await;
    let own = format!("clustermeshcaissuers.meshca.io/{issuer_name}");
    let other = "clustermeshcaissuers.meshca.io/someone-else";
    let namespaced = format!("meshcaissuers.meshca.io/{}.istiod", outsider.name);
    for signer in [own.as_str(), other, namespaced.as_str()] {
        assert!(
            may_approve(&approver, signer).await,
            "by default the approver may approve {signer}"
        );
    }
    let (chart, kubeconfig) = (chart(), support::kubeconfig());
    let upgrade = run(
        &helm(),
        &[
            "upgrade",
            release,
            chart.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--namespace",
            &release_ns.name,
            "--reuse-values",
            "--set",
            &format!("certManager.approver.issuerNames={{{own}}}"),
            "--skip-crds",
            "--wait=false",
        ],
    );
    assert!(upgrade.status.success(), "helm upgrade: {}", text(&upgrade));
    assert!(may_approve(&approver, &own).await, "the named issuer stays approvable");
    for signer in [other, namespaced.as_str()] {
        assert!(
            !may_approve(&approver, signer).await,
            "{signer} must no longer be approvable"
        );
    }
}

/// Whether `client`'s identity may approve requests for `signer`
/// (`<plural>.meshca.io/<name>` or `<plural>.meshca.io/<namespace>.<name>`), checked as
/// cert-manager's webhook checks it: `approve` on `signers` named either `<plural>.<group>/*` or
/// the issuer's own signer name, asked of the API server's authorizer.
async fn may_approve(client: &Client, signer: &str) -> bool {
    use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
    let wildcard = format!("{}/*", signer.split_once('/').map_or(signer, |(kind, _)| kind));
    for name in [wildcard.as_str(), signer] {
        let review: SelfSubjectAccessReview = serde_json::from_value(serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "group": "cert-manager.io", "resource": "signers", "verb": "approve", "name": name
            }}
        }))
        .unwrap();
        let allowed = Api::<SelfSubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .expect("SelfSubjectAccessReview")
            .status
            .is_some_and(|s| s.allowed);
        if allowed {
            return true;
        }
    }
    false
}
