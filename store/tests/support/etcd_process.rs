//! A real, single-member etcd for tests: loopback ports, a temporary data
//! directory, fast elections; started, killed and restarted on demand.
//!
//! The binary comes from `MESHPLANE_ETCD` (set by `scripts/peer-env.sh`).
//! Readiness is observed (`GET /health` answers `"health":"true"`), never
//! assumed after a sleep. The process is killed when dropped; if the test is
//! panicking, its log is printed first.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep, timeout};

/// How long etcd may take to become healthy (a loaded CI machine runs
/// several at once).
const HEALTHY_DEADLINE: Duration = Duration::from_secs(30);
/// How often readiness is polled while waiting for it.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub struct EtcdProcess {
    binary: PathBuf,
    dir: tempfile::TempDir,
    name: String,
    client_port: u16,
    peer_port: u16,
    /// `--initial-cluster`: every member's `name=peer URL`.
    initial_cluster: String,
    child: Option<Child>,
    launches: u32,
}

impl EtcdProcess {
    /// A running, healthy one-member etcd on fresh ports and an empty data directory.
    pub async fn start() -> EtcdProcess {
        let mut cluster = EtcdProcess::start_cluster(1).await;
        cluster.pop().expect("one member")
    }

    /// A running, healthy etcd cluster of `members` members, each on its own
    /// ports and data directory.
    pub async fn start_cluster(members: usize) -> Vec<EtcdProcess> {
        for attempt in 1..=5 {
            let mut cluster = EtcdProcess::unstarted_cluster(members);
            for member in &mut cluster {
                member.spawn();
            }
            let mut failure = None;
            for member in &mut cluster {
                if let Err(log) = member.wait_healthy().await {
                    failure = Some(log);
                    break;
                }
            }
            match failure {
                None => return cluster,
                // Another process took a port between picking and binding it.
                Some(log) if log.contains("address already in use") && attempt < 5 => continue,
                Some(log) => panic!("etcd did not become healthy:\n{log}"),
            }
        }
        unreachable!("the last attempt panics")
    }

    /// Ports and a data directory for a one-member etcd that is not running
    /// yet: [`launch`](Self::launch) starts it.
    pub fn unstarted() -> EtcdProcess {
        EtcdProcess::unstarted_cluster(1).pop().expect("one member")
    }

    fn unstarted_cluster(members: usize) -> Vec<EtcdProcess> {
        let binary = etcd_binary();
        let ports: Vec<(u16, u16)> = free_ports(members);
        let names: Vec<String> = (0..members).map(|i| format!("member-{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        names
            .into_iter()
            .zip(ports)
            .map(|(name, (client_port, peer_port))| EtcdProcess {
                binary: binary.clone(),
                dir: tempfile::Builder::new().prefix("meshplane-etcd-").tempdir().expect("a temporary directory"),
                name,
                client_port,
                peer_port,
                initial_cluster: initial_cluster.clone(),
                child: None,
                launches: 0,
            })
            .collect()
    }

    /// `HOST:PORT` of the client URL.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Start etcd on this process's ports and data directory (reusing
    /// whatever an earlier run left there) and wait until it is healthy.
    pub async fn launch(&mut self) {
        if let Err(log) = self.try_launch().await {
            panic!("etcd did not become healthy:\n{log}");
        }
    }

    /// Kill etcd (SIGKILL: no graceful shutdown) and wait for it to exit.
    ///
    /// etcd 3.5.0 to 3.5.2 can lose or re-apply recent writes when killed
    /// this way shortly after them (etcd-io/etcd#13766, fixed in 3.5.3), so
    /// tests that restart etcd and check revisions use [`stop`](Self::stop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop etcd with SIGTERM (it closes every client connection and
    /// persists what it applied) and wait for it to exit; SIGKILL if it has
    /// not exited within the deadline.
    pub async fn stop(&mut self) {
        let Some(child) = self.child.as_mut() else { return };
        let pid = child.id().to_string();
        let signalled = Command::new("kill").args(["-TERM", &pid]).status().map(|status| status.success());
        if signalled.unwrap_or(false) {
            let deadline = Instant::now() + HEALTHY_DEADLINE;
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return;
                }
                sleep(POLL_INTERVAL).await;
            }
        }
        self.kill();
    }

    /// Stop etcd and start it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything etcd logged, over every launch.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_else(|e| format!("(no etcd log: {e})"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    async fn try_launch(&mut self) -> Result<(), String> {
        self.spawn();
        self.wait_healthy().await
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        self.launches += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the etcd log file");
        let client_url = format!("http://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        command
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if supports_unsafe_no_fsync(&self.binary) {
            command.arg("--unsafe-no-fsync");
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Wait until this member reports itself healthy (it has a leader).
    pub async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + HEALTHY_DEADLINE;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                self.child = None;
                return Err(format!(
                    "etcd {} exited with {status} (launch {}):\n{}",
                    self.name,
                    self.launches,
                    self.log()
                ));
            }
            if healthy(self.client_port).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!("etcd {} not healthy within {HEALTHY_DEADLINE:?}:\n{}", self.name, self.log()));
            }
            sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- etcd log ({} in {}, client port {}) -----\n{}\n----- end of etcd log -----",
                self.name,
                self.dir.path().display(),
                self.client_port,
                self.log()
            );
        }
    }
}

fn etcd_binary() -> PathBuf {
    match std::env::var_os("MESHPLANE_ETCD") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "MESHPLANE_ETCD={} is not a file; re-run `source scripts/peer-env.sh`",
                path.display()
            );
            path
        }
        _ => panic!(
            "MESHPLANE_ETCD is not set, so there is no etcd to test against. Run scripts/test.sh, or \
             `source scripts/peer-env.sh` (installs etcd 3.5 and exports MESHPLANE_ETCD) before cargo test."
        ),
    }
}

/// Distinct free loopback ports: (client, peer) for each of `members`.
fn free_ports(members: usize) -> Vec<(u16, u16)> {
    let listeners: Vec<TcpListener> =
        (0..2 * members).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port")).collect();
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect();
    ports.chunks(2).map(|pair| (pair[0], pair[1])).collect()
}

fn supports_unsafe_no_fsync(binary: &Path) -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let help = Command::new(binary).arg("--help").output().expect("run etcd --help");
        let text = String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
        text.contains("--unsafe-no-fsync")
    })
}

/// `GET /health` on the client port says `"health":"true"` (etcd has a leader).
async fn healthy(client_port: u16) -> bool {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", client_port)).await.ok()?;
        let request = format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{client_port}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).contains("\"health\":\"true\""))
    };
    timeout(Duration::from_secs(2), check).await.ok().flatten().unwrap_or(false)
}
