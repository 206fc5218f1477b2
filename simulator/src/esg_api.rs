//! The vendor's ESG Portfolio Analysis API: one account, the batch endpoint and the health check.
//!
//! Every answer carries `X-Request-Id`; once a request got past the tenant quota it also carries
//! the `X-RateLimit-*` headers of the quota (when one is configured). The order of checks is:
//! token (401), for a batch whether the endpoint is on for the calling client (404 or 405), a
//! storm (429, `Retry-After: 1`, no quota taken, no call counted), quota (429), the first-attempt
//! fault (429 with `Retry-After` = `fault_retry_after`), configured latency, request validity
//! (422 / 400), unknown account (404), the account's permanent fault (404 / 422), the call's
//! transient fault (5xx) or stall, then the analysis (200, or 304 when `If-None-Match` carries
//! its ETag).
//!
//! Per-call faults are drawn from the account's call number, counted over calls that got past
//! the token, the quota and the first-attempt fault, so a run's outcome does not depend on
//! timing or concurrency. The first-attempt fault is drawn by account id and hits the account's
//! first such call only (see `State::refuse_first_attempt`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};

use crate::accounts::is_valid_account_id;
use crate::auth::{authorize, denied};
use crate::config::{SimConfig, ESG_SCOPE};
use crate::hash::{fnv1a, mix, salt};
use crate::http::{error, first, json_text, query_pairs, set_header, REQUEST_ID};
use crate::scores::{self, account_fault, call_fault, AccountFault, CallFault};
use crate::state::{Answer, RateDecision, State as SimState};

/// Most accounts in one batch request (the contract's).
const MAX_BATCH: usize = 100;

const RATE_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATE_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATE_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn today(cfg: &SimConfig) -> NaiveDate {
    cfg.today.unwrap_or_else(|| Utc::now().date_naive())
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn add_rate_headers(resp: &mut Response, rate: RateDecision) {
    let headers = resp.headers_mut();
    match rate {
        RateDecision::Unlimited => {}
        RateDecision::Allowed {
            limit,
            remaining,
            reset_epoch,
        } => {
            set_header(headers, RATE_LIMIT, &limit.to_string());
            set_header(headers, RATE_REMAINING, &remaining.to_string());
            set_header(headers, RATE_RESET, &reset_epoch.to_string());
        }
        RateDecision::Limited {
            limit,
            retry_after,
            reset_epoch,
        } => {
            set_header(headers, RATE_LIMIT, &limit.to_string());
            set_header(headers, RATE_REMAINING, "0");
            set_header(headers, RATE_RESET, &reset_epoch.to_string());
            set_header(headers, header::RETRY_AFTER, &retry_after.to_string());
        }
    }
}

/// Sets `X-Request-Id` and counts the answer.
fn finish(st: &SimState, mut resp: Response, request_id: &str) -> Response {
    set_header(resp.headers_mut(), REQUEST_ID, request_id);
    st.count_esg_status(resp.status().as_u16());
    resp
}

fn too_many(request_id: &str) -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "the tenant quota is exhausted; retry after the time in Retry-After",
        Some(request_id),
    )
}

/// A duration as `Retry-After` delta-seconds: whole seconds rounded up, at least 1.
fn retry_after_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The 429 of a storm: the quota's body, `Retry-After: 1`, no quota headers (none was taken).
fn storm_429(request_id: &str) -> Response {
    let mut resp = too_many(request_id);
    set_header(resp.headers_mut(), header::RETRY_AFTER, "1");
    resp
}

/// The 429 of a first attempt (`rate_limited_first_attempt_rate`): the quota's body, the quota
/// headers of `rate` and `Retry-After` = `fault_retry_after`.
fn first_attempt_429(cfg: &SimConfig, rate: RateDecision, request_id: &str) -> Response {
    let mut resp = too_many(request_id);
    add_rate_headers(&mut resp, rate);
    set_header(
        resp.headers_mut(),
        header::RETRY_AFTER,
        &retry_after_seconds(cfg.fault_retry_after).to_string(),
    );
    resp
}

/// Whether `client_id` may use the batch endpoint: the global `batch_endpoint` and the client's
/// credential (a client no longer configured has only the global switch).
fn batch_enabled(cfg: &SimConfig, client_id: &str) -> bool {
    cfg.batch_endpoint
        && cfg
            .credentials
            .iter()
            .find(|c| c.client_id == client_id)
            .is_none_or(|c| c.batch_endpoint)
}

/// What the batch endpoint answers where it is off: 404 as if it did not exist, or 405 with an
/// empty `Allow` (RFC 9110: the resource allows no method).
fn batch_disabled(cfg: &SimConfig, request_id: &str) -> Response {
    if cfg.batch_disabled_status == 405 {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "the batch endpoint is not available to this client",
            Some(request_id),
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(""));
        resp
    } else {
        error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "no such resource",
            Some(request_id),
        )
    }
}

/// The 503 of an outage ([`crate::SimHandle::outage`]).
fn outage_503(request_id: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "SERVICE_UNAVAILABLE",
        "the service is unavailable",
        Some(request_id),
    )
}

fn shutting_down(request_id: &str) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the service is shutting down",
        Some(request_id),
    )
}

/// The error of a permanent account fault or a transient call fault.
fn fault_error(status: u16, account_id: &str, request_id: &str) -> Response {
    let (code, message) = match status {
        404 => (
            "UNKNOWN_PORTFOLIO",
            "no portfolio is known under this account id",
        ),
        422 => (
            "NOT_ANALYZABLE",
            "the portfolio's holdings cannot be analyzed",
        ),
        502 => ("BAD_GATEWAY", "an upstream data provider failed"),
        503 => ("SERVICE_UNAVAILABLE", "the service is briefly unavailable"),
        504 => ("GATEWAY_TIMEOUT", "an upstream data provider timed out"),
        _ => ("INTERNAL_ERROR", "an internal error occurred"),
    };
    tracing::debug!(account_id, status, "ESG fault answered");
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, code, message, Some(request_id))
}

fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
}

/// `GET /v1/accounts/{accountId}/esg-analysis`.
pub(crate) async fn analysis(
    State(st): State<Arc<SimState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _in_flight = st.enter_esg();
    let request_id = st.next_request_id();
    let id = path.ok().map(|Path(id)| id);
    let resp = analyse_one(&st, id.as_deref(), raw.as_deref(), &headers, &request_id).await;
    finish(&st, resp, &request_id)
}

async fn analyse_one(
    st: &SimState,
    id: Option<&str>,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    request_id: &str,
) -> Response {
    let cfg = st.config();
    let valid_id = id.filter(|id| is_valid_account_id(id));
    if let Err(d) = authorize(st, headers, ESG_SCOPE) {
        if let Some(id) = valid_id {
            st.count_call(&cfg, id, false);
        }
        return denied(d, ESG_SCOPE, Some(request_id));
    }
    if st.storm_refuses() {
        return storm_429(request_id);
    }
    if st.outage_refuses() {
        if let Some(id) = valid_id {
            st.count_call(&cfg, id, false);
            st.record_answer(&cfg, id, Answer::Transient(503));
        }
        return outage_503(request_id);
    }
    let rate = st.check_rate();
    if let RateDecision::Limited { .. } = rate {
        if let Some(id) = valid_id {
            st.count_call(&cfg, id, false);
        }
        let mut resp = too_many(request_id);
        add_rate_headers(&mut resp, rate);
        return resp;
    }
    if let Some(id) = valid_id {
        if st.refuse_first_attempt(&cfg, id, true) {
            tracing::debug!(account_id = id, "first attempt answered 429");
            return first_attempt_429(&cfg, rate, request_id);
        }
    }
    let call = valid_id.map(|id| st.count_call(&cfg, id, true));
    if !st.pause(cfg.latency).await {
        return shutting_down(request_id);
    }
    let mut resp = match (valid_id, call) {
        (Some(id), Some(call)) => answer(st, &cfg, id, call, raw_query, headers, request_id).await,
        _ => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_ACCOUNT_ID",
            "accountId must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            Some(request_id),
        ),
    };
    add_rate_headers(&mut resp, rate);
    resp
}

async fn answer(
    st: &SimState,
    cfg: &SimConfig,
    id: &str,
    call: u32,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    request_id: &str,
) -> Response {
    let as_of = query_pairs(raw_query).map(|pairs| first(&pairs, "asOf").map(parse_date));
    let date = match as_of {
        Some(None) => today(cfg),
        Some(Some(Some(date))) => date,
        _ => {
            st.record_answer(cfg, id, Answer::Permanent(422));
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "INVALID_AS_OF",
                "asOf must be a date (YYYY-MM-DD)",
                Some(request_id),
            );
        }
    };
    let Some(account) = st.registry().get_by_id(id) else {
        st.record_answer(cfg, id, Answer::Permanent(404));
        return fault_error(404, id, request_id);
    };
    let fault = account_fault(cfg, id);
    if let AccountFault::Permanent { status } = fault {
        st.record_answer(cfg, id, Answer::Permanent(status));
        return fault_error(status, id, request_id);
    }
    match call_fault(cfg, id, call) {
        CallFault::Transient { status } => {
            st.record_answer(cfg, id, Answer::Transient(status));
            return fault_error(status, id, request_id);
        }
        CallFault::Stall => {
            tracing::debug!(account_id = id, "ESG call stalls");
            st.record_answer(cfg, id, Answer::Stalled);
            if !st.pause(cfg.stall).await {
                return shutting_down(request_id);
            }
        }
        CallFault::None => st.record_answer(cfg, id, Answer::Analysis),
    }
    let a = scores::analysis(
        cfg.seed,
        id,
        account.holdings_version,
        st.rerate_epoch(),
        date,
        fault,
    );
    let etag = a.etag();
    let mut resp = if etag_matches(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        json_text(StatusCode::OK, a.text)
    };
    set_header(resp.headers_mut(), header::ETAG, &etag);
    resp
}

#[derive(serde::Deserialize)]
struct BatchRequest {
    #[serde(rename = "accountIds")]
    account_ids: Vec<String>,
    #[serde(rename = "asOf", default)]
    as_of: Option<String>,
}

/// One result of a batch, already written as JSON.
fn batch_item(
    id: &str,
    status: u16,
    analysis: Option<String>,
    err: Option<(&str, &str)>,
) -> String {
    let error = match err {
        Some((code, message)) => {
            serde_json::json!({ "error": code, "message": message }).to_string()
        }
        None => "null".to_owned(),
    };
    format!(
        "{{\"accountId\":{},\"status\":{status},\"analysis\":{},\"error\":{error}}}",
        serde_json::Value::String(id.to_owned()),
        analysis.as_deref().unwrap_or("null"),
    )
}

/// `POST /v1/esg-analysis:batch`: up to 100 accounts, one request against the quota.
///
/// Items fail the way single calls do, with 500 for 500/502 and 503 for 503/504 (the item
/// statuses the contract allows). When the first item draws a transient fault, the whole batch
/// fails with it half of the time. A stalled item stalls the whole batch once. The first-attempt
/// fault is drawn for the batch as a whole by its first account; such a 429 counts no call.
pub(crate) async fn batch(
    State(st): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = st.enter_esg();
    let request = serde_json::from_slice::<BatchRequest>(&body).ok();
    st.count_batch(request.as_ref().map_or(0, |r| r.account_ids.len()));
    let request_id = st.next_request_id();
    let resp = batch_inner(&st, &headers, request, &request_id).await;
    finish(&st, resp, &request_id)
}

async fn batch_inner(
    st: &SimState,
    headers: &HeaderMap,
    request: Option<BatchRequest>,
    request_id: &str,
) -> Response {
    let cfg = st.config();
    let client_id = match authorize(st, headers, ESG_SCOPE) {
        Ok(client_id) => client_id,
        Err(d) => return denied(d, ESG_SCOPE, Some(request_id)),
    };
    if !batch_enabled(&cfg, &client_id) {
        return batch_disabled(&cfg, request_id);
    }
    if st.storm_refuses() {
        return storm_429(request_id);
    }
    if st.outage_refuses() {
        if let Some(request) = &request {
            for id in request.account_ids.iter().take(MAX_BATCH) {
                if is_valid_account_id(id) {
                    st.record_answer(&cfg, id, Answer::Transient(503));
                }
            }
        }
        return outage_503(request_id);
    }
    let rate = st.check_rate();
    if let RateDecision::Limited { .. } = rate {
        let mut resp = too_many(request_id);
        add_rate_headers(&mut resp, rate);
        return resp;
    }
    let valid = validate_batch(&cfg, request);
    if let Ok((ids, _)) = &valid {
        let first = ids[0].as_str();
        if is_valid_account_id(first) && st.refuse_first_attempt(&cfg, first, false) {
            tracing::debug!(
                accounts = ids.len(),
                "batch answered 429 as its first account's first attempt"
            );
            return first_attempt_429(&cfg, rate, request_id);
        }
    }
    if !st.pause(cfg.latency).await {
        return shutting_down(request_id);
    }
    let mut resp = match valid {
        Ok((ids, date)) => batch_answer(st, &cfg, &ids, date, request_id).await,
        Err(message) => error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            message,
            Some(request_id),
        ),
    };
    add_rate_headers(&mut resp, rate);
    resp
}

/// The ids (1 to 100) and the date of a batch request, or the message of its 400.
fn validate_batch(
    cfg: &SimConfig,
    request: Option<BatchRequest>,
) -> Result<(Vec<String>, NaiveDate), &'static str> {
    let Some(req) = request else {
        return Err("the body must be a JSON object with an accountIds array of strings");
    };
    if req.account_ids.is_empty() || req.account_ids.len() > MAX_BATCH {
        return Err("accountIds must hold 1 to 100 ids");
    }
    let date = match req.as_of.as_deref() {
        None => today(cfg),
        Some(s) => parse_date(s).ok_or("asOf must be a date (YYYY-MM-DD)")?,
    };
    Ok((req.account_ids, date))
}

async fn batch_answer(
    st: &SimState,
    cfg: &SimConfig,
    account_ids: &[String],
    date: NaiveDate,
    request_id: &str,
) -> Response {
    let epoch = st.rerate_epoch();
    let mut items = Vec::with_capacity(account_ids.len());
    let mut stall = false;
    let mut whole_batch_fault = None;
    // What each valid item came to, recorded once the batch's own fate is known.
    let mut answered: Vec<(&str, Answer)> = Vec::with_capacity(account_ids.len());
    for (i, id) in account_ids.iter().enumerate() {
        if !is_valid_account_id(id) {
            items.push(batch_item(
                id,
                422,
                None,
                Some((
                    "INVALID_ACCOUNT_ID",
                    "accountId does not match the id pattern",
                )),
            ));
            continue;
        }
        let call = st.count_call(cfg, id, true);
        st.first_attempt_over(cfg, id);
        let account = st.registry().get_by_id(id);
        let fault = account_fault(cfg, id);
        let item = match (account, fault) {
            (None, _) | (Some(_), AccountFault::Permanent { status: 404 }) => {
                answered.push((id, Answer::Permanent(404)));
                batch_item(
                    id,
                    404,
                    None,
                    Some((
                        "UNKNOWN_PORTFOLIO",
                        "no portfolio is known under this account id",
                    )),
                )
            }
            (Some(_), AccountFault::Permanent { .. }) => {
                answered.push((id, Answer::Permanent(422)));
                batch_item(
                    id,
                    422,
                    None,
                    Some((
                        "NOT_ANALYZABLE",
                        "the portfolio's holdings cannot be analyzed",
                    )),
                )
            }
            (Some(account), fault) => match call_fault(cfg, id, call) {
                CallFault::Transient { status } => {
                    let status = if status == 500 || status == 502 {
                        500
                    } else {
                        503
                    };
                    let h = mix(
                        cfg.seed,
                        &[salt("batch-fault"), fnv1a(id.as_bytes()), u64::from(call)],
                    );
                    if i == 0 && h & 1 == 0 {
                        whole_batch_fault = Some(status);
                    }
                    answered.push((id, Answer::Transient(status)));
                    batch_item(
                        id,
                        status,
                        None,
                        Some((
                            "TRANSIENT",
                            "a transient error occurred; retry this account",
                        )),
                    )
                }
                other => {
                    stall |= other == CallFault::Stall;
                    answered.push((
                        id,
                        if other == CallFault::Stall {
                            Answer::Stalled
                        } else {
                            Answer::Analysis
                        },
                    ));
                    let a = scores::analysis(
                        cfg.seed,
                        id,
                        account.holdings_version,
                        epoch,
                        date,
                        fault,
                    );
                    batch_item(id, 200, Some(a.as_batch_value()), None)
                }
            },
        };
        items.push(item);
    }
    // A batch that fails or stalls as a whole fails or stalls each of its accounts.
    for (id, answer) in answered {
        let answer = match (whole_batch_fault, stall) {
            (Some(status), _) => Answer::Transient(status),
            (None, true) => Answer::Stalled,
            (None, false) => answer,
        };
        st.record_answer(cfg, id, answer);
    }
    if let Some(status) = whole_batch_fault {
        return fault_error(status, &account_ids[0], request_id);
    }
    if stall {
        tracing::debug!(accounts = account_ids.len(), "ESG batch stalls");
        if !st.pause(cfg.stall).await {
            return shutting_down(request_id);
        }
    }
    json_text(
        StatusCode::OK,
        format!("{{\"results\":[{}]}}", items.join(",")),
    )
}

/// `GET /v1/health`.
pub(crate) async fn health() -> Response {
    json_text(StatusCode::OK, r#"{"status":"UP"}"#.to_owned())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let mut h = HeaderMap::new();
        assert!(!etag_matches(&h, "\"a\""));
        h.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_static("\"x\", W/\"a\""),
        );
        assert!(etag_matches(&h, "\"a\""));
        assert!(!etag_matches(&h, "\"b\""));
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(etag_matches(&h, "\"b\""));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_at_least_one() {
        for (d, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_millis(200), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_millis(2500), 3),
            (Duration::from_secs(30), 30),
        ] {
            assert_eq!(retry_after_seconds(d), secs, "{d:?}");
        }
    }

    #[test]
    fn the_batch_endpoint_is_off_if_either_switch_says_off() {
        use crate::config::Credential;
        let cfg = SimConfig {
            credentials: vec![
                Credential::new("on", "s", ESG_SCOPE),
                Credential::new("off", "s", ESG_SCOPE).with_batch_endpoint(false),
            ],
            ..SimConfig::default()
        };
        assert!(batch_enabled(&cfg, "on"));
        assert!(!batch_enabled(&cfg, "off"));
        assert!(
            batch_enabled(&cfg, "removed since"),
            "only the global switch"
        );
        let all_off = SimConfig {
            batch_endpoint: false,
            ..cfg
        };
        assert!(!batch_enabled(&all_off, "on"));
        assert!(!batch_enabled(&all_off, "off"));
    }

    #[test]
    fn batch_items_are_valid_json() {
        let ok = batch_item("ACC00000001", 200, Some("{\"a\":1}".into()), None);
        let v: serde_json::Value = serde_json::from_str(&ok).expect("json");
        assert_eq!(v["analysis"]["a"], 1);
        assert!(v["error"].is_null());
        let failed = batch_item("x\"y", 404, None, Some(("UNKNOWN_PORTFOLIO", "m")));
        let v: serde_json::Value = serde_json::from_str(&failed).expect("json");
        assert_eq!(v["accountId"], "x\"y");
        assert!(v["analysis"].is_null());
        assert_eq!(v["error"]["error"], "UNKNOWN_PORTFOLIO");
    }
}
