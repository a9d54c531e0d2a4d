//! Convergence probes: a change the load test made, and how to recognise it
//! in a resource a proxy receives (by content, so it works against any ADS
//! server, whatever its versions mean).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::facts::XdsType;
use crate::intern::{Interner, Sym};

/// A change, as the coordinator describes it to workers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub id: u32,
    /// Proxies subscribed to this EDS resource (i.e. that import the changed
    /// service) are the ones affected.
    pub affects: String,
    pub check: ProbeCheck,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProbeCheck {
    /// The ClusterLoadAssignment named `cluster` lists `address:port`.
    Endpoint { cluster: String, address: String, port: u32 },
    /// Some resource of type `ty` contains these bytes (a unique token the
    /// change wrote, e.g. a VirtualService header value).
    Contains { ty: XdsType, token: String },
}

/// A probe armed in a worker.
#[derive(Debug)]
pub struct Probe {
    pub spec: ProbeSpec,
    pub ty: XdsType,
    pub affects: Sym,
    /// Only resources of this name can show the change (`None`: any of `ty`).
    pub name: Option<Sym>,
    /// Proxies found affected when armed.
    pub affected: AtomicU32,
    /// Connection tasks that have armed it.
    pub armed_tasks: AtomicU32,
    /// When each affected proxy ACKed the change (Unix ns).
    pub converged: Mutex<Vec<u64>>,
    matches: Mutex<HashMap<u64, bool>>,
}

impl Probe {
    pub fn new(spec: ProbeSpec, names: &Interner) -> Probe {
        let (ty, name) = match &spec.check {
            ProbeCheck::Endpoint { cluster, .. } => (XdsType::Eds, Some(names.intern(cluster))),
            ProbeCheck::Contains { ty, .. } => (*ty, None),
        };
        Probe {
            affects: names.intern(&spec.affects),
            spec,
            ty,
            name,
            affected: AtomicU32::new(0),
            armed_tasks: AtomicU32::new(0),
            converged: Mutex::new(Vec::new()),
            matches: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this resource shows the change (cached by content hash).
    pub fn matches(&self, name: Sym, bytes: &[u8], hash: u64) -> bool {
        if self.name.is_some_and(|n| n != name) {
            return false;
        }
        if let Some(&m) = self.matches.lock().expect("probe poisoned").get(&hash) {
            return m;
        }
        let m = match &self.spec.check {
            ProbeCheck::Endpoint { address, port, .. } => cla_has(bytes, address, *port),
            ProbeCheck::Contains { token, .. } => memmem(bytes, token.as_bytes()),
        };
        self.matches.lock().expect("probe poisoned").insert(hash, m);
        m
    }

    pub fn record(&self, unix_ns: u64) {
        self.converged.lock().expect("probe poisoned").push(unix_ns);
    }

    pub fn affected(&self) -> u32 {
        self.affected.load(Ordering::Relaxed)
    }
}

fn cla_has(bytes: &[u8], ip: &str, port: u32) -> bool {
    let Ok(cla) = ClusterLoadAssignment::decode(bytes) else { return false };
    cla.endpoints.iter().flat_map(|l| &l.lb_endpoints).any(|e| {
        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier else { return false };
        let Some(address::Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else {
            return false;
        };
        sa.address == ip && matches!(sa.port_specifier, Some(socket_address::PortSpecifier::PortValue(p)) if p == port)
    })
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
