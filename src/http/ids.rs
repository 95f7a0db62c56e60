//! `GET /api/ids/{id}`: decode a snowflake order id.

use std::time::{Duration, UNIX_EPOCH};

use axum::Json;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use serde::Serialize;

use crate::domain::ErrorBody;
use crate::http::error::ApiError;
use crate::orders::snowflake::OrderId;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecodedId {
    pub id: OrderId,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The same instant, RFC 3339 in UTC.
    pub time: String,
    pub worker: u16,
    pub sequence: u16,
}

/// Decode an order id: time, worker, sequence.
#[utoipa::path(
    get,
    path = "/api/ids/{id}",
    tag = "orders",
    params(("id" = OrderId, Path, description = "A snowflake order id.")),
    responses(
        (status = 200, description = "The id's fields.", body = DecodedId),
        (status = 400, description = "`invalid_request`: not a snowflake id.", body = ErrorBody),
    ),
)]
pub async fn decode(
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DecodedId>, ApiError> {
    let Path(raw) = path.map_err(|r| ApiError::invalid(r.body_text()))?;
    let id = OrderId::parse(&raw).map_err(ApiError::invalid)?;
    let parts = id.parts();
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(parts.unix_ms));
    Ok(Json(DecodedId {
        id,
        unix_ms: parts.unix_ms,
        time: time.to_string(),
        worker: parts.worker,
        sequence: parts.sequence,
    }))
}
