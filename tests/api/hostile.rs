//! Hostile input cannot take the service down: floods of junk ids, slow or
//! idle clients, and admin requests from where they should not come.

use std::sync::Arc;

use tokio::task::JoinSet;

use crate::helpers::{spawn_app, unique};

/// Every strategy name a client may send.
const STRATEGIES: [&str; 8] = [
    "naive",
    "optimistic",
    "optimistic-gated",
    "lock",
    "lock-gated",
    "lua",
    "redlock",
    "sql",
];

async fn metric(app: &crate::helpers::TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
                let strategy = STRATEGIES[(worker + n) % STRATEGIES.len()];
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
        .arg(format!("seckill:{{{prefix}*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
