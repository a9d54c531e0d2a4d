//! Content-addressed Envoy resources and the per-proxy view of them.
//!
//! A generated Envoy resource is marshalled once into a [`Resource`]: its
//! name, the encoded protobuf bytes, and a version that is a hash of those
//! bytes. Every proxy that needs the same resource shares the same
//! `Arc<Resource>`, and every shard (and every restart) agrees on its version,
//! so a proxy reconnecting with `initial_resource_versions` is sent only what
//! truly differs.
//!
//! A [`ProxyView`] is everything one proxy (or one class of identical proxies)
//! should have: for each resource type, a map from name to resource. The ADS
//! state machines diff two views, or a view against what the proxy reported,
//! and never look inside the bytes.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use bytes::Bytes;
use prost::Message;

/// The xDS resource types meshplane serves, in make-before-break push order:
/// clusters before the endpoints they need, listeners before the routes they
/// reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    Cluster,
    Endpoint,
    Listener,
    Route,
    Secret,
}

impl ResourceType {
    /// Push order: CDS, EDS, LDS, RDS, SDS.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
        ResourceType::Secret,
    ];

    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            ResourceType::Secret => "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
        }
    }

    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Short name used in logs and metrics (`cds`, `eds`, ...).
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoint => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
            ResourceType::Secret => "sds",
        }
    }

    /// In State-of-the-World, whether an empty `resource_names` means "all"
    /// (LDS, CDS) rather than "none" (RDS, EDS, SDS).
    pub const fn sotw_wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short())
    }
}

/// One marshalled Envoy resource, shared by every proxy that has it.
#[derive(Clone, PartialEq, Eq)]
pub struct Resource {
    pub name: Arc<str>,
    /// Content hash of `body` (xxh3-128, hex): equal bytes, equal version, on
    /// every shard and across restarts.
    pub version: Arc<str>,
    /// The encoded protobuf message (not wrapped in `Any`).
    pub body: Bytes,
}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resource")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("bytes", &self.body.len())
            .finish()
    }
}

impl Resource {
    /// Marshal a message once and version it by its bytes.
    pub fn encode(name: impl Into<Arc<str>>, message: &impl Message) -> Arc<Resource> {
        Self::from_bytes(name, Bytes::from(message.encode_to_vec()))
    }

    /// The resource with these bytes: the one already alive if there is
    /// one (see [`LIVE`]), else a new one.
    pub fn from_bytes(name: impl Into<Arc<str>>, body: Bytes) -> Arc<Resource> {
        let hash = xxhash_rust::xxh3::xxh3_128(&body);
        let name = name.into();
        let mut live = LIVE.lock().expect("resource table lock poisoned");
        if let Some(existing) = live.by_hash.get(&hash).and_then(Weak::upgrade)
            && existing.name == name
            && existing.body == body
        {
            return existing;
        }
        let resource = Arc::new(Resource { name, version: format!("{hash:032x}").into(), body });
        live.insert(hash, &resource);
        resource
    }
}

/// Every resource alive, by the hash of its bytes, so that generating the
/// same bytes again shares the resource instead of keeping a copy. Proxy
/// classes of one namespace share their Sidecar, so most of their clusters,
/// listeners and routes are byte-identical, and a rebuild regenerates
/// unchanged resources: without this every class kept its own copy of each,
/// and a rebuild held a second copy of everything next to the first.
static LIVE: LazyLock<Mutex<LiveResources>> =
    LazyLock::new(|| Mutex::new(LiveResources { by_hash: HashMap::new(), swept_at: 0 }));

/// Entries below this count are never swept.
const SWEEP_FLOOR: usize = 4096;

struct LiveResources {
    by_hash: HashMap<u128, Weak<Resource>>,
    /// Entries after the last sweep: the next comes when the table doubled.
    swept_at: usize,
}

impl LiveResources {
    fn insert(&mut self, hash: u128, resource: &Arc<Resource>) {
        if self.by_hash.len() >= (2 * self.swept_at).max(SWEEP_FLOOR) {
            self.by_hash.retain(|_, r| r.strong_count() > 0);
            self.swept_at = self.by_hash.len();
        }
        self.by_hash.insert(hash, Arc::downgrade(resource));
    }
}

/// The version string of some bytes: xxh3-128 in hex.
pub fn content_version(bytes: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes))
}

/// The resources of one type, by name.
pub type ResourceMap = BTreeMap<Arc<str>, Arc<Resource>>;

/// Everything one proxy should have, by type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyView {
    /// The store revision this view was generated from (reported as
    /// `system_version_info`; never used to decide what to send).
    pub revision: i64,
    pub clusters: ResourceMap,
    pub endpoints: ResourceMap,
    pub listeners: ResourceMap,
    pub routes: ResourceMap,
    pub secrets: ResourceMap,
}

impl ProxyView {
    pub fn resources(&self, ty: ResourceType) -> &ResourceMap {
        match ty {
            ResourceType::Cluster => &self.clusters,
            ResourceType::Endpoint => &self.endpoints,
            ResourceType::Listener => &self.listeners,
            ResourceType::Route => &self.routes,
            ResourceType::Secret => &self.secrets,
        }
    }

    pub fn resources_mut(&mut self, ty: ResourceType) -> &mut ResourceMap {
        match ty {
            ResourceType::Cluster => &mut self.clusters,
            ResourceType::Endpoint => &mut self.endpoints,
            ResourceType::Listener => &mut self.listeners,
            ResourceType::Route => &mut self.routes,
            ResourceType::Secret => &mut self.secrets,
        }
    }

    pub fn insert(&mut self, ty: ResourceType, resource: Arc<Resource>) {
        self.resources_mut(ty).insert(resource.name.clone(), resource);
    }

    /// Whether two views hold the same resources (ignoring the revision).
    pub fn same_content(&self, other: &ProxyView) -> bool {
        ResourceType::ALL.iter().all(|&t| {
            let (a, b) = (self.resources(t), other.resources(t));
            a.len() == b.len() && a.iter().zip(b).all(|((na, ra), (nb, rb))| na == nb && ra.version == rb.version)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_one_resource_while_it_is_alive() {
        let body = || Bytes::from_static(b"resources test: shared by content");
        let a = Resource::from_bytes("shared", body());
        let b = Resource::from_bytes("shared", body());
        assert!(Arc::ptr_eq(&a, &b), "a second generation of the same bytes shares the first");
        assert_eq!(a.version.as_ref(), content_version(&a.body));
        let other_name = Resource::from_bytes("other", body());
        assert!(!Arc::ptr_eq(&a, &other_name), "same bytes under another name is another resource");
        let gone = Arc::downgrade(&a);
        drop((a, b, other_name));
        assert!(gone.upgrade().is_none(), "the table does not keep resources alive");
        let again = Resource::from_bytes("shared", body());
        assert_eq!(again.body, body());
    }
}
