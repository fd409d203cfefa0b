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
//! [`workload`] (Deployment, DaemonSet, pod template), [`curve`] (CURVE
//! keys in the pod template), [`rbac`] (the proxy
//! pods' identity), [`services`] (the registration Service),
//! [`disruption_budget`] and [`monitoring`].

pub mod curve;
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

use crate::curve::ProxyCurve;
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

/// Builds every desired child of `zp` for a cluster serving `caps`. `curve`
/// is the CURVE plan of `zp` with its public key, resolved by
/// [`crate::curve_secret`] (the one input that needs the API server);
/// `None` with CURVE off.
pub fn build(zp: &Validated, caps: &Capabilities, curve: Option<&ProxyCurve>) -> Desired {
    let env = proxy_env::proxy_env(zp);
    let hash = proxy_env::config_hash(&env);
    let monitoring = monitoring::monitoring(zp, caps);
    Desired {
        service_account: rbac::service_account(zp),
        role: rbac::role(zp),
        role_binding: rbac::role_binding(zp),
        config_map: proxy_env::config_map(zp, env),
        deployment: workload::deployment(zp, &hash, curve),
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
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};

    use super::names::MANAGER;
    use super::workload::CONFIG_HASH_ANNOTATION;
    use super::*;
    use crate::validate::tests::{validated, zp};
    use crate::validate::validate;

    pub(crate) fn pod_spec(d: &Deployment) -> &PodSpec {
        d.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    pub(crate) fn template_annotations(d: &Deployment) -> BTreeMap<String, String> {
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

    pub(crate) fn env_of(c: &Container) -> BTreeMap<String, EnvVar> {
        c.env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
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
    fn configuration_change_changes_the_hash_and_nothing_else_does() {
        let caps = Capabilities::default();
        let base = build(&validated(json!({})), &caps, None);
        let h = |d: &Desired| template_annotations(&d.deployment)[CONFIG_HASH_ANNOTATION].clone();
        // A configuration change: new hash, new pod template.
        let hwm = build(&validated(json!({"socket": {"hwm": 1000}})), &caps, None);
        assert_ne!(h(&base), h(&hwm));
        // Replicas, PDB and labels on the ZmqProxy leave the template alone.
        let mut labelled = zp(json!({"replicas": 7, "podDisruptionBudget": {"maxUnavailable": 2}}));
        labelled.metadata.labels = Some(BTreeMap::from([("team".into(), "a".into())]));
        let other = build(&validate(&labelled).unwrap(), &caps, None);
        assert_eq!(
            base.deployment.spec.as_ref().unwrap().template,
            other.deployment.spec.as_ref().unwrap().template
        );
        // Building twice is deterministic.
        assert_eq!(base, build(&validated(json!({})), &caps, None));
    }
}
