//! The default setup keeps its promises across a crash: the private Redis
//! keeps its data under the data directory, a restart resumes every sale, and
//! every 201 reaches SQL. A Redis that may evict keys is refused.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use seckill::infra::redis_server::{Fsync, RedisServer, RedisServerOptions};
use serde_json::Value;

use crate::helpers::{sqlite_url, unique};
use crate::persistence::wait_in_sql;
use crate::process::{Server, buy_until_killed};

/// What a newcomer's `seckill serve` gets beside its defaults.
const NEWCOMER: [(&str, &str); 1] = [("PERSISTER_CLAIM_IDLE_MS", "1000")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_setup_resumes_every_sale_after_a_kill_9() {
    let dir = std::env::temp_dir().join(unique("seckill-default"));
    std::fs::create_dir_all(&dir).unwrap();
    // No REDIS_URL, no DATABASE_URL: its data lands in `dir/data`.
    let mut server = Server::start(&NEWCOMER, Some(&dir)).await;
    let (client, base) = (reqwest::Client::new(), server.base.clone());
    let item = unique("crash");
    let created = client
        .put(format!("{base}/api/items/{item}"))
        .json(&serde_json::json!({"stock": 1_000_000, "strategy": "lua"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // SIGKILL: no drain; the Redis child dies with it.
    let sales = [(item.clone(), "lua")];
    let answered = buy_until_killed(&mut server, &sales, Duration::from_millis(1500)).await;
    assert!(
        answered.len() > 20,
        "orders before the kill: {}",
        answered.len()
    );

    let restarted = Server::start_on(server.port(), &NEWCOMER, Some(&dir)).await;
    let view: Value = crate::helpers::get_json(&client, &format!("{base}/api/items/{item}")).await;
    assert_eq!(view["item_id"], item.as_str(), "the sale survived: {view}");
    assert!(
        view["sold"].as_u64().unwrap() >= answered.len() as u64,
        "every 201 is still in the order log: {view}"
    );
    assert_eq!(
        view["stock"].as_i64().unwrap() + view["sold"].as_i64().unwrap(),
        1_000_000,
        "{view}"
    );
    let database_url = format!("sqlite://{}/data/seckill.db", dir.display());
    wait_in_sql(
        &database_url,
        std::slice::from_ref(&item),
        &answered,
        Duration::from_secs(30),
    )
    .await;
    // And it keeps selling where it left off.
    let bought = client
        .post(format!("{base}/api/items/{item}/purchase?user_id=after"))
        .send()
        .await
        .unwrap();
    assert_eq!(bought.status(), 201);
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A redis-server still running on the data directory (its parent died
/// without taking it along) is stopped cleanly before a new one starts on the
/// same files, and the data it held is there.
#[tokio::test]
async fn a_leftover_redis_server_on_the_same_files_is_stopped_first() {
    let dir = std::env::temp_dir().join(unique("seckill-leftover"));
    let options = RedisServerOptions {
        dir: Some(dir.clone()),
        append_only: Some(Fsync::Always),
        ..RedisServerOptions::default()
    };
    let leftover = RedisServer::start(options.clone()).unwrap();
    let mut conn = crate::helpers::connect(&leftover.url()).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{}:kept", seckill::keys::PREFIX))
        .arg("yes")
        .query_async(&mut conn)
        .await
        .unwrap();
    let pid: i32 = std::fs::read_to_string(dir.join("redis-server.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // While its parent lives, the directory is refused to a second start.
    let refused = RedisServer::start(options.clone()).expect_err("in use");
    assert!(format!("{refused:#}").contains("in use"), "{refused:#}");

    // Its parent gone (the lock with it), the next start stops it first.
    leftover.abandon();
    let fresh = RedisServer::start(options).unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}/status")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .contains("zombie"),
        "the leftover server was stopped"
    );
    let mut conn = crate::helpers::connect(&fresh.url()).await;
    let kept: Option<String> = redis::cmd("GET")
        .arg(format!("{}:kept", seckill::keys::PREFIX))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("yes"));
    drop(fresh);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_redis_that_may_evict_keys_is_refused_unless_allowed() {
    let redis = crate::helpers::fresh_redis();
    let mut conn = crate::helpers::connect(&redis.url()).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut config = seckill::config::Config::defaults();
    config.orders.database_url = sqlite_url();
    config.orders.persister = false;
    let refused =
        seckill::startup::App::build(&config, &crate::helpers::single(&redis.url())).await;
    let err = format!("{:#}", refused.err().expect("an evicting Redis is refused"));
    assert!(
        err.contains("allkeys-lru") && err.contains("noeviction"),
        "{err}"
    );

    config.redis.allow_evicting_redis = true;
    let allowed =
        seckill::startup::App::build(&config, &crate::helpers::single(&redis.url())).await;
    assert!(allowed.is_ok(), "{:?}", allowed.err());
}

/// Holds SQLite's write lock until dropped, as a long migration or a wedged
/// writer would.
async fn lock_database(url: &str) -> sqlx::sqlite::SqliteConnection {
    use sqlx::Connection;
    let mut lock = sqlx::sqlite::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut lock)
        .await
        .unwrap();
    lock
}

async fn buy_lua(app: &crate::helpers::TestApp, item: &str, n: usize) -> HashSet<String> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let response = app.purchase(item, &format!("b{i}"), "lua").await;
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["order_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// The database is locked when the service stops: the drain gives up at its
/// bound instead of holding the process, the orders wait in Redis, and reach
/// SQL after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_against_a_locked_database_gives_up_at_its_bound_and_loses_nothing() {
    let database_url = sqlite_url();
    let (app, redis) = crate::helpers::spawn_persisting_app(&database_url, |c| {
        c.orders.persister_drain_ms = 1_500;
    })
    .await;
    let item = unique("locked");
    app.create_item(&item, 1_000, 1).await;
    let lock = lock_database(&database_url).await;
    let answered = buy_lua(&app, &item, 40).await;

    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the drain gave up at its bound");
    drop(lock);

    let _restarted = crate::helpers::spawn_app_on(&redis.url(), |c| {
        c.orders.database_url = database_url.clone();
        c.orders.persister = true;
        c.orders.persister_claim_idle_ms = 500;
    })
    .await;
    wait_in_sql(
        &database_url,
        std::slice::from_ref(&item),
        &answered,
        Duration::from_secs(30),
    )
    .await;
}

/// A database locked for a moment: the persister retries the entries it
/// holds pending at once, not after they idle into a reclaim (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_that_failed_to_insert_are_retried_without_waiting_for_a_reclaim() {
    let database_url = sqlite_url();
    let (app, _redis) = crate::helpers::spawn_persisting_app(&database_url, |c| {
        c.orders.persister_claim_idle_ms = 30_000;
    })
    .await;
    let item = unique("blip");
    app.create_item(&item, 1_000, 1).await;
    let lock = lock_database(&database_url).await;
    let answered = buy_lua(&app, &item, 20).await;
    // The insert waits on SQLite's busy timeout (5 s), then fails.
    tokio::time::sleep(Duration::from_secs(6)).await;
    drop(lock);
    wait_in_sql(
        &database_url,
        std::slice::from_ref(&item),
        &answered,
        Duration::from_secs(15),
    )
    .await;
}
