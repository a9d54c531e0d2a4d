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

/// Services `known`, `alt-known` (ports 80, 8080) and `wild`, `explicit`,
/// `dest` in `default`, plus these documents; the client is in `default`.
fn default_ns_view(extra: &[&str]) -> ProxyView {
    let services = [
        service("default", "known", "10.0.1.1", &[("http", 80), ("http-alt", 8080)]),
        service("default", "alt-known", "10.0.1.2", &[("http", 80), ("http-alt", 8080)]),
        service("default", "wild", "10.0.1.3", &[("http", 80)]),
        service("default", "explicit", "10.0.1.4", &[("http", 80)]),
        service("default", "dest", "10.0.1.5", &[("http", 80)]),
    ];
    let docs: Vec<&str> = services.iter().map(String::as_str).chain(extra.iter().copied()).collect();
    config(&mesh(&docs), &sidecar_in("default"))
}

fn vs(ns: &str, name: &str, hosts: &str, dest: &str, created: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
         metadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\n\
         spec: {{hosts: {hosts}, http: [{{route: [{{destination: {{host: {dest}.default.svc.cluster.local}}}}]}}]}}"
    )
}

/// Where a request for `host` on `port` goes: the first route's cluster.
fn routed_to(view: &ProxyView, port: u16, host: &str) -> String {
    let rc = route_config(view, &port.to_string());
    cluster_of(&virtual_host_for(&rc, host).routes[0]).to_string()
}

#[test]
fn sc01_a_vs_is_imported_through_its_own_namespace() {
    let sidecar = sidecar_resource(
        "default",
        "default",
        "{egress: [{hosts: [default/known.default.svc.cluster.local, default/alt-known.default.svc.cluster.local]}]}",
    );
    let explicit = vs("default", "explicit", "[known.default.svc.cluster.local]", "explicit", "2021-01-01T00:00:00Z");

    // The wildcard VS lives in `default`, which the Sidecar imports from: it
    // applies to alt-known even though the Sidecar names no wildcard.
    let wild_here = vs("default", "wild", "[\"*.cluster.local\"]", "wild", "2020-01-01T00:00:00Z");
    let view = default_ns_view(&[&sidecar, &explicit, &wild_here]);
    assert_eq!(routed_to(&view, 80, "known"), "outbound|80||explicit.default.svc.cluster.local");
    assert_eq!(routed_to(&view, 80, "alt-known"), "outbound|80||wild.default.svc.cluster.local");

    // The same VS in a namespace the Sidecar does not import from is not used.
    let wild_elsewhere = vs("not-default", "wild", "[\"*.cluster.local\"]", "wild", "2020-01-01T00:00:00Z");
    let view = default_ns_view(&[&sidecar, &explicit, &wild_elsewhere]);
    assert_eq!(routed_to(&view, 80, "known"), "outbound|80||explicit.default.svc.cluster.local");
    assert_eq!(routed_to(&view, 80, "alt-known"), "outbound|80||alt-known.default.svc.cluster.local");
}

#[test]
fn sc01_a_wildcard_vs_imported_by_an_exact_egress_host() {
    let sidecar =
        sidecar_resource("default", "default", "{egress: [{hosts: [\"*/known.default.svc.cluster.local\"]}]}");
    let wild = vs("default", "wild", "[\"*.cluster.local\"]", "dest", "2020-01-01T00:00:00Z");
    let view = default_ns_view(&[&sidecar, &wild]);
    assert_eq!(routed_to(&view, 80, "known"), "outbound|80||dest.default.svc.cluster.local");
    let rc = route_config(&view, "80");
    assert_eq!(virtual_host_for(&rc, "alt-known").name, "allow_any", "alt-known is not imported");
    assert!(rc.virtual_hosts.iter().all(|vh| !vh.domains.contains(&"*.cluster.local".to_string())));
}

#[test]
fn sc01_a_vs_imported_for_one_host_applies_to_all_its_hosts() {
    let sidecar =
        sidecar_resource("default", "default", "{egress: [{hosts: [\"*/known.default.svc.cluster.local\"]}]}");
    let both = vs(
        "default",
        "both",
        "[known.default.svc.cluster.local, alt-known.default.svc.cluster.local]",
        "dest",
        "2020-01-01T00:00:00Z",
    );
    let view = default_ns_view(&[&sidecar, &both]);
    assert_eq!(routed_to(&view, 80, "known.default.svc.cluster.local"), "outbound|80||dest.default.svc.cluster.local");
    assert_eq!(
        routed_to(&view, 80, "alt-known.default.svc.cluster.local"),
        "outbound|80||dest.default.svc.cluster.local",
        "not imported, but the VS covers it"
    );
}

#[test]
fn sc01_a_vs_host_matching_no_imported_service_is_a_literal_domain() {
    let sidecar = sidecar_resource(
        "not-default",
        "default",
        "{egress: [{hosts: [\"not-default/*.default.svc.cluster.local\", ./own.not-default.svc.cluster.local]}]}",
    );
    let wild = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: wild, namespace: not-default}\n\
         spec: {hosts: [\"*.default.svc.cluster.local\"], http: [{route: [{destination: {host: dest.default.svc.cluster.local}}]}]}";
    let own = service("not-default", "own", "10.0.2.1", &[("http", 80)]);
    let services = [service("default", "explicit", "10.0.1.4", &[("http", 80)]), own];
    let docs: Vec<&str> = services.iter().map(String::as_str).chain([sidecar.as_str(), wild]).collect();
    let view = config(&mesh(&docs), &sidecar_in("not-default"));
    let rc = route_config(&view, "80");
    let vh = virtual_host_for(&rc, "explicit.default.svc.cluster.local");
    assert_eq!(vh.domains, ["*.default.svc.cluster.local"], "no imported service matches: a wildcard domain");
    assert_eq!(cluster_of(&vh.routes[0]), "outbound|80||dest.default.svc.cluster.local");
}
