//! `SotwStream`: State-of-the-World cases as plain synchronous tests.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use super::{CDS, EDS, LDS, RDS, mesh, reallocated, s, view};
use crate::ads::{ProtocolError, SotwResponse, SotwStream, StreamEvent};
use crate::resources::{ProxyView, ResourceType};

/// A request builder: the full subscription, plus the nonce it answers.
struct Req(DiscoveryRequest);

fn req(ty: ResourceType, names: &[&str]) -> Req {
    Req(DiscoveryRequest {
        type_url: ty.type_url().to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    })
}

impl Req {
    fn ack(mut self, response: &DiscoveryResponse) -> Self {
        self.0.response_nonce = response.nonce.clone();
        self.0.version_info = response.version_info.clone();
        self
    }
    fn nack(mut self, response: &DiscoveryResponse, message: &str) -> Self {
        self.0.response_nonce = response.nonce.clone();
        self.0.error_detail = Some(Status { code: 3, message: message.to_string(), details: vec![] });
        self
    }
}

struct Client {
    stream: SotwStream,
}

impl Client {
    fn new(view: Arc<ProxyView>) -> Self {
        let mut stream = SotwStream::new();
        stream.set_view(view);
        Self { stream }
    }
    fn send(&mut self, req: Req) -> Vec<DiscoveryResponse> {
        self.stream.handle_request(req.0).expect("valid request");
        self.stream.take_responses().iter().map(wire).collect()
    }
    fn push(&mut self, view: Arc<ProxyView>) -> Vec<DiscoveryResponse> {
        self.stream.set_view(view);
        self.stream.take_responses().iter().map(wire).collect()
    }
    fn send_one(&mut self, req: Req) -> DiscoveryResponse {
        one(self.send(req))
    }
    fn push_one(&mut self, view: Arc<ProxyView>) -> DiscoveryResponse {
        one(self.push(view))
    }
    fn events(&mut self) -> Vec<StreamEvent> {
        self.stream.take_events().into_iter().filter(|e| !matches!(e, StreamEvent::Pushed { .. })).collect()
    }
}

/// A response as the client receives it: encoded for the wire and decoded
/// again, which must give the prost message the response stands for.
fn wire(response: &SotwResponse) -> DiscoveryResponse {
    let bytes = response.encode().to_bytes();
    let decoded = DiscoveryResponse::decode(&bytes[5..]).expect("a valid DiscoveryResponse");
    assert_eq!(decoded, response.to_proto());
    decoded
}

fn one(mut responses: Vec<DiscoveryResponse>) -> DiscoveryResponse {
    assert_eq!(responses.len(), 1, "expected one response, got {:?}", summary(&responses));
    responses.remove(0)
}

/// Type and resource bodies of each response.
fn summary(responses: &[DiscoveryResponse]) -> Vec<(&'static str, Vec<String>)> {
    responses.iter().map(|r| (ResourceType::from_type_url(&r.type_url).unwrap().short(), bodies(r))).collect()
}

fn bodies(r: &DiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|a| String::from_utf8(a.value.clone()).unwrap()).collect()
}

/// An Envoy that subscribed to everything in `mesh` and ACKed it.
fn synced_envoy() -> Client {
    let mut c = Client::new(mesh(1).build());
    let cds = c.send_one(req(CDS, &[]));
    let eds = c.send_one(req(EDS, &["c1", "c2"]));
    assert!(c.send(req(CDS, &[]).ack(&cds)).is_empty());
    let lds = c.send_one(req(LDS, &[]));
    let rds = c.send_one(req(RDS, &["r1"]));
    assert!(c.send(req(EDS, &["c1", "c2"]).ack(&eds)).is_empty());
    assert!(c.send(req(LDS, &[]).ack(&lds)).is_empty());
    assert!(c.send(req(RDS, &["r1"]).ack(&rds)).is_empty());
    c.events();
    c
}

#[test]
fn wildcard_cds_and_lds_get_the_full_set() {
    let mut c = Client::new(mesh(1).build());
    let cds = c.send_one(req(CDS, &[]));
    assert_eq!(bodies(&cds), s(&["cluster one", "cluster two"]));
    assert_eq!(cds.type_url, CDS.type_url());
    assert_eq!(cds.resources[0].type_url, CDS.type_url());
    assert!(!cds.version_info.is_empty() && !cds.nonce.is_empty());
    assert!(c.send(req(CDS, &[]).ack(&cds)).is_empty(), "an ACK is not answered");

    // One cluster changes: the whole set is sent again, with a new version.
    let next = c.push_one(mesh(2).with(CDS, "c2", "cluster two v2").build());
    assert_eq!(bodies(&next), s(&["cluster one", "cluster two v2"]));
    assert_ne!(next.version_info, cds.version_info);
    assert_ne!(next.nonce, cds.nonce);

    let lds = c.send_one(req(LDS, &["*"]));
    assert_eq!(bodies(&lds), s(&["listener one"]));
}

#[test]
fn subscribed_names_are_the_views_own() {
    // Every SotW request repeats the whole subscription; the stream keeps the
    // view's name allocations, not a copy per request.
    let view = mesh(1).build();
    let name = view.endpoints.get_key_value("c1").map(|(n, _)| n.clone()).unwrap();
    let refs = Arc::strong_count(&name);
    let mut c = Client::new(view);
    let eds = c.send_one(req(EDS, &["c1", "nope"]));
    assert!(Arc::strong_count(&name) > refs, "the subscription holds the view's c1");
    c.send(req(EDS, &["c1", "nope"]).ack(&eds));
    assert_eq!(bodies(&eds), s(&["endpoints one"]));
}

#[test]
fn a_rebuild_with_unchanged_content_releases_the_previous_allocations() {
    // Bodies no other test uses: resources are shared by content.
    let v1 = view(1).with(CDS, "c1", "sotw rebuild: one").with(CDS, "c2", "sotw rebuild: two").build();
    let v2 = reallocated(&v1);
    let previous = Arc::downgrade(&v1.clusters["c1"]);
    let mut c = Client::new(v1);
    let cds = c.send_one(req(CDS, &[]));
    assert!(c.send(req(CDS, &[]).ack(&cds)).is_empty());
    assert!(c.push(v2).is_empty());
    assert!(previous.upgrade().is_none(), "the stream keeps a superseded c1 alive");
}

#[test]
fn version_info_is_a_content_hash_of_the_set() {
    let mut a = Client::new(mesh(1).build());
    let mut b = Client::new(mesh(99).build());
    let va = a.send_one(req(CDS, &[])).version_info;
    let vb = b.send_one(req(CDS, &[])).version_info;
    assert_eq!(va, vb, "same set, same version, whatever the revision or stream");
}

#[test]
fn empty_eds_and_rds_mean_none_and_are_still_answered() {
    let mut c = Client::new(mesh(1).build());
    let eds = c.send_one(req(EDS, &[]));
    assert!(eds.resources.is_empty());
    let eds = c.send_one(req(EDS, &["c2"]).ack(&eds));
    assert_eq!(bodies(&eds), s(&["endpoints two"]));
    let rds = c.send_one(req(RDS, &["missing"]));
    assert!(rds.resources.is_empty(), "a name that does not exist gets an empty answer");
}

#[test]
fn unchanged_views_send_nothing_and_changes_only_their_type() {
    let mut c = synced_envoy();
    assert!(c.push(mesh(2).build()).is_empty());
    let rds = c.push_one(mesh(3).with(RDS, "r1", "route one v2").build());
    assert_eq!(summary(&[rds]), vec![("rds", s(&["route one v2"]))]);
}

#[test]
fn named_subscription_changes_are_answered() {
    let mut c = synced_envoy();
    let eds = c.send_one(req(EDS, &["c1"]));
    assert_eq!(bodies(&eds), s(&["endpoints one"]));
}

#[test]
fn one_response_in_flight_per_type() {
    let mut c = synced_envoy();
    let first = c.push_one(mesh(2).with(RDS, "r1", "v2").build());
    assert!(c.push(mesh(3).with(RDS, "r1", "v3").build()).is_empty());
    let next = c.send_one(req(RDS, &["r1"]).ack(&first));
    assert_eq!(bodies(&next), s(&["v3"]));
}

#[test]
fn nacked_set_is_never_resent() {
    let mut c = synced_envoy();
    let bad = c.push_one(mesh(2).with(RDS, "r1", "bad").build());
    assert!(c.send(req(RDS, &["r1"]).nack(&bad, "invalid route")).is_empty());
    assert_eq!(
        c.events(),
        vec![StreamEvent::Nack {
            ty: RDS,
            nonce: bad.nonce.clone(),
            names: vec!["r1".into()],
            code: 3,
            message: "invalid route".into(),
        }]
    );
    // Other types change; the rejected route set is not sent again.
    let eds = c.push_one(mesh(3).with(RDS, "r1", "bad").with(EDS, "c1", "endpoints v2").build());
    assert_eq!(summary(&[eds]), vec![("eds", s(&["endpoints v2", "endpoints two"]))]);
    // New content is.
    let fixed = c.push_one(mesh(4).with(RDS, "r1", "good").with(EDS, "c1", "endpoints v2").build());
    assert_eq!(bodies(&fixed), s(&["good"]));
}

#[test]
fn back_to_the_accepted_set_after_nack_sends_nothing() {
    let mut c = synced_envoy();
    let bad = c.push_one(mesh(2).with(RDS, "r1", "bad").build());
    c.send(req(RDS, &["r1"]).nack(&bad, "invalid route"));
    assert!(c.push(mesh(3).build()).is_empty(), "the proxy still has the accepted set");
}

#[test]
fn stale_nonces_are_ignored() {
    let mut c = synced_envoy();
    let first = c.push_one(mesh(2).with(EDS, "c1", "e v2").build());
    c.send(req(EDS, &["c1", "c2"]).ack(&first));
    let second = c.push_one(mesh(3).with(EDS, "c1", "e v3").build());
    c.events();
    // An answer to `first`, even with other names or an error, changes nothing.
    assert!(c.send(req(EDS, &["c1"]).ack(&first)).is_empty());
    assert!(c.send(req(EDS, &["c1"]).nack(&first, "old")).is_empty());
    assert_eq!(
        c.events(),
        vec![
            StreamEvent::StaleNonce { ty: EDS, nonce: first.nonce.clone(), nack_message: None },
            StreamEvent::StaleNonce { ty: EDS, nonce: first.nonce.clone(), nack_message: Some("old".into()) },
        ]
    );
    // The real answer to `second` carries the new names.
    let narrowed = c.send_one(req(EDS, &["c1"]).ack(&second));
    assert_eq!(bodies(&narrowed), s(&["e v3"]));
}

#[test]
fn grpc_requests_listeners_and_clusters_by_name() {
    let v = view(1)
        .with(LDS, "echo.default.svc.cluster.local:50051", "api listener")
        .with(LDS, "0.0.0.0_9080", "envoy listener")
        .with(RDS, "echo-route", "route")
        .with(CDS, "outbound|50051||echo.default.svc.cluster.local", "echo cluster")
        .with(CDS, "outbound|9080||other.default.svc.cluster.local", "other cluster")
        .with(EDS, "outbound|50051||echo.default.svc.cluster.local", "echo endpoints")
        .build();
    let mut c = Client::new(v);
    let lds = c.send_one(req(LDS, &["echo.default.svc.cluster.local:50051"]));
    assert_eq!(bodies(&lds), s(&["api listener"]));
    let rds = c.send_one(req(RDS, &["echo-route"]));
    assert_eq!(bodies(&rds), s(&["route"]));
    let cds = c.send_one(req(CDS, &["outbound|50051||echo.default.svc.cluster.local"]));
    assert_eq!(bodies(&cds), s(&["echo cluster"]));
    let eds = c.send_one(req(EDS, &["outbound|50051||echo.default.svc.cluster.local"]));
    assert_eq!(bodies(&eds), s(&["echo endpoints"]));
    // A listener that does not exist: answered with an empty set, from
    // which gRPC learns it does not exist.
    let lds = c.send_one(req(LDS, &["nope:1"]).ack(&lds));
    assert!(lds.resources.is_empty());
}

#[test]
fn responses_follow_push_order() {
    let mut c = synced_envoy();
    let responses = c.push(
        view(2)
            .with(CDS, "c1", "c1 v2")
            .with(CDS, "c2", "cluster two")
            .with(EDS, "c1", "e1 v2")
            .with(EDS, "c2", "endpoints two")
            .with(LDS, "l1", "l1 v2")
            .with(RDS, "r1", "r1 v2")
            .build(),
    );
    let order: Vec<_> = summary(&responses).into_iter().map(|(ty, _)| ty).collect();
    assert_eq!(order, vec!["cds", "eds", "lds", "rds"]);
}

#[test]
fn updated_cluster_is_followed_by_its_endpoints() {
    let mut c = synced_envoy();
    let responses = c.push(mesh(2).with(CDS, "c1", "cluster one v2").build());
    assert_eq!(
        summary(&responses),
        vec![("cds", s(&["cluster one v2", "cluster two"])), ("eds", s(&["endpoints one", "endpoints two"])),]
    );
}

#[test]
fn removed_clusters_stay_until_listeners_and_routes_are_acked() {
    let mut c = synced_envoy();
    let next = view(2)
        .with(CDS, "c1", "cluster one")
        .with(EDS, "c1", "endpoints one")
        .with(LDS, "l1", "listener without c2")
        .with(RDS, "r1", "route without c2")
        .build();
    let responses = c.push(next);
    assert_eq!(
        summary(&responses),
        vec![("eds", s(&["endpoints one"])), ("lds", s(&["listener without c2"])), ("rds", s(&["route without c2"])),]
    );
    assert!(c.send(req(LDS, &[]).ack(&responses[1])).is_empty());
    let cds = c.send_one(req(RDS, &["r1"]).ack(&responses[2]));
    assert_eq!(summary(&[cds]), vec![("cds", s(&["cluster one"]))]);
}

#[test]
fn unknown_and_malformed_requests() {
    let mut c = Client::new(mesh(1).build());
    let unknown = DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig".into(),
        ..Default::default()
    };
    c.stream.handle_request(unknown).unwrap();
    assert!(c.stream.take_responses().is_empty());
    assert!(matches!(c.events()[..], [StreamEvent::UnknownType { .. }]));
    assert_eq!(c.stream.handle_request(DiscoveryRequest::default()), Err(ProtocolError::MissingTypeUrl));
}

#[test]
fn route_updates_wait_until_new_clusters_can_warm() {
    let mut c = synced_envoy();
    let next =
        mesh(2).with(CDS, "c3", "cluster three").with(EDS, "c3", "endpoints three").with(RDS, "r1", "route to c3");
    let cds = c.push_one(next.build());
    assert_eq!(summary(std::slice::from_ref(&cds)), vec![("cds", s(&["cluster one", "cluster two", "cluster three"]))]);
    assert!(c.send(req(CDS, &[]).ack(&cds)).is_empty(), "the route waits for the new cluster's endpoints");
    let responses = c.send(req(EDS, &["c1", "c2", "c3"]));
    assert_eq!(
        summary(&responses),
        vec![("eds", s(&["endpoints one", "endpoints two", "endpoints three"])), ("rds", s(&["route to c3"]))]
    );
}
