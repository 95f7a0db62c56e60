//! The one API error type. Every rejection the service makes, its own or axum's,
//! leaves as `{"error":{"code":"...","message":"..."}}` with the status each
//! variant's doc names. Internal causes are logged whole and never shown.

use crate::domain::{ErrorBody, ErrorDetail};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`: the input is malformed or breaks a rule.
    #[error("{0}")]
    InvalidRequest(String),
    /// 413 `payload_too_large`: the body is over the limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 401 `unauthorized`: admin endpoint without the right bearer token.
    #[error("this endpoint needs `Authorization: Bearer <ADMIN_TOKEN>`")]
    Unauthorized,
    /// 403 `forbidden`: an admin endpoint, with no token set, from where
    /// admin is not allowed (see `http::admin`); the message says why.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 415 `unsupported_media_type`: an admin body that is not
    /// `application/json` (a cross-site form cannot send that type).
    #[error("admin request bodies must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// 404 `item_not_found`.
    #[error("item `{0}` does not exist; create it with PUT /api/items/{0}")]
    ItemNotFound(String),
    /// 404 `not_found`: no such route.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// 405 `method_not_allowed`.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// 409 `sold_out`.
    #[error("item `{0}` is sold out")]
    SoldOut(String),
    /// 409 `limit_reached`: the user already holds the per-user limit.
    #[error("user `{user}` already holds the limit of {limit} unit(s) of `{item}`")]
    LimitReached {
        item: String,
        user: String,
        limit: u64,
    },
    /// 409 `strategy_mismatch`: the sale is bound to another strategy.
    #[error(
        "the sale of `{item}` is bound to strategy `{bound}`; this purchase named `{requested}`. Buy with `{bound}`, or restock the item to start a sale under another strategy"
    )]
    StrategyMismatch {
        item: String,
        requested: String,
        bound: String,
    },
    /// 409 `sale_restarted`: the item was restocked while the purchase was in
    /// flight; nothing was bought in either sale.
    #[error(
        "`{0}` was restocked while this purchase was in flight; nothing was bought. Try again to buy in the new sale"
    )]
    SaleRestarted(String),
    /// 422 `idempotency_key_reused`: the Idempotency-Key was used before
    /// with another body.
    #[error(
        "this Idempotency-Key was used with a different request; use a new key for a new purchase"
    )]
    IdempotencyKeyReused,
    /// 409 `idempotency_in_flight`: a request with this Idempotency-Key is
    /// still being processed.
    #[error("a request with this Idempotency-Key is still in progress; retry shortly")]
    IdempotencyInFlight,
    /// 409 `race_running`: the page's race control is busy.
    #[error("a race is already running; wait for it to finish")]
    RaceRunning,
    /// 503 `contention` with `Retry-After`: the strategy gave up (lock wait or
    /// retries exhausted). Nothing was bought; trying again may succeed.
    #[error("too much contention on `{item}` ({detail}); try again")]
    Contention { item: String, detail: String },
    /// 503 `unconfirmed`: bought (the body's `order_id`), but fewer than
    /// `REDIS_WAIT_REPLICAS` replicas confirmed the write in time, so a
    /// failover may still lose it. A repeat with the same Idempotency-Key
    /// answers whether it stands.
    #[error(
        "order {order_id} of `{item}` was taken, but not enough Redis replicas confirmed it in time: it may not survive a failover. Ask again with the same Idempotency-Key to learn whether it stands"
    )]
    Unconfirmed { item: String, order_id: String },
    /// 503 `outcome_unknown`: the purchase's commit step was sent but its
    /// answer was lost (a timeout, a dropped connection), and looking for
    /// its order (`error.order_id`) found nothing in time: it may exist.
    /// `GET /api/orders/{order_id}?item=` answers later; a repeat with the
    /// same Idempotency-Key replays it or buys exactly once.
    #[error(
        "order {order_id} of `{item}` may or may not have been taken: its answer was lost. Ask GET /api/orders/{order_id}?item={item}, or repeat the purchase with the same Idempotency-Key"
    )]
    OutcomeUnknown { item: String, order_id: String },
    /// 404 `order_not_found`: neither SQL nor the item's order log holds
    /// this order now.
    #[error("order {order_id} of `{item}` is neither in SQL nor in the item's order log")]
    OrderNotFound { item: String, order_id: String },
    /// 503 `unavailable`: Redis (or the database) cannot be reached, or the
    /// request ran out of time. The cause is logged, not shown.
    #[error("{what} is unavailable; try again shortly")]
    Unavailable {
        what: &'static str,
        #[source]
        source: anyhow::Error,
    },
    /// 500 `internal`: a bug. The cause is logged, not shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }

    /// Redis could not answer: the usual cause of a 503.
    pub fn redis(source: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable {
            what: "redis",
            source: source.into(),
        }
    }

    /// The database could not answer.
    pub fn database(source: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable {
            what: "the database",
            source: source.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::ItemNotFound(_) | Self::RouteNotFound(_) | Self::OrderNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::SoldOut(_)
            | Self::LimitReached { .. }
            | Self::StrategyMismatch { .. }
            | Self::SaleRestarted(_)
            | Self::IdempotencyInFlight
            | Self::RaceRunning => StatusCode::CONFLICT,
            Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Contention { .. }
            | Self::Unconfirmed { .. }
            | Self::OutcomeUnknown { .. }
            | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::ItemNotFound(_) => "item_not_found",
            Self::RouteNotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::SoldOut(_) => "sold_out",
            Self::LimitReached { .. } => "limit_reached",
            Self::StrategyMismatch { .. } => "strategy_mismatch",
            Self::SaleRestarted(_) => "sale_restarted",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInFlight => "idempotency_in_flight",
            Self::RaceRunning => "race_running",
            Self::Contention { .. } => "contention",
            Self::Unconfirmed { .. } => "unconfirmed",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::OrderNotFound { .. } => "order_not_found",
            Self::Unavailable { .. } => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<crate::sale::SaleError> for ApiError {
    fn from(err: crate::sale::SaleError) -> Self {
        match err {
            crate::sale::SaleError::Redis(_) => Self::redis(err),
            crate::sale::SaleError::Database(_) => Self::database(err),
        }
    }
}

impl ApiError {
    /// The JSON body every error response carries.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message: self.to_string(),
                order_id: match self {
                    Self::Unconfirmed { order_id, .. }
                    | Self::OutcomeUnknown { order_id, .. }
                    | Self::OrderNotFound { order_id, .. } => Some(order_id.clone()),
                    _ => None,
                },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable { source, .. } => {
                tracing::warn!(error = format!("{source:#}"), "{self}");
            }
            Self::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error")
            }
            _ => {}
        }
        let body = Json(self.body());
        let mut response = (self.status(), body).into_response();
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            // One second: long enough for a lock holder to finish or Redis to
            // come back, short enough that a real buyer is not sent away for good.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_a_stable_code_and_status() {
        let err = ApiError::SoldOut("a".into());
        assert_eq!(
            (err.status(), err.code()),
            (StatusCode::CONFLICT, "sold_out")
        );
        let err = ApiError::redis(anyhow::anyhow!("connection refused"));
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            !err.to_string().contains("refused"),
            "causes stay in the log"
        );
    }
}
