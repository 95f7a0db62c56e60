//! Orders reach SQL, exactly the ones that got a 201, on every backend:
//! through the persister for the Redis strategies, in the transaction for `sql`;
//! after a graceful stop and after a kill -9.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::domain::ItemId;
use seckill::orders::db::Db;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::helpers::{TestApp, database_urls, spawn_persisting_app, status_and_json, unique};
use crate::process::{Server, buy_until_killed};

/// Fires `buyers` purchases at once; returns the order ids of the 201s.
async fn buy_concurrently(
    app: &Arc<TestApp>,
    item: &str,
    strategy: &str,
    buyers: usize,
) -> HashSet<String> {
    let mut tasks = JoinSet::new();
    for i in 0..buyers {
        let (app, item, strategy) = (Arc::clone(app), item.to_owned(), strategy.to_owned());
        tasks.spawn(async move {
            let response = app.purchase(&item, &format!("p{i}"), &strategy).await;
            let (status, body) = status_and_json(response).await;
            (status.as_u16() == 201).then(|| body["order_id"].as_str().unwrap().to_owned())
        });
    }
    let mut ids = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        if let Some(id) = joined.unwrap() {
            assert!(ids.insert(id), "duplicate order id");
        }
    }
    ids
}

/// Every order id of `item` in SQL, read straight from the database.
pub async fn ids_in_sql(database_url: &str, item: &str) -> HashSet<String> {
    let db = Db::connect(database_url, 2).await.unwrap();
    let query = seckill::orders::db::OrderQuery {
        item: Some(ItemId::parse(item).unwrap()),
        limit: 100_000,
        ..Default::default()
    };
    db.list_orders(&query)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.order.order_id.to_string())
        .collect()
}

/// Waits until every id in `answered` is in SQL, under one of `items`;
/// fails after `within`.
pub async fn wait_in_sql(
    database_url: &str,
    items: &[String],
    answered: &HashSet<String>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let mut in_sql = HashSet::new();
        for item in items {
            in_sql.extend(ids_in_sql(database_url, item).await);
        }
        let missing = answered.difference(&in_sql).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged orders never reached SQL ({database_url})",
            answered.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the item view until the persister has caught up.
async fn wait_until_persisted(app: &TestApp, item: &str, expected: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = app.item(item).await;
        if view["persisted"].as_u64() == Some(expected) && view["lag"] == 0 {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "persister did not catch up: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orders_in_sql_are_exactly_the_201s_for_every_strategy() {
    for database_url in database_urls() {
        let (app, _redis) = spawn_persisting_app(&database_url, |_| {}).await;
        let app = Arc::new(app);
        for strategy in crate::helpers::strategies_where(|k| k.guarded()) {
            let item = unique(strategy);
            app.create_item(&item, 30, 1).await;
            let answered = buy_concurrently(&app, &item, strategy, 80).await;
            assert_eq!(answered.len(), 30, "{strategy} on {database_url}");
            wait_until_persisted(&app, &item, 30).await;
            assert_eq!(
                ids_in_sql(&database_url, &item).await,
                answered,
                "{strategy} on {database_url}: SQL must hold exactly the 201s"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_drains_the_order_log_into_sql() {
    for database_url in database_urls() {
        // One entry per transaction makes the persister slow enough that the
        // stop comes while most of the log is still unpersisted.
        let (app, _redis) =
            spawn_persisting_app(&database_url, |c| c.orders.persister_batch = 1).await;
        let app = Arc::new(app);
        let item = unique("drain");
        app.create_item(&item, 150, 1).await;
        let answered = buy_concurrently(&app, &item, "lua", 150).await;
        assert_eq!(answered.len(), 150);
        let app = Arc::into_inner(app).expect("no other owner left");
        app.stop().await;
        assert_eq!(
            ids_in_sql(&database_url, &item).await,
            answered,
            "{database_url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restocked_sales_old_log_is_persisted_then_removed() {
    let database_url = database_urls().remove(0);
    let (app, _redis) = spawn_persisting_app(&database_url, |c| c.orders.persister = false).await;
    let item = unique("archive");
    app.create_item(&item, 5, 1).await;
    let app = Arc::new(app);
    let first_sale = buy_concurrently(&app, &item, "lua", 5).await;
    app.create_item(&item, 5, 1).await; // sets the first log aside, unpersisted
    let redis_url = app.redis_url.clone();

    // A second instance with a persister, on the same Redis and database.
    let persisting = crate::helpers::spawn_app_on(&redis_url, |c| {
        c.orders.database_url = database_url.clone();
        c.orders.persister = true;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut redis = persisting.redis().await;
    loop {
        let archives: Vec<String> = redis::cmd("SMEMBERS")
            .arg(crate::helpers::keys(&item).archives())
            .query_async(&mut redis)
            .await
            .unwrap();
        if archives.is_empty() && ids_in_sql(&database_url, &item).await == first_sale {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archive not persisted and removed: {archives:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leftover: Vec<String> = redis::cmd("KEYS")
        .arg(crate::helpers::keys(&item).archive_pattern())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(leftover.is_empty(), "{leftover:?}");
}

#[tokio::test]
async fn the_orders_api_pages_with_a_stable_cursor() {
    let database_url = database_urls().remove(0);
    let (app, _redis) = spawn_persisting_app(&database_url, |_| {}).await;
    let item = unique("pages");
    app.create_item(&item, 25, 1).await;
    let app = Arc::new(app);
    let answered = buy_concurrently(&app, &item, "sql", 25).await;
    wait_until_persisted(&app, &item, 25).await;

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = app.url(&format!("/api/orders?item={item}&limit=10"));
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let page: Value = crate::helpers::get_json(&app.client, &url).await;
        pages += 1;
        for order in page["orders"].as_array().unwrap() {
            assert_eq!(order["item_id"], item.as_str());
            seen.push(order["order_id"].as_str().unwrap().parse::<u64>().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "newest first");
    let seen: HashSet<String> = seen.iter().map(u64::to_string).collect();
    assert_eq!(seen, answered);

    let page: Value = app
        .get_json(&format!("/api/orders?item={item}&user=p3&order=asc"))
        .await;
    let orders = page["orders"].as_array().unwrap();
    assert!(orders.len() == 1 && orders[0]["user_id"] == "p3", "{page}");

    for bad in [
        "limit=0",
        "limit=5000",
        "after=xyz",
        "user=a%20b",
        "order=sideways",
        "colour=red",
    ] {
        let response = app.get(&format!("/api/orders?{bad}")).await;
        crate::helpers::assert_error(response, 400, "invalid_request").await;
    }
}

/// Kill -9 the real binary under load, start it again on the same Redis and
/// database: every order that got a 201 before the kill reaches SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_201_reaches_sql_across_a_kill_9() {
    for database_url in database_urls() {
        let redis = crate::helpers::fresh_redis();
        let redis_url = redis.url();
        let env = [
            ("REDIS_URL", redis_url.as_str()),
            ("DATABASE_URL", database_url.as_str()),
            ("PERSISTER_CLAIM_IDLE_MS", "1000"),
        ];
        let mut server = Server::start(&env, None).await;
        let (client, base) = (reqwest::Client::new(), server.base.clone());
        // One item per strategy: a sale is bound to one.
        let prefix = unique("kill9");
        for strategy in crate::helpers::strategies_where(|k| k.guarded()) {
            let created = client
                .put(format!("{base}/api/items/{prefix}-{strategy}"))
                .json(&serde_json::json!({"stock": 1_000_000, "strategy": strategy}))
                .send()
                .await
                .unwrap();
            assert_eq!(created.status(), 201);
        }

        let sales: Vec<(String, &str)> = crate::helpers::strategies_where(|k| k.guarded())
            .into_iter()
            .map(|strategy| (format!("{prefix}-{strategy}"), strategy))
            .collect();
        // SIGKILL: no drain, no lease release.
        let answered = buy_until_killed(&mut server, &sales, Duration::from_millis(800)).await;
        assert!(
            answered.len() > 20,
            "the load made orders before the kill: {}",
            answered.len()
        );

        let _server = Server::start_on(server.port(), &env, None).await;
        let items: Vec<String> = sales.into_iter().map(|(item, _)| item).collect();
        wait_in_sql(&database_url, &items, &answered, Duration::from_secs(30)).await;
    }
}

/// The embedded Redis forgets everything on restart while the SQLite file
/// stays: a new sale must not reuse a sale number SQL already has orders for.
#[tokio::test]
async fn a_fresh_redis_never_reuses_a_sale_number_sql_has_seen() {
    let database_url = database_urls().remove(0);
    let item = unique("reborn");
    let (first, redis) = spawn_persisting_app(&database_url, |_| {}).await;
    first.create_item(&item, 5, 1).await;
    assert_eq!(first.purchase(&item, "u1", "sql").await.status(), 201);
    first.stop().await;
    drop(redis);

    let (second, _redis) = spawn_persisting_app(&database_url, |_| {}).await;
    let (status, view) = status_and_json(second.restock(&item, 5, 1).await).await;
    assert_eq!(status, 201, "new to this Redis: {view}");
    assert_eq!(view["generation"], 2, "{view}");
    assert_eq!(
        view["persisted"], 0,
        "the old sale's order is not this sale's: {view}"
    );
}

/// An order log replaced under the persister (restocked, then bought again:
/// a new stream its group does not cover yet) must not stall the other logs:
/// each log's read stands on its own, and the replaced one is grouped afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_order_log_holds_up_neither_itself_nor_the_others() {
    let (app, _redis) = spawn_persisting_app(&database_urls().remove(0), |_| {}).await;
    let (steady, replaced) = (unique("steady"), unique("replaced"));
    for item in [&steady, &replaced] {
        assert_eq!(
            app.put_item(item, serde_json::json!({"stock": 10}))
                .await
                .status(),
            201
        );
        assert_eq!(app.purchase(item, "u1", "lua").await.status(), 201);
    }
    // The persister has grouped both logs.
    wait_until_persisted(&app, &replaced, 1).await;
    assert_eq!(
        app.put_item(&replaced, serde_json::json!({"stock": 10}))
            .await
            .status(),
        200
    );
    assert_eq!(app.purchase(&replaced, "u2", "lua").await.status(), 201);
    assert_eq!(app.purchase(&steady, "u2", "lua").await.status(), 201);
    wait_until_persisted(&app, &steady, 2).await;
    wait_until_persisted(&app, &replaced, 1).await;
}

/// A restock replaces the log the persister waits on (a blocking
/// `XREADGROUP` answered `UNBLOCKED`, a read of the old group `NOGROUP`):
/// an expected event, not a failed step in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_under_the_persisters_wait_is_no_error() {
    // Reclaims at every step too, so an `XAUTOCLAIM` meets a replaced log.
    let (app, _redis) = spawn_persisting_app(&database_urls().remove(0), |c| {
        c.orders.persister_claim_idle_ms = 50
    })
    .await;
    let item = unique("unblocked");
    app.create_item(&item, 10, 1).await;
    for round in 1..=5 {
        let user = format!("u{round}");
        assert_eq!(app.purchase(&item, &user, "lua").await.status(), 201);
        // Caught up: the persister is blocked on this log, its sale's.
        wait_until_persisted(&app, &item, 1).await;
        tokio::time::sleep(Duration::from_millis(20 * round)).await;
        app.create_item(&item, 10, 1).await;
    }
    assert_eq!(app.purchase(&item, "last", "lua").await.status(), 201);
    wait_until_persisted(&app, &item, 1).await;
    let report: Value = app.get_json("/api/persister").await;
    assert_eq!(report["errors"], 0, "{report}");
}
