//! One simulated Envoy: the sans-IO xDS client state of a proxy.
//!
//! ```text
//!  open_stream ─▶ CDS (wildcard) ─▶ ACK + EDS subscribe(EDS clusters) ─▶ first EDS ─▶ LDS (wildcard)
//!                                                                         LDS ─▶ ACK + RDS subscribe(route names)
//!  reconnect   ─▶ every type ever requested, with initial_resource_versions (Delta)
//!                 or the last accepted version_info (SotW)
//!  response    ─▶ decode every resource (cached by content) ─▶ valid: apply + ACK | invalid: NACK, nothing applied
//! ```
//!
//! As Envoy does: Delta tracks a version per resource and never records a
//! NACKed one; subscriptions follow the clusters and listeners held; a name
//! no longer subscribed is forgotten. State is symbols (`u32`) only: about
//! 8 bytes per resource held, no decoded config.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

use crate::facts::{DecodeCache, Facts, XdsType, content_hash};
use crate::intern::{Interner, Sym};
use crate::probe::Probe;
use crate::stats::Stats;

/// Which ADS variant a proxy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    Delta,
    Sotw,
}

/// What a proxy needs from its process while handling a message.
pub struct Ctx<'a> {
    pub names: &'a Interner,
    pub cache: &'a DecodeCache,
    pub stats: &'a Stats,
    pub probes: Arc<Vec<Arc<Probe>>>,
    pub now_unix_ns: u64,
}

#[derive(Debug, Default)]
struct Track {
    /// (name, version) sorted by name. SotW: the response's version_info.
    held: Vec<(Sym, Sym)>,
    /// Explicit subscription (EDS, RDS), sorted.
    subs: Vec<Sym>,
    /// SotW: last accepted version_info.
    version: Sym,
    /// SotW: nonce of the last response.
    nonce: Box<str>,
}

/// The xDS state of one simulated proxy.
#[derive(Debug)]
pub struct Proxy {
    /// Index of the proxy's workload in its worker.
    pub index: u32,
    api: Api,
    /// Reject every response of this type (to exercise NACK handling).
    nack: Option<XdsType>,
    /// Types requested on the current stream / ever / answered on the current stream.
    requested: u8,
    ever: u8,
    answered: u8,
    connected: bool,
    synced: bool,
    ever_synced: bool,
    streams: u32,
    types: [Track; 4],
    /// EDS clusters: (cluster, EDS resource name), sorted by cluster.
    eds_of: Vec<(Sym, Sym)>,
    /// Listeners: the route configurations each references.
    routes_of: Vec<(Sym, Arc<[Sym]>)>,
    /// Armed probes this proxy has not converged on yet.
    pending: Vec<u32>,
    /// Probes that affected this proxy.
    affected_by: u32,
}

fn upsert<V>(v: &mut Vec<(Sym, V)>, k: Sym, val: V) {
    match v.binary_search_by_key(&k, |e| e.0) {
        Ok(i) => v[i].1 = val,
        Err(i) => v.insert(i, (k, val)),
    }
}

fn remove<V>(v: &mut Vec<(Sym, V)>, k: Sym) {
    if let Ok(i) = v.binary_search_by_key(&k, |e| e.0) {
        v.remove(i);
    }
}

fn compact<T>(v: &mut Vec<T>) {
    if v.capacity() > v.len() + v.len() / 4 + 4 {
        v.shrink_to_fit();
    }
}

/// Names of `a` not in `b` (both sorted).
fn minus(a: &[Sym], b: &[Sym]) -> Vec<Sym> {
    a.iter().filter(|x| b.binary_search(x).is_err()).copied().collect()
}

impl Proxy {
    pub fn new(index: u32, api: Api, nack: Option<XdsType>) -> Proxy {
        Proxy {
            index,
            api,
            nack,
            requested: 0,
            ever: 0,
            answered: 0,
            connected: false,
            synced: false,
            ever_synced: false,
            streams: 0,
            types: Default::default(),
            eds_of: Vec::new(),
            routes_of: Vec::new(),
            pending: Vec::new(),
            affected_by: 0,
        }
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Resources held, all types.
    pub fn held(&self) -> usize {
        self.types.iter().map(|t| t.held.len()).sum()
    }

    /// A new stream: the requests to send first (the first carries the node).
    pub fn open_stream(&mut self, node: &Node, ctx: &Ctx<'_>) -> Vec<Vec<u8>> {
        if self.streams > 0 {
            Stats::add(&ctx.stats.reconnects, 1);
        }
        self.streams += 1;
        Stats::add(&ctx.stats.streams_opened, 1);
        self.requested = 0;
        self.answered = 0;
        if self.ever == 0 {
            self.ever = XdsType::Cds.bit();
        }
        let mut out = Vec::new();
        for ty in XdsType::ALL {
            if self.ever & ty.bit() == 0 || (!ty.wildcard() && self.types[ty as usize].subs.is_empty()) {
                continue;
            }
            let node = out.is_empty().then(|| node.clone());
            out.push(self.first_request(ty, node, ctx));
        }
        out
    }

    fn first_request(&mut self, ty: XdsType, node: Option<Node>, ctx: &Ctx<'_>) -> Vec<u8> {
        self.requested |= ty.bit();
        self.ever |= ty.bit();
        let t = &self.types[ty as usize];
        let names = |syms: &[Sym]| syms.iter().map(|s| ctx.names.resolve(*s).to_string()).collect::<Vec<_>>();
        match self.api {
            Api::Delta => DeltaDiscoveryRequest {
                node,
                type_url: ty.type_url().into(),
                resource_names_subscribe: names(&t.subs),
                initial_resource_versions: t
                    .held
                    .iter()
                    .map(|(n, v)| (ctx.names.resolve(*n).to_string(), ctx.names.resolve(*v).to_string()))
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            Api::Sotw => DiscoveryRequest {
                node,
                version_info: ctx.names.resolve(t.version).to_string(),
                resource_names: names(&t.subs),
                type_url: ty.type_url().into(),
                ..Default::default()
            }
            .encode_to_vec(),
        }
    }

    /// The server accepted the stream (response headers).
    pub fn on_connected(&mut self, ctx: &Ctx<'_>) {
        if !self.connected {
            self.connected = true;
            Stats::gauge(&ctx.stats.connected, 1);
        }
    }

    /// The stream ended, for whatever reason.
    pub fn on_stream_end(&mut self, ctx: &Ctx<'_>) {
        if self.connected {
            self.connected = false;
            Stats::gauge(&ctx.stats.connected, -1);
        }
        self.set_synced(false, ctx);
        self.requested = 0;
        self.answered = 0;
    }

    /// Arm a probe: pending if this proxy imports the changed service.
    pub fn arm(&mut self, probe: &Probe) -> bool {
        let affected = self.types[XdsType::Eds as usize].subs.binary_search(&probe.affects).is_ok();
        if affected {
            self.pending.push(probe.spec.id);
            self.affected_by += 1;
        }
        affected
    }

    /// Affected by some change, and converged on every one.
    pub fn converged(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn was_affected(&self) -> bool {
        self.affected_by > 0
    }

    /// Handle one gRPC message from the server; returns the requests to send.
    pub fn on_message(&mut self, msg: &[u8], ctx: &Ctx<'_>) -> Vec<Vec<u8>> {
        Stats::add(&ctx.stats.bytes, msg.len() as u64);
        match self.api {
            Api::Delta => match DeltaDiscoveryResponse::decode(msg) {
                Ok(r) => self.on_delta(r, ctx),
                Err(_) => {
                    Stats::add(&ctx.stats.bad_messages, 1);
                    Vec::new()
                }
            },
            Api::Sotw => match DiscoveryResponse::decode(msg) {
                Ok(r) => self.on_sotw(r, ctx),
                Err(_) => {
                    Stats::add(&ctx.stats.bad_messages, 1);
                    Vec::new()
                }
            },
        }
    }

    /// Validate resources: (name inside, hash, facts) each, or why not.
    fn validate<'m>(
        &self,
        ty: XdsType,
        type_url: &str,
        bodies: impl Iterator<Item = Option<(&'m str, &'m [u8])>>,
        ctx: &Ctx<'_>,
    ) -> Result<Vec<(u64, Arc<Facts>)>, String> {
        let mut out = Vec::new();
        for body in bodies {
            let Some((url, bytes)) = body else {
                return Err(format!("a {} resource has no body", ty.type_url()));
            };
            if url != type_url {
                return Err(format!("resource of type {url} in a {type_url} response"));
            }
            let hash = content_hash(bytes);
            let facts = ctx.cache.facts(ty, bytes, hash, ctx.names);
            if let Facts::Invalid(why) = &*facts {
                return Err(why.clone());
            }
            out.push((hash, facts));
        }
        if self.nack == Some(ty) {
            return Err(format!("loadtest --nack {ty:?}: rejecting on purpose"));
        }
        Ok(out)
    }

    fn on_delta(&mut self, resp: DeltaDiscoveryResponse, ctx: &Ctx<'_>) -> Vec<Vec<u8>> {
        let Some(ty) = XdsType::from_type_url(&resp.type_url) else {
            Stats::add(&ctx.stats.bad_messages, 1);
            return Vec::new();
        };
        Stats::add(&ctx.stats.responses, 1);
        Stats::add(&ctx.stats.resources, resp.resources.len() as u64);
        Stats::add(&ctx.stats.removed, resp.removed_resources.len() as u64);
        let body_bytes = resp.resources.iter().filter_map(|r| r.resource.as_ref()).map(|a| a.value.len()).sum();
        ctx.stats.response_of(ty, resp.resources.len(), body_bytes);
        let bodies = resp.resources.iter().map(|r| r.resource.as_ref().map(|a| (a.type_url.as_str(), &a.value[..])));
        let checked = self.validate(ty, &resp.type_url, bodies, ctx);
        self.answered |= ty.bit();
        let mut out = Vec::new();
        let facts = match checked {
            Ok(f) => f,
            Err(message) => {
                Stats::add(&ctx.stats.nacks, 1);
                out.push(
                    DeltaDiscoveryRequest {
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        error_detail: Some(Status { code: 3, message, details: Vec::new() }),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                );
                self.after_response(ty, ctx, &mut out);
                return out;
            }
        };
        let mut seen = Vec::with_capacity(facts.len());
        for (r, (hash, f)) in resp.resources.iter().zip(&facts) {
            let name = ctx.names.intern(&r.name);
            let version = ctx.names.intern(&r.version);
            upsert(&mut self.types[ty as usize].held, name, version);
            self.learn(ty, name, f);
            seen.push((name, *hash, r.resource.as_ref().map_or(&[][..], |a| &a.value[..])));
        }
        for removed in &resp.removed_resources {
            if let Some(name) = ctx.names.lookup(removed) {
                remove(&mut self.types[ty as usize].held, name);
                self.forget(ty, name);
            }
        }
        compact(&mut self.types[ty as usize].held);
        Stats::add(&ctx.stats.acks, 1);
        out.push(
            DeltaDiscoveryRequest { type_url: resp.type_url, response_nonce: resp.nonce, ..Default::default() }
                .encode_to_vec(),
        );
        self.check_probes(ty, &seen, ctx);
        self.after_response(ty, ctx, &mut out);
        out
    }

    fn on_sotw(&mut self, resp: DiscoveryResponse, ctx: &Ctx<'_>) -> Vec<Vec<u8>> {
        let Some(ty) = XdsType::from_type_url(&resp.type_url) else {
            Stats::add(&ctx.stats.bad_messages, 1);
            return Vec::new();
        };
        Stats::add(&ctx.stats.responses, 1);
        Stats::add(&ctx.stats.resources, resp.resources.len() as u64);
        ctx.stats.response_of(ty, resp.resources.len(), resp.resources.iter().map(|a| a.value.len()).sum());
        let bodies = resp.resources.iter().map(|a| Some((a.type_url.as_str(), &a.value[..])));
        let checked = self.validate(ty, &resp.type_url, bodies, ctx);
        self.answered |= ty.bit();
        self.types[ty as usize].nonce = resp.nonce.as_str().into();
        let mut out = Vec::new();
        let names = |syms: &[Sym]| syms.iter().map(|s| ctx.names.resolve(*s).to_string()).collect::<Vec<_>>();
        let facts = match checked {
            Ok(f) => f,
            Err(message) => {
                Stats::add(&ctx.stats.nacks, 1);
                let t = &self.types[ty as usize];
                out.push(
                    DiscoveryRequest {
                        version_info: ctx.names.resolve(t.version).to_string(),
                        resource_names: names(&t.subs),
                        type_url: resp.type_url,
                        response_nonce: resp.nonce,
                        error_detail: Some(Status { code: 3, message, details: Vec::new() }),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                );
                self.after_response(ty, ctx, &mut out);
                return out;
            }
        };
        let version = ctx.names.intern(&resp.version_info);
        let mut held = Vec::with_capacity(facts.len());
        let mut seen = Vec::with_capacity(facts.len());
        match ty {
            XdsType::Cds => self.eds_of.clear(),
            XdsType::Lds => self.routes_of.clear(),
            _ => {}
        }
        for (a, (hash, f)) in resp.resources.iter().zip(&facts) {
            let Facts::Valid { name, .. } = **f else { continue };
            held.push((name, version));
            self.learn(ty, name, f);
            seen.push((name, *hash, &a.value[..]));
        }
        held.sort_unstable();
        held.dedup_by_key(|e| e.0);
        let t = &mut self.types[ty as usize];
        t.held = held;
        t.version = version;
        Stats::add(&ctx.stats.acks, 1);
        out.push(
            DiscoveryRequest {
                version_info: resp.version_info,
                resource_names: names(&t.subs),
                type_url: resp.type_url,
                response_nonce: resp.nonce,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        self.check_probes(ty, &seen, ctx);
        self.after_response(ty, ctx, &mut out);
        out
    }

    /// Record what a held resource references.
    fn learn(&mut self, ty: XdsType, name: Sym, facts: &Facts) {
        let Facts::Valid { refs, .. } = facts else { return };
        match ty {
            XdsType::Cds => match refs.first() {
                Some(&eds) => upsert(&mut self.eds_of, name, eds),
                None => remove(&mut self.eds_of, name),
            },
            XdsType::Lds => upsert(&mut self.routes_of, name, refs.clone()),
            _ => {}
        }
    }

    fn forget(&mut self, ty: XdsType, name: Sym) {
        match ty {
            XdsType::Cds => remove(&mut self.eds_of, name),
            XdsType::Lds => remove(&mut self.routes_of, name),
            _ => {}
        }
    }

    /// Follow-up requests: subscriptions derived from clusters and
    /// listeners, and Envoy's initialization order.
    fn after_response(&mut self, ty: XdsType, ctx: &Ctx<'_>, out: &mut Vec<Vec<u8>>) {
        match ty {
            XdsType::Cds => {
                let mut want: Vec<Sym> = self.eds_of.iter().map(|e| e.1).collect();
                want.sort_unstable();
                want.dedup();
                compact(&mut self.eds_of);
                let none = want.is_empty();
                self.resubscribe(XdsType::Eds, want, ctx, out);
                if none && self.ever & XdsType::Lds.bit() == 0 {
                    out.push(self.first_request(XdsType::Lds, None, ctx));
                }
            }
            XdsType::Eds if self.ever & XdsType::Lds.bit() == 0 => {
                out.push(self.first_request(XdsType::Lds, None, ctx));
            }
            XdsType::Lds => {
                let mut want: Vec<Sym> = self.routes_of.iter().flat_map(|(_, r)| r.iter().copied()).collect();
                want.sort_unstable();
                want.dedup();
                compact(&mut self.routes_of);
                self.resubscribe(XdsType::Rds, want, ctx, out);
            }
            _ => {}
        }
        self.check_synced(ctx);
    }

    fn resubscribe(&mut self, ty: XdsType, want: Vec<Sym>, ctx: &Ctx<'_>, out: &mut Vec<Vec<u8>>) {
        let t = &mut self.types[ty as usize];
        if t.subs == want {
            return;
        }
        let added = minus(&want, &t.subs);
        let removed = minus(&t.subs, &want);
        t.held.retain(|(n, _)| want.binary_search(n).is_ok());
        t.subs = want;
        if self.requested & ty.bit() == 0 {
            if !self.types[ty as usize].subs.is_empty() {
                out.push(self.first_request(ty, None, ctx));
            }
            return;
        }
        let names = |syms: &[Sym]| syms.iter().map(|s| ctx.names.resolve(*s).to_string()).collect::<Vec<_>>();
        let t = &self.types[ty as usize];
        out.push(match self.api {
            Api::Delta => DeltaDiscoveryRequest {
                type_url: ty.type_url().into(),
                resource_names_subscribe: names(&added),
                resource_names_unsubscribe: names(&removed),
                ..Default::default()
            }
            .encode_to_vec(),
            Api::Sotw => DiscoveryRequest {
                version_info: ctx.names.resolve(t.version).to_string(),
                resource_names: names(&t.subs),
                type_url: ty.type_url().into(),
                response_nonce: t.nonce.to_string(),
                ..Default::default()
            }
            .encode_to_vec(),
        });
    }

    fn check_probes(&mut self, ty: XdsType, seen: &[(Sym, u64, &[u8])], ctx: &Ctx<'_>) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.retain(|&id| {
            let Some(probe) = ctx.probes.get(id as usize) else { return false };
            if probe.ty != ty || !seen.iter().any(|(name, hash, bytes)| probe.matches(*name, bytes, *hash)) {
                return true;
            }
            probe.record(ctx.now_unix_ns);
            false
        });
        compact(&mut self.pending);
    }

    fn check_synced(&mut self, ctx: &Ctx<'_>) {
        let wildcards = XdsType::Cds.bit() | XdsType::Lds.bit();
        let mut synced = self.answered & wildcards == wildcards;
        for ty in [XdsType::Eds, XdsType::Rds] {
            if self.nack == Some(ty) {
                continue;
            }
            let t = &self.types[ty as usize];
            synced &= t.subs.iter().all(|s| t.held.binary_search_by_key(s, |e| e.0).is_ok());
        }
        self.set_synced(synced, ctx);
    }

    fn set_synced(&mut self, synced: bool, ctx: &Ctx<'_>) {
        if synced != self.synced {
            self.synced = synced;
            Stats::gauge(&ctx.stats.synced, if synced { 1 } else { -1 });
            if synced && !self.ever_synced {
                self.ever_synced = true;
                Stats::gauge(&ctx.stats.ever_synced, 1);
            }
        }
    }
}
