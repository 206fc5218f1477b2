//! Test controls: the operations behind [`crate::SimHandle`] and their HTTP mirror under `/_sim/`
//! for tests that run the simulator in another process. No authentication: never expose a
//! simulator beyond the test machine.
//!
//! | method and path | effect |
//! |---|---|
//! | `POST /_sim/accounts/{id}/touch` | holdings changed: version + 1, `updatedAt` = now |
//! | `POST /_sim/accounts/{id}/status?value=CLOSED` | set the status (ACTIVE, CLOSED, SUSPENDED) |
//! | `POST /_sim/accounts/{id}/name` | rename: the body (UTF-8 text) is the new name; version + 1, no score changes |
//! | `POST /_sim/accounts:add?count=N` | add N accounts after the last id |
//! | `POST /_sim/rerate` | the vendor re-rates: every score changes |
//! | `POST /_sim/expire-page-tokens` | every page token issued so far answers 410 |
//! | `POST /_sim/config` | change fault settings (JSON object, see [`ConfigPatch`]) |
//! | `POST /_sim/storm?seconds=N` | every ESG API request answers 429 for N seconds (0..=3600; 0 ends it) |
//! | `POST /_sim/outage?seconds=N` | every ESG API request answers 503 for N seconds (0..=3600; 0 ends it) |
//! | `GET /_sim/stats` | [`crate::SimStats`] |
//! | `GET /_sim/calls/{id}` | `{"accountId", "calls"}` |
//! | `GET /_sim/calls?min=2` | sorted ids called at least `min` times (default 1) |
//! | `GET /_sim/answers` | what the ESG API answered each account called: [`crate::Answers`] by id |
//! | `POST /_sim/reset-calls` | forget every call count (and the answers) |
//! | `GET /_sim/truth?asOf=YYYY-MM-DD` | every account and the vendor's rating of it on that date: [`crate::Truth`] |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::accounts::{account_id, now_millis, parse_account_index, AccountState, Status};
use crate::config::SimConfig;
use crate::http::{error, first, query_pairs};
use crate::listing::format_instant;
use crate::state::State as SimState;
use crate::SimError;

/// Why a test control could not be applied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("no account {0} in the account system")]
    UnknownAccount(String),
    #[error("status {0:?} is not ACTIVE, CLOSED or SUSPENDED")]
    BadStatus(String),
    #[error("cannot add {0} accounts")]
    BadCount(u64),
}

pub(crate) fn rename(st: &SimState, id: &str, name: &str) -> Result<AccountState, AdminError> {
    let index = parse_account_index(id).ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    let state = st
        .registry_mut()
        .rename(index, name, now_millis())
        .ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    tracing::info!(account_id = id, version = state.version, "account renamed");
    Ok(state)
}

pub(crate) fn touch(st: &SimState, id: &str) -> Result<AccountState, AdminError> {
    let index = parse_account_index(id).ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    let state = st
        .registry_mut()
        .touch(index, now_millis())
        .ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    tracing::info!(account_id = id, version = state.version, "account touched");
    Ok(state)
}

pub(crate) fn set_status(
    st: &SimState,
    id: &str,
    status: &str,
) -> Result<AccountState, AdminError> {
    let status = Status::parse(status).ok_or_else(|| AdminError::BadStatus(status.into()))?;
    let index = parse_account_index(id).ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    let state = st
        .registry_mut()
        .set_status(index, status, now_millis())
        .ok_or_else(|| AdminError::UnknownAccount(id.into()))?;
    tracing::info!(
        account_id = id,
        status = status.as_str(),
        version = state.version,
        "account status set"
    );
    Ok(state)
}

pub(crate) fn add_accounts(st: &SimState, n: u64) -> Result<(u64, u64), AdminError> {
    let added = st
        .registry_mut()
        .add(n, now_millis())
        .ok_or(AdminError::BadCount(n))?;
    tracing::info!(count = n, first = %account_id(added.0), "accounts added");
    Ok(added)
}

/// What a day of account changes (`SimHandle::churn`) changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Churn {
    pub touched: u64,
    pub closed: u64,
    pub added: u64,
}

/// A day of change at the firm (for demos of many days): each ACTIVE account is touched (new
/// holdings, so new scores) with probability `touched`, else closed with probability `closed`,
/// and `added` new accounts open. Deterministic for a `seed`.
pub(crate) fn churn(st: &SimState, seed: u64, touched: f64, closed: f64, added: u64) -> Churn {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let now = now_millis();
    let mut done = Churn::default();
    let mut registry = st.registry_mut();
    for index in 1..=registry.total() {
        if registry
            .get(index)
            .is_none_or(|a| a.status != Status::Active)
        {
            continue;
        }
        let draw: f64 = rng.random();
        if draw < touched {
            registry.touch(index, now);
            done.touched += 1;
        } else if draw < touched + closed {
            registry.set_status(index, Status::Closed, now);
            done.closed += 1;
        }
    }
    if added > 0 && registry.add(added, now).is_some() {
        done.added = added;
    }
    tracing::info!(
        touched = done.touched,
        closed = done.closed,
        added = done.added,
        "a day of account changes"
    );
    done
}

pub(crate) fn rerate(st: &SimState) -> u64 {
    let epoch = st.rerate();
    tracing::info!(epoch, "vendor re-rated every account");
    epoch
}

/// Longest storm `POST /_sim/storm` starts.
pub(crate) const MAX_STORM: Duration = Duration::from_secs(3600);

pub(crate) fn storm(st: &SimState, d: Duration) {
    st.storm(d);
    if d.is_zero() {
        tracing::info!("429 storm ended");
    } else {
        tracing::info!(
            seconds = d.as_secs_f64(),
            "429 storm: every ESG API request answers 429"
        );
    }
}

pub(crate) fn outage(st: &SimState, d: Duration) {
    st.outage(d);
    if d.is_zero() {
        tracing::info!("vendor outage ended");
    } else {
        tracing::info!(
            seconds = d.as_secs_f64(),
            "vendor outage: every ESG API request answers 503"
        );
    }
}

pub(crate) fn expire_page_tokens(st: &SimState) {
    st.expire_page_tokens();
    tracing::info!("every page token issued so far expired");
}

/// Fault settings that `POST /_sim/config` may change; absent keys stay as they are.
/// `rate_limit_per_second: 0` means unlimited.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ConfigPatch {
    #[serde(with = "humantime_serde::option")]
    latency: Option<Duration>,
    rate_limit_per_second: Option<u32>,
    burst: Option<u32>,
    transient_error_rate: Option<f64>,
    timeout_rate: Option<f64>,
    #[serde(with = "humantime_serde::option")]
    stall: Option<Duration>,
    rate_limited_first_attempt_rate: Option<f64>,
    #[serde(with = "humantime_serde::option")]
    fault_retry_after: Option<Duration>,
    batch_endpoint: Option<bool>,
    batch_disabled_status: Option<u16>,
    permanent_error_rate: Option<f64>,
    partial_rate: Option<f64>,
    out_of_contract_rate: Option<f64>,
    malformed_record_rate: Option<f64>,
    duplicate_rate: Option<f64>,
    accounts_transient_error_rate: Option<f64>,
    invalid_utf8_record_rate: Option<f64>,
    lone_surrogate_record_rate: Option<f64>,
    wrong_type_record_rate: Option<f64>,
    page_token_cycle_after: Option<u32>,
    listing_hidden_share: Option<f64>,
    token_unavailable: Option<bool>,
    #[serde(with = "humantime_serde::option")]
    token_delay: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    page_delay: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    token_ttl: Option<Duration>,
    #[serde(with = "humantime_serde::option")]
    page_token_ttl: Option<Duration>,
    track_calls: Option<bool>,
    today: Option<chrono::NaiveDate>,
}

impl ConfigPatch {
    fn apply(self, c: &mut SimConfig) {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        set(&mut c.latency, self.latency);
        if let Some(rate) = self.rate_limit_per_second {
            c.rate_limit_per_second = (rate > 0).then_some(rate);
        }
        set(&mut c.burst, self.burst);
        set(&mut c.transient_error_rate, self.transient_error_rate);
        set(&mut c.timeout_rate, self.timeout_rate);
        set(&mut c.stall, self.stall);
        set(
            &mut c.rate_limited_first_attempt_rate,
            self.rate_limited_first_attempt_rate,
        );
        set(&mut c.fault_retry_after, self.fault_retry_after);
        set(&mut c.batch_endpoint, self.batch_endpoint);
        set(&mut c.batch_disabled_status, self.batch_disabled_status);
        set(&mut c.permanent_error_rate, self.permanent_error_rate);
        set(&mut c.partial_rate, self.partial_rate);
        set(&mut c.out_of_contract_rate, self.out_of_contract_rate);
        set(&mut c.malformed_record_rate, self.malformed_record_rate);
        set(&mut c.duplicate_rate, self.duplicate_rate);
        set(
            &mut c.accounts_transient_error_rate,
            self.accounts_transient_error_rate,
        );
        set(
            &mut c.invalid_utf8_record_rate,
            self.invalid_utf8_record_rate,
        );
        set(
            &mut c.lone_surrogate_record_rate,
            self.lone_surrogate_record_rate,
        );
        set(&mut c.wrong_type_record_rate, self.wrong_type_record_rate);
        set(&mut c.page_token_cycle_after, self.page_token_cycle_after);
        set(&mut c.listing_hidden_share, self.listing_hidden_share);
        set(&mut c.token_unavailable, self.token_unavailable);
        set(&mut c.token_delay, self.token_delay);
        set(&mut c.page_delay, self.page_delay);
        set(&mut c.token_ttl, self.token_ttl);
        set(&mut c.page_token_ttl, self.page_token_ttl);
        set(&mut c.track_calls, self.track_calls);
        if self.today.is_some() {
            c.today = self.today;
        }
    }
}

/// The `/_sim/` routes.
pub(crate) fn routes() -> Router<Arc<SimState>> {
    Router::new()
        .route("/_sim/accounts/{id}/touch", post(touch_route))
        .route("/_sim/accounts/{id}/status", post(status_route))
        .route("/_sim/accounts/{id}/name", post(rename_route))
        .route("/_sim/accounts:add", post(add_route))
        .route("/_sim/rerate", post(rerate_route))
        .route("/_sim/expire-page-tokens", post(expire_route))
        .route("/_sim/config", post(config_route))
        .route("/_sim/storm", post(storm_route))
        .route("/_sim/outage", post(outage_route))
        .route("/_sim/answers", get(answers_route))
        .route("/_sim/truth", get(truth_route))
        .route("/_sim/stats", get(stats_route))
        .route("/_sim/calls", get(calls_route))
        .route("/_sim/calls/{id}", get(calls_for_route))
        .route("/_sim/reset-calls", post(reset_calls_route))
}

fn admin_error(e: &AdminError) -> Response {
    let (status, code) = match e {
        AdminError::UnknownAccount(_) => (StatusCode::NOT_FOUND, "UNKNOWN_ACCOUNT"),
        AdminError::BadStatus(_) => (StatusCode::BAD_REQUEST, "INVALID_STATUS"),
        AdminError::BadCount(_) => (StatusCode::BAD_REQUEST, "INVALID_COUNT"),
    };
    error(status, code, &e.to_string(), None)
}

fn account_json(s: &AccountState) -> Response {
    Json(serde_json::json!({
        "accountId": account_id(s.index),
        "status": s.status.as_str(),
        "version": s.version,
        "updatedAt": format_instant(s.updated_at),
    }))
    .into_response()
}

async fn touch_route(State(st): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    match touch(&st, &id) {
        Ok(s) => account_json(&s),
        Err(e) => admin_error(&e),
    }
}

async fn status_route(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    let pairs = query_pairs(raw.as_deref()).unwrap_or_default();
    let value = first(&pairs, "value").unwrap_or("");
    match set_status(&st, &id, value) {
        Ok(s) => account_json(&s),
        Err(e) => admin_error(&e),
    }
}

async fn rename_route(
    State(st): State<Arc<SimState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(name) = std::str::from_utf8(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_NAME",
            "the body must be the new name as UTF-8 text",
            None,
        );
    };
    match rename(&st, &id, name) {
        Ok(s) => account_json(&s),
        Err(e) => admin_error(&e),
    }
}

async fn add_route(State(st): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref()).unwrap_or_default();
    let Some(n) = first(&pairs, "count").and_then(|c| c.parse::<u64>().ok()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_COUNT",
            "count must be a positive integer",
            None,
        );
    };
    match add_accounts(&st, n) {
        Ok((first_index, last_index)) => Json(serde_json::json!({
            "first": account_id(first_index),
            "last": account_id(last_index),
            "total": last_index,
        }))
        .into_response(),
        Err(e) => admin_error(&e),
    }
}

async fn rerate_route(State(st): State<Arc<SimState>>) -> Response {
    Json(serde_json::json!({ "epoch": rerate(&st) })).into_response()
}

async fn expire_route(State(st): State<Arc<SimState>>) -> StatusCode {
    expire_page_tokens(&st);
    StatusCode::NO_CONTENT
}

async fn config_route(State(st): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let patch: ConfigPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_CONFIG",
                &e.to_string(),
                None,
            )
        }
    };
    match st.update(|c| patch.apply(c)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ SimError::InvalidConfig { .. }) => error(
            StatusCode::BAD_REQUEST,
            "INVALID_CONFIG",
            &e.to_string(),
            None,
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            &e.to_string(),
            None,
        ),
    }
}

/// The `seconds` of a storm or an outage (0..=3600); `None` when missing or out of range.
fn seconds_of(raw: Option<&str>) -> Option<Duration> {
    let pairs = query_pairs(raw).unwrap_or_default();
    first(&pairs, "seconds")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n <= MAX_STORM.as_secs())
        .map(Duration::from_secs)
}

/// The answer to a storm or an outage without valid `seconds`.
fn invalid_seconds() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "INVALID_SECONDS",
        "seconds must be a whole number from 0 to 3600",
        None,
    )
}

async fn storm_route(State(st): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Response {
    let Some(seconds) = seconds_of(raw.as_deref()) else {
        return invalid_seconds();
    };
    storm(&st, seconds);
    StatusCode::NO_CONTENT.into_response()
}

async fn outage_route(State(st): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Response {
    let Some(seconds) = seconds_of(raw.as_deref()) else {
        return invalid_seconds();
    };
    outage(&st, seconds);
    StatusCode::NO_CONTENT.into_response()
}

async fn stats_route(State(st): State<Arc<SimState>>) -> Response {
    Json(st.stats()).into_response()
}

async fn answers_route(State(st): State<Arc<SimState>>) -> Response {
    Json(st.answers()).into_response()
}

async fn truth_route(State(st): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref()).unwrap_or_default();
    let as_of = match first(&pairs, "asOf") {
        None => st
            .config()
            .today
            .unwrap_or_else(|| chrono::Utc::now().date_naive()),
        Some(s) => match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => d,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_AS_OF",
                    "asOf must be a date (YYYY-MM-DD)",
                    None,
                )
            }
        },
    };
    Json(crate::truth::truth(&st, as_of)).into_response()
}

async fn calls_route(State(st): State<Arc<SimState>>, RawQuery(raw): RawQuery) -> Response {
    let pairs = query_pairs(raw.as_deref()).unwrap_or_default();
    let min = match first(&pairs, "min").map(str::parse::<u32>) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_MIN",
                "min must be a non-negative integer",
                None,
            )
        }
    };
    Json(st.accounts_called_at_least(min)).into_response()
}

async fn calls_for_route(State(st): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    Json(serde_json::json!({ "accountId": id, "calls": st.calls_for(&id) })).into_response()
}

async fn reset_calls_route(State(st): State<Arc<SimState>>) -> StatusCode {
    st.reset_call_counts();
    StatusCode::NO_CONTENT
}
