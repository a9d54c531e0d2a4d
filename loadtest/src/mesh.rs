//! Meshes to load-test against: a generator writing Kubernetes/Istio YAML
//! (Services, Pods with IPs, VirtualServices, DestinationRules, Sidecars),
//! the workloads loadtest impersonates, and the changes it makes to them.
//!
//! Layout of a generated directory (what `meshplane up --config-dir` reads,
//! plus two files it ignores):
//!
//! ```text
//!  DIR/namespaces.yaml            Namespaces
//!  DIR/NS/sidecar.yaml            the namespace's Sidecar: egress ./* + the shared namespace
//!  DIR/NS/SERVICE.yaml            Service + its Pods (+ DestinationRule, VirtualService)
//!  DIR/proxies.jsonl              one workload per line: node id, namespace, labels
//!  DIR/mesh.json                  the model, so loadtest can rewrite one SERVICE.yaml per change
//! ```
//!
//! With `--flavor istio-files` ([`crate::istio_files`]) each SERVICE.yaml holds
//! a ServiceEntry and WorkloadEntries instead of the Service and its Pods.
//!
//! Each change rewrites a single small file (atomically, via a hidden
//! temporary file and a rename), so the control plane's directory watch
//! re-reads one file, not the mesh. The same files can instead be written as
//! meshplane's store records (`loadtest gen-mesh --store`, see `store.rs`):
//! then the directory holds only `proxies.jsonl`, `mesh.json` and `store.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use serde::{Deserialize, Serialize};

use crate::istio_files::Flavor;
use crate::probe::{ProbeCheck, ProbeSpec};

pub const DOMAIN: &str = "svc.cluster.local";
pub const HTTP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 5432;
const HEADER: &str = "x-loadtest-rev";

/// A workload loadtest impersonates: one simulated proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxySpec {
    /// `sidecar~IP~POD.NS~NS.svc.cluster.local` (or `router~...`).
    pub id: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// `REDIRECT` (default), `TPROXY` or `NONE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception_mode: Option<String>,
}

impl ProxySpec {
    /// A sidecar in `namespace` at `ip` named `pod`.
    pub fn sidecar(ip: Ipv4Addr, pod: &str, namespace: &str, labels: BTreeMap<String, String>) -> ProxySpec {
        ProxySpec {
            id: format!("sidecar~{ip}~{pod}.{namespace}~{namespace}.{DOMAIN}"),
            namespace: namespace.into(),
            labels,
            service_account: None,
            interception_mode: None,
        }
    }

    /// The Envoy node istio-agent would send for this workload.
    pub fn node(&self) -> Node {
        let s = |v: &str| Value { kind: Some(Kind::StringValue(v.to_string())) };
        let mut parts = self.id.split('~');
        let _ty = parts.next();
        let ip = parts.next().unwrap_or("");
        let pod = parts.next().and_then(|w| w.split('.').next()).unwrap_or("");
        let labels = Struct { fields: self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect() };
        let mut fields = BTreeMap::from([
            ("NAMESPACE".to_string(), s(&self.namespace)),
            ("LABELS".to_string(), Value { kind: Some(Kind::StructValue(labels)) }),
            ("INTERCEPTION_MODE".to_string(), s(self.interception_mode.as_deref().unwrap_or("REDIRECT"))),
            ("CLUSTER_ID".to_string(), s("Kubernetes")),
            ("ISTIO_VERSION".to_string(), s("1.24.0")),
            ("MESH_ID".to_string(), s("cluster.local")),
            ("INSTANCE_IPS".to_string(), s(ip)),
            ("NAME".to_string(), s(pod)),
            ("WORKLOAD_NAME".to_string(), s(self.labels.get("app").map_or(pod, String::as_str))),
        ]);
        if let Some(sa) = &self.service_account {
            fields.insert("SERVICE_ACCOUNT".into(), s(sa));
        }
        Node {
            id: self.id.clone(),
            cluster: format!("{}.{}", self.labels.get("app").map_or("unknown", String::as_str), self.namespace),
            metadata: Some(Struct { fields: fields.into_iter().collect() }),
            user_agent_name: "envoy".into(),
            ..Default::default()
        }
    }
}

/// Read `proxies.jsonl` (one [`ProxySpec`] per line).
pub fn read_proxies(path: &Path) -> anyhow::Result<Vec<ProxySpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}: not a proxy spec", path.display(), i + 1))
        })
        .collect()
}

/// `n` proxies: the workloads of `specs` in turn; past the end of the list,
/// copies with the same namespace and labels and an IP of their own (so
/// every node id is distinct; the control plane classifies them by their
/// metadata labels).
pub fn expand_proxies(specs: &[ProxySpec], n: usize) -> Vec<ProxySpec> {
    (0..n)
        .map(|i| {
            let base = &specs[i % specs.len()];
            if i < specs.len() {
                return base.clone();
            }
            let round = i / specs.len();
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32);
            let mut parts = base.id.splitn(4, '~');
            let ty = parts.next().unwrap_or("sidecar");
            let _ = parts.next();
            let workload = parts.next().unwrap_or("pod.default");
            let (pod, ns) = workload.split_once('.').unwrap_or((workload, &base.namespace));
            ProxySpec { id: format!("{ty}~{ip}~{pod}-r{round}.{ns}~{ns}.{DOMAIN}"), ..base.clone() }
        })
        .collect()
}

/// Synthetic workloads for runs without a mesh: `n` sidecars in `default`.
pub fn synthetic_proxies(n: usize) -> Vec<ProxySpec> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 240, 0, 0)) + i as u32);
            let labels = BTreeMap::from([("app".to_string(), format!("loadtest-{}", i % 10))]);
            ProxySpec::sidecar(ip, &format!("loadtest-{i}"), "default", labels)
        })
        .collect()
}

/// Parameters of `loadtest gen-mesh`.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Args)]
pub struct MeshParams {
    /// Services in total.
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Pods (endpoints) per service.
    #[arg(long, default_value_t = 10)]
    pub pods_per_service: usize,
    /// Application namespaces (plus the shared one).
    #[arg(long, default_value_t = 20)]
    pub namespaces: usize,
    /// Share of services in the shared namespace every Sidecar imports.
    #[arg(long, default_value_t = 0.02)]
    pub shared_share: f64,
    /// Share of services with a VirtualService (subsets, weights, a header).
    #[arg(long, default_value_t = 0.10)]
    pub vs_share: f64,
    /// Share of services with a DestinationRule but no VirtualService.
    #[arg(long, default_value_t = 0.10)]
    pub dr_share: f64,
    /// Share of services with a second, TCP port.
    #[arg(long, default_value_t = 0.20)]
    pub tcp_share: f64,
    /// Ingress gateway pods (router proxies) in istio-system.
    #[arg(long, default_value_t = 0)]
    pub gateways: usize,
    /// No Sidecar resources (every proxy sees every service).
    #[arg(long)]
    pub no_sidecars: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mesh {
    pub params: MeshParams,
    pub shared_namespace: String,
    pub namespaces: Vec<String>,
    pub services: Vec<ServiceDef>,
    /// Changes made so far (new IPs are drawn from it).
    pub changes: u64,
    /// The form services and workloads are written in.
    #[serde(default)]
    pub flavor: Flavor,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceDef {
    pub name: String,
    pub namespace: String,
    pub cluster_ip: Ipv4Addr,
    pub tcp: bool,
    pub vs: bool,
    pub dr: bool,
    pub header: String,
    pub pods: Vec<PodDef>,
    /// Endpoint changes made to this service so far.
    #[serde(default)]
    pub moves: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodDef {
    pub name: String,
    pub ip: Ipv4Addr,
    pub version: String,
}

impl ServiceDef {
    pub fn fqdn(&self) -> String {
        format!("{}.{}.{DOMAIN}", self.name, self.namespace)
    }

    /// The EDS (and CDS) name of its HTTP port.
    pub fn http_cluster(&self) -> String {
        format!("outbound|{HTTP_PORT}||{}", self.fqdn())
    }
}

fn pick(i: usize, share: f64) -> bool {
    // Evenly spread: service i is picked when the running count crosses an integer.
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

impl Mesh {
    pub fn generate(params: MeshParams) -> Mesh {
        let shared_namespace = "mesh-shared".to_string();
        let namespaces: Vec<String> = (0..params.namespaces.max(1)).map(|i| format!("ns-{i}")).collect();
        let mut services = Vec::with_capacity(params.services);
        let mut pod_ip = u32::from(Ipv4Addr::new(10, 64, 0, 0));
        let mut app_index = 0;
        for i in 0..params.services {
            let shared = pick(i, params.shared_share);
            let namespace = if shared {
                shared_namespace.clone()
            } else {
                app_index += 1;
                namespaces[(app_index - 1) % namespaces.len()].clone()
            };
            let vs = pick(i, params.vs_share);
            let dr = vs || pick(i + 7, params.dr_share);
            let name = format!("svc-{i}");
            let pods = (0..params.pods_per_service)
                .map(|j| {
                    pod_ip += 1;
                    if pod_ip & 0xff == 0 {
                        pod_ip += 1;
                    }
                    let version = if dr && j % 2 == 1 { "v2" } else { "v1" };
                    PodDef {
                        name: format!("{name}-{version}-{:05x}-{j}", (i * 7919 + j * 104_729) % 0xfffff),
                        ip: Ipv4Addr::from(pod_ip),
                        version: version.into(),
                    }
                })
                .collect();
            services.push(ServiceDef {
                cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32),
                tcp: pick(i + 3, params.tcp_share),
                vs,
                dr,
                header: "initial".into(),
                moves: 0,
                name,
                namespace,
                pods,
            });
        }
        Mesh { params, shared_namespace, namespaces, services, changes: 0, flavor: Flavor::default() }
    }

    pub fn load(dir: &Path) -> anyhow::Result<Mesh> {
        let path = dir.join("mesh.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (generate the mesh with `loadtest gen-mesh`)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a loadtest mesh", path.display()))
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        write_atomic(&dir.join("mesh.json"), &serde_json::to_string(self)?)
    }

    /// The workloads: one sidecar per pod, then the gateways.
    pub fn proxies(&self) -> Vec<ProxySpec> {
        let mut out = Vec::new();
        for s in &self.services {
            for p in &s.pods {
                let labels =
                    BTreeMap::from([("app".to_string(), s.name.clone()), ("version".into(), p.version.clone())]);
                let mut spec = ProxySpec::sidecar(p.ip, &p.name, &s.namespace, labels);
                spec.service_account = Some(s.name.clone());
                out.push(spec);
            }
        }
        for g in 0..self.params.gateways {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 63, 0, 10)) + g as u32);
            let labels = BTreeMap::from([("istio".to_string(), "ingressgateway".to_string())]);
            out.push(ProxySpec {
                id: format!("router~{ip}~istio-ingressgateway-{g}.istio-system~istio-system.{DOMAIN}"),
                namespace: "istio-system".into(),
                labels,
                service_account: Some("istio-ingressgateway".into()),
                interception_mode: None,
            });
        }
        out
    }

    /// Write the whole mesh below `dir`: its YAML ([`Mesh::files`]) and the
    /// model files ([`Mesh::write_model`]).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (path, text) in self.files() {
            let path = dir.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            write_atomic(&path, &text)?;
        }
        self.write_model(dir)
    }

    /// Write what `loadtest run` reads besides the YAML: `proxies.jsonl`
    /// (the workloads) and `mesh.json` (the model).
    pub fn write_model(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut proxies = String::new();
        for p in self.proxies() {
            proxies.push_str(&serde_json::to_string(&p)?);
            proxies.push('\n');
        }
        write_atomic(&dir.join("proxies.jsonl"), &proxies)?;
        self.save(dir)
    }

    /// Every YAML file of the mesh: (path relative to the mesh directory, content).
    pub fn files(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut ns = String::new();
        let all = self.namespaces.iter().chain([&self.shared_namespace]).map(String::as_str).chain(["istio-system"]);
        for n in all.clone() {
            let _ = write!(
                ns,
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {n}, labels: {{istio-injection: enabled}}}}\n---\n"
            );
        }
        out.push((PathBuf::from("namespaces.yaml"), ns));
        for n in all {
            if !self.params.no_sidecars && n != "istio-system" {
                let sidecar = format!(
                    "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: {n}}}\nspec:\n  egress:\n  - hosts: [\"./*\", \"{}/*\", \"istio-system/*\"]\n",
                    self.shared_namespace
                );
                out.push((Path::new(n).join("sidecar.yaml"), sidecar));
            }
        }
        if self.params.gateways > 0 {
            out.push((Path::new("istio-system").join("gateway.yaml"), self.gateway_yaml()));
        }
        out.extend((0..self.services.len()).map(|i| self.service_file(i)));
        out
    }

    /// Service `i`'s file: (path relative to the mesh directory, content).
    pub fn service_file(&self, i: usize) -> (PathBuf, String) {
        let s = &self.services[i];
        (Path::new(&s.namespace).join(format!("{}.yaml", s.name)), self.service_yaml(i))
    }

    pub fn write_service(&self, dir: &Path, i: usize) -> anyhow::Result<()> {
        let (path, text) = self.service_file(i);
        write_atomic(&dir.join(path), &text)
    }

    fn gateway_yaml(&self) -> String {
        if self.flavor == Flavor::IstioFiles {
            return crate::istio_files::gateway_yaml(self);
        }
        let mut y = String::from(
            "apiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\nspec:\n  clusterIP: 10.63.255.1\n  selector: {istio: ingressgateway}\n  ports: [{name: http2, port: 80, targetPort: 8080}]\n",
        );
        for g in 0..self.params.gateways {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 63, 0, 10)) + g as u32);
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: istio-ingressgateway-{g}, namespace: istio-system, labels: {{istio: ingressgateway}}}}\nspec:\n  serviceAccountName: istio-ingressgateway\n  containers: [{{name: istio-proxy, image: istio/proxyv2, ports: [{{containerPort: 8080}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"True\"}}]\n"
            );
        }
        y
    }

    fn service_yaml(&self, i: usize) -> String {
        if self.flavor == Flavor::IstioFiles {
            return crate::istio_files::service_yaml(self, i);
        }
        let s = &self.services[i];
        let (name, ns) = (&s.name, &s.namespace);
        let mut y = String::new();
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec:\n  clusterIP: {}\n  selector: {{app: {name}}}\n  ports:\n  - {{name: http, port: {HTTP_PORT}, targetPort: {HTTP_PORT}}}\n",
            s.cluster_ip
        );
        if s.tcp {
            let _ = writeln!(y, "  - {{name: tcp-db, port: {TCP_PORT}, targetPort: {TCP_PORT}}}");
        }
        let container_ports = if s.tcp {
            format!("[{{containerPort: {HTTP_PORT}}}, {{containerPort: {TCP_PORT}}}]")
        } else {
            format!("[{{containerPort: {HTTP_PORT}}}]")
        };
        for p in &s.pods {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {}, namespace: {ns}, labels: {{app: {name}, version: {}}}}}\nspec:\n  serviceAccountName: {name}\n  containers: [{{name: app, image: example/{name}:1, ports: {container_ports}}}]\nstatus:\n  phase: Running\n  podIP: {}\n  conditions: [{{type: Ready, status: \"True\"}}]\n",
                p.name, p.version, p.ip
            );
        }
        y.push_str(&self.traffic_yaml(i));
        y
    }

    /// The service's DestinationRule and VirtualService (the same in every flavor).
    pub(crate) fn traffic_yaml(&self, i: usize) -> String {
        let s = &self.services[i];
        let (name, ns) = (&s.name, &s.namespace);
        let mut y = String::new();
        if s.dr {
            let _ = write!(
                y,
                "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: {name}\n  trafficPolicy:\n    loadBalancer: {{simple: LEAST_REQUEST}}\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n"
            );
        }
        if s.vs {
            let _ = write!(
                y,
                "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [{name}]\n  http:\n  - name: canary\n    match:\n    - headers: {{x-canary: {{exact: \"true\"}}}}\n    route:\n    - destination: {{host: {name}, subset: v2}}\n  - name: split\n    route:\n    - destination: {{host: {name}, subset: v1}}\n      weight: 90\n    - destination: {{host: {name}, subset: v2}}\n      weight: 10\n    headers:\n      request:\n        set: {{{HEADER}: \"{}\"}}\n    timeout: 10s\n",
                s.header
            );
        }
        y
    }

    /// Services a change should target: those in the shared namespace
    /// (imported by every sidecar) when `shared`, else all.
    pub fn targets(&self, shared: bool) -> Vec<usize> {
        let all: Vec<usize> = (0..self.services.len()).filter(|&i| !self.services[i].pods.is_empty()).collect();
        let shared_ones: Vec<usize> =
            all.iter().copied().filter(|&i| self.services[i].namespace == self.shared_namespace).collect();
        if shared && !shared_ones.is_empty() { shared_ones } else { all }
    }

    /// Move one pod of service `i` to a new IP: an endpoint change.
    /// Returns the probe that recognises it. Call [`Mesh::write_service`] to apply.
    pub fn move_endpoint(&mut self, i: usize, id: u32) -> ProbeSpec {
        self.changes += 1;
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + self.changes as u32 * 2 + 1);
        let s = &mut self.services[i];
        // Each change of a service moves its next pod: a pod moves again only
        // after all of the service's pods have, so a change is not overwritten
        // by a later one before it can converge.
        let pod = s.moves % s.pods.len();
        s.moves += 1;
        s.pods[pod].ip = ip;
        let cluster = s.http_cluster();
        ProbeSpec {
            id,
            affects: cluster.clone(),
            check: ProbeCheck::Endpoint { cluster, address: ip.to_string(), port: u32::from(HTTP_PORT) },
        }
    }

    /// Change the header value a service's VirtualService sets (a route
    /// change); `None` if it has no VirtualService.
    pub fn change_route(&mut self, i: usize, id: u32, run: &str) -> Option<ProbeSpec> {
        if !self.services[i].vs {
            return None;
        }
        self.changes += 1;
        let token = format!("lt-{run}-{}", self.changes);
        let s = &mut self.services[i];
        s.header = token.clone();
        Some(ProbeSpec {
            id,
            affects: s.http_cluster(),
            check: ProbeCheck::Contains { ty: crate::facts::XdsType::Rds, token },
        })
    }
}

/// Write a file so a directory watcher never sees it half-written: a hidden
/// temporary file in the same directory, then a rename.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(services: usize, pods: usize, namespaces: usize) -> MeshParams {
        MeshParams {
            services,
            pods_per_service: pods,
            namespaces,
            shared_share: 0.02,
            vs_share: 0.1,
            dr_share: 0.1,
            tcp_share: 0.2,
            gateways: 1,
            no_sidecars: false,
        }
    }

    #[test]
    fn proportions_and_unique_ips() {
        let mesh = Mesh::generate(params(1000, 10, 20));
        assert_eq!(mesh.services.iter().filter(|s| s.vs).count(), 100);
        assert_eq!(mesh.services.iter().filter(|s| s.namespace == "mesh-shared").count(), 20);
        let mut ips: Vec<_> = mesh.services.iter().flat_map(|s| s.pods.iter().map(|p| p.ip)).collect();
        assert_eq!(ips.len(), 10_000);
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 10_000);
        assert_eq!(mesh.proxies().len(), 10_001);
    }

    #[test]
    fn expanded_proxies_have_distinct_ids() {
        let mesh = Mesh::generate(params(10, 2, 2));
        let specs = expand_proxies(&mesh.proxies(), 50);
        let mut ids: Vec<_> = specs.iter().map(|s| s.id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 50);
    }

    #[test]
    fn generated_yaml_is_valid_for_meshplane() {
        let dir = tempfile::tempdir().unwrap();
        let mut mesh = Mesh::generate(params(60, 3, 3));
        mesh.write(dir.path()).unwrap();
        let probe = mesh.move_endpoint(0, 0);
        mesh.write_service(dir.path(), 0).unwrap();
        assert!(matches!(probe.check, ProbeCheck::Endpoint { .. }));
        let mut objects = 0;
        let mut files = vec![dir.path().to_path_buf()];
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&p).unwrap();
                let parsed = meshplane_model::parse::parse_yaml(&p.display().to_string(), &text);
                let errors: Vec<String> = parsed.errors().map(|d| d.to_string()).collect();
                assert!(errors.is_empty(), "{}: {errors:?}", p.display());
                objects += parsed.objects.len();
            }
        }
        // 6 namespaces (3 + shared + istio-system... ) + sidecars + services + pods + DRs + VSs.
        assert!(objects > 60 * 4, "{objects}");
        assert_eq!(read_proxies(&dir.path().join("proxies.jsonl")).unwrap().len(), 181);
        assert_eq!(Mesh::load(dir.path()).unwrap().changes, 0);
    }
}
