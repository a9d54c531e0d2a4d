//! The conformance suite against both flavours of [`EmbeddedStore`], in
//! virtual time, plus what only the embedded backend promises: persistence
//! across reopen, corruption reports and bounded history.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use meshplane_store::embedded::EmbeddedOptions;
use meshplane_store::{
    Condition, EmbeddedStore, Event, LeaseId, PutOptions, Store, StoreError, WatchBatch, WatchItem, WatchStream,
    conformance,
};
use tokio::time::{Instant, timeout};

macro_rules! embedded_suite {
    ($($check:ident),* $(,)?) => {
        mod in_memory {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    conformance::$check(&EmbeddedStore::in_memory()).await;
                }
            )*
        }

        mod on_disk {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let store = EmbeddedStore::open(dir.path()).expect("open a fresh store");
                    conformance::$check(&store).await;
                }
            )*
        }
    };
}

meshplane_store::for_each_conformance_check!(embedded_suite);

#[tokio::test(start_paused = true)]
async fn run_all_passes_on_in_memory_and_on_disk_stores() {
    conformance::run_all(|| async { EmbeddedStore::in_memory() }).await;
    let root = tempfile::tempdir().expect("temporary directory");
    let mut n = 0;
    conformance::run_all(|| {
        n += 1;
        let store = EmbeddedStore::open(&root.path().join(n.to_string())).expect("open");
        async move { store }
    })
    .await;
}

const DEADLINE: Duration = Duration::from_secs(30);

fn bytes(value: &str) -> Bytes {
    Bytes::from(value.to_owned())
}

async fn put(store: &EmbeddedStore, key: &str, value: &str) -> i64 {
    store.put(key, bytes(value), PutOptions::default()).await.expect("put")
}

async fn next_item(watch: &mut WatchStream) -> Result<WatchItem, StoreError> {
    timeout(DEADLINE, watch.next()).await.expect("a watch item within the deadline").expect("the stream has not ended")
}

async fn next_batch(watch: &mut WatchStream) -> WatchBatch {
    match next_item(watch).await {
        Ok(WatchItem::Batch(batch)) => batch,
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(dir).expect("open the store")
}

#[tokio::test(start_paused = true)]
async fn reopen_keeps_keys_bookkeeping_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (before, revision) = {
        let store = open(dir.path());
        put(&store, "/k/a", "1").await; // 2
        put(&store, "/k/a", "2").await; // 3
        put(&store, "/k/b", "1").await; // 4
        put(&store, "/k/gone", "1").await; // 5
        store.delete("/k/gone", Condition::None).await.unwrap(); // 6
        store.batch(vec![]).await.unwrap();
        (store.list("", None).await.unwrap(), store.revision().await.unwrap())
    };
    assert_eq!(revision, 6);

    let store = open(dir.path());
    assert_eq!(store.revision().await.unwrap(), 6, "the revision survives a reopen");
    let after = store.list("", None).await.unwrap();
    assert_eq!(after, before, "keys, values and bookkeeping survive a reopen");
    let a = store.get("/k/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 3, 2));
    assert_eq!(put(&store, "/k/a", "3").await, 7, "revisions continue after a reopen");
    assert_eq!(store.get("/k/a").await.unwrap().unwrap().version, 3);
}

#[tokio::test(start_paused = true)]
async fn history_before_a_reopen_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        put(&store, "/h/a", "1").await; // 2
        put(&store, "/h/b", "1").await; // 3
        store
            .batch(vec![
                meshplane_store::Op::Put { key: "/h/a".into(), value: bytes("2") },
                meshplane_store::Op::Delete { key: "/h/b".into() },
            ])
            .await
            .unwrap(); // 4
    }
    let store = open(dir.path());
    match store.list("/h/", Some(3)).await {
        Err(StoreError::Compacted { requested: 3, compact_revision: 4 }) => {}
        other => panic!("history before the reopen: expected Compacted at 4, got {other:?}"),
    }
    assert_eq!(store.list("/h/", Some(4)).await.unwrap().kvs.len(), 1, "the reopen revision is readable");

    let mut stale = store.watch("/h/", 3).await.unwrap();
    assert!(matches!(next_item(&mut stale).await, Ok(WatchItem::Compacted { compact_revision: 4 })));
    assert!(timeout(DEADLINE, stale.next()).await.unwrap().is_none(), "ends after Compacted");

    // The last revision's changes, deletions included, are still watchable.
    let mut watch = store.watch("/h/", 4).await.unwrap();
    let batch = next_batch(&mut watch).await;
    assert_eq!(batch.revision, 4);
    assert!(
        matches!(&batch.events[..], [Event::Put(a), Event::Delete { key, revision: 4 }]
            if a.key == "/h/a" && a.value == bytes("2") && key == "/h/b"),
        "revision 4 replayed after the reopen: {:?}",
        batch.events
    );
    put(&store, "/h/c", "1").await;
    assert_eq!(next_batch(&mut watch).await.revision, 5, "and the watch follows on");
}

#[tokio::test(start_paused = true)]
async fn leases_survive_a_reopen_and_expire_unless_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let (kept, dropped) = {
        let store = open(dir.path());
        let kept = store.grant_lease(Duration::from_secs(10)).await.unwrap();
        let dropped = store.grant_lease(Duration::from_secs(10)).await.unwrap();
        for (key, lease) in [("/l/kept", kept), ("/l/dropped", dropped)] {
            store.put(key, bytes("v"), PutOptions { lease: Some(lease), ..PutOptions::default() }).await.unwrap();
        }
        (kept, dropped)
    };
    // Time passes while the process is down; the TTL clock restarts at open.
    tokio::time::advance(Duration::from_secs(60)).await;

    let store = open(dir.path());
    let opened_at = Instant::now();
    assert_eq!(store.list("/l/", None).await.unwrap().kvs.len(), 2, "leased keys survive the reopen");
    assert_eq!(store.get("/l/kept").await.unwrap().unwrap().lease, Some(kept));
    let from = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("/l/", from).await.unwrap();
    let keep_alive = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(3));
            loop {
                ticks.tick().await;
                store.keep_alive(kept).await.expect("the kept lease stays alive");
            }
        })
    };
    let expiry = next_batch(&mut watch).await;
    assert!(opened_at.elapsed() >= Duration::from_secs(10), "a restored lease gets a full TTL");
    assert_eq!(expiry.events, vec![Event::Delete { key: "/l/dropped".into(), revision: from }]);
    assert!(matches!(store.keep_alive(dropped).await, Err(StoreError::LeaseNotFound(id)) if id == dropped));

    // Well past the TTL, the kept lease still holds its key.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(store.get("/l/kept").await.unwrap().is_some());
    keep_alive.abort();

    let fresh = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    assert!(fresh > kept && fresh > dropped, "lease ids are not reused after a reopen");
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_stays_expired_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let lease = {
        let store = open(dir.path());
        let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
        store.put("/e", bytes("v"), PutOptions { lease: Some(lease), ..PutOptions::default() }).await.unwrap();
        store.revoke_lease(lease).await.unwrap();
        lease
    };
    let store = open(dir.path());
    assert_eq!(store.get("/e").await.unwrap(), None);
    assert!(matches!(store.keep_alive(lease).await, Err(StoreError::LeaseNotFound(_))));
}

#[test]
fn garbage_in_the_file_is_reported_as_corrupt_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshplane-store.redb");
    std::fs::write(&file, b"this is not a redb database, just some bytes that happen to be here".repeat(100)).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Corrupt { path, detail }) => {
            assert_eq!(Path::new(&path), file, "the error names the file ({detail})");
            let message = StoreError::Corrupt { path, detail }.to_string();
            assert!(message.contains("move it aside"), "the message tells the operator what to do: {message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_foreign_redb_file_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meshplane-store.redb");
    {
        const KEYS: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("keys");
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(KEYS).unwrap().insert(1, 2).unwrap();
        txn.commit().unwrap();
    }
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Corrupt { path, .. }) => assert_eq!(Path::new(&path), file),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_directory_that_cannot_be_created_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    match EmbeddedStore::open(&blocker.join("store")) {
        Err(StoreError::Corrupt { path, .. }) => assert!(path.contains("a-file"), "{path}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn a_store_open_elsewhere_is_unavailable_not_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("already open"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_store_closes_the_file_and_ends_watches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    store.put("/d", bytes("v"), PutOptions { lease: Some(lease), ..PutOptions::default() }).await.unwrap();
    let mut watch = store.watch("", 1).await.unwrap();
    let clone = store.clone();
    drop(store);
    put(&clone, "/still-open", "v").await;
    drop(clone);

    // The watcher holds no strong reference: the file can be reopened at once.
    let reopened = open(dir.path());
    assert_eq!(reopened.revision().await.unwrap(), 3);
    drop(reopened);

    // It reads what it can, then reports the store gone and ends.
    let mut items = Vec::new();
    while let Some(item) = timeout(DEADLINE, watch.next()).await.expect("the watch ends") {
        items.push(item);
    }
    assert!(
        matches!(items.last(), Some(Err(StoreError::Unavailable(_)))),
        "the last item reports the dropped store: {items:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn history_is_bounded_by_retain_revisions() {
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions { retain_revisions: 5 });
    let mut lagging = store.watch("/b/", 2).await.unwrap();
    for i in 0..20 {
        put(&store, &format!("/b/{}", i % 3), &i.to_string()).await; // 2..=21
    }
    store.list("", Some(16)).await.expect("the last 5 revisions before 21 stay readable");
    match store.list("", Some(15)).await {
        Err(StoreError::Compacted { requested: 15, compact_revision: 16 }) => {}
        other => panic!("expected Compacted at 16, got {other:?}"),
    }
    // The lagging watcher is told, not skipped forward.
    assert!(matches!(next_item(&mut lagging).await, Ok(WatchItem::Compacted { compact_revision: 16 })));
    assert!(timeout(DEADLINE, lagging.next()).await.unwrap().is_none());

    // The recovery recipe: list, then watch from the listing's revision + 1.
    let listing = store.list("/b/", None).await.unwrap();
    assert_eq!(listing.kvs.len(), 3);
    let mut resumed = store.watch("/b/", listing.revision + 1).await.unwrap();
    put(&store, "/b/new", "v").await;
    assert_eq!(next_batch(&mut resumed).await.revision, listing.revision + 1);
}

#[tokio::test(start_paused = true)]
async fn a_watcher_keeping_up_is_not_compacted_by_unrelated_churn() {
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions { retain_revisions: 2 });
    let mut watch = store.watch("/mine/", 1).await.unwrap();
    for round in 0..10 {
        let revision = put(&store, "/mine/k", &round.to_string()).await;
        assert_eq!(next_batch(&mut watch).await.revision, revision);
        put(&store, "/other/k", "x").await;
    }
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_store() {
    let store = EmbeddedStore::in_memory();
    let clone = store.clone();
    put(&store, "/shared", "v").await;
    assert_eq!(clone.get("/shared").await.unwrap().unwrap().value, bytes("v"));
    let lease: LeaseId = clone.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.keep_alive(lease).await.unwrap();
}

#[test]
fn in_memory_works_outside_a_runtime_until_a_lease_is_needed() {
    let store = EmbeddedStore::in_memory();
    let revision = futures::executor::block_on(store.put("/k", bytes("v"), PutOptions::default()));
    assert_eq!(revision.unwrap(), 2);
    match futures::executor::block_on(store.grant_lease(Duration::from_secs(1))) {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("Tokio runtime"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_ttl_and_an_empty_key_are_invalid() {
    let store = EmbeddedStore::in_memory();
    assert!(matches!(store.grant_lease(Duration::ZERO).await, Err(StoreError::Invalid(_))));
    assert!(matches!(store.put("", bytes("v"), PutOptions::default()).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.revision().await.unwrap(), 1);
}

/// Real threads: concurrent writers and watchers. Every watcher sees every
/// revision exactly once, in order, whatever the interleaving.
async fn writers_and_watchers_agree_on_every_revision(store: EmbeddedStore) {
    const WRITERS: usize = 4;
    const PUTS: usize = 150;
    let last = 1 + (WRITERS * PUTS) as i64;
    let watchers: Vec<_> = (0..3)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut watch = store.watch("/c/", 2).await.unwrap();
                let mut seen = Vec::new();
                while seen.last() != Some(&last) {
                    let batch = next_batch(&mut watch).await;
                    assert_eq!(batch.events.len(), 1, "one put per revision");
                    seen.push(batch.revision);
                }
                seen
            })
        })
        .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..PUTS {
                    put(&store, &format!("/c/{w}/{}", i % 7), &i.to_string()).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for watcher in watchers {
        assert_eq!(watcher.await.unwrap(), (2..=last).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_watchers_in_memory() {
    writers_and_watchers_agree_on_every_revision(EmbeddedStore::in_memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_watchers_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    writers_and_watchers_agree_on_every_revision(open(dir.path())).await;
}
