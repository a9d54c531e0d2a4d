//! Responses as the protocol cores produce them, and their wire encoding.
//!
//! A [`DeltaResponse`] or [`SotwResponse`] holds the shared
//! `Arc<Resource>`s of the view, not copies. [`DeltaResponse::encode`] and
//! [`SotwResponse::encode`] write the gRPC message (`DeltaDiscoveryResponse`
//! / `DiscoveryResponse` protobuf behind gRPC's 5-byte prefix) straight from
//! the resources' pre-encoded bodies:
//!
//! ```text
//!  response ──encode──▶ [ run: prefix, envelopes, small bodies ][ large body ][ run ][ large body ] ...
//!                         copied into one buffer per response     the resource's own Bytes, spliced
//! ```
//!
//! Why: building the prost message copied every body into a per-proxy
//! `Any { value: Vec<u8> }`, and tonic's encoder then copied it again into a
//! per-stream buffer that grows to the largest response and is kept for the
//! life of the stream (about 65 KB per proxy on the standard mesh). Here the
//! encoded message lives only until HTTP/2 has written it, small bodies are
//! copied once, and large bodies are not copied at all.
//!
//! The bytes are exactly what prost would produce for the equivalent message
//! ([`DeltaResponse::to_proto`], [`SotwResponse::to_proto`]): fields in tag
//! order, empty strings omitted, the `Any` always present. The tests prove it
//! over varied responses.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as XdsResource,
};
use envoy_types::pb::google::protobuf::Any;
use meshplane_grpc::EncodedMessage;

use crate::resources::{Resource, ResourceType};

/// A body at least this long is sent as its own shared `Bytes` instead of
/// being copied. Every spliced piece becomes its own HTTP/2 DATA frame and
/// (h2 chains payloads over 256 bytes) its own `writev`, so small bodies,
/// which are most of them (about 500 bytes on average on the standard
/// mesh), are cheaper copied; a body this size costs well under a
/// microsecond to copy but as much memory per proxy as it is long.
pub(super) const SPLICE_MIN: usize = 8 * 1024;

/// Every chunk but the last is at least this long: h2 charges a receiver
/// for each DATA frame under 256 bytes until the application reads it, and
/// closes a connection that exhausts that budget (a frontend relaying many
/// streams from one shard connection would).
pub(super) const MIN_CHUNK: usize = 512;

/// gRPC's message prefix: compressed flag (0) and big-endian length.
const GRPC_PREFIX: usize = 5;

/// A Delta ADS response (`DeltaDiscoveryResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaResponse {
    pub ty: ResourceType,
    /// The store revision of the view, sent as `system_version_info`.
    pub revision: i64,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
    /// `removed_resources`.
    pub removed: Vec<Arc<str>>,
}

/// A State-of-the-World ADS response (`DiscoveryResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SotwResponse {
    pub ty: ResourceType,
    pub version_info: String,
    pub nonce: String,
    pub resources: Vec<Arc<Resource>>,
}

impl DeltaResponse {
    /// The equivalent prost message (copies every body: for tests and
    /// debugging, not for the wire).
    pub fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.revision.to_string(),
            resources: self
                .resources
                .iter()
                .map(|r| XdsResource {
                    name: r.name.to_string(),
                    version: r.version.to_string(),
                    resource: Some(to_any(self.ty, r)),
                    ..Default::default()
                })
                .collect(),
            type_url: self.ty.type_url().to_string(),
            removed_resources: self.removed.iter().map(|n| n.to_string()).collect(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC message: the protobuf bytes prost would produce for
    /// [`to_proto`](Self::to_proto), behind gRPC's prefix.
    pub fn encode(&self) -> EncodedMessage {
        let type_url = self.ty.type_url();
        let any_len = |r: &Resource| string_field_len(1, type_url) + bytes_field_len(2, r.body.len());
        // Resource: version = 1, resource (Any) = 2, name = 3.
        let resource_len = |r: &Resource| {
            string_field_len(1, &r.version) + message_field_len(2, any_len(r)) + string_field_len(3, &r.name)
        };
        let revision = self.revision.to_string();
        let len = string_field_len(1, &revision)
            + self.resources.iter().map(|r| message_field_len(2, resource_len(r))).sum::<usize>()
            + string_field_len(4, type_url)
            + string_field_len(5, &self.nonce)
            + self.removed.iter().map(|n| repeated_string_len(6, n)).sum::<usize>();

        let mut w = ChunkWriter::new(len, self.resources.iter().map(|r| &r.body));
        w.put_string_field(1, &revision);
        for r in &self.resources {
            w.put_len_key(2, resource_len(r));
            w.put_string_field(1, &r.version);
            w.put_len_key(2, any_len(r));
            w.put_string_field(1, type_url);
            w.put_bytes_field(2, &r.body);
            w.put_string_field(3, &r.name);
        }
        w.put_string_field(4, type_url);
        w.put_string_field(5, &self.nonce);
        for name in &self.removed {
            w.put_len_key(6, name.len());
            w.put_slice(name.as_bytes());
        }
        w.finish()
    }
}

impl SotwResponse {
    /// The equivalent prost message (copies every body: for tests and
    /// debugging, not for the wire).
    pub fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| to_any(self.ty, r)).collect(),
            type_url: self.ty.type_url().to_string(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }

    /// The gRPC message: the protobuf bytes prost would produce for
    /// [`to_proto`](Self::to_proto), behind gRPC's prefix.
    pub fn encode(&self) -> EncodedMessage {
        let type_url = self.ty.type_url();
        let any_len = |r: &Resource| string_field_len(1, type_url) + bytes_field_len(2, r.body.len());
        // DiscoveryResponse: version_info = 1, resources (Any) = 2, type_url = 4, nonce = 5.
        let len = string_field_len(1, &self.version_info)
            + self.resources.iter().map(|r| message_field_len(2, any_len(r))).sum::<usize>()
            + string_field_len(4, type_url)
            + string_field_len(5, &self.nonce);

        let mut w = ChunkWriter::new(len, self.resources.iter().map(|r| &r.body));
        w.put_string_field(1, &self.version_info);
        for r in &self.resources {
            w.put_len_key(2, any_len(r));
            w.put_string_field(1, type_url);
            w.put_bytes_field(2, &r.body);
        }
        w.put_string_field(4, type_url);
        w.put_string_field(5, &self.nonce);
        w.finish()
    }
}

/// Wrap a resource's pre-encoded body in an `Any` (a copy).
fn to_any(ty: ResourceType, resource: &Resource) -> Any {
    Any { type_url: ty.type_url().to_string(), value: resource.body.to_vec() }
}

/// Builds an [`EncodedMessage`]: everything is appended to one run buffer,
/// except large bodies, which close the current run and go out as they are.
struct ChunkWriter {
    chunks: Vec<Bytes>,
    run: BytesMut,
    /// The whole message's length, to check the computed lengths against.
    expected: usize,
}

impl ChunkWriter {
    /// Starts a message whose protobuf part is `len` bytes long; `bodies`
    /// are the bodies it will carry (to size the run buffer exactly once).
    fn new<'a>(len: usize, bodies: impl Iterator<Item = &'a Bytes>) -> Self {
        let spliced: usize = bodies.filter(|b| b.len() >= SPLICE_MIN).map(|b| b.len() - MIN_CHUNK).sum();
        let mut run = BytesMut::with_capacity(GRPC_PREFIX + len - spliced);
        let wire_len = u32::try_from(len).expect("an xDS response over 4 GiB");
        run.put_u8(0);
        run.put_u32(wire_len);
        ChunkWriter { chunks: Vec::new(), run, expected: GRPC_PREFIX + len }
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        self.run.extend_from_slice(bytes);
    }

    fn put_varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.run.put_u8((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.run.put_u8(value as u8);
    }

    /// The key and length of a length-delimited field.
    fn put_len_key(&mut self, tag: u32, len: usize) {
        self.put_varint(u64::from(tag << 3 | WIRE_TYPE_LEN));
        self.put_varint(len as u64);
    }

    /// A proto3 `string` field: omitted when empty, as prost does.
    fn put_string_field(&mut self, tag: u32, value: &str) {
        if !value.is_empty() {
            self.put_len_key(tag, value.len());
            self.put_slice(value.as_bytes());
        }
    }

    /// A proto3 `bytes` field: omitted when empty, as prost does.
    fn put_bytes_field(&mut self, tag: u32, body: &Bytes) {
        if body.is_empty() {
            return;
        }
        self.put_len_key(tag, body.len());
        if body.len() < SPLICE_MIN {
            self.put_slice(body);
            return;
        }
        // Top the run up from the body so no chunk is small, then splice
        // the rest of the body without copying it.
        let topup = MIN_CHUNK.saturating_sub(self.run.len());
        self.put_slice(&body[..topup]);
        self.chunks.push(self.run.split().freeze());
        self.chunks.push(body.slice(topup..));
    }

    fn finish(mut self) -> EncodedMessage {
        if !self.run.is_empty() {
            self.chunks.push(self.run.freeze());
        }
        let message = EncodedMessage { chunks: self.chunks };
        debug_assert_eq!(message.len(), self.expected, "encoded length differs from the computed one");
        message
    }
}

const WIRE_TYPE_LEN: u32 = 2;

fn varint_len(value: u64) -> usize {
    // 7 bits per byte; 0 still takes a byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3 | WIRE_TYPE_LEN))
}

/// Length of a length-delimited field holding `len` bytes.
fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + varint_len(len as u64) + len
}

/// Length of a proto3 `string` field (0 when empty: omitted).
fn string_field_len(tag: u32, value: &str) -> usize {
    if value.is_empty() { 0 } else { message_field_len(tag, value.len()) }
}

/// Length of a proto3 `bytes` field (0 when empty: omitted).
fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 { 0 } else { message_field_len(tag, len) }
}

/// Length of one element of a `repeated string` (always present, even empty).
fn repeated_string_len(tag: u32, value: &str) -> usize {
    message_field_len(tag, value.len())
}
