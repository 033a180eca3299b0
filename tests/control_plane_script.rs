//! `hack/control-plane` itself: two control planes side by side, and its behaviour on bad
//! input and faults (a taken port, stale pid files, a failing build, `down` twice).
//!
//! These tests start extra control planes under their own names, next to the one the rest of
//! the suite uses; they need the cached kube-apiserver binary that `make test` builds first.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

fn script() -> PathBuf {
    support::repo_root().join("hack/control-plane")
}

fn run(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .output()
        .expect("hack/control-plane runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn plane_dir(name: &str) -> PathBuf {
    support::repo_root().join(".control-plane").join(name)
}

/// Stops a control plane when the test ends, also on panic.
struct Plane(String);

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = run(&["down", "--name", &self.0]);
    }
}

async fn client_for(name: &str) -> kube::Client {
    mesh_ca_issuer::install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(plane_dir(name).join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn pids_of(name: &str) -> Vec<u32> {
    ["etcd.pid", "kube-apiserver.pid"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(plane_dir(name).join(f)).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn two_control_planes_run_side_by_side_and_are_independent() {
    let a = Plane(format!("two-a-{}", support::unique_suffix()));
    let b = Plane(format!("two-b-{}", support::unique_suffix()));
    for plane in [&a, &b] {
        let out = run(&["up", "--name", &plane.0]);
        assert!(out.status.success(), "up {}: {}", plane.0, text(&out));
    }
    let (client_a, client_b) = (client_for(&a.0).await, client_for(&b.0).await);
    let only_in_a: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "only-in-a"}})).unwrap();
    Api::<Namespace>::all(client_a.clone())
        .create(&PostParams::default(), &only_in_a)
        .await
        .unwrap();
    assert!(
        Api::<Namespace>::all(client_a)
            .get_opt("only-in-a")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Namespace>::all(client_b)
            .get_opt("only-in-a")
            .await
            .unwrap()
            .is_none()
    );

    let pids = pids_of(&a.0);
    assert_eq!(pids.len(), 2);
    let out = run(&["down", "--name", &a.0]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "down stops exactly the processes up started"
    );
    assert!(!plane_dir(&a.0).exists(), "down removes the data");
    // down twice is harmless.
    let again = run(&["down", "--name", &a.0]);
    assert!(again.status.success(), "{}", text(&again));
    // The other plane is untouched.
    let status = run(&["status", "--name", &b.0]);
    assert!(status.status.success(), "{}", text(&status));
}

#[test]
fn taken_port_is_refused_with_a_clear_message_and_nothing_left_running() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let plane = Plane(format!("port-{}", support::unique_suffix()));
    let out = run(&["up", "--name", &plane.0, "--apiserver-port", &port]);
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains(&format!("port {port} on 127.0.0.1 is already in use")),
        "{msg}"
    );
    assert!(msg.contains("--apiserver-port"), "says what to do: {msg}");
    assert!(pids_of(&plane.0).is_empty(), "nothing was started");
    let status = run(&["status", "--name", &plane.0]);
    assert!(!status.status.success());
}

#[test]
fn stale_pid_files_from_a_crashed_run_are_cleaned_up_on_the_next_up() {
    let plane = Plane(format!("stale-{}", support::unique_suffix()));
    assert!(run(&["up", "--name", &plane.0]).status.success());
    let crashed = pids_of(&plane.0);
    for pid in &crashed {
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    }
    // Wait until the kernel has reaped them (they are not our children).
    for _ in 0..100 {
        if crashed.iter().all(|p| !alive(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = run(&["up", "--name", &plane.0]);
    let msg = text(&out);
    assert!(out.status.success(), "{msg}");
    assert!(msg.contains("stale pid files"), "{msg}");
    let fresh = pids_of(&plane.0);
    assert_eq!(fresh.len(), 2);
    assert!(fresh.iter().all(|p| alive(*p) && !crashed.contains(p)));
}

#[test]
fn failed_build_says_what_to_do_and_starts_nothing() {
    // An empty cache forces a build; a `go` that fails stands in for any build failure (it
    // answers `go version` as a usable Go would, so the build itself is what fails).
    let cache = tempfile::tempdir().unwrap();
    let fake_bin = tempfile::tempdir().unwrap();
    let fake_go = fake_bin.path().join("go");
    std::fs::write(
        &fake_go,
        "#!/bin/sh\n[ \"$1\" = version ] && { echo 'go version go1.26.8 linux/amd64'; exit 0; }\n\
         echo 'simulated compiler failure' >&2\nexit 2\n",
    )
    .unwrap();
    Command::new("chmod").arg("+x").arg(&fake_go).status().unwrap();
    let path = format!(
        "{}:{}",
        fake_bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plane = Plane(format!("build-{}", support::unique_suffix()));
    let out = Command::new(script())
        .args(["up", "--name", &plane.0])
        .env("MESHCA_CACHE_DIR", cache.path())
        .env("PATH", path)
        .env_remove("MESHCA_GO")
        .output()
        .unwrap();
    let msg = text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(msg.contains("building kube-apiserver failed"), "{msg}");
    assert!(
        msg.contains("simulated compiler failure"),
        "shows the build's own error: {msg}"
    );
    assert!(msg.contains("nothing was started"), "{msg}");
    assert!(pids_of(&plane.0).is_empty());
    let cached: Vec<_> = walkdir(cache.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kube-apiserver" || n == "etcd"))
        .collect();
    assert!(cached.is_empty(), "no half binary cached: {cached:?}");
}

/// Every file below `dir`.
fn walkdir(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walkdir(&path));
        } else {
            files.push(path);
        }
    }
    files
}
