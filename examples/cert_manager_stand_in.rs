//! STAND-IN for cert-manager's Certificate controller and approver, used by the fast default of
//! `hack/demo` (which then skips building cert-manager, 10 to 20 minutes the first time) and by
//! `hack/demo --multicluster`; `hack/demo --cert-manager` runs real cert-manager instead. For one
//! Certificate it does what cert-manager does and nothing more: makes a key and CSR, creates the
//! CertificateRequest, approves it, waits for the issuer to answer, writes the Certificate's
//! Secret (`tls.crt`, `tls.key`, `ca.crt`) and records the Certificate with its status. It shares its code with the tests
//! (`tests/support/cert_manager.rs`).

#[path = "../tests/support/cert_manager.rs"]
mod cert_manager;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "cert-manager stand-in: request, approve and store one istiod intermediate")]
struct Args {
    #[arg(long, default_value = "istio-system")]
    namespace: String,
    /// Name of the (stand-in) Certificate; the request and the Secret are named after it.
    #[arg(long, default_value = "istiod-intermediate")]
    certificate: String,
    #[arg(long, default_value = "ClusterMeshCAIssuer")]
    issuer_kind: String,
    #[arg(long)]
    issuer: String,
    /// Revision suffix of the CertificateRequest name (cert-manager names them <cert>-<n>).
    #[arg(long, default_value_t = 1)]
    revision: u32,
    #[arg(long)]
    duration: Option<String>,
    /// Where to write tls.crt and ca.crt for inspection (never the key).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    mesh_ca_issuer::install_crypto_provider();
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: no Kubernetes client (is KUBECONFIG set?): {e}");
            std::process::exit(1);
        }
    };
    let request_name = format!("{}-{}", args.certificate, args.revision);
    let req = cert_manager::IntermediateRequest {
        certificate: Some(args.certificate.clone()),
        issuer_kind: args.issuer_kind.clone(),
        duration: args.duration.clone(),
        ..cert_manager::IntermediateRequest::istiod(&request_name, &args.issuer)
    };
    let (key, csr) = cert_manager::make_key_and_csr(&req);
    println!(
        "[cert-manager stand-in] generated an ECDSA P-256 key and a CSR for {:?}",
        req.common_name
    );
    cert_manager::create_request(&client, &args.namespace, &req, csr.as_bytes()).await;
    println!(
        "[cert-manager stand-in] created CertificateRequest {}/{request_name} (isCA, issuerRef {} {})",
        args.namespace, args.issuer_kind, args.issuer
    );
    cert_manager::approve(&client, &args.namespace, &request_name).await;
    println!("[cert-manager stand-in] approved it, as cert-manager's approver would");
    let cr = cert_manager::wait_for_reason(
        &client,
        &args.namespace,
        &request_name,
        &["Issued", "Failed", "Denied"],
        Duration::from_secs(60),
    )
    .await;
    let ready = cr.condition("Ready").cloned();
    let reason = ready.as_ref().and_then(|c| c.reason.clone()).unwrap_or_default();
    println!(
        "[cert-manager stand-in] issuer answered: {reason}: {}",
        ready.and_then(|c| c.message).unwrap_or_default()
    );
    if reason != "Issued" {
        std::process::exit(1);
    }
    cert_manager::write_certificate_secret(&client, &args.namespace, &args.certificate, &cr, &key).await;
    println!(
        "[cert-manager stand-in] wrote Secret {}/{} (tls.crt, tls.key, ca.crt)",
        args.namespace, args.certificate
    );
    // The Certificate itself, as the user would have written it and cert-manager's status on
    // it (what `meshca check` reads of istiod's Certificate).
    cert_manager::record_certificate(
        &client,
        &args.namespace,
        &args.certificate,
        &args.certificate,
        &cr,
        None,
    )
    .await;
    println!(
        "[cert-manager stand-in] recorded Certificate {}/{} (isCA, issuerRef, notAfter, renewalTime)",
        args.namespace, args.certificate
    );
    if let (Some(dir), Some(status)) = (args.out, cr.status) {
        let write = |name: &str, bytes: Option<Vec<u8>>| {
            if let Err(e) = std::fs::write(dir.join(name), bytes.unwrap_or_default()) {
                eprintln!("error: writing {name}: {e}");
                std::process::exit(1);
            }
        };
        write("tls.crt", status.certificate);
        write("ca.crt", status.ca);
    }
}
