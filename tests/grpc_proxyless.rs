//! End to end: the real gRPC proxyless xDS client (grpcio, State of the
//! World, every type requested by name) calls real gRPC servers through an
//! `xds:///` target resolved by `meshplane up`.

mod support;

use std::net::SocketAddr;

use serde_json::{Map, Value, json};
use support::{GrpcEchoServer, Meshplane, TestNet, free_port, grpc_bootstrap, grpc_client};

const SERVICE_PORT: u16 = 7070;

fn mesh(net: &TestNet, server_port: u16, traffic: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop}}
spec:
  selector: {{app: echo}}
  ports: [{{name: grpc, port: {SERVICE_PORT}, targetPort: {server_port}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-1, namespace: shop, labels: {{app: echo, version: v1}}}}
status: {{podIP: {ip1}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo-2, namespace: shop, labels: {{app: echo, version: v2}}}}
status: {{podIP: {ip2}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo, namespace: shop}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
{traffic}"#,
        ip1 = net.ip(21),
        ip2 = net.ip(22),
    )
}

struct Setup {
    _servers: Vec<GrpcEchoServer>,
    _dir: tempfile::TempDir,
    _mesh: Meshplane,
    bootstrap: std::path::PathBuf,
}

fn setup(traffic: &str) -> Setup {
    let net = TestNet::new();
    let port = free_port(net.ip(21));
    let servers = vec![
        GrpcEchoServer::start(SocketAddr::new(net.ip(21), port), "echo-1"),
        GrpcEchoServer::start(SocketAddr::new(net.ip(22), port), "echo-2"),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), mesh(&net, port, traffic)).unwrap();
    let mesh = Meshplane::start(dir.path());
    let bootstrap = dir.path().join("grpc-bootstrap.json");
    let mut metadata = Map::new();
    metadata.insert("GENERATOR".into(), json!("grpc"));
    metadata.insert("NAMESPACE".into(), json!("shop"));
    let node_id = format!("sidecar~{}~grpc-client-1.shop~shop.svc.cluster.local", net.ip(2));
    grpc_bootstrap(&bootstrap, &node_id, mesh.xds_addr(), metadata);
    Setup { _servers: servers, _dir: dir, _mesh: mesh, bootstrap }
}

fn servers(summary: &Value) -> Map<String, Value> {
    summary["servers"].as_object().cloned().unwrap_or_default()
}

#[test]
fn proxyless_grpc_client_calls_through_an_xds_target() {
    let s = setup("");
    let target = format!("xds:///echo.shop.svc.cluster.local:{SERVICE_PORT}");
    let summary = grpc_client(Some(&s.bootstrap), &target, 20, &["--timeout", "10"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["ok"], 20, "{summary}");
    let servers = servers(&summary);
    // Round robin over both endpoints of the service.
    assert!(servers.contains_key("echo-1") && servers.contains_key("echo-2"), "{summary}");
}

#[test]
fn proxyless_grpc_follows_virtual_service_routing() {
    let s = setup(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: [echo]
  http:
  - route: [{destination: {host: echo, subset: v2}}]
"#,
    );
    // The short form a client in the same namespace may dial.
    let target = format!("xds:///echo:{SERVICE_PORT}");
    let summary = grpc_client(Some(&s.bootstrap), &target, 10, &["--timeout", "10"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["ok"], 10, "{summary}");
    assert_eq!(servers(&summary).get("echo-2"), Some(&json!(10)), "{summary}");
}
