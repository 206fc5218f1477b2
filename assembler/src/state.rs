//! The assembler's state store (`assembler.db`): the latest score per account, the roster, each
//! run's expected and scored accounts, and the runs themselves, materialised from the bus.
//!
//! Exactly-once materialisation: each batch read from a topic is applied in one SQLite
//! transaction together with the next offset to read, so after a crash the store is exactly as
//! of some offset and reading resumes there. Deleting the file rebuilds the state from the
//! topics (`esg.accounts` and `esg.scores` are compacted: the latest value per key is kept).

use esg_bus::{EventBus, Message, Store, StoreError};
use esg_schemas::{Event, ScoreStatus};
use rusqlite::{params, Transaction};
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
    PRIMARY KEY (run_id, account_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS expected (
    run_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (run_id, account_id)
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
";

/// Opens the assembler store.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    Store::open(path, SCHEMA)
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
}

/// Applies decoded messages of one partition of `topic` and moves its offset, in one transaction.
pub fn apply(
    tx: &Transaction<'_>,
    topic: &str,
    partition: i32,
    batch: &[(Message, Option<Event>)],
) -> rusqlite::Result<Applied> {
    let mut applied = Applied::default();
    let mut last = None;
    for (m, event) in batch {
        last = Some(m.offset);
        match event {
            None if m.value.is_none() => {
                // Tombstone: the account left the roster (its last score stays for history
                // but no longer appears in any file).
                tx.execute("DELETE FROM roster WHERE account_id = ?1", [&m.key])?;
            }
            None => applied.undecodable += 1,
            Some(Event::AccountEntry(a)) => {
                tx.execute(
                    "INSERT INTO roster (account_id, name, version) VALUES (?1, ?2, ?3)
                     ON CONFLICT (account_id) DO UPDATE SET name = excluded.name, version = excluded.version",
                    params![a.account_id, a.account_name, a.version],
                )?;
            }
            Some(Event::AccountChanged(a)) => {
                tx.execute(
                    "INSERT OR IGNORE INTO expected (run_id, account_id)
                     SELECT ?1, ?2 WHERE NOT EXISTS
                       (SELECT 1 FROM runs WHERE run_id = ?1 AND completed = 1)",
                    params![a.run_id, a.account_id],
                )?;
            }
            Some(Event::EsgScore(s)) => {
                tx.execute(
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
                        scored_at_ms = excluded.scored_at_ms",
                    params![
                        s.account_id,
                        s.run_id,
                        s.account_version,
                        s.status.as_str(),
                        text(s.overall),
                        text(s.environmental),
                        text(s.social),
                        text(s.governance),
                        s.primary_focus.map(|p| p.as_str()),
                        text(s.primary_focus_score),
                        s.analysis_date.map(|d| d.to_string()),
                        s.attempts,
                        s.error_code,
                        s.error_message,
                        s.scored_at.timestamp_millis(),
                    ],
                )?;
                // Counted once per account and run (a score published twice after a crash
                // adds its attempts, not an account), so progress and completion are O(1).
                let new = tx.execute(
                    "INSERT OR IGNORE INTO run_scored (run_id, account_id, attempts)
                     SELECT ?1, ?2, ?3 WHERE NOT EXISTS
                       (SELECT 1 FROM runs WHERE run_id = ?1 AND completed = 1)",
                    params![s.run_id, s.account_id, s.attempts],
                )?;
                if new == 1 {
                    tx.execute(
                        "UPDATE runs SET scored = scored + 1, failed = failed + ?2 WHERE run_id = ?1",
                        params![s.run_id, i64::from(s.status == ScoreStatus::Failed)],
                    )?;
                } else {
                    tx.execute(
                        "UPDATE run_scored SET attempts = attempts + ?3 WHERE run_id = ?1 AND account_id = ?2",
                        params![s.run_id, s.account_id, s.attempts],
                    )?;
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
    if let Some(last) = last {
        tx.execute(
            "INSERT INTO offsets (topic, partition, next_offset) VALUES (?1, ?2, ?3)
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            params![topic, partition, last + 1],
        )?;
    }
    Ok(applied)
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
    c.execute("DELETE FROM expected WHERE run_id = ?1", [run_id])?;
    c.execute("DELETE FROM run_scored WHERE run_id = ?1", [run_id])?;
    Ok(())
}
