//! Client of the firm's Account Management API (`shared/contracts/account-management-api.yaml`).
//!
//! Responsible for: listing every ACTIVE account page by page (`GET {url}/v1/accounts`), checking
//! each record on its own against the contract, and handing each page's valid ACTIVE records to
//! the caller. It retries what the contract calls transient (429, 5xx, timeouts, connection and
//! token-endpoint outages), refreshes the bearer token on 401 and restarts the listing when a
//! page token expires (410).
//!
//! Not responsible for: de-duplicating accounts across pages (the caller does it by highest
//! `version`; [`dedupe_highest_version`] for small listings and tests), deciding which accounts
//! are scored, or storing anything.
//!
//! # Delivery guarantee and its limits
//!
//! - **At least once, complete only on `Ok`.** When [`AccountsClient::list_active`] returns
//!   `Ok`, every valid ACTIVE record the account system listed in the final pass reached
//!   `on_page` at least once. A 410 restarts the listing from the first page, so records of
//!   earlier passes are delivered again; and the listing is not a snapshot, so an account updated
//!   while it runs may be delivered twice with different versions. Callers keep, per account id,
//!   the highest version. On `Err` the records delivered so far are a partial listing: they must
//!   not be used to conclude that an account has left.
//! - **Malformed records are skipped, not fatal.** A record that breaks the contract is counted
//!   in [`ListingStats::malformed`] and logged once (page, index, account id, rule; never the
//!   name); the rest of the page is still delivered. A page body that is not the contract's page
//!   object is fatal, since nothing on it can be trusted.
//! - **Bounded.** One page in memory at a time (a body larger than [`MAX_PAGE_BYTES`] is fatal),
//!   each request bounded by `timeout`, at most `max_attempts` transient failures per page, at
//!   most [`MAX_AUTH_REFRESHES`] consecutive 401s, at most `max_restarts` restarts, and each wait
//!   bounded by `backoff_cap` or by a `Retry-After` capped at [`MAX_RETRY_AFTER`].
//!   Limit: the number of pages is not bounded; a server that keeps handing out new page tokens
//!   keeps the listing going (a token that repeats itself is caught). The caller's deadline is
//!   the bound of last resort.

use std::collections::btree_map::{BTreeMap, Entry};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use esg_auth::TokenSource;
use serde_json::Value;
use tracing::Instrument;

/// Largest page body read, in bytes. A page of 5,000 contract-sized records is a few MiB; a
/// larger body is outside the contract and fatal rather than a reason to exhaust memory.
pub const MAX_PAGE_BYTES: usize = 64 * 1024 * 1024;

/// Consecutive 401 answers on one page after each of which the token is refreshed and the page
/// retried; one more 401 is fatal (the credentials are wrong, retrying will not help).
pub const MAX_AUTH_REFRESHES: u32 = 3;

/// Longest wait a `Retry-After` header can impose. Page tokens live 15 minutes and the run has a
/// deadline; a longer `Retry-After` is honoured only up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// Most bytes of an error body read to find its `error` and `message`.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Most characters of a server-provided error text kept in an error message.
const MAX_ERROR_TEXT_CHARS: usize = 300;
/// `accountName` maxLength in the contract, in characters.
const MAX_ACCOUNT_NAME_CHARS: usize = 200;
/// Longest account id the contract's pattern allows; also how much of a bad id is logged.
const MAX_ACCOUNT_ID_CHARS: usize = 64;
/// Bounds checked by [`AccountsClientConfig::validate`].
const MAX_PAGE_SIZE: u32 = 5000;
const MAX_ATTEMPTS_LIMIT: u32 = 20;
const MAX_RESTARTS_LIMIT: u32 = 20;

/// Settings of the account system client. Validate once at start-up with
/// [`AccountsClientConfig::validate`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsClientConfig {
    /// Base URL of the account system, e.g. `https://ams.firm.example`; `/v1/accounts` is
    /// appended.
    pub url: String,
    /// Accounts asked for per page (`pageSize`), 1..=5000. Default [`default_page_size`].
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Longest time one page request may take, response body included. Default
    /// [`default_timeout`].
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts per page when it fails transiently (429, 5xx, timeout, connection or token
    /// endpoint outage), 1..=20. Default [`default_max_attempts`].
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff between attempts; it doubles per attempt up to `backoff_cap`, with jitter.
    /// Default [`default_backoff_base`].
    #[serde(default = "default_backoff_base", with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest backoff between attempts (a `Retry-After` may ask for longer). Default
    /// [`default_backoff_cap`].
    #[serde(default = "default_backoff_cap", with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Restarts of the listing from the first page after a 410 (expired page token), 0..=20.
    /// Default [`default_max_restarts`].
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
}

/// Default `page_size`: 1000, the contract's default.
pub fn default_page_size() -> u32 {
    1000
}
/// Default `timeout`: 30 s per page request.
pub fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Default `max_attempts`: 5 per page.
pub fn default_max_attempts() -> u32 {
    5
}
/// Default `backoff_base`: 500 ms.
pub fn default_backoff_base() -> Duration {
    Duration::from_millis(500)
}
/// Default `backoff_cap`: 30 s.
pub fn default_backoff_cap() -> Duration {
    Duration::from_secs(30)
}
/// Default `max_restarts`: 3.
pub fn default_max_restarts() -> u32 {
    3
}

impl AccountsClientConfig {
    /// A configuration for `url` with every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        AccountsClientConfig {
            url: url.into(),
            page_size: default_page_size(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff_base: default_backoff_base(),
            backoff_cap: default_backoff_cap(),
            max_restarts: default_max_restarts(),
        }
    }

    /// Checks every key; the error names the first key that is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        // The URL itself is not echoed: it may carry credentials in its user-info part.
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            _ => return Err("url: must be an absolute http:// or https:// URL".into()),
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            return Err(format!(
                "page_size: must be between 1 and {MAX_PAGE_SIZE}, got {}",
                self.page_size
            ));
        }
        if self.timeout.is_zero() {
            return Err("timeout: must be greater than zero".into());
        }
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(format!(
                "max_attempts: must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {}",
                self.max_attempts
            ));
        }
        if self.backoff_base.is_zero() {
            return Err("backoff_base: must be greater than zero".into());
        }
        if self.backoff_cap < self.backoff_base {
            return Err(format!(
                "backoff_cap: must be at least backoff_base ({:?}), got {:?}",
                self.backoff_base, self.backoff_cap
            ));
        }
        if self.max_restarts > MAX_RESTARTS_LIMIT {
            return Err(format!(
                "max_restarts: must be at most {MAX_RESTARTS_LIMIT}, got {}",
                self.max_restarts
            ));
        }
        Ok(())
    }
}

/// Status of an account, as the contract enumerates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccountStatus {
    /// `ACTIVE`: the account is rated.
    Active,
    /// `CLOSED`.
    Closed,
    /// `SUSPENDED`.
    Suspended,
}

impl AccountStatus {
    /// The contract's spelling (`ACTIVE`, `CLOSED`, `SUSPENDED`).
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Active => "ACTIVE",
            AccountStatus::Closed => "CLOSED",
            AccountStatus::Suspended => "SUSPENDED",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "ACTIVE" => Some(AccountStatus::Active),
            "CLOSED" => Some(AccountStatus::Closed),
            "SUSPENDED" => Some(AccountStatus::Suspended),
            _ => None,
        }
    }
}

impl fmt::Display for AccountStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One account that passed every rule of the contract.
///
/// `Debug` shows only the length of `account_name`, so that a record logged with `?record`
/// cannot put a name in the logs.
#[derive(Clone, PartialEq)]
pub struct AccountRecord {
    /// `accountId`, matching `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
    pub account_id: String,
    /// `accountName`: free text, at most 200 characters. Never log it.
    pub account_name: String,
    /// `status`.
    pub status: AccountStatus,
    /// `updatedAt`: when the account last changed.
    pub updated_at: DateTime<Utc>,
    /// `version`, at least 1; grows whenever anything about the account changes.
    pub version: i64,
}

impl fmt::Debug for AccountRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountRecord")
            .field("account_id", &self.account_id)
            .field(
                "account_name",
                &format_args!("<{} chars>", self.account_name.chars().count()),
            )
            .field("status", &self.status)
            .field("updated_at", &self.updated_at)
            .field("version", &self.version)
            .finish()
    }
}

/// What one listing did. Counts add up over every pass: after a restart, pages and records seen
/// again are counted again.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ListingStats {
    /// Pages received (200 answers).
    pub pages: u64,
    /// Valid ACTIVE records handed to `on_page`.
    pub records: u64,
    /// Records skipped because they broke the contract.
    pub malformed: u64,
    /// Valid records skipped because their status was not ACTIVE.
    pub not_active: u64,
    /// Restarts from the first page after a 410.
    pub restarts: u32,
    /// `totalCount` of the last pass, when the account system sent it.
    pub total_count: Option<u64>,
    /// Retries after transient failures (401 token refreshes are not counted).
    pub retries: u64,
}

/// Why a listing ended without completing. `Sink` stops the listing and is returned as is; every
/// other variant names the listing URL and the page (1-based, within the current pass).
#[derive(Debug, thiserror::Error)]
pub enum ListingError<E> {
    /// `on_page` returned an error; the listing stopped there.
    #[error("account page sink failed: {0}")]
    Sink(E),
    /// Retrying cannot help: a 400/4xx, credentials refused, too many 401s or 410s, or an answer
    /// outside the contract.
    #[error("account listing {url} failed on page {page}{}: {reason}", status_note(.status))]
    Fatal {
        url: String,
        page: u64,
        status: Option<u16>,
        reason: String,
    },
    /// The page kept failing transiently for `max_attempts` attempts.
    #[error("account listing {url} gave up on page {page} after {attempts} attempts, last failure{}: {last}", status_note(.last_status))]
    Exhausted {
        url: String,
        page: u64,
        attempts: u32,
        last_status: Option<u16>,
        last: String,
    },
}

fn status_note(status: &Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

/// Keeps, for each account id, the record with the highest version (ties: the later one), sorted
/// by account id. Holds every account in memory: for small listings and tests; the producer
/// itself de-duplicates in SQLite.
pub fn dedupe_highest_version(
    records: impl IntoIterator<Item = AccountRecord>,
) -> Vec<AccountRecord> {
    let mut latest: BTreeMap<String, AccountRecord> = BTreeMap::new();
    for record in records {
        match latest.entry(record.account_id.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(record);
            }
            Entry::Occupied(mut slot) => {
                if record.version >= slot.get().version {
                    slot.insert(record);
                }
            }
        }
    }
    latest.into_values().collect()
}

/// Lists accounts from the account system. Cheap to share behind an `Arc`; holds no state between
/// listings besides the token cache of its [`TokenSource`].
#[derive(Debug)]
pub struct AccountsClient {
    http: reqwest::Client,
    config: AccountsClientConfig,
    tokens: Arc<TokenSource>,
    listing_url: String,
}

/// The page object of the contract; items are checked one by one afterwards.
#[derive(serde::Deserialize)]
struct RawPage {
    items: Vec<Value>,
    #[serde(rename = "nextPageToken", default)]
    next_page_token: Option<String>,
    #[serde(rename = "totalCount", default)]
    total_count: Option<u64>,
}

/// How one request for a page ended.
enum Attempt {
    Page(RawPage),
    Unauthorized,
    Gone,
    Transient {
        status: Option<u16>,
        detail: String,
        retry_after: Option<Duration>,
    },
    Fatal {
        status: Option<u16>,
        reason: String,
    },
}

/// A page, or the news that the listing must restart.
enum Fetched {
    Page(RawPage),
    Gone,
}

impl AccountsClient {
    /// A client for `config.url` (validate `config` first) taking bearer tokens from `tokens`.
    pub fn new(
        http: reqwest::Client,
        config: AccountsClientConfig,
        tokens: Arc<TokenSource>,
    ) -> Self {
        let listing_url = format!("{}/v1/accounts", config.url.trim_end_matches('/'));
        AccountsClient {
            http,
            config,
            tokens,
            listing_url,
        }
    }

    /// Lists every ACTIVE account (`status=ACTIVE` filter), page by page, calling `on_page` with
    /// each page's valid records (pages without one are not passed on).
    ///
    /// On 410 (page token expired) the listing restarts from the first page and `on_page` sees
    /// pages again from the start (the caller de-duplicates by highest version, see
    /// [`dedupe_highest_version`]); at most `max_restarts` restarts. An error from `on_page`
    /// stops the listing and comes back as [`ListingError::Sink`]. See the module documentation
    /// for the guarantee and its limits.
    pub async fn list_active<E>(
        &self,
        on_page: impl FnMut(Vec<AccountRecord>) -> Result<(), E>,
    ) -> Result<ListingStats, ListingError<E>> {
        let span = tracing::info_span!("account_listing", url = %self.listing_url);
        self.list_active_inner(on_page).instrument(span).await
    }

    async fn list_active_inner<E>(
        &self,
        mut on_page: impl FnMut(Vec<AccountRecord>) -> Result<(), E>,
    ) -> Result<ListingStats, ListingError<E>> {
        let mut stats = ListingStats::default();
        'listing: loop {
            let mut page_token: Option<String> = None;
            let mut page: u64 = 0;
            loop {
                page += 1;
                let raw = match self
                    .fetch_page(page, page_token.as_deref(), &mut stats)
                    .await?
                {
                    Fetched::Page(raw) => raw,
                    Fetched::Gone => {
                        if stats.restarts >= self.config.max_restarts {
                            return Err(self.fatal(
                                page,
                                Some(410),
                                format!(
                                    "page token expired again after {} restarts (max_restarts)",
                                    stats.restarts
                                ),
                            ));
                        }
                        stats.restarts += 1;
                        tracing::info!(
                            page,
                            restart = stats.restarts,
                            "page token expired (410); restarting the listing from the first page"
                        );
                        continue 'listing;
                    }
                };
                let RawPage {
                    items,
                    next_page_token,
                    total_count,
                } = raw;
                stats.pages += 1;
                if total_count.is_some() {
                    stats.total_count = total_count;
                }
                let records = check_page(page, items, &mut stats);
                tracing::debug!(page, records = records.len(), "account page received");
                if !records.is_empty() {
                    stats.records += records.len() as u64;
                    on_page(records).map_err(ListingError::Sink)?;
                }
                match next_page_token {
                    None => {
                        tracing::info!(
                            pages = stats.pages,
                            records = stats.records,
                            malformed = stats.malformed,
                            not_active = stats.not_active,
                            restarts = stats.restarts,
                            retries = stats.retries,
                            total_count = stats.total_count,
                            "account listing complete"
                        );
                        return Ok(stats);
                    }
                    Some(next) if page_token.as_deref() == Some(next.as_str()) => {
                        return Err(self.fatal(
                            page,
                            Some(200),
                            "nextPageToken repeats the token of the page it came from".into(),
                        ));
                    }
                    Some(next) => page_token = Some(next),
                }
            }
        }
    }

    /// Fetches one page, retrying transient failures and refreshing the token on 401.
    async fn fetch_page<E>(
        &self,
        page: u64,
        page_token: Option<&str>,
        stats: &mut ListingStats,
    ) -> Result<Fetched, ListingError<E>> {
        let mut failures: u32 = 0;
        let mut refreshes: u32 = 0;
        loop {
            let outcome = match self.tokens.token().await {
                Ok(token) => {
                    let outcome = match tokio::time::timeout(
                        self.config.timeout,
                        self.attempt(&token, page_token),
                    )
                    .await
                    {
                        Ok(outcome) => outcome,
                        Err(_) => Attempt::Transient {
                            status: None,
                            detail: format!(
                                "no complete answer within {:?} (timeout)",
                                self.config.timeout
                            ),
                            retry_after: None,
                        },
                    };
                    if matches!(outcome, Attempt::Unauthorized) {
                        self.tokens.invalidate(&token).await;
                    }
                    outcome
                }
                Err(e) if e.is_transient() => Attempt::Transient {
                    status: None,
                    detail: e.to_string(),
                    retry_after: None,
                },
                Err(e) => return Err(self.fatal(page, None, format!("no bearer token: {e}"))),
            };
            match outcome {
                Attempt::Page(raw) => return Ok(Fetched::Page(raw)),
                Attempt::Gone => return Ok(Fetched::Gone),
                Attempt::Unauthorized => {
                    refreshes += 1;
                    if refreshes > MAX_AUTH_REFRESHES {
                        return Err(self.fatal(
                            page,
                            Some(401),
                            format!(
                                "still unauthorized after {MAX_AUTH_REFRESHES} token refreshes"
                            ),
                        ));
                    }
                    tracing::info!(
                        page,
                        refresh = refreshes,
                        "account system answered 401; token refreshed, page retried"
                    );
                }
                Attempt::Transient {
                    status,
                    detail,
                    retry_after,
                } => {
                    refreshes = 0;
                    failures += 1;
                    if failures >= self.config.max_attempts {
                        return Err(ListingError::Exhausted {
                            url: self.listing_url.clone(),
                            page,
                            attempts: failures,
                            last_status: status,
                            last: detail,
                        });
                    }
                    let delay = backoff_delay(
                        failures,
                        self.config.backoff_base,
                        self.config.backoff_cap,
                        retry_after,
                        rand::random_range(0.5..=1.0),
                    );
                    stats.retries += 1;
                    tracing::warn!(
                        page,
                        attempt = failures,
                        status,
                        error = %detail,
                        delay_ms = delay.as_millis() as u64,
                        "account page failed transiently; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
                Attempt::Fatal { status, reason } => return Err(self.fatal(page, status, reason)),
            }
        }
    }

    /// One request for one page, classified. The caller bounds it with the timeout.
    async fn attempt(&self, token: &str, page_token: Option<&str>) -> Attempt {
        let page_size = self.config.page_size.to_string();
        let mut query: Vec<(&str, &str)> = vec![("status", "ACTIVE"), ("pageSize", &page_size)];
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        let sent = self
            .http
            .get(&self.listing_url)
            .query(&query)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let mut resp = match sent {
            Ok(resp) => resp,
            Err(e) if e.is_builder() || e.is_redirect() => {
                return Attempt::Fatal {
                    status: None,
                    reason: format!("request could not be made: {}", error_chain(&e)),
                }
            }
            Err(e) => {
                return Attempt::Transient {
                    status: None,
                    detail: format!("request failed: {}", error_chain(&e)),
                    retry_after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        match status {
            200..=299 => match read_bounded(&mut resp, MAX_PAGE_BYTES).await {
                Ok(body) => match serde_json::from_slice::<RawPage>(&body) {
                    Ok(raw) => Attempt::Page(raw),
                    Err(e) => Attempt::Fatal {
                        status: Some(status),
                        reason: format!("answer is not the contract's page object: {e}"),
                    },
                },
                Err(BodyError::TooLarge) => Attempt::Fatal {
                    status: Some(status),
                    reason: format!("page body larger than {MAX_PAGE_BYTES} bytes"),
                },
                Err(BodyError::Read(e)) => Attempt::Transient {
                    status: Some(status),
                    detail: format!("page body broken off: {}", error_chain(&e)),
                    retry_after: None,
                },
            },
            401 => Attempt::Unauthorized,
            410 => Attempt::Gone,
            429 | 500..=599 => Attempt::Transient {
                status: Some(status),
                detail: format!("HTTP {status}"),
                retry_after: retry_after(resp.headers(), SystemTime::now()),
            },
            _ => {
                let body = read_bounded(&mut resp, MAX_ERROR_BODY_BYTES)
                    .await
                    .unwrap_or_default();
                Attempt::Fatal {
                    status: Some(status),
                    reason: describe_error_body(&body),
                }
            }
        }
    }

    fn fatal<E>(&self, page: u64, status: Option<u16>, reason: String) -> ListingError<E> {
        ListingError::Fatal {
            url: self.listing_url.clone(),
            page,
            status,
            reason,
        }
    }
}

/// Checks every item of a page on its own; returns the valid ACTIVE records and counts the rest.
fn check_page(page: u64, items: Vec<Value>, stats: &mut ListingStats) -> Vec<AccountRecord> {
    let mut records = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        match parse_record(&item) {
            Ok(record) if record.status == AccountStatus::Active => records.push(record),
            Ok(record) => {
                stats.not_active += 1;
                tracing::debug!(
                    page,
                    index,
                    account_id = %record.account_id,
                    status = record.status.as_str(),
                    "account not ACTIVE despite the filter; skipped"
                );
            }
            Err(defect) => {
                stats.malformed += 1;
                let account_id = item
                    .get("accountId")
                    .and_then(Value::as_str)
                    .map(loggable_id);
                tracing::warn!(
                    page,
                    index,
                    account_id = %account_id.as_deref().unwrap_or("<none>"),
                    rule = %defect,
                    "malformed account record skipped"
                );
            }
        }
    }
    records
}

/// The contract rule a record broke (the first one found, fields in contract order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    NotAnObject,
    Missing(&'static str),
    NotAString(&'static str),
    IdPattern,
    NameTooLong,
    UnknownStatus,
    UpdatedAtFormat,
    VersionNotInteger,
    VersionBelowOne,
}

impl fmt::Display for Defect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Defect::NotAnObject => f.write_str("record is not a JSON object"),
            Defect::Missing(field) => write!(f, "{field} is missing or null"),
            Defect::NotAString(field) => write!(f, "{field} is not a string"),
            Defect::IdPattern => {
                f.write_str("accountId does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
            }
            Defect::NameTooLong => write!(
                f,
                "accountName is longer than {MAX_ACCOUNT_NAME_CHARS} characters"
            ),
            Defect::UnknownStatus => f.write_str("status is not ACTIVE, CLOSED or SUSPENDED"),
            Defect::UpdatedAtFormat => f.write_str("updatedAt is not an RFC 3339 date-time"),
            Defect::VersionNotInteger => f.write_str("version is not an integer"),
            Defect::VersionBelowOne => f.write_str("version is less than 1"),
        }
    }
}

fn parse_record(item: &Value) -> Result<AccountRecord, Defect> {
    let obj = item.as_object().ok_or(Defect::NotAnObject)?;
    let field = |name: &'static str| match obj.get(name) {
        None | Some(Value::Null) => Err(Defect::Missing(name)),
        Some(v) => Ok(v),
    };
    let string =
        |name: &'static str| field(name).and_then(|v| v.as_str().ok_or(Defect::NotAString(name)));

    let account_id = string("accountId")?;
    if !is_valid_account_id(account_id) {
        return Err(Defect::IdPattern);
    }
    let account_name = string("accountName")?;
    if account_name.chars().count() > MAX_ACCOUNT_NAME_CHARS {
        return Err(Defect::NameTooLong);
    }
    let status = AccountStatus::parse(string("status")?).ok_or(Defect::UnknownStatus)?;
    let updated_at = DateTime::parse_from_rfc3339(string("updatedAt")?)
        .map_err(|_| Defect::UpdatedAtFormat)?
        .with_timezone(&Utc);
    let version = json_integer(field("version")?).ok_or(Defect::VersionNotInteger)?;
    if version < 1 {
        return Err(Defect::VersionBelowOne);
    }
    Ok(AccountRecord {
        account_id: account_id.to_owned(),
        account_name: account_name.to_owned(),
        status,
        updated_at,
        version,
    })
}

/// A JSON Schema `integer` that fits an i64. As JSON Schema says, a number with a zero
/// fractional part (`3.0`) is an integer; it is accepted when exactly representable.
fn json_integer(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

/// `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, without a regex engine.
fn is_valid_account_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    match bytes.split_first() {
        Some((first, rest)) => {
            bytes.len() <= MAX_ACCOUNT_ID_CHARS
                && first.is_ascii_alphanumeric()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => false,
    }
}

/// An account id fit for a log line: at most 64 characters (`…` marks a cut) with control
/// characters escaped, so a hostile id cannot forge log lines.
fn loggable_id(id: &str) -> String {
    bounded_text(id, MAX_ACCOUNT_ID_CHARS)
}

/// `text` cut to `max_chars` characters (`…` marks a cut), control characters escaped.
fn bounded_text(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The `error` and `message` of an error body (contract `Error`), bounded and escaped.
fn describe_error_body(body: &[u8]) -> String {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let text = |key: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(key))
            .and_then(Value::as_str)
            .map(|s| bounded_text(s, MAX_ERROR_TEXT_CHARS))
    };
    match (text("error"), text("message")) {
        (Some(error), Some(message)) => format!("{error}: {message}"),
        (Some(error), None) => error,
        (None, Some(message)) => message,
        (None, None) => format!("no error object in the answer ({} bytes)", body.len()),
    }
}

enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_bounded(resp: &mut reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` as delta-seconds or an HTTP-date (relative to `now`); `None` when absent or
/// unreadable.
fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits: parse fails on overflow alone, which means "very long".
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Wait before retry number `failures` (1-based): `min(cap, base·2^(failures-1)) × jitter`
/// with `jitter` in [0.5, 1], but at least `retry_after` (itself capped at
/// [`MAX_RETRY_AFTER`]).
fn backoff_delay(
    failures: u32,
    base: Duration,
    cap: Duration,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let delay = base
        .saturating_mul(factor)
        .min(cap)
        .mul_f64(jitter.clamp(0.5, 1.0));
    match retry_after {
        Some(wait) => delay.max(wait.min(MAX_RETRY_AFTER)),
        None => delay,
    }
}

/// An error and its sources, `: `-separated (reqwest hides the cause, e.g. "connection
/// refused", in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
