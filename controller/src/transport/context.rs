//! The operation a command is sent for, as ambient context of the task that
//! sends it: the runtime sets it around a call ([`with_operation`]) and a
//! transport that can carry it to the node does ([`current_operation`]; gRPC puts
//! it in the `ranger-operation` metadata entry).
//!
//! Ambient rather than an argument of [`super::NodeTransport::call`] for the
//! same reason trace contexts are: it is about observing the call, not about
//! what the call does, and a transport that cannot carry it (the in-process
//! one) should not have to know it exists.

use std::future::Future;

use crate::orchestrator::OpId;

tokio::task_local! {
    static OPERATION: OpId;
}

/// Runs `call` with `op` as the operation its commands belong to.
pub async fn with_operation<F: Future>(op: Option<OpId>, call: F) -> F::Output {
    match op {
        Some(op) => OPERATION.scope(op, call).await,
        None => call.await,
    }
}

/// The operation the current task sends commands for, if any.
pub fn current_operation() -> Option<OpId> {
    OPERATION.try_with(|op| *op).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_operation_is_seen_inside_its_scope_only() {
        assert_eq!(current_operation(), None);
        let inside = with_operation(Some(OpId(7)), async { current_operation() }).await;
        assert_eq!(inside, Some(OpId(7)));
        assert_eq!(
            with_operation(None, async { current_operation() }).await,
            None
        );
        assert_eq!(current_operation(), None);
    }
}
