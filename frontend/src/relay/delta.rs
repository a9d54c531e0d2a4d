//! Delta ADS through the relay: subscriptions and ACKed versions per type.
//!
//! ```text
//!  on_proxy_request(req):  first of type ─▶ seed ACKed from initial_resource_versions
//!                    nonce ─▶ pending response? ACK: record its versions / NACK: drop them
//!                    apply (un)subscribe, forget unsubscribed names
//!                    forward: current-epoch nonce translated | stale: subscription changes only
//!  on_upstream_response(resp): remember (nonce, versions, removals) as pending; nonce := "E.n"
//!                    revision := max(revision, system_version_info) (numeric ones only)
//!  connect():        epoch += 1; one request per type: subscription + ACKed versions
//!  min_revision():   what the new upstream must have caught up with (x-meshplane-min-revision)
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::intern::{self, Version};
use super::rehome::{RehomeReason, Rehomed, Rehoming};
use super::{RelayError, RelayEvent, TypeKey, node_id, parse_nonce, parse_revision, relay_nonce};

/// Responses per type remembered while they await an ACK. One is in flight
/// per type per upstream; the rest are earlier epochs' the proxy has not
/// answered yet.
const MAX_PENDING: usize = 8;

/// The sans-IO relay state of one Delta ADS stream.
#[derive(Debug)]
pub struct DeltaRelay {
    node: Node,
    node_id: String,
    /// 0 before the first upstream; incremented by every [`connect`](Self::connect).
    epoch: u64,
    connected: bool,
    types: BTreeMap<TypeKey, TypeState>,
    events: Vec<RelayEvent>,
    rehoming: Rehoming,
    /// The highest store revision of a response relayed to the proxy (a
    /// shard's `system_version_info`); 0 before any.
    revision: i64,
    /// The proxy's stream started with `initial_resource_versions`: it holds
    /// config from another stream, of a revision this relay never saw.
    inherited: bool,
}

#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Interned (see the `intern` module), as the names in `acked`.
    names: BTreeSet<Arc<str>>,
    /// What the proxy has ACKed: name -> version.
    acked: BTreeMap<Arc<str>, Version>,
    /// Responses relayed and not yet ACKed or NACKed, oldest first.
    pending: VecDeque<Pending>,
    /// A response of this type was relayed in the current epoch.
    answered: bool,
}

#[derive(Debug)]
struct Pending {
    /// The nonce the proxy saw.
    nonce: String,
    epoch: u64,
    resources: Vec<(Arc<str>, Version)>,
    removed: Vec<Arc<str>>,
}

impl DeltaRelay {
    /// Start from the proxy's first request (which must name the node);
    /// nothing is forwarded until [`connect`](Self::connect).
    pub fn new(first: DeltaDiscoveryRequest) -> Result<DeltaRelay, RelayError> {
        let node_id = node_id(first.node.as_ref())?;
        let mut relay = DeltaRelay {
            node: first.node.clone().unwrap_or_default(),
            node_id,
            epoch: 0,
            connected: false,
            types: BTreeMap::new(),
            events: Vec::new(),
            rehoming: Rehoming::default(),
            revision: 0,
            inherited: false,
        };
        relay.on_proxy_request(first)?;
        Ok(relay)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A request from the proxy; returns what to send upstream, if anything.
    pub fn on_proxy_request(
        &mut self,
        req: DeltaDiscoveryRequest,
    ) -> Result<Option<DeltaDiscoveryRequest>, RelayError> {
        if req.type_url.is_empty() {
            return Err(RelayError::MissingTypeUrl);
        }
        let key = TypeKey::new(&req.type_url);
        let first = !self.types.contains_key(&key);
        let st = self.types.entry(key.clone()).or_default();
        let mut current_nonce = None;
        if first {
            self.inherited |= !req.initial_resource_versions.is_empty();
            st.acked = req.initial_resource_versions.iter().map(|(n, v)| (intern::name(n), Version::new(v))).collect();
            st.wildcard = req.resource_names_subscribe.is_empty() && key.wildcard_by_default();
        } else if !req.response_nonce.is_empty() {
            let nack = req.error_detail.as_ref();
            if let Some(i) = st.pending.iter().position(|p| p.nonce == req.response_nonce) {
                let pending = st.pending.remove(i).expect("position is in range");
                if nack.is_none() {
                    for (name, version) in pending.resources {
                        st.acked.insert(name, version);
                    }
                    for name in pending.removed {
                        st.acked.remove(&name);
                    }
                }
            }
            match parse_nonce(&req.response_nonce) {
                Some((epoch, upstream)) if epoch == self.epoch && self.connected && st.answered => {
                    current_nonce = Some(upstream.to_string());
                }
                _ => self.events.push(match nack {
                    None => RelayEvent::StaleAck { type_url: req.type_url.clone(), nonce: req.response_nonce.clone() },
                    Some(status) => RelayEvent::StaleNack {
                        type_url: req.type_url.clone(),
                        nonce: req.response_nonce.clone(),
                        message: status.message.clone(),
                    },
                }),
            }
        }
        for name in &req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
            } else {
                st.names.insert(intern::name(name));
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name.as_str());
            }
        }
        if !st.wildcard {
            let names = &st.names;
            st.acked.retain(|n, _| names.contains(n));
        }

        if !self.connected {
            return Ok(None);
        }
        let mut out = req;
        if first {
            // A nonce on a type's first request refers to another stream.
            out.response_nonce.clear();
            out.error_detail = None;
            return Ok(Some(out));
        }
        if let Some(upstream) = current_nonce {
            out.response_nonce = upstream;
            return Ok(Some(out));
        }
        out.response_nonce.clear();
        out.error_detail = None;
        out.initial_resource_versions.clear();
        let changes = !out.resource_names_subscribe.is_empty() || !out.resource_names_unsubscribe.is_empty();
        Ok(changes.then_some(out))
    }

    /// A response from the current upstream; returns it as the proxy must see it.
    pub fn on_upstream_response(&mut self, mut resp: DeltaDiscoveryResponse) -> DeltaDiscoveryResponse {
        if let Some(revision) = parse_revision(&resp.system_version_info) {
            self.revision = self.revision.max(revision);
        }
        let nonce = relay_nonce(self.epoch, &resp.nonce);
        let st = self.types.entry(TypeKey::new(&resp.type_url)).or_default();
        st.answered = true;
        st.pending.push_back(Pending {
            nonce: nonce.clone(),
            epoch: self.epoch,
            resources: resp.resources.iter().map(|r| (intern::name(&r.name), Version::new(&r.version))).collect(),
            removed: resp.removed_resources.iter().map(|n| intern::name(n)).collect(),
        });
        while st.pending.len() > MAX_PENDING {
            st.pending.pop_front();
        }
        resp.nonce = nonce;
        self.rehoming.count(self.epoch, resp.resources.len(), &resp);
        resp
    }

    /// Start a new upstream stream: the requests to send it first, in order.
    pub fn connect(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.epoch += 1;
        self.connected = true;
        let mut replay = Vec::with_capacity(self.types.len());
        for (key, st) in &mut self.types {
            st.answered = false;
            let mut subscribe: Vec<String> = Vec::new();
            let mut unsubscribe = Vec::new();
            match (st.wildcard, st.names.is_empty(), key.wildcard_by_default()) {
                // Legacy wildcard: an empty first subscription.
                (true, true, true) => {}
                (true, _, _) => subscribe.push("*".into()),
                // An empty first subscription would mean the wildcard here.
                (false, true, true) => unsubscribe.push("*".into()),
                (false, _, _) => {}
            }
            subscribe.extend(st.names.iter().map(|n| n.to_string()));
            replay.push(DeltaDiscoveryRequest {
                node: replay.is_empty().then(|| self.node.clone()),
                type_url: key.url().to_string(),
                resource_names_subscribe: subscribe,
                resource_names_unsubscribe: unsubscribe,
                initial_resource_versions: st.acked.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                ..Default::default()
            });
        }
        replay
    }

    /// The upstream is gone; requests only update the soft state until the
    /// next [`connect`](Self::connect).
    pub fn disconnect(&mut self) {
        self.connected = false;
    }

    /// Whether every response of the current upstream has been ACKed or
    /// NACKed: a replay now names exactly what the proxy holds.
    pub fn settled(&self) -> bool {
        self.types.values().all(|st| st.pending.iter().all(|p| p.epoch != self.epoch))
    }

    /// The edge decided to move the stream (now, before any
    /// [`connect`](Self::connect) to the new owner); a re-home already in
    /// progress keeps its start.
    pub fn begin_rehome(&mut self, reason: RehomeReason, now: Instant) {
        self.rehoming.begin(reason, now, self.epoch);
    }

    /// The move decided since the last [`connect`](Self::connect) is not
    /// made after all (the owner did not change).
    pub fn cancel_rehome(&mut self) {
        self.rehoming.cancel(self.epoch);
    }

    /// The re-home in progress, once complete: the new owner has answered
    /// every wildcard type (see the `rehome` module) and the proxy has answered each of its responses.
    pub fn rehome_completed(&mut self, now: Instant) -> Option<Rehomed> {
        if !self.rehoming.active() {
            return None;
        }
        // A Delta server answers a first wildcard request even when nothing
        // differs, and a named subscription only when something does.
        let owed = self.types.iter().all(|(key, st)| !key.known() || !st.wildcard || st.answered);
        let converged = self.connected && owed && self.settled();
        self.rehoming.complete(self.epoch, now, converged)
    }

    /// Events produced so far.
    pub fn take_events(&mut self) -> Vec<RelayEvent> {
        std::mem::take(&mut self.events)
    }

    /// The highest store revision the proxy has been sent through this
    /// relay (ACKed or not: a NACKed response still came from a snapshot
    /// that far along); 0 before any response.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision a new upstream must reflect before answering the replay
    /// (sent as `x-meshplane-min-revision`): what the proxy was sent here,
    /// or, for a proxy that came holding config from elsewhere (a reconnect),
    /// at least `frontend_seen`, the frontend's high-water mark (see
    /// [`SotwRelay::min_revision`](super::SotwRelay::min_revision)), the best
    /// bound the relay has on what it holds.
    pub fn min_revision(&self, frontend_seen: i64) -> i64 {
        if self.inherited { self.revision.max(frontend_seen) } else { self.revision }
    }

    /// The versions the proxy has ACKed for a type (debug pages, tests).
    pub fn acked(&self, type_url: &str) -> BTreeMap<String, String> {
        let Some(st) = self.types.get(&TypeKey::new(type_url)) else {
            return BTreeMap::new();
        };
        st.acked.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }
}
