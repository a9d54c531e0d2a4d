//! The mesh snapshot: every object in the store at one revision, indexed the
//! way config generation asks questions of it.
//!
//! ```text
//!  store keys ──apply/remove──▶ MeshState ──build(revision)──▶ Arc<MeshSnapshot>
//!                                (objects by key)               services by host, endpoints by host,
//!                                                               workloads by IP, VS/DR/Sidecar oldest first
//! ```
//!
//! Services from Kubernetes and from ServiceEntries are unified into
//! [`ServiceModel`]; the same hostname from several clusters is one service
//! whose endpoints are merged, each keeping its cluster and locality.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use meshplane_model::MeshObject;
use meshplane_model::k8s::{IntOrString, Node, Pod, Service};
use meshplane_model::key::ObjectKey;
use meshplane_model::meta::{ObjectMeta, labels_match};
use meshplane_model::networking::{DestinationRule, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};

/// The namespace whose config applies mesh-wide (Istio's root namespace).
pub const ROOT_NAMESPACE: &str = "istio-system";
/// The DNS suffix of Kubernetes services.
pub const DOMAIN_SUFFIX: &str = "svc.cluster.local";
/// Kubernetes annotation that sets a Service's exportTo.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

/// How traffic on a port is handled, from the port's name or appProtocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    /// Unnamed ports: Istio sniffs the protocol. meshplane serves them as HTTP
    /// (see docs/architecture.md, "Protocol selection").
    Auto,
}

impl Protocol {
    /// Istio's rules: `appProtocol` first, else the port name's prefix before `-`.
    pub fn detect(name: Option<&str>, app_protocol: Option<&str>) -> Protocol {
        let from = |s: &str| {
            let prefix = s.split('-').next().unwrap_or("").to_ascii_lowercase();
            match prefix.as_str() {
                "http" | "http1" => Some(Protocol::Http),
                "http2" | "h2c" => Some(Protocol::Http2),
                "grpc" | "grpc-web" => Some(Protocol::Grpc),
                "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" | "udp" => Some(Protocol::Tcp),
                _ => None,
            }
        };
        app_protocol
            .and_then(|p| from(p.rsplit('/').next().unwrap_or(p)))
            .or_else(|| name.and_then(from))
            .unwrap_or(Protocol::Auto)
    }

    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServicePortModel {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetPort {
    Number(u16),
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    Kubernetes {
        selector: Option<BTreeMap<String, String>>,
    },
    ExternalName(String),
    /// resolution: NONE, STATIC, DNS, DNS_ROUND_ROBIN.
    ServiceEntry {
        resolution: String,
        external: bool,
    },
}

/// A service as proxies see it: a hostname with ports, from a Kubernetes
/// Service or a ServiceEntry host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceModel {
    pub hostname: String,
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePortModel>,
    pub export_to: Vec<String>,
    pub kind: ServiceKind,
}

impl ServiceModel {
    pub fn port(&self, port: u16) -> Option<&ServicePortModel> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// Whether a proxy in `namespace` may see this service (exportTo).
    pub fn visible_to(&self, namespace: &str) -> bool {
        exported_to(&self.export_to, &self.namespace, namespace)
    }
}

/// Istio's exportTo: empty or `*` = everywhere, `.` = own namespace, `~` = nowhere.
pub fn exported_to(export_to: &[String], own: &str, client: &str) -> bool {
    export_to.is_empty() || export_to.iter().any(|e| e == "*" || (e == "." && own == client) || e == client)
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

/// One address that serves a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointModel {
    pub address: String,
    /// Service port -> the port to connect to.
    pub ports: BTreeMap<u16, u16>,
    pub labels: BTreeMap<String, String>,
    pub locality: Locality,
    pub cluster: String,
    pub weight: u32,
}

/// The locality of an endpoint: `(cluster, node name, EndpointSlice zone)`
/// to the node's topology labels (the slice's zone when the node has none).
type NodeLocality<'a> = dyn Fn(&str, Option<&str>, Option<&str>) -> Locality + 'a;

/// A workload a proxy can run beside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub cluster: String,
}

/// Every stored object, by key: the mutable side, fed by the store watch.
#[derive(Clone, Debug, Default)]
pub struct MeshState {
    objects: BTreeMap<ObjectKey, Arc<MeshObject>>,
}

impl MeshState {
    pub fn apply(&mut self, key: ObjectKey, object: MeshObject) {
        self.objects.insert(key, Arc::new(object));
    }

    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        self.objects.remove(key).is_some()
    }

    pub fn clear(&mut self) {
        self.objects.clear();
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn objects(&self) -> impl Iterator<Item = (&ObjectKey, &Arc<MeshObject>)> {
        self.objects.iter()
    }
}

/// An immutable, indexed view of the mesh at one store revision.
#[derive(Debug, Default)]
pub struct MeshSnapshot {
    pub revision: i64,
    /// Sorted by hostname, then namespace.
    pub services: Vec<Arc<ServiceModel>>,
    pub endpoints: HashMap<String, Vec<EndpointModel>>,
    /// Oldest first (Istio's precedence order), then namespace/name.
    pub virtual_services: Vec<Arc<VirtualService>>,
    pub destination_rules: Vec<Arc<DestinationRule>>,
    pub sidecars: Vec<Arc<Sidecar>>,
    workloads_by_ip: HashMap<IpAddr, Vec<Workload>>,
    services_by_host: HashMap<String, usize>,
}

/// Istio's "oldest first" order, made total: creation time (objects without
/// one last), then namespace, then name.
fn age_key(meta: &ObjectMeta) -> (bool, String, String, String) {
    (
        meta.creation_timestamp.is_none(),
        meta.creation_timestamp.clone().unwrap_or_default(),
        meta.namespace().to_string(),
        meta.name.clone(),
    )
}

impl MeshSnapshot {
    pub fn service(&self, hostname: &str) -> Option<&Arc<ServiceModel>> {
        self.services_by_host.get(hostname).map(|&i| &self.services[i])
    }

    pub fn endpoints(&self, hostname: &str) -> &[EndpointModel] {
        self.endpoints.get(hostname).map_or(&[], Vec::as_slice)
    }

    /// The workload at an IP, preferring one in `namespace`.
    pub fn workload_at(&self, ip: IpAddr, namespace: Option<&str>) -> Option<&Workload> {
        let candidates = self.workloads_by_ip.get(&ip)?;
        candidates
            .iter()
            .find(|w| Some(w.namespace.as_str()) == namespace)
            .or_else(|| namespace.is_none().then(|| candidates.first()).flatten())
    }

    /// Whether config generation reads the same inputs from both snapshots,
    /// apart from endpoints: services, VirtualServices, DestinationRules and
    /// Sidecars are equal. Endpoints (and the workloads proxies are
    /// classified by) may differ.
    ///
    /// Compares what `build` made, not which objects changed, so it stays
    /// true to whatever `build` derives services from.
    pub fn same_config_inputs(&self, other: &MeshSnapshot) -> bool {
        self.services == other.services
            && self.virtual_services == other.virtual_services
            && self.destination_rules == other.destination_rules
            && self.sidecars == other.sidecars
    }

    /// The hosts whose endpoints differ between `previous` and this snapshot.
    pub fn changed_endpoint_hosts<'a>(&'a self, previous: &'a MeshSnapshot) -> HashSet<&'a str> {
        let mut changed: HashSet<&str> = HashSet::new();
        for (host, endpoints) in &self.endpoints {
            if previous.endpoints.get(host) != Some(endpoints) {
                changed.insert(host);
            }
        }
        for host in previous.endpoints.keys() {
            if !self.endpoints.contains_key(host) {
                changed.insert(host);
            }
        }
        changed
    }

    pub fn build(state: &MeshState, revision: i64) -> MeshSnapshot {
        let mut k8s_services: Vec<(&str, &Service)> = Vec::new();
        let mut service_entries: Vec<&ServiceEntry> = Vec::new();
        let mut pods: Vec<(&str, &Pod)> = Vec::new();
        let mut slices = Vec::new();
        let mut workload_entries: Vec<(&str, &WorkloadEntry)> = Vec::new();
        let mut nodes: HashMap<(&str, &str), &Node> = HashMap::new();
        let mut snapshot = MeshSnapshot { revision, ..Default::default() };

        for (key, object) in state.objects() {
            let cluster = key.cluster.as_str();
            match object.as_ref() {
                MeshObject::Service(s) => k8s_services.push((cluster, s)),
                MeshObject::ServiceEntry(se) => service_entries.push(se),
                MeshObject::Pod(p) => pods.push((cluster, p)),
                MeshObject::EndpointSlice(s) => slices.push((cluster, s)),
                MeshObject::WorkloadEntry(we) => workload_entries.push((cluster, we)),
                MeshObject::Node(n) => {
                    nodes.insert((cluster, n.metadata.name.as_str()), n);
                }
                MeshObject::VirtualService(vs) => snapshot.virtual_services.push(Arc::new(vs.clone())),
                MeshObject::DestinationRule(dr) => snapshot.destination_rules.push(Arc::new(dr.clone())),
                MeshObject::Sidecar(sc) => snapshot.sidecars.push(Arc::new(sc.clone())),
                MeshObject::Namespace(_)
                | MeshObject::Gateway(_)
                | MeshObject::PeerAuthentication(_)
                | MeshObject::AuthorizationPolicy(_) => {}
            }
        }
        snapshot.virtual_services.sort_by_key(|o| age_key(&o.metadata));
        snapshot.destination_rules.sort_by_key(|o| age_key(&o.metadata));
        snapshot.sidecars.sort_by_key(|o| age_key(&o.metadata));

        let locality_of_node = |cluster: &str, node: Option<&str>, zone: Option<&str>| -> Locality {
            let labels = node.and_then(|n| nodes.get(&(cluster, n))).map(|n| &n.metadata.labels);
            let label = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
            let mut locality = Locality {
                region: label("topology.kubernetes.io/region"),
                zone: label("topology.kubernetes.io/zone"),
                subzone: label("topology.istio.io/subzone"),
            };
            if locality.zone.is_empty() {
                locality.zone = zone.unwrap_or_default().to_string();
            }
            locality
        };

        // Workloads by IP: pods and workload entries.
        for (cluster, pod) in &pods {
            for ip in pod.ips() {
                if let Ok(ip) = ip.parse() {
                    snapshot.workloads_by_ip.entry(ip).or_default().push(Workload {
                        namespace: pod.metadata.namespace().to_string(),
                        name: pod.metadata.name.clone(),
                        labels: pod.metadata.labels.clone(),
                        service_account: pod.service_account().to_string(),
                        cluster: cluster.to_string(),
                    });
                }
            }
        }
        for (cluster, we) in &workload_entries {
            if let Ok(ip) = we.spec.address.parse() {
                let mut labels = we.metadata.labels.clone();
                labels.extend(we.spec.labels.clone());
                snapshot.workloads_by_ip.entry(ip).or_default().push(Workload {
                    namespace: we.metadata.namespace().to_string(),
                    name: we.metadata.name.clone(),
                    labels,
                    service_account: we.spec.service_account.clone().unwrap_or_else(|| "default".into()),
                    cluster: cluster.to_string(),
                });
            }
        }

        let inventory = Inventory::new(&pods, &slices, &workload_entries);
        // Kubernetes services: one model per hostname; the first cluster (by id) defines ports.
        k8s_services.sort_by(|a, b| {
            (a.1.metadata.namespace(), &a.1.metadata.name, a.0).cmp(&(
                b.1.metadata.namespace(),
                &b.1.metadata.name,
                b.0,
            ))
        });
        let mut models: BTreeMap<String, ServiceModel> = BTreeMap::new();
        for (cluster, svc) in &k8s_services {
            let ns = svc.metadata.namespace();
            let hostname = format!("{}.{ns}.{DOMAIN_SUFFIX}", svc.metadata.name);
            let model = models.entry(hostname.clone()).or_insert_with(|| kubernetes_service(svc, hostname.clone()));
            let endpoints = kubernetes_endpoints(cluster, svc, model, &inventory, &locality_of_node);
            snapshot.endpoints.entry(hostname).or_default().extend(endpoints);
        }
        // ServiceEntries: a model per host; the oldest entry for a host wins.
        service_entries.sort_by_key(|se| age_key(&se.metadata));
        for se in service_entries {
            for host in &se.spec.hosts {
                if models.contains_key(host) {
                    continue;
                }
                let model = service_entry_model(se, host);
                let endpoints = service_entry_endpoints(se, &model, &inventory, &locality_of_node);
                snapshot.endpoints.insert(host.clone(), endpoints);
                models.insert(host.clone(), model);
            }
        }
        for (i, (host, model)) in models.into_iter().enumerate() {
            snapshot.services_by_host.insert(host, i);
            snapshot.services.push(Arc::new(model));
        }
        for endpoints in snapshot.endpoints.values_mut() {
            endpoints.sort_by(|a, b| (&a.cluster, &a.address).cmp(&(&b.cluster, &b.address)));
            endpoints.dedup();
        }
        snapshot
    }
}

fn kubernetes_service(svc: &Service, hostname: String) -> ServiceModel {
    let spec = &svc.spec;
    let mut addresses: Vec<String> = Vec::new();
    for ip in spec.cluster_ip.iter().chain(&spec.cluster_ips) {
        if ip != "None" && !ip.is_empty() && !addresses.contains(ip) {
            addresses.push(ip.clone());
        }
    }
    let kind = match (spec.type_.as_deref(), &spec.external_name) {
        (Some("ExternalName"), Some(target)) => ServiceKind::ExternalName(target.clone()),
        _ => ServiceKind::Kubernetes { selector: spec.selector.clone() },
    };
    ServiceModel {
        hostname,
        namespace: svc.metadata.namespace().to_string(),
        name: svc.metadata.name.clone(),
        addresses,
        ports: spec
            .ports
            .iter()
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
            .map(|p| ServicePortModel {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: Protocol::detect(p.name.as_deref(), p.app_protocol.as_deref()),
                target: match &p.target_port {
                    Some(IntOrString::Int(n)) => TargetPort::Number(u16::try_from(*n).unwrap_or(p.port)),
                    Some(IntOrString::String(s)) => {
                        s.parse().map(TargetPort::Number).unwrap_or_else(|_| TargetPort::Named(s.clone()))
                    }
                    None => TargetPort::Number(p.port),
                },
            })
            .collect(),
        export_to: svc
            .metadata
            .annotations
            .get(EXPORT_TO_ANNOTATION)
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default(),
        kind,
    }
}

fn kubernetes_endpoints(
    cluster: &str,
    svc: &Service,
    model: &ServiceModel,
    inventory: &Inventory<'_>,
    locality_of_node: &NodeLocality<'_>,
) -> Vec<EndpointModel> {
    let ns = svc.metadata.namespace();
    let name = svc.metadata.name.as_str();
    let my_slices = inventory.slices.get(&(cluster, ns, name)).map_or(&[][..], Vec::as_slice);
    let mut out = Vec::new();
    if !my_slices.is_empty() {
        for slice in my_slices.iter().copied() {
            // Service port -> slice port, matched by port name.
            let ports: BTreeMap<u16, u16> = model
                .ports
                .iter()
                .filter_map(|sp| {
                    slice
                        .ports
                        .iter()
                        .find(|ep| ep.name.as_deref().unwrap_or("") == sp.name)
                        .and_then(|ep| ep.port)
                        .map(|p| (sp.port, p))
                })
                .collect();
            for ep in &slice.endpoints {
                if ep.conditions.ready == Some(false) {
                    continue;
                }
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
                    .and_then(|r| r.name.as_deref())
                    .and_then(|n| inventory.pod_by_name.get(&(cluster, ns, n)));
                for address in &ep.addresses {
                    out.push(EndpointModel {
                        address: address.clone(),
                        ports: ports.clone(),
                        labels: pod.map(|p| p.metadata.labels.clone()).unwrap_or_default(),
                        locality: locality_of_node(cluster, ep.node_name.as_deref(), ep.zone.as_deref()),
                        cluster: cluster.to_string(),
                        weight: 1,
                    });
                }
            }
        }
        return out;
    }
    // No EndpointSlices for this service in this cluster: act as Kubernetes'
    // endpoint controller would, from the selector (local YAML has no controller).
    let ServiceKind::Kubernetes { selector: Some(selector) } = &model.kind else {
        return out;
    };
    if selector.is_empty() {
        return out;
    }
    for (c, pod) in inventory.pods_selected(ns, selector) {
        if c != cluster || !pod.is_ready() {
            continue;
        }
        let ports = model
            .ports
            .iter()
            .filter_map(|sp| {
                let target = match &sp.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Named(name) => pod.named_port(name),
                }?;
                Some((sp.port, target))
            })
            .collect();
        for ip in pod.ips() {
            out.push(EndpointModel {
                address: ip.to_string(),
                ports: BTreeMap::clone(&ports),
                labels: pod.metadata.labels.clone(),
                locality: locality_of_node(cluster, pod.spec.node_name.as_deref(), None),
                cluster: cluster.to_string(),
                weight: 1,
            });
        }
    }
    // Kubernetes Services also select WorkloadEntries (Istio's extension).
    for (c, we) in inventory.workload_entries_in(ns) {
        let mut labels = we.metadata.labels.clone();
        labels.extend(we.spec.labels.clone());
        if c != cluster || !labels_match(selector, &labels) {
            continue;
        }
        out.push(workload_entry_endpoint(cluster, &we.spec, labels, model, locality_of_node));
    }
    out
}

fn workload_entry_endpoint(
    cluster: &str,
    spec: &meshplane_model::networking::WorkloadEntrySpec,
    labels: BTreeMap<String, String>,
    model: &ServiceModel,
    locality_of_node: &NodeLocality<'_>,
) -> EndpointModel {
    let ports = model
        .ports
        .iter()
        .map(|sp| {
            let target = spec.ports.get(&sp.name).and_then(|p| u16::try_from(*p).ok()).unwrap_or(match &sp.target {
                TargetPort::Number(n) => *n,
                TargetPort::Named(_) => sp.port,
            });
            (sp.port, target)
        })
        .collect();
    let locality = match &spec.locality {
        Some(l) => {
            let mut parts = l.split('/').map(str::to_string);
            Locality {
                region: parts.next().unwrap_or_default(),
                zone: parts.next().unwrap_or_default(),
                subzone: parts.next().unwrap_or_default(),
            }
        }
        None => locality_of_node(cluster, None, None),
    };
    EndpointModel {
        address: spec.address.clone(),
        ports,
        labels,
        locality,
        cluster: cluster.to_string(),
        weight: spec.weight.unwrap_or(1).max(1),
    }
}

fn service_entry_model(se: &ServiceEntry, host: &str) -> ServiceModel {
    let spec = &se.spec;
    ServiceModel {
        hostname: host.to_string(),
        namespace: se.metadata.namespace().to_string(),
        name: se.metadata.name.clone(),
        addresses: spec.addresses.iter().filter(|a| !a.contains('/')).cloned().collect(),
        ports: spec
            .ports
            .iter()
            .filter_map(|p| {
                let port = u16::try_from(p.number).ok()?;
                Some(ServicePortModel {
                    name: p.name.clone().unwrap_or_default(),
                    port,
                    protocol: Protocol::detect(p.protocol.as_deref().or(p.name.as_deref()), None),
                    target: TargetPort::Number(p.target_port.and_then(|t| u16::try_from(t).ok()).unwrap_or(port)),
                })
            })
            .collect(),
        export_to: spec.export_to.clone(),
        kind: ServiceKind::ServiceEntry {
            resolution: spec.resolution.clone().unwrap_or_else(|| "NONE".into()),
            external: spec.location.as_deref() != Some("MESH_INTERNAL"),
        },
    }
}

fn service_entry_endpoints(
    se: &ServiceEntry,
    model: &ServiceModel,
    inventory: &Inventory<'_>,
    locality_of_node: &NodeLocality<'_>,
) -> Vec<EndpointModel> {
    let ns = se.metadata.namespace();
    let mut out: Vec<EndpointModel> = se
        .spec
        .endpoints
        .iter()
        .map(|ep| workload_entry_endpoint("", ep, ep.labels.clone(), model, locality_of_node))
        .collect();
    if let Some(selector) = &se.spec.workload_selector {
        for (cluster, we) in inventory.workload_entries_in(ns) {
            let mut labels = we.metadata.labels.clone();
            labels.extend(we.spec.labels.clone());
            if labels_match(&selector.labels, &labels) {
                out.push(workload_entry_endpoint(cluster, &we.spec, labels, model, locality_of_node));
            }
        }
        for (cluster, pod) in inventory.pods_selected(ns, &selector.labels) {
            if !pod.is_ready() {
                continue;
            }
            for ip in pod.ips() {
                out.push(EndpointModel {
                    address: ip.to_string(),
                    ports: model
                        .ports
                        .iter()
                        .map(|p| {
                            (
                                p.port,
                                match &p.target {
                                    TargetPort::Number(n) => *n,
                                    TargetPort::Named(_) => p.port,
                                },
                            )
                        })
                        .collect(),
                    labels: pod.metadata.labels.clone(),
                    locality: locality_of_node(cluster, pod.spec.node_name.as_deref(), None),
                    cluster: cluster.to_string(),
                    weight: 1,
                });
            }
        }
    }
    out
}

/// A pod and the cluster it runs in.
type ClusterPod<'a> = (&'a str, &'a Pod);

/// Pods, EndpointSlices and WorkloadEntries indexed once per snapshot, so
/// that finding one service's endpoints looks at its own slices and at the
/// pods carrying one of its selector's labels, not at the whole mesh.
struct Inventory<'a> {
    /// `(namespace, label key, label value)` -> pods with their cluster.
    pods_by_label: HashMap<(&'a str, &'a str, &'a str), Vec<ClusterPod<'a>>>,
    pods_by_namespace: HashMap<&'a str, Vec<ClusterPod<'a>>>,
    /// `(cluster, namespace, name)`.
    pod_by_name: HashMap<(&'a str, &'a str, &'a str), &'a Pod>,
    /// `(cluster, namespace, service name)`.
    slices: HashMap<(&'a str, &'a str, &'a str), Vec<&'a meshplane_model::k8s::EndpointSlice>>,
    workload_entries: HashMap<&'a str, Vec<(&'a str, &'a WorkloadEntry)>>,
}

impl<'a> Inventory<'a> {
    fn new(
        pods: &[(&'a str, &'a Pod)],
        slices: &[(&'a str, &'a meshplane_model::k8s::EndpointSlice)],
        workload_entries: &[(&'a str, &'a WorkloadEntry)],
    ) -> Inventory<'a> {
        let mut inventory = Inventory {
            pods_by_label: HashMap::new(),
            pods_by_namespace: HashMap::new(),
            pod_by_name: HashMap::new(),
            slices: HashMap::new(),
            workload_entries: HashMap::new(),
        };
        for &(cluster, pod) in pods {
            let ns = pod.metadata.namespace();
            inventory.pods_by_namespace.entry(ns).or_default().push((cluster, pod));
            inventory.pod_by_name.insert((cluster, ns, pod.metadata.name.as_str()), pod);
            for (k, v) in &pod.metadata.labels {
                inventory.pods_by_label.entry((ns, k.as_str(), v.as_str())).or_default().push((cluster, pod));
            }
        }
        for &(cluster, slice) in slices {
            if let Some(service) = slice.service_name() {
                inventory.slices.entry((cluster, slice.metadata.namespace(), service)).or_default().push(slice);
            }
        }
        for &(cluster, we) in workload_entries {
            inventory.workload_entries.entry(we.metadata.namespace()).or_default().push((cluster, we));
        }
        inventory
    }

    /// Pods of `namespace` matching `selector` (all of them for an empty
    /// selector), with their cluster.
    fn pods_selected<'s>(
        &'s self,
        namespace: &'s str,
        selector: &'s BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a str, &'a Pod)> + 's {
        let candidates = match selector.iter().next() {
            Some((k, v)) => self.pods_by_label.get(&(namespace, k.as_str(), v.as_str())),
            None => self.pods_by_namespace.get(namespace),
        };
        candidates
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .copied()
            .filter(move |(_, pod)| labels_match(selector, &pod.metadata.labels))
    }

    fn workload_entries_in<'s>(&'s self, namespace: &str) -> impl Iterator<Item = (&'a str, &'a WorkloadEntry)> + 's {
        self.workload_entries.get(namespace).map_or(&[][..], Vec::as_slice).iter().copied()
    }
}
