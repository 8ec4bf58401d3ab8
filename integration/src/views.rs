//! `rangerctl --json` output as typed values, and what tests ask of them.
//!
//! The shapes mirror what `rangerctl` prints (`controller/src/bin/rangerctl`);
//! unknown fields are ignored, so `rangerctl` may add fields freely, while a
//! renamed or retyped field fails to parse and so fails the tests loudly.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One range, as `rangerctl --json ranges` / `range ID` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeView {
    /// The range id.
    pub id: u64,
    /// Inclusive start key, hex (empty: minus infinity).
    pub start: String,
    /// Exclusive end key, hex (empty: plus infinity).
    pub end: String,
    /// The start key for people (`-inf` for minus infinity).
    pub start_text: String,
    /// The end key for people (`+inf` for plus infinity).
    pub end_text: String,
    /// `Active`, `Subsuming` or `Obsolete`.
    pub state: String,
    /// Set while the range waits for a lost node's data.
    pub unavailable: Option<Unavailable>,
    /// Ranges this one was split or joined from.
    #[serde(default)]
    pub parents: Vec<u64>,
    /// Ranges this one was split or joined into.
    #[serde(default)]
    pub children: Vec<u64>,
    /// Its placements on nodes.
    #[serde(default)]
    pub placements: Vec<PlacementView>,
}

/// Why a range is unavailable, and since how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// The controller's reason (names the lost node).
    pub reason: String,
    /// For how long, in milliseconds.
    pub for_ms: u64,
}

/// One placement of a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementView {
    /// The node's id.
    pub node: String,
    /// The controller's placement state (`Pending`, `Loading`, `Inactive`,
    /// `Active`, `Missing`, `Dropped`, `GiveUp`).
    pub state: String,
    /// What the node last reported for it.
    pub remote_state: Option<String>,
    /// Keys the node last reported for it.
    pub keys: Option<u64>,
}

impl RangeView {
    /// Not replaced by a split or join.
    pub fn is_current(&self) -> bool {
        self.state != "Obsolete"
    }

    /// The nodes holding an Active placement.
    pub fn active_nodes(&self) -> Vec<String> {
        self.placements
            .iter()
            .filter(|p| p.state == "Active")
            .map(|p| p.node.clone())
            .collect()
    }

    /// The one node serving it, if exactly one is (R1's steady state).
    pub fn served_by(&self) -> Option<String> {
        match self.active_nodes().as_slice() {
            [one] if self.placements.len() == 1 => Some(one.clone()),
            _ => None,
        }
    }

    /// Whether `key` falls in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        let start = decode_hex(&self.start);
        let end = decode_hex(&self.end);
        key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
    }
}

/// Lower-case hex to bytes (what `rangerctl` prints); malformed input gives
/// what decodes.
fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// One node, as `rangerctl --json nodes` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's id.
    pub id: String,
    /// Where the controller reaches it.
    pub address: String,
    /// Whether it is being drained.
    pub draining: bool,
    /// Its placements.
    #[serde(default)]
    pub ranges: Vec<NodeRangeView>,
}

/// A placement on a node, as `rangerctl --json nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRangeView {
    /// The range id.
    pub id: u64,
    /// The placement's state.
    pub state: String,
}

/// An operation in flight, as `rangerctl --json ops` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpView {
    /// The operation id (for `rangerctl cancel`).
    pub id: u64,
    /// What it does.
    pub description: String,
    /// Where it is.
    pub phase: String,
    /// The ranges it holds.
    #[serde(default)]
    pub ranges: Vec<u64>,
    /// How long it has run.
    pub age_ms: u64,
    /// Who started it.
    pub origin: String,
}

/// A line `rangerctl --json move|split|join` prints: a live event, or the
/// operation's result (the last line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OpLine {
    /// A placement transition or note, as it happened.
    Event {
        /// The event.
        event: EventView,
    },
    /// How the operation ended.
    Result(OpResult),
}

/// One controller event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// Milliseconds since `rangerctl` started waiting.
    pub ms: u64,
    /// The range it is about.
    pub range: u64,
    /// What happened.
    pub message: String,
}

/// The last line of `rangerctl --json move|split|join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// Which operation (`move 1`, `split 1`, `join 2 3`).
    pub operation: String,
    /// How long it took, when it succeeded.
    pub ms: Option<u64>,
    /// The gRPC code's name, when it failed.
    pub code: Option<String>,
    /// The controller's reason, when it failed.
    pub error: Option<String>,
}

/// `rangerctl --json forget NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgetView {
    /// Always true when printed (failures exit non-zero).
    pub ok: bool,
    /// The node forgotten.
    pub node: String,
    /// Ranges re-created empty: their data is lost.
    pub ranges_lost: Vec<u64>,
}

/// `rangerctl --json balance` (the fields tests look at).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceView {
    /// `on`, `dry-run` or `off`.
    pub mode: String,
    /// Pause left, in milliseconds (0: not paused).
    pub paused_ms: u64,
    /// Whether a round has been planned yet.
    pub has_round: bool,
    /// Per-node load, as the last round saw it.
    #[serde(default)]
    pub nodes: Vec<BalanceNodeView>,
}

/// One node in `rangerctl --json balance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalanceNodeView {
    /// The node's id.
    pub node: String,
    /// Ranges on it.
    pub ranges: u64,
}

/// `rangerctl --json explain RANGE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainView {
    /// The range.
    pub range: u64,
    /// The explanation, line by line.
    pub lines: Vec<String>,
}

/// The ranges that are not obsolete, by start key.
pub fn current(ranges: &[RangeView]) -> Vec<&RangeView> {
    let mut current: Vec<&RangeView> = ranges.iter().filter(|r| r.is_current()).collect();
    current.sort_by(|a, b| a.start.cmp(&b.start));
    current
}

/// The range with id `id`.
pub fn range(ranges: &[RangeView], id: u64) -> Option<&RangeView> {
    ranges.iter().find(|r| r.id == id)
}

/// `Ok` when every current range has exactly one placement, Active, and none
/// is unavailable (R1's steady state); else what is not.
pub fn settled(ranges: &[RangeView]) -> Result<(), String> {
    settled_at(ranges, 1)
}

/// [`settled`] for `copies` Active placements per range (R3: three, and no
/// other placement).
pub fn settled_at(ranges: &[RangeView], copies: usize) -> Result<(), String> {
    let unsettled: Vec<String> = current(ranges)
        .into_iter()
        .filter(|r| {
            let served = if copies == 1 {
                r.served_by().is_some()
            } else {
                r.active_nodes().len() == copies && r.placements.len() == copies
            };
            !served || r.unavailable.is_some()
        })
        .map(|r| format!("range {}: {}", r.id, Layout::describe(r)))
        .collect();
    if unsettled.is_empty() {
        Ok(())
    } else {
        Err(unsettled.join("; "))
    }
}

/// Where every current range is, without what changes under load (key
/// counts, remote states): two equal layouts are the same keyspace served the
/// same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout(pub Vec<RangeLayout>);

/// One range of a [`Layout`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RangeLayout {
    /// The range id.
    pub id: u64,
    /// Start key, hex.
    pub start: String,
    /// End key, hex.
    pub end: String,
    /// The range's state.
    pub state: String,
    /// `(node, placement state)`, sorted.
    pub placements: Vec<(String, String)>,
}

impl Layout {
    /// The layout of `ranges`.
    pub fn of(ranges: &[RangeView]) -> Layout {
        let mut all: Vec<_> = ranges
            .iter()
            .map(|r| {
                let mut placements: Vec<(String, String)> = r
                    .placements
                    .iter()
                    .map(|p| (p.node.clone(), p.state.clone()))
                    .collect();
                placements.sort();
                RangeLayout {
                    id: r.id,
                    start: r.start.clone(),
                    end: r.end.clone(),
                    state: r.state.clone(),
                    placements,
                }
            })
            .collect();
        all.sort();
        Layout(all)
    }

    fn describe(r: &RangeView) -> String {
        let placements: Vec<String> = r
            .placements
            .iter()
            .map(|p| format!("{}:{}", p.node, p.state))
            .collect();
        let unavailable = r
            .unavailable
            .as_ref()
            .map(|u| format!(" UNAVAILABLE ({})", u.reason))
            .unwrap_or_default();
        format!(
            "[{}, {}) {} [{}]{unavailable}",
            r.start_text,
            r.end_text,
            r.state,
            placements.join(" ")
        )
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for RangeLayout {
            id,
            start,
            end,
            state,
            placements,
        } in &self.0
        {
            let placements: Vec<String> = placements
                .iter()
                .map(|(node, state)| format!("{node}:{state}"))
                .collect();
            writeln!(
                f,
                "  {id} [{start}, {end}) {state} {}",
                placements.join(" ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range_json(id: u64, start: &str, end: &str, state: &str, placements: &str) -> RangeView {
        serde_json::from_str(&format!(
            r#"{{"id":{id},"start":"{start}","end":"{end}","start_text":"x","end_text":"y",
                "state":"{state}","unavailable":null,"parents":[],"children":[],
                "placements":{placements}}}"#
        ))
        .unwrap_or_else(|e| panic!("bad test json: {e}"))
    }

    #[test]
    fn a_range_contains_keys_from_its_start_up_to_but_not_including_its_end() {
        let r = range_json(2, "6d", "", "Active", "[]");
        assert!(r.contains(b"m"));
        assert!(r.contains(b"zzz"));
        assert!(!r.contains(b"l"));
        let r = range_json(3, "", "6d", "Active", "[]");
        assert!(r.contains(b""));
        assert!(r.contains(b"a"));
        assert!(!r.contains(b"m"));
    }

    #[test]
    fn settled_means_one_active_placement_per_current_range() {
        let one = r#"[{"node":"a","state":"Active","remote_state":"Active","keys":3}]"#;
        let two = r#"[{"node":"a","state":"Active","remote_state":null,"keys":null},
                      {"node":"b","state":"Pending","remote_state":null,"keys":null}]"#;
        let ok = vec![
            range_json(1, "", "", "Obsolete", "[]"),
            range_json(2, "", "6d", "Active", one),
        ];
        assert_eq!(settled(&ok), Ok(()));
        let moving = vec![range_json(2, "", "6d", "Active", two)];
        let why = settled(&moving).expect_err("a move in flight is not settled");
        assert!(
            why.contains("range 2") && why.contains("b:Pending"),
            "{why}"
        );
    }

    #[test]
    fn layouts_ignore_key_counts_but_not_placements() {
        let a = r#"[{"node":"a","state":"Active","remote_state":"Active","keys":3}]"#;
        let a_later = r#"[{"node":"a","state":"Active","remote_state":"Active","keys":9}]"#;
        let b = r#"[{"node":"b","state":"Active","remote_state":"Active","keys":3}]"#;
        let before = Layout::of(&[range_json(1, "", "", "Active", a)]);
        assert_eq!(
            before,
            Layout::of(&[range_json(1, "", "", "Active", a_later)])
        );
        assert_ne!(before, Layout::of(&[range_json(1, "", "", "Active", b)]));
    }

    #[test]
    fn operation_lines_parse_as_events_or_the_result() {
        let event: OpLine = serde_json::from_str(
            r#"{"event":{"ms":3,"range":1,"message":"p2 on b: Pending -> Loading"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(event, OpLine::Event { event } if event.range == 1));
        let done: OpLine = serde_json::from_str(r#"{"ok":true,"operation":"move 1","ms":40}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(done, OpLine::Result(OpResult { ok: true, .. })));
        let failed: OpLine = serde_json::from_str(
            r#"{"ok":false,"operation":"move 1","code":"NotFound","error":"no range 9"}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            failed,
            OpLine::Result(OpResult {
                ok: false,
                code: Some(_),
                ..
            })
        ));
    }
}
