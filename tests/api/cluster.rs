//! Redis Cluster readiness. A one-node cluster (every slot on one node)
//! answers like a plain Redis, except that it refuses with CROSSSLOT any
//! command, script or `MULTI` transaction whose keys live in two slots.
//! Running the service on one, through every strategy, restocks with their
//! archived logs, Idempotency-Keys, listings, the worker lease (taken and, at
//! the stop, released) and the persister (reading and draining), shows that
//! none of those sends such a command. What it cannot show: pipelines whose
//! commands sit in different slots (the server takes them one by one; a
//! cluster client must split them by node), and `MOVED` redirections.

use std::time::{Duration, Instant};

use seckill::infra::redis_server::{RedisServer, RedisServerOptions};
use serde_json::json;

use crate::helpers::{all_strategies, database_urls, spawn_app_on, unique};

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
