//! The EndpointSlice a proxy pod writes about itself, and how readers turn
//! slices back into [`ProxyAddresses`]. Pure: no API calls here.
//!
//! The slice is the typed `discovery.k8s.io/v1` object (served by every
//! supported Kubernetes).
//!
//! Endpoint conditions: `ready`, `serving` and `terminating` are written true
//! to life (registered: true/true/false; draining: false/true/true, since a
//! draining proxy still forwards what reaches it, as a terminating pod's
//! endpoint does in Kubernetes' own slices). Readers skip an endpoint that is
//! not ready or is terminating.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

use super::PodIdentity;
use crate::curve::PublicKey;
use crate::matchmaker::ProxyAddresses;

/// Label naming the Service a slice belongs to (the ZmqProxy's headless Service).
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the writer of a slice; Kubernetes' own controller ignores
/// slices whose value is not its own.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// Our value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "zmq-proxy.zmqproxy.io";
/// Port names, as the operator's Service and clients without our library use them.
pub const FRONTEND_PORT: &str = "frontend";
/// See [`FRONTEND_PORT`].
pub const BACKEND_PORT: &str = "backend";
/// See [`FRONTEND_PORT`].
pub const PUBLISHER_PORT: &str = "publisher";
/// Annotation carrying the proxy's CURVE public key (Z85) when it runs
/// CURVE. Clients use it as the server key of their connection to this
/// proxy; it is as trustworthy as the right to write EndpointSlices in the
/// namespace, which is why a client can pin the key instead
/// ([`crate::rpc::CurveClient::server_key`]).
pub const CURVE_KEY_ANNOTATION: &str = "zmqproxy.io/curve-public-key";
/// `apiVersion` of the slices this backend writes and reads.
pub const API_VERSION: &str = "discovery.k8s.io/v1";

/// What the endpoint of a proxy says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Sockets bound and registered: clients should use it.
    Ready,
    /// Shutting down: still forwarding, but clients should move away.
    Terminating,
}

/// Labels selecting the slices of the proxies of `service` (ours only, not
/// those Kubernetes' controller may write for the same Service).
pub fn selector(service: &str) -> String {
    format!("{SERVICE_NAME_LABEL}={service},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// The owner reference that makes Kubernetes delete an object with its pod.
/// No `blockOwnerDeletion`: setting it would need update rights on the pod.
pub fn pod_owner(pod: &PodIdentity) -> Option<OwnerReference> {
    pod.uid.as_ref().map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name.clone(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// The slice proxy pod `pod` writes about itself: named after the pod, owned
/// by it, one endpoint at `address` with one port per socket the proxy has.
pub fn desired_slice(
    service: &str,
    namespace: &str,
    pod: &PodIdentity,
    address: IpAddr,
    proxy: &ProxyAddresses,
    state: EndpointState,
) -> EndpointSlice {
    let port = |name: &str, port: u16| EndpointPort {
        name: Some(name.into()),
        port: Some(i32::from(port)),
        protocol: Some("TCP".into()),
        app_protocol: None,
    };
    let mut ports = vec![port(FRONTEND_PORT, proxy.frontend_port)];
    ports.extend(proxy.backend_port.map(|p| port(BACKEND_PORT, p)));
    ports.extend(proxy.publisher_port.map(|p| port(PUBLISHER_PORT, p)));
    let conditions = match state {
        EndpointState::Ready => EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        },
        EndpointState::Terminating => EndpointConditions {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
        },
    };
    let labels = BTreeMap::from([
        (SERVICE_NAME_LABEL.to_string(), service.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ]);
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(pod.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            owner_references: pod_owner(pod).map(|o| vec![o]),
            annotations: proxy
                .curve_key
                .map(|key| BTreeMap::from([(CURVE_KEY_ANNOTATION.to_string(), key.to_z85())])),
            ..Default::default()
        },
        address_type: match address {
            IpAddr::V4(_) => "IPv4".into(),
            IpAddr::V6(_) => "IPv6".into(),
        },
        endpoints: vec![Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(conditions),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.name.clone()),
                namespace: Some(namespace.to_string()),
                uid: pod.uid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ports: Some(ports),
    }
}

/// The JSON body of `slice`, with apiVersion and kind set (what server-side
/// apply wants).
pub fn to_json(slice: &EndpointSlice) -> Result<Value, serde_json::Error> {
    serde_json::to_value(slice)
}

/// Parses a slice (as JSON) into the v1 type.
pub fn from_json(value: Value) -> Result<EndpointSlice, serde_json::Error> {
    serde_json::from_value(value)
}

/// The proxies a slice lists as ready: one per ready endpoint (its first
/// address; Kubernetes treats an endpoint's addresses as fungible), with
/// ports by name and the CURVE key of [`CURVE_KEY_ANNOTATION`]. A slice
/// without a frontend port lists none; a malformed key reads as none (a
/// CURVE client then has no key for that proxy and leaves it alone).
pub fn ready_proxies(slice: &EndpointSlice) -> Vec<ProxyAddresses> {
    let port = |name: &str| {
        slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    };
    let Some(frontend_port) = port(FRONTEND_PORT) else {
        return Vec::new();
    };
    let curve_key = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CURVE_KEY_ANNOTATION))
        .and_then(|z85| PublicKey::from_z85(z85).ok());
    slice
        .endpoints
        .iter()
        .filter(|e| is_ready(e))
        .filter_map(|e| e.addresses.first())
        .map(|host| ProxyAddresses {
            host: host.clone(),
            frontend_port,
            backend_port: port(BACKEND_PORT),
            publisher_port: port(PUBLISHER_PORT),
            curve_key,
        })
        .collect()
}

/// `ready` unset means ready (the API's own rule); `terminating` set means
/// going away even if a writer left `ready` set.
fn is_ready(endpoint: &Endpoint) -> bool {
    let c = endpoint.conditions.clone().unwrap_or_default();
    c.ready.unwrap_or(true) && !c.terminating.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> PodIdentity {
        PodIdentity {
            name: "zp-demo-7d9f-abcde".into(),
            uid: Some("0b6e4a3c-1111-2222-3333-444455556666".into()),
            ip: Some("10.1.2.3".into()),
        }
    }

    fn addresses() -> ProxyAddresses {
        ProxyAddresses {
            host: "10.1.2.3".into(),
            frontend_port: 50001,
            backend_port: Some(50002),
            publisher_port: Some(50003),
            curve_key: None,
        }
    }

    #[test]
    fn slice_names_owner_labels_ports_and_conditions() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let s = desired_slice(
            "zp-demo",
            "ns1",
            &pod(),
            ip,
            &addresses(),
            EndpointState::Ready,
        );
        let j = to_json(&s).unwrap();
        assert_eq!(j["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(j["kind"], "EndpointSlice");
        assert_eq!(j["metadata"]["name"], "zp-demo-7d9f-abcde");
        assert_eq!(j["metadata"]["labels"][SERVICE_NAME_LABEL], "zp-demo");
        assert_eq!(j["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        let owner = &j["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Pod");
        assert_eq!(owner["uid"], "0b6e4a3c-1111-2222-3333-444455556666");
        assert_eq!(owner.get("blockOwnerDeletion"), None);
        assert_eq!(j["addressType"], "IPv4");
        assert_eq!(j["endpoints"][0]["addresses"], json!(["10.1.2.3"]));
        assert_eq!(
            j["endpoints"][0]["conditions"],
            json!({"ready": true, "serving": true, "terminating": false})
        );
        let names: Vec<&str> = j["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["frontend", "backend", "publisher"]);
        assert_eq!(ready_proxies(&s), vec![addresses()]);

        let draining = desired_slice(
            "zp-demo",
            "ns1",
            &pod(),
            ip,
            &addresses(),
            EndpointState::Terminating,
        );
        assert_eq!(
            to_json(&draining).unwrap()["endpoints"][0]["conditions"],
            json!({"ready": false, "serving": true, "terminating": true})
        );
        assert_eq!(ready_proxies(&draining), vec![]);
    }

    #[test]
    fn single_router_ipv6_without_owner() {
        let p = ProxyAddresses {
            host: "fd00::5".into(),
            frontend_port: 6000,
            backend_port: None,
            publisher_port: None,
            curve_key: None,
        };
        let pod = PodIdentity { uid: None, ..pod() };
        let s = desired_slice(
            "svc",
            "ns",
            &pod,
            "fd00::5".parse().unwrap(),
            &p,
            EndpointState::Ready,
        );
        assert_eq!(s.address_type, "IPv6");
        assert_eq!(s.metadata.owner_references, None);
        assert_eq!(s.ports.as_ref().map(Vec::len), Some(1));
        assert_eq!(ready_proxies(&s), vec![p]);
    }

    #[test]
    fn the_curve_key_travels_in_an_annotation() {
        let key = PublicKey::from_z85("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7").unwrap();
        let p = ProxyAddresses {
            curve_key: Some(key),
            ..addresses()
        };
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let s = desired_slice("svc", "ns", &pod(), ip, &p, EndpointState::Ready);
        let j = to_json(&s).unwrap();
        assert_eq!(
            j["metadata"]["annotations"][CURVE_KEY_ANNOTATION],
            "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
        );
        assert_eq!(ready_proxies(&s), vec![p]);
        // No key, no annotation: server-side apply then removes one an
        // earlier CURVE run of the same pod wrote.
        let plain = desired_slice("svc", "ns", &pod(), ip, &addresses(), EndpointState::Ready);
        assert_eq!(plain.metadata.annotations, None);

        let mut broken = s.clone();
        broken.metadata.annotations = Some(BTreeMap::from([(
            CURVE_KEY_ANNOTATION.to_string(),
            "not a key".to_string(),
        )]));
        assert_eq!(ready_proxies(&broken), vec![addresses()]);
    }

    #[test]
    fn slice_without_frontend_lists_nothing() {
        let s = from_json(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "x"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}],
            "ports": [{"name": "http", "port": 80}]
        }))
        .unwrap();
        assert!(ready_proxies(&s).is_empty());
        assert_eq!(selector("svc"), "kubernetes.io/service-name=svc,endpointslice.kubernetes.io/managed-by=zmq-proxy.zmqproxy.io");
    }
}
