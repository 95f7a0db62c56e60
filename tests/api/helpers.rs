//! Test harness. One throwaway `redis-server` per test binary, on a random port;
//! each test spawns its own app on port 0 with its own item names and its own
//! SQLite file, so tests run in parallel without seeing each other.
//!
//! Apps on the shared Redis run no persister: persisters of apps with different
//! databases would take each other's orders. Persistence tests start a private
//! Redis and turn it on ([`spawn_persisting_app`]), once per backend in
//! [`database_urls`]: SQLite always, Postgres when `TEST_DATABASE_URL` is set.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use reqwest::{Response, StatusCode};
use seckill::config::Config;
use seckill::infra::redis_cluster::{RedisCluster, RedisClusterOptions};
use seckill::infra::redis_conn::{RedisTarget, Timeouts};
use seckill::infra::redis_server::{RedisServer, RedisServerOptions};
use seckill::startup::App;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The Redis shared by the tests of this binary. Never dropped: it dies with
/// the test process (the child is spawned with PDEATHSIG).
pub fn shared_redis() -> &'static RedisServer {
    static REDIS: OnceLock<RedisServer> = OnceLock::new();
    REDIS.get_or_init(fresh_redis)
}

/// A private Redis of the test's own, started empty.
pub fn fresh_redis() -> RedisServer {
    fresh_redis_with(RedisServerOptions::default())
}

/// A Redis started empty with `options`, its worker horizons seeded (see
/// [`seed_fresh`]).
pub fn fresh_redis_with(options: RedisServerOptions) -> RedisServer {
    let redis = RedisServer::start(options)
        .expect("tests need `redis-server` on PATH (apt-get install redis-server)");
    seed_fresh(single(&redis.url()));
    redis
}

/// A Redis Cluster started empty, its worker horizons seeded.
pub fn fresh_cluster(options: RedisClusterOptions) -> RedisCluster {
    let cluster =
        RedisCluster::start(options).expect("tests need redis-server and redis-cli on PATH");
    seed_fresh(RedisTarget::Cluster(cluster.urls()));
    cluster
}

/// Marks the worker numbers of `target`, a Redis this test just started
/// empty, as never used: known fresh, so an app on it takes its number at
/// once instead of waiting out the lease TTL as after lost data (see
/// `seckill::orders::lease`). On a thread and runtime of its own: callers
/// are synchronous (a `OnceLock`) or inside a test's runtime, which a
/// blocking wait would stall.
pub fn seed_fresh(target: RedisTarget) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let conn = target.connect(TIMEOUTS).await.unwrap();
            seckill::orders::lease::seed_fresh_horizons(&conn)
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub redis_url: String,
    /// Dropping the app stops its server.
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

/// A unique item name, so parallel tests never share an item.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns an app on the shared Redis with `tweak` applied to the default config.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_on(&shared_redis().url(), tweak).await
}

/// A fresh SQLite database file.
pub fn sqlite_url() -> String {
    let file = std::env::temp_dir().join(format!("{}.db", unique("seckill-test")));
    format!("sqlite://{}", file.display())
}

/// The databases the persistence tests run against: a fresh SQLite file, and
/// Postgres when `TEST_DATABASE_URL` is set.
pub fn database_urls() -> Vec<String> {
    let mut urls = vec![sqlite_url()];
    if let Some(url) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    {
        urls.push(url);
    }
    urls
}

/// Spawns an app on a private Redis with the persister on, against `database_url`.
/// The Redis lives as long as the returned server handle.
pub async fn spawn_persisting_app(
    database_url: &str,
    tweak: impl FnOnce(&mut Config),
) -> (TestApp, RedisServer) {
    let redis = fresh_redis();
    let url = database_url.to_owned();
    let app = spawn_app_on(&redis.url(), |c| {
        c.orders.database_url = url;
        c.orders.persister = true;
        tweak(c);
    })
    .await;
    (app, redis)
}

/// The one Redis at `url`, as the service is told of it.
pub fn single(url: &str) -> RedisTarget {
    RedisTarget::Single(url.to_owned())
}

/// Patient enough for a loaded test machine.
pub const TIMEOUTS: Timeouts = Timeouts {
    response: Duration::from_secs(5),
    connect: Duration::from_secs(5),
};

/// Spawns an app on the Redis at `redis_url`.
pub async fn spawn_app_on(redis_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_at(&single(redis_url), tweak).await
}

/// Spawns an app on `target`, one Redis or a cluster. (For a cluster,
/// [`TestApp::redis`] talks to its first seed node only.)
pub async fn spawn_app_at(target: &RedisTarget, tweak: impl FnOnce(&mut Config)) -> TestApp {
    seckill::infra::telemetry::init(seckill::infra::telemetry::LogFormat::Pretty);
    let mut config = Config::defaults();
    config.orders.database_url = sqlite_url();
    config.orders.persister = false;
    // The fault lab is this crate's binary; the test process is the harness.
    config.lab.fault_lab_bin = Some(env!("CARGO_BIN_EXE_seckill").into());
    tweak(&mut config);
    let app = App::build(&config, target)
        .await
        .expect("app builds against the test Redis");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let state = app.state.clone();
    let server = tokio::spawn(async move {
        seckill::http::server::run(listener, state, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
        app.shutdown().await;
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        redis_url: match target {
            RedisTarget::Single(url) => url.clone(),
            RedisTarget::Cluster(urls) => urls[0].clone(),
        },
        stop,
        server,
    }
}

impl TestApp {
    /// Graceful shutdown, as on SIGTERM: the server stops, then background
    /// work (the persister's drain) finishes. Returns when all of it is done.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.server.await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// `PUT /api/items/{item}` with the given stock and per-user limit.
    pub async fn restock(&self, item: &str, stock: u64, limit: u64) -> Response {
        self.put_item(item, json!({"stock": stock, "per_user_limit": limit}))
            .await
    }

    /// `PUT /api/items/{item}` with any JSON body.
    pub async fn put_item(&self, item: &str, body: Value) -> Response {
        self.client
            .put(self.url(&format!("/api/items/{item}")))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /metrics` as text, asserting 200.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    /// Creates an item, asserting success.
    pub async fn create_item(&self, item: &str, stock: u64, limit: u64) {
        let response = self.restock(item, stock, limit).await;
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    /// `POST /api/items/{item}/purchase` with a JSON body.
    pub async fn purchase(&self, item: &str, user: &str, strategy: &str) -> Response {
        self.client
            .post(self.url(&format!("/api/items/{item}/purchase")))
            .json(&json!({"user_id": user, "strategy": strategy}))
            .send()
            .await
            .unwrap()
    }

    /// `GET path`, parsed as JSON whatever the status.
    /// A purchase with an `Idempotency-Key`.
    pub async fn purchase_with_key(
        &self,
        item: &str,
        user: &str,
        strategy: &str,
        key: &str,
    ) -> Response {
        self.client
            .post(self.url(&format!("/api/items/{item}/purchase")))
            .header("Idempotency-Key", key)
            .json(&json!({"user_id": user, "strategy": strategy}))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        get_json(&self.client, &self.url(path)).await
    }

    /// `GET path`, whatever it answers.
    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET /api/items/{item}`, whatever it answers.
    pub async fn item_response(&self, item: &str) -> Response {
        self.get(&format!("/api/items/{item}")).await
    }

    /// `GET /api/items/{item}` as JSON, asserting 200.
    pub async fn item(&self, item: &str) -> Value {
        let response = self.item_response(item).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    }

    /// Waits until every order of `item`'s log is in SQL (`lag` 0); panics
    /// with the item's view if that takes longer than `within`.
    pub async fn wait_until_persisted(&self, item: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let view = self.item(item).await;
            if view["lag"] == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{item}: not in SQL after {within:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `GET /api/persister` until `done` holds of its report, and
    /// returns that report; panics with `what` and the last report if that
    /// takes longer than `within`.
    pub async fn persister_report_when(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + within;
        loop {
            let report: Value = self.get_json("/api/persister").await;
            if done(&report) {
                return report;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {report}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.redis_url).await
    }

    /// Every key of `item` with its full value, to assert a request changed
    /// nothing.
    pub async fn redis_snapshot(&self, item: &str) -> BTreeMap<String, String> {
        let mut redis = self.redis().await;
        let pattern = keys(item).pattern();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut redis)
            .await
            .unwrap();
        let mut snapshot = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let mut read = match kind.as_str() {
                "string" => redis::cmd("GET"),
                "hash" => redis::cmd("HGETALL"),
                "stream" => redis::cmd("XRANGE"),
                "set" => redis::cmd("SMEMBERS"),
                "zset" => redis::cmd("ZRANGE"),
                other => panic!("unexpected type {other} for {key}"),
            };
            read.arg(&key);
            match kind.as_str() {
                "stream" => {
                    read.arg("-").arg("+");
                }
                "zset" => {
                    read.arg(0).arg(-1).arg("WITHSCORES");
                }
                _ => {}
            }
            let value: redis::Value = read.query_async(&mut redis).await.unwrap();
            snapshot.insert(key, format!("{value:?}"));
        }
        snapshot
    }
}

/// Status and JSON body of a response.
pub async fn status_and_json(response: Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {status} {text:?}"));
    (status, body)
}

/// Asserts the documented error status and code.
pub async fn assert_error(response: Response, status: u16, code: &str) -> Value {
    let (actual, body) = status_and_json(response).await;
    assert_eq!(
        (actual.as_u16(), body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

/// Holds every worker number on `redis` except `free`.
pub async fn hold_all_worker_numbers_but(redis: &RedisServer, free: &[u16]) {
    let mut conn = connect(&redis.url()).await;
    let mut pipe = redis::pipe();
    for n in (0..=seckill::orders::snowflake::MAX_WORKER).filter(|n| !free.contains(n)) {
        pipe.cmd("SET")
            .arg(seckill::keys::worker_lease(n))
            .arg("someone-else")
            .ignore();
    }
    pipe.exec_async(&mut conn).await.unwrap();
}

/// `GET url`, parsed as JSON whatever the status.
pub async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> T {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// A connection of the test's own to the Redis at `url`.
pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Sends `cmd` until its text reply contains `wanted` (a node coming up,
/// a replica in sync), for at most `within`; the last reply.
pub async fn await_reply(
    conn: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
    wanted: &str,
    within: Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let reply: String = cmd.query_async(conn).await.unwrap();
        if reply.contains(wanted) {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no `{wanted}` within {within:?}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Redis keys of `item`, from the service's own key schema.
pub fn keys(item: &str) -> seckill::keys::ItemKeys {
    seckill::keys::ItemKeys::new(&seckill::domain::ItemId::parse(item).expect("a valid item id"))
}

/// Every strategy a client may name, in the catalogue's order: the tests'
/// matrix derives from the same list the service serves.
pub fn all_strategies() -> [&'static str; seckill::strategy::StrategyKind::ALL.len()] {
    seckill::strategy::StrategyKind::ALL.map(seckill::strategy::StrategyKind::as_str)
}

/// The strategies of the catalogue that have `trait_`, by name: a test
/// aimed at a property (a guard, a read-then-write window) takes every
/// strategy that has it, a new one included.
pub fn strategies_where(
    trait_: impl Fn(seckill::strategy::StrategyKind) -> bool,
) -> Vec<&'static str> {
    seckill::strategy::StrategyKind::ALL
        .into_iter()
        .filter(|kind| trait_(*kind))
        .map(seckill::strategy::StrategyKind::as_str)
        .collect()
}
