//! The tenant rate limit, shared by every call this process makes to the ESG API, and the
//! adaptive send rate that backs off when the API answers 429.
//!
//! The vendor's quota (requests per second with a burst) belongs to the tenant, not to one
//! account or one task, so every call takes a cell from this one limiter before it goes out. It
//! has three layers, all shared by every caller:
//!
//! 1. The **ceiling**: a direct (un-keyed) governor GCRA at this process's share of the quota
//!    ([`RateLimiter::per_second_now`]) with its share of the burst.
//! 2. The **send rate in force** ([`RateLimiter::rate_now`]), at most the ceiling and equal to
//!    it until the API pushes back. Below the ceiling a pacing layer spaces cells `1 / rate`
//!    apart, letting one go at most `PACE_SLACK` (5 ms) before it is due, so its burst is
//!    `rate × 5 ms + 1` cells; at the ceiling the pacing layer is off and the GCRA alone
//!    decides, burst included.
//! 3. The **group pause**: every caller waits until the pause is over before it may take a
//!    cell ([`RateLimiter::pause_for`]).
//!
//! The send rate adapts to the API's answers ([`RateLimiter::on_answer`], one per HTTP request
//! answered) as in the AWS SDKs' adaptive retry mode: CUBIC congestion control over a measured
//! send rate. A cut takes `W_max` = the rate in force (or the measured send rate when it is
//! lower, so that a ceiling far above the demand does not make the cut meaningless) and sets the
//! rate to `BETA × W_max` (floor [`MIN_RATE`]); every later non-429 answer sets the rate to
//! `W(t) = SCALE (t − K)³ + W_max` with `K = ∛(W_max (1 − BETA) / SCALE)`, `t` the time since
//! the cut, up to the ceiling: back at `W_max` after `K` seconds, then growing faster. The
//! measured send rate is the count of answers per half second, smoothed (weight `SMOOTH` for the
//! last half second). Unlike AWS, which cuts on every throttled answer, a cut needs the share of
//! 429s in the window of recent answers (the last 2 s, or the last [`MIN_SAMPLE`] answers when
//! the last 2 s hold fewer) to exceed [`CUT_TOLERANCE`], and happens at most once per
//! [`CUT_INTERVAL`]; the window restarts at each cut, because the answers before it describe a
//! rate no longer in force. Nor is the rate held to twice the measured send rate as in AWS: it
//! grows back to the ceiling whatever the demand, the ceiling being the quota's share. The group
//! pause is only for when the API refuses nearly everything:
//! more than [`PAUSE_SHARE`] of at least [`PAUSE_MIN_ANSWERS`] answers in the window are 429.
//!
//! Guarantee: no more than the ceiling leaves this process (`per_second_now()` cells per second
//! on average, its share of the burst at once), no more than the send rate in force while it is
//! below the ceiling (and then no burst above it but the pacing slack's), and no cell is handed
//! out while a pause is in force. The group pauses only when most recent answers are 429. A stray 429 (one, or a share
//! of 429s up to the tolerance) changes neither the rate nor the pause: it costs only its own
//! request, which waits its own Retry-After (the caller's job).
//!
//! Limits: the controller sees answers, not sends, so answers to requests sent before a cut
//! arrive after it and count against the new rate (a second cut may follow one interval later
//! on that old evidence; CUBIC then recovers). A pause needs [`PAUSE_MIN_ANSWERS`] answers since
//! the last cut: at low rates it comes seconds after the 429s start, each 429 meanwhile waiting
//! its own Retry-After while the rate goes down. At low rates the window is the last
//! [`MIN_SAMPLE`] answers, which may span more than 2 s. The rate recovers only as answers come
//! in. Each process adapts on its own answers only; the members of a group do not
//! coordinate (their ceilings still add up to the quota, see below).
//!
//! Why a pacing layer over governor rather than a governor limiter rebuilt at each new rate:
//! during a recovery the rate changes on every answer, and a rebuilt limiter starts with a full
//! bucket (a fresh burst) or an emptied one (a stall), costs an allocation and a write lock per
//! change. The pacing layer is two atomics (the interval and when the next cell is due) changed
//! in place. At the ceiling, which is the normal case, `acquire` reads one flag to skip it, so its
//! fast path is as before: two atomic loads, a shared read lock, governor's compare-and-swap; no
//! mutex, no allocation. [`RateLimiter::on_answer`] takes a mutex for a few constant-time steps
//! (the window's sums are only computed for 429s).
//!
//! A consumer group shares the tenant quota by partitions: a scorer that owns `k` of the `n`
//! partitions of the account events sets its share to `k/n` ([`RateLimiter::set_share`]) and
//! lets through `ceil(per_second × k / n)` per second. A partition has one owner at a time, so
//! the shares of the whole group add up to the quota (plus at most one cell per second per
//! member from the rounding up), whatever the number of scorers, with no coordination between
//! processes. Limit: the share follows the assignment, not the work, so a member whose
//! partitions run dry leaves its share unused; keys are spread evenly by murmur2, so the
//! partitions of one run carry close to the same number of accounts. A pause stops only the
//! process that decided it.

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// CUBIC multiplicative decrease: after a cut the rate is this share of `W_max` (AWS: 0.7).
const BETA: f64 = 0.7;
/// CUBIC scale constant `C`: how fast the rate grows back after a cut, in requests/s per s³
/// (AWS: 0.4).
const SCALE: f64 = 0.4;
/// Weight of the last half second in the smoothed measured send rate (AWS: 0.8).
const SMOOTH: f64 = 0.8;
/// Width of one bucket of the measured send rate (AWS: half a second).
const MEASURE_BUCKET: Duration = Duration::from_millis(500);
/// The lowest send rate a cut goes to, in requests per second (AWS: 0.5).
pub const MIN_RATE: f64 = 0.5;
/// Span of the window of recent answers.
const WINDOW: Duration = Duration::from_secs(2);
/// Step of the window: it covers the last `WINDOW` to within one step.
const WINDOW_STEP: Duration = Duration::from_millis(100);
const WINDOW_SLOTS: usize = 20;
const _: () = assert!(WINDOW_STEP.as_nanos() * WINDOW_SLOTS as u128 == WINDOW.as_nanos());
/// The fewest answers a decision rests on: when the last 2 s hold fewer, the window is the last
/// this many answers instead; until that many have come since the window restarted, the
/// missing ones count as successes for a cut.
pub const MIN_SAMPLE: usize = 20;
/// Share of 429s in the window tolerated without a cut. A few stray 429s are expected at a
/// correct rate: our limiter and the vendor's disagree by milliseconds at the edges of a
/// second, and some vendors shed a share of first attempts whatever the rate. Cutting on those
/// would collapse the rate for nothing, while each 429'd request waits its own Retry-After
/// anyway, so a small overrun costs little: a cut is for a share of 429s that says the rate
/// itself is wrong. Above 15% roughly one request in seven is refused, which no edge effect
/// explains.
pub const CUT_TOLERANCE: f64 = 0.15;
/// The least time between two cuts, so that a burst of 429s from one window cuts once.
pub const CUT_INTERVAL: Duration = Duration::from_secs(1);
/// Share of 429s in the window above which every caller of the process pauses.
pub const PAUSE_SHARE: f64 = 0.5;
/// The fewest answers in the window for a group pause.
pub const PAUSE_MIN_ANSWERS: usize = 5;
/// The group pause when the 429 that decides it gives no Retry-After.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(1);
/// How early the pacing layer lets a cell go before it is due: the pacing layer's burst is
/// `rate × PACE_SLACK + 1` cells. Timers wake a millisecond late or so; without this slack a
/// rate above a few hundred per second could not be reached, because every late wake-up would
/// lose the cells due meanwhile.
const PACE_SLACK: Duration = Duration::from_millis(5);
/// A pause beyond what `Instant` can represent is clamped to roughly thirty years, which is
/// "forever" for a daily job and keeps the arithmetic from overflowing.
const FOREVER: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The governor limiter of the ceiling, on the limiter's own clock.
type Gcra = governor::RateLimiter<NotKeyed, InMemoryState, LimiterClock, NoOpMiddleware<Duration>>;

/// Time as the limiter sees it: the time elapsed since the limiter was built. Everything in the
/// limiter (GCRA, pacing, pause, window) reads this one clock; tests drive it by hand.
#[derive(Clone, Debug)]
struct LimiterClock {
    origin: Instant,
    #[cfg(test)]
    manual: Option<Arc<AtomicU64>>,
}

impl LimiterClock {
    fn real() -> Self {
        LimiterClock {
            origin: Instant::now(),
            #[cfg(test)]
            manual: None,
        }
    }

    /// Time elapsed since the origin.
    fn elapsed(&self) -> Duration {
        #[cfg(test)]
        if let Some(manual) = &self.manual {
            return Duration::from_nanos(manual.load(Ordering::Acquire));
        }
        Instant::now().saturating_duration_since(self.origin)
    }

    /// The instant `at` after the origin, for sleeping until it.
    fn instant(&self, at: Duration) -> Instant {
        self.origin + at.min(FOREVER)
    }
}

impl governor::clock::Clock for LimiterClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The outcome of one look at the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell {
    /// A cell is taken: go now.
    Ready,
    /// A cell is taken, for the pacing slot at this time (another caller took the slot this one
    /// saw free): go then.
    ReadyAt(Duration),
    /// No cell taken: look again at this time.
    NotBefore(Duration),
}

/// Tenant quota shared by all of this process's calls: governor GCRA (direct, not keyed) at the
/// process's share of `per_second` with its share of `burst`, an adaptive send rate at most
/// that, and a pause that every caller waits out before taking a cell. See the module
/// documentation for the guarantee and its limits.
pub struct RateLimiter {
    gcra: RwLock<Arc<Gcra>>,
    per_second: NonZeroU32,
    burst: NonZeroU32,
    /// The part of the quota this process may use: (partitions owned, partitions in all).
    share: Mutex<(u32, u32)>,
    clock: LimiterClock,
    /// End of the shared pause, in nanoseconds on `clock`; only ever moves forward.
    paused_until_nanos: AtomicU64,
    waits: AtomicU64,
    /// True while the send rate in force is below the ceiling: cells are then paced too.
    pacing: AtomicBool,
    /// Nanoseconds between two cells at the send rate in force (used while `pacing`).
    pace_interval_nanos: AtomicU64,
    /// When the next cell is due at the send rate in force (nanoseconds on `clock`); it may go
    /// up to `PACE_SLACK` earlier. Never moved back: a rate falling behind loses its credit.
    pace_next_nanos: AtomicU64,
    /// The send rate in force (f64 bits), published for `rate_now`.
    rate_bits: AtomicU64,
    control: Mutex<Control>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second_now())
            .field("rate", &self.rate_now())
            .field("waits", &self.waits())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl RateLimiter {
    /// A limiter letting `per_second` cells through per second on average and at most `burst`
    /// at once; the send rate starts at that ceiling.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        Self::with_clock(per_second, burst, LimiterClock::real())
    }

    fn with_clock(per_second: NonZeroU32, burst: NonZeroU32, clock: LimiterClock) -> Self {
        let ceiling = f64::from(per_second.get());
        let limiter = RateLimiter {
            gcra: RwLock::new(Arc::new(Gcra::direct_with_clock(
                Quota::per_second(per_second).allow_burst(burst),
                clock.clone(),
            ))),
            per_second,
            burst,
            share: Mutex::new((1, 1)),
            clock,
            paused_until_nanos: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            pacing: AtomicBool::new(false),
            pace_interval_nanos: AtomicU64::new(1),
            pace_next_nanos: AtomicU64::new(0),
            rate_bits: AtomicU64::new(ceiling.to_bits()),
            control: Mutex::new(Control::new(ceiling)),
        };
        metrics::gauge!(esg_metrics::API_SEND_RATE).set(ceiling);
        limiter
    }

    /// Waits until the pause (if any) is over and a cell is free at the ceiling and at the send
    /// rate in force, takes it, and returns how long the caller waited (zero when it did not).
    /// Cancel-safe: a future dropped while it waits has taken no cell, except when it lost a
    /// race for a pacing slot and sleeps until the next one, which is then its own; dropped then,
    /// that slot goes unused (a cell less, never one more).
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let mut waited = false;
        loop {
            match self.poll_cell() {
                Cell::Ready => break,
                Cell::ReadyAt(at) => {
                    waited = true;
                    tokio::time::sleep_until(self.clock.instant(at)).await;
                    // The cell is ours, but a pause that began meanwhile holds it back too.
                    loop {
                        let until = self.paused_until_nanos.load(Ordering::Acquire);
                        if until <= nanos(self.clock.elapsed()) {
                            break;
                        }
                        let until = self.clock.instant(Duration::from_nanos(until));
                        tokio::time::sleep_until(until).await;
                    }
                    break;
                }
                // The pause may be extended and the rate changed while we sleep, so everything
                // is checked again after every sleep.
                Cell::NotBefore(at) => {
                    waited = true;
                    tokio::time::sleep_until(self.clock.instant(at)).await;
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

    /// One look at the three layers: takes a cell if all allow it, else says when to look
    /// again. Takes nothing it does not hand out, but for the lost-race case of [`Cell::ReadyAt`].
    fn poll_cell(&self) -> Cell {
        let now = nanos(self.clock.elapsed());
        let paused_until = self.paused_until_nanos.load(Ordering::Acquire);
        if paused_until > now {
            return Cell::NotBefore(Duration::from_nanos(paused_until));
        }
        let pacing = self.pacing.load(Ordering::Acquire);
        let slack = nanos(PACE_SLACK);
        if pacing {
            let due = self.pace_next_nanos.load(Ordering::Acquire);
            if due > now.saturating_add(slack) {
                return Cell::NotBefore(Duration::from_nanos(due - slack));
            }
        }
        let gcra = self.current();
        if let Err(not_until) = gcra.check() {
            return Cell::NotBefore(not_until.earliest_possible());
        }
        if pacing {
            // The GCRA cell is ours: take the pacing slot with it, without giving it back. The
            // slot seen free above may have been taken since by other callers; then this one
            // gets the next slot and waits for it, so the pace holds.
            let interval = self.pace_interval_nanos.load(Ordering::Acquire);
            let advance = |due: u64| Some(due.max(now).saturating_add(interval));
            let due = match self.pace_next_nanos.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                advance,
            ) {
                Ok(due) | Err(due) => due,
            };
            if due > now.saturating_add(slack) {
                return Cell::ReadyAt(Duration::from_nanos(due - slack));
            }
        }
        Cell::Ready
    }

    fn current(&self) -> Arc<Gcra> {
        match self.gcra.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Takes the API's answer to one HTTP request (a batch is one request): `throttled` when it
    /// was a 429, with its Retry-After if it gave one. Adapts the send rate (a cut when the share
    /// of 429s in the window is above [`CUT_TOLERANCE`], at most once per [`CUT_INTERVAL`];
    /// CUBIC recovery on other answers) and pauses every caller for the Retry-After (or
    /// [`DEFAULT_PAUSE`]) when most recent answers are 429. Does not count the 429 itself.
    pub fn on_answer(&self, throttled: bool, retry_after: Option<Duration>) {
        let mut control = lock(&self.control);
        // Time is read under the lock so that the controller sees answers in time order.
        let now = self.clock.elapsed();
        let before = control.rate;
        let decision = control.answer(now, throttled);
        if control.rate != before {
            self.publish(&control);
        }
        drop(control);
        if let Some(cut) = decision.cut {
            tracing::debug!(
                from = cut.from,
                to = cut.to,
                throttled = cut.throttled,
                answers = cut.answers,
                "send rate cut"
            );
        }
        if let Some((refused, answers)) = decision.pause {
            let pause = retry_after.unwrap_or(DEFAULT_PAUSE);
            if self.pause_group(pause) {
                metrics::counter!(esg_metrics::API_PAUSES_TOTAL).increment(1);
                tracing::info!(
                    pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    throttled = refused,
                    answers,
                    "most recent API answers were 429: every call paused"
                );
            }
        }
    }

    /// The send rate in force, in requests per second: at most the ceiling
    /// ([`per_second_now`](Self::per_second_now)), equal to it until the API pushes back.
    pub fn rate_now(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Acquire))
    }

    /// Makes the rate in `control` the one `acquire` hands out, and shows it on the gauge.
    /// Called with the control lock held, so that publications follow the changes' order.
    fn publish(&self, control: &Control) {
        let rate = control.rate;
        if rate < control.ceiling {
            let interval = (1e9 / rate).round().max(1.0);
            // `rate` is at least MIN_RATE, so the interval fits in a u64; the cast saturates.
            self.pace_interval_nanos
                .store(interval as u64, Ordering::Release);
            self.pacing.store(true, Ordering::Release);
        } else {
            self.pacing.store(false, Ordering::Release);
        }
        self.rate_bits.store(rate.to_bits(), Ordering::Release);
        metrics::gauge!(esg_metrics::API_SEND_RATE).set(rate);
    }

    /// Uses `owned / total` of the quota from now on (a scorer's partitions of the account
    /// events out of all of them); `owned = total` is the whole quota. The new ceiling applies
    /// without a fresh burst, and the send rate in force is clamped to it (or follows it when
    /// no cut is in force). No-op when unchanged.
    pub fn set_share(&self, owned: u32, total: u32) {
        let total = total.max(1);
        let owned = owned.min(total);
        {
            let mut share = lock(&self.share);
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
        let fresh = Arc::new(Gcra::direct_with_clock(
            Quota::per_second(rate).allow_burst(burst),
            self.clock.clone(),
        ));
        // A new limiter starts with a full bucket: empty it, so that a rebalance does not hand
        // every member a fresh burst on top of what the group already sent.
        let _ = fresh.check_n(burst);
        match self.gcra.write() {
            Ok(mut g) => *g = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        let send_rate = {
            let mut control = lock(&self.control);
            control.set_ceiling(f64::from(rate.get()));
            self.publish(&control);
            control.rate
        };
        tracing::info!(
            owned,
            total,
            per_second = rate.get(),
            burst = burst.get(),
            send_rate,
            "rate limit share set"
        );
    }

    /// The requests per second this process may make now (its share of the quota): the
    /// ceiling of the send rate.
    pub fn per_second_now(&self) -> u32 {
        let (owned, total) = *lock(&self.share);
        let scaled =
            (u64::from(self.per_second.get()) * u64::from(owned)).div_ceil(u64::from(total.max(1)));
        u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
    }

    /// Pauses every caller for `d` from now. Extends, never shortens, a pause already in force.
    pub fn pause_for(&self, d: Duration) {
        self.pause_group(d);
    }

    /// [`pause_for`](Self::pause_for); true when no pause was in force before.
    fn pause_group(&self, d: Duration) -> bool {
        let now = self.clock.elapsed();
        let until = nanos(now.checked_add(d).unwrap_or(Duration::MAX));
        let before = self.paused_until_nanos.fetch_max(until, Ordering::AcqRel);
        before <= nanos(now)
    }

    /// How many [`acquire`](Self::acquire) calls had to wait (for the pause or for a cell).
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// The instant the shared pause ends (in the past when there is none).
    #[cfg(test)]
    fn paused_until(&self) -> Instant {
        let nanos = self.paused_until_nanos.load(Ordering::Acquire);
        self.clock.instant(Duration::from_nanos(nanos))
    }
}

/// What one answer decided.
#[derive(Debug, Default)]
struct Decision {
    cut: Option<Cut>,
    /// (429s, answers) in the window when most answers are 429: pause every caller.
    pause: Option<(usize, usize)>,
}

#[derive(Debug)]
struct Cut {
    from: f64,
    to: f64,
    throttled: usize,
    answers: usize,
}

/// The adaptive send rate: CUBIC over the window of recent answers. Pure state, driven with
/// the time of each answer.
#[derive(Debug)]
struct Control {
    /// The process's share of the quota, requests per second.
    ceiling: f64,
    /// The send rate in force: `min(ceiling, cubic)`, or the ceiling when no cut is in force.
    rate: f64,
    /// CUBIC's rate since the last cut, unclamped by the ceiling; `None` once it has reached
    /// the ceiling (no cut in force: the rate follows the ceiling).
    cubic: Option<f64>,
    /// CUBIC's `W_max`: the rate the last cut started from.
    last_max: f64,
    /// CUBIC's `K` for `last_max`: seconds after the cut until the rate is back at `last_max`.
    k: f64,
    /// Time of the last cut.
    last_cut: Option<Duration>,
    window: Window,
    measured: Measured,
}

impl Control {
    fn new(ceiling: f64) -> Self {
        Control {
            ceiling,
            rate: ceiling,
            cubic: None,
            last_max: ceiling,
            k: 0.0,
            last_cut: None,
            window: Window::default(),
            measured: Measured::default(),
        }
    }

    fn answer(&mut self, now: Duration, throttled: bool) -> Decision {
        self.measured.record(now);
        self.window.record(now, throttled);
        let mut decision = Decision::default();
        if !throttled {
            self.recover(now);
            return decision;
        }
        let (answers, refused) = self.window.counts(now);
        if answers >= PAUSE_MIN_ANSWERS && refused as f64 > PAUSE_SHARE * answers as f64 {
            decision.pause = Some((refused, answers));
        }
        let interval_over = self
            .last_cut
            .is_none_or(|cut| now.saturating_sub(cut) >= CUT_INTERVAL);
        let share = refused as f64 / answers.max(MIN_SAMPLE) as f64;
        if interval_over && share > CUT_TOLERANCE {
            let from = self.rate;
            // AWS cuts from the measured send rate when it is below the rate in force: a rate
            // in force far above what is actually sent would make the cut meaningless.
            let basis = self.measured.rate.map_or(from, |m| m.min(from));
            self.last_max = basis;
            self.k = (basis * (1.0 - BETA) / SCALE).cbrt();
            self.last_cut = Some(now);
            let cubic = (basis * BETA).max(MIN_RATE);
            self.cubic = Some(cubic);
            self.rate = cubic.min(self.ceiling);
            self.window.clear();
            decision.cut = Some(Cut {
                from,
                to: self.rate,
                throttled: refused,
                answers,
            });
        }
        decision
    }

    /// CUBIC growth after a non-429 answer, up to the ceiling.
    fn recover(&mut self, now: Duration) {
        let (Some(_), Some(cut)) = (self.cubic, self.last_cut) else {
            return;
        };
        let t = now.saturating_sub(cut).as_secs_f64();
        let w = (SCALE * (t - self.k).powi(3) + self.last_max).max(MIN_RATE);
        if w >= self.ceiling {
            self.cubic = None;
            self.rate = self.ceiling;
        } else {
            self.cubic = Some(w);
            self.rate = w;
        }
    }

    fn set_ceiling(&mut self, ceiling: f64) {
        self.ceiling = ceiling;
        // A cut in force stays in force: CUBIC goes on from where it is, under the new ceiling.
        self.rate = self.cubic.map_or(ceiling, |cubic| cubic.min(ceiling));
    }
}

/// The window of recent answers: the last [`WINDOW`] in [`WINDOW_STEP`]s, and the last
/// [`MIN_SAMPLE`] answers for when the time window holds fewer.
#[derive(Debug)]
struct Window {
    slots: [Slot; WINDOW_SLOTS],
    /// The last answers, true for a 429; a ring of which `recent_len` are filled.
    recent: [bool; MIN_SAMPLE],
    recent_len: usize,
    recent_next: usize,
    recent_throttled: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Which step of time (`WINDOW_STEP`s since the origin) the counts are for.
    step: u64,
    answers: usize,
    throttled: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: [Slot::default(); WINDOW_SLOTS],
            recent: [false; MIN_SAMPLE],
            recent_len: 0,
            recent_next: 0,
            recent_throttled: 0,
        }
    }
}

impl Window {
    fn step(now: Duration) -> u64 {
        u64::try_from(now.as_nanos() / WINDOW_STEP.as_nanos()).unwrap_or(u64::MAX)
    }

    fn record(&mut self, now: Duration, throttled: bool) {
        let step = Self::step(now);
        // WINDOW_SLOTS is small: the remainder fits in a usize.
        let slot = &mut self.slots[(step % WINDOW_SLOTS as u64) as usize];
        if slot.step != step {
            *slot = Slot {
                step,
                answers: 0,
                throttled: 0,
            };
        }
        slot.answers += 1;
        slot.throttled += usize::from(throttled);

        if self.recent_len == MIN_SAMPLE {
            self.recent_throttled -= usize::from(self.recent[self.recent_next]);
        } else {
            self.recent_len += 1;
        }
        self.recent[self.recent_next] = throttled;
        self.recent_throttled += usize::from(throttled);
        self.recent_next = (self.recent_next + 1) % MIN_SAMPLE;
    }

    /// (answers, 429s) in the window.
    fn counts(&self, now: Duration) -> (usize, usize) {
        let step = Self::step(now);
        let (answers, throttled) = self
            .slots
            .iter()
            .filter(|s| s.step <= step && step - s.step < WINDOW_SLOTS as u64)
            .fold((0, 0), |(a, t), s| (a + s.answers, t + s.throttled));
        if answers >= MIN_SAMPLE {
            (answers, throttled)
        } else {
            // Fewer than MIN_SAMPLE in the last 2 s: they are all among the last MIN_SAMPLE.
            (self.recent_len, self.recent_throttled)
        }
    }

    fn clear(&mut self) {
        *self = Window::default();
    }
}

/// The measured send rate: answers per [`MEASURE_BUCKET`], smoothed. Unknown until one whole
/// bucket has been counted, and again after a bucket without answers (the process was idle:
/// the old measure says nothing about what it sends now).
#[derive(Debug, Default)]
struct Measured {
    /// The bucket being counted, and whether it began at an answer rather than at its start.
    bucket: Option<(u64, bool)>,
    count: u64,
    rate: Option<f64>,
}

impl Measured {
    fn record(&mut self, now: Duration) {
        let bucket = u64::try_from(now.as_nanos() / MEASURE_BUCKET.as_nanos()).unwrap_or(u64::MAX);
        match self.bucket {
            Some((current, _)) if bucket <= current => self.count += 1,
            Some((current, partial)) if bucket == current + 1 => {
                if !partial {
                    let last = self.count as f64 / MEASURE_BUCKET.as_secs_f64();
                    self.rate = Some(
                        self.rate
                            .map_or(last, |r| last * SMOOTH + r * (1.0 - SMOOTH)),
                    );
                }
                self.bucket = Some((bucket, false));
                self.count = 1;
            }
            _ => {
                self.rate = None;
                self.bucket = Some((bucket, true));
                self.count = 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct Manual(Arc<AtomicU64>);

    impl Manual {
        fn now(&self) -> Duration {
            Duration::from_nanos(self.0.load(Ordering::Acquire))
        }
        fn set(&self, at: Duration) {
            assert!(
                at >= self.now(),
                "the clock goes back: {at:?} < {:?}",
                self.now()
            );
            self.0.store(nanos(at), Ordering::Release);
        }
        fn advance(&self, by: Duration) {
            self.set(self.now() + by);
        }
    }

    fn manual(per_second: u32, burst: u32) -> (RateLimiter, Manual) {
        let time = Manual(Arc::new(AtomicU64::new(0)));
        let clock = LimiterClock {
            origin: Instant::now(),
            manual: Some(time.0.clone()),
        };
        (
            RateLimiter::with_clock(nz(per_second), nz(burst), clock),
            time,
        )
    }

    /// Takes cells as `acquire` would, moving the clock to each instant `acquire` would sleep
    /// until, and returns the times the cells were handed out, up to `until` (excluded).
    fn hand_out(limiter: &RateLimiter, clock: &Manual, until: Duration) -> Vec<Duration> {
        let mut cells = Vec::new();
        loop {
            match limiter.poll_cell() {
                Cell::Ready => cells.push(clock.now()),
                Cell::ReadyAt(at) | Cell::NotBefore(at) if at >= until => return cells,
                Cell::ReadyAt(at) => {
                    clock.set(at);
                    cells.push(at);
                }
                Cell::NotBefore(at) => {
                    assert!(at > clock.now(), "no progress at {at:?}");
                    clock.set(at);
                }
            }
        }
    }

    /// Moves the clock to the end of the group pause, if one is in force.
    fn after_pause(limiter: &RateLimiter, clock: &Manual) {
        let until = Duration::from_nanos(limiter.paused_until_nanos.load(Ordering::Acquire));
        if until > clock.now() {
            clock.set(until);
        }
    }

    /// Answers every `every` until `until` (excluded), the `n`-th a 429 when `throttled(n)`.
    fn answer_until(
        limiter: &RateLimiter,
        clock: &Manual,
        every: Duration,
        until: Duration,
        throttled: impl Fn(usize) -> bool,
    ) {
        let mut n = 0;
        while clock.now() < until {
            limiter.on_answer(throttled(n), Some(Duration::from_secs(3)));
            n += 1;
            clock.advance(every);
        }
    }

    fn paused(limiter: &RateLimiter, clock: &Manual) -> bool {
        limiter.paused_until_nanos.load(Ordering::Acquire) > nanos(clock.now())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_send_rate_starts_at_the_ceiling() {
        let (limiter, _clock) = manual(100, 10);
        assert_eq!(limiter.rate_now(), 100.0);
        assert!(!limiter.pacing.load(Ordering::Acquire));
        limiter.set_share(1, 4);
        assert_eq!(limiter.per_second_now(), 25);
        assert_eq!(limiter.rate_now(), 25.0);
    }

    #[test]
    fn stray_429s_below_the_tolerance_neither_cut_nor_pause() {
        let (limiter, clock) = manual(100, 10);
        // The very first answer a 429, then one answer in ten: 10%, below the tolerance.
        let mut n = 0;
        while clock.now() < 10 * S {
            limiter.on_answer(n % 10 == 0, Some(Duration::from_secs(3)));
            assert_eq!(limiter.rate_now(), 100.0, "cut at {:?}", clock.now());
            assert!(!paused(&limiter, &clock), "paused at {:?}", clock.now());
            n += 1;
            clock.advance(10 * MS);
        }
        assert!(!limiter.pacing.load(Ordering::Acquire));
    }

    #[test]
    fn a_single_429_among_few_answers_does_not_cut() {
        let (limiter, clock) = manual(100, 10);
        limiter.on_answer(false, None);
        clock.advance(300 * MS);
        limiter.on_answer(true, None);
        clock.advance(300 * MS);
        limiter.on_answer(false, None);
        assert_eq!(limiter.rate_now(), 100.0);
    }

    #[test]
    fn sustained_429s_cut_by_beta_once_per_interval_down_to_the_floor() {
        let (limiter, clock) = manual(100, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        assert_eq!(limiter.rate_now(), 100.0);
        // Only 429s from now on, at the same pace: a cut, then one per interval.
        let mut cuts: Vec<(Duration, f64)> = Vec::new();
        let mut rate = limiter.rate_now();
        while clock.now() < 30 * S {
            limiter.on_answer(true, None);
            if limiter.rate_now() != rate {
                cuts.push((clock.now(), limiter.rate_now()));
                rate = limiter.rate_now();
            }
            clock.advance(10 * MS);
        }
        assert!(cuts.len() >= 10, "{cuts:?}");
        // The first once the 429s pass the tolerance in the window (2 s of 200s before them).
        assert!(cuts[0].0 < S + 500 * MS, "{cuts:?}");
        let mut before = 100.0;
        for (i, &(at, rate)) in cuts.iter().enumerate() {
            assert!(
                close(rate, (before * BETA).max(MIN_RATE)),
                "cut {i}: {cuts:?}"
            );
            if i > 0 {
                assert!(at - cuts[i - 1].0 >= CUT_INTERVAL, "cut {i}: {cuts:?}");
            }
            before = rate;
        }
        assert_eq!(limiter.rate_now(), MIN_RATE);
        assert!(limiter.pacing.load(Ordering::Acquire));
    }

    #[test]
    fn a_burst_of_429s_from_one_window_cuts_once() {
        let (limiter, clock) = manual(100, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        // 60 429s within 0.6 s: a single cut.
        answer_until(&limiter, &clock, 10 * MS, S + 600 * MS, |_| true);
        assert!(close(limiter.rate_now(), 70.0), "{}", limiter.rate_now());
        // Successes from then on only recover; a 429 once the burst has left the window is a
        // stray one again.
        answer_until(&limiter, &clock, 10 * MS, 3 * S + 700 * MS, |_| false);
        let before = limiter.rate_now();
        assert!(before > 70.0, "{before}");
        let pause = limiter.paused_until_nanos.load(Ordering::Acquire);
        limiter.on_answer(true, None);
        assert_eq!(limiter.rate_now(), before);
        assert_eq!(limiter.paused_until_nanos.load(Ordering::Acquire), pause);
    }

    #[test]
    fn the_measured_rate_skips_partial_buckets_and_forgets_idle_times() {
        let mut measured = Measured::default();
        // The first bucket begins at the first answer: not counted.
        for i in 0..40 {
            measured.record(300 * MS + i * 5 * MS);
        }
        assert_eq!(measured.rate, None);
        // A whole bucket at 200/s, then one at 100/s: smoothed.
        for i in 0..100 {
            measured.record(500 * MS + i * 5 * MS);
        }
        assert_eq!(measured.rate, None);
        for i in 0..50 {
            measured.record(S + i * 10 * MS);
        }
        assert_eq!(measured.rate, Some(200.0));
        measured.record(S + 500 * MS);
        let smoothed = 100.0 * SMOOTH + 200.0 * (1.0 - SMOOTH);
        assert!(close(measured.rate.expect("known"), smoothed));
        // A bucket or more without answers: unknown again.
        measured.record(3 * S);
        assert_eq!(measured.rate, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_keep_the_reduced_pace() {
        let limiter = Arc::new(RateLimiter::new(nz(1000), nz(100)));
        // A cut from the rate in force (nothing measured yet); a zero Retry-After makes the
        // group pause that comes with it empty.
        for _ in 0..30 {
            limiter.on_answer(true, Some(Duration::ZERO));
        }
        let rate = limiter.rate_now();
        assert!(close(rate, 700.0), "{rate}");
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    l.acquire().await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        // 80 cells at 700/s whoever takes them: no burst of 100 at the ceiling after the cut,
        // only the pacing slack's.
        let least = Duration::from_secs_f64((79.0 - rate * PACE_SLACK.as_secs_f64()) / rate);
        assert!(started.elapsed() >= least, "{:?}", started.elapsed());
    }

    #[test]
    fn cubic_recovers_to_the_ceiling_along_the_cubic_curve() {
        // A ceiling far above what is sent: the cut starts from the measured rate (100/s).
        let (limiter, clock) = manual(1000, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        answer_until(&limiter, &clock, 10 * MS, S + 300 * MS, |_| true);
        let control = lock(&limiter.control);
        let (cut, w_max, k) = (
            control.last_cut.expect("a cut"),
            control.last_max,
            control.k,
        );
        drop(control);
        assert!(close(w_max, 100.0), "W_max {w_max}");
        assert!(close(k, (100.0 * (1.0 - BETA) / SCALE).cbrt()), "K {k}");
        assert!(close(limiter.rate_now(), 70.0));
        // Successes only from now on, one per 10 ms and one at exactly K after the cut; the rate
        // follows W(t) after each, and is back at W_max at K.
        let w = |t: f64| SCALE * (t - k).powi(3) + w_max;
        let at_k = cut + Duration::from_secs_f64(k);
        let mut times: Vec<Duration> = (1..3000)
            .map(|i| clock.now() + i * 10 * MS)
            .chain([at_k])
            .collect();
        times.sort();
        let mut last = limiter.rate_now();
        for at in times {
            clock.set(at);
            limiter.on_answer(false, None);
            let t = (at - cut).as_secs_f64();
            let rate = limiter.rate_now();
            assert!(rate >= last, "the rate fell during the recovery at {t}");
            assert!(close(rate, w(t).min(1000.0)), "at {t}: {rate} vs {}", w(t));
            if at == at_k {
                assert!((rate - w_max).abs() < 1e-6, "at K: {rate}");
            }
            last = rate;
        }
        // At the ceiling after ∛((1000 − W_max) / C) more: pacing off, the GCRA alone.
        let t_ceiling = k + ((1000.0 - w_max) / SCALE).cbrt();
        assert!(clock.now() > cut + Duration::from_secs_f64(t_ceiling));
        assert_eq!(limiter.rate_now(), 1000.0);
        assert!(!limiter.pacing.load(Ordering::Acquire));
    }

    #[test]
    fn mostly_429s_pause_every_caller_for_the_retry_after() {
        let (limiter, clock) = manual(100, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        // 1 in 3 answers refused: a cut, but the group keeps going.
        answer_until(&limiter, &clock, 10 * MS, 3 * S, |n| n % 3 == 0);
        assert!(limiter.rate_now() < 100.0);
        assert!(!paused(&limiter, &clock));
        assert!(matches!(limiter.poll_cell(), Cell::Ready));
        // Then nearly all refused: every caller waits for the Retry-After (3 s) of the 429
        // that decided the pause.
        let mut decided = None;
        while decided.is_none() {
            limiter.on_answer(true, Some(Duration::from_secs(3)));
            if paused(&limiter, &clock) {
                decided = Some(clock.now());
            }
            clock.advance(10 * MS);
        }
        let decided = decided.expect("paused");
        for _ in 0..3 {
            assert_eq!(limiter.poll_cell(), Cell::NotBefore(decided + 3 * S));
        }
        clock.set(decided + 3 * S);
        assert!(matches!(
            limiter.poll_cell(),
            Cell::Ready | Cell::ReadyAt(_)
        ));
    }

    #[test]
    fn a_pause_without_retry_after_lasts_the_default() {
        let (limiter, clock) = manual(100, 10);
        let mut decided = Duration::ZERO;
        while !paused(&limiter, &clock) {
            decided = clock.now();
            limiter.on_answer(true, None);
            clock.advance(10 * MS);
        }
        assert_eq!(
            limiter.poll_cell(),
            Cell::NotBefore(decided + DEFAULT_PAUSE)
        );
    }

    #[test]
    fn the_send_rate_never_exceeds_the_share_ceiling() {
        let (limiter, clock) = manual(400, 40);
        limiter.set_share(1, 4);
        assert_eq!(limiter.rate_now(), 100.0);
        answer_until(&limiter, &clock, 5 * MS, 5 * S, |_| false);
        assert_eq!(limiter.rate_now(), 100.0);
        // A cut, a long recovery: the rate stops at the ceiling.
        answer_until(&limiter, &clock, 5 * MS, 6 * S, |n| n % 2 == 0);
        assert!(limiter.rate_now() < 100.0);
        let mut n = 0;
        while clock.now() < 60 * S {
            limiter.on_answer(false, None);
            assert!(limiter.rate_now() <= 100.0, "{}", limiter.rate_now());
            n += 1;
            clock.advance(5 * MS);
        }
        assert!(n > 0);
        assert_eq!(limiter.rate_now(), 100.0);
        // What acquire hands out: the ceiling plus at most the share of the burst (10).
        let start = clock.now();
        let cells = hand_out(&limiter, &clock, start + 10 * S);
        assert!(cells.len() <= 1000 + 10, "{}", cells.len());
    }

    #[test]
    fn the_send_rate_is_what_acquire_hands_out() {
        let (limiter, clock) = manual(100, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        answer_until(&limiter, &clock, 10 * MS, S + 300 * MS, |_| true);
        let rate = limiter.rate_now();
        assert!(close(rate, 70.0), "{rate}");
        // (All those 429s paused the group too.)
        after_pause(&limiter, &clock);
        let start = clock.now();
        let cells = hand_out(&limiter, &clock, start + 10 * S);
        // 70 per second, evenly spaced: no burst above the reduced rate (the pacing slack is
        // less than one interval at this rate).
        assert!((700..=702).contains(&cells.len()), "{}", cells.len());
        let interval = Duration::from_secs_f64(1.0 / rate);
        for pair in cells.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap + PACE_SLACK + Duration::from_nanos(1) >= interval,
                "{gap:?}"
            );
        }
        for pair in cells[1..].windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap + Duration::from_nanos(1) >= interval, "{gap:?}");
        }
    }

    #[test]
    fn a_share_clamps_the_send_rate_and_a_cut_survives_the_change() {
        let (limiter, clock) = manual(100, 10);
        answer_until(&limiter, &clock, 10 * MS, S, |_| false);
        answer_until(&limiter, &clock, 10 * MS, S + 300 * MS, |_| true);
        assert!(close(limiter.rate_now(), 70.0));
        limiter.set_share(1, 4);
        assert_eq!(limiter.rate_now(), 25.0);
        assert!(!limiter.pacing.load(Ordering::Acquire));
        // Back to the whole quota: the rate is where CUBIC left it, not the ceiling.
        limiter.set_share(4, 4);
        assert!(close(limiter.rate_now(), 70.0), "{}", limiter.rate_now());
        assert!(limiter.pacing.load(Ordering::Acquire));
    }

    #[test]
    fn the_rate_holds_after_the_burst() {
        let (limiter, clock) = manual(200, 1);
        // 1 cell at once, then one every 5 ms.
        let cells = hand_out(&limiter, &clock, Duration::from_millis(200));
        assert_eq!(cells.len(), 40, "{cells:?}");
        assert_eq!(cells[0], Duration::ZERO);
        assert_eq!(cells[39], 195 * MS);
    }

    #[test]
    fn the_burst_goes_out_without_waiting() {
        let (limiter, _clock) = manual(1, 10);
        for _ in 0..10 {
            assert_eq!(limiter.poll_cell(), Cell::Ready);
        }
        // The eleventh waits a second.
        assert_eq!(limiter.poll_cell(), Cell::NotBefore(S));
    }

    #[tokio::test]
    async fn acquire_counts_waits_and_passes_the_burst_at_once() {
        let limiter = RateLimiter::new(nz(1_000_000), nz(1_000));
        for _ in 0..1_000 {
            assert_eq!(limiter.acquire().await, Duration::ZERO);
        }
        assert_eq!(limiter.waits(), 0);
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

    #[test]
    fn a_share_of_the_quota_limits_the_rate_and_the_burst() {
        let (limiter, clock) = manual(400, 40);
        limiter.set_share(3, 12); // a quarter: 100/s, and no burst right after the change
        assert_eq!(limiter.per_second_now(), 100);
        let cells = hand_out(&limiter, &clock, Duration::from_millis(200));
        // One cell per 10 ms, the first after one interval.
        assert_eq!(cells.len(), 19, "{cells:?}");
        assert_eq!(cells[0], 10 * MS);
        // Back to the whole quota: 400/s from now on, without a fresh burst.
        limiter.set_share(12, 12);
        let start = clock.now();
        let cells = hand_out(&limiter, &clock, start + 100 * MS);
        assert!((39..=41).contains(&cells.len()), "{}", cells.len());
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
