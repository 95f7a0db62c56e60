//! The thinnest purchase this stack allows, for calibrating cost figures:
//! a plain axum handler that runs one `EVALSHA` of a GET/DECR script on one
//! multiplexed Redis connection. No order id, no order log, no SQL, no
//! stats. Issue #11 states its targets against this shape; running it on the
//! same machine, in the same run as `seckill`, turns them into ratios that
//! survive a slower or busier machine.
//!
//! ```sh
//! cargo run --release --example reference -- 127.0.0.1:18081 redis://127.0.0.1:6379
//! wrk -t2 -c64 -d10s -s bench/wrk/reference-buy.lua http://127.0.0.1:18081
//! ```

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use redis::Script;
use redis::aio::ConnectionManager;

#[derive(Clone)]
struct Reference {
    redis: ConnectionManager,
    script: &'static Script,
}

async fn buy(State(mut state): State<Reference>) -> (StatusCode, String) {
    let left: Result<i64, _> = state
        .script
        .key("reference:stock")
        .invoke_async(&mut state.redis)
        .await;
    match left {
        Ok(left) if left >= 0 => (StatusCode::CREATED, format!("{{\"remaining\":{left}}}")),
        Ok(_) => (StatusCode::CONFLICT, "{\"error\":\"sold_out\"}".into()),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{{\"error\":\"{err}\"}}"),
        ),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18081".into());
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let mut redis = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
    let _: () = redis::cmd("SET")
        .arg("reference:stock")
        .arg(1_000_000_000_i64)
        .query_async(&mut redis)
        .await?;
    let script: &'static Script = Box::leak(Box::new(Script::new(include_str!("reference.lua"))));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/buy", post(buy))
        .with_state(Reference { redis, script });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("reference listening on {listen}");
    axum::serve(listener, app).await?;
    Ok(())
}
