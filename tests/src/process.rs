//! Child processes the harness starts (etcd, API server, controller manager,
//! pod containers), and how they are guaranteed to stop.
//!
//! Static values are never dropped, so a control plane kept in a `static`
//! cannot stop its processes from `Drop`. Instead every child is forked from
//! one dedicated, never-exiting "spawner" thread and asks the kernel
//! (`PR_SET_PDEATHSIG`) to be killed when its parent goes away. The death
//! signal fires when the *thread* that forked the child exits, which is why a
//! short-lived test thread or a tokio worker must not do the fork. When the
//! test process exits — normally, on a failed assertion, or on a panic — the
//! kernel kills every child. Processes the harness stops earlier are stopped
//! by PID ([`Process::terminate`]); a dropped [`Process`] is SIGKILLed.
//!
//! As a first line of defence, an `atexit` handler SIGKILLs every live child
//! and removes registered scratch directories (etcd's data lives in tmpfs)
//! when the test process exits normally, which includes a failed test: the
//! test harness catches the panic and returns from `main`.
//!
//! Each child runs in its own process group so that signals reach a whole
//! container (a shell and what it started), like a container's PID namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// What to run: program, arguments, environment, working directory, log file.
#[derive(Clone, Debug)]
pub struct ProcessSpec {
    /// Human-readable name used in logs and errors.
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables set for the child (after clearing, if `clear_env`).
    pub env: Vec<(String, String)>,
    /// Start from an empty environment (plus `PATH`), like a container.
    pub clear_env: bool,
    /// Working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// File receiving stdout and stderr (appended).
    pub log: PathBuf,
    /// Signal the kernel sends when the test process dies.
    pub death_signal: i32,
}

impl ProcessSpec {
    /// A spec with an inherited environment that is SIGKILLed with the test.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Self {
        ProcessSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            clear_env: false,
            cwd: None,
            log: log.into(),
            death_signal: libc::SIGKILL,
        }
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    /// Exit code, when it exited on its own.
    pub code: Option<i32>,
    /// Terminating signal, when a signal killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    fn from_status(status: std::process::ExitStatus) -> Self {
        ExitInfo {
            code: status.code(),
            signal: status.signal(),
        }
    }

    /// Exit code as a container runtime reports it (128 + signal when killed).
    pub fn container_exit_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(code), _) => code,
            (None, Some(sig)) => 128 + sig,
            (None, None) => -1,
        }
    }

    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "signal {sig}"),
            (None, None) => write!(f, "unknown exit"),
        }
    }
}

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The log file could not be opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The log path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// fork/exec failed.
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        /// The process name.
        name: String,
        /// The program path.
        program: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The spawner thread is gone (only if it panicked).
    #[error("the harness spawner thread is not running")]
    SpawnerGone,
}

/// A running (or exited) child process, identified by PID.
#[derive(Debug)]
pub struct Process {
    name: String,
    pid: i32,
    exit: watch::Receiver<Option<ExitInfo>>,
}

/// PIDs of children not yet reaped, and directories to delete at exit.
struct ExitCleanup {
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

static CLEANUP: Mutex<ExitCleanup> = Mutex::new(ExitCleanup {
    pids: Vec::new(),
    dirs: Vec::new(),
});

extern "C" fn cleanup_at_exit() {
    // try_lock: never deadlock in exit if a thread died holding the lock.
    if let Ok(c) = CLEANUP.try_lock() {
        for &pid in &c.pids {
            // SAFETY: PIDs of our own unreaped children (a reaped one is
            // removed from the list before its PID can be reused).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
            }
        }
        // Reap them before exiting: once orphaned, only init could, and the
        // init of a container (CI) often does not, leaving zombies behind.
        let deadline = Instant::now() + Duration::from_secs(2);
        for &pid in &c.pids {
            while Instant::now() < deadline {
                // SAFETY: non-blocking wait on our own child; ECHILD means a
                // waiter thread reaped it already.
                let r = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                if r != 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if std::env::var_os("ZMQ_PROXY_TEST_KEEP").is_none() {
            for dir in &c.dirs {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

fn register_atexit() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(cleanup_at_exit);
        }
    });
}

/// Deletes `dir` when the test process exits (unless `ZMQ_PROXY_TEST_KEEP`
/// is set, for post-mortems).
pub fn remove_at_exit(dir: PathBuf) {
    register_atexit();
    if let Ok(mut c) = CLEANUP.lock() {
        c.dirs.push(dir);
    }
}

type SpawnReply = mpsc::Sender<Result<Child, ProcessError>>;

fn spawner() -> Result<mpsc::Sender<(ProcessSpec, SpawnReply)>, ProcessError> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<(ProcessSpec, SpawnReply)>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(ProcessSpec, SpawnReply)>();
        // The thread lives as long as the process: the children's death
        // signal is tied to it.
        let spawned = std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    let _ = reply.send(fork(&spec));
                }
                // The channel never closes (the sender is static), but if it
                // did, keep the thread alive so children keep running.
                loop {
                    std::thread::park();
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the harness spawner thread: {e}");
        }
        Mutex::new(tx)
    });
    Ok(sender
        .lock()
        .map_err(|_| ProcessError::SpawnerGone)?
        .clone())
}

fn fork(spec: &ProcessSpec) -> Result<Child, ProcessError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(|source| ProcessError::Log {
            path: spec.log.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ProcessError::Log {
        path: spec.log.clone(),
        source,
    })?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2));
    if spec.clear_env {
        cmd.env_clear();
        cmd.env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        );
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let parent = std::process::id() as libc::pid_t;
    let death_signal = spec.death_signal;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::raise(death_signal);
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| ProcessError::Spawn {
        name: spec.name.clone(),
        program: spec.program.clone(),
        source,
    })
}

impl Process {
    /// Starts `spec` (forked by the spawner thread; see the module docs).
    pub fn spawn(spec: &ProcessSpec) -> Result<Process, ProcessError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()?
            .send((spec.clone(), reply_tx))
            .map_err(|_| ProcessError::SpawnerGone)?;
        register_atexit();
        let mut child = reply_rx.recv().map_err(|_| ProcessError::SpawnerGone)??;
        let pid = child.id() as i32;
        if let Ok(mut c) = CLEANUP.lock() {
            c.pids.push(pid);
        }
        let (tx, rx) = watch::channel(None);
        // A plain thread (not spawn_blocking) reaps the child: a tokio
        // runtime would wait for it on shutdown.
        let name = spec.name.clone();
        let waiter = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let info = match child.wait() {
                    Ok(status) => ExitInfo::from_status(status),
                    Err(_) => ExitInfo {
                        code: None,
                        signal: None,
                    },
                };
                if let Ok(mut c) = CLEANUP.lock() {
                    c.pids.retain(|&p| p != pid);
                }
                let _ = tx.send(Some(info));
            });
        if let Err(e) = waiter {
            tracing::error!("cannot start a waiter thread for {name}: {e}");
        }
        tracing::debug!(pid, name = %spec.name, "started");
        Ok(Process {
            name: spec.name.clone(),
            pid,
            exit: rx,
        })
    }

    /// The process ID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The name given in the spec.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How it ended, if it has.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Sends `signal` to the process group (a no-op once it has exited,
    /// so a reused PID is never hit).
    pub fn signal(&self, signal: i32) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: plain syscalls on a PID we started and have not reaped.
        unsafe {
            if libc::kill(-self.pid, signal) != 0 {
                libc::kill(self.pid, signal);
            }
        }
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        loop {
            if let Some(info) = *rx.borrow_and_update() {
                return info;
            }
            if rx.changed().await.is_err() {
                // The waiter thread is gone without a result.
                return self.exited().unwrap_or(ExitInfo {
                    code: None,
                    signal: None,
                });
            }
        }
    }

    /// Waits up to `timeout`; `None` when still running.
    pub async fn wait_timeout(&self, timeout: Duration) -> Option<ExitInfo> {
        tokio::time::timeout(timeout, self.wait()).await.ok()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns how it ended.
    pub async fn terminate(&self, grace: Duration) -> ExitInfo {
        self.signal(libc::SIGTERM);
        if let Some(info) = self.wait_timeout(grace).await {
            return info;
        }
        tracing::warn!(pid = self.pid, name = %self.name, "did not exit within {grace:?} of SIGTERM; SIGKILL");
        self.signal(libc::SIGKILL);
        self.wait().await
    }

    /// Blocking variant of [`Process::terminate`], for `Drop` and non-async code.
    pub fn terminate_blocking(&self, grace: Duration) -> Option<ExitInfo> {
        self.signal(libc::SIGTERM);
        if let Some(info) = self.wait_blocking(grace) {
            return Some(info);
        }
        self.signal(libc::SIGKILL);
        self.wait_blocking(Duration::from_secs(5))
    }

    /// Blocks up to `timeout` for the exit.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<ExitInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(info) = self.exited() {
                return Some(info);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// True while a process with this PID exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn terminate_stops_a_process_that_ignores_nothing() {
        let dir = std::env::temp_dir().join(format!("harness-proc-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spec = ProcessSpec::new("sleep", "/bin/sleep", dir.join("sleep.log")).args(["60"]);
        let p = Process::spawn(&spec).unwrap();
        assert!(p.exited().is_none());
        let info = p.terminate(Duration::from_secs(5)).await;
        assert_eq!(info.signal, Some(libc::SIGTERM));
        assert_eq!(info.container_exit_code(), 143);
    }

    #[tokio::test]
    async fn output_goes_to_the_log_file() {
        let dir = std::env::temp_dir().join(format!("harness-proc-test2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("echo.log");
        let mut spec =
            ProcessSpec::new("sh", "/bin/sh", &log).args(["-c", "echo out; echo err >&2; exit 3"]);
        spec.clear_env = true;
        let p = Process::spawn(&spec).unwrap();
        let info = p.wait().await;
        assert_eq!(info.code, Some(3));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("out") && text.contains("err"), "{text}");
    }
}
