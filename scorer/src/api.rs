//! Client of the vendor's ESG Portfolio Analysis API (`shared/contracts/esg-portfolio-analysis-api.yaml`):
//! accounts go out in batch requests (`POST /v1/esg-analysis:batch`, `batch_size` accounts in
//! one request, see `batch`), or one call per account
//! (`GET /v1/accounts/{accountId}/esg-analysis?asOf=YYYY-MM-DD`, with `If-None-Match` when the
//! account's stored analysis has an ETag) when batching is off or the tenant lacks the endpoint.
//!
//! Responsible for turning one account into exactly one [`ApiOutcome`], whatever the API, the
//! network or the token endpoint do: the call never panics and never returns an error out of
//! band. On the way every request takes a slot (`max_in_flight`) and a cell of the shared
//! [`RateLimiter`] (a batch takes one), sends the bearer token from [`TokenSource`], and what
//! the contract calls transient is retried.
//!
//! Retry guarantee, per account: at most `max_attempts` attempts (default 3). 500/502/503/504,
//! timeouts, connection errors and an unavailable token endpoint are retried after exponential
//! backoff with jitter (`min(cap, base·2^(n-1))` scaled by a random factor in [0.5, 1]), waiting
//! at least a `Retry-After` the server sent. A 429 is not an attempt: the account waits its own
//! `Retry-After` (capped at `max_retry_after`; a backoff when there is none) while the other
//! accounts go on, and tries again, at most `max_rate_limited_retries` times in a row and never
//! past the run's deadline; the limiter adapts the send rate to the 429s (see
//! [`crate::limiter`]). A 401 drops the token and tries again without counting as an attempt,
//! at most [`MAX_TOKEN_REFRESHES`] times per account. 404, 422, other 4xx and any answer
//! outside the contract are permanent: no retry. A 304 keeps the stored analysis.
//! Limit: the time one account can take is bounded by `max_attempts × (slot and limiter wait +
//! timeout + backoff or Retry-After)` plus the refreshes and the 429 waits; the waits depend on
//! the load of the whole process.
//!
//! Exactness: scores are read from the raw JSON text of each number (serde_json `raw_value`)
//! straight into [`Decimal`]; they never pass through a floating-point number.
//!
//! Secrets: the bearer token goes into the `Authorization` header and nowhere else; it is in no
//! log line and no [`ApiFailure`] message.

use crate::limiter::RateLimiter;
use chrono::NaiveDate;
use chrono::{DateTime, Utc};
use esg_auth::http::{is_valid_account_id, parse_retry_after};
use esg_auth::{AuthError, TokenSource};
use esg_schemas::{EsgValues, Pillar, PriorAnalysis};
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

/// Default `scope`: `esg.read`.
pub fn default_scope() -> String {
    "esg.read".into()
}

/// Default `rate_limit_per_second`: 50, the vendor's default tenant quota.
pub fn default_rate_limit_per_second() -> u32 {
    50
}

/// Default `max_in_flight`: 64 calls.
pub fn default_max_in_flight() -> usize {
    64
}

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

/// Most accounts the contract allows in one batch request.
pub const MAX_BATCH_SIZE: usize = 100;

/// Default `batch_size`: 100 accounts per batch request, the contract's maximum.
pub fn default_batch_size() -> usize {
    MAX_BATCH_SIZE
}

/// Default `batch_linger`: 20 ms. A batch goes out when it is full or when its first account
/// has waited this long, so a small run does not wait for accounts that will not come.
pub fn default_batch_linger() -> Duration {
    Duration::from_millis(20)
}

/// Default `max_rate_limited_retries`: 50 answers 429 in a row for one account before it is
/// given up (a 429 is not an attempt). At the usual `Retry-After: 1` that rides out a storm of
/// close to a minute; the run's deadline bounds it as well.
pub fn default_max_rate_limited_retries() -> u32 {
    50
}

/// Default `breaker_consecutive`: 20 accounts in a row whose calls ended in an authentication
/// failure ([`ApiFailure::breaker_cause`]) stop the scorer. Large enough that a token expiring
/// under load does not trip it, small enough that a locked-out job spends at most a few hundred
/// requests (see the scorer's README).
pub fn default_breaker_consecutive() -> u32 {
    20
}

/// Configuration of the ESG API client: the `[esg_api]` section of the job's configuration
/// file, every key of it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiClientConfig {
    /// Base URL of the API, e.g. `https://esg-api.vendor.example`; a path prefix is kept.
    pub url: String,
    /// OAuth 2.0 client id of the job at the firm's authentication system (required by the job;
    /// empty here means unset).
    #[serde(default)]
    pub client_id: String,
    /// Its client secret (required by the job).
    #[serde(default)]
    pub client_secret: esg_auth::Secret,
    /// Scope asked for with the token. Default [`default_scope`].
    #[serde(default = "default_scope")]
    pub scope: String,
    /// This process's share of the tenant's quota, in requests per second. With several scorer
    /// processes (Kafka), their shares add up to the quota. Default [`default_rate_limit_per_second`].
    #[serde(default = "default_rate_limit_per_second")]
    pub rate_limit_per_second: u32,
    /// Requests allowed at once above the rate (GCRA burst); none: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Most API requests in flight at once in this process (a batch request is one). Default
    /// [`default_max_in_flight`].
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Accounts per `POST /v1/esg-analysis:batch` request, 1 to 100; 1 turns the batch endpoint
    /// off (one `GET` per account). A batch counts as one request against the quota. Default
    /// [`default_batch_size`].
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long a batch waits for more accounts after its first one before it goes out.
    /// Default [`default_batch_linger`].
    #[serde(default = "default_batch_linger", with = "humantime_serde")]
    pub batch_linger: Duration,
    /// Answers 429 one account may get in a row (each waits its `Retry-After`; none is an
    /// attempt) before it fails with `HTTP_429`. Default [`default_max_rate_limited_retries`].
    #[serde(default = "default_max_rate_limited_retries")]
    pub max_rate_limited_retries: u32,
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
    /// Circuit breaker: this many accounts in a row whose calls ended because the vendor
    /// rejected fresh tokens or the token endpoint was down or refused the credentials stop
    /// scoring with a critical error; the accounts not scored stay pending for the resume. At
    /// least 1. Default [`default_breaker_consecutive`].
    #[serde(default = "default_breaker_consecutive")]
    pub breaker_consecutive: u32,
    /// PEM bundle of the CA certificates that sign the vendor's certificate (the firm's
    /// private CA); when set only these are trusted, not the system's. None: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain presented to the vendor (mutual TLS), with `tls_client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_client_cert_file` (PKCS#8, RSA or EC); readable by the job only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key_file: Option<std::path::PathBuf>,
}

impl ApiClientConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        ApiClientConfig {
            url: url.into(),
            client_id: String::new(),
            client_secret: esg_auth::Secret::default(),
            scope: default_scope(),
            rate_limit_per_second: default_rate_limit_per_second(),
            burst: None,
            max_in_flight: default_max_in_flight(),
            batch_size: default_batch_size(),
            batch_linger: default_batch_linger(),
            max_rate_limited_retries: default_max_rate_limited_retries(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff_base: default_backoff_base(),
            backoff_cap: default_backoff_cap(),
            max_retry_after: default_max_retry_after(),
            breaker_consecutive: default_breaker_consecutive(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }

    /// The TLS files of this client, for [`esg_auth::tls::ClientTls::load`].
    pub fn tls_files(&self) -> esg_auth::tls::TlsFiles<'_> {
        esg_auth::tls::TlsFiles {
            ca_file: self.tls_ca_file.as_deref(),
            client_cert_file: self.tls_client_cert_file.as_deref(),
            client_key_file: self.tls_client_key_file.as_deref(),
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
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(ApiConfigError::Invalid {
                key: "batch_size",
                reason: format!("must be between 1 (batch endpoint off) and {MAX_BATCH_SIZE}"),
            });
        }
        if self.batch_linger > Duration::from_secs(1) {
            return Err(ApiConfigError::Invalid {
                key: "batch_linger",
                reason: format!("{:?} is longer than one second", self.batch_linger),
            });
        }
        if self.breaker_consecutive == 0 {
            return Err(ApiConfigError::Invalid {
                key: "breaker_consecutive",
                reason: "must be at least 1".into(),
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

/// One account to score: what [`EsgApiClient::score`] is asked.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The account id (checked against the contract's pattern before anything is sent).
    pub account_id: &'a str,
    /// The date the analysis is asked as of (`asOf`).
    pub as_of: NaiveDate,
    /// The stored analysis and its ETag: a single call sends `If-None-Match` with it, and a
    /// `304 Not Modified` answers with these values. Not used by batch requests (the batch
    /// endpoint takes no ETag).
    pub prior: Option<&'a PriorAnalysis>,
    /// No answer 429 is waited out past this instant (the run's deadline): the account then
    /// fails with `HTTP_429`.
    pub deadline: Option<DateTime<Utc>>,
}

impl<'a> Call<'a> {
    /// A call for `account_id` as of `as_of`, unconditional and without a deadline.
    pub fn new(account_id: &'a str, as_of: NaiveDate) -> Self {
        Call {
            account_id,
            as_of,
            prior: None,
            deadline: None,
        }
    }
}

/// The result of one [`EsgApiClient::score`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiOutcome {
    /// Attempts made (401 refreshes and 429 answers excluded; 0 when nothing was sent).
    pub attempts: u32,
    /// HTTP requests sent to the API for this account: every request, 401 re-sends and 429
    /// answers included (an attempt that got no token sent none). A batch request is counted
    /// once, on the first account of the batch, so that the sum over accounts is the number of
    /// requests sent.
    pub requests: u32,
    /// Answers 429 this account got (each waited out; none is an attempt). In batch mode a
    /// batch answered 429 counts for every account in it: summed over accounts this counts a
    /// batch's 429 once per account, not once per request (see `rate_limited_requests`).
    pub rate_limited: u32,
    /// Of `requests`, those answered 429, attributed as `requests` is: a single call's 429
    /// counts on its account, a batch answered 429 only on the account that counts the batch
    /// request. The sum over accounts is the number of 429 answers the API sent.
    pub rate_limited_requests: u32,
    /// True when the analysis is the stored one, confirmed by a `304 Not Modified`.
    pub not_modified: bool,
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
    /// The vendor's `ETag` of this analysis (single calls only; batch results carry none).
    pub etag: Option<String>,
}

impl Analysis {
    /// The stored analysis a `304 Not Modified` confirms; `None` when it has no analysis date
    /// (never the case for a stored analysis that came with an ETag).
    pub fn from_prior(prior: &PriorAnalysis) -> Option<Analysis> {
        let v = &prior.values;
        Some(Analysis {
            analysis_date: v.analysis_date?,
            overall: v.overall,
            environmental: v.environmental,
            social: v.social,
            governance: v.governance,
            primary_focus: v.primary_focus.zip(v.primary_focus_score),
            etag: Some(prior.etag.clone()),
        })
    }

    /// The analysis as the ESG values of a score; whether it is `Partial` is
    /// [`EsgValues::is_partial`]'s to say.
    pub fn values(&self) -> EsgValues {
        EsgValues {
            overall: self.overall,
            environmental: self.environmental,
            social: self.social,
            governance: self.governance,
            primary_focus: self.primary_focus.map(|(pillar, _)| pillar),
            primary_focus_score: self.primary_focus.map(|(_, score)| score),
            analysis_date: Some(self.analysis_date),
        }
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
    pub(crate) fn permanent(
        code: impl Into<String>,
        message: impl Into<String>,
        status: Option<u16>,
    ) -> Self {
        ApiFailure {
            code: code.into(),
            message: message.into(),
            permanent: true,
            http_status: status,
        }
    }

    pub(crate) fn transient(
        code: impl Into<String>,
        message: impl Into<String>,
        status: Option<u16>,
    ) -> Self {
        ApiFailure {
            permanent: false,
            ..ApiFailure::permanent(code, message, status)
        }
    }

    /// The cause this failure gives the circuit breaker, when it says that no call can succeed
    /// as things stand (every account would fail the same way): `AUTH_REJECTED` (the API
    /// answered 401 to fresh tokens), `AUTH_REFUSED` (the token endpoint refuses the
    /// credentials), `AUTH_UNAVAILABLE` and `AUTH_BAD_RESPONSE` (the token endpoint is down or
    /// answers nonsense). `None` for a failure of the account itself or of one request.
    pub fn breaker_cause(&self) -> Option<BreakerCause> {
        match self.code.as_str() {
            "AUTH_REJECTED" => Some(BreakerCause::TokensRejected),
            "AUTH_REFUSED" => Some(BreakerCause::CredentialsRefused),
            "AUTH_UNAVAILABLE" | "AUTH_BAD_RESPONSE" => Some(BreakerCause::TokenEndpointDown),
            _ => None,
        }
    }
}

/// Why the circuit breaker opened: what a person must fix before scoring can resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerCause {
    /// The ESG API answers 401 even to fresh tokens.
    TokensRejected,
    /// The token endpoint refuses the job's client credentials.
    CredentialsRefused,
    /// The token endpoint cannot be reached, times out, fails or answers outside OAuth 2.0.
    TokenEndpointDown,
}

impl BreakerCause {
    /// The error code of the failures behind this cause (`AUTH_REJECTED`, `AUTH_REFUSED`,
    /// `AUTH_UNAVAILABLE`).
    pub fn code(self) -> &'static str {
        match self {
            BreakerCause::TokensRejected => "AUTH_REJECTED",
            BreakerCause::CredentialsRefused => "AUTH_REFUSED",
            BreakerCause::TokenEndpointDown => "AUTH_UNAVAILABLE",
        }
    }
}

impl fmt::Display for BreakerCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakerCause::TokensRejected => {
                "the ESG API rejects fresh tokens (401): the vendor has locked the job out or \
                 no longer accepts its client; check esg_api.client_id and esg_api.scope with \
                 the vendor and the firm's authentication team"
            }
            BreakerCause::CredentialsRefused => {
                "the token endpoint refuses the job's credentials: check esg_api.client_id and \
                 esg_api.client_secret (expired or rotated secret?)"
            }
            BreakerCause::TokenEndpointDown => {
                "the token endpoint is down or answers outside OAuth 2.0: check the firm's \
                 authentication system and the token URL, and the network path to it"
            }
        })
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
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) server_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) client_errors: AtomicU64,
    pub(crate) out_of_contract: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) token_refreshes: AtomicU64,
    pub(crate) network_errors: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
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

/// The ESG API client. Cheap to clone; clones share the HTTP client, the limiter, the batches
/// being gathered and the stats.
#[derive(Clone)]
pub struct EsgApiClient {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) base: Result<reqwest::Url, ApiConfigError>,
    pub(crate) config: ApiClientConfig,
    pub(crate) tokens: Arc<TokenSource>,
    pub(crate) limiter: Arc<RateLimiter>,
    pub(crate) counters: Counters,
    /// Requests in flight at once (`max_in_flight` permits), single and batch alike.
    pub(crate) in_flight: tokio::sync::Semaphore,
    /// The batches being gathered, and whether the tenant has the batch endpoint.
    pub(crate) batches: crate::batch::Batches,
}

impl fmt::Debug for EsgApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsgApiClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to (for a batch: what it came to for one of its accounts).
#[derive(Debug, Clone)]
pub(crate) enum Step {
    Done(Analysis),
    /// 304: the stored analysis is still the vendor's.
    NotModified,
    /// 401: the token was dropped; try again with a new one.
    Unauthorized,
    /// Transient: try again after the backoff unless the attempts are used up.
    Retry {
        failure: ApiFailure,
        retry_after: Option<Duration>,
    },
    /// 429: wait `retry_after` (or a backoff) and try again; not an attempt.
    RateLimited {
        failure: ApiFailure,
        retry_after: Option<Duration>,
    },
    /// The tenant has no batch endpoint: send this account as a single call; not an attempt.
    Fallback,
    Fail(ApiFailure),
}

impl Step {
    /// The `outcome` label of `esg_api_requests_total` (a bounded set).
    pub(crate) fn outcome(&self) -> &'static str {
        let code = match self {
            Step::Done(_) | Step::NotModified => return "ok",
            Step::Unauthorized | Step::Fallback => return "client_error",
            Step::RateLimited { .. } => return "rate_limited",
            Step::Retry { failure, .. } | Step::Fail(failure) => failure.code.as_str(),
        };
        match code {
            "TIMEOUT" => "timeout",
            "CONNECT" => "transport_error",
            "OUT_OF_CONTRACT" => "out_of_contract",
            c if c.starts_with("HTTP_5") => "server_error",
            c if c.starts_with("HTTP_") => "client_error",
            _ => "transport_error",
        }
    }
}

/// How one account's attempts stand; what [`ApiOutcome`] reports.
#[derive(Default)]
struct Tally {
    attempts: u32,
    refreshes: u32,
    requests: u32,
    rate_limited: u32,
    rate_limited_requests: u32,
}

impl Tally {
    fn outcome(&self, result: Result<Analysis, ApiFailure>, not_modified: bool) -> ApiOutcome {
        ApiOutcome {
            attempts: self.attempts,
            requests: self.requests,
            rate_limited: self.rate_limited,
            rate_limited_requests: self.rate_limited_requests,
            not_modified,
            result,
        }
    }
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
        let permits = config
            .max_in_flight
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        EsgApiClient {
            inner: Arc::new(Inner {
                http,
                base: base_url(&config.url),
                batches: crate::batch::Batches::new(config.batch_size > 1),
                config,
                tokens,
                limiter,
                counters: Counters::default(),
                in_flight: tokio::sync::Semaphore::new(permits),
            }),
        }
    }

    /// The tenant rate limiter this client takes its cells from.
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &ApiClientConfig {
        &self.inner.config
    }

    /// Counters since creation.
    pub fn stats(&self) -> ApiStats {
        self.inner.counters.snapshot()
    }

    /// True while accounts go out in batch requests: `batch_size` is above 1 and the tenant
    /// has not shown that it lacks the batch endpoint.
    pub fn batching(&self) -> bool {
        self.inner.batches.enabled()
    }

    /// Accounts one request carries: `batch_size` while batching, else 1. The scorer's window
    /// of accounts in flight is its `max_in_flight` times this.
    pub fn accounts_per_request(&self) -> usize {
        if self.batching() {
            self.inner.config.batch_size.clamp(1, MAX_BATCH_SIZE)
        } else {
            1
        }
    }

    /// [`score`](Self::score) of an unconditional call without a deadline.
    pub async fn analyse(&self, account_id: &str, as_of: NaiveDate) -> ApiOutcome {
        self.score(Call::new(account_id, as_of)).await
    }

    /// Scores one account, with retries, in a batch request while batching and as a single
    /// call otherwise. Never panics, never errors out of band: every outcome is an ApiOutcome.
    ///
    /// Per account: at most `max_attempts` attempts (a 401 refresh, a 429 and a batch endpoint
    /// found missing are not attempts); at most `max_rate_limited_retries` answers 429 in a
    /// row, each waited out for its own `Retry-After` (capped at `max_retry_after`) while other
    /// accounts go on, and none past `call.deadline`.
    pub async fn score(&self, call: Call<'_>) -> ApiOutcome {
        let inner = &self.inner;
        let account_id = call.account_id;
        let mut tally = Tally::default();
        if !is_valid_account_id(account_id) {
            return tally.outcome(
                Err(ApiFailure::permanent(
                    "INVALID_ACCOUNT_ID",
                    format!(
                        "account id {:?} does not match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$",
                        clip(account_id)
                    ),
                    None,
                )),
                false,
            );
        }
        if let Err(e) = &inner.base {
            return tally.outcome(
                Err(ApiFailure::permanent("INVALID_CONFIG", e.to_string(), None)),
                false,
            );
        }
        // If-None-Match only with a stored analysis a 304 can stand for.
        let prior = call
            .prior
            .and_then(|p| Analysis::from_prior(p).map(|a| (p.etag.as_str(), a)));

        let max_attempts = inner.config.max_attempts.clamp(1, MAX_ATTEMPTS_LIMIT);
        loop {
            let attempt = tally.attempts + 1;
            // `counted`: the request this step answers is counted for this account (a single
            // call counts its own request in `single`; a step without a request, such as a
            // missing token, is never `RateLimited`).
            let (step, counted) = if inner.batches.enabled() {
                let (step, counted) = crate::batch::submit(inner, account_id, call.as_of).await;
                tally.requests += u32::from(counted);
                (step, counted)
            } else {
                // Boxed: a single call's future (the HTTP request in it) is large, and every
                // account of the scorer's window holds this future while it waits in a batch.
                let step = Box::pin(self.single(
                    &call,
                    prior.as_ref().map(|(etag, _)| *etag),
                    attempt,
                    &mut tally,
                ))
                .await;
                (step, true)
            };
            // Only a whole answer 429 is a `RateLimited` step (a batch item is never 429), so
            // this counts requests answered 429, once each.
            if counted && matches!(step, Step::RateLimited { .. }) {
                tally.rate_limited_requests += 1;
            }
            let (failure, delay) = match step {
                Step::Done(analysis) => {
                    tally.attempts = attempt;
                    bump(&inner.counters.ok);
                    return tally.outcome(Ok(analysis), false);
                }
                Step::NotModified => {
                    tally.attempts = attempt;
                    bump(&inner.counters.ok);
                    metrics::counter!(esg_metrics::API_NOT_MODIFIED_TOTAL).increment(1);
                    let Some((_, analysis)) = prior else {
                        // A 304 to a request without If-None-Match is outside the contract.
                        bump(&inner.counters.out_of_contract);
                        return tally.outcome(
                            Err(ApiFailure::permanent(
                                "OUT_OF_CONTRACT",
                                "304 Not Modified to a request without If-None-Match",
                                Some(304),
                            )),
                            false,
                        );
                    };
                    return tally.outcome(Ok(analysis), true);
                }
                Step::Fallback => continue,
                Step::Unauthorized => {
                    if tally.refreshes < MAX_TOKEN_REFRESHES {
                        tally.refreshes += 1;
                        bump(&inner.counters.token_refreshes);
                        tracing::debug!(
                            account_id,
                            attempt,
                            refreshes = tally.refreshes,
                            "401: token dropped, trying again"
                        );
                        continue;
                    }
                    // The refresh budget is spent: the final 401 is reported as an attempt so
                    // an account that was called never shows 0 attempts.
                    tally.attempts = attempt;
                    return tally.outcome(
                        Err(ApiFailure::permanent(
                            "AUTH_REJECTED",
                            format!(
                                "the API answered 401 to {} fresh tokens in a row",
                                MAX_TOKEN_REFRESHES + 1
                            ),
                            Some(401),
                        )),
                        false,
                    );
                }
                Step::Fail(failure) => {
                    tally.attempts = attempt;
                    return tally.outcome(Err(failure), false);
                }
                Step::RateLimited {
                    failure,
                    retry_after,
                } => {
                    tally.rate_limited += 1;
                    let delay = retry_after
                        .unwrap_or_else(|| inner.backoff(tally.rate_limited))
                        .min(inner.config.max_retry_after);
                    let past_deadline = call.deadline.is_some_and(|deadline| {
                        chrono::Duration::from_std(delay)
                            .ok()
                            .and_then(|d| Utc::now().checked_add_signed(d))
                            .is_none_or(|end| end >= deadline)
                    });
                    if tally.rate_limited > inner.config.max_rate_limited_retries || past_deadline {
                        // Reported with at least one attempt: the account was called.
                        tally.attempts = tally.attempts.max(1);
                        let why = if past_deadline {
                            "waiting for it would pass the run's deadline".to_owned()
                        } else {
                            format!(
                                "more than max_rate_limited_retries = {}",
                                inner.config.max_rate_limited_retries
                            )
                        };
                        return tally.outcome(
                            Err(ApiFailure {
                                message: format!(
                                    "{} (answered 429 {} times in a row; {why})",
                                    failure.message, tally.rate_limited
                                ),
                                ..failure
                            }),
                            false,
                        );
                    }
                    tracing::debug!(
                        account_id,
                        rate_limited = tally.rate_limited,
                        delay_ms = delay.as_millis() as u64,
                        "429: waiting, then trying again (not an attempt)"
                    );
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Step::Retry {
                    failure,
                    retry_after,
                } => {
                    tally.attempts = attempt;
                    let backoff = inner.backoff(attempt);
                    (failure, retry_after.map_or(backoff, |r| r.max(backoff)))
                }
            };
            if tally.attempts >= max_attempts {
                return tally.outcome(Err(failure), false);
            }
            bump(&inner.counters.retries);
            metrics::counter!(esg_metrics::API_RETRIES_TOTAL).increment(1);
            // Below WARN: a retry is the client doing its job; a call that still fails after
            // its attempts is logged at WARN by the scorer, once per account.
            tracing::debug!(
                account_id,
                attempt,
                error_code = %failure.code,
                delay_ms = delay.as_millis() as u64,
                "ESG API attempt failed, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One single-call attempt: a request slot, a cell of the limiter, a token, the `GET`.
    async fn single(
        &self,
        call: &Call<'_>,
        etag: Option<&str>,
        attempt: u32,
        tally: &mut Tally,
    ) -> Step {
        let inner = &*self.inner;
        let url = match &inner.base {
            Ok(base) => endpoint(base, call.account_id, call.as_of),
            Err(e) => Err(e.to_string()),
        };
        let url = match url {
            Ok(url) => url,
            Err(reason) => {
                return Step::Fail(ApiFailure::permanent("INVALID_CONFIG", reason, None))
            }
        };
        let Ok(_slot) = inner.in_flight.acquire().await else {
            return Step::Fail(ApiFailure::permanent(
                "INVALID_CONFIG",
                "the client is closed",
                None,
            ));
        };
        inner.limiter.acquire().await;
        let token = match inner.token().await {
            Ok(token) => token,
            Err(step) => return step,
        };
        let began = Instant::now();
        tally.requests += 1;
        let step = inner
            .attempt(&url, call.account_id, etag, attempt, &token)
            .await;
        inner.answered(Some(&step), began);
        if let Step::Unauthorized = step {
            // The token is bad whether or not this call tries again with a new one.
            inner.tokens.invalidate(&token).await;
        }
        step
    }
}

impl Inner {
    /// Records one request's end: latency, outcome and the limiter's feedback. `step` is what
    /// the request came to, `None` for a batch answered 200 (its items have their own steps).
    /// A timeout or a broken connection is no answer and tells the limiter nothing.
    pub(crate) fn answered(&self, step: Option<&Step>, began: Instant) {
        metrics::histogram!(esg_metrics::API_REQUEST_DURATION_SECONDS)
            .record(began.elapsed().as_secs_f64());
        let outcome = step.map_or("ok", Step::outcome);
        metrics::counter!(esg_metrics::API_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        match step {
            Some(Step::RateLimited { retry_after, .. }) => {
                metrics::counter!(esg_metrics::API_RATE_LIMITED_TOTAL).increment(1);
                self.limiter.on_answer(true, *retry_after);
            }
            Some(Step::Retry { failure, .. }) if failure.http_status.is_none() => {}
            _ => self.limiter.on_answer(false, None),
        }
    }

    /// The bearer token, or the step an unobtainable token amounts to.
    pub(crate) async fn token(&self) -> Result<Arc<str>, Step> {
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
        etag: Option<&str>,
        attempt: u32,
        token: &str,
    ) -> Step {
        bump(&self.counters.requests);
        let etag_asked = etag.is_some();
        let started = Instant::now();
        let answer = tokio::time::timeout(self.config.timeout, async {
            let mut request = self
                .http
                .get(url.clone())
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(etag) = etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            let mut response = request.send().await?;
            let status = response.status();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let retry_after = header(reqwest::header::RETRY_AFTER);
            let etag = header(reqwest::header::ETAG);
            let body = read_body(&mut response).await;
            Ok::<_, reqwest::Error>((status, retry_after, etag, body))
        })
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;

        let (status, retry_after, etag, body) = match answer {
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
                return self.timed_out("answer");
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
                    Ok(analysis) => Step::Done(Analysis { etag, ..analysis }),
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
            304 if etag_asked => Step::NotModified,
            401 => Step::Unauthorized,
            429 | 500 | 502 | 503 | 504 => self.transient_answer(status, &body, retry_after),
            400..=499 => {
                bump(&self.counters.client_errors);
                Step::Fail(ApiFailure::permanent(
                    format!("HTTP_{code}"),
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

    /// The step of a 429 (rate limited, not an attempt) or a 500/502/503/504 (an attempt to
    /// try again), the same for a single call and a whole batch; callers pass only these.
    pub(crate) fn transient_answer(
        &self,
        status: reqwest::StatusCode,
        body: &Result<(Vec<u8>, bool), reqwest::Error>,
        retry_after: Option<Duration>,
    ) -> Step {
        let code = status.as_u16();
        let failure = ApiFailure::transient(
            format!("HTTP_{code}"),
            error_message(status, body),
            Some(code),
        );
        if code == 429 {
            bump(&self.counters.rate_limited);
            Step::RateLimited {
                failure,
                retry_after,
            }
        } else {
            bump(&self.counters.server_errors);
            Step::Retry {
                failure,
                retry_after,
            }
        }
    }

    /// The step of a request that got no complete `what` within the timeout.
    pub(crate) fn timed_out(&self, what: &str) -> Step {
        bump(&self.counters.timeouts);
        Step::Retry {
            failure: ApiFailure::transient(
                "TIMEOUT",
                format!(
                    "no complete {what} within {} ms",
                    self.config.timeout.as_millis()
                ),
                None,
            ),
            retry_after: None,
        }
    }

    pub(crate) fn transport_failure(&self, e: reqwest::Error, elapsed_ms: u64) -> Step {
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
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
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
pub(crate) async fn read_body(
    response: &mut reqwest::Response,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    read_body_up_to(response, MAX_BODY_BYTES).await
}

/// Reads at most `limit` bytes; the flag says the body was longer and was cut.
pub(crate) async fn read_body_up_to(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// `error: message` from an ErrorBody, or the status text when the body is not one.
pub(crate) fn error_message(
    status: reqwest::StatusCode,
    body: &Result<(Vec<u8>, bool), reqwest::Error>,
) -> String {
    body.as_ref()
        .ok()
        .and_then(|(bytes, _)| error_body_text(bytes))
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .map_or_else(|| format!("HTTP {}", status.as_u16()), str::to_owned)
        })
}

/// `error: message` (or `error`) of the contract's ErrorBody; `None` when `bytes` is not one.
pub(crate) fn error_body_text(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        message: Option<String>,
    }
    let body: ErrorBody = serde_json::from_slice(bytes).ok()?;
    Some(match body.message {
        Some(message) => format!("{}: {}", clip(&body.error), clip(&message)),
        None => clip(&body.error),
    })
}

/// The error and its causes, `a: b: c` ([`esg_auth::http::error_chain`]), clipped.
fn error_chain(e: &dyn std::error::Error) -> String {
    clip(&esg_auth::http::error_chain(e))
}

/// At most [`MAX_QUOTED_CHARS`] characters of `s`, marked when cut.
pub(crate) fn clip(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_owned(),
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

type Object<'a> = HashMap<String, &'a RawValue>;

/// Parses a 200 body strictly per the contract's Analysis schema; the error names the field.
pub(crate) fn parse_analysis(body: &[u8], asked: &str) -> Result<Analysis, String> {
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
        etag: None,
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
#[path = "api_tests.rs"]
mod tests;
