//! Downward API field paths (`fieldRef.fieldPath`) resolved against a pod.

use k8s_openapi::api::core::v1::Pod;

/// The value of `path` for `pod` (whose IP the agent assigned), or `None` for
/// a path the agent does not support.
pub fn resolve(pod: &Pod, pod_ip: &str, host_ip: &str, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    match path {
        "metadata.name" => Some(meta.name.clone().unwrap_or_default()),
        "metadata.namespace" => Some(meta.namespace.clone().unwrap_or_default()),
        "metadata.uid" => Some(meta.uid.clone().unwrap_or_default()),
        "spec.nodeName" => Some(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
        ),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some(host_ip.to_string()),
        "metadata.labels" => Some(format_map(meta.labels.as_ref())),
        "metadata.annotations" => Some(format_map(meta.annotations.as_ref())),
        _ => {
            let (map, key) = if let Some(rest) = path.strip_prefix("metadata.labels['") {
                (meta.labels.as_ref(), rest)
            } else if let Some(rest) = path.strip_prefix("metadata.annotations['") {
                (meta.annotations.as_ref(), rest)
            } else {
                return None;
            };
            let key = key.strip_suffix("']")?;
            Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
        }
    }
}

/// `key="value"` lines, sorted, like the kubelet's downward API files.
fn format_map(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                labels: Some([("app".to_string(), "x".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn pod_identity_fields() {
        let p = pod();
        assert_eq!(
            resolve(&p, "127.0.0.9", "127.0.0.1", "metadata.name").as_deref(),
            Some("p")
        );
        assert_eq!(
            resolve(&p, "127.0.0.9", "127.0.0.1", "metadata.namespace").as_deref(),
            Some("ns")
        );
        assert_eq!(
            resolve(&p, "127.0.0.9", "127.0.0.1", "metadata.uid").as_deref(),
            Some("u-1")
        );
        assert_eq!(
            resolve(&p, "127.0.0.9", "127.0.0.1", "status.podIP").as_deref(),
            Some("127.0.0.9")
        );
        assert_eq!(
            resolve(&p, "127.0.0.9", "127.0.0.1", "status.hostIP").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            resolve(&p, "", "", "spec.serviceAccountName").as_deref(),
            Some("default")
        );
    }

    #[test]
    fn label_lookup_and_unknown_paths() {
        let p = pod();
        assert_eq!(
            resolve(&p, "", "", "metadata.labels['app']").as_deref(),
            Some("x")
        );
        assert_eq!(
            resolve(&p, "", "", "metadata.labels['none']").as_deref(),
            Some("")
        );
        assert_eq!(resolve(&p, "", "", "spec.bogus"), None);
    }
}
