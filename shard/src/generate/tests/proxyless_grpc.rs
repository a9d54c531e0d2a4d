//! Proxyless gRPC clients: an ApiListener and a route configuration per
//! `host:port` a client may dial, and weighted localities.

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;

fn grpc_client(namespace: &str) -> ProxyClass {
    ProxyClass { grpc: true, ..sidecar_in(namespace) }
}

fn greeter() -> String {
    service("ns-a", "greeter", "10.0.0.7", &[("grpc", 50051)])
}

#[test]
fn an_api_listener_and_route_configuration_per_dialable_name() {
    let view = config(&mesh(&[&greeter()]), &grpc_client("ns-a"));
    let cluster_name = "outbound|50051||greeter.ns-a.svc.cluster.local";
    for host in ["greeter", "greeter.ns-a", "greeter.ns-a.svc", "greeter.ns-a.svc.cluster.local"] {
        let name = format!("{host}:50051");
        let l = listener(&view, &name);
        let api = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref()).expect("an ApiListener");
        let hcm = HttpConnectionManager::decode(api.value.as_slice()).expect("HCM");
        assert_eq!(rds_name(&hcm), name);
        let rc = route_config(&view, &name);
        let vh = &rc.virtual_hosts[0];
        assert!(vh.domains.contains(&name), "domain {name} in {:?}", vh.domains);
        assert_eq!(cluster_of(&vh.routes[0]), cluster_name);
    }
    assert!(has_cluster(&view, cluster_name));
    assert!(!view.listeners.contains_key("virtualOutbound") && !view.listeners.contains_key("virtualInbound"));
    assert!(!has_cluster(&view, "PassthroughCluster"));
}

#[test]
fn a_bare_name_is_only_dialable_from_the_same_namespace() {
    let view = config(&mesh(&[&greeter()]), &grpc_client("ns-b"));
    assert!(!view.listeners.contains_key("greeter:50051"));
    assert!(view.listeners.contains_key("greeter.ns-a:50051"));
}

#[test]
fn localities_carry_a_load_balancing_weight() {
    let view = config(
        &mesh(&[
            &greeter(),
            &pod("ns-a", "greeter-1", "10.1.0.1", "{app: greeter}"),
            &pod("ns-a", "greeter-2", "10.1.0.2", "{app: greeter}"),
        ]),
        &grpc_client("ns-a"),
    );
    let assignment = cla(&view, "outbound|50051||greeter.ns-a.svc.cluster.local");
    assert!(!assignment.endpoints.is_empty());
    for locality in &assignment.endpoints {
        let weight = locality.load_balancing_weight.as_ref().map(|w| w.value);
        assert_eq!(weight, Some(locality.lb_endpoints.len() as u32), "gRPC ignores localities without a weight");
    }
}

#[test]
fn a_vs_timeout_reaches_grpc_as_the_max_stream_duration() {
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: greeter, namespace: ns-a}\n\
         spec: {hosts: [greeter], http: [{timeout: 3s, route: [{destination: {host: greeter}}]}]}";
    let view = config(&mesh(&[&greeter(), vs]), &grpc_client("ns-a"));
    let rc = route_config(&view, "greeter:50051");
    let action = route_action(&rc.virtual_hosts[0].routes[0]);
    // gRPC reads only max_stream_duration (grpc_timeout_header_max first, if set).
    let max = action.max_stream_duration.as_ref().expect("max_stream_duration");
    assert_eq!(max.max_stream_duration, Some(crate::generate::duration(std::time::Duration::from_secs(3))));
    assert_eq!(max.grpc_timeout_header_max, None, "would override the VS timeout for gRPC");
}

#[test]
fn clusters_use_round_robin_whatever_the_rule_says() {
    // gRPC rejects a Cluster whose lb_policy it does not implement (a NACK
    // with "LB policy is not supported"), such as Istio's default LEAST_REQUEST.
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: g, namespace: ns-a}\nspec:\n  host: greeter\n  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}\n  subsets: [{name: v1, labels: {version: v1}}]\n";
    let grpc = config(&mesh(&[&greeter(), rule]), &grpc_client("ns-a"));
    let sidecar = config(&mesh(&[&greeter(), rule]), &sidecar_in("ns-a"));
    for name in ["outbound|50051||greeter.ns-a.svc.cluster.local", "outbound|50051|v1|greeter.ns-a.svc.cluster.local"] {
        let policy = |view: &ProxyView| cluster(view, name).expect("the cluster exists").lb_policy;
        assert_eq!(policy(&grpc), LbPolicy::RoundRobin as i32, "{name}");
        assert_eq!(policy(&sidecar), LbPolicy::LeastRequest as i32, "{name}");
    }
}
