//! The assembler: materialises the latest score per account from the bus into a local state
//! store, decides when a run is complete (or its deadline has come), and writes the day's files.
//!
//! - [`state`]: the state store and how each event changes it (exactly-once, see there).
//! - [`output`]: the ratings file and its errors file (format, order, atomic write, re-runs).
//! - [`parquet`]: the same rows as Parquet for the warehouse (`[output] parquet`).
//! - [`summary`]: the daily summary.
//!
//! Completion (DESIGN section 3): a run is complete when its `RunSealed` has been read, the
//! assembler has read `esg.accounts` and `esg.account-events` at least up to where they ended
//! when the seal was read (so the roster and the run's expected accounts are all known), and
//! every expected account has an `EsgScore` of the run. At the run's deadline it is assembled
//! with whatever is there: expected accounts without a score of the run are `Failed` with
//! error code `DEADLINE`. Then `RunCompleted` is published; a restarted assembler that finds it
//! does not write the run again.

pub mod encryption;
pub mod history;
pub mod output;
pub mod parquet;
pub mod report;
pub mod state;
pub mod summary;

use chrono::{DateTime, NaiveDate, Utc};
use esg_bus::{BusError, EventBus, RangeReader, Store, StoreError};
use esg_schemas::{EsgValues, Event, Pillar, RunCompleted, RunOutcome, RunSealed, ScoreStatus};
use output::{OutputError, OutputWriter, Row};
use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use summary::{DayFacts, Provenance, RerunEntry, RunFacts, Summary, Tally};
use tokio_util::sync::CancellationToken;

/// Error code of an account that was not scored by the run's deadline.
pub const DEADLINE: &str = "DEADLINE";
/// Error code of an active account that has never been scored.
pub const NOT_SCORED: &str = "NOT_SCORED";

/// How a run ended, as the assembler decided it: what the run-end alerts are decided on.
#[derive(Debug, Clone)]
pub struct RunEnded {
    /// The `RunCompleted` the assembler published.
    pub completed: RunCompleted,
    /// `Daily`, `Rerun` or `Replay`.
    pub kind: esg_schemas::RunKind,
    /// The run's deadline, from its trigger.
    pub deadline: DateTime<Utc>,
    /// Accounts the run expected that the deadline left unscored (0 when it completed).
    pub not_scored: u64,
    /// The files, when the run wrote them (`None` for a run that delivered no file).
    pub report: Option<RunReport>,
}

/// Called once for every run the assembler ends (the job's alerts hang here, so they are
/// decided where a run ends, on either transport). Must not fail: it logs its own trouble.
pub type RunEndHook = Arc<
    dyn Fn(RunEnded) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What the assembler needs to know.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Where the day's files go (`[output] dir`).
    pub output_dir: PathBuf,
    /// How often the bus is read when idle.
    pub poll_interval: Duration,
    /// Plaintext or age-encrypted outputs (`[encryption]`).
    pub protection: encryption::Protection,
    /// Write each day's ratings as Parquet too (`[output] parquet`; see [`parquet`]).
    pub parquet: bool,
}

/// A source of the current time (tests inject a fixed or moving clock).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Errors that stop the assembler.
#[derive(Debug, thiserror::Error)]
pub enum AssemblerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("writing the files of run {run_id}: {source}")]
    Output {
        run_id: String,
        #[source]
        source: OutputError,
    },
    #[error("state of run {run_id} is inconsistent: {detail}")]
    State { run_id: String, detail: String },
}

impl From<rusqlite::Error> for AssemblerError {
    fn from(e: rusqlite::Error) -> Self {
        AssemblerError::Store(StoreError {
            path: "assembler.db".into(),
            source: e,
        })
    }
}

/// What the assembler did for one run.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub outcome: RunOutcome,
    pub csv: PathBuf,
    pub errors: PathBuf,
    pub summary_path: PathBuf,
    /// The HTML summary beside it.
    pub summary_html: PathBuf,
    /// This run's own duration, trigger to files (for a re-run, `summary.duration_seconds` is
    /// the daily run's).
    pub duration_seconds: u64,
    pub summary: Summary,
}

/// The `kind` label of the run metrics: `daily`, `rerun` or `replay`.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "Daily" => "daily",
        "Replay" => "replay",
        _ => "rerun",
    }
}

/// A run the assembler is waiting for: its start and that it is in progress.
fn run_started_metrics(run: &RunRow) {
    let kind = kind_label(&run.kind);
    metrics::gauge!(esg_metrics::RUN_START_TIMESTAMP_SECONDS, "kind" => kind)
        .set(run.triggered_at_ms as f64 / 1000.0);
    metrics::gauge!(esg_metrics::RUN_IN_PROGRESS, "kind" => kind).set(1.0);
}

/// A run that ended: end, outcome, and (a daily run with its file) counts (Prometheus names,
/// bounded labels).
fn run_ended_metrics(run: &RunRow, ended: &RunEnded) {
    let kind = kind_label(&run.kind);
    let outcome = match ended.completed.outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::CompletedWithFailures => "completed_with_failures",
        RunOutcome::TimedOut => "timed_out",
        RunOutcome::Aborted => "aborted",
    };
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::gauge!(esg_metrics::RUN_IN_PROGRESS, "kind" => kind).set(0.0);
    metrics::gauge!(esg_metrics::RUN_END_TIMESTAMP_SECONDS, "kind" => kind, "outcome" => outcome)
        .set(now);
    metrics::counter!(esg_metrics::RUNS_TOTAL, "kind" => kind, "outcome" => outcome).increment(1);
    let Some(report) = &ended.report else {
        return;
    };
    metrics::gauge!(esg_metrics::RUN_DURATION_SECONDS, "kind" => kind)
        .set(report.duration_seconds as f64);
    if kind == "daily" {
        let s = &report.summary;
        metrics::gauge!(esg_metrics::RUN_ACCOUNTS, "status" => "successful")
            .set(s.successful as f64);
        metrics::gauge!(esg_metrics::RUN_ACCOUNTS, "status" => "partial").set(s.partial as f64);
        metrics::gauge!(esg_metrics::RUN_ACCOUNTS, "status" => "failed").set(s.failed as f64);
        let ratio = if s.accounts == 0 {
            0.0
        } else {
            s.failed as f64 / s.accounts as f64
        };
        metrics::gauge!(esg_metrics::RUN_FAILURE_RATIO).set(ratio);
        if matches!(
            report.outcome,
            RunOutcome::Completed | RunOutcome::CompletedWithFailures
        ) {
            metrics::gauge!(esg_metrics::LAST_SUCCESSFUL_RUN_TIMESTAMP_SECONDS).set(now);
        }
    }
}

/// Progress of a run, for a progress display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub run_id: String,
    pub expected: Option<u64>,
    pub scored: u64,
    pub failed: u64,
}

/// The assembler stage.
pub struct Assembler {
    bus: EventBus,
    store: Store,
    config: AssemblerConfig,
    clock: Clock,
    on_end: Option<RunEndHook>,
}

struct RunRow {
    run_id: String,
    business_date: NaiveDate,
    kind: String,
    deadline_ms: i64,
    triggered_at_ms: i64,
    sealed: Option<RunSealed>,
    marks: Option<String>,
}

impl Assembler {
    pub fn new(bus: EventBus, store: Store, config: AssemblerConfig, clock: Clock) -> Self {
        Assembler {
            bus,
            store,
            config,
            clock,
            on_end: None,
        }
    }

    /// Calls `hook` for every run this assembler ends.
    pub fn with_run_end_hook(mut self, hook: RunEndHook) -> Self {
        self.on_end = Some(hook);
        self
    }

    /// Reads every topic up to its current end into the state store.
    pub async fn catch_up(&self) -> Result<u64, AssemblerError> {
        let mut total = 0u64;
        for topic in state::topics(&self.bus) {
            let ends = self.bus.transport.end_offsets(&topic).await?;
            let starts = self.bus.transport.start_offsets(&topic).await?;
            let t = topic.clone();
            let n = ends.len();
            let positions = self.store.call(move |c| state::positions(c, &t, n)).await?;
            for (p, end) in ends.iter().enumerate() {
                let from = positions[p].max(starts[p]);
                let mut range =
                    RangeReader::new(&*self.bus.transport, &topic, p as i32, from, *end, 5000);
                while let Some(batch) = range.next_batch().await? {
                    total += batch.len() as u64;
                    let decoded: Vec<_> = batch
                        .into_iter()
                        .map(|m| {
                            let e = match self.bus.decode(m.value.as_deref()) {
                                Ok(e) => e,
                                Err(err) => {
                                    tracing::error!(topic = %m.topic, partition = m.partition, offset = m.offset, error = %err, "undecodable message skipped");
                                    None
                                }
                            };
                            (m, e)
                        })
                        .collect();
                    let t = topic.clone();
                    let tombstones = state::Tombstones::of(&self.bus, &t);
                    let applied = self
                        .store
                        .call(move |c| {
                            let tx = c.transaction()?;
                            let applied = state::apply(&tx, &t, p as i32, &decoded, tombstones)?;
                            tx.commit()?;
                            if applied.erased > 0 {
                                state::forget_erased(c)?;
                            }
                            Ok(applied)
                        })
                        .await?;
                    for run_id in applied.sealed {
                        self.record_marks(&run_id).await?;
                    }
                }
            }
        }
        Ok(total)
    }

    /// When a seal is read, notes where `esg.accounts` and `esg.account-events` end: the
    /// roster and the expected accounts of the run are complete once read up to there.
    async fn record_marks(&self, run_id: &str) -> Result<(), AssemblerError> {
        let accounts = self
            .bus
            .transport
            .end_offsets(&self.bus.topics.accounts)
            .await?;
        let events = self
            .bus
            .transport
            .end_offsets(&self.bus.topics.account_events)
            .await?;
        let marks = serde_json::json!({ "accounts": accounts, "events": events }).to_string();
        let id = run_id.to_owned();
        self.store
            .call(move |c| {
                c.execute(
                    "UPDATE runs SET marks = ?2 WHERE run_id = ?1",
                    params![id, marks],
                )
            })
            .await?;
        Ok(())
    }

    /// Progress of a run as the state store sees it.
    pub async fn progress(&self, run_id: &str) -> Result<Progress, AssemblerError> {
        let id = run_id.to_owned();
        Ok(self
            .store
            .call(move |c| {
                let sealed: Option<Option<String>> = c
                    .query_row(
                        "SELECT sealed_json FROM runs WHERE run_id = ?1",
                        [&id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let expected = sealed
                    .flatten()
                    .and_then(|j| serde_json::from_str::<RunSealed>(&j).ok())
                    .map(|s| s.expected_accounts.max(0) as u64);
                let (scored, failed): (i64, i64) = c
                    .query_row(
                        "SELECT scored, failed FROM runs WHERE run_id = ?1",
                        [&id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?
                    .unwrap_or((0, 0));
                Ok(Progress {
                    run_id: id,
                    expected,
                    scored: scored as u64,
                    failed: failed as u64,
                })
            })
            .await?)
    }

    /// Runs until `shutdown`, or until the run `until` is completed (by this assembler or an
    /// earlier one). Returns what it assembled.
    pub async fn run(
        &self,
        shutdown: CancellationToken,
        until: Option<String>,
    ) -> Result<Vec<RunReport>, AssemblerError> {
        let mut reports = Vec::new();
        loop {
            self.catch_up().await?;
            for run in self.open_runs().await? {
                run_started_metrics(&run);
                if let Some(ended) = self.try_complete(&run).await? {
                    run_ended_metrics(&run, &ended);
                    if let Some(report) = &ended.report {
                        reports.push(report.clone());
                    }
                    if let Some(hook) = &self.on_end {
                        hook(ended).await;
                    }
                }
            }
            if let Some(id) = &until {
                if self.is_completed(id).await? {
                    return Ok(reports);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(reports),
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// True when the run has a `RunCompleted` (read from the bus or written by this assembler).
    pub async fn is_completed(&self, run_id: &str) -> Result<bool, AssemblerError> {
        let id = run_id.to_owned();
        Ok(self
            .store
            .call(move |c| {
                c.query_row(
                    "SELECT COALESCE((SELECT completed FROM runs WHERE run_id = ?1), 0)",
                    [id],
                    |r| r.get::<_, bool>(0),
                )
            })
            .await?)
    }

    async fn open_runs(&self) -> Result<Vec<RunRow>, AssemblerError> {
        Ok(self
            .store
            .call(|c| {
                let mut stmt = c.prepare(
                    "SELECT run_id, business_date, kind, deadline_ms, triggered_at_ms, sealed_json, marks
                     FROM runs WHERE completed = 0 ORDER BY run_id",
                )?;
                let rows = stmt.query_map([], |r| {
                    let date: String = r.get(1)?;
                    let sealed: Option<String> = r.get(5)?;
                    Ok(RunRow {
                        run_id: r.get(0)?,
                        business_date: NaiveDate::from_str(&date).unwrap_or_default(),
                        kind: r.get(2)?,
                        deadline_ms: r.get(3)?,
                        triggered_at_ms: r.get(4)?,
                        sealed: sealed.and_then(|j| serde_json::from_str(&j).ok()),
                        marks: r.get(6)?,
                    })
                })?;
                rows.collect()
            })
            .await?)
    }

    /// Assembles `run` if it is complete or past its deadline.
    async fn try_complete(&self, run: &RunRow) -> Result<Option<RunEnded>, AssemblerError> {
        let now = (self.clock)();
        let past_deadline = now.timestamp_millis() >= run.deadline_ms;
        let complete = self.is_complete(run).await?;
        if !complete && !past_deadline {
            return Ok(None);
        }
        let timed_out = !complete;
        let ended =
            |completed: RunCompleted, not_scored: u64, report: Option<RunReport>| RunEnded {
                completed,
                kind: esg_schemas::RunKind::from_str(&run.kind)
                    .unwrap_or(esg_schemas::RunKind::Daily),
                deadline: DateTime::from_timestamp_millis(run.deadline_ms).unwrap_or(now),
                not_scored,
                report,
            };
        if timed_out && run.sealed.is_none() {
            // The producer never sealed the run (the listing did not finish, say): its accounts
            // are unknown. A daily run ends TimedOut with no file, so the day is not taken as
            // delivered and a later `esg run --once` of the date writes the whole file; a re-run
            // is aborted. Either way the files on disk are not touched.
            let outcome = if run.kind == "Daily" {
                tracing::error!(run_id = %run.run_id, "deadline reached before the run was sealed (its listing never finished): no file written, the previous files are untouched");
                RunOutcome::TimedOut
            } else {
                tracing::error!(run_id = %run.run_id, "re-run never sealed by its deadline: aborted, the day's file is unchanged");
                RunOutcome::Aborted
            };
            let completed = self.end_without_file(run, outcome, now).await?;
            return Ok(Some(ended(completed, 0, None)));
        }
        if timed_out {
            tracing::error!(run_id = %run.run_id, "deadline reached before the run completed: assembling what is there, pending accounts Failed (DEADLINE)");
        }
        let (report, completed) = self.assemble(run, timed_out, now).await?;
        let not_scored = report
            .summary
            .error_codes
            .get(DEADLINE)
            .copied()
            .unwrap_or(0);
        Ok(Some(ended(completed, not_scored, Some(report))))
    }

    async fn is_complete(&self, run: &RunRow) -> Result<bool, AssemblerError> {
        let Some(sealed) = &run.sealed else {
            return Ok(false);
        };
        let Some(marks) = &run.marks else {
            // Stopped (killed) between applying the seal and noting the marks: note them now,
            // or the run would wait for its deadline. The topics end now at or past where they
            // ended when the seal was read, so the run completes no sooner than it should; the
            // next round reads the run again with its marks.
            self.record_marks(&run.run_id).await?;
            return Ok(false);
        };
        let marks: serde_json::Value =
            serde_json::from_str(marks).map_err(|e| AssemblerError::State {
                run_id: run.run_id.clone(),
                detail: format!("marks unreadable: {e}"),
            })?;
        for (key, topic) in [
            ("accounts", self.bus.topics.accounts.clone()),
            ("events", self.bus.topics.account_events.clone()),
        ] {
            let wanted: Vec<i64> = marks
                .get(key)
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default();
            let n = wanted.len();
            let have = self
                .store
                .call(move |c| state::positions(c, &topic, n))
                .await?;
            if have.iter().zip(&wanted).any(|(h, w)| h < w) {
                return Ok(false);
            }
        }
        let expected = sealed.expected_accounts;
        let id = run.run_id.clone();
        let scored: i64 = self
            .store
            .call(move |c| {
                c.query_row("SELECT scored FROM runs WHERE run_id = ?1", [id], |r| {
                    r.get(0)
                })
            })
            .await?;
        Ok(scored >= expected)
    }

    /// Ends a run that cannot be assembled: publishes `RunCompleted` with `outcome` and no file.
    async fn end_without_file(
        &self,
        run: &RunRow,
        outcome: RunOutcome,
        now: DateTime<Utc>,
    ) -> Result<RunCompleted, AssemblerError> {
        let completed = RunCompleted {
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            outcome,
            rows: 0,
            successful: 0,
            partial: 0,
            failed: 0,
            output_file: String::new(),
            completed_at: now,
        };
        let row = history::HistoryRow::without_file(
            &run.run_id,
            run.business_date,
            &run.kind,
            outcome.as_str(),
            DateTime::from_timestamp_millis(run.triggered_at_ms).unwrap_or(now),
            now,
            DateTime::from_timestamp_millis(run.deadline_ms).unwrap_or(now),
        );
        self.store.call(move |c| history::record(c, &row)).await?;
        self.complete(completed.clone()).await?;
        Ok(completed)
    }

    /// Publishes `RunCompleted` and records the run as done, so it is never assembled again.
    async fn complete(&self, completed: RunCompleted) -> Result<(), AssemblerError> {
        let id = completed.run_id.clone();
        let outcome = completed.outcome.as_str();
        self.bus
            .publish(
                &self.bus.topics.triggers,
                &[(id.clone(), Event::RunCompleted(completed))],
            )
            .await?;
        self.store
            .call(move |c| {
                let tx = c.transaction()?;
                state::mark_completed(&tx, &id, outcome)?;
                tx.commit()
            })
            .await?;
        Ok(())
    }

    /// Writes the run's files, publishes `RunCompleted`, marks the run done.
    ///
    /// The summary's counts: each row is classified by where it came from ([`Provenance`]:
    /// scored by this run, carried forward from an earlier run's score, failed by the deadline,
    /// never scored), so an account the run expected but did not score by its deadline is never
    /// counted as carried forward. A re-run rewrites the whole day's summary: the file's
    /// statistics are the whole rewritten file's, the run facts stay the daily run's (from the
    /// state store, else the previous summary), and the re-run is appended to `reruns`.
    async fn assemble(
        &self,
        run: &RunRow,
        timed_out: bool,
        now: DateTime<Utc>,
    ) -> Result<(RunReport, RunCompleted), AssemblerError> {
        let dir = self.config.output_dir.clone();
        let protection = self.config.protection.clone();
        let parquet = self.config.parquet;
        let run_id = run.run_id.clone();
        let date = run.business_date;
        let is_rerun = run.kind != "Daily";
        let output_err = |run_id: &str| {
            let run_id = run_id.to_owned();
            move |source| AssemblerError::Output { run_id, source }
        };
        let (written, tally, not_in_file, api, stored_day) = self
            .store
            .call_with(move |c| -> Result<_, AssemblerError> {
                // The run's use of the ESG API: attempts, HTTP requests and requests answered
                // 429 of every score of the run (an account that has since left the roster
                // included).
                let api: (i64, i64, i64) = c.query_row(
                    "SELECT COALESCE(SUM(attempts), 0), COALESCE(SUM(requests), 0),
                        COALESCE(SUM(rate_limited), 0)
                     FROM run_scored WHERE run_id = ?1",
                    [&run_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?;
                let api = (
                    api.0.max(0) as u64,
                    api.1.max(0) as u64,
                    api.2.max(0) as u64,
                );
                let with_provenance =
                    |r: &rusqlite::Row<'_>| Ok((read_row(r)?, provenance(r)?));
                // The accounts the daily run's file shows `Failed` by its deadline, when the
                // file pass kept them (see [`DeadlineIds`]).
                let mut deadline_ids = None;
                let (written, tally, not_in_file, stored) = if is_rerun && protection.is_encrypted() {
                    // The day's files are encrypted and the job holds no key to read them back:
                    // they are rebuilt whole from the state, which holds that day's rows only
                    // while no later day has been assembled.
                    let latest: Option<(String, bool)> = c
                        .query_row(LATEST_DAILY_DATE, [], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()?;
                    if latest.as_ref() != Some(&(date.to_string(), true)) {
                        return Err(AssemblerError::State {
                            run_id: run_id.clone(),
                            detail: format!(
                                "the files of {date} are encrypted and the job's state no longer holds that day's rows (latest daily run: {}): they cannot be rebuilt, and are not read back; re-run accounts of the latest day only",
                                latest.map_or("none".into(), |(d, _)| d)
                            ),
                        });
                    }
                    let (written, tally, _) = write_from_roster(c, &dir, date, &protection, parquet, &run_id, true)?;
                    let missing: i64 = c.query_row(
                        "SELECT COUNT(*) FROM expected e WHERE e.run_id = ?1
                           AND NOT EXISTS (SELECT 1 FROM roster r WHERE r.account_id = e.account_id)",
                        [&run_id],
                        |r| r.get(0),
                    )?;
                    if missing > 0 {
                        tracing::warn!(run_id = %run_id, missing, "re-run accounts not in that day's file were not added");
                    }
                    (written, tally, missing.max(0) as u64, Some(state::day_runs(c, date, &run_id)?))
                } else if is_rerun {
                    let mut tally = Tally::default();
                    let mut replacements = BTreeMap::new();
                    let mut stmt = c.prepare(&format!("{ROW_SELECT} WHERE e.run_id = ?1 ORDER BY e.account_id"))?;
                    let rows = stmt.query_map([&run_id], with_provenance)?;
                    for row in rows {
                        let (row, from) = row?;
                        tally.add(from, &row);
                        replacements.insert(row.account_id.clone(), row);
                    }
                    let replaced = output::replace_rows(&dir, date, &replacements, parquet)
                        .map_err(output_err(&run_id))?;
                    if !replaced.missing.is_empty() {
                        tracing::warn!(run_id = %run_id, missing = ?replaced.missing, "re-run accounts not in that day's file were not added");
                    }
                    let stored = state::day_runs(c, date, &run_id)?;
                    let missing = replaced.missing.len() as u64;
                    (replaced.written, tally, missing, Some(stored))
                } else {
                    let (written, tally, ids) = write_from_roster(c, &dir, date, &protection, parquet, &run_id, false)?;
                    deadline_ids = ids.into_kept();
                    (written, tally, 0, None)
                };
                state::record_file_deadlines(c, &run_id, date, !is_rerun, deadline_ids.as_deref())?;
                Ok((written, tally, not_in_file, api, stored))
            })
            .await?;
        let (api_attempts, api_requests, api_rate_limited) = api;
        let stats = &written.stats;
        let outcome = if timed_out {
            RunOutcome::TimedOut
        } else if stats.partial + stats.failed > 0 {
            RunOutcome::CompletedWithFailures
        } else {
            RunOutcome::Completed
        };
        let started_at = DateTime::from_timestamp_millis(run.triggered_at_ms).unwrap_or(now);
        let (day, record) = match stored_day {
            Some(stored) => {
                let entry = RerunEntry {
                    run_id: run.run_id.clone(),
                    kind: run.kind.clone(),
                    outcome: outcome.as_str().to_owned(),
                    accounts: tally.rows,
                    scored: tally.scored_in_run,
                    failed: tally.failed,
                    not_in_file,
                    api_attempts,
                    api_requests,
                    api_rate_limited,
                    started_at,
                    finished_at: now,
                };
                let record = serde_json::to_string(&entry);
                let dir = self.config.output_dir.clone();
                let day = DayFacts::for_rerun(
                    stored,
                    || summary::read_previous(&dir, run.business_date),
                    entry,
                );
                (day, record)
            }
            None => {
                let sealed = run.sealed.clone().unwrap_or_default();
                let facts = RunFacts {
                    api_attempts,
                    api_requests,
                    api_rate_limited,
                    deadline: DateTime::from_timestamp_millis(run.deadline_ms),
                    ..RunFacts::from_seal(
                        run.run_id.clone(),
                        outcome.as_str().to_owned(),
                        &sealed,
                        started_at,
                        now,
                    )
                }
                .with_tally(&tally);
                let record = serde_json::to_string(&facts);
                (DayFacts::daily(facts), record)
            }
        };
        let file = output::file_names(run.business_date).csv;
        let mut summary = Summary::build(run.business_date, &file, stats, day);
        summary.comparison = self
            .store
            .call(move |c| history::comparison(c, date))
            .await?;
        for problem in summary.inconsistencies() {
            tracing::error!(run_id = %run.run_id, problem = %problem, "summary counts do not add up");
        }
        let summary_path =
            summary::write_summary(&self.config.output_dir, &summary, &self.config.protection)
                .map_err(|source| AssemblerError::Output {
                    run_id: run.run_id.clone(),
                    source,
                })?;
        let summary_html =
            report::write_summary_html(&self.config.output_dir, &summary, &self.config.protection)
                .map_err(|source| AssemblerError::Output {
                    run_id: run.run_id.clone(),
                    source,
                })?;
        // What this run did, for the summaries of later re-runs of the date.
        let record = record.map_err(|e| AssemblerError::State {
            run_id: run.run_id.clone(),
            detail: format!("run facts do not serialise: {e}"),
        })?;
        // The run's row of the history, with its facts in one transaction: after a crash the
        // run is assembled again and both are replaced.
        let deadline = DateTime::from_timestamp_millis(run.deadline_ms);
        let row = match summary.reruns.iter().rfind(|r| r.run_id == run.run_id) {
            Some(entry) if is_rerun => history::HistoryRow::rerun(&summary, entry, deadline),
            _ => history::HistoryRow::daily(&summary, deadline),
        };
        let (id, kind) = (run.run_id.clone(), run.kind.clone());
        self.store
            .call(move |c| {
                let tx = c.transaction()?;
                state::record_run_facts(&tx, &id, date, &kind, &record)?;
                history::record(&tx, &row)?;
                tx.commit()
            })
            .await?;
        let completed = RunCompleted {
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            outcome,
            rows: stats.rows as i64,
            successful: stats.successful as i64,
            partial: stats.partial as i64,
            failed: stats.failed as i64,
            output_file: file,
            completed_at: now,
        };
        self.complete(completed.clone()).await?;
        tracing::info!(
            run_id = %run.run_id,
            outcome = outcome.as_str(),
            rows = stats.rows,
            successful = stats.successful,
            partial = stats.partial,
            failed = stats.failed,
            scored_in_run = tally.scored_in_run,
            carried_forward = tally.carried_forward,
            deadline_failed = tally.deadline_failed,
            api_attempts,
            api_requests,
            file = %written.csv.display(),
            "run assembled"
        );
        let report = RunReport {
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            outcome,
            csv: written.csv.clone(),
            errors: written.errors.clone(),
            summary_path,
            summary_html,
            duration_seconds: u64::try_from((now - started_at).num_seconds()).unwrap_or(0),
            summary,
        };
        Ok((report, completed))
    }
}

/// The business date of the latest completed daily run: the only date whose rows the state
/// still holds as its file shows them.
const LATEST_DAILY_DATE: &str = "SELECT business_date, sealed_json IS NOT NULL FROM runs
     WHERE kind = 'Daily' AND completed = 1 ORDER BY triggered_at_ms DESC LIMIT 1";

/// Writes the whole day's files of `date` from the roster and the latest scores, for run
/// `run_id`: its expected accounts without a score of it are `Failed` (`DEADLINE`). `rebuild`:
/// the run is a re-run of the latest day whose files are rebuilt whole (they are encrypted and
/// not read back): accounts the day's earlier runs left `Failed` by their deadline stay so, and
/// the tally counts the re-run's own accounts only. `parquet`: the day's Parquet is written too
/// ([`OutputWriter::create_with_parquet`]). The rows are read here and formatted and
/// written on a thread of their own, in chunks; the files are finished only once every row was
/// read, so a failed read leaves the previous files as they were.
fn write_from_roster(
    c: &rusqlite::Connection,
    dir: &std::path::Path,
    date: NaiveDate,
    protection: &encryption::Protection,
    parquet: bool,
    run_id: &str,
    rebuild: bool,
) -> Result<(output::Written, Tally, DeadlineIds), AssemblerError> {
    let output_err = |source| AssemblerError::Output {
        run_id: run_id.to_owned(),
        source,
    };
    let writer =
        OutputWriter::create_with_parquet(dir, date, protection, parquet).map_err(output_err)?;
    // No date matches '' : a daily run's file starts afresh.
    let deadline_date = if rebuild {
        date.to_string()
    } else {
        String::new()
    };
    let mut tally = Tally::default();
    let mut deadline_ids = DeadlineIds::default();
    // The pass seeks four tables an account in key order; in SQLite's default cache (2 MB) the
    // interior pages of the four evict each other and most seeks read pages again. A larger
    // cache for the pass only, given back after it.
    let cache: i64 = c.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
    c.pragma_update(None, "cache_size", FILE_PASS_CACHE)?;
    let (chunks, received) = std::sync::mpsc::sync_channel::<Chunk>(4);
    let (read, written) = std::thread::scope(|scope| {
        let writing = scope.spawn(|| write_chunks(writer, received, dir));
        let read = (|| -> Result<(), AssemblerError> {
            let mut stmt = c.prepare(ROSTER_SELECT)?;
            let rows = stmt.query_map(params![run_id, deadline_date], |r| {
                Ok((read_row(r)?, provenance(r)?, r.get::<_, bool>(14)?))
            })?;
            let mut chunk = Vec::with_capacity(ROWS_PER_CHUNK);
            for row in rows {
                let (row, from, expected) = row?;
                if expected || !rebuild {
                    tally.add(from, &row);
                }
                if from == Provenance::DeadlineFailed {
                    deadline_ids.add(&row.account_id);
                }
                chunk.push(row);
                if chunk.len() == ROWS_PER_CHUNK {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(ROWS_PER_CHUNK));
                    if chunks.send(Chunk::Rows(full)).is_err() {
                        // The writer failed: its error is returned below.
                        return Ok(());
                    }
                }
            }
            let _ = chunks.send(Chunk::Rows(chunk));
            let _ = chunks.send(Chunk::End);
            Ok(())
        })();
        drop(chunks);
        let written = writing.join().unwrap_or_else(|_| {
            Err(OutputError::Io {
                action: "write the file in",
                path: dir.to_path_buf(),
                source: std::io::Error::other("the file writer panicked"),
            })
        });
        (read, written)
    });
    c.pragma_update(None, "cache_size", cache)?;
    // A read error stopped the rows (the writer then left no file) and comes first.
    read?;
    Ok((written.map_err(output_err)?, tally, deadline_ids))
}

/// The accounts a file pass wrote `Failed` by the run's deadline, kept while they are few: a
/// daily run records them for its re-runs ([`state::record_file_deadlines`]) without a second
/// pass over the run's accounts. Past [`DeadlineIds::KEPT`] (a day that mostly missed its
/// deadline) they are dropped and the store finds them again by a query.
#[derive(Debug, Default)]
struct DeadlineIds {
    ids: Vec<String>,
    overflowed: bool,
}

impl DeadlineIds {
    const KEPT: usize = 10_000;

    fn add(&mut self, account_id: &str) {
        if self.overflowed {
            return;
        }
        if self.ids.len() < Self::KEPT {
            self.ids.push(account_id.to_owned());
        } else {
            self.overflowed = true;
            self.ids = Vec::new();
        }
    }

    /// Every account, or `None` when there were too many to keep.
    fn into_kept(self) -> Option<Vec<String>> {
        (!self.overflowed).then_some(self.ids)
    }
}

/// Rows the assembler hands to the thread that writes the file.
enum Chunk {
    Rows(Vec<Row>),
    /// Every row was read: the file may be finished.
    End,
}

/// SQLite's page cache for the file pass, as `PRAGMA cache_size` (negative: KiB).
const FILE_PASS_CACHE: i64 = -8 * 1024;

/// Rows per [`Chunk`].
const ROWS_PER_CHUNK: usize = 1024;

/// Writes the rows of `received` and finishes the file at [`Chunk::End`]; if the rows stop
/// without it (the reader failed), the writer is dropped and leaves no file.
fn write_chunks(
    mut writer: OutputWriter,
    received: std::sync::mpsc::Receiver<Chunk>,
    dir: &std::path::Path,
) -> Result<output::Written, OutputError> {
    for chunk in received {
        match chunk {
            Chunk::Rows(rows) => {
                for row in &rows {
                    writer.write(row)?;
                }
            }
            Chunk::End => return writer.finish(),
        }
    }
    Err(OutputError::Io {
        action: "write the file in",
        path: dir.to_path_buf(),
        source: std::io::Error::other("the rows of the file stopped before the end"),
    })
}

/// One row per roster account, with its latest score, whether this run (?1) expected it and
/// scored it, and whether the files of ?2 show it `Failed` by an earlier run's deadline.
const ROSTER_SELECT: &str = "
SELECT r.account_id, r.name, s.status, s.overall, s.environmental, s.social, s.governance,
       s.primary_focus, s.primary_focus_score, s.analysis_date, s.attempts, s.error_code,
       s.error_message, s.scored_at_ms,
       e.account_id IS NOT NULL AS expected,
       rs.account_id IS NOT NULL AS scored_in_run,
       fd.account_id IS NOT NULL AS deadline_before
FROM roster r
LEFT JOIN scores s ON s.account_id = r.account_id
LEFT JOIN expected e ON e.run_id = ?1 AND e.account_id = r.account_id
LEFT JOIN run_scored rs ON rs.run_id = ?1 AND rs.account_id = r.account_id
LEFT JOIN file_deadlines fd ON fd.business_date = ?2 AND fd.account_id = r.account_id
ORDER BY r.account_id";

/// The same columns for the expected accounts of a re-run (filtered by the caller).
const ROW_SELECT: &str = "
SELECT e.account_id, COALESCE(r.name, ''), s.status, s.overall, s.environmental, s.social, s.governance,
       s.primary_focus, s.primary_focus_score, s.analysis_date, s.attempts, s.error_code,
       s.error_message, s.scored_at_ms,
       1 AS expected,
       rs.account_id IS NOT NULL AS scored_in_run,
       0 AS deadline_before
FROM expected e
LEFT JOIN roster r ON r.account_id = e.account_id
LEFT JOIN scores s ON s.account_id = e.account_id
LEFT JOIN run_scored rs ON rs.run_id = e.run_id AND rs.account_id = e.account_id";

/// Where a row of [`ROSTER_SELECT`] or [`ROW_SELECT`] came from (columns 2, 14 and 15; the
/// same reading of them as [`read_row`]'s).
fn provenance(r: &rusqlite::Row<'_>) -> rusqlite::Result<Provenance> {
    let has_score = r
        .get::<_, Option<String>>(2)?
        .is_some_and(|s| ScoreStatus::from_str(&s).is_ok());
    Ok(Provenance::of(r.get(14)?, r.get(15)?, has_score))
}

fn dec(v: Option<String>) -> Option<Decimal> {
    v.and_then(|s| Decimal::from_str(&s).ok())
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let account_id: String = r.get(0)?;
    let name: String = r.get(1)?;
    let status: Option<String> = r.get(2)?;
    let expected: bool = r.get(14)?;
    let scored_in_run: bool = r.get(15)?;
    let failed = |code: &str, message: &str, attempts: i32, last: Option<i64>| Row {
        account_id: account_id.clone(),
        account_name: name.clone(),
        status: ScoreStatus::Failed,
        values: EsgValues::failed(),
        attempts,
        error_code: Some(code.to_owned()),
        error_message: Some(message.to_owned()),
        last_attempt: last.and_then(DateTime::from_timestamp_millis),
    };
    let deadline_before: bool = r.get(16)?;
    if (expected && !scored_in_run) || (!expected && deadline_before) {
        return Ok(failed(
            DEADLINE,
            "not scored by the run's deadline",
            0,
            None,
        ));
    }
    let Some(status) = status.and_then(|s| ScoreStatus::from_str(&s).ok()) else {
        return Ok(failed(
            NOT_SCORED,
            "the account has never been scored",
            0,
            None,
        ));
    };
    let scored_at: i64 = r.get(13)?;
    Ok(Row {
        account_id: account_id.clone(),
        account_name: name.clone(),
        status,
        values: EsgValues {
            overall: dec(r.get(3)?),
            environmental: dec(r.get(4)?),
            social: dec(r.get(5)?),
            governance: dec(r.get(6)?),
            primary_focus: r
                .get::<_, Option<String>>(7)?
                .and_then(|p| Pillar::from_str(&p).ok()),
            primary_focus_score: dec(r.get(8)?),
            analysis_date: r
                .get::<_, Option<String>>(9)?
                .and_then(|d| NaiveDate::from_str(&d).ok()),
        },
        attempts: r.get(10)?,
        error_code: r.get(11)?,
        error_message: r.get(12)?,
        last_attempt: DateTime::from_timestamp_millis(scored_at),
    })
}

#[cfg(test)]
mod tests {
    use super::DeadlineIds;

    #[test]
    fn deadline_ids_are_kept_while_few_and_given_up_past_the_bound() {
        let mut few = DeadlineIds::default();
        few.add("A");
        few.add("B");
        assert_eq!(few.into_kept(), Some(vec!["A".to_owned(), "B".to_owned()]));
        let mut many = DeadlineIds::default();
        for i in 0..=DeadlineIds::KEPT {
            many.add(&format!("ACC{i:07}"));
        }
        many.add("ACC9999999");
        assert!(many.ids.is_empty(), "none kept past the bound");
        assert_eq!(many.into_kept(), None, "the store is asked instead");
    }
}
