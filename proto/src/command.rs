//! The four commands a controller sends a node, and what a node answers: shared
//! by the node SDK (which runs them) and the controller (which decides them), so
//! that neither depends on the other.

use crate::RemoteState;

/// The four commands the controller sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Prepare,
    Activate,
    Deactivate,
    Drop,
}

/// What a command answers: the range's state on the node after the command, and
/// the storage system's error if its callback failed (the state is then the
/// rolled-back one).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: RemoteState,
    pub failure: Option<String>,
}
