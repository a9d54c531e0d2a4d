//! State-of-the-World ADS through the relay: the last request per type.
//!
//! ```text
//!  on_proxy_request(req):  remember it (names, version_info) as the type's last request
//!                    forward: first of type / empty nonce as is | current-epoch nonce translated
//!                             | stale nonce: dropped (the proxy repeats its subscription later)
//!  on_upstream_response(resp): nonce := "E.n"
//!  connect():        epoch += 1; the last request of each type, without nonce
//!  min_revision():   the frontend's high-water mark (a SotW response carries no revision)
//! ```

use std::collections::BTreeMap;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::rehome::{RehomeReason, Rehomed, Rehoming};
use super::{RelayError, RelayEvent, TypeKey, node_id, parse_nonce, relay_nonce};

/// The sans-IO relay state of one State-of-the-World ADS stream.
#[derive(Debug)]
pub struct SotwRelay {
    node: Node,
    node_id: String,
    epoch: u64,
    connected: bool,
    types: BTreeMap<TypeKey, TypeState>,
    events: Vec<RelayEvent>,
    rehoming: Rehoming,
}

#[derive(Debug)]
struct TypeState {
    /// The proxy's last request of this type, without node, nonce and error.
    last: DiscoveryRequest,
    /// The nonce of the last response relayed in the current epoch, until
    /// the proxy answers it.
    awaiting: Option<String>,
    /// A response of this type was relayed in the current epoch.
    answered: bool,
}

impl SotwRelay {
    /// Start from the proxy's first request (which must name the node).
    pub fn new(first: DiscoveryRequest) -> Result<SotwRelay, RelayError> {
        let node_id = node_id(first.node.as_ref())?;
        let mut relay = SotwRelay {
            node: first.node.clone().unwrap_or_default(),
            node_id,
            epoch: 0,
            connected: false,
            types: BTreeMap::new(),
            events: Vec::new(),
            rehoming: Rehoming::default(),
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
    pub fn on_proxy_request(&mut self, req: DiscoveryRequest) -> Result<Option<DiscoveryRequest>, RelayError> {
        if req.type_url.is_empty() {
            return Err(RelayError::MissingTypeUrl);
        }
        let key = TypeKey::new(&req.type_url);
        let remembered =
            DiscoveryRequest { node: None, response_nonce: String::new(), error_detail: None, ..req.clone() };
        let Some(st) = self.types.get_mut(&key) else {
            self.types.insert(key, TypeState { last: remembered, awaiting: None, answered: false });
            let mut out = req;
            out.response_nonce.clear();
            out.error_detail = None;
            return Ok(self.connected.then_some(out));
        };
        st.last = remembered;
        if req.response_nonce.is_empty() {
            // The client starting the type over: always answered.
            return Ok(self.connected.then_some(req));
        }
        match parse_nonce(&req.response_nonce) {
            Some((epoch, upstream)) if epoch == self.epoch && self.connected && st.answered => {
                if st.awaiting.as_deref() == Some(req.response_nonce.as_str()) {
                    st.awaiting = None;
                }
                let upstream = upstream.to_string();
                let mut out = req;
                out.response_nonce = upstream;
                Ok(Some(out))
            }
            _ => {
                self.events.push(match req.error_detail {
                    None => RelayEvent::StaleAck { type_url: req.type_url, nonce: req.response_nonce },
                    Some(status) => RelayEvent::StaleNack {
                        type_url: req.type_url,
                        nonce: req.response_nonce,
                        message: status.message,
                    },
                });
                Ok(None)
            }
        }
    }

    /// A response from the current upstream; returns it as the proxy must see it.
    pub fn on_upstream_response(&mut self, mut resp: DiscoveryResponse) -> DiscoveryResponse {
        let nonce = relay_nonce(self.epoch, &resp.nonce);
        let key = TypeKey::new(&resp.type_url);
        let st = self.types.entry(key).or_insert_with(|| TypeState {
            last: DiscoveryRequest { type_url: resp.type_url.clone(), ..Default::default() },
            awaiting: None,
            answered: false,
        });
        st.answered = true;
        st.awaiting = Some(nonce.clone());
        resp.nonce = nonce;
        self.rehoming.count(self.epoch, resp.resources.len(), &resp);
        resp
    }

    /// Start a new upstream stream: the requests to send it first, in order.
    pub fn connect(&mut self) -> Vec<DiscoveryRequest> {
        self.epoch += 1;
        self.connected = true;
        let mut replay = Vec::with_capacity(self.types.len());
        for st in self.types.values_mut() {
            st.answered = false;
            st.awaiting = None;
            let mut req = st.last.clone();
            req.node = replay.is_empty().then(|| self.node.clone());
            replay.push(req);
        }
        replay
    }

    /// The upstream is gone; requests only update the soft state until the
    /// next [`connect`](Self::connect).
    pub fn disconnect(&mut self) {
        self.connected = false;
    }

    /// Whether the proxy has answered every response of the current upstream.
    pub fn settled(&self) -> bool {
        self.types.values().all(|st| st.awaiting.is_none())
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
    /// every type and the proxy has answered each of its responses.
    pub fn rehome_completed(&mut self, now: Instant) -> Option<Rehomed> {
        if !self.rehoming.active() {
            return None;
        }
        // A SotW server answers the first request of every type.
        let owed = self.types.iter().all(|(key, st)| !key.known() || st.answered);
        let converged = self.connected && owed && self.settled();
        self.rehoming.complete(self.epoch, now, converged)
    }

    /// Events produced so far.
    pub fn take_events(&mut self) -> Vec<RelayEvent> {
        std::mem::take(&mut self.events)
    }

    /// The revision a new upstream must reflect before answering the replay
    /// (sent as `x-meshplane-min-revision`). A SotW response carries no store
    /// revision (`version_info` is a hash of the set's content, and must
    /// stay one for every shard to agree on it), so the relay cannot know
    /// what this proxy was sent; it asks for `frontend_seen`, the frontend's
    /// high-water mark: the highest revision of any Delta response it has
    /// relayed, or of the shard membership it follows, whichever is higher.
    pub fn min_revision(&self, frontend_seen: i64) -> i64 {
        frontend_seen
    }

    /// The proxy's last request of a type (debug pages, tests).
    pub fn last_request(&self, type_url: &str) -> Option<&DiscoveryRequest> {
        self.types.get(&TypeKey::new(type_url)).map(|st| &st.last)
    }
}
