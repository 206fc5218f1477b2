//! What the dashboard's pages show, computed from the history rows and the live status, and
//! the pages themselves (askama templates under `templates/`, checked when the binary is
//! compiled, every value HTML-escaped; only the SVG of [`super::charts`] and the page's own
//! script are inserted as they are).
//!
//! No page holds an account name: history rows hold none, and the live status holds counts.

use super::charts::{Chart, Kind, Series};
use crate::status::Status;
use askama::Template;
use chrono::NaiveDate;
use esg_assembler::history::{Day, HistoryRow};

/// The trend window of `?window=`: the last 30, 90 or 365 days, or every date kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Days(u32),
    All,
}

impl Window {
    pub const CHOICES: [Window; 4] = [
        Window::Days(30),
        Window::Days(90),
        Window::Days(365),
        Window::All,
    ];

    /// `30`, `90`, `365` or `all`; `None` for anything else.
    pub fn parse(text: &str) -> Option<Window> {
        Window::CHOICES.into_iter().find(|w| w.as_query() == text)
    }

    pub fn as_query(self) -> String {
        match self {
            Window::Days(n) => n.to_string(),
            Window::All => "all".into(),
        }
    }

    pub fn label(self) -> String {
        match self {
            Window::Days(n) => format!("{n} days"),
            Window::All => "all".into(),
        }
    }

    /// The first business date of the window ending `today` (`None`: from the first).
    pub fn since(self, today: NaiveDate) -> Option<NaiveDate> {
        match self {
            Window::Days(n) => today.checked_sub_days(chrono::Days::new(u64::from(n) - 1)),
            Window::All => None,
        }
    }
}

/// The outcomes a run can end with, in the order the filter shows them.
pub const OUTCOMES: [&str; 4] = ["Completed", "CompletedWithFailures", "TimedOut", "Aborted"];

/// One business date on the charts: its file as the day's last run left it, its daily run's
/// timing, and the API use of all its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct DayPoint {
    pub date: NaiveDate,
    pub success_percent: Option<f64>,
    pub failure_percent: Option<f64>,
    /// Overall, environmental, social, governance.
    pub averages: [Option<f64>; 4],
    /// Environmental, social, governance.
    pub focus: [u64; 3],
    pub duration_minutes: Option<f64>,
    /// From the daily run's start to its deadline.
    pub deadline_minutes: Option<f64>,
    pub api_requests: u64,
    pub api_rate_limited: u64,
    pub new_accounts: u64,
    pub gone_accounts: u64,
}

const SCORES: [&str; 4] = ["overall", "environmental", "social", "governance"];
const PILLARS: [&str; 3] = ["Environmental", "Social", "Governance"];

impl DayPoint {
    pub fn of(day: &Day) -> Option<DayPoint> {
        let file = day.reruns.last().or(day.daily.as_ref())?;
        let first = day.daily.as_ref().or(day.reruns.first())?;
        let runs = day.daily.iter().chain(day.reruns.iter());
        let percent = |n: u64| (file.accounts > 0).then(|| n as f64 * 100.0 / file.accounts as f64);
        let minutes = |d: chrono::TimeDelta| d.num_milliseconds().max(0) as f64 / 60_000.0;
        Some(DayPoint {
            date: day.business_date,
            success_percent: file
                .success_rate_percent
                .parse()
                .ok()
                .filter(|_| file.accounts > 0),
            failure_percent: percent(file.failed),
            averages: SCORES.map(|s| {
                file.averages
                    .get(s)
                    .cloned()
                    .flatten()
                    .and_then(|a| a.parse().ok())
            }),
            focus: PILLARS.map(|p| file.primary_focus.get(p).copied().unwrap_or(0)),
            duration_minutes: Some(minutes(first.finished_at - first.started_at)),
            deadline_minutes: first.deadline.map(|d| minutes(d - first.started_at)),
            api_requests: runs.clone().map(|r| r.api_requests).sum(),
            api_rate_limited: runs.map(|r| r.api_rate_limited).sum(),
            new_accounts: day.daily.as_ref().map_or(0, |d| d.new_accounts),
            gone_accounts: day.daily.as_ref().map_or(0, |d| d.gone_accounts),
        })
    }
}

/// The stable ids of the charts, in the order the page shows them.
pub const CHART_IDS: [&str; 6] = [
    "chart-success-rate",
    "chart-averages",
    "chart-focus",
    "chart-duration",
    "chart-api",
    "chart-accounts",
];

/// The dashboard's charts over `points`.
pub fn charts(points: &[DayPoint]) -> Vec<Chart> {
    let labels: Vec<String> = points.iter().map(|p| p.date.to_string()).collect();
    let series = |name, colour, f: &dyn Fn(&DayPoint) -> Option<f64>| Series {
        name,
        colour,
        values: points.iter().map(f).collect(),
    };
    let chart = |id, title, unit, kind, series, y_max| Chart {
        id,
        title,
        unit,
        kind,
        labels: labels.clone(),
        series,
        y_max,
        fit: false,
    };
    let mut averages = chart(
        CHART_IDS[1],
        "Average scores",
        "points",
        Kind::Lines,
        vec![
            series("overall", "#34495e", &|p| p.averages[0]),
            series("environmental", "#27ae60", &|p| p.averages[1]),
            series("social", "#2980b9", &|p| p.averages[2]),
            series("governance", "#8e44ad", &|p| p.averages[3]),
        ],
        Some(100.0),
    );
    averages.fit = true;
    vec![
        chart(
            CHART_IDS[0],
            "Success and failure rate of the day's file",
            "%",
            Kind::Lines,
            vec![
                series("successful", "#1b7f3b", &|p| p.success_percent),
                series("failed", "#c0392b", &|p| p.failure_percent),
            ],
            Some(100.0),
        ),
        averages,
        chart(
            CHART_IDS[2],
            "Primary focus split (accounts)",
            "accounts",
            Kind::Stacked,
            vec![
                series("Environmental", "#27ae60", &|p| Some(p.focus[0] as f64)),
                series("Social", "#2980b9", &|p| Some(p.focus[1] as f64)),
                series("Governance", "#8e44ad", &|p| Some(p.focus[2] as f64)),
            ],
            None,
        ),
        chart(
            CHART_IDS[3],
            "Daily run duration against the deadline (minutes from start)",
            "min",
            Kind::Lines,
            vec![
                series("duration", "#d35400", &|p| p.duration_minutes),
                series("deadline", "#7f8c8d", &|p| p.deadline_minutes),
            ],
            None,
        ),
        chart(
            CHART_IDS[4],
            "ESG API requests and 429 answers",
            "requests",
            Kind::Bars,
            vec![
                series("requests", "#2c3e50", &|p| Some(p.api_requests as f64)),
                series("429s", "#e67e22", &|p| Some(p.api_rate_limited as f64)),
            ],
            None,
        ),
        chart(
            CHART_IDS[5],
            "New and gone accounts",
            "accounts",
            Kind::Bars,
            vec![
                series("new", "#16a085", &|p| Some(p.new_accounts as f64)),
                series("gone", "#7f8c8d", &|p| Some(p.gone_accounts as f64)),
            ],
            None,
        ),
    ]
}

/// A run as a line of the runs table.
pub struct RunLine {
    pub business_date: String,
    pub run_id: String,
    /// The run page's path, the id percent-encoded.
    pub href: String,
    pub kind: String,
    pub outcome: String,
    pub accounts: u64,
    pub success_rate: String,
    pub duration: String,
    pub deadline: &'static str,
}

impl RunLine {
    pub fn of(row: &HistoryRow) -> RunLine {
        RunLine {
            business_date: row.business_date.to_string(),
            run_id: row.run_id.clone(),
            href: format!("/runs/{}", path_segment(&row.run_id)),
            kind: row.kind.clone(),
            outcome: row.outcome.clone(),
            accounts: row.accounts,
            success_rate: format!("{}%", row.success_rate_percent),
            duration: duration(row.finished_at - row.started_at),
            deadline: match row.deadline_met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "unknown",
            },
        }
    }
}

/// `1 h 02 min 05 s`, `3 min 20 s`, `12 s`.
pub fn duration(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s} s"),
        (0, m, s) => format!("{m} min {s:02} s"),
        (h, m, s) => format!("{h} h {m:02} min {s:02} s"),
    }
}

/// `text` as one path segment: unreserved characters kept, every other byte percent-encoded.
pub fn path_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A choice of the filter bars (window, outcome): its label, link and whether it is the one
/// shown.
pub struct Choice {
    pub label: String,
    pub href: String,
    pub current: bool,
}

/// Where the latest run stands, as the page shows it before any script runs.
pub struct Live {
    /// `None`: no status to show, and why in `message`.
    pub status: Option<LiveStatus>,
    pub message: String,
}

pub struct LiveStatus {
    pub run_id: String,
    pub business_date: String,
    pub kind: String,
    pub phase: String,
    pub scored: u64,
    /// The progress bar's maximum (at least 1) and the text of the accounts expected.
    pub bar_max: u64,
    pub expected: String,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    pub rate: String,
    pub eta: String,
    pub outcome: String,
    pub deadline: String,
}

impl LiveStatus {
    pub fn of(s: &Status) -> LiveStatus {
        LiveStatus {
            run_id: s.run_id.clone(),
            business_date: s.business_date.to_string(),
            kind: s.kind.clone(),
            phase: s.phase.clone(),
            scored: s.scored,
            bar_max: s.expected.unwrap_or(s.scored).max(1),
            expected: s
                .expected
                .map_or_else(|| "not known yet".into(), |n| n.to_string()),
            successful: s.successful,
            partial: s.partial,
            failed: s.failed,
            rate: format!("{:.1}/s", s.rate_per_second),
            eta: s
                .eta_seconds
                .map_or_else(|| "–".into(), |e| format!("{e} s")),
            outcome: s.outcome.clone().unwrap_or_else(|| "running".into()),
            deadline: s.deadline.to_rfc3339(),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard.html")]
pub struct DashboardPage {
    pub window: String,
    pub windows: Vec<Choice>,
    pub outcomes: Vec<Choice>,
    pub charts: Vec<String>,
    pub days: usize,
    pub runs: Vec<RunLine>,
    pub outcome: Option<String>,
    pub live: Live,
    pub script: &'static str,
}

#[derive(Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub run_id: String,
    pub business_date: String,
    pub outcome: String,
    /// Every value of the run's history row: `(field, value)`.
    pub fields: Vec<(String, String)>,
    /// The day summaries served by the dashboard that this host holds in plaintext.
    pub summaries: Vec<Choice>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub status: u16,
    pub reason: String,
    pub message: String,
}

/// Every value of `row` as `(field, value)` lines, nested ones as `score_sums.overall.sum`:
/// made from its serialised form, so a field added to the row shows without a change here.
pub fn fields(row: &HistoryRow) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Null => out.push((prefix.to_owned(), "unknown".into())),
            serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    match serde_json::to_value(row) {
        Ok(v) => walk("", &v, &mut out),
        Err(e) => out.push(("error".into(), e.to_string())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn row(run_id: &str, kind: &str) -> HistoryRow {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
            .single()
            .expect("time");
        HistoryRow {
            accounts: 4,
            successful: 3,
            failed: 1,
            success_rate_percent: "75.00".into(),
            api_requests: 10,
            api_rate_limited: 2,
            new_accounts: 4,
            ..HistoryRow::without_file(
                run_id,
                "2026-11-23".parse().expect("date"),
                kind,
                "CompletedWithFailures",
                at,
                at + chrono::TimeDelta::seconds(90),
                at + chrono::TimeDelta::hours(4),
            )
        }
    }

    #[test]
    fn a_day_point_takes_the_file_of_the_last_run_and_the_api_use_of_all() {
        let mut rerun = row("2026-11-23.1", "Rerun");
        rerun.successful = 4;
        rerun.failed = 0;
        rerun.success_rate_percent = "100.00".into();
        rerun.new_accounts = 0;
        let day = Day {
            business_date: "2026-11-23".parse().expect("date"),
            daily: Some(row("2026-11-23", "Daily")),
            reruns: vec![rerun],
        };
        let p = DayPoint::of(&day).expect("point");
        assert_eq!(p.success_percent, Some(100.0));
        assert_eq!(p.failure_percent, Some(0.0));
        assert_eq!(p.api_requests, 20);
        assert_eq!(p.api_rate_limited, 4);
        assert_eq!(p.new_accounts, 4);
        assert_eq!(p.duration_minutes, Some(1.5));
        assert_eq!(p.deadline_minutes, Some(240.0));
        let charts = charts(&[p]);
        let ids: Vec<&str> = charts.iter().map(|c| c.id).collect();
        assert_eq!(ids, CHART_IDS);
    }

    #[test]
    fn the_window_parses_its_four_choices_only() {
        assert_eq!(Window::parse("30"), Some(Window::Days(30)));
        assert_eq!(Window::parse("all"), Some(Window::All));
        assert_eq!(Window::parse("31"), None);
        let today: NaiveDate = "2026-12-07".parse().expect("date");
        assert_eq!(
            Window::Days(30).since(today),
            Some("2026-11-08".parse().expect("date"))
        );
        assert_eq!(Window::All.since(today), None);
    }

    #[test]
    fn a_run_page_shows_every_value_of_the_row_and_a_run_id_is_one_path_segment() {
        let fields = fields(&row("2026-11-23", "Daily"));
        let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        for key in ["run_id", "api_rate_limited", "deadline_met", "retries"] {
            assert!(keys.contains(&key), "{keys:?}");
        }
        assert_eq!(path_segment("2026-11-23.1"), "2026-11-23.1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            duration(chrono::TimeDelta::seconds(3725)),
            "1 h 02 min 05 s"
        );
    }
}
