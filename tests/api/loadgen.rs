//! The load generator reports what really happened: it counts what the server
//! answered and reads the truths back, so it must see `naive` oversell and find
//! every `lua` order in the order log and in SQL.

use std::time::Duration;

use seckill::infra::redis_server::RedisServer;
use seckill::lab::loadgen::{self, RacePlan, Target};
use seckill::strategy::StrategyKind;

use crate::helpers::{database_urls, spawn_persisting_app};

/// A persisting app whose `naive` purchases wait 20 ms between read and
/// write, and the bench's target for it (its Redis reachable, for the
/// order-log check).
async fn persisting_target() -> (crate::helpers::TestApp, RedisServer, Target) {
    let (app, redis) =
        spawn_persisting_app(&database_urls().remove(0), |c| c.lab.race_window_ms = 20).await;
    let target = Target::from_url(
        &app.address,
        None,
        Some(crate::helpers::single(&redis.url())),
    )
    .await
    .unwrap();
    (app, redis, target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_reports_the_truth_of_each_strategy() {
    let (_app, _redis, target) = persisting_target().await;
    let plan = RacePlan {
        strategies: vec![StrategyKind::Naive, StrategyKind::Lua],
        stock: 200,
        per_user_limit: 1,
        users: 600,
        concurrency: 16,
        duration: Duration::from_secs(30),
        until_sold_out: true,
        repeat_buyers: false,
        ceiling_duration: Duration::from_millis(300),
        item_prefix: "lg".into(),
        rate: None,
        runs: 2,
        payments: None,
    };
    let report = loadgen::race(&target, &plan, std::sync::Arc::new(|_| {}))
        .await
        .unwrap();
    for run in &report.results {
        assert!(run.ceiling.requests > 0 && run.ceiling.requests_per_s > 0.0);
    }

    // Interleaved: every strategy once, then again, each after its own ceiling.
    let order: Vec<(StrategyKind, u32)> =
        report.results.iter().map(|r| (r.strategy, r.run)).collect();
    use StrategyKind::{Lua, Naive};
    assert_eq!(order, [(Naive, 1), (Lua, 1), (Naive, 2), (Lua, 2)]);
    let summary = &report.summary;
    assert_eq!(summary.len(), 2);
    assert_eq!(
        (summary[0].linearizable_runs, summary[1].linearizable_runs),
        (0, 2)
    );
    let rps = summary[1].get("requests_per_s").unwrap();
    let runs: Vec<f64> = report.results[1..]
        .iter()
        .step_by(2)
        .map(|r| r.requests_per_s)
        .collect();
    assert_eq!(
        (rps.min, rps.max),
        (runs[0].min(runs[1]), runs[0].max(runs[1]))
    );
    assert_eq!(rps.median, (runs[0] + runs[1]) / 2.0);

    let naive = &report.results[0];
    assert_eq!(naive.strategy, StrategyKind::Naive);
    assert!(
        naive.oversold > 0,
        "naive must be caught overselling: {naive:?}"
    );
    assert!(naive.drift < 0, "{naive:?}");
    assert_eq!(
        naive.statuses.created_201, naive.sold,
        "every 201 is in the order log"
    );
    // The history check judges it on its own, from the requests alone.
    let verdict = &naive.history;
    assert!(!verdict.linearizable, "{verdict:?}");
    assert!(verdict.oversold > 0, "{verdict:?}");
    let example = verdict.counterexample.as_ref().expect("a counterexample");
    assert!(
        matches!(example.kind, "oversold" | "phantom_sold_out"),
        "{example:?}"
    );
    assert!(!example.calls.is_empty(), "{example:?}");

    let lua = &report.results[1];
    assert_eq!(lua.statuses.created_201, 200, "{lua:?}");
    assert_eq!(
        (lua.sold, lua.oversold, lua.drift, lua.undersold),
        (200, 0, 0, 0)
    );
    assert_eq!(lua.lost_in_log, Some(0));
    assert_eq!(lua.lost_in_sql, Some(0));
    let verdict = &lua.history;
    assert!(verdict.linearizable, "{verdict:?}");
    assert_eq!(verdict.requests, lua.requests);
    assert_eq!(
        (
            verdict.oversold,
            verdict.phantom_sold_out,
            verdict.ghost_orders
        ),
        (0, 0, 0)
    );
    assert!(lua.time_to_sell_out_s.is_some());
    assert!(lua.requests >= 200 && lua.latency.p99_ms >= lua.latency.p50_ms);

    let dir = std::env::temp_dir().join(crate::helpers::unique("seckill-report"));
    let rss = Default::default();
    seckill::lab::report::write_files(&dir, &report, &rss, &seckill::lab::report::Machine::here())
        .unwrap();
    let markdown = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert!(
        markdown.contains("| naive |") && markdown.contains("| lua |"),
        "{markdown}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["results"][1]["strategy"], "lua");
    assert_eq!(json["results"][1]["history"]["linearizable"], true);
    assert_eq!(json["results"][0]["history"]["linearizable"], false);
    assert!(
        markdown.contains("`naive` is not linearizable"),
        "{markdown}"
    );
    let svg = std::fs::read_to_string(dir.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("lua"));
    assert!(svg.contains("NOT linearizable in 2 of 2 runs"), "{svg}");
    assert!(svg.contains(">linearizable in 2 of 2 runs<"), "{svg}");
    assert!(markdown.contains("Over 2 runs per strategy"), "{markdown}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The open loop keeps its schedule whatever the server does: with one
/// connection and a strategy that takes at least 20 ms per purchase, requests
/// scheduled every 5 ms queue, and only the latency from the scheduled start
/// shows that wait. A closed loop (or a latency from the send) would hide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_loop_counts_the_wait_a_closed_loop_hides() {
    let (_app, _redis, target) = persisting_target().await;
    let plan = RacePlan {
        strategies: vec![StrategyKind::Naive],
        stock: 10_000,
        per_user_limit: 1,
        users: 10_000,
        concurrency: 1,
        duration: Duration::from_millis(1_000),
        until_sold_out: false,
        repeat_buyers: false,
        ceiling_duration: Duration::from_millis(100),
        item_prefix: "open".into(),
        rate: Some(loadgen::Rate::new(200.0, None).unwrap()),
        runs: 1,
        payments: None,
    };
    let report = loadgen::race(&target, &plan, std::sync::Arc::new(|_| {}))
        .await
        .unwrap();
    let run = &report.results[0];
    let corrected = run.latency_corrected.expect("the open loop corrects");
    // At most one purchase per 20 ms on one connection: about 50 of the 200
    // scheduled were sent, each later than the last.
    assert!(run.requests <= 60, "{run:?}");
    assert!(run.late >= run.requests / 2, "{run:?}");
    // Every scheduled request is either sent or counted as dropped.
    assert_eq!(run.scheduled, Some(200), "{run:?}");
    assert_eq!(run.requests + run.dropped, 200, "{run:?}");
    assert!(
        corrected.p99_ms > 5.0 * run.latency.p99_ms,
        "corrected {corrected:?} against uncorrected {:?}",
        run.latency
    );
    assert!(run.history.linearizable, "{:?}", run.history);
}
