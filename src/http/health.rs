//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its
//! dependencies answer).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::domain::ErrorBody;
use crate::http::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves requests. Also the HTTP ceiling
/// the benchmarks compare every strategy against, so it does no work at all.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The process serves requests.", body = Object,
        example = json!({"status": "ok"}))),
)]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the snowflake worker lease is held, Redis answers
/// PING and the database a query, else 503 `unavailable` naming which.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: the worker lease is held, Redis and the database answer.", body = Object,
            example = json!({"status": "ready", "redis": "ok", "database": "sqlite", "worker": 7})),
        (status = 503, description = "`unavailable`: the message names what is not ready.", body = ErrorBody),
    ),
)]
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
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus metrics (OpenMetrics text).", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
)]
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
