//! The chart's alerts and dashboard, judged against what the controller really exports.
//!
//! One real scrape: the controller binary runs against the local control plane, leads, signs
//! an istiod intermediate, fails a request, writes cacerts, and its `/metrics` is read. Then:
//! - `promtool check rules` on the chart's rendered PrometheusRule groups;
//! - `promtool test rules` with unit tests built from that scrape: every alert fires on series
//!   with the scraped names and labels when the values say it should (an intermediate past its
//!   renewal time, a root inside the expiring threshold, failing issuances, no leader) and stays
//!   silent on the scraped values themselves. A renamed metric or label breaks them.
//! - every query of the Grafana dashboard names only scraped metrics and labels.
//!
//! promtool comes from Debian's `prometheus` package (hack/test installs it; `MESHCA_PROMTOOL`
//! overrides its path).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use mesh_ca_issuer::api::istio_cacerts::{AdoptExisting, IstioCACertsSpec};
use serde_json::{Value, json};
use support::cert_manager::{self as cm, IntermediateRequest};
use support::{ControllerProcess, TestNamespace, admin_client, ensure_crds, eventually, repo_root};

const TIMEOUT: Duration = Duration::from_secs(60);

// === the scrape ===

/// One sample of the Prometheus text format.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition (Prometheus or OpenMetrics): one sample per non-comment line.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, mut rest) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut labels = BTreeMap::new();
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (_, '\\') => match chars.next().expect("escape").1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_string(), value);
            rest = after[end + 1..].trim_start_matches(',');
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The labels Prometheus adds when it scrapes the chart's ServiceMonitor. `honorLabels: true`
/// there: a label the series carries itself (a certificate's `namespace`) wins.
const TARGET_LABELS: [(&str, &str); 4] = [
    ("job", "mesh-ca-issuer"),
    ("instance", "10.0.0.7:9402"),
    ("namespace", "mesh-ca-issuer"),
    ("pod", "mesh-ca-issuer-6d8f9c7b5-x2x7q"),
];

/// Every sample of a real `/metrics`, as stored by Prometheus (target labels added). Scraped
/// once per test process: from a controller that leads, has signed an intermediate, failed a
/// request, and written cacerts.
fn real_scrape() -> &'static [Sample] {
    static SCRAPE: OnceLock<Vec<Sample>> = OnceLock::new();
    SCRAPE.get_or_init(|| {
        // Its own runtime on its own thread: the tests that ask may run on any runtime or none.
        let text = std::thread::spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(scrape_a_busy_controller())
        })
        .join()
        .expect("scrape");
        let mut samples = parse_exposition(&text);
        for s in &mut samples {
            for (k, v) in TARGET_LABELS {
                s.labels.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
        samples
    })
}

async fn scrape_a_busy_controller() -> String {
    let client = admin_client().await;
    ensure_crds(&client).await;
    let _lock = support::ScopeLock::shared().await;
    let ns = TestNamespace::create(&client, "monitoring-scrape").await;
    let logs = tempfile::tempdir().unwrap();
    let controller = ControllerProcess::start(
        &[
            "--namespace",
            &ns.name,
            "--leader-elect=true",
            "--leader-election-namespace",
            &ns.name,
        ],
        logs.path(),
    );
    let mut controller = controller;
    assert!(controller.wait_ready(TIMEOUT).await, "{}", controller.log());

    support::issuer::create(&ns.api(), "mesh", support::issuer::bootstrapped("mesh-root")).await;
    // A request the policy refuses (not a CA): a failed issuance.
    let leaf = IntermediateRequest {
        is_ca: false,
        ..IntermediateRequest::istiod("refused", "mesh")
    };
    cm::request_and_approve(&client, &ns.name, &leaf).await;
    cm::wait_for_reason(&client, &ns.name, "refused", &["Failed"], TIMEOUT).await;
    // istiod's intermediate, issued, recorded by "cert-manager", and cacerts written.
    let req = IntermediateRequest::istiod("istiod-1", "mesh");
    let key = cm::request_and_approve(&client, &ns.name, &req).await;
    let cr = cm::wait_for_reason(&client, &ns.name, "istiod-1", &["Issued"], TIMEOUT).await;
    cm::write_certificate_secret(&client, &ns.name, "istiod", &cr, &key).await;
    cm::record_certificate(&client, &ns.name, "istiod", "istiod", &cr, None).await;
    let spec = IstioCACertsSpec {
        source_secret_name: "istiod".into(),
        target_secret_name: "cacerts".into(),
        adopt_existing: AdoptExisting::Never,
        revocation: Some(mesh_ca_issuer::api::istio_cacerts::Revocation {
            enabled: true,
            crl_validity: "72h".into(),
            refresh_before: None,
        }),
        ..Default::default()
    };
    support::objects::create_icc(&ns.api(), "istiod", spec).await;
    let _cacerts = eventually(TIMEOUT, || async {
        ns.api::<Secret>().get_opt("cacerts").await.ok().flatten()
    })
    .await
    .expect("cacerts written");

    // Wait for the signals, not for time: every family the alerts and dashboard use has its series.
    let wanted = [
        "meshca_leader 1",
        "meshca_certificate_window{kind=\"intermediate\"",
        "meshca_certificate_window{kind=\"root\"",
        "meshca_certificate_renewal_seconds{kind=\"intermediate\"",
        "meshca_reconciles_total{controller=\"certificaterequest\",outcome=\"failed\"}",
        "meshca_signing_duration_seconds_count",
        "meshca_crl_next_update_timestamp_seconds{",
    ];
    let port = controller.admin_port;
    eventually(TIMEOUT, || async {
        let (_, text) = support::http_get(port, "/metrics").await.ok()?;
        wanted.iter().all(|w| text.contains(w)).then_some(text)
    })
    .await
    .unwrap_or_else(|| panic!("the controller never exported all of {wanted:?}: {}", controller.log()))
}

/// Metric names and, for each, its label names, in the real scrape.
fn scraped_families() -> BTreeMap<String, BTreeSet<String>> {
    let mut families: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in real_scrape() {
        families
            .entry(s.name.clone())
            .or_default()
            .extend(s.labels.keys().cloned());
    }
    families
}

/// The scraped samples of `name` whose labels include `matching`.
fn scraped(name: &str, matching: &[(&str, &str)]) -> Vec<Sample> {
    let found: Vec<Sample> = real_scrape()
        .iter()
        .filter(|s| {
            s.name == name
                && matching
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .cloned()
        .collect();
    assert!(
        !found.is_empty(),
        "the real scrape has no {name}{matching:?}: has the metric or a label been renamed? Scraped: {:?}",
        scraped_families().keys()
    );
    found
}

// === the chart's rules ===

fn tool(env: &str, fallback: &str) -> PathBuf {
    std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(fallback))
}

fn promtool() -> PathBuf {
    tool("MESHCA_PROMTOOL", "promtool")
}

fn run(program: &Path, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("could not run {} (hack/test installs it): {e}", program.display()))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The chart rendered with `set`: its documents.
fn render(set: &[&str]) -> Vec<Value> {
    let out = support::chart::template(&[], set);
    assert!(out.status.success(), "helm template: {}", text(&out));
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .filter_map(|doc| <Value as serde::Deserialize>::deserialize(doc).ok())
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The PrometheusRule's `spec` (its `groups`), the shape of a Prometheus rule file.
fn rule_file() -> Value {
    let rule = render(&["metrics.prometheusRule.enabled=true"])
        .into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    rule["spec"].clone()
}

fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// Writes the rule file and returns the directory.
fn write_rules(rules: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), serde_yaml::to_string(rules).unwrap()).unwrap();
    dir
}

#[test]
fn promtool_accepts_the_rendered_rules() {
    let rules = rule_file();
    let dir = write_rules(&rules);
    let out = run(&promtool(), &["check", "rules", "rules.yaml"], dir.path());
    assert!(out.status.success(), "promtool check rules: {}", text(&out));
    let found = format!("SUCCESS: {} rules found", alerts(&rules).len());
    assert!(text(&out).contains(&found), "{}", text(&out));
}

// === promtool unit tests from the scrape ===

/// A series in promtool's notation.
fn series_name(s: &Sample) -> String {
    let labels: Vec<String> = s
        .labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{}{{{}}}", s.name, labels.join(","))
}

/// promtool's expanding notation for per-minute values: `[(value, minutes)]`.
fn values(runs: &[(f64, u32)]) -> String {
    runs.iter()
        .map(|(v, n)| format!("{v}x{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The alert's annotations as Prometheus renders them for `labels` (our templates use only
/// `{{ $labels.x }}`).
fn annotations(alert: &Value, labels: &BTreeMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in alert["annotations"].as_object().unwrap() {
        let mut rendered = v.as_str().unwrap().to_string();
        while let Some(start) = rendered.find("{{ $labels.") {
            let end = start + rendered[start..].find("}}").expect("closing }}") + 2;
            let name = rendered[start + "{{ $labels.".len()..end - 2].trim();
            let value = labels.get(name).cloned().unwrap_or_default();
            rendered.replace_range(start..end, &value);
        }
        out.insert(k.clone(), Value::String(rendered));
    }
    Value::Object(out)
}

/// The labels an alert's result carries: the `by (...)` labels of `sample` plus the rule's own.
fn alert_labels(alert: &Value, sample: Option<&Sample>, by: &[&str]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = by
        .iter()
        .map(|k| {
            let s = sample.expect("a sample for by-labels");
            (k.to_string(), s.labels.get(*k).cloned().unwrap_or_default())
        })
        .collect();
    for (k, v) in alert["labels"].as_object().unwrap() {
        labels.insert(k.clone(), v.as_str().unwrap().to_string());
    }
    labels
}

/// One promtool test case: input series (scraped label sets with scenario values), and what
/// `alert` must (or must not) say at `eval_minutes`.
fn case(
    name: &str,
    alert: &Value,
    series: &[(Sample, String)],
    eval_minutes: u32,
    expected: Option<BTreeMap<String, String>>,
) -> Value {
    let exp_alerts: Vec<Value> = expected
        .iter()
        .map(|labels| json!({"exp_labels": labels, "exp_annotations": annotations(alert, labels)}))
        .collect();
    json!({
        "name": name,
        "interval": "1m",
        "input_series": series.iter().map(|(s, v)| json!({"series": series_name(s), "values": v})).collect::<Vec<_>>(),
        "alert_rule_test": [{
            "eval_time": format!("{eval_minutes}m"),
            "alertname": alert["alert"],
            "exp_alerts": exp_alerts,
        }],
    })
}

/// Every scraped sample as a constant series for `minutes`: the controller as it is.
fn as_scraped(minutes: u32) -> Vec<(Sample, String)> {
    real_scrape()
        .iter()
        .map(|s| (s.clone(), values(&[(s.value, minutes)])))
        .collect()
}

/// The firing and silent cases of every alert.
fn unit_tests(rules: &Value) -> Vec<Value> {
    let for_minutes = 10; // the chart's default `for`, asserted below
    let mut tests = Vec::new();
    let mut covered = BTreeSet::new();
    for alert in alerts(rules) {
        let name = alert["alert"].as_str().unwrap().to_string();
        if alert.get("for").is_some() {
            assert_eq!(alert["for"], "10m", "{name}: the cases below assume for: 10m");
        }
        // The controller as scraped: healthy, leading, no new failures — nothing fires.
        tests.push(case(
            &format!("{name} is silent on the scraped values"),
            &alert,
            &as_scraped(60),
            45,
            None,
        ));
        match name.as_str() {
            "MeshCACertificateRenewalOverdue" => {
                // The intermediate's window turns RenewalDue (1) when it is past its renewal
                // time by the grace (1h): the alert fires once that held for `for`.
                let s = scraped("meshca_certificate_window", &[("kind", "intermediate")]).remove(0);
                let by = ["kind", "namespace", "name", "fingerprint"];
                tests.push(case(
                    "an intermediate 1h past its renewal time fires RenewalOverdue",
                    &alert,
                    &[(s.clone(), values(&[(0.0, 10), (1.0, 50)]))],
                    10 + for_minutes + 5,
                    Some(alert_labels(&alert, Some(&s), &by)),
                ));
                tests.push(case(
                    "an intermediate RenewalDue for less than `for` stays silent",
                    &alert,
                    &[(s.clone(), values(&[(0.0, 10), (1.0, 50)]))],
                    10 + for_minutes - 5,
                    None,
                ));
                // Expiring is a different alert: RenewalOverdue stays silent on it.
                tests.push(case(
                    "an expiring intermediate is not reported as merely overdue",
                    &alert,
                    &[(s, values(&[(2.0, 60)]))],
                    30,
                    None,
                ));
            }
            "MeshCACertificateExpiring" => {
                let s = scraped("meshca_certificate_window", &[("kind", "root")]).remove(0);
                let by = ["kind", "namespace", "name", "fingerprint"];
                tests.push(case(
                    "a root inside the expiring threshold fires Expiring",
                    &alert,
                    &[(s.clone(), values(&[(0.0, 10), (2.0, 50)]))],
                    10 + for_minutes + 5,
                    Some(alert_labels(&alert, Some(&s), &by)),
                ));
                tests.push(case(
                    "an intermediate that is only RenewalDue does not fire Expiring",
                    &alert,
                    &[(
                        scraped("meshca_certificate_window", &[("kind", "intermediate")]).remove(0),
                        values(&[(1.0, 60)]),
                    )],
                    30,
                    None,
                ));
            }
            "MeshCAIssuanceFailures" => {
                let s = scraped(
                    "meshca_reconciles_total",
                    &[("controller", "certificaterequest"), ("outcome", "failed")],
                )
                .remove(0);
                let by = ["namespace", "pod"];
                let now = s.value;
                tests.push(case(
                    "a request failed in the last 30 minutes fires IssuanceFailures",
                    &alert,
                    &[(s.clone(), values(&[(now, 20), (now + 1.0, 40)]))],
                    25,
                    Some(alert_labels(&alert, Some(&s), &by)),
                ));
                tests.push(case(
                    "a failure more than 30 minutes ago no longer fires",
                    &alert,
                    &[(s, values(&[(now, 5), (now + 1.0, 55)]))],
                    45,
                    None,
                ));
            }
            "MeshCACRLExpiringSoon" => {
                // promtool's clock starts at 0: a nextUpdate of 5h lapses 5h into the test.
                let s = scraped("meshca_crl_next_update_timestamp_seconds", &[]).remove(0);
                assert!(s.value > 1.0e9, "a real nextUpdate was scraped: {}", s.value);
                let by = ["namespace", "name", "issuer"];
                tests.push(case(
                    "a CRL with less than 6h left fires CRLExpiringSoon",
                    &alert,
                    &[(s.clone(), values(&[(5.0 * 3600.0, 60)]))],
                    30,
                    Some(alert_labels(&alert, Some(&s), &by)),
                ));
                tests.push(case(
                    "a CRL with more than 6h left is silent",
                    &alert,
                    &[(s, values(&[(7.0 * 3600.0, 60)]))],
                    30,
                    None,
                ));
            }
            "MeshCAControllerNotLeading" => {
                let s = scraped("meshca_leader", &[]).remove(0);
                assert_eq!(s.value, 1.0, "the scraped controller leads");
                tests.push(case(
                    "only a standby replica fires NotLeading",
                    &alert,
                    &[(s.clone(), values(&[(0.0, 60)]))],
                    for_minutes + 5,
                    Some(alert_labels(&alert, None, &[])),
                ));
                tests.push(case(
                    "no replica scraped at all fires NotLeading",
                    &alert,
                    &[(scraped("meshca_build_info", &[]).remove(0), values(&[(1.0, 60)]))],
                    for_minutes + 5,
                    Some(alert_labels(&alert, None, &[])),
                ));
                tests.push(case(
                    "a leader lost for less than `for` stays silent",
                    &alert,
                    &[(s, values(&[(1.0, 20), (0.0, 5), (1.0, 35)]))],
                    24,
                    None,
                ));
            }
            other => panic!("alert {other} has no promtool unit test: add its firing and silent cases here"),
        }
        covered.insert(name);
    }
    assert_eq!(covered.len(), alerts(rules).len());
    tests
}

#[test]
fn every_alert_fires_and_stays_silent_as_promtool_evaluates_it_on_scraped_series() {
    let rules = rule_file();
    let dir = write_rules(&rules);
    let tests = unit_tests(&rules);
    let file = json!({
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": tests,
    });
    std::fs::write(
        dir.path().join("alerts_test.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
    let out = run(&promtool(), &["test", "rules", "alerts_test.yaml"], dir.path());
    if !out.status.success() {
        // Keep the generated file where a human can read it.
        let kept = repo_root().join("target/promtool-alerts-test.yaml");
        let _ = std::fs::copy(dir.path().join("alerts_test.yaml"), &kept);
        let _ = std::fs::copy(dir.path().join("rules.yaml"), kept.with_file_name("rules.yaml"));
        panic!("promtool test rules (kept in {}): {}", kept.display(), text(&out));
    }
    println!(
        "promtool: {} unit tests over {} alerts passed",
        tests.len(),
        alerts(&rules).len()
    );
}

// === the dashboard ===

/// The label names an expression groups by (`by (...)`) anywhere in it.
struct Groupings(BTreeSet<String>);

impl promql_parser::util::ExprVisitor for Groupings {
    type Error = std::convert::Infallible;
    fn pre_visit(&mut self, expr: &promql_parser::parser::Expr) -> Result<bool, Self::Error> {
        if let promql_parser::parser::Expr::Aggregate(agg) = expr
            && let Some(promql_parser::parser::LabelModifier::Include(labels)) = &agg.modifier
        {
            self.0.extend(labels.labels.iter().cloned());
        }
        Ok(true)
    }
}

/// The dashboard as the chart ships it (from the rendered ConfigMap, so the template is tested too).
fn dashboard() -> Value {
    let config_map = render(&["metrics.dashboard.enabled=true"])
        .into_iter()
        .find(|d| {
            d["kind"] == "ConfigMap"
                && d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-dashboard"))
        })
        .expect("the dashboard ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    serde_json::from_str(config_map["data"]["mesh-ca-issuer.json"].as_str().unwrap()).expect("dashboard JSON")
}

#[test]
fn every_dashboard_query_names_only_scraped_metrics_and_labels() {
    let families = scraped_families();
    let dashboard = dashboard();
    let mut queries = 0;
    let mut metrics_used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            // Grafana replaces its interval variable before Prometheus sees the query.
            let expr = target["expr"].as_str().unwrap().replace("$__rate_interval", "5m");
            let ast = promql_parser::parser::parse(&expr).unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
            let selectors = support::promql::selectors(&ast);
            assert!(!selectors.is_empty(), "{title}: no metric in {expr}");
            let mut labels_here = BTreeSet::new();
            for vs in selectors {
                let metric = vs.name.clone().unwrap_or_default();
                let labels = families
                    .get(&metric)
                    .unwrap_or_else(|| panic!("{title}: {metric} is not exported (scraped: {:?})", families.keys()));
                for m in &vs.matchers.matchers {
                    assert!(labels.contains(&m.name), "{title}: {metric} has no label {}", m.name);
                }
                labels_here.extend(labels.iter().cloned());
                metrics_used.insert(metric);
            }
            let mut groupings = Groupings(BTreeSet::new());
            promql_parser::util::walk_expr(&mut groupings, &ast).unwrap();
            for label in groupings.0 {
                assert!(
                    labels_here.contains(&label),
                    "{title}: groups by {label}, which none of its metrics has"
                );
            }
            // Legends name labels too.
            let legend = target["legendFormat"].as_str().unwrap_or("");
            for part in legend.split("{{").skip(1) {
                let label = part.split("}}").next().unwrap().trim();
                assert!(
                    labels_here.contains(label),
                    "{title}: legend names {label}, which its metrics lack"
                );
            }
            queries += 1;
        }
    }
    // What the issue asks the dashboard to show, each by the metric that carries it.
    for needed in [
        "meshca_certificate_not_after_seconds",
        "meshca_certificate_renewal_seconds",
        "meshca_certificate_window",
        "meshca_reconciles_total",
        "meshca_signing_duration_seconds_bucket",
        "meshca_leader",
    ] {
        assert!(metrics_used.contains(needed), "the dashboard does not show {needed}");
    }
    println!("dashboard: {queries} queries checked");
}

#[test]
fn the_exposition_parser_reads_labels_escapes_and_values() {
    let samples = parse_exposition("# HELP x y\nmeshca_leader 1\nm{a=\"b\",c=\"q\\\"uote,\"} 2.5\n# EOF\n");
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].name, "meshca_leader");
    assert_eq!(samples[1].labels["c"], "q\"uote,");
    assert_eq!(samples[1].value, 2.5);
}
