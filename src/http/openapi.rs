//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the types they read and write, and served at
//! `GET /api/openapi.json`. A test holds the router to it: every route the
//! router serves is in the document, with its method.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};
use utoipa::openapi::{Ref, RefOr, Required};

use super::{
    PAGE, STATIC_FILES, faults, health, ids, items, lifecycle, live, orders, purchase, strategies,
};
use crate::http::error::ApiError;
use crate::outcome::Code;

/// The purchase endpoint's path, as its `#[utoipa::path]` names it.
const PURCHASE: &str = "/api/items/{item}/purchase";
use crate::orders::db::Direction;
use crate::sale::idempotency::IdempotencyKey;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seckill",
        description = "A flash-sale service and concurrency lab: each purchase names the concurrency-control strategy that guards the stock. Every error is `{\"error\": {\"code\", \"message\"}}`; programs match on `code`.",
        license(name = "Unlicensed"),
    ),
    paths(
        purchase::purchase,
        strategies::strategies,
        items::list_items,
        items::get_item,
        items::put_item,
        orders::list_orders,
        orders::get_order,
        lifecycle::pay,
        lifecycle::cancel,
        orders::persister,
        ids::decode,
        live::stats,
        live::stream,
        live::start_race,
        live::cancel_race,
        faults::start_faults,
        faults::cancel_faults,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    components(schemas(Direction, IdempotencyKey)),
    modifiers(&AdminToken, &PageRoutes, &PurchaseRefusals, &AnyRoute),
    tags(
        (name = "purchase", description = "Buying, and the strategies a purchase may name."),
        (name = "items", description = "Items and the truths of their sales; restocks are admin."),
        (name = "orders", description = "Orders: pay or cancel a reserved one, persisted orders, order ids and the persister."),
        (name = "status page", description = "The live feed, the race control and the fault lab's control."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    ),
)]
pub struct ApiDoc;

/// Admin endpoints take `Authorization: Bearer <ADMIN_TOKEN>`; without a
/// token configured, only requests from this machine. Each admin operation
/// lists two alternatives, `admin_token` and `{}`: the empty one is the
/// token-less mode, so a validator does not call a served loopback request
/// without a token non-conforming.
struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "admin_token",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "Admin operations (`PUT /api/items/{item}`, `POST` and `DELETE` of `/api/race` and `/api/faults`) accept either of two security requirements, and which one applies is the server's configuration. With `ADMIN_TOKEN` set: `admin_token`, i.e. `Authorization: Bearer <ADMIN_TOKEN>`; without it 401 `unauthorized`. With no `ADMIN_TOKEN`: the empty requirement `{}`, no credentials, but only while the server listens on loopback and only for a request from this machine, naming a loopback `Host`, with no `Forwarded`, `X-Forwarded-For` or `X-Real-IP` header; otherwise 403 `forbidden`.",
                        ))
                        .build(),
                ),
            );
    }
}

/// The status page's files: served from a folder, not by handlers.
struct PageRoutes;

impl utoipa::Modify for PageRoutes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let file = ParameterBuilder::new()
            .name("file")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(
                "A file of STATIC_DIR (the server also serves its subfolders' files).",
            ))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        for (path, summary, content_type, parameters) in [
            (PAGE, "The status page.", "text/html", vec![]),
            (
                STATIC_FILES,
                "The status page's scripts and styles.",
                "*/*",
                vec![file],
            ),
        ] {
            let ok = ResponseBuilder::new()
                .description(summary)
                .content(content_type, ContentBuilder::new().build())
                .build();
            let missing = ResponseBuilder::new()
                .description("`not_found`: no such file, or a name the file system cannot hold (too long, a NUL byte).")
                .content("application/json", error_content())
                .build();
            let operation = OperationBuilder::new()
                .summary(Some(summary))
                .tag("status page")
                .parameters(Some(parameters))
                .response("200", ok)
                .response("404", missing)
                .build();
            openapi
                .paths
                .paths
                .insert(path.to_owned(), PathItem::new(HttpMethod::Get, operation));
        }
    }
}

/// The purchase's refusals, one response per status, each listing the
/// outcome catalogue's codes with what they mean ([`Code::describe`]).
struct PurchaseRefusals;

impl utoipa::Modify for PurchaseRefusals {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(operation) = openapi
            .paths
            .paths
            .get_mut(PURCHASE)
            .and_then(|item| item.post.as_mut())
        else {
            return;
        };
        let responses = &mut operation.responses.responses;
        for status in Code::refusal_statuses() {
            let Some(description) = Code::describe(status) else {
                continue;
            };
            // The example is a real answer: its body as the API writes it.
            let example = (status == Code::StrategyMismatch.status())
                .then(|| {
                    serde_json::to_value(
                        ApiError::StrategyMismatch {
                            item: "iphone".into(),
                            requested: "naive".into(),
                            bound: "lua".into(),
                        }
                        .body(),
                    )
                    .ok()
                })
                .flatten();
            let content = ContentBuilder::new()
                .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
                .example(example)
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/json", content)
                .build();
            responses.insert(status.as_u16().to_string(), response.into());
        }
    }
}

/// The JSON error body, `{"error": {"code", "message"}}`.
fn error_content() -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))))
        .build()
}

/// What any route may also answer: the documented statuses of each
/// operation are its own; these come from the router's layers.
struct AnyRoute;

impl utoipa::Modify for AnyRoute {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let error = error_content();
        let other = ResponseBuilder::new()
            .description(
                "Any other status carries the error body: `method_not_allowed` (405), `internal` (500: a bug, logged), `unavailable` (503: the request ran out of time, with Retry-After).",
            )
            .content("application/json", error)
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .entry("default".to_owned())
                    .or_insert_with(|| other.clone().into());
            }
        }
    }
}

/// Built once: the document does not change while the process runs.
static DOCUMENT: LazyLock<Result<String, String>> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .map_err(|err| err.to_string())
});

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)),
)]
pub async fn openapi_json() -> Result<impl IntoResponse, ApiError> {
    let document = DOCUMENT.as_ref().map_err(|err| {
        ApiError::Internal(anyhow::anyhow!("cannot render the OpenAPI document: {err}"))
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        document.as_str(),
    ))
}

#[cfg(test)]
mod tests {
    use axum::http::Method;
    use utoipa::openapi::path::Operation;

    use super::*;

    fn operation<'a>(item: &'a PathItem, method: &Method) -> Option<&'a Operation> {
        match *method {
            Method::GET => item.get.as_ref(),
            Method::POST => item.post.as_ref(),
            Method::PUT => item.put.as_ref(),
            Method::DELETE => item.delete.as_ref(),
            Method::PATCH => item.patch.as_ref(),
            _ => None,
        }
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let doc = ApiDoc::openapi();
        let routes = super::super::routes();
        assert!(routes.len() > 10, "the route table is the router's");
        for (method, path) in routes
            .iter()
            .map(|route| (route.method.clone(), route.path))
            .chain([(Method::GET, PAGE), (Method::GET, STATIC_FILES)])
        {
            let item = doc
                .paths
                .paths
                .get(path)
                .unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
            let operation = operation(item, &method)
                .unwrap_or_else(|| panic!("{method} {path} is not in the OpenAPI document"));
            assert!(
                !operation.responses.responses.is_empty(),
                "{method} {path} documents no response"
            );
        }
    }

    #[test]
    fn the_purchase_documents_its_refusals() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let purchase = &doc["paths"][PURCHASE]["post"];
        for code in Code::ALL.into_iter().filter(|c| c.is_refusal()) {
            let status = code.status().as_u16().to_string();
            let described = purchase["responses"][&status]["description"].to_string();
            assert!(
                described.contains(&format!("`{code}`")),
                "{code} missing from {status}: {described}"
            );
        }
        let strategy = &doc["components"]["schemas"]["StrategyKind"]["enum"];
        assert_eq!(
            strategy.as_array().map(Vec::len),
            Some(crate::strategy::StrategyKind::ALL.len()),
            "{strategy}"
        );
    }
}
