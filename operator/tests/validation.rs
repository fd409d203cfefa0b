//! Every validation rule on a real API server: the schema rules (1.20
//! enforces OpenAPI v3: types, enums, ranges, patterns, required) reject the
//! bad object at the door; the cross-field rules the schema cannot express
//! are reported in the status. A valid neighbour keeps reconciling
//! throughout.

mod common;

use anyhow::{bail, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_rejects_bad_specs_and_status_reports_cross_field_rules() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-valid").await?;
    let op = Operator::start(cp, &OperatorOptions::new(cp, &ns))?;
    let result = with_log(validation(&client, &ns).await, &op);
    op.process
        .terminate(std::time::Duration::from_secs(10))
        .await;
    result
}

async fn validation(client: &kube::Client, ns: &str) -> Result<()> {
    // The valid neighbour.
    create_zp(client, ns, "good", json!({ "replicas": 1 })).await?;

    let rejected = [
        ("replicas-negative", json!({ "replicas": -1 })),
        ("replicas-too-many", json!({ "replicas": 1001 })),
        ("replicas-wrong-type", json!({ "replicas": "two" })),
        ("mode-unknown", json!({ "mode": "TripleRouter" })),
        ("port-zero", json!({ "ports": { "frontend": 0 } })),
        ("port-too-high", json!({ "ports": { "metrics": 70000 } })),
        ("pubsub-not-bool", json!({ "pubSub": { "enabled": "yes" } })),
        (
            "lp-port",
            json!({ "localPublisher": { "enabled": true, "port": 65536 } }),
        ),
        (
            "expire-zero",
            json!({ "matchmaker": { "targetExpireSeconds": 0 } }),
        ),
        (
            "secret-no-key",
            json!({ "matchmaker": { "redisUrlSecret": { "name": "redis" } } }),
        ),
        (
            "secret-bad-name",
            json!({ "matchmaker": { "redisUrlSecret": { "name": "Bad_Name", "key": "url" } } }),
        ),
        ("hwm-negative", json!({ "socket": { "hwm": -5 } })),
        ("linger-low", json!({ "socket": { "lingerMs": -2 } })),
        (
            "keepalive-enum",
            json!({ "socket": { "tcpKeepalive": "Sometimes" } }),
        ),
        ("grace-too-long", json!({ "gracePeriodSeconds": 4000 })),
        ("prestop-negative", json!({ "preStopDelaySeconds": -1 })),
        ("image-space", json!({ "image": "bad image" })),
        ("image-empty", json!({ "image": "" })),
        ("pull-policy", json!({ "imagePullPolicy": "Sometimes" })),
        (
            "pdb-zero",
            json!({ "podDisruptionBudget": { "maxUnavailable": 0 } }),
        ),
        ("log-level", json!({ "logging": { "level": "loud" } })),
        ("log-format", json!({ "logging": { "format": "xml" } })),
        ("interval", json!({ "monitoring": { "interval": "soon" } })),
        ("spec-not-object", json!("all of it")),
    ];
    for (name, spec) in &rejected {
        match create_raw(client, ns, name, spec.clone()).await {
            Err(kube::Error::Api(s)) if s.code == 422 => {}
            Err(e) => bail!("{name}: expected 422 Invalid, got {e}"),
            Ok(()) => bail!("{name}: the API server accepted {spec}"),
        }
    }

    // Defaults are filled in by the API server.
    create_raw(client, ns, "defaults", json!({})).await?;
    let zp = kube::Api::<zmq_proxy_operator::crd::ZmqProxy>::namespaced(client.clone(), ns)
        .get("defaults")
        .await?;
    assert_eq!(zp.spec.replicas, 2);
    assert_eq!(zp.spec.ports.frontend, 50001);

    // Cross-field rules (no CEL on 1.20): accepted by the API server, then
    // reported in the status and not applied.
    create_raw(
        client,
        ns,
        "refresh-after-expiry",
        json!({ "matchmaker": { "targetExpireSeconds": 60, "targetUpdateSeconds": 120 } }),
    )
    .await?;
    create_raw(
        client,
        ns,
        "port-clash",
        json!({ "ports": { "frontend": 9090 } }),
    )
    .await?;
    for name in ["refresh-after-expiry", "port-clash"] {
        let zp = wait_zp(client, ns, name, "InvalidSpec in the status", SHORT, |z| {
            condition(z, "Degraded") == Some(("True".into(), "InvalidSpec".into()))
        })
        .await?;
        assert_eq!(condition(&zp, "Ready").map(|c| c.0), Some("False".into()));
        let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
        assert!(
            deps.get_opt(name).await?.is_none(),
            "{name}: applied despite an invalid spec"
        );
    }
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    harness::wait::until("an InvalidSpec warning event", SHORT, || async {
        let evs = events.list(&ListParams::default()).await?;
        Ok(evs
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")
            })
            .then_some(()))
    })
    .await?;

    // The neighbours were reconciled all along.
    for name in ["good", "defaults"] {
        wait_zp(client, ns, name, "observedGeneration", SHORT, |z| {
            z.status.as_ref().and_then(|s| s.observed_generation) == z.metadata.generation
        })
        .await?;
        let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
        assert!(
            deps.get_opt(name).await?.is_some(),
            "{name} has no Deployment"
        );
    }
    Ok(())
}
