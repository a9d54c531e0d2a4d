//! End to end: `meshplane up` on a directory of Istio YAML, a real Envoy 1.40
//! sidecar (Sidecar `captureMode: NONE` on a loopback address), and real HTTP
//! backends. Every claim is proven with real requests through the sidecar.
//!
//! The mesh (namespace `shop`, one loopback block per test):
//! ```text
//!   client-1 (127.0.N.2, app=client) ── Envoy listener 127.0.N.2:8080 ──▶ backend.shop:8080
//!        backend-v1 127.0.N.21   backend-v2 127.0.N.22   backend-v3 127.0.N.23   (echo servers, one port)
//! ```

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    EchoBackend, Envoy, EnvoyOptions, Meshplane, PROPAGATION, Response, TestNet, XdsApi, free_port, try_http_request,
    wait_for,
};

const SERVICE_PORT: u16 = 8080;

/// The shop mesh with a client sidecar, three backend versions and a
/// `traffic.yaml` the test writes and edits.
struct Shop {
    net: TestNet,
    dir: tempfile::TempDir,
    backends: Vec<EchoBackend>,
    mesh: Meshplane,
    client: Envoy,
}

impl Shop {
    fn start(traffic: &str) -> Shop {
        Shop::start_with(traffic, XdsApi::Delta)
    }

    fn start_with(traffic: &str, api: XdsApi) -> Shop {
        let net = TestNet::new();
        let port = free_port(net.ip(21));
        let backends: Vec<EchoBackend> =
            (1..=3).map(|v| EchoBackend::start(SocketAddr::new(net.ip(20 + v), port), &format!("v{v}"))).collect();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("base.yaml"), base_mesh(&net, port)).unwrap();
        std::fs::write(dir.path().join("traffic.yaml"), traffic).unwrap();
        let mesh = Meshplane::start(dir.path());
        let client = Envoy::start(
            EnvoyOptions::sidecar(net.ip(2), "client-1", "shop", mesh.xds_addr())
                .with_metadata("INTERCEPTION_MODE", json!("NONE"))
                .with_api(api),
        );
        let shop = Shop { net, dir, backends, mesh, client };
        shop.client.wait_for_listener(&format!("{}_{SERVICE_PORT}", shop.net.ip(2)));
        shop
    }

    fn listener(&self) -> SocketAddr {
        SocketAddr::new(self.net.ip(2), SERVICE_PORT)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Replace a config file atomically (write + rename), as editors and
    /// ConfigMap updates do.
    fn write(&self, file: &str, yaml: &str) {
        let tmp = self.path(&format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.path(file)).unwrap();
    }

    fn try_get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
        try_http_request(self.listener(), "GET", "backend", path, headers)
    }

    fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        self.try_get(path, headers).unwrap_or_else(|e| panic!("GET {path} through the sidecar: {e}"))
    }

    /// Which backend answered `path` (with `headers`), once routing gives `expect`.
    fn wait_routed(&self, path: &str, headers: &[(&str, &str)], expect: &str) {
        wait_for(PROPAGATION, &format!("GET {path} {headers:?} to reach {expect}"), || {
            let r = self.try_get(path, headers)?;
            if backend_of(&r).as_deref() == Some(expect) { Ok(()) } else { Err(format!("{} {}", r.status, r.text())) }
        });
    }

    fn backend(&self, version: &str) -> &EchoBackend {
        self.backends.iter().find(|b| b.name() == version).expect("known version")
    }
}

fn base_mesh(net: &TestNet, backend_port: u16) -> String {
    let pods: String = (1..=3)
        .map(|v| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: backend-v{v}, namespace: shop, labels: {{app: backend, version: v{v}}}}}\nstatus: {{podIP: {}}}\n",
                net.ip(20 + v)
            )
        })
        .collect();
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: shop}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {backend_port}}}]
---
{client}{pods}"#,
        client = client_workload("client-1", "client", net.ip(2)),
    )
}

/// A client pod and the Sidecar that gives it an egress listener for the
/// service port on its own address (`captureMode: NONE`: no iptables).
fn client_workload(pod: &str, app: &str, ip: std::net::IpAddr) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: shop, labels: {{app: {app}}}}}
status: {{podIP: {ip}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: {app}, namespace: shop}}
spec:
  workloadSelector: {{labels: {{app: {app}}}}}
  egress:
  - port: {{number: {SERVICE_PORT}, protocol: HTTP, name: http}}
    bind: {ip}
    captureMode: NONE
    hosts: ["./*"]
"#
    )
}

const SUBSETS: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: shop}
spec:
  host: backend
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"#;

fn with_subsets(virtual_service: &str) -> String {
    format!("{SUBSETS}---\n{virtual_service}")
}

fn backend_of(r: &Response) -> Option<String> {
    (r.status == 200).then(|| r.json()["backend"].as_str().map(str::to_string)).flatten()
}

/// Send `n` requests and count the answering backend (or `status N`).
fn tally(shop: &Shop, n: usize, path: &str, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = shop.get(path, headers);
        let key = backend_of(&r).unwrap_or_else(|| format!("status {}", r.status));
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[test]
fn weighted_split_between_subsets_is_relative_and_within_tolerance() {
    // Weights 1 and 3 do not add up to 100: Istio normalises by their sum (D-01).
    let shop = Shop::start(&with_subsets(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - route:
    - {destination: {host: backend, subset: v1}, weight: 1}
    - {destination: {host: backend, subset: v2}, weight: 3}
"#,
    ));
    shop.wait_routed("/", &[], "v2");
    let n = 400;
    let counts = tally(&shop, n, "/", &[]);
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "every request answered by v1 or v2: {counts:?}");
    // Expected 100 of 400 to v1; binomial sd = 8.7; allow 4 sd.
    assert!((65..=135).contains(&v1), "v1 should get ~25% (100 of {n}): {counts:?}");
    assert_eq!(shop.backend("v3").requests(), 0, "v3 is not a destination");
}

#[test]
fn header_and_uri_prefix_matches_route_in_order() {
    let shop = Shop::start_with(
        &with_subsets(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - match:
    - headers: {x-version: {exact: v2}}
    route: [{destination: {host: backend, subset: v2}}]
  - match:
    - uri: {prefix: /api/}
    - uri: {exact: /status}
    route: [{destination: {host: backend, subset: v3}}]
  - route: [{destination: {host: backend, subset: v1}}]
"#,
        ),
        // The same semantics over State-of-the-World ADS.
        XdsApi::Sotw,
    );
    shop.wait_routed("/", &[], "v1");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case<'_>] = &[
        ("/", &[], "v1"),
        ("/anything", &[], "v1"),
        ("/", &[("x-version", "v2")], "v2"),
        ("/api/items", &[("x-version", "v2")], "v2"), // first match wins
        ("/api/items", &[], "v3"),
        ("/apix", &[], "v1"), // raw prefix `/api/` does not match
        ("/status", &[], "v3"),
        ("/status?verbose=1", &[], "v3"), // exact ignores the query
        ("/status/", &[], "v1"),
        ("/", &[("x-version", "v3")], "v1"),
    ];
    for (path, headers, expect) in cases {
        let r = shop.get(path, headers);
        assert_eq!(backend_of(&r).as_deref(), Some(*expect), "GET {path} {headers:?}: {} {}", r.status, r.text());
    }
}

#[test]
fn a_request_matching_no_route_gets_404() {
    let shop = Shop::start(&with_subsets(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - match: [{method: {exact: GET}, uri: {prefix: /only}}]
    route: [{destination: {host: backend, subset: v1}}]
"#,
    ));
    shop.wait_routed("/only", &[], "v1");
    // M-03: no fallback to default routing on sidecars.
    assert_eq!(shop.get("/other", &[]).status, 404);
    let post = try_http_request(shop.listener(), "POST", "backend", "/only", &[]).unwrap();
    assert_eq!(post.status, 404, "method is part of the match");
}

#[test]
fn configured_retries_recover_from_a_failing_backend() {
    let shop = Shop::start(&with_subsets(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend, subset: v1}}]
    retries: {attempts: 3, retryOn: "5xx"}
"#,
    ));
    shop.wait_routed("/", &[], "v1");
    let v1 = shop.backend("v1");
    v1.reset_requests();
    v1.fail_first(2);
    let r = shop.get("/", &[]);
    assert_eq!(r.status, 200, "two 503s are retried away: {}", r.text());
    assert_eq!(v1.requests(), 3, "one try and two retries");
    assert_eq!(r.json()["headers"]["x-envoy-attempt-count"], "3");

    // More failures than retries: the client sees the 503 after 1 + 3 attempts (R-02).
    v1.reset_requests();
    v1.fail_all();
    assert_eq!(shop.get("/", &[]).status, 503);
    assert_eq!(v1.requests(), 4);
}

#[test]
fn default_retries_do_not_retry_application_503s() {
    // R-01 (Istio 1.24+): without a VirtualService, connect failures are
    // retried but an application 503 is not.
    let shop = Shop::start("");
    let all = |s: &Shop| s.backends.iter().map(EchoBackend::requests).sum::<u64>();
    wait_for(PROPAGATION, "default route serves", || shop.try_get("/", &[]).map(|r| r.status == 200).unwrap_or(false));
    for b in &shop.backends {
        b.fail_all();
    }
    let before = all(&shop);
    assert_eq!(shop.get("/", &[]).status, 503);
    assert_eq!(all(&shop) - before, 1, "an application 503 is not retried by default");
}

#[test]
fn route_timeout_fires() {
    let shop = Shop::start(&with_subsets(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend, subset: v1}}]
    timeout: 500ms
"#,
    ));
    shop.wait_routed("/", &[], "v1");
    let started = Instant::now();
    let r = shop.get("/?delay_ms=5000", &[]);
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("upstream request timeout"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(4), "the 500ms timeout cut the 5s response");
    // Within the timeout the request succeeds.
    assert_eq!(shop.get("/?delay_ms=50", &[]).status, 200);
}

#[test]
fn editing_config_while_traffic_flows_changes_routing_without_failures() {
    let to = |subset: &str| {
        with_subsets(&format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{{destination: {{host: backend, subset: {subset}}}}}]\n"
        ))
    };
    let shop = Arc::new(Shop::start(&to("v1")));
    shop.wait_routed("/", &[], "v1");

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let traffic = {
        let (shop, stop, seen, phase) = (shop.clone(), stop.clone(), seen.clone(), phase.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let outcome = match shop.try_get("/", &[]) {
                    Ok(r) => backend_of(&r).ok_or_else(|| {
                        format!("phase {}: status {}: {}", phase.load(Ordering::Relaxed), r.status, r.text())
                    }),
                    Err(e) => Err(e),
                };
                seen.lock().unwrap().push(outcome);
            }
        })
    };
    let count_of = |name: &str| seen.lock().unwrap().iter().filter(|o| o.as_deref() == Ok(name)).count();
    wait_for(PROPAGATION, "traffic flowing to v1", || count_of("v1") >= 20);
    phase.store(1, Ordering::Relaxed);
    shop.write("traffic.yaml", &to("v2"));
    wait_for(PROPAGATION, "routing to switch to v2", || count_of("v2") >= 20);
    // A change that adds a new cluster (subset) and routes to it in one edit:
    // make-before-break must deliver the cluster before the route.
    let v3_only = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: backend, namespace: shop}\nspec:\n  host: backend\n  subsets:\n  - {name: blue, labels: {version: v3}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: backend, namespace: shop}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{destination: {host: backend, subset: blue}}]\n";
    phase.store(2, Ordering::Relaxed);
    shop.write("traffic.yaml", v3_only);
    wait_for(PROPAGATION, "routing to switch to the new subset", || count_of("v3") >= 20);
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    let seen = seen.lock().unwrap();
    let failures: Vec<&String> = seen.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the edits: {:?}",
        failures.len(),
        seen.len(),
        &failures[..failures.len().min(5)]
    );
    // Once switched, routing never goes back.
    let last_v1 = seen.iter().rposition(|o| o.as_deref() == Ok("v1")).unwrap();
    let first_v2 = seen.iter().position(|o| o.as_deref() == Ok("v2")).unwrap();
    assert!(last_v1 < first_v2, "v1 answered after the switch to v2");
}

#[test]
fn removing_an_endpoint_stops_traffic_to_it() {
    let shop = Shop::start("");
    wait_for(PROPAGATION, "both v1 and v2 to receive traffic", || {
        let _ = shop.try_get("/", &[]);
        shop.backend("v1").requests() > 0 && shop.backend("v2").requests() > 0
    });
    // Remove pod backend-v2 from the mesh.
    let endpoint_rebuilds = shop.mesh.metric("meshplane_shard_endpoint_rebuilds_total");
    let base = std::fs::read_to_string(shop.path("base.yaml")).unwrap();
    let without_v2: Vec<&str> = base.split("---\n").filter(|doc| !doc.contains("name: backend-v2,")).collect();
    assert_eq!(without_v2.len(), base.split("---\n").count() - 1, "the v2 pod document was found");
    shop.write("base.yaml", &without_v2.join("---\n"));
    wait_for(PROPAGATION, "Envoy to drop the v2 endpoint", || {
        let clusters = shop.client.admin_get("/clusters").text();
        let v2 = shop.backend("v2").addr().ip().to_string();
        !clusters.lines().any(|l| l.starts_with("outbound|8080||backend.shop.svc.cluster.local::") && l.contains(&v2))
    });
    let before = shop.backend("v2").requests();
    let counts = tally(&shop, 60, "/", &[]);
    assert_eq!(shop.backend("v2").requests(), before, "no request reaches the removed endpoint: {counts:?}");
    assert!(!counts.contains_key("v2"), "{counts:?}");
    assert!(counts.keys().all(|k| k == "v1" || k == "v3"), "only the remaining endpoints answer: {counts:?}");
    // Served by the endpoint-only path: assignments refreshed, no class generated again.
    assert!(shop.mesh.metric("meshplane_shard_endpoint_rebuilds_total") > endpoint_rebuilds);
    assert!(shop.mesh.metric("meshplane_shard_classes_refreshed_total") >= 1.0);
}

#[test]
fn a_malformed_file_leaves_the_previous_routing_intact() {
    let good = with_subsets(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: shop}
spec:
  hosts: [backend]
  http:
  - route: [{destination: {host: backend, subset: v2}}]
"#,
    );
    let shop = Shop::start(&good);
    shop.wait_routed("/", &[], "v2");

    // Broken YAML, then a well-formed file with an invalid value: each is
    // rejected with a diagnostic naming the file, and routing stays on v2.
    let broken_cases = [
        ("syntax", good.replace("hosts: [backend]", "hosts: [backend")),
        (
            "zero total weight",
            good.replace(
                "  - route: [{destination: {host: backend, subset: v2}}]",
                "  - route:\n    - {destination: {host: backend, subset: v1}, weight: 0}\n    - {destination: {host: backend, subset: v3}, weight: 0}",
            ),
        ),
    ];
    for (what, text) in broken_cases {
        let errors_before = config_errors(&shop.mesh);
        shop.write("traffic.yaml", &text);
        wait_for(PROPAGATION, &format!("meshplane to report the {what} error"), || {
            let errors = config_errors(&shop.mesh);
            (errors != errors_before && errors.contains("traffic.yaml")).then_some(())
        });
        let counts = tally(&shop, 30, "/", &[]);
        assert_eq!(counts.get("v2"), Some(&30), "{what}: routing unchanged: {counts:?}");
    }
    // Fixing the file applies it.
    shop.write("traffic.yaml", &good.replace("subset: v2", "subset: v3"));
    shop.wait_routed("/", &[], "v3");
}

/// The directory source's current diagnostics, as `/debug/configz` shows them.
fn config_errors(mesh: &Meshplane) -> String {
    let body = mesh.admin_get("/debug/configz").json();
    let diagnostics = body["diagnostics"].as_array().cloned().unwrap_or_default();
    diagnostics.iter().filter_map(|d| d.as_str()).filter(|d| d.starts_with("error")).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_proxy_that_nacks_does_not_delay_the_others() {
    // Proxy B (app=bad) is given a route whose header regex Envoy's RE2
    // rejects (repeat count over 1000), so B NACKs its routes; proxy A never
    // sees that route (sourceLabels). A config change must still reach A
    // promptly, and B must keep its last good config.
    let vs = |default: &str| {
        with_subsets(&format!(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: backend, namespace: shop}}
spec:
  hosts: [backend]
  http:
  - match: [{{sourceLabels: {{app: bad}}, headers: {{x-token: {{regex: "x{{1001}}"}}}}}}]
    route: [{{destination: {{host: backend, subset: v3}}}}]
  - route: [{{destination: {{host: backend, subset: {default}}}}}]
"#
        ))
    };
    let shop = Shop::start(&vs("v1"));
    shop.wait_routed("/", &[], "v1");
    let b_ip = shop.net.ip(3);
    let proxy_b = client_workload("client-2", "bad", b_ip);
    shop.write("proxy-b.yaml", &proxy_b);
    let b = Envoy::spawn(
        EnvoyOptions::sidecar(b_ip, "client-2", "shop", shop.mesh.xds_addr())
            .with_metadata("INTERCEPTION_MODE", json!("NONE")),
    );
    let rds_rejected =
        |e: &Envoy| e.stat(&format!("http.outbound_{b_ip}_{SERVICE_PORT}.rds.{b_ip}_{SERVICE_PORT}.update_rejected"));
    let first = b.wait_until(PROPAGATION, "proxy B to NACK its routes", |e| rds_rejected(e).filter(|n| *n > 0));

    // The change reaches A while B keeps rejecting.
    let changed = Instant::now();
    shop.write("traffic.yaml", &vs("v2"));
    shop.wait_routed("/", &[], "v2");
    let took = changed.elapsed();
    b.wait_until(PROPAGATION, "proxy B to reject the new routes too", |e| rds_rejected(e).filter(|n| *n > first));
    assert!(took < PROPAGATION, "A converged in {took:?} despite B's NACKs");
    let log = shop.mesh.log_tail(400);
    assert!(
        log.contains("proxy rejected config (NACK)") && log.contains("client-2.shop"),
        "meshplane logs B's NACK with its proxy id:\n{log}"
    );
    // The rejects and connections show on /metrics under istiod's names.
    assert!(shop.mesh.metric("pilot_total_xds_rejects") >= 2.0);
    assert_eq!(shop.mesh.metric("pilot_xds"), 2.0, "two proxies connected");
    let metrics = shop.mesh.admin_get("/metrics").text();
    assert!(metrics.contains("pilot_xds_pushes{type=\"rds\"}"), "{metrics}");
    // A's routing is unaffected by B's rejected route.
    let counts = tally(&shop, 20, "/", &[("x-token", "xx")]);
    assert_eq!(counts.get("v2"), Some(&20), "{counts:?}");
}
