//! The `redis` matchmaker: oslo.messaging 8.1.x's Redis layout, byte for
//! byte, so that unmodified oslo services and our proxies and RPC library
//! find each other in one Redis.
//!
//! Layout (shared/design/protocol.md, "Matchmaker records"):
//! - SET `PUBLISHERS`, members `"{host}:{pub},{host}:{fe}"` (written by proxies;
//!   clients find frontends here);
//! - SET `ROUTERS`, members `"{host}:{be}"` (servers find backends here);
//! - SET `DEALER/{topic}` and `DEALER/{topic}/{server}`, members server DEALER
//!   identities;
//! - for every member a liveness key named like the member itself, a SET
//!   holding `" "`. Both get `EXPIRE ttl`. A member counts only while its
//!   liveness key exists, so a crashed registrant vanishes after its TTL even
//!   though the shared SET keeps being refreshed by others.
//!
//! Writes are issued in oslo's order (`SADD set m`, `EXPIRE set`, `SADD m " "`,
//! `EXPIRE m`), to every reachable Redis of the URL; reads go to one of them.
//!
//! What oslo lacks and this backend adds, without changing the layout:
//! - Redis has no watch, so a background task polls the watched lists every
//!   [`RedisConfig::poll_period`]; while Redis is unreachable the receivers
//!   keep the last good list.
//! - The backend remembers what this process registered; whenever a
//!   connection is (re)established it writes those records again, so a Redis
//!   restart loses our registrations for about one poll period, not for a
//!   whole refresh period. A keepalive PING per period notices the loss.
//! - After a reconnect the store may still be refilling (other registrants
//!   re-register at their own pace), so for [`RedisConfig::warmup`] the
//!   watched lists only grow: members that seem to be gone are kept until
//!   the warm-up ends (oslo instead stops reading from such an instance).
//!
//! Proxies without a PUB socket (pub/sub off) still need a `PUBLISHERS`
//! member, because oslo clients find frontends only there; they write
//! `"{host}:{fe},{host}:{fe}"`, which readers decode as "no publisher".
//! Sentinel (`zmq+sentinel://`) is not supported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use super::url::{TransportUrl, UrlScheme};
use super::{BoxFuture, Matchmaker, MatchmakerError, ProxyAddresses, Result, Target};
// Every critical section is a plain map update; a panic cannot leave it
// half done, so poisoning carries no information here.
use crate::lock::lock;

/// oslo's key of the set of proxy publishers (and frontends).
pub const PUBLISHERS_KEY: &str = "PUBLISHERS";
/// oslo's key of the set of proxy backends.
pub const ROUTERS_KEY: &str = "ROUTERS";
/// The one member of every liveness key.
pub const LIVENESS_MEMBER: &str = " ";

/// One Redis server of the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisHost {
    /// Host name or IP (without brackets).
    pub host: String,
    /// TCP port, 6379 if the URL gives none.
    pub port: u16,
    /// `user:password` or `:password` exactly as in the URL (percent-encoded).
    pub userinfo: Option<String>,
}

impl RedisHost {
    /// The `redis://` URL the client library connects with (database 0, as oslo).
    pub fn client_url(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match &self.userinfo {
            Some(u) => format!("redis://{u}@{host}:{}/0", self.port),
            None => format!("redis://{host}:{}/0", self.port),
        }
    }

    /// `host:port`, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Settings of the Redis backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// The Redis servers; writes go to all, reads to one.
    pub hosts: Vec<RedisHost>,
    /// How often watched lists are re-read and connections checked.
    pub poll_period: Duration,
    /// After a reconnect, how long watched lists only grow (see module docs).
    pub warmup: Duration,
    /// Connect and response timeout of every Redis command.
    pub timeout: Duration,
}

impl RedisConfig {
    /// Parses an oslo transport URL: `zmq+redis://[[user]:pass@]host[:port][,...][/...]`
    /// (also `redis://`). The path and query are ignored, as oslo ignores them:
    /// oslo always uses database 0.
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        let invalid = |why: &str| MatchmakerError::InvalidConfig(format!("{why}: {url}"));
        let parsed = TransportUrl::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), UrlScheme::ZmqRedis | UrlScheme::Redis) {
            return Err(invalid("expected a zmq+redis:// URL"));
        }
        let netloc = parsed.netloc();
        let mut hosts = Vec::new();
        for part in netloc.split(',').filter(|p| !p.is_empty()) {
            let (userinfo, hostport) = match part.rsplit_once('@') {
                Some((u, h)) => (Some(u.to_string()), h),
                None => (None, part),
            };
            let (host, port) = split_host_port(hostport).ok_or_else(|| invalid("bad host"))?;
            hosts.push(RedisHost {
                host,
                port,
                userinfo: userinfo.filter(|u| !u.is_empty()),
            });
        }
        if hosts.is_empty() {
            return Err(invalid("no Redis host"));
        }
        Ok(RedisConfig {
            hosts,
            ..RedisConfig::default()
        })
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            hosts: vec![RedisHost {
                host: "127.0.0.1".into(),
                port: 6379,
                userinfo: None,
            }],
            poll_period: Duration::from_secs(1),
            warmup: Duration::from_secs(180),
            timeout: Duration::from_secs(2),
        }
    }
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 6379,
    };
    Some((host.to_string(), port))
}

/// One record: `member` in SET `set`, plus the liveness key `member`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Record {
    /// The shared SET (`PUBLISHERS`, `ROUTERS`, `DEALER/...`).
    pub set: String,
    /// The member, which also names its liveness key.
    pub member: String,
}

/// The records a proxy writes, in oslo's order (publisher first, then router).
pub fn proxy_records(proxy: &ProxyAddresses) -> Vec<Record> {
    let publishers_member = proxy.oslo_publishers_member().unwrap_or_else(|| {
        let fe = format!("{}:{}", proxy.host, proxy.frontend_port);
        format!("{fe},{fe}")
    });
    vec![
        Record {
            set: PUBLISHERS_KEY.into(),
            member: publishers_member,
        },
        Record {
            set: ROUTERS_KEY.into(),
            member: proxy.oslo_routers_member(),
        },
    ]
}

/// Splits `host:port` at the last colon.
fn parse_address(s: &str) -> Option<(&str, u16)> {
    let (h, p) = s.rsplit_once(':')?;
    Some((h, p.parse().ok()?))
}

/// Rebuilds proxies from the live members of `PUBLISHERS` and `ROUTERS`.
///
/// oslo's layout does not say which backend belongs to which frontend, so
/// they are paired per host: a router equal to a frontend is single-router
/// mode; the others are paired in port order. With several proxies on one
/// host the pairing may cross proxies, which is harmless because clients
/// only use the frontends and servers only the backends, each as a set.
/// Routers without a publisher are left out until their proxy's publisher
/// record shows up (a proxy writes both at once).
pub fn proxies_from_members(publishers: &[String], routers: &[String]) -> Vec<ProxyAddresses> {
    let mut routers_by_host: BTreeMap<&str, BTreeSet<u16>> = BTreeMap::new();
    for r in routers {
        if let Some((h, p)) = parse_address(r) {
            routers_by_host.entry(h).or_default().insert(p);
        }
    }
    // (host, fe, pub) sorted, so pairing is deterministic.
    let mut fronts: Vec<(&str, u16, Option<u16>)> = Vec::new();
    for m in publishers {
        let Some((publ, fe)) = m.split_once(',') else {
            continue;
        };
        let (Some((ph, pp)), Some((fh, fp))) = (parse_address(publ), parse_address(fe)) else {
            continue;
        };
        let publisher = (publ != fe && ph == fh).then_some(pp);
        fronts.push((fh, fp, publisher));
    }
    fronts.sort();
    fronts.dedup();
    // Which router serves each frontend: None = none yet, Some(None) =
    // single-router (the frontend itself), Some(Some(be)) = a backend.
    let mut backend: Vec<Option<Option<u16>>> = vec![None; fronts.len()];
    for (slot, (h, fe, _)) in backend.iter_mut().zip(&fronts) {
        if routers_by_host
            .get_mut(h)
            .is_some_and(|ports| ports.remove(fe))
        {
            *slot = Some(None);
        }
    }
    for (slot, (h, _, _)) in backend.iter_mut().zip(&fronts) {
        if slot.is_none() {
            if let Some(be) = routers_by_host.get_mut(h).and_then(|p| p.pop_first()) {
                *slot = Some(Some(be));
            }
        }
    }
    let mut out: Vec<ProxyAddresses> = fronts
        .iter()
        .zip(backend)
        .filter_map(|((h, fe, publisher), be)| {
            be.map(|backend_port| ProxyAddresses {
                host: h.to_string(),
                frontend_port: *fe,
                backend_port,
                publisher_port: *publisher,
                curve_key: None,
            })
        })
        .collect();
    out.sort();
    out
}

/// Seconds for EXPIRE: a TTL is never rounded down to zero.
fn expire_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// oslo's write of one record, in its order.
fn add_commands(pipe: &mut redis::Pipeline, record: &Record, ttl_secs: u64) {
    pipe.cmd("SADD")
        .arg(&record.set)
        .arg(&record.member)
        .ignore();
    if ttl_secs > 0 {
        pipe.cmd("EXPIRE").arg(&record.set).arg(ttl_secs).ignore();
    }
    pipe.cmd("SADD")
        .arg(&record.member)
        .arg(LIVENESS_MEMBER)
        .ignore();
    if ttl_secs > 0 {
        pipe.cmd("EXPIRE")
            .arg(&record.member)
            .arg(ttl_secs)
            .ignore();
    }
}

/// oslo's removal of one record.
fn remove_commands(pipe: &mut redis::Pipeline, record: &Record) {
    pipe.cmd("SREM")
        .arg(&record.set)
        .arg(&record.member)
        .ignore();
    pipe.cmd("SREM")
        .arg(&record.member)
        .arg(LIVENESS_MEMBER)
        .ignore();
}

fn unavailable(e: impl std::fmt::Display) -> MatchmakerError {
    MatchmakerError::Unavailable(e.to_string())
}

/// One Redis server and its (lazily opened) connection.
struct Instance {
    address: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// When reads from this instance are trusted again after a reconnect.
    warm_from: Mutex<Option<Instant>>,
    /// Whether a connection was ever established (the first one needs no warm-up).
    ever_connected: Mutex<bool>,
    /// After a failed connect, no new attempt before this time, so a dead
    /// server costs one connect timeout per period, not one per operation.
    next_attempt: Mutex<Option<Instant>>,
    /// A write to this server failed: our records must be written again on
    /// the next connection (besides after every reconnect).
    missed_writes: Mutex<bool>,
}

/// oslo's Redis layout behind the [`Matchmaker`] trait; cheap to clone.
#[derive(Clone)]
pub struct RedisMatchmaker {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    instances: Vec<Instance>,
    /// What this process registered (record -> EXPIRE seconds), replayed on reconnect.
    owned: Mutex<BTreeMap<Record, u64>>,
    watches: Mutex<Watches>,
}

#[derive(Default)]
struct Watches {
    proxies: Option<Watched<ProxyAddresses>>,
    servers: BTreeMap<Target, Watched<String>>,
    poller_started: bool,
}

/// A watched list, updated by the poller while it has receivers.
struct Watched<T> {
    tx: watch::Sender<Vec<T>>,
}

impl RedisMatchmaker {
    /// A backend for the Redis servers of `config`. Connects lazily: Redis
    /// may be down at start.
    pub fn new(config: RedisConfig) -> Result<RedisMatchmaker> {
        let mut instances = Vec::new();
        for host in &config.hosts {
            let client = redis::Client::open(host.client_url())
                .map_err(|e| MatchmakerError::InvalidConfig(format!("{}: {e}", host.address())))?;
            instances.push(Instance {
                address: host.address(),
                client,
                conn: tokio::sync::Mutex::new(None),
                warm_from: Mutex::new(None),
                ever_connected: Mutex::new(false),
                next_attempt: Mutex::new(None),
                missed_writes: Mutex::new(false),
            });
        }
        Ok(RedisMatchmaker {
            inner: Arc::new(Inner {
                config,
                instances,
                owned: Mutex::new(BTreeMap::new()),
                watches: Mutex::new(Watches::default()),
            }),
        })
    }

    /// A backend for an oslo transport URL (`zmq+redis://host:port[,host2:port2]`).
    pub fn from_url(url: &str) -> Result<RedisMatchmaker> {
        RedisMatchmaker::new(RedisConfig::from_url(url)?)
    }

    /// The settings in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    fn ensure_poller(&self) {
        let mut w = lock(&self.inner.watches);
        if w.poller_started {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        w.poller_started = true;
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(poll_loop(weak, self.inner.config.poll_period));
    }
}

/// Re-reads watched lists and checks connections (which replays our
/// records after a reconnect) until the backend is dropped.
async fn poll_loop(weak: Weak<Inner>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        inner.poll_once().await;
    }
}

impl Inner {
    /// A live connection to `inst`, connecting (and replaying our records) if needed.
    async fn connection(&self, inst: &Instance) -> Result<MultiplexedConnection> {
        let mut slot = inst.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.timeout))
            .set_response_timeout(Some(self.config.timeout));
        if lock(&inst.next_attempt).is_some_and(|t| Instant::now() < t) {
            return Err(unavailable(format!("{}: down", inst.address)));
        }
        let connected = inst
            .client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await;
        let mut conn = match connected {
            Ok(c) => c,
            Err(e) => {
                let retry = self.config.poll_period.max(Duration::from_millis(200));
                *lock(&inst.next_attempt) = Some(Instant::now() + retry);
                return Err(unavailable(format!("{}: {e}", inst.address)));
            }
        };
        let reconnect = *lock(&inst.ever_connected);
        // A first connection needs no replay unless a write was missed: the
        // write that asked for the connection follows, and a doubled write
        // would differ from oslo's command sequence.
        let replay = reconnect || *lock(&inst.missed_writes);
        let owned: Vec<(Record, u64)> = if replay {
            lock(&self.owned)
                .iter()
                .map(|(r, t)| (r.clone(), *t))
                .collect()
        } else {
            Vec::new()
        };
        if !owned.is_empty() {
            let mut pipe = redis::pipe();
            for (record, ttl) in &owned {
                add_commands(&mut pipe, record, *ttl);
            }
            pipe.exec_async(&mut conn)
                .await
                .map_err(|e| unavailable(format!("{}: {e}", inst.address)))?;
            if reconnect {
                tracing::info!(redis = %inst.address, records = owned.len(), "re-registered in redis");
            }
        }
        if reconnect {
            *lock(&inst.warm_from) = Some(Instant::now() + self.config.warmup);
            tracing::info!(redis = %inst.address, "redis is reachable again");
        }
        *lock(&inst.ever_connected) = true;
        *lock(&inst.next_attempt) = None;
        *lock(&inst.missed_writes) = false;
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection after an error, so the next use reconnects.
    async fn drop_connection(&self, inst: &Instance, error: &redis::RedisError) {
        let mut slot = inst.conn.lock().await;
        if slot.take().is_some() {
            tracing::warn!(redis = %inst.address, %error, "redis connection lost");
        }
    }

    /// Runs `pipe` on every instance; succeeds if at least one did (oslo's write rule).
    async fn write_all(&self, pipe: &redis::Pipeline) -> Result<()> {
        let mut last_error = None;
        let mut ok = false;
        for inst in &self.instances {
            let mut conn = match self.connection(inst).await {
                Ok(c) => c,
                Err(e) => {
                    *lock(&inst.missed_writes) = true;
                    last_error = Some(e);
                    continue;
                }
            };
            match pipe.exec_async(&mut conn).await {
                Ok(()) => ok = true,
                Err(e) => {
                    *lock(&inst.missed_writes) = true;
                    self.drop_connection(inst, &e).await;
                    last_error = Some(unavailable(format!("{}: {e}", inst.address)));
                }
            }
        }
        match (ok, last_error) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(unavailable("no redis host configured")),
        }
    }

    async fn add(&self, records: Vec<Record>, ttl: Duration) -> Result<()> {
        let secs = expire_secs(ttl);
        {
            let mut owned = lock(&self.owned);
            for r in &records {
                owned.insert(r.clone(), secs);
            }
        }
        let mut pipe = redis::pipe();
        for r in &records {
            add_commands(&mut pipe, r, secs);
        }
        self.write_all(&pipe).await
    }

    async fn remove(&self, records: Vec<Record>) -> Result<()> {
        {
            let mut owned = lock(&self.owned);
            for r in &records {
                owned.remove(r);
            }
        }
        let mut pipe = redis::pipe();
        for r in &records {
            remove_commands(&mut pipe, r);
        }
        self.write_all(&pipe).await
    }

    /// Live members of each of `keys` (member listed and its liveness key
    /// present), from one instance: a warm one if any answers. The flag says
    /// whether the answer came from an instance still warming up.
    async fn read_live(&self, keys: &[String]) -> Result<(Vec<Vec<String>>, bool)> {
        let now = Instant::now();
        let mut order: Vec<(bool, &Instance)> = self
            .instances
            .iter()
            .map(|i| (lock(&i.warm_from).is_some_and(|t| t > now), i))
            .collect();
        order.sort_by_key(|(warming, _)| *warming);
        let mut last_error = None;
        for (warming, inst) in order {
            let mut conn = match self.connection(inst).await {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match read_live_from(&mut conn, keys).await {
                Ok(lists) => return Ok((lists, warming)),
                Err(e) => {
                    self.drop_connection(inst, &e).await;
                    last_error = Some(unavailable(format!("{}: {e}", inst.address)));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| unavailable("no redis host configured")))
    }

    async fn read_proxies(&self) -> Result<(Vec<ProxyAddresses>, bool)> {
        let (lists, warming) = self
            .read_live(&[PUBLISHERS_KEY.to_string(), ROUTERS_KEY.to_string()])
            .await?;
        let (publishers, routers) = match lists.as_slice() {
            [p, r] => (p.as_slice(), r.as_slice()),
            _ => (&[][..], &[][..]),
        };
        Ok((proxies_from_members(publishers, routers), warming))
    }

    async fn poll_once(&self) {
        // Keep connections checked (and records replayed) even when nobody
        // watches: a proxy process only writes every refresh period.
        if !lock(&self.owned).is_empty() {
            for inst in &self.instances {
                if let Ok(mut conn) = self.connection(inst).await {
                    let ping: redis::RedisResult<()> =
                        redis::cmd("PING").exec_async(&mut conn).await;
                    if let Err(e) = ping {
                        self.drop_connection(inst, &e).await;
                    }
                }
            }
        }
        let (watch_proxies, targets) = {
            let mut w = lock(&self.watches);
            if w.proxies.as_ref().is_some_and(|p| p.tx.is_closed()) {
                w.proxies = None;
            }
            w.servers.retain(|_, s| !s.tx.is_closed());
            (
                w.proxies.is_some(),
                w.servers.keys().cloned().collect::<Vec<Target>>(),
            )
        };
        if watch_proxies {
            if let Ok((list, warming)) = self.read_proxies().await {
                let w = lock(&self.watches);
                if let Some(p) = &w.proxies {
                    p.tx.send_if_modified(|cur| publish(cur, list, warming));
                }
            }
        }
        if !targets.is_empty() {
            let keys: Vec<String> = targets.iter().map(Target::oslo_key).collect();
            if let Ok((lists, warming)) = self.read_live(&keys).await {
                let w = lock(&self.watches);
                for (target, list) in targets.iter().zip(lists) {
                    if let Some(s) = w.servers.get(target) {
                        s.tx.send_if_modified(|cur| publish(cur, list, warming));
                    }
                }
            }
        }
    }
}

/// Replaces a watched list (or, while warming up, only adds to it).
fn publish<T: Ord + Clone>(current: &mut Vec<T>, fresh: Vec<T>, warming: bool) -> bool {
    let next: Vec<T> = if warming {
        let mut all: BTreeSet<T> = current.iter().cloned().collect();
        all.extend(fresh);
        all.into_iter().collect()
    } else {
        fresh
    };
    if *current == next {
        false
    } else {
        *current = next;
        true
    }
}

/// SMEMBERS of each key, then EXISTS of every member's liveness key (oslo
/// checks `TTL >= -1`, which is the same thing), in two round trips.
async fn read_live_from(
    conn: &mut MultiplexedConnection,
    keys: &[String],
) -> redis::RedisResult<Vec<Vec<String>>> {
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("SMEMBERS").arg(k);
    }
    let members: Vec<Vec<String>> = pipe.query_async(conn).await?;
    let all: BTreeSet<&String> = members.iter().flatten().collect();
    let all: Vec<&String> = all.into_iter().collect();
    let mut live: BTreeSet<&String> = BTreeSet::new();
    if !all.is_empty() {
        let mut pipe = redis::pipe();
        for m in &all {
            pipe.cmd("EXISTS").arg(*m);
        }
        let exists: Vec<i64> = pipe.query_async(conn).await?;
        live.extend(
            all.iter()
                .zip(exists)
                .filter(|(_, e)| *e > 0)
                .map(|(m, _)| *m),
        );
    }
    Ok(members
        .iter()
        .map(|list| {
            let mut l: Vec<String> = list.iter().filter(|m| live.contains(m)).cloned().collect();
            l.sort();
            l
        })
        .collect())
}

impl Matchmaker for RedisMatchmaker {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn register_proxy<'a>(
        &'a self,
        proxy: &'a ProxyAddresses,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        self.ensure_poller();
        Box::pin(self.inner.add(proxy_records(proxy), ttl))
    }

    fn unregister_proxy<'a>(&'a self, proxy: &'a ProxyAddresses) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.inner.remove(proxy_records(proxy)))
    }

    fn proxies(&self) -> BoxFuture<'_, Result<Vec<ProxyAddresses>>> {
        Box::pin(async move { Ok(self.inner.read_proxies().await?.0) })
    }

    fn watch_proxies(&self) -> BoxFuture<'_, Result<watch::Receiver<Vec<ProxyAddresses>>>> {
        Box::pin(async move {
            self.ensure_poller();
            if let Some(p) = &lock(&self.inner.watches).proxies {
                return Ok(p.tx.subscribe());
            }
            // The first subscriber waits for one read, so it starts with the
            // real list; later ones share the poller's sender.
            let initial = self.inner.read_proxies().await?.0;
            let mut w = lock(&self.inner.watches);
            let p = w.proxies.get_or_insert_with(|| Watched {
                tx: watch::channel(initial).0,
            });
            Ok(p.tx.subscribe())
        })
    }

    fn register_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<()>> {
        self.ensure_poller();
        let record = Record {
            set: target.oslo_key(),
            member: identity.to_string(),
        };
        Box::pin(self.inner.add(vec![record], ttl))
    }

    fn unregister_server<'a>(
        &'a self,
        target: &'a Target,
        identity: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        let record = Record {
            set: target.oslo_key(),
            member: identity.to_string(),
        };
        Box::pin(self.inner.remove(vec![record]))
    }

    fn servers<'a>(&'a self, target: &'a Target) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            let (mut lists, _) = self.inner.read_live(&[target.oslo_key()]).await?;
            Ok(lists.pop().unwrap_or_default())
        })
    }

    fn watch_servers<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<watch::Receiver<Vec<String>>>> {
        Box::pin(async move {
            self.ensure_poller();
            if let Some(s) = lock(&self.inner.watches).servers.get(target) {
                return Ok(s.tx.subscribe());
            }
            let (mut lists, _) = self.inner.read_live(&[target.oslo_key()]).await?;
            let initial = lists.pop().unwrap_or_default();
            let mut w = lock(&self.inner.watches);
            let s = w.servers.entry(target.clone()).or_insert_with(|| Watched {
                tx: watch::channel(initial).0,
            });
            Ok(s.tx.subscribe())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_as_oslo_writes_them() {
        let c = RedisConfig::from_url("zmq+redis://127.0.0.1:6379").unwrap();
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.hosts[0].client_url(), "redis://127.0.0.1:6379/0");
        let c = RedisConfig::from_url("zmq+redis://:s3cr%40t@r1:7000,:pw@r2/ignored?x=1").unwrap();
        assert_eq!(
            c.hosts,
            vec![
                RedisHost {
                    host: "r1".into(),
                    port: 7000,
                    userinfo: Some(":s3cr%40t".into())
                },
                RedisHost {
                    host: "r2".into(),
                    port: 6379,
                    userinfo: Some(":pw".into())
                },
            ]
        );
        assert_eq!(c.hosts[0].client_url(), "redis://:s3cr%40t@r1:7000/0");
        let v6 = RedisConfig::from_url("zmq+redis://[::1]:6380/").unwrap();
        assert_eq!(v6.hosts[0].client_url(), "redis://[::1]:6380/0");
        assert!(RedisConfig::from_url("zmq+redis://").is_err());
        assert!(RedisConfig::from_url("zmq+sentinel://h:26379").is_err());
        assert!(RedisConfig::from_url("zmq+redis://h:notaport").is_err());
    }

    #[test]
    fn proxy_records_match_oslo() {
        let p = ProxyAddresses {
            host: "10.0.0.5".into(),
            frontend_port: 50001,
            backend_port: Some(50002),
            publisher_port: Some(50003),
            curve_key: None,
        };
        assert_eq!(
            proxy_records(&p),
            vec![
                Record {
                    set: "PUBLISHERS".into(),
                    member: "10.0.0.5:50003,10.0.0.5:50001".into()
                },
                Record {
                    set: "ROUTERS".into(),
                    member: "10.0.0.5:50002".into()
                },
            ]
        );
        let no_pub = ProxyAddresses {
            publisher_port: None,
            ..p.clone()
        };
        assert_eq!(
            proxy_records(&no_pub)[0].member,
            "10.0.0.5:50001,10.0.0.5:50001"
        );
        // Round trip through the members.
        let members = |p: &ProxyAddresses| {
            let r = proxy_records(p);
            (r[0].member.clone(), r[1].member.clone())
        };
        let single = ProxyAddresses {
            host: "10.0.0.6".into(),
            frontend_port: 40001,
            backend_port: None,
            publisher_port: Some(40003),
            curve_key: None,
        };
        let (p1, r1) = members(&p);
        let (p2, r2) = members(&no_pub);
        let (p3, r3) = members(&single);
        assert_eq!(
            proxies_from_members(std::slice::from_ref(&p1), std::slice::from_ref(&r1)),
            vec![p.clone()]
        );
        assert_eq!(proxies_from_members(&[p2], &[r2]), vec![no_pub]);
        assert_eq!(proxies_from_members(&[p3, p1], &[r3, r1]), vec![p, single]);
    }

    #[test]
    fn several_proxies_on_one_host_keep_every_endpoint() {
        let proxies: Vec<ProxyAddresses> = [(100, 900, 500), (200, 800, 600), (300, 700, 400)]
            .iter()
            .map(|&(fe, be, publ)| ProxyAddresses {
                host: "127.0.0.1".into(),
                frontend_port: fe,
                backend_port: Some(be),
                publisher_port: Some(publ),
                curve_key: None,
            })
            .collect();
        let (pubs, routers): (Vec<String>, Vec<String>) = proxies
            .iter()
            .map(|p| {
                let r = proxy_records(p);
                (r[0].member.clone(), r[1].member.clone())
            })
            .unzip();
        let back = proxies_from_members(&pubs, &routers);
        let set = |f: fn(&ProxyAddresses) -> String, l: &[ProxyAddresses]| {
            l.iter().map(f).collect::<BTreeSet<_>>()
        };
        assert_eq!(
            set(|p| p.frontend_endpoint(), &back),
            set(|p| p.frontend_endpoint(), &proxies)
        );
        assert_eq!(
            set(|p| p.server_endpoint(), &back),
            set(|p| p.server_endpoint(), &proxies)
        );
        // A router without its publisher record is not a proxy yet; junk is skipped.
        assert!(proxies_from_members(&["junk".into()], &["127.0.0.1:1".into()]).is_empty());
    }

    #[test]
    fn warmup_only_adds() {
        let mut cur = vec![1, 2];
        assert!(!publish(&mut cur, vec![1], true) && cur == vec![1, 2]);
        assert!(publish(&mut cur, vec![3], true) && cur == vec![1, 2, 3]);
        assert!(publish(&mut cur, vec![3], false) && cur == vec![3]);
        assert_eq!(expire_secs(Duration::from_millis(1500)), 2);
        assert_eq!(expire_secs(Duration::from_secs(300)), 300);
    }
}
