//! The daily summary `FirmESGRatings_YYYYMMDD_summary.json` (DESIGN section 6): statistics
//! accumulated from the rows of the ratings file ([`RowStats`]), combined with facts of the run
//! ([`RunFacts`]) into a [`Summary`], written atomically through the same helper as the CSV files.
//!
//! Statistics follow what the file shows, not what the rows carried: a `Failed` row counts no
//! score, averages come from the exact decimals of the rows written (from the two-decimal cells
//! for rows copied unchanged by a manual override). Memory is bounded: at most
//! [`MAX_FAILED_ACCOUNTS`] failed ids and [`MAX_ERROR_CODES`] distinct error codes are kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use esg_schemas::{Pillar, ScoreStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::output::{
    effective, file_names, format_score, unneutralise, write_file_atomically, OutputError, Row,
    NOT_AVAILABLE,
};

/// Most failed account ids a summary lists; beyond, `failed_accounts_truncated` is set.
pub const MAX_FAILED_ACCOUNTS: usize = 1000;
/// Most distinct error codes counted one by one; further codes are counted under
/// [`OTHER_ERROR_CODES`].
pub const MAX_ERROR_CODES: usize = 100;
/// The bucket of error codes beyond [`MAX_ERROR_CODES`].
pub const OTHER_ERROR_CODES: &str = "(other)";

/// Statistics of the rows of a ratings file, accumulated row by row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowStats {
    pub rows: u64,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    pub sum_overall: Decimal,
    pub n_overall: u64,
    pub sum_environmental: Decimal,
    pub n_environmental: u64,
    pub sum_social: Decimal,
    pub n_social: u64,
    pub sum_governance: Decimal,
    pub n_governance: u64,
    pub focus_environmental: u64,
    pub focus_social: u64,
    pub focus_governance: u64,
    /// Ids of `Failed` rows in file order, at most [`MAX_FAILED_ACCOUNTS`].
    pub failed_accounts: Vec<String>,
    /// True when more rows failed than `failed_accounts` lists.
    pub failed_accounts_truncated: bool,
    /// Rows not `Successful`, by error code (rows without a code are not counted here).
    pub error_codes: BTreeMap<String, u64>,
}

/// The values of one row as its cells show them.
struct Shown<'a> {
    id: &'a str,
    status: ScoreStatus,
    scores: [Option<Decimal>; 4],
    focus: Option<Pillar>,
}

impl RowStats {
    /// Counts a row as the ratings file shows it (a `Failed` row contributes no score, whatever
    /// it carries), with its error code when it is not `Successful`.
    pub fn add(&mut self, row: &Row) {
        let shown = effective(row);
        self.add_shown(Shown {
            id: &row.account_id,
            status: shown.status,
            scores: [
                shown.overall,
                shown.environmental,
                shown.social,
                shown.governance,
            ],
            focus: shown.primary_focus,
        });
        if shown.status != ScoreStatus::Successful {
            if let Some(code) = shown.error_code {
                self.add_error_code(code);
            }
        }
    }

    /// Counts a row from the cells of a ratings file (a row copied by a manual override). The
    /// error code is not in these cells: see [`RowStats::add_error_code`].
    pub(crate) fn add_cells(&mut self, cells: &[String]) -> Result<(), String> {
        let [id, _name, overall, environmental, social, governance, focus, _focus_score, _date, status] =
            cells
        else {
            return Err(format!("{} cells where 10 are expected", cells.len()));
        };
        let score = |cell: &str| -> Result<Option<Decimal>, String> {
            if cell == NOT_AVAILABLE {
                return Ok(None);
            }
            Decimal::from_str(cell)
                .map(Some)
                .map_err(|e| format!("score {cell:?}: {e}"))
        };
        let status = ScoreStatus::from_str(status)?;
        let focus = match focus.as_str() {
            NOT_AVAILABLE => None,
            other => Some(Pillar::from_str(other)?),
        };
        self.add_shown(Shown {
            id: unneutralise(id),
            status,
            scores: [
                score(overall)?,
                score(environmental)?,
                score(social)?,
                score(governance)?,
            ],
            focus,
        });
        Ok(())
    }

    /// Counts one errors-file line's code (empty codes are not counted).
    pub(crate) fn add_error_code(&mut self, code: &str) {
        if code.is_empty() {
            return;
        }
        let key = if self.error_codes.contains_key(code) || self.error_codes.len() < MAX_ERROR_CODES
        {
            code
        } else {
            OTHER_ERROR_CODES
        };
        *self.error_codes.entry(key.to_owned()).or_default() += 1;
    }

    fn add_shown(&mut self, shown: Shown<'_>) {
        self.rows += 1;
        match shown.status {
            ScoreStatus::Successful => self.successful += 1,
            ScoreStatus::Partial => self.partial += 1,
            ScoreStatus::Failed => {
                self.failed += 1;
                if self.failed_accounts.len() < MAX_FAILED_ACCOUNTS {
                    self.failed_accounts.push(shown.id.to_owned());
                } else {
                    self.failed_accounts_truncated = true;
                }
            }
        }
        let [overall, environmental, social, governance] = shown.scores;
        accumulate(&mut self.sum_overall, &mut self.n_overall, overall);
        accumulate(
            &mut self.sum_environmental,
            &mut self.n_environmental,
            environmental,
        );
        accumulate(&mut self.sum_social, &mut self.n_social, social);
        accumulate(&mut self.sum_governance, &mut self.n_governance, governance);
        match shown.focus {
            Some(Pillar::Environmental) => self.focus_environmental += 1,
            Some(Pillar::Social) => self.focus_social += 1,
            Some(Pillar::Governance) => self.focus_governance += 1,
            None => {}
        }
    }
}

fn accumulate(sum: &mut Decimal, n: &mut u64, value: Option<Decimal>) {
    if let Some(value) = value {
        // Scores are 0..=100, so this never saturates in practice; saturating keeps an absurd
        // input from panicking.
        *sum = sum.saturating_add(value);
        *n += 1;
    }
}

/// The daily summary, as written to `FirmESGRatings_YYYYMMDD_summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub business_date: NaiveDate,
    pub run_id: String,
    /// How the run ended (`Completed`, `CompletedWithFailures`, `TimedOut`, `Aborted`).
    pub outcome: String,
    /// Name of the ratings file.
    pub file: String,
    /// Rows of the ratings file.
    pub accounts: u64,
    pub successful: u64,
    pub partial: u64,
    pub failed: u64,
    /// `successful / accounts` in percent, 2 dp; `"100.00"` when there are no rows.
    pub success_rate_percent: String,
    /// `failed / accounts` in percent, 2 dp; `"0.00"` when there are no rows.
    pub failure_rate_percent: String,
    /// Averages over the rows that show the score, 2 dp; `None` when no row shows it.
    pub average_overall: Option<String>,
    pub average_environmental: Option<String>,
    pub average_social: Option<String>,
    pub average_governance: Option<String>,
    /// `Environmental`, `Social`, `Governance` → rows with that primary focus (all three keys).
    pub primary_focus: BTreeMap<String, u64>,
    pub failed_accounts: Vec<String>,
    pub failed_accounts_truncated: bool,
    pub error_codes: BTreeMap<String, u64>,
    /// Accounts scored in this run.
    pub scored_in_run: u64,
    /// Accounts whose last score was carried forward (DESIGN section 5).
    pub carried_forward: u64,
    pub new_accounts: u64,
    pub gone_accounts: u64,
    /// Account records skipped as malformed.
    pub malformed_records: u64,
    /// Calls made to the ESG API.
    pub api_calls: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: u64,
}

/// What the summary says about the run beyond the rows of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFacts {
    pub run_id: String,
    pub outcome: String,
    pub scored_in_run: u64,
    pub carried_forward: u64,
    pub new_accounts: u64,
    pub gone_accounts: u64,
    pub malformed_records: u64,
    pub api_calls: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// `part / whole` in percent, 2 dp half away from zero; `when_empty` if `whole` is 0.
fn percent(part: u64, whole: u64, when_empty: &str) -> String {
    if whole == 0 {
        return when_empty.to_owned();
    }
    Decimal::from(part)
        .checked_mul(Decimal::ONE_HUNDRED)
        .and_then(|p| p.checked_div(Decimal::from(whole)))
        .map_or_else(|| when_empty.to_owned(), format_score)
}

fn average(sum: Decimal, n: u64) -> Option<String> {
    if n == 0 {
        return None;
    }
    sum.checked_div(Decimal::from(n)).map(format_score)
}

impl Summary {
    /// Combines the statistics of the written file with the facts of the run.
    pub fn build(business_date: NaiveDate, file: &str, stats: &RowStats, facts: RunFacts) -> Self {
        let primary_focus = BTreeMap::from([
            (Pillar::Environmental.to_string(), stats.focus_environmental),
            (Pillar::Social.to_string(), stats.focus_social),
            (Pillar::Governance.to_string(), stats.focus_governance),
        ]);
        let duration_seconds =
            u64::try_from((facts.finished_at - facts.started_at).num_seconds()).unwrap_or(0);
        Summary {
            business_date,
            run_id: facts.run_id,
            outcome: facts.outcome,
            file: file.to_owned(),
            accounts: stats.rows,
            successful: stats.successful,
            partial: stats.partial,
            failed: stats.failed,
            success_rate_percent: percent(stats.successful, stats.rows, "100.00"),
            failure_rate_percent: percent(stats.failed, stats.rows, "0.00"),
            average_overall: average(stats.sum_overall, stats.n_overall),
            average_environmental: average(stats.sum_environmental, stats.n_environmental),
            average_social: average(stats.sum_social, stats.n_social),
            average_governance: average(stats.sum_governance, stats.n_governance),
            primary_focus,
            failed_accounts: stats.failed_accounts.clone(),
            failed_accounts_truncated: stats.failed_accounts_truncated,
            error_codes: stats.error_codes.clone(),
            scored_in_run: facts.scored_in_run,
            carried_forward: facts.carried_forward,
            new_accounts: facts.new_accounts,
            gone_accounts: facts.gone_accounts,
            malformed_records: facts.malformed_records,
            api_calls: facts.api_calls,
            started_at: facts.started_at,
            finished_at: facts.finished_at,
            duration_seconds,
        }
    }
}

/// Writes `dir/FirmESGRatings_YYYYMMDD_summary.json` (pretty JSON, mode 0640) atomically and
/// returns its path.
pub fn write_summary(dir: &Path, summary: &Summary) -> Result<PathBuf, OutputError> {
    let name = file_names(summary.business_date).summary_json;
    let mut bytes = serde_json::to_vec_pretty(summary).map_err(|source| OutputError::Json {
        path: dir.join(&name),
        source,
    })?;
    bytes.push(b'\n');
    let path = write_file_atomically(dir, &name, &bytes)?;
    tracing::info!(file = %path.display(), run_id = %summary.run_id, "summary written");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).expect("decimal literal")
    }

    fn row(id: &str, status: ScoreStatus, scores: [&str; 4], focus: Option<Pillar>) -> Row {
        let score = |s: &str| (s != "-").then(|| dec(s));
        Row {
            account_id: id.into(),
            account_name: format!("Name {id}"),
            status,
            overall: score(scores[0]),
            environmental: score(scores[1]),
            social: score(scores[2]),
            governance: score(scores[3]),
            primary_focus: focus,
            primary_focus_score: focus.map(|_| dec("50")),
            analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
            attempts: 1,
            error_code: (status != ScoreStatus::Successful).then(|| "some_code".to_string()),
            error_message: None,
            last_attempt: None,
        }
    }

    fn facts() -> RunFacts {
        RunFacts {
            run_id: "2026-11-23".into(),
            outcome: "CompletedWithFailures".into(),
            scored_in_run: 3,
            carried_forward: 1,
            new_accounts: 2,
            gone_accounts: 1,
            malformed_records: 0,
            api_calls: 5,
            started_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
                .single()
                .expect("time"),
            finished_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 11, 2, 5)
                .single()
                .expect("time"),
        }
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
    }

    fn known_stats() -> RowStats {
        use ScoreStatus::*;
        let rows = [
            row(
                "A",
                Successful,
                ["70", "80", "60", "70"],
                Some(Pillar::Environmental),
            ),
            row(
                "B",
                Successful,
                ["72.345", "90", "55.5", "71"],
                Some(Pillar::Environmental),
            ),
            row("C", Partial, ["80", "-", "70", "-"], Some(Pillar::Social)),
            // Failed with scores set: none of them may count.
            row("D", Failed, ["1", "1", "1", "1"], Some(Pillar::Governance)),
        ];
        let mut stats = RowStats::default();
        for r in &rows {
            stats.add(r);
        }
        stats
    }

    #[test]
    fn summary_numbers_on_a_known_set() {
        let stats = known_stats();
        let summary = Summary::build(date(), "FirmESGRatings_20261123.csv", &stats, facts());
        assert_eq!(
            (
                summary.accounts,
                summary.successful,
                summary.partial,
                summary.failed
            ),
            (4, 2, 1, 1)
        );
        assert_eq!(summary.success_rate_percent, "50.00");
        assert_eq!(summary.failure_rate_percent, "25.00");
        // (70 + 72.345 + 80) / 3 = 74.115 → 74.12 (half away from zero).
        assert_eq!(summary.average_overall.as_deref(), Some("74.12"));
        assert_eq!(summary.average_environmental.as_deref(), Some("85.00"));
        // (60 + 55.5 + 70) / 3 = 61.8333… → 61.83
        assert_eq!(summary.average_social.as_deref(), Some("61.83"));
        assert_eq!(summary.average_governance.as_deref(), Some("70.50"));
        assert_eq!(
            summary.primary_focus,
            BTreeMap::from([
                ("Environmental".to_string(), 2),
                ("Governance".to_string(), 0),
                ("Social".to_string(), 1),
            ])
        );
        assert_eq!(summary.failed_accounts, vec!["D".to_string()]);
        assert!(!summary.failed_accounts_truncated);
        assert_eq!(
            summary.error_codes,
            BTreeMap::from([("some_code".to_string(), 2)])
        );
        assert_eq!(summary.duration_seconds, 125);
        assert_eq!(summary.api_calls, 5);
    }

    #[test]
    fn rates_round_half_away_from_zero_and_handle_no_rows() {
        assert_eq!(percent(79, 80, "x"), "98.75");
        assert_eq!(percent(2, 3, "x"), "66.67");
        assert_eq!(percent(1, 3, "x"), "33.33");
        assert_eq!(percent(1, 8, "x"), "12.50");
        assert_eq!(percent(1, 200_000, "x"), "0.00");
        assert_eq!(percent(1, 160, "x"), "0.63", "0.625 rounds up");
        let summary = Summary::build(date(), "f.csv", &RowStats::default(), facts());
        assert_eq!(summary.success_rate_percent, "100.00");
        assert_eq!(summary.failure_rate_percent, "0.00");
        assert_eq!(summary.average_overall, None);
    }

    #[test]
    fn failed_accounts_and_error_codes_are_bounded() {
        let mut stats = RowStats::default();
        for i in 0..(MAX_FAILED_ACCOUNTS + 5) {
            let mut r = row(&format!("F{i:05}"), ScoreStatus::Failed, ["-"; 4], None);
            r.error_code = Some(format!("code_{i}"));
            stats.add(&r);
        }
        assert_eq!(stats.failed, (MAX_FAILED_ACCOUNTS + 5) as u64);
        assert_eq!(stats.failed_accounts.len(), MAX_FAILED_ACCOUNTS);
        assert!(stats.failed_accounts_truncated);
        assert_eq!(stats.error_codes.len(), MAX_ERROR_CODES + 1);
        assert_eq!(
            stats.error_codes.get(OTHER_ERROR_CODES),
            Some(&((MAX_FAILED_ACCOUNTS + 5 - MAX_ERROR_CODES) as u64))
        );
        // A code already known keeps counting under its own name.
        stats.add_error_code("code_0");
        assert_eq!(stats.error_codes.get("code_0"), Some(&2));
    }

    #[test]
    fn cells_of_a_copied_row_count_like_the_row() {
        let original = row(
            "B",
            ScoreStatus::Partial,
            ["72.345", "-", "55.5", "71"],
            Some(Pillar::Social),
        );
        let mut from_row = RowStats::default();
        from_row.add(&original);
        let mut from_cells = RowStats::default();
        from_cells
            .add_cells(&crate::output::format_row(&original))
            .expect("cells");
        from_cells.add_error_code("some_code");
        assert_eq!(
            from_cells.sum_overall,
            dec("72.35"),
            "copied rows count the 2-dp cell"
        );
        from_cells.sum_overall = from_row.sum_overall;
        assert_eq!(from_cells, from_row);
        let mut bad = crate::output::format_row(&original).to_vec();
        bad[2] = "seventy".into();
        assert!(RowStats::default().add_cells(&bad).is_err());
    }

    #[test]
    fn summary_json_is_written_atomically_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = Summary::build(
            date(),
            "FirmESGRatings_20261123.csv",
            &known_stats(),
            facts(),
        );
        let path = write_summary(dir.path(), &summary).expect("write");
        assert_eq!(
            path,
            dir.path().join("FirmESGRatings_20261123_summary.json")
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(
            text.contains("\n  \"business_date\": \"2026-11-23\""),
            "pretty JSON: {text}"
        );
        assert!(text.contains("\"average_overall\": \"74.12\""), "{text}");
        let back: Summary = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, summary);
        let entries: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert_eq!(entries.len(), 1, "no temporary file left");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o640);
        }
    }

    #[test]
    fn row_stats_round_trip_through_json() {
        let stats = known_stats();
        let text = serde_json::to_string(&stats).expect("serialise");
        let back: RowStats = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, stats);
    }
}
