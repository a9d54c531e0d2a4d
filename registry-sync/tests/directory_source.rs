//! The directory source against a real directory and the embedded store.
//!
//! Nothing here sleeps to synchronise: tests wait, with a deadline, for a
//! store revision (through `Store::watch`) or for the source's status (its
//! pass counter) to move.

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meshplane_model::key::cluster_prefix;
use meshplane_registry_sync::directory::{
    DEFAULT_CLUSTER_ID, DirectoryConfig, DirectoryError, DirectoryHandle, DirectorySource, SourceStatus,
};
use meshplane_store::{EmbeddedStore, Event, Op, Store, WatchBatch, WatchItem, WatchStream};
use tokio::sync::{oneshot, watch};

const DEADLINE: Duration = Duration::from_secs(20);

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  ports: [{{port: {port}}}]\n"
    )
}

fn virtual_service(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  hosts: [{name}]\n  http:\n  - route: [{{destination: {{host: {name}}}}}]\n"
    )
}

fn key(resource: &str, name: &str) -> String {
    format!("/meshplane/v1/clusters/{DEFAULT_CLUSTER_ID}/{resource}/shop/{name}")
}

/// Write the way careful editors do: a hidden temp file renamed over the target.
fn write_atomically(dir: &Path, rel: &str, content: &str) {
    let target = dir.join(rel);
    fs::create_dir_all(target.parent().unwrap()).unwrap();
    let tmp = target.parent().unwrap().join(format!(".{}.tmp", target.file_name().unwrap().to_string_lossy()));
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, &target).unwrap();
}

struct Running {
    store: Arc<dyn Store>,
    handle: DirectoryHandle,
    status: watch::Receiver<SourceStatus>,
    stop: Option<oneshot::Sender<()>>,
}

impl Running {
    async fn start(config: DirectoryConfig, store: Arc<dyn Store>) -> Running {
        let mut running = Running::spawn(config, store);
        tokio::time::timeout(DEADLINE, running.handle.ready())
            .await
            .expect("ready before the deadline")
            .expect("the source starts");
        running
    }

    fn spawn(config: DirectoryConfig, store: Arc<dyn Store>) -> Running {
        // The source's log, shown when a test fails.
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("debug").try_init();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = DirectorySource::new(config).unwrap().spawn(store.clone(), async {
            let _ = stopped.await;
        });
        Running { store, status: handle.status(), handle, stop: Some(stop) }
    }

    async fn wait_status(&mut self, what: &str, done: impl FnMut(&SourceStatus) -> bool) {
        let waited = tokio::time::timeout(DEADLINE, self.status.wait_for(done)).await.map(|r| r.map(|_| ()));
        match waited {
            Ok(result) => result.expect("the source is running"),
            Err(_) => panic!("timed out waiting for {what}: {:?}", *self.status.borrow()),
        }
    }

    /// Wait until the source has completed `n` more passes (each one a full
    /// rescan), so any change it was going to make is made.
    async fn wait_passes(&mut self, n: u64) {
        let target = self.status.borrow().passes + n;
        self.wait_status("more passes", |s| s.passes >= target).await;
    }

    async fn revision(&self) -> i64 {
        self.store.revision().await.unwrap()
    }

    async fn watch_from_now(&self) -> WatchStream {
        let from = self.revision().await + 1;
        self.store.watch(&cluster_prefix(DEFAULT_CLUSTER_ID), from).await.unwrap()
    }

    async fn keys(&self) -> Vec<String> {
        let listed = self.store.list(&cluster_prefix(DEFAULT_CLUSTER_ID), None).await.unwrap();
        listed.kvs.into_iter().map(|kv| kv.key).collect()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(DEADLINE, self.handle.join())
            .await
            .expect("stops before the deadline")
            .expect("stops cleanly");
    }
}

async fn next_batch(stream: &mut WatchStream) -> WatchBatch {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(WatchItem::Batch(batch)))) => batch,
        other => panic!("expected a store change before the deadline, got {other:?}"),
    }
}

/// `("put"|"delete", key)` per event.
fn events(batch: &WatchBatch) -> Vec<(&'static str, String)> {
    batch
        .events
        .iter()
        .map(|e| match e {
            Event::Put(kv) => ("put", kv.key.clone()),
            Event::Delete { key, .. } => ("delete", key.clone()),
        })
        .collect()
}

fn config(dir: &Path) -> DirectoryConfig {
    let mut config = DirectoryConfig::new(dir, DEFAULT_CLUSTER_ID);
    config.rescan_interval = Duration::from_millis(50);
    config.poll_interval = Duration::from_millis(50);
    config.quiet_period = Duration::from_millis(20);
    config
}

/// a.yaml: services a and b; sub/routes.yml: virtual service a.
fn populate(dir: &Path) {
    write_atomically(dir, "a.yaml", &format!("{}---\n{}", service("a", 80), service("b", 80)));
    write_atomically(dir, "sub/routes.yml", &virtual_service("a"));
    fs::write(dir.join("notes.txt"), "not config").unwrap();
}

#[tokio::test]
async fn initial_load_writes_every_object_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let running = Running::start(config(dir.path()), store).await;

    assert_eq!(running.keys().await, vec![key("services", "a"), key("services", "b"), key("virtualservices", "a")]);
    assert_eq!(running.revision().await, 2, "one batch on a fresh store");
    let status = running.status.borrow().clone();
    assert!(status.ready);
    assert_eq!(status.last_revision, Some(2));
    assert_eq!((status.summary.files, status.summary.objects, status.summary.files_with_errors), (2, 3, 0));
    running.stop().await;
}

#[tokio::test]
async fn an_edit_changes_exactly_the_affected_keys_in_one_revision() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut running = Running::start(config(dir.path()), store).await;
    let mut changes = running.watch_from_now().await;

    write_atomically(dir.path(), "a.yaml", &format!("{}---\n{}", service("a", 80), service("b", 8080)));
    let batch = next_batch(&mut changes).await;
    assert_eq!(events(&batch), vec![("put", key("services", "b"))]);
    let value = running.store.get(&key("services", "b")).await.unwrap().unwrap().value;
    assert!(String::from_utf8_lossy(&value).contains("8080"));

    // Nothing else follows: after more full rescans the store is still there.
    running.wait_passes(3).await;
    assert_eq!(running.revision().await, batch.revision);
    running.stop().await;
}

#[tokio::test]
async fn deleting_a_file_deletes_its_keys_when_polling() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut config = config(dir.path());
    config.watch = false;
    let mut running = Running::start(config, store).await;
    assert!(!running.status.borrow().watching);
    let mut changes = running.watch_from_now().await;

    fs::remove_file(dir.path().join("sub/routes.yml")).unwrap();
    let batch = next_batch(&mut changes).await;
    assert_eq!(events(&batch), vec![("delete", key("virtualservices", "a"))]);
    running.wait_status("the file count to drop", |s| s.summary.files == 1).await;
    running.stop().await;
}

#[tokio::test]
async fn a_malformed_edit_leaves_the_store_unchanged_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut running = Running::start(config(dir.path()), store).await;
    let before = running.store.list(&cluster_prefix(DEFAULT_CLUSTER_ID), None).await.unwrap();
    let mut changes = running.watch_from_now().await;

    // b changed too, but the file has a syntax error: nothing of it applies.
    write_atomically(dir.path(), "a.yaml", &format!("{}---\n{}---\nkind: [\n", service("a", 80), service("b", 9090)));
    running.wait_status("the error to be reported", |s| s.summary.files_with_errors == 1).await;
    running.wait_passes(3).await;
    let after = running.store.list(&cluster_prefix(DEFAULT_CLUSTER_ID), None).await.unwrap();
    assert_eq!(after.revision, before.revision);
    assert_eq!(after.kvs, before.kvs);
    let diagnostics: Vec<String> = running.status.borrow().summary.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        diagnostics.iter().any(|d| d.contains("a.yaml") && d.contains("document 3") && d.contains("invalid YAML")),
        "{diagnostics:?}"
    );

    // Fixed: the new content applies, in one revision.
    write_atomically(dir.path(), "a.yaml", &format!("{}---\n{}", service("a", 80), service("b", 9090)));
    let batch = next_batch(&mut changes).await;
    assert_eq!(events(&batch), vec![("put", key("services", "b"))]);
    running.wait_status("the error to clear", |s| s.summary.files_with_errors == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn renaming_a_file_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut running = Running::start(config(dir.path()), store).await;
    let revision = running.revision().await;

    fs::rename(dir.path().join("a.yaml"), dir.path().join("sub/z.yaml")).unwrap();
    running
        .wait_status("the rename to be seen", |s| {
            s.summary.file_summaries.iter().any(|f| f.path.ends_with("sub/z.yaml"))
        })
        .await;
    running.wait_passes(2).await;
    assert_eq!(running.revision().await, revision);
    assert_eq!(running.keys().await.len(), 3);
    running.stop().await;
}

#[tokio::test]
async fn notifications_trigger_a_rescan_without_waiting_for_the_periodic_one() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut config = config(dir.path());
    config.rescan_interval = Duration::from_secs(3600);
    let running = Running::start(config, store).await;
    assert!(running.status.borrow().watching, "filesystem notifications are unavailable here");
    let mut changes = running.watch_from_now().await;

    write_atomically(dir.path(), "sub/c.yaml", &service("c", 80));
    let batch = next_batch(&mut changes).await;
    assert_eq!(events(&batch), vec![("put", key("services", "c"))]);
    running.stop().await;
}

#[tokio::test]
async fn a_restart_deletes_stale_keys_and_leaves_other_clusters_alone() {
    let dir = tempfile::tempdir().unwrap();
    populate(dir.path());
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let other = "/meshplane/v1/clusters/other/services/shop/x".to_string();
    store
        .batch(vec![
            Op::Put { key: key("services", "stale"), value: "{}".into() },
            Op::Put { key: key("services", "a"), value: "{}".into() },
            Op::Put { key: other.clone(), value: "{}".into() },
        ])
        .await
        .unwrap();
    let revision = store.revision().await.unwrap();

    let running = Running::start(config(dir.path()), store.clone()).await;
    assert_eq!(running.keys().await, vec![key("services", "a"), key("services", "b"), key("virtualservices", "a")]);
    assert_eq!(running.revision().await, revision + 1, "one batch");
    assert!(store.get(&other).await.unwrap().is_some());
    running.stop().await;
}

#[tokio::test]
async fn a_missing_directory_fails_readiness_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let mut running = Running::spawn(config(&dir.path().join("missing")), store);
    let err =
        tokio::time::timeout(DEADLINE, running.handle.ready()).await.expect("fails before the deadline").unwrap_err();
    assert!(matches!(err, DirectoryError::Scan(_)), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert_eq!(running.revision().await, 1, "the store is untouched");
}

#[test]
fn an_invalid_cluster_id_is_refused() {
    let err = DirectorySource::new(DirectoryConfig::new(".", "a/b")).err().expect("refused");
    assert!(err.to_string().contains("--cluster-id"), "{err}");
}
