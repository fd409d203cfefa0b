//! The env contract between operator and proxy: the `ZMQ_PROXY_*` variables
//! (notes/contracts.md) that carry a ZmqProxy's configuration to its pods.
//!
//! Configuration lives in a ConfigMap loaded with `envFrom` ([`proxy_env`]):
//! the env names are the proxy's stable interface, whereas the INI file is
//! oslo's and would tie the operator to the proxy's parser. Only the
//! downward-API values, what derives from them and the Secret reference live
//! directly in the container ([`pod_env`]), because `$(POD_IP)` only expands
//! there. The pod template carries [`config_hash`] of the ConfigMap data, so
//! a configuration change rolls the pods.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector,
};

use super::names::{child_meta, child_name, config_map_name, PROXY};
use crate::validate::Validated;

/// The proxy configuration as ZMQ_PROXY_* variables (see contracts.md).
pub fn proxy_env(zp: &Validated) -> BTreeMap<String, String> {
    let s = &zp.spec;
    let mut env = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    put("ZMQ_PROXY_MODE", s.mode.flag_value().into());
    put("ZMQ_PROXY_FRONTEND_PORT", s.ports.frontend.to_string());
    put("ZMQ_PROXY_BACKEND_PORT", s.ports.backend.to_string());
    put("ZMQ_PROXY_PUBLISHER_PORT", s.ports.publisher.to_string());
    put("ZMQ_PROXY_PUBSUB", s.pub_sub.enabled.to_string());
    put("ZMQ_PROXY_ACK_PUB_SUB", s.pub_sub.ack_pub_sub.to_string());
    put("ZMQ_PROXY_MATCHMAKER", "kubernetes".into());
    put("ZMQ_PROXY_SERVICE_NAME", child_name(&zp.name));
    put(
        "ZMQ_PROXY_TARGET_EXPIRE",
        s.matchmaker.target_expire_seconds.to_string(),
    );
    put(
        "ZMQ_PROXY_TARGET_UPDATE",
        s.matchmaker.target_update_seconds.to_string(),
    );
    put("ZMQ_PROXY_HWM", s.socket.hwm.to_string());
    put("ZMQ_PROXY_LINGER_MS", s.socket.linger_ms.to_string());
    put(
        "ZMQ_PROXY_TCP_KEEPALIVE",
        s.socket.tcp_keepalive.zmq_value().to_string(),
    );
    put(
        "ZMQ_PROXY_TCP_KEEPALIVE_IDLE",
        s.socket.tcp_keepalive_idle.to_string(),
    );
    put(
        "ZMQ_PROXY_TCP_KEEPALIVE_INTVL",
        s.socket.tcp_keepalive_interval.to_string(),
    );
    put(
        "ZMQ_PROXY_TCP_KEEPALIVE_CNT",
        s.socket.tcp_keepalive_count.to_string(),
    );
    put("ZMQ_PROXY_GRACE_PERIOD", s.grace_period_seconds.to_string());
    put("ZMQ_PROXY_LOG_FORMAT", s.logging.format.as_str().into());
    put("RUST_LOG", s.logging.level.as_str().into());
    env
}

/// The ConfigMap the proxy containers load with `envFrom`, holding `env`
/// ([`proxy_env`]).
pub fn config_map(zp: &Validated, env: BTreeMap<String, String>) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(zp, config_map_name(&zp.name), PROXY),
        data: Some(env),
        ..Default::default()
    }
}

/// FNV-1a (64 bit) over the configuration: stable across Rust releases and
/// processes, unlike `DefaultHasher`; collisions only cost a missed roll of a
/// configuration nobody crafted adversarially.
pub fn config_hash(env: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in env {
        for b in k.bytes().chain([0u8]).chain(v.bytes()).chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

/// Downward-API identity plus the values derived from it, and the Redis URL
/// from its Secret. Declared in the container (not the ConfigMap) because
/// `$(POD_IP)` only expands there, and only for variables declared earlier
/// in the list.
pub fn pod_env(zp: &Validated) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_IP", "status.podIP"),
        field_env("POD_UID", "metadata.uid"),
        value_env("ZMQ_PROXY_HOST", "$(POD_IP)".into()),
        value_env("ZMQ_PROXY_BIND_ADDRESS", "$(POD_IP)".into()),
        value_env(
            "ZMQ_PROXY_METRICS_ADDRESS",
            format!("$(POD_IP):{}", zp.spec.ports.metrics),
        ),
    ];
    if let Some(secret) = &zp.spec.matchmaker.redis_url_secret {
        env.push(EnvVar {
            name: "ZMQ_PROXY_URL".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env
}

/// What turns a proxy container into a node-local publisher: the mode switch
/// and the node port its PUB socket binds (overriding the ConfigMap's
/// central publisher port, since container env wins over `envFrom`).
pub fn local_publisher_env(zp: &Validated) -> Vec<EnvVar> {
    vec![
        value_env("ZMQ_PROXY_LOCAL_PUBLISHER", "true".into()),
        value_env(
            "ZMQ_PROXY_PUBLISHER_PORT",
            zp.spec.local_publisher.port.to_string(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{env_of, pod_spec};
    use crate::build::{build, Capabilities};
    use crate::validate::tests::validated;
    use serde_json::json;

    #[test]
    fn configuration_names_the_matchmaker_service_and_mode() {
        let env = proxy_env(&validated(json!({"mode": "SingleRouter"})));
        assert_eq!(env["ZMQ_PROXY_MATCHMAKER"], "kubernetes");
        assert_eq!(env["ZMQ_PROXY_SERVICE_NAME"], "alpha");
        assert_eq!(env["ZMQ_PROXY_MODE"], "single-router");
        assert_eq!(env["ZMQ_PROXY_TCP_KEEPALIVE"], "-1");
    }

    #[test]
    fn hash_is_stable_and_follows_every_value() {
        let env = proxy_env(&validated(json!({})));
        assert_eq!(config_hash(&env), config_hash(&env.clone()));
        let hwm = proxy_env(&validated(json!({"socket": {"hwm": 1000}})));
        assert_ne!(config_hash(&env), config_hash(&hwm));
        // FNV-1a of nothing is its offset basis.
        assert_eq!(config_hash(&BTreeMap::new()), "cbf29ce484222325");
    }

    #[test]
    fn redis_url_comes_from_the_secret() {
        let d = build(
            &validated(json!({"matchmaker": {"redisUrlSecret": {"name": "redis", "key": "url"}}})),
            &Capabilities::default(),
            None,
        );
        let env = env_of(&pod_spec(&d.deployment).containers[0]);
        let r = env["ZMQ_PROXY_URL"]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), ("redis", "url"));
    }
}
