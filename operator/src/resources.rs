//! Pure builders: one `ZmqProxy` in, every desired child object out.
//!
//! Nothing here talks to an API server, so every rule about the children
//! (names, labels, owner references, pod security, probes, the configuration
//! hash that rolls pods) is unit-tested. Which API versions and optional kinds
//! are served is decided elsewhere ([`crate::discovery`]) and passed in as
//! [`Capabilities`].
//!
//! Proxy configuration travels as environment variables (the contract in
//! notes/contracts.md) kept in a ConfigMap and loaded with `envFrom`: the env
//! names are the proxy's stable interface, whereas the INI file is oslo's and
//! would tie the operator to the proxy's parser. Only the downward-API values
//! and the Secret reference live directly in the pod template.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort,
    EnvFromSource, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TopologySpreadConstraint,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::{json, Value};

use crate::crd::{ProxyMode, ZmqProxy};

/// The operator's field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "zmq-proxy-operator";
/// Pod-template annotation holding the hash of the proxy configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "zmqproxy.io/config-hash";
/// Default proxy image repository (the node agent maps it to the local binary).
pub const PROXY_IMAGE_REPOSITORY: &str = "ghcr.io/zmq-proxy/zmq-proxy";
/// UID and GID the proxy runs as (the distroless `nonroot` user).
const NON_ROOT_ID: i64 = 65532;
/// Seconds added to the proxy's drain time before the kubelet SIGKILLs it:
/// deregistration and socket close need a moment after the drain ends.
const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// Which optional APIs the cluster serves, as discovery found them. Every
/// supported Kubernetes (1.34 and later) serves policy/v1 and
/// discovery.k8s.io/v1, so only the Prometheus Operator's kinds vary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// monitoring.coreos.com/v1 ServiceMonitor is served.
    pub service_monitor: bool,
    /// monitoring.coreos.com/v1 PodMonitor is served.
    pub pod_monitor: bool,
}

/// An optional child applied as JSON: ServiceMonitor and PodMonitor have no
/// k8s-openapi type, and the PodDisruptionBudget shares their
/// create-or-delete path.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicChild {
    /// API group ("" for core).
    pub group: String,
    /// API version without the group.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Plural resource name.
    pub plural: String,
    /// The whole object, apiVersion and kind included.
    pub object: Value,
}

/// A monitoring problem the status must report: asked for but not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingApi {
    /// spec.monitoring.serviceMonitor is on but the CRD is not installed.
    ServiceMonitor,
    /// spec.monitoring.podMonitor is on but the CRD is not installed.
    PodMonitor,
}

/// Everything one ZmqProxy wants to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// Identity of the proxy pods.
    pub service_account: ServiceAccount,
    /// Exactly what registration needs.
    pub role: Role,
    /// Binds [`Desired::role`] to [`Desired::service_account`].
    pub role_binding: RoleBinding,
    /// Proxy configuration (environment).
    pub config_map: ConfigMap,
    /// The proxies.
    pub deployment: Deployment,
    /// Headless, selector-less Service whose EndpointSlices the proxies write.
    pub service: Service,
    /// Metrics Service for a ServiceMonitor (only with serviceMonitor on).
    pub metrics_service: Option<Service>,
    /// Local publishers, one per node (optional).
    pub daemon_set: Option<DaemonSet>,
    /// PodDisruptionBudget in the served version (optional).
    pub pdb: Option<DynamicChild>,
    /// ServiceMonitor (optional, served and asked for).
    pub service_monitor: Option<DynamicChild>,
    /// PodMonitor (optional, served and asked for).
    pub pod_monitor: Option<DynamicChild>,
    /// Optional kinds asked for that the cluster does not serve.
    pub missing: Vec<MissingApi>,
}

/// Errors building the children: only a ZmqProxy without the metadata the API
/// server always sets (name, namespace, uid) can fail.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// metadata.name, .namespace or .uid is missing.
    #[error("ZmqProxy has no metadata.{0}")]
    MissingMetadata(&'static str),
}

/// Name of every per-instance child (Deployment, Service, ServiceAccount, ...).
pub fn child_name(zp_name: &str) -> String {
    zp_name.to_string()
}

/// Name of the local-publisher DaemonSet.
pub fn daemon_set_name(zp_name: &str) -> String {
    format!("{zp_name}-local-publisher")
}

/// Name of the metrics Service.
pub fn metrics_service_name(zp_name: &str) -> String {
    format!("{zp_name}-metrics")
}

/// Name of the ConfigMap.
pub fn config_map_name(zp_name: &str) -> String {
    format!("{zp_name}-config")
}

/// Labels that select one instance's proxy pods (stable for a Deployment's life).
pub fn selector_labels(zp_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "zmq-proxy".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            zp_name.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// The label selector string of the proxy pods (status.selector, for scale).
pub fn selector_string(zp_name: &str) -> String {
    selector_labels(zp_name, "proxy")
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels every child carries; the label selector for orphan cleanup is
/// [`instance_selector`].
pub fn common_labels(zp_name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(zp_name, component);
    labels.insert("app.kubernetes.io/part-of".into(), "zmq-proxy".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels
}

/// Label selector matching every child of one instance.
pub fn instance_selector(zp_name: &str) -> String {
    format!("app.kubernetes.io/instance={zp_name},app.kubernetes.io/managed-by={MANAGER}")
}

/// Image the proxies run when the spec names none: same version as the operator.
pub fn default_proxy_image() -> String {
    format!("{PROXY_IMAGE_REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// The Role rules of the proxy pods. Each verb, and why registration needs it:
/// - get: read back its own slice after a restart (same pod name, stale state);
/// - list, watch: clients and the proxy discover the other proxies without polling;
/// - create: register (one slice per pod);
/// - update, patch: mark ready / not ready / terminating, refresh on change;
/// - delete: deregister on SIGTERM before the pod object is gone.
///
/// Nothing on pods: POD_UID for the owner reference comes from the downward
/// API, and the slice's owner reference sets no blockOwnerDeletion, so no
/// permission on the Pod itself is needed.
pub fn proxy_role_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["discovery.k8s.io".into()]),
        resources: Some(vec!["endpointslices".into()]),
        verbs: [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect(),
        ..Default::default()
    }]
}

/// Builds every desired child of `zp` for a cluster serving `caps`.
pub fn build(zp: &ZmqProxy, caps: &Capabilities) -> Result<Desired, BuildError> {
    let name = zp
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::MissingMetadata("name"))?;
    let ns = zp
        .metadata
        .namespace
        .as_deref()
        .ok_or(BuildError::MissingMetadata("namespace"))?;
    let owner = owner_reference(zp)?;
    let meta = |child: String, component: &str| ObjectMeta {
        name: Some(child),
        namespace: Some(ns.to_string()),
        labels: Some(common_labels(name, component)),
        owner_references: Some(vec![owner.clone()]),
        ..Default::default()
    };

    let service_account = ServiceAccount {
        metadata: meta(child_name(name), "proxy"),
        ..Default::default()
    };
    let role = Role {
        metadata: meta(child_name(name), "proxy"),
        rules: Some(proxy_role_rules()),
    };
    let role_binding = RoleBinding {
        metadata: meta(child_name(name), "proxy"),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: child_name(name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: child_name(name),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    };
    let env = proxy_env(zp);
    let config_map = ConfigMap {
        metadata: meta(config_map_name(name), "proxy"),
        data: Some(env.clone()),
        ..Default::default()
    };
    let hash = config_hash(&env);
    let deployment = deployment(zp, name, meta(child_name(name), "proxy"), &hash);
    let service = headless_service(zp, meta(child_name(name), "proxy"));
    let spec = &zp.spec;

    let metrics_service = spec.monitoring.service_monitor.then(|| Service {
        metadata: meta(metrics_service_name(name), "proxy"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(name, "proxy")),
            ports: Some(vec![service_port("metrics", spec.ports.metrics)]),
            ..Default::default()
        }),
        ..Default::default()
    });
    let daemon_set = spec.local_publisher.enabled.then(|| {
        local_publisher(
            zp,
            name,
            meta(daemon_set_name(name), "local-publisher"),
            &hash,
        )
    });

    let pdb = spec.pod_disruption_budget.enabled.then(|| {
        let m = meta(child_name(name), "proxy");
        DynamicChild {
            group: "policy".into(),
            version: "v1".into(),
            kind: "PodDisruptionBudget".into(),
            plural: "poddisruptionbudgets".into(),
            object: json!({
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": m,
                "spec": {
                    "maxUnavailable": spec.pod_disruption_budget.max_unavailable,
                    "selector": { "matchLabels": selector_labels(name, "proxy") },
                },
            }),
        }
    });

    let mut missing = Vec::new();
    let service_monitor = if spec.monitoring.service_monitor {
        if caps.service_monitor {
            Some(monitor(
                "ServiceMonitor",
                "servicemonitors",
                meta(child_name(name), "proxy"),
                json!({
                    "selector": { "matchLabels": common_labels(name, "proxy") },
                    "namespaceSelector": { "matchNames": [ns] },
                    "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": spec.monitoring.interval }],
                }),
            ))
        } else {
            missing.push(MissingApi::ServiceMonitor);
            None
        }
    } else {
        None
    };
    let pod_monitor = if spec.monitoring.pod_monitor {
        if caps.pod_monitor {
            Some(monitor(
                "PodMonitor",
                "podmonitors",
                meta(child_name(name), "proxy"),
                json!({
                    "selector": { "matchLabels": selector_labels(name, "proxy") },
                    "namespaceSelector": { "matchNames": [ns] },
                    "podMetricsEndpoints": [{ "port": "metrics", "path": "/metrics", "interval": spec.monitoring.interval }],
                }),
            ))
        } else {
            missing.push(MissingApi::PodMonitor);
            None
        }
    } else {
        None
    };

    Ok(Desired {
        service_account,
        role,
        role_binding,
        config_map,
        deployment,
        service,
        metrics_service,
        daemon_set,
        pdb,
        service_monitor,
        pod_monitor,
        missing,
    })
}

/// The controller owner reference every child carries, so that garbage
/// collection removes children with their ZmqProxy and Owns() watches map
/// child changes back to it.
pub fn owner_reference(zp: &ZmqProxy) -> Result<OwnerReference, BuildError> {
    Ok(OwnerReference {
        api_version: ZmqProxy::api_version(&()).into_owned(),
        kind: ZmqProxy::kind(&()).into_owned(),
        name: zp
            .metadata
            .name
            .clone()
            .ok_or(BuildError::MissingMetadata("name"))?,
        uid: zp
            .metadata
            .uid
            .clone()
            .ok_or(BuildError::MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn monitor(kind: &str, plural: &str, metadata: ObjectMeta, spec: Value) -> DynamicChild {
    DynamicChild {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
        object: json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": kind,
            "metadata": metadata,
            "spec": spec,
        }),
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn headless_service(zp: &ZmqProxy, metadata: ObjectMeta) -> Service {
    let spec = &zp.spec;
    let mut ports = vec![service_port("frontend", spec.ports.frontend)];
    if spec.mode == ProxyMode::DoubleRouter {
        ports.push(service_port("backend", spec.ports.backend));
    }
    if spec.pub_sub.enabled {
        ports.push(service_port("publisher", spec.ports.publisher));
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            // Headless and without a selector: the EndpointSlice controller
            // leaves it alone and the proxies' own slices are its endpoints.
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(false),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy configuration as ZMQ_PROXY_* variables (see contracts.md).
pub fn proxy_env(zp: &ZmqProxy) -> BTreeMap<String, String> {
    let s = &zp.spec;
    let name = zp.metadata.name.clone().unwrap_or_default();
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
    put("ZMQ_PROXY_SERVICE_NAME", child_name(&name));
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

/// Downward-API identity plus the values derived from it. Declared in the
/// container (not the ConfigMap) because `$(POD_IP)` only expands there.
fn pod_env(zp: &ZmqProxy) -> Vec<EnvVar> {
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

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        capabilities: Some(LinuxCapabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(NON_ROOT_ID),
        run_as_group: Some(NON_ROOT_ID),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(
    zp: &ZmqProxy,
    name: &str,
    extra_env: Vec<EnvVar>,
    ports: Vec<ContainerPort>,
) -> Container {
    let spec = &zp.spec;
    let mut env = pod_env(zp);
    env.extend(extra_env);
    Container {
        name: "zmq-proxy".into(),
        image: Some(spec.image.clone().unwrap_or_else(default_proxy_image)),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(name),
                optional: Some(false),
            }),
            ..Default::default()
        }]),
        ports: Some(ports),
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        resources: spec.resources.clone(),
        security_context: Some(restricted_security_context()),
        lifecycle: pre_stop(spec.pre_stop_delay_seconds),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// An optional pause before SIGTERM. The proxy itself marks its endpoint not
/// ready as the first step after SIGTERM, so no delay is needed for
/// correctness; the pause only helps clients that learn about proxies from
/// DNS (slower than an EndpointSlice watch). It needs `sleep` in the image.
fn pre_stop(delay: i32) -> Option<Lifecycle> {
    (delay > 0).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sleep".into(), delay.to_string()]),
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn pod_template(
    zp: &ZmqProxy,
    name: &str,
    component: &str,
    hash: &str,
    container: Container,
) -> PodTemplateSpec {
    let spec = &zp.spec;
    let mut annotations = BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash.to_string())]);
    if spec.monitoring.scrape_annotations {
        annotations.insert("prometheus.io/scrape".into(), "true".into());
        annotations.insert("prometheus.io/port".into(), spec.ports.metrics.to_string());
        annotations.insert("prometheus.io/path".into(), "/metrics".into());
    }
    let mut labels = common_labels(name, component);
    labels.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(child_name(name)),
            automount_service_account_token: Some(true),
            containers: vec![container],
            security_context: Some(pod_security_context()),
            termination_grace_period_seconds: Some(
                i64::from(spec.grace_period_seconds)
                    + i64::from(spec.pre_stop_delay_seconds)
                    + TERMINATION_MARGIN_SECONDS,
            ),
            node_selector: spec.node_selector.clone(),
            tolerations: spec.tolerations.clone(),
            affinity: spec.affinity.clone(),
            enable_service_links: Some(false),
            ..Default::default()
        }),
    }
}

fn deployment(zp: &ZmqProxy, name: &str, metadata: ObjectMeta, hash: &str) -> Deployment {
    let spec = &zp.spec;
    let mut ports = vec![container_port("frontend", spec.ports.frontend)];
    if spec.mode == ProxyMode::DoubleRouter {
        ports.push(container_port("backend", spec.ports.backend));
    }
    if spec.pub_sub.enabled {
        ports.push(container_port("publisher", spec.ports.publisher));
    }
    ports.push(container_port("metrics", spec.ports.metrics));
    let container = proxy_container(zp, name, Vec::new(), ports);
    let mut template = pod_template(zp, name, "proxy", hash, container);
    if let Some(pod) = template.spec.as_mut() {
        pod.topology_spread_constraints =
            Some(spec.topology_spread_constraints.clone().unwrap_or_else(|| {
                vec![TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "kubernetes.io/hostname".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: Some(LabelSelector {
                        match_labels: Some(selector_labels(name, "proxy")),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }));
    }
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(name, "proxy")),
                ..Default::default()
            },
            // Surge first: a rolling update never drops below the desired
            // number of registered proxies.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(3),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn local_publisher(zp: &ZmqProxy, name: &str, metadata: ObjectMeta, hash: &str) -> DaemonSet {
    let port = zp.spec.local_publisher.port;
    let mut p = container_port("publisher", port);
    // hostPort makes the node-local publisher reachable on every node's IP
    // at a fixed port, which is what "one per node" clients connect to.
    p.host_port = Some(port);
    let ports = vec![p, container_port("metrics", zp.spec.ports.metrics)];
    let extra = vec![
        value_env("ZMQ_PROXY_LOCAL_PUBLISHER", "true".into()),
        value_env("ZMQ_PROXY_PUBLISHER_PORT", port.to_string()),
    ];
    let container = proxy_container(zp, name, extra, ports);
    let template = pod_template(zp, name, "local-publisher", hash, container);
    DaemonSet {
        metadata,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(name, "local-publisher")),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ZmqProxySpec;

    fn zp(spec: Value) -> ZmqProxy {
        let spec: ZmqProxySpec = serde_json::from_value(spec).unwrap();
        let mut zp = ZmqProxy::new("alpha", spec);
        zp.metadata.namespace = Some("ns1".into());
        zp.metadata.uid = Some("uid-1".into());
        zp.metadata.generation = Some(1);
        zp
    }

    fn pod_spec(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .clone()
            .unwrap()
            .annotations
            .unwrap()
    }

    fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        let metas = [
            &d.service_account.metadata,
            &d.role.metadata,
            &d.role_binding.metadata,
            &d.config_map.metadata,
            &d.deployment.metadata,
            &d.service.metadata,
        ];
        for m in metas {
            assert_eq!(m.namespace.as_deref(), Some("ns1"));
            let owners = m.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].uid, "uid-1");
            assert_eq!(owners[0].kind, "ZmqProxy");
            assert_eq!(owners[0].api_version, "zmqproxy.io/v1alpha1");
            assert_eq!(owners[0].controller, Some(true));
            let labels = m.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "alpha");
            assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        }
        let pdb = d.pdb.unwrap();
        assert_eq!(pdb.object["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    }

    #[test]
    fn missing_uid_is_an_error_not_a_panic() {
        let mut z = zp(json!({}));
        z.metadata.uid = None;
        assert!(matches!(
            build(&z, &Capabilities::default()),
            Err(BuildError::MissingMetadata("uid"))
        ));
    }

    #[test]
    fn role_grants_exactly_endpointslice_registration() {
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        let rules = d.role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["discovery.k8s.io".to_string()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["endpointslices".to_string()][..])
        );
        assert!(!rules[0]
            .verbs
            .iter()
            .any(|v| v == "*" || v == "deletecollection"));
        let subject = &d.role_binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "alpha")
        );
        assert_eq!(d.role_binding.role_ref.name, "alpha");
    }

    #[test]
    fn deployment_env_follows_the_contract() {
        let d = build(&zp(json!({"replicas": 3})), &Capabilities::default()).unwrap();
        assert_eq!(d.deployment.spec.as_ref().unwrap().replicas, Some(3));
        let pod = pod_spec(&d.deployment);
        assert_eq!(pod.service_account_name.as_deref(), Some("alpha"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(default_proxy_image().as_str()));
        let env = env_of(c);
        for (var, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_IP", "status.podIP"),
            ("POD_UID", "metadata.uid"),
        ] {
            let f = env[var]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap();
            assert_eq!(f.field_path, path);
        }
        assert_eq!(
            env["ZMQ_PROXY_BIND_ADDRESS"].value.as_deref(),
            Some("$(POD_IP)")
        );
        assert_eq!(
            env["ZMQ_PROXY_METRICS_ADDRESS"].value.as_deref(),
            Some("$(POD_IP):9090")
        );
        // $(VAR) only expands for variables declared earlier in the list.
        let names: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("POD_IP") < pos("ZMQ_PROXY_BIND_ADDRESS"));
        let cm = d.config_map.data.as_ref().unwrap();
        assert_eq!(cm["ZMQ_PROXY_MATCHMAKER"], "kubernetes");
        assert_eq!(cm["ZMQ_PROXY_SERVICE_NAME"], "alpha");
        assert_eq!(cm["ZMQ_PROXY_MODE"], "double-router");
        assert_eq!(
            c.env_from.as_ref().unwrap()[0]
                .config_map_ref
                .as_ref()
                .unwrap()
                .name,
            "alpha-config"
        );
    }

    #[test]
    fn probes_hardening_and_termination() {
        let d = build(
            &zp(json!({"gracePeriodSeconds": 20, "preStopDelaySeconds": 3})),
            &Capabilities::default(),
        )
        .unwrap();
        let pod = pod_spec(&d.deployment);
        let c = &pod.containers[0];
        let ready = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        assert_eq!(ready.port, IntOrString::String("metrics".into()));
        let live = c
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        let metrics = c
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"));
        assert_eq!(metrics.unwrap().container_port, 9090);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(pod.termination_grace_period_seconds, Some(20 + 3 + 5));
        let hook = c.lifecycle.as_ref().unwrap().pre_stop.as_ref().unwrap();
        assert_eq!(
            hook.exec.as_ref().unwrap().command,
            Some(vec!["sleep".to_string(), "3".to_string()])
        );
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        assert!(pod_spec(&d.deployment).containers[0].lifecycle.is_none());
    }

    #[test]
    fn spreads_over_nodes_by_default_and_honours_the_spec() {
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        let tsc = pod_spec(&d.deployment)
            .topology_spread_constraints
            .clone()
            .unwrap();
        assert_eq!(tsc[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(tsc[0].max_skew, 1);
        let d = build(
            &zp(json!({"topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
            ]})),
            &Capabilities::default(),
        )
        .unwrap();
        let tsc = pod_spec(&d.deployment)
            .topology_spread_constraints
            .clone()
            .unwrap();
        assert_eq!(tsc[0].topology_key, "topology.kubernetes.io/zone");
    }

    #[test]
    fn configuration_change_changes_the_hash_and_nothing_else_does() {
        let caps = Capabilities::default();
        let base = build(&zp(json!({})), &caps).unwrap();
        let h = |d: &Desired| template_annotations(&d.deployment)[CONFIG_HASH_ANNOTATION].clone();
        // A configuration change: new hash, new pod template.
        let hwm = build(&zp(json!({"socket": {"hwm": 1000}})), &caps).unwrap();
        assert_ne!(h(&base), h(&hwm));
        // Replicas, PDB and labels on the ZmqProxy leave the template alone.
        let mut labelled = zp(json!({"replicas": 7, "podDisruptionBudget": {"maxUnavailable": 2}}));
        labelled.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        let other = build(&labelled, &caps).unwrap();
        assert_eq!(
            base.deployment.spec.as_ref().unwrap().template,
            other.deployment.spec.as_ref().unwrap().template
        );
        // Building twice is deterministic.
        assert_eq!(base, build(&zp(json!({})), &caps).unwrap());
    }

    #[test]
    fn service_is_headless_selectorless_with_named_ports() {
        let d = build(
            &zp(json!({"pubSub": {"enabled": true}})),
            &Capabilities::default(),
        )
        .unwrap();
        let s = d.service.spec.unwrap();
        assert_eq!(s.cluster_ip.as_deref(), Some("None"));
        assert!(s.selector.is_none());
        let names: Vec<_> = s
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            names,
            [
                ("frontend".into(), 50001),
                ("backend".into(), 50002),
                ("publisher".into(), 50003)
            ]
        );
        let d = build(
            &zp(json!({"mode": "SingleRouter"})),
            &Capabilities::default(),
        )
        .unwrap();
        let names: Vec<_> = d
            .service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .map(|p| p.name.unwrap())
            .collect();
        assert_eq!(names, ["frontend"]);
        assert_eq!(
            d.config_map.data.unwrap()["ZMQ_PROXY_MODE"],
            "single-router"
        );
    }

    #[test]
    fn pdb_is_policy_v1_unless_disabled() {
        let caps = Capabilities::default();
        let d = build(&zp(json!({})), &caps).unwrap();
        let pdb = d.pdb.unwrap();
        assert_eq!((pdb.group.as_str(), pdb.version.as_str()), ("policy", "v1"));
        assert_eq!(pdb.object["apiVersion"], "policy/v1");
        assert_eq!(pdb.object["spec"]["maxUnavailable"], 1);
        let d = build(
            &zp(json!({"podDisruptionBudget": {"enabled": false}})),
            &caps,
        )
        .unwrap();
        assert!(d.pdb.is_none());
    }

    #[test]
    fn monitors_only_when_served_and_asked_for() {
        let spec = json!({"monitoring": {"serviceMonitor": true, "podMonitor": true}});
        let d = build(&zp(spec.clone()), &Capabilities::default()).unwrap();
        assert!(d.service_monitor.is_none() && d.pod_monitor.is_none());
        assert_eq!(
            d.missing,
            [MissingApi::ServiceMonitor, MissingApi::PodMonitor]
        );
        let caps = Capabilities {
            service_monitor: true,
            pod_monitor: true,
        };
        let d = build(&zp(spec), &caps).unwrap();
        assert!(d.missing.is_empty());
        assert_eq!(
            d.service_monitor.unwrap().object["spec"]["endpoints"][0]["port"],
            "metrics"
        );
        assert_eq!(d.pod_monitor.unwrap().kind, "PodMonitor");
        assert!(d.metrics_service.unwrap().spec.unwrap().selector.is_some());
        let d = build(&zp(json!({})), &caps).unwrap();
        assert!(d.service_monitor.is_none() && d.metrics_service.is_none());
    }

    #[test]
    fn local_publisher_daemonset_is_optional() {
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        assert!(d.daemon_set.is_none());
        let d = build(
            &zp(json!({"localPublisher": {"enabled": true}})),
            &Capabilities::default(),
        )
        .unwrap();
        let ds = d.daemon_set.unwrap();
        assert_eq!(ds.metadata.name.as_deref(), Some("alpha-local-publisher"));
        let pod = ds.spec.unwrap().template.spec.unwrap();
        let env = env_of(&pod.containers[0]);
        assert_eq!(
            env["ZMQ_PROXY_LOCAL_PUBLISHER"].value.as_deref(),
            Some("true")
        );
        let port = &pod.containers[0].ports.as_ref().unwrap()[0];
        assert_eq!((port.container_port, port.host_port), (50004, Some(50004)));
    }

    #[test]
    fn redis_url_comes_from_the_secret() {
        let d = build(
            &zp(json!({"matchmaker": {"redisUrlSecret": {"name": "redis", "key": "url"}}})),
            &Capabilities::default(),
        )
        .unwrap();
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

    #[test]
    fn selector_string_matches_the_deployment_selector() {
        let d = build(&zp(json!({})), &Capabilities::default()).unwrap();
        let labels = d.deployment.spec.unwrap().selector.match_labels.unwrap();
        let s: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(selector_string("alpha"), s.join(","));
    }
}
