//! Which server identity a client addresses: round-robin over a target's
//! live identities, as the matchmaker lists them.
//!
//! Each target gets a watch receiver (pushed or polled by the backend) and a
//! counter. The counter lives as long as the client, not as long as the
//! list: when every server of a target vanishes and comes back, rotation
//! goes on where it stopped (oslo reset it). Identities that leave the
//! matchmaker leave the rotation at the next list update.
//!
//! A server that crashed stays listed until its registration expires. So
//! that new requests do not keep going to it meanwhile, a server that let
//! an ack time out is *suspect* for a while: new requests skip it (unless
//! every server is suspect), and any ack or reply from it clears it.
//! Re-sends of one message keep their server (see the client), so this
//! never makes a message run twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::RpcError;
use crate::matchmaker::{Matchmaker, Target};

/// Chooses `servers[next % len]` and advances; `None` on an empty list.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundRobin {
    next: usize,
}

impl RoundRobin {
    /// The next identity of `servers`.
    pub fn choose<'a>(&mut self, servers: &'a [String]) -> Option<&'a String> {
        if servers.is_empty() {
            return None;
        }
        let chosen = &servers[self.next % servers.len()];
        self.next = self.next.wrapping_add(1);
        Some(chosen)
    }
}

struct Route {
    servers: watch::Receiver<Vec<String>>,
    rr: RoundRobin,
    /// Servers skipped by new requests until the given time.
    suspects: HashMap<String, Instant>,
}

/// Per-target server lists and rotation state of one client.
pub struct Routes {
    matchmaker: Arc<dyn Matchmaker>,
    routes: Mutex<HashMap<Target, Route>>,
}

impl Routes {
    /// Routes backed by `matchmaker`.
    pub fn new(matchmaker: Arc<dyn Matchmaker>) -> Routes {
        Routes {
            matchmaker,
            routes: Mutex::new(HashMap::new()),
        }
    }

    async fn receiver(&self, target: &Target) -> Result<watch::Receiver<Vec<String>>, RpcError> {
        let mut routes = self.routes.lock().await;
        if let Some(r) = routes.get(target) {
            return Ok(r.servers.clone());
        }
        let rx = self.matchmaker.watch_servers(target).await?;
        routes.insert(
            target.clone(),
            Route {
                servers: rx.clone(),
                rr: RoundRobin::default(),
                suspects: HashMap::new(),
            },
        );
        Ok(rx)
    }

    /// Waits (until `deadline`) for `target` to have servers, and returns them.
    pub async fn servers(
        &self,
        target: &Target,
        deadline: Instant,
    ) -> Result<Vec<String>, RpcError> {
        let mut rx = self.receiver(target).await?;
        let waited = tokio::time::timeout_at(deadline, rx.wait_for(|l| !l.is_empty())).await;
        match waited {
            Ok(Ok(list)) => Ok(list.clone()),
            _ => Err(RpcError::NoServers(target.clone())),
        }
    }

    /// The next server of `target` in rotation, waiting until `deadline` for one.
    pub async fn choose(&self, target: &Target, deadline: Instant) -> Result<String, RpcError> {
        let list = self.servers(target, deadline).await?;
        let mut routes = self.routes.lock().await;
        let route = routes
            .get_mut(target)
            .ok_or_else(|| RpcError::NoServers(target.clone()))?;
        let now = Instant::now();
        route.suspects.retain(|_, until| *until > now);
        let healthy: Vec<String> = list
            .iter()
            .filter(|s| !route.suspects.contains_key(*s))
            .cloned()
            .collect();
        let pool = if healthy.is_empty() { &list } else { &healthy };
        route
            .rr
            .choose(pool)
            .cloned()
            .ok_or_else(|| RpcError::NoServers(target.clone()))
    }

    /// Marks `identity` as suspect for `period`: new requests skip it.
    pub async fn suspect(&self, target: &Target, identity: &str, period: Duration) {
        if let Some(route) = self.routes.lock().await.get_mut(target) {
            route
                .suspects
                .insert(identity.to_string(), Instant::now() + period);
        }
    }

    /// Clears a suspicion: `identity` answered.
    pub async fn clear(&self, target: &Target, identity: &str) {
        if let Some(route) = self.routes.lock().await.get_mut(target) {
            route.suspects.remove(identity);
        }
    }

    /// Whether `identity` is still listed for `target`.
    pub async fn is_live(&self, target: &Target, identity: &str) -> bool {
        let routes = self.routes.lock().await;
        routes
            .get(target)
            .is_some_and(|r| r.servers.borrow().iter().any(|s| s == identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_survives_an_empty_list() {
        let mut rr = RoundRobin::default();
        let two = vec!["a".to_string(), "b".to_string()];
        assert_eq!(rr.choose(&two).unwrap(), "a");
        assert_eq!(rr.choose(&two).unwrap(), "b");
        assert_eq!(rr.choose(&two).unwrap(), "a");
        assert_eq!(rr.choose(&[]), None);
        assert_eq!(rr.choose(&two).unwrap(), "b");
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let picks: Vec<&String> = (0..3).filter_map(|_| rr.choose(&three)).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 3, "every server gets a turn: {picks:?}");
    }
}
