//! The relay cores, synchronously: request/response builders for the
//! protocol cases, and the relay between a proxy and the shard's own sans-IO
//! ADS state machines (old owner, new owner) to check re-homing end to end
//! without IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use meshplane_shard::ads::{DeltaStream, SotwStream};
use meshplane_shard::resources::{ProxyView, Resource as ShardResource, ResourceType};

use super::{DeltaRelay, RelayError, RelayEvent, SotwRelay};

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const NODE: &str = "sidecar~10.1.2.3~client-1.shop~shop.svc.cluster.local";

fn node() -> Option<Node> {
    Some(Node { id: NODE.into(), ..Default::default() })
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn versions(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

/// A Delta request builder.
fn dreq(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { type_url: type_url.into(), ..Default::default() }
}

fn subscribe(mut req: DeltaDiscoveryRequest, names: &[&str]) -> DeltaDiscoveryRequest {
    req.resource_names_subscribe = strings(names);
    req
}

fn ack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest { type_url: type_url.into(), response_nonce: nonce.into(), ..Default::default() }
}

fn nack(type_url: &str, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(RpcStatus { code: 3, message: "bad config".into(), details: vec![] }),
        ..ack(type_url, nonce)
    }
}

fn dresp(type_url: &str, nonce: &str, resources: &[(&str, &str)], removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        resources: resources
            .iter()
            .map(|(n, v)| Resource { name: n.to_string(), version: v.to_string(), ..Default::default() })
            .collect(),
        removed_resources: strings(removed),
        ..Default::default()
    }
}

/// A relay connected to its first upstream, CDS (legacy wildcard) subscribed.
fn delta_relay() -> DeltaRelay {
    let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq(CDS) }).unwrap();
    let replay = relay.connect();
    assert_eq!(replay.len(), 1);
    relay
}

#[test]
fn delta_first_request_needs_a_node_and_every_request_a_type() {
    assert_eq!(DeltaRelay::new(dreq(CDS)).unwrap_err(), RelayError::MissingNode);
    let err = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq("") }).unwrap_err();
    assert_eq!(err, RelayError::MissingTypeUrl);
    let mut relay = delta_relay();
    assert_eq!(relay.on_proxy_request(dreq("")).unwrap_err(), RelayError::MissingTypeUrl);
}

#[test]
fn delta_first_connect_replays_the_first_request_with_its_node() {
    let first = DeltaDiscoveryRequest {
        node: node(),
        initial_resource_versions: [("c1".to_string(), "v1".to_string())].into(),
        ..dreq(CDS)
    };
    let mut relay = DeltaRelay::new(first).unwrap();
    assert_eq!(relay.node_id(), NODE);
    let replay = relay.connect();
    assert_eq!(replay.len(), 1);
    let r = &replay[0];
    assert_eq!(r.node.as_ref().unwrap().id, NODE);
    assert_eq!(r.type_url, CDS);
    assert!(r.resource_names_subscribe.is_empty(), "legacy wildcard stays legacy");
    assert!(r.resource_names_unsubscribe.is_empty());
    assert_eq!(r.initial_resource_versions, [("c1".to_string(), "v1".to_string())].into());
    assert_eq!(relay.epoch(), 1);
}

#[test]
fn delta_nonces_are_translated_both_ways() {
    let mut relay = delta_relay();
    let out = relay.on_upstream_response(dresp(CDS, "7", &[("c1", "v1")], &[]));
    assert_eq!(out.nonce, "1.7");
    let forwarded =
        relay.on_proxy_request(ack(CDS, "1.7")).unwrap().expect("an ACK of the current upstream is forwarded");
    assert_eq!(forwarded.response_nonce, "7");
    assert!(forwarded.error_detail.is_none());
    let forwarded = relay.on_upstream_response(dresp(CDS, "8", &[("c1", "v2")], &[]));
    let nacked = relay.on_proxy_request(nack(CDS, &forwarded.nonce)).unwrap().expect("a NACK is forwarded");
    assert_eq!(nacked.response_nonce, "8");
    assert_eq!(nacked.error_detail.unwrap().message, "bad config");
    assert!(relay.take_events().is_empty());
}

#[test]
fn delta_records_acked_versions_and_never_nacked_ones() {
    let mut relay = delta_relay();
    let r1 = relay.on_upstream_response(dresp(CDS, "1", &[("c1", "v1"), ("c2", "v1")], &[]));
    assert!(relay.acked(CDS).is_empty(), "not recorded before the ACK");
    assert!(!relay.settled());
    relay.on_proxy_request(ack(CDS, &r1.nonce)).unwrap();
    assert_eq!(relay.acked(CDS), versions(&[("c1", "v1"), ("c2", "v1")]));
    assert!(relay.settled());

    let r2 = relay.on_upstream_response(dresp(CDS, "2", &[("c2", "v2")], &["c1"]));
    relay.on_proxy_request(nack(CDS, &r2.nonce)).unwrap();
    assert_eq!(relay.acked(CDS), versions(&[("c1", "v1"), ("c2", "v1")]), "a NACKed response changes nothing");

    let r3 = relay.on_upstream_response(dresp(CDS, "3", &[("c3", "v1")], &["c1"]));
    relay.on_proxy_request(ack(CDS, &r3.nonce)).unwrap();
    assert_eq!(relay.acked(CDS), versions(&[("c2", "v1"), ("c3", "v1")]), "removals are applied on ACK");

    let replay = relay.connect();
    assert_eq!(replay[0].initial_resource_versions, versions(&[("c2", "v1"), ("c3", "v1")]).into_iter().collect());
}

#[test]
fn delta_stale_ack_is_absorbed_and_still_teaches_versions() {
    let mut relay = delta_relay();
    let r1 = relay.on_upstream_response(dresp(CDS, "3", &[("c1", "v1")], &[]));
    // Re-home before the proxy answers: the replay names only what was ACKed.
    relay.disconnect();
    let replay = relay.connect();
    assert!(replay[0].initial_resource_versions.is_empty());
    assert!(relay.settled(), "a response of an earlier upstream does not hold a move back");
    // The new upstream issues the same nonce "3" for a different response.
    let r2 = relay.on_upstream_response(dresp(CDS, "3", &[("c2", "v1")], &[]));
    assert_eq!(r2.nonce, "2.3");
    assert_ne!(r1.nonce, r2.nonce, "the proxy never sees two responses with one nonce");

    // The proxy ACKs the old response: not for the new upstream, which never issued it...
    assert_eq!(relay.on_proxy_request(ack(CDS, &r1.nonce)).unwrap(), None);
    assert_eq!(relay.take_events(), [RelayEvent::StaleAck { type_url: CDS.into(), nonce: "1.3".into() }]);
    // ...but the proxy holds those versions now.
    assert_eq!(relay.acked(CDS), versions(&[("c1", "v1")]));
    // The new upstream's own response is ACKed with its own nonce.
    let forwarded = relay.on_proxy_request(ack(CDS, &r2.nonce)).unwrap().unwrap();
    assert_eq!(forwarded.response_nonce, "3");
    assert_eq!(relay.acked(CDS), versions(&[("c1", "v1"), ("c2", "v1")]));
}

#[test]
fn delta_stale_nack_is_absorbed_and_its_subscription_changes_forwarded() {
    let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..subscribe(dreq(EDS), &["a"]) }).unwrap();
    relay.connect();
    let r1 = relay.on_upstream_response(dresp(EDS, "1", &[("a", "v1")], &[]));
    relay.disconnect();
    relay.connect();
    let mut req = subscribe(nack(EDS, &r1.nonce), &["b"]);
    req.initial_resource_versions.insert("x".into(), "y".into());
    let forwarded = relay.on_proxy_request(req).unwrap().expect("the subscription change must reach the new upstream");
    assert_eq!(forwarded.response_nonce, "");
    assert!(forwarded.error_detail.is_none());
    assert!(forwarded.initial_resource_versions.is_empty());
    assert_eq!(forwarded.resource_names_subscribe, ["b"]);
    assert!(matches!(&relay.take_events()[..], [RelayEvent::StaleNack { message, .. }] if message == "bad config"));
    assert!(relay.acked(EDS).is_empty(), "NACKed versions are not recorded");
}

#[test]
fn delta_foreign_nonces_are_stale() {
    let mut relay = delta_relay();
    // A nonce this relay never issued (a previous frontend's, say): "1.7" parses,
    // but no CDS response was relayed yet in this epoch.
    assert_eq!(relay.on_proxy_request(ack(CDS, "1.7")).unwrap(), None);
    assert_eq!(relay.on_proxy_request(ack(CDS, "garbage")).unwrap(), None);
    assert_eq!(relay.take_events().len(), 2);
}

#[test]
fn delta_replay_carries_every_subscription_shape() {
    let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq(LDS) }).unwrap();
    relay.on_proxy_request(subscribe(dreq(CDS), &["*", "extra"])).unwrap();
    relay
        .on_proxy_request(DeltaDiscoveryRequest { resource_names_unsubscribe: strings(&["*", "extra"]), ..dreq(CDS) })
        .unwrap();
    relay.on_proxy_request(subscribe(dreq(RDS), &["80", "9080"])).unwrap();
    relay.on_proxy_request(subscribe(dreq(EDS), &["*", "e1"])).unwrap();
    relay.on_proxy_request(subscribe(dreq("type.example/Other"), &["o"])).unwrap();
    assert_eq!(
        relay.on_proxy_request(subscribe(dreq(RDS), &["443"])).unwrap(),
        None,
        "nothing is forwarded unconnected"
    );

    let replay = relay.connect();
    let by_type: Vec<(&str, Vec<String>, Vec<String>)> = replay
        .iter()
        .map(|r| (r.type_url.as_str(), r.resource_names_subscribe.clone(), r.resource_names_unsubscribe.clone()))
        .collect();
    assert_eq!(
        by_type,
        [
            (CDS, vec![], strings(&["*"])),
            (EDS, strings(&["*", "e1"]), vec![]),
            (LDS, vec![], vec![]),
            (RDS, strings(&["443", "80", "9080"]), vec![]),
            ("type.example/Other", strings(&["o"]), vec![]),
        ],
        "push order, each subscription expressed for a type's first request"
    );
    assert!(replay[0].node.is_some());
    assert!(replay[1..].iter().all(|r| r.node.is_none()), "the node is sent once per stream");
}

#[test]
fn delta_unsubscribed_names_are_forgotten() {
    let mut relay =
        DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..subscribe(dreq(EDS), &["a", "b"]) }).unwrap();
    relay.connect();
    let r = relay.on_upstream_response(dresp(EDS, "1", &[("a", "v1"), ("b", "v1")], &[]));
    relay.on_proxy_request(ack(EDS, &r.nonce)).unwrap();
    let forwarded = relay
        .on_proxy_request(DeltaDiscoveryRequest { resource_names_unsubscribe: strings(&["a"]), ..dreq(EDS) })
        .unwrap()
        .expect("subscription changes are forwarded");
    assert_eq!(forwarded.resource_names_unsubscribe, ["a"]);
    assert_eq!(relay.acked(EDS), versions(&[("b", "v1")]));
    let replay = relay.connect();
    assert_eq!(replay[0].resource_names_subscribe, ["b"]);
    assert_eq!(replay[0].initial_resource_versions, versions(&[("b", "v1")]).into_iter().collect());
}

#[test]
fn delta_first_request_of_a_type_is_forwarded_as_is_when_connected() {
    let mut relay = delta_relay();
    let req = DeltaDiscoveryRequest {
        response_nonce: "0.9".into(),
        initial_resource_versions: [("r".to_string(), "v".to_string())].into(),
        ..subscribe(dreq(RDS), &["r"])
    };
    let forwarded = relay.on_proxy_request(req).unwrap().unwrap();
    assert_eq!(forwarded.response_nonce, "");
    assert_eq!(forwarded.initial_resource_versions.len(), 1);
    assert_eq!(relay.acked(RDS), versions(&[("r", "v")]), "a reconnecting proxy's versions seed the soft state");
}

fn at_revision(mut resp: DeltaDiscoveryResponse, system_version_info: &str) -> DeltaDiscoveryResponse {
    resp.system_version_info = system_version_info.into();
    resp
}

#[test]
fn delta_tracks_the_highest_revision_the_proxy_was_sent() {
    let mut relay = delta_relay();
    assert_eq!((relay.revision(), relay.min_revision(99)), (0, 0), "nothing sent: nothing to wait for");

    relay.on_upstream_response(at_revision(dresp(CDS, "1", &[("a", "v1")], &[]), "7"));
    assert_eq!(relay.revision(), 7);
    // Not revisions: ignored.
    for info in ["", "abc", "-3", "+9", "12a", "99999999999999999999"] {
        relay.on_upstream_response(at_revision(dresp(CDS, "2", &[], &[]), info));
        assert_eq!(relay.revision(), 7, "{info:?} is not a revision");
    }
    // An older response (another type's, from a class view unchanged since)
    // does not lower it.
    relay.on_upstream_response(at_revision(dresp(EDS, "3", &[("a", "e1")], &[]), "5"));
    assert_eq!(relay.revision(), 7);
    // A response the proxy rejects still came from a snapshot that far along.
    relay.on_upstream_response(at_revision(dresp(CDS, "4", &[("a", "v2")], &[]), "12"));
    relay.on_proxy_request(nack(CDS, "1.4")).unwrap();
    assert_eq!(relay.revision(), 12);

    // It outlives the upstream: the replay to the next owner asks for it,
    // whatever other proxies of this frontend were sent.
    relay.disconnect();
    relay.connect();
    assert_eq!(relay.revision(), 12);
    assert_eq!(relay.min_revision(40), 12);
    assert_eq!(relay.min_revision(3), 12);
}

#[test]
fn delta_proxy_arriving_with_config_asks_for_the_frontend_high_water_mark() {
    // A proxy that reconnects holds config some other stream sent it, at a
    // revision this relay never saw: the best bound is the frontend's.
    let first = DeltaDiscoveryRequest {
        node: node(),
        initial_resource_versions: [("a".to_string(), "v1".to_string())].into(),
        ..dreq(CDS)
    };
    let mut relay = DeltaRelay::new(first).unwrap();
    assert_eq!(relay.min_revision(40), 40);
    relay.connect();
    relay.on_upstream_response(at_revision(dresp(CDS, "1", &[("b", "v1")], &[]), "45"));
    assert_eq!(relay.min_revision(40), 45);
    assert_eq!(relay.min_revision(50), 50);

    // A later type's initial versions count too.
    let mut relay = delta_relay();
    assert_eq!(relay.min_revision(40), 0);
    let req = DeltaDiscoveryRequest {
        initial_resource_versions: [("r".to_string(), "v".to_string())].into(),
        ..subscribe(dreq(RDS), &["r"])
    };
    relay.on_proxy_request(req).unwrap();
    assert_eq!(relay.min_revision(40), 40);
}

fn sreq(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: strings(names),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn sresp(type_url: &str, nonce: &str, version: &str) -> DiscoveryResponse {
    DiscoveryResponse {
        type_url: type_url.into(),
        nonce: nonce.into(),
        version_info: version.into(),
        ..Default::default()
    }
}

#[test]
fn sotw_translates_nonces_and_replays_the_last_requests() {
    let mut relay = SotwRelay::new(DiscoveryRequest { node: node(), ..sreq(LDS, &[], "", "") }).unwrap();
    assert_eq!(relay.connect().len(), 1);
    let l1 = relay.on_upstream_response(sresp(LDS, "1", "lv1"));
    assert_eq!(l1.nonce, "1.1");
    assert!(!relay.settled());
    let fwd = relay.on_proxy_request(sreq(LDS, &[], "lv1", &l1.nonce)).unwrap().unwrap();
    assert_eq!(fwd.response_nonce, "1");
    assert!(relay.settled());
    let first_cds = relay.on_proxy_request(sreq(CDS, &[], "", "")).unwrap().unwrap();
    assert_eq!(first_cds.type_url, CDS);
    let c1 = relay.on_upstream_response(sresp(CDS, "2", "cv1"));
    relay.on_proxy_request(sreq(CDS, &[], "cv1", &c1.nonce)).unwrap().unwrap();
    relay.on_proxy_request(sreq(EDS, &["c1", "c2"], "", "")).unwrap().unwrap();
    let e1 = relay.on_upstream_response(sresp(EDS, "3", "ev1"));
    // The proxy NACKs: version_info stays the previous accepted one (none).
    let mut nacked = sreq(EDS, &["c1", "c2"], "", &e1.nonce);
    nacked.error_detail = Some(RpcStatus { code: 3, message: "bad".into(), details: vec![] });
    assert!(relay.on_proxy_request(nacked).unwrap().unwrap().error_detail.is_some());

    relay.disconnect();
    let replay = relay.connect();
    let shape: Vec<(&str, Vec<String>, &str, &str, bool)> = replay
        .iter()
        .map(|r| {
            (
                r.type_url.as_str(),
                r.resource_names.clone(),
                r.version_info.as_str(),
                r.response_nonce.as_str(),
                r.node.is_some(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [(CDS, vec![], "cv1", "", true), (EDS, strings(&["c1", "c2"]), "", "", false), (LDS, vec![], "lv1", "", false),]
    );
    assert!(replay.iter().all(|r| r.error_detail.is_none()));
}

#[test]
fn sotw_stale_requests_update_the_soft_state_and_are_dropped() {
    let mut relay = SotwRelay::new(DiscoveryRequest { node: node(), ..sreq(EDS, &["a"], "", "") }).unwrap();
    relay.connect();
    let old = relay.on_upstream_response(sresp(EDS, "1", "ev1"));
    relay.disconnect();
    relay.connect();
    // The new upstream issues nonce "1" too.
    let new = relay.on_upstream_response(sresp(EDS, "1", "ev1"));
    assert_ne!(old.nonce, new.nonce);
    // The proxy ACKs the old response with a changed subscription: dropped...
    assert_eq!(relay.on_proxy_request(sreq(EDS, &["a", "b"], "ev1", &old.nonce)).unwrap(), None);
    assert_eq!(relay.take_events(), [RelayEvent::StaleAck { type_url: EDS.into(), nonce: old.nonce.clone() }]);
    // ...but remembered for the next replay.
    assert_eq!(relay.last_request(EDS).unwrap().resource_names, ["a", "b"]);
    // Answering the new upstream carries the whole subscription again.
    let fwd = relay.on_proxy_request(sreq(EDS, &["a", "b"], "ev1", &new.nonce)).unwrap().unwrap();
    assert_eq!(fwd.response_nonce, "1");
    // An empty nonce is a client starting the type over: always forwarded.
    assert!(relay.on_proxy_request(sreq(EDS, &["a"], "ev1", "")).unwrap().is_some());
}

#[test]
fn sotw_asks_for_the_frontend_high_water_mark() {
    // A SotW response's version_info is a content hash, not a revision.
    let mut relay = SotwRelay::new(DiscoveryRequest { node: node(), ..sreq(CDS, &[], "", "") }).unwrap();
    relay.connect();
    relay.on_upstream_response(sresp(CDS, "1", "17"));
    assert_eq!(relay.min_revision(0), 0);
    assert_eq!(relay.min_revision(40), 40);
}

// ---- The relay between a proxy and the shard's real state machines ----

fn resource(name: &str, content: &str) -> Arc<ShardResource> {
    ShardResource::from_bytes(name, bytes::Bytes::from(content.to_string()))
}

fn view(revision: i64, entries: &[(ResourceType, &str, &str)]) -> Arc<ProxyView> {
    let mut view = ProxyView { revision, ..Default::default() };
    for (ty, name, content) in entries {
        view.insert(*ty, resource(name, content));
    }
    Arc::new(view)
}

/// What a Delta proxy holds, per type: name -> version.
#[derive(Default)]
struct DeltaProxy {
    held: BTreeMap<String, BTreeMap<String, String>>,
    /// Every (type, name) the proxy received.
    received: Vec<(String, String)>,
}

impl DeltaProxy {
    /// Apply a response and produce the ACK.
    fn apply(&mut self, resp: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let held = self.held.entry(resp.type_url.clone()).or_default();
        for r in &resp.resources {
            held.insert(r.name.clone(), r.version.clone());
            self.received.push((resp.type_url.clone(), r.name.clone()));
        }
        for name in &resp.removed_resources {
            held.remove(name);
        }
        ack(&resp.type_url, &resp.nonce)
    }
}

/// Pump messages between the proxy, the relay and one shard until quiet.
fn pump_delta(
    proxy: &mut DeltaProxy,
    relay: &mut DeltaRelay,
    shard: &mut DeltaStream,
    mut to_shard: Vec<DeltaDiscoveryRequest>,
) {
    loop {
        for req in to_shard.drain(..) {
            shard.handle_request(req).unwrap();
        }
        let responses: Vec<_> = shard.take_responses().iter().map(|r| r.to_proto()).collect();
        if responses.is_empty() {
            return;
        }
        for resp in responses {
            let resp = relay.on_upstream_response(resp);
            let ack = proxy.apply(&resp);
            to_shard.extend(relay.on_proxy_request(ack).unwrap());
        }
    }
}

#[test]
fn delta_rehome_between_real_shard_state_machines_sends_nothing_the_proxy_has() {
    let v1 = view(
        10,
        &[
            (ResourceType::Cluster, "c1", "cluster one"),
            (ResourceType::Cluster, "c2", "cluster two"),
            (ResourceType::Endpoint, "c1", "endpoints one"),
            (ResourceType::Listener, "l1", "listener"),
        ],
    );
    let mut proxy = DeltaProxy::default();
    let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq(CDS) }).unwrap();
    let mut old = DeltaStream::new();
    old.set_view(v1.clone());
    let replay = relay.connect();
    pump_delta(&mut proxy, &mut relay, &mut old, replay);
    for req in [subscribe(dreq(EDS), &["c1", "c2"]), dreq(LDS)] {
        let fwd: Vec<_> = relay.on_proxy_request(req).unwrap().into_iter().collect();
        pump_delta(&mut proxy, &mut relay, &mut old, fwd);
    }
    assert_eq!(proxy.held[CDS].len(), 2);
    assert_eq!(proxy.held[EDS].len(), 1);
    assert_eq!(proxy.held[LDS].len(), 1);
    assert!(relay.settled());
    assert_eq!(relay.revision(), 10, "learned from the shard's system_version_info");
    let received_before = proxy.received.len();

    // The owner changes: a new shard, same store, same content hashes.
    relay.disconnect();
    let mut new = DeltaStream::new();
    new.set_view(view(
        11,
        &[
            (ResourceType::Cluster, "c1", "cluster one"),
            (ResourceType::Cluster, "c2", "cluster two"),
            (ResourceType::Endpoint, "c1", "endpoints one"),
            (ResourceType::Listener, "l1", "listener"),
        ],
    ));
    let replay = relay.connect();
    assert_eq!(replay.len(), 3);
    pump_delta(&mut proxy, &mut relay, &mut new, replay);
    assert_eq!(proxy.received.len(), received_before, "the new owner sent a resource the proxy already had");

    // The new owner pushes a change; the proxy ACKs through the relay, and
    // the next change flows (it would not if the ACK had gone astray).
    new.set_view(view(
        12,
        &[
            (ResourceType::Cluster, "c1", "cluster one"),
            (ResourceType::Cluster, "c2", "cluster two"),
            (ResourceType::Endpoint, "c1", "endpoints one v2"),
            (ResourceType::Listener, "l1", "listener"),
        ],
    ));
    pump_delta(&mut proxy, &mut relay, &mut new, vec![]);
    assert_eq!(proxy.received[received_before..], [(EDS.to_string(), "c1".to_string())]);
    new.set_view(view(
        13,
        &[
            (ResourceType::Cluster, "c1", "cluster one"),
            (ResourceType::Cluster, "c2", "cluster two"),
            (ResourceType::Endpoint, "c1", "endpoints one v3"),
            (ResourceType::Listener, "l1", "listener"),
        ],
    ));
    pump_delta(&mut proxy, &mut relay, &mut new, vec![]);
    assert_eq!(proxy.received.len(), received_before + 2);
    assert_eq!(proxy.held[EDS]["c1"], resource("c1", "endpoints one v3").version.to_string());
}

#[test]
fn delta_nack_through_the_relay_reaches_the_new_owner() {
    let v = |content: &str| view(1, &[(ResourceType::Cluster, "c1", content)]);
    let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq(CDS) }).unwrap();
    let mut shard = DeltaStream::new();
    shard.set_view(v("a"));
    let mut proxy = DeltaProxy::default();
    let replay = relay.connect();
    pump_delta(&mut proxy, &mut relay, &mut shard, replay);
    relay.disconnect();
    let mut shard = DeltaStream::new();
    shard.set_view(v("a"));
    let replay = relay.connect();
    pump_delta(&mut proxy, &mut relay, &mut shard, replay);
    shard.take_events();

    shard.set_view(v("b"));
    let resp = relay.on_upstream_response(shard.take_responses().pop().unwrap().to_proto());
    let forwarded = relay.on_proxy_request(nack(CDS, &resp.nonce)).unwrap().unwrap();
    shard.handle_request(forwarded).unwrap();
    let events = shard.take_events();
    assert!(
        events.iter().any(|e| matches!(e, meshplane_shard::ads::StreamEvent::Nack { .. })),
        "the new owner must see a NACK of its own response: {events:?}"
    );
    assert_eq!(relay.acked(CDS), versions(&[("c1", &resource("c1", "a").version)]));
}

#[test]
fn sotw_rehome_between_real_shard_state_machines_keeps_acks_working() {
    let v1 = view(1, &[(ResourceType::Cluster, "c1", "one"), (ResourceType::Listener, "l1", "listener")]);
    let mut relay = SotwRelay::new(DiscoveryRequest { node: node(), ..sreq(CDS, &[], "", "") }).unwrap();
    let mut shard = SotwStream::new();
    shard.set_view(v1.clone());
    for req in relay.connect() {
        shard.handle_request(req).unwrap();
    }
    let c = relay.on_upstream_response(shard.take_responses().pop().unwrap().to_proto());
    shard.handle_request(relay.on_proxy_request(sreq(CDS, &[], &c.version_info, &c.nonce)).unwrap().unwrap()).unwrap();
    shard.handle_request(relay.on_proxy_request(sreq(LDS, &[], "", "")).unwrap().unwrap()).unwrap();
    let l = relay.on_upstream_response(shard.take_responses().pop().unwrap().to_proto());
    shard.handle_request(relay.on_proxy_request(sreq(LDS, &[], &l.version_info, &l.nonce)).unwrap().unwrap()).unwrap();
    assert!(relay.settled());

    relay.disconnect();
    let mut new = SotwStream::new();
    new.set_view(v1);
    for req in relay.connect() {
        new.handle_request(req).unwrap();
    }
    let answers: Vec<_> = new.take_responses().iter().map(|r| r.to_proto()).collect();
    assert_eq!(answers.len(), 2, "SotW answers each replayed type with its full set");
    for resp in answers {
        let before = if resp.type_url == CDS { &c.version_info } else { &l.version_info };
        assert_eq!(&resp.version_info, before, "same content, same version on every shard");
        let resp = relay.on_upstream_response(resp);
        new.handle_request(
            relay.on_proxy_request(sreq(&resp.type_url, &[], &resp.version_info, &resp.nonce)).unwrap().unwrap(),
        )
        .unwrap();
    }
    assert!(
        new.take_events().iter().filter(|e| matches!(e, meshplane_shard::ads::StreamEvent::Ack { .. })).count() == 2
    );
    // A change is pushed and ACKed through the relay.
    new.set_view(view(2, &[(ResourceType::Cluster, "c1", "two"), (ResourceType::Listener, "l1", "listener")]));
    let resp = relay.on_upstream_response(new.take_responses().pop().unwrap().to_proto());
    assert_eq!(resp.nonce, "2.3");
    new.handle_request(relay.on_proxy_request(sreq(CDS, &[], &resp.version_info, &resp.nonce)).unwrap().unwrap())
        .unwrap();
    assert!(matches!(&new.take_events()[..], [.., meshplane_shard::ads::StreamEvent::Ack { .. }]));
}
