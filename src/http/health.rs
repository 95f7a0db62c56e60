//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: its
//! dependencies answer).

use axum::Json;
use serde_json::{Value, json};

/// `GET /healthz`: 200 while the process serves requests. Also the HTTP ceiling
/// the benchmarks compare every strategy against, so it does no work at all.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}
