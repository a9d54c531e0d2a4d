//! The debug views every role shares (`/debug/config_dump`, `/debug/connections`,
//! `/debug/configz`, `/debug/registryz`), as plain functions of the domain
//! objects, so `meshplane up` and the separate roles answer identically.

use std::collections::HashMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use meshplane_registry_sync::directory::SourceStatus;
use meshplane_shard::ads::AdsMetrics;
use meshplane_shard::debug::view_json;
use meshplane_shard::runtime::{Shard, view_summary};
use serde_json::{Value, json};

/// `?proxyID=NODE_ID[&bodies=false]`: everything that proxy is being served.
pub fn config_dump(shard: &Shard, query: &HashMap<String, String>) -> Response {
    let Some(id) = query.get("proxyID") else {
        return (StatusCode::BAD_REQUEST, "give ?proxyID=NODE_ID (see /debug/connections)\n").into_response();
    };
    match shard.proxy_view(id) {
        Some(c) => {
            let mut body = view_json(&c.view, query.get("bodies").is_none_or(|v| v != "false"));
            body["proxy"] = json!(c.proxy_id);
            body["namespace"] = json!(c.class.namespace);
            body["labels"] = json!(c.class.labels);
            Json(body).into_response()
        }
        None => (StatusCode::NOT_FOUND, format!("proxy {id:?} is not connected here\n")).into_response(),
    }
}

/// The proxies connected to a shard, with their class and resource counts.
pub fn connections(shard: &Shard, ads: &AdsMetrics) -> Value {
    let list: Vec<_> = shard
        .connections()
        .into_iter()
        .map(|c| {
            json!({
                "proxy": c.proxy_id,
                "connection": c.connection,
                "namespace": c.class.namespace,
                "labels": c.class.labels,
                "revision": c.view.revision,
                "resources": view_summary(&c.view),
            })
        })
        .collect();
    json!({"connected": ads.connected_proxies(), "proxies": list})
}

/// The directory source: files, objects and every current diagnostic.
pub fn configz(status: &SourceStatus) -> Value {
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
    json!({
        "ready": status.ready,
        "watching": status.watching,
        "last_revision": status.last_revision,
        "store_error": status.store_error,
        "objects": summary.objects,
        "files_with_errors": summary.files_with_errors,
        "conflicts": summary.conflicts,
        "files": files,
        "diagnostics": summary.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
    })
}

/// The services of a shard's current snapshot, with ports and endpoint counts.
pub fn registryz(shard: &Shard) -> Value {
    let snapshot = shard.snapshot();
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
    json!({"revision": snapshot.revision, "services": services})
}
