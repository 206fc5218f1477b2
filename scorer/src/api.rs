//! Client of the vendor's ESG Portfolio Analysis API (`shared/contracts/esg-portfolio-analysis-api.yaml`):
//! one call per account, `GET /v1/accounts/{accountId}/esg-analysis?asOf=YYYY-MM-DD`.
//!
//! Responsible for turning one account into exactly one [`ApiOutcome`], whatever the API, the
//! network or the token endpoint do: the call never panics and never returns an error out of
//! band. On the way it takes a cell from the shared [`RateLimiter`] before every request, sends
//! the bearer token from [`TokenSource`], and retries what the contract calls transient.
//!
//! Retry guarantee: at most `max_attempts` attempts per call (default 3). 500/502/503/504,
//! timeouts, connection errors and an unavailable token endpoint are retried after exponential
//! backoff with jitter (`min(cap, base·2^(n-1))` scaled by a random factor in [0.5, 1]), waiting
//! at least a `Retry-After` the server sent. A 429 pauses the whole process's limiter for its
//! `Retry-After` (capped at `max_retry_after`) and counts as an attempt. A 401 drops the token
//! and tries again without counting as an attempt, at most [`MAX_TOKEN_REFRESHES`] times per
//! call. 404, 422, other 4xx and any answer outside the contract are permanent: no retry.
//! Limit: the time one call can take is bounded by `max_attempts × (limiter wait + timeout +
//! backoff or Retry-After)` plus the refreshes; the limiter wait itself depends on the load of
//! the whole process.
//!
//! Exactness: scores are read from the raw JSON text of each number (serde_json `raw_value`)
//! straight into [`Decimal`]; they never pass through a floating-point number.
//!
//! Secrets: the bearer token goes into the `Authorization` header and nowhere else; it is in no
//! log line and no [`ApiFailure`] message.

use crate::limiter::RateLimiter;
use chrono::NaiveDate;
use esg_auth::{AuthError, TokenSource};
use esg_schemas::Pillar;
use rust_decimal::Decimal;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// How many times one call may drop its token after a 401 and try again before it gives up
/// with `AUTH_REJECTED`.
pub const MAX_TOKEN_REFRESHES: u32 = 3;

/// Upper bound of `max_attempts` accepted by [`ApiClientConfig::validate`].
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// Bytes of a response body read at most. An analysis is a few hundred bytes; a body above
/// this is outside the contract (for a 200) or only used for its first part (for an error).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Characters of vendor-supplied text (error messages, offending values) kept in a failure
/// message.
const MAX_QUOTED_CHARS: usize = 200;

/// Default per-attempt timeout: 10 s.
pub fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Default number of attempts in all: 3.
pub fn default_max_attempts() -> u32 {
    3
}

/// Default backoff base (the delay before the second attempt, before jitter): 200 ms.
pub fn default_backoff_base() -> Duration {
    Duration::from_millis(200)
}

/// Default backoff cap: 10 s.
pub fn default_backoff_cap() -> Duration {
    Duration::from_secs(10)
}

/// Default cap on a `Retry-After`: 60 s. A longer one is waited for only this long.
pub fn default_max_retry_after() -> Duration {
    Duration::from_secs(60)
}

/// Configuration of the ESG API client (the `[scorer.api]` table, or wherever the binary puts it).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    /// Base URL of the API, e.g. `https://esg-api.vendor.example`; a path prefix is kept.
    pub url: String,
    /// Timeout of one attempt, from sending the request to the end of the body.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts in all, the first included (401 refreshes are not attempts).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff before the second attempt, doubled for each further one, before jitter.
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest backoff between two attempts, before jitter.
    #[serde(default = "default_backoff_cap", with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Longest `Retry-After` honoured; a longer one is capped to this.
    #[serde(default = "default_max_retry_after", with = "humantime_serde")]
    pub max_retry_after: Duration,
}

impl ApiClientConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        ApiClientConfig {
            url: url.into(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff_base: default_backoff_base(),
            backoff_cap: default_backoff_cap(),
            max_retry_after: default_max_retry_after(),
        }
    }

    /// Checks the configuration once at start-up; the error names the offending key.
    /// [`EsgApiClient`] built from an invalid configuration fails every call permanently with
    /// `INVALID_CONFIG` instead of sending anything.
    pub fn validate(&self) -> Result<(), ApiConfigError> {
        base_url(&self.url)?;
        if self.timeout.is_zero() {
            return Err(ApiConfigError::Invalid {
                key: "timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(ApiConfigError::Invalid {
                key: "max_attempts",
                reason: format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            });
        }
        if self.backoff_base > self.backoff_cap {
            return Err(ApiConfigError::Invalid {
                key: "backoff_base",
                reason: format!(
                    "{:?} is longer than backoff_cap {:?}",
                    self.backoff_base, self.backoff_cap
                ),
            });
        }
        let an_hour = Duration::from_secs(3600);
        for (key, value) in [
            ("timeout", self.timeout),
            ("backoff_cap", self.backoff_cap),
            ("max_retry_after", self.max_retry_after),
        ] {
            if value > an_hour {
                return Err(ApiConfigError::Invalid {
                    key,
                    reason: format!("{value:?} is longer than one hour"),
                });
            }
        }
        Ok(())
    }
}

/// A configuration value the client cannot work with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiConfigError {
    /// `url` does not parse as an absolute http(s) URL that can carry a path.
    #[error("ESG API url is not a usable http(s) base URL: {reason}")]
    Url { reason: String },
    /// Another key is out of its range.
    #[error("ESG API config key `{key}` {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The result of one [`EsgApiClient::analyse`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiOutcome {
    /// Attempts made (401 refreshes excluded; 0 when nothing was sent).
    pub attempts: u32,
    /// The analysis, or why there is none.
    pub result: Result<Analysis, ApiFailure>,
}

/// One account's analysis as the API returned it, checked against the contract.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The date the vendor's analysis is as of (`analysisDate`).
    pub analysis_date: NaiveDate,
    /// Overall score, 0..=100 with at most 4 decimal places; `None` when the vendor sent null.
    pub overall: Option<Decimal>,
    /// Environmental pillar score; `None` when not covered.
    pub environmental: Option<Decimal>,
    /// Social pillar score; `None` when not covered.
    pub social: Option<Decimal>,
    /// Governance pillar score; `None` when not covered.
    pub governance: Option<Decimal>,
    /// The pillar the portfolio focuses on and its score; `None` when the vendor sent null.
    pub primary_focus: Option<(Pillar, Decimal)>,
}

impl Analysis {
    /// True when any of the five values (overall, E, S, G, primary focus) is missing: the
    /// account's status is then `Partial`.
    pub fn is_partial(&self) -> bool {
        self.overall.is_none()
            || self.environmental.is_none()
            || self.social.is_none()
            || self.governance.is_none()
            || self.primary_focus.is_none()
    }
}

/// Why a call gave no analysis.
///
/// Codes: `INVALID_ACCOUNT_ID`, `INVALID_CONFIG`, `AUTH_REJECTED`, `AUTH_REFUSED`,
/// `AUTH_BAD_RESPONSE` and `AUTH_UNAVAILABLE` (token endpoint), `HTTP_<status>`, `TIMEOUT`,
/// `CONNECT`, `NETWORK` (the connection broke after it was made), `OUT_OF_CONTRACT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiFailure {
    /// Stable error code for the errors file and metrics.
    pub code: String,
    /// What happened, for a person; never contains a token or secret.
    pub message: String,
    /// True when trying again (in a later run) cannot help as things stand.
    pub permanent: bool,
    /// The HTTP status of the last answer, when there was one.
    pub http_status: Option<u16>,
}

impl ApiFailure {
    fn permanent(code: impl Into<String>, message: impl Into<String>, status: Option<u16>) -> Self {
        ApiFailure {
            code: code.into(),
            message: message.into(),
            permanent: true,
            http_status: status,
        }
    }

    fn transient(code: impl Into<String>, message: impl Into<String>, status: Option<u16>) -> Self {
        ApiFailure {
            permanent: false,
            ..ApiFailure::permanent(code, message, status)
        }
    }
}

/// Counters since the client was created (all clones share them).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApiStats {
    /// HTTP requests sent to the API (401s included).
    pub requests: u64,
    /// Calls that ended with an analysis.
    pub ok: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 500/502/503/504 answers.
    pub server_errors: u64,
    /// Attempts that ran out of time.
    pub timeouts: u64,
    /// 4xx answers other than 401 and 429.
    pub client_errors: u64,
    /// Answers outside the contract (unexpected status, malformed or out-of-range 200).
    pub out_of_contract: u64,
    /// Attempts made after a failed one (401 refreshes not included).
    pub retries: u64,
    /// Requests sent again with a new token after a 401.
    pub token_refreshes: u64,
    /// Requests that failed on the network (could not connect, or the connection broke).
    pub network_errors: u64,
    /// Attempts that got no token from the token endpoint.
    pub auth_failures: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    ok: AtomicU64,
    rate_limited: AtomicU64,
    server_errors: AtomicU64,
    timeouts: AtomicU64,
    client_errors: AtomicU64,
    out_of_contract: AtomicU64,
    retries: AtomicU64,
    token_refreshes: AtomicU64,
    network_errors: AtomicU64,
    auth_failures: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> ApiStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ApiStats {
            requests: get(&self.requests),
            ok: get(&self.ok),
            rate_limited: get(&self.rate_limited),
            server_errors: get(&self.server_errors),
            timeouts: get(&self.timeouts),
            client_errors: get(&self.client_errors),
            out_of_contract: get(&self.out_of_contract),
            retries: get(&self.retries),
            token_refreshes: get(&self.token_refreshes),
            network_errors: get(&self.network_errors),
            auth_failures: get(&self.auth_failures),
        }
    }
}

/// The ESG API client. Cheap to clone; clones share the HTTP client, the limiter and the stats.
#[derive(Clone)]
pub struct EsgApiClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Result<reqwest::Url, ApiConfigError>,
    config: ApiClientConfig,
    tokens: Arc<TokenSource>,
    limiter: Arc<RateLimiter>,
    counters: Counters,
}

impl fmt::Debug for EsgApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsgApiClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Step {
    Done(Analysis),
    /// 401: drop the token and try again.
    Unauthorized,
    /// Transient: try again after `delay` unless the attempts are used up.
    Retry {
        failure: ApiFailure,
        retry_after: Option<Duration>,
    },
    /// 429: pause the limiter, then as `Retry`.
    RateLimited {
        failure: ApiFailure,
        retry_after: Option<Duration>,
    },
    Fail(ApiFailure),
}

impl EsgApiClient {
    /// A client calling `config.url` with `http`, tokens from `tokens` and cells from `limiter`.
    /// Call [`ApiClientConfig::validate`] first: an invalid URL makes every call fail with
    /// `INVALID_CONFIG`.
    pub fn new(
        http: reqwest::Client,
        config: ApiClientConfig,
        tokens: Arc<TokenSource>,
        limiter: Arc<RateLimiter>,
    ) -> Self {
        EsgApiClient {
            inner: Arc::new(Inner {
                http,
                base: base_url(&config.url),
                config,
                tokens,
                limiter,
                counters: Counters::default(),
            }),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> ApiStats {
        self.inner.counters.snapshot()
    }

    /// Scores one account as of `as_of` (sent as the asOf query parameter), with retries. Never
    /// panics, never errors out of band: every outcome is an ApiOutcome.
    pub async fn analyse(&self, account_id: &str, as_of: NaiveDate) -> ApiOutcome {
        let inner = &*self.inner;
        if !is_valid_account_id(account_id) {
            return ApiOutcome {
                attempts: 0,
                result: Err(ApiFailure::permanent(
                    "INVALID_ACCOUNT_ID",
                    format!(
                        "account id {:?} does not match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$",
                        clip(account_id)
                    ),
                    None,
                )),
            };
        }
        let url = match &inner.base {
            Ok(base) => endpoint(base, account_id, as_of),
            Err(e) => Err(e.to_string()),
        };
        let url = match url {
            Ok(url) => url,
            Err(reason) => {
                return ApiOutcome {
                    attempts: 0,
                    result: Err(ApiFailure::permanent("INVALID_CONFIG", reason, None)),
                }
            }
        };

        let max_attempts = inner.config.max_attempts.clamp(1, MAX_ATTEMPTS_LIMIT);
        let mut attempts: u32 = 0;
        let mut refreshes: u32 = 0;
        loop {
            let attempt = attempts + 1;
            inner.limiter.acquire().await;
            let step = match inner.token().await {
                Ok(token) => {
                    let step = inner.attempt(&url, account_id, attempt, &token).await;
                    if let Step::Unauthorized = step {
                        // The token is bad whether or not this call tries again with a new one.
                        inner.tokens.invalidate(&token).await;
                        if refreshes < MAX_TOKEN_REFRESHES {
                            refreshes += 1;
                            bump(&inner.counters.token_refreshes);
                            tracing::debug!(
                                account_id,
                                attempt,
                                refreshes,
                                "401: token dropped, trying again"
                            );
                            continue;
                        }
                    }
                    step
                }
                Err(step) => step,
            };
            attempts = attempt;
            // `sleep_here`: false after a 429, whose delay is the limiter's pause that the next
            // acquire waits out; sleeping here as well would wait twice.
            let (failure, delay, sleep_here) = match step {
                Step::Done(analysis) => {
                    bump(&inner.counters.ok);
                    return ApiOutcome {
                        attempts,
                        result: Ok(analysis),
                    };
                }
                Step::Unauthorized => {
                    // The refresh budget is spent: the final 401 is reported as an attempt so an
                    // account that was called never shows 0 attempts.
                    return ApiOutcome {
                        attempts,
                        result: Err(ApiFailure::permanent(
                            "AUTH_REJECTED",
                            format!(
                                "the API answered 401 to {} fresh tokens in a row",
                                MAX_TOKEN_REFRESHES + 1
                            ),
                            Some(401),
                        )),
                    };
                }
                Step::Fail(failure) => {
                    return ApiOutcome {
                        attempts,
                        result: Err(failure),
                    }
                }
                Step::RateLimited {
                    failure,
                    retry_after,
                } => {
                    // The quota is the tenant's: everyone waits, not only this call. The pause
                    // is set even after the last attempt so that other calls back off too.
                    let delay = retry_after.unwrap_or_else(|| inner.backoff(attempt));
                    inner.limiter.pause_for(delay);
                    (failure, delay, false)
                }
                Step::Retry {
                    failure,
                    retry_after,
                } => {
                    let backoff = inner.backoff(attempt);
                    (
                        failure,
                        retry_after.map_or(backoff, |r| r.max(backoff)),
                        true,
                    )
                }
            };
            if attempts >= max_attempts {
                return ApiOutcome {
                    attempts,
                    result: Err(failure),
                };
            }
            bump(&inner.counters.retries);
            tracing::warn!(
                account_id,
                attempt,
                code = %failure.code,
                delay_ms = delay.as_millis() as u64,
                "ESG API attempt failed, retrying"
            );
            if sleep_here {
                tokio::time::sleep(delay).await;
            }
        }
    }
}

impl Inner {
    /// The bearer token, or the step an unobtainable token amounts to.
    async fn token(&self) -> Result<Arc<str>, Step> {
        let failure = match tokio::time::timeout(self.config.timeout, self.tokens.token()).await {
            Ok(Ok(token)) => return Ok(token),
            Ok(Err(e)) => {
                let code = match &e {
                    AuthError::Refused { .. } => "AUTH_REFUSED",
                    AuthError::Unavailable { .. } => "AUTH_UNAVAILABLE",
                    AuthError::BadResponse { .. } => "AUTH_BAD_RESPONSE",
                };
                // AuthError's text names the URL and client id, never the secret.
                if e.is_transient() {
                    ApiFailure::transient(code, e.to_string(), None)
                } else {
                    ApiFailure::permanent(code, e.to_string(), None)
                }
            }
            Err(_) => ApiFailure::transient(
                "AUTH_UNAVAILABLE",
                format!(
                    "token endpoint gave no token within {} ms",
                    self.config.timeout.as_millis()
                ),
                None,
            ),
        };
        bump(&self.counters.auth_failures);
        Err(if failure.permanent {
            Step::Fail(failure)
        } else {
            Step::Retry {
                failure,
                retry_after: None,
            }
        })
    }

    /// Sends one request and classifies the answer.
    async fn attempt(
        &self,
        url: &reqwest::Url,
        account_id: &str,
        attempt: u32,
        token: &str,
    ) -> Step {
        bump(&self.counters.requests);
        let started = Instant::now();
        let answer = tokio::time::timeout(self.config.timeout, async {
            let mut response = self
                .http
                .get(url.clone())
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/json")
                .send()
                .await?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = read_body(&mut response).await;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        })
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;

        let (status, retry_after, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::debug!(
                    account_id,
                    attempt,
                    status = "none",
                    elapsed_ms,
                    "ESG API request failed"
                );
                return self.transport_failure(e, elapsed_ms);
            }
            Err(_) => {
                tracing::debug!(
                    account_id,
                    attempt,
                    status = "timeout",
                    elapsed_ms,
                    "ESG API request timed out"
                );
                bump(&self.counters.timeouts);
                return Step::Retry {
                    failure: ApiFailure::transient(
                        "TIMEOUT",
                        format!(
                            "no complete answer within {} ms",
                            self.config.timeout.as_millis()
                        ),
                        None,
                    ),
                    retry_after: None,
                };
            }
        };
        let code = status.as_u16();
        tracing::debug!(
            account_id,
            attempt,
            status = code,
            elapsed_ms,
            "ESG API answered"
        );
        let retry_after = retry_after
            .and_then(|v| parse_retry_after(&v, SystemTime::now()))
            .map(|d| d.min(self.config.max_retry_after));
        let status_code = format!("HTTP_{code}");

        match code {
            200 => {
                let parsed = match body {
                    Ok((bytes, false)) => parse_analysis(&bytes, account_id),
                    Ok((_, true)) => Err(format!(
                        "response body is larger than {MAX_BODY_BYTES} bytes"
                    )),
                    // The status arrived but the body broke off: a network failure, transient.
                    Err(e) => return self.transport_failure(e, elapsed_ms),
                };
                match parsed {
                    Ok(analysis) => Step::Done(analysis),
                    Err(message) => {
                        bump(&self.counters.out_of_contract);
                        Step::Fail(ApiFailure::permanent(
                            "OUT_OF_CONTRACT",
                            message,
                            Some(code),
                        ))
                    }
                }
            }
            401 => Step::Unauthorized,
            429 => {
                bump(&self.counters.rate_limited);
                Step::RateLimited {
                    failure: ApiFailure::transient(
                        status_code,
                        error_message(status, &body),
                        Some(code),
                    ),
                    retry_after,
                }
            }
            500 | 502 | 503 | 504 => {
                bump(&self.counters.server_errors);
                Step::Retry {
                    failure: ApiFailure::transient(
                        status_code,
                        error_message(status, &body),
                        Some(code),
                    ),
                    retry_after,
                }
            }
            400..=499 => {
                bump(&self.counters.client_errors);
                Step::Fail(ApiFailure::permanent(
                    status_code,
                    error_message(status, &body),
                    Some(code),
                ))
            }
            _ => {
                bump(&self.counters.out_of_contract);
                Step::Fail(ApiFailure::permanent(
                    "OUT_OF_CONTRACT",
                    format!(
                        "unexpected HTTP status {code} {}",
                        status.canonical_reason().unwrap_or("")
                    ),
                    Some(code),
                ))
            }
        }
    }

    fn transport_failure(&self, e: reqwest::Error, elapsed_ms: u64) -> Step {
        let (code, counter) = if e.is_timeout() {
            ("TIMEOUT", &self.counters.timeouts)
        } else if e.is_connect() {
            ("CONNECT", &self.counters.network_errors)
        } else {
            ("NETWORK", &self.counters.network_errors)
        };
        bump(counter);
        Step::Retry {
            failure: ApiFailure::transient(
                code,
                format!("after {elapsed_ms} ms: {}", error_chain(&e.without_url())),
                None,
            ),
            retry_after: None,
        }
    }

    /// Backoff after failed attempt number `attempt` (1-based): `min(cap, base·2^(attempt-1))`
    /// scaled by a random factor in [0.5, 1.0].
    fn backoff(&self, attempt: u32) -> Duration {
        let doubling = 1u32 << attempt.saturating_sub(1).min(31);
        let full = self
            .config
            .backoff_base
            .saturating_mul(doubling)
            .min(self.config.backoff_cap);
        let factor: f64 = rand::Rng::random_range(&mut rand::rng(), 0.5..=1.0);
        Duration::try_from_secs_f64(full.as_secs_f64() * factor).unwrap_or(full)
    }
}

/// Reads at most [`MAX_BODY_BYTES`]; the flag says the body was longer and was cut.
async fn read_body(response: &mut reqwest::Response) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// `error: message` from an ErrorBody, or the status text when the body is not one.
fn error_message(
    status: reqwest::StatusCode,
    body: &Result<(Vec<u8>, bool), reqwest::Error>,
) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        message: Option<String>,
    }
    let parsed = body
        .as_ref()
        .ok()
        .and_then(|(bytes, _)| serde_json::from_slice::<ErrorBody>(bytes).ok());
    match parsed {
        Some(ErrorBody {
            error,
            message: Some(message),
        }) => format!("{}: {}", clip(&error), clip(&message)),
        Some(ErrorBody {
            error,
            message: None,
        }) => clip(&error),
        None => status
            .canonical_reason()
            .map_or_else(|| format!("HTTP {}", status.as_u16()), str::to_owned),
    }
}

/// The error and its causes, `a: b: c`, bounded.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    for _ in 0..5 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    clip(&text)
}

/// At most [`MAX_QUOTED_CHARS`] characters of `s`, marked when cut.
fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
    }
}

/// The contract's pattern for account ids: `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
fn is_valid_account_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            first.is_ascii_alphanumeric()
                && rest.len() <= 63
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

/// Parses and checks the configured base URL.
fn base_url(url: &str) -> Result<reqwest::Url, ApiConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ApiConfigError::Url {
        reason: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiConfigError::Url {
            reason: format!("scheme {:?} is not http or https", parsed.scheme()),
        });
    }
    if parsed.cannot_be_a_base() {
        return Err(ApiConfigError::Url {
            reason: "it cannot carry a path".into(),
        });
    }
    Ok(parsed)
}

/// `{base}/v1/accounts/{id}/esg-analysis?asOf=YYYY-MM-DD`, the id percent-encoded as one segment.
fn endpoint(
    base: &reqwest::Url,
    account_id: &str,
    as_of: NaiveDate,
) -> Result<reqwest::Url, String> {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| "ESG API url cannot carry a path".to_owned())?
        .pop_if_empty()
        .extend(["v1", "accounts", account_id, "esg-analysis"]);
    url.query_pairs_mut()
        .append_pair("asOf", &as_of.format("%Y-%m-%d").to_string());
    Ok(url)
}

/// A `Retry-After` value as a wait from `now`: delta-seconds or an HTTP-date (a date in the
/// past is no wait). `None` when it is neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is "very long": the caller caps it.
        return Some(
            value
                .parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

type Object<'a> = HashMap<String, &'a RawValue>;

/// Parses a 200 body strictly per the contract's Analysis schema; the error names the field.
fn parse_analysis(body: &[u8], asked: &str) -> Result<Analysis, String> {
    let text = std::str::from_utf8(body).map_err(|_| "response body is not UTF-8".to_owned())?;
    let fields: Object<'_> = serde_json::from_str(text).map_err(|e| {
        format!(
            "response body is not a JSON object: {}",
            clip(&e.to_string())
        )
    })?;

    let account_id: String = match fields.get("accountId") {
        None => return Err("accountId is missing".into()),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| "accountId is not a string".to_owned())?
        }
    };
    if account_id != asked {
        return Err(format!(
            "accountId {:?} is not the account asked for ({asked})",
            clip(&account_id)
        ));
    }

    let analysis_date = match fields.get("analysisDate") {
        None => return Err("analysisDate is missing".into()),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .ok()
            .and_then(|s| parse_full_date(&s))
            .ok_or_else(|| format!("analysisDate {} is not a YYYY-MM-DD date", clip(raw.get())))?,
    };

    let scores: Object<'_> = match fields.get("scores") {
        None => return Err("scores is missing".into()),
        Some(raw) => {
            serde_json::from_str(raw.get()).map_err(|_| "scores is not an object".to_owned())?
        }
    };
    let score = |key: &str| -> Result<Option<Decimal>, String> {
        let field = format!("scores.{key}");
        match scores.get(key) {
            None => Err(format!("{field} is missing")),
            Some(raw) => parse_score(raw, &field),
        }
    };
    let overall = score("overall")?;
    let environmental = score("environmental")?;
    let social = score("social")?;
    let governance = score("governance")?;

    let primary_focus = match fields.get("primaryFocus") {
        None => None,
        Some(raw) if raw.get().trim() == "null" => None,
        Some(raw) => Some(parse_primary_focus(raw)?),
    };

    Ok(Analysis {
        analysis_date,
        overall,
        environmental,
        social,
        governance,
        primary_focus,
    })
}

fn parse_primary_focus(raw: &RawValue) -> Result<(Pillar, Decimal), String> {
    let focus: Object<'_> = serde_json::from_str(raw.get())
        .map_err(|_| "primaryFocus is neither null nor an object".to_owned())?;
    let pillar = match focus.get("pillar") {
        None => return Err("primaryFocus.pillar is missing".into()),
        Some(raw) => match serde_json::from_str::<String>(raw.get()).as_deref() {
            Ok("ENVIRONMENTAL") => Pillar::Environmental,
            Ok("SOCIAL") => Pillar::Social,
            Ok("GOVERNANCE") => Pillar::Governance,
            _ => {
                return Err(format!(
                    "primaryFocus.pillar {} is not ENVIRONMENTAL, SOCIAL or GOVERNANCE",
                    clip(raw.get())
                ))
            }
        },
    };
    let score = match focus.get("score") {
        None => return Err("primaryFocus.score is missing".into()),
        Some(raw) => parse_score(raw, "primaryFocus.score")?.ok_or("primaryFocus.score is null")?,
    };
    Ok((pillar, score))
}

/// A score: null, or a JSON number in 0..=100 with at most 4 decimal places, read exactly.
fn parse_score(raw: &RawValue, field: &str) -> Result<Option<Decimal>, String> {
    let text = raw.get().trim();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(format!("{field} {} is not a number", clip(text)));
    }
    let value = parse_json_number(text)
        .ok_or_else(|| {
            format!(
                "{field} {} is not an exact decimal with at most 4 decimal places",
                clip(text)
            )
        })?
        .normalize();
    if value < Decimal::ZERO || value > Decimal::ONE_HUNDRED {
        return Err(format!("{field} {} is outside 0..=100", clip(text)));
    }
    if value.scale() > 4 {
        return Err(format!(
            "{field} {} has more than 4 decimal places",
            clip(text)
        ));
    }
    Ok(Some(value))
}

/// The exact value of a JSON number's text (`-?int(.frac)?([eE][+-]?exp)?`), or `None` when a
/// `Decimal` cannot hold it exactly. Never rounds.
fn parse_json_number(text: &str) -> Option<Decimal> {
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], Some(&text[i + 1..])),
        None => (text, None),
    };
    let mut value = Decimal::from_str_exact(mantissa).ok()?;
    if let Some(exponent) = exponent {
        let exponent: i32 = exponent.parse().ok()?;
        if exponent.unsigned_abs() > Decimal::MAX_SCALE {
            return None;
        }
        if exponent < 0 {
            value
                .set_scale(value.scale() + exponent.unsigned_abs())
                .ok()?;
        } else {
            for _ in 0..exponent {
                value = value.checked_mul(Decimal::TEN)?;
            }
        }
    }
    Some(value)
}

/// An RFC 3339 `full-date` (`YYYY-MM-DD`, nothing more, nothing less).
fn parse_full_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path, Query, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::Router;
    use std::collections::VecDeque;
    use std::num::NonZeroU32;
    use std::str::FromStr;
    use std::sync::atomic::{AtomicU16, AtomicUsize};
    use std::sync::Mutex;

    const AS_OF: &str = "2026-11-23";

    fn as_of() -> NaiveDate {
        NaiveDate::from_str(AS_OF).expect("date")
    }

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal")
    }

    /// One scripted answer of the fake API.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
        delay: Duration,
    }

    impl Reply {
        fn status(status: u16) -> Self {
            Reply {
                status,
                headers: Vec::new(),
                body: String::new(),
                delay: Duration::ZERO,
            }
        }
        fn ok(body: impl Into<String>) -> Self {
            Reply {
                body: body.into(),
                ..Reply::status(200)
            }
        }
        fn body(mut self, body: impl Into<String>) -> Self {
            self.body = body.into();
            self
        }
        fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
            self.headers.push((name, value.into()));
            self
        }
        fn after(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }
    }

    /// What the fake API saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        account: String,
        as_of: Option<String>,
        authorization: Option<String>,
    }

    /// A fake ESG API plus token endpoint: answers are scripted per account and per call.
    #[derive(Default)]
    struct Fake {
        scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
        seen: Mutex<Vec<Seen>>,
        token_calls: AtomicUsize,
        /// Status the token endpoint answers with; 0 means 200 with a fresh token.
        token_status: AtomicU16,
    }

    impl Fake {
        fn script(&self, account: &str, replies: impl IntoIterator<Item = Reply>) {
            self.scripts
                .lock()
                .expect("lock")
                .entry(account.to_owned())
                .or_default()
                .extend(replies);
        }
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().expect("lock").clone()
        }
        fn left(&self, account: &str) -> usize {
            self.scripts
                .lock()
                .expect("lock")
                .get(account)
                .map_or(0, VecDeque::len)
        }
    }

    async fn analysis(
        State(fake): State<Arc<Fake>>,
        Path(account): Path<String>,
        Query(query): Query<HashMap<String, String>>,
        headers: HeaderMap,
    ) -> Response {
        fake.seen.lock().expect("lock").push(Seen {
            account: account.clone(),
            as_of: query.get("asOf").cloned(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        });
        let reply = fake
            .scripts
            .lock()
            .expect("lock")
            .get_mut(&account)
            .and_then(VecDeque::pop_front)
            // An unscripted call is a test bug: answer something no test expects.
            .unwrap_or_else(|| Reply::status(418).body("unscripted"));
        tokio::time::sleep(reply.delay).await;
        let mut response = (
            StatusCode::from_u16(reply.status).expect("status"),
            reply.body,
        )
            .into_response();
        for (name, value) in reply.headers {
            response
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        response
    }

    async fn token(State(fake): State<Arc<Fake>>) -> Response {
        let status = fake.token_status.load(Ordering::SeqCst);
        if status != 0 {
            return (
                StatusCode::from_u16(status).expect("status"),
                r#"{"error":"invalid_client"}"#,
            )
                .into_response();
        }
        let n = fake.token_calls.fetch_add(1, Ordering::SeqCst);
        axum::Json(serde_json::json!({
            "access_token": format!("tok-{n}"),
            "token_type": "Bearer",
            "expires_in": 3600,
        }))
        .into_response()
    }

    /// Starts the fake; returns it and its base URL.
    async fn serve() -> (Arc<Fake>, String) {
        let fake = Arc::new(Fake::default());
        let router = Router::new()
            .route("/v1/accounts/{id}/esg-analysis", get(analysis))
            .route("/oauth2/token", post(token))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        (fake, format!("http://{addr}"))
    }

    fn test_config(url: &str) -> ApiClientConfig {
        ApiClientConfig {
            timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(2),
            backoff_cap: Duration::from_millis(20),
            ..ApiClientConfig::new(url)
        }
    }

    /// A client of `config.url` taking tokens from the fake at `token_url`.
    fn client_with(token_url: &str, config: ApiClientConfig) -> (EsgApiClient, Arc<RateLimiter>) {
        let http = reqwest::Client::new();
        let tokens = Arc::new(TokenSource::new(
            http.clone(),
            format!("{token_url}/oauth2/token"),
            "scorer",
            esg_auth::Secret::new("s3cret"),
            Some("esg.read".into()),
        ));
        let nz = |n| NonZeroU32::new(n).expect("non-zero");
        let limiter = Arc::new(RateLimiter::new(nz(1000), nz(100)));
        (
            EsgApiClient::new(http, config, tokens, limiter.clone()),
            limiter,
        )
    }

    async fn setup() -> (Arc<Fake>, EsgApiClient, Arc<RateLimiter>) {
        let (fake, url) = serve().await;
        let (client, limiter) = client_with(&url, test_config(&url));
        (fake, client, limiter)
    }

    fn body(account: &str, scores: &str, focus: &str) -> String {
        format!(
            r#"{{"accountId":"{account}","analysisDate":"2026-11-20","methodologyVersion":"3.2","scores":{scores},"primaryFocus":{focus},"coverage":0.93,"extra":{{"nested":[1,2]}}}}"#
        )
    }

    const FULL_SCORES: &str =
        r#"{"overall":72.345,"environmental":1e2,"social":0,"governance":55.1234}"#;
    const FOCUS: &str = r#"{"pillar":"ENVIRONMENTAL","score":1E+2}"#;

    fn failure(outcome: &ApiOutcome) -> &ApiFailure {
        outcome.result.as_ref().expect_err("a failure")
    }

    #[tokio::test]
    async fn success_keeps_exact_decimals_and_sends_as_of_and_token() {
        let (fake, client, _) = setup().await;
        fake.script("ACC-1", [Reply::ok(body("ACC-1", FULL_SCORES, FOCUS))]);
        let outcome = client.analyse("ACC-1", as_of()).await;
        assert_eq!(outcome.attempts, 1);
        let a = outcome.result.expect("analysis");
        assert_eq!(
            a.analysis_date,
            NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
        );
        assert_eq!(a.overall, Some(dec("72.345")));
        assert_eq!(a.overall.expect("overall").to_string(), "72.345");
        assert_eq!(a.environmental, Some(dec("100")));
        assert_eq!(a.social, Some(Decimal::ZERO));
        assert_eq!(a.governance.expect("g").to_string(), "55.1234");
        assert_eq!(a.primary_focus, Some((Pillar::Environmental, dec("100"))));
        assert!(!a.is_partial());
        let seen = fake.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].account, "ACC-1");
        assert_eq!(seen[0].as_of.as_deref(), Some(AS_OF));
        assert_eq!(seen[0].authorization.as_deref(), Some("Bearer tok-0"));
        let stats = client.stats();
        assert_eq!((stats.requests, stats.ok, stats.retries), (1, 1, 0));
    }

    #[tokio::test]
    async fn null_pillar_and_null_or_absent_focus_are_partial() {
        let (fake, client, _) = setup().await;
        let scores = r#"{"overall":61.5,"environmental":null,"social":70,"governance":50.25}"#;
        fake.script("P1", [Reply::ok(body("P1", scores, "null"))]);
        fake.script(
            "P2",
            [Reply::ok(
                r#"{"accountId":"P2","analysisDate":"2026-11-20","scores":{"overall":null,"environmental":1,"social":2,"governance":3}}"#,
            )],
        );
        fake.script(
            "P3",
            [Reply::ok(body(
                "P3",
                FULL_SCORES,
                r#"{"pillar":"SOCIAL","score":70.1}"#,
            ))],
        );

        let p1 = client
            .analyse("P1", as_of())
            .await
            .result
            .expect("analysis");
        assert!(p1.is_partial());
        assert_eq!(p1.environmental, None);
        assert_eq!(p1.governance, Some(dec("50.25")));
        assert_eq!(p1.primary_focus, None);

        let p2 = client
            .analyse("P2", as_of())
            .await
            .result
            .expect("analysis");
        assert!(p2.is_partial());
        assert_eq!((p2.overall, p2.primary_focus), (None, None));

        let p3 = client
            .analyse("P3", as_of())
            .await
            .result
            .expect("analysis");
        assert!(!p3.is_partial());
        assert_eq!(p3.primary_focus, Some((Pillar::Social, dec("70.1"))));
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let (fake, client, _) = setup().await;
        fake.script(
            "R1",
            [
                Reply::status(503),
                Reply::status(502),
                Reply::ok(body("R1", FULL_SCORES, FOCUS)),
            ],
        );
        let outcome = client.analyse("R1", as_of()).await;
        assert_eq!(outcome.attempts, 3);
        assert!(outcome.result.is_ok());
        let stats = client.stats();
        assert_eq!(
            (stats.requests, stats.server_errors, stats.retries, stats.ok),
            (3, 2, 2, 1)
        );
    }

    #[tokio::test]
    async fn three_attempts_in_all_then_a_transient_failure() {
        let (fake, client, _) = setup().await;
        fake.script(
            "R2",
            [
                Reply::status(503),
                Reply::status(500),
                Reply::status(504).body(r#"{"error":"GATEWAY_TIMEOUT","message":"upstream slow"}"#),
                Reply::ok(body("R2", FULL_SCORES, FOCUS)),
            ],
        );
        let outcome = client.analyse("R2", as_of()).await;
        assert_eq!(outcome.attempts, 3);
        let f = failure(&outcome);
        assert_eq!(f.code, "HTTP_504");
        assert_eq!(f.message, "GATEWAY_TIMEOUT: upstream slow");
        assert!(!f.permanent);
        assert_eq!(f.http_status, Some(504));
        assert_eq!(fake.seen().len(), 3);
        assert_eq!(fake.left("R2"), 1, "a fourth attempt was made");
        assert_eq!(client.stats().retries, 2);
    }

    #[tokio::test]
    async fn not_found_and_unprocessable_are_permanent_without_retry() {
        let (fake, client, _) = setup().await;
        fake.script(
            "N1",
            [
                Reply::status(404)
                    .body(r#"{"error":"NOT_FOUND","message":"no such account","requestId":"r-1"}"#),
                Reply::ok(body("N1", FULL_SCORES, FOCUS)),
            ],
        );
        fake.script("U1", [Reply::status(422).body("<html>nope</html>")]);
        fake.script(
            "U2",
            [Reply::status(422).body(r#"{"error":"NOT_ANALYZABLE"}"#)],
        );
        fake.script("F1", [Reply::status(403)]);

        let n1 = client.analyse("N1", as_of()).await;
        assert_eq!(n1.attempts, 1);
        let f = failure(&n1);
        assert_eq!(
            (f.code.as_str(), f.permanent, f.http_status),
            ("HTTP_404", true, Some(404))
        );
        assert_eq!(f.message, "NOT_FOUND: no such account");
        assert_eq!(fake.left("N1"), 1, "404 was retried");

        let u1 = client.analyse("U1", as_of()).await;
        assert_eq!(u1.attempts, 1);
        assert_eq!(failure(&u1).code, "HTTP_422");
        assert_eq!(failure(&u1).message, "Unprocessable Entity");
        assert_eq!(
            failure(&client.analyse("U2", as_of()).await).message,
            "NOT_ANALYZABLE"
        );

        let f1 = client.analyse("F1", as_of()).await;
        assert_eq!(
            (failure(&f1).code.as_str(), failure(&f1).permanent),
            ("HTTP_403", true)
        );
        assert_eq!(fake.seen().len(), 4);
        assert_eq!(client.stats().client_errors, 4);
    }

    #[tokio::test]
    async fn unexpected_statuses_are_out_of_contract() {
        let (fake, client, _) = setup().await;
        fake.script("S1", [Reply::status(304)]);
        fake.script("S2", [Reply::status(501)]);
        fake.script("S3", [Reply::status(204)]);
        for id in ["S1", "S2", "S3"] {
            let outcome = client.analyse(id, as_of()).await;
            assert_eq!(outcome.attempts, 1, "{id}");
            let f = failure(&outcome);
            assert_eq!(
                (f.code.as_str(), f.permanent),
                ("OUT_OF_CONTRACT", true),
                "{id}"
            );
        }
        assert_eq!(client.stats().out_of_contract, 3);
    }

    #[tokio::test]
    async fn unauthorized_refreshes_the_token_without_counting_an_attempt() {
        let (fake, client, _) = setup().await;
        fake.script(
            "A1",
            [
                Reply::status(401),
                Reply::status(401),
                Reply::ok(body("A1", FULL_SCORES, FOCUS)),
            ],
        );
        let outcome = client.analyse("A1", as_of()).await;
        assert_eq!(outcome.attempts, 1);
        assert!(outcome.result.is_ok());
        let tokens: Vec<_> = fake
            .seen()
            .into_iter()
            .filter_map(|s| s.authorization)
            .collect();
        assert_eq!(tokens, ["Bearer tok-0", "Bearer tok-1", "Bearer tok-2"]);
        let stats = client.stats();
        assert_eq!(
            (stats.token_refreshes, stats.retries, stats.requests),
            (2, 0, 3)
        );
    }

    #[tokio::test]
    async fn endless_unauthorized_gives_up_after_three_refreshes() {
        let (fake, client, _) = setup().await;
        fake.script("A2", std::iter::repeat_n(Reply::status(401), 4));
        let outcome = client.analyse("A2", as_of()).await;
        let f = failure(&outcome);
        assert_eq!((f.code.as_str(), f.permanent), ("AUTH_REJECTED", true));
        assert!(!f.message.contains("tok-"), "token leaked: {}", f.message);
        assert_eq!(outcome.attempts, 1);
        let tokens: Vec<_> = fake
            .seen()
            .into_iter()
            .filter_map(|s| s.authorization)
            .collect();
        assert_eq!(
            tokens,
            [
                "Bearer tok-0",
                "Bearer tok-1",
                "Bearer tok-2",
                "Bearer tok-3"
            ],
            "1 request + 3 refreshed ones"
        );
        assert_eq!(client.stats().token_refreshes, 3);
        // The last rejected token is dropped too: the next call starts with a new one.
        fake.script("A3", [Reply::ok(body("A3", FULL_SCORES, FOCUS))]);
        assert!(client.analyse("A3", as_of()).await.result.is_ok());
        let last = fake.seen().pop().and_then(|s| s.authorization);
        assert_eq!(last.as_deref(), Some("Bearer tok-4"));
    }

    #[tokio::test]
    async fn token_endpoint_down_counts_as_attempts_refused_is_permanent() {
        let (fake, client, _) = setup().await;
        fake.token_status.store(503, Ordering::SeqCst);
        let down = client.analyse("T1", as_of()).await;
        assert_eq!(down.attempts, 3);
        let f = failure(&down);
        assert_eq!((f.code.as_str(), f.permanent), ("AUTH_UNAVAILABLE", false));

        fake.token_status.store(401, Ordering::SeqCst);
        let refused = client.analyse("T1", as_of()).await;
        assert_eq!(refused.attempts, 1);
        let f = failure(&refused);
        assert_eq!((f.code.as_str(), f.permanent), ("AUTH_REFUSED", true));
        assert!(f.message.contains("invalid_client"), "{}", f.message);
        assert!(
            !f.message.contains("s3cret"),
            "secret leaked: {}",
            f.message
        );
        assert!(fake.seen().is_empty(), "the API was called without a token");
        assert_eq!(client.stats().auth_failures, 4);
    }

    #[tokio::test]
    async fn rate_limited_with_delta_seconds_pauses_the_limiter() {
        let (fake, client, limiter) = setup().await;
        fake.script(
            "L1",
            [
                Reply::status(429).header("retry-after", "1"),
                Reply::ok(body("L1", FULL_SCORES, FOCUS)),
            ],
        );
        let started = std::time::Instant::now();
        let outcome = client.analyse("L1", as_of()).await;
        let elapsed = started.elapsed();
        assert_eq!(outcome.attempts, 2);
        assert!(outcome.result.is_ok());
        assert!(elapsed >= Duration::from_millis(990), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(1900), "{elapsed:?}");
        assert_eq!(limiter.waits(), 1, "the retry did not wait on the limiter");
        assert_eq!(client.stats().rate_limited, 1);
    }

    #[tokio::test]
    async fn rate_limited_with_http_date_is_capped_and_pauses_everyone() {
        let (fake, url) = serve().await;
        let config = ApiClientConfig {
            max_retry_after: Duration::from_millis(150),
            ..test_config(&url)
        };
        let (client, limiter) = client_with(&url, config);
        let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        fake.script(
            "L2",
            [
                Reply::status(429).header("retry-after", in_an_hour),
                Reply::ok(body("L2", FULL_SCORES, FOCUS)),
            ],
        );
        let started = std::time::Instant::now();
        let outcome = client.analyse("L2", as_of()).await;
        let elapsed = started.elapsed();
        assert!(outcome.result.is_ok());
        assert!(elapsed >= Duration::from_millis(145), "{elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(2),
            "cap not applied: {elapsed:?}"
        );

        // A 429 on its last attempt still pauses the limiter for every other caller.
        let config = ApiClientConfig {
            max_attempts: 1,
            max_retry_after: Duration::from_millis(150),
            ..test_config(&url)
        };
        assert_eq!(limiter.waits(), 1, "the retry did not wait on the limiter");
        let (client, limiter) = client_with(&url, config);
        fake.script("L3", [Reply::status(429).header("retry-after", "30")]);
        let outcome = client.analyse("L3", as_of()).await;
        let f = failure(&outcome);
        assert_eq!(
            (f.code.as_str(), f.permanent, outcome.attempts),
            ("HTTP_429", false, 1)
        );
        let waited = limiter.acquire().await;
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    #[tokio::test]
    async fn rate_limited_without_retry_after_backs_off_and_fails_after_three() {
        let (fake, client, _) = setup().await;
        fake.script("L4", std::iter::repeat_n(Reply::status(429), 3));
        let started = std::time::Instant::now();
        let outcome = client.analyse("L4", as_of()).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(outcome.attempts, 3);
        assert_eq!(failure(&outcome).code, "HTTP_429");
        assert_eq!(client.stats().rate_limited, 3);
    }

    #[tokio::test]
    async fn server_error_retry_after_is_waited_at_least() {
        let (fake, url) = serve().await;
        let config = ApiClientConfig {
            max_retry_after: Duration::from_millis(120),
            ..test_config(&url)
        };
        let (client, _) = client_with(&url, config);
        let in_an_hour = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        fake.script(
            "S5",
            [
                Reply::status(503).header("retry-after", in_an_hour),
                Reply::ok(body("S5", FULL_SCORES, FOCUS)),
            ],
        );
        let started = std::time::Instant::now();
        let outcome = client.analyse("S5", as_of()).await;
        assert!(outcome.result.is_ok());
        // Backoff alone would be at most 2 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(115),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn malformed_or_out_of_range_answers_are_permanent_out_of_contract() {
        let (fake, client, _) = setup().await;
        let scores = |overall: &str| {
            format!(r#"{{"overall":{overall},"environmental":1,"social":2,"governance":3}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            (
                body("X", &scores("150"), "null"),
                "scores.overall 150 is outside 0..=100",
            ),
            (
                body("X", &scores("-1"), "null"),
                "scores.overall -1 is outside 0..=100",
            ),
            (body("X", &scores("100.00001"), "null"), "outside 0..=100"),
            (
                body("X", &scores("72.12345"), "null"),
                "scores.overall 72.12345 has more than 4 decimal places",
            ),
            (
                body("X", &scores(r#""72.1""#), "null"),
                "scores.overall \"72.1\" is not a number",
            ),
            (
                body("X", &scores("true"), "null"),
                "scores.overall true is not a number",
            ),
            (
                body("X", FULL_SCORES, r#"{"pillar":"CLIMATE","score":50}"#),
                "primaryFocus.pillar \"CLIMATE\" is not ENVIRONMENTAL",
            ),
            (
                body("X", FULL_SCORES, r#"{"pillar":"SOCIAL","score":101}"#),
                "primaryFocus.score 101 is outside",
            ),
            (
                body("X", FULL_SCORES, r#"{"pillar":"SOCIAL","score":null}"#),
                "primaryFocus.score is null",
            ),
            (
                body("X", FULL_SCORES, r#"{"pillar":"SOCIAL"}"#),
                "primaryFocus.score is missing",
            ),
            (
                body("X", FULL_SCORES, r#""SOCIAL""#),
                "primaryFocus is neither null nor an object",
            ),
            (
                body("OTHER", FULL_SCORES, FOCUS),
                "accountId \"OTHER\" is not the account asked for (X)",
            ),
            ("not json".into(), "response body is not a JSON object"),
            ("[1,2]".into(), "response body is not a JSON object"),
            (
                body("X", r#"{"overall":1,"environmental":1,"social":1}"#, "null"),
                "scores.governance is missing",
            ),
            (
                r#"{"accountId":"X","analysisDate":"2026-11-20"}"#.into(),
                "scores is missing",
            ),
            (body("X", "null", "null"), "scores is not an object"),
            (
                r#"{"analysisDate":"2026-11-20","scores":{}}"#.into(),
                "accountId is missing",
            ),
            (
                r#"{"accountId":"X","analysisDate":"20261120","scores":{}}"#.into(),
                "analysisDate \"20261120\" is not a YYYY-MM-DD date",
            ),
            (
                r#"{"accountId":"X","analysisDate":"2026-02-30","scores":{}}"#.into(),
                "analysisDate \"2026-02-30\"",
            ),
            (
                r#"{"accountId":"X","scores":{}}"#.into(),
                "analysisDate is missing",
            ),
        ];
        for (i, (response, expected)) in cases.iter().enumerate() {
            fake.script(
                "X",
                [
                    Reply::ok(response.clone()),
                    Reply::ok(body("X", FULL_SCORES, FOCUS)),
                ],
            );
            let outcome = client.analyse("X", as_of()).await;
            let f = failure(&outcome);
            assert_eq!(
                (f.code.as_str(), f.permanent),
                ("OUT_OF_CONTRACT", true),
                "case {i}: {f:?}"
            );
            assert!(
                f.message.contains(expected),
                "case {i}: {:?} lacks {expected:?}",
                f.message
            );
            assert_eq!(outcome.attempts, 1, "case {i}");
            assert_eq!(fake.left("X"), 1, "case {i} was retried");
            fake.scripts.lock().expect("lock").clear();
        }
        assert_eq!(client.stats().out_of_contract, cases.len() as u64);
    }

    #[tokio::test]
    async fn slow_answer_is_a_timeout_and_is_retried() {
        let (fake, url) = serve().await;
        let config = ApiClientConfig {
            timeout: Duration::from_millis(100),
            max_attempts: 2,
            ..test_config(&url)
        };
        let (client, _) = client_with(&url, config);
        let slow = Reply::ok(body("SLOW", FULL_SCORES, FOCUS)).after(Duration::from_millis(400));
        fake.script("SLOW", [slow.clone(), slow]);
        let started = std::time::Instant::now();
        let outcome = client.analyse("SLOW", as_of()).await;
        let elapsed = started.elapsed();
        assert_eq!(outcome.attempts, 2);
        let f = failure(&outcome);
        assert_eq!((f.code.as_str(), f.permanent), ("TIMEOUT", false));
        assert!(
            elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(390),
            "{elapsed:?}"
        );
        assert_eq!(client.stats().timeouts, 2);
    }

    #[tokio::test]
    async fn connection_refused_is_connect_and_transient() {
        let (_fake, token_url) = serve().await;
        // A port that was just free: nothing listens there.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}", l.local_addr().expect("addr"))
        };
        let (client, _) = client_with(&token_url, test_config(&closed));
        let outcome = client.analyse("C1", as_of()).await;
        assert_eq!(outcome.attempts, 3);
        let f = failure(&outcome);
        assert_eq!(
            (f.code.as_str(), f.permanent, f.http_status),
            ("CONNECT", false, None)
        );
        assert_eq!(client.stats().network_errors, 3);
    }

    #[tokio::test]
    async fn invalid_account_id_sends_nothing() {
        let (fake, client, _) = setup().await;
        let long = "a".repeat(65);
        for id in [
            "",
            "-lead",
            ".hidden",
            "a/b",
            "a b",
            "ünï",
            "a?b=c",
            long.as_str(),
        ] {
            let outcome = client.analyse(id, as_of()).await;
            assert_eq!(outcome.attempts, 0, "{id}");
            let f = failure(&outcome);
            assert_eq!(
                (f.code.as_str(), f.permanent),
                ("INVALID_ACCOUNT_ID", true),
                "{id}"
            );
        }
        assert!(fake.seen().is_empty());
        assert_eq!(fake.token_calls.load(Ordering::SeqCst), 0);
        assert_eq!(client.stats().requests, 0);
        // The longest valid id goes out.
        let longest = "a".repeat(64);
        fake.script(&longest, [Reply::ok(body(&longest, FULL_SCORES, FOCUS))]);
        assert!(client.analyse(&longest, as_of()).await.result.is_ok());
    }

    #[tokio::test]
    async fn invalid_base_url_fails_every_call_without_sending() {
        let (client, _) = client_with("http://127.0.0.1:9", test_config("not a url"));
        let outcome = client.analyse("A", as_of()).await;
        assert_eq!(outcome.attempts, 0);
        assert_eq!(failure(&outcome).code, "INVALID_CONFIG");
    }

    #[test]
    fn account_id_pattern() {
        for ok in ["a", "A1", "0.b_c-d", "ACC-000123"] {
            assert!(is_valid_account_id(ok), "{ok}");
        }
        for bad in ["", "_a", "a%2F", "a\n"] {
            assert!(!is_valid_account_id(bad), "{bad:?}");
        }
        assert!(is_valid_account_id(&"z".repeat(64)));
        assert!(!is_valid_account_id(&"z".repeat(65)));
    }

    #[test]
    fn endpoint_keeps_a_path_prefix_and_drops_the_base_query() {
        let base = base_url("https://esg-api.vendor.example/prefix/?x=1").expect("url");
        let url = endpoint(&base, "ACC.1", as_of()).expect("endpoint");
        assert_eq!(
            url.as_str(),
            "https://esg-api.vendor.example/prefix/v1/accounts/ACC.1/esg-analysis?asOf=2026-11-23"
        );
        let url =
            endpoint(&base_url("http://h:8080").expect("url"), "a", as_of()).expect("endpoint");
        assert_eq!(
            url.as_str(),
            "http://h:8080/v1/accounts/a/esg-analysis?asOf=2026-11-23"
        );
        // The segment encoder would protect a separator, should the id check ever be bypassed.
        let url = endpoint(&base, "a/b?c", as_of()).expect("endpoint");
        assert!(
            url.path().ends_with("/a%2Fb%3Fc/esg-analysis"),
            "{}",
            url.path()
        );
        assert!(base_url("ftp://h").is_err());
        assert!(base_url("mailto:x@y").is_err());
    }

    #[test]
    fn json_numbers_are_read_exactly() {
        let n = |s: &str| parse_json_number(s).map(|d| d.normalize().to_string());
        assert_eq!(n("72.345").as_deref(), Some("72.345"));
        assert_eq!(n("1e2").as_deref(), Some("100"));
        assert_eq!(n("1E+2").as_deref(), Some("100"));
        assert_eq!(n("125e-2").as_deref(), Some("1.25"));
        assert_eq!(n("0.1").as_deref(), Some("0.1"));
        assert_eq!(n("99.99990").as_deref(), Some("99.9999"));
        assert_eq!(n("1e-29"), None);
        // More digits than a Decimal holds is refused, not rounded.
        assert_eq!(n("50.0000000000000000000000000000001"), None);
        let raw = |s: &str| RawValue::from_string(s.to_owned()).expect("raw");
        assert_eq!(parse_score(&raw("-0"), "f"), Ok(Some(Decimal::ZERO)));
        assert_eq!(
            parse_score(&raw("-0"), "f")
                .expect("ok")
                .expect("some")
                .to_string(),
            "0"
        );
        assert_eq!(parse_score(&raw("100.0000"), "f"), Ok(Some(dec("100"))));
        assert_eq!(parse_score(&raw("0.30000"), "f"), Ok(Some(dec("0.3"))));
        assert_eq!(parse_score(&raw("null"), "f"), Ok(None));
        assert!(parse_score(&raw("0.00001"), "f").is_err());
    }

    #[test]
    fn retry_after_delta_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::MAX)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = ApiClientConfig {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_millis(350),
            ..ApiClientConfig::new("http://h")
        };
        let (client, _) = client_with("http://h", config);
        for (attempt, full_ms) in [(1u32, 100u64), (2, 200), (3, 350), (40, 350)] {
            for _ in 0..50 {
                let d = client.inner.backoff(attempt);
                let full = Duration::from_millis(full_ms);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
            }
        }
    }

    #[test]
    fn config_defaults_durations_and_unknown_keys() {
        let c: ApiClientConfig =
            serde_json::from_str(r#"{"url":"https://esg-api.vendor.example"}"#).expect("config");
        assert_eq!(c, ApiClientConfig::new("https://esg-api.vendor.example"));
        assert_eq!(
            (
                c.timeout,
                c.max_attempts,
                c.backoff_base,
                c.backoff_cap,
                c.max_retry_after
            ),
            (
                Duration::from_secs(10),
                3,
                Duration::from_millis(200),
                Duration::from_secs(10),
                Duration::from_secs(60)
            )
        );
        assert_eq!(c.validate(), Ok(()));
        let c: ApiClientConfig =
            serde_json::from_str(r#"{"url":"http://h","timeout":"2s 500ms","backoff_base":"5ms"}"#)
                .expect("config");
        assert_eq!(
            (c.timeout, c.backoff_base),
            (Duration::from_millis(2500), Duration::from_millis(5))
        );
        assert!(
            serde_json::from_str::<ApiClientConfig>(r#"{"url":"http://h","retries":3}"#).is_err()
        );

        let bad = |f: fn(&mut ApiClientConfig)| {
            let mut c = ApiClientConfig::new("http://h");
            f(&mut c);
            c.validate().expect_err("invalid")
        };
        assert!(matches!(
            bad(|c| c.url = "nope".into()),
            ApiConfigError::Url { .. }
        ));
        assert!(matches!(
            bad(|c| c.max_attempts = 0),
            ApiConfigError::Invalid {
                key: "max_attempts",
                ..
            }
        ));
        assert!(matches!(
            bad(|c| c.timeout = Duration::ZERO),
            ApiConfigError::Invalid { key: "timeout", .. }
        ));
        assert!(matches!(
            bad(|c| c.backoff_base = Duration::from_secs(11)),
            ApiConfigError::Invalid {
                key: "backoff_base",
                ..
            }
        ));
    }
}
