//! Route destinations: weights, ports and subsets (D-01..D-03).

use super::*;

fn outbound(port: u16, subset: &str, name: &str) -> String {
    format!("outbound|{port}|{subset}|{name}.default.svc.cluster.local")
}

/// The routes of `known` on `port` in namespace `default` under this VS `spec.http`,
/// with services `known`, `b`, `c`, `d` (port 80), `alt-known` (80, 8080) and
/// `single` (9080).
fn view_with(http: &str, extra: &[&str]) -> ProxyView {
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: known, namespace: default}}\n\
         spec:\n  hosts: [known]\n  http:\n{http}"
    );
    let mut docs = vec![
        service("default", "known", "10.0.0.1", &[("http", 80), ("http-alt", 8080)]),
        service("default", "alt-known", "10.0.0.2", &[("http", 80), ("http-alt", 8080)]),
        service("default", "single", "10.0.0.3", &[("http", 9080)]),
        service("default", "b", "10.0.0.4", &[("http", 80)]),
        service("default", "c", "10.0.0.5", &[("http", 80)]),
        service("default", "d", "10.0.0.6", &[("http", 80)]),
        vs,
    ];
    docs.extend(extra.iter().map(|d| d.to_string()));
    let docs: Vec<&str> = docs.iter().map(String::as_str).collect();
    config(&mesh(&docs), &sidecar_in("default"))
}

fn known_routes(view: &ProxyView, port: u16) -> Vec<Route> {
    let rc = route_config(view, &port.to_string());
    virtual_host_for(&rc, "known").routes.clone()
}

#[test]
fn d01_weights_are_passed_through() {
    let view = view_with(
        "  - route:\n    - {destination: {host: b}, weight: 50}\n    - {destination: {host: c}, weight: 25}\n    \
         - {destination: {host: d}, weight: 25}\n",
        &[],
    );
    let routes = known_routes(&view, 80);
    let (b, c, d) = (outbound(80, "", "b"), outbound(80, "", "c"), outbound(80, "", "d"));
    assert_eq!(weights_of(&routes[0]), [(b.as_str(), 50), (c.as_str(), 25), (d.as_str(), 25)]);

    let view = view_with(
        "  - route:\n    - {destination: {host: b}, weight: 1}\n    - {destination: {host: c}, weight: 3}\n",
        &[],
    );
    assert_eq!(weights_of(&known_routes(&view, 80)[0]), [(b.as_str(), 1), (c.as_str(), 3)], "relative weights");
}

#[test]
fn d01_zero_weights_are_dropped_when_there_are_several() {
    let view = view_with(
        "  - route:\n    - {destination: {host: b}, weight: 60}\n    - {destination: {host: c}, weight: 0}\n    \
         - {destination: {host: d}, weight: 40}\n",
        &[],
    );
    let (b, d) = (outbound(80, "", "b"), outbound(80, "", "d"));
    assert_eq!(weights_of(&known_routes(&view, 80)[0]), [(b.as_str(), 60), (d.as_str(), 40)]);

    let view = view_with(
        "  - route:\n    - {destination: {host: b}, weight: 100}\n    - {destination: {host: c}, weight: 0}\n",
        &[],
    );
    assert_eq!(cluster_of(&known_routes(&view, 80)[0]), b, "one destination left: all traffic to it");
}

#[test]
fn d01_a_single_destination_gets_all_traffic_whatever_its_weight() {
    for weight in ["", ", weight: 0", ", weight: 30"] {
        let view = view_with(&format!("  - route: [{{destination: {{host: b}}{weight}}}]\n"), &[]);
        assert_eq!(cluster_of(&known_routes(&view, 80)[0]), outbound(80, "", "b"), "weight {weight:?}");
    }
}

#[test]
fn d02_port_is_explicit_else_the_only_port_else_the_request_port() {
    let inferred = view_with("  - route: [{destination: {host: alt-known}}]\n", &[]);
    assert_eq!(cluster_of(&known_routes(&inferred, 80)[0]), outbound(80, "", "alt-known"));
    assert_eq!(cluster_of(&known_routes(&inferred, 8080)[0]), outbound(8080, "", "alt-known"));

    let single = view_with("  - route: [{destination: {host: single}}]\n", &[]);
    assert_eq!(cluster_of(&known_routes(&single, 80)[0]), outbound(9080, "", "single"));
    assert_eq!(cluster_of(&known_routes(&single, 8080)[0]), outbound(9080, "", "single"));

    let explicit = view_with("  - route: [{destination: {host: alt-known, port: {number: 8080}}}]\n", &[]);
    assert_eq!(cluster_of(&known_routes(&explicit, 80)[0]), outbound(8080, "", "alt-known"));
    assert!(has_cluster(&explicit, &outbound(8080, "", "alt-known")));
}

#[test]
fn d02_an_inferred_port_the_destination_lacks_has_no_cluster() {
    let view = view_with("  - route: [{destination: {host: b}}]\n", &[]);
    // b has only port 80, so it is used on 8080 too.
    assert_eq!(cluster_of(&known_routes(&view, 8080)[0]), outbound(80, "", "b"));

    let two_ports = service("default", "two", "10.0.0.9", &[("http", 9000), ("http-b", 9001)]);
    let view = view_with("  - route: [{destination: {host: two}}]\n", &[&two_ports]);
    let missing = outbound(80, "", "two");
    assert_eq!(cluster_of(&known_routes(&view, 80)[0]), missing);
    assert!(!has_cluster(&view, &missing), "Envoy answers 503 NC");
}

#[test]
fn d03_an_undefined_subset_gets_no_cluster_and_other_routes_still_work() {
    let rule = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: b, namespace: default}
spec:
  host: b
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;
    let view = view_with(
        "  - match: [{uri: {prefix: /v3}}]\n    route: [{destination: {host: b, subset: v3}}]\n  \
         - route: [{destination: {host: b, subset: v1}}]\n",
        &[rule],
    );
    let routes = known_routes(&view, 80);
    assert_eq!(cluster_of(&routes[0]), outbound(80, "v3", "b"), "the route is kept");
    assert!(!has_cluster(&view, &outbound(80, "v3", "b")), "an undefined subset has no cluster (503 NC)");
    assert_eq!(cluster_of(&routes[1]), outbound(80, "v1", "b"));
    assert!(has_cluster(&view, &outbound(80, "v1", "b")));
    assert!(has_cluster(&view, &outbound(80, "v2", "b")));
}

#[test]
fn d03_a_destination_in_no_registry_is_routed_but_has_no_cluster() {
    let view = view_with("  - route: [{destination: {host: nowhere.example.com}}]\n", &[]);
    let name = "outbound|80||nowhere.example.com";
    assert_eq!(cluster_of(&known_routes(&view, 80)[0]), name);
    assert!(!has_cluster(&view, name));
}

#[test]
fn d03_a_subset_no_pod_carries_has_a_cluster_with_no_endpoints() {
    let rule = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: b, namespace: default}\n\
         spec: {host: b, subsets: [{name: v1, labels: {version: v1}}, {name: v9, labels: {version: v9}}]}";
    let v1_pod = pod("default", "b-v1", "10.1.0.1", "{app: b, version: v1}");
    let view = view_with("  - route: [{destination: {host: b, subset: v9}}]\n", &[rule, &v1_pod]);
    let v9 = outbound(80, "v9", "b");
    assert!(has_cluster(&view, &v9));
    assert!(endpoint_addresses(&cla(&view, &v9)).is_empty(), "503 UH, not NC: the assignment is sent, empty");
    assert_eq!(endpoint_addresses(&cla(&view, &outbound(80, "v1", "b"))), ["10.1.0.1:80"]);
}
