//! A real HTTP/1.1 echo backend, controllable while it runs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::process::{block_on, rt};
use super::wait::wait_for;

/// Which requests the backend fails (with 503) instead of echoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Serve normally.
    Off,
    /// Respond 503 to every request.
    All,
    /// Respond 503 to the next K requests, then serve normally.
    FirstK(u64),
}

struct State {
    name: String,
    requests: AtomicU64,
    fail: Mutex<FailMode>,
}

/// An HTTP/1.1 server on `addr` that answers every request with 200 and a
/// JSON body describing it:
///
/// ```json
/// {"backend": "<name>", "method": "GET", "path": "/a?b=c", "host": "shop",
///  "headers": {"x-foo": "bar", ...}, "body": "..."}
/// ```
///
/// (`path` is the path and query as received; repeated headers are joined
/// with ", "). Every response has the header `x-backend: <name>`.
///
/// Controls: the query parameter `delay_ms=N` delays the response by N ms
/// (at most 60 s); `status=N` answers with status N (same JSON body);
/// [`EchoBackend::set_fail_mode`] makes it answer 503
/// `{"backend": name, "error": "injected failure"}`. Every request is
/// counted ([`EchoBackend::requests`]), failed or not.
///
/// The listener is bound before `start` returns; dropping the backend closes
/// the listener and all open connections before `drop` returns.
pub struct EchoBackend {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EchoBackend {
    pub fn start(addr: SocketAddr, name: &str) -> EchoBackend {
        // A just-closed listener on `addr` (a dropped backend) can linger a
        // moment in a child process being spawned, until it execs: retry.
        let std_listener = wait_for(Duration::from_secs(2), &format!("echo backend {name} to bind {addr}"), || {
            std::net::TcpListener::bind(addr)
        });
        std_listener.set_nonblocking(true).expect("set_nonblocking");
        let addr = std_listener.local_addr().expect("local_addr");
        let state =
            Arc::new(State { name: name.to_string(), requests: AtomicU64::new(0), fail: Mutex::new(FailMode::Off) });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let task = rt().spawn(serve(std_listener, state.clone(), shutdown_rx));
        EchoBackend { addr, state, shutdown: Some(shutdown_tx), task: Some(task) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received so far (including failed ones).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn reset_requests(&self) {
        self.state.requests.store(0, Ordering::SeqCst);
    }

    pub fn set_fail_mode(&self, mode: FailMode) {
        *self.state.fail.lock().unwrap() = mode;
    }

    pub fn fail_mode(&self) -> FailMode {
        *self.state.fail.lock().unwrap()
    }

    /// Respond 503 to everything until [`EchoBackend::heal`].
    pub fn fail_all(&self) {
        self.set_fail_mode(FailMode::All);
    }

    /// Respond 503 to the next `k` requests.
    pub fn fail_first(&self, k: u64) {
        self.set_fail_mode(FailMode::FirstK(k));
    }

    pub fn heal(&self) {
        self.set_fail_mode(FailMode::Off);
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            // Wait until the listener and connections are closed, so the
            // address can be reused at once. Never panic in drop.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                block_on(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                })
            }));
        }
    }
}

async fn serve(std_listener: std::net::TcpListener, state: Arc<State>, mut shutdown: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| handle(req, state.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}

async fn handle(req: hyper::Request<Incoming>, state: Arc<State>) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let query = parts.uri.query().unwrap_or("");

    if let Some(ms) = query_param(query, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }

    let fail = {
        let mut mode = state.fail.lock().unwrap();
        match *mode {
            FailMode::Off => false,
            FailMode::All => true,
            FailMode::FirstK(0) => {
                *mode = FailMode::Off;
                false
            }
            FailMode::FirstK(k) => {
                *mode = if k == 1 { FailMode::Off } else { FailMode::FirstK(k - 1) };
                true
            }
        }
    };

    let (status, json) = if fail {
        (503, serde_json::json!({"backend": state.name, "error": "injected failure"}))
    } else {
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_string())
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert(value);
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let path = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".to_string());
        let status = query_param(query, "status")
            .and_then(|v| v.parse::<u16>().ok())
            .filter(|s| (100..1000).contains(s))
            .unwrap_or(200);
        (
            status,
            serde_json::json!({
                "backend": state.name,
                "method": parts.method.as_str(),
                "path": path,
                "host": host,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            }),
        )
    };

    let response = hyper::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-backend", state.name.as_str())
        .body(Full::new(Bytes::from(json.to_string())))
        .expect("valid response");
    Ok(response)
}
