//! `meshca`: the operator's command-line tool.
//!
//! PLACEHOLDER: only `--version` and `--help` exist here, so that the image and the release
//! ship the binary under its final name and `--version` can be tested. The real commands come
//! with issue 13 (the `federation` branch), whose version of this file replaces this one.
#![forbid(unsafe_code)]

use clap::Parser;

/// meshca: inspect and operate mesh-ca-issuer.
#[derive(Parser, Debug)]
#[command(name = "meshca", version = mesh_ca_issuer::build_info::VERSION_LINE, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!("meshca: no command yet; see `meshca --help`");
    std::process::exit(2);
}
