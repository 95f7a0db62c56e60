//! `REQUEST_TIMEOUT_MS` for every request: a request that runs out of time
//! is answered with a JSON 503, so a stuck dependency cannot stall a client,
//! nor graceful shutdown. tower-http's timeout layer answers with an empty
//! 408, which would break the one-error-shape rule.
//!
//! A layer of its own rather than axum's `from_fn` middleware: that one
//! boxed each request's future and cloned a boxed service for it, 4,300
//! instructions a request (callgrind: `/healthz` 28,100 with it, 23,800
//! without any timeout), for the one timer this needs.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::{FutureExt, Map};
use tokio::time::Timeout;
use tokio::time::error::Elapsed;
use tower::{Layer, Service};

use crate::http::error::ApiError;

/// Bounds each request of the service it wraps by `REQUEST_TIMEOUT_MS`.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeoutLayer(pub Duration);

impl<S> Layer<S> for RequestTimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            limit: self.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    limit: Duration,
}

/// What a timed request answers; a plain function, so the future's type is
/// nameable and nothing is boxed.
type Answer = fn(Result<Result<Response, Infallible>, Elapsed>) -> Result<Response, Infallible>;

impl<S> Service<Request> for RequestTimeout<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Map<Timeout<S::Future>, Answer>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        tokio::time::timeout(self.limit, self.inner.call(request)).map(answer as Answer)
    }
}

fn answer(timed: Result<Result<Response, Infallible>, Elapsed>) -> Result<Response, Infallible> {
    match timed {
        Ok(answered) => answered,
        Err(_) => Ok(ApiError::Unavailable {
            what: "the service",
            source: anyhow::anyhow!("the request exceeded REQUEST_TIMEOUT_MS"),
        }
        .into_response()),
    }
}
