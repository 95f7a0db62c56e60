//! The admin guard: an extractor that admin handlers take first, so an
//! unauthorised request is refused before its body is even read.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::state::{AdminPolicy, AppState};

/// Proof that the request may use admin endpoints.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match &state.admin {
            AdminPolicy::LoopbackOnly {
                bound_to_loopback: true,
            } => Ok(Admin),
            AdminPolicy::LoopbackOnly {
                bound_to_loopback: false,
            } => Err(ApiError::AdminDisabled),
            AdminPolicy::Token(expected) => {
                let presented = parts
                    .headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                    Ok(Admin)
                } else {
                    Err(ApiError::Unauthorized)
                }
            }
        }
    }
}

/// Compares without returning early on the first differing byte, so response
/// time does not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
