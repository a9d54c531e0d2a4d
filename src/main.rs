//! `meshplane`: an Istio-compatible, horizontally sharded service-mesh control plane.
//!
//! One binary, one subcommand per role. `meshplane up` runs everything in one
//! process on the embedded store; the sharded topology (`frontend`, `shard`,
//! `registry-sync` on etcd) comes with its own subcommands.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod admin;
mod debug;
mod roles;
mod up;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc. A push to thousands of proxies
/// allocates and frees a lot at once (responses in flight, a rebuild's new
/// views next to the old ones); glibc kept the freed memory of each burst in
/// its arenas, so RSS grew by about 40 KB per proxy over the first few
/// changes (in a 5,000-proxy run 265 MB were free but held, and
/// `malloc_trim` gave back 175 MB). jemalloc returns freed pages within
/// seconds: 95 -> 71 KB per proxy at the end of the same run, and less CPU
/// per push. Heap profilers that hook malloc (heaptrack, valgrind) see
/// nothing of it: profile a build with `--no-default-features`.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Sharded topology: serve proxies relayed by the frontends; registers itself under a lease.
    Shard(roles::shard::ShardArgs),
    /// Sharded topology: relay each proxy's ADS stream to the shard that owns it.
    Frontend(roles::frontend::FrontendArgs),
    /// Sharded topology: keep a directory of YAML in the shared store.
    RegistrySync(roles::registry_sync::RegistrySyncArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("MESHPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            Command::Shard(args) => roles::shard::run(args).await,
            Command::Frontend(args) => roles::frontend::run(args).await,
            Command::RegistrySync(args) => roles::registry_sync::run(args).await,
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
