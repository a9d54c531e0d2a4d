//! `loadtest run`: the coordinator. Starts workers, drives the scenario,
//! makes changes and times them, samples the control plane, and writes the
//! report.
//!
//! ```text
//!  [store mesh: bring the store's records to mesh.json]
//!  connect (ramp at --connect-rate) ─▶ wait until every proxy is synced ─▶ sample control-plane RSS
//!     ─▶ scenario for --duration: steady | churn | burst | reconnect-storm | ramp
//!          change: Arm(probe) on every worker ─▶ all armed ─▶ write file | store transaction (t0) ─▶ Converged times
//!          --kill-pid: the signal at --kill-at, from whichever wait is running then (disruption.rs)
//!     ─▶ wait for outstanding changes (--change-timeout) ─▶ Stop ─▶ Final ─▶ report + plots
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::conn::unix_ns;
use crate::disruption::{self, ChangeTimes, DisruptionReport, KillSignal};
use crate::facts::XdsType;
use crate::mesh::{Mesh, expand_proxies, read_proxies, synthetic_proxies};
use crate::probe::{ProbeCheck, ProbeSpec};
use crate::procstat::{self, ProcSample};
use crate::proxy::Api;
use crate::report::{
    ChangeReport, Convergence, LoadtestReport, Machine, ProxiesReport, Report, TargetReport, Tick, cdf, quantile,
};
use crate::stats::Snapshot;
use crate::store::{MeshStore, StoreLocation};
use crate::worker::{self, Command, Event, WorkerConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Connect at --rate proxies/s, then one endpoint change.
    Ramp,
    /// Hold the proxies; one endpoint change every --change-interval seconds.
    Steady,
    /// Endpoint changes at --rate changes/s.
    Churn,
    /// Every --change-interval seconds, --burst-size changes at once (endpoints and routes).
    Burst,
    /// Every proxy reconnects at once; time until all are synced again, then one endpoint change.
    ReconnectStorm,
}

fn parse_type(s: &str) -> Result<XdsType, String> {
    XdsType::parse(s).ok_or_else(|| format!("{s:?} is not one of cds, eds, lds, rds"))
}

#[derive(Clone, Debug, Serialize, clap::Args)]
pub struct RunArgs {
    /// The ADS server (meshplane, a frontend, istiod on 15010). Several
    /// (repeated or comma-separated): connections are spread over them in turn.
    #[arg(long, required = true, value_delimiter = ',')]
    pub xds: Vec<SocketAddr>,
    #[arg(long, default_value_t = 100)]
    pub proxies: usize,
    /// Length of the scenario phase, after every proxy is synced (seconds).
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Write the JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// A directory made by `loadtest gen-mesh`: proxies impersonate its
    /// workloads; changes rewrite its YAML files (served by the control
    /// plane), or, for a mesh made with `gen-mesh --store`, its records in
    /// the store (one transaction per change).
    #[arg(long)]
    pub mesh: Option<PathBuf>,
    /// The store a `gen-mesh --store` mesh lives in (etcd://HOST:PORT[,HOST:PORT...]),
    /// if not the one recorded in the mesh's store.json (e.g. etcd seen from another host).
    #[arg(long, requires = "mesh")]
    pub store: Option<String>,
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// Ramp: proxies connected per second (default 200). Churn: changes per second (default 1).
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, value_enum, default_value_t = Api::Delta)]
    pub api: Api,
    /// PIDs of the control plane's processes (repeated or comma-separated),
    /// to sample their RSS and CPU from /proc; figures are their sums.
    #[arg(long, value_delimiter = ',')]
    pub target_pid: Vec<u32>,
    /// ADS streams per HTTP/2 connection (1: a connection per proxy, like real sidecars).
    #[arg(long, default_value_t = 1)]
    pub streams_per_conn: usize,
    /// New connections per second outside the ramp scenario (0: as fast as possible).
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Worker processes (0: as many as the 20k open-files limit requires; 1 runs in this process).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    #[arg(long, default_value_t = 15_000)]
    pub max_conns_per_worker: usize,
    /// NACK every response of this type (cds, eds, lds, rds).
    #[arg(long, value_parser = parse_type)]
    pub nack: Option<XdsType>,
    /// Share of proxies that NACK (with --nack).
    #[arg(long, default_value_t = 1.0)]
    pub nack_share: f64,
    /// Decode every resource every time instead of once per distinct content.
    #[arg(long)]
    pub no_decode_cache: bool,
    /// Connect from 127.0.0.1 only (default: each connection from its own 127.16+.x.y).
    #[arg(long)]
    pub no_spread_sources: bool,
    #[arg(long, default_value_t = 10.0)]
    pub change_interval: f64,
    #[arg(long, default_value_t = 4)]
    pub burst_size: usize,
    /// Change services of any namespace (default: the shared namespace, seen by every sidecar).
    #[arg(long)]
    pub changes_any_namespace: bool,
    /// Give up on a change this long after writing it (seconds).
    #[arg(long, default_value_t = 30.0)]
    pub change_timeout: f64,
    /// Give up waiting for every proxy to sync after this long (seconds).
    #[arg(long, default_value_t = 180.0)]
    pub sync_timeout: f64,
    /// Write PNG plots into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// No live progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Admin address of the control plane: its /metrics is polled after each
    /// change to time the --watch-metric milestones.
    #[arg(long)]
    pub target_admin: Option<SocketAddr>,
    /// Metrics whose change marks a milestone of a change inside the control plane.
    #[arg(long, default_value = "meshplane_shard_snapshot_revision")]
    pub watch_metric: Vec<String>,
    /// Impersonate only the first K workloads of --mesh (in turn): fewer
    /// distinct proxy classes, to separate per-connection from per-class costs.
    #[arg(long)]
    pub workloads: Option<usize>,
    /// Executable for worker processes (default: this one).
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Kill this process during the scenario, e.g. a shard of the sharded topology.
    #[arg(long, requires = "kill_at")]
    pub kill_pid: Option<u32>,
    /// When to kill --kill-pid: seconds after the scenario starts (every proxy synced).
    #[arg(long, requires = "kill_pid")]
    pub kill_at: Option<f64>,
    /// kill (SIGKILL: a crash) or term (SIGTERM: a graceful stop; a shard drains).
    #[arg(long, value_enum, default_value_t = KillSignal::Kill)]
    pub kill_signal: KillSignal,
    /// Changes written within this many seconds after the kill are reported as
    /// "during" it, later ones as "after" (default 10: two of a shard's default lease TTL).
    #[arg(long, default_value_t = 10.0)]
    pub kill_window: f64,
}

impl RunArgs {
    /// Parse `loadtest run` arguments (without the program and subcommand
    /// names), e.g. for tests driving loadtest as a library.
    pub fn parse_from<I, T>(args: I) -> Result<RunArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{FromArgMatches as _, Parser};
        #[derive(Parser)]
        #[command(name = "loadtest-run")]
        struct Wrapper {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = std::iter::once(std::ffi::OsString::from("loadtest-run")).chain(args.into_iter().map(Into::into));
        let matches = <Wrapper as clap::CommandFactory>::command().try_get_matches_from(args)?;
        Ok(Wrapper::from_arg_matches(&matches)?.run)
    }
}

struct ChangeState {
    spec: ProbeSpec,
    kind: &'static str,
    target: String,
    written_unix_ns: u64,
    written_at_s: f64,
    revision: Option<i64>,
    store_write_ms: Option<f64>,
    armed: usize,
    affected: u64,
    times_ms: Vec<f64>,
    cpu_before: Option<Targets>,
    cpu_per_proxy: Option<f64>,
    milestones: Option<tokio::task::JoinHandle<crate::metrics::Milestones>>,
}

impl ChangeState {
    fn done(&self) -> bool {
        self.armed > 0 && self.written_unix_ns > 0 && self.times_ms.len() as u64 >= self.affected
    }

    fn times(&self) -> ChangeTimes<'_> {
        ChangeTimes { written_unix_ns: self.written_unix_ns, affected: self.affected, times_ms: &self.times_ms }
    }
}

/// Each target process's sample (the processes that could be read).
type Targets = BTreeMap<u32, ProcSample>;

/// `--kill-pid`: when it is due, and what happened once sent.
struct Kill {
    pid: u32,
    signal: KillSignal,
    window: Duration,
    name: Option<String>,
    /// Set when the scenario starts.
    due: Option<Instant>,
    fired: Option<Fired>,
}

struct Fired {
    unix_ns: u64,
    at_s: f64,
    scenario_at_s: f64,
    error: Option<String>,
    counters: Snapshot,
    gone: tokio::task::JoinHandle<Option<f64>>,
}

struct WorkerLink {
    commands: mpsc::Sender<Command>,
    pid: Option<u32>,
}

struct Coord {
    args: RunArgs,
    started: Instant,
    events: mpsc::Receiver<(usize, Event)>,
    workers: Vec<WorkerLink>,
    last: Vec<Snapshot>,
    finals: Vec<Option<Event>>,
    changes: BTreeMap<u32, ChangeState>,
    timeline: Vec<Tick>,
    next_tick: Instant,
    prev_tick: Option<(Instant, Snapshot, Targets)>,
    peak_rss: u64,
    mesh: Option<(Mesh, PathBuf)>,
    /// The mesh's store, when it lives in one: changes are store writes.
    store: Option<MeshStore>,
    kill: Option<Kill>,
    scenario_started: Option<Instant>,
    run_id: String,
    targets_cursor: usize,
}

impl Coord {
    fn total(&self) -> Snapshot {
        let mut t = Snapshot::default();
        for s in &self.last {
            t += *s;
        }
        t
    }

    fn target_sample(&self) -> Option<ProcSample> {
        sample_targets(&self.args.target_pid)
    }

    fn target_samples(&self) -> Targets {
        self.args.target_pid.iter().filter_map(|p| Some((*p, procstat::sample(*p)?))).collect()
    }

    /// Send `--kill-pid` its signal if it is due and was not sent yet.
    fn fire_kill_if_due(&mut self) {
        let now = Instant::now();
        let counters = self.total();
        let (started, scenario_started, quiet) = (self.started, self.scenario_started, self.args.quiet);
        let Some(kill) = self.kill.as_mut().filter(|k| k.fired.is_none() && k.due.is_some_and(|d| now >= d)) else {
            return;
        };
        let error = disruption::send(kill.pid, kill.signal).err().map(|e| e.to_string());
        let unix_ns = unix_ns();
        let at_s = started.elapsed().as_secs_f64();
        let scenario_at_s = scenario_started.map_or(at_s, |s| s.elapsed().as_secs_f64());
        if !quiet || error.is_some() {
            let who = kill.name.as_deref().unwrap_or("process");
            match &error {
                None => eprintln!("[{at_s:6.1}s] {} sent to {who} (PID {})", kill.signal.name(), kill.pid),
                Some(e) => eprintln!("loadtest: cannot send {} to {who} (PID {}): {e}", kill.signal.name(), kill.pid),
            }
        }
        let gone = tokio::spawn(disruption::wait_gone(kill.pid, Duration::from_secs(60)));
        kill.fired = Some(Fired { unix_ns, at_s, scenario_at_s, error, counters, gone });
    }

    fn kill_pending(&self) -> Option<Instant> {
        self.kill.as_ref().filter(|k| k.fired.is_none()).and_then(|k| k.due)
    }

    fn loadtest_sample(&self) -> ProcSample {
        let mut s = procstat::sample_self().unwrap_or_default();
        for w in &self.workers {
            if let Some(ws) = w.pid.and_then(procstat::sample) {
                s.rss_kb += ws.rss_kb;
                s.cpu_s += ws.cpu_s;
            }
        }
        s
    }

    /// Process events and ticks until `done` holds or `deadline` passes.
    async fn pump_until(&mut self, deadline: Instant, done: impl Fn(&Coord) -> bool) -> bool {
        loop {
            self.fire_kill_if_due();
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wake = self.next_tick.min(deadline).min(self.kill_pending().unwrap_or(deadline));
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some((w, ev)) => self.on_event(w, ev),
                    None => return done(self),
                },
                _ = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= self.next_tick {
                        self.tick();
                        self.next_tick += Duration::from_secs(1);
                    }
                }
            }
        }
    }

    fn on_event(&mut self, w: usize, ev: Event) {
        match ev {
            Event::Stats { stats } => self.last[w] = stats,
            Event::Armed { id, affected } => {
                if let Some(c) = self.changes.get_mut(&id) {
                    c.armed += 1;
                    c.affected += u64::from(affected);
                }
            }
            Event::Converged { id, unix_ns } => {
                let cpu_now = self.target_samples();
                if let Some(c) = self.changes.get_mut(&id) {
                    c.times_ms.extend(unix_ns.iter().map(|t| t.saturating_sub(c.written_unix_ns) as f64 / 1e6));
                    if c.done()
                        && c.cpu_per_proxy.is_none()
                        && let Some(before) = &c.cpu_before
                        && !cpu_now.is_empty()
                    {
                        c.cpu_per_proxy = Some(cpu_delta(before, &cpu_now) / c.affected.max(1) as f64);
                    }
                }
            }
            ev @ Event::Final { .. } => self.finals[w] = Some(ev),
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let total = self.total();
        let samples = self.target_samples();
        let target = sum_targets(&samples);
        let (rate, res_rate, cpu) = match &self.prev_tick {
            Some((t, prev, prev_samples)) => {
                let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                // Over the processes alive at both ticks: a killed one takes its CPU time with it.
                let cpu =
                    (!prev_samples.is_empty() && !samples.is_empty()).then(|| cpu_delta(prev_samples, &samples) / dt);
                ((total.responses - prev.responses) as f64 / dt, (total.resources - prev.resources) as f64 / dt, cpu)
            }
            None => (0.0, 0.0, None),
        };
        if let Some(t) = &target {
            self.peak_rss = self.peak_rss.max(t.rss_kb);
        }
        let converged: u64 = self.changes.values().map(|c| c.times_ms.len() as u64).sum();
        let target_rss_by_pid = if self.args.target_pid.len() > 1 {
            samples.iter().map(|(p, s)| (*p, s.rss_kb)).collect()
        } else {
            BTreeMap::new()
        };
        let tick = Tick {
            target_rss_by_pid,
            t_s: now.duration_since(self.started).as_secs_f64(),
            connected: total.connected,
            synced: total.synced,
            responses_per_s: rate,
            resources_per_s: res_rate,
            nacks: total.nacks,
            reconnects: total.reconnects,
            converged,
            target_rss_kb: target.map(|t| t.rss_kb),
            target_cpu: cpu,
            loadtest_rss_kb: self.loadtest_sample().rss_kb,
        };
        if !self.args.quiet {
            let mut line = format!(
                "[{:6.1}s] connected {}/{} synced {} | {:.0} resp/s {:.0} res/s | nacks {} reconnects {}",
                tick.t_s, tick.connected, self.args.proxies, tick.synced, rate, res_rate, tick.nacks, tick.reconnects
            );
            if let Some(c) = self.changes.values().last() {
                line += &format!(" | change {} {}/{} converged", c.spec.id, c.times_ms.len(), c.affected);
            }
            if let Some(t) = &target {
                line += &format!(" | target {} MB", t.rss_kb / 1024);
                if let Some(cpu) = cpu {
                    line += &format!(" {cpu:.2} cores");
                }
            }
            eprintln!("{line}");
        }
        self.timeline.push(tick);
        self.prev_tick = Some((now, total, samples));
    }

    async fn broadcast(&mut self, cmd: Command) {
        for w in &self.workers {
            let _ = w.commands.send(cmd.clone()).await;
        }
    }

    /// Make one change (endpoint or route), arm it everywhere, write it.
    async fn change(&mut self, route: bool) -> anyhow::Result<()> {
        let Some((mut mesh, dir)) = self.mesh.take() else { return Ok(()) };
        let result = self.change_in(&mut mesh, &dir, route).await;
        self.mesh = Some((mesh, dir));
        result
    }

    async fn change_in(&mut self, mesh: &mut Mesh, dir: &std::path::Path, route: bool) -> anyhow::Result<()> {
        let targets = mesh.targets(!self.args.changes_any_namespace);
        let id = self.changes.len() as u32;
        let mut pick = None;
        for k in 0..targets.len() {
            let i = targets[(self.targets_cursor + k) % targets.len()];
            if !route || mesh.services[i].vs {
                pick = Some(i);
                self.targets_cursor += k + 1;
                break;
            }
        }
        let Some(i) = pick else { return Ok(()) };
        let spec = if route {
            match mesh.change_route(i, id, &self.run_id) {
                Some(s) => s,
                None => return Ok(()),
            }
        } else {
            mesh.move_endpoint(i, id)
        };
        let kind = match spec.check {
            ProbeCheck::Endpoint { .. } => "endpoint",
            ProbeCheck::Contains { .. } => "route",
        };
        self.changes.insert(
            id,
            ChangeState {
                spec: spec.clone(),
                kind,
                target: mesh.services[i].fqdn(),
                written_unix_ns: 0,
                written_at_s: 0.0,
                revision: None,
                store_write_ms: None,
                armed: 0,
                affected: 0,
                times_ms: Vec::new(),
                cpu_before: None,
                cpu_per_proxy: None,
                milestones: None,
            },
        );
        self.broadcast(Command::Arm { probe: spec }).await;
        let n = self.workers.len();
        let armed = self.pump_until(Instant::now() + Duration::from_secs(30), |c| c.changes[&id].armed >= n).await;
        anyhow::ensure!(armed, "workers did not arm change {id} within 30 s");
        let cpu_before = self.target_samples();
        let before = match self.args.target_admin {
            Some(admin) => Some((admin, crate::metrics::values(admin, &self.args.watch_metric).await)),
            None => None,
        };
        let since = Instant::now();
        let written_at_s = self.started.elapsed().as_secs_f64();
        let (written, revision, store_write_ms) = match &mut self.store {
            Some(store) => {
                let w = store.write_service(mesh, i).await?;
                (w.started_unix_ns, Some(w.revision), Some(w.ms))
            }
            None => {
                let written = unix_ns();
                mesh.write_service(dir, i)?;
                (written, None, None)
            }
        };
        let timeout = Duration::from_secs_f64(self.args.change_timeout);
        let names = self.args.watch_metric.clone();
        let c = self.changes.get_mut(&id).expect("change just inserted");
        c.milestones = before.map(|(admin, before)| {
            tokio::spawn(crate::metrics::watch_changes(admin, names, before, since, timeout, revision))
        });
        c.written_unix_ns = written;
        c.written_at_s = written_at_s;
        c.revision = revision;
        c.store_write_ms = store_write_ms;
        c.cpu_before = (!cpu_before.is_empty()).then_some(cpu_before);
        mesh.save(dir)
    }

    fn all_changes_done(&self) -> bool {
        self.changes.values().all(ChangeState::done)
    }
}

/// Run a load test; returns the report (also written to `--report`).
pub async fn run(args: RunArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.proxies > 0, "--proxies must be at least 1");
    let started = Instant::now();
    let mesh = match &args.mesh {
        Some(dir) => Some((Mesh::load(dir)?, dir.clone())),
        None => None,
    };
    let kill = prepare_kill(&args)?;
    let location = match &args.mesh {
        Some(dir) => store_location(dir, args.store.as_deref())?,
        None => None,
    };
    let store = match (&location, &mesh) {
        (Some(location), Some((mesh, dir))) => {
            let mut store = MeshStore::open(location.clone()).await?;
            // The store should hold what mesh.json says (the last run saved it
            // after its last write); bring it there before anything is measured.
            let synced = store.sync(mesh).await?;
            if (synced.puts > 0 || synced.deletes > 0) && !args.quiet {
                eprintln!(
                    "loadtest: {location} differed from {}: wrote {} objects, deleted {}",
                    dir.join("mesh.json").display(),
                    synced.puts,
                    synced.deletes
                );
            }
            Some(store)
        }
        _ => None,
    };
    let specs = match &args.mesh {
        Some(dir) => {
            let mut listed = read_proxies(&dir.join("proxies.jsonl"))?;
            if let Some(k) = args.workloads {
                listed.truncate(k.max(1));
            }
            anyhow::ensure!(!listed.is_empty(), "{} lists no proxies", dir.join("proxies.jsonl").display());
            expand_proxies(&listed, args.proxies)
        }
        None => synthetic_proxies(args.proxies),
    };
    let per_conn = args.streams_per_conn.max(1);
    let conns = args.proxies.div_ceil(per_conn);
    let n_workers =
        if args.workers > 0 { args.workers } else { conns.div_ceil(args.max_conns_per_worker.max(1)) }.clamp(1, conns);
    let connect_rate = match args.scenario {
        Scenario::Ramp => args.rate.unwrap_or(200.0) / per_conn as f64,
        _ => args.connect_rate / per_conn as f64,
    } / n_workers as f64;

    for pid in &args.target_pid {
        procstat::sample(*pid).with_context(|| format!("cannot read /proc/{pid} (--target-pid)"))?;
    }
    let target_baseline = sample_targets(&args.target_pid);
    // Named now: a process killed during the run (--kill-pid) has no name at the end.
    let target_names: BTreeMap<u32, String> =
        args.target_pid.iter().filter_map(|p| Some((*p, procstat::name(*p)?))).collect();
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let mut coord = Coord {
        started,
        events: ev_rx,
        workers: Vec::new(),
        last: vec![Snapshot::default(); n_workers],
        finals: vec![None; n_workers],
        changes: BTreeMap::new(),
        timeline: Vec::new(),
        next_tick: Instant::now() + Duration::from_secs(1),
        prev_tick: None,
        peak_rss: target_baseline.map_or(0, |s| s.rss_kb),
        mesh,
        store,
        kill,
        scenario_started: None,
        run_id: format!("{:x}", unix_ns() % 0xffff_ffff),
        targets_cursor: 0,
        args: args.clone(),
    };
    let loadtest_before = coord.loadtest_sample();

    // Workers: contiguous slices of proxies, whole connections each.
    let conns_per_worker = conns.div_ceil(n_workers);
    for w in 0..n_workers {
        let first_conn = w * conns_per_worker;
        let lo = (first_conn * per_conn).min(specs.len());
        let hi = ((first_conn + conns_per_worker) * per_conn).min(specs.len());
        let config = WorkerConfig {
            xds: args.xds.clone(),
            api: args.api,
            streams_per_conn: per_conn,
            connect_rate,
            nack: args.nack,
            nack_share: args.nack_share,
            decode_cache: !args.no_decode_cache,
            spread_sources: !args.no_spread_sources,
            first_conn,
            proxies: specs[lo..hi].to_vec(),
        };
        let link = if n_workers == 1 {
            spawn_in_process(w, config, ev_tx.clone())
        } else {
            spawn_process(w, config, ev_tx.clone(), args.worker_exe.clone()).await?
        };
        coord.workers.push(link);
    }
    drop(ev_tx);

    // Phase 1: every proxy synced.
    let n = args.proxies as i64;
    let sync_deadline = Instant::now() + Duration::from_secs_f64(args.sync_timeout);
    let all_synced = coord.pump_until(sync_deadline, |c| c.total().synced >= n).await;
    let initial_sync_ms = all_synced.then(|| started.elapsed().as_secs_f64() * 1e3);
    if !all_synced && !args.quiet {
        eprintln!("loadtest: only {} of {n} proxies synced within --sync-timeout", coord.total().synced);
    }
    // Let the last ACKs settle before sampling memory.
    coord.pump_until(Instant::now() + Duration::from_millis(1500), |_| false).await;
    let target_synced = coord.target_sample();
    let loadtest_synced = coord.loadtest_sample();
    let connected_at_sync = coord.total().connected;
    let at_sync = coord.total();
    let resources_at_sync = at_sync.resources;

    // Phase 2: the scenario.
    let scenario_started = Instant::now();
    coord.scenario_started = Some(scenario_started);
    if let (Some(kill), Some(at)) = (coord.kill.as_mut(), args.kill_at) {
        kill.due = Some(scenario_started + Duration::from_secs_f64(at));
    }
    let phase_end = scenario_started + Duration::from_secs_f64(args.duration);
    let mut reconnect_storm_ms = None;
    match args.scenario {
        Scenario::Ramp => {
            coord.change(false).await?;
            coord.pump_until(phase_end, |_| false).await;
        }
        Scenario::Steady | Scenario::Burst => {
            let interval = Duration::from_secs_f64(args.change_interval.max(0.1));
            let mut next = Instant::now() + Duration::from_secs(1);
            while next < phase_end || coord.changes.is_empty() {
                coord.pump_until(next, |_| false).await;
                if args.scenario == Scenario::Burst {
                    for k in 0..args.burst_size.max(1) {
                        coord.change(k % 2 == 1).await?;
                    }
                } else {
                    coord.change(false).await?;
                }
                next += interval;
            }
            coord.pump_until(phase_end, |_| false).await;
        }
        Scenario::Churn => {
            let interval = Duration::from_secs_f64(1.0 / args.rate.unwrap_or(1.0).max(0.01));
            let mut next = Instant::now();
            while next < phase_end {
                coord.pump_until(next, |_| false).await;
                coord.change(false).await?;
                next += interval;
            }
        }
        Scenario::ReconnectStorm => {
            let t0 = Instant::now();
            coord.broadcast(Command::Reconnect).await;
            let reconnects_before = coord.total().reconnects;
            let storm_deadline = t0 + Duration::from_secs_f64(args.sync_timeout);
            let expected = connected_at_sync;
            let ok = coord
                .pump_until(storm_deadline, |c| {
                    let t = c.total();
                    t.reconnects - reconnects_before >= expected && t.synced >= expected
                })
                .await;
            reconnect_storm_ms = ok.then(|| t0.elapsed().as_secs_f64() * 1e3);
            coord.change(false).await?;
            coord.pump_until(phase_end, |_| false).await;
        }
    }
    // A kill due before the end of the scenario is sent even if the scenario's own waits ended earlier.
    if let Some(due) = coord.kill_pending() {
        coord.pump_until(due + Duration::from_millis(1), |c| c.kill_pending().is_none()).await;
    }
    // Outstanding changes.
    let last_write = coord.changes.values().map(|c| c.written_unix_ns).max().unwrap_or(0);
    if last_write > 0 {
        let left = Duration::from_secs_f64(args.change_timeout)
            .saturating_sub(Duration::from_nanos(unix_ns().saturating_sub(last_write)));
        coord.pump_until(Instant::now() + left, Coord::all_changes_done).await;
    }
    // One more tick so the last stats are fresh.
    coord.pump_until(Instant::now() + Duration::from_millis(600), |_| false).await;
    let at_stop = coord.total();
    let target_end = coord.target_sample();
    let loadtest_end = coord.loadtest_sample();
    coord.broadcast(Command::Stop).await;
    let workers = coord.workers.len();
    coord.pump_until(Instant::now() + Duration::from_secs(60), |c| c.finals.iter().all(Option::is_some)).await;

    // The report.
    let (mut held, mut interned, mut converged, mut affected) = (0, 0, 0, 0);
    let mut errors = BTreeMap::new();
    let mut totals = Snapshot::default();
    for f in coord.finals.iter().flatten() {
        if let Event::Final { stats, held_resources, interned: i, converged_proxies, affected_proxies, errors: e } = f {
            totals += *stats;
            held += held_resources;
            interned += i;
            converged += converged_proxies;
            affected += affected_proxies;
            for (k, v) in e {
                *errors.entry(k.clone()).or_insert(0) += v;
            }
        }
    }
    let mut all_ms: Vec<f64> = coord.changes.values().flat_map(|c| c.times_ms.iter().copied()).collect();
    all_ms.sort_by(f64::total_cmp);
    let affected_pairs: u64 = coord.changes.values().map(|c| c.affected).sum();
    let mut milestones = BTreeMap::new();
    for (id, c) in coord.changes.iter_mut() {
        if let Some(handle) = c.milestones.take() {
            milestones.insert(*id, handle.await.unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>());
        }
    }
    let fired = coord.kill.as_ref().and_then(|k| k.fired.as_ref().map(|f| (f.unix_ns, k.window)));
    let changes: Vec<ChangeReport> = coord
        .changes
        .values()
        .map(|c| {
            let mut t = c.times_ms.clone();
            t.sort_by(f64::total_cmp);
            let times = c.times();
            ChangeReport {
                id: c.spec.id,
                kind: c.kind.into(),
                target: c.target.clone(),
                written_at_s: c.written_at_s,
                revision: c.revision,
                store_write_ms: c.store_write_ms,
                phase: fired.map(|(at, window)| disruption::phase_of(&times, at, window)),
                converged_at_kill: fired.map(|(at, _)| times.converged_by(at)),
                cdf: cdf(&t, c.affected, 40),
                affected: c.affected,
                converged: t.len() as u64,
                p50_ms: quantile(&t, 0.5),
                p99_ms: quantile(&t, 0.99),
                max_ms: t.last().copied(),
                target_cpu_s_per_proxy: c.cpu_per_proxy,
                milestones_ms: milestones.remove(&c.spec.id).unwrap_or_default(),
            }
        })
        .collect();
    let disruption = match coord.kill.take() {
        Some(Kill { pid, signal, window, name, fired: Some(f), .. }) => {
            let times: Vec<ChangeTimes<'_>> = coord.changes.values().map(ChangeState::times).collect();
            Some(DisruptionReport {
                pid,
                name,
                signal: signal.name().into(),
                at_s: f.at_s,
                scenario_at_s: f.scenario_at_s,
                unix_ns: f.unix_ns,
                error: f.error,
                gone_after_ms: f.gone.await.ok().flatten(),
                window_s: window.as_secs_f64(),
                reconnects_before: f.counters.reconnects,
                reconnects_after: totals.reconnects - f.counters.reconnects,
                nacks_before: f.counters.nacks,
                nacks_after: totals.nacks - f.counters.nacks,
                phases: disruption::phase_reports(&times, f.unix_ns, window),
            })
        }
        _ => None,
    };
    let cpu_per_push: Vec<f64> = changes.iter().filter_map(|c| c.target_cpu_s_per_proxy).collect();
    let target = match target_baseline {
        Some(baseline) => Some(TargetReport {
            pids: args.target_pid.clone(),
            names: target_names,
            baseline,
            synced: target_synced,
            end: target_end,
            rss_kb_per_proxy: target_synced
                .filter(|_| connected_at_sync > 0)
                .map(|s| (s.rss_kb as f64 - baseline.rss_kb as f64) / connected_at_sync as f64),
            peak_rss_kb: coord.peak_rss,
            cpu_s_per_push_per_proxy: (!cpu_per_push.is_empty())
                .then(|| cpu_per_push.iter().sum::<f64>() / cpu_per_push.len() as f64),
            resources_per_cpu_s: target_synced
                .map(|s| s.cpu_s - baseline.cpu_s)
                .filter(|cpu| *cpu > 0.0)
                .map(|cpu| resources_at_sync as f64 / cpu),
        }),
        _ => None,
    };
    let report = Report {
        parameters: serde_json::to_value(&args)?,
        machine: Machine::detect(),
        proxies: ProxiesReport {
            requested: args.proxies,
            connected: at_stop.connected,
            ever_synced: at_stop.ever_synced,
            synced: at_stop.synced,
            converged: converged as i64,
            affected: affected as i64,
            api: format!("{:?}", args.api).to_lowercase(),
            streams_per_connection: per_conn,
            workers,
        },
        convergence: Convergence {
            samples: all_ms.len() as u64,
            affected: affected_pairs,
            converged: all_ms.len() as u64,
            p50_ms: quantile(&all_ms, 0.5),
            p90_ms: quantile(&all_ms, 0.9),
            p99_ms: quantile(&all_ms, 0.99),
            max_ms: all_ms.last().copied(),
            measured_from: match &location {
                None => "the loadtest's write of the changed file into the config dir, to the proxy's ACK of a \
                         response whose content shows the change"
                    .into(),
                Some(l) => format!(
                    "the loadtest's store transaction writing the changed object ({l}; sent at t0, its revision in \
                     changes[].revision), to the proxy's ACK of a response whose content shows the change"
                ),
            },
            cdf: cdf(&all_ms, affected_pairs, 200),
        },
        changes,
        reconnect_storm_ms,
        initial_sync_ms,
        nacks: totals.nacks,
        reconnects: totals.reconnects,
        totals,
        scenario_totals: at_stop - at_sync,
        target,
        loadtest: LoadtestReport {
            rss_kb_before: loadtest_before.rss_kb,
            rss_kb_synced: loadtest_synced.rss_kb,
            rss_kb_per_proxy: (connected_at_sync > 0)
                .then(|| (loadtest_synced.rss_kb as f64 - loadtest_before.rss_kb as f64) / connected_at_sync as f64),
            cpu_s: loadtest_end.cpu_s - loadtest_before.cpu_s,
            held_resources: held,
            interned_strings: interned,
        },
        errors,
        timeline: std::mem::take(&mut coord.timeline),
        elapsed_s: started.elapsed().as_secs_f64(),
        store: location,
        disruption,
    };
    if let Some(path) = &args.report {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write --report {}", path.display()))?;
    }
    if let Some(dir) = &args.plots
        && let Err(e) = crate::plot::write_all(&report, dir)
    {
        // The report is written; plots can be redrawn with `loadtest plot`.
        eprintln!("loadtest: no plots: {e:#}");
    }
    Ok(report)
}

/// The sum over the target processes (`None` if none can be read).
fn sample_targets(pids: &[u32]) -> Option<ProcSample> {
    sum_targets(&pids.iter().filter_map(|p| Some((*p, procstat::sample(*p)?))).collect())
}

fn sum_targets(samples: &Targets) -> Option<ProcSample> {
    (!samples.is_empty()).then(|| ProcSample {
        rss_kb: samples.values().map(|s| s.rss_kb).sum(),
        cpu_s: samples.values().map(|s| s.cpu_s).sum(),
    })
}

/// CPU seconds used between two samples by the processes in both (a process
/// killed in between, or started, is left out rather than counted negative).
fn cpu_delta(before: &Targets, after: &Targets) -> f64 {
    after.iter().filter_map(|(pid, b)| Some(b.cpu_s - before.get(pid)?.cpu_s)).sum()
}

/// Where the changes of the mesh in `dir` go: its store (the one recorded in
/// `store.json`, or `--store`), or `None` for a config-dir mesh.
fn store_location(dir: &std::path::Path, store: Option<&str>) -> anyhow::Result<Option<StoreLocation>> {
    let recorded = StoreLocation::load(dir)?;
    match (recorded, store) {
        (None, None) => Ok(None),
        (Some(recorded), None) => Ok(Some(recorded)),
        (Some(recorded), Some(url)) => Ok(Some(StoreLocation::new(url, &recorded.cluster)?)),
        (None, Some(url)) => anyhow::bail!(
            "--store {url}: {} holds a config-dir mesh (no store.json), whose changes are file writes; \
             generate it into the store with `loadtest gen-mesh --store {url} --out {}`",
            dir.display(),
            dir.display()
        ),
    }
}

/// Check `--kill-*` before anything connects.
fn prepare_kill(args: &RunArgs) -> anyhow::Result<Option<Kill>> {
    let (Some(pid), Some(at)) = (args.kill_pid, args.kill_at) else { return Ok(None) };
    anyhow::ensure!(
        at.is_finite() && at >= 0.0 && at < args.duration,
        "--kill-at {at} is not within the scenario (0 to --duration {})",
        args.duration
    );
    anyhow::ensure!(
        args.kill_window.is_finite() && args.kill_window >= 0.0,
        "--kill-window {} is not a number of seconds",
        args.kill_window
    );
    anyhow::ensure!(pid > 1 && pid != std::process::id(), "--kill-pid {pid}: not a process loadtest may kill");
    anyhow::ensure!(
        procstat::running(pid),
        "--kill-pid {pid}: no such running process (give the PID of the process to kill, e.g. a shard's)"
    );
    Ok(Some(Kill {
        pid,
        signal: args.kill_signal,
        window: Duration::from_secs_f64(args.kill_window),
        name: procstat::name(pid),
        due: None,
        fired: None,
    }))
}

fn spawn_in_process(w: usize, config: WorkerConfig, events: mpsc::Sender<(usize, Event)>) -> WorkerLink {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    tokio::spawn(worker::run(config, cmd_rx, ev_tx));
    tokio::spawn(async move {
        while let Some(ev) = ev_rx.recv().await {
            if events.send((w, ev)).await.is_err() {
                break;
            }
        }
    });
    WorkerLink { commands: cmd_tx, pid: None }
}

async fn spawn_process(
    w: usize,
    config: WorkerConfig,
    events: mpsc::Sender<(usize, Event)>,
    exe: Option<PathBuf>,
) -> anyhow::Result<WorkerLink> {
    let exe = match exe {
        Some(e) => e,
        None => std::env::current_exe().context("cannot find this executable to start workers (--worker-exe)")?,
    };
    let mut child = tokio::process::Command::new(&exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start worker {}", exe.display()))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("worker stdin")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut first = serde_json::to_vec(&config)?;
    first.push(b'\n');
    stdin.write_all(&first).await?;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&cmd) else { continue };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() || stdin.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(ev) => {
                    if events.send((w, ev)).await.is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("loadtest: worker {w} said something unexpected ({e}): {line}"),
            }
        }
        let _ = child.wait().await;
    });
    Ok(WorkerLink { commands: cmd_tx, pid })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_go_where_the_mesh_lives() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(store_location(dir.path(), None).unwrap(), None);
        let e = store_location(dir.path(), Some("etcd://10.0.0.1:2379")).unwrap_err().to_string();
        assert!(e.contains("config-dir mesh") && e.contains("gen-mesh --store"), "{e}");
        let recorded = StoreLocation::new("etcd://127.0.0.1:2379", "lt-a").unwrap();
        recorded.save(dir.path()).unwrap();
        assert_eq!(store_location(dir.path(), None).unwrap(), Some(recorded));
        // --store only moves the address; the objects keep their cluster.
        let moved = store_location(dir.path(), Some("etcd://10.0.0.1:2379")).unwrap().unwrap();
        assert_eq!((moved.url.as_str(), moved.cluster.as_str()), ("etcd://10.0.0.1:2379", "lt-a"));
    }

    #[test]
    fn kills_are_checked_before_anything_connects() {
        let args = |extra: &[&str]| {
            let mut a = vec!["--xds", "127.0.0.1:1", "--duration", "10"];
            a.extend_from_slice(extra);
            RunArgs::parse_from(a).unwrap()
        };
        assert!(prepare_kill(&args(&[])).unwrap().is_none());
        // --kill-pid and --kill-at go together.
        assert!(RunArgs::parse_from(["--xds", "127.0.0.1:1", "--kill-pid", "4242"]).is_err());
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id().to_string();
        let e = prepare_kill(&args(&["--kill-pid", &pid, "--kill-at", "10"])).err().unwrap().to_string();
        assert!(e.contains("--kill-at 10"), "{e}");
        let kill =
            prepare_kill(&args(&["--kill-pid", &pid, "--kill-at", "2", "--kill-signal", "term"])).unwrap().unwrap();
        assert_eq!((kill.pid, kill.signal, kill.due.is_none()), (child.id(), KillSignal::Term, true));
        assert_eq!(kill.name.as_deref(), Some("sleep 30"));
        let own = std::process::id().to_string();
        assert!(prepare_kill(&args(&["--kill-pid", &own, "--kill-at", "2"])).is_err());
        child.kill().unwrap();
        child.wait().unwrap();
        let e = prepare_kill(&args(&["--kill-pid", &pid, "--kill-at", "2"])).err().unwrap().to_string();
        assert!(e.contains("no such running process"), "{e}");
    }
}
