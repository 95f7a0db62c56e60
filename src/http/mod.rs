//! The HTTP layer: routes, extractors and the middleware stack. Handlers are thin:
//! they validate input into domain types, call the library, and map outcomes to
//! responses.

mod health;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// Bodies are a few dozen bytes; 16 KiB leaves room and stops abuse early.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Builds the whole router with its middleware.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/healthz", get(health::healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
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
