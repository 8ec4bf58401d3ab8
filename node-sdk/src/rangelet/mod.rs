//! The node-side state machine: the rangelet.
//!
//! It sits between the controller's commands and the storage system's callbacks,
//! so that the storage system only ever sees well-ordered calls: each range moves
//! through the remote states of PROTOCOL.md (Preparing, Inactive, Activating,
//! Active, Deactivating, Dropping, NotFound), one transition at a time.
//!
//! One concept per file:
//!
//! - [`handle`]: the public [`Rangelet`] handle: opening over a [`crate::StateStore`]
//!   (restoring every kept range Inactive), the questions a storage system asks on
//!   each request (`serving_range`, `may_write`), drain, shutdown, and the `Ranges`
//!   stream.
//! - [`table`]: what the one lock guards: every range's state, the failures still
//!   to report, and the lease bookkeeping the state machine consults.
//! - [`commands`]: the controller's commands (Prepare, Activate, Deactivate, Drop):
//!   refused, answered as a repeat, or starting a transition.
//! - [`transitions`]: a transition's life: the callback in a task of its own, the
//!   grace period, and the landing (success or rollback) that is persisted and
//!   published.
//! - [`lease`]: the controller's write lease, granted by its probe (`Info`), and the
//!   fencing of every serving range when it lapses (DESIGN.md §6).
//! - [`term`]: controller terms, so that a deposed leader's late command is refused
//!   (DESIGN.md §6, SCENARIOS.md #43).
//! - [`errors`]: why a command or a key was refused.

mod commands;
mod errors;
mod handle;
mod lease;
mod table;
mod term;
mod transitions;

pub use errors::{CommandError, KeyRejection};
pub use handle::{Rangelet, RangeletConfig};
pub use table::RangeChange;

/// The commands and their answers are part of the wire contract's domain types
/// (the controller uses them too); re-exported here for storage systems.
pub use ranger_proto::{Command, Outcome};
