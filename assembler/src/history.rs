//! The history of runs, for trends: one row per run the assembler ended (daily runs, re-runs,
//! replays; those that wrote no file too), kept in the `history` table of `assembler.db`.
//!
//! A row is written in the same transaction as the run's facts, after its files and summary,
//! and is keyed by the run id: a run assembled again after a crash replaces its row, so there
//! is one row per run whatever the moment of a kill. The table is not rebuilt from the topics
//! with the rest of the store: `esg history import DIR` rebuilds it from the day summaries
//! (each holds its daily run and every re-run of the day).
//!
//! The per-day view ([`days`]) is what the day's file came from: the latest daily run of each
//! business date and the re-runs after it.

use crate::summary::{Comparison, Reference, RerunEntry, ScoreSum, Summary, COMPARISON_DAYS};
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, OptionalExtension};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The table (applied with the store's schema).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT PRIMARY KEY,
    business_date TEXT NOT NULL,
    kind TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    row_json TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS history_by_date ON history (business_date, started_at_ms);
";

/// One run as the history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    pub run_id: String,
    pub business_date: NaiveDate,
    /// `Daily`, `Rerun` or `Replay`.
    pub kind: String,
    /// `Completed`, `CompletedWithFailures`, `TimedOut` or `Aborted`.
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The run's deadline; `None` when unknown (a row imported from a summary).
    pub deadline: Option<DateTime<Utc>>,
    /// Whether the run ended by its deadline (a `TimedOut` run did not); `None` when unknown.
    pub deadline_met: Option<bool>,
    /// The day's ratings file after the run: its rows and their statuses (0 when the run wrote
    /// no file).
    pub accounts: u64,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    pub success_rate_percent: String,
    /// `overall`, `environmental`, `social`, `governance` → exact sum and rows showing it.
    pub score_sums: BTreeMap<String, ScoreSum>,
    /// The same four → average, two decimals (`None` when no row shows the score).
    pub averages: BTreeMap<String, Option<String>>,
    /// `Environmental`, `Social`, `Governance` → rows with that primary focus.
    pub primary_focus: BTreeMap<String, u64>,
    /// Accounts the run scored (for a re-run: the accounts it was for and scored).
    pub scored: u64,
    /// Rows a daily run carried forward from earlier scores (0 for a re-run).
    pub carried_forward: u64,
    pub new_accounts: u64,
    pub gone_accounts: u64,
    pub malformed_records: u64,
    /// ESG API use: HTTP requests, of them answered 429, scoring attempts, and retries (the
    /// attempts after each account's first).
    pub api_requests: u64,
    pub api_rate_limited: u64,
    pub api_attempts: u64,
    pub retries: u64,
}

impl HistoryRow {
    /// The daily run that wrote `summary`'s file.
    pub fn daily(summary: &Summary, deadline: Option<DateTime<Utc>>) -> HistoryRow {
        HistoryRow {
            run_id: summary.run_id.clone(),
            kind: "Daily".into(),
            outcome: summary.outcome.clone(),
            started_at: summary.started_at,
            finished_at: summary.finished_at,
            scored: summary.scored_in_run,
            carried_forward: summary.carried_forward,
            new_accounts: summary.new_accounts,
            gone_accounts: summary.gone_accounts,
            malformed_records: summary.malformed_records,
            api_requests: summary.api_requests,
            api_rate_limited: summary.api_rate_limited,
            api_attempts: summary.api_attempts,
            retries: summary.api_attempts.saturating_sub(summary.scored_in_run),
            ..HistoryRow::of_file(summary, deadline)
        }
    }

    /// The re-run `entry` of `summary`'s day (the file counts are the file after it).
    pub fn rerun(
        summary: &Summary,
        entry: &RerunEntry,
        deadline: Option<DateTime<Utc>>,
    ) -> HistoryRow {
        HistoryRow {
            run_id: entry.run_id.clone(),
            kind: entry.kind.clone(),
            outcome: entry.outcome.clone(),
            started_at: entry.started_at,
            finished_at: entry.finished_at,
            scored: entry.scored,
            api_requests: entry.api_requests,
            api_rate_limited: entry.api_rate_limited,
            api_attempts: entry.api_attempts,
            retries: entry.api_attempts.saturating_sub(entry.scored),
            ..HistoryRow::of_file(summary, deadline)
        }
    }

    /// A run that ended without a file (never sealed by its deadline).
    pub fn without_file(
        run_id: &str,
        business_date: NaiveDate,
        kind: &str,
        outcome: &str,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
        deadline: DateTime<Utc>,
    ) -> HistoryRow {
        HistoryRow {
            run_id: run_id.to_owned(),
            business_date,
            kind: kind.to_owned(),
            outcome: outcome.to_owned(),
            started_at,
            finished_at,
            deadline: Some(deadline),
            deadline_met: Some(false),
            accounts: 0,
            successful: 0,
            partial: 0,
            failed: 0,
            success_rate_percent: "0.00".into(),
            score_sums: BTreeMap::new(),
            averages: BTreeMap::new(),
            primary_focus: BTreeMap::new(),
            scored: 0,
            carried_forward: 0,
            new_accounts: 0,
            gone_accounts: 0,
            malformed_records: 0,
            api_requests: 0,
            api_rate_limited: 0,
            api_attempts: 0,
            retries: 0,
        }
    }

    /// The file's counts of `summary`, with no run facts yet.
    fn of_file(summary: &Summary, deadline: Option<DateTime<Utc>>) -> HistoryRow {
        let averages = BTreeMap::from([
            ("overall".to_owned(), summary.average_overall.clone()),
            (
                "environmental".to_owned(),
                summary.average_environmental.clone(),
            ),
            ("social".to_owned(), summary.average_social.clone()),
            ("governance".to_owned(), summary.average_governance.clone()),
        ]);
        HistoryRow {
            business_date: summary.business_date,
            deadline,
            deadline_met: deadline.map(|_| summary.outcome != "TimedOut"),
            accounts: summary.accounts,
            successful: summary.successful,
            partial: summary.partial,
            failed: summary.failed,
            success_rate_percent: summary.success_rate_percent.clone(),
            score_sums: summary.score_sums.clone(),
            averages,
            primary_focus: summary.primary_focus.clone(),
            ..HistoryRow::without_file(
                "",
                summary.business_date,
                "",
                "",
                summary.started_at,
                summary.finished_at,
                summary.finished_at,
            )
        }
    }

    /// Every run `summary` tells of: its daily run, then each re-run (for `esg history import`).
    pub fn all_of(summary: &Summary) -> Vec<HistoryRow> {
        let mut rows = vec![HistoryRow::daily(summary, None)];
        rows.extend(
            summary
                .reruns
                .iter()
                .map(|entry| HistoryRow::rerun(summary, entry, None)),
        );
        rows
    }
}

/// Writes (or replaces) the row of its run.
pub fn record(c: &rusqlite::Connection, row: &HistoryRow) -> rusqlite::Result<()> {
    let json = serde_json::to_string(row)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    c.prepare_cached(
        "INSERT OR REPLACE INTO history (run_id, business_date, kind, started_at_ms, row_json)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        row.run_id,
        row.business_date.to_string(),
        row.kind,
        row.started_at.timestamp_millis(),
        json
    ])?;
    Ok(())
}

/// Writes the row of a run only if the history has none (an import does not replace what the
/// assembler recorded, which knows the deadline). True when written.
pub fn record_if_absent(c: &rusqlite::Connection, row: &HistoryRow) -> rusqlite::Result<bool> {
    let present: Option<i64> = c
        .query_row(
            "SELECT 1 FROM history WHERE run_id = ?1",
            [&row.run_id],
            |r| r.get(0),
        )
        .optional()?;
    if present.is_some() {
        return Ok(false);
    }
    record(c, row)?;
    Ok(true)
}

/// Every run of business dates from `since` on (all when `None`), by date then start.
pub fn runs(
    c: &rusqlite::Connection,
    since: Option<NaiveDate>,
) -> rusqlite::Result<Vec<HistoryRow>> {
    let since = since.map_or_else(String::new, |d| d.to_string());
    let mut stmt = c.prepare(
        "SELECT run_id, row_json FROM history WHERE business_date >= ?1
         ORDER BY business_date, started_at_ms, run_id",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (run_id, json) = row?;
        match serde_json::from_str(&json) {
            Ok(row) => out.push(row),
            Err(e) => {
                tracing::error!(run_id = %run_id, error = %e, "a history row does not parse: left out")
            }
        }
    }
    Ok(out)
}

/// One business date as its file came to be: the latest daily run and the re-runs after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Day {
    pub business_date: NaiveDate,
    /// `None` when the history holds only re-runs of the date.
    pub daily: Option<HistoryRow>,
    pub reruns: Vec<HistoryRow>,
}

/// The per-day view of `runs` (as [`runs`] returns them: by date, then start).
pub fn days(runs: Vec<HistoryRow>) -> Vec<Day> {
    let mut by_date: BTreeMap<NaiveDate, Vec<HistoryRow>> = BTreeMap::new();
    for row in runs {
        by_date.entry(row.business_date).or_default().push(row);
    }
    by_date
        .into_iter()
        .map(|(business_date, rows)| {
            let daily = rows.iter().rposition(|r| r.kind == "Daily");
            let (daily, after) = match daily {
                Some(i) => (Some(rows[i].clone()), rows[i + 1..].to_vec()),
                None => (None, rows),
            };
            Day {
                business_date,
                daily,
                reruns: after.into_iter().filter(|r| r.kind != "Daily").collect(),
            }
        })
        .collect()
}

/// What the summary of `date` compares its averages with (see [`Comparison`]): the latest
/// earlier business date with a file, and the mean over every row of the files of the
/// [`COMPARISON_DAYS`] days before `date`. Each earlier day counts as its file stood after its
/// last run (the daily run or a re-run after it). A sum that does not parse (a row written by
/// hand) leaves that day out of the mean.
pub fn comparison(c: &rusqlite::Connection, date: NaiveDate) -> rusqlite::Result<Comparison> {
    let since = date - chrono::Duration::days(COMPARISON_DAYS);
    let earlier: Vec<HistoryRow> = runs(c, Some(since))?
        .into_iter()
        .filter(|r| r.business_date < date)
        .collect();
    let files: Vec<HistoryRow> = days(earlier)
        .into_iter()
        .filter_map(|day| {
            let mut last = day
                .daily
                .into_iter()
                .chain(day.reruns)
                .filter(|r| r.accounts > 0);
            last.next_back()
        })
        .collect();
    let sums_of = |row: &HistoryRow| -> Option<BTreeMap<String, (Decimal, u64)>> {
        row.score_sums
            .iter()
            .map(|(score, s)| Some((score.clone(), (s.sum.parse::<Decimal>().ok()?, s.rows))))
            .collect()
    };
    let previous_day = files.last().map(|row| {
        Reference::of_sums(
            row.business_date,
            row.business_date,
            1,
            &sums_of(row).unwrap_or_default(),
        )
    });
    let mut pooled: BTreeMap<String, (Decimal, u64)> = BTreeMap::new();
    let mut counted: Vec<NaiveDate> = Vec::new();
    for row in &files {
        let Some(sums) = sums_of(row) else {
            tracing::warn!(business_date = %row.business_date, "a history row's score sums do not parse: the day is left out of the 30-day mean");
            continue;
        };
        for (score, (sum, rows)) in sums {
            let entry = pooled.entry(score).or_default();
            entry.0 = entry.0.saturating_add(sum);
            entry.1 += rows;
        }
        counted.push(row.business_date);
    }
    let mean_30_days = match (counted.first(), counted.last()) {
        (Some(&from), Some(&to)) => {
            Some(Reference::of_sums(from, to, counted.len() as u64, &pooled))
        }
        _ => None,
    };
    Ok(Comparison {
        previous_day,
        mean_30_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(run_id: &str, date: &str, kind: &str, hour: u32) -> HistoryRow {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 23, hour, 0, 0)
            .single()
            .expect("time");
        HistoryRow {
            accounts: 10,
            ..HistoryRow::without_file(
                run_id,
                date.parse().expect("date"),
                kind,
                "Completed",
                at,
                at,
                at,
            )
        }
    }

    #[test]
    fn a_run_recorded_twice_is_one_row_and_the_day_view_starts_at_the_latest_daily_run() {
        let c = rusqlite::Connection::open_in_memory().expect("db");
        c.execute_batch(SCHEMA).expect("schema");
        for r in [
            row("2026-11-23", "2026-11-23", "Daily", 11),
            row("2026-11-23.1", "2026-11-23", "Rerun", 12),
            row("2026-11-23.2", "2026-11-23", "Daily", 13),
            row("2026-11-23.3", "2026-11-23", "Replay", 14),
            row("2026-11-24", "2026-11-24", "Daily", 11),
        ] {
            record(&c, &r).expect("record");
        }
        // Assembled again after a crash: the same row, replaced.
        let mut again = row("2026-11-24", "2026-11-24", "Daily", 11);
        again.accounts = 11;
        record(&c, &again).expect("again");
        assert!(
            !record_if_absent(&c, &row("2026-11-24", "2026-11-24", "Daily", 11)).expect("absent")
        );

        let all = runs(&c, None).expect("runs");
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].accounts, 11);
        let view = days(all);
        assert_eq!(view.len(), 2);
        assert_eq!(
            view[0].daily.as_ref().map(|r| r.run_id.as_str()),
            Some("2026-11-23.2")
        );
        let reruns: Vec<&str> = view[0].reruns.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(
            reruns,
            ["2026-11-23.3"],
            "re-runs before the latest daily run are superseded"
        );
        let since = runs(&c, Some("2026-11-24".parse().expect("date"))).expect("since");
        assert_eq!(since.len(), 1);
    }

    fn with_sums(mut r: HistoryRow, overall: (&str, u64)) -> HistoryRow {
        r.score_sums = BTreeMap::from([(
            "overall".to_owned(),
            ScoreSum {
                sum: overall.0.to_owned(),
                rows: overall.1,
            },
        )]);
        r
    }

    #[test]
    fn the_comparison_is_the_previous_file_and_the_pooled_mean_of_the_30_days_before() {
        let c = rusqlite::Connection::open_in_memory().expect("db");
        c.execute_batch(SCHEMA).expect("schema");
        for r in [
            // Out of the window (more than 30 days before 2026-12-24).
            with_sums(row("2026-11-20", "2026-11-20", "Daily", 11), ("1000", 10)),
            with_sums(row("2026-11-25", "2026-11-25", "Daily", 11), ("700", 10)),
            // The daily run of 12-22, then a re-run: the file after the re-run counts.
            with_sums(row("2026-12-22", "2026-12-22", "Daily", 11), ("800", 10)),
            with_sums(row("2026-12-22.1", "2026-12-22", "Rerun", 12), ("820", 10)),
            // A run that wrote no file is not a day with a file.
            HistoryRow::without_file(
                "2026-12-23",
                "2026-12-23".parse().expect("date"),
                "Daily",
                "Aborted",
                Utc::now(),
                Utc::now(),
                Utc::now(),
            ),
            // The date itself is not compared with itself.
            with_sums(row("2026-12-24", "2026-12-24", "Daily", 11), ("10", 10)),
        ] {
            record(&c, &r).expect("record");
        }
        let date: NaiveDate = "2026-12-24".parse().expect("date");
        let got = comparison(&c, date).expect("comparison");
        let previous = got.previous_day.expect("previous day");
        assert_eq!(
            (previous.from, previous.days),
            ("2026-12-22".parse().expect("d"), 1)
        );
        assert_eq!(previous.averages["overall"].as_deref(), Some("82.00"));
        assert_eq!(previous.averages["social"], None);
        let mean = got.mean_30_days.expect("mean");
        assert_eq!(mean.days, 2);
        assert_eq!(mean.from, "2026-11-25".parse::<NaiveDate>().expect("d"));
        // (700 + 820) / 20
        assert_eq!(mean.averages["overall"].as_deref(), Some("76.00"));

        let first = comparison(&c, "2026-11-20".parse().expect("date")).expect("first");
        assert_eq!(first, Comparison::default(), "no earlier day");
    }
}
