//! A worker: a set of simulated proxies in one process, their connection
//! tasks, and the commands and reports exchanged with the coordinator.
//!
//! ```text
//!  coordinator ── Command (Arm, Reconnect, Stop) ──▶ worker ── watch<Control> ──▶ connection tasks (1 per connection)
//!  coordinator ◀── Event (Stats, Armed, Converged, Final) ── worker ◀── atomics, probe records ──┘
//! ```
//!
//! In-process workers talk over channels; worker processes (`loadtest
//! worker`, spawned by the coordinator when one process cannot hold enough
//! sockets) speak the same messages as JSON lines on stdin/stdout.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::conn::{self, Target, unix_ns};
use crate::facts::{DecodeCache, XdsType};
use crate::hpack;
use crate::intern::Interner;
use crate::mesh::ProxySpec;
use crate::probe::{Probe, ProbeSpec};
use crate::proxy::{Api, Ctx, Proxy};
use crate::stats::{Snapshot, Stats};

/// Everything a worker needs to run its share of proxies.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// ADS servers; connection `c` (global index) goes to `xds[c % len]`.
    pub xds: Vec<SocketAddr>,
    pub api: Api,
    /// ADS streams multiplexed on each connection.
    pub streams_per_conn: usize,
    /// New connections per second (0: all at once).
    pub connect_rate: f64,
    pub nack: Option<XdsType>,
    /// Share of proxies that NACK `nack` (the first ones of each worker).
    pub nack_share: f64,
    pub decode_cache: bool,
    /// Bind each connection to its own 127.x.y.z source address.
    pub spread_sources: bool,
    /// Global index of this worker's first connection (for source addresses).
    pub first_conn: usize,
    pub proxies: Vec<ProxySpec>,
}

/// What the coordinator tells a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Arm { probe: ProbeSpec },
    Reconnect,
    Stop,
}

/// What a worker tells the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Stats {
        stats: Snapshot,
    },
    Armed {
        id: u32,
        affected: u32,
    },
    Converged {
        id: u32,
        unix_ns: Vec<u64>,
    },
    Final {
        stats: Snapshot,
        held_resources: u64,
        interned: u64,
        /// Proxies synced at the end and converged on every change that affected them.
        converged_proxies: u64,
        affected_proxies: u64,
        errors: BTreeMap<String, u64>,
    },
}

/// The broadcast state connection tasks follow.
#[derive(Clone, Debug, Default)]
pub struct Control {
    pub reconnect_epoch: u32,
    /// Number of probes armed so far.
    pub probes: usize,
    pub stop: bool,
}

/// What every connection task of a worker shares.
pub struct Shared {
    pub names: Interner,
    pub cache: DecodeCache,
    pub stats: Stats,
    specs: Vec<ProxySpec>,
    probes: RwLock<Arc<Vec<Arc<Probe>>>>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            names: &self.names,
            cache: &self.cache,
            stats: &self.stats,
            probes: self.probes(),
            now_unix_ns: unix_ns(),
        }
    }

    pub fn probes(&self) -> Arc<Vec<Arc<Probe>>> {
        self.probes.read().expect("probes poisoned").clone()
    }

    pub fn node(&self, index: u32) -> envoy_types::pb::envoy::config::core::v3::Node {
        self.specs[index as usize].node()
    }

    /// Count an error by message (stream failures, refused streams).
    pub fn note_error(&self, message: String) {
        let mut errors = self.errors.lock().expect("errors poisoned");
        if errors.len() < 50 || errors.contains_key(&message) {
            *errors.entry(message).or_default() += 1;
        }
    }
}

/// A source address per connection: 127.16.0.0 and up.
pub fn source_ip(conn: usize) -> IpAddr {
    let c = conn as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(127, 16 + (c >> 16) as u8, (c >> 8) as u8, c as u8))
}

const DELTA_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// Run a worker until `Stop`; events go to `events`.
pub async fn run(config: WorkerConfig, mut commands: mpsc::Receiver<Command>, events: mpsc::Sender<Event>) {
    let path = match config.api {
        Api::Delta => DELTA_PATH,
        Api::Sotw => SOTW_PATH,
    };
    let header_blocks: Vec<Bytes> =
        config.xds.iter().map(|a| Bytes::from(hpack::grpc_request_block(&a.to_string(), path))).collect();
    let nack_count = (config.proxies.len() as f64 * config.nack_share).round() as usize;
    let shared = Arc::new(Shared {
        names: Interner::default(),
        cache: DecodeCache::new(config.decode_cache),
        stats: Stats::default(),
        specs: config.proxies.clone(),
        probes: RwLock::new(Arc::new(Vec::new())),
        errors: Mutex::new(BTreeMap::new()),
    });
    let (control_tx, control_rx) = watch::channel(Control::default());
    let per_conn = config.streams_per_conn.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let conns = config.proxies.len().div_ceil(per_conn);
    if config.xds.is_empty() {
        return;
    }
    for c in 0..conns {
        let proxies: Vec<Proxy> = (c * per_conn..((c + 1) * per_conn).min(config.proxies.len()))
            .map(|i| Proxy::new(i as u32, config.api, config.nack.filter(|_| i < nack_count)))
            .collect();
        let which = (config.first_conn + c) % config.xds.len();
        let addr = config.xds[which];
        let target = Target {
            addr,
            bind: (config.spread_sources && addr.ip().is_loopback()).then(|| source_ip(config.first_conn + c)),
            header_block: header_blocks[which].clone(),
        };
        let at = if config.connect_rate > 0.0 {
            start + Duration::from_secs_f64(c as f64 / config.connect_rate)
        } else {
            start
        };
        tasks.push(tokio::spawn(conn::run(shared.clone(), proxies, target, at, control_rx.clone())));
    }
    drop(control_rx);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut flushed: Vec<usize> = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                flush_converged(&shared, &mut flushed, &events).await;
                let _ = events.send(Event::Stats { stats: shared.stats.snapshot() }).await;
            }
            cmd = commands.recv() => match cmd {
                Some(Command::Arm { probe }) => {
                    let id = probe.id;
                    let probe = Arc::new(Probe::new(probe, &shared.names));
                    let count = {
                        let mut probes = shared.probes.write().expect("probes poisoned");
                        let mut list = (**probes).clone();
                        list.push(probe.clone());
                        let count = list.len();
                        *probes = Arc::new(list);
                        count
                    };
                    control_tx.send_modify(|c| c.probes = count);
                    // Every task arms it promptly (they all wait on the control channel).
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while (probe.armed_tasks.load(Ordering::Relaxed) as usize) < tasks.len() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    let _ = events.send(Event::Armed { id, affected: probe.affected() }).await;
                }
                Some(Command::Reconnect) => control_tx.send_modify(|c| c.reconnect_epoch += 1),
                Some(Command::Stop) | None => break,
            }
        }
    }
    control_tx.send_modify(|c| c.stop = true);
    let (mut held, mut converged, mut affected) = (0u64, 0u64, 0u64);
    for t in tasks {
        if let Ok(proxies) = t.await {
            for p in &proxies {
                held += p.held() as u64;
                converged += u64::from(p.is_synced() && p.converged());
                affected += u64::from(p.was_affected());
            }
        }
    }
    flush_converged(&shared, &mut flushed, &events).await;
    let errors = shared.errors.lock().expect("errors poisoned").clone();
    let _ = events
        .send(Event::Final {
            stats: shared.stats.snapshot(),
            held_resources: held,
            interned: shared.names.len() as u64,
            converged_proxies: converged,
            affected_proxies: affected,
            errors,
        })
        .await;
}

async fn flush_converged(shared: &Shared, flushed: &mut Vec<usize>, events: &mpsc::Sender<Event>) {
    let probes = shared.probes();
    flushed.resize(probes.len(), 0);
    for (i, probe) in probes.iter().enumerate() {
        let fresh: Vec<u64> = {
            let times = probe.converged.lock().expect("probe poisoned");
            times[flushed[i]..].to_vec()
        };
        if !fresh.is_empty() {
            flushed[i] += fresh.len();
            let _ = events.send(Event::Converged { id: probe.spec.id, unix_ns: fresh }).await;
        }
    }
}

/// `loadtest worker`: a worker process speaking JSON lines on stdin/stdout.
pub async fn serve_stdio() -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.ok_or_else(|| anyhow::anyhow!("no worker configuration on stdin"))?;
    let config: WorkerConfig = serde_json::from_str(&first)?;
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let worker = tokio::spawn(run(config, cmd_rx, ev_tx));
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(cmd) => {
                    if cmd_tx.send(cmd).await.is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("loadtest worker: ignoring bad command {line:?}: {e}"),
            }
        }
        // stdin closed: the coordinator is gone; stop.
        let _ = cmd_tx.send(Command::Stop).await;
    });
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let mut line = serde_json::to_vec(&ev)?;
        line.push(b'\n');
        out.write_all(&line).await?;
        out.flush().await?;
    }
    let _ = worker.await;
    reader.abort();
    Ok(())
}
