//! # meshplane-loadtest: simulated Envoy proxies against any ADS server
//!
//! Owns the load-testing side of meshplane's benchmarks: thousands of
//! simulated proxies, each with its own node id, HTTP/2 connection and
//! Envoy-like xDS state; a mesh generator; changes made to the mesh and timed
//! until every affected proxy ACKs them (by content, so istiod can be
//! measured the same way); reports and plots. It knows nothing of
//! meshplane's internals: it speaks xDS and writes YAML.
//!
//! ```text
//!  coordinator (run.rs) ── mesh.rs: gen-mesh, changes (rewrite one file) ──▶ config dir ──▶ control plane
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
pub mod facts;
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
pub mod worker;
