//! The producer's state store (`producer.db`): runs and their phase, the listing of each run,
//! the roster last published to `esg.accounts`, the last score of each account (materialised
//! from `esg.scores`; `last_etags` holds the analysis and ETag of those whose last score came
//! with one, for conditional requests), and the accounts each run asks to score.
//!
//! Nothing here is known only to this host: the roster is materialised from the compacted
//! `esg.accounts` topic (`accounts_offsets`) and the last scores from `esg.scores`
//! (`scores_offsets`), so a producer on a fresh state directory (another host, a lost disk)
//! rebuilds both from the topics before it plans a run. Run ids come from `esg.triggers`.
//!
//! Every phase of a run is recorded here once it is done, so a producer killed at any point
//! resumes at the phase it was in (see [`crate::Producer::run`]).

use esg_bus::{Store, StoreError};
use rusqlite::{params, OptionalExtension};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    business_date TEXT NOT NULL,
    kind TEXT NOT NULL,
    full INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    triggered_at_ms INTEGER NOT NULL,
    phase TEXT NOT NULL,
    listing_json TEXT,
    emit_checkpoint TEXT,
    sealed_json TEXT
);
CREATE TABLE IF NOT EXISTS listing (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roster (
    account_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_scores (
    account_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    account_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    analysis_date TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_etags (
    account_id TEXT PRIMARY KEY,
    etag TEXT NOT NULL,
    overall TEXT,
    environmental TEXT,
    social TEXT,
    governance TEXT,
    primary_focus TEXT,
    primary_focus_score TEXT,
    analysis_date TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts_offsets (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS scores_offsets (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    emitted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roster_changes (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    gone INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
";

/// The statements that remove one account (`:id`) from this store, for `esg erase`: its rows
/// in every listing, the roster, its last score and ETag, and the unfinished runs.
pub const ERASE: &[&str] = &[
    "DELETE FROM listing WHERE account_id = :id",
    "DELETE FROM roster WHERE account_id = :id",
    "DELETE FROM last_scores WHERE account_id = :id",
    "DELETE FROM last_etags WHERE account_id = :id",
    "DELETE FROM pending WHERE account_id = :id",
    "DELETE FROM roster_changes WHERE account_id = :id",
];

/// The statements that remove the runs of business dates before `:before`, for
/// `[retention] history`.
pub const PURGE_HISTORY: &[&str] = &[
    "DELETE FROM listing WHERE run_id IN (SELECT run_id FROM runs WHERE business_date < :before)",
    "DELETE FROM pending WHERE run_id IN (SELECT run_id FROM runs WHERE business_date < :before)",
    "DELETE FROM roster_changes
     WHERE run_id IN (SELECT run_id FROM runs WHERE business_date < :before)",
    "DELETE FROM runs WHERE business_date < :before",
];

/// Phase of a run in the producer. A daily run goes `Triggered`, `Listed`, `Planned`,
/// `EventsEmitted`, `Emitted`, `Sealed`; a re-run `Triggered`, `RosterPublished`, `Emitted`,
/// `Sealed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// `DailyTrigger` published.
    Triggered,
    /// Active accounts listed into `listing`.
    Listed,
    /// Accounts to score and roster changes decided.
    Planned,
    /// Every `AccountChanged` published; the roster changes not yet.
    EventsEmitted,
    /// Roster changes published to `esg.accounts`, the events not yet: a re-run (which has no
    /// roster changes) once planned, or a daily run planned by an earlier version, which
    /// published the roster first.
    RosterPublished,
    /// Every `AccountChanged` and every roster change published.
    Emitted,
    /// `RunSealed` published: nothing left to do.
    Sealed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Triggered => "triggered",
            Phase::Listed => "listed",
            Phase::Planned => "planned",
            Phase::EventsEmitted => "events_emitted",
            Phase::RosterPublished => "roster_published",
            Phase::Emitted => "emitted",
            Phase::Sealed => "sealed",
        }
    }
    pub fn parse(s: &str) -> Option<Phase> {
        [
            Phase::Triggered,
            Phase::Listed,
            Phase::Planned,
            Phase::EventsEmitted,
            Phase::RosterPublished,
            Phase::Emitted,
            Phase::Sealed,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }
}

/// A run as the producer records it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub business_date: String,
    pub kind: String,
    pub full: bool,
    pub deadline_ms: i64,
    pub triggered_at_ms: i64,
    pub phase: Phase,
    pub listing_json: Option<String>,
    pub emit_checkpoint: Option<String>,
    pub sealed_json: Option<String>,
}

/// Opens the producer store.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    open_keyed(path, None)
}

/// As [`open`], encrypted with `key` (SQLCipher) when there is one.
pub fn open_keyed(path: &Path, key: Option<&esg_bus::store::DbKey>) -> Result<Store, StoreError> {
    let store = Store::open_keyed(path, SCHEMA, key)?;
    store.call_blocking(migrate)?;
    Ok(store)
}

/// Brings a store of an earlier version up to date: `pending` no longer keeps the account's
/// name (names live in the roster only), so an old store's column goes.
fn migrate(c: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    let has_name: bool = c.query_row(
        "SELECT EXISTS (SELECT 1 FROM pragma_table_info('pending') WHERE name = 'name')",
        [],
        |r| r.get(0),
    )?;
    if has_name {
        c.execute_batch("ALTER TABLE pending DROP COLUMN name")?;
        tracing::info!("producer store: the account names of pending accounts removed");
    }
    Ok(())
}

pub(crate) fn get_run(
    conn: &rusqlite::Connection,
    run_id: &str,
) -> rusqlite::Result<Option<RunRow>> {
    conn.query_row(
        "SELECT run_id, business_date, kind, full, deadline_ms, triggered_at_ms, phase,
                listing_json, emit_checkpoint, sealed_json
         FROM runs WHERE run_id = ?1",
        [run_id],
        |r| {
            let phase: String = r.get(6)?;
            Ok(RunRow {
                run_id: r.get(0)?,
                business_date: r.get(1)?,
                kind: r.get(2)?,
                full: r.get(3)?,
                deadline_ms: r.get(4)?,
                triggered_at_ms: r.get(5)?,
                phase: Phase::parse(&phase).unwrap_or(Phase::Triggered),
                listing_json: r.get(7)?,
                emit_checkpoint: r.get(8)?,
                sealed_json: r.get(9)?,
            })
        },
    )
    .optional()
}

pub(crate) fn set_phase(
    conn: &rusqlite::Connection,
    run_id: &str,
    phase: Phase,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE runs SET phase = ?2 WHERE run_id = ?1",
        params![run_id, phase.as_str()],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_store_loses_the_names_of_its_pending_accounts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("producer.db");
        {
            let c = rusqlite::Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE pending (run_id TEXT NOT NULL, account_id TEXT NOT NULL,
                    name TEXT NOT NULL, version INTEGER NOT NULL, reason TEXT NOT NULL,
                    emitted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (run_id, account_id))
                    WITHOUT ROWID;
                 INSERT INTO pending VALUES ('r', 'A', 'Some Name', 1, 'New', 0);",
            )
            .expect("old schema");
        }
        for _ in 0..2 {
            let store = open(&path).expect("opens and migrates");
            let (columns, row): (Vec<String>, (String, i64)) = store
                .call_blocking(|c| {
                    let mut stmt = c.prepare("SELECT name FROM pragma_table_info('pending')")?;
                    let columns = stmt
                        .query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    let row = c.query_row("SELECT account_id, version FROM pending", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                    Ok((columns, row))
                })
                .expect("read");
            assert!(!columns.contains(&"name".to_owned()), "{columns:?}");
            assert_eq!(row, ("A".to_owned(), 1), "the row is kept");
        }
    }
}
