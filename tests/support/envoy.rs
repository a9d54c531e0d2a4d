//! A real Envoy process (`$MESHPLANE_ENVOY`), configured by a generated
//! xDS bootstrap or a raw static one.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::http::{Response, try_http_request};
use super::process::{Proc, artifact_dir, required_env_path};
use super::wait::{WaitOutcome, wait_for};
use super::{PROPAGATION, STARTUP};

/// Which ADS protocol Envoy speaks to the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdsApi {
    /// Incremental ADS (`api_type: DELTA_GRPC`), what Istio sidecars use.
    Delta,
    /// State-of-the-World ADS (`api_type: GRPC`).
    Sotw,
}

/// How to start an Envoy that takes its configuration from meshplane.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Istio-style node id, e.g. `sidecar~127.0.3.2~client-1.shop~shop.svc.cluster.local`.
    pub node_id: String,
    /// `node.cluster`; `None`: derived from the node id (`client.shop` for pod `client-1.shop`).
    pub cluster: Option<String>,
    /// `node.metadata`; must contain `NAMESPACE`, may contain `LABELS` (a map).
    pub metadata: Map<String, Value>,
    /// The control plane's xDS (gRPC) address.
    pub xds_addr: SocketAddr,
    /// More xDS addresses (e.g. a second frontend): Envoy fails over to them.
    pub more_xds_addrs: Vec<SocketAddr>,
    pub api: XdsApi,
    /// Admin port; `None` lets the OS pick a free one (no race).
    pub admin_port: Option<u16>,
    /// Admin address IP (default 127.0.0.1).
    pub admin_ip: IpAddr,
}

impl EnvoyOptions {
    /// A sidecar for pod `pod` (e.g. `client-1`) in `namespace` at `ip`:
    /// node id `sidecar~IP~POD.NS~NS.svc.cluster.local`, metadata
    /// `NAMESPACE` and `CLUSTER_ID: Kubernetes`, Delta ADS, auto admin port.
    pub fn sidecar(ip: IpAddr, pod: &str, namespace: &str, xds_addr: SocketAddr) -> Self {
        let mut metadata = Map::new();
        metadata.insert("NAMESPACE".into(), json!(namespace));
        metadata.insert("CLUSTER_ID".into(), json!("Kubernetes"));
        EnvoyOptions {
            node_id: format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local"),
            cluster: None,
            metadata,
            xds_addr,
            more_xds_addrs: Vec::new(),
            api: XdsApi::Delta,
            admin_port: None,
            admin_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }

    /// Sets `metadata.LABELS` (the pod's labels).
    pub fn with_labels(mut self, labels: &[(&str, &str)]) -> Self {
        let map: Map<String, Value> = labels.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        self.metadata.insert("LABELS".into(), Value::Object(map));
        self
    }

    /// Sets one metadata key.
    pub fn with_metadata(mut self, key: &str, value: Value) -> Self {
        self.metadata.insert(key.to_string(), value);
        self
    }

    /// Adds xDS endpoints after the first one.
    pub fn with_more_xds_addrs(mut self, addrs: &[SocketAddr]) -> Self {
        self.more_xds_addrs.extend_from_slice(addrs);
        self
    }

    pub fn with_api(mut self, api: XdsApi) -> Self {
        self.api = api;
        self
    }

    /// The bootstrap these options produce (what [`Envoy::start`] writes).
    pub fn bootstrap(&self) -> Value {
        assert!(
            self.metadata.get("NAMESPACE").is_some_and(Value::is_string),
            "EnvoyOptions.metadata must contain NAMESPACE (a string): {:?}",
            self.metadata
        );
        if let Some(labels) = self.metadata.get("LABELS") {
            assert!(labels.is_object(), "metadata LABELS must be a map, got {labels}");
        }
        let cluster = self.cluster.clone().unwrap_or_else(|| derive_cluster(&self.node_id));
        let api_type = match self.api {
            XdsApi::Delta => "DELTA_GRPC",
            XdsApi::Sotw => "GRPC",
        };
        json!({
            "node": {
                "id": self.node_id,
                "cluster": cluster,
                "metadata": self.metadata,
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {
                "clusters": [{
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": std::iter::once(&self.xds_addr)
                            .chain(&self.more_xds_addrs)
                            .map(|a| json!({"endpoint": {"address": {"socket_address": {
                                "address": a.ip().to_string(),
                                "port_value": a.port(),
                            }}}}))
                            .collect::<Vec<_>>()}],
                    },
                }],
            },
            "admin": admin_json(self.admin_ip, self.admin_port.unwrap_or(0)),
        })
    }
}

/// `client-1.shop` from `sidecar~ip~client-1.shop~...` -> `client.shop`.
fn derive_cluster(node_id: &str) -> String {
    let pod_ns = node_id.split('~').nth(2).unwrap_or("meshplane-test");
    match pod_ns.split_once('.') {
        Some((pod, ns)) => {
            let app = pod.rsplit_once('-').map_or(pod, |(app, _)| app);
            format!("{app}.{ns}")
        }
        None => pod_ns.to_string(),
    }
}

fn admin_json(ip: IpAddr, port: u16) -> Value {
    json!({"address": {"socket_address": {"address": ip.to_string(), "port_value": port}}})
}

/// The Envoy binary from `$MESHPLANE_ENVOY` (panics if unset).
pub fn envoy_binary() -> PathBuf {
    required_env_path("MESHPLANE_ENVOY", "Envoy")
}

/// A running Envoy, killed on drop. Its log (stderr, `-l info` with
/// `config` and `upstream` at debug) is printed if the test panics.
pub struct Envoy {
    proc: Proc,
    admin: SocketAddr,
    bootstrap_path: PathBuf,
}

impl Envoy {
    /// Starts Envoy with the bootstrap from `opts` and waits (up to
    /// [`STARTUP`]) until admin `/ready` says LIVE, i.e. it has its initial
    /// configuration from the control plane.
    pub fn start(opts: EnvoyOptions) -> Envoy {
        let envoy = Envoy::spawn(opts);
        envoy.wait_live(STARTUP);
        envoy
    }

    /// Starts Envoy with the bootstrap from `opts` and waits only for its
    /// admin endpoint (not for configuration).
    pub fn spawn(opts: EnvoyOptions) -> Envoy {
        Envoy::spawn_bootstrap_value(opts.bootstrap())
    }

    /// Starts Envoy with a raw bootstrap (YAML or JSON) and waits for LIVE.
    /// Its `admin` section is replaced by one on 127.0.0.1 with an OS-chosen
    /// port.
    pub fn start_with_bootstrap(yaml: &str) -> Envoy {
        let envoy = Envoy::spawn_with_bootstrap(yaml);
        envoy.wait_live(STARTUP);
        envoy
    }

    /// Like [`Envoy::start_with_bootstrap`] without waiting for LIVE.
    pub fn spawn_with_bootstrap(yaml: &str) -> Envoy {
        let mut bootstrap: Value =
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bootstrap is not valid YAML: {e}\n{yaml}"));
        let obj = bootstrap.as_object_mut().unwrap_or_else(|| panic!("bootstrap must be a map:\n{yaml}"));
        obj.insert("admin".into(), admin_json(IpAddr::V4(Ipv4Addr::LOCALHOST), 0));
        Envoy::spawn_bootstrap_value(bootstrap)
    }

    fn spawn_bootstrap_value(bootstrap: Value) -> Envoy {
        let binary = envoy_binary();
        let dir = artifact_dir("envoy");
        let bootstrap_path = dir.join("bootstrap.json");
        let admin_path = dir.join("admin-address");
        std::fs::write(&bootstrap_path, serde_json::to_string_pretty(&bootstrap).expect("serialize bootstrap"))
            .expect("write bootstrap");
        let mut cmd = Command::new(&binary);
        cmd.arg("-c")
            .arg(&bootstrap_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "--drain-time-s", "1"])
            .args(["-l", "info", "--component-log-level", "config:debug,upstream:debug"])
            .arg("--admin-address-path")
            .arg(&admin_path);
        let proc = Proc::spawn("envoy", cmd, dir);
        let admin = wait_for(STARTUP, "Envoy to write its admin address", || {
            proc.assert_running();
            std::fs::read_to_string(&admin_path).ok().and_then(|s| s.trim().parse::<SocketAddr>().ok())
        });
        Envoy { proc, admin, bootstrap_path }
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap_path
    }

    /// The last `lines` lines of Envoy's log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// Panics with the log tail if Envoy has exited.
    pub fn assert_running(&self) {
        self.proc.assert_running();
    }

    /// GET an admin path (e.g. `/clusters`); `Err` on transport errors.
    pub fn try_admin_get(&self, path: &str) -> Result<Response, String> {
        try_http_request(self.admin, "GET", &self.admin.to_string(), path, &[])
    }

    /// GET an admin path; panics unless it answers 200.
    pub fn admin_get(&self, path: &str) -> Response {
        self.assert_running();
        let resp = self.try_admin_get(path).unwrap_or_else(|e| panic!("Envoy admin GET {path}: {e}"));
        assert_eq!(resp.status, 200, "Envoy admin GET {path}: {}", resp.text());
        resp
    }

    /// Server state from `/ready`: `LIVE`, `PRE_INITIALIZING`, `INITIALIZING`, ...
    pub fn server_state(&self) -> Result<String, String> {
        self.try_admin_get("/ready").map(|r| r.text().trim().to_string())
    }

    /// Waits until `/ready` says LIVE.
    pub fn wait_live(&self, deadline: Duration) {
        self.wait_until(deadline, "Envoy /ready to say LIVE", |e| match e.server_state() {
            Ok(state) if state == "LIVE" => Ok(()),
            Ok(state) => Err(format!("state {state}")),
            Err(err) => Err(err),
        });
    }

    /// `/config_dump?include_eds` as JSON.
    pub fn config_dump(&self) -> Value {
        self.admin_get("/config_dump?include_eds").json()
    }

    /// The value of one counter or gauge (exact name), if Envoy has it.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let filter = percent_encode(&format!("^{}$", regex_escape(name)));
        let text = self.admin_get(&format!("/stats?filter={filter}")).text();
        text.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            if n == name { v.trim().parse().ok() } else { None }
        })
    }

    /// Polls `cond(self)` until it holds (see [`wait_for`]); also fails at
    /// once if Envoy exits.
    pub fn wait_until<R: WaitOutcome>(
        &self,
        deadline: Duration,
        what: &str,
        mut cond: impl FnMut(&Envoy) -> R,
    ) -> R::Output {
        wait_for(deadline, what, || {
            self.assert_running();
            cond(self)
        })
    }

    /// Waits (up to [`PROPAGATION`]) until a dynamic or static listener
    /// named `name` is in the config dump.
    pub fn wait_for_listener(&self, name: &str) {
        self.wait_until(PROPAGATION, &format!("listener {name} in Envoy"), |e| {
            listener_names(&e.config_dump()).iter().any(|n| n == name)
        });
    }

    /// Kills Envoy now (it is also killed on drop).
    pub fn kill(&self) {
        self.proc.kill();
    }
}

/// Names of all (static and active dynamic) listeners in a config dump.
pub fn listener_names(dump: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for config in dump["configs"].as_array().into_iter().flatten() {
        if config["@type"] != "type.googleapis.com/envoy.admin.v3.ListenersConfigDump" {
            continue;
        }
        for l in config["static_listeners"].as_array().into_iter().flatten() {
            if let Some(n) = l["listener"]["name"].as_str() {
                names.push(n.to_string());
            }
        }
        for l in config["dynamic_listeners"].as_array().into_iter().flatten() {
            if l.get("active_state").is_some()
                && let Some(n) = l["name"].as_str()
            {
                names.push(n.to_string());
            }
        }
    }
    names
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
