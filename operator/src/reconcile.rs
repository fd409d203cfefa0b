//! The reconcile pipeline of one ZmqProxy, in the style of the Stackable
//! operators: [`crate::validate`] (a [`Validated`] value or a stop) ->
//! [`crate::curve_secret`] (the proxies' CURVE key, when on) ->
//! [`crate::build`] (pure, infallible: the desired children) ->
//! [`crate::apply`] (server-side apply, orphan cleanup) -> [`crate::report`]
//! (status from what was applied and observed). Around it: metrics, events,
//! and per-object backoff on errors. An object that does not even
//! deserialize gets a Warning event and is left alone, so the rest keep
//! reconciling.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::Deployment;
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use crate::apply::{self, Sweep};
use crate::build::{self, Capabilities, Desired, Validated};
use crate::context::Context;
use crate::crd::ZmqProxy;
use crate::curve::KeyProblem;
use crate::curve_secret::{self, ResolveError};
use crate::events::publish;
use crate::report;
use crate::status::{self, CURVE_KEY_INVALID, DEGRADED};
use crate::validate::{self, ValidationError};

/// The object type the controller watches: a ZmqProxy, or the metadata of
/// one that failed to deserialize.
pub type Guarded = DeserializeGuard<ZmqProxy>;

/// Reconciliation errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The ZmqProxy lacks metadata the API server always sets.
    #[error(transparent)]
    Validation(#[from] ValidationError),
    /// A child could not be serialized.
    #[error("serializing a child: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The proxy's CURVE key is missing or malformed: nothing was applied
    /// (the proxies keep their previous template) and the status says why.
    #[error("CURVE key unusable: {0}")]
    CurveKey(#[from] KeyProblem),
}

impl Error {
    /// A short label for the error metric.
    pub fn reason(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.code),
            Error::Kube(_) => "api_unreachable".into(),
            Error::Validation(ValidationError::MissingMetadata(_)) => "invalid_metadata".into(),
            Error::Validation(ValidationError::Curve(_)) => "invalid_spec".into(),
            Error::Serialize(_) => "serialize".into(),
            Error::CurveKey(_) => "curve_key_invalid".into(),
        }
    }

    /// The reason of the Warning event announcing the error.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::CurveKey(_) => CURVE_KEY_INVALID,
            _ => "ReconcileFailed",
        }
    }
}

/// Entry point for the controller: metrics and events around the pipeline
/// (validate -> build -> apply -> status).
pub async fn reconcile(obj: Arc<Guarded>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let zp = match &obj.0 {
        Ok(zp) => zp,
        Err(invalid) => {
            report_undeserializable(&ctx, invalid).await;
            return Ok(Action::await_change());
        }
    };
    if zp.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the children through owner references.
        return Ok(Action::await_change());
    }
    let result = reconcile_proxy(zp, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.record_success(&ObjectRef::from_obj(obj.as_ref())),
        Err(e) => {
            ctx.metrics
                .errors
                .with_label_values(&[e.reason().as_str()])
                .inc();
            publish(
                &ctx,
                &zp.metadata,
                EventType::Warning,
                e.event_reason(),
                "Reconcile",
                e.to_string(),
            )
            .await;
        }
    }
    result
}

/// A ZmqProxy the operator cannot read: counted, announced, left alone
/// until it changes.
async fn report_undeserializable(ctx: &Context, invalid: &InvalidObject) {
    tracing::warn!(name = ?invalid.metadata.name, error = %invalid.error, "ZmqProxy does not deserialize");
    ctx.metrics
        .errors
        .with_label_values(&["invalid_object"])
        .inc();
    publish(
        ctx,
        &invalid.metadata,
        EventType::Warning,
        "InvalidObject",
        "Reconcile",
        format!("cannot read the object: {}", invalid.error),
    )
    .await;
}

/// Error policy: exponential backoff per object.
pub fn error_policy(obj: Arc<Guarded>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(obj.as_ref());
    let (delay, n) = ctx.record_failure(&key);
    tracing::warn!(object = %key, failures = n, retry_in = ?delay, error = %err, "reconcile failed");
    Action::requeue(delay)
}

/// The pipeline: validate -> CURVE key -> build -> apply -> status. An
/// unusable CURVE key stops before the build: the status says why, and the
/// Deployment keeps the template (and key) it has.
async fn reconcile_proxy(zp: &ZmqProxy, ctx: &Context) -> Result<Action, Error> {
    let validated = validate::validate(zp)?;
    let curve = match curve_secret::resolve(&ctx.client, &validated).await {
        Ok(curve) => curve,
        Err(ResolveError::Kube(e)) => return Err(e.into()),
        Err(ResolveError::Key(problem)) => {
            report::report_curve_problem(&ctx.client, zp, &validated, &problem).await?;
            return Err(problem.into());
        }
    };
    let caps = ctx.caps();
    let desired = build::build(&validated, &caps, curve.as_ref());
    let deployment = apply(ctx, &validated, &desired, &caps).await?;
    announce_apply(ctx, zp, &desired).await;
    report::update_status(
        &ctx.client,
        zp,
        &validated,
        deployment,
        desired.missing.clone(),
    )
    .await?;
    Ok(Action::requeue(ctx.resync))
}

/// Applies `desired`, sweeping orphans once per generation (orphans only
/// appear when the spec shrinks, which bumps the generation).
async fn apply(
    ctx: &Context,
    validated: &Validated,
    desired: &Desired,
    caps: &Capabilities,
) -> Result<Deployment, kube::Error> {
    let uid = validated.uid();
    let generation = validated.generation.unwrap_or(0);
    let sweep = ctx.needs_cleanup(uid, generation).then_some(Sweep {
        caps,
        done: || ctx.mark_cleaned(uid, generation),
    });
    apply::apply_all(&ctx.client, validated, desired, sweep).await
}

/// Events after a successful apply: Created the first time, Updated when
/// the spec changed, and a Warning when asked-for monitoring kinds are not
/// served (once, and again on each spec change).
async fn announce_apply(ctx: &Context, zp: &ZmqProxy, desired: &Desired) {
    let observed_generation = zp.status.as_ref().and_then(|s| s.observed_generation);
    let first = observed_generation.is_none();
    let changed = observed_generation != zp.metadata.generation;
    if first {
        publish(
            ctx,
            &zp.metadata,
            EventType::Normal,
            "Created",
            "Apply",
            "created the proxy children".into(),
        )
        .await;
    } else if changed {
        publish(
            ctx,
            &zp.metadata,
            EventType::Normal,
            "Updated",
            "Apply",
            "applied the changed spec".into(),
        )
        .await;
    }
    let was_missing = zp
        .status
        .as_ref()
        .and_then(|s| status::condition(s, DEGRADED))
        .is_some_and(|c| c.reason == "MonitoringApiMissing");
    if !desired.missing.is_empty() && (!was_missing || changed) {
        publish(
            ctx,
            &zp.metadata,
            EventType::Warning,
            "MonitoringApiMissing",
            "Apply",
            "monitoring.coreos.com/v1 is not served: ServiceMonitor/PodMonitor not created".into(),
        )
        .await;
    }
}
