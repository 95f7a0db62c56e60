//! `POST /api/orders/{order_id}/pay` and `POST /api/orders/{order_id}/cancel`:
//! the buyer ends a reserved order ([`crate::sale::lifecycle`]).
//!
//! The item and the buyer come in the JSON body (`{"item": .., "user_id":
//! ..}`): an order's lifecycle lives beside its item's stock, in the item's
//! Redis slot, so the item says where to look; the buyer must be the one who
//! bought. A repeat of the same action answers 200 again (a retry after a
//! lost reply learns the same outcome); the other action, or any action
//! after the deadline, is a 409 naming how the order ended.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::request::json_body;
use crate::domain::ErrorBody;
use crate::domain::{ItemId, UserId};
use crate::http::error::ApiError;
use crate::orders::lookup::LookupError;
use crate::orders::snowflake::OrderId;
use crate::sale::lifecycle::{Action, LifecycleError, OrderState, Settled};
use crate::state::AppState;

/// Whose order, of which item.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleInput {
    /// The order's item (required).
    #[schema(value_type = ItemId)]
    item: Option<String>,
    /// The buyer (required): the user the order was sold to.
    #[schema(value_type = UserId)]
    user_id: Option<String>,
}

/// The order's state after the request.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Settlement {
    pub order_id: OrderId,
    pub item_id: ItemId,
    pub user_id: UserId,
    pub state: OrderState,
    /// `true` when this request changed nothing: the same action had
    /// already ended the order (a retry), or the order of a sale without a
    /// payment window was paid when bought.
    pub repeated: bool,
}

#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/pay",
    tag = "orders",
    params(("order_id" = OrderId, Path, description = "The order id (a decimal snowflake) the purchase's 201 gave.")),
    request_body(content = SettleInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Paid: the unit is sold. A repeat answers the same (`repeated: true`), as does an order of a sale without a payment window, paid when bought.", body = Settlement),
        (status = 400, description = "`invalid_request`: a malformed id, item or user, or one missing.", body = ErrorBody),
        (status = 403, description = "`not_order_buyer`: the order is another user's; nothing changed.", body = ErrorBody),
        (status = 404, description = "`order_not_found`: the item holds no such order.", body = ErrorBody),
        (status = 409, description = "`order_expired` (its deadline passed: the unit went back on sale) or `order_cancelled`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis (or the database) cannot be read; nothing is known to have changed. Repeating is safe.", body = ErrorBody),
    ),
)]
pub async fn pay(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Settlement>, ApiError> {
    settle(&state, path, body, Action::Pay).await
}

#[utoipa::path(
    post,
    path = "/api/orders/{order_id}/cancel",
    tag = "orders",
    params(("order_id" = OrderId, Path, description = "The order id (a decimal snowflake) the purchase's 201 gave.")),
    request_body(content = SettleInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Cancelled: the unit is back on sale and the buyer may buy again. A repeat answers the same (`repeated: true`).", body = Settlement),
        (status = 400, description = "`invalid_request`: a malformed id, item or user, or one missing.", body = ErrorBody),
        (status = 403, description = "`not_order_buyer`: the order is another user's; nothing changed.", body = ErrorBody),
        (status = 404, description = "`order_not_found`: the item holds no such order.", body = ErrorBody),
        (status = 409, description = "`order_paid` (paid orders are final, as is every order of a sale without a payment window) or `order_expired`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis (or the database) cannot be read; nothing is known to have changed. Repeating is safe.", body = ErrorBody),
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Settlement>, ApiError> {
    settle(&state, path, body, Action::Cancel).await
}

async fn settle(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
    action: Action,
) -> Result<Json<Settlement>, ApiError> {
    let Path(raw) = path.map_err(|r| ApiError::invalid(format!("path: {}", r.body_text())))?;
    let order_id =
        OrderId::parse(&raw).map_err(|msg| ApiError::invalid(format!("order id: {msg}")))?;
    let input: SettleInput = json_body(body)?.unwrap_or_default();
    let item = input
        .item
        .as_deref()
        .ok_or_else(|| ApiError::invalid("item is required in the JSON body: the order's item"))
        .and_then(|item| ItemId::parse(item).map_err(ApiError::invalid))?;
    let user = input
        .user_id
        .as_deref()
        .ok_or_else(|| ApiError::invalid("user_id is required in the JSON body: the buyer"))
        .and_then(|user| UserId::parse(user).map_err(ApiError::invalid))?;
    let settled = state
        .lifecycle
        .settle(&item, order_id, &user, action)
        .await
        .map_err(|err| match err {
            LifecycleError::Redis(_) => ApiError::redis(err),
            LifecycleError::Protocol(_) => ApiError::Internal(err.into()),
        })?;
    let answer = |state: OrderState, repeated: bool| {
        Ok(Json(Settlement {
            order_id,
            item_id: item.clone(),
            user_id: user.clone(),
            state,
            repeated,
        }))
    };
    let ended = |state: OrderState| ApiError::OrderEnded {
        item: item.to_string(),
        order_id: order_id.to_string(),
        state,
    };
    match settled {
        Settled::Moved(state) => answer(state, false),
        Settled::Again(state) => answer(state, true),
        Settled::Ended(state) => Err(ended(state)),
        Settled::NotBuyer => Err(ApiError::NotOrderBuyer {
            item: item.to_string(),
            order_id: order_id.to_string(),
        }),
        // Not reserved here: an order of a sale without a payment window is
        // final (paid when bought), and is found where every order is.
        Settled::Unknown => match state.purchases.lookup().find(&item, order_id).await {
            Ok(Some((order, _))) if order.user_id != user.as_str() => {
                Err(ApiError::NotOrderBuyer {
                    item: item.to_string(),
                    order_id: order_id.to_string(),
                })
            }
            Ok(Some(_)) => match action {
                Action::Pay => answer(OrderState::Paid, true),
                Action::Cancel => Err(ended(OrderState::Paid)),
            },
            Ok(None) => Err(ApiError::OrderNotFound {
                item: item.to_string(),
                order_id: order_id.to_string(),
            }),
            Err(err @ LookupError::Database(_)) => Err(ApiError::database(err)),
            Err(err) => Err(ApiError::redis(err)),
        },
    }
}
