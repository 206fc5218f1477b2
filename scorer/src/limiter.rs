//! The tenant rate limit, shared by every call this process makes to the ESG API.
//!
//! The vendor's quota (requests per second with a burst) belongs to the tenant, not to one
//! account or one task, so this is one direct (un-keyed) governor GCRA limiter that every call
//! takes a cell from before it goes out. On top of it sits a *pause*: when the API answers 429 with
//! `Retry-After`, the caller extends the pause and every caller waits until that instant has passed
//! before it may take a cell, so the whole process backs off, not only the task that was refused.
//!
//! Guarantee: no more than `burst` cells at once and `per_second` cells per second on average
//! leave this process, and none is handed out while a pause is in force.
//!
//! A consumer group shares the tenant quota by partitions: a scorer that owns `k` of the `n`
//! partitions of the account events sets its share to `k/n` ([`RateLimiter::set_share`]) and
//! lets through `ceil(per_second × k / n)` per second. A partition has one owner at a time, so
//! the shares of the whole group add up to the quota (plus at most one cell per second per
//! member from the rounding up), whatever the number of scorers, with no coordination between
//! processes. Limit: the share follows the assignment, not the work, so a member whose
//! partitions run dry leaves its share unused; keys are spread evenly by murmur2, so the
//! partitions of one run carry close to the same number of accounts. A 429 pauses only the
//! process that received it.

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Tenant quota shared by all of this process's calls: governor GCRA (direct, not keyed) at
/// `per_second` with `burst`, plus a pause: after a 429 every caller waits until the
/// Retry-After instant has passed before taking a cell.
pub struct RateLimiter {
    gcra: RwLock<Arc<DefaultDirectRateLimiter>>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
    /// The part of the quota this process may use: (partitions owned, partitions in all).
    share: Mutex<(u32, u32)>,
    /// Reference point of `paused_until_nanos`.
    origin: Instant,
    /// End of the shared pause, in nanoseconds since `origin`; only ever moves forward.
    paused_until_nanos: AtomicU64,
    waits: AtomicU64,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("waits", &self.waits())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter letting `per_second` cells through per second on average and at most `burst`
    /// at once.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        RateLimiter {
            gcra: RwLock::new(Arc::new(DefaultDirectRateLimiter::direct(
                Quota::per_second(per_second).allow_burst(burst),
            ))),
            per_second,
            burst,
            share: Mutex::new((1, 1)),
            origin: Instant::now(),
            paused_until_nanos: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        }
    }

    /// Waits until the pause (if any) is over and a cell is free, takes it, and returns how long
    /// the caller waited (zero when it did not). Cancel-safe: dropping the future takes no cell.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let mut waited = false;
        loop {
            // The pause may be extended while we sleep on either condition, so both are checked
            // again after every sleep.
            let paused_until = self.paused_until();
            if paused_until > Instant::now() {
                waited = true;
                tokio::time::sleep_until(paused_until).await;
                continue;
            }
            let gcra = self.current();
            match gcra.check() {
                Ok(()) => break,
                Err(not_until) => {
                    waited = true;
                    let wait = not_until.wait_time_from(gcra.clock().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
        if waited {
            self.waits.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(esg_metrics::RATE_LIMITER_WAITS_TOTAL).increment(1);
            started.elapsed()
        } else {
            Duration::ZERO
        }
    }

    fn current(&self) -> Arc<DefaultDirectRateLimiter> {
        match self.gcra.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Uses `owned / total` of the quota from now on (a scorer's partitions of the account
    /// events out of all of them); `owned = total` is the whole quota. No-op when unchanged.
    pub fn set_share(&self, owned: u32, total: u32) {
        let total = total.max(1);
        let owned = owned.min(total);
        {
            let mut share = match self.share.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if *share == (owned, total) {
                return;
            }
            *share = (owned, total);
        }
        let scale = |n: NonZeroU32| {
            let scaled = (u64::from(n.get()) * u64::from(owned)).div_ceil(u64::from(total));
            NonZeroU32::new(u32::try_from(scaled).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
        };
        let (rate, burst) = (scale(self.per_second), scale(self.burst));
        let fresh = Arc::new(DefaultDirectRateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        ));
        // A new limiter starts with a full bucket: empty it, so that a rebalance does not hand
        // every member a fresh burst on top of what the group already sent.
        let _ = fresh.check_n(burst);
        match self.gcra.write() {
            Ok(mut g) => *g = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        tracing::info!(
            owned,
            total,
            per_second = rate.get(),
            burst = burst.get(),
            "rate limit share set"
        );
    }

    /// The requests per second this process may make now (its share of the quota).
    pub fn per_second_now(&self) -> u32 {
        let (owned, total) = match self.share.lock() {
            Ok(s) => *s,
            Err(poisoned) => *poisoned.into_inner(),
        };
        let scaled =
            (u64::from(self.per_second.get()) * u64::from(owned)).div_ceil(u64::from(total.max(1)));
        u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
    }

    /// Pauses every caller for `d` from now. Extends, never shortens, a pause already in force.
    pub fn pause_for(&self, d: Duration) {
        let until = Instant::now()
            .saturating_duration_since(self.origin)
            .checked_add(d)
            .unwrap_or(Duration::MAX);
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.paused_until_nanos.fetch_max(nanos, Ordering::AcqRel);
    }

    /// How many [`acquire`](Self::acquire) calls had to wait (for the pause or for a cell).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// The instant the shared pause ends (in the past when there is none).
    fn paused_until(&self) -> Instant {
        let nanos = self.paused_until_nanos.load(Ordering::Acquire);
        // A pause beyond what `Instant` can represent is clamped to roughly thirty years, which
        // is "forever" for a daily job and keeps the arithmetic from overflowing.
        let d = Duration::from_nanos(nanos).min(Duration::from_secs(86_400 * 365 * 30));
        self.origin + d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[tokio::test]
    async fn rate_holds_after_the_burst() {
        let limiter = RateLimiter::new(nz(200), nz(1));
        let started = std::time::Instant::now();
        for _ in 0..41 {
            limiter.acquire().await;
        }
        // 1 cell at once, then 40 more at 5 ms each.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(195), "{elapsed:?}");
        assert!(limiter.waits() >= 39, "waits {}", limiter.waits());
    }

    #[tokio::test]
    async fn burst_goes_out_without_waiting() {
        let limiter = RateLimiter::new(nz(1), nz(10));
        for _ in 0..10 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        assert_eq!(limiter.waits(), 0);
        // The eleventh would wait a second: it is not ready within 100 ms.
        let eleventh = tokio::time::timeout(Duration::from_millis(100), limiter.acquire()).await;
        assert!(eleventh.is_err());
    }

    #[tokio::test]
    async fn pause_delays_every_acquire_and_is_never_shortened() {
        let limiter = std::sync::Arc::new(RateLimiter::new(nz(1000), nz(100)));
        limiter.pause_for(Duration::from_millis(120));
        limiter.pause_for(Duration::from_millis(10)); // must not shorten the pause
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move { l.acquire().await }));
        }
        for t in tasks {
            let waited = t.await.expect("join");
            assert!(waited >= Duration::from_millis(100), "{waited:?}");
        }
        assert!(started.elapsed() >= Duration::from_millis(115));
        assert_eq!(limiter.waits(), 5);
        // Once the pause is over, cells come without waiting again.
        assert_eq!(limiter.acquire().await, Duration::ZERO);
    }

    #[tokio::test]
    async fn pause_extended_while_waiting_is_honoured() {
        let limiter = std::sync::Arc::new(RateLimiter::new(nz(1000), nz(100)));
        limiter.pause_for(Duration::from_millis(30));
        let l = limiter.clone();
        let waiter = tokio::spawn(async move { l.acquire().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        limiter.pause_for(Duration::from_millis(100)); // now ends ~110 ms after start
        let waited = waiter.await.expect("join");
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
    }

    #[tokio::test]
    async fn a_share_of_the_quota_limits_the_rate_and_the_burst() {
        let limiter = RateLimiter::new(nz(400), nz(40));
        limiter.set_share(3, 12); // a quarter: 100/s, and no burst right after the change
        assert_eq!(limiter.per_second_now(), 100);
        let started = std::time::Instant::now();
        for _ in 0..21 {
            limiter.acquire().await;
        }
        // 21 cells at 10 ms each (the first after one interval).
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
        // Back to the whole quota: 400/s from now on, without a fresh burst.
        limiter.set_share(12, 12);
        let started = std::time::Instant::now();
        for _ in 0..41 {
            limiter.acquire().await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(95), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");
    }

    #[test]
    fn shares_round_up_to_at_least_one_cell() {
        let limiter = RateLimiter::new(nz(10), nz(1));
        limiter.set_share(1, 12);
        assert_eq!(limiter.per_second_now(), 1);
        limiter.set_share(0, 12);
        assert_eq!(limiter.per_second_now(), 1);
        limiter.set_share(7, 12);
        assert_eq!(limiter.per_second_now(), 6);
    }

    #[test]
    fn huge_pause_does_not_overflow() {
        let limiter = RateLimiter::new(nz(1), nz(1));
        limiter.pause_for(Duration::MAX);
        assert!(limiter.paused_until() > Instant::now() + Duration::from_secs(86_400));
    }
}
