//! # meshplane-store: the mesh snapshot as a revisioned, watchable keyspace
//!
//! Everything meshplane knows about the mesh (services, endpoints, Istio
//! config, shard membership) lives in one keyspace with etcd's semantics:
//!
//! ```text
//!   registry-sync ──put/delete/batch──▶ ┌───────────────┐ ──watch(prefix, rev)──▶ shard
//!                                       │     Store     │ ──list(prefix, rev)───▶ shard
//!   shard / frontend ──lease + put────▶ │ (rev 1,2,3..) │ ──watch(membership)───▶ frontend
//!                                       └───────────────┘
//!                        backends: Embedded (in-process, redb) | Etcd (a real etcd cluster)
//! ```
//!
//! Two backends implement it and pass the same [`conformance`] suite:
//! [`EmbeddedStore`] (one process; [`embedded`] explains its MVCC and lease
//! timer) and [`EtcdStore`] (every process of a sharded deployment on one
//! etcd cluster; [`etcd`] explains what maps to what in etcd, paged lists,
//! watches that resume across disconnects, and the few places etcd bends the
//! contract: lease TTLs in whole seconds, batches bounded by
//! `--max-txn-ops`).
//!
//! ## The contract
//! - The store has one global **revision**, starting at 1 for an empty store.
//!   Every successful `put`, `delete` of an existing key, or `batch` (atomic,
//!   all its operations at one revision) increments it by exactly one. A
//!   `delete` of a missing key, or a `batch` whose operations all change
//!   nothing, does not.
//! - `list(prefix, at)` returns every live key under `prefix` as of revision
//!   `at` (default: now), sorted by key, with the revision it answered at.
//!   Asking for a revision below the compaction point (the oldest revision
//!   still readable, set by `compact`), or above the current revision, is an
//!   error ([`StoreError::Compacted`], [`StoreError::FutureRevision`]).
//! - `put` and `delete` may be conditional on the key's current
//!   `mod_revision` ([`Condition`]); a failed condition is
//!   [`StoreError::Conflict`] and changes nothing.
//! - `watch(prefix, from)` yields every change with revision `>= from`, in
//!   revision order, grouped by revision (one [`WatchBatch`] per revision), with
//!   no gaps and no duplicates, for as long as the stream is held. If `from` is
//!   below the compaction point, or the watcher fell so far behind that
//!   history it needed was compacted away, the stream yields
//!   [`WatchItem::Compacted`] and ends: the caller must `list` again and watch
//!   from the list's revision + 1. A watcher is never silently skipped forward.
//! - Leases: `grant_lease(ttl)`; keys put with a lease are deleted (as one
//!   revision) when the lease expires or is revoked; `keep_alive` refreshes
//!   the TTL and fails with [`StoreError::LeaseNotFound`] once expired.
//!
//! ## Key layout
//! Keys are UTF-8 paths under a version prefix, so a future layout can live
//! beside this one during a migration:
//!
//! ```text
//! /meshplane/v1/clusters/{cluster}/{resource}/{namespace}/{name}   mesh objects
//! /meshplane/v1/clusters/{cluster}/{resource}/_/{name}             cluster-scoped objects (Namespace, Node)
//! /meshplane/v1/shards/{shard-id}                                  shard membership (leased)
//! ```
//! `{resource}` is the lower-case plural Kubernetes resource name
//! (`services`, `endpointslices`, `virtualservices`, ...). Values are the JSON
//! of the normalised model object (see `meshplane-model`). The layout is built
//! and parsed by `meshplane_model::key`, the only place that knows it.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub mod conformance;
pub mod embedded;
pub mod etcd;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// A store revision. Revision 1 is the empty store; each change adds one.
pub type Revision = i64;

/// The id of a lease granted by [`Store::grant_lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A live key and its value, with etcd's bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Number of puts since creation (1 after the first put).
    pub version: i64,
    pub lease: Option<LeaseId>,
}

/// The result of [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResponse {
    /// The revision this listing reflects; watch from `revision + 1` to follow it.
    pub revision: Revision,
    /// Live keys under the prefix, sorted by key.
    pub kvs: Vec<KeyValue>,
}

/// A precondition on a key's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always apply.
    None,
    /// Apply only if the key does not exist.
    Absent,
    /// Apply only if the key exists with exactly this `mod_revision`.
    ModRevision(Revision),
}

/// Options of [`Store::put`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOptions {
    pub condition: Condition,
    pub lease: Option<LeaseId>,
}

impl Default for PutOptions {
    fn default() -> Self {
        PutOptions { condition: Condition::None, lease: None }
    }
}

/// One operation of an atomic [`Store::batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Bytes },
    Delete { key: String },
}

/// What happened to a key at a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or changed; `kv.mod_revision` is the revision.
    Put(KeyValue),
    /// The key was deleted at `revision` (explicitly or by lease expiry).
    Delete { key: String, revision: Revision },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
}

/// All the changes under a watched prefix made at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    /// Sorted by key.
    pub events: Vec<Event>,
}

/// An item of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    Batch(WatchBatch),
    /// History the watcher needed is gone: list again, then watch from the
    /// listing's revision + 1. The stream ends after this item.
    Compacted {
        compact_revision: Revision,
    },
}

/// A watch stream. Errors are transport/backend failures; the stream ends after one.
pub type WatchStream = BoxStream<'static, Result<WatchItem, StoreError>>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "revision {requested} has been compacted (compaction point {compact_revision}); list the current state instead"
    )]
    Compacted { requested: Revision, compact_revision: Revision },
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision { requested: Revision, current: Revision },
    #[error("condition failed on key {key:?}: expected {expected:?}, found mod_revision {found:?}")]
    Conflict { key: String, expected: Condition, found: Option<Revision> },
    #[error("lease {0} not found (expired or revoked); grant a new lease and re-register")]
    LeaseNotFound(LeaseId),
    #[error("store data at {path} is unusable: {detail}; move it aside or point --data-dir elsewhere")]
    Corrupt { path: String, detail: String },
    #[error("store backend unavailable: {0}")]
    Unavailable(String),
    #[error("invalid store request: {0}")]
    Invalid(String),
}

/// The revisioned, watchable keyspace every meshplane process shares.
///
/// Implemented by [`EmbeddedStore`] (one process) and [`EtcdStore`] (an etcd
/// cluster). [`conformance`] holds the tests every implementation must pass.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;

    /// A live key, as of now.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every live key under `prefix` as of `at` (default: now), sorted by key.
    async fn list(&self, prefix: &str, at: Option<Revision>) -> Result<ListResponse, StoreError>;

    /// Create or replace a key. Returns the new revision.
    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<Revision, StoreError>;

    /// Delete a key. Returns the new revision, or `None` if the key did not
    /// exist (then nothing changed, and `Condition::Absent` holds trivially).
    async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>, StoreError>;

    /// Apply puts and deletes atomically at one revision. Puts of a value equal
    /// to the current one and deletes of missing keys are dropped; returns the
    /// new revision, or `None` if nothing changed. A key may appear only once
    /// in a batch ([`StoreError::Invalid`] otherwise).
    async fn batch(&self, ops: Vec<Op>) -> Result<Option<Revision>, StoreError>;

    /// The most operations one [`Store::batch`] may hold, if the backend has
    /// a limit (etcd: `--max-txn-ops`). Writers with more changes split them
    /// into several batches.
    fn max_batch_ops(&self) -> Option<usize> {
        None
    }

    /// Follow every change under `prefix` from revision `from` on.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// Forget history before `revision`: listing or watching below it answers
    /// `Compacted`. Compacting at or below the current compaction point is a no-op;
    /// compacting above the current revision is `FutureRevision`.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Grant a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Refresh a lease; returns its TTL.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revoke a lease now, deleting its keys at one revision.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}
