//! Config generation: from a [`MeshSnapshot`] and a [`ProxyClass`] to the
//! [`ProxyView`] every proxy of that class should have.
//!
//! ```text
//!  MeshSnapshot ─┬─ scope (Sidecar, imported services, VS, DR) ─┬─ listeners ─ routes (VS translation)
//!  ProxyClass ───┘                                               └─ clusters ─ endpoints (EndpointCache)
//!                                                                         │
//!                                   every resource encoded once ─▶ ProxyView (name → Arc<Resource>)
//! ```
//!
//! Proxies with the same namespace, labels, node type and generator get the
//! same config, so generation runs once per class, not once per proxy; the
//! proxy's IP is not an input. ClusterLoadAssignments depend on nothing about
//! the proxy and are shared by every class through the [`EndpointCache`],
//! which reuses the encoded bytes while a cluster's endpoint inputs are unchanged.

pub mod clusters;
pub mod listeners;
pub mod routes;
pub mod scope;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, TrafficDirection, address, config_source,
    socket_address,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route, route_action,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::Any;
use meshplane_model::meta::labels_match;
use meshplane_model::networking::{IstioIngressListener, VirtualService};
use meshplane_model::proxy::NodeType;
use prost::Message;

use crate::resources::{ProxyView, Resource, ResourceType};
use crate::snapshot::{MeshSnapshot, Protocol, ServiceKind, ServiceModel, TargetPort};
use scope::{EgressScope, ProxyScope, destination_rule_for, virtual_service_for};

/// The inputs a proxy's config depends on. Proxies with equal classes get
/// identical config.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProxyClass {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub node_type: NodeType,
    /// Proxyless gRPC (`GENERATOR: grpc`).
    pub grpc: bool,
    /// `INTERCEPTION_MODE: NONE`: no iptables, so no virtual listeners.
    pub interception_none: bool,
}

pub(crate) fn any<M: prost::Name>(message: &M) -> Any {
    Any { type_url: M::type_url(), value: message.encode_to_vec() }
}

pub(crate) fn duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

pub(crate) fn socket_address(ip: &str, port: u16) -> envoy_types::pb::envoy::config::core::v3::Address {
    envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

pub(crate) fn ads_config_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// The only port on which sidecars route VirtualService hosts that are not
/// in the registry (VS-06).
const NON_REGISTRY_HOST_PORT: u16 = 80;

/// `outbound|PORT|SUBSET|FQDN`.
pub fn outbound_cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Parse `outbound|PORT|SUBSET|FQDN`.
pub fn parse_outbound_cluster_name(name: &str) -> Option<(u16, &str, &str)> {
    let mut parts = name.splitn(4, '|');
    if parts.next()? != "outbound" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    Some((port, parts.next()?, parts.next()?))
}

/// Encoded ClusterLoadAssignments shared by every class, reused while their
/// inputs (endpoints, port, subset labels) are unchanged.
#[derive(Debug, Default)]
pub struct EndpointCache {
    inner: Mutex<EndpointCacheInner>,
}

#[derive(Debug, Default)]
struct EndpointCacheInner {
    round: u64,
    entries: HashMap<String, (u128, u64, Arc<Resource>)>,
}

impl EndpointCache {
    /// Start a generation round; entries not used during it are dropped by [`EndpointCache::sweep`].
    pub fn begin_round(&self) {
        self.inner.lock().expect("endpoint cache poisoned").round += 1;
    }

    /// Drop entries not used since the last `begin_round`.
    pub fn sweep(&self) {
        let mut inner = self.inner.lock().expect("endpoint cache poisoned");
        let round = inner.round;
        inner.entries.retain(|_, (_, used, _)| *used == round);
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("endpoint cache poisoned").entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(
        &self,
        name: &str,
        port: u16,
        subset: Option<&BTreeMap<String, String>>,
        endpoints: &[crate::snapshot::EndpointModel],
    ) -> Arc<Resource> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        (port, subset, endpoints).hash(&mut hasher);
        let input = hasher.digest128();
        let mut inner = self.inner.lock().expect("endpoint cache poisoned");
        let round = inner.round;
        if let Some((hash, used, resource)) = inner.entries.get_mut(name)
            && *hash == input
        {
            *used = round;
            return resource.clone();
        }
        let resource = Resource::encode(name, &clusters::load_assignment(name, port, subset, endpoints));
        inner.entries.insert(name.to_string(), (input, round, resource.clone()));
        resource
    }
}

/// Generate the config of one class of proxy.
pub fn generate(snapshot: &MeshSnapshot, class: &ProxyClass, endpoints: &EndpointCache) -> ProxyView {
    generate_class(snapshot, class, endpoints).0
}

/// Generate the config of one class of proxy, and record which of the
/// snapshot's endpoints it was made from, so that a change of endpoints alone
/// can be applied by [`refresh_endpoints`] without generating it again.
pub fn generate_class(
    snapshot: &MeshSnapshot,
    class: &ProxyClass,
    endpoints: &EndpointCache,
) -> (ProxyView, EndpointUse) {
    let scope = ProxyScope::new(snapshot, &class.namespace, &class.labels);
    let mut g = Generator {
        snapshot,
        class,
        scope: &scope,
        view: ProxyView { revision: snapshot.revision, ..Default::default() },
        wanted_clusters: BTreeSet::new(),
        uses: EndpointUse::default(),
    };
    if class.grpc {
        g.grpc_listeners();
    } else {
        g.outbound();
        g.inbound();
    }
    g.clusters(endpoints);
    (g.view, g.uses)
}

/// Which of a snapshot's endpoints a class's config depends on.
///
/// Everything else a class's config is made from (services, VirtualServices,
/// DestinationRules, Sidecars) is compared by [`MeshSnapshot::same_config_inputs`];
/// when that holds, only these can differ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointUse {
    /// The ClusterLoadAssignments served by EDS, with their inputs.
    assignments: Vec<Assignment>,
    /// Hosts whose endpoints are written into a Cluster itself (DNS
    /// ServiceEntries, `resolution: NONE` with or without endpoints): a change
    /// to them needs the class generated again.
    in_clusters: BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Assignment {
    name: String,
    host: String,
    port: u16,
    subset: Option<BTreeMap<String, String>>,
}

/// What [`refresh_endpoints`] found.
#[derive(Debug)]
pub enum Refresh {
    /// None of the class's endpoints changed: keep its view (and do not wake its proxies).
    Unchanged,
    /// Only ClusterLoadAssignments changed: the new view.
    Endpoints(ProxyView),
    /// The change reaches a Cluster's own content: generate the class again.
    Regenerate,
}

/// Bring a class's view up to date with a snapshot whose config inputs equal
/// those it was generated from ([`MeshSnapshot::same_config_inputs`]) and
/// whose endpoints differ for `changed_hosts`. Costs a lookup per
/// ClusterLoadAssignment of the class, not a generation: an endpoint change
/// in a mesh of thousands of classes is then a map update per class.
pub fn refresh_endpoints(
    view: &ProxyView,
    uses: &EndpointUse,
    snapshot: &MeshSnapshot,
    changed_hosts: &HashSet<&str>,
    endpoints: &EndpointCache,
) -> Refresh {
    if uses.in_clusters.iter().any(|h| changed_hosts.contains(h.as_str())) {
        return Refresh::Regenerate;
    }
    let mut fresh: Option<ProxyView> = None;
    for a in uses.assignments.iter().filter(|a| changed_hosts.contains(a.host.as_str())) {
        let cla = endpoints.get(&a.name, a.port, a.subset.as_ref(), snapshot.endpoints(&a.host));
        let same = view.endpoints.get(a.name.as_str()).is_some_and(|old| old.version == cla.version);
        if !same {
            fresh.get_or_insert_with(|| view.clone()).insert(ResourceType::Endpoint, cla);
        }
    }
    match fresh {
        Some(mut view) => {
            view.revision = snapshot.revision;
            Refresh::Endpoints(view)
        }
        None => Refresh::Unchanged,
    }
}

struct Generator<'a> {
    snapshot: &'a MeshSnapshot,
    class: &'a ProxyClass,
    scope: &'a ProxyScope,
    view: ProxyView,
    /// `(host, port, subset)` of every outbound cluster to generate.
    wanted_clusters: BTreeSet<(String, u16, String)>,
    uses: EndpointUse,
}

impl Generator<'_> {
    fn add<M: Message>(&mut self, ty: ResourceType, name: &str, message: &M) {
        self.view.insert(ty, Resource::encode(name, message));
    }

    /// Every port of an imported service gets its cluster, and one per subset of its rule.
    fn want_service(&mut self, service: &ServiceModel) {
        let rule = destination_rule_for(
            self.snapshot,
            &self.class.namespace,
            &self.class.labels,
            &service.hostname,
            Some(&service.namespace),
        );
        for p in &service.ports {
            self.wanted_clusters.insert((service.hostname.clone(), p.port, String::new()));
            for subset in rule.iter().flat_map(|r| &r.subsets) {
                self.wanted_clusters.insert((service.hostname.clone(), p.port, subset.name.clone()));
            }
        }
    }

    /// Clusters named by routes are generated too, even if the Sidecar did not
    /// import their service (SC-03); unknown ones are left to 503 NC.
    fn want_routed(&mut self, routes: &[Route]) {
        for r in routes {
            let Some(route::Action::Route(action)) = &r.action else { continue };
            let names: Vec<&str> = match &action.cluster_specifier {
                Some(route_action::ClusterSpecifier::Cluster(c)) => vec![c.as_str()],
                Some(route_action::ClusterSpecifier::WeightedClusters(w)) => {
                    w.clusters.iter().map(|c| c.name.as_str()).collect()
                }
                _ => vec![],
            };
            for name in names {
                if let Some((port, subset, host)) = parse_outbound_cluster_name(name) {
                    self.wanted_clusters.insert((host.to_string(), port, subset.to_string()));
                }
            }
        }
    }

    fn route_context(&self, port: u16) -> routes::RouteContext<'_> {
        routes::RouteContext {
            snapshot: self.snapshot,
            proxy_namespace: &self.class.namespace,
            proxy_labels: &self.class.labels,
            port,
            proxyless_grpc: self.class.grpc,
        }
    }

    /// Routes for a service on a port: its VirtualService's, or the default.
    fn service_routes(&mut self, service: &ServiceModel, port: u16, vss: &[&Arc<VirtualService>]) -> Vec<Route> {
        let routes = virtual_service_for(vss, &service.hostname)
            .and_then(|vs| routes::virtual_service_routes(vs, &self.route_context(port)))
            .unwrap_or_else(|| {
                vec![routes::default_route(outbound_cluster_name(port, "", &service.hostname), self.class.grpc)]
            });
        self.want_routed(&routes);
        routes
    }

    /// Host header forms that reach a service (VS-08): the FQDN; for
    /// Kubernetes services `name.ns` and `name.ns.svc`, plus the bare name
    /// from the same namespace; and its VIPs.
    fn domains(&self, service: &ServiceModel) -> Vec<String> {
        let mut domains = vec![service.hostname.clone()];
        if matches!(service.kind, ServiceKind::Kubernetes { .. } | ServiceKind::ExternalName(_)) {
            if service.namespace == self.class.namespace {
                domains.push(service.name.clone());
            }
            domains.push(format!("{}.{}", service.name, service.namespace));
            domains.push(format!("{}.{}.svc", service.name, service.namespace));
        }
        domains.extend(service.addresses.iter().cloned());
        domains
    }

    fn outbound(&mut self) {
        let scope = self.scope;
        for egress in &scope.egress {
            let services = scope.services(self.snapshot, egress);
            let vss = scope.virtual_services(self.snapshot, egress);
            let outside = scope::hosts_outside_services(&vss, &services);
            for s in &services {
                self.want_service(s);
            }
            let ports: BTreeSet<u16> = match &egress.port {
                Some(p) => u16::try_from(p.number).into_iter().collect(),
                None => services.iter().flat_map(|s| s.ports.iter().map(|p| p.port)).collect(),
            };
            for port in ports {
                let on_port: Vec<&Arc<ServiceModel>> =
                    services.iter().copied().filter(|s| s.port(port).is_some()).collect();
                let http = match egress.port.as_ref().and_then(|p| p.protocol.as_deref()) {
                    Some(proto) => Protocol::detect(Some(proto), None).is_http(),
                    None => on_port.iter().any(|s| s.port(port).is_some_and(|p| p.protocol.is_http())),
                };
                if http {
                    self.http_listener(egress, port, &on_port, &vss, &outside);
                } else {
                    self.tcp_listeners(egress, port, &on_port, &vss);
                }
            }
        }
        if !self.class.interception_none {
            let fallback = if scope.registry_only { clusters::BLACKHOLE } else { clusters::PASSTHROUGH };
            let l = listeners::virtual_listener("virtualOutbound", 15001, TrafficDirection::Outbound, fallback, vec![]);
            self.add(ResourceType::Listener, "virtualOutbound", &l);
        }
    }

    /// Where an egress listener for `port` lives: `(name, ip, bind_to_port, route name)`.
    fn egress_address(egress: &EgressScope, port: u16) -> (String, String, bool, String) {
        if egress.capture_none {
            let ip = egress.bind.clone().unwrap_or_else(|| "127.0.0.1".into());
            let rds = if egress.bind.is_some() { format!("{ip}:{port}") } else { port.to_string() };
            (format!("{ip}_{port}"), ip, true, rds)
        } else {
            let ip = egress.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
            let rds = if egress.bind.is_some() { format!("{ip}:{port}") } else { port.to_string() };
            (format!("{ip}_{port}"), ip, false, rds)
        }
    }

    /// An outbound HTTP listener and its routes: a virtual host per service
    /// on the port, then (on port 80 only, VS-06) one per VirtualService host
    /// that names no imported service, then the catch-all.
    fn http_listener(
        &mut self,
        egress: &EgressScope,
        port: u16,
        services: &[&Arc<ServiceModel>],
        vss: &[&Arc<VirtualService>],
        outside: &[(String, &Arc<VirtualService>)],
    ) {
        let (name, ip, bind_to_port, rds) = Self::egress_address(egress, port);
        if self.view.listeners.contains_key(name.as_str()) {
            return; // an earlier egress listener owns this address
        }
        // Envoy rejects a domain in two virtual hosts; the catch-all owns `*`.
        let mut used = HashSet::from(["*".to_string()]);
        let mut virtual_hosts = Vec::new();
        for service in services {
            let domains: Vec<String> = self.domains(service).into_iter().filter(|d| used.insert(d.clone())).collect();
            if domains.is_empty() {
                continue;
            }
            let routes = self.service_routes(service, port, vss);
            virtual_hosts.push(VirtualHost {
                name: format!("{}:{port}", service.hostname),
                domains,
                routes,
                // R-01: requests carry x-envoy-attempt-count.
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
        for (host, vs) in outside.iter().filter(|_| port == NON_REGISTRY_HOST_PORT) {
            if !used.insert(host.clone()) {
                continue;
            }
            let Some(routes) = routes::virtual_service_routes(vs, &self.route_context(port)) else { continue };
            self.want_routed(&routes);
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.clone()],
                routes,
                include_request_attempt_count: true,
                ..Default::default()
            });
        }
        virtual_hosts.push(self.catch_all_virtual_host());
        // VS-08: sidecars ignore the port in Host when matching virtual hosts.
        let rc = RouteConfiguration {
            name: rds.clone(),
            virtual_hosts,
            ignore_port_in_host_matching: true,
            ..Default::default()
        };
        self.add(ResourceType::Route, &rds, &rc);
        let hcm =
            listeners::http_connection_manager(&format!("outbound_{ip}_{port}"), listeners::Routes::Rds(rds), true);
        let l = listeners::http_listener(&name, &ip, port, bind_to_port, TrafficDirection::Outbound, &hcm);
        self.add(ResourceType::Listener, &name, &l);
    }

    /// Requests for hosts no virtual host knows (SC-02): passthrough under
    /// ALLOW_ANY, 502 under REGISTRY_ONLY.
    fn catch_all_virtual_host(&self) -> VirtualHost {
        let catch_all = RouteMatch { path_specifier: Some(PathSpecifier::Prefix("/".into())), ..Default::default() };
        if self.scope.registry_only {
            VirtualHost {
                name: "block_all".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: "block_all".into(),
                    r#match: Some(catch_all),
                    action: Some(route::Action::DirectResponse(DirectResponseAction {
                        status: 502,
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }
        } else {
            VirtualHost {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![Route {
                    name: "allow_any".into(),
                    r#match: Some(catch_all),
                    action: Some(route::Action::Route(RouteAction {
                        cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(clusters::PASSTHROUGH.into())),
                        timeout: Some(duration(Duration::ZERO)),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }
        }
    }

    /// The cluster (or weighted clusters) a TCP connection to a service goes
    /// to: the service's VirtualService `tcp` routes, else the service itself.
    fn tcp_filter(
        &mut self,
        service: &ServiceModel,
        port: u16,
        vss: &[&Arc<VirtualService>],
        stat_prefix: &str,
    ) -> Filter {
        let default = outbound_cluster_name(port, "", &service.hostname);
        let ctx = self.route_context(port);
        let chosen = virtual_service_for(vss, &service.hostname).and_then(|vs| {
            let ns = vs.metadata.namespace();
            vs.spec
                .tcp
                .iter()
                .find(|r| {
                    r.matches.is_empty()
                        || r.matches.iter().any(|m| {
                            m.port.is_none_or(|p| p == u32::from(port))
                                && labels_match(&m.source_labels, &self.class.labels)
                                && m.source_namespace.as_deref().is_none_or(|n| n == self.class.namespace)
                        })
                })
                .map(|r| {
                    let ds: Vec<_> = if r.route.len() > 1 {
                        r.route.iter().filter(|d| d.weight.unwrap_or(0) > 0).collect()
                    } else {
                        r.route.iter().collect()
                    };
                    ds.iter()
                        .map(|d| {
                            (
                                routes::destination_cluster(&d.destination, ns, &ctx),
                                u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0),
                            )
                        })
                        .collect::<Vec<_>>()
                })
        });
        let targets = chosen.filter(|t| !t.is_empty()).unwrap_or_else(|| vec![(default, 100)]);
        for (name, _) in &targets {
            if let Some((p, subset, host)) = parse_outbound_cluster_name(name) {
                self.wanted_clusters.insert((host.to_string(), p, subset.to_string()));
            }
        }
        let specifier = if let [(only, _)] = targets.as_slice() {
            tcp_proxy::ClusterSpecifier::Cluster(only.clone())
        } else {
            tcp_proxy::ClusterSpecifier::WeightedClusters(tcp_proxy::WeightedCluster {
                clusters: targets
                    .into_iter()
                    .map(|(name, weight)| tcp_proxy::weighted_cluster::ClusterWeight {
                        name,
                        weight,
                        ..Default::default()
                    })
                    .collect(),
            })
        };
        let proxy =
            TcpProxy { stat_prefix: stat_prefix.to_string(), cluster_specifier: Some(specifier), ..Default::default() };
        Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))),
        }
    }

    fn tcp_listeners(
        &mut self,
        egress: &EgressScope,
        port: u16,
        services: &[&Arc<ServiceModel>],
        vss: &[&Arc<VirtualService>],
    ) {
        if egress.capture_none || egress.bind.is_some() {
            // One address: the first imported service on the port owns it.
            let (name, ip, bind_to_port, _) = Self::egress_address(egress, port);
            let Some(service) = services.first() else { return };
            if self.view.listeners.contains_key(name.as_str()) {
                return;
            }
            let filter = self.tcp_filter(service, port, vss, &format!("outbound|{port}||{}", service.hostname));
            let l = listeners::listener(&name, &ip, port, bind_to_port, TrafficDirection::Outbound, filter);
            self.add(ResourceType::Listener, &name, &l);
            return;
        }
        for service in services {
            let ip = service.addresses.first().cloned().unwrap_or_else(|| "0.0.0.0".into());
            let name = format!("{ip}_{port}");
            if self.view.listeners.contains_key(name.as_str()) {
                continue;
            }
            let filter = self.tcp_filter(service, port, vss, &format!("outbound|{port}||{}", service.hostname));
            let l = listeners::listener(&name, &ip, port, false, TrafficDirection::Outbound, filter);
            self.add(ResourceType::Listener, &name, &l);
        }
    }

    fn inbound(&mut self) {
        let ingress: Vec<IstioIngressListener> =
            self.scope.sidecar.as_ref().map(|s| s.spec.ingress.clone()).unwrap_or_default();
        let mut chains = Vec::new();
        if ingress.is_empty() {
            // iptables mode: one chain per target port of the workload's services.
            let mut seen = BTreeSet::new();
            for service in self.workload_services() {
                for p in &service.ports {
                    let TargetPort::Number(target) = p.target else { continue };
                    if seen.insert(target) {
                        let filter = self.inbound_filter(target, "127.0.0.1", target, p.protocol);
                        chains.push(listeners::inbound_chain(target, filter));
                    }
                }
            }
        }
        for l in &ingress {
            let Ok(port) = u16::try_from(l.port.number) else { continue };
            let protocol = Protocol::detect(l.port.protocol.as_deref().or(l.port.name.as_deref()), None);
            let (ep_ip, ep_port) = default_endpoint(l, port);
            let filter = self.inbound_filter(port, &ep_ip, ep_port, protocol);
            if l.capture_mode.as_deref() == Some("NONE") {
                let ip = l.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
                let name = format!("{ip}_{port}");
                let listener = listeners::listener(&name, &ip, port, true, TrafficDirection::Inbound, filter);
                self.add(ResourceType::Listener, &name, &listener);
            } else {
                chains.push(listeners::inbound_chain(port, filter));
            }
        }
        if !self.class.interception_none {
            let l = listeners::virtual_listener(
                "virtualInbound",
                15006,
                TrafficDirection::Inbound,
                clusters::INBOUND_PASSTHROUGH,
                chains,
            );
            self.add(ResourceType::Listener, "virtualInbound", &l);
            self.add(
                ResourceType::Cluster,
                clusters::INBOUND_PASSTHROUGH,
                &clusters::passthrough(clusters::INBOUND_PASSTHROUGH),
            );
        }
    }

    /// The `inbound|PORT||` cluster and the filter that serves it.
    fn inbound_filter(&mut self, port: u16, ep_ip: &str, ep_port: u16, protocol: Protocol) -> Filter {
        let cluster = format!("inbound|{port}||");
        self.add(
            ResourceType::Cluster,
            &cluster,
            &clusters::inbound_cluster(&cluster, ep_ip, ep_port, protocol.is_http2()),
        );
        if protocol.is_http() {
            let rc = RouteConfiguration {
                name: cluster.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{port}"),
                    domains: vec!["*".into()],
                    routes: vec![routes::inbound_route(cluster.clone(), protocol == Protocol::Grpc)],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let hcm = listeners::http_connection_manager(
                &format!("inbound_{port}"),
                listeners::Routes::Inline(Box::new(rc)),
                true,
            );
            Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }
        } else {
            listeners::tcp_proxy_filter(&cluster, &cluster)
        }
    }

    /// Services in the proxy's namespace whose selector matches its labels.
    fn workload_services(&self) -> Vec<Arc<ServiceModel>> {
        self.snapshot
            .services
            .iter()
            .filter(|s| s.namespace == self.class.namespace)
            .filter(|s| match &s.kind {
                ServiceKind::Kubernetes { selector: Some(sel) } => {
                    !sel.is_empty() && labels_match(sel, &self.class.labels)
                }
                _ => false,
            })
            .cloned()
            .collect()
    }

    /// Proxyless gRPC: an ApiListener and route configuration per
    /// `host:port`, for every name form a client may dial.
    fn grpc_listeners(&mut self) {
        let scope = self.scope;
        for egress in &scope.egress {
            let services = scope.services(self.snapshot, egress);
            let vss = scope.virtual_services(self.snapshot, egress);
            for service in services {
                self.want_service(service);
                let mut hosts = vec![service.hostname.clone()];
                if matches!(service.kind, ServiceKind::Kubernetes { .. }) {
                    hosts.push(format!("{}.{}", service.name, service.namespace));
                    hosts.push(format!("{}.{}.svc", service.name, service.namespace));
                    if service.namespace == self.class.namespace {
                        hosts.push(service.name.clone());
                    }
                }
                for p in &service.ports {
                    let routes = self.service_routes(service, p.port, &vss);
                    for host in &hosts {
                        let name = format!("{host}:{}", p.port);
                        if self.view.listeners.contains_key(name.as_str()) {
                            continue;
                        }
                        let rc = RouteConfiguration {
                            name: name.clone(),
                            virtual_hosts: vec![VirtualHost {
                                name: name.clone(),
                                domains: vec![name.clone(), host.clone()],
                                routes: routes.clone(),
                                ..Default::default()
                            }],
                            ..Default::default()
                        };
                        self.add(ResourceType::Route, &name, &rc);
                        self.add(ResourceType::Listener, &name, &listeners::grpc_api_listener(&name));
                    }
                }
            }
        }
    }

    fn clusters(&mut self, endpoints: &EndpointCache) {
        if !self.class.grpc {
            self.add(ResourceType::Cluster, clusters::BLACKHOLE, &clusters::blackhole());
            self.add(ResourceType::Cluster, clusters::PASSTHROUGH, &clusters::passthrough(clusters::PASSTHROUGH));
        }
        let wanted = std::mem::take(&mut self.wanted_clusters);
        let mut rules = HashMap::new();
        for (host, port, subset) in wanted {
            let Some(service) = self.snapshot.service(&host) else { continue };
            let Some(service_port) = service.port(port) else { continue };
            let rule = rules
                .entry(host.clone())
                .or_insert_with(|| {
                    destination_rule_for(
                        self.snapshot,
                        &self.class.namespace,
                        &self.class.labels,
                        &host,
                        Some(&service.namespace),
                    )
                })
                .clone();
            let subset_labels = if subset.is_empty() {
                None
            } else {
                match rule.as_ref().and_then(|r| r.subset(&subset)) {
                    Some(s) => Some(s.labels.clone()),
                    None => continue, // D-03: an undefined subset has no cluster (503 NC)
                }
            };
            let name = outbound_cluster_name(port, &subset, &host);
            let eps = self.snapshot.endpoints(&host);
            let subset_ref = (!subset.is_empty()).then_some(subset.as_str());
            let mut cluster = clusters::outbound_cluster(&name, service, service_port, subset_ref, rule.as_ref(), eps);
            if self.class.grpc && cluster.eds_cluster_config.is_some() {
                // Proxyless gRPC takes round robin (or ring hash, not implemented
                // yet) from `lb_policy` and rejects the rest, as Istio's gRPC
                // generator accounts for.
                cluster.lb_policy = envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::RoundRobin as i32;
            }
            let eds = cluster.eds_cluster_config.is_some();
            self.add(ResourceType::Cluster, &name, &cluster);
            if eds {
                let cla = endpoints.get(&name, port, subset_labels.as_ref(), eps);
                self.view.insert(ResourceType::Endpoint, cla);
                self.uses.assignments.push(Assignment { name, host, port, subset: subset_labels });
            } else {
                self.uses.in_clusters.insert(host);
            }
        }
    }
}

/// Ingress `defaultEndpoint` (`IP:PORT`; `0.0.0.0:PORT` means the local
/// workload), else the port on 127.0.0.1.
fn default_endpoint(l: &IstioIngressListener, port: u16) -> (String, u16) {
    let fallback = || ("127.0.0.1".to_string(), l.port.target_port.and_then(|t| u16::try_from(t).ok()).unwrap_or(port));
    match l.default_endpoint.as_deref().and_then(|e| e.rsplit_once(':')) {
        Some((ip, p)) => match p.parse() {
            Ok(p) => (if ip == "0.0.0.0" { "127.0.0.1".into() } else { ip.to_string() }, p),
            Err(_) => fallback(),
        },
        None => fallback(),
    }
}
