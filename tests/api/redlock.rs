//! `redlock` over three independent Redis nodes: never oversold with all up,
//! purchases go on with one killed mid-run, refused with two killed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::infra::redis_server::RedisServer;
use tokio::task::JoinSet;

use crate::helpers::{TestApp, assert_error, spawn_app_with, unique};

fn three_nodes() -> Vec<RedisServer> {
    (0..3).map(|_| crate::helpers::fresh_redis()).collect()
}

async fn redlock_app(nodes: &[RedisServer], lock_wait_ms: u64) -> Arc<TestApp> {
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    Arc::new(
        spawn_app_with(|c| {
            c.locks.redlock_urls = urls;
            c.locks.lock_wait_ms = lock_wait_ms;
            c.http.request_timeout_ms = c.http.request_timeout_ms.max(lock_wait_ms + 10_000);
        })
        .await,
    )
}

/// Starts one buyer per user; each task yields its final status and error code.
fn buyers(
    app: &Arc<TestApp>,
    item: &str,
    users: impl Iterator<Item = String>,
) -> JoinSet<(u16, String)> {
    let mut tasks = JoinSet::new();
    for user in users {
        let (app, item) = (Arc::clone(app), item.to_owned());
        tasks.spawn(async move {
            // A buyer turned away for contention comes back, as real buyers
            // do: demand stays at least the stock (DESIGN.md, no undersell).
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let response = app.purchase(&item, &user, "redlock").await;
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap();
                let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                if code != "contention" || Instant::now() > deadline {
                    return (status, code);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
    tasks
}

/// Counts by status, error responses by status and code (`503 contention`).
async fn statuses(mut tasks: JoinSet<(u16, String)>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (status, code) = joined.unwrap();
        let key = if code.is_empty() {
            status.to_string()
        } else {
            format!("{status} {code}")
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_and_concurrent_buyers_never_oversell() {
    let nodes = three_nodes();
    let app = redlock_app(&nodes, 5_000).await;
    let item = unique("redlock");
    app.create_item(&item, 50, 1).await;
    let counts = statuses(buyers(&app, &item, (0..200).map(|i| format!("r{i}")))).await;
    assert_eq!(counts.get("201"), Some(&50), "{counts:?}");
    let view = app.item(&item).await;
    assert_eq!(
        (
            view["sold"].as_u64(),
            view["oversold"].as_u64(),
            view["drift"].as_i64()
        ),
        (Some(50), Some(0), Some(0)),
        "{view}"
    );
    assert_eq!(view["stock"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_node_killed_mid_run_purchases_go_on_and_never_oversell() {
    let mut nodes = three_nodes();
    // Long waits: 400 buyers queue for one lock in a debug build on shared
    // cores; what is tested is that the sale completes and never oversells,
    // not how fast.
    let app = redlock_app(&nodes, 20_000).await;
    let item = unique("redlock-kill1");
    app.create_item(&item, 100, 1).await;
    // Twice the stock in buyers. With 400, on two cores shared with the rest
    // of the suite, Redlock's split votes (each contender wins one node of
    // three, none a quorum, all release and retry) could keep the sale from
    // starting for 10 s; what is tested is completion with a node killed and
    // no oversell, not behaviour under that much contention.
    let tasks = buyers(&app, &item, (0..200).map(|i| format!("k{i}")));

    // Kill a node once the sale is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.item(&item).await["sold"].as_u64().unwrap() < 10 {
        assert!(Instant::now() < deadline, "the sale never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    nodes[0].kill();
    let sold_at_kill = app.item(&item).await["sold"].as_u64().unwrap();

    let counts = statuses(tasks).await;
    let view = app.item(&item).await;
    assert!(
        sold_at_kill < 100,
        "the kill came mid-run ({sold_at_kill} sold)"
    );
    assert_eq!(counts.get("201"), Some(&100), "{counts:?}");
    assert_eq!(
        (view["sold"].as_u64(), view["oversold"].as_u64()),
        (Some(100), Some(0)),
        "{view}"
    );
    // And after the run, with two of three nodes, buying still works.
    let again = unique("redlock-after");
    app.create_item(&again, 1, 1).await;
    assert_eq!(app.purchase(&again, "late", "redlock").await.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_of_three_nodes_killed_purchases_are_refused_not_granted() {
    let mut nodes = three_nodes();
    let app = redlock_app(&nodes, 300).await;
    let item = unique("redlock-kill2");
    app.create_item(&item, 10, 1).await;
    assert_eq!(app.purchase(&item, "before", "redlock").await.status(), 201);
    nodes[0].kill();
    nodes[1].kill();
    for user in ["a", "b", "c"] {
        let body = assert_error(
            app.purchase(&item, user, "redlock").await,
            503,
            "contention",
        )
        .await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("quorum"),
            "{body}"
        );
    }
    let view = app.item(&item).await;
    assert_eq!(
        (view["sold"].as_u64(), view["stock"].as_i64()),
        (Some(1), Some(9)),
        "{view}"
    );
    assert_eq!(view["strategies"]["redlock"]["contention"], 3);
}
