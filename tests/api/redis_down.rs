//! Redis killed mid-run: purchases get 503 `unavailable`, then succeed again
//! once Redis is back, without restarting the service.

use std::time::{Duration, Instant};

use seckill::infra::redis_server::{RedisServer, RedisServerOptions};

use crate::helpers::{assert_error, spawn_app_on, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_fail_with_503_while_redis_is_down_and_recover_after() {
    // A private Redis, since this test kills it. The append-only file brings
    // the item back after the restart, like a real Redis with persistence.
    let dir = std::env::temp_dir().join(unique("seckill-aof"));
    let options = RedisServerOptions {
        dir: Some(dir.clone()),
        append_only: Some(seckill::infra::redis_server::Fsync::Always),
        ..RedisServerOptions::default()
    };
    let mut redis = crate::helpers::fresh_redis_with(options.clone());
    let app = spawn_app_on(&redis.url(), |c| {
        c.redis.redis_timeout_ms = 500;
        c.lease.worker_id = Some(1);
    })
    .await;
    // One item per strategy: a sale is bound to one.
    let strategies = crate::helpers::all_strategies();
    let prefix = unique("outage");
    let item = |strategy: &str| format!("{prefix}-{strategy}");
    for strategy in strategies {
        app.create_item(&item(strategy), 100, 1).await;
        assert_eq!(
            app.purchase(&item(strategy), "before", strategy)
                .await
                .status(),
            201
        );
    }

    redis.kill();
    for (i, strategy) in strategies.into_iter().enumerate() {
        let response = app
            .purchase(&item(strategy), &format!("during{i}"), strategy)
            .await;
        assert!(response.headers().contains_key("retry-after"));
        assert_error(response, 503, "unavailable").await;
    }
    assert_error(
        app.client.get(app.url("/readyz")).send().await.unwrap(),
        503,
        "unavailable",
    )
    .await;

    let _redis = RedisServer::start(RedisServerOptions {
        port: Some(redis.port()),
        ..options
    })
    .unwrap();
    for strategy in strategies {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = app
                .purchase(&item(strategy), &format!("after-{strategy}"), strategy)
                .await
                .status();
            if status == 201 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{strategy} did not recover: last status {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for strategy in strategies {
        let view = app.item(&item(strategy)).await;
        assert_eq!(view["sold"], 2, "{view}");
        assert_eq!(view["drift"], 0, "{view}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
