//! `DeltaStream`: every protocol case as a plain synchronous test.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use super::{CDS, EDS, LDS, RDS, mesh, reallocated, s, version, view};
use crate::ads::{DeltaResponse, DeltaStream, ProtocolError, StreamEvent};
use crate::resources::{ProxyView, Resource, ResourceType};

/// A request builder.
struct Req(DeltaDiscoveryRequest);

fn req(ty: ResourceType) -> Req {
    Req(DeltaDiscoveryRequest { type_url: ty.type_url().to_string(), ..Default::default() })
}

impl Req {
    fn sub(mut self, names: &[&str]) -> Self {
        self.0.resource_names_subscribe.extend(names.iter().map(|n| n.to_string()));
        self
    }
    fn unsub(mut self, names: &[&str]) -> Self {
        self.0.resource_names_unsubscribe.extend(names.iter().map(|n| n.to_string()));
        self
    }
    fn ack(mut self, nonce: &str) -> Self {
        self.0.response_nonce = nonce.to_string();
        self
    }
    fn nack(self, nonce: &str, message: &str) -> Self {
        let mut r = self.ack(nonce);
        r.0.error_detail = Some(Status { code: 3, message: message.to_string(), details: vec![] });
        r
    }
    fn initial(mut self, versions: &[(&str, &str)]) -> Self {
        self.0.initial_resource_versions = versions.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self
    }
}

/// A stream with a view, and what it said last.
struct Proxy {
    stream: DeltaStream,
}

impl Proxy {
    fn new(view: Arc<ProxyView>) -> Self {
        let mut stream = DeltaStream::new();
        stream.set_view(view);
        assert!(stream.take_responses().is_empty(), "nothing is sent before a request");
        Self { stream }
    }

    fn send(&mut self, req: Req) -> Vec<DeltaDiscoveryResponse> {
        self.stream.handle_request(req.0).expect("valid request");
        self.stream.take_responses().iter().map(wire).collect()
    }

    fn push(&mut self, view: Arc<ProxyView>) -> Vec<DeltaDiscoveryResponse> {
        self.stream.set_view(view);
        self.stream.take_responses().iter().map(wire).collect()
    }

    fn events(&mut self) -> Vec<StreamEvent> {
        self.stream.take_events().into_iter().filter(|e| !matches!(e, StreamEvent::Pushed { .. })).collect()
    }

    /// Send a request that must produce exactly one response, and return it.
    fn send_one(&mut self, req: Req) -> DeltaDiscoveryResponse {
        one(self.send(req))
    }

    fn push_one(&mut self, view: Arc<ProxyView>) -> DeltaDiscoveryResponse {
        one(self.push(view))
    }
}

/// A response as the proxy receives it: encoded for the wire and decoded
/// again, which must give the prost message the response stands for.
fn wire(response: &DeltaResponse) -> DeltaDiscoveryResponse {
    let bytes = response.encode().to_bytes();
    let decoded = DeltaDiscoveryResponse::decode(&bytes[5..]).expect("a valid DeltaDiscoveryResponse");
    assert_eq!(decoded, response.to_proto());
    decoded
}

fn one(mut responses: Vec<DeltaDiscoveryResponse>) -> DeltaDiscoveryResponse {
    assert_eq!(responses.len(), 1, "expected one response, got {:#?}", summary(&responses));
    responses.remove(0)
}

/// (type, sent names, removed names) of each response.
fn summary(responses: &[DeltaDiscoveryResponse]) -> Vec<(&'static str, Vec<String>, Vec<String>)> {
    responses
        .iter()
        .map(|r| {
            let ty = ResourceType::from_type_url(&r.type_url).expect("known type").short();
            (ty, sent(r), r.removed_resources.clone())
        })
        .collect()
}

fn sent(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|r| r.name.clone()).collect()
}

/// A proxy that subscribed to everything in `mesh` and ACKed it all.
fn synced_proxy() -> Proxy {
    let mut p = Proxy::new(mesh(1).build());
    let cds = p.send_one(req(CDS));
    let eds = p.send_one(req(EDS).sub(&["c1", "c2"]));
    assert!(p.send(req(CDS).ack(&cds.nonce)).is_empty());
    let lds = p.send_one(req(LDS));
    let rds = p.send_one(req(RDS).sub(&["r1"]));
    assert!(p.send(req(EDS).ack(&eds.nonce)).is_empty());
    assert!(p.send(req(LDS).ack(&lds.nonce)).is_empty());
    assert!(p.send(req(RDS).ack(&rds.nonce)).is_empty());
    p.events();
    p
}

#[test]
fn initial_wildcard_cds_and_lds() {
    let mut p = Proxy::new(mesh(7).build());
    let cds = p.send_one(req(CDS));
    assert_eq!(cds.type_url, CDS.type_url());
    assert_eq!(cds.system_version_info, "7");
    assert_eq!(sent(&cds), s(&["c1", "c2"]));
    assert!(cds.removed_resources.is_empty());
    let c1 = &cds.resources[0];
    assert_eq!(c1.version, version("cluster one"));
    let any = c1.resource.as_ref().expect("resource body");
    assert_eq!(any.type_url, CDS.type_url());
    assert_eq!(any.value, b"cluster one");

    let lds = p.send_one(req(LDS));
    assert_eq!(sent(&lds), s(&["l1"]));
    assert_ne!(lds.nonce, cds.nonce, "every response has a fresh nonce");

    assert!(p.send(req(CDS).ack(&cds.nonce)).is_empty());
    assert!(p.send(req(LDS).ack(&lds.nonce)).is_empty());
    assert_eq!(
        p.events(),
        vec![
            StreamEvent::Ack { ty: CDS, nonce: cds.nonce.clone() },
            StreamEvent::Ack { ty: LDS, nonce: lds.nonce.clone() },
        ]
    );
}

#[test]
fn first_wildcard_request_is_answered_even_when_empty() {
    let mut p = Proxy::new(view(1).build());
    let cds = p.send_one(req(CDS));
    assert!(cds.resources.is_empty() && cds.removed_resources.is_empty());
    // Named subscriptions to resources that do not exist: nothing to say.
    assert!(p.send(req(EDS).sub(&["nope"])).is_empty());
    assert!(p.send(req(CDS).ack(&cds.nonce)).is_empty());
}

#[test]
fn eds_and_rds_by_name() {
    let mut p = Proxy::new(mesh(1).with(RDS, "r2", "route two").build());
    assert!(p.send(req(EDS)).is_empty(), "an empty first EDS request subscribes to nothing");
    let eds = p.send_one(req(EDS).sub(&["c1"]));
    assert_eq!(sent(&eds), s(&["c1"]));
    let rds = p.send_one(req(RDS).sub(&["r2"]));
    assert_eq!(sent(&rds), s(&["r2"]));
    p.send(req(EDS).ack(&eds.nonce));
    // Adding a name sends only that name.
    let eds = p.send_one(req(EDS).sub(&["c2"]));
    assert_eq!(sent(&eds), s(&["c2"]));
}

#[test]
fn ack_then_change_sends_only_the_change() {
    let mut p = synced_proxy();
    let r = p.push_one(mesh(2).with(LDS, "l1", "listener one v2").build());
    assert_eq!(summary(std::slice::from_ref(&r)), vec![("lds", s(&["l1"]), vec![])]);
    assert_eq!(r.system_version_info, "2");
    assert_eq!(r.resources[0].version, version("listener one v2"));
}

#[test]
fn one_response_in_flight_per_type() {
    let mut p = synced_proxy();
    let first = p.push_one(mesh(2).with(EDS, "c1", "v2").build());
    // Not ACKed yet: further changes wait, and coalesce.
    assert!(p.push(mesh(3).with(EDS, "c1", "v3").with(EDS, "c2", "v3").build()).is_empty());
    assert!(p.push(mesh(4).with(EDS, "c1", "v2").with(EDS, "c2", "v4").build()).is_empty());
    let next = p.send_one(req(EDS).ack(&first.nonce));
    assert_eq!(sent(&next), s(&["c2"]), "c1 is back to what the proxy holds");
    assert_eq!(next.resources[0].version, version("v4"));
}

#[test]
fn nack_is_not_recorded_and_not_resent_until_content_changes() {
    let mut p = synced_proxy();
    let bad = p.push_one(mesh(2).with(EDS, "c1", "bad").build());
    assert!(p.send(req(EDS).nack(&bad.nonce, "c1: invalid weight")).is_empty());
    assert_eq!(
        p.events(),
        vec![StreamEvent::Nack {
            ty: EDS,
            nonce: bad.nonce.clone(),
            names: vec!["c1".into()],
            code: 3,
            message: "c1: invalid weight".into(),
        }]
    );

    // Another resource changes: only it is sent, not the rejected c1.
    let r = p.push_one(mesh(3).with(EDS, "c1", "bad").with(EDS, "c2", "two v2").build());
    assert_eq!(sent(&r), s(&["c2"]));
    p.send(req(EDS).ack(&r.nonce));
    assert!(p.push(mesh(4).with(EDS, "c1", "bad").with(EDS, "c2", "two v2").build()).is_empty());

    // The view goes back to what the proxy had: nothing to send (the NACKed
    // version was not recorded as held).
    assert!(p.push(mesh(5).with(EDS, "c2", "two v2").build()).is_empty());
}

#[test]
fn fixed_content_is_sent_after_nack() {
    let mut p = synced_proxy();
    let bad = p.push_one(mesh(2).with(EDS, "c1", "bad").build());
    p.send(req(EDS).nack(&bad.nonce, "invalid"));
    let fixed = p.push_one(mesh(3).with(EDS, "c1", "good").build());
    assert_eq!(sent(&fixed), s(&["c1"]));
    assert_eq!(fixed.resources[0].version, version("good"));
}

#[test]
fn nack_leaves_other_types_and_resources_alone() {
    let mut p = synced_proxy();
    let lds = p.push_one(mesh(2).with(LDS, "l1", "bad listener").build());
    p.send(req(LDS).nack(&lds.nonce, "bad filter"));
    let responses = p.push(
        mesh(3).with(LDS, "l1", "bad listener").with(LDS, "l2", "listener two").with(EDS, "c1", "endpoints v2").build(),
    );
    assert_eq!(summary(&responses), vec![("eds", s(&["c1"]), vec![]), ("lds", s(&["l2"]), vec![])]);
}

#[test]
fn nacked_removal_is_not_repeated() {
    let mut p = synced_proxy();
    let add = p.push_one(mesh(2).with(LDS, "l2", "listener two").build());
    p.send(req(LDS).ack(&add.nonce));
    let removal = p.push_one(mesh(3).build());
    assert_eq!(removal.removed_resources, s(&["l2"]));
    p.send(req(LDS).nack(&removal.nonce, "cannot remove"));
    assert!(p.push(mesh(4).build()).is_empty());
    // It comes back: the proxy holds it at that version, nothing to send.
    assert!(p.push(mesh(5).with(LDS, "l2", "listener two").build()).is_empty());
}

#[test]
fn stale_nonce_is_no_ack_but_subscriptions_apply() {
    let mut p = Proxy::new(mesh(1).with(EDS, "c3", "endpoints three").build());
    let first = p.send_one(req(EDS).sub(&["c1"]));
    p.send(req(EDS).ack(&first.nonce));
    let second = p.push_one(mesh(2).with(EDS, "c1", "endpoints v2").with(EDS, "c3", "e3").build());
    p.events();

    // The first nonce again, with a new subscription: not an ACK of `second`.
    assert!(p.send(req(EDS).ack(&first.nonce).sub(&["c3"])).is_empty(), "second is in flight");
    assert_eq!(p.events(), vec![StreamEvent::StaleNonce { ty: EDS, nonce: first.nonce.clone(), nack_message: None }]);
    // A stale NACK does not revert anything either.
    p.send(req(EDS).nack(&first.nonce, "old news"));
    assert!(matches!(p.events()[..], [StreamEvent::StaleNonce { nack_message: Some(_), .. }]));

    // The subscription made it: c3 follows the ACK of `second`.
    let third = p.send_one(req(EDS).ack(&second.nonce));
    assert_eq!(sent(&third), s(&["c3"]));
}

#[test]
fn subscribe_unsubscribe_resubscribe() {
    let mut p = Proxy::new(mesh(1).build());
    let eds = p.send_one(req(EDS).sub(&["c1", "c2"]));
    p.send(req(EDS).ack(&eds.nonce));
    assert!(p.send(req(EDS).unsub(&["c1"])).is_empty(), "unsubscribing needs no answer");
    // The proxy no longer wants c1: its removal is not announced.
    assert!(p.push(view(2).with(EDS, "c2", "endpoints two").build()).is_empty());
    assert!(p.push(mesh(3).build()).is_empty());
    // Subscribing again sends it even though nothing changed.
    let again = p.send_one(req(EDS).sub(&["c1"]));
    assert_eq!(sent(&again), s(&["c1"]));
    p.send(req(EDS).ack(&again.nonce));
    // Resubscribing something already held sends it again too.
    let again = p.send_one(req(EDS).sub(&["c2"]));
    assert_eq!(sent(&again), s(&["c2"]));
}

#[test]
fn explicit_wildcard_subscribe_and_unsubscribe() {
    let mut p = Proxy::new(mesh(1).with(CDS, "c3", "three").build());
    let cds = p.send_one(req(CDS).sub(&["*", "c1"]));
    assert_eq!(sent(&cds), s(&["c1", "c2", "c3"]));
    p.send(req(CDS).ack(&cds.nonce));
    // Leaving the wildcard keeps only c1; the rest is forgotten, not removed.
    assert!(p.send(req(CDS).unsub(&["*"])).is_empty());
    assert!(p.push(view(2).with(CDS, "c1", "cluster one").build()).is_empty());
    let r = p.push_one(view(3).build());
    assert_eq!(r.removed_resources, s(&["c1"]));
}

#[test]
fn add_remove_add() {
    let mut p = synced_proxy();
    let add = p.push_one(mesh(2).with(CDS, "c3", "three").build());
    assert_eq!(sent(&add), s(&["c3"]));
    p.send(req(CDS).ack(&add.nonce));
    let remove = p.push_one(mesh(3).build());
    assert_eq!(summary(std::slice::from_ref(&remove)), vec![("cds", vec![], s(&["c3"]))]);
    p.send(req(CDS).ack(&remove.nonce));
    let add = p.push_one(mesh(4).with(CDS, "c3", "three").build());
    assert_eq!(sent(&add), s(&["c3"]));
}

#[test]
fn reconnect_sends_only_what_differs() {
    let mut p = Proxy::new(mesh(9).with(CDS, "c3", "three").build());
    let cds = p.send_one(req(CDS).initial(&[
        ("c1", &version("cluster one")),
        ("c2", "an older version"),
        ("gone", "whatever"),
    ]));
    assert_eq!(summary(&[cds]), vec![("cds", s(&["c2", "c3"]), s(&["gone"]))]);

    // Current endpoints are not resent, except those of the updated cluster
    // c2 (Envoy warms an updated cluster until its endpoints arrive again)...
    let eds = p.send_one(
        req(EDS).sub(&["c1", "c2"]).initial(&[("c1", &version("endpoints one")), ("c2", &version("endpoints two"))]),
    );
    assert_eq!(sent(&eds), s(&["c2"]));
    // ...and a vanished named resource is removed.
    let rds = p.send_one(req(RDS).sub(&["r1", "r9"]).initial(&[("r1", &version("route one")), ("r9", "v")]));
    assert_eq!(summary(&[rds]), vec![("rds", vec![], s(&["r9"]))]);
}

#[test]
fn a_stream_keeps_no_copies_of_what_the_view_has() {
    // Names from requests and versions a reconnecting proxy reports are the
    // view's own allocations once resolved: a stream's state is pointers.
    // (Bodies no other test uses: resources are shared by content.)
    let view = view(1)
        .with(CDS, "c1", "no copies: cluster one")
        .with(CDS, "c2", "no copies: cluster two")
        .with(EDS, "c1", "no copies: endpoints one")
        .build();
    let (eds_name, eds) = view.endpoints.get_key_value("c1").map(|(n, r)| (n.clone(), r.clone())).unwrap();
    let cluster = view.clusters["c1"].clone();
    let (name_refs, eds_refs, cluster_refs) =
        (Arc::strong_count(&eds_name), Arc::strong_count(&eds), Arc::strong_count(&cluster));
    let mut p = Proxy::new(view);
    let initial = [("c1", version("no copies: cluster one")), ("c2", version("no copies: cluster two"))];
    let cds = p.send(req(CDS).initial(&initial.iter().map(|(n, v)| (*n, v.as_str())).collect::<Vec<_>>()));
    assert!(cds.iter().all(|r| r.resources.is_empty()), "the proxy holds every cluster already");
    assert_eq!(Arc::strong_count(&cluster), cluster_refs + 1, "held c1 is the view's resource, not a copy");
    p.send(req(EDS).sub(&["c1", "c2"]).initial(&[("c1", &version("no copies: endpoints one"))]));
    assert!(Arc::strong_count(&eds_name) > name_refs, "the subscribed name c1 is the view's Arc");
    assert!(Arc::strong_count(&eds) > eds_refs, "held c1 endpoints are the view's resource");
}

#[test]
fn a_rebuild_with_unchanged_content_releases_the_previous_allocations() {
    // Bodies no other test uses: resources are shared by content.
    let v1 = view(1).with(CDS, "c1", "delta rebuild: one").with(CDS, "c2", "delta rebuild: two").build();
    let v2 = reallocated(&v1);
    let previous = Arc::downgrade(&v1.clusters["c1"]);
    let mut p = Proxy::new(v1);
    let cds = p.send_one(req(CDS));
    assert!(p.send(req(CDS).ack(&cds.nonce)).is_empty());
    // Same content, allocated anew: nothing to send, and the stream lets go
    // of the previous allocation.
    assert!(p.push(v2).is_empty());
    assert!(previous.upgrade().is_none(), "the stream keeps a superseded c1 alive");
}

#[test]
fn updated_cluster_is_followed_by_its_endpoints() {
    let mut p = synced_proxy();
    let responses = p.push(mesh(2).with(CDS, "c1", "cluster one v2").build());
    assert_eq!(
        summary(&responses),
        vec![("cds", s(&["c1"]), vec![]), ("eds", s(&["c1"]), vec![])],
        "Envoy warms an updated cluster until it gets its endpoints again"
    );
}

#[test]
fn reconnect_with_updated_cluster_resends_its_endpoints() {
    let mut p = Proxy::new(mesh(2).build());
    let cds = p.send_one(req(CDS).initial(&[("c1", "old"), ("c2", &version("cluster two"))]));
    assert_eq!(sent(&cds), s(&["c1"]));
    // EDS reconnects claiming current endpoints; c1's are sent all the same.
    let eds = p.send_one(
        req(EDS).sub(&["c1", "c2"]).initial(&[("c1", &version("endpoints one")), ("c2", &version("endpoints two"))]),
    );
    assert_eq!(sent(&eds), s(&["c1"]));
}

#[test]
fn responses_follow_push_order() {
    let mut p = synced_proxy();
    let responses = p.push(
        view(2)
            .with(CDS, "c1", "c1 v2")
            .with(CDS, "c2", "cluster two")
            .with(EDS, "c1", "e1 v2")
            .with(EDS, "c2", "endpoints two")
            .with(LDS, "l1", "l1 v2")
            .with(RDS, "r1", "r1 v2")
            .build(),
    );
    let order: Vec<_> = summary(&responses).into_iter().map(|(ty, ..)| ty).collect();
    assert_eq!(order, vec!["cds", "eds", "lds", "rds"]);
}

#[test]
fn cluster_removal_waits_for_listeners_and_routes() {
    let mut p = synced_proxy();
    // c2 goes away together with the listener and route changes that stop
    // using it.
    let next = view(2)
        .with(CDS, "c1", "cluster one")
        .with(EDS, "c1", "endpoints one")
        .with(LDS, "l1", "listener one without c2")
        .with(RDS, "r1", "route one without c2")
        .build();
    let responses = p.push(next.clone());
    assert_eq!(summary(&responses), vec![("lds", s(&["l1"]), vec![]), ("rds", s(&["r1"]), vec![]),]);
    assert!(p.send(req(LDS).ack(&responses[0].nonce)).is_empty(), "the route is not ACKed yet");
    let removals = p.send(req(RDS).ack(&responses[1].nonce));
    assert_eq!(summary(&removals), vec![("cds", vec![], s(&["c2"])), ("eds", vec![], s(&["c2"]))]);
}

#[test]
fn cluster_removal_waits_while_a_listener_is_rejected() {
    let mut p = synced_proxy();
    let next = view(2)
        .with(CDS, "c1", "cluster one")
        .with(EDS, "c1", "endpoints one")
        .with(EDS, "c2", "endpoints two")
        .with(LDS, "l1", "listener without c2")
        .with(RDS, "r1", "route one")
        .build();
    let lds = p.push_one(next.clone());
    p.send(req(LDS).nack(&lds.nonce, "bad listener"));
    // The proxy still routes to c2 with its old listener: c2 stays.
    assert!(p.push(next).is_empty());
    let fixed = p.push_one(
        view(3)
            .with(CDS, "c1", "cluster one")
            .with(EDS, "c1", "endpoints one")
            .with(EDS, "c2", "endpoints two")
            .with(LDS, "l1", "fixed listener without c2")
            .with(RDS, "r1", "route one")
            .build(),
    );
    let removal = p.send(req(LDS).ack(&fixed.nonce));
    assert_eq!(summary(&removal), vec![("cds", vec![], s(&["c2"]))]);
}

#[test]
fn listeners_wait_for_clusters_queued_behind_an_unacked_cds_response() {
    let mut p = synced_proxy();
    let responses = p.push(mesh(2).with(CDS, "c1", "c1 v2").build());
    assert_eq!(summary(&responses), vec![("cds", s(&["c1"]), vec![]), ("eds", s(&["c1"]), vec![])]);
    let cds = &responses[0];
    // A new cluster and a listener using it, while CDS is still in flight.
    let next = mesh(3).with(CDS, "c1", "c1 v2").with(CDS, "c3", "three").with(LDS, "l1", "listener using c3").build();
    assert!(p.push(next).is_empty());
    let responses = p.send(req(CDS).ack(&cds.nonce));
    assert_eq!(summary(&responses), vec![("cds", s(&["c3"]), vec![]), ("lds", s(&["l1"]), vec![])]);
}

#[test]
fn unknown_types_are_reported_and_ignored() {
    let mut p = Proxy::new(mesh(1).build());
    let unknown = DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/envoy.service.runtime.v3.Runtime".into(),
        ..Default::default()
    };
    p.stream.handle_request(unknown).expect("ignored, not an error");
    assert!(p.stream.take_responses().is_empty());
    assert_eq!(
        p.events(),
        vec![StreamEvent::UnknownType { type_url: "type.googleapis.com/envoy.service.runtime.v3.Runtime".into() }]
    );
    assert_eq!(p.stream.handle_request(DeltaDiscoveryRequest::default()), Err(ProtocolError::MissingTypeUrl));
}

#[test]
fn nothing_is_sent_before_the_first_view() {
    let mut stream = DeltaStream::new();
    stream.handle_request(req(CDS).0).unwrap();
    assert!(stream.take_responses().is_empty());
    stream.set_view(mesh(1).build());
    assert_eq!(
        summary(&stream.take_responses().iter().map(wire).collect::<Vec<_>>()),
        vec![("cds", s(&["c1", "c2"]), vec![])]
    );
}

#[test]
fn route_updates_wait_until_new_clusters_can_warm() {
    // A route to a new cluster must not arrive before the cluster's endpoints:
    // Envoy only asks for them after applying the cluster, and until they
    // arrive the cluster is warming and requests routed to it fail (503 NC).
    let mut p = synced_proxy();
    let next =
        mesh(2).with(CDS, "c3", "cluster three").with(EDS, "c3", "endpoints three").with(RDS, "r1", "route to c3");
    let cds = p.push_one(next.build());
    assert_eq!(summary(std::slice::from_ref(&cds)), vec![("cds", s(&["c3"]), vec![])], "the route waits");
    assert!(p.send(req(CDS).ack(&cds.nonce)).is_empty(), "still waiting for the endpoints subscription");
    let responses = p.send(req(EDS).sub(&["c3"]));
    assert_eq!(
        summary(&responses),
        vec![("eds", s(&["c3"]), vec![]), ("rds", s(&["r1"]), vec![])],
        "endpoints first, then the route, on the same stream"
    );
}

/// The shortcut of comparing views instead of held versions
/// (`TypeState::synced`) must never change what a stream sends: random
/// sequences of view changes, ACKs, NACKs, stale nonces and subscription
/// changes give the same responses and events with and without it.
#[test]
fn comparing_views_sends_what_comparing_every_resource_sends() {
    /// xorshift64*: deterministic, so a failing seed can be replayed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }
    const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
    const TYPES: [ResourceType; 4] = [CDS, EDS, LDS, RDS];

    /// Change a few resources of a view; unchanged ones keep their `Arc`, and
    /// some are re-made with the same content (a new `Arc`, the same version).
    fn mutate(rng: &mut Rng, view: &ProxyView, revision: i64) -> Arc<ProxyView> {
        let mut next = view.clone();
        next.revision = revision;
        for _ in 0..=rng.below(3) {
            let ty = TYPES[rng.below(TYPES.len())];
            let name = NAMES[rng.below(NAMES.len())];
            let map = next.resources_mut(ty);
            match rng.below(4) {
                0 => {
                    map.remove(name);
                }
                1 => {
                    if let Some(r) = map.get(name).cloned() {
                        map.insert(r.name.clone(), Resource::from_bytes(name, r.body.clone()));
                    }
                }
                _ => {
                    let body = format!("{name} v{}", rng.below(3));
                    map.insert(name.into(), Resource::from_bytes(name, Bytes::from(body)));
                }
            }
        }
        Arc::new(next)
    }

    fn random_request(rng: &mut Rng, nonces: &BTreeMap<ResourceType, String>) -> DeltaDiscoveryRequest {
        let ty = TYPES[rng.below(TYPES.len())];
        let mut r = req(ty);
        let nonce = nonces.get(&ty).cloned();
        match rng.below(10) {
            0..=4 => r = r.ack(nonce.as_deref().unwrap_or("stale")),
            5 => r = r.nack(nonce.as_deref().unwrap_or("stale"), "rejected"),
            6 => r = r.ack("stale"),
            7 => r = r.sub(&[NAMES[rng.below(NAMES.len())]]),
            8 => r = r.unsub(&[NAMES[rng.below(NAMES.len())]]),
            _ => r = r.sub(&["*"]),
        }
        r.0
    }

    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut view: Arc<ProxyView> = Arc::new(ProxyView::default());
        for _ in 0..4 {
            view = mutate(&mut rng, &view, 1);
        }
        let (mut fast, mut full) = (DeltaStream::new(), DeltaStream::new());
        full.exhaustive = true;
        for stream in [&mut fast, &mut full] {
            stream.set_view(view.clone());
            stream.handle_request(req(CDS).0).unwrap();
            stream.handle_request(req(LDS).0).unwrap();
            stream.handle_request(req(EDS).sub(&NAMES[..3]).0).unwrap();
            stream.handle_request(req(RDS).sub(&NAMES[..2]).0).unwrap();
        }
        let mut nonces: BTreeMap<ResourceType, String> = BTreeMap::new();
        for step in 0..80 {
            let (a, b) = (fast.take_responses(), full.take_responses());
            assert_eq!(a, b, "seed {seed} step {step}: responses differ");
            assert_eq!(fast.take_events(), full.take_events(), "seed {seed} step {step}: events differ");
            for r in &a {
                nonces.insert(r.ty, r.nonce.clone());
            }
            if rng.chance(40) {
                view = mutate(&mut rng, &view, step + 2);
                fast.set_view(view.clone());
                full.set_view(view.clone());
            } else {
                let request = random_request(&mut rng, &nonces);
                fast.handle_request(request.clone()).unwrap();
                full.handle_request(request).unwrap();
            }
        }
    }
}
