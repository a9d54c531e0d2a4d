//! The JSON report: every figure of a run and the exact parameters used.

use serde::{Deserialize, Serialize};

use crate::procstat::ProcSample;
use crate::stats::Snapshot;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub parameters: serde_json::Value,
    pub machine: Machine,
    pub proxies: ProxiesReport,
    pub convergence: Convergence,
    /// Each change: what it was and how it converged.
    pub changes: Vec<ChangeReport>,
    /// Reconnect storm: time from the reconnect order until every proxy was
    /// synced again (ms), if the scenario had one.
    pub reconnect_storm_ms: Option<f64>,
    /// Time from the first connection until every proxy was synced (ms).
    pub initial_sync_ms: Option<f64>,
    pub nacks: i64,
    pub reconnects: i64,
    pub totals: Snapshot,
    /// What was received during the scenario phase only (from the moment
    /// every proxy was synced to the end): the traffic the changes caused.
    #[serde(default)]
    pub scenario_totals: Snapshot,
    pub target: Option<TargetReport>,
    pub loadtest: LoadtestReport,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub timeline: Vec<Tick>,
    pub elapsed_s: f64,
    /// Where the changes were written, when the mesh lives in meshplane's
    /// store (`gen-mesh --store`); `None`: files of the config dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::store::StoreLocation>,
    /// The process killed during the scenario (`--kill-pid`), and how the
    /// changes before, in flight at, during and after the kill converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<crate::disruption::DisruptionReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_kb: u64,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kb: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ProxiesReport {
    pub requested: usize,
    /// Proxies connected at the end of the run.
    pub connected: i64,
    /// Proxies connected at some point (synced at least once).
    pub ever_synced: i64,
    /// Proxies holding a complete config at the end of the run.
    pub synced: i64,
    /// Proxies that converged on every change affecting them (and are synced).
    pub converged: i64,
    /// Proxies affected by at least one change.
    pub affected: i64,
    pub api: String,
    pub streams_per_connection: usize,
    pub workers: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Convergence {
    /// (change, affected proxy) pairs measured, and how many converged.
    pub samples: u64,
    pub affected: u64,
    pub converged: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// What the times are measured from.
    pub measured_from: String,
    /// Share of (change, proxy) pairs converged by each time (ms).
    pub cdf: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChangeReport {
    pub id: u32,
    pub kind: String,
    pub target: String,
    /// When the change was written (file or store), seconds since the run started.
    pub written_at_s: f64,
    /// Store mode: the revision the change was committed at, and how long
    /// the store took to acknowledge the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_write_ms: Option<f64>,
    /// With `--kill-pid`: where the change stands relative to the kill, and
    /// how many affected proxies had converged on it when the signal was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::disruption::Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged_at_kill: Option<u64>,
    pub affected: u64,
    pub converged: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Control-plane CPU seconds from the write until the change converged,
    /// per affected proxy.
    pub target_cpu_s_per_proxy: Option<f64>,
    /// Milliseconds from the write until each watched control-plane metric
    /// changed (`--target-admin`), e.g. the shard's snapshot revision.
    #[serde(default)]
    pub milestones_ms: std::collections::BTreeMap<String, Option<f64>>,
    /// Share of the affected proxies converged by each time since the write (ms).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TargetReport {
    /// The processes measured; every figure is their sum.
    #[serde(default)]
    pub pids: Vec<u32>,
    /// What each process is (program and subcommand, from /proc/PID/cmdline).
    #[serde(default)]
    pub names: std::collections::BTreeMap<u32, String>,
    /// Before any proxy connected.
    pub baseline: ProcSample,
    /// Once every proxy was synced.
    pub synced: Option<ProcSample>,
    pub end: Option<ProcSample>,
    /// (RSS when synced - baseline) / connected proxies.
    pub rss_kb_per_proxy: Option<f64>,
    /// Peak RSS seen.
    pub peak_rss_kb: u64,
    /// Control-plane CPU seconds per pushed change per affected proxy (mean over changes).
    pub cpu_s_per_push_per_proxy: Option<f64>,
    /// Resources delivered during the initial sync per control-plane CPU second.
    pub resources_per_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoadtestReport {
    /// Loadtest RSS (all its processes) before and after connecting.
    pub rss_kb_before: u64,
    pub rss_kb_synced: u64,
    pub rss_kb_per_proxy: Option<f64>,
    pub cpu_s: f64,
    pub held_resources: u64,
    pub interned_strings: u64,
}

/// One sample of the timeline (every second).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tick {
    pub t_s: f64,
    pub connected: i64,
    pub synced: i64,
    pub responses_per_s: f64,
    pub resources_per_s: f64,
    pub nacks: i64,
    pub reconnects: i64,
    pub converged: u64,
    pub target_rss_kb: Option<u64>,
    /// Control-plane CPU use over the last interval, in cores (1.0 = one core).
    pub target_cpu: Option<f64>,
    pub loadtest_rss_kb: u64,
    /// RSS of each target process, when there are several.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub target_rss_by_pid: std::collections::BTreeMap<u32, u64>,
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize - 1;
    Some(sorted[rank.min(sorted.len() - 1)])
}

/// Share converged over time: (ms, share of `total`) at up to `points` steps.
pub fn cdf(sorted_ms: &[f64], total: u64, points: usize) -> Vec<(f64, f64)> {
    if sorted_ms.is_empty() || total == 0 {
        return Vec::new();
    }
    let step = (sorted_ms.len() / points).max(1);
    let mut out: Vec<(f64, f64)> =
        (0..sorted_ms.len()).step_by(step).map(|i| (sorted_ms[i], (i + 1) as f64 / total as f64)).collect();
    out.push((sorted_ms[sorted_ms.len() - 1], sorted_ms.len() as f64 / total as f64));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 1.0), Some(100.0));
        assert_eq!(quantile(&[], 0.5), None);
        let c = cdf(&v, 200, 10);
        assert_eq!(c.last(), Some(&(100.0, 0.5)));
    }
}
