//! `POST /api/items/{item}/purchase`: the one purchase endpoint.
//!
//! `user_id` and `strategy` come from the JSON body or the query string (so
//! wrk and oha one-liners can vary the user per request). Naming one in both
//! places with different values is a 400; so is anything unknown in the body.
//! An `Idempotency-Key` header makes the purchase take effect at most once
//! per key ([`crate::idempotency`]); its record is checked after the input is
//! validated, so a bad request stores nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{item_id, json_body};
use crate::domain::{ItemId, UserId};
use crate::error::ApiError;
use crate::idempotency::{Claim, IdempotencyKey};
use crate::keys::ItemKeys;
use crate::snowflake::OrderId;
use crate::state::AppState;
use crate::strategy::{Outcome, Purchase, Strategy, StrategyError, StrategyKind};

/// The request header, as the IETF draft names it.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a response replayed from an earlier request with the same key.
const IDEMPOTENCY_REPLAYED: HeaderName = HeaderName::from_static("idempotency-replayed");

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseInput {
    user_id: Option<String>,
    strategy: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Purchased {
    pub order_id: OrderId,
    pub item_id: ItemId,
    pub user_id: UserId,
    pub strategy: StrategyKind,
    pub remaining: i64,
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

#[tracing::instrument(skip_all, fields(item, user, strategy))]
pub async fn purchase(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PurchaseInput>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match idempotent_purchase(state, path, query, headers, body).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn idempotent_purchase(
    state: AppState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PurchaseInput>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be printable ASCII"))
                .and_then(|v| IdempotencyKey::parse(v).map_err(ApiError::invalid))
        })
        .transpose()?;
    let (item, user, strategy) = purchase_input(&state, path, query, body)?;
    let Some(key) = key else {
        return Ok(buy(&state, item, user, strategy, started)
            .await
            .into_response());
    };
    let keys = ItemKeys::new(&item);
    let fingerprint = format!("{user}\u{1f}{}", strategy.kind());
    match state
        .idempotency
        .begin(&keys, &key, &fingerprint)
        .await
        .map_err(ApiError::redis)?
    {
        Claim::Missing => Err(ApiError::ItemNotFound(item.to_string())),
        Claim::Reused => Err(ApiError::IdempotencyKeyReused),
        Claim::InFlight => Err(ApiError::IdempotencyInFlight),
        Claim::Done { status, body } => {
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
        Claim::New => {
            // A task of its own: a client that leaves or the request timeout
            // must not cut the sequence between the purchase and its record.
            let sequence = tokio::spawn(async move {
                let result = buy(&state, item, user, strategy, started).await;
                // Only a purchase is kept; a refusal changed nothing, and a
                // repeat may simply ask again.
                let record = match &result {
                    Ok((status, Json(purchased))) => serde_json::to_string(purchased)
                        .ok()
                        .map(|body| (status.as_u16(), body)),
                    Err(_) => None,
                };
                let record = record
                    .as_ref()
                    .map(|(status, body)| (*status, body.as_str()));
                if let Err(err) = state.idempotency.finish(&keys, &key, record).await {
                    tracing::warn!(%err, "cannot record the outcome for an Idempotency-Key; its claim expires by itself");
                }
                result
            });
            let result = sequence.await.map_err(|err| {
                ApiError::Internal(anyhow::anyhow!("purchase task failed: {err}"))
            })?;
            Ok(result.into_response())
        }
    }
}

/// The validated item, user and strategy of a purchase request.
fn purchase_input(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PurchaseInput>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(ItemId, UserId, Arc<dyn Strategy>), ApiError> {
    let item = item_id(path)?;
    let Query(query) =
        query.map_err(|r| ApiError::invalid(format!("query string: {}", r.body_text())))?;
    let body: PurchaseInput = json_body(body)?.unwrap_or_default();
    let user = one_of("user_id", query.user_id, body.user_id)?.ok_or_else(|| {
        ApiError::invalid("user_id is required, in the JSON body or the query string")
    })?;
    let user = UserId::parse(&user).map_err(ApiError::invalid)?;
    let strategy = match one_of("strategy", query.strategy, body.strategy)? {
        Some(name) => state.strategies.get(&name).map_err(ApiError::invalid)?,
        None => state
            .strategies
            .get(state.default_strategy.as_str())
            .map_err(|msg| {
                ApiError::Internal(anyhow::anyhow!("default strategy missing: {msg}"))
            })?,
    };
    let span = tracing::Span::current();
    span.record("item", item.as_str());
    span.record("user", user.as_str());
    span.record("strategy", strategy.kind().as_str());
    Ok((item, user, strategy))
}

/// The purchase itself, counted and mapped to its response.
async fn buy(
    state: &AppState,
    item: ItemId,
    user: UserId,
    strategy: Arc<dyn Strategy>,
    started: std::time::Instant,
) -> Result<(StatusCode, Json<Purchased>), ApiError> {
    let kind = strategy.kind();

    let order_id = state.ids.next().map_err(|err| ApiError::Unavailable {
        what: "the order id generator",
        source: err.into(),
    })?;
    let purchase = Purchase::new(item, user, order_id, kind);
    let attempt = match strategy.purchase(&purchase).await {
        Ok(attempt) => attempt,
        Err(err) => {
            state.stats.record_error(&purchase.item, kind);
            state
                .metrics
                .record_purchase(kind, "error", started.elapsed());
            return Err(match err {
                StrategyError::Redis(_) | StrategyError::Pool(_) => ApiError::redis(err),
                StrategyError::Database(_) => ApiError::database(err),
                StrategyError::Protocol(_) => ApiError::Internal(err.into()),
            });
        }
    };
    state
        .stats
        .record(&purchase.item, kind, &attempt, started.elapsed());
    state
        .metrics
        .record_purchase(kind, attempt.outcome.label(), started.elapsed());
    let Purchase { item, user, .. } = purchase;
    match attempt.outcome {
        Outcome::Purchased { remaining } => Ok((
            StatusCode::CREATED,
            Json(Purchased {
                order_id,
                item_id: item,
                user_id: user,
                strategy: kind,
                remaining,
            }),
        )),
        Outcome::SoldOut => Err(ApiError::SoldOut(item.to_string())),
        Outcome::LimitReached { limit } => Err(ApiError::LimitReached {
            item: item.to_string(),
            user: user.to_string(),
            limit,
        }),
        Outcome::ItemNotFound => Err(ApiError::ItemNotFound(item.to_string())),
        Outcome::StrategyMismatch { bound } => Err(ApiError::StrategyMismatch {
            item: item.to_string(),
            requested: kind.to_string(),
            bound,
        }),
        Outcome::SaleRestarted => Err(ApiError::SaleRestarted(item.to_string())),
        Outcome::Contended { detail } => Err(ApiError::Contention {
            item: item.to_string(),
            detail,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::one_of;

    #[test]
    fn query_and_body_may_agree_but_not_conflict() {
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(one_of("f", s("a"), None).unwrap(), s("a"));
        assert_eq!(one_of("f", None, s("b")).unwrap(), s("b"));
        assert_eq!(one_of("f", s("a"), s("a")).unwrap(), s("a"));
        assert!(one_of("f", s("a"), s("b")).is_err());
    }
}
