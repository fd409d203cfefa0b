//! Every validation rule on a real API server: the OpenAPI v3 rules (types,
//! enums, ranges, patterns, required) and the cross-field CEL rules
//! (`x-kubernetes-validations`) reject the bad object at the door, each CEL
//! rule with its own message. Valid neighbours keep reconciling throughout.

mod common;

use anyhow::{bail, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schema_and_cel_rules_reject_bad_specs() -> Result<()> {
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
        (
            "curve-key-secret-name",
            json!({ "security": { "curve": { "keySecret": { "name": "Bad_Name" } } } }),
        ),
        (
            "curve-key-secret-no-name",
            json!({ "security": { "curve": { "keySecret": { "key": "k" } } } }),
        ),
        (
            "curve-enabled-not-bool",
            json!({ "security": { "curve": { "enabled": "yes" } } }),
        ),
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

    // Cross-field rules (CEL): rejected at the door with the rule's message.
    let cel = [
        (
            "refresh-after-expiry",
            json!({ "matchmaker": { "targetExpireSeconds": 60, "targetUpdateSeconds": 120 } }),
            "matchmaker.targetUpdateSeconds must be below targetExpireSeconds",
        ),
        (
            // The defaulted update interval (180 s) against a shorter expiry.
            "default-refresh-after-expiry",
            json!({ "matchmaker": { "targetExpireSeconds": 100 } }),
            "matchmaker.targetUpdateSeconds must be below targetExpireSeconds",
        ),
        (
            "frontend-is-metrics",
            json!({ "ports": { "frontend": 9090 } }),
            "ports.frontend and ports.metrics must differ",
        ),
        (
            "backend-is-frontend",
            json!({ "ports": { "backend": 50001 } }),
            "ports.backend must differ from ports.frontend and ports.metrics in DoubleRouter mode",
        ),
        (
            "publisher-is-backend",
            json!({ "pubSub": { "enabled": true }, "ports": { "publisher": 50002 } }),
            "ports.publisher must differ from the other ports in use when pubSub is enabled",
        ),
        (
            "curve-without-authorized-keys",
            json!({ "security": { "curve": { "enabled": true } } }),
            "security.curve.authorizedKeys is required when CURVE is enabled",
        ),
        (
            // A null is as absent as a missing field.
            "curve-null-authorized-keys",
            json!({ "security": { "curve": { "enabled": true, "authorizedKeys": null } } }),
            "security.curve.authorizedKeys is required when CURVE is enabled",
        ),
        (
            "curve-no-authorized-source",
            json!({ "security": { "curve": { "enabled": true, "authorizedKeys": {} } } }),
            "security.curve.authorizedKeys needs exactly one of secret and configMap",
        ),
        (
            "curve-two-authorized-sources",
            json!({ "security": { "curve": { "enabled": true, "authorizedKeys": {
                "secret": { "name": "a" }, "configMap": { "name": "b" } } } } }),
            "security.curve.authorizedKeys needs exactly one of secret and configMap",
        ),
        (
            "curve-local-publisher",
            json!({ "pubSub": { "enabled": true }, "localPublisher": { "enabled": true },
                    "security": { "curve": { "enabled": true,
                        "authorizedKeys": { "secret": { "name": "a" } } } } }),
            "the local publisher does not support CURVE yet",
        ),
    ];
    for (name, spec, message) in &cel {
        match create_raw(client, ns, name, spec.clone()).await {
            Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains(message) => {}
            Err(e) => bail!("{name}: expected 422 with {message:?}, got {e}"),
            Ok(()) => bail!("{name}: the API server accepted {spec}"),
        }
    }
    // The same ports are fine where the listener is off: no backend in
    // SingleRouter mode, no publisher without pub/sub.
    create_raw(
        client,
        ns,
        "single-router-backend-unused",
        json!({ "mode": "SingleRouter", "ports": { "backend": 50001 } }),
    )
    .await?;
    create_raw(
        client,
        ns,
        "publisher-unused",
        json!({ "ports": { "publisher": 50001 } }),
    )
    .await?;
    // CURVE off needs no authorized keys.
    create_raw(
        client,
        ns,
        "curve-off",
        json!({ "security": { "curve": { "enabled": false } } }),
    )
    .await?;
    // An update is checked as well: a valid object cannot be patched into a
    // clash.
    let zps = Api::<zmq_proxy_operator::crd::ZmqProxy>::namespaced(client.clone(), ns);
    let patch = json!({ "spec": { "matchmaker": { "targetUpdateSeconds": 400 } } });
    match zps
        .patch("good", &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("must be below") => {}
        other => bail!("patching good into a clash: expected 422, got {other:?}"),
    }

    // The neighbours were reconciled all along.
    for name in [
        "good",
        "defaults",
        "single-router-backend-unused",
        "publisher-unused",
        "curve-off",
    ] {
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

/// `kubectl explain` reads the CRD's published OpenAPI: field descriptions,
/// types and nested fields, as a user browsing the API sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_shows_the_spec() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let kubectl = harness::tools::kubectl()?;
    // The API server publishes a new CRD's OpenAPI a moment after it is
    // established; explain fails until then.
    let text = harness::wait::until("kubectl explain zp.spec", SHORT, || async {
        let out = tokio::process::Command::new(&kubectl)
            .arg("--kubeconfig")
            .arg(cp.kubeconfig())
            .args(["explain", "zp.spec"])
            .output()
            .await?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })
    .await?;
    for needle in [
        "KIND:       ZmqProxy",
        "VERSION:    v1alpha1",
        "replicas\t<integer>",
        "Number of proxy pods.",
        "mode\t<string>",
        "matchmaker\t<Object>",
    ] {
        anyhow::ensure!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
    let out = tokio::process::Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["explain", "zmqproxies.spec.matchmaker.targetUpdateSeconds"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success() && text.contains("must be below") && text.contains("<integer>"),
        "explain targetUpdateSeconds: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
