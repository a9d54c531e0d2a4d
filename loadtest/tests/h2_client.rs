//! The hand-rolled HTTP/2 client against tonic's (h2's) server: headers
//! (HPACK with Huffman), trailers, flow control over large responses, and
//! the Delta exchange of a simulated proxy, without a control plane.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use meshplane_loadtest::facts::XdsType;
use meshplane_loadtest::mesh::synthetic_proxies;
use meshplane_loadtest::proxy::Api;
use meshplane_loadtest::worker::{self, Command, Event, WorkerConfig};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Every printable ASCII character but `%` (which gRPC percent-encodes).
fn printable() -> String {
    (0x20u8..0x7f).filter(|&c| c != b'%').map(char::from).collect()
}

/// Refuses every stream with a message covering the Huffman table, or
/// (when `clusters` > 0) answers CDS with that many clusters in one response.
#[derive(Clone)]
struct FakeAds {
    clusters: usize,
    /// ACKs of the CDS response, across streams.
    acks: Arc<watch::Sender<usize>>,
}

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for FakeAds {
    type StreamAggregatedResourcesStream = Out<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Out<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("no SotW here"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if self.clusters == 0 {
            return Err(Status::invalid_argument(printable()));
        }
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| Status::cancelled("no request"))?;
        assert_eq!(first.type_url, XdsType::Cds.type_url());
        assert!(first.node.is_some_and(|n| n.id.starts_with("sidecar~")));
        let big = "x".repeat(1000);
        let resources = (0..self.clusters)
            .map(|i| {
                let c = Cluster { name: format!("c{i}"), alt_stat_name: big.clone(), ..Default::default() };
                Resource {
                    name: c.name.clone(),
                    version: "1".into(),
                    resource: Some(Any { type_url: XdsType::Cds.type_url().into(), value: c.encode_to_vec() }),
                    ..Default::default()
                }
            })
            .collect();
        let response = DeltaDiscoveryResponse {
            type_url: XdsType::Cds.type_url().into(),
            resources,
            nonce: "n1".into(),
            ..Default::default()
        };
        let acks = self.acks.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(Ok(response)).await;
            while let Some(Ok(req)) = inbound.next().await {
                if req.response_nonce == "n1" && req.error_detail.is_none() {
                    acks.send_modify(|n| *n += 1);
                }
            }
            drop(tx);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

async fn serve(ads: FakeAds) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(ads))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn config(xds: SocketAddr, proxies: usize, streams_per_conn: usize) -> WorkerConfig {
    WorkerConfig {
        xds: vec![xds],
        api: Api::Delta,
        streams_per_conn,
        connect_rate: 0.0,
        nack: None,
        nack_share: 0.0,
        decode_cache: true,
        spread_sources: false,
        first_conn: 0,
        proxies: synthetic_proxies(proxies),
    }
}

/// Run a worker until `until` holds for its stats, then stop it; returns the final event.
async fn run_worker(config: WorkerConfig, until: impl Fn(&Event) -> bool) -> Event {
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (ev_tx, mut ev_rx) = mpsc::channel(64);
    tokio::spawn(worker::run(config, cmd_rx, ev_tx));
    let wait = async {
        while let Some(ev) = ev_rx.recv().await {
            if until(&ev) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait).await.expect("worker never reached the expected state");
    cmd_tx.send(Command::Stop).await.unwrap();
    loop {
        match ev_rx.recv().await.expect("worker ended without a final event") {
            ev @ Event::Final { .. } => return ev,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn grpc_errors_are_read_from_huffman_coded_trailers() {
    let addr = serve(FakeAds { clusters: 0, acks: Arc::new(watch::channel(0).0) }).await;
    let fin =
        run_worker(config(addr, 1, 1), |ev| matches!(ev, Event::Stats { stats } if stats.stream_errors > 0)).await;
    let Event::Final { errors, stats, .. } = fin else { unreachable!() };
    let expected = format!("grpc-status 3: {}", printable());
    assert!(errors.contains_key(&expected), "{errors:?}");
    assert_eq!(stats.connected, 0);
}

#[tokio::test]
async fn large_responses_flow_and_are_acked_on_multiplexed_streams() {
    let acks = Arc::new(watch::channel(0).0);
    let mut seen = acks.subscribe();
    // 300 clusters of ~1 KB: about 300 KB per response, beyond the default 64 KiB windows.
    let addr = serve(FakeAds { clusters: 300, acks: acks.clone() }).await;
    let fin = run_worker(config(addr, 6, 3), |ev| matches!(ev, Event::Stats { stats } if stats.acks >= 6)).await;
    let Event::Final { stats, held_resources, .. } = fin else { unreachable!() };
    assert_eq!(stats.connected, 6);
    assert_eq!(stats.resources, 6 * 300);
    assert_eq!(held_resources, 6 * 300);
    assert_eq!(stats.nacks, 0);
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|n| *n >= 6))
        .await
        .expect("the server did not see 6 ACKs")
        .unwrap();
}
