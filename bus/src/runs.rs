//! What the triggers topic says about runs: the one reader of a run's facts (business date,
//! kind, deadline, seal, completion) for the scorer, the assembler's callers and the runner.
//!
//! A run's date and deadline are read from its `DailyTrigger`, never derived again from the
//! configuration or parsed out of its id. The book is read incrementally: [`RunBook::refresh`]
//! reads from where the last refresh stopped to the topic's current end, so a long-running
//! reader (a scorer) pays for each trigger record once.
//!
//! Run ids: the first daily run of a business date is `YYYY-MM-DD`; every later run of that
//! date (a re-run, a replay, or a new daily attempt after one that delivered no file) is
//! `YYYY-MM-DD.N` with N one more than the highest sequence the topic holds for the date
//! ([`RunBook::next_run_id`]).

use crate::{EventBus, RangeReader, Result};
use chrono::{DateTime, NaiveDate, Utc};
use esg_schemas::{DailyTrigger, Event, RunCompleted, RunKind, RunOutcome, RunSealed};
use std::collections::BTreeMap;

/// One run as the triggers topic describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub kind: RunKind,
    pub full: bool,
    pub deadline: DateTime<Utc>,
    pub triggered_at: DateTime<Utc>,
    /// The producer's seal, once published.
    pub sealed: Option<RunSealed>,
    /// The assembler's last word, once published.
    pub completed: Option<RunCompleted>,
}

impl RunFacts {
    fn from_trigger(t: DailyTrigger) -> Self {
        RunFacts {
            run_id: t.run_id,
            business_date: t.business_date,
            kind: t.kind,
            full: t.full,
            deadline: t.deadline,
            triggered_at: t.triggered_at,
            sealed: None,
            completed: None,
        }
    }

    /// True when the run wrote (or replaced rows of) its day's file: it completed with an
    /// output file. A run that timed out before its listing was sealed, or was aborted, did not.
    pub fn delivered(&self) -> bool {
        self.completed
            .as_ref()
            .is_some_and(|c| c.outcome != RunOutcome::Aborted && !c.output_file.is_empty())
    }

    /// The phase a person would name: `started`, `sealed` or `completed`.
    pub fn phase(&self) -> &'static str {
        match (&self.sealed, &self.completed) {
            (_, Some(_)) => "completed",
            (Some(_), None) => "sealed",
            (None, None) => "started",
        }
    }
}

/// The runs on the triggers topic, read incrementally.
#[derive(Debug, Default)]
pub struct RunBook {
    runs: BTreeMap<String, RunFacts>,
    next_offset: i64,
}

impl RunBook {
    /// An empty book; the first [`refresh`](Self::refresh) reads the topic from its start.
    pub fn new() -> Self {
        RunBook::default()
    }

    /// A book read to the topic's current end.
    pub async fn read(bus: &EventBus) -> Result<Self> {
        let mut book = RunBook::new();
        book.refresh(bus).await?;
        Ok(book)
    }

    /// Reads the triggers topic from where the last refresh stopped to its current end.
    pub async fn refresh(&mut self, bus: &EventBus) -> Result<()> {
        let topic = &bus.topics.triggers;
        let start = bus.transport.start_offsets(topic).await?[0];
        let end = bus.transport.end_offsets(topic).await?[0];
        let from = self.next_offset.max(start);
        let mut range = RangeReader::new(&*bus.transport, topic, 0, from, end, 1000);
        while let Some(batch) = range.next_batch().await? {
            for m in batch {
                match bus.decode(m.value.as_deref()) {
                    Ok(Some(event)) => self.apply(event),
                    Ok(None) => {}
                    Err(err) => tracing::warn!(topic = %m.topic, offset = m.offset, error = %err,
                        "undecodable trigger record skipped"),
                }
            }
            self.next_offset = range.position();
        }
        self.next_offset = self.next_offset.max(range.position());
        Ok(())
    }

    /// Applies one event of the triggers topic (a trigger published again on a resume is the
    /// same run: its first facts stay, a later deadline is not taken).
    pub fn apply(&mut self, event: Event) {
        match event {
            Event::DailyTrigger(t) => {
                self.runs
                    .entry(t.run_id.clone())
                    .or_insert_with(|| RunFacts::from_trigger(t));
            }
            Event::RunSealed(s) => {
                if let Some(r) = self.runs.get_mut(&s.run_id) {
                    r.sealed.get_or_insert(s);
                }
            }
            Event::RunCompleted(c) => {
                if let Some(r) = self.runs.get_mut(&c.run_id) {
                    r.completed.get_or_insert(c);
                }
            }
            _ => {}
        }
    }

    /// One run's facts.
    pub fn get(&self, run_id: &str) -> Option<&RunFacts> {
        self.runs.get(run_id)
    }

    /// Every run of a business date, oldest sequence first.
    pub fn of_date(&self, date: NaiveDate) -> Vec<&RunFacts> {
        let mut runs: Vec<&RunFacts> = self
            .runs
            .values()
            .filter(|r| r.business_date == date)
            .collect();
        runs.sort_by_key(|r| sequence(&r.run_id, date));
        runs
    }

    /// The latest daily run (first or later attempt) of a business date.
    pub fn latest_daily(&self, date: NaiveDate) -> Option<&RunFacts> {
        self.of_date(date)
            .into_iter()
            .rev()
            .find(|r| r.kind == RunKind::Daily)
    }

    /// The daily run whose file stands for the date: the latest daily run that delivered one.
    pub fn delivered_daily(&self, date: NaiveDate) -> Option<&RunFacts> {
        self.of_date(date)
            .into_iter()
            .rev()
            .find(|r| r.kind == RunKind::Daily && r.delivered())
    }

    /// The most recently triggered daily run that has ended (with a file or without), of any date.
    pub fn latest_completed_daily(&self) -> Option<&RunFacts> {
        self.runs
            .values()
            .filter(|r| r.kind == RunKind::Daily && r.completed.is_some())
            .max_by_key(|r| r.triggered_at)
    }

    /// Runs not completed yet, oldest first.
    pub fn open(&self) -> Vec<&RunFacts> {
        let mut open: Vec<&RunFacts> = self
            .runs
            .values()
            .filter(|r| r.completed.is_none())
            .collect();
        open.sort_by_key(|r| r.triggered_at);
        open
    }

    /// The most recently triggered run, if any.
    pub fn latest(&self) -> Option<&RunFacts> {
        self.runs.values().max_by_key(|r| r.triggered_at)
    }

    /// The id of the next run of `date`: `YYYY-MM-DD` when the date has no run yet, otherwise
    /// `YYYY-MM-DD.N` with N one more than the highest sequence used.
    pub fn next_run_id(&self, date: NaiveDate) -> String {
        match self
            .of_date(date)
            .iter()
            .map(|r| sequence(&r.run_id, date))
            .max()
        {
            None => date.to_string(),
            Some(n) => format!("{date}.{}", n + 1),
        }
    }
}

/// The sequence of a run of `date`: 0 for the first daily run, N for `DATE.N`.
fn sequence(run_id: &str, date: NaiveDate) -> u32 {
    let base = date.to_string();
    match run_id.strip_prefix(&base) {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix('.')
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX / 2),
        None => u32::MAX / 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
    }

    fn trigger(run_id: &str, kind: RunKind) -> Event {
        Event::DailyTrigger(DailyTrigger {
            run_id: run_id.into(),
            business_date: date(),
            kind,
            full: false,
            deadline: DateTime::from_timestamp(2_000_000_000, 0).expect("t"),
            triggered_at: DateTime::from_timestamp(1_900_000_000 + run_id.len() as i64, 0)
                .expect("t"),
        })
    }

    fn completed(run_id: &str, outcome: RunOutcome, file: &str) -> Event {
        Event::RunCompleted(RunCompleted {
            run_id: run_id.into(),
            business_date: date(),
            outcome,
            rows: 10,
            successful: 10,
            partial: 0,
            failed: 0,
            output_file: file.into(),
            completed_at: DateTime::from_timestamp(1_950_000_000, 0).expect("t"),
        })
    }

    #[test]
    fn run_ids_follow_the_sequence_of_the_date() {
        let mut book = RunBook::new();
        assert_eq!(book.next_run_id(date()), "2026-11-23");
        book.apply(trigger("2026-11-23", RunKind::Daily));
        assert_eq!(book.next_run_id(date()), "2026-11-23.1");
        book.apply(trigger("2026-11-23.1", RunKind::Rerun));
        book.apply(trigger("2026-11-23.2", RunKind::Replay));
        assert_eq!(book.next_run_id(date()), "2026-11-23.3");
        let other = NaiveDate::from_ymd_opt(2026, 11, 24).expect("d");
        assert_eq!(book.next_run_id(other), "2026-11-24");
    }

    #[test]
    fn a_daily_run_without_a_file_does_not_deliver_the_day() {
        let mut book = RunBook::new();
        book.apply(trigger("2026-11-23", RunKind::Daily));
        assert_eq!(
            book.latest_daily(date()).map(|r| r.phase()),
            Some("started")
        );
        book.apply(completed("2026-11-23", RunOutcome::TimedOut, ""));
        assert!(book.delivered_daily(date()).is_none());
        book.apply(trigger("2026-11-23.1", RunKind::Daily));
        book.apply(completed(
            "2026-11-23.1",
            RunOutcome::Completed,
            "FirmESGRatings_20261123.csv",
        ));
        assert_eq!(
            book.delivered_daily(date()).map(|r| r.run_id.as_str()),
            Some("2026-11-23.1")
        );
        assert_eq!(
            book.latest_daily(date()).map(|r| r.run_id.as_str()),
            Some("2026-11-23.1")
        );
    }

    #[test]
    fn a_trigger_published_again_keeps_the_first_facts() {
        let mut book = RunBook::new();
        book.apply(trigger("2026-11-23", RunKind::Daily));
        let first = book.get("2026-11-23").cloned();
        let Event::DailyTrigger(mut again) = trigger("2026-11-23", RunKind::Daily) else {
            unreachable!()
        };
        again.deadline = DateTime::from_timestamp(2_100_000_000, 0).expect("t");
        book.apply(Event::DailyTrigger(again));
        assert_eq!(book.get("2026-11-23").cloned(), first);
        assert_eq!(book.open().len(), 1);
    }
}
