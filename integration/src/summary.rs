//! The one line each scenario prints: what clients lost and felt, and how
//! long the system took to come back.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use crate::hammer::HammerReport;

/// A scenario's outcome, as its summary line says it.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `s04 node kill -9 and restart`, say.
    pub scenario: String,
    /// `consul` or `embedded`.
    pub backend: String,
    /// Acknowledged writes lost (must be 0).
    pub lost_writes: u64,
    /// Requests that failed as the client saw them (0 for planned operations).
    pub client_errors: u64,
    /// The longest a write waited, first attempt to acknowledgement.
    pub longest_unavailable_ms: f64,
    /// The slowest single request of any kind (a read held up by an outage
    /// counts here).
    pub longest_request_ms: f64,
    /// From the fault's end (restart, takeover...) until the cluster served
    /// every range again; `None` for scenarios without a fault.
    pub recovered_in: Option<Duration>,
    /// Anything else worth a word (operation outcomes, failover time).
    pub note: String,
}

impl Summary {
    /// The figures of a hammer run.
    pub fn new(scenario: &str, backend: impl fmt::Display, report: &HammerReport) -> Summary {
        Summary {
            scenario: scenario.to_owned(),
            backend: backend.to_string(),
            lost_writes: report.lost,
            client_errors: report.client_errors(),
            longest_unavailable_ms: report.longest_unavailable_ms(),
            longest_request_ms: report.longest_request_ms(),
            recovered_in: None,
            note: String::new(),
        }
    }

    /// With the time to recover.
    pub fn recovered_in(mut self, took: Duration) -> Summary {
        self.recovered_in = Some(took);
        self
    }

    /// With a note.
    pub fn note(mut self, note: impl Into<String>) -> Summary {
        self.note = note.into();
        self
    }

    /// Prints the line on the process's stderr directly: libtest captures
    /// `print!`/`eprint!` of passing tests, and this line is wanted from
    /// every run.
    pub fn print(&self) {
        let mut stderr = std::io::stderr().lock();
        // Nothing sensible to do if stderr is gone.
        let _ = writeln!(stderr, "{self}");
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let recovered = match self.recovered_in {
            Some(took) => format!("{:.1} s", took.as_secs_f64()),
            None => "n/a".to_owned(),
        };
        write!(
            f,
            "SCENARIO {} [{}]: lost writes {}, client-visible errors {}, longest write-unavailable {:.0} ms (slowest request {:.0} ms), time to recover {recovered}",
            self.scenario,
            self.backend,
            self.lost_writes,
            self.client_errors,
            self.longest_unavailable_ms,
            self.longest_request_ms
        )?;
        if !self.note.is_empty() {
            write!(f, " ({})", self.note)?;
        }
        Ok(())
    }
}
