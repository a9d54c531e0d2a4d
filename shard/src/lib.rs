//! # meshplane-shard: per-proxy Envoy config, served over ADS
//!
//! ```text
//!  store ──watch──▶ MeshState ──debounce──▶ MeshSnapshot ──generate(class)──▶ ProxyView ──▶ ADS streams
//!                                             (per revision)   (once per class)  (shared Arc)   (diff, push)
//! ```
//!
//! - [`snapshot`]: the indexed mesh at one store revision.
//! - [`generate`]: Istio semantics, from snapshot + proxy class to Envoy resources.
//! - [`resources`]: content-addressed, encode-once resources and per-proxy views.
//! - [`ads`]: sans-IO Delta and SotW stream state machines and the tonic edge.
//! - [`runtime`]: the shard process: store watch, debounce, classes, proxies.
//!
//! Knows nothing of Kubernetes clients or etcd: it reads a [`meshplane_store::Store`].
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod ads;
pub mod debounce;
pub mod debug;
pub mod generate;
pub mod membership;
pub mod resources;
pub mod runtime;
pub mod snapshot;
