//! The scorer's consume loop: `esg.account-events` in, one `EsgScore` per event out to
//! `esg.scores`, with a bounded window of in-flight API calls.
//!
//! Delivery guarantee: at-least-once, with duplicates suppressed across crashes.
//! - A score is published (durably) before the offset of its event is committed, and the
//!   committed offset of a partition never passes an event whose score is not yet durable: the
//!   commit position is the lowest offset still in flight (or buffered), else the next offset.
//! - Events complete out of order, so after a crash some events past the committed offset
//!   already have their score. To avoid calling the API for them again, every commit carries in
//!   its metadata the end offset that the scores partition had when the lowest pending event
//!   was received. `esg.scores` and `esg.account-events` have the same partition count and the
//!   same key (account id), so an event of partition `p` has its score in partition `p` of
//!   `esg.scores`, written after the event was received. On assignment the scorer reads scores
//!   partition `p` from that recorded offset to its end and skips every event whose
//!   `(source_partition, source_offset)` it finds there.
//! - This holds while one scorer owns a partition at a time (the group protocol's promise);
//!   during a rebalance the worst case is one API call too many for an in-flight event, never a
//!   lost score.

use crate::api::{ApiOutcome, BreakerCause, Call, EsgApiClient};
use crate::breaker::{Breaker, Opened};
use chrono::{DateTime, NaiveDate, Utc};
use esg_bus::runs::RunBook;
use esg_bus::{BusError, CommitOffset, Consumer, Delivery, EventBus, Message, RangeReader};
use esg_schemas::{AccountChanged, EsgScore, Event, ScoreStatus};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// `[scorer]` configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// Consumer group of the scorers.
    pub group: String,
    /// Completed scores are published at least this often.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// ... or as soon as this many are waiting.
    pub flush_max: usize,
    /// How long in-flight calls may finish after a stop is asked for.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        ScorerConfig {
            group: "esg-scorer".into(),
            flush_interval: Duration::from_millis(100),
            flush_max: 256,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Errors that end the scorer: the bus failing, or the circuit breaker. A failure of one
/// account's call never does.
#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The circuit breaker opened ([`crate::breaker`]): scoring stopped; the accounts not scored
    /// have no score and their events are not committed, so the same command run again once
    /// the cause is fixed scores them.
    #[error("scoring stopped by the circuit breaker: {consecutive} accounts in a row failed because {cause} (last error: {last_error}); accounts not scored stay pending: fix the cause, then run the same command again to resume")]
    Breaker {
        cause: BreakerCause,
        consecutive: u32,
        last_error: String,
    },
    #[error("topics {events} ({events_partitions} partitions) and {scores} ({scores_partitions}) must have the same partition count")]
    NotCoPartitioned {
        events: String,
        events_partitions: i32,
        scores: String,
        scores_partitions: i32,
    },
}

/// Counters of one scorer's life.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScorerStats {
    pub events: u64,
    pub scored: u64,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    /// Events whose score was already on the bus (found after a restart).
    pub already_scored: u64,
    /// Events of a run that had completed or passed its deadline.
    pub closed_run: u64,
    /// Events that could not be decoded (logged with partition and offset).
    pub undecodable: u64,
}

/// Offsets of one partition between receipt and durable score.
#[derive(Default)]
struct PartitionState {
    /// Received, not yet durable: offset → scores end offset when it was received.
    pending: BTreeMap<i64, i64>,
    /// Next offset after the highest received.
    next: i64,
    /// Last committed position.
    committed: i64,
    /// This scorer's view of the end of the scores partition of the same number.
    scores_end: i64,
}

impl PartitionState {
    fn commit_point(&self) -> (i64, i64) {
        match self.pending.first_key_value() {
            Some((offset, scores_end)) => (*offset, *scores_end),
            None => (self.next, self.scores_end),
        }
    }
}

/// How often the consumer lag is looked up.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

struct Done {
    partition: i32,
    offset: i64,
    score: Option<EsgScore>,
    /// The call ended with a failure the circuit breaker counts: its cause and `CODE: message`.
    breaker: Option<(BreakerCause, String)>,
}

/// Routes a finished call through the breaker: an authentication failure is held back,
/// anything else ends the streak and goes (after the held ones) to the publish buffer.
fn settle(done: Done, breaker: &mut Breaker<Done>, buffer: &mut Vec<Done>) -> Option<Opened> {
    let mut done = done;
    match done.breaker.take() {
        Some((cause, error)) => breaker.hold(done, cause, error),
        None => {
            buffer.extend(breaker.pass());
            buffer.push(done);
            None
        }
    }
}

/// One scorer: a member of the scorer group.
pub struct Scorer {
    bus: EventBus,
    client: Arc<EsgApiClient>,
    config: ScorerConfig,
    max_in_flight: usize,
}

impl Scorer {
    pub fn new(
        bus: EventBus,
        client: Arc<EsgApiClient>,
        config: ScorerConfig,
        max_in_flight: usize,
    ) -> Self {
        Scorer {
            bus,
            client,
            config,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Consumes and scores until `shutdown`; then lets in-flight calls finish (up to the grace
    /// period), publishes their scores, commits and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> Result<ScorerStats, ScorerError> {
        let events_topic = self.bus.topics.account_events.clone();
        let scores_topic = self.bus.topics.scores.clone();
        let ep = self.bus.transport.partitions(&events_topic).await?;
        let sp = self.bus.transport.partitions(&scores_topic).await?;
        if ep != sp {
            return Err(ScorerError::NotCoPartitioned {
                events: events_topic,
                events_partitions: ep,
                scores: scores_topic,
                scores_partitions: sp,
            });
        }
        let mut consumer = self
            .bus
            .transport
            .subscribe(&self.config.group, &events_topic)
            .await?;
        let result = self.consume(consumer.as_mut(), ep, &shutdown).await;
        let _ = consumer.close().await;
        result
    }

    async fn consume(
        &self,
        consumer: &mut dyn Consumer,
        partitions: i32,
        shutdown: &CancellationToken,
    ) -> Result<ScorerStats, ScorerError> {
        let mut stats = ScorerStats::default();
        let mut runs = RunBook::read(&self.bus).await?;
        let mut parts: HashMap<i32, PartitionState> = HashMap::new();
        let mut skip: HashSet<(i32, i64)> = HashSet::new();
        let mut queue: VecDeque<Message> = VecDeque::new();
        let mut in_flight = FuturesUnordered::new();
        let mut buffer: Vec<Done> = Vec::new();
        let mut breaker: Breaker<Done> = Breaker::new(self.client.config().breaker_consecutive);
        let mut opened: Option<Opened> = None;
        let mut tick = tokio::time::interval(self.config.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The window of accounts: while batching, enough for `max_in_flight` full batches.
        let max = self
            .max_in_flight
            .saturating_mul(self.client.accounts_per_request());
        let mut last_lag = tokio::time::Instant::now()
            .checked_sub(LAG_INTERVAL)
            .unwrap_or_else(tokio::time::Instant::now);

        loop {
            // Start work while the window has room.
            while in_flight.len() < max {
                let Some(m) = queue.pop_front() else { break };
                stats.events += 1;
                match self.prepare(&m, &mut runs, &skip, &mut stats).await? {
                    Some(Work {
                        event,
                        as_of,
                        deadline,
                    }) => {
                        let client = self.client.clone();
                        let span = tracing::info_span!("score", run_id = %event.run_id, account_id = %event.account_id);
                        let (partition, offset) = (m.partition, m.offset);
                        in_flight.push(
                            async move {
                                let outcome = client
                                    .score(Call {
                                        account_id: &event.account_id,
                                        as_of,
                                        prior: event.prior.as_ref(),
                                        deadline,
                                    })
                                    .await;
                                let breaker = outcome.result.as_ref().err().and_then(|f| {
                                    f.breaker_cause().map(|cause| (cause, f.to_string()))
                                });
                                let score = to_score(&event, outcome, partition, offset);
                                Done {
                                    partition,
                                    offset,
                                    score: Some(score),
                                    breaker,
                                }
                            }
                            .instrument(span),
                        );
                    }
                    None => buffer.push(Done {
                        partition: m.partition,
                        offset: m.offset,
                        score: None,
                        breaker: None,
                    }),
                }
            }
            let can_fetch = queue.len() < max && !shutdown.is_cancelled();
            let wait = if in_flight.is_empty() && buffer.is_empty() {
                Duration::from_millis(500)
            } else {
                self.config.flush_interval
            };
            tokio::select! {
                _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    opened = settle(done, &mut breaker, &mut buffer);
                    if buffer.len() >= self.config.flush_max {
                        self.flush(consumer, &mut parts, &mut buffer, &mut stats).await?;
                    }
                }
                _ = tick.tick() => {
                    if breaker.held() > 0
                        && in_flight.is_empty()
                        && queue.is_empty()
                        && self.drained(&parts).await
                    {
                        // No call could extend the streak soon: what it holds are failures.
                        buffer.extend(breaker.release());
                    }
                    self.flush(consumer, &mut parts, &mut buffer, &mut stats).await?;
                    metrics::gauge!(esg_metrics::API_IN_FLIGHT).set(in_flight.len() as f64);
                    if last_lag.elapsed() >= LAG_INTERVAL {
                        last_lag = tokio::time::Instant::now();
                        self.report_lag(&parts).await;
                    }
                }
                delivery = consumer.next(max, wait), if can_fetch => {
                    match delivery? {
                        Some(Delivery::Assigned(assigned)) => {
                            for (p, committed) in assigned {
                                let state = self.assign(consumer, p, committed, &mut skip).await?;
                                parts.insert(p, state);
                            }
                            self.client.limiter().set_share(parts.len() as u32, partitions as u32);
                        }
                        Some(Delivery::Revoked(revoked)) => {
                            // Events not yet started are dropped; in-flight ones finish and
                            // publish, but their partition is no longer committed by us.
                            queue.retain(|m| !revoked.contains(&m.partition));
                            for p in revoked {
                                parts.remove(&p);
                            }
                            self.client.limiter().set_share(parts.len() as u32, partitions as u32);
                        }
                        Some(Delivery::Messages(messages)) => {
                            for m in messages {
                                let Some(state) = parts.get_mut(&m.partition) else { continue };
                                state.pending.insert(m.offset, state.scores_end);
                                state.next = state.next.max(m.offset + 1);
                                queue.push_back(m);
                            }
                        }
                        None => {}
                    }
                }
            }
            if shutdown.is_cancelled() || opened.is_some() {
                break;
            }
        }

        if let Some(opened) = opened {
            return Err(self
                .stop_by_breaker(
                    consumer,
                    opened,
                    in_flight.len(),
                    &mut parts,
                    &mut buffer,
                    &mut stats,
                )
                .await);
        }

        // Stop: let in-flight calls finish within the grace period, publish, commit. Outcomes
        // the breaker still holds stay unpublished, like abandoned calls: scored after restart.
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        while !in_flight.is_empty() {
            tokio::select! {
                Some(done) = in_flight.next() => {
                    if let Some(opened) = settle(done, &mut breaker, &mut buffer) {
                        let running = in_flight.len();
                        return Err(self
                            .stop_by_breaker(consumer, opened, running, &mut parts, &mut buffer, &mut stats)
                            .await);
                    }
                }
                _ = &mut grace => {
                    tracing::warn!(abandoned = in_flight.len(), "stopping with calls in flight; their events will be scored again after restart");
                    break;
                }
            }
        }
        self.flush(consumer, &mut parts, &mut buffer, &mut stats)
            .await?;
        tracing::info!(
            events = stats.events,
            scored = stats.scored,
            failed = stats.failed,
            already_scored = stats.already_scored,
            "scorer stopped"
        );
        Ok(stats)
    }

    /// The breaker opened: calls in flight are abandoned (their futures are dropped by the
    /// caller), what finished outside the streak is published and committed up to the first
    /// event without a score, and the breaker's error is returned (or the bus's, if that fails).
    async fn stop_by_breaker(
        &self,
        consumer: &mut dyn Consumer,
        opened: Opened,
        abandoned: usize,
        parts: &mut HashMap<i32, PartitionState>,
        buffer: &mut Vec<Done>,
        stats: &mut ScorerStats,
    ) -> ScorerError {
        if let Err(e) = self.flush(consumer, parts, buffer, stats).await {
            return e;
        }
        let pending: usize = parts.values().map(|p| p.pending.len()).sum();
        tracing::error!(
            error_code = opened.cause.code(),
            consecutive = opened.consecutive,
            abandoned,
            pending,
            scored = stats.scored,
            error = %opened.last_error,
            "circuit breaker open: scoring stopped, accounts not scored stay pending"
        );
        ScorerError::Breaker {
            cause: opened.cause,
            consecutive: opened.consecutive,
            last_error: opened.last_error,
        }
    }

    /// Decides what to do with one event: `Some(work)` to score it, `None` to skip it.
    async fn prepare(
        &self,
        m: &Message,
        runs: &mut RunBook,
        skip: &HashSet<(i32, i64)>,
        stats: &mut ScorerStats,
    ) -> Result<Option<Work>, ScorerError> {
        if skip.contains(&(m.partition, m.offset)) {
            stats.already_scored += 1;
            return Ok(None);
        }
        let event = match self.bus.decode(m.value.as_deref()) {
            Ok(Some(Event::AccountChanged(a))) => a,
            Ok(_) => return Ok(None),
            Err(e) => {
                stats.undecodable += 1;
                tracing::error!(partition = m.partition, offset = m.offset, error = %e, "undecodable account event skipped");
                return Ok(None);
            }
        };
        if runs.get(&event.run_id).is_none() {
            runs.refresh(&self.bus).await?;
        }
        let (as_of, deadline) = match runs.get(&event.run_id) {
            Some(run) => {
                if run.completed.is_some() || Utc::now() >= run.deadline {
                    stats.closed_run += 1;
                    tracing::debug!(run_id = %event.run_id, account_id = %event.account_id, "event of a closed run skipped");
                    return Ok(None);
                }
                (run.business_date, Some(run.deadline))
            }
            None => {
                // The trigger is published before any event of its run; one missing means the
                // triggers topic lost it (retention). Score as of today rather than drop it.
                tracing::warn!(run_id = %event.run_id, account_id = %event.account_id,
                    "event of a run without a trigger on the triggers topic: scored as of today");
                (Utc::now().date_naive(), None)
            }
        };
        Ok(Some(Work {
            event,
            as_of,
            deadline,
        }))
    }

    /// True when every event of this scorer's partitions has been received (none waits on the
    /// topic). A failure to look up the ends counts as not drained.
    async fn drained(&self, parts: &HashMap<i32, PartitionState>) -> bool {
        match self
            .bus
            .transport
            .end_offsets(&self.bus.topics.account_events)
            .await
        {
            Ok(ends) => parts
                .iter()
                .all(|(p, s)| ends.get(*p as usize).is_none_or(|end| s.next >= *end)),
            Err(_) => false,
        }
    }

    /// Sets `esg_scorer_consumer_lag_records`: events of this scorer's partitions not yet
    /// committed as scored. A failure to look up the ends only skips this report.
    async fn report_lag(&self, parts: &HashMap<i32, PartitionState>) {
        if let Ok(ends) = self
            .bus
            .transport
            .end_offsets(&self.bus.topics.account_events)
            .await
        {
            let lag: i64 = parts
                .iter()
                .map(|(p, s)| {
                    ends.get(*p as usize)
                        .map_or(0, |e| (e - s.committed).max(0))
                })
                .sum();
            metrics::gauge!(esg_metrics::SCORER_CONSUMER_LAG_RECORDS).set(lag as f64);
        }
    }

    /// Takes a partition: finds events already scored past the committed offset, and makes
    /// sure the partition has a commit (with metadata) from the start.
    async fn assign(
        &self,
        consumer: &mut dyn Consumer,
        p: i32,
        committed: Option<esg_bus::Committed>,
        skip: &mut HashSet<(i32, i64)>,
    ) -> Result<PartitionState, ScorerError> {
        let scores = &self.bus.topics.scores;
        let scores_end = self.bus.transport.end_offsets(scores).await?[p as usize];
        let start = match &committed {
            Some(c) => c.offset,
            None => {
                self.bus
                    .transport
                    .start_offsets(&self.bus.topics.account_events)
                    .await?[p as usize]
            }
        };
        if let Some(c) = &committed {
            if let Some(from) = parse_metadata(&c.metadata) {
                let mut found = 0u64;
                let mut range =
                    RangeReader::new(&*self.bus.transport, scores, p, from, scores_end, 2000);
                while let Some(batch) = range.next_batch().await? {
                    for m in batch {
                        if let Ok(Some(Event::EsgScore(s))) = self.bus.decode(m.value.as_deref()) {
                            if s.source_partition == p && s.source_offset >= c.offset {
                                skip.insert((p, s.source_offset));
                                found += 1;
                            }
                        }
                    }
                }
                if found > 0 {
                    tracing::info!(
                        partition = p,
                        found,
                        "resume: events already scored past the committed offset are skipped"
                    );
                }
            }
        }
        // Commit the starting point with metadata now, so a crash before the first real
        // commit still knows where to look.
        consumer
            .commit(&[CommitOffset {
                partition: p,
                offset: start,
                metadata: metadata(scores_end),
            }])
            .await?;
        Ok(PartitionState {
            pending: BTreeMap::new(),
            next: start,
            committed: start,
            scores_end,
        })
    }

    /// Publishes buffered scores, then commits every partition whose commit point moved.
    async fn flush(
        &self,
        consumer: &mut dyn Consumer,
        parts: &mut HashMap<i32, PartitionState>,
        buffer: &mut Vec<Done>,
        stats: &mut ScorerStats,
    ) -> Result<(), ScorerError> {
        if !buffer.is_empty() {
            let done = std::mem::take(buffer);
            let events: Vec<(String, Event)> = done
                .iter()
                .filter_map(|d| d.score.clone())
                .map(|s| (s.account_id.clone(), Event::EsgScore(s)))
                .collect();
            let positions = self.bus.publish(&self.bus.topics.scores, &events).await?;
            for pos in positions {
                if let Some(state) = parts.get_mut(&pos.partition) {
                    state.scores_end = state.scores_end.max(pos.offset + 1);
                }
            }
            for d in &done {
                if let Some(state) = parts.get_mut(&d.partition) {
                    state.pending.remove(&d.offset);
                }
                if let Some(s) = &d.score {
                    stats.scored += 1;
                    match s.status {
                        ScoreStatus::Successful => stats.successful += 1,
                        ScoreStatus::Partial => stats.partial += 1,
                        ScoreStatus::Failed => {
                            stats.failed += 1;
                            account_failed(s);
                        }
                    }
                }
            }
        }
        let mut commits = Vec::new();
        for (p, state) in parts.iter_mut() {
            let (offset, scores_end) = state.commit_point();
            if offset > state.committed {
                commits.push(CommitOffset {
                    partition: *p,
                    offset,
                    metadata: metadata(scores_end),
                });
                state.committed = offset;
            }
        }
        if !commits.is_empty() {
            consumer.commit(&commits).await?;
        }
        Ok(())
    }
}

fn metadata(scores_end: i64) -> String {
    format!("scores_from={scores_end}")
}

fn parse_metadata(m: &str) -> Option<i64> {
    m.strip_prefix("scores_from=")?.parse().ok()
}

/// An account failed for good (its `Failed` score is durable): logged at WARN, once per
/// account, with the facts and never the account's name. Retries are logged below WARN.
fn account_failed(score: &EsgScore) {
    tracing::warn!(
        run_id = %score.run_id,
        account_id = %score.account_id,
        attempts = score.attempts,
        error_code = score.error_code.as_deref().unwrap_or(""),
        error = score.error_message.as_deref().unwrap_or(""),
        "account failed"
    );
}

/// One event to score: the event, the date its analysis is asked as of, and its run's deadline.
struct Work {
    event: AccountChanged,
    as_of: NaiveDate,
    deadline: Option<DateTime<Utc>>,
}

/// The score of one API outcome for `event`.
fn to_score(event: &AccountChanged, outcome: ApiOutcome, partition: i32, offset: i64) -> EsgScore {
    let (run_id, account_id, version) = (&event.run_id, &event.account_id, event.version);
    let now = Utc::now();
    let attempts = outcome.attempts as i32;
    let requests = i32::try_from(outcome.requests).unwrap_or(i32::MAX);
    let rate_limited_requests = i32::try_from(outcome.rate_limited_requests).unwrap_or(i32::MAX);
    match outcome.result {
        Ok(a) => {
            let values = a.values();
            let partial = values.is_partial();
            EsgScore {
                run_id: run_id.to_owned(),
                account_id: account_id.to_owned(),
                account_version: version,
                status: values.scored_status(),
                values,
                attempts,
                error_code: partial.then(|| "PARTIAL".to_owned()),
                error_message: partial
                    .then(|| "the API left a score or the primary focus empty".to_owned()),
                scored_at: now,
                source_partition: partition,
                source_offset: offset,
                requests,
                etag: a.etag,
                rate_limited_requests,
            }
        }
        Err(f) => EsgScore {
            source_partition: partition,
            source_offset: offset,
            requests,
            rate_limited_requests,
            ..EsgScore::failed(
                run_id, account_id, version, attempts, &f.code, f.message, now,
            )
        },
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod loop_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        assert_eq!(parse_metadata(&metadata(42)), Some(42));
        assert_eq!(parse_metadata(""), None);
        assert_eq!(parse_metadata("garbage"), None);
    }

    #[test]
    fn commit_point_is_lowest_pending_with_its_snapshot() {
        let mut s = PartitionState {
            next: 10,
            scores_end: 100,
            ..Default::default()
        };
        assert_eq!(s.commit_point(), (10, 100));
        s.pending.insert(12, 90);
        s.pending.insert(11, 80);
        s.next = 13;
        assert_eq!(s.commit_point(), (11, 80));
        s.pending.remove(&11);
        assert_eq!(s.commit_point(), (12, 90));
        s.pending.clear();
        assert_eq!(s.commit_point(), (13, 100));
    }
}
