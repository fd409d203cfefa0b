//! Which server identity a client addresses: round-robin over a target's
//! live identities, as the matchmaker lists them.
//!
//! Each target gets a watch receiver (pushed or polled by the backend) and a
//! counter. The counter lives as long as the client, not as long as the
//! list: when every server of a target vanishes and comes back, rotation
//! goes on where it stopped (oslo reset it). Identities that leave the
//! matchmaker leave the rotation at the next list update.

use std::collections::HashMap;
use std::sync::Arc;

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
        route
            .rr
            .choose(&list)
            .cloned()
            .ok_or_else(|| RpcError::NoServers(target.clone()))
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
