//! The balancer inside the engine (issue 11): rounds on the balance tick, the
//! plan queued as operations of origin "balancer" (mode on) or only shown
//! (dry-run), pauses that always end, and explanations. Engine-level: no
//! runtime, model nodes that report the load a test gives them.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use ranger_controller::balancer::{Action, BalancerConfig};
use ranger_controller::config::{BalanceMode, Balancing, Replication};
use ranger_controller::orchestrator::{OpError, Origin};
use ranger_proto::{Key, LoadInfo, PlacementState, RangeId};
use support::engine_driver::Driver;
use support::{config, id};

fn balancing(mode: BalanceMode) -> Balancing {
    Balancing {
        mode,
        planner: BalancerConfig {
            // Four ranges: one move is a quarter of the bytes.
            max_bytes_moved_share: 1.0,
            ..BalancerConfig::default()
        },
    }
}

/// Ranges 4..=7 (two splits of range 1, then of its halves) all on a, each
/// serving 100 reads/s; b empty.
fn four_hot_ranges_on_a(mode: BalanceMode) -> Driver {
    let mut cfg = config(Replication::R1);
    cfg.balancing = balancing(mode);
    let mut driver = Driver::start_with(&["a"], cfg);
    driver.settle();
    for (range, key) in [(1, "m"), (2, "f"), (3, "t")] {
        driver
            .engine
            .request_split(id(range), Key::from(key), None, None, driver.now)
            .unwrap();
        driver.settle();
    }
    let current: Vec<u64> = driver
        .engine
        .keyspace()
        .current_ranges()
        .map(|r| r.id().get())
        .collect();
    assert_eq!(current, [4, 5, 6, 7], "four ranges");
    for range in &current {
        driver.nodes.loads.insert(
            id(*range),
            LoadInfo {
                keys: 10,
                bytes: 1000,
                reads_per_second: 100.0,
                ..LoadInfo::default()
            },
        );
    }
    driver
        .engine
        .node_registered(support::node_id("b"), "b:7000".into(), driver.now);
    driver.settle();
    driver.commands();
    driver
}

/// The current ranges with a placement on b.
fn on_b(driver: &Driver) -> Vec<RangeId> {
    driver
        .engine
        .keyspace()
        .current_ranges()
        .filter(|r| r.placements().iter().any(|p| p.node().as_str() == "b"))
        .map(|r| r.id())
        .collect()
}

fn nodes_of(driver: &Driver) -> Vec<String> {
    driver
        .engine
        .keyspace()
        .current_ranges()
        .map(|r| {
            r.placements()
                .iter()
                .filter(|p| p.state() == PlacementState::Active)
                .map(|p| p.node().to_string())
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect()
}

#[test]
fn a_round_moves_load_from_the_busy_node_to_the_idle_one_through_operations() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    assert_eq!(nodes_of(&driver), ["a", "a", "a", "a"]);

    driver.engine.balance_tick();
    let effects = driver.engine.step(driver.now);
    driver.execute(effects);
    // Operations the listing attributes to the balancer.
    let balancer_ops: Vec<String> = driver
        .engine
        .operations()
        .filter(|op| matches!(op.origin, Origin::Balancer(_)))
        .map(|op| op.to_string())
        .collect();
    assert_eq!(
        balancer_ops.len(),
        2,
        "two moves halve a's load: {balancer_ops:?}"
    );
    assert!(
        balancer_ops.iter().all(|op| op.ends_with("to b")),
        "{balancer_ops:?}"
    );

    driver.settle();
    let mut placed = nodes_of(&driver);
    placed.sort();
    assert_eq!(placed, ["a", "a", "b", "b"]);
    assert!(
        driver.finished.values().all(Result::is_ok),
        "{:?}",
        driver.finished
    );
    let status = driver.engine.balance_status(driver.now);
    let round = status.last.expect("a round was planned");
    assert_eq!(round.queued.len(), 2);
    assert!(round.refused.is_empty(), "{:?}", round.refused);
    assert!(round.plan.imbalance.load > 1.5, "a carried everything");
}

#[test]
fn a_balanced_cluster_plans_nothing_in_the_next_round() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    driver.engine.balance_tick();
    driver.settle();
    driver.commands();

    driver.engine.balance_tick();
    driver.settle();
    assert!(driver.commands().is_empty(), "nothing moves back");
    let round = driver.engine.balance_status(driver.now).last.unwrap();
    assert!(round.plan.actions.is_empty(), "{:?}", round.plan.actions);
    assert!(
        round.plan.imbalance.load < 1.1,
        "{:?}",
        round.plan.imbalance
    );
}

#[test]
fn a_dry_run_shows_the_plan_and_moves_nothing() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::DryRun);
    driver.engine.balance_tick();
    driver.settle();
    assert!(driver.commands().is_empty());
    assert_eq!(nodes_of(&driver), ["a", "a", "a", "a"]);
    let round = driver.engine.balance_status(driver.now).last.unwrap();
    assert_eq!(round.mode, BalanceMode::DryRun);
    assert_eq!(round.plan.actions.len(), 2, "{:?}", round.plan.actions);
    assert!(round.queued.is_empty());
    assert_eq!(driver.engine.operations().count(), 0);
}

#[test]
fn with_balancing_off_no_round_is_planned() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::Off);
    driver.engine.balance_tick();
    driver.settle();
    assert!(driver.commands().is_empty());
    assert!(driver.engine.balance_status(driver.now).last.is_none());
}

#[test]
fn a_pause_lets_running_moves_finish_and_skips_rounds_until_it_ends() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    assert!(matches!(
        driver.engine.pause_balancing(Duration::ZERO, driver.now),
        Err(OpError::InvalidArgument(_))
    ));
    // Absurdly long pauses are refused, not overflowed.
    assert!(matches!(
        driver.engine.pause_balancing(Duration::MAX, driver.now),
        Err(OpError::InvalidArgument(_))
    ));
    assert_eq!(driver.engine.balance_status(driver.now).paused_for, None);

    // A round starts its moves; a pause does not stop running handoffs.
    driver.engine.balance_tick();
    let effects = driver.engine.step(driver.now);
    driver.execute(effects);
    let running = driver
        .engine
        .operations()
        .filter(|op| matches!(op.origin, Origin::Balancer(_)))
        .count();
    assert_eq!(running, 2);
    driver
        .engine
        .pause_balancing(Duration::from_secs(60), driver.now)
        .unwrap();
    let status = driver.engine.balance_status(driver.now);
    assert_eq!(status.paused_for, Some(Duration::from_secs(60)));
    driver.settle();
    assert!(
        driver.finished.values().all(Result::is_ok),
        "{:?}",
        driver.finished
    );
    let mut placed = nodes_of(&driver);
    placed.sort();
    assert_eq!(placed, ["a", "a", "b", "b"]);

    // Paused: a tick plans nothing new, even with a new imbalance.
    for range in [4, 5, 6, 7] {
        driver
            .nodes
            .loads
            .get_mut(&id(range))
            .unwrap()
            .reads_per_second = 10.0;
    }
    driver.nodes.loads.get_mut(&id(4)).unwrap().reads_per_second = 1000.0;
    let before = driver.engine.balance_status(driver.now).last.unwrap().at;
    driver.engine.balance_tick();
    driver.settle();
    assert_eq!(
        driver.engine.balance_status(driver.now).last.unwrap().at,
        before
    );

    // After the pause, rounds resume on their own.
    driver.now += Duration::from_secs(61);
    driver.engine.balance_tick();
    driver.settle();
    let after = driver.engine.balance_status(driver.now).last.unwrap();
    assert!(after.at > before);
    assert_eq!(driver.engine.balance_status(driver.now).paused_for, None);
}

#[test]
fn resuming_ends_a_pause_at_once() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::DryRun);
    driver
        .engine
        .pause_balancing(Duration::from_secs(3600), driver.now)
        .unwrap();
    driver.engine.balance_tick();
    driver.settle();
    assert!(driver.engine.balance_status(driver.now).last.is_none());
    driver.engine.resume_balancing();
    driver.settle();
    assert!(driver.engine.balance_status(driver.now).last.is_some());
}

#[test]
fn explain_says_where_a_range_is_and_what_the_last_round_did_with_it() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::DryRun);
    let before = driver.engine.explain(id(4)).unwrap();
    assert!(before[0].starts_with("range 4"), "{before:?}");
    assert!(
        before.iter().any(|l| l.contains("not planned a round")),
        "{before:?}"
    );

    driver.engine.balance_tick();
    driver.settle();
    let round = driver.engine.balance_status(driver.now).last.unwrap();
    let moved: Vec<u64> = round
        .plan
        .actions
        .iter()
        .filter_map(|a| match &a.action {
            ranger_controller::balancer::Action::Move { range, .. } => Some(range.get()),
            _ => None,
        })
        .collect();
    let planned = driver.engine.explain(id(moved[0])).unwrap();
    assert!(
        planned.iter().any(|l| l.contains("planned move")),
        "{planned:?}"
    );
    assert_eq!(
        driver.engine.explain(id(99)),
        Err(OpError::UnknownRange(id(99)))
    );
}

#[test]
fn a_node_that_declares_twice_the_capacity_is_given_twice_the_load() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    // Six equal ranges: a fair split is 2 on a, 4 on b.
    for (range, key) in [(4, "c"), (7, "w")] {
        driver
            .engine
            .request_split(id(range), Key::from(key), None, None, driver.now)
            .unwrap();
        driver.settle();
    }
    for range in driver.engine.keyspace().current_ranges() {
        driver.nodes.loads.insert(
            range.id(),
            LoadInfo {
                keys: 10,
                bytes: 1000,
                reads_per_second: 100.0,
                ..LoadInfo::default()
            },
        );
    }
    driver.nodes.capacities.insert(support::node_id("b"), 2.0);
    driver.settle();
    for _ in 0..4 {
        driver.engine.balance_tick();
        driver.settle();
    }
    let placed = nodes_of(&driver);
    let on_b = placed.iter().filter(|n| *n == "b").count();
    assert_eq!((placed.len(), on_b), (6, 4), "{placed:?}");
    let round = driver.engine.balance_status(driver.now).last.unwrap();
    let b = round
        .plan
        .nodes
        .iter()
        .find(|n| n.id.as_str() == "b")
        .unwrap();
    assert_eq!(b.capacity, 2.0);
}

/// Range 1 alone on a, serving 1000 reads/s, its node suggesting `load_key`
/// (and `size_key`, if any) to split at; then the empty nodes `others` join.
fn one_hot_range_on_a(load_key: &str, size_key: Option<&str>, others: &[&str]) -> Driver {
    let mut cfg = config(Replication::R1);
    cfg.balancing = balancing(BalanceMode::On);
    let mut driver = Driver::start_with(&["a"], cfg);
    driver.settle();
    driver.nodes.loads.insert(
        id(1),
        LoadInfo {
            keys: 10,
            bytes: 1000,
            reads_per_second: 1000.0,
            split_keys: size_key.map(Key::from).into_iter().collect(),
            load_split_keys: vec![Key::from(load_key)],
            ..LoadInfo::default()
        },
    );
    for name in others {
        driver
            .engine
            .node_registered(support::node_id(name), format!("{name}:7000"), driver.now);
    }
    driver.settle();
    driver
}

#[test]
fn a_hot_range_is_split_at_its_load_key_not_at_its_size_key() {
    // The range's bytes halve at "c", its requests at "q".
    let mut driver = one_hot_range_on_a("q", Some("c"), &["b"]);
    for _ in 0..4 {
        driver.engine.balance_tick();
        driver.settle();
    }
    let starts: Vec<String> = driver
        .engine
        .keyspace()
        .current_ranges()
        .map(|r| String::from_utf8_lossy(r.meta().start().as_bytes()).into_owned())
        .collect();
    assert_eq!(starts, ["", "q"], "split by load at q, not by size at c");
}

#[test]
fn the_halves_of_a_range_the_balancer_splits_are_placed_where_its_plan_says() {
    // Range 1 carries all the load on a; b and c hold nothing. The range alone
    // is more than any node may carry and its node says nothing of where its
    // load lies, so the balancer halves it, and its plan keeps both halves on
    // a, where the data is: left to itself, the controller would put each half
    // on a node with the fewest placements (b, c), which no plan foresaw.
    let mut driver = one_hot_range_on_a("q", None, &["b", "c"]);
    driver.engine.balance_tick();
    driver.settle();
    let round = driver.engine.last_balance_round().expect("a round ran");
    assert!(
        round
            .plan
            .actions
            .iter()
            .any(|a| matches!(&a.action, Action::Split { .. })),
        "{:?}",
        round.plan.actions
    );
    assert_eq!(
        nodes_of(&driver),
        ["a", "a"],
        "both halves where the data is"
    );
}

#[test]
fn the_balancers_memory_of_a_move_ends_with_its_cooldown() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    driver.engine.balance_tick();
    driver.settle();
    let moved = driver
        .engine
        .keyspace()
        .current_ranges()
        .find(|r| r.placements().iter().any(|p| p.node().as_str() == "b"))
        .map(|r| r.id())
        .unwrap();
    // The next round still remembers the move (its cooldown holds).
    driver.engine.balance_tick();
    driver.settle();
    let explained = driver.engine.explain(moved).unwrap();
    assert!(
        explained.iter().any(|l| l.starts_with("last moved")),
        "{explained:?}"
    );
    // Past the longest cooldown (10 min by default) it is forgotten.
    driver.now += Duration::from_secs(11 * 60);
    driver.engine.balance_tick();
    driver.settle();
    let explained = driver.engine.explain(moved).unwrap();
    assert!(
        !explained.iter().any(|l| l.starts_with("last moved")),
        "{explained:?}"
    );
}

#[test]
fn a_controller_that_takes_over_keeps_the_cooldown_of_a_move_its_predecessor_made() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    driver.engine.balance_tick();
    driver.settle();
    let moved = on_b(&driver);
    assert_eq!(moved.len(), 2, "the first leader moved two ranges to b");

    // A minute later the leader dies and another takes over from the store;
    // meanwhile the load turned: b's ranges are hot, a's idle, so a planner
    // that forgot the moves would send them straight back (A→B→A).
    driver.now += Duration::from_secs(60);
    driver.fail_over(&["a", "b"]);
    turn_the_load_to(&mut driver, &moved);
    the_moves_hold_for_the_cooldown_and_not_after(&mut driver, &moved);
}

/// The load turns: `hot` ranges serve 300 reads/s, the others 1.
fn turn_the_load_to(driver: &mut Driver, hot: &[RangeId]) {
    for (range, load) in driver.nodes.loads.iter_mut() {
        load.reads_per_second = if hot.contains(range) { 300.0 } else { 1.0 };
    }
    driver.settle();
}

/// `moved` (now on b, and hot) stay there for the move cooldown, skipped for
/// it although the planner wants to move one back (the load is unbalanced),
/// and once the cooldown is over one does move back: only the remembered
/// moves held them.
fn the_moves_hold_for_the_cooldown_and_not_after(driver: &mut Driver, moved: &[RangeId]) {
    driver.engine.balance_tick();
    driver.settle();
    let round = driver.engine.balance_status(driver.now).last.unwrap();
    assert!(
        round.plan.imbalance.load > 1.5,
        "{:?}",
        round.plan.imbalance
    );
    assert_eq!(on_b(driver), moved, "{:?}", round.plan.actions);
    for range in moved {
        assert!(
            round.plan.skipped.iter().any(|s| s.range == Some(*range)
                && s.reason == ranger_controller::balancer::SkipReason::Cooldown),
            "range {range}: {:?}",
            round.plan.skipped
        );
    }
    driver.now += Duration::from_secs(10 * 60);
    driver.engine.balance_tick();
    driver.settle();
    let now_on_b = on_b(driver);
    assert!(
        moved.iter().any(|r| !now_on_b.contains(r)),
        "{now_on_b:?}: {:?}",
        driver
            .engine
            .balance_status(driver.now)
            .last
            .unwrap()
            .plan
            .actions
    );
}

#[test]
fn an_operators_move_made_while_balancing_was_off_holds_for_the_cooldown_once_it_is_on() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::Off);
    let moved = [id(4), id(5)];
    for range in moved {
        driver
            .engine
            .request_move(range, Some(support::node_id("b")), driver.now)
            .unwrap();
        driver.settle();
    }
    assert_eq!(on_b(&driver), moved, "the operator moved two ranges to b");

    // A minute later the controller is restarted with balancing on, and the
    // load has turned: b's ranges are hot, a's idle. A balancer that knew
    // nothing of the operator's moves would undo one at once.
    driver.now += Duration::from_secs(60);
    let mut config = driver.engine.config().clone();
    config.balancing = balancing(BalanceMode::On);
    let wall = driver.wall_ms();
    driver.fail_over_to(&["a", "b"], config, wall);
    turn_the_load_to(&mut driver, &moved);
    the_moves_hold_for_the_cooldown_and_not_after(&mut driver, &moved);
}

#[test]
fn a_move_recorded_by_a_clock_a_day_ahead_holds_for_one_cooldown_not_a_day() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::On);
    // The first leader's clock reads a day later than the next one's.
    const DAY_MS: u64 = 86_400_000;
    driver.fail_over_with_clock(&["a", "b"], DAY_MS);
    driver.settle();
    driver.engine.balance_tick();
    driver.settle();
    let moved = on_b(&driver);
    assert_eq!(moved.len(), 2, "the first leader moved two ranges to b");

    driver.fail_over_with_clock(&["a", "b"], 0);
    for (range, load) in driver.nodes.loads.iter_mut() {
        load.reads_per_second = if moved.contains(range) { 300.0 } else { 1.0 };
    }
    driver.settle();
    driver.engine.balance_tick();
    driver.settle();
    assert_eq!(
        on_b(&driver),
        moved,
        "within the cooldown: nothing moves back"
    );
    // One cooldown later, not a day later, one moves back.
    driver.now += Duration::from_secs(11 * 60);
    driver.engine.balance_tick();
    driver.settle();
    let now_on_b = on_b(&driver);
    assert!(moved.iter().any(|r| !now_on_b.contains(r)), "{now_on_b:?}");
}

#[test]
fn a_dry_run_shows_the_same_plan_round_after_round() {
    let mut driver = four_hot_ranges_on_a(BalanceMode::DryRun);
    let mut plans = Vec::new();
    for _ in 0..3 {
        driver.engine.balance_tick();
        driver.settle();
        let round = driver.engine.balance_status(driver.now).last.unwrap();
        let actions: Vec<String> = round
            .plan
            .actions
            .iter()
            .map(|a| ranger_controller::orchestrator::describe_action(&a.action))
            .collect();
        plans.push(actions);
    }
    assert_eq!(plans[0].len(), 2, "{plans:?}");
    assert_eq!(plans[0], plans[1], "nothing moved, so nothing cools down");
    assert_eq!(plans[1], plans[2]);
}

#[test]
fn explaining_a_range_that_was_split_names_its_children() {
    let driver = four_hot_ranges_on_a(BalanceMode::DryRun);
    let lines = driver.engine.explain(id(1)).unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("no longer part of the keyspace") && lines[0].contains("2, 3"),
        "{lines:?}"
    );
}
