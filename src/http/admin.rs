//! The admin guard: an extractor that admin handlers take first, so an
//! unauthorised request is refused before its body is even read.
//!
//! With `ADMIN_TOKEN` set, a request needs `Authorization: Bearer <token>`,
//! compared in time that depends on neither the token's content nor its
//! length. Without it, admin is allowed only while the server is bound to
//! loopback, and only for a request whose TCP peer is a loopback address,
//! that names a loopback `Host` (a page that rebinds its own domain to
//! 127.0.0.1 still sends its own name), and that carries no `Forwarded`,
//! `X-Forwarded-For` or `X-Real-IP` header: a same-host proxy connects from
//! loopback too, on behalf of anyone, and a proxy set up to say so (as
//! `deploy/nginx.conf.template` is) says it in those headers. A proxy that says
//! nothing cannot be told apart: put a token behind any proxy.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use crate::http::error::ApiError;
use crate::state::{AdminPolicy, AppState};

/// Proof that the request may use admin endpoints.
pub struct Admin;

/// Headers a proxy adds for the client it forwards.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match &state.admin {
            AdminPolicy::LoopbackOnly { bound_to_loopback } => {
                let peer = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0);
                loopback_verdict(*bound_to_loopback, peer, &parts.headers)
                    .map(|()| Admin)
                    .map_err(ApiError::Forbidden)
            }
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

/// Whether a token-less admin request may pass, or why not.
fn loopback_verdict(
    bound_to_loopback: bool,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    if !bound_to_loopback {
        return Err("admin endpoints are disabled: set ADMIN_TOKEN, or bind to a loopback address");
    }
    if !peer.is_some_and(|peer| peer.ip().is_loopback()) {
        return Err("without ADMIN_TOKEN, admin requests are accepted from this machine only");
    }
    if !headers
        .get(HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(is_loopback_host)
    {
        return Err(
            "without ADMIN_TOKEN, admin requests must name this machine (Host: localhost or a loopback address)",
        );
    }
    if FORWARDING_HEADERS
        .iter()
        .any(|name| headers.contains_key(HeaderName::from_static(name)))
    {
        return Err(
            "without ADMIN_TOKEN, admin requests forwarded by a proxy are refused; set ADMIN_TOKEN",
        );
    }
    Ok(())
}

/// `localhost`, a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [::1]:8080
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Compares in time that depends only on the length of `presented` (which
/// the caller chose): every presented byte is compared, against the expected
/// token repeated, and a length mismatch is folded into the result rather
/// than returned early, so timing reveals neither how much of a guess was
/// right nor how long the token is. `expected` is never empty (an empty
/// ADMIN_TOKEN means no token).
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    if expected.is_empty() {
        return false;
    }
    let mut diff = u8::from(presented.len() != expected.len());
    for (i, byte) in presented.iter().enumerate() {
        diff |= byte ^ expected[i % expected.len()];
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(
            !constant_time_eq(b"secretsecret", b"secret"),
            "a repeat is not the token"
        );
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"", b""));
    }

    #[test]
    fn token_less_admin_needs_a_loopback_peer_and_no_proxy() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.7:5000".parse().unwrap();
        let mut none = HeaderMap::new();
        none.insert(HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(loopback_verdict(true, Some(local), &none).is_ok());
        assert!(loopback_verdict(true, Some("[::1]:1".parse().unwrap()), &none).is_ok());
        assert!(loopback_verdict(true, Some(remote), &none).is_err());
        assert!(loopback_verdict(true, None, &none).is_err(), "unknown peer");
        assert!(loopback_verdict(false, Some(local), &none).is_err());
        for host in ["localhost:8080", "LOCALHOST", "[::1]:80", "127.0.0.1"] {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, host.parse().unwrap());
            assert!(
                loopback_verdict(true, Some(local), &headers).is_ok(),
                "{host}"
            );
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "10.0.0.1:8080",
            "localhost.evil.example",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(HOST, host.parse().unwrap());
            assert!(
                loopback_verdict(true, Some(local), &headers).is_err(),
                "{host}"
            );
        }
        assert!(
            loopback_verdict(true, Some(local), &HeaderMap::new()).is_err(),
            "no Host"
        );
        for name in FORWARDING_HEADERS {
            let mut forwarded = none.clone();
            forwarded.insert(
                HeaderName::from_static(name),
                "198.51.100.1".parse().unwrap(),
            );
            assert!(
                loopback_verdict(true, Some(local), &forwarded).is_err(),
                "{name}"
            );
        }
    }
}
