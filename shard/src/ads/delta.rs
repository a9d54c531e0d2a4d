//! Delta (incremental) ADS: the state machine of one stream.
//!
//! Per type, the stream tracks what the proxy subscribed to and which
//! version of each resource it holds; every round it sends only what
//! differs and removes what the proxy holds but the view no longer has.
//!
//! ```text
//!   request ──▶ settle nonce (ACK / NACK / stale) ─▶ apply (un)subscribe ─┐
//!   set_view ──────────────────────────────────────────────────────────────┤
//!                                                                          ▼
//!        pump: for ty in CDS, EDS, LDS, RDS, SDS (one in flight per type)
//!          send    = covered view resources whose version != held,
//!                    + newly subscribed names, + endpoints of sent clusters
//!                    - versions the proxy rejected
//!          removed = held names the view no longer has
//!          held   := held + send - removed    (optimistic; NACK reverts)
//! ```
//!
//! ## Rules and choices
//! - **Subscriptions.** The first request of a type with an empty
//!   `resource_names_subscribe` is a legacy wildcard for LDS and CDS (Envoy
//!   sends `[]` for both); for EDS, RDS and SDS it subscribes to nothing.
//!   `*` subscribes to the wildcard explicitly, unsubscribing `*` ends it.
//!   Adding names keeps the wildcard (go-control-plane does the same; Envoy
//!   re-sends `*` whenever it adds names to a wildcard subscription anyway).
//!   Unsubscribed names are forgotten without a removal (the proxy dropped
//!   them itself) unless the wildcard still covers them.
//! - **Held versions.** Seeded from `initial_resource_versions` on the first
//!   request of a type (reconnect), so only resources that differ are sent;
//!   a held resource the view no longer has is removed. Updated optimistically
//!   when a response is produced. Names listed in `resource_names_subscribe`
//!   on a later request are sent even if the proxy should already hold them
//!   (required by the protocol: it may have dropped them before resubscribing).
//!   A first wildcard request is always answered, even with nothing in it, so
//!   the proxy's initial fetch completes.
//! - **NACK.** The versions of the rejected response are reverted to what the
//!   proxy held before it, and each is remembered as rejected: not sent again
//!   until that resource's content (hence version) changes. Other resources
//!   and other types go on as usual. A rejected removal is not repeated while
//!   the resource stays absent.
//! - **Stale nonces.** A request whose nonce is not the type's in-flight
//!   response is neither ACK nor NACK, but its subscription changes still
//!   apply: Envoy piggybacks pending (un)subscriptions on whatever request it
//!   sends next, so dropping them (as istiod does) would lose them for good;
//!   go-control-plane likewise applies subscriptions on every delta request.
//! - **Make before break** (see the module docs of `ads` for the shared part):
//!   an endpoint removal is held back while the proxy still holds the
//!   cluster of that name and that cluster's removal is itself held back
//!   (Envoy unsubscribes a removed cluster's endpoints on its own).
//!   Limitation: until a proxy has subscribed to LDS/RDS on this stream
//!   (e.g. just after a reconnect, where CDS comes first), nothing holds a
//!   cluster removal back.
//! - **Endpoints after clusters.** Every cluster sent is followed by its
//!   `ClusterLoadAssignment` once the proxy subscribes to it, even if the
//!   proxy holds that version: an updated cluster stays warming until it
//!   gets one (also across reconnects, where Envoy may subscribe EDS with
//!   matching initial versions).
//! - Resource names are plain `resource_names_*`; `resource_locators_*`
//!   (xdstp dynamic parameters) are not supported and ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status;

use super::{DeltaResponse, Nonces, PerType, ProtocolError, StreamEvent};
use crate::resources::{ProxyView, Resource, ResourceMap, ResourceType};

type Name = Arc<str>;
type Version = Arc<str>;

/// The sans-IO state of one Delta ADS stream.
///
/// Feed it [`handle_request`](Self::handle_request) and
/// [`set_view`](Self::set_view); after each call, send what
/// [`take_responses`](Self::take_responses) returns, in order, and log or
/// count [`take_events`](Self::take_events). Nothing is produced before the
/// first view is set.
#[derive(Debug, Default)]
pub struct DeltaStream {
    view: Option<Arc<ProxyView>>,
    types: PerType<TypeState>,
    /// Clusters sent whose endpoints have not been sent since.
    endpoints_owed: BTreeSet<Name>,
    nonces: Nonces,
    responses: Vec<DeltaResponse>,
    events: Vec<StreamEvent>,
    /// Tests: never take the [`TypeState::synced`] shortcut, to compare
    /// against the full comparison.
    #[cfg(test)]
    pub(crate) exhaustive: bool,
}

/// What the stream knows about one type.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    /// Explicitly subscribed names (the view's own `Arc`s where it has the
    /// name: a stream keeps no copy of names the view already holds).
    names: NameSet,
    /// What the proxy holds (or will, once the in-flight response is
    /// applied). Always within the subscription.
    held: Held,
    /// Rejected versions by name; `None`: a rejected removal.
    rejected: BTreeMap<Name, Option<Version>>,
    /// Names to send even if held at the view's version.
    forced: BTreeSet<Name>,
    in_flight: Option<InFlight>,
    /// Answer even with an empty response (first wildcard request).
    answer_empty: bool,
    /// A view whose resources of this type `held` equals, as far as the
    /// subscription covers them, with nothing rejected: the next round need
    /// only look at the resources that differ between it and the new view.
    /// Views of one class share their unchanged `Arc<Resource>`s, so that
    /// difference costs a pointer comparison per unchanged resource instead of
    /// a lookup by name per resource on every stream (see [`changes`]).
    synced: Option<Arc<ProxyView>>,
}

#[derive(Debug)]
struct InFlight {
    nonce: String,
    changes: Vec<HeldChange>,
}

/// How one response changed `held`, to undo it on NACK.
#[derive(Debug)]
struct HeldChange {
    name: Name,
    before: Option<Arc<Resource>>,
    /// The version sent; `None` for a removal.
    sent: Option<Version>,
}

/// What the proxy holds of one type: for each name, the resource at the
/// version it holds, sorted by name.
///
/// Entries are the view's own `Arc<Resource>`s (a resource sent is the
/// view's; a reconnecting proxy's `initial_resource_versions` that match the
/// view are resolved to it), so an entry costs one pointer: a
/// `BTreeMap<Name, Version>` cost about 60 bytes per entry, some 20 KB per
/// proxy on the standard mesh. An entry may keep a superseded resource alive
/// while the proxy still holds it (until the next response of its type).
/// Versions the view does not have become placeholders without a body.
#[derive(Debug, Default)]
struct Held(Vec<Arc<Resource>>);

impl Held {
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|r| (*r.name).cmp(name))
    }

    fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.position(name).ok().map(|i| &self.0[i])
    }

    /// Whether the proxy holds `current`'s version; if so, the entry becomes
    /// `current` itself. A rebuild allocates unchanged resources anew, and
    /// nothing is sent for them: without this an entry would keep the
    /// previous allocation (and its body) alive next to the view's for as
    /// long as the content stays the same.
    fn hold_current(&mut self, current: &Arc<Resource>) -> bool {
        match self.position(&current.name) {
            Ok(i) if self.0[i].version == current.version => {
                if !Arc::ptr_eq(&self.0[i], current) {
                    self.0[i] = current.clone();
                }
                true
            }
            _ => false,
        }
    }

    /// Record `resource` as held; returns what was held under its name.
    fn insert(&mut self, resource: Arc<Resource>) -> Option<Arc<Resource>> {
        match self.position(&resource.name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], resource)),
            Err(i) => {
                self.0.insert(i, resource);
                None
            }
        }
    }

    fn remove(&mut self, name: &str) -> Option<Arc<Resource>> {
        self.position(name).ok().map(|i| self.0.remove(i))
    }

    fn retain(&mut self, keep: impl FnMut(&Arc<Resource>) -> bool) {
        self.0.retain(keep);
    }

    fn names(&self) -> impl Iterator<Item = &Name> {
        self.0.iter().map(|r| &r.name)
    }

    /// Give back spare capacity once a response has changed the set (the
    /// initial fetch grows it one entry at a time).
    fn shrink(&mut self) {
        if self.0.capacity() > self.0.len() + self.0.len() / 8 + 4 {
            self.0.shrink_to_fit();
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Arc<Resource>> {
        self.0.iter()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The proxy's `initial_resource_versions`, resolved against the view.
    fn from_initial(versions: std::collections::HashMap<String, String>, map: Option<&ResourceMap>) -> Self {
        let mut held: Vec<_> = versions
            .into_iter()
            .map(|(name, version)| match map.and_then(|m| m.get_key_value(name.as_str())) {
                Some((_, r)) if *r.version == *version => r.clone(),
                // A version the view does not have: the body is never sent
                // (sends come from the view), only name and version are read.
                found => Arc::new(Resource {
                    name: found.map_or_else(|| Name::from(name), |(n, _)| n.clone()),
                    version: version.into(),
                    body: Bytes::new(),
                }),
            })
            .collect();
        held.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        held.shrink_to_fit();
        Held(held)
    }
}

#[derive(Debug, Default)]
struct Plan {
    send: Vec<Arc<Resource>>,
    remove: Vec<Name>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.send.is_empty() && self.remove.is_empty()
    }
}

/// Explicitly subscribed names, sorted: half what a `BTreeSet` costs per
/// name, and names arrive in batches (a request lists many).
#[derive(Debug, Default)]
struct NameSet(Vec<Name>);

impl NameSet {
    fn contains(&self, name: &str) -> bool {
        self.0.binary_search_by(|n| (**n).cmp(name)).is_ok()
    }

    fn extend(&mut self, names: Vec<Name>) {
        if names.is_empty() {
            return;
        }
        self.0.extend(names);
        self.0.sort_unstable();
        self.0.dedup();
        self.0.shrink_to_fit();
    }

    fn remove(&mut self, name: &str) {
        if let Ok(i) = self.0.binary_search_by(|n| (**n).cmp(name)) {
            self.0.remove(i);
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Name> {
        self.0.iter()
    }
}

impl DeltaStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Process one request from the proxy.
    pub fn handle_request(&mut self, req: DeltaDiscoveryRequest) -> Result<(), ProtocolError> {
        if req.type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            self.events.push(StreamEvent::UnknownType { type_url: req.type_url });
            return Ok(());
        };
        let first = self.types.get(ty).is_none();
        let map = self.view.as_ref().map(|v| v.resources(ty));
        let st = self.types.get_or_default(ty);
        if !req.resource_names_subscribe.is_empty() || !req.resource_names_unsubscribe.is_empty() {
            st.synced = None;
        }
        if first {
            // A nonce or error on the first request refers to another stream.
            st.held = Held::from_initial(req.initial_resource_versions, map);
            st.wildcard = req.resource_names_subscribe.is_empty() && ty.sotw_wildcard_by_default();
        } else if !req.response_nonce.is_empty() {
            let event = st.settle(ty, req.response_nonce, req.error_detail);
            self.events.push(event);
        }
        let mut subscribed = Vec::with_capacity(req.resource_names_subscribe.len());
        for name in req.resource_names_subscribe {
            if name == "*" {
                st.wildcard = true;
                continue;
            }
            let name = match map.and_then(|m| m.get_key_value(name.as_str())) {
                Some((shared, _)) => shared.clone(),
                None => Name::from(name),
            };
            if !first {
                st.forced.insert(name.clone());
            }
            subscribed.push(name);
        }
        st.names.extend(subscribed);
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                st.wildcard = false;
            } else {
                st.names.remove(name.as_str());
                st.forced.remove(name.as_str());
            }
        }
        if first {
            st.answer_empty = st.wildcard;
        }
        // Only a first request (initial versions) or an unsubscription can
        // leave held names outside the subscription: an ACK costs no scan.
        if first || !req.resource_names_unsubscribe.is_empty() {
            st.forget_uncovered();
        }
        self.pump();
        Ok(())
    }

    /// Replace the proxy's view; whatever differs is sent.
    pub fn set_view(&mut self, view: Arc<ProxyView>) {
        self.view = Some(view);
        self.pump();
    }

    /// Responses produced so far, in the order they must be sent.
    pub fn take_responses(&mut self) -> Vec<DeltaResponse> {
        std::mem::take(&mut self.responses)
    }

    /// Events produced so far.
    pub fn take_events(&mut self) -> Vec<StreamEvent> {
        std::mem::take(&mut self.events)
    }

    /// Whether a cluster the proxy holds still waits for its endpoints.
    fn endpoints_pending(&self, view: &ProxyView) -> bool {
        let Some(clusters) = self.types.get(ResourceType::Cluster) else {
            return false;
        };
        self.endpoints_owed.iter().any(|n| view.endpoints.contains_key(n) && clusters.held.contains(n))
    }

    /// Produce every response that is due, in push order.
    fn pump(&mut self) {
        let Some(view) = self.view.clone() else {
            return;
        };
        #[cfg(test)]
        if self.exhaustive {
            for ty in ResourceType::ALL {
                if let Some(st) = self.types.get_mut(ty) {
                    st.synced = None;
                }
            }
        }
        let routing_settled = [ResourceType::Listener, ResourceType::Route]
            .into_iter()
            .all(|ty| self.types.get(ty).is_none_or(|st| st.in_sync(ty, &view)));
        // Clusters the proxy still holds although the view dropped them (and
        // which are not removed in this round).
        let mut clusters_kept: BTreeSet<Name> =
            self.types.get(ResourceType::Cluster).map(|st| st.dropped_but_held(&view)).unwrap_or_default();
        let mut clusters_queued = false;

        for ty in ResourceType::ALL {
            // Routes may point at a new cluster only once it can be warm: its
            // endpoints must be on the wire first. Envoy subscribes to them only
            // after applying the cluster, so stream order alone does not do it.
            let warming = matches!(ty, ResourceType::Listener | ResourceType::Route) && self.endpoints_pending(&view);
            let Some(st) = self.types.get_mut(ty) else {
                continue;
            };
            let owed = (ty == ResourceType::Endpoint).then_some(&self.endpoints_owed);
            let mut plan = st.plan(ty, &view, owed);
            let planned = (plan.send.len(), plan.remove.len());
            match ty {
                ResourceType::Cluster if !routing_settled => plan.remove.clear(),
                ResourceType::Endpoint => plan.remove.retain(|n| !clusters_kept.contains(n)),
                // Only updates wait: on a first fetch Envoy itself holds
                // listeners until its clusters are warm.
                ResourceType::Listener | ResourceType::Route if clusters_queued || (warming && !st.held.is_empty()) => {
                    continue;
                }
                _ => {}
            }
            if st.in_flight.is_some() {
                clusters_queued |= ty == ResourceType::Cluster && !plan.send.is_empty();
                continue;
            }
            st.forced.clear();
            // Once this plan is applied, `held` is what the view has, unless
            // part of the plan was held back or a rejection stands.
            let whole = planned == (plan.send.len(), plan.remove.len());
            st.synced = (whole && st.rejected.is_empty()).then(|| view.clone());
            if plan.is_empty() && !st.answer_empty {
                continue;
            }
            st.answer_empty = false;

            let nonce = self.nonces.next();
            let mut changes = Vec::with_capacity(plan.send.len() + plan.remove.len());
            for r in &plan.send {
                let before = st.held.insert(r.clone());
                changes.push(HeldChange { name: r.name.clone(), before, sent: Some(r.version.clone()) });
            }
            for name in &plan.remove {
                let before = st.held.remove(name);
                changes.push(HeldChange { name: name.clone(), before, sent: None });
            }
            st.held.shrink();
            st.in_flight = Some(InFlight { nonce: nonce.clone(), changes });
            match ty {
                ResourceType::Cluster => {
                    self.endpoints_owed.extend(plan.send.iter().map(|r| r.name.clone()));
                    for name in &plan.remove {
                        self.endpoints_owed.remove(name);
                        clusters_kept.remove(name);
                    }
                }
                ResourceType::Endpoint => {
                    for r in &plan.send {
                        self.endpoints_owed.remove(&r.name);
                    }
                }
                _ => {}
            }
            self.events.push(StreamEvent::Pushed {
                ty,
                nonce: nonce.clone(),
                resources: plan.send.len(),
                removed: plan.remove.len(),
            });
            self.responses.push(DeltaResponse {
                ty,
                revision: view.revision,
                nonce,
                resources: plan.send,
                removed: plan.remove,
            });
        }
        // Clusters without an assignment in the view (static, DNS, original
        // destination) are owed nothing; keeping them would make every later
        // round take the full comparison for EDS.
        self.endpoints_owed.retain(|n| view.clusters.contains_key(n) && view.endpoints.contains_key(n));
    }
}

impl TypeState {
    fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The proxy drops what it no longer subscribes to.
    fn forget_uncovered(&mut self) {
        if self.wildcard {
            return;
        }
        let names = &self.names;
        self.held.retain(|r| names.contains(&r.name));
        self.rejected.retain(|n, _| names.contains(n));
    }

    /// Call `f` for each resource of `map` the subscription covers.
    fn for_each_covered<'a>(&self, map: &'a ResourceMap, f: impl FnMut(&'a Arc<Resource>)) {
        for_each_covered(self.wildcard, &self.names, map, f);
    }

    /// Whether `synced` may stand for `held` now: no rejection, forced
    /// resend or owed endpoint needs the full comparison.
    fn shortcut_allowed(&self, owed: Option<&BTreeSet<Name>>) -> bool {
        self.rejected.is_empty() && self.forced.is_empty() && owed.is_none_or(|o| o.is_empty())
    }

    /// Whether the proxy holds (and has acknowledged) exactly what the view
    /// has for this subscription.
    fn in_sync(&self, ty: ResourceType, view: &ProxyView) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        if self.shortcut_allowed(None)
            && let Some(changes) = changes_since(self.synced.as_ref(), ty, view)
        {
            return changes.iter().all(|(name, new)| match new {
                Some(r) => !self.covers(name) || self.held.get(name).is_some_and(|h| h.version == r.version),
                None => !self.held.contains(name),
            });
        }
        let map = view.resources(ty);
        let mut synced = self.held.iter().all(|h| map.get(&h.name).is_some_and(|r| r.version == h.version));
        self.for_each_covered(map, |r| synced &= self.held.contains(&r.name));
        synced
    }

    /// Names the proxy holds that the view no longer has.
    fn dropped_but_held(&self, view: &ProxyView) -> BTreeSet<Name> {
        if self.shortcut_allowed(None)
            && let Some(changes) = changes_since(self.synced.as_ref(), ResourceType::Cluster, view)
        {
            return changes
                .into_iter()
                .filter(|(name, new)| new.is_none() && self.held.contains(name))
                .map(|(name, _)| name.clone())
                .collect();
        }
        self.held.names().filter(|n| !view.clusters.contains_key(*n)).cloned().collect()
    }

    /// ACK or NACK of the in-flight response, or a stale nonce.
    fn settle(&mut self, ty: ResourceType, nonce: String, error: Option<Status>) -> StreamEvent {
        let Some(in_flight) = self.in_flight.take_if(|f| f.nonce == nonce) else {
            return StreamEvent::StaleNonce { ty, nonce, nack_message: error.map(|e| e.message) };
        };
        let Some(error) = error else {
            return StreamEvent::Ack { ty, nonce };
        };
        let names = in_flight.changes.iter().map(|c| c.name.clone()).collect();
        for change in in_flight.changes {
            if !self.covers(&change.name) {
                continue;
            }
            match change.before {
                Some(before) => self.held.insert(before),
                None => self.held.remove(&change.name),
            };
            self.synced = None;
            self.rejected.insert(change.name, change.sent);
        }
        StreamEvent::Nack { ty, nonce, names, code: error.code, message: error.message }
    }

    /// What this type would send now; `owed` names are sent even if held.
    fn plan(&mut self, ty: ResourceType, view: &ProxyView, owed: Option<&BTreeSet<Name>>) -> Plan {
        if self.shortcut_allowed(owed)
            && let Some(changes) = changes_since(self.synced.as_ref(), ty, view)
        {
            // Only what changed since the synced view can differ from `held`.
            let mut plan = Plan::default();
            let TypeState { wildcard, names, held, .. } = self;
            for (name, new) in changes {
                match new {
                    Some(r) if (*wildcard || names.contains(name)) && !held.hold_current(r) => {
                        plan.send.push(r.clone());
                    }
                    None if held.contains(name) => plan.remove.push(name.clone()),
                    _ => {}
                }
            }
            return plan;
        }
        let map = view.resources(ty);
        // A rejection lasts while the rejected content is what the view has.
        let held = &self.held;
        self.rejected.retain(|n, v| match v {
            Some(v) => map.get(n).is_some_and(|r| r.version == *v),
            None => !map.contains_key(n) && held.contains(n),
        });
        let mut plan = Plan::default();
        let TypeState { wildcard, names, held, rejected, forced, .. } = self;
        for_each_covered(*wildcard, names, map, |r| {
            if rejected.get(&r.name).is_some_and(|v| v.as_ref() == Some(&r.version)) {
                return;
            }
            if !held.hold_current(r) || forced.contains(&r.name) || owed.is_some_and(|o| o.contains(&r.name)) {
                plan.send.push(r.clone());
            }
        });
        plan.remove = self
            .held
            .names()
            .filter(|n| !map.contains_key(*n) && !matches!(self.rejected.get(*n), Some(None)))
            .cloned()
            .collect();
        plan
    }
}

/// Call `f` for each resource of `map` a subscription (`wildcard`, or
/// `names`) covers.
fn for_each_covered<'a>(wildcard: bool, names: &NameSet, map: &'a ResourceMap, mut f: impl FnMut(&'a Arc<Resource>)) {
    if wildcard {
        map.values().for_each(f);
    } else {
        for name in names.iter() {
            if let Some(r) = map.get(name) {
                f(r);
            }
        }
    }
}

/// A name whose resource differs between two views, and the new view's resource.
type Change<'a> = (&'a Name, Option<&'a Arc<Resource>>);

/// The resources of type `ty` that differ between `synced` (the view `held`
/// is known to match) and `view`; `None` when there is no such view.
fn changes_since<'a>(
    synced: Option<&'a Arc<ProxyView>>,
    ty: ResourceType,
    view: &'a ProxyView,
) -> Option<Vec<Change<'a>>> {
    let synced = synced?;
    if std::ptr::eq(synced.as_ref(), view) {
        return Some(Vec::new());
    }
    Some(changes(synced.resources(ty), view.resources(ty)))
}

/// The names whose resource differs between two maps of one type, in name
/// order, with the resource `new` has (`None`: `new` no longer has it).
///
/// Both maps are sorted by name, so one merge walk does; names and resources
/// that two views share are the same `Arc`s, compared by pointer. A resource
/// made anew with the same content is listed too, so that `held` can take the
/// new `Arc` and let the old allocation go (see [`Held::hold_current`]).
fn changes<'a>(old: &'a ResourceMap, new: &'a ResourceMap) -> Vec<Change<'a>> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) if Arc::ptr_eq(a, b) => Ordering::Equal,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => {
                let (name, _) = old.next().expect("peeked");
                out.push((name, None));
            }
            Ordering::Greater => {
                let (name, r) = new.next().expect("peeked");
                out.push((name, Some(r)));
            }
            Ordering::Equal => {
                let ((_, a), (name, b)) = (old.next().expect("peeked"), new.next().expect("peeked"));
                if !Arc::ptr_eq(a, b) {
                    out.push((name, Some(b)));
                }
            }
        }
    }
}
