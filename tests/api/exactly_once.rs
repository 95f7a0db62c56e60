//! Exactly once, when an answer is lost: a purchase whose reply never came
//! back answers `outcome_unknown` with its order id, the order can be
//! looked up, and a repeat with the same Idempotency-Key replays the one
//! purchase it made instead of buying again. The key is decided where the
//! purchase commits, so neither a lost reply, nor a claim that expired or
//! was released under a purchase still running, can buy a second unit.

use std::sync::Arc;
use std::time::Duration;

use seckill::config::Config;
use seckill::domain::{ItemId, UserId};
use seckill::orders::snowflake::OrderId;
use seckill::sale::ItemSettings;
use seckill::sale::idempotency::{Idempotency, IdempotencyKey};
use seckill::startup::App;
use seckill::strategy::{Outcome, Purchase, StrategyKind};
use serde_json::Value;

use crate::helpers::{
    assert_error, connect, fresh_redis, keys, shared_redis, single, spawn_app_on, sqlite_url,
    status_and_json, unique,
};
use crate::proxy::ReplyDelayProxy;

/// Units `user` holds of `item`, as the item's buyers hash says.
async fn held(redis_url: &str, item: &str, user: &str) -> i64 {
    let held: Option<i64> = redis::cmd("HGET")
        .arg(keys(item).buyers())
        .arg(user)
        .query_async(&mut connect(redis_url).await)
        .await
        .unwrap();
    held.unwrap_or(0)
}

/// Entries in `item`'s order log.
async fn logged(redis_url: &str, item: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(keys(item).orders())
        .query_async(&mut connect(redis_url).await)
        .await
        .unwrap()
}

fn order_id_of(error: &Value) -> String {
    error["error"]["order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no order id: {error}"))
        .to_owned()
}

/// The replies to the purchase's own script are held back past
/// `REDIS_TIMEOUT_MS` (and so are those of the look-up after it): the
/// purchase ran in Redis, the app cannot tell, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_after_the_purchase_ran_is_outcome_unknown_and_a_repeat_replays_it() {
    let redis = shared_redis();
    let proxy = ReplyDelayProxy::start(redis.port()).await;
    let app = spawn_app_on(&proxy.url, |c| c.redis.redis_timeout_ms = 500).await;
    for strategy in ["lua", "lua-batch"] {
        let item = unique("lost-reply");
        app.create_item(&item, 10, 2).await;
        // Loads the scripts: a first call answered NOSCRIPT is not this test.
        assert_eq!(app.purchase(&item, "warm", strategy).await.status(), 201);

        // The purchase script carries the order's head, `<id> alice <strategy> `.
        proxy.hold_replies_after(format!(" alice {strategy} ").as_bytes());
        let lost = assert_error(
            app.purchase_with_key(&item, "alice", strategy, "K1").await,
            503,
            "outcome_unknown",
        )
        .await;
        proxy.release();
        proxy.hold_replies_after(format!(" bob {strategy} ").as_bytes());
        let lost_unkeyed = assert_error(
            app.purchase(&item, "bob", strategy).await,
            503,
            "outcome_unknown",
        )
        .await;
        proxy.release();
        let (alice_order, bob_order) = (order_id_of(&lost), order_id_of(&lost_unkeyed));

        // Both purchases did happen, and the order-status endpoint says so.
        for order in [&alice_order, &bob_order] {
            let (status, found) = status_and_json(
                app.client
                    .get(app.url(&format!("/api/orders/{order}?item={item}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 200, "{strategy}: {found}");
            assert_eq!(found["found_in"], "order_log", "{strategy}: {found}");
            assert_eq!(found["order"]["order_id"], order.as_str(), "{found}");
        }

        // The repeat learns the purchase the key made: no second unit.
        let again = app.purchase_with_key(&item, "alice", strategy, "K1").await;
        assert_eq!(again.headers()["idempotency-replayed"], "true");
        let (status, again) = status_and_json(again).await;
        assert_eq!(status, 201, "{strategy}: {again}");
        assert_eq!(again["order_id"], alice_order.as_str(), "{strategy}");
        assert_eq!(held(&redis.url(), &item, "alice").await, 1, "{strategy}");
        assert_eq!(logged(&redis.url(), &item).await, 3, "{strategy}");
    }
}

/// The case 1, under `lock`: Redis pauses writes while the lock
/// holder writes; the request times out, its write runs when the pause
/// ends. The same request again must replay that purchase, not make a
/// second one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_by_a_paused_redis_is_bought_once_per_key() {
    // Private: CLIENT PAUSE would stall every other test's Redis.
    let redis = fresh_redis();
    let app = Arc::new(
        spawn_app_on(&redis.url(), |c| {
            c.redis.redis_timeout_ms = 500;
            // The test must see the lock and pause Redis within this, on
            // two cores the whole suite shares: a second was once too
            // short, and the write went through before the pause.
            c.lab.race_window_ms = 2000;
            c.locks.lock_ttl_ms = 20_000;
        })
        .await,
    );
    let item = unique("paused-write");
    app.create_item(&item, 10, 2).await;
    let first = {
        let (app, item) = (Arc::clone(&app), item.clone());
        tokio::spawn(async move { app.purchase_with_key(&item, "alice", "lock", "K1").await })
    };
    // Once the holder has the lock it is in its race window: pause writes
    // past its write.
    let mut redis_conn = connect(&redis.url()).await;
    while !redis::cmd("EXISTS")
        .arg(keys(&item).lock())
        .query_async::<bool>(&mut redis_conn)
        .await
        .unwrap()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3500)
        .arg("WRITE")
        .query_async(&mut connect(&redis.url()).await)
        .await
        .unwrap();
    let first = assert_error(first.await.unwrap(), 503, "outcome_unknown").await;
    // The pause ends; the held write runs.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let again = app.purchase_with_key(&item, "alice", "lock", "K1").await;
    let (status, again) = status_and_json(again).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["order_id"], order_id_of(&first).as_str());
    assert_eq!(held(&redis.url(), &item, "alice").await, 1);
    assert_eq!(logged(&redis.url(), &item).await, 1);
}

/// The case 2, for every strategy that reads before it writes: the
/// claim vanishes (expired, or released) while the first purchase still
/// runs, and the same request comes again. Whichever commits second finds
/// the key bought: one unit, one order, and both answers name it, though
/// the second read the buyer at the per-user limit of 1 before its write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_under_a_running_purchase_cannot_buy_twice() {
    let redis = shared_redis();
    let app = Arc::new(spawn_app_on(&redis.url(), |c| c.lab.race_window_ms = 600).await);
    let mut runs = Vec::new();
    for strategy in ["naive", "optimistic", "lock", "redlock", "sql"] {
        let item = unique("lost-claim");
        app.create_item(&item, 10, 1).await;
        let (app, url) = (Arc::clone(&app), redis.url());
        runs.push(tokio::spawn(async move {
            let first = {
                let (app, item) = (Arc::clone(&app), item.clone());
                tokio::spawn(
                    async move { app.purchase_with_key(&item, "alice", strategy, "K1").await },
                )
            };
            let claims = loop {
                let claims: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", keys(&item).idempotency("")))
                    .query_async(&mut connect(&url).await)
                    .await
                    .unwrap();
                if !claims.is_empty() {
                    break claims;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            assert_eq!(claims.len(), 1, "{strategy}: the first purchase's claim");
            let () = redis::cmd("DEL")
                .arg(&claims)
                .query_async(&mut connect(&url).await)
                .await
                .unwrap();
            let second = app.purchase_with_key(&item, "alice", strategy, "K1").await;
            let (s2, second) = status_and_json(second).await;
            let (s1, first) = status_and_json(first.await.unwrap()).await;
            assert_eq!(
                (s1.as_u16(), s2.as_u16()),
                (201, 201),
                "{strategy}: {first} {second}"
            );
            assert_eq!(first["order_id"], second["order_id"], "{strategy}");
            assert_eq!(held(&url, &item, "alice").await, 1, "{strategy}");
            assert_eq!(logged(&url, &item).await, 1, "{strategy}");
        }));
    }
    for run in runs {
        run.await.unwrap();
    }
}

/// Every strategy's commit step, on its own: a purchase whose key's record
/// says it bought writes nothing and answers that purchase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategys_commit_step_refuses_a_key_that_bought() {
    let redis = shared_redis();
    let mut config = Config::defaults();
    config.orders.database_url = sqlite_url();
    config.orders.persister = false;
    let app = App::build(&config, &single(&redis.url())).await.unwrap();
    let state = &app.state;
    let idempotency = Idempotency::new(
        state.redis.clone(),
        Duration::from_secs(10),
        Duration::from_secs(60),
    );
    let user = UserId::parse("alice").unwrap();
    for kind in StrategyKind::ALL {
        let item = ItemId::parse(&unique("commit-key")).unwrap();
        let settings = ItemSettings {
            stock: 10,
            per_user_limit: 5,
            strategy: Some(kind),
            payment_window_ms: 0,
        };
        state
            .sales
            .restock(&item, settings, &state.stats)
            .await
            .unwrap();
        let strategy = state.strategies.by_kind(kind).unwrap();
        let purchase = |order: u64| {
            let mut purchase =
                Purchase::new(item.clone(), user.clone(), OrderId((1 << 40) + order), kind);
            purchase.keyed = Some(idempotency.keyed(
                &purchase.keys,
                IdempotencyKey::parse("K1").unwrap(),
                &user,
                kind,
            ));
            purchase
        };
        let first = strategy.purchase(&purchase(1)).await.unwrap();
        assert_eq!(first.outcome, Outcome::Purchased { remaining: 9 }, "{kind}");
        let second = strategy.purchase(&purchase(2)).await.unwrap();
        match second.outcome {
            Outcome::KeyBought(bought) => {
                assert_eq!(bought.order_id, Some(OrderId((1 << 40) + 1)), "{kind}");
                assert_eq!(bought.remaining, 9, "{kind}");
            }
            other => panic!("{kind}: a second purchase with the key: {other:?}"),
        }
        let url = redis.url();
        assert_eq!(held(&url, item.as_str(), "alice").await, 1, "{kind}");
        assert_eq!(logged(&url, item.as_str()).await, 1, "{kind}");
    }
    app.shutdown().await;
}

/// A purchase still short of its commit step when its time runs out is cut
/// there: 503 `unavailable`, and it never buys later (no task of it goes on
/// to write after the client was told nothing happened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_out_of_time_before_its_write_never_buys() {
    let redis = shared_redis();
    let app = spawn_app_on(&redis.url(), |c| {
        c.http.request_timeout_ms = 1000;
        c.lab.race_window_ms = 2000;
        c.redis.redis_timeout_ms = 500;
    })
    .await;
    let item = unique("out-of-time");
    app.create_item(&item, 10, 2).await;
    for _ in 0..2 {
        assert_error(
            app.purchase_with_key(&item, "alice", "optimistic", "K1")
                .await,
            503,
            "unavailable",
        )
        .await;
    }
    // Past every race window the two requests opened.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(held(&redis.url(), &item, "alice").await, 0);
    assert_eq!(logged(&redis.url(), &item).await, 0);
}

/// `GET /api/orders/{order_id}?item=`: found in the log, then in SQL once
/// persisted; unknown ids are 404, bad input 400, all JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_status_endpoint_finds_orders_in_the_log_and_in_sql() {
    let (app, _redis) = crate::helpers::spawn_persisting_app(&sqlite_url(), |_| {}).await;
    let item = unique("order-status");
    app.create_item(&item, 10, 1).await;
    let (status, bought) = status_and_json(app.purchase(&item, "u1", "lua").await).await;
    assert_eq!(status, 201);
    let order = bought["order_id"].as_str().unwrap().to_owned();
    let get = |path: String| {
        let app = &app;
        async move { status_and_json(app.client.get(app.url(&path)).send().await.unwrap()).await }
    };
    app.wait_until_persisted(&item, Duration::from_secs(10))
        .await;
    let (status, found) = get(format!("/api/orders/{order}?item={item}")).await;
    assert_eq!(
        (status.as_u16(), &found["found_in"]),
        (200, &Value::from("sql")),
        "{found}"
    );

    let (status, missing) = get(format!("/api/orders/{}?item={item}", (1u64 << 40) + 7)).await;
    assert_eq!(
        (status.as_u16(), &missing["error"]["code"]),
        (404, &Value::from("order_not_found"))
    );
    for bad in [
        format!("/api/orders/{order}"),
        format!("/api/orders/not-a-number?item={item}"),
        format!("/api/orders/{order}?item=bad%20item"),
        format!("/api/orders/{order}?item={item}&extra=1"),
    ] {
        let (status, body) = get(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{bad}");
    }
}
