//! Leader election on a coordination.k8s.io/v1 Lease (kube 5 ships no
//! helper). The rules follow client-go's leaderelection: a Lease held by
//! someone else counts as expired only after this process has seen it
//! unchanged for a whole lease duration *by its own clock*, so clock skew
//! between replicas cannot cause two leaders. Updates use the object's
//! resourceVersion, so of two contenders exactly one wins. A clean shutdown
//! releases the Lease (empty holder) so the standby takes over at its next
//! retry instead of waiting for expiry.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

/// Timing of the election.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// The leader gives up when it could not renew for this long (< lease_duration).
    pub renew_deadline: Duration,
    /// Interval of renewals and of acquisition attempts.
    pub retry_period: Duration,
}

impl Timing {
    /// client-go's proportions (15 s / 10 s / 2 s) scaled to `lease_duration`.
    pub fn from_lease_duration(lease_duration: Duration) -> Self {
        Timing {
            lease_duration,
            renew_deadline: lease_duration.mul_f64(2.0 / 3.0),
            retry_period: (lease_duration / 7).max(Duration::from_millis(200)),
        }
    }
}

/// What this process last saw of the Lease, and when (local clock).
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
}

/// One contender for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    seen: Option<(Seen, Instant)>,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// A contender named `identity` for Lease `name` served by `api`.
    pub fn new(
        api: Api<Lease>,
        name: impl Into<String>,
        identity: impl Into<String>,
        timing: Timing,
    ) -> Self {
        LeaderElector {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            seen: None,
        }
    }

    /// This contender's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The timing in use.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    fn lease_seconds(&self) -> i32 {
        i32::try_from(self.timing.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One attempt: create, renew or take over the Lease. Ok(true) means this
    /// process leads until at least `renew_deadline` from now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        // A request hanging on a half-dead connection must not outlive the
        // renew deadline: the attempt counts as failed and is retried.
        let limit = self.timing.renew_deadline / 2;
        match tokio::time::timeout(limit, self.attempt()).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                format!("lease request timed out after {limit:?}").into(),
            )),
        }
    }

    async fn attempt(&mut self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.lease_seconds()),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Seen {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.clone(),
            resource_version: lease.metadata.resource_version.clone(),
        };
        let observed_at = match &self.seen {
            Some((prev, at)) if *prev == seen => *at,
            _ => Instant::now(),
        };
        self.seen = Some((seen.clone(), observed_at));

        let mine = seen.holder.as_deref() == Some(self.identity.as_str());
        if !mine {
            if let Some(_holder) = &seen.holder {
                let their_duration = Duration::from_secs(
                    u64::try_from(spec.lease_duration_seconds.unwrap_or(self.lease_seconds()))
                        .unwrap_or(1),
                );
                if observed_at.elapsed() < their_duration {
                    return Ok(false);
                }
            }
        }
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(self.identity.clone());
        new_spec.lease_duration_seconds = Some(self.lease_seconds());
        new_spec.renew_time = Some(now());
        if !mine {
            new_spec.acquire_time = Some(now());
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        lease.spec = Some(new_spec);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process leads (retrying every retry_period; errors
    /// are logged and retried, as the API server may be restarting).
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election: acquiring the lease failed"),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews until a renewal has failed for renew_deadline; returns then
    /// (leadership lost). Cancel the future to stop renewing.
    pub async fn hold(&mut self) {
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = Instant::now(),
                Ok(false) => {
                    tracing::warn!("leader election: the lease was taken by another replica");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "leader election: renewing the lease failed"),
            }
            if last_ok.elapsed() >= self.timing.renew_deadline {
                return;
            }
        }
    }

    /// Gives the Lease up (empty holder) so a standby takes over at once.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }
}
