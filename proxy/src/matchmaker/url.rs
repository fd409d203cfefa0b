//! oslo transport URLs (`zmq://`, `zmq+redis://host:6379`, ...), parsed once.
//!
//! The scheme names the matchmaker; the rest (hosts, credentials) is the
//! backend's business. The proxy's configuration reads the scheme to choose a
//! backend, the composition root (`app`) reads it to decide whether a Redis
//! secondary is wanted, and the Redis backend reads the hosts: all three go
//! through [`TransportUrl::parse`], so they cannot disagree on a URL.

use std::fmt;

/// The scheme of an oslo transport URL. Schemes are case-insensitive (RFC
/// 3986, and oslo lower-cases them too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlScheme {
    /// `zmq://`: no matchmaker named.
    Zmq,
    /// `zmq+redis://`: oslo's Redis matchmaker.
    ZmqRedis,
    /// `zmq+sentinel://`: Redis behind Sentinel, which the Redis backend
    /// refuses (named here so that the refusal can say so).
    ZmqSentinel,
    /// `zmq+kubernetes://`: EndpointSlices.
    ZmqKubernetes,
    /// `zmq+dummy://` (oslo's name) or `zmq+static://`: the in-process registry.
    ZmqStatic,
    /// A bare `redis://`, which the Redis backend accepts but a transport URL
    /// is not (oslo's transport URLs start with `zmq`).
    Redis,
}

impl UrlScheme {
    /// Whether the URL names a Redis store (`zmq+redis://`, `redis://`, or
    /// `zmq+sentinel://`, which the Redis backend then refuses clearly).
    pub fn names_redis(self) -> bool {
        matches!(
            self,
            UrlScheme::ZmqRedis | UrlScheme::Redis | UrlScheme::ZmqSentinel
        )
    }

    /// Whether this is an oslo transport URL scheme (`zmq` or `zmq+...`).
    pub fn is_transport(self) -> bool {
        self != UrlScheme::Redis
    }
}

/// Why a string is not a usable transport URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No `scheme://`, or a scheme that is neither `zmq[+...]` nor `redis`.
    #[error("expected zmq://... or zmq+<matchmaker>://...")]
    NotTransportUrl,
    /// `zmq+<name>://` with a matchmaker name nobody knows.
    #[error("unknown matchmaker {0:?}")]
    UnknownMatchmaker(String),
}

/// An oslo transport URL split into its scheme and what follows `://`.
#[derive(Clone, PartialEq, Eq)]
pub struct TransportUrl {
    scheme: UrlScheme,
    /// Everything after `scheme://`: `[userinfo@]host[:port][,...][/path][?query]`.
    rest: String,
}

impl TransportUrl {
    /// Splits `url` at `://` and recognizes the scheme.
    pub fn parse(url: &str) -> Result<TransportUrl, UrlError> {
        let (scheme, rest) = url.split_once("://").ok_or(UrlError::NotTransportUrl)?;
        let scheme = scheme.to_ascii_lowercase();
        let scheme = match scheme.as_str() {
            "zmq" => UrlScheme::Zmq,
            "redis" => UrlScheme::Redis,
            _ => match scheme.strip_prefix("zmq+") {
                Some("redis") => UrlScheme::ZmqRedis,
                Some("sentinel") => UrlScheme::ZmqSentinel,
                Some("kubernetes") => UrlScheme::ZmqKubernetes,
                Some("dummy") | Some("static") => UrlScheme::ZmqStatic,
                Some(other) => return Err(UrlError::UnknownMatchmaker(other.to_string())),
                None => return Err(UrlError::NotTransportUrl),
            },
        };
        Ok(TransportUrl {
            scheme,
            rest: rest.to_string(),
        })
    }

    /// The scheme.
    pub fn scheme(&self) -> UrlScheme {
        self.scheme
    }

    /// The network location: what lies between `://` and the first `/`, `?`
    /// or `#` (the comma-separated `[userinfo@]host[:port]` list).
    pub fn netloc(&self) -> &str {
        self.rest.split(['/', '?', '#']).next().unwrap_or_default()
    }
}

/// Shows the scheme only: the rest may hold a password.
impl fmt::Debug for TransportUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportUrl")
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheme(url: &str) -> Result<UrlScheme, UrlError> {
        TransportUrl::parse(url).map(|u| u.scheme())
    }

    #[test]
    fn schemes_as_oslo_names_them() {
        assert_eq!(scheme("zmq://h:1/"), Ok(UrlScheme::Zmq));
        assert_eq!(scheme("zmq+redis://h:1"), Ok(UrlScheme::ZmqRedis));
        assert_eq!(scheme("ZMQ+Redis://h:1"), Ok(UrlScheme::ZmqRedis));
        assert_eq!(scheme("redis://h"), Ok(UrlScheme::Redis));
        assert_eq!(scheme("zmq+sentinel://h:1"), Ok(UrlScheme::ZmqSentinel));
        assert_eq!(scheme("zmq+kubernetes://"), Ok(UrlScheme::ZmqKubernetes));
        assert_eq!(scheme("zmq+dummy://"), Ok(UrlScheme::ZmqStatic));
        assert_eq!(scheme("zmq+static://"), Ok(UrlScheme::ZmqStatic));
        assert_eq!(
            scheme("zmq+nope://x"),
            Err(UrlError::UnknownMatchmaker("nope".into()))
        );
        assert_eq!(scheme("http://x"), Err(UrlError::NotTransportUrl));
        assert_eq!(scheme("zmq"), Err(UrlError::NotTransportUrl));
    }

    #[test]
    fn netloc_stops_at_path_query_and_fragment() {
        let u = TransportUrl::parse("zmq+redis://:pw@r1:7000,r2/ignored?x=1").unwrap();
        assert_eq!(u.netloc(), ":pw@r1:7000,r2");
        assert!(!format!("{u:?}").contains("pw"));
    }
}
