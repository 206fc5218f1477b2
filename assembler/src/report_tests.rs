use super::*;
use crate::summary::{DayFacts, FailedAccount, RerunEntry, RowStats, RunFacts};
use chrono::{NaiveDate, TimeZone};
use std::collections::BTreeMap;

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, h, m, 7)
        .single()
        .expect("time")
}

fn date(d: &str) -> NaiveDate {
    d.parse().expect("date")
}

/// A summary with every part filled: failures, codes, a re-run, both comparisons.
fn full_summary(message: &str) -> Summary {
    let stats = RowStats {
        rows: 5,
        successful: 3,
        partial: 1,
        failed: 1,
        sum_overall: "281.455".parse().expect("decimal"),
        n_overall: 4,
        sum_environmental: "300.1".parse().expect("decimal"),
        n_environmental: 4,
        sum_social: "250".parse().expect("decimal"),
        n_social: 3,
        sum_governance: "277.77".parse().expect("decimal"),
        n_governance: 4,
        focus_environmental: 2,
        focus_social: 1,
        focus_governance: 1,
        failed_accounts: vec!["ACC-0004".into()],
        failed_accounts_truncated: false,
        error_codes: BTreeMap::from([("HTTP_503".into(), 1), ("incomplete_score".into(), 1)]),
        failed_details: BTreeMap::new(),
    };
    let facts = RunFacts {
        run_id: "2026-11-23".into(),
        outcome: "CompletedWithFailures".into(),
        scored_in_run: 4,
        carried_forward: 1,
        deadline_failed: 0,
        never_scored: 0,
        new_accounts: 2,
        gone_accounts: 3,
        malformed_records: 6,
        api_attempts: 9,
        api_requests: 11,
        api_rate_limited: 2,
        started_at: at(11, 0),
        finished_at: at(11, 4),
        deadline: Some(at(15, 0)),
    };
    let mut day = DayFacts::daily(facts);
    day.reruns.push(RerunEntry {
        run_id: "2026-11-23-rerun-1".into(),
        kind: "Rerun".into(),
        outcome: "Completed".into(),
        accounts: 7,
        scored: 8,
        failed: 12,
        not_in_file: 13,
        api_attempts: 14,
        api_requests: 15,
        api_rate_limited: 16,
        started_at: at(12, 30),
        finished_at: at(12, 31),
    });
    let mut summary = Summary::build(
        date("2026-11-23"),
        "FirmESGRatings_20261123.csv",
        &stats,
        day,
    );
    summary.failed_details = vec![FailedAccount {
        account_id: "ACC-0004".into(),
        error_code: "HTTP_503".into(),
        error_message: message.into(),
        attempts: 3,
    }];
    let averages = |o: &str, e: &str, s: &str, g: &str| {
        BTreeMap::from([
            ("overall".to_owned(), Some(o.to_owned())),
            ("environmental".to_owned(), Some(e.to_owned())),
            ("social".to_owned(), Some(s.to_owned())),
            ("governance".to_owned(), Some(g.to_owned())),
        ])
    };
    summary.comparison = Comparison {
        previous_day: Some(Reference {
            from: date("2026-11-20"),
            to: date("2026-11-20"),
            days: 1,
            averages: averages("70.01", "74.02", "81.03", "69.04"),
        }),
        mean_30_days: Some(Reference {
            from: date("2026-10-26"),
            to: date("2026-11-20"),
            days: 19,
            averages: averages("71.11", "72.12", "73.13", "74.14"),
        }),
    };
    summary
}

use crate::summary::Comparison;

#[test]
fn the_page_shows_every_value_of_the_json_summary() {
    let summary = full_summary("vendor unavailable");
    let page = render(&summary).expect("renders");
    let json = serde_json::to_value(&summary).expect("json");
    assert_eq!(missing_values(&page, &json), Vec::<String>::new());
    // Booleans and the deadline, in words.
    assert!(page.contains("deadline met</th><td>yes"), "{page}");
    assert!(page.contains("list truncated: no"));
    assert!(page.contains("daily run's facts lost</th><td>no"));
    // The changes against the previous day and the 30-day mean: 281.455 / 4 = 70.36.
    assert_eq!(summary.average_overall.as_deref(), Some("70.36"));
    assert!(page.contains(">+0.35<"), "70.36 - 70.01");
    assert!(page.contains(">-0.75<"), "70.36 - 71.11");
    // Every error code is explained.
    assert!(page.contains("the vendor was unavailable for every attempt"));
    assert!(page.contains("the vendor left a pillar or the focus empty"));
    assert!(page.contains("finished 3 h 56 min 00 s before the deadline"));
}

#[test]
fn vendor_text_is_escaped() {
    let hostile = "<script>alert('x')</script> & \"quoted\" <img src=x onerror=alert(1)>";
    let mut summary = full_summary(hostile);
    summary.failed_details[0].account_id = "<b>ACC</b>".into();
    summary.failed_accounts = vec!["<b>ACC</b>".into()];
    summary
        .error_codes
        .insert("<svg onload=alert(1)>".into(), 1);
    let page = render(&summary).expect("renders");
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains("<img"));
    assert!(!page.contains("<b>ACC"));
    assert!(!page.contains("<svg onload"));
    assert!(
        page.contains("&#60;script&#62;alert(&#39;x&#39;)&#60;/script&#62; &#38; &#34;quoted&#34;")
    );
    let json = serde_json::to_value(&summary).expect("json");
    assert_eq!(missing_values(&page, &json), Vec::<String>::new());
}

#[test]
fn the_page_is_self_contained_and_the_same_for_the_same_summary() {
    let summary = full_summary("m");
    let page = render(&summary).expect("renders");
    assert_eq!(page, render(&summary).expect("renders again"));
    for forbidden in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!page.contains(forbidden), "{forbidden} in the page");
    }
    assert!(page.contains("default-src 'none'"));
    assert!(page.contains("id=\"chart-focus\""));
}

#[test]
fn a_summary_without_history_or_deadline_says_so() {
    let mut summary = full_summary("m");
    summary.comparison = Comparison::default();
    summary.deadline = None;
    summary.deadline_met = None;
    summary.failed_details.clear();
    let page = render(&summary).expect("renders");
    assert!(page.contains("no earlier day in the history"));
    assert!(page.contains("the deadline is not recorded"));
    assert!(page.contains("deadline met</th><td>unknown"));
    // An older summary lists the failed ids only.
    assert!(page.contains("<code>ACC-0004</code>"));
}

#[test]
fn a_missed_deadline_and_a_timed_out_run_are_shown_as_such() {
    let mut summary = full_summary("m");
    summary.outcome = "TimedOut".into();
    summary.finished_at = at(15, 2);
    summary.deadline_met = Some(false);
    let page = render(&summary).expect("renders");
    assert!(page.contains("class=\"badge bad\""));
    assert!(
        page.contains("finished 2 min 00 s after the deadline"),
        "{page}"
    );
    assert!(page.contains("deadline met</th><td>no"));
}

#[test]
fn every_code_the_job_writes_has_a_meaning() {
    for code in [
        "HTTP_404",
        "HTTP_422",
        "HTTP_429",
        "HTTP_500",
        "HTTP_503",
        "TIMEOUT",
        "CONNECT",
        "NETWORK",
        "OUT_OF_CONTRACT",
        "AUTH_REFUSED",
        "AUTH_REJECTED",
        "AUTH_UNAVAILABLE",
        "AUTH_BAD_RESPONSE",
        "INVALID_ACCOUNT_ID",
        "INVALID_CONFIG",
        "DEADLINE",
        "NOT_SCORED",
        "incomplete_score",
    ] {
        assert_ne!(code_help(code).0, code_help("NO_SUCH_CODE").0, "{code}");
    }
}

#[test]
fn spans_and_changes_read_as_people_write_them() {
    assert_eq!(span(5), "5 s");
    assert_eq!(span(65), "1 min 05 s");
    assert_eq!(span(3725), "1 h 02 min 05 s");
    assert_eq!(change(Some("70.00"), Some("70.00")), "0.00");
    assert_eq!(change(Some("70.10"), Some("70.00")), "+0.10");
    assert_eq!(change(Some("69.90"), Some("70.00")), "-0.10");
    assert_eq!(change(None, Some("70.00")), "");
}
