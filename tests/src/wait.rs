//! Waiting for a condition with a deadline, for tests (instead of sleeps).

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `check` every 100 ms until it returns `Ok(Some(value))`, failing
/// after `timeout` with `what` and the last error seen.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
