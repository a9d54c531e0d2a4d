//! Loopback addresses and free ports for parallel tests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::process::spawn_lock;

static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

/// A loopback block 127.0.N.0/24 owned by one test. Tests in one binary run
/// in parallel; each `TestNet::new()` takes the next N (1..=254, wrapping
/// after 254 blocks), so listeners of different tests never share an
/// address. Linux routes all of 127.0.0.0/8 to `lo`, no setup needed.
#[derive(Debug, Clone, Copy)]
pub struct TestNet {
    block: u8,
}

impl TestNet {
    pub fn new() -> Self {
        // Start at a per-process offset, so test runs of two checkouts on one
        // machine rarely share addresses (Envoy's SO_REUSEPORT would mix them).
        let n = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed).wrapping_add(port_seed());
        TestNet { block: (n % 254 + 1) as u8 }
    }

    /// N in 127.0.N.x.
    pub fn block(&self) -> u8 {
        self.block
    }

    /// 127.0.N.host (host 1..=254).
    pub fn ip(&self, host: u8) -> IpAddr {
        assert!(host != 0 && host != 255, "host octet must be 1..=254");
        IpAddr::V4(Ipv4Addr::new(127, 0, self.block, host))
    }

    /// 127.0.N.host with a port from [`free_port`].
    pub fn free_addr(&self, host: u8) -> SocketAddr {
        let ip = self.ip(host);
        SocketAddr::new(ip, free_port(ip))
    }
}

impl Default for TestNet {
    fn default() -> Self {
        Self::new()
    }
}

/// Ports handed out by [`free_port`] come from 20000..32000, below Linux's
/// ephemeral range (32768..60999): a port chosen here cannot be taken in
/// the meantime by some process's `bind(:0)` or outgoing connection, which
/// is the usual race of "bind port 0, close, hand the port to a child".
const PORT_LO: u32 = 20_000;
const PORT_SPAN: u32 = 12_000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

fn port_seed() -> u32 {
    static SEED: OnceLock<u32> = OnceLock::new();
    *SEED.get_or_init(|| {
        // Different test processes start at different points of the range.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        std::process::id().wrapping_mul(7919).wrapping_add(nanos)
    })
}

/// A port on `ip` that is free now (checked by binding it) and that no other
/// call in this process has returned before, for any IP.
pub fn free_port(ip: IpAddr) -> u16 {
    for _ in 0..PORT_SPAN {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = (PORT_LO + port_seed().wrapping_add(n) % PORT_SPAN) as u16;
        // The probe socket must not leak into a child being spawned.
        let _guard = spawn_lock();
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {PORT_LO}..{}", PORT_LO + PORT_SPAN);
}
