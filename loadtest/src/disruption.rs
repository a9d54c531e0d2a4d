//! A process killed while changes flow (`loadtest run --kill-pid PID
//! --kill-at SECS`): typically a shard of the sharded topology, whose proxies
//! the frontends move to the other shards without their streams noticing.
//!
//! ```text
//!  scenario start ── changes ──┬── kill (SIGKILL | SIGTERM) at --kill-at ── changes ──────────────┬── changes ──▶
//!                              │                                                                 │
//!  before:    written and converged everywhere before the kill                                   │
//!  in_flight: written before the kill, not converged everywhere at it                            │
//!  during:    written in [kill, kill + --kill-window)                                            │
//!  after:     written from kill + --kill-window on ──────────────────────────────────────────────┘
//! ```
//!
//! The classification and per-phase figures are pure functions of the
//! changes' write times and convergence times ([`phase_of`],
//! [`phase_reports`]); sending the signal and watching the process go are the
//! thin edge ([`send`], [`wait_gone`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::report::{cdf, quantile};

/// The signal sent to `--kill-pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KillSignal {
    /// SIGKILL: a crash (a shard's proxies move at once, its lease expires later).
    Kill,
    /// SIGTERM: a graceful stop (a shard drains: its proxies move, then it exits).
    Term,
}

impl KillSignal {
    pub fn name(self) -> &'static str {
        match self {
            KillSignal::Kill => "SIGKILL",
            KillSignal::Term => "SIGTERM",
        }
    }
}

/// Where a change stands relative to the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Before,
    InFlight,
    During,
    After,
}

impl Phase {
    pub const ALL: [Phase; 4] = [Phase::Before, Phase::InFlight, Phase::During, Phase::After];

    pub fn label(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::InFlight => "in flight at the kill",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// A change as the classification sees it.
#[derive(Clone, Copy, Debug)]
pub struct ChangeTimes<'a> {
    pub written_unix_ns: u64,
    /// Affected proxies.
    pub affected: u64,
    /// Milliseconds from the write until each affected proxy converged.
    pub times_ms: &'a [f64],
}

impl ChangeTimes<'_> {
    /// Affected proxies converged by `unix_ns`.
    pub fn converged_by(&self, unix_ns: u64) -> u64 {
        let limit_ms = unix_ns.saturating_sub(self.written_unix_ns) as f64 / 1e6;
        if unix_ns < self.written_unix_ns {
            return 0;
        }
        self.times_ms.iter().filter(|&&t| t <= limit_ms).count() as u64
    }
}

/// The phase of a change, given the kill's time and the window after it.
pub fn phase_of(change: &ChangeTimes<'_>, kill_unix_ns: u64, window: Duration) -> Phase {
    let window_end = kill_unix_ns.saturating_add(window.as_nanos() as u64);
    if change.written_unix_ns >= window_end {
        Phase::After
    } else if change.written_unix_ns >= kill_unix_ns {
        Phase::During
    } else if change.converged_by(kill_unix_ns) >= change.affected {
        Phase::Before
    } else {
        Phase::InFlight
    }
}

/// Convergence of the changes of one phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: Option<Phase>,
    pub changes: usize,
    /// (change, affected proxy) pairs, and how many converged.
    pub affected: u64,
    pub converged: u64,
    /// Of the converged pairs, those that converged after the kill.
    pub converged_after_kill: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Share of the phase's pairs converged by each time since their write (ms).
    pub cdf: Vec<(f64, f64)>,
}

/// One report per phase (all four, empty ones included), in phase order.
pub fn phase_reports(changes: &[ChangeTimes<'_>], kill_unix_ns: u64, window: Duration) -> Vec<PhaseReport> {
    Phase::ALL
        .iter()
        .map(|&phase| {
            let mine: Vec<&ChangeTimes<'_>> =
                changes.iter().filter(|c| phase_of(c, kill_unix_ns, window) == phase).collect();
            let mut times: Vec<f64> = mine.iter().flat_map(|c| c.times_ms.iter().copied()).collect();
            times.sort_by(f64::total_cmp);
            let affected = mine.iter().map(|c| c.affected).sum();
            let converged_before: u64 = mine.iter().map(|c| c.converged_by(kill_unix_ns)).sum();
            PhaseReport {
                phase: Some(phase),
                changes: mine.len(),
                affected,
                converged: times.len() as u64,
                converged_after_kill: times.len() as u64 - converged_before,
                p50_ms: quantile(&times, 0.5),
                p90_ms: quantile(&times, 0.9),
                p99_ms: quantile(&times, 0.99),
                max_ms: times.last().copied(),
                cdf: cdf(&times, affected, 100),
            }
        })
        .collect()
}

/// What happened to `--kill-pid`, in the report.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DisruptionReport {
    pub pid: u32,
    /// The process, from /proc/PID/cmdline (e.g. `meshplane shard`), read before the kill.
    pub name: Option<String>,
    pub signal: String,
    /// When the signal was sent: seconds since the run started, and since the scenario started.
    pub at_s: f64,
    pub scenario_at_s: f64,
    pub unix_ns: u64,
    /// Why the signal could not be sent, if it could not.
    pub error: Option<String>,
    /// Milliseconds from the signal until the process was gone (exited or a zombie), if seen within 60 s.
    pub gone_after_ms: Option<f64>,
    /// Changes written within this many seconds after the kill are `during` it.
    pub window_s: f64,
    /// Counters of every proxy before the kill (as of the last report, at most 250 ms old) and after it.
    pub reconnects_before: i64,
    pub reconnects_after: i64,
    pub nacks_before: i64,
    pub nacks_after: i64,
    pub phases: Vec<PhaseReport>,
}

/// Send `signal` to `pid`.
pub fn send(pid: u32, signal: KillSignal) -> std::io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| std::io::Error::other(format!("{pid} is not a process id")))?;
    let pid = rustix::process::Pid::from_raw(raw).ok_or_else(|| std::io::Error::other("pid 0 is not a process"))?;
    let signal = match signal {
        KillSignal::Kill => rustix::process::Signal::KILL,
        KillSignal::Term => rustix::process::Signal::TERM,
    };
    rustix::process::kill_process(pid, signal).map_err(std::io::Error::from)
}

/// Poll until `pid` is gone (exited, or a zombie its parent has not reaped);
/// the milliseconds it took, or `None` after `timeout`.
pub async fn wait_gone(pid: u32, timeout: Duration) -> Option<f64> {
    let since = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while since.elapsed() < timeout {
        tick.tick().await;
        if !crate::procstat::running(pid) {
            return Some(since.elapsed().as_secs_f64() * 1e3);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn change(written_s: u64, affected: u64, times_ms: &[f64]) -> ChangeTimes<'_> {
        ChangeTimes { written_unix_ns: written_s * S, affected, times_ms }
    }

    #[test]
    fn changes_are_classified_by_write_time_and_convergence_at_the_kill() {
        let kill = 100 * S;
        let window = Duration::from_secs(10);
        // Written at 90 s, all 3 converged by 95 s: before.
        assert_eq!(phase_of(&change(90, 3, &[1000.0, 2000.0, 5000.0]), kill, window), Phase::Before);
        // Written at 98 s, one proxy still pending at the kill: in flight.
        assert_eq!(phase_of(&change(98, 3, &[100.0, 200.0, 4000.0]), kill, window), Phase::InFlight);
        // Written before the kill, one proxy never converged: in flight.
        assert_eq!(phase_of(&change(50, 3, &[100.0, 200.0]), kill, window), Phase::InFlight);
        // Converged exactly at the kill counts as before it.
        assert_eq!(phase_of(&change(99, 1, &[1000.0]), kill, window), Phase::Before);
        // Written at the kill and within the window: during; at its end: after.
        assert_eq!(phase_of(&change(100, 1, &[1.0]), kill, window), Phase::During);
        assert_eq!(phase_of(&change(109, 1, &[1.0]), kill, window), Phase::During);
        assert_eq!(phase_of(&change(110, 1, &[1.0]), kill, window), Phase::After);
        // A change no proxy was affected by had nothing in flight.
        assert_eq!(phase_of(&change(90, 0, &[]), kill, window), Phase::Before);
    }

    #[test]
    fn converged_by_counts_times_up_to_an_instant() {
        let c = change(10, 4, &[500.0, 1000.0, 1500.0, 3000.0]);
        assert_eq!(c.converged_by(9 * S), 0);
        assert_eq!(c.converged_by(10 * S), 0);
        assert_eq!(c.converged_by(11 * S), 2);
        assert_eq!(c.converged_by(20 * S), 4);
    }

    #[test]
    fn phase_reports_cover_every_phase_with_pairs_and_quantiles() {
        let kill = 100 * S;
        let before = [10.0, 20.0];
        let in_flight = [100.0, 3000.0];
        let during = [400.0, 600.0, 800.0];
        let after = [50.0];
        let changes =
            [change(90, 2, &before), change(99, 2, &in_flight), change(101, 4, &during), change(120, 1, &after)];
        let reports = phase_reports(&changes, kill, Duration::from_secs(10));
        assert_eq!(reports.iter().map(|r| r.phase.unwrap()).collect::<Vec<_>>(), Phase::ALL);
        let [b, f, d, a] = &reports[..] else { panic!() };
        assert_eq!((b.changes, b.affected, b.converged, b.converged_after_kill), (1, 2, 2, 0));
        assert_eq!((f.changes, f.affected, f.converged, f.converged_after_kill), (1, 2, 2, 1));
        assert_eq!(f.max_ms, Some(3000.0));
        assert_eq!((d.changes, d.affected, d.converged, d.converged_after_kill), (1, 4, 3, 3));
        assert_eq!((d.p50_ms, d.max_ms), (Some(600.0), Some(800.0)));
        // The cdf is a share of the affected pairs: 3 of 4 converged.
        assert_eq!(d.cdf.last(), Some(&(800.0, 0.75)));
        assert_eq!((a.changes, a.converged), (1, 1));
        let empty = phase_reports(&changes[..1], kill, Duration::from_secs(10));
        assert_eq!((empty[3].changes, empty[3].p50_ms, empty[3].cdf.len()), (0, None, 0));
    }

    #[test]
    fn signals_reach_a_process_and_it_is_seen_gone() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(crate::procstat::running(pid));
        send(pid, KillSignal::Kill).expect("SIGKILL");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Not reaped yet: a zombie counts as gone.
        let gone = rt.block_on(wait_gone(pid, Duration::from_secs(30)));
        assert!(gone.is_some(), "the killed process was still running after 30 s");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9));
        // Nothing left to signal.
        assert!(send(pid, KillSignal::Term).is_err());
    }
}
