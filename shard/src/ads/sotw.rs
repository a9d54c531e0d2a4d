//! State-of-the-World ADS: the state machine of one stream.
//!
//! Serves Envoy with `api_type: GRPC` and proxyless gRPC clients, which
//! request every type by name (LDS by `host:port`, then RDS, CDS, EDS).
//! Every response for a type carries the full set of that type's subscribed
//! resources present in the view, versioned by a hash of its (name, version)
//! pairs.
//!
//! ```text
//!   request ──▶ settle nonce: ACK ─▶ acked := in-flight set
//!                             NACK ─▶ remember its version_info, acked stays
//!                             stale ─▶ ignore the whole request
//!            ──▶ names changed / first / empty nonce ─▶ answer owed
//!   set_view ─┐
//!             ▼
//!   pump: for ty in CDS, EDS, LDS, RDS, SDS (one in flight per type)
//!     set = subscribed ∩ view   (+ clusters kept for make before break)
//!     send if answer owed, or set version != last sent,
//!          unless that version was NACKed
//! ```
//!
//! ## Rules and choices
//! - **Subscriptions.** Every request carries the whole subscription. Empty
//!   `resource_names` means all resources for LDS and CDS (Envoy) and none
//!   for EDS, RDS and SDS; `*` means all for any type; otherwise exactly the
//!   names listed (gRPC asks for LDS and CDS by name too).
//! - **When to answer.** The first request of a type, a request whose names
//!   changed, or a request with an empty nonce (the client starting over) is
//!   always answered, even with an empty set: a SotW client waits for it, and
//!   for LDS/CDS an absent name is how gRPC learns it does not exist. A plain
//!   ACK or NACK is not answered. A view change is sent only for types whose
//!   set version changed.
//! - **NACK.** The rejected set's `version_info` is remembered and that set is
//!   never sent again; the proxy keeps (and we track as acknowledged) the set
//!   it had. Any other set of that type, or of other types, goes out as usual.
//! - **Stale nonces** are ignored entirely, subscription included (as Envoy
//!   and gRPC expect): a SotW client repeats its full subscription when it
//!   answers the latest response, so nothing is lost.
//! - **Make before break**: while listeners or routes are not settled, the
//!   cluster set keeps the clusters the proxy acknowledged that the view no
//!   longer has (with the content it acknowledged). Endpoints are not held
//!   back: Envoy keeps the endpoints of a name missing from an EDS response.
//! - **Endpoints after clusters.** A CDS response that changes a cluster the
//!   EDS subscription names is followed by an EDS response even if the
//!   endpoint set is unchanged, so Envoy can finish warming it.

use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::{Nonces, PerType, ProtocolError, SotwResponse, StreamEvent};
use crate::resources::{ProxyView, Resource, ResourceMap, ResourceType};

/// The sans-IO state of one State-of-the-World ADS stream.
///
/// Used like [`DeltaStream`](super::DeltaStream): feed requests and views,
/// send [`take_responses`](Self::take_responses) in order, log
/// [`take_events`](Self::take_events).
#[derive(Debug, Default)]
pub struct SotwStream {
    view: Option<Arc<ProxyView>>,
    types: PerType<TypeState>,
    /// A cluster the EDS subscription names changed since endpoints were sent.
    endpoints_owed: bool,
    nonces: Nonces,
    responses: Vec<SotwResponse>,
    events: Vec<StreamEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    All,
    /// Sorted and deduplicated (half what a `BTreeSet` costs per name).
    Names(Box<[Arc<str>]>),
}

impl Subscription {
    /// Names the view has become the view's own `Arc`s: every request
    /// repeats the whole subscription, and a stream keeps no copy of them.
    fn parse(ty: ResourceType, names: Vec<String>, map: Option<&ResourceMap>) -> Self {
        if names.iter().any(|n| n == "*") || (names.is_empty() && ty.sotw_wildcard_by_default()) {
            Subscription::All
        } else {
            let intern = |name: String| match map.and_then(|m| m.get_key_value(name.as_str())) {
                Some((shared, _)) => shared.clone(),
                None => Arc::from(name),
            };
            let mut names: Vec<_> = names.into_iter().map(intern).collect();
            names.sort_unstable();
            names.dedup();
            Subscription::Names(names.into_boxed_slice())
        }
    }

    fn covers(&self, name: &str) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Names(names) => names.binary_search_by(|n| (**n).cmp(name)).is_ok(),
        }
    }

    /// The subscribed resources of `map`, sorted by name.
    fn select(&self, map: &ResourceMap) -> Vec<Arc<Resource>> {
        match self {
            Subscription::All => map.values().cloned().collect(),
            Subscription::Names(names) => names.iter().filter_map(|n| map.get(n)).cloned().collect(),
        }
    }
}

/// A set of resources sent, sorted by name: the view's own `Arc`s, one
/// pointer each (a `BTreeMap` by name cost about 60 bytes per entry).
#[derive(Debug, Clone)]
struct SentSet {
    version: String,
    resources: Vec<Arc<Resource>>,
}

impl SentSet {
    fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.resources.binary_search_by(|r| (*r.name).cmp(name)).ok().map(|i| &self.resources[i])
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

#[derive(Debug)]
struct TypeState {
    subscription: Subscription,
    answer_owed: bool,
    in_flight: Option<(String, SentSet)>,
    /// The set the proxy last accepted.
    acked: Option<SentSet>,
    /// The version of the last set the proxy rejected.
    nacked_version: Option<String>,
}

impl TypeState {
    /// Whether the proxy has accepted exactly what the view has.
    fn settled(&self, map: &ResourceMap) -> bool {
        self.in_flight.is_none()
            && !self.answer_owed
            && self.acked.as_ref().is_some_and(|a| a.version == set_version(&self.subscription.select(map)))
    }
}

/// `version_info` of a set (sorted by name): xxh3-128 over its (name,
/// version) pairs.
fn set_version(set: &[Arc<Resource>]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for r in set {
        hasher.update(r.name.as_bytes());
        hasher.update(&[0]);
        hasher.update(r.version.as_bytes());
        hasher.update(&[0]);
    }
    format!("{:032x}", hasher.digest128())
}

impl SotwStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Process one request from the client.
    pub fn handle_request(&mut self, req: DiscoveryRequest) -> Result<(), ProtocolError> {
        if req.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            self.events.push(StreamEvent::UnknownType { type_url: req.type_url });
            return Ok(());
        };
        let subscription = Subscription::parse(ty, req.resource_names, self.view.as_ref().map(|v| v.resources(ty)));
        let Some(st) = self.types.get_mut(ty) else {
            // First request of this type; a nonce here refers to another stream.
            self.types.insert(
                ty,
                TypeState { subscription, answer_owed: true, in_flight: None, acked: None, nacked_version: None },
            );
            self.pump();
            return Ok(());
        };
        if !req.response_nonce.is_empty() {
            let nonce = req.response_nonce;
            let Some((_, set)) = st.in_flight.take_if(|(n, _)| *n == nonce) else {
                self.events.push(StreamEvent::StaleNonce {
                    ty,
                    nonce,
                    nack_message: req.error_detail.map(|e| e.message),
                });
                return Ok(());
            };
            let event = match req.error_detail {
                None => {
                    st.acked = Some(set);
                    StreamEvent::Ack { ty, nonce }
                }
                Some(error) => {
                    st.nacked_version = Some(set.version);
                    StreamEvent::Nack {
                        ty,
                        nonce,
                        names: set.resources.iter().map(|r| r.name.clone()).collect(),
                        code: error.code,
                        message: error.message,
                    }
                }
            };
            self.events.push(event);
            if subscription != st.subscription {
                st.subscription = subscription;
                st.answer_owed = true;
            }
        } else {
            st.subscription = subscription;
            st.answer_owed = true;
        }
        self.pump();
        Ok(())
    }

    /// Replace the client's view; types whose set changed are sent.
    pub fn set_view(&mut self, view: Arc<ProxyView>) {
        self.view = Some(view);
        self.pump();
    }

    /// Responses produced so far, in the order they must be sent.
    pub fn take_responses(&mut self) -> Vec<SotwResponse> {
        std::mem::take(&mut self.responses)
    }

    /// Events produced so far.
    pub fn take_events(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether a cluster sent to the proxy still waits for its endpoints.
    fn endpoints_pending(&self, view: &ProxyView) -> bool {
        let last = |ty| self.types.get(ty).and_then(|st| st.in_flight.as_ref().map(|(_, s)| s).or(st.acked.as_ref()));
        let Some(clusters) = last(ResourceType::Cluster) else {
            return false;
        };
        let endpoints = last(ResourceType::Endpoint);
        clusters
            .resources
            .iter()
            .any(|c| view.endpoints.contains_key(&c.name) && !endpoints.is_some_and(|e| e.contains(&c.name)))
    }

    fn pump(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let routing_settled = [ResourceType::Listener, ResourceType::Route]
            .into_iter()
            .all(|ty| self.types.get(ty).is_none_or(|st| st.settled(view.resources(ty))));
        let mut clusters_queued = false;

        for ty in ResourceType::ALL {
            // Routes may point at a new cluster only once its endpoints are on
            // the wire (the proxy asks for them only after applying the cluster).
            let warming = matches!(ty, ResourceType::Listener | ResourceType::Route) && self.endpoints_pending(&view);
            let Some(st) = self.types.get_mut(ty) else {
                continue;
            };
            let map = view.resources(ty);
            let mut set = st.subscription.select(map);
            if ty == ResourceType::Cluster
                && !routing_settled
                && let Some(acked) = &st.acked
            {
                let kept =
                    acked.resources.iter().filter(|r| st.subscription.covers(&r.name) && !map.contains_key(&r.name));
                let kept: Vec<_> = kept.cloned().collect();
                if !kept.is_empty() {
                    set.extend(kept);
                    set.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                }
            }
            let version = set_version(&set);
            // A set the stream keeps with this very content holds the view's
            // allocations from now on: a rebuild allocates unchanged
            // resources anew, and the previous ones (bodies included) would
            // otherwise stay alive next to the view's as long as the content
            // stays the same.
            for kept in [st.acked.as_mut(), st.in_flight.as_mut().map(|(_, s)| s)].into_iter().flatten() {
                if kept.version == version {
                    kept.resources.clone_from(&set);
                }
            }
            let last = st.in_flight.as_ref().map(|(_, s)| s).or(st.acked.as_ref());
            let changed = last.is_none_or(|s| s.version != version);
            let rejected = st.nacked_version.as_deref() == Some(version.as_str());
            let owed = st.answer_owed || (ty == ResourceType::Endpoint && self.endpoints_owed);

            // Only updates wait for warming: on a first fetch the proxy itself
            // holds listeners until its clusters are warm.
            let update = st.acked.is_some() || st.in_flight.is_some();
            if matches!(ty, ResourceType::Listener | ResourceType::Route) && (clusters_queued || (warming && update)) {
                continue;
            }
            if st.in_flight.is_some() {
                clusters_queued |= ty == ResourceType::Cluster && changed && !rejected;
                continue;
            }
            st.answer_owed = false;
            if ty == ResourceType::Endpoint {
                self.endpoints_owed = false;
            }
            if rejected || !(changed || owed) {
                continue;
            }

            // Clusters whose content changed since the proxy accepted them.
            let updated_clusters: Vec<Arc<str>> = match (&st.acked, ty) {
                (Some(acked), ResourceType::Cluster) => set
                    .iter()
                    .filter(|r| acked.get(&r.name).is_some_and(|a| a.version != r.version))
                    .map(|r| r.name.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let nonce = self.nonces.next();
            self.events.push(StreamEvent::Pushed { ty, nonce: nonce.clone(), resources: set.len(), removed: 0 });
            self.responses.push(SotwResponse {
                ty,
                version_info: version.clone(),
                nonce: nonce.clone(),
                resources: set.clone(),
            });
            st.in_flight = Some((nonce, SentSet { version, resources: set }));
            if let Some(endpoints) = self.types.get(ResourceType::Endpoint) {
                self.endpoints_owed |= updated_clusters.iter().any(|n| endpoints.subscription.covers(n));
            }
        }
    }
}
