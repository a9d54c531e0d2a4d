//! [`MeshObject`]: any object of a kind meshplane reads, and its store encoding.

use serde::Serialize;

use crate::k8s::{EndpointSlice, Namespace, Node, Pod, Service};
use crate::meta::{Kind, ObjectMeta, ObjectRef};
use crate::networking::{DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry};
use crate::security::{AuthorizationPolicy, PeerAuthentication};

/// One object of the mesh, of any kind meshplane reads.
#[derive(Clone, Debug, PartialEq)]
pub enum MeshObject {
    Namespace(Namespace),
    Node(Node),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Sidecar(Sidecar),
    Gateway(Gateway),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
}

macro_rules! each_kind {
    ($self:expr, $o:ident => $e:expr) => {
        match $self {
            MeshObject::Namespace($o) => $e,
            MeshObject::Node($o) => $e,
            MeshObject::Pod($o) => $e,
            MeshObject::Service($o) => $e,
            MeshObject::EndpointSlice($o) => $e,
            MeshObject::ServiceEntry($o) => $e,
            MeshObject::WorkloadEntry($o) => $e,
            MeshObject::VirtualService($o) => $e,
            MeshObject::DestinationRule($o) => $e,
            MeshObject::Sidecar($o) => $e,
            MeshObject::Gateway($o) => $e,
            MeshObject::PeerAuthentication($o) => $e,
            MeshObject::AuthorizationPolicy($o) => $e,
        }
    };
}

/// Errors decoding a stored object.
#[derive(Debug, thiserror::Error)]
#[error(
    "stored {kind} is not valid JSON for its kind: {source}; it was written by an incompatible meshplane version or by hand"
)]
pub struct DecodeError {
    pub kind: Kind,
    #[source]
    pub source: serde_json::Error,
}

impl MeshObject {
    pub fn kind(&self) -> Kind {
        match self {
            MeshObject::Namespace(_) => Kind::Namespace,
            MeshObject::Node(_) => Kind::Node,
            MeshObject::Pod(_) => Kind::Pod,
            MeshObject::Service(_) => Kind::Service,
            MeshObject::EndpointSlice(_) => Kind::EndpointSlice,
            MeshObject::ServiceEntry(_) => Kind::ServiceEntry,
            MeshObject::WorkloadEntry(_) => Kind::WorkloadEntry,
            MeshObject::VirtualService(_) => Kind::VirtualService,
            MeshObject::DestinationRule(_) => Kind::DestinationRule,
            MeshObject::Sidecar(_) => Kind::Sidecar,
            MeshObject::Gateway(_) => Kind::Gateway,
            MeshObject::PeerAuthentication(_) => Kind::PeerAuthentication,
            MeshObject::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        each_kind!(self, o => &o.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each_kind!(self, o => &mut o.metadata)
    }

    pub fn object_ref(&self) -> ObjectRef {
        let kind = self.kind();
        let meta = self.metadata();
        ObjectRef { kind, namespace: kind.namespaced().then(|| meta.namespace().to_string()), name: meta.name.clone() }
    }

    /// The normalised JSON stored as the value of the object's key.
    pub fn to_json(&self) -> Vec<u8> {
        fn enc<T: Serialize>(t: &T) -> Vec<u8> {
            serde_json::to_vec(t).expect("model objects always serialize")
        }
        each_kind!(self, o => enc(o))
    }

    /// Decode a stored value of the given kind.
    pub fn from_json(kind: Kind, bytes: &[u8]) -> Result<MeshObject, DecodeError> {
        let err = |source| DecodeError { kind, source };
        Ok(match kind {
            Kind::Namespace => MeshObject::Namespace(serde_json::from_slice(bytes).map_err(err)?),
            Kind::Node => MeshObject::Node(serde_json::from_slice(bytes).map_err(err)?),
            Kind::Pod => MeshObject::Pod(serde_json::from_slice(bytes).map_err(err)?),
            Kind::Service => MeshObject::Service(serde_json::from_slice(bytes).map_err(err)?),
            Kind::EndpointSlice => MeshObject::EndpointSlice(serde_json::from_slice(bytes).map_err(err)?),
            Kind::ServiceEntry => MeshObject::ServiceEntry(serde_json::from_slice(bytes).map_err(err)?),
            Kind::WorkloadEntry => MeshObject::WorkloadEntry(serde_json::from_slice(bytes).map_err(err)?),
            Kind::VirtualService => MeshObject::VirtualService(serde_json::from_slice(bytes).map_err(err)?),
            Kind::DestinationRule => MeshObject::DestinationRule(serde_json::from_slice(bytes).map_err(err)?),
            Kind::Sidecar => MeshObject::Sidecar(serde_json::from_slice(bytes).map_err(err)?),
            Kind::Gateway => MeshObject::Gateway(serde_json::from_slice(bytes).map_err(err)?),
            Kind::PeerAuthentication => MeshObject::PeerAuthentication(serde_json::from_slice(bytes).map_err(err)?),
            Kind::AuthorizationPolicy => MeshObject::AuthorizationPolicy(serde_json::from_slice(bytes).map_err(err)?),
        })
    }
}
