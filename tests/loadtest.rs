//! loadtest against a real `meshplane up`: a few hundred simulated proxies
//! on a generated mesh, endpoint changes timed by content, NACKs and a
//! reconnect storm, all checked from loadtest's report.

mod support;

use meshplane_loadtest::istio_files::Flavor;
use meshplane_loadtest::mesh::{Mesh, MeshParams};
use meshplane_loadtest::report::Report;
use meshplane_loadtest::run::{RunArgs, run};
use support::{Meshplane, MeshplaneOptions};

/// 40 services x 5 pods in 4 namespaces (+ the shared one): 200 workloads.
fn mesh_dir() -> tempfile::TempDir {
    mesh_dir_of(Flavor::Kubernetes)
}

fn mesh_dir_of(flavor: Flavor) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let params = MeshParams {
        services: 40,
        pods_per_service: 5,
        namespaces: 4,
        shared_share: 0.05,
        vs_share: 0.1,
        dr_share: 0.1,
        tcp_share: 0.2,
        gateways: 0,
        no_sidecars: false,
    };
    let mut mesh = Mesh::generate(params);
    mesh.flavor = flavor;
    mesh.write(dir.path()).expect("write the mesh");
    dir
}

fn start(dir: &tempfile::TempDir) -> Meshplane {
    let mut opts = MeshplaneOptions::new(dir.path());
    // Hundreds of proxies: keep the log to what matters.
    opts.env.push(("MESHPLANE_LOG".into(), "warn".into()));
    Meshplane::start_with(opts)
}

fn loadtest(mp: &Meshplane, dir: &tempfile::TempDir, extra: &[&str]) -> (Report, serde_json::Value) {
    let report_path = dir.path().join("report.json");
    let mut args: Vec<String> = vec![
        "--xds".into(),
        mp.xds_addr().to_string(),
        "--mesh".into(),
        dir.path().display().to_string(),
        "--target-pid".into(),
        mp.pid().to_string(),
        "--report".into(),
        report_path.display().to_string(),
        "--quiet".into(),
        "--workers".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args = RunArgs::parse_from(args).expect("valid loadtest arguments");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime.block_on(run(args)).expect("loadtest run");
    mp.assert_running();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report written")).expect("report is JSON");
    (report, json)
}

#[test]
fn every_proxy_connects_and_converges_on_endpoint_changes() {
    let dir = mesh_dir();
    let mp = start(&dir);
    // 300 proxies: the 200 workloads, then 100 more with labels of their own.
    let (report, json) = loadtest(
        &mp,
        &dir,
        &["--proxies", "300", "--scenario", "steady", "--duration", "2.5", "--change-interval", "1"],
    );
    assert_eq!(json["proxies"]["connected"], 300, "{:#}", json["proxies"]);
    assert_eq!(json["proxies"]["converged"], 300, "{:#}", json["proxies"]);
    assert_eq!(json["nacks"], 0);
    assert_eq!(json["reconnects"], 0);
    for key in ["p50_ms", "p90_ms", "p99_ms", "max_ms"] {
        assert!(
            json["convergence"][key].as_f64().is_some_and(|v| v > 0.0),
            "convergence.{key}: {}",
            json["convergence"]
        );
    }
    assert!(json["parameters"]["proxies"] == 300 && json["parameters"]["scenario"] == "steady");
    // Changes hit the shared namespace, which every Sidecar imports: all proxies are affected by each.
    assert!(report.changes.len() >= 2, "{:?}", report.changes);
    for change in &report.changes {
        assert_eq!((change.affected, change.converged), (300, 300), "{change:?}");
    }
    assert_eq!(report.convergence.converged, report.convergence.affected);
    assert_eq!(report.proxies.synced, 300);
    assert!(report.target.as_ref().and_then(|t| t.rss_kb_per_proxy).is_some(), "{:?}", report.target);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn nacks_and_reconnects_are_counted() {
    let dir = mesh_dir();
    let mp = start(&dir);
    // Half the proxies reject every listener response; then every proxy
    // reconnects at once (with its resource versions) and rejects again.
    let (report, json) = loadtest(
        &mp,
        &dir,
        &[
            "--proxies",
            "200",
            "--scenario",
            "reconnect-storm",
            "--duration",
            "1",
            "--nack",
            "lds",
            "--nack-share",
            "0.5",
        ],
    );
    assert_eq!(json["proxies"]["connected"], 200, "{:#}", json["proxies"]);
    assert_eq!(json["reconnects"], 200);
    // One LDS NACK per NACKing proxy and stream; the server does not resend
    // a rejected version on the same stream.
    assert_eq!(json["nacks"], 200, "{:#}", json["totals"]);
    assert!(report.reconnect_storm_ms.is_some(), "not every proxy synced again after the storm");
    // Endpoints are unaffected by listener NACKs: the change after the storm converges everywhere.
    assert_eq!(report.convergence.converged, 200);
    assert_eq!(report.proxies.converged, 200);
}

/// The mesh as ServiceEntries + WorkloadEntries (what istiod reads from
/// files): meshplane serves it too, and a moved WorkloadEntry reaches every
/// proxy as the same EDS endpoint change as a moved Pod.
#[test]
fn istio_files_flavor_converges_on_workload_entry_moves() {
    let dir = mesh_dir_of(Flavor::IstioFiles);
    let mesh = Mesh::load(dir.path()).expect("mesh.json");
    let shared = mesh.targets(true)[0];
    let text = std::fs::read_to_string(mesh.service_path(dir.path(), shared)).expect("a shared service's file");
    assert!(text.contains("kind: ServiceEntry") && !text.contains("kind: Pod"), "{text}");
    let mp = start(&dir);
    let (report, json) = loadtest(
        &mp,
        &dir,
        &["--proxies", "200", "--scenario", "steady", "--duration", "2.5", "--change-interval", "1"],
    );
    assert_eq!(json["proxies"]["synced"], 200, "{:#}", json["proxies"]);
    assert_eq!(json["nacks"], 0);
    assert!(report.changes.len() >= 2, "{:?}", report.changes);
    for change in &report.changes {
        assert_eq!((change.affected, change.converged), (200, 200), "{change:?}");
    }
    // Each move reached every proxy as an EDS response.
    assert!(report.scenario_totals.eds_responses >= 200, "{:?}", report.scenario_totals);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
