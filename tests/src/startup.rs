//! Waiting for a started component to work: the one loop behind every start
//! in the harness (etcd, the API server, the controllers, containerd, the
//! kubelet, kube-proxy, CoreDNS). A component that exits meanwhile fails the
//! wait at once with its log; one that never works fails at the deadline
//! with the last answer seen and its log tail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::process::{ExitInfo, Process};

/// How long a component may take to work after it was started (2 shared
/// cores: the API server alone can take half a minute under load).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a component did not come up.
#[derive(Debug, Error)]
pub enum StartupError {
    /// A watched process exited first.
    #[error(
        "{name} exited ({info}) before {what}; log tail:\n{}",
        log_tail_of(log)
    )]
    Exited {
        /// The process that exited.
        name: String,
        /// How it ended.
        info: ExitInfo,
        /// What was awaited.
        what: String,
        /// Its whole log (callers look for known causes in it).
        log: String,
    },
    /// The deadline passed.
    #[error("no {what} within {timeout:?} (last: {last}); {} log tail:\n{}", log.display(), log_tail(log))]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        timeout: Duration,
        /// The last answer `check` gave.
        last: String,
        /// The log shown.
        log: PathBuf,
    },
}

/// The log file the harness gives a process: `<dir>/<name>.log`.
pub fn log_path(dir: &Path, process: &Process) -> PathBuf {
    dir.join(format!("{}.log", process.name()))
}

/// Polls `check` every 100 ms until it returns `Ok(())`, failing when one
/// of `watched` exits (logs in `dir`, see [`log_path`]) or after
/// [`STARTUP_TIMEOUT`], then showing the tail of `shown_log`. `check`
/// returns `Err(answer)` while the component does not work yet.
pub async fn until_working(
    watched: &[&Process],
    dir: &Path,
    shown_log: &Path,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) -> Result<(), StartupError> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        for p in watched {
            if let Some(info) = p.exited() {
                return Err(StartupError::Exited {
                    name: p.name().to_string(),
                    info,
                    what: what.to_string(),
                    log: std::fs::read_to_string(log_path(dir, p)).unwrap_or_default(),
                });
            }
        }
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(answer) => answer,
        };
        if Instant::now() > deadline {
            return Err(StartupError::Timeout {
                what: what.to_string(),
                timeout: STARTUP_TIMEOUT,
                last,
                log: shown_log.to_path_buf(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`until_working`] for one process whose own log is shown on timeout.
pub async fn process_working(
    process: &Process,
    dir: &Path,
    what: &str,
    check: impl AsyncFnMut() -> Result<(), String>,
) -> Result<(), StartupError> {
    until_working(&[process], dir, &log_path(dir, process), what, check).await
}

/// `Ok(())` when `ok`, else `Err(answer)`: turns a yes/no probe into a
/// check for [`until_working`].
pub fn answer(ok: bool, answer: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(answer.to_string())
    }
}

/// The last 30 lines of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    log_tail_of(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The last 30 lines of a log's text.
fn log_tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_is_the_last_thirty_lines() {
        let text: String = (1..=40).map(|n| format!("line {n}\n")).collect();
        let tail = log_tail_of(&text);
        assert!(
            tail.starts_with("line 11\n") && tail.ends_with("line 40"),
            "{tail}"
        );
        assert_eq!(log_tail_of("one"), "one");
    }

    #[test]
    fn an_answer_is_kept_only_when_not_ready() {
        assert_eq!(answer(true, "x"), Ok(()));
        assert_eq!(answer(false, "HTTP 503"), Err("HTTP 503".to_string()));
    }
}
