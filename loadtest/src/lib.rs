//! # meshplane-loadtest: simulated Envoy proxies against any ADS server
//!
//! Owns the load-testing side of meshplane's benchmarks: thousands of
//! simulated proxies, each with its own node id, HTTP/2 connection and
//! Envoy-like xDS state; a mesh generator; changes made to the mesh and timed
//! until every affected proxy ACKs them (by content, so istiod can be
//! measured the same way); reports and plots. It speaks xDS and writes
//! YAML; against meshplane it can also write the mesh straight into the
//! store (`store.rs`, through meshplane's model and registry-sync crates, so
//! the records are registry-sync's), and kill a control-plane process while
//! changes flow (`disruption.rs`).
//!
//! ```text
//!  coordinator (run.rs) ── mesh.rs: gen-mesh, changes (rewrite one file) ──▶ config dir ──▶ control plane
//!     │                  └─ store.rs: the same files as store records, one transaction per change ──▶ etcd
//!     │                  └─ disruption.rs: --kill-pid at --kill-at; changes before/in flight/during/after
//!     │  Command / Event                                                            │ ADS (Delta | SotW)
//!     ▼                                                                             ▼
//!  worker.rs (in-process, or `loadtest worker` processes: ≤ 20k sockets each)
//!     └─ conn.rs: one task per HTTP/2 connection (hand-rolled, no idle buffers)
//!          └─ proxy.rs: sans-IO Envoy xDS state (symbols from intern.rs, facts.rs decode cache)
//!                 └─ probe.rs: does this resource show the change? ─▶ convergence time
//!  report.rs (JSON) · plot.rs (PNG) · procstat.rs (/proc RSS/CPU of the control plane)
//! ```
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod conn;
pub mod disruption;
pub mod facts;
pub mod genmesh;
pub mod hpack;
pub mod intern;
pub mod istio_files;
pub mod mesh;
pub mod metrics;
pub mod plot;
pub mod probe;
pub mod procstat;
pub mod proxy;
pub mod report;
pub mod run;
pub mod stats;
pub mod store;
pub mod worker;
