//! A lean HTTP/2 gRPC client: one TCP connection carrying the ADS streams of
//! one or more simulated proxies, driven by a single task.
//!
//! ```text
//!  connect ─▶ preface + SETTINGS(header table 0, no push, 1 MiB stream window) + conn WINDOW_UPDATE
//!  loop select! {
//!    readable ─▶ frames ─▶ DATA: gRPC messages ─▶ Proxy::on_message ─▶ requests queued per stream
//!                          HEADERS: status / trailers (stream end)   SETTINGS, PING, WINDOW_UPDATE, GOAWAY
//!    writable (when bytes are queued) ─▶ write
//!    control changed ─▶ arm probes | reconnect | stop
//!    timer ─▶ reopen ended streams
//!  }
//! ```
//!
//! Why not tonic: a tonic `Channel` costs about 51 KB per connection
//! (`shared/perf-limits.md`), the `h2` crate alone about 30 KB of codec
//! buffers. Here an idle connection holds no buffer at all: the read and
//! write buffers are allocated while bytes are in flight and freed once
//! drained, so an idle simulated proxy is its xDS state plus a socket.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::hpack;
use crate::proxy::Proxy;
use crate::stats::Stats;
use crate::worker::{Control, Shared};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Receive window we give each stream and the connection.
const STREAM_WINDOW: u32 = 1 << 20;
const CONN_WINDOW: u32 = 8 << 20;
const DEFAULT_WINDOW: i64 = 65_535;
/// Largest frame we accept (the HTTP/2 default; we never raise it, so
/// partial-frame buffering stays bounded).
const MAX_FRAME: usize = 16_384;

/// Reconnect backoff: doubles from this (plus up to as much jitter) to
/// [`MAX_BACKOFF`], and starts over once a connection has been accepted.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

pub fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Where and how a connection task connects.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Local address to bind before connecting (spreads loopback source
    /// ports over many addresses).
    pub bind: Option<IpAddr>,
    pub header_block: Bytes,
}

/// Why a connection ended.
enum End {
    /// Lost, refused or closed by the server: reconnect after a backoff.
    Lost(&'static str),
    /// The coordinator asked every proxy to reconnect now.
    Reconnect,
    Stop,
}

#[derive(Debug, Default)]
struct Slot {
    /// 0: no stream open.
    stream: u32,
    send_window: i64,
    recv_unacked: u32,
    got_headers: bool,
    out: VecDeque<Bytes>,
    /// Partial gRPC message.
    msg: Vec<u8>,
    reopen_at: Option<Instant>,
}

/// Pseudo-random jitter without a RNG dependency.
fn jitter(seed: u64, max: Duration) -> Duration {
    let mut x = seed ^ unix_ns();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    max.mul_f64((x % 10_000) as f64 / 10_000.0)
}

/// Run the proxies of one connection until told to stop. Returns them so
/// the worker can report their final state.
pub async fn run(
    shared: Arc<Shared>,
    mut proxies: Vec<Proxy>,
    target: Target,
    start_at: Instant,
    mut control: watch::Receiver<Control>,
) -> Vec<Proxy> {
    let mut seen = SeenControl::default();
    let seed = u64::from(proxies.first().map_or(0, |p| p.index));
    let mut wait_until = Some(start_at);
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Wait (for the ramp slot or a backoff), still answering control.
        while let Some(at) = wait_until {
            tokio::select! {
                _ = tokio::time::sleep_until(at) => wait_until = None,
                changed = control.changed() => {
                    if changed.is_err() {
                        return proxies;
                    }
                    match seen.apply(&control.borrow_and_update(), &shared, &mut proxies) {
                        Some(End::Stop) => return proxies,
                        Some(End::Reconnect) if at > start_at => wait_until = None,
                        _ => {}
                    }
                }
            }
        }
        seen.apply(&control.borrow_and_update(), &shared, &mut proxies);
        if seen.stop {
            return proxies;
        }
        let end = match connect(&target).await {
            Ok(tcp) => {
                let mut conn = Conn::new(tcp, proxies.len());
                let end = conn.drive(&shared, &target, &mut proxies, &mut control, &mut seen).await;
                if conn.established {
                    backoff = FIRST_BACKOFF;
                }
                // On Stop, proxies keep their state for the final report.
                if !matches!(end, End::Stop) {
                    let ctx = shared.ctx();
                    for p in proxies.iter_mut() {
                        p.on_stream_end(&ctx);
                    }
                }
                end
            }
            Err(e) => {
                Stats::add(&shared.stats.connect_errors, 1);
                shared.note_error(format!("cannot connect: {e}"));
                End::Lost("connect failed")
            }
        };
        match end {
            End::Stop => return proxies,
            End::Reconnect => {
                backoff = FIRST_BACKOFF;
                wait_until = None;
            }
            End::Lost(why) => {
                if !matches!(why, "connect failed") {
                    shared.note_error(format!("connection lost: {why}"));
                }
                wait_until = Some(Instant::now() + backoff + jitter(seed, backoff));
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if matches!(end, End::Reconnect) {
            continue;
        }
    }
}

async fn connect(target: &Target) -> std::io::Result<TcpStream> {
    let socket = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = target.bind {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// What of the control channel a task has acted on.
#[derive(Debug, Default)]
pub struct SeenControl {
    reconnect_epoch: u32,
    probes: usize,
    stop: bool,
}

impl SeenControl {
    /// Act on a new control value; returns what the connection must do.
    fn apply(&mut self, c: &Control, shared: &Shared, proxies: &mut [Proxy]) -> Option<End> {
        if c.probes > self.probes {
            let probes = shared.probes();
            for probe in &probes[self.probes..c.probes.min(probes.len())] {
                let affected = proxies.iter_mut().map(|p| p.arm(probe)).filter(|a| *a).count();
                probe.affected.fetch_add(affected as u32, Ordering::Relaxed);
                probe.armed_tasks.fetch_add(1, Ordering::Relaxed);
            }
            self.probes = c.probes.min(probes.len());
        }
        if c.stop {
            self.stop = true;
            return Some(End::Stop);
        }
        if c.reconnect_epoch != self.reconnect_epoch {
            self.reconnect_epoch = c.reconnect_epoch;
            return Some(End::Reconnect);
        }
        None
    }
}

struct Conn {
    tcp: TcpStream,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    conn_send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    peer_max_streams: usize,
    conn_recv_unacked: u32,
    next_stream: u32,
    slots: Vec<Slot>,
    /// A header block being continued: (stream, block, end_stream).
    continuation: Option<(u32, Vec<u8>, bool)>,
    hpack: hpack::Decoder,
    goaway: bool,
    /// The server accepted a stream on this connection.
    established: bool,
}

enum ReadError {
    Io(std::io::ErrorKind),
    Protocol(String),
}

enum Wake {
    Read(std::io::Result<()>),
    Write(std::io::Result<()>),
    Control(bool),
    Timer,
}

impl Conn {
    fn new(tcp: TcpStream, streams: usize) -> Conn {
        Conn {
            tcp,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            conn_send_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            peer_max_streams: usize::MAX,
            conn_recv_unacked: 0,
            next_stream: 1,
            slots: (0..streams).map(|_| Slot::default()).collect(),
            continuation: None,
            hpack: hpack::Decoder::default(),
            goaway: false,
            established: false,
        }
    }

    fn frame_header(&mut self, len: usize, ty: u8, flags: u8, stream: u32) {
        let len = len as u32;
        self.wbuf.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
        self.wbuf.extend_from_slice(&stream.to_be_bytes());
    }

    fn preface(&mut self) {
        self.wbuf.extend_from_slice(PREFACE);
        let settings: [(u16, u32); 3] = [(0x1, 0), (0x2, 0), (0x4, STREAM_WINDOW)];
        self.frame_header(settings.len() * 6, SETTINGS, 0, 0);
        for (id, v) in settings {
            self.wbuf.extend_from_slice(&id.to_be_bytes());
            self.wbuf.extend_from_slice(&v.to_be_bytes());
        }
        self.window_update(0, CONN_WINDOW - DEFAULT_WINDOW as u32);
    }

    /// End the run politely: half-close every stream (the server sees the
    /// request stream end, not a broken connection), say GOAWAY, and wait
    /// (briefly) for the server to close.
    async fn close(&mut self) {
        for i in 0..self.slots.len() {
            let stream = self.slots[i].stream;
            if stream != 0 {
                self.frame_header(0, DATA, END_STREAM, stream);
            }
        }
        self.frame_header(8, GOAWAY, 0, 0);
        self.wbuf.extend_from_slice(&[0; 8]);
        let deadline = Instant::now() + Duration::from_millis(200);
        while !self.wbuf.is_empty() && Instant::now() < deadline {
            match self.tcp.try_write(&self.wbuf) {
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if tokio::time::timeout_at(deadline, self.tcp.writable()).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        // Let the server end its side (trailers, then closing the
        // connection) before the socket is dropped.
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut scratch = [0u8; 4096];
        while Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.tcp.readable()).await {
                Ok(Ok(())) => match self.tcp.try_read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                },
                _ => break,
            }
        }
    }

    fn window_update(&mut self, stream: u32, increment: u32) {
        self.frame_header(4, WINDOW_UPDATE, 0, stream);
        self.wbuf.extend_from_slice(&increment.to_be_bytes());
    }

    fn open_streams(&mut self) -> usize {
        self.slots.iter().filter(|s| s.stream != 0).count()
    }

    /// Open a stream for slot `i`: HEADERS, then the proxy's first requests.
    fn open(&mut self, i: usize, shared: &Shared, target: &Target, proxy: &mut Proxy) {
        let id = self.next_stream;
        self.next_stream += 2;
        self.frame_header(target.header_block.len(), HEADERS, END_HEADERS, id);
        self.wbuf.extend_from_slice(&target.header_block);
        let slot = &mut self.slots[i];
        *slot = Slot { stream: id, send_window: self.peer_initial_window, ..Slot::default() };
        let node = shared.node(proxy.index);
        for req in proxy.open_stream(&node, &shared.ctx()) {
            slot.out.push_back(grpc_frame(req));
        }
    }

    async fn drive(
        &mut self,
        shared: &Shared,
        target: &Target,
        proxies: &mut [Proxy],
        control: &mut watch::Receiver<Control>,
        seen: &mut SeenControl,
    ) -> End {
        self.preface();
        for (i, proxy) in proxies.iter_mut().enumerate() {
            if self.open_streams() < self.peer_max_streams {
                self.open(i, shared, target, proxy);
            }
        }
        loop {
            self.flush_streams();
            if !self.wbuf.is_empty() {
                match self.tcp.try_write(&self.wbuf) {
                    Ok(n) => {
                        self.wbuf.drain(..n);
                        if self.wbuf.is_empty() {
                            self.wbuf = Vec::new();
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return End::Lost("write failed"),
                }
            }
            let next_timer = self.slots.iter().filter_map(|s| s.reopen_at).min();
            let want_write = !self.wbuf.is_empty();
            let wake = {
                let tcp = &self.tcp;
                tokio::select! {
                    r = tcp.ready(Interest::READABLE) => Wake::Read(r.map(|_| ())),
                    r = tcp.writable(), if want_write => Wake::Write(r),
                    c = control.changed() => Wake::Control(c.is_ok()),
                    _ = tokio::time::sleep_until(next_timer.unwrap_or_else(Instant::now)), if next_timer.is_some() => Wake::Timer,
                }
            };
            match wake {
                Wake::Read(Err(_)) | Wake::Write(Err(_)) => return End::Lost("socket error"),
                Wake::Write(Ok(())) => {}
                Wake::Read(Ok(())) => match self.read(shared, proxies) {
                    Ok(true) => {}
                    Ok(false) => return End::Lost("closed by the server"),
                    Err(ReadError::Io(kind)) => {
                        return End::Lost(match kind {
                            std::io::ErrorKind::ConnectionReset => "connection reset",
                            _ => "read error",
                        });
                    }
                    Err(ReadError::Protocol(e)) => {
                        shared.note_error(format!("HTTP/2 protocol error: {e}"));
                        return End::Lost("protocol error");
                    }
                },
                Wake::Control(false) => return End::Stop,
                Wake::Control(true) => {
                    let end = seen.apply(&control.borrow_and_update(), shared, proxies);
                    if let Some(end) = end {
                        if matches!(end, End::Stop) {
                            self.close().await;
                        }
                        return end;
                    }
                }
                Wake::Timer => {
                    let now = Instant::now();
                    for (i, proxy) in proxies.iter_mut().enumerate() {
                        if self.slots[i].reopen_at.is_some_and(|t| t <= now) {
                            if self.goaway {
                                return End::Lost("GOAWAY from the server");
                            }
                            if self.open_streams() < self.peer_max_streams {
                                self.open(i, shared, target, proxy);
                            } else {
                                self.slots[i].reopen_at = Some(now + Duration::from_millis(200));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Read what is available and process complete frames. `Ok(false)`: closed.
    fn read(&mut self, shared: &Shared, proxies: &mut [Proxy]) -> Result<bool, ReadError> {
        loop {
            self.rbuf.reserve(32 * 1024);
            match self.tcp.try_read_buf(&mut self.rbuf) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(ReadError::Io(e.kind())),
            }
            let mut buf = std::mem::take(&mut self.rbuf);
            let mut pos = 0;
            while buf.len() - pos >= 9 {
                let h = &buf[pos..pos + 9];
                let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if len > MAX_FRAME {
                    return Err(ReadError::Protocol(format!(
                        "frame of {len} bytes exceeds our SETTINGS_MAX_FRAME_SIZE"
                    )));
                }
                if buf.len() - pos < 9 + len {
                    break;
                }
                let (ty, flags) = (h[3], h[4]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                let payload = &buf[pos + 9..pos + 9 + len];
                self.frame(ty, flags, stream, payload, shared, proxies).map_err(ReadError::Protocol)?;
                pos += 9 + len;
            }
            if pos == buf.len() {
                buf = Vec::new();
            } else {
                buf.drain(..pos);
            }
            self.rbuf = buf;
        }
        if self.rbuf.is_empty() {
            self.rbuf = Vec::new();
        }
        Ok(true)
    }

    fn slot_of(&self, stream: u32) -> Option<usize> {
        if stream == 0 {
            return None;
        }
        self.slots.iter().position(|s| s.stream == stream)
    }

    fn frame(
        &mut self,
        ty: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
        shared: &Shared,
        proxies: &mut [Proxy],
    ) -> Result<(), String> {
        if self.continuation.is_some() && ty != CONTINUATION {
            return Err("expected CONTINUATION".into());
        }
        match ty {
            DATA => {
                self.conn_recv_unacked += payload.len() as u32;
                if self.conn_recv_unacked >= CONN_WINDOW / 4 {
                    let n = std::mem::take(&mut self.conn_recv_unacked);
                    self.window_update(0, n);
                }
                let data = strip_padding(flags, payload)?;
                let Some(i) = self.slot_of(stream) else { return Ok(()) };
                let slot = &mut self.slots[i];
                slot.recv_unacked += payload.len() as u32;
                let mut requests = Vec::new();
                let proxy = &mut proxies[i];
                let mut handle = |m: &[u8]| requests.extend(proxy.on_message(m, &shared.ctx()));
                if slot.msg.is_empty() {
                    let rest = messages(data, &mut handle)?;
                    if !rest.is_empty() {
                        slot.msg = rest.to_vec();
                    }
                } else {
                    slot.msg.extend_from_slice(data);
                    let msg = std::mem::take(&mut slot.msg);
                    let rest = messages(&msg, &mut handle)?;
                    if !rest.is_empty() {
                        slot.msg = rest.to_vec();
                    }
                }
                slot.out.extend(requests.into_iter().map(grpc_frame));
                let slot = &mut self.slots[i];
                if slot.recv_unacked >= STREAM_WINDOW / 4 && flags & END_STREAM == 0 {
                    let n = std::mem::take(&mut slot.recv_unacked);
                    self.window_update(stream, n);
                }
                if flags & END_STREAM != 0 {
                    self.end_stream(i, shared, proxies, Some(2));
                }
            }
            HEADERS => {
                let mut block = strip_padding(flags, payload)?;
                if flags & PRIORITY_FLAG != 0 {
                    block = block.get(5..).ok_or("short HEADERS priority")?;
                }
                if flags & END_HEADERS == 0 {
                    self.continuation = Some((stream, block.to_vec(), flags & END_STREAM != 0));
                } else {
                    self.headers(stream, block, flags & END_STREAM != 0, shared, proxies)?;
                }
            }
            CONTINUATION => {
                let Some((s, mut block, end)) = self.continuation.take() else {
                    return Err("unexpected CONTINUATION".into());
                };
                block.extend_from_slice(payload);
                if flags & END_HEADERS == 0 {
                    self.continuation = Some((s, block, end));
                } else {
                    self.headers(s, &block, end, shared, proxies)?;
                }
            }
            RST_STREAM => {
                if let Some(i) = self.slot_of(stream) {
                    let code = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    shared.note_error(format!("stream reset by the server (HTTP/2 error code {code})"));
                    self.end_stream(i, shared, proxies, Some(14));
                }
            }
            SETTINGS if flags & ACK == 0 => {
                for s in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match id {
                        0x3 => self.peer_max_streams = v as usize,
                        0x4 => {
                            let delta = i64::from(v) - self.peer_initial_window;
                            self.peer_initial_window = i64::from(v);
                            for s in self.slots.iter_mut().filter(|s| s.stream != 0) {
                                s.send_window += delta;
                            }
                        }
                        0x5 => self.peer_max_frame = v as usize,
                        _ => {}
                    }
                }
                self.frame_header(0, SETTINGS, ACK, 0);
            }
            PING if flags & ACK == 0 => {
                self.frame_header(payload.len(), PING, ACK, 0);
                self.wbuf.extend_from_slice(payload);
            }
            GOAWAY => {
                self.goaway = true;
                let last = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                for i in 0..self.slots.len() {
                    if self.slots[i].stream > last {
                        self.end_stream(i, shared, proxies, None);
                    }
                }
            }
            WINDOW_UPDATE => {
                let inc = payload.get(..4).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff);
                if stream == 0 {
                    self.conn_send_window += i64::from(inc);
                } else if let Some(i) = self.slot_of(stream) {
                    self.slots[i].send_window += i64::from(inc);
                }
            }
            PUSH_PROMISE => return Err("server push although disabled".into()),
            _ => {}
        }
        Ok(())
    }

    fn headers(
        &mut self,
        stream: u32,
        block: &[u8],
        end: bool,
        shared: &Shared,
        proxies: &mut [Proxy],
    ) -> Result<(), String> {
        let headers = self.hpack.decode(block).map_err(|e| e.to_string())?;
        let Some(i) = self.slot_of(stream) else { return Ok(()) };
        let get = |name: &str| {
            headers.iter().find(|(n, _)| n == name.as_bytes()).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        if !self.slots[i].got_headers {
            self.slots[i].got_headers = true;
            let status = get(":status").unwrap_or_default();
            if status != "200" {
                shared.note_error(format!("HTTP status {status} from the ADS server"));
                self.end_stream(i, shared, proxies, Some(2));
                return Ok(());
            }
            if !end {
                self.established = true;
                proxies[i].on_connected(&shared.ctx());
            }
        }
        if end {
            let code = get("grpc-status").and_then(|s| s.parse::<i32>().ok()).unwrap_or(2);
            if code != 0 {
                let message = get("grpc-message").map(|m| percent_decode(&m)).unwrap_or_default();
                shared.note_error(format!("grpc-status {code}: {message}"));
            }
            self.end_stream(i, shared, proxies, Some(code));
        }
        Ok(())
    }

    /// The stream of slot `i` is over; reopen it later (`code`: its
    /// grpc-status if known; 0 means the server ended it cleanly).
    fn end_stream(&mut self, i: usize, shared: &Shared, proxies: &mut [Proxy], code: Option<i32>) {
        let slot = &mut self.slots[i];
        if slot.stream == 0 {
            return;
        }
        Stats::add(&shared.stats.stream_ends, 1);
        if code.is_some_and(|c| c != 0) {
            Stats::add(&shared.stats.stream_errors, 1);
        }
        let delay = Duration::from_millis(500) + jitter(u64::from(slot.stream), Duration::from_millis(500));
        *slot = Slot { reopen_at: Some(Instant::now() + delay), ..Slot::default() };
        proxies[i].on_stream_end(&shared.ctx());
    }

    /// Move queued requests into DATA frames as flow control allows.
    fn flush_streams(&mut self) {
        for i in 0..self.slots.len() {
            while self.conn_send_window > 0 {
                let slot = &mut self.slots[i];
                if slot.stream == 0 || slot.send_window <= 0 {
                    break;
                }
                let Some(front) = slot.out.front_mut() else { break };
                let n = front
                    .len()
                    .min(self.peer_max_frame)
                    .min(self.conn_send_window as usize)
                    .min(slot.send_window as usize);
                let chunk = front.split_to(n);
                let done = front.is_empty();
                if done {
                    slot.out.pop_front();
                }
                slot.send_window -= n as i64;
                let stream = slot.stream;
                self.conn_send_window -= n as i64;
                self.frame_header(n, DATA, 0, stream);
                self.wbuf.extend_from_slice(&chunk);
            }
            if self.slots[i].out.is_empty() && self.slots[i].out.capacity() > 0 {
                self.slots[i].out = VecDeque::new();
            }
        }
    }
}

fn grpc_frame(msg: Vec<u8>) -> Bytes {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn strip_padding(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = usize::from(*payload.first().ok_or("empty padded frame")?);
    payload
        .get(1..payload.len().saturating_sub(pad))
        .filter(|_| pad < payload.len())
        .ok_or_else(|| "bad padding".into())
}

/// Call `f` for each complete gRPC message in `data`; returns the rest.
fn messages<'a>(mut data: &'a [u8], f: &mut impl FnMut(&[u8])) -> Result<&'a [u8], String> {
    while data.len() >= 5 {
        if data[0] != 0 {
            return Err("compressed gRPC message (we do not ask for compression)".into());
        }
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() < 5 + len {
            break;
        }
        f(&data[5..5 + len]);
        data = &data[5 + len..];
    }
    Ok(data)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
