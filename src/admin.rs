//! The admin server: readiness and debug views, on `--admin-addr`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Json, Response};
use axum::routing::get;
use meshplane_registry_sync::directory::SourceStatus;
use meshplane_shard::ads::AdsMetrics;
use meshplane_shard::runtime::Shard;
use tokio::sync::watch;

#[derive(Clone)]
pub struct AdminState {
    pub shard: Shard,
    pub directory: watch::Receiver<SourceStatus>,
    pub ads: Arc<AdsMetrics>,
    /// Everything `/metrics` reports (istiod metric names where they exist).
    pub metrics: Arc<prometheus_client::registry::Registry>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(|State(s): State<AdminState>| async move { crate::roles::metrics_response(&s.metrics) }))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/connections", get(connections))
        .route("/debug/configz", get(configz))
        .route("/debug/registryz", get(registryz))
        .with_state(state);
    crate::roles::serve_admin(listener, app, shutdown).await;
}

/// 200 once the configuration is loaded and the shard serves it.
async fn ready(State(state): State<AdminState>) -> Response {
    let loaded = state.directory.borrow().ready;
    let serving = *state.shard.ready().borrow();
    let snapshot = state.shard.snapshot();
    let configured = state.directory.borrow().last_revision.is_none_or(|r| snapshot.revision >= r);
    crate::roles::readiness(match (loaded, serving && configured) {
        (false, _) => Some("loading --config-dir".into()),
        (true, false) => Some("building the first mesh snapshot".into()),
        (true, true) => None,
    })
}

async fn config_dump(State(state): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    crate::debug::config_dump(&state.shard, &q)
}

async fn connections(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::debug::connections(&state.shard, &state.ads))
}

async fn configz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::debug::configz(&state.directory.borrow()))
}

async fn registryz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(crate::debug::registryz(&state.shard))
}
