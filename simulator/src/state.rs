//! The running simulator's shared state: configuration, accounts, counters and the rate limiter.
//!
//! Everything here is reached through short, synchronous critical sections; no lock is held
//! across an `.await`. Memory is bounded: the account overlay holds only changed accounts, the
//! call counters exist only while calls are tracked and hold at most [`MAX_TRACKED_IDS`] ids,
//! the first-attempt 429s of untracked accounts are remembered as one 8-byte hash per account
//! that drew one (nothing while `rate_limited_first_attempt_rate` is 0), tokens and page tokens
//! are self-contained and stored nowhere.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultDirectRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::accounts::Registry;
use crate::config::SimConfig;
use crate::hash::fnv1a;
use crate::scores::first_attempt_limited;
use crate::{Answers, SimStats};

/// Most distinct account ids whose calls are counted; ids beyond it are not counted.
pub(crate) const MAX_TRACKED_IDS: usize = 10_000_000;

type Limiter = DefaultDirectRateLimiter<StateInformationMiddleware>;

/// The tenant quota, rebuilt whenever its settings change.
struct RateLimit {
    per_second: u32,
    burst: u32,
    limiter: Arc<Limiter>,
}

/// Outcome of asking the rate limiter for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateDecision {
    /// No quota configured.
    Unlimited,
    /// Within the quota.
    Allowed {
        limit: u32,
        remaining: u32,
        reset_epoch: u64,
    },
    /// Past the quota: try again after `retry_after` seconds (at least 1).
    Limited {
        limit: u32,
        retry_after: u64,
        reset_epoch: u64,
    },
}

/// Per-account call counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CallCount {
    /// Every call, whatever its outcome.
    pub calls: u32,
    /// Calls that got past authentication and the rate limit: the call number the per-call
    /// faults are drawn from, so that they do not depend on timing or concurrency.
    pub answered: u32,
    /// The account drew its first-attempt 429 (`rate_limited_first_attempt_rate`) already.
    pub first_attempt_refused: bool,
    /// What its answered calls came to.
    pub answers: Answers,
}

/// What one answered ESG call (or batch item) came to, for [`Answers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// 200 or 304: an analysis handed out.
    Analysis,
    /// 404 or 422.
    Permanent(u16),
    /// 500, 502, 503 or 504.
    Transient(u16),
    /// The call stalled (`timeout_rate`); a client with a shorter timeout gave up on it.
    Stalled,
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    account_pages: AtomicU64,
    account_errors: AtomicU64,
    esg_requests: AtomicU64,
    rate_limited: AtomicU64,
    fault_rate_limited: AtomicU64,
    storm_rate_limited: AtomicU64,
    outage_unavailable: AtomicU64,
    batch_requests: AtomicU64,
    batch_accounts: AtomicU64,
    not_modified: AtomicU64,
    esg_in_flight: AtomicU64,
    max_concurrent_esg_requests: AtomicU64,
    /// Unix milliseconds of the first and the latest ESG request (0 before the first).
    first_esg_request_ms: AtomicU64,
    last_esg_request_ms: AtomicU64,
    esg_by_status: Mutex<BTreeMap<u16, u64>>,
}

/// State shared by every request handler and the handle.
pub(crate) struct State {
    config: RwLock<Arc<SimConfig>>,
    registry: RwLock<Registry>,
    calls: Mutex<HashMap<Box<str>, CallCount>>,
    /// FNV-1a hashes of the untracked accounts drawn by `rate_limited_first_attempt_rate` whose
    /// first attempt is over (refused, or answered in a batch).
    first_attempts_refused: Mutex<HashSet<u64>>,
    /// Unix milliseconds until which every ESG request answers 429 (0: no storm).
    storm_until_ms: AtomicU64,
    /// Unix milliseconds until which every ESG request answers 503 (0: no outage).
    outage_until_ms: AtomicU64,
    counters: Counters,
    rate_limit: Mutex<Option<RateLimit>>,
    rerate_epoch: AtomicU64,
    page_generation: AtomicU64,
    request_seq: AtomicU64,
    listing_seq: AtomicU64,
    /// Key of the self-contained tokens' check sums, new for each simulator.
    pub key: u64,
    /// Cancelled when the simulator shuts down; stalled calls give up at once.
    pub shutdown: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere leaves plain counters behind, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let registry = Registry::new(config.seed, config.accounts, config.inactive_share);
        let state = State {
            config: RwLock::new(Arc::new(config)),
            registry: RwLock::new(registry),
            calls: Mutex::new(HashMap::new()),
            first_attempts_refused: Mutex::new(HashSet::new()),
            storm_until_ms: AtomicU64::new(0),
            outage_until_ms: AtomicU64::new(0),
            counters: Counters::default(),
            rate_limit: Mutex::new(None),
            rerate_epoch: AtomicU64::new(0),
            page_generation: AtomicU64::new(0),
            request_seq: AtomicU64::new(0),
            listing_seq: AtomicU64::new(0),
            key: rand::random(),
            shutdown: CancellationToken::new(),
        };
        state.rebuild_rate_limit();
        state
    }

    /// The configuration now (a snapshot: later updates do not change it).
    pub fn config(&self) -> Arc<SimConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Applies `f` to a copy of the configuration and keeps it if it is valid. `seed`,
    /// `accounts` and `inactive_share` define the data set and cannot change while running.
    pub fn update(&self, f: impl FnOnce(&mut SimConfig)) -> Result<(), crate::SimError> {
        {
            let mut guard = self.config.write().unwrap_or_else(PoisonError::into_inner);
            let mut next = SimConfig::clone(&guard);
            f(&mut next);
            next.seed = guard.seed;
            next.accounts = guard.accounts;
            next.inactive_share = guard.inactive_share;
            next.validate()?;
            *guard = Arc::new(next);
        }
        self.rebuild_rate_limit();
        Ok(())
    }

    fn rebuild_rate_limit(&self) {
        let cfg = self.config();
        let mut slot = lock(&self.rate_limit);
        match (cfg.rate_limit_per_second, slot.as_ref()) {
            (None, _) => *slot = None,
            (Some(rate), Some(rl)) if rl.per_second == rate && rl.burst == cfg.burst => {}
            (Some(rate), _) => {
                let (Some(per_second), Some(burst)) =
                    (NonZeroU32::new(rate), NonZeroU32::new(cfg.burst))
                else {
                    // A quota of 0 means unlimited (validate() refuses a burst of 0).
                    *slot = None;
                    return;
                };
                let quota = Quota::per_second(per_second).allow_burst(burst);
                *slot = Some(RateLimit {
                    per_second: rate,
                    burst: cfg.burst,
                    limiter: Arc::new(governor::RateLimiter::direct(quota).with_middleware()),
                });
            }
        }
    }

    /// Takes one request from the tenant quota.
    pub fn check_rate(&self) -> RateDecision {
        let Some((limit, burst, limiter)) = lock(&self.rate_limit)
            .as_ref()
            .map(|rl| (rl.per_second, rl.burst, rl.limiter.clone()))
        else {
            return RateDecision::Unlimited;
        };
        let now = unix_seconds_f64();
        match limiter.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let refill = f64::from(burst.saturating_sub(remaining)) / f64::from(limit);
                RateDecision::Allowed {
                    limit,
                    remaining,
                    reset_epoch: (now + refill).ceil() as u64,
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                RateDecision::Limited {
                    limit,
                    retry_after,
                    reset_epoch: (now + wait.as_secs_f64()).ceil() as u64,
                }
            }
        }
    }

    pub fn registry(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn registry_mut(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub fn rerate_epoch(&self) -> u64 {
        self.rerate_epoch.load(Ordering::SeqCst)
    }

    pub fn rerate(&self) -> u64 {
        self.rerate_epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn page_generation(&self) -> u64 {
        self.page_generation.load(Ordering::SeqCst)
    }

    pub fn expire_page_tokens(&self) {
        self.page_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A new request id (`sim-` and 16 hex digits).
    pub fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("sim-{:016x}", crate::hash::mix(self.key, &[n]))
    }

    /// Sequence number of a listing request, the input of the listing's transient faults.
    pub fn next_listing_seq(&self) -> u64 {
        self.listing_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether calls are counted per account under this configuration.
    fn counting(cfg: &SimConfig) -> bool {
        cfg.track_calls || cfg.transient_error_rate > 0.0 || cfg.timeout_rate > 0.0
    }

    /// Counts a call for `account_id`. A call that got past authentication and the quota
    /// (`answered`) also takes the next call number (0-based), which is returned: the per-call
    /// faults are drawn from it. For other calls the return value means nothing.
    pub fn count_call(&self, cfg: &SimConfig, account_id: &str, answered: bool) -> u32 {
        if !Self::counting(cfg) {
            return 0;
        }
        let mut calls = lock(&self.calls);
        if !calls.contains_key(account_id) {
            if calls.len() >= MAX_TRACKED_IDS {
                return 0;
            }
            calls.insert(account_id.into(), CallCount::default());
        }
        let Some(entry) = calls.get_mut(account_id) else {
            return 0;
        };
        entry.calls = entry.calls.saturating_add(1);
        if !answered {
            return entry.answered;
        }
        let n = entry.answered;
        entry.answered = entry.answered.saturating_add(1);
        n
    }

    /// Whether this call of `account_id`, past the token and the quota, is a first attempt
    /// answered 429 by `rate_limited_first_attempt_rate`. An account draws it (by seed and id)
    /// at most once: the call that draws it is remembered, and the retry is answered normally.
    ///
    /// With calls counted, a first attempt is a call before any answered one (call number 0),
    /// and `count` makes the refused call count in `calls_for` (never as an answered call, so
    /// the per-call faults of the retry are those of the account's call 0). Without counting,
    /// an account is refused on its first call past the quota while the rate is above 0 (unless
    /// a batch answered it before), remembered by an 8-byte hash of its id.
    pub fn refuse_first_attempt(&self, cfg: &SimConfig, account_id: &str, count: bool) -> bool {
        if !first_attempt_limited(cfg, account_id) {
            return false;
        }
        if Self::counting(cfg) {
            let mut calls = lock(&self.calls);
            if !calls.contains_key(account_id) && calls.len() < MAX_TRACKED_IDS {
                calls.insert(account_id.into(), CallCount::default());
            }
            if let Some(entry) = calls.get_mut(account_id) {
                if entry.answered > 0 || entry.first_attempt_refused {
                    return false;
                }
                entry.first_attempt_refused = true;
                if count {
                    entry.calls = entry.calls.saturating_add(1);
                }
                drop(calls);
                self.counters
                    .fault_rate_limited
                    .fetch_add(1, Ordering::Relaxed);
                return true;
            }
            // Past the bound of counted ids: remembered like an untracked account.
        }
        let fresh = lock(&self.first_attempts_refused).insert(fnv1a(account_id.as_bytes()));
        if fresh {
            self.counters
                .fault_rate_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        fresh
    }

    /// Records that `account_id` was answered in a batch, so that its first attempt is over
    /// (with calls counted, its answered call says so already). Stores something only for an
    /// account that `rate_limited_first_attempt_rate` draws.
    pub fn first_attempt_over(&self, cfg: &SimConfig, account_id: &str) {
        if Self::counting(cfg) || !first_attempt_limited(cfg, account_id) {
            return;
        }
        lock(&self.first_attempts_refused).insert(fnv1a(account_id.as_bytes()));
    }

    /// Starts a 429 storm of `d` from now: every ESG API request answers 429 until it ends.
    /// Zero ends a storm at once.
    pub fn storm(&self, d: Duration) {
        let until = if d.is_zero() {
            0
        } else {
            unix_millis().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        self.storm_until_ms.store(until, Ordering::SeqCst);
    }

    /// Whether a storm is on now; a request it refuses is counted.
    pub fn storm_refuses(&self) -> bool {
        let until = self.storm_until_ms.load(Ordering::SeqCst);
        if until == 0 || unix_millis() >= until {
            return false;
        }
        self.counters
            .storm_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Starts a vendor outage of `d` from now: every ESG API request answers 503 until it
    /// ends. Zero ends an outage at once.
    pub fn outage(&self, d: Duration) {
        let until = if d.is_zero() {
            0
        } else {
            unix_millis().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        self.outage_until_ms.store(until, Ordering::SeqCst);
    }

    /// Whether an outage is on now; a request it refuses is counted.
    pub fn outage_refuses(&self) -> bool {
        let until = self.outage_until_ms.load(Ordering::SeqCst);
        if until == 0 || unix_millis() >= until {
            return false;
        }
        self.counters
            .outage_unavailable
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Records what an answered call of `account_id` came to (while calls are counted).
    pub fn record_answer(&self, cfg: &SimConfig, account_id: &str, answer: Answer) {
        if !Self::counting(cfg) {
            return;
        }
        let mut calls = lock(&self.calls);
        if !calls.contains_key(account_id) {
            if calls.len() >= MAX_TRACKED_IDS {
                return;
            }
            calls.insert(account_id.into(), CallCount::default());
        }
        if let Some(entry) = calls.get_mut(account_id) {
            entry.answers.add(answer);
        }
    }

    /// What the ESG API answered each account called since the counts were last reset.
    pub fn answers(&self) -> BTreeMap<String, Answers> {
        lock(&self.calls)
            .iter()
            .filter(|(_, c)| c.answers != Answers::default())
            .map(|(id, c)| (id.to_string(), c.answers))
            .collect()
    }

    pub fn calls_for(&self, account_id: &str) -> u32 {
        lock(&self.calls).get(account_id).map_or(0, |c| c.calls)
    }

    pub fn accounts_called_at_least(&self, n: u32) -> Vec<String> {
        let mut ids: Vec<String> = lock(&self.calls)
            .iter()
            .filter(|(_, c)| c.calls >= n)
            .map(|(id, _)| id.to_string())
            .collect();
        ids.sort();
        ids
    }

    /// Forgets every call count and every first-attempt 429 drawn.
    pub fn reset_call_counts(&self) {
        lock(&self.calls).clear();
        lock(&self.first_attempts_refused).clear();
    }

    pub fn count_token_request(&self) {
        self.counters.token_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_account_page(&self, ok: bool) {
        let counter = if ok {
            &self.counters.account_pages
        } else {
            &self.counters.account_errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one batch request asking for `accounts` accounts (0 when its body is not a
    /// batch request).
    pub fn count_batch(&self, accounts: usize) {
        self.counters.batch_requests.fetch_add(1, Ordering::Relaxed);
        self.counters
            .batch_accounts
            .fetch_add(accounts as u64, Ordering::Relaxed);
    }

    /// Counts one ESG API answer by HTTP status.
    pub fn count_esg_status(&self, status: u16) {
        if status == 304 {
            self.counters.not_modified.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&self.counters.esg_by_status)
            .entry(status)
            .or_default() += 1;
    }

    /// Marks one ESG request in flight until the guard is dropped.
    pub fn enter_esg(self: &Arc<Self>) -> InFlight {
        let c = &self.counters;
        c.esg_requests.fetch_add(1, Ordering::Relaxed);
        let now = c.esg_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        c.max_concurrent_esg_requests
            .fetch_max(now, Ordering::SeqCst);
        let ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let _ = c
            .first_esg_request_ms
            .compare_exchange(0, ms, Ordering::SeqCst, Ordering::SeqCst);
        c.last_esg_request_ms.fetch_max(ms, Ordering::SeqCst);
        InFlight(self.clone())
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.counters;
        SimStats {
            token_requests: c.token_requests.load(Ordering::Relaxed),
            account_pages: c.account_pages.load(Ordering::Relaxed),
            account_errors: c.account_errors.load(Ordering::Relaxed),
            esg_requests: c.esg_requests.load(Ordering::Relaxed),
            esg_by_status: lock(&c.esg_by_status).clone(),
            rate_limited: c.rate_limited.load(Ordering::Relaxed),
            fault_rate_limited: c.fault_rate_limited.load(Ordering::Relaxed),
            storm_rate_limited: c.storm_rate_limited.load(Ordering::Relaxed),
            outage_unavailable: c.outage_unavailable.load(Ordering::Relaxed),
            batch_requests: c.batch_requests.load(Ordering::Relaxed),
            batch_accounts: c.batch_accounts.load(Ordering::Relaxed),
            not_modified: c.not_modified.load(Ordering::Relaxed),
            max_concurrent_esg_requests: c.max_concurrent_esg_requests.load(Ordering::SeqCst),
            first_esg_request_ms: c.first_esg_request_ms.load(Ordering::SeqCst),
            last_esg_request_ms: c.last_esg_request_ms.load(Ordering::SeqCst),
        }
    }

    /// Sleeps for `d` unless the simulator shuts down first; false when it shut down.
    pub async fn pause(&self, d: Duration) -> bool {
        if d.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// An ESG request in flight; dropping it ends it.
pub(crate) struct InFlight(Arc<State>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counters.esg_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn unix_seconds_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_the_burst_then_asks_to_wait() {
        let state = State::new(SimConfig {
            rate_limit_per_second: Some(2),
            burst: 3,
            ..SimConfig::default()
        });
        for expected_remaining in [2, 1, 0] {
            match state.check_rate() {
                RateDecision::Allowed {
                    limit, remaining, ..
                } => {
                    assert_eq!(limit, 2);
                    assert_eq!(remaining, expected_remaining);
                }
                other => panic!("expected allowed, got {other:?}"),
            }
        }
        match state.check_rate() {
            RateDecision::Limited { retry_after, .. } => assert!(retry_after >= 1),
            other => panic!("expected limited, got {other:?}"),
        }
        assert_eq!(state.stats().rate_limited, 1);
        state
            .update(|c| c.rate_limit_per_second = None)
            .expect("valid");
        assert_eq!(state.check_rate(), RateDecision::Unlimited);
    }

    #[test]
    fn update_keeps_the_data_set_and_refuses_invalid_settings() {
        let state = State::new(SimConfig::default());
        state
            .update(|c| {
                c.seed = 1;
                c.accounts = 5;
                c.partial_rate = 0.5;
            })
            .expect("valid");
        let cfg = state.config();
        assert_eq!((cfg.seed, cfg.accounts, cfg.partial_rate), (42, 1000, 0.5));
        assert!(state.update(|c| c.partial_rate = 2.0).is_err());
        assert_eq!(state.config().partial_rate, 0.5);
    }

    /// Ids of `1..=n` that `rate_limited_first_attempt_rate` draws under `cfg`.
    fn drawn(cfg: &SimConfig, n: u64) -> Vec<String> {
        (1..=n)
            .map(crate::accounts::account_id)
            .filter(|id| first_attempt_limited(cfg, id))
            .collect()
    }

    #[test]
    fn a_first_attempt_is_refused_once_whether_calls_are_counted_or_not() {
        for track_calls in [true, false] {
            let cfg = SimConfig {
                rate_limited_first_attempt_rate: 0.3,
                track_calls,
                ..SimConfig::default()
            };
            let state = State::new(cfg.clone());
            let ids = drawn(&cfg, 1000);
            assert!((200..=400).contains(&ids.len()), "{}", ids.len());
            for id in &ids {
                assert!(state.refuse_first_attempt(&cfg, id, true), "{id}");
                assert!(!state.refuse_first_attempt(&cfg, id, true), "{id} retried");
            }
            let others = (1..=1000)
                .map(crate::accounts::account_id)
                .filter(|id| !ids.contains(id));
            for id in others {
                assert!(!state.refuse_first_attempt(&cfg, &id, true), "{id}");
            }
            assert_eq!(state.stats().fault_rate_limited, ids.len() as u64);
            assert_eq!(state.stats().rate_limited, 0);
            let expected_calls = if track_calls { 1 } else { 0 };
            assert_eq!(state.calls_for(&ids[0]), expected_calls, "{track_calls}");
            state.reset_call_counts();
            assert!(
                state.refuse_first_attempt(&cfg, &ids[0], false),
                "a reset starts again"
            );
            assert_eq!(state.calls_for(&ids[0]), 0, "not counted as a call");
            state.first_attempt_over(&cfg, &ids[1]);
            state.count_call(&cfg, &ids[1], true);
            assert!(
                !state.refuse_first_attempt(&cfg, &ids[1], true),
                "answered in a batch before, no first attempt left ({track_calls})"
            );
        }
    }

    #[test]
    fn first_attempt_draws_are_by_seed_and_id_and_off_at_zero() {
        let cfg = SimConfig {
            rate_limited_first_attempt_rate: 0.5,
            ..SimConfig::default()
        };
        assert_eq!(drawn(&cfg, 500), drawn(&cfg, 500));
        let other_seed = SimConfig {
            seed: 7,
            ..cfg.clone()
        };
        assert_ne!(drawn(&other_seed, 500), drawn(&cfg, 500));
        let off = SimConfig::default();
        assert!(drawn(&off, 500).is_empty());
        let state = State::new(off.clone());
        assert!(!state.refuse_first_attempt(&off, "ACC00000001", true));
        assert!(lock(&state.first_attempts_refused).is_empty());
        assert!(lock(&state.calls).is_empty(), "nothing stored at rate 0");
    }

    #[test]
    fn a_storm_refuses_until_it_ends() {
        let state = State::new(SimConfig::default());
        assert!(!state.storm_refuses());
        state.storm(Duration::from_secs(60));
        assert!(state.storm_refuses() && state.storm_refuses());
        state.storm(Duration::ZERO);
        assert!(!state.storm_refuses());
        assert_eq!(state.stats().storm_rate_limited, 2);
    }

    #[test]
    fn an_outage_refuses_until_it_ends() {
        let state = State::new(SimConfig::default());
        assert!(!state.outage_refuses());
        state.outage(Duration::from_secs(60));
        assert!(state.outage_refuses());
        state.outage(Duration::ZERO);
        assert!(!state.outage_refuses());
        assert_eq!(state.stats().outage_unavailable, 1);
    }

    #[test]
    fn answers_count_analyses_failures_and_the_streak_of_failures() {
        let state = State::new(SimConfig::default());
        let cfg = state.config();
        for answer in [
            Answer::Transient(503),
            Answer::Analysis,
            Answer::Transient(500),
            Answer::Stalled,
            Answer::Transient(504),
        ] {
            state.record_answer(&cfg, "A", answer);
        }
        state.record_answer(&cfg, "B", Answer::Permanent(422));
        let answers = state.answers();
        assert_eq!(
            answers["A"],
            Answers {
                analyses: 1,
                transient: 3,
                stalls: 1,
                permanent: 0,
                failure_streak: 3,
                last_status: 504,
            }
        );
        assert_eq!(answers["B"].permanent, 1);
        assert_eq!(answers["B"].last_status, 422);
        state.record_answer(&cfg, "A", Answer::Analysis);
        assert_eq!(
            state.answers()["A"].failure_streak,
            0,
            "an analysis ends the streak"
        );
        state.reset_call_counts();
        assert!(state.answers().is_empty());
        let untracked = SimConfig {
            track_calls: false,
            ..SimConfig::default()
        };
        state.record_answer(&untracked, "C", Answer::Analysis);
        assert!(
            state.answers().is_empty(),
            "nothing stored when not tracking"
        );
    }

    #[test]
    fn call_numbers_count_only_answered_calls() {
        let state = State::new(SimConfig::default());
        let cfg = state.config();
        assert_eq!(state.count_call(&cfg, "A", false), 0);
        assert_eq!(state.count_call(&cfg, "A", true), 0);
        assert_eq!(state.count_call(&cfg, "A", true), 1);
        assert_eq!(state.calls_for("A"), 3);
        assert_eq!(state.count_call(&cfg, "B", true), 0);
        assert_eq!(state.accounts_called_at_least(2), vec!["A".to_owned()]);
        state.reset_call_counts();
        assert_eq!(state.calls_for("A"), 0);
        let untracked = SimConfig {
            track_calls: false,
            ..SimConfig::default()
        };
        state.count_call(&untracked, "C", true);
        assert_eq!(state.calls_for("C"), 0, "nothing stored when not tracking");
    }
}
