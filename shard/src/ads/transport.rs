//! The gRPC routes of ADS, written out by hand instead of tonic's generated
//! server and codec, so that a stream holds no buffer between messages.
//!
//! ```text
//!  POST /envoy.service.discovery.v3.AggregatedDiscoveryService/{Delta,Stream}AggregatedResources
//!    request body ──▶ Requests: gRPC frames ─▶ prost decode ─▶ stream task (server.rs)
//!    response body ◀── ResponseBody ◀── mpsc<Outbound> ◀── EncodedMessage chunks (response.rs)
//!                      data chunks as they are, then trailers (grpc-status)
//! ```
//!
//! Why not tonic's `Grpc` with a codec: its encoder copies every message into
//! a per-stream buffer that grows to the largest response and stays
//! allocated for the life of the stream, and its decoder does the same with
//! the largest request (about 65 KB and 16 KB per proxy on the standard
//! mesh). Here a response's chunks are handed to HTTP/2 as they are and
//! dropped once written; a request is buffered only while it is incomplete.
//! Everything else (HTTP/2, timeouts, routing by service name) is still
//! tonic's server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use http_body::Frame;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::body::Body;

use super::{AdsServer, DeltaStream, EncodedMessage, SotwStream};

/// The service, as gRPC names it.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The largest request accepted, as tonic's default: a reconnecting proxy's
/// first request lists every resource it holds (about 100 bytes each).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The ADS gRPC service (Delta and State-of-the-World), for
/// `tonic::transport::Server::add_service`. Made by [`AdsServer::into_service`].
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

impl tonic::server::NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl tonic::codegen::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            let started = match request.uri().path() {
                DELTA_PATH => serve::<DeltaStream>(&server, request).await,
                SOTW_PATH => serve::<SotwStream>(&server, request).await,
                other => Err(Status::unimplemented(format!(
                    "{other} is not an ADS method; this server serves {DELTA_PATH} and {SOTW_PATH}"
                ))),
            };
            Ok(started.unwrap_or_else(Status::into_http))
        })
    }
}

/// Start one stream: the response headers go out once the proxy is
/// subscribed; an error before that is a trailers-only response.
async fn serve<P: super::server::Protocol>(
    server: &AdsServer,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Status> {
    if let Some(encoding) = request.headers().get("grpc-encoding").filter(|e| e.as_bytes() != b"identity") {
        return Err(Status::unimplemented(format!(
            "request messages are compressed with {encoding:?}, which this server does not accept; \
             turn off gRPC compression for the xDS stream"
        )));
    }
    let (parts, body) = request.into_parts();
    let requests = Requests::new(body, MAX_REQUEST_BYTES, "request");
    let responses = server.start::<P>(&parts.headers, requests).await?;
    let mut response = http::Response::new(Body::new(responses));
    response.headers_mut().insert(CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
    Ok(response)
}

/// The proxy's requests: gRPC messages decoded from the request body.
pub(super) type Requests<M> = meshplane_grpc::MessageReader<M>;

/// What a stream's task sends its response body.
#[derive(Debug)]
pub(super) enum Outbound {
    Message(EncodedMessage),
    /// End the stream with this status (boxed: it is large, and every
    /// channel slot would be as large as it).
    Close(Box<Status>),
}

/// The response body: each message's chunks as data frames, then the
/// trailers: the status the stream was closed with, or OK when the task
/// ended without one.
pub(super) struct ResponseBody {
    rx: mpsc::Receiver<Outbound>,
    chunks: std::vec::IntoIter<Bytes>,
    ended: bool,
}

impl ResponseBody {
    pub(super) fn new(rx: mpsc::Receiver<Outbound>) -> Self {
        Self { rx, chunks: Vec::new().into_iter(), ended: false }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.chunks.next() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let status = match ready!(self.rx.poll_recv(cx)) {
                Some(Outbound::Message(message)) => {
                    self.chunks = message.chunks.into_iter();
                    continue;
                }
                Some(Outbound::Close(status)) => *status,
                None => Status::ok(""),
            };
            self.ended = true;
            let mut trailers = HeaderMap::new();
            // Only a message that is not a valid header value fails; say so
            // instead of dropping the status.
            if let Err(invalid) = status.add_header(&mut trailers) {
                invalid.add_header(&mut trailers).ok();
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.len() == 0
    }
}
