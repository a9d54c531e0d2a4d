//! `loadtest gen-mesh`: generate a mesh and write it as a config directory
//! (YAML a control plane reads) or straight into meshplane's store.
//!
//! ```text
//!  MeshParams ─▶ Mesh::generate ─┬─ no --store: DIR/**.yaml + proxies.jsonl + mesh.json
//!                                └─ --store:    store records (store.rs) + DIR/{proxies.jsonl, mesh.json, store.json}
//! ```

use std::path::PathBuf;

use crate::istio_files::Flavor;
use crate::mesh::{Mesh, MeshParams};
use crate::store::{DEFAULT_CLUSTER, MeshStore, StoreLocation, SyncSummary};

#[derive(Clone, Debug, clap::Args)]
pub struct GenMeshArgs {
    #[command(flatten)]
    pub params: MeshParams,
    /// The mesh directory `loadtest run --mesh` reads: the YAML, `proxies.jsonl`
    /// and `mesh.json`; with --store, no YAML and a `store.json` saying where
    /// the mesh lives.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the mesh's objects into meshplane's store (etcd://HOST:PORT[,HOST:PORT...])
    /// as the records registry-sync would write, instead of YAML files.
    #[arg(long)]
    pub store: Option<String>,
    /// Cluster id of the objects in the store (default: loadtest).
    /// registry-sync only ever deletes keys of its own --cluster-id, so use
    /// one it does not serve.
    #[arg(long, requires = "store")]
    pub store_cluster: Option<String>,
    /// kubernetes: Services + Pods. istio-files: ServiceEntries + WorkloadEntries
    /// (no Kubernetes kinds), for istiod --configDir; meshplane serves both.
    #[arg(long, value_enum, default_value_t)]
    pub flavor: Flavor,
}

/// What `gen-mesh` wrote.
pub struct GenMeshOutcome {
    pub mesh: Mesh,
    /// With --store: where, and what the writes did.
    pub store: Option<(StoreLocation, SyncSummary)>,
}

impl GenMeshOutcome {
    /// One line for the operator.
    pub fn describe(&self, out: &std::path::Path) -> String {
        let mesh = &self.mesh;
        let pods: usize = mesh.services.iter().map(|s| s.pods.len()).sum();
        let what = format!(
            "{} services, {pods} pods in {} namespaces (+ {})",
            mesh.services.len(),
            mesh.namespaces.len(),
            mesh.shared_namespace
        );
        match &self.store {
            None => format!("wrote {what} and {} proxies to {}", mesh.proxies().len(), out.display()),
            Some((location, s)) => format!(
                "wrote {what} to {location}: {} objects ({} put, {} deleted) in {} transactions{}; {} proxies and the model to {}",
                s.objects,
                s.puts,
                s.deletes,
                s.batches,
                s.revision.map_or(String::new(), |r| format!(", last at revision {r}")),
                mesh.proxies().len(),
                out.display()
            ),
        }
    }
}

/// Generate the mesh and write it where `args` says.
pub async fn gen_mesh(args: GenMeshArgs) -> anyhow::Result<GenMeshOutcome> {
    let mut mesh = Mesh::generate(args.params);
    mesh.flavor = args.flavor;
    let Some(url) = args.store else {
        mesh.write(&args.out)?;
        // A store.json left from an earlier store mesh would send `run`'s changes there.
        StoreLocation::remove(&args.out)?;
        return Ok(GenMeshOutcome { mesh, store: None });
    };
    let location = StoreLocation::new(&url, args.store_cluster.as_deref().unwrap_or(DEFAULT_CLUSTER))?;
    let yaml = args.out.join("namespaces.yaml");
    anyhow::ensure!(
        !yaml.exists(),
        "--out {} holds a config-dir mesh ({} exists): a registry-sync serving it would serve the same \
         services as the store mesh, merging their endpoints; give --store an empty --out directory",
        args.out.display(),
        yaml.display()
    );
    let mut store = MeshStore::open(location.clone()).await?;
    let summary = store.sync(&mesh).await?;
    mesh.write_model(&args.out)?;
    location.save(&args.out)?;
    Ok(GenMeshOutcome { mesh, store: Some((location, summary)) })
}
