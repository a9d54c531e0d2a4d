//! Istio-semantics tests of config generation, pure and synchronous: each
//! builds a mesh from YAML, generates the config of one class of proxy, and
//! reads the Envoy resources back out of the [`ProxyView`].
//!
//! ```text
//!  YAML ─parse_yaml─▶ MeshState ─build─▶ MeshSnapshot ─generate(ProxyClass)─▶ ProxyView ─decode─▶ Listener, Route..., Cluster, CLA
//! ```
//!
//! Scenario ids in test names and comments (VS-01, M-02, ...) are those of
//! `shared/istio-semantics.md`, whose expectations these tests encode.

mod destination_rules;
mod destinations;
mod endpoints;
mod matches;
mod protocols;
mod proxyless_grpc;
mod refresh;
mod resilience;
mod service_entries;
mod sidecars;
mod virtual_services;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route, route_action,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use meshplane_model::key::ObjectKey;
use meshplane_model::parse::parse_yaml;
use meshplane_model::proxy::NodeType;
use prost::Message;

use super::{EndpointCache, ProxyClass, generate};
use crate::resources::{ProxyView, ResourceMap};
use crate::snapshot::{MeshSnapshot, MeshState};

// ---------------------------------------------------------------- building a mesh

/// A snapshot of the objects in these YAML documents. Any diagnostic (an
/// error, or a warning such as a misspelt field) fails the test: the fixture
/// must say exactly what it means.
fn mesh(documents: &[&str]) -> MeshSnapshot {
    let text = documents.join("\n---\n");
    let parsed = parse_yaml("test.yaml", &text);
    let diagnostics: Vec<String> = parsed.diagnostics.iter().map(ToString::to_string).collect();
    assert!(diagnostics.is_empty(), "fixture YAML has diagnostics:\n{}", diagnostics.join("\n"));
    let mut state = MeshState::default();
    for parsed in parsed.objects {
        state.apply(ObjectKey::new("Kubernetes", parsed.object.object_ref()), parsed.object);
    }
    MeshSnapshot::build(&state, 1)
}

/// A Service `name` in `ns` selecting `app: name`, with a cluster IP and
/// `(port name, port)` pairs (target port = port).
fn service(ns: &str, name: &str, vip: &str, ports: &[(&str, u16)]) -> String {
    let ports: Vec<String> = ports.iter().map(|(n, p)| format!("{{name: {n}, port: {p}}}")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{}]",
        ports.join(", ")
    )
}

/// A ready Pod with an IP and labels.
fn pod(ns: &str, name: &str, ip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\n\
         spec: {{containers: [{{name: app}}]}}\nstatus: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}"
    )
}

// ---------------------------------------------------------------- proxies and generation

/// A sidecar in `namespace` with no labels.
fn sidecar_in(namespace: &str) -> ProxyClass {
    ProxyClass {
        namespace: namespace.to_string(),
        labels: Default::default(),
        node_type: NodeType::Sidecar,
        grpc: false,
        interception_none: false,
    }
}

/// A sidecar in `namespace` whose workload has these labels.
fn sidecar_with(namespace: &str, labels: &[(&str, &str)]) -> ProxyClass {
    ProxyClass { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), ..sidecar_in(namespace) }
}

/// The config of every proxy of this class.
fn config(snapshot: &MeshSnapshot, class: &ProxyClass) -> ProxyView {
    generate(snapshot, class, &EndpointCache::default())
}

// ---------------------------------------------------------------- reading resources back

fn decode<M: Message + Default>(resources: &ResourceMap, name: &str) -> Option<M> {
    resources.get(name).map(|r| M::decode(r.body.clone()).expect("resource decodes"))
}

fn names(resources: &ResourceMap) -> Vec<&str> {
    resources.keys().map(|k| &**k).collect()
}

fn route_config(view: &ProxyView, name: &str) -> RouteConfiguration {
    decode(&view.routes, name)
        .unwrap_or_else(|| panic!("no route configuration {name:?}; have {:?}", names(&view.routes)))
}

fn virtual_host<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts.iter().find(|vh| vh.name == name).unwrap_or_else(|| {
        let have: Vec<&str> = rc.virtual_hosts.iter().map(|vh| vh.name.as_str()).collect();
        panic!("no virtual host {name:?} in {:?}; have {have:?}", rc.name)
    })
}

/// The virtual host Envoy picks for a Host header: the port is ignored
/// (`ignore_port_in_host_matching`, asserted here), then an exact domain,
/// then the longest `*suffix`, then `*`.
fn virtual_host_for<'a>(rc: &'a RouteConfiguration, host: &str) -> &'a VirtualHost {
    assert!(rc.ignore_port_in_host_matching, "sidecar route configuration {:?} matches the port", rc.name);
    let host = host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h);
    let exact = rc.virtual_hosts.iter().find(|vh| vh.domains.iter().any(|d| d == host));
    let suffix = || {
        rc.virtual_hosts
            .iter()
            .flat_map(|vh| vh.domains.iter().map(move |d| (vh, d)))
            .filter_map(|(vh, d)| d.strip_prefix('*').filter(|s| !s.is_empty() && host.ends_with(s)).map(|s| (vh, s)))
            .max_by_key(|(_, s)| s.len())
            .map(|(vh, _)| vh)
    };
    let any = || rc.virtual_hosts.iter().find(|vh| vh.domains.iter().any(|d| d == "*"));
    exact.or_else(suffix).or_else(any).unwrap_or_else(|| panic!("no virtual host in {:?} serves {host:?}", rc.name))
}

fn cluster(view: &ProxyView, name: &str) -> Option<Cluster> {
    decode(&view.clusters, name)
}

fn cla(view: &ProxyView, name: &str) -> ClusterLoadAssignment {
    decode(&view.endpoints, name)
        .unwrap_or_else(|| panic!("no ClusterLoadAssignment {name:?}; have {:?}", names(&view.endpoints)))
}

/// Every endpoint of a load assignment as `ip:port`, in order.
fn endpoint_addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
    cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).map(lb_endpoint_address).collect()
}

fn lb_endpoint_address(ep: &LbEndpoint) -> String {
    let Some(HostIdentifier::Endpoint(Endpoint { address: Some(address), .. })) = &ep.host_identifier else {
        panic!("endpoint without an address: {ep:?}")
    };
    socket_address_text(address)
}

/// `ip:port` of a socket address.
fn socket_address_text(address: &Address) -> String {
    let Some(address::Address::SocketAddress(sa)) = &address.address else { panic!("not a socket address") };
    let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else { panic!("no port") };
    format!("{}:{port}", sa.address)
}

fn listener(view: &ProxyView, name: &str) -> Listener {
    decode(&view.listeners, name).unwrap_or_else(|| panic!("no listener {name:?}; have {:?}", names(&view.listeners)))
}

fn has_cluster(view: &ProxyView, name: &str) -> bool {
    view.clusters.contains_key(name)
}

fn route_action(route: &Route) -> &RouteAction {
    match &route.action {
        Some(route::Action::Route(action)) => action,
        other => panic!("route {:?} does not forward: {other:?}", route.name),
    }
}

/// The single cluster a route forwards to.
fn cluster_of(route: &Route) -> &str {
    match &route_action(route).cluster_specifier {
        Some(route_action::ClusterSpecifier::Cluster(c)) => c,
        other => panic!("route {:?} has no single cluster: {other:?}", route.name),
    }
}

/// The `(cluster, weight)` pairs of a weighted route.
fn weights_of(route: &Route) -> Vec<(&str, u32)> {
    match &route_action(route).cluster_specifier {
        Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
            w.clusters.iter().map(|c| (c.name.as_str(), c.weight.as_ref().map_or(0, |w| w.value))).collect()
        }
        other => panic!("route {:?} is not weighted: {other:?}", route.name),
    }
}

/// The request headers a route adds, as `(name, value)`.
fn added_request_headers(route: &Route) -> Vec<(&str, &str)> {
    route.request_headers_to_add.iter().filter_map(|o| o.header.as_ref()).map(|h| (&*h.key, &*h.value)).collect()
}

/// The first network filter of a listener's only filter chain.
fn only_filter(listener: &Listener) -> &Filter {
    let [chain] = listener.filter_chains.as_slice() else {
        panic!("listener {:?} has {} filter chains", listener.name, listener.filter_chains.len())
    };
    &chain.filters[0]
}

fn typed<M: Message + Default>(filter: &Filter) -> M {
    match &filter.config_type {
        Some(filter::ConfigType::TypedConfig(any)) => M::decode(any.value.as_slice()).expect("filter config decodes"),
        other => panic!("filter {:?} has no typed config: {other:?}", filter.name),
    }
}

fn http_connection_manager(filter: &Filter) -> HttpConnectionManager {
    assert_eq!(filter.name, "envoy.filters.network.http_connection_manager");
    typed(filter)
}

fn tcp_proxy(filter: &Filter) -> TcpProxy {
    assert_eq!(filter.name, "envoy.filters.network.tcp_proxy");
    typed(filter)
}

/// The RDS route configuration name an HTTP connection manager fetches.
fn rds_name(hcm: &HttpConnectionManager) -> &str {
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => &rds.route_config_name,
        other => panic!("HCM {:?} does not use RDS: {other:?}", hcm.stat_prefix),
    }
}

/// The filter serving inbound traffic to `port` on `virtualInbound`.
fn inbound_filter(view: &ProxyView, port: u16) -> Filter {
    let l = listener(view, "virtualInbound");
    let chain = l
        .filter_chains
        .iter()
        .find(|c| c.name == format!("inbound|{port}"))
        .unwrap_or_else(|| panic!("virtualInbound has no chain for port {port}"));
    chain.filters[0].clone()
}

/// The only route of an inbound HTTP filter's inline route configuration.
fn inbound_route(view: &ProxyView, port: u16) -> Route {
    let hcm = http_connection_manager(&inbound_filter(view, port));
    let Some(RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else { panic!("inbound routes are inline") };
    let [vh] = rc.virtual_hosts.as_slice() else { panic!("one inbound virtual host") };
    let [r] = vh.routes.as_slice() else { panic!("one inbound route") };
    r.clone()
}
