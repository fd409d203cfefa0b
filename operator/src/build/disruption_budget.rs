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
