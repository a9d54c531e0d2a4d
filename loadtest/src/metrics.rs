//! Milestones of a change inside the control plane, read from its
//! Prometheus `/metrics`: after each write, the endpoint is polled until the
//! watched metrics change, e.g. `meshplane_shard_snapshot_revision` (the
//! shard installed a snapshot with the change; for a store write, once its
//! revision reaches the write's). Splits write-to-ACK into "until the
//! control plane had it" and "until the proxies had it".

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// GET `/metrics` over HTTP/1.1 and return the body.
pub async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    Ok(text.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_string()))
}

/// The value of the first sample of `name` (any labels) in a text exposition.
pub fn value(body: &str, name: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = if rest.starts_with('{') { &rest[rest.find('}')? + 1..] } else { rest };
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// (metric, ms from the write until it changed) for each watched metric.
pub type Milestones = Vec<(String, Option<f64>)>;

/// Current values of `names`.
pub async fn values(addr: SocketAddr, names: &[String]) -> Vec<Option<f64>> {
    let body = fetch(addr).await.unwrap_or_default();
    names.iter().map(|n| value(&body, n)).collect()
}

/// Whether a polled value marks the milestone: a `*_revision` metric once it
/// reaches the change's store revision (when the change has one), any other
/// metric once it differs from its value before the change.
pub fn reached(name: &str, before: Option<f64>, now: Option<f64>, revision: Option<i64>) -> bool {
    match (now, revision) {
        (None, _) => false,
        (Some(v), Some(r)) if name.ends_with("_revision") => v >= r as f64,
        (now, _) => now != before,
    }
}

/// Poll until each metric reaches its milestone ([`reached`]) or `timeout`;
/// returns the milliseconds from `since` to the first poll that saw each.
pub async fn watch_changes(
    addr: SocketAddr,
    names: Vec<String>,
    before: Vec<Option<f64>>,
    since: Instant,
    timeout: Duration,
    revision: Option<i64>,
) -> Milestones {
    let mut seen: Vec<Option<f64>> = vec![None; names.len()];
    let deadline = since + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while seen.iter().any(Option::is_none) && Instant::now() < deadline {
        tick.tick().await;
        let now = values(addr, &names).await;
        let ms = since.elapsed().as_secs_f64() * 1e3;
        for i in 0..names.len() {
            if seen[i].is_none() && reached(&names[i], before[i], now[i], revision) {
                seen[i] = Some(ms);
            }
        }
    }
    names.into_iter().zip(seen).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_samples_with_and_without_labels() {
        let body = "# HELP x\nmeshplane_shard_snapshot_revision 42\npilot_xds_pushes{type=\"cds\"} 7\npilot_xds 3\n";
        assert_eq!(super::value(body, "meshplane_shard_snapshot_revision"), Some(42.0));
        assert_eq!(super::value(body, "pilot_xds_pushes"), Some(7.0));
        assert_eq!(super::value(body, "pilot_xds"), Some(3.0));
        assert_eq!(super::value(body, "pilot"), None);
    }

    #[test]
    fn revision_metrics_reach_the_changes_revision_others_just_change() {
        use super::reached;
        let rev = "meshplane_shard_snapshot_revision";
        // A snapshot of an unrelated, later write is not the milestone of a store write at 40.
        assert!(!reached(rev, Some(30.0), Some(39.0), Some(40)));
        assert!(reached(rev, Some(30.0), Some(40.0), Some(40)));
        assert!(reached(rev, Some(30.0), Some(45.0), Some(40)));
        // A file write has no revision: any change of the metric.
        assert!(reached(rev, Some(30.0), Some(31.0), None));
        assert!(!reached(rev, Some(30.0), Some(30.0), None));
        assert!(reached("pilot_xds_pushes", Some(3.0), Some(4.0), Some(40)));
        assert!(!reached("pilot_xds_pushes", Some(3.0), None, None));
    }
}
