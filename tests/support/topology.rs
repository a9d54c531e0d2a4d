//! The sharded topology as real processes: a one-member etcd (from
//! `MESHPLANE_ETCD`), `meshplane registry-sync`, frontends and shards on
//! loopback, each killed when dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::STARTUP;
use super::http::{Response, try_http_request};
use super::meshplane::Meshplane;
use super::net::free_port;
use super::process::{Proc, artifact_dir, required_env_path};
use super::wait::wait_for;

fn loopback_addr() -> SocketAddr {
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    SocketAddr::new(lo, free_port(lo))
}

/// A one-member etcd on loopback that can be stopped and started again on
/// the same ports and data.
pub struct Etcd {
    proc: Option<Proc>,
    client: SocketAddr,
    peer: SocketAddr,
    data: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut etcd =
            Etcd { proc: None, client: loopback_addr(), peer: loopback_addr(), data: tempfile::tempdir().unwrap() };
        etcd.up();
        etcd
    }

    /// `etcd://127.0.0.1:PORT`, for `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client)
    }

    fn up(&mut self) {
        let binary = required_env_path("MESHPLANE_ETCD", "etcd 3.5");
        let (client, peer) = (format!("http://{}", self.client), format!("http://{}", self.peer));
        let mut cmd = Command::new(binary);
        cmd.args(["--name", "e0", "--data-dir"])
            .arg(self.data.path())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e0={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100", "--unsafe-no-fsync"]);
        let proc = Proc::spawn("etcd", cmd, artifact_dir("etcd"));
        let client = self.client;
        wait_for(STARTUP, "etcd to report healthy", || {
            proc.assert_running();
            try_http_request(client, "GET", "localhost", "/health", &[])
                .ok()
                .filter(|r| r.status == 200 && r.text().contains("true"))
                .map(|_| ())
        });
        self.proc = Some(proc);
    }

    /// Stop etcd (SIGTERM) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            let _ = Command::new("kill").arg("-TERM").arg(proc.pid().to_string()).status();
            wait_for(STARTUP, "etcd to exit", || proc.exited().is_some());
        }
    }

    /// Start it again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "etcd is still running");
        self.up();
    }
}

/// One `meshplane` process of the topology.
pub struct Role {
    pub name: String,
    proc: Proc,
    pub admin: SocketAddr,
    /// The frontend's xDS address or the shard's ADS address.
    pub serving: Option<SocketAddr>,
}

impl Role {
    fn spawn(name: &str, args: &[String], admin: SocketAddr, serving: Option<SocketAddr>) -> Role {
        let mut cmd = Command::new(Meshplane::binary());
        cmd.args(args).arg("--admin-addr").arg(admin.to_string());
        cmd.env("MESHPLANE_LOG", "info,meshplane=debug,meshplane_shard=debug,meshplane_frontend=debug");
        cmd.env("RUST_BACKTRACE", "1");
        let proc = Proc::spawn(name, cmd, artifact_dir(name));
        Role { name: name.to_string(), proc, admin, serving }
    }

    pub fn wait_ready(&self) {
        wait_for(STARTUP, &format!("{} /ready to return 200", self.name), || {
            self.proc.assert_running();
            self.admin_get("/ready").filter(|r| r.status == 200).map(|_| ())
        });
    }

    pub fn admin_get(&self, path: &str) -> Option<Response> {
        try_http_request(self.admin, "GET", "localhost", path, &[]).ok()
    }

    pub fn admin_json(&self, path: &str) -> Value {
        let r = self.admin_get(path).unwrap_or_else(|| panic!("{}: GET {path} failed", self.name));
        assert_eq!(r.status, 200, "{}: GET {path}: {}", self.name, r.text());
        r.json()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.proc.log_path()).unwrap_or_default()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&self) {
        self.proc.kill();
    }

    /// SIGTERM, and wait up to `deadline` for a clean exit.
    pub fn terminate(&self, deadline: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        wait_for(deadline, &format!("{} to exit after SIGTERM", self.name), || self.exited())
    }
}

/// etcd + registry-sync + frontends + shards.
pub struct Topology {
    pub etcd: Etcd,
    pub sync: Role,
    pub frontends: Vec<Role>,
    pub shards: Vec<Role>,
    config_dir: PathBuf,
}

impl Topology {
    pub fn start(config_dir: &Path, frontends: usize, shards: usize) -> Topology {
        let etcd = Etcd::start();
        let store = etcd.url();
        let sync = Role::spawn(
            "registry-sync",
            &["registry-sync".into(), "--config-dir".into(), config_dir.display().to_string(), "--store".into(), store],
            loopback_addr(),
            None,
        );
        sync.wait_ready();
        let mut topology =
            Topology { etcd, sync, frontends: Vec::new(), shards: Vec::new(), config_dir: config_dir.into() };
        for _ in 0..shards {
            topology.add_shard();
        }
        for i in 0..frontends {
            let xds = loopback_addr();
            let role = Role::spawn(
                &format!("frontend-{i}"),
                &["frontend".into(), "--xds-addr".into(), xds.to_string(), "--store".into(), topology.etcd.url()],
                loopback_addr(),
                Some(xds),
            );
            role.wait_ready();
            topology.frontends.push(role);
        }
        topology
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// Start one more shard (`shard-N`) and wait until it is ready.
    pub fn add_shard(&mut self) -> &Role {
        let n = self.shards.len();
        let listen = loopback_addr();
        let role = Role::spawn(
            &format!("shard-{n}"),
            &[
                "shard".into(),
                "--listen".into(),
                listen.to_string(),
                "--store".into(),
                self.etcd.url(),
                "--shard-id".into(),
                format!("shard-{n}"),
                "--lease-ttl".into(),
                "3s".into(),
            ],
            loopback_addr(),
            Some(listen),
        );
        role.wait_ready();
        self.shards.push(role);
        self.shards.last().unwrap()
    }

    pub fn shard(&self, id: &str) -> &Role {
        self.shards.iter().find(|s| s.name == id).unwrap_or_else(|| panic!("no shard {id}"))
    }

    pub fn frontend_xds_addrs(&self) -> Vec<SocketAddr> {
        self.frontends.iter().filter_map(|f| f.serving).collect()
    }

    /// Which shard serves each proxy, as the frontends report it.
    pub fn owners(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &self.frontends {
            if f.exited().is_some() {
                continue;
            }
            let Some(r) = f.admin_get("/debug/connections") else { continue };
            if let Some(proxies) = r.json()["proxies"].as_array() {
                for p in proxies {
                    if let (Some(proxy), Some(shard)) = (p["proxy"].as_str(), p["shard"].as_str()) {
                        out.push((proxy.to_string(), shard.to_string()));
                    }
                }
            }
        }
        out.sort();
        out
    }

    pub fn owner_of(&self, proxy: &str) -> Option<String> {
        self.owners().into_iter().find(|(p, _)| p == proxy).map(|(_, s)| s)
    }
}
