//! The API's happy paths and shapes.

use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app, status_and_json, unique};

#[tokio::test]
async fn a_purchase_returns_a_decimal_string_order_id_that_decodes() {
    let app = spawn_app().await;
    let item = unique("shape");
    app.create_item(&item, 3, 1).await;
    let (status, body) = status_and_json(app.purchase(&item, "u1", "lua").await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["item_id"], item.as_str());
    assert_eq!(body["user_id"], "u1");
    assert_eq!(body["strategy"], "lua");
    assert_eq!(body["remaining"], 2);
    let id = body["order_id"].as_str().expect("order_id is a string");
    assert!(id.parse::<u64>().is_ok(), "{id}");

    let (status, decoded) = status_and_json(
        app.client
            .get(app.url(&format!("/api/ids/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(decoded["id"], id);
    assert!(decoded["worker"].as_u64().unwrap() <= 1023);
    assert!(
        decoded["time"].as_str().unwrap().starts_with("20"),
        "{decoded}"
    );
    let age_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - decoded["unix_ms"].as_u64().unwrap();
    assert!(age_ms < 60_000, "the id's time is now-ish: {age_ms} ms ago");
}

#[tokio::test]
async fn an_id_that_is_not_a_snowflake_is_400() {
    let app = spawn_app().await;
    for bad in ["abc", "-1", "18446744073709551615"] {
        let response = app.get(&format!("/api/ids/{bad}")).await;
        assert_error(response, 400, "invalid_request").await;
    }
}

#[tokio::test]
async fn the_strategy_defaults_to_lua_and_the_query_string_works_alone() {
    let app = spawn_app().await;
    // One item per strategy: a sale is bound to one.
    let prefix = unique("query");
    let url = |strategy: &str| app.url(&format!("/api/items/{prefix}-{strategy}/purchase"));
    for strategy in ["lua", "lock", "optimistic"] {
        app.create_item(&format!("{prefix}-{strategy}"), 5, 1).await;
    }
    let (status, body) = status_and_json(
        app.client
            .post(format!("{}?user_id=q1", url("lua")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), &body["strategy"]), (201, &json!("lua")));
    let (status, body) = status_and_json(
        app.client
            .post(format!("{}?user_id=q2&strategy=lock", url("lock")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status.as_u16(), &body["strategy"]), (201, &json!("lock")));
    // The same value in both places is not a conflict.
    let response = app
        .client
        .post(format!("{}?strategy=optimistic", url("optimistic")))
        .json(&json!({"user_id":"q3","strategy":"optimistic"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// The catalogue: every strategy the code knows, in order, and each one it
/// says this instance serves does serve a purchase under its own name (a
/// catalogue that said `enabled` of a strategy the registry could not hand
/// out would fail here).
#[tokio::test]
async fn the_strategy_catalogue_lists_every_strategy_and_the_default() {
    let app = spawn_app().await;
    let catalogue: Value = app.get_json("/api/strategies").await;
    let names: Vec<&str> = catalogue["strategies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, crate::helpers::all_strategies().to_vec());
    for strategy in catalogue["strategies"].as_array().unwrap() {
        assert!(
            !strategy["guard"].as_str().unwrap().is_empty(),
            "{strategy}"
        );
        if strategy["enabled"] != true {
            continue;
        }
        let name = strategy["name"].as_str().unwrap();
        let item = unique(name);
        app.create_item(&item, 1, 1).await;
        let (status, body) = status_and_json(app.purchase(&item, "u1", name).await).await;
        assert_eq!((status.as_u16(), &body["strategy"]), (201, &json!(name)));
    }
    assert_eq!(catalogue["default"], "lua");
}

#[tokio::test]
async fn every_strategy_honours_a_per_user_limit_above_one() {
    let app = spawn_app().await;
    for strategy in ["naive", "optimistic", "lock", "lua", "sql"] {
        let item = unique(strategy);
        app.create_item(&item, 10, 2).await;
        assert_eq!(app.purchase(&item, "u", strategy).await.status(), 201);
        assert_eq!(app.purchase(&item, "u", strategy).await.status(), 201);
        let body = assert_error(
            app.purchase(&item, "u", strategy).await,
            409,
            "limit_reached",
        )
        .await;
        assert!(body["error"]["message"].as_str().unwrap().contains('2'));
        let view = app.item(&item).await;
        assert_eq!(
            (view["stock"].as_i64(), view["sold"].as_u64()),
            (Some(8), Some(2)),
            "{strategy}"
        );
        let counters = &view["strategies"][strategy];
        assert_eq!(
            (
                &counters["attempts"],
                &counters["purchased"],
                &counters["limit_reached"]
            ),
            (&json!(3), &json!(2), &json!(1)),
            "{strategy}: {counters}"
        );
    }
}

#[tokio::test]
async fn a_restock_starts_the_sale_over_and_keeps_the_old_order_log() {
    let app = spawn_app().await;
    let item = unique("again");
    app.create_item(&item, 1, 1).await;
    assert_eq!(app.purchase(&item, "u1", "lua").await.status(), 201);
    assert_error(app.purchase(&item, "u2", "lua").await, 409, "sold_out").await;

    let (status, view) = status_and_json(app.restock(&item, 4, 1).await).await;
    assert_eq!(status, 200, "a restock of an existing item is 200: {view}");
    assert_eq!(view["generation"], 2);
    assert_eq!(view["stock"], 4);
    assert_eq!(view["sold"], 0);
    assert_eq!(view["strategies"], json!({}), "counters reset");
    assert_eq!(
        app.purchase(&item, "u1", "lua").await.status(),
        201,
        "buyers reset"
    );

    let mut redis = app.redis().await;
    let archived: Vec<String> = redis::cmd("KEYS")
        .arg(crate::helpers::keys(&item).archive_pattern())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(archived.len(), 1, "the first sale's order log is kept");
    let len: u64 = redis::cmd("XLEN")
        .arg(&archived[0])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(len, 1);
}

#[tokio::test]
async fn the_item_list_shows_created_items_with_their_truths() {
    let app = spawn_app().await;
    let item = unique("listed");
    app.create_item(&item, 7, 1).await;
    let items: Vec<Value> = app.get_json("/api/items").await;
    let found = items
        .iter()
        .find(|v| v["item_id"] == item.as_str())
        .expect("listed");
    for field in [
        "initial_stock",
        "stock",
        "per_user_limit",
        "sold",
        "oversold",
        "drift",
        "undersold",
        "persisted",
        "strategies",
    ] {
        assert!(found.get(field).is_some(), "missing {field}: {found}");
    }
    assert_eq!(found["initial_stock"], 7);
}

/// The served document is the generated one, and describes the purchase the
/// server really answers: a 201's fields are the schema's.
#[tokio::test]
async fn the_openapi_document_is_served_and_matches_a_real_purchase() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let schema = &doc["components"]["schemas"]["Purchased"];
    let mut documented: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    documented.sort_unstable();

    let item = unique("oa");
    let created = app
        .put_item(&item, json!({"stock": 5, "per_user_limit": 1}))
        .await;
    assert_eq!(created.status(), 201);
    let bought = app.purchase(&item, "u1", "lua").await;
    assert_eq!(bought.status(), 201);
    let body: Value = bought.json().await.unwrap();
    let mut served: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    served.sort_unstable();
    assert_eq!(documented, served);
    let required = schema["required"].as_array().unwrap();
    assert_eq!(required.len(), served.len(), "{schema}");
}
