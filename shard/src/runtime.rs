//! The shard process: keeps a [`MeshSnapshot`] in step with the store, and
//! each connected proxy's view in step with the snapshot.
//!
//! ```text
//!  Store::list ─▶ MeshState ◀─ Store::watch (batches) ─┐
//!                    │                                  │ Compacted ─▶ relist
//!               Debouncer (100 ms quiet, 10 s max)      │ error ─▶ keep serving, retry
//!                    ▼
//!            MeshSnapshot::build ─▶ generate() once per ProxyClass in use
//!                    ▼
//!            for each proxy: class view changed? ─▶ watch::Sender<Arc<ProxyView>> ─▶ ADS stream
//!                    ▼
//!            revision (watch) ─▶ ADS streams waiting to catch up (ViewSource::revisions)
//! ```
//!
//! A proxy's class is re-resolved on every rebuild, so a Pod relabelled or a
//! Sidecar added moves its proxies to the right config without a reconnect.
//! Store errors never stop the shard: it keeps serving the last good snapshot
//! and resumes the watch from the last revision it saw.
//!
//! ## The revision the views reflect
//! The shard lists the mesh (`/meshplane/v1/clusters/`) but watches the whole
//! meshplane keyspace (`/meshplane/v1/`), shard registrations included, so it
//! sees every revision the store takes. [`ViewSource::revisions`] reads `r`
//! once every change up to `r` is in the views: a rebuild publishes its
//! snapshot's revision, and a batch with no mesh change (a shard registering
//! or draining) advances it at once when no mesh change awaits a rebuild.
//! Watching only the mesh, a shard whose last mesh change is at 40 could not
//! tell that it is as current as a peer that listed the store at 45 (a
//! registration): a re-homed proxy would wait for a revision that never comes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, value::Kind as ValueKind};
use futures::StreamExt;
use meshplane_model::MeshObject;
use meshplane_model::key::{CLUSTERS_PREFIX, ObjectKey, ROOT};
use meshplane_model::proxy::{NodeId, ProxyMetadata};
use meshplane_store::{Event, Revision, Store, StoreError, WatchItem};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::ads::{ProxySubscription, SubscribeError, ViewSource};
use crate::debounce::{DebounceConfig, Debouncer};
use crate::generate::{EndpointCache, EndpointUse, ProxyClass, Refresh, generate_class, refresh_endpoints};
use crate::resources::{ProxyView, ResourceType};
use crate::snapshot::{MeshSnapshot, MeshState};

/// Settings of a shard.
#[derive(Clone, Debug, Default)]
pub struct ShardConfig {
    pub debounce: DebounceConfig,
}

/// A class's config and what of the snapshot's endpoints it was made from.
#[derive(Clone)]
struct ClassConfig {
    view: Arc<ProxyView>,
    uses: Arc<EndpointUse>,
}

struct ProxyEntry {
    id: String,
    node: NodeId,
    metadata: ProxyMetadata,
    class: ProxyClass,
    views: watch::Sender<Arc<ProxyView>>,
}

/// Counters for `/metrics` and debug pages.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub rebuilds: AtomicU64,
    pub classes_generated: AtomicU64,
    /// Classes brought up to date by an endpoint-only rebuild without being
    /// generated again (their ClusterLoadAssignments replaced).
    pub classes_refreshed: AtomicU64,
    /// Rebuilds in which only endpoints changed.
    pub endpoint_rebuilds: AtomicU64,
    pub proxy_pushes: AtomicU64,
    pub store_errors: AtomicU64,
    pub decode_errors: AtomicU64,
}

struct Inner {
    store: Arc<dyn Store>,
    config: ShardConfig,
    snapshot: RwLock<Arc<MeshSnapshot>>,
    /// Class configs generated from the current snapshot.
    classes: Mutex<HashMap<ProxyClass, ClassConfig>>,
    proxies: Mutex<BTreeMap<u64, ProxyEntry>>,
    next_connection: AtomicU64,
    endpoints: EndpointCache,
    ready: watch::Sender<bool>,
    /// Every store change up to this revision is in the published views.
    revision: watch::Sender<Revision>,
    stats: ShardStats,
}

/// A shard: owns the mesh snapshot and the views of the proxies connected to it.
#[derive(Clone)]
pub struct Shard {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").finish_non_exhaustive()
    }
}

impl Shard {
    pub fn new(store: Arc<dyn Store>, config: ShardConfig) -> Shard {
        Shard {
            inner: Arc::new(Inner {
                store,
                config,
                snapshot: RwLock::new(Arc::new(MeshSnapshot::default())),
                classes: Mutex::new(HashMap::new()),
                proxies: Mutex::new(BTreeMap::new()),
                next_connection: AtomicU64::new(1),
                endpoints: EndpointCache::default(),
                ready: watch::channel(false).0,
                revision: watch::channel(0).0,
                stats: ShardStats::default(),
            }),
        }
    }

    /// Becomes true once the first snapshot is loaded.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    pub fn snapshot(&self) -> Arc<MeshSnapshot> {
        self.inner.snapshot.read().expect("snapshot lock poisoned").clone()
    }

    pub fn stats(&self) -> &ShardStats {
        &self.inner.stats
    }

    /// Follow the store until `shutdown` turns true. Never returns early on
    /// store errors.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        'relist: loop {
            if *shutdown.borrow() {
                return;
            }
            let (mut state, mut revision) = match self.list().await {
                Ok(loaded) => loaded,
                Err(e) => {
                    self.store_error("listing the mesh", &e, &mut backoff, &mut shutdown).await;
                    continue 'relist;
                }
            };
            self.rebuild(&state, revision).await;
            self.inner.ready.send_replace(true);
            backoff = Duration::from_millis(100);
            let mut debouncer = Debouncer::new(self.inner.config.debounce);
            loop {
                // The whole keyspace, so every revision is seen (module docs).
                let mut stream = match self.inner.store.watch(ROOT, revision + 1).await {
                    Ok(s) => s,
                    Err(StoreError::Compacted { .. }) => continue 'relist,
                    Err(e) => {
                        self.store_error("watching the mesh", &e, &mut backoff, &mut shutdown).await;
                        continue;
                    }
                };
                loop {
                    let deadline = debouncer.deadline();
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(WatchItem::Batch(batch))) => {
                                backoff = Duration::from_millis(100);
                                revision = batch.revision;
                                let mesh = batch.events.iter().any(|e| e.key().starts_with(CLUSTERS_PREFIX));
                                for event in batch.events {
                                    self.apply(&mut state, event);
                                }
                                if mesh {
                                    debouncer.on_change(Instant::now());
                                } else if debouncer.deadline().is_none() {
                                    // Nothing of the mesh changed, and nothing awaits a
                                    // rebuild: the views are current at this revision too.
                                    self.advance_revision(revision);
                                }
                            }
                            Some(Ok(WatchItem::Compacted { compact_revision })) => {
                                tracing::warn!(revision, compact_revision, "store history compacted past our revision; relisting");
                                continue 'relist;
                            }
                            Some(Err(e)) => {
                                self.store_error("watching the mesh", &e, &mut backoff, &mut shutdown).await;
                                break;
                            }
                            None => break,
                        },
                        _ = sleep_until(deadline), if deadline.is_some() => {
                            if let Some((changes, waited)) = debouncer.fire(Instant::now()) {
                                tracing::debug!(changes, ?waited, revision, "debounced changes; rebuilding");
                                self.rebuild(&state, revision).await;
                            }
                        }
                        _ = shutdown.changed() => return,
                    }
                }
                if *shutdown.borrow() {
                    return;
                }
            }
        }
    }

    async fn store_error(
        &self,
        what: &str,
        e: &StoreError,
        backoff: &mut Duration,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        self.inner.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, retry_in = ?*backoff, "store error while {what}; serving the last good snapshot");
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = shutdown.changed() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }

    async fn list(&self) -> Result<(MeshState, Revision), StoreError> {
        let listing = self.inner.store.list(CLUSTERS_PREFIX, None).await?;
        let mut state = MeshState::default();
        for kv in listing.kvs {
            self.apply(&mut state, Event::Put(kv));
        }
        Ok((state, listing.revision))
    }

    /// Apply a store event to the mesh; keys outside the mesh are ignored.
    fn apply(&self, state: &mut MeshState, event: Event) {
        match event {
            Event::Put(kv) => {
                let Some(key) = ObjectKey::decode(&kv.key) else { return };
                match MeshObject::from_json(key.object.kind, &kv.value) {
                    Ok(object) => state.apply(key, object),
                    Err(e) => {
                        self.inner.stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(key = %kv.key, error = %e, "skipping undecodable store value; the previous value is dropped too");
                        state.remove(&key);
                    }
                }
            }
            Event::Delete { key, .. } => {
                if let Some(key) = ObjectKey::decode(&key) {
                    state.remove(&key);
                }
            }
        }
    }

    /// Build a snapshot, regenerate the classes in use, and push changed views.
    async fn rebuild(&self, state: &MeshState, revision: Revision) {
        let snapshot = Arc::new(MeshSnapshot::build(state, revision));
        let shard = self.clone();
        let work = tokio::task::spawn_blocking(move || shard.publish(snapshot));
        if let Err(e) = work.await {
            tracing::error!(error = %e, "config generation panicked; keeping the previous config");
        }
    }

    /// Install a snapshot and bring every proxy's view up to date with it.
    ///
    /// Content is compared once per class: a class whose new config equals
    /// its previous one keeps the previous `Arc`, so its proxies are checked
    /// with a pointer comparison and not woken at all.
    ///
    /// When only endpoints changed (the snapshot's other config inputs are
    /// equal to the previous one's), classes are not generated again: each
    /// class's ClusterLoadAssignments for the changed hosts are looked up in
    /// the shared [`EndpointCache`] (encoded once for every class), and a
    /// class none of whose endpoints changed keeps its view.
    fn publish(&self, snapshot: Arc<MeshSnapshot>) {
        let inner = &self.inner;
        inner.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
        let before = std::mem::replace(&mut *inner.snapshot.write().expect("snapshot lock poisoned"), snapshot.clone());
        let endpoints_only = snapshot.same_config_inputs(&before);
        let changed_hosts = if endpoints_only { snapshot.changed_endpoint_hosts(&before) } else { Default::default() };
        if endpoints_only {
            inner.stats.endpoint_rebuilds.fetch_add(1, Ordering::Relaxed);
        } else {
            // A full round: cache entries no class uses any more are swept after it.
            inner.endpoints.begin_round();
        }
        let previous = std::mem::take(&mut *inner.classes.lock().expect("classes lock poisoned"));
        let mut fresh: HashMap<ProxyClass, ClassConfig> = HashMap::new();
        let mut proxies = inner.proxies.lock().expect("proxies lock poisoned");
        for entry in proxies.values_mut() {
            entry.class = classify(&snapshot, &entry.node, &entry.metadata);
            let view = fresh
                .entry(entry.class.clone())
                .or_insert_with(|| {
                    let old = previous.get(&entry.class);
                    if endpoints_only && let Some(old) = old {
                        match refresh_endpoints(&old.view, &old.uses, &snapshot, &changed_hosts, &inner.endpoints) {
                            Refresh::Unchanged => return old.clone(),
                            Refresh::Endpoints(view) => {
                                inner.stats.classes_refreshed.fetch_add(1, Ordering::Relaxed);
                                return ClassConfig { view: Arc::new(view), uses: old.uses.clone() };
                            }
                            Refresh::Regenerate => {}
                        }
                    }
                    let new = self.generate(&snapshot, &entry.class);
                    match old {
                        // Same content: keep the old view so its proxies are not woken,
                        // but the new endpoint inputs (a subset's labels may have changed
                        // without changing which endpoints it selects today).
                        Some(old) if old.view.same_content(&new.view) => {
                            ClassConfig { view: old.view.clone(), uses: new.uses }
                        }
                        _ => new,
                    }
                })
                .view
                .clone();
            if !Arc::ptr_eq(&entry.views.borrow(), &view) {
                inner.stats.proxy_pushes.fetch_add(1, Ordering::Relaxed);
                entry.views.send_replace(view);
            }
        }
        drop(proxies);
        if !endpoints_only {
            inner.endpoints.sweep();
        }
        *inner.classes.lock().expect("classes lock poisoned") = fresh;
        // Last: a stream waiting for this revision wakes to its new view.
        self.advance_revision(snapshot.revision);
    }

    fn generate(&self, snapshot: &MeshSnapshot, class: &ProxyClass) -> ClassConfig {
        self.inner.stats.classes_generated.fetch_add(1, Ordering::Relaxed);
        let (view, uses) = generate_class(snapshot, class, &self.inner.endpoints);
        ClassConfig { view: Arc::new(view), uses: Arc::new(uses) }
    }

    fn advance_revision(&self, revision: Revision) {
        self.inner.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
    }

    /// The view of a class from the current snapshot, generating it if no
    /// connected proxy has that class yet.
    fn class_view(&self, class: &ProxyClass) -> Arc<ProxyView> {
        if let Some(config) = self.inner.classes.lock().expect("classes lock poisoned").get(class) {
            return config.view.clone();
        }
        let config = self.generate(&self.snapshot(), class);
        let view = config.view.clone();
        self.inner.classes.lock().expect("classes lock poisoned").insert(class.clone(), config);
        view
    }

    /// Connected proxies: `(connection, proxy id, class, view revision)`.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.inner
            .proxies
            .lock()
            .expect("proxies lock poisoned")
            .iter()
            .map(|(conn, p)| ConnectionInfo {
                connection: *conn,
                proxy_id: p.id.clone(),
                class: p.class.clone(),
                view: p.views.borrow().clone(),
            })
            .collect()
    }

    /// The view of the newest connection of a proxy id.
    pub fn proxy_view(&self, proxy_id: &str) -> Option<ConnectionInfo> {
        self.connections().into_iter().rev().find(|c| c.proxy_id == proxy_id)
    }
}

/// A connected proxy, for debug pages.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    pub connection: u64,
    pub proxy_id: String,
    pub class: ProxyClass,
    pub view: Arc<ProxyView>,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Read the istio-agent metadata a proxy sent.
pub fn proxy_metadata(metadata: Option<&Struct>) -> ProxyMetadata {
    let mut out = ProxyMetadata::default();
    let Some(metadata) = metadata else { return out };
    let text = |key: &str| match metadata.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(ValueKind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    out.namespace = text("NAMESPACE");
    out.service_account = text("SERVICE_ACCOUNT");
    out.cluster_id = text("CLUSTER_ID");
    out.generator = text("GENERATOR");
    out.interception_mode = text("INTERCEPTION_MODE");
    if let Some(ValueKind::StructValue(labels)) = metadata.fields.get("LABELS").and_then(|v| v.kind.as_ref()) {
        for (k, v) in &labels.fields {
            if let Some(ValueKind::StringValue(s)) = &v.kind {
                out.labels.insert(k.clone(), s.clone());
            }
        }
    }
    out
}

/// A proxy's class: its namespace, and the labels of the workload at its IP
/// (metadata LABELS when no workload is known).
pub fn classify(snapshot: &MeshSnapshot, node: &NodeId, metadata: &ProxyMetadata) -> ProxyClass {
    let namespace =
        metadata.namespace.clone().or_else(|| node.namespace().map(str::to_string)).unwrap_or_else(|| "default".into());
    let labels = snapshot
        .workload_at(node.ip, Some(&namespace))
        .map(|w| w.labels.clone())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| metadata.labels.clone());
    ProxyClass {
        namespace,
        labels,
        node_type: node.node_type,
        grpc: metadata.is_grpc(),
        interception_none: metadata.interception_mode.as_deref() == Some("NONE"),
    }
}

struct Registration {
    shard: Shard,
    connection: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut proxies) = self.shard.inner.proxies.lock() {
            proxies.remove(&self.connection);
        }
    }
}

impl ViewSource for Shard {
    fn subscribe(&self, node: &Node) -> Result<ProxySubscription, SubscribeError> {
        let id = NodeId::parse(&node.id)
            .map_err(|e| SubscribeError::InvalidNode { node_id: node.id.clone(), reason: e.to_string() })?;
        if !*self.inner.ready.borrow() {
            return Err(SubscribeError::Unavailable {
                proxy_id: node.id.clone(),
                reason: "the mesh snapshot is not loaded yet".into(),
            });
        }
        let metadata = proxy_metadata(node.metadata.as_ref());
        // Holding the proxies lock orders this against `publish`: either the
        // proxy is registered before a rebuild (which then updates it) or it
        // is given a view of the snapshot that rebuild installed.
        let mut proxies = self.inner.proxies.lock().expect("proxies lock poisoned");
        let class = classify(&self.snapshot(), &id, &metadata);
        let view = self.class_view(&class);
        let (tx, rx) = watch::channel(view);
        let connection = self.inner.next_connection.fetch_add(1, Ordering::Relaxed);
        tracing::info!(proxy = %node.id, namespace = %class.namespace, labels = ?class.labels, "proxy connected");
        proxies.insert(connection, ProxyEntry { id: node.id.clone(), node: id, metadata, class, views: tx });
        drop(proxies);
        Ok(ProxySubscription {
            proxy_id: node.id.clone(),
            views: rx,
            _registration: Box::new(Registration { shard: self.clone(), connection }),
        })
    }

    fn revisions(&self) -> Option<watch::Receiver<i64>> {
        Some(self.inner.revision.subscribe())
    }
}

/// Resource counts by type, for logs and debug pages.
pub fn view_summary(view: &ProxyView) -> BTreeMap<&'static str, usize> {
    ResourceType::ALL.iter().map(|t| (t.short(), view.resources(*t).len())).collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use envoy_types::pb::google::protobuf::Value;
    use meshplane_model::parse::parse_yaml;
    use meshplane_store::{EmbeddedStore, Op};

    use super::*;

    async fn put_yaml(store: &EmbeddedStore, yaml: &str) {
        let parsed = parse_yaml("test.yaml", yaml);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        let ops = parsed
            .objects
            .iter()
            .map(|o| Op::Put {
                key: ObjectKey::new("Kubernetes", o.object.object_ref()).encode(),
                value: o.object.to_json().into(),
            })
            .collect();
        store.batch(ops).await.unwrap();
    }

    fn node(ip: &str, pod: &str, ns: &str) -> Node {
        let mut metadata = Struct::default();
        metadata.fields.insert("NAMESPACE".into(), Value { kind: Some(ValueKind::StringValue(ns.into())) });
        Node {
            id: format!("sidecar~{ip}~{pod}.{ns}~{ns}.svc.cluster.local"),
            metadata: Some(metadata),
            ..Default::default()
        }
    }

    const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns-a}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: ns-b}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns-a}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns-b}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b-1, namespace: ns-b, labels: {app: b}}
status: {podIP: 10.0.0.2}
"#;

    async fn started() -> (EmbeddedStore, Shard, watch::Sender<bool>) {
        let store = EmbeddedStore::in_memory();
        put_yaml(&store, MESH).await;
        let shard = Shard::new(Arc::new(store.clone()), ShardConfig::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(shard.clone().run(stopped));
        let mut ready = shard.ready();
        ready.wait_for(|r| *r).await.unwrap();
        (store, shard, stop)
    }

    async fn next_view(sub: &mut ProxySubscription) -> Arc<ProxyView> {
        tokio::time::timeout(Duration::from_secs(30), sub.views.changed()).await.expect("a new view").unwrap();
        sub.views.borrow_and_update().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_reaches_only_the_proxies_whose_config_changed() {
        let (store, shard, _stop) = started().await;
        let mut a = shard.subscribe(&node("10.0.0.1", "a-1", "ns-a")).unwrap();
        let mut b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();
        a.views.borrow_and_update();
        b.views.borrow_and_update();

        // A new port on service b is only visible to ns-b's proxies.
        put_yaml(
            &store,
            "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns-b}\nspec: {ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}\n",
        )
        .await;
        let view = next_view(&mut b).await;
        assert!(view.clusters.contains_key("outbound|8080||b.ns-b.svc.cluster.local"));
        // The rebuild that served b is done; a was not woken by it.
        assert!(!a.views.has_changed().unwrap(), "ns-a's config did not change");
        assert!(shard.stats().rebuilds.load(Ordering::Relaxed) >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relabelled_pod_moves_its_proxy_to_its_new_config() {
        let (store, shard, _stop) = started().await;
        let mut b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();
        assert!(!b.views.borrow_and_update().clusters.contains_key("outbound|80||a.ns-a.svc.cluster.local"));
        // A Sidecar selecting app=wide imports everything; relabel the pod.
        put_yaml(
            &store,
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: wide, namespace: ns-b}\nspec:\n  workloadSelector: {labels: {app: wide}}\n  egress: [{hosts: [\"*/*\"]}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b-1, namespace: ns-b, labels: {app: wide}}\nstatus: {podIP: 10.0.0.2}\n",
        )
        .await;
        let view = next_view(&mut b).await;
        assert!(view.clusters.contains_key("outbound|80||a.ns-a.svc.cluster.local"), "{:?}", view.clusters.keys());
    }

    const PORT_8080: &str = "outbound|8080||b.ns-b.svc.cluster.local";

    /// A write outside the mesh, as a shard registering makes.
    async fn put_membership(store: &EmbeddedStore, shard: &str) -> Revision {
        let key = meshplane_model::key::shard_key(shard);
        store.put(&key, "{}".into(), Default::default()).await.unwrap()
    }

    async fn add_port_8080(store: &EmbeddedStore) -> Revision {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns-b}\nspec: {ports: [{name: http, port: 80}, {name: http-alt, port: 8080}]}\n";
        put_yaml(store, yaml).await;
        store.revision().await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_revision_reaches_every_store_write_once_the_views_reflect_it() {
        let (store, shard, _stop) = started().await;
        let mut revisions = shard.revisions().expect("a shard has revisions");
        let listed = *revisions.borrow_and_update();
        assert_eq!(listed, shard.snapshot().revision);
        assert!(listed > 0);
        let b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();

        // A mesh change: the revision reaches it with the rebuild, and by
        // then the proxy's view has the change.
        let changed = add_port_8080(&store).await;
        let views = b.views.clone();
        revisions.wait_for(|r| *r >= changed).await.unwrap();
        assert!(views.borrow().clusters.contains_key(PORT_8080));
        assert_eq!(shard.snapshot().revision, changed);

        // A write outside the mesh (another shard registering): nothing to
        // rebuild, and the views are current at its revision too. Without
        // it a peer that listed the store later could never be caught up with.
        let rebuilds = shard.stats().rebuilds.load(Ordering::Relaxed);
        let registered = put_membership(&store, "shard-x").await;
        revisions.wait_for(|r| *r == registered).await.unwrap();
        assert_eq!(shard.stats().rebuilds.load(Ordering::Relaxed), rebuilds, "no rebuild for a membership write");
    }

    /// Write YAML and wait until the shard's views reflect it.
    async fn apply_and_wait(store: &EmbeddedStore, shard: &Shard, yaml: &str) {
        put_yaml(store, yaml).await;
        let written = store.revision().await.unwrap();
        shard.revisions().unwrap().wait_for(|r| *r >= written).await.unwrap();
    }

    fn pod_yaml(name: &str, ip: &str, labels: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns-b, labels: {labels}}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    const B_SELECTING: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: ns-b}\nspec: {selector: {app: b}, ports: [{name: http, port: 80}]}\n";

    /// The view a proxy has equals what generating its class from the
    /// shard's snapshot gives.
    fn assert_view_is_generated(shard: &Shard, sub: &ProxySubscription) {
        let info = shard.proxy_view(&sub.proxy_id).expect("connected");
        let expected = crate::generate::generate(&shard.snapshot(), &info.class, &EndpointCache::default());
        assert!(sub.views.borrow().same_content(&expected), "the served view differs from a generation");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_change_refreshes_classes_without_generating_them() {
        let (store, shard, _stop) = started().await;
        let mut a = shard.subscribe(&node("10.0.0.1", "a-1", "ns-a")).unwrap();
        let mut b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();
        apply_and_wait(&store, &shard, B_SELECTING).await;
        a.views.borrow_and_update();
        b.views.borrow_and_update();
        let stats = shard.stats();
        let (generated, refreshed) =
            (stats.classes_generated.load(Ordering::Relaxed), stats.classes_refreshed.load(Ordering::Relaxed));
        let endpoint_rebuilds = stats.endpoint_rebuilds.load(Ordering::Relaxed);

        apply_and_wait(&store, &shard, &pod_yaml("b-2", "10.0.0.3", "{app: b}")).await;
        let view = next_view(&mut b).await;
        let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
            prost::Message::decode(view.endpoints["outbound|80||b.ns-b.svc.cluster.local"].body.clone()).unwrap();
        assert_eq!(cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum::<usize>(), 2);
        assert_view_is_generated(&shard, &b);
        assert_eq!(stats.endpoint_rebuilds.load(Ordering::Relaxed), endpoint_rebuilds + 1);
        assert_eq!(stats.classes_generated.load(Ordering::Relaxed), generated, "no class generated again");
        assert_eq!(stats.classes_refreshed.load(Ordering::Relaxed), refreshed + 1, "ns-b's class refreshed");
        assert!(!a.views.has_changed().unwrap(), "ns-a does not see b: not woken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_subset_redefined_to_select_the_same_endpoints_is_used_for_the_next_endpoint_change() {
        let (store, shard, _stop) = started().await;
        let b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();
        let rule = |labels: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: b, namespace: ns-b}}\nspec: {{host: b, subsets: [{{name: v1, labels: {labels}}}]}}\n"
            )
        };
        apply_and_wait(&store, &shard, B_SELECTING).await;
        apply_and_wait(&store, &shard, &pod_yaml("b-1", "10.0.0.2", "{app: b, version: v1, tier: x}")).await;
        apply_and_wait(&store, &shard, &rule("{version: v1}")).await;
        let before = b.views.borrow().clone();
        // Same endpoints selected, so the same config: the view is kept...
        apply_and_wait(&store, &shard, &rule("{version: v1, tier: x}")).await;
        assert!(Arc::ptr_eq(&before, &b.views.borrow()));
        // ...but a pod of v1 without tier x is not in the subset.
        apply_and_wait(&store, &shard, &pod_yaml("b-2", "10.0.0.3", "{app: b, version: v1}")).await;
        assert_view_is_generated(&shard, &b);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_outside_the_mesh_waits_for_a_pending_rebuild() {
        let (store, shard, _stop) = started().await;
        let mut revisions = shard.revisions().unwrap();
        let b = shard.subscribe(&node("10.0.0.2", "b-1", "ns-b")).unwrap();
        // The mesh change is still being debounced when the membership write
        // arrives: the revision must not claim it before the rebuild.
        let changed = add_port_8080(&store).await;
        let registered = put_membership(&store, "shard-x").await;
        assert!(registered > changed);
        revisions.wait_for(|r| *r >= changed).await.unwrap();
        assert!(b.views.borrow().clusters.contains_key(PORT_8080), "the revision ran ahead of the views");
        revisions.wait_for(|r| *r == registered).await.unwrap();
    }
}
