//! Kubernetes Events about a ZmqProxy, published best effort: an event that
//! cannot be written is logged and never fails a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::ObjectMeta;
use kube::runtime::events::{Event, EventType};
use kube::Resource;

use crate::context::Context;
use crate::crd::ZmqProxy;

fn object_reference(meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(ZmqProxy::api_version(&()).into_owned()),
        kind: Some(ZmqProxy::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

/// Publishes an event about the ZmqProxy with metadata `meta`.
pub async fn publish(
    ctx: &Context,
    meta: &ObjectMeta,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &object_reference(meta)).await {
        // Events are best effort: never fail a reconcile for one.
        tracing::debug!(error = %e, "publishing an event failed");
    }
}
