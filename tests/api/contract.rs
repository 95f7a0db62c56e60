//! The OpenAPI document against the server: what schemathesis (`.ci/fuzz`)
//! found them to disagree on, each held here so the fix stays. Bounds are
//! read from the served document and probed at the edge: at the bound
//! accepted, one past it refused.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, unique};

async fn document(app: &TestApp) -> Value {
    app.get_json("/api/openapi.json").await
}

/// `value`, or what its `$ref` names; panics on a dangling reference (the
/// document once named a `Direction` schema it did not hold).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected reference {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(!target.is_null(), "{reference} does not resolve");
            target
        }
        None => value,
    }
}

fn every_ref(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                found.push(r.clone());
            }
            map.values().for_each(|v| every_ref(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| every_ref(v, found)),
        _ => {}
    }
}

/// `success` is the status of an accepted request; `None`: a 400 refusal.
async fn accepted_or_refused(response: reqwest::Response, success: Option<u16>, what: &str) {
    match success {
        Some(status) => assert_eq!(response.status(), status, "{what}"),
        None => {
            assert_error(response, 400, "invalid_request").await;
        }
    }
}

fn bounds(schema: &Value) -> (u64, u64) {
    (
        schema["minimum"].as_u64().expect("a minimum"),
        schema["maximum"].as_u64().expect("a maximum"),
    )
}

fn query_param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|params| params.iter().find(|p| p["name"] == name))
        .map(|p| non_null(doc, &p["schema"]))
        .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
}

/// The schema of an optional value: utoipa writes `Option<T>` as
/// `oneOf: [null, T]`.
fn non_null<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let schema = schema["oneOf"]
        .as_array()
        .and_then(|options| options.iter().find(|o| o["type"] != "null"))
        .unwrap_or(schema);
    resolve(doc, schema)
}

#[tokio::test]
async fn every_reference_resolves_and_admin_auth_has_both_modes() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let mut refs = Vec::new();
    every_ref(&doc, &mut refs);
    assert!(refs.iter().any(|r| r.ends_with("/Direction")), "{refs:?}");
    for reference in &refs {
        resolve(&doc, &json!({ "$ref": reference }));
    }
    for (path, method) in [
        ("/api/items/{item}", "put"),
        ("/api/race", "post"),
        ("/api/race", "delete"),
        ("/api/faults", "post"),
        ("/api/faults", "delete"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"admin_token": []}, {}]),
            "{method} {path}"
        );
    }
    let scheme = &doc["components"]["securitySchemes"]["admin_token"];
    let description = scheme["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("ADMIN_TOKEN") && description.contains("loopback"),
        "{scheme}"
    );
    // The live feed's schema describes one event, as an SSE reader parses it.
    let event = resolve(
        &doc,
        &doc["paths"]["/api/stats/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"]
            ["schema"],
    );
    assert_eq!(event["properties"]["event"]["enum"], json!(["stats"]));
    assert_eq!(event["required"], json!(["event", "data"]));
    // The page's files answer the API's JSON error.
    let missing = &doc["paths"]["/static/{file}"]["get"]["responses"]["404"];
    assert!(
        !missing["content"]["application/json"].is_null(),
        "{missing}"
    );
}

#[tokio::test]
async fn the_documented_bounds_are_the_enforced_ones() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let schemas = &doc["components"]["schemas"];

    let (min, max) = bounds(&schemas["ItemInput"]["properties"]["stock"]);
    assert_eq!((min, max), (0, seckill::sale::MAX_STOCK));
    let item = unique("bounds");
    let put = |body: Value| app.put_item(&item, body);
    assert!(put(json!({"stock": max})).await.status().is_success());
    assert_error(put(json!({"stock": max + 1})).await, 400, "invalid_request").await;
    let (min, max) = bounds(&schemas["ItemInput"]["properties"]["per_user_limit"]);
    assert_eq!((min, max), (1, seckill::sale::MAX_PER_USER_LIMIT));
    for (limit, ok) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let response = put(json!({"stock": 1, "per_user_limit": limit})).await;
        accepted_or_refused(response, ok.then_some(200), &format!("limit {limit}")).await;
    }

    let (min, max) = bounds(query_param(&doc, "/api/orders", "get", "limit"));
    for (limit, ok) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let response = app.get(&format!("/api/orders?limit={limit}")).await;
        accepted_or_refused(response, ok.then_some(200), &format!("limit {limit}")).await;
    }

    // Past each bound of a race and of a fault lab run is refused (at the
    // bound one would start).
    for (path, schema, fields, lists) in [
        (
            "/api/race",
            "RaceInput",
            &["stock", "concurrency", "duration_s"][..],
            &["strategies"][..],
        ),
        (
            "/api/faults",
            "FaultInput",
            &["before_s", "hold_s", "after_s"][..],
            &["strategies", "faults"][..],
        ),
    ] {
        let properties = &schemas[schema]["properties"];
        for field in fields {
            let (min, max) = bounds(&properties[field]);
            assert!(min >= 1, "{schema}.{field}");
            for past in [min - 1, max + 1] {
                let response = app
                    .client
                    .post(app.url(path))
                    .json(&json!({ *field: past }))
                    .send()
                    .await
                    .unwrap();
                assert_error(response, 400, "invalid_request").await;
            }
        }
        for list in lists {
            assert_eq!(properties[list]["uniqueItems"], true, "{schema}.{list}");
        }
    }

    // Ids: the lengths and characters `domain.rs` checks.
    for name in ["ItemId", "UserId"] {
        let id = &schemas[name];
        assert_eq!(id["maxLength"], seckill::domain::MAX_ID_LEN, "{name}");
        assert_eq!(id["minLength"], 1, "{name}");
        assert!(id["pattern"].is_string(), "{name}");
    }

    // The Idempotency-Key: its pattern is the one the parser matches.
    let key = query_param(
        &doc,
        "/api/items/{item}/purchase",
        "post",
        "Idempotency-Key",
    );
    assert_eq!(
        key["pattern"],
        seckill::sale::idempotency::IdempotencyKey::pattern()
    );
    let max_key = seckill::sale::idempotency::MAX_KEY_LEN;
    app.create_item(&item, 10, 10).await;
    for (raw, ok) in [
        ("k".repeat(max_key), true),
        (format!("\"{}\"", "q".repeat(max_key)), true),
        ("k".repeat(max_key + 1), false),
        ("\"\"".to_owned(), false),
    ] {
        let response = app.purchase_with_key(&item, "u1", "lua", &raw).await;
        accepted_or_refused(response, ok.then_some(201), &raw).await;
    }
}

/// JSON Schema's `integer` takes `5.0`, bodies are objects (serde also reads
/// a struct from an array), an optional body may be `null`, and a race's
/// body is required, as its content type is.
#[tokio::test]
async fn bodies_are_what_the_document_says() {
    let app = spawn_app().await;
    let item = unique("bodies");
    let response = app
        .put_item(&item, json!({"stock": 5.0, "per_user_limit": 2.0}))
        .await;
    assert_eq!(response.status(), 201);
    for bad in [
        json!({"stock": "5"}),
        json!({"stock": 5.5}),
        json!({"stock": -1}),
        json!({"stock": 5, "per_user_limit": null}),
        json!([5, 1, null]),
    ] {
        assert_error(
            app.put_item(&item, bad.clone()).await,
            400,
            "invalid_request",
        )
        .await;
    }
    let purchase = app.url(&format!("/api/items/{item}/purchase?user_id=u1"));
    let response = app
        .client
        .post(&purchase)
        .header("content-type", "application/json")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = app
        .client
        .post(&purchase)
        .json(&json!(["u1"]))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request").await;
    for body in ["", "null", "[null, null]"] {
        let response = app
            .client
            .request(Method::POST, app.url("/api/race"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_error(response, 400, "invalid_request").await;
    }
    let response = app
        .client
        .get(app.url("/api/orders?limit=2.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Order ids are 1 to 19 decimal digits up to 2^63 - 1, exactly as the
/// document's pattern says: `u64::from_str` also took `+5` and any number of
/// leading zeros.
#[tokio::test]
async fn order_ids_are_the_documented_decimal_strings() {
    let app = spawn_app().await;
    let doc = document(&app).await;
    let pattern = doc["components"]["schemas"]["OrderId"]["pattern"].clone();
    assert_eq!(pattern, seckill::orders::snowflake::OrderId::pattern());
    for (id, ok) in [
        ("0", true),
        ("9223372036854775807", true),
        ("0923372036854775807", true),
        ("9223372036854775808", false),
        ("+5", false),
        ("00000000000000000001", false),
    ] {
        let response = app.get(&format!("/api/ids/{id}")).await;
        accepted_or_refused(response, ok.then_some(200), id).await;
    }
}
