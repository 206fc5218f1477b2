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
//! - **At least once, complete only on `Ok`, and only the last pass counts.** When
//!   [`AccountsClient::list_active`] returns `Ok`, every valid ACTIVE record the account system
//!   listed in the final pass reached `on_page` at least once. A 410 restarts the listing from
//!   the first page as a new pass ([`Page::pass`]); page 1 of a pass always reaches `on_page`,
//!   records or not, and tells the caller to drop what earlier passes delivered: the last pass
//!   is a whole listing on its own, and an account that left between two passes must not
//!   survive from the first. The listing is not a snapshot, so an account updated while a pass
//!   runs may be delivered twice with different versions: callers keep, per account id, the
//!   highest version. On `Err` the records delivered so far are a partial listing: they must
//!   not be used to conclude that an account has left.
//! - **Malformed records are skipped, not fatal.** Each item of a page is decoded on its own,
//!   and each contract field of it on its own: a record with a field missing, of the wrong type,
//!   breaking its rule, holding bytes that are not UTF-8 or an escape that is no character (a
//!   lone surrogate such as `"\ud800"`) is counted in [`ListingStats::malformed`] and logged
//!   once at WARN (page, index within the page, account id when it decoded, rule; never the
//!   name); the rest of the page is still delivered. Fields outside the contract are not read.
//!   A page body that is not the contract's page object is fatal, since nothing on it can be
//!   trusted; so is a body whose bytes are not UTF-8 outside its items.
//! - **Bounded.** One page in memory at a time (a body larger than [`MAX_PAGE_BYTES`] is fatal),
//!   each request bounded by `timeout` (the token request too), at most `max_attempts` transient
//!   failures per page, at most [`MAX_AUTH_REFRESHES`] consecutive 401s, at most `max_restarts`
//!   restarts, each wait bounded by `backoff_cap` or by a `Retry-After` capped at
//!   [`MAX_RETRY_AFTER`]. A page token handed out twice in one pass ends the listing as
//!   [`ListingError::Cycle`]; the caller's deadline ends it as [`ListingError::DeadlinePassed`].
//!   Limit: without a deadline the number of pages is not bounded; a server that keeps handing
//!   out new page tokens keeps the listing going.

use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use esg_auth::http::{error_chain, is_valid_account_id, retry_after, MAX_ACCOUNT_ID_LEN};
use esg_auth::TokenSource;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::time::Instant;
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
/// How much of a bad account id is logged, in characters: the longest id the pattern allows.
const MAX_ACCOUNT_ID_CHARS: usize = MAX_ACCOUNT_ID_LEN;
/// Bounds checked by [`AccountsClientConfig::validate`].
const MAX_PAGE_SIZE: u32 = 5000;
const MAX_ATTEMPTS_LIMIT: u32 = 20;
const MAX_RESTARTS_LIMIT: u32 = 20;

/// Settings of the account system client. Validate once at start-up with
/// [`AccountsClientConfig::validate`].
///
/// This is the `[accounts]` section of the job's configuration file, every key of it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountsClientConfig {
    /// Base URL of the account system, e.g. `https://ams.firm.example`; `/v1/accounts` is
    /// appended.
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
    /// Roster guard: a daily run whose listing holds fewer than this share of the accounts of
    /// the last completed run (or none at all) fails before anything is published. 0..=1.
    /// Default [`default_min_active_ratio`].
    #[serde(default = "default_min_active_ratio")]
    pub min_active_ratio: f64,
    /// Accounts asked for per page (`pageSize`), 1..=5000. Default [`default_page_size`].
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Longest time one page request may take, response body included; it bounds the token
    /// request of the page too. Default [`default_timeout`].
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
    /// PEM bundle of the CA certificates that sign the account system's certificate (the firm's
    /// private CA); when set only these are trusted, not the system's. None: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM certificate chain presented to the account system (mutual TLS), with `tls_client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_client_cert_file` (PKCS#8, RSA or EC); readable by the job only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key_file: Option<std::path::PathBuf>,
}

/// Default `scope`: `accounts.read`.
pub fn default_scope() -> String {
    "accounts.read".into()
}
/// Default `min_active_ratio`: 0.8 (a listing of fewer than 80% of the last run's accounts is
/// taken for a fault of the account system, not a real change).
pub fn default_min_active_ratio() -> f64 {
    0.8
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
            client_id: String::new(),
            client_secret: esg_auth::Secret::default(),
            scope: default_scope(),
            min_active_ratio: default_min_active_ratio(),
            page_size: default_page_size(),
            timeout: default_timeout(),
            max_attempts: default_max_attempts(),
            backoff_base: default_backoff_base(),
            backoff_cap: default_backoff_cap(),
            max_restarts: default_max_restarts(),
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

/// What one listing did. `pages`, `retries` and `restarts` count the work of every pass; the
/// record counts and `total_count` are those of the last pass, the one the caller keeps, so a
/// 410 restart counts no record twice.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ListingStats {
    /// Pages received (200 answers), over every pass.
    pub pages: u64,
    /// Valid ACTIVE records of the last pass handed to `on_page`.
    pub records: u64,
    /// Records of the last pass skipped because they broke the contract.
    pub malformed: u64,
    /// Valid records of the last pass skipped because their status was not ACTIVE.
    pub not_active: u64,
    /// Restarts from the first page after a 410.
    pub restarts: u32,
    /// `totalCount` of the last pass, when the account system sent it.
    pub total_count: Option<u64>,
    /// Retries after transient failures (401 token refreshes are not counted), over every pass.
    pub retries: u64,
}

impl ListingStats {
    /// Forgets the record counts of an abandoned pass.
    fn begin_pass(&mut self) {
        self.records = 0;
        self.malformed = 0;
        self.not_active = 0;
        self.total_count = None;
    }
}

/// One page of a listing, as `on_page` receives it. Every page reaches `on_page`, in order,
/// including pages without a valid record.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The listing pass, from 1; each restart after a 410 begins the next one.
    pub pass: u32,
    /// The page's number within its pass, from 1. Page 1 begins a pass: whatever earlier passes
    /// delivered is void and must be dropped (see [`Page::begins_pass`]).
    pub number: u64,
    /// The page's valid ACTIVE records; may be empty.
    pub records: Vec<AccountRecord>,
}

impl Page {
    /// True for the first page of a pass: drop every record earlier passes delivered.
    pub fn begins_pass(&self) -> bool {
        self.number == 1
    }
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
    /// The answer to `page` handed out a page token already handed out in this pass, the one
    /// that led to page `repeats`: followed, the listing would go round in a circle forever.
    /// (The tokens themselves are not shown: they are opaque and may carry data.)
    #[error("account listing {url} goes round in a circle: page {page} of pass {pass} hands out the page token already used for page {repeats}")]
    Cycle {
        url: String,
        pass: u32,
        page: u64,
        repeats: u64,
    },
    /// The caller's deadline passed while the listing was on `page` of `pass`. The records
    /// delivered so far are a partial listing.
    #[error(
        "account listing {url} not finished by its deadline: stopped on page {page} of pass {pass}"
    )]
    DeadlinePassed { url: String, pass: u32, page: u64 },
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

/// A 200 answer: the contract's page object, its items located but not yet decoded.
///
/// serde_json refuses a whole document for one byte that is not UTF-8, so the body is kept as
/// text with each such byte sequence replaced by U+FFFD and its place noted in `not_utf8`: a
/// record holding one is told apart from a record whose name holds a real U+FFFD, and only that
/// record is skipped.
struct RawPage {
    /// The body as text.
    text: String,
    /// Where each item's JSON text lies in `text`, in order.
    items: Vec<Range<usize>>,
    /// Offsets in `text` of the replacement characters standing for bytes that were not UTF-8,
    /// ascending.
    not_utf8: Vec<usize>,
    next_page_token: Option<String>,
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

/// Where a listing stands: read when the deadline stops it.
#[derive(Debug, Clone, Copy)]
struct Position {
    pass: u32,
    page: u64,
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
    /// every page (see [`Page`]).
    ///
    /// On 410 (page token expired) the listing restarts from the first page as a new pass, at
    /// most `max_restarts` times; `on_page` then sees page 1 again and must drop what the earlier
    /// pass delivered. Within a pass the caller de-duplicates by highest version (see
    /// [`dedupe_highest_version`]). A page token handed out twice in one pass ends the listing
    /// as [`ListingError::Cycle`]. When `deadline` passes first, the listing stops wherever it is
    /// (a request, a backoff, a `Retry-After` wait) and returns
    /// [`ListingError::DeadlinePassed`]. An error from `on_page` stops the listing and comes
    /// back as [`ListingError::Sink`]. See the module documentation for the guarantee and its
    /// limits.
    pub async fn list_active<E>(
        &self,
        deadline: Option<Instant>,
        on_page: impl FnMut(Page) -> Result<(), E>,
    ) -> Result<ListingStats, ListingError<E>> {
        let span = tracing::info_span!("account_listing", url = %self.listing_url);
        self.list_until(deadline, on_page).instrument(span).await
    }

    async fn list_until<E>(
        &self,
        deadline: Option<Instant>,
        on_page: impl FnMut(Page) -> Result<(), E>,
    ) -> Result<ListingStats, ListingError<E>> {
        let mut stats = ListingStats::default();
        let mut at = Position { pass: 1, page: 0 };
        let listing = self.list_passes(&mut stats, &mut at, on_page);
        let finished = match deadline {
            None => Some(listing.await),
            Some(deadline) => tokio::time::timeout_at(deadline, listing).await.ok(),
        };
        match finished {
            Some(Ok(())) => {
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
                Ok(stats)
            }
            Some(Err(e)) => Err(e),
            None => {
                tracing::warn!(
                    pass = at.pass,
                    page = at.page,
                    pages = stats.pages,
                    "account listing stopped: its deadline passed"
                );
                Err(ListingError::DeadlinePassed {
                    url: self.listing_url.clone(),
                    pass: at.pass,
                    page: at.page,
                })
            }
        }
    }

    /// Every pass of the listing until one completes; `at` always says where it stands.
    async fn list_passes<E>(
        &self,
        stats: &mut ListingStats,
        at: &mut Position,
        mut on_page: impl FnMut(Page) -> Result<(), E>,
    ) -> Result<(), ListingError<E>> {
        'listing: loop {
            let mut page_token: Option<String> = None;
            // Every page token handed out in this pass, with the page it led to.
            let mut handed_out: HashMap<String, u64> = HashMap::new();
            at.page = 0;
            loop {
                at.page += 1;
                let page = at.page;
                let raw = match self.fetch_page(page, page_token.as_deref(), stats).await? {
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
                        at.pass += 1;
                        stats.begin_pass();
                        tracing::info!(
                            page,
                            restart = stats.restarts,
                            pass = at.pass,
                            "page token expired (410); restarting the listing from the first page"
                        );
                        continue 'listing;
                    }
                };
                stats.pages += 1;
                if raw.total_count.is_some() {
                    stats.total_count = raw.total_count;
                }
                let records = check_page(page, &raw, stats);
                let next_page_token = raw.next_page_token;
                tracing::debug!(page, records = records.len(), "account page received");
                stats.records += records.len() as u64;
                on_page(Page {
                    pass: at.pass,
                    number: page,
                    records,
                })
                .map_err(ListingError::Sink)?;
                let Some(next) = next_page_token else {
                    return Ok(());
                };
                if let Some(&repeats) = handed_out.get(&next) {
                    return Err(ListingError::Cycle {
                        url: self.listing_url.clone(),
                        pass: at.pass,
                        page,
                        repeats,
                    });
                }
                handed_out.insert(next.clone(), page + 1);
                page_token = Some(next);
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
            // The token request is bounded like the page request: a token endpoint that never
            // answers is a transient failure of the page, not a listing that hangs.
            let token = tokio::time::timeout(self.config.timeout, self.tokens.token()).await;
            let outcome = match token {
                Ok(Ok(token)) => {
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
                Ok(Err(e)) if e.is_transient() => Attempt::Transient {
                    status: None,
                    detail: e.to_string(),
                    retry_after: None,
                },
                Ok(Err(e)) => {
                    return Err(self.fatal(page, None, format!("no bearer token: {e}")));
                }
                Err(_) => Attempt::Transient {
                    status: None,
                    detail: format!(
                        "no bearer token within {:?} (token endpoint timeout)",
                        self.config.timeout
                    ),
                    retry_after: None,
                },
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
                Ok(body) => match decode_page(body) {
                    Ok(raw) => Attempt::Page(raw),
                    Err(reason) => Attempt::Fatal {
                        status: Some(status),
                        reason,
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
                retry_after: retry_after(resp.headers(), SystemTime::now(), MAX_RETRY_AFTER),
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

/// Reads a 200 body as the contract's page object. Items are only located here; each is decoded
/// on its own by [`check_page`], so one bad record cannot spoil the page.
fn decode_page(body: Vec<u8>) -> Result<RawPage, String> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        items: Vec<&'a RawValue>,
        #[serde(rename = "nextPageToken", default)]
        next_page_token: Option<String>,
        #[serde(rename = "totalCount", default)]
        total_count: Option<u64>,
    }
    let (text, not_utf8) = text_marking_invalid_utf8(body);
    let Shape {
        items: raw_items,
        next_page_token,
        total_count,
    } = serde_json::from_str(&text).map_err(|e| {
        format!(
            "answer is not the contract's page object: {}",
            describe_json_error(&e)
        )
    })?;
    let items = raw_items
        .iter()
        .map(|raw| span_in(&text, raw.get()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "an item of the page could not be located in its body".to_owned())?;
    drop(raw_items);
    let outside_items = not_utf8.iter().any(|&at| {
        let i = items.partition_point(|r| r.end <= at);
        items.get(i).is_none_or(|r| !r.contains(&at))
    });
    if outside_items {
        // In the page token, say: nothing on the page can be trusted.
        return Err("answer holds bytes that are not UTF-8 outside its items".into());
    }
    Ok(RawPage {
        text,
        items,
        not_utf8,
        next_page_token,
        total_count,
    })
}

/// `body` as text, each byte sequence that is not UTF-8 replaced by U+FFFD, and the offsets of
/// those replacements in the text (none, and no copy, for a body that is all UTF-8).
fn text_marking_invalid_utf8(body: Vec<u8>) -> (String, Vec<usize>) {
    match String::from_utf8(body) {
        Ok(text) => (text, Vec::new()),
        Err(e) => {
            let bytes = e.into_bytes();
            let mut text = String::with_capacity(bytes.len() + 16);
            let mut marks = Vec::new();
            for chunk in bytes.utf8_chunks() {
                text.push_str(chunk.valid());
                if !chunk.invalid().is_empty() {
                    marks.push(text.len());
                    text.push(char::REPLACEMENT_CHARACTER);
                }
            }
            (text, marks)
        }
    }
}

/// Where `inner`, a slice of `outer`, lies in it.
fn span_in(outer: &str, inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

/// A serde_json error without the text it choked on (a string value could be an account name).
fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    if e.is_syntax() || e.is_eof() || message.starts_with("missing field") {
        // These messages name a position or a field, never a value.
        return message;
    }
    format!(
        "a field of the wrong type at line {} column {}",
        e.line(),
        e.column()
    )
}

/// One item of a page: its JSON text and the replacement characters in it that stand for bytes
/// that were not UTF-8.
struct Item<'a> {
    text: &'a str,
    /// Offset of `text` in the page body.
    base: usize,
    /// Offsets in the page body (not in `text`) of replacements within `text`.
    not_utf8: &'a [usize],
}

impl<'a> Item<'a> {
    /// The item of `page` at `span`.
    fn of(page: &'a RawPage, span: &Range<usize>) -> Item<'a> {
        let lo = page.not_utf8.partition_point(|&at| at < span.start);
        let hi = page.not_utf8.partition_point(|&at| at < span.end);
        Item {
            // The span came from a slice of the text, so it lies on character boundaries.
            text: page.text.get(span.clone()).unwrap_or_default(),
            base: span.start,
            not_utf8: &page.not_utf8[lo..hi],
        }
    }

    /// True when `part`, a slice of this item's text, stands for bytes that were not UTF-8.
    fn spoiled(&self, part: &str) -> bool {
        if self.not_utf8.is_empty() {
            return false;
        }
        match span_in(self.text, part) {
            Some(r) => {
                let r = (self.base + r.start)..(self.base + r.end);
                self.not_utf8.iter().any(|at| r.contains(at))
            }
            None => true,
        }
    }
}

/// Checks every item of a page on its own; returns the valid ACTIVE records and counts the rest.
fn check_page(page: u64, raw: &RawPage, stats: &mut ListingStats) -> Vec<AccountRecord> {
    let mut records = Vec::with_capacity(raw.items.len());
    for (index, span) in raw.items.iter().enumerate() {
        let item = Item::of(raw, span);
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
                let account_id = record_id(&item);
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
    /// The record is a JSON object, but one of its field names does not decode.
    UndecodableObject,
    Missing(&'static str),
    NotAString(&'static str),
    /// The field's string held bytes that are not UTF-8.
    NotUtf8(&'static str),
    /// The field's string holds an escape that is no character (a lone surrogate).
    Undecodable(&'static str),
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
            Defect::UndecodableObject => f.write_str(
                "record is not a decodable JSON object (a field name with an escape that is no character)",
            ),
            Defect::Missing(field) => write!(f, "{field} is missing or null"),
            Defect::NotAString(field) => write!(f, "{field} is not a string"),
            Defect::NotUtf8(field) => write!(f, "{field} holds bytes that are not UTF-8"),
            Defect::Undecodable(field) => write!(
                f,
                "{field} holds an escape that is no character (a lone surrogate)"
            ),
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

/// The fields of one record, each still undecoded: a field is decoded only when read, on its
/// own, so a bad field is named and fields outside the contract are never looked at.
struct Fields<'a> {
    item: &'a Item<'a>,
    map: HashMap<String, &'a RawValue>,
}

impl<'a> Fields<'a> {
    fn of(item: &'a Item<'a>) -> Result<Self, Defect> {
        if !item.text.trim_start().starts_with('{') {
            return Err(Defect::NotAnObject);
        }
        let map = serde_json::from_str(item.text).map_err(|_| Defect::UndecodableObject)?;
        Ok(Fields { item, map })
    }

    fn raw(&self, name: &'static str) -> Result<&'a str, Defect> {
        match self.map.get(name).map(|v| v.get()) {
            None | Some("null") => Err(Defect::Missing(name)),
            Some(raw) => Ok(raw),
        }
    }

    fn string(&self, name: &'static str) -> Result<String, Defect> {
        let raw = self.raw(name)?;
        if !raw.starts_with('"') {
            return Err(Defect::NotAString(name));
        }
        if self.item.spoiled(raw) {
            return Err(Defect::NotUtf8(name));
        }
        serde_json::from_str(raw).map_err(|_| Defect::Undecodable(name))
    }

    /// The field as a JSON value; `None` when it does not decode (only a string can fail to,
    /// once the page parsed).
    fn value(&self, name: &'static str) -> Result<Option<Value>, Defect> {
        Ok(serde_json::from_str(self.raw(name)?).ok())
    }
}

fn parse_record(item: &Item<'_>) -> Result<AccountRecord, Defect> {
    let fields = Fields::of(item)?;
    let account_id = fields.string("accountId")?;
    if !is_valid_account_id(&account_id) {
        return Err(Defect::IdPattern);
    }
    let account_name = fields.string("accountName")?;
    if account_name.chars().count() > MAX_ACCOUNT_NAME_CHARS {
        return Err(Defect::NameTooLong);
    }
    let status = AccountStatus::parse(&fields.string("status")?).ok_or(Defect::UnknownStatus)?;
    let updated_at = DateTime::parse_from_rfc3339(&fields.string("updatedAt")?)
        .map_err(|_| Defect::UpdatedAtFormat)?
        .with_timezone(&Utc);
    let version = fields
        .value("version")?
        .as_ref()
        .and_then(json_integer)
        .ok_or(Defect::VersionNotInteger)?;
    if version < 1 {
        return Err(Defect::VersionBelowOne);
    }
    Ok(AccountRecord {
        account_id,
        account_name,
        status,
        updated_at,
        version,
    })
}

/// The account id of a record that broke a rule, fit for a log line, when it decoded.
fn record_id(item: &Item<'_>) -> Option<String> {
    let id = Fields::of(item).ok()?.string("accountId").ok()?;
    Some(loggable_id(&id))
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

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
