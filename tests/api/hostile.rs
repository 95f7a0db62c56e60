//! Hostile input cannot take the service down: floods of junk ids, slow or
//! idle clients, and admin requests from where they should not come.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::helpers::{all_strategies, assert_error, spawn_app, unique};

async fn metric(app: &crate::helpers::TestApp, name: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

/// Purchases for thousands of ids that do not exist: each is a 404, and none
/// leaves per-item state behind in the process or keys in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_item_ids_allocates_nothing() {
    let app = Arc::new(spawn_app().await);
    let real = unique("real");
    app.create_item(&real, 5, 1).await;
    assert_eq!(app.purchase(&real, "u", "lua").await.status(), 201);

    let prefix = unique("junk");
    let mut tasks = JoinSet::new();
    for worker in 0..16 {
        let (app, prefix) = (Arc::clone(&app), prefix.clone());
        tasks.spawn(async move {
            for n in 0..100 {
                let strategy = all_strategies()[(worker + n) % all_strategies().len()];
                let item = format!("{prefix}-{worker}-{n}");
                let status = app.purchase(&item, "u", strategy).await.status();
                assert_eq!(status, 404, "{strategy}");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    assert_eq!(metric(&app, "seckill_tracked_items").await, 1.0);
    let mut redis = app.redis().await;
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(seckill::keys::items_pattern(&prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// Without ADMIN_TOKEN, a same-host proxy's request (it connects from
/// loopback on someone else's behalf, and says so) is refused, and so is a
/// body a cross-site form could send.
#[tokio::test]
async fn token_less_admin_refuses_proxied_requests_and_non_json_bodies() {
    let app = spawn_app().await;
    let item = unique("admin-guard");
    let url = app.url(&format!("/api/items/{item}"));
    for header in ["X-Forwarded-For", "X-Real-IP", "Forwarded"] {
        let response = app
            .client
            .put(&url)
            .header(header, "for=198.51.100.7")
            .json(&serde_json::json!({"stock": 3}))
            .send()
            .await
            .unwrap();
        assert_error(response, 403, "forbidden").await;
    }
    let response = app
        .client
        .put(&url)
        .header("content-type", "text/plain")
        .body(r#"{"stock":3}"#)
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "unsupported_media_type").await;
    let response = app
        .client
        .post(app.url("/api/race"))
        .header("content-type", "text/plain")
        .body(r#"{"strategies":["lua"]}"#)
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "unsupported_media_type").await;
    // A no-cors fetch: POST with no body and no type.
    let response = app.client.post(app.url("/api/race")).send().await.unwrap();
    assert_error(response, 415, "unsupported_media_type").await;
    // DNS rebinding: the peer is loopback, the Host is the attacker's name.
    let response = app
        .client
        .put(&url)
        .header("Host", "evil.example:8080")
        .json(&serde_json::json!({"stock": 3}))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "forbidden").await;
    assert!(
        app.redis_snapshot(&item).await.is_empty(),
        "nothing created"
    );
    // No race was started: a proper one is accepted, not refused with 409.
    let proper = post_race(&app, serde_json::json!({"strategies": ["lua"]})).await;
    assert_eq!(proper.status(), 202);
    app.client
        .delete(app.url("/api/race"))
        .send()
        .await
        .unwrap();
}

async fn post_race(app: &crate::helpers::TestApp, body: serde_json::Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/race"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The race control: each strategy once, one race at a time, cancellable, and
/// stopped by shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_names_each_strategy_once_runs_alone_and_can_be_cancelled() {
    let app = spawn_app().await;
    let repeated = serde_json::json!({"strategies": ["lua", "lua", "lua"]});
    let body = assert_error(post_race(&app, repeated).await, 400, "invalid_request").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );

    let long = serde_json::json!({
        "strategies": ["lua"], "stock": 1_000_000, "concurrency": 2, "duration_s": 60
    });
    assert_eq!(post_race(&app, long.clone()).await.status(), 202);
    assert_error(post_race(&app, long.clone()).await, 409, "race_running").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let race = app.client.get(app.url("/api/stats")).send().await.unwrap();
        let race: serde_json::Value = race.json().await.unwrap();
        let purchased = race["race"]["purchased"].as_u64().unwrap_or(0);
        if race["race"]["strategy"] == "lua" && purchased > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the race never started: {race}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cancelled: serde_json::Value = app
        .client
        .delete(app.url("/api/race"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&cancelled["running"], &cancelled["phase"]),
        (&serde_json::json!(false), &serde_json::json!("cancelled")),
        "{cancelled}"
    );
    // Cancelled means stopped: the race's item receives no more purchases.
    let attempts = || async {
        let items: serde_json::Value = app.get_json("/api/items").await;
        items
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["item_id"].as_str().unwrap().starts_with("race-"))
            .map(|i| i["strategies"]["lua"]["attempts"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let settled = attempts().await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        attempts().await,
        settled,
        "the cancelled race still sends purchases"
    );
    // Another may start, and shutdown stops it.
    assert_eq!(post_race(&app, long).await.status(), 202);
    tokio::time::timeout(std::time::Duration::from_secs(20), app.stop())
        .await
        .expect("shutdown stops a running race instead of waiting for it");
}

/// A raw connection to the app, for clients no HTTP library would be.
async fn raw(app: &crate::helpers::TestApp) -> tokio::net::TcpStream {
    raw_from(app, "127.0.0.1", None).await
}

/// Reads until the server closes the connection; panics if it has not within
/// `within` (a liveness bound, generous on purpose). Returns what was read.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, within: Duration) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server kept the connection open");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn half_sent_requests_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app_with(|c| c.http.header_timeout_ms = 300).await;
    let mut half = raw(&app).await;
    half.write_all(b"POST /api/items/x/purchase HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    closed_by_server(&mut half, Duration::from_secs(5)).await;

    let mut idle = raw(&app).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let answered = closed_by_server(&mut idle, Duration::from_secs(5)).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app_with(|c| {
        c.http.max_connections = 2;
        c.http.header_timeout_ms = 60_000;
    })
    .await;
    let first = raw(&app).await;
    let _second = raw(&app).await;
    let mut third = raw(&app).await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "served past MAX_CONNECTIONS");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// A request held up past `REQUEST_TIMEOUT_MS` (its Redis frozen, with a
/// longer Redis timeout) is answered with the JSON 503 of every other
/// failure, at the request timeout, not the Redis one. A purchase answers
/// for itself before that: its script was sent, so it cannot say it bought
/// nothing, and says `outcome_unknown` with the order id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_request_timeout_gets_a_json_503() {
    let redis = crate::helpers::fresh_redis();
    let app = crate::helpers::spawn_app_on(&redis.url(), |c| {
        // Room for the item's creation on a loaded machine, far below the
        // Redis timeout.
        c.http.request_timeout_ms = 2_000;
        c.redis.redis_timeout_ms = 30_000;
    })
    .await;
    let item = unique("slow");
    app.create_item(&item, 5, 1).await;
    redis.pause();
    let started = std::time::Instant::now();
    let view = app.item_response(&item).await;
    let purchase = app.purchase(&item, "u1", "lua").await;
    let took = started.elapsed();
    redis.resume();
    let body = assert_error(view, 503, "unavailable").await;
    assert!(
        took < Duration::from_secs(20),
        "answered after {took:?}: by the Redis timeout, not the request's: {body}"
    );
    // The request timeout's own answer, not another failure's.
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("the service is unavailable")),
        "{body}"
    );
    let body = assert_error(purchase, 503, "outcome_unknown").await;
    assert!(body["error"]["order_id"].is_string(), "{body}");
}

/// Shutdown with a client that never finishes its request: the process does
/// not wait for it past the request timeout.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_half_sent_request() {
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app_with(|c| {
        c.http.request_timeout_ms = 1_000;
        c.http.header_timeout_ms = 600_000;
    })
    .await;
    let mut half = raw(&app).await;
    half.write_all(b"POST /api/items/x/purchase HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("shutdown finished within the request timeout, not the client's pleasure");
}

#[tokio::test]
async fn live_streams_are_capped() {
    let app = crate::helpers::spawn_app_with(|c| c.http.max_live_streams = 2).await;
    let open = || app.client.get(app.url("/api/stats/stream")).send();
    let first = open().await.unwrap();
    let _second = open().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_error(open().await.unwrap(), 503, "unavailable").await;
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = open().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed stream's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keys or values of the wrong type (written by hand, or by a bug) make a
/// `lua` purchase fail with 503 before its first write, and leave only that
/// item out of the listing. Redis does not roll a
/// script back: a check after the decrement would leave a unit gone with no
/// order for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_or_value_fails_a_lua_purchase_before_any_write() {
    // A private Redis: the bad keys must not reach the other tests' listings.
    let private = crate::helpers::fresh_redis();
    let app = crate::helpers::spawn_app_on(&private.url(), |_| {}).await;
    let mut redis = app.redis().await;
    // A buyer's count that is not an integer, under the limit as a number;
    // then a stock that Lua reads as a number but Redis cannot decrement.
    let item = unique("badheld");
    let created = app
        .put_item(
            &item,
            serde_json::json!({"stock": 5, "per_user_limit": 2, "strategy": "lua"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let keys = crate::helpers::keys(&item);
    let _: () = redis::cmd("HSET")
        .arg(keys.buyers())
        .arg("u1")
        .arg("1.5")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_error(app.purchase(&item, "u1", "lua").await, 503, "unavailable").await;
    let view = app.item(&item).await;
    assert_eq!(
        (view["stock"].as_i64(), view["sold"].as_u64()),
        (Some(5), Some(0)),
        "{view}"
    );
    let _: () = redis::cmd("SET")
        .arg(keys.stock())
        .arg("5 ")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_error(app.purchase(&item, "u2", "lua").await, 503, "unavailable").await;
    let logged: u64 = redis::cmd("XLEN")
        .arg(keys.orders())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        logged, 0,
        "an order was appended for a purchase that failed"
    );

    // An order log that is not a stream.
    let item = unique("badlog");
    let created = app
        .put_item(&item, serde_json::json!({"stock": 5, "strategy": "lua"}))
        .await;
    assert_eq!(created.status(), 201);
    let keys = crate::helpers::keys(&item);
    let _: () = redis::cmd("SET")
        .arg(keys.orders())
        .arg("not a stream")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_error(app.purchase(&item, "u1", "lua").await, 503, "unavailable").await;
    let (stock, held): (i64, Option<i64>) = redis::pipe()
        .cmd("GET")
        .arg(keys.stock())
        .cmd("HGET")
        .arg(keys.buyers())
        .arg("u1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        (stock, held),
        (5, None),
        "a write happened before the failure"
    );

    // The unreadable items are left out of the listing; the others still show.
    let good = unique("good");
    let created = app.put_item(&good, serde_json::json!({"stock": 5})).await;
    assert_eq!(created.status(), 201);
    let items: serde_json::Value = app.get_json("/api/items").await;
    let ids: Vec<&str> = items
        .as_array()
        .expect("a listing, not an error")
        .iter()
        .filter_map(|i| i["item_id"].as_str())
        .collect();
    assert_eq!(ids, [good.as_str()], "{items}");
}

/// A stock Lua reads as a number but Redis's `DECR` and `DECRBY` refuse (a
/// leading zero, a value past 64 bits) fails a `lua` or `lua-batch` purchase
/// with 503 before its first write. Read loosely, the script would append the
/// order and only then fail on the decrement: an order in the log, and soon
/// in SQL, for a purchase that was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_redis_cannot_decrement_fails_before_the_order_is_appended() {
    // A private Redis: the bad stocks must not reach the other tests' listings.
    let private = crate::helpers::fresh_redis();
    let app = crate::helpers::spawn_app_on(&private.url(), |_| {}).await;
    let mut redis = app.redis().await;
    for strategy in ["lua", "lua-batch"] {
        for stock in ["05", "99999999999999999999"] {
            let item = unique("undecrementable");
            let created = app
                .put_item(&item, serde_json::json!({"stock": 5, "strategy": strategy}))
                .await;
            assert_eq!(created.status(), 201);
            let _: () = redis::cmd("SET")
                .arg(crate::helpers::keys(&item).stock())
                .arg(stock)
                .query_async(&mut redis)
                .await
                .unwrap();
            let before = app.redis_snapshot(&item).await;
            assert_error(
                app.purchase(&item, "u1", strategy).await,
                503,
                "unavailable",
            )
            .await;
            assert_eq!(
                app.redis_snapshot(&item).await,
                before,
                "{strategy} with stock {stock:?} wrote before failing"
            );
        }
    }
}

/// A raw connection from the loopback address `from` (all of 127.0.0.0/8 is
/// this host), receiving into a buffer of about `recv_buffer` bytes, or the
/// system's default.
async fn raw_from(
    app: &crate::helpers::TestApp,
    from: &str,
    recv_buffer: Option<u32>,
) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let address = app.address.trim_start_matches("http://");
    socket.connect(address.parse().unwrap()).await.unwrap()
}

/// Clients that pipeline requests for a large answer and never read, with a
/// small receive buffer, as many as `MAX_CONNECTIONS`: each is cut off once
/// its response has made no progress for `WRITE_TIMEOUT_MS`, and `/healthz`
/// is answered. Without the timeout they hold every slot for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_cut_off_and_free_their_slots() {
    use tokio::io::AsyncWriteExt;
    const CLIENTS: usize = 20;
    let app = crate::helpers::spawn_app_with(|c| {
        c.http.max_connections = CLIENTS;
        c.http.write_timeout_ms = 500;
    })
    .await;
    let requests = "GET /api/openapi.json HTTP/1.1\r\nHost: a\r\n\r\n".repeat(500);
    let mut hostile = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = raw_from(&app, "127.0.0.1", Some(4096)).await;
        // The server reads its requests while the answers fit in the socket
        // buffers; the rest stay unread in ours, which is fine.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            stream.write_all(requests.as_bytes()),
        )
        .await;
        hostile.push(stream);
    }
    let answered = tokio::time::timeout(Duration::from_secs(20), reqwest::get(app.url("/healthz")))
        .await
        .expect("/healthz answered while the non-readers were connected");
    assert_eq!(answered.unwrap().status(), 200);
    drop(hostile);
}

/// One host at `MAX_CONNECTIONS_PER_IP` has its next connection closed at
/// once, while another host is served; a closed connection gives its slot
/// back.
#[tokio::test]
async fn a_peer_at_its_connection_cap_is_closed_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let app = crate::helpers::spawn_app_with(|c| {
        c.http.max_connections_per_ip = 2;
        c.http.header_timeout_ms = 60_000;
    })
    .await;
    let first = raw(&app).await;
    let _second = raw(&app).await;
    let mut third = raw(&app).await;
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let refused = closed_by_server(&mut third, Duration::from_secs(5)).await;
    assert!(refused.is_empty(), "served past the cap: {refused}");

    let mut other = raw_from(&app, "127.0.0.2", None).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let served = closed_by_server(&mut other, Duration::from_secs(5)).await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");

    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = raw(&app).await;
        let _ = again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await;
        if closed_by_server(&mut again, Duration::from_secs(5))
            .await
            .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a closed connection's slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
