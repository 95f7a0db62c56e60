//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its
//! dependencies answer).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::http::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves requests. Also the HTTP ceiling
/// the benchmarks compare every strategy against, so it does no work at all.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the snowflake worker lease is held, Redis answers
/// PING and the database a query, else 503 `unavailable` naming which.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if !state.ids.is_ready() {
        return Err(ApiError::Unavailable {
            what: "the order id generator",
            source: anyhow::anyhow!("the snowflake worker lease is lost; leasing again"),
        });
    }
    let _: String = redis::cmd("PING")
        .query_async(&mut state.redis.clone())
        .await
        .map_err(ApiError::redis)?;
    state.db.ping().await.map_err(ApiError::database)?;
    Ok(Json(
        json!({"status": "ready", "redis": "ok", "database": state.db.backend(), "worker": state.ids.worker()}),
    ))
}

/// `GET /metrics`: Prometheus text. Item gauges are read at scrape time; if
/// Redis cannot answer, the purchase metrics are still served without them.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let items = match state.sales.list(&state.stats).await {
        Ok(items) => items,
        Err(err) => {
            tracing::warn!(error = %err, "metrics without item gauges");
            Vec::new()
        }
    };
    let report = state.persister.as_ref().map(|p| p.report());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&items, report.as_ref(), &state.stats),
    )
}
