//! The admin server: readiness and debug views, on `--admin-addr`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use meshplane_registry_sync::directory::SourceStatus;
use meshplane_shard::ads::AdsMetrics;
use meshplane_shard::debug::view_json;
use meshplane_shard::runtime::Shard;
use serde_json::json;
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
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// 200 once the configuration is loaded and the shard serves it.
async fn ready(State(state): State<AdminState>) -> Response {
    let loaded = state.directory.borrow().ready;
    let serving = *state.shard.ready().borrow();
    let snapshot = state.shard.snapshot();
    let configured = state.directory.borrow().last_revision.is_none_or(|r| snapshot.revision >= r);
    if loaded && serving && configured {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = if !loaded { "loading --config-dir" } else { "building the first mesh snapshot" };
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response()
    }
}

/// `?proxyID=NODE_ID`: everything that proxy is being served.
async fn config_dump(State(state): State<AdminState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(id) = q.get("proxyID") else {
        return (StatusCode::BAD_REQUEST, "give ?proxyID=NODE_ID (see /debug/connections)\n").into_response();
    };
    match state.shard.proxy_view(id) {
        Some(c) => {
            let mut body = view_json(&c.view, q.get("bodies").is_none_or(|v| v != "false"));
            body["proxy"] = json!(c.proxy_id);
            body["namespace"] = json!(c.class.namespace);
            body["labels"] = json!(c.class.labels);
            Json(body).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("proxy {id:?} is not connected to this shard\n")).into_response(),
    }
}

async fn connections(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let list: Vec<_> = state
        .shard
        .connections()
        .into_iter()
        .map(|c| {
            json!({
                "proxy": c.proxy_id,
                "connection": c.connection,
                "namespace": c.class.namespace,
                "labels": c.class.labels,
                "revision": c.view.revision,
                "resources": meshplane_shard::runtime::view_summary(&c.view),
            })
        })
        .collect();
    Json(json!({"connected": state.ads.connected_proxies(), "proxies": list}))
}

/// The directory source's state: files, objects and every current diagnostic.
async fn configz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let status = state.directory.borrow().clone();
    let summary = &status.summary;
    let files: Vec<_> = summary
        .file_summaries
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "state": format!("{:?}", f.state),
                "objects": f.objects,
                "errors": f.errors,
                "warnings": f.warnings,
            })
        })
        .collect();
    Json(json!({
        "ready": status.ready,
        "watching": status.watching,
        "last_revision": status.last_revision,
        "store_error": status.store_error,
        "objects": summary.objects,
        "files_with_errors": summary.files_with_errors,
        "conflicts": summary.conflicts,
        "files": files,
        "diagnostics": summary.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    }))
}

/// The services of the current mesh snapshot, with their ports and endpoint counts.
async fn registryz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let snapshot = state.shard.snapshot();
    let services: Vec<_> = snapshot
        .services
        .iter()
        .map(|s| {
            json!({
                "hostname": s.hostname,
                "namespace": s.namespace,
                "addresses": s.addresses,
                "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": format!("{:?}", p.protocol)})).collect::<Vec<_>>(),
                "endpoints": snapshot.endpoints(&s.hostname).len(),
            })
        })
        .collect();
    Json(json!({"revision": snapshot.revision, "services": services}))
}
