//! ClusterLoadAssignments: subset filtering, locality, readiness,
//! EndpointSlices, named target ports.

use envoy_types::pb::envoy::config::core::v3::Locality;

use super::*;

const B: &str = "outbound|80||b.ns-b.svc.cluster.local";

fn b_view(extra: &[&str]) -> ProxyView {
    let svc = service("ns-b", "b", "10.0.0.2", &[("http", 80)]);
    let docs: Vec<&str> = [svc.as_str()].into_iter().chain(extra.iter().copied()).collect();
    config(&mesh(&docs), &sidecar_in("ns-a"))
}

#[test]
fn subset_endpoints_are_filtered_by_labels() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: ns-b}\n\
         spec: {host: b, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}";
    let view = b_view(&[
        rule,
        &pod("ns-b", "b-v1", "10.1.0.1", "{app: b, version: v1}"),
        &pod("ns-b", "b-v2", "10.1.0.2", "{app: b, version: v2}"),
        &pod("ns-b", "not-b", "10.1.0.3", "{app: c, version: v1}"),
    ]);
    assert_eq!(endpoint_addresses(&cla(&view, B)), ["10.1.0.1:80", "10.1.0.2:80"]);
    assert_eq!(endpoint_addresses(&cla(&view, "outbound|80|v1|b.ns-b.svc.cluster.local")), ["10.1.0.1:80"]);
    assert_eq!(endpoint_addresses(&cla(&view, "outbound|80|v2|b.ns-b.svc.cluster.local")), ["10.1.0.2:80"]);
}

#[test]
fn locality_comes_from_the_node_labels() {
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels:\n    \
         topology.kubernetes.io/region: eu-west\n    topology.kubernetes.io/zone: eu-west-1a\n    \
         topology.istio.io/subzone: rack-7";
    let placed = "apiVersion: v1\nkind: Pod\nmetadata: {name: b-1, namespace: ns-b, labels: {app: b}}\n\
         spec: {nodeName: node-1, containers: [{name: app}]}\nstatus: {podIP: 10.1.0.1}";
    let view = b_view(&[node, placed, &pod("ns-b", "b-2", "10.1.0.2", "{app: b}")]);
    let assignment = cla(&view, B);
    let localities: Vec<(Option<Locality>, Vec<String>)> = assignment
        .endpoints
        .iter()
        .map(|l| (l.locality.clone(), l.lb_endpoints.iter().map(lb_endpoint_address).collect()))
        .collect();
    let rack = Locality { region: "eu-west".into(), zone: "eu-west-1a".into(), sub_zone: "rack-7".into() };
    assert!(localities.contains(&(Some(rack), vec!["10.1.0.1:80".to_string()])), "{localities:?}");
    assert!(localities.contains(&(Some(Locality::default()), vec!["10.1.0.2:80".to_string()])), "{localities:?}");
}

#[test]
fn pods_that_are_not_ready_are_excluded() {
    let not_ready = "apiVersion: v1\nkind: Pod\nmetadata: {name: b-starting, namespace: ns-b, labels: {app: b}}\n\
         spec: {containers: [{name: app}]}\nstatus: {podIP: 10.1.0.9, conditions: [{type: Ready, status: \"False\"}]}";
    let finished = "apiVersion: v1\nkind: Pod\nmetadata: {name: b-done, namespace: ns-b, labels: {app: b}}\n\
         spec: {containers: [{name: app}]}\nstatus: {podIP: 10.1.0.8, phase: Succeeded}";
    let view = b_view(&[not_ready, finished, &pod("ns-b", "b-ok", "10.1.0.1", "{app: b}")]);
    assert_eq!(endpoint_addresses(&cla(&view, B)), ["10.1.0.1:80"]);
}

#[test]
fn endpoint_slices_are_preferred_over_the_selector() {
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: b-abc, namespace: ns-b, labels: {kubernetes.io/service-name: b}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n\
         - {addresses: [10.2.0.1], conditions: {ready: true}, targetRef: {kind: Pod, name: b-1}}\n\
         - {addresses: [10.2.0.2], conditions: {ready: false}}";
    let view = b_view(&[slice, &pod("ns-b", "b-1", "10.1.0.1", "{app: b, version: v1}")]);
    assert_eq!(endpoint_addresses(&cla(&view, B)), ["10.2.0.1:8080"], "the slice's addresses and port, ready only");
}

#[test]
fn named_target_ports_resolve_from_the_pods_container_ports() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns-b}\n\
         spec: {clusterIP: 10.0.0.2, selector: {app: b}, ports: [{name: http, port: 80, targetPort: web}]}";
    let pod_with = |name: &str, ip: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns-b, labels: {{app: b}}}}\n\
             spec: {{containers: [{{name: app, ports: [{{name: web, containerPort: {port}}}]}}]}}\nstatus: {{podIP: {ip}}}"
        )
    };
    let snapshot = mesh(&[svc, &pod_with("b-1", "10.1.0.1", 8080), &pod_with("b-2", "10.1.0.2", 9090)]);
    let view = config(&snapshot, &sidecar_in("ns-a"));
    assert_eq!(endpoint_addresses(&cla(&view, B)), ["10.1.0.1:8080", "10.1.0.2:9090"]);
}
