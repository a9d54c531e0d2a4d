//! `meshplane frontend`: relays each proxy's ADS stream to its owner shard.
//!
//! ```text
//!  --store ──list+watch /meshplane/v1/shards/──▶ Membership ──▶ RelayServer (--xds-addr) ◀══ proxies
//!                                                                   ║ one HTTP/2 connection per shard
//!                                                                   ╚══▶ shards
//! ```
//!
//! Keeps no durable state: any number of frontends can run, and a proxy
//! whose frontend goes away reconnects to another with its
//! `initial_resource_versions`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{Json, Response};
use axum::routing::get;
use meshplane_frontend::membership::{Membership, follow_membership};
use meshplane_frontend::relay::{RelayConfig, RelayServer};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::{StoreUrl, bind, open_store, readiness, serve_admin, shutdown_signal, wait_for};

/// How long relayed streams may take to end after a shutdown signal; then
/// they are closed and the proxies reconnect to another frontend.
const XDS_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct FrontendArgs {
    /// Address of the plaintext xDS (ADS) gRPC server proxies connect to.
    #[arg(long, default_value = "127.0.0.1:15010", env = "MESHPLANE_XDS_ADDR")]
    pub xds_addr: SocketAddr,
    /// The shared store: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "MESHPLANE_STORE")]
    pub store: StoreUrl,
    /// Address of the admin server (/ready, /metrics, /debug/shards, /debug/connections).
    #[arg(long, default_value = "127.0.0.1:15014", env = "MESHPLANE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
}

pub async fn run(args: FrontendArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.store, "frontend").await?;
    let xds_listener = bind(args.xds_addr, "--xds-addr").await?;
    let admin_listener = bind(args.admin_addr, "--admin-addr").await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let (membership_tx, membership_rx) = watch::channel(Arc::new(Membership::default()));
    let membership_task = tokio::spawn(follow_membership(store, membership_tx, wait_for(shutdown_rx.clone())));
    let relay = RelayServer::new(membership_rx.clone(), RelayConfig::default());

    let mut registry = Registry::default();
    super::metrics::register_relay(&mut registry, relay.metrics(), membership_rx.clone());
    let admin = AdminState { relay: relay.clone(), membership: membership_rx, registry: Arc::new(registry) };
    let admin_app = axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/shards", get(shards))
        .route("/debug/connections", get(connections))
        .with_state(admin);
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin_app, wait_for(shutdown_rx.clone())));
    let xds_task = tokio::spawn(
        tonic::transport::Server::builder()
            .max_concurrent_streams(None)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(relay.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), wait_for(shutdown_rx.clone())),
    );
    tracing::info!(xds = %args.xds_addr, admin = %args.admin_addr, "meshplane frontend");

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    super::stop_server(xds_task, XDS_DRAIN).await;
    let _ = membership_task.await;
    let _ = admin_task.await;
    Ok(ExitCode::SUCCESS)
}

#[derive(Clone)]
struct AdminState {
    relay: RelayServer,
    membership: watch::Receiver<Arc<Membership>>,
    registry: Arc<Registry>,
}

/// 200 once membership is loaded and some shard can take proxies.
async fn ready(State(state): State<AdminState>) -> Response {
    let membership = state.membership.borrow().clone();
    readiness(if !membership.is_loaded() {
        Some("loading shard membership from the store".into())
    } else if membership.ring().is_empty() {
        Some("no shard is registered (or all are draining)".into())
    } else {
        None
    })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    super::metrics_response(&state.registry)
}

/// The shard membership this frontend sees.
async fn shards(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let membership = state.membership.borrow().clone();
    let shards: Vec<_> = membership
        .shards()
        .map(|e| {
            json!({
                "id": e.record.id,
                "addr": e.record.addr,
                "draining": e.record.draining,
                "create_revision": e.create_revision,
            })
        })
        .collect();
    Json(
        json!({"revision": membership.revision, "serving": membership.ring().shards().iter().map(|s| s.to_string()).collect::<Vec<_>>(), "shards": shards}),
    )
}

/// The streams relayed now, with the shard each one is relayed to.
async fn connections(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let streams: Vec<_> = state
        .relay
        .streams()
        .into_iter()
        .map(|s| json!({"proxy": s.node_id, "protocol": s.protocol, "shard": s.shard.as_deref(), "epoch": s.epoch}))
        .collect();
    Json(json!({"streams": streams.len(), "proxies": streams}))
}
