//! The assembler: materialises the latest score per account from the bus into a local state
//! store, decides when a run is complete (or its deadline has come), and writes the day's files.
//!
//! - [`state`]: the state store and how each event changes it (exactly-once, see there).
//! - [`output`]: the ratings file and its errors file (format, order, atomic write, re-runs).
//! - [`summary`]: the daily summary.
//!
//! Completion (DESIGN section 3): a run is complete when its `RunSealed` has been read, the
//! assembler has read `esg.accounts` and `esg.account-events` at least up to where they ended
//! when the seal was read (so the roster and the run's expected accounts are all known), and
//! every expected account has an `EsgScore` of the run. At the run's deadline it is assembled
//! with whatever is there: expected accounts without a score of the run are `Failed` with
//! error code `DEADLINE`. Then `RunCompleted` is published; a restarted assembler that finds it
//! does not write the run again.

pub mod output;
pub mod state;
pub mod summary;

use chrono::{DateTime, NaiveDate, Utc};
use esg_bus::{BusError, EventBus, RangeReader, Store, StoreError};
use esg_schemas::{Event, Pillar, RunCompleted, RunOutcome, RunSealed, ScoreStatus};
use output::{OutputError, OutputWriter, Row};
use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use summary::{RunFacts, Summary};
use tokio_util::sync::CancellationToken;

/// Error code of an account that was not scored by the run's deadline.
pub const DEADLINE: &str = "DEADLINE";
/// Error code of an active account that has never been scored.
pub const NOT_SCORED: &str = "NOT_SCORED";

/// What the assembler needs to know.
#[derive(Debug, Clone)]
pub struct AssemblerConfig {
    /// Where the day's files go (`[output] dir`).
    pub output_dir: PathBuf,
    /// How often the bus is read when idle.
    pub poll_interval: Duration,
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
    metrics::gauge!("esg_run_start_timestamp_seconds", "kind" => kind)
        .set(run.triggered_at_ms as f64 / 1000.0);
    metrics::gauge!("esg_run_in_progress", "kind" => kind).set(1.0);
}

/// A run whose files are written: end, outcome, counts (Prometheus names, bounded labels).
fn run_ended_metrics(run: &RunRow, report: &RunReport) {
    let kind = kind_label(&run.kind);
    let outcome = match report.outcome {
        RunOutcome::Completed => "completed",
        RunOutcome::CompletedWithFailures => "completed_with_failures",
        RunOutcome::TimedOut => "timed_out",
        RunOutcome::Aborted => "aborted",
    };
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    metrics::gauge!("esg_run_in_progress", "kind" => kind).set(0.0);
    metrics::gauge!("esg_run_end_timestamp_seconds", "kind" => kind, "outcome" => outcome).set(now);
    metrics::gauge!("esg_run_duration_seconds", "kind" => kind)
        .set(report.summary.duration_seconds as f64);
    metrics::counter!("esg_runs_total", "kind" => kind, "outcome" => outcome).increment(1);
    if kind == "daily" {
        let s = &report.summary;
        metrics::gauge!("esg_run_accounts", "status" => "successful").set(s.successful as f64);
        metrics::gauge!("esg_run_accounts", "status" => "partial").set(s.partial as f64);
        metrics::gauge!("esg_run_accounts", "status" => "failed").set(s.failed as f64);
        let ratio = if s.accounts == 0 {
            0.0
        } else {
            s.failed as f64 / s.accounts as f64
        };
        metrics::gauge!("esg_run_failure_ratio").set(ratio);
        if matches!(
            report.outcome,
            RunOutcome::Completed | RunOutcome::CompletedWithFailures
        ) {
            metrics::gauge!("esg_last_successful_run_timestamp_seconds").set(now);
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
        }
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
                    let applied = self
                        .store
                        .call(move |c| {
                            let tx = c.transaction()?;
                            let applied = state::apply(&tx, &t, p as i32, &decoded)?;
                            tx.commit()?;
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
                if let Some(report) = self.try_complete(&run).await? {
                    run_ended_metrics(&run, &report);
                    reports.push(report);
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
    async fn try_complete(&self, run: &RunRow) -> Result<Option<RunReport>, AssemblerError> {
        let now = (self.clock)();
        let past_deadline = now.timestamp_millis() >= run.deadline_ms;
        let complete = self.is_complete(run).await?;
        if !complete && !past_deadline {
            return Ok(None);
        }
        let timed_out = !complete;
        if timed_out && run.kind != "Daily" && run.sealed.is_none() {
            // A re-run whose producer never finished: its accounts are unknown, and the day's
            // file must not be touched.
            self.abort(run, now).await?;
            return Ok(None);
        }
        if timed_out {
            tracing::error!(run_id = %run.run_id, "deadline reached before the run completed: assembling what is there, pending accounts Failed (DEADLINE)");
        }
        let report = self.assemble(run, timed_out, now).await?;
        Ok(Some(report))
    }

    async fn is_complete(&self, run: &RunRow) -> Result<bool, AssemblerError> {
        let (Some(sealed), Some(marks)) = (&run.sealed, &run.marks) else {
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

    /// Ends a run that cannot be assembled: publishes `RunCompleted` with outcome `Aborted`.
    async fn abort(&self, run: &RunRow, now: DateTime<Utc>) -> Result<(), AssemblerError> {
        tracing::error!(run_id = %run.run_id, "re-run never sealed by its deadline: aborted, the day's file is unchanged");
        let completed = RunCompleted {
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            outcome: RunOutcome::Aborted,
            rows: 0,
            successful: 0,
            partial: 0,
            failed: 0,
            output_file: String::new(),
            completed_at: now,
        };
        self.complete(completed).await
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
    async fn assemble(
        &self,
        run: &RunRow,
        timed_out: bool,
        now: DateTime<Utc>,
    ) -> Result<RunReport, AssemblerError> {
        let dir = self.config.output_dir.clone();
        let run_id = run.run_id.clone();
        let date = run.business_date;
        let is_rerun = run.kind != "Daily";
        let output_err = |run_id: &str| {
            let run_id = run_id.to_owned();
            move |source| AssemblerError::Output { run_id, source }
        };
        let (written, scored_in_run, api_calls) = self
            .store
            .call_with(move |c| -> Result<_, AssemblerError> {
                let counts: (i64, i64) = c.query_row(
                    "SELECT COUNT(*), COALESCE(SUM(attempts), 0) FROM run_scored WHERE run_id = ?1",
                    [&run_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                let written = if is_rerun {
                    let mut replacements = BTreeMap::new();
                    let mut stmt = c.prepare(&format!("{ROW_SELECT} WHERE e.run_id = ?1 ORDER BY e.account_id"))?;
                    let rows = stmt.query_map([&run_id], read_row)?;
                    for row in rows {
                        let row = row?;
                        replacements.insert(row.account_id.clone(), row);
                    }
                    let replaced = output::replace_rows(&dir, date, &replacements)
                        .map_err(output_err(&run_id))?;
                    if !replaced.missing.is_empty() {
                        tracing::warn!(run_id = %run_id, missing = ?replaced.missing, "re-run accounts not in that day's file were not added");
                    }
                    replaced.written
                } else {
                    let mut writer = OutputWriter::create(&dir, date).map_err(output_err(&run_id))?;
                    let mut stmt = c.prepare(ROSTER_SELECT)?;
                    let rows = stmt.query_map([&run_id], read_row)?;
                    for row in rows {
                        writer.write(&row?).map_err(output_err(&run_id))?;
                    }
                    writer.finish().map_err(output_err(&run_id))?
                };
                Ok((written, counts.0 as u64, counts.1 as u64))
            })
            .await?;
        let stats = &written.stats;
        let outcome = if timed_out {
            RunOutcome::TimedOut
        } else if stats.partial + stats.failed > 0 {
            RunOutcome::CompletedWithFailures
        } else {
            RunOutcome::Completed
        };
        let sealed = run.sealed.clone().unwrap_or_default();
        let n = |v: i64| v.max(0) as u64;
        let file = output::file_names(run.business_date).csv;
        let summary = Summary::build(
            run.business_date,
            &file,
            stats,
            RunFacts {
                run_id: run.run_id.clone(),
                outcome: outcome.as_str().to_owned(),
                scored_in_run,
                carried_forward: if is_rerun {
                    0
                } else {
                    stats.rows.saturating_sub(scored_in_run)
                },
                new_accounts: n(sealed.new_accounts),
                gone_accounts: n(sealed.gone_accounts),
                malformed_records: n(sealed.malformed_records),
                api_calls,
                started_at: DateTime::from_timestamp_millis(run.triggered_at_ms).unwrap_or(now),
                finished_at: now,
            },
        );
        let summary_path =
            summary::write_summary(&self.config.output_dir, &summary).map_err(|source| {
                AssemblerError::Output {
                    run_id: run.run_id.clone(),
                    source,
                }
            })?;
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
        self.complete(completed).await?;
        tracing::info!(
            run_id = %run.run_id,
            outcome = outcome.as_str(),
            rows = stats.rows,
            successful = stats.successful,
            partial = stats.partial,
            failed = stats.failed,
            scored_in_run,
            api_calls,
            file = %written.csv.display(),
            "run assembled"
        );
        Ok(RunReport {
            run_id: run.run_id.clone(),
            business_date: run.business_date,
            outcome,
            csv: written.csv.clone(),
            errors: written.errors.clone(),
            summary_path,
            summary,
        })
    }
}

/// One row per roster account, with its latest score and whether this run (?1) expected it and
/// scored it.
const ROSTER_SELECT: &str = "
SELECT r.account_id, r.name, s.status, s.overall, s.environmental, s.social, s.governance,
       s.primary_focus, s.primary_focus_score, s.analysis_date, s.attempts, s.error_code,
       s.error_message, s.scored_at_ms,
       e.account_id IS NOT NULL AS expected,
       rs.account_id IS NOT NULL AS scored_in_run
FROM roster r
LEFT JOIN scores s ON s.account_id = r.account_id
LEFT JOIN expected e ON e.run_id = ?1 AND e.account_id = r.account_id
LEFT JOIN run_scored rs ON rs.run_id = ?1 AND rs.account_id = r.account_id
ORDER BY r.account_id";

/// The same columns for the expected accounts of a re-run (filtered by the caller).
const ROW_SELECT: &str = "
SELECT e.account_id, COALESCE(r.name, ''), s.status, s.overall, s.environmental, s.social, s.governance,
       s.primary_focus, s.primary_focus_score, s.analysis_date, s.attempts, s.error_code,
       s.error_message, s.scored_at_ms,
       1 AS expected,
       rs.account_id IS NOT NULL AS scored_in_run
FROM expected e
LEFT JOIN roster r ON r.account_id = e.account_id
LEFT JOIN scores s ON s.account_id = e.account_id
LEFT JOIN run_scored rs ON rs.run_id = e.run_id AND rs.account_id = e.account_id";

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
        overall: None,
        environmental: None,
        social: None,
        governance: None,
        primary_focus: None,
        primary_focus_score: None,
        analysis_date: None,
        attempts,
        error_code: Some(code.to_owned()),
        error_message: Some(message.to_owned()),
        last_attempt: last.and_then(DateTime::from_timestamp_millis),
    };
    if expected && !scored_in_run {
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
        attempts: r.get(10)?,
        error_code: r.get(11)?,
        error_message: r.get(12)?,
        last_attempt: DateTime::from_timestamp_millis(scored_at),
    })
}
