//! The kinds the operator handles by group/version/kind/plural rather than
//! through a k8s-openapi type: the optional children applied as JSON
//! (PodDisruptionBudget, ServiceMonitor, PodMonitor), the kinds orphan
//! cleanup lists, and the proxies' EndpointSlices. One table, so that the
//! builders, the cleanup and the watches cannot disagree on a plural.

use kube::core::{ApiResource, GroupVersionKind};

/// One API kind, as the API server's URL paths name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kind {
    /// API group ("" for core).
    pub group: &'static str,
    /// Version without the group.
    pub version: &'static str,
    /// Kind, as in an object's `kind`.
    pub kind: &'static str,
    /// Plural resource name, as in URL paths and RBAC rules.
    pub plural: &'static str,
}

impl Kind {
    /// The object's `apiVersion`: `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kube-rs descriptor for dynamic [`kube::Api`]s.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// core/v1 Service.
pub const SERVICE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
};

/// apps/v1 DaemonSet.
pub const DAEMON_SET: Kind = Kind {
    group: "apps",
    version: "v1",
    kind: "DaemonSet",
    plural: "daemonsets",
};

/// policy/v1 PodDisruptionBudget (served by every supported Kubernetes).
pub const POD_DISRUPTION_BUDGET: Kind = Kind {
    group: "policy",
    version: "v1",
    kind: "PodDisruptionBudget",
    plural: "poddisruptionbudgets",
};

/// discovery.k8s.io/v1 EndpointSlice, read as JSON by
/// [`crate::status::endpoints_from_slices`].
pub const ENDPOINT_SLICE: Kind = Kind {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
};

/// The Prometheus Operator's ServiceMonitor (optional, discovered).
pub const SERVICE_MONITOR: Kind = Kind {
    group: "monitoring.coreos.com",
    version: "v1",
    kind: "ServiceMonitor",
    plural: "servicemonitors",
};

/// The Prometheus Operator's PodMonitor (optional, discovered).
pub const POD_MONITOR: Kind = Kind {
    group: "monitoring.coreos.com",
    version: "v1",
    kind: "PodMonitor",
    plural: "podmonitors",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_name_the_group_except_for_core() {
        assert_eq!(SERVICE.api_version(), "v1");
        assert_eq!(POD_DISRUPTION_BUDGET.api_version(), "policy/v1");
        let ar = SERVICE_MONITOR.api_resource();
        assert_eq!(ar.api_version, "monitoring.coreos.com/v1");
        assert_eq!(ar.plural, "servicemonitors");
    }
}
