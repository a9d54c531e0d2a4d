//! # The etcd backend: the [`Store`] contract on a real etcd cluster
//!
//! [`EtcdStore`] maps the contract one-to-one onto etcd's v3 API, so every
//! meshplane process that points `--store etcd://HOST:PORT[,...]` at the same
//! cluster shares one keyspace, one revision counter and one lease table. It
//! must not know about the mesh model, xDS or Kubernetes.
//!
//! ```text
//!   EtcdStore ──(one gRPC channel, balanced over the endpoints, connected lazily)──▶ etcd
//!     revision/get/list ─── Range (linearizable; list pages of `page_size` keys, all at one revision)
//!     put/delete + Condition ─ Put / DeleteRange, or Txn(compare create/mod_revision) else Range
//!     batch ──────────────── one Txn: per put a nested Txn(value == new ? nothing : Put), per delete a DeleteRange
//!     watch ─────────────── Watch(range, from - 1) ──▶ watch::Follower (re-opens after the last
//!                                                     revision delivered, after any disconnect)
//!     compact(r) ────────── Compaction at r - 1 (the store's compaction point is etcd's + 1)
//!     leases ────────────── LeaseGrant / LeaseKeepAlive (one exchange per call) / LeaseRevoke
//! ```
//!
//! ## What maps to what
//! - **Revisions** are etcd's store revision: a fresh etcd is at revision 1
//!   and every changing request adds one, exactly as the contract says.
//!   `create_revision`, `mod_revision`, `version` and `lease` of a
//!   [`KeyValue`] are etcd's own fields.
//! - **Keys** are the UTF-8 bytes of the key string; a prefix is the byte
//!   range `[prefix, prefix with its last byte + 1)` (the empty prefix is the
//!   whole keyspace). Keys written by other clients that are not UTF-8 are
//!   skipped, with a warning.
//! - **Conditions** are Txn compares: `Absent` is `create_revision == 0`,
//!   `ModRevision(r)` is `mod_revision == r` and `create_revision > 0`. The
//!   failure branch reads the key, so a [`StoreError::Conflict`] reports the
//!   `mod_revision` found by the same transaction.
//! - **Batches** are one Txn, so all their changes share one revision. A put
//!   is a nested Txn that writes only if the current value differs (a missing
//!   key always differs) and a delete of a missing key changes nothing, so
//!   dropped operations are decided by etcd inside the transaction, with no
//!   read-then-write race and no retries. The batch changed something if a
//!   nested put ran or a delete deleted.
//! - **Compaction point = etcd's compaction revision + 1.** etcd's
//!   compaction at `P` keeps the state at `P` but drops the tombstones of
//!   deletions made at `P`, so a watch from `P` would miss them. The contract
//!   promises every change from the compaction point on, so the store's
//!   compaction point is `P + 1`: `compact(r)` compacts etcd at `r - 1`; a
//!   `list` at `r >= 2` first checks that etcd still has `r - 1`; a watch
//!   starts its etcd watch one revision early (and drops that revision's
//!   events), which etcd refuses exactly when the start is below the store's
//!   compaction point. This holds for compactions made by anyone, etcd's own
//!   `--auto-compaction-*` included. etcd does not report its compaction
//!   revision on reads, so a [`StoreError::Compacted`] learns it the one way
//!   etcd tells: a watch started below it is answered with it.
//! - **Leases** are etcd leases; their ids are etcd's lease ids.
//!
//! ## Lists
//! `list` reads in pages of [`EtcdOptions::page_size`] keys. The first page
//! fixes the revision (the requested one, or the current one); every later
//! page is read at that revision, so the listing is one consistent snapshot
//! however many pages it takes and however much is written meanwhile. If a
//! compaction overtakes a listing of the current state between two pages, the
//! listing starts over (up to three times).
//!
//! ## Watches survive disconnects
//! A watch stream keeps the next revision it owes its caller. When the etcd
//! stream fails (etcd restarted, connection lost, leader lost: requests carry
//! etcd's require-leader flag, so a member cut off from its cluster ends its
//! watches instead of going silent), the stream re-opens the etcd watch from
//! that revision after a doubling backoff
//! ([`EtcdOptions::watch_retry_initial`] up to
//! [`EtcdOptions::watch_retry_max`]), without the caller noticing anything
//! but a pause: no revision is skipped or repeated. If the revision to resume
//! from was compacted meanwhile, the stream yields
//! [`WatchItem::Compacted`](crate::WatchItem::Compacted) and ends, and the
//! caller relists. Only a refusal that retrying cannot fix
//! (permissions) ends the stream with an error. HTTP/2 keep-alive pings
//! ([`EtcdOptions::keep_alive_interval`]) detect a peer that vanished without
//! closing the connection. The stream does nothing while it is not polled;
//! etcd keeps the events for it until then (or until they are compacted).
//!
//! ## Consistency
//! Reads are linearizable (etcd's default): a `get` or `list` sees every write
//! acknowledged before it started, on any member. Writes are acknowledged once
//! committed by a quorum. A write that fails with
//! [`StoreError::Unavailable`] (a timeout, a lost connection) may or may not
//! have been applied. The only requests retried automatically are those that
//! were never sent because no connection could be made to the endpoint the
//! channel picked: they are sent again at once, so with several endpoints a
//! dead member costs no failed request, and no write is ever applied twice.
//!
//! ## Starting while etcd is down
//! [`EtcdStore::connect`] does not contact etcd: the channel connects on the
//! first request and reconnects after every failure. A process started while
//! etcd is down therefore starts; its requests fail fast with
//! [`StoreError::Unavailable`] naming the endpoints until etcd is reachable,
//! its watches wait (retrying with backoff), and everything works once etcd
//! is up, without a restart.
//!
//! ## Where etcd bends the contract
//! - **Lease TTLs are whole seconds**: `grant_lease` rounds up, and etcd may
//!   raise a TTL to its minimum (1.5 election timeouts, rounded up to a
//!   second: 2 s with etcd's default flags). `keep_alive` returns the TTL etcd
//!   granted. etcd checks for expired leases every 500 ms, so a lease ends
//!   between its TTL and about half a second later.
//! - **Batch size**: one batch is one transaction, limited by etcd's
//!   `--max-txn-ops` (128 by default) and `--max-request-bytes` (1.5 MiB).
//!   etcd counts a nested transaction against what its parent leaves, so a
//!   batch may hold at most `--max-txn-ops - 1` operations (127 by default).
//!   A larger batch fails with [`StoreError::Invalid`] naming the flag to
//!   raise and changes nothing. [`Store::max_batch_ops`] reports the limit
//!   (from [`EtcdOptions::max_txn_ops`]), and writers with more changes, such
//!   as registry-sync's first load of a large directory, split them.
//! - After etcd was compacted at revision 1 (`compact(2)` on a fresh
//!   store), revision 1, the empty store, stays readable and watchable: etcd
//!   cannot tell that compaction from none, and nothing is lost by serving it.
//! - A watch that saw no event for a while resumes from its last event; if
//!   etcd compacted past it meanwhile, the stream reports `Compacted` even
//!   when nothing under its prefix changed. Relisting is then merely
//!   redundant, never wrong.

mod endpoints;
mod failure;
mod watch;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseClient, TxnOp, TxnOpResponse, TxnResponse,
    WatchClient, WatchOptions,
};
use tokio::time::Instant;

pub use self::endpoints::{DEFAULT_CLIENT_PORT, SCHEME, parse_etcd_url};
use self::failure::Failure;
use crate::{Condition, KeyValue, LeaseId, ListResponse, Op, PutOptions, Revision, Store, StoreError, WatchStream};

/// Tuning of an [`EtcdStore`]. The defaults suit a production cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Keys per `list` page (at least 1). Default 1000.
    pub page_size: u32,
    /// How long one request (one list page, one write) may take before it
    /// fails with [`StoreError::Unavailable`]. Default 10 s.
    pub request_timeout: Duration,
    /// How long establishing a TCP connection to an endpoint may take. Default 3 s.
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive ping interval while requests or watches are open,
    /// to detect an etcd that vanished without closing the connection. etcd
    /// answers pings more frequent than its `--grpc-keepalive-min-time`
    /// (default 5 s) with GOAWAY. Default 10 s.
    pub keep_alive_interval: Duration,
    /// How long to wait for a keep-alive ping's answer. Default 5 s.
    pub keep_alive_timeout: Duration,
    /// First delay before re-opening an interrupted watch. Default 100 ms.
    pub watch_retry_initial: Duration,
    /// Longest delay between attempts to re-open a watch. Default 3 s.
    pub watch_retry_max: Duration,
    /// Largest response message accepted (a list page, a watch response).
    /// Default 256 MiB.
    pub max_response_bytes: usize,
    /// etcd's `--max-txn-ops` (default 128): a batch may hold one less.
    pub max_txn_ops: usize,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            page_size: 1000,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            watch_retry_initial: Duration::from_millis(100),
            watch_retry_max: Duration::from_secs(3),
            max_response_bytes: 256 << 20,
            max_txn_ops: 128,
        }
    }
}

/// A [`Store`] on an etcd cluster (etcd 3.5 or newer).
///
/// Cheap to clone: clones share one connection. Watch streams hold their own
/// handle and keep working after the store is dropped.
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Owns the channel's endpoint set.
    _client: Client,
    kv: KvClient,
    watch: WatchClient,
    lease: LeaseClient,
    endpoints: Vec<String>,
    /// The endpoints as one string, for messages.
    endpoint_list: String,
    options: EtcdOptions,
}

/// A key that no meshplane key equals (meshplane keys start with `/`), for
/// requests that need a key but are about the store as a whole.
const PROBE_KEY: &[u8] = b"\0";

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.shared.endpoints).finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store on the etcd cluster at `endpoints` (`HOST:PORT` or
    /// `http://HOST:PORT`, as [`parse_etcd_url`] returns them).
    ///
    /// Does not contact etcd: the connection is made by the first request and
    /// re-made after any failure, so this succeeds while etcd is down (see
    /// the module docs). Must run inside a Tokio runtime. Fails only on
    /// malformed endpoints ([`StoreError::Invalid`]).
    pub async fn connect(endpoints: &[String], options: EtcdOptions) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("no etcd endpoints given".to_owned()));
        }
        let endpoint_list = endpoints.join(",");
        let connect_options = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_keep_alive(options.keep_alive_interval, options.keep_alive_timeout)
            // etcd's default keep-alive policy forbids pings without open streams.
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let client = Client::connect(endpoints, Some(connect_options))
            .await
            .map_err(|e| StoreError::Invalid(format!("cannot use etcd endpoints {endpoint_list}: {e}")))?;
        let kv = client.kv_client().max_decoding_message_size(options.max_response_bytes);
        let watch = client.watch_client().max_decoding_message_size(options.max_response_bytes);
        let lease = client.lease_client();
        let shared =
            Shared { _client: client, kv, watch, lease, endpoints: endpoints.to_vec(), endpoint_list, options };
        Ok(EtcdStore { shared: Arc::new(shared) })
    }

    /// [`connect`](Self::connect) to the endpoints of an
    /// `etcd://HOST:PORT[,HOST:PORT...]` URL.
    pub async fn connect_url(url: &str, options: EtcdOptions) -> Result<Self, StoreError> {
        Self::connect(&parse_etcd_url(url)?, options).await
    }

    /// The endpoints this store talks to.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }
}

impl Shared {
    /// Run one etcd request (made by `call`) under the request timeout. A
    /// request that could not be sent because no connection could be made to
    /// the endpoint the channel picked is sent again at once, up to twice per
    /// endpoint: another endpoint may be up, and an unsent request cannot
    /// have been applied.
    async fn request<T, Fut>(&self, mut call: impl FnMut() -> Fut) -> Result<T, Failure>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let attempts = 2 * self.endpoints.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match tokio::time::timeout_at(deadline, call()).await {
                Err(_) => return Err(Failure::Unreachable(format!("no answer within {timeout:?}"))),
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(error)) => match Failure::classify(&error) {
                    Failure::Unconnected(_) if attempt < attempts => continue,
                    failure => return Err(failure),
                },
            }
        }
    }

    async fn range(&self, key: &[u8], options: GetOptions) -> Result<etcd_client::GetResponse, Failure> {
        self.request(|| {
            let (mut kv, options) = (self.kv.clone(), options.clone());
            let key = key.to_vec();
            async move { kv.get(key, Some(options)).await }
        })
        .await
    }

    async fn txn(&self, txn: etcd_client::Txn) -> Result<TxnResponse, Failure> {
        self.request(|| {
            let (mut kv, txn) = (self.kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    fn error(&self, operation: &str, failure: Failure) -> StoreError {
        failure.into_store_error(operation, &self.endpoint_list)
    }

    /// A failure of a request that named `lease`.
    fn lease_error(&self, lease: Option<LeaseId>, operation: &str, failure: Failure) -> StoreError {
        match (failure, lease) {
            (Failure::LeaseNotFound, Some(lease)) => StoreError::LeaseNotFound(lease),
            (failure, _) => self.error(operation, failure),
        }
    }

    async fn current_revision(&self) -> Result<Revision, Failure> {
        let response = self.range(PROBE_KEY, GetOptions::new().with_count_only()).await?;
        header_revision(response.header())
    }

    /// The store's compaction point: etcd's compaction revision + 1 (see the
    /// module docs), or 1 if etcd has compacted nothing past revision 1.
    async fn compaction_point(&self) -> Result<Revision, Failure> {
        match self.range(PROBE_KEY, GetOptions::new().with_count_only().with_revision(1)).await {
            // etcd compacted at most at revision 1, the empty store, which
            // has no changes to lose: nothing the contract can tell apart.
            Ok(_) => return Ok(1),
            Err(Failure::Compacted) => {}
            Err(failure) => return Err(failure),
        }
        // etcd answers a watch started below its compaction revision with it.
        let probe = || {
            let mut watch = self.watch.clone();
            async move {
                let options = WatchOptions::new().with_start_revision(1);
                let mut stream = watch.watch(PROBE_KEY, Some(options)).await?;
                while let Some(response) = stream.message().await? {
                    if response.compact_revision() > 0 {
                        return Ok(Ok(response.compact_revision() + 1));
                    }
                    if response.canceled() {
                        let reason = response.cancel_reason().to_owned();
                        return Ok(Err(Failure::Unreachable(format!("etcd canceled a watch: {reason:?}"))));
                    }
                }
                Ok(Err(Failure::Unreachable("etcd ended a watch without an answer".to_owned())))
            }
        };
        self.request(probe).await?
    }

    /// The error for a read at `requested`, which etcd said was compacted.
    async fn compacted(&self, requested: Revision, operation: &str) -> StoreError {
        match self.compaction_point().await {
            Ok(compact_revision) => StoreError::Compacted { requested, compact_revision },
            Err(failure) => self.error(operation, failure),
        }
    }

    /// Every live key under `prefix` at `at` (0: now), page by page at one
    /// revision. On failure, also the revision the pages were read at (0 if
    /// none was read yet).
    async fn list_pages(&self, prefix: &str, at: Revision) -> Result<ListResponse, (Revision, Failure)> {
        if at >= 2 {
            // Revision `at` is below the compaction point unless etcd still
            // has revision `at - 1` (module docs: etcd's compaction + 1).
            let before = GetOptions::new().with_count_only().with_revision(at - 1);
            self.range(PROBE_KEY, before).await.map_err(|f| (at, f))?;
        }
        let (mut start, range_end) = key_range(prefix);
        let mut revision = at;
        let mut kvs = Vec::new();
        loop {
            let options = GetOptions::new()
                .with_range(range_end.clone())
                .with_limit(i64::from(self.options.page_size.max(1)))
                .with_revision(revision);
            let mut page = self.range(&start, options).await.map_err(|f| (revision, f))?;
            if revision == 0 {
                revision = header_revision(page.header()).map_err(|f| (revision, f))?;
            }
            let more = page.more();
            let page = page.take_kvs();
            let next_start = page.last().map(|kv| {
                let mut key = kv.key().to_vec();
                key.push(0);
                key
            });
            kvs.extend(page.into_iter().filter_map(convert_owned_kv));
            match next_start {
                Some(next_start) if more => start = next_start,
                _ => break,
            }
        }
        Ok(ListResponse { revision, kvs })
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn max_batch_ops(&self) -> Option<usize> {
        // A nested transaction per put counts against the parent's budget.
        Some(self.shared.options.max_txn_ops.saturating_sub(1).max(1))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let shared = &self.shared;
        shared.current_revision().await.map_err(|f| shared.error("a read of the revision", f))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        let shared = &self.shared;
        let mut response = shared
            .range(key.as_bytes(), GetOptions::new())
            .await
            .map_err(|f| shared.error(&format!("get {key:?}"), f))?;
        Ok(response.take_kvs().into_iter().next().and_then(convert_owned_kv))
    }

    async fn list(&self, prefix: &str, at: Option<Revision>) -> Result<ListResponse, StoreError> {
        let shared = &self.shared;
        let operation = || format!("a list of {prefix:?}");
        if let Some(at) = at
            && at < 1
        {
            return Err(shared.compacted(at, &operation()).await);
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (revision, failure) = match shared.list_pages(prefix, at.unwrap_or(0)).await {
                Ok(listing) => return Ok(listing),
                Err(failed) => failed,
            };
            match failure {
                // A compaction overtook a listing of the current state: start over.
                Failure::Compacted if at.is_none() && attempts < 3 => continue,
                Failure::Compacted => return Err(shared.compacted(revision, &operation()).await),
                Failure::FutureRevision => {
                    let current = shared.current_revision().await.map_err(|f| shared.error(&operation(), f))?;
                    if current >= revision && attempts < 3 {
                        continue;
                    }
                    return Err(StoreError::FutureRevision { requested: revision, current });
                }
                failure => return Err(shared.error(&operation(), failure)),
            }
        }
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<Revision, StoreError> {
        check_key(key)?;
        let shared = &self.shared;
        let operation = || format!("put {key:?}");
        let put_options = options.lease.map(|lease| etcd_client::PutOptions::new().with_lease(lease.0));
        let failed = |failure| shared.lease_error(options.lease, &operation(), failure);
        let condition = options.condition;
        if condition == Condition::None {
            let put = || {
                let (mut kv, options) = (shared.kv.clone(), put_options.clone());
                let (key, value) = (key.to_owned(), value.to_vec());
                async move { kv.put(key, value, options).await }
            };
            let response = shared.request(put).await.map_err(failed)?;
            return header_revision(response.header()).map_err(|f| shared.error(&operation(), f));
        }
        let txn = etcd_client::Txn::new()
            .when(compares(key, condition))
            .and_then([TxnOp::put(key, value.to_vec(), put_options)])
            .or_else([TxnOp::get(key, None)]);
        let response = shared.txn(txn).await.map_err(failed)?;
        if !response.succeeded() {
            return Err(StoreError::Conflict { key: key.to_owned(), expected: condition, found: found(&response) });
        }
        header_revision(response.header()).map_err(|f| shared.error(&operation(), f))
    }

    async fn delete(&self, key: &str, condition: Condition) -> Result<Option<Revision>, StoreError> {
        check_key(key)?;
        let shared = &self.shared;
        let operation = || format!("delete {key:?}");
        match condition {
            Condition::None => {
                let delete = || {
                    let (mut kv, key) = (shared.kv.clone(), key.to_owned());
                    async move { kv.delete(key, None).await }
                };
                let response = shared.request(delete).await.map_err(|f| shared.error(&operation(), f))?;
                if response.deleted() == 0 {
                    return Ok(None);
                }
                header_revision(response.header()).map(Some).map_err(|f| shared.error(&operation(), f))
            }
            Condition::Absent => {
                // Deleting a missing key changes nothing, so a read decides.
                match self.get(key).await? {
                    None => Ok(None),
                    Some(kv) => Err(StoreError::Conflict {
                        key: key.to_owned(),
                        expected: condition,
                        found: Some(kv.mod_revision),
                    }),
                }
            }
            Condition::ModRevision(_) => {
                let txn = etcd_client::Txn::new()
                    .when(compares(key, condition))
                    .and_then([TxnOp::delete(key, None)])
                    .or_else([TxnOp::get(key, None)]);
                let response = shared.txn(txn).await.map_err(|f| shared.error(&operation(), f))?;
                if !response.succeeded() {
                    return Err(StoreError::Conflict {
                        key: key.to_owned(),
                        expected: condition,
                        found: found(&response),
                    });
                }
                header_revision(response.header()).map(Some).map_err(|f| shared.error(&operation(), f))
            }
        }
    }

    async fn batch(&self, ops: Vec<Op>) -> Result<Option<Revision>, StoreError> {
        let mut by_key: BTreeMap<&str, &Op> = BTreeMap::new();
        for op in &ops {
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
        if by_key.is_empty() {
            return Ok(None);
        }
        let operation = format!("a batch of {} operations", by_key.len());
        let txn_ops: Vec<TxnOp> = by_key
            .into_values()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::txn(
                    etcd_client::Txn::new()
                        .when([Compare::value(key.as_str(), CompareOp::Equal, value.to_vec())])
                        .or_else([TxnOp::put(key.as_str(), value.to_vec(), None)]),
                ),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let shared = &self.shared;
        let response =
            shared.txn(etcd_client::Txn::new().and_then(txn_ops)).await.map_err(|f| shared.error(&operation, f))?;
        let changed = response.op_responses().iter().any(|op| match op {
            TxnOpResponse::Txn(put) => !put.succeeded(),
            TxnOpResponse::Delete(delete) => delete.deleted() > 0,
            TxnOpResponse::Put(_) | TxnOpResponse::Get(_) => false,
        });
        if !changed {
            return Ok(None);
        }
        header_revision(response.header()).map(Some).map_err(|f| shared.error(&operation, f))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        Ok(watch::follow(self.shared.clone(), prefix, from))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let shared = &self.shared;
        let operation = format!("a compaction at revision {revision}");
        // etcd would compact up to its current revision; the contract stops at ours.
        let current = shared.current_revision().await.map_err(|f| shared.error(&operation, f))?;
        if revision > current {
            return Err(StoreError::FutureRevision { requested: revision, current });
        }
        if revision <= 1 {
            return Ok(()); // The compaction point is at least 1.
        }
        // Compacting etcd at `revision - 1` keeps every change made at `revision`.
        let compact = || {
            let mut kv = shared.kv.clone();
            async move { kv.compact(revision - 1, None).await }
        };
        match shared.request(compact).await {
            // etcd refuses to compact at or below its compaction revision: a no-op here.
            Ok(_) | Err(Failure::Compacted) => Ok(()),
            Err(failure) => Err(shared.error(&operation, failure)),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::Invalid("a lease needs a TTL above zero".to_owned()));
        }
        // etcd counts TTLs in whole seconds: round up, never below the request.
        let seconds = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0));
        let seconds = i64::try_from(seconds)
            .map_err(|_| StoreError::Invalid(format!("a lease TTL of {ttl:?} is too long for etcd")))?;
        let shared = &self.shared;
        let operation = format!("a grant of a {seconds} s lease");
        let grant = || {
            let mut lease = shared.lease.clone();
            async move { lease.grant(seconds, None).await }
        };
        let response = shared.request(grant).await.map_err(|f| shared.error(&operation, f))?;
        if !response.error().is_empty() {
            return Err(shared.error(&operation, Failure::Unreachable(response.error().to_owned())));
        }
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let shared = &self.shared;
        let operation = format!("a keep-alive of lease {lease}");
        // The client's first exchange refreshes the lease but keeps the TTL to
        // itself; a second one on the same stream reports it.
        let exchange = || {
            let mut client: LeaseClient = shared.lease.clone();
            async move {
                let (mut keeper, mut responses) = client.keep_alive(lease.0).await?;
                keeper.keep_alive().await?;
                Ok(responses.message().await?.map(|response| response.ttl()))
            }
        };
        match shared.request(exchange).await {
            Ok(Some(ttl)) if ttl > 0 => Ok(Duration::from_secs(ttl.unsigned_abs())),
            Ok(Some(_)) => Err(StoreError::LeaseNotFound(lease)),
            Ok(None) => Err(shared.error(
                &operation,
                Failure::Unreachable("etcd ended the keep-alive stream without an answer".to_owned()),
            )),
            Err(failure) => Err(shared.lease_error(Some(lease), &operation, failure)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let shared = &self.shared;
        let revoke = || {
            let mut client = shared.lease.clone();
            async move { client.revoke(lease.0).await }
        };
        match shared.request(revoke).await {
            Ok(_) => Ok(()),
            Err(failure) => Err(shared.lease_error(Some(lease), &format!("a revoke of lease {lease}"), failure)),
        }
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid("the empty key cannot be stored".to_owned()));
    }
    Ok(())
}

/// The Txn compares for a condition other than [`Condition::None`].
fn compares(key: &str, condition: Condition) -> Vec<Compare> {
    match condition {
        Condition::None => Vec::new(),
        Condition::Absent => vec![Compare::create_revision(key, CompareOp::Equal, 0)],
        Condition::ModRevision(revision) => vec![
            Compare::mod_revision(key, CompareOp::Equal, revision),
            Compare::create_revision(key, CompareOp::Greater, 0),
        ],
    }
}

/// The `mod_revision` a failed conditional Txn read in its failure branch.
fn found(response: &TxnResponse) -> Option<Revision> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.mod_revision()),
        _ => None,
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, Failure> {
    header
        .map(|header| header.revision())
        .ok_or_else(|| Failure::Unreachable("etcd answered without a response header".to_owned()))
}

/// The etcd key range `[key, range_end)` of a byte prefix.
fn key_range(prefix: &str) -> (Vec<u8>, Vec<u8>) {
    let prefix = prefix.as_bytes();
    if prefix.is_empty() {
        // etcd's "every key": from "\0" to the end of the keyspace.
        return (vec![0], vec![0]);
    }
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    // Only 0xff bytes: every key from the prefix on.
    (prefix.to_vec(), vec![0])
}

fn convert_key(key: &[u8]) -> Option<String> {
    match std::str::from_utf8(key) {
        Ok(key) => Some(key.to_owned()),
        Err(_) => {
            warn_not_utf8(key);
            None
        }
    }
}

fn warn_not_utf8(key: &[u8]) {
    tracing::warn!(
        key = %String::from_utf8_lossy(key),
        "skipping an etcd key that is not UTF-8; meshplane keys are UTF-8 paths"
    );
}

fn lease_of(id: i64) -> Option<LeaseId> {
    (id != 0).then_some(LeaseId(id))
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Option<KeyValue> {
    Some(KeyValue {
        key: convert_key(kv.key())?,
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: lease_of(kv.lease()),
    })
}

fn convert_owned_kv(kv: etcd_client::KeyValue) -> Option<KeyValue> {
    let (create_revision, mod_revision, version, lease) =
        (kv.create_revision(), kv.mod_revision(), kv.version(), lease_of(kv.lease()));
    let (key, value) = kv.into_key_value();
    let key = match String::from_utf8(key) {
        Ok(key) => key,
        Err(e) => {
            warn_not_utf8(e.as_bytes());
            return None;
        }
    };
    Some(KeyValue { key, value: Bytes::from(value), create_revision, mod_revision, version, lease })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_keys_with_that_prefix() {
        assert_eq!(key_range("/a/b"), (b"/a/b".to_vec(), b"/a/c".to_vec()));
        assert_eq!(key_range("/a/b/"), (b"/a/b/".to_vec(), b"/a/b0".to_vec()));
        assert_eq!(key_range(""), (vec![0], vec![0]), "the empty prefix is every key");
        let high = "/\u{10FFFF}";
        let (start, end) = key_range(high);
        assert_eq!(start, high.as_bytes());
        assert!(end.as_slice() > high.as_bytes() && !end.starts_with(high.as_bytes()));
    }

    #[test]
    fn conditions_become_compares() {
        assert!(compares("/k", Condition::None).is_empty());
        assert_eq!(compares("/k", Condition::Absent).len(), 1);
        assert_eq!(compares("/k", Condition::ModRevision(7)).len(), 2, "mod_revision and existence");
    }

    #[tokio::test]
    async fn connect_does_not_contact_etcd() {
        // Nothing listens on port 1; connecting still succeeds.
        let store = EtcdStore::connect(&["127.0.0.1:1".to_owned()], EtcdOptions::default()).await.expect("connect");
        assert_eq!(store.endpoints(), ["127.0.0.1:1"]);
        match store.revision().await {
            Err(StoreError::Unavailable(message)) => {
                for part in ["127.0.0.1:1", "tcp connect error", "refused", "endpoint health"] {
                    assert!(message.contains(part), "{part:?} in {message}");
                }
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn no_endpoints_is_invalid() {
        assert!(matches!(EtcdStore::connect(&[], EtcdOptions::default()).await, Err(StoreError::Invalid(_))));
        assert!(matches!(EtcdStore::connect_url("etcd://", EtcdOptions::default()).await, Err(StoreError::Invalid(_))));
    }
}
