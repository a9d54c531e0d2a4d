//! # meshplane-shard: per-proxy Envoy config, served over ADS
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod ads;
pub mod resources;
