//! The HTTP layer: routes, extractors and the middleware stack. Handlers are thin:
//! they validate input into domain types, call the library, and map outcomes to
//! responses.

mod admin;
pub mod error;
mod faults;
mod health;
mod ids;
mod items;
mod lifecycle;
mod live;
pub mod live_feed;
pub mod openapi;
mod orders;
mod per_peer;
mod purchase;
mod request;
mod schema;
pub mod server;
mod strategies;
mod timeout;
mod write_timeout;

pub use request::BODY_LIMIT;
pub use strategies::{Catalogue, CatalogueEntry};

use std::convert::Infallible;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::handler::Handler;
use axum::http::header;
use axum::http::{Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{MethodFilter, MethodRouter, on};
use tower::{ServiceBuilder, service_fn};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::services::fs::ServeFileSystemResponseBody as ServeDirBody;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::TraceLayer;

use crate::http::error::ApiError;
use crate::state::AppState;

/// The status page.
const PAGE: &str = "/";
/// The status page's files, served from `STATIC_DIR`.
const STATIC_FILES: &str = "/static/{file}";

/// One route of the API.
struct Route {
    /// Read by the test that holds the router to the OpenAPI document.
    #[cfg_attr(not(test), allow(dead_code))]
    method: Method,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

/// A route serving `handler` for `method` on `path`.
fn route<H, T>(method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    // The table names only GET, POST, PUT and DELETE, each a method filter.
    let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
    Route {
        method,
        path,
        handler: on(filter, handler),
    }
}

/// Every handler's route: the router serves these (and the status page's
/// files), and a test checks each is in the OpenAPI document.
fn routes() -> Vec<Route> {
    vec![
        route(Method::GET, "/api/stats", live::stats),
        route(Method::GET, "/api/stats/stream", live::stream),
        route(Method::POST, "/api/race", live::start_race),
        route(Method::DELETE, "/api/race", live::cancel_race),
        route(Method::POST, "/api/faults", faults::start_faults),
        route(Method::DELETE, "/api/faults", faults::cancel_faults),
        route(Method::GET, "/healthz", health::healthz),
        route(Method::GET, "/readyz", health::readyz),
        route(Method::GET, "/metrics", health::metrics),
        route(Method::GET, "/api/openapi.json", openapi::openapi_json),
        route(Method::GET, "/api/strategies", strategies::strategies),
        route(Method::GET, "/api/items", items::list_items),
        route(Method::GET, "/api/items/{item}", items::get_item),
        route(Method::PUT, "/api/items/{item}", items::put_item),
        route(
            Method::POST,
            "/api/items/{item}/purchase",
            purchase::purchase,
        ),
        route(Method::GET, "/api/ids/{id}", ids::decode),
        route(Method::GET, "/api/orders", orders::list_orders),
        route(Method::GET, "/api/orders/{order_id}", orders::get_order),
        route(Method::POST, "/api/orders/{order_id}/pay", lifecycle::pay),
        route(
            Method::POST,
            "/api/orders/{order_id}/cancel",
            lifecycle::cancel,
        ),
        route(Method::GET, "/api/persister", orders::persister),
    ]
}

/// Builds the whole router with its middleware.
pub fn router(state: AppState) -> Router {
    let timeout = state.request_timeout;
    let page = state.static_dir.clone();
    let static_prefix = STATIC_FILES.trim_end_matches("/{file}");
    let index = ServeFile::new(page.join("index.html"));
    let files = ServeDir::new(&page);
    let mut router = Router::new()
        .route_service(
            PAGE,
            service_fn(move |req: Request| {
                let mut index = index.clone();
                async move { Ok::<_, Infallible>(file_response(index.try_call(req).await)) }
            }),
        )
        .nest_service(
            static_prefix,
            service_fn(move |req: Request| {
                let mut files = files.clone();
                async move { Ok::<_, Infallible>(file_response(files.try_call(req).await)) }
            }),
        );
    // Routes of one path merge: their methods must differ.
    for Route { path, handler, .. } in routes() {
        router = router.route(path, handler);
    }
    // One `layer` call for the whole stack, outermost first: each call wraps
    // every route again and boxes it once more, and a request then clones
    // and polls one boxed service per call. Four calls cost every request
    // about 3,600 instructions more (callgrind: `/healthz` 23,100 -> 19,500).
    let middleware = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(timeout::RequestTimeoutLayer(timeout))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware)
        .with_state(state)
}

/// The file server's answer, with its failures as the API's JSON errors.
/// `try_call` rather than `call`: `call` turns every I/O error into an empty
/// 500 logged at ERROR, and the usual ones are the client's doing, not the
/// server's: a name longer than the file system allows (ENAMETOOLONG), or
/// one it cannot hold (a NUL byte), is no such file.
fn file_response(
    served: std::io::Result<axum::http::Response<ServeDirBody>>,
) -> axum::response::Response {
    use std::io::ErrorKind;
    match served {
        Ok(response) => match response.status() {
            // ServeDir's own refusals have empty bodies.
            StatusCode::NOT_FOUND => ApiError::RouteNotFound("no such file".into()).into_response(),
            StatusCode::METHOD_NOT_ALLOWED => {
                let mut refusal = ApiError::MethodNotAllowed.into_response();
                if let Some(allow) = response.headers().get(header::ALLOW) {
                    refusal.headers_mut().insert(header::ALLOW, allow.clone());
                }
                refusal
            }
            _ => response.into_response(),
        },
        Err(err)
            if matches!(
                err.kind(),
                ErrorKind::InvalidFilename | ErrorKind::InvalidInput | ErrorKind::NotADirectory
            ) =>
        {
            tracing::debug!(error = %err, "static file name refused by the file system");
            ApiError::RouteNotFound("no such file".into()).into_response()
        }
        Err(err) => ApiError::Internal(anyhow::Error::new(err).context("reading a static file"))
            .into_response(),
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
