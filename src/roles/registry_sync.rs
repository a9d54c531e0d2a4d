//! `meshplane registry-sync`: keeps one cluster's keys in the shared store
//! equal to a directory of Kubernetes/Istio YAML.
//!
//! ```text
//!  --config-dir ──DirectorySource──batch──▶ --store /meshplane/v1/clusters/{--cluster-id}/...
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::response::{Json, Response};
use axum::routing::get;
use meshplane_registry_sync::directory::{DirectoryConfig, DirectorySource, SourceStatus};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::{StoreUrl, bind, open_store, readiness, serve_admin, shutdown_signal, wait_for};

#[derive(Debug, clap::Args)]
pub struct RegistrySyncArgs {
    /// Directory of Kubernetes/Istio YAML to keep in the store; watched for changes.
    #[arg(long, env = "MESHPLANE_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Cluster id the directory's objects belong to.
    #[arg(long, default_value = "Kubernetes", env = "MESHPLANE_CLUSTER_ID")]
    pub cluster_id: String,
    /// The shared store: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "MESHPLANE_STORE")]
    pub store: StoreUrl,
    /// Address of the admin server (/ready, /metrics, /debug/configz).
    #[arg(long, default_value = "127.0.0.1:15016", env = "MESHPLANE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
}

pub async fn run(args: RegistrySyncArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.store, "registry-sync").await?;
    let admin_listener = bind(args.admin_addr, "--admin-addr").await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let source = DirectorySource::new(DirectoryConfig::new(&args.config_dir, &args.cluster_id))
        .with_context(|| format!("cannot use --config-dir {}", args.config_dir.display()))?;
    let mut directory = source.spawn(store, wait_for(shutdown_rx.clone()));

    let mut registry = Registry::default();
    super::metrics::register_directory(&mut registry, directory.status());
    let admin = AdminState { status: directory.status(), registry: Arc::new(registry) };
    let admin_app = axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/configz", get(configz))
        .with_state(admin);
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin_app, wait_for(shutdown_rx.clone())));
    tracing::info!(config_dir = %args.config_dir.display(), cluster = %args.cluster_id, admin = %args.admin_addr,
        "meshplane registry-sync");

    tokio::select! {
        loaded = directory.ready() => {
            loaded.with_context(|| format!("cannot load --config-dir {}", args.config_dir.display()))?;
            tracing::info!("configuration loaded into the store");
            shutdown_signal().await;
        }
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = admin_task.await;
    if let Err(e) = directory.join().await {
        tracing::warn!(error = %e, "directory source stopped with an error");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct AdminState {
    status: watch::Receiver<SourceStatus>,
    registry: Arc<Registry>,
}

/// 200 once the directory's first full load is in the store.
async fn ready(State(state): State<AdminState>) -> Response {
    let status = state.status.borrow().clone();
    readiness(if status.ready {
        None
    } else if let Some(e) = status.store_error {
        Some(format!("writing to the store failed: {e}"))
    } else {
        Some("loading --config-dir".into())
    })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    super::metrics_response(&state.registry)
}

async fn configz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::debug::configz(&state.status.borrow()))
}
