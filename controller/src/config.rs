//! The controller's tunables, with the defaults a local cluster wants.

use std::time::Duration;

/// How many placements each range should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Active placements wanted in the steady state (R1: 1, R3: 3).
    pub target: usize,
    /// Active placements allowed at once. R1 keeps this at 1: one writer per key
    /// (DESIGN.md invariant 1). R3 allows one extra during a move, so the
    /// destination activates before the source deactivates (SCENARIOS.md #8).
    pub max_active: usize,
    /// Live placements allowed at once (bounds how many moves of one range run
    /// together; SCENARIOS.md #14).
    pub max_placements: usize,
}

impl Replication {
    /// One active placement per range.
    pub const R1: Replication = Replication {
        target: 1,
        max_active: 1,
        max_placements: 2,
    };

    /// Three active placements per range.
    pub const R3: Replication = Replication {
        target: 3,
        max_active: 4,
        max_placements: 4,
    };

    /// `target` replicas, with the limits above (R1 for 1, one spare otherwise).
    pub fn with_target(target: usize) -> Replication {
        let target = target.max(1);
        if target == 1 {
            Replication::R1
        } else {
            Replication {
                target,
                max_active: target + 1,
                max_placements: target + 1,
            }
        }
    }
}

/// Timings and limits of the orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub replication: Replication,
    /// How long a placement may stay Pending/Loading (Prepare answered Preparing)
    /// before the controller gives up on it (GiveUp).
    pub prepare_deadline: Duration,
    /// Failed attempts of Prepare or Activate before giving up on that node.
    pub max_attempts: u32,
    /// Backoff after the first failure of a command; doubled per failure.
    pub backoff_initial: Duration,
    /// Cap on the backoff (Drop retries forever at this pace).
    pub backoff_max: Duration,
    /// How long an operation may take before it is rolled back (while it still
    /// can be: before the first activation of a destination).
    pub op_deadline: Duration,
    /// How much longer than `op_deadline` an operator waits for a destination
    /// that was already told to activate. Past that point the operation only
    /// rolls forward (SCENARIOS.md #37), so the request then fails with a
    /// message saying so while the controller keeps activating the destination.
    pub activate_deadline: Duration,
    /// How long a prepare may go without visible progress (the copy's keys or
    /// bytes growing in the node's reports) before the deadlines apply to it.
    /// A big range that keeps copying may take longer than `op_deadline` and
    /// `prepare_deadline`; a stuck one is given up (SCENARIOS.md #42).
    pub prepare_stall: Duration,
    /// How long a node that failed a range's Prepare or Activate is not chosen for
    /// that range again.
    pub exclusion: Duration,
    /// The write lease granted to nodes with every probe (DESIGN.md section 6).
    pub lease: Duration,
    /// Extra time after a lease would have expired before a silent node's
    /// placements are declared Missing (clock drift, probe in flight).
    pub lease_margin: Duration,
    /// How often every node is probed with `Info`.
    pub probe_interval: Duration,
    /// Deadline of one RPC to a node (must exceed the rangelet's grace period).
    pub rpc_timeout: Duration,
    /// Moves started at once to drain nodes, across the cluster.
    pub max_drain_moves: usize,
    /// Whether, how often and how the controller balances on its own.
    pub balancing: Balancing,
}

/// Whether the controller moves, splits and joins ranges on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BalanceMode {
    /// Plan each round and queue the plan's operations.
    On,
    /// Plan each round and only show the plan (`rangerctl balance`).
    DryRun,
    /// Do not plan: ranges move only when an operator says so.
    #[default]
    Off,
}

impl std::str::FromStr for BalanceMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(BalanceMode::On),
            "dry-run" => Ok(BalanceMode::DryRun),
            "off" => Ok(BalanceMode::Off),
            other => Err(format!(
                "balance mode must be on, dry-run or off, not {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for BalanceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BalanceMode::On => "on",
            BalanceMode::DryRun => "dry-run",
            BalanceMode::Off => "off",
        })
    }
}

/// The balancer's settings, as the engine runs it (DESIGN.md §10).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Balancing {
    pub mode: BalanceMode,
    /// The planner's thresholds, tolerance and limits.
    pub planner: crate::balancer::BalancerConfig,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            replication: Replication::R1,
            prepare_deadline: Duration::from_secs(60),
            max_attempts: 3,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            op_deadline: Duration::from_secs(30),
            activate_deadline: Duration::from_secs(10),
            prepare_stall: Duration::from_secs(15),
            exclusion: Duration::from_secs(30),
            lease: Duration::from_secs(4),
            lease_margin: Duration::from_secs(2),
            probe_interval: Duration::from_millis(500),
            rpc_timeout: Duration::from_secs(3),
            max_drain_moves: 4,
            balancing: Balancing::default(),
        }
    }
}

impl OrchestratorConfig {
    /// After how long without a successful probe a node's placements are lost.
    pub fn node_loss_after(&self) -> Duration {
        self.lease + self.lease_margin
    }
}
