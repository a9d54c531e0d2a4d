//! # Conformance suite: the [`Store`] contract as executable checks
//!
//! Every backend must pass every check here; the checks know nothing about
//! any backend. Each check is a `pub async fn(&dyn Store)` that expects a
//! **fresh, empty store** (revision 1) and panics with a message naming what
//! broke.
//!
//! ```text
//!   backend tests ──for_each_conformance_check!(their_macro)──▶ one #[tokio::test] per check
//!                 ──run_all(|| async { fresh store })─────────▶ every check in one test
//! ```
//!
//! ## Time
//! Lease checks measure time with `tokio::time` only (`sleep`, `timeout`,
//! `Instant`); they never sleep to wait for something observable: they wait
//! for the watch event that shows it, bounded by [`DEADLINE`].
//! - Under `#[tokio::test(start_paused = true)]` with an in-process backend
//!   whose leases run on `tokio::time`, the whole suite runs in virtual time:
//!   instant and deterministic.
//! - Against a real server (etcd), the lease checks take a few
//!   [`LEASE_TTL`]s of wall time. Their one timing assumption is that a
//!   keep-alive round trip takes less than two thirds of [`LEASE_TTL`].
//!
//! ## Using it from a backend's tests
//! One test per check (here for the embedded backend; an etcd backend's
//! tests would start each check on an empty etcd instead):
//! ```
//! macro_rules! embedded_suite {
//!     ($($check:ident),* $(,)?) => {$(
//!         #[tokio::test]
//!         async fn $check() {
//!             let store = meshplane_store::EmbeddedStore::in_memory();
//!             meshplane_store::conformance::$check(&store).await;
//!         }
//!     )*};
//! }
//! meshplane_store::for_each_conformance_check!(embedded_suite);
//! # fn main() {}
//! ```
//! or every check in one test with [`run_all`].

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::{Instant, sleep, timeout};

use crate::{
    Condition, Event, KeyValue, LeaseId, Op, PutOptions, Revision, Store, StoreError, WatchBatch, WatchItem,
    WatchStream,
};

/// The TTL the lease checks grant (whole seconds, as etcd counts them).
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How long a check waits for something it expects before failing.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Calls `$callback! { check, check, ... }` with the name of every check in
/// this module, so a backend's test file can generate one test per check
/// without repeating the list.
#[macro_export]
macro_rules! for_each_conformance_check {
    ($callback:ident) => {
        $callback! {
            initial_revision,
            writes_increment_revision,
            list_by_byte_prefix,
            list_at_past_revision,
            list_outside_history_fails,
            conditional_put,
            conditional_delete,
            key_bookkeeping,
            batch_is_atomic,
            watch_replays_then_follows,
            watch_resume_has_no_gap_or_duplicate,
            watch_from_compacted_revision,
            watch_from_future_revision,
            lagging_watcher_receives_everything,
            lease_expiry_deletes_keys_at_one_revision,
            keep_alive_extends_lease,
            revoke_deletes_keys_at_one_revision,
            put_with_unknown_lease_fails,
        }
    };
}

/// Run every check, each on a store from `fresh_store`.
pub async fn run_all<S, F, Fut>(mut fresh_store: F)
where
    S: Store,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    macro_rules! run_each {
        ($($check:ident),* $(,)?) => {$(
            let store = fresh_store().await;
            tracing::info!(check = stringify!($check), "store conformance check");
            $check(&store).await;
        )*};
    }
    crate::for_each_conformance_check!(run_each);
}

/// A fresh store is at revision 1 and empty.
pub async fn initial_revision(store: &dyn Store) {
    assert_eq!(revision(store).await, 1, "a fresh store starts at revision 1");
    let listing = store.list("", None).await.expect("list a fresh store");
    assert_eq!(listing.revision, 1, "listing a fresh store answers at revision 1");
    assert!(listing.kvs.is_empty(), "a fresh store lists nothing, got {:?}", listing.kvs);
    let at_one = store.list("", Some(1)).await.expect("list a fresh store at revision 1");
    assert!(at_one.kvs.is_empty(), "revision 1 is the empty store");
    assert_eq!(store.get("/missing").await.expect("get"), None, "a fresh store has no keys");
}

/// Every put, delete of an existing key and changing batch adds exactly one
/// revision; no-op deletes and batches add none.
pub async fn writes_increment_revision(store: &dyn Store) {
    assert_eq!(put(store, "/k", "a").await, 2, "first put");
    assert_eq!(put(store, "/k", "a").await, 3, "a put of the same value is still a change");
    assert_eq!(store.delete("/k", Condition::None).await.expect("delete"), Some(4), "delete");
    assert_eq!(store.delete("/k", Condition::None).await.expect("delete"), None, "no-op delete");
    assert_eq!(
        store.delete("/never", Condition::Absent).await.expect("delete"),
        None,
        "deleting a missing key under Condition::Absent is a no-op"
    );
    assert_eq!(revision(store).await, 4, "no-op deletes leave the revision alone");

    let both = store.batch(vec![put_op("/a", "1"), put_op("/b", "1")]).await.expect("batch");
    assert_eq!(both, Some(5), "a batch is one revision");
    for key in ["/a", "/b"] {
        assert_eq!(get(store, key).await.mod_revision, 5, "{key} was written by the batch");
    }
    let no_op = store.batch(vec![put_op("/a", "1"), Op::Delete { key: "/never".into() }]).await.expect("batch");
    assert_eq!(no_op, None, "a batch of equal puts and missing deletes changes nothing");
    assert_eq!(store.batch(vec![]).await.expect("empty batch"), None, "an empty batch");
    assert_eq!(revision(store).await, 5, "no-op batches leave the revision alone");

    let partial = store.batch(vec![put_op("/a", "1"), put_op("/b", "2")]).await.expect("batch");
    assert_eq!(partial, Some(6), "a batch with one real change");
    assert_eq!(get(store, "/a").await.mod_revision, 5, "the equal put in a batch was dropped");
    assert_eq!(get(store, "/b").await.mod_revision, 6);
}

/// `get` and `list` by prefix: sorted by key, and the prefix is a plain byte
/// prefix (`/a/b` matches `/a/bc`; `/a/b/` does not).
pub async fn list_by_byte_prefix(store: &dyn Store) {
    for key in ["/a/bc", "/b", "/a/b/d", "/a/a", "/a/b", "/a/b/c"] {
        put(store, key, &format!("value of {key}")).await;
    }
    let current = revision(store).await;
    assert_eq!(
        list_keys(store, "/a/b", None).await,
        ["/a/b", "/a/b/c", "/a/b/d", "/a/bc"],
        "a prefix without a trailing slash matches every key starting with those bytes"
    );
    assert_eq!(list_keys(store, "/a/b/", None).await, ["/a/b/c", "/a/b/d"], "prefix \"/a/b/\"");
    assert_eq!(
        list_keys(store, "", None).await,
        ["/a/a", "/a/b", "/a/b/c", "/a/b/d", "/a/bc", "/b"],
        "the empty prefix lists everything, sorted"
    );
    assert!(list_keys(store, "/c", None).await.is_empty(), "nothing under /c");
    let listing = store.list("/a/", None).await.expect("list");
    assert_eq!(listing.revision, current, "a listing answers at the current revision");
    for kv in &listing.kvs {
        assert_eq!(kv.value, bytes(&format!("value of {}", kv.key)), "value of {}", kv.key);
        assert_eq!(&get(store, &kv.key).await, kv, "get and list agree on {}", kv.key);
    }
}

/// `list(prefix, Some(rev))` answers as of that revision.
pub async fn list_at_past_revision(store: &dyn Store) {
    put(store, "/p/a", "1").await; // 2
    put(store, "/p/b", "1").await; // 3
    put(store, "/p/a", "2").await; // 4
    store.delete("/p/b", Condition::None).await.expect("delete"); // 5
    put(store, "/q/x", "1").await; // 6

    let expected: [(Revision, &[(&str, &str)]); 6] = [
        (1, &[]),
        (2, &[("/p/a", "1")]),
        (3, &[("/p/a", "1"), ("/p/b", "1")]),
        (4, &[("/p/a", "2"), ("/p/b", "1")]),
        (5, &[("/p/a", "2")]),
        (6, &[("/p/a", "2")]),
    ];
    for (at, pairs) in expected {
        let listing = store.list("/p/", Some(at)).await.unwrap_or_else(|e| panic!("list at {at}: {e}"));
        assert_eq!(listing.revision, at, "a listing at {at} says so");
        let found: Vec<(String, Bytes)> = listing.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
        let wanted: Vec<(String, Bytes)> = pairs.iter().map(|(k, v)| (k.to_string(), bytes(v))).collect();
        assert_eq!(found, wanted, "keys under /p/ at revision {at}");
    }
    let at_three = store.list("/p/a", Some(3)).await.expect("list at 3");
    assert_eq!(
        (at_three.kvs[0].create_revision, at_three.kvs[0].mod_revision, at_three.kvs[0].version),
        (2, 2, 1),
        "bookkeeping of /p/a as of revision 3"
    );
}

/// Listing above the current revision or below the compaction point fails;
/// the compaction point itself stays readable.
pub async fn list_outside_history_fails(store: &dyn Store) {
    for value in ["1", "2", "3", "4"] {
        put(store, "/h/k", value).await; // 2..=5
    }
    match store.list("/h/", Some(6)).await {
        Err(StoreError::FutureRevision { requested: 6, current: 5 }) => {}
        other => panic!("list at revision 6 of 5: expected FutureRevision, got {other:?}"),
    }
    store.compact(4).await.expect("compact to 4");
    match store.list("/h/", Some(3)).await {
        Err(StoreError::Compacted { requested: 3, compact_revision: 4 }) => {}
        other => panic!("list at 3 after compact(4): expected Compacted at 4, got {other:?}"),
    }
    let at_four = store.list("/h/", Some(4)).await.expect("the compaction point stays readable");
    assert_eq!(at_four.kvs[0].value, bytes("3"), "/h/k as of revision 4");
    store.compact(3).await.expect("compacting below the compaction point is a no-op");
    store.compact(4).await.expect("compacting at the compaction point is a no-op");
    store.list("/h/", Some(4)).await.expect("still readable after no-op compactions");
    match store.compact(6).await {
        Err(StoreError::FutureRevision { requested: 6, current: 5 }) => {}
        other => {
            panic!("compact above the current revision: expected FutureRevision, got {other:?}")
        }
    }
    assert_eq!(revision(store).await, 5, "compaction does not change the revision");
}

/// Conditional puts: `Absent` and `ModRevision` succeed or fail with a
/// `Conflict` that changes nothing.
pub async fn conditional_put(store: &dyn Store) {
    let created = put_if(store, "/c", "1", Condition::Absent).await.expect("put if absent on a missing key");
    assert_eq!(created, 2);
    match put_if(store, "/c", "2", Condition::Absent).await {
        Err(StoreError::Conflict { key, expected: Condition::Absent, found: Some(2) }) if key == "/c" => {}
        other => panic!("put if absent on an existing key: expected Conflict, got {other:?}"),
    }
    assert_eq!(get(store, "/c").await.value, bytes("1"), "a failed condition changes nothing");
    let updated = put_if(store, "/c", "2", Condition::ModRevision(2)).await.expect("put at the current mod_revision");
    assert_eq!(updated, 3);
    match put_if(store, "/c", "3", Condition::ModRevision(2)).await {
        Err(StoreError::Conflict { expected: Condition::ModRevision(2), found: Some(3), .. }) => {}
        other => panic!("put at a stale mod_revision: expected Conflict, got {other:?}"),
    }
    match put_if(store, "/missing", "1", Condition::ModRevision(2)).await {
        Err(StoreError::Conflict { found: None, .. }) => {}
        other => panic!("put at a mod_revision on a missing key: expected Conflict, got {other:?}"),
    }
    assert_eq!(revision(store).await, 3, "conflicts do not change the revision");
    assert_eq!(get(store, "/c").await.value, bytes("2"));
    assert_eq!(store.get("/missing").await.expect("get"), None);
}

/// Conditional deletes: `ModRevision` must match; `Absent` holds only for a
/// missing key, which is then a no-op.
pub async fn conditional_delete(store: &dyn Store) {
    put(store, "/d", "1").await; // 2
    match store.delete("/d", Condition::ModRevision(1)).await {
        Err(StoreError::Conflict { key, expected: Condition::ModRevision(1), found: Some(2) }) if key == "/d" => {}
        other => panic!("delete at a stale mod_revision: expected Conflict, got {other:?}"),
    }
    match store.delete("/d", Condition::Absent).await {
        Err(StoreError::Conflict { found: Some(2), .. }) => {}
        other => panic!("delete if absent on an existing key: expected Conflict, got {other:?}"),
    }
    assert_eq!(revision(store).await, 2, "failed deletes change nothing");
    assert_eq!(get(store, "/d").await.value, bytes("1"));
    let deleted = store.delete("/d", Condition::ModRevision(2)).await.expect("delete at the current mod_revision");
    assert_eq!(deleted, Some(3));
    assert_eq!(
        store.delete("/d", Condition::Absent).await.expect("delete if absent on a missing key"),
        None,
        "Absent holds trivially for a missing key"
    );
    match store.delete("/d", Condition::ModRevision(2)).await {
        Err(StoreError::Conflict { found: None, .. }) => {}
        other => {
            panic!("delete at a mod_revision on a missing key: expected Conflict, got {other:?}")
        }
    }
    assert_eq!(revision(store).await, 3);
}

/// `create_revision`, `mod_revision` and `version` follow etcd, including
/// after a delete and re-create.
pub async fn key_bookkeeping(store: &dyn Store) {
    put(store, "/k", "v1").await; // 2
    assert_eq!(bookkeeping(&get(store, "/k").await), (2, 2, 1, None), "after the first put");
    put(store, "/k", "v2").await; // 3
    assert_eq!(bookkeeping(&get(store, "/k").await), (2, 3, 2, None), "after a second put");
    put(store, "/other", "x").await; // 4
    assert_eq!(bookkeeping(&get(store, "/k").await), (2, 3, 2, None), "another key's put");
    store.batch(vec![put_op("/k", "v3")]).await.expect("batch"); // 5
    assert_eq!(bookkeeping(&get(store, "/k").await), (2, 5, 3, None), "after a batch put");
    store.delete("/k", Condition::None).await.expect("delete"); // 6
    assert_eq!(store.get("/k").await.expect("get"), None, "a deleted key is gone");
    put(store, "/k", "v4").await; // 7
    assert_eq!(bookkeeping(&get(store, "/k").await), (7, 7, 1, None), "a re-created key starts over");
    let old = store.list("/k", Some(5)).await.expect("list at 5");
    assert_eq!(bookkeeping(&old.kvs[0]), (2, 5, 3, None), "bookkeeping as of revision 5");
}

/// A batch applies all its operations at one revision, reports them in one
/// watch batch sorted by key, and rejects a key given twice.
pub async fn batch_is_atomic(store: &dyn Store) {
    put(store, "/x/1", "a").await; // 2
    put(store, "/x/2", "a").await; // 3
    let mut watch = watch(store, "/x/", 4).await;
    let applied = store
        .batch(vec![
            put_op("/x/4", "d"),
            Op::Delete { key: "/x/1".into() },
            put_op("/x/2", "a"),
            put_op("/x/3", "c"),
            Op::Delete { key: "/x/none".into() },
        ])
        .await
        .expect("batch");
    assert_eq!(applied, Some(4));
    let batch = next_batch(&mut watch, "the batch's events").await;
    assert_eq!(
        describe(&batch),
        (4, vec!["delete /x/1".to_owned(), "put /x/3=c".into(), "put /x/4=d".into()]),
        "one watch batch, sorted by key, without the dropped operations"
    );
    assert_eq!(list_keys(store, "/x/", None).await, ["/x/2", "/x/3", "/x/4"]);

    match store.batch(vec![put_op("/x/5", "e"), Op::Delete { key: "/x/5".into() }]).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("a batch naming a key twice: expected Invalid, got {other:?}"),
    }
    assert_eq!(revision(store).await, 4, "a rejected batch changes nothing");
    assert_eq!(store.get("/x/5").await.expect("get"), None);
}

/// A watch from a past revision replays history, then follows live changes:
/// in revision order, one batch per revision, only keys under the prefix.
pub async fn watch_replays_then_follows(store: &dyn Store) {
    put(store, "/w/a", "1").await; // 2
    put(store, "/o/x", "1").await; // 3, outside the prefix
    put(store, "/w/b", "1").await; // 4
    store.delete("/w/a", Condition::None).await.expect("delete"); // 5
    store.batch(vec![put_op("/w/c", "1"), put_op("/o/y", "1")]).await.expect("batch"); // 6

    let mut watch = watch(store, "/w/", 2).await;
    let replayed =
        [(2, vec!["put /w/a=1"]), (4, vec!["put /w/b=1"]), (5, vec!["delete /w/a"]), (6, vec!["put /w/c=1"])];
    for (revision, events) in replayed {
        let batch = next_batch(&mut watch, &format!("replay of revision {revision}")).await;
        assert_eq!(describe(&batch), (revision, owned(&events)), "replayed batch");
    }

    put(store, "/w/d", "1").await; // 7
    put(store, "/o/z", "1").await; // 8
    store.batch(vec![put_op("/w/e", "1"), Op::Delete { key: "/w/b".into() }]).await.expect("batch"); // 9
    put(store, "/w/f", "1").await; // 10
    let live = [(7, vec!["put /w/d=1"]), (9, vec!["delete /w/b", "put /w/e=1"]), (10, vec!["put /w/f=1"])];
    for (revision, events) in live {
        let batch = next_batch(&mut watch, &format!("live revision {revision}")).await;
        assert_eq!(describe(&batch), (revision, owned(&events)), "live batch");
    }
    let kv = match &watch_batch_at(store, "/w/d", 7).await.events[0] {
        Event::Put(kv) => kv.clone(),
        other => panic!("expected the put of /w/d, got {other:?}"),
    };
    assert_eq!(bookkeeping(&kv), (7, 7, 1, None), "a watched put carries the key's bookkeeping");
}

/// Resuming from the last seen revision + 1 gives no gap and no duplicate.
pub async fn watch_resume_has_no_gap_or_duplicate(store: &dyn Store) {
    for i in 0..5 {
        put(store, &format!("/r/{i}"), "v").await; // 2..=6
    }
    let mut first = watch(store, "/r/", 1).await;
    let mut last_seen = 0;
    for expected in [2, 3] {
        let batch = next_batch(&mut first, "first watch").await;
        assert_eq!(batch.revision, expected, "first watch, in order");
        last_seen = batch.revision;
    }
    drop(first);
    put(store, "/r/5", "v").await; // 7
    put(store, "/r/6", "v").await; // 8
    let mut resumed = watch(store, "/r/", last_seen + 1).await;
    for expected in 4..=8 {
        let batch = next_batch(&mut resumed, "resumed watch").await;
        assert_eq!(batch.revision, expected, "the resumed watch continues exactly after {last_seen}");
        assert_eq!(describe(&batch).1, [format!("put /r/{}=v", expected - 2)]);
    }
    put(store, "/r/7", "v").await; // 9
    assert_eq!(next_batch(&mut resumed, "resumed watch, live").await.revision, 9);
}

/// Watching from below the compaction point yields `Compacted` and ends;
/// the compaction point itself can still be watched.
pub async fn watch_from_compacted_revision(store: &dyn Store) {
    for value in ["1", "2", "3", "4"] {
        put(store, "/c/k", value).await; // 2..=5
    }
    store.compact(4).await.expect("compact to 4");
    let mut stale = watch(store, "/c/", 3).await;
    match next_item(&mut stale, "watch from a compacted revision").await {
        WatchItem::Compacted { compact_revision: 4 } => {}
        other => panic!("watch from 3 after compact(4): expected Compacted at 4, got {other:?}"),
    }
    match timeout(DEADLINE, stale.next()).await {
        Ok(None) => {}
        Ok(Some(item)) => panic!("the stream must end after Compacted, got {item:?}"),
        Err(_) => panic!("the stream did not end within {DEADLINE:?} after Compacted"),
    }
    let mut at_point = watch(store, "/c/", 4).await;
    for (revision, value) in [(4, "3"), (5, "4")] {
        let batch = next_batch(&mut at_point, "watch from the compaction point").await;
        assert_eq!(describe(&batch), (revision, vec![format!("put /c/k={value}")]));
    }
}

/// A watch from a revision not reached yet starts there and skips nothing after.
pub async fn watch_from_future_revision(store: &dyn Store) {
    let mut watch = watch(store, "/f/", 3).await;
    put(store, "/f/a", "1").await; // 2
    put(store, "/f/b", "1").await; // 3
    put(store, "/f/c", "1").await; // 4
    assert_eq!(describe(&next_batch(&mut watch, "future watch").await), (3, owned(&["put /f/b=1"])));
    assert_eq!(describe(&next_batch(&mut watch, "future watch").await), (4, owned(&["put /f/c=1"])));
}

/// A watcher that does not poll while many changes happen still receives
/// every one of them, in order.
pub async fn lagging_watcher_receives_everything(store: &dyn Store) {
    const CHANGES: i64 = 300;
    let start = revision(store).await + 1;
    let mut watch = watch(store, "/slow/", start).await;
    for i in 0..CHANGES {
        put(store, &format!("/slow/{:02}", i % 40), &i.to_string()).await;
    }
    for i in 0..CHANGES {
        let batch = next_batch(&mut watch, &format!("change {i} of {CHANGES}")).await;
        assert_eq!(
            describe(&batch),
            (start + i, vec![format!("put /slow/{:02}={i}", i % 40)]),
            "the lagging watcher's change {i}"
        );
    }
}

/// An expired lease deletes all its keys at one revision, and only its keys;
/// keep-alive and revoke then fail with `LeaseNotFound`.
pub async fn lease_expiry_deletes_keys_at_one_revision(store: &dyn Store) {
    let granted_at = Instant::now();
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant a lease");
    put_leased(store, "/lease/a", lease).await;
    put_leased(store, "/lease/b", lease).await;
    put(store, "/lease/c", "unleased").await;
    assert_eq!(get(store, "/lease/a").await.lease, Some(lease), "a leased key names its lease");
    let before = revision(store).await;
    let mut watch = watch(store, "/lease/", before + 1).await;

    let expiry = next_batch(&mut watch, "lease expiry").await;
    assert!(
        granted_at.elapsed() >= LEASE_TTL,
        "the lease expired {:?} after the grant, before its TTL of {LEASE_TTL:?}",
        granted_at.elapsed()
    );
    assert_eq!(
        describe(&expiry),
        (before + 1, owned(&["delete /lease/a", "delete /lease/b"])),
        "expiry deletes every leased key at one revision"
    );
    assert_eq!(list_keys(store, "/lease/", None).await, ["/lease/c"], "the unleased key stays");
    match store.keep_alive(lease).await {
        Err(StoreError::LeaseNotFound(id)) if id == lease => {}
        other => panic!("keep-alive of an expired lease: expected LeaseNotFound, got {other:?}"),
    }
    match store.revoke_lease(lease).await {
        Err(StoreError::LeaseNotFound(id)) if id == lease => {}
        other => panic!("revoke of an expired lease: expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(revision(store).await, before + 1, "nothing else changed");
}

/// Keep-alives hold a lease past its TTL; once they stop, it expires one TTL
/// after the last one.
pub async fn keep_alive_extends_lease(store: &dyn Store) {
    let lease = store.grant_lease(LEASE_TTL).await.expect("grant a lease");
    put_leased(store, "/ka/k", lease).await;
    let mut watch = watch(store, "/ka/", revision(store).await + 1).await;
    let mut last_keep_alive = Instant::now();
    for round in 0..6 {
        // Letting time pass is the point here, not a wait for an event.
        sleep(LEASE_TTL / 3).await;
        last_keep_alive = Instant::now();
        let ttl = store.keep_alive(lease).await.unwrap_or_else(|e| panic!("keep-alive {round}: {e}"));
        assert_eq!(ttl, LEASE_TTL, "keep-alive returns the lease's TTL");
    }
    assert!(
        store.get("/ka/k").await.expect("get").is_some(),
        "a lease kept alive for twice its TTL must still hold its key"
    );
    let expiry = next_batch(&mut watch, "expiry after the keep-alives stop").await;
    assert_eq!(describe(&expiry).1, ["delete /ka/k"], "the only change is the expiry");
    assert!(
        last_keep_alive.elapsed() >= LEASE_TTL,
        "the lease expired {:?} after its last keep-alive, before its TTL",
        last_keep_alive.elapsed()
    );
}

/// Revoking deletes the lease's keys at one revision (a lease without keys
/// changes no revision); a key re-put without the lease is no longer its.
pub async fn revoke_deletes_keys_at_one_revision(store: &dyn Store) {
    let lease = store.grant_lease(LEASE_TTL * 100).await.expect("grant a lease");
    put_leased(store, "/rv/a", lease).await;
    put_leased(store, "/rv/b", lease).await;
    put_leased(store, "/rv/c", lease).await;
    put(store, "/rv/c", "detached").await;
    assert_eq!(get(store, "/rv/c").await.lease, None, "a put without a lease detaches the key");
    let before = revision(store).await;
    let mut watch = watch(store, "/rv/", before + 1).await;
    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(revision(store).await, before + 1, "a revoke is one revision");
    let batch = next_batch(&mut watch, "revoke").await;
    assert_eq!(describe(&batch), (before + 1, owned(&["delete /rv/a", "delete /rv/b"])));
    assert_eq!(list_keys(store, "/rv/", None).await, ["/rv/c"]);
    match store.keep_alive(lease).await {
        Err(StoreError::LeaseNotFound(id)) if id == lease => {}
        other => panic!("keep-alive of a revoked lease: expected LeaseNotFound, got {other:?}"),
    }

    let empty = store.grant_lease(LEASE_TTL * 100).await.expect("grant a lease");
    store.revoke_lease(empty).await.expect("revoke a lease without keys");
    assert_eq!(revision(store).await, before + 1, "revoking a lease without keys changes nothing");
}

/// A put naming a lease that does not exist (never granted, or revoked)
/// fails with `LeaseNotFound` and changes nothing.
pub async fn put_with_unknown_lease_fails(store: &dyn Store) {
    let unknown = LeaseId(0x0bad_1ea5e);
    match store.put("/u/k", bytes("v"), PutOptions { lease: Some(unknown), ..PutOptions::default() }).await {
        Err(StoreError::LeaseNotFound(id)) if id == unknown => {}
        other => panic!("put with a lease never granted: expected LeaseNotFound, got {other:?}"),
    }
    let revoked = store.grant_lease(LEASE_TTL * 100).await.expect("grant a lease");
    store.revoke_lease(revoked).await.expect("revoke");
    match store.put("/u/k", bytes("v"), PutOptions { lease: Some(revoked), ..PutOptions::default() }).await {
        Err(StoreError::LeaseNotFound(id)) if id == revoked => {}
        other => panic!("put with a revoked lease: expected LeaseNotFound, got {other:?}"),
    }
    assert_eq!(revision(store).await, 1, "failed puts change nothing");
    assert_eq!(store.get("/u/k").await.expect("get"), None);
}

fn bytes(value: &str) -> Bytes {
    Bytes::from(value.to_owned())
}

fn put_op(key: &str, value: &str) -> Op {
    Op::Put { key: key.to_owned(), value: bytes(value) }
}

fn owned(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    store.put(key, bytes(value), PutOptions::default()).await.unwrap_or_else(|e| panic!("put {key:?}: {e}"))
}

async fn put_if(store: &dyn Store, key: &str, value: &str, condition: Condition) -> Result<Revision, StoreError> {
    store.put(key, bytes(value), PutOptions { condition, ..PutOptions::default() }).await
}

async fn put_leased(store: &dyn Store, key: &str, lease: LeaseId) -> Revision {
    store
        .put(key, bytes("leased"), PutOptions { lease: Some(lease), ..PutOptions::default() })
        .await
        .unwrap_or_else(|e| panic!("put {key:?} with lease {lease}: {e}"))
}

async fn get(store: &dyn Store, key: &str) -> KeyValue {
    store
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get {key:?}: {e}"))
        .unwrap_or_else(|| panic!("{key:?} should exist"))
}

async fn revision(store: &dyn Store) -> Revision {
    store.revision().await.expect("read the revision")
}

async fn list_keys(store: &dyn Store, prefix: &str, at: Option<Revision>) -> Vec<String> {
    let listing = store.list(prefix, at).await.unwrap_or_else(|e| panic!("list {prefix:?}: {e}"));
    listing.kvs.into_iter().map(|kv| kv.key).collect()
}

/// (create_revision, mod_revision, version, lease)
fn bookkeeping(kv: &KeyValue) -> (Revision, Revision, i64, Option<LeaseId>) {
    (kv.create_revision, kv.mod_revision, kv.version, kv.lease)
}

async fn watch(store: &dyn Store, prefix: &str, from: Revision) -> WatchStream {
    store.watch(prefix, from).await.unwrap_or_else(|e| panic!("watch {prefix:?} from {from}: {e}"))
}

/// The batch at exactly `revision` of a fresh watch on `key`.
async fn watch_batch_at(store: &dyn Store, key: &str, revision: Revision) -> WatchBatch {
    let mut watch = watch(store, key, revision).await;
    let batch = next_batch(&mut watch, &format!("{key} at {revision}")).await;
    assert_eq!(batch.revision, revision, "a watch from {revision} starts there");
    batch
}

async fn next_item(watch: &mut WatchStream, context: &str) -> WatchItem {
    match timeout(DEADLINE, watch.next()).await {
        Err(_) => panic!("{context}: no watch item within {DEADLINE:?}"),
        Ok(None) => panic!("{context}: the watch stream ended"),
        Ok(Some(Err(e))) => panic!("{context}: the watch failed: {e}"),
        Ok(Some(Ok(item))) => item,
    }
}

async fn next_batch(watch: &mut WatchStream, context: &str) -> WatchBatch {
    match next_item(watch, context).await {
        WatchItem::Batch(batch) => {
            for event in &batch.events {
                assert_eq!(
                    event.revision(),
                    batch.revision,
                    "{context}: event {event:?} in the batch of revision {}",
                    batch.revision
                );
            }
            batch
        }
        other => panic!("{context}: expected a batch, got {other:?}"),
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
