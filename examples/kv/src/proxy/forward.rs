//! The forwarding loop: find the node, call it, and on a transient failure wait
//! for the routing table to move (or a short pause) and try again, until the
//! request's deadline.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;

use ranger_node_sdk::{Route, RoutingTable};
use ranger_proto::{Key, RangeId, RemoteState};
use tokio::time::Instant;
use tonic::Status;

use super::batch::Batcher;
use super::error::{GaveUp, LastFailure};
use super::metrics::ProxyMetrics;
use super::pool::ChannelPool;
use super::retry::{RetryPolicy, is_retryable};

/// Routes and retries requests; shared by every request the service handles.
#[derive(Debug)]
pub(crate) struct Forwarder {
    table: RoutingTable,
    pool: ChannelPool,
    policy: RetryPolicy,
    metrics: ProxyMetrics,
    /// Per range with several Active copies (a replicated range), the copy
    /// that last served it: only its primary serves clients, so requests go
    /// there first instead of being refused by a member on every call.
    served_by: Mutex<HashMap<RangeId, String>>,
}

impl Forwarder {
    pub(crate) fn new(
        table: RoutingTable,
        pool: ChannelPool,
        policy: RetryPolicy,
        metrics: ProxyMetrics,
    ) -> Self {
        Forwarder {
            table,
            pool,
            policy,
            metrics,
            served_by: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    pub(crate) fn table(&self) -> &RoutingTable {
        &self.table
    }

    pub(crate) fn set_nodes<I, S>(&self, addrs: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let addrs: HashSet<String> = addrs.into_iter().map(Into::into).collect();
        self.pool.retain(&addrs);
        self.table.set_nodes(addrs);
    }

    /// Sends `call` to the node serving `key` (Active), retrying transient failures
    /// until the deadline. `call` builds a fresh request per attempt.
    ///
    /// Every request is retried, writes included: for this store a write is
    /// "set key to value" (or "remove key"), and applying it twice is the same as
    /// once, so retrying one whose answer was lost is safe (last write wins).
    pub(crate) async fn by_key<T, F, Fut>(
        &self,
        method: &'static str,
        key: &[u8],
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(Batcher) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.policy.deadline;
        let mut changes = self.table.changes();
        let mut backoff = self.policy.backoff();
        let mut attempts = 0u32;
        let mut last;
        // When the request first failed to be served: from then on it waits
        // through a handoff (or an outage), which the metrics time.
        let mut first_failure: Option<Instant> = None;
        let waited = |outcome, first_failure: Option<Instant>| {
            if let Some(first) = first_failure {
                self.metrics.handoff_waited(outcome, first.elapsed());
            }
        };
        // Refusals since the last pause: with several Active copies (a
        // replicated range, whose members refuse clients), the next copy is
        // tried at once, and the pause comes only once each was tried.
        let mut refused_in_round = 0usize;
        loop {
            // Seen before the lookup, so a change that lands after it wakes us.
            changes.borrow_and_update();
            let routes = self.active_routes(key);
            if routes.is_empty() {
                last = LastFailure::NoActiveRange;
            } else {
                // Usually one route. Should several nodes report the key Active,
                // rotate (from the one that last served the range), so that one
                // dead node or refusing member does not hide a live primary.
                let route = &routes[attempts as usize % routes.len()];
                attempts += 1;
                match self.pool.node(&route.addr) {
                    Err(e) => {
                        last = LastFailure::Unreachable {
                            addr: route.addr.clone(),
                            reason: e.to_string(),
                        }
                    }
                    Ok(client) => match tokio::time::timeout_at(deadline, call(client)).await {
                        Ok(Ok(response)) => {
                            waited("served", first_failure);
                            if routes.len() > 1 {
                                self.note_served(route);
                            }
                            return Ok(response);
                        }
                        Ok(Err(status)) if !is_retryable(status.code()) => {
                            waited("failed", first_failure);
                            return Err(status);
                        }
                        Ok(Err(status)) => {
                            tracing::debug!(
                                method, key = %Key::from(key), node = %route.addr,
                                code = ?status.code(), message = status.message(),
                                "node refused; will retry"
                            );
                            last = LastFailure::Refused {
                                addr: route.addr.clone(),
                                code: status.code(),
                                message: status.message().to_owned(),
                            };
                            refused_in_round += 1;
                            if refused_in_round < routes.len() {
                                first_failure.get_or_insert_with(Instant::now);
                                self.metrics.retried(&last);
                                continue;
                            }
                        }
                        Err(_elapsed) => {
                            last = LastFailure::TimedOut {
                                addr: route.addr.clone(),
                            };
                            break;
                        }
                    },
                }
            }
            first_failure.get_or_insert_with(Instant::now);
            refused_in_round = 0;
            let pause = (Instant::now() + backoff.next_delay()).min(deadline);
            tokio::select! {
                // A closed channel cannot happen while the table lives; if it
                // did, the branch is disabled and the pause still bounds the wait.
                Ok(()) = changes.changed() => {}
                () = tokio::time::sleep_until(pause) => {}
            }
            if Instant::now() >= deadline {
                break;
            }
            self.metrics.retried(&last);
        }
        waited("gave_up", first_failure);
        let gave_up = GaveUp {
            method,
            key: Key::from(key),
            deadline: self.policy.deadline,
            attempts,
            last,
        };
        tracing::warn!(error = %gave_up, "giving up on request");
        Err(gave_up.into())
    }

    /// Sends `call` to a node holding range `id`, Active copies first, trying each
    /// once (for Dump, a debugging aid: no waiting through handoffs).
    pub(crate) async fn by_range<T, F, Fut>(&self, id: RangeId, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Batcher) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut holders: Vec<Route> = self
            .table
            .snapshot()
            .into_iter()
            .filter(|route| route.meta.id() == id)
            .collect();
        if holders.is_empty() {
            return Err(Status::not_found(format!(
                "range {id} is on no node the proxy knows"
            )));
        }
        // `false` sorts first: Active holders before the others.
        holders.sort_by_key(|route| route.state != RemoteState::Active);
        let deadline = Instant::now() + self.policy.deadline;
        let mut failures = Vec::new();
        for route in holders {
            let client = match self.pool.node(&route.addr) {
                Ok(client) => client,
                Err(e) => {
                    failures.push(e.to_string());
                    continue;
                }
            };
            match tokio::time::timeout_at(deadline, call(client)).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(status)) if !is_retryable(status.code()) => return Err(status),
                Ok(Err(status)) => failures.push(format!(
                    "node {} answered {:?}: {}",
                    route.addr,
                    status.code(),
                    status.message()
                )),
                Err(_elapsed) => {
                    failures.push(format!("node {} did not answer in time", route.addr));
                    break;
                }
            }
        }
        Err(Status::unavailable(format!(
            "range {id}: no holder answered ({})",
            failures.join("; ")
        )))
    }
}

impl Forwarder {
    /// The routes for `key` that are Active, in a stable order, starting from
    /// the copy that last served the range (see `served_by`).
    fn active_routes(&self, key: &[u8]) -> Vec<Route> {
        let mut routes = self.table.lookup(key, RemoteState::Active);
        routes.sort_by(|a, b| a.addr.cmp(&b.addr));
        if routes.len() > 1 {
            let served = self.served_by();
            if let Some(at) = routes
                .iter()
                .position(|r| served.get(&r.meta.id()).is_some_and(|addr| *addr == r.addr))
            {
                routes.rotate_left(at);
            }
        }
        routes
    }

    fn note_served(&self, route: &Route) {
        self.served_by().insert(route.meta.id(), route.addr.clone());
    }

    fn served_by(&self) -> std::sync::MutexGuard<'_, HashMap<RangeId, String>> {
        self.served_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
