//! `loadtest`: simulated Envoy proxies against an ADS server.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use meshplane_loadtest::istio_files::Flavor;
use meshplane_loadtest::mesh::{Mesh, MeshParams};
use meshplane_loadtest::run::{RunArgs, run};

#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about = "Simulated Envoy proxies against any ADS server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect simulated proxies, run a scenario, and report convergence and costs.
    Run(Box<RunArgs>),
    /// Write a mesh (Kubernetes/Istio YAML + the workloads to impersonate) to a directory.
    GenMesh {
        #[command(flatten)]
        params: MeshParams,
        /// kubernetes: Services + Pods. istio-files: ServiceEntries + WorkloadEntries
        /// (no Kubernetes kinds), for istiod --configDir; meshplane serves both.
        #[arg(long, value_enum, default_value_t)]
        flavor: Flavor,
        #[arg(long)]
        out: PathBuf,
    },
    /// Redraw the plots of a JSON report.
    Plot {
        report: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Internal: a worker process (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let worker = matches!(cli.command, Command::Worker);
    let mut builder = if worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => {
                let report = run(*args).await?;
                println!("{}", summary(&report));
                Ok(())
            }
            Command::GenMesh { params, flavor, out } => {
                let mut mesh = Mesh::generate(params);
                mesh.flavor = flavor;
                mesh.write(&out)?;
                let pods: usize = mesh.services.iter().map(|s| s.pods.len()).sum();
                println!(
                    "wrote {} services, {pods} pods in {} namespaces (+ {}) and {} proxies to {}",
                    mesh.services.len(),
                    mesh.namespaces.len(),
                    mesh.shared_namespace,
                    mesh.proxies().len(),
                    out.display()
                );
                Ok(())
            }
            Command::Plot { report, out } => {
                let text = std::fs::read_to_string(&report)?;
                let report: meshplane_loadtest::report::Report = serde_json::from_str(&text)?;
                for p in meshplane_loadtest::plot::write_all(&report, &out)? {
                    println!("{}", p.display());
                }
                Ok(())
            }
            Command::Worker => meshplane_loadtest::worker::serve_stdio().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn summary(r: &meshplane_loadtest::report::Report) -> String {
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
    let mut s = format!(
        "proxies: {} requested, {} connected, {} synced, {} converged ({} affected)\n\
         convergence: {} of {} (change, proxy) pairs; p50 {} p90 {} p99 {} max {}\n\
         nacks {} reconnects {}",
        r.proxies.requested,
        r.proxies.connected,
        r.proxies.synced,
        r.proxies.converged,
        r.proxies.affected,
        r.convergence.converged,
        r.convergence.affected,
        ms(r.convergence.p50_ms),
        ms(r.convergence.p90_ms),
        ms(r.convergence.p99_ms),
        ms(r.convergence.max_ms),
        r.nacks,
        r.reconnects
    );
    if let Some(t) = &r.target {
        s += &format!(
            "\ncontrol plane: {:.1} KB RSS per proxy, peak {} MB, {} CPU s per push per proxy",
            t.rss_kb_per_proxy.unwrap_or(f64::NAN),
            t.peak_rss_kb / 1024,
            t.cpu_s_per_push_per_proxy.map_or("-".into(), |v| format!("{v:.6}"))
        );
    }
    if let Some(kb) = r.loadtest.rss_kb_per_proxy {
        s += &format!("\nloadtest: {kb:.1} KB RSS per proxy");
    }
    if let Some(ms) = r.reconnect_storm_ms {
        s += &format!("\nreconnect storm: all synced again after {ms:.0} ms");
    }
    s
}
