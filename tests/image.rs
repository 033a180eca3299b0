//! The container image `hack/image` builds (`target/image/mesh-ca-issuer-<version>.oci.tar`):
//! its configuration and contents, and — unpacked with umoci, its entrypoint run from the
//! unpacked root filesystem (chroot, uid 65532, root read-only, no host library reachable)
//! against the local control plane with the chart ServiceAccount's token — the whole flow:
//! an istiod intermediate signed, `cacerts` written.
//!
//! Nothing of the host leaks in: the binaries load their libraries from the image (a missing
//! one stops them before `main`, and `binaries_fail_without_a_library_of_the_image` proves that
//! this harness notices), and the AWS SDK reads the image's CA certificates (the controller logs
//! a warning when it finds none, and `a_missing_trust_store_is_noticed` proves the harness sees
//! it).
//!
//! Needs root (chroot, mount namespaces, umoci keeping file owners), `umoci`, `skopeo` and the
//! image: hack/test installs the tools and runs hack/image first.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use mesh_ca_issuer::api::issuer::{
    AwsCredentialsSecretRef, AwsPCA, ClusterMeshCAIssuer, IssuerSpec, MeshCAIssuer, RootBootstrap,
};
use mesh_ca_issuer::api::istio_cacerts::{AdoptExisting, IstioCACerts, IstioCACertsSpec};
use mesh_ca_issuer::build_info::{REVISION, VERSION};
use support::chart::{InstalledChart, text};
use support::{ControllerProcess, ScopeLock, admin_client, ensure_crds, eventually, repo_root};

/// The size budget for the archive.
const SIZE_BUDGET_MIB: f64 = 30.0;
const ENTRYPOINT: &str = "/usr/local/bin/mesh-ca-issuer";
/// What the AWS SDK logs when the trust store holds no certificate or cannot be read.
const TRUST_STORE_WARNINGS: [&str; 2] = [
    "no native root CA certificates found",
    "native root CA certificate loading errors",
];

fn archive() -> PathBuf {
    let path = std::env::var("MESHCA_IMAGE_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(format!("target/image/mesh-ca-issuer-{VERSION}.oci.tar")));
    assert!(
        path.exists(),
        "no image at {}: build it with hack/image (hack/test does)",
        path.display()
    );
    path
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("could not run {program} (hack/test installs it): {e}"))
}

/// The image unpacked as a container runtime would: umoci's runtime bundle (`rootfs/` and the
/// `config.json` it derives from the image config). Removed on drop.
struct Unpacked {
    dir: tempfile::TempDir,
    /// The runtime configuration's `process`: args, env, user.
    process: serde_json::Value,
}

impl Unpacked {
    fn new() -> Self {
        assert!(
            nix_is_root(),
            "the image tests need root (chroot, mount namespaces, umoci keeping owners)"
        );
        let dir = tempfile::tempdir().expect("temporary directory");
        let layout = dir.path().join("layout");
        std::fs::create_dir(&layout).unwrap();
        let untar = run(
            "tar",
            &["-C", layout.to_str().unwrap(), "-xf", archive().to_str().unwrap()],
        );
        assert!(untar.status.success(), "{}", text(&untar));
        let bundle = dir.path().join("bundle");
        let unpack = run(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{}:{VERSION}", layout.display()),
                bundle.to_str().unwrap(),
            ],
        );
        assert!(unpack.status.success(), "umoci unpack: {}", text(&unpack));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
        Self {
            process: config["process"].clone(),
            dir,
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }

    /// The image's user as `uid:gid`.
    fn user(&self) -> String {
        format!("{}:{}", self.process["user"]["uid"], self.process["user"]["gid"])
    }

    /// A command that runs `args` (the entrypoint when `None`) from the root filesystem: a
    /// mount namespace of its own with the root bind-mounted read-only, `/proc` and `/dev`
    /// mounted as a runtime would, `mounts` (host dir → path in the image) bound in, then
    /// chroot as the image's user, with the image's environment plus `env` and nothing of ours.
    /// unshare and chroot exec in place: the child's pid is the binary's.
    fn command(&self, args: Option<&[&str]>, mounts: &[(&Path, &str)], env: &[(&str, &str)]) -> Command {
        let rootfs = self.rootfs();
        let image_args: Vec<String> = self.process["args"]
            .as_array()
            .expect("process.args")
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let argv: Vec<String> = match args {
            Some(args) => args.iter().map(|a| a.to_string()).collect(),
            None => image_args,
        };
        let mut script = String::from("set -e; R=\"$1\"; shift\n");
        script.push_str("mount --bind \"$R\" \"$R\"\n");
        script.push_str("mount -t proc proc \"$R/proc\"\n");
        script.push_str("mount --rbind /dev \"$R/dev\"\n");
        for (i, (_, inside)) in mounts.iter().enumerate() {
            // Mount points are made in our scratch copy, as a runtime makes them.
            std::fs::create_dir_all(rootfs.join(inside.trim_start_matches('/'))).unwrap();
            script.push_str(&format!("mount --bind -o ro \"$MOUNT_{i}\" \"$R{inside}\"\n"));
        }
        script.push_str("mount -o remount,bind,ro \"$R\"\n");
        script.push_str(&format!("exec chroot --userspec={} \"$R\" \"$@\"\n", self.user()));
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--", "sh", "-c", &script, "sh"])
            .arg(&rootfs)
            .args(&argv)
            .env_clear();
        for (i, (host, _)) in mounts.iter().enumerate() {
            command.env(format!("MOUNT_{i}"), host);
        }
        // The host's PATH finds unshare, mount and chroot; the image's own PATH replaces it for
        // the binary (chroot execs with the environment it is given).
        for kv in self.process["env"].as_array().expect("process.env") {
            let (k, v) = kv.as_str().unwrap().split_once('=').unwrap();
            if k != "PATH" {
                command.env(k, v);
            }
        }
        command.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        command.envs(env.iter().copied());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(Some(args), &[], &[]).output().expect("run in the image")
    }
}

fn nix_is_root() -> bool {
    run("id", &["-u"]).stdout == b"0\n"
}

#[test]
fn image_config_runs_the_entrypoint_as_65532_with_the_oci_labels() {
    let out = run(
        "skopeo",
        &["inspect", "--config", &format!("oci-archive:{}", archive().display())],
    );
    assert!(out.status.success(), "skopeo inspect: {}", text(&out));
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &config["config"];
    assert_eq!(c["User"], "65532:65532", "{config}");
    assert_eq!(c["Entrypoint"], serde_json::json!([ENTRYPOINT]), "{config}");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION, "{labels}");
    assert_eq!(
        labels["org.opencontainers.image.revision"], REVISION,
        "the image is older than this checkout: run hack/image"
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );
    let chart = std::fs::read_to_string(repo_root().join("charts/mesh-ca-issuer/Chart.yaml")).unwrap();
    assert!(
        chart.contains(&format!("appVersion: \"{VERSION}\"")),
        "the chart's appVersion (the default image tag) must be the crate version {VERSION}"
    );
    let size = std::fs::metadata(archive()).unwrap().len() as f64 / (1024.0 * 1024.0);
    println!("image archive: {size:.1} MiB");
    assert!(
        size <= SIZE_BUDGET_MIB,
        "the image is {size:.1} MiB, over {SIZE_BUDGET_MIB} MiB"
    );
}

#[test]
fn image_holds_the_binaries_their_libraries_and_certificates_and_no_shell_or_package_manager() {
    let image = Unpacked::new();
    let rootfs = image.rootfs();
    let mut executables = Vec::new();
    // Files and symlinks (a directory may be called dpkg: /var/lib/dpkg/status.d holds records).
    let mut files = Vec::new();
    walk(&rootfs, &mut |path, meta| {
        use std::os::unix::fs::PermissionsExt;
        let rel = path.strip_prefix(&rootfs).unwrap().display().to_string();
        if !meta.is_dir() {
            files.push(rel.clone());
        }
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            executables.push(rel);
        }
    });
    for forbidden in ["sh", "bash", "dash", "busybox", "apt", "apt-get", "dpkg", "su", "sudo"] {
        assert!(
            !files.iter().any(|n| n.rsplit('/').next() == Some(forbidden)),
            "the image must not contain {forbidden}"
        );
    }
    // Every executable is one of ours or a shared object (libraries and the loader).
    for e in &executables {
        assert!(
            e == "usr/local/bin/mesh-ca-issuer" || e == "usr/local/bin/meshca" || e.contains(".so"),
            "unexpected executable in the image: {e}"
        );
    }
    let bundle =
        std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt")).expect("the image has a CA bundle");
    let roots = pem::parse_many(&bundle).unwrap();
    assert!(roots.len() > 100, "only {} CA certificates", roots.len());
    // AWS endpoints (ACM PCA, STS) chain to Amazon's roots.
    let amazon = roots
        .iter()
        .filter_map(|p| x509_parser::parse_x509_certificate(p.contents()).ok())
        .filter(|(_, c)| c.subject().to_string().contains("CN=Amazon Root CA 1"))
        .count();
    assert_eq!(amazon, 1, "Amazon Root CA 1 must be trusted");
    for pkg in ["libc6", "libgcc-s1", "ca-certificates"] {
        assert!(
            rootfs.join("var/lib/dpkg/status.d").join(pkg).exists(),
            "no dpkg record of {pkg}"
        );
        assert!(
            rootfs.join("usr/share/doc").join(pkg).join("copyright").exists(),
            "no copyright of {pkg}"
        );
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        f(&entry.path(), &meta);
        if meta.is_dir() {
            walk(&entry.path(), f);
        }
    }
}

#[test]
fn binaries_in_the_image_print_their_version_and_revision() {
    let image = Unpacked::new();
    for bin in ["mesh-ca-issuer", "meshca"] {
        let out = image.run(&[&format!("/usr/local/bin/{bin}"), "--version"]);
        assert!(out.status.success(), "{bin} --version in the image: {}", text(&out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{bin} {VERSION} (revision {REVISION})")
        );
    }
}

#[test]
fn binaries_fail_without_a_library_of_the_image() {
    // The harness's own sensitivity: with libgcc_s gone from the image, the entrypoint does not
    // start (so the host's copy is not what the other tests use).
    let image = Unpacked::new();
    let lib = image.rootfs().join("lib/x86_64-linux-gnu/libgcc_s.so.1");
    assert!(lib.exists(), "the image ships libgcc_s.so.1");
    std::fs::remove_file(&lib).unwrap();
    let out = image.run(&[ENTRYPOINT, "--version"]);
    assert!(!out.status.success(), "ran without libgcc_s: {}", text(&out));
    assert!(text(&out).contains("libgcc_s.so.1"), "{}", text(&out));
}

/// What a pod gets: the ServiceAccount token, the cluster CA and the namespace at the
/// well-known path, and the API server's address in the environment.
struct PodIdentity {
    dir: tempfile::TempDir,
    namespace: String,
    name: String,
}

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl PodIdentity {
    fn new(token: &str, namespace: &str, name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cp_dir = support::kubeconfig().parent().unwrap().to_path_buf();
        std::fs::write(dir.path().join("token"), token).unwrap();
        std::fs::copy(cp_dir.join("pki/ca.crt"), dir.path().join("ca.crt")).unwrap();
        std::fs::write(dir.path().join("namespace"), namespace).unwrap();
        // Readable by 65532, as the kubelet makes them for the pod's user.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in ["token", "ca.crt", "namespace"] {
            std::fs::set_permissions(dir.path().join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        Self {
            dir,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let ports = std::fs::read_to_string(support::kubeconfig().with_file_name("ports")).unwrap();
        let port = ports
            .lines()
            .find_map(|l| l.strip_prefix("APISERVER_PORT="))
            .expect("APISERVER_PORT")
            .to_string();
        vec![
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
            ("KUBERNETES_SERVICE_PORT", port),
            ("POD_NAMESPACE", self.namespace.clone()),
            ("POD_NAME", self.name.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
        ]
    }
}

/// The image's entrypoint with the chart's arguments, run as the pod would run it.
fn start_in_image(
    image: &Unpacked,
    identity: &PodIdentity,
    chart_args: &[String],
    log_dir: &Path,
) -> ControllerProcess {
    let admin_port = support::free_port();
    let mut args: Vec<String> = vec![ENTRYPOINT.to_string()];
    args.extend(
        chart_args
            .iter()
            .filter(|a| {
                !a.starts_with("--metrics-listen-address")
                    && !a.starts_with("--log-format")
                    && !a.starts_with("--bundle-endpoint-addr")
            })
            .cloned(),
    );
    args.push(format!("--metrics-listen-address=127.0.0.1:{admin_port}"));
    args.push(format!("--bundle-endpoint-addr=127.0.0.1:{}", support::free_port()));
    args.push("--log-format=text".into());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = identity.env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let command = image.command(Some(&arg_refs), &[(identity.dir.path(), SA_DIR)], &env_refs);
    ControllerProcess::spawn(command, admin_port, log_dir)
}

/// The controller process's uid, gid and whether its root is mounted read-only.
fn process_facts(pid: u32) -> (String, String, bool) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // Fields: id parent major:minor root mountpoint options ...; the process's "/" is its chroot.
    let root_ro = mountinfo.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && f[4] == "/" && f[5].split(',').any(|o| o == "ro")
    });
    (field("Uid:"), field("Gid:"), root_ro)
}

/// A TLS endpoint with a certificate no public CA signed: the AWS SDK in the image must load
/// its trust store and reject it. Killed on drop.
struct UntrustedTlsEndpoint {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl UntrustedTlsEndpoint {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = mesh_ca_issuer::pki::sign::self_signed_root(
            &RootBootstrap::default(),
            jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60),
        )
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.to_pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.to_pem()).unwrap();
        let port = support::free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-cert", "cert.pem", "-key", "key.pem"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        // Listening is the signal that it is ready (it answers a TCP connect).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "openssl s_server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, _dir: dir }
    }
}

impl UntrustedTlsEndpoint {
    /// An AWS PCA issuer whose endpoint is this one.
    fn pca_spec(&self) -> IssuerSpec {
        IssuerSpec {
            aws_pca: Some(AwsPCA {
                arn:
                    "arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/11111111-2222-3333-4444-555555555555"
                        .into(),
                endpoint: Some(format!("https://127.0.0.1:{}", self.port)),
                credentials_secret_ref: Some(AwsCredentialsSecretRef::named("aws-creds")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

impl Drop for UntrustedTlsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_image_signs_an_istiod_intermediate_and_writes_cacerts_under_the_chart_service_account() {
    let image = Unpacked::new();
    let client = admin_client().await;
    ensure_crds(&client).await;
    // A cluster-wide controller: no other test's controller may run meanwhile.
    let _lock = ScopeLock::exclusive().await;
    let chart = InstalledChart::install(&client, "image", &[]).await;
    let (resources, istio) = (&chart.resources, &chart.istio);

    // The chart's Deployment says which image, arguments and ServiceAccount: use them.
    let container = chart.container();
    assert!(
        container
            .image
            .as_deref()
            .is_some_and(|i| i.ends_with(&format!("/mesh-ca-issuer:{VERSION}"))),
        "the chart's default image is the one hack/image builds: {:?}",
        container.image
    );
    let identity = PodIdentity::new(&chart.token, &chart.release_ns.name, &format!("{}-pod", chart.release));
    let logs = tempfile::tempdir().unwrap();
    let mut controller = start_in_image(&image, &identity, container.args.as_deref().unwrap(), logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "the image's entrypoint did not become ready: {}",
        controller.log()
    );
    let (uid, gid, root_ro) = process_facts(controller.child.id());
    assert_eq!((uid.as_str(), gid.as_str()), ("65532", "65532"));
    assert!(root_ro, "the image's root must be mounted read-only");
    let (_, metrics) = support::http_get(controller.admin_port, "/metrics").await.unwrap();
    assert!(
        metrics.contains(&format!(
            "meshca_build_info{{version=\"{VERSION}\",revision=\"{REVISION}\"}} 1"
        )),
        "{metrics}"
    );

    // The flow: a root in the cluster resource namespace, a ClusterMeshCAIssuer, istiod's
    // intermediate requested in the Istio namespace, cacerts written there.
    let (issuer_name, _cleanup) = chart.cluster_issuer(&client, "image").await;
    let cluster_issuers: Api<ClusterMeshCAIssuer> = Api::all(client.clone());
    // An AWS PCA issuer whose endpoint presents a certificate no public CA signed: the image's
    // AWS SDK loads the trust store and refuses the endpoint.
    let tls = UntrustedTlsEndpoint::start();
    resources
        .api::<Secret>()
        .create(&PostParams::default(), &aws_credentials())
        .await
        .unwrap();
    let pca_name = format!("image-pca-{}", support::unique_suffix());
    cluster_issuers
        .create(
            &PostParams::default(),
            &ClusterMeshCAIssuer::new(&pca_name, tls.pca_spec()),
        )
        .await
        .unwrap();
    let _cleanup_pca = support::DeleteClusterIssuers(vec![pca_name.clone()]);
    chart.istiod_intermediate(&client, &issuer_name).await;
    istio
        .api::<IstioCACerts>()
        .create(
            &PostParams::default(),
            &IstioCACerts::new(
                "istiod",
                IstioCACertsSpec {
                    source_secret_name: "istiod-intermediate".into(),
                    target_secret_name: "cacerts".into(),
                    adopt_existing: AdoptExisting::Never,
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
    let cacerts = eventually(Duration::from_secs(60), || async {
        istio.api::<Secret>().get_opt("cacerts").await.ok().flatten()
    })
    .await
    .unwrap_or_else(|| panic!("no cacerts written by the image: {}", controller.log()));
    let data: std::collections::BTreeMap<String, Vec<u8>> = cacerts
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    if let Err(refused) = support::goverify::istiod_loads(&data) {
        panic!("istiod would not load the cacerts the image wrote: {refused}");
    }

    // The AWS issuer reached the TLS handshake and refused the certificate, with a trust
    // store loaded (the SDK warns when it finds none).
    let log = refused_untrusted_endpoint(&cluster_issuers, &pca_name, &controller).await;
    for warning in TRUST_STORE_WARNINGS {
        assert!(!log.contains(warning), "the image's trust store was not loaded: {log}");
    }
}

#[tokio::test]
async fn a_missing_trust_store_is_noticed() {
    // The harness's own sensitivity: from an image without its CA bundle, the same check
    // shows the SDK's warning (so its absence above means the image's bundle was read).
    let image = Unpacked::new();
    std::fs::remove_file(image.rootfs().join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    let (_lock, client, ns) = support::namespaced_test("image-no-trust-store").await;
    let tls = UntrustedTlsEndpoint::start();
    ns.api::<Secret>()
        .create(&PostParams::default(), &aws_credentials())
        .await
        .unwrap();
    let issuers: Api<MeshCAIssuer> = ns.api();
    issuers
        .create(&PostParams::default(), &MeshCAIssuer::new("pca", tls.pca_spec()))
        .await
        .unwrap();
    let identity = PodIdentity::new(&admin_token(), &ns.name, "no-trust-store-pod");
    let logs = tempfile::tempdir().unwrap();
    let args = vec![
        "--namespace".to_string(),
        ns.name.clone(),
        "--leader-elect=false".to_string(),
        // The namespaced issuer points at the untrusted local endpoint: an operator's opt-in.
        "--issuer-endpoint-override=true".to_string(),
    ];
    let mut controller = start_in_image(&image, &identity, &args, logs.path());
    assert!(
        controller.wait_ready(Duration::from_secs(60)).await,
        "{}",
        controller.log()
    );
    let log = refused_untrusted_endpoint(&issuers, "pca", &controller).await;
    assert!(
        TRUST_STORE_WARNINGS.iter().any(|w| log.contains(w)),
        "no warning about the missing trust store: {log}"
    );
    drop(client);
}

/// Static AWS credentials for the untrusted endpoint (never sent: the handshake fails first).
fn aws_credentials() -> Secret {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "aws-creds"},
        "stringData": {"AWS_ACCESS_KEY_ID": "AKIDIMAGETEST", "AWS_SECRET_ACCESS_KEY": "not-a-secret"}
    }))
    .unwrap()
}

/// Waits until the issuer reports that AWS could not be reached because the endpoint's
/// certificate is not accepted (rustls' "invalid peer certificate: ..."); returns the
/// controller's log.
async fn refused_untrusted_endpoint<K>(api: &Api<K>, name: &str, controller: &ControllerProcess) -> String
where
    K: mesh_ca_issuer::controller::issuer::IssuerObject,
{
    let ready = || async {
        let issuer = api.get(name).await.ok()?;
        issuer.status()?.conditions.iter().find(|c| c.type_ == "Ready").cloned()
    };
    let refused = eventually(Duration::from_secs(60), || async {
        ready()
            .await
            .filter(|c| c.status == "False" && c.message.contains("invalid peer certificate"))
    })
    .await;
    assert!(
        refused.is_some(),
        "the AWS SDK did not refuse the untrusted endpoint; Ready: {:?}\n{}",
        ready().await,
        controller.log()
    );
    controller.log()
}

/// The admin identity's token, from the control plane's kubeconfig.
fn admin_token() -> String {
    let kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(support::kubeconfig()).unwrap()).unwrap();
    kubeconfig["users"][0]["user"]["token"]
        .as_str()
        .expect("a token in the kubeconfig")
        .to_string()
}
