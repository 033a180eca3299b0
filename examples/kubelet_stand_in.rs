//! STAND-IN for the kubelet's Secret volume, used by `hack/demo --istiod` and
//! `hack/demo --multicluster` because no kubelet can run here: projects one Secret (istiod's
//! `cacerts`) into a directory the way the kubelet's atomic writer does (a timestamped
//! directory, `..data` switched to it atomically, each key a symlink into `..data`), and keeps
//! it current until killed. It shares its code with the tests (`tests/support/kubelet.rs`).

#[path = "../tests/support/kubelet.rs"]
mod kubelet;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "kubelet stand-in: project a Secret into a directory as the kubelet does, and keep it current")]
struct Args {
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    #[arg(long, default_value = "cacerts")]
    secret: String,
    /// The directory to project into (istiod's ./etc/cacerts).
    #[arg(long)]
    dir: PathBuf,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    mesh_ca_issuer::install_crypto_provider();
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("kubelet stand-in: no Kubernetes client (KUBECONFIG): {e}");
            std::process::exit(1);
        }
    };
    let volume = kubelet::ProjectedVolume::secret(&client, &args.namespace, &args.secret, &args.dir);
    let first = volume.wait_mounted(Duration::from_secs(120)).await;
    println!(
        "projected {}/{} version {} into {}",
        args.namespace,
        args.secret,
        first.resource_version,
        args.dir.display()
    );
    let mut seen = 1;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let projections = volume.projections();
        for p in projections.iter().skip(seen) {
            println!(
                "projected {}/{} version {}",
                args.namespace, args.secret, p.resource_version
            );
        }
        seen = projections.len();
    }
}
