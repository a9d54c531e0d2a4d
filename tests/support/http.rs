//! A plain HTTP/1.1 client (hyper, one connection per request).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::HTTP_TIMEOUT;
use super::process::block_on;

/// A complete HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}); status {}, body: {}", self.status, self.text())
        })
    }

    /// The first value of header `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and panics if it could not be completed (connection
/// refused, timeout of [`HTTP_TIMEOUT`], ...). Any HTTP status is a success.
/// `host` becomes the Host header; `path` is the path and query.
pub fn http_request(addr: SocketAddr, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    try_http_request(addr, method, host, path, headers)
        .unwrap_or_else(|e| panic!("{method} http://{host}{path} via {addr}: {e}"))
}

/// Like [`http_request`] but returns transport errors instead of panicking
/// (for use inside [`super::wait_for`]).
pub fn try_http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Response, String> {
    try_http_request_with(addr, method, host, path, headers, Bytes::new(), HTTP_TIMEOUT)
}

/// `GET path` with `Host: addr`; panics on transport errors.
pub fn http_get(addr: SocketAddr, path: &str) -> Response {
    http_request(addr, "GET", &addr.to_string(), path, &[])
}

/// The general form: a request body and an overall timeout (connect, send,
/// and read the whole response).
pub fn try_http_request_with(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
    timeout: Duration,
) -> Result<Response, String> {
    let mut builder = http::Request::builder().method(method).uri(path).header(http::header::HOST, host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| format!("bad request: {e}"))?;
    block_on(async move {
        match tokio::time::timeout(timeout, send(addr, request)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    })
}

async fn send(addr: SocketAddr, request: http::Request<Full<Bytes>>) -> Result<Response, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| format!("send request to {addr}: {e}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("read response body from {addr}: {e}"))?.to_bytes();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
    }
    .await;
    driver.abort();
    result
}
