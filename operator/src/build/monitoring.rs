//! Prometheus integration: the metrics Service and ServiceMonitor, and the
//! PodMonitor, each only when asked for; the monitors only when the cluster
//! serves the Prometheus Operator's kinds, else a [`MissingApi`] for the
//! status to report. (The `prometheus.io/*` scrape annotations belong to the
//! pod template, [`super::workload`].)

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use serde_json::json;

use super::names::{
    child_meta, child_name, common_labels, metrics_service_name, selector_labels, PROXY,
};
use super::services::service_port;
use super::DynamicChild;
use crate::discovery::Capabilities;
use crate::kinds::{POD_MONITOR, SERVICE_MONITOR};
use crate::validate::Validated;

/// A monitoring problem the status must report: asked for but not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingApi {
    /// spec.monitoring.serviceMonitor is on but the CRD is not installed.
    ServiceMonitor,
    /// spec.monitoring.podMonitor is on but the CRD is not installed.
    PodMonitor,
}

/// The monitoring children of one ZmqProxy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Monitoring {
    /// Metrics Service for a ServiceMonitor (only with serviceMonitor on).
    pub metrics_service: Option<Service>,
    /// ServiceMonitor (optional, served and asked for).
    pub service_monitor: Option<DynamicChild>,
    /// PodMonitor (optional, served and asked for).
    pub pod_monitor: Option<DynamicChild>,
    /// Monitors asked for that the cluster does not serve.
    pub missing: Vec<MissingApi>,
}

/// The monitoring children `zp` asks for, as far as `caps` allows.
pub fn monitoring(zp: &Validated, caps: &Capabilities) -> Monitoring {
    let asked = &zp.spec.monitoring;
    let mut missing = Vec::new();
    let service_monitor = match (asked.service_monitor, caps.service_monitor) {
        (true, true) => Some(service_monitor(zp)),
        (true, false) => {
            missing.push(MissingApi::ServiceMonitor);
            None
        }
        (false, _) => None,
    };
    let pod_monitor = match (asked.pod_monitor, caps.pod_monitor) {
        (true, true) => Some(pod_monitor(zp)),
        (true, false) => {
            missing.push(MissingApi::PodMonitor);
            None
        }
        (false, _) => None,
    };
    Monitoring {
        metrics_service: asked.service_monitor.then(|| metrics_service(zp)),
        service_monitor,
        pod_monitor,
        missing,
    }
}

/// A Service with a selector, so that a ServiceMonitor finds the pods'
/// metrics port (the registration Service has no selector).
fn metrics_service(zp: &Validated) -> Service {
    Service {
        metadata: child_meta(zp, metrics_service_name(&zp.name), PROXY),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&zp.name, PROXY)),
            ports: Some(vec![service_port("metrics", zp.spec.ports.metrics)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service_monitor(zp: &Validated) -> DynamicChild {
    DynamicChild::new(
        &SERVICE_MONITOR,
        child_meta(zp, child_name(&zp.name), PROXY),
        json!({
            "selector": { "matchLabels": common_labels(&zp.name, PROXY) },
            "namespaceSelector": { "matchNames": [zp.namespace] },
            "endpoints": [{ "port": "metrics", "path": "/metrics", "interval": zp.spec.monitoring.interval }],
        }),
    )
}

fn pod_monitor(zp: &Validated) -> DynamicChild {
    DynamicChild::new(
        &POD_MONITOR,
        child_meta(zp, child_name(&zp.name), PROXY),
        json!({
            "selector": { "matchLabels": selector_labels(&zp.name, PROXY) },
            "namespaceSelector": { "matchNames": [zp.namespace] },
            "podMetricsEndpoints": [{ "port": "metrics", "path": "/metrics", "interval": zp.spec.monitoring.interval }],
        }),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::build::{build, Capabilities, MissingApi};
    use crate::validate::tests::validated;

    #[test]
    fn monitors_only_when_served_and_asked_for() {
        let spec = json!({"monitoring": {"serviceMonitor": true, "podMonitor": true}});
        let d = build(&validated(spec.clone()), &Capabilities::default(), None);
        assert!(d.service_monitor.is_none() && d.pod_monitor.is_none());
        assert_eq!(
            d.missing,
            [MissingApi::ServiceMonitor, MissingApi::PodMonitor]
        );
        let caps = Capabilities {
            service_monitor: true,
            pod_monitor: true,
        };
        let d = build(&validated(spec), &caps, None);
        assert!(d.missing.is_empty());
        assert_eq!(
            d.service_monitor.unwrap().object["spec"]["endpoints"][0]["port"],
            "metrics"
        );
        assert_eq!(d.pod_monitor.unwrap().kind.kind, "PodMonitor");
        assert!(d.metrics_service.unwrap().spec.unwrap().selector.is_some());
        let d = build(&validated(json!({})), &caps, None);
        assert!(d.service_monitor.is_none() && d.metrics_service.is_none());
    }
}
