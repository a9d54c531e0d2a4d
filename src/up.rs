//! `meshplane up`: the all-in-one control plane.
//!
//! ```text
//!  --config-dir ──DirectorySource──▶ EmbeddedStore ──watch──▶ Shard ──views──▶ AdsServer (--xds-addr)
//!                                   (--data-dir or memory)         │
//!                                                                  └──────▶ admin (--admin-addr): /ready, /debug/*
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use meshplane_registry_sync::directory::{DirectoryConfig, DirectorySource};
use meshplane_shard::ads::AdsServer;
use meshplane_shard::runtime::{Shard, ShardConfig};
use meshplane_store::{EmbeddedStore, Store};
use tokio::sync::watch;

use crate::roles::{bind, shutdown_signal, stop_server, wait_for};

/// How long open xDS streams may take to end after a shutdown signal.
const XDS_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Directory of Kubernetes/Istio YAML to serve; watched for changes.
    #[arg(long, env = "MESHPLANE_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Cluster id the directory's objects belong to.
    #[arg(long, default_value = "Kubernetes", env = "MESHPLANE_CLUSTER_ID")]
    pub cluster_id: String,
    /// Address of the plaintext xDS (ADS) gRPC server.
    #[arg(long, default_value = "127.0.0.1:15010", env = "MESHPLANE_XDS_ADDR")]
    pub xds_addr: SocketAddr,
    /// Address of the admin server (/ready, /debug/config_dump?proxyID=, /debug/connections, /debug/configz).
    #[arg(long, default_value = "127.0.0.1:15014", env = "MESHPLANE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// Persist the embedded store here; without it the store lives in memory.
    #[arg(long, env = "MESHPLANE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// YAML files or directories to check.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let store: Arc<dyn Store> = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create --data-dir {}", dir.display()))?;
            Arc::new(EmbeddedStore::open(dir).with_context(|| format!("cannot open the store in {}", dir.display()))?)
        }
        None => Arc::new(EmbeddedStore::in_memory()),
    };
    // Bind both ports first, so a port in use fails fast with a clear message.
    let xds_listener = bind(args.xds_addr, "--xds-addr").await?;
    let admin_listener = bind(args.admin_addr, "--admin-addr").await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let source = DirectorySource::new(DirectoryConfig::new(&args.config_dir, &args.cluster_id))?;
    let mut directory = source.spawn(store.clone(), wait_for(shutdown_rx.clone()));

    let shard = Shard::new(store.clone(), ShardConfig::default());
    let ads = AdsServer::new(Arc::new(shard.clone()));
    let metrics = ads.metrics();

    let mut registry = prometheus_client::registry::Registry::default();
    crate::roles::metrics::register_ads(&mut registry, metrics.clone());
    crate::roles::metrics::register_shard(&mut registry, shard.clone(), watch::channel(true).1);
    crate::roles::metrics::register_directory(&mut registry, directory.status());
    let admin = crate::admin::AdminState {
        shard: shard.clone(),
        directory: directory.status(),
        ads: metrics,
        metrics: Arc::new(registry),
    };
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, admin, wait_for(shutdown_rx.clone())));

    let xds_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(tokio_stream_listener(xds_listener), wait_for(shutdown_rx.clone())),
    );
    tracing::info!(xds = %args.xds_addr, admin = %args.admin_addr, config_dir = %args.config_dir.display(), "meshplane up");

    tokio::select! {
        loaded = directory.ready() => {
            loaded.with_context(|| format!("cannot load --config-dir {}", args.config_dir.display()))?;
            tracing::info!("configuration loaded");
        }
        _ = shutdown_signal() => {
            let _ = shutdown_tx.send(true);
            return Ok(ExitCode::SUCCESS);
        }
    }
    // Serve only once the directory's first load is in the store: a shard
    // that listed a half-loaded (or, with --data-dir, stale) store would tell
    // reconnecting proxies to drop config they should keep. Until then the
    // ADS server refuses streams with UNAVAILABLE and proxies retry.
    let shard_task = tokio::spawn(shard.clone().run(shutdown_rx.clone()));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // The listener is closed at once; ADS streams never end by themselves, so
    // give them a moment to finish, then close them (proxies reconnect).
    stop_server(xds_task, XDS_DRAIN).await;
    let _ = shard_task.await;
    let _ = admin_task.await;
    if let Err(e) = directory.join().await {
        tracing::warn!(error = %e, "directory source stopped with an error");
    }
    Ok(ExitCode::SUCCESS)
}

fn tokio_stream_listener(listener: tokio::net::TcpListener) -> tokio_stream::wrappers::TcpListenerStream {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}

/// `meshplane validate`: print every diagnostic; exit 1 if any is an error.
pub fn validate(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in &args.paths {
        collect_yaml(path, &mut files).with_context(|| format!("cannot read {}", path.display()))?;
    }
    files.sort();
    let (mut errors, mut objects) = (0, 0);
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let parsed = meshplane_model::parse::parse_yaml(&file.display().to_string(), &text);
        objects += parsed.objects.len();
        for d in &parsed.diagnostics {
            println!("{d}");
        }
        errors += parsed.errors().count();
    }
    println!("{objects} objects, {errors} errors");
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn collect_yaml(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            collect_yaml(&entry.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") || out.is_empty() && path.is_file() {
        out.push(path.to_path_buf());
    }
    Ok(())
}
