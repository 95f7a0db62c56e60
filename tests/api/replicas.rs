//! `REDIS_WAIT_REPLICAS`: a purchase answers 201 only once its replicas
//! hold its write. The attack: a replica that stays connected but stops
//! acknowledging (SIGSTOP), after everything written before it was
//! replicated. `WAIT` counts the writes of the connection it is asked on, so
//! asked on a connection that wrote nothing it answers at once that the
//! replica has everything: the service writes a marker on that connection
//! first, and this test fails without it.

use std::time::Duration;

use seckill::infra::redis_server::RedisServer;
use seckill::strategy::Decides;
use serde_json::Value;

use crate::helpers::{
    TestApp, assert_error, connect, keys, spawn_app_on, status_and_json, strategies_where, unique,
};

/// A master with one replica in sync.
struct Replicated {
    master: RedisServer,
    replica: RedisServer,
}

async fn master_with_replica() -> Replicated {
    let master = crate::helpers::fresh_redis();
    let replica = crate::helpers::fresh_redis();
    let mut conn = connect(&replica.url()).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port())
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut info = redis::cmd("INFO");
    info.arg("replication");
    crate::helpers::await_reply(
        &mut conn,
        &info,
        "master_link_status:up",
        Duration::from_secs(30),
    )
    .await;
    Replicated { master, replica }
}

impl Replicated {
    /// Returns once the replica holds everything written to the master so
    /// far, by any connection (replication keeps the master's order).
    async fn caught_up(&self) {
        let mut conn = connect(&self.master.url()).await;
        let _: () = redis::cmd("SET")
            .arg("probe")
            .arg(unique("p"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let acked: u32 = redis::cmd("WAIT")
            .arg(1)
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(acked, 1, "the replica did not catch up");
    }

    async fn app(&self) -> TestApp {
        spawn_app_on(&self.master.url(), |c| {
            c.redis.redis_wait_replicas = 1;
            // Long enough for a replica just thawed on a loaded machine.
            c.redis.redis_wait_timeout_ms = 400;
        })
        .await
    }
}

/// Every strategy whose orders live in Redis: with the replica frozen, a
/// purchase is taken (its order is in the log, with the id the 503 names),
/// answered 503 `unconfirmed` and counted; a repeat of its
/// Idempotency-Key learns the order stands; with the replica back, buyers
/// get their 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_its_replica_does_not_confirm_is_answered_unconfirmed_with_its_order() {
    let redis = master_with_replica().await;
    let app = redis.app().await;
    let mut master = connect(&redis.master.url()).await;
    for strategy in strategies_where(|k| k.decides() != Decides::InSql) {
        let item = unique(&format!("wait-{strategy}"));
        app.create_item(&item, 5, 1).await;
        redis.caught_up().await;
        redis.replica.pause();
        let refused = app.purchase(&item, "a", strategy).await;
        let body = assert_error(refused, 503, "unconfirmed").await;
        let order_id = body["error"]["order_id"].as_str().unwrap().to_owned();
        let logged: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(keys(&item).orders())
            .arg("-")
            .arg("+")
            .query_async(&mut master)
            .await
            .unwrap();
        let logged: Vec<&str> = logged
            .iter()
            .flat_map(|(_, fields)| seckill::orders::order_log::ids_and_buyers(fields))
            .map(|(id, _)| id)
            .collect();
        assert_eq!(logged, [order_id.as_str()], "{strategy}");

        // With an Idempotency-Key: a repeat learns the order id, and hears
        // 201 only once the replica holds it.
        let key = format!("k-{item}");
        let refused = app.purchase_with_key(&item, "c", strategy, &key).await;
        let first = assert_error(refused, 503, "unconfirmed").await;
        let again = app.purchase_with_key(&item, "c", strategy, &key).await;
        let still = assert_error(again, 503, "unconfirmed").await;
        assert_eq!(
            still["error"]["order_id"], first["error"]["order_id"],
            "{strategy}"
        );
        redis.replica.resume();
        redis.caught_up().await;
        let again = app.purchase_with_key(&item, "c", strategy, &key).await;
        assert_eq!(
            again.headers()["Idempotency-Replayed"],
            "true",
            "{strategy}"
        );
        let (status, replayed) = status_and_json(again).await;
        assert_eq!(status, 201, "{strategy}: {replayed}");
        assert_eq!(
            replayed["order_id"], first["error"]["order_id"],
            "{strategy}"
        );

        let bought = app.purchase(&item, "b", strategy).await;
        assert_eq!(
            bought.status(),
            201,
            "{strategy}: {}",
            bought.text().await.unwrap()
        );
        let view = app.item(&item).await;
        assert_eq!(view["unconfirmed"], 2, "{strategy}: {view}");
        assert_eq!(
            view["strategies"][strategy]["unconfirmed"], 2,
            "{strategy}: {view}"
        );
        assert_eq!(view["sold"], 3, "{strategy}: {view}");
        let metrics = app.metrics_text().await;
        let line = format!("seckill_purchases_unconfirmed_total{{strategy=\"{strategy}\"}} 2");
        assert!(
            metrics.contains(&line),
            "{strategy}: no `{line}` in\n{metrics}"
        );
        // The two unconfirmed purchases each waited out the whole `WAIT`
        // timeout (400 ms), and their latency says so.
        let sum = format!("seckill_purchase_duration_seconds_sum{{strategy=\"{strategy}\"}} ");
        let waited: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&sum))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{strategy}: no `{sum}` in\n{metrics}"));
        assert!(waited >= 0.8, "{strategy}: {waited} s in all");
    }
    app.stop().await;
}

/// The `sql` strategy's order is committed to SQL before its 201: a frozen
/// replica of the Redis mirror does not hold it up. Its Idempotency-Key
/// record lives in Redis, though: a keyed purchase waits for it, or a
/// failover could lose the record and a repeat buy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_purchase_waits_for_no_redis_replica_but_its_key_record_does() {
    let redis = master_with_replica().await;
    let app = redis.app().await;
    for strategy in strategies_where(|k| k.decides() == Decides::InSql) {
        let item = unique(&format!("wait-{strategy}"));
        app.create_item(&item, 5, 1).await;
        redis.caught_up().await;
        redis.replica.pause();
        let bought = app.purchase(&item, "a", strategy).await;
        let (status, body): (_, Value) = status_and_json(bought).await;
        assert_eq!(status, 201, "{strategy}: {body}");
        let keyed = app.purchase_with_key(&item, "b", strategy, "k").await;
        assert_error(keyed, 503, "unconfirmed").await;
        redis.replica.resume();
    }
    app.stop().await;
}

/// A `WAIT` is a reply like any other: start-up refuses a wait the Redis
/// timeout would cut short.
#[tokio::test]
async fn a_wait_longer_than_the_redis_timeout_is_refused_at_start_up() {
    let redis = crate::helpers::shared_redis();
    let mut config = seckill::config::Config::defaults();
    config.orders.database_url = crate::helpers::sqlite_url();
    config.redis.redis_wait_replicas = 1;
    config.redis.redis_wait_timeout_ms = config.redis.redis_timeout_ms;
    let refused =
        seckill::startup::App::build(&config, &crate::helpers::single(&redis.url())).await;
    let err = refused.err().expect("refused");
    assert!(
        format!("{err:#}").contains("REDIS_WAIT_TIMEOUT_MS"),
        "{err:#}"
    );
}
