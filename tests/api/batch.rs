//! `lua-batch` beyond what every strategy is tested for (exact stock, the
//! per-user limit, every 201 in the log and in SQL): that it does coalesce,
//! and that a failed batch fails whole, writing nothing.

use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;

use seckill::infra::redis_server::RedisServer;

use crate::helpers::{TestApp, assert_error, keys, spawn_app, spawn_app_on, unique};

/// `n` buyers of `item` at once; their statuses.
async fn buy_at_once(app: &Arc<TestApp>, item: &str, n: usize) -> Vec<reqwest::Response> {
    buy_at_once_with(app, item, n, "lua-batch").await
}

async fn buy_at_once_with(
    app: &Arc<TestApp>,
    item: &str,
    n: usize,
    strategy: &'static str,
) -> Vec<reqwest::Response> {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let (app, item) = (Arc::clone(app), item.to_owned());
        tasks.spawn(async move { app.purchase(&item, &format!("b{i}"), strategy).await });
    }
    let mut responses = Vec::new();
    while let Some(response) = tasks.join_next().await {
        responses.push(response.unwrap());
    }
    responses
}

/// Script calls Redis ran, from its own `INFO commandstats`.
async fn script_calls(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// A `lua-batch` sale of 1,000 units on a Redis of its own (no other
/// test's scripts or keys), and its app.
async fn lua_batch_sale(name: &str) -> (Arc<TestApp>, String, RedisServer) {
    let redis = crate::helpers::fresh_redis();
    let app = Arc::new(spawn_app_on(&redis.url(), |_| {}).await);
    let item = unique(name);
    let created = app
        .put_item(&item, json!({"stock": 1000, "strategy": "lua-batch"}))
        .await;
    assert_eq!(created.status(), 201);
    (app, item, redis)
}

/// 120 buyers at once, on a Redis of its own (no other test's scripts
/// counted): at most half as many script calls as purchases, and every
/// purchase counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_buyers_share_script_calls() {
    let (app, item, _redis) = lua_batch_sale("coalesce").await;
    let before = script_calls(&app).await;
    let responses = buy_at_once(&app, &item, 120).await;
    let calls = script_calls(&app).await - before;
    assert!(responses.iter().all(|r| r.status() == 201));
    assert!(
        calls < 120,
        "{calls} script calls for 120 purchases: nothing coalesced"
    );
    let view = app.item(&item).await;
    assert_eq!(
        (view["sold"].as_u64(), view["stock"].as_i64()),
        (Some(120), Some(880))
    );
}

/// A batch whose script fails (the order log's key holds a string, so the
/// append would fail): every buyer in it gets a 503, and the stock and the
/// buyers are as they were, not decremented by the purchases before the
/// failing append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_every_buyer_and_writes_nothing() {
    // A Redis of its own: the poisoned order log would break every other
    // test's item list on the shared one.
    let redis_server = crate::helpers::fresh_redis();
    let app = Arc::new(spawn_app_on(&redis_server.url(), |_| {}).await);
    let item = unique("badlog");
    let created = app
        .put_item(&item, json!({"stock": 50, "strategy": "lua-batch"}))
        .await;
    assert_eq!(created.status(), 201);
    let keys = keys(&item);
    let mut redis = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(keys.orders())
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .unwrap();

    for response in buy_at_once(&app, &item, 40).await {
        assert_error(response, 503, "unavailable").await;
    }
    let stock: i64 = redis::cmd("GET")
        .arg(keys.stock())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stock, 50, "a failed batch wrote into the stock");
    let buyers: u64 = redis::cmd("HLEN")
        .arg(keys.buyers())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(buyers, 0, "a failed batch counted buyers");
}

/// A sale whose meta has lost its generation (edited by hand), which every
/// order entry carries: the purchase scripts fail before their first write,
/// not after the decrement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sale_without_a_generation_fails_before_any_write() {
    let app = Arc::new(spawn_app().await);
    for strategy in ["lua", "lua-batch"] {
        let item = unique("nogen");
        let created = app
            .put_item(&item, json!({"stock": 50, "strategy": strategy}))
            .await;
        assert_eq!(created.status(), 201);
        let mut redis = app.redis().await;
        let _: () = redis::cmd("HDEL")
            .arg(keys(&item).meta())
            .arg("generation")
            .query_async(&mut redis)
            .await
            .unwrap();
        let before = app.redis_snapshot(&item).await;
        for response in buy_at_once_with(&app, &item, 20, strategy).await {
            assert_error(response, 503, "unavailable").await;
        }
        assert_eq!(app.redis_snapshot(&item).await, before, "{strategy} wrote");
    }
}

/// A buyer's count that is not an integer, seen by the script before its
/// first write: the whole batch fails, and nothing of it is written, not
/// even the purchases queued ahead of the bad one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_fails_the_batch_before_any_write() {
    let app = Arc::new(spawn_app().await);
    let item = unique("badcount");
    let created = app
        .put_item(
            &item,
            json!({"stock": 50, "per_user_limit": 5, "strategy": "lua-batch"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let keys = keys(&item);
    let mut redis = app.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(keys.buyers())
        .arg("b39")
        .arg("1.5")
        .query_async(&mut redis)
        .await
        .unwrap();
    let responses = buy_at_once(&app, &item, 40).await;
    let refused = responses.iter().filter(|r| r.status() == 503).count();
    assert!(refused >= 1, "the bad count's batch failed");
    let view = app.item(&item).await;
    let sold = view["sold"].as_u64().unwrap();
    assert_eq!(sold as usize, 40 - refused, "{view}: a failed batch wrote");
    assert_eq!(view["stock"].as_i64(), Some(50 - sold as i64), "{view}");
}

/// Redis stalls (writes paused) with a batch in flight: the buyers queued
/// behind it give up after `LOCK_WAIT_MS` with 503 `contention` and are never
/// sent, and the batch in flight answers once Redis resumes. Every unit sold
/// is a 201: no buyer was told "nothing bought" about a purchase that happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_who_give_up_in_the_queue_buy_nothing() {
    let redis_server = crate::helpers::fresh_redis();
    let app = Arc::new(
        spawn_app_on(&redis_server.url(), |c| {
            c.locks.lock_wait_ms = 200;
            c.redis.redis_timeout_ms = 5_000;
        })
        .await,
    );
    let item = unique("stall");
    let created = app
        .put_item(&item, json!({"stock": 1000, "strategy": "lua-batch"}))
        .await;
    assert_eq!(created.status(), 201);
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1_000)
        .arg("WRITE")
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    let responses = buy_at_once(&app, &item, 60).await;
    let created = responses.iter().filter(|r| r.status() == 201).count();
    let mut gave_up = 0;
    for response in responses.into_iter().filter(|r| r.status() != 201) {
        assert_error(response, 503, "contention").await;
        gave_up += 1;
    }
    assert!(gave_up >= 1, "nobody waited past LOCK_WAIT_MS: no stall");
    let view = app.item(&item).await;
    assert_eq!(view["sold"].as_u64(), Some(created as u64), "{view}");
}

/// A batch that sold several units is one entry of the order log, holding
/// every order (`orders`), and every truth still counts each order: `sold`
/// and `drift`, each 201's order found by its id in the log (the persister
/// is off here, so nothing is in SQL). A restock starts the count of orders
/// beyond one per entry over with the new sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_log_entry_and_every_truth_counts_its_orders() {
    let (app, item, _redis) = lua_batch_sale("one-entry").await;
    let mut bought = Vec::new();
    for response in buy_at_once(&app, &item, 120).await {
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        bought.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(keys(&item).orders())
        .arg("-")
        .arg("+")
        .query_async(&mut app.redis().await)
        .await
        .unwrap();
    let mut logged: Vec<String> = entries
        .iter()
        .flat_map(|(_, fields)| seckill::orders::order_log::ids_and_buyers(fields))
        .map(|(id, _)| id.to_owned())
        .collect();
    assert!(
        entries.len() < logged.len(),
        "{} entries for {} orders: no batch shared an entry",
        entries.len(),
        logged.len()
    );
    logged.sort();
    bought.sort();
    assert_eq!(logged, bought);
    let view = app.item(&item).await;
    assert_eq!(
        (view["sold"].as_u64(), view["drift"].as_i64()),
        (Some(120), Some(0)),
        "{view}"
    );
    for id in &bought {
        let found = app.get(&format!("/api/orders/{id}?item={item}")).await;
        assert_eq!(found.status(), 200, "order {id} not found");
    }

    // The restock leaves the count behind with the previous sale's
    // generation, as an earlier version's restock would: the new sale
    // neither shows it nor adds to it.
    let restocked = app
        .put_item(&item, json!({"stock": 500, "strategy": "lua-batch"}))
        .await;
    assert_eq!(restocked.status(), 200);
    let view = app.item(&item).await;
    assert_eq!(
        (view["sold"].as_u64(), view["drift"].as_i64()),
        (Some(0), Some(0)),
        "{view}"
    );
    for response in buy_at_once(&app, &item, 60).await {
        assert_eq!(response.status(), 201);
    }
    let view = app.item(&item).await;
    assert_eq!(
        (view["sold"].as_u64(), view["drift"].as_i64()),
        (Some(60), Some(0)),
        "{view}"
    );
}

/// The sale's count of orders beyond one per entry, for this generation,
/// is no integer (edited by hand, or a bug): the script refuses every
/// batch before its first write, not after appending orders it cannot
/// count, which would answer 201s the stock and the buyers never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_count_of_extra_orders_fails_the_batch_before_any_write() {
    let (app, item, _redis) = lua_batch_sale("badextra").await;
    let keys = keys(&item);
    let mut redis = app.redis().await;
    let generation: String = redis::cmd("HGET")
        .arg(keys.meta())
        .arg("generation")
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(keys.meta())
        .arg(seckill::orders::order_log::EXTRA_ORDERS)
        .arg("1.5")
        .arg(seckill::orders::order_log::EXTRA_ORDERS_GENERATION)
        .arg(&generation)
        .query_async(&mut redis)
        .await
        .unwrap();
    let before = app.redis_snapshot(&item).await;
    for response in buy_at_once(&app, &item, 20).await {
        assert_error(response, 503, "unavailable").await;
    }
    assert_eq!(app.redis_snapshot(&item).await, before, "a batch wrote");
}
