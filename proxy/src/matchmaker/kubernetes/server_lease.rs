//! RPC server identities as `coordination.k8s.io/v1` Leases: one Lease per
//! (server identity, target), written only by that server. Pure: building,
//! naming and reading Leases, and deciding liveness; no API calls here.
//!
//! Why Leases (and not one object per target, or slices):
//! - one writer per object: a server only ever writes its own Leases, so
//!   there are no conflicting updates, no read-modify-write races and no
//!   object growing with the number of servers;
//! - a TTL readers evaluate: `renewTime + leaseDurationSeconds` is the
//!   deadline; a server that crashed stops renewing and every reader drops
//!   it at the deadline without anyone writing (clocks are assumed to be in
//!   NTP sync, as for every Kubernetes Lease consumer; a skew eats into the TTL);
//! - garbage collection: the Lease is owned by the server's Pod when it runs
//!   in one, so Kubernetes deletes it with the pod; expired Leases (a server
//!   outside Kubernetes that crashed, or one whose pod lives on) are deleted
//!   by the next registrant of the same target and by watching readers
//!   allowed to, with a resourceVersion precondition so a racing renewal wins;
//! - watchable: labels select Leases by target. Topics, server names and
//!   identities need not fit label syntax, so the label holds a hash of the
//!   target and annotations hold the full values, which readers check.
//!
//! Leases exist on every supported cluster (GA since Kubernetes 1.14) and are
//! meant for exactly this (node heartbeats, leader election).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use super::endpoint_slice::pod_owner;
use super::PodIdentity;
use crate::matchmaker::Target;

/// Label marking our server Leases (`app.kubernetes.io/component=rpc-server`).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Value of [`COMPONENT_LABEL`].
pub const COMPONENT: &str = "rpc-server";
/// Label naming the writer (`app.kubernetes.io/managed-by=zmq-proxy`).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "zmq-proxy";
/// Label holding [`target_hash`] of the Lease's target.
pub const TARGET_LABEL: &str = "zmqproxy.io/target";
/// Annotation holding the topic.
pub const TOPIC_ANNOTATION: &str = "zmqproxy.io/topic";
/// Annotation holding the server name, absent for a topic-wide target.
pub const SERVER_ANNOTATION: &str = "zmqproxy.io/server";
/// Annotation holding the server's DEALER identity.
pub const IDENTITY_ANNOTATION: &str = "zmqproxy.io/identity";

/// Hex of SHA-256 over length-prefixed parts (so ("a/b","c") and ("a","b/c") differ).
fn digest(parts: &[Option<&str>]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        match part {
            Some(p) => {
                h.update([1u8]);
                h.update((p.len() as u64).to_be_bytes());
                h.update(p.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The label value selecting a target's Leases: 40 hex digits of SHA-256
/// (fits the 63-character label limit; full values are in annotations).
pub fn target_hash(target: &Target) -> String {
    let mut d = digest(&[Some(&target.topic), target.server.as_deref()]);
    d.truncate(40);
    d
}

/// Selector for all server Leases.
pub fn all_servers_selector() -> String {
    format!("{COMPONENT_LABEL}={COMPONENT},{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// Selector for the server Leases of `target`.
pub fn target_selector(target: &Target) -> String {
    format!(
        "{},{TARGET_LABEL}={}",
        all_servers_selector(),
        target_hash(target)
    )
}

/// The Lease name of (`target`, `identity`): a readable prefix from the topic
/// (lower-cased, other characters replaced by `-`) and a hash of all three
/// values, so names are valid, unique and stable across restarts of the
/// same identity.
pub fn lease_name(target: &Target, identity: &str) -> String {
    let mut prefix: String = target
        .topic
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    prefix.truncate(30);
    let prefix = prefix.trim_matches('-');
    let mut hash = digest(&[
        Some(&target.topic),
        target.server.as_deref(),
        Some(identity),
    ]);
    hash.truncate(32);
    if prefix.is_empty() {
        format!("zmq-server-{hash}")
    } else {
        format!("zmq-server-{prefix}-{hash}")
    }
}

/// The Lease a server writes (and re-writes to renew) for `target`.
pub fn desired_lease(
    namespace: &str,
    target: &Target,
    identity: &str,
    ttl: Duration,
    now: Timestamp,
    pod: Option<&PodIdentity>,
) -> Lease {
    let labels = BTreeMap::from([
        (COMPONENT_LABEL.to_string(), COMPONENT.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (TARGET_LABEL.to_string(), target_hash(target)),
    ]);
    let mut annotations = BTreeMap::from([
        (TOPIC_ANNOTATION.to_string(), target.topic.clone()),
        (IDENTITY_ANNOTATION.to_string(), identity.to_string()),
    ]);
    if let Some(server) = &target.server {
        annotations.insert(SERVER_ANNOTATION.to_string(), server.clone());
    }
    let seconds = i32::try_from(ttl.as_secs().max(1)).unwrap_or(i32::MAX);
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(target, identity)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: pod.and_then(pod_owner).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// What a reader keeps of a server Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRecord {
    /// The target it serves.
    pub target: Target,
    /// The server's DEALER identity.
    pub identity: String,
    /// When it expires unless renewed.
    pub expires: Timestamp,
}

impl ServerRecord {
    /// Reads one of our Leases; `None` for anything malformed (missing
    /// annotations or times, or a label that does not match the annotations).
    pub fn from_lease(lease: &Lease) -> Option<ServerRecord> {
        let annotations = lease.metadata.annotations.as_ref()?;
        let target = Target {
            topic: annotations.get(TOPIC_ANNOTATION)?.clone(),
            server: annotations.get(SERVER_ANNOTATION).cloned(),
        };
        let label = lease.metadata.labels.as_ref()?.get(TARGET_LABEL)?;
        if *label != target_hash(&target) {
            return None;
        }
        let spec = lease.spec.as_ref()?;
        let identity = spec
            .holder_identity
            .clone()
            .or_else(|| annotations.get(IDENTITY_ANNOTATION).cloned())?;
        let renewed = spec.renew_time.as_ref()?.0;
        let seconds = i64::from(spec.lease_duration_seconds?.max(0));
        let expires = renewed
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()?;
        Some(ServerRecord {
            target,
            identity,
            expires,
        })
    }

    /// Whether it is alive at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        now < self.expires
    }
}

/// The live identities of `target` at `now`, sorted and without duplicates.
pub fn live_identities<'a>(
    records: impl IntoIterator<Item = &'a ServerRecord>,
    target: &Target,
    now: Timestamp,
) -> Vec<String> {
    let mut ids: Vec<String> = records
        .into_iter()
        .filter(|r| r.target == *target && r.is_live(now))
        .map(|r| r.identity.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The first moment after `now` when one of `records` expires: when a
/// reader must look again even if nothing is written.
pub fn next_expiry<'a>(
    records: impl IntoIterator<Item = &'a ServerRecord>,
    now: Timestamp,
) -> Option<Timestamp> {
    records
        .into_iter()
        .map(|r| r.expires)
        .filter(|e| *e > now)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        "2026-01-02T03:04:05.123456Z".parse().unwrap()
    }

    #[test]
    fn names_and_labels_are_valid_and_distinct() {
        let t = Target::server("Compute.Service_x/y", "node-1.example");
        let name = lease_name(&t, "host/Compute/node-1/uuid");
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.starts_with("zmq-server-compute-service-x-y-"),
            "{name}"
        );
        assert!(name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_ne!(
            name,
            lease_name(
                &Target::topic("Compute.Service_x/y"),
                "host/Compute/node-1/uuid"
            )
        );
        assert_ne!(name, lease_name(&t, "host/Compute/node-1/uuid2"));
        assert_eq!(name, lease_name(&t, "host/Compute/node-1/uuid"));
        assert!(lease_name(&Target::topic("///"), "x").starts_with("zmq-server-"));
        // Length-prefixing keeps split points apart.
        assert_ne!(
            target_hash(&Target::server("a/b", "c")),
            target_hash(&Target::server("a", "b/c"))
        );
        assert_eq!(target_hash(&t).len(), 40);
    }

    #[test]
    fn lease_round_trips_into_a_record_with_its_deadline() {
        let pod = PodIdentity {
            name: "srv-0".into(),
            uid: Some("u-1".into()),
            ip: None,
        };
        let t = Target::server("compute", "node1");
        let lease = desired_lease(
            "ns",
            &t,
            "h/compute/node1/u",
            Duration::from_secs(30),
            t0(),
            Some(&pod),
        );
        let json = serde_json::to_value(&lease).unwrap();
        assert_eq!(json["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(json["spec"]["leaseDurationSeconds"], 30);
        assert_eq!(json["spec"]["renewTime"], "2026-01-02T03:04:05.123456Z");
        assert_eq!(json["metadata"]["ownerReferences"][0]["name"], "srv-0");
        assert_eq!(json["metadata"]["annotations"][SERVER_ANNOTATION], "node1");
        let record = ServerRecord::from_lease(&lease).unwrap();
        assert_eq!(record.target, t);
        assert_eq!(record.identity, "h/compute/node1/u");
        assert_eq!(
            record.expires,
            "2026-01-02T03:04:35.123456Z".parse().unwrap()
        );

        let no_pod = desired_lease("ns", &t, "i", Duration::from_secs(1), t0(), None);
        assert_eq!(no_pod.metadata.owner_references, None);
    }

    #[test]
    fn tampered_or_incomplete_leases_are_ignored() {
        let t = Target::topic("compute");
        let mut lease = desired_lease("ns", &t, "i", Duration::from_secs(5), t0(), None);
        lease
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(TOPIC_ANNOTATION.into(), "other".into());
        assert_eq!(ServerRecord::from_lease(&lease), None);
        let mut lease = desired_lease("ns", &t, "i", Duration::from_secs(5), t0(), None);
        lease.spec.as_mut().unwrap().renew_time = None;
        assert_eq!(ServerRecord::from_lease(&lease), None);
    }

    #[test]
    fn liveness_and_next_expiry() {
        let t = Target::topic("compute");
        let other = Target::topic("network");
        let rec = |target: &Target, id: &str, secs: u64| {
            ServerRecord::from_lease(&desired_lease(
                "ns",
                target,
                id,
                Duration::from_secs(secs),
                t0(),
                None,
            ))
            .unwrap()
        };
        let records = vec![
            rec(&t, "b", 10),
            rec(&t, "a", 20),
            rec(&t, "a", 20),
            rec(&other, "c", 5),
        ];
        let at = |s: i64| t0().checked_add(SignedDuration::from_secs(s)).unwrap();
        assert_eq!(live_identities(&records, &t, at(0)), ["a", "b"]);
        assert_eq!(live_identities(&records, &t, at(10)), ["a"]);
        assert!(live_identities(&records, &t, at(20)).is_empty());
        assert_eq!(next_expiry(&records, at(0)), Some(at(5)));
        assert_eq!(next_expiry(&records, at(5)), Some(at(10)));
        assert_eq!(next_expiry(&records, at(20)), None);
    }
}
