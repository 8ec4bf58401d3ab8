//! One stop signal per process, that every part of it waits on.

use std::future::Future;

use tokio::sync::watch;

use crate::shutdown_signal;

/// The process's single "stop now" flag. Servers, control loops and background
/// tasks all wait on clones of it, so that a signal from the operator and a part
/// that ends on its own stop everything the same way, in one place, instead of
/// each part racing its own signal handler.
#[derive(Debug, Clone)]
pub struct Stop {
    flag: watch::Sender<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        Self::new()
    }
}

impl Stop {
    /// A flag that only [`Stop::stop`] sets.
    pub fn new() -> Self {
        Self {
            flag: watch::Sender::new(false),
        }
    }

    /// A flag that SIGINT or SIGTERM also sets (logging that the process is
    /// shutting down). Call inside a Tokio runtime.
    pub fn on_signals() -> Self {
        let stop = Self::new();
        let flag = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            flag.stop();
        });
        stop
    }

    /// Asks every waiter to stop. Idempotent.
    pub fn stop(&self) {
        self.flag.send_replace(true);
    }

    /// Whether a stop was asked.
    pub fn is_stopped(&self) -> bool {
        *self.flag.borrow()
    }

    /// Resolves once a stop is asked (at once if it already was); hand it to a
    /// server's graceful shutdown or a loop's `select!`.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.flag.subscribe();
        async move {
            // An error means every sender is gone; nobody can ask any more, so
            // treat it as a stop rather than waiting forever.
            let _ = receiver.wait_for(|stopped| *stopped).await;
        }
    }

    /// The flag as a watch receiver, for parts that take one.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.flag.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stop_asked_before_or_after_waiting_wakes_every_waiter() {
        let stop = Stop::new();
        let early = stop.wait();
        assert!(!stop.is_stopped());
        let waiter = tokio::spawn(early);
        stop.stop();
        waiter.await.expect("the waiter ends");
        // Asked already: a late waiter resolves at once.
        stop.clone().wait().await;
        assert!(stop.is_stopped());
        assert!(*stop.receiver().borrow());
    }

    #[tokio::test]
    async fn a_waiter_does_not_resolve_without_a_stop() {
        let stop = Stop::new();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), stop.wait()).await;
        assert!(waited.is_err(), "no stop was asked");
    }
}
