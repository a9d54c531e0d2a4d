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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use super::{Nonces, ProtocolError, SotwResponse, StreamEvent};
use crate::resources::{ProxyView, ResourceMap, ResourceType};

/// The sans-IO state of one State-of-the-World ADS stream.
///
/// Used like [`DeltaStream`](super::DeltaStream): feed requests and views,
/// send [`take_responses`](Self::take_responses) in order, log
/// [`take_events`](Self::take_events).
#[derive(Debug, Default)]
pub struct SotwStream {
    view: Option<Arc<ProxyView>>,
    types: BTreeMap<ResourceType, TypeState>,
    /// A cluster the EDS subscription names changed since endpoints were sent.
    endpoints_owed: bool,
    nonces: Nonces,
    responses: Vec<SotwResponse>,
    events: Vec<StreamEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subscription {
    All,
    Names(BTreeSet<Arc<str>>),
}

impl Subscription {
    fn parse(ty: ResourceType, names: Vec<String>) -> Self {
        if names.iter().any(|n| n == "*") || (names.is_empty() && ty.sotw_wildcard_by_default()) {
            Subscription::All
        } else {
            Subscription::Names(names.into_iter().map(Arc::from).collect())
        }
    }

    fn covers(&self, name: &str) -> bool {
        match self {
            Subscription::All => true,
            Subscription::Names(names) => names.contains(name),
        }
    }

    fn select(&self, map: &ResourceMap) -> ResourceMap {
        match self {
            Subscription::All => map.clone(),
            Subscription::Names(names) => {
                names.iter().filter_map(|n| map.get_key_value(n)).map(|(n, r)| (n.clone(), r.clone())).collect()
            }
        }
    }
}

#[derive(Debug, Clone)]
struct SentSet {
    version: String,
    resources: ResourceMap,
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

/// `version_info` of a set: xxh3-128 over its (name, version) pairs.
fn set_version(set: &ResourceMap) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for (name, r) in set {
        hasher.update(name.as_bytes());
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
        let subscription = Subscription::parse(ty, req.resource_names);
        let Some(st) = self.types.get_mut(&ty) else {
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
                        names: set.resources.into_keys().collect(),
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
        let last = |ty| self.types.get(&ty).and_then(|st| st.in_flight.as_ref().map(|(_, s)| s).or(st.acked.as_ref()));
        let Some(clusters) = last(ResourceType::Cluster) else {
            return false;
        };
        let endpoints = last(ResourceType::Endpoint);
        clusters
            .resources
            .keys()
            .any(|n| view.endpoints.contains_key(n) && !endpoints.is_some_and(|e| e.resources.contains_key(n)))
    }

    fn pump(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let routing_settled = [ResourceType::Listener, ResourceType::Route]
            .into_iter()
            .all(|ty| self.types.get(&ty).is_none_or(|st| st.settled(view.resources(ty))));
        let mut clusters_queued = false;

        for ty in ResourceType::ALL {
            // Routes may point at a new cluster only once its endpoints are on
            // the wire (the proxy asks for them only after applying the cluster).
            let warming = matches!(ty, ResourceType::Listener | ResourceType::Route) && self.endpoints_pending(&view);
            let Some(st) = self.types.get_mut(&ty) else {
                continue;
            };
            let mut set = st.subscription.select(view.resources(ty));
            if ty == ResourceType::Cluster
                && !routing_settled
                && let Some(acked) = &st.acked
            {
                for (name, r) in &acked.resources {
                    if st.subscription.covers(name) && !set.contains_key(name) {
                        set.insert(name.clone(), r.clone());
                    }
                }
            }
            let version = set_version(&set);
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
                    .filter(|(n, r)| acked.resources.get(*n).is_some_and(|a| a.version != r.version))
                    .map(|(n, _)| n.clone())
                    .collect(),
                _ => Vec::new(),
            };
            let nonce = self.nonces.next();
            self.events.push(StreamEvent::Pushed { ty, nonce: nonce.clone(), resources: set.len(), removed: 0 });
            self.responses.push(SotwResponse {
                ty,
                version_info: version.clone(),
                nonce: nonce.clone(),
                resources: set.values().cloned().collect(),
            });
            st.in_flight = Some((nonce, SentSet { version, resources: set }));
            if let Some(endpoints) = self.types.get(&ResourceType::Endpoint) {
                self.endpoints_owed |= updated_clusters.iter().any(|n| endpoints.subscription.covers(n));
            }
        }
    }
}
