//! # meshplane-model: the mesh, as users write it
//!
//! The Kubernetes and Istio objects meshplane reads, how they are parsed from
//! YAML (with diagnostics naming file, document, object and field), how they
//! are validated, how they are keyed in the store, and how proxies identify
//! themselves. This crate knows nothing of gRPC, etcd or Kubernetes clients:
//! the store backends, registry sources and the xDS edge depend on it, never
//! the other way round.
//!
//! ```text
//!  YAML ─▶ parse ─▶ MeshObject ─▶ key::ObjectKey + to_json ─▶ store
//!                        ▲                                      │
//!                        └──────── from_json ◀── watch/list ────┘ ─▶ snapshot (shard)
//! ```
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod duration;
pub mod k8s;
pub mod key;
pub mod meta;
pub mod networking;
pub mod object;
pub mod parse;
pub mod proxy;
pub mod security;
pub mod validate;

pub use meta::{Kind, ObjectMeta, ObjectRef};
pub use object::MeshObject;
