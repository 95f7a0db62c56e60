//! The one API error type. Every rejection the service makes, its own or axum's,
//! leaves as `{"error":{"code":"...","message":"..."}}` with the status each
//! variant's doc names. Internal causes are logged whole and never shown.

use crate::domain::{ErrorBody, ErrorDetail};
use crate::outcome::Code;
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
    /// 409 `faults_running`: the page's fault lab is busy.
    #[error("a fault lab run is already running; wait for it to finish, or DELETE /api/faults")]
    FaultsRunning,
    /// 404 `fault_lab_disabled`: this server does not run the fault lab
    /// (`FAULT_LAB=false`).
    #[error(
        "this server does not run the fault lab (FAULT_LAB=false); run `seckill faults` instead"
    )]
    FaultLabDisabled,
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
    /// 409 `order_paid`, `order_cancelled` or `order_expired`: the order
    /// already ended that way; a pay or cancel changes nothing.
    #[error("order {order_id} of `{item}` is {state}: it can no longer be paid or cancelled", state = state.as_str())]
    OrderEnded {
        item: String,
        order_id: String,
        state: crate::sale::lifecycle::OrderState,
    },
    /// 403 `not_order_buyer`: the order was sold to another user.
    #[error("order {order_id} of `{item}` was sold to another user")]
    NotOrderBuyer { item: String, order_id: String },
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

    /// Where the variant's code and status come from: a purchase outcome
    /// is the outcome catalogue's ([`crate::outcome`]); the rest are the
    /// API's own, written here. No wildcard: a new variant must say which.
    fn wire(&self) -> Wire {
        use Wire::{Outcome, Own};
        match self {
            Self::InvalidRequest(_) => Own("invalid_request", StatusCode::BAD_REQUEST),
            Self::PayloadTooLarge { .. } => Own("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
            Self::Unauthorized => Own("unauthorized", StatusCode::UNAUTHORIZED),
            Self::Forbidden(_) => Own("forbidden", StatusCode::FORBIDDEN),
            Self::UnsupportedMediaType => {
                Own("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE)
            }
            Self::RouteNotFound(_) => Own("not_found", StatusCode::NOT_FOUND),
            Self::MethodNotAllowed => Own("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
            Self::RaceRunning => Own("race_running", StatusCode::CONFLICT),
            Self::FaultsRunning => Own("faults_running", StatusCode::CONFLICT),
            Self::FaultLabDisabled => Own("fault_lab_disabled", StatusCode::NOT_FOUND),
            Self::OrderNotFound { .. } => Own("order_not_found", StatusCode::NOT_FOUND),
            Self::OrderEnded { state, .. } => Own(state.ended_code(), StatusCode::CONFLICT),
            Self::NotOrderBuyer { .. } => Own("not_order_buyer", StatusCode::FORBIDDEN),
            Self::Internal(_) => Own("internal", StatusCode::INTERNAL_SERVER_ERROR),
            Self::ItemNotFound(_) => Outcome(Code::ItemNotFound),
            Self::SoldOut(_) => Outcome(Code::SoldOut),
            Self::LimitReached { .. } => Outcome(Code::LimitReached),
            Self::StrategyMismatch { .. } => Outcome(Code::StrategyMismatch),
            Self::SaleRestarted(_) => Outcome(Code::SaleRestarted),
            Self::IdempotencyKeyReused => Outcome(Code::IdempotencyKeyReused),
            Self::IdempotencyInFlight => Outcome(Code::IdempotencyInFlight),
            Self::Contention { .. } => Outcome(Code::Contention),
            Self::Unconfirmed { .. } => Outcome(Code::Unconfirmed),
            Self::OutcomeUnknown { .. } => Outcome(Code::OutcomeUnknown),
            Self::Unavailable { .. } => Outcome(Code::Unavailable),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.wire() {
            Wire::Outcome(code) => code.status(),
            Wire::Own(_, status) => status,
        }
    }

    pub fn code(&self) -> &'static str {
        match self.wire() {
            Wire::Outcome(code) => code.as_str(),
            Wire::Own(code, _) => code,
        }
    }
}

/// An [`ApiError`]'s code and status: a purchase outcome's, or its own.
enum Wire {
    Outcome(Code),
    Own(&'static str, StatusCode),
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
                    | Self::OrderNotFound { order_id, .. }
                    | Self::OrderEnded { order_id, .. }
                    | Self::NotOrderBuyer { order_id, .. } => Some(order_id.clone()),
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
    use crate::sale::lifecycle::OrderState;

    /// One of each variant. The match in [`index`] has no wildcard, so a
    /// new variant does not compile until it is numbered there, and then
    /// fails the test until it is sampled here.
    fn samples() -> Vec<ApiError> {
        let s = || "a".to_owned();
        let mut samples = vec![
            ApiError::InvalidRequest(s()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::Unauthorized,
            ApiError::Forbidden("no"),
            ApiError::UnsupportedMediaType,
            ApiError::ItemNotFound(s()),
            ApiError::RouteNotFound(s()),
            ApiError::MethodNotAllowed,
            ApiError::SoldOut(s()),
            ApiError::LimitReached {
                item: s(),
                user: s(),
                limit: 1,
            },
            ApiError::StrategyMismatch {
                item: s(),
                requested: s(),
                bound: s(),
            },
            ApiError::SaleRestarted(s()),
            ApiError::IdempotencyKeyReused,
            ApiError::IdempotencyInFlight,
            ApiError::RaceRunning,
            ApiError::FaultsRunning,
            ApiError::FaultLabDisabled,
            ApiError::Contention {
                item: s(),
                detail: s(),
            },
            ApiError::Unconfirmed {
                item: s(),
                order_id: s(),
            },
            ApiError::OutcomeUnknown {
                item: s(),
                order_id: s(),
            },
            ApiError::OrderNotFound {
                item: s(),
                order_id: s(),
            },
            ApiError::NotOrderBuyer {
                item: s(),
                order_id: s(),
            },
            ApiError::redis(anyhow::anyhow!("connection refused")),
            ApiError::Internal(anyhow::anyhow!("a bug")),
        ];
        // One variant, a code per way an order ended.
        for state in [OrderState::Paid, OrderState::Cancelled, OrderState::Expired] {
            samples.push(ApiError::OrderEnded {
                item: s(),
                order_id: s(),
                state,
            });
        }
        samples
    }

    const VARIANTS: usize = 25;

    fn index(err: &ApiError) -> usize {
        match err {
            ApiError::InvalidRequest(_) => 0,
            ApiError::PayloadTooLarge { .. } => 1,
            ApiError::Unauthorized => 2,
            ApiError::Forbidden(_) => 3,
            ApiError::UnsupportedMediaType => 4,
            ApiError::ItemNotFound(_) => 5,
            ApiError::RouteNotFound(_) => 6,
            ApiError::MethodNotAllowed => 7,
            ApiError::SoldOut(_) => 8,
            ApiError::LimitReached { .. } => 9,
            ApiError::StrategyMismatch { .. } => 10,
            ApiError::SaleRestarted(_) => 11,
            ApiError::IdempotencyKeyReused => 12,
            ApiError::IdempotencyInFlight => 13,
            ApiError::RaceRunning => 14,
            ApiError::Contention { .. } => 15,
            ApiError::Unconfirmed { .. } => 16,
            ApiError::OutcomeUnknown { .. } => 17,
            ApiError::OrderNotFound { .. } => 18,
            ApiError::Unavailable { .. } => 19,
            ApiError::Internal(_) => 20,
            ApiError::FaultsRunning => 21,
            ApiError::FaultLabDisabled => 22,
            ApiError::OrderEnded { .. } => 23,
            ApiError::NotOrderBuyer { .. } => 24,
        }
    }

    /// The codes and statuses clients match on that are not purchase
    /// outcomes: the API's own, so written here too.
    const OWN: [(&str, StatusCode); 16] = [
        ("invalid_request", StatusCode::BAD_REQUEST),
        ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
        ("unauthorized", StatusCode::UNAUTHORIZED),
        ("forbidden", StatusCode::FORBIDDEN),
        ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("not_found", StatusCode::NOT_FOUND),
        ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
        ("race_running", StatusCode::CONFLICT),
        ("faults_running", StatusCode::CONFLICT),
        ("fault_lab_disabled", StatusCode::NOT_FOUND),
        ("order_not_found", StatusCode::NOT_FOUND),
        ("order_paid", StatusCode::CONFLICT),
        ("order_cancelled", StatusCode::CONFLICT),
        ("order_expired", StatusCode::CONFLICT),
        ("not_order_buyer", StatusCode::FORBIDDEN),
        ("internal", StatusCode::INTERNAL_SERVER_ERROR),
    ];

    #[test]
    fn every_variant_has_a_stable_code_and_status() {
        let samples = samples();
        let mut seen = [false; VARIANTS];
        for err in &samples {
            seen[index(err)] = true;
        }
        assert!(seen.iter().all(|s| *s), "sample every variant: {seen:?}");
        let answered: Vec<(&str, StatusCode)> =
            samples.iter().map(|e| (e.code(), e.status())).collect();
        // Every refusal of the outcome catalogue has its variant, with the
        // catalogue's code and status.
        for code in Code::ALL.into_iter().filter(|c| c.is_refusal()) {
            assert!(
                answered.contains(&(code.as_str(), code.status())),
                "no variant answers {code} ({})",
                code.status()
            );
        }
        // And every other variant is one of the API's own, unchanged.
        for pair in &answered {
            let from_catalogue = Code::parse(pair.1, pair.0).is_some();
            assert!(
                from_catalogue || OWN.contains(pair),
                "{pair:?} is neither an outcome nor one of the API's own codes"
            );
        }
        assert_eq!(
            answered.len(),
            Code::ALL.iter().filter(|c| c.is_refusal()).count() + OWN.len(),
            "each code has one variant: {answered:?}"
        );
        let unavailable = ApiError::redis(anyhow::anyhow!("connection refused"));
        assert!(
            !unavailable.to_string().contains("refused"),
            "causes stay in the log"
        );
    }
}
