//! Controller terms: fencing a deposed leader's late commands.
//!
//! Every command and probe may carry the term of the controller that sent it
//! (DESIGN.md §6). A node refuses anything from a term older than the newest it has
//! seen (SCENARIOS.md #43), and persists a newer term through the
//! [`crate::StateStore`] before accepting it, so that a restart does not reopen the
//! door to the deposed leader. The check runs under the table lock, together with
//! the command it admits.

use std::sync::MutexGuard;

use super::errors::CommandError;
use super::handle::Rangelet;
use super::table::Table;
use crate::node::Node;
use crate::state_store::lock;

/// The term of a command that carries none (the reference controller's, and the
/// node's own, e.g. deactivations after a lease lapse). Always accepted.
pub(super) const NO_TERM: u64 = 0;

impl<N: Node> Rangelet<N> {
    /// Records a controller's term, refusing it if it is older than the newest this
    /// node has seen (a deposed leader: DESIGN.md §6, SCENARIOS.md #43). A newer term
    /// is persisted through the [`StateStore`] before it counts, so a restart does
    /// not forget it (if the store implements the term methods). Term 0 means "no
    /// term" (the reference controller sends none) and is always accepted. The
    /// `*_in_term` commands do this under the same lock as the command itself, so a
    /// stale command can never start after a newer term's command was accepted.
    pub fn observe_term(&self, term: u64) -> Result<(), CommandError> {
        self.check_term(&mut lock(&self.inner.table), term)
    }

    /// The newest controller term this node has seen (0: none).
    pub fn newest_term(&self) -> u64 {
        lock(&self.inner.table).newest_term
    }

    pub(super) fn check_term(&self, table: &mut Table, term: u64) -> Result<(), CommandError> {
        let newest = table.newest_term;
        if term == NO_TERM || term == newest {
            return Ok(());
        }
        if term < newest {
            tracing::warn!(
                term,
                newest,
                "refused a command from a stale controller term"
            );
            return Err(CommandError::StaleTerm { term, newest });
        }
        self.inner
            .store
            .put_term(term)
            .map_err(|source| CommandError::PersistTerm { term, source })?;
        tracing::info!(term, previous = newest, "newer controller term");
        table.newest_term = term;
        Ok(())
    }

    /// Locks the table for a command from `term`, refusing it if the node shuts
    /// down or the term is stale.
    pub(super) fn lock_for_command(
        &self,
        term: u64,
    ) -> Result<MutexGuard<'_, Table>, CommandError> {
        if *self.inner.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        let mut table = lock(&self.inner.table);
        self.check_term(&mut table, term)?;
        Ok(table)
    }
}
