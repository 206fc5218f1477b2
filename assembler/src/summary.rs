//! The daily summary `FirmESGRatings_YYYYMMDD_summary.json` (DESIGN section 6): statistics
//! accumulated from the rows of the ratings file ([`RowStats`]), combined with the facts of the
//! day's runs ([`DayFacts`]: the daily run's [`RunFacts`] and a [`RerunEntry`] per re-run) into a
//! [`Summary`], written atomically through the same helper as the CSV files.
//!
//! Statistics follow what the file shows, not what the rows carried: a `Failed` row counts no
//! score, averages come from the exact decimals of the rows written (from the two-decimal cells
//! for rows copied unchanged by a manual override). After a re-run the statistics are those of
//! the whole rewritten file, while the run facts stay the daily run's and the re-run is listed.
//! Memory is bounded: at most [`MAX_FAILED_ACCOUNTS`] failed ids and [`MAX_ERROR_CODES`] distinct
//! error codes are kept.
//!
//! How the counts add up (checked by [`Summary::inconsistencies`]):
//! `successful + partial + failed = accounts`, and, for the daily run,
//! `scored_in_run + carried_forward + deadline_failed + never_scored = accounts`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use esg_schemas::{Pillar, ScoreStatus};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::encryption::Protection;
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
    /// The `Failed` rows with their error code and attempts, by account id, at most
    /// [`MAX_FAILED_ACCOUNTS`] (the first ids of the file, which is sorted by id).
    pub failed_details: BTreeMap<String, FailedDetail>,
}

/// What the errors file says of one `Failed` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDetail {
    pub error_code: String,
    /// The error message, at most [`MAX_MESSAGE_CHARS`] characters.
    pub error_message: String,
    pub attempts: u64,
}

/// Longest error message a summary keeps (the errors file has it whole).
pub const MAX_MESSAGE_CHARS: usize = 300;

/// One `Failed` account as the summary lists it in `failed_details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAccount {
    pub account_id: String,
    pub error_code: String,
    /// The vendor's (or the job's) message, as the errors file has it, at most
    /// [`MAX_MESSAGE_CHARS`] characters.
    #[serde(default)]
    pub error_message: String,
    pub attempts: u64,
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
                shown.values.overall,
                shown.values.environmental,
                shown.values.social,
                shown.values.governance,
            ],
            focus: shown.values.primary_focus,
        });
        if shown.status != ScoreStatus::Successful {
            if let Some(code) = shown.error_code {
                self.add_error_code(code);
            }
        }
        if shown.status == ScoreStatus::Failed {
            self.add_failed_detail(
                &row.account_id,
                shown.error_code.unwrap_or_default(),
                shown.error_message.unwrap_or_default(),
                u64::try_from(row.attempts).unwrap_or(0),
            );
        }
    }

    /// Counts one line of an errors file copied unchanged (a manual override): its code and,
    /// for a `Failed` line, its code and attempts in `failed_details`. `cells` are the six cells
    /// of the line.
    pub(crate) fn add_error_line(&mut self, cells: &[String]) {
        let code = unneutralise(&cells[2]);
        self.add_error_code(code);
        if cells[1] == ScoreStatus::Failed.to_string() {
            let attempts = cells[4].parse().unwrap_or(0);
            self.add_failed_detail(
                unneutralise(&cells[0]),
                code,
                unneutralise(&cells[3]),
                attempts,
            );
        }
    }

    /// Keeps the code and attempts of a `Failed` row, bounded to the [`MAX_FAILED_ACCOUNTS`]
    /// smallest ids (rows arrive in any order when a re-run mixes copied and new rows).
    fn add_failed_detail(&mut self, id: &str, code: &str, message: &str, attempts: u64) {
        let message =
            crate::output::clean_controls(message.chars().take(MAX_MESSAGE_CHARS).collect());
        self.failed_details.insert(
            id.to_owned(),
            FailedDetail {
                error_code: code.to_owned(),
                error_message: message,
                attempts,
            },
        );
        if self.failed_details.len() > MAX_FAILED_ACCOUNTS {
            self.failed_details.pop_last();
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

/// Where the row of an account in a run's file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provenance {
    /// A score of this run arrived for the account.
    ScoredInRun,
    /// The run did not ask for the account: its last score, from an earlier run, is kept.
    CarriedForward,
    /// The run asked for the account but no score of the run arrived by the deadline (the row
    /// is `Failed` with code `DEADLINE`).
    DeadlineFailed,
    /// Not asked for and never scored by any run (the row is `Failed` with code `NOT_SCORED`).
    NeverScored,
}

impl Provenance {
    /// `expected`: the run asked for the account; `scored_in_run`: a score of the run arrived;
    /// `has_score`: the account has a score from some run.
    pub fn of(expected: bool, scored_in_run: bool, has_score: bool) -> Self {
        if scored_in_run {
            Provenance::ScoredInRun
        } else if expected {
            Provenance::DeadlineFailed
        } else if has_score {
            Provenance::CarriedForward
        } else {
            Provenance::NeverScored
        }
    }
}

/// The rows one run wrote, by [`Provenance`], and how many of them the file shows `Failed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub rows: u64,
    pub scored_in_run: u64,
    pub carried_forward: u64,
    pub deadline_failed: u64,
    pub never_scored: u64,
    pub failed: u64,
}

impl Tally {
    /// Counts one row the run wrote.
    pub fn add(&mut self, provenance: Provenance, row: &Row) {
        self.rows += 1;
        match provenance {
            Provenance::ScoredInRun => self.scored_in_run += 1,
            Provenance::CarriedForward => self.carried_forward += 1,
            Provenance::DeadlineFailed => self.deadline_failed += 1,
            Provenance::NeverScored => self.never_scored += 1,
        }
        if effective(row).status == ScoreStatus::Failed {
            self.failed += 1;
        }
    }
}

/// The facts of a daily run beyond the rows of its file: what the summary's run fields say.
/// Also what the state store keeps of a daily run, and what is read back from a summary file
/// (older files: missing counts read as 0, `api_calls` as `api_attempts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFacts {
    pub run_id: String,
    pub outcome: String,
    #[serde(default)]
    pub scored_in_run: u64,
    #[serde(default)]
    pub carried_forward: u64,
    #[serde(default)]
    pub deadline_failed: u64,
    #[serde(default)]
    pub never_scored: u64,
    #[serde(default)]
    pub new_accounts: u64,
    #[serde(default)]
    pub gone_accounts: u64,
    #[serde(default)]
    pub malformed_records: u64,
    #[serde(default, alias = "api_calls")]
    pub api_attempts: u64,
    #[serde(default)]
    pub api_requests: u64,
    /// Of `api_requests`, those the vendor answered 429 (0 in facts recorded before the field).
    #[serde(default)]
    pub api_rate_limited: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// The run's deadline (`None` in facts recorded before the field).
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
}

impl RunFacts {
    /// Facts of a run as its seal gives them (new, gone, malformed), with no tally and no API
    /// counts yet.
    pub fn from_seal(
        run_id: String,
        outcome: String,
        sealed: &esg_schemas::RunSealed,
        started_at: DateTime<Utc>,
        finished_at: DateTime<Utc>,
    ) -> Self {
        let n = |v: i64| v.max(0) as u64;
        RunFacts {
            run_id,
            outcome,
            scored_in_run: 0,
            carried_forward: 0,
            deadline_failed: 0,
            never_scored: 0,
            new_accounts: n(sealed.new_accounts),
            gone_accounts: n(sealed.gone_accounts),
            malformed_records: n(sealed.malformed_records),
            api_attempts: 0,
            api_requests: 0,
            api_rate_limited: 0,
            started_at,
            finished_at,
            deadline: None,
        }
    }

    /// Facts of a daily run from its tally; the caller fills the rest.
    pub fn with_tally(mut self, tally: &Tally) -> Self {
        self.scored_in_run = tally.scored_in_run;
        self.carried_forward = tally.carried_forward;
        self.deadline_failed = tally.deadline_failed;
        self.never_scored = tally.never_scored;
        self
    }
}

/// One re-run (or replay) of the day, as the summary's `reruns` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerunEntry {
    pub run_id: String,
    /// `Rerun` or `Replay`.
    pub kind: String,
    /// How the re-run ended (as its `RunCompleted` says).
    pub outcome: String,
    /// Accounts the re-run was for.
    #[serde(default)]
    pub accounts: u64,
    /// Of them, scored by the re-run (the others are `Failed` with `DEADLINE`).
    #[serde(default)]
    pub scored: u64,
    /// Of them, `Failed` in the file after the re-run (by the vendor or by the deadline).
    #[serde(default)]
    pub failed: u64,
    /// Of them, not in the day's file, hence not added.
    #[serde(default)]
    pub not_in_file: u64,
    #[serde(default)]
    pub api_attempts: u64,
    #[serde(default)]
    pub api_requests: u64,
    /// Of `api_requests`, those the vendor answered 429.
    #[serde(default)]
    pub api_rate_limited: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

/// The exact sum of one score over the rows that show it, and how many rows do: the parts of
/// its average, so that averages over many days (the history) stay exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreSum {
    /// The sum, as an exact decimal (`"7012.3456"`).
    pub sum: String,
    /// Rows that show the score.
    pub rows: u64,
}

/// The facts of a business date's runs that a summary shows.
#[derive(Debug, Clone, PartialEq)]
pub struct DayFacts {
    /// The daily run that wrote the file.
    pub daily: RunFacts,
    /// The re-runs since, oldest first.
    pub reruns: Vec<RerunEntry>,
    /// True when the daily run's counts could not be found (see [`Summary::daily_facts_lost`]).
    pub daily_facts_lost: bool,
}

impl DayFacts {
    /// The facts of a daily run that has just written the file.
    pub fn daily(daily: RunFacts) -> Self {
        DayFacts {
            daily,
            reruns: Vec::new(),
            daily_facts_lost: false,
        }
    }
}

/// What the state store holds of a business date's runs (`state::day_runs`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredDay {
    /// The latest daily run of the date, as recorded when it was assembled.
    pub daily: Option<RunFacts>,
    /// Re-runs recorded after it (after any daily run when none is recorded), oldest first.
    pub reruns: Vec<RerunEntry>,
    /// The latest daily run as the `runs` table has it (id, start, outcome, the seal's
    /// counts), which survives a rebuild of the store from the topics; its per-account
    /// counts are 0.
    pub daily_basics: Option<RunFacts>,
}

impl DayFacts {
    /// The day's facts for the summary a re-run writes: the daily run's facts and the re-runs
    /// before this one from the state store; when the store does not have the daily run (it
    /// was rebuilt from the topics, or the run was assembled by an earlier version), from the
    /// previous summary file; when neither has it, what the `runs` table kept, flagged
    /// `daily_facts_lost`. `this` is appended (replacing an entry of the same run id).
    pub fn for_rerun(
        stored: StoredDay,
        previous: impl FnOnce() -> Result<DayFacts, PreviousSummaryError>,
        this: RerunEntry,
    ) -> DayFacts {
        let StoredDay {
            daily,
            reruns: stored_reruns,
            daily_basics,
        } = stored;
        let mut day = match daily {
            Some(daily) => DayFacts {
                daily,
                reruns: stored_reruns,
                daily_facts_lost: false,
            },
            None => match previous() {
                Ok(mut previous) => {
                    tracing::warn!(run_id = %this.run_id, "the state store holds no facts of the day's daily run: taken from the previous summary");
                    for entry in stored_reruns {
                        if !previous.reruns.iter().any(|r| r.run_id == entry.run_id) {
                            previous.reruns.push(entry);
                        }
                    }
                    previous
                }
                Err(e) => {
                    tracing::error!(run_id = %this.run_id, error = %e, "the day's daily run is in neither the state store nor a readable previous summary: its counts are written as 0 (unknown) and daily_facts_lost is set");
                    DayFacts {
                        daily: daily_basics.unwrap_or_else(|| RunFacts {
                            run_id: String::new(),
                            outcome: String::new(),
                            scored_in_run: 0,
                            carried_forward: 0,
                            deadline_failed: 0,
                            never_scored: 0,
                            new_accounts: 0,
                            gone_accounts: 0,
                            malformed_records: 0,
                            api_attempts: 0,
                            api_requests: 0,
                            api_rate_limited: 0,
                            started_at: this.started_at,
                            finished_at: this.started_at,
                            deadline: None,
                        }),
                        reruns: stored_reruns,
                        daily_facts_lost: true,
                    }
                }
            },
        };
        day.reruns.retain(|r| r.run_id != this.run_id);
        day.reruns.push(this);
        day
    }
}

/// What a previous summary file says about the day, read back for a re-run.
#[derive(Debug, Deserialize)]
struct PreviousSummary {
    business_date: NaiveDate,
    #[serde(flatten)]
    daily: RunFacts,
    #[serde(default)]
    reruns: Vec<RerunEntry>,
    #[serde(default)]
    daily_facts_lost: bool,
}

/// Why a previous summary could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PreviousSummaryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a summary: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is the summary of {found}, not of {wanted}")]
    OtherDate {
        path: PathBuf,
        found: NaiveDate,
        wanted: NaiveDate,
    },
}

/// Largest summary file read back: a summary is a few kilobytes plus 1000 failed ids and the
/// re-runs; anything far larger is not one of ours.
const MAX_SUMMARY_BYTES: u64 = 16 * 1024 * 1024;

/// Reads the day's facts back from `dir`'s summary of `business_date` (the file a re-run
/// replaces). The file may have been written by an older version: missing counts read as 0.
pub fn read_previous(
    dir: &Path,
    business_date: NaiveDate,
) -> Result<DayFacts, PreviousSummaryError> {
    use std::io::Read;
    let path = dir.join(file_names(business_date).summary_json);
    let read_err = |source| PreviousSummaryError::Read {
        path: path.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .map_err(read_err)?
        .take(MAX_SUMMARY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let previous: PreviousSummary =
        serde_json::from_slice(&bytes).map_err(|source| PreviousSummaryError::Parse {
            path: path.clone(),
            source,
        })?;
    if previous.business_date != business_date {
        return Err(PreviousSummaryError::OtherDate {
            path,
            found: previous.business_date,
            wanted: business_date,
        });
    }
    Ok(DayFacts {
        daily: previous.daily,
        reruns: previous.reruns,
        daily_facts_lost: previous.daily_facts_lost,
    })
}

/// The daily summary, as written to `FirmESGRatings_YYYYMMDD_summary.json`. The file fields
/// (`accounts` … `error_codes`) describe the file as it is now, re-runs included; the run fields
/// (`run_id`, `outcome`, `scored_in_run` … `duration_seconds`) the daily run that wrote it;
/// `reruns` every re-run since.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub business_date: NaiveDate,
    /// The daily run that wrote the file.
    pub run_id: String,
    /// How the daily run ended (`Completed`, `CompletedWithFailures`, `TimedOut`).
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
    /// `overall`, `environmental`, `social`, `governance` → the exact sum of that score over the
    /// rows that show it and their number (an average is `sum / rows`). Absent in summaries
    /// written before the field.
    #[serde(default)]
    pub score_sums: BTreeMap<String, ScoreSum>,
    /// `Environmental`, `Social`, `Governance` → rows with that primary focus (all three keys).
    pub primary_focus: BTreeMap<String, u64>,
    pub failed_accounts: Vec<String>,
    pub failed_accounts_truncated: bool,
    pub error_codes: BTreeMap<String, u64>,
    /// The first `Failed` rows (at most [`MAX_FAILED_ACCOUNTS`], by id) with their error code
    /// and attempts. Absent in summaries written before the field.
    #[serde(default)]
    pub failed_details: Vec<FailedAccount>,
    /// Rows the daily run scored itself.
    pub scored_in_run: u64,
    /// Rows the daily run did not ask for, whose score an earlier run made (DESIGN section 5).
    pub carried_forward: u64,
    /// Rows the daily run asked for but had no score of by its deadline (`Failed`, `DEADLINE`).
    pub deadline_failed: u64,
    /// Rows of accounts no run has ever scored (`Failed`, `NOT_SCORED`).
    pub never_scored: u64,
    pub new_accounts: u64,
    pub gone_accounts: u64,
    /// Account records skipped as malformed.
    pub malformed_records: u64,
    /// Scoring attempts of the daily run (at most `max_attempts` per account scored; token
    /// renewals after a 401 are not attempts).
    pub api_attempts: u64,
    /// HTTP requests the daily run sent to the ESG API (every request: re-sends after a 401
    /// and requests answered 429 included).
    pub api_requests: u64,
    /// Of `api_requests`, those the vendor answered 429 (over its rate limit).
    #[serde(default)]
    pub api_rate_limited: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub duration_seconds: u64,
    /// The daily run's deadline, and whether its files were written by it (`None`: unknown, in
    /// summaries written before the field).
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    pub deadline_met: Option<bool>,
    /// Re-runs of the day since the daily run, oldest first.
    pub reruns: Vec<RerunEntry>,
    /// True when a re-run found neither the state store nor the previous summary holding the
    /// daily run's facts: its counts (`scored_in_run` … `api_requests`) then read 0, unknown.
    pub daily_facts_lost: bool,
    /// The four averages of earlier days, from the history, to compare with (empty when the
    /// history holds no earlier day).
    #[serde(default)]
    pub comparison: Comparison,
}

/// What a summary compares its averages with.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The latest earlier business date with a file, as its file stood after its last run.
    pub previous_day: Option<Reference>,
    /// The [`COMPARISON_DAYS`] calendar days before the business date: the mean over every
    /// row of their files (each day's file as it stood after its last run).
    pub mean_30_days: Option<Reference>,
}

/// Calendar days the summary's mean covers.
pub const COMPARISON_DAYS: i64 = 30;

/// Averages of one earlier day or period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    /// First and last business dates with a file in the period (the same date for a day).
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Business dates with a file in the period.
    pub days: u64,
    /// `overall`, `environmental`, `social`, `governance` → average, 2 dp (`None` when no row
    /// showed the score).
    pub averages: BTreeMap<String, Option<String>>,
}

impl Reference {
    /// The averages of `sums` (score → sum and rows) over business dates `from` ..= `to`.
    pub fn of_sums(
        from: NaiveDate,
        to: NaiveDate,
        days: u64,
        sums: &BTreeMap<String, (Decimal, u64)>,
    ) -> Reference {
        let averages = SCORES
            .iter()
            .map(|&score| {
                let value = sums.get(score).and_then(|&(sum, rows)| average(sum, rows));
                (score.to_owned(), value)
            })
            .collect();
        Reference {
            from,
            to,
            days,
            averages,
        }
    }
}

/// The four scores, as `score_sums`, `averages` and [`Reference::averages`] name them.
pub const SCORES: [&str; 4] = ["overall", "environmental", "social", "governance"];

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

fn score_sum(sum: Decimal, rows: u64) -> ScoreSum {
    ScoreSum {
        sum: sum.normalize().to_string(),
        rows,
    }
}

fn average(sum: Decimal, n: u64) -> Option<String> {
    if n == 0 {
        return None;
    }
    sum.checked_div(Decimal::from(n)).map(format_score)
}

impl Summary {
    /// Combines the statistics of the file as written with the facts of the day's runs.
    pub fn build(business_date: NaiveDate, file: &str, stats: &RowStats, day: DayFacts) -> Self {
        let primary_focus = BTreeMap::from([
            (Pillar::Environmental.to_string(), stats.focus_environmental),
            (Pillar::Social.to_string(), stats.focus_social),
            (Pillar::Governance.to_string(), stats.focus_governance),
        ]);
        let DayFacts {
            daily,
            reruns,
            daily_facts_lost,
        } = day;
        let duration_seconds =
            u64::try_from((daily.finished_at - daily.started_at).num_seconds()).unwrap_or(0);
        let deadline_met = daily
            .deadline
            .map(|deadline| daily.outcome != "TimedOut" && daily.finished_at <= deadline);
        Summary {
            business_date,
            run_id: daily.run_id,
            outcome: daily.outcome,
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
            score_sums: BTreeMap::from([
                (
                    "overall".to_owned(),
                    score_sum(stats.sum_overall, stats.n_overall),
                ),
                (
                    "environmental".to_owned(),
                    score_sum(stats.sum_environmental, stats.n_environmental),
                ),
                (
                    "social".to_owned(),
                    score_sum(stats.sum_social, stats.n_social),
                ),
                (
                    "governance".to_owned(),
                    score_sum(stats.sum_governance, stats.n_governance),
                ),
            ]),
            primary_focus,
            failed_accounts: stats.failed_accounts.clone(),
            failed_accounts_truncated: stats.failed_accounts_truncated,
            error_codes: stats.error_codes.clone(),
            failed_details: stats
                .failed_details
                .iter()
                .map(|(id, d)| FailedAccount {
                    account_id: id.clone(),
                    error_code: d.error_code.clone(),
                    error_message: d.error_message.clone(),
                    attempts: d.attempts,
                })
                .collect(),
            scored_in_run: daily.scored_in_run,
            carried_forward: daily.carried_forward,
            deadline_failed: daily.deadline_failed,
            never_scored: daily.never_scored,
            new_accounts: daily.new_accounts,
            gone_accounts: daily.gone_accounts,
            malformed_records: daily.malformed_records,
            api_attempts: daily.api_attempts,
            api_requests: daily.api_requests,
            api_rate_limited: daily.api_rate_limited,
            started_at: daily.started_at,
            finished_at: daily.finished_at,
            duration_seconds,
            deadline: daily.deadline,
            deadline_met,
            reruns,
            daily_facts_lost,
            comparison: Comparison::default(),
        }
    }

    /// The sums that must hold, each one that does not, in words (empty when all hold):
    /// `successful + partial + failed = accounts` and, unless the daily facts were lost,
    /// `scored_in_run + carried_forward + deadline_failed + never_scored = accounts`.
    pub fn inconsistencies(&self) -> Vec<String> {
        let mut wrong = Vec::new();
        let by_status = self.successful + self.partial + self.failed;
        if by_status != self.accounts {
            wrong.push(format!(
                "successful + partial + failed = {by_status}, accounts = {}",
                self.accounts
            ));
        }
        let by_source =
            self.scored_in_run + self.carried_forward + self.deadline_failed + self.never_scored;
        if !self.daily_facts_lost && by_source != self.accounts {
            wrong.push(format!(
                "scored_in_run + carried_forward + deadline_failed + never_scored = {by_source}, accounts = {}",
                self.accounts
            ));
        }
        wrong
    }

    /// The summary for a person, one fact a line (indented two spaces): what `esg run` and
    /// `esg rerun` print, the same numbers as the JSON.
    pub fn text(&self) -> String {
        let mut out = format!(
            "  accounts {}: {} successful, {} partial, {} failed (success rate {}%)\n",
            self.accounts, self.successful, self.partial, self.failed, self.success_rate_percent
        );
        let lost = if self.daily_facts_lost {
            " (counts unknown: the daily run's facts were lost)"
        } else {
            ""
        };
        out.push_str(&format!(
            "  daily run {} {}{lost}: scored {}, carried forward {}, failed by the deadline {}, never scored {}\n",
            self.run_id,
            self.outcome,
            self.scored_in_run,
            self.carried_forward,
            self.deadline_failed,
            self.never_scored
        ));
        out.push_str(&format!(
            "  accounts new {}, gone {}, malformed records skipped {}\n",
            self.new_accounts, self.gone_accounts, self.malformed_records
        ));
        out.push_str(&format!(
            "  ESG API: {} scoring attempts, {} HTTP requests ({} answered 429), in {} s\n",
            self.api_attempts, self.api_requests, self.api_rate_limited, self.duration_seconds
        ));
        for r in &self.reruns {
            out.push_str(&format!(
                "  {} {} {}: {} accounts, {} scored, {} failed, {} not in the file; {} attempts, {} requests ({} answered 429); finished {}\n",
                r.kind.to_lowercase(),
                r.run_id,
                r.outcome,
                r.accounts,
                r.scored,
                r.failed,
                r.not_in_file,
                r.api_attempts,
                r.api_requests,
                r.api_rate_limited,
                r.finished_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        out
    }
}

/// Writes `dir/FirmESGRatings_YYYYMMDD_summary.json` (pretty JSON, mode 0640; `….json.age`
/// when `protection` encrypts) atomically and returns its path.
pub fn write_summary(
    dir: &Path,
    summary: &Summary,
    protection: &Protection,
) -> Result<PathBuf, OutputError> {
    let name = file_names(summary.business_date).summary_json;
    let mut bytes = serde_json::to_vec_pretty(summary).map_err(|source| OutputError::Json {
        path: dir.join(&name),
        source,
    })?;
    bytes.push(b'\n');
    let path = write_file_atomically(dir, &name, &bytes, protection)?;
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
            values: esg_schemas::EsgValues {
                overall: score(scores[0]),
                environmental: score(scores[1]),
                social: score(scores[2]),
                governance: score(scores[3]),
                primary_focus: focus,
                primary_focus_score: focus.map(|_| dec("50")),
                analysis_date: NaiveDate::from_ymd_opt(2026, 11, 20),
            },
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
            scored_in_run: 2,
            carried_forward: 1,
            deadline_failed: 1,
            never_scored: 0,
            new_accounts: 2,
            gone_accounts: 1,
            malformed_records: 0,
            api_attempts: 5,
            api_requests: 7,
            api_rate_limited: 0,
            started_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 11, 0, 0)
                .single()
                .expect("time"),
            finished_at: Utc
                .with_ymd_and_hms(2026, 11, 23, 11, 2, 5)
                .single()
                .expect("time"),
            deadline: Utc.with_ymd_and_hms(2026, 11, 23, 15, 0, 0).single(),
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
        let summary = Summary::build(
            date(),
            "FirmESGRatings_20261123.csv",
            &stats,
            DayFacts::daily(facts()),
        );
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
        assert_eq!((summary.api_attempts, summary.api_requests), (5, 7));
        assert!(summary.reruns.is_empty());
        assert_eq!(summary.inconsistencies(), Vec::<String>::new());
    }

    #[test]
    fn rates_round_half_away_from_zero_and_handle_no_rows() {
        assert_eq!(percent(79, 80, "x"), "98.75");
        assert_eq!(percent(2, 3, "x"), "66.67");
        assert_eq!(percent(1, 3, "x"), "33.33");
        assert_eq!(percent(1, 8, "x"), "12.50");
        assert_eq!(percent(1, 200_000, "x"), "0.00");
        assert_eq!(percent(1, 160, "x"), "0.63", "0.625 rounds up");
        let summary = Summary::build(
            date(),
            "f.csv",
            &RowStats::default(),
            DayFacts::daily(RunFacts {
                scored_in_run: 0,
                carried_forward: 0,
                deadline_failed: 0,
                ..facts()
            }),
        );
        assert_eq!(summary.inconsistencies(), Vec::<String>::new());
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
            DayFacts::daily(facts()),
        );
        let path = write_summary(dir.path(), &summary, &Protection::Plaintext).expect("write");
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

    fn at(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, m, 0)
            .single()
            .expect("time")
    }

    fn rerun_entry(id: &str, finished: DateTime<Utc>) -> RerunEntry {
        RerunEntry {
            run_id: id.into(),
            kind: "Rerun".into(),
            outcome: "Completed".into(),
            accounts: 3,
            scored: 3,
            failed: 0,
            not_in_file: 0,
            api_attempts: 3,
            api_requests: 4,
            api_rate_limited: 0,
            started_at: finished - chrono::Duration::seconds(30),
            finished_at: finished,
        }
    }

    #[test]
    fn provenance_of_a_row_follows_expected_scored_and_known() {
        use Provenance::*;
        // (expected, scored in the run, has a score) → provenance
        let cases = [
            ((true, true, true), ScoredInRun),
            ((false, true, true), ScoredInRun),
            ((true, false, true), DeadlineFailed),
            ((true, false, false), DeadlineFailed),
            ((false, false, true), CarriedForward),
            ((false, false, false), NeverScored),
        ];
        for ((e, s, h), want) in cases {
            assert_eq!(Provenance::of(e, s, h), want, "{e} {s} {h}");
        }
    }

    #[test]
    fn a_deadline_failure_is_not_carried_forward_and_the_counts_add_up() {
        use ScoreStatus::*;
        // A day of 5: 2 scored (one Failed by the vendor), 1 carried, 1 failed by the deadline,
        // 1 never scored.
        let rows = [
            (
                row("A", Successful, ["70"; 4], Some(Pillar::Social)),
                Provenance::ScoredInRun,
            ),
            (row("B", Failed, ["-"; 4], None), Provenance::ScoredInRun),
            (
                row("C", Successful, ["60"; 4], Some(Pillar::Social)),
                Provenance::CarriedForward,
            ),
            (row("D", Failed, ["-"; 4], None), Provenance::DeadlineFailed),
            (row("E", Failed, ["-"; 4], None), Provenance::NeverScored),
        ];
        let (mut stats, mut tally) = (RowStats::default(), Tally::default());
        for (r, p) in &rows {
            stats.add(r);
            tally.add(*p, r);
        }
        assert_eq!(
            tally,
            Tally {
                rows: 5,
                scored_in_run: 2,
                carried_forward: 1,
                deadline_failed: 1,
                never_scored: 1,
                failed: 3,
            }
        );
        let summary = Summary::build(
            date(),
            "f.csv",
            &stats,
            DayFacts::daily(facts().with_tally(&tally)),
        );
        assert_eq!(
            (
                summary.carried_forward,
                summary.deadline_failed,
                summary.never_scored
            ),
            (1, 1, 1)
        );
        assert_eq!(summary.successful + summary.partial + summary.failed, 5);
        assert_eq!(summary.inconsistencies(), Vec::<String>::new());

        // A summary whose counts do not add up says which sum is wrong.
        let wrong = Summary {
            carried_forward: 2,
            ..summary.clone()
        };
        let found = wrong.inconsistencies();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("carried_forward"), "{found:?}");
        // With the daily facts lost, only the status sum is checked.
        let lost = Summary {
            daily_facts_lost: true,
            ..wrong
        };
        assert!(lost.inconsistencies().is_empty());
    }

    #[test]
    fn a_rerun_summary_keeps_the_days_totals_and_the_daily_runs_facts() {
        let daily = facts();
        let reruns = vec![
            rerun_entry("2026-11-23.1", at(14, 0)),
            rerun_entry("2026-11-23.2", at(15, 0)),
        ];
        let summary = Summary::build(
            date(),
            "FirmESGRatings_20261123.csv",
            &known_stats(),
            DayFacts {
                daily: daily.clone(),
                reruns: reruns.clone(),
                daily_facts_lost: false,
            },
        );
        assert_eq!(summary.run_id, daily.run_id);
        assert_eq!(summary.started_at, daily.started_at);
        assert_eq!(summary.duration_seconds, 125, "the daily run's duration");
        assert_eq!(summary.scored_in_run, daily.scored_in_run);
        assert_eq!(summary.accounts, 4, "every row of the file");
        assert_eq!(summary.reruns, reruns);
        let json = serde_json::to_value(&summary).expect("json");
        assert_eq!(json["reruns"][1]["run_id"], "2026-11-23.2");
        assert_eq!(json["reruns"][0]["accounts"], 3);
        assert!(json.get("api_calls").is_none(), "renamed: {json}");
    }

    #[test]
    fn the_previous_summary_reads_back_with_its_reruns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let summary = Summary::build(
            date(),
            "FirmESGRatings_20261123.csv",
            &known_stats(),
            DayFacts {
                daily: facts(),
                reruns: vec![rerun_entry("2026-11-23.1", at(14, 0))],
                daily_facts_lost: false,
            },
        );
        write_summary(dir.path(), &summary, &Protection::Plaintext).expect("write");
        let back = read_previous(dir.path(), date()).expect("reads back");
        assert_eq!(back.daily, facts());
        assert_eq!(back.reruns, summary.reruns);
        assert!(!back.daily_facts_lost);
    }

    #[test]
    fn a_summary_of_an_older_version_reads_back_with_zero_for_missing_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The shape written before `api_calls` was split and `reruns` existed.
        let old = serde_json::json!({
            "business_date": "2026-11-23", "run_id": "2026-11-23",
            "outcome": "Completed", "file": "FirmESGRatings_20261123.csv",
            "accounts": 4, "successful": 4, "partial": 0, "failed": 0,
            "scored_in_run": 3, "carried_forward": 1, "new_accounts": 0, "gone_accounts": 0,
            "malformed_records": 2, "api_calls": 9,
            "started_at": "2026-11-23T11:00:00Z", "finished_at": "2026-11-23T11:02:05Z",
            "duration_seconds": 125
        });
        std::fs::write(
            dir.path().join("FirmESGRatings_20261123_summary.json"),
            old.to_string(),
        )
        .expect("write");
        let back = read_previous(dir.path(), date()).expect("reads back");
        assert_eq!(back.daily.api_attempts, 9, "api_calls counted attempts");
        assert_eq!(back.daily.api_requests, 0);
        assert_eq!(back.daily.deadline_failed, 0);
        assert_eq!(back.daily.malformed_records, 2);
        assert!(back.reruns.is_empty());
    }

    #[test]
    fn a_missing_unreadable_or_foreign_previous_summary_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = read_previous(dir.path(), date()).expect_err("missing");
        assert!(matches!(err, PreviousSummaryError::Read { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("FirmESGRatings_20261123_summary.json"),
            "{err}"
        );

        let path = dir.path().join("FirmESGRatings_20261123_summary.json");
        std::fs::write(&path, b"{\"business_date\": \"2026-11-23\", \"run_id\": ").expect("write");
        let err = read_previous(dir.path(), date()).expect_err("truncated");
        assert!(matches!(err, PreviousSummaryError::Parse { .. }), "{err}");

        std::fs::write(&path, b"[1, 2, 3]").expect("write");
        assert!(matches!(
            read_previous(dir.path(), date()),
            Err(PreviousSummaryError::Parse { .. })
        ));

        let other = Summary::build(
            NaiveDate::from_ymd_opt(2026, 11, 20).expect("date"),
            "f.csv",
            &known_stats(),
            DayFacts::daily(facts()),
        );
        let text = serde_json::to_vec(&other).expect("json");
        std::fs::write(&path, text).expect("write");
        let err = read_previous(dir.path(), date()).expect_err("other date");
        assert!(
            matches!(err, PreviousSummaryError::OtherDate { .. }),
            "{err}"
        );
    }

    #[test]
    fn the_text_shows_the_same_numbers_as_the_json() {
        let summary = Summary::build(
            date(),
            "FirmESGRatings_20261123.csv",
            &known_stats(),
            DayFacts {
                daily: RunFacts {
                    api_rate_limited: 2,
                    ..facts()
                },
                reruns: vec![RerunEntry {
                    failed: 1,
                    not_in_file: 1,
                    api_rate_limited: 1,
                    ..rerun_entry("2026-11-23.1", at(14, 0))
                }],
                daily_facts_lost: false,
            },
        );
        let text = summary.text();
        for expected in [
            "accounts 4: 2 successful, 1 partial, 1 failed (success rate 50.00%)",
            "daily run 2026-11-23 CompletedWithFailures: scored 2, carried forward 1, failed by the deadline 1, never scored 0",
            "accounts new 2, gone 1, malformed records skipped 0",
            "ESG API: 5 scoring attempts, 7 HTTP requests (2 answered 429), in 125 s",
            "rerun 2026-11-23.1 Completed: 3 accounts, 3 scored, 1 failed, 1 not in the file; 3 attempts, 4 requests (1 answered 429); finished 2026-11-23T14:00:00Z",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
        let lost = Summary {
            daily_facts_lost: true,
            ..summary
        };
        assert!(lost.text().contains("counts unknown"), "{}", lost.text());
    }

    #[test]
    fn a_rerun_takes_the_daily_facts_from_the_store_then_the_previous_summary() {
        let this = rerun_entry("2026-11-23.2", at(16, 0));
        let earlier = rerun_entry("2026-11-23.1", at(14, 0));
        let previous_file = || {
            Ok(DayFacts {
                daily: RunFacts {
                    api_requests: 99,
                    ..facts()
                },
                reruns: vec![earlier.clone()],
                daily_facts_lost: false,
            })
        };
        // The store has the daily run: the previous summary is not read.
        let day = DayFacts::for_rerun(
            StoredDay {
                daily: Some(facts()),
                reruns: vec![earlier.clone()],
                daily_basics: None,
            },
            || panic!("the previous summary is not needed"),
            this.clone(),
        );
        assert_eq!(day.daily, facts());
        assert_eq!(day.reruns, vec![earlier.clone(), this.clone()]);
        assert!(!day.daily_facts_lost);

        // The store was rebuilt (it knows only this re-run's predecessor): the previous
        // summary gives the daily facts; re-runs are not listed twice.
        let day = DayFacts::for_rerun(
            StoredDay {
                daily: None,
                reruns: vec![earlier.clone()],
                daily_basics: None,
            },
            previous_file,
            this.clone(),
        );
        assert_eq!(day.daily.api_requests, 99);
        assert_eq!(day.reruns, vec![earlier.clone(), this.clone()]);

        // Assembled again after a crash: the entry of the same run is replaced, not added.
        let day = DayFacts::for_rerun(
            StoredDay {
                daily: Some(facts()),
                reruns: vec![earlier.clone(), this.clone()],
                daily_basics: None,
            },
            || panic!("not needed"),
            RerunEntry {
                failed: 1,
                ..this.clone()
            },
        );
        assert_eq!(day.reruns.len(), 2);
        assert_eq!(day.reruns[1].failed, 1);
    }

    #[test]
    fn a_rerun_with_no_daily_facts_anywhere_writes_what_is_known_and_says_so() {
        let this = rerun_entry("2026-11-23.1", at(14, 0));
        let basics = RunFacts {
            scored_in_run: 0,
            carried_forward: 0,
            deadline_failed: 0,
            api_attempts: 0,
            api_requests: 0,
            ..facts()
        };
        let missing = || {
            Err(PreviousSummaryError::Read {
                path: "FirmESGRatings_20261123_summary.json".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        };
        let day = DayFacts::for_rerun(
            StoredDay {
                daily: None,
                reruns: Vec::new(),
                daily_basics: Some(basics.clone()),
            },
            missing,
            this.clone(),
        );
        assert!(day.daily_facts_lost);
        assert_eq!(day.daily, basics);
        assert_eq!(day.reruns, vec![this.clone()]);
        let summary = Summary::build(date(), "f.csv", &known_stats(), day);
        assert!(summary.daily_facts_lost);
        assert_eq!(
            summary.accounts, 4,
            "the file's statistics are always known"
        );
        assert!(summary.inconsistencies().is_empty());

        // Not even the runs table: empty run id, the re-run's start.
        let day = DayFacts::for_rerun(StoredDay::default(), missing, this.clone());
        assert!(day.daily_facts_lost);
        assert_eq!(day.daily.run_id, "");
        assert_eq!(day.daily.started_at, this.started_at);
    }
}
