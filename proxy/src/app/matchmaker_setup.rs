//! The matchmaker the settings ask for. It lives in the composition root
//! because it is the one place that knows both the proxy's configuration and
//! the backends: the matchmaker library itself never sees [`Settings`].

use std::sync::Arc;
use std::time::Duration;

use crate::config::{MatchmakerKind, Settings};
use crate::matchmaker::composite::CompositeMatchmaker;
use crate::matchmaker::in_process::StaticMatchmaker;
use crate::matchmaker::kubernetes::KubernetesMatchmaker;
use crate::matchmaker::redis::{RedisConfig, RedisHost, RedisMatchmaker};
use crate::matchmaker::url::TransportUrl;
use crate::matchmaker::{Matchmaker, Result};

/// oslo's default Redis, used when `--matchmaker redis` comes without a URL.
const OSLO_DEFAULT_REDIS: &str = "zmq+redis://127.0.0.1:6379";

/// Builds the backend the settings ask for, and logs which stores are in use.
///
/// `kubernetes` with a Redis URL (`-u zmq+redis://...`, what the operator
/// passes from the ZmqProxy's Secret) registers in both: Kubernetes is the
/// primary (reads and readiness), Redis a best-effort secondary in oslo's
/// layout for unmodified oslo services
/// ([`crate::matchmaker::composite`]).
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn Matchmaker>> {
    // Warm-up = refresh period: by then every registrant has written again.
    let warmup = settings.liveness.update;
    match settings.matchmaker {
        MatchmakerKind::Static => {
            tracing::info!(backend = "static", "matchmaker: in-process registry");
            Ok(Arc::new(StaticMatchmaker::new()))
        }
        // oslo's Redis layout; the URL (`-u zmq+redis://...`) names the
        // servers, oslo's default otherwise.
        MatchmakerKind::Redis => {
            let url = settings.url.as_deref().unwrap_or(OSLO_DEFAULT_REDIS);
            let redis = redis_backend(url, warmup)?;
            tracing::info!(
                backend = "redis",
                redis = %redis_addresses(&redis),
                "matchmaker: redis (oslo layout)"
            );
            Ok(Arc::new(redis))
        }
        // Downward-API env and ZMQ_PROXY_SERVICE_NAME; credentials are
        // found on first use, so a missing API server never stops the start.
        MatchmakerKind::Kubernetes => {
            let kubernetes: Arc<dyn Matchmaker> = Arc::new(KubernetesMatchmaker::from_env());
            let redis_url = settings.url.as_deref().filter(|u| names_redis(u));
            let Some(url) = redis_url else {
                tracing::info!(
                    backend = "kubernetes",
                    "matchmaker: kubernetes (EndpointSlices)"
                );
                return Ok(kubernetes);
            };
            match redis_backend(url, warmup) {
                Ok(redis) => {
                    tracing::info!(
                        backend = "kubernetes+redis",
                        redis = %redis_addresses(&redis),
                        "matchmaker: kubernetes (primary: discovery and readiness) \
                         + redis (secondary, oslo layout, best effort)"
                    );
                    Ok(Arc::new(CompositeMatchmaker::new(
                        kubernetes,
                        vec![Arc::new(redis)],
                    )))
                }
                // Redis is a courtesy to oslo services: an unusable URL must
                // not cost the proxy its Kubernetes registration.
                Err(error) => {
                    tracing::error!(
                        %error,
                        "matchmaker: kubernetes only; the Redis URL is unusable, nothing is written to Redis"
                    );
                    Ok(kubernetes)
                }
            }
        }
    }
}

/// Whether an oslo transport URL names a Redis store. A URL that does not
/// parse names none (the configuration has refused such URLs already).
fn names_redis(url: &str) -> bool {
    TransportUrl::parse(url).is_ok_and(|u| u.scheme().names_redis())
}

/// The Redis backend of `url` with the proxy's warm-up period.
fn redis_backend(url: &str, warmup: Duration) -> Result<RedisMatchmaker> {
    let config = RedisConfig {
        warmup,
        ..RedisConfig::from_url(url)?
    };
    RedisMatchmaker::new(config)
}

/// `host:port,...` of a Redis backend, for logs (never the password).
fn redis_addresses(redis: &RedisMatchmaker) -> String {
    redis
        .config()
        .hosts
        .iter()
        .map(RedisHost::address)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend_for(env: &[(&str, &str)]) -> &'static str {
        let env: std::collections::BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = Settings::from_args(
            ["zmq-proxy".to_string()],
            |k| env.get(k).cloned(),
            |_| Ok(String::new()),
        )
        .unwrap();
        from_settings(&settings).unwrap().backend()
    }

    #[tokio::test]
    async fn kubernetes_with_a_redis_url_registers_in_both() {
        let k = ("ZMQ_PROXY_MATCHMAKER", "kubernetes");
        assert_eq!(backend_for(&[k]), "kubernetes");
        assert_eq!(
            backend_for(&[k, ("ZMQ_PROXY_URL", "zmq+redis://127.0.0.1:6379")]),
            "kubernetes+redis"
        );
        assert_eq!(
            backend_for(&[k, ("ZMQ_PROXY_URL", "zmq+redis://:pw@r1:6379,r2:6380/")]),
            "kubernetes+redis"
        );
        // No Redis named, or one the Redis backend cannot use: Kubernetes only.
        assert_eq!(
            backend_for(&[k, ("ZMQ_PROXY_URL", "zmq://h:1/")]),
            "kubernetes"
        );
        assert_eq!(
            backend_for(&[k, ("ZMQ_PROXY_URL", "zmq+sentinel://h:26379")]),
            "kubernetes"
        );
        assert_eq!(
            backend_for(&[("ZMQ_PROXY_URL", "zmq+redis://127.0.0.1:6379")]),
            "redis"
        );
        assert_eq!(backend_for(&[]), "static");
    }
}
