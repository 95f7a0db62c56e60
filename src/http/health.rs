//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its
//! dependencies answer).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// `GET /healthz`: 200 while the process serves requests. Also the HTTP ceiling
/// the benchmarks compare every strategy against, so it does no work at all.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when Redis answers PING and the database a query, else
/// 503 `unavailable` naming which.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let _: String = redis::cmd("PING")
        .query_async(&mut state.redis.clone())
        .await
        .map_err(ApiError::redis)?;
    state.db.ping().await.map_err(ApiError::database)?;
    Ok(Json(
        json!({"status": "ready", "redis": "ok", "database": state.db.backend()}),
    ))
}
