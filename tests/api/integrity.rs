//! A protected sale cannot be broken from outside: by a client naming another
//! strategy, by a restock landing mid-purchase, or by two processes minting
//! order ids with one worker number. Each test is the attack; each must fail
//! when its defence is removed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::infra::redis_conn::RedisConn;
use seckill::infra::redis_server::RedisServer;
use seckill::orders::lease::{LeaseConfig, SKEW_MARGIN, WorkerLease};
use seckill::orders::order_log::{self, legacy};
use seckill::orders::snowflake::{ManualClock, OrderId, SystemClock};
use seckill::strategy::Decides;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{
    TIMEOUTS, TestApp, all_strategies, assert_error, hold_all_worker_numbers_but, single,
    spawn_app, spawn_app_on, spawn_app_with, spawn_persisting_app, sqlite_url, status_and_json,
    unique,
};

#[tokio::test]
async fn a_purchase_naming_another_strategy_than_the_sales_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let item = unique("bound");
    app.create_item(&item, 5, 1).await;
    assert_eq!(app.item(&item).await["strategy"], Value::Null);
    assert_eq!(app.purchase(&item, "first", "lua").await.status(), 201);
    assert_eq!(app.item(&item).await["strategy"], "lua");

    let before = app.redis_snapshot(&item).await;
    for strategy in all_strategies().into_iter().filter(|s| *s != "lua") {
        let body = assert_error(
            app.purchase(&item, "hostile", strategy).await,
            409,
            "strategy_mismatch",
        )
        .await;
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("`lua`"),
            "names the sale's strategy: {message}"
        );
    }
    assert_eq!(
        app.redis_snapshot(&item).await,
        before,
        "refusals change nothing"
    );
    let view = app.item(&item).await;
    assert_eq!(
        view["strategies"]["naive"]["strategy_mismatch"], 1,
        "{view}"
    );
    assert_eq!(view["strategies"]["sql"]["strategy_mismatch"], 1, "{view}");
    assert_eq!(view["sold"], 1, "{view}");

    // And the other way round: `lua` decides in its own script.
    let naive_sale = unique("bound-naive");
    app.create_item(&naive_sale, 5, 1).await;
    assert_eq!(
        app.purchase(&naive_sale, "first", "naive").await.status(),
        201
    );
    let before = app.redis_snapshot(&naive_sale).await;
    let body = assert_error(
        app.purchase(&naive_sale, "hostile", "lua").await,
        409,
        "strategy_mismatch",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`naive`"),
        "{body}"
    );
    assert_eq!(app.redis_snapshot(&naive_sale).await, before);
}

/// The attack: one anonymous client sends `naive` purchases with a
/// race window while 32 buyers buy a 200-unit `lua` sale. Before the binding
/// this sold 202 units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_naive_client_cannot_oversell_a_lua_sale() {
    let app = Arc::new(spawn_app_with(|c| c.lab.race_window_ms = 50).await);
    let item = unique("hostile");
    app.create_item(&item, 200, 1).await;
    assert_eq!(app.purchase(&item, "opener", "lua").await.status(), 201);

    let mut tasks = JoinSet::new();
    for buyer in 0..32 {
        let (app, item) = (Arc::clone(&app), item.clone());
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for round in 0..8 {
                let user = format!("b{buyer}-{round}");
                statuses.push(("lua", app.purchase(&item, &user, "lua").await.status()));
            }
            statuses
        });
    }
    for _ in 0..4 {
        let (app, item) = (Arc::clone(&app), item.clone());
        tasks.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                // One user, far past a limit of 1, with the unsafe strategy.
                statuses.push(("naive", app.purchase(&item, "anon", "naive").await.status()));
            }
            statuses
        });
    }
    let mut counts: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        for (strategy, status) in joined.unwrap() {
            *counts.entry((strategy, status.as_u16())).or_default() += 1;
        }
    }
    assert_eq!(counts.get(&("naive", 409)), Some(&40), "{counts:?}");
    assert_eq!(counts.get(&("lua", 201)), Some(&199), "{counts:?}");
    let view = app.item(&item).await;
    assert_eq!(
        (&view["sold"], &view["oversold"], &view["stock"]),
        (&json!(200), &json!(0), &json!(0)),
        "{view}"
    );
    assert_eq!(view["strategies"]["naive"]["strategy_mismatch"], 40);
}

/// First purchases naming every strategy at once, from two instances: exactly
/// one strategy wins the sale, every other purchase is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_purchases_bind_the_sale_to_exactly_one_strategy_across_instances() {
    let database = sqlite_url();
    let apps = [
        Arc::new(spawn_app_with(|c| c.orders.database_url = database.clone()).await),
        Arc::new(spawn_app_with(|c| c.orders.database_url = database.clone()).await),
    ];
    for round in 0..6 {
        let item = unique("first");
        apps[0].create_item(&item, 1_000, 1).await;
        let mut tasks = JoinSet::new();
        for i in 0..48 {
            let app = Arc::clone(&apps[i % 2]);
            let strategy = all_strategies()[(i + round) % all_strategies().len()];
            let item = item.clone();
            tasks.spawn(async move {
                let response = app.purchase(&item, &format!("u{i}"), strategy).await;
                let (status, body) = status_and_json(response).await;
                (strategy, status.as_u16(), body)
            });
        }
        let mut bought = BTreeSet::new();
        let mut purchases = 0;
        let mut refusals = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let (strategy, status, body) = joined.unwrap();
            match status {
                201 => {
                    bought.insert(strategy);
                    purchases += 1;
                }
                409 => refusals.push(body),
                other => panic!("{strategy}: unexpected {other} {body}"),
            }
        }
        assert_eq!(bought.len(), 1, "one strategy sells: {bought:?}");
        let winner = *bought.iter().next().unwrap();
        for body in &refusals {
            assert_eq!(body["error"]["code"], "strategy_mismatch", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(&format!("`{winner}`")), "{message}");
        }
        let view = apps[1].item(&item).await;
        assert_eq!(view["strategy"], winner, "{view}");
        assert_eq!(view["sold"], purchases, "{view}");
    }
}

#[tokio::test]
async fn a_restock_names_the_strategy_or_clears_the_binding() {
    let app = spawn_app().await;
    let item = unique("named");
    let put = |body: Value| app.put_item(&item, body);
    let (status, view) = status_and_json(put(json!({"stock": 3, "strategy": "lock"})).await).await;
    assert_eq!((status.as_u16(), &view["strategy"]), (201, &json!("lock")));
    assert_error(
        app.purchase(&item, "u1", "lua").await,
        409,
        "strategy_mismatch",
    )
    .await;
    assert_eq!(app.purchase(&item, "u1", "lock").await.status(), 201);

    let before = app.redis_snapshot(&item).await;
    let body = assert_error(
        put(json!({"stock": 3, "strategy": "fast"})).await,
        400,
        "invalid_request",
    )
    .await;
    assert!(body["error"]["message"].as_str().unwrap().contains("lua"));
    assert_eq!(
        app.redis_snapshot(&item).await,
        before,
        "a bad restock changes nothing"
    );

    let (status, view) = status_and_json(put(json!({"stock": 3})).await).await;
    assert_eq!((status.as_u16(), &view["strategy"]), (200, &Value::Null));
    assert_eq!(app.purchase(&item, "u1", "lua").await.status(), 201);
    assert_eq!(app.item(&item).await["strategy"], "lua");
}

/// Asserts that the sale a restock to 5 units started (the second) is as the
/// restock left it, whatever the held purchase did; returns the item view.
async fn new_sale_untouched(app: &TestApp, item: &str, strategy: &str) -> Value {
    let view = app.item(item).await;
    assert_eq!(
        (
            &view["stock"],
            &view["sold"],
            &view["lag"],
            &view["generation"]
        ),
        (&json!(5), &json!(0), &json!(0), &json!(2)),
        "{strategy}: the new sale is untouched: {view}"
    );
    view
}

/// A purchase from the old sale, held open by the race window, finishes after
/// a restock: it must not write into the new sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_during_a_held_purchase_leaves_the_new_sale_untouched() {
    let app = Arc::new(spawn_app_with(|c| c.lab.race_window_ms = 300).await);
    // Every strategy that decides between a read and a write: the window a
    // restock can fall into.
    for strategy in
        crate::helpers::strategies_where(|k| k.decides() == Decides::BetweenReadAndWrite)
    {
        let item = unique("restocked");
        let restock =
            |stock: u64| app.put_item(&item, json!({"stock": stock, "strategy": strategy}));
        assert!(restock(1_000).await.status().is_success());
        let held = {
            let (app, item) = (Arc::clone(&app), item.clone());
            tokio::spawn(async move { app.purchase(&item, "held", strategy).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(restock(5).await.status(), 200, "{strategy}");
        let (status, body) = status_and_json(held.await.unwrap()).await;

        let view = new_sale_untouched(&app, &item, strategy).await;
        {
            assert_eq!(
                (status.as_u16(), body["error"]["code"].as_str()),
                (409, Some("sale_restarted")),
                "{strategy}: {body}"
            );
            // Nothing was written in either sale: no order log was set aside.
            let mut redis = app.redis().await;
            let archived: Vec<String> = redis::cmd("KEYS")
                .arg(crate::helpers::keys(&item).order_logs_pattern())
                .query_async(&mut redis)
                .await
                .unwrap();
            assert!(archived.is_empty(), "{strategy}: {archived:?}");
            assert_eq!(
                view["strategies"][strategy]["sale_restarted"], 1,
                "{strategy}: counted: {view}"
            );
        }
    }
}

/// `sql` with a restock at two moments, its race window sleeping once
/// between the binding check and the transaction and once inside it:
/// - before the transaction, to a sale bound to `lua`: the purchase must not
///   sell the new sale's units (409 `sale_restarted`);
/// - inside the transaction: the restock waits for the row lock, the order
///   commits in the old sale and keeps its 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_during_an_sql_purchase_never_sells_into_the_new_sale() {
    let app = Arc::new(spawn_app_with(|c| c.lab.race_window_ms = 300).await);
    for (restock_after_ms, new_strategy, expected) in [(100, "lua", 409), (450, "sql", 201)] {
        let item = unique("sql-restocked");
        let restock = |stock: u64, strategy: &'static str| {
            app.put_item(&item, json!({"stock": stock, "strategy": strategy}))
        };
        assert!(restock(1_000, "sql").await.status().is_success());
        let held = {
            let (app, item) = (Arc::clone(&app), item.clone());
            tokio::spawn(async move { app.purchase(&item, "held", "sql").await })
        };
        tokio::time::sleep(Duration::from_millis(restock_after_ms)).await;
        assert_eq!(restock(5, new_strategy).await.status(), 200);
        let (status, body) = status_and_json(held.await.unwrap()).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "restock at {restock_after_ms} ms: {body}"
        );

        new_sale_untouched(&app, &item, "sql").await;
        let orders: Value = app.get_json(&format!("/api/orders?item={item}")).await;
        let orders = orders["orders"].as_array().unwrap();
        if expected == 201 {
            assert_eq!(orders.len(), 1, "{orders:?}");
            assert_eq!(orders[0]["generation"], 1, "in the old sale: {orders:?}");
        } else {
            assert_eq!(body["error"]["code"], "sale_restarted", "{body}");
            assert!(orders.is_empty(), "nothing in either sale: {orders:?}");
        }
    }
}

async fn worker_of_purchase(app: &TestApp, item: &str, user: &str) -> u16 {
    let (status, body) = status_and_json(app.purchase(item, user, "lua").await).await;
    assert_eq!(status, 201, "{body}");
    OrderId::parse(body["order_id"].as_str().unwrap())
        .unwrap()
        .parts()
        .worker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lease_only_free_worker_numbers_and_never_the_same() {
    let redis = crate::helpers::fresh_redis();
    hold_all_worker_numbers_but(&redis, &[300, 301]).await;
    let (a, b) = (
        spawn_app_on(&redis.url(), |_| {}).await,
        spawn_app_on(&redis.url(), |_| {}).await,
    );
    let item = unique("workers");
    a.create_item(&item, 2, 1).await;
    let workers: BTreeSet<u16> = [
        worker_of_purchase(&a, &item, "wa").await,
        worker_of_purchase(&b, &item, "wb").await,
    ]
    .into();
    assert_eq!(workers, BTreeSet::from([300, 301]));
}

#[tokio::test]
async fn a_second_instance_with_the_same_worker_id_refuses_to_start() {
    let redis = crate::helpers::fresh_redis();
    let first = spawn_app_on(&redis.url(), |c| c.lease.worker_id = Some(7)).await;
    let mut config = seckill::config::Config::defaults();
    config.orders.database_url = sqlite_url();
    config.orders.persister = false;
    config.lease.worker_id = Some(7);
    let refused = seckill::startup::App::build(&config, &single(&redis.url())).await;
    let err = format!(
        "{:#}",
        refused.err().expect("the second instance must not start")
    );
    assert!(err.contains("WORKER_ID 7"), "{err}");

    // Once the first stops cleanly the number is free again.
    first.stop().await;
    let again = seckill::startup::App::build(&config, &single(&redis.url())).await;
    assert!(again.is_ok(), "{:?}", again.err());
}

/// A private Redis where every worker number but 5 is held, and a lease
/// config on a manual clock that starts at the wall clock's now (`t0`).
struct OnlyFive {
    redis: RedisServer,
    conn: RedisConn,
    t0: u64,
    clock: Arc<ManualClock>,
    config: LeaseConfig,
}

async fn only_worker_five_free() -> OnlyFive {
    let redis = crate::helpers::fresh_redis();
    hold_all_worker_numbers_but(&redis, &[5]).await;
    let conn = single(&redis.url()).connect(TIMEOUTS).await.unwrap();
    let t0 = seckill::orders::snowflake::Clock::now_ms(&SystemClock);
    let clock = Arc::new(ManualClock::new(t0));
    let config = LeaseConfig {
        ttl: Duration::from_millis(300),
        fixed: None,
        clock: clock.clone(),
    };
    OnlyFive {
        redis,
        conn,
        t0,
        clock,
        config,
    }
}

/// Takes worker number 5 with a clock still before `horizon_ms`: the taker
/// must wait (`why` says what minting now would do), and resumes once the
/// clock is past the horizon plus the skew margin.
async fn take_five_past(
    conn: &RedisConn,
    clock: &ManualClock,
    config: &LeaseConfig,
    horizon_ms: u64,
    why: &str,
) -> WorkerLease {
    let taking = tokio::spawn(WorkerLease::acquire(conn.clone(), config.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!taking.is_finished(), "{why}");
    clock.set(horizon_ms + SKEW_MARGIN.as_millis() as u64 + 1);
    let lease = tokio::time::timeout(Duration::from_secs(5), taking)
        .await
        .expect("the taker resumes once its clock passes the horizon")
        .unwrap()
        .unwrap();
    assert_eq!(lease.worker(), 5);
    lease
}

/// A number taken over, by a process whose clock reads what the previous
/// holder's did (a restart after a clock step back): the new holder waits past
/// the number's horizon, so its ids never repeat the old holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_number_taken_over_mints_no_repeated_id() {
    let OnlyFive {
        redis: _redis,
        conn,
        t0,
        clock,
        config,
    } = only_worker_five_free().await;

    let old = WorkerLease::acquire(conn.clone(), config.clone())
        .await
        .unwrap();
    assert_eq!(old.worker(), 5, "forced: every other number is held");
    let minter = old.minter();
    let old_ids: HashSet<OrderId> = (0..100).map(|_| minter.next().unwrap()).collect();
    drop(old); // a crash: no release, the lease lapses by its TTL

    let mut probe = conn.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis::cmd("EXISTS")
        .arg(seckill::keys::worker_lease(5))
        .query_async::<bool>(&mut probe)
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "the abandoned lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The clock still reads t0: the newcomer must wait, not mint.
    let new = take_five_past(
        &conn,
        &clock,
        &config,
        t0 + 300,
        "minting before the horizon could repeat ids",
    )
    .await;
    let minter = new.minter();
    for _ in 0..100 {
        let id = minter.next().unwrap();
        assert!(!old_ids.contains(&id), "repeated id {id}");
    }
    new.release().await;
}

/// A lease taken away: the instance refuses purchases and reports not ready,
/// then leases another number as soon as one is free and resumes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_purchases_until_another_number_is_leased() {
    let redis = crate::helpers::fresh_redis();
    hold_all_worker_numbers_but(&redis, &[3]).await;
    let app = spawn_app_on(&redis.url(), |c| c.lease.worker_lease_ttl_ms = 300).await;
    let item = unique("lost");
    app.create_item(&item, 10, 1).await;
    assert_eq!(worker_of_purchase(&app, &item, "u0").await, 3);

    let mut conn = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(seckill::keys::worker_lease(3))
        .arg("thief")
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            assert_error(ready, 503, "unavailable").await;
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a lost lease must make /readyz 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_error(app.purchase(&item, "u1", "lua").await, 503, "unavailable").await;

    let _: () = redis::cmd("DEL")
        .arg(seckill::keys::worker_lease(9))
        .query_async(&mut conn)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "never leased the freed number");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(worker_of_purchase(&app, &item, "u2").await, 9);
}

/// An instance of an earlier version, beside this one on one Redis, cannot
/// read the one-field entry and keeps it as an unreadable dead letter (as
/// that version writes one: reason, stream, entry id, raw fields). This
/// version's persister stores such an order and takes it out of the dead
/// letters; a conflicting one and one that is no order stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_an_earlier_version_kept_as_unreadable_are_rescued_into_sql() {
    for database_url in crate::helpers::database_urls() {
        let (app, _redis) = spawn_persisting_app(&database_url, |c| {
            c.orders.persister_claim_idle_ms = 400;
        })
        .await;
        let item = unique("rescue");
        app.create_item(&item, 10, 1).await;
        let response = app.purchase(&item, "u1", "lua").await;
        assert_eq!(response.status(), 201);
        let bought: Value = response.json().await.unwrap();
        let keys = crate::helpers::keys(&item);
        let mut redis = app.redis().await;
        // In SQL first, so the conflict below is one with a stored order.
        app.wait_until_persisted(&item, Duration::from_secs(15))
            .await;
        // Ids of this run: a database kept between runs must not hold them.
        let fresh_id = || (rand::random::<u64>() >> 2).to_string();
        let (kept_id, lone_id) = (fresh_id(), fresh_id());
        let (batch_a, batch_b) = (fresh_id(), fresh_id());
        // An item that never had a log: its letters are looked at too.
        let lone = unique("rescue-lone");
        app.create_item(&lone, 10, 1).await;
        // As an earlier version keeps an entry it cannot read: the one
        // field an order was (`raw_order`), or a lua-batch entry's several
        // orders (`raw_orders`), which predates none of the versions that
        // read `order`.
        let letter_of = |log: &str, entry_id: &str, raw_field: &str, raw: String| {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(crate::helpers::keys(log).dead_letters())
                .arg("*")
                .arg(&[
                    ("reason", "unreadable: missing field `order_id`"),
                    ("stream", crate::helpers::keys(log).orders()),
                    ("entry_id", entry_id),
                    (raw_field, raw.as_str()),
                ]);
            xadd
        };
        let letter =
            |log: &str, entry_id: &str, raw: String| letter_of(log, entry_id, "raw_order", raw);
        // All at once, so no pass sees some of them only.
        let held = bought["order_id"].as_str().unwrap();
        let mut letters = redis::pipe();
        letters
            .atomic()
            .add_command(letter(
                &item,
                "1-1",
                format!("{kept_id} u2 lua 1764000000000 1"),
            ))
            // The id SQL holds, with another buyer: a conflict, it stays.
            .add_command(letter(
                &item,
                "1-2",
                format!("{held} u3 lua 1764000000000 1"),
            ))
            .add_command(letter(&item, "1-3", "not an order".to_owned()))
            .add_command(letter(
                &lone,
                "1-4",
                format!("{lone_id} u4 lua 1764000000000 1"),
            ))
            .add_command(letter_of(
                &item,
                "1-5",
                "raw_orders",
                format!(
                    "{batch_a} u5 lua-batch 1764000000000 1\n{batch_b} u6 lua-batch 1764000000000 1"
                ),
            ));
        let _: Vec<String> = letters.query_async(&mut redis).await.unwrap();
        app.persister_report_when(Duration::from_secs(15), "not rescued", |report| {
            report["rescued"] == 4 && report["conflicts"] == 1
        })
        .await;
        let orders: Value = app.get_json(&format!("/api/orders?item={item}")).await;
        let stored: BTreeMap<&str, &str> = orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["order_id"].as_str().unwrap(),
                    o["user_id"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            stored,
            BTreeMap::from([
                (held, "u1"),
                (kept_id.as_str(), "u2"),
                (batch_a.as_str(), "u5"),
                (batch_b.as_str(), "u6")
            ]),
            "{orders}"
        );
        let lone_orders: Value = app.get_json(&format!("/api/orders?item={lone}")).await;
        assert_eq!(
            lone_orders["orders"][0]["order_id"],
            lone_id.as_str(),
            "{lone_orders}"
        );
        let left: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
            .arg(keys.dead_letters())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        let left: BTreeSet<&str> = left.iter().map(|(_, f)| f["entry_id"].as_str()).collect();
        assert_eq!(left, BTreeSet::from(["1-2", "1-3"]));
    }
}

/// Dead letters the rescue cannot read (here: the key holds no stream) may
/// hold stuck orders: the persister's report counts the failure and names
/// it, apart from the step's own errors, and new orders still reach SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescue_that_cannot_read_the_dead_letters_shows_in_the_persister_report() {
    let (app, _redis) = spawn_persisting_app(&crate::helpers::sqlite_url(), |c| {
        c.orders.persister_claim_idle_ms = 400;
    })
    .await;
    let item = unique("rescue-bad");
    app.create_item(&item, 10, 1).await;
    let keys = crate::helpers::keys(&item);
    let mut redis = app.redis().await;
    let _: () = redis::cmd("SET")
        .arg(keys.dead_letters())
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .unwrap();
    app.persister_report_when(Duration::from_secs(15), "not reported", |report| {
        let named = report["last_rescue_error"]
            .as_str()
            .is_some_and(|e| e.contains(&item) && e.contains("dead letters"));
        report["rescue_errors"].as_u64() >= Some(1) && named
    })
    .await;
    assert_eq!(app.purchase(&item, "u1", "lua").await.status(), 201);
    app.wait_until_persisted(&item, Duration::from_secs(15))
        .await;
    let report: Value = app.get_json("/api/persister").await;
    assert_eq!(report["errors"], 0, "the step's own errors: {report}");
}

/// Two different orders under one id reach the persister (two processes that
/// minted with one worker number): the second is not acknowledged away but
/// counted and kept in the item's dead-letter stream. A redelivered identical
/// entry is no conflict. On every database backend under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_order_id_goes_to_the_dead_letter_stream_and_is_counted() {
    for database_url in crate::helpers::database_urls() {
        // Two orders a transaction: the batch entry below is stored in two,
        // its second conflict in the second.
        let (app, _redis) =
            spawn_persisting_app(&database_url, |c| c.orders.persister_batch = 2).await;
        let item = unique("conflict");
        app.create_item(&item, 10, 1).await;
        let mut redis = app.redis().await;
        let id = "123456789012345";
        // The first in the five-field shape entries had before the packed
        // one (a log an earlier version wrote): its redelivery in the
        // packed shape is the same order, no conflict.
        let _: String = redis::cmd("XADD")
            .arg(crate::helpers::keys(&item).orders())
            .arg("*")
            .arg(&[
                (legacy::ORDER_ID, id),
                (legacy::USER_ID, "first"),
                (legacy::STRATEGY, "lua"),
                (legacy::CREATED_MS, "1764000000000"),
                (legacy::GENERATION, "1"),
            ])
            .query_async(&mut redis)
            .await
            .unwrap();
        for user in ["first", "second"] {
            let _: String = redis::cmd("XADD")
                .arg(crate::helpers::keys(&item).orders())
                .arg("*")
                .arg(order_log::ORDER)
                .arg(format!("{id} {user} lua 1764000000000 1"))
                .query_async(&mut redis)
                .await
                .unwrap();
        }
        // A lua-batch entry of three orders: a new one, stored, and two more
        // under the held id (two conflicts, two letters of one entry).
        let new_id = (rand::random::<u64>() >> 2).to_string();
        let batch_entry: String = redis::cmd("XADD")
            .arg(crate::helpers::keys(&item).orders())
            .arg("*")
            .arg(order_log::ORDERS)
            .arg(format!(
                "{new_id} fifth lua-batch 1764000000000 1\n{id} third lua-batch 1764000000000 1\n{id} fourth lua-batch 1764000000000 1"
            ))
            .query_async(&mut redis)
            .await
            .unwrap();
        // And an entry that is no order at all.
        let _: String = redis::cmd("XADD")
            .arg(crate::helpers::keys(&item).orders())
            .arg("*")
            .arg(&[(order_log::ORDER, "not-a-number u lua 1764000000000 1")])
            .query_async(&mut redis)
            .await
            .unwrap();
        let report = app
            .persister_report_when(Duration::from_secs(15), "conflict not handled", |report| {
                report["conflicts"] == 3 && report["persisted"] == 2 && report["unreadable"] == 1
            })
            .await;
        assert_eq!(report["conflicts"], 3, "{report}");

        let dead: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
            .arg(crate::helpers::keys(&item).dead_letters())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(dead.len(), 4, "{dead:?}");
        let batch_letters: BTreeSet<&str> = dead
            .iter()
            .filter(|(_, f)| f["entry_id"] == batch_entry)
            .map(|(_, f)| f["user_id"].as_str())
            .collect();
        assert_eq!(
            batch_letters,
            BTreeSet::from(["third", "fourth"]),
            "{dead:?}"
        );
        let fields = &dead
            .iter()
            .find(|(_, f)| f["reason"].contains("different order"))
            .unwrap()
            .1;
        assert_eq!(
            (
                fields["order_id"].as_str(),
                fields["user_id"].as_str(),
                fields["sql_user_id"].as_str()
            ),
            (id, "second", "first"),
            "{fields:?}"
        );
        let orders: Value = app.get_json(&format!("/api/orders?item={item}")).await;
        let users: BTreeSet<&str> = orders["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(users, BTreeSet::from(["first", "fifth"]), "{orders}");
        let metrics = app.metrics_text().await;
        assert!(
            metrics.contains("seckill_persister_conflicts 3"),
            "{metrics}"
        );
        assert!(
            metrics.contains("seckill_persister_unreadable 1"),
            "{metrics}"
        );
        let unreadable = &dead
            .iter()
            .find(|(_, f)| f["reason"].starts_with("unreadable"))
            .unwrap()
            .1;
        assert_eq!(
            unreadable["raw_order"], "not-a-number u lua 1764000000000 1",
            "{unreadable:?}"
        );
        // Nothing left pending: every entry is accounted for.
        let pending: (u64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(crate::helpers::keys(&item).orders())
            .arg("persister")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(pending.0, 0);
        // sold counts the log's five entries (the hand-made batch entry
        // raised no extra_orders), SQL holds two: the view says so.
        let view = app.item(&item).await;
        assert_eq!(view["lag"], 3, "{view}");
    }
}

/// Binding an unbound sale writes the meta hash `optimistic` watches; the
/// buyer that bound it must not be aborted by its own binding.
#[tokio::test]
async fn binding_a_sale_does_not_abort_the_optimistic_buyer_that_binds_it() {
    let app = spawn_app_with(|c| c.locks.optimistic_max_retries = 0).await;
    for strategy in ["optimistic", "optimistic-gated"] {
        let item = unique("bind-optimistic");
        app.create_item(&item, 5, 1).await;
        let (status, body) = status_and_json(app.purchase(&item, "first", strategy).await).await;
        assert_eq!(status, 201, "{strategy}: {body}");
        let view = app.item(&item).await;
        assert_eq!(view["strategies"][strategy]["retries"], 0, "{view}");
        assert_eq!(
            view["strategy"], strategy,
            "the purchase bound the sale: {view}"
        );
    }
}

/// Redis loses the lease and the horizon (a Redis without persistence,
/// restarted) while the clock stands still: the instance leases again, but
/// mints only once its clock is a TTL plus the skew margin past the take
/// (another holder of the number, whose keys went too, may mint until
/// then), and its new generator still issues nothing it issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_retaken_after_redis_forgot_it_repeats_no_id() {
    let redis = crate::helpers::fresh_redis();
    let conn = single(&redis.url()).connect(TIMEOUTS).await.unwrap();
    let t0 = seckill::orders::snowflake::Clock::now_ms(&SystemClock);
    let clock = Arc::new(ManualClock::new(t0));
    let lease = WorkerLease::acquire(
        conn.clone(),
        LeaseConfig {
            ttl: Duration::from_millis(300),
            fixed: None,
            clock: clock.clone(),
        },
    )
    .await
    .unwrap();
    let minter = lease.minter();
    let before: HashSet<OrderId> = (0..50).map(|_| minter.next().unwrap()).collect();

    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(id) = minter.next() {
        assert!(
            !before.contains(&id),
            "repeated id {id} after Redis forgot the lease"
        );
    }
    // Leased again at t0 (the renewal after the flush found the lease gone):
    // not usable before t0 + TTL + margin.
    clock.set(t0 + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !minter.is_ready(),
        "a number whose horizon was lost is used before any earlier holder must have stopped"
    );
    clock.set(t0 + 300 + SKEW_MARGIN.as_millis() as u64 + 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !minter.is_ready() {
        assert!(Instant::now() < deadline, "never leased again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        let id = minter.next().unwrap();
        assert!(!before.contains(&id), "repeated id {id}");
    }
    lease.release().await;
}

/// A number whose horizon key is missing (lost with Redis's data, perhaps
/// under a holder that still mints) is used only once the clock is a lease
/// TTL plus the skew margin past the take: by then any earlier holder has
/// stopped. A Redis seeded as fresh (the harness's) costs no wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_without_a_horizon_waits_a_ttl_and_the_margin_unless_seeded_fresh() {
    let OnlyFive {
        redis: _redis,
        conn,
        t0,
        clock,
        config,
    } = only_worker_five_free().await;
    // The taker's wait gives up after the TTL plus twice the skew margin of
    // real time (lease::max_wait): with 300 ms (2.3 s in all) the half
    // second of sleeps below once overran it under the whole suite on two
    // cores, the clock not yet set.
    let config = LeaseConfig {
        ttl: Duration::from_millis(2_000),
        ..config
    };
    // Seeded: taken at once, though the clock stands still.
    let seeded = tokio::time::timeout(
        Duration::from_secs(1),
        WorkerLease::acquire(conn.clone(), config.clone()),
    )
    .await
    .expect("a number of a seeded fresh Redis is taken without a wait")
    .unwrap();
    assert_eq!(seeded.worker(), 5);
    seeded.release().await;

    let mut probe = conn.clone();
    let _: () = redis::cmd("DEL")
        .arg(seckill::keys::worker_lease(5))
        .arg(seckill::keys::worker_horizon(5))
        .arg(seckill::keys::legacy_worker_horizon(5))
        .query_async(&mut probe)
        .await
        .unwrap();
    let taking = tokio::spawn(WorkerLease::acquire(conn.clone(), config.clone()));
    let floor = t0 + config.ttl.as_millis() as u64 + SKEW_MARGIN.as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !taking.is_finished(),
        "minted with a number of unknown past"
    );
    clock.set(floor);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !taking.is_finished(),
        "the wait must last the whole TTL plus the skew margin"
    );
    clock.set(floor + 1);
    let lease = tokio::time::timeout(Duration::from_secs(5), taking)
        .await
        .expect("the taker resumes once its clock passes TTL + margin")
        .unwrap()
        .unwrap();
    let minted = lease.minter().next().unwrap().parts().unix_ms;
    assert!(minted > floor, "minted at {minted}, before {floor}");
    lease.release().await;
}

/// During an upgrade, a number's last holder may have been an older version,
/// which kept the horizon under the older key: the new taker waits past that
/// one too, and raises it in turn for an older taker after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_versions_horizon_is_honoured_and_kept_up() {
    let OnlyFive {
        redis: _redis,
        conn,
        t0,
        clock,
        config,
    } = only_worker_five_free().await;
    let legacy = seckill::keys::legacy_worker_horizon(5);
    let mut probe = conn.clone();
    let _: () = redis::cmd("SET")
        .arg(&legacy)
        .arg(t0 + 300)
        .query_async(&mut probe)
        .await
        .unwrap();

    let lease = take_five_past(
        &conn,
        &clock,
        &config,
        t0 + 300,
        "minting before the older version's horizon could repeat its ids",
    )
    .await;
    let minted = lease.minter().next().unwrap().parts().unix_ms;
    lease.release().await;
    let kept: u64 = redis::cmd("GET")
        .arg(&legacy)
        .query_async(&mut probe)
        .await
        .unwrap();
    assert!(
        kept >= minted,
        "older horizon {kept} below our id's {minted}"
    );
}
