//! `meshplane`: an Istio-compatible, horizontally sharded service-mesh control plane.
//!
//! One binary, one subcommand per role. `meshplane up` runs everything in one
//! process on the embedded store; the sharded topology (`frontend`, `shard`,
//! `registry-sync` on etcd) comes with its own subcommands.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod admin;
mod up;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "meshplane", version, about = "An Istio-compatible service-mesh control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: embedded store, directory source, shard and xDS server.
    Up(up::UpArgs),
    /// Parse and validate a directory (or file) of Istio/Kubernetes YAML, and print every finding.
    Validate(up::ValidateArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("MESHPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshplane: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Validate(args) => up::validate(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshplane: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
