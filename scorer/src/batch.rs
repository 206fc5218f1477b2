//! The batch endpoint, `POST /v1/esg-analysis:batch`: up to `batch_size` accounts in one
//! request, which counts as ONE request against the tenant quota.
//!
//! Responsible for gathering the attempts of many accounts into batch requests and handing
//! every account the [`Step`] its attempt came to, exactly as a single call would have: the
//! per-account loop in [`crate::api`] keeps counting attempts, waiting out 429s and refreshing
//! tokens, whatever carried the attempt.
//!
//! - Gathering: the first account of a batch opens it and spawns its sender, which waits until
//!   the batch is full or `batch_linger` has passed, then for a request slot and a cell of the
//!   limiter; accounts keep joining while it waits, so a batch held back by the rate leaves
//!   full. Accounts asked as of different dates go in different batches (`asOf` is per batch).
//! - Per item: 200 is the analysis (checked like a single answer), 404 and 422 are permanent,
//!   500 and 503 transient (the account tries again, in a later batch); any other item status,
//!   or a 200 without an analysis, is `OUT_OF_CONTRACT`. An account the answer leaves out is a
//!   transient `OUT_OF_CONTRACT`: it tries again.
//! - Whole batch: a 429 is a 429 for every account in it; 500/502/503/504, a timeout or a broken
//!   connection are a transient failure of every account's attempt; a 401 drops the token and
//!   every account tries again with a new one. A body that is not the contract's is a transient
//!   `OUT_OF_CONTRACT` for every account (a vendor fault must not fail a hundred accounts at
//!   once; the attempts bound it).
//! - A tenant without the endpoint: 404 or 405 on the route (or 400 to a request that follows
//!   the contract) turns batching off for the life of the client, logged once at WARN; every
//!   account of that batch and every later one goes as a single call, without spending an
//!   attempt. Until a first batch is answered 200, one batch is in flight at a time, so such a
//!   tenant gets one batch request, not one per batch gathered at the start.
//!
//! Delivery: a batch's answers reach their accounts only through their callers' futures; an
//! account whose sender was dropped (the process stopping) gets a transient failure, and the
//! scorer never commits an event before its score is durable, so nothing is lost.

use crate::api::{
    bump, clip, error_body_text, parse_analysis, read_body_up_to, ApiFailure, Inner, Step,
    MAX_BATCH_SIZE,
};
use chrono::NaiveDate;
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Bytes of a batch answer read at most: a hundred analyses of a few hundred bytes each, with
/// ample room.
const MAX_BATCH_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The batches being gathered, and whether the tenant has the endpoint.
pub(crate) struct Batches {
    enabled: AtomicBool,
    /// Set by the first batch answered 200: the tenant has the endpoint.
    confirmed: AtomicBool,
    /// Held by the one batch in flight until the endpoint is confirmed, so a tenant without it
    /// is asked once, not once per batch sent at the start.
    probe: tokio::sync::Mutex<()>,
    open: Mutex<HashMap<NaiveDate, Arc<Gathering>>>,
}

/// One batch being gathered.
struct Gathering {
    items: Mutex<Vec<Item>>,
    /// Notified when the batch is full.
    full: Notify,
}

/// One account waiting in a batch.
struct Item {
    account_id: String,
    /// The step its attempt came to, and whether this account carries the batch's request in
    /// its count (the first account of each batch does).
    reply: oneshot::Sender<(Step, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Batches {
    /// Batching on (`batch_size` above 1) or off.
    pub(crate) fn new(enabled: bool) -> Self {
        Batches {
            enabled: AtomicBool::new(enabled),
            confirmed: AtomicBool::new(false),
            probe: tokio::sync::Mutex::new(()),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// True while accounts go out in batches.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns batching off for good; logs the first time only.
    fn disable(&self, status: u16) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                status,
                "the ESG API tenant has no batch endpoint (POST /v1/esg-analysis:batch answered \
                 {status}): every account is sent as a single call from now on"
            );
        }
    }
}

/// One attempt of `account_id` in a batch: joins (or opens) the batch of its date and waits for
/// its answer. Returns the step and whether this account carries the batch's request.
pub(crate) async fn submit(inner: &Arc<Inner>, account_id: &str, as_of: NaiveDate) -> (Step, bool) {
    let (reply, answer) = oneshot::channel();
    let item = Item {
        account_id: account_id.to_owned(),
        reply,
    };
    let size = inner.config.batch_size.clamp(1, MAX_BATCH_SIZE);
    let opened = {
        let mut open = lock(&inner.batches.open);
        match open.get(&as_of) {
            Some(gathering) => {
                let full = {
                    let mut items = lock(&gathering.items);
                    items.push(item);
                    items.len() >= size
                };
                if full {
                    if let Some(gathering) = open.remove(&as_of) {
                        gathering.full.notify_one();
                    }
                }
                None
            }
            None => {
                let gathering = Arc::new(Gathering {
                    items: Mutex::new(vec![item]),
                    full: Notify::new(),
                });
                if size > 1 {
                    open.insert(as_of, gathering.clone());
                } else {
                    gathering.full.notify_one();
                }
                Some(gathering)
            }
        }
    };
    if let Some(gathering) = opened {
        tokio::spawn(lead(inner.clone(), as_of, gathering));
    }
    answer.await.unwrap_or_else(|_| {
        (
            Step::Retry {
                failure: ApiFailure::transient(
                    "NETWORK",
                    "the batch this account was in was abandoned",
                    None,
                ),
                retry_after: None,
            },
            false,
        )
    })
}

/// The sender of one batch: waits for it to fill (or the linger to pass), for a request slot
/// and a cell of the limiter, closes it and sends it.
async fn lead(inner: Arc<Inner>, as_of: NaiveDate, gathering: Arc<Gathering>) {
    let _ = tokio::time::timeout(inner.config.batch_linger, gathering.full.notified()).await;
    let confirmed = || inner.batches.confirmed.load(Ordering::Relaxed);
    let _probe = if confirmed() {
        None
    } else {
        // Batches that queued here behind the probe go on at once when it was answered 200.
        let probe = inner.batches.probe.lock().await;
        (!confirmed()).then_some(probe)
    };
    let Ok(_slot) = inner.in_flight.acquire().await else {
        return; // closed: the items' callers see their sender dropped
    };
    inner.limiter.acquire().await;
    {
        let mut open = lock(&inner.batches.open);
        if open.get(&as_of).is_some_and(|g| Arc::ptr_eq(g, &gathering)) {
            open.remove(&as_of);
        }
    }
    let items = std::mem::take(&mut *lock(&gathering.items));
    if items.is_empty() {
        return;
    }
    let (answer, counted) = if inner.batches.enabled() {
        (send(&inner, as_of, &items).await, true)
    } else {
        (Answer::Whole(Step::Fallback), false)
    };
    for (i, item) in items.into_iter().enumerate() {
        let step = match &answer {
            Answer::Whole(step) => step.clone(),
            Answer::Items(steps) => steps.get(&item.account_id).cloned().unwrap_or_else(|| {
                bump(&inner.counters.out_of_contract);
                Step::Retry {
                    failure: ApiFailure::transient(
                        "OUT_OF_CONTRACT",
                        "the batch answer has no result for this account",
                        Some(200),
                    ),
                    retry_after: None,
                }
            }),
        };
        // A caller that is gone (stopping) no longer needs its answer.
        let _ = item.reply.send((step, counted && i == 0));
    }
}

/// What a batch request came to.
enum Answer {
    /// The same step for every account of the batch.
    Whole(Step),
    /// A step per account id.
    Items(HashMap<String, Step>),
}

#[derive(serde::Serialize)]
struct BatchRequest<'a> {
    #[serde(rename = "accountIds")]
    account_ids: Vec<&'a str>,
    #[serde(rename = "asOf")]
    as_of: String,
}

#[derive(serde::Deserialize)]
struct BatchBody<'a> {
    #[serde(borrow)]
    results: Vec<BatchResult<'a>>,
}

#[derive(serde::Deserialize)]
struct BatchResult<'a> {
    #[serde(rename = "accountId")]
    account_id: String,
    status: u16,
    #[serde(borrow, default)]
    analysis: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

/// Sends one batch and classifies the answer.
async fn send(inner: &Inner, as_of: NaiveDate, items: &[Item]) -> Answer {
    let token = match inner.token().await {
        Ok(token) => token,
        Err(step) => return Answer::Whole(step),
    };
    let mut seen = HashSet::with_capacity(items.len());
    let account_ids: Vec<&str> = items
        .iter()
        .map(|i| i.account_id.as_str())
        .filter(|id| seen.insert(*id))
        .collect();
    let accounts = account_ids.len();
    let url = match &inner.base {
        Ok(base) => batch_endpoint(base),
        Err(e) => Err(e.to_string()),
    };
    let url = match url {
        Ok(url) => url,
        Err(reason) => {
            return Answer::Whole(Step::Fail(ApiFailure::permanent(
                "INVALID_CONFIG",
                reason,
                None,
            )))
        }
    };
    let body = match serde_json::to_vec(&BatchRequest {
        account_ids,
        as_of: as_of.format("%Y-%m-%d").to_string(),
    }) {
        Ok(body) => body,
        Err(e) => {
            return Answer::Whole(Step::Fail(ApiFailure::permanent(
                "INVALID_CONFIG",
                format!("batch request body: {e}"),
                None,
            )))
        }
    };
    metrics::histogram!(esg_metrics::API_BATCH_ACCOUNTS).record(accounts as f64);
    bump(&inner.counters.requests);
    let began = Instant::now();
    let answer = tokio::time::timeout(inner.config.timeout, async {
        let mut response = inner
            .http
            .post(url)
            .bearer_auth(&*token)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body_up_to(&mut response, MAX_BATCH_BODY_BYTES).await;
        Ok::<_, reqwest::Error>((status, retry_after, body))
    })
    .await;
    let elapsed_ms = began.elapsed().as_millis() as u64;
    let (status, retry_after, body) = match answer {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            let step = inner.transport_failure(e, elapsed_ms);
            inner.answered(Some(&step), began);
            return Answer::Whole(step);
        }
        Err(_) => {
            let step = inner.timed_out("batch answer");
            inner.answered(Some(&step), began);
            return Answer::Whole(step);
        }
    };
    let code = status.as_u16();
    tracing::debug!(
        accounts,
        status = code,
        elapsed_ms,
        "ESG API batch answered"
    );
    let retry_after = retry_after
        .and_then(|v| esg_auth::http::parse_retry_after(&v, SystemTime::now()))
        .map(|d: Duration| d.min(inner.config.max_retry_after));
    let whole = match code {
        200 => {
            let bytes = match body {
                Ok((bytes, false)) => Ok(bytes),
                Ok((_, true)) => Err(format!(
                    "batch answer is larger than {MAX_BATCH_BODY_BYTES} bytes"
                )),
                Err(e) => {
                    let step = inner.transport_failure(e, elapsed_ms);
                    inner.answered(Some(&step), began);
                    return Answer::Whole(step);
                }
            };
            match bytes.and_then(|b| items_of(inner, &b)) {
                Ok(steps) => {
                    inner.batches.confirmed.store(true, Ordering::Relaxed);
                    inner.answered(None, began);
                    return Answer::Items(steps);
                }
                Err(message) => {
                    bump(&inner.counters.out_of_contract);
                    Step::Retry {
                        failure: ApiFailure::transient("OUT_OF_CONTRACT", message, Some(code)),
                        retry_after: None,
                    }
                }
            }
        }
        401 => {
            inner.tokens.invalidate(&token).await;
            Step::Unauthorized
        }
        400 | 404 | 405 => {
            bump(&inner.counters.client_errors);
            inner.batches.disable(code);
            Step::Fallback
        }
        429 | 500 | 502 | 503 | 504 => inner.transient_answer(status, &body, retry_after),
        _ => {
            bump(&inner.counters.out_of_contract);
            Step::Fail(ApiFailure::permanent(
                "OUT_OF_CONTRACT",
                format!(
                    "unexpected HTTP status {code} {} to a batch request",
                    status.canonical_reason().unwrap_or("")
                ),
                Some(code),
            ))
        }
    };
    inner.answered(Some(&whole), began);
    Answer::Whole(whole)
}

/// The step of every account of a 200 batch answer, or why the body is not the contract's.
fn items_of(inner: &Inner, body: &[u8]) -> Result<HashMap<String, Step>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "batch answer is not UTF-8".to_owned())?;
    let parsed: BatchBody<'_> = serde_json::from_str(text).map_err(|e| {
        format!(
            "batch answer is not an object with a results array: {}",
            clip(&e.to_string())
        )
    })?;
    let mut steps = HashMap::with_capacity(parsed.results.len());
    for result in parsed.results {
        let step = item_step(inner, &result);
        steps.insert(result.account_id, step);
    }
    Ok(steps)
}

/// The step of one result of a batch answer.
fn item_step(inner: &Inner, result: &BatchResult<'_>) -> Step {
    let status = result.status;
    let message = || item_error(result.error, status);
    match status {
        200 => {
            let parsed = match result.analysis {
                Some(raw) => parse_analysis(raw.get().as_bytes(), &result.account_id),
                None => Err("status 200 without an analysis".to_owned()),
            };
            match parsed {
                Ok(analysis) => Step::Done(analysis),
                Err(message) => {
                    bump(&inner.counters.out_of_contract);
                    Step::Fail(ApiFailure::permanent("OUT_OF_CONTRACT", message, Some(200)))
                }
            }
        }
        404 | 422 => {
            bump(&inner.counters.client_errors);
            Step::Fail(ApiFailure::permanent(
                format!("HTTP_{status}"),
                message(),
                Some(status),
            ))
        }
        500..=599 => {
            bump(&inner.counters.server_errors);
            Step::Retry {
                failure: ApiFailure::transient(format!("HTTP_{status}"), message(), Some(status)),
                retry_after: None,
            }
        }
        _ => {
            bump(&inner.counters.out_of_contract);
            Step::Fail(ApiFailure::permanent(
                "OUT_OF_CONTRACT",
                format!("batch item status {status} is not one the contract allows"),
                Some(status),
            ))
        }
    }
}

/// `error: message` of an item's ErrorBody, or the item's status when there is none.
fn item_error(error: Option<&RawValue>, status: u16) -> String {
    error
        .and_then(|raw| error_body_text(raw.get().as_bytes()))
        .unwrap_or_else(|| format!("batch item status {status}"))
}

/// `{base}/v1/esg-analysis:batch`.
fn batch_endpoint(base: &reqwest::Url) -> Result<reqwest::Url, String> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| "ESG API url cannot carry a path".to_owned())?
        .pop_if_empty()
        .extend(["v1", "esg-analysis:batch"]);
    Ok(url)
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
