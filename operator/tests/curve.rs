//! CURVE on a real API server, the operator running with exactly the RBAC
//! the chart grants in a watched namespace (Secrets: get and create only):
//! - no keySecret: the operator generates `<name>-curve` once, owned by the
//!   ZmqProxy; the status and the pod template carry its public key, and
//!   another reconcile leaves the key alone;
//! - a named keySecret holding garbage: the status says CurveKeyInvalid, a
//!   Warning event says why, no Deployment is created, and a neighbour
//!   keeps reconciling; fixed, the key reaches status and template; changed
//!   to another key, the template follows (which rolls the pods).
//!
//! No pods run here: replicas are 0. Proxies using the mounted keys on a
//! real kubelet are tested with the proxy.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use harness::ControlPlane;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PodSpec, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use zmq_proxy_operator::crd::ZmqProxy;
use zmq_proxy_operator::rbac;

/// RFC 32's and libzmq's test server keypair.
const SECRET_A: &str = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";
const PUBLIC_A: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curve_keys_reach_status_and_pod_template() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let client = cp.client()?;
    install_crd(&client).await?;
    let ns = cp.namespace("op-curve").await?;
    let kubeconfig = namespaced_operator_identity(cp, &client, &ns).await?;
    let mut opts = OperatorOptions::new(cp, &ns);
    opts.kubeconfig = kubeconfig;
    let op = Operator::start(cp, &opts)?;
    let result = with_log(scenario(&client, &ns).await, &op);
    op.process.terminate(Duration::from_secs(10)).await;
    result
}

/// A ServiceAccount with the chart's namespaced RBAC in `ns` (the
/// operator's rules and the Lease rules), as a kubeconfig.
async fn namespaced_operator_identity(
    cp: &ControlPlane,
    client: &Client,
    ns: &str,
) -> Result<std::path::PathBuf> {
    let sa = "zmq-proxy-operator";
    let (_, kubeconfig) = cp.service_account_client(ns, sa).await?;
    for (name, rules) in [
        ("operator", rbac::operator_rules()),
        ("leader-election", rbac::leader_election_rules()),
    ] {
        Api::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &rbac::role(name, ns, rules))
            .await?;
        Api::<RoleBinding>::namespaced(client.clone(), ns)
            .create(
                &PostParams::default(),
                &RoleBinding {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        ..Default::default()
                    },
                    role_ref: RoleRef {
                        api_group: "rbac.authorization.k8s.io".into(),
                        kind: "Role".into(),
                        name: name.into(),
                    },
                    subjects: Some(vec![Subject {
                        kind: "ServiceAccount".into(),
                        name: sa.into(),
                        namespace: Some(ns.into()),
                        ..Default::default()
                    }]),
                },
            )
            .await?;
    }
    Ok(kubeconfig)
}

/// The public key of a Z85 secret key, as the proxy derives it.
fn public_of(secret_z85: &str) -> Result<String> {
    let key = zmq_proxy::curve::SecretKey::from_z85(secret_z85)
        .map_err(|e| anyhow::anyhow!("not a key: {e}"))?;
    Ok(key.public().to_z85())
}

fn pod(d: &Deployment) -> Result<&PodSpec> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("no pod template")
}

fn key_secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "secret-key".to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

async fn scenario(client: &Client, ns: &str) -> Result<()> {
    let zps: Api<ZmqProxy> = Api::namespaced(client.clone(), ns);
    let deps: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    // The authorized keys: the operator never reads them, the pods mount them.
    let peers = ConfigMap {
        metadata: ObjectMeta {
            name: Some("peers".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "authorized_keys".to_string(),
            format!("{PUBLIC_A} *\n"),
        )])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &peers)
        .await?;

    generated_key(&zps, &deps, &secrets, client, ns).await?;
    named_key(&zps, &deps, &secrets, client, ns).await
}

/// (a) No keySecret: a generated, owned Secret whose key is never replaced.
async fn generated_key(
    zps: &Api<ZmqProxy>,
    deps: &Api<Deployment>,
    secrets: &Api<Secret>,
    client: &Client,
    ns: &str,
) -> Result<()> {
    create_zp(
        client,
        ns,
        "gen",
        json!({"replicas": 0, "security": {"curve": {
            "enabled": true, "authorizedKeys": {"configMap": {"name": "peers"}}}}}),
    )
    .await?;
    let zp = wait_zp(client, ns, "gen", "status.curvePublicKey", SHORT, |z| {
        z.status
            .as_ref()
            .is_some_and(|s| s.curve_public_key.is_some())
    })
    .await?;
    let status_key = zp
        .status
        .as_ref()
        .and_then(|s| s.curve_public_key.clone())
        .context("no key")?;

    let secret = secrets.get("gen-curve").await?;
    let owner = secret
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.first())
        .context("generated Secret has no owner")?;
    ensure!(
        owner.controller == Some(true) && Some(&owner.uid) == zp.metadata.uid.as_ref(),
        "generated Secret not controlled by its ZmqProxy: {owner:?}"
    );
    let data = secret.data.clone().context("no data")?;
    let text = |k: &str| -> Result<String> {
        Ok(String::from_utf8(
            data.get(k).context("missing key")?.0.clone(),
        )?)
    };
    let derived = public_of(&text("secret-key")?)?;
    ensure!(
        derived == status_key,
        "status key {status_key} is not the Secret's"
    );
    ensure!(
        text("public-key")? == derived,
        "public-key does not match secret-key"
    );

    let d = deps.get("gen").await?;
    ensure!(
        zmq_proxy_operator::status::curve_public_key(&d).as_deref() == Some(status_key.as_str()),
        "template annotation {:?}",
        zmq_proxy_operator::status::curve_public_key(&d)
    );
    let pod = pod(&d)?;
    let volumes = pod.volumes.clone().unwrap_or_default();
    ensure!(
        volumes.iter().any(|v| v
            .secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some("gen-curve")))
            && volumes
                .iter()
                .any(|v| v.config_map.as_ref().is_some_and(|c| c.name == "peers")),
        "volumes: {volumes:?}"
    );
    let env: Vec<_> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.as_str(), e.value.as_deref()))
        .collect();
    for expected in [
        (
            "ZMQ_PROXY_CURVE_SECRET_KEY_FILE",
            Some("/etc/zmq-proxy/curve/secret-key"),
        ),
        (
            "ZMQ_PROXY_CURVE_AUTHORIZED_KEYS",
            Some("/etc/zmq-proxy/curve-authorized/authorized_keys"),
        ),
    ] {
        ensure!(env.contains(&expected), "{expected:?} not in {env:?}");
    }
    ensure!(
        pod.security_context.as_ref().and_then(|s| s.fs_group) == Some(65532),
        "no fsGroup"
    );

    // Another reconcile (a spec change, so observedGeneration proves it
    // happened) keeps the Secret and its key.
    zps.patch(
        "gen",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"socket": {"hwm": 10}}})),
    )
    .await?;
    let zp = wait_zp(
        client,
        ns,
        "gen",
        "the spec change reconciled",
        SHORT,
        |z| z.status.as_ref().and_then(|s| s.observed_generation) == z.metadata.generation,
    )
    .await?;
    let again = secrets.get("gen-curve").await?;
    ensure!(
        again.data == secret.data
            && again.metadata.resource_version == secret.metadata.resource_version,
        "the generated Secret changed"
    );
    ensure!(
        zp.status.and_then(|s| s.curve_public_key) == Some(status_key),
        "the status key changed"
    );
    Ok(())
}

/// (b) A named keySecret: broken, fixed, rotated; a neighbour unaffected.
async fn named_key(
    zps: &Api<ZmqProxy>,
    deps: &Api<Deployment>,
    secrets: &Api<Secret>,
    client: &Client,
    ns: &str,
) -> Result<()> {
    secrets
        .create(
            &PostParams::default(),
            &key_secret("named-key", "not-a-key"),
        )
        .await?;
    create_zp(
        client,
        ns,
        "named",
        json!({"replicas": 0, "security": {"curve": {
            "enabled": true,
            "keySecret": {"name": "named-key"},
            "authorizedKeys": {"configMap": {"name": "peers"}}}}}),
    )
    .await?;
    create_zp(client, ns, "neighbour", json!({"replicas": 0})).await?;

    let zp = wait_zp(
        client,
        ns,
        "named",
        "Degraded CurveKeyInvalid",
        SHORT,
        |z| condition(z, "Degraded") == Some(("True".into(), "CurveKeyInvalid".into())),
    )
    .await?;
    let status = zp.status.context("no status")?;
    let message = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    ensure!(
        message.contains("named-key") && !message.contains("not-a-key"),
        "message {message:?}"
    );
    ensure!(
        status.curve_public_key.is_none(),
        "a key for a broken Secret"
    );
    ensure!(
        deps.get_opt("named").await?.is_none(),
        "a Deployment with a broken key"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    harness::wait::until("a CurveKeyInvalid warning", SHORT, || async {
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CurveKeyInvalid")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("named")
            })
            .then_some(()))
    })
    .await?;
    wait_zp(
        client,
        ns,
        "neighbour",
        "the neighbour reconciled",
        SHORT,
        |z| z.status.as_ref().and_then(|s| s.observed_generation) == z.metadata.generation,
    )
    .await?;
    ensure!(
        deps.get_opt("neighbour").await?.is_some(),
        "the neighbour has no Deployment"
    );

    // Fixed: the backoff retry picks it up, no touch needed.
    secrets
        .replace(
            "named-key",
            &PostParams::default(),
            &key_secret("named-key", SECRET_A),
        )
        .await?;
    wait_zp(client, ns, "named", "the fixed key in status", LONG, |z| {
        z.status
            .as_ref()
            .and_then(|s| s.curve_public_key.as_deref())
            == Some(PUBLIC_A)
            && condition(z, "Degraded").is_some_and(|c| c.1 != "CurveKeyInvalid")
    })
    .await?;
    let d = deps.get("named").await?;
    ensure!(
        zmq_proxy_operator::status::curve_public_key(&d).as_deref() == Some(PUBLIC_A),
        "template annotation {:?}",
        zmq_proxy_operator::status::curve_public_key(&d)
    );

    // Rotated to another valid key: the operator reads Secrets only when it
    // reconciles (no Secret watch), at its resync or on any change of the
    // ZmqProxy; a label stands in for the five-minute resync.
    let secret_b = zmtp::curve::z85::encode_key(&[7u8; 32]);
    let public_b = public_of(&secret_b)?;
    secrets
        .replace(
            "named-key",
            &PostParams::default(),
            &key_secret("named-key", &secret_b),
        )
        .await?;
    zps.patch(
        "named",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"touched": "1"}}})),
    )
    .await?;
    harness::wait::until("the template to carry the new key", SHORT, || async {
        let d = deps.get("named").await?;
        Ok(
            (zmq_proxy_operator::status::curve_public_key(&d).as_deref()
                == Some(public_b.as_str()))
            .then_some(()),
        )
    })
    .await?;
    wait_zp(client, ns, "named", "the new key in status", SHORT, |z| {
        z.status
            .as_ref()
            .and_then(|s| s.curve_public_key.as_deref())
            == Some(public_b.as_str())
    })
    .await?;
    Ok(())
}
