//! The account system's API: `GET /v1/accounts`, paged with opaque cursor tokens.
//!
//! A page token carries the page number it asks for, the cursor (position and offset within
//! it), the filter, the span and `totalCount` of the listing, when it was issued and the
//! page-token generation, plus a check sum; it is stored nowhere. A token older than
//! `page_token_ttl`, or issued before [`crate::SimHandle::expire_page_tokens`], answers 410; one
//! that does not decode answers 400.
//!
//! With `page_token_cycle_after = N`, the answer to page N hands out the token of page 2 again,
//! byte for byte: every token of such a listing carries the time the listing began, and the
//! cursor after page 1 is computed again from the page size. A client that follows the tokens
//! goes round pages 2..=N for ever.
//!
//! The listing is not a snapshot: it reads the accounts as they are when each page is served,
//! so an account changed during a listing shows its new state if its position is still ahead.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;

use crate::accounts::Registry;
use crate::accounts::Status;
use crate::auth::{authorize, denied};
use crate::config::ACCOUNTS_SCOPE;
use crate::hash::{fnv1a, hex, mix, salt, unhex, unit};
use crate::http::{error, first, query_pairs};
use crate::listing::{count_matching, entries_at, write_record, Entry, Filter, ListingFaults};
use crate::state::{unix_millis, State as SimState};

/// Default and largest page sizes (the contract's).
const DEFAULT_PAGE_SIZE: usize = 1000;
const MAX_PAGE_SIZE: usize = 5000;

/// Where a listing stands between two pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageToken {
    /// The page number this token asks for (page 1 has no token).
    page: u64,
    position: u64,
    offset: usize,
    issued_ms: u64,
    generation: u64,
    total_count: u64,
    span: u64,
    filter: Filter,
}

fn encode(key: u64, t: &PageToken) -> String {
    let status = t.filter.status.map_or("-", Status::as_str);
    let since = t
        .filter
        .since
        .map_or_else(|| "-".to_owned(), |s| s.timestamp_micros().to_string());
    let payload = format!(
        "p2.{}.{}.{}.{}.{}.{}.{}.{status}.{since}",
        t.page, t.position, t.offset, t.issued_ms, t.generation, t.total_count, t.span
    );
    let mac = mix(key, &[salt("page-token"), fnv1a(payload.as_bytes())]);
    hex(format!("{payload}.{mac:016x}").as_bytes())
}

fn decode(key: u64, token: &str) -> Option<PageToken> {
    let text = String::from_utf8(unhex(token)?).ok()?;
    let (payload, mac) = text.rsplit_once('.')?;
    let expected = mix(key, &[salt("page-token"), fnv1a(payload.as_bytes())]);
    if format!("{expected:016x}") != mac {
        return None;
    }
    let parts: Vec<&str> = payload.split('.').collect();
    let [tag, page, position, offset, issued, generation, total, span, status, since] = parts[..]
    else {
        return None;
    };
    if tag != "p2" {
        return None;
    }
    let status = match status {
        "-" => None,
        s => Some(Status::parse(s)?),
    };
    let since = match since {
        "-" => None,
        s => Some(DateTime::from_timestamp_micros(s.parse().ok()?)?),
    };
    Some(PageToken {
        page: page.parse().ok()?,
        position: position.parse().ok()?,
        offset: offset.parse().ok()?,
        issued_ms: issued.parse().ok()?,
        generation: generation.parse().ok()?,
        total_count: total.parse().ok()?,
        span: span.parse().ok()?,
        filter: Filter { status, since },
    })
}

fn bad_request(code: &str, message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, code, message, None)
}

/// Where a page ends: walks the listing from `(position, offset)` until `page_size` entries are
/// taken or the listing ends, appending them to `out` when given. Returns the cursor after the
/// page.
#[allow(clippy::too_many_arguments)]
fn walk(
    reg: &Registry,
    faults: &ListingFaults,
    filter: &Filter,
    span: u64,
    (mut position, mut offset): (u64, usize),
    page_size: usize,
    mut out: Option<&mut Vec<Entry>>,
    here: &mut Vec<Entry>,
) -> (u64, usize) {
    let end = reg.total();
    let mut taken = 0;
    while position <= end && taken < page_size {
        here.clear();
        entries_at(reg, faults, filter, span, position, here);
        let rest = here.get(offset..).unwrap_or(&[]);
        let room = page_size - taken;
        let take = rest.len().min(room);
        if let Some(out) = out.as_deref_mut() {
            out.extend_from_slice(&rest[..take]);
        }
        taken += take;
        if rest.len() > room {
            offset += room;
            break;
        }
        position += 1;
        offset = 0;
    }
    (position, offset)
}

/// `GET /v1/accounts`.
pub(crate) async fn list_accounts(
    State(st): State<Arc<SimState>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Response {
    let delay = st.config().page_delay;
    if !delay.is_zero() && !st.pause(delay).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the simulator is shutting down",
        )
            .into_response();
    }
    let resp = list(&st, raw.as_deref(), &headers);
    let ok = resp.status() == StatusCode::OK;
    st.count_account_page(ok);
    if !ok {
        tracing::debug!(status = resp.status().as_u16(), "accounts page refused");
    }
    resp
}

fn list(st: &SimState, raw: Option<&str>, headers: &HeaderMap) -> Response {
    if let Err(d) = authorize(st, headers, ACCOUNTS_SCOPE) {
        return denied(d, ACCOUNTS_SCOPE, None);
    }
    let cfg = st.config();
    let Some(pairs) = query_pairs(raw) else {
        return bad_request("INVALID_QUERY", "the query string is not valid");
    };
    let page_size = match first(&pairs, "pageSize") {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return bad_request(
                    "INVALID_PAGE_SIZE",
                    "pageSize must be an integer from 1 to 5000",
                )
            }
        },
    };
    let status = match first(&pairs, "status") {
        None => None,
        Some(s) => match Status::parse(s) {
            Some(s) => Some(s),
            None => {
                return bad_request(
                    "INVALID_STATUS",
                    "status must be ACTIVE, CLOSED or SUSPENDED",
                )
            }
        },
    };
    let since = match first(&pairs, "updatedSince") {
        None => None,
        Some(s) => match DateTime::parse_from_rfc3339(s)
            .ok()
            .and_then(|t| DateTime::from_timestamp_micros(t.timestamp_micros()))
        {
            Some(t) => Some(t),
            None => {
                return bad_request(
                    "INVALID_UPDATED_SINCE",
                    "updatedSince must be an RFC 3339 date-time",
                )
            }
        },
    };
    let token = match first(&pairs, "pageToken") {
        None | Some("") => None,
        Some(t) => match decode(st.key, t) {
            Some(t) => Some(t),
            None => return bad_request("INVALID_PAGE_TOKEN", "the page token is not valid"),
        },
    };
    if let Some(t) = &token {
        let ttl_ms = u64::try_from(cfg.page_token_ttl.as_millis()).unwrap_or(u64::MAX);
        if t.generation != st.page_generation()
            || unix_millis() >= t.issued_ms.saturating_add(ttl_ms)
        {
            return error(
                StatusCode::GONE,
                "PAGE_TOKEN_EXPIRED",
                "the page token has expired; restart the listing",
                None,
            );
        }
        if status.is_some_and(|s| t.filter.status != Some(s))
            || since.is_some_and(|s| t.filter.since != Some(s))
        {
            return bad_request(
                "PAGE_TOKEN_MISMATCH",
                "the page token belongs to a listing with another filter",
            );
        }
    }
    if cfg.accounts_transient_error_rate > 0.0 {
        let h = mix(cfg.seed, &[salt("listing-fault"), st.next_listing_seq()]);
        if unit(h) < cfg.accounts_transient_error_rate {
            // Mostly 429 and 503 as a busy system answers; now and then a plain 500.
            return match (h >> 8) % 5 {
                0 | 1 => {
                    let mut resp = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "RATE_LIMITED",
                        "too many requests; retry later",
                        None,
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    resp
                }
                2 | 3 => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    "the account system is briefly unavailable",
                    None,
                ),
                _ => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "the account system failed; retry later",
                    None,
                ),
            };
        }
    }

    let faults = ListingFaults {
        seed: cfg.seed,
        malformed_rate: cfg.malformed_record_rate,
        duplicate_rate: cfg.duplicate_rate,
        invalid_utf8_rate: cfg.invalid_utf8_record_rate,
        lone_surrogate_rate: cfg.lone_surrogate_record_rate,
        wrong_type_rate: cfg.wrong_type_record_rate,
        hidden_share: cfg.listing_hidden_share,
    };
    let reg = st.registry();
    let query_filter = Filter { status, since };
    let now = unix_millis();
    let (page, filter, span, total_count, cursor, listing_began_ms) = match token {
        Some(t) => (
            t.page,
            t.filter,
            t.span,
            t.total_count,
            (t.position, t.offset),
            t.issued_ms,
        ),
        None => (
            1,
            query_filter,
            reg.total(),
            count_matching(&reg, &faults, &query_filter),
            (1, 0),
            now,
        ),
    };
    let mut entries = Vec::with_capacity(page_size.min(reg.total() as usize + 16));
    let mut here = Vec::new();
    let (position, offset) = walk(
        &reg,
        &faults,
        &filter,
        span,
        cursor,
        page_size,
        Some(&mut entries),
        &mut here,
    );
    let more = position <= reg.total();
    let cycle = cfg.page_token_cycle_after;
    let next = more.then(|| {
        let mut next = PageToken {
            page: page + 1,
            position,
            offset,
            issued_ms: now,
            generation: st.page_generation(),
            total_count,
            span,
            filter,
        };
        if cycle >= 2 {
            // Every token of a cycling listing carries the time the listing began, so that the
            // token of page 2 can be handed out again unchanged.
            next.issued_ms = listing_began_ms;
            if page >= u64::from(cycle) {
                let (position, offset) = walk(
                    &reg,
                    &faults,
                    &filter,
                    span,
                    (1, 0),
                    page_size,
                    None,
                    &mut here,
                );
                next = PageToken {
                    page: 2,
                    position,
                    offset,
                    ..next
                };
                tracing::debug!(page, "page token cycles back to page 2");
            }
        }
        encode(st.key, &next)
    });
    let renamed: Vec<Option<String>> = entries
        .iter()
        .map(|e| match e {
            Entry::Account(s) => reg.renamed(s.index).map(str::to_owned),
            Entry::Malformed { .. } => None,
        })
        .collect();
    drop(reg);
    tracing::debug!(
        items = entries.len(),
        total_count,
        last = next.is_none(),
        "accounts page served"
    );
    let mut body = Vec::with_capacity(entries.len() * 160 + 64);
    body.extend_from_slice(br#"{"items":["#);
    for (i, (entry, renamed)) in entries.iter().zip(&renamed).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        write_record(entry, cfg.seed, &filter, renamed.as_deref(), &mut body);
    }
    body.extend_from_slice(br#"],"nextPageToken":"#);
    body.extend_from_slice(serde_json::Value::from(next).to_string().as_bytes());
    body.extend_from_slice(format!(r#","totalCount":{total_count}}}"#).as_bytes());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_tampering() {
        let t = PageToken {
            page: 7,
            position: 1234,
            offset: 2,
            issued_ms: 99,
            generation: 3,
            total_count: 5000,
            span: 5001,
            filter: Filter {
                status: Some(Status::Suspended),
                since: DateTime::from_timestamp_micros(1_700_000_000_123_456),
            },
        };
        let encoded = encode(11, &t);
        assert_eq!(decode(11, &encoded), Some(t));
        assert_eq!(decode(12, &encoded), None, "another simulator's token");
        let mut tampered = encoded.clone();
        tampered.replace_range(8..10, "39");
        assert_eq!(decode(11, &tampered), None);
        assert_eq!(decode(11, "not-a-token"), None);
        let plain = PageToken {
            filter: Filter::default(),
            ..t
        };
        assert_eq!(decode(11, &encode(11, &plain)), Some(plain));
    }
}
