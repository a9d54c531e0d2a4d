//! The generated mesh as meshplane's store records, written straight to the
//! store instead of a config directory (`loadtest gen-mesh --store`,
//! `loadtest run` on such a mesh).
//!
//! ```text
//!  Mesh::files() (path ─▶ YAML) ─▶ DirectoryState (registry-sync's core: parse, keys, JSON, diff)
//!        ▲                               │ ops (puts of changed JSON, deletes of stale keys)
//!  a change rewrites one file            ▼
//!                              write_batches (≤ the store's max ops per transaction)
//!                                        │ Store::batch ─▶ /meshplane/v1/clusters/{cluster}/...
//!                                        ▼
//!                              the revision of the write: convergence is timed from it
//! ```
//!
//! The records are exactly what `meshplane registry-sync` would write for the
//! same YAML, because they are made by the same code: the generated files go
//! through registry-sync's [`DirectoryState`] (which parses them with
//! `meshplane-model` and keys them with `meshplane_model::key`) as a directory
//! that exists only in memory. A change rewrites one service's file, which
//! reconciles to one object, written as one store transaction: its revision
//! is the one the report gives, and convergence runs from that write.
//!
//! ## Which cluster
//! The objects go under their own cluster id, [`DEFAULT_CLUSTER`]
//! (`--store-cluster`), so they live beside what registry-sync serves:
//! registry-sync owns the keys of its `--cluster-id` (default `Kubernetes`)
//! and deletes, at startup, those of that cluster no file defines; it never
//! touches another cluster's keys. Shards merge every cluster's objects, so
//! a registry-sync may keep running on the same store, as long as it does not
//! serve the same services too (their endpoints would be merged) and does not
//! use the loadtest cluster id. loadtest in turn owns its cluster: writing a
//! mesh deletes every key of that cluster the mesh does not define.
//!
//! Where a mesh lives is recorded in `DIR/store.json` next to `mesh.json`, so
//! `loadtest run --mesh DIR` makes its changes where the mesh is.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use meshplane_model::key::{cluster_prefix, valid_cluster_id};
use meshplane_model::parse::Severity;
use meshplane_registry_sync::directory::{DirectoryState, FileInput, Reconciliation, write_batches};
use meshplane_store::etcd::{EtcdOptions, EtcdStore};
use meshplane_store::{Op, Revision, Store};
use serde::{Deserialize, Serialize};

use crate::conn::unix_ns;
use crate::mesh::Mesh;

/// The cluster id loadtest's objects are written under by default.
pub const DEFAULT_CLUSTER: &str = "loadtest";

/// Where a mesh lives in a store: `DIR/store.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreLocation {
    /// `etcd://HOST:PORT[,HOST:PORT...]`
    pub url: String,
    /// The cluster id the mesh's objects are keyed under.
    pub cluster: String,
}

impl StoreLocation {
    const FILE: &'static str = "store.json";

    /// A location, checked: an etcd URL and a cluster id usable in keys.
    pub fn new(url: &str, cluster: &str) -> anyhow::Result<StoreLocation> {
        if !url.starts_with("etcd://") {
            anyhow::bail!(
                "--store {url:?}: loadtest writes to a store shared with meshplane's shards, which is etcd: \
                 give etcd://HOST:PORT[,HOST:PORT...]"
            );
        }
        meshplane_store::etcd::parse_etcd_url(url).with_context(|| format!("--store {url:?}"))?;
        anyhow::ensure!(
            valid_cluster_id(cluster),
            "--store-cluster {cluster:?} cannot be used in store keys: give a non-empty id without '/'"
        );
        Ok(StoreLocation { url: url.to_string(), cluster: cluster.to_string() })
    }

    /// The location recorded in a mesh directory, if the mesh lives in a store.
    pub fn load(dir: &Path) -> anyhow::Result<Option<StoreLocation>> {
        let path = dir.join(Self::FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not a loadtest store location", path.display()))
                .map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        crate::mesh::write_atomic(&dir.join(Self::FILE), &serde_json::to_string_pretty(self)?)
    }

    /// Forget that a directory's mesh lives in a store (it was regenerated as YAML).
    pub fn remove(dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(Self::FILE);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} cluster {}", self.url, self.cluster)
    }
}

/// What writing a whole mesh did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Objects the mesh defines.
    pub objects: usize,
    pub puts: usize,
    pub deletes: usize,
    /// Store transactions written.
    pub batches: usize,
    /// The revision of the last one.
    pub revision: Option<Revision>,
}

/// One change written to the store.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StoreWrite {
    /// Unix ns just before the transaction was sent: convergence runs from here.
    pub started_unix_ns: u64,
    /// How long the store took to acknowledge it.
    pub ms: f64,
    /// The revision it was committed at.
    pub revision: Revision,
    /// Objects it put or deleted.
    pub ops: usize,
}

/// The sans-IO part: the mesh's files fed to registry-sync's core, and the
/// operations that bring the store to them.
#[derive(Debug)]
pub struct MeshRecords {
    state: DirectoryState,
}

impl MeshRecords {
    /// For `cluster`, given what the store holds under its prefix.
    pub fn new(cluster: &str, stored: impl IntoIterator<Item = (String, bytes::Bytes)>) -> MeshRecords {
        let mut state = DirectoryState::new(cluster);
        state.load_store(stored);
        MeshRecords { state }
    }

    /// The operations that make the cluster's keys equal to the whole mesh
    /// (puts of what differs, deletes of what it does not define).
    pub fn plan_mesh(&mut self, mesh: &Mesh) -> anyhow::Result<Vec<Op>> {
        for (path, text) in mesh.files() {
            self.state.update(&path.to_string_lossy(), FileInput::Content(text.into_bytes()));
        }
        checked(self.state.reconcile())
    }

    /// The operations of a change to service `i` (its file rewritten).
    pub fn plan_service(&mut self, mesh: &Mesh, i: usize) -> anyhow::Result<Vec<Op>> {
        let (path, text) = mesh.service_file(i);
        self.state.update(&path.to_string_lossy(), FileInput::Content(text.into_bytes()));
        checked(self.state.reconcile())
    }

    /// Record that `ops` are in the store.
    pub fn applied(&mut self, ops: &[Op]) {
        self.state.applied(ops);
    }

    /// Objects the mesh defines (as of the last plan).
    pub fn objects(&self) -> usize {
        self.state.desired().count()
    }
}

/// A generated file that meshplane's parser rejects, or two that define
/// the same object, is a bug of the generator: never write half a mesh.
fn checked(r: Reconciliation) -> anyhow::Result<Vec<Op>> {
    let mut problems: Vec<String> = r
        .reports
        .iter()
        .flat_map(|f| f.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()))
        .collect();
    problems.extend(r.new_conflicts.iter().map(|d| d.to_string()));
    anyhow::ensure!(
        problems.is_empty(),
        "the generated mesh does not parse as meshplane's objects (a loadtest bug; nothing was written): {}",
        problems.join("; ")
    );
    Ok(r.ops)
}

/// A mesh in a store: the connection and the records it holds.
pub struct MeshStore {
    store: Arc<dyn Store>,
    location: StoreLocation,
    records: MeshRecords,
}

impl MeshStore {
    /// Connect and read what the store holds under the location's cluster.
    pub async fn open(location: StoreLocation) -> anyhow::Result<MeshStore> {
        let store = EtcdStore::connect_url(&location.url, EtcdOptions::default())
            .await
            .with_context(|| format!("cannot use --store {}", location.url))?;
        let prefix = cluster_prefix(&location.cluster);
        let listed = store.list(&prefix, None).await.with_context(|| {
            format!("cannot list {prefix} in {}: is etcd running and reachable from here?", location.url)
        })?;
        let records = MeshRecords::new(&location.cluster, listed.kvs.into_iter().map(|kv| (kv.key, kv.value)));
        Ok(MeshStore { store: Arc::new(store), location, records })
    }

    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Make the cluster's keys equal to `mesh`, in transactions of at most
    /// the store's limit, referenced kinds first (as registry-sync does).
    pub async fn sync(&mut self, mesh: &Mesh) -> anyhow::Result<SyncSummary> {
        let ops = self.records.plan_mesh(mesh)?;
        let mut summary = SyncSummary { objects: self.records.objects(), ..SyncSummary::default() };
        for batch in write_batches(ops, self.store.max_batch_ops()) {
            let revision = self.store.batch(batch.clone()).await.with_context(|| {
                format!(
                    "cannot write {} objects to {} (after {} transactions): the cluster's keys are now partly \
                     written; run again once the store answers",
                    batch.len(),
                    self.location,
                    summary.batches
                )
            })?;
            self.records.applied(&batch);
            summary.batches += 1;
            for op in &batch {
                match op {
                    Op::Put { .. } => summary.puts += 1,
                    Op::Delete { .. } => summary.deletes += 1,
                }
            }
            summary.revision = revision.or(summary.revision);
        }
        Ok(summary)
    }

    /// Write the change just made to service `i` as one store transaction.
    pub async fn write_service(&mut self, mesh: &Mesh, i: usize) -> anyhow::Result<StoreWrite> {
        let service = mesh.services[i].fqdn();
        let ops = self.records.plan_service(mesh, i)?;
        anyhow::ensure!(!ops.is_empty(), "the change to {service} changes no store record (a loadtest bug)");
        if let Some(max) = self.store.max_batch_ops() {
            anyhow::ensure!(
                ops.len() <= max,
                "the change to {service} is {} store operations, more than one transaction takes ({max})",
                ops.len()
            );
        }
        let started_unix_ns = unix_ns();
        let since = Instant::now();
        let revision = self
            .store
            .batch(ops.clone())
            .await
            .with_context(|| format!("cannot write the change to {service} to {}", self.location))?;
        let ms = since.elapsed().as_secs_f64() * 1e3;
        let revision = revision.with_context(|| {
            format!(
                "the store already held the change to {service}: is another loadtest writing cluster {}?",
                self.location.cluster
            )
        })?;
        self.records.applied(&ops);
        Ok(StoreWrite { started_unix_ns, ms, revision, ops: ops.len() })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use meshplane_model::MeshObject;
    use meshplane_model::key::ObjectKey;

    use super::*;
    use crate::mesh::MeshParams;

    fn mesh() -> Mesh {
        Mesh::generate(MeshParams {
            services: 30,
            pods_per_service: 3,
            namespaces: 3,
            shared_share: 0.1,
            vs_share: 0.2,
            dr_share: 0.1,
            tcp_share: 0.2,
            gateways: 1,
            no_sidecars: false,
        })
    }

    fn puts(ops: &[Op]) -> Vec<(&str, &Bytes)> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Put { key, value } => Some((key.as_str(), value)),
                Op::Delete { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_whole_mesh_is_every_object_keyed_under_the_cluster_as_meshplane_json() {
        let mesh = mesh();
        let mut records = MeshRecords::new("loadtest", []);
        let ops = records.plan_mesh(&mesh).unwrap();
        let pods: usize = mesh.services.iter().map(|s| s.pods.len()).sum();
        // 5 namespaces (3 + shared + istio-system), 4 sidecars, the gateway service and pod,
        // each service and its pods, DRs and VSs.
        let drs = mesh.services.iter().filter(|s| s.dr).count();
        let vss = mesh.services.iter().filter(|s| s.vs).count();
        assert_eq!(ops.len(), 5 + 4 + 2 + 30 + pods + drs + vss);
        assert_eq!(records.objects(), ops.len());
        for (key, value) in puts(&ops) {
            let k = ObjectKey::decode(key).unwrap_or_else(|| panic!("{key} is not a meshplane object key"));
            assert_eq!(k.cluster, "loadtest");
            // The value is the JSON meshplane decodes (what registry-sync writes).
            let object = MeshObject::from_json(k.object.kind, value).unwrap();
            assert_eq!(object.object_ref(), k.object);
        }
    }

    #[test]
    fn an_endpoint_change_is_one_pod_and_a_route_change_one_virtual_service() {
        let mut mesh = mesh();
        let mut records = MeshRecords::new("loadtest", []);
        let all = records.plan_mesh(&mesh).unwrap();
        records.applied(&all);
        let i = mesh.targets(true)[0];
        mesh.move_endpoint(i, 0);
        let ops = records.plan_service(&mesh, i).unwrap();
        let [(key, value)] = puts(&ops)[..] else { panic!("{ops:?}") };
        assert_eq!(ops.len(), 1);
        let k = ObjectKey::decode(key).unwrap();
        assert_eq!(k.object.kind, meshplane_model::Kind::Pod, "{key}");
        let MeshObject::Pod(pod) = MeshObject::from_json(k.object.kind, value).unwrap() else { unreachable!() };
        assert_eq!(pod.status.pod_ip.as_deref(), Some(mesh.services[i].pods[0].ip.to_string().as_str()));
        records.applied(&ops);
        // Nothing left to write once applied.
        assert!(records.plan_service(&mesh, i).unwrap().is_empty());

        let v = (0..mesh.services.len()).find(|&j| mesh.services[j].vs).unwrap();
        mesh.change_route(v, 1, "run").unwrap();
        let ops = records.plan_service(&mesh, v).unwrap();
        assert_eq!(ops.len(), 1, "{ops:?}");
        assert!(puts(&ops)[0].0.contains("/virtualservices/"), "{ops:?}");
    }

    #[test]
    fn writing_a_mesh_deletes_the_clusters_stale_keys_and_keeps_equal_ones() {
        let mesh = mesh();
        let mut first = MeshRecords::new("loadtest", []);
        let all = first.plan_mesh(&mesh).unwrap();
        let mut stored: Vec<(String, Bytes)> =
            puts(&all).into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let stale = "/meshplane/v1/clusters/loadtest/services/ns-9/gone".to_string();
        stored.push((stale.clone(), Bytes::from_static(b"{}")));
        // Another cluster's keys are not loadtest's to delete.
        stored.push(("/meshplane/v1/clusters/Kubernetes/services/ns/x".into(), Bytes::from_static(b"{}")));
        let mut again = MeshRecords::new("loadtest", stored);
        let ops = again.plan_mesh(&mesh).unwrap();
        assert_eq!(ops, vec![Op::Delete { key: stale }]);
    }

    #[test]
    fn locations_are_checked_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreLocation::load(dir.path()).unwrap(), None);
        let loc = StoreLocation::new("etcd://127.0.0.1:2379", "loadtest").unwrap();
        loc.save(dir.path()).unwrap();
        assert_eq!(StoreLocation::load(dir.path()).unwrap(), Some(loc));
        StoreLocation::remove(dir.path()).unwrap();
        StoreLocation::remove(dir.path()).unwrap();
        assert_eq!(StoreLocation::load(dir.path()).unwrap(), None);
        let e = StoreLocation::new("memory", "loadtest").unwrap_err().to_string();
        assert!(e.contains("etcd://HOST:PORT"), "{e}");
        let e = StoreLocation::new("etcd://127.0.0.1:2379", "a/b").unwrap_err().to_string();
        assert!(e.contains("--store-cluster"), "{e}");
    }
}
