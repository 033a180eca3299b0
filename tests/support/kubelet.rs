//! STAND-IN for the kubelet's Secret and ConfigMap volumes (no kubelet can run on the machines
//! this project is tested on). It projects one object's keys into a directory exactly the way the
//! kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`) does, because istiod's hot reload
//! of `cacerts` depends on that shape:
//!
//! - every version is written into a fresh timestamped directory `..<UTC time>.<random>`;
//! - a symlink `..data_tmp` → that directory is renamed over `..data`: one atomic switch, so a
//!   reader never sees half of one version and half of another;
//! - each key is a symlink `key` → `..data/key`, created once; keys that disappear are removed;
//! - the previous timestamped directory is removed afterwards.
//!
//! It watches the object and projects every change as soon as the watch delivers it. A real
//! kubelet adds its own sync delay (its Secret/ConfigMap change detection and pod sync period,
//! commonly up to a minute or more); delays measured through this stand-in are istiod's own,
//! without that. A deleted object leaves the last projection in place, as the kubelet does for a
//! running pod.
//!
//! Shared by the tests and `examples/kubelet_stand_in.rs` (used by `hack/demo --istiod`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

/// One version of the object that was projected: its resourceVersion and when the switch of
/// `..data` to it happened.
#[derive(Clone, Debug)]
pub struct Projection {
    pub resource_version: String,
    pub at: Instant,
    pub wall: SystemTime,
    pub data: BTreeMap<String, Vec<u8>>,
}

/// A Secret or ConfigMap projected into a directory for as long as this value lives.
pub struct ProjectedVolume {
    pub dir: PathBuf,
    what: String,
    projections: Arc<Mutex<Vec<Projection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ProjectedVolume {
    /// Projects Secret `namespace/name` into `dir` (created if missing) and keeps it current.
    pub fn secret(client: &Client, namespace: &str, name: &str, dir: &Path) -> Self {
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        Self::start(api, format!("Secret {namespace}/{name}"), name, dir, |s: &Secret| {
            s.data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        })
    }

    /// Projects ConfigMap `namespace/name` into `dir` (created if missing) and keeps it current.
    pub fn config_map(client: &Client, namespace: &str, name: &str, dir: &Path) -> Self {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        Self::start(
            api,
            format!("ConfigMap {namespace}/{name}"),
            name,
            dir,
            |c: &ConfigMap| {
                let mut data: BTreeMap<String, Vec<u8>> = c
                    .data
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect();
                for (k, v) in c.binary_data.clone().unwrap_or_default() {
                    data.insert(k, v.0);
                }
                data
            },
        )
    }

    fn start<K>(api: Api<K>, what: String, name: &str, dir: &Path, payload: fn(&K) -> BTreeMap<String, Vec<u8>>) -> Self
    where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default,
    {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let projections: Arc<Mutex<Vec<Projection>>> = Arc::default();
        let seen = projections.clone();
        let target = dir.to_path_buf();
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let label = what.clone();
        let task = tokio::spawn(async move {
            let mut stream = watcher::watcher(api, config).boxed();
            while let Some(event) = stream.next().await {
                let object = match event {
                    Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::InitApply(o)) => o,
                    // Deleted: the kubelet keeps the last content for a running pod.
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("kubelet stand-in: watching {label}: {e}");
                        continue;
                    }
                };
                let data = payload(&object);
                match write_atomically(&target, &data) {
                    Ok(false) => {}
                    Ok(true) => seen.lock().expect("projections").push(Projection {
                        resource_version: object.resource_version().unwrap_or_default(),
                        at: Instant::now(),
                        wall: SystemTime::now(),
                        data,
                    }),
                    Err(e) => panic!("kubelet stand-in: projecting {label} into {}: {e}", target.display()),
                }
            }
        });
        Self {
            dir: dir.to_path_buf(),
            what,
            projections,
            task,
        }
    }

    /// Every version projected so far, in order.
    pub fn projections(&self) -> Vec<Projection> {
        self.projections.lock().expect("projections").clone()
    }

    /// Waits until a version for which `check` holds is projected; returns it.
    pub async fn wait_for(&self, timeout: Duration, check: impl Fn(&Projection) -> bool) -> Projection {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.projections().into_iter().rev().find(|p| check(p)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "kubelet stand-in: no matching version of {} projected within {timeout:?} (projected: {:?})",
                self.what,
                self.projections()
                    .iter()
                    .map(|p| &p.resource_version)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until something is projected (the kubelet starts no container before its volumes
    /// are mounted).
    pub async fn wait_mounted(&self, timeout: Duration) -> Projection {
        self.wait_for(timeout, |_| true).await
    }
}

impl Drop for ProjectedVolume {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kubelet's atomic writer: writes `payload` into `dir` as a new `..data` version. Returns
/// false (and writes nothing) when `..data` already holds exactly this payload.
pub fn write_atomically(dir: &Path, payload: &BTreeMap<String, Vec<u8>>) -> std::io::Result<bool> {
    let data_link = dir.join("..data");
    let old_target = std::fs::read_link(&data_link).ok();
    if let Some(old) = &old_target
        && current_payload(&dir.join(old))? == *payload
    {
        return Ok(false);
    }
    for key in payload.keys() {
        if key.is_empty() || key.starts_with("..") || key.contains('/') {
            return Err(std::io::Error::other(format!("invalid key {key:?}")));
        }
    }
    // `..2006_01_02_15_04_05.<random>`, as the kubelet names them (os.MkdirTemp with that prefix).
    let stamp = jiff::Timestamp::now().strftime("..%Y_%m_%d_%H_%M_%S.").to_string();
    let version = tempfile::Builder::new().prefix(&stamp).tempdir_in(dir)?.keep();
    for (key, value) in payload {
        std::fs::write(version.join(key), value)?;
    }
    let version_name = version
        .file_name()
        .ok_or_else(|| std::io::Error::other("timestamped directory has no name"))?;
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(version_name, &tmp_link)?;
    // The one atomic step: readers see the old version or the new one, never a mix.
    std::fs::rename(&tmp_link, &data_link)?;
    for key in payload.keys() {
        let visible = dir.join(key);
        if std::fs::symlink_metadata(&visible).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), &visible)?;
        }
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("..") && !payload.contains_key(name.as_ref()) {
            std::fs::remove_file(dir.join(name.as_ref()))?;
        }
    }
    if let Some(old) = old_target {
        std::fs::remove_dir_all(dir.join(old))?;
    }
    Ok(true)
}

/// What a timestamped version directory holds.
fn current_payload(version: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(version)? {
        let entry = entry?;
        out.insert(
            entry.file_name().to_string_lossy().into_owned(),
            std::fs::read(entry.path())?,
        );
    }
    Ok(out)
}
