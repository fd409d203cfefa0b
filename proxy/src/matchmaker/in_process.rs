//! The `static` matchmaker: fixed proxy addresses plus an in-process
//! registry with TTLs. It is the embedded default for local runs (one proxy
//! registers itself; nothing leaves the process) and lets tests put proxies,
//! RPC clients and servers of one process behind one shared registry (clone
//! the handle; clones share state).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{replace_if_changed, BoxFuture, Matchmaker, ProxyAddresses, Result, Target};

/// How often a background task expires registrations once somebody watches.
const SWEEP_PERIOD: Duration = Duration::from_millis(500);

/// Fixed addresses and an in-process registry; cheap to clone, clones share state.
#[derive(Clone, Default)]
pub struct StaticMatchmaker {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Proxies given at construction; they never expire.
    fixed: BTreeSet<ProxyAddresses>,
    /// Registered proxies and when they expire.
    proxies: BTreeMap<ProxyAddresses, Instant>,
    /// Registered server identities per target and when they expire.
    servers: BTreeMap<Target, BTreeMap<String, Instant>>,
    proxy_watch: Option<watch::Sender<Vec<ProxyAddresses>>>,
    server_watch: BTreeMap<Target, watch::Sender<Vec<String>>>,
    sweeper_started: bool,
}

impl State {
    fn live_proxies(&self) -> Vec<ProxyAddresses> {
        let mut all: BTreeSet<ProxyAddresses> = self.fixed.clone();
        all.extend(self.proxies.keys().cloned());
        all.into_iter().collect()
    }

    fn live_servers(&self, target: &Target) -> Vec<String> {
        self.servers
            .get(target)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops expired entries, then pushes the current lists to watchers
    /// whose list changed.
    fn sweep_and_notify(&mut self, now: Instant) {
        self.proxies.retain(|_, deadline| *deadline > now);
        for ids in self.servers.values_mut() {
            ids.retain(|_, deadline| *deadline > now);
        }
        self.servers.retain(|_, ids| !ids.is_empty());
        if let Some(tx) = &self.proxy_watch {
            let current = self.live_proxies();
            tx.send_if_modified(|v| replace_if_changed(v, current));
        }
        let targets: Vec<Target> = self.server_watch.keys().cloned().collect();
        for target in targets {
            let current = self.live_servers(&target);
            if let Some(tx) = self.server_watch.get(&target) {
                tx.send_if_modified(|v| replace_if_changed(v, current));
            }
        }
    }
}

impl StaticMatchmaker {
    /// An empty in-process registry.
    pub fn new() -> StaticMatchmaker {
        StaticMatchmaker::default()
    }

    /// A registry that always lists `proxies` (fixed addresses, never expiring).
    pub fn with_proxies(proxies: impl IntoIterator<Item = ProxyAddresses>) -> StaticMatchmaker {
        let mm = StaticMatchmaker::default();
        mm.lock().fixed.extend(proxies);
        mm
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // (every update is a single insert/remove), so poisoning is ignored.
        crate::lock::lock(&self.inner)
    }

    /// Starts (once) a task that expires registrations even when nobody
    /// writes, so watchers see crashed registrants leave.
    fn ensure_sweeper(&self, state: &mut State) {
        if state.sweeper_started {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        state.sweeper_started = true;
        let weak: Weak<Mutex<State>> = Arc::downgrade(&self.inner);
        handle.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_PERIOD);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let mut state = inner.lock().unwrap_or_else(|p| p.into_inner());
                state.sweep_and_notify(Instant::now());
            }
        });
    }

    fn update(&self, f: impl FnOnce(&mut State, Instant)) {
        let now = Instant::now();
        let mut state = self.lock();
        f(&mut state, now);
        state.sweep_and_notify(now);
    }
}

impl Matchmaker for StaticMatchmaker {
    fn backend(&self) -> &'static str {
        "static"
    }

    fn register_proxy<'a>(
        &'a self,
        proxy: &'a ProxyAddresses,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        self.update(|s, now| {
            s.proxies.insert(proxy.clone(), now + ttl);
        });
        Box::pin(async { Ok(()) })
    }

    fn unregister_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        self.update(|s, _| {
            s.proxies.remove(proxy);
        });
        Box::pin(async { Ok(()) })
    }

    fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>> {
        let mut state = self.lock();
        state.sweep_and_notify(Instant::now());
        let list = state.live_proxies();
        Box::pin(async move { Ok(list) })
    }

    fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>> {
        let mut state = self.lock();
        self.ensure_sweeper(&mut state);
        state.sweep_and_notify(Instant::now());
        let current = state.live_proxies();
        let rx = state
            .proxy_watch
            .get_or_insert_with(|| watch::channel(current).0)
            .subscribe();
        Box::pin(async move { Ok(rx) })
    }

    fn register_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        self.update(|s, now| {
            s.servers
                .entry(target.clone())
                .or_default()
                .insert(identity.to_string(), now + ttl);
        });
        Box::pin(async { Ok(()) })
    }

    fn unregister_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        self.update(|s, _| {
            if let Some(ids) = s.servers.get_mut(target) {
                ids.remove(identity);
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn servers<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<String>>> {
        let mut state = self.lock();
        state.sweep_and_notify(Instant::now());
        let list = state.live_servers(target);
        Box::pin(async move { Ok(list) })
    }

    fn watch_servers<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>> {
        let mut state = self.lock();
        self.ensure_sweeper(&mut state);
        state.sweep_and_notify(Instant::now());
        let current = state.live_servers(target);
        let rx = state
            .server_watch
            .entry(target.clone())
            .or_insert_with(|| watch::channel(current).0)
            .subscribe();
        Box::pin(async move { Ok(rx) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::matchmaker::test_proxy as proxy;

    #[tokio::test]
    async fn fixed_and_registered_proxies_are_listed_until_unregistered() {
        let mm: Arc<dyn Matchmaker> = Arc::new(StaticMatchmaker::with_proxies([proxy(100)]));
        assert_eq!(mm.proxies().await.unwrap(), vec![proxy(100)]);
        mm.register_proxy(&proxy(200), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(mm.proxies().await.unwrap(), vec![proxy(100), proxy(200)]);
        mm.unregister_proxy(&proxy(200)).await.unwrap();
        assert_eq!(mm.proxies().await.unwrap(), vec![proxy(100)]);
    }

    #[tokio::test]
    async fn servers_expire_after_their_ttl_and_watchers_see_it() {
        let mm = StaticMatchmaker::new();
        let target = Target::topic("compute");
        let mut rx = mm.watch_servers(&target).await.unwrap();
        assert!(rx.borrow().is_empty());
        mm.register_server(&target, "h/compute/a", Duration::from_millis(300))
            .await
            .unwrap();
        mm.register_server(&target, "h/compute/b", Duration::from_secs(60))
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(
            *rx.borrow_and_update(),
            vec!["h/compute/a".to_string(), "h/compute/b".to_string()]
        );
        // The sweeper drops "a" without anybody writing.
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                rx.changed().await.unwrap();
                if *rx.borrow_and_update() == vec!["h/compute/b".to_string()] {
                    break;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(
            mm.servers(&target).await.unwrap(),
            vec!["h/compute/b".to_string()]
        );
        assert!(mm
            .servers(&Target::server("compute", "x"))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn clones_share_one_registry_and_proxy_watch_follows_changes() {
        let a = StaticMatchmaker::new();
        let b = a.clone();
        let mut rx = b.watch_proxies().await.unwrap();
        a.register_proxy(&proxy(300), Duration::from_secs(60))
            .await
            .unwrap();
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), vec![proxy(300)]);
        a.unregister_proxy(&proxy(300)).await.unwrap();
        rx.changed().await.unwrap();
        assert!(rx.borrow().is_empty());
    }
}
