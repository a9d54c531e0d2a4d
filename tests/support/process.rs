//! The background runtime, per-test artifact directories, and child
//! processes that are killed on drop and show their log when a test fails.

use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The shared multi-threaded Tokio runtime that runs echo backends and HTTP
/// clients for all tests of a binary.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("harness-rt")
            .enable_all()
            .build()
            .expect("build harness runtime")
    })
}

/// Runs `fut` on [`rt`] and blocks the calling thread until it finishes.
/// Unlike `Runtime::block_on` this also works from inside another runtime.
/// A panic in `fut` is re-raised here.
pub fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    rt().spawn(async move {
        let _ = tx.send(tokio::spawn(fut).await);
    });
    match rx.recv().expect("harness runtime dropped a task") {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("harness task failed: {e}"),
    }
}

/// Held while a child process is being spawned (fork until exec) and while
/// [`super::net::free_port`] has its probe socket open. A forked child holds
/// copies of all the parent's descriptors until it execs (CLOEXEC closes them
/// only then); without this lock a probe socket closed meanwhile would stay
/// bound in the child for a moment and the port would look taken.
pub fn spawn_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `cmd.spawn()` under [`spawn_lock`].
pub fn spawn_child(cmd: &mut Command) -> std::io::Result<Child> {
    let _guard = spawn_lock();
    cmd.spawn()
}

/// Where processes started by the harness keep their files:
/// `$CARGO_TARGET_TMPDIR/meshplane-tests/<test name>/<kind>-<pid>-<seq>/`.
pub fn artifacts_root() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("meshplane-tests")
}

/// A fresh (emptied) artifact directory for one process of the current test.
pub fn artifact_dir(kind: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    let test: String = thread
        .name()
        .unwrap_or("unnamed")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    // The pid keeps concurrent runs apart: CARGO_TARGET_TMPDIR lives in the
    // build directory, which checkouts on one machine share.
    let dir = artifacts_root().join(test).join(format!("{kind}-{}-{seq}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Last `lines` lines of a text file (lossy), for failure messages.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(64 * 1024);
    let _ = f.seek(SeekFrom::Start(start));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process whose stdout and stderr go to `<dir>/<kind>.log`.
/// Dropping it kills the process (SIGKILL) and reaps it; if the current
/// thread is panicking, the log path and its tail are printed to stderr and
/// the directory is kept, otherwise the directory is deleted.
pub struct Proc {
    kind: String,
    child: Mutex<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(kind: &str, mut cmd: Command, dir: PathBuf) -> Proc {
        let log = dir.join(format!("{kind}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = spawn_child(&mut cmd).unwrap_or_else(|e| panic!("cannot start {kind} ({cmd:?}): {e}"));
        Proc { kind: kind.to_string(), child: Mutex::new(child), dir, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} (pid {}) exited unexpectedly with {status}; log {}:\n{}",
                self.kind,
                self.pid(),
                self.log.display(),
                self.log_tail(60)
            );
        }
    }

    /// Kills the process (SIGKILL) and waits for it. Idempotent.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} log: {} (last 60 lines) ----\n{}\n---- end of {} log ----",
                self.kind,
                self.log.display(),
                self.log_tail(60),
                self.kind
            );
        } else if std::env::var_os("MESHPLANE_KEEP_ARTIFACTS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The value of a required environment variable naming a peer program, or a
/// panic that says how to get it. Tests never skip silently.
pub fn required_env_path(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => {
            let p = PathBuf::from(v);
            assert!(
                p.exists(),
                "{var}={} does not exist: run `bash scripts/test.sh` (or \
                 `source scripts/peer-env.sh`) to install {what}",
                p.display()
            );
            p
        }
        _ => panic!(
            "{var} is not set, so this test cannot run {what}. Run the tests with \
             `bash scripts/test.sh`, or `source scripts/peer-env.sh` before `cargo test`."
        ),
    }
}
