//! The human-readable summary `FirmESGRatings_YYYYMMDD_summary.html`: the JSON summary rendered
//! for a person, beside it.
//!
//! The page is a pure function of the [`Summary`] (nothing is read at render time, no clock):
//! rendering the same JSON again gives the same bytes, which is how erasure rewrites it (from
//! the rewritten JSON). It is self-contained, so it can be mailed as an attachment and opened
//! offline: inline CSS and SVG, no script, nothing loaded from anywhere (its own
//! Content-Security-Policy forbids it). Every text that came from outside (account ids, vendor
//! messages, error codes) goes through the template's HTML escaping.

use askama::Template;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::encryption::Protection;
use crate::output::{file_names, write_file_atomically, OutputError};
use crate::summary::{Reference, Summary, COMPARISON_DAYS, SCORES};

/// What an error code means and what a person does about it (the user guide's table).
pub fn code_help(code: &str) -> (&'static str, &'static str) {
    match code {
        "HTTP_404" => (
            "the vendor knows no portfolio under this id",
            "check the account with the vendor; it is retried tomorrow",
        ),
        "HTTP_422" => (
            "the vendor cannot analyse the portfolio's holdings",
            "check the account with the vendor; it is retried tomorrow",
        ),
        "HTTP_429" => (
            "still rate limited by the vendor after every retry",
            "retried tomorrow, or re-run the account today",
        ),
        "TIMEOUT" | "CONNECT" | "NETWORK" => (
            "the vendor could not be reached for every attempt",
            "retried tomorrow, or re-run the account today",
        ),
        c if c.starts_with("HTTP_5") => (
            "the vendor was unavailable for every attempt",
            "retried tomorrow, or re-run the account today",
        ),
        "OUT_OF_CONTRACT" => (
            "the vendor's answer broke its published contract (the message names the field)",
            "report it to the vendor; the row is not trusted",
        ),
        "AUTH_REFUSED" | "AUTH_REJECTED" | "AUTH_UNAVAILABLE" | "AUTH_BAD_RESPONSE" => (
            "the firm's authentication system refused or could not give a token, or the vendor refused it",
            "operations: see the runbook, then re-run the accounts",
        ),
        "INVALID_ACCOUNT_ID" => (
            "the account id breaks the vendor's id rules; nothing was sent",
            "correct the account in the account system",
        ),
        "INVALID_CONFIG" => (
            "the job's configuration stopped the call",
            "operations: check the esg_api section of the configuration",
        ),
        crate::DEADLINE => (
            "not scored by the day's deadline",
            "re-run the account",
        ),
        crate::NOT_SCORED => (
            "the account has never been scored (it should not happen; the job logs it)",
            "re-run the account",
        ),
        crate::output::INCOMPLETE_SCORE_CODE | "PARTIAL" => (
            "the vendor left a pillar or the focus empty (status Partial)",
            "retried tomorrow",
        ),
        crate::summary::OTHER_ERROR_CODES => (
            "further codes beyond the hundred counted one by one",
            "see the errors file",
        ),
        _ => (
            "a code this version does not describe",
            "see the errors file and the user guide",
        ),
    }
}

/// A moment as the page shows it: UTC, to the second.
fn moment(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `3725` → `1 h 02 min 05 s`.
fn span(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min {s:02} s"),
        _ => format!("{h} h {m:02} min {s:02} s"),
    }
}

/// `today − then` of two-decimal averages, signed (`+0.12`, `-1.00`, `0.00`); empty when either
/// is missing.
fn change(today: Option<&str>, then: Option<&str>) -> String {
    let (Some(today), Some(then)) = (today, then) else {
        return String::new();
    };
    match (Decimal::from_str(today), Decimal::from_str(then)) {
        (Ok(a), Ok(b)) => {
            let d = (a - b).round_dp(2);
            if d > Decimal::ZERO {
                format!("+{d:.2}")
            } else {
                format!("{d:.2}")
            }
        }
        _ => String::new(),
    }
}

/// One score's line of the averages table.
struct ScoreLine {
    name: &'static str,
    average: String,
    sum: String,
    rows: String,
    previous: String,
    previous_change: String,
    mean: String,
    mean_change: String,
}

/// One bar of a bar chart, its geometry computed here.
struct Bar {
    label: String,
    value: u64,
    percent: String,
    /// Bar length in the chart's units (0 ..= [`BAR_SPACE`]).
    width: u64,
    y: u64,
    colour: &'static str,
}

/// Length of a full bar in the SVG's units.
const BAR_SPACE: u64 = 360;

/// One segment of the status bar.
struct Segment {
    label: &'static str,
    value: u64,
    x: u64,
    width: u64,
    colour: &'static str,
}

struct CodeLine {
    code: String,
    rows: u64,
    meaning: &'static str,
    action: &'static str,
}

struct FailedLine {
    account_id: String,
    error_code: String,
    error_message: String,
    attempts: String,
}

struct RerunLine {
    run_id: String,
    kind: String,
    outcome: String,
    accounts: u64,
    scored: u64,
    failed: u64,
    not_in_file: u64,
    api_attempts: u64,
    api_requests: u64,
    api_rate_limited: u64,
    started_at: String,
    finished_at: String,
}

#[derive(Template)]
#[template(path = "summary.html")]
struct Page<'a> {
    s: &'a Summary,
    started_at: String,
    finished_at: String,
    duration: String,
    /// The finish against the deadline, in words.
    deadline_line: String,
    /// `met`, `missed` or `unknown` (a CSS class).
    deadline_state: &'static str,
    outcome_state: &'static str,
    scores: Vec<ScoreLine>,
    previous_label: String,
    mean_label: String,
    status_bar: Vec<Segment>,
    focus: Vec<Bar>,
    focus_total: u64,
    codes: Vec<CodeLine>,
    failed: Vec<FailedLine>,
    failed_more: bool,
    reruns: Vec<RerunLine>,
    deadline_text: String,
    deadline_met_text: &'static str,
    json_name: String,
    comparison_days: i64,
}

fn percent_of(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.00".into();
    }
    let p = Decimal::from(part) * Decimal::ONE_HUNDRED / Decimal::from(whole);
    format!("{:.2}", p.round_dp(2))
}

fn reference_value<'r>(reference: Option<&'r Reference>, score: &str) -> Option<&'r str> {
    reference
        .and_then(|r| r.averages.get(score))
        .and_then(|v| v.as_deref())
}

/// The page for `summary`.
pub fn render(summary: &Summary) -> Result<String, askama::Error> {
    let s = summary;
    let (deadline_line, deadline_state) = match (s.deadline, s.deadline_met) {
        (Some(deadline), met) => {
            let gap = (deadline - s.finished_at).num_seconds();
            let words = if gap >= 0 {
                format!(
                    "finished {} before the deadline ({})",
                    span(gap.unsigned_abs()),
                    moment(deadline)
                )
            } else {
                format!(
                    "finished {} after the deadline ({})",
                    span(gap.unsigned_abs()),
                    moment(deadline)
                )
            };
            (words, if met == Some(false) { "missed" } else { "met" })
        }
        (None, _) => ("the deadline is not recorded".to_owned(), "unknown"),
    };
    let outcome_state = match s.outcome.as_str() {
        "Completed" => "good",
        "CompletedWithFailures" => "warn",
        _ => "bad",
    };
    let own = |score: &str| -> Option<&str> {
        match score {
            "overall" => s.average_overall.as_deref(),
            "environmental" => s.average_environmental.as_deref(),
            "social" => s.average_social.as_deref(),
            "governance" => s.average_governance.as_deref(),
            _ => None,
        }
    };
    let previous = s.comparison.previous_day.as_ref();
    let mean = s.comparison.mean_30_days.as_ref();
    let scores = SCORES
        .iter()
        .map(|&score| {
            let sum = s.score_sums.get(score);
            let today = own(score);
            ScoreLine {
                name: match score {
                    "overall" => "Overall ESG",
                    "environmental" => "Environmental",
                    "social" => "Social",
                    _ => "Governance",
                },
                average: today.unwrap_or("N/A").to_owned(),
                sum: sum.map_or_else(String::new, |x| x.sum.clone()),
                rows: sum.map_or_else(String::new, |x| x.rows.to_string()),
                previous: reference_value(previous, score).unwrap_or("N/A").to_owned(),
                previous_change: change(today, reference_value(previous, score)),
                mean: reference_value(mean, score).unwrap_or("N/A").to_owned(),
                mean_change: change(today, reference_value(mean, score)),
            }
        })
        .collect();
    let previous_label = previous.map_or_else(
        || "no earlier day in the history".to_owned(),
        |r| r.to.to_string(),
    );
    let mean_label = mean.map_or_else(
        || format!("no day in the {COMPARISON_DAYS} days before"),
        |r| format!("{} days with a file, {} to {}", r.days, r.from, r.to),
    );
    let mut x = 0;
    let status_bar = [
        ("Successful", s.successful, "#2e7d32"),
        ("Partial", s.partial, "#f9a825"),
        ("Failed", s.failed, "#c62828"),
    ]
    .into_iter()
    .map(|(label, value, colour)| {
        let width = (value * 600).checked_div(s.accounts).unwrap_or(0);
        let segment = Segment {
            label,
            value,
            x,
            width,
            colour,
        };
        x += width;
        segment
    })
    .collect();
    let focus_total: u64 = s.primary_focus.values().sum();
    let largest = s.primary_focus.values().copied().max().unwrap_or(0);
    let focus = ["Environmental", "Social", "Governance"]
        .into_iter()
        .zip(["#2e7d32", "#1565c0", "#6a1b9a"])
        .enumerate()
        .map(|(i, (label, colour))| {
            let value = s.primary_focus.get(label).copied().unwrap_or(0);
            Bar {
                label: label.to_owned(),
                value,
                percent: percent_of(value, focus_total),
                width: (value * BAR_SPACE).checked_div(largest).unwrap_or(0),
                y: 10 + 34 * i as u64,
                colour,
            }
        })
        .collect();
    let codes = s
        .error_codes
        .iter()
        .map(|(code, &rows)| {
            let (meaning, action) = code_help(code);
            CodeLine {
                code: code.clone(),
                rows,
                meaning,
                action,
            }
        })
        .collect();
    // Older summaries have the ids only.
    let failed = if s.failed_details.is_empty() {
        s.failed_accounts
            .iter()
            .map(|id| FailedLine {
                account_id: id.clone(),
                error_code: String::new(),
                error_message: String::new(),
                attempts: String::new(),
            })
            .collect()
    } else {
        s.failed_details
            .iter()
            .map(|f| FailedLine {
                account_id: f.account_id.clone(),
                error_code: f.error_code.clone(),
                error_message: f.error_message.clone(),
                attempts: f.attempts.to_string(),
            })
            .collect()
    };
    let reruns = s
        .reruns
        .iter()
        .map(|r| RerunLine {
            run_id: r.run_id.clone(),
            kind: r.kind.clone(),
            outcome: r.outcome.clone(),
            accounts: r.accounts,
            scored: r.scored,
            failed: r.failed,
            not_in_file: r.not_in_file,
            api_attempts: r.api_attempts,
            api_requests: r.api_requests,
            api_rate_limited: r.api_rate_limited,
            started_at: moment(r.started_at),
            finished_at: moment(r.finished_at),
        })
        .collect();
    Page {
        s,
        started_at: moment(s.started_at),
        finished_at: moment(s.finished_at),
        duration: if s.duration_seconds < 60 {
            span(s.duration_seconds)
        } else {
            format!("{}, {} s", span(s.duration_seconds), s.duration_seconds)
        },
        deadline_line,
        deadline_state,
        outcome_state,
        scores,
        previous_label,
        mean_label,
        status_bar,
        focus,
        focus_total,
        codes,
        failed,
        failed_more: s.failed_accounts_truncated,
        reruns,
        deadline_text: s.deadline.map_or_else(|| "not recorded".to_owned(), moment),
        deadline_met_text: match s.deadline_met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        },
        json_name: file_names(s.business_date).summary_json,
        comparison_days: COMPARISON_DAYS,
    }
    .render()
}

/// Writes `dir/FirmESGRatings_YYYYMMDD_summary.html` (`….html.age` when `protection`
/// encrypts) atomically and returns its path.
pub fn write_summary_html(
    dir: &Path,
    summary: &Summary,
    protection: &Protection,
) -> Result<PathBuf, OutputError> {
    let name = file_names(summary.business_date).summary_html;
    let page = render(summary).map_err(|e| OutputError::Io {
        action: "render",
        path: dir.join(&name),
        source: std::io::Error::other(e.to_string()),
    })?;
    let path = write_file_atomically(dir, &name, page.as_bytes(), protection)?;
    tracing::info!(file = %path.display(), run_id = %summary.run_id, "HTML summary written");
    Ok(path)
}

/// The values of a JSON summary that `page` does not show, each as the page would show it
/// (empty when the page is complete): every string (times as the page writes them, text
/// HTML-escaped) and every number. Booleans and nulls are shown in words and not checked here.
pub fn missing_values(page: &str, summary_json: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::String(text) => {
                let shown = match DateTime::parse_from_rfc3339(text) {
                    Ok(at) => moment(at.with_timezone(&Utc)),
                    Err(_) => askama::filters::escape(text, askama::filters::Html)
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                };
                out.push(shown);
            }
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(fields) => fields.values().for_each(|v| walk(v, out)),
            serde_json::Value::Bool(_) | serde_json::Value::Null => {}
        }
    }
    let mut values = Vec::new();
    walk(summary_json, &mut values);
    values.retain(|v| !page.contains(v.as_str()));
    values.sort();
    values.dedup();
    values
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
