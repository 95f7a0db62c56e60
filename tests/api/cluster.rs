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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            return redis;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster never came up: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        c.database_url = database;
        c.persister = true;
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
            let orders: serde_json::Value = app
                .get_json(&format!("/api/orders?item={item}&limit=100"))
                .await;
            let stored = orders["orders"].as_array().map_or(0, Vec::len);
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
    CLUSTER.get_or_init(|| {
        RedisCluster::start(RedisClusterOptions::default())
            .expect("tests need redis-server and redis-cli on PATH")
    })
}

fn cluster_target(cluster: &RedisCluster) -> RedisTarget {
    RedisTarget::Cluster(cluster.urls())
}

/// `count` fresh item ids, each served by another master.
fn items_on_distinct_masters(cluster: &RedisCluster, prefix: &str, count: usize) -> Vec<String> {
    let mut by_master = BTreeMap::new();
    while by_master.len() < count {
        let item = unique(prefix);
        let master = cluster.master_of(&keys(&item).stock, None).unwrap();
        by_master.entry(master).or_insert(item);
    }
    by_master.into_values().collect()
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
            c.database_url = database;
            c.persister = true;
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
            let orders: serde_json::Value = app
                .get_json(&format!("/api/orders?item={item}&limit=100"))
                .await;
            let stored = orders["orders"].as_array().map_or(0, Vec::len);
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
                .arg(keys(item).archives)
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

/// Instances on one cluster take distinct snowflake worker numbers, and
/// give them back at their stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_lease_distinct_worker_numbers_on_the_cluster() {
    let cluster = shared_cluster();
    let mut apps = Vec::new();
    let mut workers = BTreeSet::new();
    for _ in 0..3 {
        let app = spawn_app_at(&cluster_target(cluster), |_| {}).await;
        let ready: serde_json::Value = app.get_json("/readyz").await;
        assert!(
            workers.insert(ready["worker"].as_u64().unwrap()),
            "{workers:?} {ready}"
        );
        apps.push(app);
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
