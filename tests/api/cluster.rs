//! The service on a Redis Cluster.
//!
//! A one-node cluster (every slot on one node) answers like a plain Redis,
//! except that it refuses with CROSSSLOT any command, script or `MULTI`
//! transaction whose keys live in two slots. Running the service on one,
//! through a single-Redis connection, with every strategy, restocks with
//! their archived logs, Idempotency-Keys, listings, the worker lease (taken
//! and, at the stop, released) and the persister (reading and draining),
//! shows that none of those sends such a command.
//!
//! A 3-master, 3-replica cluster, through `REDIS_CLUSTER_URLS`' cluster
//! client, shows the rest: pipelines split by slot (the client refuses one
//! that spans two), items on different masters, `WATCH` on the right
//! master, and worker leases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use seckill::infra::redis_cluster::{RedisCluster, RedisClusterOptions};
use seckill::infra::redis_conn::RedisTarget;
use seckill::infra::redis_server::{RedisServer, RedisServerOptions};
use serde_json::json;
use tokio::task::JoinSet;

use crate::helpers::{
    TIMEOUTS, TestApp, all_strategies, database_urls, keys, spawn_app_at, spawn_app_on, unique,
};

/// A Redis Cluster of one node that owns all 16384 slots.
async fn one_node_cluster() -> RedisServer {
    let redis = RedisServer::start(RedisServerOptions {
        cluster: true,
        ..RedisServerOptions::default()
    })
    .unwrap();
    let mut conn = crate::helpers::connect(&redis.url()).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut info = redis::cmd("CLUSTER");
    info.arg("INFO");
    crate::helpers::await_reply(
        &mut conn,
        &info,
        "cluster_state:ok",
        Duration::from_secs(10),
    )
    .await;
    crate::helpers::seed_fresh(RedisTarget::Cluster(vec![redis.url()]));
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_command_of_the_service_spans_two_slots() {
    let redis = one_node_cluster().await;
    let mut conn = crate::helpers::connect(&redis.url()).await;
    // The harness is a real cluster: two items' keys in one command fail.
    let crossed = redis::cmd("MGET")
        .arg("{a}:x")
        .arg("{b}:y")
        .query_async::<Vec<Option<String>>>(&mut conn)
        .await
        .unwrap_err();
    assert_eq!(crossed.code(), Some("CROSSSLOT"), "{crossed}");

    let database = database_urls().remove(0);
    let app = spawn_app_on(&redis.url(), |c| {
        c.orders.database_url = database;
        c.orders.persister = true;
    })
    .await;
    let mut items = Vec::new();
    for strategy in all_strategies() {
        let item = unique(&format!("slot-{strategy}"));
        let created = app
            .put_item(&item, json!({"stock": 3, "strategy": strategy}))
            .await;
        assert_eq!(created.status(), 201, "{strategy}");
        for user in ["a", "b", "c"] {
            let bought = app.purchase(&item, user, strategy).await;
            assert_eq!(
                bought.status(),
                201,
                "{strategy}: {}",
                bought.text().await.unwrap()
            );
        }
        let refused = app.purchase(&item, "d", strategy).await;
        assert_eq!(refused.status(), 409, "{strategy}");
        // A restock sets the sale's log aside for the persister.
        let restocked = app
            .put_item(&item, json!({"stock": 2, "strategy": strategy}))
            .await;
        assert_eq!(restocked.status(), 200, "{strategy}");
        let once = app
            .client
            .post(app.url(&format!("/api/items/{item}/purchase")))
            .header("Idempotency-Key", format!("key-{strategy}"))
            .json(&json!({"user_id": "e", "strategy": strategy}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            once.status(),
            201,
            "{strategy}: {}",
            once.text().await.unwrap()
        );
        items.push(item);
    }
    for path in [
        "/api/items",
        "/metrics",
        "/readyz",
        "/api/stats",
        "/api/persister",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            response.status(),
            200,
            "{path}: {}",
            response.text().await.unwrap()
        );
    }
    // Every order of both sales of every item reaches SQL, the first sale's
    // through its archived log.
    let deadline = Instant::now() + Duration::from_secs(30);
    for item in &items {
        loop {
            let view = app.item(item).await;
            let stored = stored_order_ids(&app, item).await.len();
            if view["lag"] == 0 && view["persisted"] == 1 && stored == 4 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{item} never persisted: {view}, {stored} orders in SQL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The stop releases the worker number and drains the persister.
    app.stop().await;
    let mut conn = crate::helpers::connect(&redis.url()).await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("seckill:worker:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        leases.iter().all(|key| key.ends_with(":horizon")),
        "the lease was not released: {leases:?}"
    );
}

/// The 3-master, 3-replica cluster shared by the tests that leave it whole.
/// Never dropped: its nodes die with the test process (PDEATHSIG).
fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| crate::helpers::fresh_cluster(RedisClusterOptions::default()))
}

fn cluster_target(cluster: &RedisCluster) -> RedisTarget {
    RedisTarget::Cluster(cluster.urls())
}

/// `count` fresh item ids, each served by another master.
fn items_on_distinct_masters(cluster: &RedisCluster, prefix: &str, count: usize) -> Vec<String> {
    let mut by_master = BTreeMap::new();
    while by_master.len() < count {
        let item = unique(prefix);
        by_master.entry(master_of(cluster, &item)).or_insert(item);
    }
    by_master.into_values().collect()
}

/// A fresh item id with `prefix` whose master's port `wanted` accepts.
fn item_on(cluster: &RedisCluster, prefix: &str, wanted: impl Fn(u16) -> bool) -> String {
    loop {
        let item = unique(prefix);
        if wanted(master_of(cluster, &item)) {
            return item;
        }
    }
}

/// The port of the master that serves `item`'s keys.
fn master_of(cluster: &RedisCluster, item: &str) -> u16 {
    cluster.master_of(keys(item).stock(), None).unwrap()
}

/// `buyers` distinct users buy one unit each of `item`, all at once: the
/// number of answers per status.
async fn rush(
    app: &Arc<TestApp>,
    item: &str,
    strategy: &str,
    buyers: usize,
) -> BTreeMap<u16, usize> {
    let mut tasks = JoinSet::new();
    for n in 0..buyers {
        let (app, item, strategy) = (Arc::clone(app), item.to_owned(), strategy.to_owned());
        tasks.spawn(async move {
            app.purchase(&item, &format!("u{n}"), &strategy)
                .await
                .status()
                .as_u16()
        });
    }
    let mut statuses = BTreeMap::new();
    while let Some(status) = tasks.join_next().await {
        *statuses.entry(status.unwrap()).or_default() += 1;
    }
    statuses
}

/// Every strategy on a real cluster, three items at once on three masters:
/// each guarded strategy sells every item exactly, and every order reaches
/// SQL. `naive` runs too (it works on a cluster; it is not exact anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_on_three_masters_sell_exactly_under_every_strategy() {
    let cluster = shared_cluster();
    let database = database_urls().remove(0);
    let app = Arc::new(
        spawn_app_at(&cluster_target(cluster), |c| {
            c.orders.database_url = database;
            c.orders.persister = true;
        })
        .await,
    );
    const STOCK: u64 = 10;
    let mut sold = Vec::new();
    for strategy in all_strategies() {
        let items = items_on_distinct_masters(cluster, &format!("cl-{strategy}"), 3);
        let mut rushes = JoinSet::new();
        for item in &items {
            let created = app
                .put_item(item, json!({"stock": STOCK, "per_user_limit": 1}))
                .await;
            assert_eq!(created.status(), 201, "{strategy} {item}");
            let (app, item, strategy) = (Arc::clone(&app), item.clone(), strategy.to_owned());
            rushes.spawn(async move { (rush(&app, &item, &strategy, 30).await, item) });
        }
        while let Some(rushed) = rushes.join_next().await {
            let (statuses, item) = rushed.unwrap();
            let view = app.item(&item).await;
            assert_eq!(
                statuses.keys().filter(|s| ![201, 409].contains(*s)).count(),
                0,
                "{strategy} {item}: {statuses:?}"
            );
            if strategy == "naive" {
                continue;
            }
            assert_eq!(
                statuses.get(&201),
                Some(&(STOCK as usize)),
                "{strategy} {item}: {statuses:?}"
            );
            assert_eq!(view["sold"], STOCK, "{strategy} {item}: {view}");
            assert_eq!(view["stock"], 0, "{strategy} {item}: {view}");
            assert_eq!(view["oversold"], 0, "{strategy} {item}: {view}");
            assert_eq!(view["drift"], 0, "{strategy} {item}: {view}");
            sold.push((item, statuses[&201]));
        }
    }
    // Every 201 reaches SQL: the persister reads each master's logs.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (item, count) in &sold {
        loop {
            let stored = stored_order_ids(&app, item).await.len();
            if stored == *count && app.item(item).await["lag"] == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{item}: {stored} of {count} orders in SQL"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A restock sets each sale's log aside; the persister finds the archive
    // in its item's slot, and forgets it once it is all in SQL.
    let mut redis = cluster_target(cluster).connect(TIMEOUTS).await.unwrap();
    for (item, _) in &sold {
        let restocked = app.put_item(item, json!({"stock": 1})).await;
        assert_eq!(restocked.status(), 200, "{item}");
    }
    for (item, _) in &sold {
        loop {
            let archives: Vec<String> = redis::cmd("SMEMBERS")
                .arg(keys(item).archives())
                .query_async(&mut redis)
                .await
                .unwrap();
            if archives.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{item}: archives left {archives:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Arc::into_inner(app).unwrap().stop().await;
}

/// Instances on one cluster take distinct snowflake worker numbers, share
/// the persisting (every order in SQL, inserted once), and give their
/// numbers back at their stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lease_distinct_worker_numbers_on_the_cluster() {
    let cluster = shared_cluster();
    let database = database_urls().remove(0);
    let mut apps = Vec::new();
    let mut workers = BTreeSet::new();
    for _ in 0..3 {
        let database = database.clone();
        let app = spawn_app_at(&cluster_target(cluster), |c| {
            c.orders.database_url = database;
            c.orders.persister = true;
        })
        .await;
        let ready: serde_json::Value = app.get_json("/readyz").await;
        assert!(
            workers.insert(ready["worker"].as_u64().unwrap()),
            "{workers:?} {ready}"
        );
        apps.push(app);
    }
    // Each instance sells on items of three masters.
    let items = items_on_distinct_masters(cluster, "shared", 3);
    for item in &items {
        let created = apps[0].put_item(item, json!({"stock": 100})).await;
        assert_eq!(created.status(), 201, "{item}");
        for (n, app) in apps.iter().enumerate() {
            for user in 0..5 {
                let bought = app.purchase(item, &format!("a{n}-u{user}"), "lua").await;
                assert_eq!(bought.status(), 201, "{item}");
            }
        }
    }
    // Every order in SQL, and the instances' insert counts add up to
    // exactly that: none inserted twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stored = 0;
        for item in &items {
            stored += stored_order_ids(&apps[0], item).await.len();
        }
        let mut inserted = 0;
        for app in &apps {
            let report: serde_json::Value = app.get_json("/api/persister").await;
            inserted += report["persisted"].as_u64().unwrap();
        }
        assert!(inserted <= 45, "{inserted} inserts for 45 orders");
        if stored == 45 && inserted == 45 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} of 45 orders in SQL, {inserted} inserted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let redis = cluster_target(cluster).connect(TIMEOUTS).await.unwrap();
    let holder = |worker: u64| {
        let mut redis = redis.clone();
        async move {
            redis::cmd("GET")
                .arg(seckill::keys::worker_lease(worker as u16))
                .query_async::<Option<String>>(&mut redis)
                .await
                .unwrap()
        }
    };
    for worker in &workers {
        assert!(
            holder(*worker).await.is_some(),
            "worker {worker} holds no lease"
        );
    }
    for app in apps {
        app.stop().await;
    }
    for worker in &workers {
        assert!(
            holder(*worker).await.is_none(),
            "worker {worker} was not released"
        );
    }
}

/// A master killed with SIGKILL in the middle of a sale, with
/// `REDIS_WAIT_REPLICAS=1`: its replica takes over, purchases of its items
/// resume (503 `unavailable` while it switches, then `unconfirmed` while it
/// has no replica, then 201 once the killed node rejoins as its replica).
/// Every 201's order reaches SQL, no order is logged twice, the stock
/// counter agrees with the log. An item on another master sells on
/// throughout. (Loopback replication is so fast that a kill rarely catches
/// an unreplicated write: `replicas.rs` holds the `WAIT` itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_sale_loses_no_confirmed_order() {
    let mut cluster = crate::helpers::fresh_cluster(RedisClusterOptions::default());
    // Start-up refuses a cluster where any master may evict keys, not
    // only the one it happens to ask.
    let mut config = seckill::config::Config::defaults();
    config.orders.database_url = crate::helpers::sqlite_url();
    let masters: Vec<u16> = cluster
        .ports()
        .into_iter()
        .filter(|port| cluster.cli(*port, &["ROLE"]).unwrap().starts_with("master"))
        .collect();
    assert_eq!(masters.len(), 3);
    for master in masters {
        let policy = |value: &str| {
            cluster
                .cli(master, &["CONFIG", "SET", "maxmemory-policy", value])
                .unwrap();
        };
        policy("allkeys-lru");
        let refused = seckill::startup::App::build(&config, &cluster_target(&cluster)).await;
        policy("noeviction");
        let err = refused.err().expect("an evicting master is refused");
        assert!(format!("{err:#}").contains("allkeys-lru"), "{err:#}");
    }
    let database = database_urls().remove(0);
    let app = Arc::new(
        spawn_app_at(&cluster_target(&cluster), |c| {
            c.orders.database_url = database;
            c.orders.persister = true;
            c.orders.persister_claim_idle_ms = 1_000;
            c.redis.redis_wait_replicas = 1;
            c.redis.redis_wait_timeout_ms = 200;
        })
        .await,
    );
    const STOCK: u64 = 100_000;
    // Items on one master (the victim), one per strategy, and one elsewhere.
    let victim = master_of(&cluster, &unique("v"));
    let mut items = Vec::new();
    for strategy in ["lua", "lua-batch", "optimistic", "lock"] {
        let item = item_on(&cluster, &format!("fo-{strategy}"), |m| m == victim);
        items.push((item, strategy));
    }
    let control = item_on(&cluster, "fo-control", |m| m != victim);
    items.push((control, "lua"));
    // And one on the victim small enough to sell out around the failover:
    // it must not sell a unit more than it has.
    const EXACT: u64 = 1_500;
    let exact = item_on(&cluster, "fo-exact", |m| m == victim);
    items.push((exact.clone(), "lua"));
    let stock_of = |item: &str| if item == exact { EXACT } else { STOCK };
    for (item, strategy) in &items {
        let created = app
            .put_item(item, json!({"stock": stock_of(item), "strategy": strategy}))
            .await;
        assert_eq!(created.status(), 201, "{item}");
    }

    // Buyers: each item gets two loops of fresh users until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut buyers = JoinSet::new();
    for (item, strategy) in items.iter().cloned() {
        for lane in 0..2 {
            let (app, stop, item) = (Arc::clone(&app), Arc::clone(&stop), item.clone());
            buyers.spawn(async move {
                let mut answers: Vec<(u16, Option<String>)> = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let response = app.purchase(&item, &format!("u{lane}-{n}"), strategy).await;
                    let status = response.status().as_u16();
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    let id = body["order_id"].as_str().map(str::to_owned);
                    answers.push((status, id));
                }
                (item, answers)
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.node_mut(victim).unwrap().kill();
    // The replica takes over: the items' views answer again. Its purchases
    // are taken but answered `unconfirmed` while it has no replica.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (item, _) in &items {
        loop {
            let view = app.item_response(item).await;
            if view.status() == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "{item} never came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The dead node comes back as the new master's replica: 201s again,
    // for each item (but the one that may have sold out).
    cluster.restart(victim).unwrap();
    let mut probes: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (item, strategy) in items.iter().filter(|(item, _)| *item != exact) {
        for n in 0.. {
            let response = app.purchase(item, &format!("probe-{n}"), strategy).await;
            if response.status() == 201 {
                let body: serde_json::Value = response.json().await.unwrap();
                probes.insert(item.clone(), body["order_id"].as_str().unwrap().to_owned());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{item}: no 201 after the node rejoined"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut confirmed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (item, id) in probes {
        confirmed.entry(item).or_default().push(id);
    }
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    while let Some(lane) = buyers.join_next().await {
        let (item, answers) = lane.unwrap();
        for (status, id) in answers {
            *statuses.entry(status).or_default() += 1;
            let sold_out = item == exact && status == 409;
            assert!([201, 503].contains(&status) || sold_out, "{item}: {status}");
            if status == 201 {
                confirmed.entry(item.clone()).or_default().push(id.unwrap());
            }
        }
    }
    // While the victim's slots had no replica, their purchases were taken
    // and answered `unconfirmed`, counted.
    for (item, _) in &items[..4] {
        let view = app.item(item).await;
        assert!(view["unconfirmed"].as_u64().unwrap() > 0, "{item}: {view}");
    }
    // Every 201 is in SQL, once the persister has caught up on the new master.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (item, ids) in &confirmed {
        let wanted: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(
            wanted.len(),
            ids.len(),
            "{item}: an order id answered twice"
        );
        assert!(
            ids.len() as u64 <= stock_of(item),
            "{item}: {} 201s",
            ids.len()
        );
        loop {
            let stored = stored_order_ids(&app, item).await;
            let missing: Vec<_> = wanted.iter().filter(|id| !stored.contains(**id)).collect();
            let view = app.item(item).await;
            assert_eq!(view["oversold"], 0, "{item}: {view}");
            assert!(
                view["sold"].as_u64().unwrap() <= stock_of(item),
                "{item}: {view}"
            );
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{item}: {} of {} confirmed orders never reached SQL, e.g. {:?}; {view}",
                missing.len(),
                wanted.len(),
                &missing[..missing.len().min(3)]
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Nothing ran twice: each order id once in its log, the stock counter
    // and the log agree, and SQL holds exactly the log.
    let mut redis = cluster_target(&cluster).connect(TIMEOUTS).await.unwrap();
    for (item, _) in &items {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(keys(item).orders())
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        // Every order of every entry (a lua-batch entry holds several).
        let logged: Vec<&str> = entries
            .iter()
            .flat_map(|(_, fields)| seckill::orders::order_log::ids_and_buyers(fields))
            .map(|(id, _)| id)
            .collect();
        let ids: BTreeSet<&str> = logged.iter().copied().collect();
        assert_eq!(ids.len(), logged.len(), "{item}: an order logged twice");
        let view = app.item(item).await;
        assert_eq!(view["drift"], 0, "{item}: {view}");
        assert_eq!(view["sold"], logged.len(), "{item}: {view}");
        app.wait_until_persisted(item, Duration::from_secs(30))
            .await;
    }
    Arc::into_inner(app).unwrap().stop().await;
}

/// Every order id SQL holds for `item`, page by page.
async fn stored_order_ids(app: &TestApp, item: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut after = String::new();
    loop {
        let page: serde_json::Value = app
            .get_json(&format!(
                "/api/orders?item={item}&limit=500&order=asc{after}"
            ))
            .await;
        for order in page["orders"].as_array().unwrap() {
            ids.insert(order["order_id"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => return ids,
        }
    }
}
