//! The producer: starts runs and decides which accounts are scored.
//!
//! For a daily run it publishes `DailyTrigger`, lists the active accounts from the account
//! system into its store (de-duplicated by highest version), decides per account whether it must
//! be scored (DESIGN section 5: new, changed, last score Failed/Partial, stale, forced, `--full`),
//! publishes one `AccountChanged` per account to score, then the roster changes to
//! `esg.accounts` (entries for new or changed accounts, tombstones for accounts that left), and
//! finally `RunSealed` with the number of accounts the run expects. A re-run of chosen accounts
//! skips the listing and forces those accounts.
//!
//! The events go first so that scoring starts as soon as the run is planned. The order is free:
//! nothing reads the run's roster changes before its seal (the scorers read only events; the
//! assembler completes a run once it has read both topics up to where they ended when the seal
//! was read, see `esg_assembler`).
//!
//! Resume: each phase is recorded in the store when done, so a producer killed at any point
//! picks up at the phase it was in. Publishing `AccountChanged` events is the one step whose
//! effect (on the bus) and record (in the store) cannot share a transaction; before each batch
//! the producer has noted where the topic ended (at most), and on resume it reads the topic from
//! there to find the events that were published but not yet marked, so no account is asked for
//! twice.

pub mod accounts;
pub mod store;

use accounts::{AccountsClient, Page};
use chrono::{DateTime, NaiveDate, Utc};
use esg_bus::{EventBus, RangeReader, Store, StoreError};
use esg_schemas::{
    AccountChanged, AccountEntry, ChangeReason, DailyTrigger, EsgScore, Event, PriorAnalysis,
    RunKind, RunSealed, ScoreStatus,
};
use rusqlite::params;
use std::collections::HashMap;
use std::time::Duration;
use store::Phase;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// `[producer]` configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProducerConfig {
    /// A successful score older than this is refreshed (DESIGN section 5).
    #[serde(with = "humantime_serde")]
    pub refresh_after: Duration,
    /// Events published per bus transaction.
    pub emit_batch: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            refresh_after: Duration::from_secs(7 * 24 * 3600),
            emit_batch: 1000,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRequest {
    /// `2026-11-23` for the daily run, `2026-11-23.N` for re-runs.
    pub run_id: String,
    pub business_date: NaiveDate,
    pub kind: RunKind,
    /// Score every active account (`--full`).
    pub full: bool,
    pub deadline: DateTime<Utc>,
    /// For a re-run: the accounts to score.
    pub forced: Vec<String>,
    /// The roster guard of a daily run: the listing must hold at least this share of the
    /// accounts of the roster last published (and never zero accounts), or the run fails before
    /// anything is published. `None`: a person has accepted the change
    /// (`--accept-roster-change`).
    pub min_active_ratio: Option<f64>,
}

/// Errors of the producer. `Listing` and `Bus` may be transient (try the run again);
/// `UnknownAccounts` and `Config` are the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("bus: {0}")]
    Bus(#[from] esg_bus::BusError),
    #[error("listing active accounts: {0}")]
    Listing(String),
    /// The run's deadline came before the listing finished: the run ends `TimedOut` with no
    /// file (the assembler decides that at the deadline).
    #[error("listing active accounts did not finish by the run's deadline: {0}")]
    ListingDeadline(String),
    #[error("run {run_id}: these accounts are not in the roster of active accounts: {accounts}")]
    UnknownAccounts { run_id: String, accounts: String },
    #[error("{}", roster_collapsed(*listed, *previous, *min_ratio))]
    RosterCollapsed {
        listed: u64,
        previous: u64,
        min_ratio: f64,
    },
    #[error("run {0} was started with different settings ({1}); use a new run id")]
    Conflict(String, String),
    #[error("stopped before the run was sealed")]
    Cancelled,
    #[error("decoding {topic}/{partition}@{offset}: {detail}")]
    Decode {
        topic: String,
        partition: i32,
        offset: i64,
        detail: String,
    },
}

fn roster_collapsed(listed: u64, previous: u64, min_ratio: f64) -> String {
    let why = if listed == 0 {
        "no active accounts at all".to_owned()
    } else {
        format!("below {:.0}% of them", min_ratio * 100.0)
    };
    format!(
        "roster guard: the account system listed {listed} active accounts against {previous} in the roster of the last run ({why}); nothing was published and the previous files are untouched. Check the account system; if the change is real, run again with --accept-roster-change"
    )
}

/// The producer stage.
pub struct Producer {
    bus: EventBus,
    store: Store,
    accounts: Option<AccountsClient>,
    config: ProducerConfig,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The roster's upsert, shared by the sync from `esg.accounts` and the publishing of changes.
/// Per-record statements are prepared once per connection (`prepare_cached`).
const UPSERT_ROSTER: &str =
    "INSERT INTO roster (account_id, name, version, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (account_id) DO UPDATE SET name = excluded.name,
       version = excluded.version, updated_at_ms = excluded.updated_at_ms";
/// An account leaving the roster.
const DELETE_ROSTER: &str = "DELETE FROM roster WHERE account_id = ?1";

/// A roster change to publish: account id, gone, and (name, version, updated_at_ms) if not gone.
type RosterChange = (String, bool, Option<(String, i64, i64)>);

/// What the seal needs from the listing (the client logs the rest when the listing ends).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct ListingFacts {
    malformed: u64,
}

impl Producer {
    /// A producer on `bus` with its state in `store`. `accounts` may be `None` for a producer
    /// that only does re-runs (which need no listing).
    pub fn new(
        bus: EventBus,
        store: Store,
        accounts: Option<AccountsClient>,
        config: ProducerConfig,
    ) -> Self {
        Producer {
            bus,
            store,
            accounts,
            config,
        }
    }

    /// Runs the producer's part of `req` to the seal, resuming where a previous attempt of
    /// the same run stopped. Returns the seal (the recorded one if the run was sealed before).
    pub async fn run(
        &self,
        req: &RunRequest,
        shutdown: &CancellationToken,
    ) -> Result<RunSealed, ProducerError> {
        let span = tracing::info_span!("producer", run_id = %req.run_id);
        self.run_phases(req, shutdown).instrument(span).await
    }

    async fn run_phases(
        &self,
        req: &RunRequest,
        shutdown: &CancellationToken,
    ) -> Result<RunSealed, ProducerError> {
        let run_id = req.run_id.clone();
        let mut row = self.start(req).await?;
        loop {
            if shutdown.is_cancelled() && row.phase != Phase::Sealed {
                return Err(ProducerError::Cancelled);
            }
            match row.phase {
                Phase::Triggered => {
                    if req.kind != RunKind::Daily {
                        self.sync_roster().await?;
                        // The last scores give the events their stored ETags.
                        self.catch_up_scores().await?;
                        self.plan_rerun(req).await?;
                    } else {
                        self.list(req).await?;
                    }
                }
                Phase::Listed => {
                    self.sync_roster().await?;
                    self.guard_roster(req).await?;
                    self.catch_up_scores().await?;
                    self.plan(req).await?;
                }
                Phase::Planned => {
                    self.emit(req, shutdown).await?;
                    self.set_phase(req, Phase::EventsEmitted).await?;
                }
                Phase::EventsEmitted => {
                    self.publish_roster(req).await?;
                    self.set_phase(req, Phase::Emitted).await?;
                }
                // A re-run (which has no roster changes), or a daily run planned by an earlier
                // version, which published its roster changes before its events.
                Phase::RosterPublished => {
                    self.emit(req, shutdown).await?;
                    self.set_phase(req, Phase::Emitted).await?;
                }
                Phase::Emitted => self.seal(req).await?,
                Phase::Sealed => {
                    let json = row.sealed_json.clone().unwrap_or_default();
                    return serde_json::from_str(&json).map_err(|e| {
                        ProducerError::Listing(format!("recorded seal of {run_id} unreadable: {e}"))
                    });
                }
            }
            let id = run_id.clone();
            row = self
                .store
                .call(move |c| store::get_run(c, &id))
                .await?
                .ok_or_else(|| ProducerError::Listing(format!("run {run_id} vanished")))?;
        }
    }

    /// Records that the run reached `phase`.
    async fn set_phase(&self, req: &RunRequest, phase: Phase) -> Result<(), ProducerError> {
        let run_id = req.run_id.clone();
        self.store
            .call(move |c| store::set_phase(c, &run_id, phase))
            .await?;
        Ok(())
    }

    /// Records the run and publishes its trigger (once).
    async fn start(&self, req: &RunRequest) -> Result<store::RunRow, ProducerError> {
        let id = req.run_id.clone();
        let existing = self.store.call(move |c| store::get_run(c, &id)).await?;
        if let Some(row) = existing {
            if row.full != req.full || row.kind != req.kind.as_str() {
                return Err(ProducerError::Conflict(
                    req.run_id.clone(),
                    format!("kind {} full {}", row.kind, row.full),
                ));
            }
            tracing::info!(phase = row.phase.as_str(), "resuming run");
            return Ok(row);
        }
        let now = Utc::now();
        let trigger = DailyTrigger {
            run_id: req.run_id.clone(),
            business_date: req.business_date,
            kind: req.kind,
            full: req.full,
            deadline: req.deadline,
            triggered_at: now,
        };
        // Publish first, then record: a crash in between publishes the trigger again on
        // resume, which every reader treats as the same run.
        self.bus
            .publish(
                &self.bus.topics.triggers,
                &[(req.run_id.clone(), Event::DailyTrigger(trigger))],
            )
            .await?;
        let r = req.clone();
        self.store
            .call(move |c| {
                c.execute(
                    "INSERT INTO runs (run_id, business_date, kind, full, deadline_ms, triggered_at_ms, phase)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        r.run_id,
                        r.business_date.to_string(),
                        r.kind.as_str(),
                        r.full,
                        ms(r.deadline),
                        ms(now),
                        Phase::Triggered.as_str()
                    ],
                )
            })
            .await?;
        tracing::info!(business_date = %req.business_date, kind = %req.kind, full = req.full, "run triggered");
        let id = req.run_id.clone();
        self.store
            .call(move |c| store::get_run(c, &id))
            .await?
            .ok_or_else(|| ProducerError::Listing("run not recorded".into()))
    }

    /// Lists active accounts into the run's listing, keeping the highest version of each, and
    /// only the pass of the listing that completed: a 410 restart drops what earlier passes
    /// stored (see [`insert_page`]). The listing is bounded by the run's deadline.
    async fn list(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let client = self.accounts.as_ref().ok_or_else(|| {
            ProducerError::Listing("no account system configured for a daily run".into())
        })?;
        let run_id = req.run_id.clone();
        let id = run_id.clone();
        self.store
            .call(move |c| c.execute("DELETE FROM listing WHERE run_id = ?1", [id]))
            .await?;
        let left = (req.deadline - Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        let deadline = tokio::time::Instant::now() + left;
        // Pages are written to the store on a thread of their own while the next page is
        // fetched; the channel holds at most two pages, so memory stays a few pages.
        let (pages, received) = std::sync::mpsc::sync_channel::<Page>(2);
        let store = self.store.clone();
        let writer = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            for page in received {
                insert_page(&store, &run_id, &page)?;
            }
            Ok(())
        });
        let listed = client
            .list_active(Some(deadline), |page: Page| {
                pages.send(page).map_err(|_| "the store writer stopped")
            })
            .await;
        drop(pages);
        let written = writer.await.map_err(|e| {
            ProducerError::Listing(format!("the listing's store writer stopped: {e}"))
        })?;
        // A store error is the cause of a sink error (the writer stopped), so it comes first.
        written?;
        let stats = listed.map_err(|e| match e {
            accounts::ListingError::DeadlinePassed { .. } => {
                ProducerError::ListingDeadline(e.to_string())
            }
            e => ProducerError::Listing(e.to_string()),
        })?;
        let facts = ListingFacts {
            malformed: stats.malformed,
        };
        let json = serde_json::to_string(&facts).unwrap_or_default();
        let id = req.run_id.clone();
        self.store
            .call(move |c| {
                c.execute(
                    "UPDATE runs SET listing_json = ?2 WHERE run_id = ?1",
                    params![id, json],
                )?;
                store::set_phase(c, &id, Phase::Listed)
            })
            .await?;
        Ok(())
    }

    /// Fails a daily run whose listing collapsed: zero accounts, or fewer than
    /// `req.min_active_ratio` of the roster last published. Runs before anything of the run
    /// but its trigger is published.
    async fn guard_roster(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let Some(min_ratio) = req.min_active_ratio else {
            return Ok(());
        };
        let run_id = req.run_id.clone();
        let (listed, previous): (i64, i64) = self
            .store
            .call(move |c| {
                let listed = c.query_row(
                    "SELECT COUNT(*) FROM listing WHERE run_id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )?;
                let previous = c.query_row("SELECT COUNT(*) FROM roster", [], |r| r.get(0))?;
                Ok((listed, previous))
            })
            .await?;
        let (listed, previous) = (listed.max(0) as u64, previous.max(0) as u64);
        if listed == 0 || (listed as f64) < min_ratio * previous as f64 {
            tracing::error!(
                listed,
                previous,
                min_active_ratio = min_ratio,
                "roster guard: the listing collapsed; nothing published"
            );
            // The collapsed listing is not kept: the next run of the date lists again, so that
            // an account system that has recovered is listed anew, and a person who accepts
            // the change (--accept-roster-change) accepts what the account system holds then.
            let run_id = req.run_id.clone();
            self.store
                .call(move |c| {
                    let tx = c.transaction()?;
                    tx.execute("DELETE FROM listing WHERE run_id = ?1", [&run_id])?;
                    store::set_phase(&tx, &run_id, Phase::Triggered)?;
                    tx.commit()
                })
                .await?;
            return Err(ProducerError::RosterCollapsed {
                listed,
                previous,
                min_ratio,
            });
        }
        Ok(())
    }

    /// The accounts of `ids` that are not in the roster of active accounts (after bringing the
    /// roster up to date with `esg.accounts`). A re-run checks its accounts with this before it
    /// starts, so a mistyped id creates no run.
    pub async fn unknown_accounts(&self, ids: &[String]) -> Result<Vec<String>, ProducerError> {
        self.sync_roster().await?;
        let ids = ids.to_vec();
        Ok(self
            .store
            .call(move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT EXISTS (SELECT 1 FROM roster WHERE account_id = ?1)")?;
                let mut missing = Vec::new();
                for id in ids {
                    if !stmt.query_row([&id], |r| r.get::<_, bool>(0))? {
                        missing.push(id);
                    }
                }
                Ok(missing)
            })
            .await?)
    }

    /// The active accounts whose latest score is not `Successful` (or that have none): what
    /// `esg rerun --failed` re-scores.
    pub async fn not_successful(&self) -> Result<Vec<String>, ProducerError> {
        self.sync_roster().await?;
        self.catch_up_scores().await?;
        Ok(self
            .store
            .call(|c| {
                let mut stmt = c.prepare(
                    "SELECT r.account_id FROM roster r
                     LEFT JOIN last_scores s ON s.account_id = r.account_id
                     WHERE s.status IS NULL OR s.status <> 'Successful'
                     ORDER BY r.account_id",
                )?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .await?)
    }

    /// Number of accounts in the roster (after bringing it up to date with `esg.accounts`).
    pub async fn roster_size(&self) -> Result<u64, ProducerError> {
        self.sync_roster().await?;
        let n: i64 = self
            .store
            .call(|c| c.query_row("SELECT COUNT(*) FROM roster", [], |r| r.get(0)))
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Brings the roster up to date with the compacted `esg.accounts` topic, from where the last
    /// sync stopped (from the start on a fresh store): the roster is the topic's, not this
    /// host's.
    async fn sync_roster(&self) -> Result<(), ProducerError> {
        let topic = self.bus.topics.accounts.clone();
        let pick = |e: Event| match e {
            Event::AccountEntry(e) => Some(e),
            _ => None,
        };
        let applied = self
            .follow(topic, "accounts_offsets", pick, |tx, key, entry| {
                match entry {
                    Some(e) => tx.prepare_cached(UPSERT_ROSTER)?.execute(params![
                        key,
                        e.account_name,
                        e.version,
                        ms(e.updated_at)
                    ]),
                    None => tx.prepare_cached(DELETE_ROSTER)?.execute([key]),
                }
                .map(|_| ())
            })
            .await?;
        tracing::debug!(applied, "roster caught up with the accounts topic");
        Ok(())
    }

    /// Brings `last_scores` up to date with `esg.scores`.
    async fn catch_up_scores(&self) -> Result<(), ProducerError> {
        let topic = self.bus.topics.scores.clone();
        let pick = |e: Event| match e {
            Event::EsgScore(s) => Some(s),
            _ => None,
        };
        let applied = self
            .follow(topic, "scores_offsets", pick, |tx, key, score| {
                match &score {
                    Some(s) => tx.prepare_cached(
                        "INSERT INTO last_scores (account_id, run_id, account_version, status, analysis_date)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (account_id) DO UPDATE SET run_id = excluded.run_id,
                           account_version = excluded.account_version, status = excluded.status,
                           analysis_date = excluded.analysis_date",
                    )?
                    .execute(params![
                        key,
                        s.run_id,
                        s.account_version,
                        s.status.as_str(),
                        s.values.analysis_date.map(|d| d.to_string())
                    ]),
                    None => tx
                        .prepare_cached("DELETE FROM last_scores WHERE account_id = ?1")?
                        .execute([key]),
                }?;
                match score.as_ref().and_then(prior_of) {
                    Some(prior) => {
                        let v = &prior.values;
                        let text = |d: Option<rust_decimal::Decimal>| d.map(|d| d.to_string());
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO last_etags (account_id, etag, overall,
                               environmental, social, governance, primary_focus,
                               primary_focus_score, analysis_date)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        )?
                        .execute(params![
                            key,
                            prior.etag,
                            text(v.overall),
                            text(v.environmental),
                            text(v.social),
                            text(v.governance),
                            v.primary_focus.map(|p| p.as_str()),
                            text(v.primary_focus_score),
                            v.analysis_date.map(|d| d.to_string()),
                        ])
                    }
                    None => tx
                        .prepare_cached("DELETE FROM last_etags WHERE account_id = ?1")?
                        .execute([key]),
                }
                .map(|_| ())
            })
            .await?;
        tracing::debug!(applied, "last scores caught up");
        Ok(())
    }

    /// Materialises a keyed topic into the store: reads every partition from the offset it
    /// reached (kept in `offsets_table`) to its end, and applies each batch with `apply` (the
    /// record `pick` accepts, or `None` for a tombstone) in one transaction with the offset it
    /// reached. Returns the records applied.
    async fn follow<T: Send + 'static>(
        &self,
        topic: String,
        offsets_table: &'static str,
        pick: impl Fn(Event) -> Option<T>,
        apply: fn(&rusqlite::Transaction<'_>, &str, Option<T>) -> rusqlite::Result<()>,
    ) -> Result<u64, ProducerError> {
        let ends = self.bus.transport.end_offsets(&topic).await?;
        let starts = self.bus.transport.start_offsets(&topic).await?;
        let done: HashMap<i32, i64> = self
            .store
            .call(move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT partition, next_offset FROM {offsets_table}"
                ))?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        let mut applied = 0u64;
        for (p, end) in ends.iter().enumerate() {
            let p = p as i32;
            let from = done.get(&p).copied().unwrap_or(0).max(starts[p as usize]);
            if from >= *end {
                continue;
            }
            let mut range = RangeReader::new(&*self.bus.transport, &topic, p, from, *end, 5000);
            while let Some(batch) = range.next_batch().await? {
                let next = range.position();
                let mut rows: Vec<(String, Option<T>)> = Vec::with_capacity(batch.len());
                for m in &batch {
                    let event =
                        self.bus
                            .decode(m.value.as_deref())
                            .map_err(|e| ProducerError::Decode {
                                topic: topic.clone(),
                                partition: p,
                                offset: m.offset,
                                detail: e.to_string(),
                            })?;
                    match event {
                        None => rows.push((m.key.clone(), None)),
                        Some(e) => {
                            if let Some(record) = pick(e) {
                                rows.push((m.key.clone(), Some(record)));
                            }
                        }
                    }
                }
                applied += rows.len() as u64;
                self.store
                    .call(move |c| {
                        let tx = c.transaction()?;
                        for (key, record) in rows {
                            apply(&tx, &key, record)?;
                        }
                        tx.execute(
                            &format!(
                                "INSERT INTO {offsets_table} (partition, next_offset) VALUES (?1, ?2)
                                 ON CONFLICT (partition) DO UPDATE SET next_offset = excluded.next_offset"
                            ),
                            params![p, next],
                        )?;
                        tx.commit()
                    })
                    .await?;
            }
        }
        Ok(applied)
    }

    /// Decides which accounts this run scores, and the roster changes.
    async fn plan(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let run_id = req.run_id.clone();
        let stale_before = req.business_date
            - chrono::Duration::days((self.config.refresh_after.as_secs() / 86_400) as i64);
        let full = req.full;
        let (scored, gone) = self
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                tx.execute("DELETE FROM pending WHERE run_id = ?1", [&run_id])?;
                tx.execute("DELETE FROM roster_changes WHERE run_id = ?1", [&run_id])?;
                let scored = tx.execute(
                    "INSERT INTO pending (run_id, account_id, version, reason)
                     SELECT * FROM (
                       SELECT l.run_id, l.account_id, l.version,
                         CASE
                           WHEN ?2 THEN 'Forced'
                           WHEN s.account_id IS NULL AND r.account_id IS NULL THEN 'New'
                           WHEN s.account_id IS NULL THEN 'Retry'
                           WHEN s.account_version <> l.version THEN 'Changed'
                           WHEN s.status <> 'Successful' THEN 'Retry'
                           WHEN s.analysis_date IS NULL OR s.analysis_date < ?3 THEN 'Stale'
                           ELSE NULL
                         END AS reason
                       FROM listing l
                       LEFT JOIN roster r ON r.account_id = l.account_id
                       LEFT JOIN last_scores s ON s.account_id = l.account_id
                       WHERE l.run_id = ?1
                     ) WHERE reason IS NOT NULL",
                    params![run_id, full, stale_before.to_string()],
                )?;
                tx.execute(
                    "INSERT INTO roster_changes (run_id, account_id, gone)
                     SELECT l.run_id, l.account_id, 0 FROM listing l
                     LEFT JOIN roster r ON r.account_id = l.account_id
                     WHERE l.run_id = ?1 AND (r.account_id IS NULL OR r.version <> l.version OR r.name <> l.name)",
                    [&run_id],
                )?;
                let gone = tx.execute(
                    "INSERT INTO roster_changes (run_id, account_id, gone)
                     SELECT ?1, r.account_id, 1 FROM roster r
                     WHERE NOT EXISTS (SELECT 1 FROM listing l WHERE l.run_id = ?1 AND l.account_id = r.account_id)",
                    [&run_id],
                )?;
                store::set_phase(&tx, &run_id, Phase::Planned)?;
                tx.commit()?;
                Ok((scored, gone))
            })
            .await?;
        tracing::info!(to_score = scored, gone, "run planned");
        Ok(())
    }

    /// A re-run: the named accounts, with their roster names and versions, all `Forced` (or
    /// `Replay` for a replay of the account events).
    async fn plan_rerun(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let run_id = req.run_id.clone();
        let reason = if req.kind == RunKind::Replay {
            "Replay"
        } else {
            "Forced"
        };
        // A replay covers whatever the range held: accounts that left since are skipped. A
        // re-run names its accounts: an unknown one is the operator's mistake to hear about.
        let skip_missing = req.kind == RunKind::Replay;
        let mut ids = req.forced.clone();
        ids.sort();
        ids.dedup();
        let missing = self
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                let mut missing = Vec::new();
                for id in &ids {
                    let n = tx.execute(
                        "INSERT OR IGNORE INTO pending (run_id, account_id, version, reason)
                         SELECT ?1, account_id, version, ?3 FROM roster WHERE account_id = ?2",
                        params![run_id, id, reason],
                    )?;
                    let present: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM roster WHERE account_id = ?1)",
                        [id],
                        |r| r.get(0),
                    )?;
                    if n == 0 && !present {
                        missing.push(id.clone());
                    }
                }
                if missing.is_empty() || skip_missing {
                    store::set_phase(&tx, &run_id, Phase::RosterPublished)?;
                    tx.commit()?;
                }
                Ok(missing)
            })
            .await?;
        if !missing.is_empty() && skip_missing {
            tracing::warn!(run_id = %req.run_id, accounts = %missing.join(","),
                "replay: these accounts are no longer active and are not scored");
        } else if !missing.is_empty() {
            return Err(ProducerError::UnknownAccounts {
                run_id: req.run_id.clone(),
                accounts: missing.join(","),
            });
        }
        Ok(())
    }

    /// Publishes the roster changes to `esg.accounts` and applies them to the local roster.
    async fn publish_roster(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let topic = self.bus.topics.accounts.clone();
        let batch = self.config.emit_batch.max(1) as i64;
        // Keyset pagination: each batch starts after the last id of the previous one, so the
        // query never rescans the rows already published.
        let mut after = String::new();
        loop {
            let run_id = req.run_id.clone();
            let (from, previous) = (after.clone(), after.clone());
            let rows: Vec<RosterChange> = self
                .store
                .call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT rc.account_id, rc.gone, l.name, l.version, l.updated_at_ms
                         FROM roster_changes rc
                         LEFT JOIN listing l ON l.run_id = rc.run_id AND l.account_id = rc.account_id
                         WHERE rc.run_id = ?1 AND rc.account_id > ?3 AND rc.published = 0
                         ORDER BY rc.account_id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![run_id, batch, from], |r| {
                        let gone: bool = r.get(1)?;
                        let entry = if gone {
                            None
                        } else {
                            Some((r.get(2)?, r.get(3)?, r.get(4)?))
                        };
                        Ok((r.get(0)?, gone, entry))
                    })?;
                    rows.collect()
                })
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.0.clone();
            let mut events = Vec::new();
            let mut gone = Vec::new();
            for (id, is_gone, entry) in &rows {
                match (is_gone, entry) {
                    (false, Some((name, version, updated))) => events.push((
                        id.clone(),
                        Event::AccountEntry(AccountEntry {
                            account_id: id.clone(),
                            account_name: name.clone(),
                            version: *version,
                            updated_at: from_ms(*updated),
                            run_id: req.run_id.clone(),
                        }),
                    )),
                    _ => gone.push(id.clone()),
                }
            }
            // Compacted upserts and tombstones: publishing one again after a crash is harmless.
            self.bus.publish(&topic, &events).await?;
            self.bus.tombstones(&topic, &gone).await?;
            let (run_id, last) = (req.run_id.clone(), after.clone());
            self.store
                .call(move |c| {
                    let tx = c.transaction()?;
                    // The batch is every unpublished change in (previous, last] (the query
                    // above): set-based statements apply it to the roster and mark it.
                    let batch = params![run_id, previous, last];
                    tx.prepare_cached(
                        "INSERT INTO roster (account_id, name, version, updated_at_ms)
                         SELECT rc.account_id, l.name, l.version, l.updated_at_ms
                         FROM roster_changes rc
                         JOIN listing l ON l.run_id = rc.run_id AND l.account_id = rc.account_id
                         WHERE rc.run_id = ?1 AND rc.account_id > ?2 AND rc.account_id <= ?3
                           AND rc.published = 0 AND rc.gone = 0
                         ON CONFLICT (account_id) DO UPDATE SET name = excluded.name,
                           version = excluded.version, updated_at_ms = excluded.updated_at_ms",
                    )?
                    .execute(batch)?;
                    // Gone, or (never in practice) no longer in the listing: published as a
                    // tombstone above.
                    tx.prepare_cached(
                        "DELETE FROM roster WHERE account_id IN (
                           SELECT rc.account_id FROM roster_changes rc
                           WHERE rc.run_id = ?1 AND rc.account_id > ?2 AND rc.account_id <= ?3
                             AND rc.published = 0
                             AND (rc.gone = 1 OR NOT EXISTS (SELECT 1 FROM listing l
                               WHERE l.run_id = rc.run_id AND l.account_id = rc.account_id)))",
                    )?
                    .execute(batch)?;
                    tx.prepare_cached(
                        "UPDATE roster_changes SET published = 1
                         WHERE run_id = ?1 AND account_id > ?2 AND account_id <= ?3 AND published = 0",
                    )?
                    .execute(batch)?;
                    tx.commit()
                })
                .await?;
        }
        Ok(())
    }

    /// Publishes one `AccountChanged` per pending account, in batches, exactly once.
    ///
    /// Before a batch is published, the topic's end offsets as they were before it (the
    /// checkpoint [`Producer::reconcile_emitted`] reads from) are durable in the store: the
    /// first batch's are written before the loop, and each batch's record (its accounts marked
    /// emitted) carries, in the same transaction, the checkpoint of the next batch: the ends
    /// moved past the positions where its own records landed. A batch thus costs one store
    /// transaction and one bus transaction.
    async fn emit(
        &self,
        req: &RunRequest,
        shutdown: &CancellationToken,
    ) -> Result<(), ProducerError> {
        let topic = self.bus.topics.account_events.clone();
        self.reconcile_emitted(req).await?;
        let batch = self.config.emit_batch.max(1) as i64;
        let mut emitted = 0u64;
        let mut after = String::new();
        // Where the topic ends before the first batch. Later batches' ends only grow from
        // here: a lower bound of the true ends is all the checkpoint needs to be.
        let mut ends = self.bus.transport.end_offsets(&topic).await?;
        let run_id = req.run_id.clone();
        let checkpoint = checkpoint_text(&ends);
        self.store
            .call(move |c| set_checkpoint(c, &run_id, &checkpoint).map(|_| ()))
            .await?;
        loop {
            if shutdown.is_cancelled() {
                return Err(ProducerError::Cancelled);
            }
            let run_id = req.run_id.clone();
            let (from, previous) = (after.clone(), after.clone());
            // No name: the event carries none (names travel only on `esg.accounts`).
            let rows: Vec<(String, i64, String, Option<PriorAnalysis>)> = self
                .store
                .call(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT p.account_id, p.version, p.reason, e.etag, e.overall,
                                e.environmental, e.social, e.governance, e.primary_focus,
                                e.primary_focus_score, e.analysis_date
                         FROM pending p LEFT JOIN last_etags e ON e.account_id = p.account_id
                         WHERE p.run_id = ?1 AND p.account_id > ?3 AND p.emitted = 0
                         ORDER BY p.account_id LIMIT ?2",
                    )?;
                    let rows = stmt.query_map(params![run_id, batch, from], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, prior_row(r)?))
                    })?;
                    rows.collect()
                })
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.0.clone();
            let now = Utc::now();
            let events: Vec<(String, Event)> = rows
                .iter()
                .map(|(id, version, reason, prior)| {
                    (
                        id.clone(),
                        Event::AccountChanged(AccountChanged {
                            run_id: req.run_id.clone(),
                            account_id: id.clone(),
                            version: *version,
                            reason: reason.parse().unwrap_or(ChangeReason::Forced),
                            emitted_at: now,
                            prior: prior.clone(),
                        }),
                    )
                })
                .collect();
            let positions = self.bus.publish(&topic, &events).await?;
            for pos in &positions {
                if let Some(end) = ends.get_mut(pos.partition as usize) {
                    *end = (*end).max(pos.offset + 1);
                }
            }
            emitted += rows.len() as u64;
            let (run_id, last) = (req.run_id.clone(), after.clone());
            let checkpoint = checkpoint_text(&ends);
            self.store
                .call(move |c| {
                    let tx = c.transaction()?;
                    // The batch is every pending account not emitted in (previous, last]
                    // (the query above): one statement marks it.
                    tx.prepare_cached(
                        "UPDATE pending SET emitted = 1
                         WHERE run_id = ?1 AND account_id > ?2 AND account_id <= ?3 AND emitted = 0",
                    )?
                    .execute(params![run_id, previous, last])?;
                    set_checkpoint(&tx, &run_id, &checkpoint)?;
                    tx.commit()
                })
                .await?;
        }
        tracing::info!(emitted, "account events published");
        Ok(())
    }

    /// After a crash between publishing a batch and marking it: finds this run's events
    /// published since the last checkpoint and marks them emitted.
    async fn reconcile_emitted(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let run_id = req.run_id.clone();
        let checkpoint = self
            .store
            .call(move |c| {
                c.query_row(
                    "SELECT emit_checkpoint FROM runs WHERE run_id = ?1",
                    [run_id],
                    |r| r.get::<_, Option<String>>(0),
                )
            })
            .await?;
        let Some(checkpoint) = checkpoint else {
            return Ok(());
        };
        let topic = self.bus.topics.account_events.clone();
        let ends = self.bus.transport.end_offsets(&topic).await?;
        let froms: Vec<i64> = checkpoint
            .split(',')
            .map(|s| s.parse().unwrap_or(0))
            .collect();
        let mut found = Vec::new();
        for (p, end) in ends.iter().enumerate() {
            let from = froms.get(p).copied().unwrap_or(0);
            let mut range =
                RangeReader::new(&*self.bus.transport, &topic, p as i32, from, *end, 5000);
            while let Some(batch) = range.next_batch().await? {
                for m in batch {
                    if let Ok(Some(Event::AccountChanged(a))) = self.bus.decode(m.value.as_deref())
                    {
                        if a.run_id == req.run_id {
                            found.push(a.account_id);
                        }
                    }
                }
            }
        }
        if !found.is_empty() {
            tracing::info!(
                already_published = found.len(),
                "resume: events published before the stop are not published again"
            );
            let run_id = req.run_id.clone();
            self.store
                .call(move |c| mark_emitted(c, &run_id, &found))
                .await?;
        }
        Ok(())
    }

    /// Publishes `RunSealed` with the run's counts.
    async fn seal(&self, req: &RunRequest) -> Result<(), ProducerError> {
        let run_id = req.run_id.clone();
        let is_rerun = req.kind != RunKind::Daily;
        let mut sealed = self
            .store
            .call(move |c| {
                let count = |sql: &str| -> rusqlite::Result<i64> {
                    c.query_row(sql, [&run_id], |r| r.get(0))
                };
                // One pass over the run's pending accounts counts them all and by reason.
                let (expected, new, changed, stale, retry, forced): (i64, i64, i64, i64, i64, i64) =
                    c.query_row(
                        "SELECT COUNT(*), COALESCE(SUM(reason = 'New'), 0),
                           COALESCE(SUM(reason = 'Changed'), 0), COALESCE(SUM(reason = 'Stale'), 0),
                           COALESCE(SUM(reason = 'Retry'), 0),
                           COALESCE(SUM(reason IN ('Forced', 'Replay')), 0)
                         FROM pending WHERE run_id = ?1",
                        [&run_id],
                        |r| {
                            Ok((
                                r.get(0)?,
                                r.get(1)?,
                                r.get(2)?,
                                r.get(3)?,
                                r.get(4)?,
                                r.get(5)?,
                            ))
                        },
                    )?;
                let active = if is_rerun {
                    count("SELECT COUNT(*) FROM roster WHERE ?1 IS NOT NULL")?
                } else {
                    count("SELECT COUNT(*) FROM listing WHERE run_id = ?1")?
                };
                let gone =
                    count("SELECT COUNT(*) FROM roster_changes WHERE run_id = ?1 AND gone = 1")?;
                let listing: Option<String> = c.query_row(
                    "SELECT listing_json FROM runs WHERE run_id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )?;
                let facts: ListingFacts = listing
                    .and_then(|j| serde_json::from_str(&j).ok())
                    .unwrap_or_default();
                Ok(RunSealed {
                    run_id: run_id.clone(),
                    business_date: NaiveDate::default(),
                    expected_accounts: expected,
                    active_accounts: active,
                    new_accounts: new,
                    changed_accounts: changed,
                    stale_accounts: stale,
                    retry_accounts: retry,
                    forced_accounts: forced,
                    carried_forward: if is_rerun { 0 } else { active - expected },
                    gone_accounts: gone,
                    malformed_records: facts.malformed as i64,
                    sealed_at: Utc::now(),
                })
            })
            .await?;
        sealed.business_date = req.business_date;
        self.bus
            .publish(
                &self.bus.topics.triggers,
                &[(req.run_id.clone(), Event::RunSealed(sealed.clone()))],
            )
            .await?;
        let json = serde_json::to_string(&sealed).unwrap_or_default();
        let run_id = req.run_id.clone();
        self.store
            .call(move |c| {
                let tx = c.transaction()?;
                tx.execute(
                    "UPDATE runs SET sealed_json = ?2 WHERE run_id = ?1",
                    params![run_id, json],
                )?;
                store::set_phase(&tx, &run_id, Phase::Sealed)?;
                // The listing and the run's plan are only needed until the seal (a sealed run
                // resumes from the recorded seal): the store does not grow with every run.
                for table in ["listing", "pending", "roster_changes"] {
                    esg_bus::store::delete_run_rows(&tx, table, &run_id)?;
                }
                tx.commit()
            })
            .await?;
        tracing::info!(
            expected = sealed.expected_accounts,
            active = sealed.active_accounts,
            new = sealed.new_accounts,
            changed = sealed.changed_accounts,
            stale = sealed.stale_accounts,
            retry = sealed.retry_accounts,
            forced = sealed.forced_accounts,
            carried_forward = sealed.carried_forward,
            gone = sealed.gone_accounts,
            malformed = sealed.malformed_records,
            "run sealed"
        );
        Ok(())
    }
}

/// Stores one page of the listing into the run's listing, keeping the highest version of each
/// account. The first page of a pass first drops every row of the run, in the same transaction:
/// after a 410 restart only the new pass counts, so an account that left between two passes
/// does not survive from the first.
/// The prior analysis a score leaves for the account's next conditional request: its values
/// and ETag when it has an ETag and is not `Failed`.
fn prior_of(score: &EsgScore) -> Option<PriorAnalysis> {
    let etag = score.etag.clone()?;
    (score.status != ScoreStatus::Failed).then_some(PriorAnalysis {
        etag,
        values: score.values,
    })
}

/// The `last_etags` columns 3..=10 of an emit row as a prior analysis (`None` when the join
/// found none). A stored value that no longer parses drops the prior: the account is then asked
/// for unconditionally, which is always correct.
fn prior_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<PriorAnalysis>> {
    let Some(etag) = r.get::<_, Option<String>>(3)? else {
        return Ok(None);
    };
    let text = |i: usize| r.get::<_, Option<String>>(i);
    let (overall, environmental, social, governance) = (text(4)?, text(5)?, text(6)?, text(7)?);
    let (pillar, focus_score, date) = (text(8)?, text(9)?, text(10)?);
    let decimal = |t: Option<String>| -> Option<Option<rust_decimal::Decimal>> {
        t.map(|t| t.parse().ok())
            .map_or(Some(None), |d| d.map(Some))
    };
    let values = (|| {
        Some(esg_schemas::EsgValues {
            overall: decimal(overall)?,
            environmental: decimal(environmental)?,
            social: decimal(social)?,
            governance: decimal(governance)?,
            primary_focus: pillar
                .map(|t| t.parse().ok())
                .map_or(Some(None), |p| p.map(Some))?,
            primary_focus_score: decimal(focus_score)?,
            analysis_date: date
                .map(|t| t.parse().ok())
                .map_or(Some(None), |d| d.map(Some))?,
        })
    })();
    Ok(values.map(|values| PriorAnalysis { etag, values }))
}

fn insert_page(store: &Store, run_id: &str, page: &Page) -> Result<(), StoreError> {
    store.call_blocking(|c| {
        let tx = c.transaction()?;
        if page.begins_pass() {
            tx.execute("DELETE FROM listing WHERE run_id = ?1", [run_id])?;
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO listing (run_id, account_id, name, version, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (run_id, account_id) DO UPDATE SET name = excluded.name,
                   version = excluded.version, updated_at_ms = excluded.updated_at_ms
                 WHERE excluded.version >= listing.version",
            )?;
            for a in &page.records {
                stmt.execute(params![
                    run_id,
                    a.account_id,
                    a.account_name,
                    a.version,
                    ms(a.updated_at)
                ])?;
            }
        }
        tx.commit()
    })
}

/// The emit checkpoint as stored: the end offset of each partition, comma-separated.
fn checkpoint_text(ends: &[i64]) -> String {
    ends.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn set_checkpoint(
    c: &rusqlite::Connection,
    run_id: &str,
    checkpoint: &str,
) -> rusqlite::Result<usize> {
    c.prepare_cached("UPDATE runs SET emit_checkpoint = ?2 WHERE run_id = ?1")?
        .execute(params![run_id, checkpoint])
}

/// Marks `ids` emitted, in one transaction.
fn mark_emitted(
    c: &mut rusqlite::Connection,
    run_id: &str,
    ids: &[String],
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    {
        let mut stmt = tx.prepare_cached(
            "UPDATE pending SET emitted = 1 WHERE run_id = ?1 AND account_id = ?2",
        )?;
        for id in ids {
            stmt.execute(params![run_id, id])?;
        }
    }
    tx.commit()
}
