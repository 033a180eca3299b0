//! Istio's own Helm charts (istiod's `istio-discovery`, `ztunnel`), rendered with helm, so the
//! tests apply the Deployment, mesh config and DaemonSet exactly as an Istio install writes them.
//! The charts come from Istio's Go module (`istio.io/istio`) through the Go module proxy, pinned
//! by `hack/go/istio/go.mod` and `go.sum`, kept in the Go module cache (`GOMODCACHE`,
//! under ~/.cache/mesh-ca-issuer/ when run by hack/test); nothing of Istio's is committed here.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Deserialize;

/// The module's directory: `go mod download` in hack/go/istio, checked against its
/// go.sum (read-only: a download that does not match the pin fails).
pub fn istio_module() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("go")
            .args(["mod", "download", "-json", "istio.io/istio"])
            .current_dir(super::repo_root().join("hack/go/istio"))
            // Never switch toolchains or rewrite the pins behind our back.
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=readonly")
            .output()
            .expect("go runs (hack/test puts Go >= 1.26 on PATH)");
        let info: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("go mod download: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success(), "go mod download failed: {info}");
        PathBuf::from(info["Dir"].as_str().expect("the module's directory"))
    })
    .clone()
}

fn helm() -> PathBuf {
    if let Ok(p) = std::env::var("MESHCA_HELM") {
        return PathBuf::from(p);
    }
    let path =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/mesh-ca-issuer/tools/helm-3.17.2/helm");
    assert!(
        path.exists(),
        "helm is not installed: run hack/test (or set MESHCA_HELM)"
    );
    path
}

/// `helm template <release> <chart> -n <namespace> --set ...`: every object rendered. A value
/// written `--set-string=k=v` is passed as `--set-string k=v`.
pub fn render(chart: &str, release: &str, namespace: &str, values: &[&str]) -> Vec<serde_json::Value> {
    let dir = istio_module().join("manifests/charts").join(chart);
    let mut args = vec![
        "template".to_string(),
        release.to_string(),
        dir.display().to_string(),
        "-n".to_string(),
        namespace.to_string(),
    ];
    for v in values {
        // `--set-string=k=v` for values that must stay strings (proxyMetadata); else `--set`.
        match v.strip_prefix("--set-string=") {
            Some(kv) => args.extend(["--set-string".to_string(), kv.to_string()]),
            None => args.extend(["--set".to_string(), v.to_string()]),
        }
    }
    let out = Command::new(helm()).args(&args).output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template {chart}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML as JSON"))
        .collect()
}

/// The rendered object of `kind` named `name`.
pub fn object(objects: &[serde_json::Value], kind: &str, name: &str) -> serde_json::Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"))
}

/// istiod's Deployment and its `istio` mesh config, as Istio's istio-discovery chart renders
/// them with `values`. (Only these two: the chart's cluster-scoped RBAC and webhooks would be
/// shared by every test on the control plane, and the checks read nothing else.)
pub fn istiod(namespace: &str, values: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let objects = render("istio-control/istio-discovery", "istiod", namespace, values);
    (
        object(&objects, "Deployment", "istiod"),
        object(&objects, "ConfigMap", "istio"),
    )
}

/// ztunnel's DaemonSet as Istio's ztunnel chart renders it.
pub fn ztunnel(namespace: &str) -> serde_json::Value {
    object(&render("ztunnel", "ztunnel", namespace, &[]), "DaemonSet", "ztunnel")
}

/// Server-side applies rendered objects (namespaced, into their own namespace).
pub async fn apply(client: &Client, objects: &[&serde_json::Value]) {
    for o in objects {
        let api_version = o["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = o["kind"].as_str().expect("kind");
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let namespace = o["metadata"]["namespace"].as_str().expect("namespace");
        let name = o["metadata"]["name"].as_str().expect("name");
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        api.patch(name, &PatchParams::apply(super::TEST_MANAGER).force(), &Patch::Apply(o))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {namespace}/{name}: {e}"));
    }
}
