//! The tonic edge, in process: a real gRPC server on loopback and the
//! generated ADS client.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Channel;

use super::{CDS, LDS, version, view};
use crate::ads::server::{CatchUp, CaughtUp};
use crate::ads::{AdsMetrics, AdsServer, MIN_REVISION_HEADER, ProxySubscription, SubscribeError, ViewSource};
use crate::resources::ProxyView;

const NODE_ID: &str = "sidecar~10.1.2.3~client-1.shop~shop.svc.cluster.local";
/// A bound on every wait, so a broken server fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(10);

/// Serves every proxy the same view, from a watch channel the test drives;
/// tells the test when a stream's registration is dropped, and how many
/// streams asked for its revisions.
struct TestSource {
    views: watch::Receiver<Arc<ProxyView>>,
    unregistered: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    revisions: watch::Receiver<i64>,
    asked: watch::Sender<usize>,
}

struct Registration(Option<oneshot::Sender<()>>);

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl ViewSource for TestSource {
    fn subscribe(&self, node: &Node) -> Result<ProxySubscription, SubscribeError> {
        if !node.id.starts_with("sidecar~") {
            return Err(SubscribeError::InvalidNode { node_id: node.id.clone(), reason: "not a sidecar".into() });
        }
        let unregistered = self.unregistered.lock().unwrap().take();
        Ok(ProxySubscription {
            proxy_id: node.id.clone(),
            views: self.views.clone(),
            _registration: Box::new(Registration(unregistered)),
        })
    }

    fn revisions(&self) -> Option<watch::Receiver<i64>> {
        self.asked.send_modify(|n| *n += 1);
        Some(self.revisions.clone())
    }
}

struct Harness {
    client: AggregatedDiscoveryServiceClient<Channel>,
    views: watch::Sender<Arc<ProxyView>>,
    metrics: Arc<AdsMetrics>,
    unregistered: oneshot::Receiver<()>,
    /// The source's revision, as the test drives it.
    revision: watch::Sender<i64>,
    /// How many streams asked for the source's revisions.
    asked: watch::Receiver<usize>,
}

async fn start(initial: Arc<ProxyView>) -> Harness {
    let (views, rx) = watch::channel(initial);
    let (unregistered_tx, unregistered) = oneshot::channel();
    let (revision, revisions) = watch::channel(0);
    let (asked_tx, asked) = watch::channel(0);
    let source = TestSource {
        views: rx,
        unregistered: std::sync::Mutex::new(Some(unregistered_tx)),
        revisions,
        asked: asked_tx,
    };
    let server = AdsServer::new(Arc::new(source));
    let metrics = server.metrics();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")).await.unwrap();
    Harness { client, views, metrics, unregistered, revision, asked }
}

fn node() -> Option<Node> {
    Some(Node { id: NODE_ID.into(), ..Default::default() })
}

async fn next<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("a response in time")
        .expect("stream open")
        .expect("not an error")
}

#[tokio::test]
async fn delta_connect_ack_and_receive_only_the_change() {
    let mut h = start(view(1).with(CDS, "c1", "cluster one").with(CDS, "c2", "cluster two").build()).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest { node: node(), type_url: CDS.type_url().into(), ..Default::default() })
        .await
        .unwrap();
    let mut responses = h.client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();

    let first: DeltaDiscoveryResponse = next(&mut responses).await;
    let names: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["c1", "c2"]);
    assert_eq!(first.system_version_info, "1");
    assert_eq!(h.metrics.connected_proxies(), 1);

    let ack = DeltaDiscoveryRequest {
        type_url: CDS.type_url().into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    };
    tx.send(ack).await.unwrap();
    h.views.send(view(2).with(CDS, "c1", "cluster one").with(CDS, "c2", "cluster two v2").build()).unwrap();
    let second = next(&mut responses).await;
    let sent: Vec<_> = second.resources.iter().map(|r| (r.name.as_str(), r.version.clone())).collect();
    assert_eq!(sent, [("c2", version("cluster two v2"))]);
    assert!(second.removed_resources.is_empty());
    assert_eq!(second.system_version_info, "2");

    // A NACK is counted (and logged); the stream goes on.
    let nack = DeltaDiscoveryRequest {
        type_url: CDS.type_url().into(),
        response_nonce: second.nonce.clone(),
        error_detail: Some(RpcStatus { code: 3, message: "bad cluster".into(), details: vec![] }),
        ..Default::default()
    };
    tx.send(nack).await.unwrap();
    h.views.send(view(3).with(CDS, "c1", "cluster one v3").with(CDS, "c2", "cluster two v2").build()).unwrap();
    let third = next(&mut responses).await;
    let sent: Vec<_> = third.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["c1"], "the rejected c2 is not resent");
    assert_eq!(h.metrics.rejects(), 1);
    assert_eq!(h.metrics.pushes(CDS), 3);

    // The proxy goes away: the stream ends and unregisters it.
    drop(tx);
    drop(responses);
    tokio::time::timeout(PATIENCE, h.unregistered).await.expect("unregistered in time").unwrap();
    assert_eq!(h.metrics.connected_proxies(), 0);
}

#[tokio::test]
async fn sotw_connect_ack_and_receive_the_new_set() {
    let mut h = start(view(1).with(LDS, "l1", "listener one").with(CDS, "c1", "cluster one").build()).await;
    let (tx, rx) = mpsc::channel(8);
    tx.send(DiscoveryRequest { node: node(), type_url: CDS.type_url().into(), ..Default::default() }).await.unwrap();
    let mut responses = h.client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let cds: DiscoveryResponse = next(&mut responses).await;
    assert_eq!(cds.resources.len(), 1);
    tx.send(DiscoveryRequest { type_url: LDS.type_url().into(), ..Default::default() }).await.unwrap();
    let lds = next(&mut responses).await;
    assert_eq!(lds.type_url, LDS.type_url());

    for ack in [&cds, &lds] {
        tx.send(DiscoveryRequest {
            type_url: ack.type_url.clone(),
            version_info: ack.version_info.clone(),
            response_nonce: ack.nonce.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    h.views
        .send(
            view(2)
                .with(LDS, "l1", "listener one")
                .with(CDS, "c1", "cluster one")
                .with(CDS, "c2", "cluster two")
                .build(),
        )
        .unwrap();
    let next_cds = next(&mut responses).await;
    assert_eq!(next_cds.type_url, CDS.type_url(), "listeners did not change");
    assert_eq!(next_cds.resources.len(), 2, "the full set");
    assert_ne!(next_cds.version_info, cds.version_info);
    assert_eq!(h.metrics.pushes(CDS), 2);
    assert_eq!(h.metrics.pushes(LDS), 1);
}

/// The response headers go out before the first request is read, so a
/// refusal is the stream's status: the first read fails with it.
#[tokio::test]
async fn a_first_request_without_node_is_refused() {
    let mut h = start(view(1).build()).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(DeltaDiscoveryRequest { type_url: CDS.type_url().into(), ..Default::default() }).await.unwrap();
    let mut stream = h.client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let (tx, rx) = mpsc::channel(1);
    let bad_node = Some(Node { id: "router~x".into(), ..Default::default() });
    tx.send(DiscoveryRequest { node: bad_node, type_url: CDS.type_url().into(), ..Default::default() }).await.unwrap();
    let mut stream = h.client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("TYPE~IP~POD"), "{}", status.message());
}

/// A caller gets the response headers while the first request has not even
/// been sent: nothing the shard does for a stream delays opening it.
#[tokio::test]
async fn a_stream_opens_before_its_first_request() {
    let mut h = start(view(1).with(CDS, "c1", "cluster one").build()).await;
    let (tx, rx) = mpsc::channel(1);
    let call = h.client.delta_aggregated_resources(ReceiverStream::new(rx));
    let mut stream =
        tokio::time::timeout(PATIENCE, call).await.expect("response headers before any request").unwrap().into_inner();
    tx.send(DeltaDiscoveryRequest { node: node(), type_url: CDS.type_url().into(), ..Default::default() })
        .await
        .unwrap();
    let first = next(&mut stream).await;
    assert_eq!(first.type_url, CDS.type_url());
    assert_eq!(first.resources.len(), 1);
}

/// A stream opened for a re-homed proxy: the frontend names the revision the
/// proxy was last sent.
fn min_revision_request<T>(requests: ReceiverStream<T>, revision: &str) -> tonic::Request<ReceiverStream<T>> {
    let mut request = tonic::Request::new(requests);
    request.metadata_mut().insert(MIN_REVISION_HEADER, revision.parse().unwrap());
    request
}

#[tokio::test]
async fn a_stream_naming_a_newer_revision_is_answered_once_the_source_reaches_it() {
    // The source is at revision 3 with a view that lacks c2, which the
    // proxy's previous shard sent it at revision 5.
    let mut h = start(view(3).with(CDS, "c1", "cluster one").build()).await;
    h.revision.send_replace(3);
    let (tx, rx) = mpsc::channel(8);
    tx.send(DeltaDiscoveryRequest {
        node: node(),
        type_url: CDS.type_url().into(),
        initial_resource_versions: [("c1", "cluster one"), ("c2", "cluster two")]
            .into_iter()
            .map(|(n, body)| (n.to_string(), version(body)))
            .collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    // The call returns at once: the wait is the stream's, not the caller's.
    let mut responses = h
        .client
        .delta_aggregated_resources(min_revision_request(ReceiverStream::new(rx), "5"))
        .await
        .unwrap()
        .into_inner();
    // The stream is waiting: it asked for the revisions, and 3 < 5.
    tokio::time::timeout(PATIENCE, h.asked.wait_for(|n| *n == 1)).await.expect("the stream asks").unwrap();
    assert_eq!(h.metrics.connected_proxies(), 1);

    // The shard catches up: its view now has c2 (at the version the proxy
    // holds) and a new c3. Answered from this view, the proxy loses nothing.
    h.views.send_replace(
        view(5).with(CDS, "c1", "cluster one").with(CDS, "c2", "cluster two").with(CDS, "c3", "cluster three").build(),
    );
    h.revision.send_replace(4);
    h.revision.send_replace(5);
    let first: DeltaDiscoveryResponse = next(&mut responses).await;
    let sent: Vec<_> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, ["c3"], "only what the proxy lacks");
    assert!(first.removed_resources.is_empty(), "nothing withdrawn: {:?}", first.removed_resources);
    assert_eq!(first.system_version_info, "5");
}

#[tokio::test]
async fn a_stream_without_the_header_or_naming_a_reached_revision_does_not_wait() {
    let mut h = start(view(3).with(CDS, "c1", "cluster one").build()).await;
    h.revision.send_replace(3);
    for header in [None, Some("3"), Some("not-a-revision")] {
        let (tx, rx) = mpsc::channel(8);
        tx.send(DiscoveryRequest { node: node(), type_url: CDS.type_url().into(), ..Default::default() })
            .await
            .unwrap();
        let request = match header {
            Some(revision) => min_revision_request(ReceiverStream::new(rx), revision),
            None => tonic::Request::new(ReceiverStream::new(rx)),
        };
        let mut responses = h.client.stream_aggregated_resources(request).await.unwrap().into_inner();
        let cds: DiscoveryResponse = next(&mut responses).await;
        assert_eq!(cds.resources.len(), 1, "{header:?}");
    }
    assert_eq!(*h.asked.borrow(), 1, "only the stream naming a revision asked for the source's");
}

#[tokio::test(start_paused = true)]
async fn catching_up_is_bounded() {
    let (revision, revisions) = watch::channel(3);
    let timeout = Duration::from_secs(5);
    let catch_up = |min| CatchUp { min, revisions: revisions.clone(), timeout };

    assert_eq!(catch_up(3).wait().await, CaughtUp::Already);
    assert_eq!(catch_up(-1).wait().await, CaughtUp::Already);

    let started = tokio::time::Instant::now();
    assert_eq!(catch_up(10).wait().await, CaughtUp::TimedOut { current: 3 });
    assert_eq!(started.elapsed(), timeout);

    let waiting = tokio::spawn(catch_up(4).wait());
    tokio::task::yield_now().await;
    revision.send_replace(4);
    assert_eq!(waiting.await.unwrap(), CaughtUp::Waited);

    let waiting = tokio::spawn(catch_up(9).wait());
    drop(revision);
    assert_eq!(waiting.await.unwrap(), CaughtUp::SourceGone);
}
