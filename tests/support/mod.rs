//! End-to-end test harness for the root package's integration tests.
//!
//! Use it from a test file `tests/NAME.rs` with `mod support;`. Everything
//! here talks to real programs: the `meshplane` binary built by cargo, a real
//! Envoy (`MESHPLANE_ENVOY`), real HTTP/1.1 backends, and the Python gRPC
//! peers in `tests/grpc/` (`MESHPLANE_PYTHON_GRPC`). The environment comes
//! from `scripts/peer-env.sh`, which `scripts/test.sh` sources; a test that
//! needs a peer whose variable is unset fails with a message saying so (it
//! never skips).
//!
//! The API is synchronous: write plain `#[test]` functions. Servers and
//! clients run on a shared background Tokio runtime ([`rt`]), so the helpers
//! also work (by blocking the calling thread) inside `#[tokio::test]`.
//!
//! Rules that keep parallel tests independent:
//! - give each test its own loopback block with [`TestNet::new`]
//!   (127.0.N.0/24, N unique per test binary run) and take ports from
//!   [`TestNet::free_addr`]; Envoy binds listeners with SO_REUSEPORT, so two
//!   Envoys on one ip:port would silently share traffic;
//! - wait only with [`wait_for`] / [`Envoy::wait_until`], never with a fixed
//!   sleep;
//! - every process is killed when its handle is dropped; its log lives under
//!   [`artifacts_root`] and is printed (path and tail) when the test panics,
//!   and deleted when the test passes.
#![allow(dead_code, unused_imports)]

pub mod echo;
pub mod envoy;
pub mod grpc;
pub mod http;
pub mod meshplane;
pub mod net;
pub mod process;
pub mod topology;
pub mod wait;

pub use echo::{EchoBackend, FailMode};
pub use envoy::{Envoy, EnvoyOptions, XdsApi};
pub use grpc::{GrpcEchoServer, grpc_bootstrap, grpc_client};
pub use http::{Response, http_get, http_request, try_http_request, try_http_request_with};
pub use meshplane::{Meshplane, MeshplaneOptions};
pub use net::{TestNet, free_port};
pub use process::{artifacts_root, rt};
pub use wait::{WaitOutcome, wait_for};

use std::time::Duration;

/// Deadline for a process to start and report ready.
pub const STARTUP: Duration = Duration::from_secs(20);
/// Default deadline for configuration to propagate (xDS push, ACK, ...).
pub const PROPAGATION: Duration = Duration::from_secs(10);
/// Default timeout of one HTTP request made by [`http_request`].
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
