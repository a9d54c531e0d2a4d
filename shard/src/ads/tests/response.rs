//! The hand-written wire encoding of responses: byte for byte what prost
//! produces for the equivalent message, over varied responses, with large
//! bodies spliced (not copied) and no small chunk but the last.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;

use crate::ads::response::{MIN_CHUNK, SPLICE_MIN};
use crate::ads::{DeltaResponse, EncodedMessage, SotwResponse};
use crate::resources::{Resource, ResourceType};

/// A small deterministic generator (xorshift64*), so every run checks the
/// same cases and a failure is reproducible.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A length that lands on every interesting boundary now and then: 0,
    /// one-byte and two-byte varint lengths, just under and over the splice
    /// threshold, and well over it.
    fn len(&mut self) -> usize {
        match self.below(9) {
            0 => 0,
            1 => self.below(128),
            2 => 127 + self.below(3),
            3 => 128 + self.below(2000),
            4 => SPLICE_MIN - 1 - self.below(2),
            5 => SPLICE_MIN + self.below(2),
            6 => SPLICE_MIN + self.below(200_000),
            7 => 16_383 + self.below(3),
            _ => self.below(MIN_CHUNK * 2),
        }
    }

    fn bytes(&mut self, len: usize) -> Bytes {
        (0..len).map(|_| self.next() as u8).collect::<Vec<u8>>().into()
    }

    /// A string, sometimes empty, sometimes non-ASCII, sometimes long.
    fn string(&mut self) -> String {
        match self.below(6) {
            0 => String::new(),
            1 => "outbound|9080||reviews.bookinfo.svc.cluster.local".into(),
            2 => "é".repeat(self.below(100)),
            3 => "x".repeat(120 + self.below(20)),
            _ => format!("name-{}", self.next()),
        }
    }

    fn resource(&mut self) -> Arc<Resource> {
        let name = self.string();
        let len = self.len();
        let body = self.bytes(len);
        let mut resource = Resource::from_bytes(name, body);
        if self.below(8) == 0 {
            // Versions are content hashes in practice, but nothing in the
            // encoding may rely on it.
            Arc::make_mut(&mut resource).version = self.string().into();
        }
        resource
    }

    fn ty(&mut self) -> ResourceType {
        ResourceType::ALL[self.below(ResourceType::ALL.len())]
    }
}

/// The protobuf part of an encoded message, checking the gRPC prefix and
/// the chunk rules on the way.
fn protobuf(message: &EncodedMessage) -> Bytes {
    for (i, chunk) in message.chunks.iter().enumerate() {
        assert!(!chunk.is_empty(), "chunk {i} is empty");
        if i + 1 < message.chunks.len() {
            assert!(chunk.len() >= MIN_CHUNK, "chunk {i} of {} is {} bytes", message.chunks.len(), chunk.len());
        }
    }
    let bytes = message.to_bytes();
    assert_eq!(bytes[0], 0, "not compressed");
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 5, "the prefix gives the message's length");
    bytes.slice(5..)
}

/// Every body of at least SPLICE_MIN bytes is on the wire as (most of) the
/// resource's own allocation, not a copy.
fn assert_spliced(message: &EncodedMessage, resources: &[Arc<Resource>]) {
    for r in resources.iter().filter(|r| r.body.len() >= SPLICE_MIN) {
        let range = r.body.as_ptr_range();
        let shared = message.chunks.iter().any(|c| {
            let p = c.as_ptr();
            range.contains(&p) && c.len() >= r.body.len() - MIN_CHUNK
        });
        assert!(shared, "the {}-byte body of {:?} was copied", r.body.len(), r.name);
    }
}

#[test]
fn delta_encoding_is_prosts_byte_for_byte() {
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    for case in 0..400 {
        let resources: Vec<_> = (0..g.below(if case % 10 == 0 { 60 } else { 6 })).map(|_| g.resource()).collect();
        let response = DeltaResponse {
            ty: g.ty(),
            revision: [0, 1, -1, i64::MAX, g.next() as i64][g.below(5)],
            nonce: g.string(),
            removed: (0..g.below(4)).map(|_| Arc::from(g.string())).collect(),
            resources,
        };
        let message = response.encode();
        assert_eq!(
            protobuf(&message),
            response.to_proto().encode_to_vec(),
            "case {case}: {} resources, {} removed",
            response.resources.len(),
            response.removed.len()
        );
        assert_spliced(&message, &response.resources);
    }
}

#[test]
fn sotw_encoding_is_prosts_byte_for_byte() {
    let mut g = Gen(0x2545_f491_4f6c_dd1d);
    for case in 0..400 {
        let resources: Vec<_> = (0..g.below(if case % 10 == 0 { 60 } else { 6 })).map(|_| g.resource()).collect();
        let response = SotwResponse { ty: g.ty(), version_info: g.string(), nonce: g.string(), resources };
        let message = response.encode();
        assert_eq!(
            protobuf(&message),
            response.to_proto().encode_to_vec(),
            "case {case}: {} resources",
            response.resources.len()
        );
        assert_spliced(&message, &response.resources);
    }
}

#[test]
fn an_empty_response_is_one_small_chunk() {
    let response =
        DeltaResponse { ty: ResourceType::Cluster, revision: 3, nonce: "1".into(), resources: vec![], removed: vec![] };
    let message = response.encode();
    assert_eq!(message.chunks.len(), 1);
    assert_eq!(protobuf(&message), response.to_proto().encode_to_vec());
}

#[test]
fn a_message_over_a_few_megabytes_keeps_its_length_right() {
    // Lengths of 3- and 4-byte varints, in the message and in its prefix.
    let mut g = Gen(7);
    let resources: Vec<_> = (0..40).map(|i| Resource::from_bytes(format!("r{i}"), g.bytes(100_000))).collect();
    let response = SotwResponse {
        ty: ResourceType::Endpoint,
        version_info: "v".into(),
        nonce: "n".into(),
        resources: resources.clone(),
    };
    let message = response.encode();
    assert!(message.len() > 4_000_000);
    assert_eq!(protobuf(&message), response.to_proto().encode_to_vec());
    assert_spliced(&message, &resources);
}
