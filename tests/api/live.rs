//! The status page's feed and race control.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, spawn_app_with, unique};

/// The first live snapshot in which `accept` holds, read from the SSE stream.
async fn next_event_where(app: &TestApp, accept: impl Fn(&Value) -> bool) -> Value {
    let mut response = app
        .client
        .get(app.url("/api/stats/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = String::new();
    while Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("stream stays open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                let snapshot: Value = serde_json::from_str(data).unwrap();
                if accept(&snapshot) {
                    return snapshot;
                }
            }
        }
    }
    panic!("no matching event within 10 s");
}

fn item_in<'a>(snapshot: &'a Value, item: &str) -> Option<&'a Value> {
    snapshot["items"]
        .as_array()?
        .iter()
        .find(|i| i["item_id"] == item)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_carries_each_items_truths_and_live_figures() {
    let app = spawn_app().await;
    let item = unique("live");
    app.create_item(&item, 5, 1).await;
    for user in ["l1", "l2", "l3"] {
        assert_eq!(app.purchase(&item, user, "lua").await.status(), 201);
    }
    let snapshot = next_event_where(&app, |s| {
        item_in(s, &item).is_some_and(|i| i["strategies"]["lua"]["purchased"] == 3)
    })
    .await;
    let seen = item_in(&snapshot, &item).unwrap();
    let api = app.item(&item).await;
    for field in [
        "stock",
        "sold",
        "oversold",
        "drift",
        "undersold",
        "initial_stock",
    ] {
        assert_eq!(seen[field], api[field], "{field}");
    }
    let live = &seen["live"]["lua"];
    assert!(live["p99_ms"].as_f64().unwrap() > 0.0, "{live}");
    assert!(live["history"].as_array().is_some());

    let latest: Value = app.get_json("/api/stats").await;
    assert!(item_in(&latest, &item).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_from_the_page_sells_each_strategys_item_and_catches_naive() {
    let app = spawn_app_with(|c| c.lab.race_window_ms = 5).await;
    let response = app
        .client
        .post(app.url("/api/race"))
        .json(&json!({"strategies": ["naive", "lua", "lock-gated"], "stock": 60, "concurrency": 8, "duration_s": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let busy = app
        .client
        .post(app.url("/api/race"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(busy, 409, "race_running").await;

    let done = next_event_where(&app, |s| {
        s["race"]["running"] == false && s["race"]["phase"] == "done"
    })
    .await;
    let results = done["race"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{results:?}");
    for line in results {
        let item = line["item"].as_str().unwrap();
        let view = app.item(item).await;
        match line["strategy"].as_str().unwrap() {
            "naive" => {
                assert!(view["oversold"].as_u64().unwrap() > 0, "{view}");
                assert_eq!(line["linearizable"], false, "{line}");
                assert!(line["violation"].is_string(), "{line}");
            }
            _ => {
                assert_eq!(line["linearizable"], true, "{line}");
                assert_eq!(line["phantom_sold_out"], 0, "{line}");
                assert_eq!(
                    (view["sold"].as_u64(), view["oversold"].as_u64()),
                    (Some(60), Some(0)),
                    "{view}"
                );
                assert_eq!(line["oversold"], 0);
            }
        }
    }
}

/// A race with a payment window: each sale sells out, refills from the
/// expired half and sells again, exact, and the race says how many units
/// came back; the feed carries the expiry lag.
#[tokio::test]
async fn a_race_with_a_payment_window_shows_units_coming_back() {
    let app = spawn_app_with(|c| c.orders.expiry_interval_ms = 20).await;
    let response = app
        .client
        .post(app.url("/api/race"))
        .json(
            &json!({"strategies": ["lua", "lock"], "stock": 20, "concurrency": 4,
                      "duration_s": 3, "payment_window_ms": 300}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let done = next_event_where(&app, |s| {
        s["race"]["running"] == false && s["race"]["phase"] == "done"
    })
    .await;
    let results = done["race"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{results:?}");
    for line in results {
        assert_eq!(line["linearizable"], true, "{line}");
        assert_eq!(line["oversold"], 0, "{line}");
        assert!(
            line["returned"].as_u64().unwrap() > 0,
            "nothing came back: {line}"
        );
        assert!(
            line["sold"].as_u64().unwrap() > 20,
            "the sale never sold its returns again: {line}"
        );
        let view = app.item(line["item"].as_str().unwrap()).await;
        assert_eq!(view["payment_window_ms"], 300, "{view}");
        assert_eq!(view["drift"], 0, "{view}");
    }
    let snapshot = next_event_where(&app, |s| s["expiry_lag_ms"].is_u64()).await;
    assert!(
        snapshot["expiry_lag_ms"].as_u64().unwrap() < 60_000,
        "{snapshot}"
    );
    let bad = app
        .client
        .post(app.url("/api/race"))
        .json(&json!({"payment_window_ms": 60_001}))
        .send()
        .await
        .unwrap();
    assert_error(bad, 400, "invalid_request").await;
}

#[tokio::test]
async fn races_obey_the_admin_rules_and_validate_input() {
    let app = spawn_app_with(|c| c.http.admin_token = Some("t0ken".into())).await;
    let unauthorised = app
        .client
        .post(app.url("/api/race"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_error(unauthorised, 401, "unauthorized").await;
    for bad in [
        json!({"stock": 0}),
        json!({"concurrency": 10_000}),
        json!({"strategies": ["fast"]}),
        json!({"colour": 1}),
    ] {
        let response = app
            .client
            .post(app.url("/api/race"))
            .bearer_auth("t0ken")
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn the_status_page_and_its_files_are_served() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("/static/app.js") && html.contains("/static/style.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no request leaves the machine"
    );
    for file in ["/static/app.js", "/static/style.css"] {
        let response = app.client.get(app.url(file)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("https://"),
            "{file} loads nothing from outside"
        );
    }
}
