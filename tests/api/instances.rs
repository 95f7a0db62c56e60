//! Several `seckill serve` processes on one Redis and one database, as a real
//! flash sale runs them: distinct worker leases (order ids never collide),
//! never oversold together, and a lease that stops being renewed expires and
//! can be taken over without a duplicate id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::orders::snowflake::OrderId;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{sqlite_url, unique};
use crate::process::Server;

/// An instance on `redis_url` and `database_url`, with `extra` settings.
async fn start(redis_url: &str, database_url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![("REDIS_URL", redis_url), ("DATABASE_URL", database_url)];
    env.extend_from_slice(extra);
    Server::start(&env, None).await
}

async fn buy(
    client: &reqwest::Client,
    base: &str,
    item: &str,
    user: &str,
    strategy: &str,
) -> (u16, Value) {
    let response = client
        .post(format!("{base}/api/items/{item}/purchase"))
        .json(&json!({"user_id": user, "strategy": strategy}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_lease_distinct_workers_and_never_oversell_together() {
    let redis = crate::helpers::fresh_redis();
    // Only three numbers free: distinct numbers must come from the lease
    // refusing held ones, not from three random starts that happen to differ.
    let free = [600, 601, 602];
    crate::helpers::hold_all_worker_numbers_but(&redis, &free).await;
    let database = sqlite_url();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(start(&redis.url(), &database, &[]).await);
    }
    let bases: Arc<Vec<String>> = Arc::new(instances.iter().map(|i| i.base.clone()).collect());
    let client = reqwest::Client::new();
    let mut ids = HashSet::new();
    let mut workers_by_instance = vec![HashSet::new(); 3];

    // One item per strategy (a guard only excludes buyers who use it, so an
    // item is sold under one strategy), its buyers spread over all instances.
    for strategy in crate::helpers::strategies_where(|k| k.guarded()) {
        let item = unique(strategy);
        let created = client
            .put(format!("{}/api/items/{item}", bases[0]))
            .json(&json!({"stock": 30}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let mut tasks = JoinSet::new();
        for n in 0..90 {
            let (client, bases, item) = (client.clone(), Arc::clone(&bases), item.clone());
            tasks.spawn(async move {
                let base = &bases[n % bases.len()];
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let (status, body) =
                        buy(&client, base, &item, &format!("i{n}"), strategy).await;
                    // Buyers refused for contention come back.
                    if body["error"]["code"] != "contention" || Instant::now() > deadline {
                        return (n % bases.len(), status, body);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        let mut sold = 0;
        while let Some(joined) = tasks.join_next().await {
            let (instance, status, body) = joined.unwrap();
            if status == 201 {
                sold += 1;
                let id = OrderId::parse(body["order_id"].as_str().unwrap()).unwrap();
                assert!(ids.insert(id), "order id {id} issued twice");
                workers_by_instance[instance].insert(id.parts().worker);
            }
        }
        assert_eq!(sold, 30, "{strategy}: exactly the stock sold");
        let view: Value =
            crate::helpers::get_json(&client, &format!("{}/api/items/{item}", bases[2])).await;
        assert_eq!(
            (
                view["sold"].as_u64(),
                view["oversold"].as_u64(),
                view["drift"].as_i64()
            ),
            (Some(30), Some(0), Some(0)),
            "{strategy}: {view}"
        );
    }
    let workers: HashSet<u16> = workers_by_instance.iter().flatten().copied().collect();
    assert!(
        workers_by_instance.iter().all(|w| w.len() == 1),
        "one worker per instance: {workers_by_instance:?}"
    );
    assert_eq!(
        workers,
        HashSet::from(free),
        "three instances, the three free numbers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_is_not_renewed_expires_and_can_be_taken_over() {
    let redis = crate::helpers::fresh_redis();
    let database = sqlite_url();
    let paused = start(&redis.url(), &database, &[("WORKER_LEASE_TTL_MS", "600")]).await;
    let client = reqwest::Client::new();
    let item = unique("lease");
    client
        .put(format!("{}/api/items/{item}", paused.base))
        .json(&json!({"stock": 10}))
        .send()
        .await
        .unwrap();
    let (status, body) = buy(&client, &paused.base, &item, "before", "lua").await;
    assert_eq!(status, 201);
    let worker = OrderId::parse(body["order_id"].as_str().unwrap())
        .unwrap()
        .parts()
        .worker;
    let key = seckill::keys::worker_lease(worker);
    let mut conn = crate::helpers::connect(&redis.url()).await;

    // Freeze the instance: it stops renewing, and its lease expires.
    let pid = paused.child.id() as i32;
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !exists {
            break;
        }
        assert!(Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another instance takes the number over.
    let taken: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("newcomer")
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(taken.is_some(), "an expired lease can be taken over");

    // Thawed, the old holder is past its lease's known validity: it mints
    // nothing with the number someone else holds now. Its renewal finds the
    // number taken, so it leases another and purchases resume with that one.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    let new_worker = loop {
        let (status, body) = buy(
            &client,
            &paused.base,
            &item,
            &format!("after{refused}"),
            "lua",
        )
        .await;
        if status == 201 {
            break OrderId::parse(body["order_id"].as_str().unwrap())
                .unwrap()
                .parts()
                .worker;
        }
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "{body}"
        );
        refused += 1;
        assert!(Instant::now() < deadline, "purchases never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(new_worker, worker, "resumed on a number nobody else holds");
    let holder: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holder, "newcomer", "the new holder keeps the number");
}
