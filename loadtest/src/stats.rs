//! Counters of a worker's simulated proxies, and their serializable snapshot.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::facts::XdsType;

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident: $ty:ident),* $(,)?) => {
        /// Live counters, updated by connection tasks.
        #[derive(Debug, Default)]
        pub struct Stats { $($(#[$m])* pub $name: $ty,)* }

        /// A point-in-time copy of [`Stats`]; snapshots of workers add up.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct Snapshot { $($(#[$m])* pub $name: i64,)* }

        impl Stats {
            pub fn snapshot(&self) -> Snapshot {
                Snapshot { $($name: self.$name.load(Ordering::Relaxed) as i64,)* }
            }
        }

        impl std::ops::AddAssign for Snapshot {
            fn add_assign(&mut self, o: Snapshot) { $(self.$name += o.$name;)* }
        }

        impl std::ops::Sub for Snapshot {
            type Output = Snapshot;
            /// What happened between two snapshots (gauges: their change).
            fn sub(self, o: Snapshot) -> Snapshot { Snapshot { $($name: self.$name - o.$name,)* } }
        }
    };
}

counters! {
    /// Proxies whose stream is up (response headers received).
    connected: AtomicI64,
    /// Proxies holding a complete config (every type answered, every
    /// subscribed name held).
    synced: AtomicI64,
    /// Proxies that have been synced at least once.
    ever_synced: AtomicI64,
    responses: AtomicU64,
    resources: AtomicU64,
    removed: AtomicU64,
    bytes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    /// Streams opened after a proxy's first.
    reconnects: AtomicU64,
    streams_opened: AtomicU64,
    /// Streams the server ended (trailers, reset or connection loss).
    stream_ends: AtomicU64,
    /// Streams ended with a non-OK grpc-status.
    stream_errors: AtomicU64,
    connect_errors: AtomicU64,
    /// Responses that did not decode as a discovery response at all.
    bad_messages: AtomicU64,
    /// Per type: responses, resources in them, and the bytes of those
    /// resources' bodies (what a server sends for each change, by type).
    cds_responses: AtomicU64,
    cds_resources: AtomicU64,
    cds_resource_bytes: AtomicU64,
    eds_responses: AtomicU64,
    eds_resources: AtomicU64,
    eds_resource_bytes: AtomicU64,
    lds_responses: AtomicU64,
    lds_resources: AtomicU64,
    lds_resource_bytes: AtomicU64,
    rds_responses: AtomicU64,
    rds_resources: AtomicU64,
    rds_resource_bytes: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge(counter: &AtomicI64, delta: i64) {
        counter.fetch_add(delta, Ordering::Relaxed);
    }

    /// Count one response of type `ty` carrying `resources` resources whose
    /// bodies add up to `bytes`.
    pub fn response_of(&self, ty: XdsType, resources: usize, bytes: usize) {
        let (responses, count, size) = match ty {
            XdsType::Cds => (&self.cds_responses, &self.cds_resources, &self.cds_resource_bytes),
            XdsType::Eds => (&self.eds_responses, &self.eds_resources, &self.eds_resource_bytes),
            XdsType::Lds => (&self.lds_responses, &self.lds_resources, &self.lds_resource_bytes),
            XdsType::Rds => (&self.rds_responses, &self.rds_resources, &self.rds_resource_bytes),
        };
        Stats::add(responses, 1);
        Stats::add(count, resources as u64);
        Stats::add(size, bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_counted_by_type_and_snapshots_subtract() {
        let stats = Stats::default();
        stats.response_of(XdsType::Eds, 3, 300);
        let before = stats.snapshot();
        stats.response_of(XdsType::Eds, 1, 40);
        stats.response_of(XdsType::Rds, 2, 70);
        Stats::gauge(&stats.connected, 5);
        let delta = stats.snapshot() - before;
        assert_eq!((delta.eds_responses, delta.eds_resources, delta.eds_resource_bytes), (1, 1, 40));
        assert_eq!((delta.rds_responses, delta.rds_resources, delta.rds_resource_bytes), (1, 2, 70));
        assert_eq!((delta.cds_responses, delta.lds_responses), (0, 0));
        assert_eq!(delta.connected, 5);
        assert_eq!(stats.snapshot().eds_resources, 4);
    }
}
