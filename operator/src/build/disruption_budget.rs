//! The PodDisruptionBudget of the proxy pods (policy/v1, served by every
//! supported Kubernetes), applied as JSON like the other optional children.

use serde_json::json;

use super::names::{child_meta, child_name, selector_labels, PROXY};
use super::DynamicChild;
use crate::kinds::POD_DISRUPTION_BUDGET;
use crate::validate::Validated;

/// The budget, unless spec.podDisruptionBudget turns it off.
pub fn pod_disruption_budget(zp: &Validated) -> Option<DynamicChild> {
    let budget = &zp.spec.pod_disruption_budget;
    budget.enabled.then(|| {
        DynamicChild::new(
            &POD_DISRUPTION_BUDGET,
            child_meta(zp, child_name(&zp.name), PROXY),
            json!({
                "maxUnavailable": budget.max_unavailable,
                "selector": { "matchLabels": selector_labels(&zp.name, PROXY) },
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::build::{build, Capabilities};
    use crate::validate::tests::validated;

    #[test]
    fn pdb_is_policy_v1_unless_disabled() {
        let caps = Capabilities::default();
        let d = build(&validated(json!({})), &caps, None);
        let pdb = d.pdb.unwrap();
        assert_eq!((pdb.kind.group, pdb.kind.version), ("policy", "v1"));
        assert_eq!(pdb.object["apiVersion"], "policy/v1");
        assert_eq!(pdb.object["spec"]["maxUnavailable"], 1);
        let d = build(
            &validated(json!({"podDisruptionBudget": {"enabled": false}})),
            &caps,
            None,
        );
        assert!(d.pdb.is_none());
    }
}
