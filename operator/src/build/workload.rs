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

use super::curve;
use super::names::{
    child_meta, child_name, common_labels, config_map_name, daemon_set_name, selector_labels,
    LOCAL_PUBLISHER, PROXY,
};
use super::proxy_env::{local_publisher_env, pod_env};
use super::services::listener_ports;
use crate::curve::ProxyCurve;
use crate::validate::Validated;

/// Pod-template annotation holding the hash of the proxy configuration.
pub const CONFIG_HASH_ANNOTATION: &str = "zmqproxy.io/config-hash";
/// UID and GID the proxy runs as (the distroless `nonroot` user).
const NON_ROOT_ID: i64 = 65532;
/// Seconds added to the proxy's drain time before the kubelet SIGKILLs it:
/// deregistration and socket close need a moment after the drain ends.
const TERMINATION_MARGIN_SECONDS: i64 = 5;

/// The proxies: surge-first rolling updates, spread over nodes unless the
/// spec says otherwise. `hash` is the configuration hash of the ConfigMap;
/// `curve` the CURVE settings with a key found good (CURVE on).
pub fn deployment(zp: &Validated, hash: &str, curve: Option<&ProxyCurve>) -> Deployment {
    let spec = &zp.spec;
    let mut ports: Vec<ContainerPort> = listener_ports(spec)
        .into_iter()
        .map(|(name, port)| container_port(name, port))
        .collect();
    ports.push(container_port("metrics", spec.ports.metrics));
    let extra_env = if curve.is_some() {
        curve::env()
    } else {
        Vec::new()
    };
    let container = proxy_container(zp, extra_env, ports);
    let mut template = pod_template(zp, PROXY, hash, container);
    if let Some(pod) = template.spec.as_mut() {
        pod.topology_spread_constraints = Some(topology_spread(zp));
    }
    if let Some(c) = curve {
        curve::add_to_template(&mut template, c, NON_ROOT_ID);
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    use crate::build::names::selector_string;
    use crate::build::tests::{env_of, pod_spec};
    use crate::build::{build, Capabilities};
    use crate::validate::default_proxy_image;
    use crate::validate::tests::validated;

    #[test]
    fn deployment_env_follows_the_contract() {
        let d = build(
            &validated(json!({"replicas": 3})),
            &Capabilities::default(),
            None,
        );
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
            &validated(json!({"gracePeriodSeconds": 20, "preStopDelaySeconds": 3})),
            &Capabilities::default(),
            None,
        );
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
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        assert!(pod_spec(&d.deployment).containers[0].lifecycle.is_none());
    }

    #[test]
    fn spreads_over_nodes_by_default_and_honours_the_spec() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        let tsc = pod_spec(&d.deployment)
            .topology_spread_constraints
            .clone()
            .unwrap();
        assert_eq!(tsc[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(tsc[0].max_skew, 1);
        let d = build(
            &validated(json!({"topologySpreadConstraints": [
                {"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
            ]})),
            &Capabilities::default(),
            None,
        );
        let tsc = pod_spec(&d.deployment)
            .topology_spread_constraints
            .clone()
            .unwrap();
        assert_eq!(tsc[0].topology_key, "topology.kubernetes.io/zone");
    }

    #[test]
    fn local_publisher_daemonset_is_optional() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        assert!(d.daemon_set.is_none());
        let d = build(
            &validated(json!({"localPublisher": {"enabled": true}})),
            &Capabilities::default(),
            None,
        );
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
    fn selector_string_matches_the_deployment_selector() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        let labels = d.deployment.spec.unwrap().selector.match_labels.unwrap();
        let s: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(selector_string("alpha"), s.join(","));
    }
}
