//! The Python gRPC peers in `tests/grpc/`, run with `$MESHPLANE_PYTHON_GRPC`
//! (the venv with grpcio + xds-protos from scripts/install-peers.sh).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value, json};

use super::STARTUP;
use super::process::{Proc, artifact_dir, required_env_path, spawn_child};
use super::wait::wait_for;

/// The Python interpreter of the gRPC venv (panics if unset).
pub fn grpc_python() -> PathBuf {
    required_env_path("MESHPLANE_PYTHON_GRPC", "the Python gRPC peers")
}

/// Path of a script in `tests/grpc/`.
pub fn grpc_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc").join(name)
}

/// `tests/grpc/echo_server.py`: serves `/echo.Echo/Call`, replying
/// `<name>:<request bytes>`. Killed on drop.
pub struct GrpcEchoServer {
    proc: Proc,
    addr: SocketAddr,
    name: String,
}

impl GrpcEchoServer {
    /// Starts the server on `addr` (port 0 allowed) and waits until it
    /// listens.
    pub fn start(addr: SocketAddr, name: &str) -> GrpcEchoServer {
        let mut cmd = Command::new(grpc_python());
        cmd.arg(grpc_script("echo_server.py")).arg("--addr").arg(addr.to_string()).arg("--name").arg(name);
        let proc = Proc::spawn("grpc-echo", cmd, artifact_dir("grpc-echo"));
        let addr = wait_for(STARTUP, &format!("gRPC echo server {name} to listen"), || {
            proc.assert_running();
            let log = std::fs::read_to_string(proc.log_path()).ok()?;
            log.lines().find_map(|line| {
                let v: Value = serde_json::from_str(line).ok()?;
                v["listening"].as_str()?.parse::<SocketAddr>().ok()
            })
        });
        GrpcEchoServer { proc, addr, name: name.to_string() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }
}

/// Runs `tests/grpc/xds_client.py` to completion: `calls` unary calls to
/// `target` (e.g. `xds:///echo.default.svc.cluster.local:50051`, or a plain
/// `127.0.0.1:50051`), with `GRPC_XDS_BOOTSTRAP=bootstrap` if given, plus
/// `extra_args` (`--timeout 5`, `--metadata k=v`, `--allow-failures`, ...).
/// `Ok(summary JSON)` if the client exited 0, else `Err` with its output.
/// Summary: `{"calls", "ok", "failed", "servers": {name: count}, "errors": [...]}`.
pub fn grpc_client(bootstrap: Option<&Path>, target: &str, calls: u32, extra_args: &[&str]) -> Result<Value, String> {
    let mut cmd = Command::new(grpc_python());
    cmd.arg(grpc_script("xds_client.py"))
        .arg("--target")
        .arg(target)
        .arg("--calls")
        .arg(calls.to_string())
        .args(extra_args);
    if let Some(b) = bootstrap {
        cmd.arg("--bootstrap").arg(b);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = spawn_child(&mut cmd)
        .and_then(|child| child.wait_with_output())
        .unwrap_or_else(|e| panic!("cannot run xds_client.py: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let summary = stdout.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok());
    match (out.status.success(), summary) {
        (true, Some(summary)) => Ok(summary),
        _ => {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            Err(format!(
                "xds_client.py {target} exited with {}; stdout: {stdout}\nstderr (tail):\n{}",
                out.status,
                tail.join("\n")
            ))
        }
    }
}

/// Writes a gRPC xDS bootstrap (like /work/shared/peers/grpc-bootstrap.example.json)
/// to `path`: one insecure xds_v3 server at `xds_addr`, the given node id
/// and metadata (must include NAMESPACE).
pub fn grpc_bootstrap(path: &Path, node_id: &str, xds_addr: SocketAddr, metadata: Map<String, Value>) {
    assert!(metadata.get("NAMESPACE").is_some_and(Value::is_string), "gRPC bootstrap metadata must contain NAMESPACE");
    let cluster = node_id.split('~').nth(2).unwrap_or("grpc-client").to_string();
    let bootstrap = json!({
        "xds_servers": [{
            "server_uri": xds_addr.to_string(),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {
            "id": node_id,
            "cluster": cluster,
            "metadata": metadata,
            "locality": {"region": "r1", "zone": "z1"},
        },
    });
    std::fs::write(path, serde_json::to_string_pretty(&bootstrap).unwrap())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
