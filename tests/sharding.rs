//! End to end, the sharded topology on a real etcd: `registry-sync`, two
//! frontends and three shards, with real Envoy sidecars (each given both
//! frontends as xDS endpoints) carrying continuous HTTP traffic while
//! processes crash, join, drain, and while etcd is down. In every case no
//! request fails, and every proxy ends up holding exactly the config the
//! single-process generator (`meshplane up`) computes for it.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use meshplane_model::key::ObjectKey;
use meshplane_model::parse::parse_yaml;
use meshplane_model::proxy::{NodeId, ProxyMetadata};
use meshplane_shard::generate::{EndpointCache, generate};
use meshplane_shard::resources::ResourceType;
use meshplane_shard::runtime::classify;
use meshplane_shard::snapshot::{MeshSnapshot, MeshState};
use serde_json::{Value, json};
use support::topology::Topology;
use support::{EchoBackend, Envoy, EnvoyOptions, TestNet, free_port, try_http_request, wait_for};

const PORT: u16 = 8080;
/// Re-homing and convergence may take a lease TTL (3 s) plus debounce.
const SETTLE: Duration = Duration::from_secs(30);
const CLIENTS: u8 = 4;

fn client_ip(net: &TestNet, i: u8) -> IpAddr {
    net.ip(2 + i)
}

fn mesh(net: &TestNet, backend_port: u16) -> String {
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  selector: {{app: backend}}\n  ports: [{{name: http, port: {PORT}, targetPort: {backend_port}}}]\n"
    )];
    for v in 1..=2u8 {
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: backend-v{v}, namespace: shop, labels: {{app: backend, version: v{v}}}}}\nstatus: {{podIP: {}}}\n",
            net.ip(20 + v)
        ));
    }
    for i in 0..CLIENTS {
        let ip = client_ip(net, i);
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: shop, labels: {{app: client-{i}}}}}\nstatus: {{podIP: {ip}}}\n---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: client-{i}, namespace: shop}}\nspec:\n  workloadSelector: {{labels: {{app: client-{i}}}}}\n  egress:\n  - port: {{number: {PORT}, protocol: HTTP, name: http}}\n    bind: {ip}\n    captureMode: NONE\n    hosts: [\"./*\"]\n"
        ));
    }
    docs.join("---\n")
}

fn routing(subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  host: backend\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: backend, namespace: shop}}\nspec:\n  hosts: [backend]\n  http:\n  - route: [{{destination: {{host: backend, subset: {subset}}}}}]\n"
    )
}

struct Cluster {
    net: TestNet,
    _backends: Vec<EchoBackend>,
    _dir: tempfile::TempDir,
    topology: Topology,
    envoys: Vec<Envoy>,
}

impl Cluster {
    fn start() -> Cluster {
        let net = TestNet::new();
        let port = free_port(net.ip(21));
        let backends =
            (1..=2u8).map(|v| EchoBackend::start(SocketAddr::new(net.ip(20 + v), port), &format!("v{v}"))).collect();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mesh.yaml"), mesh(&net, port)).unwrap();
        std::fs::write(dir.path().join("routing.yaml"), routing("v1")).unwrap();
        let topology = Topology::start(dir.path(), 2, 3);
        let xds = topology.frontend_xds_addrs();
        let envoys = (0..CLIENTS)
            .map(|i| {
                // Each Envoy prefers a different frontend and fails over to the other.
                let (first, second) = if i % 2 == 0 { (xds[0], xds[1]) } else { (xds[1], xds[0]) };
                Envoy::start(
                    EnvoyOptions::sidecar(client_ip(&net, i), &format!("client-{i}"), "shop", first)
                        .with_more_xds_addrs(&[second])
                        .with_metadata("INTERCEPTION_MODE", json!("NONE")),
                )
            })
            .collect();
        let cluster = Cluster { net, _backends: backends, _dir: dir, topology, envoys };
        for i in 0..CLIENTS {
            cluster.wait_routed(i, "v1");
        }
        cluster
    }

    fn listener(&self, i: u8) -> SocketAddr {
        SocketAddr::new(client_ip(&self.net, i), PORT)
    }

    fn node_id(&self, i: u8) -> String {
        format!("sidecar~{}~client-{i}.shop~shop.svc.cluster.local", client_ip(&self.net, i))
    }

    fn wait_routed(&self, i: u8, version: &str) {
        wait_for(SETTLE, &format!("client-{i} to route to {version}"), || {
            let r = try_http_request(self.listener(i), "GET", "backend", "/", &[])?;
            (r.status == 200 && r.json()["backend"] == version).then_some(()).ok_or(format!(
                "{} {}",
                r.status,
                r.text()
            ))
        });
    }

    /// Every proxy holds exactly what the single-process generator computes
    /// for the current configuration directory.
    fn wait_converged(&self, what: &str) {
        for (i, envoy) in self.envoys.iter().enumerate() {
            let expected = expected_versions(self.topology.config_dir(), &self.node_id(i as u8));
            wait_for(SETTLE, &format!("{what}: client-{i}'s config to equal meshplane up's"), || {
                let held = envoy_versions(envoy);
                if held == expected { Ok(()) } else { Err(format!("holds {held:?}\nexpected {expected:?}")) }
            });
        }
    }

    /// Continuous requests through every proxy until stopped.
    fn traffic(&self) -> Traffic {
        let listeners: Vec<SocketAddr> = (0..CLIENTS).map(|i| self.listener(i)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let log: Arc<Mutex<(u64, Vec<String>)>> = Arc::default();
        let handle = {
            let (stop, log) = (stop.clone(), log.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(600);
                for (n, listener) in listeners.iter().cycle().enumerate() {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let outcome = try_http_request(*listener, "GET", "backend", "/", &[]);
                    let mut log = log.lock().unwrap();
                    log.0 += 1;
                    match outcome {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => log.1.push(format!("request {n} via {listener}: status {} {}", r.status, r.text())),
                        Err(e) => log.1.push(format!("request {n} via {listener}: {e}")),
                    }
                }
            })
        };
        Traffic { stop, log, handle: Some(handle) }
    }
}

struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<(u64, Vec<String>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Traffic {
    fn requests(&self) -> u64 {
        self.log.lock().unwrap().0
    }

    /// Let at least `n` more requests through, then check none failed so far.
    fn assert_flowing(&self, n: u64, phase: &str) {
        let start = self.requests();
        wait_for(SETTLE, &format!("{phase}: {n} more requests"), || self.requests() >= start + n);
        let log = self.log.lock().unwrap();
        assert!(
            log.1.is_empty(),
            "{phase}: {} of {} requests failed: {:?}",
            log.1.len(),
            log.0,
            &log.1[..log.1.len().min(5)]
        );
    }

    fn finish(mut self, phase: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap();
        let log = self.log.lock().unwrap();
        assert!(
            log.1.is_empty(),
            "{phase}: {} of {} requests failed: {:?}",
            log.1.len(),
            log.0,
            &log.1[..log.1.len().min(5)]
        );
        log.0
    }
}

/// What `meshplane up` serves a proxy for this directory: the same
/// generator, run in-process on the same YAML. Type -> name -> version.
fn expected_versions(dir: &Path, node_id: &str) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    let mut state = MeshState::default();
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for file in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let parsed = parse_yaml(&file.display().to_string(), &std::fs::read_to_string(file).unwrap());
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        for o in parsed.objects {
            state.apply(ObjectKey::new("Kubernetes", o.object.object_ref()), o.object);
        }
    }
    let snapshot = MeshSnapshot::build(&state, 1);
    let metadata = ProxyMetadata {
        namespace: Some("shop".into()),
        interception_mode: Some("NONE".into()),
        cluster_id: Some("Kubernetes".into()),
        ..Default::default()
    };
    let class = classify(&snapshot, &NodeId::parse(node_id).unwrap(), &metadata);
    let view = generate(&snapshot, &class, &EndpointCache::default());
    ResourceType::ALL
        .into_iter()
        .filter(|t| *t != ResourceType::Secret)
        .map(|t| {
            let entries = view.resources(t).values().map(|r| {
                // Envoy shows no per-resource version for endpoints: compare their addresses.
                let value =
                    if t == ResourceType::Endpoint { endpoint_addresses(&r.body) } else { r.version.to_string() };
                (r.name.to_string(), value)
            });
            (t.short(), entries.collect())
        })
        .collect()
}

/// `ip:port` of every endpoint of an encoded ClusterLoadAssignment, sorted.
fn endpoint_addresses(body: &[u8]) -> String {
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
    let cla = <ClusterLoadAssignment as prost::Message>::decode(body).expect("a ClusterLoadAssignment");
    let mut out: Vec<String> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(lb_endpoint::HostIdentifier::Endpoint(ep)) => match ep.address.as_ref()?.address.as_ref()? {
                address::Address::SocketAddress(sa) => match sa.port_specifier {
                    Some(socket_address::PortSpecifier::PortValue(p)) => Some(format!("{}:{p}", sa.address)),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    out.sort();
    out.join(",")
}

/// What an Envoy holds, from its admin config dump. Type -> name -> version.
fn envoy_versions(envoy: &Envoy) -> BTreeMap<&'static str, BTreeMap<String, String>> {
    let dump = envoy.admin_get("/config_dump?include_eds").json();
    let mut out: BTreeMap<&'static str, BTreeMap<String, String>> =
        ["cds", "eds", "lds", "rds"].into_iter().map(|t| (t, BTreeMap::new())).collect();
    let text = |v: &Value| v.as_str().map(str::to_string);
    for config in dump["configs"].as_array().unwrap() {
        let ty = config["@type"].as_str().unwrap_or_default();
        let entries = |key: &str| config[key].as_array().cloned().unwrap_or_default();
        if ty.ends_with("ClustersConfigDump") {
            for c in entries("dynamic_active_clusters") {
                out.get_mut("cds")
                    .unwrap()
                    .insert(text(&c["cluster"]["name"]).unwrap(), text(&c["version_info"]).unwrap());
            }
        } else if ty.ends_with("EndpointsConfigDump") {
            for e in entries("dynamic_endpoint_configs") {
                let config = &e["endpoint_config"];
                let name = text(&config["cluster_name"]).unwrap();
                if !name.starts_with("outbound|") {
                    continue; // BlackHole/Passthrough are not EDS clusters
                }
                let mut addresses: Vec<String> = config["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|l| l["lb_endpoints"].as_array().cloned().unwrap_or_default())
                    .filter_map(|e| {
                        let sa = &e["endpoint"]["address"]["socket_address"];
                        Some(format!("{}:{}", sa["address"].as_str()?, sa["port_value"].as_u64()?))
                    })
                    .collect();
                addresses.sort();
                out.get_mut("eds").unwrap().insert(name, addresses.join(","));
            }
        } else if ty.ends_with("ListenersConfigDump") {
            for l in entries("dynamic_listeners") {
                if let Some(version) = text(&l["active_state"]["version_info"]) {
                    out.get_mut("lds").unwrap().insert(text(&l["name"]).unwrap(), version);
                }
            }
        } else if ty.ends_with("RoutesConfigDump") {
            for r in entries("dynamic_route_configs") {
                out.get_mut("rds")
                    .unwrap()
                    .insert(text(&r["route_config"]["name"]).unwrap(), text(&r["version_info"]).unwrap());
            }
        }
    }
    out
}

/// Wait until every proxy is relayed to a live shard other than `gone`.
fn wait_rehomed(cluster: &Cluster, gone: &str) {
    wait_for(SETTLE, &format!("every proxy to be served by a shard other than {gone}"), || {
        let owners = cluster.topology.owners();
        (owners.len() == CLIENTS as usize && owners.iter().all(|(_, s)| s != gone)).then_some(()).ok_or(owners)
    });
}

#[test]
fn shard_crash_join_and_drain_move_proxies_without_a_failed_request() {
    let mut cluster = Cluster::start();
    cluster.wait_converged("start");
    let traffic = cluster.traffic();
    traffic.assert_flowing(50, "warm-up");

    // kill -9 the shard that serves client-0.
    let crashed = cluster.topology.owner_of(&cluster.node_id(0)).expect("client-0 is relayed");
    cluster.topology.shard(&crashed).kill();
    wait_rehomed(&cluster, &crashed);
    traffic.assert_flowing(100, &format!("after kill -9 of {crashed}"));
    cluster.wait_converged(&format!("after kill -9 of {crashed}"));

    // A shard joins: the proxies it now owns move to it.
    let joined = cluster.topology.add_shard().name.clone();
    wait_for(SETTLE, &format!("every proxy on the owner the ring gives it once {joined} joined"), || {
        let owners = cluster.topology.owners();
        let live: Vec<&str> =
            cluster.topology.shards.iter().filter(|s| s.exited().is_none()).map(|s| s.name.as_str()).collect();
        let expected: Vec<(String, String)> = (0..CLIENTS)
            .map(|i| {
                let node = cluster.node_id(i);
                let owner = live.iter().max_by_key(|s| meshplane_frontend::ring::score(s, &node)).unwrap();
                (node, owner.to_string())
            })
            .collect();
        let mut expected = expected;
        expected.sort();
        (owners == expected).then_some(()).ok_or(format!("relayed {owners:?}, ring {expected:?}"))
    });
    traffic.assert_flowing(100, &format!("after {joined} joined"));
    cluster.wait_converged(&format!("after {joined} joined"));

    // A graceful stop hands the shard's proxies over before it exits.
    let drained = cluster.topology.owner_of(&cluster.node_id(1)).expect("client-1 is relayed");
    let status = cluster.topology.shard(&drained).terminate(SETTLE);
    assert!(status.success(), "{drained} exits cleanly after draining: {status}");
    wait_rehomed(&cluster, &drained);
    traffic.assert_flowing(100, &format!("after {drained} drained"));
    cluster.wait_converged(&format!("after {drained} drained"));

    // Configuration still flows to every proxy through the new owners.
    std::fs::write(cluster.topology.config_dir().join("routing.yaml"), routing("v2")).unwrap();
    for i in 0..CLIENTS {
        cluster.wait_routed(i, "v2");
    }
    let total = traffic.finish("after the routing change");
    cluster.wait_converged("after the routing change");
    assert!(total > 300, "traffic flowed throughout ({total} requests)");
}

#[test]
fn frontend_loss_and_an_etcd_outage_keep_traffic_flowing() {
    let mut cluster = Cluster::start();
    cluster.wait_converged("start");
    let traffic = cluster.traffic();
    traffic.assert_flowing(50, "warm-up");

    // Kill frontend-0: its proxies reconnect through frontend-1.
    let before = pushes_with_content(&cluster);
    cluster.topology.frontends[0].kill();
    wait_for(SETTLE, "every proxy to be relayed by frontend-1", || {
        let proxies =
            cluster.topology.frontends[1].admin_json("/debug/connections")["proxies"].as_array().map_or(0, Vec::len);
        (proxies == CLIENTS as usize).then_some(()).ok_or(proxies)
    });
    traffic.assert_flowing(100, "after frontend-0 died");
    cluster.wait_converged("after frontend-0 died");
    // The proxies reconnected with their versions: the shards sent nothing.
    assert_eq!(pushes_with_content(&cluster), before, "no shard pushed a resource to a reconnecting proxy");

    // etcd goes down for longer than two lease TTLs: everything keeps
    // serving the last good config, and no shard is dropped from membership.
    cluster.topology.etcd.stop();
    let down = Instant::now();
    traffic.assert_flowing(200, "while etcd is down");
    wait_for(SETTLE, "an outage of two lease TTLs with traffic flowing", || {
        traffic.assert_flowing(1, "while etcd is down");
        down.elapsed() > Duration::from_secs(7)
    });
    let owners = cluster.topology.owners();
    assert_eq!(owners.len(), CLIENTS as usize, "every proxy still relayed: {owners:?}");
    for role in cluster.topology.shards.iter().chain(&cluster.topology.frontends[1..]).chain([&cluster.topology.sync]) {
        assert!(role.exited().is_none(), "{} must not exit on store errors:\n{}", role.name, role.log_tail(30));
    }
    // A change made while etcd is down lands once it is back.
    std::fs::write(cluster.topology.config_dir().join("routing.yaml"), routing("v2")).unwrap();
    traffic.assert_flowing(100, "while etcd is down, after an edit");
    cluster.topology.etcd.restart();
    for i in 0..CLIENTS {
        cluster.wait_routed(i, "v2");
    }
    traffic.finish("after etcd came back");
    cluster.wait_converged("after etcd came back");
}

/// Responses that carried resources or removals, as the shards logged them.
fn pushes_with_content(cluster: &Cluster) -> usize {
    cluster
        .topology
        .shards
        .iter()
        .map(|s| s.log().lines().filter(|l| l.contains(" push ") && !l.contains("resources=0 removed=0")).count())
        .sum()
}

#[test]
fn a_directory_larger_than_one_etcd_transaction_loads_completely() {
    // etcd's default --max-txn-ops is 128; registry-sync must split its writes.
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<String> = (0..300)
        .map(|i| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: shop}}\nspec:\n  ports: [{{name: http, port: 80}}]\n")
        })
        .collect();
    std::fs::write(dir.path().join("services.yaml"), services.join("---\n")).unwrap();
    let topology = Topology::start(dir.path(), 0, 1);
    let shard = &topology.shards[0];
    wait_for(SETTLE, "the shard to know all 300 services", || {
        let metrics = shard.admin_get("/metrics").map(|r| r.text()).unwrap_or_default();
        let count = metrics.lines().find_map(|l| l.strip_prefix("pilot_services ")).map(str::trim).map(str::to_string);
        (count.as_deref() == Some("300")).then_some(()).ok_or(count)
    });
    let sync = topology.sync.admin_json("/debug/configz");
    assert!(sync["store_error"].is_null(), "{sync}");
}
