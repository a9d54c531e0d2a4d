//! loadtest against a real `meshplane up`: a few hundred simulated proxies
//! on a generated mesh, endpoint changes timed by content, NACKs and a
//! reconnect storm, all checked from loadtest's report. And against the
//! sharded topology (real etcd, shards and frontends): the mesh written
//! straight into the store, changes as store transactions, and a shard
//! killed while changes flow.

mod support;

use std::path::Path;

use meshplane_loadtest::disruption::Phase;
use meshplane_loadtest::genmesh::{GenMeshArgs, gen_mesh};
use meshplane_loadtest::istio_files::Flavor;
use meshplane_loadtest::mesh::{Mesh, MeshParams};
use meshplane_loadtest::report::Report;
use meshplane_loadtest::run::{RunArgs, run};
use meshplane_loadtest::store::StoreLocation;
use support::topology::Topology;
use support::{Meshplane, MeshplaneOptions};

/// 40 services x 5 pods in 4 namespaces (+ the shared one, 2 services, which
/// every Sidecar imports: each change affects every proxy): 200 workloads.
fn params() -> MeshParams {
    MeshParams {
        services: 40,
        pods_per_service: 5,
        namespaces: 4,
        shared_share: 0.05,
        vs_share: 0.1,
        dr_share: 0.1,
        tcp_share: 0.2,
        gateways: 0,
        no_sidecars: false,
    }
}

fn mesh_dir() -> tempfile::TempDir {
    mesh_dir_of(Flavor::Kubernetes)
}

fn mesh_dir_of(flavor: Flavor) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut mesh = Mesh::generate(params());
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
    let mut args = vec!["--xds".to_string(), mp.xds_addr().to_string(), "--target-pid".into(), mp.pid().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = run_loadtest(dir.path(), args);
    mp.assert_running();
    out
}

/// `loadtest run --mesh DIR ARGS`, in this process, with one worker; the
/// report as loadtest returned it and as it wrote it.
fn run_loadtest(dir: &Path, extra: Vec<String>) -> (Report, serde_json::Value) {
    let report_path = dir.join("report.json");
    let mut args: Vec<String> = vec![
        "--mesh".into(),
        dir.display().to_string(),
        "--report".into(),
        report_path.display().to_string(),
        "--quiet".into(),
        "--workers".into(),
        "1".into(),
    ];
    args.extend(extra);
    let args = RunArgs::parse_from(args).expect("valid loadtest arguments");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let report = runtime.block_on(run(args)).expect("loadtest run");
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

/// The sharded topology with `shards` shards and 2 frontends, registry-sync
/// serving an empty directory (its own cluster, `Kubernetes`), and the mesh
/// generated straight into the store (cluster `loadtest`); returns the
/// topology, the mesh directory (model files only) and the registry-sync dir.
fn topology_with_store_mesh(shards: usize) -> (Topology, tempfile::TempDir, tempfile::TempDir) {
    let empty = tempfile::tempdir().expect("temp dir");
    let topology = Topology::start(empty.path(), 2, shards);
    let mesh = tempfile::tempdir().expect("temp dir");
    let args = GenMeshArgs {
        params: params(),
        out: mesh.path().to_path_buf(),
        store: Some(topology.etcd.url()),
        store_cluster: None,
        flavor: Flavor::Kubernetes,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let outcome = runtime.block_on(gen_mesh(args)).expect("gen-mesh --store");
    let (location, written) = outcome.store.expect("written to the store");
    assert_eq!(location, StoreLocation::new(&topology.etcd.url(), "loadtest").unwrap());
    // Every object, in transactions within etcd's default --max-txn-ops (128).
    assert!(written.puts > 200 && written.puts == written.objects && written.batches >= 2, "{written:?}");
    assert!(!mesh.path().join("namespaces.yaml").exists(), "a store mesh writes no YAML");
    (topology, mesh, empty)
}

/// `loadtest run` of 300 proxies through every frontend of `t`, measuring
/// every process but etcd, with generous bounds for a loaded machine; then
/// `extra` (the scenario).
fn run_on_topology(t: &Topology, mesh: &Path, extra: &[&str]) -> (Report, serde_json::Value) {
    let xds: Vec<String> = t.frontend_xds_addrs().iter().map(ToString::to_string).collect();
    let pids: Vec<String> = t.shards.iter().chain(&t.frontends).map(|r| r.pid().to_string()).collect();
    let mut args = vec![
        "--xds".to_string(),
        xds.join(","),
        "--proxies".into(),
        "300".into(),
        "--target-pid".into(),
        pids.join(","),
        "--change-timeout".into(),
        "120".into(),
        "--sync-timeout".into(),
        "300".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run_loadtest(mesh, args)
}

fn assert_every_proxy_converged_on_every_change(report: &Report, json: &serde_json::Value, proxies: u64) {
    assert_eq!(json["proxies"]["connected"], proxies, "{:#}", json["proxies"]);
    assert_eq!(json["proxies"]["converged"], proxies, "{:#}", json["proxies"]);
    assert!(!report.changes.is_empty());
    for change in &report.changes {
        assert_eq!((change.affected, change.converged), (proxies, proxies), "{change:?}");
    }
    assert_eq!(report.convergence.converged, report.convergence.affected);
    assert_eq!((report.nacks, report.reconnects), (0, 0), "{:#}", json["totals"]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[test]
fn store_writes_reach_every_proxy_through_the_frontends() {
    let (topology, mesh, _empty) = topology_with_store_mesh(2);
    let shard_admin = topology.shards[0].admin.to_string();
    let (report, json) = run_on_topology(
        &topology,
        mesh.path(),
        &["--scenario", "steady", "--duration", "2.5", "--change-interval", "1", "--target-admin", &shard_admin],
    );
    assert_every_proxy_converged_on_every_change(&report, &json, 300);
    assert!(report.changes.len() >= 2, "{:?}", report.changes);
    // Each change is one store transaction, at a revision of its own, and is
    // timed from it; the shard's snapshot reached that revision.
    let revisions: Vec<i64> =
        report.changes.iter().map(|c| c.revision.expect("a store write has a revision")).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    for change in &report.changes {
        assert!(change.store_write_ms.is_some_and(|ms| ms > 0.0), "{change:?}");
        let reached = change.milestones_ms.get("meshplane_shard_snapshot_revision");
        assert!(
            reached.is_some_and(Option::is_some),
            "shard-0 never reached revision {:?}: {change:?}",
            change.revision
        );
    }
    assert_eq!(report.store.as_ref().map(|s| s.cluster.as_str()), Some("loadtest"));
    assert!(report.convergence.measured_from.contains("store transaction"), "{}", report.convergence.measured_from);
    // registry-sync, reconciling its own (empty) cluster meanwhile, left loadtest's objects alone.
    topology.sync.wait_ready();
    for role in topology.shards.iter().chain(&topology.frontends) {
        assert!(role.exited().is_none(), "{} exited:\n{}", role.name, role.log_tail(30));
    }
}

/// The sum of a counter's samples with this label set, over the frontends.
fn frontend_counter(t: &Topology, sample: &str) -> f64 {
    t.frontends
        .iter()
        .filter_map(|f| f.admin_get("/metrics"))
        .flat_map(|r| {
            r.text().lines().filter_map(|l| l.strip_prefix(sample)?.trim().parse::<f64>().ok()).collect::<Vec<_>>()
        })
        .sum()
}

#[test]
fn a_shard_killed_during_churn_loses_no_change_and_resets_no_proxy() {
    let (topology, mesh, _empty) = topology_with_store_mesh(3);
    let victim = &topology.shards[0];
    let victim_pid = victim.pid().to_string();
    let (report, json) = run_on_topology(
        &topology,
        mesh.path(),
        &[
            "--scenario",
            "churn",
            "--rate",
            "2",
            "--duration",
            "9",
            "--kill-pid",
            &victim_pid,
            "--kill-at",
            "4",
            "--kill-window",
            "2",
        ],
    );
    // The kill happened, and the frontends moved the victim's proxies.
    let d = report.disruption.as_ref().expect("a disruption report");
    assert_eq!((d.pid, d.signal.as_str(), d.error.as_deref()), (victim.pid(), "SIGKILL", None), "{d:?}");
    assert!(d.gone_after_ms.is_some(), "{d:?}");
    assert!(victim.exited().is_some(), "{} still runs after SIGKILL", victim.name);
    assert_eq!(json["disruption"]["name"], "meshplane shard");
    let names = &report.target.as_ref().expect("target processes measured").names;
    assert_eq!(names.get(&victim.pid()).map(String::as_str), Some("meshplane shard"), "{names:?}");
    let moved = frontend_counter(&topology, "meshplane_frontend_rehomes_total{reason=\"upstream_failure\"}");
    assert!(moved > 0.0, "no proxy was on the killed shard");
    // Every change, before, at, during and after the kill, reached every proxy,
    // and no proxy's stream was reset (the frontends re-home behind it).
    assert_every_proxy_converged_on_every_change(&report, &json, 300);
    assert_eq!((d.reconnects_after, d.nacks_after), (0, 0), "{d:?}");
    let count = |phases: &[Phase]| -> usize {
        d.phases.iter().filter(|p| p.phase.is_some_and(|x| phases.contains(&x))).map(|p| p.changes).sum()
    };
    assert!(count(&[Phase::Before, Phase::InFlight]) >= 1, "{:#}", json["disruption"]);
    // Changes are scheduled every 0.5 s from 0 to 8.5 s; the kill is sent at 4 s, before the change due then.
    assert!(count(&[Phase::During, Phase::After]) >= 8, "{:#}", json["disruption"]);
    assert_eq!(count(&Phase::ALL), report.changes.len());
    for p in &d.phases {
        assert_eq!(p.converged, p.affected, "{p:?}");
    }
    assert!(report.changes.iter().all(|c| c.phase.is_some() && c.converged_at_kill.is_some()));
    for role in topology.shards[1..].iter().chain(&topology.frontends) {
        assert!(role.exited().is_none(), "{} exited:\n{}", role.name, role.log_tail(30));
    }
}

/// The mesh as ServiceEntries + WorkloadEntries (what istiod reads from
/// files): meshplane serves it too, and a moved WorkloadEntry reaches every
/// proxy as the same EDS endpoint change as a moved Pod.
#[test]
fn istio_files_flavor_converges_on_workload_entry_moves() {
    let dir = mesh_dir_of(Flavor::IstioFiles);
    let mesh = Mesh::load(dir.path()).expect("mesh.json");
    let shared = mesh.targets(true)[0];
    let text = std::fs::read_to_string(dir.path().join(mesh.service_file(shared).0)).expect("a shared service's file");
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
