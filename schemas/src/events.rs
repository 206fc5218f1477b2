//! Rust types of the pipeline's events, one per `.avsc` record in `schemas/avro/`.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::fmt;
use std::str::FromStr;

/// Any event the pipeline writes to the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    DailyTrigger(DailyTrigger),
    RunSealed(RunSealed),
    RunCompleted(RunCompleted),
    AccountChanged(AccountChanged),
    AccountEntry(AccountEntry),
    EsgScore(EsgScore),
}

impl Event {
    /// The Avro record name of this event.
    pub fn record_name(&self) -> &'static str {
        match self {
            Event::DailyTrigger(_) => "DailyTrigger",
            Event::RunSealed(_) => "RunSealed",
            Event::RunCompleted(_) => "RunCompleted",
            Event::AccountChanged(_) => "AccountChanged",
            Event::AccountEntry(_) => "AccountEntry",
            Event::EsgScore(_) => "EsgScore",
        }
    }
}

macro_rules! avro_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every symbol, in the order of the Avro schema.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The Avro symbol.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }

            /// Position of the symbol in the Avro schema.
            pub fn index(self) -> u32 {
                Self::ALL.iter().position(|s| *s == self).unwrap_or(0) as u32
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} symbol {s:?}", stringify!($name)))
            }
        }
    };
}

avro_enum!(
    /// What started a run.
    RunKind { Daily, Rerun, Replay }
);
avro_enum!(
    /// How a run ended.
    RunOutcome { Completed, CompletedWithFailures, TimedOut, Aborted }
);
avro_enum!(
    /// Why an account is scored in a run (DESIGN section 5).
    ChangeReason { New, Changed, Stale, Retry, Forced, Replay }
);
avro_enum!(
    /// Processing status of one account, as the file's last column shows it.
    ScoreStatus { Successful, Partial, Failed }
);
avro_enum!(
    /// An ESG pillar.
    Pillar { Environmental, Social, Governance }
);

/// Starts a run (esg.triggers).
#[derive(Debug, Clone, PartialEq)]
pub struct DailyTrigger {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub kind: RunKind,
    pub full: bool,
    pub deadline: DateTime<Utc>,
    pub triggered_at: DateTime<Utc>,
}

/// The producer's last word on a run (esg.triggers). Also kept as JSON in the stages' state
/// stores, hence serde.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct RunSealed {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub expected_accounts: i64,
    pub active_accounts: i64,
    pub new_accounts: i64,
    pub changed_accounts: i64,
    pub stale_accounts: i64,
    pub retry_accounts: i64,
    pub forced_accounts: i64,
    pub carried_forward: i64,
    pub gone_accounts: i64,
    pub malformed_records: i64,
    pub sealed_at: DateTime<Utc>,
}

/// The assembler's last word on a run (esg.triggers).
#[derive(Debug, Clone, PartialEq)]
pub struct RunCompleted {
    pub run_id: String,
    pub business_date: NaiveDate,
    pub outcome: RunOutcome,
    pub rows: i64,
    pub successful: i64,
    pub partial: i64,
    pub failed: i64,
    pub output_file: String,
    pub completed_at: DateTime<Utc>,
}

/// Asks the scorers to score one account (esg.account-events). Carries no account name: the
/// scorer does not need one, and names travel only on `esg.accounts` ([`AccountEntry`]).
/// Events written before schema v3 hold a name; decoding drops it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountChanged {
    pub run_id: String,
    pub account_id: String,
    pub version: i64,
    pub reason: ChangeReason,
    pub emitted_at: DateTime<Utc>,
    /// The account's stored analysis and its ETag, for a conditional request; `None` when
    /// there is none (never scored, last score `Failed`, or scored through the batch endpoint,
    /// whose answers carry no ETag). Absent in events written before the field.
    pub prior: Option<PriorAnalysis>,
}

/// A stored analysis with the vendor's ETag for it: what a `304 Not Modified` answer to
/// `If-None-Match: <etag>` confirms is still the account's analysis.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorAnalysis {
    /// The ETag the vendor sent with the analysis.
    pub etag: String,
    /// The analysis's values (its analysis date included).
    pub values: EsgValues,
}

/// One active account of the roster (esg.accounts, compacted).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountEntry {
    pub account_id: String,
    pub account_name: String,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    pub run_id: String,
}

/// The ESG values of one account's score: what the file's seven ESG cells (Overall,
/// Environmental, Social and Governance Score, Primary ESG Focus, Primary Focus Score,
/// Analysis Date) show, `None` where a cell shows `N/A`. The one place that says which values
/// a `Failed` score has ([`EsgValues::failed`]) and when a score is `Partial`
/// ([`EsgValues::is_partial`]); the scorer builds its scores and the assembler its rows with it.
///
/// The primary focus is the pair of the pillar and its score: the API sends both or neither
/// (`primaryFocus` is an object with a pillar and a score, or null), and either one missing
/// means the primary focus is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EsgValues {
    pub overall: Option<Decimal>,
    pub environmental: Option<Decimal>,
    pub social: Option<Decimal>,
    pub governance: Option<Decimal>,
    /// The pillar of the primary focus.
    pub primary_focus: Option<Pillar>,
    /// The score of the primary focus.
    pub primary_focus_score: Option<Decimal>,
    /// The date the vendor's analysis is as of.
    pub analysis_date: Option<NaiveDate>,
}

impl EsgValues {
    /// The values of a `Failed` score: none (every ESG cell of its row is `N/A`).
    pub const fn failed() -> Self {
        EsgValues {
            overall: None,
            environmental: None,
            social: None,
            governance: None,
            primary_focus: None,
            primary_focus_score: None,
            analysis_date: None,
        }
    }

    /// True when a value is missing: the overall score, a pillar score (E, S or G), the primary
    /// focus (its pillar or its score) or the analysis date. A scored account with such values
    /// is `Partial` (DESIGN section 4: a 200 whose overall, a pillar or the primary focus is
    /// null). A 200 always carries its analysis date (the contract requires it; an answer
    /// without one is `OUT_OF_CONTRACT`), so for the scorer the date never decides; it is in
    /// the rule so that a row never claims `Successful` with an `N/A` cell.
    pub fn is_partial(&self) -> bool {
        self.overall.is_none()
            || self.environmental.is_none()
            || self.social.is_none()
            || self.governance.is_none()
            || self.primary_focus.is_none()
            || self.primary_focus_score.is_none()
            || self.analysis_date.is_none()
    }

    /// The status of an account scored with these values: `Partial` when
    /// [`is_partial`](Self::is_partial), else `Successful`.
    pub fn scored_status(&self) -> ScoreStatus {
        if self.is_partial() {
            ScoreStatus::Partial
        } else {
            ScoreStatus::Successful
        }
    }
}

/// The outcome of scoring one account (esg.scores, compacted).
#[derive(Debug, Clone, PartialEq)]
pub struct EsgScore {
    pub run_id: String,
    pub account_id: String,
    pub account_version: i64,
    pub status: ScoreStatus,
    /// The ESG values; [`EsgValues::failed`] for a `Failed` score. The Avro record carries
    /// them as its own fields (`overall` … `analysis_date`).
    pub values: EsgValues,
    pub attempts: i32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub scored_at: DateTime<Utc>,
    pub source_partition: i32,
    pub source_offset: i64,
    /// HTTP requests sent to the ESG API for this score (401 re-sends and 429 answers
    /// included; `attempts` counts scoring attempts). 0 in records written before the field.
    pub requests: i32,
    /// The vendor's ETag of the analysis, when a single call gave one (batch answers carry
    /// none); `None` for a `Failed` score and in records written before the field.
    pub etag: Option<String>,
    /// Of `requests`, those the ESG API answered 429, counted as `requests` is (a batch request
    /// answered 429 counts once, on the account that counts the request), so that the sum over
    /// a run's scores is the number of 429 answers the vendor sent the run. 0 in records
    /// written before the field (schema v4).
    pub rate_limited_requests: i32,
}

impl EsgScore {
    /// A `Failed` score: no ESG value ([`EsgValues::failed`]), the error's code and message.
    pub fn failed(
        run_id: &str,
        account_id: &str,
        account_version: i64,
        attempts: i32,
        error_code: &str,
        error_message: String,
        scored_at: DateTime<Utc>,
    ) -> Self {
        EsgScore {
            run_id: run_id.to_owned(),
            account_id: account_id.to_owned(),
            account_version,
            status: ScoreStatus::Failed,
            values: EsgValues::failed(),
            attempts,
            error_code: Some(error_code.to_owned()),
            error_message: Some(error_message),
            scored_at,
            source_partition: -1,
            source_offset: -1,
            requests: 0,
            etag: None,
            rate_limited_requests: 0,
        }
    }
}
