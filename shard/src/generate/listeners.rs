//! Listeners: outbound HTTP (per port, RDS) and TCP (tcp_proxy), Sidecar
//! egress/ingress listeners with `bind`/`captureMode: NONE`, the virtual
//! outbound/inbound listeners, and proxyless gRPC ApiListeners.

use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

use super::{ads_config_source, any, socket_address};

const HCM: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";

fn router() -> HttpFilter {
    HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any(&Router::default()))),
        ..Default::default()
    }
}

/// Where an HCM gets its routes.
pub enum Routes {
    Rds(String),
    Inline(Box<RouteConfiguration>),
}

pub fn http_connection_manager(stat_prefix: &str, routes: Routes, sidecar: bool) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(match routes {
            Routes::Rds(name) => {
                RouteSpecifier::Rds(Rds { config_source: Some(ads_config_source()), route_config_name: name })
            }
            Routes::Inline(rc) => RouteSpecifier::RouteConfig(*rc),
        }),
        http_filters: vec![router()],
        // Paths are normalised (AZ-05). The Host keeps its port: route
        // configurations ignore it when matching (VS-08) and the upstream
        // sees the Host as the client sent it.
        normalize_path: sidecar.then_some(BoolValue { value: true }),
        use_remote_address: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter { name: HCM.into(), config_type: Some(filter::ConfigType::TypedConfig(any(hcm))) }
}

pub fn tcp_proxy_filter(stat_prefix: &str, cluster: &str) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.to_string())),
        ..Default::default()
    };
    Filter { name: TCP_PROXY.into(), config_type: Some(filter::ConfigType::TypedConfig(any(&proxy))) }
}

/// A listener with one filter chain.
pub fn listener(
    name: &str,
    ip: &str,
    port: u16,
    bind_to_port: bool,
    direction: TrafficDirection,
    filter: Filter,
) -> Listener {
    Listener {
        name: name.to_string(),
        address: Some(socket_address(ip, port)),
        filter_chains: vec![FilterChain { filters: vec![filter], ..Default::default() }],
        bind_to_port: Some(BoolValue { value: bind_to_port }),
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

pub fn http_listener(
    name: &str,
    ip: &str,
    port: u16,
    bind_to_port: bool,
    direction: TrafficDirection,
    hcm: &HttpConnectionManager,
) -> Listener {
    listener(name, ip, port, bind_to_port, direction, hcm_filter(hcm))
}

/// `virtualOutbound` (15001) or `virtualInbound` (15006): the iptables
/// target, handing each connection to the listener for its original
/// destination, or to the fallback cluster.
pub fn virtual_listener(
    name: &str,
    port: u16,
    direction: TrafficDirection,
    fallback_cluster: &str,
    chains: Vec<FilterChain>,
) -> Listener {
    let mut filter_chains = chains;
    filter_chains.push(FilterChain {
        name: format!("{name}-fallback"),
        filters: vec![tcp_proxy_filter(fallback_cluster, fallback_cluster)],
        ..Default::default()
    });
    Listener {
        name: name.to_string(),
        address: Some(socket_address("0.0.0.0", port)),
        filter_chains,
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.original_dst".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(any(&OriginalDst::default()))),
            ..Default::default()
        }],
        traffic_direction: direction as i32,
        ..Default::default()
    }
}

/// A `virtualInbound` filter chain for one destination port.
pub fn inbound_chain(port: u16, filter: Filter) -> FilterChain {
    FilterChain {
        name: format!("inbound|{port}"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: Some(UInt32Value { value: u32::from(port) }),
            ..Default::default()
        }),
        filters: vec![filter],
        ..Default::default()
    }
}

/// A proxyless gRPC client's listener `host:port`: an ApiListener whose HCM
/// fetches route configuration `host:port` by RDS.
pub fn grpc_api_listener(name: &str) -> Listener {
    let hcm = http_connection_manager(name, Routes::Rds(name.to_string()), false);
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener { api_listener: Some(any(&hcm)) }),
        ..Default::default()
    }
}
