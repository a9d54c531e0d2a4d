//! The async edge of the relay: the ADS service the proxies connect to
//! (`meshplane_grpc::StreamingService`, on tonic's server), one task per
//! relayed stream, and one HTTP/2 connection per shard, on which each
//! upstream stream is opened by hand (`call_upstream`).
//!
//! ```text
//!  proxy ──▶ RelayServer::start: first request ─▶ DeltaRelay | SotwRelay ─▶ spawn run_stream
//!
//!  run_stream: loop {
//!      no upstream?      owner = ring(membership) minus suspects ─▶ open: replay, then call
//!                        with x-meshplane-min-revision = core.min_revision(max(revision_seen, membership))
//!      select! {
//!        proxy request   ─▶ core.on_proxy_request ─▶ upstream requests (mpsc ─▶ HTTP/2 stream)
//!        upstream resp   ─▶ core.on_upstream_response ─▶ proxy; revision_seen := max(core.revision())
//!        upstream ends   ─▶ suspect the shard, re-home now (the proxy's stream stays open)
//!        membership      ─▶ owner changed? move once settled (bounded by settle_grace)
//!      }
//!  }
//!
//!  ShardChannels: shard id ─▶ one lazily connected tonic Channel (one HTTP/2
//!  connection, every relayed stream to that shard multiplexed on it)
//! ```
//!
//! **Suspects.** A shard whose stream failed or could not be opened is
//! suspected for [`RelayConfig::suspect_for`] (or until it registers again):
//! owners are chosen as if it had left. A killed shard stays in membership
//! until its lease expires; suspicion moves its proxies at once, and, by the
//! rendezvous property, to the same shards membership will pick once the
//! lease is gone, so they do not move twice. When every shard is suspect the
//! suspicion is ignored and the owner is retried with backoff.
//!
//! **Status codes.** An upstream status that is about the proxy itself
//! (invalid node, unknown workload, auth) ends the proxy's stream with that
//! status, as a directly connected shard would. Anything else (unavailable,
//! cancelled, transport errors, a stream the shard ended) re-homes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use meshplane_store::Revision;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use meshplane_grpc::{
    EncodedMessage, MessageReader, Outbound, ResponseBody, Started, StreamingMethods, StreamingService,
};
use tonic::codegen::Service;

use super::rehome::RehomeStats;
use super::{DeltaRelay, MIN_REVISION_HEADER, RelayError, RelayEvent, SotwRelay};
use super::{HistogramSnapshot, RehomeReason, Rehomed};
use crate::membership::{Membership, ShardEntry};

/// Responses buffered per stream toward the proxy (encoded, a few words
/// each).
///
/// The request channel toward the shard carries boxed messages: a tokio
/// channel allocates its slots 32 at a time, so a channel of 624-byte
/// requests cost 20 KB per stream for as long as the proxy stays connected.
const RESPONSE_BUFFER: usize = 8;
/// Requests buffered per stream toward the shard (a replay is one per type).
const REQUEST_BUFFER: usize = 16;
/// Largest message accepted from proxies and shards: a full CDS or a
/// reconnect's `initial_resource_versions` in a large mesh is many MiB.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Tuning of a [`RelayServer`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Bound on opening a stream to a shard (TCP connect and the shard's
    /// answer to the replay's first request).
    pub connect_timeout: Duration,
    /// How long a planned move (membership change) waits for the proxy to
    /// answer the responses in flight, so the replay is exact.
    pub settle_grace: Duration,
    /// How long a shard whose stream failed is treated as gone (a killed
    /// shard's lease expires within its TTL, 5 s by default).
    pub suspect_for: Duration,
    /// Backoff between attempts to open a stream when no shard answers.
    pub retry_min: Duration,
    pub retry_max: Duration,
}

/// HTTP/2 flow-control windows of the multiplexed frontend-to-shard
/// connections (the shard server uses the same).
pub const RELAY_CONNECTION_WINDOW: u32 = 32 << 20;
pub const RELAY_STREAM_WINDOW: u32 = 1 << 20;

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            connect_timeout: Duration::from_secs(5),
            settle_grace: Duration::from_secs(2),
            suspect_for: Duration::from_secs(10),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
        }
    }
}

/// Counters a `/metrics` endpoint can read.
#[derive(Debug, Default)]
pub struct RelayMetrics {
    streams: AtomicI64,
    streams_total: AtomicU64,
    rehomes_membership: AtomicU64,
    rehomes_failure: AtomicU64,
    upstream_errors: AtomicU64,
    stale_acks: AtomicU64,
    stale_nacks: AtomicU64,
    rehome: RehomeStats,
    relayed_resources: AtomicU64,
    relayed_bytes: AtomicU64,
}

impl RelayMetrics {
    /// Proxy streams relayed now.
    pub fn streams(&self) -> i64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// Proxy streams accepted since start.
    pub fn streams_total(&self) -> u64 {
        self.streams_total.load(Ordering::Relaxed)
    }

    /// Streams moved to another shard because membership changed
    /// (a shard joined, left or started draining).
    pub fn rehomes_membership(&self) -> u64 {
        self.rehomes_membership.load(Ordering::Relaxed)
    }

    /// Streams moved because their upstream stream failed.
    pub fn rehomes_failure(&self) -> u64 {
        self.rehomes_failure.load(Ordering::Relaxed)
    }

    /// Upstream streams that failed or could not be opened.
    pub fn upstream_errors(&self) -> u64 {
        self.upstream_errors.load(Ordering::Relaxed)
    }

    /// ACKs of an earlier upstream's responses, absorbed by the relay.
    pub fn stale_acks(&self) -> u64 {
        self.stale_acks.load(Ordering::Relaxed)
    }

    /// NACKs of an earlier upstream's responses, absorbed by the relay.
    pub fn stale_nacks(&self) -> u64 {
        self.stale_nacks.load(Ordering::Relaxed)
    }

    /// Completed re-homes: seconds from the decision to move until the
    /// proxy converged on the new owner.
    pub fn rehome_durations(&self, reason: RehomeReason) -> HistogramSnapshot {
        self.rehome.durations(reason)
    }

    /// Resources relayed to proxies by their new owners during re-homes.
    pub fn rehome_resources(&self, reason: RehomeReason) -> u64 {
        self.rehome.resources(reason)
    }

    /// Encoded bytes of the responses relayed during re-homes.
    pub fn rehome_bytes(&self, reason: RehomeReason) -> u64 {
        self.rehome.bytes(reason)
    }

    /// Resources relayed to proxies, in every response.
    pub fn relayed_resources(&self) -> u64 {
        self.relayed_resources.load(Ordering::Relaxed)
    }

    /// Encoded bytes of every response relayed to proxies.
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed_bytes.load(Ordering::Relaxed)
    }
}

/// A relayed stream, for debug pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayedStream {
    pub node_id: String,
    pub protocol: &'static str,
    /// The shard it is relayed to now; `None` while re-homing.
    pub shard: Option<Arc<str>>,
    /// How many upstream streams it has had.
    pub epoch: u64,
}

#[derive(Debug)]
struct Suspect {
    until: Instant,
    create_revision: Revision,
}

struct Shared {
    membership: watch::Receiver<Arc<Membership>>,
    config: RelayConfig,
    metrics: Arc<RelayMetrics>,
    channels: Mutex<HashMap<Arc<str>, (String, Channel)>>,
    suspects: Mutex<HashMap<Arc<str>, Suspect>>,
    streams: Mutex<BTreeMap<u64, RelayedStream>>,
    next_stream: AtomicU64,
    /// The highest store revision of any response relayed (Delta streams
    /// only: SotW responses carry none).
    revision_seen: AtomicI64,
}

impl Shared {
    /// The shard that should serve `node_id` now.
    fn owner(&self, membership: &Membership, node_id: &str) -> Option<ShardEntry> {
        let now = Instant::now();
        let mut suspects = self.suspects.lock().expect("suspects lock poisoned");
        suspects.retain(|id, s| {
            s.until > now && membership.get(id).is_some_and(|e| e.create_revision == s.create_revision)
        });
        let ring = membership.ring();
        let id = ring.owner_excluding(node_id, |s| suspects.contains_key(s)).or_else(|| ring.owner(node_id))?;
        membership.get(id).cloned()
    }

    fn suspect(&self, shard: &ShardEntry) {
        let until = Instant::now() + self.config.suspect_for;
        self.suspects
            .lock()
            .expect("suspects lock poisoned")
            .insert(shard.record.id.as_str().into(), Suspect { until, create_revision: shard.create_revision });
    }

    /// The shared connection to a shard.
    fn channel(&self, shard: &ShardEntry, membership: &Membership) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().expect("channels lock poisoned");
        channels.retain(|id, (addr, _)| membership.get(id).is_some_and(|e| e.record.addr == *addr));
        if let Some((_, channel)) = channels.get(shard.record.id.as_str()) {
            return Ok(channel.clone());
        }
        let addr = &shard.record.addr;
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|e| {
            Status::unavailable(format!("shard {} registered an unusable addr {addr:?}: {e}", shard.record.id))
        })?;
        let channel = endpoint
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            // Thousands of streams share this connection, and each small
            // frame (an ACK, an empty answer) is charged against h2's budget
            // of half the connection window until read: with a 64 KiB window
            // a push to every stream closed the connection (GOAWAY
            // ENHANCE_YOUR_CALM) and every stream re-homed at once
            // (docs/benchmarks.md, "Re-homing", finding 1).
            .initial_connection_window_size(RELAY_CONNECTION_WINDOW)
            .initial_stream_window_size(RELAY_STREAM_WINDOW)
            .connect_lazy();
        channels.insert(shard.record.id.as_str().into(), (addr.clone(), channel.clone()));
        Ok(channel)
    }

    fn set_stream(&self, id: u64, shard: Option<Arc<str>>, epoch: u64) {
        if let Some(s) = self.streams.lock().expect("streams lock poisoned").get_mut(&id) {
            s.shard = shard;
            s.epoch = epoch;
        }
    }
}

/// The frontend's ADS service: Delta and State-of-the-World, relayed.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn serve(membership: tokio::sync::watch::Receiver<Arc<meshplane_frontend::membership::Membership>>)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// use meshplane_frontend::relay::{RelayConfig, RelayServer};
/// let relay = RelayServer::new(membership, RelayConfig::default());
/// tonic::transport::Server::builder()
///     .add_service(relay.into_service())
///     .serve("0.0.0.0:15010".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RelayServer {
    shared: Arc<Shared>,
}

impl fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayServer").field("metrics", &self.shared.metrics).finish_non_exhaustive()
    }
}

impl RelayServer {
    pub fn new(membership: watch::Receiver<Arc<Membership>>, config: RelayConfig) -> RelayServer {
        RelayServer {
            shared: Arc::new(Shared {
                membership,
                config,
                metrics: Arc::default(),
                channels: Mutex::default(),
                suspects: Mutex::default(),
                streams: Mutex::default(),
                next_stream: AtomicU64::new(1),
                revision_seen: AtomicI64::new(0),
            }),
        }
    }

    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.shared.metrics.clone()
    }

    /// The streams relayed now.
    pub fn streams(&self) -> Vec<RelayedStream> {
        self.shared.streams.lock().expect("streams lock poisoned").values().cloned().collect()
    }

    /// The ADS service toward the proxies, for
    /// `tonic::transport::Server::add_service`. Served by
    /// `meshplane_grpc::StreamingService` instead of tonic's generated
    /// server, whose codec kept per stream a buffer as large as the largest
    /// response (64 KB per relayed proxy on the standard mesh) and one as
    /// large as the largest request.
    pub fn into_service(self) -> StreamingService<Self> {
        StreamingService(self)
    }

    async fn start<C: RelayCore>(&self, mut inbound: MessageReader<C::Request>) -> Result<ResponseBody, Status> {
        let first =
            inbound.message().await?.ok_or_else(|| Status::cancelled("stream ended before its first request"))?;
        let core = C::new(first).map_err(|e| {
            tracing::warn!("refusing {} ADS stream: {e}", C::NAME);
            Status::invalid_argument(e.to_string())
        })?;
        let id = self.shared.next_stream.fetch_add(1, Ordering::Relaxed);
        self.shared.streams.lock().expect("streams lock poisoned").insert(
            id,
            RelayedStream { node_id: core.node_id().to_string(), protocol: C::NAME, shard: None, epoch: 0 },
        );
        tracing::info!(proxy = %core.node_id(), "{} ADS stream accepted for relaying", C::NAME);
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let stream = RelayStream { shared: self.shared.clone(), id, core, inbound, tx, upstream: None };
        tokio::spawn(stream.run());
        Ok(ResponseBody::new(rx))
    }
}

impl StreamingMethods for RelayServer {
    const SERVICE: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

    fn start(&self, path: &str, _headers: &http::HeaderMap, body: tonic::body::Body) -> Option<Started> {
        let server = self.clone();
        match path {
            <DeltaRelay as RelayCore>::PATH => Some(Box::pin(async move {
                server.start::<DeltaRelay>(MessageReader::new(body, MAX_MESSAGE_BYTES, "request")).await
            })),
            <SotwRelay as RelayCore>::PATH => Some(Box::pin(async move {
                server.start::<SotwRelay>(MessageReader::new(body, MAX_MESSAGE_BYTES, "request")).await
            })),
            _ => None,
        }
    }
}

/// The messages of a channel of boxed messages (see [`RESPONSE_BUFFER`]).
type Unboxed<T> = tokio_stream::adapters::Map<ReceiverStream<Box<T>>, fn(Box<T>) -> T>;

fn unboxed<T>(rx: mpsc::Receiver<Box<T>>) -> Unboxed<T> {
    ReceiverStream::new(rx).map(|message| *message)
}

/// Open the upstream stream: the replay and what follows as the request
/// body, the revision the shard must reflect before answering it as
/// metadata. Written out instead of tonic's generated client, whose decoder
/// keeps a buffer as large as the largest response for the life of the
/// stream (130 KB per relayed proxy on the standard mesh): the
/// [`MessageReader`] holds bytes only while a response is incomplete.
async fn call_upstream<C: RelayCore>(
    mut channel: Channel,
    requests: Unboxed<C::Request>,
    min_revision: i64,
) -> Result<MessageReader<C::Response>, Status> {
    let frames = requests.map(|request| Ok::<_, Status>(http_body::Frame::data(meshplane_grpc::frame(&request))));
    let request = http::Request::post(C::PATH)
        .header(http::header::CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE)
        .header(http::header::TE, "trailers")
        .header(MIN_REVISION_HEADER, min_revision)
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(frames)))
        .map_err(|e| Status::internal(format!("cannot build the upstream request: {e}")))?;
    std::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| Status::unavailable(format!("the shard connection is not ready: {e}")))?;
    let response = Service::call(&mut channel, request)
        .await
        .map_err(|e| Status::unavailable(format!("cannot open a stream to the shard: {e}")))?;
    // A trailers-only response (the shard refused the stream) carries its
    // status in the headers.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != Code::Ok
    {
        return Err(status);
    }
    if response.status() != http::StatusCode::OK {
        return Err(Status::unavailable(format!("the shard answered HTTP {}", response.status())));
    }
    Ok(MessageReader::new(response.into_body(), MAX_MESSAGE_BYTES, "response"))
}

/// What the stream loop needs from a relay core.
trait RelayCore: Sized + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Default + Send + 'static;
    const NAME: &'static str;
    /// The gRPC method the upstream stream calls.
    const PATH: &'static str;
    fn new(first: Self::Request) -> Result<Self, RelayError>;
    fn node_id(&self) -> &str;
    fn epoch(&self) -> u64;
    fn on_proxy_request(&mut self, req: Self::Request) -> Result<Option<Self::Request>, RelayError>;
    fn on_upstream_response(&mut self, resp: Self::Response) -> Self::Response;
    fn connect(&mut self) -> Vec<Self::Request>;
    fn disconnect(&mut self);
    fn settled(&self) -> bool;
    fn take_events(&mut self) -> Vec<RelayEvent>;
    fn begin_rehome(&mut self, reason: RehomeReason, now: std::time::Instant);
    fn cancel_rehome(&mut self);
    fn rehome_completed(&mut self, now: std::time::Instant) -> Option<Rehomed>;
    /// Resources in a response, and its encoded size.
    fn response_size(resp: &Self::Response) -> (usize, usize);
    /// The highest store revision the proxy has been sent (0: unknown).
    fn revision(&self) -> i64;
    fn min_revision(&self, frontend_seen: i64) -> i64;
}

impl RelayCore for DeltaRelay {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    const NAME: &'static str = "delta";
    const PATH: &'static str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    fn new(first: Self::Request) -> Result<Self, RelayError> {
        DeltaRelay::new(first)
    }
    fn node_id(&self) -> &str {
        DeltaRelay::node_id(self)
    }
    fn epoch(&self) -> u64 {
        DeltaRelay::epoch(self)
    }
    fn on_proxy_request(&mut self, req: Self::Request) -> Result<Option<Self::Request>, RelayError> {
        DeltaRelay::on_proxy_request(self, req)
    }
    fn on_upstream_response(&mut self, resp: Self::Response) -> Self::Response {
        DeltaRelay::on_upstream_response(self, resp)
    }
    fn connect(&mut self) -> Vec<Self::Request> {
        DeltaRelay::connect(self)
    }
    fn disconnect(&mut self) {
        DeltaRelay::disconnect(self)
    }
    fn settled(&self) -> bool {
        DeltaRelay::settled(self)
    }
    fn take_events(&mut self) -> Vec<RelayEvent> {
        DeltaRelay::take_events(self)
    }
    fn begin_rehome(&mut self, reason: RehomeReason, now: std::time::Instant) {
        DeltaRelay::begin_rehome(self, reason, now)
    }
    fn cancel_rehome(&mut self) {
        DeltaRelay::cancel_rehome(self)
    }
    fn rehome_completed(&mut self, now: std::time::Instant) -> Option<Rehomed> {
        DeltaRelay::rehome_completed(self, now)
    }
    fn response_size(resp: &Self::Response) -> (usize, usize) {
        (resp.resources.len(), prost::Message::encoded_len(resp))
    }
    fn revision(&self) -> i64 {
        DeltaRelay::revision(self)
    }
    fn min_revision(&self, frontend_seen: i64) -> i64 {
        DeltaRelay::min_revision(self, frontend_seen)
    }
}

impl RelayCore for SotwRelay {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    const NAME: &'static str = "sotw";
    const PATH: &'static str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
    fn new(first: Self::Request) -> Result<Self, RelayError> {
        SotwRelay::new(first)
    }
    fn node_id(&self) -> &str {
        SotwRelay::node_id(self)
    }
    fn epoch(&self) -> u64 {
        SotwRelay::epoch(self)
    }
    fn on_proxy_request(&mut self, req: Self::Request) -> Result<Option<Self::Request>, RelayError> {
        SotwRelay::on_proxy_request(self, req)
    }
    fn on_upstream_response(&mut self, resp: Self::Response) -> Self::Response {
        SotwRelay::on_upstream_response(self, resp)
    }
    fn connect(&mut self) -> Vec<Self::Request> {
        SotwRelay::connect(self)
    }
    fn disconnect(&mut self) {
        SotwRelay::disconnect(self)
    }
    fn settled(&self) -> bool {
        SotwRelay::settled(self)
    }
    fn take_events(&mut self) -> Vec<RelayEvent> {
        SotwRelay::take_events(self)
    }
    fn begin_rehome(&mut self, reason: RehomeReason, now: std::time::Instant) {
        SotwRelay::begin_rehome(self, reason, now)
    }
    fn cancel_rehome(&mut self) {
        SotwRelay::cancel_rehome(self)
    }
    fn rehome_completed(&mut self, now: std::time::Instant) -> Option<Rehomed> {
        SotwRelay::rehome_completed(self, now)
    }
    fn response_size(resp: &Self::Response) -> (usize, usize) {
        (resp.resources.len(), prost::Message::encoded_len(resp))
    }
    fn revision(&self) -> i64 {
        0
    }
    fn min_revision(&self, frontend_seen: i64) -> i64 {
        SotwRelay::min_revision(self, frontend_seen)
    }
}

/// The stream to the current owner.
struct Upstream<C: RelayCore> {
    shard: ShardEntry,
    requests: mpsc::Sender<Box<C::Request>>,
    responses: MessageReader<C::Response>,
}

/// Why the upstream stream is no more.
enum Lost {
    /// Re-home: the shard is gone or cannot serve now.
    Retry(String),
    /// End the proxy's stream with this status.
    Terminal(Status),
}

fn classify(status: Status) -> Lost {
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::Unimplemented => Lost::Terminal(status),
        _ => Lost::Retry(format!("{:?}: {}", status.code(), status.message())),
    }
}

struct RelayStream<C: RelayCore> {
    shared: Arc<Shared>,
    id: u64,
    core: C,
    inbound: MessageReader<C::Request>,
    tx: mpsc::Sender<Outbound>,
    upstream: Option<Upstream<C>>,
}

struct StreamGuard(Arc<Shared>, u64);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.metrics.streams.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut streams) = self.0.streams.lock() {
            streams.remove(&self.1);
        }
    }
}

impl<C: RelayCore> RelayStream<C> {
    async fn run(mut self) {
        let shared = self.shared.clone();
        shared.metrics.streams.fetch_add(1, Ordering::Relaxed);
        shared.metrics.streams_total.fetch_add(1, Ordering::Relaxed);
        let _guard = StreamGuard(shared.clone(), self.id);
        let config = shared.config.clone();
        let mut membership = shared.membership.clone();
        let mut membership_open = true;
        // When to try opening an upstream again (None: now).
        let mut retry_at: Option<Instant> = None;
        let mut backoff = config.retry_min;
        // A planned move waits for the proxy to settle, until this deadline.
        let mut move_by: Option<Instant> = None;

        loop {
            if let Some(deadline) = move_by
                && self.upstream.is_some()
                && (self.core.settled() || Instant::now() >= deadline)
            {
                move_by = None;
                let m = membership.borrow().clone();
                let owner = shared.owner(&m, self.core.node_id());
                let current = self.upstream.as_ref().map(|u| u.shard.record.id.clone());
                if owner.as_ref().map(|o| &o.record.id) != current.as_ref() {
                    tracing::info!(proxy = %self.core.node_id(), from = ?current,
                        to = ?owner.as_ref().map(|o| &o.record.id), "moving to the new owner shard");
                    shared.metrics.rehomes_membership.fetch_add(1, Ordering::Relaxed);
                    self.drop_upstream();
                } else {
                    self.core.cancel_rehome();
                }
            }
            if self.upstream.is_none() && retry_at.is_none_or(|t| Instant::now() >= t) {
                let m = membership.borrow().clone();
                match shared.owner(&m, self.core.node_id()) {
                    None => {
                        retry_at = None;
                        if !membership_open {
                            let _ = self
                                .tx
                                .send(Outbound::Close(Box::new(Status::unavailable("the frontend is shutting down"))))
                                .await;
                            break;
                        }
                        tracing::debug!(proxy = %self.core.node_id(), "no shard available; waiting for membership");
                    }
                    Some(owner) => match self.open(owner.clone(), &m).await {
                        Ok(()) => {
                            retry_at = None;
                            backoff = config.retry_min;
                        }
                        Err(Lost::Terminal(status)) => {
                            tracing::warn!(proxy = %self.core.node_id(), shard = %owner.record.id,
                                "shard refused the proxy: {status}");
                            let _ = self.tx.send(Outbound::Close(Box::new(status))).await;
                            break;
                        }
                        Err(Lost::Retry(why)) => {
                            shared.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                            shared.suspect(&owner);
                            tracing::warn!(proxy = %self.core.node_id(), shard = %owner.record.id,
                                retry_in = ?backoff, "cannot open a stream to the owner shard: {why}");
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(config.retry_max);
                        }
                    },
                }
            }
            self.flush_events();

            let wake = match (retry_at, move_by) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                msg = self.inbound.message() => match msg {
                    Ok(Some(req)) => match self.core.on_proxy_request(req) {
                        Ok(Some(forward)) => {
                            if let Some(up) = &self.upstream
                                && up.requests.send(Box::new(forward)).await.is_err()
                            {
                                self.upstream_lost(Lost::Retry("upstream request stream closed".into()));
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(proxy = %self.core.node_id(), "closing ADS stream: {e}");
                            let _ = self.tx.send(Outbound::Close(Box::new(Status::invalid_argument(e.to_string())))).await;
                            break;
                        }
                    },
                    Err(status) => {
                        tracing::debug!(proxy = %self.core.node_id(), "proxy stream error: {status}");
                        break;
                    }
                    Ok(None) => break,
                },
                resp = next_response(&mut self.upstream) => match resp {
                    Ok(Some(resp)) => {
                        let (resources, bytes) = C::response_size(&resp);
                        shared.metrics.relayed_resources.fetch_add(resources as u64, Ordering::Relaxed);
                        shared.metrics.relayed_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                        let resp = self.core.on_upstream_response(resp);
                        shared.revision_seen.fetch_max(self.core.revision(), Ordering::Relaxed);
                        if self.tx.send(Outbound::Message(EncodedMessage::of(&resp))).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => self.upstream_lost(Lost::Retry("the shard ended the stream".into())),
                    Err(status) => match classify(status) {
                        Lost::Terminal(status) => {
                            tracing::warn!(proxy = %self.core.node_id(), "shard ended the stream: {status}");
                            let _ = self.tx.send(Outbound::Close(Box::new(status))).await;
                            break;
                        }
                        retry => self.upstream_lost(retry),
                    },
                },
                changed = membership.changed(), if membership_open => {
                    if changed.is_err() {
                        membership_open = false;
                        continue;
                    }
                    if self.upstream.is_none() {
                        retry_at = None;
                    } else if move_by.is_none() {
                        let m = membership.borrow().clone();
                        let owner = shared.owner(&m, self.core.node_id());
                        let current = self.upstream.as_ref().map(|u| &u.shard.record.id);
                        if owner.as_ref().map(|o| &o.record.id) != current {
                            move_by = Some(Instant::now() + config.settle_grace);
                            self.core.begin_rehome(RehomeReason::Membership, std::time::Instant::now());
                        }
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {}
                () = self.tx.closed() => break,
            }
        }
        tracing::info!(proxy = %self.core.node_id(), "{} relayed stream closed", C::NAME);
    }

    /// Open a stream to `owner`: replay the soft state, then call.
    async fn open(&mut self, owner: ShardEntry, membership: &Membership) -> Result<(), Lost> {
        let channel = self.shared.channel(&owner, membership).map_err(classify)?;
        // Both are revisions every shard's store watch reaches.
        let frontend_seen = self.shared.revision_seen.load(Ordering::Relaxed).max(membership.revision);
        let min_revision = self.core.min_revision(frontend_seen);
        let replay = self.core.connect();
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER.max(replay.len()));
        for req in replay {
            tx.try_send(Box::new(req)).map_err(|_| Lost::Retry("replay does not fit the request buffer".into()))?;
        }
        let call = call_upstream::<C>(channel, unboxed(rx), min_revision);
        let result = match tokio::time::timeout(self.shared.config.connect_timeout, call).await {
            Ok(Ok(responses)) => Ok(responses),
            Ok(Err(status)) => Err(classify(status)),
            Err(_) => {
                Err(Lost::Retry(format!("no answer within {:?} (connect_timeout)", self.shared.config.connect_timeout)))
            }
        };
        match result {
            Ok(responses) => {
                tracing::info!(proxy = %self.core.node_id(), shard = %owner.record.id, addr = %owner.record.addr,
                    epoch = self.core.epoch(), min_revision, "relaying to shard");
                self.shared.set_stream(self.id, Some(owner.record.id.as_str().into()), self.core.epoch());
                self.upstream = Some(Upstream { shard: owner, requests: tx, responses });
                Ok(())
            }
            Err(lost) => {
                self.core.disconnect();
                Err(lost)
            }
        }
    }

    fn drop_upstream(&mut self) {
        self.upstream = None;
        self.core.disconnect();
        self.shared.set_stream(self.id, None, self.core.epoch());
    }

    fn upstream_lost(&mut self, lost: Lost) {
        let why = match lost {
            Lost::Retry(why) => why,
            Lost::Terminal(status) => status.to_string(),
        };
        if let Some(up) = &self.upstream {
            tracing::warn!(proxy = %self.core.node_id(), shard = %up.shard.record.id,
                "upstream stream lost ({why}); re-homing");
            self.shared.suspect(&up.shard);
        }
        self.shared.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.rehomes_failure.fetch_add(1, Ordering::Relaxed);
        self.core.begin_rehome(RehomeReason::UpstreamFailure, std::time::Instant::now());
        self.drop_upstream();
    }

    fn flush_events(&mut self) {
        if let Some(done) = self.core.rehome_completed(std::time::Instant::now()) {
            self.shared.metrics.rehome.record(&done);
            tracing::debug!(target: "meshplane_frontend::rehome", proxy = %self.core.node_id(),
                reason = done.reason.label(), duration_ms = done.duration.as_secs_f64() * 1e3,
                resources = done.resources, bytes = done.bytes, epoch = self.core.epoch(), "re-homed");
        }
        for event in self.core.take_events() {
            match event {
                RelayEvent::StaleAck { type_url, nonce } => {
                    self.shared.metrics.stale_acks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(proxy = %self.core.node_id(), %type_url, %nonce, "absorbed an ACK of an earlier upstream");
                }
                RelayEvent::StaleNack { type_url, nonce, message } => {
                    self.shared.metrics.stale_nacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(proxy = %self.core.node_id(), %type_url, %nonce,
                        "proxy rejected a response of an earlier upstream (NACK, not forwarded): {message}");
                }
            }
        }
    }
}

async fn next_response<C: RelayCore>(upstream: &mut Option<Upstream<C>>) -> Result<Option<C::Response>, Status> {
    match upstream {
        Some(up) => up.responses.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
