//! `GET /api/orders?item=&user=&state=&limit=&after=&order=`: persisted orders, a page
//! at a time; `GET /api/orders/{order_id}?item=`: whether one order exists
//! (persisted, or still in its item's order log), the question a client
//! asks after a purchase answered `outcome_unknown`; and
//! `GET /api/persister`: what the persister has done.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use utoipa::openapi::schema::Object;

use super::schema::integer_in;
use crate::domain::ErrorBody;
use crate::domain::{ItemId, UserId, whole};
use crate::http::error::ApiError;
use crate::orders::db::{Direction, OrderQuery, OrderRecord, OrdersPage};
use crate::orders::lookup::{LookupError, Place};
use crate::orders::persister::PersisterReport;
use crate::orders::snowflake::OrderId;
use crate::sale::lifecycle::OrderState;
use crate::state::AppState;

/// Page size when none is asked for.
const DEFAULT_LIMIT: u32 = 50;
/// Largest page: keeps one request's work and response bounded.
const MAX_LIMIT: u32 = 1000;

fn limit_schema() -> Object {
    integer_in(
        1,
        MAX_LIMIT.into(),
        &format!("Page size, 1 to {MAX_LIMIT}; {DEFAULT_LIMIT} when absent."),
    )
}

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
    /// Only orders in this state.
    state: Option<OrderState>,
    #[serde(default, deserialize_with = "whole::in_query")]
    #[param(schema_with = limit_schema)]
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
        state: params.state,
        direction: params.order.unwrap_or_default(),
        limit,
    };
    let orders = state
        .db
        .list_orders(&query)
        .await
        .map_err(ApiError::database)?;
    let next = if orders.len() == limit as usize {
        orders.last().map(|o| o.order.order_id)
    } else {
        None
    };
    Ok(Json(OrdersPage { orders, next }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrderParams {
    /// The order's item (required): an order not yet persisted is found in
    /// that item's order log.
    #[param(value_type = ItemId)]
    item: Option<String>,
}

/// An order that exists.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderStatus {
    pub order_id: OrderId,
    /// Always `committed`: the order was taken (a 201, or a purchase whose
    /// answer was lost).
    #[schema(example = "committed")]
    pub status: &'static str,
    /// Where it was found: `sql` (persisted) or `order_log` (taken, not yet
    /// persisted).
    pub found_in: Place,
    /// Where it stands: `reserved` until paid, cancelled or expired in a
    /// sale with a payment window; `paid` for every order of a sale without.
    pub state: OrderState,
    pub order: OrderRecord,
}

/// Whether an order exists: the answer to a purchase that answered
/// `outcome_unknown`.
#[utoipa::path(
    get,
    path = "/api/orders/{order_id}",
    tag = "orders",
    params(
        ("order_id" = OrderId, Path, description = "The order id (a decimal snowflake), as `error.order_id` gave it."),
        OrderParams,
    ),
    responses(
        (status = 200, description = "The order exists.", body = OrderStatus),
        (status = 400, description = "`invalid_request`: a malformed id or item, or no `item`.", body = ErrorBody),
        (status = 404, description = "`order_not_found`: neither SQL nor the item's order log holds it now. A purchase that answered `outcome_unknown` moments ago may still land (a write held up on its way); a repeat with its Idempotency-Key settles it.", body = ErrorBody),
        (status = 503, description = "`unavailable`: unknown, because Redis or the database cannot be read (or too many orders were taken around its time to search the log).", body = ErrorBody),
    ),
)]
pub async fn get_order(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<OrderParams>, QueryRejection>,
) -> Result<Json<OrderStatus>, ApiError> {
    let Path(raw) = path.map_err(|r| ApiError::invalid(format!("path: {}", r.body_text())))?;
    let order_id =
        OrderId::parse(&raw).map_err(|msg| ApiError::invalid(format!("order id: {msg}")))?;
    let Query(params) =
        params.map_err(|r| ApiError::invalid(format!("query string: {}", r.body_text())))?;
    let item = params
        .item
        .as_deref()
        .ok_or_else(|| ApiError::invalid("item is required: the order's item"))
        .and_then(|item| ItemId::parse(item).map_err(ApiError::invalid))?;
    match state.purchases.lookup().find(&item, order_id).await {
        Ok(Some((order, found_in))) => {
            let lifecycle = state
                .lifecycle
                .state(&item, order_id)
                .await
                .map_err(ApiError::redis)?;
            // No lifecycle record in Redis: SQL's state, which the moves
            // reach (a Redis restarted empty keeps none); else an order of a
            // sale without a payment window, final when bought.
            let state = match (lifecycle, &found_in) {
                (Some(state), _) => state,
                (None, Place::Sql) => state
                    .db
                    .order_state(order_id)
                    .await
                    .map_err(ApiError::database)?
                    .unwrap_or(OrderState::Paid),
                (None, Place::OrderLog) => OrderState::Paid,
            };
            Ok(Json(OrderStatus {
                order_id,
                status: "committed",
                found_in,
                state,
                order,
            }))
        }
        Ok(None) => Err(ApiError::OrderNotFound {
            item: item.to_string(),
            order_id: order_id.to_string(),
        }),
        Err(err @ LookupError::Database(_)) => Err(ApiError::database(err)),
        Err(err) => Err(ApiError::redis(err)),
    }
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
