//! Reading a request, shared by the handlers: the `{item}` path segment as a
//! validated id, the JSON content type an admin request must declare, and a
//! JSON body read within [`BODY_LIMIT`], every failure in the API's error
//! shape.

use axum::extract::Path;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::domain::ItemId;
use crate::http::error::ApiError;

/// Bodies are a few dozen bytes; 16 KiB leaves room and stops abuse early.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The `{item}` path segment as a validated id.
pub(super) fn item_id(path: Result<Path<String>, PathRejection>) -> Result<ItemId, ApiError> {
    let Path(raw) = path.map_err(|r| ApiError::invalid(r.body_text()))?;
    ItemId::parse(&raw).map_err(ApiError::invalid)
}

/// An admin request must say its body is JSON, even an empty one: browsers
/// send `application/json` only after a CORS preflight this service never
/// grants, so a cross-site form or a no-cors `fetch` (`text/plain`, form
/// types, no body) cannot reach an admin endpoint.
pub(super) fn require_json_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses a JSON body whatever its content type (`curl -d` sends a form type),
/// mapping every failure to our error shape. An empty body is `None`, and so
/// is JSON `null`: the document marks optional bodies nullable (utoipa's
/// `Option<T>` body), and a client sending `null` means "nothing". Anything
/// else must be an object, as the document says: serde would also read a
/// struct from an array of its fields in order (`[null, null]`).
pub(super) fn json_body<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<Option<T>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        } else {
            ApiError::invalid(rejection.body_text())
        }
    })?;
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(None);
    };
    // Only the first byte is looked at: a malformed object is serde's to
    // report, with its position.
    if !matches!(first, b'{' | b'n') {
        return Err(ApiError::invalid("the JSON body must be an object"));
    }
    serde_json::from_slice(&body)
        .map_err(|err| ApiError::invalid(format!("invalid JSON body: {err}")))
}
