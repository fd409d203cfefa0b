//! API discovery: which optional kinds the cluster serves. The decision
//! ([`decide`]) is pure; [`discover`] only asks the API server for the
//! groups involved. Kinds every supported Kubernetes (1.34 and later) serves
//! (policy/v1, discovery.k8s.io/v1) are not discovered.

use kube::discovery::{Discovery, Scope};
use kube::Client;

use crate::kinds::{Kind, POD_MONITOR, SERVICE_MONITOR};

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

/// The API groups whose served kinds matter to the operator.
pub const GROUPS: [&str; 1] = ["monitoring.coreos.com"];

/// One served resource: (group, version, plural).
pub type Served = (String, String, String);

/// Which Prometheus Operator kinds are served.
pub fn decide(served: &[Served]) -> Capabilities {
    let has = |k: &Kind| {
        served
            .iter()
            .any(|(g, v, p)| g == k.group && v == k.version && p == k.plural)
    };
    Capabilities {
        service_monitor: has(&SERVICE_MONITOR),
        pod_monitor: has(&POD_MONITOR),
    }
}

/// Asks the API server what it serves in [`GROUPS`] and decides.
pub async fn discover(client: Client) -> Result<Capabilities, kube::Error> {
    let discovery = Discovery::new(client).filter(&GROUPS).run().await?;
    let mut served = Vec::new();
    for group in discovery.groups() {
        for version in group.versions() {
            for (ar, caps) in group.versioned_resources(version) {
                if caps.scope == Scope::Namespaced {
                    served.push((ar.group.clone(), ar.version.clone(), ar.plural.clone()));
                }
            }
        }
    }
    Ok(decide(&served))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(g: &str, v: &str, p: &str) -> Served {
        (g.into(), v.into(), p.into())
    }

    #[test]
    fn no_prometheus_operator_means_no_monitors() {
        let caps = decide(&[s("policy", "v1", "poddisruptionbudgets")]);
        assert_eq!(caps, Capabilities::default());
    }

    #[test]
    fn monitors_when_installed() {
        let caps = decide(&[
            s("monitoring.coreos.com", "v1", "servicemonitors"),
            s("monitoring.coreos.com", "v1alpha1", "podmonitors"),
        ]);
        assert!(caps.service_monitor);
        assert!(!caps.pod_monitor);
    }
}
