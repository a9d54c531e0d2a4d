//! The tonic edge: one task per ADS stream, a `select!` loop over the
//! proxy's requests, its view and the response channel, around a sans-IO
//! [`DeltaStream`] or [`SotwStream`].
//!
//! Each stream owns its task, its view receiver and a small bounded response
//! channel, so a slow or rejecting proxy only ever waits on itself.
//!
//! ```text
//!  start: response headers ─▶ spawn: first request ─▶ subscribe(node) ─▶ run_stream
//!  run_stream: x-meshplane-min-revision N?  wait until revisions() >= N (bounded) ─┐
//!              ┌───────────────────────────────────────────────────────────────────┘
//!              └▶ set_view(latest), handle first request, then the select! loop
//! ```
//!
//! Everything but the response headers happens in the stream's task: the
//! caller's call returns at once (a frontend bounds opening a stream by its
//! own timeout), the requests it sends meanwhile wait in the stream, and a
//! refusal (no node, snapshot not loaded) is the status in the trailers.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use http::HeaderMap;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::transport::{AdsService, Outbound, Requests, ResponseBody};
use super::{
    DeltaResponse, DeltaStream, EncodedMessage, MIN_REVISION_HEADER, ProtocolError, ProxySubscription, SotwResponse,
    SotwStream, StreamEvent, ViewSource,
};
use crate::resources::{ProxyView, ResourceType};

/// Responses buffered per stream before the stream's task waits for the
/// proxy (at most one per type is in flight anyway).
const RESPONSE_BUFFER: usize = 8;

/// How long a stream waits for the source to reach the revision its
/// [`MIN_REVISION_HEADER`] names before it is served from what the source has.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);

const NO_NODE: &str = "the first ADS request carries no node; set node.id (for Istio proxies \
                       TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local) in the bootstrap";

/// Counters a `/metrics` endpoint can read, named after istiod's.
#[derive(Debug, Default)]
pub struct AdsMetrics {
    connected: AtomicI64,
    pushes: [AtomicU64; ResourceType::ALL.len()],
    rejects: AtomicU64,
    acks: AtomicU64,
}

impl AdsMetrics {
    /// Responses proxies have ACKed.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// `pilot_xds`: proxies connected now.
    pub fn connected_proxies(&self) -> i64 {
        self.connected.load(Ordering::Relaxed)
    }

    /// `pilot_xds_pushes{type}`: responses sent of this type.
    pub fn pushes(&self, ty: ResourceType) -> u64 {
        self.pushes[ty as usize].load(Ordering::Relaxed)
    }

    /// `pilot_total_xds_rejects`: responses proxies rejected (NACKs).
    pub fn rejects(&self) -> u64 {
        self.rejects.load(Ordering::Relaxed)
    }

    fn connect(self: &Arc<Self>) -> ConnectedGuard {
        self.connected.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(self.clone())
    }
}

struct ConnectedGuard(Arc<AdsMetrics>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ADS gRPC service: Delta and State-of-the-World on one server.
///
/// ```no_run
/// # use std::sync::Arc;
/// # async fn serve(views: Arc<dyn meshplane_shard::ads::ViewSource>) -> Result<(), Box<dyn std::error::Error>> {
/// let ads = meshplane_shard::ads::AdsServer::new(views);
/// let metrics = ads.metrics(); // for /metrics
/// tonic::transport::Server::builder()
///     .add_service(ads.into_service())
///     .serve("0.0.0.0:15010".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AdsServer {
    source: Arc<dyn ViewSource>,
    metrics: Arc<AdsMetrics>,
    catch_up_timeout: Duration,
}

impl fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdsServer").field("metrics", &self.metrics).finish_non_exhaustive()
    }
}

impl AdsServer {
    pub fn new(source: Arc<dyn ViewSource>) -> Self {
        Self { source, metrics: Arc::default(), catch_up_timeout: CATCH_UP_TIMEOUT }
    }

    /// Bound the wait of a stream whose request names a revision the source
    /// has not reached yet (default 5 s); after it the stream is served from
    /// what the source has.
    pub fn with_catch_up_timeout(mut self, timeout: Duration) -> Self {
        self.catch_up_timeout = timeout;
        self
    }

    pub fn metrics(&self) -> Arc<AdsMetrics> {
        self.metrics.clone()
    }

    /// The gRPC service, for `tonic::transport::Server::add_service`.
    pub fn into_service(self) -> AdsService {
        meshplane_grpc::StreamingService(self)
    }

    /// Spawn the stream's task and return its response body at once: the
    /// response headers go out before the first request is read and the proxy
    /// subscribed, so a caller is never left waiting for them while this
    /// shard is busy (a frontend bounds opening a stream by its own timeout,
    /// and re-homing thousands of proxies at once made shards slow to answer).
    /// A stream refused after that (no node, not ready) ends with its status
    /// in the trailers, which gRPC clients read as the call's status.
    pub(super) fn start<P: Protocol>(&self, headers: &HeaderMap, inbound: Requests<P::Request>) -> ResponseBody {
        let min_revision = min_revision(headers);
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let server = self.clone();
        tokio::spawn(async move {
            match server.accept::<P>(min_revision, inbound).await {
                Ok((first, inbound, subscription, catch_up)) => {
                    let first = Box::new(first);
                    run_stream(P::default(), first, inbound, subscription, catch_up, tx, server.metrics).await;
                }
                Err(status) => {
                    let _ = tx.send(Outbound::Close(Box::new(status))).await;
                }
            }
        });
        ResponseBody::new(rx)
    }

    /// Read the first request and subscribe the proxy.
    async fn accept<P: Protocol>(
        &self,
        min_revision: Option<i64>,
        mut inbound: Requests<P::Request>,
    ) -> Result<(P::Request, Requests<P::Request>, ProxySubscription, Option<CatchUp>), Status> {
        let first =
            inbound.message().await?.ok_or_else(|| Status::cancelled("stream ended before its first request"))?;
        let node = P::node(&first).ok_or_else(|| Status::invalid_argument(NO_NODE))?;
        let subscription = self
            .source
            .subscribe(node)
            .inspect_err(|err| tracing::warn!(node = %node.id, "refusing {} ADS stream: {err}", P::NAME))?;
        tracing::info!(proxy = %subscription.proxy_id, min_revision, "{} ADS stream connected", P::NAME);
        let catch_up = min_revision
            .and_then(|min| Some(CatchUp { min, revisions: self.source.revisions()?, timeout: self.catch_up_timeout }));
        Ok((first, inbound, subscription, catch_up))
    }
}

/// What the stream loop needs from a protocol core.
pub(super) trait Protocol: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    const NAME: &'static str;
    fn node(req: &Self::Request) -> Option<&Node>;
    fn handle_request(&mut self, req: Self::Request) -> Result<(), ProtocolError>;
    fn set_view(&mut self, view: Arc<ProxyView>);
    fn take_responses(&mut self) -> Vec<Self::Response>;
    fn take_events(&mut self) -> Vec<StreamEvent>;
    fn encode(response: &Self::Response) -> EncodedMessage;
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaResponse;
    const NAME: &'static str = "delta";
    fn node(req: &Self::Request) -> Option<&Node> {
        req.node.as_ref()
    }
    fn handle_request(&mut self, req: Self::Request) -> Result<(), ProtocolError> {
        DeltaStream::handle_request(self, req)
    }
    fn set_view(&mut self, view: Arc<ProxyView>) {
        DeltaStream::set_view(self, view)
    }
    fn take_responses(&mut self) -> Vec<Self::Response> {
        DeltaStream::take_responses(self)
    }
    fn take_events(&mut self) -> Vec<StreamEvent> {
        DeltaStream::take_events(self)
    }
    fn encode(response: &Self::Response) -> EncodedMessage {
        response.encode()
    }
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = SotwResponse;
    const NAME: &'static str = "sotw";
    fn node(req: &Self::Request) -> Option<&Node> {
        req.node.as_ref()
    }
    fn handle_request(&mut self, req: Self::Request) -> Result<(), ProtocolError> {
        SotwStream::handle_request(self, req)
    }
    fn set_view(&mut self, view: Arc<ProxyView>) {
        SotwStream::set_view(self, view)
    }
    fn take_responses(&mut self) -> Vec<Self::Response> {
        SotwStream::take_responses(self)
    }
    fn take_events(&mut self) -> Vec<StreamEvent> {
        SotwStream::take_events(self)
    }
    fn encode(response: &Self::Response) -> EncodedMessage {
        response.encode()
    }
}

/// The revision a frontend asked for in [`MIN_REVISION_HEADER`]; a value
/// that is not a revision is logged and ignored.
fn min_revision(headers: &HeaderMap) -> Option<i64> {
    let value = headers.get(MIN_REVISION_HEADER)?;
    match value.to_str().ok().and_then(|v| v.parse::<i64>().ok()) {
        Some(revision) => Some(revision),
        None => {
            tracing::warn!(
                header = MIN_REVISION_HEADER,
                ?value,
                "ignoring a min-revision header that is not a revision"
            );
            None
        }
    }
}

/// A stream's wait for the source to reach the revision its caller asked for.
pub(super) struct CatchUp {
    pub(super) min: i64,
    pub(super) revisions: watch::Receiver<i64>,
    pub(super) timeout: Duration,
}

/// How a [`CatchUp`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CaughtUp {
    /// The source was there already.
    Already,
    /// The source reached the revision after a wait.
    Waited,
    /// The timeout passed first; the source is at `current`.
    TimedOut { current: i64 },
    /// The source stopped publishing revisions (shutting down).
    SourceGone,
}

impl CatchUp {
    pub(super) async fn wait(mut self) -> CaughtUp {
        let min = self.min;
        if *self.revisions.borrow_and_update() >= min {
            return CaughtUp::Already;
        }
        // Ok(reached?): whether the revision came before the sender went away.
        let waited =
            tokio::time::timeout(self.timeout, self.revisions.wait_for(|r| *r >= min)).await.map(|r| r.is_ok());
        match waited {
            Ok(true) => CaughtUp::Waited,
            Ok(false) => CaughtUp::SourceGone,
            Err(_) => CaughtUp::TimedOut { current: *self.revisions.borrow() },
        }
    }
}

async fn run_stream<P: Protocol>(
    mut core: P,
    first: Box<P::Request>,
    mut inbound: Requests<P::Request>,
    subscription: ProxySubscription,
    catch_up: Option<CatchUp>,
    tx: mpsc::Sender<Outbound>,
    metrics: Arc<AdsMetrics>,
) {
    // The task's state is as large as everything it keeps across its awaits,
    // for as long as the proxy is connected: the first request is boxed and
    // requests are handled as soon as they are read (each is over 600
    // bytes), the catch-up wait is boxed (only re-homed streams wait), and
    // there is one place that sends a closing status.
    let ProxySubscription { proxy_id, mut views, _registration: registration } = subscription;
    let connected = metrics.connect();
    if let Some(catch_up) = catch_up
        && !Box::pin(wait_for_catch_up::<P>(catch_up, &tx, &proxy_id)).await
    {
        return;
    }
    core.set_view(views.borrow_and_update().clone());
    let mut close = handle(&mut core, *first, &proxy_id);
    while close.is_none() {
        if !flush(&mut core, &tx, &proxy_id, &metrics).await {
            break;
        }
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(req)) => close = handle(&mut core, req, &proxy_id),
                Err(status) => {
                    tracing::debug!(proxy = %proxy_id, "ADS stream error: {status}");
                    break;
                }
                Ok(None) => break,
            },
            changed = views.changed() => match changed {
                Ok(()) => {
                    let view = views.borrow_and_update().clone();
                    core.set_view(view);
                }
                Err(_) => close = Some(Status::unavailable("this shard stopped serving the proxy; reconnect")),
            },
            () = tx.closed() => break,
        }
    }
    if let Some(status) = close {
        let _ = tx.send(Outbound::Close(Box::new(status))).await;
    }
    tracing::info!(proxy = %proxy_id, "{} ADS stream closed", P::NAME);
    drop(connected);
    drop(registration);
}

/// Hand a request to the core; the status to close the stream with if the
/// protocol cannot accept it.
fn handle<P: Protocol>(core: &mut P, request: P::Request, proxy_id: &str) -> Option<Status> {
    let err = core.handle_request(request).err()?;
    tracing::warn!(proxy = %proxy_id, "closing ADS stream: {err}");
    Some(Status::invalid_argument(err.to_string()))
}

/// Wait (bounded) until the source reaches the revision the stream asked
/// for; false if the proxy went away meanwhile.
async fn wait_for_catch_up<P: Protocol>(catch_up: CatchUp, tx: &mpsc::Sender<Outbound>, proxy_id: &str) -> bool {
    let (min, timeout) = (catch_up.min, catch_up.timeout);
    let started = tokio::time::Instant::now();
    tokio::select! {
        outcome = catch_up.wait() => match outcome {
            CaughtUp::Already => {}
            CaughtUp::Waited => tracing::debug!(proxy = %proxy_id, min_revision = min, waited = ?started.elapsed(),
                "the snapshot caught up with the revision the proxy was last sent"),
            CaughtUp::TimedOut { current } => tracing::warn!(proxy = %proxy_id, min_revision = min,
                current_revision = current, ?timeout,
                "the snapshot did not reach the revision the proxy was last sent in time; serving it from \
                 an older snapshot (it may see resources withdrawn and re-added): is this shard's store \
                 watch behind, or is the store written to outside /meshplane/v1/?"),
            CaughtUp::SourceGone => {}
        },
        () = tx.closed() => {
            tracing::info!(proxy = %proxy_id, "{} ADS stream closed while catching up", P::NAME);
            return false;
        }
    }
    true
}

/// Log and count events, then send responses; false once the proxy is gone.
async fn flush<P: Protocol>(core: &mut P, tx: &mpsc::Sender<Outbound>, proxy_id: &str, metrics: &AdsMetrics) -> bool {
    for event in core.take_events() {
        match event {
            StreamEvent::Ack { ty, nonce } => {
                metrics.acks.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(proxy = %proxy_id, %ty, %nonce, "ACK")
            }
            StreamEvent::Nack { ty, nonce, names, code, message } => {
                metrics.rejects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    proxy = %proxy_id, %ty, %nonce, code, resources = %NameList(&names),
                    "proxy rejected config (NACK): {message}"
                );
            }
            StreamEvent::StaleNonce { ty, nonce, nack_message: Some(message) } => {
                metrics.rejects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    proxy = %proxy_id, %ty, %nonce,
                    "proxy rejected a superseded response (NACK): {message}"
                );
            }
            StreamEvent::StaleNonce { ty, nonce, nack_message: None } => {
                tracing::debug!(proxy = %proxy_id, %ty, %nonce, "stale nonce")
            }
            StreamEvent::UnknownType { type_url } => {
                tracing::debug!(proxy = %proxy_id, %type_url, "ignoring request for unserved type")
            }
            StreamEvent::Pushed { ty, nonce, resources, removed } => {
                metrics.pushes[ty as usize].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(proxy = %proxy_id, %ty, %nonce, resources, removed, "push");
            }
        }
    }
    for response in core.take_responses() {
        if tx.send(Outbound::Message(P::encode(&response))).await.is_err() {
            return false;
        }
    }
    true
}

/// Up to ten names, then a count.
struct NameList<'a>(&'a [Arc<str>]);

impl fmt::Display for NameList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        for (i, name) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        if self.0.len() > SHOWN {
            write!(f, " (+{} more)", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}
