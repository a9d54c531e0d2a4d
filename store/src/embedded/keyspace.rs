//! The embedded store's sans-IO core: an MVCC keyspace, its change log and
//! its leases, with no locks, no files and no clock of its own.
//!
//! Every write is two steps: `plan_*` checks a request against the current
//! state and returns the [`Changes`] it would make without touching anything;
//! the caller persists those changes (or not, in memory) and only then calls
//! [`Keyspace::apply`]. A failed disk write therefore leaves the keyspace as
//! it was. Time enters as an `Instant` argument, so lease behaviour is tested
//! here with plain synchronous tests.
//!
//! ```text
//!   keys: BTreeMap<key, [Version{rev, Some(kv) | None=tombstone}, ...]>   list(prefix, at)
//!   log:  VecDeque<LoggedRevision{rev, events sorted by key}>              watch(prefix, from)
//!         revisions compact_revision ..= revision (those with changes)
//!   leases: id -> {ttl, deadline, keys}                                    expiry / revoke
//! ```
//!
//! Compaction to `c` keeps, for every key, the newest version at or below `c`
//! (the state at `c`) and everything newer, drops tombstones at or below `c`
//! and drops log entries below `c`. It only visits keys named in the log
//! entries being dropped, so its cost is proportional to the history it
//! forgets, not to the size of the keyspace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::{Condition, Event, KeyValue, LeaseId, ListResponse, Op, PutOptions, Revision, StoreError, WatchBatch};

/// The value of a key from `revision` on; `kv: None` is a deletion at `revision`.
#[derive(Debug)]
struct Version {
    revision: Revision,
    kv: Option<KeyValue>,
}

/// The changes made at one revision, sorted by key.
#[derive(Debug)]
struct LoggedRevision {
    revision: Revision,
    events: Vec<Event>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// A checked but not yet applied change: persist it, then [`Keyspace::apply`] it.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// The events of the new revision `revision`, sorted by key. Empty when
    /// the change does not touch any key (then the revision does not move).
    pub(crate) events: Vec<Event>,
    /// The revision after the change.
    pub(crate) revision: Revision,
    /// A lease to create, with its TTL.
    pub(crate) granted_lease: Option<(LeaseId, Duration)>,
    /// A lease to forget (revoked or expired); its keys are in `events`.
    pub(crate) removed_lease: Option<LeaseId>,
}

impl Changes {
    pub(crate) fn bumps_revision(&self) -> bool {
        !self.events.is_empty()
    }
}

/// What a watcher reads from the change log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LogRead {
    /// The watcher needs revisions below the compaction point.
    Compacted { compact_revision: Revision },
    /// Batches under the prefix, in revision order; the watcher continues at `next`.
    Batches {
        batches: Vec<WatchBatch>,
        next: Revision,
        /// False when `limit` stopped the read before the end of the log.
        caught_up: bool,
    },
}

/// What a store file holds, used to rebuild a [`Keyspace`] at open.
#[derive(Debug)]
pub(crate) struct Restored {
    pub(crate) revision: Revision,
    pub(crate) kvs: Vec<KeyValue>,
    /// Keys deleted at `revision` itself, so a watch from `revision` still
    /// sees that revision's deletions after a reopen.
    pub(crate) deleted_at_revision: Vec<String>,
    pub(crate) leases: Vec<(LeaseId, Duration)>,
    pub(crate) next_lease: i64,
}

/// The in-memory MVCC keyspace.
#[derive(Debug)]
pub(crate) struct Keyspace {
    revision: Revision,
    /// The oldest revision still readable by `list` and `watch`.
    compact_revision: Revision,
    keys: BTreeMap<String, Vec<Version>>,
    log: VecDeque<LoggedRevision>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: i64,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace::new()
    }
}

impl Keyspace {
    /// An empty keyspace at revision 1.
    pub(crate) fn new() -> Self {
        Keyspace {
            revision: 1,
            compact_revision: 1,
            keys: BTreeMap::new(),
            log: VecDeque::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
        }
    }

    /// Rebuild a keyspace from persisted live keys. History before
    /// `restored.revision` is gone, so that revision becomes the compaction
    /// point; its own changes are rebuilt from the keys modified at it and the
    /// recorded deletions. Restored leases get a full TTL from `now`.
    /// Returns a description of the first inconsistency found.
    pub(crate) fn restore(restored: Restored, now: Instant) -> Result<Self, String> {
        let Restored { revision, kvs, deleted_at_revision, leases, next_lease } = restored;
        if revision < 1 {
            return Err(format!("stored revision {revision} is below 1"));
        }
        let mut keyspace = Keyspace { revision, compact_revision: revision, next_lease, ..Keyspace::new() };
        for (id, ttl) in leases {
            if id.0 >= next_lease {
                return Err(format!("lease {id} is not below the next lease id {next_lease:x}"));
            }
            keyspace.leases.insert(id, Lease { ttl, deadline: now + ttl, keys: BTreeSet::new() });
        }
        let mut events = Vec::new();
        for kv in kvs {
            if kv.key.is_empty()
                || kv.version < 1
                || kv.create_revision < 1
                || kv.create_revision > kv.mod_revision
                || kv.mod_revision > revision
            {
                return Err(format!(
                    "key {:?} has inconsistent bookkeeping (create {}, mod {}, version {}) at store revision {revision}",
                    kv.key, kv.create_revision, kv.mod_revision, kv.version
                ));
            }
            if let Some(lease) = kv.lease {
                let Some(entry) = keyspace.leases.get_mut(&lease) else {
                    return Err(format!("key {:?} is attached to unknown lease {lease}", kv.key));
                };
                entry.keys.insert(kv.key.clone());
            }
            if kv.mod_revision == revision {
                events.push(Event::Put(kv.clone()));
            }
            keyspace.keys.insert(kv.key.clone(), vec![Version { revision: kv.mod_revision, kv: Some(kv) }]);
        }
        for key in deleted_at_revision {
            if keyspace.keys.contains_key(&key) {
                return Err(format!("key {key:?} is both live and deleted at revision {revision}"));
            }
            events.push(Event::Delete { key, revision });
        }
        if !events.is_empty() {
            events.sort_by(|a, b| a.key().cmp(b.key()));
            keyspace.log.push_back(LoggedRevision { revision, events });
        }
        Ok(keyspace)
    }

    pub(crate) fn revision(&self) -> Revision {
        self.revision
    }

    pub(crate) fn compact_revision(&self) -> Revision {
        self.compact_revision
    }

    pub(crate) fn get(&self, key: &str) -> Option<KeyValue> {
        self.live(key).cloned()
    }

    fn live(&self, key: &str) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.kv.as_ref()
    }

    /// Every live key under `prefix` (a plain byte prefix) as of `at`.
    pub(crate) fn list(&self, prefix: &str, at: Option<Revision>) -> Result<ListResponse, StoreError> {
        let at = at.unwrap_or(self.revision);
        self.check_readable(at)?;
        let kvs = self
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter_map(|(_, history)| {
                let newer = history.partition_point(|version| version.revision <= at);
                history[..newer].last()?.kv.clone()
            })
            .collect();
        Ok(ListResponse { revision: at, kvs })
    }

    fn check_readable(&self, at: Revision) -> Result<(), StoreError> {
        if at > self.revision {
            return Err(StoreError::FutureRevision { requested: at, current: self.revision });
        }
        if at < self.compact_revision {
            return Err(StoreError::Compacted { requested: at, compact_revision: self.compact_revision });
        }
        Ok(())
    }

    pub(crate) fn plan_put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<Changes, StoreError> {
        check_key(key)?;
        if let Some(lease) = options.lease
            && !self.leases.contains_key(&lease)
        {
            return Err(StoreError::LeaseNotFound(lease));
        }
        let current = self.live(key);
        check_condition(key, options.condition, current)?;
        let revision = self.revision + 1;
        let kv = next_value(current, key, value, options.lease, revision);
        Ok(self.changes_at_next_revision(vec![Event::Put(kv)]))
    }

    /// `None` when the key does not exist (and the condition allows that).
    pub(crate) fn plan_delete(&self, key: &str, condition: Condition) -> Result<Option<Changes>, StoreError> {
        check_key(key)?;
        let current = self.live(key);
        check_condition(key, condition, current)?;
        Ok(current.map(|_| {
            self.changes_at_next_revision(vec![Event::Delete { key: key.to_owned(), revision: self.revision + 1 }])
        }))
    }

    /// `None` when no operation changes anything.
    pub(crate) fn plan_batch(&self, ops: &[Op]) -> Result<Option<Changes>, StoreError> {
        let mut by_key: BTreeMap<&str, &Op> = BTreeMap::new();
        for op in ops {
            let key = match op {
                Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
            };
            check_key(key)?;
            if by_key.insert(key, op).is_some() {
                return Err(StoreError::Invalid(format!(
                    "key {key:?} appears more than once in one batch; merge its operations into one"
                )));
            }
        }
        let revision = self.revision + 1;
        let events: Vec<Event> = by_key
            .into_iter()
            .filter_map(|(key, op)| {
                let current = self.live(key);
                match op {
                    Op::Put { value, .. } if current.is_some_and(|kv| kv.value == *value) => None,
                    Op::Put { value, .. } => Some(Event::Put(next_value(current, key, value.clone(), None, revision))),
                    Op::Delete { .. } => current.map(|_| Event::Delete { key: key.to_owned(), revision }),
                }
            })
            .collect();
        Ok((!events.is_empty()).then(|| self.changes_at_next_revision(events)))
    }

    pub(crate) fn plan_grant(&self, ttl: Duration) -> Result<Changes, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("a lease needs a TTL above zero".to_owned()));
        }
        Ok(Changes {
            revision: self.revision,
            granted_lease: Some((LeaseId(self.next_lease), ttl)),
            ..Changes::default()
        })
    }

    /// Forget a lease and delete its keys at one revision (none if it has no keys).
    pub(crate) fn plan_revoke(&self, lease: LeaseId) -> Result<Changes, StoreError> {
        let entry = self.leases.get(&lease).ok_or(StoreError::LeaseNotFound(lease))?;
        let revision = self.revision + 1;
        let events: Vec<Event> = entry.keys.iter().map(|key| Event::Delete { key: key.clone(), revision }).collect();
        let mut changes = if events.is_empty() {
            Changes { revision: self.revision, ..Changes::default() }
        } else {
            self.changes_at_next_revision(events)
        };
        changes.removed_lease = Some(lease);
        Ok(changes)
    }

    /// Restart a lease's TTL at `now`; returns the TTL.
    pub(crate) fn keep_alive(&mut self, lease: LeaseId, now: Instant) -> Result<Duration, StoreError> {
        match self.leases.get_mut(&lease) {
            Some(entry) if entry.deadline > now => {
                entry.deadline = now + entry.ttl;
                Ok(entry.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    /// A lease whose deadline has passed at `now`, if any.
    pub(crate) fn due_lease(&self, now: Instant) -> Option<LeaseId> {
        self.leases.iter().find(|(_, lease)| lease.deadline <= now).map(|(id, _)| *id)
    }

    /// The earliest lease deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.leases.values().map(|lease| lease.deadline).min()
    }

    pub(crate) fn has_leases(&self) -> bool {
        !self.leases.is_empty()
    }

    fn changes_at_next_revision(&self, events: Vec<Event>) -> Changes {
        Changes { events, revision: self.revision + 1, ..Changes::default() }
    }

    /// Apply changes planned against this exact state.
    pub(crate) fn apply(&mut self, changes: Changes, now: Instant) {
        let Changes { events, revision, granted_lease, removed_lease } = changes;
        if !events.is_empty() {
            debug_assert_eq!(revision, self.revision + 1, "changes planned against another revision");
            for event in &events {
                let (key, kv) = match event {
                    Event::Put(kv) => (kv.key.as_str(), Some(kv.clone())),
                    Event::Delete { key, .. } => (key.as_str(), None),
                };
                let history = self.keys.entry(key.to_owned()).or_default();
                let old_lease = history.last().and_then(|v| v.kv.as_ref()).and_then(|kv| kv.lease);
                let new_lease = kv.as_ref().and_then(|kv| kv.lease);
                history.push(Version { revision, kv });
                if old_lease != new_lease {
                    if let Some(old) = old_lease.and_then(|id| self.leases.get_mut(&id)) {
                        old.keys.remove(key);
                    }
                    if let Some(new) = new_lease.and_then(|id| self.leases.get_mut(&id)) {
                        new.keys.insert(key.to_owned());
                    }
                }
            }
            self.revision = revision;
            self.log.push_back(LoggedRevision { revision, events });
        }
        if let Some((id, ttl)) = granted_lease {
            self.leases.insert(id, Lease { ttl, deadline: now + ttl, keys: BTreeSet::new() });
            self.next_lease = self.next_lease.max(id.0 + 1);
        }
        if let Some(id) = removed_lease {
            self.leases.remove(&id);
        }
    }

    /// Forget history before `revision`. At or below the compaction point: no-op.
    pub(crate) fn compact(&mut self, revision: Revision) -> Result<(), StoreError> {
        if revision > self.revision {
            return Err(StoreError::FutureRevision { requested: revision, current: self.revision });
        }
        if revision <= self.compact_revision {
            return Ok(());
        }
        let touched: BTreeSet<String> = self
            .log
            .iter()
            .take_while(|entry| entry.revision <= revision)
            .flat_map(|entry| entry.events.iter().map(|event| event.key().to_owned()))
            .collect();
        for key in touched {
            let Some(history) = self.keys.get_mut(&key) else {
                continue;
            };
            let newer = history.partition_point(|version| version.revision <= revision);
            history.drain(..newer.saturating_sub(1));
            if history.first().is_some_and(|v| v.revision <= revision && v.kv.is_none()) {
                history.remove(0);
            }
            if history.is_empty() {
                self.keys.remove(&key);
            }
        }
        while self.log.front().is_some_and(|entry| entry.revision < revision) {
            self.log.pop_front();
        }
        self.compact_revision = revision;
        Ok(())
    }

    /// Up to `limit` revisions of changes under `prefix` from `from` on.
    pub(crate) fn read_log(&self, prefix: &str, from: Revision, limit: usize) -> LogRead {
        if from < self.compact_revision {
            return LogRead::Compacted { compact_revision: self.compact_revision };
        }
        let start = self.log.partition_point(|entry| entry.revision < from);
        let mut next = from;
        let mut batches = Vec::new();
        for entry in self.log.range(start..).take(limit) {
            let events: Vec<Event> = entry.events.iter().filter(|e| e.key().starts_with(prefix)).cloned().collect();
            if !events.is_empty() {
                batches.push(WatchBatch { revision: entry.revision, events });
            }
            next = entry.revision + 1;
        }
        let caught_up = start + limit >= self.log.len();
        if caught_up {
            next = next.max(self.revision + 1);
        }
        LogRead::Batches { batches, next, caught_up }
    }

    /// How many versions and log entries are held, for tests of compaction.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        (self.keys.values().map(Vec::len).sum(), self.log.len())
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("the empty key cannot be stored".to_owned()));
    }
    Ok(())
}

fn check_condition(key: &str, condition: Condition, current: Option<&KeyValue>) -> Result<(), StoreError> {
    let found = current.map(|kv| kv.mod_revision);
    let holds = match condition {
        Condition::None => true,
        Condition::Absent => found.is_none(),
        Condition::ModRevision(expected) => found == Some(expected),
    };
    if holds { Ok(()) } else { Err(StoreError::Conflict { key: key.to_owned(), expected: condition, found }) }
}

/// The key's value after a put at `revision`.
fn next_value(
    current: Option<&KeyValue>,
    key: &str,
    value: Bytes,
    lease: Option<LeaseId>,
    revision: Revision,
) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value,
        create_revision: current.map_or(revision, |kv| kv.create_revision),
        mod_revision: revision,
        version: current.map_or(1, |kv| kv.version + 1),
        lease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(keyspace: &mut Keyspace, key: &str, value: &str) -> Revision {
        let changes = keyspace.plan_put(key, Bytes::from(value.to_owned()), PutOptions::default()).expect("put");
        keyspace.apply(changes, Instant::now());
        keyspace.revision()
    }

    fn delete(keyspace: &mut Keyspace, key: &str) {
        let changes = keyspace.plan_delete(key, Condition::None).expect("delete").expect("key exists");
        keyspace.apply(changes, Instant::now());
    }

    fn keys_at(keyspace: &Keyspace, at: Revision) -> Vec<(String, String)> {
        keyspace
            .list("", Some(at))
            .expect("list")
            .kvs
            .into_iter()
            .map(|kv| (kv.key, String::from_utf8(kv.value.to_vec()).expect("utf-8")))
            .collect()
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn planning_changes_nothing_until_applied() {
        let mut keyspace = Keyspace::new();
        let changes = keyspace.plan_put("/a", Bytes::from_static(b"1"), PutOptions::default()).unwrap();
        assert_eq!(keyspace.revision(), 1);
        assert_eq!(keyspace.get("/a"), None);
        keyspace.apply(changes, Instant::now());
        assert_eq!(keyspace.revision(), 2);
        assert_eq!(keyspace.get("/a").map(|kv| kv.mod_revision), Some(2));
    }

    #[test]
    fn compaction_keeps_state_at_the_compaction_point_and_prunes_the_rest() {
        let mut keyspace = Keyspace::new();
        put(&mut keyspace, "/a", "1"); // 2
        put(&mut keyspace, "/a", "2"); // 3
        put(&mut keyspace, "/b", "1"); // 4
        delete(&mut keyspace, "/b"); // 5
        put(&mut keyspace, "/a", "3"); // 6
        put(&mut keyspace, "/c", "1"); // 7
        assert_eq!(keyspace.held(), (6, 6), "versions and log entries before compaction");

        keyspace.compact(5).unwrap();
        // /a keeps "2" (its state at 5) and "3"; /b's tombstone at 5 goes; /c stays.
        assert_eq!(keyspace.held(), (3, 3), "versions and log entries after compact(5)");
        assert_eq!(keyspace.compact_revision(), 5);
        assert_eq!(keys_at(&keyspace, 5), pairs(&[("/a", "2")]));
        assert_eq!(keys_at(&keyspace, 7), pairs(&[("/a", "3"), ("/c", "1")]));
        assert!(matches!(keyspace.list("", Some(4)), Err(StoreError::Compacted { requested: 4, compact_revision: 5 })));
        // The compaction revision's own changes stay watchable.
        let LogRead::Batches { batches, .. } = keyspace.read_log("", 5, 10) else {
            panic!("watch from the compaction point must not be compacted")
        };
        assert_eq!(batches.iter().map(|b| b.revision).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(keyspace.read_log("", 4, 10), LogRead::Compacted { compact_revision: 5 });

        keyspace.compact(7).unwrap();
        assert_eq!(keyspace.held(), (2, 1));
        assert_eq!(keys_at(&keyspace, 7), pairs(&[("/a", "3"), ("/c", "1")]));
    }

    #[test]
    fn compaction_leaves_one_version_per_unchanged_key() {
        let mut keyspace = Keyspace::new();
        for i in 0..100 {
            put(&mut keyspace, &format!("/cold/{i:03}"), "x");
        }
        for i in 0..50 {
            put(&mut keyspace, "/hot", &i.to_string());
        }
        keyspace.compact(keyspace.revision()).unwrap();
        assert_eq!(keyspace.held(), (101, 1), "one version per key and the last log entry");
    }

    #[test]
    fn read_log_pages_and_filters_by_prefix() {
        let mut keyspace = Keyspace::new();
        for i in 0..10 {
            put(&mut keyspace, if i % 2 == 0 { "/in/k" } else { "/out/k" }, &i.to_string());
        }
        let LogRead::Batches { batches, next, caught_up } = keyspace.read_log("/in/", 1, 4) else {
            panic!("not compacted")
        };
        assert_eq!(batches.iter().map(|b| b.revision).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!((next, caught_up), (6, false));
        let LogRead::Batches { batches, next, caught_up } = keyspace.read_log("/in/", next, 100) else {
            panic!("not compacted")
        };
        assert_eq!(batches.iter().map(|b| b.revision).collect::<Vec<_>>(), vec![6, 8, 10]);
        assert_eq!((next, caught_up), (12, true));
        // A watcher ahead of the store keeps its position.
        assert_eq!(keyspace.read_log("", 20, 100), LogRead::Batches { batches: vec![], next: 20, caught_up: true });
    }

    #[test]
    fn leases_expire_by_the_injected_clock_and_keep_alive_moves_the_deadline() {
        let start = Instant::now();
        let mut keyspace = Keyspace::new();
        let grant = keyspace.plan_grant(Duration::from_secs(10)).unwrap();
        let (lease, _) = grant.granted_lease.unwrap();
        keyspace.apply(grant, start);
        let put =
            keyspace.plan_put("/l", Bytes::new(), PutOptions { lease: Some(lease), ..PutOptions::default() }).unwrap();
        keyspace.apply(put, start);

        assert_eq!(keyspace.due_lease(start + Duration::from_secs(9)), None);
        assert_eq!(keyspace.keep_alive(lease, start + Duration::from_secs(9)).unwrap(), Duration::from_secs(10));
        assert_eq!(keyspace.next_deadline(), Some(start + Duration::from_secs(19)));
        assert_eq!(keyspace.due_lease(start + Duration::from_secs(18)), None);
        assert_eq!(keyspace.due_lease(start + Duration::from_secs(19)), Some(lease));
        assert!(matches!(
            keyspace.keep_alive(lease, start + Duration::from_secs(19)),
            Err(StoreError::LeaseNotFound(id)) if id == lease
        ));

        let expiry = keyspace.plan_revoke(lease).unwrap();
        assert_eq!(expiry.events, vec![Event::Delete { key: "/l".into(), revision: 3 }]);
        keyspace.apply(expiry, start + Duration::from_secs(19));
        assert!(!keyspace.has_leases());
        assert_eq!(keyspace.get("/l"), None);
    }

    #[test]
    fn a_put_without_lease_detaches_the_key_from_its_lease() {
        let now = Instant::now();
        let mut keyspace = Keyspace::new();
        let grant = keyspace.plan_grant(Duration::from_secs(1)).unwrap();
        let (lease, _) = grant.granted_lease.unwrap();
        keyspace.apply(grant, now);
        let leased = PutOptions { lease: Some(lease), ..PutOptions::default() };
        for key in ["/a", "/b"] {
            let put = keyspace.plan_put(key, Bytes::new(), leased).unwrap();
            keyspace.apply(put, now);
        }
        put(&mut keyspace, "/b", "free");
        let revoke = keyspace.plan_revoke(lease).unwrap();
        assert_eq!(revoke.events.iter().map(Event::key).collect::<Vec<_>>(), vec!["/a"]);
    }

    #[test]
    fn restore_rebuilds_the_last_revision_and_rejects_inconsistent_data() {
        let kv = |key: &str, create, modified, version| KeyValue {
            key: key.to_owned(),
            value: Bytes::from_static(b"v"),
            create_revision: create,
            mod_revision: modified,
            version,
            lease: None,
        };
        let now = Instant::now();
        let restored = Keyspace::restore(
            Restored {
                revision: 9,
                kvs: vec![kv("/old", 2, 4, 2), kv("/new", 9, 9, 1)],
                deleted_at_revision: vec!["/gone".to_owned()],
                leases: vec![(LeaseId(3), Duration::from_secs(5))],
                next_lease: 4,
            },
            now,
        )
        .unwrap();
        assert_eq!((restored.revision(), restored.compact_revision()), (9, 9));
        let LogRead::Batches { batches, next, .. } = restored.read_log("", 9, 10) else {
            panic!("revision 9 is readable")
        };
        assert_eq!(next, 10);
        assert_eq!(
            batches[0].events,
            vec![Event::Delete { key: "/gone".into(), revision: 9 }, Event::Put(kv("/new", 9, 9, 1))]
        );
        assert_eq!(restored.next_deadline(), Some(now + Duration::from_secs(5)));

        let broken = Keyspace::restore(
            Restored {
                revision: 3,
                kvs: vec![kv("/future", 2, 4, 1)],
                deleted_at_revision: vec![],
                leases: vec![],
                next_lease: 1,
            },
            now,
        );
        assert!(broken.unwrap_err().contains("/future"));
        let orphan = Keyspace::restore(
            Restored {
                revision: 3,
                kvs: vec![KeyValue { lease: Some(LeaseId(7)), ..kv("/orphan", 2, 2, 1) }],
                deleted_at_revision: vec![],
                leases: vec![],
                next_lease: 1,
            },
            now,
        );
        assert!(orphan.unwrap_err().contains("unknown lease"));
    }
}
