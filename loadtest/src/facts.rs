//! What a simulated proxy needs to know about a resource, decoded once per
//! distinct content.
//!
//! Every proxy decodes every resource it receives (validity = the bytes
//! decode as the response's type), but identical bytes always decode to the
//! same facts, so they are cached by an xxh3 hash of the bytes: ten thousand
//! proxies receiving the same Cluster decode it once. `--no-decode-cache`
//! turns the cache off to measure the full client cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Filter, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::intern::{Interner, Sym};

/// The xDS types a simulated Envoy subscribes to, in Envoy's order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdsType {
    Cds,
    Eds,
    Lds,
    Rds,
}

impl XdsType {
    pub const ALL: [XdsType; 4] = [XdsType::Cds, XdsType::Eds, XdsType::Lds, XdsType::Rds];

    pub const fn type_url(self) -> &'static str {
        match self {
            XdsType::Cds => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            XdsType::Eds => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            XdsType::Lds => "type.googleapis.com/envoy.config.listener.v3.Listener",
            XdsType::Rds => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    pub fn from_type_url(url: &str) -> Option<XdsType> {
        XdsType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    pub const fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Wildcard by default (CDS, LDS) rather than subscribed by name.
    pub const fn wildcard(self) -> bool {
        matches!(self, XdsType::Cds | XdsType::Lds)
    }

    pub fn parse(s: &str) -> Option<XdsType> {
        match s {
            "cds" => Some(XdsType::Cds),
            "eds" => Some(XdsType::Eds),
            "lds" => Some(XdsType::Lds),
            "rds" => Some(XdsType::Rds),
            _ => None,
        }
    }
}

/// What decoding one resource told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// The bytes do not decode as the type; the reason goes in the NACK.
    Invalid(String),
    Valid {
        /// The name inside the resource (SotW has no other).
        name: Sym,
        /// Clusters: the EDS resource name when the cluster uses EDS.
        /// Listeners: the RDS route configurations it references.
        refs: Arc<[Sym]>,
    },
}

/// Shared, content-addressed decode results.
#[derive(Debug)]
pub struct DecodeCache {
    enabled: bool,
    map: Mutex<HashMap<(XdsType, u64), Arc<Facts>>>,
}

/// Entries kept before the cache is cleared (bounds memory under churn).
const MAX_ENTRIES: usize = 1 << 20;

impl DecodeCache {
    pub fn new(enabled: bool) -> Self {
        DecodeCache { enabled, map: Mutex::new(HashMap::new()) }
    }

    /// Facts of `bytes` decoded as `ty`. `hash` is [`content_hash`] of them.
    pub fn facts(&self, ty: XdsType, bytes: &[u8], hash: u64, names: &Interner) -> Arc<Facts> {
        if self.enabled
            && let Some(f) = self.map.lock().expect("decode cache poisoned").get(&(ty, hash))
        {
            return f.clone();
        }
        let facts = Arc::new(analyze(ty, bytes, names));
        if self.enabled {
            let mut map = self.map.lock().expect("decode cache poisoned");
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert((ty, hash), facts.clone());
        }
        facts
    }
}

pub fn content_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

fn analyze(ty: XdsType, bytes: &[u8], names: &Interner) -> Facts {
    let invalid = |e: prost::DecodeError| Facts::Invalid(format!("cannot decode {}: {e}", ty.type_url()));
    match ty {
        XdsType::Cds => match Cluster::decode(bytes) {
            Ok(c) => {
                let eds = matches!(
                    c.cluster_discovery_type,
                    Some(cluster::ClusterDiscoveryType::Type(t)) if t == cluster::DiscoveryType::Eds as i32
                );
                let refs: Arc<[Sym]> = if eds {
                    let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.as_str()).unwrap_or("");
                    let eds_name = if service.is_empty() { c.name.as_str() } else { service };
                    Arc::from([names.intern(eds_name)])
                } else {
                    Arc::from([])
                };
                Facts::Valid { name: names.intern(&c.name), refs }
            }
            Err(e) => invalid(e),
        },
        XdsType::Eds => match ClusterLoadAssignment::decode(bytes) {
            Ok(c) => Facts::Valid { name: names.intern(&c.cluster_name), refs: Arc::from([]) },
            Err(e) => invalid(e),
        },
        XdsType::Lds => match Listener::decode(bytes) {
            Ok(l) => {
                let mut routes = Vec::new();
                let chains = l.filter_chains.iter().chain(l.default_filter_chain.as_ref());
                for filter in chains.flat_map(|c| c.filters.iter()) {
                    match rds_name(filter) {
                        Ok(Some(r)) => routes.push(names.intern(&r)),
                        Ok(None) => {}
                        Err(e) => return Facts::Invalid(format!("listener {}: {e}", l.name)),
                    }
                }
                routes.sort_unstable();
                routes.dedup();
                Facts::Valid { name: names.intern(&l.name), refs: Arc::from(routes) }
            }
            Err(e) => invalid(e),
        },
        XdsType::Rds => match RouteConfiguration::decode(bytes) {
            Ok(r) => Facts::Valid { name: names.intern(&r.name), refs: Arc::from([]) },
            Err(e) => invalid(e),
        },
    }
}

/// The route configuration an HTTP connection manager filter loads over RDS.
fn rds_name(filter: &Filter) -> Result<Option<String>, String> {
    let Some(filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Ok(None);
    };
    if any.type_url != HCM {
        return Ok(None);
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice())
        .map_err(|e| format!("cannot decode its HttpConnectionManager: {e}"))?;
    Ok(match hcm.route_specifier {
        Some(http_connection_manager::RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::Rds;
    use envoy_types::pb::google::protobuf::Any;

    #[test]
    fn eds_clusters_and_rds_listeners_are_found() {
        let names = Interner::default();
        let cache = DecodeCache::new(true);
        let cluster = Cluster {
            name: "outbound|80||a.ns.svc.cluster.local".into(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Eds as i32)),
            eds_cluster_config: Some(EdsClusterConfig { service_name: String::new(), ..Default::default() }),
            ..Default::default()
        }
        .encode_to_vec();
        let f = cache.facts(XdsType::Cds, &cluster, content_hash(&cluster), &names);
        let a = names.lookup("outbound|80||a.ns.svc.cluster.local").unwrap();
        assert_eq!(*f, Facts::Valid { name: a, refs: Arc::from([a]) });

        let hcm = HttpConnectionManager {
            route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
                route_config_name: "80".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let listener = Listener {
            name: "0.0.0.0_80".into(),
            filter_chains: vec![FilterChain {
                filters: vec![Filter {
                    name: "envoy.filters.network.http_connection_manager".into(),
                    config_type: Some(filter::ConfigType::TypedConfig(Any {
                        type_url: HCM.into(),
                        value: hcm.encode_to_vec(),
                    })),
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec();
        let f = cache.facts(XdsType::Lds, &listener, content_hash(&listener), &names);
        let Facts::Valid { refs, .. } = &*f else { panic!("{f:?}") };
        assert_eq!(&**refs, &[names.lookup("80").unwrap()]);
    }

    #[test]
    fn garbage_is_invalid() {
        let names = Interner::default();
        let f = DecodeCache::new(false).facts(XdsType::Rds, &[0xff, 0xff, 0xff], 1, &names);
        assert!(matches!(&*f, Facts::Invalid(m) if m.contains("RouteConfiguration")), "{f:?}");
    }
}
