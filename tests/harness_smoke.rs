//! Proves the test harness and the installed peers work, without meshplane:
//! a real Envoy with a static bootstrap in front of an echo backend, the
//! generated xDS bootstrap, and the Python gRPC peers on a plain target.

mod support;

use std::net::TcpListener;

use support::{
    EchoBackend, Envoy, EnvoyOptions, FailMode, GrpcEchoServer, PROPAGATION, STARTUP, TestNet, XdsApi, grpc_client,
    http_request, try_http_request, wait_for,
};

fn static_bootstrap(listener: std::net::SocketAddr, backend: std::net::SocketAddr) -> String {
    format!(
        r#"
node: {{id: harness-smoke, cluster: harness}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: {lip}, port_value: {lport}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/slow"}}
                route: {{cluster: echo, timeout: 0.2s}}
              - match: {{prefix: "/"}}
                route: {{cluster: echo}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: {bip}, port_value: {bport}}}}}}}
"#,
        lip = listener.ip(),
        lport = listener.port(),
        bip = backend.ip(),
        bport = backend.port(),
    )
}

#[test]
fn envoy_static_bootstrap_routes_to_echo_backend() {
    let net = TestNet::new();
    let backend = EchoBackend::start(net.free_addr(10), "backend-a");
    let listener = net.free_addr(1);
    let envoy = Envoy::start_with_bootstrap(&static_bootstrap(listener, backend.addr()));

    // The static listener is in the config dump.
    assert!(
        support::envoy::listener_names(&envoy.config_dump()).contains(&"ingress".to_string()),
        "listener missing from config dump"
    );

    // A request through Envoy reaches the backend with host, path, headers.
    let resp = http_request(listener, "GET", "shop.example", "/hello?x=1", &[("x-test", "yes")]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-backend"), Some("backend-a"));
    let body = resp.json();
    assert_eq!(body["backend"], "backend-a");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(body["host"], "shop.example");
    assert_eq!(body["headers"]["x-test"], "yes");
    assert!(body["headers"]["x-request-id"].is_string(), "Envoy should add x-request-id: {body}");
    assert_eq!(backend.requests(), 1);

    // Injected failures pass through Envoy, then the backend recovers.
    backend.fail_first(2);
    for _ in 0..2 {
        assert_eq!(http_request(listener, "GET", "shop.example", "/", &[]).status, 503);
    }
    assert_eq!(http_request(listener, "GET", "shop.example", "/", &[]).status, 200);
    assert_eq!(backend.fail_mode(), FailMode::Off);
    assert_eq!(backend.requests(), 4);

    // A delay longer than the /slow route's 0.2 s timeout gives a 504.
    let slow = http_request(listener, "GET", "shop.example", "/slow?delay_ms=1000", &[]);
    assert_eq!(slow.status, 504, "{}", slow.text());

    // Envoy's own counters agree.
    envoy.wait_until(PROPAGATION, "upstream_rq_503 == 2", |e| e.stat("cluster.echo.upstream_rq_503") == Some(2));
    assert_eq!(envoy.stat("cluster.echo.upstream_rq_200"), Some(2));
    assert_eq!(envoy.stat("cluster.echo.no_such_stat"), None);
}

#[test]
fn echo_backend_controls_and_clean_shutdown() {
    let net = TestNet::new();
    let addr = net.free_addr(1);
    let backend = EchoBackend::start(addr, "direct");

    let resp = http_request(addr, "POST", "svc.local", "/p?status=201", &[("x-a", "1")]);
    assert_eq!(resp.status, 201);
    let body = resp.json();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["host"], "svc.local");
    assert_eq!(body["headers"]["x-a"], "1");

    backend.fail_all();
    assert_eq!(http_request(addr, "GET", "svc.local", "/", &[]).status, 503);
    assert_eq!(http_request(addr, "GET", "svc.local", "/", &[]).status, 503);
    backend.heal();
    assert_eq!(http_request(addr, "GET", "svc.local", "/", &[]).status, 200);
    assert_eq!(backend.requests(), 4);

    // Dropping closes the listener at once; the address can be reused.
    drop(backend);
    assert!(try_http_request(addr, "GET", "svc.local", "/", &[]).is_err());
    let again = EchoBackend::start(addr, "again");
    assert_eq!(http_request(addr, "GET", "svc.local", "/", &[]).json()["backend"], "again");
    assert_eq!(again.requests(), 1);
}

/// The generated xDS bootstrap is accepted by Envoy, carries the node id and
/// metadata, and makes Envoy dial the control plane address (nothing answers
/// there, so Envoy stays initializing).
fn generated_bootstrap_dials_xds(api: XdsApi) {
    let net = TestNet::new();
    let xds = TcpListener::bind(net.free_addr(1)).expect("bind fake xds");
    xds.set_nonblocking(true).unwrap();
    let opts = EnvoyOptions::sidecar(net.ip(2), "client-1", "shop", xds.local_addr().unwrap())
        .with_labels(&[("app", "client"), ("version", "v1")])
        .with_api(api);
    let envoy = Envoy::spawn(opts);

    wait_for(STARTUP, "Envoy to connect to the xDS address", || xds.accept().is_ok());
    let state = envoy.server_state().expect("admin /ready");
    assert_ne!(state, "LIVE", "no control plane answered, yet Envoy is LIVE");

    let dump = envoy.config_dump();
    let bootstrap = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["@type"] == "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump")
        .expect("bootstrap in config dump");
    let node = &bootstrap["bootstrap"]["node"];
    assert_eq!(node["id"], format!("sidecar~{}~client-1.shop~shop.svc.cluster.local", net.ip(2)));
    assert_eq!(node["cluster"], "client.shop");
    assert_eq!(node["metadata"]["NAMESPACE"], "shop");
    assert_eq!(node["metadata"]["LABELS"]["version"], "v1");
    let api_type = &bootstrap["bootstrap"]["dynamic_resources"]["ads_config"]["api_type"];
    let expected = match api {
        XdsApi::Delta => "DELTA_GRPC",
        XdsApi::Sotw => "GRPC",
    };
    assert_eq!(api_type, expected);
}

#[test]
fn envoy_generated_bootstrap_delta() {
    generated_bootstrap_dials_xds(XdsApi::Delta);
}

#[test]
fn envoy_generated_bootstrap_sotw() {
    generated_bootstrap_dials_xds(XdsApi::Sotw);
}

#[test]
fn grpc_echo_server_and_client_on_plain_target() {
    let net = TestNet::new();
    let server = GrpcEchoServer::start(net.free_addr(1), "grpc-a");
    let summary =
        grpc_client(None, &server.addr().to_string(), 5, &["--timeout", "10"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary["ok"], 5, "{summary}");
    assert_eq!(summary["servers"]["grpc-a"], 5, "{summary}");

    // A wrong method fails, and the client says so with a non-zero exit.
    let err = grpc_client(None, &server.addr().to_string(), 1, &["--method", "/echo.Echo/Nope"])
        .expect_err("unknown method must fail");
    assert!(err.contains("UNIMPLEMENTED"), "{err}");
}
