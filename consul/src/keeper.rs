//! Keeps a TTL session alive from a background task and says when it is lost,
//! so that a lock holder (the controller leader) stops acting as one as soon
//! as it can no longer be sure it holds the lock.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};

/// Whether the kept session is still known to be alive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// The last renewal succeeded less than a TTL ago.
    Alive,
    /// The session is gone or can no longer be vouched for; the keeper stopped.
    Lost(SessionLoss),
}

/// Why a session was given up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionLoss {
    /// Consul no longer knows the session: destroyed, expired, or ended by a
    /// failing check. Its locks are released.
    NotFound,
    /// No renewal succeeded for a whole TTL, so Consul may have ended the
    /// session; the holder must act as if it had. `last_error` is the last
    /// failure seen.
    Unconfirmed {
        /// The last renewal error.
        last_error: String,
    },
    /// The keeper was shut down or dropped.
    Stopped,
}

/// Renews a session every `interval` (TTL/2 by default) in a tokio task and
/// publishes its [`SessionStatus`] on a watch channel. Dropping the keeper stops
/// the renewals (the session then expires after its TTL);
/// [`SessionKeeper::shutdown`] also destroys the session, releasing its locks
/// at once.
#[derive(Debug)]
pub struct SessionKeeper {
    client: Client,
    session_id: String,
    status: watch::Receiver<SessionStatus>,
    task: JoinHandle<()>,
}

impl SessionKeeper {
    /// Starts keeping `session_id`, created with `ttl`, renewing at TTL/2.
    pub fn start(client: Client, session_id: impl Into<String>, ttl: Duration) -> Self {
        Self::with_interval(client, session_id, ttl, ttl / 2)
    }

    /// Starts keeping `session_id`, renewing every `interval` (which should be
    /// well below `ttl`). Must be called within a tokio runtime.
    pub fn with_interval(
        client: Client,
        session_id: impl Into<String>,
        ttl: Duration,
        interval: Duration,
    ) -> Self {
        let session_id = session_id.into();
        let (tx, status) = watch::channel(SessionStatus::Alive);
        let task = tokio::spawn(keep(
            client.clone(),
            session_id.clone(),
            ttl,
            interval.max(Duration::from_millis(10)),
            tx,
        ));
        Self {
            client,
            session_id,
            status,
            task,
        }
    }

    /// The kept session's ID.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The current status.
    pub fn status(&self) -> SessionStatus {
        self.status.borrow().clone()
    }

    /// A receiver of status changes, for `select!` loops.
    pub fn subscribe(&self) -> watch::Receiver<SessionStatus> {
        self.status.clone()
    }

    /// Waits until the session is lost, and says why.
    pub async fn lost(&self) -> SessionLoss {
        let mut status = self.status.clone();
        loop {
            if let SessionStatus::Lost(loss) = &*status.borrow_and_update() {
                return loss.clone();
            }
            if status.changed().await.is_err() {
                return SessionLoss::Stopped;
            }
        }
    }

    /// Stops renewing and destroys the session, releasing its locks now
    /// rather than after the TTL.
    pub async fn shutdown(self) -> Result<()> {
        self.task.abort();
        self.client.session_destroy(&self.session_id).await
    }
}

impl Drop for SessionKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The renewal loop. A session renewed by a request sent at `t` lives at least
/// until `t + ttl`, so the loop declares it lost when no renewal sent within
/// the last TTL succeeded.
async fn keep(
    client: Client,
    id: String,
    ttl: Duration,
    interval: Duration,
    status: watch::Sender<SessionStatus>,
) {
    let mut alive_until = Instant::now() + ttl;
    let mut next = Instant::now() + interval;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        let remaining = alive_until.saturating_duration_since(sent);
        let failure = match tokio::time::timeout(remaining, client.session_renew(&id)).await {
            Ok(Ok(_)) => {
                alive_until = sent + ttl;
                next = sent + interval;
                continue;
            }
            Ok(Err(Error::SessionNotFound(_))) => {
                tracing::warn!(session = %id, "session lost: Consul no longer knows it");
                status.send_replace(SessionStatus::Lost(SessionLoss::NotFound));
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => {
                format!("renewal got no answer within the {remaining:?} the session had left")
            }
        };
        if Instant::now() >= alive_until {
            tracing::warn!(session = %id, error = %failure, "session lost: no renewal for a whole TTL");
            status.send_replace(SessionStatus::Lost(SessionLoss::Unconfirmed {
                last_error: failure,
            }));
            return;
        }
        // Retry sooner than usual: the session's time is running out.
        tracing::debug!(session = %id, error = %failure, "session renewal failed; retrying");
        next = Instant::now() + (interval / 4).max(Duration::from_millis(100));
    }
}
