//! esg-simulator: stand-ins for the firm's token endpoint, the Account Management API and the
//! vendor's ESG Portfolio Analysis API, as `shared/contracts/` describes them, faults included.
//!
//! The demo and every test run against it. It serves, on one address:
//!
//! - `POST /oauth2/token`: client-credentials tokens (module `auth`);
//! - `GET /v1/accounts`: the paged account listing (modules `account_api`, `listing`);
//! - `GET /v1/accounts/{accountId}/esg-analysis`, `POST /v1/esg-analysis:batch`,
//!   `GET /v1/health`: the ESG API (modules `esg_api`, `scores`);
//! - `/_sim/...`: test controls mirroring [`SimHandle`] (module `admin`), the truth of a day
//!   included (module `truth`).
//!
//! All data is a pure function of [`SimConfig::seed`] (module `hash`); nothing is stored per account
//! unless it was changed or its calls are counted, so a million accounts cost no memory.
//! Faults are decided per account (by id) or per call (by id and that account's call number),
//! never by timing, so a run's outcome does not depend on concurrency.
//!
//! The simulator promises what the contracts promise and a little more (deterministic data);
//! nothing in the project may rely on the "more".

mod account_api;
mod accounts;
mod admin;
pub use admin::Churn;
mod auth;
mod config;
mod esg_api;
mod hash;
mod http;
mod listing;
mod names;
mod scores;
mod state;
pub mod tls;
mod truth;
pub use truth::{AccountTruth, Rating, Truth};

#[cfg(test)]
mod http_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tokio_util::sync::CancellationToken;

pub use accounts::Status;
pub use config::{Credential, SimConfig, ACCOUNTS_SCOPE, ESG_SCOPE};

use state::State;

/// Why the simulator could not start or a setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid; `key` names the offending setting.
    #[error("simulator setting `{key}` is invalid: {reason}")]
    InvalidConfig {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The listen address could not be bound.
    #[error("simulator cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
}

/// Counters of what the simulator has served since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SimStats {
    /// Requests to `/oauth2/token`, granted or not.
    pub token_requests: u64,
    /// Listing pages answered 200.
    pub account_pages: u64,
    /// Listing requests answered with an error (400, 401, 410, 429, 500, 503).
    pub account_errors: u64,
    /// ESG API requests (single and batch, a batch being one request, whatever the answer;
    /// not the health check).
    pub esg_requests: u64,
    /// ESG API answers by HTTP status.
    pub esg_by_status: BTreeMap<u16, u64>,
    /// ESG API requests refused by the tenant quota (429).
    pub rate_limited: u64,
    /// ESG API requests answered 429 as a first attempt (`rate_limited_first_attempt_rate`),
    /// whatever the quota; not in `rate_limited`.
    #[serde(default)]
    pub fault_rate_limited: u64,
    /// ESG API requests answered 429 by a storm ([`SimHandle::storm`]); not in `rate_limited`.
    #[serde(default)]
    pub storm_rate_limited: u64,
    /// ESG API requests answered 503 by an outage ([`SimHandle::outage`]).
    #[serde(default)]
    pub outage_unavailable: u64,
    /// Batch requests, whatever their answer.
    pub batch_requests: u64,
    /// Accounts asked for in all batch requests (the length of `accountIds`, whatever the
    /// answer; 0 for a body that is not a batch request).
    #[serde(default)]
    pub batch_accounts: u64,
    /// ESG API answers 304 Not Modified.
    #[serde(default)]
    pub not_modified: u64,
    /// Most ESG API requests in flight at once.
    pub max_concurrent_esg_requests: u64,
    /// Unix milliseconds of the first ESG request (0 before the first).
    #[serde(default)]
    pub first_esg_request_ms: u64,
    /// Unix milliseconds of the latest ESG request (0 before the first).
    #[serde(default)]
    pub last_esg_request_ms: u64,
}

/// What the ESG API answered one account (single calls and batch items) since the call
/// counts were last reset: the faults it actually met. Counted only while calls are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Answers {
    /// Analyses handed out (200, or 304 for an unchanged one).
    pub analyses: u32,
    /// Transient failures: 500, 502, 503, 504 (an outage's 503 included; a batch that failed
    /// as a whole counts for each of its accounts).
    pub transient: u32,
    /// Calls that stalled (`timeout_rate`; a stalled batch counts for each of its accounts).
    /// The analysis a stalled call hands out at last is not counted in `analyses`: a client
    /// whose timeout is shorter than the stall never reads it.
    pub stalls: u32,
    /// Permanent failures: 404 or 422.
    pub permanent: u32,
    /// Transient failures and stalls in a row, up to the latest answer.
    pub failure_streak: u32,
    /// Status of the latest answer (0 for a stall).
    pub last_status: u16,
}

impl Answers {
    pub(crate) fn add(&mut self, answer: state::Answer) {
        use state::Answer;
        match answer {
            Answer::Analysis => {
                self.analyses = self.analyses.saturating_add(1);
                self.failure_streak = 0;
                self.last_status = 200;
            }
            Answer::Permanent(status) => {
                self.permanent = self.permanent.saturating_add(1);
                self.failure_streak = 0;
                self.last_status = status;
            }
            Answer::Transient(status) => {
                self.transient = self.transient.saturating_add(1);
                self.failure_streak = self.failure_streak.saturating_add(1);
                self.last_status = status;
            }
            Answer::Stalled => {
                self.stalls = self.stalls.saturating_add(1);
                self.failure_streak = self.failure_streak.saturating_add(1);
                self.last_status = 0;
            }
        }
    }
}

impl SimStats {
    /// ESG requests per second between the first and the latest request: the rate the API
    /// was actually driven at while scoring.
    pub fn esg_requests_per_second(&self) -> f64 {
        let span = self
            .last_esg_request_ms
            .saturating_sub(self.first_esg_request_ms) as f64
            / 1000.0;
        if span <= 0.0 {
            return 0.0;
        }
        // n requests span n - 1 intervals.
        self.esg_requests.saturating_sub(1) as f64 / span
    }
}

/// A running simulator. Cheap to clone; every clone controls the same simulator.
#[derive(Clone)]
pub struct SimHandle {
    state: Arc<State>,
    addr: SocketAddr,
    scheme: &'static str,
    stopped: CancellationToken,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

/// Starts the simulator on `listen` (`127.0.0.1:0` picks a free port) and returns once it
/// accepts connections. It runs on the current tokio runtime until [`SimHandle::shutdown`].
pub async fn start(config: SimConfig, listen: SocketAddr) -> Result<SimHandle, SimError> {
    start_with(config, listen, None).await
}

/// As [`start`], serving HTTPS only; with [`tls::TlsServerConfig::client_ca_pem`] set, only to
/// clients with a certificate of that CA.
pub async fn start_tls(
    config: SimConfig,
    listen: SocketAddr,
    tls: tls::TlsServerConfig,
) -> Result<SimHandle, SimError> {
    start_with(config, listen, Some(tls)).await
}

async fn start_with(
    config: SimConfig,
    listen: SocketAddr,
    tls: Option<tls::TlsServerConfig>,
) -> Result<SimHandle, SimError> {
    config.validate()?;
    let server_tls = tls.as_ref().map(tls::TlsServerConfig::rustls).transpose()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| SimError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: listen,
        source,
    })?;
    let accounts = config.accounts;
    let state = Arc::new(State::new(config));
    let app = router(state.clone());
    let shutdown = state.shutdown.clone();
    let stopped = CancellationToken::new();
    let done = stopped.clone();
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    match server_tls {
        None => {
            tokio::spawn(serve(listener, app, shutdown, done, addr));
        }
        Some(config) => {
            let listener =
                tls::TlsListener::new(listener, config, shutdown.clone()).map_err(|source| {
                    SimError::Bind {
                        addr: listen,
                        source,
                    }
                })?;
            tokio::spawn(serve(listener, app, shutdown, done, addr));
        }
    }
    tracing::info!(%addr, accounts, scheme, "simulator listening");
    Ok(SimHandle {
        state,
        addr,
        scheme,
        stopped,
    })
}

async fn serve<L>(
    listener: L,
    app: Router,
    shutdown: CancellationToken,
    done: CancellationToken,
    addr: SocketAddr,
) where
    L: axum::serve::Listener,
    L::Addr: fmt::Debug,
{
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(%addr, error = %e, "simulator server failed");
    }
    tracing::info!(%addr, "simulator stopped");
    done.cancel();
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/oauth2/token", post(auth::token))
        .route("/v1/accounts", get(account_api::list_accounts))
        .route(
            "/v1/accounts/{account_id}/esg-analysis",
            get(esg_api::analysis),
        )
        .route("/v1/esg-analysis:batch", post(esg_api::batch))
        .route("/v1/health", get(esg_api::health))
        .merge(admin::routes())
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    http::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such resource", None)
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of both APIs, e.g. `http://127.0.0.1:41234`, or `https://` when started with
    /// [`start_tls`] (a wildcard listen address is given as loopback).
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!(
            "{}://{}",
            self.scheme,
            SocketAddr::new(ip, self.addr.port())
        )
    }

    /// The token endpoint: `url() + "/oauth2/token"`.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.url())
    }

    /// Counters since start.
    pub fn stats(&self) -> SimStats {
        self.state.stats()
    }

    /// ESG calls (any outcome, batch items included) for that account since start or the last
    /// [`Self::reset_call_counts`]; 0 when calls are not tracked.
    pub fn calls_for(&self, account_id: &str) -> u32 {
        self.state.calls_for(account_id)
    }

    /// Account ids with at least `n` ESG calls, sorted.
    pub fn accounts_called_at_least(&self, n: u32) -> Vec<String> {
        self.state.accounts_called_at_least(n)
    }

    /// Forgets every call count (per-call faults start again from call 0).
    pub fn reset_call_counts(&self) {
        self.state.reset_call_counts();
    }

    /// The account's holdings changed: version + 1, `updatedAt` = now, new scores.
    /// An unknown id is logged and ignored.
    pub fn touch(&self, account_id: &str) {
        if let Err(e) = admin::touch(&self.state, account_id) {
            tracing::warn!(account_id, error = %e, "touch ignored");
        }
    }

    /// Sets the status (`ACTIVE`, `CLOSED` or `SUSPENDED`); a change grows the version but not
    /// the scores. An unknown id or status is logged and ignored.
    pub fn set_status(&self, account_id: &str, status: &str) {
        if let Err(e) = admin::set_status(&self.state, account_id, status) {
            tracing::warn!(account_id, error = %e, "status change ignored");
        }
    }

    /// Adds `n` ACTIVE accounts after the last id.
    pub fn add_accounts(&self, n: u64) {
        if let Err(e) = admin::add_accounts(&self.state, n) {
            tracing::warn!(count = n, error = %e, "adding accounts ignored");
        }
    }

    /// A day of change at the firm, for demos of many days: each ACTIVE account is touched
    /// with probability `touched` (new scores), else closed with probability `closed`, and
    /// `added` accounts open. Deterministic for a `seed`.
    pub fn churn(&self, seed: u64, touched: f64, closed: f64, added: u64) -> Churn {
        admin::churn(&self.state, seed, touched, closed, added)
    }

    /// The vendor re-rates every holding: every score of every account changes.
    pub fn rerate(&self) {
        admin::rerate(&self.state);
    }

    /// Starts a 429 storm: for `d` from now every ESG API request (single and batch; not the
    /// health check, the token endpoint or the account system) answers 429 with
    /// `Retry-After: 1`, consuming no quota and counting as no call. A zero `d` ends a storm.
    pub fn storm(&self, d: std::time::Duration) {
        admin::storm(&self.state, d);
    }

    /// Starts a vendor outage: for `d` from now every ESG API request (single and batch; not
    /// the health check, the token endpoint or the account system) answers 503 after the token
    /// and storm checks, taking nothing from the quota and no call number. A zero `d` ends it.
    pub fn outage(&self, d: std::time::Duration) {
        admin::outage(&self.state, d);
    }

    /// What the ESG API answered each account since start or the last
    /// [`Self::reset_call_counts`], by id (only accounts with an answer; empty when calls are
    /// not tracked).
    pub fn answers(&self) -> BTreeMap<String, Answers> {
        self.state.answers()
    }

    /// The account is renamed (any text; the contract allows up to 200 characters): the
    /// version grows, the scores do not change. An unknown id is logged and ignored.
    pub fn rename(&self, account_id: &str, name: &str) {
        if let Err(e) = admin::rename(&self.state, account_id, name) {
            tracing::warn!(account_id, error = %e, "rename ignored");
        }
    }

    /// Every account now, and the vendor's rating of each as of `as_of`: the truth a test
    /// judges a day's file by (see [`Truth`]).
    pub fn truth(&self, as_of: chrono::NaiveDate) -> Truth {
        truth::truth(&self.state, as_of)
    }

    /// Every page token issued so far answers 410 from now on.
    pub fn expire_page_tokens(&self) {
        admin::expire_page_tokens(&self.state);
    }

    /// Changes settings while running. `seed`, `accounts` and `inactive_share` define the data
    /// set and are kept; a change that fails validation is logged and not applied.
    pub fn update(&self, f: impl FnOnce(&mut SimConfig)) {
        if let Err(e) = self.state.update(f) {
            tracing::warn!(error = %e, "simulator update refused");
        }
    }

    /// Stops the server gracefully: no new connections, calls in flight finish (stalled and
    /// delayed calls end at once with 503).
    pub fn shutdown(&self) {
        self.state.shutdown.cancel();
    }

    /// Waits until the server has stopped (after [`Self::shutdown`]).
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }
}
