//! A minimal HTTP/1.0 GET for the suites: `/metrics`, `/healthz` and
//! `/readyz` of the processes under test. The workspace has no HTTP client
//! dependency and the suites need nothing more than a status and a body.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connect and read limits: a hung server fails the call instead of the test
/// waiting for nextest's timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// GETs `path` from `addr` (`ip:port`) and returns the status code and body.
pub async fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connect to {addr}: timeout"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(READ_TIMEOUT, stream.read_to_end(&mut buf))
        .await
        .with_context(|| format!("GET {addr}{path}: read timeout"))??;
    parse_response(&String::from_utf8_lossy(&buf))
        .with_context(|| format!("GET {addr}{path}: not an HTTP response"))
}

/// Status code and body of a whole HTTP/1.x response.
fn parse_response(text: &str) -> Option<(u16, String)> {
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_body_are_split_at_the_blank_line() {
        let r = "HTTP/1.0 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready";
        assert_eq!(parse_response(r), Some((503, "not ready".to_string())));
        assert_eq!(parse_response("garbage"), None);
        assert_eq!(
            parse_response("HTTP/1.1 200 OK\r\n"),
            Some((200, String::new()))
        );
    }
}
