//! [`DirectorySource`]: the async edge around [`DirectoryState`]. It scans,
//! watches, debounces and applies batches; every decision is the core's.
//!
//! ```text
//!  run: scan (fail fast if DIR is unusable) ─▶ list cluster keys (retry) ─▶ pass ─▶ ready
//!         loop select! { shutdown ─▶ return
//!                        notify event ─▶ debounce.event
//!                        deadline (debounce | rescan | store retry) ─▶ pass }
//!  pass: [scan on a blocking thread ─▶ state.update] ─▶ state.reconcile ─▶ log
//!        ─▶ Store::batch(ops) ─▶ state.applied(ops) | retry with backoff ─▶ publish status
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use meshplane_model::key::{cluster_prefix, valid_cluster_id};
use meshplane_model::parse::Severity;
use meshplane_store::{Op, Revision, Store};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, error, info, warn};

use super::debounce::Debounce;
use super::scan::{ScanError, ScanOutcome, Scanner};
use super::state::{DirectoryState, FileOutcome, Reconciliation, Summary};

/// The cluster id used when `--cluster-id` is not given (Istio's default).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// The longest wait between retries of a failed store write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// How the directory source runs.
#[derive(Clone, Debug)]
pub struct DirectoryConfig {
    /// The directory of YAML (`--config-dir`).
    pub dir: PathBuf,
    /// The cluster its objects belong to (`--cluster-id`).
    pub cluster: String,
    /// Full rescan period when filesystem notifications work (safety net).
    pub rescan_interval: Duration,
    /// Rescan period when they do not (or `watch` is off).
    pub poll_interval: Duration,
    /// Quiet period after a filesystem event before rescanning.
    pub quiet_period: Duration,
    /// Longest a continuous stream of events delays a rescan.
    pub max_delay: Duration,
    /// Use filesystem notifications.
    pub watch: bool,
}

impl DirectoryConfig {
    /// Defaults: rescan every 2 s, 100 ms quiet period, notifications on
    /// (polling every 250 ms if they cannot be set up).
    pub fn new(dir: impl Into<PathBuf>, cluster: impl Into<String>) -> DirectoryConfig {
        DirectoryConfig {
            dir: dir.into(),
            cluster: cluster.into(),
            rescan_interval: Duration::from_secs(2),
            poll_interval: Duration::from_millis(250),
            quiet_period: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            watch: true,
        }
    }
}

/// Why the directory source cannot run.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error(
        "cluster id {0:?} cannot be used in store keys: it must be non-empty, contain no '/', and not be '.' or '..' (--cluster-id)"
    )]
    InvalidClusterId(String),
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("the directory source stopped before its first load was stored")]
    Stopped,
    #[error("the directory source's task failed: {0}; this is a bug, please report it")]
    Task(String),
}

/// What the source is doing, for `/ready`, status and debug endpoints.
#[derive(Clone, Debug, Default)]
pub struct SourceStatus {
    /// The first full load of the directory is in the store.
    pub ready: bool,
    /// Completed passes (scan, reconcile, store write); each rescan is one.
    pub passes: u64,
    /// The store revision of the last batch this source wrote.
    pub last_revision: Option<Revision>,
    /// The last store error, until a write succeeds again.
    pub store_error: Option<String>,
    /// Whether filesystem notifications are in use (else polling only).
    pub watching: bool,
    /// Files, objects, errors and current diagnostics.
    pub summary: Summary,
}

/// Keeps a cluster's keys equal to a directory of YAML. See the module docs.
pub struct DirectorySource {
    config: DirectoryConfig,
    status: watch::Sender<SourceStatus>,
}

impl DirectorySource {
    /// Check the configuration; nothing is read until [`run`](Self::run).
    pub fn new(config: DirectoryConfig) -> Result<DirectorySource, DirectoryError> {
        if !valid_cluster_id(&config.cluster) {
            return Err(DirectoryError::InvalidClusterId(config.cluster));
        }
        Ok(DirectorySource { config, status: watch::Sender::new(SourceStatus::default()) })
    }

    /// Follow the source's status (ready, counts, diagnostics).
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Run on a new task until `shutdown` completes.
    pub fn spawn(self, store: Arc<dyn Store>, shutdown: impl Future<Output = ()> + Send + 'static) -> DirectoryHandle {
        let status = self.status();
        DirectoryHandle { status, task: Some(tokio::spawn(self.run(store, shutdown))) }
    }

    /// Load the directory into the store, then keep it in sync until
    /// `shutdown` completes. Fails only if the directory cannot be read at
    /// startup; later problems (a bad file, a store outage, the directory
    /// vanishing) are logged, shown in the status and retried.
    pub async fn run(self, store: Arc<dyn Store>, shutdown: impl Future<Output = ()>) -> Result<(), DirectoryError> {
        let DirectorySource { config, status } = self;
        let mut shutdown = pin!(shutdown);
        let mut edge = Edge {
            state: DirectoryState::new(&config.cluster),
            scanner: Some(Scanner::new(&config.dir)),
            store,
            status,
            retry_delay: FIRST_RETRY_DELAY,
            retry_at: None,
            last_scan_problem: None,
            held_logged: 0,
        };

        // A missing directory is a configuration error: fail before touching
        // the store. The first scan reads every file, however fresh.
        let first = edge.scan().await?.map_err(DirectoryError::Scan)?;
        if let Some(scanner) = edge.scanner.as_mut() {
            scanner.set_settle(config.quiet_period);
        }

        // Learn the keys this source owns, so stale ones are deleted.
        let prefix = cluster_prefix(&config.cluster);
        loop {
            let listed = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                listed = edge.store.list(&prefix, None) => listed,
            };
            match listed {
                Ok(list) => {
                    edge.state.load_store(list.kvs.into_iter().map(|kv| (kv.key, kv.value)));
                    break;
                }
                Err(e) => {
                    let delay = edge.next_retry_delay();
                    error!(cluster = %config.cluster, "cannot list the cluster's keys in the store: {e}; retrying in {delay:?}");
                    edge.status.send_modify(|s| s.store_error = Some(e.to_string()));
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = sleep(delay) => {}
                    }
                }
            }
        }
        edge.retry_delay = FIRST_RETRY_DELAY;

        let wake = Arc::new(Notify::new());
        let watcher = if config.watch {
            match watch_directory(&config.dir, wake.clone()) {
                Ok(watcher) => Some(watcher),
                Err(e) => {
                    warn!(
                        dir = %config.dir.display(),
                        "cannot watch the configuration directory for changes ({e}); polling every {:?} instead (on Linux, raising fs.inotify.max_user_watches may help)",
                        config.poll_interval
                    );
                    None
                }
            }
        } else {
            None
        };
        let rescan_every = if watcher.is_some() { config.rescan_interval } else { config.poll_interval };
        edge.status.send_modify(|s| s.watching = watcher.is_some());
        info!(
            dir = %config.dir.display(),
            cluster = %config.cluster,
            watching = watcher.is_some(),
            "loading configuration directory"
        );

        edge.feed(first);
        edge.pass().await;
        let mut debounce = Debounce::new(config.quiet_period, config.max_delay);
        let mut next_rescan = Instant::now() + rescan_every;
        loop {
            let mut deadline = next_rescan;
            if let Some(due) = debounce.deadline() {
                deadline = deadline.min(Instant::from_std(due));
            }
            if let Some(retry) = edge.retry_at {
                deadline = deadline.min(retry);
            }
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = wake.notified() => {
                    debounce.event(Instant::now().into_std());
                    continue;
                }
                _ = sleep_until(deadline) => {}
            }
            let now = Instant::now();
            let rescan = debounce.fire(now.into_std()) || now >= next_rescan;
            let retry = edge.retry_at.is_some_and(|at| now >= at);
            if rescan {
                next_rescan = now + rescan_every;
                match edge.scan().await? {
                    Ok(outcome) => {
                        if outcome.settling {
                            // Being written: look again after a quiet period.
                            debounce.event(now.into_std());
                        }
                        edge.feed(outcome);
                    }
                    Err(problem) => edge.scan_problem(format!("{problem}; keeping the objects already loaded")),
                }
            }
            if rescan || retry {
                edge.pass().await;
            }
        }
        drop(watcher);
        debug!(dir = %config.dir.display(), "directory source stopped");
        Ok(())
    }
}

/// A running [`DirectorySource`].
pub struct DirectoryHandle {
    status: watch::Receiver<SourceStatus>,
    task: Option<JoinHandle<Result<(), DirectoryError>>>,
}

impl DirectoryHandle {
    /// Follow the source's status.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// Wait until the first full load is in the store. Fails if the source
    /// stopped first (e.g. the directory does not exist).
    pub async fn ready(&mut self) -> Result<(), DirectoryError> {
        let Some(task) = self.task.as_mut() else {
            return Err(DirectoryError::Stopped);
        };
        let mut status = self.status.clone();
        let sender_gone = tokio::select! {
            biased;
            ready = status.wait_for(|s| s.ready) => match ready {
                Ok(_) => return Ok(()),
                Err(_) => None,
            },
            joined = &mut *task => Some(joined),
        };
        // The task ended (its status sender went with it): take its result.
        let joined = match sender_gone {
            Some(joined) => joined,
            None => task.await,
        };
        self.task = None;
        Err(match joined {
            Ok(Ok(())) => DirectoryError::Stopped,
            Ok(Err(e)) => e,
            Err(e) => DirectoryError::Task(e.to_string()),
        })
    }

    /// Wait for the source to stop (after its shutdown future completed).
    pub async fn join(self) -> Result<(), DirectoryError> {
        match self.task {
            Some(task) => task.await.unwrap_or_else(|e| Err(DirectoryError::Task(e.to_string()))),
            None => Ok(()),
        }
    }
}

/// The loop's state, between the core and the world.
struct Edge {
    state: DirectoryState,
    /// `None` only while a scan runs on a blocking thread.
    scanner: Option<Scanner>,
    store: Arc<dyn Store>,
    status: watch::Sender<SourceStatus>,
    retry_delay: Duration,
    /// When to retry a failed store write.
    retry_at: Option<Instant>,
    /// The last scan problem logged, so it is logged once per change.
    last_scan_problem: Option<String>,
    /// The number of held objects last logged.
    held_logged: usize,
}

impl Edge {
    /// Scan on a blocking thread.
    async fn scan(&mut self) -> Result<Result<ScanOutcome, ScanError>, DirectoryError> {
        let mut scanner = self.scanner.take().expect("one scan at a time");
        let (scanner, outcome) = tokio::task::spawn_blocking(move || {
            let outcome = scanner.scan();
            (scanner, outcome)
        })
        .await
        .map_err(|e| DirectoryError::Task(e.to_string()))?;
        self.scanner = Some(scanner);
        Ok(outcome)
    }

    fn feed(&mut self, outcome: ScanOutcome) {
        let problem = (!outcome.unlisted_dirs.is_empty()).then(|| {
            outcome
                .unlisted_dirs
                .iter()
                .map(|(dir, reason)| format!("{}: {reason}", dir.display()))
                .collect::<Vec<_>>()
                .join("; ")
        });
        match problem {
            Some(problem) => self.scan_problem(format!(
                "cannot list {problem}; the files below keep their last loaded content until they can be listed (check permissions)"
            )),
            None => {
                if self.last_scan_problem.take().is_some() {
                    info!("the configuration directory can be read again");
                }
            }
        }
        for (path, input) in outcome.changes {
            self.state.update(&display(&path), input);
        }
    }

    fn scan_problem(&mut self, problem: String) {
        if self.last_scan_problem.as_ref() != Some(&problem) {
            error!("{problem}");
            self.last_scan_problem = Some(problem);
        }
    }

    fn next_retry_delay(&mut self) -> Duration {
        let delay = self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY_DELAY);
        delay
    }

    /// Reconcile and write the changes to the store as one batch.
    async fn pass(&mut self) {
        let reconciliation = self.state.reconcile();
        log_reconciliation(&reconciliation);
        let changed = !reconciliation.reports.is_empty()
            || !reconciliation.ops.is_empty()
            || !reconciliation.new_conflicts.is_empty()
            || !reconciliation.resolved_conflicts.is_empty();
        let ops = reconciliation.ops;
        let mut written = None;
        let mut store_error = None;
        // One atomic batch when the store takes it; otherwise batches in
        // make-before-break order (see `write_batches`).
        for batch in write_batches(ops, self.store.max_batch_ops()) {
            match self.store.batch(batch.clone()).await {
                Ok(revision) => {
                    self.state.applied(&batch);
                    written = revision.or(written);
                    debug!(changes = batch.len(), revision, "wrote configuration changes to the store");
                }
                Err(e) => {
                    let delay = self.next_retry_delay();
                    error!(
                        "cannot write {} configuration changes to the store: {e}; retrying in {delay:?}",
                        batch.len()
                    );
                    self.retry_at = Some(Instant::now() + delay);
                    store_error = Some(e.to_string());
                    break;
                }
            }
        }
        let stored = store_error.is_none();
        if stored {
            self.retry_at = None;
            self.retry_delay = FIRST_RETRY_DELAY;
        }
        let summary = changed.then(|| self.state.summary());
        if let Some(summary) = &summary
            && summary.held_from_store != self.held_logged
        {
            self.held_logged = summary.held_from_store;
            if summary.held_from_store > 0 {
                warn!(
                    held = summary.held_from_store,
                    "objects in the store that no file defines are kept because a file with errors may define them; they are deleted once every file parses cleanly"
                );
            }
        }
        self.status.send_modify(|s| {
            s.passes += 1;
            if stored {
                s.ready = true;
                s.store_error = None;
            } else {
                s.store_error = store_error;
            }
            if written.is_some() {
                s.last_revision = written;
            }
            if let Some(summary) = summary {
                s.summary = summary;
            }
        });
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

fn log_reconciliation(r: &Reconciliation) {
    for report in &r.reports {
        for d in &report.diagnostics {
            match d.severity {
                Severity::Error => error!("{d}"),
                Severity::Warning => warn!("{d}"),
            }
        }
        let path = &report.path;
        match report.outcome {
            FileOutcome::Applied { objects } => info!(path, objects, "configuration file loaded"),
            FileOutcome::KeptLastGood { objects } => error!(
                "{path} has errors and was not applied; its last good version ({objects} objects) stays served until it parses cleanly"
            ),
            FileOutcome::NotApplied => {
                error!("{path} has errors and was not applied; none of its objects are served until it parses cleanly")
            }
            FileOutcome::Removed { objects } => {
                info!(path, objects, "configuration file removed; its objects are withdrawn")
            }
        }
    }
    for conflict in &r.new_conflicts {
        error!("{conflict}");
    }
    for conflict in &r.resolved_conflicts {
        info!(
            "resolved: {} is no longer defined twice ({})",
            conflict.object.as_ref().map(|o| o.to_string()).unwrap_or_default(),
            conflict.source
        );
    }
    if r.released_held > 0 {
        info!(deleted = r.released_held, "deleted objects found in the store at startup that no file defines");
    }
}

/// Wake the loop on any change below `dir` (reads are not changes).
fn watch_directory(dir: &Path, wake: Arc<Notify>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Our own reads would otherwise wake us forever.
            Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
            // Errors too: the rescan finds out what happened.
            _ => wake.notify_one(),
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
    Ok(watcher)
}

/// Split a reconciliation's operations into batches of at most `max` (all in
/// one when there is no limit or they fit). Split batches are ordered so no
/// intermediate revision references what is not written yet: puts of the
/// kinds others refer to (services, workloads, endpoints, DestinationRules)
/// before the kinds that refer to them (Sidecars, VirtualServices), and
/// deletes after puts, in the reverse order. Public for other writers of a
/// cluster's keys built on [`DirectoryState`](super::DirectoryState) (loadtest).
pub fn write_batches(mut ops: Vec<Op>, max: Option<usize>) -> Vec<Vec<Op>> {
    if ops.is_empty() {
        return Vec::new();
    }
    let max = max.unwrap_or(usize::MAX).max(1);
    if ops.len() <= max {
        return vec![ops];
    }
    fn rank(key: &str) -> usize {
        use meshplane_model::Kind::*;
        const ORDER: [meshplane_model::Kind; 13] = [
            Namespace,
            Node,
            Service,
            ServiceEntry,
            Pod,
            WorkloadEntry,
            EndpointSlice,
            DestinationRule,
            PeerAuthentication,
            AuthorizationPolicy,
            Gateway,
            Sidecar,
            VirtualService,
        ];
        let kind = meshplane_model::key::ObjectKey::decode(key).map(|k| k.object.kind);
        kind.and_then(|k| ORDER.iter().position(|o| *o == k)).unwrap_or(ORDER.len())
    }
    ops.sort_by_key(|op| match op {
        Op::Put { key, .. } => (0, rank(key) as isize),
        Op::Delete { key } => (1, -(rank(key) as isize)),
    });
    ops.chunks(max).map(<[Op]>::to_vec).collect()
}

#[cfg(test)]
mod write_batch_tests {
    use bytes::Bytes;

    use super::*;

    fn put(resource: &str, name: &str) -> Op {
        Op::Put { key: format!("/meshplane/v1/clusters/c/{resource}/ns/{name}"), value: Bytes::from_static(b"{}") }
    }

    fn delete(resource: &str, name: &str) -> Op {
        Op::Delete { key: format!("/meshplane/v1/clusters/c/{resource}/ns/{name}") }
    }

    #[test]
    fn a_reconciliation_that_fits_is_one_batch_in_its_own_order() {
        let ops = vec![put("virtualservices", "a"), put("services", "a"), delete("pods", "p")];
        assert_eq!(write_batches(ops.clone(), Some(3)), vec![ops.clone()]);
        assert_eq!(write_batches(ops.clone(), None), vec![ops]);
        assert!(write_batches(Vec::new(), Some(3)).is_empty());
    }

    #[test]
    fn split_batches_write_referenced_kinds_first_and_delete_referrers_first() {
        let ops = vec![
            delete("services", "old"),
            put("virtualservices", "vs"),
            delete("virtualservices", "old-vs"),
            put("destinationrules", "dr"),
            put("services", "svc"),
        ];
        let batches = write_batches(ops, Some(2));
        assert_eq!(
            batches,
            vec![
                vec![put("services", "svc"), put("destinationrules", "dr")],
                vec![put("virtualservices", "vs"), delete("virtualservices", "old-vs")],
                vec![delete("services", "old")],
            ]
        );
    }
}
