//! End to end: `meshplane up` starts, shuts down cleanly on SIGTERM and
//! SIGINT with proxies connected, and keeps its store across restarts with
//! `--data-dir`, reconciling it with the configuration directory.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Envoy, EnvoyOptions, Meshplane, MeshplaneOptions, PROPAGATION, TestNet, wait_for};

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{name: http, port: 8080}}]\n"
    )
}

fn hostnames(mesh: &Meshplane) -> Vec<String> {
    let body = mesh.admin_get("/debug/registryz").json();
    body["services"].as_array().unwrap().iter().map(|s| s["hostname"].as_str().unwrap().to_string()).collect()
}

#[test]
fn sigterm_and_sigint_shut_down_cleanly_with_proxies_connected() {
    for signal in ["TERM", "INT"] {
        let net = TestNet::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), service("a")).unwrap();
        let mesh = Meshplane::start(dir.path());
        let envoy = Envoy::start(
            EnvoyOptions::sidecar(net.ip(2), "client-1", "shop", mesh.xds_addr())
                .with_metadata("INTERCEPTION_MODE", json!("NONE")),
        );
        envoy.wait_until(PROPAGATION, "Envoy to hold the service's cluster", |e| {
            e.admin_get("/clusters").text().contains("outbound|8080||a.shop.svc.cluster.local")
        });
        mesh.signal(signal);
        let status =
            wait_for(Duration::from_secs(10), &format!("meshplane to exit after SIG{signal}"), || mesh.exited());
        assert!(status.success(), "SIG{signal}: exit status {status}; log:\n{}", mesh.log_tail(40));
        assert!(mesh.log_tail(40).contains("shutting down"), "{}", mesh.log_tail(40));
    }
}

#[test]
fn data_dir_keeps_the_store_and_restarts_reconcile_with_the_directory() {
    let config = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("a.yaml"), service("a")).unwrap();
    std::fs::write(config.path().join("b.yaml"), service("b")).unwrap();
    let start = || {
        let mut opts = MeshplaneOptions::new(config.path());
        opts.extra_args = vec!["--data-dir".into(), data.path().display().to_string()];
        Meshplane::start_with(opts)
    };
    let first = start();
    assert_eq!(hostnames(&first), ["a.shop.svc.cluster.local", "b.shop.svc.cluster.local"]);
    first.signal("TERM");
    wait_for(Duration::from_secs(10), "the first meshplane to exit", || first.exited());
    assert!(data.path().read_dir().unwrap().next().is_some(), "the store wrote its file");

    // While stopped: b.yaml is deleted and c.yaml added.
    std::fs::remove_file(config.path().join("b.yaml")).unwrap();
    std::fs::write(config.path().join("c.yaml"), service("c")).unwrap();
    let second = start();
    wait_for(PROPAGATION, "the restarted store to match the directory", || {
        let names = hostnames(&second);
        (names == ["a.shop.svc.cluster.local", "c.shop.svc.cluster.local"]).then_some(()).ok_or(names)
    });
}

#[test]
fn a_restarted_control_plane_changes_nothing_for_a_reconnecting_envoy() {
    // Versions are content hashes: Envoy reconnects to a new process with
    // `initial_resource_versions` and is sent nothing it already has.
    let net = TestNet::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), format!("{}---\n{}", service("a"), service("b"))).unwrap();
    let lo = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let xds = std::net::SocketAddr::new(lo, support::free_port(lo));
    let start = || {
        let mut opts = MeshplaneOptions::new(dir.path());
        opts.xds_addr = Some(xds);
        Meshplane::start_with(opts)
    };
    let first = start();
    let envoy = Envoy::start(
        EnvoyOptions::sidecar(net.ip(2), "client-1", "shop", xds).with_metadata("INTERCEPTION_MODE", json!("NONE")),
    );
    let counters = |e: &Envoy| {
        ["cluster_manager.cluster_added", "cluster_manager.cluster_modified", "cluster_manager.cluster_removed"]
            .map(|s| e.stat(s).unwrap_or(0))
    };
    envoy.wait_until(PROPAGATION, "Envoy to hold both services", |e| {
        let text = e.admin_get("/clusters").text();
        text.contains("outbound|8080||a.shop.svc.cluster.local")
            && text.contains("outbound|8080||b.shop.svc.cluster.local")
    });
    let before = counters(&envoy);
    let connects = |e: &Envoy| e.stat("control_plane.connected_state");

    first.kill();
    envoy.wait_until(PROPAGATION, "Envoy to notice the control plane is gone", |e| connects(e) == Some(0));
    let second = start();
    envoy.wait_until(PROPAGATION, "Envoy to reconnect", |e| connects(e) == Some(1));
    // The new process answers the wildcard CDS and LDS requests with empty
    // responses and sends nothing else: the proxy already holds every
    // resource at its (content-hash) version.
    let pushes = wait_for(PROPAGATION, "the new process to answer CDS and LDS", || {
        let log = second.log_tail(400);
        let pushes: Vec<String> = log.lines().filter(|l| l.contains(" push ")).map(str::to_string).collect();
        ["ty=cds", "ty=lds"].iter().all(|t| pushes.iter().any(|p| p.contains(t))).then_some(pushes)
    });
    for push in &pushes {
        assert!(push.contains("resources=0 removed=0"), "nothing is resent on reconnect: {push}");
    }
    std::fs::write(dir.path().join("c.yaml"), service("c")).unwrap();
    envoy.wait_until(PROPAGATION, "Envoy to get a new service from the new process", |e| {
        e.admin_get("/clusters").text().contains("outbound|8080||c.shop.svc.cluster.local")
    });
    let after = counters(&envoy);
    assert_eq!(after[0], before[0] + 1, "only the new cluster was added (before {before:?}, after {after:?})");
    assert_eq!(after[1], before[1], "no cluster was modified by the reconnect (before {before:?}, after {after:?})");
    assert_eq!(after[2], before[2], "no cluster was removed (before {before:?}, after {after:?})");
}
