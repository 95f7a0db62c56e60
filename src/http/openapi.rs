//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! attributes and the types they read and write, and served at
//! `GET /api/openapi.json`. A test holds the router to it: every route the
//! router serves is in the document, with its method.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ResponseBuilder};

use super::{PAGE, STATIC_FILES, health, ids, items, live, orders, purchase};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "seckill",
        description = "A flash-sale service and concurrency lab: each purchase names the concurrency-control strategy that guards the stock. Every error is `{\"error\": {\"code\", \"message\"}}`; programs match on `code`.",
        license(name = "Unlicensed"),
    ),
    paths(
        purchase::purchase,
        super::strategies,
        items::list_items,
        items::get_item,
        items::put_item,
        orders::list_orders,
        orders::persister,
        ids::decode,
        live::stats,
        live::stream,
        live::start_race,
        live::cancel_race,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    modifiers(&AdminToken, &PageRoutes),
    tags(
        (name = "purchase", description = "Buying, and the strategies a purchase may name."),
        (name = "items", description = "Items and the truths of their sales; restocks are admin."),
        (name = "orders", description = "Persisted orders, order ids and the persister."),
        (name = "status page", description = "The live feed and the race control."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    ),
)]
pub struct ApiDoc;

/// Admin endpoints take `Authorization: Bearer <ADMIN_TOKEN>`; without a
/// token configured, only requests from this machine.
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
                            "ADMIN_TOKEN. Without one configured, admin is allowed only from this machine, unproxied.",
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
        for (path, summary, content_type) in [
            (PAGE, "The status page.", "text/html"),
            (STATIC_FILES, "The status page's scripts and styles.", "*/*"),
        ] {
            let ok = ResponseBuilder::new()
                .description(summary)
                .content(content_type, ContentBuilder::new().build())
                .build();
            let operation = OperationBuilder::new()
                .summary(Some(summary))
                .tag("status page")
                .response("200", ok)
                .build();
            openapi
                .paths
                .paths
                .insert(path.to_owned(), PathItem::new(HttpMethod::Get, operation));
        }
    }
}

/// Built once: the document does not change while the process runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi().to_pretty_json().unwrap_or_else(|err| {
        format!("{{\"error\": \"cannot render the OpenAPI document: {err}\"}}")
    })
});

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object)),
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
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
        let purchase = &doc["paths"]["/api/items/{item}/purchase"]["post"];
        let responses = purchase["responses"].to_string();
        for code in [
            "sold_out",
            "strategy_mismatch",
            "limit_reached",
            "sale_restarted",
            "item_not_found",
            "contention",
            "idempotency_key_reused",
        ] {
            assert!(responses.contains(code), "{code} missing: {responses}");
        }
        let strategy = &doc["components"]["schemas"]["StrategyKind"]["enum"];
        assert_eq!(
            strategy.as_array().map(Vec::len),
            Some(crate::strategy::StrategyKind::ALL.len()),
            "{strategy}"
        );
    }
}
