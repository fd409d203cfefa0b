//! Container probes: HTTP GET and TCP against the pod IP, as the kubelet runs
//! them; exec and gRPC probes are not supported (reported as a warning and
//! treated as passing).

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Result of one probe run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Success,
    /// Failed, with the reason.
    Failure(String),
    /// The probe type is not supported; counted as passing.
    Unsupported(String),
}

impl Outcome {
    /// Success or unsupported.
    pub fn passed(&self) -> bool {
        !matches!(self, Outcome::Failure(_))
    }
}

/// Timing and thresholds of a probe, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// initialDelaySeconds (0).
    pub initial_delay: Duration,
    /// periodSeconds (10).
    pub period: Duration,
    /// timeoutSeconds (1).
    pub timeout: Duration,
    /// successThreshold (1).
    pub success_threshold: u32,
    /// failureThreshold (3).
    pub failure_threshold: u32,
}

/// Timing of `probe`.
pub fn timing(probe: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, d: u64| Duration::from_secs(v.map(|v| v.max(0) as u64).unwrap_or(d));
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: probe.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: probe.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

/// Resolves a probe port (number or container port name).
pub fn port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The status code of an HTTP response's first line.
pub fn status_code(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response.get(..response.len().min(64))?).ok()?;
    let mut parts = text.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Runs `probe` once against `pod_ip`.
pub async fn run(probe: &Probe, container: &Container, pod_ip: Ipv4Addr) -> Outcome {
    let t = timing(probe);
    if let Some(http) = &probe.http_get {
        let Some(port) = port(&http.port, container) else {
            return Outcome::Failure(format!("unknown port {:?}", http.port));
        };
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
        {
            return Outcome::Unsupported("HTTPS probes".into());
        }
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut headers = String::new();
        for h in http.http_headers.iter().flatten() {
            headers.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.20\r\nAccept: */*\r\nConnection: close\r\n{headers}\r\n"
        );
        let attempt = async {
            let mut stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut buf = vec![0u8; 64];
            let mut n = 0;
            while n < buf.len() {
                let read = stream.read(&mut buf[n..]).await?;
                if read == 0 {
                    break;
                }
                n += read;
                if buf[..n].contains(&b'\n') {
                    break;
                }
            }
            buf.truncate(n);
            Ok::<_, std::io::Error>(buf)
        };
        return match tokio::time::timeout(t.timeout, attempt).await {
            Err(_) => Outcome::Failure(format!(
                "GET {host}:{port}{path}: timeout after {:?}",
                t.timeout
            )),
            Ok(Err(e)) => Outcome::Failure(format!("GET {host}:{port}{path}: {e}")),
            Ok(Ok(resp)) => match status_code(&resp) {
                Some(code) if (200..400).contains(&code) => Outcome::Success,
                Some(code) => Outcome::Failure(format!("GET {host}:{port}{path}: HTTP {code}")),
                None => Outcome::Failure(format!("GET {host}:{port}{path}: not an HTTP response")),
            },
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port(&tcp.port, container) else {
            return Outcome::Failure(format!("unknown port {:?}", tcp.port));
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        return match tokio::time::timeout(t.timeout, TcpStream::connect((host.as_str(), port)))
            .await
        {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("TCP {host}:{port}: {e}")),
            Err(_) => Outcome::Failure(format!("TCP {host}:{port}: timeout")),
        };
    }
    if probe.exec.is_some() {
        return Outcome::Unsupported("exec probes".into());
    }
    if probe.grpc.is_some() {
        return Outcome::Unsupported("gRPC probes".into());
    }
    Outcome::Unsupported("probe without a handler".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ContainerPort;

    #[test]
    fn status_line_parsing() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn defaults_match_kubernetes() {
        let t = timing(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
    }

    #[test]
    fn named_ports_resolve_through_the_container() {
        let c = Container {
            ports: Some(vec![ContainerPort {
                name: Some("metrics".into()),
                container_port: 9090,
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(port(&IntOrString::String("metrics".into()), &c), Some(9090));
        assert_eq!(port(&IntOrString::String("nope".into()), &c), None);
        assert_eq!(port(&IntOrString::Int(80), &c), Some(80));
    }

    #[tokio::test]
    async fn http_probe_against_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let p = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for code in ["200 OK", "500 Oops"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("HTTP/1.1 {code}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let probe = Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::Int(p as i32),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = Container::default();
        assert_eq!(run(&probe, &c, Ipv4Addr::LOCALHOST).await, Outcome::Success);
        assert!(
            matches!(run(&probe, &c, Ipv4Addr::LOCALHOST).await, Outcome::Failure(m) if m.contains("500"))
        );
    }
}
