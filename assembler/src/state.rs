//! The assembler's state store (`assembler.db`): the latest score per account, the roster, each
//! run's expected and scored accounts, and the runs themselves, materialised from the bus.
//!
//! Exactly-once materialisation: each batch read from a topic is applied in one SQLite
//! transaction together with the next offset to read, so after a crash the store is exactly as
//! of some offset and reading resumes there. Deleting the file rebuilds the state from the
//! topics (`esg.accounts` and `esg.scores` are compacted: the latest value per key is kept),
//! except `run_facts`, what each assembled run did, which only the summaries of later re-runs
//! read: those then fall back to the summary file beside the ratings file.
//!
//! A store of an earlier version is brought up to date when opened: new tables by
//! `CREATE TABLE IF NOT EXISTS`, new columns of old tables by a guarded `ALTER TABLE`.

use crate::summary::{RunFacts, StoredDay};
use chrono::{DateTime, NaiveDate};
use esg_bus::{EventBus, Message, Store, StoreError};
use esg_schemas::{Event, RunSealed, ScoreStatus};
use rusqlite::{params, OptionalExtension, Transaction};
use std::path::Path;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roster (
    account_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scores (
    account_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    account_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    overall TEXT,
    environmental TEXT,
    social TEXT,
    governance TEXT,
    primary_focus TEXT,
    primary_focus_score TEXT,
    analysis_date TEXT,
    attempts INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    scored_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_scored (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expected (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS file_deadlines (
    business_date TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (business_date, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    business_date TEXT NOT NULL,
    kind TEXT NOT NULL,
    full INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    triggered_at_ms INTEGER NOT NULL,
    sealed_json TEXT,
    marks TEXT,
    completed INTEGER NOT NULL DEFAULT 0,
    outcome TEXT,
    scored INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS run_facts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    business_date TEXT NOT NULL,
    kind TEXT NOT NULL,
    facts_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_facts_by_date ON run_facts (business_date, seq);
";

/// The statements that remove one account (`:id`) from this store, for `esg erase`: its roster
/// entry, its score, and its place in every run.
pub const ERASE: &[&str] = &[
    "DELETE FROM roster WHERE account_id = :id",
    "DELETE FROM scores WHERE account_id = :id",
    "DELETE FROM run_scored WHERE account_id = :id",
    "DELETE FROM expected WHERE account_id = :id",
    "DELETE FROM file_deadlines WHERE account_id = :id",
];

/// The statements that remove the runs of business dates before `:before` and what they
/// recorded, for `[retention] history`.
pub const PURGE_HISTORY: &[&str] = &[
    "DELETE FROM run_scored WHERE run_id IN (SELECT run_id FROM runs WHERE business_date < :before)",
    "DELETE FROM expected WHERE run_id IN (SELECT run_id FROM runs WHERE business_date < :before)",
    "DELETE FROM run_facts WHERE business_date < :before",
    "DELETE FROM history WHERE business_date < :before",
    "DELETE FROM file_deadlines WHERE business_date < :before",
    "DELETE FROM runs WHERE business_date < :before",
];

/// The accounts no longer in the roster whose last score is older than `:before_ms`
/// (milliseconds since the epoch), for `[retention] departed`.
pub const DEPARTED: &str = "SELECT s.account_id FROM scores s
     WHERE s.scored_at_ms < :before_ms
       AND NOT EXISTS (SELECT 1 FROM roster r WHERE r.account_id = s.account_id)
     ORDER BY s.account_id";

/// Columns added after a table was first released: `(table, column, definition)`. A store
/// created before gets them by `ALTER TABLE` when it is opened; its rows read 0 (unknown).
/// `run_scored.rate_limited`: of the account's `requests` in the run, those answered 429
/// (`EsgScore.rate_limited_requests`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("run_scored", "requests", "INTEGER NOT NULL DEFAULT 0"),
    ("run_scored", "rate_limited", "INTEGER NOT NULL DEFAULT 0"),
];

/// Adds every column of [`ADDED_COLUMNS`] that `c`'s tables lack (idempotent).
fn migrate(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    for (table, column, definition) in ADDED_COLUMNS {
        let mut stmt = c.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
        let mut present = false;
        for name in names {
            present |= name? == *column;
        }
        if !present {
            c.execute_batch(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))?;
            tracing::info!(table, column, "state store: column added");
        }
    }
    Ok(())
}

/// Opens the assembler store, bringing a store of an earlier version up to date.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    open_keyed(path, None)
}

/// As [`open`], encrypted with `key` (SQLCipher) when there is one.
pub fn open_keyed(path: &Path, key: Option<&esg_bus::store::DbKey>) -> Result<Store, StoreError> {
    let store = Store::open_keyed(path, SCHEMA, key)?;
    store.call_blocking(|c| {
        migrate(c)?;
        c.execute_batch(crate::history::SCHEMA)
    })?;
    Ok(store)
}

/// Topics the assembler materialises, in the order it reads them.
pub fn topics(bus: &EventBus) -> [String; 4] {
    [
        bus.topics.accounts.clone(),
        bus.topics.account_events.clone(),
        bus.topics.scores.clone(),
        bus.topics.triggers.clone(),
    ]
}

/// Next offsets of the assembler's own reading, per partition.
pub fn positions(
    c: &rusqlite::Connection,
    topic: &str,
    partitions: usize,
) -> rusqlite::Result<Vec<i64>> {
    let mut out = vec![0; partitions];
    let mut stmt =
        c.prepare_cached("SELECT partition, next_offset FROM offsets WHERE topic = ?1")?;
    let rows = stmt.query_map([topic], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (p, o) = row?;
        if let Some(slot) = out.get_mut(p as usize) {
            *slot = o;
        }
    }
    Ok(out)
}

fn text(d: Option<rust_decimal::Decimal>) -> Option<String> {
    d.map(|d| d.to_string())
}

/// What applying a batch of a topic did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Runs whose `RunSealed` arrived (the caller records the topic marks for them).
    pub sealed: Vec<String>,
    /// Messages that could not be decoded (logged).
    pub undecodable: u64,
    /// Tombstones applied (an account erased, or gone from the roster): after the commit the
    /// caller empties the write-ahead log ([`forget_erased`]).
    pub erased: u64,
}

/// After a batch with tombstones is committed: the write-ahead log, which still holds the pages
/// as they were before the rows went, is checkpointed into the database (where `secure_delete` zeroed
/// the rows) and truncated. A reader in the way leaves it for SQLite's next checkpoint, said in
/// the log; `esg erase` on this host rebuilds the file in any case.
pub fn forget_erased(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        tracing::warn!(
            "an erased account's earlier pages stay in the write-ahead log until its next \
             checkpoint: a reader had the store open"
        );
    }
    Ok(())
}

/// Statements of [`apply`], prepared once per connection (`prepare_cached`): parsing them again
/// for every record cost more than executing them.
const DELETE_ROSTER: &str = "DELETE FROM roster WHERE account_id = ?1";
const UPSERT_ROSTER: &str = "INSERT INTO roster (account_id, name, version) VALUES (?1, ?2, ?3)
     ON CONFLICT (account_id) DO UPDATE SET name = excluded.name, version = excluded.version";
const INSERT_EXPECTED: &str = "INSERT OR IGNORE INTO expected (run_id, account_id)
     SELECT ?1, ?2 WHERE NOT EXISTS
       (SELECT 1 FROM runs WHERE run_id = ?1 AND completed = 1)";
const UPSERT_SCORE: &str =
    "INSERT INTO scores (account_id, run_id, account_version, status, overall, environmental,
        social, governance, primary_focus, primary_focus_score, analysis_date, attempts,
        error_code, error_message, scored_at_ms)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
     ON CONFLICT (account_id) DO UPDATE SET run_id = excluded.run_id,
        account_version = excluded.account_version, status = excluded.status,
        overall = excluded.overall, environmental = excluded.environmental,
        social = excluded.social, governance = excluded.governance,
        primary_focus = excluded.primary_focus, primary_focus_score = excluded.primary_focus_score,
        analysis_date = excluded.analysis_date, attempts = excluded.attempts,
        error_code = excluded.error_code, error_message = excluded.error_message,
        scored_at_ms = excluded.scored_at_ms";
const INSERT_RUN_SCORED: &str =
    "INSERT OR IGNORE INTO run_scored (run_id, account_id, attempts, requests, rate_limited)
     SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS
       (SELECT 1 FROM runs WHERE run_id = ?1 AND completed = 1)";
const ADD_RUN_SCORED: &str =
    "UPDATE run_scored SET attempts = attempts + ?3, requests = requests + ?4,
        rate_limited = rate_limited + ?5
     WHERE run_id = ?1 AND account_id = ?2";
const COUNT_RUN_SCORED: &str =
    "UPDATE runs SET scored = scored + ?2, failed = failed + ?3 WHERE run_id = ?1";

/// Accounts newly scored per run within a batch, added to `runs` in one update per run
/// ([`RunCounts::flush`]) instead of one per score.
#[derive(Default)]
struct RunCounts {
    /// run id → (accounts newly scored, of them failed). A batch holds one run or two.
    runs: Vec<(String, i64, i64)>,
}

impl RunCounts {
    fn add(&mut self, run_id: &str, failed: bool) {
        let failed = i64::from(failed);
        match self.runs.iter_mut().find(|(id, _, _)| id == run_id) {
            Some((_, scored, f)) => {
                *scored += 1;
                *f += failed;
            }
            None => self.runs.push((run_id.to_owned(), 1, failed)),
        }
    }

    /// Adds the counts to the runs rows (a run without a row yet counts its scores when its
    /// trigger is read: see the `DailyTrigger` arm of [`apply`]).
    fn flush(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.runs.is_empty() {
            return Ok(());
        }
        let mut stmt = tx.prepare_cached(COUNT_RUN_SCORED)?;
        for (run_id, scored, failed) in self.runs.drain(..) {
            stmt.execute(params![run_id, scored, failed])?;
        }
        Ok(())
    }
}

/// Applies decoded messages of one partition of `topic` and moves its offset, in one transaction.
/// What a tombstone (a record without a value) of a topic means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstones {
    /// `esg.accounts`: the account left the roster; its last score stays for history but no
    /// longer appears in any file.
    LeftRoster,
    /// `esg.scores`: the account was erased (`esg erase`): everything of it goes ([`ERASE`]).
    Erased,
}

impl Tombstones {
    /// The meaning of tombstones on `topic`.
    pub fn of(bus: &EventBus, topic: &str) -> Tombstones {
        if topic == bus.topics.scores {
            Tombstones::Erased
        } else {
            Tombstones::LeftRoster
        }
    }
}

pub fn apply(
    tx: &Transaction<'_>,
    topic: &str,
    partition: i32,
    batch: &[(Message, Option<Event>)],
    tombstones: Tombstones,
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    let mut last = None;
    // Counts of scores are applied before any other event touches the runs table, so every
    // statement sees the runs rows exactly as a per-score update would have left them.
    let mut counts = RunCounts::default();
    for (m, event) in batch {
        last = Some(m.offset);
        if !matches!(event, Some(Event::EsgScore(_))) {
            counts.flush(tx)?;
        }
        match event {
            None if m.value.is_none() => {
                // The deleted rows (a name among them) are overwritten, not merely unlinked.
                tx.pragma_update(None, "secure_delete", true)?;
                match tombstones {
                    Tombstones::LeftRoster => {
                        tx.prepare_cached(DELETE_ROSTER)?.execute([&m.key])?;
                    }
                    Tombstones::Erased => {
                        for sql in ERASE {
                            tx.prepare_cached(sql)?
                                .execute(rusqlite::named_params! {":id": m.key})?;
                        }
                    }
                }
                tx.pragma_update(None, "secure_delete", false)?;
                applied.erased += 1;
            }
            None => applied.undecodable += 1,
            Some(Event::AccountEntry(a)) => {
                tx.prepare_cached(UPSERT_ROSTER)?.execute(params![
                    a.account_id,
                    a.account_name,
                    a.version
                ])?;
            }
            Some(Event::AccountChanged(a)) => {
                tx.prepare_cached(INSERT_EXPECTED)?
                    .execute(params![a.run_id, a.account_id])?;
            }
            Some(Event::EsgScore(s)) => {
                tx.prepare_cached(UPSERT_SCORE)?.execute(params![
                    s.account_id,
                    s.run_id,
                    s.account_version,
                    s.status.as_str(),
                    text(s.values.overall),
                    text(s.values.environmental),
                    text(s.values.social),
                    text(s.values.governance),
                    s.values.primary_focus.map(|p| p.as_str()),
                    text(s.values.primary_focus_score),
                    s.values.analysis_date.map(|d| d.to_string()),
                    s.attempts,
                    s.error_code,
                    s.error_message,
                    s.scored_at.timestamp_millis(),
                ])?;
                // Counted once per account and run (a score published twice after a crash
                // adds its attempts, requests and 429s, not an account), so progress and
                // completion are O(1).
                let new = tx.prepare_cached(INSERT_RUN_SCORED)?.execute(params![
                    s.run_id,
                    s.account_id,
                    s.attempts,
                    s.requests,
                    s.rate_limited_requests
                ])?;
                if new == 1 {
                    counts.add(&s.run_id, s.status == ScoreStatus::Failed);
                } else {
                    tx.prepare_cached(ADD_RUN_SCORED)?.execute(params![
                        s.run_id,
                        s.account_id,
                        s.attempts,
                        s.requests,
                        s.rate_limited_requests
                    ])?;
                }
            }
            Some(Event::DailyTrigger(t)) => {
                // Scores of the run read before its trigger are counted here.
                tx.execute(
                    "INSERT INTO runs (run_id, business_date, kind, full, deadline_ms, triggered_at_ms, scored, failed)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                        (SELECT COUNT(*) FROM run_scored WHERE run_id = ?1),
                        (SELECT COUNT(*) FROM run_scored rs JOIN scores s ON s.account_id = rs.account_id
                          WHERE rs.run_id = ?1 AND s.run_id = ?1 AND s.status = 'Failed'))
                     ON CONFLICT (run_id) DO NOTHING",
                    params![
                        t.run_id,
                        t.business_date.to_string(),
                        t.kind.as_str(),
                        t.full,
                        t.deadline.timestamp_millis(),
                        t.triggered_at.timestamp_millis()
                    ],
                )?;
            }
            Some(Event::RunSealed(s)) => {
                let json = serde_json::to_string(s).unwrap_or_default();
                let n = tx.execute(
                    "UPDATE runs SET sealed_json = ?2 WHERE run_id = ?1 AND sealed_json IS NULL",
                    params![s.run_id, json],
                )?;
                if n > 0 {
                    applied.sealed.push(s.run_id.clone());
                }
            }
            Some(Event::RunCompleted(c)) => mark_completed(tx, &c.run_id, c.outcome.as_str())?,
        }
    }
    counts.flush(tx)?;
    if let Some(last) = last {
        tx.prepare_cached(
            "INSERT INTO offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
        )?
        .execute(params![topic, partition, last + 1])?;
    }
    Ok(applied)
}

/// Keeps what a run did, for the summaries of later re-runs of its date: a daily run's
/// [`RunFacts`], a re-run's [`crate::summary::RerunEntry`]. Recording a run again replaces its record and makes
/// it the latest of its date.
pub fn record_run_facts(
    c: &rusqlite::Connection,
    run_id: &str,
    business_date: NaiveDate,
    kind: &str,
    facts_json: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT OR REPLACE INTO run_facts (run_id, business_date, kind, facts_json)
         VALUES (?1, ?2, ?3, ?4)",
        params![run_id, business_date.to_string(), kind, facts_json],
    )?;
    Ok(())
}

/// The recorded runs of `business_date`, without `except` (the run being assembled). A record
/// that does not parse is logged and left out.
pub fn day_runs(
    c: &rusqlite::Connection,
    business_date: NaiveDate,
    except: &str,
) -> rusqlite::Result<StoredDay> {
    let date = business_date.to_string();
    let daily: Option<(i64, String)> = c
        .query_row(
            "SELECT seq, facts_json FROM run_facts
             WHERE business_date = ?1 AND kind = 'Daily' AND run_id != ?2
             ORDER BY seq DESC LIMIT 1",
            params![date, except],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let after = daily.as_ref().map_or(0, |(seq, _)| *seq);
    let daily = daily.and_then(|(_, json)| parse_facts(&json, &date));
    let mut stmt = c.prepare(
        "SELECT facts_json FROM run_facts
         WHERE business_date = ?1 AND kind != 'Daily' AND run_id != ?2 AND seq > ?3
         ORDER BY seq",
    )?;
    let rows = stmt.query_map(params![date, except, after], |r| r.get::<_, String>(0))?;
    let mut reruns = Vec::new();
    for json in rows {
        if let Some(entry) = parse_facts(&json?, &date) {
            reruns.push(entry);
        }
    }
    let daily_basics = c
        .query_row(
            "SELECT run_id, triggered_at_ms, sealed_json, COALESCE(outcome, '') FROM runs
             WHERE business_date = ?1 AND kind = 'Daily' AND completed = 1 AND run_id != ?2
             ORDER BY triggered_at_ms DESC LIMIT 1",
            params![date, except],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )
        .optional()?
        .map(|(run_id, triggered_ms, sealed, outcome)| {
            let sealed: RunSealed = sealed
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            let started_at = DateTime::from_timestamp_millis(triggered_ms).unwrap_or_default();
            RunFacts::from_seal(run_id, outcome, &sealed, started_at, started_at)
        });
    Ok(StoredDay {
        daily,
        reruns,
        daily_basics,
    })
}

fn parse_facts<T: serde::de::DeserializeOwned>(json: &str, date: &str) -> Option<T> {
    match serde_json::from_str(json) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(business_date = date, error = %e, "state store: a run's recorded facts do not parse; left out of the summary");
            None
        }
    }
}

/// Notes which accounts the latest day's files show `Failed` because a run of the day reached
/// its deadline without their score: the one thing in those files that the roster and the
/// latest scores do not tell, so that a re-run can rebuild the files whole (encrypted files are
/// not read back). A daily run starts the list of its date afresh (and drops every other date's);
/// a re-run takes its own accounts off it, then adds those it did not score either. Called after
/// the run's files are written, before [`mark_completed`] drops its expected accounts.
/// `known`: the daily run's file pass saw these accounts, exactly, written `Failed` by the
/// deadline (expected, not scored, in the roster), so the run's accounts need no second pass;
/// `None` finds them by query.
pub fn record_file_deadlines(
    c: &rusqlite::Connection,
    run_id: &str,
    business_date: NaiveDate,
    daily: bool,
    known: Option<&[String]>,
) -> rusqlite::Result<()> {
    let date = business_date.to_string();
    if let (true, Some(ids)) = (daily, known) {
        let tx = c.unchecked_transaction()?;
        tx.execute("DELETE FROM file_deadlines", [])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO file_deadlines (business_date, account_id) VALUES (?1, ?2)",
            )?;
            for id in ids {
                insert.execute(params![date, id])?;
            }
        }
        return tx.commit();
    }
    if daily {
        c.execute("DELETE FROM file_deadlines", [])?;
    } else {
        c.execute(
            "DELETE FROM file_deadlines WHERE business_date = ?2
               AND account_id IN (SELECT account_id FROM expected WHERE run_id = ?1)",
            params![run_id, date],
        )?;
    }
    c.execute(
        "INSERT OR IGNORE INTO file_deadlines (business_date, account_id)
         SELECT ?2, e.account_id FROM expected e
         WHERE e.run_id = ?1 AND NOT EXISTS
           (SELECT 1 FROM run_scored rs WHERE rs.run_id = ?1 AND rs.account_id = e.account_id)",
        params![run_id, date],
    )?;
    Ok(())
}

/// Records a run as completed and drops its per-account bookkeeping, which only served to
/// decide completion: the store does not grow with every run.
pub fn mark_completed(
    c: &rusqlite::Connection,
    run_id: &str,
    outcome: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE runs SET completed = 1, outcome = ?2 WHERE run_id = ?1",
        params![run_id, outcome],
    )?;
    esg_bus::store::delete_run_rows(c, "expected", run_id)?;
    esg_bus::store::delete_run_rows(c, "run_scored", run_id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::RerunEntry;
    use chrono::{TimeZone, Utc};
    use esg_schemas::{AccountEntry, DailyTrigger, EsgScore, RunKind};

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, h, 0, 0)
            .single()
            .expect("time")
    }

    fn date() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).expect("date")
    }

    fn message(offset: i64, key: &str) -> Message {
        Message {
            topic: "t".into(),
            partition: 0,
            offset,
            key: key.into(),
            value: Some(Vec::new()),
            timestamp_ms: 0,
        }
    }

    fn columns(c: &rusqlite::Connection, table: &str) -> Vec<String> {
        let mut stmt = c
            .prepare(&format!("PRAGMA table_info({table})"))
            .expect("pragma");
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .expect("query");
        names.map(|n| n.expect("name")).collect()
    }

    #[test]
    fn a_store_of_the_previous_version_gets_the_new_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("assembler.db");
        {
            let c = rusqlite::Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE run_scored (run_id TEXT NOT NULL, account_id TEXT NOT NULL,
                    attempts INTEGER NOT NULL, PRIMARY KEY (run_id, account_id)) WITHOUT ROWID;
                 INSERT INTO run_scored VALUES ('2026-11-23', 'A', 2);",
            )
            .expect("old schema");
        }
        for _ in 0..2 {
            // Opening twice: the migration is idempotent.
            let store = open(&path).expect("opens and migrates");
            let (cols, row) = store
                .call_blocking(|c| {
                    let row: (i64, i64, i64) = c.query_row(
                        "SELECT attempts, requests, rate_limited FROM run_scored
                         WHERE account_id = 'A'",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                    Ok((columns(c, "run_scored"), row))
                })
                .expect("read");
            assert!(cols.contains(&"requests".to_string()), "{cols:?}");
            assert!(cols.contains(&"rate_limited".to_string()), "{cols:?}");
            assert_eq!(
                row,
                (2, 0, 0),
                "the old row kept, its requests and 429s unknown (0)"
            );
        }
    }

    #[test]
    fn a_daily_runs_deadline_accounts_are_the_same_from_its_file_pass_and_from_the_query() {
        let day = date();
        let recorded = |known: Option<Vec<String>>| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open(&dir.path().join("assembler.db")).expect("open");
            store
                .call_blocking(move |c| {
                    c.execute_batch(
                        "INSERT INTO expected VALUES ('r', 'A'), ('r', 'B'), ('r', 'C');
                         INSERT INTO run_scored (run_id, account_id, attempts) VALUES ('r', 'B', 1);
                         INSERT INTO file_deadlines VALUES ('2026-11-20', 'Z');",
                    )?;
                    record_file_deadlines(c, "r", day, true, known.as_deref())?;
                    let mut stmt = c.prepare(
                        "SELECT business_date || ' ' || account_id FROM file_deadlines ORDER BY 1",
                    )?;
                    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                })
                .expect("recorded")
        };
        let by_query = recorded(None);
        assert_eq!(
            by_query,
            ["2026-11-23 A", "2026-11-23 C"],
            "an earlier date's list is dropped"
        );
        assert_eq!(recorded(Some(vec!["A".into(), "C".into()])), by_query);
    }

    #[test]
    fn a_runs_scores_add_up_attempts_and_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("assembler.db")).expect("open");
        let score = |id: &str, attempts: i32, requests: i32| EsgScore {
            requests,
            rate_limited_requests: requests / 2,
            ..EsgScore::failed(
                "2026-11-23",
                id,
                1,
                attempts,
                "HTTP_503",
                "down".into(),
                at(11),
            )
        };
        let batch = vec![
            (message(0, "A"), Some(Event::EsgScore(score("A", 3, 5)))),
            (message(1, "B"), Some(Event::EsgScore(score("B", 1, 1)))),
            // A scored again after a crash: its attempts and requests were spent as well.
            (message(2, "A"), Some(Event::EsgScore(score("A", 1, 2)))),
        ];
        let sums = store
            .call_blocking(move |c| {
                let tx = c.transaction()?;
                apply(&tx, "esg.scores", 0, &batch, Tombstones::Erased)?;
                tx.commit()?;
                c.query_row(
                    "SELECT COUNT(*), SUM(attempts), SUM(requests), SUM(rate_limited)
                     FROM run_scored",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    },
                )
            })
            .expect("apply");
        // 429s: 5 / 2 + 1 / 2 + 2 / 2.
        assert_eq!(sums, (2, 5, 8, 3));
    }

    #[test]
    fn a_tombstone_on_the_scores_erases_the_account_one_on_the_roster_keeps_its_score() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("assembler.db")).expect("open");
        let score =
            |id: &str| EsgScore::failed("2026-11-23", id, 1, 1, "HTTP_503", "down".into(), at(11));
        let entry = |id: &str| AccountEntry {
            account_id: id.into(),
            account_name: format!("Name of {id}"),
            version: 1,
            updated_at: at(10),
            run_id: "2026-11-23".into(),
        };
        let tombstone = |offset, key: &str| Message {
            value: None,
            ..message(offset, key)
        };
        let counts = store
            .call_blocking(move |c| {
                let tx = c.transaction()?;
                let roster = vec![
                    (message(0, "A"), Some(Event::AccountEntry(entry("A")))),
                    (message(1, "B"), Some(Event::AccountEntry(entry("B")))),
                ];
                apply(&tx, "esg.accounts", 0, &roster, Tombstones::LeftRoster)?;
                let scores = vec![
                    (message(0, "A"), Some(Event::EsgScore(score("A")))),
                    (message(1, "B"), Some(Event::EsgScore(score("B")))),
                ];
                apply(&tx, "esg.scores", 0, &scores, Tombstones::Erased)?;
                apply(
                    &tx,
                    "esg.accounts",
                    0,
                    &[(tombstone(2, "A"), None)],
                    Tombstones::LeftRoster,
                )?;
                apply(
                    &tx,
                    "esg.scores",
                    0,
                    &[(tombstone(2, "B"), None)],
                    Tombstones::Erased,
                )?;
                tx.commit()?;
                let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0));
                Ok((
                    count("SELECT COUNT(*) FROM roster WHERE account_id = 'A'")?,
                    count("SELECT COUNT(*) FROM scores WHERE account_id = 'A'")?,
                    count("SELECT COUNT(*) FROM roster WHERE account_id = 'B'")?,
                    count("SELECT COUNT(*) FROM scores WHERE account_id = 'B'")?,
                    count("SELECT COUNT(*) FROM run_scored WHERE account_id = 'B'")?,
                ))
            })
            .expect("apply");
        assert_eq!(counts, (0, 1, 0, 0, 0), "A left (score kept), B erased");
    }

    fn daily(run_id: &str) -> RunFacts {
        RunFacts {
            run_id: run_id.into(),
            outcome: "Completed".into(),
            scored_in_run: 10,
            carried_forward: 0,
            deadline_failed: 0,
            never_scored: 0,
            new_accounts: 10,
            gone_accounts: 0,
            malformed_records: 0,
            api_attempts: 10,
            api_requests: 11,
            api_rate_limited: 0,
            started_at: at(11),
            finished_at: at(12),
            deadline: None,
        }
    }

    fn rerun(run_id: &str) -> RerunEntry {
        RerunEntry {
            run_id: run_id.into(),
            kind: "Rerun".into(),
            outcome: "Completed".into(),
            accounts: 2,
            scored: 2,
            failed: 0,
            not_in_file: 0,
            api_attempts: 2,
            api_requests: 2,
            api_rate_limited: 0,
            started_at: at(14),
            finished_at: at(15),
        }
    }

    #[test]
    fn a_dates_runs_come_back_daily_first_then_its_reruns_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("assembler.db")).expect("open");
        fn json<T: serde::Serialize>(v: &T) -> String {
            serde_json::to_string(v).expect("serialise")
        }
        let other = NaiveDate::from_ymd_opt(2026, 11, 24).expect("date");
        let day = store
            .call_blocking(move |c| {
                record_run_facts(c, "old", date(), "Daily", &json(&daily("old")))?;
                record_run_facts(c, "old.1", date(), "Rerun", &json(&rerun("old.1")))?;
                record_run_facts(
                    c,
                    "2026-11-23",
                    date(),
                    "Daily",
                    &json(&daily("2026-11-23")),
                )?;
                record_run_facts(
                    c,
                    "2026-11-23.1",
                    date(),
                    "Rerun",
                    &json(&rerun("2026-11-23.1")),
                )?;
                record_run_facts(
                    c,
                    "2026-11-23.2",
                    date(),
                    "Replay",
                    &json(&rerun("2026-11-23.2")),
                )?;
                record_run_facts(c, "2026-11-23.3", date(), "Rerun", "{not json")?;
                record_run_facts(c, "2026-11-24", other, "Daily", &json(&daily("2026-11-24")))?;
                // Recorded again (a re-assembly after a crash): still one entry.
                record_run_facts(
                    c,
                    "2026-11-23.1",
                    date(),
                    "Rerun",
                    &json(&rerun("2026-11-23.1")),
                )?;
                day_runs(c, date(), "2026-11-23.2")
            })
            .expect("query");
        assert_eq!(day.daily.map(|d| d.run_id).as_deref(), Some("2026-11-23"));
        let ids: Vec<_> = day.reruns.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(
            ids,
            ["2026-11-23.1"],
            "not the old daily's re-run, not the one excluded, not the unreadable one"
        );
        assert_eq!(day.daily_basics, None, "no completed run in the runs table");
    }

    #[test]
    fn the_runs_table_gives_the_daily_runs_basics_when_its_facts_are_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("assembler.db")).expect("open");
        let trigger = DailyTrigger {
            run_id: "2026-11-23".into(),
            business_date: date(),
            kind: RunKind::Daily,
            full: false,
            deadline: at(15),
            triggered_at: at(11),
        };
        let sealed = RunSealed {
            run_id: "2026-11-23".into(),
            business_date: date(),
            new_accounts: 4,
            gone_accounts: 1,
            malformed_records: 2,
            sealed_at: at(11),
            ..Default::default()
        };
        let batch = vec![
            (message(0, "2026-11-23"), Some(Event::DailyTrigger(trigger))),
            (message(1, "2026-11-23"), Some(Event::RunSealed(sealed))),
        ];
        let day = store
            .call_blocking(move |c| {
                let tx = c.transaction()?;
                apply(&tx, "esg.triggers", 0, &batch, Tombstones::LeftRoster)?;
                mark_completed(&tx, "2026-11-23", "Completed")?;
                tx.commit()?;
                day_runs(c, date(), "2026-11-23.1")
            })
            .expect("query");
        assert_eq!(day.daily, None);
        let basics = day.daily_basics.expect("basics");
        assert_eq!(
            (
                basics.run_id.as_str(),
                basics.outcome.as_str(),
                basics.started_at,
                basics.new_accounts,
                basics.gone_accounts,
                basics.malformed_records,
                basics.scored_in_run
            ),
            ("2026-11-23", "Completed", at(11), 4, 1, 2, 0)
        );
    }
}
