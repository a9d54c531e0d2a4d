//! Counters of a worker's simulated proxies, and their serializable snapshot.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

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
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge(counter: &AtomicI64, delta: i64) {
        counter.fetch_add(delta, Ordering::Relaxed);
    }
}
