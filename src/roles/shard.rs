//! `meshplane shard`: one shard of the sharded topology.
//!
//! ```text
//!  --store ──watch mesh──▶ Shard ──views──▶ AdsServer (--listen) ◀══ frontends (relayed proxy streams)
//!     ▲                      │ first snapshot loaded
//!     └──lease + put──── ShardRegistration (/meshplane/v1/shards/{--shard-id}: {"addr": --advertise-addr})
//!
//!  SIGTERM: mark draining ─▶ frontends move the proxies ─▶ proxies gone (or --drain-timeout)
//!           ─▶ revoke the lease ─▶ close the ADS server ─▶ exit
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::{Json, Response};
use axum::routing::get;
use meshplane_model::key::{ShardRecord, valid_shard_id};
use meshplane_shard::ads::{AdsMetrics, AdsServer};
use meshplane_shard::membership::{IsolatedRegistration, MembershipOptions, RegistrationState};
use meshplane_shard::runtime::{Shard, ShardConfig};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use super::{StoreUrl, bind, open_store, parse_duration, readiness, serve_admin, shutdown_signal, wait_for};

/// How long the ADS server waits for streams to end after the handover.
const XDS_DRAIN: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct ShardArgs {
    /// Address of the plaintext ADS gRPC server the frontends relay to.
    #[arg(long, default_value = "127.0.0.1:15110", env = "MESHPLANE_LISTEN")]
    pub listen: SocketAddr,
    /// `HOST:PORT` the frontends dial, registered in the store. Default: --listen
    /// (give it when --listen is a wildcard address such as 0.0.0.0).
    #[arg(long, env = "MESHPLANE_ADVERTISE_ADDR")]
    pub advertise_addr: Option<String>,
    /// The shared store: etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "MESHPLANE_STORE")]
    pub store: StoreUrl,
    /// Address of the admin server (/ready, /metrics, /debug/config_dump?proxyID=, /debug/connections).
    #[arg(long, default_value = "127.0.0.1:15114", env = "MESHPLANE_ADMIN_ADDR")]
    pub admin_addr: SocketAddr,
    /// This shard's id in the membership (unique per live shard). Default: HOSTNAME-PID.
    #[arg(long, env = "MESHPLANE_SHARD_ID")]
    pub shard_id: Option<String>,
    /// TTL of the membership lease: how long the frontends count a shard that died.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "MESHPLANE_LEASE_TTL")]
    pub lease_ttl: Duration,
    /// Longest a graceful shutdown (SIGTERM) waits for the proxies to move to other shards.
    #[arg(long, default_value = "30s", value_parser = parse_duration, env = "MESHPLANE_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,
}

/// Streams a frontend may reset before this shard accepted them, per
/// connection, before h2 closes the connection (see the server builder).
const PENDING_ACCEPT_RESETS: usize = 16_384;

/// `HOSTNAME-PID`, the default shard id.
fn default_shard_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| valid_shard_id(h))
        .unwrap_or_else(|| "shard".to_string());
    format!("{host}-{}", std::process::id())
}

pub async fn run(args: ShardArgs) -> anyhow::Result<ExitCode> {
    let id = args.shard_id.clone().unwrap_or_else(default_shard_id);
    anyhow::ensure!(
        valid_shard_id(&id),
        "--shard-id {id:?} cannot be used in store keys: use printable ASCII without '/' or spaces"
    );
    let advertise = match &args.advertise_addr {
        Some(addr) => addr.clone(),
        None if args.listen.ip().is_unspecified() => anyhow::bail!(
            "--listen {} is a wildcard address the frontends cannot dial; give --advertise-addr HOST:PORT",
            args.listen
        ),
        None => args.listen.to_string(),
    };
    let store = open_store(&args.store, "shard").await?;
    let xds_listener = bind(args.listen, "--listen").await?;
    let admin_listener = bind(args.admin_addr, "--admin-addr").await?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shard = Shard::new(store.clone(), ShardConfig::default());
    let shard_task = tokio::spawn(shard.clone().run(shutdown_rx.clone()));
    let ads = AdsServer::new(Arc::new(shard.clone()));
    let ads_metrics = ads.metrics();

    let record = ShardRecord { id: id.clone(), addr: advertise.clone(), draining: false };
    let options = MembershipOptions { ttl: args.lease_ttl, drain_timeout: args.drain_timeout };
    // Its own thread, runtime and store connection (see IsolatedRegistration).
    let url = args.store.clone();
    let membership = IsolatedRegistration::spawn(
        move || async move { open_store(&url, "shard membership").await.map_err(|e| format!("{e:#}")) },
        record,
        options,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let registration_state = membership.state();

    let (registered_tx, registered_rx) = watch::channel(false);
    let mut registry = Registry::default();
    super::metrics::register_ads(&mut registry, ads_metrics.clone());
    super::metrics::register_shard(&mut registry, shard.clone(), registered_rx);
    let admin = AdminState {
        shard: shard.clone(),
        ads: ads_metrics.clone(),
        registration: registration_state.clone(),
        registry: Arc::new(registry),
    };
    let admin_app = axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/connections", get(connections))
        .with_state(admin);
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let admin_task = tokio::spawn(serve_admin(admin_listener, admin_app, wait_for(admin_stop_rx)));

    let (xds_stop_tx, xds_stop_rx) = watch::channel(false);
    let xds_task = tokio::spawn(
        tonic::transport::Server::builder()
            // Every proxy a frontend relays here is one stream on one
            // connection: do not cap streams per connection.
            .max_concurrent_streams(None)
            // Large windows, as on the frontend's side: many streams' small
            // frames share this connection's budget (see RELAY_CONNECTION_WINDOW).
            .initial_connection_window_size(meshplane_frontend::relay::RELAY_CONNECTION_WINDOW)
            .initial_stream_window_size(meshplane_frontend::relay::RELAY_STREAM_WINDOW)
            // h2 closes the whole connection once 20 streams were reset before
            // this server accepted them (rapid-reset protection). A frontend
            // re-homing thousands of proxies at once may give up on more than
            // that on one connection, and the close would re-home every other
            // proxy multiplexed on it (bench/shard-kill.sh): the frontends are
            // the only peers here, so allow as many as a re-home can open.
            .http2_max_pending_accept_reset_streams(Some(PENDING_ACCEPT_RESETS))
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .add_service(ads.into_service())
            .serve_with_incoming_shutdown(TcpListenerStream::new(xds_listener), wait_for(xds_stop_rx)),
    );
    tracing::info!(shard = %id, listen = %args.listen, advertise = %advertise, admin = %args.admin_addr, "meshplane shard");

    // Register only once the first snapshot is loaded: frontends send
    // proxies to registered shards at once.
    let mut ready = shard.ready();
    let signalled = tokio::select! {
        _ = ready.wait_for(|r| *r) => false,
        () = shutdown_signal() => true,
    };
    if !signalled {
        tracing::info!(shard = %id, "mesh snapshot loaded; registering");
        let (drain_tx, drain_rx) = watch::channel(false);
        let connected = ads_metrics.clone();
        let mut state = registration_state.clone();
        let mirror = tokio::spawn(async move {
            loop {
                let registered = matches!(*state.borrow_and_update(), RegistrationState::Registered { .. });
                registered_tx.send_replace(registered);
                if state.changed().await.is_err() {
                    break;
                }
            }
        });
        let registration_done = membership.start(wait_for(drain_rx), proxies_gone(connected));
        shutdown_signal().await;
        tracing::info!(shard = %id, "shutting down: handing the proxies over");
        drain_tx.send_replace(true);
        let _ = registration_done.await;
        mirror.abort();
    }
    let _ = shutdown_tx.send(true);
    xds_stop_tx.send_replace(true);
    super::stop_server(xds_task, XDS_DRAIN).await;
    let _ = shard_task.await;
    admin_stop_tx.send_replace(true);
    let _ = admin_task.await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves once no proxy is connected. Polled: the ADS metrics are plain
/// counters, and a handover takes far longer than the poll interval.
async fn proxies_gone(ads: Arc<AdsMetrics>) {
    while ads.connected_proxies() > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone)]
struct AdminState {
    shard: Shard,
    ads: Arc<AdsMetrics>,
    registration: watch::Receiver<RegistrationState>,
    registry: Arc<Registry>,
}

/// 200 while the snapshot is loaded and the shard is registered (not draining).
async fn ready(State(state): State<AdminState>) -> Response {
    let why = if !*state.shard.ready().borrow() {
        Some("building the first mesh snapshot".to_string())
    } else {
        match &*state.registration.borrow() {
            RegistrationState::Registered { .. } => None,
            RegistrationState::Registering => Some("registering in the store".to_string()),
            RegistrationState::Draining { .. } => Some("draining: handing proxies over".to_string()),
            RegistrationState::Left => Some("left the shard membership".to_string()),
        }
    };
    readiness(why)
}

async fn metrics(State(state): State<AdminState>) -> Response {
    super::metrics_response(&state.registry)
}

async fn config_dump(State(state): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    crate::debug::config_dump(&state.shard, &q)
}

async fn connections(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::debug::connections(&state.shard, &state.ads))
}
