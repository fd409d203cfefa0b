//! The status step's I/O: reads back what the status is computed from (the
//! applied Deployment, the proxies' EndpointSlices), computes it with
//! [`crate::status`] and writes the status subresource when it changed.
//! Status comes only from applied and observed children, never from the spec
//! (the CURVE public key too: the Deployment's pod template carries it).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::Client;
use serde_json::json;

use crate::build::names::child_name;
use crate::build::{MissingApi, Validated};
use crate::crd::{ProxyEndpoint, ZmqProxy, ZmqProxyStatus};
use crate::curve::KeyProblem;
use crate::kinds::ENDPOINT_SLICE;
use crate::status::{self, Observed};

/// Computes the status of `zp` from its applied `deployment`, its registered
/// proxies and the monitoring kinds found `missing`, and writes it.
pub async fn update_status(
    client: &Client,
    zp: &ZmqProxy,
    validated: &Validated,
    deployment: Deployment,
    missing: Vec<MissingApi>,
) -> Result<(), kube::Error> {
    let observed = Observed {
        deployment: Some(deployment),
        missing_apis: missing,
        ..Default::default()
    };
    observe_and_write(client, zp, validated, observed).await
}

/// Reports a CURVE key `problem` (nothing was applied): the status of the
/// Deployment as it already is, if any, with the problem as the reason.
pub async fn report_curve_problem(
    client: &Client,
    zp: &ZmqProxy,
    validated: &Validated,
    problem: &KeyProblem,
) -> Result<(), kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &validated.namespace);
    let observed = Observed {
        deployment: deployments.get_opt(&child_name(&validated.name)).await?,
        curve_problem: Some(problem.to_string()),
        ..Default::default()
    };
    observe_and_write(client, zp, validated, observed).await
}

/// Adds the registered proxies to `observed`, computes the status and
/// writes it.
async fn observe_and_write(
    client: &Client,
    zp: &ZmqProxy,
    validated: &Validated,
    mut observed: Observed,
) -> Result<(), kube::Error> {
    observed.endpoints = read_endpoints(client, validated).await?;
    let new = status::compute(zp, &observed, Time(Timestamp::now()));
    write_status(client, zp, validated, &new).await
}

/// The proxies registered in the EndpointSlices of the headless Service.
async fn read_endpoints(
    client: &Client,
    zp: &Validated,
) -> Result<Vec<ProxyEndpoint>, kube::Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &zp.namespace,
        &ENDPOINT_SLICE.api_resource(),
    );
    let lp = ListParams::default().labels(&format!(
        "kubernetes.io/service-name={}",
        child_name(&zp.name)
    ));
    let slices = api.list(&lp).await?;
    let values: Vec<serde_json::Value> = slices.items.into_iter().map(|o| o.data).collect();
    Ok(status::endpoints_from_slices(&values))
}

/// Writes `new` unless the object already says so (an unchanged status is
/// not written, so a resync costs no write and no watch event).
async fn write_status(
    client: &Client,
    zp: &ZmqProxy,
    validated: &Validated,
    new: &ZmqProxyStatus,
) -> Result<(), kube::Error> {
    if zp.status.as_ref() == Some(new) {
        return Ok(());
    }
    let api: Api<ZmqProxy> = Api::namespaced(client.clone(), &validated.namespace);
    api.patch_status(
        &validated.name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": new })),
    )
    .await?;
    Ok(())
}
