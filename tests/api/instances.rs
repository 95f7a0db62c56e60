//! Several `seckill serve` processes on one Redis and one database, as a real
//! flash sale runs them: distinct worker leases (order ids never collide),
//! never oversold together, and a lease that stops being renewed expires and
//! can be taken over without a duplicate id.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill::orders::lease::SKEW_MARGIN;
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

/// The lease TTL of the instances in
/// [`one_worker_id_whose_keys_vanish_under_load_mints_no_id_twice`]: a
/// renewal every second, long beside an instance's start-up, so a second
/// instance started as the keys vanish is minting while the first still
/// does, unless the wait keeps it out.
const VANISH_TTL_MS: u64 = 3000;

/// Two instances with one `WORKER_ID` on one Redis, under load, and the
/// number's keys vanish under them (a Redis restarted without persistence,
/// a replica promoted before it had them):
/// 1. `DEL` of the lease and horizon keys just after the first instance's
///    renewal, and the second started at once: it takes the number, finds no
///    horizon, and waits the TTL plus the skew margin; the first finds the
///    lease taken at its next renewal and has stopped minting long before.
/// 2. `FLUSHALL`: the first, which has been asking for its number since,
///    takes it back and waits in turn (the renewal path); the second stops
///    at its next renewal.
///
/// Result: no order id twice among all the 201s, no persister conflict,
/// every 201 in SQL, with what `FLUSHALL` cannot keep left out: it deletes
/// the item and every order-log entry not yet in SQL, so a 201 answered just
/// before it may never reach SQL (any lost Redis data loses those; no lease
/// can keep them). Hence phase 1's 201s are all awaited in SQL before the
/// flush, and of phase 2 only the purchases sent after the restock that
/// follows the flush are held to SQL; the ones before it still count for
/// repeated ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_id_whose_keys_vanish_under_load_mints_no_id_twice() {
    let redis = crate::helpers::fresh_redis();
    let database = sqlite_url();
    let ttl = VANISH_TTL_MS.to_string();
    let env = [("WORKER_ID", "7"), ("WORKER_LEASE_TTL_MS", ttl.as_str())];
    let first = start(&redis.url(), &database, &env).await;
    let client = reqwest::Client::new();
    let item = unique("vanish");
    let restock = || async {
        let created = client
            .put(format!("{}/api/items/{item}", first.base))
            .json(&json!({"stock": 10_000_000, "strategy": "lua"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
    };
    restock().await;
    let sales = [(item.clone(), "lua")];
    let mut conn = crate::helpers::connect(&redis.url()).await;

    // Phase 1: DEL, and a second instance at once.
    let mut load = crate::process::Load::default();
    load.on(&first.base, &sales, "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    await_renewal(&mut conn, 7).await;
    let _: () = redis::cmd("DEL")
        .arg(seckill::keys::worker_lease(7))
        .arg(seckill::keys::worker_horizon(7))
        .arg(seckill::keys::legacy_worker_horizon(7))
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    let second = start(&redis.url(), &database, &env).await;
    eprintln!("second instance ready after {:?}", started.elapsed());
    load.on(&second.base, &sales, "b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let phase1 = load.stop().await;
    let (phase1_ids, repeated_in_phase1) = repeats(&phase1, &[]);
    assert!(
        phase1_ids.len() > 100,
        "too little load: {}",
        phase1_ids.len()
    );
    crate::persistence::wait_in_sql(
        &database,
        std::slice::from_ref(&item),
        &phase1_ids,
        Duration::from_secs(30),
    )
    .await;
    let dead_in_phase1 = dead_letters(&mut conn, &item).await;

    // Phase 2: FLUSHALL under load, then the item again.
    let mut load = crate::process::Load::default();
    load.on(&first.base, &sales, "c");
    load.on(&second.base, &sales, "d");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    restock().await;
    let restocked = Instant::now();
    // Whichever instance leased the number again (most likely the first,
    // which asks every 200 ms) waits the TTL and margin before minting.
    tokio::time::sleep(Duration::from_millis(VANISH_TTL_MS) + SKEW_MARGIN).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_ready(&client, &first.base).await && !is_ready(&client, &second.base).await {
        assert!(Instant::now() < deadline, "neither instance minting again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("minting again {:?} after the restock", restocked.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let phase2 = load.stop().await;
    let (all_ids, repeated_in_phase2) = repeats(&phase2, &phase1);
    let after_restock: HashSet<String> = phase2
        .into_iter()
        .filter(|(sent, _)| *sent > restocked)
        .map(|(_, id)| id)
        .collect();
    assert!(all_ids.len() > phase1_ids.len() + 100, "too little load");
    crate::persistence::wait_in_sql(
        &database,
        std::slice::from_ref(&item),
        &after_restock,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (repeated_in_phase1, repeated_in_phase2),
        (0, 0),
        "order ids minted twice (DEL, FLUSHALL), of {}",
        all_ids.len()
    );
    for base in [&first.base, &second.base] {
        let report: Value =
            crate::helpers::get_json(&client, &format!("{base}/api/persister")).await;
        assert_eq!(report["conflicts"], 0, "{base}: {report}");
    }
    assert_eq!(
        (dead_in_phase1, dead_letters(&mut conn, &item).await),
        (0, 0),
        "orders in dead letters (DEL, FLUSHALL)"
    );
}

async fn is_ready(client: &reqwest::Client, base: &str) -> bool {
    client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Returns once worker number `n`'s lease has just been renewed (its TTL
/// went up), so the next renewal is a third of the TTL away.
async fn await_renewal(conn: &mut redis::aio::MultiplexedConnection, n: u16) {
    let mut pttl = redis::cmd("PTTL");
    pttl.arg(seckill::keys::worker_lease(n));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: i64 = pttl.query_async(conn).await.unwrap();
    loop {
        let now: i64 = pttl.query_async(conn).await.unwrap();
        if now > last {
            return;
        }
        last = now;
        assert!(Instant::now() < deadline, "the lease of {n} is not renewed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every order id of `answered` and `earlier`, and how many of `answered`
/// repeat one seen before.
fn repeats(
    answered: &[(Instant, String)],
    earlier: &[(Instant, String)],
) -> (HashSet<String>, usize) {
    let mut ids: HashSet<String> = earlier.iter().map(|(_, id)| id.clone()).collect();
    let repeated = answered
        .iter()
        .filter(|(_, id)| !ids.insert(id.clone()))
        .count();
    (ids, repeated)
}

/// How many orders sit in `item`'s dead letters (conflicting order ids).
async fn dead_letters(conn: &mut redis::aio::MultiplexedConnection, item: &str) -> u64 {
    redis::cmd("XLEN")
        .arg(crate::helpers::keys(item).dead_letters())
        .query_async(conn)
        .await
        .unwrap()
}
