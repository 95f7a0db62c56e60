use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn readyz_answers_ok_while_redis_does() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/nope")).send().await.unwrap();
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn a_wrong_method_is_a_json_405() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.url("/api/items"))
        .send()
        .await
        .unwrap();
    assert_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn metrics_count_purchases_by_strategy_and_show_item_gauges() {
    let app = crate::helpers::spawn_app_with(|c| c.lab.race_window_ms = 100).await;
    let item = crate::helpers::unique("metered");
    app.create_item(&item, 1, 1).await;
    // Two naive buyers inside the race window: both succeed, one oversold.
    let (a, b) = tokio::join!(
        app.purchase(&item, "m1", "naive"),
        app.purchase(&item, "m2", "naive")
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));
    // The sale is naive's: another strategy is refused, and counted.
    assert_eq!(app.purchase(&item, "m3", "lua").await.status(), 409);

    let text = app.metrics_text().await;
    for expected in [
        r#"seckill_purchases_total{strategy="naive",outcome="purchased"} 2"#.to_owned(),
        r#"seckill_purchases_total{strategy="lua",outcome="strategy_mismatch"} 1"#.to_owned(),
        r#"seckill_purchase_duration_seconds_count{strategy="naive"} 2"#.to_owned(),
        format!(r#"seckill_item_oversold{{item="{item}"}} 1"#),
        format!(r#"seckill_item_sold{{item="{item}"}} 2"#),
        format!(r#"seckill_persister_lag{{item="{item}"}}"#),
    ] {
        assert!(text.contains(&expected), "missing {expected} in\n{text}");
    }
}
