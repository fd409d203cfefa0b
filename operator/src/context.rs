//! The state every reconcile shares ([`Context`]): the API client, what
//! discovery found, the event recorder, telemetry, and per-object
//! bookkeeping (consecutive failures for backoff, generations already
//! cleaned of orphans) that must not outlive the objects it is about.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, ResourceExt};

use crate::backoff;
use crate::build::names::MANAGER;
use crate::discovery::Capabilities;
use crate::lock;
use crate::metrics::Metrics;
use crate::reconcile::Guarded;

/// Shared state of the reconcilers.
pub struct Context {
    /// Client for every request.
    pub client: Client,
    /// What discovery found; refreshed in the background.
    caps: RwLock<Capabilities>,
    /// Event publisher.
    pub recorder: Recorder,
    /// Telemetry.
    pub metrics: Metrics,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Guarded>, u32>>,
    /// Delay after the first failure; doubles per further failure.
    pub backoff_base: Duration,
    /// Upper bound of the backoff.
    pub backoff_max: Duration,
    /// Periodic resync of healthy objects.
    pub resync: Duration,
    /// Generation per object UID whose orphans this process already
    /// removed: orphans only appear when the spec shrinks, which bumps the
    /// generation, so the list calls are skipped until it changes.
    cleaned: Mutex<HashMap<String, i64>>,
}

impl Context {
    /// A context for `client`, reporting events as `instance`.
    pub fn new(client: Client, caps: Capabilities, metrics: Metrics, instance: String) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: Some(instance),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            caps: RwLock::new(caps),
            metrics,
            failures: Mutex::new(HashMap::new()),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(300),
            resync: Duration::from_secs(300),
            cleaned: Mutex::new(HashMap::new()),
        }
    }

    /// What the cluster serves, as last discovered.
    pub fn caps(&self) -> Capabilities {
        lock::read(&self.caps).clone()
    }

    /// Replaces the capabilities; true when they changed. A change forgets
    /// the cleanup marks: a kind that became served may hold orphans.
    pub fn set_caps(&self, caps: Capabilities) -> bool {
        let mut guard = lock::write(&self.caps);
        let changed = *guard != caps;
        *guard = caps;
        if changed {
            lock::lock(&self.cleaned).clear();
        }
        changed
    }

    /// Whether orphans of the object `uid` still need removing at `generation`.
    pub fn needs_cleanup(&self, uid: &str, generation: i64) -> bool {
        lock::lock(&self.cleaned).get(uid) != Some(&generation)
    }

    /// Records that the orphans of `uid` at `generation` are gone.
    pub fn mark_cleaned(&self, uid: &str, generation: i64) {
        lock::lock(&self.cleaned).insert(uid.to_string(), generation);
    }

    /// Counts one more consecutive failure of `key`; returns the delay
    /// before its next attempt and the count.
    pub fn record_failure(&self, key: &ObjectRef<Guarded>) -> (Duration, u32) {
        let n = {
            let mut failures = lock::lock(&self.failures);
            let n = failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        (backoff::capped(n, self.backoff_base, self.backoff_max), n)
    }

    /// Resets the failure count of `key` after a success.
    pub fn record_success(&self, key: &ObjectRef<Guarded>) {
        lock::lock(&self.failures).remove(key);
    }

    /// Forgets per-object bookkeeping (backoff counters, cleanup marks) of
    /// objects no longer in the caches; deletions never reach the
    /// reconciler, so without this the maps would only grow.
    pub fn forget_missing(&self, present: &[Arc<Guarded>]) {
        let uids: HashSet<String> = present.iter().filter_map(|o| o.uid()).collect();
        let refs: HashSet<ObjectRef<Guarded>> = present
            .iter()
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect();
        lock::lock(&self.cleaned).retain(|uid, _| uids.contains(uid));
        lock::lock(&self.failures).retain(|r, _| refs.contains(r));
    }
}
