//! The Sidecar API: egress scoping and Sidecar precedence (SC-01), the
//! catch-all for unknown hosts (SC-02), VS destinations (SC-03), and
//! `captureMode: NONE` listeners bound to real addresses.

use envoy_types::pb::envoy::config::route::v3::DirectResponseAction;

use super::*;

fn sidecar_resource(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}"
    )
}

fn services() -> Vec<String> {
    vec![
        service("ns-a", "a", "10.0.0.1", &[("http", 80)]),
        service("ns-b", "b", "10.0.0.2", &[("http", 80)]),
        service("ns-c", "c", "10.0.0.3", &[("http", 80)]),
        service("istio-system", "sys", "10.0.0.4", &[("http", 80)]),
    ]
}

/// The services (short names) whose port-80 cluster a client has.
fn imported(extra: &[&str], client: &ProxyClass) -> Vec<String> {
    let services = services();
    let docs: Vec<&str> = services.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    let view = config(&mesh(&docs), client);
    view.clusters
        .keys()
        .filter_map(|n| n.strip_prefix("outbound|80||"))
        .map(|host| host.split('.').next().unwrap_or_default().to_string())
        .collect()
}

fn egress_hosts(hosts: &str) -> String {
    sidecar_resource("ns-a", "default", &format!("{{egress: [{{hosts: {hosts}}}]}}"))
}

#[test]
fn sc01_egress_hosts_select_namespaces() {
    let client = sidecar_in("ns-a");
    assert_eq!(imported(&[], &client), ["a", "b", "c", "sys"], "no Sidecar imports everything");
    assert_eq!(imported(&[&egress_hosts("[./*, istio-system/*]")], &client), ["a", "sys"]);
    assert_eq!(imported(&[&egress_hosts("[ns-b/*]")], &client), ["b"]);
    assert_eq!(imported(&[&egress_hosts("[\"*/*\"]")], &client), ["a", "b", "c", "sys"]);
    assert!(imported(&[&egress_hosts("[\"~/*\"]")], &client).is_empty());
    assert_eq!(imported(&[&egress_hosts("[\"*/c.ns-c.svc.cluster.local\"]")], &client), ["c"]);
}

#[test]
fn sc01_selected_sidecar_beats_namespace_sidecar_beats_root_default() {
    let root = sidecar_resource("istio-system", "default", "{egress: [{hosts: [./*]}]}");
    let namespace = sidecar_resource("ns-a", "default", "{egress: [{hosts: [ns-b/*]}]}");
    let selected = sidecar_resource(
        "ns-a",
        "special",
        "{workloadSelector: {labels: {app: special}}, egress: [{hosts: [istio-system/*]}]}",
    );
    let all = [root.as_str(), &namespace, &selected];
    assert_eq!(imported(&all, &sidecar_with("ns-a", &[("app", "special")])), ["sys"]);
    assert_eq!(imported(&all, &sidecar_with("ns-a", &[("app", "other")])), ["b"]);
    assert_eq!(imported(&all, &sidecar_in("ns-c")), ["c"], "`.` in the root Sidecar is the workload's namespace");
}

fn catch_all(view: &ProxyView) -> VirtualHost {
    let rc = route_config(view, "80");
    let vh = virtual_host_for(&rc, "unknown.example.com").clone();
    assert_eq!(vh.domains, ["*"]);
    vh
}

fn virtual_outbound_fallback(view: &ProxyView) -> String {
    let l = listener(view, "virtualOutbound");
    let chain = l.filter_chains.iter().find(|c| c.name == "virtualOutbound-fallback").expect("fallback chain");
    let proxy = tcp_proxy(&chain.filters[0]);
    match proxy.cluster_specifier {
        Some(
            envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::Cluster(
                c,
            ),
        ) => c,
        other => panic!("fallback {other:?}"),
    }
}

#[test]
fn sc02_allow_any_passes_unknown_hosts_through() {
    let services = services();
    let only_own = egress_hosts("[./*]");
    let docs: Vec<&str> = services.iter().map(String::as_str).chain([only_own.as_str()]).collect();
    let view = config(&mesh(&docs), &sidecar_in("ns-a"));
    let vh = catch_all(&view);
    assert_eq!(vh.name, "allow_any");
    assert_eq!(cluster_of(&vh.routes[0]), "PassthroughCluster");
    assert!(has_cluster(&view, "PassthroughCluster"));
    assert_eq!(virtual_outbound_fallback(&view), "PassthroughCluster");
    let rc = route_config(&view, "80");
    assert_eq!(virtual_host_for(&rc, "b.ns-b").name, "allow_any", "a service not imported is unknown");
}

#[test]
fn sc02_registry_only_answers_502_and_blackholes_tcp() {
    let services = services();
    let registry_only =
        sidecar_resource("ns-a", "default", "{outboundTrafficPolicy: {mode: REGISTRY_ONLY}, egress: [{hosts: [./*]}]}");
    let docs: Vec<&str> = services.iter().map(String::as_str).chain([registry_only.as_str()]).collect();
    let view = config(&mesh(&docs), &sidecar_in("ns-a"));
    let vh = catch_all(&view);
    assert_eq!(vh.name, "block_all");
    assert_eq!(
        vh.routes[0].action,
        Some(route::Action::DirectResponse(DirectResponseAction { status: 502, ..Default::default() }))
    );
    assert_eq!(virtual_outbound_fallback(&view), "BlackHoleCluster");
    assert!(has_cluster(&view, "BlackHoleCluster"));
}

#[test]
fn sc03_vs_destinations_get_clusters_without_being_imported() {
    let services = services();
    let only_own = egress_hosts("[./*]");
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: ns-a}
spec:
  hosts: [a]
  http:
  - match: [{uri: {prefix: /x}}]
    route: [{destination: {host: b.ns-b.svc.cluster.local}}]
  - route: [{destination: {host: a}}]
"#;
    let docs: Vec<&str> = services.iter().map(String::as_str).chain([only_own.as_str(), vs]).collect();
    let view = config(&mesh(&docs), &sidecar_in("ns-a"));
    let rc = route_config(&view, "80");
    assert_eq!(cluster_of(&virtual_host_for(&rc, "a").routes[0]), "outbound|80||b.ns-b.svc.cluster.local");
    assert!(has_cluster(&view, "outbound|80||b.ns-b.svc.cluster.local"), "a real mesh cluster");
    assert!(view.endpoints.contains_key("outbound|80||b.ns-b.svc.cluster.local"));
    assert_eq!(virtual_host_for(&rc, "b.ns-b").name, "allow_any", "a direct call to b is still not imported");
    assert!(!has_cluster(&view, "outbound|80||c.ns-c.svc.cluster.local"));
}

const CAPTURE_NONE: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client, namespace: shop}
spec:
  workloadSelector: {labels: {app: client}}
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.2
    captureMode: NONE
    hosts: ["./*"]
  ingress:
  - port: {number: 9090, protocol: HTTP, name: http}
    bind: 127.0.0.3
    defaultEndpoint: 127.0.0.1:18080
    captureMode: NONE
"#;

fn capture_none_view() -> ProxyView {
    let snapshot = mesh(&[&service("shop", "reviews", "10.0.0.5", &[("http", 9080)]), CAPTURE_NONE]);
    let class = ProxyClass { interception_none: true, ..sidecar_with("shop", &[("app", "client")]) };
    config(&snapshot, &class)
}

#[test]
fn capture_none_egress_listener_binds_its_address() {
    let view = capture_none_view();
    let l = listener(&view, "127.0.0.2_9080");
    assert_eq!(socket_address_text(l.address.as_ref().expect("address")), "127.0.0.2:9080");
    assert_eq!(l.bind_to_port.map(|b| b.value), Some(true));
    let hcm = http_connection_manager(only_filter(&l));
    let rc = route_config(&view, rds_name(&hcm));
    assert_eq!(
        cluster_of(&virtual_host_for(&rc, "reviews").routes[0]),
        "outbound|9080||reviews.shop.svc.cluster.local"
    );
    assert!(!view.listeners.contains_key("virtualOutbound"), "no iptables, no virtual listeners");
    assert!(!view.listeners.contains_key("virtualInbound"));
}

#[test]
fn capture_none_ingress_listener_sends_to_the_default_endpoint() {
    let view = capture_none_view();
    let l = listener(&view, "127.0.0.3_9090");
    assert_eq!(socket_address_text(l.address.as_ref().expect("address")), "127.0.0.3:9090");
    assert_eq!(l.bind_to_port.map(|b| b.value), Some(true));
    let hcm = http_connection_manager(only_filter(&l));
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::RouteConfig(rc)) = hcm.route_specifier else {
        panic!("inline inbound routes")
    };
    assert_eq!(cluster_of(&rc.virtual_hosts[0].routes[0]), "inbound|9090||");
    let inbound = cluster(&view, "inbound|9090||").expect("inbound cluster");
    let assignment = inbound.load_assignment.expect("static endpoints");
    assert_eq!(endpoint_addresses(&assignment), ["127.0.0.1:18080"]);
}
