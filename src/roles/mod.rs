//! The processes of the sharded topology, one subcommand each, sharing one
//! store (`--store etcd://HOST:PORT[,HOST:PORT...]`):
//!
//! ```text
//!  registry-sync --config-dir ──batch──▶ ┌────────┐ ◀──lease+put── shard --listen (N of them)
//!                                       │  etcd  │ ──watch mesh──▶ shard
//!                                       └────────┘ ──watch shards─▶ frontend --xds-addr (any number)
//!  proxy ══ADS══▶ frontend ══ADS (relayed, one HTTP/2 connection per shard)══▶ owner shard
//! ```
//!
//! Every process also serves `--admin-addr`: `/ready`, `/metrics`
//! (Prometheus text; istiod's names where istiod has one) and debug views.
//! Store errors never end a process: it keeps serving what it has and
//! catches up when the store answers again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use meshplane_store::Store;
use meshplane_store::etcd::{EtcdOptions, EtcdStore};
use tokio::sync::watch;

pub mod frontend;
pub mod metrics;
pub mod registry_sync;
pub mod shard;

/// What `--store` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `etcd://HOST:PORT[,HOST:PORT...]`
    Etcd(String),
    /// `memory`: an embedded store private to one process.
    Memory,
}

impl std::str::FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "memory" {
            return Ok(StoreUrl::Memory);
        }
        meshplane_store::etcd::parse_etcd_url(s).map_err(|e| e.to_string())?;
        Ok(StoreUrl::Etcd(s.to_string()))
    }
}

/// Open the store a role shares with the others.
///
/// `memory` is refused: a store private to this process is shared with no
/// other process, so a shard would serve an empty mesh and a frontend would
/// see no shards. `meshplane up` is the single-process topology.
pub async fn open_store(url: &StoreUrl, role: &str) -> anyhow::Result<Arc<dyn Store>> {
    match url {
        StoreUrl::Etcd(url) => {
            let store = EtcdStore::connect_url(url, EtcdOptions::default())
                .await
                .with_context(|| format!("cannot use --store {url}"))?;
            Ok(Arc::new(store))
        }
        StoreUrl::Memory => anyhow::bail!(
            "--store memory is private to one process, so `meshplane {role}` would share it with no other \
             process; give the shared store (--store etcd://HOST:PORT[,HOST:PORT...]), or run everything in \
             one process with `meshplane up`"
        ),
    }
}

/// A duration flag: `500ms`, `5s`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// Pending connections the kernel may queue on a listener. tokio's default
/// (1,024) overflowed when 10,000 proxies reconnected at once, resetting
/// thousands of them into their backoff; the kernel caps this at
/// `net.core.somaxconn` (4,096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Bind a TCP listener, naming the flag in the error.
pub async fn bind(addr: std::net::SocketAddr, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| format!("cannot listen on {addr} ({flag}); is another process using it?"))
}

/// Resolves when the watched flag turns true.
pub async fn wait_for(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Serve an admin router until `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// `/ready`: 200, or 503 with the reason.
pub fn readiness(not_ready: Option<String>) -> Response {
    match not_ready {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

/// `/metrics` in the Prometheus text format.
pub fn metrics_response(registry: &prometheus_client::registry::Registry) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, registry) {
        Ok(()) => ([(CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response(),
    }
}

/// Wait for a spawned server to end by itself for `grace`, then abort it:
/// ADS streams never end by themselves.
pub async fn stop_server(task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>, grace: Duration) {
    let abort = task.abort_handle();
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "xDS server ended with an error"),
        Ok(_) => {}
        Err(_) => {
            tracing::info!(after = ?grace, "closing the remaining xDS streams");
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls() {
        assert_eq!("memory".parse::<StoreUrl>(), Ok(StoreUrl::Memory));
        assert_eq!(
            "etcd://127.0.0.1:2379,10.0.0.2:2379".parse::<StoreUrl>(),
            Ok(StoreUrl::Etcd("etcd://127.0.0.1:2379,10.0.0.2:2379".into()))
        );
        let err = "http://127.0.0.1:2379".parse::<StoreUrl>().unwrap_err();
        assert!(err.contains("etcd://HOST:PORT"), "{err}");
    }

    #[tokio::test]
    async fn memory_is_refused_with_a_pointer_to_up() {
        let err = open_store(&StoreUrl::Memory, "shard").await.err().unwrap().to_string();
        assert!(err.contains("meshplane up"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
