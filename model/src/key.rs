//! The store key layout, the one place that knows it:
//!
//! ```text
//! /meshplane/v1/clusters/{cluster}/{resource}/{namespace}/{name}
//! /meshplane/v1/clusters/{cluster}/{resource}/_/{name}          (cluster-scoped kinds)
//! /meshplane/v1/shards/{shard-id}                                (leased; value: ShardRecord JSON)
//! ```
//! Kubernetes names and namespaces cannot contain `/`, and cluster ids and
//! shard ids are checked to not contain it either, so keys parse unambiguously.

use std::fmt;

use crate::meta::{Kind, ObjectRef};

/// Prefix of every key of this layout version.
pub const ROOT: &str = "/meshplane/v1/";
/// Prefix of all mesh objects of every cluster.
pub const CLUSTERS_PREFIX: &str = "/meshplane/v1/clusters/";
const CLUSTER_SCOPED: &str = "_";
/// Prefix of the shard membership keys: one leased key per live shard.
pub const SHARDS_PREFIX: &str = "/meshplane/v1/shards/";

/// A mesh object's address in the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub cluster: String,
    pub object: ObjectRef,
}

impl ObjectKey {
    pub fn new(cluster: impl Into<String>, object: ObjectRef) -> ObjectKey {
        ObjectKey { cluster: cluster.into(), object }
    }

    /// The store key string.
    pub fn encode(&self) -> String {
        format!(
            "{CLUSTERS_PREFIX}{}/{}/{}/{}",
            self.cluster,
            self.object.kind.resource(),
            self.object.namespace.as_deref().unwrap_or(CLUSTER_SCOPED),
            self.object.name
        )
    }

    /// Parse a store key; `None` for keys of other layouts or unknown kinds.
    pub fn decode(key: &str) -> Option<ObjectKey> {
        let rest = key.strip_prefix(CLUSTERS_PREFIX)?;
        let mut parts = rest.split('/');
        let (cluster, resource, ns, name) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() || name.is_empty() {
            return None;
        }
        let kind = Kind::from_resource(resource)?;
        let namespace = match (kind.namespaced(), ns) {
            (true, CLUSTER_SCOPED) => return None,
            (true, ns) => Some(ns.to_string()),
            (false, CLUSTER_SCOPED) => None,
            (false, _) => return None,
        };
        Some(ObjectKey { cluster: cluster.to_string(), object: ObjectRef { kind, namespace, name: name.to_string() } })
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (cluster {})", self.object, self.cluster)
    }
}

/// The prefix of every object of one cluster.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{CLUSTERS_PREFIX}{cluster}/")
}

/// Whether a cluster id can be used in keys.
pub fn valid_cluster_id(cluster: &str) -> bool {
    !cluster.is_empty() && !cluster.contains('/') && cluster != "." && cluster != ".."
}

/// The membership key of a shard: `/meshplane/v1/shards/{shard-id}`.
pub fn shard_key(shard_id: &str) -> String {
    format!("{SHARDS_PREFIX}{shard_id}")
}

/// The shard id of a membership key; `None` for other keys.
pub fn shard_id_from_key(key: &str) -> Option<&str> {
    key.strip_prefix(SHARDS_PREFIX).filter(|id| valid_shard_id(id))
}

/// Whether a shard id can be used in keys: non-empty, printable ASCII
/// without `/` or spaces, at most 253 bytes (a hostname-pid fits).
pub fn valid_shard_id(shard_id: &str) -> bool {
    !shard_id.is_empty()
        && shard_id.len() <= 253
        && shard_id.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        && shard_id != "."
        && shard_id != ".."
}

/// The value of a shard's membership key: who it is, where the frontends
/// reach its ADS server, and whether it is handing its proxies over.
///
/// ```json
/// {"id": "shard-a", "addr": "127.0.0.1:15110", "draining": false}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShardRecord {
    pub id: String,
    /// `host:port` of the shard's plaintext ADS gRPC server.
    pub addr: String,
    /// Set during a graceful shutdown: frontends move the shard's proxies
    /// away as if it had left, while it still serves them.
    #[serde(default)]
    pub draining: bool,
}

impl ShardRecord {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ShardRecord always serializes")
    }

    pub fn from_json(bytes: &[u8]) -> Result<ShardRecord, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_keys_round_trip_and_records_are_the_documented_json() {
        assert_eq!(shard_key("shard-a"), "/meshplane/v1/shards/shard-a");
        assert_eq!(shard_id_from_key(&shard_key("host-1234")), Some("host-1234"));
        for key in ["/meshplane/v1/shards/", "/meshplane/v1/shards/a/b", "/meshplane/v1/clusters/c/x/y/z"] {
            assert_eq!(shard_id_from_key(key), None, "{key}");
        }
        let record = ShardRecord { id: "shard-a".into(), addr: "127.0.0.1:15110".into(), draining: false };
        let json: serde_json::Value = serde_json::from_slice(&record.to_json()).unwrap();
        assert_eq!(json, serde_json::json!({"id": "shard-a", "addr": "127.0.0.1:15110", "draining": false}));
        let parsed = ShardRecord::from_json(br#"{"id":"s","addr":"h:1"}"#).unwrap();
        assert!(!parsed.draining);
    }

    #[test]
    fn round_trips_namespaced_and_cluster_scoped_keys() {
        for (kind, ns) in [(Kind::VirtualService, Some("shop")), (Kind::Namespace, None), (Kind::Node, None)] {
            let key =
                ObjectKey::new("Kubernetes", ObjectRef { kind, namespace: ns.map(String::from), name: "x".into() });
            let encoded = key.encode();
            assert_eq!(ObjectKey::decode(&encoded), Some(key), "{encoded}");
        }
        assert_eq!(
            ObjectKey::new(
                "c1",
                ObjectRef { kind: Kind::Service, namespace: Some("ns".into()), name: "reviews".into() }
            )
            .encode(),
            "/meshplane/v1/clusters/c1/services/ns/reviews"
        );
    }

    #[test]
    fn rejects_foreign_or_malformed_keys() {
        for key in [
            "/meshplane/v1/shards/s1",
            "/meshplane/v1/clusters/c1/services/ns",
            "/meshplane/v1/clusters/c1/services/ns/a/b",
            "/meshplane/v1/clusters/c1/widgets/ns/a",
            "/meshplane/v1/clusters/c1/services/_/a",
            "/meshplane/v1/clusters/c1/namespaces/ns/a",
        ] {
            assert_eq!(ObjectKey::decode(key), None, "{key}");
        }
    }
}
