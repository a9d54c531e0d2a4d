//! # The relay: one proxy's ADS stream, forwarded to the shard that owns it
//!
//! ```text
//!            proxy                     frontend                              shard (owner)
//!  requests ───────▶ on_proxy_request ──▶ [DeltaRelay | SotwRelay] ──▶ forward ────▶ AdsServer
//!                                     soft state per type:                       │
//!  responses ◀────── nonce "E.n" ◀── on_upstream_response ◀──────────────────────────── nonce "n"
//!                                     │
//!   membership change / upstream failure:
//!     connect() ─▶ epoch E+1, replay requests (subscriptions + ACKed versions) ──▶ new owner
//! ```
//!
//! The protocol cores ([`DeltaRelay`], [`SotwRelay`]) are sans-IO: they turn
//! proxy requests into upstream requests, upstream responses into proxy
//! responses, and produce the replay that opens a stream to a new owner.
//! `server.rs` is the async edge: picking the owner, one HTTP/2 connection
//! per shard, and the `select!` loop of each stream.
//!
//! ## Soft state (nothing durable)
//! - **Delta**, per type: the subscription (wildcard flag and names), and the
//!   versions the proxy has ACKed. Versions are learned from the responses
//!   that pass through and recorded only when the proxy ACKs them; a NACKed
//!   response's versions are never recorded. Names the proxy unsubscribes
//!   (outside a wildcard) are forgotten, as the proxy forgets them.
//! - **SotW**, per type: the last request (its names and `version_info`,
//!   the version the proxy last accepted; a NACK carries the previous one).
//!
//! ## Re-homing
//! A new upstream stream starts a new *epoch*. Its first requests are a
//! replay of the soft state, one per type in push order (CDS, EDS, LDS, RDS,
//! SDS, then any other type), the node on the first:
//! - Delta: the subscription, with `initial_resource_versions` = the ACKed
//!   versions. Versions are content hashes that every shard computes alike,
//!   so the new owner sends only what differs from what the proxy holds.
//! - SotW: the last request of each type, without its nonce. SotW cannot
//!   say what the client holds, so the new owner answers each type with its
//!   full set, which the proxy applies as a no-op when it is unchanged.
//!
//! The proxy's stream is never reset by a re-home: the relay keeps it open
//! while it reconnects upstream, and keeps it open (with the proxy keeping
//! its config) while no shard is available at all.
//!
//! ### The new owner catches up first
//! Shards follow the store each on their own, so the new owner's snapshot
//! may lag the old owner's by a debounce. Answering the replay from it would
//! withdraw what the proxy was just sent and re-add it moments later: a
//! traffic gap. Every upstream stream therefore opens with the gRPC metadata
//! `x-meshplane-min-revision: N` ([`MIN_REVISION_HEADER`]; first connects
//! too, harmlessly), and the shard handles the replay only once its views reflect every store change
//! up to N (bounded, 5 s by default; then it serves what it has and logs a
//! warning naming the proxy and both revisions).
//! - Delta: N is the highest `system_version_info` (a shard's view revision)
//!   of any response relayed to the proxy, in any epoch, ACKed or not;
//!   values that are not numbers are ignored. A proxy that came holding
//!   config (`initial_resource_versions`: a reconnect from elsewhere) asks
//!   for at least the frontend's high-water mark below.
//! - SotW: a response carries no revision. `version_info` is a hash of the
//!   set's content, which every shard must compute alike (a revision in it
//!   would make identical sets differ between shards), and no other field
//!   fits (`control_plane.identifier` names the control plane instance).
//!   N is the frontend's high-water mark: the highest revision of any Delta
//!   response this frontend relayed, or of the membership it follows. Best
//!   effort: it covers any change a Delta proxy of this frontend was sent,
//!   and every change made before the latest membership change (for a drain
//!   or a join, the one that moves the proxy), but not a change only SotW
//!   proxies were sent since. The store's current revision would be a sure
//!   bound, but waiting for it would hold every SotW move for a rebuild,
//!   up to the debounce's 10 s under steady churn, whether or not the
//!   proxy's config changed.
//!
//! Every value sent is a revision every shard reaches: shards watch the
//! whole `/meshplane/v1/` keyspace (membership writes included), so a
//! shard with no mesh change since revision 40 still knows it is current
//! at 45, the revision a peer that listed the store then reports.
//!
//! ## Nonces
//! Each shard numbers its responses per stream, so the old and the new
//! upstream issue the same nonces ("1", "2", ...) for different responses,
//! and an ACK the proxy sends for the old upstream's response could be taken
//! by the new one for an ACK of its own. The relay therefore rewrites every
//! response nonce to `{epoch}.{upstream nonce}`, and on each request:
//! - a nonce of the current epoch, for a type that got a response in this
//!   epoch, is translated back and forwarded: ACKs and NACKs work as if the
//!   proxy were connected directly;
//! - any other nonce (an earlier epoch's, or one this relay never issued, as
//!   on a reconnect) is **stale**. It never reaches the new upstream, which
//!   never issued it. Delta: an ACK of an earlier epoch's response still
//!   records its versions in the soft state (the proxy does hold them, and a
//!   later re-home uses them); the request's subscription changes, which
//!   Envoy piggybacks on ACKs, are forwarded without the nonce and error
//!   (a Delta server applies subscription changes of nonce-less requests);
//!   a request with nothing left is dropped. SotW: the request updates the
//!   soft state and is dropped, as a SotW server drops stale requests; the
//!   proxy repeats its whole subscription when it answers the new owner's
//!   response to the replay.
//! - A stale NACK is logged and counted, and not forwarded: the new owner
//!   was told only what the proxy ACKed, so it may send the rejected content
//!   once more and receive a NACK of its own.
//!
//! ## Moving when settled
//! On a membership change the old owner is still alive, so the edge waits
//! (a bounded grace) until no response of the current epoch awaits the
//! proxy's ACK before switching: then the replay names exactly what the
//! proxy holds and the new owner sends nothing the proxy already has. When
//! the upstream fails there is nothing to wait for: responses still awaiting
//! an ACK are then not in the replay, and the new owner may send them again
//! (same versions, which Envoy applies as no-ops).

use envoy_types::pb::envoy::config::core::v3::Node;

mod delta;
mod intern;
mod rehome;
mod server;
mod sotw;

pub use delta::DeltaRelay;
pub use rehome::{HistogramSnapshot, REHOME_BUCKETS, RehomeReason, Rehomed};
pub use server::{RELAY_CONNECTION_WINDOW, RELAY_STREAM_WINDOW, RelayConfig, RelayMetrics, RelayServer};
pub use sotw::SotwRelay;

#[cfg(test)]
mod tests;

/// A request the relay cannot handle; the proxy's stream is closed with
/// `INVALID_ARGUMENT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error(
        "request has no type_url; ADS needs it on every request \
         (is the client configured for aggregated, not per-type, xDS?)"
    )]
    MissingTypeUrl,
    #[error(
        "the first ADS request carries no node id; set node.id (for Istio proxies \
         TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local) in the bootstrap"
    )]
    MissingNode,
}

/// Something that happened on a relayed stream, for the edge to log and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The proxy ACKed a response of an earlier upstream (or a nonce this
    /// relay never issued); not forwarded.
    StaleAck { type_url: String, nonce: String },
    /// The proxy NACKed a response of an earlier upstream; not forwarded.
    StaleNack { type_url: String, nonce: String, message: String },
}

/// The type URLs in make-before-break push order; others sort after them.
const PUSH_ORDER: [&str; 5] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
];

/// A type URL, ordered for replay: push order, then by URL.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TypeKey(usize, String);

impl TypeKey {
    fn new(type_url: &str) -> TypeKey {
        let rank = PUSH_ORDER.iter().position(|t| *t == type_url).unwrap_or(PUSH_ORDER.len());
        TypeKey(rank, type_url.to_string())
    }

    fn url(&self) -> &str {
        &self.1
    }

    /// One of the types meshplane serves (the others a shard ignores).
    fn known(&self) -> bool {
        self.0 < PUSH_ORDER.len()
    }

    /// Whether an empty first subscription means "everything" (CDS, LDS).
    fn wildcard_by_default(&self) -> bool {
        self.0 == 0 || self.0 == 2
    }
}

/// The gRPC metadata key of the stream opened to a shard: the store
/// revision the shard must reflect before it answers the replay. The shard
/// side reads it as `meshplane_shard::ads::MIN_REVISION_HEADER`.
pub const MIN_REVISION_HEADER: &str = "x-meshplane-min-revision";

/// The store revision a shard's Delta response was built from
/// (`system_version_info`); `None` for anything that is not one.
fn parse_revision(system_version_info: &str) -> Option<i64> {
    if system_version_info.is_empty() || !system_version_info.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    system_version_info.parse().ok()
}

/// The nonce the proxy sees for an upstream nonce.
fn relay_nonce(epoch: u64, upstream: &str) -> String {
    format!("{epoch}.{upstream}")
}

/// The epoch and upstream nonce of a nonce this relay issued.
fn parse_nonce(nonce: &str) -> Option<(u64, &str)> {
    let (epoch, upstream) = nonce.split_once('.')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch.parse().ok()?, upstream))
}

/// The id of the proxy a first request names.
fn node_id(node: Option<&Node>) -> Result<String, RelayError> {
    match node {
        Some(node) if !node.id.is_empty() => Ok(node.id.clone()),
        _ => Err(RelayError::MissingNode),
    }
}
