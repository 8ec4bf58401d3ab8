//! The dashboard (`rangerd --http`) in a real headless Chromium: the overview
//! and the ranges table show what `rangerctl --json` shows; a move run from
//! the page's form moves the range, and the page follows it live (no
//! reload), as `rangerctl` does; every page renders; a standby's dashboard
//! names the leader, through the API (503) and on the page.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`bin/test` installs them);
//! without them the tests fail saying so. When a test fails, a screenshot and
//! the HTML of every page are saved (see [`browser::artifacts_dir`]) and the
//! directory is printed. `RANGER_UPDATE_SCREENSHOTS=1` also saves the
//! overview to `docs/dashboard.png` (the README's picture).

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use fantoccini::Locator;
use ranger_integration::browser::{self, Browser};
use ranger_integration::hammer::HammerOptions;
use ranger_integration::views::{RangeView, range};
use ranger_integration::{Backend, Cluster, wait};
use serde::Deserialize;
use serde_json::Value;

/// How long the page may take to show a change.
const PAGE_PATIENCE: Duration = Duration::from_secs(30);

/// The dashboard's pages, by hash route, and an element each must show.
const PAGES: &[(&str, &str)] = &[
    ("overview", "#nodes .node-card"),
    ("keyspace", "#keyspace-map td[data-range-id]"),
    ("ranges", "#ranges-table tr[data-range-id]"),
    ("operations", "#ops-recent tr[data-op-id]"),
    ("admin", "#admin-placements tr[data-range-id]"),
];

/// Switches the page to `route` without reloading it, and waits until the
/// page rendered `selector` there.
async fn show(browser: &Browser, route: &str, selector: &str) -> anyhow::Result<()> {
    browser
        .eval::<Value>(&format!("location.hash = '#/{route}'; return null;"))
        .await?;
    browser
        .wait_for::<bool>(
            &format!("page {route} shows {selector}"),
            PAGE_PATIENCE,
            &format!("return document.querySelector({selector:?}) ? true : null;"),
        )
        .await?;
    // A page that printed an element instead of rendering it (an array of
    // elements turned into text) is broken, whatever else it shows.
    let text: String = browser
        .eval("return document.getElementById('page').textContent;")
        .await?;
    ensure!(
        !text.contains("[object "),
        "page {route} renders an object as text: {text}"
    );
    Ok(())
}

/// Saves a screenshot and the HTML of every page; answers the directory.
async fn save_every_page(browser: &Browser, test: &str) -> PathBuf {
    let dir = browser::artifacts_dir(test);
    for (route, _) in PAGES {
        let saved = async {
            browser
                .eval::<Value>(&format!("location.hash = '#/{route}'; return null;"))
                .await?;
            // Whatever it shows once it rendered this route (it may be
            // broken: that is what the artifacts are for).
            let _ = browser
                .wait_for::<bool>(
                    "the page renders",
                    Duration::from_secs(5),
                    &format!("return document.getElementById('page').dataset.page === '{route}' ? true : null;"),
                )
                .await;
            browser.save_page(&dir, route).await
        };
        if let Err(e) = saved.await {
            eprintln!("could not save page {route}: {e:#}");
        }
    }
    dir
}

/// Runs `body`; when it fails, saves every page and fails naming where.
async fn with_artifacts(
    browser: &Browser,
    test: &str,
    body: impl AsyncFnOnce() -> anyhow::Result<()>,
) {
    if let Err(e) = body().await {
        let dir = save_every_page(browser, test).await;
        panic!(
            "{e:#}\nscreenshots and HTML of every page: {}",
            dir.display()
        );
    }
}

/// The overview's node cards: node id -> the ranges shown on it.
async fn cards(browser: &Browser) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    browser
        .eval(
            "const out = {};
             for (const card of document.querySelectorAll('.node-card')) {
               out[card.dataset.nodeId] = [...card.querySelectorAll('[data-range-id]')]
                 .map(e => Number(e.dataset.rangeId)).sort((a, b) => a - b);
             }
             return out;",
        )
        .await
}

/// The ranges table: (id, state, active nodes), sorted by id.
#[derive(Debug, PartialEq, Eq, Deserialize)]
struct Row {
    id: u64,
    state: String,
    nodes: String,
}

async fn table(browser: &Browser) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = browser
        .eval(
            "return [...document.querySelectorAll('#ranges-table tr[data-range-id]')].map(tr => ({
               id: Number(tr.dataset.rangeId),
               state: tr.dataset.state,
               nodes: tr.querySelector('[data-field=nodes]').textContent,
             }));",
        )
        .await?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

fn expected_rows(ranges: &[RangeView]) -> Vec<Row> {
    let mut rows: Vec<Row> = ranges
        .iter()
        .map(|r| Row {
            id: r.id,
            state: r.state.clone(),
            nodes: r.active_nodes().join(","),
        })
        .collect();
    rows.sort_by_key(|r| r.id);
    rows
}

/// Node id -> the ranges Active on it, as `rangerctl --json nodes` says.
async fn expected_cards(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    Ok(cluster
        .ctl()
        .nodes()
        .await?
        .into_iter()
        .map(|n| {
            let mut ranges: Vec<u64> = n
                .ranges
                .iter()
                .filter(|r| r.state == "Active")
                .map(|r| r.id)
                .collect();
            ranges.sort_unstable();
            (n.id, ranges)
        })
        .collect())
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_rangerctl_shows_and_follows_a_move_made_on_the_page() {
    let cluster = Cluster::builder(Backend::Embedded).start().await.unwrap();
    let ctl = cluster.ctl().clone();
    ctl.operation_ok(&["split", "1", "m"]).await.unwrap();
    ctl.operation_ok(&["split", "3", "t"]).await.unwrap();
    cluster.wait_settled().await.unwrap();
    let browser = Browser::start().await.unwrap();
    let url = cluster.controller_http(0);

    with_artifacts(&browser, "dashboard", async || {
        browser.goto(&format!("{url}/#/overview")).await?;
        show(&browser, "overview", "#nodes .node-card").await?;
        // The page's own marker: it survives only if the page never reloads.
        browser
            .eval::<Value>("window.rangerTestMarker = 'same page'; return null;")
            .await?;

        // The overview's node cards show what `rangerctl nodes` shows.
        let expected = expected_cards(&cluster).await?;
        ensure!(expected.len() == 3, "rangerctl lists {expected:?}");
        wait::until("the overview shows rangerctl's nodes", PAGE_PATIENCE, async || {
            let shown = cards(&browser).await.map_err(|e| format!("{e:#}"))?;
            if shown == expected {
                Ok(())
            } else {
                Err(format!("page {shown:?}, rangerctl {expected:?}"))
            }
        })
        .await?;
        let role: String = browser
            .eval("return document.getElementById('role').dataset.role;")
            .await?;
        ensure!(role == "leader", "role shown: {role}");
        let imbalance: String = browser
            .eval("return document.getElementById('imbalance').textContent;")
            .await?;
        ensure!(!imbalance.is_empty(), "no imbalance shown");

        // The ranges table shows what `rangerctl ranges` shows.
        show(&browser, "ranges", "#ranges-table tr[data-range-id]").await?;
        let ranges = ctl.ranges().await?;
        ensure!(ranges.iter().filter(|r| r.is_current()).count() == 3, "{ranges:?}");
        let want = expected_rows(&ranges);
        wait::until("the table shows rangerctl's ranges", PAGE_PATIENCE, async || {
            let shown = table(&browser).await.map_err(|e| format!("{e:#}"))?;
            if shown == want {
                Ok(())
            } else {
                Err(format!("page {shown:?}, rangerctl {want:?}"))
            }
        })
        .await?;

        // A move from the admin form: the page follows it without a reload.
        let moved = ranges
            .iter()
            .find(|r| r.is_current() && r.end_text == "t")
            .context("no range ends at t")?;
        let from = moved.served_by().context("the range is not settled")?;
        let to = cluster
            .node_ids()
            .into_iter()
            .find(|n| *n != from)
            .context("no other node")?;
        show(&browser, "admin", "#move-form").await?;
        let client = browser.client();
        client
            .find(Locator::Css("#move-range"))
            .await?
            .send_keys(&moved.id.to_string())
            .await?;
        client
            .find(Locator::Css("#move-node"))
            .await?
            .send_keys(&to)
            .await?;
        client.find(Locator::Css("#move-submit")).await?.click().await?;
        let selector = format!("#admin-placements tr[data-range-id='{}'] [data-field=nodes]", moved.id);
        browser
            .wait_for::<String>(
                &format!("the page shows range {} on {to}", moved.id),
                PAGE_PATIENCE,
                &format!(
                    "const cell = document.querySelector({selector:?});
                     return cell && cell.textContent === {to:?} ? cell.textContent : null;"
                ),
            )
            .await?;
        let result: String = browser
            .wait_for(
                "the move's answer is shown",
                PAGE_PATIENCE,
                "const r = document.getElementById('action-result');
                 return r && r.dataset.state !== 'pending' ? r.dataset.state + ': ' + r.textContent : null;",
            )
            .await?;
        ensure!(result.starts_with("ok"), "the page says {result}");
        let marker: Option<String> = browser.eval("return window.rangerTestMarker || null;").await?;
        ensure!(marker.as_deref() == Some("same page"), "the page was reloaded");
        let id = moved.id;
        cluster
            .wait_ranges("rangerctl shows the move", |r| {
                match range(r, id).map(RangeView::active_nodes) {
                    Some(on) if on == [to.clone()] => Ok(()),
                    other => Err(format!("range {id} on {other:?}")),
                }
            })
            .await?;

        // Every page renders, with what it is for.
        for (route, selector) in PAGES {
            show(&browser, route, selector).await?;
        }
        show(&browser, "keyspace", "#heatmap").await?;
        let cells: u64 = browser
            .wait_for(
                "the heatmap has samples, drawn as cells",
                PAGE_PATIENCE,
                "const g = document.querySelector('#heatmap[data-samples]');
                 const n = g ? g.querySelectorAll('.hcell').length : 0;
                 return n > 0 ? n : null;",
            )
            .await?;
        ensure!(cells > 0, "no heatmap cells");
        let cell: Option<String> = browser
            .eval(&format!(
                "const c = document.querySelector(\"#keyspace-map td[data-range-id='{id}'][data-node-id='{to}']\");
                 return c ? c.dataset.state : null;"
            ))
            .await?;
        ensure!(cell.as_deref() == Some("Active"), "keyspace map cell: {cell:?}");
        show(&browser, "operations", "#ops-recent tr[data-op-id]").await?;
        let recent: String = browser
            .eval("return document.getElementById('ops-recent').textContent;")
            .await?;
        ensure!(recent.contains(&format!("move {id}")), "recent operations: {recent}");
        show(&browser, &format!("ranges/{id}"), &format!("#range-detail[data-range-id='{id}']")).await?;
        browser
            .wait_for::<String>(
                "the range page shows its placement and explanation",
                PAGE_PATIENCE,
                &format!(
                    "const p = document.querySelector(\"#range-placements tr[data-node-id='{to}'][data-state=Active]\");
                     const e = document.getElementById('range-explain').textContent;
                     return p && e !== '…' ? e : null;"
                ),
            )
            .await?;
        // Its state history: the destination became Active there.
        browser
            .wait_for::<String>(
                "the range page's state history shows the move",
                PAGE_PATIENCE,
                &format!(
                    "const t = document.getElementById('range-history').textContent;
                     return t.includes('on {to}: Inactive -> Active') ? t : null;"
                ),
            )
            .await?;

        if std::env::var_os("RANGER_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
            // The README's picture, under load: the hammer through the proxy
            // until the nodes report requests, and a few heatmap samples more.
            let hammer = cluster.hammer(&HammerOptions::default()).await?;
            show(&browser, "overview", "#nodes .node-card").await?;
            browser
                .wait_for::<bool>(
                    "the nodes report load",
                    PAGE_PATIENCE,
                    "const busy = [...document.querySelectorAll('#nodes .node-card')]
                       .some((c) => /[1-9][0-9.]* req\\/s/.test(c.textContent));
                     return busy ? true : null;",
                )
                .await?;
            tokio::time::sleep(Duration::from_secs(12)).await;
            for (route, selector, file) in [
                ("overview", "#nodes .node-card", "dashboard.png"),
                ("keyspace", "#heatmap", "dashboard-keyspace.png"),
            ] {
                show(&browser, route, selector).await?;
                let path = repo_root().join("docs").join(file);
                browser.screenshot(&path).await?;
                eprintln!("saved {}", path.display());
            }
            let report = hammer.stop().await?;
            ensure!(report.lost == 0, "the hammer lost writes: {report:?}");
        }
        Ok(())
    })
    .await;
    browser.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_dashboard_names_the_leader() {
    let cluster = Cluster::builder(Backend::Consul)
        .controllers(2)
        .nodes(0)
        .proxy(false)
        .start()
        .await
        .unwrap();
    let leader = cluster.controllers[0].addr.clone();
    let standby = cluster.controller_http(1);
    let http = reqwest::Client::new();

    // The API: 503, naming the leader.
    let answer: Value = wait::until(
        "the standby's API names the leader",
        PAGE_PATIENCE,
        async || {
            let response = http
                .get(format!("{standby}/api/nodes"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body: Value = response.json().await.map_err(|e| e.to_string())?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                && body["leader"] == leader.as_str()
            {
                Ok(body)
            } else {
                Err(format!("{status}: {body}"))
            }
        },
    )
    .await
    .unwrap();
    eprintln!("the standby's API answers: {answer}");
    let status: Value = http
        .get(format!("{}/api/status", cluster.controller_http(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["role"], "leader", "{status}");

    // The page: a standby badge and the leader's address.
    let browser = Browser::start().await.unwrap();
    with_artifacts(&browser, "dashboard-standby", async || {
        browser.goto(&format!("{standby}/#/overview")).await?;
        let shown: String = browser
            .wait_for(
                "the page names the leader",
                PAGE_PATIENCE,
                "const role = document.getElementById('role').dataset.role;
                 const leader = document.getElementById('leader-address');
                 return role === 'standby' && leader ? leader.dataset.leader : null;",
            )
            .await?;
        ensure!(
            shown == leader,
            "the page names {shown}, the leader is {leader}"
        );
        Ok(())
    })
    .await;
    browser.close().await.unwrap();
}
