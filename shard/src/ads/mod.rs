//! # ADS: serving each proxy its view over Aggregated Discovery Service
//!
//! This module owns the xDS transport protocol between the shard and its
//! proxies: Envoy sidecars and gateways (Delta ADS, or State-of-the-World
//! with `api_type: GRPC`) and proxyless gRPC clients (State-of-the-World,
//! every type requested by name). It decides *which* resources a proxy is
//! sent and *when*; it never looks inside a resource's bytes, and it does not
//! know how views are built, where proxies come from, or how they are
//! authenticated. Those arrive through [`ViewSource`].
//!
//! ```text
//!  ViewSource::subscribe(node) ── watch<Arc<ProxyView>> ──┐
//!                                                          ▼
//!  proxy ── requests ──▶ server.rs: one task per stream, a select! loop
//!                          │ handle_request / set_view       ▲ take_responses
//!                          ▼                                  │ take_events
//!                        DeltaStream | SotwStream  (sans-IO, synchronous)
//!                          │
//!  proxy ◀── responses ── mpsc (bounded, per stream) ◀─┘     AdsMetrics (atomics)
//! ```
//!
//! The protocol cores ([`DeltaStream`], [`SotwStream`]) are plain state
//! machines: feed them requests and views, take the responses and events they
//! produce. All protocol cases are tested synchronously; the tonic edge
//! ([`AdsServer`]) is a thin loop around them.
//!
//! ## Protocol choices shared by both variants
//! - **One response in flight per type.** A type gets its next response only
//!   after the previous one was ACKed or NACKed (changes in the meantime are
//!   coalesced). A NACK therefore always names exactly the response it
//!   rejects, and a slow proxy accumulates no backlog. Envoy and gRPC ACK a
//!   response as soon as they have applied it (warming does not delay it).
//! - **Make before break.** Responses of one round are produced in
//!   [`ResourceType::ALL`] order (CDS, EDS, LDS, RDS, SDS). LDS/RDS changes
//!   wait while newer clusters are still queued behind an in-flight CDS
//!   response, and cluster removals wait until every LDS/RDS response is
//!   ACKed and the proxy's listeners and routes match the view, so no route
//!   points at a cluster the proxy no longer has (see `delta.rs` for the
//!   endpoint side). A proxy whose listeners stay NACKed therefore keeps its
//!   old clusters; that is the safe side.
//! - **EDS after a cluster update.** Envoy finishes warming an updated
//!   cluster only when it receives its `ClusterLoadAssignment` again, even if
//!   unchanged (Envoy's xDS docs, "Resource warming"). Every cluster sent is
//!   therefore followed by its endpoints, as istiod does.
//! - **Stale nonces** never count as an ACK or NACK (see each variant for what
//!   else happens to such a request); they are reported as
//!   [`StreamEvent::StaleNonce`].
//! - Unknown type URLs are reported ([`StreamEvent::UnknownType`]) and
//!   otherwise ignored: the proxy keeps the stream and its other types.
//!
//! ## Catching up before the first response
//! A frontend that re-homes a proxy says, in [`MIN_REVISION_HEADER`], the
//! highest store revision the proxy has been sent. This shard's snapshot may
//! lag the previous owner's by a debounce; answering the replay from it
//! would withdraw what the proxy was just sent and re-add it moments later.
//! So the stream is subscribed at once (the response headers go out, the
//! proxy's view follows every rebuild), but its first request is handled
//! only once [`ViewSource::revisions`] reaches that revision, or after
//! [`AdsServer::with_catch_up_timeout`] (5 s by default: then it is served
//! from what the shard has, with a warning naming the proxy and both
//! revisions).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;

use crate::resources::{ProxyView, ResourceType};

mod delta;
mod response;
mod server;
mod sotw;
mod transport;

pub use delta::DeltaStream;
pub use meshplane_grpc::EncodedMessage;
pub use response::{DeltaResponse, SotwResponse};
pub use server::{AdsMetrics, AdsServer};
pub use sotw::SotwStream;
pub use transport::AdsService;

#[cfg(test)]
mod tests;

/// The gRPC metadata key a frontend sets on the stream it opens to a shard:
/// the highest store revision the proxy has been sent (by any shard). The
/// shard holds the stream's first response until its views reflect that
/// revision (see [`ViewSource::revisions`]), so a re-homed proxy is never
/// answered from a snapshot older than what it already holds.
pub const MIN_REVISION_HEADER: &str = "x-meshplane-min-revision";

/// Where the ADS server gets each proxy's view.
pub trait ViewSource: Send + Sync + 'static {
    /// Called with the Node of the first request. Resolves the proxy and
    /// returns a subscription to its view.
    fn subscribe(&self, node: &Node) -> Result<ProxySubscription, SubscribeError>;

    /// The store revision the views reflect, as it advances: once it reads
    /// `r`, every store change up to `r` is in every view the source hands
    /// out (a view's own `revision` may be older: unchanged content keeps
    /// the revision it was first generated at). A stream whose request
    /// carries [`MIN_REVISION_HEADER`] waits for it (bounded) before its
    /// first response.
    ///
    /// `None`, the default: the source has no notion of revision, and
    /// streams never wait.
    fn revisions(&self) -> Option<tokio::sync::watch::Receiver<i64>> {
        None
    }
}

/// A live subscription to one proxy's view, held for the life of its stream.
pub struct ProxySubscription {
    /// The proxy's id, as used in logs (usually the Envoy node id).
    pub proxy_id: String,
    /// The proxy's current view; the stream sends whatever differs whenever
    /// it changes. Intermediate values may be skipped, never the latest.
    pub views: tokio::sync::watch::Receiver<Arc<ProxyView>>,
    /// Dropped when the stream ends (unregisters the proxy).
    pub _registration: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for ProxySubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxySubscription").field("proxy_id", &self.proxy_id).finish_non_exhaustive()
    }
}

/// Why a proxy could not be subscribed; mapped to a gRPC status at the edge.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The node (id or metadata) cannot be understood. `INVALID_ARGUMENT`.
    #[error(
        "invalid node {node_id:?}: {reason} (Istio proxies use node id \
         TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local with TYPE sidecar or router; \
         check the proxy's bootstrap)"
    )]
    InvalidNode { node_id: String, reason: String },
    /// The node is well formed but no workload matches it. `NOT_FOUND`.
    #[error("no workload matches proxy {proxy_id:?}: {reason}")]
    UnknownProxy { proxy_id: String, reason: String },
    /// The shard cannot serve it now (not ready, or not its owner);
    /// the proxy should retry, possibly elsewhere. `UNAVAILABLE`.
    #[error("cannot serve proxy {proxy_id:?} now: {reason}")]
    Unavailable { proxy_id: String, reason: String },
}

impl From<SubscribeError> for tonic::Status {
    fn from(err: SubscribeError) -> Self {
        let message = err.to_string();
        match err {
            SubscribeError::InvalidNode { .. } => tonic::Status::invalid_argument(message),
            SubscribeError::UnknownProxy { .. } => tonic::Status::not_found(message),
            SubscribeError::Unavailable { .. } => tonic::Status::unavailable(message),
        }
    }
}

/// A request the protocol cannot accept; the stream is closed with
/// `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error(
        "request has no type_url; ADS needs it on every request \
         (is the client configured for aggregated, not per-type, xDS?)"
    )]
    MissingTypeUrl,
}

/// Something that happened on a stream, for the edge to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The proxy accepted the response with this nonce.
    Ack { ty: ResourceType, nonce: String },
    /// The proxy rejected the response with this nonce. `names` are the
    /// resources (and removals) it carried; none of them is recorded as held,
    /// and the same versions are not sent again until their content changes.
    Nack { ty: ResourceType, nonce: String, names: Vec<Arc<str>>, code: i32, message: String },
    /// A request named a nonce that is not the latest response of its type.
    /// `nack_message` is set when it carried an `error_detail`.
    StaleNonce { ty: ResourceType, nonce: String, nack_message: Option<String> },
    /// A request for a type this server does not serve; ignored.
    UnknownType { type_url: String },
    /// A response was produced.
    Pushed { ty: ResourceType, nonce: String, resources: usize, removed: usize },
}

/// One optional value per resource type, stored inline: a stream's state
/// per type, without the 2 KB node a `BTreeMap` allocates for it.
#[derive(Debug)]
struct PerType<T>([Option<T>; ResourceType::ALL.len()]);

impl<T> Default for PerType<T> {
    fn default() -> Self {
        PerType(std::array::from_fn(|_| None))
    }
}

impl<T> PerType<T> {
    fn get(&self, ty: ResourceType) -> Option<&T> {
        self.0[ty as usize].as_ref()
    }

    fn get_mut(&mut self, ty: ResourceType) -> Option<&mut T> {
        self.0[ty as usize].as_mut()
    }

    fn insert(&mut self, ty: ResourceType, value: T) {
        self.0[ty as usize] = Some(value);
    }

    fn get_or_default(&mut self, ty: ResourceType) -> &mut T
    where
        T: Default,
    {
        self.0[ty as usize].get_or_insert_with(T::default)
    }
}

/// Per-stream response nonces: a counter, unique within the stream (a nonce
/// only ever pairs a request with a response of the same stream).
#[derive(Debug, Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}
