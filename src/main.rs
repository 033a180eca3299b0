//! The `mesh-ca-issuer` binary: parse configuration, install the crypto provider, set up
//! logging, run the controllers until SIGTERM or Ctrl-C.
#![forbid(unsafe_code)]

use clap::Parser;
use mesh_ca_issuer::config::Config;

fn main() {
    let config = Config::parse();
    // Sized by --worker-threads, not by the node's cores: see the flag.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(config.worker_threads))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(serve(config));
}

async fn serve(config: Config) {
    mesh_ca_issuer::install_crypto_provider();
    if let Err(e) = mesh_ca_issuer::telemetry::init(config.log_format, &config.log_level) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = mesh_ca_issuer::run(config, shutdown_signal()).await {
        tracing::error!(error = %e, "mesh-ca-issuer stopped");
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
}
