//! Prometheus metrics of the roles, read from the components' own atomic
//! counters at scrape time.
//!
//! Where istiod has a metric for the same thing, the name is istiod's, so
//! existing dashboards work: `pilot_xds`, `pilot_xds_pushes{type}`,
//! `pilot_total_xds_rejects`, `pilot_services`. istiod exports its counters
//! without a `_total` suffix, which `prometheus-client` adds to every
//! counter; those are therefore written as untyped samples under istiod's
//! exact names. meshplane's own metrics follow the Prometheus conventions
//! (`meshplane_*`, counters ending in `_total`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use meshplane_frontend::membership::Membership;
use meshplane_frontend::relay::{RehomeReason, RelayMetrics};
use meshplane_registry_sync::SourceStatus;
use meshplane_shard::ads::AdsMetrics;
use meshplane_shard::resources::ResourceType;
use meshplane_shard::runtime::Shard;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// How a family is exposed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Counter,
    Gauge,
    /// An istiod counter: untyped, istiod's name as is.
    Istiod,
}

/// One metric family with its samples, as scraped.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, &'static str)>, i64)>,
}

impl Family {
    fn one(name: &'static str, help: &'static str, kind: Kind, value: i64) -> Family {
        Family { name, help, kind, samples: vec![(Vec::new(), value)] }
    }
}

fn encode(families: Vec<Family>, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
    for family in families {
        let metric_type = match family.kind {
            Kind::Counter => MetricType::Counter,
            Kind::Gauge => MetricType::Gauge,
            Kind::Istiod => MetricType::Unknown,
        };
        let mut metric = encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
        for (labels, value) in &family.samples {
            let mut sample = metric.encode_family(labels)?;
            match family.kind {
                Kind::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&(*value as u64), None)?,
                Kind::Gauge | Kind::Istiod => sample.encode_gauge(value)?,
            }
        }
    }
    Ok(())
}

/// A collector computing its families on each scrape.
struct Scrape<F>(F);

impl<F> fmt::Debug for Scrape<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

impl<F: Fn() -> Vec<Family> + Send + Sync + 'static> Collector for Scrape<F> {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode((self.0)(), encoder)
    }
}

fn register(registry: &mut Registry, f: impl Fn() -> Vec<Family> + Send + Sync + 'static) {
    registry.register_collector(Box::new(Scrape(f)));
}

/// The ADS server's metrics, under istiod's names.
pub fn register_ads(registry: &mut Registry, ads: Arc<AdsMetrics>) {
    register(registry, move || {
        vec![
            Family::one(
                "pilot_xds",
                "Number of endpoints connected to this pilot using XDS.",
                Kind::Gauge,
                ads.connected_proxies(),
            ),
            Family {
                name: "pilot_xds_pushes",
                help: "Pilot build and send errors for lds, rds, cds and eds.",
                kind: Kind::Istiod,
                samples: ResourceType::ALL
                    .iter()
                    .map(|&ty| (vec![("type", ty.short())], ads.pushes(ty) as i64))
                    .collect(),
            },
            Family::one(
                "pilot_total_xds_rejects",
                "Total number of XDS responses from pilot rejected by proxy.",
                Kind::Istiod,
                ads.rejects() as i64,
            ),
        ]
    });
}

/// The shard runtime's metrics.
pub fn register_shard(registry: &mut Registry, shard: Shard, registered: watch::Receiver<bool>) {
    register(registry, move || {
        let stats = shard.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed) as i64;
        vec![
            Family::one(
                "pilot_services",
                "Total services known to pilot.",
                Kind::Gauge,
                shard.snapshot().services.len() as i64,
            ),
            Family::one(
                "meshplane_shard_snapshot_revision",
                "Store revision of the mesh snapshot served.",
                Kind::Gauge,
                shard.snapshot().revision,
            ),
            Family::one("meshplane_shard_rebuilds", "Mesh snapshots built.", Kind::Counter, load(&stats.rebuilds)),
            Family::one(
                "meshplane_shard_classes_generated",
                "Proxy-class configs generated.",
                Kind::Counter,
                load(&stats.classes_generated),
            ),
            Family::one(
                "meshplane_shard_classes_refreshed",
                "Proxy-class configs brought up to date by an endpoint-only rebuild without being generated again.",
                Kind::Counter,
                load(&stats.classes_refreshed),
            ),
            Family::one(
                "meshplane_shard_endpoint_rebuilds",
                "Rebuilds in which only endpoints changed.",
                Kind::Counter,
                load(&stats.endpoint_rebuilds),
            ),
            Family::one(
                "meshplane_shard_proxy_pushes",
                "Proxy views changed by a rebuild.",
                Kind::Counter,
                load(&stats.proxy_pushes),
            ),
            Family::one(
                "meshplane_shard_store_errors",
                "Store errors while listing or watching the mesh.",
                Kind::Counter,
                load(&stats.store_errors),
            ),
            Family::one(
                "meshplane_shard_registered",
                "1 while the shard's membership key is in the store.",
                Kind::Gauge,
                i64::from(*registered.borrow()),
            ),
        ]
    });
}

/// The frontend's relay metrics.
pub fn register_relay(registry: &mut Registry, relay: Arc<RelayMetrics>, membership: watch::Receiver<Arc<Membership>>) {
    registry.register_collector(Box::new(RehomeDurations(relay.clone())));
    register(registry, move || {
        let serving = membership.borrow().ring().len() as i64;
        vec![
            Family::one("meshplane_frontend_streams", "Proxy ADS streams relayed now.", Kind::Gauge, relay.streams()),
            Family::one(
                "meshplane_frontend_streams_accepted",
                "Proxy ADS streams accepted.",
                Kind::Counter,
                relay.streams_total() as i64,
            ),
            Family {
                name: "meshplane_frontend_rehomes",
                help: "Streams moved to another shard, by reason.",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("reason", "membership")], relay.rehomes_membership() as i64),
                    (vec![("reason", "upstream_failure")], relay.rehomes_failure() as i64),
                ],
            },
            Family::one(
                "meshplane_frontend_upstream_errors",
                "Shard streams that failed or could not be opened.",
                Kind::Counter,
                relay.upstream_errors() as i64,
            ),
            Family {
                name: "meshplane_frontend_stale_nonces",
                help: "ACKs and NACKs of an earlier shard's responses, absorbed by the relay.",
                kind: Kind::Counter,
                samples: vec![
                    (vec![("kind", "ack")], relay.stale_acks() as i64),
                    (vec![("kind", "nack")], relay.stale_nacks() as i64),
                ],
            },
            Family::one(
                "meshplane_frontend_shards",
                "Shards that may own proxies (registered, not draining).",
                Kind::Gauge,
                serving,
            ),
            Family {
                name: "meshplane_frontend_rehome_resources",
                help: "Resources relayed to proxies by their new owner during re-homes, by reason.",
                kind: Kind::Counter,
                samples: by_reason(|r| relay.rehome_resources(r)),
            },
            Family {
                name: "meshplane_frontend_rehome_bytes",
                help: "Encoded bytes of the responses relayed to proxies during re-homes, by reason.",
                kind: Kind::Counter,
                samples: by_reason(|r| relay.rehome_bytes(r)),
            },
            Family::one(
                "meshplane_frontend_relayed_resources",
                "Resources relayed to proxies (every response).",
                Kind::Counter,
                relay.relayed_resources() as i64,
            ),
            Family::one(
                "meshplane_frontend_relayed_bytes",
                "Encoded bytes of every response relayed to proxies.",
                Kind::Counter,
                relay.relayed_bytes() as i64,
            ),
        ]
    });
}

fn by_reason(value: impl Fn(RehomeReason) -> u64) -> Vec<(Vec<(&'static str, &'static str)>, i64)> {
    RehomeReason::ALL.iter().map(|&r| (vec![("reason", r.label())], value(r) as i64)).collect()
}

/// `meshplane_frontend_rehome_duration_seconds{reason}`: from the decision
/// to move a proxy until it converged on its new owner.
#[derive(Debug)]
struct RehomeDurations(Arc<RelayMetrics>);

impl Collector for RehomeDurations {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let mut metric = encoder.encode_descriptor(
            "meshplane_frontend_rehome_duration_seconds",
            "Seconds from the decision to move a proxy to another shard until the new owner answered \
             every type it owes and the proxy ACKed its responses, by reason.",
            None,
            MetricType::Histogram,
        )?;
        for reason in RehomeReason::ALL {
            let h = self.0.rehome_durations(reason);
            let labels = [("reason", reason.label())];
            metric.encode_family(&labels)?.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// The directory source's metrics.
pub fn register_directory(registry: &mut Registry, status: watch::Receiver<SourceStatus>) {
    register(registry, move || {
        let status = status.borrow();
        vec![
            Family::one(
                "meshplane_registry_ready",
                "1 once the first full load is in the store.",
                Kind::Gauge,
                i64::from(status.ready),
            ),
            Family::one(
                "meshplane_registry_objects",
                "Objects the source keeps in the store.",
                Kind::Gauge,
                status.summary.objects as i64,
            ),
            Family::one(
                "meshplane_registry_passes",
                "Scan, reconcile and write passes.",
                Kind::Counter,
                status.passes as i64,
            ),
            Family::one(
                "meshplane_registry_store_error",
                "1 while the last store write failed.",
                Kind::Gauge,
                i64::from(status.store_error.is_some()),
            ),
        ]
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istiod_names_are_kept_exactly() {
        let mut registry = Registry::default();
        register_ads(&mut registry, Arc::new(AdsMetrics::default()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE pilot_xds gauge\npilot_xds 0\n"), "{text}");
        assert!(text.contains("pilot_xds_pushes{type=\"cds\"} 0\n"), "{text}");
        assert!(text.contains("\npilot_total_xds_rejects 0\n"), "{text}");
        assert!(!text.contains("_total_total") && !text.contains("pilot_xds_pushes_total"), "{text}");
    }

    #[test]
    fn relay_rehome_metrics_are_exposed() {
        let mut registry = Registry::default();
        let (_tx, membership) = watch::channel(Arc::new(Membership::default()));
        register_relay(&mut registry, Arc::new(RelayMetrics::default()), membership);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("# TYPE meshplane_frontend_rehome_duration_seconds histogram\n"), "{text}");
        assert!(
            text.contains(
                "meshplane_frontend_rehome_duration_seconds_bucket{reason=\"upstream_failure\",le=\"+Inf\"} 0\n"
            ),
            "{text}"
        );
        assert!(text.contains("meshplane_frontend_rehome_duration_seconds_count{reason=\"membership\"} 0\n"), "{text}");
        assert!(text.contains("meshplane_frontend_rehome_resources_total{reason=\"membership\"} 0\n"), "{text}");
        assert!(text.contains("meshplane_frontend_rehome_bytes_total{reason=\"upstream_failure\"} 0\n"), "{text}");
        assert!(text.contains("\nmeshplane_frontend_relayed_bytes_total 0\n"), "{text}");
    }
}
