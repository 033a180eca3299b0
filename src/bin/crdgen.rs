//! Prints every CRD of ours as a multi-document YAML stream. `config/crd/` and the Helm chart's
//! `crds/` are generated from this output (hack/update-generated), and a test fails when they
//! drift from it. cert-manager's own CRDs come from cert-manager (`hack/cert-manager crds`).

use std::io::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn main() {
    if std::env::args().len() > 1 {
        eprintln!("usage: crdgen (it takes no arguments; cert-manager's own CRDs: hack/cert-manager crds)");
        std::process::exit(2);
    }
    let crds: Vec<CustomResourceDefinition> = mesh_ca_issuer::api::crds();
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
