//! `meshca` (also installed as `kubectl-meshca`): trust across clusters. All logic lives in
//! [`mesh_ca_issuer::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mesh_ca_issuer::cli::main_with_args(std::env::args_os())
}
