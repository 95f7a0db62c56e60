//! The HTTP layer: routes, extractors and the middleware stack. Handlers are thin:
//! they validate input into domain types, call the library, and map outcomes to
//! responses.

mod admin;
pub mod error;
mod health;
mod ids;
mod items;
mod live;
pub mod live_feed;
mod orders;
mod purchase;
pub mod server;

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::TraceLayer;

use crate::domain::ItemId;
use crate::http::error::ApiError;
use crate::state::AppState;

/// Bodies are a few dozen bytes; 16 KiB leaves room and stops abuse early.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Builds the whole router with its middleware.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    let page = state.static_dir.clone();
    Router::new()
        .route_service("/", ServeFile::new(page.join("index.html")))
        .nest_service("/static", ServeDir::new(&page))
        .route("/api/stats", get(live::stats))
        .route("/api/stats/stream", get(live::stream))
        .route(
            "/api/race",
            post(live::start_race).delete(live::cancel_race),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/api/strategies", get(strategies))
        .route("/api/items", get(items::list_items))
        .route(
            "/api/items/{item}",
            get(items::get_item).put(items::put_item),
        )
        .route("/api/items/{item}/purchase", post(purchase::purchase))
        .route("/api/ids/{id}", get(ids::decode))
        .route("/api/orders", get(orders::list_orders))
        .route("/api/persister", get(orders::persister))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /api/strategies`: the catalogue, in order: each strategy's name, what
/// guards it, and whether this instance serves it; and the default. The
/// status page builds its race controls from it.
async fn strategies(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let enabled = state.strategies.names();
    let list: Vec<serde_json::Value> = crate::strategy::StrategyKind::ALL
        .iter()
        .map(|kind| {
            serde_json::json!({
                "name": kind.as_str(),
                "guard": kind.guard(),
                "enabled": enabled.contains(&kind.as_str()),
            })
        })
        .collect();
    axum::Json(serde_json::json!({
        "strategies": list,
        "default": state.default_strategy.as_str(),
    }))
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Bounds every request's time with a JSON 503, so a stuck dependency cannot
/// stall graceful shutdown. tower-http's timeout layer answers with an empty 408,
/// which would break the one-error-shape rule.
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable {
            what: "the service",
            source: anyhow::anyhow!("request exceeded {limit:?}"),
        }
        .into_response(),
    }
}

/// The `{item}` path segment as a validated id.
fn item_id(path: Result<Path<String>, PathRejection>) -> Result<ItemId, ApiError> {
    let Path(raw) = path.map_err(|r| ApiError::invalid(r.body_text()))?;
    ItemId::parse(&raw).map_err(ApiError::invalid)
}

/// An admin request must say its body is JSON, even an empty one: browsers
/// send `application/json` only after a CORS preflight this service never
/// grants, so a cross-site form or a no-cors `fetch` (`text/plain`, form
/// types, no body) cannot reach an admin endpoint.
fn require_json_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses a JSON body whatever its content type (`curl -d` sends a form type),
/// mapping every failure to our error shape. An empty body is `None`.
fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        } else {
            ApiError::invalid(rejection.body_text())
        }
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|err| ApiError::invalid(format!("invalid JSON body: {err}")))
}
