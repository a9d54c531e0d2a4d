//! Protocol selection per port (P-01): HTTP ports get an HTTP connection
//! manager and VS `http` routes; `tcp-` ports get tcp_proxy and VS `tcp` routes.

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::*;

#[test]
fn p01_tcp_ports_use_tcp_proxy_and_ignore_http_routes() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: ns-b}
spec:
  hosts: [b]
  http:
  - headers: {request: {set: {x-l7: "yes"}}}
    route: [{destination: {host: b}}]
"#;
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns-b}\n\
         spec: {clusterIP: 10.0.0.2, selector: {app: b}, ports: [{name: http, port: 80}, {name: tcp-x, port: 90}, {port: 91}, {name: grpc-api, port: 92}]}";
    let view = config(&mesh(&[svc, vs]), &sidecar_in("ns-a"));

    for port in [80, 91, 92] {
        let hcm = http_connection_manager(only_filter(&listener(&view, &format!("0.0.0.0_{port}"))));
        let rc = route_config(&view, rds_name(&hcm));
        assert_eq!(
            added_request_headers(&virtual_host_for(&rc, "b.ns-b").routes[0]),
            [("x-l7", "yes")],
            "port {port} is HTTP"
        );
    }

    let tcp = tcp_proxy(only_filter(&listener(&view, "10.0.0.2_90")));
    assert_eq!(tcp.cluster_specifier, Some(ClusterSpecifier::Cluster("outbound|90||b.ns-b.svc.cluster.local".into())));
    assert!(!view.routes.contains_key("90"), "no HTTP processing on a tcp- port");
    assert!(!view.listeners.contains_key("0.0.0.0_90"));

    let grpc = cluster(&view, "outbound|92||b.ns-b.svc.cluster.local").expect("cluster");
    assert!(
        grpc.typed_extension_protocol_options.contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "gRPC upstreams speak HTTP/2"
    );
}

#[test]
fn p01_tcp_routes_of_a_vs_apply_on_tcp_ports() {
    let vs = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: ns-b}
spec:
  hosts: [b]
  tcp:
  - match: [{port: 90}]
    route: [{destination: {host: c}}]
"#;
    let snapshot = mesh(&[
        &service("ns-b", "b", "10.0.0.2", &[("tcp-x", 90)]),
        &service("ns-b", "c", "10.0.0.3", &[("tcp-db", 5432)]),
        vs,
    ]);
    let view = config(&snapshot, &sidecar_in("ns-a"));
    let tcp = tcp_proxy(only_filter(&listener(&view, "10.0.0.2_90")));
    assert_eq!(
        tcp.cluster_specifier,
        Some(ClusterSpecifier::Cluster("outbound|5432||c.ns-b.svc.cluster.local".into()))
    );
    assert!(has_cluster(&view, "outbound|5432||c.ns-b.svc.cluster.local"));
}
