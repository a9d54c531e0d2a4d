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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

    pub fn from_bytes(name: impl Into<Arc<str>>, body: Bytes) -> Arc<Resource> {
        let version = content_version(&body);
        Arc::new(Resource { name: name.into(), version: version.into(), body })
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
