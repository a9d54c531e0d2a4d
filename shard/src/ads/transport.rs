//! The gRPC routes of ADS, served by `meshplane_grpc::StreamingService`
//! instead of tonic's generated server and codec, so that a stream holds no
//! buffer between messages.
//!
//! ```text
//!  POST /envoy.service.discovery.v3.AggregatedDiscoveryService/{Delta,Stream}AggregatedResources
//!    request body ──▶ Requests (MessageReader): gRPC frames ─▶ prost decode ─▶ stream task (server.rs)
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

use http::HeaderMap;
use meshplane_grpc::{Started, StreamingMethods, StreamingService};
use tonic::body::Body;

use super::{AdsServer, DeltaStream, SotwStream};

pub(super) use meshplane_grpc::{Outbound, ResponseBody};

const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// The largest request accepted, as tonic's default: a reconnecting proxy's
/// first request lists every resource it holds (about 100 bytes each).
const MAX_REQUEST_BYTES: usize = 4 << 20;

/// The ADS gRPC service (Delta and State-of-the-World), for
/// `tonic::transport::Server::add_service`. Made by [`AdsServer::into_service`].
pub type AdsService = StreamingService<AdsServer>;

/// The proxy's requests: gRPC messages decoded from the request body.
pub(super) type Requests<M> = meshplane_grpc::MessageReader<M>;

impl StreamingMethods for AdsServer {
    const SERVICE: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

    fn start(&self, path: &str, headers: &HeaderMap, body: Body) -> Option<Started> {
        let (server, headers) = (self.clone(), headers.clone());
        match path {
            DELTA_PATH => Some(Box::pin(async move {
                Ok(server.start::<DeltaStream>(&headers, Requests::new(body, MAX_REQUEST_BYTES, "request")))
            })),
            SOTW_PATH => Some(Box::pin(async move {
                Ok(server.start::<SotwStream>(&headers, Requests::new(body, MAX_REQUEST_BYTES, "request")))
            })),
            _ => None,
        }
    }
}
