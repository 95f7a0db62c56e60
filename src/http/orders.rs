//! `GET /api/orders?item=&user=&limit=&after=&order=`: persisted orders, a page
//! at a time, and `GET /api/persister`: what the persister has done.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;

use crate::domain::ErrorBody;
use crate::domain::{ItemId, UserId};
use crate::http::error::ApiError;
use crate::orders::db::{Direction, OrderQuery, OrdersPage};
use crate::orders::persister::PersisterReport;
use crate::orders::snowflake::OrderId;
use crate::state::AppState;

/// Page size when none is asked for.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page: keeps one request's work and response bounded.
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersParams {
    /// Only this item's orders.
    #[param(value_type = Option<ItemId>)]
    item: Option<String>,
    /// Only this user's orders.
    #[param(value_type = Option<UserId>)]
    user: Option<String>,
    /// Page size, 1 to 1000; 50 when absent.
    limit: Option<u32>,
    /// The cursor: the `next` of the previous page.
    #[param(value_type = Option<OrderId>)]
    after: Option<String>,
    /// `desc` (newest first, the default) or `asc`.
    order: Option<Direction>,
}

/// Persisted orders, a page at a time.
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    params(OrdersParams),
    responses(
        (status = 200, description = "A page of orders; pass `next` as `after` for the next one.", body = OrdersPage),
        (status = 400, description = "`invalid_request`: a malformed filter, cursor or limit.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the database cannot answer.", body = ErrorBody),
    ),
)]
pub async fn list_orders(
    State(state): State<AppState>,
    params: Result<Query<OrdersParams>, QueryRejection>,
) -> Result<Json<OrdersPage>, ApiError> {
    let Query(params) =
        params.map_err(|r| ApiError::invalid(format!("query string: {}", r.body_text())))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    let query = OrderQuery {
        item: params
            .item
            .as_deref()
            .map(ItemId::parse)
            .transpose()
            .map_err(ApiError::invalid)?,
        user: params
            .user
            .as_deref()
            .map(UserId::parse)
            .transpose()
            .map_err(ApiError::invalid)?,
        after: params
            .after
            .as_deref()
            .map(OrderId::parse)
            .transpose()
            .map_err(|msg| ApiError::invalid(format!("after: {msg}")))?,
        direction: params.order.unwrap_or_default(),
        limit,
    };
    let orders = state
        .db
        .list_orders(&query)
        .await
        .map_err(ApiError::database)?;
    let next = if orders.len() == limit as usize {
        orders.last().map(|o| o.order_id)
    } else {
        None
    };
    Ok(Json(OrdersPage { orders, next }))
}

/// The persister's counters; 404 when this instance runs none.
#[utoipa::path(
    get,
    path = "/api/persister",
    tag = "orders",
    responses(
        (status = 200, description = "What this instance's persister has done.", body = PersisterReport),
        (status = 404, description = "`not_found`: this instance runs no persister (`PERSISTER=false`).", body = ErrorBody),
    ),
)]
pub async fn persister(State(state): State<AppState>) -> Result<Json<PersisterReport>, ApiError> {
    state
        .persister
        .as_ref()
        .map(|p| Json(p.report()))
        .ok_or_else(|| ApiError::RouteNotFound("/api/persister (PERSISTER=false here)".into()))
}
