//! Proxy identity on the wire: Istio node ids and node metadata.
//!
//! Node id: `TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`, TYPE being
//! `sidecar` or `router`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// What kind of proxy a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeType {
    Sidecar,
    Router,
}

/// A parsed Istio node id.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId {
    pub node_type: NodeType,
    pub ip: IpAddr,
    /// `POD.NAMESPACE` as the agent wrote it.
    pub workload: String,
    /// The DNS domain part, normally `NAMESPACE.svc.cluster.local`.
    pub domain: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    #[error(
        "node id {0:?} is not of the form TYPE~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local; set the proxy's node.id as istio-agent does"
    )]
    Shape(String),
    #[error("node id {id:?}: type {ty:?} is neither `sidecar` nor `router`")]
    Type { id: String, ty: String },
    #[error("node id {id:?}: {ip:?} is not an IP address")]
    Ip { id: String, ip: String },
}

impl NodeId {
    pub fn parse(id: &str) -> Result<NodeId, NodeIdError> {
        let parts: Vec<&str> = id.split('~').collect();
        let [ty, ip, workload, domain] = parts[..] else {
            return Err(NodeIdError::Shape(id.to_string()));
        };
        let node_type = match ty {
            "sidecar" => NodeType::Sidecar,
            "router" => NodeType::Router,
            other => {
                return Err(NodeIdError::Type { id: id.into(), ty: other.into() });
            }
        };
        let ip = ip.parse().map_err(|_| NodeIdError::Ip { id: id.into(), ip: ip.into() })?;
        Ok(NodeId { node_type, ip, workload: workload.to_string(), domain: domain.to_string() })
    }

    /// The namespace from the `POD.NAMESPACE` part, else from the domain.
    pub fn namespace(&self) -> Option<&str> {
        self.workload
            .split_once('.')
            .map(|(_, ns)| ns)
            .or_else(|| self.domain.split('.').next())
            .filter(|ns| !ns.is_empty())
    }

    pub fn pod_name(&self) -> &str {
        self.workload.split_once('.').map_or(&self.workload, |(pod, _)| pod)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ty = match self.node_type {
            NodeType::Sidecar => "sidecar",
            NodeType::Router => "router",
        };
        write!(f, "{ty}~{}~{}~{}", self.ip, self.workload, self.domain)
    }
}

/// The node metadata istio-agent sets that config generation reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyMetadata {
    pub namespace: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    pub cluster_id: Option<String>,
    /// `GENERATOR: grpc` marks a proxyless gRPC client.
    pub generator: Option<String>,
    pub interception_mode: Option<String>,
}

impl ProxyMetadata {
    pub fn is_grpc(&self) -> bool {
        self.generator.as_deref() == Some("grpc")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_istio_node_ids() {
        let id = NodeId::parse("sidecar~10.1.2.3~reviews-v1-7f9c.default~default.svc.cluster.local").unwrap();
        assert_eq!(id.node_type, NodeType::Sidecar);
        assert_eq!(id.ip.to_string(), "10.1.2.3");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.pod_name(), "reviews-v1-7f9c");
        assert_eq!(id.to_string(), "sidecar~10.1.2.3~reviews-v1-7f9c.default~default.svc.cluster.local");
        let gw = NodeId::parse("router~127.0.0.9~ingress.istio-system~istio-system.svc.cluster.local").unwrap();
        assert_eq!(gw.node_type, NodeType::Router);
    }

    #[test]
    fn rejects_malformed_node_ids_with_a_hint() {
        let err = NodeId::parse("envoy-1").unwrap_err();
        assert!(err.to_string().contains("TYPE~IP~POD.NAMESPACE"), "{err}");
        assert!(matches!(NodeId::parse("gateway~1.2.3.4~a.b~b.svc"), Err(NodeIdError::Type { .. })));
        assert!(matches!(NodeId::parse("sidecar~nope~a.b~b.svc"), Err(NodeIdError::Ip { .. })));
    }
}
