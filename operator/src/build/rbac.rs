//! The proxy pods' identity: a ServiceAccount, a Role granting exactly what
//! EndpointSlice registration needs, and the RoleBinding between them. (The
//! operator's own permissions, for the chart, are [`crate::rbac`].)

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::names::{child_meta, child_name, PROXY};
use crate::validate::Validated;

/// The Role rules of the proxy pods. Each verb, and why registration needs it:
/// - get: read back its own slice after a restart (same pod name, stale state);
/// - list, watch: clients and the proxy discover the other proxies without polling;
/// - create: register (one slice per pod);
/// - update, patch: mark ready / not ready / terminating, refresh on change;
/// - delete: deregister on SIGTERM before the pod object is gone.
///
/// Nothing on pods: POD_UID for the owner reference comes from the downward
/// API, and the slice's owner reference sets no blockOwnerDeletion, so no
/// permission on the Pod itself is needed.
pub fn proxy_role_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec!["discovery.k8s.io".into()]),
        resources: Some(vec!["endpointslices".into()]),
        verbs: [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ]
        .iter()
        .map(|v| v.to_string())
        .collect(),
        ..Default::default()
    }]
}

/// The ServiceAccount the proxy pods run as.
pub fn service_account(zp: &Validated) -> ServiceAccount {
    ServiceAccount {
        metadata: child_meta(zp, child_name(&zp.name), PROXY),
        ..Default::default()
    }
}

/// The Role granting [`proxy_role_rules`].
pub fn role(zp: &Validated) -> Role {
    Role {
        metadata: child_meta(zp, child_name(&zp.name), PROXY),
        rules: Some(proxy_role_rules()),
    }
}

/// Binds [`role`] to [`service_account`].
pub fn role_binding(zp: &Validated) -> RoleBinding {
    RoleBinding {
        metadata: child_meta(zp, child_name(&zp.name), PROXY),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: child_name(&zp.name),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: child_name(&zp.name),
            namespace: Some(zp.namespace.clone()),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::build::{build, Capabilities};
    use crate::validate::tests::validated;

    #[test]
    fn role_grants_exactly_endpointslice_registration() {
        let d = build(&validated(json!({})), &Capabilities::default(), None);
        let rules = d.role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].api_groups.as_deref(),
            Some(&["discovery.k8s.io".to_string()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["endpointslices".to_string()][..])
        );
        assert!(!rules[0]
            .verbs
            .iter()
            .any(|v| v == "*" || v == "deletecollection"));
        let subject = &d.role_binding.subjects.unwrap()[0];
        assert_eq!(
            (subject.kind.as_str(), subject.name.as_str()),
            ("ServiceAccount", "alpha")
        );
        assert_eq!(d.role_binding.role_ref.name, "alpha");
    }
}
