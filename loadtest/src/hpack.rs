//! The little of HPACK (RFC 7541) a gRPC client needs.
//!
//! Requests are encoded without Huffman coding or indexing (one fixed header
//! block per target, built once). Responses are decoded with the static
//! table, a dynamic table (the client advertises size 0, so servers should
//! never add to it) and Huffman decoding of the printable ASCII range plus NUL,
//! which is all gRPC puts in headers (`grpc-message` is percent-encoded).
//! A Huffman code outside that range is reported as an error, never guessed.

use std::collections::VecDeque;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("truncated header block")]
    Truncated,
    #[error("header index {0} is not in the static or dynamic table")]
    BadIndex(usize),
    #[error("Huffman code outside printable ASCII (not produced by gRPC servers)")]
    Huffman,
    #[error("integer overflow in header block")]
    Overflow,
}

/// RFC 7541 Appendix A.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Symbols of each code length, in symbol order (the HPACK code is
/// canonical, so lengths alone define the codes). Only NUL and printable
/// ASCII; the first code of length 19 is `\`, the rest of that length and
/// all longer codes are bytes gRPC never sends.
const HUFFMAN_BY_LENGTH: [(u32, &[u8]); 11] = [
    (5, b"012aceiost"),
    (6, b" %-./3456789=A_bdfghlmnpru"),
    (7, b":BCDEFGHIJKLMNOPQRSTUVWYjkqvwxyz"),
    (8, b"&*,;XZ"),
    (10, b"!\"()?"),
    (11, b"'+|"),
    (12, b"#>"),
    (13, b"\0$@[]~"),
    (14, b"^}"),
    (15, b"<`{"),
    (19, b"\\"),
];

struct HuffmanTable {
    /// Per length: (first code, symbols).
    by_len: [(u32, &'static [u8]); 20],
}

fn huffman() -> &'static HuffmanTable {
    static TABLE: OnceLock<HuffmanTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut by_len: [(u32, &'static [u8]); 20] = [(0, &[]); 20];
        for (len, syms) in HUFFMAN_BY_LENGTH {
            by_len[len as usize].1 = syms;
        }
        let mut code = 0u32;
        for (len, entry) in by_len.iter_mut().enumerate().skip(1) {
            entry.0 = code;
            // The symbols of `\`'s length that we do not know follow it; they
            // only shift codes of longer lengths, which we never decode.
            code = (code + entry.1.len() as u32) << 1;
            let _ = len;
        }
        HuffmanTable { by_len }
    })
}

fn huffman_decode(src: &[u8]) -> Result<Vec<u8>, HpackError> {
    let table = huffman();
    let mut out = Vec::with_capacity(src.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0usize);
    for byte in src {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len >= table.by_len.len() {
                return Err(HpackError::Huffman);
            }
            let (first, syms) = table.by_len[len];
            if code >= first && ((code - first) as usize) < syms.len() {
                out.push(syms[(code - first) as usize]);
                code = 0;
                len = 0;
            }
        }
    }
    // Padding: at most 7 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(out)
}

fn decode_int(src: &[u8], pos: &mut usize, prefix_bits: u8) -> Result<usize, HpackError> {
    let mask = (1usize << prefix_bits) - 1;
    let first = *src.get(*pos).ok_or(HpackError::Truncated)? as usize & mask;
    *pos += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    let mut shift = 0u32;
    loop {
        let b = *src.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        if shift > 28 {
            return Err(HpackError::Overflow);
        }
        value += ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

fn decode_string(src: &[u8], pos: &mut usize) -> Result<Vec<u8>, HpackError> {
    let huff = src.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = decode_int(src, pos, 7)?;
    let raw = src.get(*pos..*pos + len).ok_or(HpackError::Truncated)?;
    *pos += len;
    if huff { huffman_decode(raw) } else { Ok(raw.to_vec()) }
}

/// A decoded header: (name, value).
pub type HeaderField = (Vec<u8>, Vec<u8>);

/// One connection's HPACK decoding state.
#[derive(Debug, Default)]
pub struct Decoder {
    dynamic: VecDeque<HeaderField>,
    size: usize,
    max_size: usize,
}

impl Decoder {
    fn entry(&self, index: usize) -> Result<HeaderField, HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some((n, v)) = STATIC.get(index - 1) {
            return Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        self.dynamic.get(index - 1 - STATIC.len()).cloned().ok_or(HpackError::BadIndex(index))
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        self.size += name.len() + value.len() + 32;
        self.dynamic.push_front((name, value));
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            let Some((n, v)) = self.dynamic.pop_back() else { break };
            self.size -= n.len() + v.len() + 32;
        }
    }

    /// Decode a complete header block into (name, value) pairs.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<HeaderField>, HpackError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                let index = decode_int(block, &mut pos, 7)?;
                out.push(self.entry(index)?);
            } else if b & 0xe0 == 0x20 {
                self.max_size = decode_int(block, &mut pos, 5)?;
                self.evict();
            } else {
                let (prefix, indexing) = if b & 0x40 != 0 { (6, true) } else { (4, false) };
                let index = decode_int(block, &mut pos, prefix)?;
                let name = if index == 0 { decode_string(block, &mut pos)? } else { self.entry(index)?.0 };
                let value = decode_string(block, &mut pos)?;
                if indexing {
                    self.insert(name.clone(), value.clone());
                }
                out.push((name, value));
            }
        }
        Ok(out)
    }
}

fn encode_int(out: &mut Vec<u8>, first_bits: u8, prefix_bits: u8, value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(first_bits | value as u8);
        return;
    }
    out.push(first_bits | mask as u8);
    let mut rest = value - mask;
    while rest >= 128 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

fn encode_literal(out: &mut Vec<u8>, name_index: usize, name: &str, value: &str) {
    // Literal without indexing.
    encode_int(out, 0x00, 4, name_index);
    if name_index == 0 {
        encode_int(out, 0x00, 7, name.len());
        out.extend_from_slice(name.as_bytes());
    }
    encode_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a gRPC request: `POST path` to `authority`.
pub fn grpc_request_block(authority: &str, path: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + path.len() + authority.len());
    out.push(0x83); // :method POST
    out.push(0x86); // :scheme http
    encode_literal(&mut out, 4, "", path);
    encode_literal(&mut out, 1, "", authority);
    encode_literal(&mut out, 31, "", "application/grpc");
    encode_literal(&mut out, 0, "te", "trailers");
    encode_literal(&mut out, 58, "", "meshplane-loadtest");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_huffman(s: &[u8]) -> Vec<u8> {
        // Encoder from the same canonical table, for round trips.
        let t = huffman();
        let mut bits: Vec<bool> = Vec::new();
        for &c in s {
            let (len, first, idx) = t
                .by_len
                .iter()
                .enumerate()
                .find_map(|(len, (first, syms))| syms.iter().position(|&x| x == c).map(|i| (len, *first, i)))
                .unwrap();
            let code = first + idx as u32;
            for b in (0..len).rev() {
                bits.push((code >> b) & 1 == 1);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        bits.chunks(8).map(|c| c.iter().fold(0u8, |a, &b| (a << 1) | b as u8)).collect()
    }

    #[test]
    fn table_covers_printable_ascii_once() {
        let mut all: Vec<u8> = HUFFMAN_BY_LENGTH.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        all.sort();
        let mut expected: Vec<u8> = (0x20..0x7f).collect();
        expected.insert(0, 0);
        assert_eq!(all, expected);
    }

    #[test]
    fn known_codes_from_the_rfc() {
        // RFC 7541 C.4.1: "www.example.com" Huffman-encoded.
        let enc = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        assert_eq!(huffman_decode(&enc).unwrap(), b"www.example.com");
        // C.4.2: "no-cache".
        assert_eq!(huffman_decode(&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf]).unwrap(), b"no-cache");
        let printable: Vec<u8> = (0x20..0x7f).collect();
        assert_eq!(huffman_decode(&encode_huffman(&printable)).unwrap(), printable);
    }

    #[test]
    fn decodes_rfc_request_examples_with_dynamic_table() {
        // RFC 7541 C.3.1 and C.3.2 (no Huffman, indexing).
        let mut d = Decoder { max_size: 4096, ..Default::default() };
        let first = hex("828684410f7777772e6578616d706c652e636f6d");
        let h = d.decode(&first).unwrap();
        assert_eq!(h[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        let second = hex("828684be58086e6f2d6361636865");
        let h = d.decode(&second).unwrap();
        assert_eq!(h[3], (b":authority".to_vec(), b"www.example.com".to_vec()));
        assert_eq!(h[4], (b"cache-control".to_vec(), b"no-cache".to_vec()));
    }

    #[test]
    fn request_block_decodes() {
        let block = grpc_request_block("127.0.0.1:15010", "/svc/Method");
        let h = Decoder::default().decode(&block).unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n.as_bytes()).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get(":path"), b"/svc/Method");
        assert_eq!(get(":authority"), b"127.0.0.1:15010");
        assert_eq!(get("content-type"), b"application/grpc");
        assert_eq!(get("te"), b"trailers");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
