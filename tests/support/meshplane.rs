//! The `meshplane up` process under test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::STARTUP;
use super::http::{Response, try_http_request};
use super::net::free_port;
use super::process::{Proc, artifact_dir};
use super::wait::wait_for;

/// How to start `meshplane up`.
#[derive(Debug, Clone)]
pub struct MeshplaneOptions {
    pub config_dir: PathBuf,
    /// `--xds-addr`; `None`: 127.0.0.1 with a free port.
    pub xds_addr: Option<SocketAddr>,
    /// `--admin-addr`; `None`: 127.0.0.1 with a free port.
    pub admin_addr: Option<SocketAddr>,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment (MESHPLANE_LOG defaults to `info,meshplane=debug,meshplane_shard=debug`).
    pub env: Vec<(String, String)>,
    /// How long to wait for `GET /ready` to return 200.
    pub ready_timeout: Duration,
}

impl MeshplaneOptions {
    pub fn new(config_dir: impl AsRef<Path>) -> Self {
        MeshplaneOptions {
            config_dir: config_dir.as_ref().to_path_buf(),
            xds_addr: None,
            admin_addr: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: STARTUP,
        }
    }
}

/// A running `meshplane up --config-dir DIR --xds-addr A --admin-addr B`,
/// killed on drop. Its stdout and stderr go to a log file whose path and
/// tail are printed if the test panics (or it fails to become ready).
pub struct Meshplane {
    proc: Proc,
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    config_dir: PathBuf,
}

impl Meshplane {
    /// Path of the binary under test (built by cargo for integration tests).
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_meshplane")
    }

    /// Starts on free 127.0.0.1 ports and waits until `/ready` returns 200.
    pub fn start(config_dir: impl AsRef<Path>) -> Meshplane {
        Meshplane::start_with(MeshplaneOptions::new(config_dir))
    }

    pub fn start_with(opts: MeshplaneOptions) -> Meshplane {
        let timeout = opts.ready_timeout;
        let mp = Meshplane::spawn_with(opts);
        mp.wait_ready(timeout);
        mp
    }

    /// Starts without waiting for readiness.
    pub fn spawn_with(opts: MeshplaneOptions) -> Meshplane {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let xds_addr = opts.xds_addr.unwrap_or_else(|| SocketAddr::new(lo, free_port(lo)));
        let admin_addr = opts.admin_addr.unwrap_or_else(|| {
            loop {
                let a = SocketAddr::new(lo, free_port(lo));
                if a != xds_addr {
                    break a;
                }
            }
        });
        let mut cmd = Command::new(Meshplane::binary());
        cmd.arg("up")
            .arg("--config-dir")
            .arg(&opts.config_dir)
            .arg("--xds-addr")
            .arg(xds_addr.to_string())
            .arg("--admin-addr")
            .arg(admin_addr.to_string())
            .args(&opts.extra_args);
        // meshplane reads its log filter from MESHPLANE_LOG.
        if std::env::var_os("MESHPLANE_LOG").is_none() {
            cmd.env("MESHPLANE_LOG", "info,meshplane=debug,meshplane_shard=debug");
        }
        cmd.env("RUST_BACKTRACE", "1");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("meshplane", cmd, artifact_dir("meshplane"));
        Meshplane { proc, xds_addr, admin_addr, config_dir: opts.config_dir }
    }

    /// Waits until `GET /ready` on the admin address returns 200; panics with
    /// the log tail if the deadline passes or the process exits.
    pub fn wait_ready(&self, deadline: Duration) {
        wait_for(deadline, "meshplane admin /ready to return 200", || {
            self.proc.assert_running();
            match self.try_admin_get("/ready") {
                Ok(r) if r.status == 200 => Ok(()),
                Ok(r) => Err(format!("status {}: {}", r.status, r.text())),
                Err(e) => Err(e),
            }
        });
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        self.proc.exited()
    }

    /// Send a signal (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.log_tail(lines)
    }

    pub fn assert_running(&self) {
        self.proc.assert_running();
    }

    /// GET an admin path; `Err` on transport errors.
    pub fn try_admin_get(&self, path: &str) -> Result<Response, String> {
        try_http_request(self.admin_addr, "GET", &self.admin_addr.to_string(), path, &[])
    }

    /// The value of an unlabelled metric (`name` exactly, or `name{labels}`
    /// when given with its labels) on `/metrics`; panics if it is missing.
    pub fn metric(&self, name: &str) -> f64 {
        let metrics = self.admin_get("/metrics").text();
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("{name} in /metrics:\n{metrics}"))
    }

    /// GET an admin path; panics on transport errors (any status is returned).
    pub fn admin_get(&self, path: &str) -> Response {
        self.assert_running();
        self.try_admin_get(path).unwrap_or_else(|e| panic!("meshplane admin GET {path}: {e}"))
    }

    /// Kills the process now (e.g. to test a restart: start a new one with
    /// the same `xds_addr`/`admin_addr` in [`MeshplaneOptions`]).
    pub fn kill(&self) {
        self.proc.kill();
    }
}
