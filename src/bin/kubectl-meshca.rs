//! `kubectl-meshca`: the `meshca` CLI under the name kubectl looks for, so that
//! `kubectl meshca ...` works once it is on the PATH. Same code as `meshca`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    mesh_ca_issuer::cli::main_with_args(std::env::args_os())
}
