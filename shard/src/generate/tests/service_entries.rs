//! ServiceEntry resolution (SE-01) and WorkloadEntries selected by a
//! ServiceEntry (SE-03).

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};

use super::*;

fn service_entry(spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se, namespace: ns-x}}\nspec: {spec}"
    )
}

fn discovery(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).expect("known type"),
        ref other => panic!("cluster {} has {other:?}", c.name),
    }
}

#[test]
fn se01_static_endpoints_are_served_by_eds_and_routed_by_host() {
    let se = service_entry(
        "{hosts: [fake.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: STATIC, \
         endpoints: [{address: 10.1.0.5}, {address: 10.1.0.6}]}",
    );
    let view = config(&mesh(&[&se]), &sidecar_in("ns-a"));
    let name = "outbound|80||fake.example.com";
    let c = cluster(&view, name).expect("cluster");
    assert_eq!(discovery(&c), DiscoveryType::Eds);
    assert_eq!(c.eds_cluster_config.expect("eds").service_name, name);
    assert_eq!(endpoint_addresses(&cla(&view, name)), ["10.1.0.5:80", "10.1.0.6:80"]);
    let rc = route_config(&view, "80");
    assert_eq!(cluster_of(&virtual_host_for(&rc, "fake.example.com").routes[0]), name);
}

#[test]
fn se01_dns_resolution_uses_the_endpoint_names_or_the_host() {
    let with_endpoints = service_entry(
        "{hosts: [x.example.com], ports: [{number: 80, name: http}], resolution: DNS, \
         endpoints: [{address: x.ns-x.svc.cluster.local}]}",
    );
    let view = config(&mesh(&[&with_endpoints]), &sidecar_in("ns-a"));
    let c = cluster(&view, "outbound|80||x.example.com").expect("cluster");
    assert_eq!(discovery(&c), DiscoveryType::StrictDns);
    assert_eq!(endpoint_addresses(c.load_assignment.as_ref().expect("inline")), ["x.ns-x.svc.cluster.local:80"]);
    assert!(!view.endpoints.contains_key("outbound|80||x.example.com"), "no EDS for DNS clusters");

    let bare = service_entry("{hosts: [api.example.com], ports: [{number: 443, name: tls}], resolution: DNS}");
    let view = config(&mesh(&[&bare]), &sidecar_in("ns-a"));
    let c = cluster(&view, "outbound|443||api.example.com").expect("cluster");
    assert_eq!(discovery(&c), DiscoveryType::StrictDns);
    assert_eq!(endpoint_addresses(c.load_assignment.as_ref().expect("inline")), ["api.example.com:443"]);
}

#[test]
fn se01_resolution_none_goes_to_the_original_destination() {
    let se = service_entry("{hosts: [any.example.com], ports: [{number: 9999, name: tcp}], resolution: NONE}");
    let view = config(&mesh(&[&se]), &sidecar_in("ns-a"));
    let c = cluster(&view, "outbound|9999||any.example.com").expect("cluster");
    assert_eq!(discovery(&c), DiscoveryType::OriginalDst);
    assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32);
    // Without addresses, the TCP port's listener takes all traffic on the port.
    let l = listener(&view, "0.0.0.0_9999");
    assert_eq!(socket_address_text(l.address.as_ref().expect("address")), "0.0.0.0:9999");
    let tcp = tcp_proxy(only_filter(&l));
    assert_eq!(
        tcp.cluster_specifier,
        Some(
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(
                "outbound|9999||any.example.com".into()
            )
        )
    );
}

#[test]
fn se03_workload_entries_selected_by_a_service_entry_on_the_target_port() {
    let se = service_entry(
        "{hosts: [b.mesh.internal], addresses: [10.9.0.1], location: MESH_INTERNAL, resolution: STATIC, \
         ports: [{number: 80, name: http, protocol: HTTP, targetPort: 18080}], workloadSelector: {labels: {app: b}}}",
    );
    let entries = [
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-vm, namespace: ns-x}\n\
         spec: {address: 10.1.2.3, labels: {app: b, security.istio.io/tlsMode: istio}}",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: other-vm, namespace: ns-x}\n\
         spec: {address: 10.1.2.4, labels: {app: other}}",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b-elsewhere, namespace: ns-y}\n\
         spec: {address: 10.1.2.5, labels: {app: b}}",
    ];
    let docs: Vec<&str> = [se.as_str()].into_iter().chain(entries).collect();
    let view = config(&mesh(&docs), &sidecar_in("ns-a"));
    let name = "outbound|80||b.mesh.internal";
    assert_eq!(endpoint_addresses(&cla(&view, name)), ["10.1.2.3:18080"]);
    let rc = route_config(&view, "80");
    assert_eq!(virtual_host_for(&rc, "10.9.0.1").name, "b.mesh.internal:80", "the VIP is a domain");
}
