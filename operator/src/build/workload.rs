//! The proxy workloads: the Deployment of proxies, the optional
//! local-publisher DaemonSet, and the pod template both share (container,
//! probes, pod security, termination timing, the configuration-hash
//! annotation that rolls pods when the configuration changes).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec, DeploymentStrategy,
    RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities as LinuxCapabilities, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource,
    EnvVar, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{
    child_meta, child_name, common_labels, config_map_name, daemon_set_name, selector_labels,
    LOCAL_PUBLISHER, PROXY,
};
use super::proxy_env::{local_publisher_env, pod_env};
use super::services::listener_ports;
use crate::validate::Validated;

/// Pod-template annotation holding the hash of the proxy configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "zmqproxy.io/config-hash";
/// UID and GID the proxy runs as (the distroless `nonroot` user).
const NON_ROOT_ID: i64 = 65532;
/// Seconds added to the proxy's drain time before the kubelet SIGKILLs it:
/// deregistration and socket close need a moment after the drain ends.
const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// The proxies: surge-first rolling updates, spread over nodes unless the
/// spec says otherwise. `hash` is the configuration hash of the ConfigMap.
pub fn deployment(zp: &Validated, hash: &str) -> Deployment {
    let spec = &zp.spec;
    let mut ports: Vec<ContainerPort> = listener_ports(spec)
        .into_iter()
        .map(|(name, port)| container_port(name, port))
        .collect();
    ports.push(container_port("metrics", spec.ports.metrics));
    let container = proxy_container(zp, Vec::new(), ports);
    let mut template = pod_template(zp, PROXY, hash, container);
    if let Some(pod) = template.spec.as_mut() {
        pod.topology_spread_constraints = Some(topology_spread(zp));
    }
    Deployment {
        metadata: child_meta(zp, child_name(&zp.name), PROXY),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&zp.name, PROXY)),
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

/// The spec's topology spread constraints, else one spreading the proxies
/// over nodes without ever blocking scheduling.
fn topology_spread(zp: &Validated) -> Vec<TopologySpreadConstraint> {
    zp.spec
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| {
            vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector_labels(&zp.name, PROXY)),
                    ..Default::default()
                }),
                ..Default::default()
            }]
        })
}

/// One local publisher per node, reachable on every node's IP at a fixed
/// port (spec.localPublisher).
pub fn local_publisher(zp: &Validated, hash: &str) -> DaemonSet {
    let port = zp.spec.local_publisher.port;
    let mut p = container_port("publisher", port);
    // hostPort makes the node-local publisher reachable on every node's IP
    // at a fixed port, which is what "one per node" clients connect to.
    p.host_port = Some(port);
    let ports = vec![p, container_port("metrics", zp.spec.ports.metrics)];
    let container = proxy_container(zp, local_publisher_env(zp), ports);
    let template = pod_template(zp, LOCAL_PUBLISHER, hash, container);
    DaemonSet {
        metadata: child_meta(zp, daemon_set_name(&zp.name), LOCAL_PUBLISHER),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(&zp.name, LOCAL_PUBLISHER)),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
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

fn proxy_container(zp: &Validated, extra_env: Vec<EnvVar>, ports: Vec<ContainerPort>) -> Container {
    let spec = &zp.spec;
    let mut env = pod_env(zp);
    env.extend(extra_env);
    Container {
        name: "zmq-proxy".into(),
        image: Some(zp.image.clone()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        env: Some(env),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(&zp.name),
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
    zp: &Validated,
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
    let mut labels = common_labels(&zp.name, component);
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
            service_account_name: Some(child_name(&zp.name)),
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
