//! # The embedded backend: the whole [`Store`] contract inside one process
//!
//! [`EmbeddedStore`] keeps the keyspace in memory as an MVCC structure (every
//! key's versions since the compaction point, plus a revision-ordered change
//! log) and, when opened on a directory, mirrors the live keys, the revision
//! and the leases into one redb file. It must not know about the mesh model,
//! gRPC or Kubernetes.
//!
//! ```text
//!   put/delete/batch/lease ──▶ Mutex<State> ─────────────────────────────────────────┐
//!                                │ 1. Keyspace::plan_*   (checks, no changes)          │
//!                                │ 2. RedbFile::write    (one redb commit per change) │
//!                                │ 3. Keyspace::apply    (history + change log)       │
//!                                │ 4. watch::Sender<Revision>::send   ──wake──▶ watchers
//!   list(prefix, at) ───────────▶│ versions at or below `at`                          │
//!   watch(prefix, from) ────────▶│ each watcher keeps its next revision and pages     │
//!                                │ the change log from it when woken                  │
//!   lease timer task ───────────▶│ expires due leases: their keys deleted at one rev ─┘
//! ```
//!
//! - **One critical section per change.** Planning, the redb commit and the
//!   in-memory apply happen under one `std::sync::Mutex` with no `.await`
//!   inside, so the order on disk is the revision order, and a failed disk
//!   write changes nothing. Each revision is one durable redb commit (one
//!   fsync); write many keys at once with [`Store::batch`].
//! - **Watchers never lose events.** A watcher is a position (`next`
//!   revision) plus a `tokio::sync::watch` receiver used only as a wake-up; on
//!   wake-up it reads the change log from its position. A slow watcher is
//!   therefore never skipped: it either reads everything or, if the history it
//!   needs was compacted, yields [`WatchItem::Compacted`] and ends.
//! - **Bounded memory.** After each change, history older than
//!   [`EmbeddedOptions::retain_revisions`] revisions is compacted away.
//! - **Compaction point.** The compaction point is the oldest readable
//!   revision: `list(_, Some(at))` and `watch(_, from)` work for
//!   `at, from >= compaction point`. A fresh store's is 1. A reopened store
//!   has no history: its compaction point is the revision it reopened at.
//! - **Leases** use `tokio::time`, so tests can run under
//!   `#[tokio::test(start_paused = true)]`. One background task per store
//!   (spawned at the first lease, or at open when leases were restored; ended
//!   when the last handle drops) sleeps until the next deadline; every store
//!   operation also expires due leases first, so no caller ever observes a
//!   key whose lease deadline has passed. Expiry deletes the lease's keys at
//!   one revision. Leases are persisted with their TTL and get a full TTL
//!   again at open: a process that restarts has one TTL to keep them alive.

mod keyspace;
mod redb_file;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use self::keyspace::{Changes, Keyspace, LogRead};
use self::redb_file::RedbFile;
use crate::{
    Condition, KeyValue, LeaseId, ListResponse, Op, PutOptions, Revision, Store, StoreError, WatchBatch, WatchItem,
    WatchStream,
};

/// Tuning of an [`EmbeddedStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// How many revisions of history to keep for `list` at a past revision
    /// and for watchers that fall behind. After each change, history older
    /// than `current - retain_revisions` is compacted away, so memory holds
    /// the live keys plus at most this many revisions of changes. Default 10 000.
    pub retain_revisions: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { retain_revisions: 10_000 }
    }
}

/// How many revisions a watcher reads from the log per lock.
const WATCH_PAGE: usize = 256;

/// How long the lease task waits before retrying after a failed expiry write.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

/// An in-process [`Store`], in memory or backed by a redb file.
///
/// Cheap to clone: clones share one store. The store (and its file) closes
/// when the last clone is dropped; watch streams then end with
/// [`StoreError::Unavailable`].
#[derive(Clone)]
pub struct EmbeddedStore {
    core: Arc<Core>,
}

struct Core {
    state: Mutex<State>,
    /// Wakes the lease task when a lease is granted (its deadline may be the earliest).
    lease_granted: Arc<Notify>,
    path: Option<PathBuf>,
}

struct State {
    keyspace: Keyspace,
    file: Option<RedbFile>,
    retain_revisions: i64,
    /// Carries the latest revision; receivers use it only as a wake-up.
    changed: watch::Sender<Revision>,
    lease_task: Option<AbortHandle>,
}

impl Drop for Core {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(task) = state.lease_task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.core.path).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// An empty store that lives only in memory. Works outside a Tokio
    /// runtime; granting a lease needs one.
    pub fn in_memory() -> Self {
        Self::in_memory_with(EmbeddedOptions::default())
    }

    pub fn in_memory_with(options: EmbeddedOptions) -> Self {
        Self::from_parts(Keyspace::new(), None, None, options)
    }

    /// Open the store kept in `dir` (created if missing), in the file
    /// `meshplane-store.redb`. The live keys, their bookkeeping, the revision
    /// and the leases survive a reopen; history before it does not (the
    /// compaction point is the revision at open), and restored leases expire
    /// one TTL after the open unless kept alive.
    ///
    /// Unreadable or inconsistent data is [`StoreError::Corrupt`] naming the
    /// file; a file another store holds open is [`StoreError::Unavailable`].
    /// When leases are restored, this must run inside a Tokio runtime, which
    /// then drives their expiry.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Self, StoreError> {
        let (file, restored) = RedbFile::open(dir)?;
        let path = dir.join(redb_file::FILE_NAME);
        let keyspace = Keyspace::restore(restored, Instant::now())
            .map_err(|detail| StoreError::Corrupt { path: path.display().to_string(), detail })?;
        let has_leases = keyspace.has_leases();
        let store = Self::from_parts(keyspace, Some(file), Some(path), options);
        if has_leases {
            let mut state = store.core.lock()?;
            store.core.start_lease_task(&mut state)?;
        }
        Ok(store)
    }

    fn from_parts(keyspace: Keyspace, file: Option<RedbFile>, path: Option<PathBuf>, options: EmbeddedOptions) -> Self {
        let (changed, _) = watch::channel(keyspace.revision());
        let state = State {
            keyspace,
            file,
            retain_revisions: i64::try_from(options.retain_revisions).unwrap_or(i64::MAX),
            changed,
            lease_task: None,
        };
        EmbeddedStore {
            core: Arc::new(Core { state: Mutex::new(state), lease_granted: Arc::new(Notify::new()), path }),
        }
    }

    /// The database file, for an opened store.
    pub fn path(&self) -> Option<&Path> {
        self.core.path.as_deref()
    }
}

impl Core {
    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        self.state.lock().map_err(|_| {
            StoreError::Unavailable(
                "the embedded store's state was poisoned by a panic; restart the process".to_owned(),
            )
        })
    }

    /// Run `operation` on the state after expiring every lease already due.
    fn operate<T>(
        &self,
        operation: impl FnOnce(&mut State, Instant) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.lock()?;
        let now = Instant::now();
        state.expire_due_leases(now)?;
        operation(&mut state, now)
    }

    fn start_lease_task(self: &Arc<Self>, state: &mut State) -> Result<(), StoreError> {
        if state.lease_task.is_some() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Unavailable(
                "leases of the embedded store need a Tokio runtime to expire; use the store from inside one".to_owned(),
            )
        })?;
        let task = runtime.spawn(expire_leases(Arc::downgrade(self), self.lease_granted.clone()));
        state.lease_task = Some(task.abort_handle());
        Ok(())
    }
}

impl State {
    /// Persist, then apply, planned changes; wake watchers if the revision moved.
    fn commit(&mut self, changes: Changes, now: Instant) -> Result<Revision, StoreError> {
        if let Some(file) = &self.file {
            file.write(&changes)?;
        }
        let bumps = changes.bumps_revision();
        self.keyspace.apply(changes, now);
        let revision = self.keyspace.revision();
        if bumps {
            let oldest_kept = revision.saturating_sub(self.retain_revisions);
            if oldest_kept > self.keyspace.compact_revision() {
                self.keyspace.compact(oldest_kept)?;
            }
            self.changed.send_replace(revision);
        }
        Ok(revision)
    }

    fn expire_due_leases(&mut self, now: Instant) -> Result<(), StoreError> {
        while let Some(lease) = self.keyspace.due_lease(now) {
            let expiry = self.keyspace.plan_revoke(lease)?;
            tracing::debug!(%lease, keys = expiry.events.len(), "lease expired");
            self.commit(expiry, now)?;
        }
        Ok(())
    }
}

/// The per-store lease timer: sleeps until the earliest deadline (or a new
/// grant), expires what is due, and ends when the store is dropped.
async fn expire_leases(core: Weak<Core>, lease_granted: Arc<Notify>) {
    loop {
        let wake_at = {
            let Some(core) = core.upgrade() else { return };
            let now = Instant::now();
            let expired = core.lock().and_then(|mut state| {
                state.expire_due_leases(now)?;
                Ok(state.keyspace.next_deadline())
            });
            match expired {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "expiring leases failed; retrying");
                    Some(now + EXPIRY_RETRY)
                }
            }
        };
        match wake_at {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = lease_granted.notified() => {}
                }
            }
            None => lease_granted.notified().await,
        }
    }
}

/// One watch stream's position in the change log.
struct Watcher {
    core: Weak<Core>,
    prefix: String,
    next: Revision,
    changed: watch::Receiver<Revision>,
    pending: VecDeque<WatchBatch>,
    done: bool,
}

impl Watcher {
    async fn next_item(&mut self) -> Option<Result<WatchItem, StoreError>> {
        if self.done {
            return None;
        }
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(WatchItem::Batch(batch)));
            }
            // Mark the current revision seen before reading, so a change
            // committed after the read always wakes us.
            self.changed.borrow_and_update();
            match self.read() {
                Ok(LogRead::Compacted { compact_revision }) => {
                    self.done = true;
                    return Some(Ok(WatchItem::Compacted { compact_revision }));
                }
                Ok(LogRead::Batches { batches, next, caught_up }) => {
                    self.next = next;
                    self.pending.extend(batches);
                    if !self.pending.is_empty() || !caught_up {
                        continue;
                    }
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            }
            if self.changed.changed().await.is_err() {
                self.done = true;
                return Some(Err(store_dropped()));
            }
        }
    }

    fn read(&self) -> Result<LogRead, StoreError> {
        let core = self.core.upgrade().ok_or_else(store_dropped)?;
        let state = core.lock()?;
        Ok(state.keyspace.read_log(&self.prefix, self.next, WATCH_PAGE))
    }
}

fn store_dropped() -> StoreError {
    StoreError::Unavailable("the embedded store was dropped while being watched".to_owned())
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.core.operate(|state, _| Ok(state.keyspace.revision()))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.core.operate(|state, _| Ok(state.keyspace.get(key)))
    }

    async fn list(&self, prefix: &str, at: Option<Revision>) -> Result<ListResponse, StoreError> {
        self.core.operate(|state, _| state.keyspace.list(prefix, at))
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<Revision, StoreError> {
        self.core.operate(|state, now| {
            let changes = state.keyspace.plan_put(key, value, options)?;
            state.commit(changes, now)
        })
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>, StoreError> {
        self.core.operate(|state, now| match state.keyspace.plan_delete(key, condition)? {
            Some(changes) => state.commit(changes, now).map(Some),
            None => Ok(None),
        })
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Option<Revision>, StoreError> {
        self.core.operate(|state, now| match state.keyspace.plan_batch(&ops)? {
            Some(changes) => state.commit(changes, now).map(Some),
            None => Ok(None),
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let changed = self.core.lock()?.changed.subscribe();
        let watcher = Watcher {
            core: Arc::downgrade(&self.core),
            prefix: prefix.to_owned(),
            next: from,
            changed,
            pending: VecDeque::new(),
            done: false,
        };
        let stream = futures::stream::unfold(watcher, |mut watcher| async move {
            let item = watcher.next_item().await?;
            Some((item, watcher))
        });
        Ok(stream.boxed())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.core.operate(|state, _| state.keyspace.compact(revision))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let lease = self.core.operate(|state, now| {
            self.core.start_lease_task(state)?;
            let changes = state.keyspace.plan_grant(ttl)?;
            let (lease, _) = changes.granted_lease.expect("a grant creates a lease");
            state.commit(changes, now)?;
            Ok(lease)
        })?;
        self.core.lease_granted.notify_one();
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.core.operate(|state, now| state.keyspace.keep_alive(lease, now))
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.core.operate(|state, now| {
            let changes = state.keyspace.plan_revoke(lease)?;
            state.commit(changes, now).map(|_| ())
        })
    }
}
