//! The right to erasure (`esg erase --account ID --reason TEXT`): an account's name and scores
//! leave everything the job holds.
//!
//! - The stores and the embedded log: the account's rows are deleted with SQLite's
//!   `secure_delete`, each file is rebuilt (`VACUUM`, in memory) and its write-ahead log emptied,
//!   so no copy survives in free pages, in the slack of earlier updates or in the WAL
//!   ([`esg_bus::store::erase`]). Needs the state directory to itself: every lock is taken.
//! - Kafka: tombstones for the account on `esg.scores` and `esg.accounts`; the broker drops the
//!   earlier records within `[bus] compaction_lag` (the topics' `max.compaction.lag.ms`), and
//!   every assembler that reads the score tombstone forgets the account.
//! - The kept day files: every ratings, errors and summary file of the output directory, and
//!   every day's Parquet, that holds the account is rewritten without it (decrypted with `--identity` as it streams,
//!   encrypted again to the current recipients) and delivered again to every target. With
//!   `--legal-hold` the published files are kept as they are (and the audit entry says so).
//! - The audit trail: one `erased` entry whose object is the HMAC-SHA256 of the id under the
//!   firm's pseudonym key (`<state.dir>/erasure.key`, made on first use), never the id, then a
//!   signed checkpoint.
//!
//! If the account system still lists the account, a later run finds it new and scores it again.

use crate::alerting::Alerts;
use crate::auditing::Audit;
use crate::config::{BusKind, Config};
use crate::delivering::Delivery;
use crate::pipeline::StateLock;
use crate::runner::Refused;
use anyhow::{Context, Result};
use chrono::Utc;
use esg_audit::Event;
use hmac::{Hmac, Mac};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The pseudonym key's file in the state directory.
pub const PSEUDONYM_KEY_FILE: &str = "erasure.key";

/// What to erase.
#[derive(Debug, Clone)]
pub struct Request {
    /// The account id.
    pub account: String,
    /// Why (the request's reference, say); kept in the audit entry. Must not hold the name.
    pub reason: String,
    /// Age identity file that opens the encrypted day files (needed unless `legal_hold`, or
    /// the outputs are plaintext).
    pub identity: Option<PathBuf>,
    /// Keep the published day files as they are (a legal hold); everything else is erased.
    pub legal_hold: bool,
}

/// What an erasure did.
#[derive(Debug, Clone, Default)]
pub struct Erased {
    /// The HMAC of the id that the audit entry names.
    pub pseudonym: String,
    /// Each store or log file and the rows deleted from it.
    pub stores: Vec<(PathBuf, u64)>,
    /// Topics that received a tombstone (Kafka).
    pub tombstones: Vec<String>,
    /// Day files rewritten without the account, and the rows each lost.
    pub files: Vec<(PathBuf, u64)>,
    /// Business dates whose files were delivered again.
    pub redelivered: Vec<chrono::NaiveDate>,
    /// Deliveries that failed (the files stay local and the alert went out).
    pub delivery_failures: Vec<String>,
}

/// The HMAC-SHA256 of `id` under the key in `state_dir` (made, 32 random bytes, mode 0600, on
/// first use): what the audit trail holds instead of the id. Whoever holds the key can tell
/// whether a given id was erased; nobody else can recover the id from the log.
pub fn pseudonym(state_dir: &Path, id: &str) -> Result<String> {
    let path = state_dir.join(PSEUDONYM_KEY_FILE);
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 32] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::fs::create_dir_all(state_dir)
                .and_then(|()| options.open(&path))
                .and_then(|mut f| {
                    std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes())?;
                    f.sync_all()
                })
                .with_context(|| format!("creating the pseudonym key {}", path.display()))?;
            hex
        }
        Err(e) => {
            return Err(e).with_context(|| format!("reading the pseudonym key {}", path.display()))
        }
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes())
        .map_err(|e| anyhow::anyhow!("pseudonym key {}: {e}", path.display()))?;
    mac.update(id.as_bytes());
    let tag = mac.finalize().into_bytes();
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

/// `esg erase`: removes the account of `request` from every store, log, topic and kept file of
/// `config` (see the module documentation). The audit entry is written once the stores and
/// topics are clean; a file or delivery that fails is reported (and alerted), and the command
/// can run again: every step is idempotent.
pub async fn erase(config: &Config, request: &Request) -> Result<Erased> {
    let id = request.account.trim();
    if !esg_auth::http::is_valid_account_id(id) {
        return Err(Refused::Usage(format!(
            "{id:?} is not an account id (^[A-Za-z0-9][A-Za-z0-9._-]{{0,63}}$)"
        ))
        .into());
    }
    if request.reason.trim().is_empty() {
        return Err(Refused::Usage(
            "give --reason: the request's reference, kept in the audit trail".into(),
        )
        .into());
    }
    let protection = config
        .protection()
        .map_err(|(key, message)| anyhow::anyhow!("key `{key}`: {message}"))?;
    let identities = match &request.identity {
        Some(path) => age::IdentityFile::from_file(path.display().to_string())
            .and_then(|f| f.into_identities().map_err(std::io::Error::other))
            .map_err(|e| anyhow::anyhow!("identity file {}: {e}", path.display()))?,
        None => Vec::new(),
    };
    let files = if request.legal_hold {
        Vec::new()
    } else {
        day_files(&config.output.dir)?
    };
    if identities.is_empty()
        && files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "age"))
    {
        return Err(Refused::Usage(format!(
            "the day files in {} are encrypted: give --identity (the age identity of one of \
             their recipients) to rewrite them without the account, or --legal-hold to keep \
             them as published",
            config.output.dir.display()
        ))
        .into());
    }
    // Every process of this state directory stopped: the stores are rebuilt below.
    let _locks = ["esg", "producer", "assembler"]
        .into_iter()
        .map(|name| StateLock::acquire(config, name))
        .collect::<Result<Vec<_>>>()?;
    let pseudonym = pseudonym(&config.state.dir, id)?;
    let mut erased = Erased {
        pseudonym: pseudonym.clone(),
        ..Erased::default()
    };
    let alerts = Arc::new(Alerts::new(config)?);
    let audit = Audit::new(config);
    let id_param = id.to_owned();
    if let Err(e) = erase_held(config, &id_param, &mut erased).await {
        // Part of it may be done: the trail says so, and the same command finishes it.
        audit.record(
            Event::new("erase_failed", &pseudonym)
                .with("reason", request.reason.trim())
                .with("error", format!("{e:#}")),
        );
        return Err(e.context("the erasure is not complete: fix the cause and run esg erase again"));
    }
    let ids: HashSet<String> = [id_param.clone()].into();
    let mut dates = std::collections::BTreeSet::new();
    let mut failed = Vec::new();
    for path in &files {
        match esg_assembler::output::erase_accounts(path, &ids, &identities, &protection) {
            Ok(0) => {}
            Ok(rows) => {
                let name = path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
                let (sha256, size) = crate::auditing::sha256_file(path).unwrap_or_default();
                audit.record(
                    Event::new("rows_erased", &name)
                        .with("account", &pseudonym)
                        .with("rows", rows)
                        .with("sha256", &sha256)
                        .with("size", size),
                );
                if let Some(date) = crate::retention::business_date_of(&name) {
                    dates.insert(date);
                }
                erased.files.push((path.clone(), rows));
            }
            Err(e) => failed.push(format!("{}: {e}", path.display())),
        }
    }
    let mut entry = Event::new("erased", &pseudonym)
        .with("reason", request.reason.trim())
        .with("legal_hold", request.legal_hold)
        .with(
            "stores",
            erased
                .stores
                .iter()
                .map(|(p, n)| format!("{} ({n} rows)", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .with("files", erased.files.len());
    if !erased.tombstones.is_empty() {
        entry = entry.with("tombstones", erased.tombstones.join(", "));
    }
    if !failed.is_empty() {
        entry = entry.with("files_failed", failed.join("; "));
    }
    audit.record(entry);
    tracing::info!(
        account = %pseudonym,
        files = erased.files.len(),
        legal_hold = request.legal_hold,
        "account erased (the id is shown as its pseudonym)"
    );
    if let Some(delivery) = Delivery::new(config, alerts, audit.clone())? {
        let deadline = Utc::now() + chrono::Duration::minutes(10);
        for date in &dates {
            match delivery.deliver_date(*date, None, deadline).await {
                Ok(report) => {
                    erased.redelivered.push(*date);
                    erased
                        .delivery_failures
                        .extend(report.failed.iter().map(|f| f.to_string()));
                }
                Err(e) => erased.delivery_failures.push(format!("{date}: {e:#}")),
            }
        }
    }
    if let Some(checkpoint) = audit.checkpoint() {
        tracing::info!(checkpoint = %checkpoint.display(), "audit checkpoint signed");
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "the account is erased from the stores{}, but {} day file(s) could not be rewritten \
             (fix and run esg erase again): {}",
            if erased.tombstones.is_empty() {
                ""
            } else {
                " and topics"
            },
            failed.len(),
            failed.join("; ")
        );
    }
    Ok(erased)
}

/// The account out of the stores and the embedded log, or its tombstones on Kafka.
async fn erase_held(config: &Config, id: &str, erased: &mut Erased) -> Result<()> {
    let key = config.state.key.as_ref();
    let id_param = id.to_owned();
    let stores: [(PathBuf, &[&str]); 2] = [
        (config.producer_store_path(), esg_producer::store::ERASE),
        (config.assembler_store_path(), esg_assembler::state::ERASE),
    ];
    for (path, statements) in stores {
        let done = esg_bus::store::erase(&path, key, statements, &[(":id", &id_param)])
            .with_context(|| format!("erasing the account from {}", path.display()))?;
        erased.stores.push((path, done.rows));
    }
    let topics = esg_bus::Topics::new(&config.topics());
    match config.bus.kind {
        BusKind::Embedded => {
            let path = config.bus_path();
            let done = esg_bus::store::erase(
                &path,
                key,
                &[esg_bus::store::ERASE_LOG],
                &[
                    (":id", &id_param),
                    (":accounts", &topics.accounts),
                    (":account_events", &topics.account_events),
                    (":scores", &topics.scores),
                ],
            )
            .with_context(|| format!("erasing the account from {}", path.display()))?;
            erased.stores.push((path, done.rows));
        }
        BusKind::Kafka => {
            let (bus, _) = crate::pipeline::connect_bus(config).await?;
            for topic in [&topics.scores, &topics.accounts] {
                bus.tombstones(topic, std::slice::from_ref(&id_param))
                    .await
                    .with_context(|| format!("writing the tombstone on {topic}"))?;
                erased.tombstones.push(topic.clone());
            }
        }
    }
    Ok(())
}

/// The day files of `dir` (ratings, errors and summaries, and the days' Parquet, encrypted or
/// not), sorted.
fn day_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the output directory {}", dir.display()))
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("FirmESGRatings_"))
        })
        .map(|e| e.path())
        .collect();
    files.extend(esg_assembler::parquet::day_files(dir));
    files.sort();
    Ok(files)
}
