//! The registration Service: headless and selector-less, so that the
//! EndpointSlice controller leaves it alone and the slices the proxies write
//! themselves are its endpoints (and its DNS names).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{child_meta, child_name, PROXY};
use crate::crd::{ProxyMode, ZmqProxySpec};
use crate::validate::Validated;

/// A named TCP port forwarded to the same container port.
pub fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// The ZeroMQ listeners a proxy of `spec` opens, by port name: the backend
/// only in DoubleRouter mode, the publisher only with pub/sub. The names are
/// the ones the proxies register in their EndpointSlices.
pub fn listener_ports(spec: &ZmqProxySpec) -> Vec<(&'static str, i32)> {
    let mut ports = vec![("frontend", spec.ports.frontend)];
    if spec.mode == ProxyMode::DoubleRouter {
        ports.push(("backend", spec.ports.backend));
    }
    if spec.pub_sub.enabled {
        ports.push(("publisher", spec.ports.publisher));
    }
    ports
}

/// The headless Service named after the ZmqProxy, with a port for each
/// listener in use.
pub fn headless_service(zp: &Validated) -> Service {
    let ports = listener_ports(&zp.spec)
        .into_iter()
        .map(|(name, port)| service_port(name, port))
        .collect();
    Service {
        metadata: child_meta(zp, child_name(&zp.name), PROXY),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::build::{build, Capabilities};
    use crate::validate::tests::validated;

    #[test]
    fn service_is_headless_selectorless_with_named_ports() {
        let d = build(
            &validated(json!({"pubSub": {"enabled": true}})),
            &Capabilities::default(),
            None,
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
            None,
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
}
