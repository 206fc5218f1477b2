//! What an alert says: its kind, severity, run, one-line summary and details, and the
//! [`Resolution`] that clears it. Plain data, no I/O: every channel renders these the same way.
//!
//! Summaries are one line and name no account: the constructors only take counts, times and an
//! error message, and every channel passes the summary through [`one_line`] again before sending,
//! so a summary written by hand with line breaks still goes out as one line.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::fmt;

/// Longest summary sent, in characters: PagerDuty's limit for `payload.summary`.
pub const MAX_SUMMARY_CHARS: usize = 1024;

/// Most entries of [`Alert::details`] sent; further entries are dropped (in key order).
pub const MAX_DETAILS: usize = 32;

/// Longest detail value sent, in characters; a longer value is cut and ends with `…`.
pub const MAX_DETAIL_CHARS: usize = 1000;

/// Why the job is raising an alert. The four conditions of DESIGN.md section 7.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The run did not start by its scheduled time plus the grace period.
    MissedStart,
    /// The run exceeded its 4-hour window: the deadline came before every account was scored.
    OverWindow,
    /// A critical error ended the run.
    CriticalError,
    /// More than the threshold (default 5%) of the run's accounts failed.
    FailureRatio,
    /// The run's files were written but a `[[delivery]]` target did not take them.
    DeliveryFailed,
    /// A file the retention policy says to remove could not be removed (Object Lock, a
    /// read-only share, no permission).
    PurgeRefused,
}

impl AlertKind {
    /// Every kind, in declaration order.
    pub const ALL: [AlertKind; 6] = [
        AlertKind::MissedStart,
        AlertKind::OverWindow,
        AlertKind::CriticalError,
        AlertKind::FailureRatio,
        AlertKind::DeliveryFailed,
        AlertKind::PurgeRefused,
    ];

    /// The stable snake_case name used in configuration, subjects, dedup keys and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::MissedStart => "missed_start",
            AlertKind::OverWindow => "over_window",
            AlertKind::CriticalError => "critical_error",
            AlertKind::FailureRatio => "failure_ratio",
            AlertKind::DeliveryFailed => "delivery_failed",
            AlertKind::PurgeRefused => "purge_refused",
        }
    }

    /// How urgent the kind is. A run that did not start, ran out of time or died, and a file
    /// that did not reach the firm, need a person now (`critical`); a run that finished with
    /// too many failures needs one today (`error`).
    pub fn severity(self) -> Severity {
        match self {
            AlertKind::MissedStart
            | AlertKind::OverWindow
            | AlertKind::CriticalError
            | AlertKind::DeliveryFailed => Severity::Critical,
            AlertKind::FailureRatio | AlertKind::PurgeRefused => Severity::Error,
        }
    }

    /// One sentence saying what the kind means, for the email body.
    pub fn description(self) -> &'static str {
        match self {
            AlertKind::MissedStart => {
                "The run did not start by its scheduled time plus the grace period."
            }
            AlertKind::OverWindow => {
                "The run passed its window: the deadline came before every account was scored."
            }
            AlertKind::CriticalError => "A critical error ended the run.",
            AlertKind::FailureRatio => "More accounts failed than the alert threshold allows.",
            AlertKind::DeliveryFailed => {
                "The run's files were written, but a delivery target did not take them."
            }
            AlertKind::PurgeRefused => {
                "A file older than the retention policy allows could not be removed."
            }
        }
    }

    /// The heading of the section of `docs/operations.md` that says what to do.
    pub fn runbook_section(self) -> &'static str {
        match self {
            AlertKind::MissedStart => "The run did not start",
            AlertKind::OverWindow => "The deadline came first (exit 3, outcome `TimedOut`)",
            AlertKind::CriticalError => "The run failed (exit 1)",
            AlertKind::FailureRatio => "Many accounts failed (`CompletedWithFailures`)",
            AlertKind::DeliveryFailed => "A delivery failed (`delivery_failed`)",
            AlertKind::PurgeRefused => "A purge was refused (`purge_refused`)",
        }
    }

    /// The first thing the operator on call should do, in one line.
    pub fn first_step(self) -> &'static str {
        match self {
            AlertKind::MissedStart => "Check the scheduler, then start `esg run --once` by hand.",
            AlertKind::OverWindow => {
                "Find out why the run was slow and tell the business stakeholders how many accounts are affected."
            }
            AlertKind::CriticalError => {
                "Read the error; fix its cause and run the same command again (it resumes)."
            }
            AlertKind::FailureRatio => {
                "Look at `error_codes` in the run summary: a vendor outage, or portfolios the vendor cannot analyse?"
            }
            AlertKind::DeliveryFailed => {
                "Read the error; fix the target, then `esg deliver --business-date D` sends the files again."
            }
            AlertKind::PurgeRefused => {
                "Read which file and why; a legal hold or Object Lock is deliberate: ask compliance before changing it."
            }
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity in PagerDuty's terms (Events API v2 `payload.severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Someone must act now.
    Critical,
    /// Someone must act today.
    Error,
    /// Worth a look.
    Warning,
    /// For the record.
    Info,
}

impl Severity {
    /// `critical`, `error`, `warning` or `info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert about one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// What happened.
    pub kind: AlertKind,
    /// The run it is about (`2026-11-23`, or `2026-11-23.2` for a re-run).
    pub run_id: String,
    /// The business date of the run.
    pub business_date: NaiveDate,
    /// One line, no account names.
    pub summary: String,
    /// Counts, the error, file paths: whatever helps the reader (no account names, no secrets).
    pub details: BTreeMap<String, String>,
    /// When the condition was detected.
    pub at: DateTime<Utc>,
}

impl Alert {
    /// An alert with the given summary (made one line, at most [`MAX_SUMMARY_CHARS`]) and no
    /// details.
    pub fn new(
        kind: AlertKind,
        run_id: impl Into<String>,
        business_date: NaiveDate,
        summary: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Alert {
            kind,
            run_id: run_id.into(),
            business_date,
            summary: one_line(summary, MAX_SUMMARY_CHARS),
            details: BTreeMap::new(),
            at,
        }
    }

    /// Adds (or replaces) one detail.
    pub fn with_detail(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.details.insert(key.into(), value.to_string());
        self
    }

    /// `run <id> did not start by 05:15 CST`. `start_by` is the scheduled time plus the grace,
    /// in the schedule's time zone (its abbreviation is printed).
    pub fn missed_start<Tz>(
        run_id: &str,
        business_date: NaiveDate,
        start_by: &DateTime<Tz>,
        at: DateTime<Utc>,
    ) -> Self
    where
        Tz: TimeZone,
        Tz::Offset: fmt::Display,
    {
        let summary = format!(
            "run {run_id} did not start by {}",
            start_by.format("%H:%M %Z")
        );
        Alert::new(AlertKind::MissedStart, run_id, business_date, &summary, at)
            .with_detail("start_by", start_by.to_rfc3339())
    }

    /// `run <id> passed its deadline 09:00 CST: 12 of 1200 accounts not scored`.
    pub fn over_window<Tz>(
        run_id: &str,
        business_date: NaiveDate,
        deadline: &DateTime<Tz>,
        not_scored: u64,
        expected: u64,
        at: DateTime<Utc>,
    ) -> Self
    where
        Tz: TimeZone,
        Tz::Offset: fmt::Display,
    {
        let summary = format!(
            "run {run_id} passed its deadline {}: {not_scored} of {expected} accounts not scored",
            deadline.format("%H:%M %Z")
        );
        Alert::new(AlertKind::OverWindow, run_id, business_date, &summary, at)
            .with_detail("deadline", deadline.to_rfc3339())
            .with_detail("not_scored", not_scored)
            .with_detail("expected", expected)
    }

    /// `run <id> ended on a critical error: <first line of the error>`; the whole error (bounded)
    /// is the `error` detail. The error must not name accounts (errors of this workspace do not).
    pub fn critical_error(
        run_id: &str,
        business_date: NaiveDate,
        error: &str,
        at: DateTime<Utc>,
    ) -> Self {
        let summary = format!(
            "run {run_id} ended on a critical error: {}",
            one_line(error, 300)
        );
        Alert::new(
            AlertKind::CriticalError,
            run_id,
            business_date,
            &summary,
            at,
        )
        .with_detail("error", error)
    }

    /// `run <id>: 80 of 1000 accounts failed (8.00%, threshold 5%)`.
    pub fn failure_ratio(
        run_id: &str,
        business_date: NaiveDate,
        failed: u64,
        expected: u64,
        threshold: Decimal,
        at: DateTime<Utc>,
    ) -> Self {
        let percent = percent_of(failed, expected);
        let threshold_percent = (threshold * Decimal::ONE_HUNDRED).normalize();
        let summary = format!(
            "run {run_id}: {failed} of {expected} accounts failed ({percent}%, threshold {threshold_percent}%)"
        );
        Alert::new(AlertKind::FailureRatio, run_id, business_date, &summary, at)
            .with_detail("failed", failed)
            .with_detail("expected", expected)
            .with_detail("failed_percent", percent)
            .with_detail("threshold_percent", threshold_percent)
    }

    /// `run <id>: files not delivered to sftp:host (and 1 more): <error>`. One alert for the
    /// run, whatever the number of targets that failed; each is a detail.
    pub fn delivery_failed(
        run_id: &str,
        business_date: NaiveDate,
        failures: &[(String, String)],
        at: DateTime<Utc>,
    ) -> Self {
        let first = failures.first().map_or("", |(t, _)| t.as_str());
        let more = match failures.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        let error = failures.first().map_or("", |(_, e)| e.as_str());
        let summary = format!(
            "run {run_id}: files not delivered to {first}{more}: {}",
            one_line(error, 300)
        );
        let mut alert = Alert::new(
            AlertKind::DeliveryFailed,
            run_id,
            business_date,
            &summary,
            at,
        );
        for (target, error) in failures {
            alert = alert.with_detail(format!("target {target}"), error);
        }
        alert
    }

    /// The resolution of this alert: same kind and run, with why it cleared.
    pub fn resolved(&self, summary: &str, at: DateTime<Utc>) -> Resolution {
        Resolution::new(
            self.kind,
            self.run_id.clone(),
            self.business_date,
            summary,
            at,
        )
    }
}

/// The condition of an earlier [`Alert`] of the same kind and run has cleared (e.g. a re-run
/// brought the failure ratio under the threshold). Closes the PagerDuty incident.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The kind of the alert that cleared.
    pub kind: AlertKind,
    /// The run of the alert that cleared.
    pub run_id: String,
    /// The business date of that run.
    pub business_date: NaiveDate,
    /// Why it cleared, one line.
    pub summary: String,
    /// When it cleared.
    pub at: DateTime<Utc>,
}

impl Resolution {
    /// A resolution with the given summary (made one line, at most [`MAX_SUMMARY_CHARS`]).
    pub fn new(
        kind: AlertKind,
        run_id: impl Into<String>,
        business_date: NaiveDate,
        summary: &str,
        at: DateTime<Utc>,
    ) -> Self {
        Resolution {
            kind,
            run_id: run_id.into(),
            business_date,
            summary: one_line(summary, MAX_SUMMARY_CHARS),
            at,
        }
    }
}

/// What a channel delivers: an alert that fires, or the resolution of one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event<'a> {
    /// The condition holds.
    Fire(&'a Alert),
    /// The condition cleared.
    Resolve(&'a Resolution),
}

impl Event<'_> {
    pub(crate) fn kind(&self) -> AlertKind {
        match self {
            Event::Fire(a) => a.kind,
            Event::Resolve(r) => r.kind,
        }
    }

    pub(crate) fn run_id(&self) -> &str {
        match self {
            Event::Fire(a) => &a.run_id,
            Event::Resolve(r) => &r.run_id,
        }
    }

    pub(crate) fn business_date(&self) -> NaiveDate {
        match self {
            Event::Fire(a) => a.business_date,
            Event::Resolve(r) => r.business_date,
        }
    }

    /// The summary, one line, at most [`MAX_SUMMARY_CHARS`].
    pub(crate) fn summary(&self) -> String {
        let summary = match self {
            Event::Fire(a) => &a.summary,
            Event::Resolve(r) => &r.summary,
        };
        one_line(summary, MAX_SUMMARY_CHARS)
    }

    /// The details as sent (bounded); none for a resolution.
    pub(crate) fn details(&self) -> BTreeMap<String, String> {
        match self {
            Event::Fire(a) => bounded_details(&a.details),
            Event::Resolve(_) => BTreeMap::new(),
        }
    }

    pub(crate) fn at(&self) -> DateTime<Utc> {
        match self {
            Event::Fire(a) => a.at,
            Event::Resolve(r) => r.at,
        }
    }

    /// `trigger` or `resolve` (PagerDuty's words), for logs.
    pub(crate) fn action(&self) -> &'static str {
        match self {
            Event::Fire(_) => "trigger",
            Event::Resolve(_) => "resolve",
        }
    }
}

/// `failed / expected` in percent, rounded to exactly two decimals; 0 when nothing was expected.
fn percent_of(failed: u64, expected: u64) -> Decimal {
    if expected == 0 {
        return Decimal::ZERO;
    }
    let mut percent = Decimal::from(failed) * Decimal::ONE_HUNDRED / Decimal::from(expected);
    percent.rescale(2);
    percent
}

/// `text` on one line: every run of whitespace or control characters becomes one space, the
/// ends are trimmed, and at most `max_chars` characters are kept (the last one `…` when cut).
pub fn one_line(text: &str, max_chars: usize) -> String {
    let joined = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    truncate_chars(&joined, max_chars)
}

/// At most `max_chars` characters of `text`, the last one `…` when it was cut.
pub(crate) fn truncate_chars(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The details that are sent: at most [`MAX_DETAILS`] entries, each value cut to
/// [`MAX_DETAIL_CHARS`].
pub(crate) fn bounded_details(details: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    details
        .iter()
        .take(MAX_DETAILS)
        .map(|(k, v)| (one_line(k, 100), truncate_chars(v, MAX_DETAIL_CHARS)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
    }

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 11, 15, 0)
            .single()
            .expect("time")
    }

    #[test]
    fn kind_names_are_stable_snake_case_and_match_serde() {
        let names: Vec<_> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "missed_start",
                "over_window",
                "critical_error",
                "failure_ratio",
                "delivery_failed",
                "purge_refused"
            ]
        );
        for kind in AlertKind::ALL {
            let json = serde_json::to_string(&kind).expect("serialize");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: AlertKind = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn severities_follow_urgency() {
        assert_eq!(AlertKind::MissedStart.severity(), Severity::Critical);
        assert_eq!(AlertKind::OverWindow.severity(), Severity::Critical);
        assert_eq!(AlertKind::CriticalError.severity(), Severity::Critical);
        assert_eq!(AlertKind::FailureRatio.severity(), Severity::Error);
        assert_eq!(Severity::Warning.as_str(), "warning");
    }

    #[test]
    fn runbook_sections_exist_in_operations_md() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let runbook = std::fs::read_to_string(path).expect("read docs/operations.md");
        for kind in AlertKind::ALL {
            let heading = format!("## {}\n", kind.runbook_section());
            assert!(
                runbook.contains(&heading),
                "docs/operations.md has no section {heading:?} for {kind}"
            );
        }
    }

    #[test]
    fn missed_start_summary_names_the_local_time() {
        let cst = FixedOffset::west_opt(6 * 3600).expect("offset");
        let start_by = cst
            .with_ymd_and_hms(2026, 11, 23, 5, 15, 0)
            .single()
            .expect("time");
        let alert = Alert::missed_start("2026-11-23", date(), &start_by, at());
        assert_eq!(
            alert.summary,
            "run 2026-11-23 did not start by 05:15 -06:00"
        );
        assert_eq!(alert.details["start_by"], "2026-11-23T05:15:00-06:00");
    }

    #[test]
    fn failure_ratio_summary_has_exact_percentages() {
        let alert = Alert::failure_ratio("2026-11-23", date(), 80, 1000, Decimal::new(5, 2), at());
        assert_eq!(
            alert.summary,
            "run 2026-11-23: 80 of 1000 accounts failed (8.00%, threshold 5%)"
        );
        assert_eq!(alert.details["failed"], "80");
        assert_eq!(percent_of(1, 3), Decimal::new(3333, 2));
        assert_eq!(percent_of(1, 0), Decimal::ZERO);
        assert_eq!(percent_of(2, 3).to_string(), "66.67");
    }

    #[test]
    fn critical_error_summary_is_one_line_with_full_error_in_details() {
        let error = "assembler: cannot write\n  /data/out/FirmESGRatings_20261123.csv: disk full";
        let alert = Alert::critical_error("2026-11-23", date(), error, at());
        assert_eq!(
            alert.summary,
            "run 2026-11-23 ended on a critical error: assembler: cannot write /data/out/FirmESGRatings_20261123.csv: disk full"
        );
        assert_eq!(alert.details["error"], error);
    }

    #[test]
    fn one_line_collapses_whitespace_and_bounds_length() {
        assert_eq!(one_line("  a\r\n\tb  c\u{7}d ", 100), "a b c d");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(one_line("éééé", 4), "éééé");
        let long = "x".repeat(5000);
        assert_eq!(
            Alert::new(AlertKind::CriticalError, "r", date(), &long, at())
                .summary
                .chars()
                .count(),
            MAX_SUMMARY_CHARS
        );
    }

    #[test]
    fn bounded_details_caps_entries_and_values() {
        let mut details = BTreeMap::new();
        for i in 0..(MAX_DETAILS + 10) {
            details.insert(format!("k{i:03}"), "v".repeat(MAX_DETAIL_CHARS + 5));
        }
        let bounded = bounded_details(&details);
        assert_eq!(bounded.len(), MAX_DETAILS);
        assert!(bounded
            .values()
            .all(|v| v.chars().count() == MAX_DETAIL_CHARS && v.ends_with('…')));
    }

    #[test]
    fn resolution_keeps_kind_and_run() {
        let alert = Alert::new(AlertKind::FailureRatio, "2026-11-23.2", date(), "x", at());
        let resolution = alert.resolved("re-run fixed it\n", at());
        assert_eq!(resolution.kind, AlertKind::FailureRatio);
        assert_eq!(resolution.run_id, "2026-11-23.2");
        assert_eq!(resolution.summary, "re-run fixed it");
    }
}
