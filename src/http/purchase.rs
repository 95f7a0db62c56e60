//! `POST /api/items/{item}/purchase`: the one purchase endpoint.
//!
//! `user_id` and `strategy` come from the JSON body or the query string (so
//! wrk and oha one-liners can vary the user per request). Naming one in both
//! places with different values is a 400; so is anything unknown in the body.
//! An `Idempotency-Key` header makes the purchase take effect at most once
//! per key ([`crate::sale::idempotency`]); its record is checked after the input is
//! validated, so a bad request stores nothing. The purchase itself is
//! [`crate::sale::purchase`]'s; this module only translates.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tracing::Instrument;

use super::request::{item_id, json_body};
use crate::domain::ErrorBody;
use crate::domain::{ItemId, UserId};
use crate::http::error::ApiError;
use crate::sale::idempotency::IdempotencyKey;
use crate::sale::purchase::{PurchaseError, Purchased, Receipt};
use crate::state::AppState;
use crate::strategy::{Strategy, StrategyError, StrategyKind};

/// The request header, as the IETF draft names it.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a response replayed from an earlier request with the same key.
const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

/// Who buys and under which strategy, in the JSON body or the query string.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PurchaseInput {
    /// The buyer (required, here or in the other place).
    #[schema(value_type = Option<UserId>)]
    #[param(value_type = Option<UserId>)]
    user_id: Option<String>,
    /// The strategy; the server's default when absent.
    #[schema(value_type = Option<StrategyKind>)]
    #[param(value_type = Option<StrategyKind>)]
    strategy: Option<String>,
}

impl PurchaseInput {
    /// The fields of a query string, as strict as the body: an unknown or a
    /// repeated name is refused. Read here, not by axum's `Query` (serde
    /// through `serde_urlencoded` and `serde_path_to_error`): 1,200 fewer
    /// instructions a purchase on the HTTP path (callgrind, `lua-batch`).
    fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut input = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let field = match name.as_ref() {
                "user_id" => &mut input.user_id,
                "strategy" => &mut input.strategy,
                other => {
                    return Err(format!(
                        "unknown field `{other}`, expected `user_id` or `strategy`"
                    ));
                }
            };
            if field.replace(value.into_owned()).is_some() {
                return Err(format!("duplicate field `{name}`"));
            }
        }
        Ok(input)
    }
}

/// The value given in the query or the body; both is fine only if they agree.
fn one_of(
    field: &str,
    query: Option<String>,
    body: Option<String>,
) -> Result<Option<String>, ApiError> {
    match (query, body) {
        (Some(q), Some(b)) if q != b => Err(ApiError::invalid(format!(
            "`{field}` is `{q}` in the query but `{b}` in the body; give one, or the same in both"
        ))),
        (q, b) => Ok(q.or(b)),
    }
}

/// Buy one unit.
///
/// Strategy and user come from the JSON body or the query string; both is
/// fine only if they agree. With an `Idempotency-Key`, the purchase takes
/// effect at most once per key: a repeat replays the first 201.
#[utoipa::path(
    post,
    path = "/api/items/{item}/purchase",
    tag = "purchase",
    params(
        ("item" = ItemId, Path, description = "The item to buy."),
        ("Idempotency-Key" = Option<IdempotencyKey>, Header,
            description = "The purchase takes effect at most once per key (IETF draft)."),
        PurchaseInput,
    ),
    request_body(content = Option<PurchaseInput>, content_type = "application/json",
        description = "Optional: the same fields as the query string."),
    responses(
        (status = 201, description = "Bought. With an Idempotency-Key, a replay carries `Idempotency-Replayed: true`.", body = Purchased),
        (status = 400, description = "`invalid_request`: a malformed id or Idempotency-Key, an unknown strategy, a field in both places with different values, an unknown field, a body that is not JSON.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        // 404, 409, 422 and 503: the outcome catalogue's refusals, added
        // by `openapi::PurchaseRefusals`.
    ),
)]
pub async fn purchase(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let request = match idempotency_key(&headers)
        .and_then(|key| Ok((key, purchase_input(&state, path, uri.query(), body)?)))
    {
        Ok(request) => request,
        Err(err) => return err.into_response(),
    };
    let (key, (item, user, strategy)) = request;
    // Made once the fields are known, with all of them: recording fields
    // into a span made earlier re-encodes its fields at each record. With
    // JSON logs at info, the span cost 24,100 instructions a purchase that
    // way and costs 10,900 this way (callgrind).
    let span = tracing::info_span!(
        "purchase",
        item = item.as_str(),
        user = user.as_str(),
        strategy = strategy.kind().as_str()
    );
    // The response, errors included, is made in the span, so an internal
    // cause is logged with the purchase it broke.
    async move {
        match idempotent_purchase(state, key, item, user, strategy, started).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }
    .instrument(span)
    .await
}

/// The `Idempotency-Key` header, if any, validated.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be printable ASCII"))
                .and_then(|v| IdempotencyKey::parse(v).map_err(ApiError::invalid))
        })
        .transpose()
}

async fn idempotent_purchase(
    state: AppState,
    key: Option<IdempotencyKey>,
    item: ItemId,
    user: UserId,
    strategy: Arc<dyn Strategy>,
    started: std::time::Instant,
) -> Result<Response, ApiError> {
    let purchases = &state.purchases;
    let Some(key) = key else {
        let purchased = purchases.buy(item, user, strategy, started).await?;
        return Ok((StatusCode::CREATED, Json(purchased)).into_response());
    };
    // Boxed: the rarer path's future is large, and would otherwise make
    // every purchase's future (moved through each layer) as large.
    match Box::pin(purchases.buy_once(key, item, user, strategy, started)).await? {
        Receipt::New(purchased) => Ok((StatusCode::CREATED, Json(purchased)).into_response()),
        Receipt::Replayed { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok((
                status,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (IDEMPOTENCY_REPLAYED, "true"),
                ],
                body,
            )
                .into_response())
        }
    }
}

/// The validated item, user and strategy of a purchase request.
fn purchase_input(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Option<&str>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(ItemId, UserId, Arc<dyn Strategy>), ApiError> {
    let item = item_id(path)?;
    let query = PurchaseInput::from_query(query)
        .map_err(|err| ApiError::invalid(format!("query string: {err}")))?;
    let body: PurchaseInput = json_body(body)?.unwrap_or_default();
    let user = one_of("user_id", query.user_id, body.user_id)?.ok_or_else(|| {
        ApiError::invalid("user_id is required, in the JSON body or the query string")
    })?;
    let user = UserId::parse(&user).map_err(ApiError::invalid)?;
    let strategy = one_of("strategy", query.strategy, body.strategy)?;
    let strategy = state.purchases.strategy(strategy.as_deref())?;
    Ok((item, user, strategy))
}

/// The domain's refusals and failures, as the API shows them.
impl From<PurchaseError> for ApiError {
    fn from(err: PurchaseError) -> Self {
        match err {
            PurchaseError::UnknownStrategy(msg) => ApiError::invalid(msg),
            PurchaseError::ItemNotFound(item) => ApiError::ItemNotFound(item.to_string()),
            PurchaseError::SoldOut(item) => ApiError::SoldOut(item.to_string()),
            PurchaseError::LimitReached { item, user, limit } => ApiError::LimitReached {
                item: item.to_string(),
                user: user.to_string(),
                limit,
            },
            PurchaseError::StrategyMismatch {
                item,
                requested,
                bound,
            } => ApiError::StrategyMismatch {
                item: item.to_string(),
                requested: requested.to_string(),
                bound,
            },
            PurchaseError::SaleRestarted(item) => ApiError::SaleRestarted(item.to_string()),
            PurchaseError::Unconfirmed(purchased) => ApiError::Unconfirmed {
                item: purchased.item_id.to_string(),
                order_id: purchased.order_id.to_string(),
            },
            PurchaseError::Contended { item, detail } => ApiError::Contention {
                item: item.to_string(),
                detail,
            },
            PurchaseError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            PurchaseError::IdempotencyInFlight => ApiError::IdempotencyInFlight,
            PurchaseError::Ids(err) => ApiError::Unavailable {
                what: "the order id generator",
                source: err.into(),
            },
            PurchaseError::Strategy(err) => match err {
                StrategyError::Redis(_) | StrategyError::Pool(_) => ApiError::redis(err),
                StrategyError::Database(_) => ApiError::database(err),
                StrategyError::Protocol(_) => ApiError::Internal(err.into()),
            },
            PurchaseError::OutcomeUnknown { item, order_id } => ApiError::OutcomeUnknown {
                item: item.to_string(),
                order_id: order_id.to_string(),
            },
            PurchaseError::TimedOut(item) => ApiError::Unavailable {
                what: "the service",
                source: anyhow::anyhow!(
                    "the purchase of `{item}` ran out of time before its commit step"
                ),
            },
            PurchaseError::Idempotency(err) => ApiError::redis(err),
            PurchaseError::Internal(err) => ApiError::Internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PurchaseInput, one_of};

    #[test]
    fn a_query_string_gives_the_two_fields_and_refuses_any_other_or_a_repeat() {
        let read = |q: Option<&str>| PurchaseInput::from_query(q).map(|i| (i.user_id, i.strategy));
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(read(None).unwrap(), (None, None));
        assert_eq!(read(Some("")).unwrap(), (None, None));
        assert_eq!(
            read(Some("user_id=u%201&strategy=lua")).unwrap(),
            (s("u 1"), s("lua"))
        );
        assert_eq!(
            read(Some("strategy=lua+batch")).unwrap(),
            (None, s("lua batch"))
        );
        assert_eq!(read(Some("user_id=")).unwrap(), (s(""), None));
        assert!(
            read(Some("user_id=u1&speed=max"))
                .unwrap_err()
                .contains("unknown field `speed`")
        );
        assert!(
            read(Some("user_id=a&user_id=b"))
                .unwrap_err()
                .contains("duplicate field `user_id`")
        );
    }

    #[test]
    fn query_and_body_may_agree_but_not_conflict() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(one_of("f", s("a"), None).unwrap(), s("a"));
        assert_eq!(one_of("f", None, s("b")).unwrap(), s("b"));
        assert_eq!(one_of("f", s("a"), s("a")).unwrap(), s("a"));
        assert!(one_of("f", s("a"), s("b")).is_err());
    }
}
