//! # meshplane-registry-sync: fill the store with the mesh's objects
//!
//! A registry source owns the keys of one cluster
//! (`/meshplane/v1/clusters/{cluster}/...`) and keeps them equal to what its
//! registry says, with as few store revisions as it can. Today there is one
//! source, a directory of YAML ([`directory`]); Kubernetes API watchers will
//! sit beside it.
//!
//! ```text
//!  --config-dir DIR ─▶ directory::DirectorySource ─▶ Store::batch ─▶ /meshplane/v1/clusters/{ID}/...
//!                            │
//!                            └─▶ status (ready, counts, diagnostics) ─▶ meshplane up: /ready, debug
//! ```
//!
//! This crate knows the model (parsing, keys) and the store contract; it
//! knows nothing of xDS, shards or the binary's HTTP endpoints.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod directory;

pub use directory::{DirectoryConfig, DirectoryError, DirectoryHandle, DirectorySource, SourceStatus};
