//! A ZmqProxy that does not deserialize (stored while the schema was looser,
//! as after a CRD change) must not stall the controller: it gets a Warning
//! event, and the valid objects next to it are reconciled.

mod common;

use anyhow::Result;
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceValidation, JSONSchemaProps,
};
use kube::api::{Api, ListParams};
use kube::CustomResourceExt;
use serde_json::json;
use zmq_proxy_operator::crd::ZmqProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_object_does_not_stall_the_controller() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    let ns = cp.namespace("op-malformed").await?;

    // A loose schema first: anything goes into spec.
    let mut loose: CustomResourceDefinition = ZmqProxy::crd();
    for v in &mut loose.spec.versions {
        v.schema = Some(CustomResourceValidation {
            open_api_v3_schema: Some(JSONSchemaProps {
                type_: Some("object".into()),
                x_kubernetes_preserve_unknown_fields: Some(true),
                ..Default::default()
            }),
        });
    }
    install_crd_object(&client, &loose).await?;
    create_raw(
        &client,
        &ns,
        "broken",
        json!({ "replicas": 1, "mode": 42, "ports": { "frontend": "high" } }),
    )
    .await?;
    // Then the real schema; the stored object stays as it is.
    install_crd(&client).await?;
    create_zp(&client, &ns, "healthy", json!({ "replicas": 0 })).await?;

    let op = Operator::start(cp, &OperatorOptions::new(cp, &ns))?;
    let result = with_log(
        async {
            let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            harness::wait::until("the healthy neighbour reconciled", SHORT, || async {
                Ok(deps.get_opt("healthy").await?)
            })
            .await?;
            let events: Api<Event> = Api::namespaced(client.clone(), &ns);
            harness::wait::until(
                "an InvalidObject warning for the broken one",
                SHORT,
                || async {
                    let evs = events.list(&ListParams::default()).await?;
                    Ok(evs
                        .items
                        .iter()
                        .any(|e| {
                            e.reason.as_deref() == Some("InvalidObject")
                                && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                                    == Some("broken")
                        })
                        .then_some(()))
                },
            )
            .await?;
            // The controller keeps going: a new object after the broken one.
            create_zp(&client, &ns, "later", json!({ "replicas": 0 })).await?;
            harness::wait::until("a later object reconciled", SHORT, || async {
                Ok(deps.get_opt("later").await?)
            })
            .await?;
            anyhow::ensure!(
                deps.get_opt("broken").await?.is_none(),
                "the broken object was applied"
            );
            Ok(())
        }
        .await,
        &op,
    );
    op.process
        .terminate(std::time::Duration::from_secs(10))
        .await;
    result
}
