//! `Idempotency-Key`: a purchase takes effect at most once per key, on any
//! instance; a client that timed out asks again and learns its order id.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, spawn_app_with, status_and_json, unique};

#[tokio::test]
async fn a_repeated_key_replays_the_first_response_on_any_instance() {
    let (a, b) = (spawn_app().await, spawn_app().await);
    let item = unique("idem");
    a.create_item(&item, 10, 3).await;
    let key = uuid::Uuid::new_v4().to_string();
    let (status, first) =
        status_and_json(a.purchase_with_key(&item, "u1", "lua", &key).await).await;
    assert_eq!(status, 201, "{first}");
    for app in [&a, &b] {
        let response = app
            .purchase_with_key(&item, "u1", "lua", &format!("\"{key}\""))
            .await;
        assert_eq!(response.headers()["idempotency-replayed"], "true");
        let (status, again) = status_and_json(response).await;
        assert_eq!(
            (status.as_u16(), &again),
            (201, &first),
            "the same order, once"
        );
    }
    let view = a.item(&item).await;
    assert_eq!(
        (&view["sold"], &view["stock"]),
        (&json!(1), &json!(9)),
        "{view}"
    );

    // Another key is another purchase.
    let other = a.purchase_with_key(&item, "u1", "lua", "another-key").await;
    assert_eq!(other.status(), 201);
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let item = unique("idem-reuse");
    app.create_item(&item, 10, 1).await;
    assert_eq!(
        app.purchase_with_key(&item, "u1", "lua", "k1")
            .await
            .status(),
        201
    );
    let before = app.redis_snapshot(&item).await;
    assert_error(
        app.purchase_with_key(&item, "u2", "lua", "k1").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_error(
        app.purchase_with_key(&item, "u1", "naive", "k1").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(app.redis_snapshot(&item).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_while_the_first_is_in_flight_is_told_so() {
    let app = Arc::new(spawn_app_with(|c| c.lab.race_window_ms = 400).await);
    let item = unique("idem-flight");
    app.create_item(&item, 10, 1).await;
    let first = {
        let (app, item) = (Arc::clone(&app), item.clone());
        tokio::spawn(async move {
            app.purchase_with_key(&item, "slow", "lock", "k-flight")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_error(
        app.purchase_with_key(&item, "slow", "lock", "k-flight")
            .await,
        409,
        "idempotency_in_flight",
    )
    .await;
    let (status, body) = status_and_json(first.await.unwrap()).await;
    assert_eq!(status, 201, "{body}");
    let (status, again) = status_and_json(
        app.purchase_with_key(&item, "slow", "lock", "k-flight")
            .await,
    )
    .await;
    assert_eq!(
        (status.as_u16(), &again["order_id"]),
        (201, &body["order_id"])
    );
}

#[tokio::test]
async fn bad_keys_and_missing_items_store_nothing() {
    let app = spawn_app().await;
    let item = unique("idem-bad");
    app.create_item(&item, 10, 1).await;
    for bad in ["", "with space", &"x".repeat(65)] {
        assert_error(
            app.purchase_with_key(&item, "u1", "lua", bad).await,
            400,
            "invalid_request",
        )
        .await;
    }
    let ghost = unique("idem-ghost");
    assert_error(
        app.purchase_with_key(&ghost, "u1", "lua", "k").await,
        404,
        "item_not_found",
    )
    .await;
    assert!(app.redis_snapshot(&ghost).await.is_empty());
    let view: Value = app.item(&item).await;
    assert_eq!(view["sold"], 0, "{view}");
}

/// Only a purchase is kept: a refusal changed nothing, so a repeat asks
/// again, and a flood of fresh keys on refusals stores nothing.
#[tokio::test]
async fn refusals_are_not_kept() {
    let app = spawn_app().await;
    let item = unique("idem-refused");
    app.create_item(&item, 0, 1).await;
    for n in 0..20 {
        assert_error(
            app.purchase_with_key(&item, "u1", "lua", &format!("flood-{n}"))
                .await,
            409,
            "sold_out",
        )
        .await;
    }
    let stored = app.redis_snapshot(&item).await;
    assert!(
        stored.keys().all(|k| !k.contains(":idem:")),
        "records for refusals: {stored:?}"
    );
    app.restock(&item, 1, 1).await;
    let (status, body) =
        status_and_json(app.purchase_with_key(&item, "u1", "lua", "flood-0").await).await;
    assert_eq!(status, 201, "the repeat asked again: {body}");
}

/// `IDEMPOTENCY_TTL_S=0` would delete each key's record as it is written, so
/// a repeated key would buy again: the binary refuses to start, naming the
/// setting, before it starts or connects to anything.
#[tokio::test]
async fn the_binary_refuses_a_zero_idempotency_ttl_by_name() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_seckill"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "LISTEN",
            format!("127.0.0.1:{}", crate::process::free_port()),
        )
        .env("REDIS_URL", crate::helpers::shared_redis().url())
        .env("IDEMPOTENCY_TTL_S", "0")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the binary exits instead of serving")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started: {stderr}");
    assert!(
        stderr.contains("IDEMPOTENCY_TTL_S (--idempotency-ttl-s) = 0"),
        "{stderr}"
    );
}
