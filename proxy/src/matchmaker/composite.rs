//! A matchmaker that registers in several stores at once: one primary that
//! everything is read from and that decides every call's result, and any
//! number of best-effort secondaries that only receive the writes.
//!
//! Why: in Kubernetes the proxies register as EndpointSlices (the primary,
//! which readiness follows), and with a Redis URL also in oslo's Redis layout
//! so that unmodified oslo services find them. Redis is a courtesy to those
//! services, not a dependency of the proxy: a Redis outage must neither make
//! the proxy unready nor delay its registration or its shutdown. So:
//!
//! - writes (register/drain/unregister a proxy, register/unregister a
//!   server) run on the primary and every secondary concurrently; each
//!   secondary write is bounded by [`CompositeMatchmaker::secondary_timeout`],
//!   so a hanging secondary delays a call by at most that long, and only
//!   when the primary is faster;
//! - a secondary's failure or timeout is logged (rate-bounded per
//!   secondary: the first failure, then at most once per
//!   [`FAILURE_LOG_PERIOD`] with a count, and once on recovery) and never
//!   changes the call's result; the caller's next refresh writes again,
//!   which is the retry;
//! - reads (`proxies`, `servers`, `watch_*`) go to the primary only: one
//!   source of truth, no merging of lists that disagree while a store
//!   recovers.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{BoxFuture, Matchmaker, ProxyAddresses, Result, Target};
// The guarded state is a few counters updated in one step; a panic cannot
// leave it inconsistent.
use crate::lock::lock;

/// Default bound on one secondary write. Short, because it can delay a
/// registration refresh or the deregistration at shutdown (Redis commands
/// time out after 2 s on their own).
pub const DEFAULT_SECONDARY_TIMEOUT: Duration = Duration::from_secs(3);

/// While a secondary keeps failing, at most one log line per this period.
pub const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Registers in a primary and best-effort secondaries; reads the primary.
pub struct CompositeMatchmaker {
    primary: Arc<dyn Matchmaker>,
    secondaries: Vec<Secondary>,
    secondary_timeout: Duration,
    name: &'static str,
}

struct Secondary {
    matchmaker: Arc<dyn Matchmaker>,
    failures: Mutex<FailureLog>,
}

impl CompositeMatchmaker {
    /// Writes to `primary` and every one of `secondaries`, reads `primary`.
    pub fn new(
        primary: Arc<dyn Matchmaker>,
        secondaries: Vec<Arc<dyn Matchmaker>>,
    ) -> CompositeMatchmaker {
        let name = intern_name(
            std::iter::once(primary.backend())
                .chain(secondaries.iter().map(|s| s.backend()))
                .collect::<Vec<_>>()
                .join("+"),
        );
        CompositeMatchmaker {
            primary,
            secondaries: secondaries
                .into_iter()
                .map(|matchmaker| Secondary {
                    matchmaker,
                    failures: Mutex::new(FailureLog::default()),
                })
                .collect(),
            secondary_timeout: DEFAULT_SECONDARY_TIMEOUT,
            name,
        }
    }

    /// Sets the bound on each secondary write.
    pub fn with_secondary_timeout(mut self, timeout: Duration) -> CompositeMatchmaker {
        self.secondary_timeout = timeout;
        self
    }

    /// The bound on each secondary write.
    pub fn secondary_timeout(&self) -> Duration {
        self.secondary_timeout
    }

    /// Runs `write` on the primary and, bounded and best-effort, on every
    /// secondary, all at once; the primary's result is the result.
    async fn write<'a, F>(&'a self, operation: &'static str, write: F) -> Result<()>
    where
        F: Fn(&'a dyn Matchmaker) -> BoxFuture<'a, Result<()>>,
    {
        let secondaries = futures::future::join_all(self.secondaries.iter().map(|s| {
            let attempt = write(s.matchmaker.as_ref());
            s.bounded(operation, self.secondary_timeout, attempt)
        }));
        let (primary, _) = futures::future::join(write(self.primary.as_ref()), secondaries).await;
        primary
    }
}

impl Secondary {
    /// Awaits `attempt` for at most `timeout` and records the outcome.
    async fn bounded(
        &self,
        operation: &'static str,
        timeout: Duration,
        attempt: impl Future<Output = Result<()>>,
    ) {
        let outcome = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let backend = self.matchmaker.backend();
        let now = Instant::now();
        match outcome {
            Ok(()) => {
                if let Some(failed) = lock(&self.failures).on_success() {
                    tracing::info!(
                        backend,
                        operation,
                        failed_writes = failed,
                        "secondary matchmaker works again"
                    );
                }
            }
            Err(error) => {
                if let Some(suppressed) = lock(&self.failures).on_failure(now) {
                    tracing::warn!(
                        backend,
                        operation,
                        %error,
                        suppressed_since_last_log = suppressed,
                        "secondary matchmaker write failed; kept going on the primary, retried on the next refresh"
                    );
                }
            }
        }
    }
}

/// Names are `&'static str` in the trait; a composite's name is built at
/// run time, so each distinct name is leaked once and reused.
fn intern_name(name: String) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = lock(&NAMES);
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// When to log a secondary's failures: the first of a run at once, then at
/// most once per [`FAILURE_LOG_PERIOD`], and the recovery once. Pure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailureLog {
    /// Failed writes since the last success.
    failed: u64,
    /// Failures not logged since the last log line.
    suppressed: u64,
    /// When the last failure was logged.
    last_logged: Option<Instant>,
}

impl FailureLog {
    /// Records a failure at `now`; `Some(n)` means "log it now", with `n`
    /// failures left unlogged since the previous line.
    pub fn on_failure(&mut self, now: Instant) -> Option<u64> {
        self.failed += 1;
        let due = self
            .last_logged
            .is_none_or(|t| now.saturating_duration_since(t) >= FAILURE_LOG_PERIOD);
        if due {
            self.last_logged = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Records a success; `Some(n)` (log the recovery) when it ends a run of
    /// `n` failures.
    pub fn on_success(&mut self) -> Option<u64> {
        let failed = std::mem::take(self).failed;
        (failed > 0).then_some(failed)
    }
}

impl Matchmaker for CompositeMatchmaker {
    fn backend(&self) -> &'static str {
        self.name
    }

    fn register_proxy<'a>(
        &'a self,
        proxy: &'a ProxyAddresses,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write("register proxy", move |m| m.register_proxy(proxy, ttl)))
    }

    fn drain_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write("drain proxy", move |m| m.drain_proxy(proxy)))
    }

    fn unregister_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write("unregister proxy", move |m| m.unregister_proxy(proxy)))
    }

    fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>> {
        self.primary.proxies()
    }

    fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>> {
        self.primary.watch_proxies()
    }

    fn register_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write("register server", move |m| {
            m.register_server(target, identity, ttl)
        }))
    }

    fn unregister_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write("unregister server", move |m| {
            m.unregister_server(target, identity)
        }))
    }

    fn servers<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<String>>> {
        self.primary.servers(target)
    }

    fn watch_servers<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>> {
        self.primary.watch_servers(target)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use super::super::in_process::StaticMatchmaker;
    use super::super::MatchmakerError;
    use super::*;

    use crate::matchmaker::test_proxy as proxy;

    const TTL: Duration = Duration::from_secs(60);

    /// A store that fails (or hangs) while told to, and otherwise writes to
    /// an in-process registry; counts write attempts.
    #[derive(Default)]
    struct Flaky {
        store: StaticMatchmaker,
        fail: AtomicBool,
        hang: AtomicBool,
        writes: AtomicU64,
    }

    impl Flaky {
        fn write<'a>(
            &'a self,
            f: impl FnOnce(&'a StaticMatchmaker) -> BoxFuture<'a, Result<()>>,
        ) -> BoxFuture<'a, Result<()>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                return Box::pin(futures::future::pending());
            }
            if self.fail.load(Ordering::SeqCst) {
                return Box::pin(async {
                    Err(MatchmakerError::Unavailable("flaky store is down".into()))
                });
            }
            f(&self.store)
        }
    }

    impl Matchmaker for Flaky {
        fn backend(&self) -> &'static str {
            "flaky"
        }
        fn register_proxy<'a>(
            &'a self,
            p: &'a ProxyAddresses,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<()>> {
            self.write(move |s| s.register_proxy(p, ttl))
        }
        fn unregister_proxy<'a>(&'a self, p: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
            self.write(move |s| s.unregister_proxy(p))
        }
        fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>> {
            self.store.proxies()
        }
        fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>> {
            self.store.watch_proxies()
        }
        fn register_server<'a>(
            &'a self,
            t: &'a Target,
            id: &'a str,
            ttl: Duration,
        ) -> BoxFuture<'a, Result<()>> {
            self.write(move |s| s.register_server(t, id, ttl))
        }
        fn unregister_server<'a>(
            &'a self,
            t: &'a Target,
            id: &'a str,
        ) -> BoxFuture<'a, Result<()>> {
            self.write(move |s| s.unregister_server(t, id))
        }
        fn servers<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Result<Vec<String>>> {
            self.store.servers(t)
        }
        fn watch_servers<'a>(
            &'a self,
            t: &'a Target,
        ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>> {
            self.store.watch_servers(t)
        }
    }

    fn setup() -> (StaticMatchmaker, Arc<Flaky>, CompositeMatchmaker) {
        let primary = StaticMatchmaker::new();
        let secondary = Arc::new(Flaky::default());
        let composite = CompositeMatchmaker::new(
            Arc::new(primary.clone()),
            vec![secondary.clone() as Arc<dyn Matchmaker>],
        )
        .with_secondary_timeout(Duration::from_millis(200));
        (primary, secondary, composite)
    }

    #[tokio::test]
    async fn writes_reach_every_store_and_reads_come_from_the_primary() {
        let primary = StaticMatchmaker::new();
        let second = StaticMatchmaker::new();
        let third = StaticMatchmaker::new();
        let mm: Arc<dyn Matchmaker> = Arc::new(CompositeMatchmaker::new(
            Arc::new(primary.clone()),
            vec![Arc::new(second.clone()), Arc::new(third.clone())],
        ));
        assert_eq!(mm.backend(), "static+static+static");
        mm.register_proxy(&proxy(100), TTL).await.unwrap();
        let target = Target::server("compute", "node1");
        mm.register_server(&target, "h/compute/a", TTL)
            .await
            .unwrap();
        for store in [&primary, &second, &third] {
            assert_eq!(store.proxies().await.unwrap(), vec![proxy(100)]);
            assert_eq!(store.servers(&target).await.unwrap(), vec!["h/compute/a"]);
        }
        // Something only a secondary knows is not read through the composite.
        second.register_proxy(&proxy(200), TTL).await.unwrap();
        second
            .register_server(&target, "h/compute/b", TTL)
            .await
            .unwrap();
        assert_eq!(mm.proxies().await.unwrap(), vec![proxy(100)]);
        assert_eq!(mm.servers(&target).await.unwrap(), vec!["h/compute/a"]);
        let mut proxies = mm.watch_proxies().await.unwrap();
        let servers = mm.watch_servers(&target).await.unwrap();
        assert_eq!(*proxies.borrow(), vec![proxy(100)]);
        assert_eq!(*servers.borrow(), vec!["h/compute/a".to_string()]);
        // The primary's watch is what the composite's receivers follow.
        primary.register_proxy(&proxy(300), TTL).await.unwrap();
        proxies.changed().await.unwrap();
        assert_eq!(*proxies.borrow(), vec![proxy(100), proxy(300)]);

        mm.drain_proxy(&proxy(100)).await.unwrap();
        mm.unregister_proxy(&proxy(100)).await.unwrap();
        mm.unregister_server(&target, "h/compute/a").await.unwrap();
        for store in [&primary, &second, &third] {
            assert!(!store.proxies().await.unwrap().contains(&proxy(100)));
            assert!(!store
                .servers(&target)
                .await
                .unwrap()
                .contains(&"h/compute/a".to_string()));
        }
    }

    #[tokio::test]
    async fn a_failing_secondary_never_fails_the_call_and_is_written_again_on_the_next_refresh() {
        let (primary, secondary, mm) = setup();
        secondary.fail.store(true, Ordering::SeqCst);
        mm.register_proxy(&proxy(100), TTL).await.unwrap();
        mm.register_server(&Target::topic("t"), "id", TTL)
            .await
            .unwrap();
        assert_eq!(primary.proxies().await.unwrap(), vec![proxy(100)]);
        assert!(secondary.store.proxies().await.unwrap().is_empty());
        assert_eq!(secondary.writes.load(Ordering::SeqCst), 2);

        // The store comes back; the next refresh writes it.
        secondary.fail.store(false, Ordering::SeqCst);
        mm.register_proxy(&proxy(100), TTL).await.unwrap();
        assert_eq!(secondary.store.proxies().await.unwrap(), vec![proxy(100)]);
        assert_eq!(*lock(&mm.secondaries[0].failures), FailureLog::default());
    }

    #[tokio::test]
    async fn a_hanging_secondary_delays_a_call_by_at_most_its_timeout() {
        let (primary, secondary, mm) = setup();
        secondary.hang.store(true, Ordering::SeqCst);
        for call in 0..3 {
            let started = Instant::now();
            if call < 2 {
                mm.register_proxy(&proxy(100), TTL).await.unwrap();
            } else {
                mm.unregister_proxy(&proxy(100)).await.unwrap();
            }
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(200),
                "{took:?}: the secondary got its chance"
            );
            assert!(
                took < Duration::from_secs(2),
                "{took:?}: bounded by the timeout"
            );
        }
        assert!(primary.proxies().await.unwrap().is_empty());
        assert_eq!(lock(&mm.secondaries[0].failures).failed, 3);
    }

    #[tokio::test]
    async fn the_primary_decides_the_result_and_the_secondary_is_still_written() {
        let primary = Arc::new(Flaky::default());
        let secondary = StaticMatchmaker::new();
        let mm = CompositeMatchmaker::new(primary.clone(), vec![Arc::new(secondary.clone())]);
        primary.fail.store(true, Ordering::SeqCst);
        let err = mm.register_proxy(&proxy(100), TTL).await.unwrap_err();
        assert!(matches!(err, MatchmakerError::Unavailable(_)), "{err}");
        assert_eq!(secondary.proxies().await.unwrap(), vec![proxy(100)]);
        // Reads are the primary's, even when the secondary has more.
        assert!(mm.proxies().await.unwrap().is_empty());
        primary.fail.store(false, Ordering::SeqCst);
        mm.register_proxy(&proxy(100), TTL).await.unwrap();
        assert_eq!(mm.proxies().await.unwrap(), vec![proxy(100)]);
    }

    #[tokio::test]
    async fn readiness_follows_the_primary_through_maintain_proxy_registration() {
        let (primary, secondary, mm) = setup();
        secondary.fail.store(true, Ordering::SeqCst);
        let shutdown = crate::shutdown::Shutdown::new();
        let registered = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(super::super::maintain_proxy_registration(
            Arc::new(mm),
            proxy(100),
            super::super::Liveness {
                expire: TTL,
                update: Duration::from_millis(50),
            },
            registered.clone(),
            shutdown.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while secondary.writes.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "refreshes keep retrying the secondary"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            registered.load(Ordering::SeqCst),
            "ready: registered in the primary"
        );
        assert_eq!(primary.proxies().await.unwrap(), vec![proxy(100)]);
        secondary.fail.store(false, Ordering::SeqCst);
        while secondary.store.proxies().await.unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a refresh reaches the recovered secondary"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.begin_drain_within(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn failures_are_logged_first_then_at_most_once_per_period_and_recovery_once() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        assert_eq!(log.on_failure(t0), Some(0));
        assert_eq!(log.on_failure(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.on_failure(t0 + Duration::from_secs(59)), None);
        assert_eq!(log.on_failure(t0 + FAILURE_LOG_PERIOD), Some(2));
        assert_eq!(log.on_failure(t0 + FAILURE_LOG_PERIOD), None);
        assert_eq!(log.on_success(), Some(5));
        assert_eq!(log.on_success(), None);
        // A new run of failures is logged at once again.
        assert_eq!(log.on_failure(t0 + FAILURE_LOG_PERIOD), Some(0));
    }

    #[test]
    fn names_are_interned() {
        let a = intern_name("kubernetes+redis".into());
        let b = intern_name("kubernetes+redis".into());
        assert!(std::ptr::eq(a, b));
    }
}
