//! The status page's endpoints: the latest snapshot (`GET /api/stats`), the
//! live feed (`GET /api/stats/stream`, Server-Sent Events, about twice a
//! second), and the race control (`POST /api/race` to start one, `DELETE
//! /api/race` to cancel it; admin). The fault lab's control is
//! [`super::faults`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use bytes::Bytes;
use futures_util::Stream;
use serde::Deserialize;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{Array, Object, ObjectBuilder, Schema, Type};

use super::admin::Admin;
use super::request::{json_body, require_json_type};
use super::schema::{integer_in_or_null, unique_list_or_null};
use crate::domain::{ErrorBody, whole};
use crate::http::error::ApiError;
use crate::lab::loadgen::{Payments, RacePlan};
use crate::lab::race::{RaceError, RaceStatus};
use crate::state::{AdminPolicy, AppState};
use crate::strategy::StrategyKind;

/// `GET /api/stats`: the latest live snapshot.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "status page",
    responses((status = 200, description = "The latest live snapshot: items, their truths, per-strategy rates and latencies, the persister, the race.", body = Object)),
)]
pub async fn stats(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.live.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        snapshot.to_string(),
    )
}

/// `GET /api/stats/stream`: the current snapshot at once, then every new one.
/// Ends when the server starts shutting down. At most `MAX_LIVE_STREAMS` at
/// once (503 past that): a stream holds a connection for as long as its
/// client wants, so unbounded, a few thousand would take every connection.
#[utoipa::path(
    get,
    path = "/api/stats/stream",
    tag = "status page",
    responses(
        (status = 200, description = "Server-Sent Events named `stats`, each one snapshot as `GET /api/stats` returns it.", body = StatsEvent, content_type = "text/event-stream"),
        (status = 503, description = "`unavailable`: `MAX_LIVE_STREAMS` streams are open.", body = ErrorBody),
    ),
)]
pub async fn stream(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let permit = Arc::clone(&state.live_streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable {
            what: "the live feed",
            source: anyhow::anyhow!("MAX_LIVE_STREAMS live streams are open"),
        })?;
    let live = state.live.clone();
    let closing = state.closing.subscribe();
    let events = futures_util::stream::unfold(
        (live, closing, true, permit),
        |(mut live, mut closing, first, permit)| async move {
            if !first {
                tokio::select! {
                    changed = live.changed() => changed.ok()?,
                    _ = closing.wait_for(|c| *c) => return None,
                }
            }
            if *closing.borrow() {
                return None;
            }
            let data = live.borrow_and_update().clone();
            let event = Event::default().event("stats").data(&*data);
            Some((Ok(event), (live, closing, false, permit)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

/// One event of the live feed as a Server-Sent Events reader parses it:
/// OpenAPI 3.1 has a `text/event-stream` schema describe each event.
pub struct StatsEvent;

impl utoipa::PartialSchema for StatsEvent {
    fn schema() -> RefOr<Schema> {
        let event = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["stats"]));
        let data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .description(Some("One snapshot, as `GET /api/stats` returns it."));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("event", event)
            .property("data", data)
            .required("event")
            .required("data")
            .into()
    }
}

impl utoipa::ToSchema for StatsEvent {}

/// Limits that keep a race from the page a demonstration, not a siege.
const MAX_RACE_STOCK: u64 = 1_000_000;
const MAX_RACE_CONCURRENCY: usize = 256;
const MAX_RACE_SECONDS: u64 = 120;
/// Longest payment window a page race may give its sales.
const MAX_RACE_WINDOW_MS: u64 = 60_000;

/// What to race; every field may be left out.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RaceInput {
    #[schema(schema_with = race_strategies_schema)]
    strategies: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = race_stock_schema)]
    stock: Option<u64>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = race_concurrency_schema)]
    concurrency: Option<usize>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = race_seconds_schema)]
    duration_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = race_window_schema)]
    payment_window_ms: Option<u64>,
}

fn race_strategies_schema() -> Array {
    unique_list_or_null(
        "StrategyKind",
        "Each at most once, each enabled here; every strategy when absent or empty.",
    )
}

fn race_stock_schema() -> Object {
    integer_in_or_null(
        1,
        MAX_RACE_STOCK,
        "Units per strategy's item; 2000 when absent.",
    )
}

fn race_concurrency_schema() -> Object {
    integer_in_or_null(
        1,
        MAX_RACE_CONCURRENCY as u64,
        "Buyers at once; 32 when absent.",
    )
}

fn race_window_schema() -> Object {
    integer_in_or_null(
        0,
        MAX_RACE_WINDOW_MS,
        "A payment window (ms) for each sale: half the buyers pay, the other orders expire and their units go back on sale, and the race lasts `duration_s`. 0 or absent: orders are final, and the race ends at the first sold-out.",
    )
}

fn race_seconds_schema() -> Object {
    integer_in_or_null(
        1,
        MAX_RACE_SECONDS,
        "Upper bound per strategy, in seconds; 30 when absent.",
    )
}

/// The strategies a body's `strategies` names, each enabled here and named
/// once; `None` when it names none (absent or empty): the caller's default.
pub(super) fn enabled_strategies(
    state: &AppState,
    names: Option<&[String]>,
) -> Result<Option<Vec<StrategyKind>>, ApiError> {
    let Some(names) = names.filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    let kinds = names
        .iter()
        .map(|n| state.strategies.get(n).map(|s| s.kind()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::invalid)?;
    let distinct: std::collections::BTreeSet<_> = kinds.iter().collect();
    if distinct.len() != kinds.len() {
        return Err(ApiError::invalid(
            "`strategies` names a strategy more than once; each runs once",
        ));
    }
    Ok(Some(kinds))
}

/// `POST /api/race`: fresh identical items, one per strategy, driven by the
/// load generator against this server. 202 and the status; 409 while one runs.
/// Each strategy at most once; the whole race is bounded in time (see
/// [`crate::lab::race`]).
#[utoipa::path(
    post,
    path = "/api/race",
    tag = "status page",
    security(("admin_token" = []), ()),
    request_body(content = RaceInput, content_type = "application/json",
        description = "Required, if only `{}`: an admin request must be sent as `application/json` (415 otherwise), which a cross-site form cannot do."),
    responses(
        (status = 202, description = "Started; watch the live feed.", body = RaceStatus),
        (status = 400, description = "`invalid_request`: no body, an unknown, disabled or repeated strategy, a limit out of range.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 409, description = "`race_running`: one race at a time.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ),
)]
pub async fn start_race(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<RaceStatus>), ApiError> {
    require_json_type(&headers)?;
    // Required, like its content type: the document can only say "JSON
    // body" of a request that has one.
    let input: RaceInput = json_body(body)?
        .ok_or_else(|| ApiError::invalid("a JSON object is required, `{}` for every default"))?;
    let strategies = enabled_strategies(&state, input.strategies.as_deref())?
        .unwrap_or_else(|| StrategyKind::ALL.to_vec());
    let stock = input.stock.unwrap_or(2_000);
    let concurrency = input.concurrency.unwrap_or(32);
    let duration = input.duration_s.unwrap_or(30);
    let window = input.payment_window_ms.unwrap_or(0);
    if !(1..=MAX_RACE_STOCK).contains(&stock)
        || !(1..=MAX_RACE_CONCURRENCY).contains(&concurrency)
        || !(1..=MAX_RACE_SECONDS).contains(&duration)
        || window > MAX_RACE_WINDOW_MS
    {
        return Err(ApiError::invalid(format!(
            "stock 1..={MAX_RACE_STOCK}, concurrency 1..={MAX_RACE_CONCURRENCY}, duration_s 1..={MAX_RACE_SECONDS}, payment_window_ms 0..={MAX_RACE_WINDOW_MS}"
        )));
    }
    // Half the buyers pay: the page's race shows units coming back.
    let payments = (window > 0)
        .then(|| Payments::new(Duration::from_millis(window), 0.5))
        .transpose()
        .map_err(|err| ApiError::invalid(err.to_string()))?;
    let plan = RacePlan {
        strategies,
        stock,
        per_user_limit: 1,
        users: stock.saturating_mul(4),
        concurrency,
        duration: Duration::from_secs(duration),
        // A windowed sale sells out and refills: it runs for its duration,
        // its buyers coming back for the units that return.
        until_sold_out: payments.is_none(),
        repeat_buyers: payments.is_some(),
        ceiling_duration: Duration::from_secs(1),
        item_prefix: crate::lab::race::ITEM_PREFIX.into(),
        rate: None,
        runs: 1,
        payments,
    };
    let token = match &state.admin {
        AdminPolicy::Token(token) => Some(token.to_string()),
        AdminPolicy::LoopbackOnly { .. } => None,
    };
    match state.race.start(plan, token) {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(state.race.status()))),
        Err(RaceError::AlreadyRunning) => Err(ApiError::RaceRunning),
        Err(err @ RaceError::NoAddress) => Err(ApiError::Internal(err.into())),
    }
}

/// `DELETE /api/race`: cancels the running race, if any. 200 and the status.
#[utoipa::path(
    delete,
    path = "/api/race",
    tag = "status page",
    security(("admin_token" = []), ()),
    responses(
        (status = 200, description = "Cancelled (or nothing was running); the status.", body = RaceStatus),
        (status = 401, description = "`unauthorized`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
    ),
)]
pub async fn cancel_race(_admin: Admin, State(state): State<AppState>) -> Json<RaceStatus> {
    state.race.cancel("cancelled");
    Json(state.race.status())
}
