//! RSS and CPU time of a process, from `/proc/PID/status` and `/proc/PID/stat`.

use std::path::Path;

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ: 100 on Linux).
const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProcSample {
    pub rss_kb: u64,
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
}

pub fn sample(pid: u32) -> Option<ProcSample> {
    sample_at(&Path::new("/proc").join(pid.to_string()))
}

/// A short name for a process: its program and first argument, from
/// `/proc/PID/cmdline` (e.g. `meshplane shard`).
pub fn name(pid: u32) -> Option<String> {
    let raw = std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).ok()?;
    let mut args = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
    let program = args.next()?;
    let program = program.rsplit('/').next().unwrap_or(&program).to_string();
    Some(match args.next() {
        Some(first) if !first.starts_with('-') => format!("{program} {first}"),
        _ => program,
    })
}

/// Whether `pid` is a live process: it exists and is neither a zombie
/// (exited, not yet reaped by its parent) nor dead.
pub fn running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
        return false;
    };
    // The state is the first field after the command (in parentheses).
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z") | Some("X"))
}

pub fn sample_self() -> Option<ProcSample> {
    sample_at(Path::new("/proc/self"))
}

fn sample_at(dir: &Path) -> Option<ProcSample> {
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // Fields after the command (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the state field.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(ProcSample { rss_kb, cpu_s: (utime + stime) / USER_HZ })
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_process() {
        let s = super::sample_self().unwrap();
        assert!(s.rss_kb > 100, "{s:?}");
        assert!(super::sample(std::process::id()).is_some());
        assert!(super::name(std::process::id()).is_some_and(|n| !n.is_empty()));
        assert!(super::running(std::process::id()));
        assert!(!super::running(u32::MAX));
    }
}
