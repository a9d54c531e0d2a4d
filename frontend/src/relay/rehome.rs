//! Measuring re-homes: how long a proxy takes to converge on its new owner,
//! and what the new owner sends it on the way.
//!
//! ```text
//!  edge decides a move ─▶ core.begin_rehome(reason, now)      (epoch E)
//!      (membership change: when noticed, before the settle wait; cancelled
//!       if the owner turns out unchanged when the wait ends)
//!  connect() ─▶ epoch E+1.. ─▶ responses counted (resources, encoded bytes)
//!  core.rehome_completed(now) ─▶ Some(Rehomed) once the new owner answered
//!      every type it owes an answer and the proxy answered every response
//! ```
//!
//! A move that fails over again before completing (the new owner died too,
//! or no shard answered) stays one re-home, timed from the first decision.
//!
//! **What the new owner owes.** SotW: an answer to every type of the replay
//! (a SotW server answers each first request). Delta: an answer to every
//! wildcard type (CDS and LDS for Envoy): a Delta server answers a first
//! wildcard request even when nothing differs, but sends nothing for a
//! named subscription whose `initial_resource_versions` all match. Such a
//! type therefore completes without a response; one that differs is
//! answered in the same round as the replay, and the completion also waits
//! for the proxy's ACK of every response of the new upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Why a proxy moved to another shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RehomeReason {
    /// A shard joined, left or started draining.
    Membership,
    /// The upstream stream failed (the shard died or ended the stream).
    UpstreamFailure,
}

impl RehomeReason {
    pub const ALL: [RehomeReason; 2] = [RehomeReason::Membership, RehomeReason::UpstreamFailure];

    /// The `reason` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            RehomeReason::Membership => "membership",
            RehomeReason::UpstreamFailure => "upstream_failure",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A completed re-home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rehomed {
    pub reason: RehomeReason,
    /// From the decision to move until the proxy converged on the new owner.
    pub duration: Duration,
    /// Resources relayed to the proxy from the new owner(s) meanwhile.
    pub resources: u64,
    /// Encoded size of the responses relayed meanwhile.
    pub bytes: u64,
}

/// The re-home in progress on one stream, if any (part of a relay core).
#[derive(Debug, Default)]
pub(super) struct Rehoming(Option<Active>);

#[derive(Debug)]
struct Active {
    reason: RehomeReason,
    started: Instant,
    /// The epoch the move was decided in; the new owner's epochs are later.
    from_epoch: u64,
    resources: u64,
    bytes: u64,
}

impl Rehoming {
    /// A move was decided in `epoch`; a re-home already in progress keeps
    /// its start and reason.
    pub(super) fn begin(&mut self, reason: RehomeReason, now: Instant, epoch: u64) {
        if self.0.is_none() {
            self.0 = Some(Active { reason, started: now, from_epoch: epoch, resources: 0, bytes: 0 });
        }
    }

    /// The move decided in `epoch` did not happen (the owner is unchanged
    /// after all); a re-home that has already moved the stream goes on.
    pub(super) fn cancel(&mut self, epoch: u64) {
        if self.0.as_ref().is_some_and(|a| a.from_epoch == epoch) {
            self.0 = None;
        }
    }

    /// Count a response (of `resources` resources) relayed in `epoch`, if
    /// it is a new owner's during a re-home; it is measured only then.
    pub(super) fn count(&mut self, epoch: u64, resources: usize, response: &impl prost::Message) {
        if let Some(a) = self.0.as_mut().filter(|a| epoch > a.from_epoch) {
            a.resources += resources as u64;
            a.bytes += response.encoded_len() as u64;
        }
    }

    /// Whether a re-home is in progress.
    pub(super) fn active(&self) -> bool {
        self.0.is_some()
    }

    /// End the re-home if the stream is on a new owner (`epoch` later than
    /// the decision) and the proxy has `converged` on it.
    pub(super) fn complete(&mut self, epoch: u64, now: Instant, converged: bool) -> Option<Rehomed> {
        let a = self.0.as_ref()?;
        if epoch <= a.from_epoch || !converged {
            return None;
        }
        let a = self.0.take()?;
        Some(Rehomed {
            reason: a.reason,
            duration: now.saturating_duration_since(a.started),
            resources: a.resources,
            bytes: a.bytes,
        })
    }
}

/// Upper bounds (seconds) of the re-home duration histogram; a last
/// `+Inf` bucket follows.
pub const REHOME_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 30.0, 60.0];

/// Completed re-homes by reason: a duration histogram and what was sent.
#[derive(Debug, Default)]
pub(super) struct RehomeStats([ReasonStats; 2]);

#[derive(Debug, Default)]
struct ReasonStats {
    /// Per bucket (not cumulative), the last one `+Inf`.
    buckets: [AtomicU64; REHOME_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
    resources: AtomicU64,
    bytes: AtomicU64,
}

/// A histogram as read at scrape time.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    /// (upper bound, count in this bucket only), ending with `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

impl RehomeStats {
    pub(super) fn record(&self, done: &Rehomed) {
        let s = &self.0[done.reason.index()];
        let secs = done.duration.as_secs_f64();
        let i = REHOME_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(REHOME_BUCKETS.len());
        s.buckets[i].fetch_add(1, Ordering::Relaxed);
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_micros.fetch_add(done.duration.as_micros().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        s.resources.fetch_add(done.resources, Ordering::Relaxed);
        s.bytes.fetch_add(done.bytes, Ordering::Relaxed);
    }

    pub(super) fn durations(&self, reason: RehomeReason) -> HistogramSnapshot {
        let s = &self.0[reason.index()];
        let bounds = REHOME_BUCKETS.iter().copied().chain([f64::INFINITY]);
        HistogramSnapshot {
            sum: s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: s.count.load(Ordering::Relaxed),
            buckets: bounds.zip(&s.buckets).map(|(b, c)| (b, c.load(Ordering::Relaxed))).collect(),
        }
    }

    pub(super) fn resources(&self, reason: RehomeReason) -> u64 {
        self.0[reason.index()].resources.load(Ordering::Relaxed)
    }

    pub(super) fn bytes(&self, reason: RehomeReason) -> u64 {
        self.0[reason.index()].bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message as _;

    use super::super::{DeltaRelay, SotwRelay};
    use super::*;

    const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";

    fn node() -> Option<Node> {
        Some(Node { id: "sidecar~10.0.0.1~a-1.ns~ns.svc.cluster.local".into(), ..Default::default() })
    }

    fn dreq(type_url: &str, names: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn dresp(type_url: &str, nonce: &str, names: &[&str]) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.into(),
            resources: names
                .iter()
                .map(|n| Resource {
                    name: n.to_string(),
                    version: "v1".into(),
                    resource: Some(Any { type_url: type_url.into(), value: vec![7; 100] }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// A Delta proxy holding clusters, endpoints and listeners on its first upstream.
    fn synced_delta() -> DeltaRelay {
        let mut relay = DeltaRelay::new(DeltaDiscoveryRequest { node: node(), ..dreq(CDS, &[], "") }).unwrap();
        relay.connect();
        let r = relay.on_upstream_response(dresp(CDS, "1", &["c1"]));
        relay.on_proxy_request(dreq(CDS, &[], &r.nonce)).unwrap();
        relay.on_proxy_request(dreq(EDS, &["c1"], "")).unwrap();
        let r = relay.on_upstream_response(dresp(EDS, "2", &["c1"]));
        relay.on_proxy_request(dreq(EDS, &[], &r.nonce)).unwrap();
        relay.on_proxy_request(dreq(LDS, &[], "")).unwrap();
        let r = relay.on_upstream_response(dresp(LDS, "3", &["l1"]));
        relay.on_proxy_request(dreq(LDS, &[], &r.nonce)).unwrap();
        assert!(relay.settled());
        relay
    }

    #[test]
    fn delta_rehome_completes_when_the_wildcard_types_are_answered_and_acked() {
        let t0 = Instant::now();
        let mut relay = synced_delta();
        assert!(relay.rehome_completed(t0).is_none(), "the first upstream is not a re-home");
        relay.begin_rehome(RehomeReason::UpstreamFailure, t0);
        relay.disconnect();
        // A response of the old upstream (before the move) is not counted.
        assert!(relay.rehome_completed(t0).is_none());
        let replay = relay.connect();
        assert_eq!(replay.len(), 3);
        assert!(relay.rehome_completed(t0).is_none(), "nothing answered yet");

        // The new owner: CDS differs (one cluster), EDS and LDS match; it
        // answers CDS and, as a first wildcard request, LDS (empty).
        let cds = relay.on_upstream_response(dresp(CDS, "1", &["c1"]));
        assert!(relay.rehome_completed(t0).is_none(), "LDS is owed an answer");
        let lds = relay.on_upstream_response(dresp(LDS, "2", &[]));
        assert!(relay.rehome_completed(t0).is_none(), "the proxy has not ACKed");
        relay.on_proxy_request(dreq(CDS, &[], &cds.nonce)).unwrap();
        assert!(relay.rehome_completed(t0).is_none());
        relay.on_proxy_request(dreq(LDS, &[], &lds.nonce)).unwrap();
        let done = relay.rehome_completed(t0 + Duration::from_millis(40)).expect("converged");
        assert_eq!(done.reason, RehomeReason::UpstreamFailure);
        assert_eq!(done.duration, Duration::from_millis(40));
        assert_eq!(done.resources, 1, "EDS was never answered nor waited for");
        assert_eq!(done.bytes, (cds.encoded_len() + lds.encoded_len()) as u64);
        assert!(relay.rehome_completed(t0).is_none(), "reported once");
        // Later pushes are not part of it.
        let r = relay.on_upstream_response(dresp(EDS, "3", &["c1"]));
        relay.on_proxy_request(dreq(EDS, &[], &r.nonce)).unwrap();
        assert!(relay.rehome_completed(t0).is_none());
    }

    #[test]
    fn delta_membership_move_cancelled_or_made() {
        let t0 = Instant::now();
        let mut relay = synced_delta();
        relay.begin_rehome(RehomeReason::Membership, t0);
        relay.cancel_rehome();
        relay.disconnect();
        relay.connect();
        relay.on_upstream_response(dresp(CDS, "1", &[]));
        relay.on_upstream_response(dresp(LDS, "2", &[]));
        relay.on_proxy_request(dreq(CDS, &[], "2.1")).unwrap();
        relay.on_proxy_request(dreq(LDS, &[], "2.2")).unwrap();
        assert!(relay.rehome_completed(t0).is_none(), "cancelled");

        // Decided, then the new owner fails before answering: one re-home,
        // timed from the first decision.
        relay.begin_rehome(RehomeReason::Membership, t0);
        relay.disconnect();
        relay.connect();
        relay.begin_rehome(RehomeReason::UpstreamFailure, t0 + Duration::from_secs(1));
        relay.cancel_rehome();
        relay.disconnect();
        relay.connect();
        let cds = relay.on_upstream_response(dresp(CDS, "1", &["c9"]));
        let lds = relay.on_upstream_response(dresp(LDS, "2", &[]));
        relay.on_proxy_request(dreq(CDS, &[], &cds.nonce)).unwrap();
        relay.on_proxy_request(dreq(LDS, &[], &lds.nonce)).unwrap();
        let done = relay.rehome_completed(t0 + Duration::from_secs(2)).unwrap();
        assert_eq!((done.reason, done.duration, done.resources), (RehomeReason::Membership, Duration::from_secs(2), 1));
    }

    #[test]
    fn sotw_rehome_waits_for_every_type() {
        let t0 = Instant::now();
        let req = |type_url: &str, names: &[&str], nonce: &str| DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        let resp = |type_url: &str, nonce: &str, n: usize| DiscoveryResponse {
            type_url: type_url.into(),
            nonce: nonce.into(),
            version_info: "h1".into(),
            resources: vec![Any { type_url: type_url.into(), value: vec![1; 50] }; n],
            ..Default::default()
        };
        let mut relay = SotwRelay::new(DiscoveryRequest { node: node(), ..req(CDS, &[], "") }).unwrap();
        relay.on_proxy_request(req(EDS, &["c1", "c2"], "")).unwrap();
        relay.connect();
        relay.begin_rehome(RehomeReason::UpstreamFailure, t0);
        relay.disconnect();
        relay.connect();
        let cds = relay.on_upstream_response(resp(CDS, "1", 2));
        relay.on_proxy_request(req(CDS, &[], &cds.nonce)).unwrap();
        assert!(relay.rehome_completed(t0).is_none(), "EDS not answered");
        let eds = relay.on_upstream_response(resp(EDS, "2", 2));
        assert!(relay.rehome_completed(t0).is_none(), "EDS not ACKed");
        relay.on_proxy_request(req(EDS, &["c1", "c2"], &eds.nonce)).unwrap();
        let done = relay.rehome_completed(t0 + Duration::from_millis(5)).unwrap();
        assert_eq!((done.resources, done.bytes), (4, (cds.encoded_len() + eds.encoded_len()) as u64));
    }

    #[test]
    fn a_rehome_is_timed_from_the_first_decision_and_counts_only_new_epochs() {
        let t0 = Instant::now();
        let mut r = Rehoming::default();
        assert!(r.complete(1, t0, true).is_none(), "nothing in progress");
        // 300 bytes encoded: one field of 297 bytes.
        let resp = DeltaDiscoveryResponse { system_version_info: "v".repeat(297), ..Default::default() };
        assert_eq!(resp.encoded_len(), 300);
        r.begin(RehomeReason::UpstreamFailure, t0, 1);
        r.count(1, 5, &resp);
        // A second decision (the new owner died too) keeps the first start.
        r.begin(RehomeReason::Membership, t0 + Duration::from_secs(1), 2);
        r.count(2, 3, &resp);
        assert!(r.complete(1, t0, true).is_none(), "still on the old owner");
        assert!(r.complete(2, t0, false).is_none(), "not converged");
        let done = r.complete(3, t0 + Duration::from_millis(1500), true).unwrap();
        assert_eq!(
            done,
            Rehomed {
                reason: RehomeReason::UpstreamFailure,
                duration: Duration::from_millis(1500),
                resources: 3,
                bytes: 300
            }
        );
        assert!(r.complete(3, t0, true).is_none(), "completed once");
    }

    #[test]
    fn cancel_drops_only_a_move_that_has_not_happened() {
        let t0 = Instant::now();
        let mut r = Rehoming::default();
        r.begin(RehomeReason::Membership, t0, 4);
        r.cancel(4);
        assert!(r.complete(5, t0, true).is_none());
        r.begin(RehomeReason::UpstreamFailure, t0, 4);
        r.cancel(5);
        assert!(r.complete(5, t0, true).is_some());
    }

    #[test]
    fn stats_bucket_each_duration_once() {
        let stats = RehomeStats::default();
        let done = |ms, reason| Rehomed { reason, duration: Duration::from_millis(ms), resources: 2, bytes: 10 };
        stats.record(&done(3, RehomeReason::UpstreamFailure));
        stats.record(&done(4_500, RehomeReason::UpstreamFailure));
        stats.record(&done(100_000, RehomeReason::UpstreamFailure));
        stats.record(&done(20, RehomeReason::Membership));
        let h = stats.durations(RehomeReason::UpstreamFailure);
        assert_eq!(h.count, 3);
        assert!((h.sum - 104.503).abs() < 1e-9, "{}", h.sum);
        assert_eq!(h.buckets.len(), REHOME_BUCKETS.len() + 1);
        assert_eq!(h.buckets[0], (0.005, 1));
        assert_eq!(h.buckets.iter().find(|(b, _)| *b == 5.0), Some(&(5.0, 1)));
        assert_eq!(h.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(stats.resources(RehomeReason::UpstreamFailure), 6);
        assert_eq!(stats.bytes(RehomeReason::Membership), 10);
        assert_eq!(stats.durations(RehomeReason::Membership).buckets[2], (0.025, 1));
    }
}
