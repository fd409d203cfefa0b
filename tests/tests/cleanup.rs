//! Nothing the harness starts outlives the test process, whether it ends by
//! a panic (exit handlers run) or by abort() (only the kernel's parent-death
//! signal is left). Runs the `zmq-proxy-control-plane` binary, which uses the
//! same library, and checks its PIDs afterwards.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use harness::process::pid_alive;
use harness::wait::until;

async fn plane_dies_with_its_parent(flag: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!(
        "harness-cleanup-{}-{}",
        std::process::id(),
        flag.trim_start_matches('-')
    ));
    std::fs::create_dir_all(&dir)?;
    let pids_file = dir.join("pids");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_zmq-proxy-control-plane"))
        .args(["--pids-file", pids_file.to_str().context("utf-8")?, flag])
        .output()
        .await?;
    ensure!(
        !out.status.success(),
        "{flag} should end the process abnormally"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pids_file)
        .with_context(|| {
            format!(
                "no PIDs written; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    ensure!(
        pids.len() == 4,
        "expected etcd, API server, controller manager and scheduler PIDs, got {pids:?}"
    );
    until(
        "every control plane process to be gone",
        Duration::from_secs(20),
        || async {
            let alive: Vec<i32> = pids.iter().copied().filter(|&p| pid_alive(p)).collect();
            Ok(alive.is_empty().then_some(()))
        },
    )
    .await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_panicking_process_leaves_no_control_plane_behind() -> Result<()> {
    plane_dies_with_its_parent("--panic-when-ready").await
}

#[tokio::test]
async fn an_aborted_process_leaves_no_control_plane_behind() -> Result<()> {
    plane_dies_with_its_parent("--abort-when-ready").await
}
