//! `zmq-proxy-operator check URL`: one HTTP GET that succeeds on a 2xx
//! answer, retried. The chart's `helm test` pod runs it, so the test needs
//! no image but the operator's own: an air-gapped cluster (or this
//! project's test node, which pulls nothing) runs it as it runs the
//! operator. Plain `http://` only: it probes the operator's own metrics
//! listener through its Service.
//!
//! The URL parsing and the reading of the status line are pure; [`get`]
//! and [`check`] are the I/O around them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL is not `http://host[:port]/path`.
    #[error("unsupported URL {0:?}: want http://host[:port][/path]")]
    Url(String),
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The answer does not start with an HTTP status line.
    #[error("not an HTTP answer: {0:?}")]
    Malformed(String),
    /// The server answered with a status other than 2xx.
    #[error("HTTP status {0}")]
    Status(u16),
}

/// Where a GET goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 unless the URL names one).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Target {
    /// Parses `http://host[:port][/path]`.
    pub fn parse(url: &str) -> Result<Target, CheckError> {
        let bad = || CheckError::Url(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, p)) => (host, p.parse().map_err(|_| bad())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Target {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The request bytes: HTTP/1.0, so the server closes after answering.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: zmq-proxy-operator-check\r\n\r\n",
            self.path, self.host
        )
    }
}

/// The status code of an answer's first line (`HTTP/1.x NNN ...`).
pub fn status_of(answer: &[u8]) -> Result<u16, CheckError> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(code))) if version.starts_with("HTTP/") => Ok(code),
        _ => Err(CheckError::Malformed(line.chars().take(80).collect())),
    }
}

/// One GET of `target` within `timeout`: the answer's status.
pub async fn get(target: &Target, timeout: Duration) -> Result<u16, CheckError> {
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.write_all(target.request().as_bytes()).await?;
        // The status line is all we read; a probe answer is small, but stop
        // at 4 KiB whatever the server sends.
        let mut answer = Vec::new();
        stream.take(4096).read_to_end(&mut answer).await?;
        status_of(&answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| CheckError::Timeout(timeout))?
}

/// GETs `url` until it answers 2xx, at most `attempts` times, `delay`
/// apart; the last failure if none did. Each failure is printed.
pub async fn check(
    url: &str,
    attempts: u32,
    delay: Duration,
    timeout: Duration,
) -> Result<u16, CheckError> {
    let target = Target::parse(url)?;
    let mut last = CheckError::Timeout(timeout);
    for attempt in 1..=attempts.max(1) {
        match get(&target, timeout).await {
            Ok(code) if (200..300).contains(&code) => return Ok(code),
            Ok(code) => last = CheckError::Status(code),
            Err(e) => last = e,
        }
        eprintln!("{url}: attempt {attempt}: {last}");
        if attempt < attempts {
            tokio::time::sleep(delay).await;
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_and_without_port_and_path() {
        let t = Target::parse("http://zp-metrics.ns.svc:8080/healthz").unwrap();
        assert_eq!(
            t,
            Target {
                host: "zp-metrics.ns.svc".into(),
                port: 8080,
                path: "/healthz".into()
            }
        );
        let t = Target::parse("http://10.0.0.1").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        let t = Target::parse("http://[fd00::1]:9090/readyz?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("fd00::1", 9090, "/readyz?x=1")
        );
        assert_eq!(
            t.request(),
            "GET /readyz?x=1 HTTP/1.0\r\nHost: fd00::1\r\nUser-Agent: zmq-proxy-operator-check\r\n\r\n"
        );
    }

    #[test]
    fn what_is_not_a_plain_http_url_is_refused() {
        for url in [
            "https://a/healthz",
            "a:8080/healthz",
            "http://:8080/",
            "http://a:port/",
            "http://[fd00::1/",
            "http://[fd00::1]x/",
        ] {
            assert!(
                matches!(Target::parse(url), Err(CheckError::Url(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\n\r\nok").unwrap(), 200);
        assert_eq!(
            status_of(b"HTTP/1.0 503 Service Unavailable\r\n").unwrap(),
            503
        );
        for answer in [&b""[..], b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 abc\r\n"] {
            assert!(
                matches!(status_of(answer), Err(CheckError::Malformed(_))),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn check_retries_until_2xx_and_reports_the_last_failure() {
        use tokio::net::TcpListener;
        // A server answering 503 twice, then 200.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in [
                "503 Service Unavailable",
                "503 Service Unavailable",
                "200 OK",
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\n\r\nok");
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let url = format!("http://127.0.0.1:{port}/healthz");
        let ok = check(&url, 5, Duration::from_millis(10), Duration::from_secs(5)).await;
        assert_eq!(ok.unwrap(), 200);
        // Nobody listens any more: refused, every attempt, reported.
        let failed = check(&url, 2, Duration::from_millis(10), Duration::from_secs(5)).await;
        assert!(matches!(failed, Err(CheckError::Io(_))), "{failed:?}");
    }
}
