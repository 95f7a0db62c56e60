//! `PUT /api/items/{item}` (admin), `GET /api/items`, `GET /api/items/{item}`.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;

use utoipa::openapi::schema::Object;

use super::admin::Admin;
use super::request::{item_id, json_body, require_json_type};
use super::schema::integer_in;
use crate::domain::ErrorBody;
use crate::domain::{ItemId, whole};
use crate::http::error::ApiError;
use crate::sale::lifecycle::MAX_PAYMENT_WINDOW_MS;
use crate::sale::{ItemSettings, ItemView, MAX_PER_USER_LIMIT, MAX_STOCK};
use crate::state::AppState;
use crate::strategy::StrategyKind;

/// A restock: the new sale's stock, per-user limit and strategy.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    #[serde(deserialize_with = "whole::required")]
    #[schema(schema_with = stock_schema)]
    stock: u64,
    #[serde(default = "one", deserialize_with = "whole::required")]
    #[schema(schema_with = per_user_limit_schema)]
    per_user_limit: u64,
    /// Binds the new sale to this strategy; absent, its first purchase does.
    #[schema(value_type = Option<StrategyKind>)]
    strategy: Option<String>,
    #[serde(default, deserialize_with = "whole::required")]
    #[schema(schema_with = payment_window_schema)]
    payment_window_ms: u64,
}

fn one() -> u64 {
    1
}

fn stock_schema() -> Object {
    integer_in(0, MAX_STOCK, "Units on sale.")
}

fn per_user_limit_schema() -> Object {
    integer_in(
        1,
        MAX_PER_USER_LIMIT,
        "Units one user may hold; 1 when absent.",
    )
}

fn payment_window_schema() -> Object {
    integer_in(
        0,
        MAX_PAYMENT_WINDOW_MS,
        "How long a buyer has to pay (ms): each order is `reserved` until paid (`POST /api/orders/{order_id}/pay`), cancelled, or expired, when its unit goes back on sale. 0 or absent: orders are final when bought.",
    )
}

impl ItemInput {
    fn validate(self) -> Result<ItemSettings, ApiError> {
        if self.stock > MAX_STOCK {
            return Err(ApiError::invalid(format!(
                "stock must be at most {MAX_STOCK}"
            )));
        }
        if !(1..=MAX_PER_USER_LIMIT).contains(&self.per_user_limit) {
            return Err(ApiError::invalid(format!(
                "per_user_limit must be between 1 and {MAX_PER_USER_LIMIT}"
            )));
        }
        if self.payment_window_ms > MAX_PAYMENT_WINDOW_MS {
            return Err(ApiError::invalid(format!(
                "payment_window_ms must be at most {MAX_PAYMENT_WINDOW_MS} (a day)"
            )));
        }
        let strategy = self
            .strategy
            .map(|name| name.parse::<StrategyKind>())
            .transpose()
            .map_err(ApiError::invalid)?;
        Ok(ItemSettings {
            stock: self.stock,
            per_user_limit: self.per_user_limit,
            strategy,
            payment_window_ms: self.payment_window_ms,
        })
    }
}

/// Create or restock an item; its sale starts over, bound to the body's
/// `strategy` or, without one, to its first purchase's. 201 when created, 200
/// when restocked; the body is the fresh item view.
#[utoipa::path(
    put,
    path = "/api/items/{item}",
    tag = "items",
    security(("admin_token" = []), ()),
    params(("item" = ItemId, Path, description = "The item.")),
    request_body(content = ItemInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the fresh item view.", body = ItemView),
        (status = 200, description = "Restocked: a new sale; the fresh item view.", body = ItemView),
        (status = 400, description = "`invalid_request`: a malformed id or body, stock or limit out of range, an unknown strategy.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: `ADMIN_TOKEN` is set and the bearer token is missing or wrong.", body = ErrorBody),
        (status = 403, description = "`forbidden`: no `ADMIN_TOKEN`, and the request is not from this machine (or came through a proxy).", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: admin bodies must be `application/json`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or the database cannot answer.", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
pub async fn put_item(
    _admin: Admin,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ItemView>), ApiError> {
    let item = item_id(path)?;
    require_json_type(&headers)?;
    let input: ItemInput = json_body(body)?.ok_or_else(|| {
        ApiError::invalid(
            r#"a JSON body is required, e.g. {"stock":100,"per_user_limit":1,"strategy":"lua"}"#,
        )
    })?;
    let settings = input.validate()?;
    let restocked = state.sales.restock(&item, settings, &state.stats).await?;
    tracing::info!(%item, stock = settings.stock, generation = restocked.generation, "item restocked");
    let view = state
        .sales
        .view(&item, &state.stats)
        .await?
        .ok_or_else(|| ApiError::ItemNotFound(item.to_string()))?;
    let status = if restocked.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view)))
}

/// One item with the truths of its sale.
#[utoipa::path(
    get,
    path = "/api/items/{item}",
    tag = "items",
    params(("item" = ItemId, Path, description = "The item.")),
    responses(
        (status = 200, description = "The item view.", body = ItemView),
        (status = 400, description = "`invalid_request`: a malformed id.", body = ErrorBody),
        (status = 404, description = "`item_not_found`.", body = ErrorBody),
        (status = 503, description = "`unavailable`: Redis or the database cannot answer.", body = ErrorBody),
    ),
)]
pub async fn get_item(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ItemView>, ApiError> {
    let item = item_id(path)?;
    state
        .sales
        .view(&item, &state.stats)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::ItemNotFound(item.to_string()))
}

/// Every item.
#[utoipa::path(
    get,
    path = "/api/items",
    tag = "items",
    responses(
        (status = 200, description = "Every item's view.", body = Vec<ItemView>),
        (status = 503, description = "`unavailable`: Redis or the database cannot answer.", body = ErrorBody),
    ),
)]
pub async fn list_items(State(state): State<AppState>) -> Result<Json<Vec<ItemView>>, ApiError> {
    Ok(Json(state.sales.list(&state.stats).await?))
}
