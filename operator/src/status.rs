//! Status computation: what the children say, turned into the ZmqProxy's
//! status (conditions Ready / Progressing / Degraded, replica counts,
//! registered endpoints, the scale selector). Pure: [`crate::report`] gathers
//! [`Observed`] and writes the result.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;

use crate::build::curve::PUBLIC_KEY_ANNOTATION;
use crate::build::monitoring::MissingApi;
use crate::build::names::selector_string;
use crate::crd::{ProxyEndpoint, ZmqProxy, ZmqProxyStatus};

/// Condition type: every replica runs and is registered.
pub const READY: &str = "Ready";
/// Condition type: a rollout is under way.
pub const PROGRESSING: &str = "Progressing";
/// Condition type: something needs a human (invalid spec, failed apply,
/// missing optional API, stuck rollout, unusable CURVE key).
pub const DEGRADED: &str = "Degraded";
/// Condition reason (Ready False, Degraded True): the proxy's CURVE key
/// Secret is missing, lacks the key, or holds no valid Z85 key; nothing
/// was applied, so the pods keep their previous template.
pub const CURVE_KEY_INVALID: &str = "CurveKeyInvalid";

/// What the reconciler saw this round.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The proxies' Deployment as the API server returned it.
    pub deployment: Option<Deployment>,
    /// Proxies registered in the headless Service's EndpointSlices.
    pub endpoints: Vec<ProxyEndpoint>,
    /// Applying the children failed.
    pub apply_error: Option<String>,
    /// Optional APIs asked for but not served.
    pub missing_apis: Vec<MissingApi>,
    /// Why the proxy's CURVE key is unusable (the children were not applied).
    pub curve_problem: Option<String>,
}

/// Reads proxy endpoints from discovery.k8s.io/v1 EndpointSlice objects.
pub fn endpoints_from_slices(slices: &[Value]) -> Vec<ProxyEndpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let ports: BTreeMap<String, i32> = slice["ports"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| {
                        Some((
                            p["name"].as_str()?.to_string(),
                            i32::try_from(p["port"].as_i64()?).ok()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        for ep in slice["endpoints"].as_array().into_iter().flatten() {
            // The API treats an unset `ready` as ready.
            let ready = ep["conditions"]["ready"].as_bool().unwrap_or(true);
            let pod = ep["targetRef"]["name"].as_str().map(str::to_string);
            for addr in ep["addresses"].as_array().into_iter().flatten() {
                if let Some(address) = addr.as_str() {
                    out.push(ProxyEndpoint {
                        address: address.to_string(),
                        pod: pod.clone(),
                        ready,
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

struct Rollout {
    replicas: i32,
    ready: i32,
    done: bool,
    stuck: Option<String>,
}

fn rollout(desired: i32, dep: Option<&Deployment>) -> Rollout {
    let Some(dep) = dep else {
        return Rollout {
            replicas: 0,
            ready: 0,
            done: desired == 0,
            stuck: None,
        };
    };
    let st = dep.status.clone().unwrap_or_default();
    let replicas = st.replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let current = st.observed_generation.unwrap_or(0) >= dep.metadata.generation.unwrap_or(0);
    let done = current && updated >= desired && replicas == desired && ready >= desired;
    let stuck = st.conditions.unwrap_or_default().into_iter().find_map(|c| {
        let bad = (c.type_ == "Progressing" && c.status == "False")
            || (c.type_ == "ReplicaFailure" && c.status == "True");
        bad.then(|| c.message.unwrap_or_else(|| c.reason.unwrap_or_default()))
    });
    Rollout {
        replicas,
        ready,
        done,
        stuck,
    }
}

/// One condition as computed this round, before it meets the previous
/// status (which decides its lastTransitionTime).
struct Verdict {
    /// Condition type: [`READY`], [`PROGRESSING`] or [`DEGRADED`].
    type_: &'static str,
    /// Whether the condition holds (status "True").
    holds: bool,
    /// CamelCase reason.
    reason: &'static str,
    /// Human-readable detail.
    message: String,
}

fn verdict(type_: &'static str, holds: bool, reason: &'static str, message: String) -> Verdict {
    Verdict {
        type_,
        holds,
        reason,
        message,
    }
}

/// Ready: every replica runs and is registered (and applying succeeded).
fn ready(obs: &Observed, r: &Rollout, desired: i32, registered: i32) -> Verdict {
    if let Some(p) = &obs.curve_problem {
        verdict(READY, false, CURVE_KEY_INVALID, p.clone())
    } else if let Some(e) = &obs.apply_error {
        verdict(READY, false, "ApplyFailed", e.clone())
    } else if r.ready < desired {
        verdict(
            READY,
            false,
            "ReplicasNotReady",
            format!("{}/{desired} replicas ready", r.ready),
        )
    } else if registered < desired {
        verdict(
            READY,
            false,
            "NotRegistered",
            format!("{registered}/{desired} proxies registered"),
        )
    } else {
        verdict(
            READY,
            true,
            "AllReplicasReady",
            format!(
                "{}/{desired} replicas ready, {registered} registered",
                r.ready
            ),
        )
    }
}

/// Progressing: the rollout has not finished.
fn progressing(r: &Rollout, desired: i32) -> Verdict {
    if r.done {
        verdict(
            PROGRESSING,
            false,
            "RolloutComplete",
            format!("{desired} replicas up to date"),
        )
    } else {
        verdict(
            PROGRESSING,
            true,
            "RollingOut",
            format!("{}/{desired} replicas ready, {} exist", r.ready, r.replicas),
        )
    }
}

/// Degraded: the first problem that needs a human, in order of severity.
fn degraded(obs: &Observed, r: &Rollout) -> Verdict {
    if let Some(p) = &obs.curve_problem {
        verdict(DEGRADED, true, CURVE_KEY_INVALID, p.clone())
    } else if let Some(e) = &obs.apply_error {
        verdict(DEGRADED, true, "ApplyFailed", e.clone())
    } else if !obs.missing_apis.is_empty() {
        let kinds: Vec<&str> = obs
            .missing_apis
            .iter()
            .map(|m| match m {
                MissingApi::ServiceMonitor => "ServiceMonitor",
                MissingApi::PodMonitor => "PodMonitor",
            })
            .collect();
        verdict(
            DEGRADED,
            true,
            "MonitoringApiMissing",
            format!(
                "monitoring.coreos.com/v1 {} not served; not created",
                kinds.join(", ")
            ),
        )
    } else if let Some(m) = &r.stuck {
        verdict(DEGRADED, true, "RolloutStuck", m.clone())
    } else {
        verdict(DEGRADED, false, "AsExpected", "all children applied".into())
    }
}

/// `verdict` as a Condition, keeping the lastTransitionTime of a `previous`
/// condition of the same type and status.
fn condition_of(
    verdict: Verdict,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if verdict.holds { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == verdict.type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: verdict.type_.to_string(),
        status,
        reason: verdict.reason.to_string(),
        message: verdict.message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Computes the status of `zp` from what was observed. Conditions keep their
/// lastTransitionTime unless their status flips, so watchers can tell how
/// long a state has held.
pub fn compute(zp: &ZmqProxy, obs: &Observed, now: Time) -> ZmqProxyStatus {
    let name = zp.metadata.name.clone().unwrap_or_default();
    let generation = zp.metadata.generation;
    let desired = zp.spec.replicas;
    let r = rollout(desired, obs.deployment.as_ref());
    let registered = obs.endpoints.iter().filter(|e| e.ready).count();
    let registered = i32::try_from(registered).unwrap_or(i32::MAX);
    let previous = zp
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[]);
    let conditions = [
        ready(obs, &r, desired, registered),
        progressing(&r, desired),
        degraded(obs, &r),
    ]
    .into_iter()
    .map(|v| condition_of(v, previous, generation, &now))
    .collect();

    ZmqProxyStatus {
        observed_generation: generation,
        conditions,
        replicas: r.replicas,
        ready_replicas: r.ready,
        endpoints: obs.endpoints.clone(),
        selector: Some(selector_string(&name)),
        curve_public_key: obs.deployment.as_ref().and_then(curve_public_key),
    }
}

/// The CURVE public key a Deployment's pods are configured with: its pod
/// template's annotation (what the pods run, rather than what the spec
/// asks for).
pub fn curve_public_key(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(PUBLIC_KEY_ANNOTATION)
        .cloned()
}

/// The status of condition `type_`, if present.
pub fn condition<'a>(status: &'a ZmqProxyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ZmqProxySpec;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn zp(replicas: i32) -> ZmqProxy {
        let spec: ZmqProxySpec = serde_json::from_value(json!({ "replicas": replicas })).unwrap();
        let mut zp = ZmqProxy::new("alpha", spec);
        zp.metadata.namespace = Some("ns".into());
        zp.metadata.generation = Some(4);
        zp
    }

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn dep(replicas: i32, ready: i32, updated: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(replicas),
                ready_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn eps(n: usize, ready: bool) -> Vec<ProxyEndpoint> {
        (0..n)
            .map(|i| ProxyEndpoint {
                address: format!("127.0.0.{}", i + 10),
                pod: Some(format!("p{i}")),
                ready,
                ports: BTreeMap::new(),
            })
            .collect()
    }

    fn status_of(s: &ZmqProxyStatus, ty: &str) -> (String, String) {
        let c = condition(s, ty).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_needs_ready_replicas_and_registrations() {
        let z = zp(2);
        let mut obs = Observed {
            deployment: Some(dep(2, 2, 2)),
            endpoints: eps(1, true),
            ..Default::default()
        };
        let s = compute(&z, &obs, t(10));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "NotRegistered".into())
        );
        obs.endpoints = eps(2, true);
        let s = compute(&z, &obs, t(10));
        assert_eq!(
            status_of(&s, READY),
            ("True".into(), "AllReplicasReady".into())
        );
        assert_eq!(
            status_of(&s, PROGRESSING),
            ("False".into(), "RolloutComplete".into())
        );
        assert_eq!(
            status_of(&s, DEGRADED),
            ("False".into(), "AsExpected".into())
        );
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.ready_replicas, 2);
        assert_eq!(s.replicas, 2);
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4)));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/component=proxy,app.kubernetes.io/instance=alpha,app.kubernetes.io/name=zmq-proxy")
        );
        // Registered but not ready endpoints do not count.
        obs.endpoints = eps(2, false);
        assert_eq!(status_of(&compute(&z, &obs, t(10)), READY).0, "False");
    }

    #[test]
    fn rollout_in_progress_is_progressing() {
        let s = compute(
            &zp(3),
            &Observed {
                deployment: Some(dep(4, 3, 1)),
                endpoints: eps(3, true),
                ..Default::default()
            },
            t(1),
        );
        assert_eq!(
            status_of(&s, PROGRESSING),
            ("True".into(), "RollingOut".into())
        );
        let s = compute(&zp(3), &Observed::default(), t(1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), "ReplicasNotReady".into())
        );
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut z = zp(1);
        let obs = Observed {
            deployment: Some(dep(1, 1, 1)),
            endpoints: eps(1, true),
            ..Default::default()
        };
        z.status = Some(compute(&z, &obs, t(100)));
        let again = compute(&z, &obs, t(200));
        assert_eq!(
            condition(&again, READY).unwrap().last_transition_time,
            t(100)
        );
        let down = Observed {
            deployment: Some(dep(1, 0, 1)),
            ..Default::default()
        };
        let flipped = compute(&z, &down, t(300));
        assert_eq!(
            condition(&flipped, READY).unwrap().last_transition_time,
            t(300)
        );
        // Degraded stayed False: its time is kept even though Ready flipped.
        assert_eq!(
            condition(&flipped, DEGRADED).unwrap().last_transition_time,
            t(100)
        );
    }

    #[test]
    fn problems_are_degraded_with_reasons() {
        let z = zp(1);
        let failed = Observed {
            apply_error: Some("forbidden".into()),
            ..Default::default()
        };
        let s = compute(&z, &failed, t(1));
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), "ApplyFailed".into())
        );
        assert_eq!(status_of(&s, READY), ("False".into(), "ApplyFailed".into()));
        let missing = Observed {
            deployment: Some(dep(1, 1, 1)),
            endpoints: eps(1, true),
            missing_apis: vec![MissingApi::ServiceMonitor],
            ..Default::default()
        };
        let s = compute(&z, &missing, t(1));
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), "MonitoringApiMissing".into())
        );
        // The proxies themselves are fine.
        assert_eq!(status_of(&s, READY).0, "True");
        let mut stuck = dep(1, 0, 1);
        if let Some(st) = stuck.status.as_mut() {
            st.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                message: Some("deadline".into()),
                ..Default::default()
            }]);
        }
        let s = compute(
            &z,
            &Observed {
                deployment: Some(stuck),
                ..Default::default()
            },
            t(1),
        );
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), "RolloutStuck".into())
        );
    }

    #[test]
    fn an_unusable_curve_key_is_degraded_and_the_running_key_stays() {
        let z = zp(1);
        let mut running = dep(1, 1, 1);
        running.spec = Some(k8s_openapi::api::apps::v1::DeploymentSpec {
            template: k8s_openapi::api::core::v1::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    annotations: Some(BTreeMap::from([(
                        PUBLIC_KEY_ANNOTATION.to_string(),
                        "old-key".to_string(),
                    )])),
                    ..Default::default()
                }),
                spec: None,
            },
            ..Default::default()
        });
        let obs = Observed {
            deployment: Some(running.clone()),
            endpoints: eps(1, true),
            curve_problem: Some("Secret k has no key secret-key".into()),
            ..Default::default()
        };
        let s = compute(&z, &obs, t(1));
        assert_eq!(
            status_of(&s, READY),
            ("False".into(), CURVE_KEY_INVALID.into())
        );
        assert_eq!(
            status_of(&s, DEGRADED),
            ("True".into(), CURVE_KEY_INVALID.into())
        );
        assert_eq!(
            condition(&s, DEGRADED).unwrap().message,
            "Secret k has no key secret-key"
        );
        // The pods still run the previous key, and the status says so.
        assert_eq!(s.curve_public_key.as_deref(), Some("old-key"));
        // Fixed: ready again, the key from the applied template.
        let fixed = Observed {
            deployment: Some(running),
            endpoints: eps(1, true),
            ..Default::default()
        };
        let s = compute(&z, &fixed, t(2));
        assert_eq!(status_of(&s, READY).0, "True");
        assert_eq!(s.curve_public_key.as_deref(), Some("old-key"));
        // CURVE off: no key.
        let plain = Observed {
            deployment: Some(dep(1, 1, 1)),
            ..Default::default()
        };
        assert_eq!(compute(&z, &plain, t(3)).curve_public_key, None);
    }

    #[test]
    fn endpoints_are_read_from_slices() {
        let slices = vec![
            json!({"apiVersion": "discovery.k8s.io/v1",
                   "ports": [{"name": "frontend", "port": 50001}, {"name": "backend", "port": 50002}],
                   "endpoints": [{"addresses": ["127.0.0.5"], "conditions": {"ready": true},
                                  "targetRef": {"kind": "Pod", "name": "p1"}}]}),
            json!({"apiVersion": "discovery.k8s.io/v1",
                   "ports": [{"name": "frontend", "port": 50001}],
                   "endpoints": [{"addresses": ["127.0.0.6"], "conditions": {"ready": false}}]}),
            json!({"endpoints": null}),
        ];
        let eps = endpoints_from_slices(&slices);
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].address, "127.0.0.5");
        assert_eq!(eps[0].pod.as_deref(), Some("p1"));
        assert!(eps[0].ready);
        assert_eq!(eps[0].ports["backend"], 50002);
        assert!(!eps[1].ready);
    }
}
