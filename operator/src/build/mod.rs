//! The build step: one [`Validated`] ZmqProxy in, every desired child object
//! out ([`Desired`]). Pure and infallible: validation ([`crate::validate`])
//! already made sure every field it reads is there, and which optional kinds
//! the cluster serves is decided by [`crate::discovery`] and passed in as
//! [`Capabilities`]. Nothing here talks to an API server, so every rule about
//! the children (names, labels, owner references, pod security, probes, the
//! configuration hash that rolls pods) is unit-tested.
//!
//! One concept per module: [`names`] (names, labels, child metadata),
//! [`proxy_env`] (the env contract with the proxy and its ConfigMap),
//! [`workload`] (Deployment, DaemonSet, pod template), [`rbac`] (the proxy
//! pods' identity), [`services`] (the registration Service),
//! [`disruption_budget`] and [`monitoring`].

pub mod disruption_budget;
pub mod monitoring;
pub mod names;
pub mod proxy_env;
pub mod rbac;
pub mod services;
pub mod workload;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

pub use crate::discovery::Capabilities;
use crate::kinds::Kind;
pub use crate::validate::Validated;
pub use monitoring::MissingApi;

/// An optional child applied as JSON: ServiceMonitor and PodMonitor have no
/// k8s-openapi type, and the PodDisruptionBudget shares their
/// create-or-delete path.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicChild {
    /// Its kind, for the API path.
    pub kind: Kind,
    /// The whole object, apiVersion and kind included.
    pub object: Value,
}

impl DynamicChild {
    /// An object of `kind` with `metadata` and `spec`.
    pub fn new(kind: &Kind, metadata: ObjectMeta, spec: Value) -> Self {
        DynamicChild {
            kind: *kind,
            object: json!({
                "apiVersion": kind.api_version(),
                "kind": kind.kind,
                "metadata": metadata,
                "spec": spec,
            }),
        }
    }

    /// metadata.name of the object (always set by the builders).
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
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

/// Builds every desired child of `zp` for a cluster serving `caps`.
pub fn build(zp: &Validated, caps: &Capabilities) -> Desired {
    let env = proxy_env::proxy_env(zp);
    let hash = proxy_env::config_hash(&env);
    let monitoring = monitoring::monitoring(zp, caps);
    Desired {
        service_account: rbac::service_account(zp),
        role: rbac::role(zp),
        role_binding: rbac::role_binding(zp),
        config_map: proxy_env::config_map(zp, env),
        deployment: workload::deployment(zp, &hash),
        service: services::headless_service(zp),
        metrics_service: monitoring.metrics_service,
        daemon_set: zp
            .spec
            .local_publisher
            .enabled
            .then(|| workload::local_publisher(zp, &hash)),
        pdb: disruption_budget::pod_disruption_budget(zp),
        service_monitor: monitoring.service_monitor,
        pod_monitor: monitoring.pod_monitor,
        missing: monitoring.missing,
    }
}
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::names::{selector_string, MANAGER};
    use super::workload::CONFIG_HASH_ANNOTATION;
    use super::*;
    use crate::validate::tests::{validated, zp};
    use crate::validate::{default_proxy_image, validate};

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
        let d = build(&validated(json!({})), &Capabilities::default());
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
    fn role_grants_exactly_endpointslice_registration() {
        let d = build(&validated(json!({})), &Capabilities::default());
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
        let d = build(&validated(json!({"replicas": 3})), &Capabilities::default());
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
        let d = build(&validated(json!({})), &Capabilities::default());
        assert!(pod_spec(&d.deployment).containers[0].lifecycle.is_none());
    }

    #[test]
    fn spreads_over_nodes_by_default_and_honours_the_spec() {
        let d = build(&validated(json!({})), &Capabilities::default());
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
        );
        let tsc = pod_spec(&d.deployment)
            .topology_spread_constraints
            .clone()
            .unwrap();
        assert_eq!(tsc[0].topology_key, "topology.kubernetes.io/zone");
    }

    #[test]
    fn configuration_change_changes_the_hash_and_nothing_else_does() {
        let caps = Capabilities::default();
        let base = build(&validated(json!({})), &caps);
        let h = |d: &Desired| template_annotations(&d.deployment)[CONFIG_HASH_ANNOTATION].clone();
        // A configuration change: new hash, new pod template.
        let hwm = build(&validated(json!({"socket": {"hwm": 1000}})), &caps);
        assert_ne!(h(&base), h(&hwm));
        // Replicas, PDB and labels on the ZmqProxy leave the template alone.
        let mut labelled = zp(json!({"replicas": 7, "podDisruptionBudget": {"maxUnavailable": 2}}));
        labelled.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        let other = build(&validate(&labelled).unwrap(), &caps);
        assert_eq!(
            base.deployment.spec.as_ref().unwrap().template,
            other.deployment.spec.as_ref().unwrap().template
        );
        // Building twice is deterministic.
        assert_eq!(base, build(&validated(json!({})), &caps));
    }

    #[test]
    fn service_is_headless_selectorless_with_named_ports() {
        let d = build(
            &validated(json!({"pubSub": {"enabled": true}})),
            &Capabilities::default(),
        );
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
            &validated(json!({"mode": "SingleRouter"})),
            &Capabilities::default(),
        );
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
        let d = build(&validated(json!({})), &caps);
        let pdb = d.pdb.unwrap();
        assert_eq!((pdb.kind.group, pdb.kind.version), ("policy", "v1"));
        assert_eq!(pdb.object["apiVersion"], "policy/v1");
        assert_eq!(pdb.object["spec"]["maxUnavailable"], 1);
        let d = build(
            &validated(json!({"podDisruptionBudget": {"enabled": false}})),
            &caps,
        );
        assert!(d.pdb.is_none());
    }

    #[test]
    fn monitors_only_when_served_and_asked_for() {
        let spec = json!({"monitoring": {"serviceMonitor": true, "podMonitor": true}});
        let d = build(&validated(spec.clone()), &Capabilities::default());
        assert!(d.service_monitor.is_none() && d.pod_monitor.is_none());
        assert_eq!(
            d.missing,
            [MissingApi::ServiceMonitor, MissingApi::PodMonitor]
        );
        let caps = Capabilities {
            service_monitor: true,
            pod_monitor: true,
        };
        let d = build(&validated(spec), &caps);
        assert!(d.missing.is_empty());
        assert_eq!(
            d.service_monitor.unwrap().object["spec"]["endpoints"][0]["port"],
            "metrics"
        );
        assert_eq!(d.pod_monitor.unwrap().kind.kind, "PodMonitor");
        assert!(d.metrics_service.unwrap().spec.unwrap().selector.is_some());
        let d = build(&validated(json!({})), &caps);
        assert!(d.service_monitor.is_none() && d.metrics_service.is_none());
    }

    #[test]
    fn local_publisher_daemonset_is_optional() {
        let d = build(&validated(json!({})), &Capabilities::default());
        assert!(d.daemon_set.is_none());
        let d = build(
            &validated(json!({"localPublisher": {"enabled": true}})),
            &Capabilities::default(),
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
    fn redis_url_comes_from_the_secret() {
        let d = build(
            &validated(json!({"matchmaker": {"redisUrlSecret": {"name": "redis", "key": "url"}}})),
            &Capabilities::default(),
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

    #[test]
    fn selector_string_matches_the_deployment_selector() {
        let d = build(&validated(json!({})), &Capabilities::default());
        let labels = d.deployment.spec.unwrap().selector.match_labels.unwrap();
        let s: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(selector_string("alpha"), s.join(","));
    }
}
