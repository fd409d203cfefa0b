//! The apply step: makes the cluster hold the [`Desired`] children. Every
//! write is a server-side apply under one field manager ([`MANAGER`], forced,
//! so the operator owns the fields it sets); children the spec no longer
//! wants are deleted ([`remove_orphans`]). The order of the waves matters and
//! is documented at [`apply_all`].

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::{DynamicObject, NamespaceResourceScope};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::build::names::{child_name, instance_selector, MANAGER};
use crate::build::{Desired, DynamicChild, Validated};
use crate::discovery::Capabilities;
use crate::kinds::{self, Kind};

/// What a typed child is to the apply step: a namespaced k8s-openapi kind
/// that serializes for the patch and deserializes from the answer.
trait TypedChild:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Serialize
    + DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> TypedChild for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

/// Server-side applies `obj` in `ns`; returns the object as stored.
async fn apply_typed<K: TypedChild>(client: &Client, ns: &str, obj: &K) -> Result<K, kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(&name, &apply_params(), &Patch::Apply(obj)).await
}

/// Server-side applies `obj` when there is one.
async fn apply_optional<K: TypedChild>(
    client: &Client,
    ns: &str,
    obj: Option<&K>,
) -> Result<(), kube::Error> {
    match obj {
        Some(obj) => apply_typed(client, ns, obj).await.map(|_| ()),
        None => Ok(()),
    }
}

/// Server-side applies a child without a k8s-openapi type.
async fn apply_dynamic(client: &Client, ns: &str, child: &DynamicChild) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &child.kind.api_resource());
    api.patch(child.name(), &apply_params(), &Patch::Apply(&child.object))
        .await?;
    Ok(())
}

/// Orphan removal to run alongside the last wave of [`apply_all`], with what
/// to do once it succeeded (remember that this generation is clean).
pub struct Sweep<'a, F: FnOnce()> {
    /// What the cluster serves: kinds it does not serve hold no orphans.
    pub caps: &'a Capabilities,
    /// Called after every orphan is gone.
    pub done: F,
}

/// Applies every child of `desired`, and removes orphans when `sweep` says
/// so. Returns the Deployment as stored, for the status.
///
/// Identity and configuration go first, so the pods find them when they
/// start. The RoleBinding waits for its Role: the API server's escalation
/// check resolves the Role when the binding is written. Everything else
/// then goes at once.
pub async fn apply_all<F: FnOnce()>(
    client: &Client,
    zp: &Validated,
    desired: &Desired,
    sweep: Option<Sweep<'_, F>>,
) -> Result<Deployment, kube::Error> {
    let ns = zp.namespace.as_str();
    futures::try_join!(
        apply_typed::<ServiceAccount>(client, ns, &desired.service_account),
        apply_typed::<Role>(client, ns, &desired.role),
        apply_typed::<ConfigMap>(client, ns, &desired.config_map),
        apply_typed::<Service>(client, ns, &desired.service),
    )?;
    apply_typed::<RoleBinding>(client, ns, &desired.role_binding).await?;

    let dynamics = [&desired.pdb, &desired.service_monitor, &desired.pod_monitor];
    let dynamic = try_join_all(
        dynamics
            .into_iter()
            .flatten()
            .map(|c| apply_dynamic(client, ns, c)),
    );
    let orphans = async {
        if let Some(sweep) = sweep {
            remove_orphans(client, zp, desired, sweep.caps).await?;
            (sweep.done)();
        }
        Ok(())
    };
    let (deployment, ..) = futures::try_join!(
        apply_typed::<Deployment>(client, ns, &desired.deployment),
        apply_optional::<Service>(client, ns, desired.metrics_service.as_ref()),
        apply_optional::<DaemonSet>(client, ns, desired.daemon_set.as_ref()),
        dynamic,
        orphans,
    )?;
    Ok(deployment)
}

/// Deletes the children of `zp` that `desired` no longer holds: for each
/// optional kind it does not want, every child of that kind labelled for and
/// controlled by `zp` (but the names in `keep`).
pub async fn remove_orphans(
    client: &Client,
    zp: &Validated,
    desired: &Desired,
    caps: &Capabilities,
) -> Result<(), kube::Error> {
    // (kind, names of that kind still wanted)
    let mut unwanted: Vec<(Kind, Vec<String>)> = Vec::new();
    if desired.daemon_set.is_none() {
        unwanted.push((kinds::DAEMON_SET, vec![]));
    }
    if desired.metrics_service.is_none() {
        // The registration Service shares the kind and stays.
        unwanted.push((kinds::SERVICE, vec![child_name(&zp.name)]));
    }
    if desired.pdb.is_none() {
        unwanted.push((kinds::POD_DISRUPTION_BUDGET, vec![]));
    }
    if desired.service_monitor.is_none() && caps.service_monitor {
        unwanted.push((kinds::SERVICE_MONITOR, vec![]));
    }
    if desired.pod_monitor.is_none() && caps.pod_monitor {
        unwanted.push((kinds::POD_MONITOR, vec![]));
    }
    try_join_all(
        unwanted
            .iter()
            .map(|(kind, keep)| delete_orphans_of_kind(client, zp, kind, keep)),
    )
    .await?;
    Ok(())
}

/// Deletes the children of `kind` labelled for `zp` and controlled by it,
/// except those named in `keep`.
async fn delete_orphans_of_kind(
    client: &Client,
    zp: &Validated,
    kind: &Kind,
    keep: &[String],
) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &zp.namespace, &kind.api_resource());
    let lp = ListParams::default().labels(&instance_selector(&zp.name));
    let list = match api.list_metadata(&lp).await {
        Ok(list) => list,
        // A kind that stopped being served has nothing left to delete.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in list.items {
        let owned = child
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && o.uid == zp.uid());
        let name = child.metadata.name.clone().unwrap_or_default();
        if owned && !keep.contains(&name) {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: child.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(kind = %kind.kind, %name, "deleted a child no longer wanted")
                }
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}
