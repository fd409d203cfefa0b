//! The `zmq-proxy` binary: parse settings, set up logging, run the proxy.

#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::process::ExitCode;

use anyhow::Context as _;
use tracing_subscriber::EnvFilter;
use zmq_proxy::config::{ConfigError, LogFormat, Settings};

fn main() -> ExitCode {
    // The advertised host defaults to the machine's hostname (oslo uses
    // socket.gethostname()); $HOSTNAME is often not exported.
    let env = |key: &str| {
        std::env::var(key)
            .ok()
            .or_else(|| (key == "HOSTNAME").then(system_hostname).flatten())
    };
    let settings = match Settings::from_args(std::env::args(), env, |p| std::fs::read_to_string(p))
    {
        Ok(s) => s,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("zmq-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zmq-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings) -> anyhow::Result<()> {
    init_logging(&settings)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("zmq-proxy-async")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(zmq_proxy::app::run(settings))
        .context("proxy failed")
}

fn system_hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let default = if settings.debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // stdout carries only the listening line; logs go to stderr or the log file.
    let writer = match &settings.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open log file {}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    match settings.log_format {
        LogFormat::Text => builder
            .with_writer(writer)
            .with_ansi(settings.log_file.is_none())
            .init(),
        LogFormat::Json => builder.json().with_writer(writer).init(),
    }
    Ok(())
}
