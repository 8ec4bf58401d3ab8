//! What every Ranger binary does the same way, whichever side it is on: how it
//! logs, when it stops, how it accepts connections and how it serves its metrics. The controller (`rangerd`), the nodes and proxies of
//! the example, and the command-line tools all use it, so none of them depends on
//! another side's crate just to start up (the controller does not link the node
//! SDK; see the architecture notes in the README).

mod logging;
pub mod metrics;
mod serve;
mod signals;
mod stop;

pub use logging::{LogOutput, init_logging};
pub use serve::incoming;
pub use signals::shutdown_signal;
pub use stop::Stop;
