//! # meshplane-frontend: relay each proxy's ADS stream to its owner shard
//!
//! A frontend terminates proxies' ADS streams (Delta and SotW), reads the
//! node id from the first request, picks the shard that owns the proxy by
//! rendezvous hashing over the live shards, and forwards both directions. It
//! keeps soft state per stream (subscriptions, ACKed versions), so when the
//! owner changes (a shard joins, drains, leaves or dies) it moves the stream
//! to the new owner without the proxy's stream being reset, and the new owner
//! sends only what differs. Nothing it holds is durable: any number of
//! frontends can run, and a proxy may reconnect to any of them.
//!
//! ```text
//!  Store ──list+watch /meshplane/v1/shards/──▶ membership ──watch<Arc<Membership>>──┐
//!                                              (ring of serving shards)              ▼
//!  proxy ══ADS══▶ relay::RelayServer ── one task per stream: DeltaRelay | SotwRelay ══ADS══▶ shard
//!                                         (sans-IO soft state, nonce translation)   one HTTP/2
//!                                                                                   connection per shard
//! ```
//!
//! - [`ring`]: rendezvous hashing with a release-stable hash.
//! - [`membership`]: the shard set, from the store.
//! - [`relay`]: the protocol cores and the tonic edge.
//!
//! Knows the store contract, the key layout and the xDS protocol; knows
//! nothing of how shards generate config, of etcd, or of Kubernetes.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod membership;
pub mod relay;
pub mod ring;
