//! Outbound clusters (per service port and DestinationRule subset), their
//! ClusterLoadAssignments, and the fixed clusters every sidecar has.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, circuit_breakers::Thresholds, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
    cluster::DnsLookupFamily, cluster::EdsClusterConfig, cluster::LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{Http2ProtocolOptions, Locality as EnvoyLocality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use meshplane_model::meta::labels_match;
use meshplane_model::networking::{LoadBalancerSettings, TrafficPolicy};

use super::{ads_config_source, any, duration, socket_address};
use crate::generate::scope::EffectiveRule;
use crate::snapshot::{EndpointModel, ServiceKind, ServiceModel, ServicePortModel};

/// Istio's default connect timeout (meshConfig.connectTimeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";

/// The load balancer for one port of one subset (DR-05), merged as Istio
/// merges traffic policies: a port-level setting replaces the whole policy it
/// belongs to on that port, inheriting nothing; a subset's policy then
/// overrides the rule's (port-resolved) policy field by field, or outright
/// when the subset has a setting for the port.
pub fn policy_for(rule: Option<&EffectiveRule>, subset: Option<&str>, port: u16) -> Option<LoadBalancerSettings> {
    let rule = rule?;
    // The load balancer a policy sets on `port`, and whether a port-level setting decided it.
    let on_port = |tp: &TrafficPolicy| -> (Option<LoadBalancerSettings>, bool) {
        match tp.port_level_settings.iter().find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port))) {
            Some(p) => (p.load_balancer.clone(), true),
            None => (tp.load_balancer.clone(), false),
        }
    };
    let from_rule = || rule.traffic_policy.as_ref().and_then(|tp| on_port(tp).0);
    match subset.and_then(|s| rule.subset(s)).and_then(|s| s.traffic_policy.as_ref()).map(on_port) {
        Some((lb, true)) => lb,
        Some((Some(lb), false)) => Some(lb),
        _ => from_rule(),
    }
}

fn lb_policy(lb: Option<&LoadBalancerSettings>) -> LbPolicy {
    match lb.and_then(|l| l.simple.as_deref()) {
        Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
        Some("RANDOM") => LbPolicy::Random,
        Some("PASSTHROUGH") => LbPolicy::ClusterProvided,
        // Istio's default is LEAST_REQUEST.
        _ => LbPolicy::LeastRequest,
    }
}

fn base_cluster(name: &str, discovery: DiscoveryType) -> Cluster {
    Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        connect_timeout: Some(duration(CONNECT_TIMEOUT)),
        circuit_breakers: Some(CircuitBreakers {
            thresholds: vec![Thresholds {
                max_connections: Some(UInt32Value { value: u32::MAX }),
                max_pending_requests: Some(UInt32Value { value: u32::MAX }),
                max_requests: Some(UInt32Value { value: u32::MAX }),
                max_retries: Some(UInt32Value { value: u32::MAX }),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn http2(cluster: &mut Cluster) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(ExplicitHttpConfig {
            protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())),
        })),
        ..Default::default()
    };
    cluster
        .typed_extension_protocol_options
        .insert("envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(), any(&options));
}

/// An outbound cluster for a service port (and subset).
pub fn outbound_cluster(
    name: &str,
    service: &ServiceModel,
    port: &ServicePortModel,
    subset: Option<&str>,
    rule: Option<&EffectiveRule>,
    endpoints: &[EndpointModel],
) -> Cluster {
    let lb = policy_for(rule, subset, port.port);
    let mut cluster = match &service.kind {
        ServiceKind::ExternalName(target) => dns_cluster(name, &[(target.clone(), port.port)]),
        ServiceKind::ServiceEntry { resolution, .. } if resolution.starts_with("DNS") => {
            let targets: Vec<(String, u16)> = if endpoints.is_empty() {
                vec![(service.hostname.clone(), target_port(port))]
            } else {
                endpoints
                    .iter()
                    .map(|e| (e.address.clone(), e.ports.get(&port.port).copied().unwrap_or(target_port(port))))
                    .collect()
            };
            dns_cluster(name, &targets)
        }
        ServiceKind::ServiceEntry { resolution, .. } if resolution == "NONE" && endpoints.is_empty() => {
            let mut c = base_cluster(name, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c
        }
        _ => {
            let mut c = base_cluster(name, DiscoveryType::Eds);
            c.eds_cluster_config =
                Some(EdsClusterConfig { eds_config: Some(ads_config_source()), service_name: name.to_string() });
            c.lb_policy = lb_policy(lb.as_ref()) as i32;
            c
        }
    };
    if port.protocol.is_http2() {
        http2(&mut cluster);
    }
    cluster
}

fn target_port(port: &ServicePortModel) -> u16 {
    match port.target {
        crate::snapshot::TargetPort::Number(n) => n,
        crate::snapshot::TargetPort::Named(_) => port.port,
    }
}

fn dns_cluster(name: &str, targets: &[(String, u16)]) -> Cluster {
    let mut c = base_cluster(name, DiscoveryType::StrictDns);
    c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
    c.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: targets.iter().map(|(host, port)| lb_endpoint(host, *port, 1)).collect(),
            load_balancing_weight: Some(UInt32Value { value: targets.len().max(1) as u32 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c
}

fn lb_endpoint(address: &str, port: u16, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address, port)),
            ..Default::default()
        })),
        load_balancing_weight: Some(UInt32Value { value: weight.max(1) }),
        ..Default::default()
    }
}

/// The endpoints of a service port, filtered by subset labels and grouped by
/// locality (each locality weighted by its endpoints, which gRPC requires).
pub fn load_assignment(
    name: &str,
    port: u16,
    subset_labels: Option<&BTreeMap<String, String>>,
    endpoints: &[EndpointModel],
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&crate::snapshot::Locality, Vec<LbEndpoint>> = BTreeMap::new();
    let mut weights: BTreeMap<&crate::snapshot::Locality, u32> = BTreeMap::new();
    for ep in endpoints {
        if subset_labels.is_some_and(|labels| !labels_match(labels, &ep.labels)) {
            continue;
        }
        let Some(target) = ep.ports.get(&port) else { continue };
        by_locality.entry(&ep.locality).or_default().push(lb_endpoint(&ep.address, *target, ep.weight));
        *weights.entry(&ep.locality).or_default() += ep.weight.max(1);
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(locality, lb_endpoints)| LocalityLbEndpoints {
                locality: Some(EnvoyLocality {
                    region: locality.region.clone(),
                    zone: locality.zone.clone(),
                    sub_zone: locality.subzone.clone(),
                }),
                load_balancing_weight: Some(UInt32Value { value: weights[locality] }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// `BlackHoleCluster`: no endpoints; connections are closed.
pub fn blackhole() -> Cluster {
    base_cluster(BLACKHOLE, DiscoveryType::Static)
}

/// `PassthroughCluster` / `InboundPassthroughCluster`: to the original destination.
pub fn passthrough(name: &str) -> Cluster {
    let mut c = base_cluster(name, DiscoveryType::OriginalDst);
    c.lb_policy = LbPolicy::ClusterProvided as i32;
    c
}

/// `inbound|PORT||`: the local application, at a fixed address.
pub fn inbound_cluster(name: &str, address: &str, port: u16, http2_upstream: bool) -> Cluster {
    let mut c = base_cluster(name, DiscoveryType::Static);
    c.load_assignment = Some(ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![lb_endpoint(address, port, 1)],
            ..Default::default()
        }],
        ..Default::default()
    });
    if http2_upstream {
        http2(&mut c);
    }
    c
}
