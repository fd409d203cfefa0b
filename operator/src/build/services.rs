//! The registration Service: headless and selector-less, so that the
//! EndpointSlice controller leaves it alone and the slices the proxies write
//! themselves are its endpoints (and its DNS names).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names::{child_meta, child_name, PROXY};
use crate::crd::ProxyMode;
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

/// The headless Service named after the ZmqProxy, with a port for each
/// listener in use.
pub fn headless_service(zp: &Validated) -> Service {
    let spec = &zp.spec;
    let mut ports = vec![service_port("frontend", spec.ports.frontend)];
    if spec.mode == ProxyMode::DoubleRouter {
        ports.push(service_port("backend", spec.ports.backend));
    }
    if spec.pub_sub.enabled {
        ports.push(service_port("publisher", spec.ports.publisher));
    }
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
