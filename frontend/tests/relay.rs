//! The relay in process: two (or more) real shards sharing one embedded
//! store, registered with their real leases, one frontend following the
//! membership, and proxies driven by the generated ADS client over loopback.
//!
//! Each shard's gRPC server runs on a runtime of its own, so a test can kill
//! it the way `kill -9` would: every socket closes at once, the lease stays
//! until it expires. A shard can also stop following the store (its snapshot
//! lags, as a shard a debounce behind its peers) and resume (it relists).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshplane_frontend::membership::{Membership, follow_membership};
use meshplane_frontend::relay::{self, RelayConfig, RelayMetrics, RelayServer};
use meshplane_frontend::ring::ShardRing;
use meshplane_model::key::{ObjectKey, ShardRecord};
use meshplane_shard::ads::{self, AdsMetrics, AdsServer, ProxySubscription, SubscribeError, ViewSource};
use meshplane_shard::membership::{MembershipOptions, RegistrationState, ShardRegistration};
use meshplane_shard::resources::{ProxyView, ResourceType};
use meshplane_shard::runtime::{Shard, ShardConfig};
use meshplane_store::{EmbeddedStore, Op, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Streaming;
use tonic::transport::Channel;

/// A bound on every wait, so a broken relay fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(15);
const PRODUCTPAGE: &str = "sidecar~10.10.0.11~productpage-v1-6b746f74dc-9stvs.bookinfo~bookinfo.svc.cluster.local";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const DETAILS: &str = "outbound|9080||details.bookinfo.svc.cluster.local";

async fn patiently<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---- the mesh ----

fn bookinfo() -> Vec<Op> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let mut ops = Vec::new();
    for file in ["namespace.yaml", "services.yaml", "traffic.yaml", "workloads.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        ops.extend(objects(file, &text));
    }
    ops
}

fn objects(name: &str, yaml: &str) -> Vec<Op> {
    let parsed = meshplane_model::parse::parse_yaml(name, yaml);
    assert!(parsed.errors().next().is_none(), "{:?}", parsed.diagnostics);
    parsed
        .objects
        .iter()
        .map(|p| Op::Put {
            key: ObjectKey::new("Kubernetes", p.object.object_ref()).encode(),
            value: Bytes::from(p.object.to_json()),
        })
        .collect()
}

/// One more details Pod: the details endpoints change, nothing else.
fn details_pod(n: u8) -> Vec<Op> {
    objects(
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: details-extra-{n}, namespace: bookinfo, labels: {{app: details, version: v1}}}}\n\
             spec: {{nodeName: node-zone-a, containers: [{{name: details, image: x, ports: [{{containerPort: 9080}}]}}]}}\n\
             status: {{phase: Running, podIP: 10.10.0.{}, conditions: [{{type: Ready, status: \"True\"}}]}}\n",
            100 + n
        ),
    )
}

// ---- shards ----

/// Wraps a shard's view source to tell the test which proxies are connected.
struct Observed {
    shard: Shard,
    connected: watch::Sender<BTreeMap<String, usize>>,
    /// The view of each proxy's latest stream.
    views: Views,
    /// How many streams asked for the shard's revisions (to catch up with
    /// the revision their frontend named).
    catching_up: watch::Sender<usize>,
}

type Views = Arc<std::sync::Mutex<BTreeMap<String, watch::Receiver<Arc<ProxyView>>>>>;

struct Connection {
    inner: Option<Box<dyn Send + Sync>>,
    connected: watch::Sender<BTreeMap<String, usize>>,
    id: String,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.take();
        self.connected.send_modify(|m| {
            if let Some(n) = m.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.id);
                }
            }
        });
    }
}

impl ViewSource for Observed {
    fn subscribe(&self, node: &Node) -> Result<ProxySubscription, SubscribeError> {
        let mut sub = self.shard.subscribe(node)?;
        self.views.lock().unwrap().insert(node.id.clone(), sub.views.clone());
        self.connected.send_modify(|m| *m.entry(node.id.clone()).or_default() += 1);
        let inner = std::mem::replace(&mut sub._registration, Box::new(()));
        sub._registration =
            Box::new(Connection { inner: Some(inner), connected: self.connected.clone(), id: node.id.clone() });
        Ok(sub)
    }

    fn revisions(&self) -> Option<watch::Receiver<i64>> {
        self.catching_up.send_modify(|n| *n += 1);
        self.shard.revisions()
    }
}

struct TestShard {
    id: String,
    shard: Shard,
    ads: Arc<AdsMetrics>,
    connected: watch::Receiver<BTreeMap<String, usize>>,
    views: Views,
    catching_up: watch::Receiver<usize>,
    /// The task following the store, and its stop switch.
    following: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>,
    registration: watch::Receiver<RegistrationState>,
    drain: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
}

impl TestShard {
    async fn start(store: Arc<dyn Store>, id: &str) -> TestShard {
        let shard = Shard::new(store.clone(), ShardConfig::default());
        let mut ready = shard.ready();
        let following = Some(follow(&shard));
        patiently("the shard's first snapshot", ready.wait_for(|r| *r)).await.unwrap();

        let (connected_tx, connected) = watch::channel(BTreeMap::new());
        let views = Views::default();
        let (catching_up_tx, catching_up) = watch::channel(0);
        let ads = AdsServer::new(Arc::new(Observed {
            shard: shard.clone(),
            connected: connected_tx,
            views: views.clone(),
            catching_up: catching_up_tx,
        }));
        let metrics = ads.metrics();
        // The server lives on a runtime of its own, so killing it closes every socket at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = oneshot::channel::<()>();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                tokio::spawn(
                    tonic::transport::Server::builder()
                        .max_concurrent_streams(None)
                        .add_service(ads.into_service())
                        .serve_with_incoming(TcpListenerStream::new(listener)),
                );
                let _ = killed.await;
            });
            rt.shutdown_background();
        });

        let record = ShardRecord { id: id.into(), addr: addr.to_string(), draining: false };
        let registration = ShardRegistration::new(store, record, MembershipOptions::default());
        let mut state = registration.state();
        let (drain, drain_rx) = oneshot::channel::<()>();
        let mut gone = connected.clone();
        tokio::spawn(registration.run(
            async move {
                let _ = drain_rx.await;
            },
            async move {
                let _ = gone.wait_for(|m| m.is_empty()).await;
            },
        ));
        patiently("registration", state.wait_for(|s| matches!(s, RegistrationState::Registered { .. }))).await.unwrap();
        TestShard {
            id: id.into(),
            shard,
            ads: metrics,
            connected,
            views,
            catching_up,
            following,
            registration: state,
            drain: Some(drain),
            kill: Some(kill),
            server: Some(server),
        }
    }

    /// Stop following the store: the snapshot stays where it is.
    async fn stop_following(&mut self) {
        let (stop, task) = self.following.take().expect("the shard follows the store");
        stop.send_replace(true);
        patiently("the shard to stop following the store", task).await.unwrap();
    }

    /// Follow the store again (it relists).
    fn resume_following(&mut self) {
        assert!(self.following.is_none(), "the shard follows the store already");
        self.following = Some(follow(&self.shard));
    }

    fn serves(&self, node_id: &str) -> bool {
        self.connected.borrow().contains_key(node_id)
    }

    /// Wait until exactly `node_ids` are connected here.
    async fn wait_serving(&mut self, node_ids: &[&str]) {
        let mut want: Vec<String> = node_ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        let id = self.id.clone();
        patiently(
            &format!("shard {id} to serve exactly {want:?}"),
            self.connected.wait_for(|m| m.keys().cloned().collect::<Vec<_>>() == want && m.values().all(|n| *n == 1)),
        )
        .await
        .unwrap();
    }

    fn view_of(&self, node_id: &str) -> Arc<ProxyView> {
        self.shard.proxy_view(node_id).expect("the proxy is connected to this shard").view
    }

    /// Graceful shutdown: mark draining, wait for the proxies to leave, revoke.
    async fn drain(&mut self) {
        self.drain.take().unwrap().send(()).unwrap();
        patiently("the drained shard to leave", self.registration.wait_for(|s| *s == RegistrationState::Left))
            .await
            .unwrap();
    }

    /// Like `kill -9`: the server's sockets close, the lease stays until it expires.
    fn kill(&mut self) {
        self.kill.take().unwrap().send(()).unwrap();
        self.server.take().unwrap().join().unwrap();
    }
}

/// Run the shard's store follower until told to stop.
fn follow(shard: &Shard) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, shutdown) = watch::channel(false);
    (stop, tokio::spawn(shard.clone().run(shutdown)))
}

// ---- the frontend ----

struct Frontend {
    addr: SocketAddr,
    metrics: Arc<RelayMetrics>,
    membership: watch::Receiver<Arc<Membership>>,
}

impl Frontend {
    async fn start(store: Arc<dyn Store>) -> Frontend {
        let (tx, membership) = watch::channel(Arc::new(Membership::default()));
        tokio::spawn(follow_membership(store, tx, std::future::pending()));
        let relay = RelayServer::new(membership.clone(), RelayConfig::default());
        let metrics = relay.metrics();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(relay.into_service())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        Frontend { addr, metrics, membership }
    }

    async fn wait_shards(&mut self, ids: &[&str]) {
        let want = ShardRing::new(ids.iter().copied());
        patiently(&format!("the frontend to see shards {ids:?}"), self.membership.wait_for(|m| *m.ring() == want))
            .await
            .unwrap();
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<Channel> {
        AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }
}

async fn cluster(ids: &[&str]) -> (Arc<EmbeddedStore>, Vec<TestShard>, Frontend) {
    let store = Arc::new(EmbeddedStore::in_memory());
    store.batch(bookinfo()).await.unwrap();
    let mut shards = Vec::new();
    for id in ids {
        shards.push(TestShard::start(store.clone(), id).await);
    }
    let mut frontend = Frontend::start(store.clone()).await;
    frontend.wait_shards(ids).await;
    (store, shards, frontend)
}

fn owner_index(shards: &[TestShard], node_id: &str) -> usize {
    let ring = ShardRing::new(shards.iter().map(|s| s.id.as_str()));
    let owner = ring.owner(node_id).unwrap();
    shards.iter().position(|s| *s.id == **owner).unwrap()
}

// ---- a Delta proxy ----

struct DeltaProxy {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
    /// type -> name -> version held
    held: BTreeMap<String, BTreeMap<String, String>>,
    /// Resources received at a version the proxy already held.
    resent: Vec<(String, String)>,
    /// Resources received, in all.
    received: usize,
    /// ACKs this proxy sent (to wait until the relay has passed them on).
    acks_sent: u64,
    /// Resources withdrawn: (type, name).
    removed: Vec<(String, String)>,
    /// The highest `system_version_info` received.
    revision: i64,
}

impl DeltaProxy {
    async fn connect(frontend: &Frontend, node_id: &str) -> DeltaProxy {
        let (requests, rx) = mpsc::channel(16);
        requests
            .send(DeltaDiscoveryRequest {
                node: Some(Node { id: node_id.into(), ..Default::default() }),
                type_url: CDS.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let responses =
            frontend.client().await.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        DeltaProxy {
            requests,
            responses,
            held: BTreeMap::new(),
            resent: Vec::new(),
            received: 0,
            acks_sent: 0,
            removed: Vec::new(),
            revision: 0,
        }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.requests.send(req).await.unwrap();
    }

    /// The next response; the stream must neither end nor fail (no reset).
    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        match tokio::time::timeout(PATIENCE, self.responses.next()).await {
            Ok(Some(Ok(resp))) => resp,
            Ok(Some(Err(status))) => panic!("the proxy's stream was reset: {status}"),
            Ok(None) => panic!("the proxy's stream ended"),
            Err(_) => panic!("no response in time; holding {:?}", self.summary()),
        }
    }

    fn apply(&mut self, resp: &DeltaDiscoveryResponse) {
        let held = self.held.entry(resp.type_url.clone()).or_default();
        for r in &resp.resources {
            self.received += 1;
            if held.get(&r.name) == Some(&r.version) {
                self.resent.push((resp.type_url.clone(), r.name.clone()));
            }
            held.insert(r.name.clone(), r.version.clone());
        }
        for name in &resp.removed_resources {
            held.remove(name);
            self.removed.push((resp.type_url.clone(), name.clone()));
        }
        self.revision = self.revision.max(resp.system_version_info.parse().unwrap_or(0));
    }

    async fn ack(&mut self, resp: &DeltaDiscoveryResponse) {
        self.acks_sent += 1;
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await;
    }

    async fn nack(&self, resp: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            error_detail: Some(RpcStatus { code: 3, message: "rejected by the test".into(), details: vec![] }),
            ..Default::default()
        })
        .await;
    }

    fn summary(&self) -> BTreeMap<&str, usize> {
        self.held.iter().map(|(t, m)| (t.rsplit('.').next().unwrap(), m.len())).collect()
    }

    fn holds(&self, type_url: &str, map: &meshplane_shard::resources::ResourceMap) -> bool {
        let held = self.held.get(type_url).cloned().unwrap_or_default();
        held.len() == map.len() && map.iter().all(|(n, r)| held.get(&**n).is_some_and(|v| **v == *r.version))
    }

    fn in_sync(&self, view: &ProxyView) -> bool {
        [
            (CDS, ResourceType::Cluster),
            (EDS, ResourceType::Endpoint),
            (LDS, ResourceType::Listener),
            (RDS, ResourceType::Route),
        ]
        .iter()
        .all(|(url, ty)| self.holds(url, view.resources(*ty)))
    }

    /// Apply and ACK responses until the proxy holds `view` (of every type).
    async fn sync_to(&mut self, view: impl Fn() -> Arc<ProxyView>) {
        while !self.in_sync(&view()) {
            let resp = self.recv().await;
            self.apply(&resp);
            self.ack(&resp).await;
        }
    }

    /// The initial fetch, as Envoy does it: CDS, then EDS for the clusters,
    /// LDS, then RDS for the routes.
    async fn fetch_all(&mut self, shard: &TestShard, node_id: &str) {
        let resp = self.recv().await;
        assert_eq!(resp.type_url, CDS);
        self.apply(&resp);
        self.ack(&resp).await;
        let view = shard.view_of(node_id);
        let names = |map: &meshplane_shard::resources::ResourceMap| map.keys().map(|n| n.to_string()).collect();
        self.send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: names(&view.endpoints),
            ..Default::default()
        })
        .await;
        self.send(DeltaDiscoveryRequest { type_url: LDS.into(), ..Default::default() }).await;
        self.send(DeltaDiscoveryRequest {
            type_url: RDS.into(),
            resource_names_subscribe: names(&view.routes),
            ..Default::default()
        })
        .await;
        self.sync_to(|| shard.view_of(node_id)).await;
        assert!(!view.clusters.is_empty() && !view.endpoints.is_empty() && !view.listeners.is_empty());
        assert!(self.resent.is_empty(), "{:?}", self.resent);
    }

    /// Receive and ACK until `type_url` holds `name` at its version in `view`.
    async fn wait_for(&mut self, type_url: &str, name: &str, version: &str) -> DeltaDiscoveryResponse {
        loop {
            let resp = self.recv().await;
            self.apply(&resp);
            if resp.type_url == type_url && resp.resources.iter().any(|r| r.name == name && r.version == version) {
                return resp;
            }
            self.ack(&resp).await;
        }
    }
}

/// The version of the details endpoints in the proxy's view on `shard`, once it differs from `old`.
async fn next_version(shard: &TestShard, node_id: &str, old: &str) -> String {
    let mut views = shard.views.lock().unwrap().get(node_id).expect("the proxy is connected to this shard").clone();
    let view = patiently("the shard to rebuild the proxy's view", views.wait_for(|v| details_version(v) != old))
        .await
        .expect("the shard is running");
    details_version(&view)
}

fn details_version(view: &ProxyView) -> String {
    view.endpoints[DETAILS].version.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxy_moves_without_a_reset_or_a_resend_when_its_owner_drains() {
    let (store, mut shards, frontend) = cluster(&["shard-a", "shard-b"]).await;
    let owner = owner_index(&shards, PRODUCTPAGE);
    let other = 1 - owner;

    let mut proxy = DeltaProxy::connect(&frontend, PRODUCTPAGE).await;
    shards[owner].wait_serving(&[PRODUCTPAGE]).await;
    proxy.fetch_all(&shards[owner], PRODUCTPAGE).await;
    assert!(!shards[other].serves(PRODUCTPAGE));
    let received = proxy.received;

    // The owner shuts down gracefully: it drains, the frontend moves the
    // stream, the owner sees its proxies gone and leaves.
    let (first, second) = shards.split_at_mut(1);
    let (old, new) = if owner == 0 { (&mut first[0], &mut second[0]) } else { (&mut second[0], &mut first[0]) };
    let drained = old.drain();
    let moved = new.wait_serving(&[PRODUCTPAGE]);
    tokio::join!(drained, moved);
    assert!(!old.serves(PRODUCTPAGE));
    assert_eq!(frontend.metrics.rehomes_membership(), 1);
    assert_eq!(frontend.metrics.streams(), 1);

    // The new owner was told what the proxy holds: it sends nothing it has.
    // A mesh change is the sync point: everything before it has arrived.
    let before = details_version(&new.view_of(PRODUCTPAGE));
    store.batch(details_pod(1)).await.unwrap();
    let v2 = next_version(new, PRODUCTPAGE, &before).await;
    let resp = proxy.wait_for(EDS, DETAILS, &v2).await;
    assert_eq!(resp.resources.len(), 1, "only the changed endpoints: {:?}", resp.resources);
    assert!(proxy.resent.is_empty(), "the new owner resent resources the proxy had: {:?}", proxy.resent);
    assert_eq!(proxy.received, received + 1);
    assert!(proxy.in_sync(&new.view_of(PRODUCTPAGE)) || proxy.held[EDS][DETAILS] == v2);

    // ACK through the relay reaches the new owner: the next EDS change can
    // only be sent once the previous one is acknowledged.
    proxy.ack(&resp).await;
    store.batch(details_pod(2)).await.unwrap();
    let v3 = next_version(new, PRODUCTPAGE, &v2).await;
    let resp = proxy.wait_for(EDS, DETAILS, &v3).await;
    // NACK through the relay: the new owner counts it, and goes on.
    proxy.nack(&resp).await;
    store.batch(details_pod(3)).await.unwrap();
    let v4 = next_version(new, PRODUCTPAGE, &v3).await;
    let resp = proxy.wait_for(EDS, DETAILS, &v4).await;
    proxy.ack(&resp).await;
    assert_eq!(new.ads.rejects(), 1, "the NACK reached the new owner as a NACK of its own response");
    assert!(proxy.resent.is_empty(), "{:?}", proxy.resent);
    assert_eq!(frontend.metrics.stale_acks() + frontend.metrics.stale_nacks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxy_moves_at_once_when_its_owner_dies() {
    let (store, mut shards, frontend) = cluster(&["shard-a", "shard-b", "shard-c"]).await;
    let owner = owner_index(&shards, PRODUCTPAGE);
    let mut proxy = DeltaProxy::connect(&frontend, PRODUCTPAGE).await;
    shards[owner].wait_serving(&[PRODUCTPAGE]).await;
    proxy.fetch_all(&shards[owner], PRODUCTPAGE).await;
    let received = proxy.received;
    // The relay records versions as it passes the proxy's ACKs on: wait until
    // the owner has them all, so the move's replay names every version held.
    let acks = proxy.acks_sent;
    wait_until(|| shards[owner].ads.acks() >= acks).await;

    // kill -9: the lease is still there, but the stream fails and the relay
    // moves the proxy at once, to the shard the membership will pick once the
    // lease expires.
    shards[owner].kill();
    let survivors: Vec<&str> = shards.iter().enumerate().filter(|(i, _)| *i != owner).map(|(_, s)| &*s.id).collect();
    let next = ShardRing::new(survivors).owner(PRODUCTPAGE).unwrap().clone();
    let next = shards.iter().position(|s| *s.id == *next).unwrap();
    shards[next].wait_serving(&[PRODUCTPAGE]).await;
    assert_eq!(frontend.metrics.rehomes_failure(), 1);
    assert_eq!(frontend.membership.borrow().ring().len(), 3, "the dead shard's lease has not expired yet");

    let before = details_version(&shards[next].view_of(PRODUCTPAGE));
    store.batch(details_pod(1)).await.unwrap();
    let v2 = next_version(&shards[next], PRODUCTPAGE, &before).await;
    let resp = proxy.wait_for(EDS, DETAILS, &v2).await;
    proxy.ack(&resp).await;
    assert!(proxy.resent.is_empty(), "the new owner resent resources the proxy had: {:?}", proxy.resent);
    assert_eq!(proxy.received, received + 1);
}

const EXTRA: &str = "outbound|9080||extra.bookinfo.svc.cluster.local";

fn extra_service() -> Vec<Op> {
    objects(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: bookinfo}\n\
         spec:\n  clusterIP: 10.96.0.99\n  ports: [{name: http, port: 9080}]\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_proxy_moved_to_a_lagging_shard_loses_nothing_it_holds() {
    assert_eq!(relay::MIN_REVISION_HEADER, ads::MIN_REVISION_HEADER);
    let (store, mut shards, frontend) = cluster(&["shard-a", "shard-b"]).await;
    let owner = owner_index(&shards, PRODUCTPAGE);
    let other = 1 - owner;
    let mut proxy = DeltaProxy::connect(&frontend, PRODUCTPAGE).await;
    shards[owner].wait_serving(&[PRODUCTPAGE]).await;
    proxy.fetch_all(&shards[owner], PRODUCTPAGE).await;

    // The next owner stops following the store: it will be behind.
    shards[other].stop_following().await;
    let behind = *shards[other].shard.revisions().unwrap().borrow();

    // A new service: the owner sends its cluster (and the route to it), and
    // the proxy, as Envoy would, subscribes to its endpoints.
    store.batch(extra_service()).await.unwrap();
    let mut views = shards[owner].views.lock().unwrap()[PRODUCTPAGE].clone();
    patiently("the owner to see the new service", views.wait_for(|v| v.clusters.contains_key(EXTRA))).await.unwrap();
    proxy
        .send(DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: vec![EXTRA.into()],
            ..Default::default()
        })
        .await;
    proxy.sync_to(|| shards[owner].view_of(PRODUCTPAGE)).await;
    assert!(proxy.held[CDS].contains_key(EXTRA));
    assert!(proxy.revision > behind, "the proxy was sent revision {} > {behind}", proxy.revision);
    let received = proxy.received;

    // The owner drains; the frontend moves the proxy to the lagging shard,
    // naming the revision the proxy was sent. Answered from the old
    // snapshot, the replay would withdraw the new cluster; it waits.
    shards[owner].drain.take().unwrap().send(()).unwrap();
    shards[other].wait_serving(&[PRODUCTPAGE]).await;
    patiently("the new owner's stream to wait for its snapshot", shards[other].catching_up.wait_for(|n| *n == 1))
        .await
        .unwrap();
    assert!(*shards[other].shard.revisions().unwrap().borrow() < proxy.revision);

    // It catches up (relisting the store): it has what the proxy holds and
    // sends nothing. A mesh change is the sync point: everything before it
    // has arrived.
    shards[other].resume_following();
    let mut revisions = shards[other].shard.revisions().unwrap();
    patiently("the new owner to catch up", revisions.wait_for(|r| *r >= proxy.revision)).await.unwrap();
    let before = details_version(&shards[other].view_of(PRODUCTPAGE));
    store.batch(details_pod(1)).await.unwrap();
    let v2 = next_version(&shards[other], PRODUCTPAGE, &before).await;
    let resp = proxy.wait_for(EDS, DETAILS, &v2).await;
    proxy.ack(&resp).await;
    assert!(proxy.removed.is_empty(), "the new owner withdrew resources the proxy held: {:?}", proxy.removed);
    assert!(proxy.resent.is_empty(), "the new owner resent resources the proxy had: {:?}", proxy.resent);
    assert_eq!(proxy.received, received + 1, "only the changed endpoints");
    assert!(proxy.held[CDS].contains_key(EXTRA));
    assert_eq!(frontend.metrics.rehomes_membership(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_shard_takes_only_the_proxies_it_now_owns() {
    let store = Arc::new(EmbeddedStore::in_memory());
    store.batch(bookinfo()).await.unwrap();
    let mut shards = vec![TestShard::start(store.clone(), "shard-a").await];
    let mut frontend = Frontend::start(store.clone()).await;
    frontend.wait_shards(&["shard-a"]).await;

    let nodes: Vec<String> =
        (0..16).map(|i| format!("sidecar~10.20.0.{i}~client-{i}.bookinfo~bookinfo.svc.cluster.local")).collect();
    let mut proxies = Vec::new();
    for node in &nodes {
        let mut proxy = DeltaProxy::connect(&frontend, node).await;
        let resp = proxy.recv().await;
        proxy.apply(&resp);
        proxy.ack(&resp).await;
        proxies.push(proxy);
    }
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    shards[0].wait_serving(&all).await;

    shards.push(TestShard::start(store.clone(), "shard-b").await);
    frontend.wait_shards(&["shard-a", "shard-b"]).await;
    let ring = ShardRing::new(["shard-a", "shard-b"]);
    let (movers, stayers): (Vec<&str>, Vec<&str>) = all.iter().partition(|n| &**ring.owner(n).unwrap() == "shard-b");
    assert!(!movers.is_empty() && !stayers.is_empty(), "16 proxies split over two shards");
    shards[1].wait_serving(&movers).await;
    shards[0].wait_serving(&stayers).await;
    assert_eq!(frontend.metrics.rehomes_membership(), movers.len() as u64);
    assert_eq!(frontend.metrics.rehomes_failure(), 0);
    assert_eq!(frontend.metrics.streams(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_waits_for_a_shard_without_a_reset() {
    let store = Arc::new(EmbeddedStore::in_memory());
    store.batch(bookinfo()).await.unwrap();
    let mut frontend = Frontend::start(store.clone()).await;
    patiently("membership", frontend.membership.wait_for(|m| m.is_loaded())).await.unwrap();
    let mut proxy = DeltaProxy::connect(&frontend, PRODUCTPAGE).await;
    // No shard yet: the stream stays open; the first shard to register serves it.
    let shard = TestShard::start(store.clone(), "shard-a").await;
    let resp = proxy.recv().await;
    assert_eq!(resp.type_url, CDS);
    assert!(!resp.resources.is_empty());
    assert!(shard.serves(PRODUCTPAGE));
}

// ---- a SotW proxy ----

async fn sotw_recv(responses: &mut Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    match tokio::time::timeout(PATIENCE, responses.next()).await {
        Ok(Some(Ok(resp))) => resp,
        Ok(Some(Err(status))) => panic!("the proxy's stream was reset: {status}"),
        Ok(None) => panic!("the proxy's stream ended"),
        Err(_) => panic!("no response in time"),
    }
}

fn sotw_ack(resp: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: resp.type_url.clone(),
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_proxy_moves_without_a_reset_and_keeps_acking() {
    let (store, mut shards, frontend) = cluster(&["shard-a", "shard-b"]).await;
    let owner = owner_index(&shards, PRODUCTPAGE);
    let other = 1 - owner;
    let (tx, rx) = mpsc::channel(16);
    let node = Some(Node { id: PRODUCTPAGE.into(), ..Default::default() });
    tx.send(DiscoveryRequest { node, type_url: CDS.into(), ..Default::default() }).await.unwrap();
    let mut responses =
        frontend.client().await.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
    let cds = sotw_recv(&mut responses).await;
    assert_eq!(cds.type_url, CDS);
    tx.send(sotw_ack(&cds)).await.unwrap();
    tx.send(DiscoveryRequest { type_url: LDS.into(), ..Default::default() }).await.unwrap();
    let lds = sotw_recv(&mut responses).await;
    assert_eq!(lds.type_url, LDS);
    tx.send(sotw_ack(&lds)).await.unwrap();
    shards[owner].wait_serving(&[PRODUCTPAGE]).await;

    shards[owner].drain.take().unwrap().send(()).unwrap();
    shards[other].wait_serving(&[PRODUCTPAGE]).await;
    // SotW cannot say what it holds: the new owner answers each type with its
    // full set, at the same version (content hashes agree across shards).
    let mut answers = BTreeMap::new();
    for _ in 0..2 {
        let resp = sotw_recv(&mut responses).await;
        tx.send(sotw_ack(&resp)).await.unwrap();
        answers.insert(resp.type_url.clone(), resp);
    }
    assert_eq!(answers[CDS].version_info, cds.version_info);
    assert_eq!(answers[CDS].resources, cds.resources);
    assert_eq!(answers[LDS].version_info, lds.version_info);
    assert_ne!(answers[CDS].nonce, cds.nonce, "the proxy never sees a nonce twice");

    // A cluster change flows from the new owner, and its ACK reaches it.
    store.batch(objects("svc.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: extra, namespace: bookinfo}\nspec:\n  clusterIP: 10.96.0.99\n  ports: [{name: http, port: 9080}]\n")).await.unwrap();
    let update = sotw_recv(&mut responses).await;
    assert_eq!(update.type_url, CDS);
    assert_eq!(update.resources.len(), cds.resources.len() + 1);
    tx.send(sotw_ack(&update)).await.unwrap();
    patiently("the old owner to leave", shards[owner].registration.wait_for(|s| *s == RegistrationState::Left))
        .await
        .unwrap();
    assert_eq!(frontend.metrics.rehomes_membership(), 1);
}

/// Poll an observable condition until it holds, failing after `PATIENCE`.
async fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "condition not met within {PATIENCE:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
