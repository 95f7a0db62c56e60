//! The status page in a real browser: headless Chromium driven over WebDriver
//! (chromedriver + fantoccini). Purchases happen; the counters on the page must
//! change to the values the API reports. Screenshots go to
//! `target/browser/`.
//!
//! Ignored unless asked for (it needs `chromium` and `chromedriver`), so
//! `cargo test` shows it as `ignored` instead of passing without running:
//! `cargo test --test api browser -- --ignored` runs it (`.ci/run` does,
//! after the README's `cargo test`, with Debian's `chromium` and
//! `chromium-driver` installed).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with, unique};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_browser() -> (Driver, Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver on PATH (apt-get install chromium-driver)"),
    );
    let profile = std::env::temp_dir().join(unique("seckill-chromium"));
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // The flags keep Chromium off the network: this machine has none.
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", format!("--user-data-dir={}", profile.display()),
                     "--window-size=1280,1000"]
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(capabilities.as_object().unwrap().clone());
        match builder.connect(&format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return (driver, client),
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("cannot start a browser session: {err}"),
        }
    }
}

/// Text of `selector` on the page, or `None` while absent.
async fn text(browser: &Client, selector: &str) -> Option<String> {
    let element = browser.find(Locator::Css(selector)).await.ok()?;
    element.text().await.ok()
}

/// Waits until `selector`'s text is `expected`.
async fn wait_text(browser: &Client, selector: &str, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = text(browser, selector).await;
        if seen.as_deref() == Some(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{selector}: wanted {expected:?}, page shows {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn field(item: &str, name: &str) -> String {
    format!(r#"article[data-item="{item}"] [data-field="{name}"]"#)
}

async fn page_matches_api(browser: &Client, app: &TestApp, item: &str) -> Value {
    let view = app.item(item).await;
    for name in ["sold", "oversold", "drift", "undersold", "stock"] {
        let expected = view[name].as_i64().unwrap().to_string();
        wait_text(browser, &field(item, name), &expected).await;
    }
    view
}

async fn assert_no_sideways_scroll(browser: &Client) {
    let overflow: Value = browser
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        overflow,
        json!(false),
        "no sideways scrolling at phone width"
    );
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: cargo test --test api browser -- --ignored"]
async fn the_page_shows_the_counters_the_api_reports() {
    let app = spawn_app_with(|c| c.lab.race_window_ms = 200).await;
    let (_driver, browser) = start_browser().await;

    let safe = unique("page-lua");
    let unsafe_item = unique("page-naive");
    app.create_item(&safe, 10, 1).await;
    app.create_item(&unsafe_item, 1, 1).await;
    browser.goto(&app.url("/")).await.unwrap();
    wait_text(&browser, "#connection", "live").await;
    wait_text(&browser, &field(&safe, "sold"), "0").await;

    for user in ["b1", "b2", "b3"] {
        assert_eq!(app.purchase(&safe, user, "lua").await.status(), 201);
    }
    // Two naive buyers inside the race window: one unit, two orders.
    let (a, b) = tokio::join!(
        app.purchase(&unsafe_item, "n1", "naive"),
        app.purchase(&unsafe_item, "n2", "naive")
    );
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (201, 201));

    let view = page_matches_api(&browser, &app, &safe).await;
    assert_eq!(view["sold"], 3);
    wait_text(
        &browser,
        &format!(r#"article[data-item="{safe}"] tr[data-strategy="lua"] [data-field="purchased"]"#),
        "3",
    )
    .await;
    // The sale's strategy binding is shown with its number.
    wait_text(
        &browser,
        &format!(r#"article[data-item="{safe}"] .gen"#),
        "sale #1 · limit 1/user · bound to lua",
    )
    .await;
    let view = page_matches_api(&browser, &app, &unsafe_item).await;
    assert_eq!(view["oversold"], 1);
    // The state is in words, not colour alone. (Read with retries: the page
    // re-renders twice a second, so one read can meet a replaced element.)
    wait_text(
        &browser,
        &format!(r#"article[data-item="{unsafe_item}"] .oversell .label"#),
        "OVERSOLD!",
    )
    .await;
    screenshot(&browser, "status-page-1280.png").await;

    browser.set_window_size(390, 1800).await.unwrap();
    wait_text(&browser, &field(&unsafe_item, "oversold"), "1").await;
    assert_no_sideways_scroll(&browser).await;
    screenshot(&browser, "status-page-390.png").await;

    // Restocking from the page's form.
    let form_item = unique("form");
    let input = browser
        .find(Locator::Css("#restock input[name=item]"))
        .await
        .unwrap();
    input.clear().await.unwrap();
    input.send_keys(&form_item).await.unwrap();
    browser
        .find(Locator::Css("#restock button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, &field(&form_item, "stock"), "100").await;
    assert_eq!(app.item(&form_item).await["initial_stock"], 100);

    browser.close().await.unwrap();
}

/// Races from the page's API: the results table fits its card at 1280 px
/// (its last column, the verdict, inside the card's edge) and the page has
/// no sideways scroll at 390 px; the items of an earlier race are hidden
/// until asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: cargo test --test api browser -- --ignored"]
async fn race_results_fit_the_card_and_earlier_races_are_put_away() {
    // naive with a race window oversells: its row carries a counterexample.
    let app = spawn_app_with(|c| c.lab.race_window_ms = 5).await;
    // The feed's snapshot lags a little: a race is done once it reports a
    // finished item other than the previous race's.
    let app = &app;
    let race = |previous: Option<String>| async move {
        let started = app
            .client
            .post(app.url("/api/race"))
            .json(
                &json!({"strategies": ["naive"], "stock": 30, "concurrency": 16, "duration_s": 2}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(started.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats: Value = app.get_json("/api/stats").await;
            let item = stats["race"]["results"][0]["item"].as_str();
            if stats["race"]["phase"] == "done"
                && let Some(item) = item
                && Some(item) != previous.as_deref()
            {
                return item.to_owned();
            }
            assert!(Instant::now() < deadline, "race not done: {stats}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let first = race(None).await;
    let second = race(Some(first.clone())).await;

    let (_driver, browser) = start_browser().await;
    browser.goto(&app.url("/")).await.unwrap();
    wait_text(&browser, "#connection", "live").await;
    wait_text(
        &browser,
        &field(&second, "sold"),
        &app.item(&second).await["sold"].to_string(),
    )
    .await;
    let count = |selector: String| {
        let browser = &browser;
        async move {
            browser
                .find_all(Locator::Css(&selector))
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(
        count(format!(r#"article[data-item="{first}"]"#)).await,
        0,
        "earlier race shown"
    );
    wait_text(&browser, "#earlier-count", "1").await;

    // The verdict column's right edge stays inside the race panel.
    let fits = |script: &'static str| {
        let browser = &browser;
        async move { browser.execute(script, vec![]).await.unwrap() }
    };
    let inside = fits(
        "const panel = document.querySelector('#race');
         const cell = document.querySelector('#race-status td.verdict');
         return cell !== null
           && cell.getBoundingClientRect().right <= panel.getBoundingClientRect().right + 0.5;",
    )
    .await;
    assert_eq!(inside, json!(true), "the verdict is cut off at 1280 px");
    screenshot(&browser, "race-1280.png").await;

    // Earlier races on request.
    browser
        .find(Locator::Css("#show-earlier"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(
        &browser,
        &field(&first, "sold"),
        &app.item(&first).await["sold"].to_string(),
    )
    .await;

    browser.set_window_size(390, 1800).await.unwrap();
    assert_no_sideways_scroll(&browser).await;
    screenshot(&browser, "race-390.png").await;
    browser.close().await.unwrap();
}

/// The Faults panel: its choices come from the server (every fault, the
/// defaults ticked), its Start button runs the lab with what is ticked, and
/// the matrix cell fills in with the verdict, the evidence and the repro in
/// its tooltip, at 1280 px and without sideways scrolling at 390 px.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: cargo test --test api browser -- --ignored"]
async fn the_faults_panel_runs_the_lab_and_fills_its_matrix() {
    let app = spawn_app_with(|_| {}).await;
    let (_driver, browser) = start_browser().await;
    browser.goto(&app.url("/")).await.unwrap();
    wait_text(&browser, "#connection", "live").await;
    let choices: Value = browser
        .execute(
            "return [...document.querySelectorAll('#faults input:checked')].map(i => i.name);",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        choices,
        json!([
            "fs-lock",
            "fs-lock-unfenced",
            "fs-lua",
            "ff-holder-pause",
            "ff-redis-pause",
            "ff-instance-kill"
        ]),
        "the server's defaults are ticked, in the catalogue's order"
    );
    let boxes = browser
        .find_all(Locator::Css("#faults-faults input"))
        .await
        .unwrap();
    assert_eq!(boxes.len(), 11, "every fault the lab knows");

    // One cell: lua under redis-pause, the page's default phases.
    browser
        .execute(
            "for (const i of document.querySelectorAll('#faults input')) {
               i.checked = i.name === 'fs-lua' || i.name === 'ff-redis-pause';
             }",
            vec![],
        )
        .await
        .unwrap();
    browser
        .find(Locator::Css("#faults button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let cell = r#"#faults-status td[data-strategy="lua"][data-fault="redis-pause"]"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if text(&browser, cell).await.as_deref() == Some("exact") {
            break;
        }
        assert!(Instant::now() < deadline, "the cell never filled in");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let title = browser
        .find(Locator::Css(cell))
        .await
        .unwrap()
        .attr("title")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        title.contains("evidence:") && title.contains("repro: seckill faults"),
        "{title}"
    );
    let class = browser
        .find(Locator::Css(cell))
        .await
        .unwrap()
        .attr("class")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(class.contains("exact"), "{class}");
    screenshot(&browser, "faults-1280.png").await;

    browser.set_window_size(390, 1800).await.unwrap();
    assert_no_sideways_scroll(&browser).await;
    screenshot(&browser, "faults-390.png").await;
    browser.close().await.unwrap();
}
