//! Prints every CRD of ours as a multi-document YAML stream. `config/crd/` and the Helm chart's
//! `crds/` are generated from this output (hack/update-generated), and a test fails when they
//! drift from it.
//!
//! `crdgen --cert-manager-stand-ins` prints instead the stand-in CRDs for cert-manager's
//! CertificateRequest and Certificate that the local demo and tests install because
//! cert-manager itself cannot run there. They are never part of a release.

use std::io::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let crds: Vec<CustomResourceDefinition> = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => mesh_ca_issuer::api::crds(),
        ["--cert-manager-stand-ins"] => mesh_ca_issuer::api::cert_manager::test_crds(),
        _ => {
            eprintln!("usage: crdgen [--cert-manager-stand-ins]");
            std::process::exit(2);
        }
    };
    let mut out = std::io::stdout().lock();
    for crd in crds {
        let yaml = match mesh_ca_issuer::api::crd_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("error: could not serialise CRD: {e}");
                std::process::exit(1);
            }
        };
        // A closed pipe (`crdgen | head`) is not an error worth a panic.
        if out.write_all(yaml.as_bytes()).is_err() {
            std::process::exit(1);
        }
    }
}
