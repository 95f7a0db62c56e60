//! The status page's fault lab control: `POST /api/faults` starts a run of
//! `seckill faults` (every chosen strategy under every chosen fault, as a
//! child process; [`crate::lab::fault_control`]), `DELETE /api/faults`
//! stops it; both admin. Its status, cells included, is in the live
//! snapshot's `faults`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use serde::Deserialize;
use utoipa::openapi::schema::{Array, Object};

use super::admin::Admin;
use super::live::enabled_strategies;
use super::request::{json_body, require_json_type};
use super::schema::{integer_in_or_null, unique_list_or_null};
use crate::domain::{ErrorBody, whole};
use crate::http::error::ApiError;
use crate::lab::fault_control::{
    DEFAULT_FAULTS, DEFAULT_STRATEGIES, FaultError, FaultPlan, FaultStatus,
};
use crate::lab::faults::fault::Fault;
use crate::lab::faults::{AFTER_S, BEFORE_S, HOLD_S};
use crate::state::AppState;

/// Phase bounds, in seconds: long enough to show a fault (a holder's pause
/// is three lock TTLs, 1.5 s), short enough that a run from the page ends
/// while someone watches.
const MAX_BEFORE_S: u64 = 30;
const MIN_HOLD_S: u64 = 2;
const MAX_HOLD_S: u64 = 60;
const MAX_AFTER_S: u64 = 30;

/// What to run; every field may be left out.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultInput {
    #[schema(schema_with = strategies_schema)]
    strategies: Option<Vec<String>>,
    #[schema(schema_with = faults_schema)]
    faults: Option<Vec<String>>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = before_schema)]
    before_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = hold_schema)]
    hold_s: Option<u64>,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(schema_with = after_schema)]
    after_s: Option<u64>,
}

fn strategies_schema() -> Array {
    unique_list_or_null(
        "StrategyKind",
        "Each at most once, each enabled here; lock-unfenced, lock and lua when absent or empty.",
    )
}

fn faults_schema() -> Array {
    unique_list_or_null(
        "Fault",
        "Each at most once; holder-pause, redis-pause and instance-kill when absent or empty.",
    )
}

fn before_schema() -> Object {
    integer_in_or_null(
        1,
        MAX_BEFORE_S,
        &format!("Load before the fault, s; {BEFORE_S} when absent."),
    )
}

fn hold_schema() -> Object {
    integer_in_or_null(
        MIN_HOLD_S,
        MAX_HOLD_S,
        &format!("How long the fault lasts, s; {HOLD_S} when absent."),
    )
}

fn after_schema() -> Object {
    integer_in_or_null(
        1,
        MAX_AFTER_S,
        &format!("Load after the fault, s; {AFTER_S} when absent."),
    )
}

impl FaultInput {
    /// The run this input asks for, or why it is refused.
    fn plan(self, state: &AppState) -> Result<FaultPlan, ApiError> {
        let strategies = enabled_strategies(state, self.strategies.as_deref())?
            .unwrap_or_else(|| DEFAULT_STRATEGIES.to_vec());
        let faults = match self.faults.filter(|f| !f.is_empty()) {
            None => DEFAULT_FAULTS.to_vec(),
            Some(names) => {
                let mut faults = Vec::new();
                for name in &names {
                    let fault = Fault::named(name).ok_or_else(|| {
                        ApiError::invalid(format!(
                            "unknown fault `{name}`: one of {}",
                            Fault::ALL.map(Fault::name).join(", ")
                        ))
                    })?;
                    if faults.contains(&fault) {
                        return Err(ApiError::invalid(format!(
                            "`faults` names `{name}` more than once; each runs once"
                        )));
                    }
                    faults.push(fault);
                }
                faults
            }
        };
        let before = self.before_s.unwrap_or(BEFORE_S);
        let hold = self.hold_s.unwrap_or(HOLD_S);
        let after = self.after_s.unwrap_or(AFTER_S);
        if !(1..=MAX_BEFORE_S).contains(&before)
            || !(MIN_HOLD_S..=MAX_HOLD_S).contains(&hold)
            || !(1..=MAX_AFTER_S).contains(&after)
        {
            return Err(ApiError::invalid(format!(
                "before_s 1..={MAX_BEFORE_S}, hold_s {MIN_HOLD_S}..={MAX_HOLD_S}, after_s 1..={MAX_AFTER_S}"
            )));
        }
        Ok(FaultPlan {
            strategies,
            faults,
            before: Duration::from_secs(before),
            hold: Duration::from_secs(hold),
            after: Duration::from_secs(after),
        })
    }
}

/// `POST /api/faults`: runs the fault lab, every strategy under every fault,
/// each cell on a private topology. 202 and the status; 409 while a run is
/// under way. The input is checked before anything else, so a bad one is a
/// 400 even where the lab is off (404).
#[utoipa::path(
    post,
    path = "/api/faults",
    tag = "status page",
    security(("admin_token" = []), ()),
    request_body(content = FaultInput, content_type = "application/json",
        description = "Required, if only `{}`: an admin request must be sent as `application/json` (415 otherwise)."),
    responses(
        (status = 202, description = "Started; watch the live feed's `faults`.", body = FaultStatus),
        (status = 400, description = "`invalid_request`: no body, an unknown, disabled or repeated strategy, an unknown or repeated fault, a phase out of range. Nothing started.", body = ErrorBody),
        (status = 401, description = "`unauthorized`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
        (status = 404, description = "`fault_lab_disabled`: this server runs with `FAULT_LAB=false`.", body = ErrorBody),
        (status = 409, description = "`faults_running`: one run at a time.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`.", body = ErrorBody),
    ),
)]
pub async fn start_faults(
    _admin: Admin,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<FaultStatus>), ApiError> {
    require_json_type(&headers)?;
    let input: FaultInput = json_body(body)?
        .ok_or_else(|| ApiError::invalid("a JSON object is required, `{}` for every default"))?;
    let plan = input.plan(&state)?;
    match state.faults.start(plan) {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(state.faults.status()))),
        Err(FaultError::Disabled) => Err(ApiError::FaultLabDisabled),
        Err(FaultError::AlreadyRunning) => Err(ApiError::FaultsRunning),
        Err(err @ FaultError::Spawn(_)) => Err(ApiError::Internal(err.into())),
    }
}

/// `DELETE /api/faults`: stops the running lab, if any: SIGINT, after which
/// it undoes its fault and stops what it started. 200 and the status, which
/// stays `running` until the lab has exited.
#[utoipa::path(
    delete,
    path = "/api/faults",
    tag = "status page",
    security(("admin_token" = []), ()),
    responses(
        (status = 200, description = "Stopping (or nothing was running); the status.", body = FaultStatus),
        (status = 401, description = "`unauthorized`.", body = ErrorBody),
        (status = 403, description = "`forbidden`.", body = ErrorBody),
    ),
)]
pub async fn cancel_faults(_admin: Admin, State(state): State<AppState>) -> Json<FaultStatus> {
    state.faults.cancel("cancelled");
    Json(state.faults.status())
}
