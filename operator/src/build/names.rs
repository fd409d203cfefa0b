//! Names and labels of the children: what each child of a ZmqProxy is
//! called, the labels that select its pods, the labels every child carries
//! (orphan cleanup and the controller's watches select by them), and the
//! metadata every child starts from.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::validate::Validated;

/// The operator's field manager and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "zmq-proxy-operator";

/// Component label of the proxy pods (and of every child but the DaemonSet).
pub const PROXY: &str = "proxy";
/// Component label of the local-publisher pods.
pub const LOCAL_PUBLISHER: &str = "local-publisher";

/// Name of every per-instance child (Deployment, Service, ServiceAccount, ...).
pub fn child_name(zp_name: &str) -> String {
    zp_name.to_string()
}

/// Name of the local-publisher DaemonSet.
pub fn daemon_set_name(zp_name: &str) -> String {
    format!("{zp_name}-local-publisher")
}

/// Name of the metrics Service.
pub fn metrics_service_name(zp_name: &str) -> String {
    format!("{zp_name}-metrics")
}

/// Name of the ConfigMap.
pub fn config_map_name(zp_name: &str) -> String {
    format!("{zp_name}-config")
}

/// Labels that select one instance's proxy pods (stable for a Deployment's life).
pub fn selector_labels(zp_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "zmq-proxy".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            zp_name.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            component.to_string(),
        ),
    ])
}

/// The label selector string of the proxy pods (status.selector, for scale).
pub fn selector_string(zp_name: &str) -> String {
    selector_labels(zp_name, PROXY)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels every child carries; the label selector for orphan cleanup is
/// [`instance_selector`].
pub fn common_labels(zp_name: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(zp_name, component);
    labels.insert("app.kubernetes.io/part-of".into(), "zmq-proxy".into());
    labels.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    labels
}

/// Label selector matching every child of one instance.
pub fn instance_selector(zp_name: &str) -> String {
    format!("app.kubernetes.io/instance={zp_name},app.kubernetes.io/managed-by={MANAGER}")
}

/// Label selector of the children the controller watches: only ours, to keep
/// memory and traffic independent of the rest of the cluster.
pub fn managed_selector() -> String {
    format!("app.kubernetes.io/managed-by={MANAGER}")
}

/// Metadata of a child called `name` of component `component`: namespaced
/// with its ZmqProxy, labelled, owned by it.
pub fn child_meta(zp: &Validated, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(zp.namespace.clone()),
        labels: Some(common_labels(&zp.name, component)),
        owner_references: Some(vec![zp.owner.clone()]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::validated;
    use serde_json::json;

    #[test]
    fn children_are_owned_labelled_and_namespaced() {
        let m = child_meta(&validated(json!({})), child_name("alpha"), PROXY);
        assert_eq!(m.namespace.as_deref(), Some("ns1"));
        let labels = m.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "alpha");
        assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        assert_eq!(m.owner_references.unwrap()[0].uid, "uid-1");
    }

    #[test]
    fn selectors_are_label_subsets() {
        let common = common_labels("alpha", PROXY);
        for (k, v) in selector_labels("alpha", PROXY) {
            assert_eq!(common[&k], v);
        }
        assert_eq!(
            instance_selector("alpha"),
            "app.kubernetes.io/instance=alpha,app.kubernetes.io/managed-by=zmq-proxy-operator"
        );
    }
}
