//! The conformance suite against a real etcd (one fresh etcd per check, since
//! the checks assert exact revisions from 1), plus what only the etcd backend
//! has to prove: watches that survive etcd restarts, compaction during a
//! disconnect, paged listings, and a store created while etcd is down.
//!
//! etcd comes from `MESHPLANE_ETCD` (`source scripts/peer-env.sh`, or run
//! `scripts/test.sh`); without it these tests fail, they never skip.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use meshplane_store::etcd::EtcdOptions;
use meshplane_store::{
    Condition, EtcdStore, Event, Op, PutOptions, Revision, Store, StoreError, WatchBatch, WatchItem, WatchStream,
    conformance,
};
use support::etcd_process::EtcdProcess;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// How long a test waits for something it expects.
const DEADLINE: Duration = Duration::from_secs(30);

/// Short retry delays, so a watch re-opens promptly once etcd is back.
fn test_options() -> EtcdOptions {
    EtcdOptions {
        request_timeout: Duration::from_secs(5),
        watch_retry_initial: Duration::from_millis(20),
        watch_retry_max: Duration::from_millis(250),
        ..EtcdOptions::default()
    }
}

async fn connect(etcd: &EtcdProcess) -> EtcdStore {
    connect_with(etcd, test_options()).await
}

async fn connect_with(etcd: &EtcdProcess, options: EtcdOptions) -> EtcdStore {
    EtcdStore::connect(&[etcd.endpoint()], options).await.expect("connect to etcd")
}

macro_rules! etcd_suite {
    ($($check:ident),* $(,)?) => {
        mod conformance_on_a_fresh_etcd {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let etcd = EtcdProcess::start().await;
                    let store = connect(&etcd).await;
                    conformance::$check(&store).await;
                }
            )*
        }
    };
}

meshplane_store::for_each_conformance_check!(etcd_suite);

fn bytes(value: &str) -> Bytes {
    Bytes::from(value.to_owned())
}

async fn put(store: &EtcdStore, key: &str, value: &str) -> Revision {
    store.put(key, bytes(value), PutOptions::default()).await.unwrap_or_else(|e| panic!("put {key:?}: {e}"))
}

async fn delete(store: &EtcdStore, key: &str) -> Revision {
    store
        .delete(key, Condition::None)
        .await
        .unwrap_or_else(|e| panic!("delete {key:?}: {e}"))
        .unwrap_or_else(|| panic!("{key:?} should exist"))
}

async fn next_item(watch: &mut WatchStream, context: &str) -> WatchItem {
    match timeout(DEADLINE, watch.next()).await {
        Err(_) => panic!("{context}: no watch item within {DEADLINE:?}"),
        Ok(None) => panic!("{context}: the watch ended"),
        Ok(Some(Err(e))) => panic!("{context}: the watch failed: {e}"),
        Ok(Some(Ok(item))) => item,
    }
}

async fn next_batch(watch: &mut WatchStream, context: &str) -> WatchBatch {
    match next_item(watch, context).await {
        WatchItem::Batch(batch) => batch,
        other => panic!("{context}: expected a batch, got {other:?}"),
    }
}

/// Poll a watch from a task, so it keeps running (and retrying) while the
/// test does other things; items arrive on the returned channel.
fn poll_in_background(mut watch: WatchStream) -> mpsc::UnboundedReceiver<Result<WatchItem, StoreError>> {
    let (items, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = watch.next().await {
            if items.send(item).is_err() {
                return;
            }
        }
    });
    received
}

async fn received_batch(
    items: &mut mpsc::UnboundedReceiver<Result<WatchItem, StoreError>>,
    context: &str,
) -> WatchBatch {
    match timeout(DEADLINE, items.recv()).await {
        Err(_) => panic!("{context}: no watch item within {DEADLINE:?}"),
        Ok(None) => panic!("{context}: the watch ended"),
        Ok(Some(Ok(WatchItem::Batch(batch)))) => batch,
        Ok(Some(other)) => panic!("{context}: expected a batch, got {other:?}"),
    }
}

/// A batch as (revision, ["put key=value" | "delete key", ...]).
fn describe(batch: &WatchBatch) -> (Revision, Vec<String>) {
    let events = batch
        .events
        .iter()
        .map(|event| match event {
            Event::Put(kv) => format!("put {}={}", kv.key, String::from_utf8_lossy(&kv.value)),
            Event::Delete { key, .. } => format!("delete {key}"),
        })
        .collect();
    (batch.revision, events)
}

fn expect_unavailable_naming(result: Result<impl std::fmt::Debug, StoreError>, endpoint: &str, context: &str) {
    match result {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(endpoint), "{context}: the error names the endpoint {endpoint}: {message}")
        }
        other => panic!("{context}: expected Unavailable, got {other:?}"),
    }
}

/// A watch polled throughout two etcd restarts (stopped, then started again
/// on the same data and ports) delivers every revision under its prefix
/// exactly once, in order: it waits out the downtime, during which requests
/// fail naming the endpoint, and re-opens from the revision after the last
/// one it delivered. (etcd is stopped with SIGTERM rather than SIGKILL: see
/// `EtcdProcess::kill` for the etcd 3.5.1 bug that would make revisions
/// themselves unreliable.)
#[tokio::test]
async fn a_watch_survives_etcd_restarts_without_gap_or_duplicate() {
    let mut etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    let first = put(&store, "/r/start", "v").await;
    let mut items = poll_in_background(store.watch("/r/", first).await.expect("watch"));
    assert_eq!(received_batch(&mut items, "before any restart").await.revision, first);

    let mut expected: Vec<(Revision, Vec<String>)> = Vec::new();
    for round in 0..2 {
        etcd.stop().await;
        expect_unavailable_naming(put_result(&store, "/r/while-down").await, &etcd.endpoint(), "a put while down");
        etcd.launch().await;
        for i in 0..3 {
            let key = format!("/r/{round}/{i}");
            expected.push((put(&store, &key, "v").await, vec![format!("put {key}=v")]));
            put(&store, "/outside/prefix", &format!("{round}.{i}")).await;
        }
        let gone = format!("/r/{round}/0");
        expected.push((delete(&store, &gone).await, vec![format!("delete {gone}")]));
    }
    for (revision, events) in &expected {
        let batch = received_batch(&mut items, &format!("revision {revision}")).await;
        assert_eq!(describe(&batch), (*revision, events.clone()), "after the restarts, in order, without gaps");
    }
    let last = put(&store, "/r/last", "v").await;
    let batch = received_batch(&mut items, "the change after everything").await;
    assert_eq!(batch.revision, last, "nothing is delivered twice");
}

async fn put_result(store: &EtcdStore, key: &str) -> Result<Revision, StoreError> {
    store.put(key, bytes("v"), PutOptions::default()).await
}

/// With three members, losing any one of them (then getting it back and
/// losing another) fails no request once the cluster has a leader again,
/// and a watch carries on through every change without a gap.
#[tokio::test]
async fn a_three_member_cluster_serves_every_request_while_one_member_is_down() {
    let mut cluster = EtcdProcess::start_cluster(3).await;
    let endpoints: Vec<String> = cluster.iter().map(EtcdProcess::endpoint).collect();
    let store = EtcdStore::connect(&endpoints, test_options()).await.expect("connect");
    let mut items = poll_in_background(store.watch("/c/", 2).await.expect("watch"));
    let mut written = Vec::new();
    for down in 0..3 {
        cluster[down].stop().await;
        for member in cluster.iter_mut().filter(|member| member.is_running()) {
            member.wait_healthy().await.expect("the other members elect a leader");
        }
        for i in 0..40 {
            let key = format!("/c/{down}/{i}");
            let revision = store
                .put(&key, bytes("v"), PutOptions::default())
                .await
                .unwrap_or_else(|e| panic!("put {key:?} with member {down} down: {e}"));
            assert!(store.get(&key).await.expect("get").is_some(), "{key} is readable with member {down} down");
            written.push((revision, key));
        }
        cluster[down].launch().await;
    }
    for (revision, key) in &written {
        let batch = received_batch(&mut items, &format!("revision {revision}")).await;
        assert_eq!(describe(&batch), (*revision, vec![format!("put {key}=v")]), "every change once, in order");
    }
}

/// A watch that is not polled while etcd restarts, and so re-opens only
/// after changes were made, catches up on them from etcd's history.
#[tokio::test]
async fn an_unpolled_watch_catches_up_from_history_after_a_restart() {
    let mut etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    let first = put(&store, "/u/a", "1").await;
    let mut watch = store.watch("/u/", first).await.expect("watch");
    assert_eq!(next_batch(&mut watch, "before the restart").await.revision, first);

    etcd.restart().await;
    let updated = put(&store, "/u/a", "2").await;
    let batched = store
        .batch(vec![Op::Put { key: "/u/b".into(), value: bytes("1") }, Op::Delete { key: "/u/a".into() }])
        .await
        .expect("batch")
        .expect("the batch changes something");
    assert_eq!(describe(&next_batch(&mut watch, "the update").await), (updated, vec!["put /u/a=2".to_owned()]));
    assert_eq!(
        describe(&next_batch(&mut watch, "the batch").await),
        (batched, vec!["delete /u/a".to_owned(), "put /u/b=1".into()])
    );
}

/// The recovery a watcher relies on: if etcd compacted past the revision a
/// disconnected watch must resume from, the watch says `Compacted` and
/// ends; a relist then gives exactly the store's state (deleted keys gone,
/// new ones present) and a watch from the relist's revision + 1 follows on.
#[tokio::test]
async fn a_watch_resuming_below_the_compaction_point_reports_compacted_and_a_relist_converges() {
    let mut etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    for key in ["/m/a", "/m/b", "/m/c"] {
        put(&store, key, "1").await;
    }
    let listing = store.list("/m/", None).await.expect("list");
    let mut mirror: BTreeMap<String, Bytes> = listing.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let mut watch = store.watch("/m/", listing.revision + 1).await.expect("watch");
    put(&store, "/m/d", "1").await;
    apply(&mut mirror, next_batch(&mut watch, "before the restart").await);

    etcd.restart().await;
    delete(&store, "/m/a").await;
    put(&store, "/m/b", "2").await;
    put(&store, "/m/e", "1").await;
    let now = store.revision().await.expect("revision");
    store.compact(now).await.expect("compact");
    match next_item(&mut watch, "resuming below the compaction point").await {
        WatchItem::Compacted { compact_revision } => assert_eq!(compact_revision, now),
        other => panic!("expected Compacted at {now}, got {other:?}"),
    }
    assert!(timeout(DEADLINE, watch.next()).await.expect("the watch ends").is_none(), "nothing after Compacted");

    let relisted = store.list("/m/", None).await.expect("relist");
    mirror = relisted.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    let keys: Vec<&str> = mirror.keys().map(String::as_str).collect();
    assert_eq!(keys, ["/m/b", "/m/c", "/m/d", "/m/e"], "no stale key kept, none missed");
    assert_eq!(mirror["/m/b"], bytes("2"));
    let mut watch = store.watch("/m/", relisted.revision + 1).await.expect("watch after the relist");
    delete(&store, "/m/c").await;
    apply(&mut mirror, next_batch(&mut watch, "after the relist").await);
    let truth: BTreeMap<String, Bytes> =
        store.list("/m/", None).await.expect("list").kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
    assert_eq!(mirror, truth, "the mirror converged on the store's state");
}

fn apply(mirror: &mut BTreeMap<String, Bytes>, batch: WatchBatch) {
    for event in batch.events {
        match event {
            Event::Put(kv) => {
                mirror.insert(kv.key, kv.value);
            }
            Event::Delete { key, .. } => {
                mirror.remove(&key);
            }
        }
    }
}

/// etcd forgets deletions made at its compaction revision; the store's
/// compaction point is one above it, so watching from the compaction point
/// still sees them, whoever compacted (here: the store, then etcd directly).
#[tokio::test]
async fn a_watch_from_the_compaction_point_sees_deletions_made_there() {
    let etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    put(&store, "/d/a", "1").await; // 2
    put(&store, "/d/b", "1").await; // 3
    let both = vec![Op::Delete { key: "/d/a".into() }, Op::Put { key: "/d/c".into(), value: bytes("1") }];
    let at = store.batch(both).await.expect("batch").expect("a change"); // 4
    store.compact(at).await.expect("compact");
    let mut watch = store.watch("/d/", at).await.expect("watch from the compaction point");
    assert_eq!(
        describe(&next_batch(&mut watch, "the compaction point").await),
        (at, vec!["delete /d/a".to_owned(), "put /d/c=1".into()])
    );

    // A compaction made directly in etcd (etcdctl, --auto-compaction) at P
    // puts the store's compaction point at P + 1.
    let deleted = delete(&store, "/d/b").await; // 5
    put(&store, "/d/e", "1").await; // 6
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.expect("etcd client");
    client.compact(deleted, None).await.expect("compact etcd directly");
    match store.list("/d/", Some(deleted)).await {
        Err(StoreError::Compacted { requested, compact_revision }) => {
            assert_eq!((requested, compact_revision), (deleted, deleted + 1))
        }
        other => panic!("list at etcd's compaction revision: expected Compacted, got {other:?}"),
    }
    let mut stale = store.watch("/d/", deleted).await.expect("watch");
    assert_eq!(next_item(&mut stale, "a watch below").await, WatchItem::Compacted { compact_revision: deleted + 1 });
    let listing = store.list("/d/", Some(deleted + 1)).await.expect("list at the compaction point");
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/d/c", "/d/e"]);
}

/// Revisions below 1 are below every compaction point.
#[tokio::test]
async fn revisions_below_the_first_are_compacted() {
    let etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    match store.list("", Some(0)).await {
        Err(StoreError::Compacted { requested: 0, compact_revision: 1 }) => {}
        other => panic!("list at 0 of a fresh store: expected Compacted at 1, got {other:?}"),
    }
    let mut watch = store.watch("", 0).await.expect("watch");
    assert_eq!(next_item(&mut watch, "a watch from 0").await, WatchItem::Compacted { compact_revision: 1 });
    for value in ["1", "2", "3"] {
        put(&store, "/k", value).await; // 2..=4
    }
    store.compact(3).await.expect("compact");
    match store.list("", Some(0)).await {
        Err(StoreError::Compacted { requested: 0, compact_revision: 3 }) => {}
        other => panic!("list at 0 after compact(3): expected Compacted at 3, got {other:?}"),
    }
    store.compact(0).await.expect("compacting below 1 is a no-op");
}

/// Listings larger than a page read every page at the revision of the first,
/// whatever is written meanwhile.
#[tokio::test]
async fn a_listing_reads_every_page_at_one_revision() {
    let etcd = EtcdProcess::start().await;
    let paged = connect_with(&etcd, EtcdOptions { page_size: 7, ..test_options() }).await;
    let whole = connect(&etcd).await;
    // 49 keys: exactly 7 full pages. Keys just outside the prefix on both sides.
    let ops: Vec<Op> = (0..49)
        .map(|i| Op::Put { key: format!("/p/{i:02}"), value: bytes(&i.to_string()) })
        .chain(
            ["/p", "/p.", "/p0", "/o/z", "/q/a"].into_iter().map(|key| Op::Put { key: key.into(), value: bytes("x") }),
        )
        .collect();
    paged.batch(ops).await.expect("batch");
    let listing = paged.list("/p/", None).await.expect("paged list");
    let keys: Vec<String> = listing.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, (0..49).map(|i| format!("/p/{i:02}")).collect::<Vec<_>>(), "every key once, sorted");
    assert_eq!(whole.list("/p/", None).await.expect("list"), listing, "paged and unpaged listings agree");

    // A past revision, across pages.
    let before = listing.revision;
    whole.batch((0..49).step_by(3).map(|i| Op::Delete { key: format!("/p/{i:02}") }).collect()).await.expect("batch");
    put(&whole, "/p/99", "new").await;
    assert_eq!(paged.list("/p/", Some(before)).await.expect("paged list at a past revision"), listing);

    // Writes between pages do not leak into the listing.
    let tiny = connect_with(&etcd, EtcdOptions { page_size: 2, ..test_options() }).await;
    let writer = {
        let whole = whole.clone();
        tokio::spawn(async move {
            for round in 0.. {
                let key = format!("/p/{:02}", round % 60);
                let value = format!("round {round}");
                if round % 4 == 3 {
                    let _ = whole.delete(&key, Condition::None).await;
                } else {
                    whole.put(&key, Bytes::from(value), PutOptions::default()).await.expect("put");
                }
            }
        })
    };
    let mut listings = Vec::new();
    for _ in 0..5 {
        listings.push(tiny.list("/p/", None).await.expect("list in pages of 2"));
    }
    writer.abort();
    let revisions: Vec<Revision> = listings.iter().map(|l| l.revision).collect();
    assert!(revisions.windows(2).any(|w| w[0] != w[1]), "the writer wrote during the listings: {revisions:?}");
    for listing in listings {
        let at = whole.list("/p/", Some(listing.revision)).await.expect("list at the listing's revision");
        assert_eq!(listing, at, "the paged listing is the state at revision {}", listing.revision);
    }
}

/// A process can create its store and watches while etcd is down; requests
/// fail with a hint until etcd is up, then everything works, watches included.
#[tokio::test]
async fn a_store_created_while_etcd_is_down_works_once_it_is_up() {
    let mut etcd = EtcdProcess::unstarted();
    let store = connect(&etcd).await;
    expect_unavailable_naming(store.revision().await, &etcd.endpoint(), "a read while etcd was never up");
    let mut items = poll_in_background(store.watch("/", 2).await.expect("a watch while etcd is down"));

    etcd.launch().await;
    assert_eq!(put(&store, "/up", "v").await, 2, "the first write to a fresh etcd");
    assert_eq!(describe(&received_batch(&mut items, "the first write").await), (2, vec!["put /up=v".to_owned()]));
    assert_eq!(store.revision().await.expect("revision"), 2);
}

/// One batch is one etcd transaction, bounded by `--max-txn-ops` (128 by
/// default, which leaves room for 127 operations): a larger one fails, says
/// which flag to raise, and changes nothing.
#[tokio::test]
async fn a_batch_above_max_txn_ops_names_the_flag_and_changes_nothing() {
    let etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    let ops = |n: usize| (0..n).map(|i| Op::Put { key: format!("/b/{i:03}"), value: bytes("v") }).collect();
    match store.batch(ops(128)).await {
        Err(StoreError::Invalid(message)) => assert!(message.contains("--max-txn-ops"), "{message}"),
        other => panic!("a batch of 128 operations: expected Invalid, got {other:?}"),
    }
    assert_eq!(store.revision().await.expect("revision"), 1);
    assert_eq!(store.batch(ops(127)).await.expect("a batch of 127 operations"), Some(2));
}

/// etcd counts lease TTLs in whole seconds: a TTL is rounded up, never down.
#[tokio::test]
async fn lease_ttls_are_rounded_up_to_whole_seconds() {
    let etcd = EtcdProcess::start().await;
    let store = connect(&etcd).await;
    let lease = store.grant_lease(Duration::from_millis(1200)).await.expect("grant");
    assert_eq!(store.keep_alive(lease).await.expect("keep-alive"), Duration::from_secs(2));
    let lease = store.grant_lease(Duration::from_secs(5)).await.expect("grant");
    assert_eq!(store.keep_alive(lease).await.expect("keep-alive"), Duration::from_secs(5));
    assert!(matches!(store.grant_lease(Duration::ZERO).await, Err(StoreError::Invalid(_))));
}
