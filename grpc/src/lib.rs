//! # meshplane-grpc: gRPC messages over HTTP/2 bodies, without kept buffers
//!
//! tonic's codec keeps, for the life of every stream, a decode buffer as
//! large as the largest message the stream ever received and an encode
//! buffer as large as the largest it sent. An ADS stream lives as long as
//! its proxy, and its largest message is a full config push, so across
//! thousands of streams those buffers were most of a control plane's memory
//! per proxy. This crate reads and writes the gRPC framing (a 5-byte prefix:
//! compressed flag, big-endian length) itself, holding bytes only while a
//! message is incomplete.
//!
//! ```text
//!  http body ──data frames──▶ MessageReader: buffer only a partial message ──▶ prost message
//!            ──trailers──────▶ grpc-status (a response's end)
//!  prost message ──frame()──▶ one Bytes (prefix + message), dropped once written
//!  StreamingService<M>: POST /SERVICE/METHOD ─▶ M::start(path, headers, MessageReader) ─▶ ResponseBody
//!  ResponseBody ◀── mpsc<Outbound>: each EncodedMessage's chunks as data, then grpc-status trailers
//! ```
//!
//! Used by the shard's ADS server and the frontend (its server toward the
//! proxies, and its upstream client). Knows HTTP bodies, prost, tonic's
//! server and `tonic::Status`; nothing of xDS.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use http_body::{Body as _, Frame};
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::{Code, Status};

/// gRPC's message prefix: compressed flag and big-endian length.
pub const PREFIX_LEN: usize = 5;

/// Reads the gRPC messages of one HTTP body (a request stream on a server,
/// a response stream on a client).
pub struct MessageReader<M> {
    body: Body,
    /// An incomplete message (or several); empty, and unallocated, between
    /// messages.
    buf: BytesMut,
    max_message_bytes: usize,
    /// What the messages are, for errors ("request", "response").
    what: &'static str,
    trailers: Option<HeaderMap>,
    ended: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> MessageReader<M> {
    pub fn new(body: Body, max_message_bytes: usize, what: &'static str) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
            max_message_bytes,
            what,
            trailers: None,
            ended: false,
            _message: PhantomData,
        }
    }

    /// The next message; `None` once the body ended (with an OK status in
    /// its trailers, if it has any: a non-OK `grpc-status` is the error).
    /// Cancel safe: what was read stays buffered for the next call.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    pub fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<M>, Status>> {
        loop {
            if let Some(message) = self.decode()? {
                if self.buf.is_empty() {
                    // Give the memory back: the next message may be much
                    // smaller (a full push is followed by small updates).
                    self.buf = BytesMut::new();
                }
                return Poll::Ready(Ok(Some(message)));
            }
            if self.ended {
                return Poll::Ready(self.end());
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers.get_or_insert_with(HeaderMap::new).extend(trailers);
                        }
                    }
                },
                Some(Err(status)) => return Poll::Ready(Err(status)),
                None => self.ended = true,
            }
        }
    }

    fn end(&self) -> Result<Option<M>, Status> {
        if !self.buf.is_empty() {
            return Err(Status::internal(format!("the {} stream ended in the middle of a message", self.what)));
        }
        match self.trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) if status.code() != Code::Ok => Err(status),
            _ => Ok(None),
        }
    }

    /// Take one complete message off the front of the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<M>, Status> {
        let buf = &mut self.buf;
        if buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf[0] != 0 {
            return Err(Status::unimplemented(format!(
                "a {} message is compressed, which meshplane does not accept; turn off gRPC compression \
                 for the xDS stream",
                self.what
            )));
        }
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "a {} message of {len} bytes is over the limit of {} bytes",
                self.what, self.max_message_bytes
            )));
        }
        if buf.len() < PREFIX_LEN + len {
            buf.reserve(PREFIX_LEN + len - buf.len());
            return Ok(None);
        }
        let message = M::decode(&buf[PREFIX_LEN..PREFIX_LEN + len])
            .map_err(|e| Status::invalid_argument(format!("cannot decode the {}: {e}", self.what)))?;
        buf.advance(PREFIX_LEN + len);
        Ok(Some(message))
    }
}

/// One message as gRPC frames it: the prefix and the encoded message, in
/// one allocation of exactly that size.
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(PREFIX_LEN + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).expect("a gRPC message over 4 GiB"));
    message.encode(&mut out).expect("the buffer has the message's encoded length");
    out.freeze()
}

/// One gRPC message, ready for the wire: its chunks, in order (the prefix
/// included).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    pub chunks: Vec<Bytes>,
}

impl EncodedMessage {
    /// A message in one chunk.
    pub fn of(message: &impl Message) -> Self {
        EncodedMessage { chunks: vec![frame(message)] }
    }

    /// The total length, prefix included.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// All chunks in one buffer (tests, and callers that need contiguous bytes).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out.freeze()
    }
}

/// What a stream's task sends its [`ResponseBody`].
#[derive(Debug)]
pub enum Outbound {
    Message(EncodedMessage),
    /// End the stream with this status (boxed: it is large, and every
    /// channel slot would be as large as it).
    Close(Box<Status>),
}

/// A streaming response body: each message's chunks as data frames, then
/// the trailers: the status the stream was closed with, or OK when the
/// sender went away without one. Holds nothing but the channel between
/// messages.
pub struct ResponseBody {
    rx: mpsc::Receiver<Outbound>,
    chunks: std::vec::IntoIter<Bytes>,
    ended: bool,
}

impl ResponseBody {
    pub fn new(rx: mpsc::Receiver<Outbound>) -> Self {
        Self { rx, chunks: Vec::new().into_iter(), ended: false }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        loop {
            if let Some(chunk) = self.chunks.next() {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let status = match ready!(self.rx.poll_recv(cx)) {
                Some(Outbound::Message(message)) => {
                    self.chunks = message.chunks.into_iter();
                    continue;
                }
                Some(Outbound::Close(status)) => *status,
                None => Status::ok(""),
            };
            self.ended = true;
            let mut trailers = HeaderMap::new();
            // Only a message that is not a valid header value fails; say so
            // instead of dropping the status.
            if let Err(invalid) = status.add_header(&mut trailers) {
                invalid.add_header(&mut trailers).ok();
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.chunks.len() == 0
    }
}

/// The future a [`StreamingMethods::start`] returns.
pub type Started = Pin<Box<dyn Future<Output = Result<ResponseBody, Status>> + Send>>;

/// The bidirectional streaming methods of one gRPC service, served by
/// [`StreamingService`] instead of tonic's generated server and codec.
pub trait StreamingMethods: Clone + Send + Sync + 'static {
    /// The service, as gRPC names it (`package.Service`).
    const SERVICE: &'static str;
    /// Start the stream of method `path` (`/package.Service/Method`) on this
    /// request body; `None` if the service has no such method. The
    /// response headers go out when the future is ready; an error is a
    /// trailers-only response.
    fn start(&self, path: &str, headers: &HeaderMap, body: Body) -> Option<Started>;
}

/// A [`StreamingMethods`] as a service for `tonic::transport::Server::add_service`
/// (routing, HTTP/2 and timeouts stay tonic's).
#[derive(Clone, Debug)]
pub struct StreamingService<M>(pub M);

impl<M: StreamingMethods> tonic::server::NamedService for StreamingService<M> {
    const NAME: &'static str = M::SERVICE;
}

impl<M: StreamingMethods> tonic::codegen::Service<http::Request<Body>> for StreamingService<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let compressed = parts.headers.get("grpc-encoding").filter(|e| e.as_bytes() != b"identity").cloned();
        let started = match compressed {
            Some(encoding) => Err(Status::unimplemented(format!(
                "request messages are compressed with {encoding:?}, which this server does not accept; \
                 turn off gRPC compression for the stream"
            ))),
            None => self.0.start(parts.uri.path(), &parts.headers, body).ok_or_else(|| {
                Status::unimplemented(format!("{} is not a method of {}", parts.uri.path(), M::SERVICE))
            }),
        };
        Box::pin(async move {
            let response = match started {
                Ok(started) => started.await,
                Err(status) => Err(status),
            };
            Ok(match response {
                Ok(body) => {
                    let mut response = http::Response::new(Body::new(body));
                    response.headers_mut().insert(CONTENT_TYPE, tonic::metadata::GRPC_CONTENT_TYPE);
                    response
                }
                Err(status) => status.into_http(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;

    fn request(type_url: &str) -> DiscoveryRequest {
        DiscoveryRequest { type_url: type_url.into(), ..Default::default() }
    }

    /// A body of these frames.
    fn body(frames: Vec<Frame<Bytes>>) -> Body {
        Body::new(StreamBody::new(tokio_stream::iter(frames.into_iter().map(Ok::<_, Status>))))
    }

    async fn read_all(body: Body) -> (Vec<String>, Result<(), Status>) {
        let mut reader = MessageReader::<DiscoveryRequest>::new(body, 1 << 20, "request");
        let mut got = Vec::new();
        loop {
            match reader.message().await {
                Ok(Some(m)) => got.push(m.type_url),
                Ok(None) => return (got, Ok(())),
                Err(status) => return (got, Err(status)),
            }
        }
    }

    #[tokio::test]
    async fn messages_split_and_joined_across_data_frames() {
        let mut bytes = BytesMut::new();
        for t in ["a", "b", "c"] {
            bytes.extend_from_slice(&frame(&request(t)));
        }
        let bytes = bytes.freeze();
        // Every split point: one message across frames, several in one.
        for cut in 0..bytes.len() {
            let frames = vec![Frame::data(bytes.slice(..cut)), Frame::data(bytes.slice(cut..))];
            let (got, end) = read_all(body(frames)).await;
            assert_eq!(got, ["a", "b", "c"], "cut at {cut}");
            assert!(end.is_ok());
        }
    }

    #[tokio::test]
    async fn the_status_in_the_trailers_ends_the_stream() {
        let mut trailers = HeaderMap::new();
        Status::not_found("no workload").add_header(&mut trailers).unwrap();
        let frames = vec![Frame::data(frame(&request("a"))), Frame::trailers(trailers)];
        let (got, end) = read_all(body(frames)).await;
        assert_eq!(got, ["a"]);
        let status = end.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::NotFound, "no workload"));

        let mut ok = HeaderMap::new();
        Status::ok("").add_header(&mut ok).unwrap();
        assert!(read_all(body(vec![Frame::trailers(ok)])).await.1.is_ok());
    }

    #[tokio::test]
    async fn a_truncated_compressed_or_oversized_message_is_an_error() {
        let whole = frame(&request("abc"));
        let (_, end) = read_all(body(vec![Frame::data(whole.slice(..whole.len() - 1))])).await;
        assert_eq!(end.unwrap_err().code(), Code::Internal);

        let mut compressed = BytesMut::from(&whole[..]);
        compressed[0] = 1;
        let (_, end) = read_all(body(vec![Frame::data(compressed.freeze())])).await;
        assert_eq!(end.unwrap_err().code(), Code::Unimplemented);

        let mut reader = MessageReader::<DiscoveryRequest>::new(body(vec![Frame::data(whole)]), 3, "request");
        assert_eq!(reader.message().await.unwrap_err().code(), Code::OutOfRange);
    }

    #[tokio::test]
    async fn no_buffer_is_kept_between_messages() {
        let big = DiscoveryRequest { type_url: "x".repeat(100_000), ..Default::default() };
        let bytes = frame(&big);
        let (first, rest) = (bytes.slice(..50_000), bytes.slice(50_000..));
        let mut reader = MessageReader::<DiscoveryRequest>::new(
            body(vec![Frame::data(first), Frame::data(rest), Frame::data(frame(&request("small")))]),
            1 << 20,
            "request",
        );
        assert_eq!(reader.message().await.unwrap().unwrap().type_url.len(), 100_000);
        assert_eq!(reader.buf.capacity(), 0, "the large message's buffer is given back");
        assert_eq!(reader.message().await.unwrap().unwrap().type_url, "small");
    }

    #[test]
    fn frame_is_the_prefix_and_the_message() {
        let m = request("type");
        let f = frame(&m);
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes(f[1..5].try_into().unwrap()) as usize, m.encoded_len());
        assert_eq!(&f[5..], m.encode_to_vec());
    }
}
