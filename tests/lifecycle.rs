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
