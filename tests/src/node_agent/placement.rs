//! Which node a pending pod asks for. The agent binds pods without a
//! scheduler, but a pod pinned to another node — a DaemonSet pod (required
//! node affinity on `metadata.name`) or a `kubernetes.io/hostname` node
//! selector — must be left for that node, or the DaemonSet controller would
//! delete and recreate it forever.

use k8s_openapi::api::core::v1::Pod;

/// True when `pod` names nodes and `node` is not one of them.
pub fn wants_other_node(pod: &Pod, node: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if let Some(host) = spec
        .node_selector
        .as_ref()
        .and_then(|s| s.get("kubernetes.io/hostname"))
    {
        if host != node {
            return true;
        }
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default();
    // Terms are ORed; a term restricts names only through a
    // `metadata.name In [...]` field requirement.
    let mut named_any = false;
    for term in terms {
        let names: Vec<&String> = term
            .match_fields
            .iter()
            .flatten()
            .filter(|r| r.key == "metadata.name" && r.operator == "In")
            .flat_map(|r| r.values.iter().flatten())
            .collect();
        if names.is_empty() {
            // A term that does not name nodes can match ours.
            return false;
        }
        named_any = true;
        if names.iter().any(|n| n.as_str() == node) {
            return false;
        }
    }
    named_any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" }, "spec": spec }))
            .unwrap()
    }

    #[test]
    fn daemonset_pods_go_to_their_node_only() {
        let p = pod(serde_json::json!({
            "containers": [],
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": ["node-a"] }] }]
            } } }
        }));
        assert!(!wants_other_node(&p, "node-a"));
        assert!(wants_other_node(&p, "node-b"));
    }

    #[test]
    fn hostname_selector_and_unpinned_pods() {
        let p = pod(
            serde_json::json!({ "containers": [], "nodeSelector": { "kubernetes.io/hostname": "node-a" } }),
        );
        assert!(wants_other_node(&p, "node-b"));
        assert!(!wants_other_node(&p, "node-a"));
        let free = pod(
            serde_json::json!({ "containers": [], "nodeSelector": { "kubernetes.io/os": "linux" } }),
        );
        assert!(!wants_other_node(&free, "node-b"));
    }
}
