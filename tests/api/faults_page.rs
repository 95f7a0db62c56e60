//! The status page's fault lab control (`POST` and `DELETE /api/faults`):
//! bad input starts nothing, a real run fills its cell in the live snapshot,
//! and a run stopped by `DELETE` or by shutdown leaves no process behind.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::faults::{descendants, exists, stopped};
use crate::helpers::{TestApp, assert_error, spawn_app, spawn_app_with};

async fn post_faults(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/faults"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The fault lab status of the first live snapshot built from now on (the
/// snapshot is rebuilt twice a second: the latest may predate a request).
async fn faults_status(app: &TestApp) -> Value {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats: Value = app.get_json("/api/stats").await;
        if stats["at_ms"].as_u64().is_some_and(|at| at >= now_ms) {
            return stats["faults"].clone();
        }
        assert!(Instant::now() < deadline, "no new snapshot: {stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status once `accept` holds, polled from the live snapshot.
async fn faults_status_when(
    app: &TestApp,
    within: Duration,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = faults_status(app).await;
        if accept(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "not within {within:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// This process's child running the lab with `marker` among its arguments.
fn lab_child(marker: &str) -> Option<u32> {
    descendants(std::process::id()).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&b"ndjson".as_slice())
                && args
                    .windows(2)
                    .any(|w| w == [b"--hold".as_slice(), marker.as_bytes()])
        })
    })
}

#[tokio::test]
async fn bad_input_to_the_fault_lab_is_refused_and_starts_nothing() {
    let app = spawn_app().await;
    for bad in [
        json!({"faults": ["meteor-strike"]}),
        json!({"faults": ["redis-restart"]}),
        json!({"faults": ["redis-pause", "redis-pause"]}),
        json!({"strategies": ["lua", "lua"]}),
        json!({"strategies": ["fast"]}),
        json!({"colour": "red"}),
        json!({"hold_s": 1}),
        json!({"before_s": "2"}),
        json!([]),
    ] {
        let response = post_faults(&app, bad.clone()).await;
        let body = assert_error(response, 400, "invalid_request").await;
        assert!(body["error"]["message"].is_string(), "{bad}: {body}");
    }
    let no_body = app
        .client
        .post(app.url("/api/faults"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(no_body, 400, "invalid_request").await;
    let form = app
        .client
        .post(app.url("/api/faults"))
        .header("content-type", "text/plain")
        .body(r#"{"strategies":["lua"]}"#)
        .send()
        .await
        .unwrap();
    assert_error(form, 415, "unsupported_media_type").await;

    let status = faults_status(&app).await;
    assert_eq!(status["running"], false, "{status}");
    assert_eq!(status["phase"], "", "nothing ever started: {status}");
    assert_eq!(
        status["available_faults"].as_array().map(Vec::len),
        Some(11),
        "{status}"
    );

    // Where the lab is off, a proper request is 404, and bad input still 400.
    let off = spawn_app_with(|c| c.lab.fault_lab = false).await;
    assert_error(
        post_faults(&off, json!({})).await,
        404,
        "fault_lab_disabled",
    )
    .await;
    assert_error(
        post_faults(&off, json!({"faults": ["meteor-strike"]})).await,
        400,
        "invalid_request",
    )
    .await;
    let status = faults_status(&off).await;
    assert_eq!(
        (&status["enabled"], &status["running"]),
        (&json!(false), &json!(false))
    );
}

/// One real cell through the API: `lua` keeps every promise while Redis is
/// paused. Two seconds of pause, a second before and two after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_lab_run_from_the_page_fills_its_cell_and_runs_alone() {
    let app = spawn_app().await;
    let plan = json!({
        "strategies": ["lua"], "faults": ["redis-pause"],
        "before_s": 1, "hold_s": 2, "after_s": 2
    });
    let response = post_faults(&app, plan.clone()).await;
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    assert_eq!(started["running"], true, "{started}");
    assert_eq!(started["strategies"], json!(["lua"]));
    assert_eq!(started["faults"], json!(["redis-pause"]));
    assert_error(post_faults(&app, plan).await, 409, "faults_running").await;

    let done = faults_status_when(&app, Duration::from_secs(120), |s| {
        s["running"] == false && s["strategies"] == json!(["lua"])
    })
    .await;
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["error"], Value::Null, "{done:#}");
    let cells = done["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 1, "{done:#}");
    let cell = &cells[0];
    assert_eq!(
        (&cell["strategy"], &cell["fault"], &cell["judgement"]),
        (&json!("lua"), &json!("redis-pause"), &json!("exact")),
        "{cell:#}"
    );
    assert_eq!(cell["oversold"], 0, "{cell:#}");
    assert!(
        cell["evidence"].as_str().is_some_and(|e| !e.is_empty()),
        "the lab says how it knows Redis was paused: {cell:#}"
    );
    assert!(
        cell["repro"]
            .as_str()
            .unwrap()
            .contains("--faults redis-pause"),
        "{cell:#}"
    );
}

/// `DELETE /api/faults`, and the server's shutdown, while a cell holds
/// Redis stopped: the lab undoes the fault and stops everything it
/// started, and only then is the run over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_lab_run_stopped_from_the_page_or_by_shutdown_leaves_no_process() {
    for (how, hold) in [("delete", "59s"), ("shutdown", "58s")] {
        let app = spawn_app().await;
        let plan = json!({
            "strategies": ["lua"], "faults": ["redis-pause"],
            "before_s": 1, "hold_s": hold.trim_end_matches('s').parse::<u64>().unwrap()
        });
        assert_eq!(post_faults(&app, plan).await.status(), 202, "{how}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let (lab, started): (u32, HashSet<u32>) = loop {
            if let Some(lab) = lab_child(hold) {
                let pids = descendants(lab);
                if pids.iter().any(|pid| stopped(*pid)) {
                    break (lab, pids);
                }
            }
            assert!(Instant::now() < deadline, "{how}: Redis never stopped");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            started.len() >= 3,
            "{how}: Redis and two instances: {started:?}"
        );
        match how {
            "delete" => {
                let response = app
                    .client
                    .delete(app.url("/api/faults"))
                    .header("content-type", "application/json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                let status = faults_status_when(&app, Duration::from_secs(60), |s| {
                    s["running"] == false && s["strategies"] == json!(["lua"])
                })
                .await;
                assert_eq!(status["phase"], "cancelled", "{status:#}");
            }
            _ => app.stop().await,
        }
        let left: Vec<u32> = started.iter().copied().filter(|pid| exists(*pid)).collect();
        assert!(left.is_empty(), "{how}: processes left behind: {left:?}");
        assert!(!exists(lab), "{how}: the lab itself is gone");
    }
}
