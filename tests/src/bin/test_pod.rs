//! A tiny "container" for the harness's own tests: prints its environment,
//! serves `GET /healthz` (200) and `GET /env` on `$POD_IP:$PORT` (default
//! 8080), and reports SIGTERM on stdout before exiting 0.
//!
//! Knobs (env): `EXIT_AFTER_MS` exits with code 3 after that long (crash
//! loops); `IGNORE_SIGTERM=1` keeps running after SIGTERM (grace-period
//! tests); `KUBE_CHECK=1` reads its own Pod through `$KUBECONFIG` and prints
//! the outcome; `UNHEALTHY_FILE` answers /healthz 503 while that file exists.

#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut vars: Vec<(String, String)> = std::env::vars().collect();
    vars.sort();
    for (k, v) in &vars {
        println!("env {k}={v}");
    }
    println!(
        "args {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let ip = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = TcpListener::bind(format!("{ip}:{port}"))
        .await
        .with_context(|| format!("cannot listen on {ip}:{port}"))?;
    println!("listening on {ip}:{port}");

    if std::env::var("KUBE_CHECK").as_deref() == Ok("1") {
        println!("kube check: {}", kube_check().await);
    }

    let mut term = signal(SignalKind::terminate())?;
    let exit_after = std::env::var("EXIT_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    let crash = async {
        match exit_after {
            Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(crash);
    let body = vars
        .iter()
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>();
    loop {
        tokio::select! {
            _ = term.recv() => {
                println!("received SIGTERM");
                if std::env::var("IGNORE_SIGTERM").as_deref() != Ok("1") {
                    return Ok(());
                }
                println!("ignoring SIGTERM");
            }
            _ = &mut crash => {
                println!("exiting with code 3 as asked (EXIT_AFTER_MS)");
                std::process::exit(3);
            }
            conn = listener.accept() => {
                if let Ok((mut s, _)) = conn {
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        let n = s.read(&mut buf).await.unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]);
                        let unhealthy = std::env::var("UNHEALTHY_FILE").is_ok_and(|f| std::path::Path::new(&f).exists());
                        let (code, text) = if req.starts_with("GET /healthz") {
                            if unhealthy { ("503 Service Unavailable", "unhealthy\n".to_string()) } else { ("200 OK", "ok\n".to_string()) }
                        } else if req.starts_with("GET /env") {
                            ("200 OK", body)
                        } else {
                            ("404 Not Found", "not found\n".to_string())
                        };
                        let resp = format!("HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
                        let _ = s.write_all(resp.as_bytes()).await;
                    });
                }
            }
        }
    }
}

async fn kube_check() -> String {
    use k8s_openapi::api::core::v1::Pod;
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => return format!("no client: {e}"),
    };
    let ns = std::env::var("POD_NAMESPACE").unwrap_or_default();
    let name = std::env::var("POD_NAME").unwrap_or_default();
    match kube::Api::<Pod>::namespaced(client, &ns).get(&name).await {
        Ok(p) => format!("ok, read pod {}", p.metadata.name.unwrap_or_default()),
        Err(e) => format!("error: {e}"),
    }
}
