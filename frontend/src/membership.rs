//! Shard membership as a frontend sees it: the leased keys under
//! `/meshplane/v1/shards/`, followed with list + watch.
//!
//! ```text
//!  Store::list(SHARDS_PREFIX) ─▶ MembershipTracker::reset ─┐
//!  Store::watch(from rev + 1) ─▶ MembershipTracker::apply ─┼─▶ watch::Sender<Arc<Membership>> ─▶ relay streams
//!        │ Compacted ─▶ relist                             │     (ring of serving shards, addresses)
//!        └ error ─▶ keep the last membership, back off, resume from the last revision
//! ```
//!
//! [`MembershipTracker`] is the pure part (tested synchronously); the
//! [`follow_membership`] loop only moves store items into it. Store errors
//! never clear the membership: a frontend that loses the store keeps
//! relaying to the shards it knew.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meshplane_model::key::{SHARDS_PREFIX, ShardRecord, shard_id_from_key};
use meshplane_store::{Event, KeyValue, Revision, Store, StoreError, WatchBatch, WatchItem};
use tokio::sync::watch;

use crate::ring::ShardRing;

/// One registered shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardEntry {
    pub record: ShardRecord,
    /// The revision its key was created at: a shard that re-registers (new
    /// lease, new key) gets a new one, which clears local suspicion of it.
    pub create_revision: Revision,
}

/// The shards registered at one store revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// 0 until the first listing.
    pub revision: Revision,
    shards: BTreeMap<Arc<str>, ShardEntry>,
    /// The shards that may own proxies: registered and not draining.
    ring: ShardRing,
}

impl Membership {
    /// A membership from records (tests, and the tracker).
    pub fn new(revision: Revision, entries: impl IntoIterator<Item = ShardEntry>) -> Membership {
        let shards: BTreeMap<Arc<str>, ShardEntry> =
            entries.into_iter().map(|e| (Arc::<str>::from(e.record.id.as_str()), e)).collect();
        let ring = ShardRing::new(shards.iter().filter(|(_, e)| !e.record.draining).map(|(id, _)| id.clone()));
        Membership { revision, shards, ring }
    }

    /// Whether the store has been listed at least once.
    pub fn is_loaded(&self) -> bool {
        self.revision > 0
    }

    /// The ring of serving (non-draining) shards.
    pub fn ring(&self) -> &ShardRing {
        &self.ring
    }

    pub fn get(&self, shard_id: &str) -> Option<&ShardEntry> {
        self.shards.get(shard_id)
    }

    /// Every registered shard, draining ones included, by id.
    pub fn shards(&self) -> impl Iterator<Item = &ShardEntry> {
        self.shards.values()
    }
}

/// Keeps a [`Membership`] equal to the store's shard keys.
#[derive(Debug, Default)]
pub struct MembershipTracker {
    revision: Revision,
    entries: BTreeMap<String, ShardEntry>,
}

impl MembershipTracker {
    /// Replace everything with a listing.
    pub fn reset(&mut self, revision: Revision, kvs: Vec<KeyValue>) {
        self.revision = revision;
        self.entries.clear();
        for kv in kvs {
            self.put(kv);
        }
    }

    /// Apply one watch batch.
    pub fn apply(&mut self, batch: WatchBatch) {
        self.revision = batch.revision;
        for event in batch.events {
            match event {
                Event::Put(kv) => self.put(kv),
                Event::Delete { key, .. } => {
                    if let Some(id) = shard_id_from_key(&key) {
                        self.entries.remove(id);
                    }
                }
            }
        }
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn membership(&self) -> Membership {
        Membership::new(self.revision, self.entries.values().cloned())
    }

    fn put(&mut self, kv: KeyValue) {
        let Some(id) = shard_id_from_key(&kv.key) else {
            return;
        };
        match ShardRecord::from_json(&kv.value) {
            Ok(record) if record.id == id && !record.addr.is_empty() => {
                self.entries.insert(id.to_string(), ShardEntry { record, create_revision: kv.create_revision });
            }
            Ok(record) => {
                tracing::warn!(key = %kv.key, id = %record.id, addr = %record.addr,
                    "ignoring shard record whose id differs from its key or whose addr is empty");
                self.entries.remove(id);
            }
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e,
                    "ignoring undecodable shard record (expected {{\"id\", \"addr\", \"draining\"}} JSON)");
                self.entries.remove(id);
            }
        }
    }
}

/// Follow the shard keys until `shutdown` completes, publishing every change.
/// Never returns early on store errors.
pub async fn follow_membership(
    store: Arc<dyn Store>,
    membership: watch::Sender<Arc<Membership>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::select! {
        () = follow(store, membership) => {}
        () = shutdown => {}
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

async fn follow(store: Arc<dyn Store>, membership: watch::Sender<Arc<Membership>>) {
    let mut tracker = MembershipTracker::default();
    let mut backoff = BACKOFF_MIN;
    let publish = |tracker: &MembershipTracker| {
        let next = tracker.membership();
        membership.send_if_modified(|current| {
            if **current == next {
                return false;
            }
            *current = Arc::new(next);
            true
        });
    };
    'relist: loop {
        match store.list(SHARDS_PREFIX, None).await {
            Ok(listing) => {
                tracker.reset(listing.revision, listing.kvs);
                publish(&tracker);
            }
            Err(e) => {
                store_error("listing shard membership", &e, &mut backoff).await;
                continue 'relist;
            }
        }
        loop {
            let mut stream = match store.watch(SHARDS_PREFIX, tracker.revision() + 1).await {
                Ok(stream) => stream,
                Err(StoreError::Compacted { .. }) => continue 'relist,
                Err(e) => {
                    store_error("watching shard membership", &e, &mut backoff).await;
                    continue;
                }
            };
            while let Some(item) = stream.next().await {
                match item {
                    Ok(WatchItem::Batch(batch)) => {
                        backoff = BACKOFF_MIN;
                        tracker.apply(batch);
                        publish(&tracker);
                    }
                    Ok(WatchItem::Compacted { compact_revision }) => {
                        tracing::warn!(
                            revision = tracker.revision(),
                            compact_revision,
                            "store history compacted past our membership revision; relisting"
                        );
                        continue 'relist;
                    }
                    Err(e) => {
                        store_error("watching shard membership", &e, &mut backoff).await;
                        break;
                    }
                }
            }
        }
    }
}

async fn store_error(what: &str, e: &StoreError, backoff: &mut Duration) {
    tracing::warn!(error = %e, retry_in = ?*backoff, "store error while {what}; keeping the last known shards");
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use meshplane_model::key::shard_key;

    use super::*;

    fn kv(id: &str, addr: &str, draining: bool, rev: Revision) -> KeyValue {
        let record = ShardRecord { id: id.into(), addr: addr.into(), draining };
        KeyValue {
            key: shard_key(id),
            value: Bytes::from(record.to_json()),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn listing_and_events_shape_the_ring() {
        let mut t = MembershipTracker::default();
        assert!(!t.membership().is_loaded());
        t.reset(5, vec![kv("a", "h:1", false, 2), kv("b", "h:2", false, 3)]);
        let m = t.membership();
        assert!(m.is_loaded());
        assert_eq!(m.ring().shards().len(), 2);
        assert_eq!(m.get("b").unwrap().record.addr, "h:2");

        // b drains: still registered (its proxies are still served), out of the ring.
        t.apply(WatchBatch { revision: 6, events: vec![Event::Put(kv("b", "h:2", true, 3))] });
        let m = t.membership();
        assert!(m.get("b").unwrap().record.draining);
        assert_eq!(m.ring(), &ShardRing::new(["a"]));

        t.apply(WatchBatch {
            revision: 7,
            events: vec![Event::Delete { key: shard_key("b"), revision: 7 }, Event::Put(kv("c", "h:3", false, 7))],
        });
        let m = t.membership();
        assert_eq!(m.revision, 7);
        assert_eq!(m.ring(), &ShardRing::new(["a", "c"]));
        assert!(m.get("b").is_none());

        // A relist replaces everything.
        t.reset(9, vec![kv("c", "h:3", false, 7)]);
        assert_eq!(t.membership().ring(), &ShardRing::new(["c"]));
    }

    #[test]
    fn malformed_records_are_ignored() {
        let mut t = MembershipTracker::default();
        let mut bad = kv("a", "h:1", false, 2);
        bad.value = Bytes::from_static(b"not json");
        let mut mismatched = kv("b", "h:2", false, 2);
        mismatched.key = shard_key("other");
        let mut foreign = kv("c", "h:3", false, 2);
        foreign.key = "/meshplane/v1/shards/c/extra".into();
        t.reset(3, vec![bad, mismatched, foreign, kv("d", "h:4", false, 2)]);
        assert_eq!(t.membership().ring(), &ShardRing::new(["d"]));
    }
}
