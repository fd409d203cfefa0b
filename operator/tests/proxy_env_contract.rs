//! The env contract, checked from both ends: the environment the operator
//! builds for a proxy container (ConfigMap via `envFrom`, plus the
//! container's own variables) is parsed by the proxy's real configuration
//! parser, and every spec field arrives where it should. No cluster needed:
//! the kubelet's part (downward-API values, Secret lookup, `$(VAR)`
//! expansion, container env over `envFrom`) is mimicked here.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use serde_json::{json, Value};
use zmq_proxy::config::{CurveFiles, LogFormat, MatchmakerKind, RouterMode, Settings};
use zmq_proxy_operator::build::{build, Capabilities, Desired};
use zmq_proxy_operator::crd::{ZmqProxy, ZmqProxySpec};
use zmq_proxy_operator::curve::ProxyCurve;
use zmq_proxy_operator::validate::validate;

const POD_IP: &str = "10.1.2.3";
const REDIS_URL: &str = "zmq+redis://redis.ns1:6379";

fn desired(spec: Value) -> Desired {
    let spec: ZmqProxySpec = serde_json::from_value(spec).expect("a valid spec");
    let mut zp = ZmqProxy::new("alpha", spec);
    zp.metadata.namespace = Some("ns1".into());
    zp.metadata.uid = Some("uid-1".into());
    let validated = validate(&zp).expect("complete metadata");
    // The public key the operator would derive from the key Secret.
    let curve = validated.curve.clone().map(|plan| ProxyCurve {
        plan,
        public_key: "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7".into(),
    });
    build(&validated, &Capabilities::default(), curve.as_ref())
}

/// `$(NAME)` references to variables already defined, as the kubelet
/// expands them.
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = value.to_string();
    for (k, v) in defined {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

/// The environment the kubelet would give `container`, whose `envFrom`
/// names a ConfigMap holding `config`.
fn container_env(
    container: &Container,
    config: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = config.clone();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                (Some(f), _) => match f.field_path.as_str() {
                    "metadata.name" => "alpha-0".into(),
                    "metadata.namespace" => "ns1".into(),
                    "metadata.uid" => "pod-uid".into(),
                    "status.podIP" => POD_IP.into(),
                    other => panic!("unexpected downward-API field {other}"),
                },
                (None, Some(_)) => REDIS_URL.into(),
                (None, None) => panic!("{} has an unsupported source", var.name),
            },
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    env
}

fn parse(env: &BTreeMap<String, String>) -> Settings {
    Settings::from_args(
        ["zmq-proxy".to_string()],
        |k| env.get(k).cloned(),
        |p| {
            Err(std::io::Error::other(format!(
                "no config file {}",
                p.display()
            )))
        },
    )
    .expect("the proxy accepts the operator's env")
}

fn proxy_settings(d: &Desired) -> Settings {
    let pod = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template");
    let config = d.config_map.data.clone().expect("ConfigMap data");
    parse(&container_env(&pod.containers[0], &config))
}

#[test]
fn defaults_parse_to_the_proxys_defaults_on_the_pod_ip() {
    let s = proxy_settings(&desired(json!({})));
    assert_eq!(s.mode, RouterMode::DoubleRouter);
    assert_eq!(
        (s.frontend_port, s.backend_port, s.publisher_port),
        (50001, 50002, 50003)
    );
    assert_eq!((s.host.as_str(), s.bind_address.as_str()), (POD_IP, POD_IP));
    assert_eq!(s.metrics_address.to_string(), format!("{POD_IP}:9090"));
    assert_eq!(s.matchmaker, MatchmakerKind::Kubernetes);
    assert_eq!(s.url, None);
    assert!(!s.pubsub && !s.ack_pub_sub && !s.local_publisher);
    assert_eq!(s.grace_period, Duration::from_secs(10));
    assert_eq!(s.liveness.expire, Duration::from_secs(300));
    assert_eq!(s.liveness.update, Duration::from_secs(180));
    assert_eq!(
        (s.sockets.hwm, s.sockets.linger_ms, s.sockets.tcp_keepalive),
        (0, -1, -1)
    );
    assert_eq!(s.log_format, LogFormat::Text);
    assert_eq!(s.curve, None);
}

#[test]
fn curve_names_the_files_the_pod_mounts() {
    let d = desired(json!({"security": {"curve": {
        "enabled": true, "authorizedKeys": {"configMap": {"name": "peers"}}}}}));
    let s = proxy_settings(&d);
    let files = s.curve.expect("CURVE on in the proxy");
    // Each file sits in a directory a volume is mounted at, under the
    // name the volume's item gives it.
    let pod = d
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("a pod template");
    let mounted = |file: &std::path::Path| {
        let (dir, name) = (file.parent().expect("a directory"), file.file_name());
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| std::path::Path::new(&m.mount_path) == dir)
            .expect("a mount at the file's directory");
        assert!(mount.sub_path.is_none(), "subPath mounts never update");
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .expect("the mount's volume");
        let items = volume
            .secret
            .as_ref()
            .and_then(|s| s.items.clone())
            .or_else(|| volume.config_map.as_ref().and_then(|c| c.items.clone()))
            .expect("a Secret or ConfigMap volume with items");
        assert!(items
            .iter()
            .any(|i| Some(std::ffi::OsStr::new(&i.path)) == name));
    };
    let CurveFiles {
        secret_key_file,
        authorized_keys,
    } = files;
    mounted(&secret_key_file);
    mounted(&authorized_keys);
}

#[test]
fn every_spec_field_reaches_the_proxy() {
    let d = desired(json!({
        "mode": "SingleRouter",
        "ports": {"frontend": 6001, "backend": 6002, "publisher": 6003, "metrics": 6004},
        "pubSub": {"enabled": true, "ackPubSub": true},
        "matchmaker": {
            "redisUrlSecret": {"name": "redis", "key": "url"},
            "targetExpireSeconds": 60,
            "targetUpdateSeconds": 20,
        },
        "socket": {
            "hwm": 1000, "lingerMs": 250, "tcpKeepalive": "Enabled",
            "tcpKeepaliveIdle": 30, "tcpKeepaliveInterval": 5, "tcpKeepaliveCount": 4,
        },
        "gracePeriodSeconds": 42,
        "logging": {"format": "json", "level": "debug"},
    }));
    let s = proxy_settings(&d);
    assert_eq!(s.mode, RouterMode::SingleRouter);
    assert_eq!(
        (s.frontend_port, s.backend_port, s.publisher_port),
        (6001, 6002, 6003)
    );
    assert_eq!(s.metrics_address.to_string(), format!("{POD_IP}:6004"));
    assert!(s.pubsub && s.ack_pub_sub);
    // The Redis URL adds oslo's layout; the explicit matchmaker stays.
    assert_eq!(s.url.as_deref(), Some(REDIS_URL));
    assert_eq!(s.matchmaker, MatchmakerKind::Kubernetes);
    assert_eq!(s.liveness.expire, Duration::from_secs(60));
    assert_eq!(s.liveness.update, Duration::from_secs(20));
    let o = &s.sockets;
    assert_eq!((o.hwm, o.linger_ms, o.tcp_keepalive), (1000, 250, 1));
    assert_eq!(
        (
            o.tcp_keepalive_idle,
            o.tcp_keepalive_intvl,
            o.tcp_keepalive_cnt
        ),
        (30, 5, 4)
    );
    assert_eq!(s.grace_period, Duration::from_secs(42));
    assert_eq!(s.log_format, LogFormat::Json);
}

#[test]
fn the_local_publisher_container_parses_as_a_local_publisher() {
    let d = desired(
        json!({"pubSub": {"enabled": true}, "localPublisher": {"enabled": true, "port": 7004}}),
    );
    let pod = d
        .daemon_set
        .as_ref()
        .and_then(|ds| ds.spec.as_ref())
        .and_then(|s| s.template.spec.as_ref())
        .expect("a DaemonSet pod template");
    let config = d.config_map.data.clone().expect("ConfigMap data");
    let s = parse(&container_env(&pod.containers[0], &config));
    assert!(s.local_publisher);
    // Container env wins over the ConfigMap's central publisher port.
    assert_eq!(s.publisher_port, 7004);
    assert_eq!(s.bind_address, POD_IP);
}
